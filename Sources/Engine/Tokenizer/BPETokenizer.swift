import Foundation

/// A byte-level BPE tokenizer (GPT-2, SmolLM2 and their relatives).
///
/// Encoding: the text is cut at special-token strings (when allowed), each stretch between
/// them is split into pieces by the ``PreTokenizer``, each piece's UTF-8 bytes start as
/// one symbol per byte (the vocabulary's one-byte tokens), and adjacent symbol pairs are
/// merged, lowest merge rank first and leftmost first among equal ranks, until no pair in
/// the merge list remains. Merges never cross a piece boundary. Decoding concatenates the
/// bytes of the tokens and reads them as UTF-8 once, at the end.
///
/// Immutable after construction apart from an internal, locked cache of encoded pieces, so
/// one instance can be shared between threads.
public final class BPETokenizer: @unchecked Sendable {
    /// How text is cut into pieces before merging.
    public let preTokenizer: PreTokenizer
    public let bosTokenID: Int?
    public let eosTokenID: Int?
    public let padTokenID: Int?
    /// Whether ``encode(_:allowSpecial:)`` prepends ``bosTokenID``.
    public let addBOS: Bool

    /// Token strings in GPT-2's byte-to-unicode alphabet, indexed by id.
    private let tokens: [String]
    private let idOfToken: [String: Int]
    /// Special tokens by their literal text.
    private let specialTokens: [String: Int]
    private let isSpecialID: [Bool]
    /// `(left << 32 | right)` → `(rank << 32 | merged)`, all ids and ranks as UInt32.
    private let merges: [UInt64: UInt64]
    /// The id of each byte's one-byte token, or -1 when the vocabulary lacks it.
    private let byteTokenIDs: [Int32]
    /// The bytes each token decodes to: `decodedBytes[decodedOffsets[id]..<decodedOffsets[id + 1]]`.
    private let decodedBytes: [UInt8]
    private let decodedOffsets: [Int]
    private let specialMatcher: SpecialTokenMatcher
    private let cache = PieceCache()

    /// The number of tokens, i.e. one more than the largest id.
    public var vocabularySize: Int { tokens.count }

    /// Builds a tokenizer from a vocabulary already in memory.
    ///
    /// - Parameters:
    ///   - tokens: `tokens[i]` is token i spelled in GPT-2's byte-to-unicode alphabet
    ///     (`"Ġthe"` for `" the"`), as in `encoder.json` or GGUF `tokenizer.ggml.tokens`;
    ///     special tokens are spelled as their literal text.
    ///   - merges: `"a b"` strings in rank order (rank 0 first); `a`, `b` and `ab` must be tokens.
    ///   - specialTokens: literal text → id, matched in the text before pre-tokenization.
    ///
    /// Invalid input (a merge naming an unknown token, an id out of range) is a programmer
    /// error here and stops the program; the `gpt2`, `fromHFTokenizerJSON` and
    /// `fromGGUFVocabulary` factories validate files and throw ``TokenizerError`` instead.
    public convenience init(
        tokens: [String], merges: [String], preTokenizer: PreTokenizer, specialTokens: [String: Int],
        bosTokenID: Int?, eosTokenID: Int?, padTokenID: Int?, addBOS: Bool
    ) {
        do {
            try self.init(
                validating: tokens, merges: merges.enumerated().map { try Self.splitMerge($1, location: "merges[\($0)]") },
                mergeLocation: { "merges[\($0)]" }, source: "BPETokenizer.init", preTokenizer: preTokenizer,
                specialTokens: specialTokens, bosTokenID: bosTokenID, eosTokenID: eosTokenID,
                padTokenID: padTokenID, addBOS: addBOS)
        } catch {
            preconditionFailure("BPETokenizer.init: \(error)")
        }
    }

    /// The designated initializer: validates everything and names `source` (a file) in errors.
    init(
        validating tokens: [String], merges mergePairs: [(String, String)], mergeLocation: (Int) -> String,
        source: String, preTokenizer: PreTokenizer, specialTokens: [String: Int],
        bosTokenID: Int?, eosTokenID: Int?, padTokenID: Int?, addBOS: Bool
    ) throws(TokenizerError) {
        guard !tokens.isEmpty else { throw .malformed(location: source, reason: "the vocabulary is empty") }
        guard tokens.count < Int(Int32.max) else { throw .malformed(location: source, reason: "the vocabulary is too large") }
        var idOfToken: [String: Int] = [:]
        idOfToken.reserveCapacity(tokens.count)
        // Some vocabularies repeat a string; like llama.cpp's lookup table, the last id wins.
        for (id, token) in tokens.enumerated() { idOfToken[token] = id }

        func checkID(_ id: Int?, _ what: String) throws(TokenizerError) {
            if let id, !(0..<tokens.count).contains(id) {
                throw .malformed(location: source, reason: "\(what) \(id) is outside the vocabulary (0..<\(tokens.count))")
            }
        }
        try checkID(bosTokenID, "BOS token id")
        try checkID(eosTokenID, "EOS token id")
        try checkID(padTokenID, "padding token id")
        if addBOS && bosTokenID == nil {
            throw .malformed(location: source, reason: "the tokenizer adds a BOS token but has no BOS token id")
        }
        var isSpecialID = [Bool](repeating: false, count: tokens.count)
        for (text, id) in specialTokens.sorted(by: { $0.value < $1.value }) {
            try checkID(id, "special token \"\(text)\" has id")
            guard !text.isEmpty else { throw .malformed(location: source, reason: "special token \(id) is empty") }
            isSpecialID[id] = true
        }

        var merges: [UInt64: UInt64] = [:]
        merges.reserveCapacity(mergePairs.count)
        for (rank, (left, right)) in mergePairs.enumerated() {
            let text = left + " " + right
            guard let l = idOfToken[left] else {
                throw .unknownMergeToken(location: mergeLocation(rank), merge: text, token: left)
            }
            guard let r = idOfToken[right] else {
                throw .unknownMergeToken(location: mergeLocation(rank), merge: text, token: right)
            }
            guard let m = idOfToken[left + right] else {
                throw .unknownMergeToken(location: mergeLocation(rank), merge: text, token: left + right)
            }
            let key = UInt64(l) << 32 | UInt64(r)
            if merges[key] == nil { merges[key] = UInt64(rank) << 32 | UInt64(m) }  // the first rank wins
        }

        var decodedBytes: [UInt8] = []
        var decodedOffsets: [Int] = [0]
        decodedOffsets.reserveCapacity(tokens.count + 1)
        for (id, token) in tokens.enumerated() {
            if isSpecialID[id] && specialTokens[token] == id {
                decodedBytes.append(contentsOf: token.utf8)  // literal text, not byte-level
            } else {
                decodedBytes.append(contentsOf: ByteLevelAlphabet.bytes(of: token))
            }
            decodedOffsets.append(decodedBytes.count)
        }

        self.tokens = tokens
        self.idOfToken = idOfToken
        self.specialTokens = specialTokens
        self.isSpecialID = isSpecialID
        self.merges = merges
        self.byteTokenIDs = ByteLevelAlphabet.scalarOfByte.map { Int32(idOfToken[String($0)] ?? -1) }
        self.decodedBytes = decodedBytes
        self.decodedOffsets = decodedOffsets
        self.specialMatcher = SpecialTokenMatcher(specialTokens)
        self.preTokenizer = preTokenizer
        self.bosTokenID = bosTokenID
        self.eosTokenID = eosTokenID
        self.padTokenID = padTokenID
        self.addBOS = addBOS
    }

    /// Splits `"a b"` into its two tokens.
    static func splitMerge(_ merge: String, location: @autoclosure () -> String) throws(TokenizerError) -> (String, String) {
        let parts = merge.split(separator: " ", omittingEmptySubsequences: false)
        guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
            throw .badMerge(location: location(), merge: merge)
        }
        return (String(parts[0]), String(parts[1]))
    }

    // MARK: Lookup

    /// The id of a token spelled in the vocabulary's alphabet (`"Ġthe"`), or of a special
    /// token's literal text; nil when there is none.
    /// The whole vocabulary as data (merges in rank order); ``from(_:source:)`` reads it back.
    public var vocabulary: TokenizerVocabulary {
        let ordered = merges.sorted { $0.value >> 32 < $1.value >> 32 }
        return TokenizerVocabulary(
            tokens: tokens, merges: ordered.map { tokens[Int($0.key >> 32)] + " " + tokens[Int($0.key & 0xffff_ffff)] },
            specialTokens: specialTokens, preTokenizer: preTokenizer.rawValue, bosTokenID: bosTokenID, eosTokenID: eosTokenID,
            padTokenID: padTokenID, addBOS: addBOS)
    }

    public func id(of tokenString: String) -> Int? {
        idOfToken[tokenString] ?? specialTokens[tokenString]
    }

    /// The text token `id` stands for (`" the"` for `"Ġthe"`; a special token's literal
    /// text). A token that is only part of a UTF-8 sequence shows as U+FFFD.
    public func tokenText(_ id: Int) -> String {
        precondition((0..<tokens.count).contains(id), "token id \(id) is outside the vocabulary (0..<\(tokens.count))")
        return String(decoding: decodedBytes[decodedOffsets[id]..<decodedOffsets[id + 1]], as: UTF8.self)
    }

    /// Whether `id` is a special token (or the BOS, EOS or padding token).
    public func isSpecial(_ id: Int) -> Bool {
        precondition((0..<tokens.count).contains(id), "token id \(id) is outside the vocabulary (0..<\(tokens.count))")
        return isSpecialID[id] || id == bosTokenID || id == eosTokenID || id == padTokenID
    }

    // MARK: Decoding

    /// The text of a token sequence: the tokens' bytes concatenated and read as UTF-8, with
    /// each invalid sequence replaced by U+FFFD (only after all bytes are joined, so a
    /// character split over several tokens comes back whole).
    /// - Parameter skipSpecial: leave out special tokens and the BOS, EOS and padding tokens.
    /// - Precondition: every id is in `0..<vocabularySize`.
    public func decode(_ ids: [Int], skipSpecial: Bool = false) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(ids.count * 4)
        for id in ids {
            precondition((0..<tokens.count).contains(id), "token id \(id) is outside the vocabulary (0..<\(tokens.count))")
            if skipSpecial && isSpecial(id) { continue }
            bytes.append(contentsOf: decodedBytes[decodedOffsets[id]..<decodedOffsets[id + 1]])
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    // MARK: Encoding

    /// The token ids of `text`, with ``bosTokenID`` first when ``addBOS``.
    /// - Parameter allowSpecial: when true, special-token text (`<|endoftext|>`) becomes its
    ///   id (the longest one wins where several start at the same place); when false it is
    ///   encoded as ordinary text.
    public func encode(_ text: String, allowSpecial: Bool = true) -> [Int] {
        var ids: [Int] = []
        if addBOS, let bosTokenID { ids.append(bosTokenID) }
        var text = text
        text.withUTF8 { utf8 in
            ids.reserveCapacity(utf8.count / 3 + 1)
            var stretchStart = 0
            if allowSpecial && !specialMatcher.isEmpty {
                var i = 0
                while i < utf8.count {
                    if let special = specialMatcher.match(utf8, at: i) {
                        encodeOrdinary(utf8, stretchStart..<i, into: &ids)
                        ids.append(special.id)
                        i += special.length
                        stretchStart = i
                    } else {
                        i += 1
                    }
                }
            }
            encodeOrdinary(utf8, stretchStart..<utf8.count, into: &ids)
        }
        return ids
    }

    /// Encodes text that contains no special tokens.
    private func encodeOrdinary(_ utf8: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, into ids: inout [Int]) {
        guard !range.isEmpty else { return }
        var pieces: [Range<Int>] = []
        preTokenizer.appendPieces(of: utf8, in: range, to: &pieces)
        for piece in pieces {
            let bytes = UnsafeBufferPointer(rebasing: utf8[piece])
            if bytes.count == 1 {
                let id = byteTokenIDs[Int(bytes[0])]
                if id >= 0 { ids.append(Int(id)) }
                continue
            }
            let key = [UInt8](bytes)
            if let cached = cache.lookup(key) {
                ids.append(contentsOf: cached)
            } else {
                let merged = merge(bytes)
                cache.store(key, merged)
                ids.append(contentsOf: merged)
            }
        }
    }

    /// Runs the BPE merges over one piece. Bytes without a one-byte token are dropped.
    func merge(_ bytes: UnsafeBufferPointer<UInt8>) -> [Int] {
        var symbols: [Int32] = []
        symbols.reserveCapacity(bytes.count)
        for b in bytes where byteTokenIDs[Int(b)] >= 0 { symbols.append(byteTokenIDs[Int(b)]) }
        let n = symbols.count
        guard n > 1 else { return symbols.map(Int.init) }

        // Symbols form a linked list over their original positions; a merge keeps the left
        // position and kills the right one (id -1). Candidate pairs wait in a min-heap on
        // (rank, left position) and are checked against the current symbols when popped.
        var next = [Int32](unsafeUninitializedCapacity: n) { buffer, count in
            for i in 0..<n { buffer[i] = Int32(i + 1) }
            buffer[n - 1] = -1
            count = n
        }
        var previous = [Int32](unsafeUninitializedCapacity: n) { buffer, count in
            for i in 0..<n { buffer[i] = Int32(i - 1) }
            count = n
        }
        var heap = MergeHeap()
        func consider(_ left: Int32) {
            guard left >= 0 else { return }
            let right = next[Int(left)]
            guard right >= 0 else { return }
            let l = symbols[Int(left)], r = symbols[Int(right)]
            if let value = merges[UInt64(UInt32(l)) << 32 | UInt64(UInt32(r))] {
                heap.push(MergeCandidate(
                    order: (value >> 32) << 32 | UInt64(left), left: l, right: r, merged: Int32(truncatingIfNeeded: value)))
            }
        }
        for i in 0..<(n - 1) { consider(Int32(i)) }
        while let candidate = heap.pop() {
            let left = Int(candidate.order & 0xFFFF_FFFF)
            guard symbols[left] == candidate.left else { continue }
            let right = next[left]
            guard right >= 0, symbols[Int(right)] == candidate.right else { continue }
            symbols[left] = candidate.merged
            symbols[Int(right)] = -1
            let after = next[Int(right)]
            next[left] = after
            if after >= 0 { previous[Int(after)] = Int32(left) }
            consider(previous[left])
            consider(Int32(left))
        }
        var result: [Int] = []
        var i: Int32 = 0
        while i >= 0 {
            result.append(Int(symbols[Int(i)]))
            i = next[Int(i)]
        }
        return result
    }
}

/// A pair of adjacent symbols that a merge could join.
struct MergeCandidate {
    /// `rank << 32 | leftPosition`: smaller pops first.
    var order: UInt64
    var left: Int32
    var right: Int32
    var merged: Int32
}

/// A binary min-heap of merge candidates ordered by ``MergeCandidate/order``.
struct MergeHeap {
    private var items: [MergeCandidate] = []

    mutating func push(_ item: MergeCandidate) {
        items.append(item)
        var child = items.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard items[child].order < items[parent].order else { break }
            items.swapAt(child, parent)
            child = parent
        }
    }

    mutating func pop() -> MergeCandidate? {
        guard let last = items.popLast() else { return nil }
        guard !items.isEmpty else { return last }
        let top = items[0]
        items[0] = last
        var parent = 0
        while true {
            let left = 2 * parent + 1, right = left + 1
            var smallest = parent
            if left < items.count && items[left].order < items[smallest].order { smallest = left }
            if right < items.count && items[right].order < items[smallest].order { smallest = right }
            if smallest == parent { break }
            items.swapAt(parent, smallest)
            parent = smallest
        }
        return top
    }
}

/// Finds special-token text in UTF-8 bytes.
struct SpecialTokenMatcher {
    /// Candidates by first byte, longest first.
    private var byFirstByte: [[(bytes: [UInt8], id: Int)]] = Array(repeating: [], count: 256)
    private(set) var isEmpty = true

    init(_ specialTokens: [String: Int]) {
        for (text, id) in specialTokens {
            let bytes = Array(text.utf8)
            guard let first = bytes.first else { continue }
            byFirstByte[Int(first)].append((bytes, id))
            isEmpty = false
        }
        for i in 0..<256 {
            byFirstByte[i].sort { $0.bytes.count != $1.bytes.count ? $0.bytes.count > $1.bytes.count : $0.id < $1.id }
        }
    }

    /// The length and id of the longest special token starting at byte `i`.
    func match(_ utf8: UnsafeBufferPointer<UInt8>, at i: Int) -> (length: Int, id: Int)? {
        let candidates = byFirstByte[Int(utf8[i])]
        guard !candidates.isEmpty else { return nil }
        for (bytes, id) in candidates where bytes.count <= utf8.count - i {
            var k = 1
            while k < bytes.count && utf8[i + k] == bytes[k] { k += 1 }
            if k == bytes.count { return (bytes.count, id) }
        }
        return nil
    }
}

/// Encoded pieces by their bytes, shared by all callers of one tokenizer.
final class PieceCache: @unchecked Sendable {
    private var entries: [[UInt8]: [Int]] = [:]
    private let lock = NSLock()
    /// Past this many entries the cache starts over, so odd inputs cannot grow it forever.
    private let capacity = 200_000

    func lookup(_ key: [UInt8]) -> [Int]? {
        lock.lock()
        defer { lock.unlock() }
        return entries[key]
    }

    func store(_ key: [UInt8], _ value: [Int]) {
        lock.lock()
        defer { lock.unlock() }
        if entries.count >= capacity { entries.removeAll(keepingCapacity: true) }
        entries[key] = value
    }
}
