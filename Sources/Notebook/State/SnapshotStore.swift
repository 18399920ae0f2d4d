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
}

/// A snapshot without its state.
public struct CellSnapshotSummary: Decodable, Sendable {
    public var key: String
    public var finishedAt: Date
    public var duration: Double
    public var outputs: [CellOutput]
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
/// Each file starts with a header line `nb-snapshot 1 sha256=<hex> bytes=<n>` followed by
/// the JSON payload; a snapshot whose payload does not match its header is corrupt and is
/// never used. Files are written atomically, so a killed run leaves the old snapshot or
/// the new one.
public struct SnapshotStore: Sendable {
    public let root: URL
    static let magic = "nb-snapshot 1"

    public init(root: URL) { self.root = root }

    public func directory(for key: String) -> URL { root.appendingPathComponent(key, isDirectory: true) }
    public func file(for key: String) -> URL { directory(for: key).appendingPathComponent("snapshot.json") }

    public func save(_ snapshot: CellSnapshot) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        // Charts may hold NaN or infinite points (a diverged loss): JSON has no such numbers.
        encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        let payload = try encoder.encode(snapshot)
        var data = Data("\(Self.magic) sha256=\(SHA256Digest.hex(payload)) bytes=\(payload.count)\n".utf8)
        data.append(payload)
        try AtomicFile.write(data, to: file(for: snapshot.key))
    }

    public func load(key: String) -> Result<CellSnapshot, SnapshotProblem> {
        verifiedPayload(key: key).flatMap { payload in
            guard let snapshot = try? Self.decoder.decode(CellSnapshot.self, from: payload), snapshot.key == key else {
                return .failure(.corrupt("unreadable payload"))
            }
            return .success(snapshot)
        }
    }

    /// What the report needs of a reused cell, without decoding its state (which grows with
    /// the notebook): the state is decoded only when a later cell has to run on it.
    public func loadSummary(key: String) -> Result<(summary: CellSnapshotSummary, payload: Data), SnapshotProblem> {
        verifiedPayload(key: key).flatMap { payload in
            guard let summary = try? Self.decoder.decode(CellSnapshotSummary.self, from: payload), summary.key == key else {
                return .failure(.corrupt("unreadable payload"))
            }
            return .success((summary, payload))
        }
    }

    /// The state inside a payload returned by ``loadSummary(key:)``.
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

    /// The payload bytes after checking the header's length and SHA-256.
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
