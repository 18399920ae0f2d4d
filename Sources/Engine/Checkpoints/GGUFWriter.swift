import Foundation

/// Writes GGUF v3 files (the layout ``GGUFFile`` reads and llama.cpp's gguf-py writes):
/// header, metadata, tensor infos, then each tensor's data at a 32-byte aligned offset.
/// Tensors are F32, F16, BF16 or the 32-value block types Q8_0, Q4_0 and Q4_1 (the layouts
/// ``GGMLType`` documents, quantized as ggml's reference quantizers do); shapes are given
/// row-major and stored in ggml order (reversed).
public enum GGUFWriter {
    public enum TensorType: String, Sendable, CaseIterable {
        case f32, f16, bf16, q8_0, q4_0, q4_1
        public var ggml: GGMLType {
            switch self {
            case .f32: .f32
            case .f16: .f16
            case .bf16: .bf16
            case .q8_0: .q8_0
            case .q4_0: .q4_0
            case .q4_1: .q4_1
            }
        }
        public init?(_ type: GGMLType) {
            guard let t = Self.allCases.first(where: { $0.ggml == type }) else { return nil }
            self = t
        }
        var code: UInt32 { ggml.rawValue }
        /// Values per block and bytes per block.
        var block: (values: Int, bytes: Int) {
            switch self {
            case .f32: (1, 4)
            case .f16, .bf16: (1, 2)
            case .q8_0: (32, 34)
            case .q4_0: (32, 18)
            case .q4_1: (32, 20)
            }
        }
        /// Whether a tensor of this shape can be stored so (block types need rows of whole blocks).
        public func fits(shape: [Int]) -> Bool { (shape.last ?? 0) % block.values == 0 }
    }

    public struct Tensor {
        public var name: String
        /// Row-major, as ``GGUFFile`` reports it: a (rows, columns) matrix is [rows, columns].
        public var shape: [Int]
        public var values: [Float]
        public var type: TensorType
        public init(name: String, shape: [Int], values: [Float], type: TensorType) {
            precondition(shape.reduce(1, *) == values.count, "tensor '\(name)': shape \(shape) does not hold \(values.count) values")
            precondition(type.fits(shape: shape), "tensor '\(name)': rows of \(shape.last ?? 0) values are not whole \(type) blocks")
            (self.name, self.shape, self.values, self.type) = (name, shape, values, type)
        }
    }

    static let alignment = 32

    /// Writes the file atomically (temporary file, fsync, rename). Metadata keys keep their order.
    public static func write(metadata: [(key: String, value: GGUFValue)], tensors: [Tensor], to url: URL) throws(CheckpointError) {
        var head = Data()
        head.append(contentsOf: Array("GGUF".utf8))
        append(UInt32(3), to: &head)
        append(UInt64(tensors.count), to: &head)
        append(UInt64(metadata.count), to: &head)
        for (key, value) in metadata {
            appendString(key, to: &head)
            append(typeCode(value), to: &head)
            appendValue(value, to: &head)
        }
        var offset = 0
        for t in tensors {
            appendString(t.name, to: &head)
            append(UInt32(t.shape.count), to: &head)
            for d in t.shape.reversed() { append(UInt64(d), to: &head) }
            append(t.type.code, to: &head)
            append(UInt64(offset), to: &head)
            offset += padded(t.values.count / t.type.block.values * t.type.block.bytes)
        }
        head.append(contentsOf: [UInt8](repeating: 0, count: padded(head.count) - head.count))
        var data = head
        data.reserveCapacity(head.count + offset)
        for t in tensors {
            let start = data.count
            switch t.type {
            case .f32: for v in t.values { append(v.bitPattern, to: &data) }
            case .f16: for v in t.values { append(halfBits(v), to: &data) }
            case .bf16: for v in t.values { append(bfloat16Bits(v), to: &data) }
            case .q8_0, .q4_0, .q4_1:
                t.values.withUnsafeBufferPointer { values in
                    for b in 0..<(values.count / 32) { appendBlock(t.type, UnsafeBufferPointer(rebasing: values[(32 * b)..<(32 * b + 32)]), to: &data) }
                }
            }
            data.append(contentsOf: [UInt8](repeating: 0, count: padded(data.count - start) - (data.count - start)))
        }
        do { try AtomicFile.write(data, to: url) } catch { throw .unwritable(path: url.path, reason: error.localizedDescription) }
    }

    /// IEEE binary16 bits of `v`, rounded to nearest even (inf and NaN kept).
    public static func halfBits(_ v: Float) -> UInt16 { Float16(v).bitPattern }

    /// The upper 16 bits of `v`, rounded to nearest even (NaN kept quiet).
    public static func bfloat16Bits(_ v: Float) -> UInt16 {
        if v.isNaN { return UInt16(v.bitPattern >> 16) | 0x40 }
        let bits = v.bitPattern
        return UInt16((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16)
    }

    /// One block of 32 values, as ggml's reference quantizers make it:
    /// - Q8_0: d = max|x| / 127, q = round(x / d) (half away from zero);
    /// - Q4_0: m = the value of largest magnitude (its sign kept), d = m / −8,
    ///   q = min(15, trunc(x / d + 8.5)), element j in the low nibble of byte j, j + 16 in the high;
    /// - Q4_1: d = (max − min) / 15, q = min(15, trunc((x − min) / d + 0.5)), m = min.
    /// d (and m) are stored as F16; the integers are computed with the unrounded d.
    static func appendBlock(_ type: TensorType, _ x: UnsafeBufferPointer<Float>, to data: inout Data) {
        switch type {
        case .q8_0:
            var amax: Float = 0
            for v in x { amax = max(amax, abs(v)) }
            let d = amax / 127, id = d != 0 ? 1 / d : 0
            append(halfBits(d), to: &data)
            for v in x { data.append(UInt8(bitPattern: Int8((v * id).rounded(.toNearestOrAwayFromZero)))) }
        case .q4_0:
            var amax: Float = 0, m: Float = 0
            for v in x where abs(v) > amax { (amax, m) = (abs(v), v) }
            let d = m / -8, id = d != 0 ? 1 / d : 0
            append(halfBits(d), to: &data)
            for j in 0..<16 {
                let lo = min(15, Int8(truncatingIfNeeded: Int(x[j] * id + 8.5))), hi = min(15, Int8(truncatingIfNeeded: Int(x[j + 16] * id + 8.5)))
                data.append(UInt8(lo) | UInt8(hi) << 4)
            }
        case .q4_1:
            var lo = Float.infinity, hi = -Float.infinity
            for v in x { lo = min(lo, v); hi = max(hi, v) }
            let d = (hi - lo) / 15, id = d != 0 ? 1 / d : 0
            append(halfBits(d), to: &data)
            append(halfBits(lo), to: &data)
            for j in 0..<16 {
                let a = min(15, Int8(truncatingIfNeeded: Int((x[j] - lo) * id + 0.5))), b = min(15, Int8(truncatingIfNeeded: Int((x[j + 16] - lo) * id + 0.5)))
                data.append(UInt8(a) | UInt8(b) << 4)
            }
        case .f32, .f16, .bf16:
            preconditionFailure("\(type) is not a block type")
        }
    }

    static func padded(_ n: Int) -> Int { (n + alignment - 1) / alignment * alignment }

    static func append<T: FixedWidthInteger>(_ v: T, to data: inout Data) {
        withUnsafeBytes(of: v.littleEndian) { data.append(contentsOf: $0) }
    }

    static func appendString(_ s: String, to data: inout Data) {
        append(UInt64(s.utf8.count), to: &data)
        data.append(contentsOf: Array(s.utf8))
    }

    static func typeCode(_ v: GGUFValue) -> UInt32 {
        switch v {
        case .uint8: 0
        case .int8: 1
        case .uint16: 2
        case .int16: 3
        case .uint32: 4
        case .int32: 5
        case .float32: 6
        case .bool: 7
        case .string: 8
        case .array: 9
        case .uint64: 10
        case .int64: 11
        case .float64: 12
        }
    }

    static func appendValue(_ v: GGUFValue, to data: inout Data) {
        switch v {
        case .uint8(let x): append(x, to: &data)
        case .int8(let x): append(x, to: &data)
        case .uint16(let x): append(x, to: &data)
        case .int16(let x): append(x, to: &data)
        case .uint32(let x): append(x, to: &data)
        case .int32(let x): append(x, to: &data)
        case .float32(let x): append(x.bitPattern, to: &data)
        case .bool(let x): data.append(x ? 1 : 0)
        case .string(let s): appendString(s, to: &data)
        case .array(let items):
            precondition(Set(items.map(typeCode)).count <= 1, "a GGUF array holds one type")
            append(items.first.map(typeCode) ?? 4, to: &data)
            append(UInt64(items.count), to: &data)
            for item in items { appendValue(item, to: &data) }
        case .uint64(let x): append(x, to: &data)
        case .int64(let x): append(x, to: &data)
        case .float64(let x): append(x.bitPattern, to: &data)
        }
    }
}
