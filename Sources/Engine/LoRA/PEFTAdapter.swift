import Foundation

/// The keys of a PEFT (0.12) `adapter_config.json` that matter to nb, read and written with
/// PEFT's names. Other keys PEFT writes (`megatron_core`, `loftq_config`, …) are written with
/// PEFT's defaults and, on reading, must hold those defaults or be absent.
public struct PEFTAdapterConfig: Equatable, Sendable {
    /// `r`.
    public var rank: Int
    /// `lora_alpha` (written as an integer when it is one, like PEFT).
    public var alpha: Double
    /// `lora_dropout`.
    public var dropout: Double
    /// `target_modules`: a list of names, a regular expression (a JSON string), or `"all-linear"`
    /// (PEFT saves the resolved names instead).
    public var targetModules: LoRATargets
    /// `fan_in_fan_out`: true when the frozen weights are stored (in, out) (GPT-2's Conv1D).
    public var fanInFanOut: Bool
    /// `base_model_name_or_path`.
    public var baseModelNameOrPath: String?
    /// `task_type`, `"CAUSAL_LM"` for nb's models.
    public var taskType: String?
    /// `inference_mode` (save_pretrained always writes true).
    public var inferenceMode: Bool

    public init(rank: Int, alpha: Double, dropout: Double, targetModules: LoRATargets, fanInFanOut: Bool,
                baseModelNameOrPath: String?, taskType: String? = "CAUSAL_LM", inferenceMode: Bool = true) {
        (self.rank, self.alpha, self.dropout, self.targetModules) = (rank, alpha, dropout, targetModules)
        (self.fanInFanOut, self.baseModelNameOrPath, self.taskType, self.inferenceMode) = (fanInFanOut, baseModelNameOrPath, taskType, inferenceMode)
    }

    /// Every key PEFT 0.12's LoraConfig writes, in the (sorted) order of the file.
    public static let keys = [
        "alpha_pattern", "auto_mapping", "base_model_name_or_path", "bias", "fan_in_fan_out", "inference_mode",
        "init_lora_weights", "layer_replication", "layers_pattern", "layers_to_transform", "loftq_config", "lora_alpha",
        "lora_dropout", "megatron_config", "megatron_core", "modules_to_save", "peft_type", "r", "rank_pattern",
        "revision", "target_modules", "task_type", "use_dora", "use_rslora",
    ]

    /// The file's text exactly as Python's `json.dumps(d, indent=2, sort_keys=True)` writes it
    /// (PEFT's `save_pretrained`): two-space indents, no trailing newline.
    public var jsonText: String {
        let targets: JSONText
        switch targetModules {
        case .allLinear: targets = .string("all-linear")
        case .pattern(let p): targets = .string(p)
        case .modules(let names): targets = .array(names.map { .string($0) })
        }
        let alphaValue: JSONText = alpha == alpha.rounded() && abs(alpha) < 1e15 ? .integer(Int(alpha)) : .number(alpha)
        let fields: [String: JSONText] = [
            "alpha_pattern": .object([]), "auto_mapping": .null,
            "base_model_name_or_path": baseModelNameOrPath.map { .string($0) } ?? .null,
            "bias": .string("none"), "fan_in_fan_out": .bool(fanInFanOut), "inference_mode": .bool(inferenceMode),
            "init_lora_weights": .bool(true), "layer_replication": .null, "layers_pattern": .null, "layers_to_transform": .null,
            "loftq_config": .object([]), "lora_alpha": alphaValue, "lora_dropout": .number(dropout), "megatron_config": .null,
            "megatron_core": .string("megatron.core"), "modules_to_save": .null, "peft_type": .string("LORA"),
            "r": .integer(rank), "rank_pattern": .object([]), "revision": .null, "target_modules": targets,
            "task_type": taskType.map { .string($0) } ?? .null, "use_dora": .bool(false), "use_rslora": .bool(false),
        ]
        return JSONText.object(Self.keys.map { ($0, fields[$0]!) }).render(indent: "")
    }

    /// Reads `adapter_config.json`, rejecting LoRA variants nb does not implement.
    public static func read(from url: URL) throws(LoRAError) -> PEFTAdapterConfig {
        let path = url.path
        func bad(_ key: String, _ message: String) -> LoRAError { .badAdapterConfig(path: path, key: key, message: message) }
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: Data(contentsOf: url))
        } catch {
            if !FileManager.default.fileExists(atPath: path) { throw .checkpoint(.notFound(path: path)) }
            throw bad("(file)", "not valid JSON: \(error.localizedDescription)")
        }
        guard let d = object as? [String: Any] else { throw bad("(file)", "expected a JSON object") }
        func isNull(_ key: String) -> Bool { d[key] == nil || d[key] is NSNull }
        func number(_ key: String, default value: Double) throws(LoRAError) -> Double {
            if isNull(key) { return value }
            guard let n = d[key] as? NSNumber, n.doubleValue.isFinite else { throw bad(key, "expected a number, found \(String(describing: d[key]!))") }
            return n.doubleValue
        }
        func flag(_ key: String) throws(LoRAError) -> Bool {
            if isNull(key) { return false }
            guard let b = d[key] as? Bool else { throw bad(key, "expected true or false") }
            return b
        }

        guard let type = d["peft_type"] as? String else { throw bad("peft_type", "missing; expected \"LORA\"") }
        guard type.uppercased() == "LORA" else { throw bad("peft_type", "\"\(type)\" is not a LoRA adapter (nb reads \"LORA\")") }
        guard let rank = (d["r"] as? NSNumber).flatMap({ Int(exactly: $0.doubleValue) }), rank > 0 else {
            throw bad("r", "expected a positive integer, found \(d["r"].map { String(describing: $0) } ?? "nothing")")
        }
        let alpha = try number("lora_alpha", default: 8)
        let dropout = try number("lora_dropout", default: 0)
        guard dropout >= 0 && dropout < 1 else { throw bad("lora_dropout", "\(dropout) is not in [0, 1)") }
        let targets: LoRATargets
        if let list = d["target_modules"] as? [String] {
            targets = .modules(list)
        } else if let s = d["target_modules"] as? String {
            // "all-linear", or a regular expression PEFT full-matches against module names.
            targets = s.lowercased() == "all-linear" ? .allLinear : .pattern(s)
        } else {
            throw bad("target_modules", "expected a list of module names or \"all-linear\"")
        }
        if let bias = d["bias"] as? String, bias != "none" { throw bad("bias", "\"\(bias)\": nb trains no biases (expected \"none\")") }
        if try flag("use_dora") { throw bad("use_dora", "DoRA adapters are not supported") }
        if try flag("use_rslora") { throw bad("use_rslora", "rank-stabilised LoRA (scale alpha/√r) is not supported") }
        for key in ["rank_pattern", "alpha_pattern"] where !isNull(key) {
            guard let p = d[key] as? [String: Any], p.isEmpty else { throw bad(key, "per-module ranks or alphas are not supported") }
        }
        if !isNull("modules_to_save") { throw bad("modules_to_save", "adapters that save whole modules are not supported") }
        if !isNull("layer_replication") { throw bad("layer_replication", "layer replication is not supported") }
        return PEFTAdapterConfig(rank: rank, alpha: alpha, dropout: dropout, targetModules: targets, fanInFanOut: try flag("fan_in_fan_out"),
                                 baseModelNameOrPath: d["base_model_name_or_path"] as? String, taskType: d["task_type"] as? String,
                                 inferenceMode: try flag("inference_mode"))
    }
}

/// Saving and loading adapters in PEFT's layout, so they load in Python with
/// `PeftModel.from_pretrained(model, dir)` and PEFT's adapters load here:
///
///     dir/adapter_config.json          PEFTAdapterConfig
///     dir/adapter_model.safetensors    F32, __metadata__ {"format": "pt"}
///         base_model.model.<module>.lora_A.weight   (r, in)
///         base_model.model.<module>.lora_B.weight   (out, r)
///
/// e.g. `base_model.model.transformer.h.0.attn.c_attn.lora_A.weight` (8, 768) for GPT-2: A and
/// B have these shapes for Conv1D layers too (`fan_in_fan_out` only affects merging).
public enum PEFTAdapter {
    public static let configFileName = "adapter_config.json"
    public static let weightsFileName = "adapter_model.safetensors"

    /// The safetensors names of a module's A and B.
    public static func tensorNames(module: String) -> (a: String, b: String) {
        ("base_model.model.\(module).lora_A.weight", "base_model.model.\(module).lora_B.weight")
    }

    /// The config PEFT would write for this adapter: `all-linear` becomes the sorted distinct
    /// last components of the targeted names, as PEFT resolves it before saving.
    public static func config(of adapter: LoRAAdapter, baseModelName: String?) -> PEFTAdapterConfig {
        var targets = adapter.config.targets
        if targets == .allLinear { targets = .modules(Array(Set(adapter.modules.map(\.baseName))).sorted()) }
        return PEFTAdapterConfig(rank: adapter.config.rank, alpha: adapter.config.alpha, dropout: adapter.config.dropout,
                                 targetModules: targets, fanInFanOut: adapter.modules.first?.transposedWeight ?? false,
                                 baseModelNameOrPath: baseModelName)
    }

    /// Writes the two files into `directory` (created when missing), each replaced atomically.
    public static func save(_ adapter: LoRAAdapter, to directory: URL, baseModelName: String?) throws(LoRAError) {
        do {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        } catch {
            throw .unwritable(path: directory.path, reason: error.localizedDescription)
        }
        var tensors: [(name: String, shape: [Int], values: [Float])] = []
        for l in adapter.layers {
            let names = tensorNames(module: l.module.name)
            tensors.append((names.a, [l.rank, l.module.inFeatures], l.a))
            tensors.append((names.b, [l.module.outFeatures, l.rank], l.module.huggingFaceRowOrder(l.b, columns: l.rank, toHF: true)))
        }
        do {
            try SafeTensorsWriter.write(tensors, metadata: ["format": "pt"], to: directory.appendingPathComponent(weightsFileName))
        } catch {
            throw .checkpoint(error)
        }
        let configURL = directory.appendingPathComponent(configFileName)
        do {
            try Data(config(of: adapter, baseModelName: baseModelName).jsonText.utf8).write(to: configURL, options: .atomic)
        } catch {
            throw .unwritable(path: configURL.path, reason: error.localizedDescription)
        }
    }

    /// Reads a PEFT adapter for a model whose linear layers are `modules`. Loading is strict:
    /// every tensor must be an A or B of a listed module with the right shape, each adapted
    /// module needs both, and the config's `target_modules` must select every adapted module.
    /// `seed` seeds the dropout masks of further training.
    public static func load(from directory: URL, modules: [LinearModule], seed: UInt64 = 0) throws(LoRAError) -> LoRAAdapter {
        let peft = try PEFTAdapterConfig.read(from: directory.appendingPathComponent(configFileName))
        let file: SafeTensorsFile
        do {
            file = try SafeTensorsFile(url: directory.appendingPathComponent(weightsFileName))
        } catch {
            throw .checkpoint(error)
        }
        let path = file.path
        var used = Set<String>()
        var layers: [LoRALayer] = []
        let scale = Float(peft.alpha / Double(peft.rank))
        for m in modules {
            let names = tensorNames(module: m.name)
            let hasA = file.info(names.a) != nil, hasB = file.info(names.b) != nil
            guard hasA || hasB else { continue }
            do {
                let a = try file.float32(names.a, shape: [peft.rank, m.inFeatures])
                let b = m.huggingFaceRowOrder(try file.float32(names.b, shape: [m.outFeatures, peft.rank]), columns: peft.rank, toHF: false)
                used.formUnion([names.a, names.b])
                layers.append(LoRALayer(module: m, rank: peft.rank, scale: scale, a: a, b: b))
            } catch {
                throw .checkpoint(error)
            }
        }
        do { try file.checkAllUsed(used) } catch { throw .checkpoint(error) }
        let configPath = directory.appendingPathComponent(configFileName).path
        guard !layers.isEmpty else {
            throw .badAdapterConfig(path: configPath, key: "target_modules", message: "\(path) holds no LoRA tensors for this model's layers")
        }
        for l in layers where !peft.targetModules.selects(l.module) {
            throw .badAdapterConfig(path: configPath, key: "target_modules",
                                    message: "\(peft.targetModules.description) does not select \(l.module.name), which the adapter has tensors for")
        }
        let config = LoRAConfig(rank: peft.rank, alpha: peft.alpha, dropout: peft.dropout, targets: peft.targetModules, seed: seed)
        return LoRAAdapter(config: config, layers: layers)
    }
}

/// A JSON value rendered like Python's `json.dumps(indent=2, sort_keys=True)` (keys are
/// given in order by the caller).
enum JSONText {
    case null, bool(Bool), integer(Int), number(Double), string(String)
    case array([JSONText]), object([(String, JSONText)])

    func render(indent: String) -> String {
        let inner = indent + "  "
        switch self {
        case .null: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .integer(let i): return String(i)
        // Swift's and Python's shortest round-trip forms agree (0.05, 0.1, 1e-05, 0.0).
        case .number(let x): return x.isFinite ? "\(x)" : "NaN"
        case .string(let s): return SafeTensorsWriter.quote(s)
        case .array(let items):
            if items.isEmpty { return "[]" }
            return "[\n" + items.map { inner + $0.render(indent: inner) }.joined(separator: ",\n") + "\n" + indent + "]"
        case .object(let fields):
            if fields.isEmpty { return "{}" }
            return "{\n" + fields.map { inner + SafeTensorsWriter.quote($0.0) + ": " + $0.1.render(indent: inner) }.joined(separator: ",\n") + "\n" + indent + "}"
        }
    }
}
