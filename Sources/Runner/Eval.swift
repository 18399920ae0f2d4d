import ArgumentParser
import Foundation
import Notebook

extension Nb {
    /// `nb eval --mode 8bit`: the use case's `eval.py --mode …`, as the evaluation notebook
    /// run in one precision mode.
    struct Eval: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run the evaluation across precision modes in one mode (the evaluation notebook with --param mode=MODE).",
            discussion: """
            The same as `nb notebooks/MathEvaluation.md --param mode=MODE`: fine-tunes on generated math word \
            problems in that mode, measures test perplexity and exact match before and after, writes \
            training_log_MODE.txt, eval_generated_responses_MODE.txt, eval_summary_MODE.json and the adapter \
            under outputs/eval/, and compares every mode run so far in the report.
            """)

        @Option(help: ArgumentHelp("The precision of the frozen layers: \(MathEvalStep.Precision.allCases.map(\.rawValue).joined(separator: ", ")).", valueName: "MODE"))
        var mode: String

        @Option(help: ArgumentHelp("The evaluation notebook.", valueName: "PATH"), completion: .file(extensions: ["md"]))
        var notebook = "notebooks/MathEvaluation.md"

        @Option(name: .customLong("param"), help: ArgumentHelp("Override another notebook parameter (train, test, epochs, generate).", valueName: "key=value"))
        var parameters: [String] = []

        @Option(name: .customLong("output"), help: ArgumentHelp("Directory for the report and the saved cell state.", valueName: "DIR"))
        var output = "outputs"

        @Flag(help: "Re-run every cell, ignoring saved snapshots.")
        var fresh = false

        func validate() throws {
            let modes = MathEvalStep.Precision.allCases.map(\.rawValue)
            guard modes.contains(mode) else { throw ValidationError("--mode \(mode): expected one of \(modes.joined(separator: ", "))") }
            if parameters.contains(where: { $0.hasPrefix("mode=") }) { throw ValidationError("give the mode with --mode, not --param mode=…") }
        }

        func run() throws {
            var arguments = [notebook, "--param", "mode=\(mode)", "--output", output] + parameters.flatMap { ["--param", $0] }
            if fresh { arguments.append("--fresh") }
            let command = try Run.parse(arguments)
            try command.validate()
            try command.run()
        }
    }
}
