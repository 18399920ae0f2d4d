import Foundation

extension ModelFamily {
    /// Llama 2/3.x, Qwen2/Qwen2.5 and Mistral: config.json `model_type` llama, qwen2, mistral;
    /// GGUF architectures llama and qwen2.
    public static let llama = ModelFamily(
        name: "llama", modelTypes: LlamaConfig.modelTypes, ggufArchitectures: ["llama", "qwen2"],
        loadTensors: { source, config, file, serverModules in
            try LlamaModel.load(from: source, config: JSONDecoder().decode(LlamaConfig.self, from: config), file: file, serverModules: serverModules)
        },
        loadGGUF: { file, path in try LlamaModel.load(from: file, config: LlamaConfig(gguf: file, path: path), file: path) })
}

extension LlamaConfig {
    /// The config from a GGUF's metadata (`<arch>.embedding_length`, …), as llama.cpp's
    /// converter writes it for Llama and Qwen2. A Llama 3 file's scaling is its
    /// `rope_freqs.weight` tensor (read by ``LlamaModel/load(from:config:file:serverModules:)``);
    /// `rope.scaling.type` linear is read here, and any other scaling is refused by name.
    init(gguf file: GGUFFile, path: String) throws {
        let m = file.metadata
        let arch = m["general.architecture"]?.string ?? "?"
        func int(_ key: String) throws -> Int {
            guard let v = m["\(arch).\(key)"]?.int else { throw ModelLoadError.badConfig(file: path, key: "\(arch).\(key)", message: "missing or not an integer") }
            return v
        }
        guard let embeddingShape = file.shape(of: "token_embd.weight"), embeddingShape.count == 2 else {
            throw ModelLoadError.missingTensor(file: path, tensor: "token_embd.weight")
        }
        let heads = try int("attention.head_count")
        let hidden = try int("embedding_length")
        var scaling: RoPEScaling?
        if let type = m["\(arch).rope.scaling.type"]?.string, type != "none" {
            guard type == "linear", let factor = m["\(arch).rope.scaling.factor"]?.double else {
                throw ModelLoadError.badConfig(file: path, key: "\(arch).rope.scaling.type", message: "'\(type)' is not supported (nb reads linear scaling from GGUF metadata, and Llama 3's from rope_freqs.weight)")
            }
            scaling = RoPEScaling(kind: .linear, factor: factor)
        }
        if let rotary = m["\(arch).rope.dimension_count"]?.int, let keyLength = m["\(arch).attention.key_length"]?.int ?? Optional(hidden / max(heads, 1)),
           rotary != keyLength {
            throw ModelLoadError.badConfig(file: path, key: "\(arch).rope.dimension_count", message: "\(rotary) rotary dimensions of a \(keyLength)-wide head: partial rotary embeddings are not supported")
        }
        self.init(vocabSize: embeddingShape[0], hiddenSize: hidden, intermediateSize: try int("feed_forward_length"),
                  numHiddenLayers: try int("block_count"), numAttentionHeads: heads,
                  numKeyValueHeads: m["\(arch).attention.head_count_kv"]?.int ?? heads,
                  rmsNormEps: m["\(arch).attention.layer_norm_rms_epsilon"]?.double ?? 1e-5,
                  ropeTheta: m["\(arch).rope.freq_base"]?.double ?? (arch == "qwen2" ? 1_000_000 : 10000),
                  maxPositionEmbeddings: try int("context_length"), tieWordEmbeddings: file.shape(of: "output.weight") == nil,
                  modelType: arch, headDim: m["\(arch).attention.key_length"]?.int, ropeScaling: scaling,
                  // Biases are optional tensors in llama.cpp's layout: their presence says which there are.
                  attentionBias: file.shape(of: "blk.0.attn_output.bias") != nil, qkvBias: file.shape(of: "blk.0.attn_q.bias") != nil,
                  mlpBias: file.shape(of: "blk.0.ffn_up.bias") != nil)
        if let window = m["\(arch).attention.sliding_window"]?.int, window > 0, window < maxPositionEmbeddings {
            throw ModelLoadError.badConfig(file: path, key: "\(arch).attention.sliding_window", message: "\(window): a sliding window is not read from GGUF files")
        }
    }
}
