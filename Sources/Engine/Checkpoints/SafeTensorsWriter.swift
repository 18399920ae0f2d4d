import Foundation

/// Writes Float32 tensors as a `.safetensors` file (e.g. a PEFT `adapter_model.safetensors`).
public enum SafeTensorsWriter {
    /// Writes `tensors` in the given order, row-major little-endian F32, with `metadata` as
    /// the header's `__metadata__` (omitted when empty). The JSON header is padded with
    /// spaces so the data section starts at a multiple of 8 bytes. Replaces `url` atomically
    /// (temporary file, fsync, rename).
    ///
    /// Names must be unique and `values.count` must equal the product of `shape`
    /// (preconditions: a violation is a bug in the caller).
    public static func write(_ tensors: [(name: String, shape: [Int], values: [Float])],
                             metadata: [String: String] = [:], to url: URL) throws(CheckpointError) {
        do {
            try AtomicFile.write(encode(tensors, metadata: metadata), to: url)
        } catch {
            throw .unwritable(path: url.path, reason: error.localizedDescription)
        }
    }

    /// The bytes of the file ``write(_:metadata:to:)`` writes.
    public static func encode(_ tensors: [(name: String, shape: [Int], values: [Float])], metadata: [String: String] = [:]) -> Data {
        for t in tensors {
            precondition(t.shape.allSatisfy { $0 >= 0 } && t.shape.reduce(1, *) == t.values.count,
                         "tensor '\(t.name)': shape \(t.shape) does not hold \(t.values.count) values")
        }
        return encode(tensors.map { ($0.name, "F32", $0.shape, 4 * $0.values.count) }, metadata: metadata) { i, data in
            #if _endian(little)
            tensors[i].values.withUnsafeBytes { data.append(contentsOf: $0) }
            #else
            for v in tensors[i].values { withUnsafeBytes(of: v.bitPattern.littleEndian) { data.append(contentsOf: $0) } }
            #endif
        }
    }

    /// Writes signed 8-bit integer tensors (`I8`), atomically, as ``write(_:metadata:to:)`` does.
    public static func write(int8 tensors: [(name: String, shape: [Int], values: [Int8])], metadata: [String: String] = [:],
                             to url: URL) throws(CheckpointError) {
        for t in tensors {
            precondition(t.shape.allSatisfy { $0 >= 0 } && t.shape.reduce(1, *) == t.values.count,
                         "tensor '\(t.name)': shape \(t.shape) does not hold \(t.values.count) values")
        }
        let data = encode(tensors.map { ($0.name, "I8", $0.shape, $0.values.count) }, metadata: metadata) { i, data in
            tensors[i].values.withUnsafeBytes { data.append(contentsOf: $0) }
        }
        do { try AtomicFile.write(data, to: url) } catch { throw .unwritable(path: url.path, reason: error.localizedDescription) }
    }

    /// Writes 64-bit float tensors (`F64`), atomically.
    public static func write(float64 tensors: [(name: String, values: [Double])], to url: URL) throws(CheckpointError) {
        let data = encode(tensors.map { ($0.name, "F64", [$0.values.count], 8 * $0.values.count) }, metadata: [:]) { i, data in
            #if _endian(little)
            tensors[i].values.withUnsafeBytes { data.append(contentsOf: $0) }
            #else
            for v in tensors[i].values { withUnsafeBytes(of: v.bitPattern.littleEndian) { data.append(contentsOf: $0) } }
            #endif
        }
        do { try AtomicFile.write(data, to: url) } catch { throw .unwritable(path: url.path, reason: error.localizedDescription) }
    }

    /// The header for tensors of (name, dtype, shape, bytes), then each tensor's bytes from `body`.
    static func encode(_ entries: [(name: String, dtype: String, shape: [Int], bytes: Int)], metadata: [String: String],
                       body: (Int, inout Data) -> Void) -> Data {
        var header = "{"
        var fields: [String] = []
        if !metadata.isEmpty {
            let pairs = metadata.keys.sorted().map { "\(quote($0)):\(quote(metadata[$0]!))" }
            fields.append("\"__metadata__\":{\(pairs.joined(separator: ","))}")
        }
        var offset = 0
        var seen = Set<String>()
        for t in entries {
            precondition(t.name != "__metadata__" && seen.insert(t.name).inserted, "duplicate or reserved tensor name '\(t.name)'")
            let end = offset + t.bytes
            let shape = t.shape.map(String.init).joined(separator: ",")
            fields.append("\(quote(t.name)):{\"dtype\":\"\(t.dtype)\",\"shape\":[\(shape)],\"data_offsets\":[\(offset),\(end)]}")
            offset = end
        }
        header += fields.joined(separator: ",") + "}"
        var headerBytes = Array(header.utf8)
        while headerBytes.count % 8 != 0 { headerBytes.append(0x20) }

        var data = Data(capacity: 8 + headerBytes.count + offset)
        withUnsafeBytes(of: UInt64(headerBytes.count).littleEndian) { data.append(contentsOf: $0) }
        data.append(contentsOf: headerBytes)
        for i in entries.indices { body(i, &data) }
        return data
    }

    /// A JSON string literal (``JSONString/literal(_:)``).
    static func quote(_ s: String) -> String { JSONString.literal(s) }
}
