import Foundation
import Yams

/// The `nb parameters` cell: declares the notebook's parameters and their defaults,
/// papermill-style. Other cells use them as `${name}`; `--param name=value` overrides.
///
/// ```nb parameters
/// epochs: 20
/// mode: disable
/// ```
///
/// It must be the first step cell. Values are scalars; they are substituted into the
/// other cells' YAML text before it is parsed, so `epochs: ${epochs}` is an integer.
public enum ParametersCell {
    public static let stepName = "parameters"

    /// Name → default value, in the order declared.
    public static func declarations(_ cell: CellSource, file: String) throws(NotebookError) -> [(name: String, value: String, line: Int)] {
        let root = try ParameterDecoder.parseMapping(cell.body, step: stepName, cell: cell, file: file)
        var result: [(String, String, Int)] = []
        for (keyNode, valueNode) in root.mapping ?? [:] {
            let line = keyNode.mark.map { cell.bodyStartLine + $0.line - 1 } ?? cell.fenceLine
            let location = SourceLocation(file: file, line: line)
            guard let name = keyNode.string, isName(name) else {
                throw .badYAML(location, message: "parameter names are letters, digits and '_'")
            }
            guard case .scalar(let scalar) = valueNode else {
                throw .invalidValue(location, key: name, message: "a parameter's default must be a single value, not a list or mapping")
            }
            result.append((name, scalar.string, line))
        }
        return result
    }

    static func isName(_ s: String) -> Bool {
        guard let first = s.unicodeScalars.first, !CharacterSet.decimalDigits.contains(first) else { return false }
        return s.unicodeScalars.allSatisfy { $0.isASCII && (CharacterSet.alphanumerics.contains($0) || $0 == "_") }
    }

    /// Replaces every `${name}` in a cell body with the parameter's value; an unknown name is
    /// an error at its line.
    public static func substitute(_ body: String, parameters: [String: String], cell: CellSource, file: String) throws(NotebookError) -> String {
        guard body.contains("${") else { return body }
        var out = ""
        var lineOffset = 0
        var rest = Substring(body)
        while let open = rest.range(of: "${") {
            out += rest[..<open.lowerBound]
            lineOffset += rest[..<open.lowerBound].filter { $0 == "\n" }.count
            guard let close = rest[open.upperBound...].firstIndex(of: "}") else {
                throw .badYAML(SourceLocation(file: file, line: cell.bodyStartLine + lineOffset), message: "'${' without a closing '}'")
            }
            let name = String(rest[open.upperBound..<close])
            guard let value = parameters[name] else {
                throw .unknownParameter(SourceLocation(file: file, line: cell.bodyStartLine + lineOffset),
                                        name: name, declared: parameters.keys.sorted())
            }
            out += value
            rest = rest[rest.index(after: close)...]
        }
        return out + rest
    }
}
