#if os(Linux)
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A pipe drained by its own thread, so a chatty child never blocks on it; the text so far
/// can be read at any time and waited on.
final class PipeReader: @unchecked Sendable {
    private let condition = NSCondition()
    private var data = Data()
    private var ended = false

    init(_ pipe: Pipe) {
        let handle = pipe.fileHandleForReading
        Thread.detachNewThread { [self] in
            while true {
                let chunk = handle.availableData
                condition.lock()
                if chunk.isEmpty { ended = true } else { data.append(chunk) }
                condition.broadcast()
                condition.unlock()
                if chunk.isEmpty { return }
            }
        }
    }

    var text: String {
        condition.lock()
        defer { condition.unlock() }
        return String(decoding: data, as: UTF8.self)
    }

    /// Waits until `found` returns a value for the text so far, the pipe ends or `timeout` passes.
    func wait<T>(timeout: TimeInterval, for found: (String) -> T?) -> T? {
        let deadline = Date(timeIntervalSinceNow: timeout)
        condition.lock()
        defer { condition.unlock() }
        while true {
            if let value = found(String(decoding: data, as: UTF8.self)) { return value }
            if ended || !condition.wait(until: deadline) { return nil }
        }
    }
}

/// `nb serve` running as a child process, on the port it printed.
final class ServeProcess {
    let process = Process()
    let stdout: PipeReader
    let stderr: PipeReader
    private(set) var port = 0

    /// Starts `nb serve DIR --port 0 ARGUMENTS` and waits for its listening line.
    init(deployment: URL, _ arguments: [String] = []) throws {
        process.executableURL = try NbProcess.binary()
        process.arguments = ["serve", deployment.path, "--port", "0"] + arguments
        let out = Pipe(), err = Pipe()
        (process.standardOutput, process.standardError) = (out, err)
        (stdout, stderr) = (PipeReader(out), PipeReader(err))
        try process.run()
        let listening = stdout.wait(timeout: 30) { text -> Int? in
            guard let line = text.split(separator: "\n").first,
                  let match = line.wholeMatch(of: /nb serve: listening on http:\/\/127\.0\.0\.1:(\d+)/) else { return nil }
            return Int(match.1)
        }
        guard let listening else {
            stop()
            throw ServeTestError("nb serve did not report listening; stdout: \(stdout.text) stderr: \(stderr.text)")
        }
        port = listening
    }

    deinit { stop() }

    var pid: Int32 { process.processIdentifier }

    /// Kills the server if it still runs (the tests that check SIGTERM do it themselves).
    func stop() {
        if process.isRunning {
            kill(pid, SIGKILL)
            process.waitUntilExit()
        }
    }

    /// Waits up to `timeout` for the exit; nil if it is still running then.
    func waitForExit(timeout: TimeInterval) -> (status: Int32, reason: Process.TerminationReason)? {
        let deadline = Date(timeIntervalSinceNow: timeout)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning { return nil }
        process.waitUntilExit()
        return (process.terminationStatus, process.terminationReason)
    }

    /// The resident set size from /proc/PID/status, in bytes.
    func residentBytes() throws -> Int {
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kib = Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]) else {
            throw ServeTestError("no VmRSS in /proc/\(pid)/status")
        }
        return kib * 1024
    }

    /// The JSON objects the server logged on stderr (every line must be one).
    func logLines() throws -> [[String: Any]] {
        try stderr.text.split(separator: "\n").map { line in
            guard let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
                throw ServeTestError("stderr line is not a JSON object: \(line)")
            }
            return object
        }
    }
}

struct ServeTestError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// A response as read off the socket.
struct RawResponse {
    var status: Int
    /// Lower-cased names.
    var headers: [String: String]
    var body: [UInt8]
    var text: String { String(decoding: body, as: UTF8.self) }
}

/// One TCP connection to 127.0.0.1 with blocking sockets, to send anything at all (half
/// request lines, lying Content-Lengths) and see exactly what comes back.
final class RawConnection {
    let fd: Int32
    private var pending: [UInt8] = []
    /// With a pace, each read takes at most `bytes` and is followed by a pause: a slow reader.
    var pace: (bytes: Int, pause: TimeInterval)?

    /// `receiveBuffer`: a small socket buffer (set before connecting), so that a slow reader
    /// holds the server's writes back.
    init(port: Int, receiveTimeout: TimeInterval = 10, receiveBuffer: Int? = nil) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw ServeTestError("socket: \(String(cString: strerror(errno)))") }
        if var size = receiveBuffer.map(Int32.init) {
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw ServeTestError("connect to port \(port): \(reason)")
        }
        var timeout = timeval(tv_sec: Int(receiveTimeout), tv_usec: Int(receiveTimeout.truncatingRemainder(dividingBy: 1) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd) }


    /// Sends every byte (false if the server closed or reset the connection first).
    @discardableResult
    func send(_ bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return false }
            offset += n
        }
        return true
    }

    @discardableResult
    func send(_ text: String) -> Bool { send(Array(text.utf8)) }

    func shutdownWrite() { shutdown(fd, Int32(SHUT_WR)) }

    enum Received { case bytes([UInt8]), closed, timedOut }

    func receive() -> Received {
        if !pending.isEmpty {
            defer { pending = [] }
            return .bytes(pending)
        }
        var buffer = [UInt8](repeating: 0, count: pace?.bytes ?? 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
            if n > 0 {
                if let pace { Thread.sleep(forTimeInterval: pace.pause) }
                return .bytes(Array(buffer[0..<n]))
            }
            if n == 0 { return .closed }
            switch errno {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK: return .timedOut
            default: return .closed  // ECONNRESET and the like
            }
        }
    }

    /// Reads one response (the body by its Content-Length, none for a HEAD request); nil if
    /// the connection closed or timed out first.
    func readResponse(toHead: Bool = false) -> RawResponse? {
        var data = [UInt8]()
        let separator: [UInt8] = Array("\r\n\r\n".utf8)
        var headEnd: Int?
        while headEnd == nil {
            guard case .bytes(let chunk) = receive() else { return nil }
            data += chunk
            headEnd = data.firstRange(of: separator)?.upperBound
        }
        let head = String(decoding: data[..<headEnd!], as: UTF8.self).split(separator: "\r\n")
        let statusParts = head[0].split(separator: " ")
        guard statusParts.count >= 2, let status = Int(statusParts[1]) else { return nil }
        var headers: [String: String] = [:]
        for line in head.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        let length = toHead ? 0 : Int(headers["content-length"] ?? "0") ?? 0
        var body = Array(data[headEnd!...])
        while body.count < length {
            guard case .bytes(let chunk) = receive() else { return nil }
            body += chunk
        }
        pending = Array(body[length...])
        return RawResponse(status: status, headers: headers, body: Array(body[..<length]))
    }

    /// Reads until the server closes the connection; the bytes read, or nil on a timeout.
    func readUntilClosed() -> [UInt8]? {
        var data = [UInt8]()
        while true {
            switch receive() {
            case .bytes(let chunk): data += chunk
            case .closed: return data
            case .timedOut: return nil
            }
        }
    }
}

extension RawConnection {
    /// Sends a request (`Content-Length` from `body` unless `headers` gives one).
    @discardableResult
    func send(method: String, path: String, headers: [String: String] = [:], body: [UInt8] = []) -> Bool {
        var head = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        var headers = headers
        if headers["Content-Length"] == nil && headers["Transfer-Encoding"] == nil && (method == "POST" || !body.isEmpty) {
            headers["Content-Length"] = String(body.count)
        }
        for (name, value) in headers.sorted(by: { $0.key < $1.key }) { head += "\(name): \(value)\r\n" }
        return send(Array((head + "\r\n").utf8) + body)
    }

    /// One request and its response on a fresh connection.
    static func exchange(port: Int, _ method: String, _ path: String, headers: [String: String] = [:], body: [UInt8] = []) throws -> RawResponse {
        let connection = try RawConnection(port: port)
        _ = connection.send(method: method, path: path, headers: headers, body: body)
        return try #require(connection.readResponse(toHead: method == "HEAD"), "no response to \(method) \(path)")
    }
}
#endif
