import Foundation

/// The configuration of the LLaMA family — Llama 2 and 3.x, Qwen2/Qwen2.5, Mistral — with
/// Hugging Face's `config.json` key names.
///
/// Every key that changes the model's maths is either implemented here or refused by name
/// when it holds a value nb does not implement (``LlamaConfig/keys`` lists them), so a
/// checkpoint never runs with part of its definition silently ignored.
public struct LlamaConfig: Codable, Equatable, Sendable {
    /// `llama`, `qwen2` or `mistral`: the same decoder with different defaults.
    public var modelType: String
    public var vocabSize: Int
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var numHiddenLayers: Int
    public var numAttentionHeads: Int
    public var numKeyValueHeads: Int
    public var rmsNormEps: Double
    public var ropeTheta: Double
    public var maxPositionEmbeddings: Int
    public var tieWordEmbeddings: Bool
    /// `head_dim` when the config gives one (it may differ from hidden_size / heads).
    public var explicitHeadDim: Int?
    public var ropeScaling: RoPEScaling?
    /// Biases on q, k, v and o (Llama's `attention_bias`).
    public var attentionBias: Bool
    /// Biases on q, k and v only (Qwen2, always).
    public var qkvBias: Bool
    /// Biases on gate, up and down (Llama's `mlp_bias`).
    public var mlpBias: Bool
    /// Each token attends to itself and the `slidingWindow − 1` tokens before it (Mistral).
    public var slidingWindow: Int?
    /// Per-frequency divisors of the rotary frequencies, as llama.cpp stores Llama 3's
    /// scaling in a GGUF (`rope_freqs.weight`); not a config.json key.
    public var ropeFrequencyFactors: [Float]?

    enum CodingKeys: String, CodingKey {
        case modelType = "model_type"
        case vocabSize = "vocab_size", hiddenSize = "hidden_size", intermediateSize = "intermediate_size"
        case numHiddenLayers = "num_hidden_layers", numAttentionHeads = "num_attention_heads"
        case numKeyValueHeads = "num_key_value_heads", rmsNormEps = "rms_norm_eps", ropeTheta = "rope_theta"
        case maxPositionEmbeddings = "max_position_embeddings", tieWordEmbeddings = "tie_word_embeddings"
        case explicitHeadDim = "head_dim", ropeScaling = "rope_scaling", attentionBias = "attention_bias"
        case mlpBias = "mlp_bias", slidingWindow = "sliding_window"
    }

    public init(vocabSize: Int, hiddenSize: Int, intermediateSize: Int, numHiddenLayers: Int, numAttentionHeads: Int,
                numKeyValueHeads: Int, rmsNormEps: Double, ropeTheta: Double, maxPositionEmbeddings: Int, tieWordEmbeddings: Bool,
                modelType: String = "llama", headDim: Int? = nil, ropeScaling: RoPEScaling? = nil, attentionBias: Bool = false,
                qkvBias: Bool? = nil, mlpBias: Bool = false, slidingWindow: Int? = nil) {
        (self.vocabSize, self.hiddenSize, self.intermediateSize) = (vocabSize, hiddenSize, intermediateSize)
        (self.numHiddenLayers, self.numAttentionHeads, self.numKeyValueHeads) = (numHiddenLayers, numAttentionHeads, numKeyValueHeads)
        (self.rmsNormEps, self.ropeTheta, self.maxPositionEmbeddings, self.tieWordEmbeddings) = (rmsNormEps, ropeTheta, maxPositionEmbeddings, tieWordEmbeddings)
        self.modelType = modelType
        explicitHeadDim = headDim
        self.ropeScaling = ropeScaling
        self.attentionBias = attentionBias
        self.qkvBias = qkvBias ?? (modelType == "qwen2")
        self.mlpBias = mlpBias
        self.slidingWindow = slidingWindow
    }

    /// The model types this configuration reads.
    public static let modelTypes = ["llama", "qwen2", "mistral"]

    /// The config.json keys this family reads, and those it knows change nothing it computes.
    public static let keys = (
        read: ["model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "rms_norm_eps", "rope_theta", "max_position_embeddings", "tie_word_embeddings",
               "head_dim", "rope_scaling", "attention_bias", "mlp_bias", "sliding_window", "use_sliding_window",
               "hidden_act", "attention_dropout", "partial_rotary_factor", "pretraining_tp"],
        refusedWhenSet: ["qk_layernorm", "use_qk_norm", "attn_logit_softcapping", "final_logit_softcapping",
                         "logits_scaling", "embedding_multiplier", "residual_multiplier", "attention_multiplier",
                         "quantization_config", "rope_interleaved"])

    public init(from decoder: Decoder) throws {
        let all = try decoder.container(keyedBy: AnyCodingKey.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        modelType = try c.decodeIfPresent(String.self, forKey: .modelType) ?? "llama"
        guard Self.modelTypes.contains(modelType) else {
            throw ConfigKeyError(key: "model_type", message: "'\(modelType)' is not one of \(Self.modelTypes.joined(separator: ", "))")
        }
        vocabSize = try c.decode(Int.self, forKey: .vocabSize)
        hiddenSize = try c.decode(Int.self, forKey: .hiddenSize)
        intermediateSize = try c.decode(Int.self, forKey: .intermediateSize)
        numHiddenLayers = try c.decode(Int.self, forKey: .numHiddenLayers)
        numAttentionHeads = try c.decode(Int.self, forKey: .numAttentionHeads)
        numKeyValueHeads = try c.decodeIfPresent(Int.self, forKey: .numKeyValueHeads) ?? numAttentionHeads
        rmsNormEps = try c.decodeIfPresent(Double.self, forKey: .rmsNormEps) ?? 1e-6
        ropeTheta = try c.decodeIfPresent(Double.self, forKey: .ropeTheta) ?? 10000
        maxPositionEmbeddings = try c.decodeIfPresent(Int.self, forKey: .maxPositionEmbeddings) ?? 2048
        tieWordEmbeddings = try c.decodeIfPresent(Bool.self, forKey: .tieWordEmbeddings) ?? false
        explicitHeadDim = try c.decodeIfPresent(Int.self, forKey: .explicitHeadDim)
        let scalingType = (try? c.nestedContainer(keyedBy: AnyCodingKey.self, forKey: .ropeScaling))
            .flatMap { try? $0.decode(String.self, forKey: AnyCodingKey("rope_type")) }
        ropeScaling = scalingType == "default" ? nil : try c.decodeIfPresent(RoPEScaling.self, forKey: .ropeScaling)
        attentionBias = try c.decodeIfPresent(Bool.self, forKey: .attentionBias) ?? false
        mlpBias = try c.decodeIfPresent(Bool.self, forKey: .mlpBias) ?? false
        qkvBias = modelType == "qwen2"
        // Qwen2 declares a window it does not use unless `use_sliding_window` is true.
        let window = try c.decodeIfPresent(Int.self, forKey: .slidingWindow)
        switch modelType {
        case "qwen2":
            if try all.decodeIfPresent(Bool.self, forKey: AnyCodingKey("use_sliding_window")) == true {
                throw ConfigKeyError(key: "use_sliding_window", message: "true is not supported for qwen2 (its window applies to some layers only, differently per attention kernel in transformers)")
            }
            slidingWindow = nil
        case "mistral": slidingWindow = window
        default:
            if window != nil { throw ConfigKeyError(key: "sliding_window", message: "is only read for mistral, not \(modelType)") }
            slidingWindow = nil
        }
        if let act = try all.decodeIfPresent(String.self, forKey: AnyCodingKey("hidden_act")), act != "silu" {
            throw ConfigKeyError(key: "hidden_act", message: "'\(act)' is not supported (the family's MLP is SwiGLU: silu)")
        }
        if let p = try all.decodeIfPresent(Double.self, forKey: AnyCodingKey("attention_dropout")), p != 0 {
            throw ConfigKeyError(key: "attention_dropout", message: "\(p) is not supported (nb trains without attention dropout)")
        }
        if let p = try all.decodeIfPresent(Double.self, forKey: AnyCodingKey("partial_rotary_factor")), p != 1 {
            throw ConfigKeyError(key: "partial_rotary_factor", message: "\(p) is not supported (RoPE rotates the whole head)")
        }
        for key in Self.keys.refusedWhenSet {
            guard all.contains(AnyCodingKey(key)), try !all.decodeNil(forKey: AnyCodingKey(key)) else { continue }
            if let flag = try? all.decode(Bool.self, forKey: AnyCodingKey(key)), !flag { continue }
            if let number = try? all.decode(Double.self, forKey: AnyCodingKey(key)), number == 0 || number == 1 && key.hasSuffix("multiplier") { continue }
            throw ConfigKeyError(key: key, message: "is set, and nb's \(modelType) does not implement it")
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(modelType, forKey: .modelType)
        try c.encode(vocabSize, forKey: .vocabSize)
        try c.encode(hiddenSize, forKey: .hiddenSize)
        try c.encode(intermediateSize, forKey: .intermediateSize)
        try c.encode(numHiddenLayers, forKey: .numHiddenLayers)
        try c.encode(numAttentionHeads, forKey: .numAttentionHeads)
        try c.encode(numKeyValueHeads, forKey: .numKeyValueHeads)
        try c.encode(rmsNormEps, forKey: .rmsNormEps)
        try c.encode(ropeTheta, forKey: .ropeTheta)
        try c.encode(maxPositionEmbeddings, forKey: .maxPositionEmbeddings)
        try c.encode(tieWordEmbeddings, forKey: .tieWordEmbeddings)
        try c.encodeIfPresent(explicitHeadDim, forKey: .explicitHeadDim)
        try c.encodeIfPresent(ropeScaling, forKey: .ropeScaling)
        if modelType == "llama" {
            try c.encode(attentionBias, forKey: .attentionBias)
            try c.encode(mlpBias, forKey: .mlpBias)
        }
        try c.encodeIfPresent(slidingWindow, forKey: .slidingWindow)
    }

    public var headDim: Int { explicitHeadDim ?? hiddenSize / numAttentionHeads }

    /// Which of q, k, v, o carry a bias, and whether the MLP's do.
    public var biases: (q: Bool, k: Bool, v: Bool, o: Bool, mlp: Bool) {
        (attentionBias || qkvBias, attentionBias || qkvBias, attentionBias || qkvBias, attentionBias, mlpBias)
    }

    /// The longest sequence the model runs: its positions, or beyond them with dynamic scaling.
    public var contextLength: Int {
        if let s = ropeScaling, s.kind == .dynamic { return Int((Double(maxPositionEmbeddings) * s.factor).rounded(.down)) }
        return maxPositionEmbeddings
    }

    /// Checks the numbers fit together; `file` names the source in errors.
    func validate(file: String) throws {
        if numAttentionHeads <= 0 || explicitHeadDim == nil && hiddenSize % numAttentionHeads != 0 {
            throw ModelLoadError.badConfig(file: file, key: "num_attention_heads", message: "\(numAttentionHeads) does not divide hidden_size \(hiddenSize) (and there is no head_dim)")
        }
        if let d = explicitHeadDim, d <= 0 { throw ModelLoadError.badConfig(file: file, key: "head_dim", message: "\(d) must be positive") }
        if numKeyValueHeads <= 0 || numAttentionHeads % numKeyValueHeads != 0 {
            throw ModelLoadError.badConfig(file: file, key: "num_key_value_heads", message: "\(numKeyValueHeads) does not divide num_attention_heads \(numAttentionHeads)")
        }
        if headDim % 2 != 0 { throw ModelLoadError.badConfig(file: file, key: "head_dim", message: "head size \(headDim) must be even for RoPE") }
        if let w = slidingWindow, w <= 0 { throw ModelLoadError.badConfig(file: file, key: "sliding_window", message: "\(w) must be positive") }
        if let f = ropeFrequencyFactors, f.count != headDim / 2 {
            throw ModelLoadError.badConfig(file: file, key: "rope_freqs.weight", message: "\(f.count) factors for \(headDim / 2) frequencies")
        }
        if let s = ropeScaling {
            do { try s.validate() } catch let e as ConfigKeyError { throw ModelLoadError.badConfig(file: file, key: e.key, message: e.message) }
        }
    }

    /// The rotary inverse frequencies θᵢ (i < headDim/2) for a sequence of `sequenceLength`
    /// tokens, in float32 as transformers computes them: base^(−2i/d), then the scaling.
    /// Only dynamic scaling depends on the length (a larger base past the trained positions).
    public func ropeInverseFrequencies(sequenceLength: Int) -> [Float] {
        let d = headDim, half = d / 2
        var base = ropeTheta
        if let s = ropeScaling, s.kind == .dynamic, sequenceLength > maxPositionEmbeddings {
            base *= Foundation.pow(s.factor * Double(sequenceLength) / Double(maxPositionEmbeddings) - (s.factor - 1), Double(d) / Double(d - 2))
        }
        var inverse = (0..<half).map { i -> Float in 1 / Float(Foundation.pow(base, Double(Float(2 * i) / Float(d)))) }
        if let f = ropeFrequencyFactors { for i in 0..<half { inverse[i] /= f[i] } }
        guard let s = ropeScaling else { return inverse }
        switch s.kind {
        case .dynamic: break
        case .linear: for i in 0..<half { inverse[i] /= Float(s.factor) }
        case .llama3:
            let original = Double(s.originalMaxPositionEmbeddings ?? maxPositionEmbeddings)
            let low = s.lowFreqFactor ?? 1, high = s.highFreqFactor ?? 4
            let lowWavelength = Float(original / low), highWavelength = Float(original / high)
            for i in 0..<half {
                let f = inverse[i], wavelength = 2 * Float.pi / f
                if wavelength > lowWavelength {
                    inverse[i] = f / Float(s.factor)
                } else if wavelength >= highWavelength {
                    let smooth = (Float(original) / wavelength - Float(low)) / Float(high - low)
                    inverse[i] = (1 - smooth) * f / Float(s.factor) + smooth * f
                }
            }
        }
        return inverse
    }
}

/// `rope_scaling` of a config.json: `{"rope_type": "llama3", "factor": 8, ...}` (older files say `type`).
public struct RoPEScaling: Codable, Equatable, Sendable {
    public enum Kind: String, Codable, Sendable, CaseIterable { case linear, dynamic, llama3 }
    public var kind: Kind
    public var factor: Double
    public var lowFreqFactor: Double?
    public var highFreqFactor: Double?
    public var originalMaxPositionEmbeddings: Int?

    enum CodingKeys: String, CodingKey {
        case ropeType = "rope_type", type, factor, lowFreqFactor = "low_freq_factor", highFreqFactor = "high_freq_factor"
        case originalMaxPositionEmbeddings = "original_max_position_embeddings"
    }

    public init(kind: Kind, factor: Double, lowFreqFactor: Double? = nil, highFreqFactor: Double? = nil, originalMaxPositionEmbeddings: Int? = nil) {
        (self.kind, self.factor, self.lowFreqFactor, self.highFreqFactor) = (kind, factor, lowFreqFactor, highFreqFactor)
        self.originalMaxPositionEmbeddings = originalMaxPositionEmbeddings
    }

    /// The keys each kind reads; any other key in `rope_scaling` is refused by name.
    static let keysRead: [Kind: Set<String>] = [
        .linear: ["factor"], .dynamic: ["factor"],
        .llama3: ["factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"],
    ]

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let name = try c.decodeIfPresent(String.self, forKey: .ropeType) ?? c.decodeIfPresent(String.self, forKey: .type)
        guard let name else { throw ConfigKeyError(key: "rope_scaling.rope_type", message: "is missing") }
        guard let kind = Kind(rawValue: name) else {
            throw ConfigKeyError(key: "rope_scaling.rope_type", message: "'\(name)' is not supported (nb implements \(Kind.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        self.kind = kind
        factor = try c.decodeIfPresent(Double.self, forKey: .factor) ?? 0
        lowFreqFactor = try c.decodeIfPresent(Double.self, forKey: .lowFreqFactor)
        highFreqFactor = try c.decodeIfPresent(Double.self, forKey: .highFreqFactor)
        originalMaxPositionEmbeddings = try c.decodeIfPresent(Int.self, forKey: .originalMaxPositionEmbeddings)
        let all = try decoder.container(keyedBy: AnyCodingKey.self)
        let known = Self.keysRead[kind]!.union(["rope_type", "type"])
        for key in all.allKeys.map(\.stringValue).sorted() where !known.contains(key) {
            guard try !all.decodeNil(forKey: AnyCodingKey(key)) else { continue }
            throw ConfigKeyError(key: "rope_scaling.\(key)", message: "is not read by \(kind.rawValue) scaling, and nb does not implement it")
        }
        try validate()
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(kind.rawValue, forKey: .ropeType)
        try c.encode(factor, forKey: .factor)
        try c.encodeIfPresent(lowFreqFactor, forKey: .lowFreqFactor)
        try c.encodeIfPresent(highFreqFactor, forKey: .highFreqFactor)
        try c.encodeIfPresent(originalMaxPositionEmbeddings, forKey: .originalMaxPositionEmbeddings)
    }

    func validate() throws {
        guard factor.isFinite && factor >= 1 else { throw ConfigKeyError(key: "rope_scaling.factor", message: "\(factor) must be at least 1") }
        guard kind == .llama3 else { return }
        guard let low = lowFreqFactor, let high = highFreqFactor, let original = originalMaxPositionEmbeddings else {
            throw ConfigKeyError(key: "rope_scaling", message: "llama3 scaling needs low_freq_factor, high_freq_factor and original_max_position_embeddings")
        }
        guard low > 0, high > low, original > 0 else {
            throw ConfigKeyError(key: "rope_scaling", message: "llama3 scaling needs 0 < low_freq_factor (\(low)) < high_freq_factor (\(high)) and original_max_position_embeddings > 0 (\(original))")
        }
    }
}

/// A config.json key whose value nb refuses, with why.
public struct ConfigKeyError: Error, Equatable, CustomStringConvertible {
    public var key: String
    public var message: String
    public var description: String { "\(key): \(message)" }
}

/// Any string as a coding key, to see every key of a JSON object.
struct AnyCodingKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(_ string: String) { stringValue = string }
    init?(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}
