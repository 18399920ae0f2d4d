import Foundation
import Yams

/// Decodes a cell's YAML body into a step's parameter struct, turning every YAML, key,
/// type and range problem into a ``NotebookError`` that names `file:line` and the key.
enum ParameterDecoder {
    // Yams's defaults are computed on every use (`Parser.Encoding.default` reads the whole
    // environment): build them once.
    nonisolated(unsafe) static let resolver = Resolver.default
    nonisolated(unsafe) static let constructor = Constructor.default
    nonisolated(unsafe) static let decoder = YAMLDecoder(encoding: .utf8)

    static func decode<P: StepParameters>(
        _ type: P.Type, step: String, body: String, cell: CellSource, file: String
    ) throws(NotebookError) -> P {
        let fence = SourceLocation(file: file, line: cell.fenceLine)
        func location(_ node: Node?) -> SourceLocation {
            guard let mark = node?.mark else { return fence }
            return SourceLocation(file: file, line: cell.bodyStartLine + mark.line - 1)
        }

        let root = try parseMapping(body, step: step, cell: cell, file: file)
        var keyNodes: [String: Node] = [:]
        var valueNodes: [String: Node] = [:]
        let known = P.knownKeys
        for (keyNode, valueNode) in root.mapping ?? [:] {
            guard let key = keyNode.string else {
                throw .badYAML(location(keyNode), message: "keys must be plain names")
            }
            guard known.contains(key) else {
                throw .unknownKey(location(keyNode), key: key, step: step, known: known)
            }
            keyNodes[key] = keyNode
            valueNodes[key] = valueNode
        }

        let parameters: P
        do {
            parameters = try decoder.decode(P.self, from: root)
        } catch let error as DecodingError {
            throw map(error, step: step, fence: fence, keyLocation: { location(keyNodes[$0]) },
                      foundValue: { valueNodes[$0].map(describe) ?? "nothing" })
        } catch {
            throw .badYAML(fence, message: "\(error)")
        }
        do {
            try parameters.validate()
        } catch {
            throw .invalidValue(location(keyNodes[error.key]), key: error.key, message: error.message)
        }
        return parameters
    }

    /// Parses a body that must be a mapping (an empty body is an empty mapping).
    static func parseMapping(_ body: String, step: String, cell: CellSource, file: String) throws(NotebookError) -> Node {
        let fence = SourceLocation(file: file, line: cell.fenceLine)
        let node: Node?
        do {
            node = try Yams.compose(yaml: body, resolver, constructor, .utf8)
        } catch let error as YamlError {
            throw yamlError(error, cell: cell, file: file)
        } catch {
            throw .badYAML(fence, message: "\(error)")
        }
        guard let node else { return Node.mapping(Node.Mapping([])) }
        guard node.mapping != nil else {
            let line = node.mark.map { cell.bodyStartLine + $0.line - 1 } ?? cell.fenceLine
            throw .notAMapping(SourceLocation(file: file, line: line), step: step)
        }
        return node
    }

    static func yamlError(_ error: YamlError, cell: CellSource, file: String) -> NotebookError {
        switch error {
        case .scanner(let context, let problem, let mark, _),
             .parser(let context, let problem, let mark, _),
             .composer(let context, let problem, let mark, _):
            let detail = [context?.text, problem].compactMap { $0 }.filter { !$0.isEmpty }.joined(separator: ": ")
            return .badYAML(SourceLocation(file: file, line: cell.bodyStartLine + mark.line - 1), message: detail)
        case .duplicatedKeysInMapping(let duplicates, let context):
            let line = cell.bodyStartLine + context.mark.line - 1
            return .badYAML(SourceLocation(file: file, line: line), message: "duplicate key \(duplicates.joined(separator: ", "))")
        default:
            return .badYAML(SourceLocation(file: file, line: cell.fenceLine), message: "\(error)")
        }
    }

    private static func map(
        _ error: DecodingError, step: String, fence: SourceLocation,
        keyLocation: (String) -> SourceLocation, foundValue: (String) -> String
    ) -> NotebookError {
        func key(_ path: [CodingKey]) -> String { path.map(\.stringValue).joined(separator: ".") }
        switch error {
        case .typeMismatch(let type, let context), .valueNotFound(let type, let context):
            let k = key(context.codingPath)
            let top = context.codingPath.first?.stringValue ?? k
            return .wrongType(keyLocation(top), key: k, expected: friendly(type), found: foundValue(top))
        case .keyNotFound(let missing, let context):
            return .missingKey(fence, key: key(context.codingPath + [missing]), step: step)
        case .dataCorrupted(let context):
            let top = context.codingPath.first?.stringValue ?? ""
            return .invalidValue(keyLocation(top), key: key(context.codingPath), message: context.debugDescription)
        @unknown default:
            return .badYAML(fence, message: "\(error)")
        }
    }

    static func friendly(_ type: Any.Type) -> String {
        switch type {
        case is Int.Type, is Int32.Type, is Int64.Type, is UInt64.Type: return "an integer"
        case is Double.Type, is Float.Type: return "a number"
        case is String.Type: return "a string"
        case is Bool.Type: return "true or false"
        default:
            let name = String(describing: type)
            // Yams reports a list or mapping where a scalar belongs as a `Node.Scalar` mismatch.
            if name.hasSuffix("Scalar") { return "a single value" }
            if name.hasPrefix("Array") { return "a list" }
            if name.hasPrefix("Dictionary") { return "a mapping" }
            return name
        }
    }

    static func describe(_ node: Node) -> String {
        switch node {
        case .scalar(let s): return "'\(s.string)'"
        case .sequence: return "a list"
        case .mapping: return "a mapping"
        case .alias: return "an alias"
        }
    }
}

extension KeyedDecodingContainer {
    /// Decodes a string-backed enum, with an error that lists the accepted values.
    public func decodeChoice<T: RawRepresentable & CaseIterable>(_ type: T.Type, forKey key: Key) throws -> T? where T.RawValue == String {
        guard let raw = try decodeIfPresent(String.self, forKey: key) else { return nil }
        guard let value = T(rawValue: raw) else {
            throw DecodingError.dataCorrupted(.init(
                codingPath: codingPath + [key],
                debugDescription: "'\(raw)' is not one of \(T.allCases.map { $0.rawValue }.joined(separator: ", "))"))
        }
        return value
    }
}

/// Any key of a mapping, to see the keys a nested parameter struct does not know.
struct AnyCodingKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

extension Decoder {
    /// Throws for a key of this mapping that is not in `Keys` (nested parameter structs;
    /// the top level of a cell is checked by the decoder itself).
    func rejectUnknownKeys<Keys: CodingKey & CaseIterable>(_: Keys.Type) throws {
        let all = try container(keyedBy: AnyCodingKey.self)
        let known = Keys.allCases.map(\.stringValue)
        for key in all.allKeys where !known.contains(key.stringValue) {
            throw DecodingError.dataCorrupted(.init(
                codingPath: codingPath + [key],
                debugDescription: "unknown key '\(key.stringValue)'; this mapping takes \(known.joined(separator: ", "))"))
        }
    }
}
