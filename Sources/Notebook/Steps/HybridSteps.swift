import Engine
import Foundation

/// `nb compile_hybrid`: splits the model between client and server and fixes the
/// quantization of the server's (remote) layers, calibrated on training rows.
///
/// ```nb compile_hybrid id=hybrid
/// scheme: DTok-SC              # ST-ST | DTen-ST | DTok-SC, or the explicit keys below
/// n_bits: 8
/// include: all                 # module patterns sent to the server (all frozen linear layers)
/// exclude: []                  # patterns kept on the client
/// local_first_layers: 0        # blocks whose shared-input projections stay local (the seed's n_layers_to_skip_for_backprop)
/// calibration: {data: train, batches: 2, batch_size: 4, max_length: 128}
/// # activations: dynamic-per-token    weights: per-channel    symmetric_activations: false    symmetric_weights: true
/// ```
public enum CompileHybridStep: Step {
    public static let name = "compile_hybrid"
    public static func dataflow(_ p: Parameters) -> StepDataflow { StepDataflow(reads: [.model, .adapter, .deployment, .dataset(p.calibration.data)], writes: [.hybrid]) }
    public static let summary = "choose the remote (server) layers, calibrate, and fix their quantization scheme"

    public struct Calibration: Codable, Equatable, Sendable {
        public var data: String
        public var batches: Int
        public var batchSize: Int
        public var maxLength: Int
        enum CodingKeys: String, CodingKey, CaseIterable { case data, batches, batchSize = "batch_size", maxLength = "max_length" }

        public init(from decoder: Decoder) throws {
            try decoder.rejectUnknownKeys(CodingKeys.self)
            let c = try decoder.container(keyedBy: CodingKeys.self)
            data = try c.decodeIfPresent(String.self, forKey: .data) ?? "train"
            batches = try c.decodeIfPresent(Int.self, forKey: .batches) ?? 2
            batchSize = try c.decodeIfPresent(Int.self, forKey: .batchSize) ?? 4
            maxLength = try c.decodeIfPresent(Int.self, forKey: .maxLength) ?? 128
        }

        init() { (data, batches, batchSize, maxLength) = ("train", 2, 4, 128) }
    }

    public struct Parameters: StepParameters {
        public enum Keys: String, CodingKey, CaseIterable {
            case scheme, nBits = "n_bits", include, exclude, localFirstLayers = "local_first_layers", calibration
            case activations, weights, symmetricActivations = "symmetric_activations", symmetricWeights = "symmetric_weights"
        }
        public typealias CodingKeys = Keys
        public var scheme: String
        public var nBits: Int
        public var include: TargetModulesSpec?
        public var exclude: [String]
        public var localFirstLayers: Int
        public var calibration: Calibration
        public var activations: QuantizationScheme.Activations?
        public var weights: QuantizationScheme.Weights?
        public var symmetricActivations: Bool?
        public var symmetricWeights: Bool?

        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: Keys.self)
            scheme = try c.decodeIfPresent(String.self, forKey: .scheme) ?? "DTok-SC"
            nBits = try c.decodeIfPresent(Int.self, forKey: .nBits) ?? 8
            include = try c.decodeIfPresent(TargetModulesSpec.self, forKey: .include)
            exclude = try c.decodeIfPresent([String].self, forKey: .exclude) ?? []
            localFirstLayers = try c.decodeIfPresent(Int.self, forKey: .localFirstLayers) ?? 0
            calibration = try c.decodeIfPresent(Calibration.self, forKey: .calibration) ?? Calibration()
            activations = try c.decodeChoice(QuantizationScheme.Activations.self, forKey: .activations)
            weights = try c.decodeChoice(QuantizationScheme.Weights.self, forKey: .weights)
            symmetricActivations = try c.decodeIfPresent(Bool.self, forKey: .symmetricActivations)
            symmetricWeights = try c.decodeIfPresent(Bool.self, forKey: .symmetricWeights)
        }

        public func validate() throws(ParameterError) {
            if QuantizationScheme(named: scheme, nBits: 8) == nil {
                throw ParameterError("scheme", "'\(scheme)' is not one of \(QuantizationScheme.names.joined(separator: ", "))")
            }
            if !(2...16).contains(nBits) { throw ParameterError("n_bits", "\(nBits) is out of range 2...16") }
            if localFirstLayers < 0 { throw ParameterError("local_first_layers", "\(localFirstLayers) must be ≥ 0") }
            if calibration.batches < 1 { throw ParameterError("calibration.batches", "\(calibration.batches) must be ≥ 1") }
            if calibration.batchSize < 1 { throw ParameterError("calibration.batch_size", "\(calibration.batchSize) must be ≥ 1") }
            if calibration.maxLength < 2 { throw ParameterError("calibration.max_length", "\(calibration.maxLength) must be ≥ 2") }
        }

        var resolvedScheme: QuantizationScheme {
            var s = QuantizationScheme(named: scheme, nBits: nBits)!
            if let activations { s.activations = activations }
            if let weights { s.weights = weights }
            if let symmetricActivations { s.symmetricActivations = symmetricActivations }
            if let symmetricWeights { s.symmetricWeights = symmetricWeights }
            return s
        }
    }

    /// The ranges of the `modules`' inputs and output gradients over the first `batches`
    /// batches of `data`, from a float forward and backward with the adapter active (its
    /// gradients land in a copy). Returns the ranges and the number of batches seen.
    static func calibrate(model: TrainableModel, adapter: LoRAAdapter?, data: CausalLMData, modules: [String], batches count: Int,
                          batchSize: Int, context: StepContext) throws -> ([String: CalibrationRange], Int) {
        let total = min(count, data.batchesPerEpoch(batchSize: batchSize))
        let progress = context.progress("calibrate", total: total)
        let ranges = try HybridPlan.calibrate(model: model, adapter: adapter, data: data, modules: modules, batches: count, batchSize: batchSize) { done, _ in
            progress.update(done)
        }
        progress.finish()
        return (ranges, total)
    }

    /// Kinds whose input is shared with a sibling projection (q/k/v from one norm, gate/up from another).
    static let sharedInputKinds = HybridPlan.sharedInputKinds

    public static func run(_ p: Parameters, context: StepContext) throws {
        try context.session.requireWholeModel(for: name)
        let (loaded, model) = try context.session.trainableModel()
        let modules = model.linearModules
        var remote = modules
        if let include = p.include {
            guard let targets = include.targets(for: model.architecture) else {
                throw StepFailure(key: "include", "names no modules for a \(model.architecture) model")
            }
            do { remote = try LoRAConfig(targets: targets).resolveTargets(in: modules) } catch {
                throw StepFailure(key: "include", error.describeUnknownTarget(as: "include pattern"))
            }
        }
        for pattern in p.exclude {
            let excluded: [LinearModule]
            do { excluded = try LoRAConfig(targets: LoRATargets(parsing: pattern)).resolveTargets(in: modules) } catch {
                throw StepFailure(key: "exclude", error.describeUnknownTarget(as: "exclude pattern"))
            }
            remote.removeAll { excluded.contains($0) }
        }
        remote.removeAll { $0.layer < p.localFirstLayers && sharedInputKinds.contains($0.kind) }
        if remote.isEmpty { throw StepFailure(key: "include", "no layer is left for the server") }

        // Calibration: float forward and backward over a few batches, the adapter active.
        let data = try RowSettings(maxLength: p.calibration.maxLength, padding: .longest)
            .data(p.calibration.data, key: "calibration", context: context, loaded: loaded)
        let (ranges, calibrated) = try calibrate(model: model, adapter: try context.session.adapter(), data: data,
                                                 modules: remote.map(\.name), batches: p.calibration.batches,
                                                 batchSize: p.calibration.batchSize, context: context)

        let scheme = p.resolvedScheme
        let plan = HybridPlan(scheme: scheme, remoteModules: remote.map(\.name), ranges: ranges)
        let backend: QuantizedLinearBackend
        do { backend = try QuantizedLinearBackend(plan: plan, model: model) } catch { throw StepFailure(key: "scheme", error.description) }
        context.session.state.hybrid = plan

        let local = modules.count - remote.count
        var worstBound = 0.0
        var rows: [[String]] = []
        for m in remote {
            let r = ranges[m.name] ?? CalibrationRange()
            let wq = backend.weightQuantizers(of: m.name) ?? []
            let scales = wq.map(\.scale)
            let input = AffineQuantizer(lo: r.inputLow, hi: r.inputHigh, bits: scheme.nBits, symmetric: scheme.symmetricActivations)
            let inputLevels = max(abs(input.qMin), abs(input.qMax)), weightLevels = wq.map { max(abs($0.qMin), abs($0.qMax)) }.max() ?? 0
            worstBound = max(worstBound, 4 * Double(max(m.inFeatures, m.outFeatures)) * inputLevels * weightLevels)
            if rows.count < 12 {
                rows.append([m.name, "\(m.inFeatures) → \(m.outFeatures)",
                             scales.count == 1 ? String(format: "%.3g", scales[0]) : String(format: "%.3g … %.3g", scales.min() ?? 0, scales.max() ?? 0),
                             r.hasInputs ? String(format: "[%.3g, %.3g]", r.inputLow, r.inputHigh) : "–",
                             r.hasGradients ? String(format: "[%.3g, %.3g]", r.gradientLow, r.gradientHigh) : "–"])
            }
        }
        if remote.count > 12 { rows.append(["… \(remote.count - 12) more", "", "", "", ""]) }
        context.emit(.metrics([
            Metric("scheme", scheme.description),
            Metric("remote modules", "\(remote.count) on the server, \(local) on the client"),
            Metric("calibration", "\(calibrated) batches of \(p.calibration.data)"),
            Metric("largest integer sum", String(format: "≤ %.3g, exact in double-precision accumulation (< 2^53 ≈ 9.0e15)", worstBound)),
        ]))
        context.emit(.table(OutputTable(title: "Remote modules", columns: ["module", "in → out", "weight scale", "input range (calibration)", "gradient range (calibration)"], rows: rows)))
    }
}

/// `nb weights_report`: how the parameters divide between client and server once the
/// remote layers are on the server, and the share that leaves the client.
public enum WeightsReportStep: Step {
    public static let name = "weights_report"
    public static func dataflow(_ _: Parameters) -> StepDataflow { StepDataflow(reads: [.model, .adapter, .hybrid, .deployment], writes: []) }
    public static let summary = "parameters in total, on the server, on the client and in LoRA"

    public struct Parameters: StepParameters {
        public enum Keys: String, CodingKey, CaseIterable { case none }
        public typealias CodingKeys = Keys
        public init(from decoder: Decoder) throws {}
        public func encode(to encoder: Encoder) throws {}
        public func validate() throws(ParameterError) {}
    }

    public static func run(_ p: Parameters, context: StepContext) throws {
        try context.session.requireWholeModel(for: name)
        let (loaded, model) = try context.session.trainableModel()
        guard let plan = context.session.state.hybrid else { throw SessionError.noHybridPlan("weights_report") }
        let lora = try context.session.adapter()?.parameterCount ?? 0
        let remote = model.linearModules.filter { plan.remoteModules.contains($0.name) }
        let split = ParameterSplit(remote: remote, biased: model.linearLayersHaveBias, modelParameters: loaded.model.parameterCount, loraParameters: lora)
        context.emit(.metrics([
            Metric("total (model + LoRA)", Format.integer(split.total)),
            Metric("on the server", Format.integer(split.server)),
            Metric("on the client", Format.integer(split.client)),
            Metric("LoRA (trained, client)", Format.integer(split.lora)),
            Metric("removed from the client", String(format: "%.2f %%", 100 * split.removedShare)),
        ]))
        context.emit(.text("Parameters before and after removing the server's weights: \(Format.integer(split.total)) → \(Format.integer(split.client)), "
                           + String(format: "%.2f %% removed from the client.", 100 * split.removedShare)))
    }
}

/// `nb quantization_study`: trains the session's adapter from the same start, on the same
/// data, seed and batches, once per precision scheme, and compares the loss curves — the
/// seed's table of FP32 against 8- and 16-bit ST-ST, DTen-ST and DTok-SC.
///
/// ```nb quantization_study
/// schemes: [fp32, ST-ST 8, ST-ST 16, DTen-ST 8, DTen-ST 16, DTok-SC 8]
/// data: train
/// epochs: 2
/// batch_size: 4
/// learning_rate: 2e-3
/// ```
public enum QuantizationStudyStep: Step {
    public static let name = "quantization_study"
    public static func dataflow(_ p: Parameters) -> StepDataflow { StepDataflow(reads: [.model, .adapter, .hybrid, .deployment, .dataset(p.data)], writes: []) }
    public static let summary = "train from the same start under several quantization schemes and compare the losses"

    public struct Parameters: StepParameters {
        public enum Keys: String, CodingKey, CaseIterable {
            case schemes, data, epochs, batchSize = "batch_size", learningRate = "learning_rate", warmupSteps = "warmup_steps"
            case weightDecay = "weight_decay", maxLength = "max_length", padding, seed, calibrationBatches = "calibration_batches"
        }
        public typealias CodingKeys = Keys
        public var schemes: [String]
        public var data: String
        public var epochs: Int
        public var batchSize: Int
        public var learningRate: Double
        public var warmupSteps: Int
        public var weightDecay: Double
        public var maxLength: Int
        public var padding: CausalLMDataOptions.Padding
        public var seed: Int
        public var calibrationBatches: Int

        public static let defaultSchemes = ["fp32", "ST-ST 8", "ST-ST 16", "DTen-ST 8", "DTen-ST 16", "DTok-SC 8"]

        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: Keys.self)
            schemes = try c.decodeIfPresent([String].self, forKey: .schemes) ?? Self.defaultSchemes
            data = try c.decodeIfPresent(String.self, forKey: .data) ?? "train"
            epochs = try c.decodeIfPresent(Int.self, forKey: .epochs) ?? 1
            batchSize = try c.decodeIfPresent(Int.self, forKey: .batchSize) ?? 4
            learningRate = try c.decode(Double.self, forKey: .learningRate)
            warmupSteps = try c.decodeIfPresent(Int.self, forKey: .warmupSteps) ?? 0
            weightDecay = try c.decodeIfPresent(Double.self, forKey: .weightDecay) ?? 0.01
            maxLength = try c.decodeIfPresent(Int.self, forKey: .maxLength) ?? 128
            padding = try c.decodeChoice(CausalLMDataOptions.Padding.self, forKey: .padding) ?? .longest
            seed = try c.decodeIfPresent(Int.self, forKey: .seed) ?? 0
            calibrationBatches = try c.decodeIfPresent(Int.self, forKey: .calibrationBatches) ?? 2
        }

        public func validate() throws(ParameterError) {
            if schemes.isEmpty { throw ParameterError("schemes", "name at least one scheme") }
            for s in schemes where Self.parse(s) == nil && s.lowercased() != "fp32" {
                throw ParameterError("schemes", "'\(s)' is not fp32 or '<\(QuantizationScheme.names.joined(separator: "|"))> <n_bits 2…16>'")
            }
            if !(1...1000).contains(epochs) { throw ParameterError("epochs", "\(epochs) is out of range 1...1000") }
            if batchSize < 1 { throw ParameterError("batch_size", "\(batchSize) must be ≥ 1") }
            if !(learningRate > 0 && learningRate.isFinite) { throw ParameterError("learning_rate", "\(learningRate) must be a positive number") }
            if warmupSteps < 0 { throw ParameterError("warmup_steps", "\(warmupSteps) must be ≥ 0") }
            if maxLength < 2 { throw ParameterError("max_length", "\(maxLength) must be ≥ 2") }
            if seed < 0 { throw ParameterError("seed", "\(seed) must be ≥ 0") }
            if calibrationBatches < 1 { throw ParameterError("calibration_batches", "\(calibrationBatches) must be ≥ 1") }
        }

        /// `DTok-SC 8` → the scheme; nil for fp32 or a bad name.
        static func parse(_ text: String) -> QuantizationScheme? {
            let parts = text.split(separator: " ")
            guard parts.count == 2, let bits = Int(parts[1]), (2...16).contains(bits) else { return nil }
            return QuantizationScheme(named: String(parts[0]), nBits: bits)
        }
    }

    public static func run(_ p: Parameters, context: StepContext) throws {
        try context.session.requireWholeModel(for: name)
        let (loaded, model) = try context.session.trainableModel()
        guard let start = try context.session.adapter() else { throw SessionError.noAdapter }
        let data = try RowSettings(maxLength: p.maxLength, padding: p.padding).data(p.data, key: "data", context: context, loaded: loaded)
        let remote = context.session.state.hybrid?.remoteModules ?? model.linearModules.map(\.name)
        let (ranges, _) = try CompileHybridStep.calibrate(model: model, adapter: start, data: data, modules: remote,
                                                           batches: p.calibrationBatches, batchSize: p.batchSize, context: context)
        let settings = TrainingSettings(epochs: p.epochs, batchSize: p.batchSize, learningRate: p.learningRate, schedule: .linear,
                                        warmupSteps: p.warmupSteps, weightDecay: p.weightDecay, seed: UInt64(p.seed))
        var series: [LineChart.Series] = []
        var rows: [[String]] = []
        var reference: Double?
        for name in p.schemes {
            let adapter = LoRAAdapter(config: start.config, layers: start.layers)  // the same start for every scheme
            let run: LoRATrainingRun
            do { run = try LoRATrainingRun(model: model, adapter: adapter, data: data, settings: settings) } catch { throw StepFailure(key: "data", error.description) }
            let scheme = Parameters.parse(name)
            if let scheme {
                do { run.backend = try QuantizedLinearBackend(plan: HybridPlan(scheme: scheme, remoteModules: remote, ranges: ranges), model: model) }
                catch { throw StepFailure(key: "schemes", "\(name): \(error)") }
            }
            let progress = context.progress(name, total: run.totalSteps)
            var losses: [Double] = []
            var seconds = 0.0
            var failure: String?
            while !run.isFinished {
                do {
                    let r = try run.step()
                    losses.append(Double(r.loss))
                    seconds += r.seconds
                    progress.update(r.step, metrics: String(format: "loss %.4f", r.loss))
                } catch {
                    failure = error.description
                    break
                }
            }
            progress.finish()
            let perEpoch = run.stepsPerEpoch
            let lastEpoch = losses.suffix(perEpoch)
            let final = lastEpoch.isEmpty ? Double.nan : lastEpoch.reduce(0, +) / Double(lastEpoch.count)
            if scheme == nil && reference == nil { reference = final }
            series.append(LineChart.Series(name: name, points: losses.enumerated().filter { $0.element > 0 }.map { .init(Double($0.offset + 1), $0.element) }))
            rows.append([name, scheme?.description ?? "Float32, no quantization", Format.number(losses.first ?? .nan, decimals: 4),
                         Format.number(final, decimals: 4),
                         reference.map { String(format: "%+.1f %%", 100 * (final - $0) / $0) } ?? "–",
                         Format.duration(seconds / Double(max(losses.count, 1))), failure ?? ""])
        }
        context.emit(.chart(LineChart(title: "Training loss by precision scheme (same data, seed and batches)", xLabel: "optimizer step",
                                      yLabel: "cross-entropy (nats, log scale)", yScale: .log, series: series)))
        context.emit(.table(OutputTable(title: "Final loss (mean over the last epoch)",
                                        columns: ["scheme", "quantization", "first loss", "final loss", "vs fp32", "time per step", "stopped"], rows: rows)))
    }
}
