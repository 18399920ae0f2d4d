import Foundation

/// One frozen linear layer of a model, named as in the Hugging Face checkpoint (the names
/// PEFT's `target_modules` match), with its sizes.
///
/// The forward pass of the layer is y (T, out) = x (T, in) · Wᵀ + bias. `W` is stored
/// (out, in) by nn.Linear (LLaMA) and (in, out) by GPT-2's Conv1D (`transposedWeight`).
public struct LinearModule: Codable, Equatable, Hashable, Sendable {
    /// Which linear layer of a transformer block; the raw value is the name inside the block.
    public enum Kind: String, Codable, Sendable, CaseIterable {
        /// GPT-2: `attn.c_attn` (C → 3C), `attn.c_proj` (C → C), `mlp.c_fc` (C → 4C), `mlp.c_proj` (4C → C).
        case attention = "attn.c_attn", attentionProjection = "attn.c_proj", fc = "mlp.c_fc", fcProjection = "mlp.c_proj"
        /// LLaMA: `self_attn.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj`.
        case query = "self_attn.q_proj", key = "self_attn.k_proj", value = "self_attn.v_proj", output = "self_attn.o_proj"
        case gate = "mlp.gate_proj", up = "mlp.up_proj", down = "mlp.down_proj"
    }

    /// Full Hugging Face name, e.g. `transformer.h.0.attn.c_attn`, `model.layers.3.self_attn.q_proj`.
    public var name: String
    /// The transformer block (0-based).
    public var layer: Int
    public var kind: Kind
    public var inFeatures: Int
    public var outFeatures: Int
    /// True for GPT-2's Conv1D, whose weight is stored (in, out); PEFT's `fan_in_fan_out`.
    public var transposedWeight: Bool
    /// The head size when the output rows are in GGUF's order for interleaved RoPE (q_proj
    /// and k_proj of a LLaMA read from GGUF) rather than Hugging Face's: within each head,
    /// GGUF row 2j + h is Hugging Face row h·(d/2) + j. A LoRA B (out, r) shares that row
    /// order, so PEFT files are converted on save and load; nil for every other module.
    public var ggufRoPEHeadDim: Int?

    public init(name: String, layer: Int, kind: Kind, inFeatures: Int, outFeatures: Int, transposedWeight: Bool,
                ggufRoPEHeadDim: Int? = nil) {
        (self.name, self.layer, self.kind) = (name, layer, kind)
        (self.inFeatures, self.outFeatures, self.transposedWeight) = (inFeatures, outFeatures, transposedWeight)
        self.ggufRoPEHeadDim = ggufRoPEHeadDim
    }

    /// Rows (out, columns) from this module's stored row order to Hugging Face's (`toHF`),
    /// or back; unchanged when the orders agree.
    public func huggingFaceRowOrder(_ rows: [Float], columns: Int, toHF: Bool) -> [Float] {
        guard let d = ggufRoPEHeadDim else { return rows }
        precondition(d % 2 == 0 && outFeatures % d == 0 && rows.count == outFeatures * columns,
                     "\(name): \(rows.count) values are not (\(outFeatures), \(columns)) rows of \(d)-wide heads")
        var out = rows
        for head in 0..<(outFeatures / d) {
            for j in 0..<(d / 2) {
                for h in 0..<2 {
                    let gguf = head * d + 2 * j + h, hf = head * d + h * (d / 2) + j
                    let (from, to) = toHF ? (gguf, hf) : (hf, gguf)
                    for c in 0..<columns { out[to * columns + c] = rows[from * columns + c] }
                }
            }
        }
        return out
    }

    /// The last component of the name (`c_attn`, `c_proj`, `q_proj`, …), which PEFT's
    /// `all-linear` collects into `target_modules`.
    public var baseName: String { String(name.split(separator: ".").last ?? Substring(name)) }

    /// Whether a PEFT `target_modules` entry selects this module: the full name, or a suffix
    /// that starts after a dot (`c_attn`, `attn.c_proj`, `self_attn.q_proj`), as
    /// `peft.tuners.tuners_utils.check_target_module_exists` does for a list of names.
    public func matches(target: String) -> Bool {
        name == target || name.hasSuffix("." + target)
    }
}
