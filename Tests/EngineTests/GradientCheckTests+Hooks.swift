import Engine
import Foundation
import Testing

/// The training pass from the outside: a LoRA adapter carried entirely by linear-layer
/// hooks gets the right gradients, and the training forward equals the inference forward.
extension GradientCheckTests {
    /// A LoRA adapter in the test, y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ, A (r, in), B (out, r), built from
    /// the `Layers` linear pair (which also exercises their dW paths).
    final class TestLoRA {
        let layer: LinearLayer
        let rank = 2, scale = 0.5
        var a: [Double], b: [Double]          // (r, in), (out, r)
        var dA: [Double], dB: [Double]
        var forwardCalls = 0, backwardCalls = 0

        init(_ layer: LinearLayer, rng: inout Random) {
            self.layer = layer
            a = rng.normal(rank * layer.inFeatures, std: 0.5)
            b = rng.normal(layer.outFeatures * rank, std: 0.5)  // nonzero, so dA is too
            dA = GradientCheckTests.zeros(a.count)
            dB = GradientCheckTests.zeros(b.count)
        }

        func install(_ hooks: inout LinearHooks<Double>) {
            let (r, inF, outF, s) = (rank, layer.inFeatures, layer.outFeatures, scale)
            hooks.register(layer.name, forward: { [self] _, x, y in
                forwardCalls += 1
                let n = x.count / inF
                var u = GradientCheckTests.zeros(n * r), z = GradientCheckTests.zeros(n * outF)
                Layers.linearForward(x.baseAddress!, weight: a, bias: nil, &u, rows: n, inFeatures: inF, outFeatures: r)
                Layers.linearForward(u, weight: b, bias: nil, &z, rows: n, inFeatures: r, outFeatures: outF)
                for i in y.indices { y[i] += s * z[i] }
            }, backward: { [self] _, x, dY, dX in
                backwardCalls += 1
                let n = x.count / inF
                var u = GradientCheckTests.zeros(n * r), dU = GradientCheckTests.zeros(n * r)
                Layers.linearForward(x.baseAddress!, weight: a, bias: nil, &u, rows: n, inFeatures: inF, outFeatures: r)
                let dZ = dY.map { s * $0 }
                Layers.linearBackward(dZ, x: u, weight: b, dX: &dU, dWeight: &dB, rows: n, inFeatures: r, outFeatures: outF)
                Layers.linearBackward(dU, x: x.baseAddress!, weight: a, dX: dX.baseAddress!, dWeight: &dA, rows: n,
                                      inFeatures: inF, outFeatures: r)
            })
        }
    }

    static func hooks(_ adapters: [TestLoRA]) -> LinearHooks<Double> {
        var hooks = LinearHooks<Double>()
        for adapter in adapters { adapter.install(&hooks) }
        return hooks
    }

    /// dA and dB from the hooks against differences of the loss, for adapters on several layers.
    static func checkLoRA(_ name: String, _ model: LossModel, on names: [String]) {
        var rng = Random(40)
        let adapters = names.map { n in TestLoRA(model.layers.first { $0.name == n }!, rng: &rng) }
        let grads = model.gradients(hooks(adapters))
        for adapter in adapters {
            #expect(adapter.forwardCalls == 1 && adapter.backwardCalls == 1, "\(adapter.layer.name): hooks run once per pass")
        }
        for adapter in adapters {
            let (dA, dB) = (adapter.dA, adapter.dB)
            check("\(name) LoRA dA \(adapter.layer.name)", analytic: dA, numeric: numericGradient(adapter.a) { a in
                let saved = adapter.a
                adapter.a = a
                defer { adapter.a = saved }
                return model.loss(hooks(adapters))
            })
            check("\(name) LoRA dB \(adapter.layer.name)", analytic: dB, numeric: numericGradient(adapter.b) { b in
                let saved = adapter.b
                adapter.b = b
                defer { adapter.b = saved }
                return model.loss(hooks(adapters))
            })
        }
        #expect(grads.linear.count == model.layers.count)
    }

    @Test func loraHooksOnLlama() {
        let model = Self.lossModel(Self.llamaWeights(style: .halves, tied: true, seed: 41))
        Self.checkLoRA("LLaMA", model, on: ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj",
                                            "model.layers.1.self_attn.v_proj"])
    }

    @Test func loraHooksOnGPT2() {
        let model = Self.lossModel(Self.gpt2Weights(seed: 42))
        Self.checkLoRA("GPT-2", model, on: ["transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_proj"])
    }

    // MARK: training forward == inference forward; Float == Double

    static func maxAbsDifference(_ a: [Float], _ b: [Float]) -> Float {
        precondition(a.count == b.count, "\(a.count) vs \(b.count)")
        return zip(a, b).map { abs($0 - $1) }.max() ?? 0
    }

    /// The batch forward's logits against `LanguageModel.forward` on each sequence alone.
    static func checkForwardMatchesInference(_ name: String, model: LanguageModel, training logits: [Float], batch: [[Int]]) {
        let inference = batch.flatMap { model.forward($0, cache: model.makeCache(capacity: $0.count), allPositions: true) }
        let difference = maxAbsDifference(logits, inference), scale = inference.map(abs).max()!
        print("[forward] \(name): training vs inference logits: max |Δ| \(difference) (|logit|max \(scale))")
        #expect(difference < 1e-5, "\(name): training forward differs from inference by \(difference)")
    }

    @Test(arguments: [(RoPEStyle.halves, true), (.interleaved, false)])
    func llamaForwardMatchesInference(style: RoPEStyle, tied: Bool) {
        let config = LlamaConfig(vocabSize: 50, hiddenSize: 32, intermediateSize: 48, numHiddenLayers: 2, numAttentionHeads: 4,
                                 numKeyValueHeads: 2, rmsNormEps: 1e-5, ropeTheta: 10000, maxPositionEmbeddings: 64,
                                 tieWordEmbeddings: tied)
        let model = LlamaModel.random(config: config, seed: 50, ropeStyle: style)
        let batch = [[3, 17, 9, 41, 0], [22, 5, 11, 49, 2]]
        let pass = model.forwardForTraining(tokens: batch.flatMap { $0 }, batchSize: 2)
        Self.checkForwardMatchesInference("LLaMA \(style) \(tied ? "tied" : "untied")", model: model, training: pass.logits, batch: batch)

        // The Float pass (what trains) against the Double pass (what the checks above prove).
        let targets = [17, 9, 41, 0, -100, 5, 11, -100, 2, -100]
        var dLogits = [Float](repeating: 0, count: pass.logits.count)
        _ = Layers.crossEntropy(logits: pass.logits, targets: targets, dLogits: &dLogits, rows: 10, vocabularySize: 50)
        let grads = model.backward(dLogits, activations: pass)
        let w = model.trainingWeights(as: Double.self)
        let passD = w.forward(tokens: batch.flatMap { $0 }, batchSize: 2)
        var dLogitsD = [Double](repeating: 0, count: passD.logits.count)
        _ = Layers.crossEntropy(logits: passD.logits, targets: targets, dLogits: &dLogitsD, rows: 10, vocabularySize: 50)
        Self.checkFloatAgainstDouble("LLaMA \(style)", grads, w.backward(dLogitsD, activations: passD))
    }

    @Test func gpt2ForwardMatchesInference() {
        let model = GPT2Model.random(config: GPT2Config(vocabSize: 60, nPositions: 32, nEmbd: 32, nLayer: 2, nHead: 4), seed: 51)
        let batch = [[3, 17, 9, 41, 0, 59], [22, 5, 11, 49, 2, 2]]
        let pass = model.forwardForTraining(tokens: batch.flatMap { $0 }, batchSize: 2)
        Self.checkForwardMatchesInference("GPT-2", model: model, training: pass.logits, batch: batch)

        let targets = [17, 9, 41, 0, 59, -100, 5, 11, 49, 2, -100, -100]
        var dLogits = [Float](repeating: 0, count: pass.logits.count)
        _ = Layers.crossEntropy(logits: pass.logits, targets: targets, dLogits: &dLogits, rows: 12, vocabularySize: 60)
        let grads = model.backward(dLogits, activations: pass, embeddingGradient: true)
        let w = model.trainingWeights(as: Double.self)
        let passD = w.forward(tokens: batch.flatMap { $0 }, batchSize: 2)
        var dLogitsD = [Double](repeating: 0, count: passD.logits.count)
        _ = Layers.crossEntropy(logits: passD.logits, targets: targets, dLogits: &dLogitsD, rows: 12, vocabularySize: 60)
        let gradsD = w.backward(dLogitsD, activations: passD, embeddingGradient: true)
        Self.checkFloatAgainstDouble("GPT-2", grads, gradsD)
        #expect(Self.relative(grads.positionEmbedding!, gradsD.positionEmbedding!) < 1e-3)
        #expect(Self.relative(grads.tokenEmbedding!, gradsD.tokenEmbedding!) < 1e-3)
    }

    static func relative(_ a: [Float], _ b: [Double]) -> Double {
        let scale = max(b.map(abs).max() ?? 0, 1e-30)
        return zip(a, b).map { abs(Double($0) - $1) }.max()! / scale
    }

    static func checkFloatAgainstDouble(_ name: String, _ f: TrainingGradients<Float>, _ d: TrainingGradients<Double>) {
        #expect(Set(f.linear.keys) == Set(d.linear.keys) && !f.linear.isEmpty)
        var worst = relative(f.embeddingOutput, d.embeddingOutput)
        for (layer, g) in f.linear {
            worst = max(worst, relative(g.input, d.linear[layer]!.input), relative(g.output, d.linear[layer]!.output))
        }
        print("[float] \(name): Float32 training gradients vs Double: max relative error \(worst)")
        #expect(worst < 1e-3, "\(name): Float32 gradients differ from Double by \(worst)")
    }
}
