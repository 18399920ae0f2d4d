import Foundation
import Testing
@testable import Engine

/// The error a throwing LoRA call produced, or nil when it succeeded.
func loraError<T>(_ body: () throws(LoRAError) -> T) -> LoRAError? {
    do { _ = try body(); return nil } catch { return error }
}

@Suite struct LoRAConfigTests {
    static let gpt2Small = GPT2Config()
    static let tinyLlama = LlamaConfig(vocabSize: 300, hiddenSize: 64, intermediateSize: 128, numHiddenLayers: 2, numAttentionHeads: 4,
                                       numKeyValueHeads: 2, rmsNormEps: 1e-5, ropeTheta: 10000, maxPositionEmbeddings: 64, tieWordEmbeddings: false)

    @Test func gpt2NotebookParameterCount() throws {
        // REFERENCE.md: r = 8, alpha = 32, c_attn on GPT-2 small → 294,912 = 12 × (8·768 + 2304·8).
        let adapter = try LoRAAdapter(config: LoRAConfig(rank: 8, alpha: 32, dropout: 0.1, targets: .modules(["c_attn"])),
                                      modules: Self.gpt2Small.linearModules)
        #expect(adapter.parameterCount == 294_912)
        #expect(adapter.layers.count == 12)
        #expect(adapter.layers[0].scale == 4)
        #expect(adapter.modules.map(\.name).first == "transformer.h.0.attn.c_attn")
        #expect(adapter.layers[0].module.inFeatures == 768 && adapter.layers[0].module.outFeatures == 2304)
    }

    @Test func moduleListsHaveHuggingFaceNamesAndSizes() {
        let g = GPT2Config(vocabSize: 300, nPositions: 64, nEmbd: 64, nLayer: 2, nHead: 4).linearModules
        #expect(g.map(\.name) == (0..<2).flatMap { l in ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"].map { "transformer.h.\(l).\($0)" } })
        #expect(g.map { [$0.inFeatures, $0.outFeatures] }.prefix(4) == [[64, 192], [64, 64], [64, 256], [256, 64]])
        #expect(g.allSatisfy { $0.transposedWeight })
        let l = Self.tinyLlama.linearModules
        #expect(l.prefix(7).map(\.name) == ["q_proj", "k_proj", "v_proj", "o_proj"].map { "model.layers.0.self_attn.\($0)" }
            + ["gate_proj", "up_proj", "down_proj"].map { "model.layers.0.mlp.\($0)" })
        #expect(l.prefix(7).map { [$0.inFeatures, $0.outFeatures] } == [[64, 64], [64, 32], [64, 32], [64, 64], [64, 128], [64, 128], [128, 64]])
        #expect(!l.contains { $0.transposedWeight })
    }

    @Test func targetsMatchBySuffixLikePEFT() throws {
        let modules = Self.tinyLlama.linearModules
        let qv = try LoRAConfig(targets: LoRATargets(parsing: " q_proj , v_proj ")).resolveTargets(in: modules)
        #expect(qv.map(\.name) == ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                                   "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"])
        #expect(try LoRAConfig(targets: .modules(["model.layers.1.mlp.up_proj"])).resolveTargets(in: modules).map(\.name) == ["model.layers.1.mlp.up_proj"])
        #expect(try LoRAConfig(targets: .allLinear).resolveTargets(in: modules).count == 14)
        #expect(try LoRAConfig(targets: .pattern(#".*\.1\.self_attn\.(q|k)_proj"#)).resolveTargets(in: modules).count == 2)
        // GPT-2's "c_proj" selects both attn.c_proj and mlp.c_proj; "attn.c_proj" only the first.
        let g = GPT2Config(nEmbd: 64, nLayer: 2, nHead: 4).linearModules
        #expect(try LoRAConfig(targets: .modules(["c_proj"])).resolveTargets(in: g).count == 4)
        #expect(try LoRAConfig(targets: .modules(["attn.c_proj"])).resolveTargets(in: g).count == 2)
        // "proj" is not a suffix after a dot.
        #expect(loraError { () throws(LoRAError) in try LoRAConfig(targets: .modules(["proj"])).resolveTargets(in: modules) } != nil)
        #expect(LoRATargets(parsing: "All-Linear") == .allLinear)
    }

    @Test func validationNamesTheBadValue() throws {
        let modules = Self.tinyLlama.linearModules
        #expect(loraError { () throws(LoRAError) in try LoRAConfig(rank: 0, targets: .allLinear).validate() } == .invalidRank(0))
        #expect(loraError { () throws(LoRAError) in try LoRAConfig(rank: -3, targets: .allLinear).validate() }?.description.contains("-3") == true)
        #expect(loraError { () throws(LoRAError) in try LoRAConfig(alpha: 0, targets: .allLinear).validate() } == .invalidAlpha(0))
        #expect(loraError { () throws(LoRAError) in try LoRAConfig(dropout: 1, targets: .allLinear).validate() } == .invalidDropout(1))
        #expect(loraError { () throws(LoRAError) in try LoRAConfig(dropout: -0.1, targets: .allLinear).validate() } == .invalidDropout(-0.1))
        #expect(loraError { () throws(LoRAError) in try LoRAConfig(targets: .modules([])).validate() } == .noTargetModules)
        let unknown = loraError { () throws(LoRAError) in try LoRAConfig(targets: .modules(["q_proj", "c_attn"])).resolveTargets(in: modules) }
        #expect(unknown == .unknownTargetModule(target: "c_attn", available: modules.map(\.name)))
        let message = unknown?.description ?? ""
        #expect(message.contains("'c_attn'") && message.contains("q_proj") && message.contains("down_proj") && message.contains("14"), "\(message)")
    }

    @Test func targetsCodable() throws {
        for t: LoRATargets in [.allLinear, .modules(["q_proj", "v_proj"]), .pattern("a.*")] {
            let data = try JSONEncoder().encode(LoRAConfig(targets: t))
            #expect(try JSONDecoder().decode(LoRAConfig.self, from: data).targets == t)
        }
        #expect(try JSONDecoder().decode(LoRATargets.self, from: Data(#""c_attn,c_fc""#.utf8)) == .modules(["c_attn", "c_fc"]))
    }
}

@Suite struct LoRALayerTests {
    static let module = LinearModule(name: "m", layer: 0, kind: .query, inFeatures: 5, outFeatures: 3, transposedWeight: false)

    static func randomLayer(rank: Int = 2, scale: Float = 1.5, seed: UInt64 = 7, module: LinearModule = module) -> LoRALayer {
        var rng = SeededGenerator(seed: seed)
        let a = InMemoryTensors.normal(count: rank * module.inFeatures, std: 1, rng: &rng)
        let b = InMemoryTensors.normal(count: module.outFeatures * rank, std: 1, rng: &rng)
        return LoRALayer(module: module, rank: rank, scale: scale, a: a, b: b)
    }

    @Test func initialisationIsPEFTsKaimingUniformAndZeroB() {
        let m = LinearModule(name: "m", layer: 0, kind: .query, inFeatures: 400, outFeatures: 30, transposedWeight: false)
        var rng = SeededGenerator(seed: 1)
        let layer = LoRALayer.initialized(module: m, rank: 8, scale: 4, rng: &rng)
        let bound: Float = 1 / 20
        #expect(layer.a.allSatisfy { abs($0) <= bound })
        #expect(layer.a.max()! > 0.95 * bound && layer.a.min()! < -0.95 * bound)
        #expect(abs(layer.a.reduce(0, +) / Float(layer.a.count)) < 0.003)
        #expect(layer.b.allSatisfy { $0 == 0 } && layer.b.count == 240)
        var again = SeededGenerator(seed: 1)
        #expect(LoRALayer.initialized(module: m, rank: 8, scale: 4, rng: &again).a == layer.a)
    }

    /// y = s·(x ⊙ M)·Aᵀ·Bᵀ computed naively in Double.
    static func naiveDelta(_ l: LoRALayer, x: [Float], mask: [Float]?, rows: Int) -> [Double] {
        let n = l.module.inFeatures, o = l.module.outFeatures
        var y = [Double](repeating: 0, count: rows * o)
        for t in 0..<rows {
            var h = [Double](repeating: 0, count: l.rank)
            for k in 0..<l.rank { for i in 0..<n { h[k] += Double(x[t * n + i]) * Double(mask?[t * n + i] ?? 1) * Double(l.a[k * n + i]) } }
            for j in 0..<o { for k in 0..<l.rank { y[t * o + j] += Double(l.scale) * h[k] * Double(l.b[j * l.rank + k]) } }
        }
        return y
    }

    @Test func forwardMatchesNaiveProduct() {
        var layer = Self.randomLayer()
        var rng = SeededGenerator(seed: 3)
        let x = InMemoryTensors.normal(count: 4 * 5, std: 1, rng: &rng)
        let mask = LoRALayer.dropout(count: 20, probability: 0.3, rng: &rng)
        for m in [nil, mask] {
            var y = [Float](repeating: 0.25, count: 4 * 3)
            layer.forward(x, rows: 4, mask: m, save: false, into: &y)
            let expected = Self.naiveDelta(layer, x: x, mask: m?.values, rows: 4)
            for i in y.indices { #expect(abs(Double(y[i]) - 0.25 - expected[i]) < 1e-5) }
        }
    }

    /// Central differences of L = Σ G ⊙ delta(x; A, B) (bilinear, so exact up to rounding)
    /// against backward's dA, dB and dX, with and without a dropout mask.
    @Test func backwardMatchesFiniteDifferences() {
        let rows = 3, n = 5, o = 3
        var rng = SeededGenerator(seed: 11)
        let x = InMemoryTensors.normal(count: rows * n, std: 1, rng: &rng)
        let g = InMemoryTensors.normal(count: rows * o, std: 1, rng: &rng)
        let dropMask = LoRALayer.dropout(count: rows * n, probability: 0.4, rng: &rng)
        #expect(dropMask.values.contains(0) && dropMask.values.contains { $0 > 1 })
        for dropout in [nil, dropMask] {
            let mask = dropout?.values
            var layer = Self.randomLayer()
            var y = [Float](repeating: 0, count: rows * o)
            layer.forward(x, rows: rows, mask: dropout, save: true, into: &y)
            var dX = [Float](repeating: 0.5, count: rows * n)
            layer.backward(x, outputGradient: g, rows: rows, inputGradient: &dX)

            func loss(_ l: LoRALayer, _ x: [Float]) -> Double {
                zip(Self.naiveDelta(l, x: x, mask: mask, rows: rows), g).reduce(0) { $0 + $1.0 * Double($1.1) }
            }
            let eps: Float = 0.01
            for i in 0..<layer.a.count {
                var p = layer, m = layer
                p.a[i] += eps; m.a[i] -= eps
                let fd = (loss(p, x) - loss(m, x)) / Double(2 * eps)
                #expect(abs(fd - Double(layer.gradientA[i])) < 1e-3 * max(1, abs(fd)), "dA[\(i)]: \(fd) vs \(layer.gradientA[i])")
            }
            for i in 0..<layer.b.count {
                var p = layer, m = layer
                p.b[i] += eps; m.b[i] -= eps
                let fd = (loss(p, x) - loss(m, x)) / Double(2 * eps)
                #expect(abs(fd - Double(layer.gradientB[i])) < 1e-3 * max(1, abs(fd)), "dB[\(i)]: \(fd) vs \(layer.gradientB[i])")
            }
            for i in 0..<x.count {
                var xp = x, xm = x
                xp[i] += eps; xm[i] -= eps
                let fd = (loss(layer, xp) - loss(layer, xm)) / Double(2 * eps)
                #expect(abs(fd - Double(dX[i] - 0.5)) < 1e-3 * max(1, abs(fd)), "dX[\(i)]: \(fd) vs \(dX[i] - 0.5)")
            }
            // A second backward accumulates.
            let first = layer.gradientA
            layer.backward(x, outputGradient: g, rows: rows, inputGradient: nil)
            for i in first.indices { #expect(abs(layer.gradientA[i] - 2 * first[i]) <= 1e-5 * max(1, abs(first[i]))) }
        }
    }

    @Test func dropoutMaskIsInvertedAndSeeded() {
        var rng = SeededGenerator(seed: 5)
        let mask = LoRALayer.dropoutMask(count: 100_000, probability: 0.1, rng: &rng)
        let dropped = mask.filter { $0 == 0 }.count
        #expect(abs(Double(dropped) / 1e5 - 0.1) < 0.005)
        #expect(mask.allSatisfy { $0 == 0 || $0 == Float(1 / 0.9) })
        var again = SeededGenerator(seed: 5)
        #expect(LoRALayer.dropoutMask(count: 100_000, probability: 0.1, rng: &again) == mask)
    }

    /// The parallel kernel draws exactly what one `nextUnit() < p` per element draws, in
    /// order, and leaves the generator where those draws leave it: masks (and so training
    /// runs, checkpoints and resumes) are those of the sequential definition. Lengths that
    /// are not a multiple of any vector width, probabilities at the edges, and seeds whose
    /// counter wraps around 2⁶⁴.
    @Test func dropoutKernelDrawsTheSequentialMasks() {
        for (seed, count, p) in [(UInt64(5), 100_003, 0.1), (1, 1, 0.5), (7, 37, 0.0), (UInt64.max - 3, 1_000, 0.999),
                                 (0x9E37_79B9_7F4A_7C15 &* 3, 4_099, 0.25), (42, 65, 1e-17)] {
            var sequential = SeededGenerator(seed: seed), parallel = sequential
            let keep = Float(1 / (1 - p))
            let expected: [Float] = (0..<count).map { _ in sequential.nextUnit() < p ? 0 : keep }
            let drawn = LoRALayer.dropout(count: count, probability: p, rng: &parallel)
            #expect(drawn.values == expected, "seed \(seed), \(count) elements, p = \(p)")
            #expect(parallel == sequential, "seed \(seed): the generator ends where \(count) draws leave it")
        }
    }

    @Test func mergedWeightGivesTheAdaptedOutput() {
        for transposed in [false, true] {
            let m = LinearModule(name: "m", layer: 0, kind: transposed ? .attention : .query, inFeatures: 6, outFeatures: 4, transposedWeight: transposed)
            var layer = Self.randomLayer(rank: 3, scale: 0.7, module: m)
            var rng = SeededGenerator(seed: 9)
            let w = InMemoryTensors.normal(count: 24, std: 1, rng: &rng)
            let x = InMemoryTensors.normal(count: 2 * 6, std: 1, rng: &rng)
            var y = [Float](repeating: 0, count: 8)
            if transposed { Layers.conv1D(x, w, bias: nil, &y, rows: 2, inFeatures: 6, outFeatures: 4) } else { Layers.linear(x, w, &y, rows: 2, inFeatures: 6, outFeatures: 4) }
            layer.forward(x, rows: 2, mask: nil, save: false, into: &y)
            var merged = w
            layer.merge(into: &merged)
            var z = [Float](repeating: 0, count: 8)
            if transposed { Layers.conv1D(x, merged, bias: nil, &z, rows: 2, inFeatures: 6, outFeatures: 4) } else { Layers.linear(x, merged, &z, rows: 2, inFeatures: 6, outFeatures: 4) }
            for i in 0..<8 { #expect(abs(y[i] - z[i]) < 1e-4, "transposed \(transposed) [\(i)]: \(y[i]) vs \(z[i])") }
        }
    }
}

@Suite struct LoRAAdapterTests {
    static func tinyGPT2Adapter(dropout: Double = 0.1) throws -> LoRAAdapter {
        let config = GPT2Config(vocabSize: 300, nPositions: 64, nEmbd: 64, nLayer: 2, nHead: 4)
        return try LoRAAdapter(config: LoRAConfig(rank: 4, alpha: 8, dropout: dropout, targets: .modules(["c_attn", "c_fc"]), seed: 42),
                               modules: config.linearModules)
    }

    @Test func lookupAndOrder() throws {
        let adapter = try Self.tinyGPT2Adapter()
        #expect(adapter.modules.map(\.name) == ["transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_fc", "transformer.h.1.attn.c_attn", "transformer.h.1.mlp.c_fc"])
        #expect(adapter.index(of: "transformer.h.1.attn.c_attn") == 2)
        #expect(adapter.index(layer: 1, kind: .fc) == 3)
        #expect(adapter.index(layer: 0, kind: .attentionProjection) == nil)
        #expect(adapter.parameters.count == 8 && adapter.parameters[1].count == 192 * 4)
        #expect(adapter.parameterCount == 2 * (4 * 64 + 192 * 4) + 2 * (4 * 64 + 256 * 4))
        // The same seed gives the same A.
        #expect(try Self.tinyGPT2Adapter().parameters == adapter.parameters)
    }

    @Test func evaluationTrainingAndDisabledModes() throws {
        let adapter = try Self.tinyGPT2Adapter(dropout: 0.5)
        var rng = SeededGenerator(seed: 1)
        adapter.layers[0].b = InMemoryTensors.normal(count: 192 * 4, std: 1, rng: &rng)
        let x = InMemoryTensors.normal(count: 3 * 64, std: 1, rng: &rng)
        func run() -> [Float] {
            var y = [Float](repeating: 0, count: 3 * 192)
            adapter.forward(at: 0, input: x, rows: 3, output: &y)
            return y
        }
        let eval1 = run(), eval2 = run()
        #expect(eval1 == eval2 && eval1.contains { $0 != 0 })
        adapter.isTraining = true
        let train1 = run(), train2 = run()
        #expect(train1 != eval1 && train1 != train2, "dropout draws a new mask per training forward")
        adapter.isTraining = false
        adapter.isEnabled = false
        #expect(run().allSatisfy { $0 == 0 })
    }

    @Test func gradientsZeroAndParametersRoundTrip() throws {
        let adapter = try Self.tinyGPT2Adapter(dropout: 0)
        adapter.isTraining = true
        var rng = SeededGenerator(seed: 2)
        let x = InMemoryTensors.normal(count: 2 * 64, std: 1, rng: &rng)
        let dY = InMemoryTensors.normal(count: 2 * 192, std: 1, rng: &rng)
        var y = [Float](repeating: 0, count: 2 * 192), dX = [Float](repeating: 0, count: 2 * 64)
        adapter.forward(at: 2, input: x, rows: 2, output: &y)
        adapter.backward(at: 2, input: x, outputGradient: dY, rows: 2, inputGradient: &dX)
        // B = 0 at init: dA = 0 and dX = 0, but dB = s·dYᵀ·(x·Aᵀ) is not.
        #expect(adapter.layers[2].gradientA.allSatisfy { $0 == 0 } && dX.allSatisfy { $0 == 0 })
        #expect(adapter.layers[2].gradientB.contains { $0 != 0 })
        #expect(adapter.gradientNorm > 0)
        adapter.zeroGradients()
        #expect(adapter.gradients.allSatisfy { $0.allSatisfy { $0 == 0 } })
        var p = adapter.parameters
        p[0][0] = 123
        adapter.parameters = p
        #expect(adapter.layers[0].a[0] == 123)
    }
}

/// The notebook spelling of target patterns, shared by inject_lora and compile_hybrid.
@Suite struct TargetSpellingTests {
    @Test func slashesMakeAWholeNameRegex() throws {
        let t = LoRATargets(parsing: #" /model\.layers\.0\..*_proj/ "#)
        #expect(t == .pattern(#"model\.layers\.0\..*_proj"#))
        #expect(t.description == #"/model\.layers\.0\..*_proj/"#)
        let model = try #require(try PEFTAdapterTests.model("tiny-llama") as? TrainableModel)
        let chosen = try LoRAConfig(targets: t).resolveTargets(in: model.linearModules)
        #expect(chosen.count == 7 && chosen.allSatisfy { $0.layer == 0 })
        #expect(LoRATargets(parsing: "/") == .modules(["/"]))
        // The same error, named for the step's key.
        do {
            _ = try LoRAConfig(targets: LoRATargets(parsing: "/nothing.*/")).resolveTargets(in: model.linearModules)
            Issue.record("a pattern that matches nothing was accepted")
        } catch {
            #expect(error.describeUnknownTarget(as: "include pattern").hasPrefix("include pattern '/nothing.*/' matches no linear layer of the model"))
            #expect(error.description.hasPrefix("LoRA target module '/nothing.*/'"))
        }
    }
}
