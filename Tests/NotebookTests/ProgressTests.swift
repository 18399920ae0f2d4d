import Foundation
import Testing
@testable import Notebook

/// A clock the test moves by hand and a sink that keeps every write.
private final class FakeTerminal {
    var now: Double = 1000
    var writes: [String] = []

    func reporter(label: String = "train", total: Int, interactive: Bool, interval: Double = 5) -> ProgressReporter {
        ProgressReporter(label: label, total: total, interactive: interactive, interval: interval,
                         write: { [unowned self] in self.writes.append($0) }, clock: { [unowned self] in self.now })
    }
}

private let redraw = "\r\u{1B}[2K"

@Suite struct ProgressReporterTests {
    @Test func interactiveRedrawsInPlaceAtMostTenTimesASecond() {
        let t = FakeTerminal()
        let p = t.reporter(total: 100, interactive: true)
        p.update(1)
        #expect(t.writes.count == 1)
        #expect(t.writes[0].hasPrefix(redraw))
        #expect(!t.writes[0].contains("\n"))

        t.now += 0.05
        p.update(2)
        #expect(t.writes.count == 1, "redraw after 0.05 s")
        t.now += 0.025
        p.update(3)
        #expect(t.writes.count == 1, "redraw after 0.075 s")
        t.now += 0.125
        p.update(4)
        #expect(t.writes.count == 2)
        #expect(t.writes[1] == redraw + "  train 4/100    4%  elapsed 0:00  ETA 0:05")

        // Many updates within one tenth of a second give no redraw.
        for i in 5..<50 {
            t.now += 0.001
            p.update(i)
        }
        #expect(t.writes.count == 2)
        t.now += 1
        p.update(50)
        #expect(t.writes.count == 3)
        #expect(t.writes.allSatisfy { $0.hasPrefix(redraw) && !$0.hasSuffix("\n") })
    }

    @Test func interactiveAlwaysDrawsCompletion() {
        let t = FakeTerminal()
        let p = t.reporter(total: 10, interactive: true)
        p.update(9)
        t.now += 0.01
        p.update(10)
        #expect(t.writes.count == 2)
        #expect(t.writes[1].hasPrefix(redraw + "  train 10/10  100%"))
    }

    @Test func nonInteractivePrintsEveryIntervalAndAtCompletion() {
        let t = FakeTerminal()
        let p = t.reporter(total: 20, interactive: false, interval: 5)
        for done in 1...20 {
            p.update(done)
            t.now += 1
        }
        // At t = 0 (first update), t = 5 and t = 10, t = 15, then done == total at t = 19.
        #expect(t.writes.count == 5)
        #expect(t.writes.allSatisfy { $0.hasSuffix("\n") && !$0.contains("\r") && !$0.contains("\u{1B}") })
        #expect(t.writes.map { $0.split(separator: " ").first { $0.contains("/") } ?? "" }
                == ["1/20", "6/20", "11/20", "16/20", "20/20"])
        #expect(t.writes.last == "  train 20/20  100%  elapsed 0:19\n")
    }

    @Test func etaAndPercentage() {
        let t = FakeTerminal()
        let p = t.reporter(label: "epoch", total: 200, interactive: false, interval: 60)
        t.now += 30
        p.update(50, metrics: "loss 2.31")
        // 30 s for 50 of 200: 90 s to go.
        #expect(t.writes == ["  epoch 50/200   25%  elapsed 0:30  ETA 1:30  loss 2.31\n"])

        t.now += 3600 - 30 + 5
        p.update(150)
        // 3605 s for 150: 1201.67 s for the last 50.
        #expect(t.writes.last == "  epoch 150/200   75%  elapsed 1:00:05  ETA 20:02\n")
    }

    @Test func noETAAtZeroOrWhenDone() {
        let t = FakeTerminal()
        let p = t.reporter(total: 4, interactive: false)
        t.now += 2
        p.update(0)
        #expect(t.writes == ["  train 0/4    0%  elapsed 0:02\n"])
        p.update(4)
        #expect(t.writes.last == "  train 4/4  100%  elapsed 0:02\n")
    }

    @Test func unknownTotalShowsNoPercentage() {
        let t = FakeTerminal()
        let p = t.reporter(total: 0, interactive: false)
        p.finish(metrics: "done")
        #expect(t.writes == ["  train 0/0  elapsed 0:00  done\n"])
        let negative = t.reporter(total: -3, interactive: false)
        #expect(negative.total == 0)
    }

    @Test func finishPrintsOnceAndStopsUpdates() {
        let t = FakeTerminal()
        let p = t.reporter(total: 10, interactive: false)
        p.update(3)
        #expect(t.writes.count == 1)
        t.now += 7
        p.finish(metrics: "ok")
        p.finish(metrics: "again")
        t.now += 100
        p.update(10)
        #expect(t.writes.count == 2)
        #expect(t.writes[1] == "  train 10/10  100%  elapsed 0:07  ok\n")
    }

    @Test func interactiveFinishEndsTheLine() {
        let t = FakeTerminal()
        let p = t.reporter(total: 10, interactive: true)
        p.update(5)
        t.now += 65
        p.finish()
        p.finish()
        #expect(t.writes.count == 2)
        #expect(t.writes[1] == redraw + "  train 10/10  100%  elapsed 1:05\n")
    }

    @Test func clockStrings() {
        #expect(ProgressReporter.clockString(0) == "0:00")
        #expect(ProgressReporter.clockString(0.4) == "0:00")
        #expect(ProgressReporter.clockString(9) == "0:09")
        #expect(ProgressReporter.clockString(59.4) == "0:59")
        #expect(ProgressReporter.clockString(59.5) == "1:00")
        #expect(ProgressReporter.clockString(61) == "1:01")
        #expect(ProgressReporter.clockString(3599) == "59:59")
        #expect(ProgressReporter.clockString(3600) == "1:00:00")
        #expect(ProgressReporter.clockString(3725) == "1:02:05")
        #expect(ProgressReporter.clockString(36_000 + 59) == "10:00:59")
    }

    @Test func monotonicClockAdvances() {
        let a = ProgressReporter.monotonicSeconds()
        let b = ProgressReporter.monotonicSeconds()
        #expect(a > 0 && b >= a)
    }
}
