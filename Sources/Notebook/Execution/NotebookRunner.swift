import Engine
import Foundation

/// Options of one `nb NOTEBOOK` run.
public struct RunOptions: Sendable {
    public var fresh = false
    /// `--cell`: re-run only this cell (id or 1-based number) from the state before it.
    public var onlyCell: String?
    /// `--from`: re-run this cell and the cells that depend on what it writes.
    public var fromCell: String?
    /// `--explain`: print what each cell would do (reuse or run, and why) and run nothing.
    public var explain = false
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
        /// What the step reads and writes of the session state.
        var dataflow = StepDataflow()
        /// The versions of the slots it reads, and the cell that wrote each (nil: nobody
        /// before it; the slot is empty).
        var reads: [SessionSlot: String] = [:]
        var writers: [SessionSlot: Int] = [:]
        var parts: CellKeyParts?
    }

    /// The version of a slot no cell has written yet.
    static func initialVersion(_ slot: SessionSlot) -> String { SHA256Digest.hex("nb \(NbVersion.string) empty \(slot)") }

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

        // Dataflow keys: a cell's key holds its step, parameters, input files and the versions
        // of the slots it reads; a slot's version is the key of the cell that last wrote it.
        var planned: [PlannedCell] = []
        var versions: [SessionSlot: String] = [:], checkpointVersions: [SessionSlot: String] = [:]
        var writers: [SessionSlot: Int] = [:]
        let root = "nb \(NbVersion.string)"
        let hasher = FileDigestCache(stateRoot: stateRoot)
        for cell in cells {
            var plannedCell = PlannedCell(source: cell, key: SHA256Digest.hex("\(root) not run \(cell.name)"),
                                          checkpointKey: SHA256Digest.hex("\(root) not run \(cell.name)"))
            if cell.header.step == ParametersCell.stepName {
                plannedCell.parameterRows = rows
                let canonical = rows.map { "\($0[0])=\($0[1])" }.joined(separator: "\n")
                plannedCell.key = SHA256Digest.hex("\(root)\nparameters\n\(canonical)")
                plannedCell.checkpointKey = plannedCell.key
                plannedCell.dataflow = StepDataflow(writes: [.parameters])
                plannedCell.parts = CellKeyParts(step: ParametersCell.stepName, parameters: SHA256Digest.hex(canonical), inputs: [:], reads: [:])
            } else if !badHeaders.contains(cell.fenceLine) {
                do {
                    let body = try ParametersCell.substitute(cell.body, parameters: parameters, cell: cell, file: file)
                    let prepared = try registry.prepare(cell, body: body, file: file)
                    plannedCell.prepared = prepared
                    plannedCell.dataflow = prepared.dataflow
                    let context = makeContext(cell: cell, session: Session(), key: "", checkpointKey: "")
                    var inputDigests: [String: String] = [:]
                    for url in prepared.inputs(context) {
                        inputDigests[url.path] = hasher.digest(of: url) ?? "missing"
                        lock.withLock { if !_inputFiles.contains(url) { _inputFiles.append(url) } }
                    }
                    let inputs = inputDigests.keys.sorted().map { "\($0) \(inputDigests[$0]!)" }.joined(separator: "\n")
                    let readSlots = prepared.dataflow.reads.sorted()
                    for slot in readSlots {
                        plannedCell.reads[slot] = versions[slot] ?? Self.initialVersion(slot)
                        plannedCell.writers[slot] = writers[slot]
                    }
                    let reads = readSlots.map { "\($0)=\(plannedCell.reads[$0]!)" }.joined(separator: "\n")
                    let checkpointReads = readSlots.map { "\($0)=\(checkpointVersions[$0] ?? Self.initialVersion($0))" }.joined(separator: "\n")
                    plannedCell.parts = CellKeyParts(step: prepared.name, parameters: SHA256Digest.hex(prepared.canonicalParameters),
                                                     inputs: inputDigests, reads: Dictionary(uniqueKeysWithValues: readSlots.map { ("\($0)", plannedCell.reads[$0]!) }))
                    if !cell.header.skip {
                        plannedCell.key = SHA256Digest.hex("\(root)\n\(prepared.name)\n\(prepared.canonicalParameters)\n\(inputs)\n\(reads)")
                        plannedCell.checkpointKey = SHA256Digest.hex(
                            "\(root)\n\(prepared.name)\n\(prepared.computationParameters)\n\(inputs)\n\(checkpointReads)")
                    }
                } catch {
                    errors.append(error)
                }
            }
            if !cell.header.skip {
                for slot in plannedCell.dataflow.writes {
                    versions[slot] = plannedCell.key
                    checkpointVersions[slot] = plannedCell.checkpointKey
                    writers[slot] = planned.count
                }
            }
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

    /// The input files of the notebook's cells (what `--watch` watches beside the notebook).
    public var inputFiles: [URL] { lock.withLock { _inputFiles } }
    private var _inputFiles: [URL] = []
    /// Set once the run has ended; an interrupt after that (between `--watch` cycles) exits 0.
    private var completed = false

    public func run(watching: Bool = false) -> RunResult {
        installInterruptHandler(watching: watching)
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

        let store = SnapshotStore(root: stateRoot)
        // Which cells must run no matter what.
        var forced = Set<Int>()
        var onlyIndex: Int?
        do {
            if let name = options.onlyCell {
                let cell = try source.cell(named: name)
                forced.insert(cell.index)
                onlyIndex = cell.index
            }
            if let only = onlyIndex {
                // The cells whose results it needs and that have none saved run first.
                var pending = [only]
                while let j = pending.popLast() {
                    for w in cells[j].writers.values where !forced.contains(w) {
                        if case .success = store.loadSummary(key: cells[w].key) { continue }
                        forced.insert(w)
                        pending.append(w)
                    }
                }
            }
            if let name = options.fromCell {
                let cell = try source.cell(named: name)
                forced.formUnion(Self.dependents(of: cell.index, in: cells))
            }
        } catch {
            return finishInvalid([error], source: source)
        }
        if options.fresh { forced.formUnion(0..<cells.count) }
        let previous = RunManifest.load(from: stateRoot)

        if options.explain {
            for line in explain(cells, forced: forced, onlyIndex: onlyIndex, store: store, previous: previous) { options.log(line + "\n") }
            return RunResult(exitCode: 0, reportURL: reportURL, manifest: previous, message: nil)
        }

        options.log("nb: \(displayPath): \(cells.count) step cell\(cells.count == 1 ? "" : "s")\n")
        var state = SessionState()
        state.parameters = parameters
        let session = Session(state: state)
        session.keyDirectory = stateRoot.appendingPathComponent("keys", isDirectory: true)
        var failure: String?
        // The version of each slot the session's state holds now (absent: the empty value);
        // a cell about to run gets the versions it reads from their writers' snapshots.
        var held: [SessionSlot: String] = [:]
        var decoded: [String: SessionState] = [:]
        func restore(_ cell: PlannedCell) -> String? {
            for (slot, version) in cell.reads.sorted(by: { $0.key < $1.key }) where (held[slot] ?? Self.initialVersion(slot)) != version {
                guard let w = cell.writers[slot] else {
                    session.state.copy(slot, from: SessionState())
                    held[slot] = version
                    continue
                }
                let writer = cells[w]
                if decoded[version] == nil {
                    switch store.loadSummary(key: version).flatMap({ store.decodeState($0.payload) }) {
                    case .success(let restored): decoded[version] = restored
                    case .failure(let problem):
                        return "\(source.displayPath):\(cell.source.fenceLine): cell \(cell.source.name) reads the \(slot) of cell \(writer.source.name) (line \(writer.source.fenceLine)), whose saved result cannot be used (\(problem)); run it first (--from \(writer.source.name)) or run with --fresh"
                    }
                }
                session.state.copy(slot, from: decoded[version]!)
                held[slot] = version
            }
            return nil
        }

        for (i, cell) in cells.enumerated() {
            let label = "[\(i + 1)/\(cells.count)] \(cell.source.title) (line \(cell.source.fenceLine))"
            if failure != nil { continue }
            if cell.source.header.skip {
                update(i, status: .skipped, note: "skipped (the cell says skip)")
                options.log("  \(label): skipped\n")
                continue
            }
            // With `--cell`, the other cells are shown from their snapshots.
            if let only = onlyIndex, i != only, !forced.contains(i) {
                if case .success(let (snap, _)) = store.loadSummary(key: cell.key) {
                    update(i, status: .reused, duration: snap.duration, finishedAt: snap.finishedAt,
                           note: "not re-run (--cell \(options.onlyCell!)); outputs from the run of \(HTMLReport.dateString(snap.finishedAt))", outputsHTML: snap.outputsHTML)
                } else {
                    update(i, status: .notRun, note: "not run (--cell \(options.onlyCell!)) and no earlier result")
                }
                continue
            }
            var note: String?
            if !forced.contains(i) && cell.source.header.cache {
                switch store.loadSummary(key: cell.key) {
                case .success(let (snap, _)):
                    lock.withLock { header.model = snap.model }
                    let reads = cell.dataflow.reads.sorted().map(\.description)
                    update(i, status: .reused, duration: snap.duration, finishedAt: snap.finishedAt,
                           note: "reused from the run of \(HTMLReport.dateString(snap.finishedAt)): step, parameters, input files"
                               + (reads.isEmpty ? "" : " and what it reads (\(reads.joined(separator: ", ")))") + " unchanged",
                           outputsHTML: snap.outputsHTML)
                    options.log("  \(label): reused (unchanged since \(HTMLReport.dateString(snap.finishedAt)))\n")
                    continue
                case .failure(let problem):
                    if case .corrupt = problem { note = "\(problem.description.prefix(1).uppercased())\(problem.description.dropFirst()); re-ran" }
                    else { note = "ran: " + reason(cell, cells: cells, previous: previous) }
                }
            } else if !cell.source.header.cache {
                note = "cache=false: always re-run"
            } else if forced.contains(i) {
                note = options.fresh ? "--fresh" : onlyIndex == i ? "--cell"
                    : onlyIndex != nil ? "--cell \(options.onlyCell!) needs its result and none is saved" : "--from \(options.fromCell ?? "")"
                note = "re-run (\(note!))"
            }
            if let problem = restore(cell) {
                failure = problem
                update(i, status: .failed, error: problem)
                continue
            }
            update(i, status: .running, note: note)
            options.log("  \(label): running\n")
            let started = ProgressReporter.monotonicSeconds()
            ProcessMemory.returnFreeMemory()
            let peakIsCellsOwn = ProcessMemory.resetPeak()
            let context = makeContext(cell: cell.source, session: session, key: cell.key, checkpointKey: cell.checkpointKey)
            let before = session.state
            let access = SlotAccessLog()
            session.state.accessLog = access
            do {
                if cell.source.header.step == ParametersCell.stepName {
                    context.emit(.table(OutputTable(title: "Notebook parameters", columns: ["name", "value", "from"], rows: cell.parameterRows)))
                } else {
                    try cell.prepared!.run(context)
                }
                session.state.accessLog = nil
                if let undeclared = Self.undeclaredAccess(access, before: before, after: session.state, declared: cell.dataflow) {
                    throw StepFailure(key: nil, "internal error: the \(cell.source.header.step) step \(undeclared) without declaring it, so its reuse could be wrong; nothing of this cell is kept (please report this)")
                }
            } catch {
                session.state.accessLog = nil
                let duration = ProgressReporter.monotonicSeconds() - started
                let message = describe(error, cell: cell.source, file: source.displayPath)
                failure = message
                update(i, status: .failed, duration: duration, note: note, outputs: context.outputs, error: message)
                options.log("  \(label): failed after \(Format.duration(duration))\n")
                continue
            }
            for slot in cell.dataflow.writes { held[slot] = cell.key }
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

    // MARK: - Dataflow

    /// `index` and every later cell that reads, directly or through others, what it writes.
    static func dependents(of index: Int, in cells: [PlannedCell]) -> Set<Int> {
        var out: Set<Int> = [index]
        for j in cells.indices where j > index && cells[j].writers.values.contains(where: out.contains) { out.insert(j) }
        return out
    }

    /// What a step touched beyond its declaration, as words ("read the adapter"), or nil.
    static func undeclaredAccess(_ log: SlotAccessLog, before: SessionState, after: SessionState, declared: StepDataflow) -> String? {
        var reads = log.reads
        if log.readAllDatasets { for case .dataset(let n) in before.slots + after.slots { reads.insert(.dataset(n)) } }
        let writes = log.writes.union(after.slotsDiffering(from: before))
        let badReads = reads.subtracting(declared.reads).sorted(), badWrites = writes.subtracting(declared.writes).sorted()
        if badReads.isEmpty && badWrites.isEmpty { return nil }
        return ((badReads.isEmpty ? [] : ["read " + badReads.map { "the \($0)" }.joined(separator: ", ")])
                + (badWrites.isEmpty ? [] : ["wrote " + badWrites.map { "the \($0)" }.joined(separator: ", ")])).joined(separator: " and ")
    }

    /// Why a cell without a saved result must run, against the latest run's record of it.
    func reason(_ cell: PlannedCell, cells: [PlannedCell], previous: RunManifest?) -> String {
        guard let parts = cell.parts else { return "new cell" }
        guard let old = previous?.cells.first(where: { $0.name == cell.source.name && $0.step == cell.source.header.step })?.parts else {
            return "no earlier run of this cell"
        }
        var why: [String] = []
        if old.parameters != parts.parameters { why.append("its parameters changed") }
        for path in Set(parts.inputs.keys).union(old.inputs.keys).sorted() where parts.inputs[path] != old.inputs[path] {
            why.append("input \(PathDisplay.relative(URL(fileURLWithPath: path))) changed")
        }
        for slot in cell.dataflow.reads.sorted() where old.reads["\(slot)"] != parts.reads["\(slot)"] {
            if let w = cell.writers[slot] {
                why.append("the \(slot) it reads changed (written by cell \(cells[w].source.name), line \(cells[w].source.fenceLine))")
            } else {
                why.append("the \(slot) it reads changed (now written by no earlier cell)")
            }
        }
        return why.isEmpty ? "no saved result (missing or damaged)" : why.joined(separator: "; ")
    }

    /// `--explain`: one line per cell, run or reuse, and why; nothing runs.
    func explain(_ cells: [PlannedCell], forced: Set<Int>, onlyIndex: Int?, store: SnapshotStore, previous: RunManifest?) -> [String] {
        var lines = ["nb: \(displayPath): \(cells.count) step cell\(cells.count == 1 ? "" : "s") (explain: nothing runs)"]
        var runs = 0
        for (i, cell) in cells.enumerated() {
            let label = "[\(i + 1)/\(cells.count)] \(cell.source.title) (line \(cell.source.fenceLine))"
            let what: String
            if cell.source.header.skip {
                what = "skip (the cell says skip)"
            } else if let only = onlyIndex, i != only, !forced.contains(i) {
                what = "show (--cell \(options.onlyCell!)): " + ((try? store.loadSummary(key: cell.key).get()) != nil ? "outputs of its last run" : "no earlier result")
            } else if forced.contains(i) {
                runs += 1
                what = "run: " + (options.fresh ? "--fresh" : onlyIndex == i ? "--cell"
                    : onlyIndex != nil ? "--cell \(options.onlyCell!) needs its result and none is saved"
                    : options.fromCell.map { "--from \($0)" + (cell.source.name == $0 || cell.source.header.id == $0 ? "" : " (it reads what that cell writes)") } ?? "")
            } else if !cell.source.header.cache {
                runs += 1
                what = "run: cache=false"
            } else {
                switch store.loadSummary(key: cell.key) {
                case .success(let (snap, _)):
                    what = "reuse: unchanged since \(HTMLReport.dateString(snap.finishedAt))"
                case .failure(let problem):
                    runs += 1
                    if case .corrupt = problem { what = "run: its saved result is damaged (\(problem))" }
                    else { what = "run: " + reason(cell, cells: cells, previous: previous) }
                }
            }
            lines.append("  \(label): \(what)")
        }
        lines.append("\(runs) of \(cells.count) cell\(cells.count == 1 ? "" : "s") would run")
        return lines
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
        var r = CellRecord(index: cell.source.index, name: cell.source.name, id: cell.source.header.id,
                           step: cell.source.header.step, line: cell.source.fenceLine, key: cell.key, status: status)
        r.parts = cell.parts
        return r
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
            completed = true
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
    private func installInterruptHandler(watching: Bool) {
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
            guard let self else { exit(watching ? 0 : 130) }
            if watching && self.lock.withLock({ self.completed }) {
                self.options.log("\nnb: watch stopped; report: \(PathDisplay.relative(self.reportURL))\n")
                exit(0)
            }
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
