import CKernels
import Foundation
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
    /// - dLogits: (N, V), written (=), not accumulated; nil for the loss alone. It may be the
    ///   logits' own buffer (each row is read before it is overwritten), which saves an (N, V)
    ///   buffer in training.
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
        if Real.self == Float.self {
            return Real(floatCrossEntropy(logits: UnsafeRawPointer(logits).assumingMemoryBound(to: Float.self), targets: targets,
                                          dLogits: dLogits.map { UnsafeMutableRawPointer($0).assumingMemoryBound(to: Float.self) },
                                          rows: N, vocabularySize: V, ignoreIndex: ignoreIndex, inverse: Float(inv)))
        }
        var loss: Real = 0
        for r in 0..<N {
            let z = logits + r * V, target = targets[r]
            guard target != ignoreIndex else {
                if let dLogits { (dLogits + r * V).update(repeating: 0, count: V) }
                continue
            }
            precondition(target >= 0 && target < V, "target \(target) at row \(r) outside vocabulary 0..<\(V)")
            let zTarget = z[target]  // read before dLogits, which may alias the logits, is written
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
            loss += m + Real.log(sum) - zTarget
        }
        return loss * inv
    }

    /// The Float cross-entropy with the vectorized kernels, rows split over the cores: each
    /// row's logsumexp and target logit are kept, then summed in row order, so the loss is
    /// the same bit for bit as one thread summing row after row.
    static func floatCrossEntropy(logits: UnsafePointer<Float>, targets: [Int], dLogits: UnsafeMutablePointer<Float>?,
                                  rows N: Int, vocabularySize V: Int, ignoreIndex: Int, inverse inv: Float) -> Float {
        for (r, target) in targets.enumerated() where target != ignoreIndex {
            precondition(target >= 0 && target < V, "target \(target) at row \(r) outside vocabulary 0..<\(V)")
        }
        var logSumExp = [Float](repeating: 0, count: N), targetLogit = [Float](repeating: 0, count: N)
        logSumExp.withUnsafeMutableBufferPointer { lse in
            targetLogit.withUnsafeMutableBufferPointer { zt in
                let (lse, zt) = (lse.baseAddress!, zt.baseAddress!)
                Parallel.forEach(rows: N, minimumRowsPerTask: 8) { range in
                    for r in range {
                        let z = logits + r * V, target = targets[r]
                        guard target != ignoreIndex else {
                            if let dLogits { (dLogits + r * V).update(repeating: 0, count: V) }
                            continue
                        }
                        zt[r] = z[target]  // read before dLogits, which may alias the logits, is written
                        let m = nb_max(z, V)
                        let d = dLogits.map { $0 + r * V }
                        let sum = nb_exp_shifted(z, m, d, V)
                        if let d {
                            let scale = inv / sum
                            for j in 0..<V { d[j] *= scale }
                            d[target] -= inv
                        }
                        lse[r] = m + logf(sum)
                    }
                }
            }
        }
        var loss: Float = 0
        for r in 0..<N where targets[r] != ignoreIndex { loss += logSumExp[r] - targetLogit[r] }
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

    /// Logits of the head for all N rows of h (N, C), or only for the rows `only` lists:
    /// (R, V). Rows whose target is ignored need no logits, and they are most rows of
    /// padded question/answer data.
    static func headLogits<Real: TrainingScalar>(_ h: [Real], embedding: [Real], rows N: Int, width C: Int,
                                                  vocabularySize V: Int, only: [Int]?) -> [Real] {
        guard let only else {
            var logits = [Real](repeating: 0, count: N * V)
            lmHeadForward(h, embedding: embedding, &logits, rows: N, width: C, vocabularySize: V)
            return logits
        }
        var gathered = [Real](repeating: 0, count: only.count * C)
        for (i, r) in only.enumerated() {
            precondition(r >= 0 && r < N, "head row \(r) outside 0..<\(N)")
            for j in 0..<C { gathered[i * C + j] = h[r * C + j] }
        }
        var logits = [Real](repeating: 0, count: only.count * V)
        if !only.isEmpty { lmHeadForward(gathered, embedding: embedding, &logits, rows: only.count, width: C, vocabularySize: V) }
        return logits
    }

    /// dH (N, C) from dLogits of ``headLogits(_:embedding:rows:width:vocabularySize:only:)``:
    /// rows the head skipped get zero.
    static func headBackward<Real: TrainingScalar>(_ dLogits: [Real], embedding: [Real], rows N: Int, width C: Int,
                                                    vocabularySize V: Int, only: [Int]?) -> [Real] {
        let R = only?.count ?? N
        precondition(dLogits.count == R * V, "dLogits has \(dLogits.count) values, expected (\(R), \(V))")
        var dH = [Real](repeating: 0, count: R * C)
        if R > 0 { lmHeadBackward(dLogits, embedding: embedding, dH: &dH, rows: R, width: C, vocabularySize: V) }
        guard let only else { return dH }
        var full = [Real](repeating: 0, count: N * C)
        for (i, r) in only.enumerated() { for j in 0..<C { full[r * C + j] = dH[i * C + j] } }
        return full
    }
}
