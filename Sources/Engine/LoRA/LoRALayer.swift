import CKernels
import Foundation

/// The low-rank update of one linear layer, with its gradients and what its last training
/// forward saved for the backward pass.
///
/// Shapes (PEFT's `lora_A.weight`, `lora_B.weight`):
///
///     A (r, in),  B (out, r),  s = alpha / r
///     forward:   x̃ = x ⊙ M          (T, in)   M: inverted-dropout mask, 0 or 1/(1−p); all ones without dropout
///                h = x̃·Aᵀ           (T, r)
///                y += s · h·Bᵀ      (T, out)  added to the frozen layer's output x·Wᵀ
///
/// Backward, given the output gradient dY (T, out) and the same x, from dy_tj = s·Σ_k h_tk·B_jk
/// and h_tk = Σ_i x̃_ti·A_ki:
///
///     dB  = s · dYᵀ·h                (out, r)
///     dH  = s · dY·B                 (T, r)
///     dA  = dHᵀ·x̃ = s · Bᵀ·dYᵀ·x̃     (r, in)
///     dX += (dH·A) ⊙ M = s · (dY·B·A) ⊙ M   (T, in)  the adapter's share of the input gradient
///
/// Gradients accumulate (`+=`) until ``LoRAAdapter/zeroGradients()``, so several
/// forward/backward pairs (micro-batches) add up before one optimizer step.
public struct LoRALayer: Sendable {
    /// The frozen layer this update belongs to.
    public let module: LinearModule
    public let rank: Int
    /// s = alpha / r.
    public let scale: Float
    /// (r, in), row-major.
    public var a: [Float]
    /// (out, r), row-major.
    public var b: [Float]
    /// dLoss/dA (r, in) and dLoss/dB (out, r), accumulated by ``backward``.
    public var gradientA: [Float]
    public var gradientB: [Float]

    /// An inverted-dropout mask M: each element kept (1) or dropped (0), and the kept values'
    /// factor 1/(1−p), so M = kept · keep. One byte per element (a quarter of a Float mask's
    /// memory over every adapted layer of a pass).
    public struct Dropout: Sendable, Equatable {
        public var kept: [UInt8]
        public var keep: Float
        /// M as Float values, 0 or 1/(1−p).
        public var values: [Float] { kept.map { $0 == 0 ? 0 : keep } }
    }

    /// Saved by a training forward: the dropout mask (T, in) (nil without dropout),
    /// h = x̃·Aᵀ (T, r), T.
    var savedDropout: Dropout?
    var savedHidden: [Float] = []
    var savedRows = 0

    public init(module: LinearModule, rank: Int, scale: Float, a: [Float], b: [Float]) {
        precondition(rank > 0, "LoRA rank must be positive, got \(rank)")
        precondition(a.count == rank * module.inFeatures, "\(module.name): lora_A needs (\(rank), \(module.inFeatures)) = \(rank * module.inFeatures) values, got \(a.count)")
        precondition(b.count == module.outFeatures * rank, "\(module.name): lora_B needs (\(module.outFeatures), \(rank)) = \(module.outFeatures * rank) values, got \(b.count)")
        (self.module, self.rank, self.scale, self.a, self.b) = (module, rank, scale, a, b)
        gradientA = [Float](repeating: 0, count: a.count)
        gradientB = [Float](repeating: 0, count: b.count)
    }

    /// A fresh layer as PEFT initialises it: A from `nn.init.kaiming_uniform_(A, a=√5)`,
    /// whose bound is gain·√(3/fan_in) with gain = √(2/(1+5)), i.e. A ~ U(−1/√in, 1/√in);
    /// B = 0, so the layer adds nothing until trained.
    public static func initialized(module: LinearModule, rank: Int, scale: Float, rng: inout SeededGenerator) -> LoRALayer {
        let bound = 1 / Double(module.inFeatures).squareRoot()
        let a = (0..<rank * module.inFeatures).map { _ in Float((2 * rng.nextUnit() - 1) * bound) }
        return LoRALayer(module: module, rank: rank, scale: scale, a: a, b: [Float](repeating: 0, count: module.outFeatures * rank))
    }

    /// Parameters: r·in + out·r.
    public var parameterCount: Int { a.count + b.count }

    /// An inverted-dropout mask of `count` elements: dropped with probability p, else kept
    /// with the factor 1/(1−p). Element i is dropped when the i-th `rng.nextUnit()` is below p,
    /// and `rng` ends where `count` draws leave it; the draws are made in parallel (the
    /// generator is a counter: see `nb_dropout_kept`).
    public static func dropout(count: Int, probability p: Double, rng: inout SeededGenerator) -> Dropout {
        precondition(p >= 0 && p < 1, "dropout probability \(p) outside [0, 1)")
        // nextUnit() = u · 2⁻⁵³ for a 53-bit integer u, so nextUnit() < p ⟺ u < ⌈p · 2⁵³⌉.
        let threshold = UInt64((p * 0x1p53).rounded(.up))
        let kept = [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            if count > 0 { nb_dropout_kept(rng.state, threshold, buffer.baseAddress!, count) }
            initialized = count
        }
        rng.state &+= UInt64(count) &* SeededGenerator.increment
        return Dropout(kept: kept, keep: Float(1 / (1 - p)))
    }

    /// ``dropout(count:probability:rng:)`` as Float values, 0 or 1/(1−p).
    static func dropoutMask(count: Int, probability p: Double, rng: inout SeededGenerator) -> [Float] {
        dropout(count: count, probability: p, rng: &rng).values
    }

    /// y (rows, out) += s · (x ⊙ mask)·Aᵀ·Bᵀ for x (rows, in). With `save`, keeps the mask
    /// and h for ``backward``.
    mutating func forward(_ x: UnsafePointer<Float>, rows: Int, mask: Dropout?, save: Bool, into y: UnsafeMutablePointer<Float>) {
        let n = module.inFeatures, o = module.outFeatures, r = rank
        precondition(rows > 0, "\(module.name): LoRA forward needs at least one row")
        precondition(mask == nil || mask!.kept.count == rows * n, "\(module.name): dropout mask has \(mask!.kept.count) values for (\(rows), \(n))")
        var hidden = [Float](repeating: 0, count: rows * r)  // (T, r)
        Self.withMaskedInput(x, rows: rows, mask: mask) { xm in
            BLAS.sgemm(transposeA: false, transposeB: true, m: rows, n: r, k: n, a: xm, lda: n, b: a, ldb: n, c: &hidden, ldc: r)
        }
        BLAS.sgemm(transposeA: false, transposeB: true, m: rows, n: o, k: r, alpha: scale, a: hidden, lda: r, b: b, ldb: r,
                   beta: 1, c: y, ldc: o)
        if save {
            savedDropout = mask
            savedHidden = hidden
            savedRows = rows
        }
    }

    /// Accumulates dA and dB from the layer's input x (rows, in) and output gradient
    /// dY (rows, out), and adds the adapter's share of dX (rows, in) when `dX` is given.
    /// Needs the saved state of a training ``forward`` on the same x.
    mutating func backward(_ x: UnsafePointer<Float>, outputGradient dY: UnsafePointer<Float>, rows: Int,
                           inputGradient dX: UnsafeMutablePointer<Float>?) {
        let n = module.inFeatures, o = module.outFeatures, r = rank
        precondition(savedRows == rows, "\(module.name): LoRA backward over \(rows) rows needs a training forward over the same rows (saved: \(savedRows))")
        // dB (out, r) += s · dYᵀ (out, T) · h (T, r)
        BLAS.sgemm(transposeA: true, transposeB: false, m: o, n: r, k: rows, alpha: scale, a: dY, lda: o, b: savedHidden, ldb: r,
                   beta: 1, c: &gradientB, ldc: r)
        // dH (T, r) = s · dY (T, out) · B (out, r)
        var dH = [Float](repeating: 0, count: rows * r)
        BLAS.sgemm(transposeA: false, transposeB: false, m: rows, n: r, k: o, alpha: scale, a: dY, lda: o, b: b, ldb: r,
                   c: &dH, ldc: r)
        // dA (r, in) += dHᵀ (r, T) · x̃ (T, in)
        let savedMask = savedDropout
        Self.withMaskedInput(x, rows: rows, mask: savedMask) { xm in
            BLAS.sgemm(transposeA: true, transposeB: false, m: r, n: n, k: rows, a: dH, lda: r, b: xm, ldb: n,
                       beta: 1, c: &gradientA, ldc: n)
        }
        guard let dX else { return }
        if let mask = savedMask {
            // dX += (dH·A) ⊙ M
            var dXm = [Float](repeating: 0, count: rows * n)
            BLAS.sgemm(transposeA: false, transposeB: false, m: rows, n: n, k: r, a: dH, lda: r, b: a, ldb: n, c: &dXm, ldc: n)
            nb_mask_accumulate(dXm, mask.kept, mask.keep, rows * n, dX)
        } else {
            BLAS.sgemm(transposeA: false, transposeB: false, m: rows, n: n, k: r, a: dH, lda: r, b: a, ldb: n, beta: 1, c: dX, ldc: n)
        }
    }

    /// Calls `body` with x itself, or with x ⊙ mask in a temporary buffer.
    private static func withMaskedInput(_ x: UnsafePointer<Float>, rows: Int, mask: Dropout?, _ body: (UnsafePointer<Float>) -> Void) {
        guard let mask else { return body(x) }
        let count = mask.kept.count
        let masked = [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
            nb_mask_multiply(x, mask.kept, mask.keep, count, buffer.baseAddress!)
            initialized = count
        }
        body(masked)
    }

    /// ΔW = s·B·A, laid out like the frozen weight: (out, in) for nn.Linear, (in, out) for
    /// GPT-2's Conv1D (PEFT's `get_delta_weight` with `fan_in_fan_out`).
    public func deltaWeight() -> [Float] {
        let n = module.inFeatures, o = module.outFeatures
        var delta = [Float](repeating: 0, count: n * o)
        if module.transposedWeight {
            // (in, out) = s · Aᵀ (in, r) · Bᵀ (r, out)
            BLAS.sgemm(transposeA: true, transposeB: true, m: n, n: o, k: rank, alpha: scale, a: a, lda: n, b: b, ldb: rank,
                       c: &delta, ldc: o)
        } else {
            // (out, in) = s · B (out, r) · A (r, in)
            BLAS.sgemm(transposeA: false, transposeB: false, m: o, n: n, k: rank, alpha: scale, a: b, lda: rank, b: a, ldb: n,
                       c: &delta, ldc: n)
        }
        return delta
    }

    /// W += s·B·A in the frozen weight's own layout (see ``deltaWeight()``).
    public func merge(into weight: inout [Float]) {
        precondition(weight.count == module.inFeatures * module.outFeatures,
                     "\(module.name): weight has \(weight.count) values, expected \(module.inFeatures) × \(module.outFeatures)")
        let delta = deltaWeight()
        for i in weight.indices { weight[i] += delta[i] }
    }
}
