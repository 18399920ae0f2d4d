import Foundation

// The LLaMA family's linear modules (names, sizes, weights in place), its deployment client tensors and a random model.

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

    /// The bias of `module`, where the config has one (Qwen2's q/k/v, `attention_bias`, `mlp_bias`).
    public func bias(of module: LinearModule) -> [Float]? {
        let b = blocks[module.layer]
        switch module.kind {
        case .query: return b.bq
        case .key: return b.bk
        case .value: return b.bv
        case .output: return b.bo
        case .gate: return b.bGate
        case .up: return b.bUp
        case .down: return b.bDown
        default: return nil
        }
    }
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

extension LlamaModel {
    /// Every tensor, in the stored row order, named as Hugging Face (`gguf` false) or
    /// llama.cpp (`gguf` true) names it — from ``blockTensorNames``, the one list of the
    /// family's checkpoint names. Weights of `serverModules` (HF module names) are left out.
    func namedTensors(gguf: Bool, excluding serverModules: Set<String> = []) -> ExportTensors {
        let C = config.hiddenSize, F = config.intermediateSize, V = config.vocabSize
        let q = config.numAttentionHeads * config.headDim, kv = config.numKeyValueHeads * config.headDim
        func name(_ g: String, _ hf: String) -> String { gguf ? g : hf }
        var out: ExportTensors = [(name("token_embd.weight", "model.embed_tokens.weight"), [V, C], embedding)]
        if let factors = config.ropeFrequencyFactors { out.append(("rope_freqs.weight", [factors.count], factors)) }
        let shapes = [[C], [q, C], [kv, C], [kv, C], [C, q], [C], [F, C], [F, C], [C, F]]
        for (l, b) in blocks.enumerated() {
            let weights = [b.attentionNorm, b.wq, b.wk, b.wv, b.wo, b.mlpNorm, b.gate, b.up, b.down]
            let biases = [nil, b.bq, b.bk, b.bv, b.bo, nil, b.bGate, b.bUp, b.bDown]
            for (i, n) in Self.blockTensorNames.enumerated() {
                let g = "blk.\(l).\(n.gguf)", hf = "model.layers.\(l).\(n.hf)"
                if !serverModules.contains(hf) { out.append((name(g + ".weight", hf + ".weight"), shapes[i], weights[i])) }
                if let bias = biases[i] { out.append((name(g + ".bias", hf + ".bias"), [shapes[i][0]], bias)) }
            }
        }
        out.append((name("output_norm.weight", "model.norm.weight"), [C], finalNorm))
        if let lmHead { out.append((name("output.weight", "lm_head.weight"), [V, C], lmHead)) }
        return out
    }

    /// The tensors a deployment's client keeps: embeddings, norms, biases, the lm_head when
    /// untied, and the weights of the linear modules not in `serverModules`. Names follow the
    /// row order of q_proj and k_proj: GGUF's names for a model read from GGUF (interleaved
    /// RoPE), Hugging Face's otherwise, so that loading them picks the same RoPE layout.
    public func clientTensors(excluding serverModules: Set<String>) -> [(name: String, shape: [Int], values: [Float])] {
        namedTensors(gguf: ropeStyle == .interleaved, excluding: serverModules)
    }
}


extension LlamaModel {
    /// A LLaMA of the given shape with random weights (std 0.02, norms at 1).
    public static func random(config: LlamaConfig, seed: UInt64, ropeStyle: RoPEStyle = .halves) -> LlamaModel {
        var rng = SeededGenerator(seed: seed)
        let C = config.hiddenSize, F = config.intermediateSize
        let q = config.numAttentionHeads * config.headDim, kv = config.numKeyValueHeads * config.headDim
        func w(_ n: Int) -> [Float] { InMemoryTensors.normal(count: n, std: 0.02, rng: &rng) }
        let ones = [Float](repeating: 1, count: C)
        let blocks = (0..<config.numHiddenLayers).map { _ in
            var block = Block(attentionNorm: ones, wq: w(q * C), wk: w(kv * C), wv: w(kv * C), wo: w(C * q), mlpNorm: ones,
                              gate: w(F * C), up: w(F * C), down: w(C * F))
            let biases = config.biases
            if biases.q { (block.bq, block.bk, block.bv) = (w(q), w(kv), w(kv)) }
            if biases.o { block.bo = w(C) }
            if biases.mlp { (block.bGate, block.bUp, block.bDown) = (w(F), w(F), w(C)) }
            return block
        }
        return LlamaModel(config: config, ropeStyle: ropeStyle, embedding: w(config.vocabSize * C), blocks: blocks,
                          finalNorm: ones, lmHead: config.tieWordEmbeddings ? nil : w(config.vocabSize * C))
    }
}
