import Foundation
import Testing
@testable import Engine

// Fixtures come from Fixtures/make_checkpoint_fixtures.py (gguf-py writes and dequantizes).

/// A file in Tests/EngineTests/Fixtures.
func fixtureURL(_ name: String) -> URL {
    Bundle.module.url(forResource: "Fixtures", withExtension: nil)!.appendingPathComponent(name)
}

/// A GGUF test fixture that `make setup` writes into the cache (scripts/fetch_fixtures.sh runs
/// scripts/make_gguf_fixtures.py and checks the SHA-256): model files are not committed.
func cachedFixtureURL(_ name: String) throws -> URL {
    let cache = ProcessInfo.processInfo.environment["NB_CACHE"].map { URL(fileURLWithPath: $0) }
        ?? URL(fileURLWithPath: NSHomeDirectory()).appendingPathComponent(".cache/nb")
    let url = cache.appendingPathComponent("fixtures").appendingPathComponent(name)
    guard FileManager.default.fileExists(atPath: url.path) else {
        struct Missing: Error, CustomStringConvertible { var description: String }
        throw Missing(description: "\(url.path) is missing: run `make setup` (scripts/fetch_fixtures.sh writes the GGUF test fixtures there)")
    }
    return url
}

/// Tensors as the generator script wrote them: Float32 bit patterns, so NaN and -0 compare exactly.
struct ExpectedTensors: Decodable {
    struct Tensor: Decodable {
        let name: String
        let type: String?
        let shape: [Int]?
        let rows: [Int]?
        let row_length: Int?
        let bits: [UInt32]
    }
    let tensors: [Tensor]

    static func load(_ file: String) throws -> [String: Tensor] {
        let decoded = try JSONDecoder().decode(Self.self, from: Data(contentsOf: fixtureURL(file)))
        return Dictionary(uniqueKeysWithValues: decoded.tensors.map { ($0.name, $0) })
    }
}

/// nil when `actual` matches `expected` bit patterns (`relative == 0`: bit for bit;
/// otherwise |a − e| ≤ relative·|e|, NaN only matching NaN); else the count, max error and
/// first index of the mismatches.
func mismatch(_ actual: [Float], _ expected: [UInt32], relative: Float = 0) -> String? {
    guard actual.count == expected.count else { return "count \(actual.count), expected \(expected.count)" }
    var bad = 0, first = -1
    var maxError: Float = 0
    for (i, a) in actual.enumerated() {
        let e = Float(bitPattern: expected[i])
        let ok = relative == 0 ? a.bitPattern == expected[i]
            : (a.isNaN && e.isNaN) || a == e || abs(a - e) <= relative * abs(e)
        if !ok {
            bad += 1
            if first < 0 { first = i }
            if !a.isNaN && !e.isNaN { maxError = max(maxError, abs(a - e)) }
        }
    }
    if bad == 0 { return nil }
    return "\(bad) mismatches, max error \(maxError), first at \(first): \(actual[first]) vs \(Float(bitPattern: expected[first]))"
}

/// The error a throwing call produced, or nil when it succeeded.
func checkpointError<T>(_ body: () throws(CheckpointError) -> T) -> CheckpointError? {
    do { _ = try body(); return nil } catch { return error }
}

/// A copy of `data` in a fresh temporary file, removed with its directory by the caller.
func temporaryFile(_ data: Data, name: String = "model.gguf") throws -> URL {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("nb-ckpt-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    let url = dir.appendingPathComponent(name)
    try data.write(to: url)
    return url
}

func removeTemporary(_ url: URL) { try? FileManager.default.removeItem(at: url.deletingLastPathComponent()) }

@Suite struct GGUFMetadataTests {
    let file: GGUFFile

    init() throws { file = try GGUFFile(url: try cachedFixtureURL("checkpoint.gguf")) }

    @Test func header() {
        #expect(file.version == 3)
        #expect(file.alignment == 64)
        #expect(file.dataOffset % 64 == 0)
        #expect(file.tensorNames == ["f32.matrix", "f32.vector", "f32.cube", "f16.matrix", "bf16.matrix",
                                     "q8_0.matrix", "q8_0.cube", "q4_0.matrix", "q4_1.matrix"])
    }

    /// The values make_checkpoint_fixtures.py writes, with the types it writes them as.
    @Test func everyValueTypeRoundTripsExactly() {
        let expected: [String: GGUFValue] = [
            "general.architecture": .string("llama"),
            "general.alignment": .uint32(64),
            "test.uint8": .uint8(200),
            "test.int8": .int8(-100),
            "test.uint16": .uint16(60000),
            "test.int16": .int16(-30000),
            "test.uint32": .uint32(4_000_000_000),
            "test.int32": .int32(-2_000_000_000),
            "test.float32": .float32(0.1),
            "test.bool": .bool(true),
            "test.bool_false": .bool(false),
            "test.string": .string("héllo wörld ✓ 日本語 🦙"),
            "test.uint64": .uint64(1 << 63 + 5),
            "test.int64": .int64(-(1 << 62)),
            "test.float64": .float64(3.141592653589793),
            "test.array_int32": .array([.int32(1), .int32(-2), .int32(3)]),
            "test.array_float32": .array([.float32(0.5), .float32(-1.25)]),
            "test.array_bool": .array([.bool(true), .bool(false), .bool(true)]),
            "test.array_strings": .array(["a", "ü", "", "🦙 llama", "tab\there"].map(GGUFValue.string)),
            "test.array_uint64": .array([.uint64(1), .uint64(UInt64.max)]),
            "test.nested": .array([.array([.int32(1), .int32(2)]), .array([.int32(3)])]),
            "test.nested_strings": .array([.array([.string("x"), .string("yé")]), .array([.string("z")])]),
        ]
        #expect(file.metadata.count == expected.count)
        for (key, value) in expected {
            #expect(file.metadata[key] == value, "\(key)")
        }
    }

    @Test func accessors() {
        let m = file.metadata
        #expect(m["test.uint8"]?.int == 200)
        #expect(m["test.int32"]?.int == -2_000_000_000)
        #expect(m["test.uint64"]?.int == nil)  // above Int.max
        #expect(m["test.int64"]?.int == -(1 << 62))
        #expect(m["test.float32"]?.double == Double(Float(0.1)))
        #expect(m["test.float64"]?.double == 3.141592653589793)
        #expect(m["test.uint16"]?.double == 60000)
        #expect(m["test.string"]?.string == "héllo wörld ✓ 日本語 🦙")
        #expect(m["test.string"]?.int == nil)
        #expect(m["test.bool"]?.bool == true)
        #expect(m["test.array_strings"]?.strings == ["a", "ü", "", "🦙 llama", "tab\there"])
        #expect(m["test.array_int32"]?.ints == [1, -2, 3])
        #expect(m["test.array_strings"]?.ints == nil)
        #expect(m["test.nested"]?.array?.compactMap(\.ints) == [[1, 2], [3]])
        #expect(m["test.nested"]?.strings == nil)
    }
}

@Suite struct GGUFTensorTests {
    let file: GGUFFile
    let expected: [String: ExpectedTensors.Tensor]

    init() throws {
        file = try GGUFFile(url: try cachedFixtureURL("checkpoint.gguf"))
        expected = try ExpectedTensors.load("checkpoint_gguf_expected.json")
    }

    @Test func shapesAreReversedDims() throws {
        let matrix = try #require(file.info("f32.matrix"))
        #expect(matrix.dims == [5, 3])
        #expect(matrix.shape == [3, 5])
        #expect(matrix.elementCount == 15)
        #expect(file.info("f32.vector")?.shape == [7])
        #expect(file.info("f32.cube")?.dims == [4, 3, 2])
        #expect(file.shape(of: "f32.cube") == [2, 3, 4])
        #expect(file.shape(of: "q8_0.cube") == [2, 2, 32])
        #expect(file.info("q4_0.matrix")?.type == .q4_0)
        #expect(file.info("q4_0.matrix")?.byteCount == 3 * 3 * 18)
        #expect(file.info("nope") == nil)
        for (name, e) in expected {
            #expect(file.shape(of: name) == e.shape, "\(name)")
            #expect(file.info(name)?.type.name == e.type, "\(name)")
        }
    }

    @Test(arguments: ["f32.matrix", "f32.vector", "f32.cube", "f16.matrix", "bf16.matrix"])
    func plainTypesAreExact(name: String) throws {
        let e = try #require(expected[name])
        let values = try file.float32(name)
        #expect(mismatch(values, e.bits) == nil, "\(name): \(mismatch(values, e.bits) ?? "")")
    }

    @Test(arguments: ["q8_0.matrix", "q8_0.cube", "q4_0.matrix", "q4_1.matrix"])
    func quantizedTypesMatchGGUFPy(name: String) throws {
        let e = try #require(expected[name])
        let values = try file.float32(name)
        let error = mismatch(values, e.bits, relative: 1e-6)
        #expect(error == nil, "\(name): \(error ?? "")")
    }

    @Test func intoBufferAndRowsAgreeWithWholeTensor() throws {
        for name in file.tensorNames {
            let whole = try file.float32(name)
            var buffer = [Float](repeating: .nan, count: whole.count)
            try buffer.withUnsafeMutableBufferPointer { (b) throws(CheckpointError) in try file.float32(name, into: b) }
            #expect(buffer.map(\.bitPattern) == whole.map(\.bitPattern), "\(name)")
        }
        let rows = try file.float32("q4_1.matrix", rows: 1..<3)  // (5, 64)
        let whole = try file.float32("q4_1.matrix")
        #expect(rows == Array(whole[64..<192]))
        let cubeRow = try file.float32("q8_0.cube", rows: 3..<4)  // (2, 2, 32) seen as (4, 32)
        #expect(cubeRow == Array(try file.float32("q8_0.cube")[96...]))
    }

    @Test func wrongBufferSizeAndMissingTensor() {
        var small = [Float](repeating: 0, count: 4)
        let error = checkpointError { () throws(CheckpointError) in
            try small.withUnsafeMutableBufferPointer { (b) throws(CheckpointError) in try file.float32("f32.matrix", into: b) }
        }
        #expect(error == .shapeMismatch(path: file.path, tensor: "f32.matrix", expected: [4], found: [3, 5]))
        #expect(checkpointError { () throws(CheckpointError) in try file.float32("missing.weight") }
                == .missingTensor(path: file.path, tensor: "missing.weight"))
    }

    @Test func tensorSourceStrictLoadingHelpers() throws {
        let source: any TensorSource = file
        #expect(try source.float32("f32.vector", shape: [7]).count == 7)
        #expect(checkpointError { () throws(CheckpointError) in try source.float32("f32.vector", shape: [1, 7]) }
                == .shapeMismatch(path: file.path, tensor: "f32.vector", expected: [1, 7], found: [7]))
        #expect(checkpointError { () throws(CheckpointError) in try source.float32("absent", shape: [1]) }
                == .missingTensor(path: file.path, tensor: "absent"))
        let used = Set(file.tensorNames.filter { $0 != "f32.cube" && $0 != "q4_1.matrix" })
        let error = checkpointError { () throws(CheckpointError) in try source.checkAllUsed(used) }
        #expect(error == .unusedTensors(path: file.path, tensors: ["f32.cube", "q4_1.matrix"]))
        #expect(error?.description.hasSuffix("2 unused tensors: 'f32.cube', 'q4_1.matrix'") == true)
        try source.checkAllUsed(Set(file.tensorNames))
    }
}

/// Damaged copies of checkpoint.gguf, parsed from memory: every one must throw a typed
/// error, never crash.
@Suite struct GGUFCorruptionTests {
    let original: Data

    init() throws { original = try Data(contentsOf: try cachedFixtureURL("checkpoint.gguf")) }

    /// Parses a patched copy of the fixture, and converts every tensor when it opens.
    func open(_ data: Data) -> (GGUFFile?, CheckpointError?) {
        do {
            let file = try GGUFFile(bytes: Array(data), path: "model.gguf")
            for name in file.tensorNames { _ = try file.float32(name) }
            return (file, nil)
        } catch {
            return (nil, error)
        }
    }

    /// Byte position just after a string's bytes in the file (a metadata key or tensor name).
    func position(after string: String) throws -> Int {
        let range = try #require(original.range(of: Data(string.utf8)))
        return range.upperBound
    }

    func patched(at position: Int, _ bytes: [UInt8]) -> Data {
        var data = original
        data.replaceSubrange(position..<position + bytes.count, with: bytes)
        return data
    }

    func le<T: FixedWidthInteger>(_ value: T) -> [UInt8] { withUnsafeBytes(of: value.littleEndian, Array.init) }

    @Test func truncatedAtEvery7thByte() throws {
        let intact = try GGUFFile(url: try cachedFixtureURL("checkpoint.gguf"))
        // gguf-py pads the last tensor to the alignment; cuts inside that padding leave a valid file.
        let needed = intact.tensorInfos.map { intact.dataOffset + $0.offset + $0.byteCount! }.max()!
        var cuts = 0
        for cut in stride(from: 0, to: original.count, by: 7) {
            let (file, error) = open(original.prefix(cut))
            if cut < needed {
                #expect(file == nil && error != nil, "cut at \(cut) of \(original.count) bytes")
                cuts += 1
            }
        }
        #expect(cuts > 300)
    }

    @Test func everyHeaderByteSetTo0xFF() {
        // Not all of these are errors (a float can be any bits), but none may crash.
        let headerEnd = 1472  // data section start of the fixture
        for i in 4..<headerEnd {
            _ = open(patched(at: i, [0xFF]))
        }
    }

    /// The probe's bit-flipped header printed a 6.2 MB error of raw file bytes (NULs among
    /// them): every error is one printable line of bounded length, whatever the flip.
    @Test func errorsOfBitFlippedHeadersArePrintableLines() {
        let headerEnd = 1472
        var errors = 0
        for i in 4..<headerEnd {
            for bit in [UInt8(0x01), 0x08, 0x40, 0x80] {
                var data = original
                data[i] ^= bit
                guard let error = open(data).1 else { continue }
                errors += 1
                let line = error.description
                #expect(line.unicodeScalars.count <= Printable.maxLine + 40, "byte \(i) bit \(bit): \(line.unicodeScalars.count) characters")
                #expect(!line.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7F }, "byte \(i) bit \(bit): a control character in \(line.debugDescription)")
            }
        }
        #expect(errors > 1000)
        // A name of NULs and quotes is escaped and cut.
        let name = String(repeating: "\u{0}'\\", count: 500)
        let text = CheckpointError.missingTensor(path: "m.gguf", tensor: name).description
        #expect(text.hasPrefix("m.gguf: missing tensor '\\u{0}\\'\\\\"), "\(text)")
        #expect(text.contains("more characters)") && text.unicodeScalars.count < 500, "\(text)")
    }

    @Test func badMagic() {
        let (_, error) = open(patched(at: 0, Array("GGML".utf8)))
        #expect(error == .badMagic(path: "model.gguf", found: "\"GGML\""))
        let (_, zip) = open(patched(at: 0, [0x50, 0x4B, 0x03, 0x04]))
        #expect(zip?.description == "model.gguf: not a GGUF file (starts with 0x504b0304, expected \"GGUF\")")
    }

    @Test(arguments: [UInt32(1), 4, 0x0300_0000])
    func unsupportedVersion(version: UInt32) {
        let (_, error) = open(patched(at: 4, le(version)))
        #expect(error == .unsupportedVersion(path: error?.path ?? "", version: version))
    }

    @Test func version2IsAccepted() {
        let (file, error) = open(patched(at: 4, le(UInt32(2))))
        #expect(error == nil)
        #expect(file?.version == 2)
    }

    @Test func tensorOffsetBeyondTheFile() throws {
        // Tensor info after the name: n_dims UInt32, 2 × UInt64 dims, type UInt32, offset UInt64.
        let offsetField = try position(after: "q4_0.matrix") + 4 + 16 + 4
        let (_, error) = open(patched(at: offsetField, le(UInt64(64 * 1000))))
        #expect(error == .tensorOutOfBounds(path: error?.path ?? "", tensor: "q4_0.matrix",
                                            end: 1472 + 64_000 + 162, fileSize: original.count))
        let (_, huge) = open(patched(at: offsetField, le(UInt64.max - 63)))
        #expect(huge == .tensorOutOfBounds(path: huge?.path ?? "", tensor: "q4_0.matrix", end: Int.max, fileSize: original.count))
        let (_, misaligned) = open(patched(at: offsetField, le(UInt64(2368 - 1472 + 8))))
        #expect(misaligned == .badTensorInfo(path: misaligned?.path ?? "", tensor: "q4_0.matrix",
                                             reason: "offset 904 is not a multiple of the alignment 64"))
    }

    @Test func unknownTypeNumberNamesTheTensor() throws {
        let typeField = try position(after: "q4_1.matrix") + 4 + 16
        let data = patched(at: typeField, le(UInt32(99)))
        let url = try temporaryFile(data)
        defer { removeTemporary(url) }
        let file = try GGUFFile(url: url)  // metadata stays readable
        #expect(file.info("q4_1.matrix")?.type.name == "type 99")
        #expect(try file.float32("q4_0.matrix").count == 288)
        let error = checkpointError { () throws(CheckpointError) in try file.float32("q4_1.matrix") }
        #expect(error == .unknownTensorType(path: url.path, tensor: "q4_1.matrix", rawType: 99))
        #expect(error?.description == "\(url.path): tensor 'q4_1.matrix' has unknown ggml type 99, which nb cannot read; supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1")
    }

    @Test func unsupportedKnownTypeNamesTheTensorAndType() throws {
        // Q5_0 blocks (22 bytes per 32) of the (2, 2, 32) tensor fit in its Q8_0 bytes.
        let typeField = try position(after: "q8_0.cube") + 4 + 24
        let url = try temporaryFile(patched(at: typeField, le(UInt32(6))))
        defer { removeTemporary(url) }
        let file = try GGUFFile(url: url)
        let error = checkpointError { () throws(CheckpointError) in try file.float32("q8_0.cube") }
        #expect(error?.description == "\(url.path): tensor 'q8_0.cube' has type Q5_0 (6), which nb cannot read; supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1")
        // Q5_K blocks hold 256 values: a 32-wide row is not a whole block.
        let (_, k) = open(patched(at: typeField, le(UInt32(13))))
        #expect(k == .badTensorInfo(path: k?.path ?? "", tensor: "q8_0.cube", reason: "first dimension 32 is not a multiple of Q5_K's block of 256"))
    }

    @Test func absurdCountsAreTruncationNotAllocation() throws {
        let (_, tensors) = open(patched(at: 8, le(UInt64(1) << 60)))
        guard case .truncated? = tensors else { Issue.record("tensor count: \(String(describing: tensors))"); return }
        let (_, keys) = open(patched(at: 16, le(UInt64.max)))
        guard case .truncated? = keys else { Issue.record("key count: \(String(describing: keys))"); return }
        // Array: element type UInt32, then count UInt64.
        let count = try position(after: "test.array_int32") + 4 + 4
        let (_, array) = open(patched(at: count, le(UInt64(1) << 62)))
        #expect(array == .truncated(path: array?.path ?? "", expected: Int.max, actual: original.count))
        // String value: length UInt64 after the value type.
        let length = try position(after: "test.string") + 4
        let (_, string) = open(patched(at: length, le(UInt64(1_000_000))))
        guard case .truncated? = string else { Issue.record("string: \(String(describing: string))"); return }
    }

    @Test func unknownValueTypeNamesTheKey() throws {
        let (_, error) = open(patched(at: try position(after: "test.uint8"), le(UInt32(99))))
        #expect(error == .badMetadata(path: error?.path ?? "", key: "test.uint8", reason: "unknown value type 99"))
        let (_, element) = open(patched(at: try position(after: "test.array_bool") + 4, le(UInt32(13))))
        #expect(element == .badMetadata(path: element?.path ?? "", key: "test.array_bool", reason: "unknown array element type 13"))
    }

    @Test func missingEmptyAndDirectory() throws {
        #expect(checkpointError { () throws(CheckpointError) in try GGUFFile(url: URL(fileURLWithPath: "/nonexistent/m.gguf")) }
                == .notFound(path: "/nonexistent/m.gguf"))
        let empty = try temporaryFile(Data())
        defer { removeTemporary(empty) }
        #expect(checkpointError { () throws(CheckpointError) in try GGUFFile(url: empty) }
                == .truncated(path: empty.path, expected: 4, actual: 0))
        let dir = empty.deletingLastPathComponent()
        #expect(checkpointError { () throws(CheckpointError) in try GGUFFile(url: dir) }
                == .unreadable(path: dir.path, reason: "not a regular file"))
    }
}

/// The real model `make setup` downloads: facts from REFERENCE.md, rows from gguf-py.
@Suite struct SmolLM2GGUFTests {
    static let url = FileManager.default.homeDirectoryForCurrentUser
        .appendingPathComponent(".cache/nb/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")

    @Test func smolLM2Q4_1() throws {
        guard FileManager.default.fileExists(atPath: Self.url.path) else {
            Issue.record("\(Self.url.path) is missing: run `make setup` to download SmolLM2-135M-Instruct")
            return
        }
        let file = try GGUFFile(url: Self.url)
        let m = file.metadata
        #expect(file.version == 3)
        #expect(m["general.architecture"]?.string == "llama")
        #expect(m["llama.block_count"]?.int == 30)
        #expect(m["llama.embedding_length"]?.int == 576)
        #expect(m["llama.attention.head_count"]?.int == 9)
        #expect(m["llama.attention.head_count_kv"]?.int == 3)
        #expect(m["llama.feed_forward_length"]?.int == 1536)
        let tokens = try #require(m["tokenizer.ggml.tokens"]?.strings)
        #expect(tokens.count == 49152)
        #expect(Array(tokens.prefix(3)) == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
        #expect(m["tokenizer.ggml.merges"]?.strings?.count == 48900)

        #expect(Set(file.tensorInfos.map(\.type)).isSubset(of: [.q4_1, .q8_0, .f32]))
        #expect(file.tensorInfos.map(\.elementCount).reduce(0, +) == 134_515_008)
        #expect(file.shape(of: "token_embd.weight") == [49152, 576])
        #expect(file.info("token_embd.weight")?.type == .q8_0)
        #expect(file.info("blk.0.attn_q.weight")?.type == .q4_1)

        for (name, e) in try ExpectedTensors.load("smollm2_rows.json") {
            let rows = try #require(e.rows), length = try #require(e.row_length)
            #expect(file.info(name)?.type.name == e.type)
            var values: [Float] = []
            for r in rows { values += try file.float32(name, rows: r..<r + 1) }
            #expect(values.count == rows.count * length)
            let error = mismatch(values, e.bits, relative: 1e-6)
            #expect(error == nil, "\(name): \(error ?? "")")
        }
    }
}
