import Engine
import Foundation
import Testing

/// Finite-difference checks of every backward in `Layers`, in Double: the layers are
/// generic over `TrainingScalar`, so these run the very code that trains in Float.
///
/// Each check takes a random objective L = Σ r ⊙ y (r random), computes the analytic
/// gradient with the backward and the numeric one by central differences (h = 1e-6),
/// and requires ‖analytic − numeric‖∞ / ‖numeric‖∞ < 1e-6. Shapes are tiny: B = 2, T = 3,
/// C = 8, 4 heads, 2 key/value heads, vocabulary 11.
@Suite struct GradientCheckTests {
    static let (B, T, C, V) = (2, 3, 8, 11)
    static let N = B * T
    static let tolerance = 1e-6

    // MARK: helpers

    struct Random {
        var g: SeededGenerator
        init(_ seed: UInt64) { g = SeededGenerator(seed: seed) }
        mutating func normal(_ n: Int, std: Double = 1) -> [Double] {
            (0..<n).map { _ in
                let u1 = max(g.nextUnit(), 1e-300), u2 = g.nextUnit()
                return (-2 * Foundation.log(u1)).squareRoot() * Foundation.cos(2 * .pi * u2) * std
            }
        }
        mutating func int(_ bound: Int) -> Int { Int(g.next() % UInt64(bound)) }
    }

    static func dot(_ a: [Double], _ b: [Double]) -> Double { zip(a, b).reduce(0) { $0 + $1.0 * $1.1 } }

    /// ∂f/∂x_i by central differences for every i.
    static func numericGradient(_ x: [Double], h: Double = 1e-6, _ f: ([Double]) -> Double) -> [Double] {
        var x = x
        return x.indices.map { i in
            let saved = x[i]
            x[i] = saved + h; let up = f(x)
            x[i] = saved - h; let down = f(x)
            x[i] = saved
            return (up - down) / (2 * h)
        }
    }

    /// ‖analytic − numeric‖∞ / ‖numeric‖∞, printed and checked against the tolerance.
    @discardableResult
    static func check(_ name: String, analytic: [Double], numeric: [Double], tolerance: Double = tolerance) -> Double {
        #expect(analytic.count == numeric.count, "\(name): \(analytic.count) vs \(numeric.count) values")
        let scale = max(numeric.map(abs).max() ?? 0, 1e-12)
        var worst = 0.0, at = 0
        for i in numeric.indices where abs(analytic[i] - numeric[i]) > worst { worst = abs(analytic[i] - numeric[i]); at = i }
        let error = worst / scale
        print("[gradcheck] \(name): max relative error \(error) (|grad|max \(scale))")
        #expect(error < tolerance, "\(name): relative error \(error) at index \(at): analytic \(analytic[at]) vs numeric \(numeric[at])")
        #expect(scale > 1e-8, "\(name): the gradient is (almost) zero, the check proves nothing")
        return error
    }

    static func zeros(_ n: Int) -> [Double] { [Double](repeating: 0, count: n) }

    // MARK: embedding, linear, conv1D

    @Test func embedding() {
        var rng = Random(1)
        let tokens = (0..<Self.N).map { _ in rng.int(Self.V) }, table = rng.normal(Self.V * Self.C), positions = rng.normal(Self.T * Self.C)
        let r = rng.normal(Self.N * Self.C)
        func loss(_ table: [Double], _ positions: [Double]) -> Double {
            var out = Self.zeros(Self.N * Self.C)
            Layers.embeddingForward(tokens: tokens, table: table, positions: positions, sequenceLength: Self.T, &out, width: Self.C)
            return Self.dot(r, out)
        }
        var dTable = Self.zeros(table.count), dPositions = Self.zeros(positions.count)
        Layers.embeddingBackward(tokens: tokens, r, dTable: &dTable, dPositions: &dPositions, sequenceLength: Self.T, width: Self.C)
        Self.check("embedding dE", analytic: dTable, numeric: Self.numericGradient(table) { loss($0, positions) })
        Self.check("embedding dP", analytic: dPositions, numeric: Self.numericGradient(positions) { loss(table, $0) })
    }

    @Test(arguments: [false, true])
    func linear(conv1D: Bool) {
        var rng = Random(conv1D ? 3 : 2)
        let (inF, outF) = (Self.C, 5)
        let x = rng.normal(Self.N * inF), w = rng.normal(inF * outF), b = rng.normal(outF), r = rng.normal(Self.N * outF)
        func loss(_ x: [Double], _ w: [Double], _ b: [Double]) -> Double {
            var y = Self.zeros(Self.N * outF)
            if conv1D { Layers.conv1DForward(x, weight: w, bias: b, &y, rows: Self.N, inFeatures: inF, outFeatures: outF) }
            else { Layers.linearForward(x, weight: w, bias: b, &y, rows: Self.N, inFeatures: inF, outFeatures: outF) }
            return Self.dot(r, y)
        }
        var dX = Self.zeros(x.count), dW = Self.zeros(w.count), dB = Self.zeros(b.count), dXFrozen = Self.zeros(x.count)
        if conv1D {
            Layers.conv1DBackward(r, x: x, weight: w, dX: &dX, dWeight: &dW, dBias: &dB, rows: Self.N, inFeatures: inF, outFeatures: outF)
            Layers.conv1DBackward(r, x: nil, weight: w, dX: &dXFrozen, rows: Self.N, inFeatures: inF, outFeatures: outF)
        } else {
            Layers.linearBackward(r, x: x, weight: w, dX: &dX, dWeight: &dW, dBias: &dB, rows: Self.N, inFeatures: inF, outFeatures: outF)
            Layers.linearBackward(r, x: nil, weight: w, dX: &dXFrozen, rows: Self.N, inFeatures: inF, outFeatures: outF)
        }
        let name = conv1D ? "conv1D" : "linear"
        Self.check("\(name) dX", analytic: dX, numeric: Self.numericGradient(x) { loss($0, w, b) })
        Self.check("\(name) dW", analytic: dW, numeric: Self.numericGradient(w) { loss(x, $0, b) })
        Self.check("\(name) db", analytic: dB, numeric: Self.numericGradient(b) { loss(x, w, $0) })
        #expect(dXFrozen == dX, "a frozen layer's dX does not depend on whether dW is computed")
    }

    @Test func lmHead() {
        var rng = Random(4)
        let h = rng.normal(Self.N * Self.C), e = rng.normal(Self.V * Self.C), r = rng.normal(Self.N * Self.V)
        func loss(_ h: [Double]) -> Double {
            var logits = Self.zeros(Self.N * Self.V)
            Layers.lmHeadForward(h, embedding: e, &logits, rows: Self.N, width: Self.C, vocabularySize: Self.V)
            return Self.dot(r, logits)
        }
        var dH = Self.zeros(h.count)
        Layers.lmHeadBackward(r, embedding: e, dH: &dH, rows: Self.N, width: Self.C, vocabularySize: Self.V)
        Self.check("tied lm_head dH", analytic: dH, numeric: Self.numericGradient(h, loss))
    }

    // MARK: norms and activations

    @Test func layerNorm() {
        var rng = Random(5)
        let x = rng.normal(Self.N * Self.C), w = rng.normal(Self.C), b = rng.normal(Self.C), r = rng.normal(Self.N * Self.C)
        func loss(_ x: [Double], _ w: [Double], _ b: [Double]) -> Double {
            var y = Self.zeros(x.count), mean = Self.zeros(Self.N), rstd = mean
            Layers.layerNormForward(x, weight: w, bias: b, &y, mean: &mean, rstd: &rstd, rows: Self.N, width: Self.C, eps: 1e-5)
            return Self.dot(r, y)
        }
        var y = Self.zeros(x.count), mean = Self.zeros(Self.N), rstd = mean
        Layers.layerNormForward(x, weight: w, bias: b, &y, mean: &mean, rstd: &rstd, rows: Self.N, width: Self.C, eps: 1e-5)
        var dX = Self.zeros(x.count), dW = Self.zeros(Self.C), dB = Self.zeros(Self.C)
        Layers.layerNormBackward(r, x: x, weight: w, mean: mean, rstd: rstd, dX: &dX, dWeight: &dW, dBias: &dB, rows: Self.N, width: Self.C)
        Self.check("layerNorm dx", analytic: dX, numeric: Self.numericGradient(x) { loss($0, w, b) })
        Self.check("layerNorm dγ", analytic: dW, numeric: Self.numericGradient(w) { loss(x, $0, b) })
        Self.check("layerNorm dβ", analytic: dB, numeric: Self.numericGradient(b) { loss(x, w, $0) })
    }

    @Test func rmsNorm() {
        var rng = Random(6)
        let x = rng.normal(Self.N * Self.C), w = rng.normal(Self.C), r = rng.normal(Self.N * Self.C)
        func loss(_ x: [Double], _ w: [Double]) -> Double {
            var y = Self.zeros(x.count), rstd = Self.zeros(Self.N)
            Layers.rmsNormForward(x, weight: w, &y, rstd: &rstd, rows: Self.N, width: Self.C, eps: 1e-5)
            return Self.dot(r, y)
        }
        var y = Self.zeros(x.count), rstd = Self.zeros(Self.N)
        Layers.rmsNormForward(x, weight: w, &y, rstd: &rstd, rows: Self.N, width: Self.C, eps: 1e-5)
        var dX = Self.zeros(x.count), dW = Self.zeros(Self.C)
        Layers.rmsNormBackward(r, x: x, weight: w, rstd: rstd, dX: &dX, dWeight: &dW, rows: Self.N, width: Self.C)
        Self.check("rmsNorm dx", analytic: dX, numeric: Self.numericGradient(x) { loss($0, w) })
        Self.check("rmsNorm dγ", analytic: dW, numeric: Self.numericGradient(w) { loss(x, $0) })
    }

    @Test func gelu() {
        var rng = Random(7)
        let x = rng.normal(Self.N * Self.C, std: 2), r = rng.normal(x.count)
        var dX = Self.zeros(x.count)
        Layers.geluBackward(r, x: x, dX: &dX, count: x.count)
        Self.check("gelu dx", analytic: dX, numeric: Self.numericGradient(x) { x in
            var y = Self.zeros(x.count)
            Layers.geluForward(x, &y, count: x.count)
            return Self.dot(r, y)
        })
    }

    @Test func swiGLU() {
        var rng = Random(8)
        let gate = rng.normal(Self.N * 12, std: 2), up = rng.normal(gate.count), r = rng.normal(gate.count)
        func loss(_ gate: [Double], _ up: [Double]) -> Double {
            var y = Self.zeros(gate.count)
            Layers.swiGLUForward(gate: gate, up: up, &y, count: gate.count)
            return Self.dot(r, y)
        }
        var dGate = Self.zeros(gate.count), dUp = Self.zeros(gate.count)
        Layers.swiGLUBackward(r, gate: gate, up: up, dGate: &dGate, dUp: &dUp, count: gate.count)
        Self.check("swiGLU dgate", analytic: dGate, numeric: Self.numericGradient(gate) { loss($0, up) })
        Self.check("swiGLU dup", analytic: dUp, numeric: Self.numericGradient(up) { loss(gate, $0) })
    }

    // MARK: RoPE and attention

    @Test(arguments: [RoPEStyle.halves, .interleaved])
    func rope(style: RoPEStyle) {
        var rng = Random(9)
        let heads = 2, hd = 4
        let tables = RotaryTables<Double>(headDim: hd, base: 10, positions: Self.T)  // base 10: large angles
        let x = rng.normal(Self.N * heads * hd), r = rng.normal(x.count)
        var dX = r
        Layers.ropeBackward(&dX, tables: tables, style: style, rows: Self.N, sequenceLength: Self.T, heads: heads)
        Self.check("rope \(style) dx", analytic: dX, numeric: Self.numericGradient(x) { x in
            var y = x
            Layers.ropeForward(&y, tables: tables, style: style, rows: Self.N, sequenceLength: Self.T, heads: heads)
            return Self.dot(r, y)
        })
    }

    /// Causal attention with grouped-query heads (4 query heads on 2 key/value heads), and
    /// with GPT-2's packed (N, 3C) qkv rows (strides, 4 heads on 4).
    @Test(arguments: [(4, 2, false), (4, 4, true), (2, 1, false)])
    func attention(heads H: Int, kvHeads KV: Int, packed: Bool) {
        var rng = Random(UInt64(10 + H + KV))
        let hd = 3, qDim = H * hd, kvDim = KV * hd
        // Packed: one buffer (N, qDim + 2·kvDim) with q | k | v per row; else three buffers.
        let qStride = packed ? qDim + 2 * kvDim : qDim, kvStride = packed ? qStride : kvDim
        let qkv = rng.normal(Self.N * (qDim + 2 * kvDim), std: 1.5)
        let q = Array(qkv[0..<(Self.N * qDim)]), k = Array(qkv[(Self.N * qDim)..<(Self.N * (qDim + kvDim))])
        let v = Array(qkv[(Self.N * (qDim + kvDim))...])
        let r = rng.normal(Self.N * qDim)
        func forward(_ q: [Double], _ k: [Double], _ v: [Double], probs: inout [Double]) -> [Double] {
            var out = Self.zeros(Self.N * qDim)
            if packed {
                var buf = Self.zeros(Self.N * qStride)
                for i in 0..<Self.N {
                    for c in 0..<qDim { buf[i * qStride + c] = q[i * qDim + c] }
                    for c in 0..<kvDim { buf[i * qStride + qDim + c] = k[i * kvDim + c]; buf[i * qStride + qDim + kvDim + c] = v[i * kvDim + c] }
                }
                buf.withUnsafeBufferPointer { p in
                    let b = p.baseAddress!
                    Layers.attentionForward(q: b, k: b + qDim, v: b + qDim + kvDim, qStride: qStride, kvStride: kvStride, &out,
                                            probs: &probs, batchSize: Self.B, sequenceLength: Self.T, heads: H, kvHeads: KV, headDim: hd)
                }
            } else {
                Layers.attentionForward(q: q, k: k, v: v, qStride: qStride, kvStride: kvStride, &out, probs: &probs,
                                        batchSize: Self.B, sequenceLength: Self.T, heads: H, kvHeads: KV, headDim: hd)
            }
            return out
        }
        var probs = Self.zeros(Self.B * H * Self.T * Self.T)
        func loss(_ q: [Double], _ k: [Double], _ v: [Double]) -> Double { var p = probs; return Self.dot(r, forward(q, k, v, probs: &p)) }
        _ = forward(q, k, v, probs: &probs)
        var dQ = Self.zeros(q.count), dK = Self.zeros(k.count), dV = Self.zeros(v.count)
        if packed {
            var buf = Self.zeros(Self.N * qStride), dBuf = buf
            for i in 0..<Self.N {
                for c in 0..<qDim { buf[i * qStride + c] = q[i * qDim + c] }
                for c in 0..<kvDim { buf[i * qStride + qDim + c] = k[i * kvDim + c]; buf[i * qStride + qDim + kvDim + c] = v[i * kvDim + c] }
            }
            buf.withUnsafeBufferPointer { p in
                dBuf.withUnsafeMutableBufferPointer { d in
                    let b = p.baseAddress!, db = d.baseAddress!
                    Layers.attentionBackward(r, q: b, k: b + qDim, v: b + qDim + kvDim, probs: probs, qStride: qStride, kvStride: kvStride,
                                             dQ: db, dK: db + qDim, dV: db + qDim + kvDim,
                                             batchSize: Self.B, sequenceLength: Self.T, heads: H, kvHeads: KV, headDim: hd)
                }
            }
            for i in 0..<Self.N {
                for c in 0..<qDim { dQ[i * qDim + c] = dBuf[i * qStride + c] }
                for c in 0..<kvDim { dK[i * kvDim + c] = dBuf[i * qStride + qDim + c]; dV[i * kvDim + c] = dBuf[i * qStride + qDim + kvDim + c] }
            }
        } else {
            Layers.attentionBackward(r, q: q, k: k, v: v, probs: probs, qStride: qStride, kvStride: kvStride, dQ: &dQ, dK: &dK, dV: &dV,
                                     batchSize: Self.B, sequenceLength: Self.T, heads: H, kvHeads: KV, headDim: hd)
        }
        let name = "attention \(H)q/\(KV)kv\(packed ? " packed" : "")"
        Self.check("\(name) dQ", analytic: dQ, numeric: Self.numericGradient(q) { loss($0, k, v) })
        Self.check("\(name) dK", analytic: dK, numeric: Self.numericGradient(k) { loss(q, $0, v) })
        Self.check("\(name) dV", analytic: dV, numeric: Self.numericGradient(v) { loss(q, k, $0) })
        // Never across sequences: the first sequence alone gives the same rows.
        var probs1 = Self.zeros(H * Self.T * Self.T), alone = Self.zeros(Self.T * qDim)
        Layers.attentionForward(q: q, k: k, v: v, qStride: qDim, kvStride: kvDim, &alone, probs: &probs1,
                                batchSize: 1, sequenceLength: Self.T, heads: H, kvHeads: KV, headDim: hd)
        #expect(Array(forward(q, k, v, probs: &probs).prefix(Self.T * qDim)) == alone)
    }

    // MARK: cross-entropy

    @Test func crossEntropyWithIgnoreIndex() {
        var rng = Random(11)
        let logits = rng.normal(Self.N * Self.V, std: 2)
        let targets = [3, -100, 10, 0, -100, 7]
        var dLogits = Self.zeros(logits.count)
        let loss = Layers.crossEntropy(logits: logits, targets: targets, dLogits: &dLogits, rows: Self.N, vocabularySize: Self.V)
        Self.check("crossEntropy dlogits", analytic: dLogits, numeric: Self.numericGradient(logits) {
            Layers.crossEntropy(logits: $0, targets: targets, dLogits: nil, rows: Self.N, vocabularySize: Self.V)
        })
        let dLogitsCounted = dLogits
        // Ignored rows contribute nothing: zero gradient, and the loss is the mean over the 4 others.
        for r in [1, 4] { #expect(dLogits[(r * Self.V)..<((r + 1) * Self.V)].allSatisfy { $0 == 0 }) }
        var manual = 0.0
        for (r, t) in targets.enumerated() where t != -100 {
            let z = logits[(r * Self.V)..<((r + 1) * Self.V)]
            manual += Foundation.log(z.map { Foundation.exp($0) }.reduce(0, +)) - z[z.startIndex + t]
        }
        #expect(abs(loss - manual / 4) < 1e-12)
        // Known answer: uniform logits give ln V. No counted row: 0, not NaN.
        #expect(abs(Layers.crossEntropy(logits: Self.zeros(2 * Self.V), targets: [1, 2], dLogits: nil, rows: 2, vocabularySize: Self.V)
                    - Foundation.log(Double(Self.V))) < 1e-12)
        let none = Layers.crossEntropy(logits: logits, targets: [Int](repeating: -100, count: Self.N), dLogits: &dLogits,
                                       rows: Self.N, vocabularySize: Self.V)
        #expect(none == 0 && dLogits.allSatisfy { $0 == 0 })
        // A normalizer (gradient accumulation) rescales loss and gradient.
        var dScaled = Self.zeros(logits.count)
        let scaled = Layers.crossEntropy(logits: logits, targets: targets, dLogits: &dScaled, rows: Self.N, vocabularySize: Self.V, normalizer: 8)
        #expect(abs(scaled - loss / 2) < 1e-12)
        #expect(zip(dScaled, dLogitsCounted).allSatisfy { abs($0 - $1 / 2) < 1e-15 })
    }
}
