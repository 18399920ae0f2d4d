import Engine
import FHE
import Foundation

/// The report of an encrypted run: parameters and their security, bytes on the wire and
/// where the time went.
enum FHEReport {
    static func bytes(_ n: Double) -> String {
        if n >= 1e9 { return String(format: "%.2f GB", n / 1e9) }
        if n >= 1e6 { return String(format: "%.1f MB", n / 1e6) }
        if n >= 1e3 { return String(format: "%.1f kB", n / 1e3) }
        return String(format: "%.0f B", n)
    }

    /// The masked protocol's one-time hints of a run, for its metrics.
    static func hintMetric(_ stats: FHEStatistics) -> Metric {
        Metric("one-time hints", "\(Format.integer(stats.hints)) stream\(stats.hints == 1 ? "" : "s") (the server's product of each stream's fixed masks, "
            + "kept in the mask store): \(bytes(Double(stats.hintBytes))), \(Format.duration(stats.hintSeconds))")
    }

    /// Stops the step when an encrypted call failed (nothing falls back to clear computation).
    static func check(_ backend: LinearBackend?) throws {
        if let b = backend as? EncryptedLinearBackend, let failure = b.failure { throw StepFailure(key: "mode", failure.description) }
    }

    /// `stats`: the counters of this cell; `steps`: optimizer steps (or passes) they cover;
    /// `seconds`: the cell's wall time over those steps (for the clear work's share).
    static func emit(_ backend: LinearBackend?, stats: FHEStatistics, steps: Int, stepName: String, seconds: Double, context: StepContext) {
        guard let b = backend as? EncryptedLinearBackend, stats.calls > 0 || stats.onlineCalls > 0 else { return }
        let perStep = 1 / Double(max(steps, 1))
        let masked = b.productProtocol == .masked
        let fhe = stats.offlineSeconds + stats.hintSeconds + stats.onlineSeconds
        let clear = max(0, seconds - fhe)
        func share(_ x: Double) -> String { seconds > 0 ? String(format: "%@ (%.0f %%)", Format.duration(x * perStep), 100 * x / seconds) : "–" }
        let http = b.transport as? HTTPTransport
        var where_: [Metric] = []
        if let http {
            where_.append(Metric("server", "\(http.baseURL.absoluteString) (HTTP; \(http.retries) request\(http.retries == 1 ? "" : "s") retried so far)"))
        }
        if masked {
            let online = Double(stats.onlineBytesSent + stats.onlineBytesReceived)
            context.emit(.metrics(where_ + [
                Metric("protocol", "masked: offline pads (HE, full rings) + online one-time-padded products"),
                Metric("online products", Format.integer(stats.onlineCalls)),
                Metric("online bytes per \(stepName)", "\(bytes(Double(stats.onlineBytesSent) * perStep)) sent, \(bytes(Double(stats.onlineBytesReceived) * perStep)) received"),
                Metric("online bytes per value", String(format: "%.2f in, %.2f out", Double(stats.onlineBytesSent) / Double(max(stats.inputValues, 1)),
                                                          Double(stats.onlineBytesReceived) / Double(max(stats.outputValues, 1)))),
                Metric("offline products (HE)", "\(Format.integer(stats.calls)) (\(Format.integer(stats.offlineRows)) pad rows)"),
                Metric("offline bytes", "\(bytes(Double(stats.bytesSent))) sent, \(bytes(Double(stats.bytesReceived))) received"
                    + (online > 0 ? String(format: " (%.1f× the online bytes)", Double(stats.bytesSent + stats.bytesReceived) / online) : "")),
            ] + (stats.hints > 0 ? [FHEReport.hintMetric(stats)] : [])))
            context.emit(.table(OutputTable(
                title: "Time per \(stepName), encrypted mode (masked protocol)",
                columns: ["offline (HE: encrypt, server, decrypt; store)", "one-time hints", "online client (pad, unpad)",
                          http == nil ? "online server product" : "online server + network", "clear work (client)", "total"],
                rows: [[share(stats.offlineSeconds), share(stats.hintSeconds), share(stats.onlineClientSeconds), share(stats.onlineServerSeconds), share(clear),
                        Format.duration(seconds * perStep)]])))
        } else {
            context.emit(.metrics(where_ + [
                Metric("protocol", "he: every call encrypted whole"),
                Metric("encrypted products", Format.integer(stats.calls)),
                Metric("sent per \(stepName)", bytes(Double(stats.bytesSent) * perStep)),
                Metric("received per \(stepName)", bytes(Double(stats.bytesReceived) * perStep)),
                Metric("bytes per input value", String(format: "%.2f", Double(stats.bytesSent) / Double(max(stats.inputValues, 1)))),
                Metric("bytes per output value", String(format: "%.2f", Double(stats.bytesReceived) / Double(max(stats.outputValues, 1)))),
            ]))
            context.emit(.table(OutputTable(
                title: "Time per \(stepName), encrypted mode",
                columns: ["client encrypt", http == nil ? "server product" : "server product + network", "client decrypt", "clear work (client)", "total"],
                rows: [[share(stats.encryptSeconds), share(stats.serverSeconds), share(stats.decryptSeconds), share(clear),
                        Format.duration(seconds * perStep)]])))
        }
        var lines: [String] = []
        for name in stats.parameterSets {
            if let p = FHEParameters.all.first(where: { $0.name == name }) { lines.append(p.description) }
        }
        if let plan = b.lastPlan {
            lines.append("\(masked ? "Last offline call" : "Last call"): \(plan.description). Each call's plan keeps the failure probability per value at or below 2^-64 "
                + "(formula: the noise's variance from σ, the rounding steps and the weights' largest row norm).")
        }
        if masked {
            lines.append("Online, the server saw only x − r mod 2^k for one-time pads r (uniform, each used once: the mask store records its use on disk before a row is sent); "
                + "offline, only the bodies of the pads' ciphertexts, each ring under a fresh secret with its stream's fixed public masks, and once per stream "
                + "a request for the product of those masks (the hint; a public seed, no data). The pads' seeds and the secrets never left the client.")
            if let store = b.maskStore, !store.notices.isEmpty { lines.append("Mask store: " + store.notices.joined(separator: "; ")) }
        } else {
            lines.append("The server saw only ciphertexts: seeds, rounded bodies and the products' masks and bodies; "
                + "the secret key (mode 0600, \(http == nil ? "under the notebook's state directory" : "in the client's folder")) never left the client.")
        }
        context.emit(.text(lines.joined(separator: "\n")))
    }
}
