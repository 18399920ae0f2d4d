// LayerNorm (GPT-2) and RMSNorm (LLaMA), per row of width C. See ``Layers`` for the
// conventions (forwards write, backwards accumulate, nil gradients are skipped).

extension Layers {
    /// The fewest rows a normalization gives one core (rows are independent: the result is
    /// the same on any number of cores).
    static let rowsPerTask = 32

    /// LayerNorm per row: y = (x − μ)·ρ ⊙ γ + β, with μ = mean(x), ρ = 1/√(var(x) + eps)
    /// (biased variance, as PyTorch).
    ///
    /// - x, y: (N, C); weight γ, bias β: (C).
    /// - Saves mean μ (N) and rstd ρ (N) for the backward.
    @_specialize(exported: true, where Real == Float)
    public static func layerNormForward<Real: TrainingScalar>(
        _ x: UnsafePointer<Real>, weight: UnsafePointer<Real>, bias: UnsafePointer<Real>, _ y: UnsafeMutablePointer<Real>,
        mean: UnsafeMutablePointer<Real>, rstd: UnsafeMutablePointer<Real>, rows N: Int, width C: Int, eps: Real
    ) {
        Parallel.forEach(rows: N, minimumRowsPerTask: rowsPerTask) { rows in for r in rows {
            let xr = x + r * C, yr = y + r * C
            var m: Real = 0
            for i in 0..<C { m += xr[i] }
            m /= Real(C)
            var variance: Real = 0
            for i in 0..<C { let d = xr[i] - m; variance += d * d }
            variance /= Real(C)
            let s = 1 / (variance + eps).squareRoot()
            for i in 0..<C { yr[i] = (xr[i] - m) * s * weight[i] + bias[i] }
            mean[r] = m
            rstd[r] = s
        } }
    }

    /// Backward of ``layerNormForward(_:weight:bias:_:mean:rstd:rows:width:eps:)``.
    ///
    /// With n = (x − μ)·ρ and g = dy ⊙ γ, per row:
    /// dx += ρ·(g − mean(g) − n·mean(g ⊙ n));  dγ += Σ_rows dy ⊙ n;  dβ += Σ_rows dy.
    /// dγ and dβ only when asked (the norms are frozen in LoRA training).
    @_specialize(exported: true, where Real == Float)
    public static func layerNormBackward<Real: TrainingScalar>(
        _ dY: UnsafePointer<Real>, x: UnsafePointer<Real>, weight: UnsafePointer<Real>, mean: UnsafePointer<Real>, rstd: UnsafePointer<Real>,
        dX: UnsafeMutablePointer<Real>, dWeight: UnsafeMutablePointer<Real>? = nil, dBias: UnsafeMutablePointer<Real>? = nil,
        rows N: Int, width C: Int
    ) {
        // Rows on every core, unless γ and β gradients are summed over them.
        Parallel.forEach(rows: N, minimumRowsPerTask: dWeight == nil && dBias == nil ? rowsPerTask : N) { rows in for r in rows {
            let xr = x + r * C, dyr = dY + r * C, dxr = dX + r * C
            let m = mean[r], s = rstd[r]
            var gMean: Real = 0, gnMean: Real = 0
            for i in 0..<C {
                let n = (xr[i] - m) * s, g = dyr[i] * weight[i]
                gMean += g
                gnMean += g * n
            }
            gMean /= Real(C)
            gnMean /= Real(C)
            for i in 0..<C {
                let n = (xr[i] - m) * s, g = dyr[i] * weight[i]
                dxr[i] += s * (g - gMean - n * gnMean)
                if let dWeight { dWeight[i] += dyr[i] * n }
                if let dBias { dBias[i] += dyr[i] }
            }
        } }
    }

    /// RMSNorm per row: y = x·ρ ⊙ γ, with ρ = 1/√(mean(x²) + eps).
    ///
    /// - x, y: (N, C); weight γ: (C). Saves rstd ρ (N) for the backward.
    @_specialize(exported: true, where Real == Float)
    public static func rmsNormForward<Real: TrainingScalar>(
        _ x: UnsafePointer<Real>, weight: UnsafePointer<Real>, _ y: UnsafeMutablePointer<Real>, rstd: UnsafeMutablePointer<Real>,
        rows N: Int, width C: Int, eps: Real
    ) {
        Parallel.forEach(rows: N, minimumRowsPerTask: rowsPerTask) { rows in for r in rows {
            let xr = x + r * C, yr = y + r * C
            var ss: Real = 0
            for i in 0..<C { ss += xr[i] * xr[i] }
            let s = 1 / (ss / Real(C) + eps).squareRoot()
            for i in 0..<C { yr[i] = xr[i] * s * weight[i] }
            rstd[r] = s
        } }
    }

    /// Backward of ``rmsNormForward(_:weight:_:rstd:rows:width:eps:)``.
    ///
    /// With n = x·ρ and g = dy ⊙ γ, per row: dx += ρ·(g − n·mean(g ⊙ n));
    /// dγ += Σ_rows dy ⊙ n, only when asked.
    @_specialize(exported: true, where Real == Float)
    public static func rmsNormBackward<Real: TrainingScalar>(
        _ dY: UnsafePointer<Real>, x: UnsafePointer<Real>, weight: UnsafePointer<Real>, rstd: UnsafePointer<Real>,
        dX: UnsafeMutablePointer<Real>, dWeight: UnsafeMutablePointer<Real>? = nil, rows N: Int, width C: Int
    ) {
        Parallel.forEach(rows: N, minimumRowsPerTask: dWeight == nil ? rowsPerTask : N) { rows in for r in rows {
            let xr = x + r * C, dyr = dY + r * C, dxr = dX + r * C
            let s = rstd[r]
            var gnMean: Real = 0
            for i in 0..<C { gnMean += dyr[i] * weight[i] * xr[i] * s }
            gnMean /= Real(C)
            for i in 0..<C {
                let n = xr[i] * s
                dxr[i] += s * (dyr[i] * weight[i] - n * gnMean)
                if let dWeight { dWeight[i] += dyr[i] * n }
            }
        } }
    }
}
