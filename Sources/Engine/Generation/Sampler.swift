import Foundation

/// A small, fast, seedable generator (SplitMix64): the same seed gives the same samples on
/// every machine. Not for cryptography.
public struct SeededGenerator: RandomNumberGenerator, Codable, Equatable, Sendable {
    public var state: UInt64

    public init(seed: UInt64) { state = seed }

    /// SplitMix64's counter step (γ): the state after k draws is the seed + k·γ.
    static let increment: UInt64 = 0x9E37_79B9_7F4A_7C15

    public mutating func next() -> UInt64 {
        state &+= Self.increment
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    public mutating func nextUnit() -> Double { Double(next() >> 11) * 0x1.0p-53 }
}

/// How the next token is picked from the logits.
public struct SamplingSettings: Codable, Equatable, Sendable {
    /// 0 means greedy (argmax).
    public var temperature: Double = 0
    /// Keep only the k most likely tokens (0: all).
    public var topK: Int = 0
    /// Keep the smallest set of tokens whose probability reaches p (1: all).
    public var topP: Double = 1
    public var seed: UInt64 = 0

    public init(temperature: Double = 0, topK: Int = 0, topP: Double = 1, seed: UInt64 = 0) {
        (self.temperature, self.topK, self.topP, self.seed) = (temperature, topK, topP, seed)
    }
}

public enum Sampler {
    /// The index of the largest logit (the first one on ties).
    public static func argmax(_ logits: UnsafeBufferPointer<Float>) -> Int {
        var best = 0
        var bestValue = -Float.infinity
        for i in 0..<logits.count where logits[i] > bestValue {
            best = i
            bestValue = logits[i]
        }
        return best
    }

    /// Picks a token: greedy when temperature is 0, else samples from softmax(logits / T)
    /// restricted by top-k and top-p.
    public static func sample(_ logits: [Float], settings: SamplingSettings, rng: inout SeededGenerator) -> Int {
        if settings.temperature <= 0 { return logits.withUnsafeBufferPointer(argmax) }
        let invT = 1 / settings.temperature
        var order = Array(0..<logits.count)
        if settings.topK > 0 && settings.topK < logits.count {
            // Partial selection is enough; sort the survivors only.
            order.sort { logits[$0] > logits[$1] }
            order.removeLast(order.count - settings.topK)
        } else {
            order.sort { logits[$0] > logits[$1] }
        }
        let maxLogit = Double(logits[order[0]])
        var probs = order.map { exp((Double(logits[$0]) - maxLogit) * invT) }
        let total = probs.reduce(0, +)
        for i in probs.indices { probs[i] /= total }
        if settings.topP < 1 {
            var cumulative = 0.0
            var keep = probs.count
            for (i, p) in probs.enumerated() {
                cumulative += p
                if cumulative >= settings.topP { keep = i + 1; break }
            }
            probs.removeLast(probs.count - keep)
            order.removeLast(order.count - keep)
            let kept = probs.reduce(0, +)
            for i in probs.indices { probs[i] /= kept }
        }
        let u = rng.nextUnit()
        var cumulative = 0.0
        for (i, p) in probs.enumerated() {
            cumulative += p
            if u < cumulative { return order[i] }
        }
        return order[order.count - 1]
    }
}
