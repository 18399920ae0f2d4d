import Foundation

/// How `nb serve` listens and what it accepts.
public struct ServeOptions: Sendable {
    /// The address to bind (an IPv4 or IPv6 literal, or a host name).
    public var host: String
    /// The TCP port; 0 asks the OS for any free port (reported through `onListening`).
    public var port: Int
    /// When set, every route but `GET /v1/health` needs `Authorization: Bearer <token>`.
    public var token: String?
    /// The largest request body accepted (413 beyond it).
    public var maxBodyBytes: Int
    /// Products computed at once; further product requests wait their turn.
    public var concurrency: Int
    /// A connection without progress either way (a request part read, an answer's piece
    /// written) for this long, outside a product being computed, is closed.
    public var idleTimeout: Duration
    /// The memory the requests in flight may hold together (their bodies, the products'
    /// buffers, the answers until sent), on top of the loaded deployment.
    public var requestMemoryBytes: Int
    /// How long a request waits for memory held by others before a 503.
    public var memoryWait: Duration
    /// On SIGTERM, how long the answers in flight may take to finish.
    public var drainTimeout: Duration
    /// Serve a non-loopback address without a token (refused otherwise).
    public var allowUnauthenticated: Bool
    /// Serve `GET /metrics` (Prometheus; behind the token like every route but health).
    public var metrics: Bool

    public init(host: String = "127.0.0.1", port: Int = 8080, token: String? = nil, maxBodyBytes: Int = 512 << 20,
                concurrency: Int = 1, idleTimeout: Duration = .seconds(30), requestMemoryBytes: Int = 3 << 30,
                memoryWait: Duration = .seconds(10), drainTimeout: Duration = .seconds(60), allowUnauthenticated: Bool = false,
                metrics: Bool = false) {
        (self.host, self.port, self.token, self.maxBodyBytes) = (host, port, token, maxBodyBytes)
        (self.concurrency, self.idleTimeout, self.requestMemoryBytes) = (concurrency, idleTimeout, requestMemoryBytes)
        (self.memoryWait, self.drainTimeout, self.allowUnauthenticated, self.metrics) = (memoryWait, drainTimeout, allowUnauthenticated, metrics)
    }

    /// Whether `host` names only this machine (127.0.0.0/8, ::1, localhost).
    public static func isLoopback(_ host: String) -> Bool {
        let h = host.lowercased().trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        return h == "localhost" || h == "::1" || h.hasPrefix("127.") || h == "0:0:0:0:0:0:0:1"
    }

    /// `http://HOST:PORT`, with an IPv6 literal in brackets.
    public func url(port: Int) -> String {
        host.contains(":") ? "http://[\(host)]:\(port)" : "http://\(host):\(port)"
    }
}
