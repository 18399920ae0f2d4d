import Engine
import FHE
import Foundation

/// What one `math_eval` run leaves beside its training log, for `eval_compare`.
struct MathEvalSummary: Codable {
    var mode: String
    var model: String
    var trainProblems: Int
    var testProblems: Int
    var steps: Int
    var firstLoss: Double
    var finalLoss: Double
    var perplexityBefore: Double
    var perplexityAfter: Double
    var exactMatchBefore: Double
    var exactMatchAfter: Double
    var generated: Int
    var seconds: Double
    var losses: [Double]
}

/// `nb math_eval`: the evaluation across precision modes (the seed's `eval.py --mode`).
/// Math word problems from this project's generator (seeded, answers computed) are split
/// into train and held-out test; each example is `question + "\n" + answer`, the loss
/// masked over the question. The session's model gets a fresh LoRA adapter (r 8, alpha 32,
/// dropout 0.01, all linear layers) trained with the remote layers in `mode`:
/// `torch` (Float32), `8bit` or `16bit` (DTok-SC integers). Writes, under `output`:
/// `training_log_{mode}.txt`, `eval_generated_responses_{mode}.txt`,
/// `deployment/llama_lora_finetuned_{mode}/` (the adapter; for `8bit` the server and
/// client folders too) and `eval_summary_{mode}.json`.
public enum MathEvalStep: Step {
    public static let name = "math_eval"
    public static func dataflow(_ _: Parameters) -> StepDataflow { StepDataflow(reads: [.model, .adapter, .hybrid, .deployment], writes: [.adapter]) }
    public static let summary = "fine-tune on generated math word problems in torch, 8bit or 16bit mode; perplexity and exact match before/after"

    public enum Precision: String, Codable, CaseIterable, Sendable { case torch, eightBit = "8bit", sixteenBit = "16bit" }

    public struct Parameters: StepParameters {
        public enum Keys: String, CodingKey, CaseIterable {
            case mode, train, test, seed, epochs, batchSize = "batch_size", learningRate = "learning_rate", warmupSteps = "warmup_steps"
            case generate, maxTokens = "max_tokens", output, maxLength = "max_length"
        }
        public typealias CodingKeys = Keys
        public var mode: Precision
        public var train: Int, test: Int, seed: Int, epochs: Int, batchSize: Int, learningRate: Double, warmupSteps: Int
        public var generate: Int, maxTokens: Int, output: String, maxLength: Int

        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: Keys.self)
            mode = try c.decodeChoice(Precision.self, forKey: .mode) ?? .eightBit
            train = try c.decodeIfPresent(Int.self, forKey: .train) ?? 120
            test = try c.decodeIfPresent(Int.self, forKey: .test) ?? 40
            seed = try c.decodeIfPresent(Int.self, forKey: .seed) ?? 0
            epochs = try c.decodeIfPresent(Int.self, forKey: .epochs) ?? 2
            batchSize = try c.decodeIfPresent(Int.self, forKey: .batchSize) ?? 4
            learningRate = try c.decodeIfPresent(Double.self, forKey: .learningRate) ?? 1e-3
            warmupSteps = try c.decodeIfPresent(Int.self, forKey: .warmupSteps) ?? 10
            generate = try c.decodeIfPresent(Int.self, forKey: .generate) ?? min(20, test)
            maxTokens = try c.decodeIfPresent(Int.self, forKey: .maxTokens) ?? 48
            output = try c.decodeIfPresent(String.self, forKey: .output) ?? "../outputs/eval"
            maxLength = try c.decodeIfPresent(Int.self, forKey: .maxLength) ?? 128
        }

        public func validate() throws(ParameterError) {
            if train < 1 { throw ParameterError("train", "\(train) must be ≥ 1") }
            if test < 1 { throw ParameterError("test", "\(test) must be ≥ 1") }
            if train + test > 20_000 { throw ParameterError("train", "at most 20000 problems in all") }
            if seed < 0 { throw ParameterError("seed", "\(seed) must be ≥ 0") }
            if !(1...1000).contains(epochs) { throw ParameterError("epochs", "\(epochs) is out of range 1...1000") }
            if batchSize < 1 { throw ParameterError("batch_size", "\(batchSize) must be ≥ 1") }
            if !(learningRate > 0 && learningRate.isFinite) { throw ParameterError("learning_rate", "\(learningRate) must be a positive number") }
            if generate < 0 || generate > test { throw ParameterError("generate", "\(generate) must be between 0 and test (\(test))") }
            if !(1...512).contains(maxTokens) { throw ParameterError("max_tokens", "\(maxTokens) is out of range 1...512") }
            if maxLength < 16 { throw ParameterError("max_length", "\(maxLength) must be ≥ 16") }
        }
    }

    public static func run(_ p: Parameters, context: StepContext) throws {
        try context.session.requireWholeModel(for: name)
        let (loaded, model) = try context.session.trainableModel()
        let started = Date()
        let out = context.resolve(p.output)
        try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
        let (trainSet, testSet) = MathProblemGenerator.split(train: p.train, test: p.test, seed: UInt64(p.seed))
        let tok = loaded.tokenizer
        let trainRows = try MathProblemGenerator.rows(trainSet, tokenizer: tok, maxLength: p.maxLength)
        let testRows = try MathProblemGenerator.rows(testSet, tokenizer: tok, maxLength: p.maxLength)
        let settings = TrainingSettings(epochs: p.epochs, batchSize: p.batchSize, learningRate: p.learningRate, schedule: .linear,
                                        warmupSteps: p.warmupSteps, weightDecay: 0.01, maxGradientNorm: 1, seed: UInt64(p.seed))
        let trainer = try LoraTrainer(model: model, tokenizer: tok, lora: LoRAConfig(rank: 8, alpha: 32, dropout: 0.01, targets: .allLinear, seed: UInt64(p.seed)),
                                      settings: settings, keyring: try context.session.clientKeyring())
        trainer.maskStore = try context.session.maskStore()
        let mode: LoraTrainer.Mode
        switch p.mode {
        case .torch: mode = .torch
        case .eightBit, .sixteenBit:
            mode = .disable
            do { try trainer.compile(inputset: trainRows, nBits: p.mode == .eightBit ? 8 : 16, scheme: "DTok-SC") } catch {
                throw StepFailure(key: "mode", "\(error)")
            }
        }

        // Before: perplexity on the test split and exact match on its first problems.
        let stops = loaded.stopTokens
        func exactMatch(_ label: String) throws -> (Double, [String]) {
            var right = 0
            var lines: [String] = []
            let progress = context.progress("generate (\(label))", total: p.generate)
            for (i, problem) in testSet.prefix(p.generate).enumerated() {
                let ids = try trainer.generate(MathProblemGenerator.prompt(problem, tokenizer: tok), maxTokens: p.maxTokens, mode: mode, stopTokens: stops)
                let text = tok.decode(ids.filter { !stops.contains($0) })
                let got = MathProblemGenerator.finalNumber(in: text)
                if got == problem.value { right += 1 }
                lines.append("### \(label) \(i + 1) [\(problem.template)] expected \(problem.value), got \(got.map(String.init) ?? "no number")\(got == problem.value ? " ✓" : "")\nQ: \(problem.question)\nA: \(text)\n")
                progress.update(i + 1)
            }
            progress.finish()
            return (p.generate > 0 ? Double(right) / Double(p.generate) : 0, lines)
        }
        let before = try trainer.evaluate(testRows, mode: mode)
        let (emBefore, genBefore) = try exactMatch("before")

        // Training, logged step by step.
        let logURL = out.appendingPathComponent("training_log_\(p.mode.rawValue).txt")
        var log = "# math_eval mode=\(p.mode.rawValue) model=\(context.session.state.model?.name ?? "") train=\(p.train) test=\(p.test) seed=\(p.seed) "
            + "epochs=\(p.epochs) batch=\(p.batchSize) lr=\(p.learningRate) scheme=\(trainer.plan?.scheme.description ?? "float32")\n"
            + "# test perplexity before: \(before.perplexity)\n# step epoch loss learning_rate grad_norm tokens seconds\n"
        trainer.checkpointURL = context.checkpointDirectory.appendingPathComponent("checkpoint.safetensors")
        var progress: ProgressReporter?
        try trainer.train(trainRows, mode: mode) { r, total in
            if progress == nil { progress = context.progress("train (\(p.mode.rawValue))", total: total) }
            progress?.update(r.step, metrics: String(format: "loss %.4f", r.loss))
        }
        progress?.finish()
        for r in trainer.history {
            log += String(format: "%d %d %.6f %.6e %.4f %d %.3f\n", r.step, r.epoch, r.loss, r.learningRate, r.gradientNorm, r.tokens, r.seconds)
        }
        let after = try trainer.evaluate(testRows, mode: mode)
        let (emAfter, genAfter) = try exactMatch("after")
        log += "# test perplexity after: \(after.perplexity)\n"
        try AtomicFile.write(log, to: logURL)
        let responsesURL = out.appendingPathComponent("eval_generated_responses_\(p.mode.rawValue).txt")
        try AtomicFile.write((["# exact match of the final number: before \(emBefore), after \(emAfter) (\(p.generate) test problems)\n"] + genBefore + genAfter).joined(separator: "\n"),
                             to: responsesURL)

        // The adapter (and, in 8 bits, the deployment).
        let deployURL = out.appendingPathComponent("deployment/llama_lora_finetuned_\(p.mode.rawValue)", isDirectory: true)
        try? FileManager.default.removeItem(at: deployURL)
        if p.mode == .eightBit {
            try trainer.saveDeployment(to: deployURL, name: "llama_lora_finetuned_8bit", modelName: context.session.state.model?.name ?? "model",
                                       chatTemplate: loaded.chatTemplate)
        }
        try trainer.save(to: deployURL.appendingPathComponent("adapter"), baseModelName: context.session.state.model?.adapterBaseName)
        try context.session.register(trainer.adapter, in: context.adapterStore, trainedSteps: trainer.history.count, origin: "math_eval")

        let summary = MathEvalSummary(
            mode: p.mode.rawValue, model: context.session.state.model?.name ?? "", trainProblems: p.train, testProblems: p.test,
            steps: trainer.history.count, firstLoss: Double(trainer.history.first?.loss ?? 0), finalLoss: Double(trainer.history.last?.loss ?? 0),
            perplexityBefore: before.perplexity, perplexityAfter: after.perplexity, exactMatchBefore: emBefore, exactMatchAfter: emAfter,
            generated: p.generate, seconds: Date().timeIntervalSince(started), losses: trainer.history.map { Double($0.loss) })
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try AtomicFile.write(try encoder.encode(summary), to: out.appendingPathComponent("eval_summary_\(p.mode.rawValue).json"))

        context.emit(.metrics([
            Metric("mode", "\(p.mode.rawValue) (\(trainer.plan?.scheme.description ?? "Float32 products"))"),
            Metric("problems", "\(p.train) train, \(p.test) held-out test (seed \(p.seed), \(MathProblemGenerator.templateNames.count) templates)"),
            Metric("steps", "\(trainer.history.count) (\(p.epochs) epochs, batch \(p.batchSize))"),
            Metric("test perplexity", "\(Format.number(before.perplexity, decimals: 3)) → \(Format.number(after.perplexity, decimals: 3))"),
            Metric("exact match (final number)", "\(Format.number(100 * emBefore, decimals: 0)) % → \(Format.number(100 * emAfter, decimals: 0)) % of \(p.generate)"),
            Metric("time", Format.duration(summary.seconds)),
            Metric("files", [logURL, responsesURL, deployURL].map { context.display($0) }.joined(separator: ", ")),
        ]))
        context.emit(.chart(LineChart(title: "Training loss, \(p.mode.rawValue)", xLabel: "optimizer step", yLabel: "cross-entropy (nats)",
                                      series: [LineChart.Series(name: p.mode.rawValue, points: trainer.history.map { .init(Double($0.step), Double($0.loss)) })])))
        context.emit(.table(OutputTable(title: "Sample generations after fine-tuning", columns: ["question", "expected", "generated"],
                                        rows: zip(testSet.prefix(min(4, p.generate)), genAfter).map { problem, line in
                                            [problem.question, String(problem.value), String(line.split(separator: "\n").last ?? "").replacingOccurrences(of: "A: ", with: "")]
                                        })))
    }
}

/// `nb eval_compare`: the modes `math_eval` has run (their summaries under `output`), side
/// by side: one table and one chart with every mode's loss curve.
public enum EvalCompareStep: Step {
    public static let name = "eval_compare"
    public static func dataflow(_ _: Parameters) -> StepDataflow { StepDataflow(reads: [], writes: []) }
    public static let summary = "compare the math_eval runs of the torch, 8bit and 16bit modes (table + loss curves)"

    public struct Parameters: StepParameters {
        public enum Keys: String, CodingKey, CaseIterable { case output }
        public typealias CodingKeys = Keys
        public var output: String
        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: Keys.self)
            output = try c.decodeIfPresent(String.self, forKey: .output) ?? "../outputs/eval"
        }
        public func validate() throws(ParameterError) {}
    }

    public static func inputs(_ p: Parameters, context: StepContext) -> [URL] {
        MathEvalStep.Precision.allCases.map { context.resolve(p.output).appendingPathComponent("eval_summary_\($0.rawValue).json") }
            .filter { FileManager.default.fileExists(atPath: $0.path) }
    }

    public static func run(_ p: Parameters, context: StepContext) throws {
        let dir = context.resolve(p.output)
        var summaries: [MathEvalSummary] = []
        for m in MathEvalStep.Precision.allCases {
            let url = dir.appendingPathComponent("eval_summary_\(m.rawValue).json")
            guard let data = FileManager.default.contents(atPath: url.path) else { continue }
            do { summaries.append(try JSONDecoder().decode(MathEvalSummary.self, from: data)) } catch {
                throw StepFailure(key: "output", "\(context.display(url)): \(error)")
            }
        }
        guard !summaries.isEmpty else { throw StepFailure(key: "output", "no math_eval summary in \(context.display(dir)) yet: run the notebook with --param mode=torch, 8bit and 16bit") }
        let torch = summaries.first { $0.mode == "torch" }
        context.emit(.table(OutputTable(title: "Evaluation across modes", columns: ["mode", "steps", "final loss", "test perplexity before → after",
                                                                                  "vs torch (after)", "exact match before → after", "time"],
                                        rows: summaries.map { s in
            [s.mode, String(s.steps), Format.number(s.finalLoss, decimals: 4),
             "\(Format.number(s.perplexityBefore, decimals: 3)) → \(Format.number(s.perplexityAfter, decimals: 3))",
             torch.map { String(format: "%+.1f %%", 100 * (s.perplexityAfter / $0.perplexityAfter - 1)) } ?? "–",
             "\(Format.number(100 * s.exactMatchBefore, decimals: 0)) % → \(Format.number(100 * s.exactMatchAfter, decimals: 0)) % of \(s.generated)",
             Format.duration(s.seconds)]
        })))
        context.emit(.chart(LineChart(title: "Training loss by mode", xLabel: "optimizer step", yLabel: "cross-entropy (nats)",
                                      series: summaries.map { s in LineChart.Series(name: s.mode, points: s.losses.enumerated().map { .init(Double($0.offset + 1), $0.element) }) })))
        let missing = MathEvalStep.Precision.allCases.map(\.rawValue).filter { m in !summaries.contains { $0.mode == m } }
        if !missing.isEmpty { context.emit(.warning("Not run yet: \(missing.joined(separator: ", ")) (run the notebook with --param mode=…).")) }
    }
}
