import Foundation

/// A model that cannot be written in the asked format, or a file that could not be written.
public enum ExportError: Error, Equatable, CustomStringConvertible {
    case unsupported(format: String, reason: String)
    case unwritable(path: String, reason: String)

    public var description: String {
        switch self {
        case .unsupported(let f, let r): return "cannot export as \(f): \(r)"
        case .unwritable(let p, let r): return "\(p): cannot write (\(r))"
        }
    }
}

/// Named tensors in a checkpoint's own layout (row-major).
public typealias ExportTensors = [(name: String, shape: [Int], values: [Float])]

/// What a family writes for ``ModelExport``: its Hugging Face checkpoint (names, layout and
/// config.json keys transformers reads) and its GGUF (llama.cpp's names, layout and metadata).
public protocol ExportableModel: TrainableModel {
    /// Tensors with Hugging Face names, and the config.json keys (without token ids).
    func huggingFaceCheckpoint() throws -> (tensors: ExportTensors, config: [String: Any])
    /// llama.cpp's architecture name, its metadata (without general.* and tokenizer.*), and tensors.
    func ggufCheckpoint() throws -> (architecture: String, metadata: [(key: String, value: GGUFValue)], tensors: ExportTensors)
}

/// Writes a model (with a LoRA adapter merged: W + (α/r)·B·A, exact in Float32) as a
/// Hugging Face folder — `model.safetensors`, `config.json`, tokenizer files — that
/// transformers' `from_pretrained` loads, or as one GGUF file (F32, F16, BF16, Q8_0, Q4_0,
/// Q4_1, or each tensor in the base GGUF's own type) that llama.cpp reads.
public enum ModelExport {
    public enum Format: String, Codable, CaseIterable, Sendable { case safetensors, gguf }
    /// GGUF tensor types of the matrices (vectors stay F32): one type for all, or `source`:
    /// each tensor in its type in the base GGUF (a quantized base stays quantized).
    public enum Precision: String, Codable, CaseIterable, Sendable {
        case f32, f16, bf16, q8_0, q4_0, q4_1, source

        /// llama.cpp's `general.file_type` (LLAMA_FTYPE_*).
        var fileType: UInt32 {
            switch self {
            case .f32: 0
            case .f16: 1
            case .q4_0: 2
            case .q4_1: 3
            case .q8_0: 7
            case .bf16: 32
            case .source: 0
            }
        }
    }

    public struct Summary: Sendable {
        public var files: [(path: String, bytes: Int)]
        public var tensors: Int
        public var parameters: Int
        public var tokenizer: String
    }

    /// Exports `loaded`'s model with `adapter` merged (the model's weights are restored
    /// afterwards). `destination`: a folder for safetensors, a `.gguf` file for GGUF.
    public static func export(_ loaded: LoadedModel, adapter: LoRAAdapter?, to destination: URL, format: Format,
                              precision: Precision = .f32, name: String? = nil) throws -> Summary {
        guard let model = loaded.model as? ExportableModel else {
            throw ExportError.unsupported(format: format.rawValue, reason: "a \(loaded.model.architecture) model has no exporter")
        }
        if loaded.clientDeployment != nil {
            throw ExportError.unsupported(format: format.rawValue, reason: "a deployment's client folder does not hold the server's weights")
        }
        let run = {
            switch format {
            case .safetensors:
                if precision != .f32 { throw ExportError.unsupported(format: "safetensors", reason: "safetensors are written in F32 (convert with transformers' torch_dtype)") }
                return try writeHuggingFace(model, loaded: loaded, to: destination)
            case .gguf:
                return try writeGGUF(model, loaded: loaded, to: destination, precision: precision, name: name ?? loaded.location.displayName)
            }
        }
        if let adapter { return try adapter.withMerged(into: model, run) }
        return try run()
    }

    static func writeHuggingFace(_ model: ExportableModel, loaded: LoadedModel, to dir: URL) throws -> Summary {
        let (tensors, keys) = try model.huggingFaceCheckpoint()
        var config = keys
        let tokenizer = loaded.tokenizer
        config["bos_token_id"] = tokenizer.bosTokenID ?? tokenizer.eosTokenID ?? NSNull()
        config["eos_token_id"] = tokenizer.eosTokenID ?? NSNull()
        config["torch_dtype"] = "float32"
        config["transformers_version"] = "4.46.3"
        let fm = FileManager.default
        do { try fm.createDirectory(at: dir, withIntermediateDirectories: true) } catch {
            throw ExportError.unwritable(path: dir.path, reason: error.localizedDescription)
        }
        try SafeTensorsWriter.write(tensors, metadata: ["format": "pt"], to: dir.appendingPathComponent("model.safetensors"))
        try write(JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys]), to: dir.appendingPathComponent("config.json"))
        let tokenizerNote = try writeTokenizer(loaded, to: dir)
        let files = try ["model.safetensors", "config.json"] + fm.contentsOfDirectory(atPath: dir.path).filter { !["model.safetensors", "config.json"].contains($0) }.sorted()
        return Summary(files: files.map { ($0, ((try? fm.attributesOfItem(atPath: dir.appendingPathComponent($0).path))?[.size] as? NSNumber)?.intValue ?? 0) },
                       tensors: tensors.count, parameters: tensors.reduce(0) { $0 + $1.values.count }, tokenizer: tokenizerNote)
    }

    /// The tokenizer files: copied from the model's folder when it has them (GPT-2's
    /// encoder.json + vocab.bpe under their Hugging Face names vocab.json + merges.txt), else
    /// written from the vocabulary (vocab.json, merges.txt, tokenizer_config.json).
    static func writeTokenizer(_ loaded: LoadedModel, to dir: URL) throws -> String {
        let fm = FileManager.default
        if loaded.location.format == .safetensors {
            let source = loaded.location.tokenizerDirectory ?? loaded.location.url
            let copies: [[(String, String)]] = [
                [("tokenizer.json", "tokenizer.json"), ("tokenizer_config.json", "tokenizer_config.json"), ("special_tokens_map.json", "special_tokens_map.json"),
                 ("vocab.json", "vocab.json"), ("merges.txt", "merges.txt")],
                [("vocab.json", "vocab.json"), ("merges.txt", "merges.txt")],
                [("encoder.json", "vocab.json"), ("vocab.bpe", "merges.txt")],
            ]
            for set in copies where fm.fileExists(atPath: source.appendingPathComponent(set[0].0).path) {
                for (from, to) in set where fm.fileExists(atPath: source.appendingPathComponent(from).path) {
                    let target = dir.appendingPathComponent(to)
                    try? fm.removeItem(at: target)
                    do { try fm.copyItem(at: source.appendingPathComponent(from), to: target) } catch {
                        throw ExportError.unwritable(path: target.path, reason: error.localizedDescription)
                    }
                }
                // Without a tokenizer_config.json transformers would pick the model type's own
                // tokenizer class (Llama's is SentencePiece); these files are byte-level BPE.
                if !fm.fileExists(atPath: dir.appendingPathComponent("tokenizer_config.json").path) {
                    try writeTokenizerConfig(loaded, to: dir)
                }
                return "copied from \(source.path)"
            }
        }
        let v = loaded.tokenizer.vocabulary
        var vocab: [String: Int] = [:]
        for (i, t) in v.tokens.enumerated() { vocab[t] = i }
        try write(JSONSerialization.data(withJSONObject: vocab, options: [.sortedKeys]), to: dir.appendingPathComponent("vocab.json"))
        try write(Data(("#version: 0.2\n" + v.merges.joined(separator: "\n") + "\n").utf8), to: dir.appendingPathComponent("merges.txt"))
        try writeTokenizerConfig(loaded, to: dir)
        return "written from the vocabulary (\(v.tokens.count) tokens, \(v.merges.count) merges; pre-tokenizer \(v.preTokenizer))"
    }

    /// tokenizer_config.json for GPT-2-style byte-level BPE files, with the special tokens.
    static func writeTokenizerConfig(_ loaded: LoadedModel, to dir: URL) throws {
        let v = loaded.tokenizer.vocabulary
        func token(_ id: Int?) -> Any { id.flatMap { $0 < v.tokens.count ? v.tokens[$0] : nil } ?? NSNull() }
        let config: [String: Any] = ["tokenizer_class": "GPT2Tokenizer", "add_prefix_space": false, "add_bos_token": v.addBOS,
                                     "bos_token": token(v.bosTokenID), "eos_token": token(v.eosTokenID), "pad_token": token(v.padTokenID),
                                     "model_max_length": loaded.model.contextLength]
        try write(JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys]), to: dir.appendingPathComponent("tokenizer_config.json"))
    }

    static func writeGGUF(_ model: ExportableModel, loaded: LoadedModel, to file: URL, precision: Precision, name: String) throws -> Summary {
        let (architecture, keys, tensors) = try model.ggufCheckpoint()
        // `source`: the base GGUF's tensor types, by llama.cpp name (the names nb writes).
        var sourceTypes: [String: GGUFWriter.TensorType] = [:]
        var fileType = precision.fileType
        if precision == .source {
            guard loaded.location.format == .gguf else {
                throw ExportError.unsupported(format: "gguf", reason: "--precision source keeps the base GGUF's tensor types; \(loaded.location.displayName) is not a GGUF (use f32, f16, bf16, q8_0, q4_0 or q4_1)")
            }
            let base = try GGUFFile(url: loaded.location.url)
            for info in base.tensorInfos {
                if let t = GGUFWriter.TensorType(info.type) { sourceTypes[info.name] = t }
            }
            if case .uint32(let t)? = base.metadata["general.file_type"] { fileType = t }
        }
        let v = loaded.tokenizer.vocabulary
        var metadata: [(key: String, value: GGUFValue)] = [
            ("general.architecture", .string(architecture)), ("general.name", .string(name)),
            ("general.file_type", .uint32(fileType)),
        ]
        metadata += keys
        let special = Set(v.specialTokens.values)
        // llama.cpp takes the vocabulary's size from the tokens: they must cover the embedding's
        // rows. Rows past the tokenizer (padded embeddings) get `[PADn]` tokens of type unused,
        // as llama.cpp's converter writes them.
        let rows = loaded.model.vocabularySize
        guard v.tokens.count <= rows else {
            throw ExportError.unsupported(format: "gguf", reason: "the tokenizer has \(v.tokens.count) tokens, more than the model's \(rows) embedding rows")
        }
        let tokens = v.tokens + (v.tokens.count..<rows).map { "[PAD\($0)]" }
        let types = tokens.indices.map { i -> GGUFValue in .int32(i >= v.tokens.count ? 5 : special.contains(i) ? 3 : 1) }
        metadata += [
            ("tokenizer.ggml.model", .string("gpt2")),
            ("tokenizer.ggml.pre", .string(v.preTokenizer == "gpt2" ? "gpt-2" : v.preTokenizer)),
            ("tokenizer.ggml.tokens", .array(tokens.map { .string($0) })),
            ("tokenizer.ggml.token_type", .array(types)),
            ("tokenizer.ggml.merges", .array(v.merges.map { .string($0) })),
            ("tokenizer.ggml.add_bos_token", .bool(v.addBOS)),
        ]
        if let id = v.bosTokenID { metadata.append(("tokenizer.ggml.bos_token_id", .uint32(UInt32(id)))) }
        if let id = v.eosTokenID { metadata.append(("tokenizer.ggml.eos_token_id", .uint32(UInt32(id)))) }
        if let id = v.padTokenID { metadata.append(("tokenizer.ggml.padding_token_id", .uint32(UInt32(id)))) }
        // llama.cpp's converter keeps vectors (norms, biases, rope factors) in F32, and its
        // quantizer leaves a matrix whose rows are not whole blocks in F16.
        let written = tensors.map { t -> GGUFWriter.Tensor in
            var type: GGUFWriter.TensorType
            switch precision {
            case .source: type = sourceTypes[t.name] ?? .f32
            default: type = t.shape.count >= 2 ? GGUFWriter.TensorType(rawValue: precision.rawValue)! : .f32
            }
            if !type.fits(shape: t.shape) { type = .f16 }
            return GGUFWriter.Tensor(name: t.name, shape: t.shape, values: t.values, type: type)
        }
        // Block quantizers need finite values (a NaN or infinity has no integer code).
        for t in written where [.q8_0, .q4_0, .q4_1].contains(t.type) {
            if let i = t.values.firstIndex(where: { !$0.isFinite }) {
                throw ExportError.unsupported(format: "gguf", reason: "tensor \(t.name) holds \(t.values[i]) at index \(i): \(t.type.rawValue) needs finite values (export as f32 or f16)")
            }
        }
        try GGUFWriter.write(metadata: metadata, tensors: written, to: file)
        let bytes = ((try? FileManager.default.attributesOfItem(atPath: file.path))?[.size] as? NSNumber)?.intValue ?? 0
        return Summary(files: [(file.lastPathComponent, bytes)], tensors: tensors.count, parameters: tensors.reduce(0) { $0 + $1.values.count },
                       tokenizer: "in the GGUF metadata (\(v.tokens.count) tokens)")
    }

    static func write(_ data: Data, to url: URL) throws {
        do { try AtomicFile.write(data, to: url) } catch { throw ExportError.unwritable(path: url.path, reason: error.localizedDescription) }
    }

    /// (rows, columns) → (columns, rows).
    static func transposed(_ w: [Float], rows: Int, columns: Int) -> [Float] {
        var out = [Float](repeating: 0, count: w.count)
        for r in 0..<rows { for c in 0..<columns { out[c * rows + r] = w[r * columns + c] } }
        return out
    }
}
