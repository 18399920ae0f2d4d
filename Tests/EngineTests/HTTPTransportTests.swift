#if os(Linux)
import Foundation
import Glibc
import Testing

@testable import Engine

/// The remote client against a fake server on loopback that answers what the probes answered:
/// a `Content-Length` of 2^40, an endless chunked body, a body trickled a byte at a time, a
/// short body. The client must refuse each quickly, without reading or allocating what the
/// server chose.
@Suite(.serialized)
struct HTTPTransportTests {
    /// Accepts connections on 127.0.0.1 (any port) and hands each, after reading its request
    /// head and body, to `answer` on its own thread.
    final class FakeServer: @unchecked Sendable {
        let fd: Int32
        let port: Int
        private let answer: @Sendable (Int32, [UInt8]) -> Void

        /// One answer per connection, which then closes.
        convenience init(answer: @escaping @Sendable (Int32) -> Void) throws {
            try self.init(keepAlive: false, answering: { fd, _ in answer(fd) })
        }

        /// `answering(fd, request body)`; with `keepAlive`, every request of a connection is
        /// answered until the client closes it.
        init(keepAlive: Bool = true, answering answer: @escaping @Sendable (Int32, [UInt8]) -> Void) throws {
            self.answer = answer
            let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var one: Int32 = 1
            setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            let bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard bound == 0, listen(listener, 16) == 0 else { throw TestFailure("bind/listen: \(String(cString: strerror(errno)))") }
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) } }
            (fd, port) = (listener, Int(UInt16(bigEndian: address.sin_port)))
            Thread.detachNewThread {
                while true {
                    let client = accept(listener, nil, nil)
                    if client < 0 { return }
                    Thread.detachNewThread {
                        // Requests one after the other on a kept-alive connection.
                        while let body = FakeServer.readRequest(client) {
                            answer(client, body)
                            if !keepAlive { break }
                        }
                        close(client)
                    }
                }
            }
        }

        deinit {
            shutdown(fd, Int32(SHUT_RDWR))
            close(fd)
        }

        var url: URL { URL(string: "http://127.0.0.1:\(port)")! }

        /// Reads the head and a Content-Length body (nil once the peer is gone). The client
        /// sends one request at a time per connection, so nothing past the body is read.
        static func readRequest(_ fd: Int32) -> [UInt8]? {
            var data = [UInt8]()
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
                if n <= 0 { return nil }
                data += buffer[0..<n]
                guard let end = data.firstRange(of: Array("\r\n\r\n".utf8))?.upperBound else { continue }
                let head = String(decoding: data[..<end], as: UTF8.self).lowercased()
                let length = head.split(separator: "\r\n").first { $0.hasPrefix("content-length:") }
                    .flatMap { Int($0.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)) } ?? 0
                if data.count - end >= length { return Array(data[end..<(end + length)]) }
            }
        }

        /// Sends all of `bytes`; false once the peer is gone.
        @discardableResult
        static func write(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
            var offset = 0
            while offset < bytes.count {
                let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL)) }
                if n <= 0 { return false }
                offset += n
            }
            return true
        }
    }

    struct TestFailure: Error, CustomStringConvertible {
        var description: String
        init(_ d: String) { description = d }
    }

    let expected = 1000

    func call(_ server: FakeServer, timeout: Double = 30, attempts: Int = 8) -> (error: Error?, seconds: Double) {
        let transport = HTTPTransport(baseURL: server.url, settings: RemoteSettings(timeout: timeout, attempts: attempts, backoff: 0.05))
        let started = Date()
        do {
            _ = try transport.multiply(module: "m", direction: .forward, request: [1, 2, 3], responseBytes: expected)
            return (nil, Date().timeIntervalSince(started))
        } catch {
            return (error, Date().timeIntervalSince(started))
        }
    }

    @Test func aDeclaredLengthOtherThanTheAnswersIsRefusedBeforeTheBody() throws {
        let sent = Locked(0)
        let server = try FakeServer { fd in
            FakeServer.write(fd, Array("HTTP/1.1 200 OK\r\nContent-Length: \(1 << 40)\r\n\r\n".utf8))
            let zeros = [UInt8](repeating: 0, count: 1 << 20)
            for _ in 0..<4096 { guard FakeServer.write(fd, zeros) else { return }; sent.update { $0 += zeros.count } }
        }
        let (error, seconds) = call(server)
        let refusal = try #require(error as? RemoteServerError)
        guard case .badResponse(_, let reason) = refusal else { Issue.record("\(refusal)"); return }
        #expect(reason.contains("declares \(1 << 40) bytes") && reason.contains("exactly \(expected)"), "\(reason)")
        #expect(seconds < 5)
    }

    @Test func anEndlessChunkedAnswerIsCutAtItsSize() throws {
        let server = try FakeServer { fd in
            FakeServer.write(fd, Array("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".utf8))
            let chunk = Array("10000\r\n".utf8) + [UInt8](repeating: 0, count: 1 << 16) + Array("\r\n".utf8)
            for _ in 0..<65536 { guard FakeServer.write(fd, chunk) else { return } }
        }
        let (error, seconds) = call(server)
        let refusal = try #require(error as? RemoteServerError)
        guard case .badResponse(_, let reason) = refusal else { Issue.record("\(refusal)"); return }
        #expect(reason.contains("goes on past \(expected) bytes"), "\(reason)")
        #expect(seconds < 5)
    }

    @Test func aTrickledAnswerMeetsTheDeadline() throws {
        let server = try FakeServer { fd in
            FakeServer.write(fd, Array("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".utf8))
            for _ in 0..<1000 {
                guard FakeServer.write(fd, [0]) else { return }
                usleep(200_000)
            }
        }
        // Eight attempts allowed, but a deadline passed is not retried: one attempt, ~2 s.
        let (error, seconds) = call(server, timeout: 2, attempts: 8)
        let failure = try #require(error as? RemoteServerError)
        guard case .unavailable(_, let attempts, _, let last) = failure else { Issue.record("\(failure)"); return }
        #expect(attempts == 1 && last.contains("deadline"), "\(failure)")
        #expect(seconds >= 1.9 && seconds < 5, "\(seconds) s")
    }

    @Test func aShortAnswerIsRefused() throws {
        let server = try FakeServer { fd in
            FakeServer.write(fd, Array("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".utf8) + [UInt8](repeating: 7, count: 10))
        }
        let (error, _) = call(server)
        let refusal = try #require(error as? RemoteServerError)
        guard case .badResponse(_, let reason) = refusal else { Issue.record("\(refusal)"); return }
        #expect(reason.contains("ended after 10 bytes"), "\(reason)")
    }

    @Test func errorsAreReadToABoundAndExactAnswersPass() throws {
        let server = try FakeServer { fd in
            FakeServer.write(fd, Array("HTTP/1.1 422 Unprocessable Content\r\nContent-Length: 12\r\n\r\nwrong shape\n".utf8))
        }
        let (error, _) = call(server)
        #expect((error as? RemoteServerError) == .refused(url: server.url.absoluteString + "/v1/modules/m/forward", status: 422, message: "wrong shape"))
        let huge = try FakeServer { fd in
            FakeServer.write(fd, Array("HTTP/1.1 500 Oops\r\nContent-Length: \(1 << 30)\r\n\r\n".utf8))
        }
        let (hugeError, _) = call(huge)
        #expect("\(hugeError.map { "\($0)" } ?? "")".contains("over the \(HTTPTransport.maxErrorBytes) an error may take"))
        let exact = try FakeServer { [expected] fd in
            FakeServer.write(fd, Array("HTTP/1.1 200 OK\r\nContent-Length: \(expected)\r\n\r\n".utf8) + [UInt8](repeating: 9, count: expected))
        }
        let transport = HTTPTransport(baseURL: exact.url)
        #expect(try transport.multiply(module: "m", direction: .forward, request: [1], responseBytes: expected) == [UInt8](repeating: 9, count: expected))
    }

    /// An online call in pieces: every piece is in flight before the first answer is used,
    /// the answers are taken in order whatever order they come in, a piece refused with a 5xx
    /// is resent alone, and a 4xx ends the call.
    @Test func onlinePiecesAreInFlightTogetherAndAnsweredInOrder() throws {
        let open = Locked((now: 0, most: 0, failedOnce: false))
        let server = try FakeServer(answering: { fd, body in
            open.update { $0.now += 1; $0.most = max($0.most, $0.now) }
            defer { open.update { $0.now -= 1 } }
            // Each request waits (2 s at most) until another one is in flight too, whatever
            // order the pieces' connections reach this server in: a client that sends one
            // piece at a time never gets there, and the check below fails.
            var together = false
            for _ in 0..<2000 where !together {
                open.update { together = $0.most >= 2 }
                if !together { usleep(1000) }
            }
            // The first piece (first byte 0) answers last.
            if body.first == 0 { usleep(300_000) }
            var refuse = false
            open.update { if body.first == 1 && !$0.failedOnce { $0.failedOnce = true; refuse = true } }
            if body.first == 9 {
                FakeServer.write(fd, Array("HTTP/1.1 422 Unprocessable Content\r\nContent-Length: 6\r\n\r\nshape\n".utf8))
            } else if refuse {
                FakeServer.write(fd, Array("HTTP/1.1 503 Busy\r\nContent-Length: 5\r\n\r\nbusy\n".utf8))
            } else {
                // The answer: the piece's bytes plus one, twice as long.
                let answer = (body + body).map { $0 &+ 1 }
                FakeServer.write(fd, Array("HTTP/1.1 200 OK\r\nContent-Length: \(answer.count)\r\n\r\n".utf8) + answer)
            }
        })
        let transport = HTTPTransport(baseURL: server.url, settings: RemoteSettings(timeout: 30, attempts: 3, backoff: 0.05))
        #expect(transport.maskedPipelineParts >= 2)
        let pieces: [[UInt8]] = [[0, 5, 6], [1, 7], [2, 8, 9, 10]]
        var answers: [(Int, [UInt8])] = []
        try transport.multiplyMaskedParts(module: "m", direction: .forward, parts: pieces.count,
                                          request: { (pieces[$0], 2 * pieces[$0].count) }, receive: { answers.append(($0, $1)) })
        #expect(answers.map(\.0) == [0, 1, 2])
        for (i, answer) in answers { #expect(answer == (pieces[i] + pieces[i]).map { $0 + 1 }, "piece \(i)") }
        open.update { state in
            #expect(state.most >= 2, "at most \(state.most) piece in flight at once")
            #expect(state.failedOnce)
        }
        #expect(transport.retries == 1)
        #expect(throws: RemoteServerError.refused(url: server.url.absoluteString + "/v1/modules/m/forward/masked", status: 422, message: "shape")) {
            try transport.multiplyMaskedParts(module: "m", direction: .forward, parts: 2, request: { ($0 == 0 ? [3] : [9], 2) }, receive: { _, _ in })
        }
    }
}

private final class Locked<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: Value
    init(_ value: Value) { stored = value }
    func update(_ body: (inout Value) -> Void) { lock.withLock { body(&stored) } }
}
#endif
