import Engine
import Foundation

/// `nb fill_masks`: the masked protocol's offline phase ahead of time — encrypted pads in full
/// rings for `tokens` tokens of every remote module and direction, their products decrypted
/// into the client's mask store (on disk, beside the key). Training, evaluation and generation
/// then run their online products at once, and fill the store on demand when it runs out.
///
/// ```nb fill_masks
/// tokens: 2048
/// mode: execute            # or remote, with server: and token_file:
/// directions: both         # forward (generation only) | both
/// ```
public enum FillMasksStep: Step {
    public static let name = "fill_masks"
    public static func dataflow(_ _: Parameters) -> StepDataflow { StepDataflow(reads: [.model, .adapter, .hybrid, .deployment], writes: []) }
    public static let summary = "offline phase of the masked protocol: fill the mask store for N tokens"

    public enum Directions: String, Codable, CaseIterable, Sendable { case both, forward }

    public struct Parameters: StepParameters {
        public enum Keys: String, CodingKey, CaseIterable { case tokens, mode, server, tokenFile = "token_file", directions }
        public typealias CodingKeys = Keys
        public var tokens: Int
        public var mode: ExecutionMode
        public var server: String?
        public var tokenFile: String?
        public var directions: Directions

        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: Keys.self)
            tokens = try c.decode(Int.self, forKey: .tokens)
            mode = try c.decodeChoice(ExecutionMode.self, forKey: .mode) ?? .execute
            server = try c.decodeIfPresent(String.self, forKey: .server)
            tokenFile = try c.decodeIfPresent(String.self, forKey: .tokenFile)
            directions = try c.decodeChoice(Directions.self, forKey: .directions) ?? .both
        }

        public func validate() throws(ParameterError) {
            if !(1...1_048_576).contains(tokens) { throw ParameterError("tokens", "\(tokens) is out of range 1...1048576") }
            if !mode.encrypted { throw ParameterError("mode", "the mask store serves the encrypted modes: execute or remote, not \(mode.rawValue)") }
            try RemoteTarget.validate(server: server, mode: mode)
        }
    }

    public static func run(_ p: Parameters, context: StepContext) throws {
        guard let backend = try context.backend(p.mode, server: p.server, tokenFile: p.tokenFile, protocol: .masked) as? EncryptedLinearBackend,
              let store = backend.maskStore else { throw StepFailure(key: "mode", "no encrypted backend for mode \(p.mode.rawValue)") }
        let before = backend.statistics
        var progress: ProgressReporter?
        let started = ProcessInfo.processInfo.systemUptime
        do {
            try backend.prefillMasks(rows: p.tokens, directions: p.directions == .both ? [.forward, .backward] : [.forward]) { done, total in
                if progress == nil { progress = context.progress("fill_masks", total: max(total, 1)) }
                progress?.update(done, metrics: "\(done) of \(total) segments")
            }
        } catch {
            progress?.finish()
            throw StepFailure(key: "mode", "\(error)")
        }
        progress?.finish()
        let stats = backend.statistics.since(before)
        let seconds = ProcessInfo.processInfo.systemUptime - started
        let streams = backend.maskStreamCount / (p.directions == .both ? 1 : 2)
        context.emit(.metrics([
            Metric("tokens ready", Format.integer(p.tokens) + " per module and direction (\(streams) stream\(streams == 1 ? "" : "s"))"),
            Metric("offline products (HE, full rings)", "\(Format.integer(stats.calls)) (\(Format.integer(stats.offlineRows)) pad rows)"),
            Metric("offline time", Format.duration(seconds) + (stats.offlineRows > 0
                ? String(format: " (%.2f ms per token, the one-time hints apart)", 1000 * stats.offlineSeconds / (Double(stats.offlineRows) / Double(max(streams, 1)))) : "")),
            Metric("offline bytes", "\(FHEReport.bytes(Double(stats.bytesSent))) sent, \(FHEReport.bytes(Double(stats.bytesReceived))) received"),
        ] + (stats.hints > 0 ? [FHEReport.hintMetric(stats)] : []) + [
            Metric("store", context.display(store.directory)),
        ]))
        var lines = ["The pads are one-time: each row of the store is recorded as used on disk before it is sent, and never handed out again."]
        if let plan = backend.lastPlan { lines.append("Offline plan (last call): \(plan.description); failure probability per value ≤ 2^-64.") }
        if !store.notices.isEmpty { lines.append("Mask store: " + store.notices.joined(separator: "; ")) }
        context.emit(.text(lines.joined(separator: "\n")))
    }
}
