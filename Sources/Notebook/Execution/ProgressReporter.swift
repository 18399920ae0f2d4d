import Foundation

/// A progress line for long steps.
///
/// On a terminal it redraws one line in place (`\r`), at most ten times a second; when
/// stderr is a file or a pipe it prints a plain line every `interval` seconds and at the
/// end, so CI logs stay short.
public final class ProgressReporter {
    public let label: String
    public let total: Int
    let interactive: Bool
    let interval: Double
    let write: (String) -> Void
    let clock: () -> Double
    let start: Double
    private var lastDraw: Double = -.infinity
    private var finished = false
    private var lastPrinted = -1

    public init(label: String, total: Int, interactive: Bool, interval: Double = 5,
                write: @escaping (String) -> Void, clock: @escaping () -> Double = ProgressReporter.monotonicSeconds) {
        self.label = label
        self.total = max(total, 0)
        self.interactive = interactive
        self.interval = interval
        self.write = write
        self.clock = clock
        self.start = clock()
    }

    /// `done` units finished; `metrics` is appended to the line (e.g. "loss 2.31").
    public func update(_ done: Int, metrics: String = "") {
        let now = clock()
        let due = interactive ? now - lastDraw >= 0.1 : now - lastDraw >= interval
        let complete = total > 0 && done >= total
        guard due || complete, !finished else { return }
        lastDraw = now
        lastPrinted = done
        let line = render(done: done, now: now, metrics: metrics)
        write(interactive ? "\r\u{1B}[2K" + line : line + "\n")
    }

    /// Ends the progress line.
    public func finish(metrics: String = "") {
        guard !finished else { return }
        finished = true
        // A plain log already holds the completed line when update(total) printed it.
        if !interactive && lastPrinted == total && metrics.isEmpty { return }
        let line = render(done: total, now: clock(), metrics: metrics)
        write(interactive ? "\r\u{1B}[2K" + line + "\n" : line + "\n")
    }

    func render(done: Int, now: Double, metrics: String) -> String {
        let elapsed = now - start
        var parts = ["  \(label) \(done)/\(total)"]
        if total > 0 { parts.append(String(format: "%3.0f%%", 100 * Double(min(done, total)) / Double(total))) }
        parts.append("elapsed \(Self.clockString(elapsed))")
        if done > 0 && done < total {
            parts.append("ETA \(Self.clockString(elapsed / Double(done) * Double(total - done)))")
        }
        if !metrics.isEmpty { parts.append(metrics) }
        return parts.joined(separator: "  ")
    }

    /// `m:ss`, or `h:mm:ss` past an hour.
    static func clockString(_ seconds: Double) -> String {
        let s = Int(seconds.rounded())
        if s >= 3600 { return String(format: "%d:%02d:%02d", s / 3600, (s % 3600) / 60, s % 60) }
        return String(format: "%d:%02d", s / 60, s % 60)
    }

    public static func monotonicSeconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }
}
