import Foundation

/// One model family: the `model_type` values of config.json and the GGUF architectures it
/// reads, and how its checkpoints load. Each family lives in its own folder of
/// `Architectures/` and adds one line to ``ModelFamily/all``; nothing outside that folder
/// switches on the family.
public struct ModelFamily: Sendable {
    /// The family's name, as notebooks name it (`target_modules: {llama: [...]}`).
    public var name: String
    /// Hugging Face `model_type` values.
    public var modelTypes: [String]
    /// GGUF `general.architecture` values.
    public var ggufArchitectures: [String]
    /// A model from named tensors (safetensors or a deployment's client file) and the
    /// config.json bytes; `serverModules` are absent from `source` (on a deployment's server).
    let loadTensors: @Sendable (_ source: TensorSource, _ config: Data, _ file: String, _ serverModules: Set<String>) throws -> TrainableModel
    /// A model from a GGUF file, its metadata giving the config.
    let loadGGUF: (@Sendable (_ file: GGUFFile, _ path: String) throws -> TrainableModel)?

    /// Every family nb runs: the registry.
    public static let all: [ModelFamily] = [.gpt2, .llama]

    /// The family of a config.json's `model_type`.
    public static func forModelType(_ type: String) -> ModelFamily? { all.first { $0.modelTypes.contains(type) } }

    /// The family of a GGUF's `general.architecture`.
    public static func forGGUF(_ architecture: String) -> ModelFamily? { all.first { $0.ggufArchitectures.contains(architecture) } }

    /// Every model type nb loads, for error messages.
    public static var supportedModelTypes: String { all.flatMap(\.modelTypes).joined(separator: ", ") }

    /// Loads a checkpoint of the family whose `model_type` config.json gives.
    public static func load(tensors source: TensorSource, config: Data, configFile: String, file: String,
                            serverModules: Set<String> = []) throws -> TrainableModel {
        let header = try? JSONSerialization.jsonObject(with: config) as? [String: Any]
        guard let header else { throw ModelLoadError.badConfig(file: configFile, key: "config.json", message: "is not a JSON object") }
        let type = header["model_type"] as? String ?? "?"
        guard let family = forModelType(type) else { throw ModelLoadError.unsupportedArchitecture(file: configFile, architecture: type) }
        return try decodingConfig(file: configFile) { try family.loadTensors(source, config, file, serverModules) }
    }

    /// A config decoded from config.json bytes, its errors naming the key (``ModelLoadError/badConfig(file:key:message:)``).
    public static func decodeConfig<C: Decodable>(_ type: C.Type, from data: Data, file: String) throws -> C {
        try decodingConfig(file: file) { try JSONDecoder().decode(C.self, from: data) }
    }

    /// Runs `body`, turning config decoding errors into ``ModelLoadError/badConfig(file:key:message:)`` naming the key.
    static func decodingConfig<T>(file: String, _ body: () throws -> T) throws -> T {
        do { return try body() } catch let e as ConfigKeyError {
            throw ModelLoadError.badConfig(file: file, key: e.key, message: e.message)
        } catch let e as DecodingError {
            switch e {
            case .keyNotFound(let key, let context):
                throw ModelLoadError.badConfig(file: file, key: (context.codingPath + [key]).map(\.stringValue).joined(separator: "."), message: "is missing")
            case .typeMismatch(_, let context), .valueNotFound(_, let context), .dataCorrupted(let context):
                throw ModelLoadError.badConfig(file: file, key: context.codingPath.map(\.stringValue).joined(separator: ".").nonEmpty ?? "config",
                                               message: context.debugDescription)
            @unknown default: throw ModelLoadError.badConfig(file: file, key: "config", message: "\(e)")
            }
        }
    }
}

extension String {
    var nonEmpty: String? { isEmpty ? nil : self }
}

/// What every family's model offers to training, generation, the hybrid split and deployment.
extension TrainableModel {
    /// The family this model belongs to.
    public var family: ModelFamily? { ModelFamily.forModelType(architecture) }
}
