import Foundation

/// A causal language model that runs token ids to next-token logits.
public protocol LanguageModel: AnyObject {
    var architecture: String { get }
    var vocabularySize: Int { get }
    var contextLength: Int { get }
    var layerCount: Int { get }
    var hiddenSize: Int { get }
    /// Parameters as stored (tied embeddings counted once).
    var parameterCount: Int { get }
    /// Decode one token at a time through compact (half-precision or stored GGUF) copies of
    /// the weights — bound by memory bandwidth, 2–3× faster, about 1e-4 of the logit range
    /// off — rather than on the exact Float32 path.
    var compactDecode: Bool { get set }

    /// An empty cache sized for `capacity` tokens.
    func makeCache(capacity: Int) -> KVCache

    /// Runs `tokens` at positions `cache.length ..< cache.length + tokens.count`, appends
    /// their keys and values to the cache, and returns logits: (tokens.count, vocab) when
    /// `allPositions`, else (1, vocab) for the last token.
    func forward(_ tokens: [Int], cache: KVCache, allPositions: Bool) -> [Float]
}

/// A model file whose tensors do not fit the architecture, or a bad configuration.
public enum ModelLoadError: Error, Equatable, CustomStringConvertible {
    case missingTensor(file: String, tensor: String)
    case unusedTensors(file: String, tensors: [String])
    case shapeMismatch(file: String, tensor: String, expected: [Int], found: [Int])
    case badConfig(file: String, key: String, message: String)
    case unsupportedArchitecture(file: String, architecture: String)
    case tokenOutOfRange(token: Int, vocabularySize: Int)

    public var description: String {
        switch self {
        case .missingTensor(let f, let t): return "\(f): tensor '\(t)' is missing"
        case .unusedTensors(let f, let ts):
            let shown = ts.prefix(5).joined(separator: ", ")
            return "\(f): \(ts.count) tensor\(ts.count == 1 ? "" : "s") not used by the model: \(shown)\(ts.count > 5 ? ", …" : "")"
        case .shapeMismatch(let f, let t, let e, let found):
            return "\(f): tensor '\(t)' has shape \(found), expected \(e)"
        case .badConfig(let f, let k, let m): return "\(f): \(k): \(m)"
        case .unsupportedArchitecture(let f, let a): return "\(f): architecture '\(a)' is not supported (nb runs \(ModelFamily.supportedModelTypes))"
        case .tokenOutOfRange(let t, let v): return "token id \(t) is outside the vocabulary (0..<\(v))"
        }
    }
}

/// Reads every tensor of a checkpoint at most once and checks that all were used, so a
/// checkpoint for another model is an error, not a silent partial load.
struct StrictTensorLoader {
    let source: TensorSource
    let file: String
    private(set) var used = Set<String>()

    init(source: TensorSource, file: String) {
        self.source = source
        self.file = file
    }

    mutating func tensor(_ name: String, shape expected: [Int]) throws -> [Float] {
        guard let shape = source.shape(of: name) else { throw ModelLoadError.missingTensor(file: file, tensor: name) }
        // A (n) vector may be stored as (1, n); compare element layouts.
        guard shape == expected || shape.filter({ $0 != 1 }) == expected.filter({ $0 != 1 }) && shape.reduce(1, *) == expected.reduce(1, *) else {
            throw ModelLoadError.shapeMismatch(file: file, tensor: name, expected: expected, found: shape)
        }
        used.insert(name)
        return try source.finiteFloat32(name)
    }

    func has(_ name: String) -> Bool { source.shape(of: name) != nil }

    /// Marks tensors the model deliberately does not need (e.g. GPT-2's causal-mask buffers).
    mutating func ignore(where predicate: (String) -> Bool) {
        for n in source.tensorNames where predicate(n) { used.insert(n) }
    }

    func checkAllUsed() throws {
        let unused = source.tensorNames.filter { !used.contains($0) }
        if !unused.isEmpty { throw ModelLoadError.unusedTensors(file: file, tensors: unused.sorted()) }
    }
}
