import Engine
import Foundation
import Testing

/// Whole blocks and whole models: the layers compose (finite differences in Double through
/// a full LLaMA block and a full GPT-2 block, then through two-layer models from the
/// cross-entropy loss with ignored targets), the linear-layer hooks carry a LoRA adapter's
/// gradients, and the training forward equals the inference forward.
extension GradientCheckTests {
    static let llamaConfig = LlamaConfig(vocabSize: V, hiddenSize: 16, intermediateSize: 12, numHiddenLayers: 2,
                                         numAttentionHeads: 4, numKeyValueHeads: 2, rmsNormEps: 1e-5, ropeTheta: 100,
                                         maxPositionEmbeddings: 16, tieWordEmbeddings: true)
    static let gpt2Config = GPT2Config(vocabSize: V, nPositions: 8, nEmbd: C, nLayer: 2, nHead: 4)
    static let tokens = [1, 7, 3, 10, 0, 7]                 // (B, T) = (2, 3)
    static let targets = [7, 3, -100, 0, -100, 2]           // shifted labels, two ignored

    /// Weights large enough that every nonlinearity is away from its linear regime.
    static func randomized(_ a: [Double], std: Double, mean: Double = 0, rng: inout Random) -> [Double] {
        rng.normal(a.count, std: std).map { $0 + mean }
    }

    static func llamaWeights(style: RoPEStyle, tied: Bool, seed: UInt64) -> LlamaTrainingWeights<Double> {
        var config = llamaConfig
        config.tieWordEmbeddings = tied
        var w = LlamaModel.random(config: config, seed: seed, ropeStyle: style).trainingWeights(as: Double.self)
        var rng = Random(seed &+ 100)
        w.embedding = randomized(w.embedding, std: 1, rng: &rng)
        w.finalNorm = randomized(w.finalNorm, std: 0.2, mean: 1, rng: &rng)
        if let head = w.lmHead { w.lmHead = randomized(head, std: 0.3, rng: &rng) }
        for l in w.blocks.indices {
            var b = w.blocks[l]
            (b.attentionNorm, b.mlpNorm) = (randomized(b.attentionNorm, std: 0.2, mean: 1, rng: &rng), randomized(b.mlpNorm, std: 0.2, mean: 1, rng: &rng))
            (b.wq, b.wk) = (randomized(b.wq, std: 0.5, rng: &rng), randomized(b.wk, std: 0.5, rng: &rng))
            (b.wv, b.wo) = (randomized(b.wv, std: 0.3, rng: &rng), randomized(b.wo, std: 0.3, rng: &rng))
            (b.gate, b.up, b.down) = (randomized(b.gate, std: 0.4, rng: &rng), randomized(b.up, std: 0.3, rng: &rng), randomized(b.down, std: 0.3, rng: &rng))
            w.blocks[l] = b
        }
        return w
    }

    static func gpt2Weights(seed: UInt64) -> GPT2TrainingWeights<Double> {
        var w = GPT2Model.random(config: gpt2Config, seed: seed).trainingWeights(as: Double.self)
        var rng = Random(seed &+ 100)
        w.tokenEmbedding = randomized(w.tokenEmbedding, std: 1, rng: &rng)
        w.positionEmbedding = randomized(w.positionEmbedding, std: 0.5, rng: &rng)
        (w.finalNormWeight, w.finalNormBias) = (randomized(w.finalNormWeight, std: 0.2, mean: 1, rng: &rng), randomized(w.finalNormBias, std: 0.2, rng: &rng))
        for l in w.blocks.indices {
            var b = w.blocks[l]
            (b.ln1Weight, b.ln1Bias) = (randomized(b.ln1Weight, std: 0.2, mean: 1, rng: &rng), randomized(b.ln1Bias, std: 0.2, rng: &rng))
            (b.ln2Weight, b.ln2Bias) = (randomized(b.ln2Weight, std: 0.2, mean: 1, rng: &rng), randomized(b.ln2Bias, std: 0.2, rng: &rng))
            (b.attnWeight, b.attnBias) = (randomized(b.attnWeight, std: 0.5, rng: &rng), randomized(b.attnBias, std: 0.2, rng: &rng))
            (b.attnProjWeight, b.fcWeight) = (randomized(b.attnProjWeight, std: 0.3, rng: &rng), randomized(b.fcWeight, std: 0.4, rng: &rng))
            (b.fcBias, b.fcProjWeight) = (randomized(b.fcBias, std: 0.3, rng: &rng), randomized(b.fcProjWeight, std: 0.2, rng: &rng))
            w.blocks[l] = b
        }
        return w
    }

    // MARK: blocks

    @Test(arguments: [RoPEStyle.halves, .interleaved])
    func llamaBlock(style: RoPEStyle) {
        let w = Self.llamaWeights(style: style, tied: true, seed: 20)
        var rng = Random(21)
        let C = Self.llamaConfig.hiddenSize, x = rng.normal(Self.N * C), r = rng.normal(Self.N * C)
        let rope = RotaryTables<Double>(headDim: Self.llamaConfig.headDim, base: Self.llamaConfig.ropeTheta, positions: Self.T)
        var y = x
        let saved = w.blockForward(0, &y, batchSize: Self.B, rope: rope)
        var dx = r
        _ = w.blockBackward(0, &dx, saved: saved)
        Self.check("LLaMA block (\(style) RoPE, GQA 4/2) dx", analytic: dx, numeric: Self.numericGradient(x) { x in
            var y = x
            _ = w.blockForward(0, &y, batchSize: Self.B, rope: rope)
            return Self.dot(r, y)
        })
    }

    @Test func gpt2Block() {
        let w = Self.gpt2Weights(seed: 22)
        var rng = Random(23)
        let x = rng.normal(Self.N * Self.C), r = rng.normal(Self.N * Self.C)
        var y = x
        let saved = w.blockForward(0, &y, batchSize: Self.B)
        var dx = r
        _ = w.blockBackward(0, &dx, saved: saved)
        Self.check("GPT-2 block dx", analytic: dx, numeric: Self.numericGradient(x) { x in
            var y = x
            _ = w.blockForward(0, &y, batchSize: Self.B)
            return Self.dot(r, y)
        })
    }

    // MARK: whole models, from the loss

    /// A model in Double seen from the loss: L(hooks) and its gradients.
    struct LossModel {
        var layers: [LinearLayer]
        var loss: (LinearHooks<Double>) -> Double
        var gradients: (LinearHooks<Double>) -> TrainingGradients<Double>
    }

    static func crossEntropy(_ logits: [Double], _ dLogits: inout [Double]) -> Double {
        Layers.crossEntropy(logits: logits, targets: targets, dLogits: &dLogits, rows: N, vocabularySize: V)
    }

    static func lossModel(_ w: LlamaTrainingWeights<Double>) -> LossModel {
        LossModel(layers: w.linearLayers, loss: { hooks in
            var d = zeros(N * V)
            return crossEntropy(w.forward(tokens: tokens, batchSize: B, hooks: hooks).logits, &d)
        }, gradients: { hooks in
            let a = w.forward(tokens: tokens, batchSize: B, hooks: hooks)
            var d = zeros(N * V)
            _ = crossEntropy(a.logits, &d)
            return w.backward(d, activations: a, hooks: hooks, embeddingGradient: true)
        })
    }

    static func lossModel(_ w: GPT2TrainingWeights<Double>) -> LossModel {
        LossModel(layers: w.linearLayers, loss: { hooks in
            var d = zeros(N * V)
            return crossEntropy(w.forward(tokens: tokens, batchSize: B, hooks: hooks).logits, &d)
        }, gradients: { hooks in
            let a = w.forward(tokens: tokens, batchSize: B, hooks: hooks)
            var d = zeros(N * V)
            _ = crossEntropy(a.logits, &d)
            return w.backward(d, activations: a, hooks: hooks, embeddingGradient: true)
        })
    }

    /// dL/dy of every linear layer against differences of L with y ← y ± h·d (d random),
    /// the perturbation applied by a forward hook; returns the worst relative error.
    static func checkLinearOutputs(_ name: String, _ model: LossModel, seed: UInt64) {
        let grads = model.gradients(LinearHooks())
        var rng = Random(seed), worst = 0.0
        #expect(Set(grads.linear.keys) == Set(model.layers.map(\.name)))
        for layer in model.layers {
            guard let g = grads.linear[layer.name] else { continue }
            #expect(g.output.count == N * layer.outFeatures && g.input.count == N * layer.inFeatures)
            let d = rng.normal(g.output.count)
            func loss(_ eps: Double) -> Double {
                var hooks = LinearHooks<Double>()
                hooks.register(layer.name, forward: { _, _, y in for i in y.indices { y[i] += eps * d[i] } })
                return model.loss(hooks)
            }
            let h = 1e-6, numeric = (loss(h) - loss(-h)) / (2 * h), analytic = dot(d, g.output)
            let error = abs(analytic - numeric) / max(abs(numeric), 1e-12)
            #expect(error < tolerance, "\(name) \(layer.name): dY·d analytic \(analytic) vs numeric \(numeric)")
            worst = max(worst, error)
        }
        print("[gradcheck] \(name): dL/dy of all \(model.layers.count) linear layers: max relative error \(worst)")
    }

    @Test(arguments: [(RoPEStyle.halves, true), (.interleaved, false)])
    func llamaModel(style: RoPEStyle, tied: Bool) {
        let w = Self.llamaWeights(style: style, tied: tied, seed: 30)
        let name = "LLaMA (\(style), \(tied ? "tied" : "untied"), GQA 4/2, ignore_index)"
        Self.checkLinearOutputs(name, Self.lossModel(w), seed: 31)
        let grads = Self.lossModel(w).gradients(LinearHooks())
        if !tied {  // a tied E also feeds the head, whose share the backward leaves out by design
            Self.check("\(name) dE", analytic: grads.tokenEmbedding!, numeric: Self.numericGradient(w.embedding) { e in
                var w = w
                w.embedding = e
                return Self.lossModel(w).loss(LinearHooks())
            })
        }
    }

    @Test func gpt2Model() {
        let w = Self.gpt2Weights(seed: 32)
        Self.checkLinearOutputs("GPT-2 (ignore_index)", Self.lossModel(w), seed: 33)
        let grads = Self.lossModel(w).gradients(LinearHooks())
        Self.check("GPT-2 dP (wpe)", analytic: grads.positionEmbedding!, numeric: Self.numericGradient(w.positionEmbedding) { p in
            var w = w
            w.positionEmbedding = p
            return Self.lossModel(w).loss(LinearHooks())
        })
    }
}
