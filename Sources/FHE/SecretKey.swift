import Foundation

#if canImport(Glibc)
import Glibc
#endif

public enum FHEKeyError: Error, CustomStringConvertible {
    case unreadable(path: String, reason: String)
    case malformed(path: String, reason: String)
    case permissions(path: String, mode: Int)

    public var description: String {
        switch self {
        case .unreadable(let p, let r): return "\(p): cannot read the secret key: \(r)"
        case .malformed(let p, let r): return "\(p): not a valid nb secret key file: \(r)"
        case .permissions(let p, let m):
            return "\(p): the secret key file is readable by others (mode \(String(m, radix: 8))); it must be 0600 — run chmod 600 \(p)"
        }
    }
}

/// A ternary secret key of one parameter set: N coefficients uniform over {−1, 0, 1},
/// drawn from the OS CSPRNG. It stays on the client: nothing the server receives is
/// derived from it except through encryption.
public struct SecretKey: Sendable {
    public let parameters: FHEParameters
    public let coefficients: [Int8]
    /// The FFT spectrum used by encryption and decryption.
    let spectrum: [Double]

    public init(parameters: FHEParameters, coefficients: [Int8]) {
        precondition(coefficients.count == parameters.ringDegree)
        self.parameters = parameters
        self.coefficients = coefficients
        spectrum = NegacyclicRing.shared(degree: parameters.ringDegree).spectrum(of: coefficients)
    }

    /// A fresh key: each coefficient from one OS random byte below 255 (rejection sampling,
    /// so the three values are exactly equally likely).
    public static func generate(_ parameters: FHEParameters) -> SecretKey {
        var coefficients: [Int8] = []
        coefficients.reserveCapacity(parameters.ringDegree)
        while coefficients.count < parameters.ringDegree {
            for b in SystemRandom.bytes(parameters.ringDegree) where b < 255 && coefficients.count < parameters.ringDegree {
                coefficients.append(Int8(b % 3) - 1)
            }
        }
        return SecretKey(parameters: parameters, coefficients: coefficients)
    }
}

/// The client's keys, one per parameter set, made on first use. Saved as one file with mode
/// 0600, written atomically (temporary file created 0600, then renamed).
public final class Keyring: @unchecked Sendable {
    private let lock = NSLock()
    private var keys: [UInt16: SecretKey] = [:]

    public init() {}

    public init(keys: [SecretKey]) { for k in keys { self.keys[k.parameters.id] = k } }

    public func key(for parameters: FHEParameters) -> SecretKey {
        lock.lock()
        defer { lock.unlock() }
        if let k = keys[parameters.id] { return k }
        let k = SecretKey.generate(parameters)
        keys[parameters.id] = k
        return k
    }

    public var allKeys: [SecretKey] {
        lock.lock()
        defer { lock.unlock() }
        return keys.values.sorted { $0.parameters.id < $1.parameters.id }
    }

    static let magic: [UInt8] = Array("NBSK".utf8)
    static let version: UInt16 = 1

    /// Every key made so far, generating one per set when `all` is true.
    public func serialized(all: Bool = false) -> [UInt8] {
        if all { for p in FHEParameters.all { _ = key(for: p) } }
        var w = ByteWriter()
        w.bytes(Keyring.magic)
        w.u16(Keyring.version)
        let ks = allKeys
        w.u16(UInt16(ks.count))
        for k in ks {
            w.u16(k.parameters.id)
            w.u32(UInt32(k.coefficients.count))
            w.bytes(k.coefficients.map { UInt8(bitPattern: $0) })
        }
        return w.data
    }

    public convenience init(serialized bytes: [UInt8], path: String = "<memory>") throws(FHEKeyError) {
        var r = ByteReader(bytes)
        do {
            guard try r.bytes(4) == Keyring.magic else { throw FHEWireError.badMagic(expected: "NBSK") }
            let v = try r.u16()
            guard v == Keyring.version else { throw FHEWireError.unsupportedVersion(v) }
            let count = Int(try r.u16())
            var keys: [SecretKey] = []
            for _ in 0..<count {
                let id = try r.u16()
                guard let p = FHEParameters.withID(id) else { throw FHEWireError.unknownParameters(id) }
                let n = Int(try r.u32())
                guard n == p.ringDegree else { throw FHEWireError.invalidField(name: "key length", value: "\(n), expected \(p.ringDegree)") }
                let raw = try r.bytes(n)
                let coefficients = raw.map { Int8(bitPattern: $0) }
                guard coefficients.allSatisfy({ $0 >= -1 && $0 <= 1 }) else { throw FHEWireError.invalidField(name: "key coefficient", value: "outside {−1, 0, 1}") }
                keys.append(SecretKey(parameters: p, coefficients: coefficients))
            }
            guard r.remaining == 0 else { throw FHEWireError.invalidField(name: "length", value: "\(r.remaining) trailing bytes") }
            self.init(keys: keys)
        } catch let e as FHEWireError {
            throw .malformed(path: path, reason: e.description)
        } catch {
            throw .malformed(path: path, reason: "\(error)")
        }
    }

    /// Writes the keys to `url` with permissions 0600 (atomic: 0600 temporary file, fsync, rename).
    public func save(to url: URL) throws {
        let bytes = serialized()
        let dir = url.deletingLastPathComponent()
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let tmp = dir.appendingPathComponent(".\(url.lastPathComponent).\(getpid()).tmp")
        let fd = open(tmp.path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard fd >= 0 else { throw FHEKeyError.unreadable(path: tmp.path, reason: String(cString: strerror(errno))) }
        fchmod(fd, 0o600)
        let ok = bytes.withUnsafeBytes { raw -> Bool in
            var off = 0
            while off < raw.count {
                let n = write(fd, raw.baseAddress! + off, raw.count - off)
                if n <= 0 { return false }
                off += n
            }
            return fsync(fd) == 0
        }
        close(fd)
        guard ok, rename(tmp.path, url.path) == 0 else {
            unlink(tmp.path)
            throw FHEKeyError.unreadable(path: url.path, reason: "write failed: \(String(cString: strerror(errno)))")
        }
    }

    /// Reads keys saved by ``save(to:)``; refuses a file others can read.
    public static func load(from url: URL) throws(FHEKeyError) -> Keyring {
        var st = stat()
        guard stat(url.path, &st) == 0 else { throw .unreadable(path: url.path, reason: String(cString: strerror(errno))) }
        let mode = Int(st.st_mode) & 0o777
        guard mode & 0o077 == 0 else { throw .permissions(path: url.path, mode: mode) }
        guard let data = FileManager.default.contents(atPath: url.path) else { throw .unreadable(path: url.path, reason: "unreadable") }
        return try Keyring(serialized: [UInt8](data), path: url.path)
    }
}
