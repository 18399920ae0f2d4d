import FHE
import Foundation
import Testing

@testable import Engine

/// The math word-problem generator: deterministic by seed, every worked step's arithmetic
/// right (checked by evaluating the steps here), distinct questions, disjoint splits.
@Suite struct MathProblemTests {
    /// Evaluates `a op b op c …` with + − * / and parentheses (integer, exact division only).
    static func evaluate(_ expression: String) -> Int? {
        var tokens: [String] = []
        var number = ""
        for c in expression where c != " " {
            if c.isNumber { number.append(c); continue }
            if !number.isEmpty { tokens.append(number); number = "" }
            tokens.append(String(c))
        }
        if !number.isEmpty { tokens.append(number) }
        var i = 0
        func primary() -> Int? {
            guard i < tokens.count else { return nil }
            let t = tokens[i]; i += 1
            if t == "(" { let v = sum(); i += 1; return v }
            if t == "-" { return primary().map { -$0 } }
            return Int(t)
        }
        func product() -> Int? {
            guard var v = primary() else { return nil }
            while i < tokens.count, tokens[i] == "*" || tokens[i] == "/" {
                let op = tokens[i]; i += 1
                guard let r = primary() else { return nil }
                if op == "*" { v *= r } else { guard r != 0, v % r == 0 else { return nil }; v /= r }
            }
            return v
        }
        func sum() -> Int? {
            guard var v = product() else { return nil }
            while i < tokens.count, tokens[i] == "+" || tokens[i] == "-" {
                let op = tokens[i]; i += 1
                guard let r = product() else { return nil }
                v = op == "+" ? v + r : v - r
            }
            return v
        }
        let v = sum()
        return i == tokens.count ? v : nil
    }

    @Test func theSameSeedGivesTheSameProblems() {
        let a = MathProblemGenerator.generate(count: 200, seed: 5), b = MathProblemGenerator.generate(count: 200, seed: 5)
        let c = MathProblemGenerator.generate(count: 200, seed: 6)
        #expect(a == b)
        #expect(a != c)
        #expect(a.count == 200)
    }

    @Test func everyTemplateIsUsedAndEveryStepIsRight() throws {
        #expect(MathProblemGenerator.templateNames.count >= 30)
        let problems = MathProblemGenerator.generate(count: 3000, seed: 11)
        #expect(Set(problems.map(\.template)) == Set(MathProblemGenerator.templateNames))
        #expect(Set(problems.map(\.question)).count == problems.count)
        for p in problems {
            #expect(p.answer.hasSuffix("So the answer is \(p.value)"), "\(p.template): \(p.answer)")
            #expect(MathProblemGenerator.finalNumber(in: p.answer) == p.value)
            // Each step "… expression = value": the expression evaluates to the value.
            let steps = p.answer.components(separatedBy: ". ").dropLast()
            var last: Int?
            for step in steps {
                let parts = step.components(separatedBy: " = ")
                guard parts.count == 2, let stated = Int(parts[1].components(separatedBy: " ")[0]) else { continue }
                let lhs = parts[0].split(separator: ":").last.map(String.init) ?? parts[0]
                let expr = lhs.drop { !$0.isNumber && $0 != "(" && $0 != "-" }
                if let v = Self.evaluate(String(expr)) { #expect(v == stated, "\(p.template): '\(step)' evaluates to \(v)") }
                last = stated
            }
            if p.template != "bags-left-over" { #expect(last == p.value, "\(p.template): the last step gives \(last ?? -1), the answer says \(p.value)") }
        }
    }

    @Test func splitsShareNoQuestion() {
        let (train, test) = MathProblemGenerator.split(train: 400, test: 100, seed: 3)
        #expect(train.count == 400 && test.count == 100)
        #expect(Set(train.map(\.question)).isDisjoint(with: test.map(\.question)))
    }

    @Test func finalNumberReadsTheLastInteger() {
        #expect(MathProblemGenerator.finalNumber(in: "3 + 4 = 7. So the answer is 7") == 7)
        #expect(MathProblemGenerator.finalNumber(in: "It is -5 degrees") == -5)
        #expect(MathProblemGenerator.finalNumber(in: "1,250 people") == 1250)
        #expect(MathProblemGenerator.finalNumber(in: "no number") == nil)
    }
}

/// The high-level trainer on the tiny LLaMA: train, checkpoint and resume, evaluate, save and load.
@Suite struct LoraTrainerTests {
    static let tokenizer = DeploymentTests.tokenizer

    static func trainer() throws -> LoraTrainer {
        let model = try #require(try PEFTAdapterTests.model("tiny-llama") as? TrainableModel)
        return try LoraTrainer(model: model, tokenizer: tokenizer, lora: LoRAConfig(rank: 4, alpha: 16, dropout: 0.01, targets: .allLinear, seed: 2),
                               settings: TrainingSettings(epochs: 3, batchSize: 2, learningRate: 5e-3, schedule: .linear, warmupSteps: 1,
                                                          maxGradientNorm: 1, seed: 4))
    }

    /// Six short rows (the tiny model's context is 64 tokens), the first 3 tokens masked.
    static func data() throws -> CausalLMData {
        var rng = SeededGenerator(seed: 9)
        let examples = (0..<6).map { i -> TokenizedExample in
            let ids = (0..<(8 + i)).map { _ in Int(rng.next() % 250) + 1 }
            return TokenizedExample(tokens: ids, labels: ids.enumerated().map { $0.offset < 3 ? -100 : $0.element }, line: i + 1)
        }
        return CausalLMData(examples: examples, options: CausalLMDataOptions(maxLength: 16, padding: .longest), paddingTokenID: 0)
    }

    @Test func rowsMaskTheQuestion() throws {
        let p = MathProblemGenerator.generate(count: 1, seed: 1)[0]
        let rows = try MathProblemGenerator.rows([p], tokenizer: Self.tokenizer, maxLength: 512)
        let q = Self.tokenizer.encode(p.question + "\n").count
        let e = rows.examples[0]
        #expect(e.labels.prefix(q).allSatisfy { $0 == CausalLMData.ignoreIndex })
        #expect(e.labels[q] == e.tokens[q])
        #expect(Self.tokenizer.decode(Array(e.tokens.dropLast())) == p.question + "\n" + p.answer)
    }

    /// Training lowers the loss on the training rows, in float and in 8-bit integers.
    @Test(arguments: [LoraTrainer.Mode.torch, .disable]) func trainingLowersTheLoss(_ mode: LoraTrainer.Mode) throws {
        let t = try Self.trainer()
        let data = try Self.data()
        try t.compile(inputset: data, nBits: 8)
        let before = try t.evaluate(data, mode: mode)
        let records = try t.train(data, mode: mode)
        #expect(records.count == 9 && t.history.count == 9)
        let after = try t.evaluate(data, mode: mode)
        #expect(after.loss < before.loss, "\(mode): \(before.loss) → \(after.loss)")
    }

    /// Validation every 2 steps (and at the end) on held-out rows; a run interrupted after step
    /// 4 resumes with its validations and ends with the same curve and adapter; with a
    /// learning rate too small to change anything, patience 1 stops at the second validation.
    @Test func validationResumesAndEarlyStoppingStops() throws {
        struct Stop: Error {}
        let data = try Self.data()
        let held = CausalLMData(examples: Array(data.examples.suffix(2)), options: data.options, paddingTokenID: 0)
        let whole = try Self.trainer()
        whole.validation = (held, 2)
        try whole.train(data, mode: .torch)
        #expect(whole.validationHistory.map(\.step) == [2, 4, 6, 8, 9])
        #expect(whole.stoppedEarlyAt == nil)

        let dir = try PEFTAdapterTests.temporaryDirectory()
        let first = try Self.trainer()
        first.validation = (held, 2)
        first.checkpointURL = dir.appendingPathComponent("ckpt/checkpoint.safetensors")
        first.checkpointEvery = 1
        #expect(throws: Stop.self) { try first.train(data, mode: .torch) { record, _ in if record.step == 4 { throw Stop() } } }
        let second = try Self.trainer()
        second.validation = (held, 2)
        second.checkpointURL = first.checkpointURL
        try second.train(data, mode: .torch)
        #expect(second.validationHistory == whole.validationHistory)
        #expect(second.adapter.layers.map(\.b) == whole.adapter.layers.map(\.b))

        let model = try #require(try PEFTAdapterTests.model("tiny-llama") as? TrainableModel)
        let still = try LoraTrainer(model: model, tokenizer: Self.tokenizer, lora: LoRAConfig(rank: 4, alpha: 16, dropout: 0, targets: .allLinear, seed: 2),
                                    settings: TrainingSettings(epochs: 3, batchSize: 2, learningRate: 1e-30, seed: 4))
        still.validation = (held, 1)
        still.earlyStoppingPatience = 1
        let records = try still.train(data, mode: .torch)
        #expect(still.stoppedEarlyAt == 2 && records.count == 2 && still.validationHistory.count == 2)
    }

    /// Interrupted after step 4 of 9, a new trainer resumes from the checkpoint and ends with
    /// the adapter of an uninterrupted run, bit for bit.
    @Test func anInterruptedRunResumesToTheSameAdapter() throws {
        struct Stop: Error {}
        let data = try Self.data()
        let whole = try Self.trainer()
        try whole.train(data, mode: .torch)
        let dir = try PEFTAdapterTests.temporaryDirectory()
        let first = try Self.trainer()
        first.checkpointURL = dir.appendingPathComponent("ckpt/checkpoint.safetensors")
        first.checkpointEvery = 1
        #expect(throws: Stop.self) { try first.train(data, mode: .torch) { record, _ in if record.step == 4 { throw Stop() } } }
        let second = try Self.trainer()
        second.checkpointURL = first.checkpointURL
        let rest = try second.train(data, mode: .torch)
        #expect(rest.count == 5)
        #expect(second.history.count == 9)
        #expect(second.adapter.layers.map(\.a) == whole.adapter.layers.map(\.a))
        #expect(second.adapter.layers.map(\.b) == whole.adapter.layers.map(\.b))
        #expect(!FileManager.default.fileExists(atPath: first.checkpointURL!.path), "a finished run removes its checkpoint")
    }

    /// Saved in the PEFT layout and loaded into a fresh trainer: the same evaluation; the
    /// deployment of the compiled trainer loads as a client folder.
    @Test func saveAndLoadRoundTrip() throws {
        let data = try Self.data()
        let t = try Self.trainer()
        try t.compile(inputset: data, nBits: 8)
        try t.train(data, epochs: 1, mode: .disable)
        let dir = try PEFTAdapterTests.temporaryDirectory()
        try t.save(to: dir.appendingPathComponent("adapter"))
        let u = try Self.trainer()
        try u.loadAdapter(from: dir.appendingPathComponent("adapter"))
        #expect(try u.evaluate(data).loss == t.evaluate(data).loss)
        let summary = try t.saveDeployment(to: dir.appendingPathComponent("deployment"), name: "tiny", modelName: "tiny-llama")
        #expect(summary.client.adapterTrainedSteps == 3)
        let client = try LoadedModel.load(try ModelCatalog.locate(dir.appendingPathComponent("deployment").path))
        #expect(client.clientDeployment?.plan == t.plan)
    }

    @Test func modesNeedACompiledPlan() throws {
        let t = try Self.trainer()
        #expect(throws: TrainingError.self) { try t.evaluate(try Self.data(), mode: .disable) }
        #expect(throws: TrainingError.self) { try t.compile(inputset: try Self.data(), nBits: 8, scheme: "nope") }
    }
}
