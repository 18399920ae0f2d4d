/// One GGUF metadata value. The case is the type stored in the file (GGUF value type
/// numbers in parentheses), so values round-trip exactly; the accessors convert.
///
/// Arrays hold one element type, which may itself be `array` (nested arrays).
public enum GGUFValue: Equatable, Sendable {
    case uint8(UInt8)       // 0
    case int8(Int8)         // 1
    case uint16(UInt16)     // 2
    case int16(Int16)       // 3
    case uint32(UInt32)     // 4
    case int32(Int32)       // 5
    case float32(Float)     // 6
    case bool(Bool)         // 7
    case string(String)     // 8
    case array([GGUFValue]) // 9: element type UInt32, count UInt64, elements
    case uint64(UInt64)     // 10
    case int64(Int64)       // 11
    case float64(Double)    // 12

    /// Any integer case as `Int`; nil for other cases and for a `uint64` above `Int.max`.
    public var int: Int? {
        switch self {
        case .uint8(let v): return Int(v)
        case .int8(let v): return Int(v)
        case .uint16(let v): return Int(v)
        case .int16(let v): return Int(v)
        case .uint32(let v): return Int(v)
        case .int32(let v): return Int(v)
        case .uint64(let v): return Int(exactly: v)
        case .int64(let v): return Int(v)
        default: return nil
        }
    }

    /// `float32` and `float64` as `Double`, and integers converted (e.g. a RoPE base
    /// written as an integer); nil for strings, bools and arrays.
    public var double: Double? {
        switch self {
        case .float32(let v): return Double(v)
        case .float64(let v): return v
        case .uint64(let v): return Double(v)
        default: return int.map(Double.init)
        }
    }

    public var string: String? {
        if case .string(let v) = self { return v }
        return nil
    }

    public var bool: Bool? {
        if case .bool(let v) = self { return v }
        return nil
    }

    public var array: [GGUFValue]? {
        if case .array(let v) = self { return v }
        return nil
    }

    /// An array whose elements are all strings (e.g. `tokenizer.ggml.tokens`).
    public var strings: [String]? {
        guard case .array(let values) = self else { return nil }
        var out: [String] = []
        out.reserveCapacity(values.count)
        for v in values {
            guard case .string(let s) = v else { return nil }
            out.append(s)
        }
        return out
    }

    /// An array whose elements are all integers (e.g. `tokenizer.ggml.token_type`).
    public var ints: [Int]? {
        guard case .array(let values) = self else { return nil }
        var out: [Int] = []
        out.reserveCapacity(values.count)
        for v in values {
            guard let i = v.int else { return nil }
            out.append(i)
        }
        return out
    }
}
