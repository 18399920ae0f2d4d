import FHE
import Foundation
import Testing

@testable import Engine

/// A deployment's two folders: what each holds, that the client folder alone (plus the
/// server's answers) trains exactly as `execute` does, and that bad folders are refused.
@Suite struct DeploymentTests {
    /// The 256 one-byte tokens (no merges): enough for a tokenizer round trip.
    static let tokenizer = BPETokenizer(tokens: ByteLevelAlphabet.scalarOfByte.map { String($0) }, merges: [], preTokenizer: .smollm,
                                        specialTokens: [:], bosTokenID: nil, eosTokenID: 0, padTokenID: nil, addBOS: false)

    /// The in-process stand-in for `nb serve`: the loaded server folder's shared handler, over bytes.
    final class FolderTransport: EncryptedTransport {
        let server: ServerDeployment
        var requests: [[UInt8]] = []
        /// Pieces per online call (the backend splits a call's rows into them).
        var parts = 1
        var maskedPipelineParts: Int { parts }
        init(_ server: ServerDeployment) { self.server = server }
        func multiply(module: String, direction: ProductDirection, request: [UInt8], responseBytes: Int) throws -> [UInt8] {
            requests.append(request)
            return try server.handle(module: module, direction: direction, request: request)
        }
        func multiplyMasked(module: String, direction: ProductDirection, request: [UInt8], responseBytes: Int) throws -> [UInt8] {
            requests.append(request)
            return try server.handleMasked(module: module, direction: direction, request: request)
        }
    }

    static func plan(_ model: TrainableModel) -> HybridPlan {
        HybridPlan(scheme: QuantizationScheme(named: "DTok-SC", nBits: 8)!, remoteModules: model.linearModules.map(\.name))
    }

    static func save(_ name: String, keyring: Keyring) throws -> (URL, TrainableModel, LoRAAdapter, DeploymentSummary) {
        let model = try #require(try PEFTAdapterTests.model(name) as? TrainableModel)
        let adapter = try LoRAAdapter(config: LoRAConfig(rank: 4, alpha: 8, dropout: 0.1, targets: .allLinear, seed: 3), modules: model.linearModules)
        // B starts at zero; give it values so the adapter's file is distinctive.
        for i in adapter.layers.indices { adapter.layers[i].b = adapter.layers[i].b.indices.map { Float($0 % 7) * 1e-3 } }
        let dir = try PEFTAdapterTests.temporaryDirectory().appendingPathComponent("deployment/\(name)")
        let summary = try Deployment.save(to: dir, name: name, modelName: name, model: model, tokenizer: tokenizer, chatTemplate: nil,
                                          plan: plan(model), adapter: adapter, keyring: keyring)
        return (dir, model, adapter, summary)
    }

    /// server/ holds only the manifest and the integer weights: no key, no adapter, no
    /// calibration ranges, no embeddings; client/ holds no remote weight and its key is 0600.
    @Test(arguments: ["tiny-gpt2", "tiny-llama", "tiny-llama3", "tiny-qwen2", "tiny-mistral", "tiny-llama-linear"]) func foldersHoldWhatTheyShould(_ name: String) throws {
        let keyring = Keyring()
        _ = keyring.serialized(all: true)
        var (dir, model, adapter, summary) = try Self.save(name, keyring: keyring)
        let server = dir.appendingPathComponent("server"), client = dir.appendingPathComponent("client")
        #expect(try FileManager.default.contentsOfDirectory(atPath: server.path).sorted() == ["manifest.json", "weights.safetensors"])
        var serverBytes = Data()
        for f in ["manifest.json", "weights.safetensors"] { serverBytes += try Data(contentsOf: server.appendingPathComponent(f)) }
        // The secret key, in any 64-byte window of its coefficients, is not there.
        let keyFile = try Data(contentsOf: client.appendingPathComponent("secret.key"))
        for key in keyring.allKeys {
            let coefficients = Data(key.coefficients.map { UInt8(bitPattern: $0) })
            for start in stride(from: 0, to: coefficients.count - 64, by: 256) {
                #expect(serverBytes.range(of: coefficients[start..<start + 64]) == nil)
            }
        }
        #expect(keyFile.count > 4096)
        let manifest = try String(contentsOf: server.appendingPathComponent("manifest.json"), encoding: .utf8)
        for privateWord in ["lora", "range", "inputLow", "gradientLow", "secret", "adapter", "embed", "wte"] {
            #expect(!manifest.lowercased().contains(privateWord.lowercased()), "server manifest mentions \(privateWord)")
        }
        let weights = try SafeTensorsFile(url: server.appendingPathComponent("weights.safetensors"))
        #expect(Set(weights.tensorNames) == Set(model.linearModules.flatMap { [$0.name + ".forward", $0.name + ".backward"] }))
        #expect(weights.tensorInfos.allSatisfy { $0.dtype == "I8" })
        // No adapter value of the client appears on the server (B's distinctive values as F32 bytes).
        let b = adapter.layers[0].b
        let bBytes = b.withUnsafeBytes { Data($0.prefix(64)) }
        #expect(serverBytes.range(of: bBytes) == nil)
        // The client has no remote weight, and its key is private.
        let clientTensors = try SafeTensorsFile(url: client.appendingPathComponent("model.safetensors"))
        for m in model.linearModules {
            #expect(!clientTensors.tensorNames.contains { $0.contains(m.name) && $0.hasSuffix(".weight") && !$0.contains("norm") })
        }
        let mode = (try FileManager.default.attributesOfItem(atPath: client.appendingPathComponent("secret.key").path)[.posixPermissions] as! NSNumber).intValue
        #expect(mode == 0o600)
        #expect(summary.serverParameters == model.linearModules.reduce(0) { $0 + $1.inFeatures * $1.outFeatures })
        summary = try Deployment.save(to: dir, name: name, modelName: name, model: model, tokenizer: Self.tokenizer, chatTemplate: nil,
                                      plan: Self.plan(model), adapter: nil, keyring: keyring)
        #expect(!FileManager.default.fileExists(atPath: client.appendingPathComponent("adapter").path), "a re-save replaces the whole folder")
    }

    /// The client folder loads without the remote weights (empty), with the same tokenizer,
    /// and trains through the server folder's handler exactly as `execute` does with the
    /// whole model: same losses, same adapter.
    @Test(arguments: ["tiny-gpt2", "tiny-llama", "tiny-llama3", "tiny-qwen2", "tiny-mistral", "tiny-llama-linear"]) func clientFolderTrainsLikeExecute(_ name: String) throws {
        let keyring = Keyring()
        let (dir, model, adapter, _) = try Self.save(name, keyring: keyring)
        let location = try ModelCatalog.locate(dir.path)
        #expect(location.format == .deploymentClient)
        let loaded = try LoadedModel.load(location)
        let manifest = try #require(loaded.clientDeployment)
        let client = try #require(loaded.model as? TrainableModel)
        for m in client.linearModules { #expect(client.weight(of: m).isEmpty) }
        #expect(loaded.model.parameterCount < model.parameterCount / 2 + 100_000)
        let text = "héllo, wörld 123 🙂"
        #expect(loaded.tokenizer.encode(text) == Self.tokenizer.encode(text))
        #expect(loaded.tokenizer.vocabulary == Self.tokenizer.vocabulary)

        let server = try ServerDeployment(path: dir)
        #expect(server.manifest.deploymentID == manifest.deploymentID)
        let clientKey = try Keyring.load(from: dir.appendingPathComponent("client/secret.key"))
        let clientAdapter = try PEFTAdapter.load(from: dir.appendingPathComponent("client/adapter"), modules: client.linearModules, seed: 3)
        let transport = FolderTransport(server)
        let remote = try EncryptedLinearBackend(plan: manifest.plan, metadata: manifest.modules, client: FHEClient(keyring: clientKey), transport: transport)
        let execute = try EncryptedLinearBackend(plan: Self.plan(model), model: model, keyring: keyring)

        func train(_ m: TrainableModel, _ a: LoRAAdapter, _ backend: LinearBackend) throws -> ([Float], [[Float]]) {
            var rng = SeededGenerator(seed: 9)
            let examples = (0..<4).map { i -> TokenizedExample in
                let ids = (0..<(8 + i)).map { _ in Int(rng.next() % 250) + 1 }
                return TokenizedExample(tokens: ids, labels: ids.enumerated().map { $0.offset < 3 ? -100 : $0.element }, line: i + 1)
            }
            let data = CausalLMData(examples: examples, options: CausalLMDataOptions(maxLength: 16, padding: .longest), paddingTokenID: 0)
            let run = try LoRATrainingRun(model: m, adapter: a, data: data,
                                          settings: TrainingSettings(epochs: 1, batchSize: 2, gradientAccumulation: 1, learningRate: 1e-2, fuseMicroBatches: true))
            run.backend = backend
            var losses: [Float] = []
            while !run.isFinished { losses.append(try run.step().loss) }
            return (losses, a.layers.flatMap { [$0.a, $0.b] })
        }
        let viaFolders = try train(client, clientAdapter, remote)
        let inProcess = try train(model, LoRAAdapter(config: adapter.config, layers: adapter.layers), execute)
        #expect(viaFolders.0.count == 2)
        #expect(viaFolders.0 == inProcess.0)
        #expect(viaFolders.1 == inProcess.1)
        #expect(remote.failure == nil)
        #expect(transport.requests.count == 2 * 2 * model.linearModules.count)
    }

    /// A changed weights file, a manifest that lies about a shape, a missing folder and a key
    /// readable by others are refused with messages that name the file.
    @Test func badFoldersAreRefused() throws {
        let (dir, _, _, summary) = try Self.save("tiny-gpt2", keyring: Keyring())
        let weights = dir.appendingPathComponent("server/weights.safetensors")
        var bytes = try Data(contentsOf: weights)
        bytes[bytes.count - 1] ^= 1
        try bytes.write(to: weights)
        #expect { try ServerDeployment(path: dir) } throws: { "\($0)".contains("weights.safetensors") && "\($0)".contains("SHA-256") }
        bytes[bytes.count - 1] ^= 1
        try bytes.write(to: weights)
        _ = try ServerDeployment(path: dir)

        var manifest = summary.server
        manifest.modules[0].forward.outputs += 1
        manifest.modules[0].backward.inputs += 1
        manifest.modules[0].outFeatures += 1
        try JSONEncoder().encode(manifest).write(to: dir.appendingPathComponent("server/manifest.json"))
        #expect { try ServerDeployment(path: dir) } throws: { "\($0)".contains(manifest.modules[0].name) }

        #expect { try ServerDeployment(path: dir.appendingPathComponent("nowhere")) } throws: { "\($0)".contains("nowhere") }

        let key = dir.appendingPathComponent("client/secret.key")
        chmod(key.path, 0o644)
        #expect { try Keyring.load(from: key) } throws: { "\($0)".contains("secret.key") }
    }

    /// The server's answers to bad requests: unknown module, malformed and mis-shaped input.
    @Test func requestErrorsMapToStatuses() throws {
        let (dir, model, _, _) = try Self.save("tiny-gpt2", keyring: Keyring())
        let server = try ServerDeployment(path: dir)
        let m = model.linearModules[0]
        #expect(throws: RemoteRequestError.unknownModule("nope")) { try server.handle(module: "nope", direction: .forward, request: []) }
        #expect { try server.handle(module: m.name, direction: .forward, request: [1, 2, 3]) } throws: { ($0 as? RemoteRequestError)?.httpStatus == 400 }
        let meta = server.manifest.modules[0].forward
        let plan = try CallPlan.choose(for: ProductShape(rows: 2, innerDimension: m.inFeatures + 1, maxAbsInput: 127, maxRowL1: meta.maxRowL1, maxRowL2: meta.maxRowL2))
        let wrong = FHEClient(keyring: Keyring()).encrypt([Int64](repeating: 1, count: 2 * (m.inFeatures + 1)), rows: 2, features: m.inFeatures + 1, plan: plan).serialized()
        #expect { try server.handle(module: m.name, direction: .forward, request: wrong) } throws: { ($0 as? RemoteRequestError)?.httpStatus == 422 }
    }
}
