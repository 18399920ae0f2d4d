import Engine
import Foundation
import Testing

/// The LLaMA family's variants against transformers: Llama 3.x rope scaling and explicit
/// head_dim, linear and dynamic scaling with attention and MLP biases, Qwen2's q/k/v biases,
/// Mistral's sliding window — fixtures and their generator in Fixtures/reference
/// (make_family_goldens.py) — and the config keys each family reads or refuses.
@Suite struct ModelFamilyTests {
    static let families = ["tiny-llama3", "tiny-llama-linear", "tiny-llama-dynamic", "tiny-qwen2", "tiny-mistral"]

    static func model(_ dir: String) throws -> TrainableModel {
        let url = ModelGoldenTests.fixtures.appendingPathComponent(dir)
        return try ModelFamily.load(tensors: try SafeTensorsCheckpoint(directory: url), config: Data(contentsOf: url.appendingPathComponent("config.json")),
                                    configFile: dir + "/config.json", file: dir)
    }

    /// Float32 logits within 1e-5 of the logit range at every position, through the inference
    /// pass (KV cache) and the training pass; within 2e-3 token by token through the
    /// half-precision decode copies.
    func checkLogits(_ model: TrainableModel, fixture: String) throws {
        let f = try ModelGoldenTests.json(fixture + "-logits.json", as: ModelGoldenTests.LogitsFixture.self)
        let llama = try #require(model as? LlamaModel)
        for s in f.sequences {
            let reference = s.logits.flatMap { $0 }
            llama.compactDecode = false
            let cached = model.forward(s.ids, cache: model.makeCache(capacity: s.ids.count), allPositions: true)
            let (error, index) = ModelGoldenTests.compare(cached, reference)
            #expect(error < 1e-5, "\(fixture), \(s.ids.count) tokens, inference pass: max error \(error) of the logit range at \(index)")
            let trained = llama.forwardForTraining(tokens: s.ids, batchSize: 1).logits
            let (trainError, trainIndex) = ModelGoldenTests.compare(trained, reference)
            #expect(trainError < 1e-5, "\(fixture), \(s.ids.count) tokens, training pass: max error \(trainError) of the logit range at \(trainIndex)")
            // Token by token through the cache, half-precision decode copies (within 2e-3: the
            // weights are rounded to 11 bits). Not past dynamic scaling's trained positions, where
            // cached keys keep the frequencies of the length they were computed at, by design.
            if llama.config.ropeScaling?.kind == .dynamic && s.ids.count > llama.config.maxPositionEmbeddings { continue }
            llama.compactDecode = true
            let cache = model.makeCache(capacity: s.ids.count)
            var stepped: [Float] = []
            for t in s.ids { stepped += model.forward([t], cache: cache, allPositions: false) }
            let (halfError, _) = ModelGoldenTests.compare(stepped, reference)
            #expect(halfError < 2e-3, "\(fixture), \(s.ids.count) tokens one at a time, half decode: max error \(halfError)")
        }
        llama.compactDecode = true
    }

    @Test(arguments: families) func logitsAndGreedyContinuationsMatchTransformers(fixture: String) throws {
        let model = try Self.model(fixture)
        try checkLogits(model, fixture: fixture)
        (model as? LlamaModel)?.compactDecode = false
        try ModelGoldenTests().checkGeneration(model, fixture: fixture + "-generation.json")
    }

    @Test func configsSayWhatTheyAre() throws {
        let llama3 = try #require(try Self.model("tiny-llama3") as? LlamaModel)
        #expect(llama3.config.headDim == 24 && llama3.config.hiddenSize / llama3.config.numAttentionHeads == 16)
        #expect(llama3.config.ropeScaling?.kind == .llama3 && llama3.lmHead == nil)
        let qwen = try #require(try Self.model("tiny-qwen2") as? LlamaModel)
        #expect(qwen.architecture == "qwen2" && qwen.blocks[0].bq != nil && qwen.blocks[0].bo == nil && qwen.config.slidingWindow == nil)
        let mistral = try #require(try Self.model("tiny-mistral") as? LlamaModel)
        #expect(mistral.architecture == "mistral" && mistral.config.slidingWindow == 6)
        let dynamic = try Self.model("tiny-llama-dynamic")
        #expect(dynamic.contextLength == 32)  // 16 positions × factor 2
        let linear = try #require(try Self.model("tiny-llama-linear") as? LlamaModel)
        #expect(linear.blocks[1].bo != nil && linear.blocks[1].bDown != nil)
        #expect(linear.bias(of: linear.linearModules[3]) == linear.blocks[0].bo)
    }

    /// The same models as llama.cpp's converter writes them: Llama 3 with its permuted Q/K
    /// rows and `rope_freqs.weight`, Qwen2 with HF's rows and its biases.
    @Test(arguments: ["tiny-llama3", "tiny-qwen2"]) func ggufGivesTheSameLogits(fixture: String) throws {
        let loaded = try LoadedModel.load(try ModelCatalog.locate(try cachedFixtureURL(fixture + ".gguf").path))
        let llama = try #require(loaded.model as? LlamaModel)
        #expect(llama.ropeStyle == (fixture == "tiny-qwen2" ? .halves : .interleaved))
        #expect(llama.architecture == (fixture == "tiny-qwen2" ? "qwen2" : "llama"))
        if fixture == "tiny-llama3" { #expect(llama.config.ropeFrequencyFactors?.count == 12 && llama.config.headDim == 24) }
        try checkLogits(llama, fixture: fixture)
        llama.compactDecode = false
        try ModelGoldenTests().checkGeneration(llama, fixture: fixture + "-generation.json")
    }

    // MARK: - Config keys

    nonisolated(unsafe) static let llamaBase: [String: Any] = [
        "model_type": "llama", "vocab_size": 300, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 64, "tie_word_embeddings": false, "hidden_act": "silu", "attention_dropout": 0.0,
    ]

    static func decodeLlama(_ changes: [String: Any]) throws -> LlamaConfig {
        let object = llamaBase.merging(changes) { $1 }
        let data = try JSONSerialization.data(withJSONObject: object)
        return try ModelFamilyTestsSupport.decode(data)
    }

    /// Each unsupported value fails naming its key; each supported one loads.
    @Test func everyKeyThatChangesTheMathsIsImplementedOrRefusedByName() throws {
        let refused: [(changes: [String: Any], key: String)] = [
            (["rope_scaling": ["rope_type": "yarn", "factor": 4.0]], "rope_scaling.rope_type"),
            (["rope_scaling": ["rope_type": "longrope", "factor": 4.0]], "rope_scaling.rope_type"),
            (["rope_scaling": ["rope_type": "linear", "factor": 4.0, "attention_factor": 0.5]], "rope_scaling.attention_factor"),
            (["rope_scaling": ["rope_type": "llama3", "factor": 8.0]], "rope_scaling"),
            (["rope_scaling": ["rope_type": "linear", "factor": 0.5]], "rope_scaling.factor"),
            (["hidden_act": "gelu"], "hidden_act"),
            (["attention_dropout": 0.1], "attention_dropout"),
            (["partial_rotary_factor": 0.5], "partial_rotary_factor"),
            (["sliding_window": 128], "sliding_window"),
            (["model_type": "qwen2", "use_sliding_window": true, "sliding_window": 32], "use_sliding_window"),
            (["model_type": "gemma"], "model_type"),
            (["qk_layernorm": true], "qk_layernorm"),
            (["attn_logit_softcapping": 50.0], "attn_logit_softcapping"),
            (["final_logit_softcapping": 30.0], "final_logit_softcapping"),
            (["logits_scaling": 8.0], "logits_scaling"),
            (["residual_multiplier": 0.22], "residual_multiplier"),
            (["quantization_config": ["quant_method": "gptq"]], "quantization_config"),
        ]
        for (changes, key) in refused {
            do {
                _ = try Self.decodeLlama(changes)
                Issue.record("\(changes) was accepted")
            } catch let e as ModelLoadError {
                guard case .badConfig(_, let named, _) = e else { Issue.record("\(changes): \(e)"); continue }
                #expect(named == key, "\(changes): the error names \(named), expected \(key): \(e)")
            }
        }
        let accepted: [[String: Any]] = [
            ["rope_scaling": ["rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192]],
            ["rope_scaling": ["type": "linear", "factor": 2.0]], ["rope_scaling": ["rope_type": "dynamic", "factor": 2.0]],
            ["rope_scaling": ["rope_type": "default"]], ["rope_scaling": NSNull()],
            ["head_dim": 32], ["attention_bias": true, "mlp_bias": true], ["model_type": "qwen2", "use_sliding_window": false, "sliding_window": 4096],
            ["model_type": "mistral", "sliding_window": 4096], ["model_type": "mistral", "sliding_window": NSNull()],
            ["partial_rotary_factor": 1.0], ["pretraining_tp": 1], ["qk_layernorm": false], ["residual_multiplier": 1.0],
        ]
        for changes in accepted { _ = try Self.decodeLlama(changes) }
        // Every key the family reads is one of its listed keys.
        for key in Self.llamaBase.keys { #expect(LlamaConfig.keys.read.contains(key), "\(key)") }
    }

    @Test func gpt2KeysThatChangeTheMathsAreRefusedByName() throws {
        let base: [String: Any] = ["model_type": "gpt2", "vocab_size": 300, "n_positions": 64, "n_embd": 64, "n_layer": 2, "n_head": 4,
                                   "activation_function": "gelu_new", "n_inner": NSNull(), "scale_attn_weights": true]
        for (changes, key) in [(["activation_function": "relu"], "activation_function"), (["n_inner": 100], "n_inner"),
                               (["scale_attn_weights": false], "scale_attn_weights"),
                               (["scale_attn_by_inverse_layer_idx": true], "scale_attn_by_inverse_layer_idx"),
                               (["add_cross_attention": true], "add_cross_attention")] as [([String: Any], String)] {
            let data = try JSONSerialization.data(withJSONObject: base.merging(changes) { $1 })
            #expect {
                _ = try ModelFamilyTestsSupport.decodeGPT2(data)
            } throws: { error in
                guard case ModelLoadError.badConfig(_, let named, _) = error else { return false }
                return named == key
            }
        }
        _ = try ModelFamilyTestsSupport.decodeGPT2(try JSONSerialization.data(withJSONObject: base))
        for key in base.keys where key != "model_type" { #expect(GPT2Config.keysRead.contains(key), "\(key)") }
    }

    @Test func theRegistryNamesEveryFamily() {
        #expect(ModelFamily.forModelType("qwen2")?.name == "llama")
        #expect(ModelFamily.forModelType("mistral")?.name == "llama")
        #expect(ModelFamily.forModelType("gpt2")?.name == "gpt2")
        #expect(ModelFamily.forGGUF("qwen2")?.name == "llama")
        #expect(ModelFamily.forModelType("gemma") == nil)
        #expect(ModelLoadError.unsupportedArchitecture(file: "f", architecture: "gemma").description.contains("qwen2"))
    }
}

enum ModelFamilyTestsSupport {
    static func decode(_ data: Data) throws -> LlamaConfig { try ModelFamily.decodeConfig(LlamaConfig.self, from: data, file: "config.json") }
    static func decodeGPT2(_ data: Data) throws -> GPT2Config { try ModelFamily.decodeConfig(GPT2Config.self, from: data, file: "config.json") }
}

extension ModelFamilyTests {
    /// What a deployment's client folder keeps (every tensor when no module is remote) and
    /// the config it writes load back, through the registry, to the same model: biases,
    /// scaling and a GGUF's `rope_freqs.weight` travel with it.
    @Test(arguments: families + ["tiny-llama3.gguf", "tiny-qwen2.gguf"]) func clientTensorsAndConfigLoadBackToTheSameModel(fixture: String) throws {
        let model: TrainableModel = fixture.hasSuffix(".gguf")
            ? try #require(try LoadedModel.load(try ModelCatalog.locate(try cachedFixtureURL(fixture).path)).model as? TrainableModel)
            : try Self.model(fixture)
        var tensors = InMemoryTensors()
        for t in model.clientTensors(excluding: []) { tensors.tensors[t.name] = (t.shape, t.values) }
        let again = try ModelFamily.load(tensors: tensors, config: try model.configJSON(), configFile: "config.json", file: fixture)
        #expect(again.architecture == model.architecture && again.parameterCount == model.parameterCount)
        let ids = [11, 48, 85, 122, 159, 196, 233, 270, 7, 44, 81, 118, 155, 192, 229, 266, 3, 40, 77, 114]
        (model as? LlamaModel)?.compactDecode = false
        (again as? LlamaModel)?.compactDecode = false
        #expect(again.forward(ids, cache: again.makeCache(capacity: 20), allPositions: true)
                == model.forward(ids, cache: model.makeCache(capacity: 20), allPositions: true))
    }
}

extension ModelFamilyTests {
    /// A saved adapter names its base by Hugging Face id when the origin is known.
    @Test func huggingFaceIDsOfModelLocations() {
        func location(_ name: String, _ path: String) -> ModelLocation {
            ModelLocation(requested: name, displayName: name, format: .safetensors, url: URL(fileURLWithPath: path), tokenizerDirectory: nil)
        }
        #expect(location("gpt2", "/x").huggingFaceID == "openai-community/gpt2")
        #expect(location("smollm2-135m-instruct", "/x").huggingFaceID == "HuggingFaceTB/SmolLM2-135M-Instruct")
        #expect(location("snap", "/h/.cache/huggingface/hub/models--Qwen--Qwen2.5-0.5B/snapshots/abc").huggingFaceID == "Qwen/Qwen2.5-0.5B")
        #expect(location("mine", "/data/my-model").huggingFaceID == nil)
    }
}
