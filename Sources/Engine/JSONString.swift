/// JSON string literals for JSON written by hand (the safetensors header, PEFT's config,
/// the server's log lines).
public enum JSONString {
    /// A JSON string literal (RFC 8259) as Python's `json.dumps` writes ASCII text: quotes and
    /// backslashes escaped, \n \r \t by name, other control characters as \u00xx.
    public static func literal(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}
