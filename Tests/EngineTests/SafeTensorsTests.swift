import Foundation
import Testing
@testable import Engine

// Fixtures come from Fixtures/make_checkpoint_fixtures.py (Hugging Face's safetensors writes them).

/// A safetensors file from a header string and data bytes: UInt64 header length, header, data.
private func safetensorsBytes(_ header: String, data: [UInt8] = []) -> Data {
    var out = Data()
    withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { out.append(contentsOf: $0) }
    out.append(contentsOf: Array(header.utf8))
    out.append(contentsOf: data)
    return out
}

/// Parses bytes as a safetensors file (from memory, so no temporary files).
private func openSafeTensors(_ data: Data) throws -> (SafeTensorsFile?, CheckpointError?) {
    do {
        return (try SafeTensorsFile(bytes: Array(data), path: "model.safetensors"), nil)
    } catch {
        return (nil, error)
    }
}

@Suite struct SafeTensorsFileTests {
    let file: SafeTensorsFile
    let expected: [String: ExpectedTensors.Tensor]

    init() throws {
        file = try SafeTensorsFile(url: fixtureURL("tensors.safetensors"))
        expected = try ExpectedTensors.load("tensors_expected.json")
    }

    @Test func headerEntries() {
        #expect(file.metadata == ["format": "pt ✓ ünïcode"])
        #expect(file.tensorNames == ["d.i64", "a.f32", "c.bf16", "b.f16"])  // data order
        #expect(file.shape(of: "a.f32") == [3, 4])
        #expect(file.shape(of: "b.f16") == [2, 3, 2])
        #expect(file.dtype(of: "c.bf16") == "BF16")
        #expect(file.dtype(of: "d.i64") == "I64")
        #expect(file.shape(of: "nope") == nil)
    }

    @Test(arguments: ["a.f32", "b.f16", "c.bf16"])
    func valuesAreExact(name: String) throws {
        let e = try #require(expected[name])
        #expect(file.shape(of: name) == e.shape)
        let values = try file.float32(name)
        #expect(mismatch(values, e.bits) == nil, "\(name): \(mismatch(values, e.bits) ?? "")")
    }

    @Test func unsupportedDtypeNamesTheTensor() {
        let error = checkpointError { () throws(CheckpointError) in try file.float32("d.i64") }
        #expect(error == .unsupportedTensorType(path: file.path, tensor: "d.i64", type: "I64", supported: ["F32", "F16", "BF16"]))
        #expect(error?.description.hasSuffix("tensor 'd.i64' has type I64, which nb cannot read; supported: F32, F16, BF16") == true)
    }

    @Test func badHeaderJSON() throws {
        for header in ["{not json", "[1, 2]", "{\"x\": 5}", "{\"x\": {\"dtype\": \"F32\", \"shape\": [1.5], \"data_offsets\": [0, 4]}}"] {
            let (_, error) = try openSafeTensors(safetensorsBytes(header, data: [0, 0, 0, 0]))
            guard case .badHeader? = error else { Issue.record("\(header): \(String(describing: error))"); continue }
        }
        let (_, missing) = try openSafeTensors(safetensorsBytes("{\"x\": {\"dtype\": \"F32\", \"shape\": [1]}}"))
        #expect(missing == .badHeader(path: missing?.path ?? "", reason: "tensor 'x' needs dtype, shape and data_offsets"))
        let (_, metadata) = try openSafeTensors(safetensorsBytes("{\"__metadata__\": {\"a\": 1}}"))
        guard case .badHeader? = metadata else { Issue.record("metadata: \(String(describing: metadata))"); return }
    }

    @Test func offsetsOutOfRangeOrInconsistent() throws {
        let beyond = "{\"w\": {\"dtype\": \"F32\", \"shape\": [100], \"data_offsets\": [0, 400]}}"
        let data = safetensorsBytes(beyond, data: [UInt8](repeating: 0, count: 8))
        let (_, error) = try openSafeTensors(data)
        #expect(error == .tensorOutOfBounds(path: error?.path ?? "", tensor: "w", end: 8 + beyond.utf8.count + 400, fileSize: data.count))

        let wrongSize = "{\"w\": {\"dtype\": \"F16\", \"shape\": [2, 3], \"data_offsets\": [0, 8]}}"
        let (_, size) = try openSafeTensors(safetensorsBytes(wrongSize, data: [UInt8](repeating: 0, count: 8)))
        #expect(size == .badHeader(path: size?.path ?? "", reason: "tensor 'w' (F16, shape [2, 3]) needs 12 bytes but data_offsets [0, 8] span 8"))

        let reversed = "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 4]}}"
        let (_, order) = try openSafeTensors(safetensorsBytes(reversed, data: [UInt8](repeating: 0, count: 8)))
        guard case .badHeader? = order else { Issue.record("reversed: \(String(describing: order))"); return }
    }

    @Test func truncatedHeaderLength() throws {
        var data = safetensorsBytes("{}")
        data.replaceSubrange(0..<8, with: withUnsafeBytes(of: UInt64(1000).littleEndian, Array.init))
        let (_, error) = try openSafeTensors(data)
        #expect(error == .truncated(path: error?.path ?? "", expected: 1008, actual: 10))
        let (_, short) = try openSafeTensors(Data([1, 2, 3]))
        #expect(short == .truncated(path: short?.path ?? "", expected: 8, actual: 3))
        let original = try Data(contentsOf: fixtureURL("tensors.safetensors"))
        for cut in 0..<original.count {
            let (file, _) = try openSafeTensors(original.prefix(cut))
            #expect(file == nil, "cut at \(cut)")
        }
    }
}

@Suite struct SafeTensorsCheckpointTests {
    @Test func shardedIndex() throws {
        let checkpoint = try SafeTensorsCheckpoint(directory: fixtureURL("sharded"))
        #expect(checkpoint.files.count == 2)
        #expect(Set(checkpoint.tensorNames) == ["embed.weight", "norm.weight", "head.bias"])
        #expect(checkpoint.tensorNames.first == "embed.weight")  // shards in file-name order
        #expect(checkpoint.shape(of: "embed.weight") == [2, 3])
        #expect(try checkpoint.float32("embed.weight") == [0, 1, 2, 3, 4, 5])
        #expect(try checkpoint.float32("norm.weight") == [1.5, -2])
        #expect(try checkpoint.float32("head.bias") == [0.25])
        #expect(checkpoint.dtype(of: "head.bias") == "F16")
        #expect(checkpoint.files.map(\.metadata) == [["format": "pt"], ["format": "pt"]])
        #expect(checkpoint.file(containing: "norm.weight")?.url.lastPathComponent == "model-00002-of-00002.safetensors")
        #expect(checkpointError { () throws(CheckpointError) in try checkpoint.float32("lm_head.weight") }
                == .missingTensor(path: checkpoint.path, tensor: "lm_head.weight"))
    }

    /// A directory holding `files` (name to contents), removed by the caller.
    private func directory(_ files: [String: Data]) throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("nb-ckpt-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        for (name, data) in files { try data.write(to: dir.appendingPathComponent(name)) }
        return dir
    }

    @Test func singleFileDirectory() throws {
        let dir = try directory(["model.safetensors": Data(contentsOf: fixtureURL("tensors.safetensors"))])
        defer { try? FileManager.default.removeItem(at: dir) }
        let checkpoint = try SafeTensorsCheckpoint(directory: dir)
        #expect(checkpoint.tensorNames == ["d.i64", "a.f32", "c.bf16", "b.f16"])
        #expect(try checkpoint.float32("b.f16").count == 12)
    }

    @Test func badDirectories() throws {
        let empty = try directory([:])
        defer { try? FileManager.default.removeItem(at: empty) }
        #expect(checkpointError { () throws(CheckpointError) in try SafeTensorsCheckpoint(directory: empty) }
                == .notFound(path: empty.appendingPathComponent("model.safetensors").path))

        let shard = try Data(contentsOf: fixtureURL("sharded/model-00002-of-00002.safetensors"))
        let cases: [(String, (URL) -> CheckpointError?)] = [
            ("{\"weight_map\": {\"norm.weight\": \"s.safetensors\", \"gone\": \"s.safetensors\"}}",
             { .missingTensor(path: $0.appendingPathComponent("s.safetensors").path, tensor: "gone") }),
            ("{\"weight_map\": {\"norm.weight\": \"other.safetensors\"}}",
             { .notFound(path: $0.appendingPathComponent("other.safetensors").path) }),
            ("{\"weight_map\": {\"norm.weight\": \"../s.safetensors\"}}",
             { .badIndex(path: $0.appendingPathComponent("model.safetensors.index.json").path,
                         reason: "shard '../s.safetensors' is not a file name in the same directory") }),
            ("{\"weight_map\": [1]}", { _ in nil }),
        ]
        for (index, expected) in cases {
            let dir = try directory(["model.safetensors.index.json": Data(index.utf8), "s.safetensors": shard])
            defer { try? FileManager.default.removeItem(at: dir) }
            let error = checkpointError { () throws(CheckpointError) in try SafeTensorsCheckpoint(directory: dir) }
            if let e = expected(dir) {
                #expect(error == e, "\(index)")
            } else {
                guard case .badIndex? = error else { Issue.record("\(index): \(String(describing: error))"); continue }
            }
        }
    }
}

@Suite struct SafeTensorsWriterTests {
    /// The raw reader returns what the file holds; loading for a model, an adapter or a
    /// training checkpoint (`float32(_:shape:)`) refuses NaN and ±∞ with the tensor's name.
    @Test func nonFiniteValuesAreRefusedWhereWeightsAreLoaded() throws {
        let url = try temporaryFile(Data(), name: "checkpoint.safetensors")
        defer { removeTemporary(url) }
        try SafeTensorsWriter.write([("fine", [2], [1, 2]), ("optimizer.exp_avg_sq.x", [2, 2], [0, 1, 2, .nan]), ("inf", [1], [-.infinity])], to: url)
        let file = try SafeTensorsFile(url: url)
        #expect(try file.float32("fine", shape: [2]) == [1, 2])
        #expect(try file.float32("optimizer.exp_avg_sq.x")[3].isNaN)
        do { _ = try file.float32("optimizer.exp_avg_sq.x", shape: [2, 2]); Issue.record("NaN loaded") } catch {
            #expect(error.description.contains("tensor 'optimizer.exp_avg_sq.x' holds nan at element 3"), "\(error)")
        }
        do { _ = try file.float32("inf", shape: [1]); Issue.record("-inf loaded") } catch {
            #expect(error.description.contains("tensor 'inf' holds -inf at element 0"), "\(error)")
        }
    }

    @Test func roundTrip() throws {
        let url = try temporaryFile(Data(), name: "adapter_model.safetensors")
        defer { removeTemporary(url) }
        let a: [Float] = (0..<24).map { Float($0) * 0.5 - 3 } + []
        let tensors: [(name: String, shape: [Int], values: [Float])] = [
            ("base_model.model.h.0.attn.c_attn.lora_A.weight", [2, 12], a),
            ("quote\"and\\slash ü", [3], [.infinity, -0.0, .nan]),
            ("empty", [0, 4], []),
        ]
        try SafeTensorsWriter.write(tensors, metadata: ["format": "pt", "x": "line\nbreak"], to: url)
        let bytes = try Data(contentsOf: url)
        let headerLength = bytes.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
        #expect((8 + headerLength) % 8 == 0)
        let header = try #require(JSONSerialization.jsonObject(with: bytes[8..<8 + Int(headerLength)]) as? [String: Any])
        #expect(Set(header.keys) == ["__metadata__", "base_model.model.h.0.attn.c_attn.lora_A.weight", "quote\"and\\slash ü", "empty"])

        let file = try SafeTensorsFile(url: url)
        #expect(file.metadata == ["format": "pt", "x": "line\nbreak"])
        #expect(file.tensorNames.count == 3)
        for t in tensors {
            #expect(file.shape(of: t.name) == t.shape)
            #expect(file.dtype(of: t.name) == "F32")
            #expect(try file.float32(t.name).map(\.bitPattern) == t.values.map(\.bitPattern), "\(t.name)")
        }
    }

    @Test func noMetadataAndUnwritable() throws {
        let url = try temporaryFile(Data(), name: "w.safetensors")
        defer { removeTemporary(url) }
        try SafeTensorsWriter.write([("w", [1], [42])], to: url)
        let file = try SafeTensorsFile(url: url)
        #expect(file.metadata.isEmpty)
        #expect(try file.float32("w") == [42])

        let bad = url.appendingPathComponent("w.safetensors")  // below a regular file: no directory can be made
        guard case .unwritable(let path, _)? = checkpointError({ () throws(CheckpointError) in
            try SafeTensorsWriter.write([("w", [1], [1])], to: bad)
        }) else { Issue.record("expected .unwritable"); return }
        #expect(path == bad.path)
    }
}

@Suite struct CheckpointDigestTests {
    @Test func sha256Verification() throws {
        let url = try temporaryFile(Data("abc".utf8), name: "m.bin")
        defer { removeTemporary(url) }
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        try SHA256Digest.verify(fileAt: url, expected: abc.uppercased())
        let error = checkpointError { () throws(CheckpointError) in try SHA256Digest.verify(fileAt: url, expected: String(repeating: "0", count: 64)) }
        #expect(error == .sha256Mismatch(path: url.path, expected: String(repeating: "0", count: 64), found: abc))
        #expect(checkpointError { () throws(CheckpointError) in try SHA256Digest.verify(fileAt: URL(fileURLWithPath: "/nonexistent/m"), expected: abc) }
                == .notFound(path: "/nonexistent/m"))
    }
}
