import Foundation

/// A model with its tokenizer, ready to run, and how long loading took.
public final class LoadedModel: @unchecked Sendable {
    public let location: ModelLocation
    public let model: LanguageModel
    public let tokenizer: BPETokenizer
    /// The chat template, for instruction-tuned models that have one.
    public let chatTemplate: ChatTemplate?
    public let loadSeconds: Double
    public let tokenizerDescription: String
    /// For a deployment's client folder: its manifest. The remote modules' weights are then
    /// absent (empty): only an encrypted backend can run them.
    public let clientDeployment: ClientManifest?

    init(location: ModelLocation, model: LanguageModel, tokenizer: BPETokenizer, chatTemplate: ChatTemplate?,
         loadSeconds: Double, tokenizerDescription: String, clientDeployment: ClientManifest? = nil) {
        self.clientDeployment = clientDeployment
        self.location = location
        self.model = model
        self.tokenizer = tokenizer
        self.chatTemplate = chatTemplate
        self.loadSeconds = loadSeconds
        self.tokenizerDescription = tokenizerDescription
    }

    /// Tokens that end a generation: end of text, and the chat template's end of turn.
    public var stopTokens: Set<Int> {
        var s = Set<Int>()
        if let eos = tokenizer.eosTokenID { s.insert(eos) }
        if chatTemplate != nil, let end = tokenizer.id(of: "<|im_end|>") { s.insert(end) }
        return s
    }

    /// The prompt's token ids; with `chat`, the text is the user's turn in the chat template
    /// (models without one are prompted with the plain text); with `qa`, the question as
    /// the Q&A training rows begin (question + end-of-text, see ``CausalLMData``), so the
    /// model continues with the answer.
    public func encodePrompt(_ text: String, chat: Bool, qa: Bool = false) -> [Int] {
        if qa, let eos = tokenizer.eosTokenID { return CausalLMData.encode(text, tokenizer, bos: false) + [eos] }
        if chat, let template = chatTemplate {
            return tokenizer.encode(template.render([.user(text)], addGenerationPrompt: true), allowSpecial: true)
        }
        let ids = tokenizer.encode(text, allowSpecial: true)
        if ids.isEmpty, let bos = tokenizer.bosTokenID ?? tokenizer.eosTokenID { return [bos] }
        return ids
    }

    public static func load(_ location: ModelLocation) throws -> LoadedModel {
        let start = Date()
        switch location.format {
        case .gguf:
            let file = try GGUFFile(url: location.url)
            let (model, tokenizer, template) = try fromGGUF(file, path: location.url.path)
            return LoadedModel(location: location, model: model, tokenizer: tokenizer, chatTemplate: template,
                               loadSeconds: Date().timeIntervalSince(start), tokenizerDescription: "byte-level BPE from the GGUF (\(tokenizer.vocabularySize) tokens)")
        case .deploymentClient:
            return try loadClient(location, start: start)
        case .safetensors:
            let configURL = location.url.appendingPathComponent("config.json")
            let configData: Data
            do { configData = try Data(contentsOf: configURL) } catch {
                throw ModelLoadError.badConfig(file: configURL.path, key: "config.json", message: "cannot read")
            }
            let weights = try SafeTensorsCheckpoint(directory: location.url)
            let model = try ModelFamily.load(tensors: weights, config: configData, configFile: configURL.path, file: location.url.path)
            let (tokenizer, description) = try loadTokenizer(in: location.tokenizerDirectory ?? location.url)
            return LoadedModel(location: location, model: model, tokenizer: tokenizer, chatTemplate: nil,
                               loadSeconds: Date().timeIntervalSince(start), tokenizerDescription: description)
        }
    }

    /// A deployment's client folder: the model without the server's matrices.
    static func loadClient(_ location: ModelLocation, start: Date) throws -> LoadedModel {
        let dir = location.url
        let manifest = try ClientManifest.load(from: dir)
        let configURL = dir.appendingPathComponent(DeploymentLayout.clientConfig)
        guard let configData = FileManager.default.contents(atPath: configURL.path) else {
            throw ModelLoadError.badConfig(file: configURL.path, key: "config.json", message: "cannot read")
        }
        let tensorsURL = dir.appendingPathComponent(DeploymentLayout.clientTensors)
        let file = try SafeTensorsFile(url: tensorsURL)
        let remote = Set(manifest.modules.map(\.name))
        let model = try ModelFamily.load(tensors: file, config: configData, configFile: configURL.path, file: tensorsURL.path, serverModules: remote)
        let vocabularyURL = dir.appendingPathComponent(DeploymentLayout.clientVocabulary)
        let vocabulary = try Deployment.readJSON(TokenizerVocabulary.self, from: vocabularyURL)
        let tokenizer = try BPETokenizer.from(vocabulary, source: vocabularyURL.path)
        return LoadedModel(location: location, model: model, tokenizer: tokenizer,
                           chatTemplate: manifest.chatTemplate ? ChatTemplate(defaultSystemMessage: manifest.chatSystemMessage) : nil,
                           loadSeconds: Date().timeIntervalSince(start), tokenizerDescription: "byte-level BPE (\(tokenizer.vocabularySize) tokens, the deployment's vocabulary.json)",
                           clientDeployment: manifest)
    }

    /// A model of the family its `general.architecture` names, and its tokenizer, from GGUF metadata (`tokenizer.ggml.*`).
    static func fromGGUF(_ file: GGUFFile, path: String) throws -> (LanguageModel, BPETokenizer, ChatTemplate?) {
        let m = file.metadata
        let arch = m["general.architecture"]?.string ?? "?"
        guard let family = ModelFamily.forGGUF(arch), let load = family.loadGGUF else {
            throw ModelLoadError.unsupportedArchitecture(file: path, architecture: arch)
        }
        let model = try load(file, path)
        let (tokenizer, template) = try ggufTokenizer(file, path: path)
        return (model, tokenizer, template)
    }

    /// The tokenizer and chat template of a GGUF's metadata (`tokenizer.ggml.*`).
    static func ggufTokenizer(_ file: GGUFFile, path: String) throws -> (BPETokenizer, ChatTemplate?) {
        let m = file.metadata
        guard let tokens = m["tokenizer.ggml.tokens"]?.strings else {
            throw ModelLoadError.badConfig(file: path, key: "tokenizer.ggml.tokens", message: "the GGUF has no vocabulary")
        }
        let tokenizer = try BPETokenizer.fromGGUFVocabulary(
            tokens: tokens, tokenTypes: m["tokenizer.ggml.token_type"]?.ints ?? [], merges: m["tokenizer.ggml.merges"]?.strings ?? [],
            pre: m["tokenizer.ggml.pre"]?.string ?? "gpt-2", bosTokenID: m["tokenizer.ggml.bos_token_id"]?.int,
            eosTokenID: m["tokenizer.ggml.eos_token_id"]?.int, padTokenID: m["tokenizer.ggml.padding_token_id"]?.int,
            addBOS: m["tokenizer.ggml.add_bos_token"]?.bool ?? false, source: path)
        let template = m["tokenizer.chat_template"]?.string.flatMap { ChatTemplate(chatMLJinjaTemplate: $0) }
        return (tokenizer, template)
    }

    /// The tokenizer alone, without reading any weights: from a GGUF's metadata, a deployment
    /// client's vocabulary, or a directory's tokenizer files (tokenizer.json, vocab.json +
    /// merges.txt, encoder.json + vocab.bpe; a directory with only those files is enough).
    /// `gpt2` names the tokenizer files `make setup` caches when the weights are not there.
    public static func tokenizer(_ nameOrPath: String) throws -> (tokenizer: BPETokenizer, description: String) {
        let gpt2Tokenizer = ModelCache.directory.appendingPathComponent("models/gpt2-tokenizer", isDirectory: true)
        if ["gpt2", "openai-community/gpt2"].contains(nameOrPath.lowercased()), ModelCatalog.hasGPT2Tokenizer(gpt2Tokenizer) {
            return try loadTokenizer(in: gpt2Tokenizer)
        }
        let url = URL(fileURLWithPath: (nameOrPath as NSString).expandingTildeInPath)
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory), isDirectory.boolValue,
           !ModelCatalog.isSafetensorsDirectory(url), (try? Deployment.folder(DeploymentLayout.clientFolder, of: url, marker: DeploymentLayout.clientManifest)) == nil {
            return try loadTokenizer(in: url)
        }
        let location = try ModelCatalog.locate(nameOrPath)
        switch location.format {
        case .gguf:
            let (tokenizer, _) = try ggufTokenizer(try GGUFFile(url: location.url), path: location.url.path)
            return (tokenizer, "byte-level BPE from the GGUF (\(tokenizer.vocabularySize) tokens)")
        case .deploymentClient:
            let vocabularyURL = location.url.appendingPathComponent(DeploymentLayout.clientVocabulary)
            let vocabulary = try Deployment.readJSON(TokenizerVocabulary.self, from: vocabularyURL)
            return (try BPETokenizer.from(vocabulary, source: vocabularyURL.path), "the deployment's vocabulary.json")
        case .safetensors:
            return try loadTokenizer(in: location.tokenizerDirectory ?? location.url)
        }
    }

    /// What a saved adapter records as `base_model_name_or_path`: the Hugging Face id when
    /// the model's origin is known, else the path it was loaded from.
    public var baseModelNameOrPath: String { location.huggingFaceID ?? location.url.path }

    /// GPT-2's tokenizer files in a directory: tokenizer.json, vocab.json + merges.txt, or encoder.json + vocab.bpe.
    static func loadTokenizer(in dir: URL) throws -> (BPETokenizer, String) {
        let fm = FileManager.default
        if fm.fileExists(atPath: dir.appendingPathComponent("tokenizer.json").path) {
            return (try BPETokenizer.fromHFTokenizerJSON(dir.appendingPathComponent("tokenizer.json")), "tokenizer.json")
        }
        for (vocab, merges) in [("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")]
        where fm.fileExists(atPath: dir.appendingPathComponent(vocab).path) {
            return (try BPETokenizer.gpt2(encoderJSON: dir.appendingPathComponent(vocab), vocabBPE: dir.appendingPathComponent(merges)),
                    "GPT-2 byte-level BPE (\(vocab), \(merges))")
        }
        throw ModelUnavailable(name: dir.path, reasons: ["no tokenizer files (tokenizer.json, vocab.json + merges.txt, or encoder.json + vocab.bpe)"])
    }
}
