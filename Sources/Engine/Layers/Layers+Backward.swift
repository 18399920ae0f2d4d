import CKernels
/// The layers every model family uses, in one room: flat forward/backward pairs (llm.c
/// style) for training, and their inference forms (Layers+Inference.swift, the KV-cache
/// attention in KVCache.swift) for generation.
///
/// Conventions, for every function here:
/// - Buffers are row-major and contiguous unless a stride says otherwise. A batch of B
///   sequences of T tokens is laid out as B·T rows: row r is token r mod T of sequence r / T.
/// - A forward writes (=) its outputs and the saved values its backward needs.
/// - A backward *accumulates* (+=) into every gradient buffer it is given, so a tensor
///   used twice (the residual stream, the input of q/k/v) simply receives both
///   contributions; callers zero gradient buffers before the first use. A gradient that is
///   not wanted is passed as `nil` and costs nothing (frozen weights in LoRA training).
/// - Generic over ``TrainingScalar``: `Float` to train, `Double` for gradient checks. Each
///   function carries an exported `Float` specialisation, so callers in other modules run
///   specialised loops too (the unspecialised generic code is about 6× slower).
///
/// The inference forms compute the same functions without saving anything.
public enum Layers {}

// MARK: - Embedding

extension Layers {
    /// Token (and optionally learned position) embedding lookup.
    ///
    /// out[r] = table[tokens[r]] + positions[r mod T] (positions: GPT-2's wpe; nil for LLaMA).
    /// - table: (V, C); positions: (≥ T, C); out: (B·T, C) with B·T = tokens.count.
    @_specialize(exported: true, where Real == Float)
    public static func embeddingForward<Real: TrainingScalar>(
        tokens: [Int], table: UnsafePointer<Real>, positions: UnsafePointer<Real>?, sequenceLength: Int,
        _ out: UnsafeMutablePointer<Real>, width C: Int
    ) {
        precondition(sequenceLength > 0 && tokens.count % sequenceLength == 0,
                     "\(tokens.count) tokens are not a whole number of sequences of \(sequenceLength)")
        for (r, token) in tokens.enumerated() {
            let o = out + r * C, e = table + token * C
            if let positions {
                let p = positions + (r % sequenceLength) * C
                for i in 0..<C { o[i] = e[i] + p[i] }
            } else {
                o.update(from: e, count: C)
            }
        }
    }

    /// Scatter-adds the output gradient into the tables: dTable[tokens[r]] += dOut[r],
    /// dPositions[r mod T] += dOut[r]. Embeddings are frozen in LoRA training, so the
    /// training passes call this only when asked for these gradients.
    /// - dOut: (B·T, C); dTable: (V, C); dPositions: (≥ T, C).
    @_specialize(exported: true, where Real == Float)
    public static func embeddingBackward<Real: TrainingScalar>(
        tokens: [Int], _ dOut: UnsafePointer<Real>, dTable: UnsafeMutablePointer<Real>?, dPositions: UnsafeMutablePointer<Real>?,
        sequenceLength: Int, width C: Int
    ) {
        for (r, token) in tokens.enumerated() {
            let g = dOut + r * C
            if let dTable { let d = dTable + token * C; for i in 0..<C { d[i] += g[i] } }
            if let dPositions { let d = dPositions + (r % sequenceLength) * C; for i in 0..<C { d[i] += g[i] } }
        }
    }
}

// MARK: - Linear (nn.Linear) and Conv1D (GPT-2)

extension Layers {
    /// y (N, out) = x (N, in) · Wᵀ + b, with W stored (out, in) as nn.Linear stores it; bias (out) optional.
    @_specialize(exported: true, where Real == Float)
    public static func linearForward<Real: TrainingScalar>(
        _ x: UnsafePointer<Real>, weight: UnsafePointer<Real>, bias: UnsafePointer<Real>?, _ y: UnsafeMutablePointer<Real>,
        rows N: Int, inFeatures: Int, outFeatures: Int
    ) {
        if let bias { for r in 0..<N { (y + r * outFeatures).update(from: bias, count: outFeatures) } }
        Real.gemm(transposeA: false, transposeB: true, m: N, n: outFeatures, k: inFeatures, alpha: 1, a: x, lda: inFeatures,
                  b: weight, ldb: inFeatures, beta: bias == nil ? 0 : 1, c: y, ldc: outFeatures)
    }

    /// Backward of ``linearForward(_:weight:bias:_:rows:inFeatures:outFeatures:)``:
    ///
    /// dX (N, in) += dY (N, out) · W (out, in) — always;
    /// dW (out, in) += dYᵀ · X and db (out) += Σ_rows dY — only when asked (a frozen layer
    /// does no weight-gradient work). `x` is needed only for dW.
    @_specialize(exported: true, where Real == Float)
    public static func linearBackward<Real: TrainingScalar>(
        _ dY: UnsafePointer<Real>, x: UnsafePointer<Real>?, weight: UnsafePointer<Real>, dX: UnsafeMutablePointer<Real>,
        dWeight: UnsafeMutablePointer<Real>? = nil, dBias: UnsafeMutablePointer<Real>? = nil,
        rows N: Int, inFeatures: Int, outFeatures: Int
    ) {
        Real.gemm(transposeA: false, transposeB: false, m: N, n: inFeatures, k: outFeatures, alpha: 1, a: dY, lda: outFeatures,
                  b: weight, ldb: inFeatures, beta: 1, c: dX, ldc: inFeatures)
        if let dWeight {
            guard let x else { preconditionFailure("linearBackward needs x to compute dW") }
            Real.gemm(transposeA: true, transposeB: false, m: outFeatures, n: inFeatures, k: N, alpha: 1, a: dY, lda: outFeatures,
                      b: x, ldb: inFeatures, beta: 1, c: dWeight, ldc: inFeatures)
        }
        if let dBias { sumRows(dY, into: dBias, rows: N, width: outFeatures) }
    }

    /// GPT-2's Conv1D: y (N, out) = x (N, in) · W + b, with W stored (in, out); bias (out) optional.
    @_specialize(exported: true, where Real == Float)
    public static func conv1DForward<Real: TrainingScalar>(
        _ x: UnsafePointer<Real>, weight: UnsafePointer<Real>, bias: UnsafePointer<Real>?, _ y: UnsafeMutablePointer<Real>,
        rows N: Int, inFeatures: Int, outFeatures: Int
    ) {
        if let bias { for r in 0..<N { (y + r * outFeatures).update(from: bias, count: outFeatures) } }
        Real.gemm(transposeA: false, transposeB: false, m: N, n: outFeatures, k: inFeatures, alpha: 1, a: x, lda: inFeatures,
                  b: weight, ldb: outFeatures, beta: bias == nil ? 0 : 1, c: y, ldc: outFeatures)
    }

    /// Backward of ``conv1DForward(_:weight:bias:_:rows:inFeatures:outFeatures:)``:
    ///
    /// dX (N, in) += dY (N, out) · Wᵀ — always;
    /// dW (in, out) += Xᵀ · dY and db (out) += Σ_rows dY — only when asked.
    @_specialize(exported: true, where Real == Float)
    public static func conv1DBackward<Real: TrainingScalar>(
        _ dY: UnsafePointer<Real>, x: UnsafePointer<Real>?, weight: UnsafePointer<Real>, dX: UnsafeMutablePointer<Real>,
        dWeight: UnsafeMutablePointer<Real>? = nil, dBias: UnsafeMutablePointer<Real>? = nil,
        rows N: Int, inFeatures: Int, outFeatures: Int
    ) {
        Real.gemm(transposeA: false, transposeB: true, m: N, n: inFeatures, k: outFeatures, alpha: 1, a: dY, lda: outFeatures,
                  b: weight, ldb: outFeatures, beta: 1, c: dX, ldc: inFeatures)
        if let dWeight {
            guard let x else { preconditionFailure("conv1DBackward needs x to compute dW") }
            Real.gemm(transposeA: true, transposeB: false, m: inFeatures, n: outFeatures, k: N, alpha: 1, a: x, lda: inFeatures,
                      b: dY, ldb: outFeatures, beta: 1, c: dWeight, ldc: outFeatures)
        }
        if let dBias { sumRows(dY, into: dBias, rows: N, width: outFeatures) }
    }

    /// out (width) += Σ_r x[r] for x (rows, width).
    static func sumRows<Real: TrainingScalar>(_ x: UnsafePointer<Real>, into out: UnsafeMutablePointer<Real>, rows: Int, width: Int) {
        for r in 0..<rows {
            let xr = x + r * width
            for i in 0..<width { out[i] += xr[i] }
        }
    }
}

// MARK: - Activations

extension Layers {
    static let geluScale = 0.7978845608028654  // sqrt(2/π)
    /// The fewest values an element-wise kernel gives one core (smaller calls stay on one).
    static let elementsPerTask = 1 << 15
    static let geluCubic = 0.044715

    /// GELU, tanh approximation (GPT-2's `gelu_new`): y = ½x(1 + tanh(√(2/π)(x + 0.044715x³))).
    /// Saves nothing: the backward reads x. x, y: (count).
    @_specialize(exported: true, where Real == Float)
    public static func geluForward<Real: TrainingScalar>(_ x: UnsafePointer<Real>, _ y: UnsafeMutablePointer<Real>, count: Int) {
        if Real.self == Float.self {  // the vectorized kernel (float precision, ≤ 2 ulp tanh), on every core
            let (x, y) = (UnsafeRawPointer(x).assumingMemoryBound(to: Float.self), UnsafeMutableRawPointer(y).assumingMemoryBound(to: Float.self))
            return Parallel.forEach(rows: count, minimumRowsPerTask: elementsPerTask) { r in
                nb_gelu_forward(x + r.lowerBound, y + r.lowerBound, r.count)
            }
        }
        let k = Real(geluScale), c = Real(geluCubic)
        for i in 0..<count {
            let v = x[i]
            y[i] = v / 2 * (1 + Real.tanh(k * (v + c * v * v * v)))
        }
    }

    /// dx += dy · gelu′(x), with u = √(2/π)(x + 0.044715x³):
    /// gelu′(x) = ½(1 + tanh u) + ½x(1 − tanh²u)·√(2/π)(1 + 3·0.044715x²).
    @_specialize(exported: true, where Real == Float)
    public static func geluBackward<Real: TrainingScalar>(_ dY: UnsafePointer<Real>, x: UnsafePointer<Real>, dX: UnsafeMutablePointer<Real>,
                                                       count: Int) {
        if Real.self == Float.self {
            let (dY, x, dX) = (UnsafeRawPointer(dY).assumingMemoryBound(to: Float.self), UnsafeRawPointer(x).assumingMemoryBound(to: Float.self),
                               UnsafeMutableRawPointer(dX).assumingMemoryBound(to: Float.self))
            return Parallel.forEach(rows: count, minimumRowsPerTask: elementsPerTask) { r in
                nb_gelu_backward(dY + r.lowerBound, x + r.lowerBound, dX + r.lowerBound, r.count)
            }
        }
        let k = Real(geluScale), c = Real(geluCubic)
        for i in 0..<count {
            let v = x[i]
            let th = Real.tanh(k * (v + c * v * v * v))
            let slope = (1 + th) / 2 + v / 2 * (1 - th * th) * k * (1 + 3 * c * v * v)
            dX[i] += dY[i] * slope
        }
    }

    /// SwiGLU: y = silu(gate) · up, silu(g) = g·σ(g). gate, up, y: (count), e.g. (B·T, F).
    @_specialize(exported: true, where Real == Float)
    public static func swiGLUForward<Real: TrainingScalar>(gate: UnsafePointer<Real>, up: UnsafePointer<Real>, _ y: UnsafeMutablePointer<Real>,
                                                        count: Int) {
        if Real.self == Float.self {
            let (gate, up, y) = (UnsafeRawPointer(gate).assumingMemoryBound(to: Float.self), UnsafeRawPointer(up).assumingMemoryBound(to: Float.self),
                                 UnsafeMutableRawPointer(y).assumingMemoryBound(to: Float.self))
            return Parallel.forEach(rows: count, minimumRowsPerTask: elementsPerTask) { r in
                nb_swiglu_forward(gate + r.lowerBound, up + r.lowerBound, y + r.lowerBound, r.count)
            }
        }
        for i in 0..<count {
            let g = gate[i]
            y[i] = g / (1 + Real.exp(-g)) * up[i]
        }
    }

    /// dGate += dy · up · σ(g)(1 + g(1 − σ(g)));  dUp += dy · silu(g).
    @_specialize(exported: true, where Real == Float)
    public static func swiGLUBackward<Real: TrainingScalar>(
        _ dY: UnsafePointer<Real>, gate: UnsafePointer<Real>, up: UnsafePointer<Real>,
        dGate: UnsafeMutablePointer<Real>, dUp: UnsafeMutablePointer<Real>, count: Int
    ) {
        if Real.self == Float.self {
            let (dY, gate, up) = (UnsafeRawPointer(dY).assumingMemoryBound(to: Float.self), UnsafeRawPointer(gate).assumingMemoryBound(to: Float.self),
                                  UnsafeRawPointer(up).assumingMemoryBound(to: Float.self))
            let (dGate, dUp) = (UnsafeMutableRawPointer(dGate).assumingMemoryBound(to: Float.self), UnsafeMutableRawPointer(dUp).assumingMemoryBound(to: Float.self))
            return Parallel.forEach(rows: count, minimumRowsPerTask: elementsPerTask) { r in
                let i = r.lowerBound
                nb_swiglu_backward(dY + i, gate + i, up + i, dGate + i, dUp + i, r.count)
            }
        }
        for i in 0..<count {
            let g = gate[i]
            let s = 1 / (1 + Real.exp(-g))
            dGate[i] += dY[i] * up[i] * s * (1 + g * (1 - s))
            dUp[i] += dY[i] * g * s
        }
    }

    /// a += b over `count` values (residual connections; the backward of a sum is a copy
    /// of the gradient to both inputs, which the accumulating backwards already do).
    @_specialize(exported: true, where Real == Float)
    public static func add<Real: TrainingScalar>(_ a: UnsafeMutablePointer<Real>, _ b: UnsafePointer<Real>, count: Int) {
        for i in 0..<count { a[i] += b[i] }
    }
}
