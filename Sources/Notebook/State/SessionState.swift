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
    /// Only the first `limit` examples are used (load_data's `limit`).
    public var limit: Int?

    var cacheKey: String { "\(sha256)#\(limit ?? 0)" }
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
    /// The Hugging Face id when the model's origin is known (``ModelLocation/huggingFaceID``).
    public var huggingFaceID: String? = nil

    /// What a saved adapter records as `base_model_name_or_path`: the Hugging Face id, else the path.
    public var adapterBaseName: String { huggingFaceID ?? path }

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

/// The deployment of the session: written by `save_deployment` or loaded by `load_deployment`.
public struct DeploymentReference: Codable, Equatable, Sendable {
    /// `deployment/<name>`: its `server/` and `client/` folders.
    public var path: String
    public var name: String
    public var deploymentID: String
    /// True when the session's model is this deployment's client folder (`load_deployment`):
    /// the frozen matrices are then not in this process, and the key is the client folder's.
    public var clientLoaded: Bool

    public var clientDirectory: URL { URL(fileURLWithPath: path).appendingPathComponent(DeploymentLayout.clientFolder, isDirectory: true) }
}

/// One named part of ``SessionState``: what a step reads and writes. A cell's cache key
/// holds the versions of the slots its step reads, so an edit re-runs exactly the cells that
/// read, directly or through others, what the edited cell writes.
public enum SessionSlot: Hashable, Comparable, Sendable, CustomStringConvertible {
    case parameters, model, adapter, hybrid, deployment
    /// One data set, by its name in the notebook.
    case dataset(String)

    public var description: String {
        switch self {
        case .parameters: "parameters"
        case .model: "model"
        case .adapter: "adapter"
        case .hybrid: "hybrid plan"
        case .deployment: "deployment"
        case .dataset(let name): "data set '\(name)'"
        }
    }

    /// The fixed slots (data sets come by name).
    public static let fixed: [SessionSlot] = [.parameters, .model, .adapter, .hybrid, .deployment]
}

/// What a step declares it reads and writes of the session state.
public struct StepDataflow: Equatable, Sendable {
    public var reads: Set<SessionSlot>
    public var writes: Set<SessionSlot>
    public init(reads: Set<SessionSlot> = [], writes: Set<SessionSlot> = []) { (self.reads, self.writes) = (reads, writes) }
}

/// Records which slots a step touched (for the declaration test and for checks).
public final class SlotAccessLog: @unchecked Sendable {
    private let lock = NSLock()
    private var _reads = Set<SessionSlot>(), _writes = Set<SessionSlot>()
    /// A read of the whole set of data sets (their names), not of one by name.
    private var _allDatasets = false
    public init() {}
    public var reads: Set<SessionSlot> { lock.withLock { _reads } }
    public var writes: Set<SessionSlot> { lock.withLock { _writes } }
    public var readAllDatasets: Bool { lock.withLock { _allDatasets } }
    /// A read of what the step itself wrote earlier is no dependency on earlier cells.
    func read(_ s: SessionSlot) { lock.withLock { if !_writes.contains(s) { _reads.insert(s) } } }
    func wrote(_ s: SessionSlot) { lock.withLock { _ = _writes.insert(s) } }
    func readDatasets() { lock.withLock { _allDatasets = true } }
}

/// The state carried from cell to cell and snapshotted after each one.
///
/// Only small values and references to immutable inputs live here; large derived things
/// (loaded examples, later models) are rebuilt from the references on demand. Each field is
/// a ``SessionSlot``; reads and writes go to ``accessLog`` when one is attached.
public struct SessionState: Codable, Equatable, Sendable {
    struct Values: Codable, Equatable, Sendable {
        var parameters: [String: String] = [:]
        var datasets: [String: DatasetReference] = [:]
        var model: ModelReference?
        var adapter: AdapterReference?
        var hybrid: HybridPlan?
        var deployment: DeploymentReference?
    }
    private var values = Values()
    /// Where reads and writes are recorded (not part of the state: never coded or compared).
    public var accessLog: SlotAccessLog?

    public init() {}
    public init(from decoder: Decoder) throws { values = try Values(from: decoder) }
    public func encode(to encoder: Encoder) throws { try values.encode(to: encoder) }
    public static func == (a: SessionState, b: SessionState) -> Bool { a.values == b.values }

    /// Notebook parameters after `--param` overrides.
    public var parameters: [String: String] {
        get { accessLog?.read(.parameters); return values.parameters }
        set { accessLog?.wrote(.parameters); values.parameters = newValue }
    }
    /// Data sets by name (reading this reads every data set's slot; prefer ``dataset(_:)``).
    public var datasets: [String: DatasetReference] { accessLog?.readDatasets(); return values.datasets }
    /// The data set named `name`.
    public func dataset(_ name: String) -> DatasetReference? { accessLog?.read(.dataset(name)); return values.datasets[name] }
    public mutating func setDataset(_ name: String, _ reference: DatasetReference?) {
        accessLog?.wrote(.dataset(name))
        values.datasets[name] = reference
    }
    /// The model loaded by `load_model`, if any.
    public var model: ModelReference? {
        get { accessLog?.read(.model); return values.model }
        set { accessLog?.wrote(.model); values.model = newValue }
    }
    /// The LoRA adapter on that model (from `inject_lora`, `train` or `load_adapter`), if any.
    public var adapter: AdapterReference? {
        get { accessLog?.read(.adapter); return values.adapter }
        set { accessLog?.wrote(.adapter); values.adapter = newValue }
    }
    /// The client/server split and quantization fixed by `compile_hybrid`, if any.
    public var hybrid: HybridPlan? {
        get { accessLog?.read(.hybrid); return values.hybrid }
        set { accessLog?.wrote(.hybrid); values.hybrid = newValue }
    }
    /// The deployment saved or loaded, if any.
    public var deployment: DeploymentReference? {
        get { accessLog?.read(.deployment); return values.deployment }
        set { accessLog?.wrote(.deployment); values.deployment = newValue }
    }

    /// Every slot that holds something (data sets by name), untracked.
    public var slots: [SessionSlot] { SessionSlot.fixed + values.datasets.keys.sorted().map { .dataset($0) } }

    /// The slots whose values differ between the two states, untracked.
    public func slotsDiffering(from other: SessionState) -> Set<SessionSlot> {
        var out = Set<SessionSlot>()
        let (a, b) = (values, other.values)
        if a.parameters != b.parameters { out.insert(.parameters) }
        if a.model != b.model { out.insert(.model) }
        if a.adapter != b.adapter { out.insert(.adapter) }
        if a.hybrid != b.hybrid { out.insert(.hybrid) }
        if a.deployment != b.deployment { out.insert(.deployment) }
        for name in Set(a.datasets.keys).union(b.datasets.keys) where a.datasets[name] != b.datasets[name] { out.insert(.dataset(name)) }
        return out
    }

    /// Sets `slot` to its value in `other`, untracked (restoring a slot from its writer's snapshot).
    public mutating func copy(_ slot: SessionSlot, from other: SessionState) {
        switch slot {
        case .parameters: values.parameters = other.values.parameters
        case .model: values.model = other.values.model
        case .adapter: values.adapter = other.values.adapter
        case .hybrid: values.hybrid = other.values.hybrid
        case .deployment: values.deployment = other.values.deployment
        case .dataset(let name): values.datasets[name] = other.values.datasets[name]
        }
    }
}

/// The working state of one run: the snapshot-able ``SessionState`` plus caches of large
/// values rebuilt from it.
public final class Session {
    public var state: SessionState
    private var loadedDatasets: [String: Dataset] = [:]
    private var loadedModels: [String: LoadedModel] = [:]
    fileprivate var loadedAdapters: [String: LoRAAdapter] = [:]
    fileprivate var backends: [HybridPlan: QuantizedLinearBackend] = [:]
    fileprivate var encryptedBackends: [EncryptedBackendKey: EncryptedLinearBackend] = [:]
    fileprivate var keyring: Keyring?
    fileprivate var remoteBackends: [EncryptedBackendKey: EncryptedLinearBackend] = [:]
    /// `nb serve` processes started for `server: local`, by deployment path.
    public let localServers = LocalServers()
    /// Where the client's secret key is kept (mode 0600); nil: in memory only.
    public var keyDirectory: URL?

    public init(state: SessionState = SessionState()) {
        self.state = state
    }

    /// Remembers a data set loaded by a step.
    public func register(_ dataset: Dataset, as name: String, reference: DatasetReference) {
        state.setDataset(name, reference)
        loadedDatasets[reference.cacheKey] = dataset
    }

    /// The examples of a data set loaded earlier, re-read from its file when this process
    /// has not read it yet (e.g. after a reused cell). The file must still have the digest
    /// it had when it was loaded.
    public func dataset(named name: String) throws -> Dataset {
        guard let reference = state.dataset(name) else {
            throw SessionError.unknownDataset(name, known: state.datasets.keys.sorted())
        }
        if let cached = loadedDatasets[reference.cacheKey] { return cached }
        let url = URL(fileURLWithPath: reference.path)
        let digest = try SHA256Digest.hex(fileAt: url)
        guard digest == reference.sha256 else { throw SessionError.fileChanged(reference.displayPath) }
        var dataset = try Dataset.load(from: url, format: reference.format, displayPath: reference.displayPath)
        if let limit = reference.limit { dataset.examples = Array(dataset.examples.prefix(limit)) }
        loadedDatasets[reference.cacheKey] = dataset
        return dataset
    }
}

extension Session {
    /// Remembers a model loaded by a step.
    public func register(_ loaded: LoadedModel, reference: ModelReference) {
        state.model = reference
        state.adapter = nil  // an adapter belongs to the model it was made for
        state.hybrid = nil
        state.deployment = nil
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
        try PEFTAdapter.save(adapter, to: staging, baseModelName: model.adapterBaseName)
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
    public func backend(for mode: ExecutionMode, remote: RemoteTarget? = nil, protocol productProtocol: ProductProtocol = .masked) throws -> LinearBackend? {
        if mode != .remote, let d = state.deployment, d.clientLoaded {
            throw SessionError.clientOnly(mode.rawValue)
        }
        switch mode {
        case .torch: return nil
        case .remote:
            guard let plan = state.hybrid else { throw SessionError.noHybridPlan(mode.rawValue) }
            guard let remote else { throw SessionError.noServer }
            return try remoteBackend(plan: plan, target: remote, protocol: productProtocol)
        case .disable:
            guard let plan = state.hybrid else { throw SessionError.noHybridPlan(mode.rawValue) }
            if let cached = backends[plan] { return cached }
            let (_, model) = try trainableModel()
            let backend = try QuantizedLinearBackend(plan: plan, model: model)
            backends[plan] = backend
            return backend
        case .execute:
            guard let plan = state.hybrid else { throw SessionError.noHybridPlan(mode.rawValue) }
            let key = EncryptedBackendKey(plan: plan, url: nil, protocol: productProtocol)
            if let cached = encryptedBackends[key] { return cached }
            let (_, model) = try trainableModel()
            let keyring = try clientKeyring()
            // The `disable` backend's quantized weights when a cell made them, else made for this.
            let quantized = try backends[plan] ?? QuantizedLinearBackend(plan: plan, model: model)
            let backend = try EncryptedLinearBackend(quantized: quantized, keyring: keyring, protocol: productProtocol,
                                                     maskStore: productProtocol == .masked ? try maskStore() : nil)
            encryptedBackends[key] = backend
            return backend
        }
    }

    /// The `remote` backend: the plan's products through `nb serve` at `target`. The modules'
    /// public metadata comes from the deployment's client folder (or, with the whole model in
    /// this process, from its own quantization); the server must serve the same deployment.
    func remoteBackend(plan: HybridPlan, target: RemoteTarget, protocol productProtocol: ProductProtocol) throws -> EncryptedLinearBackend {
        let (url, token) = try resolve(target)
        let key = EncryptedBackendKey(plan: plan, url: url.absoluteString, protocol: productProtocol)
        if let cached = remoteBackends[key] { return cached }
        let transport = HTTPTransport(baseURL: url, token: token, settings: target.settings)
        let served = try transport.modules()
        let metadata: [RemoteModuleMetadata]
        if let client = try model().clientDeployment {
            guard served.deploymentID == client.deploymentID else {
                throw RemoteServerError.wrongDeployment(url: url.absoluteString, expected: client.deploymentID, found: served.deploymentID)
            }
            metadata = client.modules
        } else {
            let (_, model) = try trainableModel()
            metadata = try QuantizedLinearBackend(plan: plan, model: model).remoteModules().metadata
            let byName = Dictionary(served.manifest.modules.map { ($0.name, $0) }) { a, _ in a }
            for m in metadata where byName[m.name] != m {
                throw RemoteServerError.wrongDeployment(url: url.absoluteString, expected: "one with this model's quantized \(m.name)", found: served.deploymentID)
            }
        }
        let backend = try EncryptedLinearBackend(plan: plan, metadata: metadata, client: FHEClient(keyring: try clientKeyring()), transport: transport,
                                                 protocol: productProtocol, maskStore: productProtocol == .masked ? try maskStore() : nil)
        remoteBackends[key] = backend
        return backend
    }

    /// The server's URL and token: given, or a local `nb serve` of the session's deployment.
    func resolve(_ target: RemoteTarget) throws -> (URL, String?) {
        guard target.server == RemoteTarget.local else { return (target.url!, try target.token()) }
        guard let d = state.deployment else { throw SessionError.noDeployment }
        let server = try localServers.server(for: URL(fileURLWithPath: d.path), tokenDirectory: keyDirectory)
        return (server.url, server.token)
    }

    /// The client's keys: read from ``keyDirectory`` when an earlier run saved them, else made
    /// once for this session (from the OS CSPRNG) and saved there with mode 0600.
    public func clientKeyring() throws -> Keyring {
        if let keyring { return keyring }
        if let d = state.deployment, d.clientLoaded {
            // The deployment's own key (mode 0600 in its client folder).
            let loaded = try Keyring.load(from: d.clientDirectory.appendingPathComponent(DeploymentLayout.clientKey))
            keyring = loaded
            return loaded
        }
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

    /// The masked protocol's store of pads, beside the key: under ``keyDirectory`` (the
    /// notebook's state), else in the loaded deployment's client folder, else a temporary
    /// directory of this process. Streams are checked against the key and the weights, so one
    /// store serves every plan and mode that share them.
    public func maskStore() throws -> MaskStore {
        let directory: URL
        if let k = keyDirectory {
            directory = k.appendingPathComponent("masks", isDirectory: true)
        } else if let d = state.deployment, d.clientLoaded {
            directory = d.clientDirectory.appendingPathComponent("masks", isDirectory: true)
        } else {
            directory = FileManager.default.temporaryDirectory.appendingPathComponent("nb-masks-\(getpid())", isDirectory: true)
        }
        return try MaskStore.shared(at: directory)
    }

    /// Refuses steps that need the frozen matrices when the model is a deployment's client.
    public func requireWholeModel(for step: String) throws {
        if state.deployment?.clientLoaded == true {
            throw StepFailure("\(step) needs the whole model; this session's model is a deployment's client folder (its frozen matrices are on the server)")
        }
    }

    /// Forgets the cached key (a deployment loaded since brings its own).
    public func resetKeyring() { keyring = nil; remoteBackends = [:] }

    /// The session's model as a ``TrainableModel``.
    public func trainableModel() throws -> (LoadedModel, TrainableModel) {
        let loaded = try model()
        guard let trainable = loaded.model as? TrainableModel else { throw SessionError.noModel }
        return (loaded, trainable)
    }
}

struct EncryptedBackendKey: Hashable {
    var plan: HybridPlan
    /// nil: the in-process server (`execute`).
    var url: String?
    var `protocol`: ProductProtocol
}

public enum SessionError: Error, Equatable, CustomStringConvertible {
    case unknownDataset(String, known: [String])
    case fileChanged(String)
    case noModel
    case noAdapter
    case adapterMissing(String)
    case noHybridPlan(String)
    case clientOnly(String)
    case noServer
    case noDeployment

    public var description: String {
        switch self {
        case .unknownDataset(let n, let known):
            return "no data set named '\(n)'; loaded: \(known.isEmpty ? "none (add an `nb load_data` cell first)" : known.joined(separator: ", "))"
        case .fileChanged(let p): return "\(p) changed since it was loaded; run the notebook again so the cells that read it re-run"
        case .noModel: return "no model is loaded; add an `nb load_model` cell before this one"
        case .noAdapter: return "the model has no LoRA adapter; add an `nb inject_lora` or `nb load_adapter` cell before this one"
        case .noHybridPlan(let mode): return "mode \(mode) runs the remote layers quantized: add an `nb compile_hybrid` cell before this one"
        case .clientOnly(let mode):
            return "mode \(mode) needs the frozen matrices, which this client does not hold (the model is a deployment's client folder): use mode: remote"
        case .noServer: return "mode remote needs a server: add `server: http://HOST:PORT` (or `server: local` to start `nb serve` on the session's deployment)"
        case .noDeployment: return "`server: local` serves the session's deployment: add an `nb save_deployment` or `nb load_deployment` cell before this one"
        case .adapterMissing(let p): return "the adapter saved at \(p) is gone; run the notebook with --fresh"
        }
    }
}
