// `make bench`: speed of nb, each figure next to a baseline measured in the same run.
// Writes outputs/bench.md and outputs/bench.json.
import CCmarkGFM
import Engine
import Foundation
import Notebook

struct Row: Codable {
    var name: String
    var value: Double
    var unit: String
    var baselineName: String?
    var baseline: Double?
    /// value / baseline.
    var ratio: Double?
    var note: String?

    enum CodingKeys: String, CodingKey {
        case name, value, unit, baseline, ratio, note
        case baselineName = "baseline_name"
    }
}

func now() -> Double { ProgressReporter.monotonicSeconds() }

func median(_ xs: [Double]) -> Double {
    let s = xs.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

func time(_ reps: Int, _ body: () throws -> Void) rethrows -> Double {
    var times: [Double] = []
    for _ in 0..<reps {
        let t = now()
        try body()
        times.append(now() - t)
    }
    return median(times)
}

@discardableResult
func runProcess(_ exe: URL, _ args: [String], in dir: URL, env: [String: String] = [:]) throws -> (Int32, String) {
    let p = Process()
    p.executableURL = exe
    p.arguments = args
    p.currentDirectoryURL = dir
    var e = ProcessInfo.processInfo.environment
    for (k, v) in env { e[k] = v }
    p.environment = e
    let out = Pipe()
    p.standardOutput = out
    p.standardError = FileHandle.nullDevice
    try p.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: data, as: UTF8.self))
}

/// GFLOP/s of a 768×768×768 sgemm, median of 20 after warm-up.
func sgemmGFLOPS(n: Int = 768) -> Double {
    var a = [Float](repeating: 0, count: n * n), b = a, c = a
    for i in 0..<(n * n) { a[i] = Float(i % 13) * 0.01; b[i] = Float(i % 7) * 0.02 }
    let t = a.withUnsafeBufferPointer { pa in
        b.withUnsafeBufferPointer { pb in
            c.withUnsafeMutableBufferPointer { pc in
                for _ in 0..<3 { BLAS.sgemm(transposeA: false, transposeB: false, m: n, n: n, k: n, a: pa.baseAddress!, lda: n, b: pb.baseAddress!, ldb: n, c: pc.baseAddress!, ldc: n) }
                return time(20) { BLAS.sgemm(transposeA: false, transposeB: false, m: n, n: n, k: n, a: pa.baseAddress!, lda: n, b: pb.baseAddress!, ldb: n, c: pc.baseAddress!, ldc: n) }
            }
        }
    }
    return 2 * Double(n * n * n) / t / 1e9
}

// Child mode: print sgemm GFLOP/s with whatever kernel this process loaded.
if CommandLine.arguments.contains("--sgemm-only") {
    print(String(format: "%.3f %@", sgemmGFLOPS(), BLAS.coreName))
    exit(0)
}

BLASEnvironment.ensureFastKernels()
let selfURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
let binDir = selfURL.deletingLastPathComponent()
let nbBinary = binDir.appendingPathComponent("nb")
guard FileManager.default.isExecutableFile(atPath: nbBinary.path) else {
    FileHandle.standardError.write(Data("bench: \(nbBinary.path) is missing; build it first (make bench does)\n".utf8))
    exit(1)
}
let outputDir = URL(fileURLWithPath: "outputs", isDirectory: true)
var rows: [Row] = []
print("nb benchmarks — \(MachineInfo.current().summary)\nBLAS: \(BLAS.summary)\n")

// 1. sgemm 768³ with the kernel nb picks, against OpenBLAS's generic kernel in a child process.
let fast = sgemmGFLOPS()
let (_, genericOut) = try runProcess(selfURL, ["--sgemm-only"], in: URL(fileURLWithPath: "."),
                                     env: ["OPENBLAS_CORETYPE": "Prescott", "NB_BLAS_REEXEC": "1"])
let generic = Double(genericOut.split(separator: " ").first ?? "") ?? .nan
rows.append(Row(name: "sgemm 768³ (\(BLAS.coreName) kernel)", value: fast, unit: "GFLOP/s",
                baselineName: "OpenBLAS generic Prescott kernel", baseline: generic, ratio: fast / generic))

// 2. Parse + render of a 200-cell notebook, against cmark-gfm's own markdown→HTML of the same text.
let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("nb-bench-\(UUID().uuidString)")
try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
defer { try? FileManager.default.removeItem(at: scratch) }
var qa = ""
for i in 0..<20 { qa += "Question number \(i) about encryption?\nAnswer number \(i), which is a little longer than the question.\n" }
try qa.write(to: scratch.appendingPathComponent("qa.txt"), atomically: true, encoding: .utf8)
var text = "# Benchmark notebook\n\nTwo hundred cells.\n\n```nb parameters\nshow: 3\n```\n\n"
for i in 1..<200 {
    text += "## Section \(i)\n\nSome *prose* with a [link](https://example.org) and `code`, item \(i).\n\n"
    text += "```nb load_data id=c\(i)\npath: qa.txt\nname: d\(i)\nshow: ${show}\n```\n\n"
}
let notebookURL = scratch.appendingPathComponent("bench200.md")
try text.write(to: notebookURL, atomically: true, encoding: .utf8)

let source = try NotebookSource.parse(text, url: notebookURL, displayPath: "bench200.md")
let views = source.cells.map { c in
    CellView(source: c, record: CellRecord(index: c.index, name: c.name, id: c.header.id, step: c.header.step,
                                           line: c.fenceLine, key: nil, status: .ran, duration: 0.01),
             outputs: [.metrics([Metric("examples", "20")]),
                       .table(OutputTable(columns: ["line", "q"], rows: [["1", "Question?"], ["3", "Another?"]]))])
}
let header = ReportHeader(title: "bench", notebookPath: "bench200.md", startedAt: Date(), gitCommit: nil,
                          machine: MachineInfo.current(), invocation: "bench", state: "finished", totalSeconds: 1)
let parseRender = try time(20) {
    let s = try NotebookSource.parse(text, url: notebookURL, displayPath: "bench200.md")
    _ = HTMLReport.render(header: header, notebook: s, cells: views, problems: [])
}
let cmarkOnly = time(20) {
    text.withCString { p in
        let html = cmark_markdown_to_html(p, strlen(p), CMARK_OPT_DEFAULT)
        free(html)
    }
}
rows.append(Row(name: "parse + render, 200-cell notebook", value: parseRender * 1000, unit: "ms",
                baselineName: "cmark-gfm markdown→HTML of the same text", baseline: cmarkOnly * 1000,
                ratio: parseRender / cmarkOnly))

// 3. A reused run of the unchanged notebook, against process start (`nb --version`).
try runProcess(nbBinary, ["bench200.md", "--fresh"], in: scratch)
let (code, _) = try runProcess(nbBinary, ["bench200.md"], in: scratch)
precondition(code == 0, "the benchmark notebook failed")
let reused = try time(10) { try runProcess(nbBinary, ["bench200.md"], in: scratch) }
let start = try time(10) { try runProcess(nbBinary, ["--version"], in: scratch) }
rows.append(Row(name: "reused run of the unchanged 200-cell notebook", value: reused * 1000, unit: "ms",
                baselineName: "process start (nb --version)", baseline: start * 1000, ratio: reused / start,
                note: String(format: "overhead beyond process start %.0f ms (target < 200 ms)", (reused - start) * 1000)))

// Table and files.
func fmt(_ x: Double?) -> String { x.map { $0 >= 100 ? String(format: "%.0f", $0) : String(format: "%.2f", $0) } ?? "–" }
var md = "# nb benchmarks\n\n\(MachineInfo.current().summary)  \nBLAS: \(BLAS.summary)  \n\(ISO8601DateFormatter().string(from: Date()))\n\n"
md += "| benchmark | value | unit | baseline | baseline value | ratio | note |\n|---|---:|---|---|---:|---:|---|\n"
for r in rows {
    md += "| \(r.name) | \(fmt(r.value)) | \(r.unit) | \(r.baselineName ?? "") | \(fmt(r.baseline)) | \(r.ratio.map { String(format: "%.2f×", $0) } ?? "–") | \(r.note ?? "") |\n"
}
print(md)
try FileManager.default.createDirectory(at: outputDir, withIntermediateDirectories: true)
try md.write(to: outputDir.appendingPathComponent("bench.md"), atomically: true, encoding: .utf8)
let encoder = JSONEncoder()
encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
try encoder.encode(rows).write(to: outputDir.appendingPathComponent("bench.json"))
print("wrote outputs/bench.md and outputs/bench.json")
