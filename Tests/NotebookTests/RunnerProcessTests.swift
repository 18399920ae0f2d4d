import Foundation
import Testing

/// The built `nb` run as a process: exit codes, messages naming file:line, the report
/// written in every case, and what re-runs do (asserted through the manifest).
@Suite struct RunnerProcessTests {
    static let notebook = """
    # Test notebook

    Intro text with <script>alert("prose")</script> in it.

    ```nb parameters
    show: 2
    ```

    ```nb load_data id=a
    path: qa.txt
    show: ${show}
    ```

    ```nb load_data id=b
    path: qa.txt
    name: second
    ```

    ```nb load_data id=c
    path: code.jsonl
    name: code
    ```

    """

    func workspace(notebook: String = Self.notebook) throws -> Workspace {
        let w = try Workspace()
        try w.write("nb.md", notebook)
        try w.copyFixture("qa.txt")
        try w.write("code.jsonl", "{\"text\": \"let x = 1\"}\n{\"text\": \"nb notebooks/a.md --fresh\"}\n")
        return w
    }

    @Test func fullRunThenReuse() throws {
        let w = try workspace()
        let first = try w.nb("nb.md")
        #expect(first.code == 0, "\(first.stderr)")
        #expect(try w.statuses() == ["1": "ran", "a": "ran", "b": "ran", "c": "ran"])
        #expect(first.stderr.contains("report: outputs/nb.html"))
        let report = try w.read("outputs/nb.html")
        #expect(report.contains("Test notebook"))
        #expect(report.contains("<svg"))

        let second = try w.nb("nb.md")
        #expect(second.code == 0)
        #expect(try w.statuses() == ["1": "reused", "a": "reused", "b": "reused", "c": "reused"])
        #expect(try w.read("outputs/nb.html").contains("unchanged since"))
        // Reused cells keep their outputs in the report.
        #expect(try w.read("outputs/nb.html").contains("What is FHE?"))
    }

    @Test func singleCellAndFromAndFresh() throws {
        let w = try workspace()
        try #require(try w.nb("nb.md").code == 0)

        let cell = try w.nb("nb.md", "--cell", "b")
        #expect(cell.code == 0, "\(cell.stderr)")
        #expect(try w.statuses() == ["1": "reused", "a": "reused", "b": "ran", "c": "reused"])

        #expect(try w.nb("nb.md", "--cell", "3").code == 0)   // by number: the third step cell is b
        #expect(try w.statuses()["b"] == "ran")

        // --from: b and what reads what it writes (c reads nothing of b's: reused).
        #expect(try w.nb("nb.md", "--from", "b").code == 0)
        #expect(try w.statuses() == ["1": "reused", "a": "reused", "b": "ran", "c": "reused"])

        #expect(try w.nb("nb.md", "--fresh").code == 0)
        #expect(try w.statuses() == ["1": "ran", "a": "ran", "b": "ran", "c": "ran"])

        let unknown = try w.nb("nb.md", "--cell", "zz")
        #expect(unknown.code == 2)
        #expect(unknown.stderr.contains("no cell 'zz'; cells: 1, a, b, c"))
    }

    @Test func cellBeforeAnyRunRunsWhatItNeeds() throws {
        let w = try workspace()
        let result = try w.nb("nb.md", "--cell", "b")
        #expect(result.code == 0, "\(result.stderr)")
        // b reads only the model, which no cell writes here: nothing else needs to run.
        #expect(try w.statuses() == ["1": "not run", "a": "not run", "b": "ran", "c": "not run"])
    }

    @Test func editingACellRerunsItAndWhatReadsItOnly() throws {
        let w = try workspace()
        try #require(try w.nb("nb.md").code == 0)
        try w.write("nb.md", Self.notebook.replacingOccurrences(of: "name: second", with: "name: second\nshow: 1"))
        #expect(try w.nb("nb.md").code == 0)
        #expect(try w.statuses() == ["1": "reused", "a": "reused", "b": "ran", "c": "reused"])

        // Prose edits change nothing.
        try w.write("nb.md", Self.notebook.replacingOccurrences(of: "name: second", with: "name: second\nshow: 1")
            .replacingOccurrences(of: "Intro text", with: "Changed intro text"))
        #expect(try w.nb("nb.md").code == 0)
        #expect(try w.statuses() == ["1": "reused", "a": "reused", "b": "reused", "c": "reused"])
    }

    @Test func changedDataFileAndParameterInvalidate() throws {
        let w = try workspace()
        try #require(try w.nb("nb.md").code == 0)
        try w.write("code.jsonl", "{\"text\": \"changed\"}\n")
        #expect(try w.nb("nb.md").code == 0)
        #expect(try w.statuses() == ["1": "reused", "a": "reused", "b": "reused", "c": "ran"])

        // A parameter re-runs the cells that use it (a); b and c do not.
        #expect(try w.nb("nb.md", "--param", "show=1").code == 0)
        #expect(try w.statuses() == ["1": "ran", "a": "ran", "b": "reused", "c": "reused"])
        #expect(try w.read("outputs/nb.html").contains("--param"))

        let bad = try w.nb("nb.md", "--param", "shwo=1")
        #expect(bad.code == 2)
        #expect(bad.stderr.contains("--param shwo: the notebook declares no parameter 'shwo'; declared: show"))
    }

    @Test func corruptOrMissingSnapshotIsRerunNeverUsed() throws {
        let w = try workspace()
        try #require(try w.nb("nb.md").code == 0)
        let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: w.root.appendingPathComponent("outputs/.nb/nb/manifest.json"))) as! [String: Any]
        let keys = Dictionary(uniqueKeysWithValues: (manifest["cells"] as! [[String: Any]]).map { ($0["name"] as! String, $0["key"] as! String) })

        // Flip one byte in the payload of a's snapshot; delete c's.
        let aFile = w.root.appendingPathComponent("outputs/.nb/nb/\(keys["a"]!)/snapshot.json")
        var bytes = try Data(contentsOf: aFile)
        bytes[bytes.count - 10] ^= 0x01
        try bytes.write(to: aFile)
        try FileManager.default.removeItem(at: w.root.appendingPathComponent("outputs/.nb/nb/\(keys["c"]!)"))

        let result = try w.nb("nb.md")
        #expect(result.code == 0, "\(result.stderr)")
        #expect(try w.statuses() == ["1": "reused", "a": "ran", "b": "reused", "c": "ran"])
        #expect(try w.read("outputs/nb.html").contains("Snapshot corrupt (checksum mismatch); re-ran"))
        // The re-run repaired it.
        #expect(try w.nb("nb.md").code == 0)
        #expect(try w.statuses()["a"] == "reused")
    }

    @Test func listShowsCellsAndLastStatus() throws {
        let w = try workspace()
        let before = try w.nb("nb.md", "--list")
        #expect(before.code == 0)
        #expect(before.stdout.contains("2  a   load_data   9     never run"))
        try #require(try w.nb("nb.md").code == 0)
        let after = try w.nb("nb.md", "--list")
        #expect(after.stdout.split(separator: "\n").map { $0.split(separator: " ").map(String.init) } == [
            ["#", "id", "step", "line", "last", "status"],
            ["1", "-", "parameters", "5", "ran"],
            ["2", "a", "load_data", "9", "ran"],
            ["3", "b", "load_data", "14", "ran"],
            ["4", "c", "load_data", "19", "ran"],
        ])
    }

    // MARK: - Errors name file:line, stop the run before any cell, and still write a report

    struct BadNotebook: CustomTestStringConvertible, Sendable {
        var name: String
        var replace: String
        var with: String
        var code: Int32
        var message: String
        var testDescription: String { name }
    }

    static let badNotebooks: [BadNotebook] = [
        .init(name: "unknown step", replace: "```nb load_data id=b", with: "```nb laod_data id=b", code: 2,
              message: "nb.md:14: unknown step 'laod_data' (did you mean 'load_data'?); known steps: compile_hybrid, eval_compare, evaluate, fill_masks, generate, inject_lora, load_adapter, load_data, load_deployment, load_model, lora_trainer, math_eval, quantization_study, save_adapter, save_deployment, save_merged, train, weights_report, parameters"),
        .init(name: "unknown key", replace: "name: second", with: "nmae: second", code: 2,
              message: "nb.md:16: unknown key 'nmae' for step 'load_data' (did you mean 'name'?); known keys: path, format, name, show"),
        .init(name: "wrong type", replace: "name: second", with: "name: second\nshow: lots", code: 2,
              message: "nb.md:17: key 'show': expected an integer, found 'lots'"),
        .init(name: "bad YAML", replace: "name: second", with: "name: [second", code: 2,
              message: "nb.md:17: invalid YAML"),
        .init(name: "value out of range", replace: "name: second", with: "show: 1000", code: 2,
              message: "nb.md:16: key 'show': 1000 is out of range 0...100"),
        .init(name: "bad choice", replace: "name: second", with: "format: csv", code: 2,
              message: "nb.md:16: key 'format': 'csv' is not one of qa, jsonl"),
        .init(name: "missing key", replace: "path: qa.txt\nname: second", with: "name: second", code: 2,
              message: "nb.md:14: step 'load_data' needs the key 'path'"),
        .init(name: "unknown parameter", replace: "show: ${show}", with: "show: ${shw}", code: 2,
              message: "nb.md:11: unknown notebook parameter '${shw}'; declared: show"),
        .init(name: "bad cell option", replace: "```nb load_data id=b", with: "```nb load_data id=b retry", code: 2,
              message: "nb.md:14: unknown cell option 'retry'"),
        .init(name: "missing file", replace: "path: qa.txt\nname: second", with: "path: missing.txt\nname: second", code: 1,
              message: "nb.md:15: load_data failed: missing.txt: no such file"),
        .init(name: "bad data line", replace: "path: code.jsonl", with: "path: broken.jsonl", code: 1,
              message: "nb.md:20: load_data failed: broken.jsonl:2: not a JSON object"),
        .init(name: "odd qa file", replace: "path: qa.txt\nname: second", with: "path: odd.txt\nname: second", code: 1,
              message: "nb.md:15: load_data failed: odd.txt:3: question without an answer"),
    ]

    @Test(arguments: badNotebooks)
    func errorsNameFileAndLine(_ bad: BadNotebook) throws {
        try #require(Self.notebook.contains(bad.replace))
        let w = try workspace(notebook: Self.notebook.replacingOccurrences(of: bad.replace, with: bad.with))
        try w.write("broken.jsonl", "{\"text\": \"ok\"}\n{\"text\": \"unterminated}\n")
        try w.write("odd.txt", "Q1?\nA1.\nQ2?\n")
        let result = try w.nb("nb.md")
        #expect(result.code == bad.code, "\(result.stderr)")
        #expect(result.stderr.contains(bad.message), "stderr was: \(result.stderr)")
        // The report is written anyway and shows the error.
        let report = try w.read("outputs/nb.html")
        #expect(report.contains(bad.code == 2 ? "invalid notebook" : "failed"))
        #expect(report.contains("Problems"))
        let statuses = try w.statuses()
        if bad.code == 2 {
            // Validation stops the run before any cell executes.
            #expect(Set(statuses.values) == ["not run"], "\(statuses)")
        } else {
            #expect(statuses.values.contains("failed"))
            #expect(statuses["c"] == "not run" || statuses["c"] == "failed")
        }
    }

    @Test func missingNotebookIsAClearError() throws {
        let w = try Workspace()
        let result = try w.nb("nowhere.md")
        #expect(result.code == 2)
        #expect(result.stderr.contains("nowhere.md: no such notebook"))
    }

    @Test func failedCellStopsTheRunAndLaterCellsAreNotRun() throws {
        let w = try workspace(notebook: Self.notebook.replacingOccurrences(of: "path: qa.txt\nname: second", with: "path: gone.txt\nname: second"))
        let result = try w.nb("nb.md")
        #expect(result.code == 1)
        #expect(try w.statuses() == ["1": "ran", "a": "ran", "b": "failed", "c": "not run"])
        // Fixing the file re-runs only from the failed cell.
        try w.copyFixture("qa.txt", as: "gone.txt")
        #expect(try w.nb("nb.md").code == 0)
        #expect(try w.statuses() == ["1": "reused", "a": "reused", "b": "ran", "c": "ran"])
    }

    // MARK: - Escaping

    @Test func scriptsAreEscapedEverywhere() throws {
        // <script> in prose, in the data (shown in the sample table) and in a cell body.
        let w = try workspace(notebook: Self.notebook.replacingOccurrences(of: "name: second", with: "name: second # <script>alert('cell')</script>"))
        #expect(try w.nb("nb.md").code == 0)
        let report = try w.read("outputs/nb.html")
        #expect(!report.lowercased().contains("<script"))
        // cmark splits inline HTML into tags around the text: each tag is shown as code.
        #expect(report.contains("<code>&lt;script&gt;</code>alert(&quot;prose&quot;)<code>&lt;/script&gt;</code>"))
        #expect(report.contains("&lt;script&gt;alert(&quot;data&quot;)&lt;/script&gt;"))
        #expect(report.contains("&lt;script&gt;alert(&#39;cell&#39;)&lt;/script&gt;"))
    }

    @Test func rawHTMLOnlyWhenAllowed() throws {
        let w = try workspace(notebook: Self.notebook + "\n<div class=\"custom-raw\">hello</div>\n")
        #expect(try w.nb("nb.md").code == 0)
        #expect(!(try w.read("outputs/nb.html")).contains("<div class=\"custom-raw\">"))
        #expect(try w.nb("nb.md", "--allow-html").code == 0)
        #expect(try w.read("outputs/nb.html").contains("<div class=\"custom-raw\">"))
    }

    // MARK: - Goldens

    @Test func parseOutlineMatchesGolden() throws {
        let w = try Workspace()
        let result = try NbProcess.run(["outline", NbProcess.fixtures.appendingPathComponent("every_block.md").path], in: w.root)
        #expect(result.code == 0)
        let golden = try String(contentsOf: NbProcess.fixtures.appendingPathComponent("every_block.outline.txt"), encoding: .utf8)
        #expect(result.stdout == golden)
        // Independently of the golden: every cell's fence line is where the text has it.
        let lines = try String(contentsOf: NbProcess.fixtures.appendingPathComponent("every_block.md"), encoding: .utf8)
            .split(separator: "\n", omittingEmptySubsequences: false)
        let fenceLines = lines.indices.filter { lines[$0].hasPrefix("```nb ") || lines[$0].hasPrefix("~~~nb ") }.map { $0 + 1 }
        let cellLines = result.stdout.split(separator: "\n").filter { $0.hasPrefix("cell ") }
            .map { Int($0.split(separator: " lines ")[1].split(separator: "-")[0])! }
        #expect(cellLines == fenceLines)
    }

    /// The report of the every-block fixture with timings, dates, machine and paths
    /// normalized (and peak memory), compared with a committed snapshot. Set NB_UPDATE_GOLDENS=1 to rewrite it.
    @Test func reportMatchesNormalizedSnapshot() throws {
        let w = try Workspace()
        try w.copyFixture("every_block.md")
        try w.copyFixture("qa.txt")
        let result = try w.nb("every_block.md")
        #expect(result.code == 0, "\(result.stderr)")
        let normalized = Self.normalize(try w.read("outputs/every_block.html"))
        let goldenURL = NbProcess.fixtures.appendingPathComponent("every_block.report.html")
        if ProcessInfo.processInfo.environment["NB_UPDATE_GOLDENS"] == "1" {
            try normalized.write(to: goldenURL, atomically: true, encoding: .utf8)
        }
        let golden = try String(contentsOf: goldenURL, encoding: .utf8)
        #expect(normalized == golden, "report differs from the snapshot; first difference at line \(Self.firstDifference(normalized, golden))")

        // Selectors: one section per step cell, with its status, and TOC links that resolve.
        #expect(normalized.components(separatedBy: "<section class=\"cell ").count - 1 == 4)
        #expect(normalized.contains("<section class=\"cell status-skipped\" id=\"cell-4\""))
        #expect(normalized.contains("<section class=\"cell status-ran\" id=\"cell-tilde\""))
        for anchor in normalized.matches(of: /href="#([^"]+)"/).map({ String($0.output.1) }) {
            #expect(normalized.contains("id=\"\(anchor)\""), "TOC link #\(anchor) has no target")
        }
    }

    static func normalize(_ html: String) -> String {
        var s = html
        s.replace(/<span class="dur">[^<]*<\/span>/, with: "<span class=\"dur\">DURATION</span>")
        s.replace(/<dd class="dur">[^<]*<\/dd>/, with: "<dd class=\"dur\">DURATION</dd>")
        s.replace(/<dd class="date">[^<]*<\/dd>/, with: "<dd class=\"date\">DATE</dd>")
        // A cell's peak memory depends on the machine and its libraries (45 or 46 MiB here).
        s.replace(/<span class="mem">[^<]*<\/span>/, with: "<span class=\"mem\">MEMORY</span>")
        s.replace(/<span class="date">[^<]*<\/span>/, with: "<span class=\"date\">DATE</span>")
        s.replace(/<dt>(machine|BLAS|git commit|nb)<\/dt><dd>[^<]*<\/dd>/) { "<dt>\($0.output.1)</dt><dd>NORMALIZED</dd>" }
        s.replace(/sha256<\/span><span class="metric-value">[0-9a-f]{16}/, with: "sha256</span><span class=\"metric-value\">SHA256")
        s.replace(/<meta name="generator" content="[^"]*">/, with: "<meta name=\"generator\" content=\"nb\">")
        s.replace(/Written by nb [0-9.]+\./, with: "Written by nb.")
        return s
    }

    static func firstDifference(_ a: String, _ b: String) -> Int {
        let la = a.split(separator: "\n", omittingEmptySubsequences: false), lb = b.split(separator: "\n", omittingEmptySubsequences: false)
        for i in 0..<min(la.count, lb.count) where la[i] != lb[i] { return i + 1 }
        return min(la.count, lb.count) + 1
    }
}
