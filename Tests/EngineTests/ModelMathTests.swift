import Engine
import Foundation
import Testing

/// Properties that hold by mathematics, whatever the weights: incremental decoding with
/// the KV cache equals one pass over the whole sequence; RoPE preserves norms and is a
/// rotation by the position; sampling is deterministic per seed.
@Suite struct ModelMathTests {
    static let llamaConfig = LlamaConfig(vocabSize: 50, hiddenSize: 32, intermediateSize: 48, numHiddenLayers: 2,
                                         numAttentionHeads: 4, numKeyValueHeads: 2, rmsNormEps: 1e-5, ropeTheta: 10000,
                                         maxPositionEmbeddings: 64, tieWordEmbeddings: false)
    static let gpt2Config = GPT2Config(vocabSize: 60, nPositions: 32, nEmbd: 32, nLayer: 2, nHead: 4)

    func maxRelativeError(_ a: [Float], _ b: [Float]) -> Float {
        precondition(a.count == b.count)
        let scale = max(b.map(abs).max() ?? 1, 1e-6)
        return zip(a, b).map { abs($0 - $1) }.max()! / scale
    }

    func incrementalEqualsFull(_ model: LanguageModel) {
        let tokens = [3, 17, 9, 41, 0, 22, 5, 11]
        let V = model.vocabularySize
        let full = model.forward(tokens, cache: model.makeCache(capacity: 8), allPositions: true)
        let cache = model.makeCache(capacity: 2)   // grows as needed
        var steps: [Float] = model.forward(Array(tokens.prefix(3)), cache: cache, allPositions: true)
        for t in tokens.dropFirst(3) { steps += model.forward([t], cache: cache, allPositions: false) }
        #expect(cache.length == tokens.count)
        #expect(steps.count == full.count)
        #expect(maxRelativeError(steps, full) < 1e-5, "incremental decoding differs from the full pass")
        // The last-position-only output is the last row of the full output.
        let last = model.forward(tokens, cache: model.makeCache(capacity: 8), allPositions: false)
        #expect(maxRelativeError(last, Array(full.suffix(V))) < 1e-6)
    }

    /// In Float32 throughout (half-precision decoding off), incremental equals full.
    @Test func llamaKVCacheMatchesFullPass() {
        for (seed, style) in [(UInt64(1), RoPEStyle.halves), (2, .interleaved)] {
            let model = LlamaModel.random(config: Self.llamaConfig, seed: seed, ropeStyle: style)
            model.compactDecode = false
            incrementalEqualsFull(model)
        }
    }

    @Test func gpt2KVCacheMatchesFullPass() {
        let model = GPT2Model.random(config: Self.gpt2Config, seed: 3)
        model.compactDecode = false
        incrementalEqualsFull(model)
    }

    /// Half-precision decoding stays within the rounding of the weights (2⁻¹¹ relative).
    @Test func halfPrecisionDecodingIsClose() {
        let models: [LanguageModel] = [LlamaModel.random(config: Self.llamaConfig, seed: 6), GPT2Model.random(config: Self.gpt2Config, seed: 7)]
        for model in models {
            let cache = model.makeCache(capacity: 4), exactCache = model.makeCache(capacity: 4)
            _ = model.forward([1, 2, 3], cache: cache, allPositions: false)
            _ = model.forward([1, 2, 3], cache: exactCache, allPositions: false)
            let fast = model.forward([4], cache: cache, allPositions: false)
            (model as? LlamaModel)?.compactDecode = false
            (model as? GPT2Model)?.compactDecode = false
            let exact = model.forward([4], cache: exactCache, allPositions: false)
            #expect(maxRelativeError(fast, exact) < 2e-3)
            #expect(fast != exact, "the half-precision path was used")
        }
    }

    @Test func causality() {
        // Changing a later token never changes earlier positions' logits.
        let model = LlamaModel.random(config: Self.llamaConfig, seed: 4)
        model.compactDecode = false
        let a = model.forward([1, 2, 3, 4], cache: model.makeCache(capacity: 4), allPositions: true)
        let b = model.forward([1, 2, 3, 7], cache: model.makeCache(capacity: 4), allPositions: true)
        let V = model.vocabularySize
        #expect(Array(a.prefix(3 * V)) == Array(b.prefix(3 * V)))
        #expect(Array(a.suffix(V)) != Array(b.suffix(V)))
    }

    @Test(arguments: [RoPEStyle.halves, .interleaved])
    func ropeIsARotationByPosition(style: RoPEStyle) {
        let rope = RoPE(headDim: 8, base: 10000, maxPositions: 16, style: style)
        var x: [Float] = [0.3, -1.2, 0.7, 2.0, -0.5, 0.1, 1.5, -0.9]
        let original = x
        x.withUnsafeMutableBufferPointer { rope.apply($0.baseAddress!, heads: 1, position: 0) }
        #expect(x == original, "position 0 is the identity")
        var y = original, z = original
        y.withUnsafeMutableBufferPointer { rope.apply($0.baseAddress!, heads: 1, position: 5) }
        let norm = { (v: [Float]) in v.map { $0 * $0 }.reduce(0, +) }
        #expect(abs(norm(y) - norm(original)) < 1e-5)
        // Rotating by 2 then 3 equals rotating by 5.
        z.withUnsafeMutableBufferPointer { rope.apply($0.baseAddress!, heads: 1, position: 2); rope.apply($0.baseAddress!, heads: 1, position: 3) }
        #expect(zip(y, z).allSatisfy { abs($0 - $1) < 1e-5 })
    }

    @Test func greedyAndSeededSampling() {
        let logits: [Float] = [0.1, 2.5, -1, 2.4, 0]
        var rng = SeededGenerator(seed: 1)
        #expect(Sampler.sample(logits, settings: SamplingSettings(), rng: &rng) == 1)
        let settings = SamplingSettings(temperature: 1, topK: 2, topP: 1, seed: 9)
        var r1 = SeededGenerator(seed: 9), r2 = SeededGenerator(seed: 9)
        let a = (0..<50).map { _ in Sampler.sample(logits, settings: settings, rng: &r1) }
        let b = (0..<50).map { _ in Sampler.sample(logits, settings: settings, rng: &r2) }
        #expect(a == b)
        #expect(Set(a).isSubset(of: [1, 3]), "top-k 2 keeps only the two best tokens")
        #expect(Set(a) == [1, 3], "both survive with probabilities near ½")
        // top-p 0.5 keeps only the single most likely token here.
        var r3 = SeededGenerator(seed: 3)
        let c = (0..<20).map { _ in Sampler.sample(logits, settings: SamplingSettings(temperature: 1, topP: 0.4, seed: 3), rng: &r3) }
        #expect(Set(c) == [1])
    }

    @Test func generationStopsAndIsDeterministic() {
        let model = GPT2Model.random(config: Self.gpt2Config, seed: 5)
        model.compactDecode = false
        let request = GenerationRequest(prompt: [1, 2, 3], maxTokens: 10)
        let a = model.generate(request), b = model.generate(request)
        #expect(a.tokens == b.tokens && a.tokens.count == 10 && a.finishReason == "max tokens")
        var stopping = request
        stopping.stopTokens = [a.tokens[4]]
        let c = model.generate(stopping)
        #expect(c.finishReason == "stop token")
        #expect(c.tokens == Array(a.tokens.prefix(a.tokens.firstIndex(of: a.tokens[4])! + 1)))
        // Greedy generation is the argmax of a full forward pass at each step.
        var context = request.prompt
        for t in a.tokens.prefix(4) {
            let logits = model.forward(context, cache: model.makeCache(capacity: context.count), allPositions: false)
            #expect(logits.withUnsafeBufferPointer(Sampler.argmax) == t)
            context.append(t)
        }
    }
}
