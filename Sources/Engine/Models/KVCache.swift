/// Keys and values of every layer for the tokens seen so far, so decoding one more token
/// costs one token's work.
///
/// Layout per layer: `keys[layer]` (capacity, kvDim) row-major, likewise `values`.
public final class KVCache {
    public let layers: Int
    public let kvDim: Int
    public private(set) var capacity: Int
    /// Tokens stored (the next token's position).
    public var length: Int = 0
    var keys: [[Float]]
    var values: [[Float]]

    public init(layers: Int, kvDim: Int, capacity: Int) {
        self.layers = layers
        self.kvDim = kvDim
        self.capacity = capacity
        keys = Array(repeating: [Float](repeating: 0, count: capacity * kvDim), count: layers)
        values = keys
    }

    /// Makes room for `n` tokens in total.
    public func reserve(_ n: Int) {
        guard n > capacity else { return }
        let newCapacity = max(n, capacity * 2)
        for l in 0..<layers {
            keys[l] += [Float](repeating: 0, count: (newCapacity - capacity) * kvDim)
            values[l] += [Float](repeating: 0, count: (newCapacity - capacity) * kvDim)
        }
        capacity = newCapacity
    }

    public func reset() { length = 0 }
}

/// Causal attention of `t` new tokens against every cached position, with grouped-query
/// heads: head h reads key/value head h / (heads / kvHeads).
///
/// - q: (t, heads·headDim), the new tokens' queries (positions `start..<start+t`).
/// - keys, values: (capacity, kvHeads·headDim), valid for positions `< start + t`.
/// - out: (t, heads·headDim).
/// - scores: room for t × (start + t) floats.
///
/// - window: when given, position p attends to positions > p − window only (Mistral's sliding window).
///
/// Several tokens (prefill) use two sgemm per head: S = Q_h·K_hᵀ, masked softmax, O_h = P·V_h.
func causalAttention(q: UnsafePointer<Float>, keys: UnsafePointer<Float>, values: UnsafePointer<Float>,
                     out: UnsafeMutablePointer<Float>, t: Int, start: Int, heads: Int, kvHeads: Int, headDim: Int,
                     window: Int? = nil, scores: UnsafeMutablePointer<Float>) {
    let group = heads / kvHeads
    let qDim = heads * headDim, kvDim = kvHeads * headDim
    let scale = 1 / Float(headDim).squareRoot()
    let s = start + t
    if t > 1 {
        for h in 0..<heads {
            let kvOffset = (h / group) * headDim
            // (t, s) = Q_h (t, hd) · K_hᵀ (hd, s)
            BLAS.sgemm(transposeA: false, transposeB: true, m: t, n: s, k: headDim, alpha: scale,
                       a: q + h * headDim, lda: qDim, b: keys + kvOffset, ldb: kvDim, c: scores, ldc: s)
            for i in 0..<t {
                let row = scores + i * s
                let visible = start + i + 1, first = window.map { max(0, visible - $0) } ?? 0
                for j in 0..<first { row[j] = 0 }
                Layers.softmax(row + first, count: visible - first)
                for j in visible..<s { row[j] = 0 }
            }
            // (t, hd) = P (t, s) · V_h (s, hd)
            BLAS.sgemm(transposeA: false, transposeB: false, m: t, n: headDim, k: s,
                       a: scores, lda: s, b: values + kvOffset, ldb: kvDim, c: out + h * headDim, ldc: qDim)
        }
        return
    }
    for h in 0..<heads {
        let qh = q + h * headDim
        let kvOffset = (h / group) * headDim
        for j in 0..<s {
            let kj = keys + j * kvDim + kvOffset
            var dot: Float = 0
            for d in 0..<headDim { dot += qh[d] * kj[d] }
            scores[j] = dot * scale
        }
        let first = window.map { max(0, s - $0) } ?? 0
        for j in 0..<first { scores[j] = 0 }
        Layers.softmax(scores + first, count: s - first)
        let oh = out + h * headDim
        for d in 0..<headDim { oh[d] = 0 }
        for j in 0..<s {
            let w = scores[j]
            let vj = values + j * kvDim + kvOffset
            for d in 0..<headDim { oh[d] += w * vj[d] }
        }
    }
}
