import Foundation
import Hummingbird
import NIOCore

/// What a route learnt about its request, for the access log.
struct RequestRecord: Sendable {
    var module: String?
    var direction: String?
    /// Body bytes read (0 when the route refused the request before reading it).
    var bytesIn = 0
}

/// The request context of `nb serve`: Hummingbird's core storage plus the record a route
/// fills in and ``AccessMiddleware`` logs (a reference, since contexts are passed by value).
struct ServeRequestContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    let record = Locked(RequestRecord())
    /// The connection, whose ``ConnectionGuard`` says what the socket took of the answer.
    let channel: any Channel

    init(source: ApplicationRequestContextSource) { (coreContext, channel) = (.init(source: source), source.channel) }

    /// The delivery record of this request's connection (nil without a ``ConnectionGuard``).
    func delivery() async -> AnswerDelivery? {
        try? await channel.pipeline.handler(type: ConnectionGuard.self).map { $0.delivery }.get()
    }
}

/// Wraps every route: checks the bearer token (all routes but the health check), turns the
/// errors routes throw into their responses, and writes one access-log line per request.
struct AccessMiddleware: RouterMiddleware {
    typealias Context = ServeRequestContext

    static let publicPath = "/v1/health"
    let token: [UInt8]?
    let log: ServeLog
    let stats: ServeStatistics
    let metrics: ServeMetrics?

    init(token: String?, log: ServeLog, stats: ServeStatistics, metrics: ServeMetrics? = nil) {
        (self.token, self.log, self.stats, self.metrics) = (token.map { Array($0.utf8) }, log, stats, metrics)
    }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let started = ContinuousClock.now
        stats.requests.update { $0 += 1 }
        metrics?.started()
        var response: Response
        var failure: String?
        do {
            if let token, request.uri.path != Self.publicPath, !Self.authorizes(request.headers[.authorization], token: token) {
                // Answered before a byte of the body is read; the connection is then closed.
                throw HTTPFailure(.unauthorized, "missing or wrong bearer token", headers: [.wwwAuthenticate: "Bearer"])
            }
            response = try await next(request, context)
        } catch let error as any HTTPResponseError {
            failure = (error as? HTTPFailure)?.message ?? "\(error)"
            response = try error.response(from: request, context: context)
        } catch {
            // The connection failed under the request (a body cut short, a parse error):
            // there is nobody to answer; Hummingbird closes the connection.
            write(request, context, status: nil, bytesOut: 0, started: started, error: "connection dropped: \(error)")
            throw error
        }
        // The line is written once the body has been written to the socket, with the bytes it
        // took (and the time the peer took to read them). The writer returns when a piece is
        // queued, not when it is sent: the connection's guard reports what was sent.
        let (status, body, refusal) = (response.status.code, response.body, failure)
        response.headers[AnswerDelivery.header] = context.id
        response.body = ResponseBody(contentLength: body.contentLength) { [self] writer in
            var thrown: (any Error)?
            let queued = Locked(0)
            do { try await body.write(CountingWriter(parent: writer, queued: queued)) } catch { thrown = error }
            let outcome = await context.delivery()?.outcome(of: context.id)
            let bytes = outcome?.bytes ?? queued.value
            if let reason = thrown.map({ "\($0)" }) ?? outcome?.failure {
                self.write(request, context, status: status, bytesOut: bytes, started: started, error: "answer cut after \(bytes) bytes: \(reason)")
            } else {
                self.write(request, context, status: status, bytesOut: bytes, started: started, error: refusal)
            }
            if let thrown { throw thrown }
        }
        return response
    }

    private func write(_ request: Request, _ context: Context, status: Int?, bytesOut: Int, started: ContinuousClock.Instant, error: String?) {
        let record = context.record.value
        metrics?.finished(route: ServeMetrics.route(request.uri.path), status: status, bytesIn: record.bytesIn, bytesOut: bytesOut,
                          duration: ContinuousClock.now - started)
        let level: ServeLog.Level = switch status {
        case .none: .warning
        case .some(let s) where s >= 500: .error
        case .some(let s) where s >= 400: .warning
        default: .info
        }
        // Paths come from the client: cap their length in the log.
        let path = request.uri.path.count > 256 ? String(request.uri.path.prefix(256)) + "…" : request.uri.path
        log.write(level, "request", [
            ("id", .string(context.id)), ("method", .string(request.method.rawValue)), ("path", .string(path)),
            ("module", record.module.map { .string($0) }), ("direction", record.direction.map { .string($0) }),
            ("status", status.map { .int($0) }), ("bytes_in", .int(record.bytesIn)), ("bytes_out", .int(bytesOut)),
            ("ms", .double((ContinuousClock.now - started).seconds * 1000)), ("error", error.map { .string($0) }),
        ])
    }

    /// Whether `header` is `Bearer <token>` (scheme case-insensitive, RFC 6750). The token is
    /// compared in time that depends only on its own length, not on where a guess differs.
    static func authorizes(_ header: String?, token: [UInt8]) -> Bool {
        guard let header, let space = header.firstIndex(of: " "), header[..<space].lowercased() == "bearer" else { return false }
        let given = Array(header[space...].trimmingCharacters(in: .whitespaces).utf8)
        var difference: UInt8 = given.count == token.count ? 0 : 1
        for i in token.indices { difference |= token[i] ^ (i < given.count ? given[i] : 0) }
        return difference == 0
    }
}

/// Passes a body on and counts the bytes queued (what was sent, where no guard reports it).
private struct CountingWriter: ResponseBodyWriter {
    var parent: any ResponseBodyWriter
    let queued: Locked<Int>

    mutating func write(_ buffer: ByteBuffer) async throws {
        try await parent.write(buffer)
        queued.update { $0 += buffer.readableBytes }
    }

    consuming func finish(_ trailingHeaders: HTTPFields?) async throws {
        try await parent.finish(trailingHeaders)
    }
}
