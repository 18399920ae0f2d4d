import Engine
import Foundation

/// How a step turns a loaded data set into training rows: the keys `max_length` and `padding`.
struct RowSettings {
    var maxLength: Int
    var padding: CausalLMDataOptions.Padding

    func data(_ name: String, key: String, context: StepContext, loaded: LoadedModel) throws -> CausalLMData {
        let dataset = try context.session.dataset(named: name)
        let path = context.session.state.dataset(name)?.displayPath ?? name
        do {
            return try CausalLMData(dataset: dataset, tokenizer: loaded.tokenizer,
                                    options: CausalLMDataOptions(maxLength: maxLength, padding: padding),
                                    contextLength: loaded.model.contextLength, chatTemplate: loaded.chatTemplate, path: path)
        } catch {
            switch error {
            case .longerThanContext, .invalidMaxLength: throw StepFailure(key: "max_length", error.description)
            default: throw StepFailure(key: key, error.description)
            }
        }
    }
}

/// `nb train`: fine-tunes the session's LoRA adapter on a loaded data set — the GPT-2
/// notebook's low-level loop (AdamW, schedule with warmup, accumulation, clipping).
///
/// ```nb train id=train
/// data: train                 # a data set loaded by load_data
/// epochs: 20
/// batch_size: 4
/// learning_rate: 2e-3
/// schedule: linear            # linear | cosine | constant
/// warmup_steps: 10
/// weight_decay: 0.01
/// gradient_accumulation: 1
/// max_grad_norm: 1.0          # optional
/// max_length: 128
/// padding: max_length         # max_length (the use case) | longest (same losses, less work)
/// seed: 0                     # shuffling; dropout uses the adapter's seed
/// checkpoint_every: 20        # optimizer steps between resumable checkpoints
/// generate: {prompts: ["What is FHE?"], max_tokens: 30}   # after every epoch (optional)
/// eval: {data: test, every: 10}   # validation loss and perplexity every 10 steps (optional)
/// early_stopping: {patience: 3}   # stop after 3 evaluations without a better loss (optional)
/// gradient_checkpointing: false   # true: recompute activations in the backward (less memory)
/// mode: torch
/// ```
///
/// A run that is interrupted (Ctrl-C, a crash, a kill) resumes from its last checkpoint the
/// next time the notebook runs, and ends with the same adapter as an uninterrupted run.
public enum TrainStep: Step {
    public static let name = "train"
    public static func dataflow(_ p: Parameters) -> StepDataflow { StepDataflow(reads: Set([.model, .adapter, .hybrid, .deployment, .dataset(p.data)] + (p.eval.map { [SessionSlot.dataset($0.data)] } ?? [])), writes: [.adapter]) }
    public static let summary = "fine-tune the LoRA adapter (AdamW, schedule, accumulation, clipping, checkpoints)"

    public struct EpochGeneration: Codable, Equatable, Sendable {
        public var prompts: [String]
        public var maxTokens: Int
        public var chat: Bool
        /// Question + end-of-text, as the Q&A rows are (default: when the data set is Q&A).
        public var qa: Bool?

        enum CodingKeys: String, CodingKey, CaseIterable { case prompts, maxTokens = "max_tokens", chat, qa }

        public init(from decoder: Decoder) throws {
            try decoder.rejectUnknownKeys(CodingKeys.self)
            let c = try decoder.container(keyedBy: CodingKeys.self)
            prompts = try c.decode([String].self, forKey: .prompts)
            maxTokens = try c.decodeIfPresent(Int.self, forKey: .maxTokens) ?? 30
            chat = try c.decodeIfPresent(Bool.self, forKey: .chat) ?? false
            qa = try c.decodeIfPresent(Bool.self, forKey: .qa)
        }
    }

    /// `eval`: a data set loaded by load_data, scored every `every` optimizer steps (and at the end).
    public struct Validation: Codable, Equatable, Sendable {
        public var data: String
        public var every: Int
        public var batchSize: Int?

        enum CodingKeys: String, CodingKey, CaseIterable { case data, every, batchSize = "batch_size" }

        public init(from decoder: Decoder) throws {
            try decoder.rejectUnknownKeys(CodingKeys.self)
            let c = try decoder.container(keyedBy: CodingKeys.self)
            data = try c.decode(String.self, forKey: .data)
            every = try c.decode(Int.self, forKey: .every)
            batchSize = try c.decodeIfPresent(Int.self, forKey: .batchSize)
        }
    }

    /// `early_stopping`: stop when `patience` evaluations in a row have not lowered the best
    /// validation loss by more than `min_delta`.
    public struct EarlyStopping: Codable, Equatable, Sendable {
        public var patience: Int
        public var minDelta: Double

        enum CodingKeys: String, CodingKey, CaseIterable { case patience, minDelta = "min_delta" }

        public init(from decoder: Decoder) throws {
            try decoder.rejectUnknownKeys(CodingKeys.self)
            let c = try decoder.container(keyedBy: CodingKeys.self)
            patience = try c.decode(Int.self, forKey: .patience)
            minDelta = try c.decodeIfPresent(Double.self, forKey: .minDelta) ?? 0
        }
    }

    /// One validation: after optimizer step `step`.
    struct ValidationRecord: Codable, Equatable {
        var step: Int
        var loss: Double
        var perplexity: Double
    }

    public struct Parameters: StepParameters {
        public enum Keys: String, CodingKey, CaseIterable {
            case data, epochs, batchSize = "batch_size", learningRate = "learning_rate", schedule, warmupSteps = "warmup_steps"
            case weightDecay = "weight_decay", gradientAccumulation = "gradient_accumulation", maxGradNorm = "max_grad_norm"
            case maxLength = "max_length", padding, seed, shuffle, checkpointEvery = "checkpoint_every", generate, mode
            case server, tokenFile = "token_file", productProtocol = "protocol", eval, earlyStopping = "early_stopping"
            case gradientCheckpointing = "gradient_checkpointing"
        }
        public typealias CodingKeys = Keys
        public var eval: Validation?
        /// Recompute each block's activations in the backward instead of keeping them.
        public var gradientCheckpointing: Bool
        public var earlyStopping: EarlyStopping?
        public var data: String
        public var epochs: Int
        public var batchSize: Int
        public var learningRate: Double
        public var schedule: LearningRateSchedule.Kind
        public var warmupSteps: Int
        public var weightDecay: Double
        public var gradientAccumulation: Int
        public var maxGradNorm: Double?
        public var maxLength: Int
        public var padding: CausalLMDataOptions.Padding
        public var seed: Int
        public var shuffle: Bool
        public var checkpointEvery: Int
        public var generate: EpochGeneration?
        public var mode: ExecutionMode
        /// `mode: remote`: the server's URL, or `local`; and its token file.
        public var server: String?
        public var tokenFile: String?
        /// `execute`/`remote`: `masked` (offline pads, online products that follow the tokens) or `he`.
        public var productProtocol: ProductProtocol

        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: Keys.self)
            productProtocol = try c.decodeChoice(ProductProtocol.self, forKey: .productProtocol) ?? .masked
            eval = try c.decodeIfPresent(Validation.self, forKey: .eval)
            gradientCheckpointing = try c.decodeIfPresent(Bool.self, forKey: .gradientCheckpointing) ?? false
            earlyStopping = try c.decodeIfPresent(EarlyStopping.self, forKey: .earlyStopping)
            data = try c.decodeIfPresent(String.self, forKey: .data) ?? "train"
            epochs = try c.decodeIfPresent(Int.self, forKey: .epochs) ?? 1
            batchSize = try c.decodeIfPresent(Int.self, forKey: .batchSize) ?? 4
            learningRate = try c.decode(Double.self, forKey: .learningRate)
            schedule = try c.decodeChoice(LearningRateSchedule.Kind.self, forKey: .schedule) ?? .linear
            warmupSteps = try c.decodeIfPresent(Int.self, forKey: .warmupSteps) ?? 0
            weightDecay = try c.decodeIfPresent(Double.self, forKey: .weightDecay) ?? 0.01
            gradientAccumulation = try c.decodeIfPresent(Int.self, forKey: .gradientAccumulation) ?? 1
            maxGradNorm = try c.decodeIfPresent(Double.self, forKey: .maxGradNorm)
            maxLength = try c.decodeIfPresent(Int.self, forKey: .maxLength) ?? 128
            padding = try c.decodeChoice(CausalLMDataOptions.Padding.self, forKey: .padding) ?? .maxLength
            seed = try c.decodeIfPresent(Int.self, forKey: .seed) ?? 0
            shuffle = try c.decodeIfPresent(Bool.self, forKey: .shuffle) ?? true
            checkpointEvery = try c.decodeIfPresent(Int.self, forKey: .checkpointEvery) ?? 20
            generate = try c.decodeIfPresent(EpochGeneration.self, forKey: .generate)
            mode = try c.decodeChoice(ExecutionMode.self, forKey: .mode) ?? .torch
            server = try c.decodeIfPresent(String.self, forKey: .server)
            tokenFile = try c.decodeIfPresent(String.self, forKey: .tokenFile)
        }

        public func validate() throws(ParameterError) {
            if data.isEmpty { throw ParameterError("data", "must name a data set loaded by load_data") }
            if !(1...100_000).contains(epochs) { throw ParameterError("epochs", "\(epochs) is out of range 1...100000") }
            if batchSize < 1 { throw ParameterError("batch_size", "\(batchSize) must be ≥ 1") }
            if !(learningRate > 0 && learningRate.isFinite) { throw ParameterError("learning_rate", "\(learningRate) must be a positive number") }
            if warmupSteps < 0 { throw ParameterError("warmup_steps", "\(warmupSteps) must be ≥ 0") }
            if !(weightDecay >= 0 && weightDecay.isFinite) { throw ParameterError("weight_decay", "\(weightDecay) must be ≥ 0") }
            if gradientAccumulation < 1 { throw ParameterError("gradient_accumulation", "\(gradientAccumulation) must be ≥ 1") }
            if let m = maxGradNorm, !(m > 0 && m.isFinite) { throw ParameterError("max_grad_norm", "\(m) must be a positive number") }
            if maxLength < 2 { throw ParameterError("max_length", "\(maxLength) must be ≥ 2") }
            if seed < 0 { throw ParameterError("seed", "\(seed) must be ≥ 0") }
            if checkpointEvery < 1 { throw ParameterError("checkpoint_every", "\(checkpointEvery) must be ≥ 1") }
            try RemoteTarget.validate(server: server, mode: mode)
            if let e = eval {
                if e.data.isEmpty { throw ParameterError("eval.data", "must name a data set loaded by load_data") }
                if e.every < 1 { throw ParameterError("eval.every", "\(e.every) must be ≥ 1") }
                if let b = e.batchSize, b < 1 { throw ParameterError("eval.batch_size", "\(b) must be ≥ 1") }
            }
            if let s = earlyStopping {
                if eval == nil { throw ParameterError("early_stopping", "needs eval: {data, every} to know when the validation loss stops improving") }
                if s.patience < 1 { throw ParameterError("early_stopping.patience", "\(s.patience) must be ≥ 1") }
                if !(s.minDelta >= 0 && s.minDelta.isFinite) { throw ParameterError("early_stopping.min_delta", "\(s.minDelta) must be ≥ 0") }
            }
            if let g = generate {
                if g.prompts.isEmpty { throw ParameterError("generate.prompts", "give at least one prompt") }
                if !(1...1024).contains(g.maxTokens) { throw ParameterError("generate.max_tokens", "\(g.maxTokens) is out of range 1...1024") }
            }
        }
    }

    /// What the per-epoch generations are stored as beside the checkpoint.
    struct EpochSample: Codable, Equatable {
        var epoch: Int
        var prompt: String
        var completion: String
    }

    public static func run(_ p: Parameters, context: StepContext) throws {
        let (loaded, model) = try context.session.trainableModel()
        guard let start = try context.session.adapter(), let reference = context.session.state.adapter else { throw SessionError.noAdapter }
        let data = try RowSettings(maxLength: p.maxLength, padding: p.padding).data(p.data, key: "data", context: context, loaded: loaded)
        let validationData = try p.eval.map { try RowSettings(maxLength: p.maxLength, padding: .longest).data($0.data, key: "eval.data", context: context, loaded: loaded) }
        // Train a copy: the session's adapter of the previous cell stays as it was.
        let adapter = LoRAAdapter(config: start.config, layers: start.layers)
        let settings = TrainingSettings(
            epochs: p.epochs, batchSize: p.batchSize, gradientAccumulation: p.gradientAccumulation, learningRate: p.learningRate,
            schedule: p.schedule, warmupSteps: p.warmupSteps, weightDecay: p.weightDecay, maxGradientNorm: p.maxGradNorm,
            seed: UInt64(p.seed), shuffle: p.shuffle,
            // Quantized modes: one call per remote layer per step (an `he` call fills its
            // ciphertexts; a masked call makes one request instead of several).
            fuseMicroBatches: p.mode != .torch, gradientCheckpointing: p.gradientCheckpointing)
        let run: LoRATrainingRun
        do { run = try LoRATrainingRun(model: model, adapter: adapter, data: data, settings: settings) } catch {
            switch error {
            case .invalidSettings(let key, _): throw StepFailure(key: key, error.description)
            default: throw StepFailure(key: "data", "\(context.session.state.dataset(p.data)?.displayPath ?? p.data): \(error.description)")
            }
        }
        // Resume from this very computation's checkpoint, if an earlier run left one.
        let checkpoints = context.checkpointDirectory
        let checkpointURL = checkpoints.appendingPathComponent("checkpoint.safetensors")
        do { run.backend = try context.backend(p.mode, server: p.server, tokenFile: p.tokenFile, protocol: p.productProtocol) } catch let failure as StepFailure {
            guard FileManager.default.fileExists(atPath: checkpointURL.path) else { throw failure }
            throw StepFailure(key: failure.key, "\(failure.message); this run's checkpoint is kept at \(context.display(checkpointURL)): the next run, with any server of this deployment, resumes from it")
        }
        defer { (run.backend as? EncryptedLinearBackend)?.releaseMasks() }

        let samplesURL = checkpoints.appendingPathComponent("generations.json")
        let validationURL = checkpoints.appendingPathComponent("validation.json")
        var samples: [EpochSample] = []
        var validations: [ValidationRecord] = []
        var resumedAt = 0
        if FileManager.default.fileExists(atPath: checkpointURL.path) {
            do {
                try run.restoreCheckpoint(from: checkpointURL)
                resumedAt = run.position.step
                samples = (try? JSONDecoder().decode([EpochSample].self, from: Data(contentsOf: samplesURL)))?
                    .filter { $0.epoch < resumedAt / run.stepsPerEpoch } ?? []
                validations = (try? JSONDecoder().decode([ValidationRecord].self, from: Data(contentsOf: validationURL)))?
                    .filter { $0.step <= resumedAt } ?? []
                context.emit(.text("Resumed from the checkpoint at step \(resumedAt) of \(run.totalSteps) (\(context.display(checkpointURL)))."))
                FileHandle.standardError.write(Data("  train: resuming at step \(resumedAt) of \(run.totalSteps)\n".utf8))
            } catch {
                context.emit(.warning("Ignored a checkpoint that does not fit this run (\(error)); training from the start."))
            }
        }
        var lastCheckpoint: Int? = resumedAt > 0 ? resumedAt : nil
        let killAfter = ProcessInfo.processInfo.environment["NB_TEST_KILL_AFTER_STEP"].flatMap(Int.init)

        func saveCheckpoint() throws {
            do { try run.saveCheckpoint(to: checkpointURL) } catch { throw StepFailure(error.description) }
            lastCheckpoint = run.position.step
        }
        func generateSamples(epoch: Int) throws {
            guard let g = p.generate else { return }
            let stops = loaded.stopTokens
            let qa = g.qa ?? (!g.chat && context.session.state.dataset(p.data)?.format == .qa)
            func complete(_ prompt: String, _ generate: ([Int]) -> [Int]) {
                let tokens = generate(loaded.encodePrompt(prompt, chat: g.chat, qa: qa))
                samples.append(EpochSample(epoch: epoch, prompt: prompt, completion: loaded.tokenizer.decode(tokens.filter { !stops.contains($0) })))
            }
            if let backend = run.backend {
                // The remote layers run quantized: the adapter joins through its hooks (eval mode, no dropout).
                var hooks = adapter.hooks()
                hooks.backend = backend
                for prompt in g.prompts {
                    complete(prompt) { generateThroughHooks(model: model, prompt: $0, maxTokens: g.maxTokens, hooks: hooks, stopTokens: stops) }
                }
            } else {
                adapter.withMerged(into: model) {
                    for prompt in g.prompts {
                        complete(prompt) { loaded.model.generate(GenerationRequest(prompt: $0, maxTokens: g.maxTokens, stopTokens: stops)).tokens }
                    }
                }
            }
            do {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                try AtomicFile.write(try encoder.encode(samples), to: samplesURL)
            }
        }

        /// The validation loss with the adapter as trained so far (no dropout, no random numbers
        /// drawn: a resumed run continues bit for bit), recorded beside the checkpoint.
        func validate() throws {
            guard let e = p.eval, let validationData, validations.last?.step != run.position.step else { return }
            let result: EvaluationResult
            do {
                result = try LoRATrainingRun.evaluate(model: model, adapter: adapter, data: validationData, batchSize: e.batchSize ?? p.batchSize, backend: run.backend)
            } catch { throw StepFailure(key: "eval.data", error.description) }
            validations.append(ValidationRecord(step: run.position.step, loss: result.loss, perplexity: result.perplexity))
            FileHandle.standardError.write(Data(String(format: "  train: step %d validation loss %.4f (perplexity %.2f)\n", run.position.step, result.loss, result.perplexity).utf8))
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            try? AtomicFile.write(try encoder.encode(validations), to: validationURL)
        }
        /// Whether `patience` evaluations in a row have not beaten the best before them by `min_delta`.
        func shouldStop() -> Bool {
            guard let s = p.earlyStopping, validations.count > s.patience else { return false }
            let before = validations.dropLast(s.patience).map(\.loss).min()!
            return validations.suffix(s.patience).allSatisfy { $0.loss > before - s.minDelta }
        }

        let progress = context.progress("train", total: run.totalSteps)
        progress.update(run.position.step)
        let encrypted = run.backend as? EncryptedLinearBackend
        let statsAtStart = encrypted?.statistics ?? FHEStatistics()
        let firstStep = run.position.step
        let started = ProcessInfo.processInfo.systemUptime
        func emitEncrypted() {
            FHEReport.emit(run.backend, stats: (encrypted?.statistics ?? FHEStatistics()).since(statsAtStart), steps: run.position.step - firstStep,
                           stepName: "step", seconds: ProcessInfo.processInfo.systemUptime - started, context: context)
        }
        var stoppedEarly: Int?
        // A run resumed after its last evaluation has already met its stopping rule.
        if shouldStop() { stoppedEarly = run.position.step }
        while !run.isFinished && stoppedEarly == nil {
            let record: TrainingStepRecord
            do {
                record = try run.step()
            } catch {
                let kept = lastCheckpoint.map { "the last good checkpoint (step \($0)) is kept at \(context.display(checkpointURL))" }
                    ?? "no checkpoint was written yet"
                progress.finish()
                let key: String? = { if case .nonFiniteLoss = error { return "learning_rate" }; if case .nonFiniteGradient = error { return "learning_rate" }; return nil }()
                emitSummary(run, resumedAt: resumedAt, samples: samples, validations: validations, context: context)
                throw StepFailure(key: key, "\(error.description); \(kept)")
            }
            do { try FHEReport.check(run.backend) } catch let failure as StepFailure {
                let kept = lastCheckpoint.map { "the last good checkpoint (step \($0)) is kept at \(context.display(checkpointURL)); run the cell again (with any server of this deployment) to resume from it" }
                    ?? "no checkpoint was written yet"
                progress.finish()
                emitSummary(run, resumedAt: resumedAt, samples: samples, validations: validations, context: context)
                throw StepFailure(key: failure.key, "\(failure.message); \(kept)")
            }
            let step = run.position.step
            progress.update(step, metrics: String(format: "loss %.4f  lr %.2e  %.0f tok/s", record.loss, record.learningRate,
                                                  Double(record.tokens) / max(record.seconds, 1e-9)))
            let endOfEpoch = step % run.stepsPerEpoch == 0
            if endOfEpoch { try generateSamples(epoch: step / run.stepsPerEpoch - 1) }
            if let e = p.eval, step % e.every == 0 || run.isFinished { try validate() }
            let stopping = shouldStop()
            if step % p.checkpointEvery == 0 || endOfEpoch || run.isFinished || stopping { try saveCheckpoint() }
            if stopping {
                stoppedEarly = step
                break
            }
            if let killAfter, step == killAfter {
                // Fault injection for the resume tests: die as a crash would, after the checkpoint.
                kill(getpid(), SIGKILL)
            }
        }
        progress.finish()
        try context.session.register(adapter, in: context.adapterStore, trainedSteps: reference.trainedSteps + run.position.step, origin: "train")
        if let stoppedEarly, let s = p.earlyStopping {
            let best = validations.min { $0.loss < $1.loss }!
            context.emit(.text("Stopped early at step \(stoppedEarly) of \(run.totalSteps): \(s.patience) evaluation\(s.patience == 1 ? "" : "s") without a validation loss below \(Format.number(best.loss, decimals: 4)) (step \(best.step)). The adapter is the one at step \(stoppedEarly)."))
        }
        emitSummary(run, resumedAt: resumedAt, samples: samples, validations: validations, context: context)
        emitEncrypted()
        // The trained adapter is in the session (and its snapshot): the checkpoint is done.
        try? FileManager.default.removeItem(at: checkpoints)
    }

    static func emitSummary(_ run: LoRATrainingRun, resumedAt: Int, samples: [EpochSample], validations: [ValidationRecord] = [], context: StepContext) {
        let history = run.position.history
        guard !history.isEmpty else { return }
        let seconds = history.reduce(0) { $0 + $1.seconds }, tokens = history.reduce(0) { $0 + $1.tokens }
        let measured = history.filter { $0.step > resumedAt }
        let measuredSeconds = measured.reduce(0) { $0 + $1.seconds }
        context.emit(.metrics([
            Metric("steps", "\(history.count) of \(run.totalSteps)"),
            Metric("epochs", "\(Format.number(Double(history.count) / Double(run.stepsPerEpoch), decimals: 1)) of \(run.settings.epochs)"),
            Metric("examples", String(run.data.examples.count)),
            Metric("first loss", Format.number(Double(history.first!.loss), decimals: 4)),
            Metric("final loss", Format.number(Double(history.last!.loss), decimals: 4)),
            Metric("tokens/s", measuredSeconds > 0 ? Format.number(Double(measured.reduce(0) { $0 + $1.tokens }) / measuredSeconds, decimals: 0) : "–"),
            Metric("time per step", Format.duration(measuredSeconds / Double(max(measured.count, 1)))),
            Metric("training time", Format.duration(seconds)),
            Metric("tokens seen", Format.integer(tokens)),
        ] + (validations.min { $0.loss < $1.loss }.map { best in
            [Metric("best validation", "step \(best.step): loss \(Format.number(best.loss, decimals: 4)), perplexity \(Format.number(best.perplexity, decimals: 3))"),
             Metric("last validation", "step \(validations.last!.step): loss \(Format.number(validations.last!.loss, decimals: 4))")]
        } ?? [])))
        var rows: [[String]] = []
        var epochMeans: [LineChart.Point] = []
        for epoch in 0..<run.settings.epochs {
            let steps = history.filter { $0.epoch == epoch }
            guard !steps.isEmpty else { continue }
            let sum = steps.reduce(Float(0)) { $0 + $1.loss }
            let rate = Double(steps.reduce(0) { $0 + $1.tokens }) / max(steps.reduce(0) { $0 + $1.seconds }, 1e-9)
            epochMeans.append(.init(Double(steps.last!.step), Double(sum) / Double(steps.count)))
            let text = samples.filter { $0.epoch == epoch }.map { "\($0.prompt) → \($0.completion)" }.joined(separator: "\n")
            rows.append([String(epoch + 1), String(steps.count), Format.number(Double(sum), decimals: 3),
                         Format.number(Double(sum) / Double(steps.count), decimals: 4), String(format: "%.3g", steps.last!.learningRate),
                         Format.number(steps.map(\.gradientNorm).max() ?? 0, decimals: 3), Format.number(rate, decimals: 0), text])
        }
        context.emit(.table(OutputTable(title: "Per epoch (loss summed over the epoch's steps, as the use case prints it)",
                                        columns: ["epoch", "steps", "loss sum", "mean loss", "lr at end", "max grad norm", "tokens/s", "generation"],
                                        rows: rows)))
        context.emit(.chart(LineChart(
            title: "Training loss", xLabel: "optimizer step", yLabel: "cross-entropy (nats)", yScale: .linear,
            series: [LineChart.Series(name: "step", points: history.map { .init(Double($0.step), Double($0.loss)) }),
                     LineChart.Series(name: "epoch mean", points: epochMeans)]
                + (validations.isEmpty ? [] : [LineChart.Series(name: "validation", points: validations.map { .init(Double($0.step), $0.loss) })]))))
        context.emit(.chart(LineChart(
            title: "Learning rate and gradient norm", xLabel: "optimizer step", yLabel: "value", yScale: .log,
            series: [LineChart.Series(name: "learning rate", points: history.filter { $0.learningRate > 0 }.map { .init(Double($0.step), $0.learningRate) }),
                     LineChart.Series(name: "grad norm (before clipping)", points: history.filter { $0.gradientNorm > 0 }.map { .init(Double($0.step), $0.gradientNorm) })])))
    }
}

/// `nb evaluate`: the loss and perplexity of the session's model (with its adapter, unless
/// `adapter: false`) on a loaded data set, over the tokens its labels count.
///
/// ```nb evaluate
/// data: train
/// batch_size: 4
/// ```
public enum EvaluateStep: Step {
    public static let name = "evaluate"
    public static func dataflow(_ p: Parameters) -> StepDataflow { StepDataflow(reads: [.model, .adapter, .hybrid, .deployment, .dataset(p.data)], writes: []) }
    public static let summary = "loss and perplexity of the model (with or without its adapter) on a data set"

    public struct Parameters: StepParameters {
        public enum Keys: String, CodingKey, CaseIterable {
            case data, batchSize = "batch_size", maxLength = "max_length", padding, adapter, mode, server, tokenFile = "token_file"
            case productProtocol = "protocol"
        }
        public typealias CodingKeys = Keys
        public var data: String
        public var batchSize: Int
        public var maxLength: Int
        public var padding: CausalLMDataOptions.Padding
        public var adapter: Bool
        public var mode: ExecutionMode
        public var server: String?
        public var tokenFile: String?
        public var productProtocol: ProductProtocol

        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: Keys.self)
            productProtocol = try c.decodeChoice(ProductProtocol.self, forKey: .productProtocol) ?? .masked
            server = try c.decodeIfPresent(String.self, forKey: .server)
            tokenFile = try c.decodeIfPresent(String.self, forKey: .tokenFile)
            data = try c.decodeIfPresent(String.self, forKey: .data) ?? "train"
            batchSize = try c.decodeIfPresent(Int.self, forKey: .batchSize) ?? 4
            maxLength = try c.decodeIfPresent(Int.self, forKey: .maxLength) ?? 128
            padding = try c.decodeChoice(CausalLMDataOptions.Padding.self, forKey: .padding) ?? .longest
            adapter = try c.decodeIfPresent(Bool.self, forKey: .adapter) ?? true
            mode = try c.decodeChoice(ExecutionMode.self, forKey: .mode) ?? .torch
        }

        public func validate() throws(ParameterError) {
            if data.isEmpty { throw ParameterError("data", "must name a data set loaded by load_data") }
            if batchSize < 1 { throw ParameterError("batch_size", "\(batchSize) must be ≥ 1") }
            if maxLength < 2 { throw ParameterError("max_length", "\(maxLength) must be ≥ 2") }
            try RemoteTarget.validate(server: server, mode: mode)
        }
    }

    public static func run(_ p: Parameters, context: StepContext) throws {
        let (loaded, model) = try context.session.trainableModel()
        let data = try RowSettings(maxLength: p.maxLength, padding: p.padding).data(p.data, key: "data", context: context, loaded: loaded)
        let adapter = p.adapter ? try context.session.adapter() : nil
        let backend = try context.backend(p.mode, server: p.server, tokenFile: p.tokenFile, protocol: p.productProtocol)
        defer { (backend as? EncryptedLinearBackend)?.releaseMasks() }
        let progress = context.progress("evaluate", total: data.batchesPerEpoch(batchSize: p.batchSize))
        let started = Date()
        let statsAtStart = (backend as? EncryptedLinearBackend)?.statistics ?? FHEStatistics()
        let result: EvaluationResult
        do {
            result = try LoRATrainingRun.evaluate(model: model, adapter: adapter, data: data, batchSize: p.batchSize, backend: backend) { done, _ in progress.update(done) }
        } catch {
            throw StepFailure(key: "data", error.description)
        }
        progress.finish()
        try FHEReport.check(backend)
        let what = adapter == nil ? "base model" : "with the adapter (\(context.session.state.adapter?.trainedSteps ?? 0) steps trained)"
        context.emit(.metrics([
            Metric("data", "\(p.data) (\(result.examples) examples)"),
            Metric("model", "\(context.session.state.model?.name ?? "") — \(what)"),
            Metric("loss", Format.number(result.loss, decimals: 4)),
            Metric("perplexity", Format.number(result.perplexity, decimals: 3)),
            Metric("tokens scored", Format.integer(result.tokens)),
            Metric("mode", p.mode == .torch ? "torch (float)" : "\(p.mode.rawValue) (\(context.session.state.hybrid?.scheme.description ?? ""))"),
            Metric("time", Format.duration(Date().timeIntervalSince(started))),
        ]))
        if let encrypted = backend as? EncryptedLinearBackend {
            FHEReport.emit(encrypted, stats: encrypted.statistics.since(statsAtStart), steps: data.batchesPerEpoch(batchSize: p.batchSize),
                           stepName: "batch", seconds: Date().timeIntervalSince(started), context: context)
        }
    }
}
