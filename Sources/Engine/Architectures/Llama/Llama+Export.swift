import Foundation

extension LlamaModel: ExportableModel {
    /// transformers' class for each model type.
    static let huggingFaceClasses = ["llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"]

    /// Q/K rows (and biases) from this model's stored order to Hugging Face's (`toHF`) or to llama.cpp's.
    func reordered(_ values: [Float], module: LinearModule, columns: Int, toHF: Bool) -> [Float] {
        var m = module
        m.ggufRoPEHeadDim = config.headDim
        return m.huggingFaceRowOrder(values, columns: columns, toHF: toHF)
    }

    /// The tensors in Hugging Face's names and Q/K row order; config.json's keys.
    public func huggingFaceCheckpoint() throws -> (tensors: ExportTensors, config: [String: Any]) {
        if config.ropeFrequencyFactors != nil {
            throw ExportError.unsupported(format: "safetensors", reason: "this model's RoPE scaling is llama.cpp's rope_freqs.weight factors, which config.json cannot state (export it as GGUF)")
        }
        let C = config.hiddenSize, F = config.intermediateSize, V = config.vocabSize
        let q = config.numAttentionHeads * config.headDim, kv = config.numKeyValueHeads * config.headDim
        let fromGGUF = ropeStyle == .interleaved
        let modules = config.linearModules
        var out: ExportTensors = [("model.embed_tokens.weight", [V, C], embedding)]
        for (l, b) in blocks.enumerated() {
            let p = "model.layers.\(l)."
            let byKind = Dictionary(uniqueKeysWithValues: modules.filter { $0.layer == l }.map { ($0.kind, $0) })
            func linear(_ kind: LinearModule.Kind, _ shape: [Int], _ w: [Float], _ bias: [Float]?) {
                let m = byKind[kind]!
                let rotary = fromGGUF && (kind == .query || kind == .key)
                out.append((m.name + ".weight", shape, rotary ? reordered(w, module: m, columns: shape[1], toHF: true) : w))
                if let bias { out.append((m.name + ".bias", [shape[0]], rotary ? reordered(bias, module: m, columns: 1, toHF: true) : bias)) }
            }
            out.append((p + "input_layernorm.weight", [C], b.attentionNorm))
            linear(.query, [q, C], b.wq, b.bq)
            linear(.key, [kv, C], b.wk, b.bk)
            linear(.value, [kv, C], b.wv, b.bv)
            linear(.output, [C, q], b.wo, b.bo)
            out.append((p + "post_attention_layernorm.weight", [C], b.mlpNorm))
            linear(.gate, [F, C], b.gate, b.bGate)
            linear(.up, [F, C], b.up, b.bUp)
            linear(.down, [C, F], b.down, b.bDown)
        }
        out.append(("model.norm.weight", [C], finalNorm))
        if let lmHead { out.append(("lm_head.weight", [V, C], lmHead)) }
        var keys = try JSONSerialization.jsonObject(with: configJSON()) as? [String: Any] ?? [:]
        keys["architectures"] = [Self.huggingFaceClasses[config.modelType] ?? "LlamaForCausalLM"]
        keys["hidden_act"] = "silu"
        keys["tie_word_embeddings"] = lmHead == nil
        keys["head_dim"] = config.headDim
        switch config.modelType {
        case "qwen2": keys["use_sliding_window"] = false
        case "mistral": keys["sliding_window"] = config.slidingWindow ?? NSNull()
        default: break
        }
        return (out, keys)
    }

    /// llama.cpp's layout: Llama and Mistral as `llama` with Q/K rows permuted for its
    /// interleaved RoPE and llama3 scaling as `rope_freqs.weight`; Qwen2 as `qwen2`.
    public func ggufCheckpoint() throws -> (architecture: String, metadata: [(key: String, value: GGUFValue)], tensors: ExportTensors) {
        if let w = config.slidingWindow {
            throw ExportError.unsupported(format: "gguf", reason: "a sliding window (\(w)) is not part of llama.cpp's llama metadata")
        }
        let arch = config.modelType == "qwen2" ? "qwen2" : "llama"
        let permute = arch == "llama" && ropeStyle == .halves
        var meta: [(key: String, value: GGUFValue)] = [
            ("\(arch).context_length", .uint32(UInt32(config.maxPositionEmbeddings))),
            ("\(arch).embedding_length", .uint32(UInt32(config.hiddenSize))),
            ("\(arch).block_count", .uint32(UInt32(config.numHiddenLayers))),
            ("\(arch).feed_forward_length", .uint32(UInt32(config.intermediateSize))),
            ("\(arch).attention.head_count", .uint32(UInt32(config.numAttentionHeads))),
            ("\(arch).attention.head_count_kv", .uint32(UInt32(config.numKeyValueHeads))),
            ("\(arch).rope.freq_base", .float32(Float(config.ropeTheta))),
            ("\(arch).attention.layer_norm_rms_epsilon", .float32(Float(config.rmsNormEps))),
            ("\(arch).rope.dimension_count", .uint32(UInt32(config.headDim))),
            ("\(arch).attention.key_length", .uint32(UInt32(config.headDim))),
            ("\(arch).attention.value_length", .uint32(UInt32(config.headDim))),
        ]
        var factors = config.ropeFrequencyFactors
        if let s = config.ropeScaling {
            switch s.kind {
            case .linear:
                meta += [("\(arch).rope.scaling.type", .string("linear")), ("\(arch).rope.scaling.factor", .float32(Float(s.factor)))]
            case .llama3:
                var plain = config
                plain.ropeScaling = nil
                let base = plain.ropeInverseFrequencies(sequenceLength: 0), scaled = config.ropeInverseFrequencies(sequenceLength: 0)
                factors = zip(base, scaled).map { $0 / $1 }
            case .dynamic:
                throw ExportError.unsupported(format: "gguf", reason: "dynamic RoPE scaling is not part of llama.cpp's metadata")
            }
        }
        let C = config.hiddenSize, F = config.intermediateSize, V = config.vocabSize
        let q = config.numAttentionHeads * config.headDim, kv = config.numKeyValueHeads * config.headDim
        var out: ExportTensors = [("token_embd.weight", [V, C], embedding)]
        if let factors { out.append(("rope_freqs.weight", [factors.count], factors)) }
        let modules = config.linearModules
        for (l, b) in blocks.enumerated() {
            let byKind = Dictionary(uniqueKeysWithValues: modules.filter { $0.layer == l }.map { ($0.kind, $0) })
            func linear(_ g: String, _ kind: LinearModule.Kind, _ shape: [Int], _ w: [Float], _ bias: [Float]?) {
                let rotary = permute && (kind == .query || kind == .key)
                out.append(("blk.\(l).\(g).weight", shape, rotary ? reordered(w, module: byKind[kind]!, columns: shape[1], toHF: false) : w))
                if let bias { out.append(("blk.\(l).\(g).bias", [shape[0]], rotary ? reordered(bias, module: byKind[kind]!, columns: 1, toHF: false) : bias)) }
            }
            out.append(("blk.\(l).attn_norm.weight", [C], b.attentionNorm))
            linear("attn_q", .query, [q, C], b.wq, b.bq)
            linear("attn_k", .key, [kv, C], b.wk, b.bk)
            linear("attn_v", .value, [kv, C], b.wv, b.bv)
            linear("attn_output", .output, [C, q], b.wo, b.bo)
            out.append(("blk.\(l).ffn_norm.weight", [C], b.mlpNorm))
            linear("ffn_gate", .gate, [F, C], b.gate, b.bGate)
            linear("ffn_up", .up, [F, C], b.up, b.bUp)
            linear("ffn_down", .down, [C, F], b.down, b.bDown)
        }
        out.append(("output_norm.weight", [C], finalNorm))
        if let lmHead { out.append(("output.weight", [V, C], lmHead)) }
        return (arch, meta, out)
    }
}
