import Foundation

/// Where the frozen linear layers of a training or evaluation pass compute their products:
/// the forward y = x·Wᵀ and the backward dX = dY·W (no dW: the weights are frozen).
///
/// The training pass asks the backend first, layer by layer; a backend that does not run a
/// layer (returns false) leaves it to the float path on the client. Biases are added by
/// the caller, in float, after the product. Every call carries all rows of one micro-batch,
/// so a backend can batch them (an encrypted or remote backend sends one request per call).
public protocol LinearBackend: AnyObject {
    /// y (N, out) = x (N, in)·Wᵀ for `layer`; false when this backend does not run it.
    func forward(_ layer: LinearLayer, x: UnsafeBufferPointer<Float>, y: UnsafeMutableBufferPointer<Float>) -> Bool
    /// dX (N, in) = dY (N, out)·W for `layer`; false when this backend does not run it.
    func backward(_ layer: LinearLayer, dY: UnsafeBufferPointer<Float>, dX: UnsafeMutableBufferPointer<Float>) -> Bool
    /// Which rows of the coming passes hold real tokens (nil: all). With causal attention and
    /// right padding, a padding row's products reach no real token and its gradients are
    /// zero, so a backend may skip those rows (returning zeros there).
    func setRealRows(_ rows: [Bool]?)
    /// Whether each row's product depends on that row alone (static or per-token activation
    /// ranges). Then generation may run one new token at a time with a KV cache and give
    /// what re-running the whole sequence gives; a range over the whole call
    /// (dynamic-per-tensor) needs the whole sequence each time.
    var rowsAreIndependent: Bool { get }
}

extension LinearBackend {
    public func setRealRows(_ rows: [Bool]?) {}
    public var rowsAreIndependent: Bool { false }
}

extension HybridPlan {
    /// See ``LinearBackend/rowsAreIndependent``.
    public var rowsAreIndependent: Bool { scheme.activations != .dynamicPerTensor }
}

extension CausalLMBatch {
    /// (B·T) whether each position holds a token before the row's padding.
    public var realRows: [Bool] {
        (0..<(rowCount * rowLength)).map { $0 % rowLength < lengths[$0 / rowLength] }
    }
}

/// The observed range of a remote layer's inputs and output gradients (static quantization).
public struct CalibrationRange: Codable, Equatable, Hashable, Sendable {
    public var inputLow: Double = .infinity
    public var inputHigh: Double = -.infinity
    public var gradientLow: Double = .infinity
    public var gradientHigh: Double = -.infinity

    public init() {}

    mutating func observe(input x: UnsafeBufferPointer<Float>) {
        for v in x { inputLow = min(inputLow, Double(v)); inputHigh = max(inputHigh, Double(v)) }
    }

    mutating func observe(gradient g: UnsafeBufferPointer<Float>) {
        for v in g { gradientLow = min(gradientLow, Double(v)); gradientHigh = max(gradientHigh, Double(v)) }
    }

    public var hasInputs: Bool { inputLow <= inputHigh }
    public var hasGradients: Bool { gradientLow <= gradientHigh }
}

/// The client/server split fixed by `compile_hybrid`: which frozen layers run remotely, in
/// which quantization scheme, with which calibrated ranges.
public struct HybridPlan: Codable, Equatable, Hashable, Sendable {
    public var scheme: QuantizationScheme
    /// Hugging Face names of the remote modules, in model order.
    public var remoteModules: [String]
    /// Ranges seen during calibration, by module.
    public var ranges: [String: CalibrationRange]

    public init(scheme: QuantizationScheme, remoteModules: [String], ranges: [String: CalibrationRange] = [:]) {
        (self.scheme, self.remoteModules, self.ranges) = (scheme, remoteModules, ranges)
    }
}

/// Records the ranges of the remote layers' inputs and output gradients while the float
/// path computes everything (calibration for static quantization).
public final class CalibrationRecorder: LinearBackend {
    public private(set) var ranges: [String: CalibrationRange] = [:]
    let modules: Set<String>

    public init(modules: [String]) { self.modules = Set(modules) }

    public func forward(_ layer: LinearLayer, x: UnsafeBufferPointer<Float>, y: UnsafeMutableBufferPointer<Float>) -> Bool {
        if modules.contains(layer.name) { ranges[layer.name, default: CalibrationRange()].observe(input: x) }
        return false
    }

    public func backward(_ layer: LinearLayer, dY: UnsafeBufferPointer<Float>, dX: UnsafeMutableBufferPointer<Float>) -> Bool {
        if modules.contains(layer.name) { ranges[layer.name, default: CalibrationRange()].observe(gradient: dY) }
        return false
    }
}

/// The `disable` mode: every remote layer's products in quantized integers, in clear, on
/// the client — the arithmetic the encrypted modes reproduce exactly.
///
/// Weights are quantized once: W (out, in) by output channel (or as one tensor) for the
/// forward, and Wᵀ (in, out) by input channel for the backward, whose contraction runs over
/// the output channels. Activations are quantized per call as the scheme says.
public final class QuantizedLinearBackend: LinearBackend {
    public let plan: HybridPlan
    struct Layer {
        var forward: QuantizedRows   // W (out, in)
        var backward: QuantizedRows  // Wᵀ (in, out)
        var range: CalibrationRange?
    }
    private(set) var layers: [String: Layer] = [:]

    public init(plan: HybridPlan, model: TrainableModel) throws(QuantizationError) {
        try plan.scheme.validate()
        self.plan = plan
        let scheme = plan.scheme
        let byName = Dictionary(uniqueKeysWithValues: model.linearModules.map { ($0.name, $0) })
        for name in plan.remoteModules {
            guard let m = byName[name] else { continue }
            let range = plan.ranges[name]
            if scheme.activations == .staticPerTensor && !(range?.hasInputs ?? false) { throw .notCalibrated(module: name) }
            let w = model.weight(of: m)
            let (O, K) = (m.outFeatures, m.inFeatures)
            // W[o][k]: (out, in) for nn.Linear, stored (in, out) by GPT-2's Conv1D.
            let at: (Int, Int) -> Double = m.transposedWeight ? { o, k in Double(w[k * O + o]) } : { o, k in Double(w[o * K + k]) }
            let perChannel = scheme.weights == .perChannel
            let forward = QuantizedRows(rows: O, columns: K, bits: scheme.nBits, symmetric: scheme.symmetricWeights, perRow: perChannel) { at($0, $1) }
            let backward = QuantizedRows(rows: K, columns: O, bits: scheme.nBits, symmetric: scheme.symmetricWeights, perRow: perChannel) { at($1, $0) }
            // Packed (one byte per 8-bit weight): the backend lives as long as the session.
            layers[name] = Layer(forward: forward.compacted(), backward: backward.compacted(), range: range)
        }
    }

    public var moduleNames: [String] { plan.remoteModules.filter { layers[$0] != nil } }
    public var rowsAreIndependent: Bool { plan.rowsAreIndependent }

    /// The forward quantization of a module's weights (for summaries).
    public func weightQuantizers(of name: String) -> [AffineQuantizer]? { layers[name]?.forward.quantizers }

    public func forward(_ layer: LinearLayer, x: UnsafeBufferPointer<Float>, y: UnsafeMutableBufferPointer<Float>) -> Bool {
        guard let l = layers[layer.name] else { return false }
        let product = IntegerMatmul.multiply(plan.quantizedInput(layer, x), l.forward).y
        _ = y.update(fromContentsOf: product)
        return true
    }

    public func backward(_ layer: LinearLayer, dY: UnsafeBufferPointer<Float>, dX: UnsafeMutableBufferPointer<Float>) -> Bool {
        guard let l = layers[layer.name] else { return false }
        let product = IntegerMatmul.multiply(plan.quantizedGradient(layer, dY), l.backward).y
        _ = dX.update(fromContentsOf: product)
        return true
    }
}

extension HybridPlan {
    func activations(_ values: UnsafeBufferPointer<Float>, rows: Int, columns: Int, range: (Double, Double)?) -> QuantizedRows {
        let staticRange = scheme.activations == .staticPerTensor ? range : nil
        return QuantizedRows(activations: values, rows: rows, columns: columns, bits: scheme.nBits, symmetric: scheme.symmetricActivations,
                             perRow: scheme.activations == .dynamicPerToken, range: staticRange)
    }

    /// The quantized input of a forward call, as `disable` and the encrypted modes see it.
    func quantizedInput(_ layer: LinearLayer, _ x: UnsafeBufferPointer<Float>) -> QuantizedRows {
        let r = ranges[layer.name].map { ($0.inputLow, $0.inputHigh) }
        return activations(x, rows: x.count / layer.inFeatures, columns: layer.inFeatures, range: r)
    }

    /// The quantized output gradient of a backward call.
    func quantizedGradient(_ layer: LinearLayer, _ dY: UnsafeBufferPointer<Float>) -> QuantizedRows {
        let r = ranges[layer.name].flatMap { $0.hasGradients ? ($0.gradientLow, $0.gradientHigh) : nil }
        return activations(dY, rows: dY.count / layer.outFeatures, columns: layer.outFeatures, range: r)
    }
}

/// Who holds which parameters once the remote layers live on the server.
public struct ParameterSplit: Equatable, Sendable {
    /// The model's parameters plus the LoRA parameters.
    public var total: Int
    /// The remote layers' weights and biases.
    public var server: Int
    /// Everything else: embeddings, norms, lm_head, local layers, LoRA.
    public var client: Int { total - server }
    public var lora: Int
    /// The share of all parameters that leaves the client.
    public var removedShare: Double { total > 0 ? Double(server) / Double(total) : 0 }

    /// For a model of `modelParameters` whose `remote` layers go to the server (with their
    /// biases when `biased`), with `loraParameters` trained on the client.
    public init(remote: [LinearModule], biased: Bool, modelParameters: Int, loraParameters: Int) {
        total = modelParameters + loraParameters
        server = remote.reduce(0) { $0 + $1.inFeatures * $1.outFeatures + (biased ? $1.outFeatures : 0) }
        lora = loraParameters
    }
}

extension TrainableModel {
    /// Whether the linear layers carry biases (GPT-2's Conv1D do; LLaMA's do not).
    public var linearLayersHaveBias: Bool { linearModules.first.map { bias(of: $0) != nil } ?? false }
}

/// Greedy or sampled continuation with every linear layer run as the training pass runs it:
/// the frozen products on the hooks' ``LinearBackend`` (quantized, encrypted or remote), the
/// adapter through its hooks.
///
/// With a KV cache (`cached`, the default, when the backend's rows are independent): the
/// prompt runs once, then one row per new token. Otherwise, and for a dynamic-per-tensor
/// backend, whose ranges span the whole call, each new token re-runs the whole sequence
/// through the training pass (logits for the last position only).
public func generateThroughHooks(model: TrainableModel, prompt: [Int], maxTokens: Int, hooks: LinearHooks<Float>,
                                 sampling: SamplingSettings = SamplingSettings(), stopTokens: Set<Int> = [], cached: Bool = true) -> [Int] {
    var tokens = prompt, generated: [Int] = []
    var rng = SeededGenerator(seed: sampling.seed)
    hooks.backend?.setRealRows(nil)  // every row of these passes is a real token
    if cached && hooks.backend?.rowsAreIndependent ?? true && !prompt.isEmpty && prompt.count < model.contextLength {
        let capacity = min(prompt.count + maxTokens, model.contextLength)
        let cache = model.makeCache(capacity: capacity)
        let step: ([Int], KVCache) -> [Float] = { model.forward($0, cache: $1, allPositions: false, hooks: hooks) }
        var input = prompt
        while generated.count < maxTokens && tokens.count < model.contextLength {
            let next = Sampler.sample(step(input, cache), settings: sampling, rng: &rng)
            generated.append(next)
            if stopTokens.contains(next) { break }
            tokens.append(next)
            input = [next]
        }
        return generated
    }
    while generated.count < maxTokens && tokens.count < model.contextLength {
        let logits = model.lastLogits(tokens, hooks: hooks)
        let next = Sampler.sample(logits, settings: sampling, rng: &rng)
        generated.append(next)
        if stopTokens.contains(next) { break }
        tokens.append(next)
    }
    return generated
}
