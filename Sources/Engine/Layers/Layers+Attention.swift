// Causal multi-head attention with grouped-query heads over a batch of whole sequences.
// See ``Layers`` for the conventions. No exported Float specialisation here: with one,
// Swift 6.3 references the specialised symbol from the model passes but does not emit it
// (link error); the passes that call these are in this module and are specialised anyway.

extension Layers {
    /// Causal self-attention of B sequences of T tokens, each head on its own:
    ///
    ///     S = Q_h·K_gᵀ / √hd,  P = softmax(S + causal mask) row-wise,  O_h = P·V_g
    ///
    /// with query head h reading key/value head g = h / (heads / kvHeads) (grouped-query
    /// attention; kvHeads = heads is plain multi-head). Attention never crosses sequences.
    ///
    /// - q: (B·T, ≥ heads·hd) rows `qStride` apart; k, v: (B·T, ≥ kvHeads·hd) rows `kvStride`
    ///   apart. Strides let GPT-2 pass views into its fused (B·T, 3C) qkv buffer.
    /// - out: (B·T, heads·hd), contiguous.
    /// - probs: (B, heads, T, T), saved for the backward: P, zero above the diagonal.
    public static func attentionForward<Real: TrainingScalar>(
        q: UnsafePointer<Real>, k: UnsafePointer<Real>, v: UnsafePointer<Real>, qStride: Int, kvStride: Int,
        _ out: UnsafeMutablePointer<Real>, probs: UnsafeMutablePointer<Real>,
        batchSize B: Int, sequenceLength T: Int, heads H: Int, kvHeads KV: Int, headDim hd: Int, window: Int? = nil
    ) {
        precondition(KV > 0 && H % KV == 0, "\(H) heads cannot share \(KV) key/value heads")
        precondition(qStride >= H * hd && kvStride >= KV * hd, "strides \(qStride), \(kvStride) too small for \(H)×\(hd), \(KV)×\(hd)")
        let group = H / KV, oStride = H * hd, scale = 1 / Real(hd).squareRoot()
        for b in 0..<B {
            for h in 0..<H {
                let qh = q + b * T * qStride + h * hd
                let kg = k + b * T * kvStride + (h / group) * hd, vg = v + b * T * kvStride + (h / group) * hd
                let p = probs + (b * H + h) * T * T
                // S (T, T) = scale · Q_h (T, hd) · K_gᵀ (hd, T)
                Real.gemm(transposeA: false, transposeB: true, m: T, n: T, k: hd, alpha: scale, a: qh, lda: qStride,
                          b: kg, ldb: kvStride, beta: 0, c: p, ldc: T)
                for i in 0..<T { causalSoftmax(p + i * T, visible: i + 1, count: T, first: window.map { max(0, i + 1 - $0) } ?? 0) }
                // O_h (T, hd) = P (T, T) · V_g (T, hd)
                Real.gemm(transposeA: false, transposeB: false, m: T, n: hd, k: T, alpha: 1, a: p, lda: T,
                          b: vg, ldb: kvStride, beta: 0, c: out + b * T * oStride + h * hd, ldc: oStride)
            }
        }
    }

    /// Backward of ``attentionForward(q:k:v:qStride:kvStride:_:probs:batchSize:sequenceLength:heads:kvHeads:headDim:)``.
    ///
    /// Per (sequence, head), with dO the output gradient:
    ///
    ///     dP = dO·V_gᵀ,  dV_g += Pᵀ·dO,
    ///     dS = P ⊙ (dP − rowsum(P ⊙ dP)),
    ///     dQ_h += dS·K_g / √hd,  dK_g += dSᵀ·Q_h / √hd
    ///
    /// so dK and dV of a key/value head are summed over the query heads of its group.
    /// dQ, dK, dV have the strides of q, k, v (they may be views into one (B·T, 3C) buffer).
    public static func attentionBackward<Real: TrainingScalar>(
        _ dOut: UnsafePointer<Real>, q: UnsafePointer<Real>, k: UnsafePointer<Real>, v: UnsafePointer<Real>, probs: UnsafePointer<Real>,
        qStride: Int, kvStride: Int,
        dQ: UnsafeMutablePointer<Real>, dK: UnsafeMutablePointer<Real>, dV: UnsafeMutablePointer<Real>,
        batchSize B: Int, sequenceLength T: Int, heads H: Int, kvHeads KV: Int, headDim hd: Int
    ) {
        let group = H / KV, oStride = H * hd, scale = 1 / Real(hd).squareRoot()
        let dS = UnsafeMutablePointer<Real>.allocate(capacity: T * T)  // (T, T): dP, then dS in place
        defer { dS.deallocate() }
        for b in 0..<B {
            for h in 0..<H {
                let qOff = b * T * qStride + h * hd, kvOff = b * T * kvStride + (h / group) * hd
                let dOh = dOut + b * T * oStride + h * hd
                let p = probs + (b * H + h) * T * T
                // dP (T, T) = dO_h (T, hd) · V_gᵀ (hd, T)
                Real.gemm(transposeA: false, transposeB: true, m: T, n: T, k: hd, alpha: 1, a: dOh, lda: oStride,
                          b: v + kvOff, ldb: kvStride, beta: 0, c: dS, ldc: T)
                // dV_g (T, hd) += Pᵀ (T, T) · dO_h (T, hd)
                Real.gemm(transposeA: true, transposeB: false, m: T, n: hd, k: T, alpha: 1, a: p, lda: T,
                          b: dOh, ldb: oStride, beta: 1, c: dV + kvOff, ldc: kvStride)
                for i in 0..<T {
                    let pr = p + i * T, dr = dS + i * T
                    var dot: Real = 0
                    for j in 0...i { dot += pr[j] * dr[j] }
                    for j in 0...i { dr[j] = pr[j] * (dr[j] - dot) }
                    for j in (i + 1)..<T { dr[j] = 0 }
                }
                // dQ_h (T, hd) += scale · dS (T, T) · K_g (T, hd)
                Real.gemm(transposeA: false, transposeB: false, m: T, n: hd, k: T, alpha: scale, a: dS, lda: T,
                          b: k + kvOff, ldb: kvStride, beta: 1, c: dQ + qOff, ldc: qStride)
                // dK_g (T, hd) += scale · dSᵀ (T, T) · Q_h (T, hd)
                Real.gemm(transposeA: true, transposeB: false, m: T, n: hd, k: T, alpha: scale, a: dS, lda: T,
                          b: q + qOff, ldb: qStride, beta: 1, c: dK + kvOff, ldc: kvStride)
            }
        }
    }

    /// Softmax over the first `visible` entries of a row (max-subtracted); zeros after them.
    static func causalSoftmax<Real: TrainingScalar>(_ row: UnsafeMutablePointer<Real>, visible: Int, count: Int, first: Int = 0) {
        var m = -Real.infinity
        for j in first..<visible where row[j] > m { m = row[j] }
        var sum: Real = 0
        for j in 0..<first { row[j] = 0 }
        for j in first..<visible { row[j] = Real.exp(row[j] - m); sum += row[j] }
        let inv = 1 / sum
        for j in first..<visible { row[j] *= inv }
        for j in visible..<count { row[j] = 0 }
    }
}
