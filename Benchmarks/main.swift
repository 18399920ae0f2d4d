// `make bench`: speed of nb, each figure next to a baseline measured in the same run.
// Writes outputs/bench.md and outputs/bench.json.
import CCmarkGFM
import COpenBLAS
import Engine
import FHE
import Foundation
import Notebook

// Before any thread starts: OpenBLAS's idle workers sleep at once (see BLAS.idleSpinExponent).
BLAS.prepareWorkers()

struct Row: Codable {
    var name: String
    var value: Double
    var unit: String
    var baselineName: String?
    var baseline: Double?
    /// value / baseline.
    var ratio: Double?
    var note: String?

    enum CodingKeys: String, CodingKey {
        case name, value, unit, baseline, ratio, note
        case baselineName = "baseline_name"
    }
}

func now() -> Double { ProgressReporter.monotonicSeconds() }

func median(_ xs: [Double]) -> Double {
    let s = xs.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

func time(_ reps: Int, _ body: () throws -> Void) rethrows -> Double {
    var times: [Double] = []
    for _ in 0..<reps {
        let t = now()
        try body()
        times.append(now() - t)
    }
    return median(times)
}

@discardableResult
func runProcess(_ exe: URL, _ args: [String], in dir: URL, env: [String: String] = [:]) throws -> (Int32, String) {
    let p = Process()
    p.executableURL = exe
    p.arguments = args
    p.currentDirectoryURL = dir
    var e = ProcessInfo.processInfo.environment
    for (k, v) in env { e[k] = v }
    p.environment = e
    let out = Pipe()
    p.standardOutput = out
    p.standardError = FileHandle.nullDevice
    try p.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: data, as: UTF8.self))
}

/// GFLOP/s of a 768×768×768 sgemm, median of 20 after warm-up.
func sgemmGFLOPS(n: Int = 768) -> Double {
    var a = [Float](repeating: 0, count: n * n), b = a, c = a
    for i in 0..<(n * n) { a[i] = Float(i % 13) * 0.01; b[i] = Float(i % 7) * 0.02 }
    let t = a.withUnsafeBufferPointer { pa in
        b.withUnsafeBufferPointer { pb in
            c.withUnsafeMutableBufferPointer { pc in
                for _ in 0..<3 { BLAS.sgemm(transposeA: false, transposeB: false, m: n, n: n, k: n, a: pa.baseAddress!, lda: n, b: pb.baseAddress!, ldb: n, c: pc.baseAddress!, ldc: n) }
                return time(20) { BLAS.sgemm(transposeA: false, transposeB: false, m: n, n: n, k: n, a: pa.baseAddress!, lda: n, b: pb.baseAddress!, ldb: n, c: pc.baseAddress!, ldc: n) }
            }
        }
    }
    return 2 * Double(n * n * n) / t / 1e9
}

/// Peak resident memory of this process, in MiB (VmHWM).
func peakRSSMB() -> Double { ProcessMemory.peakResidentMB() }

/// Forward of 1×128 tokens (seconds, median) and greedy decode speed (tokens/s, 8-token
/// prompt, 64 new tokens, as bench_torch.py measures it: (64 − 1) / (t₆₄ − t₁)).
func modelSpeed(_ model: LanguageModel) -> (forward: Double, decode: Double) {
    var rng = SeededGenerator(seed: 7)
    let tokens = (0..<128).map { _ in Int(rng.next() % UInt64(model.vocabularySize)) }
    _ = model.forward(tokens, cache: model.makeCache(capacity: 128), allPositions: true)
    let forward = time(5) { _ = model.forward(tokens, cache: model.makeCache(capacity: 128), allPositions: true) }
    let prompt = Array(tokens.prefix(8))
    _ = model.generate(GenerationRequest(prompt: prompt, maxTokens: 4))
    let full = time(3) { _ = model.generate(GenerationRequest(prompt: prompt, maxTokens: 64)) }
    let one = time(3) { _ = model.generate(GenerationRequest(prompt: prompt, maxTokens: 1)) }
    return (forward, 63 / (full - one))
}

/// The bytes of weights one decoded token reads, by format ("96 MB (Q4_1 66 MB, Q8_0 30 MB)").
func decodeBytes(_ model: LanguageModel) -> String {
    let parts: [DecodeMatrix.Format: Int]
    if let m = model as? LlamaModel { parts = m.decodeBytesPerToken } else if let m = model as? GPT2Model { parts = m.decodeBytesPerToken } else { return "?" }
    let names: [DecodeMatrix.Format: String] = [.f16: "F16", .q4_0: "Q4_0", .q4_1: "Q4_1", .q8_0: "Q8_0"]
    let total = parts.values.reduce(0, +)
    let detail = parts.sorted { $0.value > $1.value }.map { "\(names[$0.key]!) \(Int((Double($0.value) / 1e6).rounded())) MB" }
    return "\(Int((Double(total) / 1e6).rounded())) MB (\(detail.joined(separator: ", ")))"
}

/// The float LoRA training steps against PyTorch + PEFT, each in a child process so its peak
/// RSS is its own: GPT-2 shape at 1×128 and 4×128, SmolLM2-135M at 1×128.
func trainStepRows(selfURL: URL) -> [Row] {
    // This machine's speed drifts by ±15 % over minutes, so nb and PyTorch alternate for a few
    // rounds and the ratio is the median of the rounds' ratios: a slow phase then slows both
    // sides of a round instead of one side of the only one.
    let rounds = max(1, Int(ProcessInfo.processInfo.environment["NB_BENCH_ROUNDS"] ?? "") ?? 3)
    var rows: [Row] = []
    for (model, batch, targets, reference, target) in [("gpt2", 1, "c_attn", 0.45, 0.30), ("gpt2", 4, "c_attn", 1.94, 1.3),
                                                        ("smollm2", 1, "all-linear", 0.70, 0.47)] {
        var ours: [(seconds: Double, rss: Double)] = [], theirs: [(seconds: Double, rss: Double?)] = []
        for _ in 0..<rounds {
            guard let (code, out) = try? runProcess(selfURL, ["--train-step", model, String(batch)], in: URL(fileURLWithPath: ".")), code == 0 else {
                break
            }
            let f = out.split(separator: " ").compactMap { Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            guard f.count >= 2 else { break }
            ours.append((f[0], f[1]))
            if let torch = torchBaseline(["--model", model == "gpt2" ? "gpt2" : "llama", "--mode", "train", "--targets", targets,
                                          "--batch", String(batch), "--seq", "128"]),
               let step = torch["step_s_median"] as? Double {
                theirs.append((step, torch["peak_rss_MB"] as? Double))
            }
        }
        guard !ours.isEmpty else {
            print("bench: the \(model) training step did not run; its row is left out")
            continue
        }
        let label = model == "gpt2" ? "GPT-2-shape" : "SmolLM2-135M"
        let seconds = median(ours.map(\.seconds)), rss = ours.map(\.rss).max()!
        let note = String(format: "target ≤ %.2f s, and ≤ 0.7× PyTorch in the same run; ratio < 1: faster than PyTorch", target)
        if theirs.count == ours.count {
            let ratios = zip(ours, theirs).map { $0.seconds / $1.seconds }
            let rounds = zip(ours, theirs).map { String(format: "%.3f/%.3f s", $0.seconds, $1.seconds) }.joined(separator: ", ")
            rows.append(Row(name: "\(label) LoRA train step \(batch)×128 (\(targets), r=8)", value: seconds, unit: "s",
                            baselineName: "PyTorch + PEFT (bench_torch.py, this run; medians of \(ours.count) alternating rounds)",
                            baseline: median(theirs.map(\.seconds)), ratio: median(ratios),
                            note: note + "; ratio: the median of the rounds' ratios (nb/PyTorch per round: \(rounds))"))
        } else {
            rows.append(Row(name: "\(label) LoRA train step \(batch)×128 (\(targets), r=8)", value: seconds, unit: "s",
                            baselineName: "PyTorch 2.3.1 + PEFT (REFERENCE.md figure, not this run)", baseline: reference,
                            ratio: seconds / reference, note: note))
        }
        let torchRSS = theirs.compactMap(\.rss).max()
        rows.append(Row(name: "\(label) training \(batch)×128 peak RSS", value: rss, unit: "MB",
                        baselineName: torchRSS == nil ? nil : "PyTorch + PEFT (this run)", baseline: torchRSS,
                        ratio: torchRSS.map { rss / $0 }, note: model == "gpt2" && batch == 4 ? "target ≤ 1500 MB" : nil))
    }
    return rows
}

/// Runs shared/baselines/bench_torch.py in the reference venv when both exist; its RESULT json.
func torchBaseline(_ args: [String]) -> [String: Any]? {
    let python = FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache/nb-baseline/bin/python")
    let script = URL(fileURLWithPath: "../shared/baselines/bench_torch.py")
    guard ProcessInfo.processInfo.environment["NB_BENCH_TORCH"] != "0",
          FileManager.default.isExecutableFile(atPath: python.path), FileManager.default.fileExists(atPath: script.path),
          let (code, out) = try? runProcess(python, [script.path] + args, in: URL(fileURLWithPath: ".")), code == 0,
          let line = out.split(separator: "\n").last(where: { $0.hasPrefix("RESULT ") }),
          let json = try? JSONSerialization.jsonObject(with: Data(line.dropFirst(7).utf8)) as? [String: Any]
    else { return nil }
    return json
}

/// Child mode: `--fhe-product [ROWS K OUT]`: the encrypted product (8-bit inputs, 8-bit
/// weights) against the float sgemm of the same shape, and an exactness count against dgemm.
/// Prints: sgemm s, encrypt s, server s, decrypt s, input bytes/value, output bytes/value,
/// values checked, mismatches, plan.
/// Child mode: `--decode gpt2|smollm2`: forward 1×128 ms and greedy decode tokens/s, the
/// figures of the model rows, for quick runs.
if let i = CommandLine.arguments.firstIndex(of: "--decode") {
    let which = CommandLine.arguments[i + 1]
    let model: LanguageModel = which == "gpt2" ? GPT2Model.random(config: GPT2Config(), seed: 1)
        : try LoadedModel.load(try ModelCatalog.locate("smollm2-135m-instruct")).model
    let speed = modelSpeed(model)
    print(String(format: "%@ forward 1x128 %.0f ms, greedy decode %.2f tokens/s; ", which, speed.forward * 1000, speed.decode) + decodeBytes(model))
    exit(0)
}

/// Greedy generation through 8-bit DTok-SC products on every linear layer (the `disable`
/// mode's arithmetic) with a fresh all-linear adapter: seconds per token with the KV cache,
/// and re-running the whole sequence per token as generation did before the cache.
func hybridGenerationSeconds(_ model: TrainableModel, bits: Int = 8, prompt: Int = 40, tokens: Int = 32) throws -> (cached: Double, recomputed: Double) {
    let names = model.linearModules.map(\.name)
    let adapter = try LoRAAdapter(config: LoRAConfig(rank: 8, alpha: 32, dropout: 0, targets: .allLinear, seed: 1), modules: model.linearModules)
    var hooks = adapter.hooks()
    hooks.backend = try QuantizedLinearBackend(plan: HybridPlan(scheme: QuantizationScheme(named: "DTok-SC", nBits: bits)!, remoteModules: names), model: model)
    let ids = (0..<prompt).map { 100 + 37 * $0 }
    func run(_ cached: Bool) -> Double {
        let t0 = now()
        let out = generateThroughHooks(model: model, prompt: ids, maxTokens: tokens, hooks: hooks, cached: cached)
        return (now() - t0) / Double(out.count)
    }
    return (min(run(true), run(true)), run(false))
}

/// Greedy generation with every linear layer remote through the masked protocol (in-process
/// server, 8-bit DTok-SC, all-linear adapter): the offline pads are filled first (forward only),
/// then the online seconds per token are timed. Also checks the tokens against `disable`.
func maskedGenerationSeconds(_ model: TrainableModel, prompt: Int = 40, tokens: Int = 32)
    throws -> (online: Double, offlinePerRow: Double, offlineSeconds: Double, segments: Int, segmentRows: Int, same: Bool) {
    let plan = HybridPlan(scheme: QuantizationScheme(named: "DTok-SC", nBits: 8)!, remoteModules: model.linearModules.map(\.name))
    let adapter = try LoRAAdapter(config: LoRAConfig(rank: 8, alpha: 32, dropout: 0, targets: .allLinear, seed: 1), modules: model.linearModules)
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("nb-bench-gen-masks-\(getpid())")
    defer { try? FileManager.default.removeItem(at: dir) }
    let backend = try EncryptedLinearBackend(plan: plan, model: model, keyring: Keyring(), protocol: .masked, maskStore: try MaskStore(directory: dir))
    try backend.prefillMasks(rows: prompt + tokens, directions: [.forward])
    let offline = backend.statistics
    var hooks = adapter.hooks()
    hooks.backend = backend
    let ids = (0..<prompt).map { 100 + 37 * $0 }
    _ = generateThroughHooks(model: model, prompt: ids, maxTokens: 2, hooks: hooks)  // warm-up
    let t0 = now()
    let out = generateThroughHooks(model: model, prompt: ids, maxTokens: tokens, hooks: hooks)
    let online = (now() - t0) / Double(out.count)
    if let f = backend.failure { throw f }
    var clear = adapter.hooks()
    clear.backend = try QuantizedLinearBackend(plan: plan, model: model)
    let same = generateThroughHooks(model: model, prompt: ids, maxTokens: tokens, hooks: clear) == out
    // Offline seconds per token: a token takes one row of each forward stream.
    let streams = Double(model.linearModules.count)
    return (online, offline.offlineSeconds / (Double(max(offline.offlineRows, 1)) / streams), offline.offlineSeconds, offline.calls,
            offline.offlineRows / max(offline.calls, 1), same)
}

/// Child mode: `--masked-generate [TOKENS]`: that row's figures, for quick runs.
if let i = CommandLine.arguments.firstIndex(of: "--masked-generate") {
    let model = try LoadedModel.load(try ModelCatalog.locate("smollm2-135m-instruct")).model as! TrainableModel
    // An optional token count (default 32): more tokens for profiling the online part.
    let tokens = CommandLine.arguments.count > i + 1 ? Int(CommandLine.arguments[i + 1]) ?? 32 : 32
    let g = try maskedGenerationSeconds(model, tokens: tokens)
    print(String(format: "masked generation: online %.1f ms/token, offline %.2f ms/row (%d segments of %d rows in %.1f s), same tokens as disable: %@",
                 g.online * 1000, g.offlinePerRow * 1000, g.segments, g.segmentRows, g.offlineSeconds, g.same ? "yes" : "NO"))
    exit(0)
}

/// Child mode: `--hybrid-generate [BITS]`: that row's figures, for quick runs.
if let i = CommandLine.arguments.firstIndex(of: "--hybrid-generate") {
    let bits = CommandLine.arguments.count > i + 1 ? Int(CommandLine.arguments[i + 1]) ?? 8 : 8
    let model = try LoadedModel.load(try ModelCatalog.locate("smollm2-135m-instruct")).model as! TrainableModel
    let s = try hybridGenerationSeconds(model, bits: bits)
    print(String(format: "%d-bit generation: %.1f ms/token with the KV cache, %.1f ms/token re-running the sequence (%.1fx)", bits,
                 s.cached * 1000, s.recomputed * 1000, s.recomputed / s.cached))
    exit(0)
}

/// Child mode: `--online-kernel [ROWS K O BITS]`: the server's online product, the 32-bit
/// wrapping kernel against the 64-bit limb GEMM on the same input (median of 7 each).
if let i = CommandLine.arguments.firstIndex(of: "--online-kernel") {
    let args = CommandLine.arguments.dropFirst(i + 1).prefix(4).compactMap { Int($0) }
    let (rows, k, o, bits) = args.count == 4 ? (args[0], args[1], args[2], args[3]) : (256, 576, 1536, 24)
    var rng = SeededGenerator(seed: 7)
    let wv = (0..<(o * k)).map { _ in Int(rng.next() % 255) - 127 }
    let weights = try ServerWeights(outputs: o, inputs: k, kernel: .bytes) { wv[$0 * k + $1] }
    let mask: UInt64 = (1 << UInt64(bits)) - 1
    let x = (0..<(rows * k)).map { _ in Int64(rng.next() % 255) - 127 }, pads = (0..<(rows * k)).map { _ in rng.next() & mask }
    let input = x.withUnsafeBufferPointer { xs in pads.withUnsafeBufferPointer { MaskedProduct.blind(xs, pads: $0, rows: rows, features: k, bits: bits) } }
    var a: MaskedOutput?, b: MaskedOutput?
    let wrapping = try time(7) { a = try FHEServer.multiply(input, by: weights) }
    let limbs = try time(7) { b = try FHEServer.multiply(input, by: weights, wrapping: false) }
    print(String(format: "online kernel %d rows, K %d, O %d, k %d: wrapping %.2f ms, 64-bit limbs %.2f ms (%.2fx), same: %@", rows, k, o, bits,
                 wrapping * 1000, limbs * 1000, limbs / wrapping, a == b ? "yes" : "NO"))
    exit(0)
}

if let i = CommandLine.arguments.firstIndex(of: "--fhe-product") {
    let args = CommandLine.arguments.dropFirst(i + 1).prefix(3).compactMap { Int($0) }
    let (rows, k, o) = args.count == 3 ? (args[0], args[1], args[2]) : (4096, 768, 2304)
    var rng = SeededGenerator(seed: 5)
    let x = (0..<(rows * k)).map { _ in Int64(rng.next() % 256) }
    let wv = (0..<(o * k)).map { _ in Int(rng.next() % 255) - 127 }
    let weights = try ServerWeights(outputs: o, inputs: k) { wv[$0 * k + $1] }
    let plan = try CallPlan.choose(for: weights.shape(rows: rows, maxAbsInput: 255))
    let xf = x.map(Float.init), wf = wv.map(Float.init)
    var yf = [Float](repeating: 0, count: rows * o)
    // The baseline varies most from run to run on a shared machine: the median of 7.
    let sgemm = time(7) { BLAS.sgemm(transposeA: false, transposeB: true, m: rows, n: o, k: k, a: xf, lda: k, b: wf, ldb: k, c: &yf, ldc: o) }
    let client = FHEClient()
    var request: [UInt8] = [], response: [UInt8] = []
    let encrypt = time(3) { request = client.encrypt(x, rows: rows, features: k, plan: plan).serialized() }
    let server = try time(3) { response = try FHEServer.handle(request: request, weights: weights) }
    let product = try EncryptedProduct(serialized: response)
    var y: [Int64] = []
    let decrypt = time(3) { y = client.decrypt(product, plan: plan) }
    // Exact reference: dgemm on integer-valued doubles (every sum < 2^53).
    let xd = x.map(Double.init), wd = wv.map(Double.init)
    var yd = [Double](repeating: 0, count: rows * o)
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, blasint(rows), blasint(o), blasint(k), 1, xd, blasint(k), wd, blasint(k), 0, &yd, blasint(o))
    let mismatches = zip(y, yd).reduce(0) { $0 + (Double($1.0) == $1.1 ? 0 : 1) }
    print(String(format: "%.4f %.4f %.4f %.4f %.3f %.3f %d %d", sgemm, encrypt, server, decrypt,
                 Double(request.count) / Double(rows * k), Double(response.count) / Double(rows * o), y.count, mismatches), plan)
    exit(0)
}

// Child mode: load SmolLM2 and print load seconds and peak RSS.
if CommandLine.arguments.contains("--load-smollm2") {
    let t = now()
    let loaded = try LoadedModel.load(try ModelCatalog.locate("smollm2-135m-instruct"))
    print(String(format: "%.4f %.1f %d", now() - t, peakRSSMB(), loaded.model.parameterCount))
    exit(0)
}

/// Child mode: `--train-step gpt2|smollm2 BATCH`: median seconds of a LoRA training step
/// (3 warm-up + 10 timed, 128 tokens per row, labels = tokens, as bench_torch.py) and peak RSS.
if let i = CommandLine.arguments.firstIndex(of: "--train-step") {
    let which = CommandLine.arguments[i + 1], batch = Int(CommandLine.arguments[i + 2])!
    func option(_ name: String) -> Int? { CommandLine.arguments.firstIndex(of: name).map { Int(CommandLine.arguments[$0 + 1])! } }
    let length = option("--length") ?? 128
    let (model, targets, _, _) = try benchModel(which)
    let adapter = try LoRAAdapter(config: LoRAConfig(rank: 8, alpha: 32, dropout: 0.1, targets: targets, seed: 1), modules: model.linearModules)
    let data = benchData(rows: batch, length: length, vocabulary: model.vocabularySize)
    let run = try LoRATrainingRun(model: model, adapter: adapter, data: data,
                                  settings: TrainingSettings(epochs: 1, batchSize: batch, learningRate: 2e-3, shuffle: false,
                                                             gradientCheckpointing: CommandLine.arguments.contains("--checkpointing")))
    let plan = HybridPlan(scheme: QuantizationScheme(named: "DTok-SC", nBits: 8)!, remoteModules: model.linearModules.map(\.name))
    if CommandLine.arguments.contains("--disable") {  // every frozen layer in 8-bit DTok-SC integers
        run.backend = try QuantizedLinearBackend(plan: plan, model: model)
    }
    // Large batches: 1 warm-up and 2 timed steps (an encrypted 32×128 step takes minutes).
    var (warmup, timed) = batch >= 16 ? (1, 2) : (3, 10)
    if let steps = option("--steps") {
        guard steps >= 2 else { FileHandle.standardError.write(Data("--steps \(steps): at least 2 (one warm-up step, then the timed ones)\n".utf8)); exit(2) }
        (warmup, timed) = (1, steps - 1)
    }
    let masked = CommandLine.arguments.contains("--masked")
    var offlinePerRow = 0.0
    let maskDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("nb-bench-masks-\(getpid())")
    defer { try? FileManager.default.removeItem(at: maskDirectory) }
    if CommandLine.arguments.contains("--execute") || masked {  // the same integers, encrypted, in-process server
        let b = try EncryptedLinearBackend(plan: plan, model: model, keyring: Keyring(), protocol: masked ? .masked : .he,
                                           maskStore: masked ? try MaskStore(directory: maskDirectory) : nil)
        run.backend = b
        if masked {
            // Offline ahead of the steps (full rings), so the timed steps are the online work alone.
            try b.prefillMasks(rows: (warmup + timed) * batch * length)
            // Seconds of offline work per token (a token takes one row of every stream).
            let s = b.statistics
            offlinePerRow = s.offlineSeconds / (Double(max(s.offlineRows, 1)) / Double(b.maskStreamCount))
            FileHandle.standardError.write(Data(String(format: "offline: encrypt %.1f s, server %.1f s, decrypt %.1f s, store %.1f s for %d rows per stream; one-time hints %.1f s, %.0f MB; %@\n",
                                                       s.encryptSeconds, s.serverSeconds, s.decryptSeconds, s.offlineStoreSeconds, s.offlineRows / b.maskStreamCount,
                                                       s.hintSeconds, Double(s.hintBytes) / 1e6,
                                                       b.offlinePlan(plan.remoteModules[0], .forward)?.description ?? "").utf8))
        }
    }
    var times: [Double] = [], losses: [Float] = []
    for k in 0..<(warmup + timed) {
        let t = now()
        losses.append(try run.step().loss)
        if k >= warmup { times.append(now() - t) }
    }
    var extra = ""
    if masked, let e = run.backend as? EncryptedLinearBackend {
        let s = e.statistics, steps = Double(warmup + timed)
        extra = String(format: " %.6f %.0f %.0f %.3f %.3f %.4f %.4f %.0f %.2f %.0f", offlinePerRow, Double(s.onlineBytesSent) / steps, Double(s.onlineBytesReceived) / steps,
                       Double(s.onlineBytesSent) / Double(max(s.inputValues, 1)), Double(s.onlineBytesReceived) / Double(max(s.outputValues, 1)),
                       s.onlineClientSeconds / steps, s.onlineServerSeconds / steps, Double(s.offlineRows), s.hintSeconds, Double(s.hintBytes) / 1e6)
    } else if let e = run.backend as? EncryptedLinearBackend {
        let s = e.statistics, steps = Double(warmup + timed)
        extra = String(format: " %.4f %.4f %.4f %.0f %.0f", s.encryptSeconds / steps, s.serverSeconds / steps, s.decryptSeconds / steps,
                       Double(s.bytesSent) / steps, Double(s.bytesReceived) / steps)
    }
    print(String(format: "%.4f %.1f %d", median(times), peakRSSMB(), adapter.parameterCount) + extra
          + " losses:" + losses.map { "\(Double($0))" }.joined(separator: ","))
    exit(0)
}

if try deploymentChildModes() { exit(0) }
if try llama1BChildModes() { exit(0) }

// Only the Llama-3.2-1B-shape rows (for a quick look): --llama1b-rows.
if CommandLine.arguments.contains("--llama1b-rows") {
    let me = URL(fileURLWithPath: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0])
    for r in llama1BRows(selfURL: me) {
        print("\(r.name): \(r.value) \(r.unit)  [\(r.baselineName ?? ""): \(r.baseline.map { "\($0)" } ?? "-"), ratio \(r.ratio.map { String(format: "%.2f", $0) } ?? "-")]  \(r.note ?? "")")
    }
    exit(0)
}
if try soakChildMode() { exit(0) }

// Only the soak row (for a quick look): --soak-rows [SECONDS].
if let i = CommandLine.arguments.firstIndex(of: "--soak-rows") {
    let me = URL(fileURLWithPath: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0])
    let seconds = CommandLine.arguments.count > i + 1 ? Double(CommandLine.arguments[i + 1]) ?? 60 : 60
    for r in soakRows(selfURL: me, seconds: seconds) {
        print("\(r.name): \(r.value) \(r.unit)  [\(r.baselineName ?? ""): \(r.baseline.map { "\($0)" } ?? "-"), ratio \(r.ratio.map { String(format: "%.2f", $0) } ?? "-")]  \(r.note ?? "")")
    }
    exit(0)
}

// Only the float training-step rows against PyTorch (for a quick look): --train-rows.
if CommandLine.arguments.contains("--train-rows") {
    let me = URL(fileURLWithPath: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0])
    for r in trainStepRows(selfURL: me) {
        print("\(r.name): \(r.value) \(r.unit)  [\(r.baselineName ?? ""): \(r.baseline.map { "\($0)" } ?? "-"), ratio \(r.ratio.map { String(format: "%.2f", $0) } ?? "-")]  \(r.note ?? "")")
    }
    exit(0)
}

// Only the deployment rows (for a quick look): --deployment-rows.
if CommandLine.arguments.contains("--deployment-rows") {
    let me = URL(fileURLWithPath: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0])
    for r in deploymentRows(selfURL: me) {
        print("\(r.name): \(r.value) \(r.unit)  [\(r.baselineName ?? ""): \(r.baseline.map { "\($0)" } ?? "-"), ratio \(r.ratio.map { String(format: "%.2f", $0) } ?? "-")]  \(r.note ?? "")")
    }
    exit(0)
}

// Child mode: the phases of a GPT-2-shape training step, timed apart.
if CommandLine.arguments.contains("--train-phases") {
    let model = GPT2Model.random(config: GPT2Config(), seed: 1)
    let adapter = try LoRAAdapter(config: LoRAConfig(rank: 8, alpha: 32, dropout: 0.1, targets: .modules(["c_attn"]), seed: 1), modules: model.linearModules)
    adapter.isTraining = true
    let hooks = adapter.hooks()
    var rng = SeededGenerator(seed: 7)
    let tokens = (0..<128).map { _ in Int(rng.next() % 50257) }
    for _ in 0..<4 {
        var t = now()
        let acts = model.forwardForTraining(tokens: tokens, batchSize: 1, hooks: hooks)
        let forward = now() - t
        t = now()
        var dLogits = [Float](repeating: 0, count: acts.logits.count)
        let targets = Array(tokens.dropFirst()) + [-100]
        _ = acts.logits.withUnsafeBufferPointer { z in dLogits.withUnsafeMutableBufferPointer {
            Layers.crossEntropy(logits: z.baseAddress!, targets: targets, dLogits: $0.baseAddress!, rows: 128, vocabularySize: 50257) } }
        let loss = now() - t
        t = now()
        _ = model.backward(dLogits, activations: acts, hooks: hooks, keepLinearGradients: false)
        print(String(format: "forward %.3f s  loss %.3f s  backward %.3f s", forward, loss, now() - t))
    }
    exit(0)
}

// Child mode: GFLOP/s of the training pass's matrix shapes (M, N, K, transposeB).
if CommandLine.arguments.contains("--sgemm-shapes") {
    for (m, n, k, tb) in [(128, 2304, 768, false), (128, 768, 2304, true), (128, 50257, 768, true), (128, 768, 50257, false),
                          (512, 2304, 768, false), (512, 768, 2304, true), (512, 3072, 768, false), (512, 768, 3072, true),
                          (512, 50257, 768, true), (512, 768, 50257, false), (768, 768, 768, false)] {
        let a = [Float](repeating: 0.5, count: m * k), b = [Float](repeating: 0.25, count: k * n)
        var c = [Float](repeating: 0, count: m * n)
        let seconds = time(5) {
            BLAS.sgemm(transposeA: false, transposeB: tb, m: m, n: n, k: k, a: a, lda: k, b: b, ldb: tb ? k : n, c: &c, ldc: n)
        }
        print(String(format: "%5d %6d %6d %@  %.1f GFLOP/s", m, n, k, tb ? "NT" : "NN", 2.0 * Double(m * n * k) / seconds / 1e9))
    }
    exit(0)
}

// Child mode: print sgemm GFLOP/s with whatever kernel this process loaded.
if CommandLine.arguments.contains("--sgemm-only") {
    print(String(format: "%.3f %@", sgemmGFLOPS(), BLAS.coreName))
    exit(0)
}

BLASEnvironment.ensureFastKernels()
let selfURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
let binDir = selfURL.deletingLastPathComponent()
let nbBinary = binDir.appendingPathComponent("nb")
guard FileManager.default.isExecutableFile(atPath: nbBinary.path) else {
    FileHandle.standardError.write(Data("bench: \(nbBinary.path) is missing; build it first (make bench does)\n".utf8))
    exit(1)
}
let outputDir = URL(fileURLWithPath: "outputs", isDirectory: true)
var rows: [Row] = []
print("nb benchmarks — \(MachineInfo.current().summary)\nBLAS: \(BLAS.summary)\n")

// 1. sgemm 768³ with the kernel nb picks, against OpenBLAS's generic kernel in a child process.
let fast = sgemmGFLOPS()
let (_, genericOut) = try runProcess(selfURL, ["--sgemm-only"], in: URL(fileURLWithPath: "."),
                                     env: ["OPENBLAS_CORETYPE": "Prescott", "NB_BLAS_REEXEC": "1"])
let generic = Double(genericOut.split(separator: " ").first ?? "") ?? .nan
rows.append(Row(name: "sgemm 768³ (\(BLAS.coreName) kernel)", value: fast, unit: "GFLOP/s",
                baselineName: "OpenBLAS generic Prescott kernel", baseline: generic, ratio: fast / generic))

// 2. Parse + render of a 200-cell notebook, against cmark-gfm's own markdown→HTML of the same text.
let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("nb-bench-\(UUID().uuidString)")
try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
defer { try? FileManager.default.removeItem(at: scratch) }
var qa = ""
for i in 0..<20 { qa += "Question number \(i) about encryption?\nAnswer number \(i), which is a little longer than the question.\n" }
try qa.write(to: scratch.appendingPathComponent("qa.txt"), atomically: true, encoding: .utf8)
var text = "# Benchmark notebook\n\nTwo hundred cells.\n\n```nb parameters\nshow: 3\n```\n\n"
for i in 1..<200 {
    text += "## Section \(i)\n\nSome *prose* with a [link](https://example.org) and `code`, item \(i).\n\n"
    text += "```nb load_data id=c\(i)\npath: qa.txt\nname: d\(i)\nshow: ${show}\n```\n\n"
}
let notebookURL = scratch.appendingPathComponent("bench200.md")
try text.write(to: notebookURL, atomically: true, encoding: .utf8)

let source = try NotebookSource.parse(text, url: notebookURL, displayPath: "bench200.md")
let views = source.cells.map { c in
    CellView(source: c, record: CellRecord(index: c.index, name: c.name, id: c.header.id, step: c.header.step,
                                           line: c.fenceLine, key: nil, status: .ran, duration: 0.01),
             outputs: [.metrics([Metric("examples", "20")]),
                       .table(OutputTable(columns: ["line", "q"], rows: [["1", "Question?"], ["3", "Another?"]]))])
}
let header = ReportHeader(title: "bench", notebookPath: "bench200.md", startedAt: Date(), gitCommit: nil,
                          machine: MachineInfo.current(), invocation: "bench", state: "finished", totalSeconds: 1)
let parseRender = try time(20) {
    let s = try NotebookSource.parse(text, url: notebookURL, displayPath: "bench200.md")
    _ = HTMLReport.render(header: header, notebook: s, cells: views, problems: [])
}
let cmarkOnly = time(20) {
    text.withCString { p in
        let html = cmark_markdown_to_html(p, strlen(p), CMARK_OPT_DEFAULT)
        free(html)
    }
}
rows.append(Row(name: "parse + render, 200-cell notebook", value: parseRender * 1000, unit: "ms",
                baselineName: "cmark-gfm markdown→HTML of the same text", baseline: cmarkOnly * 1000,
                ratio: parseRender / cmarkOnly))

// 3. A reused run of the unchanged notebook, against process start (`nb --version`).
try runProcess(nbBinary, ["bench200.md", "--fresh"], in: scratch)
let (code, _) = try runProcess(nbBinary, ["bench200.md"], in: scratch)
precondition(code == 0, "the benchmark notebook failed")
let reused = try time(10) { try runProcess(nbBinary, ["bench200.md"], in: scratch) }
let start = try time(10) { try runProcess(nbBinary, ["--version"], in: scratch) }
rows.append(Row(name: "reused run of the unchanged 200-cell notebook", value: reused * 1000, unit: "ms",
                baselineName: "process start (nb --version)", baseline: start * 1000, ratio: reused / start,
                note: String(format: "overhead beyond process start %.0f ms (target < 200 ms)", (reused - start) * 1000)))

// 3b. One early cell edited (its data set is read by no other cell): only that cell runs.
var editedRan = -1, edit = 0
let edited = try time(5) {
    // A new value each time, so every timed run has one changed cell with no snapshot.
    edit += 1
    try text.replacingOccurrences(of: "name: d2\n", with: "name: d2\nlimit: \(edit)\n").write(to: notebookURL, atomically: true, encoding: .utf8)
    let (code, _) = try runProcess(nbBinary, ["bench200.md"], in: scratch)
    precondition(code == 0, "the edited benchmark notebook failed")
    let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: scratch.appendingPathComponent("outputs/.nb/bench200/manifest.json"))) as! [String: Any]
    editedRan = (manifest["cells"] as! [[String: Any]]).filter { ($0["status"] as? String) == "ran" }.count
}
try text.write(to: notebookURL, atomically: true, encoding: .utf8)
rows.append(Row(name: "run after editing one early cell of the 200-cell notebook (no other cell reads what it writes)", value: edited * 1000, unit: "ms",
                baselineName: "reused run of the unchanged notebook", baseline: reused * 1000, ratio: edited / reused,
                note: "\(editedRan) of 200 cells ran (dataflow keys; chained keys re-ran 199)"))
// NB_BENCH_RUNNER_ONLY=1: the runner's rows alone (a quick look), printed without writing outputs/bench.*.
if ProcessInfo.processInfo.environment["NB_BENCH_RUNNER_ONLY"] == "1" {
    for r in rows { print(r.name, r.value, r.unit, r.baseline ?? 0, r.note ?? "") }
    exit(0)
}

// 4. Models: GPT-2 shape (random weights: the real ones are not reachable here) and SmolLM2 (real).
let gpt2 = GPT2Model.random(config: GPT2Config(), seed: 1)
let gpt2Speed = modelSpeed(gpt2)
let torchGPT2 = torchBaseline(["--model", "gpt2", "--mode", "gen"])
rows.append(Row(name: "GPT-2-shape forward 1×128", value: gpt2Speed.forward * 1000, unit: "ms"))
rows.append(Row(name: "GPT-2-shape greedy decode", value: gpt2Speed.decode, unit: "tokens/s",
                baselineName: torchGPT2 == nil ? "PyTorch 2.3.1 (REFERENCE.md figure, not this run)" : "PyTorch (bench_torch.py, this run)",
                baseline: (torchGPT2?["gen_decode_tokens_per_s"] as? Double) ?? 30.7,
                ratio: gpt2Speed.decode / ((torchGPT2?["gen_decode_tokens_per_s"] as? Double) ?? 30.7),
                note: "target ≥ 1.5×; weights read per token: " + decodeBytes(gpt2)))
if let (code, out) = try? runProcess(selfURL, ["--load-smollm2"], in: URL(fileURLWithPath: ".")), code == 0 {
    let f = out.split(separator: " ").compactMap { Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    rows.append(Row(name: "SmolLM2-135M load (GGUF → Float32)", value: f[0], unit: "s", note: "target ≤ 2 s"))
    rows.append(Row(name: "SmolLM2-135M peak RSS after load", value: f[1], unit: "MB", note: "target ≤ 1200 MB"))
    let smol = try LoadedModel.load(try ModelCatalog.locate("smollm2-135m-instruct"))
    let smolSpeed = modelSpeed(smol.model)
    let torchLlama = torchBaseline(["--model", "llama", "--mode", "gen"])
    let base = (torchLlama?["gen_decode_tokens_per_s"] as? Double) ?? 21
    rows.append(Row(name: "SmolLM2-135M forward 1×128", value: smolSpeed.forward * 1000, unit: "ms"))
    rows.append(Row(name: "SmolLM2-135M greedy decode", value: smolSpeed.decode, unit: "tokens/s",
                    baselineName: torchLlama == nil ? "PyTorch 2.3.1 (REFERENCE.md figure, not this run)" : "PyTorch (bench_torch.py, this run)",
                    baseline: base, ratio: smolSpeed.decode / base,
                    note: "target ≥ 1.5×; weights read per token: " + decodeBytes(smol.model)))
    if let trainable = smol.model as? TrainableModel, ProcessInfo.processInfo.environment["NB_BENCH_MASKED"] != "0",
       let g = try? maskedGenerationSeconds(trainable) {
        let floatToken = 1 / smolSpeed.decode
        rows.append(Row(name: "encrypted generation SmolLM2 per token (masked protocol, all layers remote, KV cache, offline amortized)",
                        value: g.online + g.offlinePerRow, unit: "s", baselineName: "float greedy decode per token, this run", baseline: floatToken,
                        ratio: (g.online + g.offlinePerRow) / floatToken,
                        note: String(format: "target ≤ 0.1 s; online %.1f ms, offline %.1f ms per token (%d segments of %d rows filled in %.0f s); tokens %@ the clear 8-bit ones",
                                     g.online * 1000, g.offlinePerRow * 1000, g.segments, g.segmentRows, g.offlineSeconds, g.same ? "equal to" : "DIFFER from")))
    }
    if let trainable = smol.model as? TrainableModel, let g = try? hybridGenerationSeconds(trainable) {
        rows.append(Row(name: "SmolLM2-135M generation through 8-bit products + adapter (40-token prompt, 32 tokens)", value: 1 / g.cached,
                        unit: "tokens/s", baselineName: "re-running the sequence per token, this run", baseline: 1 / g.recomputed,
                        ratio: g.recomputed / g.cached, note: "KV cache through the backend (math_eval, generate in disable/execute/remote)"))
    }
} else {
    print("bench: SmolLM2 is not available (make setup downloads it); its rows are left out")
}

// 5. LoRA training steps (float), each in a child process so its peak RSS is its own.
rows += trainStepRows(selfURL: selfURL)

// 5b. Gradient checkpointing: the GPT-2-shape step at 4×128 recomputing each block's activations.
if let plain = rows.first(where: { $0.name.hasPrefix("GPT-2-shape training 4×128 peak RSS") }),
   let step = rows.first(where: { $0.name.hasPrefix("GPT-2-shape LoRA train step 4×128") }),
   let (code, out) = try? runProcess(selfURL, ["--train-step", "gpt2", "4", "--checkpointing"], in: URL(fileURLWithPath: ".")), code == 0 {
    let f = out.split(separator: " ").compactMap { Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    rows.append(Row(name: "GPT-2-shape training 4×128 peak RSS, gradient checkpointing", value: f[1], unit: "MB",
                    baselineName: "without checkpointing, this run", baseline: plain.value, ratio: f[1] / plain.value,
                    note: String(format: "target ≤ 700 MB; step %.2f s (%.2f× the step without)", f[0], f[0] / step.value)))
}

// 6. The same GPT-2-shape step in `disable` mode (8-bit DTok-SC integers for every frozen layer), against float in this run.
if let float = rows.first(where: { $0.name.hasPrefix("GPT-2-shape LoRA train step 1×128") })?.value,
   let (code, out) = try? runProcess(selfURL, ["--train-step", "gpt2", "1", "--disable"], in: URL(fileURLWithPath: ".")), code == 0 {
    let f = out.split(separator: " ").compactMap { Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    rows.append(Row(name: "GPT-2-shape LoRA train step 1×128, disable mode (8-bit DTok-SC)", value: f[0], unit: "s",
                    baselineName: "float (mode torch), this run", baseline: float, ratio: f[0] / float,
                    note: String(format: "peak RSS %.0f MB; Concrete ML's disable mode: 1.53 s (REFERENCE.md)", f[1])))
}

// 7. The encrypted product alone: (4096 tokens × 768)·(768 × 2304), 8-bit, against the float sgemm of that shape.
if let (code, out) = try? runProcess(selfURL, ["--fhe-product", "4096", "768", "2304"], in: URL(fileURLWithPath: ".")), code == 0 {
    let parts = out.split(separator: " ", maxSplits: 8).map(String.init)
    let f = parts.prefix(8).compactMap { Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    let planText = parts.count > 8 ? parts[8].trimmingCharacters(in: .whitespacesAndNewlines) : ""
    let (sgemm, enc, server, dec) = (f[0], f[1], f[2], f[3])
    rows.append(Row(name: "encrypted product, server, (4096×768)·(768×2304) 8-bit", value: server, unit: "s",
                    baselineName: "float sgemm of the same shape, this run", baseline: sgemm, ratio: server / sgemm,
                    note: "target ≤ 8×; \(planText)"))
    rows.append(Row(name: "encrypted product, client encrypt + decrypt", value: enc + dec, unit: "s",
                    baselineName: "float sgemm of the same shape, this run", baseline: sgemm, ratio: (enc + dec) / sgemm,
                    note: String(format: "target ≤ 2×; encrypt %.3f s, decrypt %.3f s", enc, dec)))
    rows.append(Row(name: "encrypted product, bytes per input value", value: f[4], unit: "B", note: "target ≤ 6 B"))
    rows.append(Row(name: "encrypted product, bytes per output value", value: f[5], unit: "B", note: "target ≤ 10 B"))
    rows.append(Row(name: "encrypted product, values checked against dgemm", value: f[6], unit: "values",
                    note: String(format: "%.0f mismatches", f[7])))
}

// 8. GPT-2-shape training step with 4096 tokens (32×128) in `execute` mode, against float on the same batch.
if ProcessInfo.processInfo.environment["NB_BENCH_EXECUTE"] != "0",
   let (c1, floatOut) = try? runProcess(selfURL, ["--train-step", "gpt2", "32"], in: URL(fileURLWithPath: ".")), c1 == 0,
   let (c2, execOut) = try? runProcess(selfURL, ["--train-step", "gpt2", "32", "--execute"], in: URL(fileURLWithPath: ".")), c2 == 0 {
    let fl = floatOut.split(separator: " ").compactMap { Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    let ex = execOut.split(separator: " ").compactMap { Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    rows.append(Row(name: "GPT-2-shape LoRA train step 32×128 (4096 tokens), execute mode (encrypted, 8-bit DTok-SC)", value: ex[0], unit: "s",
                    baselineName: "float (mode torch) on the same batch, this run", baseline: fl[0], ratio: ex[0] / fl[0],
                    note: String(format: "target ≤ 10×; per step: encrypt %.1f s, server %.1f s, decrypt %.1f s, sent %.0f MB, received %.0f MB; peak RSS %.0f MB",
                                 ex[3], ex[4], ex[5], ex[6] / 1e6, ex[7] / 1e6, ex[1])))
    // Concrete ML's own figure: GPT-2 inference ≈ 300 s per token on CPU (REFERENCE.md).
    let perToken = ex[0] / 4096
    rows.append(Row(name: "execute training step, seconds per token (forward + backward)", value: perToken, unit: "s",
                    baselineName: "Concrete ML GPT-2 inference per token (its figure)", baseline: 300, ratio: perToken / 300))
}

// 8b. The masked protocol (offline pads in full rings, online products that follow the tokens), GPT-2 shape, every
// linear layer remote: online against `disable` on the same batch, online + amortized offline against float.
if ProcessInfo.processInfo.environment["NB_BENCH_MASKED"] != "0" {
    func numbers(_ out: String) -> [Double] { out.split(separator: " ").compactMap { Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) } }
    for batch in [1, 4] {
        let steps = batch == 1 ? [] : ["--steps", "5"]
        guard let float = rows.first(where: { $0.name.hasPrefix("GPT-2-shape LoRA train step \(batch)×128") })?.value,
              let (c1, disableOut) = try? runProcess(selfURL, ["--train-step", "gpt2", "\(batch)", "--disable"] + steps, in: URL(fileURLWithPath: ".")), c1 == 0,
              let (c2, maskedOut) = try? runProcess(selfURL, ["--train-step", "gpt2", "\(batch)", "--masked"] + steps, in: URL(fileURLWithPath: ".")), c2 == 0
        else { print("bench: the masked \(batch)×128 step did not run; its rows are left out"); continue }
        let d = numbers(disableOut), m = numbers(maskedOut)
        let sameLosses = disableOut.components(separatedBy: "losses:").last == maskedOut.components(separatedBy: "losses:").last
        let online = m[0], offline = m[3] * Double(batch * 128)
        rows.append(Row(name: "encrypted step \(batch)×128 online (masked protocol, GPT-2 shape, every linear remote)", value: online, unit: "s",
                        baselineName: "disable mode (clear 8-bit integers), same batch, this run", baseline: d[0], ratio: online / d[0],
                        note: String(format: "target ≤ 1.5×; online client %.2f s, server %.2f s per step; %.2f B per input value, %.2f B per output value; losses %@ disable's",
                                     m[8], m[9], m[6], m[7], sameLosses ? "equal to" : "DIFFER from")))
        rows.append(Row(name: "encrypted step \(batch)×128 total (online + offline amortized at full rings)", value: online + offline, unit: "s",
                        baselineName: "float (mode torch), same batch, this run", baseline: float, ratio: (online + offline) / float,
                        note: String(format: "target ≤ 5×; offline %.2f ms per token (%.0f pad rows filled), %.2f s per step; one-time hints apart: %.0f s, %.0f MB (once per stream, kept in the mask store)",
                                     m[3] * 1000, m[10], offline, m[11], m[12])))
    }
    if let float = rows.first(where: { $0.name.hasPrefix("GPT-2-shape LoRA train step 1×128") })?.value,
       let (c, out) = try? runProcess(selfURL, ["--train-step", "gpt2", "1", "--execute", "--steps", "3"], in: URL(fileURLWithPath: ".")), c == 0 {
        let h = numbers(out)
        rows.append(Row(name: "encrypted step 1×128, he protocol (every call a full ring)", value: h[0], unit: "s",
                        baselineName: "float (mode torch), same batch, this run", baseline: float, ratio: h[0] / float,
                        note: String(format: "sent %.0f MB, received %.0f MB per step", h[6] / 1e6, h[7] / 1e6)))
    }
}

// 9. The deployment: a client holding only its folder, against `nb serve` on loopback.
if ProcessInfo.processInfo.environment["NB_BENCH_REMOTE"] != "0" {
    rows += deploymentRows(selfURL: selfURL)
}

// 10. The Llama-3.2-1B shape: load, float step and decode against PyTorch (remote RSS with NB_BENCH_LLAMA1B_REMOTE=1).
if ProcessInfo.processInfo.environment["NB_BENCH_LLAMA1B"] != "0" {
    rows += llama1BRows(selfURL: selfURL)
}

// 11. The server's soak: the largest requests its memory budget allows, and adversarial ones.
if ProcessInfo.processInfo.environment["NB_BENCH_SOAK"] != "0" {
    rows += soakRows(selfURL: selfURL)
}

// Table and files.
func fmt(_ x: Double?) -> String {
    x.map { $0 >= 100 ? String(format: "%.0f", $0) : $0 < 0.1 && $0 > 0 ? String(format: "%.3g", $0) : String(format: "%.2f", $0) } ?? "–"
}
var md = "# nb benchmarks\n\n\(MachineInfo.current().summary)  \nBLAS: \(BLAS.summary)  \n\(ISO8601DateFormatter().string(from: Date()))\n\n"
md += "| benchmark | value | unit | baseline | baseline value | ratio | note |\n|---|---:|---|---|---:|---:|---|\n"
for r in rows {
    md += "| \(r.name) | \(fmt(r.value)) | \(r.unit) | \(r.baselineName ?? "") | \(fmt(r.baseline)) | \(r.ratio.map { String(format: $0 < 0.01 ? "%.1e×" : "%.2f×", $0) } ?? "–") | \(r.note ?? "") |\n"
}
print(md)
try FileManager.default.createDirectory(at: outputDir, withIntermediateDirectories: true)
try md.write(to: outputDir.appendingPathComponent("bench.md"), atomically: true, encoding: .utf8)
let encoder = JSONEncoder()
encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
try encoder.encode(rows).write(to: outputDir.appendingPathComponent("bench.json"))
print("wrote outputs/bench.md and outputs/bench.json")
