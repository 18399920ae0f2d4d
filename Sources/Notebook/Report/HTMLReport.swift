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

    static let css = """
    :root { --fg: #1d1d1f; --muted: #6b6b70; --line: #dcdce0; --bg-code: #f6f6f8; }
    * { box-sizing: border-box; }
    body { font: 15px/1.55 -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif; color: var(--fg); max-width: 980px; margin: 0 auto; padding: 24px 20px 60px; }
    header.run { border-bottom: 2px solid var(--line); margin-bottom: 18px; }
    .report-title { margin: 0 0 4px; font-size: 26px; }
    .run-state { display: inline-block; margin: 0 0 10px; padding: 1px 10px; border-radius: 10px; background: #e8e8ec; font-weight: 600; }
    .state-finished { background: #d9f2df; color: #17612a; } .state-failed, .state-invalid-notebook { background: #fbe0e0; color: #8a1c1c; }
    .state-interrupted { background: #fff0cc; color: #7a5200; } .state-running { background: #dde9fb; color: #1b4b91; }
    dl.run-info { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; font-size: 13px; margin: 0 0 14px; }
    dl.run-info dt { color: var(--muted); } dl.run-info dd { margin: 0; font-family: ui-monospace, "DejaVu Sans Mono", monospace; word-break: break-all; }
    nav.toc { background: #fafafb; border: 1px solid var(--line); border-radius: 6px; padding: 8px 16px; margin-bottom: 20px; font-size: 14px; }
    nav.toc h2 { font-size: 14px; margin: 4px 0; text-transform: uppercase; letter-spacing: .05em; color: var(--muted); }
    nav.toc ul { list-style: none; padding-left: 0; margin: 0; } nav.toc li { margin: 2px 0; }
    .toc-h2 { padding-left: 14px; } .toc-h3 { padding-left: 28px; } .toc-cell { padding-left: 28px; font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12.5px; }
    .prose table { border-collapse: collapse; margin: 10px 0; } .prose th, .prose td { border: 1px solid var(--line); padding: 4px 8px; }
    pre { background: var(--bg-code); padding: 10px 12px; border-radius: 6px; overflow-x: auto; font-size: 13px; }
    code { font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
    section.cell { border: 1px solid var(--line); border-left: 4px solid #9aa0a6; border-radius: 6px; padding: 10px 14px; margin: 16px 0; }
    section.status-ran { border-left-color: #2e9d4b; } section.status-reused { border-left-color: #4a7fd0; }
    section.status-failed, section.status-interrupted { border-left-color: #c62828; } section.status-skipped, section.status-not-run { border-left-color: #b0b0b8; opacity: .85; }
    .cell-head { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 13.5px; display: flex; flex-wrap: wrap; gap: 8px; align-items: baseline; }
    .cell-num { color: var(--muted); } .cell-step { font-weight: 700; } .cell-line, .timing { color: var(--muted); font-size: 12px; }
    .badge { font-size: 11px; padding: 1px 8px; border-radius: 9px; background: #e8e8ec; color: #333; font-family: -apple-system, "DejaVu Sans", sans-serif; }
    .badge-ran { background: #d9f2df; color: #17612a; } .badge-reused { background: #dde9fb; color: #1b4b91; }
    .badge-failed, .badge-interrupted { background: #fbe0e0; color: #8a1c1c; } .badge-running { background: #fff0cc; color: #7a5200; }
    details.source summary { cursor: pointer; color: var(--muted); font-size: 12px; margin-top: 6px; }
    pre.error { background: #fdeeee; color: #8a1c1c; border: 1px solid #f3c4c4; white-space: pre-wrap; }
    p.note { color: var(--muted); font-size: 13px; margin: 6px 0; } p.warning { background: #fff6dd; padding: 6px 10px; border-radius: 4px; }
    .metrics { display: flex; flex-wrap: wrap; gap: 8px; margin: 8px 0; }
    .metric { border: 1px solid var(--line); border-radius: 6px; padding: 4px 10px; display: flex; flex-direction: column; min-width: 90px; }
    .metric-name { font-size: 11px; color: var(--muted); } .metric-value { font-weight: 600; font-size: 14px; word-break: break-all; }
    table.out-table { border-collapse: collapse; font-size: 13px; margin: 8px 0; width: 100%; }
    table.out-table caption { text-align: left; color: var(--muted); font-size: 12px; padding-bottom: 4px; }
    table.out-table th, table.out-table td { border: 1px solid var(--line); padding: 3px 8px; text-align: left; vertical-align: top; }
    table.out-table th { background: #f3f3f6; }
    figure.chart { margin: 10px 0; } figure.chart svg { max-width: 100%; height: auto; font-family: "DejaVu Sans", sans-serif; }
    section.problems { border: 1px solid #f3c4c4; background: #fdf4f4; border-radius: 6px; padding: 6px 16px; margin-bottom: 16px; }
    footer { margin-top: 40px; color: var(--muted); font-size: 12px; border-top: 1px solid var(--line); padding-top: 8px; }

    """
}
