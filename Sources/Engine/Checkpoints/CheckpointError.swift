import Foundation

/// Why a checkpoint file (GGUF, safetensors, or a sharded safetensors directory) cannot be
/// used. Every case names the file; cases about one tensor also name the tensor, so the CLI
/// can print `description` as a one-line message. Byte positions are absolute file offsets.
public enum CheckpointError: Error, Equatable, CustomStringConvertible {
    /// No file or directory at `path`.
    case notFound(path: String)
    /// The file exists but cannot be opened, mapped or written (`reason` is the OS's message).
    case unreadable(path: String, reason: String)
    /// The file ends before a structure it declares: `expected` bytes were needed, the file has `actual`.
    case truncated(path: String, expected: Int, actual: Int)
    /// The first bytes are not the format's magic (GGUF: `GGUF`); `found` is what is there.
    case badMagic(path: String, found: String)
    /// A GGUF version other than 2 or 3.
    case unsupportedVersion(path: String, version: UInt32)
    /// A metadata entry that cannot be parsed or has an unusable value.
    case badMetadata(path: String, key: String, reason: String)
    /// A tensor description (name, dimensions, offset) that is inconsistent.
    case badTensorInfo(path: String, tensor: String, reason: String)
    /// A GGUF tensor type number that is not a ggml type nb knows at all.
    case unknownTensorType(path: String, tensor: String, rawType: UInt32)
    /// A known tensor type (`type` as "Q5_K (13)" for GGUF, "I64" for safetensors) that nb
    /// cannot convert to Float32; `supported` lists what it can.
    case unsupportedTensorType(path: String, tensor: String, type: String, supported: [String])
    /// A tensor's bytes end at absolute offset `end`, past the end of the file (`fileSize` bytes).
    case tensorOutOfBounds(path: String, tensor: String, end: Int, fileSize: Int)
    /// A tensor has a different shape (row-major) than the model or the caller expects.
    case shapeMismatch(path: String, tensor: String, expected: [Int], found: [Int])
    /// A tensor the model needs is not in the checkpoint.
    case missingTensor(path: String, tensor: String)
    /// Tensors the model did not consume (strict loading: a misnamed key is an error).
    case unusedTensors(path: String, tensors: [String])
    /// A safetensors JSON header that is not valid or not consistent with the file.
    case badHeader(path: String, reason: String)
    /// A `model.safetensors.index.json` that is not valid.
    case badIndex(path: String, reason: String)
    /// The file cannot be written (`reason` is the OS's message).
    case unwritable(path: String, reason: String)
    /// The file's SHA-256 digest (lowercase hex) is not the expected one.
    case sha256Mismatch(path: String, expected: String, found: String)
    /// A tensor holds NaN or ±∞ (element `index`, row-major): a corrupt or diverged file.
    case nonFinite(path: String, tensor: String, index: Int, value: Float)

    /// The file or directory at fault.
    public var path: String {
        switch self {
        case .notFound(let p), .unreadable(let p, _), .truncated(let p, _, _), .badMagic(let p, _),
             .unsupportedVersion(let p, _), .badMetadata(let p, _, _), .badTensorInfo(let p, _, _),
             .unknownTensorType(let p, _, _), .unsupportedTensorType(let p, _, _, _),
             .tensorOutOfBounds(let p, _, _, _), .shapeMismatch(let p, _, _, _),
             .missingTensor(let p, _), .unusedTensors(let p, _), .badHeader(let p, _),
             .badIndex(let p, _), .unwritable(let p, _), .sha256Mismatch(let p, _, _), .nonFinite(let p, _, _, _):
            return p
        }
    }

    /// One line of at most ``Printable/maxLine`` characters: names and values read from the file
    /// (keys, tensor names, header text) have their control and invalid bytes escaped and are cut
    /// to a readable length, so a corrupt file cannot print megabytes or move the terminal.
    public var description: String { Printable.line(rawDescription) }

    private var rawDescription: String {
        let q = { (s: String) in Printable.name(s) }
        switch self {
        case .badMetadata(let p, let k, let r):
            return "\(p): metadata \(q(k)): \(r)"
        case .badTensorInfo(let p, let t, let r):
            return "\(p): tensor \(q(t)): \(r)"
        case .unknownTensorType(let p, let t, let raw):
            return "\(p): tensor \(q(t)) has unknown ggml type \(raw), which nb cannot read; supported: \(GGMLType.supported.map(\.name).joined(separator: ", "))"
        case .unsupportedTensorType(let p, let t, let type, let s):
            return "\(p): tensor \(q(t)) has type \(Printable.escaped(type, limit: 40)), which nb cannot read; supported: \(s.joined(separator: ", "))"
        case .tensorOutOfBounds(let p, let t, let end, let size):
            return "\(p): tensor \(q(t)) ends at byte \(end) but the file has \(size) bytes (truncated or corrupt file)"
        case .shapeMismatch(let p, let t, let e, let f):
            return "\(p): tensor \(q(t)) has shape \(f), expected \(e)"
        case .missingTensor(let p, let t):
            return "\(p): missing tensor \(q(t))"
        case .nonFinite(let p, let t, let i, let v):
            return "\(p): tensor \(q(t)) holds \(v) at element \(i): the file is corrupt or comes from a diverged run; nb loads only finite values"
        case .unusedTensors(let p, let ts):
            let shown = ts.prefix(5).map(q).joined(separator: ", ")
            let more = ts.count > 5 ? " and \(ts.count - 5) more" : ""
            return "\(p): \(ts.count) unused tensor\(ts.count == 1 ? "" : "s"): \(shown)\(more)"
        case .notFound(let p):
            return "\(p): no such file"
        case .unreadable(let p, let r):
            return "\(p): cannot read: \(r)"
        case .truncated(let p, let e, let a):
            return "\(p): file is truncated: needs at least \(e) bytes, has \(a)"
        case .badMagic(let p, let f):
            return "\(p): not a GGUF file (starts with \(f), expected \"GGUF\")"
        case .unsupportedVersion(let p, let v):
            return "\(p): GGUF version \(v) is not supported; nb reads versions 2 and 3"
        case .badHeader(let p, let r):
            return "\(p): bad safetensors header: \(r)"
        case .badIndex(let p, let r):
            return "\(p): bad safetensors index: \(r)"
        case .unwritable(let p, let r):
            return "\(p): cannot write: \(r)"
        case .sha256Mismatch(let p, let e, let f):
            return "\(p): SHA-256 is \(f), expected \(e) (corrupt or different file; delete it and download again)"
        }
    }
}

extension CheckpointError {
    /// Throws ``nonFinite(path:tensor:index:value:)`` at the first NaN or ±∞ of `values`
    /// (`offset`: the index of `values[0]` in the tensor).
    static func checkFinite(_ values: UnsafeBufferPointer<Float>, path: String, tensor: String, offset: Int = 0) throws(CheckpointError) {
        guard let base = values.baseAddress else { return }
        // A float is finite iff its exponent bits are not all ones; OR-reducing a flag per
        // block keeps the common case (all finite) a plain vectorizable pass.
        let bits = UnsafeRawPointer(base).assumingMemoryBound(to: UInt32.self)
        var start = 0
        while start < values.count {
            let end = min(values.count, start + 4096)
            var bad: UInt32 = 0
            for i in start..<end { bad |= (bits[i] & 0x7F80_0000) == 0x7F80_0000 ? 1 : 0 }
            if bad != 0, let i = (start..<end).first(where: { !base[$0].isFinite }) {
                throw .nonFinite(path: path, tensor: tensor, index: offset + i, value: base[i])
            }
            start = end
        }
    }
}

/// Text from outside (file contents, network input) made safe to print in one error line.
public enum Printable {
    /// The longest error line printed; the rest is cut with a note of how much.
    public static let maxLine = 1000
    /// The longest name quoted in a message.
    public static let maxName = 120

    /// `'name'`, with control characters, quotes, backslashes and bytes that were not UTF-8
    /// escaped (`\u{0}`), cut after ``maxName`` characters.
    public static func name(_ s: String) -> String {
        "'" + escaped(s, limit: maxName) + "'"
    }

    /// The whole line with control characters escaped and cut after ``maxLine`` characters.
    public static func line(_ s: String) -> String { escaped(s, limit: maxLine, keepQuotes: true) }

    static func escaped(_ s: String, limit: Int, keepQuotes: Bool = false) -> String {
        var out = ""
        var count = 0
        for scalar in s.unicodeScalars {
            if count == limit {
                let rest = s.unicodeScalars.count - count
                return out + "…(\(rest) more character\(rest == 1 ? "" : "s"))"
            }
            switch scalar {
            case "\\" where !keepQuotes: out += "\\\\"
            case "'" where !keepQuotes: out += "\\'"
            case "\u{FFFD}": out += "\\u{FFFD}"
            default:
                if scalar.value < 0x20 || (0x7F..<0xA0).contains(scalar.value) || scalar.properties.generalCategory == .format {
                    out += "\\u{" + String(scalar.value, radix: 16) + "}"
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
            count += 1
        }
        return out
    }
}

extension SHA256Digest {
    /// Checks a downloaded checkpoint against its published SHA-256 (lowercase or uppercase hex).
    public static func verify(fileAt url: URL, expected: String) throws(CheckpointError) {
        let found: String
        do {
            found = try hex(fileAt: url)
        } catch {
            if !FileManager.default.fileExists(atPath: url.path) { throw .notFound(path: url.path) }
            throw .unreadable(path: url.path, reason: "\(error.localizedDescription)")
        }
        if found != expected.lowercased() {
            throw .sha256Mismatch(path: url.path, expected: expected.lowercased(), found: found)
        }
    }
}
