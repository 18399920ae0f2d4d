import Foundation

/// AdamW's per-parameter moments and step count, saved in training checkpoints.
public struct AdamWState: Codable, Equatable, Sendable {
    /// Optimizer steps taken (t of the bias corrections).
    public var step: Int
    /// First moments (exp_avg), one array per parameter tensor, same order as the parameters.
    public var firstMoments: [[Float]]
    /// Second moments (exp_avg_sq).
    public var secondMoments: [[Float]]

    public init(step: Int = 0, firstMoments: [[Float]] = [], secondMoments: [[Float]] = []) {
        (self.step, self.firstMoments, self.secondMoments) = (step, firstMoments, secondMoments)
    }
}

/// Adam with decoupled weight decay, as `torch.optim.AdamW` (single-tensor CPU path) computes
/// it, in Float32 like torch, with scalars formed in Double first:
///
///     t ← t + 1
///     θ ← θ · (1 − lr·λ)                       decoupled weight decay
///     m ← m + (1 − β₁)·(g − m)                 torch's lerp, a fused multiply-add
///     v ← β₂·v + (1 − β₂)·g·g
///     θ ← θ − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)
///
/// Float32 operations are done in torch's order, so results agree with torch to the last bit or two.
///
/// The learning rate of each step comes from the caller (see ``LearningRateSchedule``).
public struct AdamW: Codable, Equatable, Sendable {
    /// β₁, β₂ (torch's `betas`, default (0.9, 0.999)).
    public var beta1: Double
    public var beta2: Double
    /// ε added to the denominator (default 1e-8).
    public var epsilon: Double
    /// λ, torch's `weight_decay` (default 0.01).
    public var weightDecay: Double
    public var state: AdamWState

    public init(beta1: Double = 0.9, beta2: Double = 0.999, epsilon: Double = 1e-8, weightDecay: Double = 0.01) {
        (self.beta1, self.beta2, self.epsilon, self.weightDecay) = (beta1, beta2, epsilon, weightDecay)
        state = AdamWState()
    }

    /// One step over all parameter tensors with their gradients (same order and sizes every
    /// step; the moments are created, as zeros, on the first step).
    public mutating func step(_ parameters: inout [[Float]], gradients: [[Float]], learningRate: Double) {
        precondition(parameters.count == gradients.count, "AdamW: \(parameters.count) parameter tensors, \(gradients.count) gradients")
        beginStep(shapes: parameters.map(\.count))
        for i in parameters.indices { update(i, &parameters[i], gradient: gradients[i], learningRate: learningRate) }
    }

    /// One step over a LoRA adapter's A and B (order A₀, B₀, A₁, B₁, …), updated in place with
    /// the gradients its backward passes accumulated.
    public mutating func step(_ adapter: LoRAAdapter, learningRate: Double) {
        beginStep(shapes: adapter.layers.flatMap { [$0.a.count, $0.b.count] })
        for l in adapter.layers.indices {
            update(2 * l, &adapter.layers[l].a, gradient: adapter.layers[l].gradientA, learningRate: learningRate)
            update(2 * l + 1, &adapter.layers[l].b, gradient: adapter.layers[l].gradientB, learningRate: learningRate)
        }
    }

    /// Counts the step and creates zero moments on the first one.
    private mutating func beginStep(shapes: [Int]) {
        if state.firstMoments.isEmpty {
            state.firstMoments = shapes.map { [Float](repeating: 0, count: $0) }
            state.secondMoments = state.firstMoments
        }
        precondition(state.firstMoments.map(\.count) == shapes, "AdamW: parameter sizes \(shapes) differ from the state's \(state.firstMoments.map(\.count))")
        state.step += 1
    }

    private mutating func update(_ i: Int, _ p: inout [Float], gradient g: [Float], learningRate lr: Double) {
        precondition(p.count == g.count, "AdamW: parameter \(i) has \(p.count) values, its gradient \(g.count)")
        let t = Double(state.step)
        let decay = Float(1 - lr * weightDecay)
        let w1 = Float(1 - beta1), b2 = Float(beta2), w2 = Float(1 - beta2)
        let stepSize = Float(lr / (1 - pow(beta1, t)))
        let correction2 = Float((1 - pow(beta2, t)).squareRoot())
        let eps = Float(epsilon)
        p.withUnsafeMutableBufferPointer { p in
            state.firstMoments[i].withUnsafeMutableBufferPointer { m in
                state.secondMoments[i].withUnsafeMutableBufferPointer { v in
                    for j in 0..<p.count {
                        p[j] *= decay
                        // torch's lerp kernel, one fused multiply-add: fma(w, end − start, start) for
                        // w < 0.5, else fma(w − 1, end − start, end).
                        m[j] = w1 < 0.5 ? m[j].addingProduct(w1, g[j] - m[j]) : g[j].addingProduct(w1 - 1, g[j] - m[j])
                        v[j] = v[j] * b2 + w2 * g[j] * g[j]
                        let denominator = v[j].squareRoot() / correction2 + eps
                        p[j] += -stepSize * m[j] / denominator  // addcdiv: self + value·t1 / t2
                    }
                }
            }
        }
    }
}
