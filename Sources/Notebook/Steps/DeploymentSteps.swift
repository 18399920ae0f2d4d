import Engine
import FHE
import Foundation

/// `nb save_deployment`: splits the session's hybrid model into a server folder and a client
/// folder (see ``DeploymentLayout``) that `nb serve` and `load_deployment` read.
///
/// ```nb save_deployment
/// name: gpt2-fhe          # deployment/<name>/ under the current directory
/// # path: ../deployment/x # or an explicit folder (relative to the notebook)
/// ```
public enum SaveDeploymentStep: Step {
    public static let name = "save_deployment"
    public static func dataflow(_ _: Parameters) -> StepDataflow { StepDataflow(reads: [.model, .adapter, .hybrid, .deployment], writes: [.deployment]) }
    public static let summary = "write the hybrid model as a server folder (quantized remote weights) and a client folder (the rest, adapter, key)"

    public struct Parameters: StepParameters {
        public enum Keys: String, CodingKey, CaseIterable { case name, path }
        public typealias CodingKeys = Keys
        public var name: String
        public var path: String?

        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: Keys.self)
            name = try c.decode(String.self, forKey: .name)
            path = try c.decodeIfPresent(String.self, forKey: .path)
        }

        public func validate() throws(ParameterError) {
            let allowed = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-_."))
            if name.isEmpty || name.hasPrefix(".") || name.unicodeScalars.contains(where: { !allowed.contains($0) }) {
                throw ParameterError("name", "'\(name)' must be letters, digits, '-', '_' or '.', not starting with '.'")
            }
            if let path, path.isEmpty { throw ParameterError("path", "must name a folder") }
        }
    }

    static func directory(_ p: Parameters, context: StepContext) -> URL {
        if let path = p.path { return context.resolve(path) }
        return URL(fileURLWithPath: FileManager.default.currentDirectoryPath).appendingPathComponent("deployment/\(p.name)", isDirectory: true)
    }

    public static func run(_ p: Parameters, context: StepContext) throws {
        let session = context.session
        let (loaded, model) = try session.trainableModel()
        if loaded.clientDeployment != nil { throw StepFailure("the model is already a deployment's client folder; save_deployment needs the whole model") }
        guard let plan = session.state.hybrid else { throw StepFailure("save_deployment needs the split: add an `nb compile_hybrid` cell before this one") }
        let adapter = try session.adapter()
        let dir = directory(p, context: context)
        let started = Date()
        let summary: DeploymentSummary
        do {
            summary = try Deployment.save(to: dir, name: p.name, modelName: session.state.model?.name ?? loaded.location.displayName, loaded: loaded,
                                          model: model, plan: plan, adapter: adapter, adapterTrainedSteps: session.state.adapter?.trainedSteps ?? 0,
                                          keyring: try session.clientKeyring())
        } catch { throw StepFailure(key: p.path == nil ? "name" : "path", "\(error)") }
        session.state.deployment = DeploymentReference(path: dir.path, name: p.name, deploymentID: summary.server.deploymentID, clientLoaded: false)
        let serverBytes = summary.files.filter { $0.path.hasPrefix("server/") }.reduce(0) { $0 + $1.bytes }
        let clientBytes = summary.files.filter { $0.path.hasPrefix("client/") }.reduce(0) { $0 + $1.bytes }
        context.emit(.metrics([
            Metric("deployment", "\(context.display(dir)) (id \(summary.server.deploymentID))"),
            Metric("remote modules", "\(summary.server.modules.count) (\(summary.server.scheme.description))"),
            Metric("server folder", "\(FHEReport.bytes(Double(serverBytes))): \(Format.integer(summary.serverParameters)) integer weights, W and Wᵀ"),
            Metric("client folder", "\(FHEReport.bytes(Double(clientBytes))): \(Format.integer(summary.clientParameters)) float parameters\(adapter == nil ? "" : " + the LoRA adapter") + key"),
            Metric("time", Format.duration(Date().timeIntervalSince(started))),
        ]))
        context.emit(.table(OutputTable(title: "Files", columns: ["file", "bytes", "holds"], rows: summary.files.map {
            [$0.path, Format.integer($0.bytes), describe($0.path)]
        })))
        context.emit(.text("""
            Serve it:   nb serve \(context.display(dir)) --port 8080 --token-file TOKEN
            Client:     nb load_deployment with path \(context.display(dir)); then train/generate/evaluate with mode: remote.
            server/ holds only public data: the foundation model's quantized weights and their scales. The key, the adapter and the calibration ranges (derived from the training data) are only in client/.
            """))
    }

    static func describe(_ path: String) -> String {
        switch path {
        case "server/\(DeploymentLayout.serverManifest)": return "public manifest: shapes, weight scales and row sums, FHE parameter sets"
        case "server/\(DeploymentLayout.serverWeights)": return "8-bit weights of the remote modules (W and Wᵀ)"
        case "client/\(DeploymentLayout.clientManifest)": return "the plan (scheme, calibrated ranges), modules' public metadata, deployment id"
        case "client/\(DeploymentLayout.clientTensors)": return "embeddings, norms, biases, local layers"
        case "client/\(DeploymentLayout.clientMetadata)": return "the remote modules' weight scales and row sums (public)"
        case "client/\(DeploymentLayout.clientConfig)": return "model configuration"
        case "client/\(DeploymentLayout.clientVocabulary)": return "tokenizer vocabulary and merges"
        case "client/\(DeploymentLayout.clientKey)": return "secret key (mode 0600)"
        default: return path.hasPrefix("client/adapter/") ? "LoRA adapter (PEFT layout)" : ""
        }
    }
}

/// `nb load_deployment`: makes a deployment's client folder the session's model, with its
/// plan, adapter and key. The frozen matrices stay on the server: only `mode: remote` runs
/// the remote layers from here.
///
/// ```nb load_deployment
/// path: ../deployment/gpt2-fhe    # the deployment folder or its client/ folder
/// ```
public enum LoadDeploymentStep: Step {
    public static let name = "load_deployment"
    public static func dataflow(_ _: Parameters) -> StepDataflow { StepDataflow(reads: [], writes: [.model, .adapter, .hybrid, .deployment]) }
    public static let summary = "load a deployment's client folder (no frozen matrices): its model part, plan, adapter and key"

    public struct Parameters: StepParameters {
        public enum Keys: String, CodingKey, CaseIterable { case path }
        public typealias CodingKeys = Keys
        public var path: String

        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: Keys.self)
            path = try c.decode(String.self, forKey: .path)
        }

        public func validate() throws(ParameterError) {
            if path.isEmpty { throw ParameterError("path", "must name a deployment folder") }
        }
    }

    static func clientFiles(_ client: URL) -> [URL] {
        var files = [DeploymentLayout.clientManifest, DeploymentLayout.clientMetadata, DeploymentLayout.clientConfig, DeploymentLayout.clientTensors,
                     DeploymentLayout.clientVocabulary, DeploymentLayout.clientKey].map { client.appendingPathComponent($0) }
        files += [PEFTAdapter.configFileName, PEFTAdapter.weightsFileName].map {
            client.appendingPathComponent(DeploymentLayout.clientAdapter).appendingPathComponent($0)
        }
        return files.filter { FileManager.default.fileExists(atPath: $0.path) }
    }

    public static func inputs(_ p: Parameters, context: StepContext) -> [URL] {
        guard let client = try? Deployment.folder(DeploymentLayout.clientFolder, of: context.resolve(p.path), marker: DeploymentLayout.clientManifest) else { return [] }
        return clientFiles(client)
    }

    public static func run(_ p: Parameters, context: StepContext) throws {
        let session = context.session
        let url = context.resolve(p.path)
        let client: URL
        do { client = try Deployment.folder(DeploymentLayout.clientFolder, of: url, marker: DeploymentLayout.clientManifest) } catch {
            throw StepFailure(key: "path", error.description)
        }
        let loaded: LoadedModel
        do { loaded = try LoadedModel.load(try ModelCatalog.locate(client.path)) } catch { throw StepFailure(key: "path", "\(error)") }
        guard let manifest = loaded.clientDeployment, let model = loaded.model as? TrainableModel else { throw StepFailure(key: "path", "not a client folder") }
        session.register(loaded, reference: ModelReference(
            requested: p.path, name: "\(manifest.model) (client of \(manifest.name))", path: client.path, architecture: loaded.model.architecture,
            parameterCount: loaded.model.parameterCount, fallbackReason: nil))
        session.state.hybrid = manifest.plan
        let root = client.deletingLastPathComponent()
        session.state.deployment = DeploymentReference(path: root.path, name: manifest.name, deploymentID: manifest.deploymentID, clientLoaded: true)
        session.resetKeyring()
        let keyring: Keyring
        do { keyring = try session.clientKeyring() } catch { throw StepFailure(key: "path", "\(error)") }
        var adapterText = "none"
        if manifest.hasAdapter {
            let adapterURL = client.appendingPathComponent(DeploymentLayout.clientAdapter, isDirectory: true)
            let adapter: LoRAAdapter
            do { adapter = try PEFTAdapter.load(from: adapterURL, modules: model.linearModules, seed: manifest.adapterSeed) } catch { throw StepFailure(key: "path", error.description) }
            try session.register(adapter, in: context.adapterStore, trainedSteps: manifest.adapterTrainedSteps, origin: context.display(adapterURL))
            adapterText = "r = \(adapter.config.rank), \(adapter.layers.count) modules, \(Format.integer(adapter.parameterCount)) parameters, \(manifest.adapterTrainedSteps) steps trained"
        }
        let float = manifest.modules.reduce(0) { $0 + $1.inFeatures * $1.outFeatures }
        context.emit(.metrics([
            Metric("deployment", "\(manifest.name) (id \(manifest.deploymentID)) from \(context.display(root))"),
            Metric("model", "\(manifest.model), \(manifest.architecture)"),
            Metric("parameters here", "\(Format.integer(loaded.model.parameterCount)) (the server holds \(Format.integer(float)) more)"),
            Metric("remote modules", "\(manifest.modules.count), \(manifest.plan.scheme.description)"),
            Metric("adapter", adapterText),
            Metric("key", "\(keyring.allKeys.map(\.parameters.name).joined(separator: ", ")) (client/\(DeploymentLayout.clientKey), mode 0600)"),
            Metric("load time", Format.duration(loaded.loadSeconds)),
        ]))
    }
}
