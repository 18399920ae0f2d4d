import FHE
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

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
/// to `nb serve` with the serialized ciphertexts. Connection errors and 5xx answers are
/// retried with exponential backoff (a restarting server loses nothing: it is stateless and
/// the request is resent whole); 4xx answers are errors at once.
public final class HTTPTransport: EncryptedTransport, @unchecked Sendable {
    public let baseURL: URL
    let token: String?
    public let settings: RemoteSettings
    private let session: URLSession
    /// Requests resent after a failed attempt (for reports).
    public private(set) var retries = 0

    public init(baseURL: URL, token: String? = nil, settings: RemoteSettings = RemoteSettings()) {
        (self.baseURL, self.token, self.settings) = (baseURL, token, settings)
        // A remote client is the small side of the split: keep its memory near its model.
        FHEMemory.compact()
        let configuration = URLSessionConfiguration.ephemeral
        configuration.timeoutIntervalForRequest = settings.timeout
        configuration.timeoutIntervalForResource = settings.timeout
        configuration.httpMaximumConnectionsPerHost = 2
        configuration.requestCachePolicy = .reloadIgnoringLocalCacheData
        session = URLSession(configuration: configuration)
    }

    deinit { session.invalidateAndCancel() }

    public func multiply(module: String, direction: ProductDirection, request: [UInt8]) throws -> [UInt8] {
        let url = baseURL.appendingPathComponent("v1/modules").appendingPathComponent(module).appendingPathComponent(direction.rawValue)
        return try send(url, method: "POST", body: Data(request), contentType: "application/octet-stream")
    }

    /// The online product: `POST /v1/modules/{name}/{direction}/masked`.
    public func multiplyMasked(module: String, direction: ProductDirection, request: [UInt8]) throws -> [UInt8] {
        let url = baseURL.appendingPathComponent("v1/modules").appendingPathComponent(module).appendingPathComponent(direction.rawValue)
            .appendingPathComponent("masked")
        return try send(url, method: "POST", body: Data(request), contentType: "application/octet-stream")
    }

    /// `GET /v1/modules`: the server's manifest.
    public func modules() throws -> ModulesResponse {
        let url = baseURL.appendingPathComponent("v1/modules")
        let body = try send(url, method: "GET", body: nil, contentType: nil)
        do { return try JSONDecoder().decode(ModulesResponse.self, from: Data(body)) } catch {
            throw RemoteServerError.badResponse(url: url.absoluteString, reason: "GET /v1/modules is not a deployment manifest (\(error))")
        }
    }

    /// One request with the retry policy; the body of a 200 answer.
    func send(_ url: URL, method: String, body: Data?, contentType: String?) throws -> [UInt8] {
        var request = URLRequest(url: url, cachePolicy: .reloadIgnoringLocalCacheData, timeoutInterval: settings.timeout)
        request.httpMethod = method
        if let contentType { request.setValue(contentType, forHTTPHeaderField: "Content-Type") }
        if let token { request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization") }
        request.httpBody = body
        let started = ProcessInfo.processInfo.systemUptime
        var wait = settings.backoff
        var lastError = ""
        for attempt in 1...max(1, settings.attempts) {
            if attempt > 1 {
                retries += 1
                Thread.sleep(forTimeInterval: wait)
                wait = min(wait * 2, settings.maxBackoff)
            }
            let (data, response, error) = perform(request)
            if let error {
                lastError = error.localizedDescription
                continue
            }
            guard let http = response as? HTTPURLResponse else { lastError = "no HTTP response"; continue }
            let bytes = data.map { [UInt8]($0) } ?? []
            switch http.statusCode {
            case 200: return bytes
            case 500...599:
                lastError = "HTTP \(http.statusCode) \(String(decoding: bytes.prefix(300), as: UTF8.self))"
            default:
                throw RemoteServerError.refused(url: url.absoluteString, status: http.statusCode,
                                                message: String(decoding: bytes.prefix(500), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
            }
        }
        throw RemoteServerError.unavailable(url: url.absoluteString, attempts: max(1, settings.attempts),
                                            seconds: ProcessInfo.processInfo.systemUptime - started, lastError: lastError)
    }

    /// Runs one request and waits for it (the training pass calls the backend synchronously).
    private func perform(_ request: URLRequest) -> (Data?, URLResponse?, Error?) {
        let done = DispatchSemaphore(value: 0)
        let box = ResultBox()
        let task = session.dataTask(with: request) { data, response, error in
            box.value = (data, response, error)
            done.signal()
        }
        task.resume()
        done.wait()
        return box.value ?? (nil, nil, URLError(.unknown))
    }

    private final class ResultBox: @unchecked Sendable { var value: (Data?, URLResponse?, Error?)? }
}
