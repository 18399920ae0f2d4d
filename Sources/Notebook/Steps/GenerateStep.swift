import Engine
import Foundation

/// `nb generate`: continues prompts with the session's model.
///
/// ```nb generate id=before
/// prompts: ["What is FHE?"]
/// max_tokens: 40
/// temperature: 0        # 0 = greedy
/// top_k: 0              # 0 = no limit
/// top_p: 1.0
/// seed: 0
/// chat: false           # wrap each prompt in the model's chat template
/// precision: float16     # float16: decode through half-precision weight copies (fast);
///                        # float32: the exact path (mode torch)
/// ```
public enum GenerateStep: Step {
    public static let name = "generate"
    public static func dataflow(_ _: Parameters) -> StepDataflow { StepDataflow(reads: [.model, .adapter, .hybrid, .deployment], writes: []) }
    public static let summary = "continue prompts with the loaded model (greedy or sampled, KV cache)"

    public struct Parameters: StepParameters {
        public enum Keys: String, CodingKey, CaseIterable { case prompts, maxTokens = "max_tokens", temperature, topK = "top_k", topP = "top_p", seed, chat, qa, stop, adapter, mode, server, tokenFile = "token_file", productProtocol = "protocol", precision }
        public typealias CodingKeys = Keys
        public var prompts: [String]
        public var maxTokens: Int
        public var temperature: Double
        public var topK: Int
        public var topP: Double
        public var seed: Int
        public var chat: Bool
        /// Extra stop strings (each must be one token); the model's end-of-text tokens always stop.
        public var stop: [String]
        /// Format each prompt as the Q&A training rows do (question + end-of-text), so a model
        /// fine-tuned on question/answer pairs continues with an answer.
        public var qa: Bool
        /// Apply the session's LoRA adapter, when it has one.
        public var adapter: Bool
        public var mode: ExecutionMode
        public var server: String?
        public var tokenFile: String?
        /// `execute`/`remote`: `masked` (offline pads, online products per token) or `he`.
        public var productProtocol: ProductProtocol
        /// `float16` (the default): one-token decoding reads half-precision copies of the
        /// weights; `float32`: the exact path throughout.
        public var precision: DecodePrecision

        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: Keys.self)
            precision = try c.decodeChoice(DecodePrecision.self, forKey: .precision) ?? .float16
            productProtocol = try c.decodeChoice(ProductProtocol.self, forKey: .productProtocol) ?? .masked
            prompts = try c.decode([String].self, forKey: .prompts)
            maxTokens = try c.decodeIfPresent(Int.self, forKey: .maxTokens) ?? 40
            temperature = try c.decodeIfPresent(Double.self, forKey: .temperature) ?? 0
            topK = try c.decodeIfPresent(Int.self, forKey: .topK) ?? 0
            topP = try c.decodeIfPresent(Double.self, forKey: .topP) ?? 1
            seed = try c.decodeIfPresent(Int.self, forKey: .seed) ?? 0
            chat = try c.decodeIfPresent(Bool.self, forKey: .chat) ?? false
            stop = try c.decodeIfPresent([String].self, forKey: .stop) ?? []
            qa = try c.decodeIfPresent(Bool.self, forKey: .qa) ?? false
            adapter = try c.decodeIfPresent(Bool.self, forKey: .adapter) ?? true
            mode = try c.decodeChoice(ExecutionMode.self, forKey: .mode) ?? .torch
            server = try c.decodeIfPresent(String.self, forKey: .server)
            tokenFile = try c.decodeIfPresent(String.self, forKey: .tokenFile)
        }

        public func validate() throws(ParameterError) {
            if qa && chat { throw ParameterError("qa", "qa and chat are two prompt formats: choose one") }
            if prompts.isEmpty { throw ParameterError("prompts", "give at least one prompt") }
            if !(1...4096).contains(maxTokens) { throw ParameterError("max_tokens", "\(maxTokens) is out of range 1...4096") }
            if temperature < 0 || !temperature.isFinite { throw ParameterError("temperature", "\(temperature) must be ≥ 0") }
            if topK < 0 { throw ParameterError("top_k", "\(topK) must be ≥ 0") }
            if !(topP > 0 && topP <= 1) { throw ParameterError("top_p", "\(topP) must be in (0, 1]") }
            if seed < 0 { throw ParameterError("seed", "\(seed) must be ≥ 0") }
            try RemoteTarget.validate(server: server, mode: mode)
        }
    }

    public static func run(_ p: Parameters, context: StepContext) throws {
        let loaded = try context.session.model()
        var stops = loaded.stopTokens
        for s in p.stop {
            guard let id = loaded.tokenizer.id(of: s) ?? loaded.tokenizer.encode(s, allowSpecial: true).singleElement else {
                throw StepFailure(key: "stop", "'\(s)' is not a single token of this model's vocabulary")
            }
            stops.insert(id)
        }
        let settings = SamplingSettings(temperature: p.temperature, topK: p.topK, topP: p.topP, seed: UInt64(p.seed))
        var rows: [[String]] = []
        var generated = 0
        var decodeSeconds = 0.0
        let progress = context.progress("generate", total: p.prompts.count)
        let adapter = p.adapter ? try context.session.adapter() : nil
        // A tokenizer larger than the model's embedding (a mismatched pair) is refused here,
        // with the offending prompt, instead of failing inside the model.
        for prompt in p.prompts {
            if let bad = loaded.encodePrompt(prompt, chat: p.chat, qa: p.qa).first(where: { $0 < 0 || $0 >= loaded.model.vocabularySize }) {
                throw StepFailure(key: "prompts", "the tokenizer gives token \(bad) for \"\(prompt)\", beyond the model's \(loaded.model.vocabularySize) embedding rows: the model and its tokenizer do not match")
            }
        }
        func generateAll() {
            let compact = loaded.model.compactDecode
            loaded.model.compactDecode = p.precision == .float16
            defer { loaded.model.compactDecode = compact }
            for (i, prompt) in p.prompts.enumerated() {
                let ids = loaded.encodePrompt(prompt, chat: p.chat, qa: p.qa)
                let result = loaded.model.generate(GenerationRequest(prompt: ids, maxTokens: p.maxTokens, sampling: settings, stopTokens: stops))
                let text = loaded.tokenizer.decode(result.tokens.filter { !stops.contains($0) })
                generated += result.tokens.count
                decodeSeconds += result.decodeSeconds
                let rate = result.tokens.count > 1 ? Double(result.tokens.count - 1) / max(result.decodeSeconds, 1e-9) : 0
                rows.append([prompt, text, "\(result.tokens.count) (\(result.finishReason))", Format.number(rate, decimals: 1)])
                progress.update(i + 1)
            }
        }
        let backend = try context.backend(p.mode, server: p.server, tokenFile: p.tokenFile, protocol: p.productProtocol)
        defer { (backend as? EncryptedLinearBackend)?.releaseMasks() }
        let statsAtStart = (backend as? EncryptedLinearBackend)?.statistics ?? FHEStatistics()
        let generationStarted = Date()
        if let backend, let model = loaded.model as? TrainableModel {
            // The remote layers run through the backend (quantized, encrypted or remote), with a KV cache.
            var hooks = adapter?.hooks() ?? LinearHooks<Float>()
            hooks.backend = backend
            var rng = SeededGenerator(seed: settings.seed)
            for (i, prompt) in p.prompts.enumerated() {
                let ids = loaded.encodePrompt(prompt, chat: p.chat, qa: p.qa)
                let started = Date()
                let tokens = generateThroughHooks(model: model, prompt: ids, maxTokens: p.maxTokens, hooks: hooks,
                                                  sampling: SamplingSettings(temperature: p.temperature, topK: p.topK, topP: p.topP, seed: rng.next()),
                                                  stopTokens: stops)
                let seconds = Date().timeIntervalSince(started)
                generated += tokens.count
                decodeSeconds += seconds
                rows.append([prompt, loaded.tokenizer.decode(tokens.filter { !stops.contains($0) }),
                             "\(tokens.count) (\(tokens.last.map(stops.contains) == true ? "stop token" : "max tokens"))",
                             Format.rate(Double(tokens.count) / max(seconds, 1e-9))])
                progress.update(i + 1)
                try FHEReport.check(backend)
            }
        } else if let adapter, let model = loaded.model as? TrainableModel {
            adapter.withMerged(into: model, generateAll)
        } else {
            generateAll()
        }
        progress.finish()
        var with = adapter == nil ? "" : " + LoRA adapter (\(context.session.state.adapter?.trainedSteps ?? 0) steps trained)"
        if p.mode != .torch { with += ", remote layers \(p.mode.encrypted ? "encrypted" : "quantized") (\(context.session.state.hybrid?.scheme.description ?? ""))" }
        context.emit(.table(OutputTable(title: "Generations with \(context.session.state.model?.name ?? "the model")\(with)",
                                        columns: ["prompt", "completion", "tokens", "tokens/s"], rows: rows)))
        context.emit(.metrics([
            Metric("sampling", p.temperature == 0 ? "greedy" : "T=\(p.temperature), top-k \(p.topK), top-p \(p.topP), seed \(p.seed)"),
            Metric("tokens generated", String(generated)),
            Metric("decode speed", decodeSeconds > 0 ? "\(Format.rate(Double(generated - p.prompts.count) / decodeSeconds)) tokens/s" : "–"),
        ]))
        if let encrypted = backend as? EncryptedLinearBackend {
            FHEReport.emit(encrypted, stats: encrypted.statistics.since(statsAtStart), steps: max(generated, 1), stepName: "token",
                           seconds: Date().timeIntervalSince(generationStarted), context: context)
        }
    }
}

extension Array {
    var singleElement: Element? { count == 1 ? self[0] : nil }
}

/// How one-token decoding reads the weights in mode `torch`.
public enum DecodePrecision: String, Codable, CaseIterable, Sendable {
    /// Half-precision copies (or a GGUF's stored blocks): about 1e-4 of the logit range off, 2–3× faster.
    case float16
    /// Float32 throughout: the exact path.
    case float32
}
