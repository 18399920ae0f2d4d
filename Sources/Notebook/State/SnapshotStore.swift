import Engine
import Foundation

/// The state and outputs of a cell after it finished, stored under its cache key.
public struct CellSnapshot: Codable, Equatable, Sendable {
    public var key: String
    public var cellName: String
    public var step: String
    public var finishedAt: Date
    public var duration: Double
    public var state: SessionState
    public var outputs: [CellOutput]
    /// The outputs as the report shows them, so a reused cell needs no re-rendering.
    /// Stored in a section of its own, not in the JSON.
    public var outputsHTML: String

    enum CodingKeys: String, CodingKey { case key, cellName, step, finishedAt, duration, state, outputs }

    public init(key: String, cellName: String, step: String, finishedAt: Date, duration: Double,
                state: SessionState, outputs: [CellOutput]) {
        (self.key, self.cellName, self.step, self.finishedAt, self.duration) = (key, cellName, step, finishedAt, duration)
        (self.state, self.outputs) = (state, outputs)
        self.outputsHTML = HTMLReport.render(outputs)
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        key = try c.decode(String.self, forKey: .key)
        cellName = try c.decode(String.self, forKey: .cellName)
        step = try c.decode(String.self, forKey: .step)
        finishedAt = try c.decode(Date.self, forKey: .finishedAt)
        duration = try c.decode(Double.self, forKey: .duration)
        state = try c.decode(SessionState.self, forKey: .state)
        outputs = try c.decode([CellOutput].self, forKey: .outputs)
        outputsHTML = ""
    }
}

/// What the report needs of a reused cell: no state, no structured outputs.
public struct CellSnapshotSummary: Codable, Sendable {
    public var key: String
    public var finishedAt: Date
    public var duration: Double
    /// Length in bytes of the HTML section that follows the summary line.
    public var htmlBytes: Int
    /// The model that runs after this cell, as the report header names it.
    public var model: String?
    /// Filled from the HTML section.
    public var outputsHTML: String = ""

    enum CodingKeys: String, CodingKey { case key, finishedAt, duration, htmlBytes, model }
}

/// Why a stored snapshot cannot be used.
public enum SnapshotProblem: Error, Equatable, CustomStringConvertible {
    case missing
    case corrupt(String)

    public var description: String {
        switch self {
        case .missing: return "no snapshot"
        case .corrupt(let why): return "snapshot corrupt (\(why))"
        }
    }
}

/// Snapshots under `outputs/.nb/<notebook>/<key>/snapshot.json`.
///
/// Layout: a header line `nb-snapshot 2 sha256=<hex> bytes=<n>` covering everything after
/// it, then a one-line JSON summary (key, finish time, duration, HTML length), the cell's
/// rendered outputs, and the full JSON (state and structured outputs). A reused cell reads
/// the summary and the HTML only; the state is decoded when a later cell has to run on it.
/// A snapshot that does not match its header is corrupt and is never used. Files are
/// written atomically, so a killed run leaves the old snapshot or the new one.
public struct SnapshotStore: Sendable {
    public let root: URL
    static let magic = "nb-snapshot 2"

    public init(root: URL) { self.root = root }

    public func directory(for key: String) -> URL { root.appendingPathComponent(key, isDirectory: true) }
    public func file(for key: String) -> URL { directory(for: key).appendingPathComponent("snapshot.json") }

    public func save(_ snapshot: CellSnapshot) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        // Charts may hold NaN or infinite points (a diverged loss): JSON has no such numbers.
        encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        let html = Data(snapshot.outputsHTML.utf8)
        var payload = try encoder.encode(CellSnapshotSummary(
            key: snapshot.key, finishedAt: snapshot.finishedAt, duration: snapshot.duration, htmlBytes: html.count,
            model: snapshot.state.model?.headerDescription))
        payload.append(UInt8(ascii: "\n"))
        payload.append(html)
        payload.append(try encoder.encode(snapshot))
        var data = Data("\(Self.magic) sha256=\(SHA256Digest.hex(payload)) bytes=\(payload.count)\n".utf8)
        data.append(payload)
        try AtomicFile.write(data, to: file(for: snapshot.key))
    }

    public func load(key: String) -> Result<CellSnapshot, SnapshotProblem> {
        loadSummary(key: key).flatMap { summary, payload in
            guard var snapshot = try? Self.decoder.decode(CellSnapshot.self, from: payload), snapshot.key == key else {
                return .failure(.corrupt("unreadable payload"))
            }
            snapshot.outputsHTML = summary.outputsHTML
            return .success(snapshot)
        }
    }

    /// The summary and rendered outputs of a snapshot, and the bytes of its full JSON
    /// (for ``decodeState(_:)``), after checking length and checksum.
    public func loadSummary(key: String) -> Result<(summary: CellSnapshotSummary, payload: Data), SnapshotProblem> {
        verifiedPayload(key: key).flatMap { payload in
            guard let newline = payload.firstIndex(of: UInt8(ascii: "\n")),
                  var summary = try? Self.decoder.decode(CellSnapshotSummary.self, from: payload[..<newline]),
                  summary.key == key, summary.htmlBytes >= 0,
                  payload.endIndex - (newline + 1) >= summary.htmlBytes else {
                return .failure(.corrupt("unreadable summary"))
            }
            let htmlEnd = newline + 1 + summary.htmlBytes
            summary.outputsHTML = String(decoding: payload[(newline + 1)..<htmlEnd], as: UTF8.self)
            return .success((summary, Data(payload[htmlEnd...])))
        }
    }

    /// The state inside the full JSON returned by ``loadSummary(key:)``.
    public func decodeState(_ payload: Data) -> Result<SessionState, SnapshotProblem> {
        guard let full = try? Self.decoder.decode(CellSnapshot.self, from: payload) else { return .failure(.corrupt("unreadable state")) }
        return .success(full.state)
    }

    static var decoder: JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        decoder.nonConformingFloatDecodingStrategy = .convertFromString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return decoder
    }

    /// The bytes after the header line, once their length and SHA-256 match the header.
    func verifiedPayload(key: String) -> Result<Data, SnapshotProblem> {
        guard let data = FileManager.default.contents(atPath: file(for: key).path) else { return .failure(.missing) }
        guard let newline = data.firstIndex(of: UInt8(ascii: "\n")),
              let header = String(data: data[..<newline], encoding: .utf8) else {
            return .failure(.corrupt("no header line"))
        }
        let fields = header.split(separator: " ")
        guard header.hasPrefix(Self.magic), fields.count == 4,
              fields[2].hasPrefix("sha256="), fields[3].hasPrefix("bytes="),
              let bytes = Int(fields[3].dropFirst(6)) else {
            return .failure(.corrupt("bad header"))
        }
        let payload = data[(newline + 1)...]
        guard payload.count == bytes else { return .failure(.corrupt("expected \(bytes) bytes, found \(payload.count)")) }
        guard SHA256Digest.hex(Data(payload)) == fields[2].dropFirst(7) else { return .failure(.corrupt("checksum mismatch")) }
        return .success(Data(payload))
    }
}
