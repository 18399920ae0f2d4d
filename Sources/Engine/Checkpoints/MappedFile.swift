import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A whole file mapped read-only into memory (POSIX `mmap`), unmapped when released.
///
/// Pages are read from disk on first touch, so opening a 100 MB checkpoint costs nothing
/// until tensors are read, and the page cache is shared between processes.
final class MappedFile: @unchecked Sendable {
    let path: String
    /// Start of the mapping; a dangling but never dereferenced pointer when `count == 0`.
    let base: UnsafeRawPointer
    let count: Int
    private let mapping: UnsafeMutableRawPointer?
    /// Heap copy instead of a mapping (tests parse thousands of damaged files from memory).
    private let heap: UnsafeMutableRawPointer?

    init(bytes: [UInt8], path: String) {
        self.path = path
        let n = bytes.count
        count = n
        mapping = nil
        let h = UnsafeMutableRawPointer.allocate(byteCount: max(n, 1), alignment: 64)
        bytes.withUnsafeBytes { if let b = $0.baseAddress { h.copyMemory(from: b, byteCount: n) } }
        heap = h
        base = UnsafeRawPointer(h)
    }

    init(url: URL) throws(CheckpointError) {
        path = url.path
        heap = nil
        let fd = open(path, O_RDONLY)
        if fd < 0 {
            let code = errno
            if code == ENOENT || code == ENOTDIR { throw .notFound(path: path) }
            throw .unreadable(path: path, reason: String(cString: strerror(code)))
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            throw .unreadable(path: path, reason: String(cString: strerror(errno)))
        }
        guard (info.st_mode & 0o170000) == 0o100000 else {  // S_ISREG
            throw .unreadable(path: path, reason: "not a regular file")
        }
        count = Int(info.st_size)
        if count == 0 {
            mapping = nil
            base = UnsafeRawPointer(bitPattern: 0x10)!
            return
        }
        let p = mmap(nil, count, PROT_READ, MAP_PRIVATE, fd, 0)
        guard let p, p != UnsafeMutableRawPointer(bitPattern: -1) else {  // MAP_FAILED
            throw .unreadable(path: path, reason: "mmap: \(String(cString: strerror(errno)))")
        }
        mapping = p
        base = UnsafeRawPointer(p)
    }

    /// Drops the resident pages of `range` (bytes from `base`) once their contents have been
    /// copied out: the mapping stays valid (pages are read again from the file if touched),
    /// but a model loaded tensor by tensor never holds the whole file and its copy at once.
    func release(_ range: Range<Int>) {
        guard let mapping, !range.isEmpty else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = (range.lowerBound + page - 1) / page * page, end = range.upperBound / page * page
        if end > start { madvise(mapping + start, end - start, MADV_DONTNEED) }
    }

    deinit {
        if let mapping { munmap(mapping, count) }
        heap?.deallocate()
    }
}

/// A cursor over little-endian bytes that throws `.truncated` instead of reading past the end.
struct ByteReader {
    let base: UnsafeRawPointer
    let count: Int
    let path: String
    var position = 0

    init(_ file: MappedFile, position: Int = 0) {
        base = file.base
        count = file.count
        path = file.path
        self.position = position
    }

    var remaining: Int { count - position }

    /// Ensures `n` more bytes exist; `n` may come from the file, so it is checked for overflow.
    func need(_ n: Int) throws(CheckpointError) {
        guard n >= 0, n <= count - position else {
            let (sum, overflow) = position.addingReportingOverflow(max(n, 0))
            throw .truncated(path: path, expected: overflow ? Int.max : sum, actual: count)
        }
    }

    mutating func load<T: FixedWidthInteger>(_: T.Type) throws(CheckpointError) -> T {
        try need(MemoryLayout<T>.size)
        let v = T(littleEndian: base.loadUnaligned(fromByteOffset: position, as: T.self))
        position += MemoryLayout<T>.size
        return v
    }

    mutating func u32() throws(CheckpointError) -> UInt32 { try load(UInt32.self) }
    mutating func u64() throws(CheckpointError) -> UInt64 { try load(UInt64.self) }

    /// A 64-bit length or count that must fit in `Int`; larger values cannot fit in the file.
    mutating func length() throws(CheckpointError) -> Int {
        let v = try u64()
        guard v <= UInt64(Int.max) else { throw .truncated(path: path, expected: Int.max, actual: count) }
        return Int(v)
    }

    /// GGUF string: UInt64 byte count, then UTF-8 bytes (no terminator). Invalid UTF-8 is
    /// repaired with U+FFFD rather than rejected.
    mutating func string() throws(CheckpointError) -> String {
        let n = try length()
        try need(n)
        let s = String(decoding: UnsafeRawBufferPointer(start: base + position, count: n), as: UTF8.self)
        position += n
        return s
    }
}
