import Foundation

/// The LLaMA family (Llama 2/3.x, Qwen2, Mistral): RMSNorm, rotary positions (with scaling),
/// SwiGLU MLP, grouped-query attention, optional biases, an optional sliding window, tied or
/// untied lm_head.
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
        /// Biases, where the config has them (``LlamaConfig/biases``): q (H·hd), k and v (KV·hd), o (C), gate and up (F), down (C).
        public var bq: [Float]? = nil, bk: [Float]? = nil, bv: [Float]? = nil, bo: [Float]? = nil
        public var bGate: [Float]? = nil, bUp: [Float]? = nil, bDown: [Float]? = nil
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

    public var architecture: String { config.modelType }
    public var vocabularySize: Int { config.vocabSize }
    public var contextLength: Int { config.contextLength }
    public var layerCount: Int { config.numHiddenLayers }
    public var hiddenSize: Int { config.hiddenSize }
    public var parameterCount: Int {
        embedding.count + finalNorm.count + (lmHead?.count ?? 0) + blocks.reduce(0) {
            $0 + $1.attentionNorm.count + $1.wq.count + $1.wk.count + $1.wv.count + $1.wo.count
                + $1.mlpNorm.count + $1.gate.count + $1.up.count + $1.down.count
                + [$1.bq, $1.bk, $1.bv, $1.bo, $1.bGate, $1.bUp, $1.bDown].reduce(0) { $0 + ($1?.count ?? 0) }
        }
    }

    public init(config: LlamaConfig, ropeStyle: RoPEStyle, embedding: [Float], blocks: [Block], finalNorm: [Float], lmHead: [Float]?) {
        self.config = config
        self.ropeStyle = ropeStyle
        self.embedding = embedding
        self.blocks = blocks
        self.finalNorm = finalNorm
        self.lmHead = lmHead
        rope = RoPE(inverseFrequencies: config.ropeInverseFrequencies(sequenceLength: 0),
                    maxPositions: min(config.maxPositionEmbeddings, 512), style: ropeStyle)
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
        // Dynamic scaling past the trained positions: frequencies for this length, applied to
        // the new tokens (the cached keys keep the rotation they were computed with).
        let dynamic = config.ropeScaling?.kind == .dynamic && start + T > config.maxPositionEmbeddings
        let rope = dynamic ? RoPE(inverseFrequencies: config.ropeInverseFrequencies(sequenceLength: start + T), maxPositions: start + T, style: ropeStyle)
            : { self.rope.grow(to: start + T); return self.rope }()
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
        /// y = x·Wᵀ + b through the hooks (as `layer`), or the decode copy when decoding, else sgemm.
        func project(_ layer: LinearLayer?, _ x: [Float], _ w: [Float], _ bias: [Float]?, _ hw: DecodeMatrix?, _ y: inout [Float], _ k: Int, _ n: Int,
                     accumulate: Bool = false) {
            if let hooks, let layer {
                if accumulate {
                    var product = [Float](repeating: 0, count: T * n)
                    hooks.linearForward(layer, x, weight: w, bias: bias, layout: .outIn, &product)
                    Layers.add(&y, product, count: T * n)
                } else {
                    hooks.linearForward(layer, x, weight: w, bias: bias, layout: .outIn, &y)
                }
                return
            } else if let hw { x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { hw.apply(xp.baseAddress!, $0.baseAddress!, accumulate: accumulate) } } }
            else { Layers.linear(x, w, &y, rows: T, inFeatures: k, outFeatures: n, accumulate: accumulate) }
            if let bias { addBias(bias, &y) }
        }
        func addBias(_ bias: [Float], _ y: inout [Float]) {
            let n = bias.count
            for r in 0..<T { for j in 0..<n { y[r * n + j] += bias[j] } }
        }
        embedding.withUnsafeBufferPointer { e in
            for (i, t) in tokens.enumerated() { x.withUnsafeMutableBufferPointer { ($0.baseAddress! + i * C).update(from: e.baseAddress! + t * C, count: C) } }
        }
        for (l, b) in blocks.enumerated() {
            Layers.rmsNorm(x, weight: b.attentionNorm, &h, rows: T, width: C, eps: eps)
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
                if let bq = b.bq { addBias(bq, &q) }
                if let bk = b.bk { addBias(bk, &k) }
                if let bv = b.bv { addBias(bv, &v) }
            } else {
                project(lin?.q, h, b.wq, b.bq, nil, &q, C, H * hd)
                project(lin?.k, h, b.wk, b.bk, nil, &k, C, KV * hd)
                project(lin?.v, h, b.wv, b.bv, nil, &v, C, KV * hd)
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
                                    heads: H, kvHeads: KV, headDim: hd, window: config.slidingWindow, scores: &scores)
                }
            }
            project(lin?.o, att, b.wo, b.bo, hb?[3], &x, H * hd, C, accumulate: true)
            Layers.rmsNorm(x, weight: b.mlpNorm, &h, rows: T, width: C, eps: eps)
            if let hb {
                h.withUnsafeBufferPointer { hp in
                    g.withUnsafeMutableBufferPointer { gp in
                        u.withUnsafeMutableBufferPointer { up in
                            DecodeMatrix.apply([.init(hb[4], hp.baseAddress!, gp.baseAddress!), .init(hb[5], hp.baseAddress!, up.baseAddress!)])
                        }
                    }
                }
                if let bg = b.bGate { addBias(bg, &g) }
                if let bu = b.bUp { addBias(bu, &u) }
            } else {
                project(lin?.gate, h, b.gate, b.bGate, nil, &g, C, F)
                project(lin?.up, h, b.up, b.bUp, nil, &u, C, F)
            }
            Layers.swiGLU(gate: &g, up: u, count: T * F)
            project(lin?.down, g, b.down, b.bDown, hb?[6], &x, F, C, accumulate: true)
        }
        cache.length = start + T
        let rows = allPositions ? T : 1
        let first = allPositions ? 0 : T - 1
        var normed = [Float](repeating: 0, count: rows * C)
        x.withUnsafeBufferPointer { xp in
            Layers.rmsNorm(xp.baseAddress! + first * C, weight: finalNorm, &normed, rows: rows, width: C, eps: eps)
        }
        var logits = [Float](repeating: 0, count: rows * V)
        if let halves, rows == 1 {
            normed.withUnsafeBufferPointer { n in logits.withUnsafeMutableBufferPointer { halves.head.apply(n.baseAddress!, $0.baseAddress!) } }
        } else {
            Layers.linear(normed, lmHead ?? embedding, &logits, rows: rows, inFeatures: C, outFeatures: V)
        }
        return logits
    }
}

extension LlamaModel {
    /// Where each tensor of a block lives: Hugging Face's name and llama.cpp's (GGUF).
    static let blockTensorNames: [(hf: String, gguf: String)] = [
        ("input_layernorm", "attn_norm"), ("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"), ("self_attn.o_proj", "attn_output"), ("post_attention_layernorm", "ffn_norm"),
        ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down"),
    ]

    /// Whether llama.cpp permutes this family's Q/K rows for its interleaved RoPE (Llama and
    /// Mistral; Qwen2 keeps Hugging Face's rows and rotates halves).
    static func ggufPermutesQK(_ config: LlamaConfig) -> Bool { config.modelType != "qwen2" }

    /// Loads from llama.cpp-named tensors (GGUF: `token_embd.weight`, `blk.N.attn_q.weight`, …;
    /// Q/K rows are permuted for interleaved RoPE in the Llama layout) or Hugging Face names
    /// (`model.layers.N.self_attn.q_proj.weight`, …). A `rope_freqs.weight` tensor (llama.cpp's
    /// Llama 3 frequency factors) is read into the config.
    /// `serverModules`: linear modules (Hugging Face names) whose weights are on a server and
    /// absent from `source` (a deployment's client folder); they load as empty arrays.
    public static func load(from source: TensorSource, config: LlamaConfig, file: String, serverModules: Set<String> = []) throws -> LlamaModel {
        var config = config
        var loader = StrictTensorLoader(source: source, file: file)
        if loader.has("rope_freqs.weight") {
            config.ropeFrequencyFactors = try loader.tensor("rope_freqs.weight", shape: [config.headDim / 2])
            // The factors are llama3 scaling, already applied: a config that also says so must not apply it twice.
            if config.ropeScaling?.kind == .llama3 { config.ropeScaling = nil }
        }
        try config.validate(file: file)
        let gguf = loader.has("token_embd.weight")
        let C = config.hiddenSize, F = config.intermediateSize, V = config.vocabSize
        let qDim = config.numAttentionHeads * config.headDim, kvDim = config.numKeyValueHeads * config.headDim
        func name(_ g: String, _ hf: String) -> String { gguf ? g : hf }
        let embedding = try loader.tensor(name("token_embd.weight", "model.embed_tokens.weight"), shape: [V, C])
        let biases = config.biases
        var blocks: [Block] = []
        for l in 0..<config.numHiddenLayers {
            func tensor(_ index: Int, _ suffix: String, _ shape: [Int]) throws -> [Float] {
                let n = blockTensorNames[index]
                return try loader.tensor(name("blk.\(l).\(n.gguf).\(suffix)", "model.layers.\(l).\(n.hf).\(suffix)"), shape: shape)
            }
            func weight(_ index: Int, _ shape: [Int]) throws -> [Float] {
                serverModules.contains("model.layers.\(l).\(blockTensorNames[index].hf)") ? [] : try tensor(index, "weight", shape)
            }
            func bias(_ index: Int, _ present: Bool, _ n: Int) throws -> [Float]? { present ? try tensor(index, "bias", [n]) : nil }
            blocks.append(Block(
                attentionNorm: try tensor(0, "weight", [C]),
                wq: try weight(1, [qDim, C]), wk: try weight(2, [kvDim, C]), wv: try weight(3, [kvDim, C]), wo: try weight(4, [C, qDim]),
                mlpNorm: try tensor(5, "weight", [C]),
                gate: try weight(6, [F, C]), up: try weight(7, [F, C]), down: try weight(8, [C, F]),
                bq: try bias(1, biases.q, qDim), bk: try bias(2, biases.k, kvDim), bv: try bias(3, biases.v, kvDim),
                bo: try bias(4, biases.o, C), bGate: try bias(6, biases.mlp, F), bUp: try bias(7, biases.mlp, F),
                bDown: try bias(8, biases.mlp, C)))
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
        loader.ignore { $0.hasSuffix("rotary_emb.inv_freq") }
        try loader.checkAllUsed()
        config.tieWordEmbeddings = lmHead == nil
        let model = LlamaModel(config: config, ropeStyle: gguf && ggufPermutesQK(config) ? .interleaved : .halves, embedding: embedding,
                               blocks: blocks, finalNorm: finalNorm, lmHead: lmHead)
        if let file = source as? GGUFFile {  // decode straight from the stored blocks
            let names = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
            model.stored = (blocks: (0..<config.numHiddenLayers).map { l in
                names.map { DecodeMatrix(file, tensor: "blk.\(l).\($0).weight") }
            }, head: DecodeMatrix(file, tensor: lmHead == nil ? "token_embd.weight" : "output.weight"))
        }
        return model
    }
}
