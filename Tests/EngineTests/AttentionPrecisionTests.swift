import Engine
import Foundation
import Testing

/// The Float attention (vectorized softmax and softmax backward, sequences and heads split over
/// the cores, key rows in blocks) against the Double one (the generic loops, whose gradients
/// `GradientCheckTests.attention` checks against finite differences), on the same inputs.
@Suite struct AttentionPrecisionTests {
    @Test(arguments: [
        (batch: 1, heads: 2, kvHeads: 1, length: 9, window: Int?.none),   // B·KV = 1: key rows split in blocks
        (batch: 2, heads: 4, kvHeads: 2, length: 6, window: Int?.none),
        (batch: 3, heads: 3, kvHeads: 3, length: 17, window: Int?.some(5)),
    ])
    func floatEqualsDouble(batch B: Int, heads H: Int, kvHeads KV: Int, length T: Int, window: Int?) {
        var rng = GradientCheckTests.Random(UInt64(100 + B * 10 + H))
        let hd = 8, N = B * T
        let q = rng.normal(N * H * hd, std: 1.5), k = rng.normal(N * KV * hd, std: 1.5), v = rng.normal(N * KV * hd)
        let dOut = rng.normal(N * H * hd)

        func run<R: TrainingScalar>(_: R.Type) -> (out: [R], probs: [R], dQ: [R], dK: [R], dV: [R]) {
            func c(_ x: [Double]) -> [R] { x.map { R($0) } }
            let (q, k, v, dOut) = (c(q), c(k), c(v), c(dOut))
            var out = [R](repeating: 0, count: N * H * hd), probs = [R](repeating: 0, count: B * H * T * T)
            Layers.attentionForward(q: q, k: k, v: v, qStride: H * hd, kvStride: KV * hd, &out, probs: &probs,
                                    batchSize: B, sequenceLength: T, heads: H, kvHeads: KV, headDim: hd, window: window)
            var dQ = [R](repeating: 0, count: q.count), dK = [R](repeating: 0, count: k.count), dV = dK
            Layers.attentionBackward(dOut, q: q, k: k, v: v, probs: probs, qStride: H * hd, kvStride: KV * hd,
                                     dQ: &dQ, dK: &dK, dV: &dV, batchSize: B, sequenceLength: T, heads: H, kvHeads: KV, headDim: hd)
            return (out, probs, dQ, dK, dV)
        }
        let f = run(Float.self), d = run(Double.self)
        func close(_ name: String, _ a: [Float], _ b: [Double], tolerance: Double = 2e-5) {
            let scale = max(1, b.map(abs).max() ?? 0)
            let worst = zip(a, b).map { abs(Double($0) - $1) }.max() ?? 0
            #expect(worst <= tolerance * scale, "\(name): largest difference \(worst) (values up to \(scale))")
        }
        close("out", f.out, d.out)
        close("probs", f.probs, d.probs)
        close("dQ", f.dQ, d.dQ)
        close("dK", f.dK, d.dK)
        close("dV", f.dV, d.dV)
        // Causal (and windowed): probabilities above the diagonal and before the window are exactly 0.
        for b in 0..<B { for h in 0..<H { for i in 0..<T { for j in 0..<T {
            let hidden = j > i || (window.map { j <= i - $0 } ?? false)
            if hidden { #expect(f.probs[((b * H + h) * T + i) * T + j] == 0) }
        } } } }
    }
}
