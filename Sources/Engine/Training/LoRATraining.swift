import FHE
import Foundation

/// How a LoRA adapter is trained: the use case's knobs.
public struct TrainingSettings: Codable, Equatable, Sendable {
    public var epochs: Int
    /// Rows per micro-batch.
    public var batchSize: Int
    /// Micro-batches whose gradients add up before one optimizer step.
    public var gradientAccumulation: Int
    public var learningRate: Double
    public var schedule: LearningRateSchedule.Kind
    public var warmupSteps: Int
    public var weightDecay: Double
    /// Global gradient-norm clipping; nil: none.
    public var maxGradientNorm: Double?
    /// Shuffling of each epoch (the adapter's dropout has its own seed, in its config).
    public var seed: UInt64
    public var shuffle: Bool
    /// Run the micro-batches of a step as one batch (rows padded to the longest, each
    /// micro-batch's loss normalized on its own): the same loss, one call per layer per step,
    /// so an encrypted backend fills its ciphertexts. The dropout masks are drawn in another
    /// order than with separate micro-batches, so the numbers differ from theirs in the last bits.
    public var fuseMicroBatches: Bool
    /// Keep only each block's input in the forward and recompute its activations in the
    /// backward (less memory, one more forward's work; the same numbers, dropout included).
    public var gradientCheckpointing: Bool

    public init(epochs: Int, batchSize: Int, gradientAccumulation: Int = 1, learningRate: Double,
                schedule: LearningRateSchedule.Kind = .linear, warmupSteps: Int = 0, weightDecay: Double = 0.01,
                maxGradientNorm: Double? = nil, seed: UInt64 = 0, shuffle: Bool = true, fuseMicroBatches: Bool = false,
                gradientCheckpointing: Bool = false) {
        (self.epochs, self.batchSize, self.gradientAccumulation, self.learningRate) = (epochs, batchSize, gradientAccumulation, learningRate)
        (self.schedule, self.warmupSteps, self.weightDecay, self.maxGradientNorm) = (schedule, warmupSteps, weightDecay, maxGradientNorm)
        (self.seed, self.shuffle, self.fuseMicroBatches, self.gradientCheckpointing) = (seed, shuffle, fuseMicroBatches, gradientCheckpointing)
    }

    enum CodingKeys: String, CodingKey {
        case epochs, batchSize, gradientAccumulation, learningRate, schedule, warmupSteps, weightDecay, maxGradientNorm, seed, shuffle
        case fuseMicroBatches, gradientCheckpointing
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(epochs: try c.decode(Int.self, forKey: .epochs), batchSize: try c.decode(Int.self, forKey: .batchSize),
                  gradientAccumulation: try c.decode(Int.self, forKey: .gradientAccumulation),
                  learningRate: try c.decode(Double.self, forKey: .learningRate),
                  schedule: try c.decode(LearningRateSchedule.Kind.self, forKey: .schedule), warmupSteps: try c.decode(Int.self, forKey: .warmupSteps),
                  weightDecay: try c.decode(Double.self, forKey: .weightDecay), maxGradientNorm: try c.decodeIfPresent(Double.self, forKey: .maxGradientNorm),
                  seed: try c.decode(UInt64.self, forKey: .seed), shuffle: try c.decode(Bool.self, forKey: .shuffle),
                  fuseMicroBatches: try c.decodeIfPresent(Bool.self, forKey: .fuseMicroBatches) ?? false,
                  gradientCheckpointing: try c.decodeIfPresent(Bool.self, forKey: .gradientCheckpointing) ?? false)
    }
}

/// One optimizer step as it happened.
public struct TrainingStepRecord: Codable, Equatable, Sendable {
    /// 1-based optimizer step.
    public var step: Int
    /// 0-based epoch.
    public var epoch: Int
    /// The mean of the micro-batches' losses (each the mean over its counted tokens).
    public var loss: Float
    public var learningRate: Double
    /// The global gradient norm before clipping.
    public var gradientNorm: Double
    /// Tokens before padding, over the step's micro-batches.
    public var tokens: Int
    public var seconds: Double
}

/// Where a run stands: enough, with the adapter's and optimizer's tensors, to continue it
/// exactly. Epoch and micro-batch follow from `step` (the order of each epoch is a function
/// of the seed and the epoch).
public struct TrainingPosition: Codable, Equatable, Sendable {
    /// Optimizer steps done.
    public var step: Int
    public var dropoutGenerator: SeededGenerator
    public var history: [TrainingStepRecord]
}

public enum TrainingError: Error, Equatable, CustomStringConvertible {
    case invalidSettings(key: String, message: String)
    case emptyData
    case nonFiniteLoss(step: Int, epoch: Int, loss: Float)
    case nonFiniteGradient(step: Int, epoch: Int, norm: Double)
    case badCheckpoint(path: String, reason: String)
    case unwritable(path: String, reason: String)

    public var description: String {
        switch self {
        case .invalidSettings(let k, let m): return "\(k): \(m)"
        case .emptyData: return "the training data has no examples"
        case .nonFiniteLoss(let s, let e, let l):
            return "the loss is \(l) at step \(s) (epoch \(e + 1)): training diverged; lower the learning rate or clip gradients"
        case .nonFiniteGradient(let s, let e, let n):
            return "the gradient norm is \(n) at step \(s) (epoch \(e + 1)): training diverged; lower the learning rate or clip gradients"
        case .badCheckpoint(let p, let r): return "\(p): not a usable training checkpoint: \(r)"
        case .unwritable(let p, let r): return "cannot write \(p): \(r)"
        }
    }
}

/// A LoRA fine-tuning run: the low-level loop of the GPT-2 notebook.
///
/// Each optimizer step takes `gradientAccumulation` micro-batches of the current epoch (the
/// last step of an epoch may take fewer). For each micro-batch the model's loss is Hugging
/// Face's causal-LM loss (labels shifted, mean over the counted tokens), and its gradient
/// is scaled by 1/(micro-batches in the step) — `(loss / k).backward()`. Then the global
/// gradient norm is clipped (when set), AdamW updates A and B with the scheduled learning
/// rate, and the gradients are zeroed.
///
/// Deterministic: the order of each epoch comes from (seed, epoch), dropout from the
/// adapter's generator, which is part of ``position``. A run restored from a checkpoint
/// continues bit for bit as the uninterrupted run would.
public final class LoRATrainingRun {
    public let model: TrainableModel
    public let adapter: LoRAAdapter
    public let data: CausalLMData
    public let settings: TrainingSettings
    public let schedule: LearningRateSchedule
    public private(set) var optimizer: AdamW
    public private(set) var position: TrainingPosition
    private var cachedEpoch: (epoch: Int, batches: [CausalLMBatch])?
    private var hooks: LinearHooks<Float>
    /// Where the frozen layers' products run (nil: float on the client, `mode: torch`).
    public var backend: LinearBackend? {
        didSet { hooks.backend = backend }
    }
    /// Called in each step after the backward passes, before clipping: the adapter holds
    /// the step's accumulated gradients (for tests and diagnostics).
    public var inspectGradients: ((LoRAAdapter) -> Void)?

    public init(model: TrainableModel, adapter: LoRAAdapter, data: CausalLMData, settings: TrainingSettings) throws(TrainingError) {
        guard settings.epochs >= 1 else { throw .invalidSettings(key: "epochs", message: "\(settings.epochs) must be ≥ 1") }
        guard settings.batchSize >= 1 else { throw .invalidSettings(key: "batch_size", message: "\(settings.batchSize) must be ≥ 1") }
        guard settings.gradientAccumulation >= 1 else {
            throw .invalidSettings(key: "gradient_accumulation", message: "\(settings.gradientAccumulation) must be ≥ 1")
        }
        guard settings.learningRate.isFinite && settings.learningRate > 0 else {
            throw .invalidSettings(key: "learning_rate", message: "\(settings.learningRate) must be a positive number")
        }
        guard !data.examples.isEmpty else { throw .emptyData }
        self.model = model
        self.adapter = adapter
        self.data = data
        self.settings = settings
        let perEpoch = (data.batchesPerEpoch(batchSize: settings.batchSize) + settings.gradientAccumulation - 1) / settings.gradientAccumulation
        schedule = LearningRateSchedule(kind: settings.schedule, warmupSteps: settings.warmupSteps, totalSteps: perEpoch * settings.epochs)
        optimizer = AdamW(weightDecay: settings.weightDecay)
        position = TrainingPosition(step: 0, dropoutGenerator: adapter.dropoutGenerator, history: [])
        hooks = adapter.hooks()
        hooks.gradientCheckpointing = settings.gradientCheckpointing
        // Each step allocates and frees the same large buffers (activations, logits): with
        // glibc's default thresholds they are mapped, faulted in and zeroed afresh every step
        // (14 % of a GPT-2-shape 4×128 step). Kept by the allocator, they reuse the last
        // step's pages (a remote client that chose compact memory keeps it). The runner
        // returns free memory after each cell (malloc_trim).
        FHEMemory.keepFreedBuffers()
    }

    /// Optimizer steps per epoch: ⌈batches / accumulation⌉.
    public var stepsPerEpoch: Int {
        (data.batchesPerEpoch(batchSize: settings.batchSize) + settings.gradientAccumulation - 1) / settings.gradientAccumulation
    }
    public var totalSteps: Int { stepsPerEpoch * settings.epochs }
    public var isFinished: Bool { position.step >= totalSteps }
    /// The epoch (0-based) the next step belongs to.
    public var currentEpoch: Int { position.step / stepsPerEpoch }

    /// The micro-batches of optimizer step `step` (0-based).
    public func microBatches(ofStep step: Int) -> [CausalLMBatch] {
        let epoch = step / stepsPerEpoch, inEpoch = step % stepsPerEpoch
        if cachedEpoch?.epoch != epoch {
            // batchSize ≥ 1 was checked in init, so batching cannot fail.
            cachedEpoch = (epoch, (try? data.batches(epoch: epoch, batchSize: settings.batchSize, seed: settings.seed,
                                                     shuffle: settings.shuffle)) ?? [])
        }
        let all = cachedEpoch!.batches
        let start = inEpoch * settings.gradientAccumulation
        return Array(all[start..<min(start + settings.gradientAccumulation, all.count)])
    }

    /// Runs the next optimizer step. On a non-finite loss or gradient nothing is updated and
    /// the run stays at the step before.
    @discardableResult
    public func step() throws(TrainingError) -> TrainingStepRecord {
        precondition(!isFinished, "the run has done all its \(totalSteps) steps")
        let started = Date()
        let index = position.step, epoch = currentEpoch
        let batches = microBatches(ofStep: index)
        adapter.isTraining = true
        adapter.dropoutGenerator = position.dropoutGenerator
        defer { adapter.isTraining = false }
        adapter.zeroGradients()
        var lossSum: Float = 0
        var tokens = 0
        if settings.fuseMicroBatches && batches.count > 1 {
            let fused = CausalLMBatch.concatenating(batches, paddingTokenID: data.paddingTokenID)
            // Each micro-batch's mean over its counted tokens, divided by the micro-batch count.
            let segments = batches.map { b in
                let counted = b.shiftedTargets.reduce(0) { $0 + ($1 == Layers.ignoreIndex ? 0 : 1) }
                return LossSegment(countedRows: counted, normalizer: counted * batches.count)
            }
            backend?.setRealRows(fused.realRows)
            defer { backend?.setRealRows(nil) }
            let loss = model.trainingLoss(tokens: fused.tokens, batchSize: fused.rowCount, targets: fused.shiftedTargets, hooks: hooks,
                                          normalization: .segments(segments), backward: true)
            lossSum = loss * Float(batches.count)
            tokens = fused.realTokenCount
        }
        for batch in batches where !(settings.fuseMicroBatches && batches.count > 1) {
            let targets = batch.shiftedTargets
            let counted = targets.reduce(0) { $0 + ($1 == Layers.ignoreIndex ? 0 : 1) }
            // (loss / k).backward(): the micro-batch mean divided by the micro-batch count.
            backend?.setRealRows(batch.realRows)
            defer { backend?.setRealRows(nil) }
            let scaled = model.trainingLoss(tokens: batch.tokens, batchSize: batch.rowCount, targets: targets, hooks: hooks,
                                            normalizer: counted * batches.count, backward: true)
            lossSum += scaled * Float(batches.count)
            tokens += batch.realTokenCount
        }
        let loss = lossSum / Float(batches.count)
        guard loss.isFinite else { throw .nonFiniteLoss(step: index + 1, epoch: epoch, loss: loss) }
        inspectGradients?(adapter)
        let norm = settings.maxGradientNorm.map { adapter.clipGradientNorm(maxNorm: $0) } ?? adapter.gradientNorm
        guard norm.isFinite else { throw .nonFiniteGradient(step: index + 1, epoch: epoch, norm: norm) }
        let lr = schedule.learningRate(base: settings.learningRate, step: index)
        optimizer.step(adapter, learningRate: lr)
        position.step += 1
        position.dropoutGenerator = adapter.dropoutGenerator
        let record = TrainingStepRecord(step: index + 1, epoch: epoch, loss: loss, learningRate: lr, gradientNorm: norm,
                                        tokens: tokens, seconds: Date().timeIntervalSince(started))
        position.history.append(record)
        return record
    }

    // MARK: Checkpoints

    /// The checkpoint format's version.
    public static let checkpointVersion = 1

    /// What must agree between a checkpoint and the run restoring it.
    struct CheckpointState: Codable {
        var version: Int
        var settings: TrainingSettings
        var lora: LoRAConfig
        var modules: [String]
        var examples: Int
        var optimizerStep: Int
        var position: TrainingPosition
    }

    /// Writes adapter, optimizer moments, schedule position, dropout generator and history
    /// to one safetensors file, replaced atomically (temporary file, fsync, rename).
    public func saveCheckpoint(to url: URL) throws(TrainingError) {
        var tensors: [(name: String, shape: [Int], values: [Float])] = []
        let moments = optimizer.state
        for (i, l) in adapter.layers.enumerated() {
            let names = PEFTAdapter.tensorNames(module: l.module.name)
            let shapes = [[l.rank, l.module.inFeatures], [l.module.outFeatures, l.rank]]
            for (j, (name, values)) in [(names.a, l.a), (names.b, l.b)].enumerated() {
                tensors.append((name, shapes[j], values))
                if !moments.firstMoments.isEmpty {
                    tensors.append(("optimizer.exp_avg." + name, shapes[j], moments.firstMoments[2 * i + j]))
                    tensors.append(("optimizer.exp_avg_sq." + name, shapes[j], moments.secondMoments[2 * i + j]))
                }
            }
        }
        let state = CheckpointState(version: Self.checkpointVersion, settings: settings, lora: adapter.config,
                                    modules: adapter.modules.map(\.name), examples: data.examples.count,
                                    optimizerStep: moments.step, position: position)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        do {
            let json = String(decoding: try encoder.encode(state), as: UTF8.self)
            try AtomicFile.write(SafeTensorsWriter.encode(tensors, metadata: ["format": "nb-training-checkpoint", "nb.training": json]), to: url)
        } catch {
            throw .unwritable(path: url.path, reason: "\(error)")
        }
    }

    /// Restores a checkpoint written by ``saveCheckpoint(to:)`` of a run with the same
    /// settings, adapter configuration and data size.
    public func restoreCheckpoint(from url: URL) throws(TrainingError) {
        let file: SafeTensorsFile
        do { file = try SafeTensorsFile(url: url) } catch { throw .badCheckpoint(path: url.path, reason: "\(error)") }
        guard let json = file.metadata["nb.training"],
              let state = try? JSONDecoder().decode(CheckpointState.self, from: Data(json.utf8)) else {
            throw .badCheckpoint(path: url.path, reason: "no nb.training metadata")
        }
        guard state.version == Self.checkpointVersion else {
            throw .badCheckpoint(path: url.path, reason: "format version \(state.version), this nb reads \(Self.checkpointVersion)")
        }
        guard state.settings == settings else { throw .badCheckpoint(path: url.path, reason: "written with other training settings") }
        guard state.lora == adapter.config, state.modules == adapter.modules.map(\.name) else {
            throw .badCheckpoint(path: url.path, reason: "written for another LoRA configuration")
        }
        guard state.examples == data.examples.count else {
            throw .badCheckpoint(path: url.path, reason: "written for \(state.examples) examples, the data has \(data.examples.count)")
        }
        guard state.position.step <= totalSteps else {
            throw .badCheckpoint(path: url.path, reason: "at step \(state.position.step) of a \(totalSteps)-step run")
        }
        var parameters: [[Float]] = [], first: [[Float]] = [], second: [[Float]] = []
        do {
            for l in adapter.layers {
                let names = PEFTAdapter.tensorNames(module: l.module.name)
                let shapes = [[l.rank, l.module.inFeatures], [l.module.outFeatures, l.rank]]
                for (j, name) in [names.a, names.b].enumerated() {
                    parameters.append(try file.float32(name, shape: shapes[j]))
                    if state.optimizerStep > 0 {
                        first.append(try file.float32("optimizer.exp_avg." + name, shape: shapes[j]))
                        second.append(try file.float32("optimizer.exp_avg_sq." + name, shape: shapes[j]))
                    }
                }
            }
        } catch {
            throw .badCheckpoint(path: url.path, reason: "\(error)")
        }
        adapter.parameters = parameters
        optimizer.state = AdamWState(step: state.optimizerStep, firstMoments: first, secondMoments: second)
        position = state.position
        adapter.dropoutGenerator = position.dropoutGenerator
    }
}

/// Loss and perplexity of a model (with its adapter, if any) on a data set.
public struct EvaluationResult: Codable, Equatable, Sendable {
    /// Mean cross-entropy per counted token (nats).
    public var loss: Double
    public var tokens: Int
    public var examples: Int
    public var perplexity: Double { exp(loss) }
}

extension LoRATrainingRun {
    /// The mean token loss over every example of `data`, in file order, in batches of
    /// `batchSize`; the adapter (when given) runs without dropout.
    public static func evaluate(model: TrainableModel, adapter: LoRAAdapter?, data: CausalLMData, batchSize: Int,
                                backend: LinearBackend? = nil,
                                progress: ((Int, Int) -> Void)? = nil) throws(TrainingError) -> EvaluationResult {
        guard batchSize >= 1 else { throw .invalidSettings(key: "batch_size", message: "\(batchSize) must be ≥ 1") }
        guard !data.examples.isEmpty else { throw .emptyData }
        let wasTraining = adapter?.isTraining ?? false
        adapter?.isTraining = false
        defer { adapter?.isTraining = wasTraining }
        var hooks = adapter?.hooks() ?? LinearHooks<Float>()
        hooks.backend = backend
        let batches = (try? data.batches(epoch: 0, batchSize: batchSize, seed: 0, shuffle: false)) ?? []
        var sum = 0.0, counted = 0
        for (i, batch) in batches.enumerated() {
            let targets = batch.shiftedTargets
            let n = targets.reduce(0) { $0 + ($1 == Layers.ignoreIndex ? 0 : 1) }
            // normalizer 1: the sum of the token losses.
            backend?.setRealRows(batch.realRows)
            defer { backend?.setRealRows(nil) }
            sum += Double(model.trainingLoss(tokens: batch.tokens, batchSize: batch.rowCount, targets: targets, hooks: hooks,
                                             normalizer: 1, backward: false))
            counted += n
            progress?(i + 1, batches.count)
        }
        return EvaluationResult(loss: counted > 0 ? sum / Double(counted) : 0, tokens: counted, examples: data.examples.count)
    }
}
