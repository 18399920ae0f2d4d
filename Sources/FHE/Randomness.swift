import CFHEKernels
import Crypto
import Foundation
import _CryptoExtras

#if canImport(Glibc)
import Glibc
#endif

/// Random bytes from the operating system's CSPRNG (`getrandom(2)` on Linux, the
/// system generator elsewhere): secret keys, mask seeds and encryption noise.
public enum SystemRandom {
    public static func fill(_ buffer: UnsafeMutableRawBufferPointer) {
        guard var p = buffer.baseAddress else { return }
        var left = buffer.count
        #if os(Linux)
        while left > 0 {
            let n = nb_fhe_os_random(p, left)
            if n < 0 {
                if errno == EINTR { continue }
                fatalError("getrandom failed: errno \(errno)")
            }
            p += n
            left -= n
        }
        #else
        var rng = SystemRandomNumberGenerator()
        while left > 0 {
            var word = rng.next()
            let n = min(8, left)
            withUnsafeBytes(of: &word) { p.copyMemory(from: $0.baseAddress!, byteCount: n) }
            p += n
            left -= n
        }
        #endif
    }

    public static func bytes(_ count: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        out.withUnsafeMutableBytes { fill($0) }
        return out
    }

    public static func fill(words: UnsafeMutableBufferPointer<UInt64>) {
        fill(UnsafeMutableRawBufferPointer(words))
    }
}

/// Random words for encryption noise in bulk: the AES-256-CTR keystream under a fresh key of
/// 32 bytes from ``SystemRandom`` (the construction of NIST's CTR_DRBG, without its reseeding:
/// one key per call). An offline fill draws hundreds of millions of noise samples; through
/// `getrandom(2)` their words alone took 3 % of it, through AES-NI a fifth of that.
public enum BulkRandom {
    public static func fill(words: UnsafeMutableBufferPointer<UInt64>) {
        guard !words.isEmpty else { return }
        var expander = MaskExpander(seed: MaskSeed.fresh())
        expander.expand(group: 0, feature: 0, into: words)
    }
}

/// The seed of one ciphertext batch's masks: 32 fresh bytes from the OS per call, sent in
/// the clear (a mask is public), so a (mask, key) pair is never reused.
public struct MaskSeed: Hashable, Sendable {
    public static let byteCount = 32
    public let bytes: [UInt8]

    public init(bytes: [UInt8]) {
        precondition(bytes.count == MaskSeed.byteCount, "a mask seed has \(MaskSeed.byteCount) bytes")
        self.bytes = bytes
    }

    public static func fresh() -> MaskSeed { MaskSeed(bytes: SystemRandom.bytes(byteCount)) }
}

/// Expands a ``MaskSeed`` into mask polynomials with AES-256 in counter mode (swift-crypto,
/// BoringSSL): the mask of (group g, feature i) is the keystream under key = seed from the
/// initial counter block g (4 bytes, big-endian) ‖ i (4 bytes, big-endian) ‖ 0 (8 bytes), read
/// as little-endian UInt64 words. Client and server expand the same masks; different
/// (group, feature) pairs start 2^64 blocks apart, so their keystreams never overlap.
public struct MaskExpander {
    let key: SymmetricKey
    private var zeros: Data

    public init(seed: MaskSeed) {
        key = SymmetricKey(data: seed.bytes)
        zeros = Data()
    }

    /// The raw keystream from a 16-byte initial counter block (for known-answer tests).
    public static func keystream(key: [UInt8], counter: [UInt8], count: Int) -> [UInt8] {
        let nonce = try! AES._CTR.Nonce(nonceBytes: counter)
        let data = try! AES._CTR.encrypt(Data(count: count), using: SymmetricKey(data: key), nonce: nonce)
        return [UInt8](data)
    }

    /// Writes the `out.count` mask words of (group, feature).
    public mutating func expand(group: Int, feature: Int, into out: UnsafeMutableBufferPointer<UInt64>) {
        let bytes = out.count * 8
        if zeros.count != bytes { zeros = Data(count: bytes) }
        var counter = [UInt8](repeating: 0, count: 16)
        for b in 0..<4 {
            counter[b] = UInt8(truncatingIfNeeded: UInt32(group) >> (24 - 8 * b))
            counter[4 + b] = UInt8(truncatingIfNeeded: UInt32(feature) >> (24 - 8 * b))
        }
        let nonce = try! AES._CTR.Nonce(nonceBytes: counter)
        let stream = try! AES._CTR.encrypt(zeros, using: key, nonce: nonce)
        stream.withUnsafeBytes { raw in
            UnsafeMutableRawBufferPointer(out).copyMemory(from: raw)
        }
        // Little-endian words on every platform.
        for i in 0..<out.count { out[i] = UInt64(littleEndian: out[i]) }
    }
}
