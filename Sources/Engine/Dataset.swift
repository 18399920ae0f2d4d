import Foundation

/// One training example. For question/answer data `prompt` is the question and `text`
/// the answer; for prompt/completion pairs (`isCompletion`) the same two fields; for
/// causal-LM text data `prompt` is nil and `text` is the whole example; for a chat
/// conversation `messages` holds the turns and `text` a plain rendering for display.
public struct Example: Codable, Equatable, Sendable {
    public var prompt: String?
    public var text: String
    /// 1-based line in the source file where the example starts.
    public var line: Int
    /// A conversation (system/user/assistant turns): the loss is on the assistant turns.
    public var messages: [ChatTemplate.Message]?
    /// `prompt` + `text` is a prompt and its completion (no separator; the loss on the completion).
    public var isCompletion: Bool?

    public init(prompt: String? = nil, text: String, line: Int, messages: [ChatTemplate.Message]? = nil, isCompletion: Bool? = nil) {
        self.prompt = prompt
        self.text = text
        self.line = line
        self.messages = messages
        self.isCompletion = isCompletion
    }
}

/// How a data file is laid out.
public enum DatasetFormat: String, Codable, Sendable, CaseIterable {
    /// Question and answer lines alternating, one per line (the use case's `what_is_fhe.txt`).
    case qa
    /// One JSON object per line: `{"text": …}`, `{"prompt": …, "completion": …}`, or
    /// `{"messages": [{"role": "system"|"user"|"assistant", "content": …}, …]}`.
    case jsonl

    /// `.jsonl` files are JSON lines; everything else is read as question/answer lines.
    public static func guess(for url: URL) -> DatasetFormat {
        url.pathExtension.lowercased() == "jsonl" ? .jsonl : .qa
    }
}

/// A data set read and validated from a file.
public struct Dataset: Equatable, Sendable {
    public var format: DatasetFormat
    public var examples: [Example]

    public init(format: DatasetFormat, examples: [Example]) {
        self.format = format
        self.examples = examples
    }
}

/// A data file that cannot be used, with the file and line at fault.
public enum DatasetError: Error, Equatable, CustomStringConvertible {
    case notFound(path: String)
    case unreadable(path: String, reason: String)
    case notUTF8(path: String)
    case empty(path: String)
    case emptyLine(path: String, line: Int)
    case questionWithoutAnswer(path: String, line: Int)
    case badJSON(path: String, line: Int, reason: String)
    case missingText(path: String, line: Int)
    case badMessages(path: String, line: Int, reason: String)

    public var description: String {
        switch self {
        case .notFound(let p): return "\(p): no such file"
        case .unreadable(let p, let r): return "\(p): cannot read: \(r)"
        case .notUTF8(let p): return "\(p): not valid UTF-8 text"
        case .empty(let p): return "\(p): the data set is empty"
        case .emptyLine(let p, let l): return "\(p):\(l): empty line (question/answer files have one non-empty line per question and per answer)"
        case .questionWithoutAnswer(let p, let l): return "\(p):\(l): question without an answer (the file has an odd number of lines)"
        case .badJSON(let p, let l, let r): return "\(p):\(l): not a JSON object: \(r)"
        case .missingText(let p, let l): return "\(p):\(l): the JSON object has no string field \"text\" (nor \"messages\", nor \"prompt\" and \"completion\")"
        case .badMessages(let p, let l, let r): return "\(p):\(l): messages: \(r)"
        }
    }
}

extension Dataset {
    /// Reads and validates a data file. `displayPath` is how errors name the file.
    public static func load(from url: URL, format: DatasetFormat? = nil, displayPath: String? = nil) throws(DatasetError) -> Dataset {
        let shown = displayPath ?? url.path
        guard FileManager.default.fileExists(atPath: url.path) else { throw .notFound(path: shown) }
        let data: Data
        do { data = try Data(contentsOf: url) } catch { throw .unreadable(path: shown, reason: error.localizedDescription) }
        guard let text = String(data: data, encoding: .utf8) else { throw .notUTF8(path: shown) }
        return try parse(text, format: format ?? .guess(for: url), path: shown)
    }

    /// Parses data-file text; `path` is only used in error messages.
    public static func parse(_ text: String, format: DatasetFormat, path: String) throws(DatasetError) -> Dataset {
        // "\r\n" is a single Character in Swift: normalise line ends before splitting.
        var lines = text.replacingOccurrences(of: "\r\n", with: "\n")
            .split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        // One trailing newline (or several) ends the file; it is not an empty example.
        while let last = lines.last, last.allSatisfy(\.isWhitespace) { lines.removeLast() }
        guard !lines.isEmpty else { throw .empty(path: path) }
        var examples: [Example] = []
        switch format {
        case .qa:
            for (i, line) in lines.enumerated() where line.allSatisfy(\.isWhitespace) {
                throw .emptyLine(path: path, line: i + 1)
            }
            if lines.count % 2 == 1 { throw .questionWithoutAnswer(path: path, line: lines.count) }
            for i in stride(from: 0, to: lines.count, by: 2) {
                examples.append(Example(
                    prompt: lines[i].trimmingCharacters(in: .whitespaces),
                    text: lines[i + 1].trimmingCharacters(in: .whitespaces), line: i + 1))
            }
        case .jsonl:
            for (i, line) in lines.enumerated() {
                if line.allSatisfy(\.isWhitespace) { throw .emptyLine(path: path, line: i + 1) }
                let object: Any
                do {
                    object = try JSONSerialization.jsonObject(with: Data(line.utf8))
                } catch {
                    throw .badJSON(path: path, line: i + 1, reason: Self.describeJSONError(error))
                }
                guard let dict = object as? [String: Any] else {
                    throw .badJSON(path: path, line: i + 1, reason: "expected an object like {\"text\": \"...\"}")
                }
                if let raw = dict["messages"] {
                    let messages = try Self.messages(raw, path: path, line: i + 1)
                    examples.append(Example(text: messages.map { "\($0.role): \($0.content)" }.joined(separator: "\n"), line: i + 1, messages: messages))
                } else if dict["prompt"] != nil || dict["completion"] != nil {
                    guard let prompt = dict["prompt"] as? String, let completion = dict["completion"] as? String else {
                        throw .badJSON(path: path, line: i + 1, reason: "\"prompt\" and \"completion\" must both be strings")
                    }
                    guard !completion.isEmpty else { throw .badJSON(path: path, line: i + 1, reason: "\"completion\" is empty: nothing to learn") }
                    examples.append(Example(prompt: prompt, text: completion, line: i + 1, isCompletion: true))
                } else {
                    guard let value = dict["text"] as? String else { throw .missingText(path: path, line: i + 1) }
                    examples.append(Example(text: value, line: i + 1))
                }
            }
        }
        return Dataset(format: format, examples: examples)
    }

    /// The turns of a `messages` array: objects with a `role` (system, user, assistant) and a
    /// string `content`; a system turn only first; at least one assistant turn.
    static func messages(_ raw: Any, path: String, line: Int) throws(DatasetError) -> [ChatTemplate.Message] {
        guard let list = raw as? [Any], !list.isEmpty else { throw .badMessages(path: path, line: line, reason: "expected a non-empty array of {\"role\", \"content\"} objects") }
        var out: [ChatTemplate.Message] = []
        for (n, item) in list.enumerated() {
            guard let m = item as? [String: Any], let role = m["role"] as? String, let content = m["content"] as? String else {
                throw .badMessages(path: path, line: line, reason: "turn \(n + 1) is not an object with string \"role\" and \"content\"")
            }
            guard ["system", "user", "assistant"].contains(role) else {
                throw .badMessages(path: path, line: line, reason: "turn \(n + 1) has role '\(role)' (system, user or assistant)")
            }
            if role == "system" && n > 0 { throw .badMessages(path: path, line: line, reason: "turn \(n + 1): a system turn comes first or not at all") }
            out.append(ChatTemplate.Message(role: role, content: content))
        }
        guard out.contains(where: { $0.role == "assistant" }) else {
            throw .badMessages(path: path, line: line, reason: "no assistant turn: nothing to learn")
        }
        return out
    }

    private static func describeJSONError(_ error: Error) -> String {
        let ns = error as NSError
        if let detail = ns.userInfo[NSDebugDescriptionErrorKey] as? String { return detail }
        return "invalid JSON"
    }
}

/// Simple size statistics of a list of lengths.
public struct LengthStatistics: Codable, Equatable, Sendable {
    public var count: Int
    public var min: Int
    public var max: Int
    public var mean: Double
    public var median: Double

    public init(_ values: [Int]) {
        precondition(!values.isEmpty, "LengthStatistics needs at least one value")
        let sorted = values.sorted()
        count = values.count
        min = sorted.first!
        max = sorted.last!
        mean = Double(values.reduce(0, +)) / Double(values.count)
        let mid = sorted.count / 2
        median = sorted.count % 2 == 1 ? Double(sorted[mid]) : Double(sorted[mid - 1] + sorted[mid]) / 2
    }
}
