import Foundation

/// One tokenized training example, before padding.
///
/// `labels` follows Hugging Face's convention: it has one entry per token and the loss
/// compares the logits at position t − 1 with `labels[t]` (the shift happens in the loss);
/// ``CausalLMData/ignoreIndex`` (-100) marks positions that are not trained on.
public struct TokenizedExample: Equatable, Sendable {
    public var tokens: [Int]
    public var labels: [Int]
    /// The example's 1-based line in its data file.
    public var line: Int

    public init(tokens: [Int], labels: [Int], line: Int) {
        precondition(tokens.count == labels.count, "line \(line): \(tokens.count) tokens but \(labels.count) labels")
        (self.tokens, self.labels, self.line) = (tokens, labels, line)
    }
}

/// How examples become fixed-length rows.
public struct CausalLMDataOptions: Equatable, Sendable {
    public enum Padding: String, Codable, Sendable, CaseIterable {
        /// Every row has `maxLength` tokens (the use case's notebooks: 128).
        case maxLength = "max_length"
        /// Rows are as long as the batch's longest example.
        case longest
    }

    /// Tokens per example after truncation (and the row length with `.maxLength` padding).
    public var maxLength: Int
    /// Cut long examples (as the notebooks do); when false, a longer example is an error
    /// naming its line.
    public var truncate: Bool
    public var padding: Padding
    /// The id padding uses; nil: the tokenizer's pad token, else its end-of-text token.
    public var paddingTokenID: Int?

    public init(maxLength: Int = 128, truncate: Bool = true, padding: Padding = .maxLength, paddingTokenID: Int? = nil) {
        (self.maxLength, self.truncate, self.padding, self.paddingTokenID) = (maxLength, truncate, padding, paddingTokenID)
    }
}

/// A data set that cannot be turned into training rows, naming the file and line at fault.
public enum BatchingError: Error, Equatable, CustomStringConvertible {
    case invalidMaxLength(Int)
    /// max_length exceeds what the model can attend over.
    case longerThanContext(maxLength: Int, contextLength: Int)
    case noEndOfTextToken
    /// An example needs `tokens` tokens, more than `maxLength`, and truncation is off.
    case exampleTooLong(path: String, line: Int, tokens: Int, maxLength: Int)
    case invalidBatchSize(Int)
    /// A chat example, and a model without a chat template to render it.
    case noChatTemplate(path: String, line: Int)

    public var description: String {
        switch self {
        case .invalidMaxLength(let n): return "max_length must be at least 2 tokens, got \(n)"
        case .longerThanContext(let n, let c): return "max_length \(n) is longer than the model's context of \(c) tokens"
        case .noEndOfTextToken: return "the tokenizer has no end-of-text token to end examples with"
        case .exampleTooLong(let p, let l, let t, let n):
            return "\(p):\(l): the example is \(t) tokens long, more than max_length \(n) (raise max_length or turn truncation on)"
        case .invalidBatchSize(let b): return "batch_size must be a positive integer, got \(b)"
        case .noChatTemplate(let p, let l): return "\(p):\(l): a chat example (messages), and the model has no chat template to render it"
        }
    }
}

/// A batch: B rows of T token ids with their labels, row-major (B, T).
public struct CausalLMBatch: Equatable, Sendable {
    /// B (the last batch of an epoch may be smaller than the batch size).
    public var rowCount: Int
    /// T.
    public var rowLength: Int
    /// (B, T) token ids, right-padded.
    public var tokens: [Int]
    /// (B, T) labels; padding is ``CausalLMData/ignoreIndex``.
    public var labels: [Int]
    /// (B) tokens before the padding in each row: the attention mask is 1 at positions < lengths[b].
    public var lengths: [Int]
    /// (B) which examples (indices into ``CausalLMData/examples``) the rows hold.
    public var exampleIndices: [Int]

    /// The rows of `batches` one after another, each right-padded to the longest row length
    /// (tokens with `paddingTokenID`, labels with the ignore index): the micro-batches of one
    /// optimizer step as one batch. Attention is causal and padding comes last, so each
    /// row's real tokens compute what they did in their own batch.
    public static func concatenating(_ batches: [CausalLMBatch], paddingTokenID: Int) -> CausalLMBatch {
        let length = batches.map(\.rowLength).max() ?? 0
        var out = CausalLMBatch(rowCount: 0, rowLength: length, tokens: [], labels: [], lengths: [], exampleIndices: [])
        for b in batches {
            for r in 0..<b.rowCount {
                let row = r * b.rowLength, pad = length - b.rowLength
                out.tokens += b.tokens[row..<(row + b.rowLength)] + [Int](repeating: paddingTokenID, count: pad)
                out.labels += b.labels[row..<(row + b.rowLength)] + [Int](repeating: Layers.ignoreIndex, count: pad)
            }
            out.rowCount += b.rowCount
            out.lengths += b.lengths
            out.exampleIndices += b.exampleIndices
        }
        return out
    }
}

/// Training rows for a causal language model, built from a ``Dataset`` and a tokenizer.
///
/// Question/answer data (the GPT-2 notebook's `tokenize_function`):
///
///     tokens = question + [EOS] + answer + [EOS]          question ≤ L/2 tokens, answer ≤ L/2 − 1 when truncating
///     labels = [-100]·(|question| + 1) + answer + [EOS]   the answer and its EOS are trained on
///     both cut to L, then right-padded to L (tokens with the pad id, labels with -100)
///
/// Text data (JSONL `{"text": …}`): tokens = text + [EOS] (with BOS first when the tokenizer
/// adds one), labels = tokens; cut to L, padding labelled -100. Questions and answers are
/// encoded without BOS, like `add_special_tokens=False`.
public struct CausalLMData: Sendable {
    /// The label value the loss skips (PyTorch's `ignore_index`).
    public static let ignoreIndex = -100

    public let examples: [TokenizedExample]
    public let options: CausalLMDataOptions
    /// The id padding uses.
    public let paddingTokenID: Int

    /// Tokenizes every example. `path` names the data file in errors; `contextLength`, when
    /// given, is checked against `options.maxLength`.
    public init(dataset: Dataset, tokenizer: BPETokenizer, options: CausalLMDataOptions = CausalLMDataOptions(),
                contextLength: Int? = nil, chatTemplate: ChatTemplate? = nil, path: String) throws(BatchingError) {
        guard options.maxLength >= 2 else { throw .invalidMaxLength(options.maxLength) }
        if let contextLength, options.maxLength > contextLength {
            throw .longerThanContext(maxLength: options.maxLength, contextLength: contextLength)
        }
        guard let eos = tokenizer.eosTokenID else { throw .noEndOfTextToken }
        self.options = options
        paddingTokenID = options.paddingTokenID ?? tokenizer.padTokenID ?? eos
        var examples: [TokenizedExample] = []
        for e in dataset.examples {
            if let messages = e.messages {
                guard let chatTemplate else { throw .noChatTemplate(path: path, line: e.line) }
                examples.append(try Self.chat(messages, template: chatTemplate, tokenizer: tokenizer, options: options, line: e.line, path: path))
            } else if e.isCompletion == true, let prompt = e.prompt {
                examples.append(try Self.promptCompletion(prompt: Self.encode(prompt, tokenizer, bos: true), completion: Self.encode(e.text, tokenizer, bos: false),
                                                          eos: eos, options: options, line: e.line, path: path))
            } else if let question = e.prompt {
                examples.append(try Self.questionAnswer(
                    question: Self.encode(question, tokenizer, bos: false), answer: Self.encode(e.text, tokenizer, bos: false),
                    eos: eos, options: options, line: e.line, path: path))
            } else {
                examples.append(try Self.text(Self.encode(e.text, tokenizer, bos: true), eos: eos, options: options, line: e.line, path: path))
            }
        }
        self.examples = examples
    }

    /// Rows already tokenized (e.g. by another tool): unpadded tokens and labels of equal length.
    public init(examples: [TokenizedExample], options: CausalLMDataOptions, paddingTokenID: Int) {
        for e in examples { precondition(e.tokens.count == e.labels.count, "line \(e.line): \(e.tokens.count) tokens, \(e.labels.count) labels") }
        (self.examples, self.options, self.paddingTokenID) = (examples, options, paddingTokenID)
    }

    /// Token ids of `text`, special-token text recognised (as HF tokenizers do), with or without the tokenizer's BOS.
    static func encode(_ text: String, _ tokenizer: BPETokenizer, bos: Bool) -> [Int] {
        var ids = tokenizer.encode(text, allowSpecial: true)
        if !bos && tokenizer.addBOS, let b = tokenizer.bosTokenID, ids.first == b { ids.removeFirst() }
        return ids
    }

    /// One question/answer row before padding (see the type's documentation).
    public static func questionAnswer(question: [Int], answer: [Int], eos: Int, options: CausalLMDataOptions,
                                      line: Int, path: String) throws(BatchingError) -> TokenizedExample {
        let L = options.maxLength
        var q = question, a = answer
        if options.truncate {
            q = Array(q.prefix(L / 2))
            a = Array(a.prefix(L / 2 - 1))
        } else if q.count + a.count + 2 > L {
            throw .exampleTooLong(path: path, line: line, tokens: q.count + a.count + 2, maxLength: L)
        }
        let tokens = q + [eos] + a + [eos]
        let labels = [Int](repeating: Self.ignoreIndex, count: q.count + 1) + a + [eos]
        return TokenizedExample(tokens: Array(tokens.prefix(L)), labels: Array(labels.prefix(L)), line: line)
    }

    /// A prompt and its completion before padding: prompt + completion + [EOS], the loss on
    /// the completion and its EOS (prompt tokens labelled -100), cut to `maxLength`.
    public static func promptCompletion(prompt: [Int], completion: [Int], eos: Int, options: CausalLMDataOptions,
                                        line: Int, path: String) throws(BatchingError) -> TokenizedExample {
        let tokens = prompt + completion + [eos]
        if tokens.count > options.maxLength && !options.truncate {
            throw .exampleTooLong(path: path, line: line, tokens: tokens.count, maxLength: options.maxLength)
        }
        let labels = [Int](repeating: Self.ignoreIndex, count: prompt.count) + completion + [eos]
        return TokenizedExample(tokens: Array(tokens.prefix(options.maxLength)), labels: Array(labels.prefix(options.maxLength)), line: line)
    }

    /// A conversation rendered with the model's chat template, the loss on the assistant
    /// turns only: each assistant turn's content and its end-of-turn token are labels; the
    /// system and user turns, the role headers and the newlines between turns are -100.
    /// Each piece is tokenized on its own (special tokens never merge with text, and every
    /// piece starts after a newline or a special token), so the ids are those of the whole
    /// rendering. Cut to `maxLength`.
    public static func chat(_ messages: [ChatTemplate.Message], template: ChatTemplate, tokenizer: BPETokenizer, options: CausalLMDataOptions,
                            line: Int, path: String) throws(BatchingError) -> TokenizedExample {
        var tokens: [Int] = [], labels: [Int] = []
        func add(_ text: String, learn: Bool) {
            let ids = encode(text, tokenizer, bos: false)
            tokens += ids
            labels += learn ? ids : [Int](repeating: ignoreIndex, count: ids.count)
        }
        if tokenizer.addBOS, let bos = tokenizer.bosTokenID { tokens.append(bos); labels.append(ignoreIndex) }
        for piece in template.pieces(messages, addGenerationPrompt: false) { add(piece.text, learn: piece.isAssistant) }
        if tokens.count > options.maxLength && !options.truncate {
            throw .exampleTooLong(path: path, line: line, tokens: tokens.count, maxLength: options.maxLength)
        }
        return TokenizedExample(tokens: Array(tokens.prefix(options.maxLength)), labels: Array(labels.prefix(options.maxLength)), line: line)
    }

    /// One text row before padding: text + [EOS], every token a label.
    public static func text(_ ids: [Int], eos: Int, options: CausalLMDataOptions, line: Int, path: String) throws(BatchingError) -> TokenizedExample {
        let tokens = ids + [eos]
        if tokens.count > options.maxLength && !options.truncate {
            throw .exampleTooLong(path: path, line: line, tokens: tokens.count, maxLength: options.maxLength)
        }
        let cut = Array(tokens.prefix(options.maxLength))
        return TokenizedExample(tokens: cut, labels: cut, line: line)
    }

    /// An example right-padded to `length` tokens: (tokens, labels).
    public func padded(_ example: TokenizedExample, to length: Int) -> (tokens: [Int], labels: [Int]) {
        precondition(length >= example.tokens.count, "line \(example.line): \(example.tokens.count) tokens do not fit in \(length)")
        let pad = length - example.tokens.count
        return (example.tokens + [Int](repeating: paddingTokenID, count: pad), example.labels + [Int](repeating: Self.ignoreIndex, count: pad))
    }

    /// A permutation of 0..<count for `epoch` (0-based): Fisher–Yates driven by a SplitMix64
    /// stream derived from (seed, epoch). Equal arguments give equal orders on every machine.
    public static func epochOrder(count: Int, epoch: Int, seed: UInt64) -> [Int] {
        var epochHash = SeededGenerator(seed: UInt64(truncatingIfNeeded: epoch))
        var rng = SeededGenerator(seed: seed ^ epochHash.next())
        var order = Array(0..<count)
        var i = count - 1
        while i > 0 {
            order.swapAt(i, Int(uniform(below: UInt64(i + 1), &rng)))
            i -= 1
        }
        return order
    }

    /// Uniform in 0..<n without modulo bias (rejection of the top partial range).
    static func uniform(below n: UInt64, _ rng: inout SeededGenerator) -> UInt64 {
        let limit = UInt64.max - UInt64.max % n
        while true {
            let x = rng.next()
            if x < limit { return x % n }
        }
    }

    /// Batches per epoch: ⌈N / B⌉, or ⌊N / B⌋ with `dropLast`.
    public func batchesPerEpoch(batchSize: Int, dropLast: Bool = false) -> Int {
        dropLast ? examples.count / batchSize : (examples.count + batchSize - 1) / batchSize
    }

    /// The batches of one epoch, in order: the examples shuffled by ``epochOrder(count:epoch:seed:)``
    /// (or in file order without `shuffle`), cut into groups of `batchSize`; the last, smaller
    /// group is kept unless `dropLast` (like PyTorch's DataLoader).
    public func batches(epoch: Int, batchSize: Int, seed: UInt64, shuffle: Bool = true, dropLast: Bool = false) throws(BatchingError) -> [CausalLMBatch] {
        guard batchSize > 0 else { throw .invalidBatchSize(batchSize) }
        let order = shuffle ? Self.epochOrder(count: examples.count, epoch: epoch, seed: seed) : Array(examples.indices)
        var result: [CausalLMBatch] = []
        var start = 0
        while start < order.count {
            let group = Array(order[start..<min(start + batchSize, order.count)])
            start += batchSize
            if group.count < batchSize && dropLast { break }
            result.append(batch(of: group))
        }
        return result
    }

    /// One batch of the given examples, padded per ``CausalLMDataOptions/padding``.
    public func batch(of indices: [Int]) -> CausalLMBatch {
        let lengths = indices.map { examples[$0].tokens.count }
        let T = options.padding == .maxLength ? options.maxLength : (lengths.max() ?? 0)
        var tokens: [Int] = [], labels: [Int] = []
        tokens.reserveCapacity(indices.count * T)
        labels.reserveCapacity(indices.count * T)
        for i in indices {
            let row = padded(examples[i], to: T)
            tokens += row.tokens
            labels += row.labels
        }
        return CausalLMBatch(rowCount: indices.count, rowLength: T, tokens: tokens, labels: labels, lengths: lengths, exampleIndices: indices)
    }
}
