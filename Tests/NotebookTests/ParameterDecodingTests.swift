import Foundation
import Testing
@testable import Notebook

private typealias Location = Notebook.SourceLocation

/// The only cell of a notebook whose fence is on line 3 (so the body starts on line 4).
private func cell(step: String = "load_data", body: String) throws -> CellSource {
    let text = "# T\n\n```nb \(step)\n\(body)```\n"
    let source = try NotebookSource.parse(text, url: URL(fileURLWithPath: "/tmp/nb.md"), displayPath: "nb.md")
    let cell = try #require(source.cells.first)
    #expect(cell.fenceLine == 3)
    #expect(cell.body == body, "fixture body must survive Markdown parsing unchanged")
    return cell
}

/// Prepares a load_data cell with `body`; returns the error, or nil on success.
private func prepareError(_ body: String, step: String = "load_data") throws -> NotebookError? {
    let c = try cell(step: step, body: body)
    do { _ = try StepRegistry.standard.prepare(c, body: c.body, file: "nb.md"); return nil } catch { return error }
}

private func canonical(_ body: String) throws -> String {
    let c = try cell(body: body)
    return try StepRegistry.standard.prepare(c, body: c.body, file: "nb.md").canonicalParameters
}

@Suite struct LoadDataParameterTests {
    @Test func validBody() throws {
        let c = try cell(body: "path: data/x.jsonl\nformat: jsonl\nname: eval\nshow: 0\n")
        let prepared = try StepRegistry.standard.prepare(c, body: c.body, file: "nb.md")
        #expect(prepared.name == "load_data")
        #expect(prepared.canonicalParameters == #"{"format":"jsonl","name":"eval","path":"data\/x.jsonl","show":0}"#
                || prepared.canonicalParameters == #"{"format":"jsonl","name":"eval","path":"data/x.jsonl","show":0}"#)
    }

    @Test func unknownKeyAtItsLineWithSuggestion() throws {
        let error = try prepareError("path: a.txt\nshow: 2\npth: b.txt\n")
        #expect(error == .unknownKey(Location(file: "nb.md", line: 6), key: "pth", step: "load_data",
                                     known: ["path", "format", "name", "show", "limit"]))
        #expect(error?.description ==
                "nb.md:6: unknown key 'pth' for step 'load_data' (did you mean 'path'?); known keys: path, format, name, show, limit")
        // Nothing close: no suggestion.
        let far = try prepareError("path: a.txt\ncolour: red\n")
        #expect(far?.location == Location(file: "nb.md", line: 5))
        #expect(far?.description.contains("did you mean") == false)
    }

    @Test func wrongTypeAtItsLine() throws {
        let error = try prepareError("path: a.txt\nname: train\nshow: many\n")
        #expect(error == .wrongType(Location(file: "nb.md", line: 6), key: "show", expected: "an integer", found: "'many'"))
        #expect(error?.description == "nb.md:6: key 'show': expected an integer, found 'many'")
        let yes = try prepareError("path: a.txt\nshow: yes\n")
        #expect(yes == .wrongType(Location(file: "nb.md", line: 5), key: "show", expected: "an integer", found: "'yes'"))
        let number = try prepareError("path: a.txt\nshow: 2.5\n")
        #expect(number == .wrongType(Location(file: "nb.md", line: 5), key: "show", expected: "an integer", found: "'2.5'"))
    }

    @Test func listWhereAnIntegerIsExpected() throws {
        let list = try prepareError("show: [1, 2]\npath: a.txt\n")
        #expect(list?.location == Location(file: "nb.md", line: 4))
        // Yams reports a list where a scalar belongs as a `Node.Scalar` mismatch, without
        // the wanted type: the message says a single value was expected.
        #expect(list == .wrongType(Location(file: "nb.md", line: 4), key: "show", expected: "a single value", found: "a list"))
    }

    @Test func missingPathAtFenceLine() throws {
        let error = try prepareError("show: 3\nname: train\n")
        #expect(error == .missingKey(Location(file: "nb.md", line: 3), key: "path", step: "load_data"))
        #expect(error?.description == "nb.md:3: step 'load_data' needs the key 'path'")
    }

    @Test func emptyBodyIsMissingPath() throws {
        #expect(try prepareError("") == .missingKey(Location(file: "nb.md", line: 3), key: "path", step: "load_data"))
        #expect(try prepareError("# only a comment\n") == .missingKey(Location(file: "nb.md", line: 3), key: "path", step: "load_data"))
    }

    @Test func formatNotAChoice() throws {
        let error = try prepareError("path: a.txt\nformat: csv\n")
        #expect(error == .invalidValue(Location(file: "nb.md", line: 5), key: "format", message: "'csv' is not one of qa, jsonl"))
    }

    @Test func showOutOfRangeFromValidate() throws {
        let error = try prepareError("path: a.txt\nshow: 500\n")
        #expect(error == .invalidValue(Location(file: "nb.md", line: 5), key: "show", message: "500 is out of range 0...100"))
        #expect(try prepareError("path: a.txt\nshow: -1\n")?.location == Location(file: "nb.md", line: 5))
        #expect(try prepareError("path: a.txt\nshow: 100\n") == nil)
    }

    @Test func otherValidationErrors() throws {
        #expect(try prepareError("path: a.txt\nname: two words\n")
                == .invalidValue(Location(file: "nb.md", line: 5), key: "name", message: "'two words' must be a single word"))
        #expect(try prepareError("path: '  '\n")
                == .invalidValue(Location(file: "nb.md", line: 4), key: "path", message: "must not be empty"))
    }

    @Test func badYAMLInsideTheBody() throws {
        let body = "name: train\npath: [unclosed\nshow: 3\n"
        let error = try prepareError(body)
        guard case .badYAML(let location, let message)? = error else {
            Issue.record("expected badYAML, got \(String(describing: error))")
            return
        }
        #expect(location.file == "nb.md")
        // Body lines are 4...6.
        #expect((4...6).contains(location.line), "line \(location.line)")
        #expect(!message.isEmpty)

        let tabs = try prepareError("path: a.txt\n\tshow: 3\n")
        #expect(tabs?.location.map { (4...5).contains($0.line) } == true, "\(String(describing: tabs))")
    }

    @Test func duplicateKeyIsBadYAML() throws {
        let error = try prepareError("path: a.txt\nshow: 1\npath: b.txt\n")
        guard case .badYAML(let location, let message)? = error else {
            Issue.record("expected badYAML, got \(String(describing: error))")
            return
        }
        #expect((4...6).contains(location.line))
        #expect(message.contains("path"))
    }

    @Test func listBodyIsNotAMapping() throws {
        let error = try prepareError("- path: a.txt\n- show: 3\n")
        #expect(error == .notAMapping(Location(file: "nb.md", line: 4), step: "load_data"))
        let scalar = try prepareError("\njust text\n")
        #expect(scalar == .notAMapping(Location(file: "nb.md", line: 5), step: "load_data"))
    }

    @Test func canonicalParametersIgnoreLayout() throws {
        let a = try canonical("path: a.txt\nshow: 3\n")
        let b = try canonical("# the data\nshow:    3   # rows\n\npath: 'a.txt'\n")
        let c = try canonical("{show: 3, path: \"a.txt\", name: train}\n")
        #expect(a == b)
        #expect(a == c) // name: train is the default
        #expect(try canonical("path: a.txt\nshow: 4\n") != a)
        #expect(try canonical("path: b.txt\nshow: 3\n") != a)
        #expect(try canonical("path: a.txt\nshow: 3\nname: eval\n") != a)
        #expect(try canonical("path: a.txt\nshow: 3\nformat: qa\n") != a)
    }

    @Test func unknownStepListsKnownSteps() throws {
        let error = try prepareError("path: a.txt\n", step: "load_dta")
        #expect(error == .unknownStep(Location(file: "nb.md", line: 3), name: "load_dta", known: ["compile_hybrid", "eval_compare", "evaluate", "fill_masks", "generate", "inject_lora", "load_adapter", "load_data", "load_deployment", "load_model", "lora_trainer", "math_eval", "quantization_study", "save_adapter", "save_deployment", "save_merged", "train", "weights_report", "parameters"]))
        #expect(error?.description == "nb.md:3: unknown step 'load_dta' (did you mean 'load_data'?); known steps: compile_hybrid, eval_compare, evaluate, fill_masks, generate, inject_lora, load_adapter, load_data, load_deployment, load_model, lora_trainer, math_eval, quantization_study, save_adapter, save_deployment, save_merged, train, weights_report, parameters")
        #expect(StepRegistry.standard.names == ["compile_hybrid", "eval_compare", "evaluate", "fill_masks", "generate", "inject_lora", "load_adapter", "load_data", "load_deployment", "load_model", "lora_trainer", "math_eval", "quantization_study", "save_adapter", "save_deployment", "save_merged", "train", "weights_report"])
        #expect(StepRegistry.standard.summary(of: "load_data") == LoadDataStep.summary)
        #expect(StepRegistry.standard.summary(of: "serve") == nil)
    }
}

@Suite struct ParametersCellTests {
    @Test func declarationsInOrderWithLines() throws {
        let c = try cell(step: "parameters", body: "# defaults\nepochs: 20\nlr: 2e-3\nmode: disable\ndata: 'a b.txt'\n")
        let declared = try ParametersCell.declarations(c, file: "nb.md")
        #expect(declared.map(\.name) == ["epochs", "lr", "mode", "data"])
        #expect(declared.map(\.value) == ["20", "2e-3", "disable", "a b.txt"])
        #expect(declared.map(\.line) == [5, 6, 7, 8])
    }

    @Test func emptyDeclarations() throws {
        #expect(try ParametersCell.declarations(cell(step: "parameters", body: ""), file: "nb.md").isEmpty)
    }

    @Test func declarationErrors() throws {
        let list = try cell(step: "parameters", body: "epochs: 2\nsizes: [1, 2]\n")
        #expect(throws: NotebookError.invalidValue(Location(file: "nb.md", line: 5), key: "sizes",
                                                   message: "a parameter's default must be a single value, not a list or mapping")) {
            try ParametersCell.declarations(list, file: "nb.md")
        }
        for name in ["2x", "my-param", "a.b"] {
            let bad = try cell(step: "parameters", body: "ok: 1\n\(name): 1\n")
            #expect(throws: NotebookError.badYAML(Location(file: "nb.md", line: 5), message: "parameter names are letters, digits and '_'")) {
                try ParametersCell.declarations(bad, file: "nb.md")
            }
        }
        let notMapping = try cell(step: "parameters", body: "- a\n")
        #expect(throws: NotebookError.notAMapping(Location(file: "nb.md", line: 4), step: "parameters")) {
            try ParametersCell.declarations(notMapping, file: "nb.md")
        }
    }

    @Test func substituteReplacesEveryReference() throws {
        let body = "path: ${data}\nshow: ${n}\nname: ${prefix}_${n}\n"
        let c = try cell(body: body)
        let out = try ParametersCell.substitute(body, parameters: ["data": "a.txt", "n": "3", "prefix": "run"], cell: c, file: "nb.md")
        #expect(out == "path: a.txt\nshow: 3\nname: run_3\n")
        // Substituted text then decodes as typed YAML.
        let prepared = try StepRegistry.standard.prepare(c, body: out, file: "nb.md")
        #expect(prepared.canonicalParameters.contains("\"show\":3"))
    }

    @Test func substituteLeavesPlainBodiesAlone() throws {
        let body = "path: $data\nname: {x}\n"
        let c = try cell(body: body)
        #expect(try ParametersCell.substitute(body, parameters: [:], cell: c, file: "nb.md") == body)
    }

    @Test func unknownParameterAtItsLine() throws {
        let body = "path: ${data}\nshow: ${y}\n"
        let c = try cell(body: body)
        #expect(throws: NotebookError.unknownParameter(Location(file: "nb.md", line: 5), name: "y", declared: ["data", "n"])) {
            try ParametersCell.substitute(body, parameters: ["n": "1", "data": "a.txt"], cell: c, file: "nb.md")
        }
        let third = "# c\n\nname: ${who}\n"
        let c3 = try cell(body: third)
        #expect(throws: NotebookError.unknownParameter(Location(file: "nb.md", line: 6), name: "who", declared: [])) {
            try ParametersCell.substitute(third, parameters: [:], cell: c3, file: "nb.md")
        }
        let description = NotebookError.unknownParameter(Location(file: "nb.md", line: 6), name: "who", declared: []).description
        #expect(description.contains("'${who}'") && description.contains("none"))
    }

    @Test func unclosedReference() throws {
        let body = "path: a.txt\nshow: ${n\n"
        let c = try cell(body: body)
        #expect(throws: NotebookError.badYAML(Location(file: "nb.md", line: 5), message: "'${' without a closing '}'")) {
            try ParametersCell.substitute(body, parameters: ["n": "1"], cell: c, file: "nb.md")
        }
    }
}

@Suite struct MathEvalParameterTests {
    /// `generate` defaults to 20 problems, but never more than the test split holds; asking
    /// for more than the split is an error naming the key and the cell's line.
    @Test func generateDefaultsWithinTheTestSplit() throws {
        #expect(try prepareError("test: 5\n", step: "math_eval") == nil)
        #expect(try prepareError("test: 40\n", step: "math_eval") == nil)
        let error = try #require(try prepareError("test: 5\ngenerate: 6\n", step: "math_eval"))
        #expect(error.description.contains("nb.md:") && error.description.contains("generate") && error.description.contains("6"), "\(error)")
    }
}
