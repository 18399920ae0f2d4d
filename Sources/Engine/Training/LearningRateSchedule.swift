import Foundation

/// A learning-rate schedule with linear warmup, as transformers' `get_*_schedule_with_warmup`
/// (a `LambdaLR` multiplier of the base rate). Optimizer step k (0-based) uses
/// `learningRate(base:step: k)`; in warmup, k = 0 gives 0, as in transformers.
///
///     warmup:   k < w:  k / max(1, w)
///     constant: 1
///     linear:   max(0, (N − k) / max(1, N − w))
///     cosine:   p = (k − w) / max(1, N − w);  max(0, ½·(1 + cos(π · 2·cycles · p)))   (cycles = ½: a half wave)
public struct LearningRateSchedule: Codable, Equatable, Sendable {
    public enum Kind: String, Codable, Sendable, CaseIterable {
        case constant, linear, cosine
    }

    public var kind: Kind
    /// w: steps of linear warmup from 0.
    public var warmupSteps: Int
    /// N: total optimizer steps (epochs × batches per epoch ÷ accumulation).
    public var totalSteps: Int
    /// Cosine waves over the decay (transformers' `num_cycles`, default 0.5).
    public var cycles: Double

    public init(kind: Kind, warmupSteps: Int = 0, totalSteps: Int, cycles: Double = 0.5) {
        precondition(warmupSteps >= 0 && totalSteps >= 0, "schedule needs warmup ≥ 0 and total ≥ 0 steps, got \(warmupSteps) and \(totalSteps)")
        (self.kind, self.warmupSteps, self.totalSteps, self.cycles) = (kind, warmupSteps, totalSteps, cycles)
    }

    /// The multiplier of the base learning rate at optimizer step `step` (0-based).
    public func multiplier(atStep step: Int) -> Double {
        if step < warmupSteps { return Double(step) / Double(max(1, warmupSteps)) }
        switch kind {
        case .constant:
            return 1
        case .linear:
            return max(0, Double(totalSteps - step) / Double(max(1, totalSteps - warmupSteps)))
        case .cosine:
            let progress = Double(step - warmupSteps) / Double(max(1, totalSteps - warmupSteps))
            return max(0, 0.5 * (1 + cos(Double.pi * cycles * 2 * progress)))
        }
    }

    /// base × multiplier(atStep: step).
    public func learningRate(base: Double, step: Int) -> Double { base * multiplier(atStep: step) }
}
