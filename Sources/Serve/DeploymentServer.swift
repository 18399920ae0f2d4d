import Engine
import Foundation
import Hummingbird
import NIOCore
import ServiceLifecycle

/// Why the server could not start.
public enum ServeError: Error, CustomStringConvertible {
    case cannotListen(address: String, reason: String)
    case invalidOptions(String)

    public var description: String {
        switch self {
        case .cannotListen(let a, let r): return "cannot listen on \(a): \(r)"
        case .invalidOptions(let s): return s
        }
    }
}

/// Serves a deployment's server folder over HTTP/1.1 until SIGTERM or SIGINT, then lets the
/// requests in flight finish and returns.
///
/// Routes (JSON and one-line text errors; product bodies are the FHE wire format):
/// - `GET /v1/health` → `{"status":"ok","deployment_id":…,"modules":N}` (never needs the token);
/// - `GET /v1/modules` → ``ServerDeployment/modulesJSON``;
/// - `POST /v1/modules/{name}/forward|backward` → the encrypted product of the body by W or Wᵀ:
///   400 malformed, 404 unknown module or direction, 413 body over the limit, 422 wrong shape;
///   413 also when the product would take more than the memory budget, 503 (with
///   `Retry-After`) when the requests in flight hold the budget for longer than a wait;
/// - `GET /metrics` (with `options.metrics`) → Prometheus's text format (``ServeMetrics``);
/// - `POST /v1/modules/{name}/forward|backward/masked` → the masked protocol's online product
///   (W·u mod 2^k of one-time-padded integers), with the same errors.
///
/// - Parameter onListening: called once the socket is bound, with the real port (useful
///   when `options.port` is 0).
/// - Throws: ``ServeError/cannotListen(address:reason:)`` when the address cannot be bound.
public func runDeploymentServer(deployment: ServerDeployment, options: ServeOptions,
                                onListening: @escaping @Sendable (Int) -> Void = { _ in }) async throws {
    guard options.concurrency >= 1 else { throw ServeError.invalidOptions("concurrency must be at least 1, got \(options.concurrency)") }
    guard options.maxBodyBytes >= 1 else { throw ServeError.invalidOptions("the body limit must be at least 1 byte, got \(options.maxBodyBytes)") }
    guard options.requestMemoryBytes >= 1 << 20 else {
        throw ServeError.invalidOptions("the memory budget for requests must be at least 1 MiB, got \(options.requestMemoryBytes) bytes")
    }
    guard options.idleTimeout > .zero else { throw ServeError.invalidOptions("the idle timeout must be positive") }
    guard options.drainTimeout > .zero else { throw ServeError.invalidOptions("the drain timeout must be positive") }
    guard (0...65535).contains(options.port) else { throw ServeError.invalidOptions("port \(options.port) is outside 0…65535") }
    if options.token == nil && !options.allowUnauthenticated && !ServeOptions.isLoopback(options.host) {
        throw ServeError.invalidOptions("refusing to serve \(options.host) without a token: anyone who reaches it could use the server. "
            + "Give --token-file FILE, listen on 127.0.0.1, or pass --allow-unauthenticated to accept this")
    }

    let log = ServeLog()
    let workers = ProductWorkers(count: options.concurrency)
    // Blocks only briefly: by the time the server returns every request has been answered,
    // so no product is left to run.
    defer { workers.shutdown() }
    let stats = ServeStatistics()
    let budget = MemoryBudget(capacity: options.requestMemoryBytes)
    // A request waiting for memory must not outwait the idle timeout.
    let limits = RequestLimits(maxBodyBytes: options.maxBodyBytes, memoryWait: min(options.memoryWait, options.idleTimeout / 2))

    // HEAD too, for load balancers that probe with it.
    let router = Router(context: ServeRequestContext.self, options: .autoGenerateHeadEndpoints)
    // Added first so that it wraps every route, the 404 of unknown paths included.
    let metrics = options.metrics ? ServeMetrics(budget: budget) : nil
    router.add(middleware: AccessMiddleware(token: options.token, log: log, stats: stats, metrics: metrics))
    addRoutes(to: router, deployment: deployment, workers: workers, budget: budget, limits: limits)
    if let metrics {
        router.get("/metrics") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                     body: .init(byteBuffer: ByteBuffer(bytes: metrics.exposition())))
        }
    }

    let idle = TimeAmount(options.idleTimeout), drain = TimeAmount(options.drainTimeout)
    let bound = Locked(false)
    var app = Application(
        router: router,
        // Hummingbird's idle timer is off: `ConnectionGuard` counts progress both ways.
        server: .http1(configuration: .init(additionalChannelHandlers: [ConnectionGuard(idle: idle, drainLimit: drain)], idleTimeout: nil)),
        configuration: .init(address: .hostname(options.host, port: options.port), serverName: "nb-serve"),
        onServerRunning: { channel in
            let port = channel.localAddress?.port ?? options.port
            bound.value = true
            log.write(.info, "start", [
                ("url", .string(options.url(port: port))), ("deployment_id", .string(deployment.manifest.deploymentID)),
                ("name", .string(deployment.manifest.name)), ("model", .string(deployment.manifest.model)),
                ("modules", .int(deployment.manifest.modules.count)), ("concurrency", .int(options.concurrency)),
                ("max_body_bytes", .int(options.maxBodyBytes)), ("request_memory_bytes", .int(options.requestMemoryBytes)),
                ("idle_timeout_s", .double(options.idleTimeout.seconds)), ("drain_timeout_s", .double(options.drainTimeout.seconds)),
                ("auth", .bool(options.token != nil)), ("metrics", .bool(options.metrics)), ("pid", .int(Int(getpid()))),
            ])
            if options.token == nil {
                log.write(.warning, "no_token", [("message", .string(
                    "every route is open to whoever reaches \(options.url(port: port)): serve with --token-file on any network another person can reach"))])
            }
            onListening(port)
        })
    // Hummingbird's own text logs would break the one-JSON-object-per-line stream; requests
    // are logged by `AccessMiddleware`, failures to start are thrown.
    app.logger.logLevel = .critical
    let logger = app.logger

    let started = ContinuousClock.now
    // On SIGTERM/SIGINT: stop accepting, let `ConnectionGuard` finish the answers in flight
    // (for at most the drain timeout), then return.
    var configuration = ServiceGroupConfiguration(services: [app], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
    configuration.maximumGracefulShutdownDuration = options.drainTimeout + .seconds(5)
    do {
        try await ServiceGroup(configuration: configuration).run()
    } catch where !bound.value {
        throw ServeError.cannotListen(address: options.url(port: options.port), reason: "\(error)")
    }
    log.write(.info, "stop", [
        ("requests", .int(stats.requests.value)), ("uptime_s", .double((ContinuousClock.now - started).seconds)),
        ("peak_request_memory_bytes", .int(budget.peakInUse)),
    ])
}

/// The routes; `AccessMiddleware` has checked the token by the time they run.
private func addRoutes(to router: Router<ServeRequestContext>, deployment: ServerDeployment, workers: ProductWorkers, budget: MemoryBudget, limits: RequestLimits) {
    let healthBody = "{\"status\":\"ok\",\"deployment_id\":\(ServeLog.quoted(deployment.manifest.deploymentID)),\"modules\":\(deployment.manifest.modules.count)}"
    router.get("/v1/health") { _, _ in
        Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: healthBody)))
    }

    let modules = ByteBuffer(bytes: deployment.modulesJSON)
    router.get("/v1/modules") { _, _ in
        Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: modules))
    }

    for masked in [false, true] {
        router.post(masked ? "/v1/modules/{name}/{direction}/masked" : "/v1/modules/{name}/{direction}") { request, context -> Response in
            let name = try context.parameters.require("name")
            let directionName = try context.parameters.require("direction")
            context.record.update { $0.module = name; $0.direction = directionName + (masked ? "/masked" : "") }
            guard let direction = ProductDirection(rawValue: directionName) else {
                throw HTTPFailure(.notFound, "unknown direction '\(directionName)': expected forward or backward")
            }
            guard deployment.weights.modules[name] != nil else { throw HTTPFailure(.notFound, RemoteRequestError.unknownModule(name).description) }
            // Refuse an announced oversize body before reading a byte of it.
            let declared = request.headers[.contentLength].flatMap { Int($0) }
            if let declared, declared > limits.maxBodyBytes {
                throw HTTPFailure(.contentTooLarge, "body of \(declared) bytes is over the limit of \(limits.maxBodyBytes)")
            }
            // The header first: it says how long the body is and how much memory the product
            // takes, both checked before the rest is read.
            var parts = request.body.makeAsyncIterator()
            let headerBytes = RemoteModuleWeights.headerBytes(masked: masked)
            var head = ByteBuffer()
            while head.readableBytes < headerBytes, var part = try await parts.next() { head.writeBuffer(&part) }
            let admission: RequestAdmission
            do {
                admission = try deployment.weights.admit(module: name, direction: direction, masked: masked,
                                                         prefix: head.getBytes(at: head.readerIndex, length: min(headerBytes, head.readableBytes)) ?? [])
            } catch let error as RemoteRequestError {
                throw HTTPFailure(.init(code: error.httpStatus), error.description)
            }
            if let declared, declared != admission.messageBytes {
                throw HTTPFailure(.badRequest, "malformed request: Content-Length is \(declared) bytes, the message's header makes it \(admission.messageBytes)")
            }
            guard admission.messageBytes <= limits.maxBodyBytes else {
                throw HTTPFailure(.contentTooLarge, "body of \(admission.messageBytes) bytes is over the limit of \(limits.maxBodyBytes); send fewer rows per call")
            }
            guard admission.peakBytes <= budget.capacity else {
                throw HTTPFailure(.contentTooLarge, "this product needs up to \(mebibytes(admission.peakBytes)) MiB of server memory, over the budget of \(mebibytes(budget.capacity)) MiB for requests; send fewer rows per call")
            }
            guard let reservation = await budget.reserve(admission.peakBytes, timeout: limits.memoryWait) else {
                throw HTTPFailure(.serviceUnavailable, "busy: the requests in flight hold \(mebibytes(budget.inUse)) of \(mebibytes(budget.capacity)) MiB and this one needs \(mebibytes(admission.peakBytes)) MiB; retry later",
                                  headers: [.retryAfter: "1"])
            }
            var input = [UInt8]()
            input.reserveCapacity(admission.messageBytes)
            func append(_ buffer: ByteBuffer) throws {
                guard input.count + buffer.readableBytes <= admission.messageBytes else {
                    throw HTTPFailure(.badRequest, "malformed request: the body is longer than the \(admission.messageBytes) bytes its header declares")
                }
                buffer.withUnsafeReadableBytes { input.append(contentsOf: $0) }
            }
            try append(head)
            head = ByteBuffer()
            while let part = try await parts.next() { try append(part) }
            context.record.update { $0.bytesIn = input.count }
            let body = input
            input = []
            let result = await workers.run {
                Result { () throws(RemoteRequestError) in
                    masked ? try deployment.handleMasked(module: name, direction: direction, request: body)
                        : try deployment.handle(module: name, direction: direction, request: body)
                }
            }
            switch result {
            case .success(let output):
                return Response(status: .ok, headers: [.contentType: "application/octet-stream"],
                                body: chunked(ByteBuffer(bytes: output), holding: reservation))
            case .failure(let error):
                throw HTTPFailure(.init(code: error.httpStatus), error.description)
            }
        }
    }
}

/// What a product route may take.
struct RequestLimits: Sendable {
    var maxBodyBytes: Int
    /// The longest a request waits for memory before a 503.
    var memoryWait: Duration
}

func mebibytes(_ bytes: Int) -> String { String(format: "%.1f", Double(bytes) / 1048576) }

/// A body written in pieces of `piece` bytes: the connection's progress is seen per piece (the
/// idle timeout of ``ConnectionGuard``), and `reservation` is held until the last is written.
func chunked(_ buffer: ByteBuffer, holding reservation: MemoryBudget.Reservation? = nil, piece: Int = 1 << 20) -> ResponseBody {
    ResponseBody(contentLength: buffer.readableBytes) { writer in
        var rest = buffer
        while rest.readableBytes > 0 {
            try await writer.write(rest.readSlice(length: min(piece, rest.readableBytes))!)
        }
        try await writer.finish(nil)
        withExtendedLifetime(reservation) {}
    }
}

/// An error answered with its status and a one-line `text/plain` body.
struct HTTPFailure: HTTPResponseError {
    var status: HTTPResponse.Status
    var message: String
    var headers: HTTPFields = [:]

    init(_ status: HTTPResponse.Status, _ message: String, headers: HTTPFields = [:]) {
        (self.status, self.message, self.headers) = (status, message, headers)
    }

    func response(from request: Request, context: some RequestContext) throws -> Response {
        var headers = self.headers
        headers[.contentType] = "text/plain; charset=utf-8"
        // The request's body may be unread (a refusal before it, or its rest after a bad
        // header): `ConnectionGuard` closes the connection rather than read it.
        headers[.connection] = "close"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: message + "\n")))
    }
}

/// Counters over the server's life (for the stop line).
final class ServeStatistics: Sendable {
    let requests = Locked(0)
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) * 1e-18 }
}
