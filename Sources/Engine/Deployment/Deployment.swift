import FHE
import Foundation

/// A deployment on disk (`deployment/<name>/`), split in two folders that can live on two
/// machines:
///
/// - `server/`: `manifest.json` (public: shapes, weight scales and row sums, the FHE
///   parameter sets) and `weights.safetensors` (the remote modules' 8-bit integer weights,
///   W for the forward and Wᵀ for the backward). No key, no adapter, no calibration
///   ranges, nothing of the client's data.
/// - `client/`: `nb-client.json` (the plan with its calibrated ranges and the modules'
///   public metadata), `config.json`, `model.safetensors` (embeddings, norms, lm_head,
///   biases, local layers), `vocabulary.json`, `adapter/` (PEFT layout) and `secret.key`
///   (mode 0600).
public enum DeploymentLayout {
    public static let serverFolder = "server", clientFolder = "client"
    public static let serverManifest = "manifest.json", serverWeights = "weights.safetensors"
    public static let clientManifest = "nb-client.json", clientConfig = "config.json", clientTensors = "model.safetensors"
    public static let clientVocabulary = "vocabulary.json", clientAdapter = "adapter", clientKey = "secret.key"
    /// The modules' weight scales and row sums (F64), kept out of the JSON manifest: parsing
    /// hundreds of thousands of numbers as JSON would cost a small client more memory than its model.
    public static let clientMetadata = "weights-metadata.safetensors"
}

/// An FHE parameter set as the manifest names it (public).
public struct ParameterSetInfo: Codable, Equatable, Sendable {
    public var id: Int
    public var name: String
    public var ringDegree: Int
    public var modulusBits: Int
    public var noiseStandardDeviation: Double
    public var securityBits: Int
    public var securitySource: String

    public init(_ p: FHEParameters) {
        (id, name, ringDegree, modulusBits) = (Int(p.id), p.name, p.ringDegree, p.modulusBits)
        (noiseStandardDeviation, securityBits, securitySource) = (p.noiseStandardDeviation, p.securityBits, p.securitySource)
    }
}

/// `server/manifest.json`: everything the server publishes (`GET /v1/modules`).
public struct ServerManifest: Codable, Equatable, Sendable {
    public static let formatName = "nb-deployment-server"
    public var format: String
    public var version: Int
    public var name: String
    /// The foundation model, e.g. `gpt2`.
    public var model: String
    public var architecture: String
    /// Bits and layout of the weights (the activations' part is the client's business but
    /// public too: it fixes what the client sends).
    public var scheme: QuantizationScheme
    public var parameterSets: [ParameterSetInfo]
    public var modules: [RemoteModuleMetadata]
    public var weightsFile: String
    /// SHA-256 of the weights file; also the deployment's identity.
    public var weightsSHA256: String

    public var deploymentID: String { String(weightsSHA256.prefix(16)) }
}

/// `client/nb-client.json`.
public struct ClientManifest: Codable, Equatable, Sendable {
    public static let formatName = "nb-deployment-client"
    public var format: String
    public var version: Int
    public var name: String
    public var model: String
    public var architecture: String
    /// The split and quantization, with the calibrated ranges (derived from the client's data).
    public var plan: HybridPlan
    public var modules: [RemoteModuleMetadata]
    /// The server deployment this client belongs to (``ServerManifest/deploymentID``).
    public var deploymentID: String
    /// Whether the model has SmolLM2-Instruct's chat template, and its default system message.
    public var chatTemplate: Bool
    public var chatSystemMessage: String?
    public var hasAdapter: Bool
    public var adapterTrainedSteps: Int
    /// The adapter's seed (its dropout stream), which PEFT files do not carry.
    public var adapterSeed: UInt64
}

extension ClientManifest {
    /// Writes `nb-client.json` (the modules without their scales and row sums) and
    /// `weights-metadata.safetensors` (those, as F64) into `directory`.
    func write(to directory: URL) throws {
        var tensors: [(name: String, values: [Double])] = []
        var stripped = self
        for (i, m) in modules.enumerated() {
            tensors += [(m.name + ".forward.scales", m.forward.scales), (m.name + ".forward.row_sums", m.forward.rowSums),
                        (m.name + ".backward.scales", m.backward.scales), (m.name + ".backward.row_sums", m.backward.rowSums)]
            (stripped.modules[i].forward.scales, stripped.modules[i].forward.rowSums) = ([], [])
            (stripped.modules[i].backward.scales, stripped.modules[i].backward.rowSums) = ([], [])
        }
        try SafeTensorsWriter.write(float64: tensors, to: directory.appendingPathComponent(DeploymentLayout.clientMetadata))
        try Deployment.writeJSON(stripped, to: directory.appendingPathComponent(DeploymentLayout.clientManifest))
    }

    /// Reads a client folder's manifest with its modules' scales and row sums, checked.
    public static func load(from directory: URL) throws -> ClientManifest {
        var manifest = try Deployment.readJSON(ClientManifest.self, from: directory.appendingPathComponent(DeploymentLayout.clientManifest))
        guard manifest.format == ClientManifest.formatName, manifest.version == 1 else {
            throw DeploymentError.notADeployment(path: directory.path, reason: "format \(manifest.format) version \(manifest.version), expected \(ClientManifest.formatName) version 1")
        }
        let file = try SafeTensorsFile(url: directory.appendingPathComponent(DeploymentLayout.clientMetadata))
        for i in manifest.modules.indices {
            let name = manifest.modules[i].name
            manifest.modules[i].forward.scales = try file.float64(name + ".forward.scales")
            manifest.modules[i].forward.rowSums = try file.float64(name + ".forward.row_sums")
            manifest.modules[i].backward.scales = try file.float64(name + ".backward.scales")
            manifest.modules[i].backward.rowSums = try file.float64(name + ".backward.row_sums")
            try manifest.modules[i].validate()
        }
        return manifest
    }
}

/// What ``Deployment/save(to:name:loaded:model:plan:adapter:keyring:)`` wrote.
public struct DeploymentSummary: Sendable {
    public var directory: URL
    public var server: ServerManifest
    public var client: ClientManifest
    /// Bytes per file, relative to the deployment folder, sorted by path.
    public var files: [(path: String, bytes: Int)]
    public var serverParameters: Int
    public var clientParameters: Int
}

public enum Deployment {
    /// Writes `directory` (replacing an earlier deployment there as a whole: everything is
    /// written to a staging folder first, then renamed into place).
    public static func save(to directory: URL, name: String, modelName: String, loaded: LoadedModel, model: TrainableModel,
                            plan: HybridPlan, adapter: LoRAAdapter?, adapterTrainedSteps: Int = 0,
                            keyring: Keyring) throws -> DeploymentSummary {
        try save(to: directory, name: name, modelName: modelName, model: model, tokenizer: loaded.tokenizer, chatTemplate: loaded.chatTemplate,
                 plan: plan, adapter: adapter, adapterTrainedSteps: adapterTrainedSteps, keyring: keyring)
    }

    /// The same from the parts (a model, its tokenizer and chat template).
    public static func save(to directory: URL, name: String, modelName: String, model: TrainableModel, tokenizer: BPETokenizer,
                            chatTemplate: ChatTemplate?, plan: HybridPlan, adapter: LoRAAdapter?, adapterTrainedSteps: Int = 0,
                            keyring: Keyring) throws -> DeploymentSummary {
        let architecture = model.architecture
        let fm = FileManager.default
        let parent = directory.deletingLastPathComponent()
        let staging = parent.appendingPathComponent(".\(directory.lastPathComponent).staging-\(getpid())", isDirectory: true)
        try? fm.removeItem(at: staging)
        let server = staging.appendingPathComponent(DeploymentLayout.serverFolder, isDirectory: true)
        let client = staging.appendingPathComponent(DeploymentLayout.clientFolder, isDirectory: true)
        do {
            try fm.createDirectory(at: server, withIntermediateDirectories: true)
            try fm.createDirectory(at: client, withIntermediateDirectories: true)
        } catch { throw DeploymentError.unwritable(path: staging.path, reason: error.localizedDescription) }
        defer { try? fm.removeItem(at: staging) }

        // Server: the integer weights and the public manifest.
        let quantized = try QuantizedLinearBackend(plan: plan, model: model)
        let (_, metadata) = try quantized.remoteModules()
        var tensors: [(name: String, shape: [Int], values: [Int8])] = []
        func int8(_ q: QuantizedRows) -> [Int8] { (0..<(q.rows * q.columns)).map { Int8(q.integer($0 / q.columns, $0 % q.columns)) } }
        for m in metadata {
            let l = quantized.layers[m.name]!
            tensors.append((m.name + ".forward", [l.forward.rows, l.forward.columns], int8(l.forward)))
            tensors.append((m.name + ".backward", [l.backward.rows, l.backward.columns], int8(l.backward)))
        }
        let weightsURL = server.appendingPathComponent(DeploymentLayout.serverWeights)
        try SafeTensorsWriter.write(int8: tensors, metadata: ["format": "nb-int8-weights"], to: weightsURL)
        tensors = []
        let digest = try SHA256Digest.hex(fileAt: weightsURL)
        let serverManifest = ServerManifest(
            format: ServerManifest.formatName, version: 1, name: name, model: modelName, architecture: architecture,
            scheme: plan.scheme, parameterSets: FHEParameters.all.map(ParameterSetInfo.init), modules: metadata,
            weightsFile: DeploymentLayout.serverWeights, weightsSHA256: digest)
        try writeJSON(serverManifest, to: server.appendingPathComponent(DeploymentLayout.serverManifest))

        // Client: everything else.
        let remote = Set(metadata.map(\.name))
        let clientTensors = model.clientTensors(excluding: remote)
        let config = try model.configJSON()
        try SafeTensorsWriter.write(clientTensors, metadata: ["format": "pt"], to: client.appendingPathComponent(DeploymentLayout.clientTensors))
        try AtomicFile.write(config, to: client.appendingPathComponent(DeploymentLayout.clientConfig))
        try writeJSON(tokenizer.vocabulary, to: client.appendingPathComponent(DeploymentLayout.clientVocabulary), pretty: false)
        if let adapter {
            try PEFTAdapter.save(adapter, to: client.appendingPathComponent(DeploymentLayout.clientAdapter, isDirectory: true), baseModelName: modelName)
        }
        try keyring.save(to: client.appendingPathComponent(DeploymentLayout.clientKey))
        let clientManifest = ClientManifest(
            format: ClientManifest.formatName, version: 1, name: name, model: modelName, architecture: architecture,
            plan: plan, modules: metadata, deploymentID: serverManifest.deploymentID, chatTemplate: chatTemplate != nil,
            chatSystemMessage: chatTemplate?.defaultSystemMessage, hasAdapter: adapter != nil, adapterTrainedSteps: adapterTrainedSteps,
            adapterSeed: adapter?.config.seed ?? 0)
        try clientManifest.write(to: client)

        // Into place.
        do {
            if fm.fileExists(atPath: directory.path) { try fm.removeItem(at: directory) }
            try fm.moveItem(at: staging, to: directory)
        } catch { throw DeploymentError.unwritable(path: directory.path, reason: error.localizedDescription) }
        var files: [(String, Int)] = []
        if let e = fm.enumerator(at: directory, includingPropertiesForKeys: [.fileSizeKey, .isRegularFileKey]) {
            for case let url as URL in e where (try? url.resourceValues(forKeys: [.isRegularFileKey]))?.isRegularFile == true {
                let rel = String(url.standardizedFileURL.path.dropFirst(directory.standardizedFileURL.path.count + 1))
                files.append((rel, (try? url.resourceValues(forKeys: [.fileSizeKey]))?.fileSize ?? 0))
            }
        }
        let serverParameters = metadata.reduce(0) { $0 + $1.inFeatures * $1.outFeatures }
        return DeploymentSummary(directory: directory, server: serverManifest, client: clientManifest, files: files.sorted { $0.0 < $1.0 },
                                 serverParameters: serverParameters, clientParameters: clientTensors.reduce(0) { $0 + $1.values.count })
    }

    static func writeJSON<T: Encodable>(_ value: T, to url: URL, pretty: Bool = true) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = pretty ? [.prettyPrinted, .sortedKeys] : [.sortedKeys]
        do { try AtomicFile.write(try encoder.encode(value), to: url) } catch {
            throw DeploymentError.unwritable(path: url.path, reason: "\(error)")
        }
    }

    static func readJSON<T: Decodable>(_ type: T.Type, from url: URL) throws(DeploymentError) -> T {
        guard let data = FileManager.default.contents(atPath: url.path) else { throw .unreadable(path: url.path, reason: "missing or unreadable") }
        do { return try JSONDecoder().decode(T.self, from: data) } catch {
            throw .unreadable(path: url.path, reason: SafeTensorsFile.describe(error))
        }
    }

    /// The folder holding `name` under a deployment folder or the folder itself: `path` may
    /// be `deployment/<name>` or `deployment/<name>/<folder>`.
    public static func folder(_ folder: String, of path: URL, marker: String) throws(DeploymentError) -> URL {
        let fm = FileManager.default
        if fm.fileExists(atPath: path.appendingPathComponent(marker).path) { return path }
        let inner = path.appendingPathComponent(folder, isDirectory: true)
        if fm.fileExists(atPath: inner.appendingPathComponent(marker).path) { return inner }
        throw .notADeployment(path: path.path, reason: "neither it nor its \(folder)/ holds \(marker)")
    }
}
