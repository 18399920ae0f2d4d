import Foundation
import Testing
@testable import Engine

/// LoRA fine-tuning against PyTorch 2.3.1 + PEFT 0.12: Fixtures/train/make_train_goldens.py
/// trains the tiny GPT-2 (c_attn, linear schedule) and the tiny LLaMA (all-linear, cosine
/// with warmup) from adapters it saved, with gradient accumulation 2 and clipping. We load
/// the same starting adapters, run ``LoRATrainingRun`` over the same rows and compare the
/// step losses, learning rates, gradient norms, the accumulated gradients of steps 1 and 2
/// and the final A and B.
@Suite struct TrainingGoldenTests {
    static let fixtures = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!

    struct Tensor: Decodable { var shape: [Int], values: [Float] }
    struct Golden: Decodable {
        struct Case: Decodable {
            struct Lora: Decodable { var r: Int, lora_alpha: Double }
            struct Optimizer: Decodable { var lr: Double, weight_decay: Double, eps: Double, betas: [Double] }
            struct Schedule: Decodable { var kind: String, num_warmup_steps: Int, num_training_steps: Int }
            struct MicroBatch: Decodable { var tokens: [[Int]], labels: [[Int]], attention_mask: [[Int]] }
            struct Step: Decodable {
                var step: Int, micro_batches: [MicroBatch], micro_batch_losses: [Float], loss: Float, lr: Double, grad_norm: Double
            }
            struct Gradients: Decodable { var step: Int, gradients: [String: Tensor] }
            var name: String, model_dir: String, init_adapter_dir: String, pad_token_id: Int
            var lora: Lora, optimizer: Optimizer, schedule: Schedule, max_grad_norm: Double
            var gradient_accumulation_steps: Int, micro_batch_shape: [Int]
            var steps: [Step], gradients: [Gradients], final_parameters: [String: Tensor]
        }
        var cases: [Case]
    }

    /// The first two cases (train-golden.json) and the model families' (train-golden-families.json: Llama 3.x).
    static func golden() throws -> Golden {
        var golden = try JSONDecoder().decode(Golden.self, from: Data(contentsOf: fixtures.appendingPathComponent("train/train-golden.json")))
        golden.cases += try JSONDecoder().decode(Golden.self, from: Data(contentsOf: fixtures.appendingPathComponent("train/train-golden-families.json"))).cases
        return golden
    }

    /// |a − b| ≤ 1e-4·max|b| for every element: relative to the tensor's scale, since
    /// values near zero after a few Adam steps carry float32 rounding of the larger ones.
    static func expectClose(_ actual: [Float], _ expected: Tensor, _ what: String) {
        #expect(actual.count == expected.values.count, "\(what): \(actual.count) values, expected \(expected.values.count)")
        let scale = expected.values.reduce(Float(0)) { max($0, abs($1)) }
        let worst = zip(actual, expected.values).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }
        #expect(worst <= 1e-4 * max(scale, 1e-12), "\(what): max |Δ| \(worst) for max |ref| \(scale)")
    }

    static func relative(_ a: Double, _ b: Double) -> Double { abs(a - b) / max(abs(b), 1e-12) }

    @Test(arguments: ["gpt2", "llama", "llama3"]) func matchesPyTorchAndPEFT(name: String) throws {
        let c = try #require(try Self.golden().cases.first { $0.name == name })
        let model = try #require(try PEFTAdapterTests.model(String(c.model_dir.split(separator: "/").last!)) as? TrainableModel)
        let adapter = try PEFTAdapter.load(from: Self.fixtures.appendingPathComponent(c.init_adapter_dir), modules: model.linearModules)
        #expect(adapter.config.rank == c.lora.r && adapter.config.alpha == c.lora.lora_alpha)

        // The fixture's micro-batches, in order, as unpadded examples: with no shuffling,
        // batches of 2 and accumulation 2, the run meets them in the same steps.
        let rows = c.micro_batch_shape[0], length = c.micro_batch_shape[1]
        var examples: [TokenizedExample] = []
        for step in c.steps {
            for mb in step.micro_batches {
                for r in 0..<rows {
                    let n = mb.attention_mask[r].reduce(0, +)
                    examples.append(TokenizedExample(tokens: Array(mb.tokens[r].prefix(n)), labels: Array(mb.labels[r].prefix(n)), line: examples.count + 1))
                    #expect(mb.tokens[r][n...].allSatisfy { $0 == c.pad_token_id } && mb.labels[r][n...].allSatisfy { $0 == -100 })
                }
            }
        }
        let data = CausalLMData(examples: examples, options: CausalLMDataOptions(maxLength: length, padding: .maxLength),
                                paddingTokenID: c.pad_token_id)
        let settings = TrainingSettings(
            epochs: 1, batchSize: rows, gradientAccumulation: c.gradient_accumulation_steps, learningRate: c.optimizer.lr,
            schedule: try #require(LearningRateSchedule.Kind(rawValue: c.schedule.kind)), warmupSteps: c.schedule.num_warmup_steps,
            weightDecay: c.optimizer.weight_decay, maxGradientNorm: c.max_grad_norm, shuffle: false)
        let run = try LoRATrainingRun(model: model, adapter: adapter, data: data, settings: settings)
        #expect(run.totalSteps == c.schedule.num_training_steps)

        var captured: [[String: [Float]]] = []
        run.inspectGradients = { a in
            var g: [String: [Float]] = [:]
            for l in a.layers {
                let names = PEFTAdapter.tensorNames(module: l.module.name)
                (g[names.a], g[names.b]) = (l.gradientA, l.gradientB)
            }
            captured.append(g)
        }
        for expected in c.steps {
            let record = try run.step()
            #expect(Self.relative(Double(record.loss), Double(expected.loss)) < 1e-4, "\(name) step \(expected.step): loss \(record.loss) vs \(expected.loss)")
            #expect(Self.relative(record.learningRate, expected.lr) < 1e-9 || (record.learningRate == 0 && expected.lr == 0))
            #expect(Self.relative(record.gradientNorm, expected.grad_norm) < 1e-4, "\(name) step \(expected.step): norm \(record.gradientNorm) vs \(expected.grad_norm)")
        }
        #expect(run.isFinished)
        for g in c.gradients {
            #expect(Set(captured[g.step - 1].keys) == Set(g.gradients.keys))
            for (tensor, expected) in g.gradients {
                Self.expectClose(try #require(captured[g.step - 1][tensor]), expected, "\(name) step \(g.step) grad \(tensor)")
            }
        }
        for l in adapter.layers {
            let names = PEFTAdapter.tensorNames(module: l.module.name)
            Self.expectClose(l.a, try #require(c.final_parameters[names.a]), "\(name) final \(names.a)")
            Self.expectClose(l.b, try #require(c.final_parameters[names.b]), "\(name) final \(names.b)")
        }
        #expect(adapter.layers.count * 2 == c.final_parameters.count)
    }
}
