import Foundation

// Every model family behind one interface for LoRA training, generation through a backend,
// the hybrid split and deployment: a loss (and its backward into the adapter's hooks) over a
// batch, in-place access to the frozen weights, and the client's share of the tensors.

/// A model whose LoRA adapters can be trained; each family in `Architectures/` conforms.
public protocol TrainableModel: LanguageModel {
    /// The linear layers an adapter can target, in forward order, with Hugging Face names.
    var linearModules: [LinearModule] { get }

    /// Runs `body` on the stored weight of `module`, in place (for merging).
    func withWeight<R>(of module: LinearModule, _ body: (inout [Float]) throws -> R) rethrows -> R

    /// The stored weight of `module` (read-only copy), in the layout ``LinearModule/transposedWeight`` says.
    func weight(of module: LinearModule) -> [Float]

    /// The bias of `module`, if it has one.
    func bias(of module: LinearModule) -> [Float]?

    /// The cross-entropy of a batch of B right-padded rows, with the backward when asked.
    ///
    /// - tokens: (B, T) flattened; targets: (B, T) already shifted (target r is the label of
    ///   the token after input r) with ``Layers/ignoreIndex`` where nothing is learnt.
    /// - normalization: what the summed token losses are divided by.
    /// - backward: run the backward pass; `hooks` then receive every linear layer's (x, dY).
    /// - Returns: the loss as normalized.
    func trainingLoss(tokens: [Int], batchSize: Int, targets: [Int], hooks: LinearHooks<Float>,
                      normalization: LossNormalization, backward: Bool) -> Float

    /// ``LanguageModel/forward(_:cache:allPositions:)`` with every linear layer run through
    /// `hooks` (its backend and adapter) when given.
    func forward(_ tokens: [Int], cache: KVCache, allPositions: Bool, hooks: LinearHooks<Float>?) -> [Float]

    /// The last position's logits (V) of one sequence through the training pass and `hooks`.
    func lastLogits(_ tokens: [Int], hooks: LinearHooks<Float>) -> [Float]

    /// The tensors a deployment's client keeps (all but the weights of `serverModules`),
    /// named so that ``ModelFamily/load(tensors:config:configFile:file:serverModules:)`` reads them back.
    func clientTensors(excluding serverModules: Set<String>) -> [(name: String, shape: [Int], values: [Float])]

    /// The model's config.json, with its `model_type`.
    func configJSON() throws -> Data
}

extension TrainableModel {
    /// A config's JSON with `model_type` set, keys sorted.
    static func configJSON<C: Encodable>(_ config: C, modelType: String) throws -> Data {
        var object = try JSONSerialization.jsonObject(with: JSONEncoder().encode(config)) as? [String: Any] ?? [:]
        object["model_type"] = modelType
        return try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
    }
}

/// What a batch's summed token losses are divided by.
public enum LossNormalization: Equatable, Sendable {
    /// The counted tokens (targets not ignored).
    case counted
    /// A given count (e.g. the counted tokens of all micro-batches of one optimizer step).
    case by(Int)
    /// Consecutive segments of counted rows, each divided by its own normalizer; the loss is
    /// the sum over segments (the micro-batches of one step run as one batch).
    case segments([LossSegment])
}

extension TrainableModel {
    /// The loss divided by `normalizer` (nil: the counted tokens).
    public func trainingLoss(tokens: [Int], batchSize: Int, targets: [Int], hooks: LinearHooks<Float>,
                             normalizer: Int?, backward: Bool) -> Float {
        trainingLoss(tokens: tokens, batchSize: batchSize, targets: targets, hooks: hooks,
                     normalization: normalizer.map { .by($0) } ?? .counted, backward: backward)
    }
}

/// Consecutive counted rows (targets not ignored, in row order) whose losses add up and are
/// divided by `normalizer`.
public struct LossSegment: Equatable, Sendable {
    public var countedRows: Int
    public var normalizer: Int
    public init(countedRows: Int, normalizer: Int) { (self.countedRows, self.normalizer) = (countedRows, normalizer) }
}

extension GPT2Model: TrainableModel {
    public func lastLogits(_ tokens: [Int], hooks: LinearHooks<Float>) -> [Float] {
        forwardForTraining(tokens: tokens, batchSize: 1, hooks: hooks, headRows: [tokens.count - 1]).logits
    }

    public func configJSON() throws -> Data { try Self.configJSON(config, modelType: "gpt2") }

    public func trainingLoss(tokens: [Int], batchSize: Int, targets: [Int], hooks: LinearHooks<Float>,
                             normalization: LossNormalization, backward: Bool) -> Float {
        TrainingLoss.run(targets: targets, vocabularySize: config.vocabSize, normalization: normalization, backward: backward,
                         forward: { forwardForTraining(tokens: tokens, batchSize: batchSize, hooks: hooks, headRows: $0) },
                         logits: \.logits,
                         backwardPass: { _ = self.backward($1, activations: $0, hooks: hooks, keepLinearGradients: false) })
    }
}

extension LlamaModel: TrainableModel {
    public func lastLogits(_ tokens: [Int], hooks: LinearHooks<Float>) -> [Float] {
        forwardForTraining(tokens: tokens, batchSize: 1, hooks: hooks, headRows: [tokens.count - 1]).logits
    }

    public func configJSON() throws -> Data { try Self.configJSON(config, modelType: config.modelType) }

    public func trainingLoss(tokens: [Int], batchSize: Int, targets: [Int], hooks: LinearHooks<Float>,
                             normalization: LossNormalization, backward: Bool) -> Float {
        TrainingLoss.run(targets: targets, vocabularySize: config.vocabSize, normalization: normalization, backward: backward,
                         forward: { forwardForTraining(tokens: tokens, batchSize: batchSize, hooks: hooks, headRows: $0) },
                         logits: \.logits,
                         backwardPass: { _ = self.backward($1, activations: $0, hooks: hooks, keepLinearGradients: false) })
    }
}

enum TrainingLoss {
    /// The loss of one batch for either model: the forward with logits only for the
    /// counted rows, the cross-entropy, and the backward from dLogits when asked.
    ///
    /// With the backward, dL/dlogits is written over the logits themselves (moved out of the
    /// activations first), so training holds one (rows, V) buffer, not two.
    static func run<Activations>(targets: [Int], vocabularySize: Int, normalization: LossNormalization, backward: Bool,
                                 forward: ([Int]) -> Activations, logits: WritableKeyPath<Activations, [Float]>,
                                 backwardPass: (Activations, [Float]) -> Void) -> Float {
        let rows = countedRows(targets)
        if rows.isEmpty { return 0 }  // nothing to learn from: no logits, no gradient
        var activations = forward(rows)
        var z = activations[keyPath: logits]
        activations[keyPath: logits] = []  // z is now the only reference: written in place below
        let compact = rows.map { targets[$0] }
        let V = vocabularySize
        let segments: [LossSegment]
        switch normalization {
        case .segments(let s):
            precondition(s.reduce(0) { $0 + $1.countedRows } == rows.count, "segments cover \(s.reduce(0) { $0 + $1.countedRows }) of \(rows.count) counted rows")
            segments = s
        case .by(let n): segments = [LossSegment(countedRows: rows.count, normalizer: n)]
        case .counted: segments = [LossSegment(countedRows: rows.count, normalizer: rows.count)]
        }
        var loss: Float = 0, start = 0
        z.withUnsafeMutableBufferPointer { p in
            for s in segments where s.countedRows > 0 {
                let part = Array(compact[start..<(start + s.countedRows)])
                let rowsStart = p.baseAddress! + start * V
                loss += Layers.crossEntropy(logits: UnsafePointer(rowsStart), targets: part, dLogits: backward ? rowsStart : nil,
                                            rows: s.countedRows, vocabularySize: V, normalizer: s.normalizer)
                start += s.countedRows
            }
        }
        if backward { backwardPass(activations, z) }
        return loss
    }

    /// The rows whose target counts: the only rows the head computes logits for.
    static func countedRows(_ targets: [Int]) -> [Int] { targets.indices.filter { targets[$0] != Layers.ignoreIndex } }

    static func crossEntropy(_ logits: [Float], targets: [Int], vocabularySize V: Int, normalizer: Int?,
                             backward: Bool) -> (Float, [Float]?) {
        let N = targets.count
        guard backward else {
            let loss = logits.withUnsafeBufferPointer {
                Layers.crossEntropy(logits: $0.baseAddress!, targets: targets, dLogits: nil, rows: N, vocabularySize: V, normalizer: normalizer)
            }
            return (loss, nil)
        }
        var dLogits = [Float](repeating: 0, count: N * V)
        let loss = logits.withUnsafeBufferPointer { z in
            dLogits.withUnsafeMutableBufferPointer {
                Layers.crossEntropy(logits: z.baseAddress!, targets: targets, dLogits: $0.baseAddress!, rows: N,
                                    vocabularySize: V, normalizer: normalizer)
            }
        }
        return (loss, dLogits)
    }
}

extension CausalLMBatch {
    /// The labels moved one position left, as Hugging Face's causal-LM loss uses them: the
    /// target of input (b, t) is label (b, t + 1); the last position of each row has none.
    public var shiftedTargets: [Int] {
        var targets = [Int](repeating: Layers.ignoreIndex, count: labels.count)
        for b in 0..<rowCount {
            let row = b * rowLength
            for t in 0..<max(rowLength - 1, 0) { targets[row + t] = labels[row + t + 1] }
        }
        return targets
    }

    /// The tokens before the padding, summed over the rows.
    public var realTokenCount: Int { lengths.reduce(0, +) }
}

extension LoRAAdapter {
    /// Hooks that run this adapter on every layer it targets: its forward after the frozen
    /// layer's, its backward (dA, dB and its share of dX) in the backward pass.
    public func hooks() -> LinearHooks<Float> {
        var hooks = LinearHooks<Float>()
        hooks.randomState = (save: { self.dropoutGenerator }, restore: { self.dropoutGenerator = $0 })
        for (i, layer) in layers.enumerated() {
            let n = layer.module.inFeatures
            hooks.register(layer.module.name, forward: { _, x, y in
                self.forward(at: i, input: x.baseAddress!, rows: x.count / n, output: y.baseAddress!)
            }, backward: { _, x, dY, dX in
                self.backward(at: i, input: x.baseAddress!, outputGradient: dY.baseAddress!, rows: x.count / n,
                              inputGradient: dX.baseAddress!)
            })
        }
        return hooks
    }

    /// Runs `body` with W + s·B·A in the model's weights, then puts the original weights
    /// back bit for bit (the targeted matrices are copied first). For generation with the
    /// inference kernels, which know nothing of adapters.
    public func withMerged<R>(into model: TrainableModel, _ body: () throws -> R) rethrows -> R {
        guard isEnabled else { return try body() }
        var originals: [[Float]] = []
        for l in layers {
            originals.append(model.withWeight(of: l.module) { w in
                let copy = w
                l.merge(into: &w)
                return copy
            })
        }
        defer { for (l, w) in zip(layers, originals) { model.withWeight(of: l.module) { $0 = w } } }
        return try body()
    }

    /// W += s·B·A for every layer, for good (e.g. `nb generate --adapter`).
    public func merge(into model: TrainableModel) {
        for l in layers { model.withWeight(of: l.module) { l.merge(into: &$0) } }
    }
}
