import Dispatch
import Foundation

extension GGUFFile {
    /// A tensor's values as Float32, row-major (`info.shape`), `elementCount` long.
    ///
    /// F32, F16 and BF16 convert exactly; quantized blocks give `w = d·q` (Q8_0),
    /// `w = d·(q − 8)` (Q4_0) or `w = d·q + m` (Q4_1), computed in Float32 without fused
    /// multiply-add, as ggml's reference dequantization does. See ``GGMLType`` for the layouts.
    public func float32(_ name: String) throws(CheckpointError) -> [Float] {
        let info = try convertible(name)
        let count = info.elementCount
        return [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
            if count > 0 { convert(info, firstElement: 0, count: count, into: buffer.baseAddress!) }
            initialized = count
        }
    }

    /// Converts a tensor into caller-owned memory (e.g. a model's parameter storage), so
    /// large tensors are written once. Throws `.shapeMismatch` unless `buffer.count` is the
    /// tensor's element count (`expected` is then `[buffer.count]`).
    public func float32(_ name: String, into buffer: UnsafeMutableBufferPointer<Float>) throws(CheckpointError) {
        let info = try convertible(name)
        guard buffer.count == info.elementCount else {
            throw .shapeMismatch(path: path, tensor: name, expected: [buffer.count], found: info.shape)
        }
        if buffer.count > 0 { convert(info, firstElement: 0, count: buffer.count, into: buffer.baseAddress!) }
    }

    /// Rows `rows` of a tensor seen as a (rowCount, rowLength) matrix, where rowLength is
    /// `dims[0]` (the last entry of `shape`): `rows.count × rowLength` values. Reads only
    /// those rows, e.g. a few token embeddings without converting the whole table.
    public func float32(_ name: String, rows: Range<Int>) throws(CheckpointError) -> [Float] {
        let info = try convertible(name)
        precondition(rows.lowerBound >= 0 && rows.upperBound <= info.rowCount,
                     "rows \(rows) out of range for tensor '\(name)' with \(info.rowCount) rows (shape \(info.shape))")
        let count = rows.count * info.rowLength
        return [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
            if count > 0 { convert(info, firstElement: rows.lowerBound * info.rowLength, count: count, into: buffer.baseAddress!) }
            initialized = count
        }
    }

    /// A tensor's stored bytes, as they are in the file (blocks not dequantized); nil when
    /// there is no such tensor or its type is not one nb reads.
    public func rawBytes(of name: String) -> [UInt8]? {
        guard let info = info(name), info.type.isSupported, let count = info.byteCount else { return nil }
        return [UInt8](UnsafeRawBufferPointer(start: file.base + dataOffset + info.offset, count: count))
    }

    /// The info of a tensor whose type nb can convert.
    private func convertible(_ name: String) throws(CheckpointError) -> GGUFTensorInfo {
        guard let info = info(name) else { throw .missingTensor(path: path, tensor: name) }
        guard info.type.isKnown else { throw .unknownTensorType(path: path, tensor: name, rawType: info.type.rawValue) }
        guard info.type.isSupported else {
            throw .unsupportedTensorType(path: path, tensor: name, type: info.type.description,
                                         supported: GGMLType.supported.map(\.name))
        }
        return info
    }

    /// Elements per parallel chunk: big enough that scheduling costs nothing, a multiple of every block size.
    private static let chunkElements = 1 << 18

    /// Converts elements `firstElement ..< firstElement + count` (whole blocks; bounds were
    /// checked when the file was opened), splitting large tensors across cores.
    private func convert(_ info: GGUFTensorInfo, firstElement: Int, count: Int, into out: UnsafeMutablePointer<Float>) {
        let blockElements = info.type.blockElements!, blockBytes = info.type.blockBytes!
        let source = file.base + dataOffset + info.offset + firstElement / blockElements * blockBytes
        let type = info.type
        let chunks = (count + Self.chunkElements - 1) / Self.chunkElements
        if chunks <= 1 {
            Self.dequantize(type, from: source, count: count, into: out)
            return
        }
        // Chunks write disjoint ranges of `out`, so sharing the pointers is safe.
        let shared = SharedPointers(source: source, out: out)
        DispatchQueue.concurrentPerform(iterations: chunks) { chunk in
            let start = chunk * Self.chunkElements
            let n = min(Self.chunkElements, count - start)
            Self.dequantize(type, from: shared.source + start / blockElements * blockBytes, count: n, into: shared.out + start)
        }
    }

    private struct SharedPointers: @unchecked Sendable {
        let source: UnsafeRawPointer
        let out: UnsafeMutablePointer<Float>
    }

    /// The conversion kernels, on raw little-endian bytes; `count` is a whole number of blocks.
    static func dequantize(_ type: GGMLType, from source: UnsafeRawPointer, count: Int, into out: UnsafeMutablePointer<Float>) {
        switch type {
        case .f32:
            UnsafeMutableRawPointer(out).copyMemory(from: source, byteCount: count * 4)
        case .f16:
            halfTable.withUnsafeBufferPointer { table in
                for i in 0..<count {
                    out[i] = table[Int(source.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self).littleEndian)]
                }
            }
        case .bf16:
            for i in 0..<count {
                let bits = UInt32(source.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self).littleEndian)
                out[i] = Float(bitPattern: bits << 16)
            }
        case .q8_0:
            for b in 0..<count / 32 {
                let block = source + 34 * b, o = out + 32 * b
                let d = floatFromHalf(block.loadUnaligned(as: UInt16.self).littleEndian)
                for j in 0..<32 {
                    o[j] = d * Float(block.load(fromByteOffset: 2 + j, as: Int8.self))
                }
            }
        case .q4_0:
            for b in 0..<count / 32 {
                let block = source + 18 * b, o = out + 32 * b
                let d = floatFromHalf(block.loadUnaligned(as: UInt16.self).littleEndian)
                for j in 0..<16 {
                    let q = block.load(fromByteOffset: 2 + j, as: UInt8.self)
                    o[j] = d * Float(Int32(q & 0x0F) - 8)
                    o[j + 16] = d * Float(Int32(q >> 4) - 8)
                }
            }
        case .q4_1:
            for b in 0..<count / 32 {
                let block = source + 20 * b, o = out + 32 * b
                let d = floatFromHalf(block.loadUnaligned(as: UInt16.self).littleEndian)
                let m = floatFromHalf(block.loadUnaligned(fromByteOffset: 2, as: UInt16.self).littleEndian)
                for j in 0..<16 {
                    let q = block.load(fromByteOffset: 4 + j, as: UInt8.self)
                    o[j] = d * Float(q & 0x0F) + m
                    o[j + 16] = d * Float(q >> 4) + m
                }
            }
        default:
            preconditionFailure("GGUFFile.convertible admits only supported types, not \(type)")
        }
    }
}

/// IEEE 754 binary16 bits to Float32, exactly: normals and subnormals keep their value,
/// infinities stay infinite, NaN payloads are kept (shifted into the Float32 mantissa).
@inline(__always)
func floatFromHalf(_ h: UInt16) -> Float {
    let sign = UInt32(h & 0x8000) << 16
    let exponent = UInt32(h >> 10) & 0x1F
    let mantissa = UInt32(h & 0x3FF)
    if exponent == 0x1F { return Float(bitPattern: sign | 0x7F80_0000 | mantissa << 13) }
    if exponent != 0 { return Float(bitPattern: sign | (exponent + 112) << 23 | mantissa << 13) }
    let magnitude = Float(mantissa) * 0x1p-24  // subnormal (or zero): mantissa · 2^-24, exact in Float32
    return sign != 0 ? -magnitude : magnitude
}

/// Every binary16 bit pattern converted once (256 KiB), for F16 tensors.
let halfTable: [Float] = (0...UInt16.max).map(floatFromHalf)
