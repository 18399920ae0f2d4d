import Foundation

/// A value that is wrong for its key, found by a step's `validate()`.
public struct ParameterError: Error, Equatable {
    public var key: String
    public var message: String

    public init(_ key: String, _ message: String) {
        self.key = key
        self.message = message
    }
}

/// The typed parameters of a step, decoded from a cell's YAML body.
///
/// Keys are snake_case, as in the notebook. Unknown keys are rejected before decoding, so
/// `Keys` lists every key the step accepts.
public protocol StepParameters: Codable, Sendable {
    associatedtype Keys: CodingKey & CaseIterable
    /// Cross-field and range checks; throw ``ParameterError`` naming the key at fault.
    func validate() throws(ParameterError)
}

extension StepParameters {
    public func validate() throws(ParameterError) {}
    static var knownKeys: [String] { Keys.allCases.map(\.stringValue) }
}

/// One kind of notebook cell: `nb <name>`.
public protocol Step: SendableMetatype {
    associatedtype Parameters: StepParameters
    static var name: String { get }
    /// One line for `--help` style listings.
    static var summary: String { get }
    /// Files the step reads; their contents are hashed into the cell's cache key.
    static func inputs(_ parameters: Parameters, context: StepContext) -> [URL]
    /// The session slots the step reads and writes with these parameters: a cell's key holds
    /// the versions of what it reads, and what it writes gets a new version. The runner checks
    /// every run against this (reading or writing anything else fails the cell).
    static func dataflow(_ parameters: Parameters) -> StepDataflow
    /// Runs the step, changing `context.session` and appending to `context.outputs`.
    static func run(_ parameters: Parameters, context: StepContext) throws
}

extension Step {
    public static func inputs(_ parameters: Parameters, context: StepContext) -> [URL] { [] }
}

/// Parameters that have been decoded and validated, ready to run.
public struct PreparedStep: @unchecked Sendable {
    public var name: String
    /// The parameters re-encoded as canonical JSON (sorted keys): part of the cache key.
    public var canonicalParameters: String
    /// The same without the keys that say where the work runs (``locationKeys``): what a
    /// checkpoint belongs to, so that a run resumes on another replica of the server.
    public var computationParameters: String
    /// What it reads and writes of the session state.
    public var dataflow: StepDataflow
    let inputs: (StepContext) -> [URL]
    let run: (StepContext) throws -> Void
}

extension PreparedStep {
    /// Parameters that say where a step's work runs, not what it computes: the server's URL and
    /// the token that opens it.
    public static let locationKeys: Set<String> = ["server", "token_file"]

    /// Canonical JSON without ``locationKeys`` (unchanged when it is not an object).
    static func withoutLocation(_ canonical: String) -> String {
        guard var object = (try? JSONSerialization.jsonObject(with: Data(canonical.utf8))) as? [String: Any] else { return canonical }
        for key in locationKeys { object.removeValue(forKey: key) }
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return canonical }
        return String(decoding: data, as: UTF8.self)
    }
}

/// The steps a notebook can use, by name.
public struct StepRegistry: Sendable {
    struct Entry: Sendable {
        var summary: String
        var prepare: @Sendable (_ body: String, _ cell: CellSource, _ file: String) throws(NotebookError) -> PreparedStep
    }

    private var entries: [String: Entry] = [:]

    public init() {}

    public var names: [String] { entries.keys.sorted() }

    public func summary(of name: String) -> String? { entries[name]?.summary }

    public mutating func register<S: Step>(_ step: S.Type) {
        entries[S.name] = Entry(summary: S.summary) { body, cell, file throws(NotebookError) in
            let parameters = try ParameterDecoder.decode(S.Parameters.self, step: S.name, body: body, cell: cell, file: file)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            let canonical = (try? encoder.encode(parameters)).flatMap { String(data: $0, encoding: .utf8) } ?? ""
            return PreparedStep(
                name: S.name, canonicalParameters: canonical, computationParameters: PreparedStep.withoutLocation(canonical),
                dataflow: S.dataflow(parameters),
                inputs: { S.inputs(parameters, context: $0) },
                run: { try S.run(parameters, context: $0) })
        }
    }

    /// Decodes and validates a cell's body for its step.
    public func prepare(_ cell: CellSource, body: String, file: String) throws(NotebookError) -> PreparedStep {
        guard let entry = entries[cell.header.step] else {
            throw .unknownStep(SourceLocation(file: file, line: cell.fenceLine), name: cell.header.step, known: names + [ParametersCell.stepName])
        }
        return try entry.prepare(body, cell, file)
    }

    /// Every step this build of nb knows.
    public static let standard: StepRegistry = {
        var r = StepRegistry()
        r.register(LoadDataStep.self)
        r.register(LoadModelStep.self)
        r.register(GenerateStep.self)
        r.register(InjectLoRAStep.self)
        r.register(TrainStep.self)
        r.register(EvaluateStep.self)
        r.register(SaveAdapterStep.self)
        r.register(SaveMergedStep.self)
        r.register(LoadAdapterStep.self)
        r.register(CompileHybridStep.self)
        r.register(WeightsReportStep.self)
        r.register(QuantizationStudyStep.self)
        r.register(SaveDeploymentStep.self)
        r.register(LoadDeploymentStep.self)
        r.register(LoraTrainerStep.self)
        r.register(MathEvalStep.self)
        r.register(EvalCompareStep.self)
        r.register(FillMasksStep.self)
        return r
    }()
}
