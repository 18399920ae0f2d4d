import Engine
import Foundation
import Testing

/// `nb export` / `save_merged`: the merged model as a Hugging Face folder and as GGUF, against
/// PEFT's own merge (Fixtures/peft) and what transformers and gguf-py read from nb's files
/// (Fixtures/export/check_export.py, which records the SHA-256 of the files it checked).
@Suite struct ExportTests {
    static let fixtures = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!

    struct PEFTLogits: Decodable {
        struct Adapter: Decodable { var model: String; var adapter_dir: String; var ids: [Int]; var logits_merged: [[Float]] }
        var adapters: [Adapter]
    }

    struct Check: Decodable {
        struct Export: Decodable {
            struct Tensor: Decodable { var name: String; var shape: [Int]; var type: String }
            var source: String, adapter: String, format: String
            var sha256: String
            var config_sha256: String?
            var max_abs_diff_vs_peft_merged: Double
            var logit_range: Double
            var tokenizer_ids: [Int]?
            var gguf_tensors: [Tensor]?
            var gguf_token_count: Int?
        }
        struct Quantized: Decodable {
            var precision: String, sha256: String
            var blocks: Int, identical_blocks: Int
            var max_dequantized_difference: Double
            var types: [String: String]
        }
        var quantized: [Quantized]
        var text: String
        var exports: [Export]
    }

    static func peft() throws -> PEFTLogits {
        try JSONDecoder().decode(PEFTLogits.self, from: Data(contentsOf: fixtures.appendingPathComponent("peft/peft-logits.json")))
    }

    static func temporary() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("nb-export-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir
    }

    static func load(_ path: String) throws -> LoadedModel { try LoadedModel.load(try ModelCatalog.locate(path)) }

    /// The tiny model with its PEFT adapter, as `nb export` loads them.
    static func modelAndAdapter(_ c: PEFTLogits.Adapter) throws -> (LoadedModel, LoRAAdapter) {
        let loaded = try load(fixtures.appendingPathComponent("reference/\(c.model)").path)
        let model = try #require(loaded.model as? TrainableModel)
        return (loaded, try PEFTAdapter.load(from: fixtures.appendingPathComponent("peft/\(c.adapter_dir)"), modules: model.linearModules))
    }

    static func logits(_ model: LanguageModel, _ ids: [Int]) -> [Float] {
        model.compactDecode = false
        return model.forward(ids, cache: model.makeCache(capacity: ids.count), allPositions: true)
    }

    /// The merged folder loads (in nb) to PEFT's merged logits within 1e-5 of their range,
    /// the exporter leaves the session's model as it was, and the folder has what
    /// transformers needs.
    @Test(arguments: ["tiny-gpt2", "tiny-llama"]) func mergedSafetensorsGivePEFTsMergedLogits(model name: String) throws {
        let c = try #require(try Self.peft().adapters.first { $0.model == name })
        let (loaded, adapter) = try Self.modelAndAdapter(c)
        let before = Self.logits(loaded.model, c.ids)
        let dir = try Self.temporary()
        defer { try? FileManager.default.removeItem(at: dir) }
        let summary = try ModelExport.export(loaded, adapter: adapter, to: dir, format: .safetensors)
        #expect(Self.logits(loaded.model, c.ids) == before, "the export restores the model's weights")
        #expect(Set(summary.files.map(\.path)).isSuperset(of: ["model.safetensors", "config.json", "vocab.json", "merges.txt"]))
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent("config.json"))) as? [String: Any]
        #expect((config?["architectures"] as? [String])?.first == (name == "tiny-gpt2" ? "GPT2LMHeadModel" : "LlamaForCausalLM"))
        let merged = try Self.load(dir.path)
        let (error, index) = ModelGoldenTests.compare(Self.logits(merged.model, c.ids), c.logits_merged.flatMap { $0 })
        #expect(error < 1e-5, "\(name): max error \(error) of the logit range at \(index)")
        #expect(merged.tokenizer.vocabulary == loaded.tokenizer.vocabulary)
    }

    /// The tiny LLaMA of `make setup`'s GGUF (300-token toy tokenizer) with the PEFT adapter.
    static func ggufLlama() throws -> (LoadedModel, LoRAAdapter, PEFTLogits.Adapter) {
        let c = try #require(try peft().adapters.first { $0.model == "tiny-llama" })
        let loaded = try load(try cachedFixtureURL("tiny-llama.gguf").path)
        let model = try #require(loaded.model as? TrainableModel)
        return (loaded, try PEFTAdapter.load(from: fixtures.appendingPathComponent("peft/\(c.adapter_dir)"), modules: model.linearModules), c)
    }

    /// The GGUF (F32) reads back in nb to PEFT's merged logits; F16 rounds each matrix value to
    /// binary16 and keeps vectors F32; GPT-2 is written in llama.cpp's layout; a tokenizer
    /// larger than the embedding is refused, a smaller one padded.
    @Test func ggufReadsBack() throws {
        let dir = try Self.temporary()
        defer { try? FileManager.default.removeItem(at: dir) }
        let (loaded, adapter, c) = try Self.ggufLlama()
        let file = dir.appendingPathComponent("llama.gguf")
        _ = try ModelExport.export(loaded, adapter: adapter, to: file, format: .gguf)
        let gguf = try GGUFFile(url: file)
        #expect(gguf.metadata["tokenizer.ggml.tokens"]?.strings == loaded.tokenizer.vocabulary.tokens)
        let back = try Self.load(file.path)
        #expect((back.model as? LlamaModel)?.ropeStyle == .interleaved)
        #expect(back.tokenizer.vocabulary == loaded.tokenizer.vocabulary)
        let (error, _) = ModelGoldenTests.compare(Self.logits(back.model, c.ids), c.logits_merged.flatMap { $0 })
        #expect(error < 1e-5, "tiny-llama GGUF: max error \(error)")
        let half = dir.appendingPathComponent("half.gguf")
        _ = try ModelExport.export(loaded, adapter: adapter, to: half, format: .gguf, precision: .f16)
        let h = try GGUFFile(url: half)
        #expect(try h.float32("blk.0.attn_v.weight") == gguf.float32("blk.0.attn_v.weight").map { Float(Float16($0)) })
        #expect(try h.float32("blk.0.attn_norm.weight") == gguf.float32("blk.0.attn_norm.weight"), "vectors stay F32")
        let (halfError, _) = ModelGoldenTests.compare(Self.logits(try Self.load(half.path).model, c.ids), c.logits_merged.flatMap { $0 })
        #expect(halfError < 2e-3, "F16: max error \(halfError)")

        // GPT-2: a small random one with GPT-2's own tokenizer (50,257 tokens, 50,260 rows: three pads).
        let folder = dir.appendingPathComponent("gpt2")
        let gpt2 = GPT2Model.random(config: GPT2Config(vocabSize: 50260, nPositions: 32, nEmbd: 16, nLayer: 2, nHead: 2, layerNormEpsilon: 1e-5), seed: 3)
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        try SafeTensorsWriter.write(gpt2.clientTensors(excluding: []), to: folder.appendingPathComponent("model.safetensors"))
        try gpt2.configJSON().write(to: folder.appendingPathComponent("config.json"))
        for f in ["encoder.json", "vocab.bpe"] {
            try FileManager.default.copyItem(at: ModelCache.directory.appendingPathComponent("models/gpt2-tokenizer/\(f)"), to: folder.appendingPathComponent(f))
        }
        let g = dir.appendingPathComponent("gpt2.gguf")
        _ = try ModelExport.export(try Self.load(folder.path), adapter: nil, to: g, format: .gguf)
        let written = try GGUFFile(url: g)
        #expect(written.metadata["general.architecture"]?.string == "gpt2" && written.metadata["gpt2.block_count"]?.int == 2)
        #expect(written.shape(of: "blk.1.attn_qkv.weight") == [48, 16])
        let qkv = try written.float32("blk.1.attn_qkv.weight"), stored = gpt2.blocks[1].attnWeight
        var transposedRight = true
        for o in 0..<48 { for i in 0..<16 where qkv[o * 16 + i] != stored[i * 48 + o] { transposedRight = false } }
        #expect(transposedRight, "attn_qkv is c_attn's (in, out) weight as (out, in)")
        #expect(try written.float32("output.weight") == gpt2.tokenEmbedding)
        let tokens = try #require(written.metadata["tokenizer.ggml.tokens"]?.strings)
        #expect(tokens.count == 50260 && tokens.suffix(3) == ["[PAD50257]", "[PAD50258]", "[PAD50259]"])
        #expect(written.metadata["tokenizer.ggml.token_type"]?.ints?.suffix(3) == [5, 5, 5])

        // The tiny GPT-2 borrows GPT-2's 50,257-token tokenizer for 300 rows: no valid GGUF.
        let tiny = try Self.load(Self.fixtures.appendingPathComponent("reference/tiny-gpt2").path)
        #expect { try ModelExport.export(tiny, adapter: nil, to: dir.appendingPathComponent("t.gguf"), format: .gguf) } throws: {
            "\($0)".contains("50257 tokens, more than the model's 300 embedding rows")
        }
    }

    /// Quantized GGUF exports: every matrix in the asked block type (vectors F32), read back
    /// by nb within the error bound of its quantizer, block by block (d, m the F16-stored
    /// scale and minimum): Q8_0 |x − x̂| ≤ d/2, Q4_0 ≤ d (the clamp of q at 15), Q4_1 ≤ d/2,
    /// each plus the F16 rounding of d and m. `source` keeps each tensor's type, and Q8_0
    /// re-quantizes its own output to the same bytes.
    @Test func quantizedGGUFExportsStayWithinTheirBounds() throws {
        let dir = try Self.temporary()
        defer { try? FileManager.default.removeItem(at: dir) }
        let (loaded, adapter, c) = try Self.ggufLlama()
        let exact = dir.appendingPathComponent("f32.gguf")
        _ = try ModelExport.export(loaded, adapter: adapter, to: exact, format: .gguf)
        let reference = try GGUFFile(url: exact)
        for (precision, type) in [(ModelExport.Precision.q8_0, GGMLType.q8_0), (.q4_0, .q4_0), (.q4_1, .q4_1), (.bf16, .bf16)] {
            let file = dir.appendingPathComponent("\(precision.rawValue).gguf")
            _ = try ModelExport.export(loaded, adapter: adapter, to: file, format: .gguf, precision: precision)
            let q = try GGUFFile(url: file)
            #expect(q.tensorNames == reference.tensorNames)
            for info in q.tensorInfos {
                let x = try reference.float32(info.name), y = try q.float32(info.name)
                guard info.dims.count >= 2 else { #expect(info.type == .f32 && y == x, "\(info.name): vectors stay F32"); continue }
                #expect(info.type == type, "\(info.name) is \(info.type), not \(type)")
                for b in 0..<(x.count / 32) {
                    let block = x[(32 * b)..<(32 * b + 32)]
                    let amax = block.map(abs).max()!, lo = block.min()!, hi = block.max()!
                    let bound: Float
                    switch precision {
                    case .q8_0: bound = amax / 127 * (0.5 + 127 * 0x1p-11)
                    case .q4_0: bound = amax / 8 * (1 + 8 * 0x1p-11)
                    case .q4_1: bound = (hi - lo) / 15 * (0.5 + 15 * 0x1p-11) + abs(lo) * 0x1p-11
                    default: bound = amax * 0x1p-8
                    }
                    let worst = zip(block, y[(32 * b)..<(32 * b + 32)]).map { abs($0 - $1) }.max()!
                    #expect(worst <= bound * 1.0001 + 1e-12, "\(precision.rawValue) \(info.name) block \(b): error \(worst) > bound \(bound)")
                }
            }
            // It loads as a model (the per-value bounds above are the check; a tiny random
            // model's logits are too sensitive for a tolerance to mean much, except BF16's).
            let logits = Self.logits(try Self.load(file.path).model, c.ids)
            #expect(logits.allSatisfy { $0.isFinite })
            if precision == .bf16 {
                let (error, _) = ModelGoldenTests.compare(logits, c.logits_merged.flatMap { $0 })
                #expect(error < 2e-2, "bf16: logits off by \(error) of their range")
            }
        }
        // gguf-py's own quantizers (check_export.py) made the very same blocks from the F32 export.
        let check = try JSONDecoder().decode(Check.self, from: Data(contentsOf: Self.fixtures.appendingPathComponent("export/export-check.json")))
        #expect(check.quantized.map(\.precision) == ["q8_0", "q4_0", "q4_1"])
        for r in check.quantized {
            let file = dir.appendingPathComponent("\(r.precision).gguf")
            #expect(try SHA256Digest.hex(fileAt: file) == r.sha256, "\(r.precision): the bytes gguf-py checked")
            #expect(r.blocks > 3000 && r.identical_blocks == r.blocks && r.max_dequantized_difference == 0, "\(r.precision): \(r.identical_blocks) of \(r.blocks) blocks as gguf-py makes them")
            let q = try GGUFFile(url: file)
            for info in q.tensorInfos { #expect(r.types[info.name] == info.type.name, "\(r.precision) \(info.name)") }
        }
        // `source`: a Q8_0 base exported again keeps Q8_0 (and the same bytes), F32 vectors stay F32.
        let base = dir.appendingPathComponent("q8_0.gguf")
        let quantizedBase = try Self.load(base.path)
        let again = dir.appendingPathComponent("again.gguf")
        _ = try ModelExport.export(quantizedBase, adapter: nil, to: again, format: .gguf, precision: .source)
        let (a, b) = (try GGUFFile(url: base), try GGUFFile(url: again))
        for info in a.tensorInfos {
            #expect(b.info(info.name)?.type == info.type, "\(info.name) keeps \(info.type)")
            #expect(b.rawBytes(of: info.name) == a.rawBytes(of: info.name), "\(info.name): the same bytes")
        }
        #expect(b.metadata["general.file_type"]?.int == 7)
        // A NaN weight cannot be block-quantized: a clear error naming the tensor, not a trap.
        let model = try #require(loaded.model as? LlamaModel)
        let saved = model.blocks[0].wv[5]
        model.blocks[0].wv[5] = .nan
        defer { model.blocks[0].wv[5] = saved }
        #expect { try ModelExport.export(loaded, adapter: nil, to: dir.appendingPathComponent("nan.gguf"), format: .gguf, precision: .q8_0) } throws: {
            "\($0)".contains("tensor blk.0.attn_v.weight holds nan at index 5: q8_0 needs finite values")
        }
        // `source` needs a GGUF base.
        let folderBase = try Self.load(Self.fixtures.appendingPathComponent("reference/tiny-llama").path)
        #expect { try ModelExport.export(folderBase, adapter: nil, to: dir.appendingPathComponent("x.gguf"), format: .gguf, precision: .source) } throws: {
            "\($0)".contains("is not a GGUF")
        }
    }

    /// What transformers and gguf-py read from nb's files (check_export.py): the same bytes as
    /// an export now, PEFT's merged logits within 1e-5 of their range, the same token ids, and
    /// the same GGUF tensor list as nb's reader.
    @Test func theReferenceLibrariesReadTheseVeryFiles() throws {
        let check = try JSONDecoder().decode(Check.self, from: Data(contentsOf: Self.fixtures.appendingPathComponent("export/export-check.json")))
        let dir = try Self.temporary()
        defer { try? FileManager.default.removeItem(at: dir) }
        #expect(check.exports.count == 4)
        for (n, e) in check.exports.enumerated() {
            let loaded: LoadedModel, adapter: LoRAAdapter
            if e.source.hasSuffix(".gguf") {
                (loaded, adapter, _) = try Self.ggufLlama()
            } else {
                let c = try #require(try Self.peft().adapters.first { $0.model == e.source })
                (loaded, adapter) = try Self.modelAndAdapter(c)
            }
            let what = "\(e.source) → \(e.format)"
            #expect(e.max_abs_diff_vs_peft_merged / e.logit_range < 1e-5, "\(what): transformers' logits")
            if e.format == "gguf" {
                let file = dir.appendingPathComponent("export\(n).gguf")
                _ = try ModelExport.export(loaded, adapter: adapter, to: file, format: .gguf)
                #expect(try SHA256Digest.hex(fileAt: file) == e.sha256, "\(what): the bytes gguf-py and transformers read")
                let gguf = try GGUFFile(url: file)
                let tensors = try #require(e.gguf_tensors)
                #expect(gguf.tensorNames == tensors.map(\.name))
                for t in tensors { #expect(gguf.shape(of: t.name) == t.shape && t.type == "F32", "\(t.name)") }
                #expect(e.gguf_token_count == loaded.tokenizer.vocabularySize)
            } else {
                let folder = dir.appendingPathComponent("export\(n)")
                _ = try ModelExport.export(loaded, adapter: adapter, to: folder, format: .safetensors)
                #expect(try SHA256Digest.hex(fileAt: folder.appendingPathComponent("model.safetensors")) == e.sha256, "\(what): weights bytes")
                #expect(try SHA256Digest.hex(fileAt: folder.appendingPathComponent("config.json")) == e.config_sha256, "\(what): config bytes")
                #expect(loaded.tokenizer.encode(check.text) == e.tokenizer_ids, "\(what): transformers' tokenizer on nb's files")
            }
        }
    }

    /// The new families, both ways: Llama 3.x writes its llama3 scaling as `rope_freqs.weight`,
    /// Qwen2 keeps its rows and biases, linear scaling and biases travel; each reads back to
    /// transformers' logits. A GGUF's rope_freqs cannot become config.json keys, and a sliding
    /// window or dynamic scaling has no GGUF form: each is refused by name.
    @Test func familiesExportAndReadBack() throws {
        let dir = try Self.temporary()
        defer { try? FileManager.default.removeItem(at: dir) }
        struct Logits: Decodable { struct S: Decodable { var ids: [Int]; var logits: [[Float]] }; var sequences: [S] }
        func check(_ model: LanguageModel, _ name: String, _ what: String) throws {
            let reference = try JSONDecoder().decode(Logits.self, from: Data(contentsOf: Self.fixtures.appendingPathComponent("reference/\(name)-logits.json"))).sequences[2]
            let (error, _) = ModelGoldenTests.compare(Self.logits(model, reference.ids), reference.logits.flatMap { $0 })
            #expect(error < 1e-5, "\(name), \(what): max error \(error)")
        }
        // The Qwen2 GGUF (toy 300-token tokenizer) as a Hugging Face folder: its tokenizer files are written from the vocabulary.
        let qwen = try Self.load(try cachedFixtureURL("tiny-qwen2.gguf").path)
        let toy = dir.appendingPathComponent("qwen-folder")
        _ = try ModelExport.export(qwen, adapter: nil, to: toy, format: .safetensors)
        try check(try Self.load(toy.path).model, "tiny-qwen2", "GGUF → safetensors")
        let llama3GGUF = try Self.load(try cachedFixtureURL("tiny-llama3.gguf").path)
        _ = try ModelExport.export(llama3GGUF, adapter: nil, to: dir.appendingPathComponent("llama3-again.gguf"), format: .gguf)
        try check(try Self.load(dir.appendingPathComponent("llama3-again.gguf").path).model, "tiny-llama3", "GGUF → GGUF")
        #expect { try ModelExport.export(llama3GGUF, adapter: nil, to: dir.appendingPathComponent("no"), format: .safetensors) } throws: {
            "\($0)".contains("rope_freqs")
        }
        for name in ["tiny-llama3", "tiny-qwen2", "tiny-llama-linear"] {
            // The Hugging Face fixture with the toy tokenizer's files beside it (a GGUF's tokens must fit its embedding).
            let source = dir.appendingPathComponent(name)
            try FileManager.default.copyItem(at: Self.fixtures.appendingPathComponent("reference/\(name)"), to: source)
            for f in ["vocab.json", "merges.txt", "tokenizer_config.json"] {
                try FileManager.default.copyItem(at: toy.appendingPathComponent(f), to: source.appendingPathComponent(f))
            }
            let loaded = try Self.load(source.path)
            for format in ModelExport.Format.allCases {
                let target = dir.appendingPathComponent(name + "-out" + (format == .gguf ? ".gguf" : ""))
                _ = try ModelExport.export(loaded, adapter: nil, to: target, format: format)
                let back = try Self.load(target.path)
                #expect(back.model.architecture == loaded.model.architecture)
                try check(back.model, name, "safetensors → \(format)")
            }
        }
        for (name, word) in [("tiny-mistral", "sliding window"), ("tiny-llama-dynamic", "dynamic")] {
            let loaded = try Self.load(Self.fixtures.appendingPathComponent("reference/\(name)").path)
            #expect { try ModelExport.export(loaded, adapter: nil, to: dir.appendingPathComponent("x.gguf"), format: .gguf) } throws: {
                "\($0)".contains(word)
            }
        }
    }
}
