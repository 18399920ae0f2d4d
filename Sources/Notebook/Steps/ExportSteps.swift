import Engine
import Foundation

/// `nb save_merged`: writes the session's model with its LoRA adapter merged (W + (α/r)·B·A)
/// as a Hugging Face folder (`model.safetensors`, `config.json`, tokenizer files) that
/// transformers loads, or as a GGUF file for llama.cpp (F32, F16, BF16, Q8_0, Q4_0, Q4_1, or
/// `source`: each tensor in its type in the base GGUF — the default for a GGUF base).
///
/// ```nb save_merged
/// path: ../outputs/merged       # a folder (safetensors) or a .gguf file
/// format: safetensors           # or gguf
/// precision: f32                # gguf: f32, f16, bf16, q8_0, q4_0, q4_1 or source
/// ```
public enum SaveMergedStep: Step {
    public static let name = "save_merged"
    public static func dataflow(_ _: Parameters) -> StepDataflow { StepDataflow(reads: [.model, .adapter, .deployment], writes: []) }
    public static let summary = "save the model with its adapter merged, as safetensors (transformers) or GGUF (llama.cpp)"

    public struct Parameters: StepParameters {
        public enum Keys: String, CodingKey, CaseIterable { case path, format, precision }
        public typealias CodingKeys = Keys
        public var path: String
        public var format: ModelExport.Format
        /// nil: `source` for a GGUF base written as GGUF, else f32.
        public var precision: ModelExport.Precision?

        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: Keys.self)
            path = try c.decode(String.self, forKey: .path)
            format = try c.decodeChoice(ModelExport.Format.self, forKey: .format) ?? (path.lowercased().hasSuffix(".gguf") ? .gguf : .safetensors)
            precision = try c.decodeChoice(ModelExport.Precision.self, forKey: .precision)
        }

        public func validate() throws(ParameterError) {
            if path.isEmpty { throw ParameterError("path", "must name a folder (safetensors) or a .gguf file") }
            if format == .safetensors, let precision, precision != .f32 {
                throw ParameterError("precision", "safetensors are written in f32; \(precision.rawValue) is for gguf")
            }
            if format == .gguf && !path.lowercased().hasSuffix(".gguf") { throw ParameterError("path", "a GGUF export is one file: end the path with .gguf") }
        }
    }

    public static func run(_ p: Parameters, context: StepContext) throws {
        let loaded = try context.session.model()
        let adapter = try context.session.adapter()
        let url = context.resolve(p.path)
        let summary: ModelExport.Summary
        let precision = p.precision ?? (p.format == .gguf && loaded.location.format == .gguf ? .source : .f32)
        do { summary = try ModelExport.export(loaded, adapter: adapter, to: url, format: p.format, precision: precision) } catch {
            throw StepFailure(key: "path", "\(error)")
        }
        context.emit(.metrics([
            Metric(p.format == .gguf ? "file" : "directory", context.display(url)),
            Metric("adapter", adapter.map { "merged (r \($0.config.rank), \($0.layers.count) modules, \(context.session.state.adapter?.trainedSteps ?? 0) steps trained)" } ?? "none: the base model"),
            Metric("tensors", String(summary.tensors)),
            Metric("parameters", Format.integer(summary.parameters)),
            Metric("tokenizer", summary.tokenizer),
        ]))
        context.emit(.table(OutputTable(title: "Files", columns: ["file", "bytes"], rows: summary.files.map { [$0.path, Format.integer($0.bytes)] })))
    }
}
