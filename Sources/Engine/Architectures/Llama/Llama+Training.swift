// LLaMA's training pass over a batch: forward saving activations, backward to the inputs
// and outputs of every linear layer (what LoRA needs). Base weights are frozen: no dW.

/// LLaMA's weights as the training pass reads them, in precision `Real`: from
/// ``LlamaModel/trainingWeights(as:)``, sharing the model's arrays when `Real` is `Float`.
public struct LlamaTrainingWeights<Real: TrainingScalar> {
    /// One block. Linear weights are (out, in), as nn.Linear stores them.
    public struct Block {
        public var attentionNorm: [Real]  // (C)
        public var wq: [Real]             // (H·hd, C)
        public var wk: [Real]             // (KV·hd, C)
        public var wv: [Real]             // (KV·hd, C)
        public var wo: [Real]             // (C, H·hd)
        public var mlpNorm: [Real]        // (C)
        public var gate: [Real]           // (F, C)
        public var up: [Real]             // (F, C)
        public var down: [Real]           // (C, F)
        /// Biases where the config has them (see ``LlamaModel/Block``).
        public var bq: [Real]? = nil, bk: [Real]? = nil, bv: [Real]? = nil, bo: [Real]? = nil
        public var bGate: [Real]? = nil, bUp: [Real]? = nil, bDown: [Real]? = nil
    }

    public let config: LlamaConfig
    public let ropeStyle: RoPEStyle
    public var embedding: [Real]   // (V, C)
    public var blocks: [Block]
    public var finalNorm: [Real]   // (C)
    /// nil when tied to `embedding`.
    public var lmHead: [Real]?     // (V, C)
}

/// What the backward of one LLaMA block needs from its forward, for N = B·T rows.
public struct LlamaBlockActivations<Real: TrainingScalar> {
    public let batchSize: Int
    public let rope: RotaryTables<Real>
    var input: [Real]   // (N, C) residual stream entering the block
    var rstd1: [Real]   // (N)
    var h1: [Real]      // (N, C) attention-norm output: input of q, k, v
    var q: [Real]       // (N, H·hd) after RoPE
    var k: [Real]       // (N, KV·hd) after RoPE
    var v: [Real]       // (N, KV·hd)
    var probs: [Real]   // (B, H, T, T)
    var att: [Real]     // (N, H·hd) input of o_proj
    var mid: [Real]     // (N, C) residual stream after attention
    var rstd2: [Real]   // (N)
    var h2: [Real]      // (N, C) MLP-norm output: input of gate, up
    var gate: [Real]    // (N, F)
    var up: [Real]      // (N, F)
    var act: [Real]     // (N, F) silu(gate)·up: input of down
}

/// A LLaMA forward over a batch, kept for its backward.
public struct LlamaActivations<Real: TrainingScalar> {
    public let tokens: [Int]        // (B·T)
    public let batchSize: Int
    public let sequenceLength: Int
    public internal(set) var logits: [Real]  // (B·T, V), or (R, V) for the R rows of `headRows`
    /// The rows the head computed logits for (nil: all), in order.
    public let headRows: [Int]?
    var blocks: [LlamaBlockActivations<Real>]
    /// With gradient checkpointing (``LinearHooks/gradientCheckpointing``), instead of
    /// `blocks`: each block's input and the hooks' random state when it started.
    var checkpoints: [(input: [Real], random: SeededGenerator?)] = []
    var rope: RotaryTables<Real>? = nil
    var final: [Real]               // (N, C) residual stream after the last block
    var finalRstd: [Real]           // (N)
}

extension LlamaModel {
    /// The weights in precision `Real` for ``LlamaTrainingWeights``: no copy for `Float`.
    public func trainingWeights<Real: TrainingScalar>(as: Real.Type) -> LlamaTrainingWeights<Real> {
        func c(_ a: [Float]) -> [Real] { a.converted(to: Real.self) }
        return LlamaTrainingWeights(
            config: config, ropeStyle: ropeStyle, embedding: c(embedding),
            blocks: blocks.map {
                .init(attentionNorm: c($0.attentionNorm), wq: c($0.wq), wk: c($0.wk), wv: c($0.wv), wo: c($0.wo),
                      mlpNorm: c($0.mlpNorm), gate: c($0.gate), up: c($0.up), down: c($0.down),
                      bq: $0.bq.map(c), bk: $0.bk.map(c), bv: $0.bv.map(c), bo: $0.bo.map(c),
                      bGate: $0.bGate.map(c), bUp: $0.bUp.map(c), bDown: $0.bDown.map(c))
            },
            finalNorm: c(finalNorm), lmHead: lmHead.map(c))
    }

    /// Every linear layer, in forward order (q, k, v, o, gate, up, down per block).
    public var linearLayers: [LinearLayer] { trainingWeights(as: Float.self).linearLayers }

    /// ``LlamaTrainingWeights/forward(tokens:batchSize:hooks:)`` on this model's Float weights.
    public func forwardForTraining(tokens: [Int], batchSize: Int, hooks: LinearHooks<Float> = .init(), headRows: [Int]? = nil) -> LlamaActivations<Float> {
        trainingWeights(as: Float.self).forward(tokens: tokens, batchSize: batchSize, hooks: hooks, headRows: headRows)
    }

    /// ``LlamaTrainingWeights/backward(_:activations:hooks:keepLinearGradients:embeddingGradient:)`` on this model's Float weights.
    public func backward(_ dLogits: [Float], activations: LlamaActivations<Float>, hooks: LinearHooks<Float> = .init(),
                         keepLinearGradients: Bool = true, embeddingGradient: Bool = false) -> TrainingGradients<Float> {
        trainingWeights(as: Float.self).backward(dLogits, activations: activations, hooks: hooks,
                                                 keepLinearGradients: keepLinearGradients, embeddingGradient: embeddingGradient)
    }
}

extension LlamaTrainingWeights {
    var C: Int { config.hiddenSize }
    var F: Int { config.intermediateSize }
    var H: Int { config.numAttentionHeads }
    var KV: Int { config.numKeyValueHeads }
    var hd: Int { config.headDim }

    /// The linear layers of block `l`, named as Hugging Face names the modules.
    public func linearLayers(block l: Int) -> (q: LinearLayer, k: LinearLayer, v: LinearLayer, o: LinearLayer,
                                               gate: LinearLayer, up: LinearLayer, down: LinearLayer) {
        let p = "model.layers.\(l)."
        return (LinearLayer(name: p + "self_attn.q_proj", inFeatures: C, outFeatures: H * hd),
                LinearLayer(name: p + "self_attn.k_proj", inFeatures: C, outFeatures: KV * hd),
                LinearLayer(name: p + "self_attn.v_proj", inFeatures: C, outFeatures: KV * hd),
                LinearLayer(name: p + "self_attn.o_proj", inFeatures: H * hd, outFeatures: C),
                LinearLayer(name: p + "mlp.gate_proj", inFeatures: C, outFeatures: F),
                LinearLayer(name: p + "mlp.up_proj", inFeatures: C, outFeatures: F),
                LinearLayer(name: p + "mlp.down_proj", inFeatures: F, outFeatures: C))
    }

    /// Every linear layer, in forward order.
    public var linearLayers: [LinearLayer] {
        blocks.indices.flatMap { l in
            let s = linearLayers(block: l)
            return [s.q, s.k, s.v, s.o, s.gate, s.up, s.down]
        }
    }

    /// Logits (B·T, V) for B sequences of T tokens (`tokens` is (B, T) flattened), with
    /// positions 0..<T in each sequence, keeping what the backward needs. Equals
    /// ``LlamaModel/forward(_:cache:allPositions:)`` on each sequence alone (all positions).
    /// Pad sequences on the right: attention is causal, so padding never reaches real tokens.
    public func forward(tokens: [Int], batchSize B: Int, hooks: LinearHooks<Real> = .init(), headRows: [Int]? = nil) -> LlamaActivations<Real> {
        let N = tokens.count, V = config.vocabSize
        precondition(B > 0 && N > 0 && N % B == 0, "\(N) tokens do not make \(B) sequences of equal length")
        for t in tokens { precondition(t >= 0 && t < V, "token \(t) outside vocabulary 0..<\(V)") }
        let T = N / B
        let rope = RotaryTables<Real>(inverseFrequencies: config.ropeInverseFrequencies(sequenceLength: T), positions: T)
        var x = [Real](repeating: 0, count: N * C)  // (N, C) residual stream
        Layers.embeddingForward(tokens: tokens, table: embedding, positions: nil, sequenceLength: T, &x, width: C)
        var saved: [LlamaBlockActivations<Real>] = []
        var checkpoints: [(input: [Real], random: SeededGenerator?)] = []
        for l in blocks.indices {
            if hooks.gradientCheckpointing {
                checkpoints.append((x, hooks.randomState?.save()))
                _ = blockForward(l, &x, batchSize: B, rope: rope, hooks: hooks)
            } else {
                saved.append(blockForward(l, &x, batchSize: B, rope: rope, hooks: hooks))
            }
        }
        var rstd = [Real](repeating: 0, count: N), normed = [Real](repeating: 0, count: N * C)
        Layers.rmsNormForward(x, weight: finalNorm, &normed, rstd: &rstd, rows: N, width: C, eps: Real(config.rmsNormEps))
        let logits = Layers.headLogits(normed, embedding: lmHead ?? embedding, rows: N, width: C, vocabularySize: V, only: headRows)
        return LlamaActivations(tokens: tokens, batchSize: B, sequenceLength: T, logits: logits, headRows: headRows, blocks: saved,
                                checkpoints: checkpoints, rope: rope, final: x, finalRstd: rstd)
    }

    /// Gradients from dL/dlogits (B·T, V): dL/d(input) and dL/d(output) of every linear
    /// layer (kept when `keepLinearGradients`; hooks see them either way), dL/d(embedding
    /// output), and dL/dE through the lookup when `embeddingGradient` (never the tied head's share).
    public func backward(_ dLogits: [Real], activations a: LlamaActivations<Real>, hooks: LinearHooks<Real> = .init(),
                         keepLinearGradients: Bool = true, embeddingGradient: Bool = false) -> TrainingGradients<Real> {
        let N = a.tokens.count, V = config.vocabSize
        let dNormed = Layers.headBackward(dLogits, embedding: lmHead ?? embedding, rows: N, width: C, vocabularySize: V, only: a.headRows)
        var dx = [Real](repeating: 0, count: N * C)  // (N, C) dL/d(residual stream)
        Layers.rmsNormBackward(dNormed, x: a.final, weight: finalNorm, rstd: a.finalRstd, dX: &dx, rows: N, width: C)
        var result = TrainingGradients<Real>()
        let after = hooks.randomState?.save()
        for l in blocks.indices.reversed() {
            let saved: LlamaBlockActivations<Real>
            if a.blocks.isEmpty {  // checkpointed: recompute this block from its input, with the same random masks
                var x = a.checkpoints[l].input
                if let random = a.checkpoints[l].random { hooks.randomState?.restore(random) }
                saved = blockForward(l, &x, batchSize: a.batchSize, rope: a.rope!, hooks: hooks)
            } else {
                saved = a.blocks[l]
            }
            let kept = blockBackward(l, &dx, saved: saved, hooks: hooks, keepLinearGradients: keepLinearGradients)
            result.linear.merge(kept) { $1 }
        }
        if let after { hooks.randomState?.restore(after) }
        if embeddingGradient {
            var dE = [Real](repeating: 0, count: V * C)
            Layers.embeddingBackward(tokens: a.tokens, dx, dTable: &dE, dPositions: nil, sequenceLength: a.sequenceLength, width: C)
            result.tokenEmbedding = dE
        }
        result.embeddingOutput = dx
        return result
    }

    /// Block `l` on the residual stream x (N, C), in place:
    ///
    ///     x ← x + o_proj(attention(rope(q_proj(h)), rope(k_proj(h)), v_proj(h))),  h = rmsNorm(x)
    ///     x ← x + down_proj(silu(gate_proj(h)) · up_proj(h)),                       h = rmsNorm(x)
    public func blockForward(_ l: Int, _ x: inout [Real], batchSize B: Int, rope: RotaryTables<Real>,
                             hooks: LinearHooks<Real> = .init()) -> LlamaBlockActivations<Real> {
        let w = blocks[l], lin = linearLayers(block: l), N = x.count / C, T = N / B, eps = Real(config.rmsNormEps)
        precondition(x.count == B * T * C, "x has \(x.count) values, not (\(B)·T, \(C))")
        func zeros(_ n: Int) -> [Real] { [Real](repeating: 0, count: n) }
        var s = LlamaBlockActivations<Real>(
            batchSize: B, rope: rope, input: x, rstd1: zeros(N), h1: zeros(N * C), q: zeros(N * H * hd), k: zeros(N * KV * hd),
            v: zeros(N * KV * hd), probs: zeros(B * H * T * T), att: zeros(N * H * hd), mid: [], rstd2: zeros(N),
            h2: zeros(N * C), gate: zeros(N * F), up: zeros(N * F), act: zeros(N * F))
        Layers.rmsNormForward(x, weight: w.attentionNorm, &s.h1, rstd: &s.rstd1, rows: N, width: C, eps: eps)
        hooks.linearForward(lin.q, s.h1, weight: w.wq, bias: w.bq, layout: .outIn, &s.q)
        hooks.linearForward(lin.k, s.h1, weight: w.wk, bias: w.bk, layout: .outIn, &s.k)
        hooks.linearForward(lin.v, s.h1, weight: w.wv, bias: w.bv, layout: .outIn, &s.v)
        Layers.ropeForward(&s.q, tables: rope, style: ropeStyle, rows: N, sequenceLength: T, heads: H)
        Layers.ropeForward(&s.k, tables: rope, style: ropeStyle, rows: N, sequenceLength: T, heads: KV)
        Layers.attentionForward(q: s.q, k: s.k, v: s.v, qStride: H * hd, kvStride: KV * hd, &s.att, probs: &s.probs,
                                batchSize: B, sequenceLength: T, heads: H, kvHeads: KV, headDim: hd, window: config.slidingWindow)
        var proj = zeros(N * C)
        hooks.linearForward(lin.o, s.att, weight: w.wo, bias: w.bo, layout: .outIn, &proj)
        Layers.add(&x, proj, count: N * C)
        s.mid = x
        Layers.rmsNormForward(x, weight: w.mlpNorm, &s.h2, rstd: &s.rstd2, rows: N, width: C, eps: eps)
        hooks.linearForward(lin.gate, s.h2, weight: w.gate, bias: w.bGate, layout: .outIn, &s.gate)
        hooks.linearForward(lin.up, s.h2, weight: w.up, bias: w.bUp, layout: .outIn, &s.up)
        Layers.swiGLUForward(gate: s.gate, up: s.up, &s.act, count: N * F)
        hooks.linearForward(lin.down, s.act, weight: w.down, bias: w.bDown, layout: .outIn, &proj)
        Layers.add(&x, proj, count: N * C)
        return s
    }

    /// Backward of block `l`: dx (N, C) holds dL/d(block output) on entry and dL/d(block
    /// input) on return. Returns the block's linear gradients when `keepLinearGradients`.
    public func blockBackward(_ l: Int, _ dx: inout [Real], saved s: LlamaBlockActivations<Real>,
                              hooks: LinearHooks<Real> = .init(), keepLinearGradients: Bool = true) -> [String: LinearGradient<Real>] {
        let w = blocks[l], lin = linearLayers(block: l), N = dx.count / C, B = s.batchSize, T = N / B
        func zeros(_ n: Int) -> [Real] { [Real](repeating: 0, count: n) }
        var kept: [String: LinearGradient<Real>]? = keepLinearGradients ? [:] : nil
        // MLP: out = mid + down(silu(gate)·up)
        var dAct = zeros(N * F), dGate = zeros(N * F), dUp = zeros(N * F), dH = zeros(N * C)
        hooks.linearBackward(lin.down, x: s.act, dY: dx, weight: w.down, layout: .outIn, dInput: &dAct, kept: &kept)
        Layers.swiGLUBackward(dAct, gate: s.gate, up: s.up, dGate: &dGate, dUp: &dUp, count: N * F)
        hooks.linearBackward(lin.gate, x: s.h2, dY: dGate, weight: w.gate, layout: .outIn, dInput: &dH, kept: &kept)
        hooks.linearBackward(lin.up, x: s.h2, dY: dUp, weight: w.up, layout: .outIn, dInput: &dH, kept: &kept)
        Layers.rmsNormBackward(dH, x: s.mid, weight: w.mlpNorm, rstd: s.rstd2, dX: &dx, rows: N, width: C)
        // Attention: mid = input + o(attention(...))
        var dAtt = zeros(N * H * hd), dq = zeros(N * H * hd), dk = zeros(N * KV * hd), dv = zeros(N * KV * hd)
        hooks.linearBackward(lin.o, x: s.att, dY: dx, weight: w.wo, layout: .outIn, dInput: &dAtt, kept: &kept)
        Layers.attentionBackward(dAtt, q: s.q, k: s.k, v: s.v, probs: s.probs, qStride: H * hd, kvStride: KV * hd,
                                 dQ: &dq, dK: &dk, dV: &dv, batchSize: B, sequenceLength: T, heads: H, kvHeads: KV, headDim: hd)
        Layers.ropeBackward(&dq, tables: s.rope, style: ropeStyle, rows: N, sequenceLength: T, heads: H)
        Layers.ropeBackward(&dk, tables: s.rope, style: ropeStyle, rows: N, sequenceLength: T, heads: KV)
        dH = zeros(N * C)
        hooks.linearBackward(lin.q, x: s.h1, dY: dq, weight: w.wq, layout: .outIn, dInput: &dH, kept: &kept)
        hooks.linearBackward(lin.k, x: s.h1, dY: dk, weight: w.wk, layout: .outIn, dInput: &dH, kept: &kept)
        hooks.linearBackward(lin.v, x: s.h1, dY: dv, weight: w.wv, layout: .outIn, dInput: &dH, kept: &kept)
        Layers.rmsNormBackward(dH, x: s.input, weight: w.attentionNorm, rstd: s.rstd1, dX: &dx, rows: N, width: C)
        return kept ?? [:]
    }
}
