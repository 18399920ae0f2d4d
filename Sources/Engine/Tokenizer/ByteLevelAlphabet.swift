/// GPT-2's reversible map between bytes and printable Unicode scalars.
///
/// Byte-level BPE vocabularies (OpenAI's `encoder.json`, Hugging Face `tokenizer.json`,
/// GGUF `tokenizer.ggml.tokens`) spell every token as a string over 256 scalars, one per
/// byte: the bytes `!`…`~` (33–126), `¡`…`¬` (161–172) and `®`…`ÿ` (174–255) stand for
/// themselves, and the 68 others (control bytes, space, DEL, NBSP, soft hyphen), in
/// increasing order, become U+0100, U+0101, … — so the space byte 0x20 is `Ġ` (U+0120)
/// and the newline 0x0A is `Ċ` (U+010A).
enum ByteLevelAlphabet {
    /// `scalarOfByte[b]` is the scalar that spells byte `b`.
    static let scalarOfByte: [Unicode.Scalar] = {
        var table = [Unicode.Scalar](repeating: "\0", count: 256)
        var next: UInt32 = 256
        for byte in 0..<256 {
            if (33...126).contains(byte) || (161...172).contains(byte) || (174...255).contains(byte) {
                table[byte] = Unicode.Scalar(UInt32(byte))!
            } else {
                table[byte] = Unicode.Scalar(next)!
                next += 1
            }
        }
        return table
    }()

    /// The byte a scalar spells, or nil for a scalar outside the alphabet.
    static func byte(of scalar: Unicode.Scalar) -> UInt8? {
        let v = scalar.value
        if (33...126).contains(v) || (161...172).contains(v) || (174...255).contains(v) { return UInt8(v) }
        if v >= 256 && v < 256 + 68 { return byteOfExtraScalar[Int(v - 256)] }
        return nil
    }

    /// Bytes spelled by U+0100 + i, for the 68 bytes that are not printable themselves.
    private static let byteOfExtraScalar: [UInt8] = (0..<256).compactMap { byte -> UInt8? in
        let printable = (33...126).contains(byte) || (161...172).contains(byte) || (174...255).contains(byte)
        return printable ? nil : UInt8(byte)
    }

    /// The token string for a run of bytes (`" the"` → `"Ġthe"`).
    static func spell(_ bytes: some Sequence<UInt8>) -> String {
        var s = String.UnicodeScalarView()
        for b in bytes { s.append(scalarOfByte[Int(b)]) }
        return String(s)
    }

    /// The bytes a token string stands for. Scalars outside the alphabet (which a
    /// well-formed byte-level vocabulary never has) contribute their own UTF-8 bytes.
    static func bytes(of token: String) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(token.utf8.count)
        for scalar in token.unicodeScalars {
            if let b = byte(of: scalar) {
                out.append(b)
            } else {
                out.append(contentsOf: String(scalar).utf8)
            }
        }
        return out
    }
}
