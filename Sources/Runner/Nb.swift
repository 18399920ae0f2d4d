import ArgumentParser
import Engine
import Foundation
import Notebook

/// `nb`: runs Markdown notebooks of LoRA fine-tuning steps and writes HTML reports.
struct Nb: ParsableCommand {
    static var configuration: CommandConfiguration {
        CommandConfiguration(
            commandName: "nb",
            abstract: "Run Markdown notebooks that fine-tune language models, and write HTML reports.",
            discussion: """
            A notebook is a Markdown file; its fenced blocks whose info string starts with `nb` are \
            steps (```nb load_data id=data), their bodies YAML parameters. Reports go to \
            outputs/NAME.html; cell snapshots to outputs/.nb/NAME/.
            """,
            version: "nb \(NbVersion.string)\nBLAS: \(BLAS.summary)",
            subcommands: [Run.self, Steps.self, Outline.self, Generate.self, TopTokens.self, Tokenize.self, Detokenize.self, Export.self, Serve.self, Eval.self],
            defaultSubcommand: Run.self)
    }
}

extension Nb {
    struct Run: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run a notebook (the default command: `nb NOTEBOOK.md`).")

        @Argument(help: "The notebook, a Markdown file.", completion: .file(extensions: ["md"]))
        var notebook: String

        @Option(name: .customLong("cell"), help: ArgumentHelp("Re-run only this cell (id or 1-based number), on what it reads, restored from the cells that wrote it.", valueName: "ID|N"))
        var cell: String?

        @Option(name: .customLong("from"), help: ArgumentHelp("Re-run this cell and the cells that read, directly or through others, what it writes.", valueName: "ID|N"))
        var from: String?

        @Flag(help: "Re-run every cell, ignoring saved snapshots.")
        var fresh = false

        @Flag(help: "List the cells (number, id, step, line, last status) and exit.")
        var list = false

        @Flag(name: [.customLong("explain"), .customLong("dry-run")], help: "Print, for each cell, whether it would be reused or run and why (which parameter, input file or slot it reads changed); run nothing.")
        var explain = false

        @Flag(help: "Run, then re-run what changed on every save of the notebook or of a file a cell reads, rewriting the report; Ctrl-C stops.")
        var watch = false

        @Option(name: .customLong("param"), help: ArgumentHelp("Override a notebook parameter declared in its `nb parameters` cell.", valueName: "key=value"))
        var parameters: [String] = []

        @Option(name: .customLong("output"), help: ArgumentHelp("Directory for the report and the saved cell state.", valueName: "DIR"))
        var output = "outputs"

        @Flag(help: "Pass raw HTML in the notebook's prose through to the report (it is shown escaped otherwise).")
        var allowHTML = false

        func validate() throws {
            if cell != nil && from != nil { throw ValidationError("--cell and --from cannot be used together") }
            if fresh && cell != nil { throw ValidationError("--fresh re-runs everything; it cannot be combined with --cell") }
            for p in parameters where !p.contains("=") { throw ValidationError("--param \(p): expected key=value") }
            if watch && (explain || list) { throw ValidationError("--watch runs the notebook; it cannot be combined with --explain or --list") }
            if watch && (cell != nil || from != nil || fresh) { throw ValidationError("--watch re-runs what changed; use it without --cell, --from or --fresh") }
        }

        func run() throws {
            let url = URL(fileURLWithPath: notebook)
            var options = RunOptions(outputDirectory: URL(fileURLWithPath: output, isDirectory: true))
            options.fresh = fresh
            options.onlyCell = cell
            options.fromCell = from
            options.parameterOverrides = parameters
            options.allowRawHTML = allowHTML
            options.explain = explain
            options.invocation = (["nb"] + CommandLine.arguments.dropFirst()).joined(separator: " ")
            if list {
                try listCells(url: url, options: options)
                return
            }
            if watch { watchLoop(url: url, options: options) }
            let result = NotebookRunner(notebook: url, displayPath: notebook, options: options).run()
            if result.exitCode != 0 { throw ExitCode(result.exitCode) }
        }

        /// `--watch`: run, wait for a change to the notebook or to a file a cell reads (polled
        /// every 0.25 s by size and modification time), run again (reusing what did not
        /// change), forever. Ctrl-C while a cell runs leaves the report of an interrupted run;
        /// between runs it leaves the last complete report and exits 0.
        func watchLoop(url: URL, options: RunOptions) -> Never {
            func stamp(_ files: [URL]) -> [String] {
                files.map { f in
                    let a = try? FileManager.default.attributesOfItem(atPath: f.path)
                    return "\((a?[.size] as? NSNumber)?.intValue ?? -1) \((a?[.modificationDate] as? Date)?.timeIntervalSince1970 ?? -1)"
                }
            }
            var cycle = 0
            while true {
                cycle += 1
                let runner = NotebookRunner(notebook: url, displayPath: notebook, options: options)
                let result = runner.run(watching: true)
                let records = result.manifest?.cells ?? []
                func count(_ s: CellStatus) -> Int { records.filter { $0.status == s }.count }
                let files = [url] + runner.inputFiles
                options.log("nb: watch cycle \(cycle): \(count(.ran)) ran, \(count(.reused)) reused"
                    + (count(.failed) > 0 ? ", \(count(.failed)) failed" : "") + (result.exitCode == 2 ? " (invalid notebook)" : "")
                    + "; watching \(files.count) file\(files.count == 1 ? "" : "s") (Ctrl-C stops)\n")
                let before = stamp(files)
                repeat { usleep(250_000) } while stamp(files) == before
                usleep(150_000)  // let an editor finish writing
            }
        }

        func listCells(url: URL, options: RunOptions) throws {
            let source: NotebookSource
            do { source = try NotebookSource.load(url, displayPath: notebook) } catch {
                FileHandle.standardError.write(Data("\(error)\n".utf8))
                throw ExitCode(2)
            }
            let runner = NotebookRunner(notebook: url, displayPath: notebook, options: options)
            let manifest = RunManifest.load(from: runner.stateRoot)
            var rows = [["#", "id", "step", "line", "last status"]]
            for c in source.cells {
                let record = manifest?.cells.first { $0.index == c.index && $0.step == c.header.step }
                var status = record?.status.rawValue ?? "never run"
                if c.header.skip { status += " (skip)" }
                rows.append([String(c.index + 1), c.header.id ?? "-", c.header.step, String(c.fenceLine), status])
            }
            let widths = (0..<5).map { col in rows.map { $0[col].count }.max()! }
            for row in rows {
                print(row.enumerated().map { $0.element.padding(toLength: widths[$0.offset], withPad: " ", startingAt: 0) }
                    .joined(separator: "  ").trimmingCharacters(in: .whitespaces))
            }
        }
    }

    struct Steps: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the steps a notebook cell can use.")
        func run() {
            let registry = StepRegistry.standard
            print("\(ParametersCell.stepName): declare notebook parameters and their defaults (first cell)")
            for name in registry.names { print("\(name): \(registry.summary(of: name) ?? "")") }
        }
    }

    struct Outline: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print a notebook's blocks and step cells with their source lines (nothing runs).")

        @Argument(help: "The notebook, a Markdown file.")
        var notebook: String

        func run() throws {
            do {
                print(try NotebookSource.load(URL(fileURLWithPath: notebook), displayPath: notebook).outline(), terminator: "")
            } catch {
                FileHandle.standardError.write(Data("\(error)\n".utf8))
                throw ExitCode(2)
            }
        }
    }
}
