// The language-model head and the loss. See ``Layers`` for the conventions.

extension Layers {
    /// Targets equal to this are ignored by ``crossEntropy(logits:targets:dLogits:rows:vocabularySize:ignoreIndex:normalizer:)``
    /// (PyTorch's default `ignore_index`): masked question tokens and padding.
    public static let ignoreIndex = -100

    /// Softmax cross-entropy over the vocabulary, fused with its backward, as PyTorch's
    /// `F.cross_entropy(logits, targets, ignore_index: -100, reduction: "mean")`:
    ///
    ///     loss = (1/n) Σ_{r: target_r ≠ ignore} (logsumexp(z_r) − z_r[target_r])
    ///     dz_r = (softmax(z_r) − onehot(target_r)) / n   for counted rows, 0 for ignored rows
    ///
    /// where n is the number of counted rows, or `normalizer` when given (e.g. the counted
    /// tokens of all micro-batches of one optimizer step, for gradient accumulation).
    /// When no row counts, the loss and the gradient are 0 (PyTorch gives NaN).
    ///
    /// - logits z: (N, V); targets: (N), already shifted (target r is the token after
    ///   input r), each in 0..<V or `ignoreIndex`.
    /// - dLogits: (N, V), written (=), not accumulated; nil for the loss alone.
    /// - Returns: the loss.
    @_specialize(exported: true, where Real == Float)
    public static func crossEntropy<Real: TrainingScalar>(
        logits: UnsafePointer<Real>, targets: [Int], dLogits: UnsafeMutablePointer<Real>?,
        rows N: Int, vocabularySize V: Int, ignoreIndex: Int = Layers.ignoreIndex, normalizer: Int? = nil
    ) -> Real {
        precondition(targets.count == N, "\(targets.count) targets for \(N) rows of logits")
        let counted = targets.reduce(0) { $0 + ($1 == ignoreIndex ? 0 : 1) }
        let n = normalizer ?? counted
        precondition(n >= 0, "normalizer \(n) must not be negative")
        let inv: Real = n > 0 ? 1 / Real(n) : 0
        var loss: Real = 0
        for r in 0..<N {
            let z = logits + r * V, target = targets[r]
            guard target != ignoreIndex else {
                if let dLogits { (dLogits + r * V).update(repeating: 0, count: V) }
                continue
            }
            precondition(target >= 0 && target < V, "target \(target) at row \(r) outside vocabulary 0..<\(V)")
            var m = -Real.infinity
            for j in 0..<V where z[j] > m { m = z[j] }
            var sum: Real = 0
            if let dLogits {
                // One exp per logit: keep e^(z − m) in dLogits, then scale it into softmax / n.
                let d = dLogits + r * V
                for j in 0..<V { d[j] = Real.exp(z[j] - m); sum += d[j] }
                let scale = inv / sum
                for j in 0..<V { d[j] *= scale }
                d[target] -= inv
            } else {
                for j in 0..<V { sum += Real.exp(z[j] - m) }
            }
            loss += m + Real.log(sum) - z[target]
        }
        return loss * inv
    }

    /// The tied language-model head: logits (N, V) = h (N, C) · Eᵀ, E the token embedding (V, C).
    /// (An untied head is the same product with its own (V, C) matrix.)
    @_specialize(exported: true, where Real == Float)
    public static func lmHeadForward<Real: TrainingScalar>(
        _ h: UnsafePointer<Real>, embedding: UnsafePointer<Real>, _ logits: UnsafeMutablePointer<Real>,
        rows N: Int, width C: Int, vocabularySize V: Int
    ) {
        linearForward(h, weight: embedding, bias: nil, logits, rows: N, inFeatures: C, outFeatures: V)
    }

    /// Backward of ``lmHeadForward(_:embedding:_:rows:width:vocabularySize:)``: dH (N, C) += dLogits (N, V) · E (V, C).
    /// No dE: the embedding is frozen in LoRA training.
    @_specialize(exported: true, where Real == Float)
    public static func lmHeadBackward<Real: TrainingScalar>(
        _ dLogits: UnsafePointer<Real>, embedding: UnsafePointer<Real>, dH: UnsafeMutablePointer<Real>,
        rows N: Int, width C: Int, vocabularySize V: Int
    ) {
        linearBackward(dLogits, x: nil, weight: embedding, dX: dH, rows: N, inFeatures: C, outFeatures: V)
    }
}
