import CKernels
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
        // One task per (sequence, head), over the cores with OpenBLAS on one thread each: the
        // products are small (T×T×hd), so splitting each over the threads costs more than it
        // saves, and the softmaxes run beside them instead of after. Each task writes only its
        // own P and output columns, so the result does not depend on the split.
        BLAS.singleThreaded {
            Parallel.forEach(rows: B * H) { tasks in
                for task in tasks {
                    let b = task / H, h = task % H
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
        // dS for every (sequence, head): as large as one layer's saved P.
        let dS = UnsafeMutablePointer<Real>.allocate(capacity: B * H * T * T)
        defer { dS.deallocate() }
        BLAS.singleThreaded {
            // First, per (sequence, query head), which write only their own dS and dQ_h.
            Parallel.forEach(rows: B * H) { tasks in
                for task in tasks {
                    let b = task / H, h = task % H
                    let qOff = b * T * qStride + h * hd, kvOff = b * T * kvStride + (h / group) * hd
                    let dOh = dOut + b * T * oStride + h * hd
                    let p = probs + (b * H + h) * T * T, ds = dS + (b * H + h) * T * T
                    // dP (T, T) = dO_h (T, hd) · V_gᵀ (hd, T)
                    Real.gemm(transposeA: false, transposeB: true, m: T, n: T, k: hd, alpha: 1, a: dOh, lda: oStride,
                              b: v + kvOff, ldb: kvStride, beta: 0, c: ds, ldc: T)
                    for i in 0..<T {
                        softmaxBackward(p + i * T, ds + i * T, visible: i + 1)
                        (ds + i * T + i + 1).update(repeating: 0, count: T - i - 1)
                    }
                    // dQ_h (T, hd) += scale · dS (T, T) · K_g (T, hd)
                    Real.gemm(transposeA: false, transposeB: false, m: T, n: hd, k: T, alpha: scale, a: ds, lda: T,
                              b: k + kvOff, ldb: kvStride, beta: 1, c: dQ + qOff, ldc: qStride)
                }
            }
            // Then dK_g and dV_g, summed over the group's query heads in order, per (sequence,
            // key/value head, block of key rows): each task owns its rows. Key row j only
            // receives from query rows i ≥ j (P and dS are zero above the diagonal).
            let blocks = min(T, max(1, (2 * Parallel.cores + B * KV - 1) / (B * KV)))
            Parallel.forEach(rows: B * KV * blocks) { tasks in
                for task in tasks {
                    let block = task % blocks, g = (task / blocks) % KV, b = task / (blocks * KV)
                    let r0 = T * block / blocks, r1 = T * (block + 1) / blocks
                    guard r1 > r0 else { continue }
                    let kvOff = b * T * kvStride + g * hd + r0 * kvStride
                    for h in (g * group)..<((g + 1) * group) {
                        let p = probs + (b * H + h) * T * T, ds = dS + (b * H + h) * T * T
                        let dOh = dOut + b * T * oStride + h * hd, qh = q + b * T * qStride + h * hd
                        // dV_g[r0..<r1] += P[r0..<T, r0..<r1]ᵀ · dO_h[r0..<T]
                        Real.gemm(transposeA: true, transposeB: false, m: r1 - r0, n: hd, k: T - r0, alpha: 1,
                                  a: p + r0 * T + r0, lda: T, b: dOh + r0 * oStride, ldb: oStride, beta: 1, c: dV + kvOff, ldc: kvStride)
                        // dK_g[r0..<r1] += scale · dS[r0..<T, r0..<r1]ᵀ · Q_h[r0..<T]
                        Real.gemm(transposeA: true, transposeB: false, m: r1 - r0, n: hd, k: T - r0, alpha: scale,
                                  a: ds + r0 * T + r0, lda: T, b: qh + r0 * qStride, ldb: qStride, beta: 1, c: dK + kvOff, ldc: kvStride)
                    }
                }
            }
        }
    }

    /// The softmax's backward on the first `visible` entries of one row, in place:
    /// d_j ← p_j·(d_j − Σ_i p_i·d_i).
    static func softmaxBackward<Real: TrainingScalar>(_ p: UnsafePointer<Real>, _ d: UnsafeMutablePointer<Real>, visible: Int) {
        if Real.self == Float.self {
            return nb_softmax_backward(UnsafeRawPointer(p).assumingMemoryBound(to: Float.self),
                                       UnsafeMutableRawPointer(d).assumingMemoryBound(to: Float.self), visible)
        }
        var dot: Real = 0
        for j in 0..<visible { dot += p[j] * d[j] }
        for j in 0..<visible { d[j] = p[j] * (d[j] - dot) }
    }

    /// Softmax over the first `visible` entries of a row (max-subtracted); zeros after them.
    static func causalSoftmax<Real: TrainingScalar>(_ row: UnsafeMutablePointer<Real>, visible: Int, count: Int, first: Int = 0) {
        if Real.self == Float.self {  // the vectorized max and exp of the cross-entropy
            let r = UnsafeMutableRawPointer(row).assumingMemoryBound(to: Float.self), n = visible - first
            let m = nb_max(r + first, n)
            let inv = 1 / nb_exp_shifted(r + first, m, r + first, n)
            for j in first..<visible { r[j] *= inv }
            r.update(repeating: 0, count: first)
            (r + visible).update(repeating: 0, count: count - visible)
            return
        }
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
