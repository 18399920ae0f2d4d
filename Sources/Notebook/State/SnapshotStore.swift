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
        let payload = try encoder.encode(snapshot)
        var data = Data("\(Self.magic) sha256=\(SHA256Digest.hex(payload)) bytes=\(payload.count)\n".utf8)
        data.append(payload)
        try AtomicFile.write(data, to: file(for: snapshot.key))
    }

    public func load(key: String) -> Result<CellSnapshot, SnapshotProblem> {
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
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        guard let snapshot = try? decoder.decode(CellSnapshot.self, from: Data(payload)), snapshot.key == key else {
            return .failure(.corrupt("unreadable payload"))
        }
        return .success(snapshot)
    }
}
