import FHE
import Foundation
import Testing

@testable import Engine

/// Generation through a backend and an adapter with a KV cache: the prompt runs once, then one
/// row per new token, and the logits are those of the training pass over the whole sequence.
@Suite struct HookedGenerationTests {
    /// A tiny model and an adapter on every linear layer whose B is not zero (a fresh adapter
    /// changes nothing), so the hooks show in the logits.
    static func setup(_ name: String) throws -> (model: TrainableModel, adapter: LoRAAdapter) {
        let model = try #require(try PEFTAdapterTests.model(name) as? TrainableModel)
        let adapter = try LoRAAdapter(config: LoRAConfig(rank: 4, alpha: 8, dropout: 0, targets: .allLinear, seed: 3), modules: model.linearModules)
        var rng = SeededGenerator(seed: 21)
        for i in adapter.layers.indices {
            adapter.layers[i].b = InMemoryTensors.normal(count: adapter.layers[i].b.count, std: 0.3, rng: &rng)
        }
        adapter.isTraining = false
        return (model, adapter)
    }

    static let prompt = [5, 17, 42, 8, 99]

    /// Last-position logits after each token, fed one at a time through the cache after the
    /// prompt, and the training pass's logits for the same positions.
    static func stepLogits(_ model: TrainableModel, _ tokens: [Int], hooks: LinearHooks<Float>) -> (cached: [[Float]], full: [[Float]]) {
        let n = prompt.count
        var cached: [[Float]] = []
        let full: [Float]
        if let gpt2 = model as? GPT2Model {
            let cache = gpt2.makeCache(capacity: 4)  // grows as it goes
            cached.append(gpt2.forward(Array(tokens[..<n]), cache: cache, allPositions: false, hooks: hooks))
            for t in tokens[n...] { cached.append(gpt2.forward([t], cache: cache, allPositions: false, hooks: hooks)) }
            full = gpt2.forwardForTraining(tokens: tokens, batchSize: 1, hooks: hooks).logits
        } else {
            let llama = model as! LlamaModel
            let cache = llama.makeCache(capacity: 4)
            cached.append(llama.forward(Array(tokens[..<n]), cache: cache, allPositions: false, hooks: hooks))
            for t in tokens[n...] { cached.append(llama.forward([t], cache: cache, allPositions: false, hooks: hooks)) }
            full = llama.forwardForTraining(tokens: tokens, batchSize: 1, hooks: hooks).logits
        }
        let V = full.count / tokens.count
        return (cached, (n - 1..<tokens.count).map { Array(full[$0 * V..<($0 + 1) * V]) })
    }

    static func worstDifference(_ a: [[Float]], _ b: [[Float]]) -> (worst: Float, scale: Float) {
        let worst = zip(a, b).map { zip($0, $1).map { abs($0 - $1) }.max()! }.max()!
        return (worst, b.flatMap { $0 }.map(abs).max()!)
    }

    /// Float layers with the adapter's hooks: the cached logits equal the training pass's to
    /// Float32 rounding, and the adapter changes them (so the hooks ran).
    @Test(arguments: ["tiny-gpt2", "tiny-llama", "tiny-llama3", "tiny-qwen2", "tiny-mistral", "tiny-llama-linear"]) func cachedLogitsEqualTheTrainingPass(_ name: String) throws {
        let (model, adapter) = try Self.setup(name)
        let tokens = Self.prompt + [3, 250, 7, 7, 64, 1]
        let (cached, full) = Self.stepLogits(model, tokens, hooks: adapter.hooks())
        let (worst, scale) = Self.worstDifference(cached, full)
        #expect(worst <= 1e-4 * scale, "\(name): cached logits differ by \(worst) (largest logit \(scale))")
        let (_, plain) = Self.stepLogits(model, tokens, hooks: LinearHooks<Float>())
        #expect(Self.worstDifference(plain, full).worst > 1e-2 * scale, "\(name): the adapter does not change the logits")
    }

    /// Generation with the cache gives the tokens re-running the sequence gives, greedy and
    /// sampled, in float and through 8-bit per-token quantized products (whose rows are
    /// quantized one by one, so one new row at a time is the same arithmetic).
    @Test(arguments: ["tiny-gpt2", "tiny-llama", "tiny-llama3", "tiny-qwen2", "tiny-mistral", "tiny-llama-linear"]) func cachedGenerationEqualsRecomputing(_ name: String) throws {
        let (model, adapter) = try Self.setup(name)
        let names = model.linearModules.map(\.name)
        let quantized = try QuantizedLinearBackend(plan: HybridPlan(scheme: QuantizationScheme(named: "DTok-SC", nBits: 8)!, remoteModules: names), model: model)
        #expect(quantized.rowsAreIndependent)
        for backend in [nil, quantized] as [LinearBackend?] {
            var hooks = adapter.hooks()
            hooks.backend = backend
            for sampling in [SamplingSettings(), SamplingSettings(temperature: 0.9, topK: 40, seed: 11)] {
                let cached = generateThroughHooks(model: model, prompt: Self.prompt, maxTokens: 12, hooks: hooks, sampling: sampling)
                let again = generateThroughHooks(model: model, prompt: Self.prompt, maxTokens: 12, hooks: hooks, sampling: sampling, cached: false)
                #expect(cached.count == 12)
                #expect(cached == again, "\(name), backend \(backend == nil ? "float" : "8-bit"), T = \(sampling.temperature)")
            }
        }
    }

    /// Counts the rows of every forward call and leaves the products to the float path.
    final class RowCounter: LinearBackend {
        let independent: Bool
        var rows: [String: [Int]] = [:]
        init(independent: Bool) { self.independent = independent }
        var rowsAreIndependent: Bool { independent }
        func forward(_ layer: LinearLayer, x: UnsafeBufferPointer<Float>, y: UnsafeMutableBufferPointer<Float>) -> Bool {
            rows[layer.name, default: []].append(x.count / layer.inFeatures)
            return false
        }
        func backward(_ layer: LinearLayer, dY: UnsafeBufferPointer<Float>, dX: UnsafeMutableBufferPointer<Float>) -> Bool { false }
    }

    /// With independent rows, each layer sees the prompt once and then one row per token; a
    /// backend whose ranges span the call (dynamic per tensor) sees the whole sequence each
    /// time, as it would without a cache.
    @Test func theBackendDecidesWhetherTheCacheIsUsed() throws {
        let (model, adapter) = try Self.setup("tiny-llama")
        let n = Self.prompt.count
        for independent in [true, false] {
            let counter = RowCounter(independent: independent)
            var hooks = adapter.hooks()
            hooks.backend = counter
            let out = generateThroughHooks(model: model, prompt: Self.prompt, maxTokens: 6, hooks: hooks)
            #expect(out.count == 6)
            let seen = try #require(counter.rows["model.layers.1.mlp.down_proj"])
            #expect(seen == (independent ? [n] + [Int](repeating: 1, count: 5) : Array(n..<(n + 6))), "independent \(independent): \(seen)")
        }
        let perTensor = try QuantizedLinearBackend(plan: HybridPlan(scheme: QuantizationScheme(named: "DTen-ST", nBits: 8)!,
                                                                    remoteModules: model.linearModules.map(\.name)), model: model)
        #expect(!perTensor.rowsAreIndependent)
    }

    /// Encrypted generation with the cache: the tokens of the clear 8-bit products, with one
    /// encrypted call per remote module per new token.
    @Test func encryptedGenerationUsesTheCache() throws {
        let (model, adapter) = try Self.setup("tiny-llama")
        let plan = HybridPlan(scheme: QuantizationScheme(named: "DTok-SC", nBits: 8)!, remoteModules: model.linearModules.map(\.name))
        var clear = adapter.hooks()
        clear.backend = try QuantizedLinearBackend(plan: plan, model: model)
        let encryptedBackend = try EncryptedLinearBackend(plan: plan, model: model, keyring: Keyring())
        var encrypted = adapter.hooks()
        encrypted.backend = encryptedBackend
        let expected = generateThroughHooks(model: model, prompt: Self.prompt, maxTokens: 8, hooks: clear)
        let got = generateThroughHooks(model: model, prompt: Self.prompt, maxTokens: 8, hooks: encrypted)
        #expect(got == expected)
        #expect(encryptedBackend.failure == nil)
        // The prompt's pass and 7 one-token passes (the 8th token needs no pass after it).
        #expect(encryptedBackend.statistics.calls == 8 * model.linearModules.count)
    }
}
