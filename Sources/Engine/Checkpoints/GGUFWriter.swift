import Foundation

/// Writes GGUF v3 files (the layout ``GGUFFile`` reads and llama.cpp's gguf-py writes):
/// header, metadata, tensor infos, then each tensor's data at a 32-byte aligned offset.
/// Tensors are F32 or F16; shapes are given row-major and stored in ggml order (reversed).
public enum GGUFWriter {
    public enum TensorType: Sendable {
        case f32, f16
        var code: UInt32 { self == .f32 ? 0 : 1 }
        var bytes: Int { self == .f32 ? 4 : 2 }
    }

    public struct Tensor {
        public var name: String
        /// Row-major, as ``GGUFFile`` reports it: a (rows, columns) matrix is [rows, columns].
        public var shape: [Int]
        public var values: [Float]
        public var type: TensorType
        public init(name: String, shape: [Int], values: [Float], type: TensorType) {
            precondition(shape.reduce(1, *) == values.count, "tensor '\(name)': shape \(shape) does not hold \(values.count) values")
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
            offset += padded(t.values.count * t.type.bytes)
        }
        head.append(contentsOf: [UInt8](repeating: 0, count: padded(head.count) - head.count))
        var data = head
        data.reserveCapacity(head.count + offset)
        for t in tensors {
            let start = data.count
            switch t.type {
            case .f32: for v in t.values { append(v.bitPattern, to: &data) }
            case .f16: for v in t.values { append(halfBits(v), to: &data) }
            }
            data.append(contentsOf: [UInt8](repeating: 0, count: padded(data.count - start) - (data.count - start)))
        }
        do { try AtomicFile.write(data, to: url) } catch { throw .unwritable(path: url.path, reason: error.localizedDescription) }
    }

    /// IEEE binary16 bits of `v`, rounded to nearest even (inf and NaN kept).
    public static func halfBits(_ v: Float) -> UInt16 { Float16(v).bitPattern }

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
