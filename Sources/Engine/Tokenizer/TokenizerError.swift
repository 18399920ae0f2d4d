/// A tokenizer file or vocabulary that cannot be used. `location` names the file, and
/// where it helps the line or entry at fault (`vocab.bpe:17`, `x.gguf: tokenizer.ggml.merges[3]`).
public enum TokenizerError: Error, Equatable, CustomStringConvertible {
    case notFound(path: String)
    case unreadable(path: String, reason: String)
    /// Not the expected JSON or structure (wrong types, ids with gaps or duplicates, …).
    case malformed(location: String, reason: String)
    /// A merge that is not two token strings separated by one space.
    case badMerge(location: String, merge: String)
    /// A merge whose parts, or whose result, are not in the vocabulary.
    case unknownMergeToken(location: String, merge: String, token: String)
    case unsupportedPreTokenizer(location: String, name: String, known: [String])

    public var description: String {
        switch self {
        case .notFound(let path):
            return "\(path): no such file (`make setup` downloads the tokenizer files into ~/.cache/nb)"
        case .unreadable(let path, let reason):
            return "\(path): cannot read: \(reason)"
        case .malformed(let location, let reason):
            return "\(location): \(reason)"
        case .badMerge(let location, let merge):
            return "\(location): merge \(Self.quoted(merge)) is not two tokens separated by one space"
        case .unknownMergeToken(let location, let merge, let token):
            return "\(location): merge \(Self.quoted(merge)) names \(Self.quoted(token)), which is not in the vocabulary"
        case .unsupportedPreTokenizer(let location, let name, let known):
            return "\(location): unsupported pre-tokenizer \(Self.quoted(name)) (supported: \(known.joined(separator: ", ")))"
        }
    }

    private static func quoted(_ s: String) -> String {
        "\"" + s.unicodeScalars.map { $0.escaped(asASCII: false) }.joined() + "\""
    }
}
