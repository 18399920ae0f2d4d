import FHE
import Foundation

/// The high-level LoRA trainer: a model, a LoRA configuration, AdamW with a schedule, the
/// hybrid split and its quantization, training with checkpoints, evaluation and saving —
/// behind a few calls, the way Concrete ML's `LoraTrainer` wraps its pieces.
///
/// ```swift
/// let trainer = try LoraTrainer(model: model, tokenizer: tokenizer,
///                               lora: LoRAConfig(rank: 8, alpha: 32, dropout: 0.01, targets: .allLinear),
///                               settings: TrainingSettings(epochs: 10, batchSize: 4, learningRate: 2e-4, schedule: .linear,
///                                                          warmupSteps: 10, maxGradientNorm: 1))
/// try trainer.compile(inputset: data, nBits: 8)                   // remote layers, calibration, DTok-SC
/// let before = try trainer.evaluate(test)                          // float (torch)
/// try trainer.train(data, mode: .disable)                          // 8-bit integers; .execute: encrypted
/// let after = try trainer.evaluate(test, mode: .disable)
/// try trainer.save(to: adapterDirectory)                           // PEFT layout
/// try trainer.saveDeployment(to: deploymentDirectory, name: "x")   // server/ and client/
/// ```
///
/// With ``checkpointURL`` set, ``train(_:epochs:mode:onStep:)`` writes a checkpoint every
/// ``checkpointEvery`` steps and resumes from it when called again after an interruption,
/// ending with the same adapter as an uninterrupted run.
public final class LoraTrainer {
    /// Where the remote layers' products run (see the notebook modes).
    /// `torch`, `disable` or `execute` (`remote` needs a deployment's server: use the notebook's steps).
    public typealias Mode = ExecutionMode

    /// How `execute` computes its products (``ProductProtocol``; the masked protocol keeps its
    /// pads in ``maskStore``, or in a store of this process's temporary directory).
    public var productProtocol: ProductProtocol = .masked
    public var maskStore: MaskStore?

    public let model: TrainableModel
    public let tokenizer: BPETokenizer
    /// The adapter being trained (its A and B change with every step).
    public private(set) var adapter: LoRAAdapter
    public var settings: TrainingSettings
    /// The split and quantization fixed by ``compile(inputset:nBits:scheme:remoteModules:localFirstLayers:calibrationBatches:)``.
    public private(set) var plan: HybridPlan?
    /// Every optimizer step trained so far, in order.
    public private(set) var history: [TrainingStepRecord] = []
    /// The client's key for `execute` (made from the OS CSPRNG unless given).
    public var keyring: Keyring
    /// Where ``train(_:epochs:mode:onStep:)`` checkpoints (nil: no checkpoints).
    public var checkpointURL: URL?
    public var checkpointEvery = 20
    /// Validation during ``train(_:epochs:mode:onStep:)``: (step, loss) every `every` steps on
    /// `data` (and at the end), kept beside the checkpoint so a resumed run keeps its curve.
    public var validation: (data: CausalLMData, every: Int)?
    /// The validations of the last ``train(_:epochs:mode:onStep:)``, in step order.
    public private(set) var validationHistory: [ValidationPoint] = []
    /// Stop when this many validations in a row have not lowered the best loss before them.
    public var earlyStoppingPatience: Int?
    /// The step training stopped at early, if it did.
    public private(set) var stoppedEarlyAt: Int?
    private var backends: [Mode: LinearBackend] = [:]

    public init(model: TrainableModel, tokenizer: BPETokenizer, lora: LoRAConfig, settings: TrainingSettings,
                keyring: Keyring = Keyring()) throws {
        let adapter = try LoRAAdapter(config: lora, modules: model.linearModules)
        (self.model, self.tokenizer, self.adapter, self.settings, self.keyring) = (model, tokenizer, adapter, settings, keyring)
    }

    /// A trainer that continues `adapter` (e.g. one read with ``PEFTAdapter/load(from:modules:seed:)``).
    public init(model: TrainableModel, tokenizer: BPETokenizer, adapter: LoRAAdapter, settings: TrainingSettings, keyring: Keyring = Keyring()) {
        (self.model, self.tokenizer, self.adapter, self.settings, self.keyring) = (model, tokenizer, adapter, settings, keyring)
    }

    /// Tokenized rows of `dataset` with this trainer's tokenizer.
    /// Chat examples are rendered with `chatTemplate` (the model's).
    public func data(_ dataset: Dataset, maxLength: Int = 128, padding: CausalLMDataOptions.Padding = .longest, chatTemplate: ChatTemplate? = nil,
                     path: String = "data") throws -> CausalLMData {
        try CausalLMData(dataset: dataset, tokenizer: tokenizer, options: CausalLMDataOptions(maxLength: maxLength, padding: padding),
                         contextLength: model.contextLength, chatTemplate: chatTemplate, path: path)
    }

    /// Fixes the hybrid model: which linear layers the server holds (all of them unless
    /// `remoteModules` names some; the first `localFirstLayers` blocks keep their
    /// shared-input projections local), and their quantization (`scheme` at `nBits`),
    /// calibrated by a float forward and backward over `calibrationBatches` batches of
    /// `inputset`.
    @discardableResult
    public func compile(inputset: CausalLMData, nBits: Int = 8, scheme: String = "DTok-SC", remoteModules: [String]? = nil,
                        localFirstLayers: Int = 0, calibrationBatches: Int = 2) throws -> HybridPlan {
        guard let s = QuantizationScheme(named: scheme, nBits: nBits) else {
            throw TrainingError.invalidSettings(key: "scheme", message: "'\(scheme)' is not one of \(QuantizationScheme.names.joined(separator: ", "))")
        }
        try s.validate()
        var remote = model.linearModules
        if let names = remoteModules { remote = remote.filter { names.contains($0.name) } }
        remote.removeAll { $0.layer < localFirstLayers && HybridPlan.sharedInputKinds.contains($0.kind) }
        let names = remote.map(\.name)
        let ranges = try HybridPlan.calibrate(model: model, adapter: adapter, data: inputset, modules: names, batches: calibrationBatches,
                                              batchSize: settings.batchSize)
        let plan = HybridPlan(scheme: s, remoteModules: names, ranges: ranges)
        _ = try QuantizedLinearBackend(plan: plan, model: model)  // the scheme fits these weights
        self.plan = plan
        backends = [:]
        return plan
    }

    /// The backend of `mode` (nil for `torch`).
    public func backend(_ mode: Mode) throws -> LinearBackend? {
        if mode == .torch { return nil }
        guard let plan else { throw TrainingError.invalidSettings(key: "mode", message: "mode \(mode.rawValue) needs compile(inputset:) first") }
        if let b = backends[mode] { return b }
        if mode == .remote { throw TrainingError.invalidSettings(key: "mode", message: "LoraTrainer runs torch, disable or execute; remote goes through a deployment's client (nb train with mode: remote)") }
        var store: MaskStore?
        if mode == .execute && productProtocol == .masked {
            store = try maskStore ?? MaskStore.shared(at: FileManager.default.temporaryDirectory.appendingPathComponent("nb-masks-\(getpid())", isDirectory: true))
        }
        let b: LinearBackend = mode == .disable ? try QuantizedLinearBackend(plan: plan, model: model)
            : try EncryptedLinearBackend(plan: plan, model: model, keyring: keyring, protocol: productProtocol, maskStore: store)
        backends[mode] = b
        return b
    }

    /// Trains for `epochs` (default: the settings') in `mode`; returns this call's steps.
    /// Resumes from ``checkpointURL`` when it holds a checkpoint of this very run.
    @discardableResult
    public func train(_ data: CausalLMData, epochs: Int? = nil, mode: Mode = .disable,
                      onStep: ((TrainingStepRecord, _ totalSteps: Int) throws -> Void)? = nil) throws -> [TrainingStepRecord] {
        var s = settings
        if let epochs { s.epochs = epochs }
        s.fuseMicroBatches = mode != .torch
        let run = try LoRATrainingRun(model: model, adapter: adapter, data: data, settings: s)
        run.backend = try backend(mode)
        if let url = checkpointURL, FileManager.default.fileExists(atPath: url.path) {
            try run.restoreCheckpoint(from: url)
        }
        let validationURL = checkpointURL.map { $0.deletingLastPathComponent().appendingPathComponent("validation.json") }
        validationHistory = []
        stoppedEarlyAt = nil
        if run.position.step > 0, let validationURL, let saved = try? JSONDecoder().decode([ValidationPoint].self, from: Data(contentsOf: validationURL)) {
            validationHistory = saved.filter { $0.step <= run.position.step }
        }
        func validate() throws {
            guard let v = validation, validationHistory.last?.step != run.position.step else { return }
            let r = try LoRATrainingRun.evaluate(model: model, adapter: adapter, data: v.data, batchSize: settings.batchSize, backend: run.backend)
            validationHistory.append(ValidationPoint(step: run.position.step, loss: r.loss))
            if let validationURL { try? AtomicFile.write(try JSONEncoder().encode(validationHistory), to: validationURL) }
        }
        func shouldStop() -> Bool {
            guard let patience = earlyStoppingPatience, validationHistory.count > patience else { return false }
            let before = validationHistory.dropLast(patience).map(\.loss).min()!
            return validationHistory.suffix(patience).allSatisfy { $0.loss >= before }
        }
        var records: [TrainingStepRecord] = []
        while !run.isFinished && !shouldStop() {
            let record = try run.step()
            if let e = run.backend as? EncryptedLinearBackend, let failure = e.failure { throw failure }
            records.append(record)
            if let v = validation, record.step % v.every == 0 || run.isFinished { try validate() }
            if let url = checkpointURL, record.step % checkpointEvery == 0 || run.isFinished || shouldStop() {
                try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
                try run.saveCheckpoint(to: url)
            }
            try onStep?(record, run.totalSteps)
        }
        if !run.isFinished { stoppedEarlyAt = run.position.step }
        history = run.position.history
        if let url = checkpointURL { try? FileManager.default.removeItem(at: url) }
        if let validationURL { try? FileManager.default.removeItem(at: validationURL) }
        return records
    }

    /// Loss and perplexity on `data` (adapter in eval mode: no dropout) in `mode`.
    public func evaluate(_ data: CausalLMData, mode: Mode = .torch, batchSize: Int? = nil, withAdapter: Bool = true) throws -> EvaluationResult {
        try LoRATrainingRun.evaluate(model: model, adapter: withAdapter ? adapter : nil, data: data, batchSize: batchSize ?? settings.batchSize,
                                     backend: try backend(mode))
    }

    /// Greedy continuation of `prompt` (token ids) with the adapter, in `mode`.
    public func generate(_ prompt: [Int], maxTokens: Int, mode: Mode = .torch, stopTokens: Set<Int>? = nil) throws -> [Int] {
        let stops = stopTokens ?? Set([tokenizer.eosTokenID].compactMap { $0 })
        let wasTraining = adapter.isTraining
        adapter.isTraining = false
        defer { adapter.isTraining = wasTraining }
        var hooks = adapter.hooks()
        hooks.backend = try backend(mode)
        return generateThroughHooks(model: model, prompt: prompt, maxTokens: maxTokens, hooks: hooks, stopTokens: stops)
    }

    /// The adapter in the PEFT layout.
    public func save(to directory: URL, baseModelName: String? = nil) throws {
        try PEFTAdapter.save(adapter, to: directory, baseModelName: baseModelName)
    }

    /// Replaces the adapter by one saved with ``save(to:baseModelName:)`` (its seed drives dropout).
    public func loadAdapter(from directory: URL) throws {
        adapter = try PEFTAdapter.load(from: directory, modules: model.linearModules, seed: adapter.config.seed)
        backends = [:]
    }

    /// The deployment (``Deployment``) of the compiled model and this adapter.
    @discardableResult
    public func saveDeployment(to directory: URL, name: String, modelName: String, chatTemplate: ChatTemplate? = nil) throws -> DeploymentSummary {
        guard let plan else { throw TrainingError.invalidSettings(key: "deployment", message: "compile(inputset:) first: the deployment needs the split") }
        return try Deployment.save(to: directory, name: name, modelName: modelName, model: model, tokenizer: tokenizer, chatTemplate: chatTemplate,
                                   plan: plan, adapter: adapter, adapterTrainedSteps: history.count, keyring: keyring)
    }
}

extension HybridPlan {
    /// Kinds whose input is shared with a sibling projection (q/k/v from one norm, gate/up from another).
    public static let sharedInputKinds: Set<LinearModule.Kind> = [.attention, .query, .key, .value, .gate, .up]

    /// The ranges of `modules`' inputs and output gradients over the first `batches` batches
    /// of `data`: float forward and backward passes, the adapter active (a copy: its dropout
    /// stream is not consumed).
    public static func calibrate(model: TrainableModel, adapter: LoRAAdapter?, data: CausalLMData, modules: [String], batches count: Int,
                                 batchSize: Int, progress: ((Int, Int) -> Void)? = nil) throws -> [String: CalibrationRange] {
        let recorder = CalibrationRecorder(modules: modules)
        var hooks = LinearHooks<Float>()
        if let adapter {
            let copy = LoRAAdapter(config: adapter.config, layers: adapter.layers)
            copy.isTraining = true
            hooks = copy.hooks()
        }
        hooks.backend = recorder
        let batches = try data.batches(epoch: 0, batchSize: batchSize, seed: 0, shuffle: false).prefix(count)
        for (i, batch) in batches.enumerated() {
            _ = model.trainingLoss(tokens: batch.tokens, batchSize: batch.rowCount, targets: batch.shiftedTargets, hooks: hooks,
                                   normalizer: nil, backward: true)
            progress?(i + 1, batches.count)
        }
        return recorder.ranges
    }
}

extension MathProblemGenerator {
    /// Rows `question + "\n" + answer + <eos>`, the labels masked over the question (the
    /// seed's evaluation format); problems longer than `maxLength` tokens are cut.
    public static func rows(_ problems: [MathProblem], tokenizer: BPETokenizer, maxLength: Int = 128,
                            padding: CausalLMDataOptions.Padding = .longest) throws -> CausalLMData {
        guard let eos = tokenizer.eosTokenID else { throw BatchingError.noEndOfTextToken }
        let examples = problems.enumerated().map { i, p -> TokenizedExample in
            let q = prompt(p, tokenizer: tokenizer)
            let a = CausalLMData.encode(p.answer, tokenizer, bos: false) + [eos]
            let tokens = Array((q + a).prefix(maxLength))
            let labels = Array(([Int](repeating: CausalLMData.ignoreIndex, count: q.count) + a).prefix(maxLength))
            return TokenizedExample(tokens: tokens, labels: labels, line: i + 1)
        }
        return CausalLMData(examples: examples, options: CausalLMDataOptions(maxLength: maxLength, padding: padding),
                            paddingTokenID: tokenizer.padTokenID ?? eos)
    }

    /// The prompt of a problem: `question + "\n"` (what generation continues).
    public static func prompt(_ p: MathProblem, tokenizer: BPETokenizer) -> [Int] {
        CausalLMData.encode(p.question + "\n", tokenizer, bos: true)
    }
}

/// A validation loss after optimizer step `step`.
public struct ValidationPoint: Codable, Equatable, Sendable {
    public var step: Int
    public var loss: Double
    public var perplexity: Double { Foundation.exp(loss) }
}
