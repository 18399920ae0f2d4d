import Engine
import Foundation
import Testing

/// `nb generate`, `nb top-tokens`, `nb tokenize` and the model steps, run as a user would,
/// on the real SmolLM2 (downloaded by `make setup`) and on bad model files.
@Suite struct ModelCommandTests {
    @Test func tokenizeTopTokensAndGenerate() throws {
        let w = try Workspace()
        let tokens = try w.nb("tokenize", "--model", "smollm2", "The capital of Italy is", "--json")
        #expect(tokens.code == 0, "\(tokens.stderr)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(tokens.stdout.utf8)) as? [String: Any])
        #expect(json["ids"] as? [Int] == [504, 3575, 282, 7158, 314])   // the ids transformers gives (reference fixture)

        let top = try w.nb("top-tokens", "--model", "smollm2", "--prompt", "The capital of Italy is", "--k", "5", "--json")
        #expect(top.code == 0, "\(top.stderr)")
        let topJSON = try #require(try JSONSerialization.jsonObject(with: Data(top.stdout.utf8)) as? [String: Any])
        let first = try #require((topJSON["top"] as? [[String: Any]])?.first)
        #expect(first["token"] as? String == " Rome")
        #expect(first["id"] as? Int == 7268)

        let generated = try w.nb("generate", "--model", "smollm2", "--prompt", "The capital of Italy is", "--max-tokens", "5")
        #expect(generated.code == 0)
        #expect(generated.stdout.hasPrefix(" Rome"), "\(generated.stdout)")
        #expect(generated.stderr.contains("5 prompt tokens, 5 generated"))

        // Seeded sampling is reproducible.
        let a = try w.nb("generate", "--model", "smollm2", "--prompt", "Once upon a time", "--max-tokens", "8", "--temperature", "0.9", "--top-p", "0.9", "--seed", "42")
        let b = try w.nb("generate", "--model", "smollm2", "--prompt", "Once upon a time", "--max-tokens", "8", "--temperature", "0.9", "--top-p", "0.9", "--seed", "42")
        #expect(a.code == 0 && a.stdout == b.stdout)
    }

    static let reference = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("EngineTests/Fixtures/reference")

    /// Token ids in (`--ids`) and out (`--json` with each step's top-2 margin), every
    /// position's top tokens, the exact float32 path, and the tokenizer alone.
    @Test func idsPositionsJSONPrecisionAndTokenizerOnly() throws {
        let w = try Workspace()
        // A folder with only GPT-2's tokenizer files (no config, no weights) tokenizes and back.
        let only = w.root.appendingPathComponent("tokenizer-only")
        try FileManager.default.createDirectory(at: only, withIntermediateDirectories: true)
        for f in ["encoder.json", "vocab.bpe"] {
            try FileManager.default.copyItem(at: ModelCache.directory.appendingPathComponent("models/gpt2-tokenizer/\(f)"), to: only.appendingPathComponent(f))
        }
        let tokens = try w.nb("tokenize", "--model", "tokenizer-only", "Hello world", "--json")
        #expect(tokens.code == 0, "\(tokens.stderr)")
        #expect((try JSONSerialization.jsonObject(with: Data(tokens.stdout.utf8)) as? [String: Any])?["ids"] as? [Int] == [15496, 995])
        let text = try w.nb("detokenize", "--model", "tokenizer-only", "15496", "995")
        #expect(text.code == 0 && text.stdout == "Hello world\n", "\(text.stderr)")
        let badID = try w.nb("detokenize", "--model", "tokenizer-only", "15496,60000")
        #expect(badID.code == 1 && badID.stderr.contains("token id 60000 is outside the vocabulary (0..<50257)"), "\(badID.stderr)")

        // Greedy ids and margins on the exact path equal transformers' (the family fixture).
        struct Generation: Decodable { var prompt_ids: [Int]; var new_ids: [Int]; var step_margins: [Double] }
        let reference = try JSONDecoder().decode(Generation.self, from: Data(contentsOf: Self.reference.appendingPathComponent("tiny-qwen2-generation.json")))
        let model = Self.reference.appendingPathComponent("tiny-qwen2").path
        let generated = try w.nb("generate", "--model", model, "--ids", reference.prompt_ids.map(String.init).joined(separator: ","),
                                 "--max-tokens", String(reference.new_ids.count), "--precision", "float32", "--json")
        #expect(generated.code == 0, "\(generated.stderr)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(generated.stdout.utf8)) as? [String: Any])
        #expect(json["ids"] as? [Int] == reference.new_ids)
        let steps = try #require(json["steps"] as? [[String: Any]])
        #expect(steps.count == reference.new_ids.count)
        for (step, margin) in zip(steps, reference.step_margins) {
            #expect(abs((step["margin"] as? Double ?? -1) - margin) < 1e-4, "\(step) vs margin \(margin)")
        }

        // Every position's best token is the argmax of transformers' logits there.
        struct Logits: Decodable { struct S: Decodable { var ids: [Int]; var logits: [[Float]] }; var sequences: [S] }
        let logits = try JSONDecoder().decode(Logits.self, from: Data(contentsOf: Self.reference.appendingPathComponent("tiny-llama3-logits.json")))
        let sequence = logits.sequences[1]
        let top = try w.nb("top-tokens", "--model", Self.reference.appendingPathComponent("tiny-llama3").path, "--ids",
                           sequence.ids.map(String.init).joined(separator: ","), "--positions", "all", "--k", "2", "--json")
        #expect(top.code == 0, "\(top.stderr)")
        let positions = try #require((try JSONSerialization.jsonObject(with: Data(top.stdout.utf8)) as? [String: Any])?["positions"] as? [[String: Any]])
        #expect(positions.count == sequence.ids.count)
        for (p, row) in zip(positions, sequence.logits) {
            let best = (p["top"] as? [[String: Any]])?.first?["id"] as? Int
            #expect(best == row.indices.max { row[$0] < row[$1] }, "position \(p["position"] ?? "?")")
        }

        // The prompt is text or ids, not both; ids must be in the vocabulary.
        let both = try w.nb("generate", "--model", model, "--prompt", "hi", "--ids", "1,2")
        #expect(both.code != 0 && both.stderr.contains("one of them"), "\(both.stderr)")
        let outside = try w.nb("top-tokens", "--model", model, "--ids", "1,300")
        #expect(outside.code == 1 && outside.stderr.contains("token id 300 is outside the vocabulary (0..<300)"), "\(outside.stderr)")
    }

    /// `nb export` and the `save_merged` step write a merged model that loads back; formats
    /// that cannot hold a model are refused with the reason.
    @Test func exportAndSaveMerged() throws {
        let w = try Workspace()
        let fixtures = Self.reference.deletingLastPathComponent()
        let model = Self.reference.appendingPathComponent("tiny-llama").path, adapter = fixtures.appendingPathComponent("peft/llama-adapter").path
        let exported = try w.nb("export", "--model", model, "--adapter", adapter, "--to", "merged")
        #expect(exported.code == 0, "\(exported.stderr)")
        #expect(exported.stdout.contains("model.safetensors") && exported.stderr.contains("adapter merged (r=4, 4 modules)"), "\(exported.stdout)\(exported.stderr)")
        let top = try w.nb("top-tokens", "--model", "merged", "--ids", "17,255,3", "--k", "1", "--json")
        #expect(top.code == 0, "\(top.stderr)")
        let half = try w.nb("export", "--model", model, "--to", "x", "--precision", "f16")
        #expect(half.code != 0 && half.stderr.contains("f16 is for --format gguf"), "\(half.stderr)")
        let window = try w.nb("export", "--model", Self.reference.appendingPathComponent("tiny-mistral").path, "--to", "m.gguf")
        #expect(window.code == 1 && window.stderr.contains("sliding window"), "\(window.stderr)")

        try w.write("nb.md", """
        # Merge

        ```nb load_model
        model: \(model)
        ```

        ```nb load_adapter
        path: \(adapter)
        ```

        ```nb save_merged
        path: out/merged
        ```

        """)
        let run = try w.nb("nb.md")
        #expect(run.code == 0, "\(run.stderr)")
        #expect(FileManager.default.fileExists(atPath: w.root.appendingPathComponent("out/merged/model.safetensors").path))
        let same = try w.nb("top-tokens", "--model", "out/merged", "--ids", "17,255,3", "--k", "1", "--json")
        #expect(same.code == 0 && same.stdout == top.stdout, "the step and the command write the same model")
        #expect(try w.read("outputs/nb.html").contains("merged (r 4, 4 modules"))
    }

    @Test func unknownModelsAndBadFilesAreClearErrors() throws {
        let w = try Workspace()
        let unknown = try w.nb("tokenize", "--model", "gpt-5", "hello")
        #expect(unknown.code == 1)
        #expect(unknown.stderr.contains("model 'gpt-5' is not available: not a known model name (gpt2, smollm2-135m-instruct)"))

        // A truncated GGUF: the error names the file, nothing crashes.
        let source = ModelCache.directory.appendingPathComponent("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
        let handle = try FileHandle(forReadingFrom: source)
        let head = try handle.read(upToCount: 1_000_000) ?? Data()
        try handle.close()
        try head.write(to: w.root.appendingPathComponent("cut.gguf"))
        let cut = try w.nb("tokenize", "--model", "cut.gguf", "hello")
        #expect(cut.code == 1)
        #expect(cut.stderr.contains("cut.gguf"), "\(cut.stderr)")

        // A safetensors model whose config does not match its tensors: names the tensor.
        let tiny = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("EngineTests/Fixtures/reference/tiny-gpt2")
        let dir = w.root.appendingPathComponent("bad-gpt2")
        try FileManager.default.copyItem(at: tiny, to: dir)
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent("config.json"))) as! [String: Any]
        config["n_embd"] = 32
        try JSONSerialization.data(withJSONObject: config).write(to: dir.appendingPathComponent("config.json"))
        let mismatch = try w.nb("generate", "--model", "bad-gpt2", "--prompt", "hi")
        #expect(mismatch.code == 1)
        #expect(mismatch.stderr.contains("tensor 'transformer.wte.weight' has shape [300, 64], expected [300, 32]"), "\(mismatch.stderr)")
    }

    @Test func loadModelFallsBackAsTheNotebookSays() throws {
        let w = try Workspace()
        try w.write("nb.md", """
        # Fallback

        ```nb load_model id=model
        model: gpt2
        fallback: smollm2-135m-instruct
        ```

        ```nb generate id=gen
        prompts: ["The capital of Italy is"]
        max_tokens: 3
        ```

        """)
        let result = try NbProcess.run(["nb.md"], in: w.root, environment: ["NB_GPT2_DIR": "", "HOME": w.root.path, "NB_CACHE": ModelCache.directory.path])
        #expect(result.code == 0, "\(result.stderr)")
        #expect(result.stderr.contains("model 'gpt2' is not available"))
        let report = try w.read("outputs/nb.html")
        #expect(report.contains("<dt>model</dt><dd>smollm2-135m-instruct (llama, 134,515,008 parameters) — the notebook&#39;s fallback; gpt2 was not available</dd>"))
        #expect(report.contains(" Rome"))

        // Without a fallback the cell fails, naming the key's line.
        try w.write("nb.md", "```nb load_model\nmodel: gpt2\n```\n")
        let failed = try NbProcess.run(["nb.md"], in: w.root, environment: ["NB_GPT2_DIR": "", "HOME": w.root.path, "NB_CACHE": ModelCache.directory.path])
        #expect(failed.code == 1)
        #expect(failed.stderr.contains("nb.md:2: load_model failed: model 'gpt2' is not available"))
    }
}
