import Engine
import Foundation

/// `nb load_model`: loads a model by name or path, or the notebook's declared fallback when
/// it is not available, and says which model actually runs.
///
/// ```nb load_model id=model
/// model: gpt2                       # a name (gpt2, smollm2-135m-instruct) or a path
/// fallback: smollm2-135m-instruct   # used, with the reason, when `model` is unavailable
/// dtype: float32                    # weights are dequantized to Float32 on load
/// ```
public enum LoadModelStep: Step {
    public static let name = "load_model"
    public static func dataflow(_ _: Parameters) -> StepDataflow { StepDataflow(reads: [], writes: [.model, .adapter, .hybrid, .deployment]) }
    public static let summary = "load a GPT-2 or LLaMA-family model (GGUF or safetensors) and its tokenizer"

    public enum DType: String, Codable, CaseIterable, Sendable { case float32 }

    public struct Parameters: StepParameters {
        public enum Keys: String, CodingKey, CaseIterable { case model, fallback, dtype }
        public typealias CodingKeys = Keys
        public var model: String
        public var fallback: String?
        public var dtype: DType

        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: Keys.self)
            model = try c.decode(String.self, forKey: .model)
            fallback = try c.decodeIfPresent(String.self, forKey: .fallback)
            dtype = try c.decodeChoice(DType.self, forKey: .dtype) ?? .float32
        }

        public func validate() throws(ParameterError) {
            if model.isEmpty { throw ParameterError("model", "must name a model or a path") }
            if fallback?.isEmpty == true { throw ParameterError("fallback", "must name a model or a path") }
        }
    }

    /// Resolves `model`, then `fallback`; returns the location and why the first failed.
    static func resolve(_ p: Parameters, context: StepContext) -> (location: ModelLocation?, fallbackReason: String?, error: String?) {
        func locate(_ name: String) throws(ModelUnavailable) -> ModelLocation {
            // Paths in a notebook are relative to it, like data paths.
            if name.contains("/") || name.hasSuffix(".gguf") { return try ModelCatalog.locate(context.resolve(name).path) }
            return try ModelCatalog.locate(name)
        }
        do {
            return (try locate(p.model), nil, nil)
        } catch {
            guard let fallback = p.fallback else { return (nil, nil, error.description) }
            do {
                return (try locate(fallback), error.description, nil)
            } catch let second {
                return (nil, nil, "\(error.description); the fallback is not available either: \(second.description)")
            }
        }
    }

    public static func inputs(_ p: Parameters, context: StepContext) -> [URL] {
        guard let location = resolve(p, context: context).location else { return [] }
        switch location.format {
        case .gguf: return [location.url]
        case .safetensors:
            return ["config.json", "model.safetensors", "model.safetensors.index.json"].map { location.url.appendingPathComponent($0) }
                .filter { FileManager.default.fileExists(atPath: $0.path) }
        case .deploymentClient: return LoadDeploymentStep.clientFiles(location.url)
        }
    }

    public static func run(_ p: Parameters, context: StepContext) throws {
        let (location, fallbackReason, error) = resolve(p, context: context)
        guard let location else { throw StepFailure(key: "model", error ?? "model unavailable") }
        if let fallbackReason {
            context.emit(.warning("\(fallbackReason). Using the notebook's fallback, \(location.displayName)."))
            FileHandle.standardError.write(Data("  load_model: \(fallbackReason); using fallback \(location.displayName)\n".utf8))
        }
        if location.format == .deploymentClient {
            throw StepFailure(key: "model", "\(p.model) is a deployment's client folder: load it with `nb load_deployment` (its plan, adapter and key come with it)")
        }
        let loaded: LoadedModel
        do { loaded = try LoadedModel.load(location) } catch { throw StepFailure(key: fallbackReason == nil ? "model" : "fallback", "\(error)") }
        let m = loaded.model
        context.session.register(loaded, reference: ModelReference(
            requested: p.model, name: location.displayName, path: location.url.path, architecture: m.architecture,
            parameterCount: m.parameterCount, fallbackReason: fallbackReason, huggingFaceID: location.huggingFaceID))
        context.emit(.metrics([
            Metric("model", location.displayName),
            Metric("architecture", m.architecture),
            Metric("parameters", Format.integer(m.parameterCount)),
            Metric("layers", String(m.layerCount)),
            Metric("hidden size", String(m.hiddenSize)),
            Metric("vocabulary", Format.integer(m.vocabularySize)),
            Metric("context", Format.integer(m.contextLength)),
            Metric("load time", Format.duration(loaded.loadSeconds)),
        ]))
        context.emit(.text("file: \(context.display(location.url))\ntokenizer: \(loaded.tokenizerDescription)"))
    }
}
