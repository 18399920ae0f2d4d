import Foundation

/// One tensor's description in a GGUF file.
public struct GGUFTensorInfo: Equatable, Sendable {
    public let name: String
    /// ggml order: `dims[0]` (ne[0]) varies fastest. A (rows, columns) matrix has
    /// `dims == [columns, rows]`.
    public let dims: [Int]
    public let type: GGMLType
    /// Byte offset of the data from the start of the file's data section (a multiple of the alignment).
    public let offset: Int
    /// Bytes the data occupies; nil when the type is unknown.
    public let byteCount: Int?

    /// Row-major shape (`dims` reversed): a ggml (ne0, ne1) tensor is a (ne1, ne0) matrix.
    public var shape: [Int] { dims.reversed() }

    /// Number of values (product of `dims`; 1 for a scalar).
    public var elementCount: Int { dims.reduce(1, *) }

    /// Length of one row (`dims[0]`), and the number of rows (product of the other dims).
    var rowLength: Int { dims.first ?? 1 }
    var rowCount: Int { dims.dropFirst().reduce(1, *) }
}

/// A GGUF checkpoint (llama.cpp's format, versions 2 and 3), memory-mapped and parsed.
///
/// Layout (all integers little-endian; a string is a UInt64 byte count and UTF-8 bytes):
/// ```
/// "GGUF"  version: UInt32  tensor_count: UInt64  metadata_kv_count: UInt64
/// metadata_kv_count × (key: string, value_type: UInt32, value)
/// tensor_count × (name: string, n_dims: UInt32, ne: n_dims × UInt64, type: UInt32, offset: UInt64)
/// padding to `general.alignment` (default 32); the data section starts here
/// tensor data at data start + offset
/// ```
/// Parsing reads every byte through bounds checks, so a truncated or corrupt file throws a
/// ``CheckpointError`` rather than crashing. Tensor data stays on disk (in the page cache)
/// until ``float32(_:)`` converts it.
public final class GGUFFile: @unchecked Sendable {
    public let url: URL
    /// 2 or 3 (the same layout; version 1 used 32-bit counts and is not read).
    public let version: UInt32
    /// Every key-value pair, e.g. `llama.block_count`, `tokenizer.ggml.tokens`.
    public let metadata: [String: GGUFValue]
    /// Tensor descriptions in file order.
    public let tensorInfos: [GGUFTensorInfo]
    /// `general.alignment`, or 32.
    public let alignment: Int
    /// Absolute byte offset where the data section starts.
    public let dataOffset: Int

    let file: MappedFile
    private let index: [String: Int]

    /// Deepest array nesting accepted; deeper is a crafted file, not a model.
    static let maxArrayDepth = 8
    /// ggml's GGML_MAX_DIMS.
    static let maxDims = 4

    /// Maps and parses the file; tensor bytes are only checked to lie inside the file.
    public convenience init(url: URL) throws(CheckpointError) {
        try self.init(file: MappedFile(url: url), url: url)
    }

    /// Parses a GGUF image held in memory; `path` names it in errors.
    public convenience init(bytes: [UInt8], path: String) throws(CheckpointError) {
        try self.init(file: MappedFile(bytes: bytes, path: path), url: URL(fileURLWithPath: path))
    }

    private init(file: MappedFile, url: URL) throws(CheckpointError) {
        self.url = url
        self.file = file
        var r = ByteReader(file)
        let path = file.path

        try r.need(4)
        let magic = (0..<4).map { file.base.load(fromByteOffset: $0, as: UInt8.self) }
        guard magic == Array("GGUF".utf8) else { throw .badMagic(path: path, found: Self.show(magic)) }
        r.position = 4
        version = try r.u32()
        guard version == 2 || version == 3 else { throw .unsupportedVersion(path: path, version: version) }
        let tensorCount = try r.length()
        let keyCount = try r.length()

        // Each key-value pair takes at least 13 bytes (empty key, type, one byte).
        guard keyCount <= r.remaining / 13 else {
            throw .truncated(path: path, expected: Self.atLeast(r.position, keyCount, 13), actual: file.count)
        }
        var metadata: [String: GGUFValue] = [:]
        for _ in 0..<keyCount {
            let key = try r.string()
            guard metadata[key] == nil else { throw .badMetadata(path: path, key: key, reason: "duplicate key") }
            let type = try r.u32()
            metadata[key] = try Self.readValue(type: type, key: key, depth: 0, from: &r)
        }
        self.metadata = metadata

        var alignment = 32
        if let value = metadata["general.alignment"] {
            guard let a = value.int, a > 0, a & (a - 1) == 0 else {
                throw .badMetadata(path: path, key: "general.alignment", reason: "must be a power of two, found \(value)")
            }
            alignment = a
        }
        self.alignment = alignment

        // Each tensor info takes at least 24 bytes (empty name, n_dims, type, offset).
        guard tensorCount <= r.remaining / 24 else {
            throw .truncated(path: path, expected: Self.atLeast(r.position, tensorCount, 24), actual: file.count)
        }
        var raw: [(name: String, dims: [Int], type: GGMLType, offset: Int)] = []
        var index: [String: Int] = [:]
        for i in 0..<tensorCount {
            let name = try r.string()
            guard index[name] == nil else { throw .badTensorInfo(path: path, tensor: name, reason: "duplicate tensor name") }
            index[name] = i
            let n = try r.u32()
            guard n <= Self.maxDims else {
                throw .badTensorInfo(path: path, tensor: name, reason: "\(n) dimensions; ggml allows at most \(Self.maxDims)")
            }
            var dims: [Int] = []
            var product = 1
            for _ in 0..<n {
                let d = try r.u64()
                let (p, overflow) = product.multipliedReportingOverflow(by: Int(clamping: d))
                guard d <= UInt64(Int.max), !overflow else {
                    throw .badTensorInfo(path: path, tensor: name, reason: "dimension \(d) is too large")
                }
                dims.append(Int(d))
                product = p
            }
            let type = GGMLType(rawValue: try r.u32())
            let offset = try r.u64()
            guard offset <= UInt64(Int.max) else {
                throw .tensorOutOfBounds(path: path, tensor: name, end: Int.max, fileSize: file.count)
            }
            guard Int(offset) % alignment == 0 else {
                throw .badTensorInfo(path: path, tensor: name, reason: "offset \(offset) is not a multiple of the alignment \(alignment)")
            }
            raw.append((name, dims, type, Int(offset)))
        }
        self.index = index

        let (padded, overflow) = r.position.addingReportingOverflow(alignment - 1)
        precondition(!overflow, "position \(r.position) cannot overflow: it is inside the file")
        dataOffset = padded / alignment * alignment
        var infos: [GGUFTensorInfo] = []
        infos.reserveCapacity(raw.count)
        for t in raw {
            let byteCount = try Self.byteCount(name: t.name, dims: t.dims, type: t.type, path: path)
            if let byteCount {
                let (start, o1) = dataOffset.addingReportingOverflow(t.offset)
                let (end, o2) = start.addingReportingOverflow(byteCount)
                guard !o1, !o2, end <= file.count else {
                    throw .tensorOutOfBounds(path: path, tensor: t.name, end: o1 || o2 ? Int.max : end, fileSize: file.count)
                }
            }
            infos.append(GGUFTensorInfo(name: t.name, dims: t.dims, type: t.type, offset: t.offset, byteCount: byteCount))
        }
        tensorInfos = infos
    }

    /// The file's path, as errors name it.
    public var path: String { file.path }

    /// Size of the file in bytes.
    public var fileSize: Int { file.count }

    /// The description of tensor `name`, or nil when the file has none.
    public func info(_ name: String) -> GGUFTensorInfo? {
        index[name].map { tensorInfos[$0] }
    }

    /// Bytes of a tensor of a known type; the first dimension must hold whole blocks.
    private static func byteCount(name: String, dims: [Int], type: GGMLType, path: String) throws(CheckpointError) -> Int? {
        guard let blockElements = type.blockElements, let blockBytes = type.blockBytes else { return nil }
        let rowLength = dims.first ?? 1
        guard rowLength % blockElements == 0 else {
            throw .badTensorInfo(path: path, tensor: name, reason: "first dimension \(rowLength) is not a multiple of \(type.name)'s block of \(blockElements)")
        }
        let (bytes, overflow) = (dims.reduce(1, *) / blockElements).multipliedReportingOverflow(by: blockBytes)
        guard !overflow else { throw .badTensorInfo(path: path, tensor: name, reason: "too large") }
        return bytes
    }

    /// Minimum byte size of one value of a GGUF value type, for sanity-checking array counts.
    private static func minimumSize(of type: UInt32) -> Int? {
        switch type {
        case 0, 1, 7: return 1
        case 2, 3: return 2
        case 4, 5, 6: return 4
        case 8, 10, 11, 12: return 8
        case 9: return 12
        default: return nil
        }
    }

    private static func readValue(type: UInt32, key: String, depth: Int, from r: inout ByteReader) throws(CheckpointError) -> GGUFValue {
        switch type {
        case 0: return .uint8(try r.load(UInt8.self))
        case 1: return .int8(try r.load(Int8.self))
        case 2: return .uint16(try r.load(UInt16.self))
        case 3: return .int16(try r.load(Int16.self))
        case 4: return .uint32(try r.load(UInt32.self))
        case 5: return .int32(try r.load(Int32.self))
        case 6: return .float32(Float(bitPattern: try r.load(UInt32.self)))
        case 7: return .bool(try r.load(UInt8.self) != 0)
        case 8: return .string(try r.string())
        case 9:
            guard depth < maxArrayDepth else {
                throw .badMetadata(path: r.path, key: key, reason: "arrays nested deeper than \(maxArrayDepth)")
            }
            let elementType = try r.u32()
            let count = try r.length()
            guard let size = minimumSize(of: elementType) else {
                throw .badMetadata(path: r.path, key: key, reason: "unknown array element type \(elementType)")
            }
            guard count <= r.remaining / size else {
                throw .truncated(path: r.path, expected: atLeast(r.position, count, size), actual: r.count)
            }
            var values: [GGUFValue] = []
            values.reserveCapacity(count)
            for _ in 0..<count {
                values.append(try readValue(type: elementType, key: key, depth: depth + 1, from: &r))
            }
            return .array(values)
        case 10: return .uint64(try r.load(UInt64.self))
        case 11: return .int64(try r.load(Int64.self))
        case 12: return .float64(Double(bitPattern: try r.load(UInt64.self)))
        default:
            throw .badMetadata(path: r.path, key: key, reason: "unknown value type \(type)")
        }
    }

    /// `position + count·size`, saturating: the size a declared count needs.
    private static func atLeast(_ position: Int, _ count: Int, _ size: Int) -> Int {
        let (bytes, o1) = count.multipliedReportingOverflow(by: size)
        let (end, o2) = position.addingReportingOverflow(bytes)
        return o1 || o2 ? Int.max : end
    }

    /// Magic bytes for an error message: quoted if printable ASCII, else hex.
    private static func show(_ bytes: [UInt8]) -> String {
        if bytes.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) { return "\"\(String(decoding: bytes, as: UTF8.self))\"" }
        return "0x" + bytes.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
    }
}
