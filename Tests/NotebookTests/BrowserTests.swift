import Foundation
import Testing
@testable import Notebook

/// Opens reports in a real browser (Debian's headless Chromium, installed by `make setup`).
@Suite struct BrowserTests {
    static func chromium() throws -> URL {
        let candidates = ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]
        let path = try #require(candidates.first { FileManager.default.isExecutableFile(atPath: $0) },
                                "headless Chromium is needed (Debian package `chromium`; `make setup` installs it)")
        return URL(fileURLWithPath: path)
    }

    /// The reader's preferred colour scheme, as Chromium emulates it.
    enum ColorScheme: String, CaseIterable, Sendable {
        case light, dark

        /// Blink's `preferredColorScheme` setting: 0 is dark, 1 is light (Chromium 156;
        /// every scheme test also checks that `prefers-color-scheme: dark` matched as asked).
        var flag: String { "--blink-settings=preferredColorScheme=\(self == .dark ? 0 : 1)" }
    }

    struct Rendering {
        var consoleErrors: [String]
        var dom: String
        var width: Int, height: Int, colors: Int, inked: Double
        var screenshot: URL
    }

    static func chromiumArguments(in directory: URL, scheme: ColorScheme?) -> [String] {
        ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
         "--user-data-dir=\(directory.appendingPathComponent("chromium-profile").path)",
         "--enable-logging=stderr", "--v=0", "--window-size=1200,1600"] + (scheme.map { [$0.flag] } ?? [])
    }

    /// The lines of Chromium's log that report console errors or uncaught exceptions.
    static func consoleErrors(_ log: String) -> [String] {
        log.split(separator: "\n")
            .filter { $0.contains("CONSOLE") || $0.contains("Uncaught") }
            .filter { $0.contains("ERROR") || $0.contains("Uncaught") || $0.contains("error") }
            .map(String.init)
    }

    /// Loads `page` from a file:// URL, takes a screenshot and the DOM, and collects what
    /// the page logged to the console; `scheme` emulates the reader's colour preference.
    static func render(_ page: URL, in directory: URL, scheme: ColorScheme? = nil) throws -> Rendering {
        let shot = directory.appendingPathComponent("shot-\(UUID().uuidString).png")
        let common = chromiumArguments(in: directory, scheme: scheme)
        let screenshot = try run(chromium(), common + ["--screenshot=\(shot.path)", page.absoluteString])
        #expect(screenshot.code == 0, "chromium failed: \(screenshot.err.suffix(2000))")
        let dump = try run(chromium(), common + ["--dump-dom", page.absoluteString])
        let console = consoleErrors(screenshot.err + dump.err)
        let stats = try run(URL(fileURLWithPath: "/usr/bin/python3"),
                            [NbProcess.packageRoot.appendingPathComponent("Tests/NotebookTests/Support/png_stats.py").path, shot.path])
        let fields = stats.out.split(separator: " ").map { String($0).trimmingCharacters(in: .whitespacesAndNewlines) }
        try #require(fields.count == 4, "png_stats: \(stats.out) \(stats.err)")
        return Rendering(consoleErrors: console, dom: dump.out, width: Int(fields[0])!, height: Int(fields[1])!,
                         colors: Int(fields[2])!, inked: Double(fields[3])!, screenshot: shot)
    }

    /// Mean WCAG relative luminance of a screenshot (0 black … 1 white) and its share of
    /// dark pixels (luminance below 0.2).
    static func luminance(_ png: URL) throws -> (mean: Double, darkFraction: Double) {
        let r = try run(URL(fileURLWithPath: "/usr/bin/python3"),
                        [NbProcess.packageRoot.appendingPathComponent("Tests/NotebookTests/Support/png_luminance.py").path, png.path])
        let fields = r.out.split(separator: " ").compactMap { Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        try #require(fields.count == 2, "png_luminance: \(r.out) \(r.err)")
        return (fields[0], fields[1])
    }

    /// What Support/contrast_probe.js measured (WCAG contrast ratios).
    struct Contrast: Decodable {
        struct Item: Decodable, CustomStringConvertible {
            var selector: String
            var text: String?
            var fg: String?
            var bg: String?
            var ratio: Double
            var note: String?
            var description: String { "\(ratio):1 \(fg ?? "?") on \(bg ?? "?") at \(selector) \"\(text ?? "")\"\(note.map { " (\($0))" } ?? "")" }
        }
        var dark: Bool
        var page: String
        var textCount: Int
        var minText: Item?
        var textBelow45: [Item]
        var graphicCount: Int
        var minGraphic: Item?
        var graphicsBelow3: [Item]
        var consoleErrors: [String] = []

        enum CodingKeys: String, CodingKey { case dark, page, textCount, minText, textBelow45, graphicCount, minGraphic, graphicsBelow3 }
    }

    /// Measures contrast on a copy of `page` with Support/contrast_probe.js injected (the
    /// report itself stays script-free), read back through Chromium's DOM dump.
    static func contrast(of page: URL, in directory: URL, scheme: ColorScheme) throws -> Contrast {
        let probe = try String(contentsOf: NbProcess.packageRoot.appendingPathComponent("Tests/NotebookTests/Support/contrast_probe.js"), encoding: .utf8)
        let html = try String(contentsOf: page, encoding: .utf8)
        let end = try #require(html.range(of: "</body>", options: .backwards), "no </body> in \(page.lastPathComponent)")
        let copy = directory.appendingPathComponent("contrast-\(scheme)-\(UUID().uuidString).html")
        try (html.replacingCharacters(in: end, with: "<script>\n\(probe)</script>\n</body>")).write(to: copy, atomically: true, encoding: .utf8)
        let dump = try run(chromium(), chromiumArguments(in: directory, scheme: scheme) + ["--dump-dom", copy.absoluteString])
        let encoded = try #require(dump.out.firstMatch(of: /<pre id="nb-contrast-result">([A-Za-z0-9+\/=]+)<\/pre>/)?.output.1,
                                   "the contrast probe left no result: \(dump.err.suffix(2000))")
        let data = try #require(Data(base64Encoded: String(encoded)))
        var result = try JSONDecoder().decode(Contrast.self, from: data)
        result.consoleErrors = consoleErrors(dump.err)
        return result
    }

    /// Every text ≥ 4.5:1 and every chart series ≥ 3:1 against what lies behind it, in the
    /// scheme that was asked for.
    static func expectReadable(_ c: Contrast, scheme: ColorScheme, minimumTexts: Int) {
        #expect(c.dark == (scheme == .dark), "Chromium did not emulate the \(scheme) scheme")
        #expect(c.consoleErrors.isEmpty, "console errors: \(c.consoleErrors)")
        #expect(c.textCount >= minimumTexts, "only \(c.textCount) text elements measured")
        #expect(c.graphicCount > 0, "no chart series measured")
        let minText = c.minText?.ratio ?? 0, minGraphic = c.minGraphic?.ratio ?? 0
        #expect(minText >= 4.5, "\(scheme): text below 4.5:1: \(c.textBelow45.map(\.description).joined(separator: "; "))")
        #expect(minGraphic >= 3, "\(scheme): chart series below 3:1: \(c.graphicsBelow3.map(\.description).joined(separator: "; "))")
    }

    static func run(_ tool: URL, _ arguments: [String]) throws -> (code: Int32, out: String, err: String) {
        let p = Process()
        p.executableURL = tool
        p.arguments = arguments
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        nonisolated(unsafe) var errData = Data()
        let group = DispatchGroup()
        group.enter()
        DispatchQueue.global().async { errData = err.fileHandleForReading.readDataToEndOfFile(); group.leave() }
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        group.wait()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: outData, as: UTF8.self), String(decoding: errData, as: UTF8.self))
    }

    @Test func reportRendersWithoutConsoleErrors() throws {
        let w = try Workspace()
        try w.write("nb.md", RunnerProcessTests.notebook)
        try w.copyFixture("qa.txt")
        try w.write("code.jsonl", "{\"text\": \"let x = 1\"}\n")
        let result = try w.nb("nb.md")
        try #require(result.code == 0, "\(result.stderr)")

        let r = try Self.render(w.root.appendingPathComponent("outputs/nb.html"), in: w.root)
        #expect(r.consoleErrors.isEmpty, "console errors: \(r.consoleErrors)")
        #expect(r.dom.contains("Test notebook"))
        #expect(r.dom.contains("<svg"))
        #expect(r.dom.components(separatedBy: "class=\"cell ").count - 1 == 4)
        // Not a blank page: many colours and a good share of non-background pixels.
        #expect(r.width == 1200 && r.height == 1600)
        #expect(r.colors > 50, "only \(r.colors) colours in the screenshot")
        #expect(r.inked > 0.03, "only \(r.inked) of the screenshot differs from the background")
    }

    /// The checks above can fail: a page with a script error and a blank page are caught.
    @Test func detectorsCatchConsoleErrorsAndBlankPages() throws {
        let w = try Workspace()
        try w.write("broken.html", "<!DOCTYPE html><html><body><script>console.error('boom'); undefinedFunction();</script></body></html>")
        let broken = try Self.render(w.root.appendingPathComponent("broken.html"), in: w.root)
        #expect(!broken.consoleErrors.isEmpty)
        #expect(broken.inked < 0.001)
        #expect(broken.colors <= 2)
    }

    /// A notebook whose report has prose (a link, a list, a table, a quote), cells that ran,
    /// were reused, were skipped, failed and were not run, and charts and tables.
    static let schemeNotebook = RunnerProcessTests.notebook + """

    ## Details

    See [the first data set](#cell-a) and the [Markdown guide](https://commonmark.org/help/).

    - a list item with `inline code`
    - **bold** and *emphasis*

    | column | value |
    |--------|-------|
    | one    | 1     |

    > A quoted remark.

    ```nb load_data id=skipped skip
    path: qa.txt
    ```

    ```nb load_data id=broken
    path: missing.txt
    ```

    ```nb load_data id=after
    path: qa.txt
    ```

    """

    /// The report follows the reader's light/dark preference: rendered in both schemes it is
    /// not blank, light or dark as asked, free of console errors, and every text reaches 4.5:1
    /// contrast (chart series 3:1) against what is behind it.
    @Test(arguments: ColorScheme.allCases)
    func reportIsReadableInBothColorSchemes(_ scheme: ColorScheme) throws {
        let w = try Workspace()
        try w.write("nb.md", Self.schemeNotebook)
        try w.copyFixture("qa.txt")
        try w.write("code.jsonl", "{\"text\": \"let x = 1\"}\n")
        let first = try w.nb("nb.md")
        try #require(first.code != 0 && first.stderr.contains("missing.txt"), "the broken cell should fail: \(first.stderr)")
        try #require(try w.nb("nb.md").code != 0)  // again: unchanged cells are reused
        let page = w.root.appendingPathComponent("outputs/nb.html")
        let html = try String(contentsOf: page, encoding: .utf8)
        for status in ["reused", "skipped", "failed", "not-run"] {
            #expect(html.contains("class=\"cell status-\(status)\""), "no \(status) cell in the report")
        }
        #expect(!html.contains("<script"), "the report must not need a script")

        let r = try Self.render(page, in: w.root, scheme: scheme)
        #expect(r.consoleErrors.isEmpty, "console errors: \(r.consoleErrors)")
        #expect(r.dom.contains("<svg"))
        #expect(r.colors > 50, "only \(r.colors) colours in the \(scheme) screenshot")
        #expect(r.inked > 0.03, "only \(r.inked) of the \(scheme) screenshot differs from the background")
        let light = try Self.luminance(r.screenshot)
        switch scheme {
        case .light: #expect(light.mean > 0.7 && light.darkFraction < 0.2, "light screenshot: \(light)")
        case .dark: #expect(light.mean < 0.2 && light.darkFraction > 0.7, "dark screenshot: \(light)")
        }

        Self.expectReadable(try Self.contrast(of: page, in: w.root, scheme: scheme), scheme: scheme, minimumTexts: 100)
    }

    /// Everything the report can show, including what a run rarely produces (every cell
    /// status and run state, problems, warnings, notes, an empty chart, all eight series
    /// colours), is readable in both schemes.
    @Test(arguments: ColorScheme.allCases)
    func everyReportComponentIsReadable(_ scheme: ColorScheme) throws {
        let w = try Workspace()
        let statuses: [CellStatus] = [.ran, .reused, .running, .failed, .interrupted, .skipped, .notRun]
        let markdown = "# Every component\n\nProse with a [link](#cell-ran) and `code`.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n## Cells\n\n"
            + statuses.map { "```nb load_data id=\(HTMLReport.badgeClass($0))\(($0 == .skipped) ? " skip" : "")\npath: qa.txt\n```\n\n" }.joined()
        let notebook = try NotebookSource.parse(markdown, url: w.root.appendingPathComponent("every.md"), displayPath: "every.md")
        let chart = LineChart(title: "Eight series", xLabel: "step", yLabel: "loss",
                              series: (0..<8).map { i in LineChart.Series(name: "series \(i)", values: (0..<20).map { Double(i) + sin(Double($0) / 3) }) })
        let empty = LineChart(title: "Nothing yet", xLabel: "step", yLabel: "loss", series: [LineChart.Series(name: "", values: [])])
        let cells = zip(notebook.cells, statuses).map { source, status in
            var record = CellRecord(index: source.index, name: source.name, id: source.header.id, step: source.header.step,
                                    line: source.fenceLine, key: nil, status: status, duration: 1.5, finishedAt: Date(),
                                    note: "why it \(status.rawValue)", error: status == .failed ? "load_data: no file missing.txt\n  at line 3" : nil)
            record.peakMemoryMB = 120
            let outputs: [CellOutput] = status == .ran
                ? [.text("plain output"), .warning("a warning"), .metrics([Metric("examples", "3"), Metric("loss", "0.25")]),
                   .table(OutputTable(title: "A table", columns: ["name", "value"], rows: [["a", "1"], ["b", "2"]])), .chart(chart)]
                : status == .reused ? [.chart(empty)] : []
            return CellView(source: source, record: record, outputs: outputs)
        }
        func header(_ state: String) -> ReportHeader {
            ReportHeader(title: "Every component", notebookPath: "every.md", startedAt: Date(), gitCommit: "0123abc",
                         machine: .current(), invocation: "nb every.md", state: state, totalSeconds: 3)
        }
        var html = HTMLReport.render(header: header("failed"), notebook: notebook, cells: cells,
                                     problems: ["every.md:12: a problem with a cell"])
        // The other run states' banners, as the same renderer writes them.
        let banners = ["finished", "running", "interrupted", "invalid notebook"].compactMap { state in
            HTMLReport.render(header: header(state), notebook: nil, cells: [], problems: [])
                .split(separator: "\n").first { $0.hasPrefix("<p class=\"run-state") }.map(String.init)
        }
        try #require(banners.count == 4)
        let firstBanner = try #require(html.range(of: "<dl class=\"run-info\">"))
        html.insert(contentsOf: banners.joined(separator: "\n") + "\n", at: firstBanner.lowerBound)
        let page = w.root.appendingPathComponent("every.html")
        try html.write(to: page, atomically: true, encoding: .utf8)

        Self.expectReadable(try Self.contrast(of: page, in: w.root, scheme: scheme), scheme: scheme, minimumTexts: 80)
    }

    /// The contrast probe can fail: grey-on-white text and a pale series are caught, and a
    /// page that does not follow the dark scheme is told from one that does.
    @Test func contrastProbeCatchesLowContrast() throws {
        let w = try Workspace()
        let page = w.root.appendingPathComponent("pale.html")
        try """
        <!DOCTYPE html><html><head><style>body { background: #fff; color: #111; } .pale { color: #aaa; }</style></head>
        <body><p>Readable text.</p><p class="pale">Pale text.</p>
        <svg class="chart" viewBox="0 0 10 10"><rect width="10" height="10" fill="#fff"/><g class="series"><path d="M0 0 L10 10" stroke="#eee"/></g></svg>
        </body></html>
        """.write(to: page, atomically: true, encoding: .utf8)
        let c = try Self.contrast(of: page, in: w.root, scheme: .dark)
        #expect(c.dark)  // the emulation took, though this page ignores it
        #expect(c.page == "#ffffff")
        #expect(c.textCount == 2)
        #expect(c.minText.map { $0.ratio < 2.5 && $0.selector.hasSuffix("p.pale") } == true, "\(String(describing: c.minText))")
        #expect(c.minGraphic.map { $0.ratio < 1.2 } == true)
        #expect(!c.graphicsBelow3.isEmpty && c.textBelow45.count == 1)
    }
}
