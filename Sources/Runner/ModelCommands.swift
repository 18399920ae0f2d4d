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

extension Nb {
    struct Generate: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Continue a prompt with a model and print the continuation.")
        @OptionGroup var modelOptions: ModelOptions
        @OptionGroup var adapterOption: AdapterOption
        @Option(help: "The prompt text.") var prompt: String
        @Option(name: .customLong("max-tokens"), help: "Tokens to generate at most.") var maxTokens = 64
        @Option(help: "Sampling temperature; 0 is greedy.") var temperature = 0.0
        @Option(name: .customLong("top-k"), help: "Sample among the k most likely tokens (0: no limit).") var topK = 0
        @Option(name: .customLong("top-p"), help: "Sample within this probability mass.") var topP = 1.0
        @Option(help: "Random seed for sampling.") var seed: UInt64 = 0
        @Flag(help: "Wrap the prompt in the model's chat template.") var chat = false

        func validate() throws {
            if maxTokens < 1 { throw ValidationError("--max-tokens must be at least 1") }
            if temperature < 0 { throw ValidationError("--temperature must be ≥ 0") }
            if !(topP > 0 && topP <= 1) { throw ValidationError("--top-p must be in (0, 1]") }
            if topK < 0 { throw ValidationError("--top-k must be ≥ 0") }
        }

        func run() throws {
            let loaded = try modelOptions.load()
            try adapterOption.apply(to: loaded)
            let ids = loaded.encodePrompt(prompt, chat: chat)
            let stops = loaded.stopTokens
            let result = loaded.model.generate(GenerationRequest(
                prompt: ids, maxTokens: maxTokens,
                sampling: SamplingSettings(temperature: temperature, topK: topK, topP: topP, seed: seed), stopTokens: stops))
            print(loaded.tokenizer.decode(result.tokens.filter { !stops.contains($0) }))
            let rate = result.tokens.count > 1 ? Double(result.tokens.count - 1) / result.decodeSeconds : 0
            FileHandle.standardError.write(Data(String(format: "[%d prompt tokens, %d generated (%@), prompt %.3f s, decode %.1f tokens/s]\n",
                                                      ids.count, result.tokens.count, result.finishReason, result.promptSeconds, rate).utf8))
        }
    }

    struct TopTokens: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "top-tokens", abstract: "Print the most likely next tokens after a prompt, with their logits.")
        @OptionGroup var modelOptions: ModelOptions
        @OptionGroup var adapterOption: AdapterOption
        @Option(help: "The prompt text.") var prompt: String
        @Option(help: "How many tokens to print.") var k = 20
        @Flag(help: "Wrap the prompt in the model's chat template.") var chat = false
        @Flag(help: "Print JSON: {\"prompt_ids\": [...], \"top\": [{\"id\", \"token\", \"logit\"}]}.") var json = false

        func run() throws {
            let loaded = try modelOptions.load()
            try adapterOption.apply(to: loaded)
            let ids = loaded.encodePrompt(prompt, chat: chat)
            let logits = loaded.model.forward(ids, cache: loaded.model.makeCache(capacity: ids.count), allPositions: false)
            let top = logits.indices.sorted { logits[$0] > logits[$1] }.prefix(max(k, 1))
            if json {
                let object: [String: Any] = [
                    "model": loaded.location.displayName, "prompt_ids": ids,
                    "top": top.map { ["id": $0, "token": loaded.tokenizer.tokenText($0), "logit": Double(logits[$0])] as [String: Any] },
                ]
                let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
                print(String(decoding: data, as: UTF8.self))
            } else {
                for id in top { print(String(format: "%6d  %10.4f  %@", id, logits[id], loaded.tokenizer.tokenText(id).debugDescription)) }
            }
        }
    }

    struct Tokenize: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the token ids of a text.")
        @OptionGroup var modelOptions: ModelOptions
        @Argument(help: "The text to tokenize.") var text: String
        @Flag(help: "Print JSON: {\"ids\": [...], \"tokens\": [...]}.") var json = false

        func run() throws {
            let loaded = try modelOptions.load()
            let ids = loaded.tokenizer.encode(text, allowSpecial: true)
            if json {
                let data = try JSONSerialization.data(withJSONObject: ["ids": ids, "tokens": ids.map(loaded.tokenizer.tokenText)], options: [.sortedKeys])
                print(String(decoding: data, as: UTF8.self))
            } else {
                print(ids.map(String.init).joined(separator: " "))
            }
        }
    }
}
