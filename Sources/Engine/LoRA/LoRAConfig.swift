import Foundation

/// Which linear layers get a LoRA adapter, as PEFT's `target_modules`.
public enum LoRATargets: Equatable, Hashable, Sendable {
    /// Module-name suffixes (`["c_attn"]`, `["q_proj", "v_proj"]`) or full names; a module is
    /// selected when its name equals an entry or ends with `"." + entry`.
    case modules([String])
    /// Every linear layer except the lm_head (PEFT's `"all-linear"`).
    case allLinear
    /// A regular expression that must match a module's whole name (PEFT's `target_modules`
    /// given as one string other than `"all-linear"`, e.g. `.*\\.(q|v)_proj`).
    case pattern(String)

    /// Parses the notebook spelling: `all-linear` (or `all_linear`), `/regex/` (a regular
    /// expression the whole module name must match), else a comma-separated list of names
    /// (`q_proj,v_proj`); blanks around names are dropped.
    public init(parsing text: String) {
        let t = text.trimmingCharacters(in: .whitespaces)
        if ["all-linear", "all_linear"].contains(t.lowercased()) {
            self = .allLinear
        } else if t.count > 2, t.hasPrefix("/"), t.hasSuffix("/") {
            self = .pattern(String(t.dropFirst().dropLast()))
        } else {
            self = .modules(t.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
        }
    }

    /// The notebook spelling: `all-linear` or the names joined by commas.
    public var description: String {
        switch self {
        case .allLinear: return "all-linear"
        case .pattern(let p): return "/\(p)/"
        case .modules(let names): return names.joined(separator: ",")
        }
    }
}

extension LoRATargets: Codable {
    private struct Pattern: Codable { var regex: String }

    /// An array of names, a string in the notebook spelling (``init(parsing:)``), or
    /// `{"regex": "..."}` for ``pattern(_:)``.
    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let names = try? c.decode([String].self) {
            self = .modules(names)
        } else if let p = try? c.decode(Pattern.self) {
            self = .pattern(p.regex)
        } else {
            self = LoRATargets(parsing: try c.decode(String.self))
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .allLinear: try c.encode("all-linear")
        case .pattern(let p): try c.encode(Pattern(regex: p))
        case .modules(let names): try c.encode(names)
        }
    }
}

/// LoRA hyperparameters, with PEFT's meaning (LoraConfig with `bias="none"`,
/// `init_lora_weights=True`, no rsLoRA/DoRA):
///
///     h = x·Wᵀ + s · dropout(x)·Aᵀ·Bᵀ,   s = alpha / rank
///
/// with A (rank, in) drawn from U(−1/√in, 1/√in) and B (out, rank) zero, so training starts
/// from the base model exactly.
public struct LoRAConfig: Codable, Equatable, Sendable {
    /// r > 0.
    public var rank: Int
    /// lora_alpha; the update is scaled by alpha / rank.
    public var alpha: Double
    /// Probability in [0, 1) of zeroing an input value of the adapter (inverted dropout).
    public var dropout: Double
    public var targets: LoRATargets
    /// Seeds A's initialisation and the dropout masks.
    public var seed: UInt64

    public init(rank: Int = 8, alpha: Double = 32, dropout: Double = 0.1, targets: LoRATargets, seed: UInt64 = 0) {
        (self.rank, self.alpha, self.dropout, self.targets, self.seed) = (rank, alpha, dropout, targets, seed)
    }

    /// s = alpha / rank.
    public var scale: Double { alpha / Double(rank) }

    /// Checks rank, alpha, dropout and that the target list is usable.
    public func validate() throws(LoRAError) {
        guard rank > 0 else { throw .invalidRank(rank) }
        guard alpha.isFinite, alpha > 0 else { throw .invalidAlpha(alpha) }
        guard dropout.isFinite, dropout >= 0, dropout < 1 else { throw .invalidDropout(dropout) }
        if case .modules(let names) = targets {
            guard !names.isEmpty else { throw .noTargetModules }
            if let blank = names.first(where: { $0.trimmingCharacters(in: .whitespaces).isEmpty }) {
                throw .unknownTargetModule(target: blank, available: [])
            }
        }
    }

    /// The modules the targets select, in model order. Every listed name must select at least
    /// one module (PEFT only fails when none matches; a typo in one of two names is an error here).
    public func resolveTargets(in modules: [LinearModule]) throws(LoRAError) -> [LinearModule] {
        try validate()
        let available = modules.map(\.name)
        switch targets {
        case .allLinear:
            return modules
        case .pattern(let p):
            guard LoRATargets.fullMatchRegex(p) != nil else { throw .unknownTargetModule(target: p, available: available) }
        case .modules(let names):
            for name in names where !modules.contains(where: { $0.matches(target: name) }) {
                throw .unknownTargetModule(target: name, available: available)
            }
        }
        let selected = modules.filter(targets.selects)
        if selected.isEmpty { throw .unknownTargetModule(target: targets.description, available: available) }
        return selected
    }
}

extension LoRATargets {
    /// Whether PEFT would put an adapter on `module` (lenient: unknown names are ignored).
    public func selects(_ module: LinearModule) -> Bool {
        switch self {
        case .allLinear: return true
        case .modules(let names): return names.contains { module.matches(target: $0) }
        case .pattern(let p):
            guard let regex = Self.fullMatchRegex(p) else { return false }
            return regex.firstMatch(in: module.name, range: NSRange(module.name.startIndex..., in: module.name)) != nil
        }
    }

    /// `p` anchored at both ends, like Python's `re.fullmatch`; nil when it does not compile.
    static func fullMatchRegex(_ p: String) -> NSRegularExpression? {
        try? NSRegularExpression(pattern: "^(?:" + p + ")$")
    }
}
