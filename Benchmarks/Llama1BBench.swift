import Engine
import FHE
import Foundation

// The Llama-3.2-1B shape (the seed's LLaMA notebook model): hidden 2048, 16 layers, 32 heads,
// 8 KV heads, head_dim 64, intermediate 8192, vocabulary 128256, llama3 rope scaling, tied
// head — random weights written by the bench, the same shape bench_torch.py --model llama1b builds.

/// The config of the shape; `layers` shortens it for quick looks.
func llama1BConfig(layers: Int = 16) -> LlamaConfig {
    LlamaConfig(vocabSize: 128_256, hiddenSize: 2048, intermediateSize: 8192, numHiddenLayers: layers, numAttentionHeads: 32,
                numKeyValueHeads: 8, rmsNormEps: 1e-5, ropeTheta: 500_000, maxPositionEmbeddings: 131_072, tieWordEmbeddings: true,
                headDim: 64, ropeScaling: RoPEScaling(kind: .llama3, factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192))
}

/// The child modes of the 1B rows; true when one ran.
func llama1BChildModes() throws -> Bool {
    let args = CommandLine.arguments
    // --llama1b-write DIR: the random model as a Hugging Face folder (config.json + model.safetensors).
    if let i = args.firstIndex(of: "--llama1b-write") {
        let dir = URL(fileURLWithPath: args[i + 1], isDirectory: true)
        let t = now()
        let model = LlamaModel.random(config: llama1BConfig(), seed: 1)
        let made = now() - t
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try SafeTensorsWriter.write(model.clientTensors(excluding: []), metadata: ["format": "pt"], to: dir.appendingPathComponent("model.safetensors"))
        try model.configJSON().write(to: dir.appendingPathComponent("config.json"))
        print(jsonLine(["random": made, "write": now() - t - made, "parameters": model.parameterCount]))
        return true
    }
    // --llama1b-load DIR: load seconds and peak RSS, through the registry as `load_model` does.
    if let i = args.firstIndex(of: "--llama1b-load") {
        let dir = URL(fileURLWithPath: args[i + 1], isDirectory: true)
        let t = now()
        let model = try ModelFamily.load(tensors: try SafeTensorsCheckpoint(directory: dir), config: Data(contentsOf: dir.appendingPathComponent("config.json")),
                                         configFile: "config.json", file: dir.path)
        print(jsonLine(["seconds": now() - t, "peak": peakRSSMB(), "parameters": model.parameterCount]))
        return true
    }
    // --llama1b-decode DIR NEW: greedy decode tokens/s from an 8-token prompt, as bench_torch.py: (n − 1) / (t_n − t_1).
    if let i = args.firstIndex(of: "--llama1b-decode") {
        let dir = URL(fileURLWithPath: args[i + 1], isDirectory: true), n = Int(args[i + 2])!
        let model = try ModelFamily.load(tensors: try SafeTensorsCheckpoint(directory: dir), config: Data(contentsOf: dir.appendingPathComponent("config.json")),
                                         configFile: "config.json", file: dir.path)
        var rng = SeededGenerator(seed: 7)
        let prompt = (0..<8).map { _ in Int(rng.next() % UInt64(model.vocabularySize)) }
        _ = model.generate(GenerationRequest(prompt: prompt, maxTokens: 2))  // builds the half-precision copies
        let one = time(1) { _ = model.generate(GenerationRequest(prompt: prompt, maxTokens: 1)) }
        let full = time(1) { _ = model.generate(GenerationRequest(prompt: prompt, maxTokens: n)) }
        print(jsonLine(["tokensPerSecond": Double(n - 1) / (full - one), "peak": peakRSSMB()]))
        return true
    }
    return false
}

/// VmHWM of another process, in MiB.
func peakRSSMB(pid: Int32) -> Double? {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
          let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
          let kb = Double(line.split(separator: " ").dropFirst().first ?? "") else { return nil }
    return kb / 1024
}

/// Rows named `Llama-3.2-1B-shape …`: load, float LoRA step 1×128 (all-linear, r 8) and greedy
/// decode against PyTorch + PEFT on the same shape in this run; with NB_BENCH_LLAMA1B_REMOTE=1
/// also the client's and the server's peak RSS in remote mode (one encrypted step of 1×16:
/// every call fills whole rings, minutes at this size).
func llama1BRows(selfURL: URL) -> [Row] {
    var rows: [Row] = []
    let here = URL(fileURLWithPath: ".")
    let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("nb-bench-llama1b-\(getpid())")
    defer { try? FileManager.default.removeItem(at: scratch) }
    let folder = scratch.appendingPathComponent("model")
    guard let (c0, written) = try? runProcess(selfURL, ["--llama1b-write", folder.path], in: here), c0 == 0, let w = parseJSON(written) else {
        print("bench: the Llama-3.2-1B-shape model could not be written; its rows are left out")
        return rows
    }
    let parameters = w["parameters"] as! Int
    if let (c1, out) = try? runProcess(selfURL, ["--llama1b-load", folder.path], in: here), c1 == 0, let l = parseJSON(out) {
        let seconds = l["seconds"] as! Double, gb = Double(parameters) * 4 / 1e9
        rows.append(Row(name: "Llama-3.2-1B-shape load (safetensors F32, \(parameters / 1_000_000) M parameters)", value: seconds, unit: "s",
                        baselineName: "reading its \(String(format: "%.1f", gb)) GB at 2 GB/s", baseline: gb / 2, ratio: seconds / (gb / 2),
                        note: String(format: "peak RSS after load %.0f MB (the weights: %.0f MB)", l["peak"] as! Double, Double(parameters) * 4 / 1_048_576)))
    }
    // The float LoRA step: 1 warm-up and 3 timed steps on each side (a step takes seconds here).
    if let (c2, out) = try? runProcess(selfURL, ["--train-step", "llama1b", "1", "--steps", "4"], in: here), c2 == 0 {
        let f = out.split(separator: " ").compactMap { Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        let torch = torchBaseline(["--model", "llama1b", "--mode", "train", "--targets", "all-linear", "--batch", "1", "--seq", "128",
                                   "--steps", "3", "--warmup", "1"])
        let base = torch?["step_s_median"] as? Double
        rows.append(Row(name: "Llama-3.2-1B-shape LoRA train step 1×128 (all-linear, r=8)", value: f[0], unit: "s",
                        baselineName: base == nil ? nil : "PyTorch + PEFT (bench_torch.py --model llama1b, this run)", baseline: base,
                        ratio: base.map { f[0] / $0 }, note: "ratio < 1: faster than PyTorch"))
        let torchRSS = torch?["peak_rss_MB"] as? Double
        rows.append(Row(name: "Llama-3.2-1B-shape training 1×128 peak RSS", value: f[1], unit: "MB",
                        baselineName: torchRSS == nil ? nil : "PyTorch + PEFT (this run)", baseline: torchRSS, ratio: torchRSS.map { f[1] / $0 }))
    }
    let newTokens = 16
    if let (c3, out) = try? runProcess(selfURL, ["--llama1b-decode", folder.path, String(newTokens)], in: here), c3 == 0, let d = parseJSON(out) {
        let torch = torchBaseline(["--model", "llama1b", "--mode", "gen", "--new-tokens", String(newTokens), "--gen-reps", "1"])
        let base = torch?["gen_decode_tokens_per_s"] as? Double
        let rate = d["tokensPerSecond"] as! Double
        rows.append(Row(name: "Llama-3.2-1B-shape greedy decode (8-token prompt, \(newTokens) tokens)", value: rate, unit: "tokens/s",
                        baselineName: base == nil ? nil : "PyTorch (bench_torch.py --model llama1b, this run)", baseline: base,
                        ratio: base.map { rate / $0 }, note: String(format: "half-precision weight copies; peak RSS %.0f MB", d["peak"] as! Double)))
    }
    guard ProcessInfo.processInfo.environment["NB_BENCH_LLAMA1B_REMOTE"] == "1" else { return rows }
    let nb = selfURL.deletingLastPathComponent().appendingPathComponent("nb")
    let deployment = scratch.appendingPathComponent("deployment")
    guard let (c4, made) = try? runProcess(selfURL, ["--make-deployment", "llama1b", deployment.path], in: here), c4 == 0, let m = parseJSON(made),
          let server = try? BenchServer(nb: nb, directory: deployment, arguments: ["--max-memory-mb", "8192"]) else { return rows }
    defer { server.stop() }
    let (batch, length, steps) = (1, 16, 2)
    guard let (c5, out) = try? runProcess(selfURL, ["--remote-client", deployment.path, server.url, "\(batch)", "\(length)", "\(steps)"], in: here),
          c5 == 0, let r = parseJSON(out) else { return rows }
    let floatMB = Double(m["modelParameters"] as! Int) * 4 / 1_048_576
    rows.append(Row(name: "Llama-3.2-1B-shape client peak RSS, remote mode, training \(batch)×\(length), every linear layer on the server",
                    value: r["peak"] as! Double, unit: "MB", baselineName: "the whole model's Float32 weights", baseline: floatMB,
                    ratio: (r["peak"] as! Double) / floatMB,
                    note: String(format: "step %.0f s (he protocol); the client holds %d of %d parameters", r["step"] as! Double,
                                 r["clientParameters"] as! Int, m["modelParameters"] as! Int)))
    if let serverPeak = peakRSSMB(pid: server.process.processIdentifier) {
        let int8MB = Double(m["serverParameters"] as! Int) * 2 / 1_048_576
        rows.append(Row(name: "Llama-3.2-1B-shape server peak RSS, remote mode (nb serve)", value: serverPeak, unit: "MB",
                        baselineName: "its int8 weights, forward and backward copies", baseline: int8MB, ratio: serverPeak / int8MB))
    }
    return rows
}
