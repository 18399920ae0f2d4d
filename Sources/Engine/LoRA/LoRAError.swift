import Foundation

/// A LoRA setting or adapter file that cannot be used. Every case names the value, key or
/// file at fault, so the CLI prints `description` as one line.
public enum LoRAError: Error, Equatable, CustomStringConvertible {
    case invalidRank(Int)
    case invalidAlpha(Double)
    case invalidDropout(Double)
    case noTargetModules
    /// `target` selects no linear layer; `available` lists the model's module names.
    case unknownTargetModule(target: String, available: [String])
    /// An `adapter_config.json` key that is missing, of the wrong type, or asks for a LoRA
    /// variant nb does not implement (DoRA, rsLoRA, bias training, rank patterns, …).
    case badAdapterConfig(path: String, key: String, message: String)
    /// A tensor-level problem in `adapter_model.safetensors` (missing, unused, wrong shape, I/O).
    case checkpoint(CheckpointError)
    case unwritable(path: String, reason: String)

    public var description: String {
        switch self {
        case .invalidRank(let r): return "LoRA rank r must be a positive integer, got \(r)"
        case .invalidAlpha(let a): return "LoRA alpha must be a positive number, got \(a)"
        case .invalidDropout(let p): return "LoRA dropout must be in [0, 1), got \(p)"
        case .noTargetModules: return "LoRA target_modules is empty (name modules like c_attn or q_proj,v_proj, or use all-linear)"
        case .unknownTargetModule: return describeUnknownTarget(as: "LoRA target module")
        case .badAdapterConfig(let p, let k, let m): return "\(p): \(k): \(m)"
        case .checkpoint(let e): return e.description
        case .unwritable(let p, let r): return "\(p): cannot write: \(r)"
        }
    }

    /// The unknown-target message, naming what the pattern was for (`LoRA target module`,
    /// `include pattern` of compile_hybrid, …).
    public func describeUnknownTarget(as role: String) -> String {
        switch self {
        case .unknownTargetModule(let t, let available):
            if available.isEmpty { return "\(role) '\(t)' is not a module name" }
            var bases: [String] = []
            for n in available {
                let b = String(n.split(separator: ".").last ?? "")
                if !bases.contains(b) { bases.append(b) }
            }
            let examples = available.prefix(bases.count).joined(separator: ", ")
            return "\(role) '\(t)' matches no linear layer of the model; its layers are \(bases.joined(separator: ", ")) (\(available.count) in all: \(examples), …), all-linear or a /regex/ of whole names"
        default: return description
        }
    }
}
