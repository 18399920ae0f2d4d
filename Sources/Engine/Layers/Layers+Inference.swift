import CKernels
import Foundation

/// The inference side of the layers every family uses (one token or a prompt, with a KV
/// cache): Float32, nothing saved for a backward. The norms are the training layers'
/// forwards; products go through ``BLAS/sgemm(transposeA:transposeB:m:n:k:alpha:a:lda:b:ldb:beta:c:ldc:)``
/// or, for one row, sgemv.
extension Layers {
    /// y (T, N) = x (T, K) · Wᵀ, W stored (N, K) as in PyTorch's nn.Linear; optional bias (N).
    public static func linear(_ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, bias: UnsafePointer<Float>? = nil,
                              _ y: UnsafeMutablePointer<Float>, rows t: Int, inFeatures k: Int, outFeatures n: Int,
                              accumulate: Bool = false) {
        if let bias, !accumulate {
            for r in 0..<t { (y + r * n).update(from: bias, count: n) }
        }
        let beta: Float = (bias != nil || accumulate) ? 1 : 0
        if t == 1 {
            // One token (decoding): a matrix-vector product, memory-bound on W.
            BLAS.sgemv(transpose: false, m: n, n: k, a: w, lda: k, x: x, beta: beta, y: y)
        } else {
            BLAS.sgemm(transposeA: false, transposeB: true, m: t, n: n, k: k, a: x, lda: k, b: w, ldb: k,
                       beta: beta, c: y, ldc: n)
        }
    }

    /// y (T, N) = x (T, K) · W, W stored (K, N) (GPT-2's Conv1D layout); optional bias (N).
    public static func conv1D(_ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
                              _ y: UnsafeMutablePointer<Float>, rows t: Int, inFeatures k: Int, outFeatures n: Int) {
        if let bias { for r in 0..<t { (y + r * n).update(from: bias, count: n) } }
        if t == 1 {
            BLAS.sgemv(transpose: true, m: k, n: n, a: w, lda: n, x: x, beta: bias != nil ? 1 : 0, y: y)
        } else {
            BLAS.sgemm(transposeA: false, transposeB: false, m: t, n: n, k: k, a: x, lda: k, b: w, ldb: n,
                       beta: bias != nil ? 1 : 0, c: y, ldc: n)
        }
    }

    /// RMSNorm per row: y = x / sqrt(mean(x²) + eps) · weight (the training layer's
    /// forward, without keeping its statistics).
    public static func rmsNorm(_ x: UnsafePointer<Float>, weight: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                               rows: Int, width c: Int, eps: Float) {
        withUnsafeTemporaryAllocation(of: Float.self, capacity: max(rows, 1)) { rstd in
            Layers.rmsNormForward(x, weight: weight, y, rstd: rstd.baseAddress!, rows: rows, width: c, eps: eps)
        }
    }

    /// LayerNorm per row: y = (x − mean) / sqrt(var + eps) · weight + bias (the training
    /// layer's forward, without keeping its statistics).
    public static func layerNorm(_ x: UnsafePointer<Float>, weight: UnsafePointer<Float>, bias: UnsafePointer<Float>,
                                 _ y: UnsafeMutablePointer<Float>, rows: Int, width c: Int, eps: Float) {
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * max(rows, 1)) { stats in
            Layers.layerNormForward(x, weight: weight, bias: bias, y, mean: stats.baseAddress!, rstd: stats.baseAddress! + max(rows, 1),
                                    rows: rows, width: c, eps: eps)
        }
    }

    /// GELU, tanh approximation (GPT-2's `gelu_new`), in place.
    public static func geluTanh(_ x: UnsafeMutablePointer<Float>, count: Int) {
        nb_gelu_forward(x, x, count)
    }

    /// SwiGLU: gate ← silu(gate) · up, in place on `gate`.
    public static func swiGLU(gate: UnsafeMutablePointer<Float>, up: UnsafePointer<Float>, count: Int) {
        nb_swiglu_forward(gate, up, gate, count)
    }

    /// Softmax of a row in place (max-subtracted).
    public static func softmax(_ x: UnsafeMutablePointer<Float>, count: Int) {
        var m = -Float.infinity
        for i in 0..<count where x[i] > m { m = x[i] }
        var sum: Float = 0
        for i in 0..<count { x[i] = expf(x[i] - m); sum += x[i] }
        let inv = 1 / sum
        for i in 0..<count { x[i] *= inv }
    }

}

/// How rotary embeddings pair up the dimensions of a head.
public enum RoPEStyle: String, Codable, Sendable {
    /// Dimension i rotates with i + d/2 (Hugging Face's `rotate_half` layout).
    case halves
    /// Dimension 2i rotates with 2i + 1 (GGUF files, whose Q/K rows are permuted for it).
    case interleaved
}

/// Precomputed rotary-embedding angles: cos/sin (positions, headDim/2).
public struct RoPE: Sendable {
    public let headDim: Int
    public let style: RoPEStyle
    var cos: [Float]
    var sin: [Float]
    public private(set) var maxPositions: Int
    /// θᵢ, i < headDim/2 (float32, as transformers computes them).
    let inverseFrequencies: [Float]

    public init(headDim: Int, base: Double, maxPositions: Int, style: RoPEStyle) {
        self.init(inverseFrequencies: RoPE.inverseFrequencies(headDim: headDim, base: base), maxPositions: maxPositions, style: style)
    }

    public init(inverseFrequencies: [Float], maxPositions: Int, style: RoPEStyle) {
        headDim = 2 * inverseFrequencies.count
        self.style = style
        self.inverseFrequencies = inverseFrequencies
        self.maxPositions = 0
        cos = []
        sin = []
        grow(to: maxPositions)
    }

    /// base^(−2i/headDim) for i < headDim/2, rounded to float32 as transformers rounds them.
    public static func inverseFrequencies(headDim: Int, base: Double) -> [Float] {
        (0..<(headDim / 2)).map { i in 1 / Float(Foundation.pow(base, Double(Float(2 * i) / Float(headDim)))) }
    }

    /// cos and sin of p·θᵢ for p in `positions`, each (positions, θ.count): the angle is the
    /// float32 product, as transformers forms it.
    public static func tables(_ inverseFrequencies: [Float], positions: Range<Int>) -> (cos: [Float], sin: [Float]) {
        let half = inverseFrequencies.count
        var c = [Float](repeating: 0, count: positions.count * half), s = c
        for (row, p) in positions.enumerated() {
            for i in 0..<half {
                let angle = Double(Float(p) * inverseFrequencies[i])
                c[row * half + i] = Float(Foundation.cos(angle))
                s[row * half + i] = Float(Foundation.sin(angle))
            }
        }
        return (c, s)
    }

    /// Makes room for positions < `n`.
    public mutating func grow(to n: Int) {
        guard n > maxPositions else { return }
        (cos, sin) = RoPE.tables(inverseFrequencies, positions: 0..<n)
        maxPositions = n
    }

    /// Rotates `heads` consecutive heads of one token at `position`, in place.
    public func apply(_ x: UnsafeMutablePointer<Float>, heads: Int, position: Int) {
        precondition(position < maxPositions, "RoPE table has \(maxPositions) positions, asked for \(position)")
        let half = headDim / 2
        cos.withUnsafeBufferPointer { c in
            sin.withUnsafeBufferPointer { s in
                let cp = c.baseAddress! + position * half, sp = s.baseAddress! + position * half
                for h in 0..<heads {
                    let v = x + h * headDim
                    for i in 0..<half {
                        let (a, b) = style == .halves ? (i, i + half) : (2 * i, 2 * i + 1)
                        let x0 = v[a], x1 = v[b]
                        v[a] = x0 * cp[i] - x1 * sp[i]
                        v[b] = x0 * sp[i] + x1 * cp[i]
                    }
                }
            }
        }
    }
}
