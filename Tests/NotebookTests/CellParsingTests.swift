import Foundation
import Testing
@testable import Notebook

private func parseNotebook(_ text: String, path: String = "nb.md") throws(NotebookError) -> NotebookSource {
    try NotebookSource.parse(text, url: URL(fileURLWithPath: "/tmp/notebooks/\(path)"), displayPath: path)
}

/// The error parsing `text` throws, or nil.
private func parseError(_ text: String) -> NotebookError? {
    do { _ = try parseNotebook(text); return nil } catch { return error }
}

/// A notebook whose only cell has `info` as its info string, on line 5.
private func notebook(info: String) -> String {
    "# Title\n\nSome text.\n\n```\(info)\npath: x.txt\n```\n"
}

@Suite struct CellHeaderTests {
    @Test func stepOnly() throws {
        let cells = try parseNotebook(notebook(info: "nb load_data")).cells
        #expect(cells.count == 1)
        #expect(cells[0].header == CellHeader(step: "load_data", id: nil, skip: false, cache: true))
    }

    @Test func allOptions() throws {
        let header = try parseNotebook(notebook(info: "nb load_data id=a skip cache=false")).cells[0].header
        #expect(header == CellHeader(step: "load_data", id: "a", skip: true, cache: false))
        let other = try parseNotebook(notebook(info: "nb  load_data   skip=no cache=yes id=Data-1_v.2")).cells[0].header
        #expect(other == CellHeader(step: "load_data", id: "Data-1_v.2", skip: false, cache: true))
    }

    @Test(arguments: [
        ("nb", "a step cell starts with ```nb <step>, e.g. ```nb load_data"),
        ("nb id=x", "a step cell starts with ```nb <step>, e.g. ```nb load_data"),
        ("nb load_data id=a/b", "id=a/b: a cell id is letters, digits, '-', '_' or '.', and not only digits"),
        ("nb load_data id=a:b", "id=a:b: a cell id is letters, digits, '-', '_' or '.', and not only digits"),
        ("nb load_data id=café", "id=café: a cell id is letters, digits, '-', '_' or '.', and not only digits"),
        ("nb load_data id=12", "id=12: a cell id is letters, digits, '-', '_' or '.', and not only digits"),
        ("nb load_data id=", "id=: a cell id is letters, digits, '-', '_' or '.', and not only digits"),
        ("nb load_data id", "id=: a cell id is letters, digits, '-', '_' or '.', and not only digits"),
        ("nb load_data colour=red", "unknown cell option 'colour'; options are id=NAME, skip, cache=false"),
        ("nb load_data cache", "cache needs a value: cache=false or cache=true"),
        ("nb load_data cache=maybe", "cache=maybe: expected true or false"),
        ("nb load_data skip=1", "skip=1: expected true or false"),
        // Found by the fuzzer (a lone "=" trapped the parser).
        ("nb load_data =", "unknown cell option ''; options are id=NAME, skip, cache=false"),
        ("nb load_data =x", "unknown cell option ''; options are id=NAME, skip, cache=false"),
    ])
    func badHeaderAtFenceLine(info: String, message: String) {
        let error = parseError(notebook(info: info))
        #expect(error == .badCellHeader(Notebook.SourceLocation(file: "nb.md", line: 5), message: message))
        #expect(error?.description == "nb.md:5: \(message)")
    }

    @Test func duplicateIDsNameBothLines() {
        let text = """
            # T

            ```nb load_data id=data
            path: a.txt
            ```

            Between.

            ```nb load_data id=other
            path: b.txt
            ```

            ```nb load_data id=data
            path: c.txt
            ```

            """
        let error = parseError(text)
        #expect(error == .duplicateCellID(Notebook.SourceLocation(file: "nb.md", line: 13), id: "data", firstLine: 3))
        #expect(error?.description == "nb.md:13: cell id 'data' is already used by the cell on line 3")
    }
}

@Suite struct CollectedHeaderErrorTests {
    static let text = """
        ```nb
        path: a
        ```

        ```nb load_data id=x
        path: b
        ```

        ```nb load_data colour=red
        path: c
        ```

        ```nb load_data id=x
        path: d
        ```
        """

    @Test func everyCellKeptAndEveryProblemCollected() {
        let source = NotebookSource.parseCollectingErrors(Self.text, url: URL(fileURLWithPath: "/tmp/nb.md"), displayPath: "nb.md")
        #expect(source.cells.map(\.fenceLine) == [1, 5, 9, 13])
        #expect(source.cells.map(\.header.step) == ["(no step)", "load_data", "load_data", "load_data"])
        // The duplicate loses its id, so it is named by its number.
        #expect(source.cells.map(\.name) == ["1", "x", "3", "4"])
        #expect(source.errors == [
            .badCellHeader(Notebook.SourceLocation(file: "nb.md", line: 1), message: "a step cell starts with ```nb <step>, e.g. ```nb load_data"),
            .badCellHeader(Notebook.SourceLocation(file: "nb.md", line: 9), message: "unknown cell option 'colour'; options are id=NAME, skip, cache=false"),
            .duplicateCellID(Notebook.SourceLocation(file: "nb.md", line: 13), id: "x", firstLine: 5),
        ])
        // parse() throws the first of them.
        #expect(throws: source.errors[0]) {
            try NotebookSource.parse(Self.text, url: URL(fileURLWithPath: "/tmp/nb.md"), displayPath: "nb.md")
        }
    }

    @Test func loadStrictOrNot() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("nb-cells-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("bad.md")
        try Data(Self.text.utf8).write(to: url)
        #expect(throws: NotebookError.badCellHeader(Notebook.SourceLocation(file: "bad.md", line: 1),
                                                    message: "a step cell starts with ```nb <step>, e.g. ```nb load_data")) {
            try NotebookSource.load(url, displayPath: "bad.md")
        }
        let lenient = try NotebookSource.load(url, displayPath: "bad.md", strict: false)
        #expect(lenient.cells.count == 4)
        #expect(lenient.errors.count == 3)
        #expect(lenient.errors.allSatisfy { $0.location?.file == "bad.md" })
    }

    @Test func cleanNotebookHasNoErrors() {
        let source = NotebookSource.parseCollectingErrors("```nb load_data\n```\n", url: URL(fileURLWithPath: "/tmp/nb.md"), displayPath: "nb.md")
        #expect(source.errors.isEmpty)
        #expect(source.cells.count == 1)
    }
}

@Suite struct NotebookSourceTests {
    static let twoCells = """
        # Fine-tune

        ```nb load_data id=a
        path: a.txt
        show: 2
        ```

        Text between.

        ~~~nb load_data
        path: b.txt
        ~~~
        """

    @Test func cellIndicesAndLines() throws {
        let source = try parseNotebook(Self.twoCells)
        let cells = source.cells
        #expect(cells.count == 2)
        #expect(cells.map(\.index) == [0, 1])
        #expect(cells.map(\.fenceLine) == [3, 10])
        #expect(cells.map(\.bodyStartLine) == [4, 11])
        #expect(cells.map(\.endLine) == [6, 12])
        #expect(cells.map(\.body) == ["path: a.txt\nshow: 2\n", "path: b.txt\n"])
        #expect(cells.map(\.name) == ["a", "2"])
        #expect(cells.map(\.title) == ["load_data · a", "load_data"])
        // The Markdown around the cells is kept, in order.
        let kinds = source.blocks.map { block -> String in
            switch block {
            case .markdown(let b): return b.kind.rawValue
            case .cell(let c): return "cell \(c.index)"
            }
        }
        #expect(kinds == ["heading", "cell 0", "paragraph", "cell 1"])
    }

    @Test func onlyTopLevelFencesStartingWithNbAreCells() throws {
        let text = """
            ```nbx load_data
            path: 1
            ```

            ```python
            print("nb load_data")
            ```

                nb load_data
                path: indented

            ```NB load_data
            path: 2
            ```

            > ```nb load_data
            > path: quoted
            > ```

            - item

              ```nb load_data
              path: listed
              ```

            ~~~nb load_data id=tilde
            path: 3
            ~~~

            ```nb\tload_data id=tab
            path: 4
            ```

            ``` nb load_data id=spaced
            path: 5
            ```
            """
        let source = try parseNotebook(text)
        #expect(source.cells.map(\.header.id) == ["tilde", "tab", "spaced"])
        #expect(source.cells.map(\.body) == ["path: 3\n", "path: 4\n", "path: 5\n"])
        #expect(source.cells.map(\.fenceLine) == [26, 30, 34])
        let codeBlocks = source.blocks.compactMap { block -> String? in
            if case .markdown(let b) = block, b.kind == .codeBlock { return b.info }
            return nil
        }
        #expect(codeBlocks == ["nbx load_data", "python", "", "NB load_data"])
    }

    @Test func emptyCellBodyAndUnclosedFence() throws {
        let source = try parseNotebook("```nb load_data\n```\n\n```nb load_data id=open\npath: x\n")
        #expect(source.cells.count == 2)
        #expect(source.cells[0].body == "")
        #expect(source.cells[0].endLine == 2)
        #expect(source.cells[1].body == "path: x\n")
        #expect(source.cells[1].fenceLine == 4)
    }

    @Test func cellNamedByIDOrNumber() throws {
        let source = try parseNotebook(Self.twoCells)
        #expect(try source.cell(named: "a").fenceLine == 3)
        #expect(try source.cell(named: "1").fenceLine == 3)
        #expect(try source.cell(named: "2").fenceLine == 10)
        for name in ["3", "0", "-1", "b", ""] {
            #expect(throws: NotebookError.unknownCell(name, known: ["a", "2"])) { try source.cell(named: name) }
        }
        #expect(NotebookError.unknownCell("b", known: ["a", "2"]).description == "no cell 'b'; cells: a, 2")
    }

    @Test func titleIsFirstLevelOneHeading() throws {
        let text = "## Sub\n\nText\n\n# *Main* `title`\n\n# Second\n"
        #expect(try parseNotebook(text).title == "Main title")
        #expect(try parseNotebook("## Only sub\n\ntext\n", path: "my-notes.md").title == "my-notes")
        #expect(try parseNotebook("", path: "empty.nb.md").title == "empty.nb")
        #expect(try parseNotebook("x", path: "dir/run.md").name == "run")
    }

    @Test func loadFromFile() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("nb-cells-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("book.md")
        try Data(Self.twoCells.utf8).write(to: url)
        let source = try NotebookSource.load(url, displayPath: "book.md")
        #expect(source.cells.count == 2)
        #expect(source.displayPath == "book.md")
        #expect(throws: NotebookError.notebookNotFound(path: "nope.md")) {
            try NotebookSource.load(dir.appendingPathComponent("nope.md"), displayPath: "nope.md")
        }
        let bad = dir.appendingPathComponent("bad.md")
        try Data([0x23, 0x20, 0xff, 0xfe, 0x0a]).write(to: bad)
        #expect(throws: NotebookError.notebookUnreadable(path: "bad.md", reason: "not UTF-8 text or not readable")) {
            try NotebookSource.load(bad, displayPath: "bad.md")
        }
    }
}

@Suite struct MarkdownDocumentTests {
    @Test func blocksWithLines() {
        let text = """
            # Title

            Para one
            still para.

            - a
            - b

            > quote

            ---

            ```swift
            let x = 1
            ```
            """
        let blocks = MarkdownDocument.parse(text)
        #expect(blocks.map(\.kind) == [.heading, .paragraph, .list, .blockQuote, .thematicBreak, .codeBlock])
        #expect(blocks.map(\.startLine) == [1, 3, 6, 9, 11, 13])
        // cmark-gfm counts the blank line after a list, and after a thematic break, as part
        // of the block; the other blocks end on their last line.
        #expect(blocks.map(\.endLine) == [1, 4, 8, 9, 12, 15])
        #expect(blocks[0].headingLevel == 1 && blocks[0].headingText == "Title")
        #expect(blocks[5].info == "swift" && blocks[5].literal == "let x = 1\n")
    }

    @Test func headingAnchorsAreUnique() {
        let blocks = MarkdownDocument.parse("# Intro\n\n## Intro\n\n### intro!\n\n# Setup\n")
        #expect(blocks.map(\.anchor) == ["intro", "intro-1", "intro-2", "setup"])
        #expect(blocks[0].html.hasPrefix("<h1 id=\"intro\">"))
        #expect(blocks[1].html.hasPrefix("<h2 id=\"intro-1\">"))
        #expect(blocks[2].html.hasPrefix("<h3 id=\"intro-2\">"))
        #expect(blocks.map(\.headingLevel) == [1, 2, 3, 1])
    }

    @Test func anchorsStayUniqueWhenAHeadingLooksLikeASuffix() {
        // A heading whose own slug is "intro-1" must not collide with the second "Intro".
        let anchors = MarkdownDocument.parse("# Intro\n\n# Intro\n\n# Intro 1\n").map(\.anchor)
        #expect(throws: Never.self) {
            #expect(Set(anchors).count == 3, "anchors \(anchors)")
        }
    }

    @Test(arguments: [
        ("Hello, World!", "hello-world"),
        ("  Step 2: Train the model  ", "step-2-train-the-model"),
        ("snake_case and--dashes", "snake-case-and-dashes"),
        ("End.", "end"),
        ("café au lait", "caf-au-lait"),
        ("ÀB", "b"),
        ("!!!", "section"),
        ("", "section"),
        ("MiXeD 42", "mixed-42"),
    ])
    func slugRules(text: String, slug: String) {
        #expect(MarkdownDocument.slug(text) == slug)
    }

    @Test func headingTextDropsMarkup() {
        let block = MarkdownDocument.parse("## The *fast* `sgemm` [path](x)\n")[0]
        #expect(block.headingText == "The fast sgemm path")
        #expect(block.anchor == "the-fast-sgemm-path")
    }

    @Test func rawHTMLIsShownAsCodeByDefault() {
        let text = "Before\n\n<div class=\"x\">\n<script>alert(1)</script>\n</div>\n\nA <b>bold</b> word.\n"
        let blocks = MarkdownDocument.parse(text)
        #expect(blocks.map(\.kind) == [.paragraph, .htmlBlock, .paragraph])
        #expect(blocks[1].startLine == 3 && blocks[1].endLine == 5)
        let html = blocks.map(\.html).joined()
        #expect(!html.contains("<div"))
        #expect(!html.contains("<script"))
        #expect(!html.contains("<b>"))
        #expect(blocks[1].html.hasPrefix("<pre><code class=\"language-html\">&lt;div class=&quot;x&quot;&gt;"))
        #expect(blocks[1].html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"))
        #expect(blocks[2].html == "<p>A <code>&lt;b&gt;</code>bold<code>&lt;/b&gt;</code> word.</p>\n")
    }

    @Test func rawHTMLPassesThroughWhenAllowed() {
        let text = "<div class=\"x\">\nhi\n</div>\n\nA <b>bold</b> word.\n"
        let blocks = MarkdownDocument.parse(text, allowRawHTML: true)
        #expect(blocks.map(\.kind) == [.htmlBlock, .paragraph])
        #expect(blocks[0].html == "<div class=\"x\">\nhi\n</div>\n")
        #expect(blocks[1].html == "<p>A <b>bold</b> word.</p>\n")
    }

    @Test func rawHTMLInNotebookIsNotACell() throws {
        let source = try parseNotebook("<div>\n```nb load_data\n</div>\n")
        #expect(source.cells.isEmpty)
    }

    @Test func gfmExtensions() {
        let table = MarkdownDocument.parse("| a | b |\n|---|--:|\n| 1 | 2 |\n")
        #expect(table.map(\.kind) == [.table])
        #expect(table[0].html.contains("<table>"))
        #expect(table[0].html.contains("<th>a</th>"))
        #expect(table[0].html.contains("<td align=\"right\">2</td>"))

        #expect(MarkdownDocument.parse("~~gone~~ stays")[0].html == "<p><del>gone</del> stays</p>\n")
        #expect(MarkdownDocument.parse("see https://example.com/x now")[0].html
                .contains("<a href=\"https://example.com/x\">https://example.com/x</a>"))
        #expect(MarkdownDocument.parse("mail www.example.org")[0].html.contains("<a href=\"http://www.example.org\">"))

        let tasks = MarkdownDocument.parse("- [ ] todo\n- [x] done\n- plain\n")[0].html
        #expect(tasks.components(separatedBy: "type=\"checkbox\"").count - 1 == 2)
        #expect(tasks.components(separatedBy: "checked=\"\"").count - 1 == 1)
    }

    @Test func cellAnchorsInReportAreUniqueForValidIDs() throws {
        // ids "a.b" and "a_b" are both valid and must get different anchors.
        let source = try parseNotebook("```nb load_data id=a.b\n```\n\n```nb load_data id=a_b\n```\n")
        let anchors = source.cells.map(HTMLReport.anchor)
        #expect(throws: Never.self) {
            #expect(Set(anchors).count == 2, "anchors \(anchors)")
        }
    }
}
