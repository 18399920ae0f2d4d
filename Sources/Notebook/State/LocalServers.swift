import Engine
import Foundation

/// Where a `remote` step sends its products: `server: http://HOST:PORT` (with `token_file:`
/// when the server wants a token), or `server: local` for an `nb serve` of the session's
/// deployment that the notebook starts on a free loopback port and stops at its end.
public struct RemoteTarget: Codable, Equatable, Sendable {
    public static let local = "local"
    public var server: String
    /// The token file, resolved against the notebook's directory.
    public var tokenFile: String?
    public var settings: RemoteSettings

    public init(server: String, tokenFile: String? = nil, settings: RemoteSettings = RemoteSettings()) {
        (self.server, self.tokenFile, self.settings) = (server, tokenFile, settings)
    }

    var url: URL? { URL(string: server) }

    /// Checks `server` (a parameter error names the key).
    static func validate(server: String?, mode: ExecutionMode) throws(ParameterError) {
        guard let server else {
            if mode == .remote { throw ParameterError("server", "mode remote needs a server: http://HOST:PORT, or local to start `nb serve` on the session's deployment") }
            return
        }
        guard mode == .remote else { throw ParameterError("server", "only mode: remote talks to a server (the mode is \(mode.rawValue))") }
        if server == local { return }
        guard let u = URL(string: server), let scheme = u.scheme, ["http", "https"].contains(scheme), u.host != nil else {
            throw ParameterError("server", "'\(server)' is not an http:// or https:// URL (or local)")
        }
    }

    /// The token from ``tokenFile``: its first line, trimmed; a file others can read is refused.
    func token() throws -> String? {
        guard let path = tokenFile else { return nil }
        var st = stat()
        guard stat(path, &st) == 0 else { throw StepFailure(key: "token_file", "\(path): \(String(cString: strerror(errno)))") }
        guard Int(st.st_mode) & 0o077 == 0 else {
            throw StepFailure(key: "token_file", "\(path) is readable by others (mode \(String(Int(st.st_mode) & 0o777, radix: 8))); chmod 600 it")
        }
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw StepFailure(key: "token_file", "\(path): unreadable") }
        let token = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !token.isEmpty else { throw StepFailure(key: "token_file", "\(path) is empty") }
        return token
    }
}

/// One `nb serve` child process.
public final class LocalServer: @unchecked Sendable {
    public let process: Process
    public let url: URL
    public let token: String
    public let deployment: URL
    public let startSeconds: Double

    init(process: Process, url: URL, token: String, deployment: URL, startSeconds: Double) {
        (self.process, self.url, self.token, self.deployment, self.startSeconds) = (process, url, token, deployment, startSeconds)
    }

    /// SIGTERM, then wait (the server finishes its in-flight requests and exits).
    public func stop() {
        guard process.isRunning else { return }
        process.terminate()
        let deadline = Date().addingTimeInterval(10)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    }
}

/// The `nb serve` processes a notebook run started, stopped when the run ends (and, as a
/// last resort, when this process exits).
public final class LocalServers: @unchecked Sendable {
    private var servers: [String: LocalServer] = [:]
    private let lock = NSLock()

    public init() {}

    /// The running server for `deployment`, started on a free loopback port with a fresh
    /// access token (written mode 0600 under `tokenDirectory`) when there is none.
    public func server(for deployment: URL, tokenDirectory: URL?) throws -> LocalServer {
        lock.lock()
        defer { lock.unlock() }
        let key = deployment.standardizedFileURL.path
        if let s = servers[key], s.process.isRunning { return s }
        let started = ProcessInfo.processInfo.systemUptime
        let token = (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
        let directory = tokenDirectory ?? FileManager.default.temporaryDirectory
        let tokenURL = directory.appendingPathComponent("serve-\(getpid()).token")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        try AtomicFile.write(Data(token.utf8), to: tokenURL, permissions: 0o600)
        let process = Process()
        process.executableURL = try Self.nbExecutable()
        process.arguments = ["serve", deployment.path, "--host", "127.0.0.1", "--port", "0", "--token-file", tokenURL.path]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try process.run()
        LocalServers.register(process)
        // The first line of stdout names the port: `nb serve: listening on http://127.0.0.1:PORT`.
        let reader = out.fileHandleForReading
        var line = Data()
        let deadline = Date().addingTimeInterval(120)
        while Date() < deadline, process.isRunning {
            let chunk = reader.availableData
            if chunk.isEmpty { break }
            line.append(chunk)
            if line.contains(UInt8(ascii: "\n")) { break }
        }
        let text = String(decoding: line, as: UTF8.self)
        guard let range = text.range(of: "http://"), let url = URL(string: String(text[range.lowerBound...]).trimmingCharacters(in: .whitespacesAndNewlines)) else {
            if process.isRunning { process.terminate() }
            process.waitUntilExit()
            throw StepFailure(key: "server", "`nb serve \(deployment.path)` did not start (exit status \(process.terminationStatus)); run it by hand to see why")
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        reader.readabilityHandler = { h in if h.availableData.isEmpty { h.readabilityHandler = nil } }
        let server = LocalServer(process: process, url: url, token: token, deployment: deployment,
                                 startSeconds: ProcessInfo.processInfo.systemUptime - started)
        servers[key] = server
        return server
    }

    public func stopAll() {
        lock.lock()
        let all = Array(servers.values)
        servers = [:]
        lock.unlock()
        for s in all { s.stop() }
    }

    /// `nb` itself when this process is nb; else an `nb` beside this executable (the
    /// benchmarks and the tests run from the same build folder); `NB_BINARY` overrides.
    static func nbExecutable() throws -> URL {
        if let path = ProcessInfo.processInfo.environment["NB_BINARY"], !path.isEmpty { return URL(fileURLWithPath: path) }
        let me = URL(fileURLWithPath: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0])
        if me.lastPathComponent == "nb" { return me }
        let sibling = me.deletingLastPathComponent().appendingPathComponent("nb")
        if FileManager.default.isExecutableFile(atPath: sibling.path) { return sibling }
        throw StepFailure(key: "server", "cannot find the nb executable to start `nb serve` (set NB_BINARY)")
    }

    // Children still running when this process exits are stopped (atexit).
    nonisolated(unsafe) private static var children: [Process] = []
    private static let childLock = NSLock()
    nonisolated(unsafe) private static var installed = false

    static func register(_ p: Process) {
        childLock.lock()
        defer { childLock.unlock() }
        children.append(p)
        if !installed {
            installed = true
            atexit {
                LocalServers.childLock.lock()
                for c in LocalServers.children where c.isRunning { kill(c.processIdentifier, SIGTERM) }
                LocalServers.childLock.unlock()
            }
        }
    }
}
