import Engine
import Foundation
import Testing

/// The LoRA steps run as a user runs them: `nb` processes on notebooks that fine-tune the
/// real SmolLM2 (downloaded by `make setup`) for a few short steps.
@Suite(.serialized) struct TrainingNotebookTests {
    static let environment = ["NB_GPT2_DIR": "", "NB_CACHE": ModelCache.directory.path]

    /// A notebook that trains 4 steps (3 Q&A pairs, batches of 2, 2 epochs) with dropout and
    /// a checkpoint after every step, then saves the adapter.
    static let lora = "r: 4\nalpha: 8\ndropout: 0.1\ntarget_modules: {gpt2: c_attn, llama: [q_proj, v_proj]}"
    static let train = "epochs: 2\nbatch_size: 2\nlearning_rate: 2e-3\nwarmup_steps: 1\nmax_length: 32\npadding: longest\ncheckpoint_every: 1"

    /// `beforeTrain`: cells placed between inject_lora and train (e.g. compile_hybrid).
    static func notebook(train: String = train, lora: String = lora, beforeTrain: String = "") -> String {
        """
        # Train

        ```nb load_model
        model: smollm2-135m-instruct
        ```

        ```nb load_data
        path: qa.txt
        format: qa
        name: train
        ```

        ```nb inject_lora id=lora
        \(lora)
        ```

        \(beforeTrain)```nb train id=train
        \(train)
        ```

        ```nb save_adapter id=save
        path: adapter
        ```

        """
    }

    static func workspace(_ text: String) throws -> Workspace {
        let w = try Workspace()
        try w.write("nb.md", text)
        try FileManager.default.copyItem(at: NbProcess.fixtures.appendingPathComponent("qa.txt"), to: w.root.appendingPathComponent("qa.txt"))
        return w
    }

    static func run(_ w: Workspace, _ arguments: [String] = ["nb.md"], extra: [String: String] = [:]) throws -> NbProcess.Output {
        try NbProcess.run(arguments, in: w.root, environment: environment.merging(extra) { $1 })
    }

    @Test func killedTrainingResumesToTheSameAdapter() throws {
        let whole = try Self.workspace(Self.notebook())
        let a = try Self.run(whole)
        #expect(a.code == 0, "\(a.stderr)")
        let reference = try Data(contentsOf: whole.root.appendingPathComponent("adapter/adapter_model.safetensors"))

        let killed = try Self.workspace(Self.notebook())
        let first = try Self.run(killed, extra: ["NB_TEST_KILL_AFTER_STEP": "2"])
        #expect(first.code == 9, "the fault injection kills the process with SIGKILL: \(first.code) \(first.stderr)")
        #expect(!FileManager.default.fileExists(atPath: killed.root.appendingPathComponent("adapter").path))
        let checkpoints = try FileManager.default.contentsOfDirectory(atPath: killed.root.appendingPathComponent("outputs/.nb/nb/checkpoints").path)
        #expect(checkpoints.count == 1)

        let second = try Self.run(killed)
        #expect(second.code == 0, "\(second.stderr)")
        #expect(second.stderr.contains("train: resuming at step 2 of 4"), "\(second.stderr)")
        let resumed = try Data(contentsOf: killed.root.appendingPathComponent("adapter/adapter_model.safetensors"))
        #expect(resumed == reference, "the resumed run's adapter differs from the uninterrupted run's")
        #expect(try killed.read("outputs/nb.html").contains("Resumed from the checkpoint at step 2 of 4"))
        // Done: the checkpoint is gone, the adapter lives in the session's snapshot.
        #expect(!FileManager.default.fileExists(atPath: killed.root.appendingPathComponent("outputs/.nb/nb/checkpoints/\(checkpoints[0])").path))

        // The saved adapter is a PEFT adapter that loads back onto the model and changes it.
        let base = try NbProcess.run(["top-tokens", "--model", "smollm2", "--prompt", "What is FHE?", "--k", "3", "--json"], in: whole.root)
        let adapted = try NbProcess.run(["top-tokens", "--model", "smollm2", "--adapter", "adapter", "--prompt", "What is FHE?", "--k", "3", "--json"], in: whole.root)
        #expect(base.code == 0 && adapted.code == 0, "\(adapted.stderr)")
        #expect(adapted.stderr.contains("r=4, 60 modules, merged"))
        #expect(base.stdout != adapted.stdout)
    }

    /// Validation during training: both curves on one chart and the best step named; a killed
    /// run resumes to the same adapter and the same validation losses; early stopping stops.
    @Test func validationCurvesResumeAndEarlyStopping() throws {
        let validated = Self.train + "\neval: {data: train, every: 1}"
        let whole = try Self.workspace(Self.notebook(train: validated))
        let a = try Self.run(whole)
        #expect(a.code == 0, "\(a.stderr)")
        #expect(a.stderr.contains("train: step 4 validation loss"), "\(a.stderr)")
        let report = try whole.read("outputs/nb.html")
        for text in ["best validation", "last validation", ">validation<", "Training loss"] { #expect(report.contains(text), "report lacks \(text)") }
        let reference = try Data(contentsOf: whole.root.appendingPathComponent("adapter/adapter_model.safetensors"))
        let losses = a.stderr.split(separator: "\n").filter { $0.contains("validation loss") }
        #expect(losses.count == 4)

        let killed = try Self.workspace(Self.notebook(train: validated))
        let first = try Self.run(killed, extra: ["NB_TEST_KILL_AFTER_STEP": "2"])
        #expect(first.code == 9, "\(first.stderr)")
        let second = try Self.run(killed)
        #expect(second.code == 0, "\(second.stderr)")
        #expect(try Data(contentsOf: killed.root.appendingPathComponent("adapter/adapter_model.safetensors")) == reference)
        let resumedLosses = (first.stderr + second.stderr).split(separator: "\n").filter { $0.contains("validation loss") }
        #expect(resumedLosses == losses, "the resumed run's validation losses are the uninterrupted run's")

        // min_delta larger than any improvement: the second evaluation ends the run.
        let stopping = try Self.workspace(Self.notebook(train: validated + "\nearly_stopping: {patience: 1, min_delta: 100}"))
        let s = try Self.run(stopping)
        #expect(s.code == 0, "\(s.stderr)")
        let stoppedReport = try stopping.read("outputs/nb.html")
        #expect(stoppedReport.contains("Stopped early at step 2 of 4"), "\(s.stderr)")
        #expect(stoppedReport.contains("2 of 4"))
        let bad = try Self.workspace(Self.notebook(train: Self.train + "\nearly_stopping: {patience: 2}"))
        let refused = try Self.run(bad)
        #expect(refused.code == 2 && refused.stderr.contains("key 'early_stopping': needs eval"), "\(refused.stderr)")
    }

    @Test func reportShowsLossesAndReRunsReuseTheAdapter() throws {
        let w = try Self.workspace(Self.notebook(train: Self.train + "\ngenerate: {prompts: [\"What is FHE?\"], max_tokens: 4}") + """
        ```nb evaluate id=eval
        data: train
        ```

        ```nb generate id=gen
        prompts: ["What is FHE?"]
        qa: true
        max_tokens: 4
        ```

        """)
        let first = try Self.run(w)
        #expect(first.code == 0, "\(first.stderr)")
        let report = try w.read("outputs/nb.html")
        for text in ["Training loss", "Per epoch", "trainable parameters", "230,400", "perplexity", "+ LoRA adapter (4 steps trained)", "What is FHE? →"] {
            #expect(report.contains(text), "report lacks \(text)")
        }
        // Re-running only the evaluation restores the trained adapter from the state directory.
        let again = try Self.run(w, ["nb.md", "--cell", "eval"])
        #expect(again.code == 0, "\(again.stderr)")
        #expect(try w.statuses()["train"] == "reused")
        #expect(try w.read("outputs/nb.html").contains("with the adapter (4 steps trained)"))
    }

    @Test(arguments: [
        ("rank", train, lora.replacingOccurrences(of: "r: 4", with: "r: 0"), 2, "nb.md:14: key 'r': the LoRA rank must be a positive integer, got 0"),
        ("target", train, lora.replacingOccurrences(of: "llama: [q_proj, v_proj]", with: "llama: c_attn"), 1, "LoRA target module 'c_attn' matches no linear layer of the model"),
        ("context", train.replacingOccurrences(of: "max_length: 32", with: "max_length: 100000"), lora, 1, "max_length"),
        ("nan", train.replacingOccurrences(of: "learning_rate: 2e-3", with: "learning_rate: 1e30"), lora, 1, "training diverged"),
    ])
    func badInputIsAClearError(name: String, train: String, lora: String, code: Int32, message: String) throws {
        let w = try Self.workspace(Self.notebook(train: train, lora: lora))
        let result = try Self.run(w)
        #expect(result.code == code, "\(name): \(result.code) \(result.stderr)")
        #expect(result.stderr.contains(message), "\(name): \(result.stderr)")
        switch name {
        case "nan":
            #expect(result.stderr.contains("at step 3 (epoch 2): training diverged; lower the learning rate or clip gradients; the last good checkpoint (step 2) is kept"), "\(result.stderr)")
            #expect(result.stderr.contains("nb.md:23: train failed"), "\(result.stderr)")
        case "target": #expect(result.stderr.contains("nb.md:17: inject_lora failed"), "\(result.stderr)")
        case "context": #expect(result.stderr.contains("context"), "\(result.stderr)")
        default: break
        }
    }

    /// `mode: execute` on SmolLM2 with four remote modules, in both protocols: training gives the
    /// same losses as `disable` (same integers), the report states the parameters, security,
    /// bytes and time split (offline and online apart for the masked protocol), and the secret
    /// key and the mask store are saved with mode 0600 (0700 for the store's folder) and nowhere
    /// in the report.
    @Test func executeModeTrainsLikeDisable() throws {
        func report(_ mode: String, _ extra: String = "") throws -> (String, Workspace) {
            let hybrid = """
            ```nb compile_hybrid id=hybrid
            scheme: DTok-SC
            n_bits: 8
            include: [model.layers.0.self_attn.q_proj, model.layers.0.self_attn.v_proj, model.layers.0.mlp.down_proj, model.layers.1.mlp.up_proj]
            calibration: {batches: 1, batch_size: 2, max_length: 32}
            ```


            """
            let w = try Self.workspace(Self.notebook(train: Self.train + "\nmode: \(mode)" + extra, beforeTrain: hybrid) + """
            ```nb generate id=gen
            prompts: ["What is FHE?"]
            max_tokens: 2
            qa: true
            mode: \(mode)\(extra)
            ```

            """)
            let result = try Self.run(w)
            #expect(result.code == 0, "\(result.stderr)")
            return (try w.read("outputs/nb.html"), w)
        }
        let (execute, w) = try report("execute")
        let (he, _) = try report("execute", "\nprotocol: he")
        let (disable, _) = try report("disable")
        func metric(_ html: String, _ name: String) -> String? {
            guard let r = html.range(of: "<span class=\"metric-name\">\(name)</span><span class=\"metric-value\">") else { return nil }
            return String(html[r.upperBound...].prefix { $0 != "<" })
        }
        for name in ["first loss", "final loss"] {
            #expect(metric(execute, name) != nil && metric(execute, name) == metric(disable, name), "\(name): \(metric(execute, name) ?? "-") vs \(metric(disable, name) ?? "-")")
            #expect(metric(he, name) == metric(disable, name), "\(name): \(metric(he, name) ?? "-") vs \(metric(disable, name) ?? "-")")
        }
        for fact in ["nb-glwe-2048", "≥ 128-bit security", "2^-64", "client encrypt", "server product", "client decrypt", "sent per step",
                     "remote layers encrypted", "he: every call encrypted whole"] {
            #expect(he.contains(fact), "he report lacks \(fact)")
        }
        for fact in ["nb-glwe-2048", "≥ 128-bit security", "2^-64", "masked: offline pads", "offline (HE: encrypt, server, decrypt; store)", "online client (pad, unpad)",
                     "online server product", "online bytes per step", "offline products (HE)", "remote layers encrypted", "each used once"] {
            #expect(execute.contains(fact), "masked report lacks \(fact)")
        }
        let store = w.root.appendingPathComponent("outputs/.nb/nb/keys/masks")
        let storeMode = (try FileManager.default.attributesOfItem(atPath: store.path)[.posixPermissions] as! NSNumber).intValue
        #expect(storeMode == 0o700)
        let stateMode = (try FileManager.default.attributesOfItem(atPath: store.appendingPathComponent("state").path)[.posixPermissions] as! NSNumber).intValue
        #expect(stateMode == 0o600)
        let key = w.root.appendingPathComponent("outputs/.nb/nb/keys/secret.key")
        let mode = (try FileManager.default.attributesOfItem(atPath: key.path)[.posixPermissions] as! NSNumber).intValue
        #expect(mode == 0o600)
        let keyBytes = try Data(contentsOf: key)
        #expect(keyBytes.count > 4096)
        #expect(!execute.contains(keyBytes.base64EncodedString().prefix(64)))
    }

    /// compile_hybrid, weights_report and the quantized `disable` mode on SmolLM2: the
    /// evaluation loss in 16-bit DTok-SC is within 1 % of float's, and 8-bit stays close.
    @Test func hybridDisableModeTrainsAndEvaluates() throws {
        let hybrid = """
        ```nb compile_hybrid id=hybrid
        scheme: DTok-SC
        n_bits: 16
        calibration: {batches: 1, batch_size: 2, max_length: 32}
        ```

        ```nb weights_report id=weights
        ```


        """
        let w = try Self.workspace(Self.notebook(train: Self.train + "\nmode: disable", beforeTrain: hybrid) + """
        ```nb evaluate id=float
        data: train
        mode: torch
        ```

        ```nb evaluate id=quantized
        data: train
        mode: disable
        ```

        """)
        let result = try Self.run(w)
        #expect(result.code == 0, "\(result.stderr)")
        let report = try w.read("outputs/nb.html")
        for fact in ["210 on the server, 0 on the client", "removed from the client", "DTok-SC: dynamic-per-token activations, per-channel weights, 16-bit",
                     "exact in double-precision accumulation"] {
            #expect(report.contains(fact), "report lacks \(fact)")
        }
        func loss(_ id: String) throws -> Double {
            let start = try #require(report.range(of: "data-step=\"evaluate\"", options: [], range: report.range(of: "id=\"cell-\(id)\"")!.lowerBound..<report.endIndex))
            let tail = report[start.upperBound...]
            let metric = try #require(tail.range(of: "<span class=\"metric-name\">loss</span><span class=\"metric-value\">"))
            return try #require(Double(tail[metric.upperBound...].prefix { $0 != "<" }))
        }
        let float = try loss("float"), quantized = try loss("quantized")
        #expect(abs(float - quantized) <= 0.01 * float, "16-bit disable loss \(quantized) vs float \(float)")
    }

    /// quantization_study: the same start trained per scheme; 16-bit DTok-SC ends within 1 %
    /// of float, 2-bit ST-ST visibly away from it, and the log-scale chart has every curve.
    @Test func quantizationStudyComparesSchemes() throws {
        var text = Self.notebook()
        let cut = try #require(text.range(of: "```nb train id=train"))
        text = String(text[..<cut.lowerBound]) + """
        ```nb quantization_study id=study
        schemes: [fp32, DTok-SC 16, ST-ST 2]
        epochs: 2
        batch_size: 2
        learning_rate: 2e-3
        max_length: 32
        calibration_batches: 1
        ```

        """
        let w = try Self.workspace(text)
        let result = try Self.run(w)
        #expect(result.code == 0, "\(result.stderr)")
        let report = try w.read("outputs/nb.html")
        #expect(report.contains("Training loss by precision scheme") && report.contains("Final loss (mean over the last epoch)"))
        func row(_ name: String) throws -> [String] {
            let start = try #require(report.range(of: "<tr><td>\(name)</td>"))
            let end = try #require(report.range(of: "</tr>", range: start.upperBound..<report.endIndex))
            return report[start.lowerBound..<end.lowerBound].components(separatedBy: "<td>").dropFirst().map { String($0.prefix { $0 != "<" }) }
        }
        let float = try #require(Double(try row("fp32")[3])), q16 = try #require(Double(try row("DTok-SC 16")[3])), q2 = try #require(Double(try row("ST-ST 2")[3]))
        #expect(abs(q16 - float) <= 0.01 * float, "16-bit \(q16) vs float \(float)")
        #expect(abs(q2 - float) > abs(q16 - float), "2-bit ST-ST \(q2) should be further from float \(float) than 16-bit \(q16)")
    }

    @Test func emptyDataSetIsAClearError() throws {
        let w = try Self.workspace(Self.notebook())
        try w.write("qa.txt", "")
        let result = try Self.run(w)
        #expect(result.code != 0)
        #expect(result.stderr.contains("qa.txt"), "\(result.stderr)")
    }
}
