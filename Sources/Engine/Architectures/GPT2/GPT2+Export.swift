import Foundation

extension GPT2Model: ExportableModel {
    /// Hugging Face's names and Conv1D layout (what the client folder keeps, all of it); config.json's keys.
    public func huggingFaceCheckpoint() throws -> (tensors: ExportTensors, config: [String: Any]) {
        var keys = try JSONSerialization.jsonObject(with: configJSON()) as? [String: Any] ?? [:]
        keys["architectures"] = ["GPT2LMHeadModel"]
        keys["activation_function"] = "gelu_new"
        keys["n_ctx"] = config.nPositions
        keys["tie_word_embeddings"] = true
        return (clientTensors(excluding: []), keys)
    }

    /// llama.cpp's `gpt2` layout: linear weights (out, in), the tied head written as `output.weight`.
    public func ggufCheckpoint() throws -> (architecture: String, metadata: [(key: String, value: GGUFValue)], tensors: ExportTensors) {
        let C = config.nEmbd, V = config.vocabSize
        let meta: [(key: String, value: GGUFValue)] = [
            ("gpt2.context_length", .uint32(UInt32(config.nPositions))), ("gpt2.embedding_length", .uint32(UInt32(C))),
            ("gpt2.feed_forward_length", .uint32(UInt32(4 * C))), ("gpt2.block_count", .uint32(UInt32(config.nLayer))),
            ("gpt2.attention.head_count", .uint32(UInt32(config.nHead))),
            ("gpt2.attention.layer_norm_epsilon", .float32(Float(config.layerNormEpsilon))),
        ]
        var out: ExportTensors = [("token_embd.weight", [V, C], tokenEmbedding), ("position_embd.weight", [config.nPositions, C], positionEmbedding)]
        for (l, b) in blocks.enumerated() {
            let p = "blk.\(l)."
            func linear(_ name: String, _ w: [Float], _ bias: [Float], inFeatures: Int, outFeatures: Int) {
                out.append((p + name + ".weight", [outFeatures, inFeatures], ModelExport.transposed(w, rows: inFeatures, columns: outFeatures)))
                out.append((p + name + ".bias", [outFeatures], bias))
            }
            out += [(p + "attn_norm.weight", [C], b.ln1Weight), (p + "attn_norm.bias", [C], b.ln1Bias)]
            linear("attn_qkv", b.attnWeight, b.attnBias, inFeatures: C, outFeatures: 3 * C)
            linear("attn_output", b.attnProjWeight, b.attnProjBias, inFeatures: C, outFeatures: C)
            out += [(p + "ffn_norm.weight", [C], b.ln2Weight), (p + "ffn_norm.bias", [C], b.ln2Bias)]
            linear("ffn_up", b.fcWeight, b.fcBias, inFeatures: C, outFeatures: 4 * C)
            linear("ffn_down", b.fcProjWeight, b.fcProjBias, inFeatures: 4 * C, outFeatures: C)
        }
        out += [("output_norm.weight", [C], finalNormWeight), ("output_norm.bias", [C], finalNormBias), ("output.weight", [V, C], tokenEmbedding)]
        return ("gpt2", meta, out)
    }
}
