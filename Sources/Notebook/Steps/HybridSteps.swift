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

    /// Kinds whose input is shared with a sibling projection (q/k/v from one norm, gate/up from another).
    static let sharedInputKinds: Set<LinearModule.Kind> = [.attention, .query, .key, .value, .gate, .up]

    public static func run(_ p: Parameters, context: StepContext) throws {
        let (loaded, model) = try context.session.trainableModel()
        let modules = model.linearModules
        var remote = modules
        if let include = p.include {
            guard let targets = include.targets(for: model.architecture) else {
                throw StepFailure(key: "include", "names no modules for a \(model.architecture) model")
            }
            do { remote = try LoRAConfig(targets: targets).resolveTargets(in: modules) } catch { throw StepFailure(key: "include", error.description) }
        }
        for pattern in p.exclude {
            let excluded = (try? LoRAConfig(targets: LoRATargets(parsing: pattern)).resolveTargets(in: modules)) ?? []
            if excluded.isEmpty { throw StepFailure(key: "exclude", "'\(pattern)' matches no linear layer of the model") }
            remote.removeAll { excluded.contains($0) }
        }
        remote.removeAll { $0.layer < p.localFirstLayers && sharedInputKinds.contains($0.kind) }
        if remote.isEmpty { throw StepFailure(key: "include", "no layer is left for the server") }

        // Calibration: float forward and backward over a few batches, the adapter active.
        let data = try RowSettings(maxLength: p.calibration.maxLength, padding: .longest)
            .data(p.calibration.data, key: "calibration", context: context, loaded: loaded)
        let recorder = CalibrationRecorder(modules: remote.map(\.name))
        var hooks = LinearHooks<Float>()
        if let adapter = try context.session.adapter() {
            let copy = LoRAAdapter(config: adapter.config, layers: adapter.layers)  // gradients land in the copy
            copy.isTraining = true
            hooks = copy.hooks()
        }
        hooks.backend = recorder
        let batches = try data.batches(epoch: 0, batchSize: p.calibration.batchSize, seed: 0, shuffle: false).prefix(p.calibration.batches)
        let progress = context.progress("calibrate", total: batches.count)
        for (i, batch) in batches.enumerated() {
            _ = model.trainingLoss(tokens: batch.tokens, batchSize: batch.rowCount, targets: batch.shiftedTargets, hooks: hooks,
                                   normalizer: nil, backward: true)
            progress.update(i + 1)
        }
        progress.finish()

        let scheme = p.resolvedScheme
        let plan = HybridPlan(scheme: scheme, remoteModules: remote.map(\.name), ranges: recorder.ranges)
        let backend: QuantizedLinearBackend
        do { backend = try QuantizedLinearBackend(plan: plan, model: model) } catch { throw StepFailure(key: "scheme", error.description) }
        context.session.state.hybrid = plan

        let local = modules.count - remote.count
        var worstBound = 0.0
        var rows: [[String]] = []
        for m in remote {
            let r = recorder.ranges[m.name] ?? CalibrationRange()
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
            Metric("calibration", "\(batches.count) batches of \(p.calibration.data)"),
            Metric("largest integer sum", String(format: "≤ %.3g, exact in double-precision accumulation (< 2^53 ≈ 9.0e15)", worstBound)),
        ]))
        context.emit(.table(OutputTable(title: "Remote modules", columns: ["module", "in → out", "weight scale", "input range (calibration)", "gradient range (calibration)"], rows: rows)))
    }
}

/// `nb weights_report`: how the parameters divide between client and server once the
/// remote layers are on the server, and the share that leaves the client.
public enum WeightsReportStep: Step {
    public static let name = "weights_report"
    public static let summary = "parameters in total, on the server, on the client and in LoRA"

    public struct Parameters: StepParameters {
        public enum Keys: String, CodingKey, CaseIterable { case none }
        public typealias CodingKeys = Keys
        public init(from decoder: Decoder) throws {}
        public func encode(to encoder: Encoder) throws {}
        public func validate() throws(ParameterError) {}
    }

    public static func run(_ p: Parameters, context: StepContext) throws {
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
