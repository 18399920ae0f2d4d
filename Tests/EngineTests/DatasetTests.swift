import Foundation
import Testing
@testable import Engine

/// A fresh directory under the system temporary directory, removed by `remove()`.
private struct TemporaryDirectory {
    let url = FileManager.default.temporaryDirectory
        .appendingPathComponent("nb-engine-tests-\(UUID().uuidString)", isDirectory: true)

    init() throws { try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true) }

    func remove() { try? FileManager.default.removeItem(at: url) }
}

/// The error a throwing parse produced, or nil when it succeeded.
private func datasetError(_ body: () throws(DatasetError) -> Dataset) -> DatasetError? {
    do { _ = try body(); return nil } catch { return error }
}

@Suite struct QuestionAnswerParsingTests {
    @Test func twoPairsWithLineNumbers() throws {
        let d = try Dataset.parse("Q1?\nA1.\n  Q2?  \nA2.", format: .qa, path: "f.txt")
        #expect(d.format == .qa)
        #expect(d.examples == [
            Example(prompt: "Q1?", text: "A1.", line: 1),
            Example(prompt: "Q2?", text: "A2.", line: 3),
        ])
    }

    @Test func trailingNewlinesAreNotExamples() throws {
        let one = try Dataset.parse("Q\nA\n", format: .qa, path: "f.txt")
        let several = try Dataset.parse("Q\nA\n\n  \n\n", format: .qa, path: "f.txt")
        #expect(one.examples == [Example(prompt: "Q", text: "A", line: 1)])
        #expect(several == one)
    }

    @Test func crlfLineEndings() {
        // "\r\n" is one Character in Swift: splitting on "\n" alone would see one line.
        #expect(throws: Never.self) {
            let d = try Dataset.parse("Q1\r\nA1\r\nQ2\r\nA2\r\n", format: .qa, path: "f.txt")
            #expect(d.examples == [
                Example(prompt: "Q1", text: "A1", line: 1),
                Example(prompt: "Q2", text: "A2", line: 3),
            ])
        }
    }

    @Test func emptyLineInTheMiddle() {
        let error = datasetError { () throws(DatasetError) in try Dataset.parse("Q1\nA1\n\nQ2\nA2\n", format: .qa, path: "f.txt") }
        #expect(error == .emptyLine(path: "f.txt", line: 3))
        #expect(error?.description.hasPrefix("f.txt:3: empty line") == true)
    }

    @Test func whitespaceOnlyLineIsEmpty() {
        let error = datasetError { () throws(DatasetError) in try Dataset.parse("Q1\n \t\nQ2\nA2\n", format: .qa, path: "f.txt") }
        #expect(error == .emptyLine(path: "f.txt", line: 2))
    }

    @Test func oddLineCount() {
        let error = datasetError { () throws(DatasetError) in try Dataset.parse("Q1\nA1\nQ2\n", format: .qa, path: "data/q.txt") }
        #expect(error == .questionWithoutAnswer(path: "data/q.txt", line: 3))
        #expect(error?.description == "data/q.txt:3: question without an answer (the file has an odd number of lines)")
    }

    @Test(arguments: ["", "\n", "\n\n  \n"])
    func emptyFile(text: String) {
        #expect(datasetError { () throws(DatasetError) in try Dataset.parse(text, format: .qa, path: "e.txt") } == .empty(path: "e.txt"))
        #expect(datasetError { () throws(DatasetError) in try Dataset.parse(text, format: .jsonl, path: "e.jsonl") } == .empty(path: "e.jsonl"))
    }
}

@Suite struct JSONLinesParsingTests {
    @Test func examplesWithLineNumbers() throws {
        let text = #"{"text": "first"}"# + "\n" + #"{"text": "sec\nond", "extra": 1}"# + "\n"
        let d = try Dataset.parse(text, format: .jsonl, path: "f.jsonl")
        #expect(d.format == .jsonl)
        #expect(d.examples == [Example(text: "first", line: 1), Example(text: "sec\nond", line: 2)])
        #expect(d.examples.allSatisfy { $0.prompt == nil })
    }

    @Test func crlfLineEndings() {
        #expect(throws: Never.self) {
            let d = try Dataset.parse("{\"text\": \"a\"}\r\n{\"text\": \"b\"}\r\n", format: .jsonl, path: "f.jsonl")
            #expect(d.examples == [Example(text: "a", line: 1), Example(text: "b", line: 2)])
        }
    }

    @Test func badJSONOnLineThree() {
        let text = "{\"text\": \"a\"}\n{\"text\": \"b\"}\n{\"text\": \n{\"text\": \"d\"}\n"
        let error = datasetError { () throws(DatasetError) in try Dataset.parse(text, format: .jsonl, path: "f.jsonl") }
        guard case .badJSON(let path, let line, let reason)? = error else {
            Issue.record("expected badJSON, got \(String(describing: error))")
            return
        }
        #expect(path == "f.jsonl")
        #expect(line == 3)
        #expect(!reason.isEmpty)
    }

    @Test func arrayIsNotAnObject() {
        let error = datasetError { () throws(DatasetError) in
            try Dataset.parse("{\"text\": \"a\"}\n[\"text\", \"b\"]\n", format: .jsonl, path: "f.jsonl")
        }
        #expect(error == .badJSON(path: "f.jsonl", line: 2, reason: "expected an object like {\"text\": \"...\"}"))
    }

    @Test func missingText() {
        let error = datasetError { () throws(DatasetError) in
            try Dataset.parse("{\"text\": \"a\"}\n{\"body\": \"b\"}\n", format: .jsonl, path: "f.jsonl")
        }
        #expect(error == .missingText(path: "f.jsonl", line: 2))
    }

    @Test(arguments: ["5", "null", "[\"x\"]", "{\"a\": 1}", "true"])
    func textNotAString(value: String) {
        let error = datasetError { () throws(DatasetError) in
            try Dataset.parse("{\"text\": \"a\"}\n{\"text\": \"b\"}\n{\"text\": \(value)}", format: .jsonl, path: "f.jsonl")
        }
        #expect(error == .missingText(path: "f.jsonl", line: 3))
    }

    @Test func emptyLineInTheMiddle() {
        let error = datasetError { () throws(DatasetError) in
            try Dataset.parse("{\"text\": \"a\"}\n\n{\"text\": \"b\"}\n", format: .jsonl, path: "f.jsonl")
        }
        #expect(error == .emptyLine(path: "f.jsonl", line: 2))
    }
}

@Suite struct DatasetFileTests {
    /// The package root, found from this file's path (Tests/EngineTests/DatasetTests.swift).
    static let packageRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    @Test func questionAnswerFileInRepository() throws {
        let url = Self.packageRoot.appendingPathComponent("data_finetune/what_is_fhe.txt")
        let d = try Dataset.load(from: url)
        #expect(d.format == .qa)
        #expect(d.examples.count == 40)
        #expect(d.examples.map(\.line) == Array(stride(from: 1, through: 79, by: 2)))
        #expect(d.examples.first?.prompt == "What is FHE?")
        #expect(d.examples.allSatisfy { !($0.prompt ?? "").isEmpty && !$0.text.isEmpty })
    }

    @Test func jsonLinesFileInRepository() throws {
        let url = Self.packageRoot.appendingPathComponent("data_finetune/code_examples.jsonl")
        let d = try Dataset.load(from: url)
        #expect(d.format == .jsonl)
        #expect(d.examples.count == 50)
        #expect(d.examples.map(\.line) == Array(1...50))
        #expect(d.examples.allSatisfy { $0.prompt == nil && !$0.text.isEmpty })
    }

    @Test func notFound() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let url = dir.url.appendingPathComponent("missing.txt")
        #expect(datasetError { () throws(DatasetError) in try Dataset.load(from: url) } == .notFound(path: url.path))
        let shown = datasetError { () throws(DatasetError) in try Dataset.load(from: url, displayPath: "data/missing.txt") }
        #expect(shown == .notFound(path: "data/missing.txt"))
        #expect(shown?.description == "data/missing.txt: no such file")
    }

    @Test func notUTF8() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let url = dir.url.appendingPathComponent("bad.txt")
        try Data([0x51, 0x0a, 0xff, 0xfe, 0x0a]).write(to: url)
        #expect(datasetError { () throws(DatasetError) in try Dataset.load(from: url, displayPath: "bad.txt") } == .notUTF8(path: "bad.txt"))
    }

    @Test func formatGuessedFromExtensionAndOverridable() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let jsonl = dir.url.appendingPathComponent("x.JSONL")
        try Data("{\"text\": \"a\"}\n{\"text\": \"b\"}\n".utf8).write(to: jsonl)
        #expect(try Dataset.load(from: jsonl).examples == [Example(text: "a", line: 1), Example(text: "b", line: 2)])
        // Read as question/answer lines, the same two lines are one pair.
        let asQA = try Dataset.load(from: jsonl, format: .qa)
        #expect(asQA.format == .qa)
        #expect(asQA.examples.count == 1)
        #expect(DatasetFormat.guess(for: URL(fileURLWithPath: "/a/b.txt")) == .qa)
        #expect(DatasetFormat.guess(for: URL(fileURLWithPath: "/a/b")) == .qa)
    }
}

@Suite struct LengthStatisticsTests {
    @Test func oddCount() {
        let s = LengthStatistics([9, 1, 5, 3, 7])
        #expect(s.count == 5)
        #expect(s.min == 1)
        #expect(s.max == 9)
        #expect(s.mean == 5)
        #expect(s.median == 5)
    }

    @Test func evenCount() {
        let s = LengthStatistics([10, 1, 4, 3])
        #expect(s.count == 4)
        #expect(s.min == 1)
        #expect(s.max == 10)
        #expect(s.mean == 4.5)
        #expect(s.median == 3.5)
    }

    @Test func singleValue() {
        #expect(LengthStatistics([7]) == LengthStatistics([7]))
        let s = LengthStatistics([7])
        #expect((s.count, s.min, s.max, s.mean, s.median) == (1, 7, 7, 7, 7))
    }
}

@Suite struct SHA256DigestTests {
    @Test func knownVectors() {
        // FIPS 180-2 / NIST test vectors.
        #expect(SHA256Digest.hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(SHA256Digest.hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(SHA256Digest.hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")
                == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        #expect(SHA256Digest.hex(Data("abc".utf8)) == SHA256Digest.hex("abc"))
    }

    @Test func fileDigestStreamsPastOneChunk() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        // 4 MiB + 12345 bytes: two chunks, the second one short.
        var data = Data(count: (4 << 20) + 12_345)
        data.withUnsafeMutableBytes { raw in
            for i in 0..<raw.count { raw[i] = UInt8(truncatingIfNeeded: (i &* 2_654_435_761) >> 13) }
        }
        let url = dir.url.appendingPathComponent("big.bin")
        try data.write(to: url)
        let streamed = try SHA256Digest.hex(fileAt: url)
        #expect(streamed == SHA256Digest.hex(data))
        #expect(streamed.count == 64)

        let empty = dir.url.appendingPathComponent("empty.bin")
        try Data().write(to: empty)
        #expect(try SHA256Digest.hex(fileAt: empty) == SHA256Digest.hex(""))
    }

    @Test func fileDigestOfMissingFileThrows() {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("nb-missing-\(UUID().uuidString)")
        #expect(throws: (any Error).self) { try SHA256Digest.hex(fileAt: url) }
    }
}
