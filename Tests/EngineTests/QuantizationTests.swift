import Foundation
import Testing
@testable import Engine

/// Quantization and the integer products of the `disable` mode, checked against
/// mathematics: rounding bounds, exact integer sums, and the error the scales predict.
@Suite struct QuantizationTests {
    static func uniform(_ n: Int, _ lo: Double, _ hi: Double, seed: UInt64) -> [Double] {
        var rng = SeededGenerator(seed: seed)
        return (0..<n).map { _ in lo + (hi - lo) * rng.nextUnit() }
    }

    @Test(arguments: [2, 3, 4, 7, 8, 12, 16]) func roundTripWithinHalfAStep(bits: Int) {
        for symmetric in [true, false] {
            for (lo, hi) in [(-3.0, 5.0), (0.0, 1e-6), (-1e30, 1e30), (2.0, 2.0), (-7.0, -1.0)] {
                let q = AffineQuantizer(lo: lo, hi: hi, bits: bits, symmetric: symmetric)
                #expect(q.scale > 0 && q.scale.isFinite)
                if symmetric { #expect(q.zeroPoint == 0 && q.qMin == -q.qMax && q.qMax == Double((1 << (bits - 1)) - 1)) }
                else { #expect(q.qMin == 0 && q.qMax == Double((1 << bits) - 1) && q.zeroPoint == q.zeroPoint.rounded()) }
                #expect(q.quantize(0) == q.zeroPoint, "0 is exact: \(bits) bits, symmetric \(symmetric), [\(lo), \(hi)]")
                for x in Self.uniform(200, lo, hi, seed: UInt64(bits)) + [lo, hi] {
                    let qx = q.quantize(x)
                    #expect(qx >= q.qMin && qx <= q.qMax && qx == qx.rounded())
                    #expect(abs(q.dequantize(qx) - x) <= q.scale / 2 * (1 + 1e-9), "\(x) in [\(lo), \(hi)], \(bits) bits")
                }
                // Outside the range: clamped to the nearest end.
                #expect(q.quantize(2 * max(abs(lo), abs(hi)) + 10 * q.scale) == q.qMax)
            }
        }
    }

    /// The corrected integer accumulators equal Σ (x_q − x_zp)(w_q − w_zp) computed in Int64,
    /// and y equals the product of the dequantized operands.
    @Test func integerProductIsExact() throws {
        let shapes = [(1, 1, 1), (3, 5, 7), (16, 768, 8), (4, 1, 33)]
        for bits in [2, 8, 16] {
            for (sym, (N, K, O)) in zip([false, true, false, true], shapes) {
                for kind in ["random", "equal rows", "zeros", "huge"] {
                    var x = Self.uniform(N * K, -2, 3, seed: 1), w = Self.uniform(O * K, -0.5, 0.25, seed: 2)
                    switch kind {
                    case "equal rows": x = (0..<N * K).map { Double($0 % K) * 0.1 - 1 }
                    case "zeros": x = [Double](repeating: 0, count: N * K)
                    case "huge": x = x.map { $0 * 1e20 }; w = w.map { $0 * 1e-20 }
                    default: break
                    }
                    let xq = QuantizedRows(rows: N, columns: K, bits: bits, symmetric: sym, perRow: true) { x[$0 * K + $1] }
                    let wq = QuantizedRows(rows: O, columns: K, bits: bits, symmetric: !sym, perRow: kind != "zeros") { w[$0 * K + $1] }
                    let (y, acc) = IntegerMatmul.multiply(xq, wq)
                    let xd = xq.dequantized(), wd = wq.dequantized()
                    // Weights packed in one or two bytes each give the same products.
                    let packed = wq.compacted()
                    // (16-bit integers spanning at most 256 values fit one byte each too.)
                    let bytes = try #require(packed.packed?.byteCount)
                    #expect(packed.values.isEmpty && (bits <= 8 ? bytes == O * K : bytes == O * K || bytes == 2 * O * K), "\(bits) bits packed")
                    let (yPacked, accPacked) = IntegerMatmul.multiply(xq, packed)
                    #expect(accPacked == acc && yPacked == y && packed.dequantized() == wd, "\(kind) \(bits) bits (\(N), \(K), \(O)) packed")
                    for n in 0..<N {
                        for o in 0..<O {
                            var exact: Int64 = 0
                            var real = 0.0
                            for k in 0..<K {
                                let a = Int64(xq.values[n * K + k]) - Int64(xq.quantizer(n).zeroPoint)
                                let b = Int64(wq.values[o * K + k]) - Int64(wq.quantizer(o).zeroPoint)
                                exact += a * b
                                real += xd[n * K + k] * wd[o * K + k]
                            }
                            #expect(acc[n * O + o] == Double(exact), "\(kind) \(bits) bits (\(N), \(K), \(O))")
                            #expect(abs(Double(y[n * O + o]) - real) <= 1e-6 * max(abs(real), 1e-30) + 1e-30 * abs(real), "\(kind) y")
                        }
                    }
                }
            }
        }
    }

    /// The C kernels that quantize activations per call give the general initializer's integers.
    @Test func activationKernelMatchesTheDefinition() {
        // (300, 200): the rows are split over the cores.
        for (rows, columns) in [(1, 1), (3, 17), (8, 576), (300, 200)] {
            let x = Self.uniform(rows * columns, -3, 2, seed: UInt64(columns)).map(Float.init)
            for bits in [2, 8, 16] {
                for symmetric in [false, true] {
                    for (perRow, range) in [(true, nil), (false, nil), (false, (-1.0, 1.5))] as [(Bool, (Double, Double)?)] {
                        let general = QuantizedRows(rows: rows, columns: columns, bits: bits, symmetric: symmetric, perRow: perRow, range: range) { Double(x[$0 * columns + $1]) }
                        let fast = x.withUnsafeBufferPointer { QuantizedRows(activations: $0, rows: rows, columns: columns, bits: bits, symmetric: symmetric, perRow: perRow, range: range) }
                        #expect(fast.values == general.values && fast.rowSums == general.rowSums, "(\(rows), \(columns)) \(bits) bits")
                        #expect((0..<rows).allSatisfy { fast.quantizer($0) == general.quantizer($0) })
                    }
                }
            }
        }
    }

    /// Ties round away from zero (C's `round`, not the even neighbour): with 8-bit symmetric
    /// steps of exactly 1, x = k + ½ for k from −130 to 129 (clamped to ±127 beyond).
    @Test func activationKernelRoundsTiesAwayFromZero() {
        let x = (-130..<130).map { Float($0) + 0.5 }
        let q = x.withUnsafeBufferPointer { QuantizedRows(activations: $0, rows: 2, columns: 130, bits: 8, symmetric: true, perRow: false, range: (-127, 127)) }
        #expect(q.quantizer(0).scale == 1)
        let expected = x.map { Float(min(max(Double($0).rounded(.toNearestOrAwayFromZero), -127), 127)) }
        #expect(q.values == expected)
        #expect(q.values[128] == -2 && q.values[130] == 1)  // −1.5 → −2, 0.5 → 1
        #expect(q.rowSums == [expected[0..<130].reduce(0) { $0 + Double($1) }, expected[130...].reduce(0) { $0 + Double($1) }])
    }

    @Test func accumulatorBoundIsChecked() {
        // 16 bits, K = 3072: |Σ| ≤ 3072·65535·32767·4 < 2^53 (the largest products nb makes: GPT-2's mlp.c_proj).
        let x = QuantizedRows(rows: 1, columns: 3072, bits: 16, symmetric: false, perRow: true) { _, k in Double(k) }
        let w = QuantizedRows(rows: 1, columns: 3072, bits: 16, symmetric: true, perRow: true) { _, k in -Double(k) }
        #expect(IntegerMatmul.accumulatorBound(x, w) < 9.007199254740992e15)
        #expect(QuantizationScheme(nBits: 17, activations: .dynamicPerToken, weights: .perChannel).validateError == .invalidBits(17))
        #expect(QuantizationScheme(named: "dtok-sc", nBits: 8) == QuantizationScheme(nBits: 8, activations: .dynamicPerToken, weights: .perChannel))
        #expect(QuantizationScheme(named: "XYZ", nBits: 8) == nil)
    }

    /// The `disable` backend on the tiny GPT-2 and LLaMA: every remote layer's forward and
    /// backward equals the float product within the bound its scales predict,
    /// |ŷ − y| ≤ Σ_k |x̂_k − x_k|·|w_k| + |x̂_k|·|ŵ_k − w_k| ≤ Σ_k (s_x/2)|w_k| + |x̂_k|(s_w/2).
    @Test(arguments: ["tiny-gpt2", "tiny-llama"]) func disableMatchesFloatWithinThePredictedError(name: String) throws {
        let model = try #require(try PEFTAdapterTests.model(name) as? TrainableModel)
        let names = model.linearModules.map(\.name)
        for scheme in [QuantizationScheme(named: "DTok-SC", nBits: 8)!, QuantizationScheme(named: "DTen-ST", nBits: 8)!,
                       QuantizationScheme(nBits: 12, activations: .dynamicPerToken, weights: .perTensor, symmetricActivations: true, symmetricWeights: false)] {
            let backend = try QuantizedLinearBackend(plan: HybridPlan(scheme: scheme, remoteModules: names), model: model)
            #expect(backend.moduleNames == names)
            for m in model.linearModules {
                let layer = LinearLayer(name: m.name, inFeatures: m.inFeatures, outFeatures: m.outFeatures)
                let N = 5, K = m.inFeatures, O = m.outFeatures
                let x = Self.uniform(N * K, -2, 2, seed: 3).map(Float.init), g = Self.uniform(N * O, -1e-3, 1e-3, seed: 4).map(Float.init)
                let w = model.weight(of: m)
                let W: (Int, Int) -> Double = m.transposedWeight ? { o, k in Double(w[k * O + o]) } : { o, k in Double(w[o * K + k]) }
                var y = [Float](repeating: 0, count: N * O), dX = [Float](repeating: 0, count: N * K)
                #expect(x.withUnsafeBufferPointer { xb in y.withUnsafeMutableBufferPointer { backend.forward(layer, x: xb, y: $0) } })
                #expect(g.withUnsafeBufferPointer { gb in dX.withUnsafeMutableBufferPointer { backend.backward(layer, dY: gb, dX: $0) } })
                let wq = try #require(backend.weightQuantizers(of: m.name))
                func sw(_ o: Int) -> Double { wq.count == 1 ? wq[0].scale : wq[o].scale }
                for n in 0..<N {
                    let xs = x[(n * K)..<((n + 1) * K)].map(Double.init)
                    let sx = scheme.activations == .dynamicPerToken
                        ? AffineQuantizer(lo: xs.min()!, hi: xs.max()!, bits: scheme.nBits, symmetric: scheme.symmetricActivations).scale
                        : AffineQuantizer(lo: x.map(Double.init).min()!, hi: x.map(Double.init).max()!, bits: scheme.nBits, symmetric: scheme.symmetricActivations).scale
                    for o in 0..<O {
                        var exact = 0.0, bound = 0.0
                        for k in 0..<K {
                            exact += xs[k] * W(o, k)
                            bound += sx / 2 * abs(W(o, k)) + (abs(xs[k]) + sx / 2) * sw(o) / 2
                        }
                        #expect(abs(Double(y[n * O + o]) - exact) <= bound * 1.0001 + 1e-6, "\(m.name) forward (\(n), \(o))")
                    }
                }
                // Backward: dX = dY·W; its error stays within the same kind of bound, scaled to the gradients.
                var worst = 0.0, scale = 0.0
                for n in 0..<N {
                    for k in 0..<K {
                        var exact = 0.0
                        for o in 0..<O { exact += Double(g[n * O + o]) * W(o, k) }
                        worst = max(worst, abs(Double(dX[n * K + k]) - exact))
                        scale = max(scale, abs(exact))
                    }
                }
                #expect(worst <= 0.05 * scale, "\(m.name) backward: max error \(worst) for max |dX| \(scale) with \(scheme.description)")
            }
        }
    }

    /// Training the tiny GPT-2 in `disable` mode, 16-bit DTok-SC, follows the float run closely.
    @Test func disableTrainingFollowsFloat() throws {
        func losses(_ backend: ((TrainableModel) throws -> LinearBackend)?) throws -> [Float] {
            let model = try #require(try PEFTAdapterTests.model("tiny-gpt2") as? TrainableModel)
            let adapter = try LoRAAdapter(config: LoRAConfig(rank: 4, alpha: 8, dropout: 0, targets: .modules(["c_attn"]), seed: 3), modules: model.linearModules)
            var rng = SeededGenerator(seed: 9)
            let examples = (0..<8).map { i -> TokenizedExample in
                let ids = (0..<12).map { _ in Int(rng.next() % 300) }
                return TokenizedExample(tokens: ids, labels: ids, line: i + 1)
            }
            let data = CausalLMData(examples: examples, options: CausalLMDataOptions(maxLength: 12), paddingTokenID: 0)
            let run = try LoRATrainingRun(model: model, adapter: adapter, data: data, settings: TrainingSettings(epochs: 3, batchSize: 4, learningRate: 1e-2))
            if let backend { run.backend = try backend(model) }
            var out: [Float] = []
            while !run.isFinished { out.append(try run.step().loss) }
            return out
        }
        let float = try losses(nil)
        let names = try #require(try PEFTAdapterTests.model("tiny-gpt2") as? TrainableModel).linearModules.map(\.name)
        let q16 = try losses { try QuantizedLinearBackend(plan: HybridPlan(scheme: QuantizationScheme(named: "DTok-SC", nBits: 16)!, remoteModules: names), model: $0) }
        let q4 = try losses { try QuantizedLinearBackend(plan: HybridPlan(scheme: QuantizationScheme(named: "DTok-SC", nBits: 4)!, remoteModules: names), model: $0) }
        #expect(float.count == 6 && float.last! < float.first!)
        for (a, b) in zip(float, q16) { #expect(abs(a - b) <= 1e-3 * abs(a), "16-bit \(b) vs float \(a)") }
        let gap4 = zip(float, q4).map { abs($0 - $1) }.max()!, gap16 = zip(float, q16).map { abs($0 - $1) }.max()!
        #expect(gap4 > gap16, "4 bits (\(gap4)) should be further from float than 16 bits (\(gap16))")
    }
}

extension QuantizationScheme {
    var validateError: QuantizationError? {
        do { try validate(); return nil } catch { return error }
    }
}

/// The seed's weights report for GPT-2 small with LoRA r = 8 on c_attn (REFERENCE.md):
/// 124,734,720 parameters → 39,717,120 on the client, 68.16 % removed.
@Suite struct ParameterSplitTests {
    @Test func gpt2SmallMatchesTheSeed() throws {
        let config = GPT2Config()
        let (V, C, P, L) = (config.vocabSize, config.nEmbd, config.nPositions, config.nLayer)
        // Embeddings, then per block two LayerNorms and four Conv1D with biases, then the final LayerNorm.
        let perBlock = 2 * 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C)
        let model = V * C + P * C + L * perBlock + 2 * C
        let lora = try LoRAAdapter(config: LoRAConfig(rank: 8, alpha: 32, dropout: 0.1, targets: .modules(["c_attn"])), modules: config.linearModules)
        let split = ParameterSplit(remote: config.linearModules, biased: true, modelParameters: model, loraParameters: lora.parameterCount)
        #expect(lora.parameterCount == 294_912)
        #expect(split.total == 124_734_720)
        #expect(split.client == 39_717_120)
        #expect(String(format: "%.2f", 100 * split.removedShare) == "68.16")
    }
}
