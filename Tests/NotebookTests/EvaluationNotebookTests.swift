import Engine
import Foundation
import Testing

/// The high-level steps as a user runs them: `nb` processes that fine-tune the real
/// SmolLM2 (downloaded by `make setup`) for two steps, with `lora_trainer` and with the
/// evaluation across precision modes (`math_eval` per mode, then `eval_compare`; one mode
/// through `nb eval --mode`).
@Suite(.serialized) struct EvaluationNotebookTests {
    static let environment = ["NB_GPT2_DIR": "", "NB_CACHE": ModelCache.directory.path]

    /// The evaluation notebook's cells, on 8 training and 4 test problems, one epoch.
    static let evaluation = """
        # Evaluation

        ```nb parameters
        mode: 8bit
        ```

        ```nb load_model
        model: smollm2-135m-instruct
        ```

        ```nb math_eval id=eval
        mode: ${mode}
        train: 8
        test: 4
        epochs: 1
        warmup_steps: 1
        generate: 1
        max_tokens: 24
        max_length: 64
        output: eval
        ```

        ```nb eval_compare id=compare cache=false
        output: eval
        ```

        """

    struct Summary: Decodable {
        var mode: String, steps: Int, trainProblems: Int, testProblems: Int, generated: Int
        var perplexityBefore: Double, perplexityAfter: Double, losses: [Double]
    }

    @Test func evaluationModesWriteTheirFilesAndCompare() throws {
        let w = try Workspace()
        try w.write("eval.md", Self.evaluation)
        let eight = try NbProcess.run(["eval.md"], in: w.root, environment: Self.environment)
        #expect(eight.code == 0, "\(eight.stderr)")
        // The same notebook in torch mode, through `nb eval` (≡ `nb eval.md --param mode=torch`).
        let torch = try NbProcess.run(["eval", "--mode", "torch", "--notebook", "eval.md"], in: w.root, environment: Self.environment)
        #expect(torch.code == 0, "\(torch.stderr)")
        var summaries: [String: Summary] = [:]
        for mode in ["8bit", "torch"] {
            let dir = w.root.appendingPathComponent("eval")
            let summary = try JSONDecoder().decode(Summary.self, from: Data(contentsOf: dir.appendingPathComponent("eval_summary_\(mode).json")))
            summaries[mode] = summary
            #expect(summary.mode == mode && summary.trainProblems == 8 && summary.testProblems == 4 && summary.generated == 1)
            #expect(summary.steps == 2 && summary.losses.count == 2, "\(mode): 8 problems in batches of 4 are 2 steps")
            #expect(summary.perplexityBefore.isFinite && summary.perplexityBefore > 1 && summary.perplexityAfter > 1)
            // The log: a header, then one line per step whose loss is the summary's.
            let log = try String(contentsOf: dir.appendingPathComponent("training_log_\(mode).txt"), encoding: .utf8)
            let steps = log.split(separator: "\n").filter { !$0.hasPrefix("#") }
            #expect(steps.count == 2, "\(mode) log:\n\(log)")
            for (line, loss) in zip(steps, summary.losses) {
                let logged = Double(line.split(separator: " ")[2]) ?? .nan
                #expect(abs(logged - loss) <= 1e-6 * max(1, abs(loss)), "\(mode): logged \(line) vs \(loss)")
            }
            let responses = try String(contentsOf: dir.appendingPathComponent("eval_generated_responses_\(mode).txt"), encoding: .utf8)
            #expect(!responses.isEmpty)
            let adapter = dir.appendingPathComponent("deployment/llama_lora_finetuned_\(mode)/adapter/adapter_model.safetensors")
            #expect(FileManager.default.fileExists(atPath: adapter.path), "\(mode): no adapter at \(adapter.path)")
        }
        // 8 bits also saves the deployment's halves.
        for half in ["server/manifest.json", "client/nb-client.json"] {
            #expect(FileManager.default.fileExists(atPath: w.root.appendingPathComponent("eval/deployment/llama_lora_finetuned_8bit/\(half)").path))
        }
        // The same problems in both modes: the perplexity before training differs only by
        // the 8-bit products, and so does the first step's loss.
        let (s8, st) = (try #require(summaries["8bit"]), try #require(summaries["torch"]))
        #expect(abs(s8.perplexityBefore / st.perplexityBefore - 1) < 0.1, "before: 8bit \(s8.perplexityBefore), torch \(st.perplexityBefore)")
        #expect(abs(s8.perplexityAfter / st.perplexityAfter - 1) < 0.1, "after: 8bit \(s8.perplexityAfter), torch \(st.perplexityAfter)")
        #expect(s8.perplexityBefore != st.perplexityBefore, "8-bit products should change the numbers a little")
        // The second run's report compares both modes.
        let report = try w.read("outputs/eval.html")
        #expect(report.contains("8bit") && report.contains("torch") && report.contains("<svg"))
        #expect(report.contains(String(format: "%.3f", st.perplexityAfter)), "the torch row's perplexity is in the comparison")
        // A mode that does not exist is named, with the ones that do.
        let bad = try NbProcess.run(["eval", "--mode", "4bit", "--notebook", "eval.md"], in: w.root, environment: Self.environment)
        #expect(bad.code != 0 && bad.stderr.contains("4bit") && bad.stderr.contains("torch, 8bit, 16bit"), "\(bad.stderr)")
    }

    /// lora_trainer on a held-out set: the perplexity before and after and the continuations
    /// appear in the report; a bad key is named.
    @Test func loraTrainerCellReportsBeforeAndAfter() throws {
        let w = try Workspace()
        let examples = (0..<4).map { #"{"text": "```nb train id=t\#($0)\nmode: disable\nepochs: \#($0 + 1)\n```"}"# }
        try w.write("train.jsonl", examples.joined(separator: "\n") + "\n")
        try w.write("heldout.jsonl", #"{"text": "```nb train id=other\nmode: disable\nepochs: 3\n```"}"# + "\n")
        let notebook = """
            # Trainer

            ```nb load_model
            model: smollm2-135m-instruct
            ```

            ```nb load_data
            path: train.jsonl
            format: jsonl
            name: train
            ```

            ```nb load_data
            path: heldout.jsonl
            format: jsonl
            name: heldout
            ```

            ```nb lora_trainer id=trainer
            data: train
            test: heldout
            epochs: 2
            batch_size: 2
            learning_rate: 2e-3
            warmup_steps: 1
            max_length: 48
            prompts: ["```nb train id=x\\nmode:"]
            max_tokens: 6
            ```

            """
        try w.write("nb.md", notebook)
        let run = try NbProcess.run(["nb.md"], in: w.root, environment: Self.environment)
        #expect(run.code == 0, "\(run.stderr)")
        let report = try w.read("outputs/nb.html")
        #expect(report.contains("test perplexity"), "the held-out perplexity before → after")
        #expect(report.contains("Continuations before and after fine-tuning"))
        // 4 examples, batches of 2, 2 epochs: 4 steps, each on the chart.
        #expect(report.contains("Training loss (LoraTrainer)"))

        try w.write("nb.md", notebook.replacingOccurrences(of: "batch_size: 2", with: "batch_sise: 2"))
        let bad = try NbProcess.run(["nb.md"], in: w.root, environment: Self.environment)
        #expect(bad.code != 0)
        #expect(bad.stderr.contains("batch_sise") && bad.stderr.contains("nb.md"), "\(bad.stderr)")
    }
}
