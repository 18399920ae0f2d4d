import Engine
import Foundation
import Hummingbird

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
    guard options.idleTimeout > .zero else { throw ServeError.invalidOptions("the idle timeout must be positive") }
    guard (0...65535).contains(options.port) else { throw ServeError.invalidOptions("port \(options.port) is outside 0…65535") }

    let log = ServeLog()
    let workers = ProductWorkers(count: options.concurrency)
    // Blocks only briefly: by the time the server returns every request has been answered,
    // so no product is left to run.
    defer { workers.shutdown() }
    let stats = ServeStatistics()

    // HEAD too, for load balancers that probe with it.
    let router = Router(context: ServeRequestContext.self, options: .autoGenerateHeadEndpoints)
    // Added first so that it wraps every route, the 404 of unknown paths included.
    router.add(middleware: AccessMiddleware(token: options.token, log: log, stats: stats))
    addRoutes(to: router, deployment: deployment, workers: workers, maxBodyBytes: options.maxBodyBytes)

    let idle = options.idleTimeout.components
    let idleNanoseconds = idle.seconds * 1_000_000_000 + idle.attoseconds / 1_000_000_000
    let bound = Locked(false)
    var app = Application(
        router: router,
        server: .http1(configuration: .init(idleTimeout: .nanoseconds(idleNanoseconds))),
        configuration: .init(address: .hostname(options.host, port: options.port), serverName: "nb-serve"),
        onServerRunning: { channel in
            let port = channel.localAddress?.port ?? options.port
            bound.value = true
            log.write(.info, "start", [
                ("url", .string(options.url(port: port))), ("deployment_id", .string(deployment.manifest.deploymentID)),
                ("name", .string(deployment.manifest.name)), ("model", .string(deployment.manifest.model)),
                ("modules", .int(deployment.manifest.modules.count)), ("concurrency", .int(options.concurrency)),
                ("max_body_bytes", .int(options.maxBodyBytes)), ("idle_timeout_s", .double(Double(idleNanoseconds) / 1e9)),
                ("auth", .bool(options.token != nil)), ("pid", .int(Int(getpid()))),
            ])
            onListening(port)
        })
    // Hummingbird's own text logs would break the one-JSON-object-per-line stream; requests
    // are logged by `AccessMiddleware`, failures to start are thrown.
    app.logger.logLevel = .critical

    let started = ContinuousClock.now
    do {
        // Stops accepting on SIGTERM/SIGINT, closes idle connections and returns once the
        // requests in flight have been answered.
        try await app.runService()
    } catch where !bound.value {
        throw ServeError.cannotListen(address: options.url(port: options.port), reason: "\(error)")
    }
    log.write(.info, "stop", [
        ("requests", .int(stats.requests.value)), ("uptime_s", .double((ContinuousClock.now - started).seconds)),
    ])
}

/// The routes; `AccessMiddleware` has checked the token by the time they run.
private func addRoutes(to router: Router<ServeRequestContext>, deployment: ServerDeployment, workers: ProductWorkers, maxBodyBytes: Int) {
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
            if let declared = request.headers[.contentLength].flatMap({ Int($0) }), declared > maxBodyBytes {
                throw HTTPFailure(.contentTooLarge, "body of \(declared) bytes is over the limit of \(maxBodyBytes)")
            }
            let body: ByteBuffer
            do { body = try await request.body.collect(upTo: maxBodyBytes) } catch let error as any HTTPResponseError where error.status == .contentTooLarge {
                // A chunked body that grew past the limit.
                throw HTTPFailure(.contentTooLarge, "body is over the limit of \(maxBodyBytes) bytes")
            }
            let input = Array(body.readableBytesView)
            context.record.update { $0.bytesIn = input.count }
            let result = await workers.run {
                Result { () throws(RemoteRequestError) in
                    masked ? try deployment.handleMasked(module: name, direction: direction, request: input)
                        : try deployment.handle(module: name, direction: direction, request: input)
                }
            }
            switch result {
            case .success(let output):
                return Response(status: .ok, headers: [.contentType: "application/octet-stream"], body: .init(byteBuffer: ByteBuffer(bytes: output)))
            case .failure(let error):
                throw HTTPFailure(.init(code: error.httpStatus), error.description)
            }
        }
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
