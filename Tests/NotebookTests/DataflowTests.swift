import Engine
import Foundation
import Testing
@testable import Notebook

/// Dataflow keys: a cell re-runs when its step, parameters, input files or the versions of
/// the slots it reads change, and only then. Asserted from the manifest, never from timing,
/// on a notebook of every common step kind over the tiny LLaMA GGUF of `make setup`.
@Suite(.serialized) struct DataflowTests {
    static var model: String { ModelCache.directory.appendingPathComponent("fixtures/tiny-llama.gguf").path }

    static var notebook: String {
        """
        # Dataflow

        ```nb parameters
        epochs: 1
        ```

        ```nb load_model id=model
        model: \(model)
        ```

        ```nb load_data id=data
        path: qa.txt
        format: qa
        name: train
        ```

        ```nb load_data id=extra
        path: extra.txt
        format: qa
        name: extra
        limit: 2
        ```

        ```nb generate id=before
        prompts: ["What is FHE?"]
        max_tokens: 4
        ```

        ```nb inject_lora id=lora
        r: 2
        alpha: 4
        target_modules: [q_proj, v_proj]
        ```

        ```nb evaluate id=eval
        data: extra
        max_length: 32
        ```

        ```nb compile_hybrid id=hybrid
        n_bits: 8
        calibration: {data: train, batches: 1, batch_size: 2, max_length: 32}
        ```

        ```nb weights_report id=weights
        ```

        ```nb train id=train
        data: train
        epochs: ${epochs}
        learning_rate: 1e-3
        batch_size: 2
        max_length: 32
        mode: disable
        ```

        ```nb generate id=after
        prompts: ["What is FHE?"]
        max_tokens: 4
        mode: disable
        ```

        ```nb save_adapter id=save
        path: adapter
        ```

        ```nb fill_masks id=masks
        tokens: 64
        mode: execute
        ```

        """
    }

    static let all: Set<String> = ["1", "model", "data", "extra", "before", "lora", "eval", "hybrid", "weights", "train", "after", "save", "masks"]

    func workspace() throws -> Workspace {
        let w = try Workspace()
        try w.write("nb.md", Self.notebook)
        try w.copyFixture("qa.txt")
        try w.copyFixture("qa.txt", as: "extra.txt")
        return w
    }

    func ran(_ w: Workspace) throws -> Set<String> { Set(try w.statuses().filter { $0.value == "ran" }.keys) }

    /// Each edit, one at a time, re-runs exactly the cells that read (directly or through
    /// others) what the edited cell writes; undoing it reuses everything again.
    @Test func editingEachCellRerunsExactlyItsDependents() throws {
        let w = try workspace()
        let first = try w.nb("nb.md")
        try #require(first.code == 0, "\(first.stderr)")
        #expect(try ran(w) == Self.all)
        // (edit in the notebook text, the cells that must run)
        let cases: [(String, String, Set<String>)] = [
            ("epochs: 1\n```", "epochs: 2\n```", ["1", "train", "after", "save", "masks"]),
            ("model: \(Self.model)", "model: \(Self.model)\nfallback: smollm2-135m-instruct", Self.all.subtracting(["1"])),
            ("name: train\n", "name: train\nshow: 1\n", ["data", "hybrid", "weights", "train", "after", "save", "masks"]),
            ("limit: 2", "limit: 3", ["extra", "eval"]),
            ("max_tokens: 4\n```\n\n```nb inject_lora", "max_tokens: 5\n```\n\n```nb inject_lora", ["before"]),
            ("r: 2", "r: 3", ["lora", "eval", "hybrid", "weights", "train", "after", "save", "masks"]),
            ("data: extra\nmax_length: 32", "data: extra\nmax_length: 24", ["eval"]),
            ("n_bits: 8", "n_bits: 7", ["hybrid", "weights", "train", "after", "save", "masks"]),
            ("learning_rate: 1e-3", "learning_rate: 2e-3", ["train", "after", "save", "masks"]),
            ("max_tokens: 4\nmode: disable", "max_tokens: 6\nmode: disable", ["after"]),
            ("path: adapter", "path: adapter2", ["save"]),
        ]
        for (old, new, expected) in cases {
            #expect(Self.notebook.contains(old), "the edit '\(old)' must apply")
            try w.write("nb.md", Self.notebook.replacingOccurrences(of: old, with: new))
            let edited = try w.nb("nb.md")
            #expect(edited.code == 0, "\(edited.stderr)")
            #expect(try ran(w) == expected, "editing '\(old)' → '\(new)'")
            try w.write("nb.md", Self.notebook)
            let undone = try w.nb("nb.md")
            let rerun = try ran(w)
            #expect(undone.code == 0 && rerun.isEmpty, "undoing '\(old)': everything is reused, not \(rerun)")
        }
    }

    /// A data file edit re-runs the cells that read that data set, and their dependents only;
    /// `--explain` says so beforehand, naming what changed, and runs nothing.
    @Test func dataFileEditAndExplain() throws {
        let w = try workspace()
        try #require(try w.nb("nb.md").code == 0)
        let text = try w.read("qa.txt")
        try #require(text.contains("?"))
        try w.write("extra.txt", text.replacingOccurrences(of: "?", with: " ?"))
        let explained = try w.nb("nb.md", "--explain")
        #expect(explained.code == 0, "\(explained.stderr)")
        #expect(explained.stderr.contains("load_data · extra (line 17): run: input extra.txt changed"), "\(explained.stderr)")
        #expect(explained.stderr.contains("evaluate · eval (line 35): run: the data set 'extra' it reads changed (written by cell extra, line 17)"), "\(explained.stderr)")
        #expect(explained.stderr.contains("generate · before (line 24): reuse"))
        #expect(explained.stderr.contains("2 of 13 cells would run"))
        #expect(try ran(w) == Self.all, "--explain ran nothing (the manifest is the first run's)")

        let run = try w.nb("nb.md")
        #expect(run.code == 0, "\(run.stderr)")
        #expect(try ran(w) == ["extra", "eval"])
        // The report says which run produced each reused cell.
        #expect(try w.read("outputs/nb.html").contains("reused from the run of"))
    }

    /// `--cell` restores what the cell reads from the snapshots of the cells that wrote it,
    /// running first those of them that have none; `--from` runs the cell and its dependents.
    @Test func cellAndFromFollowTheDataflow() throws {
        let w = try workspace()
        let alone = try w.nb("nb.md", "--cell", "weights")
        #expect(alone.code == 0, "\(alone.stderr)")
        #expect(try ran(w) == ["model", "data", "lora", "hybrid", "weights"], "weights needs the model, the adapter, and the plan (which needs the data)")
        #expect(try w.nb("nb.md").code == 0)
        #expect(try w.nb("nb.md", "--from", "lora").code == 0)
        #expect(try ran(w) == ["lora", "eval", "hybrid", "weights", "train", "after", "save", "masks"])
        // A snapshot that is gone: its writer runs again, and nothing else.
        let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: w.root.appendingPathComponent("outputs/.nb/nb/manifest.json"))) as! [String: Any]
        let keys = Dictionary(uniqueKeysWithValues: (manifest["cells"] as! [[String: Any]]).map { ($0["name"] as! String, $0["key"] as! String) })
        try FileManager.default.removeItem(at: w.root.appendingPathComponent("outputs/.nb/nb/\(keys["data"]!)"))
        #expect(try w.nb("nb.md").code == 0)
        #expect(try ran(w) == ["data"])
    }

    /// A step that reads or writes a slot it did not declare fails its cell, and nothing of
    /// that cell is kept (its reuse could be wrong).
    @Test func undeclaredAccessFailsTheCell() throws {
        enum Rogue: Step {
            static let name = "rogue"
            static let summary = "reads what it does not declare"
            struct Parameters: StepParameters {
                enum Keys: String, CodingKey, CaseIterable { case write }
                typealias CodingKeys = Keys
                var write: Bool
            }
            static func dataflow(_ p: Parameters) -> StepDataflow { StepDataflow(reads: [.model]) }
            static func run(_ p: Parameters, context: StepContext) throws {
                _ = context.session.state.model
                if p.write { context.session.state.hybrid = nil } else { _ = context.session.state.adapter }
            }
        }
        var registry = StepRegistry.standard
        registry.register(Rogue.self)
        for (write, words) in [(false, "read the adapter"), (true, "wrote the hybrid plan")] {
            let w = try Workspace()
            try w.write("nb.md", "# Rogue\n\n```nb rogue id=r\nwrite: \(write)\n```\n")
            var options = RunOptions(outputDirectory: w.root.appendingPathComponent("outputs"))
            options.log = { _ in }
            let result = NotebookRunner(notebook: w.root.appendingPathComponent("nb.md"), options: options, registry: registry).run()
            #expect(result.exitCode == 1)
            #expect(result.message?.contains("internal error: the rogue step \(words) without declaring it") == true, "\(result.message ?? "")")
            #expect(try w.statuses()["r"] == "failed")
        }
    }

    /// `--watch`: two edits, two more cycles, each re-running only what changed; SIGINT
    /// (sent to the process itself: nb unblocks SIGINT, which test runners' children inherit
    /// blocked) between cycles leaves the last complete report and exits 0.
    @Test func watchRerunsWhatChangedAndStopsOnSIGINT() throws {
        let w = try workspace()
        let process = Process()
        process.executableURL = try NbProcess.binary()
        process.arguments = ["nb.md", "--watch"]
        process.currentDirectoryURL = w.root
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        let collected = LockedText()
        errors.fileHandleForReading.readabilityHandler = { collected.append($0.availableData) }
        try process.run()
        defer { if process.isRunning { process.terminate() } }
        func waitFor(_ text: String) throws {
            let deadline = Date().addingTimeInterval(120)
            while !collected.text.contains(text) && Date() < deadline && process.isRunning { usleep(50_000) }
            try #require(collected.text.contains(text), "waited for '\(text)': \(collected.text.suffix(2000))")
        }
        try waitFor("watch cycle 1: 13 ran, 0 reused")
        try w.write("nb.md", Self.notebook.replacingOccurrences(of: "limit: 2", with: "limit: 3"))
        try waitFor("watch cycle 2: 2 ran, 11 reused")
        #expect(try ran(w) == ["extra", "eval"])
        try w.write("nb.md", Self.notebook.replacingOccurrences(of: "learning_rate: 1e-3", with: "learning_rate: 2e-3"))
        // (limit is back to 2: extra and eval are reused from the first cycle's snapshots.)
        try waitFor("watch cycle 3: 4 ran, 9 reused")
        #expect(try ran(w) == ["train", "after", "save", "masks"])
        kill(process.processIdentifier, SIGINT)
        process.waitUntilExit()
        errors.fileHandleForReading.readabilityHandler = nil
        #expect(process.terminationStatus == 0, "\(collected.text.suffix(1000))")
        #expect(collected.text.contains("nb: watch stopped; report: outputs/nb.html"))
        let report = try w.read("outputs/nb.html")
        #expect(report.contains("state-finished") && report.contains("</html>"), "the last cycle's report is complete")
    }
}

/// Text appended from a pipe's reader thread.
final class LockedText: @unchecked Sendable {
    private let lock = NSLock()
    private var data = Data()
    func append(_ d: Data) { lock.withLock { data.append(d) } }
    var text: String { lock.withLock { String(decoding: data, as: UTF8.self) } }
}
