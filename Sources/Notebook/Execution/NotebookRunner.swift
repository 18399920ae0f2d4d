import Engine
import Foundation

/// Options of one `nb NOTEBOOK` run.
public struct RunOptions: Sendable {
    public var fresh = false
    /// `--cell`: re-run only this cell (id or 1-based number) from the state before it.
    public var onlyCell: String?
    /// `--from`: re-run this cell and every cell after it.
    public var fromCell: String?
    /// `--param key=value`, in order.
    public var parameterOverrides: [String] = []
    /// Where the report and the `.nb/` state go.
    public var outputDirectory: URL
    public var allowRawHTML = false
    /// The command line, for the report header.
    public var invocation = "nb"
    /// Progress and status lines (stderr by default).
    public var log: @Sendable (String) -> Void = { FileHandle.standardError.write(Data($0.utf8)) }
    /// Whether stderr is a terminal (live progress line) or a log (periodic lines).
    public var interactive = isatty(STDERR_FILENO) != 0

    public init(outputDirectory: URL) { self.outputDirectory = outputDirectory }
}

/// How a run ended.
public struct RunResult: Sendable {
    /// 0 all cells ran or were reused; 1 a cell failed; 2 the notebook is invalid; 130 interrupted.
    public var exitCode: Int32
    public var reportURL: URL
    public var manifest: RunManifest?
    /// The first problem, as one line for the terminal.
    public var message: String?
}

/// Runs a notebook: parse, validate every cell, decide which cells to run and which to
/// reuse from their snapshots, execute, and rewrite the report after every cell.
public final class NotebookRunner: @unchecked Sendable {
    let notebookURL: URL
    let displayPath: String
    let options: RunOptions
    let registry: StepRegistry
    public let reportURL: URL
    public let stateRoot: URL

    // Shared with the interrupt handler; guarded by `lock`.
    private let lock = NSLock()
    private var header: ReportHeader
    private var notebook: NotebookSource?
    private var views: [CellView] = []
    private var problems: [String] = []
    private var manifest: RunManifest?
    private let startClock = ProgressReporter.monotonicSeconds()

    public init(notebook url: URL, displayPath: String? = nil, options: RunOptions, registry: StepRegistry = .standard) {
        self.notebookURL = url.standardizedFileURL
        self.displayPath = displayPath ?? url.path
        self.options = options
        self.registry = registry
        let name = url.deletingPathExtension().lastPathComponent
        self.reportURL = options.outputDirectory.appendingPathComponent(name + ".html")
        self.stateRoot = options.outputDirectory.appendingPathComponent(".nb", isDirectory: true).appendingPathComponent(name, isDirectory: true)
        self.header = ReportHeader(
            title: name, notebookPath: self.displayPath, startedAt: Date(),
            gitCommit: GitInfo.commit(in: url.deletingLastPathComponent()),
            machine: MachineInfo.current(), invocation: options.invocation, state: "running", totalSeconds: 0)
    }

    // MARK: - Preparing

    /// A cell decoded and keyed, ready to run or reuse.
    struct PlannedCell {
        var source: CellSource
        var prepared: PreparedStep?
        /// Parameters cell: the resolved values, in order, and where each came from.
        var parameterRows: [[String]] = []
        var key: String
        /// The key without the parameters that say where the work runs: what the cell's
        /// checkpoints are filed under.
        var checkpointKey: String
    }

    /// Parses and validates the notebook, collecting every problem (not just the first).
    func prepare(_ source: NotebookSource) -> (cells: [PlannedCell], parameters: [String: String], errors: [NotebookError]) {
        var errors = source.errors
        let badHeaders = Set(source.errors.compactMap { $0.location?.line })
        var parameters: [String: String] = [:]
        var rows: [[String]] = []
        let cells = source.cells
        let file = source.displayPath

        // Parameters: declared by the first step cell, overridden by --param.
        for cell in cells where cell.header.step == ParametersCell.stepName && cell.index != 0 {
            errors.append(.parametersCellMisplaced(SourceLocation(file: file, line: cell.fenceLine)))
        }
        if let first = cells.first, first.header.step == ParametersCell.stepName {
            do {
                for d in try ParametersCell.declarations(first, file: file) {
                    parameters[d.name] = d.value
                    rows.append([d.name, d.value, "default (line \(d.line))"])
                }
            } catch { errors.append(error) }
        }
        for override in options.parameterOverrides {
            let parts = override.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, !parts[0].isEmpty else { errors.append(.badParameterOverride(override)); continue }
            guard parameters[parts[0]] != nil else {
                errors.append(.unknownParameterOverride(name: parts[0], declared: parameters.keys.sorted()))
                continue
            }
            parameters[parts[0]] = parts[1]
            if let i = rows.firstIndex(where: { $0[0] == parts[0] }) { rows[i] = [parts[0], parts[1], "--param"] }
        }

        var planned: [PlannedCell] = []
        var previousKey = SHA256Digest.hex("nb \(NbVersion.string) notebook \(source.name)")
        var previousCheckpointKey = previousKey
        let hasher = FileDigestCache(stateRoot: stateRoot)
        for cell in cells {
            var plannedCell = PlannedCell(source: cell, key: previousKey, checkpointKey: previousCheckpointKey)
            if cell.header.step == ParametersCell.stepName {
                plannedCell.parameterRows = rows
                let canonical = rows.map { "\($0[0])=\($0[1])" }.joined(separator: "\n")
                plannedCell.key = SHA256Digest.hex("\(previousKey)\nparameters\n\(canonical)")
                plannedCell.checkpointKey = SHA256Digest.hex("\(previousCheckpointKey)\nparameters\n\(canonical)")
            } else if !badHeaders.contains(cell.fenceLine) {
                do {
                    let body = try ParametersCell.substitute(cell.body, parameters: parameters, cell: cell, file: file)
                    let prepared = try registry.prepare(cell, body: body, file: file)
                    plannedCell.prepared = prepared
                    let context = makeContext(cell: cell, session: Session(), key: "", checkpointKey: "")
                    let inputs = prepared.inputs(context).map { url -> String in
                        "\(url.path) \(hasher.digest(of: url) ?? "missing")"
                    }
                    if !cell.header.skip {
                        plannedCell.key = SHA256Digest.hex(
                            "\(previousKey)\n\(prepared.name)\n\(prepared.canonicalParameters)\n\(inputs.joined(separator: "\n"))")
                        plannedCell.checkpointKey = SHA256Digest.hex(
                            "\(previousCheckpointKey)\n\(prepared.name)\n\(prepared.computationParameters)\n\(inputs.joined(separator: "\n"))")
                    }
                } catch {
                    errors.append(error)
                }
            }
            previousKey = plannedCell.key
            previousCheckpointKey = plannedCell.checkpointKey
            planned.append(plannedCell)
        }
        hasher.save()
        return (planned, parameters, errors)
    }

    func makeContext(cell: CellSource, session: Session, key: String, checkpointKey: String) -> StepContext {
        let log = options.log, interactive = options.interactive
        return StepContext(
            session: session, cell: cell, notebookPath: displayPath,
            notebookDirectory: notebookURL.deletingLastPathComponent(), stateDirectory: stateRoot, cellKey: key, checkpointKey: checkpointKey,
            makeProgress: { label, total in ProgressReporter(label: label, total: total, interactive: interactive, write: log) })
    }

    // MARK: - Running

    public func run() -> RunResult {
        installInterruptHandler()
        let source: NotebookSource
        do {
            source = try NotebookSource.load(notebookURL, displayPath: displayPath, allowRawHTML: options.allowRawHTML, strict: false)
        } catch {
            return finishInvalid([error], source: nil)
        }
        lock.withLock {
            notebook = source
            header.title = source.title
        }
        let (cells, parameters, errors) = prepare(source)
        lock.withLock {
            views = cells.map { CellView(source: $0.source, record: record(for: $0, status: .notRun), outputs: []) }
        }
        if !errors.isEmpty { return finishInvalid(errors, source: source) }

        // Which cells must run no matter what.
        var forced = Set<Int>()
        var onlyIndex: Int?
        do {
            if let name = options.onlyCell {
                let cell = try source.cell(named: name)
                forced.insert(cell.index)
                onlyIndex = cell.index
            }
            if let name = options.fromCell {
                let cell = try source.cell(named: name)
                forced.formUnion(cell.index..<cells.count)
            }
        } catch {
            return finishInvalid([error], source: source)
        }
        if options.fresh { forced.formUnion(0..<cells.count) }

        options.log("nb: \(displayPath): \(cells.count) step cell\(cells.count == 1 ? "" : "s")\n")
        let store = SnapshotStore(root: stateRoot)
        var state = SessionState()
        state.parameters = parameters
        let session = Session(state: state)
        session.keyDirectory = stateRoot.appendingPathComponent("keys", isDirectory: true)
        var failure: String?
        // The verified payload of the last reused snapshot: its state is decoded only if a
        // later cell has to run on it.
        var pendingState: (payload: Data, cell: String)?

        for (i, cell) in cells.enumerated() {
            let label = "[\(i + 1)/\(cells.count)] \(cell.source.title) (line \(cell.source.fenceLine))"
            if failure != nil { continue }
            if cell.source.header.skip {
                update(i, status: .skipped, note: "skipped (the cell says skip)")
                options.log("  \(label): skipped\n")
                continue
            }
            // After the one cell of `--cell`, show the later cells from their snapshots.
            if let only = onlyIndex, i > only {
                if case .success(let (snap, _)) = store.loadSummary(key: cell.key) {
                    update(i, status: .reused, duration: snap.duration, finishedAt: snap.finishedAt,
                           note: "not re-run (--cell \(options.onlyCell!)); outputs from the last run", outputsHTML: snap.outputsHTML)
                } else {
                    update(i, status: .notRun, note: "not run (--cell \(options.onlyCell!)) and no earlier result")
                }
                continue
            }
            var note: String?
            if !forced.contains(i) && cell.source.header.cache {
                switch store.loadSummary(key: cell.key) {
                case .success(let (snap, payload)):
                    pendingState = (payload, cell.source.name)
                    lock.withLock { header.model = snap.model }
                    update(i, status: .reused, duration: snap.duration, finishedAt: snap.finishedAt,
                           note: "reused: step, parameters, input files and earlier cells unchanged", outputsHTML: snap.outputsHTML)
                    options.log("  \(label): reused (unchanged since \(HTMLReport.dateString(snap.finishedAt)))\n")
                    continue
                case .failure(let problem):
                    if case .corrupt = problem { note = "\(problem.description.prefix(1).uppercased())\(problem.description.dropFirst()); re-ran" }
                }
            } else if !cell.source.header.cache {
                note = "cache=false: always re-run"
            } else if forced.contains(i) {
                note = options.fresh ? "--fresh" : (onlyIndex == i ? "--cell" : "--from")
                note = "re-run (\(note!))"
            }
            if let pending = pendingState {
                switch store.decodeState(pending.payload) {
                case .success(let restored): session.state = restored
                case .failure(let problem):
                    failure = "\(source.displayPath):\(cell.source.fenceLine): cannot restore the state saved after cell \(pending.cell) (\(problem)); run with --fresh"
                    update(i, status: .failed, error: failure)
                    continue
                }
                pendingState = nil
            }
            update(i, status: .running, note: note)
            options.log("  \(label): running\n")
            let started = ProgressReporter.monotonicSeconds()
            ProcessMemory.returnFreeMemory()
            let peakIsCellsOwn = ProcessMemory.resetPeak()
            let context = makeContext(cell: cell.source, session: session, key: cell.key, checkpointKey: cell.checkpointKey)
            do {
                if cell.source.header.step == ParametersCell.stepName {
                    context.emit(.table(OutputTable(title: "Notebook parameters", columns: ["name", "value", "from"], rows: cell.parameterRows)))
                } else {
                    try cell.prepared!.run(context)
                }
            } catch {
                let duration = ProgressReporter.monotonicSeconds() - started
                let message = describe(error, cell: cell.source, file: source.displayPath)
                failure = message
                update(i, status: .failed, duration: duration, note: note, outputs: context.outputs, error: message)
                options.log("  \(label): failed after \(Format.duration(duration))\n")
                continue
            }
            let duration = ProgressReporter.monotonicSeconds() - started
            let snapshot = CellSnapshot(key: cell.key, cellName: cell.source.name, step: cell.source.header.step,
                                        finishedAt: Date(), duration: duration, state: session.state, outputs: context.outputs)
            do { try store.save(snapshot) } catch {
                note = (note.map { $0 + "; " } ?? "") + "could not save its snapshot: \(error.localizedDescription)"
            }
            lock.withLock { header.model = session.state.model?.headerDescription }
            let peak = peakIsCellsOwn ? ProcessMemory.peakResidentMB() : nil
            lock.withLock { views[i].record.peakMemoryMB = peak.map { $0.rounded() } }
            update(i, status: .ran, duration: duration, finishedAt: snapshot.finishedAt, note: note, outputs: context.outputs)
            options.log("  \(label): ran in \(Format.duration(duration))\(peak.map { String(format: ", peak memory %.0f MiB", $0) + (ProcessInfo.processInfo.environment["NB_MEMORY_TRACE"] == nil ? "" : String(format: " (now %.0f)", ProcessMemory.residentMB())) } ?? "")\n")
        }
        session.localServers.stopAll()
        if let failure {
            lock.withLock { problems.append(failure) }
            options.log("\(failure)\n")
        }
        finish(state: failure == nil ? "finished" : "failed")
        options.log("report: \(PathDisplay.relative(reportURL))\n")
        let cellPeaks = lock.withLock { views.compactMap(\.record.peakMemoryMB) }
        options.log(String(format: "peak memory (resident): %.0f MiB\n", max(ProcessMemory.peakResidentMB(), cellPeaks.max() ?? 0)))
        return RunResult(exitCode: failure == nil ? 0 : 1, reportURL: reportURL, manifest: manifest, message: failure)
    }

    /// `file:line: step failed: message`, pointing at the key's line when the step named one.
    func describe(_ error: Error, cell: CellSource, file: String) -> String {
        var line = cell.fenceLine
        var message = "\(error)"
        if let failure = error as? StepFailure {
            message = failure.message
            if let key = failure.key, let l = keyLine(key, in: cell) { line = l }
        }
        return NotebookError.stepFailed(SourceLocation(file: file, line: line), step: cell.header.step, message: message).description
    }

    /// The line of `key:` in a cell's body, if it is written there.
    func keyLine(_ key: String, in cell: CellSource) -> Int? {
        for (offset, text) in cell.body.split(separator: "\n", omittingEmptySubsequences: false).enumerated()
        where text.trimmingCharacters(in: .whitespaces).hasPrefix(key + ":") {
            return cell.bodyStartLine + offset
        }
        return nil
    }

    func record(for cell: PlannedCell, status: CellStatus) -> CellRecord {
        CellRecord(index: cell.source.index, name: cell.source.name, id: cell.source.header.id,
                   step: cell.source.header.step, line: cell.source.fenceLine, key: cell.key, status: status)
    }

    /// Records a cell's new status. The report is rewritten for cells that run (when they
    /// start and when they end), not for each reused one: a long notebook of reused cells
    /// is written once, at the end.
    func update(_ i: Int, status: CellStatus, duration: Double? = nil, finishedAt: Date? = nil,
                note: String? = nil, outputs: [CellOutput] = [], outputsHTML: String? = nil, error: String? = nil) {
        lock.withLock {
            views[i].record.status = status
            views[i].record.duration = duration
            views[i].record.finishedAt = finishedAt
            views[i].record.note = note
            views[i].record.error = error
            views[i].outputs = outputs
            views[i].outputsHTML = outputsHTML
        }
        if [.running, .ran, .failed].contains(status) { writeReport() }
    }

    func finishInvalid(_ errors: [NotebookError], source: NotebookSource?) -> RunResult {
        let messages = errors.map(\.description)
        lock.withLock {
            problems = messages
            // Attach each error to its cell too.
            for e in errors {
                guard let line = e.location?.line,
                      let i = views.firstIndex(where: { line >= $0.source.fenceLine && line <= $0.source.endLine }) else { continue }
                views[i].record.error = e.description
            }
        }
        for m in messages { options.log("\(m)\n") }
        finish(state: "invalid notebook")
        options.log("report: \(PathDisplay.relative(reportURL))\n")
        return RunResult(exitCode: 2, reportURL: reportURL, manifest: manifest, message: messages.first)
    }

    func finish(state: String) {
        lock.withLock {
            header.state = state
            if manifest != nil { manifest!.finishedAt = Date() }
        }
        writeReport(final: true)
    }

    /// Rewrites the report and the manifest (atomically), so a crash leaves both behind.
    func writeReport(final: Bool = false) {
        lock.withLock {
            header.totalSeconds = ProgressReporter.monotonicSeconds() - startClock
            let html = HTMLReport.render(header: header, notebook: notebook, cells: views, problems: problems)
            do {
                try AtomicFile.write(Data(html.utf8), to: reportURL, durable: false)
            } catch {
                options.log("nb: cannot write the report \(reportURL.path): \(error.localizedDescription)\n")
            }
            guard notebook != nil else { return }
            if manifest == nil {
                manifest = RunManifest(notebook: displayPath, startedAt: header.startedAt, finishedAt: nil,
                                       invocation: options.invocation, cells: [])
            }
            manifest!.cells = views.map(\.record)
            if final { manifest!.finishedAt = Date() }
            try? manifest!.save(in: stateRoot)
        }
    }

    // MARK: - Ctrl-C

    /// On SIGINT or SIGTERM: mark the running cell interrupted, write the report, exit 130.
    ///
    /// The signal handler only writes the signal number to a pipe (all a handler may safely
    /// do); a thread waiting on the pipe writes the report, while the main thread may be
    /// deep in a long step.
    private func installInterruptHandler() {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { return }
        InterruptPipe.writeEnd = fds[1]
        // A parent may have started us with these signals blocked (threads of test
        // runners often block them); unblock them so Ctrl-C reaches the handler.
        var unblock = sigset_t()
        sigemptyset(&unblock)
        sigaddset(&unblock, SIGINT)
        sigaddset(&unblock, SIGTERM)
        pthread_sigmask(SIG_UNBLOCK, &unblock, nil)
        for sig in [SIGINT, SIGTERM] {
            signal(sig) { number in
                var byte = UInt8(truncatingIfNeeded: number)
                _ = write(InterruptPipe.writeEnd, &byte, 1)
            }
        }
        let readEnd = fds[0]
        let thread = Thread { [weak self] in
            var byte: UInt8 = 0
            while read(readEnd, &byte, 1) != 1 {}
            guard let self else { exit(130) }
            self.lock.withLock {
                for i in self.views.indices where self.views[i].record.status == .running {
                    self.views[i].record.status = .interrupted
                    self.views[i].record.error = "interrupted by signal \(byte)"
                }
            }
            self.finish(state: "interrupted")
            self.options.log("\nnb: interrupted; report: \(PathDisplay.relative(self.reportURL))\n")
            exit(130)
        }
        thread.start()
    }
}

/// The write end of the interrupt pipe, read by the C signal handler.
enum InterruptPipe {
    nonisolated(unsafe) static var writeEnd: Int32 = -1
}

/// File digests, cached by (path, size, modification time) in `hashes.json` so unchanged
/// large inputs are not re-read on every run.
final class FileDigestCache {
    struct Entry: Codable { var size: UInt64; var mtime: Double; var sha256: String }
    let url: URL
    var entries: [String: Entry]
    var changed = false

    init(stateRoot: URL) {
        url = stateRoot.appendingPathComponent("hashes.json")
        entries = (FileManager.default.contents(atPath: url.path)).flatMap { try? JSONDecoder().decode([String: Entry].self, from: $0) } ?? [:]
    }

    func digest(of file: URL) -> String? {
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: file.path),
              let size = (attributes[.size] as? NSNumber)?.uint64Value,
              let mtime = (attributes[.modificationDate] as? Date)?.timeIntervalSince1970 else { return nil }
        if let e = entries[file.path], e.size == size, e.mtime == mtime { return e.sha256 }
        guard let digest = try? SHA256Digest.hex(fileAt: file) else { return nil }
        entries[file.path] = Entry(size: size, mtime: mtime, sha256: digest)
        changed = true
        return digest
    }

    func save() {
        guard changed, let data = try? JSONEncoder().encode(entries) else { return }
        try? AtomicFile.write(data, to: url)
    }
}
