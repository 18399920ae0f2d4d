import Foundation

extension ModelFamily {
    /// GPT-2: config.json `model_type` gpt2 (no GGUF reader).
    public static let gpt2 = ModelFamily(
        name: "gpt2", modelTypes: ["gpt2"], ggufArchitectures: [],
        loadTensors: { source, config, file, serverModules in
            try GPT2Model.load(from: source, config: JSONDecoder().decode(GPT2Config.self, from: config), file: file, serverModules: serverModules)
        },
        loadGGUF: nil)
}
