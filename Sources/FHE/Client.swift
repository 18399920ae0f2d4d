import CFHEKernels
import Dispatch
import Foundation

/// Runs `body` over `count` items split into contiguous chunks, one per thread.
func parallelChunks(_ count: Int, threads: Int = FHEThreads.count, align: Int = 1, _ body: (Range<Int>) -> Void) {
    let t = max(1, min(threads, count / max(align, 1)))
    if t <= 1 { body(0..<count); return }
    let per = ((count + t - 1) / t + align - 1) / align * align
    nonisolated(unsafe) let body = body
    DispatchQueue.concurrentPerform(iterations: t) { i in
        let lo = min(count, i * per), hi = min(count, lo + per)
        if lo < hi { body(lo..<hi) }
    }
}

/// Threads the FHE kernels use (the machine's cores).
public enum FHEThreads {
    nonisolated(unsafe) public static var count = max(1, ProcessInfo.processInfo.activeProcessorCount)
}

/// The client side: encrypts quantized integer matrices under its secret keys and decrypts
/// the server's products. The key never leaves this object except through ``Keyring/save(to:)``.
public final class FHEClient: @unchecked Sendable {
    public let keyring: Keyring

    public init(keyring: Keyring = Keyring()) { self.keyring = keyring }

    /// Encrypts x (rows × features, row-major, integers with |x| < 2^(b−1)) for `plan`.
    public func encrypt(_ x: UnsafeBufferPointer<Int64>, rows: Int, features: Int, plan: CallPlan) -> EncryptedMatrix {
        precondition(x.count == rows * features && rows > 0 && features > 0)
        let p = plan.parameters, n = p.ringDegree, groups = (rows + n - 1) / n
        let key = keyring.key(for: p), ring = NegacyclicRing.shared(degree: n)
        let seed = MaskSeed.fresh()
        let count = rows * features
        // Noise: rounded Gaussian from OS random words (two words per two samples).
        var noise = [Int64](repeating: 0, count: count + (count & 1))
        do {
            var words = [UInt64](repeating: 0, count: noise.count)
            words.withUnsafeMutableBufferPointer { SystemRandom.fill(words: $0) }
            nb_fhe_gaussian(words, words.count, p.noiseStandardDeviation, &noise)
            words.withUnsafeMutableBytes { _ = memset($0.baseAddress!, 0, $0.count) }
        }
        var bodies = [UInt64](repeating: 0, count: count)
        let delta = plan.delta
        bodies.withUnsafeMutableBufferPointer { out in
            noise.withUnsafeBufferPointer { e in
                key.spectrum.withUnsafeBufferPointer { spectrum in
                    parallelChunks(features) { range in
                        let ws = ring.workspace()
                        var expander = MaskExpander(seed: seed)
                        var a = [UInt64](repeating: 0, count: n), product = a
                        for i in range {
                            for g in 0..<groups {
                                a.withUnsafeMutableBufferPointer { expander.expand(group: g, feature: i, into: $0) }
                                ring.multiply(a, bits: 64, spectrum: spectrum.baseAddress!, into: &product, workspace: ws)
                                let tokens = min(n, rows - g * n), at = i * rows + g * n
                                nb_fhe_encode(out.baseAddress! + at, product, e.baseAddress! + at, x.baseAddress! + g * n * features + i,
                                              features, tokens, delta)
                            }
                        }
                    }
                }
            }
        }
        noise.withUnsafeMutableBytes { _ = memset($0.baseAddress!, 0, $0.count) }
        let bits = 16 * plan.bodyLimbs
        var packed = [UInt8](repeating: 0, count: packedByteCount(count, bits: bits))
        nb_fhe_pack_bits(bodies, count, UInt32(bits), &packed)
        return EncryptedMatrix(parametersID: p.id, bodyLimbs: plan.bodyLimbs, maskLimbs: plan.maskLimbs, outputBodyBits: plan.outputBodyBits,
                               outputMaskBits: plan.outputMaskBits, rows: rows, features: features, seed: seed, body: packed)
    }

    public func encrypt(_ x: [Int64], rows: Int, features: Int, plan: CallPlan) -> EncryptedMatrix {
        x.withUnsafeBufferPointer { encrypt($0, rows: rows, features: features, plan: plan) }
    }

    /// The product's integers (rows × outputs, row-major), decoded mod 2^b and centred.
    public func decrypt(_ y: EncryptedProduct, plan: CallPlan) -> [Int64] {
        var out = [Int64](repeating: 0, count: y.rows * y.outputs)
        out.withUnsafeMutableBufferPointer { o in
            phases(y) { r, j, count, body, product in
                nb_fhe_decode(body, product, count, UInt32(plan.messageBits), o.baseAddress! + r * y.outputs + j, y.outputs)
            }
        }
        return out
    }

    /// E = (b' − a'·s) − Δ·m for each value, given the true products m (rows × outputs): the
    /// noise before decoding, for measuring it against the formula.
    public func decryptionErrors(_ y: EncryptedProduct, expected: [Int64], plan: CallPlan) -> [Double] {
        var out = [Double](repeating: 0, count: y.rows * y.outputs)
        out.withUnsafeMutableBufferPointer { o in
            expected.withUnsafeBufferPointer { m in
                phases(y) { r, j, count, body, product in
                    nb_fhe_noise(body, product, count, UInt32(plan.messageBits), m.baseAddress! + r * y.outputs + j,
                                 o.baseAddress! + r * y.outputs + j, y.outputs)
                }
            }
        }
        return out
    }

    /// Calls `visit(first row, output, count, bodies, a'·s)` for each output and ciphertext
    /// group (in parallel over outputs; each call writes its own values).
    private func phases(_ y: EncryptedProduct, _ visit: (Int, Int, Int, UnsafePointer<UInt64>, UnsafePointer<UInt64>) -> Void) {
        let p = y.parameters, n = p.ringDegree, groups = y.groups
        let key = keyring.key(for: p), ring = NegacyclicRing.shared(degree: n)
        var masks = [UInt64](repeating: 0, count: y.outputs * groups * n)
        nb_fhe_unpack_bits(y.masks, masks.count, UInt32(y.outputMaskBits), &masks)
        var bodies = [UInt64](repeating: 0, count: y.outputs * y.rows)
        nb_fhe_unpack_bits(y.bodies, bodies.count, UInt32(y.outputBodyBits), &bodies)
        let rows = y.rows
        withoutActuallyEscaping(visit) { visit in
            masks.withUnsafeBufferPointer { m in
                bodies.withUnsafeBufferPointer { b in
                    key.spectrum.withUnsafeBufferPointer { spectrum in
                        parallelChunks(y.outputs) { range in
                            let ws = ring.workspace()
                            var product = [UInt64](repeating: 0, count: n)
                            for j in range {
                                for g in 0..<groups {
                                    ring.multiply(m.baseAddress! + (j * groups + g) * n, bits: y.outputMaskBits, spectrum: spectrum.baseAddress!,
                                                  into: &product, workspace: ws)
                                    visit(g * n, j, min(n, rows - g * n), b.baseAddress! + j * rows + g * n, product)
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
