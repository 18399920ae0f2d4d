import Engine
import FHE
import Foundation

/// Settings shared by `lora_trainer` and `math_eval`: the LoRA configuration and the
/// optimizer's, with the LLaMA notebook's defaults.
struct TrainerSettings {
    var r = 8, alpha = 32.0, dropout = 0.01, seed = 0
    var epochs = 1, batchSize = 4, gradientAccumulation = 1
    var learningRate = 2e-4, schedule = LearningRateSchedule.Kind.linear, warmupSteps = 10, weightDecay = 0.01
    var maxGradNorm: Double? = 1.0
    var maxLength = 128

    var training: TrainingSettings {
        TrainingSettings(epochs: epochs, batchSize: batchSize, gradientAccumulation: gradientAccumulation, learningRate: learningRate,
                         schedule: schedule, warmupSteps: warmupSteps, weightDecay: weightDecay, maxGradientNorm: maxGradNorm, seed: UInt64(seed))
    }
}

/// `nb lora_trainer`: the high-level ``LoraTrainer`` on the session's model — LoRA, the
/// hybrid compilation (calibrated on the training data), training with checkpoints, the
/// prompts' continuations before and after, and the test split's loss before and after.
/// The trained adapter and the plan become the session's.
///
/// ```nb lora_trainer
/// data: train
/// r: 8
/// alpha: 32
/// dropout: 0.01
/// target_modules: all-linear
/// epochs: 10
/// learning_rate: 2e-4
/// n_bits: 8
/// mode: disable
/// prompts: ["```nb train"]
/// ```
public enum LoraTrainerStep: Step {
    public static let name = "lora_trainer"
    public static func dataflow(_ p: Parameters) -> StepDataflow { StepDataflow(reads: Set([.model, .adapter, .hybrid, .deployment, .dataset(p.data)] + (p.test.map { [SessionSlot.dataset($0)] } ?? [])), writes: [.adapter, .hybrid]) }
    public static let summary = "the high-level LoraTrainer: LoRA, hybrid compile, training, continuations and loss before/after"

    public struct Parameters: StepParameters {
        public enum Keys: String, CodingKey, CaseIterable {
            case data, test, r, alpha, dropout, targetModules = "target_modules", seed, epochs, batchSize = "batch_size"
            case gradientAccumulation = "gradient_accumulation", learningRate = "learning_rate", schedule, warmupSteps = "warmup_steps"
            case weightDecay = "weight_decay", maxGradNorm = "max_grad_norm", maxLength = "max_length", nBits = "n_bits", scheme
            case localFirstLayers = "local_first_layers", calibrationBatches = "calibration_batches", mode, prompts, maxTokens = "max_tokens"
            case checkpointEvery = "checkpoint_every", evalEvery = "eval_every", earlyStopping = "early_stopping"
        }
        public typealias CodingKeys = Keys
        public var data: String, test: String?
        public var r: Int, alpha: Double, dropout: Double, targetModules: TargetModulesSpec, seed: Int
        public var epochs: Int, batchSize: Int, gradientAccumulation: Int, learningRate: Double, schedule: LearningRateSchedule.Kind
        public var warmupSteps: Int, weightDecay: Double, maxGradNorm: Double?, maxLength: Int
        public var nBits: Int, scheme: String, localFirstLayers: Int, calibrationBatches: Int
        public var mode: LoraTrainer.Mode
        public var prompts: [String], maxTokens: Int, checkpointEvery: Int
        /// Validate on `test` every N optimizer steps (and at the end); nil: before and after only.
        public var evalEvery: Int?
        public var earlyStopping: TrainStep.EarlyStopping?

        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: Keys.self)
            let d = TrainerSettings()
            data = try c.decodeIfPresent(String.self, forKey: .data) ?? "train"
            test = try c.decodeIfPresent(String.self, forKey: .test)
            r = try c.decodeIfPresent(Int.self, forKey: .r) ?? d.r
            alpha = try c.decodeIfPresent(Double.self, forKey: .alpha) ?? d.alpha
            dropout = try c.decodeIfPresent(Double.self, forKey: .dropout) ?? d.dropout
            targetModules = try c.decodeIfPresent(TargetModulesSpec.self, forKey: .targetModules)
                ?? JSONDecoder().decode(TargetModulesSpec.self, from: Data("\"all-linear\"".utf8))
            seed = try c.decodeIfPresent(Int.self, forKey: .seed) ?? d.seed
            epochs = try c.decodeIfPresent(Int.self, forKey: .epochs) ?? 10
            batchSize = try c.decodeIfPresent(Int.self, forKey: .batchSize) ?? d.batchSize
            gradientAccumulation = try c.decodeIfPresent(Int.self, forKey: .gradientAccumulation) ?? 1
            learningRate = try c.decodeIfPresent(Double.self, forKey: .learningRate) ?? d.learningRate
            schedule = try c.decodeChoice(LearningRateSchedule.Kind.self, forKey: .schedule) ?? .linear
            warmupSteps = try c.decodeIfPresent(Int.self, forKey: .warmupSteps) ?? d.warmupSteps
            weightDecay = try c.decodeIfPresent(Double.self, forKey: .weightDecay) ?? d.weightDecay
            maxGradNorm = try c.decodeIfPresent(Double.self, forKey: .maxGradNorm) ?? d.maxGradNorm
            maxLength = try c.decodeIfPresent(Int.self, forKey: .maxLength) ?? d.maxLength
            nBits = try c.decodeIfPresent(Int.self, forKey: .nBits) ?? 8
            scheme = try c.decodeIfPresent(String.self, forKey: .scheme) ?? "DTok-SC"
            localFirstLayers = try c.decodeIfPresent(Int.self, forKey: .localFirstLayers) ?? 0
            calibrationBatches = try c.decodeIfPresent(Int.self, forKey: .calibrationBatches) ?? 2
            mode = try c.decodeChoice(LoraTrainer.Mode.self, forKey: .mode) ?? .disable
            prompts = try c.decodeIfPresent([String].self, forKey: .prompts) ?? []
            maxTokens = try c.decodeIfPresent(Int.self, forKey: .maxTokens) ?? 40
            checkpointEvery = try c.decodeIfPresent(Int.self, forKey: .checkpointEvery) ?? 20
            evalEvery = try c.decodeIfPresent(Int.self, forKey: .evalEvery)
            earlyStopping = try c.decodeIfPresent(TrainStep.EarlyStopping.self, forKey: .earlyStopping)
        }

        public func validate() throws(ParameterError) {
            if mode == .remote { throw ParameterError("mode", "lora_trainer runs torch, disable or execute; remote training goes through nb train with a deployment's client") }
            if r <= 0 { throw ParameterError("r", "the LoRA rank must be a positive integer, got \(r)") }
            if !(alpha > 0 && alpha.isFinite) { throw ParameterError("alpha", "\(alpha) must be a positive number") }
            if !(dropout >= 0 && dropout < 1) { throw ParameterError("dropout", "\(dropout) must be in [0, 1)") }
            if !(1...100_000).contains(epochs) { throw ParameterError("epochs", "\(epochs) is out of range 1...100000") }
            if batchSize < 1 { throw ParameterError("batch_size", "\(batchSize) must be ≥ 1") }
            if gradientAccumulation < 1 { throw ParameterError("gradient_accumulation", "\(gradientAccumulation) must be ≥ 1") }
            if !(learningRate > 0 && learningRate.isFinite) { throw ParameterError("learning_rate", "\(learningRate) must be a positive number") }
            if warmupSteps < 0 { throw ParameterError("warmup_steps", "\(warmupSteps) must be ≥ 0") }
            if maxLength < 2 { throw ParameterError("max_length", "\(maxLength) must be ≥ 2") }
            if !(2...16).contains(nBits) { throw ParameterError("n_bits", "\(nBits) must be 2…16") }
            if QuantizationScheme(named: scheme, nBits: 8) == nil { throw ParameterError("scheme", "'\(scheme)' is not one of \(QuantizationScheme.names.joined(separator: ", "))") }
            if localFirstLayers < 0 { throw ParameterError("local_first_layers", "\(localFirstLayers) must be ≥ 0") }
            if calibrationBatches < 1 { throw ParameterError("calibration_batches", "\(calibrationBatches) must be ≥ 1") }
            if !(1...1024).contains(maxTokens) { throw ParameterError("max_tokens", "\(maxTokens) is out of range 1...1024") }
            if checkpointEvery < 1 { throw ParameterError("checkpoint_every", "\(checkpointEvery) must be ≥ 1") }
            if let e = evalEvery {
                if e < 1 { throw ParameterError("eval_every", "\(e) must be ≥ 1") }
                if test == nil { throw ParameterError("eval_every", "validates on the test data set: give test: NAME") }
            }
            if let s = earlyStopping {
                if evalEvery == nil { throw ParameterError("early_stopping", "needs eval_every (and test) to know when the validation loss stops improving") }
                if s.patience < 1 { throw ParameterError("early_stopping.patience", "\(s.patience) must be ≥ 1") }
                if s.minDelta != 0 { throw ParameterError("early_stopping.min_delta", "lora_trainer stops on any lack of improvement (min_delta 0)") }
            }
        }
    }

    public static func run(_ p: Parameters, context: StepContext) throws {
        try context.session.requireWholeModel(for: name)
        let (loaded, model) = try context.session.trainableModel()
        guard let targets = p.targetModules.targets(for: model.architecture) else {
            throw StepFailure(key: "target_modules", "names no modules for a \(model.architecture) model")
        }
        let settings = TrainingSettings(epochs: p.epochs, batchSize: p.batchSize, gradientAccumulation: p.gradientAccumulation,
                                        learningRate: p.learningRate, schedule: p.schedule, warmupSteps: p.warmupSteps,
                                        weightDecay: p.weightDecay, maxGradientNorm: p.maxGradNorm, seed: UInt64(p.seed))
        let trainer: LoraTrainer
        do {
            trainer = try LoraTrainer(model: model, tokenizer: loaded.tokenizer,
                                      lora: LoRAConfig(rank: p.r, alpha: p.alpha, dropout: p.dropout, targets: targets, seed: UInt64(p.seed)),
                                      settings: settings, keyring: try context.session.clientKeyring())
        } catch { throw StepFailure(key: "target_modules", "\(error)") }
        trainer.maskStore = try context.session.maskStore()
        let rows = RowSettings(maxLength: p.maxLength, padding: .longest)
        let data = try rows.data(p.data, key: "data", context: context, loaded: loaded)
        let test = try p.test.map { try rows.data($0, key: "test", context: context, loaded: loaded) }

        func continuations() throws -> [String] {
            try p.prompts.map { prompt in
                let ids = loaded.encodePrompt(prompt, chat: false)
                let out = try trainer.generate(ids, maxTokens: p.maxTokens, mode: .torch, stopTokens: loaded.stopTokens)
                return loaded.tokenizer.decode(out.filter { !loaded.stopTokens.contains($0) })
            }
        }
        let before = try continuations()
        let started = Date()
        do {
            try trainer.compile(inputset: data, nBits: p.nBits, scheme: p.scheme, localFirstLayers: p.localFirstLayers,
                                calibrationBatches: p.calibrationBatches)
        } catch { throw StepFailure(key: "n_bits", "\(error)") }
        let testBefore = try test.map { try trainer.evaluate($0, mode: p.mode) }
        trainer.checkpointURL = context.checkpointDirectory.appendingPathComponent("checkpoint.safetensors")
        trainer.checkpointEvery = p.checkpointEvery
        if let every = p.evalEvery, let test { trainer.validation = (test, every) }
        trainer.earlyStoppingPatience = p.earlyStopping?.patience
        var progress: ProgressReporter?
        do {
            try trainer.train(data, mode: p.mode) { record, total in
                if progress == nil { progress = context.progress("lora_trainer", total: total) }
                progress?.update(record.step, metrics: String(format: "loss %.4f  lr %.2e", record.loss, record.learningRate))
            }
        } catch {
            progress?.finish()
            throw StepFailure(key: "mode", "\(error); the last checkpoint is kept at \(context.display(trainer.checkpointURL!))")
        }
        progress?.finish()
        let testAfter = try test.map { try trainer.evaluate($0, mode: p.mode) }
        let after = try continuations()
        let history = trainer.history
        try context.session.register(trainer.adapter, in: context.adapterStore, trainedSteps: history.count, origin: "lora_trainer")
        context.session.state.hybrid = trainer.plan

        let plan = trainer.plan!
        var metrics = [
            Metric("LoRA", "r = \(p.r), alpha = \(Format.number(p.alpha, decimals: 0)), dropout \(p.dropout), \(trainer.adapter.layers.count) modules, \(Format.integer(trainer.adapter.parameterCount)) parameters"),
            Metric("hybrid", "\(plan.remoteModules.count) remote modules, \(plan.scheme.description)"),
            Metric("mode", p.mode.rawValue),
            Metric("steps", "\(history.count) (\(p.epochs) epochs of \(data.examples.count) examples, batch \(p.batchSize))"),
            Metric("first loss", history.first.map { Format.number(Double($0.loss), decimals: 4) } ?? "–"),
            Metric("final loss", history.last.map { Format.number(Double($0.loss), decimals: 4) } ?? "–"),
            Metric("time", Format.duration(Date().timeIntervalSince(started))),
        ]
        if let b = testBefore, let a = testAfter {
            metrics.append(Metric("test perplexity", "\(Format.number(b.perplexity, decimals: 3)) → \(Format.number(a.perplexity, decimals: 3))"))
        }
        let validations = trainer.validationHistory
        if let best = validations.min(by: { $0.loss < $1.loss }) {
            metrics.append(Metric("best validation", "step \(best.step): loss \(Format.number(best.loss, decimals: 4)), perplexity \(Format.number(best.perplexity, decimals: 3))"))
        }
        if let stopped = trainer.stoppedEarlyAt { metrics.append(Metric("stopped early", "at step \(stopped) (\(p.earlyStopping?.patience ?? 0) validations without a better loss)")) }
        context.emit(.metrics(metrics))
        context.emit(.chart(LineChart(title: "Training loss (LoraTrainer)", xLabel: "optimizer step", yLabel: "cross-entropy (nats)", yScale: .linear,
                                      series: [LineChart.Series(name: p.mode.rawValue, points: history.map { .init(Double($0.step), Double($0.loss)) })]
                                        + (validations.isEmpty ? [] : [LineChart.Series(name: "validation", points: validations.map { .init(Double($0.step), $0.loss) })]))))
        if !p.prompts.isEmpty {
            context.emit(.table(OutputTable(title: "Continuations before and after fine-tuning (greedy)", columns: ["prompt", "before", "after"],
                                            rows: p.prompts.indices.map { [p.prompts[$0], before[$0], after[$0]] })))
        }
    }
}
