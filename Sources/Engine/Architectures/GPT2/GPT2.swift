import Foundation

/// GPT-2's configuration, with Hugging Face's `config.json` key names.
public struct GPT2Config: Codable, Equatable, Sendable {
    public var vocabSize: Int
    public var nPositions: Int
    public var nEmbd: Int
    public var nLayer: Int
    public var nHead: Int
    public var layerNormEpsilon: Double

    enum CodingKeys: String, CodingKey {
        case vocabSize = "vocab_size", nPositions = "n_positions", nEmbd = "n_embd", nLayer = "n_layer", nHead = "n_head"
        case layerNormEpsilon = "layer_norm_epsilon"
    }

    public init(vocabSize: Int = 50257, nPositions: Int = 1024, nEmbd: Int = 768, nLayer: Int = 12, nHead: Int = 12, layerNormEpsilon: Double = 1e-5) {
        (self.vocabSize, self.nPositions, self.nEmbd, self.nLayer, self.nHead, self.layerNormEpsilon) = (vocabSize, nPositions, nEmbd, nLayer, nHead, layerNormEpsilon)
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        vocabSize = try c.decodeIfPresent(Int.self, forKey: .vocabSize) ?? 50257
        nPositions = try c.decodeIfPresent(Int.self, forKey: .nPositions) ?? 1024
        nEmbd = try c.decodeIfPresent(Int.self, forKey: .nEmbd) ?? 768
        nLayer = try c.decodeIfPresent(Int.self, forKey: .nLayer) ?? 12
        nHead = try c.decodeIfPresent(Int.self, forKey: .nHead) ?? 12
        layerNormEpsilon = try c.decodeIfPresent(Double.self, forKey: .layerNormEpsilon) ?? 1e-5
        // Keys that would change the maths: implemented values pass, any other is refused by name.
        let all = try decoder.container(keyedBy: AnyCodingKey.self)
        func value<T: Decodable>(_ key: String, _ type: T.Type) throws -> T? { try all.decodeIfPresent(T.self, forKey: AnyCodingKey(key)) }
        if let act = try value("activation_function", String.self), !["gelu_new", "gelu_pytorch_tanh"].contains(act) {
            throw ConfigKeyError(key: "activation_function", message: "'\(act)' is not supported (nb's GPT-2 uses the tanh GELU, gelu_new)")
        }
        if let inner = try value("n_inner", Int.self), inner != 4 * nEmbd {
            throw ConfigKeyError(key: "n_inner", message: "\(inner) is not supported (the MLP is 4·n_embd = \(4 * nEmbd) wide)")
        }
        if try value("scale_attn_weights", Bool.self) == false {
            throw ConfigKeyError(key: "scale_attn_weights", message: "false is not supported (attention scores are divided by √head size)")
        }
        for key in ["scale_attn_by_inverse_layer_idx", "add_cross_attention"] where try value(key, Bool.self) == true {
            throw ConfigKeyError(key: key, message: "true is not supported by nb's GPT-2")
        }
    }

    /// The config.json keys GPT-2 reads (the first six) or checks.
    public static let keysRead = ["vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "layer_norm_epsilon",
                                  "activation_function", "n_inner", "scale_attn_weights", "scale_attn_by_inverse_layer_idx",
                                  "add_cross_attention"]
}

/// GPT-2: learned positions, pre-LayerNorm blocks, GELU (tanh) MLP, lm_head tied to the
/// token embedding. Hugging Face stores c_attn, c_proj and c_fc as Conv1D: (in, out).
public final class GPT2Model: LanguageModel {
    public struct Block {
        public var ln1Weight: [Float], ln1Bias: [Float]       // (C)
        public var attnWeight: [Float], attnBias: [Float]     // (C, 3C), (3C)
        public var attnProjWeight: [Float], attnProjBias: [Float] // (C, C), (C)
        public var ln2Weight: [Float], ln2Bias: [Float]       // (C)
        public var fcWeight: [Float], fcBias: [Float]         // (C, 4C), (4C)
        public var fcProjWeight: [Float], fcProjBias: [Float] // (4C, C), (C)
    }

    public let config: GPT2Config
    public var tokenEmbedding: [Float]     // (V, C)
    public var positionEmbedding: [Float]  // (P, C)
    public var blocks: [Block]
    public var finalNormWeight: [Float], finalNormBias: [Float]  // (C)
    /// Decode one token with half-precision copies of the matrices (see ``DecodeMatrix``).
    /// Off: Float32 throughout.
    public var compactDecode = true
    var decodeCopies: (blocks: [[DecodeMatrix]], head: DecodeMatrix)?  // dropped by withWeight(of:_:)

    /// c_attn, attn c_proj, c_fc, mlp c_proj of each block as (out, in), and the lm_head.
    private func decodeMatrices() -> (blocks: [[DecodeMatrix]], head: DecodeMatrix) {
        if let decodeCopies { return decodeCopies }
        let C = config.nEmbd
        let made = (blocks: blocks.map { b in
            [DecodeMatrix(transposing: b.attnWeight, rows: 3 * C, columns: C), DecodeMatrix(transposing: b.attnProjWeight, rows: C, columns: C),
             DecodeMatrix(transposing: b.fcWeight, rows: 4 * C, columns: C), DecodeMatrix(transposing: b.fcProjWeight, rows: C, columns: 4 * C)]
        }, head: DecodeMatrix(tokenEmbedding, rows: config.vocabSize, columns: C))
        decodeCopies = made
        return made
    }

    /// The bytes of weights one decoded token reads, per format.
    public var decodeBytesPerToken: [DecodeMatrix.Format: Int] {
        let w = decodeMatrices()
        return DecodeMatrix.bytesByFormat(w.blocks.flatMap { $0 } + [w.head])
    }

    public var architecture: String { "gpt2" }
    public var vocabularySize: Int { config.vocabSize }
    public var contextLength: Int { config.nPositions }
    public var layerCount: Int { config.nLayer }
    public var hiddenSize: Int { config.nEmbd }
    public var parameterCount: Int {
        tokenEmbedding.count + positionEmbedding.count + finalNormWeight.count + finalNormBias.count + blocks.reduce(0) { s, b in
            s + b.ln1Weight.count + b.ln1Bias.count + b.attnWeight.count + b.attnBias.count + b.attnProjWeight.count
                + b.attnProjBias.count + b.ln2Weight.count + b.ln2Bias.count + b.fcWeight.count + b.fcBias.count
                + b.fcProjWeight.count + b.fcProjBias.count
        }
    }

    public init(config: GPT2Config, tokenEmbedding: [Float], positionEmbedding: [Float], blocks: [Block],
                finalNormWeight: [Float], finalNormBias: [Float]) {
        self.config = config
        self.tokenEmbedding = tokenEmbedding
        self.positionEmbedding = positionEmbedding
        self.blocks = blocks
        self.finalNormWeight = finalNormWeight
        self.finalNormBias = finalNormBias
    }

    public func makeCache(capacity: Int) -> KVCache {
        KVCache(layers: config.nLayer, kvDim: config.nEmbd, capacity: capacity)
    }

    public func forward(_ tokens: [Int], cache: KVCache, allPositions: Bool) -> [Float] {
        forward(tokens, cache: cache, allPositions: allPositions, hooks: nil)
    }

    /// The forward above with every linear layer run as the training pass runs it when
    /// `hooks` is given: its backend (quantized or encrypted products) and its hooks (a LoRA
    /// adapter) — for generation with a KV cache through those layers.
    public func forward(_ tokens: [Int], cache: KVCache, allPositions: Bool, hooks: LinearHooks<Float>?) -> [Float] {
        let T = tokens.count, C = config.nEmbd, V = config.vocabSize, H = config.nHead, hd = C / H
        let start = cache.length
        precondition(T > 0, "forward needs at least one token")
        precondition(start + T <= config.nPositions, "GPT-2 has \(config.nPositions) positions; asked for \(start + T)")
        for t in tokens { precondition(t >= 0 && t < V, "token \(t) outside vocabulary 0..<\(V)") }
        cache.reserve(start + T)
        let eps = Float(config.layerNormEpsilon)

        var x = [Float](repeating: 0, count: T * C)       // (T, C)
        var h = [Float](repeating: 0, count: T * C)
        var qkv = [Float](repeating: 0, count: T * 3 * C) // (T, 3C)
        var q = [Float](repeating: 0, count: T * C)
        var att = [Float](repeating: 0, count: T * C)
        var proj = [Float](repeating: 0, count: T * C)
        var fc = [Float](repeating: 0, count: T * 4 * C)  // (T, 4C)
        var scores = [Float](repeating: 0, count: T * (start + T))
        let halves = T == 1 && compactDecode && hooks == nil ? decodeMatrices() : nil
        let named = hooks == nil ? nil : trainingWeights(as: Float.self)
        /// y = x·W + b (Conv1D) through the hooks (as `layer`), or the decode copy when decoding.
        func project(_ layer: LinearLayer?, _ x: [Float], _ w: [Float], _ bias: [Float], _ hw: DecodeMatrix?, _ y: inout [Float], _ k: Int, _ n: Int) {
            if let hooks, let layer {
                hooks.linearForward(layer, x, weight: w, bias: bias, layout: .inOut, &y)
            } else if let hw {
                y.withUnsafeMutableBufferPointer { $0.baseAddress!.update(from: bias, count: n) }
                x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { hw.apply(xp.baseAddress!, $0.baseAddress!, accumulate: true) } }
            } else {
                Layers.conv1D(x, w, bias: bias, &y, rows: T, inFeatures: k, outFeatures: n)
            }
        }
        for (i, t) in tokens.enumerated() {
            for c in 0..<C { x[i * C + c] = tokenEmbedding[t * C + c] + positionEmbedding[(start + i) * C + c] }
        }
        for (l, b) in blocks.enumerated() {
            Layers.layerNorm(x, weight: b.ln1Weight, bias: b.ln1Bias, &h, rows: T, width: C, eps: eps)
            let hb = halves?.blocks[l]
            let lin = named?.linearLayers(block: l)
            project(lin?.attention, h, b.attnWeight, b.attnBias, hb?[0], &qkv, C, 3 * C)
            cache.keys[l].withUnsafeMutableBufferPointer { kc in
                cache.values[l].withUnsafeMutableBufferPointer { vc in
                    for i in 0..<T {
                        for c in 0..<C {
                            q[i * C + c] = qkv[i * 3 * C + c]
                            kc[(start + i) * C + c] = qkv[i * 3 * C + C + c]
                            vc[(start + i) * C + c] = qkv[i * 3 * C + 2 * C + c]
                        }
                    }
                }
            }
            cache.keys[l].withUnsafeBufferPointer { kc in
                cache.values[l].withUnsafeBufferPointer { vc in
                    causalAttention(q: q, keys: kc.baseAddress!, values: vc.baseAddress!, out: &att, t: T, start: start,
                                    heads: H, kvHeads: H, headDim: hd, scores: &scores)
                }
            }
            project(lin?.attentionProjection, att, b.attnProjWeight, b.attnProjBias, hb?[1], &proj, C, C)
            Layers.add(&x, proj, count: T * C)
            Layers.layerNorm(x, weight: b.ln2Weight, bias: b.ln2Bias, &h, rows: T, width: C, eps: eps)
            project(lin?.fc, h, b.fcWeight, b.fcBias, hb?[2], &fc, C, 4 * C)
            Layers.geluTanh(&fc, count: T * 4 * C)
            project(lin?.fcProjection, fc, b.fcProjWeight, b.fcProjBias, hb?[3], &proj, 4 * C, C)
            Layers.add(&x, proj, count: T * C)
        }
        cache.length = start + T
        let rows = allPositions ? T : 1, first = allPositions ? 0 : T - 1
        var normed = [Float](repeating: 0, count: rows * C)
        x.withUnsafeBufferPointer { xp in
            Layers.layerNorm(xp.baseAddress! + first * C, weight: finalNormWeight, bias: finalNormBias, &normed, rows: rows, width: C, eps: eps)
        }
        var logits = [Float](repeating: 0, count: rows * V)
        if let halves, rows == 1 {
            normed.withUnsafeBufferPointer { n in logits.withUnsafeMutableBufferPointer { halves.head.apply(n.baseAddress!, $0.baseAddress!) } }
        } else {
            Layers.linear(normed, tokenEmbedding, &logits, rows: rows, inFeatures: C, outFeatures: V)
        }
        return logits
    }
}

extension GPT2Model {
    /// Loads Hugging Face GPT-2 tensors, with or without the `transformer.` prefix
    /// (GPT2LMHeadModel vs GPT2Model checkpoints). A stored `lm_head.weight` must be the
    /// tied embedding; the causal-mask buffers of old checkpoints are ignored.
    /// `serverModules`: linear modules (Hugging Face names) whose weights are on a server and
    /// absent from `source` (a deployment's client folder); they load as empty arrays.
    public static func load(from source: TensorSource, config: GPT2Config, file: String, serverModules: Set<String> = []) throws -> GPT2Model {
        var loader = StrictTensorLoader(source: source, file: file)
        let prefix = loader.has("transformer.wte.weight") ? "transformer." : ""
        let C = config.nEmbd, V = config.vocabSize, P = config.nPositions
        if config.nHead <= 0 || C % config.nHead != 0 {
            throw ModelLoadError.badConfig(file: file, key: "n_head", message: "\(config.nHead) does not divide n_embd \(C)")
        }
        let wte = try loader.tensor(prefix + "wte.weight", shape: [V, C])
        let wpe = try loader.tensor(prefix + "wpe.weight", shape: [P, C])
        var blocks: [Block] = []
        for l in 0..<config.nLayer {
            let p = "\(prefix)h.\(l)."
            blocks.append(Block(
                ln1Weight: try loader.tensor(p + "ln_1.weight", shape: [C]), ln1Bias: try loader.tensor(p + "ln_1.bias", shape: [C]),
                attnWeight: serverModules.contains("transformer.h.\(l).attn.c_attn") ? [] : try loader.tensor(p + "attn.c_attn.weight", shape: [C, 3 * C]),
                attnBias: try loader.tensor(p + "attn.c_attn.bias", shape: [3 * C]),
                attnProjWeight: serverModules.contains("transformer.h.\(l).attn.c_proj") ? [] : try loader.tensor(p + "attn.c_proj.weight", shape: [C, C]),
                attnProjBias: try loader.tensor(p + "attn.c_proj.bias", shape: [C]),
                ln2Weight: try loader.tensor(p + "ln_2.weight", shape: [C]), ln2Bias: try loader.tensor(p + "ln_2.bias", shape: [C]),
                fcWeight: serverModules.contains("transformer.h.\(l).mlp.c_fc") ? [] : try loader.tensor(p + "mlp.c_fc.weight", shape: [C, 4 * C]),
                fcBias: try loader.tensor(p + "mlp.c_fc.bias", shape: [4 * C]),
                fcProjWeight: serverModules.contains("transformer.h.\(l).mlp.c_proj") ? [] : try loader.tensor(p + "mlp.c_proj.weight", shape: [4 * C, C]),
                fcProjBias: try loader.tensor(p + "mlp.c_proj.bias", shape: [C])))
        }
        let lnfW = try loader.tensor(prefix + "ln_f.weight", shape: [C])
        let lnfB = try loader.tensor(prefix + "ln_f.bias", shape: [C])
        if loader.has("lm_head.weight") {
            let head = try loader.tensor("lm_head.weight", shape: [V, C])
            if head != wte { throw ModelLoadError.badConfig(file: file, key: "lm_head.weight", message: "GPT-2's lm_head must be tied to wte") }
        }
        loader.ignore { $0.hasSuffix(".attn.bias") || $0.hasSuffix(".attn.masked_bias") }
        try loader.checkAllUsed()
        return GPT2Model(config: config, tokenEmbedding: wte, positionEmbedding: wpe, blocks: blocks, finalNormWeight: lnfW, finalNormBias: lnfB)
    }
}
