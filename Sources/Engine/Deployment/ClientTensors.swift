import Foundation

extension GPT2Model {
    /// The tensors a deployment's client keeps, in Hugging Face names: embeddings, norms,
    /// every bias, and the weights of the linear modules not in `serverModules`.
    public func clientTensors(excluding serverModules: Set<String>) -> [(name: String, shape: [Int], values: [Float])] {
        let C = config.nEmbd
        var out: [(name: String, shape: [Int], values: [Float])] = [
            ("transformer.wte.weight", [config.vocabSize, C], tokenEmbedding),
            ("transformer.wpe.weight", [config.nPositions, C], positionEmbedding),
        ]
        for (l, b) in blocks.enumerated() {
            let p = "transformer.h.\(l)."
            func linear(_ kind: String, _ shape: [Int], _ w: [Float], _ bias: [Float]) {
                if !serverModules.contains(p + kind) { out.append((p + kind + ".weight", shape, w)) }
                out.append((p + kind + ".bias", [shape[1]], bias))
            }
            out.append((p + "ln_1.weight", [C], b.ln1Weight)); out.append((p + "ln_1.bias", [C], b.ln1Bias))
            linear("attn.c_attn", [C, 3 * C], b.attnWeight, b.attnBias)
            linear("attn.c_proj", [C, C], b.attnProjWeight, b.attnProjBias)
            out.append((p + "ln_2.weight", [C], b.ln2Weight)); out.append((p + "ln_2.bias", [C], b.ln2Bias))
            linear("mlp.c_fc", [C, 4 * C], b.fcWeight, b.fcBias)
            linear("mlp.c_proj", [4 * C, C], b.fcProjWeight, b.fcProjBias)
        }
        out.append(("transformer.ln_f.weight", [C], finalNormWeight)); out.append(("transformer.ln_f.bias", [C], finalNormBias))
        return out
    }
}

extension LlamaModel {
    /// The tensors a deployment's client keeps: embeddings, norms, the lm_head when untied,
    /// and the weights of the linear modules not in `serverModules`. Names follow the row
    /// order of q_proj and k_proj: GGUF's names for a model read from GGUF (interleaved
    /// RoPE), Hugging Face's otherwise, so that loading them picks the same RoPE layout.
    public func clientTensors(excluding serverModules: Set<String>) -> [(name: String, shape: [Int], values: [Float])] {
        let gguf = ropeStyle == .interleaved
        let C = config.hiddenSize, F = config.intermediateSize, V = config.vocabSize
        let q = config.numAttentionHeads * config.headDim, kv = config.numKeyValueHeads * config.headDim
        func name(_ g: String, _ hf: String) -> String { gguf ? g : hf }
        var out: [(name: String, shape: [Int], values: [Float])] = [(name("token_embd.weight", "model.embed_tokens.weight"), [V, C], embedding)]
        for (l, b) in blocks.enumerated() {
            let gp = "blk.\(l).", hp = "model.layers.\(l)."
            func linear(_ g: String, _ module: String, _ shape: [Int], _ w: [Float]) {
                if !serverModules.contains(hp + module) { out.append((name(gp + g + ".weight", hp + module + ".weight"), shape, w)) }
            }
            out.append((name(gp + "attn_norm.weight", hp + "input_layernorm.weight"), [C], b.attentionNorm))
            linear("attn_q", "self_attn.q_proj", [q, C], b.wq)
            linear("attn_k", "self_attn.k_proj", [kv, C], b.wk)
            linear("attn_v", "self_attn.v_proj", [kv, C], b.wv)
            linear("attn_output", "self_attn.o_proj", [C, q], b.wo)
            out.append((name(gp + "ffn_norm.weight", hp + "post_attention_layernorm.weight"), [C], b.mlpNorm))
            linear("ffn_gate", "mlp.gate_proj", [F, C], b.gate)
            linear("ffn_up", "mlp.up_proj", [F, C], b.up)
            linear("ffn_down", "mlp.down_proj", [C, F], b.down)
        }
        out.append((name("output_norm.weight", "model.norm.weight"), [C], finalNorm))
        if let lmHead { out.append((name("output.weight", "lm_head.weight"), [V, C], lmHead)) }
        return out
    }
}

/// A tokenizer's whole vocabulary as data: what a deployment's client folder stores.
public struct TokenizerVocabulary: Codable, Equatable, Sendable {
    /// Token strings in GPT-2's byte-to-unicode alphabet, by id (special tokens literally).
    public var tokens: [String]
    /// `"a b"` in rank order.
    public var merges: [String]
    public var specialTokens: [String: Int]
    public var preTokenizer: String
    public var bosTokenID: Int?
    public var eosTokenID: Int?
    public var padTokenID: Int?
    public var addBOS: Bool
}

extension BPETokenizer {
    /// A tokenizer from its vocabulary; `source` names the file in errors.
    public static func from(_ v: TokenizerVocabulary, source: String) throws(TokenizerError) -> BPETokenizer {
        guard let pre = PreTokenizer(rawValue: v.preTokenizer) else {
            throw .unsupportedPreTokenizer(location: "\(source): preTokenizer", name: v.preTokenizer, known: PreTokenizer.allCases.map(\.rawValue))
        }
        var pairs: [(String, String)] = []
        for (i, m) in v.merges.enumerated() { pairs.append(try splitMerge(m, location: "\(source): merges[\(i)]")) }
        return try BPETokenizer(validating: v.tokens, merges: pairs, mergeLocation: { "\(source): merges[\($0)]" }, source: source,
                                preTokenizer: pre, specialTokens: v.specialTokens, bosTokenID: v.bosTokenID, eosTokenID: v.eosTokenID,
                                padTokenID: v.padTokenID, addBOS: v.addBOS)
    }
}
