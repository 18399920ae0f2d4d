import ArgumentParser
import Engine
import Foundation
import Serve

extension Nb {
    /// `nb serve DIR`: the server side of a deployment over HTTP.
    struct Serve: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Serve a deployment's encrypted products over HTTP (the server half of `remote` mode).",
            discussion: """
            Loads deployment/NAME/server/ read-only (manifest.json, weights.safetensors; it checks their \
            SHA-256) and answers GET /v1/health, GET /v1/modules and POST /v1/modules/MODULE/forward|backward \
            (an encrypted input in, its encrypted product out; the server never holds a key). Prints \
            `nb serve: listening on http://HOST:PORT` once bound, logs one JSON object per request on \
            standard error, and on SIGTERM or SIGINT finishes the requests in flight and exits 0. \
            The server speaks plain HTTP: put it behind a TLS-terminating proxy off localhost.
            """)

        @Argument(help: ArgumentHelp("The deployment folder (deployment/NAME) or its server/ folder.", valueName: "DIR"),
                  completion: .directory)
        var directory: String

        @Option(help: "The address to listen on (0.0.0.0 for every interface).")
        var host = "127.0.0.1"

        @Option(help: "The TCP port; 0 picks a free one (printed once listening).")
        var port = 8080

        @Option(name: .customLong("token-file"),
                help: ArgumentHelp("A file (mode 0600) holding a bearer token that every request but /v1/health must present.", valueName: "FILE"),
                completion: .file())
        var tokenFile: String?

        @Option(name: .customLong("max-body-mb"), help: ArgumentHelp("The largest request body accepted, in MiB (413 beyond).", valueName: "N"))
        var maxBodyMB = 512

        @Option(help: ArgumentHelp("Products computed at once; further requests wait their turn.", valueName: "N"))
        var concurrency = 1

        @Option(name: .customLong("idle-timeout"),
                help: ArgumentHelp("Close a connection that makes no progress either way for this many seconds (a stalled request or a reader that stopped).", valueName: "S"))
        var idleTimeout = 30

        @Option(name: .customLong("max-memory-mb"),
                help: ArgumentHelp("The server's memory, in MiB: the loaded deployment plus the requests in flight. A request that alone needs more is refused (413); one that must wait for others longer than a few seconds gets 503.", valueName: "N"))
        var maxMemoryMB = 4096

        @Option(name: .customLong("drain-timeout"), help: ArgumentHelp("On SIGTERM, the seconds the answers in flight may take to finish.", valueName: "S"))
        var drainTimeout = 60

        @Flag(name: .customLong("allow-unauthenticated"),
              help: "Serve an address other than loopback without --token-file (refused otherwise: anyone who reaches it could use the server).")
        var allowUnauthenticated = false

        @Flag(help: "Serve GET /metrics in Prometheus's text format (requests, durations, bytes, memory); it needs the token like the other routes.")
        var metrics = false

        func validate() throws {
            if !(0...65535).contains(port) { throw ValidationError("--port must be in 0…65535") }
            if !(1...(1 << 20)).contains(maxBodyMB) { throw ValidationError("--max-body-mb must be between 1 and 1048576") }
            if concurrency < 1 { throw ValidationError("--concurrency must be at least 1") }
            if idleTimeout < 1 { throw ValidationError("--idle-timeout must be at least 1 second") }
            if drainTimeout < 1 { throw ValidationError("--drain-timeout must be at least 1 second") }
            if !(64...(1 << 24)).contains(maxMemoryMB) { throw ValidationError("--max-memory-mb must be between 64 and 16777216") }
        }

        func run() throws {
            var options = ServeOptions(host: host, port: port, maxBodyBytes: maxBodyMB << 20, concurrency: concurrency,
                                       idleTimeout: .seconds(idleTimeout), drainTimeout: .seconds(drainTimeout),
                                       allowUnauthenticated: allowUnauthenticated, metrics: metrics)
            if let tokenFile { options.token = try Self.readToken(tokenFile) }
            let deployment = try Self.load(directory)
            // The budget for requests: what the loaded deployment leaves of --max-memory-mb, less
            // a reserve for the runtime, the event loops and the connections' buffers.
            let loaded = Self.residentBytes(), reserve = 64 << 20
            options.requestMemoryBytes = (maxMemoryMB << 20) - loaded - reserve
            guard options.requestMemoryBytes >= 16 << 20 else {
                throw Self.failure("--max-memory-mb \(maxMemoryMB) leaves no room for requests: the loaded deployment takes \(loaded >> 20) MiB, plus a reserve of \(reserve >> 20) MiB; give at least \((loaded + reserve) >> 20 + 16)", code: 2)
            }

            // The server is async; this command blocks its (main) thread until it stops.
            let outcome = Outcome()
            let done = DispatchSemaphore(value: 0)
            Task { [options] in
                do {
                    try await runDeploymentServer(deployment: deployment, options: options) { port in
                        FileHandle.standardOutput.write(Data("nb serve: listening on \(options.url(port: port))\n".utf8))
                    }
                } catch {
                    outcome.error = error
                }
                done.signal()
            }
            done.wait()
            if let error = outcome.error { throw Self.failure("\(error)", code: 1) }
        }

        /// This process's resident memory (Linux: /proc/self/statm), 0 where unknown.
        static func residentBytes() -> Int {
            guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
            let fields = text.split(separator: " ")
            guard fields.count > 1, let pages = Int(fields[1]) else { return 0 }
            return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
        }

        static func load(_ directory: String) throws -> ServerDeployment {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
                throw failure("\(directory): no such deployment folder", code: 2)
            }
            do { return try ServerDeployment(path: URL(fileURLWithPath: directory, isDirectory: true)) } catch {
                throw failure("\(directory): \(error)", code: 2)
            }
        }

        /// The token, refusing (like ssh with its keys) a file that group or others can access.
        static func readToken(_ path: String) throws -> String {
            var info = stat()
            guard stat(path, &info) == 0 else { throw failure("token file \(path): \(String(cString: strerror(errno)))", code: 2) }
            guard info.st_mode & S_IFMT == S_IFREG else { throw failure("token file \(path): not a regular file", code: 2) }
            let mode = info.st_mode & 0o777
            guard mode & 0o077 == 0 else {
                throw failure("token file \(path): permissions \(String(mode, radix: 8)) are too open; it must not be accessible by group or others (chmod 600 \(path))", code: 2)
            }
            guard let data = FileManager.default.contents(atPath: path) else { throw failure("token file \(path): unreadable", code: 2) }
            let token = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            guard !token.isEmpty else { throw failure("token file \(path): the token is empty", code: 2) }
            // It travels in an HTTP header: visible ASCII only.
            guard token.utf8.allSatisfy({ (0x21...0x7E).contains($0) }) else {
                throw failure("token file \(path): the token must be printable ASCII without spaces", code: 2)
            }
            return token
        }

        /// Prints `nb serve: MESSAGE` on one line; the exit code to throw.
        static func failure(_ message: String, code: Int32) -> ExitCode {
            let line = message.replacingOccurrences(of: "\n", with: " ")
            FileHandle.standardError.write(Data("nb serve: \(line)\n".utf8))
            return ExitCode(code)
        }
    }
}

/// The server task's error, read by the blocked command thread after the semaphore.
private final class Outcome: @unchecked Sendable {
    var error: Error?
}
