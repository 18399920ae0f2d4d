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

extension GPT2Config {
    /// Every Conv1D of the model in checkpoint order (block by block: c_attn, attn.c_proj,
    /// c_fc, mlp.c_proj). The tied lm_head is not a separate layer and is never listed.
    public var linearModules: [LinearModule] {
        let C = nEmbd
        return (0..<nLayer).flatMap { l -> [LinearModule] in
            let p = "transformer.h.\(l)."
            return [
                LinearModule(name: p + "attn.c_attn", layer: l, kind: .attention, inFeatures: C, outFeatures: 3 * C, transposedWeight: true),
                LinearModule(name: p + "attn.c_proj", layer: l, kind: .attentionProjection, inFeatures: C, outFeatures: C, transposedWeight: true),
                LinearModule(name: p + "mlp.c_fc", layer: l, kind: .fc, inFeatures: C, outFeatures: 4 * C, transposedWeight: true),
                LinearModule(name: p + "mlp.c_proj", layer: l, kind: .fcProjection, inFeatures: 4 * C, outFeatures: C, transposedWeight: true),
            ]
        }
    }
}

extension LlamaConfig {
    /// Every nn.Linear of the blocks in Hugging Face order (q, k, v, o, gate, up, down per
    /// block). The lm_head is excluded, as PEFT's `all-linear` excludes the output layer.
    public var linearModules: [LinearModule] {
        let C = hiddenSize, F = intermediateSize
        let q = numAttentionHeads * headDim, kv = numKeyValueHeads * headDim
        return (0..<numHiddenLayers).flatMap { l -> [LinearModule] in
            let a = "model.layers.\(l).self_attn.", m = "model.layers.\(l).mlp."
            func linear(_ name: String, _ kind: LinearModule.Kind, _ i: Int, _ o: Int) -> LinearModule {
                LinearModule(name: name, layer: l, kind: kind, inFeatures: i, outFeatures: o, transposedWeight: false)
            }
            return [
                linear(a + "q_proj", .query, C, q), linear(a + "k_proj", .key, C, kv), linear(a + "v_proj", .value, C, kv),
                linear(a + "o_proj", .output, q, C),
                linear(m + "gate_proj", .gate, C, F), linear(m + "up_proj", .up, C, F), linear(m + "down_proj", .down, F, C),
            ]
        }
    }
}

extension GPT2Model {
    /// The model's Conv1D layers with their Hugging Face names and (in, out) sizes.
    public var linearModules: [LinearModule] { config.linearModules }

    /// Runs `body` on the stored weight of `module` (Conv1D layout (in, out)), in place, and
    /// drops the half-precision decode copies (rebuilt on the next decode).
    public func withWeight<R>(of module: LinearModule, _ body: (inout [Float]) throws -> R) rethrows -> R {
        precondition(module.layer >= 0 && module.layer < blocks.count, "\(module.name): no block \(module.layer) in a \(blocks.count)-block GPT-2")
        decodeCopies = nil  // the decode copies no longer match
        switch module.kind {
        case .attention: return try body(&blocks[module.layer].attnWeight)
        case .attentionProjection: return try body(&blocks[module.layer].attnProjWeight)
        case .fc: return try body(&blocks[module.layer].fcWeight)
        case .fcProjection: return try body(&blocks[module.layer].fcProjWeight)
        default: preconditionFailure("\(module.name) (\(module.kind)) is not a GPT-2 layer")
        }
    }
}

extension GPT2Model {
    /// A copy of the stored weight of `module` (Conv1D layout (in, out)); copy-on-write, so free until written.
    public func weight(of module: LinearModule) -> [Float] {
        switch module.kind {
        case .attention: return blocks[module.layer].attnWeight
        case .attentionProjection: return blocks[module.layer].attnProjWeight
        case .fc: return blocks[module.layer].fcWeight
        case .fcProjection: return blocks[module.layer].fcProjWeight
        default: preconditionFailure("\(module.name) (\(module.kind)) is not a GPT-2 layer")
        }
    }

    /// The bias of `module` (out), or nil.
    public func bias(of module: LinearModule) -> [Float]? {
        switch module.kind {
        case .attention: return blocks[module.layer].attnBias
        case .attentionProjection: return blocks[module.layer].attnProjBias
        case .fc: return blocks[module.layer].fcBias
        case .fcProjection: return blocks[module.layer].fcProjBias
        default: return nil
        }
    }
}

extension LlamaModel {
    /// A copy of the stored weight of `module` (nn.Linear layout (out, in)).
    public func weight(of module: LinearModule) -> [Float] {
        switch module.kind {
        case .query: return blocks[module.layer].wq
        case .key: return blocks[module.layer].wk
        case .value: return blocks[module.layer].wv
        case .output: return blocks[module.layer].wo
        case .gate: return blocks[module.layer].gate
        case .up: return blocks[module.layer].up
        case .down: return blocks[module.layer].down
        default: preconditionFailure("\(module.name) (\(module.kind)) is not a LLaMA layer")
        }
    }

    /// LLaMA's linear layers have no bias.
    public func bias(of module: LinearModule) -> [Float]? { nil }
}

extension LlamaModel {
    /// The model's linear layers (lm_head excluded) with their Hugging Face names and sizes;
    /// q_proj and k_proj of a model read from GGUF note its row order (``LinearModule/ggufRoPEHeadDim``).
    public var linearModules: [LinearModule] {
        config.linearModules.map { m in
            var m = m
            if ropeStyle == .interleaved && (m.kind == .query || m.kind == .key) { m.ggufRoPEHeadDim = config.headDim }
            return m
        }
    }

    /// Runs `body` on the stored weight of `module` (nn.Linear layout (out, in)), in place, and
    /// drops its decode copies (half-precision copies are rebuilt on the next decode).
    public func withWeight<R>(of module: LinearModule, _ body: (inout [Float]) throws -> R) rethrows -> R {
        precondition(module.layer >= 0 && module.layer < blocks.count, "\(module.name): no block \(module.layer) in a \(blocks.count)-block LLaMA")
        decodeCopies = nil
        let index: [LinearModule.Kind: Int] = [.query: 0, .key: 1, .value: 2, .output: 3, .gate: 4, .up: 5, .down: 6]
        if let i = index[module.kind] { stored?.blocks[module.layer][i] = nil }  // the stored blocks no longer hold the weights
        switch module.kind {
        case .query: return try body(&blocks[module.layer].wq)
        case .key: return try body(&blocks[module.layer].wk)
        case .value: return try body(&blocks[module.layer].wv)
        case .output: return try body(&blocks[module.layer].wo)
        case .gate: return try body(&blocks[module.layer].gate)
        case .up: return try body(&blocks[module.layer].up)
        case .down: return try body(&blocks[module.layer].down)
        default: preconditionFailure("\(module.name) (\(module.kind)) is not a LLaMA layer")
        }
    }
}
