import Foundation

// GPT-2's linear modules (names, sizes, weights in place), its deployment client tensors and a random model.

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

extension GPT2Model {
    /// The tensors a deployment's client keeps, in Hugging Face names: embeddings, norms,
    /// every bias, and the weights of the linear modules not in `serverModules`.
    public func clientTensors(excluding serverModules: Set<String>) -> [(name: String, shape: [Int], values: [Float])] {
        let C = config.nEmbd
        var out: [(name: String, shape: [Int], values: [Float])] = [
            ("transformer.wte.weight", [config.vocabSize, C], tokenEmbedding),
            ("transformer.wpe.weight", [config.nPositions, C], positionEmbedding),
        ]
        for (l, b) in blocks.enumerated() {
            let p = "transformer.h.\(l)."
            func linear(_ kind: String, _ shape: [Int], _ w: [Float], _ bias: [Float]) {
                if !serverModules.contains(p + kind) { out.append((p + kind + ".weight", shape, w)) }
                out.append((p + kind + ".bias", [shape[1]], bias))
            }
            out.append((p + "ln_1.weight", [C], b.ln1Weight)); out.append((p + "ln_1.bias", [C], b.ln1Bias))
            linear("attn.c_attn", [C, 3 * C], b.attnWeight, b.attnBias)
            linear("attn.c_proj", [C, C], b.attnProjWeight, b.attnProjBias)
            out.append((p + "ln_2.weight", [C], b.ln2Weight)); out.append((p + "ln_2.bias", [C], b.ln2Bias))
            linear("mlp.c_fc", [C, 4 * C], b.fcWeight, b.fcBias)
            linear("mlp.c_proj", [4 * C, C], b.fcProjWeight, b.fcProjBias)
        }
        out.append(("transformer.ln_f.weight", [C], finalNormWeight)); out.append(("transformer.ln_f.bias", [C], finalNormBias))
        return out
    }
}

extension GPT2Model {
    /// A GPT-2 of the given shape with random weights (std 0.02, norms at 1/0): for tests
    /// and for benchmarks where the real weights are not available.
    public static func random(config: GPT2Config, seed: UInt64) -> GPT2Model {
        var rng = SeededGenerator(seed: seed)
        let C = config.nEmbd
        func w(_ n: Int) -> [Float] { InMemoryTensors.normal(count: n, std: 0.02, rng: &rng) }
        let blocks = (0..<config.nLayer).map { _ in
            Block(ln1Weight: [Float](repeating: 1, count: C), ln1Bias: w(C), attnWeight: w(C * 3 * C), attnBias: w(3 * C),
                  attnProjWeight: w(C * C), attnProjBias: w(C), ln2Weight: [Float](repeating: 1, count: C), ln2Bias: w(C),
                  fcWeight: w(C * 4 * C), fcBias: w(4 * C), fcProjWeight: w(4 * C * C), fcProjBias: w(C))
        }
        return GPT2Model(config: config, tokenEmbedding: w(config.vocabSize * C), positionEmbedding: w(config.nPositions * C),
                         blocks: blocks, finalNormWeight: [Float](repeating: 1, count: C), finalNormBias: w(C))
    }
}
