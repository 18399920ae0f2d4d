import Foundation

/// Named tensors held in memory: for tests, benchmarks and randomly initialised models.
public struct InMemoryTensors: TensorSource {
    public var tensors: [String: (shape: [Int], data: [Float])]

    public var path: String

    public init(_ tensors: [String: (shape: [Int], data: [Float])] = [:], path: String = "(memory)") {
        self.tensors = tensors
        self.path = path
    }

    public func shape(of name: String) -> [Int]? { tensors[name]?.shape }
    public var tensorNames: [String] { tensors.keys.sorted() }
    public func float32(_ name: String) throws(CheckpointError) -> [Float] { tensors[name]?.data ?? [] }

    /// Normal(0, std) values from a seeded generator (Box–Muller).
    public static func normal(count: Int, std: Float, rng: inout SeededGenerator) -> [Float] {
        var out = [Float](repeating: 0, count: count)
        var i = 0
        while i < count {
            let u1 = max(rng.nextUnit(), 1e-300), u2 = rng.nextUnit()
            let r = (-2 * Foundation.log(u1)).squareRoot()
            out[i] = Float(r * Foundation.cos(2 * .pi * u2)) * std
            if i + 1 < count { out[i + 1] = Float(r * Foundation.sin(2 * .pi * u2)) * std }
            i += 2
        }
        return out
    }
}

extension GPT2Model {
    /// A GPT-2 of the given shape with random weights (std 0.02, norms at 1/0): for tests
    /// and for benchmarks where the real weights are not available.
    public static func random(config: GPT2Config, seed: UInt64) -> GPT2Model {
        var rng = SeededGenerator(seed: seed)
        let C = config.nEmbd
        func w(_ n: Int) -> [Float] { InMemoryTensors.normal(count: n, std: 0.02, rng: &rng) }
        let blocks = (0..<config.nLayer).map { _ in
            Block(ln1Weight: [Float](repeating: 1, count: C), ln1Bias: w(C), attnWeight: w(C * 3 * C), attnBias: w(3 * C),
                  attnProjWeight: w(C * C), attnProjBias: w(C), ln2Weight: [Float](repeating: 1, count: C), ln2Bias: w(C),
                  fcWeight: w(C * 4 * C), fcBias: w(4 * C), fcProjWeight: w(4 * C * C), fcProjBias: w(C))
        }
        return GPT2Model(config: config, tokenEmbedding: w(config.vocabSize * C), positionEmbedding: w(config.nPositions * C),
                         blocks: blocks, finalNormWeight: [Float](repeating: 1, count: C), finalNormBias: w(C))
    }
}

extension LlamaModel {
    /// A LLaMA of the given shape with random weights (std 0.02, norms at 1).
    public static func random(config: LlamaConfig, seed: UInt64, ropeStyle: RoPEStyle = .halves) -> LlamaModel {
        var rng = SeededGenerator(seed: seed)
        let C = config.hiddenSize, F = config.intermediateSize
        let q = config.numAttentionHeads * config.headDim, kv = config.numKeyValueHeads * config.headDim
        func w(_ n: Int) -> [Float] { InMemoryTensors.normal(count: n, std: 0.02, rng: &rng) }
        let ones = [Float](repeating: 1, count: C)
        let blocks = (0..<config.numHiddenLayers).map { _ in
            Block(attentionNorm: ones, wq: w(q * C), wk: w(kv * C), wv: w(kv * C), wo: w(C * q), mlpNorm: ones,
                  gate: w(F * C), up: w(F * C), down: w(C * F))
        }
        return LlamaModel(config: config, ropeStyle: ropeStyle, embedding: w(config.vocabSize * C), blocks: blocks,
                          finalNorm: ones, lmHead: config.tieWordEmbeddings ? nil : w(config.vocabSize * C))
    }
}
