import AsyncHTTPClient
import FHE
import Foundation
import NIOCore
import NIOHTTP1

/// Why the remote server could not be used.
public enum RemoteServerError: Error, CustomStringConvertible, Equatable {
    /// A 4xx answer: the request itself is wrong; retrying would not help.
    case refused(url: String, status: Int, message: String)
    /// Connection errors or 5xx answers on every attempt.
    case unavailable(url: String, attempts: Int, seconds: Double, lastError: String)
    case badResponse(url: String, reason: String)
    /// The server serves another deployment than the client's.
    case wrongDeployment(url: String, expected: String, found: String)

    public var description: String {
        switch self {
        case .refused(let u, let s, let m): return "\(u) refused the request (HTTP \(s)): \(m)"
        case .unavailable(let u, let n, let t, let e):
            return "the server at \(u) did not answer after \(n) attempt\(n == 1 ? "" : "s") over \(String(format: "%.1f", t)) s (last error: \(e)); is `nb serve` running there?"
        case .badResponse(let u, let r): return "\(u): unexpected answer: \(r)"
        case .wrongDeployment(let u, let e, let f):
            return "the server at \(u) serves deployment \(f), not \(e) (the client folder and the server folder come from different save_deployment runs)"
        }
    }
}

/// How the client talks to `nb serve`: time limits and retries.
public struct RemoteSettings: Codable, Equatable, Sendable {
    /// Seconds one request may take (the server's product included).
    public var timeout: Double = 300
    /// Attempts per request on connection errors and 5xx answers (1 = no retry).
    public var attempts: Int = 8
    /// The first wait between attempts; it doubles each time, up to `maxBackoff`.
    public var backoff: Double = 0.25
    public var maxBackoff: Double = 8

    public init(timeout: Double = 300, attempts: Int = 8, backoff: Double = 0.25, maxBackoff: Double = 8) {
        (self.timeout, self.attempts, self.backoff, self.maxBackoff) = (timeout, attempts, backoff, maxBackoff)
    }
}

/// The `remote` mode's transport: each product is one `POST /v1/modules/{name}/{direction}`
/// to `nb serve` with the serialized ciphertexts, over AsyncHTTPClient. Connection errors and
/// 5xx answers are retried with exponential backoff (a restarting server loses nothing: it is
/// stateless and the request is resent whole); 4xx answers are errors at once.
///
/// Nothing the server says is trusted for size or time: an answer must be exactly the length
/// its request implies (a `Content-Length` of anything else is refused before a byte of the
/// body is read, a longer body is cut off as it arrives), error answers are read to 64 KiB at
/// most, and each attempt has one deadline for the whole exchange, body included.
public final class HTTPTransport: EncryptedTransport, @unchecked Sendable {
    public let baseURL: URL
    let token: String?
    public let settings: RemoteSettings
    private let client: HTTPClient
    /// Requests resent after a failed attempt (for reports).
    public private(set) var retries = 0

    /// The most an error answer or `GET /v1/modules` may send.
    static let maxErrorBytes = 64 << 10, maxManifestBytes = 64 << 20

    public init(baseURL: URL, token: String? = nil, settings: RemoteSettings = RemoteSettings()) {
        (self.baseURL, self.token, self.settings) = (baseURL, token, settings)
        // A remote client is the small side of the split: keep its memory near its model.
        FHEMemory.compact()
        var configuration = HTTPClient.Configuration()
        // A redirect could carry the token elsewhere: none is followed.
        configuration.redirectConfiguration = .disallow
        configuration.decompression = .disabled
        configuration.httpVersion = .http1Only
        // A refused connection fails the attempt at once; the retry policy below waits and retries.
        configuration.connectionPool.retryConnectionEstablishment = false
        let stall = TimeAmount.milliseconds(Int64(max(1, settings.timeout) * 1000))
        configuration.timeout = .init(connect: .seconds(10), read: stall, write: stall)
        client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }

    deinit { try? client.syncShutdown() }

    public func multiply(module: String, direction: ProductDirection, request: [UInt8], responseBytes: Int) throws -> [UInt8] {
        let url = baseURL.appendingPathComponent("v1/modules").appendingPathComponent(module).appendingPathComponent(direction.rawValue)
        return try send(url, method: .POST, body: request, expecting: .exactly(responseBytes))
    }

    /// The online product: `POST /v1/modules/{name}/{direction}/masked`.
    public func multiplyMasked(module: String, direction: ProductDirection, request: [UInt8], responseBytes: Int) throws -> [UInt8] {
        try send(maskedURL(module, direction), method: .POST, body: request, expecting: .exactly(responseBytes))
    }

    /// Pieces per online call, all in flight at once (one connection each): the client blinds
    /// the next piece and unblinds the last while the server multiplies (at least 1).
    public var maskedPieces = 2
    public var maskedPipelineParts: Int { max(1, maskedPieces) }

    /// Sends each piece as soon as it is built and takes the answers in order. A piece whose
    /// first attempt fails with a connection error or a 5xx answer is resent with the retry
    /// policy of every request; other failures end the call at once.
    public func multiplyMaskedParts(module: String, direction: ProductDirection, parts: Int,
                                    request: (Int) throws -> (bytes: [UInt8], responseBytes: Int),
                                    receive: (Int, [UInt8]) throws -> Void) throws {
        let url = maskedURL(module, direction)
        let started = ProcessInfo.processInfo.systemUptime
        var pending: [(task: HTTPClient.Task<BoundedBody.Response>, request: HTTPClient.Request, size: BoundedBody.Size)] = []
        for i in 0..<parts {
            let (bytes, length) = try request(i)
            let r = try makeRequest(url, method: .POST, body: bytes)
            pending.append((start(r, expecting: .exactly(length)), r, .exactly(length)))
        }
        for (i, p) in pending.enumerated() {
            switch try outcome(of: p.task, url: url, attempt: 1, started: started) {
            case .body(let body): try receive(i, body)
            case .retry(let why): try receive(i, try send(url, request: p.request, expecting: p.size, firstFailure: why))
            }
        }
    }

    private func maskedURL(_ module: String, _ direction: ProductDirection) -> URL {
        baseURL.appendingPathComponent("v1/modules").appendingPathComponent(module).appendingPathComponent(direction.rawValue)
            .appendingPathComponent("masked")
    }

    /// `GET /v1/modules`: the server's manifest.
    public func modules() throws -> ModulesResponse {
        let url = baseURL.appendingPathComponent("v1/modules")
        let body = try send(url, method: .GET, body: nil, expecting: .atMost(Self.maxManifestBytes))
        do { return try JSONDecoder().decode(ModulesResponse.self, from: Data(body)) } catch {
            throw RemoteServerError.badResponse(url: url.absoluteString, reason: "GET /v1/modules is not a deployment manifest (\(error))")
        }
    }

    private func makeRequest(_ url: URL, method: HTTPMethod, body: [UInt8]?) throws -> HTTPClient.Request {
        var request: HTTPClient.Request
        do { request = try HTTPClient.Request(url: url, method: method) } catch {
            throw RemoteServerError.badResponse(url: url.absoluteString, reason: "not a usable URL (\(error))")
        }
        if body != nil { request.headers.add(name: "Content-Type", value: "application/octet-stream") }
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        if let body { request.body = .bytes(body) }
        return request
    }

    /// One attempt, started: its whole exchange, body included, has one deadline.
    private func start(_ request: HTTPClient.Request, expecting size: BoundedBody.Size) -> HTTPClient.Task<BoundedBody.Response> {
        let deadline = NIODeadline.now() + .milliseconds(Int64(settings.timeout * 1000))
        return client.execute(request: request, delegate: BoundedBody(expecting: size), deadline: deadline)
    }

    private enum Outcome {
        case body([UInt8])
        /// A connection error or a 5xx answer: worth another attempt.
        case retry(String)
    }

    /// What one attempt came to; errors that no retry would mend are thrown.
    private func outcome(of task: HTTPClient.Task<BoundedBody.Response>, url: URL, attempt: Int, started: Double) throws -> Outcome {
        let answer: (status: Int, body: [UInt8])
        do {
            answer = try task.wait()
        } catch let error as BoundedBody.Refusal {
            // The server answered, but not what this request implies: a broken or hostile
            // server, not a passing failure.
            throw RemoteServerError.badResponse(url: url.absoluteString, reason: error.description)
        } catch let error as HTTPClientError where error == .deadlineExceeded {
            throw RemoteServerError.unavailable(url: url.absoluteString, attempts: attempt, seconds: ProcessInfo.processInfo.systemUptime - started,
                                                lastError: "no complete answer within the \(Int(settings.timeout)) s deadline")
        } catch {
            return .retry("\(error)")
        }
        let text = String(decoding: answer.body.prefix(500), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        switch answer.status {
        case 200: return .body(answer.body)
        case 500...599: return .retry("HTTP \(answer.status) \(text)")
        default: throw RemoteServerError.refused(url: url.absoluteString, status: answer.status, message: text)
        }
    }

    /// One request with the retry policy; the body of a 200 answer.
    func send(_ url: URL, method: HTTPMethod, body: [UInt8]?, expecting size: BoundedBody.Size) throws -> [UInt8] {
        try send(url, request: try makeRequest(url, method: method, body: body), expecting: size)
    }

    /// The retry policy: attempts with exponential backoff on connection errors and 5xx
    /// answers (`firstFailure`: the first attempt was made elsewhere and failed so).
    private func send(_ url: URL, request: HTTPClient.Request, expecting size: BoundedBody.Size, firstFailure: String? = nil) throws -> [UInt8] {
        let started = ProcessInfo.processInfo.systemUptime
        var wait = settings.backoff
        var lastError = firstFailure ?? ""
        // (A range: with one attempt allowed and it made elsewhere, none is left.)
        for attempt in stride(from: firstFailure == nil ? 1 : 2, through: max(1, settings.attempts), by: 1) {
            if attempt > 1 {
                retries += 1
                Thread.sleep(forTimeInterval: wait)
                wait = min(wait * 2, settings.maxBackoff)
            }
            switch try outcome(of: start(request, expecting: size), url: url, attempt: attempt, started: started) {
            case .body(let body): return body
            case .retry(let why): lastError = why
            }
        }
        throw RemoteServerError.unavailable(url: url.absoluteString, attempts: max(1, settings.attempts),
                                            seconds: ProcessInfo.processInfo.systemUptime - started, lastError: lastError)
    }
}

/// Collects an answer within bounds fixed before it starts: a 200 answer of exactly (or at
/// most) the size the request implies, any other of at most ``HTTPTransport/maxErrorBytes``.
/// A declared length out of bounds fails the exchange at the head; a body that grows past its
/// bound fails it at that part.
final class BoundedBody: HTTPClientResponseDelegate, @unchecked Sendable {
    // AsyncHTTPClient calls a delegate's methods one at a time, on its event loop.
    typealias Response = (status: Int, body: [UInt8])

    enum Size { case exactly(Int), atMost(Int) }

    struct Refusal: Error, CustomStringConvertible {
        var description: String
    }

    let size: Size
    private var status = 0
    private var limit = 0
    private var body: [UInt8] = []

    init(expecting size: Size) { self.size = size }

    func didReceiveHead(task: HTTPClient.Task<Response>, _ head: HTTPResponseHead) -> EventLoopFuture<Void> {
        status = Int(head.status.code)
        let declared = head.headers.first(name: "content-length").flatMap { Int($0) }
        if status == 200 {
            switch size {
            case .exactly(let n):
                if let declared, declared != n {
                    return task.eventLoop.makeFailedFuture(Refusal(description: "the answer declares \(declared) bytes; this request's answer is exactly \(n)"))
                }
                limit = n
            case .atMost(let n):
                if let declared, declared > n {
                    return task.eventLoop.makeFailedFuture(Refusal(description: "the answer declares \(declared) bytes, over the limit of \(n)"))
                }
                limit = n
            }
        } else {
            limit = HTTPTransport.maxErrorBytes
            if let declared, declared > limit {
                return task.eventLoop.makeFailedFuture(Refusal(description: "HTTP \(status) with a body of \(declared) bytes, over the \(limit) an error may take"))
            }
        }
        body.reserveCapacity(min(declared ?? 0, limit))
        return task.eventLoop.makeSucceededVoidFuture()
    }

    func didReceiveBodyPart(task: HTTPClient.Task<Response>, _ buffer: ByteBuffer) -> EventLoopFuture<Void> {
        guard body.count + buffer.readableBytes <= limit else {
            let what = status == 200 ? "the answer" : "HTTP \(status)'s body"
            return task.eventLoop.makeFailedFuture(Refusal(description: "\(what) goes on past \(limit) bytes"))
        }
        buffer.withUnsafeReadableBytes { body.append(contentsOf: $0) }
        return task.eventLoop.makeSucceededVoidFuture()
    }

    func didFinishRequest(task: HTTPClient.Task<Response>) throws -> Response {
        if status == 200, case .exactly(let n) = size, body.count != n {
            throw Refusal(description: "the answer ended after \(body.count) bytes; this request's answer is exactly \(n)")
        }
        return (status, body)
    }
}
