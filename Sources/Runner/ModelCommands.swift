import ArgumentParser
import Engine
import Foundation

/// A PEFT-layout LoRA adapter to apply on the base model (merged into its weights).
struct AdapterOption: ParsableArguments {
    @Option(help: ArgumentHelp("A PEFT-layout LoRA adapter directory (adapter_config.json, adapter_model.safetensors) to apply on the model.", valueName: "DIR"))
    var adapter: String?

    /// Merges the adapter into `loaded`'s weights, when one is given.
    func apply(to loaded: LoadedModel) throws {
        guard let adapter else { return }
        do {
            guard let model = loaded.model as? TrainableModel else { throw LoRAError.badAdapterConfig(path: adapter, key: "", message: "this model cannot take adapters") }
            let lora = try PEFTAdapter.load(from: URL(fileURLWithPath: adapter), modules: model.linearModules)
            lora.merge(into: model)
            FileHandle.standardError.write(Data("[adapter \(adapter): r=\(lora.config.rank), \(lora.layers.count) modules, merged]\n".utf8))
        } catch {
            FileHandle.standardError.write(Data("nb: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }
}

/// Options shared by the commands that run a model directly.
struct ModelOptions: ParsableArguments {
    @Option(help: ArgumentHelp("A model name (\(ModelCatalog.knownNames.joined(separator: ", "))) or a path (.gguf file, or a directory with config.json and safetensors).", valueName: "NAME|PATH"))
    var model: String

    func load() throws -> LoadedModel {
        do {
            return try LoadedModel.load(try ModelCatalog.locate(model))
        } catch {
            FileHandle.standardError.write(Data("nb: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }
}

/// The prompt of a model command: text (`--prompt`) or token ids (`--ids 1,2,3`).
struct PromptOptions: ParsableArguments {
    @Option(help: "The prompt text.") var prompt: String?
    @Option(help: ArgumentHelp("The prompt as token ids, comma-separated (instead of --prompt).", valueName: "ID,ID,..."))
    var ids: String?
    @Flag(help: "Wrap the prompt text in the model's chat template.") var chat = false

    func validate() throws {
        if (prompt == nil) == (ids == nil) { throw ValidationError("give the prompt as --prompt TEXT or as --ids ID,ID,... (one of them)") }
        if ids != nil && chat { throw ValidationError("--chat applies to --prompt text, not to --ids") }
        if let ids { _ = try Self.parseIDs(ids) }
    }

    static func parseIDs(_ text: String) throws -> [Int] {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        let ids = try parts.map { part -> Int in
            guard let id = Int(part), id >= 0 else { throw ValidationError("--ids: '\(part)' is not a token id (a non-negative integer)") }
            return id
        }
        if ids.isEmpty { throw ValidationError("--ids: give at least one token id") }
        return ids
    }

    /// The prompt's token ids, checked against the model's vocabulary.
    func tokens(_ loaded: LoadedModel) throws -> [Int] {
        guard let ids else { return loaded.encodePrompt(prompt ?? "", chat: chat) }
        let parsed = try Self.parseIDs(ids)
        if let bad = parsed.first(where: { $0 >= loaded.model.vocabularySize }) {
            FileHandle.standardError.write(Data("nb: --ids: \(ModelLoadError.tokenOutOfRange(token: bad, vocabularySize: loaded.model.vocabularySize))\n".utf8))
            throw ExitCode(1)
        }
        return parsed
    }
}

/// `--precision`: how one-token decoding reads the weights.
struct PrecisionOption: ParsableArguments {
    @Option(help: ArgumentHelp("float16: decode through half-precision weight copies (the default, 2–3× faster, ~1e-4 of the logit range off); float32: the exact path.", valueName: "float16|float32"))
    var precision: String = "float16"

    func validate() throws {
        if !["float16", "float32"].contains(precision) { throw ValidationError("--precision must be float16 or float32, not '\(precision)'") }
    }

    func apply(to loaded: LoadedModel) { loaded.model.compactDecode = precision == "float16" }
}

/// JSON on one line, keys sorted.
func printJSON(_ object: Any) throws {
    let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
    print(String(decoding: data, as: UTF8.self))
}

extension Nb {
    struct Generate: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Continue a prompt with a model and print the continuation.")
        @OptionGroup var modelOptions: ModelOptions
        @OptionGroup var adapterOption: AdapterOption
        @OptionGroup var promptOptions: PromptOptions
        @OptionGroup var precisionOption: PrecisionOption
        @Option(name: .customLong("max-tokens"), help: "Tokens to generate at most.") var maxTokens = 64
        @Option(help: "Sampling temperature; 0 is greedy.") var temperature = 0.0
        @Option(name: .customLong("top-k"), help: "Sample among the k most likely tokens (0: no limit).") var topK = 0
        @Option(name: .customLong("top-p"), help: "Sample within this probability mass.") var topP = 1.0
        @Option(help: "Random seed for sampling.") var seed: UInt64 = 0
        @Flag(help: "Print JSON: {\"prompt_ids\", \"ids\", \"text\", \"finish_reason\", \"steps\": [{\"id\", \"token\", \"margin\"}]}, margin = top-1 − top-2 logit at that step.")
        var json = false

        func validate() throws {
            if maxTokens < 1 { throw ValidationError("--max-tokens must be at least 1") }
            if temperature < 0 { throw ValidationError("--temperature must be ≥ 0") }
            if !(topP > 0 && topP <= 1) { throw ValidationError("--top-p must be in (0, 1]") }
            if topK < 0 { throw ValidationError("--top-k must be ≥ 0") }
        }

        func run() throws {
            let loaded = try modelOptions.load()
            try adapterOption.apply(to: loaded)
            precisionOption.apply(to: loaded)
            let ids = try promptOptions.tokens(loaded)
            let stops = loaded.stopTokens
            let result = loaded.model.generate(GenerationRequest(
                prompt: ids, maxTokens: maxTokens,
                sampling: SamplingSettings(temperature: temperature, topK: topK, topP: topP, seed: seed), stopTokens: stops,
                recordMargins: json))
            let text = loaded.tokenizer.decode(result.tokens.filter { !stops.contains($0) })
            if json {
                try printJSON([
                    "model": loaded.location.displayName, "prompt_ids": ids, "ids": result.tokens, "text": text,
                    "finish_reason": result.finishReason, "precision": precisionOption.precision,
                    "steps": zip(result.tokens, result.margins).map { ["id": $0, "token": loaded.tokenizer.tokenText($0), "margin": Double($1)] as [String: Any] },
                ] as [String: Any])
            } else {
                print(text)
            }
            let rate = result.tokens.count > 1 ? Double(result.tokens.count - 1) / result.decodeSeconds : 0
            FileHandle.standardError.write(Data(String(format: "[%d prompt tokens, %d generated (%@), prompt %.3f s, decode %.1f tokens/s]\n",
                                                      ids.count, result.tokens.count, result.finishReason, result.promptSeconds, rate).utf8))
        }
    }

    struct TopTokens: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "top-tokens", abstract: "Print the most likely next tokens after a prompt, with their logits.")
        @OptionGroup var modelOptions: ModelOptions
        @OptionGroup var adapterOption: AdapterOption
        @OptionGroup var promptOptions: PromptOptions
        @OptionGroup var precisionOption: PrecisionOption
        @Option(help: "How many tokens to print.") var k = 20
        @Option(help: ArgumentHelp("last: after the whole prompt; all: after every prefix of it (one block per position).", valueName: "last|all"))
        var positions = "last"
        @Flag(help: "Print JSON: {\"prompt_ids\": [...], \"top\": [{\"id\", \"token\", \"logit\"}]}; with --positions all, \"positions\": [{\"position\", \"id\", \"top\"}].")
        var json = false

        func validate() throws {
            if !["last", "all"].contains(positions) { throw ValidationError("--positions must be last or all, not '\(positions)'") }
            if k < 1 { throw ValidationError("--k must be at least 1") }
        }

        func run() throws {
            let loaded = try modelOptions.load()
            try adapterOption.apply(to: loaded)
            precisionOption.apply(to: loaded)
            let ids = try promptOptions.tokens(loaded)
            let all = positions == "all"
            let logits = loaded.model.forward(ids, cache: loaded.model.makeCache(capacity: ids.count), allPositions: all)
            let V = loaded.model.vocabularySize
            let rows = all ? Array(ids.indices) : [ids.count - 1]
            func top(_ row: Int) -> [(id: Int, logit: Float)] {
                let base = (all ? row : 0) * V
                return (0..<V).sorted { logits[base + $0] > logits[base + $1] }.prefix(k).map { ($0, logits[base + $0]) }
            }
            func entries(_ row: Int) -> [[String: Any]] {
                top(row).map { ["id": $0.id, "token": loaded.tokenizer.tokenText($0.id), "logit": Double($0.logit)] }
            }
            if json {
                var object: [String: Any] = ["model": loaded.location.displayName, "prompt_ids": ids, "top": entries(ids.count - 1)]
                if all { object["positions"] = rows.map { ["position": $0, "id": ids[$0], "top": entries($0)] as [String: Any] } }
                try printJSON(object)
                return
            }
            for row in rows {
                if all { print("position \(row) (after \(ids[row]) \(loaded.tokenizer.tokenText(ids[row]).debugDescription)):") }
                for (id, logit) in top(row) { print(String(format: "%6d  %10.4f  %@", id, logit, loaded.tokenizer.tokenText(id).debugDescription)) }
            }
        }
    }

    struct Tokenize: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the token ids of a text (reads only the tokenizer, never the weights).")
        @Option(help: ArgumentHelp("A model name, a .gguf file, a deployment, or a directory with tokenizer files (tokenizer.json, vocab.json + merges.txt, encoder.json + vocab.bpe) — weights are not needed.", valueName: "NAME|PATH"))
        var model: String
        @Argument(help: "The text to tokenize.") var text: String
        @Flag(help: "Print JSON: {\"ids\": [...], \"tokens\": [...]}.") var json = false

        func run() throws {
            let tokenizer = try loadTokenizer(model)
            let ids = tokenizer.encode(text, allowSpecial: true)
            if json {
                try printJSON(["ids": ids, "tokens": ids.map(tokenizer.tokenText)])
            } else {
                print(ids.map(String.init).joined(separator: " "))
            }
        }
    }

    struct Detokenize: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the text of token ids (reads only the tokenizer, never the weights).")
        @Option(help: ArgumentHelp("A model name, a .gguf file, a deployment, or a directory with tokenizer files.", valueName: "NAME|PATH"))
        var model: String
        @Argument(help: "Token ids, separated by spaces or commas.") var ids: [String]
        @Flag(help: "Print JSON: {\"text\": ..., \"tokens\": [...]}.") var json = false

        func run() throws {
            let tokenizer = try loadTokenizer(model)
            let parsed = try PromptOptions.parseIDs(ids.joined(separator: ",").split(separator: ",").joined(separator: ","))
            if let bad = parsed.first(where: { $0 >= tokenizer.vocabularySize }) {
                FileHandle.standardError.write(Data("nb: \(ModelLoadError.tokenOutOfRange(token: bad, vocabularySize: tokenizer.vocabularySize))\n".utf8))
                throw ExitCode(1)
            }
            let text = tokenizer.decode(parsed)
            if json { try printJSON(["text": text, "tokens": parsed.map(tokenizer.tokenText)]) } else { print(text) }
        }
    }
}

/// The tokenizer of a model name or path, or a clear error and exit status 1.
func loadTokenizer(_ model: String) throws -> BPETokenizer {
    do { return try LoadedModel.tokenizer(model).tokenizer } catch {
        FileHandle.standardError.write(Data("nb: \(error)\n".utf8))
        throw ExitCode(1)
    }
}

extension Nb {
    struct Export: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write a model with a LoRA adapter merged: a Hugging Face folder (transformers) or a GGUF file (llama.cpp).")
        @OptionGroup var modelOptions: ModelOptions
        @Option(help: ArgumentHelp("A PEFT-layout LoRA adapter directory to merge (W + (α/r)·B·A); without it the base model is written.", valueName: "DIR"))
        var adapter: String?
        @Option(help: ArgumentHelp("Where to write: a folder for safetensors, a .gguf file for GGUF.", valueName: "PATH")) var to: String
        @Option(help: ArgumentHelp("safetensors (model.safetensors + config.json + tokenizer files) or gguf; default: gguf when --to ends in .gguf.", valueName: "FORMAT"))
        var format: String?
        @Option(help: ArgumentHelp("GGUF tensor type of the matrices (vectors stay f32): f32, f16, bf16, q8_0, q4_0, q4_1, or source (each tensor in its type in the base GGUF). Default: source for a GGUF base, else f32.", valueName: "type")) var precision: String?

        var resolvedFormat: ModelExport.Format? { ModelExport.Format(rawValue: format ?? (to.lowercased().hasSuffix(".gguf") ? "gguf" : "safetensors")) }

        func validate() throws {
            guard let f = resolvedFormat else { throw ValidationError("--format must be safetensors or gguf, not '\(format ?? "")'") }
            if let precision {
                guard let p = ModelExport.Precision(rawValue: precision) else {
                    throw ValidationError("--precision must be one of \(ModelExport.Precision.allCases.map(\.rawValue).joined(separator: ", ")), not '\(precision)'")
                }
                if f == .safetensors && p != .f32 { throw ValidationError("--precision \(precision) is for --format gguf; safetensors are written in f32") }
            }
            if f == .gguf && !to.lowercased().hasSuffix(".gguf") { throw ValidationError("--to must end in .gguf for --format gguf") }
        }

        func run() throws {
            let loaded = try modelOptions.load()
            do {
                var lora: LoRAAdapter?
                if let adapter {
                    guard let model = loaded.model as? TrainableModel else { throw LoRAError.badAdapterConfig(path: adapter, key: "", message: "this model cannot take adapters") }
                    lora = try PEFTAdapter.load(from: URL(fileURLWithPath: adapter), modules: model.linearModules)
                }
                let destination = URL(fileURLWithPath: (to as NSString).expandingTildeInPath)
                // A GGUF base keeps its tensor types unless told otherwise.
                let chosen = precision.flatMap(ModelExport.Precision.init(rawValue:))
                    ?? (resolvedFormat == .gguf && loaded.location.format == .gguf ? .source : .f32)
                let summary = try ModelExport.export(loaded, adapter: lora, to: destination, format: resolvedFormat!, precision: chosen)
                for f in summary.files { print(String(format: "%12d  %@", f.bytes, f.path)) }
                FileHandle.standardError.write(Data(("[\(summary.tensors) tensors, \(summary.parameters) parameters, adapter "
                    + (lora.map { "merged (r=\($0.config.rank), \($0.layers.count) modules)" } ?? "none") + "; tokenizer \(summary.tokenizer)]\n").utf8))
            } catch let error as ExitCode {
                throw error
            } catch {
                FileHandle.standardError.write(Data("nb: \(error)\n".utf8))
                throw ExitCode(1)
            }
        }
    }
}
