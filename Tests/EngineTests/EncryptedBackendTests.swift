import FHE
import Foundation
import Testing

@testable import Engine

/// The `execute` mode: the same integers as `disable`, through real encryption.
@Suite struct EncryptedBackendTests {
    static func run(_ name: String, targets: LoRATargets, fuse: Bool = false, dropout: Double = 0.1,
                    backend: (TrainableModel) throws -> LinearBackend?) throws
        -> (losses: [Float], adapter: [[Float]], backend: LinearBackend?) {
        let model = try #require(try PEFTAdapterTests.model(name) as? TrainableModel)
        let adapter = try LoRAAdapter(config: LoRAConfig(rank: 4, alpha: 8, dropout: dropout, targets: targets, seed: 3), modules: model.linearModules)
        let run = try LoRATrainingRun(model: model, adapter: adapter, data: data(),
                                      settings: TrainingSettings(epochs: 2, batchSize: 2, gradientAccumulation: 2, learningRate: 1e-2,
                                                                 fuseMicroBatches: fuse))
        let b = try backend(model)
        run.backend = b
        var losses: [Float] = []
        while !run.isFinished { losses.append(try run.step().loss) }
        let weights = adapter.layers.flatMap { [$0.a, $0.b] }
        return (losses, weights, b)
    }

    /// Six random rows of 8 to 13 tokens, the first three of each masked from the loss.
    static func data() -> CausalLMData {
        var rng = SeededGenerator(seed: 9)
        let examples = (0..<6).map { i -> TokenizedExample in
            let ids = (0..<(8 + i)).map { _ in Int(rng.next() % 250) + 1 }
            return TokenizedExample(tokens: ids, labels: ids.enumerated().map { $0.offset < 3 ? -100 : $0.element }, line: i + 1)
        }
        return CausalLMData(examples: examples, options: CausalLMDataOptions(maxLength: 16, padding: .longest), paddingTokenID: 0)
    }

    /// Training in `execute` gives exactly the losses and adapter weights of `disable` with the
    /// same seed, on GPT-2 (Conv1D, biases) and LLaMA (all linear layers), forward and backward.
    @Test(arguments: [("tiny-gpt2", LoRATargets.modules(["c_attn"])), ("tiny-llama", LoRATargets.allLinear),
                      ("tiny-qwen2", LoRATargets.allLinear), ("tiny-mistral", LoRATargets.allLinear)])
    func executeEqualsDisable(_ name: String, _ targets: LoRATargets) throws {
        let scheme = QuantizationScheme(named: "DTok-SC", nBits: 8)!
        func plan(_ m: TrainableModel) -> HybridPlan { HybridPlan(scheme: scheme, remoteModules: m.linearModules.map(\.name)) }
        let disable = try Self.run(name, targets: targets) { try QuantizedLinearBackend(plan: plan($0), model: $0) }
        let keyring = Keyring()
        let execute = try Self.run(name, targets: targets) { try EncryptedLinearBackend(plan: plan($0), model: $0, keyring: keyring) }
        #expect(disable.losses.count == 4)  // 3 micro-batches per epoch, 2 per step
        #expect(execute.losses == disable.losses)
        #expect(execute.adapter == disable.adapter)
        let stats = try #require(execute.backend as? EncryptedLinearBackend).statistics
        let modules = try #require(try PEFTAdapterTests.model(name) as? TrainableModel).linearModules.count
        // Every module's forward and backward on each of 6 micro-batches (3 per epoch).
        #expect(stats.calls == 6 * 2 * modules)
        #expect(stats.bytesSent > 0 && stats.bytesReceived > 0 && stats.encryptSeconds > 0)
        #expect(try #require(execute.backend as? EncryptedLinearBackend).failure == nil)
    }

    /// With the micro-batches of a step fused, `execute` still equals `disable`, and every
    /// remote module gets one forward and one backward call per optimizer step.
    @Test func fusedMicroBatchesMakeOneCallPerStep() throws {
        let scheme = QuantizationScheme(named: "DTok-SC", nBits: 8)!
        func plan(_ m: TrainableModel) -> HybridPlan { HybridPlan(scheme: scheme, remoteModules: m.linearModules.map(\.name)) }
        let disable = try Self.run("tiny-llama", targets: .allLinear, fuse: true) { try QuantizedLinearBackend(plan: plan($0), model: $0) }
        let execute = try Self.run("tiny-llama", targets: .allLinear, fuse: true) { try EncryptedLinearBackend(plan: plan($0), model: $0, keyring: Keyring()) }
        #expect(execute.losses == disable.losses)
        #expect(execute.adapter == disable.adapter)
        let modules = try #require(try PEFTAdapterTests.model("tiny-llama") as? TrainableModel).linearModules.count
        #expect(try #require(execute.backend as? EncryptedLinearBackend).statistics.calls == 4 * 2 * modules)
    }

    /// Fusing the micro-batches changes only the order of float operations: without dropout,
    /// fused and separate micro-batches give the same losses (to 1e-5) and adapters (to 1e-3 of the
    /// largest weight: AdamW turns float-order noise in near-zero gradients into full-size updates).
    @Test func fusedMicroBatchesComputeTheSameLoss() throws {
        for name in ["tiny-gpt2", "tiny-llama"] {
            let separate = try Self.run(name, targets: .allLinear, fuse: false, dropout: 0) { _ in nil }
            let fused = try Self.run(name, targets: .allLinear, fuse: true, dropout: 0) { _ in nil }
            #expect(separate.losses.count == fused.losses.count)
            for (a, b) in zip(separate.losses, fused.losses) { #expect(abs(a - b) <= 1e-5 * abs(a), "\(name): \(a) vs \(b)") }
            for (a, b) in zip(separate.adapter, fused.adapter) {
                let scale = a.map(abs).max() ?? 1
                let worst = zip(a, b).map { abs($0 - $1) }.max() ?? 0
                #expect(worst <= 1e-3 * scale, "\(name): adapter differs by \(worst), scale \(scale)")
            }
        }
    }

    /// Schemes the encrypted product cannot carry are refused when the backend is made.
    @Test func wideOrAsymmetricWeightsAreRefused() throws {
        let model = try #require(try PEFTAdapterTests.model("tiny-gpt2") as? TrainableModel)
        let names = model.linearModules.map(\.name)
        let wide = HybridPlan(scheme: QuantizationScheme(named: "DTok-SC", nBits: 16)!, remoteModules: names)
        #expect(throws: EncryptedBackendError.self) { try EncryptedLinearBackend(plan: wide, model: model, keyring: Keyring()) }
        do { _ = try EncryptedLinearBackend(plan: wide, model: model, keyring: Keyring()) } catch {
            #expect("\(error)".contains("at most 8 bits"))
        }
        var asymmetric = QuantizationScheme(named: "DTok-SC", nBits: 8)!
        asymmetric.symmetricWeights = false
        #expect(throws: EncryptedBackendError.self) {
            try EncryptedLinearBackend(plan: HybridPlan(scheme: asymmetric, remoteModules: names), model: model, keyring: Keyring())
        }
    }
}
