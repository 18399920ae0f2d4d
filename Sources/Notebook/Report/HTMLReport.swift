import Foundation

/// What the report header shows about a run.
public struct ReportHeader: Sendable {
    public var title: String
    public var notebookPath: String
    public var startedAt: Date
    public var gitCommit: String?
    public var machine: MachineInfo
    public var invocation: String
    /// "running", "finished", "failed", "interrupted", "invalid notebook".
    public var state: String
    public var totalSeconds: Double
    /// The model that actually ran, once a cell has loaded one.
    public var model: String?

    public init(title: String, notebookPath: String, startedAt: Date, gitCommit: String?, machine: MachineInfo,
                invocation: String, state: String, totalSeconds: Double) {
        (self.title, self.notebookPath, self.startedAt, self.gitCommit) = (title, notebookPath, startedAt, gitCommit)
        (self.machine, self.invocation, self.state, self.totalSeconds) = (machine, invocation, state, totalSeconds)
    }
}

/// A step cell as the report shows it.
public struct CellView: Sendable {
    public var source: CellSource
    public var record: CellRecord
    public var outputs: [CellOutput]
    /// Outputs already rendered (a reused cell's, from its snapshot); used instead of `outputs`.
    public var outputsHTML: String?

    public init(source: CellSource, record: CellRecord, outputs: [CellOutput], outputsHTML: String? = nil) {
        (self.source, self.record, self.outputs, self.outputsHTML) = (source, record, outputs, outputsHTML)
    }
}

/// Renders the self-contained HTML report: inline CSS and SVG, no scripts, no network.
/// Every piece of text from the notebook, its data or its outputs is escaped; prose HTML
/// comes from cmark-gfm, which escapes raw HTML unless the user allowed it.
public enum HTMLReport {
    public static func render(header: ReportHeader, notebook: NotebookSource?, cells: [CellView], problems: [String]) -> String {
        var h = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        h += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        h += "<meta name=\"generator\" content=\"nb \(NbVersion.string)\">\n"
        h += "<title>\(HTML.escape(header.title)) — nb report</title>\n<style>\n\(css)</style>\n</head>\n<body>\n"
        h += "<header class=\"run\">\n<h1 class=\"report-title\">\(HTML.escape(header.title))</h1>\n"
        h += "<p class=\"run-state state-\(HTML.escape(header.state.replacingOccurrences(of: " ", with: "-")))\">\(HTML.escape(header.state))</p>\n"
        h += "<dl class=\"run-info\">\n"
        let rows: [(String, String)] = [
            ("notebook", header.notebookPath),
            ("command", header.invocation),
            ("started", dateString(header.startedAt)),
            ("total time", Format.duration(header.totalSeconds)),
            ("model", header.model ?? "none loaded"),
            ("git commit", header.gitCommit ?? "not in a git repository"),
            ("machine", header.machine.summary),
            ("BLAS", header.machine.blas),
            ("nb", NbVersion.string),
        ]
        for (k, v) in rows {
            let cls = k == "total time" ? " class=\"dur\"" : k == "started" ? " class=\"date\"" : ""
            h += "<dt>\(k)</dt><dd\(cls)>\(HTML.escape(v))</dd>\n"
        }
        h += "</dl>\n</header>\n"

        if !problems.isEmpty {
            h += "<section class=\"problems\">\n<h2>Problems</h2>\n<ul>\n"
            for p in problems { h += "<li><pre>\(HTML.escape(p))</pre></li>\n" }
            h += "</ul>\n</section>\n"
        }

        if let notebook {
            h += tableOfContents(notebook, cells: cells)
            h += "<main>\n"
            var byIndex: [Int: CellView] = [:]
            for c in cells { byIndex[c.source.index] = c }
            for block in notebook.blocks {
                switch block {
                case .markdown(let b):
                    h += "<div class=\"prose\" data-lines=\"\(b.startLine)-\(b.endLine)\">\(b.html)</div>\n"
                case .cell(let c):
                    if let view = byIndex[c.index] { h += render(view) }
                }
            }
            h += "</main>\n"
        }
        h += "<footer>Written by nb \(NbVersion.string). This report is self-contained: it loads nothing from the network.</footer>\n"
        h += "</body>\n</html>\n"
        return h
    }

    static func tableOfContents(_ notebook: NotebookSource, cells: [CellView]) -> String {
        var items: [String] = []
        let statuses = Dictionary(cells.map { ($0.source.index, $0.record.status) }, uniquingKeysWith: { a, _ in a })
        for block in notebook.blocks {
            switch block {
            case .markdown(let b) where b.kind == .heading && b.headingLevel <= 3:
                items.append("<li class=\"toc-h\(b.headingLevel)\"><a href=\"#\(b.anchor)\">\(HTML.escape(b.headingText))</a></li>")
            case .cell(let c):
                let status = statuses[c.index] ?? .notRun
                items.append("<li class=\"toc-cell\"><a href=\"#\(anchor(c))\">\(HTML.escape(c.title))</a> <span class=\"badge badge-\(badgeClass(status))\">\(status.rawValue)</span></li>")
            default: break
            }
        }
        guard !items.isEmpty else { return "" }
        return "<nav class=\"toc\">\n<h2>Contents</h2>\n<ul>\n" + items.joined(separator: "\n") + "\n</ul>\n</nav>\n"
    }

    /// `cell-<id>` (ids are letters, digits, `.`, `_`, `-`: valid in ids and fragments as
    /// they are), or `cell-<number>` for cells without an id.
    static func anchor(_ c: CellSource) -> String { "cell-" + c.name }

    static func badgeClass(_ s: CellStatus) -> String { s.rawValue.replacingOccurrences(of: " ", with: "-") }

    static func render(_ view: CellView) -> String {
        let c = view.source, r = view.record
        var h = "<section class=\"cell status-\(badgeClass(r.status))\" id=\"\(anchor(c))\" data-step=\"\(HTML.escape(c.header.step))\" data-line=\"\(c.fenceLine)\">\n"
        h += "<div class=\"cell-head\"><span class=\"cell-num\">[\(c.index + 1)]</span> <span class=\"cell-step\">\(HTML.escape(c.title))</span>"
        h += " <span class=\"badge badge-\(badgeClass(r.status))\">\(r.status.rawValue)</span>"
        if let d = r.duration {
            let verb = r.status == .reused ? "originally ran in" : "in"
            h += " <span class=\"timing\">\(verb) <span class=\"dur\">\(Format.duration(d))</span></span>"
        }
        if r.status == .ran, let peak = r.peakMemoryMB {
            h += " <span class=\"timing\">peak memory <span class=\"mem\">\(String(format: "%.0f", peak)) MiB</span></span>"
        }
        if r.status == .reused, let at = r.finishedAt {
            h += " <span class=\"timing\">unchanged since <span class=\"date\">\(dateString(at))</span></span>"
        }
        h += " <span class=\"cell-line\">line \(c.fenceLine)</span></div>\n"
        if let note = r.note { h += "<p class=\"note\">\(HTML.escape(note))</p>\n" }
        let info = (["nb", c.header.step] + (c.header.id.map { ["id=\($0)"] } ?? []) + (c.header.skip ? ["skip"] : []) + (c.header.cache ? [] : ["cache=false"])).joined(separator: " ")
        h += "<details class=\"source\"><summary>source</summary><pre><code>```\(HTML.escape(info))\n\(HTML.escape(c.body))```</code></pre></details>\n"
        if let error = r.error { h += "<pre class=\"error\">\(HTML.escape(error))</pre>\n" }
        h += view.outputsHTML ?? render(view.outputs)
        h += "</section>\n"
        return h
    }

    /// A cell's outputs as HTML (empty when there are none).
    public static func render(_ outputs: [CellOutput]) -> String {
        guard !outputs.isEmpty else { return "" }
        return "<div class=\"outputs\">\n" + outputs.map(render).joined() + "</div>\n"
    }

    static func render(_ output: CellOutput) -> String {
        switch output {
        case .text(let t):
            return "<pre class=\"out-text\">\(HTML.escape(t))</pre>\n"
        case .warning(let t):
            return "<p class=\"warning\">\(HTML.escape(t))</p>\n"
        case .metrics(let ms):
            let items = ms.map { "<div class=\"metric\"><span class=\"metric-name\">\(HTML.escape($0.name))</span><span class=\"metric-value\">\(HTML.escape($0.value))</span></div>" }
            return "<div class=\"metrics\">\(items.joined())</div>\n"
        case .table(let t):
            var h = "<table class=\"out-table\">"
            if let title = t.title { h += "<caption>\(HTML.escape(title))</caption>" }
            h += "<thead><tr>" + t.columns.map { "<th>\(HTML.escape($0))</th>" }.joined() + "</tr></thead><tbody>"
            for row in t.rows { h += "<tr>" + row.map { "<td>\(HTML.escape($0))</td>" }.joined() + "</tr>" }
            return h + "</tbody></table>\n"
        case .chart(let chart):
            return "<figure class=\"chart\">\(chart.svg())</figure>\n"
        }
    }

    /// `2026-11-29 10:02:03 UTC`.
    static func dateString(_ date: Date) -> String {
        var t = time_t(date.timeIntervalSince1970.rounded(.down))
        var parts = tm()
        gmtime_r(&t, &parts)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday)) \(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)) UTC"
    }

    /// Light colours are the report's original design; the dark block redefines every
    /// colour for readers whose system prefers a dark scheme (no script involved). Charts
    /// read `--chart-*` and `--series-*` through inline styles (see `LineChart.svg`).
    static let css = """
    :root { color-scheme: light dark;
      --fg: #1d1d1f; --muted: #6b6b70; --line: #dcdce0; --bg: #ffffff; --bg-code: #f6f6f8; --bg-toc: #fafafb; --bg-th: #f3f3f6;
      --link: #0000ee; --link-visited: #551a8b;
      --neutral-bg: #e8e8ec; --neutral-fg: #333333; --ok-bg: #d9f2df; --ok-fg: #17612a; --bad-bg: #fbe0e0; --bad-fg: #8a1c1c;
      --warn-bg: #fff0cc; --warn-fg: #7a5200; --info-bg: #dde9fb; --info-fg: #1b4b91;
      --error-bg: #fdeeee; --error-line: #f3c4c4; --warning-bg: #fff6dd; --problems-bg: #fdf4f4;
      --edge: #9aa0a6; --edge-ran: #2e9d4b; --edge-reused: #4a7fd0; --edge-failed: #c62828; --edge-idle: #b0b0b8;
      --chart-bg: #ffffff; --chart-fg: #333333; --chart-title: #000000; --chart-grid: #e5e5e5; --chart-muted: #6b6b70;
      \(seriesVariables(LineChart.palette)) }
    @media (prefers-color-scheme: dark) { :root {
      --fg: #e4e4e7; --muted: #a1a1a8; --line: #3b3b42; --bg: #17171a; --bg-code: #232327; --bg-toc: #1d1d21; --bg-th: #26262b;
      --link: #8ab4f8; --link-visited: #c58af9;
      --neutral-bg: #34343a; --neutral-fg: #e4e4e7; --ok-bg: #163b20; --ok-fg: #8fe0a4; --bad-bg: #4a1c1c; --bad-fg: #ffb4b4;
      --warn-bg: #43340f; --warn-fg: #ffd98a; --info-bg: #1a3050; --info-fg: #a9c8ff;
      --error-bg: #2e1717; --error-line: #6b2a2a; --warning-bg: #3a3010; --problems-bg: #2a1616;
      --edge: #80868b; --edge-ran: #3fbf62; --edge-reused: #6b9ee8; --edge-failed: #ef5350; --edge-idle: #6a6a72;
      --chart-bg: #17171a; --chart-fg: #c8c8ce; --chart-title: #e4e4e7; --chart-grid: #34343a; --chart-muted: #a1a1a8;
      \(seriesVariables(LineChart.darkPalette)) } }
    * { box-sizing: border-box; }
    body { font: 15px/1.55 -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif; color: var(--fg); background: var(--bg); max-width: 980px; margin: 0 auto; padding: 24px 20px 60px; }
    a { color: var(--link); } a:visited { color: var(--link-visited); }
    header.run { border-bottom: 2px solid var(--line); margin-bottom: 18px; }
    .report-title { margin: 0 0 4px; font-size: 26px; }
    .run-state { display: inline-block; margin: 0 0 10px; padding: 1px 10px; border-radius: 10px; background: var(--neutral-bg); font-weight: 600; }
    .state-finished { background: var(--ok-bg); color: var(--ok-fg); } .state-failed, .state-invalid-notebook { background: var(--bad-bg); color: var(--bad-fg); }
    .state-interrupted { background: var(--warn-bg); color: var(--warn-fg); } .state-running { background: var(--info-bg); color: var(--info-fg); }
    dl.run-info { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; font-size: 13px; margin: 0 0 14px; }
    dl.run-info dt { color: var(--muted); } dl.run-info dd { margin: 0; font-family: ui-monospace, "DejaVu Sans Mono", monospace; word-break: break-all; }
    nav.toc { background: var(--bg-toc); border: 1px solid var(--line); border-radius: 6px; padding: 8px 16px; margin-bottom: 20px; font-size: 14px; }
    nav.toc h2 { font-size: 14px; margin: 4px 0; text-transform: uppercase; letter-spacing: .05em; color: var(--muted); }
    nav.toc ul { list-style: none; padding-left: 0; margin: 0; } nav.toc li { margin: 2px 0; }
    .toc-h2 { padding-left: 14px; } .toc-h3 { padding-left: 28px; } .toc-cell { padding-left: 28px; font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12.5px; }
    .prose table { border-collapse: collapse; margin: 10px 0; } .prose th, .prose td { border: 1px solid var(--line); padding: 4px 8px; }
    pre { background: var(--bg-code); padding: 10px 12px; border-radius: 6px; overflow-x: auto; font-size: 13px; }
    code { font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
    section.cell { border: 1px solid var(--line); border-left: 4px solid var(--edge); border-radius: 6px; padding: 10px 14px; margin: 16px 0; }
    section.status-ran { border-left-color: var(--edge-ran); } section.status-reused { border-left-color: var(--edge-reused); }
    section.status-failed, section.status-interrupted { border-left-color: var(--edge-failed); }
    section.status-skipped, section.status-not-run { border-left-color: var(--edge-idle); color: var(--muted); }
    .cell-head { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 13.5px; display: flex; flex-wrap: wrap; gap: 8px; align-items: baseline; }
    .cell-num { color: var(--muted); } .cell-step { font-weight: 700; } .cell-line, .timing { color: var(--muted); font-size: 12px; }
    .badge { font-size: 11px; padding: 1px 8px; border-radius: 9px; background: var(--neutral-bg); color: var(--neutral-fg); font-family: -apple-system, "DejaVu Sans", sans-serif; }
    .badge-ran { background: var(--ok-bg); color: var(--ok-fg); } .badge-reused { background: var(--info-bg); color: var(--info-fg); }
    .badge-failed, .badge-interrupted { background: var(--bad-bg); color: var(--bad-fg); } .badge-running { background: var(--warn-bg); color: var(--warn-fg); }
    details.source summary { cursor: pointer; color: var(--muted); font-size: 12px; margin-top: 6px; }
    pre.error { background: var(--error-bg); color: var(--bad-fg); border: 1px solid var(--error-line); white-space: pre-wrap; }
    p.note { color: var(--muted); font-size: 13px; margin: 6px 0; } p.warning { background: var(--warning-bg); color: var(--fg); padding: 6px 10px; border-radius: 4px; }
    .metrics { display: flex; flex-wrap: wrap; gap: 8px; margin: 8px 0; }
    .metric { border: 1px solid var(--line); border-radius: 6px; padding: 4px 10px; display: flex; flex-direction: column; min-width: 90px; }
    .metric-name { font-size: 11px; color: var(--muted); } .metric-value { font-weight: 600; font-size: 14px; word-break: break-all; }
    table.out-table { border-collapse: collapse; font-size: 13px; margin: 8px 0; width: 100%; }
    table.out-table caption { text-align: left; color: var(--muted); font-size: 12px; padding-bottom: 4px; }
    table.out-table th, table.out-table td { border: 1px solid var(--line); padding: 3px 8px; text-align: left; vertical-align: top; }
    table.out-table th { background: var(--bg-th); }
    figure.chart { margin: 10px 0; } figure.chart svg { max-width: 100%; height: auto; font-family: "DejaVu Sans", sans-serif; }
    section.problems { border: 1px solid var(--error-line); background: var(--problems-bg); border-radius: 6px; padding: 6px 16px; margin-bottom: 16px; }
    footer { margin-top: 40px; color: var(--muted); font-size: 12px; border-top: 1px solid var(--line); padding-top: 8px; }

    """

    /// `--series-0: #1f77b4; --series-1: …` for the chart palette of one scheme.
    static func seriesVariables(_ palette: [String]) -> String {
        palette.enumerated().map { "--series-\($0.offset): \($0.element);" }.joined(separator: " ")
    }
}
