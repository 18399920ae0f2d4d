/// How text is cut into pieces before byte-level BPE merges run inside each piece.
///
/// Both variants are hand-written scanners over Unicode scalars with the exact semantics
/// of the regular expressions they stand for (`\p{L}`: general category L*, `\p{N}`:
/// Nd/Nl/No, `\s`: the White_Space property); merges never cross a piece boundary.
public enum PreTokenizer: String, Sendable, CaseIterable {
    /// OpenAI's GPT-2 split, the first alternative that matches at each position of
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
    /// Contractions are case-sensitive and use the ASCII apostrophe only. A run of
    /// whitespace before a word keeps its last space for the word (`"a  b"` → `a`, ` `,
    /// ` b`), except at the end of the text, where the whole run is one piece.
    case gpt2
    /// llama.cpp's `smollm` pre-tokenizer (SmolLM2): first every `\p{N}` scalar becomes its
    /// own piece, then each stretch between them is split as ``gpt2`` on its own, so
    /// `"x  123"` gives `x`, `  `, `1`, `2`, `3` (the same as Hugging Face's
    /// `Sequence[Digits(individual_digits), ByteLevel]`).
    case smollm

    /// The pieces of `text`, in order; concatenated they give `text` back.
    public func split(_ text: String) -> [String] {
        let bytes = Array(text.utf8)
        var ranges: [Range<Int>] = []
        bytes.withUnsafeBufferPointer { appendPieces(of: $0, in: 0..<$0.count, to: &ranges) }
        return ranges.map { String(decoding: bytes[$0], as: UTF8.self) }
    }

    /// Appends the byte ranges of the pieces of `utf8[range]` (valid UTF-8 that starts and
    /// ends on scalar boundaries) to `pieces`.
    func appendPieces(of utf8: UnsafeBufferPointer<UInt8>, in range: Range<Int>, to pieces: inout [Range<Int>]) {
        guard !range.isEmpty else { return }
        let scan = ScalarScan(utf8: utf8, range: range)
        switch self {
        case .gpt2:
            scan.appendGPT2Pieces(in: 0..<scan.count, to: &pieces)
        case .smollm:
            var start = 0
            for i in 0..<scan.count where scan.kinds[i] == ScalarKind.number {
                scan.appendGPT2Pieces(in: start..<i, to: &pieces)
                pieces.append(scan.byteRange(i..<i + 1))
                start = i + 1
            }
            scan.appendGPT2Pieces(in: start..<scan.count, to: &pieces)
        }
    }
}

/// The character classes the GPT-2 expression distinguishes.
enum ScalarKind {
    static let other: UInt8 = 0
    static let letter: UInt8 = 1
    static let number: UInt8 = 2
    /// `\s` other than U+0020.
    static let whitespace: UInt8 = 3
    /// U+0020, the only scalar the optional ` ?` prefixes accept.
    static let space: UInt8 = 4

    private static let ascii: [UInt8] = (0..<128).map { v -> UInt8 in
        switch v {
        case 0x20: return space
        case 0x09...0x0D: return whitespace
        case 0x30...0x39: return number
        case 0x41...0x5A, 0x61...0x7A: return letter
        default: return other
        }
    }

    static func of(_ value: UInt32) -> UInt8 {
        if value < 128 { return ascii[Int(value)] }
        let properties = Unicode.Scalar(value)!.properties
        if properties.isWhitespace { return whitespace }
        switch properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter:
            return letter
        case .decimalNumber, .letterNumber, .otherNumber:
            return number
        default:
            return other
        }
    }
}

/// One stretch of text decoded into scalars, with their classes and byte offsets.
struct ScalarScan {
    var values: [UInt32] = []
    var kinds: [UInt8] = []
    /// `byteOffsets[i]` is where scalar i starts in the buffer; one extra entry at the end.
    var byteOffsets: [Int] = []

    var count: Int { values.count }

    init(utf8: UnsafeBufferPointer<UInt8>, range: Range<Int>) {
        values.reserveCapacity(range.count)
        kinds.reserveCapacity(range.count)
        byteOffsets.reserveCapacity(range.count + 1)
        var i = range.lowerBound
        while i < range.upperBound {
            let b0 = UInt32(utf8[i])
            var value: UInt32
            var width: Int
            if b0 < 0x80 {
                value = b0; width = 1
            } else if b0 < 0xE0 {
                value = (b0 & 0x1F) << 6 | UInt32(utf8[i + 1] & 0x3F); width = 2
            } else if b0 < 0xF0 {
                value = (b0 & 0x0F) << 12 | UInt32(utf8[i + 1] & 0x3F) << 6 | UInt32(utf8[i + 2] & 0x3F)
                width = 3
            } else {
                value = (b0 & 0x07) << 18 | UInt32(utf8[i + 1] & 0x3F) << 12
                    | UInt32(utf8[i + 2] & 0x3F) << 6 | UInt32(utf8[i + 3] & 0x3F)
                width = 4
            }
            values.append(value)
            kinds.append(ScalarKind.of(value))
            byteOffsets.append(i)
            i += width
        }
        byteOffsets.append(range.upperBound)
    }

    func byteRange(_ scalars: Range<Int>) -> Range<Int> {
        byteOffsets[scalars.lowerBound]..<byteOffsets[scalars.upperBound]
    }

    /// Splits scalars `range` with the GPT-2 expression, as if they were the whole text
    /// (so `(?!\S)` succeeds at `range.upperBound`).
    func appendGPT2Pieces(in range: Range<Int>, to pieces: inout [Range<Int>]) {
        var i = range.lowerBound
        while i < range.upperBound {
            let end = gpt2PieceEnd(from: i, limit: range.upperBound)
            pieces.append(byteRange(i..<end))
            i = end
        }
    }

    /// The end of the piece the GPT-2 expression matches at scalar `i`.
    private func gpt2PieceEnd(from i: Int, limit: Int) -> Int {
        // 's 't 're 've 'm 'll 'd
        if values[i] == 0x27, i + 1 < limit {
            switch values[i + 1] {
            case 0x73, 0x74, 0x6D, 0x64: return i + 2  // s t m d
            case 0x72 where i + 2 < limit && values[i + 2] == 0x65: return i + 3  // re
            case 0x76 where i + 2 < limit && values[i + 2] == 0x65: return i + 3  // ve
            case 0x6C where i + 2 < limit && values[i + 2] == 0x6C: return i + 3  // ll
            default: break
            }
        }
        // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: the optional space joins a following
        // run of one class.
        var start = i
        if kinds[i] == ScalarKind.space, i + 1 < limit, kinds[i + 1] <= ScalarKind.number { start = i + 1 }
        let kind = kinds[start]
        if kind <= ScalarKind.number {
            var j = start + 1
            while j < limit && kinds[j] == kind { j += 1 }
            return j
        }
        // Whitespace run [i, j). `\s+(?!\S)` takes it all at the end of the text, or all
        // but its last scalar when a non-space follows; `\s+` takes a lone one.
        var j = i + 1
        while j < limit && kinds[j] >= ScalarKind.whitespace { j += 1 }
        if j == limit || j - i == 1 { return j }
        return j - 1
    }
}
