import Foundation

// Rotary position embeddings over a batch. See ``Layers`` for the conventions.

/// Rotary-embedding angles for positions 0..<P: cos and sin, each (P, headDim/2), with
/// angle(p, i) = p · base^(−2i/headDim) — the same numbers as ``RoPE``'s tables.
public struct RotaryTables<Real: TrainingScalar> {
    public let headDim: Int
    public let positions: Int
    public let cos: [Real]  // (P, headDim/2)
    public let sin: [Real]  // (P, headDim/2)

    public init(headDim: Int, base: Double, positions: Int) {
        precondition(headDim % 2 == 0, "RoPE needs an even head size, got \(headDim)")
        self.init(inverseFrequencies: RoPE.inverseFrequencies(headDim: headDim, base: base), positions: positions)
    }

    /// Tables for the inverse frequencies θᵢ (see ``LlamaConfig/ropeInverseFrequencies(sequenceLength:)``).
    public init(inverseFrequencies: [Float], positions: Int) {
        let (c, s) = RoPE.tables(inverseFrequencies, positions: 0..<positions)
        (headDim, self.positions) = (2 * inverseFrequencies.count, positions)
        cos = c.map { Real(Double($0)) }
        sin = s.map { Real(Double($0)) }
    }
}

extension Layers {
    /// Rotates every head of every row in place by its token's position p = r mod T:
    /// each pair (a, b) becomes (a·cos θ − b·sin θ, a·sin θ + b·cos θ), θ = angle(p, i).
    /// Pairs are (i, i + d/2) for `.halves` and (2i, 2i + 1) for `.interleaved`.
    ///
    /// - x: (B·T, heads·headDim). Saves nothing: the map is linear.
    @_specialize(exported: true, where Real == Float)
    public static func ropeForward<Real: TrainingScalar>(
        _ x: UnsafeMutablePointer<Real>, tables: RotaryTables<Real>, style: RoPEStyle, rows N: Int, sequenceLength: Int, heads: Int
    ) {
        rotate(x, tables: tables, style: style, rows: N, sequenceLength: sequenceLength, heads: heads, sign: 1)
    }

    /// Backward of ``ropeForward(_:tables:style:rows:sequenceLength:heads:)``, in place on
    /// the gradient: a rotation is orthogonal, so dx = Rᵀ·dy is the rotation by −θ.
    /// (In place, so unlike the other backwards it replaces `dX` rather than adding to it.)
    @_specialize(exported: true, where Real == Float)
    public static func ropeBackward<Real: TrainingScalar>(
        _ dX: UnsafeMutablePointer<Real>, tables: RotaryTables<Real>, style: RoPEStyle, rows N: Int, sequenceLength: Int, heads: Int
    ) {
        rotate(dX, tables: tables, style: style, rows: N, sequenceLength: sequenceLength, heads: heads, sign: -1)
    }

    static func rotate<Real: TrainingScalar>(
        _ x: UnsafeMutablePointer<Real>, tables: RotaryTables<Real>, style: RoPEStyle, rows N: Int, sequenceLength: Int,
        heads: Int, sign: Real
    ) {
        let hd = tables.headDim, half = hd / 2
        precondition(sequenceLength <= tables.positions, "RoPE tables have \(tables.positions) positions, need \(sequenceLength)")
        tables.cos.withUnsafeBufferPointer { cosTable in
            tables.sin.withUnsafeBufferPointer { sinTable in
                for r in 0..<N {
                    let p = r % sequenceLength
                    let c = cosTable.baseAddress! + p * half, s = sinTable.baseAddress! + p * half
                    for h in 0..<heads {
                        let v = x + (r * heads + h) * hd
                        for i in 0..<half {
                            let (a, b) = style == .halves ? (i, i + half) : (2 * i, 2 * i + 1)
                            let x0 = v[a], x1 = v[b], sn = sign * s[i]
                            v[a] = x0 * c[i] - x1 * sn
                            v[b] = x0 * sn + x1 * c[i]
                        }
                    }
                }
            }
        }
    }
}
