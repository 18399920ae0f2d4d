import Foundation
import Engine

/// The server's structured log: one JSON object per line on standard error, keys in a fixed
/// order (`time`, `level`, `event`, then the event's fields). Request bodies are never logged.
struct ServeLog: Sendable {
    /// A JSON value of a log field.
    enum Value: Sendable, ExpressibleByStringLiteral, ExpressibleByIntegerLiteral {
        case string(String), int(Int), double(Double), bool(Bool)

        init(stringLiteral value: String) { self = .string(value) }
        init(integerLiteral value: Int) { self = .int(value) }
    }

    enum Level: String, Sendable { case info, warning, error }

    /// Where finished lines go (each call is one whole line with its newline).
    let sink: @Sendable (String) -> Void

    init(sink: @escaping @Sendable (String) -> Void = ServeLog.standardError) { self.sink = sink }

    /// Fields whose value is nil are left out.
    func write(_ level: Level, _ event: String, _ fields: [(String, Value?)]) {
        var line = "{\"time\":" + Self.quoted(Self.timestamp()) + ",\"level\":" + Self.quoted(level.rawValue)
            + ",\"event\":" + Self.quoted(event)
        for (key, value) in fields {
            guard let value else { continue }
            line += "," + Self.quoted(key) + ":" + Self.json(value)
        }
        sink(line + "}\n")
    }

    /// One `write(2)` per line, so that lines from concurrent requests never interleave.
    @Sendable static func standardError(_ line: String) {
        var bytes = Array(line.utf8)
        bytes.withUnsafeMutableBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                let n = Foundation.write(2, buffer.baseAddress! + offset, buffer.count - offset)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return }
                offset += n
            }
        }
    }

    static func json(_ value: Value) -> String {
        switch value {
        case .string(let s): return quoted(s)
        case .int(let i): return String(i)
        case .double(let d): return d.isFinite ? String(format: "%.3f", d) : "null"
        case .bool(let b): return b ? "true" : "false"
        }
    }

    /// A JSON string literal (``JSONString/literal(_:)``).
    static func quoted(_ s: String) -> String { JSONString.literal(s) }

    /// UTC, millisecond precision: `2025-01-31T12:34:56.789Z`.
    static func timestamp() -> String {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        var seconds = spec.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        return String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1, Int(parts.tm_mday),
                      Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec), Int(spec.tv_nsec / 1_000_000))
    }
}
