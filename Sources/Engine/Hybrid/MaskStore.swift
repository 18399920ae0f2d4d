import Crypto
import FHE
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Why a mask store could not be used.
public enum MaskStoreError: Error, CustomStringConvertible, Equatable {
    case inUse(path: String)
    case unwritable(path: String, reason: String)
    case unknownStream(String)
    case fillFailed(stream: String, reason: String)

    public var description: String {
        switch self {
        case .inUse(let p): return "the mask store \(p) is in use by another nb process (one process at a time: pads are used once)"
        case .unwritable(let p, let r): return "cannot write the mask store at \(p): \(r)"
        case .unknownStream(let s): return "the mask store has no stream \(s)"
        case .fillFailed(let s, let r): return "\(s): filling the mask store failed: \(r)"
        }
    }
}

/// One stream of pads: a remote module's direction, with what its pads and products depend on.
public struct MaskStreamSpec: Codable, Equatable, Sendable {
    public var module: String
    public var direction: ProductDirection
    /// k: pads and products are mod 2^k.
    public var bits: Int
    /// K: pad values per row (the product's inner dimension).
    public var features: Int
    /// O: pad products per row.
    public var outputs: Int
    /// Rows filled by one offline call (the ring degree of its ciphertexts).
    public var segmentRows: Int
    /// Hex digest of what the products depend on: the secret key, the weights' public
    /// metadata, k and the offline plan. A stream whose identity changed is started afresh.
    public var identity: String

    public var name: String { "\(module).\(direction.rawValue)" }

    public init(module: String, direction: ProductDirection, bits: Int, features: Int, outputs: Int, segmentRows: Int, identity: String) {
        (self.module, self.direction, self.bits, self.features, self.outputs, self.segmentRows, self.identity) =
            (module, direction, bits, features, outputs, segmentRows, identity)
    }

    /// Bytes per stored W·r value: the fewest whole bytes of the common widths that hold k bits.
    var bytesPerValue: Int { bits <= 24 ? 3 : bits <= 32 ? 4 : 8 }
    var segmentBytes: Int { segmentRows * outputs * bytesPerValue }
}

/// The client's store of offline work for the masked protocol: per stream (remote module and
/// direction) a secret seed from which the one-time pads r of every row are expanded
/// (``PadExpander``), and the decrypted pad products W·r mod 2^k, in segment files of one
/// offline call each, read row by row (`pread`) as they are used.
///
/// **Each pad is used once, by construction.** Rows are handed out in increasing order, and
/// before any row is handed out the store durably records (atomic rename, fsync) a mark at or
/// above it: after a crash, a new process starts at the mark, so a row that may have been sent
/// is never sent again. Reservations extend every stream's mark at once (the remote layers of
/// one pass advance together), so one fsync covers a pass. A new or reset stream gets a fresh
/// seed, so its pads share nothing with earlier ones. One process at a time holds a store
/// (`flock`).
///
/// Files (mode 0600 in a 0700 directory): `state` (a header line with the SHA-256 and length of
/// the JSON that follows: seeds, marks, segment and hint digests), `<stream>-<segment>.wr` (W·r,
/// little-endian, 3 bytes per value for k ≤ 24, 4 for k ≤ 32, else 8) and `<stream>.hint` (the
/// server's product W·A of the stream's fixed public encryption masks, see ``hint(_:compute:)``).
/// A segment whose digest does not match is computed again from its pads (nothing of it was
/// sent); a damaged state file starts every stream afresh, with new seeds.
public final class MaskStore: @unchecked Sendable {
    public let directory: URL
    /// Rows a reservation adds beyond the request (fewer fsyncs; at most this many rows per
    /// stream are skipped after a crash).
    public var reserveAhead = 256
    /// What was found damaged and rebuilt (for reports).
    public private(set) var notices: [String] = []
    /// Segments computed offline by this process, and the seconds they took (the offline
    /// product and writing the segment).
    public private(set) var segmentsFilled = 0
    public private(set) var fillSeconds = 0.0

    struct Stream: Codable {
        var spec: MaskStreamSpec
        var seed: String
        /// The public seed of the stream's fixed encryption masks A, and the digest of its hint
        /// file (the server's product W·A, once computed).
        var hintSeed: String
        var hintDigest: String?
        /// Rows below this mark may have been sent: never handed out again.
        var mark: Int
        var firstSegment: Int
        var digests: [String]
        var filledRows: Int { (firstSegment + digests.count) * spec.segmentRows }
    }

    struct StateFile: Codable {
        // 2: three bytes per W·r value for k ≤ 24; 3: a hint per stream (a store of an earlier
        // format starts afresh).
        var format = "nb-mask-store-3"
        var streams: [String: Stream] = [:]
    }

    private var state = StateFile()
    /// The next row to hand out, per stream (≥ the mark of the state this process read).
    private var next: [String: Int] = [:]
    private var expanders: [String: PadExpander] = [:]
    /// Segment files checked against their digests by this process (or written by it).
    private var verified = Set<String>()
    private var lockDescriptor: Int32 = -1
    /// Recursive: the offline work a segment runs may ask for its stream's hint.
    private let lock = NSRecursiveLock()

    private static let registryLock = NSLock()
    nonisolated(unsafe) private static var registry: [String: MaskStore] = [:]

    /// The process's one store at `directory` (opened on first use, then shared by every
    /// backend that uses the same directory).
    public static func shared(at directory: URL) throws -> MaskStore {
        registryLock.lock()
        defer { registryLock.unlock() }
        let key = directory.standardizedFileURL.path
        if let s = registry[key] { return s }
        let s = try MaskStore(directory: directory)
        registry[key] = s
        return s
    }

    /// Opens (or creates) the store at `directory`, holding its lock until released.
    public init(directory: URL) throws {
        self.directory = directory
        let fm = FileManager.default
        do {
            try fm.createDirectory(at: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw MaskStoreError.unwritable(path: directory.path, reason: "\(error.localizedDescription)")
        }
        let lockPath = directory.appendingPathComponent("lock").path
        let fd = open(lockPath, O_RDWR | O_CREAT, 0o600)
        guard fd >= 0 else { throw MaskStoreError.unwritable(path: lockPath, reason: String(cString: strerror(errno))) }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            close(fd)
            throw MaskStoreError.inUse(path: directory.path)
        }
        lockDescriptor = fd
        readState()
        for (name, s) in state.streams { next[name] = s.mark }
    }

    deinit {
        // No release of the marks here: a store dropped without `release()` behaves as after a
        // crash (the reserved rows are skipped), which is always safe.
        if lockDescriptor >= 0 { close(lockDescriptor) }
    }

    private var stateURL: URL { directory.appendingPathComponent("state") }

    private func readState() {
        guard let data = try? Data(contentsOf: stateURL) else { return }
        guard let newline = data.firstIndex(of: UInt8(ascii: "\n")) else { return reset("its state file has no header line") }
        let header = String(decoding: data[..<newline], as: UTF8.self).split(separator: " ")
        let payload = data[(newline + 1)...]
        guard header.count == 3, header[0] == "nb-mask-store", Int(header[2]) == payload.count,
              SHA256Digest.hex(Data(payload)) == header[1] else { return reset("its state file is damaged (checksum or length)") }
        guard let decoded = try? JSONDecoder().decode(StateFile.self, from: Data(payload)), decoded.format == StateFile().format else {
            return reset("its state file is not a mask store state of this version")
        }
        for (name, t) in decoded.streams {
            let spec = t.spec
            func isSeed(_ hex: String) -> Bool { hex.count == 2 * MaskSeed.byteCount && hex.utf8.allSatisfy({ (48...57).contains($0) || (97...102).contains($0) }) }
            guard name == spec.name, isSeed(t.seed), isSeed(t.hintSeed),
                  MaskedProduct.bitRange.contains(spec.bits), spec.features > 0, spec.outputs > 0, spec.segmentRows > 0,
                  t.mark >= 0, t.firstSegment >= 0, t.mark <= Int(UInt32.max) else {
                return reset("its stream \(name) has invalid fields")
            }
        }
        state = decoded
    }

    /// Forgets every stream: new seeds will be drawn, so no pad of before can come back.
    private func reset(_ why: String) {
        notices.append("mask store \(directory.path): \(why); every stream starts afresh with new seeds")
        state = StateFile()
        if let names = try? FileManager.default.contentsOfDirectory(atPath: directory.path) {
            for n in names where n.hasSuffix(".wr") || n.hasSuffix(".hint") { unlink(directory.appendingPathComponent(n).path) }
        }
    }

    private func writeState() throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let payload: Data
        do { payload = try encoder.encode(state) } catch { throw MaskStoreError.unwritable(path: stateURL.path, reason: "\(error)") }
        var data = Data("nb-mask-store \(SHA256Digest.hex(payload)) \(payload.count)\n".utf8)
        data.append(payload)
        do { try AtomicFile.write(data, to: stateURL, permissions: 0o600) } catch {
            throw MaskStoreError.unwritable(path: stateURL.path, reason: "\(error.localizedDescription)")
        }
        // The rename must be durable before any reserved row is used.
        let dir = open(directory.path, O_RDONLY)
        if dir >= 0 { fsync(dir); close(dir) }
    }

    /// Makes `spec`'s stream ready: new streams, and streams whose spec changed (another key,
    /// other weights, another k), start afresh with a new seed.
    public func prepare(_ spec: MaskStreamSpec) throws {
        lock.lock()
        defer { lock.unlock() }
        if let s = state.streams[spec.name], s.spec == spec { return }
        if let old = state.streams[spec.name] {
            for i in old.digests.indices { unlink(segmentURL(old, old.firstSegment + i).path) }
            unlink(hintURL(old).path)
            verified.remove(hintURL(old).path)
            notices.append("\(spec.name): the key, the weights or the plan changed; its pads start afresh")
        }
        let seed = MaskSeed.fresh()
        state.streams[spec.name] = Stream(spec: spec, seed: SHA256Digest.hex(digest: seed.bytes), hintSeed: SHA256Digest.hex(digest: MaskSeed.fresh().bytes),
                                          hintDigest: nil, mark: 0, firstSegment: 0, digests: [])
        next[spec.name] = 0
        expanders[spec.name] = nil
        try writeState()
    }

    /// Rows filled and not yet handed out.
    public func available(_ name: String) -> Int {
        lock.lock()
        defer { lock.unlock() }
        guard let s = state.streams[name] else { return 0 }
        return max(0, s.filledRows - (next[name] ?? s.mark))
    }

    /// The next row the stream will hand out (for tests and reports).
    public func nextRow(_ name: String) -> Int? {
        lock.lock()
        defer { lock.unlock() }
        return next[name]
    }

    /// Computes the pad products of one segment offline: `compute(first row, pads)` gets the
    /// segment's pads (segmentRows × K, row-major, mod 2^k) and returns W·r (segmentRows × O,
    /// row-major, mod 2^k).
    public typealias Offline = (_ firstRow: Int, _ pads: [UInt64]) throws -> [UInt64]

    /// Hands out `rows` fresh rows of stream `name`: their pads (rows × K) and pad products
    /// (rows × O), computing missing or damaged segments with `offline`. The rows are recorded
    /// as used, durably, before this returns.
    public func take(_ name: String, rows: Int, offline: Offline) throws -> (first: Int, pads: [UInt64], products: PadProducts) {
        lock.lock()
        defer { lock.unlock() }
        guard let s = state.streams[name] else { throw MaskStoreError.unknownStream(name) }
        precondition(rows > 0)
        let first = next[name] ?? s.mark
        if first + rows > s.mark {
            // One durable write moves every stream's mark ahead (they advance together in a pass).
            let ahead = max(rows, reserveAhead)
            for (n, t) in state.streams { state.streams[n]!.mark = max(t.mark, (next[n] ?? t.mark) + ahead) }
            collectSegments()
            try writeState()
        }
        next[name] = first + rows
        try fill(name, through: first + rows, offline: offline)
        let pads = padRows(name, first: first, count: rows)
        let products = try productRows(name, first: first, count: rows, offline: offline)
        return (first, pads, products)
    }

    /// Fills segments ahead so that `rows` rows are available without offline work.
    public func prefill(_ name: String, rows: Int, offline: Offline, progress: (Int, Int) -> Void = { _, _ in }) throws {
        lock.lock()
        defer { lock.unlock() }
        guard let s = state.streams[name] else { throw MaskStoreError.unknownStream(name) }
        try fill(name, through: (next[name] ?? s.mark) + rows, offline: offline, progress: progress)
    }

    /// Lowers every mark to the rows really handed out (the rest were never used), at the end
    /// of a run, so the next run wastes none of them.
    public func release() throws {
        lock.lock()
        defer { lock.unlock() }
        var changed = false
        for (n, t) in state.streams {
            let used = next[n] ?? t.mark
            if used < t.mark { state.streams[n]!.mark = used; changed = true }
        }
        if changed { collectSegments(); try writeState() }
    }

    // MARK: - Hints

    /// The stream's hint: the public seed of its fixed encryption masks A and the server's
    /// product W·A (packed, as the server answers it), computed by `compute(seed)` the first time
    /// and kept in `<stream>.hint`, checked against its digest the first time this process reads
    /// it (a missing or damaged one is asked for again: it is public, and depends on nothing secret).
    public func hint(_ name: String, compute: (MaskSeed) throws -> [UInt8]) throws -> (seed: MaskSeed, bytes: [UInt8]) {
        lock.lock()
        defer { lock.unlock() }
        guard var s = state.streams[name] else { throw MaskStoreError.unknownStream(name) }
        let seed = MaskSeed(bytes: hexBytes(s.hintSeed)), url = hintURL(s)
        // A hint holds N × O values of at most 8 bytes: a larger file is damaged, and is not read.
        let limit = s.spec.segmentRows * s.spec.outputs * 8
        if let digest = s.hintDigest, let bytes = Self.readWhole(url, limit: limit) {
            if verified.contains(url.path) || SHA256Digest.hex(bytes) == digest {
                verified.insert(url.path)
                return (seed, bytes)
            }
            notices.append("\(name): its hint \(url.lastPathComponent) does not match its digest; asked for again")
        } else if s.hintDigest != nil {
            notices.append("\(name): its hint \(url.lastPathComponent) is missing, unreadable or over \(limit) bytes; asked for again")
        }
        let bytes: [UInt8]
        do { bytes = try compute(seed) } catch { throw MaskStoreError.fillFailed(stream: name, reason: "its hint: \(error)") }
        let data = Data(bytes)
        do { try AtomicFile.write(data, to: url, permissions: 0o600, durable: false) } catch {
            throw MaskStoreError.unwritable(path: url.path, reason: "\(error.localizedDescription)")
        }
        s.hintDigest = SHA256Digest.hex(data)
        state.streams[name] = s
        try writeState()
        verified.insert(url.path)
        return (seed, bytes)
    }

    /// A file's bytes read straight into an array (nil when it cannot be read whole or holds
    /// more than `limit` bytes).
    private static func readWhole(_ url: URL, limit: Int) -> [UInt8]? {
        let fd = open(url.path, O_RDONLY)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_size >= 0, st.st_size <= limit else { return nil }
        let size = Int(st.st_size)
        var failed = false
        let bytes = [UInt8](unsafeUninitializedCapacity: size) { buffer, count in
            var done = 0
            while done < size {
                let got = pread(fd, buffer.baseAddress! + done, size - done, off_t(done))
                if got <= 0 { failed = true; break }
                done += got
            }
            count = failed ? 0 : size
        }
        return failed ? nil : bytes
    }

    private func hintURL(_ s: Stream) -> URL {
        directory.appendingPathComponent("\(SHA256Digest.hex(s.spec.name).prefix(16)).hint")
    }

    // MARK: - Segments

    private func segmentURL(_ s: Stream, _ index: Int) -> URL {
        let stem = String(SHA256Digest.hex(s.spec.name).prefix(16))
        return directory.appendingPathComponent("\(stem)-\(index).wr")
    }

    /// Drops segments every row of which lies below the next row (never read again).
    private func collectSegments() {
        for (n, s) in state.streams {
            let floor = min(next[n] ?? s.mark, s.mark) / s.spec.segmentRows
            guard floor > s.firstSegment else { continue }
            var t = s
            let drop = min(floor - s.firstSegment, s.digests.count)
            for i in 0..<drop {
                let url = segmentURL(s, s.firstSegment + i)
                verified.remove(url.path)
                unlink(url.path)
            }
            t.digests.removeFirst(drop)
            t.firstSegment = t.digests.isEmpty ? max(floor, s.firstSegment + drop) : s.firstSegment + drop
            state.streams[n] = t
        }
    }

    private func fill(_ name: String, through row: Int, offline: Offline, progress: (Int, Int) -> Void = { _, _ in }) throws {
        var s = state.streams[name]!
        let rowsPer = s.spec.segmentRows
        let needed = (row + rowsPer - 1) / rowsPer
        // Segments wholly below the next row are never read: start past them.
        let from = (next[name] ?? s.mark) / rowsPer
        if s.firstSegment + s.digests.count < from {
            for i in s.digests.indices { unlink(segmentURL(s, s.firstSegment + i).path) }
            s.digests = []
            s.firstSegment = from
        }
        let total = max(0, needed - (s.firstSegment + s.digests.count))
        var done = 0
        while s.firstSegment + s.digests.count < needed {
            let index = s.firstSegment + s.digests.count
            let digest = try computeSegment(s, index, offline: offline)
            // The offline work may have recorded the stream's hint meanwhile.
            s = state.streams[name]!
            s.digests.append(digest)
            state.streams[name] = s
            try writeState()
            done += 1
            progress(done, total)
        }
        state.streams[name] = s
    }

    /// Runs the offline product of one segment and writes it; returns its digest.
    private func computeSegment(_ s: Stream, _ index: Int, offline: Offline) throws -> String {
        let spec = s.spec
        let started = ProcessInfo.processInfo.systemUptime
        defer { fillSeconds += ProcessInfo.processInfo.systemUptime - started }
        let first = index * spec.segmentRows
        let pads = padRows(spec.name, first: first, count: spec.segmentRows)
        let products: [UInt64]
        do { products = try offline(first, pads) } catch {
            throw MaskStoreError.fillFailed(stream: spec.name, reason: "\(error)")
        }
        precondition(products.count == spec.segmentRows * spec.outputs, "offline products: \(products.count) values")
        var bytes = Data(count: spec.segmentBytes)
        let width = spec.bytesPerValue
        bytes.withUnsafeMutableBytes { raw in
            products.withUnsafeBufferPointer { p in
                let (raw, p) = (raw.baseAddress!, p.baseAddress!)
                // Little-endian, `width` bytes a value, in chunks on every core.
                Parallel.forEach(rows: products.count, minimumRowsPerTask: 1 << 16) { range in
                    for i in range {
                        let v = p[i].littleEndian
                        if width == 8 {
                            raw.storeBytes(of: v, toByteOffset: 8 * i, as: UInt64.self)
                        } else if width == 4 {
                            raw.storeBytes(of: UInt32(truncatingIfNeeded: v), toByteOffset: 4 * i, as: UInt32.self)
                        } else {
                            raw.storeBytes(of: UInt16(truncatingIfNeeded: v), toByteOffset: 3 * i, as: UInt16.self)
                            raw.storeBytes(of: UInt8(truncatingIfNeeded: v >> 16), toByteOffset: 3 * i + 2, as: UInt8.self)
                        }
                    }
                }
            }
        }
        let url = segmentURL(s, index)
        // Not flushed to disk: a segment lost or torn by a power cut fails its digest and is
        // computed again (only the state file, which orders the use of pads, must be durable).
        // Hashed on one core while the other writes the file.
        nonisolated(unsafe) var digest = ""
        nonisolated(unsafe) var failure: Error?
        let data = bytes
        DispatchQueue.concurrentPerform(iterations: 2) { i in
            if i == 0 {
                digest = SHA256Digest.hex(data)
            } else {
                do { try AtomicFile.write(data, to: url, permissions: 0o600, durable: false) } catch { failure = error }
            }
        }
        if let failure { throw MaskStoreError.unwritable(path: url.path, reason: "\(failure.localizedDescription)") }
        verified.insert(url.path)
        segmentsFilled += 1
        return digest
    }

    private func padRows(_ name: String, first: Int, count: Int) -> [UInt64] {
        let s = state.streams[name]!
        if expanders[name] == nil {
            expanders[name] = PadExpander(seed: MaskSeed(bytes: hexBytes(s.seed)), bits: s.spec.bits)
        }
        return expanders[name]!.pads(first: first, count: count, features: s.spec.features)
    }

    /// W·r of rows [first, first + count): read from the segment files (only the rows asked for,
    /// so the client's memory holds one call's products), each file checked against its digest
    /// the first time this process reads it (a damaged one is computed again).
    private func productRows(_ name: String, first: Int, count: Int, offline: Offline) throws -> PadProducts {
        let spec = state.streams[name]!.spec
        let o = spec.outputs, width = spec.bytesPerValue
        // Read as the segments keep them (the unblinding reads `width` bytes per value).
        var failure: Error?
        let bytes = [UInt8](unsafeUninitializedCapacity: count * o * width) { buffer, initialized in
            var row = first
            do {
                while row < first + count {
                    let index = row / spec.segmentRows
                    let url = try verifiedSegment(name, index, offline: offline)
                    let inSegment = row - index * spec.segmentRows
                    let n = min(first + count - row, spec.segmentRows - inSegment)
                    let fd = open(url.path, O_RDONLY)
                    guard fd >= 0 else { throw MaskStoreError.unwritable(path: url.path, reason: String(cString: strerror(errno))) }
                    defer { close(fd) }
                    let at = buffer.baseAddress! + (row - first) * o * width, length = n * o * width
                    var done = 0
                    while done < length {
                        let got = pread(fd, at + done, length - done, off_t(inSegment * o * width + done))
                        guard got > 0 else { throw MaskStoreError.unwritable(path: url.path, reason: "short read (\(got < 0 ? String(cString: strerror(errno)) : "end of file"))") }
                        done += got
                    }
                    row += n
                }
            } catch { failure = error }
            initialized = failure == nil ? count * o * width : 0
        }
        if let failure { throw failure }
        return PadProducts(bytes: bytes, width: width, bits: spec.bits)
    }

    /// The segment's file, checked (size and SHA-256) once per process; a missing or damaged
    /// one is computed again from its pads (none of its rows has been sent: rows are read
    /// before they are used).
    private func verifiedSegment(_ name: String, _ index: Int, offline: Offline) throws -> URL {
        var s = state.streams[name]!
        let url = segmentURL(s, index)
        if verified.contains(url.path) { return url }
        let slot = index - s.firstSegment
        precondition(slot >= 0 && slot < s.digests.count, "segment \(index) of \(name) is not filled")
        let why: String
        var st = stat()
        if stat(url.path, &st) == 0 {
            let size = Int(st.st_size)
            if size != s.spec.segmentBytes {
                why = "has \(size) bytes, expected \(s.spec.segmentBytes)"
            } else if (try? SHA256Digest.hex(fileAt: url)) != s.digests[slot] {
                why = "does not match its digest"
            } else {
                verified.insert(url.path)
                return url
            }
        } else {
            why = "is missing"
        }
        notices.append("\(name): segment \(url.lastPathComponent) \(why); computed again from its pads (none of them was sent)")
        let digest = try computeSegment(s, index, offline: offline)
        // The offline work may have recorded the stream's hint meanwhile.
        s = state.streams[name]!
        s.digests[slot] = digest
        state.streams[name] = s
        try writeState()
        return url
    }
}

private func hexBytes(_ hex: String) -> [UInt8] {
    var out: [UInt8] = []
    var it = hex.utf8.makeIterator()
    func digit(_ c: UInt8) -> UInt8 { c <= 57 ? c - 48 : c - 87 }
    while let a = it.next(), let b = it.next() { out.append(digit(a) << 4 | digit(b)) }
    return out
}
