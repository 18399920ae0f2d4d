/// A ggml tensor element type, as stored in a GGUF tensor info (UInt32).
///
/// A struct rather than an enum so that a type number nb has never heard of survives
/// parsing and can be named in the error. Block types pack `blockElements` consecutive
/// values of a row (along `ne[0]`) into `blockBytes` bytes; plain types have one element
/// per block.
///
/// Layouts nb converts to Float32 (all little-endian, f16 = IEEE 754 binary16):
/// - F32: 4 bytes per value. F16: 2 bytes. BF16: the upper 16 bits of a Float32.
/// - Q8_0: 34-byte blocks of 32: f16 `d`, 32 × int8 `q`; `w = d·q`.
/// - Q4_0: 18-byte blocks of 32: f16 `d`, 16 bytes; byte `j` holds element `j` in its low
///   nibble and element `j + 16` in its high nibble; `w = d·(q − 8)`.
/// - Q4_1: 20-byte blocks of 32: f16 `d`, f16 `m`, 16 bytes as in Q4_0; `w = d·q + m`.
public struct GGMLType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32

    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let f32 = GGMLType(rawValue: 0)
    public static let f16 = GGMLType(rawValue: 1)
    public static let q4_0 = GGMLType(rawValue: 2)
    public static let q4_1 = GGMLType(rawValue: 3)
    public static let q5_0 = GGMLType(rawValue: 6)
    public static let q5_1 = GGMLType(rawValue: 7)
    public static let q8_0 = GGMLType(rawValue: 8)
    public static let q4_k = GGMLType(rawValue: 12)
    public static let q5_k = GGMLType(rawValue: 13)
    public static let q6_k = GGMLType(rawValue: 14)
    public static let bf16 = GGMLType(rawValue: 30)

    /// The types ``GGUFFile/float32(_:)`` converts, in the order error messages list them.
    public static let supported: [GGMLType] = [.f32, .f16, .bf16, .q8_0, .q4_0, .q4_1]

    /// Every type number ggml has defined (numbers 4, 5 and 31–33, 36–38 were removed):
    /// name, elements per block, bytes per block.
    private static let known: [UInt32: (name: String, blockElements: Int, blockBytes: Int)] = [
        0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
        6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36),
        10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144),
        13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
        16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
        19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
        22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
        26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
        30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
        39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
    ]

    /// ggml's name (`Q4_1`), or `type 99` for a number nb does not know.
    public var name: String { Self.known[rawValue]?.name ?? "type \(rawValue)" }

    /// `Q5_K (13)`: name and number, as errors print it.
    public var description: String { "\(name) (\(rawValue))" }

    /// Whether ggml defines this type number (its size is then known even if nb cannot convert it).
    public var isKnown: Bool { Self.known[rawValue] != nil }

    /// Whether ``GGUFFile/float32(_:)`` can convert it.
    public var isSupported: Bool { Self.supported.contains(self) }

    /// Elements per block (1 for plain types); nil for unknown types.
    public var blockElements: Int? { Self.known[rawValue]?.blockElements }

    /// Bytes per block; nil for unknown types.
    public var blockBytes: Int? { Self.known[rawValue]?.blockBytes }
}
