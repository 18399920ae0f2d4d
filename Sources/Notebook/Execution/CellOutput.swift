import Foundation

/// A table of strings, shown as an HTML table in the report.
public struct OutputTable: Codable, Equatable, Sendable {
    public var title: String?
    public var columns: [String]
    public var rows: [[String]]

    public init(title: String? = nil, columns: [String], rows: [[String]]) {
        precondition(rows.allSatisfy { $0.count == columns.count }, "every row needs \(columns.count) cells")
        self.title = title
        self.columns = columns
        self.rows = rows
    }
}

/// A named value shown in a cell's metric strip, e.g. `examples: 40`.
public struct Metric: Codable, Equatable, Sendable {
    public var name: String
    public var value: String
    public init(_ name: String, _ value: String) { self.name = name; self.value = value }
}

/// One item of a cell's output, in the order the step produced them.
public enum CellOutput: Codable, Equatable, Sendable {
    case text(String)
    case table(OutputTable)
    case metrics([Metric])
    case chart(LineChart)
    case warning(String)
}

/// Formats numbers for outputs and the terminal.
public enum Format {
    /// 12,345 with thousands separators.
    public static func integer(_ n: Int) -> String {
        let digits = String(n.magnitude)
        var out = ""
        for (i, c) in digits.enumerated() {
            if i > 0 && (digits.count - i) % 3 == 0 { out += "," }
            out.append(c)
        }
        return n < 0 ? "-" + out : out
    }

    /// A duration as `0.42 s`, `12.3 s`, `4 min 05 s` or `1 h 02 min`.
    public static func duration(_ seconds: Double) -> String {
        if seconds < 10 { return String(format: "%.2f s", seconds) }
        if seconds < 60 { return String(format: "%.1f s", seconds) }
        let s = Int(seconds.rounded())
        if s < 3600 { return String(format: "%d min %02d s", s / 60, s % 60) }
        return String(format: "%d h %02d min", s / 3600, (s % 3600) / 60)
    }

    public static func number(_ x: Double, decimals: Int = 2) -> String { String(format: "%.\(decimals)f", x) }

    /// A rate with one decimal, or three significant digits below 1 (encrypted decoding: 0.0497).
    public static func rate(_ x: Double) -> String { x >= 1 || x == 0 ? number(x, decimals: 1) : String(format: "%.3g", x) }
}
