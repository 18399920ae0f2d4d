// GPT-2's training pass over a batch: forward saving activations, backward to the inputs
// and outputs of every linear (Conv1D) layer (what LoRA needs). Base weights are frozen: no dW.

/// GPT-2's weights as the training pass reads them, in precision `Real`: from
/// ``GPT2Model/trainingWeights(as:)``, sharing the model's arrays when `Real` is `Float`.
public struct GPT2TrainingWeights<Real: TrainingScalar> {
    /// One block. Conv1D weights are (in, out), as Hugging Face stores them.
    public struct Block {
        public var ln1Weight: [Real], ln1Bias: [Real]           // (C)
        public var attnWeight: [Real], attnBias: [Real]         // (C, 3C), (3C)
        public var attnProjWeight: [Real], attnProjBias: [Real] // (C, C), (C)
        public var ln2Weight: [Real], ln2Bias: [Real]           // (C)
        public var fcWeight: [Real], fcBias: [Real]             // (C, 4C), (4C)
        public var fcProjWeight: [Real], fcProjBias: [Real]     // (4C, C), (C)
    }

    public let config: GPT2Config
    public var tokenEmbedding: [Real]     // (V, C), also the tied lm_head
    public var positionEmbedding: [Real]  // (P, C)
    public var blocks: [Block]
    public var finalNormWeight: [Real], finalNormBias: [Real]  // (C)
}

/// What the backward of one GPT-2 block needs from its forward, for N = B·T rows.
public struct GPT2BlockActivations<Real: TrainingScalar> {
    public let batchSize: Int
    var input: [Real]   // (N, C) residual stream entering the block
    var mean1: [Real], rstd1: [Real]  // (N)
    var h1: [Real]      // (N, C) ln_1 output: input of c_attn
    var qkv: [Real]     // (N, 3C) c_attn output: q | k | v per row
    var probs: [Real]   // (B, H, T, T)
    var att: [Real]     // (N, C) input of attn.c_proj
    var mid: [Real]     // (N, C) residual stream after attention
    var mean2: [Real], rstd2: [Real]  // (N)
    var h2: [Real]      // (N, C) ln_2 output: input of c_fc
    var fc: [Real]      // (N, 4C) c_fc output, before GELU
    var fcAct: [Real]   // (N, 4C) GELU output: input of mlp.c_proj
}

/// A GPT-2 forward over a batch, kept for its backward.
public struct GPT2Activations<Real: TrainingScalar> {
    public let tokens: [Int]        // (B·T)
    public let batchSize: Int
    public let sequenceLength: Int
    public internal(set) var logits: [Real]  // (B·T, V), or (R, V) for the R rows of `headRows`
    /// The rows the head computed logits for (nil: all), in order.
    public let headRows: [Int]?
    var blocks: [GPT2BlockActivations<Real>]
    /// With gradient checkpointing, instead of `blocks`: each block's input and the hooks'
    /// random state when it started (see ``LlamaActivations``).
    var checkpoints: [(input: [Real], random: SeededGenerator?)] = []
    var final: [Real]               // (N, C) residual stream after the last block
    var finalMean: [Real], finalRstd: [Real]  // (N)
}

extension GPT2Model {
    /// The weights in precision `Real` for ``GPT2TrainingWeights``: no copy for `Float`.
    public func trainingWeights<Real: TrainingScalar>(as: Real.Type) -> GPT2TrainingWeights<Real> {
        func c(_ a: [Float]) -> [Real] { a.converted(to: Real.self) }
        return GPT2TrainingWeights(
            config: config, tokenEmbedding: c(tokenEmbedding), positionEmbedding: c(positionEmbedding),
            blocks: blocks.map {
                .init(ln1Weight: c($0.ln1Weight), ln1Bias: c($0.ln1Bias), attnWeight: c($0.attnWeight), attnBias: c($0.attnBias),
                      attnProjWeight: c($0.attnProjWeight), attnProjBias: c($0.attnProjBias), ln2Weight: c($0.ln2Weight),
                      ln2Bias: c($0.ln2Bias), fcWeight: c($0.fcWeight), fcBias: c($0.fcBias), fcProjWeight: c($0.fcProjWeight),
                      fcProjBias: c($0.fcProjBias))
            },
            finalNormWeight: c(finalNormWeight), finalNormBias: c(finalNormBias))
    }

    /// Every linear layer, in forward order (c_attn, attn.c_proj, c_fc, mlp.c_proj per block).
    public var linearLayers: [LinearLayer] { trainingWeights(as: Float.self).linearLayers }

    /// ``GPT2TrainingWeights/forward(tokens:batchSize:hooks:)`` on this model's Float weights.
    public func forwardForTraining(tokens: [Int], batchSize: Int, hooks: LinearHooks<Float> = .init(), headRows: [Int]? = nil) -> GPT2Activations<Float> {
        trainingWeights(as: Float.self).forward(tokens: tokens, batchSize: batchSize, hooks: hooks, headRows: headRows)
    }

    /// ``GPT2TrainingWeights/backward(_:activations:hooks:keepLinearGradients:embeddingGradient:)`` on this model's Float weights.
    public func backward(_ dLogits: [Float], activations: GPT2Activations<Float>, hooks: LinearHooks<Float> = .init(),
                         keepLinearGradients: Bool = true, embeddingGradient: Bool = false) -> TrainingGradients<Float> {
        trainingWeights(as: Float.self).backward(dLogits, activations: activations, hooks: hooks,
                                                 keepLinearGradients: keepLinearGradients, embeddingGradient: embeddingGradient)
    }
}

extension GPT2TrainingWeights {
    var C: Int { config.nEmbd }
    var H: Int { config.nHead }
    var eps: Real { Real(config.layerNormEpsilon) }

    /// The linear (Conv1D) layers of block `l`, named as Hugging Face's GPT2LMHeadModel names the modules.
    public func linearLayers(block l: Int) -> (attention: LinearLayer, attentionProjection: LinearLayer,
                                               fc: LinearLayer, fcProjection: LinearLayer) {
        let p = "transformer.h.\(l)."
        return (LinearLayer(name: p + "attn.c_attn", inFeatures: C, outFeatures: 3 * C),
                LinearLayer(name: p + "attn.c_proj", inFeatures: C, outFeatures: C),
                LinearLayer(name: p + "mlp.c_fc", inFeatures: C, outFeatures: 4 * C),
                LinearLayer(name: p + "mlp.c_proj", inFeatures: 4 * C, outFeatures: C))
    }

    /// Every linear layer, in forward order.
    public var linearLayers: [LinearLayer] {
        blocks.indices.flatMap { l in
            let s = linearLayers(block: l)
            return [s.attention, s.attentionProjection, s.fc, s.fcProjection]
        }
    }

    /// Logits (B·T, V) for B sequences of T tokens (`tokens` is (B, T) flattened), with
    /// positions 0..<T in each sequence, keeping what the backward needs. Equals
    /// ``GPT2Model/forward(_:cache:allPositions:)`` on each sequence alone (all positions).
    /// Pad sequences on the right: attention is causal, so padding never reaches real tokens.
    public func forward(tokens: [Int], batchSize B: Int, hooks: LinearHooks<Real> = .init(), headRows: [Int]? = nil) -> GPT2Activations<Real> {
        let N = tokens.count, V = config.vocabSize
        precondition(B > 0 && N > 0 && N % B == 0, "\(N) tokens do not make \(B) sequences of equal length")
        for t in tokens { precondition(t >= 0 && t < V, "token \(t) outside vocabulary 0..<\(V)") }
        let T = N / B
        precondition(T <= config.nPositions, "GPT-2 has \(config.nPositions) positions; sequences have \(T)")
        var x = [Real](repeating: 0, count: N * C)  // (N, C) residual stream
        Layers.embeddingForward(tokens: tokens, table: tokenEmbedding, positions: positionEmbedding, sequenceLength: T, &x, width: C)
        var saved: [GPT2BlockActivations<Real>] = []
        var checkpoints: [(input: [Real], random: SeededGenerator?)] = []
        for l in blocks.indices {
            if hooks.gradientCheckpointing {
                checkpoints.append((x, hooks.randomState?.save()))
                _ = blockForward(l, &x, batchSize: B, hooks: hooks)
            } else {
                saved.append(blockForward(l, &x, batchSize: B, hooks: hooks))
            }
        }
        var mean = [Real](repeating: 0, count: N), rstd = mean, normed = [Real](repeating: 0, count: N * C)
        Layers.layerNormForward(x, weight: finalNormWeight, bias: finalNormBias, &normed, mean: &mean, rstd: &rstd,
                                rows: N, width: C, eps: eps)
        let logits = Layers.headLogits(normed, embedding: tokenEmbedding, rows: N, width: C, vocabularySize: V, only: headRows)
        return GPT2Activations(tokens: tokens, batchSize: B, sequenceLength: T, logits: logits, headRows: headRows, blocks: saved,
                               checkpoints: checkpoints, final: x, finalMean: mean, finalRstd: rstd)
    }

    /// Gradients from dL/dlogits (B·T, V): dL/d(input) and dL/d(output) of every linear
    /// layer (kept when `keepLinearGradients`; hooks see them either way), dL/d(embedding
    /// output), and dL/dE, dL/dP through the lookups when `embeddingGradient` (never the
    /// tied head's share of dE).
    public func backward(_ dLogits: [Real], activations a: GPT2Activations<Real>, hooks: LinearHooks<Real> = .init(),
                         keepLinearGradients: Bool = true, embeddingGradient: Bool = false) -> TrainingGradients<Real> {
        let N = a.tokens.count, V = config.vocabSize
        let dNormed = Layers.headBackward(dLogits, embedding: tokenEmbedding, rows: N, width: C, vocabularySize: V, only: a.headRows)
        var dx = [Real](repeating: 0, count: N * C)  // (N, C) dL/d(residual stream)
        Layers.layerNormBackward(dNormed, x: a.final, weight: finalNormWeight, mean: a.finalMean, rstd: a.finalRstd,
                                 dX: &dx, rows: N, width: C)
        var result = TrainingGradients<Real>()
        let after = hooks.randomState?.save()
        for l in blocks.indices.reversed() {
            let saved: GPT2BlockActivations<Real>
            if a.blocks.isEmpty {  // checkpointed: recompute this block from its input, with the same random masks
                var x = a.checkpoints[l].input
                if let random = a.checkpoints[l].random { hooks.randomState?.restore(random) }
                saved = blockForward(l, &x, batchSize: a.batchSize, hooks: hooks)
            } else {
                saved = a.blocks[l]
            }
            let kept = blockBackward(l, &dx, saved: saved, hooks: hooks, keepLinearGradients: keepLinearGradients)
            result.linear.merge(kept) { $1 }
        }
        if let after { hooks.randomState?.restore(after) }
        if embeddingGradient {
            var dE = [Real](repeating: 0, count: V * C), dP = [Real](repeating: 0, count: config.nPositions * C)
            Layers.embeddingBackward(tokens: a.tokens, dx, dTable: &dE, dPositions: &dP, sequenceLength: a.sequenceLength, width: C)
            (result.tokenEmbedding, result.positionEmbedding) = (dE, dP)
        }
        result.embeddingOutput = dx
        return result
    }

    /// Block `l` on the residual stream x (N, C), in place:
    ///
    ///     x ← x + c_proj(attention(split(c_attn(ln_1(x)))))
    ///     x ← x + mlp.c_proj(gelu(c_fc(ln_2(x))))
    public func blockForward(_ l: Int, _ x: inout [Real], batchSize B: Int,
                             hooks: LinearHooks<Real> = .init()) -> GPT2BlockActivations<Real> {
        let w = blocks[l], lin = linearLayers(block: l), N = x.count / C, T = N / B, hd = C / H
        precondition(x.count == B * T * C, "x has \(x.count) values, not (\(B)·T, \(C))")
        func zeros(_ n: Int) -> [Real] { [Real](repeating: 0, count: n) }
        var s = GPT2BlockActivations<Real>(
            batchSize: B, input: x, mean1: zeros(N), rstd1: zeros(N), h1: zeros(N * C), qkv: zeros(N * 3 * C),
            probs: zeros(B * H * T * T), att: zeros(N * C), mid: [], mean2: zeros(N), rstd2: zeros(N), h2: zeros(N * C),
            fc: zeros(N * 4 * C), fcAct: zeros(N * 4 * C))
        Layers.layerNormForward(x, weight: w.ln1Weight, bias: w.ln1Bias, &s.h1, mean: &s.mean1, rstd: &s.rstd1, rows: N, width: C, eps: eps)
        hooks.linearForward(lin.attention, s.h1, weight: w.attnWeight, bias: w.attnBias, layout: .inOut, &s.qkv)
        let qkv = s.qkv  // shares storage; a separate variable so `s` can be written inside
        qkv.withUnsafeBufferPointer { qkv in
            let q = qkv.baseAddress!
            Layers.attentionForward(q: q, k: q + C, v: q + 2 * C, qStride: 3 * C, kvStride: 3 * C, &s.att, probs: &s.probs,
                                    batchSize: B, sequenceLength: T, heads: H, kvHeads: H, headDim: hd)
        }
        var proj = zeros(N * C)
        hooks.linearForward(lin.attentionProjection, s.att, weight: w.attnProjWeight, bias: w.attnProjBias, layout: .inOut, &proj)
        Layers.add(&x, proj, count: N * C)
        s.mid = x
        Layers.layerNormForward(x, weight: w.ln2Weight, bias: w.ln2Bias, &s.h2, mean: &s.mean2, rstd: &s.rstd2, rows: N, width: C, eps: eps)
        hooks.linearForward(lin.fc, s.h2, weight: w.fcWeight, bias: w.fcBias, layout: .inOut, &s.fc)
        Layers.geluForward(s.fc, &s.fcAct, count: N * 4 * C)
        hooks.linearForward(lin.fcProjection, s.fcAct, weight: w.fcProjWeight, bias: w.fcProjBias, layout: .inOut, &proj)
        Layers.add(&x, proj, count: N * C)
        return s
    }

    /// Backward of block `l`: dx (N, C) holds dL/d(block output) on entry and dL/d(block
    /// input) on return. Returns the block's linear gradients when `keepLinearGradients`.
    public func blockBackward(_ l: Int, _ dx: inout [Real], saved s: GPT2BlockActivations<Real>,
                              hooks: LinearHooks<Real> = .init(), keepLinearGradients: Bool = true) -> [String: LinearGradient<Real>] {
        let w = blocks[l], lin = linearLayers(block: l), N = dx.count / C, B = s.batchSize, T = N / B, hd = C / H
        func zeros(_ n: Int) -> [Real] { [Real](repeating: 0, count: n) }
        var kept: [String: LinearGradient<Real>]? = keepLinearGradients ? [:] : nil
        // MLP: out = mid + c_proj(gelu(c_fc(ln_2(mid))))
        var dAct = zeros(N * 4 * C), dFc = zeros(N * 4 * C), dH = zeros(N * C)
        hooks.linearBackward(lin.fcProjection, x: s.fcAct, dY: dx, weight: w.fcProjWeight, layout: .inOut, dInput: &dAct, kept: &kept)
        Layers.geluBackward(dAct, x: s.fc, dX: &dFc, count: N * 4 * C)
        hooks.linearBackward(lin.fc, x: s.h2, dY: dFc, weight: w.fcWeight, layout: .inOut, dInput: &dH, kept: &kept)
        Layers.layerNormBackward(dH, x: s.mid, weight: w.ln2Weight, mean: s.mean2, rstd: s.rstd2, dX: &dx, rows: N, width: C)
        // Attention: mid = input + c_proj(attention(c_attn(ln_1(input))))
        var dAtt = zeros(N * C), dqkv = zeros(N * 3 * C)
        hooks.linearBackward(lin.attentionProjection, x: s.att, dY: dx, weight: w.attnProjWeight, layout: .inOut,
                             dInput: &dAtt, kept: &kept)
        s.qkv.withUnsafeBufferPointer { qkv in
            dqkv.withUnsafeMutableBufferPointer { d in
                let q = qkv.baseAddress!, dq = d.baseAddress!
                Layers.attentionBackward(dAtt, q: q, k: q + C, v: q + 2 * C, probs: s.probs, qStride: 3 * C, kvStride: 3 * C,
                                         dQ: dq, dK: dq + C, dV: dq + 2 * C,
                                         batchSize: B, sequenceLength: T, heads: H, kvHeads: H, headDim: hd)
            }
        }
        dH = zeros(N * C)
        hooks.linearBackward(lin.attention, x: s.h1, dY: dqkv, weight: w.attnWeight, layout: .inOut, dInput: &dH, kept: &kept)
        Layers.layerNormBackward(dH, x: s.input, weight: w.ln1Weight, mean: s.mean1, rstd: s.rstd1, dX: &dx, rows: N, width: C)
        return kept ?? [:]
    }
}
