import Foundation

/// What to generate and when to stop.
public struct GenerationRequest: Sendable {
    public var prompt: [Int]
    public var maxTokens: Int
    public var sampling: SamplingSettings
    /// Generation stops after any of these tokens (which is kept in the output).
    public var stopTokens: Set<Int>
    /// Record each step's margin between the two largest logits (``GenerationResult/margins``).
    public var recordMargins: Bool

    public init(prompt: [Int], maxTokens: Int, sampling: SamplingSettings = SamplingSettings(), stopTokens: Set<Int> = [],
                recordMargins: Bool = false) {
        (self.prompt, self.maxTokens, self.sampling, self.stopTokens) = (prompt, maxTokens, sampling, stopTokens)
        self.recordMargins = recordMargins
    }
}

public struct GenerationResult: Sendable {
    public var tokens: [Int]
    /// Why it stopped: "stop token", "max tokens" or "context full".
    public var finishReason: String
    public var promptSeconds: Double
    public var decodeSeconds: Double
    /// Per generated token, the largest logit minus the second largest (when asked): how
    /// close a greedy choice was.
    public var margins: [Float] = []
}

/// The largest logit minus the second largest.
public func topTwoMargin(_ logits: [Float]) -> Float {
    var first = -Float.infinity, second = -Float.infinity
    for v in logits {
        if v > first { (first, second) = (v, first) } else if v > second { second = v }
    }
    return first - second
}

extension LanguageModel {
    /// Generates a continuation with a KV cache: the prompt runs once, then one token at a time.
    public func generate(_ request: GenerationRequest, onToken: ((Int) -> Void)? = nil) -> GenerationResult {
        precondition(!request.prompt.isEmpty, "generation needs a prompt of at least one token")
        var rng = SeededGenerator(seed: request.sampling.seed)
        let capacity = min(contextLength, request.prompt.count + request.maxTokens)
        let cache = makeCache(capacity: capacity)
        let clock = { () -> Double in
            var ts = timespec()
            clock_gettime(CLOCK_MONOTONIC, &ts)
            return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
        }
        let t0 = clock()
        var prompt = request.prompt
        if prompt.count > contextLength { prompt = Array(prompt.suffix(contextLength)) }
        var logits = forward(prompt, cache: cache, allPositions: false)
        let t1 = clock()
        var out: [Int] = []
        var margins: [Float] = []
        var reason = "max tokens"
        while out.count < request.maxTokens {
            if request.recordMargins { margins.append(topTwoMargin(logits)) }
            let next = Sampler.sample(logits, settings: request.sampling, rng: &rng)
            out.append(next)
            onToken?(next)
            if request.stopTokens.contains(next) { reason = "stop token"; break }
            if cache.length >= contextLength { reason = "context full"; break }
            if out.count == request.maxTokens { break }
            logits = forward([next], cache: cache, allPositions: false)
        }
        return GenerationResult(tokens: out, finishReason: reason, promptSeconds: t1 - t0, decodeSeconds: clock() - t1, margins: margins)
    }
}
