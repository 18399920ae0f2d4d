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
    /// A connection that sends nothing for this long, outside a request being computed, is closed.
    public var idleTimeout: Duration

    public init(host: String = "127.0.0.1", port: Int = 8080, token: String? = nil, maxBodyBytes: Int = 512 << 20,
                concurrency: Int = 1, idleTimeout: Duration = .seconds(30)) {
        (self.host, self.port, self.token, self.maxBodyBytes) = (host, port, token, maxBodyBytes)
        (self.concurrency, self.idleTimeout) = (concurrency, idleTimeout)
    }

    /// `http://HOST:PORT`, with an IPv6 literal in brackets.
    public func url(port: Int) -> String {
        host.contains(":") ? "http://[\(host)]:\(port)" : "http://\(host):\(port)"
    }
}
