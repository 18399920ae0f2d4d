import Engine
import Foundation

/// How a cell ended in the latest run, as shown in the report and by `--list`.
public enum CellStatus: String, Codable, Sendable {
    case notRun = "not run"
    case running
    case ran
    case reused
    case failed
    case skipped
    case interrupted
}

/// One cell's line in the run manifest.
public struct CellRecord: Codable, Equatable, Sendable {
    public var index: Int
    public var name: String
    public var id: String?
    public var step: String
    public var line: Int
    public var key: String?
    public var status: CellStatus
    /// Seconds the step ran (this run, or originally for a reused cell).
    public var duration: Double?
    public var finishedAt: Date?
    /// The process's peak resident memory while this cell ran, in MiB (where Linux lets the
    /// runner reset the peak before each cell; nil for cells that did not run).
    public var peakMemoryMB: Double?
    /// What its key was made of (for `nb run --explain` to say what changed since).
    public var parts: CellKeyParts?
    /// Why it was reused, re-run, or not run.
    public var note: String?
    public var error: String?

    public init(index: Int, name: String, id: String?, step: String, line: Int, key: String?, status: CellStatus,
                duration: Double? = nil, finishedAt: Date? = nil, note: String? = nil, error: String? = nil) {
        (self.index, self.name, self.id, self.step, self.line, self.key, self.status) = (index, name, id, step, line, key, status)
        (self.duration, self.finishedAt, self.note, self.error) = (duration, finishedAt, note, error)
    }
}

/// The parts of a cell's key: its step and parameters, its input files, and the versions of
/// the session slots it reads (a version is the key of the cell that wrote the slot).
public struct CellKeyParts: Codable, Equatable, Sendable {
    public var step: String
    /// SHA-256 of the canonical parameters.
    public var parameters: String
    /// Input file path → SHA-256 ("missing" when absent).
    public var inputs: [String: String]
    /// Slot (as ``SessionSlot/description`` writes it) → version.
    public var reads: [String: String]
}

/// `outputs/.nb/<notebook>/manifest.json`: what the latest run did with every cell.
public struct RunManifest: Codable, Equatable, Sendable {
    public var notebook: String
    public var startedAt: Date
    public var finishedAt: Date?
    public var invocation: String
    public var cells: [CellRecord]

    public static func url(in stateRoot: URL) -> URL { stateRoot.appendingPathComponent("manifest.json") }

    public func save(in stateRoot: URL) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
        encoder.dateEncodingStrategy = .iso8601
        try AtomicFile.write(try encoder.encode(self), to: Self.url(in: stateRoot))
    }

    public static func load(from stateRoot: URL) -> RunManifest? {
        guard let data = FileManager.default.contents(atPath: url(in: stateRoot).path) else { return nil }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return try? decoder.decode(RunManifest.self, from: data)
    }
}
