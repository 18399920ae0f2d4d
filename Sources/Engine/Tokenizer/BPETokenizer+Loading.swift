import Foundation

extension BPETokenizer {
    /// OpenAI's GPT-2 tokenizer from its original files.
    ///
    /// - Parameters:
    ///   - encoderJSON: `encoder.json`, a JSON object token string → id (50,257 tokens,
    ///     ids 0..<n without gaps).
    ///   - vocabBPE: `vocab.bpe`, a `#version` header line, then one merge `"a b"` per line
    ///     in rank order (50,000 merges).
    /// `<|endoftext|>` (50256) is the special token and the BOS and EOS token; no BOS is
    /// added, there is no padding token; the pre-tokenizer is ``PreTokenizer/gpt2``.
    public static func gpt2(encoderJSON: URL, vocabBPE: URL) throws(TokenizerError) -> BPETokenizer {
        let encoderPath = encoderJSON.path
        let object = try readJSON(encoderJSON)
        guard let dictionary = object as? [String: Any] else {
            throw .malformed(location: encoderPath, reason: "expected a JSON object mapping token strings to ids")
        }
        var pairs: [(String, Int)] = []
        pairs.reserveCapacity(dictionary.count)
        for (token, value) in dictionary {
            guard let id = integer(value) else {
                throw .malformed(location: encoderPath, reason: "the id of token \"\(token)\" is not an integer")
            }
            pairs.append((token, id))
        }
        let tokens = try denseTokens(pairs, location: encoderPath)

        let mergesPath = vocabBPE.path
        let text = try readText(vocabBPE)
        var merges: [(String, String)] = []
        var lineOfMerge: [Int] = []
        merges.reserveCapacity(50_000)
        lineOfMerge.reserveCapacity(50_000)
        for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = line.hasSuffix("\r") ? line.dropLast() : line
            if line.isEmpty || (index == 0 && line.hasPrefix("#version")) { continue }
            merges.append(try splitMerge(String(line), location: "\(mergesPath):\(index + 1)"))
            lineOfMerge.append(index + 1)
        }

        let endOfText = "<|endoftext|>"
        guard let eot = tokens.lastIndex(of: endOfText) else {
            throw .malformed(location: encoderPath, reason: "the vocabulary has no \(endOfText) token")
        }
        return try BPETokenizer(
            validating: tokens, merges: merges, mergeLocation: { "\(mergesPath):\(lineOfMerge[$0])" },
            source: encoderPath, preTokenizer: .gpt2, specialTokens: [endOfText: eot],
            bosTokenID: eot, eosTokenID: eot, padTokenID: nil, addBOS: false)
    }

    /// A tokenizer from a Hugging Face `tokenizer.json` with a byte-level BPE model.
    ///
    /// Reads `model.vocab`, `model.merges` (`"a b"` strings or `["a", "b"]` pairs) and
    /// `added_tokens` (all matched literally in text, as the `tokenizers` library does).
    /// The pre-tokenizer must be `ByteLevel` (→ ``PreTokenizer/gpt2``) or a `Sequence` of
    /// `Digits` with `individual_digits` and `ByteLevel` (→ ``PreTokenizer/smollm``).
    /// BOS, EOS, padding and whether to add BOS come from a `tokenizer_config.json` beside
    /// the file when there is one (`bos_token`, `eos_token`, `pad_token`, `add_bos_token`);
    /// otherwise `<|endoftext|>`, when present, is BOS and EOS and no BOS is added.
    public static func fromHFTokenizerJSON(_ url: URL) throws(TokenizerError) -> BPETokenizer {
        let path = url.path
        guard let root = try readJSON(url) as? [String: Any] else {
            throw .malformed(location: path, reason: "expected a JSON object")
        }
        guard let model = root["model"] as? [String: Any] else {
            throw .malformed(location: path, reason: "no \"model\" object")
        }
        if let type = model["type"] as? String, type != "BPE" {
            throw .malformed(location: path, reason: "model type \"\(type)\" is not BPE")
        }
        guard let vocab = model["vocab"] as? [String: Any] else {
            throw .malformed(location: path, reason: "model.vocab is not an object of token strings to ids")
        }
        var pairs: [(String, Int)] = []
        pairs.reserveCapacity(vocab.count)
        for (token, value) in vocab {
            guard let id = integer(value) else {
                throw .malformed(location: path, reason: "model.vocab: the id of token \"\(token)\" is not an integer")
            }
            pairs.append((token, id))
        }
        var specialTokens: [String: Int] = [:]
        if let added = root["added_tokens"] {
            guard let list = added as? [[String: Any]] else {
                throw .malformed(location: path, reason: "added_tokens is not a list of objects")
            }
            for (i, entry) in list.enumerated() {
                guard let content = entry["content"] as? String, let id = entry["id"].flatMap(integer) else {
                    throw .malformed(location: path, reason: "added_tokens[\(i)] needs a string \"content\" and an integer \"id\"")
                }
                specialTokens[content] = id
                if vocab[content] == nil { pairs.append((content, id)) }  // added past the model's vocabulary
            }
        }
        let tokens = try denseTokens(pairs, location: "\(path): model.vocab")

        guard let rawMerges = model["merges"] as? [Any] else {
            throw .malformed(location: path, reason: "model.merges is not a list")
        }
        var merges: [(String, String)] = []
        merges.reserveCapacity(rawMerges.count)
        for (i, entry) in rawMerges.enumerated() {
            if let text = entry as? String {
                merges.append(try splitMerge(text, location: "\(path): model.merges[\(i)]"))
            } else if let pair = entry as? [String], pair.count == 2 {
                merges.append((pair[0], pair[1]))
            } else {
                throw .badMerge(location: "\(path): model.merges[\(i)]", merge: "\(entry)")
            }
        }

        let preTokenizer = try hfPreTokenizer(root["pre_tokenizer"], path: path)

        func tokenID(_ value: Any?, _ key: String, in file: String) throws(TokenizerError) -> Int? {
            guard let value, !(value is NSNull) else { return nil }
            let text = (value as? String) ?? ((value as? [String: Any])?["content"] as? String)
            guard let text else { throw .malformed(location: file, reason: "\(key) is neither a string nor {\"content\": …}") }
            guard let id = specialTokens[text] ?? tokens.lastIndex(of: text) else {
                throw .malformed(location: file, reason: "\(key) \"\(text)\" is not in the vocabulary")
            }
            return id
        }
        var bos: Int?, eos: Int?, pad: Int?, addBOS = false
        let configURL = url.deletingLastPathComponent().appendingPathComponent("tokenizer_config.json")
        if FileManager.default.fileExists(atPath: configURL.path) {
            guard let config = try readJSON(configURL) as? [String: Any] else {
                throw .malformed(location: configURL.path, reason: "expected a JSON object")
            }
            bos = try tokenID(config["bos_token"], "bos_token", in: configURL.path)
            eos = try tokenID(config["eos_token"], "eos_token", in: configURL.path)
            pad = try tokenID(config["pad_token"], "pad_token", in: configURL.path)
            addBOS = (config["add_bos_token"] as? Bool) ?? false
        } else if let eot = specialTokens["<|endoftext|>"] {
            bos = eot
            eos = eot
        }
        return try BPETokenizer(
            validating: tokens, merges: merges, mergeLocation: { "\(path): model.merges[\($0)]" },
            source: path, preTokenizer: preTokenizer, specialTokens: specialTokens,
            bosTokenID: bos, eosTokenID: eos, padTokenID: pad, addBOS: addBOS && bos != nil)
    }

    /// A tokenizer from the vocabulary stored in a GGUF file's metadata.
    ///
    /// - Parameters:
    ///   - tokens: `tokenizer.ggml.tokens`, in GPT-2's byte-to-unicode alphabet.
    ///   - tokenTypes: `tokenizer.ggml.token_type`, one per token: 1 normal, 2 unknown,
    ///     3 control, 4 user-defined, 5 unused, 6 byte. Control and user-defined tokens are
    ///     special: matched literally in text and decoded as their literal text.
    ///   - merges: `tokenizer.ggml.merges`, `"a b"` in rank order.
    ///   - pre: `tokenizer.ggml.pre`: `"gpt-2"` (or `"gpt2"`) or `"smollm"`.
    ///   - source: how errors name the vocabulary's file.
    public static func fromGGUFVocabulary(
        tokens: [String], tokenTypes: [Int], merges: [String], pre: String,
        bosTokenID: Int?, eosTokenID: Int?, padTokenID: Int?, addBOS: Bool, source: String = "GGUF vocabulary"
    ) throws(TokenizerError) -> BPETokenizer {
        guard tokenTypes.count == tokens.count else {
            throw .malformed(location: source, reason:
                "tokenizer.ggml.token_type has \(tokenTypes.count) entries for \(tokens.count) tokens")
        }
        let preTokenizer: PreTokenizer
        switch pre {
        case "gpt-2", "gpt2": preTokenizer = .gpt2
        case "smollm": preTokenizer = .smollm
        default:
            throw .unsupportedPreTokenizer(location: "\(source): tokenizer.ggml.pre", name: pre, known: ["gpt-2", "smollm"])
        }
        var specialTokens: [String: Int] = [:]
        for (id, type) in tokenTypes.enumerated() where type == 3 || type == 4 { specialTokens[tokens[id]] = id }
        var pairs: [(String, String)] = []
        pairs.reserveCapacity(merges.count)
        for (i, merge) in merges.enumerated() {
            pairs.append(try splitMerge(merge, location: "\(source): tokenizer.ggml.merges[\(i)]"))
        }
        return try BPETokenizer(
            validating: tokens, merges: pairs, mergeLocation: { "\(source): tokenizer.ggml.merges[\($0)]" },
            source: source, preTokenizer: preTokenizer, specialTokens: specialTokens,
            bosTokenID: bosTokenID, eosTokenID: eosTokenID, padTokenID: padTokenID, addBOS: addBOS)
    }

    // MARK: Helpers

    private static func readData(_ url: URL) throws(TokenizerError) -> Data {
        guard FileManager.default.fileExists(atPath: url.path) else { throw .notFound(path: url.path) }
        do { return try Data(contentsOf: url) } catch {
            throw .unreadable(path: url.path, reason: error.localizedDescription)
        }
    }

    private static func readText(_ url: URL) throws(TokenizerError) -> String {
        let data = try readData(url)
        guard let text = String(data: data, encoding: .utf8) else {
            throw .malformed(location: url.path, reason: "not valid UTF-8 text")
        }
        return text
    }

    private static func readJSON(_ url: URL) throws(TokenizerError) -> Any {
        let data = try readData(url)
        do { return try JSONSerialization.jsonObject(with: data) } catch {
            let detail = (error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String
            throw .malformed(location: url.path, reason: "not valid JSON" + (detail.map { ": \($0)" } ?? ""))
        }
    }

    /// A JSON number that is an integer.
    private static func integer(_ value: Any) -> Int? {
        if let n = value as? Int { return n }
        if let d = value as? Double, d == d.rounded(), abs(d) < 1e15 { return Int(d) }
        return nil
    }

    /// Token strings indexed by id; the ids must be exactly 0..<count.
    private static func denseTokens(_ pairs: [(String, Int)], location: String) throws(TokenizerError) -> [String] {
        var tokens = [String?](repeating: nil, count: pairs.count)
        for (token, id) in pairs {
            guard (0..<pairs.count).contains(id) else {
                throw .malformed(location: location, reason:
                    "token \"\(token)\" has id \(id), outside 0..<\(pairs.count) (ids must have no gaps)")
            }
            if let other = tokens[id] {
                throw .malformed(location: location, reason: "tokens \"\(other)\" and \"\(token)\" share id \(id)")
            }
            tokens[id] = token
        }
        return tokens.map { $0! }
    }

    private static func hfPreTokenizer(_ value: Any?, path: String) throws(TokenizerError) -> PreTokenizer {
        let location = "\(path): pre_tokenizer"
        let known = ["ByteLevel", "Sequence[Digits(individual_digits), ByteLevel]"]
        guard let object = value as? [String: Any], let type = object["type"] as? String else {
            throw .unsupportedPreTokenizer(location: location, name: "null", known: known)
        }
        func isPlainByteLevel(_ object: [String: Any]) -> Bool {
            object["type"] as? String == "ByteLevel"
                && (object["add_prefix_space"] as? Bool ?? false) == false
                && (object["use_regex"] as? Bool ?? true) == true
        }
        if isPlainByteLevel(object) { return .gpt2 }
        if type == "Sequence", let steps = object["pretokenizers"] as? [[String: Any]], steps.count == 2,
           steps[0]["type"] as? String == "Digits", steps[0]["individual_digits"] as? Bool == true,
           isPlainByteLevel(steps[1]) {
            return .smollm
        }
        let name: String
        if type == "Sequence", let steps = object["pretokenizers"] as? [[String: Any]] {
            name = "Sequence[" + steps.map { $0["type"] as? String ?? "?" }.joined(separator: ", ") + "]"
        } else if type == "ByteLevel" {
            name = "ByteLevel with add_prefix_space or without use_regex"
        } else {
            name = type
        }
        throw .unsupportedPreTokenizer(location: location, name: name, known: known)
    }
}
