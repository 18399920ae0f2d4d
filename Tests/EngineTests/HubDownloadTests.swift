import Foundation
import Testing
@testable import Engine

/// Downloads from a stand-in for the Hugging Face hub (Fixtures/hub/mock_hub.py, Python's
/// http.server and hashlib: an independent implementation of the checksums) serving the
/// tiny GPT-2 of the golden tests: the downloaded model gives the reference logits, and
/// bad downloads are refused without leaving files behind.
@Suite(.serialized) struct HubDownloadTests {
    static let fixtures = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!

    /// Starts the mock hub over a repository `openai-community/gpt2` holding the tiny GPT-2.
    final class MockHub {
        let process = Process()
        let root: URL
        let endpoint: URL

        init(mode: String) throws {
            root = FileManager.default.temporaryDirectory.appendingPathComponent("nb-hub-\(UUID().uuidString)")
            let repo = root.appendingPathComponent("openai-community/gpt2")
            try FileManager.default.createDirectory(at: repo, withIntermediateDirectories: true)
            for file in ["config.json", "model.safetensors"] {
                try FileManager.default.copyItem(at: HubDownloadTests.fixtures.appendingPathComponent("reference/tiny-gpt2/\(file)"),
                                                 to: repo.appendingPathComponent(file))
            }
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = ["python3", HubDownloadTests.fixtures.appendingPathComponent("hub/mock_hub.py").path, root.path, mode]
            let out = Pipe()
            process.standardOutput = out
            try process.run()
            var line = Data()
            while !line.contains(UInt8(ascii: "\n")) {
                let chunk = out.fileHandleForReading.availableData
                if chunk.isEmpty { break }
                line += chunk
            }
            let text = String(decoding: line, as: UTF8.self)
            let port = try #require(text.split(separator: " ").last.flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) },
                                    "mock hub did not start: \(text)")
            endpoint = URL(string: "http://127.0.0.1:\(port)")!
        }

        /// SIGKILL: children of the test runner may inherit SIGTERM blocked.
        func stop() {
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }

        deinit {
            stop()
            try? FileManager.default.removeItem(at: root)
        }
    }

    static func scratch() -> URL {
        FileManager.default.temporaryDirectory.appendingPathComponent("nb-hub-dl-\(UUID().uuidString)")
    }

    @Test func downloadsAndChecksTheModel() throws {
        let hub = try MockHub(mode: "good")
        let target = Self.scratch()
        defer { try? FileManager.default.removeItem(at: target) }
        try HubDownload.fetch(repo: "openai-community/gpt2", files: ["config.json", "model.safetensors"], into: target, endpoint: hub.endpoint)
        for file in ["config.json", "model.safetensors"] {
            let a = try Data(contentsOf: target.appendingPathComponent(file))
            let b = try Data(contentsOf: hub.root.appendingPathComponent("openai-community/gpt2/\(file)"))
            #expect(a == b, "\(file) differs from the served file")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: target.path).sorted() == ["config.json", "model.safetensors"],
                "no temporary files left")
        // The download is the model of the golden test.
        let config = try JSONDecoder().decode(GPT2Config.self, from: Data(contentsOf: target.appendingPathComponent("config.json")))
        let model = try GPT2Model.load(from: try SafeTensorsCheckpoint(directory: target), config: config, file: target.path)
        struct Logits: Decodable { struct S: Decodable { var ids: [Int]; var logits: [[Float]] }; var sequences: [S] }
        let f = try JSONDecoder().decode(Logits.self, from: Data(contentsOf: Self.fixtures.appendingPathComponent("reference/tiny-gpt2-logits.json")))
        let s = try #require(f.sequences.first)
        model.compactDecode = false
        let ours = model.forward(s.ids, cache: model.makeCache(capacity: s.ids.count), allPositions: true)
        let reference = s.logits.flatMap { $0 }
        let range = reference.max()! - reference.min()!
        let worst = zip(ours, reference).map { abs($0 - $1) }.max()!
        #expect(worst / range < 1e-4, "downloaded model: max error \(worst / range) of the logit range")
        // A second fetch finds the files and downloads nothing (the hub is gone).
        hub.stop()
        try HubDownload.fetch(repo: "openai-community/gpt2", files: ["config.json", "model.safetensors"], into: target, endpoint: hub.endpoint)
    }

    @Test(arguments: ["corrupt", "noetag", "missing"])
    func badDownloadsAreRefusedAndNotKept(_ mode: String) throws {
        let hub = try MockHub(mode: mode)
        let target = Self.scratch()
        defer { try? FileManager.default.removeItem(at: target) }
        for file in ["config.json", "model.safetensors"] {
            var message = ""
            do {
                try HubDownload.fetch(repo: "openai-community/gpt2", files: [file], into: target, endpoint: hub.endpoint)
                Issue.record("\(mode): \(file) was accepted")
            } catch { message = error.description }
            let expected = ["corrupt": file.hasSuffix(".safetensors") ? "SHA-256" : "SHA-1", "noetag": "no checksum", "missing": "HTTP 404"][mode]!
            #expect(message.contains(expected) && message.contains(file), "\(mode) \(file): \(message)")
        }
        let left = (try? FileManager.default.contentsOfDirectory(atPath: target.path)) ?? []
        #expect(left.isEmpty, "\(mode): files left behind: \(left)")
    }

    @Test func anUnreachableHubIsAnError() throws {
        #expect(throws: HubDownload.Failure.self) {
            try HubDownload.fetch(repo: "openai-community/gpt2", files: ["config.json"], into: Self.scratch(),
                                  endpoint: URL(string: "http://127.0.0.1:9")!, timeout: 5)
        }
    }

    @Test func gitBlobIdIsGits() throws {
        // git hash-object of "hello\n" is ce013625030ba8dba906f756967f9e9ca394464a.
        let file = Self.scratch()
        try Data("hello\n".utf8).write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }
        #expect(try HubDownload.gitBlobSHA1(file) == "ce013625030ba8dba906f756967f9e9ca394464a")
    }
}
