import Foundation

/// A place in a notebook: its path as the user gave it and a 1-based line.
public struct SourceLocation: Equatable, Sendable, Codable, CustomStringConvertible {
    public var file: String
    public var line: Int

    public init(file: String, line: Int) {
        self.file = file
        self.line = line
    }

    public var description: String { "\(file):\(line)" }
}

/// Everything that can be wrong with a notebook or its run, each naming the place at fault.
public enum NotebookError: Error, Equatable, CustomStringConvertible {
    case notebookNotFound(path: String)
    case notebookUnreadable(path: String, reason: String)
    case badCellHeader(SourceLocation, message: String)
    case duplicateCellID(SourceLocation, id: String, firstLine: Int)
    case unknownStep(SourceLocation, name: String, known: [String])
    case badYAML(SourceLocation, message: String)
    case notAMapping(SourceLocation, step: String)
    case unknownKey(SourceLocation, key: String, step: String, known: [String])
    case missingKey(SourceLocation, key: String, step: String)
    case wrongType(SourceLocation, key: String, expected: String, found: String)
    case invalidValue(SourceLocation, key: String, message: String)
    case unknownParameter(SourceLocation, name: String, declared: [String])
    case parametersCellMisplaced(SourceLocation)
    case unknownParameterOverride(name: String, declared: [String])
    case badParameterOverride(String)
    case unknownCell(String, known: [String])
    case stepFailed(SourceLocation, step: String, message: String)
    case interrupted

    public var description: String {
        switch self {
        case .notebookNotFound(let p): return "\(p): no such notebook"
        case .notebookUnreadable(let p, let r): return "\(p): cannot read: \(r)"
        case .badCellHeader(let loc, let m): return "\(loc): \(m)"
        case .duplicateCellID(let loc, let id, let first):
            return "\(loc): cell id '\(id)' is already used by the cell on line \(first)"
        case .unknownStep(let loc, let name, let known):
            return "\(loc): unknown step '\(name)'\(Self.suggestion(name, known)); known steps: \(known.joined(separator: ", "))"
        case .badYAML(let loc, let m): return "\(loc): invalid YAML: \(m)"
        case .notAMapping(let loc, let step): return "\(loc): the body of a '\(step)' cell must be a YAML mapping of key: value lines"
        case .unknownKey(let loc, let key, let step, let known):
            return "\(loc): unknown key '\(key)' for step '\(step)'\(Self.suggestion(key, known)); known keys: \(known.joined(separator: ", "))"
        case .missingKey(let loc, let key, let step): return "\(loc): step '\(step)' needs the key '\(key)'"
        case .wrongType(let loc, let key, let expected, let found):
            return "\(loc): key '\(key)': expected \(expected), found \(found)"
        case .invalidValue(let loc, let key, let m): return "\(loc): key '\(key)': \(m)"
        case .unknownParameter(let loc, let name, let declared):
            return "\(loc): unknown notebook parameter '${\(name)}'; declared: \(declared.isEmpty ? "none (declare them in an `nb parameters` cell)" : declared.joined(separator: ", "))"
        case .parametersCellMisplaced(let loc):
            return "\(loc): the `nb parameters` cell must be the first step cell, and there can be only one"
        case .unknownParameterOverride(let name, let declared):
            return "--param \(name): the notebook declares no parameter '\(name)'; declared: \(declared.isEmpty ? "none" : declared.joined(separator: ", "))"
        case .badParameterOverride(let s): return "--param \(s): expected key=value"
        case .unknownCell(let s, let known): return "no cell '\(s)'; cells: \(known.joined(separator: ", "))"
        case .stepFailed(let loc, let step, let m): return "\(loc): \(step) failed: \(m)"
        case .interrupted: return "interrupted"
        }
    }

    /// The source location the error points at, when it has one.
    public var location: SourceLocation? {
        switch self {
        case .badCellHeader(let l, _), .duplicateCellID(let l, _, _), .unknownStep(let l, _, _),
             .badYAML(let l, _), .notAMapping(let l, _), .unknownKey(let l, _, _, _),
             .missingKey(let l, _, _), .wrongType(let l, _, _, _), .invalidValue(let l, _, _),
             .unknownParameter(let l, _, _), .parametersCellMisplaced(let l), .stepFailed(let l, _, _):
            return l
        default: return nil
        }
    }

    /// ", did you mean 'x'?" when one known name is close to the given one.
    static func suggestion(_ given: String, _ known: [String]) -> String {
        let best = known.map { ($0, editDistance(given.lowercased(), $0.lowercased())) }.min { $0.1 < $1.1 }
        guard let (name, distance) = best, distance <= max(2, given.count / 3) else { return "" }
        return " (did you mean '\(name)'?)"
    }

    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        if a.isEmpty { return b.count }
        var previous = Array(0...b.count)
        for i in 1...a.count {
            var current = [i] + Array(repeating: 0, count: b.count)
            for j in 1...max(b.count, 1) where j <= b.count {
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            previous = current
        }
        return previous[b.count]
    }
}
