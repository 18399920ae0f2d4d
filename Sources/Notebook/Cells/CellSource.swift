import Foundation

/// The options of a step cell's info string: ```` ```nb <step> [id=NAME] [skip] [cache=false] ````.
public struct CellHeader: Equatable, Sendable, Codable {
    public var step: String
    public var id: String?
    public var skip: Bool = false
    public var cache: Bool = true

    /// Parses an info string that starts with the word `nb`.
    static func parse(_ info: String, at location: SourceLocation) throws(NotebookError) -> CellHeader {
        let words = info.split(whereSeparator: \.isWhitespace).map(String.init)
        precondition(words.first == "nb", "not a step cell: \(info)")
        guard words.count >= 2, !words[1].contains("=") else {
            throw .badCellHeader(location, message: "a step cell starts with ```nb <step>, e.g. ```nb load_data")
        }
        var header = CellHeader(step: words[1])
        for word in words.dropFirst(2) {
            // Empty pieces kept: a lone "=" is the unknown option '' (found by the fuzzer: it trapped).
            let parts = word.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            let (key, value) = (parts[0], parts.count > 1 ? parts[1] : nil)
            switch key {
            case "id":
                guard let value, !value.isEmpty,
                      value.unicodeScalars.allSatisfy({ $0.isASCII && (CharacterSet.alphanumerics.contains($0) || "-_.".unicodeScalars.contains($0)) }),
                      Int(value) == nil
                else {
                    throw .badCellHeader(location, message: "id=\(value ?? ""): a cell id is letters, digits, '-', '_' or '.', and not only digits")
                }
                header.id = value
            case "skip":
                guard let flag = try Self.flag(value, key: key, location: location) else { header.skip = true; break }
                header.skip = flag
            case "cache":
                guard let flag = try Self.flag(value, key: key, location: location) else {
                    throw .badCellHeader(location, message: "cache needs a value: cache=false or cache=true")
                }
                header.cache = flag
            default:
                throw .badCellHeader(location, message: "unknown cell option '\(key)'; options are id=NAME, skip, cache=false")
            }
        }
        return header
    }

    private static func flag(_ value: String?, key: String, location: SourceLocation) throws(NotebookError) -> Bool? {
        switch value {
        case nil: return nil
        case "true", "yes": return true
        case "false", "no": return false
        case let v?: throw .badCellHeader(location, message: "\(key)=\(v): expected true or false")
        }
    }
}

/// A step cell as written in the notebook, before its body is decoded.
public struct CellSource: Equatable, Sendable, Codable {
    /// 0-based position among the notebook's step cells.
    public var index: Int
    public var header: CellHeader
    /// Line of the opening fence; the body starts on the next line.
    public var fenceLine: Int
    public var endLine: Int
    /// The YAML body, exactly as written.
    public var body: String

    public var bodyStartLine: Int { fenceLine + 1 }
    /// The name `--cell` takes: the id, or the 1-based number when there is none.
    public var name: String { header.id ?? String(index + 1) }
    /// What the report and the terminal call the cell.
    public var title: String { header.id.map { "\(header.step) · \($0)" } ?? header.step }
}

/// A notebook's blocks in order: Markdown shown in the report, step cells run.
public enum NotebookBlock: Equatable, Sendable {
    case markdown(MarkdownBlock)
    case cell(CellSource)
}

/// A parsed notebook file.
public struct NotebookSource: Sendable {
    public var url: URL
    /// The path as the user gave it, used in messages.
    public var displayPath: String
    public var blocks: [NotebookBlock]
    /// Problems with cell headers (bad options, duplicate ids). The notebook is still
    /// returned whole so the report can show every cell; a run refuses to start.
    public var errors: [NotebookError] = []

    public var cells: [CellSource] {
        blocks.compactMap { if case .cell(let c) = $0 { return c } else { return nil } }
    }

    /// The first level-1 heading, else the file name.
    public var title: String {
        for case .markdown(let b) in blocks where b.kind == .heading && b.headingLevel == 1 { return b.headingText }
        return url.deletingPathExtension().lastPathComponent
    }

    public var name: String { url.deletingPathExtension().lastPathComponent }

    /// - Parameter strict: throw the first cell-header problem; when false the problems are
    ///   collected in ``errors`` and every cell is kept.
    public static func load(_ url: URL, displayPath: String? = nil, allowRawHTML: Bool = false, strict: Bool = true) throws(NotebookError) -> NotebookSource {
        let shown = displayPath ?? url.path
        guard FileManager.default.fileExists(atPath: url.path) else { throw .notebookNotFound(path: shown) }
        let text: String
        do { text = try String(contentsOf: url, encoding: .utf8) } catch {
            throw .notebookUnreadable(path: shown, reason: "not UTF-8 text or not readable")
        }
        let source = parseCollectingErrors(text, url: url, displayPath: shown, allowRawHTML: allowRawHTML)
        if strict, let first = source.errors.first { throw first }
        return source
    }

    /// Splits Markdown into blocks; fenced blocks whose info string's first word is `nb`
    /// become step cells, every other block is kept for display.
    public static func parse(_ text: String, url: URL, displayPath: String, allowRawHTML: Bool = false) throws(NotebookError) -> NotebookSource {
        let source = parseCollectingErrors(text, url: url, displayPath: displayPath, allowRawHTML: allowRawHTML)
        if let first = source.errors.first { throw first }
        return source
    }

    /// Like ``parse(_:url:displayPath:allowRawHTML:)``, collecting cell-header problems in ``errors``.
    public static func parseCollectingErrors(_ text: String, url: URL, displayPath: String, allowRawHTML: Bool = false) -> NotebookSource {
        var blocks: [NotebookBlock] = []
        var errors: [NotebookError] = []
        var cellIndex = 0
        var idLines: [String: Int] = [:]
        for block in MarkdownDocument.parse(text, allowRawHTML: allowRawHTML) {
            let firstWord = block.info.split(whereSeparator: \.isWhitespace).first
            guard block.kind == .codeBlock, firstWord == "nb" else {
                blocks.append(.markdown(block))
                continue
            }
            let location = SourceLocation(file: displayPath, line: block.startLine)
            var header: CellHeader
            do {
                header = try CellHeader.parse(block.info, at: location)
            } catch {
                errors.append(error)
                let words = block.info.split(whereSeparator: \.isWhitespace)
                header = CellHeader(step: words.count > 1 ? String(words[1]) : "(no step)")
            }
            if let id = header.id {
                if let first = idLines[id] {
                    errors.append(.duplicateCellID(location, id: id, firstLine: first))
                    header.id = nil
                } else {
                    idLines[id] = block.startLine
                }
            }
            blocks.append(.cell(CellSource(
                index: cellIndex, header: header, fenceLine: block.startLine,
                endLine: block.endLine, body: block.literal)))
            cellIndex += 1
        }
        return NotebookSource(url: url, displayPath: displayPath, blocks: blocks, errors: errors)
    }

    /// Finds a cell by id or by 1-based number.
    public func cell(named name: String) throws(NotebookError) -> CellSource {
        if let c = cells.first(where: { $0.header.id == name }) { return c }
        if let n = Int(name), n >= 1, n <= cells.count { return cells[n - 1] }
        throw .unknownCell(name, known: cells.map(\.name))
    }
}

extension NotebookSource {
    /// One line per block with its kind and source lines: what the golden parse tests compare.
    public func outline() -> String {
        blocks.map { block -> String in
            switch block {
            case .markdown(let b):
                var line = "markdown \(b.kind.rawValue) lines \(b.startLine)-\(b.endLine)"
                if b.kind == .heading { line += " level=\(b.headingLevel) anchor=\(b.anchor) text=\(b.headingText.debugDescription)" }
                if b.kind == .codeBlock { line += " info=\(b.info.debugDescription)" }
                return line
            case .cell(let c):
                var line = "cell #\(c.index + 1) \(c.header.step)"
                if let id = c.header.id { line += " id=\(id)" }
                if c.header.skip { line += " skip" }
                if !c.header.cache { line += " cache=false" }
                line += " lines \(c.fenceLine)-\(c.endLine) body=\(c.body.debugDescription)"
                return line
            }
        }.joined(separator: "\n") + "\n"
    }
}
