import CCmarkGFM
import Foundation

/// One top-level block of a Markdown notebook, copied out of cmark-gfm's tree.
///
/// The C tree is freed as soon as the document is parsed; these values hold everything
/// the runner and the report need: the kind, the source lines and the rendered HTML.
public struct MarkdownBlock: Equatable, Sendable, Codable {
    public enum Kind: String, Equatable, Sendable, Codable {
        case heading, paragraph, list, blockQuote = "block_quote", table, codeBlock = "code_block"
        case htmlBlock = "html_block", thematicBreak = "thematic_break", other
    }

    public var kind: Kind
    /// First and last source line, 1-based, inclusive.
    public var startLine: Int
    public var endLine: Int
    /// HTML as rendered by cmark-gfm (raw HTML shown as code unless allowed).
    public var html: String
    /// Heading level (1–6) for headings, else 0.
    public var headingLevel: Int = 0
    /// Plain text of a heading; the anchor id of the heading in `html`.
    public var headingText: String = ""
    public var anchor: String = ""
    /// For fenced code blocks: the info string and the literal body.
    public var info: String = ""
    public var literal: String = ""
}

/// Parses GitHub-flavoured Markdown (tables, strikethrough, autolinks, task lists) with
/// cmark-gfm and copies the top-level blocks into Swift values.
public enum MarkdownDocument {
    /// - Parameter allowRawHTML: pass raw HTML through to the output. Off by default: raw
    ///   HTML blocks and inline tags are then shown as code, escaped.
    public static func parse(_ source: String, allowRawHTML: Bool = false) -> [MarkdownBlock] {
        cmark_gfm_core_extensions_ensure_registered()
        var options = CMARK_OPT_DEFAULT
        if allowRawHTML { options |= CMARK_OPT_UNSAFE }
        guard let parser = cmark_parser_new(options) else { fatalError("cmark_parser_new failed") }
        defer { cmark_parser_free(parser) }
        for name in ["table", "strikethrough", "autolink", "tasklist"] {
            if let ext = cmark_find_syntax_extension(name) {
                cmark_parser_attach_syntax_extension(parser, ext)
            }
        }
        source.withCString { cmark_parser_feed(parser, $0, strlen($0)) }
        guard let root = cmark_parser_finish(parser) else { return [] }
        defer { cmark_node_free(root) }
        let replaced = allowRawHTML ? [:] : showRawHTMLAsCode(root)
        let extensions = cmark_parser_get_syntax_extensions(parser)

        var blocks: [MarkdownBlock] = []
        var usedAnchors = Set<String>()
        var node = cmark_node_first_child(root)
        while let current = node {
            var block = copyBlock(current, options: options, extensions: extensions, anchors: &usedAnchors)
            if let original = replaced[current] {
                block.kind = .htmlBlock
                (block.startLine, block.endLine) = (original.start, original.end)
            }
            blocks.append(block)
            node = cmark_node_next(current)
        }
        return blocks
    }

    private static func copyBlock(
        _ node: OpaquePointer, options: Int32, extensions: UnsafeMutablePointer<cmark_llist>?,
        anchors: inout Set<String>
    ) -> MarkdownBlock {
        let type = cmark_node_get_type(node)
        let typeName = cmark_node_get_type_string(node).map { String(cString: $0) } ?? ""
        var block = MarkdownBlock(
            kind: kind(of: type, typeName: typeName),
            startLine: Int(cmark_node_get_start_line(node)),
            endLine: Int(cmark_node_get_end_line(node)),
            html: render(node, options: options, extensions: extensions))
        switch block.kind {
        case .heading:
            block.headingLevel = Int(cmark_node_get_heading_level(node))
            block.headingText = plainText(of: node)
            // Cells own the `cell-…` anchors in the report; headings never take one.
            var base = slug(block.headingText)
            if base.hasPrefix("cell-") { base = "section-" + base }
            var candidate = base
            var n = 0
            while anchors.contains(candidate) {
                n += 1
                candidate = "\(base)-\(n)"
            }
            anchors.insert(candidate)
            block.anchor = candidate
            let tag = "<h\(block.headingLevel)"
            if let r = block.html.range(of: tag) {
                block.html.replaceSubrange(r, with: "\(tag) id=\"\(block.anchor)\"")
            }
        case .codeBlock:
            block.info = cmark_node_get_fence_info(node).map { String(cString: $0) } ?? ""
            block.literal = cmark_node_get_literal(node).map { String(cString: $0) } ?? ""
        default:
            break
        }
        return block
    }

    private static func kind(of type: cmark_node_type, typeName: String) -> MarkdownBlock.Kind {
        switch type {
        case CMARK_NODE_HEADING: return .heading
        case CMARK_NODE_PARAGRAPH: return .paragraph
        case CMARK_NODE_LIST: return .list
        case CMARK_NODE_BLOCK_QUOTE: return .blockQuote
        case CMARK_NODE_CODE_BLOCK: return .codeBlock
        case CMARK_NODE_HTML_BLOCK: return .htmlBlock
        case CMARK_NODE_THEMATIC_BREAK: return .thematicBreak
        default: return typeName == "table" ? .table : .other
        }
    }

    private static func render(_ node: OpaquePointer, options: Int32, extensions: UnsafeMutablePointer<cmark_llist>?) -> String {
        guard let html = cmark_render_html(node, options, extensions) else { return "" }
        defer { free(html) }
        return String(cString: html)
    }

    /// The text of a node with all markup removed.
    static func plainText(of node: OpaquePointer) -> String {
        var text = ""
        guard let iter = cmark_iter_new(node) else { return text }
        defer { cmark_iter_free(iter) }
        while true {
            let event = cmark_iter_next(iter)
            if event == CMARK_EVENT_DONE { break }
            guard event == CMARK_EVENT_ENTER, let n = cmark_iter_get_node(iter) else { continue }
            let t = cmark_node_get_type(n)
            if t == CMARK_NODE_TEXT || t == CMARK_NODE_CODE, let lit = cmark_node_get_literal(n) {
                text += String(cString: lit)
            } else if t == CMARK_NODE_SOFTBREAK || t == CMARK_NODE_LINEBREAK {
                text += " "
            }
        }
        return text
    }

    /// A URL fragment for a heading: lowercase letters and digits, other runs as `-`.
    public static func slug(_ text: String) -> String {
        var out = ""
        var pendingDash = false
        for scalar in text.lowercased().unicodeScalars {
            if CharacterSet.alphanumerics.contains(scalar) && scalar.isASCII {
                if pendingDash && !out.isEmpty { out += "-" }
                pendingDash = false
                out.unicodeScalars.append(scalar)
            } else {
                pendingDash = true
            }
        }
        return out.isEmpty ? "section" : out
    }

    /// Replaces raw HTML nodes with code nodes holding the same text, so the report shows
    /// them escaped rather than dropping or executing them.
    /// Returns the source lines of each replaced node, which the new nodes lack.
    private static func showRawHTMLAsCode(_ root: OpaquePointer) -> [OpaquePointer: (start: Int, end: Int)] {
        var lines: [OpaquePointer: (start: Int, end: Int)] = [:]
        var rawNodes: [OpaquePointer] = []
        if let iter = cmark_iter_new(root) {
            while true {
                let event = cmark_iter_next(iter)
                if event == CMARK_EVENT_DONE { break }
                guard event == CMARK_EVENT_ENTER, let n = cmark_iter_get_node(iter) else { continue }
                let t = cmark_node_get_type(n)
                if t == CMARK_NODE_HTML_BLOCK || t == CMARK_NODE_HTML_INLINE { rawNodes.append(n) }
            }
            cmark_iter_free(iter)
        }
        for n in rawNodes {
            let isBlock = cmark_node_get_type(n) == CMARK_NODE_HTML_BLOCK
            guard let replacement = cmark_node_new(isBlock ? CMARK_NODE_CODE_BLOCK : CMARK_NODE_CODE) else { continue }
            var literal = cmark_node_get_literal(n).map { String(cString: $0) } ?? ""
            if !isBlock { literal = literal.replacingOccurrences(of: "\n", with: " ") }
            _ = cmark_node_set_literal(replacement, literal)
            if isBlock { _ = cmark_node_set_fence_info(replacement, "html") }
            lines[replacement] = (Int(cmark_node_get_start_line(n)), Int(cmark_node_get_end_line(n)))
            _ = cmark_node_replace(n, replacement)
            cmark_node_free(n)
        }
        return lines
    }
}
