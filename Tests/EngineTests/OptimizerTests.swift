import Foundation
import Testing
@testable import Engine

/// AdamW, schedules and clipping against torch 2.3.1 + transformers 4.46.3, written by
/// Fixtures/optim/make_optim_fixtures.py.
@Suite struct OptimizerTests {
    struct Golden: Decodable {
        struct Schedule: Decodable { var kind: String; var warmup: Int; var total: Int; var multipliers: [Double] }
        struct Step: Decodable {
            var gradients: [[Float]], clipped_gradients: [[Float]], grad_norm: Double?, lr: Double
            var params: [[Float]], exp_avg: [[Float]], exp_avg_sq: [[Float]], step: [Double]
        }
        struct Run: Decodable {
            var name: String, lr: Double, weight_decay: Double, betas: [Double], eps: Double
            var schedule: String, warmup: Int, total: Int, max_norm: Double?
            var initial_params: [[Float]], steps: [Step]
        }
        var schedules: [Schedule]
        var runs: [Run]
    }

    static func golden() throws -> Golden {
        let url = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!.appendingPathComponent("optim/optim-golden.json")
        return try JSONDecoder().decode(Golden.self, from: Data(contentsOf: url))
    }

    /// Largest |a − b| / max(|b|, floor) over all values, and where.
    static func relativeError(_ a: [[Float]], _ b: [[Float]], floor: Float = 1e-6) -> (error: Float, at: String) {
        var worst: Float = 0, at = ""
        for (i, (x, y)) in zip(a, b).enumerated() {
            precondition(x.count == y.count, "tensor \(i): \(x.count) vs \(y.count) values")
            for j in x.indices {
                let e = abs(x[j] - y[j]) / max(abs(y[j]), floor)
                if e > worst { worst = e; at = "tensor \(i)[\(j)]: \(x[j]) vs \(y[j])" }
            }
        }
        return (worst, at)
    }

    @Test func schedulesMatchTransformers() throws {
        for s in try Self.golden().schedules {
            let schedule = LearningRateSchedule(kind: LearningRateSchedule.Kind(rawValue: s.kind)!, warmupSteps: s.warmup, totalSteps: s.total)
            for (k, expected) in s.multipliers.enumerated() {
                #expect(abs(schedule.multiplier(atStep: k) - expected) <= 1e-12, "\(s.kind) w=\(s.warmup) N=\(s.total) step \(k)")
            }
        }
        // The GPT-2 notebook: 180 steps, warmup 10, lr 2e-3: step 0 has lr 0, step 10 the peak.
        let notebook = LearningRateSchedule(kind: .linear, warmupSteps: 10, totalSteps: 180)
        #expect(notebook.learningRate(base: 2e-3, step: 0) == 0 && notebook.learningRate(base: 2e-3, step: 10) == 2e-3)
        #expect(LearningRateSchedule(kind: .constant, warmupSteps: 4, totalSteps: 9).multiplier(atStep: 2) == 0.5)
    }

    /// Each step: clip (norm and clipped gradients within 1e-6 of torch), then AdamW on torch's
    /// clipped gradients, so its parameters and moments are compared on equal inputs. torch
    /// accumulates the norm in Float32 and nb in Double, so the clipping factor may differ by an
    /// ulp; fed through three steps, that would spoil the relative error of moments that
    /// cancel to near zero, though not of the parameters (checked end to end below).
    @Test func adamWWithScheduleAndClippingMatchesTorch() throws {
        for run in try Self.golden().runs {
            var optimizer = AdamW(beta1: run.betas[0], beta2: run.betas[1], epsilon: run.eps, weightDecay: run.weight_decay)
            var endToEnd = optimizer
            let schedule = LearningRateSchedule(kind: LearningRateSchedule.Kind(rawValue: run.schedule)!, warmupSteps: run.warmup, totalSteps: run.total)
            var params = run.initial_params, ownParams = run.initial_params
            for (k, step) in run.steps.enumerated() {
                var grads = step.gradients
                if let maxNorm = run.max_norm {
                    let norm = GradientClipping.clip(&grads, maxNorm: maxNorm)
                    #expect(abs(norm - step.grad_norm!) <= 1e-6 * step.grad_norm!, "\(run.name) step \(k): norm \(norm) vs \(step.grad_norm!)")
                    let e = Self.relativeError(grads, step.clipped_gradients)
                    #expect(e.error <= 1e-6, "\(run.name) step \(k) clipped gradients: \(e.at)")
                }
                let lr = schedule.learningRate(base: run.lr, step: k)
                #expect(abs(lr - step.lr) <= 1e-15, "\(run.name) step \(k): lr \(lr) vs \(step.lr)")
                optimizer.step(&params, gradients: step.clipped_gradients, learningRate: lr)
                endToEnd.step(&ownParams, gradients: grads, learningRate: lr)
                #expect(optimizer.state.step == Int(step.step[0]))
                for (what, ours, theirs) in [("params", params, step.params), ("exp_avg", optimizer.state.firstMoments, step.exp_avg),
                                             ("exp_avg_sq", optimizer.state.secondMoments, step.exp_avg_sq), ("params end to end", ownParams, step.params)] {
                    let e = Self.relativeError(ours, theirs, floor: what == "exp_avg_sq" ? 1e-12 : 1e-6)
                    #expect(e.error <= 1e-6, "\(run.name) step \(k) \(what): \(e.at)")
                }
            }
        }
    }

    @Test func stateIsCodable() throws {
        var optimizer = AdamW()
        var p: [[Float]] = [[1, 2], [3]]
        optimizer.step(&p, gradients: [[0.1, -0.2], [0.3]], learningRate: 1e-3)
        let decoded = try JSONDecoder().decode(AdamW.self, from: JSONEncoder().encode(optimizer))
        #expect(decoded == optimizer && decoded.state.step == 1)
    }

    /// The adapter path (in place, A₀, B₀, … order) gives the same numbers as the array path.
    @Test func adapterStepAndClippingMatchArrays() throws {
        let adapter = try LoRAAdapter(config: LoRAConfig(rank: 2, alpha: 4, dropout: 0, targets: .modules(["c_attn"]), seed: 3),
                                      modules: GPT2Config(nEmbd: 8, nLayer: 2, nHead: 2).linearModules)
        var rng = SeededGenerator(seed: 4)
        for i in adapter.layers.indices {
            adapter.layers[i].gradientA = InMemoryTensors.normal(count: adapter.layers[i].a.count, std: 1, rng: &rng)
            adapter.layers[i].gradientB = InMemoryTensors.normal(count: adapter.layers[i].b.count, std: 1, rng: &rng)
        }
        var params = adapter.parameters, grads = adapter.gradients
        var a = AdamW(), b = AdamW()
        let norm = GradientClipping.clip(&grads, maxNorm: 1)
        #expect(adapter.clipGradientNorm(maxNorm: 1) == norm && adapter.gradients == grads)
        #expect(abs(adapter.gradientNorm - 1) < 1e-5)
        a.step(&params, gradients: grads, learningRate: 0.01)
        b.step(adapter, learningRate: 0.01)
        #expect(adapter.parameters == params && a == b)
    }
}
