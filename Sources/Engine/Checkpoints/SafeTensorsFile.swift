import Foundation

/// One `.safetensors` file (Hugging Face's format), memory-mapped and parsed.
///
/// Layout:
/// ```
/// header_length: UInt64 (little-endian)
/// header: header_length bytes of UTF-8 JSON, possibly padded with trailing spaces:
///   {"__metadata__": {"format": "pt"},
///    "h.0.attn.c_attn.weight": {"dtype": "F32", "shape": [768, 2304], "data_offsets": [0, 7077888]}, ...}
/// data: tensors at [8 + header_length + begin, 8 + header_length + end), row-major, little-endian
/// ```
/// The header is checked against the file when opened: every tensor's byte range must
/// match its dtype and shape and lie inside the file.
public final class SafeTensorsFile: @unchecked Sendable {
    /// One tensor's header entry.
    public struct TensorInfo: Equatable, Sendable {
        public let name: String
        /// `F32`, `F16`, `BF16`, `I64`, ... as written in the header.
        public let dtype: String
        /// Row-major shape.
        public let shape: [Int]
        /// Byte range relative to the start of the data section.
        public let dataOffsets: Range<Int>

        /// Number of values (1 for a scalar `shape == []`).
        public var elementCount: Int { shape.reduce(1, *) }
    }

    public let url: URL
    /// The header's `__metadata__` (string to string), empty when absent.
    public let metadata: [String: String]
    /// Tensors in data order.
    public let tensorInfos: [TensorInfo]
    /// Absolute byte offset of the data section (8 + header length).
    public let dataOffset: Int

    private let file: MappedFile
    private let index: [String: Int]

    /// Bytes per element of the dtypes the format defines; dtypes outside this table are
    /// accepted in the header but their sizes are not checked.
    static let dtypeSizes: [String: Int] = [
        "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
        "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
        "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8,
    ]

    /// The dtypes ``float32(_:)`` converts.
    public static let supportedDtypes = ["F32", "F16", "BF16"]

    private struct Entry: Decodable {
        var dtype: String?
        var shape: [Int]?
        var data_offsets: [Int]?
    }

    private struct MetadataOnly: Decodable {
        var __metadata__: [String: String]?
    }

    /// Maps the file and validates its header against the file size.
    public convenience init(url: URL) throws(CheckpointError) {
        try self.init(file: MappedFile(url: url), url: url)
    }

    /// Parses a safetensors image held in memory; `path` names it in errors.
    /// A file already in memory (fuzzing, tests).
    public convenience init(bytes: [UInt8], path: String) throws(CheckpointError) {
        try self.init(file: MappedFile(bytes: bytes, path: path), url: URL(fileURLWithPath: path))
    }

    private init(file: MappedFile, url: URL) throws(CheckpointError) {
        self.url = url
        self.file = file
        let path = file.path
        var r = ByteReader(file)
        let headerLength = try r.length()
        try r.need(headerLength)
        dataOffset = 8 + headerLength
        let json = Data(bytes: file.base + 8, count: headerLength)

        let entries: [String: Entry]
        do {
            metadata = try JSONDecoder().decode(MetadataOnly.self, from: json).__metadata__ ?? [:]
            var all = try JSONDecoder().decode([String: Entry].self, from: json)
            all["__metadata__"] = nil
            entries = all
        } catch {
            throw .badHeader(path: path, reason: Self.describe(error))
        }

        let dataSize = file.count - dataOffset
        var infos: [TensorInfo] = []
        for (name, e) in entries {
            guard let dtype = e.dtype, let shape = e.shape, let offsets = e.data_offsets else {
                throw .badHeader(path: path, reason: "tensor '\(name)' needs dtype, shape and data_offsets")
            }
            guard shape.allSatisfy({ $0 >= 0 }) else {
                throw .badHeader(path: path, reason: "tensor '\(name)' has a negative dimension in \(shape)")
            }
            guard offsets.count == 2, offsets[0] >= 0, offsets[0] <= offsets[1] else {
                throw .badHeader(path: path, reason: "tensor '\(name)' has data_offsets \(offsets); expected [begin, end] with 0 ≤ begin ≤ end")
            }
            var elements = 1
            for d in shape {
                let (p, overflow) = elements.multipliedReportingOverflow(by: d)
                guard !overflow else { throw .badHeader(path: path, reason: "tensor '\(name)' shape \(shape) is too large") }
                elements = p
            }
            if let size = Self.dtypeSizes[dtype] {
                let (bytes, overflow) = elements.multipliedReportingOverflow(by: size)
                guard !overflow, bytes == offsets[1] - offsets[0] else {
                    throw .badHeader(path: path, reason: "tensor '\(name)' (\(dtype), shape \(shape)) needs \(overflow ? "too many" : "\(bytes)") bytes but data_offsets \(offsets) span \(offsets[1] - offsets[0])")
                }
            }
            guard offsets[1] <= dataSize else {
                let (end, overflow) = dataOffset.addingReportingOverflow(offsets[1])
                throw .tensorOutOfBounds(path: path, tensor: name, end: overflow ? Int.max : end, fileSize: file.count)
            }
            infos.append(TensorInfo(name: name, dtype: dtype, shape: shape, dataOffsets: offsets[0]..<offsets[1]))
        }
        infos.sort { ($0.dataOffsets.lowerBound, $0.name) < ($1.dataOffsets.lowerBound, $1.name) }
        tensorInfos = infos
        index = Dictionary(uniqueKeysWithValues: infos.enumerated().map { ($1.name, $0) })
    }

    /// The file's path, as errors name it.
    public var path: String { file.path }

    /// The header entry of tensor `name`, or nil.
    public func info(_ name: String) -> TensorInfo? { index[name].map { tensorInfos[$0] } }

    /// The dtype as the header spells it (`F32`, `BF16`, ...), or nil.
    public func dtype(of name: String) -> String? { info(name)?.dtype }

    /// Converts a tensor into caller-owned memory; throws `.shapeMismatch` unless
    /// `buffer.count` is the tensor's element count.
    public func float32(_ name: String, into buffer: UnsafeMutableBufferPointer<Float>) throws(CheckpointError) {
        let info = try convertible(name)
        guard buffer.count == info.elementCount else {
            throw .shapeMismatch(path: path, tensor: name, expected: [buffer.count], found: info.shape)
        }
        if buffer.count > 0 { convert(info, into: buffer.baseAddress!) }
    }

    private func convertible(_ name: String) throws(CheckpointError) -> TensorInfo {
        guard let info = info(name) else { throw .missingTensor(path: path, tensor: name) }
        guard Self.supportedDtypes.contains(info.dtype) else {
            throw .unsupportedTensorType(path: path, tensor: name, type: info.dtype, supported: Self.supportedDtypes)
        }
        return info
    }

    /// A 64-bit float tensor (`F64`), row-major, little-endian.
    public func float64(_ name: String) throws(CheckpointError) -> [Double] {
        guard let info = info(name) else { throw .missingTensor(path: path, tensor: name) }
        guard info.dtype == "F64" else { throw .unsupportedTensorType(path: path, tensor: name, type: info.dtype, supported: ["F64"]) }
        let source = UnsafeRawPointer(file.base + dataOffset + info.dataOffsets.lowerBound)
        let values = (0..<info.elementCount).map { Double(bitPattern: UInt64(littleEndian: source.loadUnaligned(fromByteOffset: 8 * $0, as: UInt64.self))) }
        if let i = values.firstIndex(where: { !$0.isFinite }) { throw .nonFinite(path: path, tensor: name, index: i, value: Float(values[i])) }
        return values
    }

    /// A signed 8-bit integer tensor (`I8`), row-major.
    public func int8(_ name: String) throws(CheckpointError) -> [Int8] {
        guard let info = info(name) else { throw .missingTensor(path: path, tensor: name) }
        guard info.dtype == "I8" else { throw .unsupportedTensorType(path: path, tensor: name, type: info.dtype, supported: ["I8"]) }
        let source = UnsafeRawPointer(file.base + dataOffset + info.dataOffsets.lowerBound)
        return Array(UnsafeBufferPointer(start: source.assumingMemoryBound(to: Int8.self), count: info.elementCount))
    }

    /// Same kernels as GGUF: safetensors' F32, F16 and BF16 are ggml's F32, F16 and BF16.
    private func convert(_ info: TensorInfo, into out: UnsafeMutablePointer<Float>) {
        let source = file.base + dataOffset + info.dataOffsets.lowerBound
        let type: GGMLType = info.dtype == "F32" ? .f32 : info.dtype == "F16" ? .f16 : .bf16
        GGUFFile.dequantize(type, from: source, count: info.elementCount, into: out)
    }

    /// Decoding errors as one line: what was wrong and where in the JSON.
    static func describe(_ error: any Error) -> String {
        func at(_ path: [any CodingKey]) -> String {
            path.isEmpty ? "" : " at " + path.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
        }
        switch error as? DecodingError {
        case .typeMismatch(_, let c)?, .valueNotFound(_, let c)?, .dataCorrupted(let c)?:
            let underlying = c.underlyingError.map { ": \($0.localizedDescription)" } ?? ""
            return c.debugDescription + at(c.codingPath) + underlying
        case .keyNotFound(let key, let c)?:
            return "missing key '\(key.stringValue)'" + at(c.codingPath)
        default:
            return "\(error)"
        }
    }
}

extension SafeTensorsFile: TensorSource {
    /// Tensor names in data order.
    public var tensorNames: [String] { tensorInfos.map(\.name) }

    /// Row-major shape, or nil.
    public func shape(of name: String) -> [Int]? { info(name)?.shape }

    /// A tensor's values as Float32, row-major; F32, F16 and BF16 convert exactly.
    public func float32(_ name: String) throws(CheckpointError) -> [Float] {
        let info = try convertible(name)
        let count = info.elementCount
        // In chunks, each one's mapped pages dropped once converted: a large tensor (an
        // embedding) is never resident twice, as file pages and as its copy.
        let size = Self.dtypeSizes[info.dtype]!, chunk = 1 << 20
        let type: GGMLType = info.dtype == "F32" ? .f32 : info.dtype == "F16" ? .f16 : .bf16
        let values = [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
            var start = 0
            while start < count {
                let n = min(chunk, count - start)
                let from = dataOffset + info.dataOffsets.lowerBound + start * size
                GGUFFile.dequantize(type, from: file.base + from, count: n, into: buffer.baseAddress! + start)
                file.release(from..<(from + n * size))
                start += n
            }
            initialized = count
        }
        return values
    }
}
