import Engine
import Foundation
import Testing

/// Logits and greedy generations against PyTorch + transformers, written by
/// Fixtures/reference/make_model_goldens.py (see its README for versions and layouts).
@Suite struct ModelGoldenTests {
    static let fixtures = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!.appendingPathComponent("reference")

    struct LogitsFixture: Decodable {
        struct Sequence: Decodable { var ids: [Int]; var logits: [[Float]] }
        var sequences: [Sequence]
    }

    struct GenerationFixture: Decodable {
        struct Run: Decodable { var prompt_ids: [Int]; var new_ids: [Int] }
        var prompt_ids: [Int]
        var new_ids: [Int]
        var extra_runs: [Run]
    }

    static func json<T: Decodable>(_ name: String, as type: T.Type) throws -> T {
        try JSONDecoder().decode(T.self, from: Data(contentsOf: fixtures.appendingPathComponent(name)))
    }

    /// Max |a − b| divided by the reference's logit range, and where it happens.
    static func compare(_ ours: [Float], _ reference: [Float]) -> (error: Float, index: Int) {
        precondition(ours.count == reference.count, "\(ours.count) vs \(reference.count) values")
        let range = (reference.max()! - reference.min()!)
        var worst: Float = 0, at = 0
        for i in ours.indices where abs(ours[i] - reference[i]) > worst { worst = abs(ours[i] - reference[i]); at = i }
        return (worst / range, at)
    }

    /// Float32 throughout: within 1e-4 of the logit range. With half-precision decoding
    /// (one-token sequences take that path): within 1e-3, the issue's bound.
    func checkLogits(_ model: LanguageModel, fixture: String) throws {
        let f = try Self.json(fixture, as: LogitsFixture.self)
        for half in [false, true] {
            (model as? LlamaModel)?.compactDecode = half
            (model as? GPT2Model)?.compactDecode = half
            for s in f.sequences {
                let ours = model.forward(s.ids, cache: model.makeCache(capacity: s.ids.count), allPositions: true)
                let (error, index) = Self.compare(ours, s.logits.flatMap { $0 })
                #expect(error < (half ? 1e-3 : 1e-4), "\(fixture) sequence of \(s.ids.count) (half decode \(half)): max error \(error) of the logit range at flat index \(index)")
            }
        }
    }

    func checkGeneration(_ model: LanguageModel, fixture: String) throws {
        let g = try Self.json(fixture, as: GenerationFixture.self)
        for (prompt, expected) in [(g.prompt_ids, g.new_ids)] + g.extra_runs.map({ ($0.prompt_ids, $0.new_ids) }) {
            let result = model.generate(GenerationRequest(prompt: prompt, maxTokens: expected.count))
            #expect(result.tokens == expected, "\(fixture): greedy continuation of \(prompt)")
        }
    }

    static func safetensorsModel(_ dir: String) throws -> LanguageModel {
        let url = fixtures.appendingPathComponent(dir)
        let config = try Data(contentsOf: url.appendingPathComponent("config.json"))
        let weights = try SafeTensorsCheckpoint(directory: url)
        if dir.contains("gpt2") { return try GPT2Model.load(from: weights, config: JSONDecoder().decode(GPT2Config.self, from: config), file: dir) }
        return try LlamaModel.load(from: weights, config: JSONDecoder().decode(LlamaConfig.self, from: config), file: dir)
    }

    @Test func tinyGPT2() throws {
        let model = try Self.safetensorsModel("tiny-gpt2")
        try checkLogits(model, fixture: "tiny-gpt2-logits.json")
        try checkGeneration(model, fixture: "tiny-gpt2-generation.json")
        try checkLogits(try Self.safetensorsModel("tiny-gpt2-sharded"), fixture: "tiny-gpt2-logits.json")
    }

    @Test func tinyLlamaUntiedAndTied() throws {
        let untied = try Self.safetensorsModel("tiny-llama")
        #expect((untied as? LlamaModel)?.lmHead != nil)
        try checkLogits(untied, fixture: "tiny-llama-logits.json")
        try checkGeneration(untied, fixture: "tiny-llama-generation.json")
        let tied = try Self.safetensorsModel("tiny-llama-tied")
        #expect((tied as? LlamaModel)?.lmHead == nil)
        try checkLogits(tied, fixture: "tiny-llama-tied-logits.json")
        try checkGeneration(tied, fixture: "tiny-llama-tied-generation.json")
    }

    /// The same tiny LLaMA as a GGUF: llama.cpp names, Q/K rows permuted, interleaved RoPE.
    @Test func tinyLlamaFromGGUF() throws {
        let loaded = try LoadedModel.load(try ModelCatalog.locate(try cachedFixtureURL("tiny-llama.gguf").path))
        #expect((loaded.model as? LlamaModel)?.ropeStyle == .interleaved)
        try checkLogits(loaded.model, fixture: "tiny-llama-logits.json")
        try checkGeneration(loaded.model, fixture: "tiny-llama-generation.json")
        #expect(loaded.tokenizer.vocabularySize == 300)
    }

    // MARK: - The real SmolLM2-135M-Instruct

    struct SmolFixture: Decodable {
        struct Prompt: Decodable { var text: String; var ids: [Int]; var logits_offset_floats: Int; var logits_count: Int; var top10_ids: [Int] }
        struct Greedy: Decodable { var prompt_ids: [Int]; var new_ids: [Int] }
        var prompts: [Prompt]
        var greedy: Greedy
        var rome_id: Int
    }

    static func smolLM2() throws -> LoadedModel {
        do { return try LoadedModel.load(try ModelCatalog.locate("smollm2-135m-instruct")) } catch {
            Issue.record("SmolLM2 is needed for this test (make setup downloads it): \(error)")
            throw error
        }
    }

    @Test func smolLM2LogitsTokensAndGeneration() throws {
        let loaded = try Self.smolLM2()
        let f = try Self.json("smollm2-logits.json", as: SmolFixture.self)
        let raw = try Data(contentsOf: Self.fixtures.appendingPathComponent("smollm2-logits.f32"))
        let all: [Float] = raw.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        #expect(loaded.model.parameterCount == 134_515_008)
        for p in f.prompts {
            #expect(loaded.tokenizer.encode(p.text, allowSpecial: true) == p.ids, "token ids of \(p.text.debugDescription)")
            let ours = loaded.model.forward(p.ids, cache: loaded.model.makeCache(capacity: p.ids.count), allPositions: false)
            let reference = Array(all[p.logits_offset_floats..<(p.logits_offset_floats + p.logits_count)])
            let (error, index) = Self.compare(ours, reference)
            #expect(error < 1e-3, "\(p.text.debugDescription): max error \(error) of the logit range at token \(index)")
            let top3 = ours.indices.sorted { ours[$0] > ours[$1] }.prefix(3)
            #expect(Array(top3) == Array(p.top10_ids.prefix(3)))
        }
        // " Rome" first after "The capital of Italy is".
        let italy = loaded.tokenizer.encode("The capital of Italy is")
        let logits = loaded.model.forward(italy, cache: loaded.model.makeCache(capacity: italy.count), allPositions: false)
        #expect(logits.withUnsafeBufferPointer(Sampler.argmax) == f.rome_id)
        #expect(loaded.tokenizer.tokenText(f.rome_id) == " Rome")
        let result = loaded.model.generate(GenerationRequest(prompt: f.greedy.prompt_ids, maxTokens: f.greedy.new_ids.count))
        #expect(result.tokens == f.greedy.new_ids)
    }

    /// Decoding reads the GGUF's own Q4_1 and Q8_0 blocks: the last position's logits through
    /// that path (prefill of the rest, then one token) against the reference, and against
    /// our Float32 path over the dequantized weights, which holds the same weights, so only
    /// the order of float sums differs. After a weight changes, its matrix decodes from a
    /// half-precision copy of the new weights.
    @Test func smolLM2DecodesFromItsStoredBlocks() throws {
        let loaded = try Self.smolLM2()
        let model = try #require(loaded.model as? LlamaModel)
        let f = try Self.json("smollm2-logits.json", as: SmolFixture.self)
        let raw = try Data(contentsOf: Self.fixtures.appendingPathComponent("smollm2-logits.f32"))
        let all: [Float] = raw.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        let bytes = model.decodeBytesPerToken
        #expect(Set(bytes.keys) == [.q4_1, .q8_0], "decode formats: \(bytes)")
        func decodeLast(_ ids: [Int]) -> [Float] {
            let cache = model.makeCache(capacity: ids.count)
            _ = model.forward(Array(ids.dropLast()), cache: cache, allPositions: false)
            return model.forward([ids.last!], cache: cache, allPositions: false)
        }
        for p in f.prompts where p.ids.count >= 3 {
            let reference = Array(all[p.logits_offset_floats..<(p.logits_offset_floats + p.logits_count)])
            let decoded = decodeLast(p.ids)
            model.compactDecode = false
            let float32 = decodeLast(p.ids)
            model.compactDecode = true
            let (error, index) = Self.compare(decoded, reference)
            #expect(error < 1e-3, "\(p.text.debugDescription): decode path, max error \(error) of the logit range at token \(index)")
            let (same, at) = Self.compare(decoded, float32)
            #expect(same < 2e-5, "\(p.text.debugDescription): stored blocks vs Float32 weights, \(same) of the range at token \(at)")
        }
        // Change one matrix: it leaves the stored blocks, the others stay.
        let module = model.linearModules.first { $0.name == "model.layers.3.mlp.down_proj" }!
        model.withWeight(of: module) { w in for i in stride(from: 0, to: w.count, by: 7) { w[i] += 0.01 } }
        let after = model.decodeBytesPerToken
        #expect(after[.f16] == 2 * module.inFeatures * module.outFeatures, "decode formats after a change: \(after)")
        let ids = f.prompts[0].ids
        let decoded = decodeLast(ids)
        model.compactDecode = false
        let float32 = decodeLast(ids)
        model.compactDecode = true
        let (error, _) = Self.compare(decoded, float32)
        #expect(error < 1e-3, "after a weight change: \(error) of the range")
    }

    @Test func smolLM2ChatIsCoherentEnglish() throws {
        let loaded = try Self.smolLM2()
        let ids = loaded.encodePrompt("What is the capital of France? Answer in one sentence.", chat: true)
        #expect(ids.first == loaded.tokenizer.id(of: "<|im_start|>"))
        let result = loaded.model.generate(GenerationRequest(prompt: ids, maxTokens: 30, stopTokens: loaded.stopTokens))
        let text = loaded.tokenizer.decode(result.tokens, skipSpecial: true)
        #expect(text.contains("Paris"), "chat answer: \(text)")
        let words = text.split(whereSeparator: { !$0.isLetter }).filter { $0.count > 1 }
        #expect(words.count >= 4, "chat answer: \(text)")
    }
}
