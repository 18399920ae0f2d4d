import Foundation

/// A tokenizer's whole vocabulary as data: what a deployment's client folder stores.
public struct TokenizerVocabulary: Codable, Equatable, Sendable {
    /// Token strings in GPT-2's byte-to-unicode alphabet, by id (special tokens literally).
    public var tokens: [String]
    /// `"a b"` in rank order.
    public var merges: [String]
    public var specialTokens: [String: Int]
    public var preTokenizer: String
    public var bosTokenID: Int?
    public var eosTokenID: Int?
    public var padTokenID: Int?
    public var addBOS: Bool
}

extension BPETokenizer {
    /// A tokenizer from its vocabulary; `source` names the file in errors.
    public static func from(_ v: TokenizerVocabulary, source: String) throws(TokenizerError) -> BPETokenizer {
        guard let pre = PreTokenizer(rawValue: v.preTokenizer) else {
            throw .unsupportedPreTokenizer(location: "\(source): preTokenizer", name: v.preTokenizer, known: PreTokenizer.allCases.map(\.rawValue))
        }
        var pairs: [(String, String)] = []
        for (i, m) in v.merges.enumerated() { pairs.append(try splitMerge(m, location: "\(source): merges[\(i)]")) }
        return try BPETokenizer(validating: v.tokens, merges: pairs, mergeLocation: { "\(source): merges[\($0)]" }, source: source,
                                preTokenizer: pre, specialTokens: v.specialTokens, bosTokenID: v.bosTokenID, eosTokenID: v.eosTokenID,
                                padTokenID: v.padTokenID, addBOS: v.addBOS)
    }
}
