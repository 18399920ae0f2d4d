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
        // Hugging Face's names; Q/K rows (and biases) of a model read from GGUF put back in Hugging Face's order.
        let modules = Dictionary(uniqueKeysWithValues: config.linearModules.map { ($0.name, $0) })
        let out: ExportTensors = namedTensors(gguf: false).map { t in
            guard ropeStyle == .interleaved, let m = modules[t.name.replacingOccurrences(of: ".weight", with: "").replacingOccurrences(of: ".bias", with: "")],
                  m.kind == .query || m.kind == .key else { return t }
            return (t.name, t.shape, reordered(t.values, module: m, columns: t.shape.count == 2 ? t.shape[1] : 1, toHF: true))
        }
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
        // llama.cpp's names; a Hugging Face model's Q/K rows (and biases) permuted for llama.cpp's interleaved RoPE.
        let modules = Dictionary(uniqueKeysWithValues: config.linearModules.map { m in
            ("blk.\(m.layer).\(Self.blockTensorNames.first { $0.hf == m.kind.rawValue }!.gguf)", m)
        })
        var out: ExportTensors = namedTensors(gguf: true).filter { $0.name != "rope_freqs.weight" }.map { t in
            guard permute, let m = modules[t.name.replacingOccurrences(of: ".weight", with: "").replacingOccurrences(of: ".bias", with: "")],
                  m.kind == .query || m.kind == .key else { return t }
            return (t.name, t.shape, reordered(t.values, module: m, columns: t.shape.count == 2 ? t.shape[1] : 1, toHF: false))
        }
        if let factors { out.insert(("rope_freqs.weight", [factors.count], factors), at: 1) }
        return (arch, meta, out)
    }
}
