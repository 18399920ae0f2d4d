import Foundation
import Testing
@testable import Engine

/// PEFT 0.12's own adapters and merged-model logits, written by
/// Fixtures/peft/make_peft_fixtures.py from the tiny models of Fixtures/reference/.
@Suite struct PEFTAdapterTests {
    static let fixtures = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!
    static let peft = fixtures.appendingPathComponent("peft")

    struct Golden: Decodable {
        struct Adapter: Decodable {
            var model: String, adapter_dir: String, r: Int, lora_alpha: Double, lora_dropout: Double
            var target_modules: [String], lora_modules: [String], ids: [Int]
            var logits_adapted: [[Float]], logits_merged: [[Float]]
        }
        var adapters: [Adapter]
        var all_linear_modules: [String: [String]]
    }

    static func golden() throws -> Golden {
        try JSONDecoder().decode(Golden.self, from: Data(contentsOf: peft.appendingPathComponent("peft-logits.json")))
    }

    static func model(_ name: String) throws -> LanguageModel {
        let url = fixtures.appendingPathComponent("reference").appendingPathComponent(name)
        let config = try Data(contentsOf: url.appendingPathComponent("config.json"))
        return try ModelFamily.load(tensors: try SafeTensorsCheckpoint(directory: url), config: config, configFile: name + "/config.json", file: name)
    }

    static func modules(of model: LanguageModel) -> [LinearModule] {
        (model as? GPT2Model)?.linearModules ?? (model as! LlamaModel).linearModules
    }

    /// A fresh directory under the system temporary directory.
    static func temporaryDirectory() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("nb-peft-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    static func configObject(_ url: URL) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: url.appendingPathComponent(PEFTAdapter.configFileName))) as! [String: Any]
    }

    @Test func allLinearMatchesPEFT() throws {
        let g = try Self.golden()
        for (name, expected) in g.all_linear_modules {
            let modules = Self.modules(of: try Self.model(name))
            #expect(Set(try LoRAConfig(targets: .allLinear).resolveTargets(in: modules).map(\.name)) == Set(expected), "\(name)")
        }
    }

    @Test func loadsPEFTFiles() throws {
        for a in try Self.golden().adapters {
            let model = try Self.model(a.model)
            let dir = Self.peft.appendingPathComponent(a.adapter_dir)
            let adapter = try PEFTAdapter.load(from: dir, modules: Self.modules(of: model))
            #expect(adapter.modules.map(\.name) == a.lora_modules)
            #expect(adapter.config.rank == a.r && adapter.config.alpha == a.lora_alpha && adapter.config.dropout == a.lora_dropout)
            // PEFT writes target_modules from a set: compare as sets.
            guard case .modules(let targets) = adapter.config.targets else { Issue.record("\(adapter.config.targets)"); continue }
            #expect(Set(targets) == Set(a.target_modules))
            let file = try SafeTensorsFile(url: dir.appendingPathComponent(PEFTAdapter.weightsFileName))
            for l in adapter.layers {
                let names = PEFTAdapter.tensorNames(module: l.module.name)
                #expect(file.shape(of: names.a) == [a.r, l.module.inFeatures])
                #expect(file.shape(of: names.b) == [l.module.outFeatures, a.r])
                #expect(try file.float32(names.a) == l.a && file.float32(names.b) == l.b)
                #expect(l.b.contains { $0 != 0 })
            }
        }
    }

    /// The probe loaded an all-NaN adapter and printed `nan` logits: an adapter with one
    /// non-finite value is refused, naming the tensor and the element.
    @Test func nonFiniteAdaptersAreRefused() throws {
        let a = try Self.golden().adapters[0]
        let model = try Self.model(a.model)
        let adapter = try PEFTAdapter.load(from: Self.peft.appendingPathComponent(a.adapter_dir), modules: Self.modules(of: model))
        for bad in [Float.nan, .infinity, -.infinity] {
            let poisoned = adapter
            poisoned.layers[0].b[3] = bad
            let dir = try Self.temporaryDirectory()
            defer { try? FileManager.default.removeItem(at: dir) }
            try PEFTAdapter.save(poisoned, to: dir, baseModelName: a.model)
            do {
                _ = try PEFTAdapter.load(from: dir, modules: Self.modules(of: model))
                Issue.record("an adapter holding \(bad) loaded")
            } catch {
                let name = PEFTAdapter.tensorNames(module: poisoned.layers[0].module.name).b
                #expect("\(error)".contains("tensor '\(name)' holds \(bad) at element 3"), "\(error)")
            }
        }
    }

    /// Our files have PEFT's tensor names, shapes, metadata and config keys; the config text
    /// is even byte-identical for the same settings, and save → load is bit-exact.
    @Test func savesPEFTsLayoutAndRoundTrips() throws {
        for a in try Self.golden().adapters {
            let model = try Self.model(a.model)
            let theirs = Self.peft.appendingPathComponent(a.adapter_dir)
            let adapter = try PEFTAdapter.load(from: theirs, modules: Self.modules(of: model))
            let dir = try Self.temporaryDirectory()
            defer { try? FileManager.default.removeItem(at: dir) }
            try PEFTAdapter.save(adapter, to: dir, baseModelName: a.model)

            let ours = try SafeTensorsFile(url: dir.appendingPathComponent(PEFTAdapter.weightsFileName))
            let reference = try SafeTensorsFile(url: theirs.appendingPathComponent(PEFTAdapter.weightsFileName))
            #expect(Set(ours.tensorNames) == Set(reference.tensorNames))
            for name in reference.tensorNames {
                #expect(ours.shape(of: name) == reference.shape(of: name) && ours.dtype(of: name) == "F32", "\(name)")
            }
            #expect(ours.metadata == reference.metadata)

            let ourConfig = try Self.configObject(dir), peftConfig = try Self.configObject(theirs)
            #expect(Set(ourConfig.keys) == Set(peftConfig.keys))
            #expect(Set(PEFTAdapterConfig.keys) == Set(peftConfig.keys))
            let ourText = try String(contentsOf: dir.appendingPathComponent(PEFTAdapter.configFileName), encoding: .utf8)
            let peftText = try String(contentsOf: theirs.appendingPathComponent(PEFTAdapter.configFileName), encoding: .utf8)
            #expect(ourText == peftText)

            let again = try PEFTAdapter.load(from: dir, modules: Self.modules(of: model))
            #expect(again.modules == adapter.modules && again.config == adapter.config)
            for (x, y) in zip(again.layers, adapter.layers) {
                #expect(x.a.map(\.bitPattern) == y.a.map(\.bitPattern) && x.b.map(\.bitPattern) == y.b.map(\.bitPattern))
            }
        }
    }

    @Test func allLinearSavesResolvedNamesLikePEFT() throws {
        let model = try Self.model("tiny-gpt2") as! GPT2Model
        let adapter = try LoRAAdapter(config: LoRAConfig(rank: 2, alpha: 4, dropout: 0, targets: .allLinear), model: model)
        #expect(PEFTAdapter.config(of: adapter, baseModelName: nil).targetModules == .modules(["c_attn", "c_fc", "c_proj"]))
        #expect(PEFTAdapter.config(of: adapter, baseModelName: nil).fanInFanOut)
    }

    /// Merging PEFT's adapter into our model gives PEFT's merged logits.
    @Test func mergedLogitsMatchPEFT() throws {
        for a in try Self.golden().adapters {
            let model = try Self.model(a.model)
            let adapter = try PEFTAdapter.load(from: Self.peft.appendingPathComponent(a.adapter_dir), modules: Self.modules(of: model))
            if let g = model as? GPT2Model { adapter.merge(into: g) } else { adapter.merge(into: model as! LlamaModel) }
            let ours = model.forward(a.ids, cache: model.makeCache(capacity: a.ids.count), allPositions: true)
            for reference in [a.logits_merged.flatMap { $0 }, a.logits_adapted.flatMap { $0 }] {
                let (error, index) = ModelGoldenTests.compare(ours, reference)
                #expect(error < 1e-4, "\(a.model): max error \(error) of the logit range at flat index \(index)")
            }
        }
    }

    /// A LLaMA read from GGUF keeps GGUF's row order for q_proj and k_proj (interleaved
    /// RoPE), so PEFT's B for those modules is reordered on load and on save: PEFT's adapter
    /// on the GGUF copy of the tiny LLaMA gives PEFT's logits, and saving writes PEFT's bytes.
    @Test func ggufLlamaTakesPEFTAdaptersInHuggingFaceOrder() throws {
        let a = try #require(try Self.golden().adapters.first { $0.model == "tiny-llama" })
        let loaded = try LoadedModel.load(try ModelCatalog.locate(try cachedFixtureURL("tiny-llama.gguf").path))
        let model = try #require(loaded.model as? LlamaModel)
        #expect(model.ropeStyle == .interleaved)
        #expect(model.linearModules.filter { $0.ggufRoPEHeadDim != nil }.map(\.baseName) == ["q_proj", "k_proj", "q_proj", "k_proj"])
        let theirs = Self.peft.appendingPathComponent(a.adapter_dir)
        let adapter = try PEFTAdapter.load(from: theirs, modules: model.linearModules)
        adapter.withMerged(into: model) {
            let ours = model.forward(a.ids, cache: model.makeCache(capacity: a.ids.count), allPositions: true)
            let (error, index) = ModelGoldenTests.compare(ours, a.logits_adapted.flatMap { $0 })
            #expect(error < 1e-4, "max error \(error) of the logit range at flat index \(index)")
        }
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        try PEFTAdapter.save(adapter, to: dir, baseModelName: a.model)
        let ours = try SafeTensorsFile(url: dir.appendingPathComponent(PEFTAdapter.weightsFileName))
        let reference = try SafeTensorsFile(url: theirs.appendingPathComponent(PEFTAdapter.weightsFileName))
        for name in reference.tensorNames {
            #expect(try ours.float32(name).map(\.bitPattern) == reference.float32(name).map(\.bitPattern), "\(name)")
        }
    }

    @Test func rejectsUnsupportedOrInconsistentAdapters() throws {
        let model = try Self.model("tiny-llama")
        let modules = Self.modules(of: model)
        let source = Self.peft.appendingPathComponent("llama-adapter")
        func variant(_ edit: (inout [String: Any]) -> Void) throws -> LoRAError? {
            let dir = try Self.temporaryDirectory()
            defer { try? FileManager.default.removeItem(at: dir) }
            try FileManager.default.copyItem(at: source.appendingPathComponent(PEFTAdapter.weightsFileName), to: dir.appendingPathComponent(PEFTAdapter.weightsFileName))
            var object = try Self.configObject(source)
            edit(&object)
            try JSONSerialization.data(withJSONObject: object).write(to: dir.appendingPathComponent(PEFTAdapter.configFileName))
            return loraError { () throws(LoRAError) in try PEFTAdapter.load(from: dir, modules: modules) }
        }
        func key(_ e: LoRAError?) -> String? { if case .badAdapterConfig(_, let k, _)? = e { return k }; return nil }
        #expect(try variant { _ in } == nil)
        #expect(key(try variant { $0["use_dora"] = true }) == "use_dora")
        #expect(key(try variant { $0["use_rslora"] = true }) == "use_rslora")
        #expect(key(try variant { $0["bias"] = "all" }) == "bias")
        #expect(key(try variant { $0["peft_type"] = "IA3" }) == "peft_type")
        #expect(key(try variant { $0["r"] = 0 }) == "r")
        #expect(key(try variant { $0["target_modules"] = ["q_proj"] }) == "target_modules")
        #expect(key(try variant { $0["rank_pattern"] = ["q_proj": 2] }) == "rank_pattern")
        // r = 2 does not fit the (4, 64) tensors.
        if case .checkpoint(.shapeMismatch(_, let tensor, _, _))? = try variant({ $0["r"] = 2 }) {
            #expect(tensor == "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")
        } else {
            Issue.record("r = 2 should be a shape mismatch")
        }
        // The GPT-2 adapter's tensors name no LLaMA module: strict loading reports them.
        let gpt2Adapter = loraError { () throws(LoRAError) in try PEFTAdapter.load(from: Self.peft.appendingPathComponent("gpt2-adapter"), modules: modules) }
        if case .checkpoint(.unusedTensors(_, let names))? = gpt2Adapter { #expect(names.count == 4) } else { Issue.record("\(String(describing: gpt2Adapter))") }
        #expect(loraError { () throws(LoRAError) in try PEFTAdapter.load(from: Self.peft.appendingPathComponent("missing"), modules: modules) } != nil)
    }
}
