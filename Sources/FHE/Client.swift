import CFHEKernels
import Dispatch
import Foundation

/// Runs `body` over `count` items split into contiguous chunks, one per thread.
func parallelChunks(_ count: Int, threads: Int = FHEThreads.count, align: Int = 1, _ body: (Range<Int>) -> Void) {
    let t = max(1, min(threads, count / max(align, 1)))
    if t <= 1 { body(0..<count); return }
    let per = ((count + t - 1) / t + align - 1) / align * align
    concurrentLoop(t) { i in
        let lo = min(count, i * per), hi = min(count, lo + per)
        if lo < hi { body(lo..<hi) }
    }
}

/// Runs `body(i)` for every i in 0..<count on the calling thread and the threads of the kernels'
/// pool (`nb_pool_run`: they poll briefly between loops, so the many short loops of an encrypted
/// call or a generated token do not each wake a sleeping thread), or through Dispatch when the
/// pool is taken (another thread's loop, or a loop inside one of its iterations).
public func concurrentLoop(_ count: Int, _ body: (Int) -> Void) {
    guard count > 1 else {
        if count == 1 { body(0) }
        return
    }
    withoutActuallyEscaping(body) { body in
        var loop = body
        let ran = withUnsafeMutablePointer(to: &loop) { pointer in
            nb_pool_run(count, { context, index in
                context!.assumingMemoryBound(to: ((Int) -> Void).self).pointee(index)
            }, pointer)
        }
        guard ran == 0 else { return }
        nonisolated(unsafe) let body = body
        DispatchQueue.concurrentPerform(iterations: count) { body($0) }
    }
}

/// Threads the FHE kernels use (the machine's cores).
public enum FHEThreads {
    nonisolated(unsafe) public static var count = max(1, ProcessInfo.processInfo.activeProcessorCount)
}

/// glibc serves every allocation above 32 MiB (up to 128 MiB, adaptively) with a fresh mmap, so
/// each encrypted call's large buffers would be page-faulted and zeroed by the kernel again. Up to
/// 1 GiB, keep freed memory in the heap for the next call instead (done once, on first use).
enum AllocatorTuning {
    static let applied: Bool = {
        nb_fhe_tune_allocator()
        return true
    }()
}

/// The client side: encrypts quantized integer matrices under its secret keys and decrypts
/// the server's products. The key never leaves this object except through ``Keyring/save(to:)``.
/// How the process's allocator treats the encrypted calls' large buffers.
public enum FHEMemory {
    /// Large buffers go back to the system when freed, and at most two arenas: a remote
    /// client's peak memory stays near its model plus one call. (By default buffers are kept
    /// for reuse, which is faster for the in-process server.)
    public static func compact() { nb_fhe_compact_allocator() }

    /// Freed buffers of up to 1 GiB stay in the heap for reuse instead of being unmapped and
    /// faulted in again on the next use (encrypted calls, training steps), unless the process
    /// asked for ``compact()``, which it keeps.
    public static func keepFreedBuffers() { nb_fhe_tune_allocator() }

    /// In a ``compact()`` process, runs `body` (work with large buffers: an offline fill's full
    /// rings) with every buffer of 1 MiB and more mapped per call, and afterwards keeps freed
    /// buffers of up to 32 MiB and 128 MiB of free heap: the many small calls between fills
    /// (online products, the clear layers of a training step) then reuse their memory instead
    /// of faulting fresh pages in on every call, which took a fifth of a remote client's step.
    /// The peak stays the fill's. In other processes it only runs `body`.
    public static func largeBuffers<R>(_ body: () throws -> R) rethrows -> R {
        nb_fhe_compact_between_peaks(1)
        defer { nb_fhe_compact_between_peaks(0) }
        return try body()
    }
}

public final class FHEClient: @unchecked Sendable {
    public let keyring: Keyring

    public init(keyring: Keyring = Keyring()) {
        self.keyring = keyring
        _ = AllocatorTuning.applied
    }

    /// Encrypts x (rows × features, row-major, integers with |x| < 2^(b−1)) for `plan`, under
    /// the keyring's key with masks from a fresh seed.
    public func encrypt(_ x: UnsafeBufferPointer<Int64>, rows: Int, features: Int, plan: CallPlan) -> EncryptedMatrix {
        precondition(!plan.hinted, "a hinted plan encrypts under a fresh key with its stream's seed")
        return encrypt(x, rows: rows, features: features, plan: plan, seed: MaskSeed.fresh(), key: keyring.key(for: plan.parameters))
    }

    /// Encrypts under `key` with the masks of `seed`. For a ``CallPlan/hinted`` plan, `seed` is
    /// the fixed public seed of the client's hint and `key` must be fresh for this call
    /// (``SecretKey/generate(_:)``): calls that share masks are then samples of independent
    /// secrets, which is as hard as one (the multi-secret form of ring LWE); the request
    /// carries bodies only, one ring at most.
    public func encrypt(_ x: UnsafeBufferPointer<Int64>, rows: Int, features: Int, plan: CallPlan, seed: MaskSeed, key: SecretKey) -> EncryptedMatrix {
        precondition(x.count == rows * features && rows > 0 && features > 0)
        precondition(key.parameters == plan.parameters)
        let p = plan.parameters, n = p.ringDegree, groups = (rows + n - 1) / n
        precondition(!plan.hinted || groups == 1, "a hint covers one ring of tokens")
        let ring = NegacyclicRing.shared(degree: n)
        let count = rows * features
        // x feature-major (K × R), so each ciphertext's tokens are contiguous.
        var xt: [Int64] = Parallel.uninitialized(count) { Parallel.transpose(x.baseAddress!, rows: rows, columns: features, into: $0.baseAddress!) }
        // Every (feature, token) body is written below.
        var bodies: [UInt64] = Parallel.uninitialized(count) { _ in }
        let delta = plan.delta, sigma = p.noiseStandardDeviation
        bodies.withUnsafeMutableBufferPointer { out in
            xt.withUnsafeBufferPointer { xs in
                key.spectrum.withUnsafeBufferPointer { spectrum in
                    parallelChunks(features) { range in
                        let ws = ring.workspace()
                        var expander = MaskExpander(seed: seed)
                        var a = [UInt64](repeating: 0, count: n), product = a
                        // Noise for this thread's ciphertexts: rounded Gaussian from fresh random words.
                        let samples = range.count * rows + 1
                        var noise = [Int64](repeating: 0, count: samples & ~1 + 2), words = [UInt64](repeating: 0, count: noise.count / 2)
                        words.withUnsafeMutableBufferPointer { BulkRandom.fill(words: $0) }
                        nb_fhe_gaussian(words, noise.count, sigma, &noise)
                        for i in range {
                            for g in 0..<groups {
                                a.withUnsafeMutableBufferPointer { expander.expand(group: g, feature: i, into: $0) }
                                ring.multiply(a, bits: 64, spectrum: spectrum.baseAddress!, into: &product, workspace: ws)
                                let tokens = min(n, rows - g * n), at = i * rows + g * n
                                noise.withUnsafeBufferPointer { e in
                                    nb_fhe_encode(out.baseAddress! + at, product, e.baseAddress! + (i - range.lowerBound) * rows + g * n,
                                                  xs.baseAddress! + at, 1, tokens, delta)
                                }
                            }
                        }
                        words.withUnsafeMutableBytes { _ = memset($0.baseAddress!, 0, $0.count) }
                        noise.withUnsafeMutableBytes { _ = memset($0.baseAddress!, 0, $0.count) }
                    }
                }
            }
        }
        xt.withUnsafeMutableBytes { _ = memset($0.baseAddress!, 0, $0.count) }
        let packed = bodies.withUnsafeBufferPointer { Parallel.packBits($0, bits: plan.bodyBits) }
        return EncryptedMatrix(parametersID: p.id, bodyBits: plan.bodyBits, maskLimbs: plan.requestMaskLimbs, outputBodyBits: plan.outputBodyBits,
                               outputMaskBits: plan.requestOutputMaskBits, rows: rows, features: features, seed: seed, body: packed)
    }

    /// The request for the hint of a ``CallPlan/hinted`` plan: the server's product W·A of the
    /// masks of `seed` (one ring, at full precision: 4 limbs), with no bodies. Public: the seed
    /// is, and no key or data enters it. Its answer's masks are what ``decrypt(_:plan:hint:key:)`` takes.
    public static func hintRequest(features: Int, plan: CallPlan, seed: MaskSeed) -> EncryptedMatrix {
        precondition(plan.hinted)
        return EncryptedMatrix(parametersID: plan.parameters.id, bodyBits: 0, maskLimbs: plan.maskLimbs, outputBodyBits: 0,
                               outputMaskBits: plan.outputMaskBits, rows: plan.parameters.ringDegree, features: features, seed: seed, body: [])
    }

    public func encrypt(_ x: [Int64], rows: Int, features: Int, plan: CallPlan) -> EncryptedMatrix {
        x.withUnsafeBufferPointer { encrypt($0, rows: rows, features: features, plan: plan) }
    }

    public func encrypt(_ x: [Int64], rows: Int, features: Int, plan: CallPlan, seed: MaskSeed, key: SecretKey) -> EncryptedMatrix {
        x.withUnsafeBufferPointer { encrypt($0, rows: rows, features: features, plan: plan, seed: seed, key: key) }
    }

    /// The product's integers (rows × outputs, row-major), decoded mod 2^b and centred.
    public func decrypt(_ y: EncryptedProduct, plan: CallPlan) -> [Int64] {
        precondition(!plan.hinted)
        return decrypt(y, plan: plan, masks: y.masks, maskBits: y.outputMaskBits, key: keyring.key(for: plan.parameters))
    }

    /// A hinted call's product: its bodies from `y`, its masks' product from `hint` (the masks of
    /// the answer to ``hintRequest(features:plan:seed:)``), under the call's fresh `key`.
    public func decrypt(_ y: EncryptedProduct, plan: CallPlan, hint: [UInt8], key: SecretKey) throws(FHEWireError) -> [Int64] {
        try decrypt(y, plan: plan, hint: hint, key: key, as: Int64.self)
    }

    /// The same values as `T` (Int64, or UInt64: their two's complement, the residues mod 2^64,
    /// for a caller that keeps them mod 2^b), with no conversion pass.
    public func decrypt<T: FixedWidthInteger & BitwiseCopyable>(_ y: EncryptedProduct, plan: CallPlan, hint: [UInt8], key: SecretKey, as: T.Type) throws(FHEWireError) -> [T] {
        precondition(plan.hinted && MemoryLayout<T>.stride == 8)
        let expected = packedByteCount(y.outputs * plan.parameters.ringDegree, bits: plan.outputMaskBits)
        guard y.groups == 1, hint.count == expected, y.outputBodyBits == plan.outputBodyBits else {
            throw .shapeMismatch("a hint of \(hint.count) bytes for \(y.outputs) outputs at \(plan.outputMaskBits) bits (expected \(expected)), \(y.rows) rows at \(y.outputBodyBits) bits")
        }
        return decrypt(y, plan: plan, masks: hint, maskBits: plan.outputMaskBits, key: key)
    }

    private func decrypt<T: BitwiseCopyable>(_ y: EncryptedProduct, plan: CallPlan, masks: [UInt8], maskBits: Int, key: SecretKey) -> [T] {
        // Decoded output-major (O × R), then transposed to rows × outputs.
        // Every value is decoded (each output's groups cover all rows), then transposed.
        let byOutput: [Int64] = Parallel.uninitialized(y.rows * y.outputs) { o in
            phases(y, masks: masks, maskBits: maskBits, key: key) { r, j, count, body, product in
                nb_fhe_decode(body, product, count, UInt32(plan.messageBits), o.baseAddress! + j * y.rows + r, 1)
            }
        }
        // Transposed as Int64 (the specialized copy), into an array of T of the same bits.
        return byOutput.withUnsafeBufferPointer { b in
            Parallel.uninitialized(y.rows * y.outputs) { (out: UnsafeMutableBufferPointer<T>) in
                out.withMemoryRebound(to: Int64.self) { Parallel.transpose(b.baseAddress!, rows: y.outputs, columns: y.rows, into: $0.baseAddress!) }
            }
        }
    }

    /// E = (b' − a'·s) − Δ·m for each value, given the true products m (rows × outputs): the
    /// noise before decoding, for measuring it against the formula.
    /// For a hinted call, `hint` and the call's `key` as ``decrypt(_:plan:hint:key:)`` takes them.
    public func decryptionErrors(_ y: EncryptedProduct, expected: [Int64], plan: CallPlan, hint: [UInt8]? = nil, key: SecretKey? = nil) -> [Double] {
        let key = key ?? keyring.key(for: plan.parameters)
        let (masks, maskBits) = hint.map { ($0, plan.outputMaskBits) } ?? (y.masks, y.outputMaskBits)
        var out = [Double](repeating: 0, count: y.rows * y.outputs)
        out.withUnsafeMutableBufferPointer { o in
            expected.withUnsafeBufferPointer { m in
                phases(y, masks: masks, maskBits: maskBits, key: key) { r, j, count, body, product in
                    nb_fhe_noise(body, product, count, UInt32(plan.messageBits), m.baseAddress! + r * y.outputs + j,
                                 o.baseAddress! + r * y.outputs + j, y.outputs)
                }
            }
        }
        return out
    }

    /// Calls `visit(first row, output, count, bodies, a'·s)` for each output and ciphertext
    /// group (in parallel over outputs; each call writes its own values).
    private func phases(_ y: EncryptedProduct, masks: [UInt8], maskBits bits: Int, key: SecretKey,
                        _ visit: (Int, Int, Int, UnsafePointer<UInt64>, UnsafePointer<UInt64>) -> Void) {
        let p = y.parameters, n = p.ringDegree, groups = y.groups
        let ring = NegacyclicRing.shared(degree: n)
        // Masks are unpacked one output at a time (n·bits is a multiple of 8, so each output's
        // masks start on a byte): the client never holds the whole unpacked matrix.
        let bodies = Parallel.unpackBits(y.bodies, count: y.outputs * y.rows, bits: y.outputBodyBits)
        let rows = y.rows
        precondition(n * bits % 8 == 0)
        withoutActuallyEscaping(visit) { visit in
            masks.withUnsafeBufferPointer { m in
                bodies.withUnsafeBufferPointer { b in
                    key.spectrum.withUnsafeBufferPointer { spectrum in
                        parallelChunks(y.outputs) { range in
                            let ws = ring.workspace()
                            var product = [UInt64](repeating: 0, count: n)
                            var mask = [UInt64](repeating: 0, count: n)
                            for j in range {
                                for g in 0..<groups {
                                    nb_fhe_unpack_bits(m.baseAddress! + (j * groups + g) * n * bits / 8, n, UInt32(bits), &mask)
                                    mask.withUnsafeBufferPointer { a in
                                        ring.multiply(a.baseAddress!, bits: bits, spectrum: spectrum.baseAddress!, into: &product, workspace: ws)
                                    }
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
