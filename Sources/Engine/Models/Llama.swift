import Foundation

/// A LLaMA-family configuration, with Hugging Face's `config.json` key names.
public struct LlamaConfig: Codable, Equatable, Sendable {
    public var vocabSize: Int
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var numHiddenLayers: Int
    public var numAttentionHeads: Int
    public var numKeyValueHeads: Int
    public var rmsNormEps: Double
    public var ropeTheta: Double
    public var maxPositionEmbeddings: Int
    public var tieWordEmbeddings: Bool

    enum CodingKeys: String, CodingKey {
        case vocabSize = "vocab_size", hiddenSize = "hidden_size", intermediateSize = "intermediate_size"
        case numHiddenLayers = "num_hidden_layers", numAttentionHeads = "num_attention_heads"
        case numKeyValueHeads = "num_key_value_heads", rmsNormEps = "rms_norm_eps", ropeTheta = "rope_theta"
        case maxPositionEmbeddings = "max_position_embeddings", tieWordEmbeddings = "tie_word_embeddings"
    }

    public init(vocabSize: Int, hiddenSize: Int, intermediateSize: Int, numHiddenLayers: Int, numAttentionHeads: Int,
                numKeyValueHeads: Int, rmsNormEps: Double, ropeTheta: Double, maxPositionEmbeddings: Int, tieWordEmbeddings: Bool) {
        (self.vocabSize, self.hiddenSize, self.intermediateSize) = (vocabSize, hiddenSize, intermediateSize)
        (self.numHiddenLayers, self.numAttentionHeads, self.numKeyValueHeads) = (numHiddenLayers, numAttentionHeads, numKeyValueHeads)
        (self.rmsNormEps, self.ropeTheta, self.maxPositionEmbeddings, self.tieWordEmbeddings) = (rmsNormEps, ropeTheta, maxPositionEmbeddings, tieWordEmbeddings)
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        vocabSize = try c.decode(Int.self, forKey: .vocabSize)
        hiddenSize = try c.decode(Int.self, forKey: .hiddenSize)
        intermediateSize = try c.decode(Int.self, forKey: .intermediateSize)
        numHiddenLayers = try c.decode(Int.self, forKey: .numHiddenLayers)
        numAttentionHeads = try c.decode(Int.self, forKey: .numAttentionHeads)
        numKeyValueHeads = try c.decodeIfPresent(Int.self, forKey: .numKeyValueHeads) ?? numAttentionHeads
        rmsNormEps = try c.decodeIfPresent(Double.self, forKey: .rmsNormEps) ?? 1e-6
        ropeTheta = try c.decodeIfPresent(Double.self, forKey: .ropeTheta) ?? 10000
        maxPositionEmbeddings = try c.decodeIfPresent(Int.self, forKey: .maxPositionEmbeddings) ?? 2048
        tieWordEmbeddings = try c.decodeIfPresent(Bool.self, forKey: .tieWordEmbeddings) ?? false
    }

    public var headDim: Int { hiddenSize / numAttentionHeads }

    /// Checks the numbers fit together; `file` names the source in errors.
    func validate(file: String) throws {
        if numAttentionHeads <= 0 || hiddenSize % numAttentionHeads != 0 {
            throw ModelLoadError.badConfig(file: file, key: "num_attention_heads", message: "\(numAttentionHeads) does not divide hidden_size \(hiddenSize)")
        }
        if numKeyValueHeads <= 0 || numAttentionHeads % numKeyValueHeads != 0 {
            throw ModelLoadError.badConfig(file: file, key: "num_key_value_heads", message: "\(numKeyValueHeads) does not divide num_attention_heads \(numAttentionHeads)")
        }
        if headDim % 2 != 0 { throw ModelLoadError.badConfig(file: file, key: "hidden_size", message: "head size \(headDim) must be even for RoPE") }
    }
}

/// LLaMA: RMSNorm, rotary positions, SwiGLU MLP, grouped-query attention, tied or untied lm_head.
public final class LlamaModel: LanguageModel {
    /// One transformer block. Linear weights are (out, in), as nn.Linear stores them.
    public struct Block {
        public var attentionNorm: [Float]  // (C)
        public var wq: [Float]             // (H·hd, C)
        public var wk: [Float]             // (KV·hd, C)
        public var wv: [Float]             // (KV·hd, C)
        public var wo: [Float]             // (C, H·hd)
        public var mlpNorm: [Float]        // (C)
        public var gate: [Float]           // (F, C)
        public var up: [Float]             // (F, C)
        public var down: [Float]           // (C, F)
    }

    public let config: LlamaConfig
    public let ropeStyle: RoPEStyle
    public var embedding: [Float]     // (V, C)
    public var blocks: [Block]
    public var finalNorm: [Float]     // (C)
    /// nil when tied to `embedding`.
    public var lmHead: [Float]?       // (V, C)
    var rope: RoPE
    /// Decode one token through compact copies of the matrices (see ``DecodeMatrix``): a
    /// GGUF model's own quantized blocks, or half-precision copies of Float32 weights, built
    /// on first use. Decoding is bound by memory bandwidth, so this is 2–3× faster.
    /// Off: Float32 throughout.
    public var compactDecode = true
    /// A GGUF checkpoint's stored blocks of wq, wk, wv, wo, gate, up, down per block and of
    /// the lm_head (nil where the stored type has no decode format). withWeight(of:_:)
    /// drops the entry of the matrix it changes.
    var stored: (blocks: [[DecodeMatrix?]], head: DecodeMatrix?)?
    var decodeCopies: (blocks: [[DecodeMatrix]], head: DecodeMatrix)?  // dropped by withWeight(of:_:)

    /// wq, wk, wv, wo, gate, up, down of each block, and the lm_head, for decoding: the
    /// stored blocks where they still hold the weights, else half-precision copies.
    private func decodeMatrices() -> (blocks: [[DecodeMatrix]], head: DecodeMatrix) {
        if let decodeCopies { return decodeCopies }
        let C = config.hiddenSize, F = config.intermediateSize
        let q = config.numAttentionHeads * config.headDim, kv = config.numKeyValueHeads * config.headDim
        let made = (blocks: blocks.enumerated().map { l, b in
            let s = stored?.blocks[l]
            return [s?[0] ?? DecodeMatrix(b.wq, rows: q, columns: C), s?[1] ?? DecodeMatrix(b.wk, rows: kv, columns: C),
                    s?[2] ?? DecodeMatrix(b.wv, rows: kv, columns: C), s?[3] ?? DecodeMatrix(b.wo, rows: C, columns: q),
                    s?[4] ?? DecodeMatrix(b.gate, rows: F, columns: C), s?[5] ?? DecodeMatrix(b.up, rows: F, columns: C),
                    s?[6] ?? DecodeMatrix(b.down, rows: C, columns: F)]
        }, head: stored?.head ?? DecodeMatrix(lmHead ?? embedding, rows: config.vocabSize, columns: C))
        decodeCopies = made
        return made
    }

    /// The bytes of weights one decoded token reads, per format.
    public var decodeBytesPerToken: [DecodeMatrix.Format: Int] {
        let w = decodeMatrices()
        return DecodeMatrix.bytesByFormat(w.blocks.flatMap { $0 } + [w.head])
    }

    public var architecture: String { "llama" }
    public var vocabularySize: Int { config.vocabSize }
    public var contextLength: Int { config.maxPositionEmbeddings }
    public var layerCount: Int { config.numHiddenLayers }
    public var hiddenSize: Int { config.hiddenSize }
    public var parameterCount: Int {
        embedding.count + finalNorm.count + (lmHead?.count ?? 0) + blocks.reduce(0) {
            $0 + $1.attentionNorm.count + $1.wq.count + $1.wk.count + $1.wv.count + $1.wo.count
                + $1.mlpNorm.count + $1.gate.count + $1.up.count + $1.down.count
        }
    }

    public init(config: LlamaConfig, ropeStyle: RoPEStyle, embedding: [Float], blocks: [Block], finalNorm: [Float], lmHead: [Float]?) {
        self.config = config
        self.ropeStyle = ropeStyle
        self.embedding = embedding
        self.blocks = blocks
        self.finalNorm = finalNorm
        self.lmHead = lmHead
        rope = RoPE(headDim: config.headDim, base: config.ropeTheta, maxPositions: min(config.maxPositionEmbeddings, 512), style: ropeStyle)
    }

    public func makeCache(capacity: Int) -> KVCache {
        KVCache(layers: config.numHiddenLayers, kvDim: config.numKeyValueHeads * config.headDim, capacity: capacity)
    }

    public func forward(_ tokens: [Int], cache: KVCache, allPositions: Bool) -> [Float] {
        forward(tokens, cache: cache, allPositions: allPositions, hooks: nil)
    }

    /// The forward above with every linear layer run as the training pass runs it when
    /// `hooks` is given: its backend (quantized or encrypted products) and its hooks (a LoRA
    /// adapter) — for generation with a KV cache through those layers.
    public func forward(_ tokens: [Int], cache: KVCache, allPositions: Bool, hooks: LinearHooks<Float>?) -> [Float] {
        let T = tokens.count, C = config.hiddenSize, F = config.intermediateSize, V = config.vocabSize
        let H = config.numAttentionHeads, KV = config.numKeyValueHeads, hd = config.headDim
        let start = cache.length
        precondition(T > 0, "forward needs at least one token")
        for t in tokens { precondition(t >= 0 && t < V, "token \(t) outside vocabulary 0..<\(V)") }
        cache.reserve(start + T)
        rope.grow(to: start + T)
        let eps = Float(config.rmsNormEps)

        var x = [Float](repeating: 0, count: T * C)          // (T, C) residual stream
        var h = [Float](repeating: 0, count: T * C)          // (T, C) normed
        var q = [Float](repeating: 0, count: T * H * hd)     // (T, H·hd)
        var k = [Float](repeating: 0, count: T * KV * hd)    // (T, KV·hd)
        var v = [Float](repeating: 0, count: T * KV * hd)
        var att = [Float](repeating: 0, count: T * H * hd)
        var g = [Float](repeating: 0, count: T * F)          // (T, F)
        var u = [Float](repeating: 0, count: T * F)
        var scores = [Float](repeating: 0, count: T * (start + T))
        let halves = T == 1 && compactDecode && hooks == nil ? decodeMatrices() : nil
        let named = hooks == nil ? nil : trainingWeights(as: Float.self)
        /// y = x·Wᵀ through the hooks (as `layer`), or the decode copy when decoding, else sgemm.
        func project(_ layer: LinearLayer?, _ x: [Float], _ w: [Float], _ hw: DecodeMatrix?, _ y: inout [Float], _ k: Int, _ n: Int,
                     accumulate: Bool = false) {
            if let hooks, let layer {
                if accumulate {
                    var product = [Float](repeating: 0, count: T * n)
                    hooks.linearForward(layer, x, weight: w, bias: nil, layout: .outIn, &product)
                    Ops.add(&y, product, count: T * n)
                } else {
                    hooks.linearForward(layer, x, weight: w, bias: nil, layout: .outIn, &y)
                }
            } else if let hw { x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { hw.apply(xp.baseAddress!, $0.baseAddress!, accumulate: accumulate) } } }
            else { Ops.linear(x, w, &y, rows: T, inFeatures: k, outFeatures: n, accumulate: accumulate) }
        }
        embedding.withUnsafeBufferPointer { e in
            for (i, t) in tokens.enumerated() { x.withUnsafeMutableBufferPointer { ($0.baseAddress! + i * C).update(from: e.baseAddress! + t * C, count: C) } }
        }
        for (l, b) in blocks.enumerated() {
            Ops.rmsNorm(x, weight: b.attentionNorm, &h, rows: T, width: C, eps: eps)
            let hb = halves?.blocks[l]
            let lin = named?.linearLayers(block: l)
            if let hb {  // one batch for the three projections of the same input
                h.withUnsafeBufferPointer { hp in
                    q.withUnsafeMutableBufferPointer { qp in
                        k.withUnsafeMutableBufferPointer { kp in
                            v.withUnsafeMutableBufferPointer { vp in
                                DecodeMatrix.apply([.init(hb[0], hp.baseAddress!, qp.baseAddress!), .init(hb[1], hp.baseAddress!, kp.baseAddress!),
                                                    .init(hb[2], hp.baseAddress!, vp.baseAddress!)])
                            }
                        }
                    }
                }
            } else {
                project(lin?.q, h, b.wq, nil, &q, C, H * hd)
                project(lin?.k, h, b.wk, nil, &k, C, KV * hd)
                project(lin?.v, h, b.wv, nil, &v, C, KV * hd)
            }
            q.withUnsafeMutableBufferPointer { qp in
                k.withUnsafeMutableBufferPointer { kp in
                    for i in 0..<T {
                        rope.apply(qp.baseAddress! + i * H * hd, heads: H, position: start + i)
                        rope.apply(kp.baseAddress! + i * KV * hd, heads: KV, position: start + i)
                    }
                }
            }
            let kvDim = KV * hd
            cache.keys[l].withUnsafeMutableBufferPointer { ($0.baseAddress! + start * kvDim).update(from: k, count: T * kvDim) }
            cache.values[l].withUnsafeMutableBufferPointer { ($0.baseAddress! + start * kvDim).update(from: v, count: T * kvDim) }
            cache.keys[l].withUnsafeBufferPointer { kc in
                cache.values[l].withUnsafeBufferPointer { vc in
                    causalAttention(q: q, keys: kc.baseAddress!, values: vc.baseAddress!, out: &att, t: T, start: start,
                                    heads: H, kvHeads: KV, headDim: hd, scores: &scores)
                }
            }
            project(lin?.o, att, b.wo, hb?[3], &x, H * hd, C, accumulate: true)
            Ops.rmsNorm(x, weight: b.mlpNorm, &h, rows: T, width: C, eps: eps)
            if let hb {
                h.withUnsafeBufferPointer { hp in
                    g.withUnsafeMutableBufferPointer { gp in
                        u.withUnsafeMutableBufferPointer { up in
                            DecodeMatrix.apply([.init(hb[4], hp.baseAddress!, gp.baseAddress!), .init(hb[5], hp.baseAddress!, up.baseAddress!)])
                        }
                    }
                }
            } else {
                project(lin?.gate, h, b.gate, nil, &g, C, F)
                project(lin?.up, h, b.up, nil, &u, C, F)
            }
            Ops.swiGLU(gate: &g, up: u, count: T * F)
            project(lin?.down, g, b.down, hb?[6], &x, F, C, accumulate: true)
        }
        cache.length = start + T
        let rows = allPositions ? T : 1
        let first = allPositions ? 0 : T - 1
        var normed = [Float](repeating: 0, count: rows * C)
        x.withUnsafeBufferPointer { xp in
            Ops.rmsNorm(xp.baseAddress! + first * C, weight: finalNorm, &normed, rows: rows, width: C, eps: eps)
        }
        var logits = [Float](repeating: 0, count: rows * V)
        if let halves, rows == 1 {
            normed.withUnsafeBufferPointer { n in logits.withUnsafeMutableBufferPointer { halves.head.apply(n.baseAddress!, $0.baseAddress!) } }
        } else {
            Ops.linear(normed, lmHead ?? embedding, &logits, rows: rows, inFeatures: C, outFeatures: V)
        }
        return logits
    }
}

extension LlamaModel {
    /// Loads from llama.cpp-named tensors (GGUF: `token_embd.weight`, `blk.N.attn_q.weight`, …;
    /// Q/K rows are permuted for interleaved RoPE) or Hugging Face names (`model.layers.N.self_attn.q_proj.weight`, …).
    /// `serverModules`: linear modules (Hugging Face names) whose weights are on a server and
    /// absent from `source` (a deployment's client folder); they load as empty arrays.
    public static func load(from source: TensorSource, config: LlamaConfig, file: String, serverModules: Set<String> = []) throws -> LlamaModel {
        try config.validate(file: file)
        var loader = StrictTensorLoader(source: source, file: file)
        let gguf = loader.has("token_embd.weight")
        let C = config.hiddenSize, F = config.intermediateSize, V = config.vocabSize
        let qDim = config.numAttentionHeads * config.headDim, kvDim = config.numKeyValueHeads * config.headDim
        func name(_ g: String, _ hf: String) -> String { gguf ? g : hf }
        let embedding = try loader.tensor(name("token_embd.weight", "model.embed_tokens.weight"), shape: [V, C])
        var blocks: [Block] = []
        for l in 0..<config.numHiddenLayers {
            let gp = "blk.\(l).", hp = "model.layers.\(l)."
            blocks.append(Block(
                attentionNorm: try loader.tensor(name(gp + "attn_norm.weight", hp + "input_layernorm.weight"), shape: [C]),
                wq: serverModules.contains(hp + "self_attn.q_proj") ? [] : try loader.tensor(name(gp + "attn_q.weight", hp + "self_attn.q_proj.weight"), shape: [qDim, C]),
                wk: serverModules.contains(hp + "self_attn.k_proj") ? [] : try loader.tensor(name(gp + "attn_k.weight", hp + "self_attn.k_proj.weight"), shape: [kvDim, C]),
                wv: serverModules.contains(hp + "self_attn.v_proj") ? [] : try loader.tensor(name(gp + "attn_v.weight", hp + "self_attn.v_proj.weight"), shape: [kvDim, C]),
                wo: serverModules.contains(hp + "self_attn.o_proj") ? [] : try loader.tensor(name(gp + "attn_output.weight", hp + "self_attn.o_proj.weight"), shape: [C, qDim]),
                mlpNorm: try loader.tensor(name(gp + "ffn_norm.weight", hp + "post_attention_layernorm.weight"), shape: [C]),
                gate: serverModules.contains(hp + "mlp.gate_proj") ? [] : try loader.tensor(name(gp + "ffn_gate.weight", hp + "mlp.gate_proj.weight"), shape: [F, C]),
                up: serverModules.contains(hp + "mlp.up_proj") ? [] : try loader.tensor(name(gp + "ffn_up.weight", hp + "mlp.up_proj.weight"), shape: [F, C]),
                down: serverModules.contains(hp + "mlp.down_proj") ? [] : try loader.tensor(name(gp + "ffn_down.weight", hp + "mlp.down_proj.weight"), shape: [C, F])))
        }
        let finalNorm = try loader.tensor(name("output_norm.weight", "model.norm.weight"), shape: [C])
        let headName = name("output.weight", "lm_head.weight")
        var lmHead: [Float]? = nil
        if loader.has(headName) {
            lmHead = try loader.tensor(headName, shape: [V, C])
        } else if !config.tieWordEmbeddings && !gguf {
            throw ModelLoadError.missingTensor(file: file, tensor: headName)
        }
        // Rotary-embedding caches some exporters include are derived, not parameters.
        loader.ignore { $0.hasSuffix("rotary_emb.inv_freq") || $0 == "rope_freqs.weight" }
        try loader.checkAllUsed()
        var cfg = config
        cfg.tieWordEmbeddings = lmHead == nil
        let model = LlamaModel(config: cfg, ropeStyle: gguf ? .interleaved : .halves, embedding: embedding, blocks: blocks,
                               finalNorm: finalNorm, lmHead: lmHead)
        if let file = source as? GGUFFile {  // decode straight from the stored blocks
            let names = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
            model.stored = (blocks: (0..<config.numHiddenLayers).map { l in
                names.map { DecodeMatrix(file, tensor: "blk.\(l).\($0).weight") }
            }, head: DecodeMatrix(file, tensor: lmHead == nil ? "token_embd.weight" : "output.weight"))
        }
        return model
    }
}
