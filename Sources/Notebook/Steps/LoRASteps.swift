import Engine
import Foundation

/// Which modules LoRA targets, as a cell writes it: one pattern list for every model, or
/// one per architecture (so a notebook with a fallback model can say what to target there).
///
/// ```yaml
/// target_modules: c_attn                  # a name, comma-separated names, all-linear, or /regex/
/// target_modules: [q_proj, v_proj]
/// target_modules: {gpt2: c_attn, llama: [q_proj, k_proj, v_proj]}
/// ```
public struct TargetModulesSpec: Codable, Equatable, Sendable {
    /// By architecture (`gpt2`, `llama`); the key `*` applies to any.
    public var byArchitecture: [String: [String]]

    public init(from decoder: Decoder) throws {
        let single = try decoder.singleValueContainer()
        if let s = try? single.decode(String.self) { byArchitecture = ["*": [s]]; return }
        if let list = try? single.decode([String].self) { byArchitecture = ["*": list]; return }
        if let map = try? single.decode([String: OneOrMany].self) { byArchitecture = map.mapValues(\.names); return }
        throw DecodingError.typeMismatch([String].self, .init(codingPath: decoder.codingPath,
            debugDescription: "a module name, a list of names, or a mapping from architecture (gpt2, llama) to names"))
    }

    /// A name or a list of names.
    struct OneOrMany: Decodable {
        var names: [String]
        init(from decoder: Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let s = try? c.decode(String.self) { names = [s] } else { names = try c.decode([String].self) }
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(byArchitecture)
    }

    /// The targets for `architecture`, or nil when the cell names none for it.
    public func targets(for architecture: String) -> LoRATargets? {
        // A family's name covers its model types (`llama` covers qwen2 and mistral).
        let family = ModelFamily.forModelType(architecture)?.name ?? architecture
        guard let names = byArchitecture[architecture] ?? byArchitecture[family] ?? byArchitecture["*"] else { return nil }
        if names.count == 1 { return LoRATargets(parsing: names[0]) }
        return LoRATargets(parsing: names.joined(separator: ","))
    }
}

/// `nb inject_lora`: adds LoRA adapters to the session's model (A as PEFT initialises it,
/// B = 0, so the model's outputs do not change until it is trained).
///
/// ```nb inject_lora id=lora
/// r: 8
/// alpha: 32
/// dropout: 0.1
/// target_modules: {gpt2: c_attn, llama: [q_proj, k_proj, v_proj]}
/// seed: 0
/// ```
public enum InjectLoRAStep: Step {
    public static let name = "inject_lora"
    public static func dataflow(_ _: Parameters) -> StepDataflow { StepDataflow(reads: [.model, .deployment], writes: [.adapter]) }
    public static let summary = "add LoRA adapters (rank, alpha, dropout, target modules) to the loaded model"

    public struct Parameters: StepParameters {
        public enum Keys: String, CodingKey, CaseIterable { case r, alpha, dropout, targetModules = "target_modules", seed }
        public typealias CodingKeys = Keys
        public var r: Int
        public var alpha: Double
        public var dropout: Double
        public var targetModules: TargetModulesSpec
        public var seed: Int

        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: Keys.self)
            r = try c.decodeIfPresent(Int.self, forKey: .r) ?? 8
            alpha = try c.decodeIfPresent(Double.self, forKey: .alpha) ?? 32
            dropout = try c.decodeIfPresent(Double.self, forKey: .dropout) ?? 0.1
            targetModules = try c.decode(TargetModulesSpec.self, forKey: .targetModules)
            seed = try c.decodeIfPresent(Int.self, forKey: .seed) ?? 0
        }

        public func validate() throws(ParameterError) {
            if r <= 0 { throw ParameterError("r", "the LoRA rank must be a positive integer, got \(r)") }
            if !(alpha > 0 && alpha.isFinite) { throw ParameterError("alpha", "\(alpha) must be a positive number") }
            if !(dropout >= 0 && dropout < 1) { throw ParameterError("dropout", "\(dropout) must be in [0, 1)") }
            if seed < 0 { throw ParameterError("seed", "\(seed) must be ≥ 0") }
            for (arch, names) in targetModules.byArchitecture where names.isEmpty || names.contains(where: \.isEmpty) {
                throw ParameterError("target_modules", "empty module name for \(arch == "*" ? "the model" : arch)")
            }
        }
    }

    public static func run(_ p: Parameters, context: StepContext) throws {
        let (loaded, model) = try context.session.trainableModel()
        guard let targets = p.targetModules.targets(for: model.architecture) else {
            throw StepFailure(key: "target_modules", "names no modules for a \(model.architecture) model (\(context.session.state.model?.name ?? "")); "
                              + "add `\(model.architecture): [...]` or a list for every model")
        }
        let config = LoRAConfig(rank: p.r, alpha: p.alpha, dropout: p.dropout, targets: targets, seed: UInt64(p.seed))
        let adapter: LoRAAdapter
        do { adapter = try LoRAAdapter(config: config, modules: model.linearModules) } catch {
            throw StepFailure(key: "target_modules", error.description)
        }
        try context.session.register(adapter, in: context.adapterStore, trainedSteps: 0, origin: "inject_lora")
        let total = loaded.model.parameterCount
        context.emit(.metrics([
            Metric("targets", targets.description),
            Metric("adapted modules", String(adapter.layers.count)),
            Metric("trainable parameters", Format.integer(adapter.parameterCount)),
            Metric("share of the model", String(format: "%.3f %%", 100 * Double(adapter.parameterCount) / Double(total))),
            Metric("scale α/r", Format.number(config.scale, decimals: 2)),
        ]))
        var rows: [[String]] = []
        for l in adapter.layers.prefix(8) {
            rows.append([l.module.name, "\(l.module.inFeatures) → \(l.module.outFeatures)", "(\(l.rank), \(l.module.inFeatures))",
                         "(\(l.module.outFeatures), \(l.rank))", Format.integer(l.parameterCount)])
        }
        if adapter.layers.count > 8 { rows.append(["… \(adapter.layers.count - 8) more", "", "", "", ""]) }
        context.emit(.table(OutputTable(title: "LoRA layers", columns: ["module", "in → out", "A", "B", "parameters"], rows: rows)))
    }
}

/// `nb save_adapter`: writes the session's adapter in the PEFT layout
/// (`adapter_config.json`, `adapter_model.safetensors`), loadable by PEFT's `PeftModel.from_pretrained`.
///
/// ```nb save_adapter
/// path: ../outputs/gpt2-fhe-lora    # relative to the notebook
/// ```
public enum SaveAdapterStep: Step {
    public static let name = "save_adapter"
    public static func dataflow(_ _: Parameters) -> StepDataflow { StepDataflow(reads: [.model, .adapter], writes: []) }
    public static let summary = "save the LoRA adapter in the PEFT layout"

    public struct Parameters: StepParameters {
        public enum Keys: String, CodingKey, CaseIterable { case path }
        public typealias CodingKeys = Keys
        public var path: String

        public init(from decoder: Decoder) throws {
            path = try decoder.container(keyedBy: Keys.self).decode(String.self, forKey: .path)
        }

        public func validate() throws(ParameterError) {
            if path.isEmpty { throw ParameterError("path", "must name a directory") }
        }
    }

    public static func run(_ p: Parameters, context: StepContext) throws {
        guard let adapter = try context.session.adapter(), let reference = context.session.state.adapter else { throw SessionError.noAdapter }
        let url = context.resolve(p.path)
        do { try PEFTAdapter.save(adapter, to: url, baseModelName: context.session.state.model?.adapterBaseName) } catch {
            throw StepFailure(key: "path", error.description)
        }
        let size = (try? FileManager.default.attributesOfItem(atPath: url.appendingPathComponent(PEFTAdapter.weightsFileName).path)[.size] as? Int) ?? 0
        context.emit(.metrics([
            Metric("directory", context.display(url)),
            Metric("tensors", String(2 * adapter.layers.count)),
            Metric("parameters", Format.integer(adapter.parameterCount)),
            Metric("weights file", "\(Format.integer(size)) bytes"),
            Metric("trained steps", String(reference.trainedSteps)),
        ]))
        context.emit(.text("\(PEFTAdapter.configFileName)\n\(PEFTAdapter.config(of: adapter, baseModelName: context.session.state.model?.adapterBaseName).jsonText)"))
    }
}

/// `nb load_adapter`: reads a PEFT-layout LoRA adapter (ours or the Python ecosystem's) onto
/// the session's model.
///
/// ```nb load_adapter
/// path: ../outputs/gpt2-fhe-lora
/// ```
public enum LoadAdapterStep: Step {
    public static let name = "load_adapter"
    public static func dataflow(_ _: Parameters) -> StepDataflow { StepDataflow(reads: [.model, .deployment], writes: [.adapter]) }
    public static let summary = "load a PEFT-layout LoRA adapter onto the loaded model"

    public struct Parameters: StepParameters {
        public enum Keys: String, CodingKey, CaseIterable { case path, seed }
        public typealias CodingKeys = Keys
        public var path: String
        public var seed: Int

        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: Keys.self)
            path = try c.decode(String.self, forKey: .path)
            seed = try c.decodeIfPresent(Int.self, forKey: .seed) ?? 0
        }

        public func validate() throws(ParameterError) {
            if path.isEmpty { throw ParameterError("path", "must name a directory") }
            if seed < 0 { throw ParameterError("seed", "\(seed) must be ≥ 0") }
        }
    }

    public static func inputs(_ p: Parameters, context: StepContext) -> [URL] {
        let dir = context.resolve(p.path)
        return [PEFTAdapter.configFileName, PEFTAdapter.weightsFileName].map { dir.appendingPathComponent($0) }
    }

    public static func run(_ p: Parameters, context: StepContext) throws {
        let (_, model) = try context.session.trainableModel()
        let url = context.resolve(p.path)
        let adapter: LoRAAdapter
        do { adapter = try PEFTAdapter.load(from: url, modules: model.linearModules, seed: UInt64(p.seed)) } catch {
            throw StepFailure(key: "path", error.description)
        }
        try context.session.register(adapter, in: context.adapterStore, trainedSteps: 0, origin: context.display(url))
        context.emit(.metrics([
            Metric("directory", context.display(url)),
            Metric("rank", String(adapter.config.rank)),
            Metric("alpha", Format.number(adapter.config.alpha, decimals: 1)),
            Metric("adapted modules", String(adapter.layers.count)),
            Metric("parameters", Format.integer(adapter.parameterCount)),
        ]))
    }
}
