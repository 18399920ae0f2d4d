import Engine
import FHE
import Foundation

/// A data set the session has loaded: a reference to an immutable file and its digest.
/// The examples themselves are re-read (and the digest re-checked) when a later cell
/// needs them, so snapshots stay small.
public struct DatasetReference: Codable, Equatable, Sendable {
    public var path: String
    public var displayPath: String
    public var sha256: String
    public var format: DatasetFormat
    public var exampleCount: Int
}

/// The model a session has loaded: what was asked for and what actually runs.
public struct ModelReference: Codable, Equatable, Sendable {
    public var requested: String
    /// The model that runs (differs from `requested` when the fallback was used).
    public var name: String
    public var path: String
    public var architecture: String
    public var parameterCount: Int
    /// Why the requested model was not used, when a fallback was.
    public var fallbackReason: String?

    /// `gpt2`, or `smollm2-135m-instruct (fallback: gpt2 unavailable)`.
    public var headerDescription: String {
        var s = "\(name) (\(architecture), \(Format.integer(parameterCount)) parameters)"
        if fallbackReason != nil { s += " — the notebook's fallback; \(requested) was not available" }
        return s
    }
}

/// A LoRA adapter of the session: PEFT files in the state directory, named by the digest
/// of their weights, so a snapshot stays small and a re-run finds the exact tensors.
public struct AdapterReference: Codable, Equatable, Sendable {
    /// The directory holding `adapter_config.json` and `adapter_model.safetensors`.
    public var path: String
    /// SHA-256 of `adapter_model.safetensors`.
    public var sha256: String
    public var config: LoRAConfig
    /// The model (``ModelReference/path``) the adapter belongs to.
    public var modelPath: String
    public var modules: Int
    public var parameterCount: Int
    /// Optimizer steps trained in this session so far.
    public var trainedSteps: Int
    /// Where the adapter came from: `inject_lora`, `train`, or a loaded directory.
    public var origin: String
}

/// The state carried from cell to cell and snapshotted after each one.
///
/// Only small values and references to immutable inputs live here; large derived things
/// (loaded examples, later models) are rebuilt from the references on demand.
public struct SessionState: Codable, Equatable, Sendable {
    /// Notebook parameters after `--param` overrides.
    public var parameters: [String: String] = [:]
    /// Data sets by name.
    public var datasets: [String: DatasetReference] = [:]
    /// The model loaded by `load_model`, if any.
    public var model: ModelReference?
    /// The LoRA adapter on that model (from `inject_lora`, `train` or `load_adapter`), if any.
    public var adapter: AdapterReference?
    /// The client/server split and quantization fixed by `compile_hybrid`, if any.
    public var hybrid: HybridPlan?

    public init() {}
}

/// The working state of one run: the snapshot-able ``SessionState`` plus caches of large
/// values rebuilt from it.
public final class Session {
    public var state: SessionState
    private var loadedDatasets: [String: Dataset] = [:]
    private var loadedModels: [String: LoadedModel] = [:]
    fileprivate var loadedAdapters: [String: LoRAAdapter] = [:]
    fileprivate var backends: [HybridPlan: QuantizedLinearBackend] = [:]
    fileprivate var encryptedBackends: [HybridPlan: EncryptedLinearBackend] = [:]
    fileprivate var keyring: Keyring?
    /// Where the client's secret key is kept (mode 0600); nil: in memory only.
    public var keyDirectory: URL?

    public init(state: SessionState = SessionState()) {
        self.state = state
    }

    /// Remembers a data set loaded by a step.
    public func register(_ dataset: Dataset, as name: String, reference: DatasetReference) {
        state.datasets[name] = reference
        loadedDatasets[reference.sha256] = dataset
    }

    /// The examples of a data set loaded earlier, re-read from its file when this process
    /// has not read it yet (e.g. after a reused cell). The file must still have the digest
    /// it had when it was loaded.
    public func dataset(named name: String) throws -> Dataset {
        guard let reference = state.datasets[name] else {
            throw SessionError.unknownDataset(name, known: state.datasets.keys.sorted())
        }
        if let cached = loadedDatasets[reference.sha256] { return cached }
        let url = URL(fileURLWithPath: reference.path)
        let digest = try SHA256Digest.hex(fileAt: url)
        guard digest == reference.sha256 else { throw SessionError.fileChanged(reference.displayPath) }
        let dataset = try Dataset.load(from: url, format: reference.format, displayPath: reference.displayPath)
        loadedDatasets[reference.sha256] = dataset
        return dataset
    }
}

extension Session {
    /// Remembers a model loaded by a step.
    public func register(_ loaded: LoadedModel, reference: ModelReference) {
        state.model = reference
        state.adapter = nil  // an adapter belongs to the model it was made for
        state.hybrid = nil
        loadedModels[reference.path] = loaded
    }

    /// The session's model, loaded again from its file when this process has not loaded it
    /// yet (e.g. after a reused `load_model` cell).
    public func model() throws -> LoadedModel {
        guard let reference = state.model else { throw SessionError.noModel }
        if let cached = loadedModels[reference.path] { return cached }
        let loaded = try LoadedModel.load(try ModelCatalog.locate(reference.path))
        loadedModels[reference.path] = loaded
        return loaded
    }
}

extension Session {
    /// Stores `adapter` as PEFT files under `directory/<digest>/` and makes it the session's.
    @discardableResult
    public func register(_ adapter: LoRAAdapter, in directory: URL, trainedSteps: Int, origin: String) throws -> AdapterReference {
        guard let model = state.model else { throw SessionError.noModel }
        let staging = directory.appendingPathComponent(".staging-\(getpid())-\(UInt32.random(in: 0...UInt32.max))", isDirectory: true)
        try PEFTAdapter.save(adapter, to: staging, baseModelName: model.name)
        let digest = try SHA256Digest.hex(fileAt: staging.appendingPathComponent(PEFTAdapter.weightsFileName))
        let final = directory.appendingPathComponent(digest, isDirectory: true)
        let fm = FileManager.default
        if fm.fileExists(atPath: final.appendingPathComponent(PEFTAdapter.weightsFileName).path) {
            try? fm.removeItem(at: staging)
        } else {
            try? fm.removeItem(at: final)
            try fm.moveItem(at: staging, to: final)
        }
        let reference = AdapterReference(path: final.path, sha256: digest, config: adapter.config, modelPath: model.path,
                                         modules: adapter.layers.count, parameterCount: adapter.parameterCount,
                                         trainedSteps: trainedSteps, origin: origin)
        state.adapter = reference
        loadedAdapters[digest] = adapter
        return reference
    }

    /// The session's adapter, read again from its files when this process has not made it
    /// (e.g. after a reused cell); nil when there is none.
    public func adapter() throws -> LoRAAdapter? {
        guard let reference = state.adapter else { return nil }
        if let cached = loadedAdapters[reference.sha256] { return cached }
        let directory = URL(fileURLWithPath: reference.path)
        let weights = directory.appendingPathComponent(PEFTAdapter.weightsFileName)
        guard FileManager.default.fileExists(atPath: weights.path) else { throw SessionError.adapterMissing(reference.path) }
        guard try SHA256Digest.hex(fileAt: weights) == reference.sha256 else { throw SessionError.fileChanged(weights.path) }
        let model = try self.model()
        guard let trainable = model.model as? TrainableModel else { throw SessionError.noModel }
        let adapter = try PEFTAdapter.load(from: directory, modules: trainable.linearModules, seed: reference.config.seed)
        loadedAdapters[reference.sha256] = adapter
        return adapter
    }

    /// Where the frozen layers run in `mode`: nil for float on the client; the quantized
    /// backend of the session's `compile_hybrid` plan for `disable`; for `execute`, the same
    /// integers through encryption under the session's key and the in-process server.
    public func backend(for mode: ExecutionMode) throws -> LinearBackend? {
        switch mode {
        case .torch: return nil
        case .disable:
            guard let plan = state.hybrid else { throw SessionError.noHybridPlan(mode.rawValue) }
            if let cached = backends[plan] { return cached }
            let (_, model) = try trainableModel()
            let backend = try QuantizedLinearBackend(plan: plan, model: model)
            backends[plan] = backend
            return backend
        case .execute:
            guard let plan = state.hybrid else { throw SessionError.noHybridPlan(mode.rawValue) }
            if let cached = encryptedBackends[plan] { return cached }
            let (_, model) = try trainableModel()
            let backend = try EncryptedLinearBackend(plan: plan, model: model, keyring: try clientKeyring())
            encryptedBackends[plan] = backend
            return backend
        }
    }

    /// The client's keys: read from ``keyDirectory`` when an earlier run saved them, else made
    /// once for this session (from the OS CSPRNG) and saved there with mode 0600.
    public func clientKeyring() throws -> Keyring {
        if let keyring { return keyring }
        var made = Keyring()
        if let dir = keyDirectory {
            let url = dir.appendingPathComponent("secret.key")
            if FileManager.default.fileExists(atPath: url.path) {
                made = try Keyring.load(from: url)
            } else {
                _ = made.serialized(all: true)  // one key per parameter set, made now
                try made.save(to: url)
            }
        }
        keyring = made
        return made
    }

    /// The session's model as a ``TrainableModel``.
    public func trainableModel() throws -> (LoadedModel, TrainableModel) {
        let loaded = try model()
        guard let trainable = loaded.model as? TrainableModel else { throw SessionError.noModel }
        return (loaded, trainable)
    }
}

public enum SessionError: Error, Equatable, CustomStringConvertible {
    case unknownDataset(String, known: [String])
    case fileChanged(String)
    case noModel
    case noAdapter
    case adapterMissing(String)
    case noHybridPlan(String)

    public var description: String {
        switch self {
        case .unknownDataset(let n, let known):
            return "no data set named '\(n)'; loaded: \(known.isEmpty ? "none (add an `nb load_data` cell first)" : known.joined(separator: ", "))"
        case .fileChanged(let p): return "\(p) changed since it was loaded; run the notebook again so the cells that read it re-run"
        case .noModel: return "no model is loaded; add an `nb load_model` cell before this one"
        case .noAdapter: return "the model has no LoRA adapter; add an `nb inject_lora` or `nb load_adapter` cell before this one"
        case .noHybridPlan(let mode): return "mode \(mode) runs the remote layers quantized: add an `nb compile_hybrid` cell before this one"
        case .adapterMissing(let p): return "the adapter saved at \(p) is gone; run the notebook with --fresh"
        }
    }
}
