import Engine
import Foundation
import Testing
@testable import Notebook

/// A fresh directory under the system temporary directory, removed by `remove()`.
private struct TemporaryDirectory {
    let url = FileManager.default.temporaryDirectory
        .appendingPathComponent("nb-state-tests-\(UUID().uuidString)", isDirectory: true)

    init() throws { try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true) }

    func remove() { try? FileManager.default.removeItem(at: url) }

    func files(in directory: URL? = nil) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: (directory ?? url).path).sorted()
    }
}

@Suite struct AtomicFileTests {
    @Test func createsParentsAndReplacesContent() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let target = dir.url.appendingPathComponent("a/b/c/state.json")
        try AtomicFile.write(Data("first".utf8), to: target)
        #expect(FileManager.default.contents(atPath: target.path) == Data("first".utf8))
        try AtomicFile.write("second, longer content", to: target)
        #expect(FileManager.default.contents(atPath: target.path) == Data("second, longer content".utf8))
        try AtomicFile.write(Data("3".utf8), to: target, durable: false)
        #expect(FileManager.default.contents(atPath: target.path) == Data("3".utf8))
        // No temporary files left beside the target.
        #expect(try dir.files(in: target.deletingLastPathComponent()) == ["state.json"])
    }

    @Test func emptyData() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let target = dir.url.appendingPathComponent("empty")
        try AtomicFile.write(Data(), to: target)
        #expect(FileManager.default.contents(atPath: target.path) == Data())
        #expect(try dir.files() == ["empty"])
    }

    @Test func honoursPermissions() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let secret = dir.url.appendingPathComponent("secret")
        try AtomicFile.write(Data("token".utf8), to: secret, permissions: 0o600)
        let attributes = try FileManager.default.attributesOfItem(atPath: secret.path)
        #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o600)
        // Rewriting with new permissions replaces the file, so they change too.
        try AtomicFile.write(Data("token2".utf8), to: secret, permissions: 0o400)
        let after = try FileManager.default.attributesOfItem(atPath: secret.path)
        #expect((after[.posixPermissions] as? NSNumber)?.intValue == 0o400)
        #expect(FileManager.default.contents(atPath: secret.path) == Data("token2".utf8))
        #expect(try dir.files() == ["secret"])
    }

    @Test func failureLeavesNoTemporaryFile() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        // The target is a non-empty directory: the rename fails.
        let target = dir.url.appendingPathComponent("occupied")
        try FileManager.default.createDirectory(at: target.appendingPathComponent("inside"), withIntermediateDirectories: true)
        #expect(throws: (any Error).self) { try AtomicFile.write(Data("x".utf8), to: target) }
        #expect(try dir.files() == ["occupied"])
    }
}

@Suite struct SnapshotStoreTests {
    static let date = Date(timeIntervalSince1970: 1_764_000_000) // whole seconds: ISO 8601 keeps no fraction

    static func sampleSnapshot(key: String = "k0123abcd") -> CellSnapshot {
        var state = SessionState()
        state.parameters = ["epochs": "20", "lr": "2e-3"]
        state.setDataset("train", DatasetReference(
            path: "/data/what_is_fhe.txt", displayPath: "data/what_is_fhe.txt",
            sha256: String(repeating: "ab", count: 32), format: .qa, exampleCount: 40))
        let chart = LineChart(title: "Lengths", xLabel: "example", yLabel: "chars", yScale: .log, series: [
            LineChart.Series(name: "question", values: [12, 40.5, 7]),
            LineChart.Series(name: "answer", points: [.init(1, 0.1), .init(2.5, 1e6)]),
        ])
        return CellSnapshot(
            key: key, cellName: "data", step: "load_data", finishedAt: date, duration: 0.125,
            state: state,
            outputs: [
                .text("hello <world> & \"quotes\" ✓"),
                .table(OutputTable(title: "First 2", columns: ["line", "text"], rows: [["1", "a"], ["3", "b\nc"]])),
                .table(OutputTable(columns: [], rows: [])),
                .metrics([Metric("examples", "40"), Metric("sha256", "abcd…")]),
                .chart(chart),
                .warning("careful"),
            ])
    }

    @Test func saveLoadRoundTrip() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let store = SnapshotStore(root: dir.url.appendingPathComponent("state"))
        let snapshot = Self.sampleSnapshot()
        try store.save(snapshot)
        #expect(store.file(for: snapshot.key).path.hasSuffix("state/k0123abcd/snapshot.json"))
        #expect(try store.load(key: snapshot.key).get() == snapshot)
        // Header line format.
        let data = try #require(FileManager.default.contents(atPath: store.file(for: snapshot.key).path))
        let header = String(decoding: data.prefix(while: { $0 != UInt8(ascii: "\n") }), as: UTF8.self)
        #expect(header.hasPrefix("nb-snapshot 2 sha256="))
        let payload = data.drop(while: { $0 != UInt8(ascii: "\n") }).dropFirst()
        #expect(header == "nb-snapshot 2 sha256=\(SHA256Digest.hex(Data(payload))) bytes=\(payload.count)")
        // The summary line, then the rendered outputs, then the full JSON.
        let summaryLine = String(decoding: payload.prefix(while: { $0 != UInt8(ascii: "\n") }), as: UTF8.self)
        #expect(summaryLine.contains("\"htmlBytes\":\(Data(snapshot.outputsHTML.utf8).count)"))
        #expect(String(decoding: payload, as: UTF8.self).contains(snapshot.outputsHTML))
        let summary = try store.loadSummary(key: snapshot.key).get().summary
        #expect(summary.outputsHTML == snapshot.outputsHTML && summary.duration == snapshot.duration)
        #expect(try store.decodeState(store.loadSummary(key: snapshot.key).get().payload).get() == snapshot.state)
        // Saving again replaces it.
        var second = snapshot
        second.duration = 9
        try store.save(second)
        #expect(try store.load(key: snapshot.key).get().duration == 9)
        #expect(try dir.files(in: store.directory(for: snapshot.key)) == ["snapshot.json"])
    }

    @Test func missingKey() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let store = SnapshotStore(root: dir.url)
        #expect(store.load(key: "nothing") == .failure(.missing))
        #expect(SnapshotProblem.missing.description == "no snapshot")
    }

    /// Saves the sample, lets `damage` change the file's bytes, and loads it again.
    private func loadDamaged(_ damage: (inout Data) -> Void) throws -> Result<CellSnapshot, SnapshotProblem> {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let store = SnapshotStore(root: dir.url)
        let snapshot = Self.sampleSnapshot()
        try store.save(snapshot)
        let url = store.file(for: snapshot.key)
        var data = try #require(FileManager.default.contents(atPath: url.path))
        damage(&data)
        try data.write(to: url)
        return store.load(key: snapshot.key)
    }

    @Test func flippedPayloadByteIsAChecksumMismatch() throws {
        let result = try loadDamaged { data in
            let newline = data.firstIndex(of: UInt8(ascii: "\n"))!
            let i = newline + 1 + (data.count - newline - 1) / 2
            data[i] ^= 0x01
        }
        #expect(result == .failure(.corrupt("checksum mismatch")))
        #expect(SnapshotProblem.corrupt("checksum mismatch").description == "snapshot corrupt (checksum mismatch)")
    }

    @Test func truncatedFileIsCorrupt() throws {
        var expectedBytes = 0
        let result = try loadDamaged { data in
            expectedBytes = data.count - (data.firstIndex(of: UInt8(ascii: "\n"))! + 1)
            data.removeLast(10)
        }
        #expect(result == .failure(.corrupt("expected \(expectedBytes) bytes, found \(expectedBytes - 10)")))
        #expect(try loadDamaged { $0 = $0.prefix(5) } == .failure(.corrupt("no header line")))
        #expect(try loadDamaged { $0 = Data() } == .failure(.corrupt("no header line")))
    }

    @Test func wrongHeaderIsCorrupt() throws {
        func replaceHeader(_ header: String) -> (inout Data) -> Void {
            { data in
                let newline = data.firstIndex(of: UInt8(ascii: "\n"))!
                data.replaceSubrange(0..<newline, with: Data(header.utf8))
            }
        }
        #expect(try loadDamaged(replaceHeader("nb-snapshot 3 sha256=00 bytes=10")) == .failure(.corrupt("bad header")))
        #expect(try loadDamaged(replaceHeader("nb-snapshot 1 sha256=00 bytes=10")) == .failure(.corrupt("bad header")))
        #expect(try loadDamaged(replaceHeader("hello")) == .failure(.corrupt("bad header")))
        #expect(try loadDamaged(replaceHeader("nb-snapshot 1 sha256=00")) == .failure(.corrupt("bad header")))
        #expect(try loadDamaged(replaceHeader("nb-snapshot 1 sha256=00 bytes=ten")) == .failure(.corrupt("bad header")))
    }

    @Test func consistentButUnreadablePayloadIsCorrupt() throws {
        let result = try loadDamaged { data in
            let payload = Data("{\"not\": \"a snapshot\"}".utf8)
            data = Data("nb-snapshot 2 sha256=\(SHA256Digest.hex(payload)) bytes=\(payload.count)\n".utf8) + payload
        }
        #expect(result == .failure(.corrupt("unreadable summary")))
    }

    @Test func snapshotUnderAnotherKeyIsNotUsed() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let store = SnapshotStore(root: dir.url)
        try store.save(Self.sampleSnapshot(key: "aaa"))
        try FileManager.default.createDirectory(at: store.directory(for: "bbb"), withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: store.file(for: "aaa"), to: store.file(for: "bbb"))
        #expect(store.load(key: "bbb") == .failure(.corrupt("unreadable summary")))
        #expect(try store.load(key: "aaa").get().key == "aaa")
    }

    @Test func chartWithNaNCanBeSnapshotted() throws {
        // LineChart documents NaN points as allowed (they break the line), but JSONEncoder
        // throws on non-finite Doubles, so SnapshotStore.save fails for such a chart.
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let store = SnapshotStore(root: dir.url)
        var snapshot = Self.sampleSnapshot()
        snapshot.outputs = [.chart(LineChart(title: "loss", xLabel: "step", yLabel: "loss",
                                             series: [LineChart.Series(name: "train", values: [2.5, .nan, 1.5])]))]
        #expect(throws: Never.self) {
            try store.save(snapshot)
            let loaded = try store.load(key: snapshot.key).get()
            guard case .chart(let chart)? = loaded.outputs.first else {
                Issue.record("no chart")
                return
            }
            #expect(chart.series[0].points[1].y.isNaN)
            #expect(chart.series[0].points[2].y == 1.5)
        }
    }
}

@Suite struct RunManifestTests {
    @Test func saveLoadRoundTrip() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let started = Date(timeIntervalSince1970: 1_764_000_000)
        let manifest = RunManifest(
            notebook: "notebooks/finetune.md", startedAt: started, finishedAt: started.addingTimeInterval(65),
            invocation: "nb notebooks/finetune.md --param epochs=2",
            cells: [
                CellRecord(index: 0, name: "data", id: "data", step: "load_data", line: 12, key: "abc123",
                           status: .ran, duration: 0.5, finishedAt: started.addingTimeInterval(1), note: nil, error: nil),
                CellRecord(index: 1, name: "2", id: nil, step: "load_data", line: 30, key: nil,
                           status: .failed, duration: nil, finishedAt: nil, note: "re-run: input changed",
                           error: "nb.md:31: key 'show': expected an integer, found 'many'"),
                CellRecord(index: 2, name: "3", id: nil, step: "load_data", line: 40, key: nil,
                           status: .notRun, duration: nil, finishedAt: nil, note: nil, error: nil),
            ])
        #expect(RunManifest.load(from: dir.url) == nil)
        try manifest.save(in: dir.url)
        #expect(RunManifest.load(from: dir.url) == manifest)
        #expect(RunManifest.url(in: dir.url).lastPathComponent == "manifest.json")
        let text = try String(contentsOf: RunManifest.url(in: dir.url), encoding: .utf8)
        #expect(text.contains("\"status\" : \"not run\""))
        #expect(text.contains("\"startedAt\" : \"2025-11-24T16:00:00Z\""))
        #expect(try dir.files() == ["manifest.json"])
    }

    @Test func unreadableManifestIsNil() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        try Data("{not json".utf8).write(to: RunManifest.url(in: dir.url))
        #expect(RunManifest.load(from: dir.url) == nil)
    }
}

@Suite struct FormattingTests {
    @Test func htmlEscapesAllFiveCharacters() {
        #expect(HTML.escape("&") == "&amp;")
        #expect(HTML.escape("<") == "&lt;")
        #expect(HTML.escape(">") == "&gt;")
        #expect(HTML.escape("\"") == "&quot;")
        #expect(HTML.escape("'") == "&#39;")
        #expect(HTML.escape("<a href=\"x?a=1&b=2\">Tom's</a>")
                == "&lt;a href=&quot;x?a=1&amp;b=2&quot;&gt;Tom&#39;s&lt;/a&gt;")
        #expect(HTML.escape("plain ✓ text\n") == "plain ✓ text\n")
        #expect(HTML.escape("&amp;") == "&amp;amp;")
        #expect(HTML.escape("") == "")
    }

    @Test func integers() {
        #expect(Format.integer(0) == "0")
        #expect(Format.integer(7) == "7")
        #expect(Format.integer(999) == "999")
        #expect(Format.integer(1000) == "1,000")
        #expect(Format.integer(12_345) == "12,345")
        #expect(Format.integer(123_456) == "123,456")
        #expect(Format.integer(1_234_567) == "1,234,567")
        #expect(Format.integer(-1234) == "-1,234")
        #expect(Format.integer(-999) == "-999")
    }

    @Test func durations() {
        #expect(Format.duration(0) == "0.00 s")
        #expect(Format.duration(0.42) == "0.42 s")
        #expect(Format.duration(9.5) == "9.50 s")
        #expect(Format.duration(12.34) == "12.3 s")
        #expect(Format.duration(59.9) == "59.9 s")
        #expect(Format.duration(60) == "1 min 00 s")
        #expect(Format.duration(245) == "4 min 05 s")
        #expect(Format.duration(3599.4) == "59 min 59 s")
        #expect(Format.duration(3600) == "1 h 00 min")
        #expect(Format.duration(3720) == "1 h 02 min")
        #expect(Format.duration(90_000) == "25 h 00 min")
    }

    @Test func numbers() {
        #expect(Format.number(3.14159) == "3.14")
        #expect(Format.number(3.14159, decimals: 1) == "3.1")
        #expect(Format.number(2.5, decimals: 0) == "2")
        #expect(Format.number(-0.125, decimals: 3) == "-0.125")
        #expect(Format.number(1234.5, decimals: 1) == "1234.5")
    }
}
