import Foundation

/// Reads only the metadata of a GGUF file (header and key/value pairs), for tests that need
/// a model's tokenizer vocabulary. A stand-in until the Engine has its own GGUF reader.
///
/// Layout (little-endian): magic `GGUF`, version u32 (2 or 3), tensor count u64, metadata
/// count u64, then per pair a string key, a u32 value type and the value. Strings are a
/// u64 byte count and UTF-8 bytes; arrays are an element type u32, a u64 count, elements.
struct GGUFMetadataForTests {
    enum Value {
        case integer(Int)
        case float(Double)
        case bool(Bool)
        case string(String)
        case array([Value])
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    let values: [String: Value]

    init(url: URL) throws {
        let data = try Data(contentsOf: url, options: .alwaysMapped)
        values = try data.withUnsafeBytes { raw throws -> [String: Value] in
            var reader = Reader(bytes: raw, path: url.path)
            guard try reader.bytes(4) == Array("GGUF".utf8) else { throw Failure(description: "\(url.path): not a GGUF file") }
            let version = try reader.scalar(UInt32.self)
            guard version == 2 || version == 3 else { throw Failure(description: "\(url.path): GGUF version \(version)") }
            _ = try reader.scalar(UInt64.self)  // tensor count
            let count = try reader.scalar(UInt64.self)
            var values: [String: Value] = [:]
            for _ in 0..<count {
                let key = try reader.string()
                let type = try reader.scalar(UInt32.self)
                values[key] = try reader.value(type: type)
            }
            return values
        }
    }

    func string(_ key: String) throws -> String {
        guard case .string(let s)? = values[key] else { throw Failure(description: "GGUF: no string \(key)") }
        return s
    }

    func integer(_ key: String) throws -> Int {
        guard case .integer(let n)? = values[key] else { throw Failure(description: "GGUF: no integer \(key)") }
        return n
    }

    func bool(_ key: String) throws -> Bool {
        guard case .bool(let b)? = values[key] else { throw Failure(description: "GGUF: no bool \(key)") }
        return b
    }

    func strings(_ key: String) throws -> [String] {
        guard case .array(let items)? = values[key] else { throw Failure(description: "GGUF: no array \(key)") }
        return try items.map {
            guard case .string(let s) = $0 else { throw Failure(description: "GGUF: \(key) holds a non-string") }
            return s
        }
    }

    func integers(_ key: String) throws -> [Int] {
        guard case .array(let items)? = values[key] else { throw Failure(description: "GGUF: no array \(key)") }
        return try items.map {
            guard case .integer(let n) = $0 else { throw Failure(description: "GGUF: \(key) holds a non-integer") }
            return n
        }
    }

    private struct Reader {
        let bytes: UnsafeRawBufferPointer
        let path: String
        var offset = 0

        init(bytes: UnsafeRawBufferPointer, path: String) {
            self.bytes = bytes
            self.path = path
        }

        mutating func need(_ n: Int) throws {
            guard n >= 0, offset + n <= bytes.count else {
                throw Failure(description: "\(path): metadata ends early at byte \(offset)")
            }
        }

        mutating func scalar<T: FixedWidthInteger>(_: T.Type) throws -> T {
            try need(MemoryLayout<T>.size)
            defer { offset += MemoryLayout<T>.size }
            return T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
        }

        mutating func bytes(_ n: Int) throws -> [UInt8] {
            try need(n)
            defer { offset += n }
            return Array(bytes[offset..<offset + n])
        }

        mutating func string() throws -> String {
            let n = Int(try scalar(UInt64.self))
            try need(n)
            defer { offset += n }
            return String(decoding: UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + n]), as: UTF8.self)
        }

        mutating func value(type: UInt32) throws -> Value {
            switch type {
            case 0: return .integer(Int(try scalar(UInt8.self)))
            case 1: return .integer(Int(try scalar(Int8.self)))
            case 2: return .integer(Int(try scalar(UInt16.self)))
            case 3: return .integer(Int(try scalar(Int16.self)))
            case 4: return .integer(Int(try scalar(UInt32.self)))
            case 5: return .integer(Int(try scalar(Int32.self)))
            case 6: return .float(Double(Float(bitPattern: try scalar(UInt32.self))))
            case 7: return .bool(try scalar(UInt8.self) != 0)
            case 8: return .string(try string())
            case 9:
                let elementType = try scalar(UInt32.self)
                let count = Int(try scalar(UInt64.self))
                var items: [Value] = []
                items.reserveCapacity(count)
                for _ in 0..<count { items.append(try value(type: elementType)) }
                return .array(items)
            case 10: return .integer(Int(truncatingIfNeeded: try scalar(UInt64.self)))
            case 11: return .integer(Int(try scalar(Int64.self)))
            case 12: return .float(Double(bitPattern: try scalar(UInt64.self)))
            default: throw Failure(description: "\(path): unknown GGUF value type \(type) at byte \(offset)")
            }
        }
    }
}
