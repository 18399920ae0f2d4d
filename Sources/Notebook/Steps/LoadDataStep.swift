import Engine
import Foundation

/// `nb load_data`: reads and validates a data file, names it in the session, and shows
/// counts, length statistics, a sample table and a length chart.
///
/// ```nb load_data id=data
/// path: ../data_finetune/what_is_fhe.txt   # relative to the notebook
/// format: qa                               # qa | jsonl (default: from the extension)
/// name: train                              # how later cells refer to it
/// show: 5                                  # rows in the sample table
/// ```
public enum LoadDataStep: Step {
    public static let name = "load_data"
    public static func dataflow(_ p: Parameters) -> StepDataflow { StepDataflow(reads: [.model], writes: [.dataset(p.name)]) }
    public static let summary = "read a question/answer .txt or a .jsonl data file and show what is in it"

    public struct Parameters: StepParameters {
        public enum Keys: String, CodingKey, CaseIterable { case path, format, name, show, limit }
        public typealias CodingKeys = Keys

        public var path: String
        public var format: DatasetFormat?
        public var name: String
        public var show: Int
        /// Keep only the first `limit` examples (a quick run on part of a data set).
        public var limit: Int?

        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: Keys.self)
            path = try c.decode(String.self, forKey: .path)
            format = try c.decodeChoice(DatasetFormat.self, forKey: .format)
            name = try c.decodeIfPresent(String.self, forKey: .name) ?? "train"
            show = try c.decodeIfPresent(Int.self, forKey: .show) ?? 5
            limit = try c.decodeIfPresent(Int.self, forKey: .limit)
        }

        public func validate() throws(ParameterError) {
            if path.trimmingCharacters(in: .whitespaces).isEmpty { throw ParameterError("path", "must not be empty") }
            if name.isEmpty || name.contains(where: \.isWhitespace) { throw ParameterError("name", "'\(name)' must be a single word") }
            if !(0...100).contains(show) { throw ParameterError("show", "\(show) is out of range 0...100") }
            if let limit, limit < 1 { throw ParameterError("limit", "\(limit) must be ≥ 1") }
        }
    }

    public static func inputs(_ p: Parameters, context: StepContext) -> [URL] { [context.resolve(p.path)] }

    public static func run(_ p: Parameters, context: StepContext) throws {
        let url = context.resolve(p.path)
        let shown = context.display(url)
        let format = p.format ?? .guess(for: url)
        var dataset: Dataset
        do {
            dataset = try Dataset.load(from: url, format: format, displayPath: shown)
        } catch {
            throw StepFailure(key: "path", error.description)
        }
        let total = dataset.examples.count
        if let limit = p.limit { dataset.examples = Array(dataset.examples.prefix(limit)) }
        let digest = try SHA256Digest.hex(fileAt: url)
        context.session.register(dataset, as: p.name, reference: DatasetReference(
            path: url.path, displayPath: shown, sha256: digest, format: format,
            exampleCount: dataset.examples.count, limit: p.limit))

        let examples = dataset.examples
        let textLengths = examples.map { $0.text.count }
        var metrics = [
            Metric("data set", p.name),
            Metric("file", shown),
            Metric("format", format == .qa ? "question/answer lines" : "JSON lines"),
            Metric("examples", Format.integer(examples.count) + (examples.count < total ? " (the first \(examples.count) of \(total))" : "")),
        ]
        let textStats = LengthStatistics(textLengths)
        if format == .qa {
            let questionStats = LengthStatistics(examples.map { $0.prompt?.count ?? 0 })
            metrics.append(Metric("question chars (mean / max)", "\(Format.number(questionStats.mean, decimals: 1)) / \(questionStats.max)"))
            metrics.append(Metric("answer chars (mean / max)", "\(Format.number(textStats.mean, decimals: 1)) / \(textStats.max)"))
        } else {
            metrics.append(Metric("text chars (mean / median / max)",
                                  "\(Format.number(textStats.mean, decimals: 1)) / \(Format.number(textStats.median, decimals: 1)) / \(textStats.max)"))
        }
        metrics.append(Metric("sha256", String(digest.prefix(16)) + "…"))
        // With a model loaded, lengths in its tokens: what training sees.
        var tokenSeries: [LineChart.Series] = []
        if context.session.state.model != nil, let loaded = try? context.session.model() {
            let tokenizer = loaded.tokenizer
            let texts = examples.map { tokenizer.encode($0.text, allowSpecial: false).count }
            if format == .qa {
                let questions = examples.map { tokenizer.encode($0.prompt ?? "", allowSpecial: false).count }
                // question + EOS + answer + EOS, as the training format lays it out.
                let totals = zip(questions, texts).map { $0 + $1 + 2 }
                let s = LengthStatistics(totals)
                metrics.append(Metric("tokens per example (mean / max)", "\(Format.number(s.mean, decimals: 1)) / \(s.max)"))
                metrics.append(Metric("examples over 128 tokens", String(totals.filter { $0 > 128 }.count)))
                tokenSeries = [LineChart.Series(name: "question", values: questions.map(Double.init)),
                               LineChart.Series(name: "answer", values: texts.map(Double.init)),
                               LineChart.Series(name: "formatted sequence", values: totals.map(Double.init))]
            } else {
                let s = LengthStatistics(texts)
                metrics.append(Metric("tokens per example (mean / median / max)", "\(Format.number(s.mean, decimals: 1)) / \(Format.number(s.median, decimals: 1)) / \(s.max)"))
                metrics.append(Metric("examples over 128 tokens", String(texts.filter { $0 > 128 }.count)))
                tokenSeries = [LineChart.Series(name: "text", values: texts.map(Double.init))]
            }
            metrics.append(Metric("tokenizer", context.session.state.model?.name ?? ""))
        }
        context.emit(.metrics(metrics))

        if p.show > 0 {
            let rows = examples.prefix(p.show).map { e -> [String] in
                format == .qa ? [String(e.line), clip(e.prompt ?? ""), clip(e.text)] : [String(e.line), clip(e.text)]
            }
            context.emit(.table(OutputTable(
                title: "First \(rows.count) of \(examples.count) examples",
                columns: format == .qa ? ["line", "question", "answer"] : ["line", "text"], rows: rows)))
        }

        if !tokenSeries.isEmpty {
            context.emit(.chart(LineChart(title: "Example length in tokens", xLabel: "example", yLabel: "tokens", series: tokenSeries)))
            return
        }
        var series = [LineChart.Series(name: format == .qa ? "answer" : "text", values: textLengths.map(Double.init))]
        if format == .qa {
            series.insert(LineChart.Series(name: "question", values: examples.map { Double($0.prompt?.count ?? 0) }), at: 0)
        }
        context.emit(.chart(LineChart(title: "Example length in characters", xLabel: "example",
                                      yLabel: "characters", series: series)))
    }

    static func clip(_ s: String, to n: Int = 160) -> String {
        s.count <= n ? s : String(s.prefix(n - 1)) + "…"
    }
}
