import Engine
import Foundation

/// A failure inside a step, naming the parameter at fault when there is one.
public struct StepFailure: Error, Equatable, CustomStringConvertible {
    public var key: String?
    public var message: String
    public init(key: String? = nil, _ message: String) { self.key = key; self.message = message }
    public var description: String { message }
}

/// What a running step sees: the session, where its notebook lives, and where its
/// outputs go.
public final class StepContext {
    public let session: Session
    public let cell: CellSource
    /// The notebook's path as the user gave it (for messages).
    public let notebookPath: String
    /// Relative paths in cells resolve against this directory.
    public let notebookDirectory: URL
    /// The notebook's state directory (`outputs/.nb/<notebook>/`): adapters, checkpoints.
    public let stateDirectory: URL
    /// The cell's cache key: equal keys mean the same step, parameters, inputs and history,
    /// so a checkpoint filed under it belongs to this very computation.
    public let cellKey: String
    /// The cache key without the parameters that say where the work runs (the server's URL,
    /// its token): a checkpoint belongs to the computation, so a run interrupted on one replica
    /// resumes on another.
    public let checkpointKey: String
    public private(set) var outputs: [CellOutput] = []
    let makeProgress: (String, Int) -> ProgressReporter

    init(session: Session, cell: CellSource, notebookPath: String, notebookDirectory: URL, stateDirectory: URL,
         cellKey: String, checkpointKey: String, makeProgress: @escaping (String, Int) -> ProgressReporter) {
        self.session = session
        self.cell = cell
        self.notebookPath = notebookPath
        self.notebookDirectory = notebookDirectory
        self.stateDirectory = stateDirectory
        self.cellKey = cellKey
        self.checkpointKey = checkpointKey
        self.makeProgress = makeProgress
    }

    /// Where the session's adapters are stored.
    public var adapterStore: URL { stateDirectory.appendingPathComponent("adapters", isDirectory: true) }

    /// This cell's checkpoint directory (for steps that can resume).
    public var checkpointDirectory: URL {
        stateDirectory.appendingPathComponent("checkpoints", isDirectory: true).appendingPathComponent(checkpointKey, isDirectory: true)
    }

    public func emit(_ output: CellOutput) { outputs.append(output) }

    /// A progress line for a long step: `total` units of work.
    public func progress(_ label: String, total: Int) -> ProgressReporter { makeProgress(label, total) }

    /// The session's backend for `mode`, with the step's `server` and `token_file` for
    /// `remote`; a failure names the key at fault.
    public func backend(_ mode: ExecutionMode, server: String?, tokenFile: String?, protocol productProtocol: ProductProtocol = .masked) throws -> LinearBackend? {
        var target: RemoteTarget?
        if let server {
            var settings = RemoteSettings()
            // How many attempts a request gets (connection errors, 5xx) before the step fails.
            if let n = ProcessInfo.processInfo.environment["NB_REMOTE_ATTEMPTS"].flatMap(Int.init), n >= 1 { settings.attempts = n }
            target = RemoteTarget(server: server, tokenFile: tokenFile.map { resolve($0).path }, settings: settings)
        }
        do { return try session.backend(for: mode, remote: target, protocol: productProtocol) } catch let failure as StepFailure { throw failure } catch {
            let key = error is RemoteServerError || error is SessionError && (error as! SessionError) == .noDeployment ? "server" : "mode"
            throw StepFailure(key: key, "\(error)")
        }
    }

    /// An absolute path resolves to itself; a relative one against the notebook's directory.
    public func resolve(_ path: String) -> URL {
        if path.hasPrefix("/") { return URL(fileURLWithPath: path).standardizedFileURL }
        if path.hasPrefix("~/") {
            return URL(fileURLWithPath: NSString(string: path).expandingTildeInPath).standardizedFileURL
        }
        return notebookDirectory.appendingPathComponent(path).standardizedFileURL
    }

    /// A path for messages: relative to the current directory when it is below it.
    public func display(_ url: URL) -> String { PathDisplay.relative(url) }
}

enum PathDisplay {
    static func relative(_ url: URL) -> String {
        let cwd = FileManager.default.currentDirectoryPath
        let path = url.standardizedFileURL.path
        if path.hasPrefix(cwd + "/") { return String(path.dropFirst(cwd.count + 1)) }
        return path
    }
}
