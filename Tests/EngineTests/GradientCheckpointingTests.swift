import Engine
import Foundation
import Testing

/// Gradient checkpointing gives the gradients, losses and dropout stream of the run without
/// it, on every family's tiny fixture (dropout on: the recomputed blocks replay their masks).
@Suite struct GradientCheckpointingTests {
    /// Two steps of LoRA training (all linear layers, dropout 0.2, accumulation 2) with and
    /// without checkpointing: equal losses, gradient norms and adapters (1e-6), and the
    /// dropout generator ends in the same state.
    @Test(arguments: ["tiny-gpt2", "tiny-llama", "tiny-llama3", "tiny-qwen2", "tiny-mistral"])
    func sameTrainingWithAndWithout(_ name: String) throws {
        func train(_ checkpointing: Bool) throws -> ([Float], [Double], [[Float]], UInt64) {
            let model = try #require(try PEFTAdapterTests.model(name) as? TrainableModel)
            let adapter = try LoRAAdapter(config: LoRAConfig(rank: 4, alpha: 8, dropout: 0.2, targets: .allLinear, seed: 5), modules: model.linearModules)
            var rng = SeededGenerator(seed: 11)
            let examples = (0..<8).map { i -> TokenizedExample in
                let ids = (0..<(10 + i)).map { _ in Int(rng.next() % 290) + 3 }
                return TokenizedExample(tokens: ids, labels: ids.enumerated().map { $0.offset < 2 ? -100 : $0.element }, line: i + 1)
            }
            let data = CausalLMData(examples: examples, options: CausalLMDataOptions(maxLength: 24, padding: .longest), paddingTokenID: 0)
            let run = try LoRATrainingRun(model: model, adapter: adapter, data: data,
                                          settings: TrainingSettings(epochs: 1, batchSize: 2, gradientAccumulation: 2, learningRate: 1e-2,
                                                                     seed: 3, gradientCheckpointing: checkpointing))
            var losses: [Float] = [], norms: [Double] = []
            while !run.isFinished {
                let r = try run.step()
                losses.append(r.loss)
                norms.append(r.gradientNorm)
            }
            var generator = adapter.dropoutGenerator
            return (losses, norms, adapter.layers.flatMap { [$0.a, $0.b] }, generator.next())
        }
        let plain = try train(false), checkpointed = try train(true)
        #expect(plain.0.count == 2)
        for (a, b) in zip(plain.0, checkpointed.0) { #expect(abs(a - b) <= 1e-6 * max(1, abs(a)), "\(name) loss \(a) vs \(b)") }
        for (a, b) in zip(plain.1, checkpointed.1) { #expect(abs(a - b) <= 1e-6 * max(1, abs(a)), "\(name) gradient norm \(a) vs \(b)") }
        var worst: Float = 0
        for (x, y) in zip(plain.2, checkpointed.2) { for (a, b) in zip(x, y) { worst = max(worst, abs(a - b)) } }
        #expect(worst <= 1e-6, "\(name): adapters differ by \(worst)")
        #expect(plain.3 == checkpointed.3, "\(name): the dropout stream continues from the same state")
    }
}
