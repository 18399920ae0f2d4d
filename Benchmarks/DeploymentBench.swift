// The deployment's benchmarks: a client that holds only its folder (memory, time per step
// against `execute`), and many clients against `nb serve` (throughput, latency).
import Engine
import FHE
import Foundation

/// The model, adapter targets and tokenizer of a benchmark deployment: `gpt2` is GPT-2
/// small's shape with random weights (its weights are not on this machine), `smollm2` the
/// real SmolLM2-135M. The adapter is the one `--train-step` trains, so the losses compare.
func benchModel(_ which: String) throws -> (TrainableModel, LoRATargets, BPETokenizer, ChatTemplate?) {
    if which == "gpt2" {
        let dir = ModelCache.directory.appendingPathComponent("models/gpt2-tokenizer")
        let tokenizer = try BPETokenizer.gpt2(encoderJSON: dir.appendingPathComponent("encoder.json"), vocabBPE: dir.appendingPathComponent("vocab.bpe"))
        return (GPT2Model.random(config: GPT2Config(), seed: 1), .modules(["c_attn"]), tokenizer, nil)
    }
    if which == "llama1b" {  // random weights; GPT-2's tokenizer stands in for the deployment's vocabulary files
        let dir = ModelCache.directory.appendingPathComponent("models/gpt2-tokenizer")
        let tokenizer = try BPETokenizer.gpt2(encoderJSON: dir.appendingPathComponent("encoder.json"), vocabBPE: dir.appendingPathComponent("vocab.bpe"))
        return (LlamaModel.random(config: llama1BConfig(), seed: 1), .allLinear, tokenizer, nil)
    }
    let loaded = try LoadedModel.load(try ModelCatalog.locate("smollm2-135m-instruct"))
    return (loaded.model as! TrainableModel, .allLinear, loaded.tokenizer, loaded.chatTemplate)
}

/// `rows` × `length` random tokens: the batches `--train-step` and `--remote-client` train on.
func benchData(rows: Int, length: Int, vocabulary: Int) -> CausalLMData {
    var rng = SeededGenerator(seed: 7)
    let examples = (0..<(13 * rows)).map { n -> TokenizedExample in
        let ids = (0..<length).map { _ in Int(rng.next() % UInt64(vocabulary)) }
        return TokenizedExample(tokens: ids, labels: ids, line: n + 1)
    }
    return CausalLMData(examples: examples, options: CausalLMDataOptions(maxLength: length), paddingTokenID: 0)
}

func jsonLine(_ object: [String: Any]) -> String {
    String(decoding: try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self)
}

/// The child modes; true when one ran.
func deploymentChildModes() throws -> Bool {
    let args = CommandLine.arguments
    // --make-deployment gpt2|smollm2 DIR: every linear layer remote, DTok-SC 8-bit.
    if let i = args.firstIndex(of: "--make-deployment") {
        let t = now()
        let (model, targets, tokenizer, template) = try benchModel(args[i + 1])
        let adapter = try LoRAAdapter(config: LoRAConfig(rank: 8, alpha: 32, dropout: 0.1, targets: targets, seed: 1), modules: model.linearModules)
        let plan = HybridPlan(scheme: QuantizationScheme(named: "DTok-SC", nBits: 8)!, remoteModules: model.linearModules.map(\.name))
        let keyring = Keyring()
        _ = keyring.serialized(all: true)
        let summary = try Deployment.save(to: URL(fileURLWithPath: args[i + 2]), name: args[i + 1], modelName: args[i + 1], model: model,
                                          tokenizer: tokenizer, chatTemplate: template, plan: plan, adapter: adapter, keyring: keyring)
        print(jsonLine(["seconds": now() - t, "peak": peakRSSMB(), "modelParameters": model.parameterCount,
                        "serverParameters": summary.serverParameters, "clientParameters": summary.clientParameters]))
        return true
    }
    // --remote-client DIR URL ROWS LENGTH STEPS [--masked] [--pieces N] [--checkpointing]: trains on the client
    // folder alone (token: NB_BENCH_TOKEN); --pieces sets the masked protocol's pieces per call.
    if let i = args.firstIndex(of: "--remote-client") {
        let dir = URL(fileURLWithPath: args[i + 1]), url = URL(string: args[i + 2])!
        let (rows, length, steps) = (Int(args[i + 3])!, Int(args[i + 4])!, Int(args[i + 5])!)
        let loaded = try LoadedModel.load(try ModelCatalog.locate(dir.path))
        let manifest = loaded.clientDeployment!
        let model = loaded.model as! TrainableModel
        let client = dir.appendingPathComponent("client")
        let adapter = try PEFTAdapter.load(from: client.appendingPathComponent("adapter"), modules: model.linearModules, seed: manifest.adapterSeed)
        let transport = HTTPTransport(baseURL: url, token: ProcessInfo.processInfo.environment["NB_BENCH_TOKEN"])
        if let p = args.firstIndex(of: "--pieces"), p + 1 < args.count, let n = Int(args[p + 1]) { transport.maskedPieces = n }
        let served = try transport.modules()
        guard served.deploymentID == manifest.deploymentID else { throw RemoteServerError.wrongDeployment(url: url.absoluteString, expected: manifest.deploymentID, found: served.deploymentID) }
        let masked = args.contains("--masked")
        let maskDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("nb-bench-remote-masks-\(getpid())")
        defer { try? FileManager.default.removeItem(at: maskDirectory) }
        let backend = try EncryptedLinearBackend(plan: manifest.plan, metadata: manifest.modules,
                                                 client: FHEClient(keyring: try Keyring.load(from: client.appendingPathComponent("secret.key"))), transport: transport,
                                                 protocol: masked ? .masked : .he, maskStore: masked ? try MaskStore(directory: maskDirectory) : nil)
        if masked { try backend.prefillMasks(rows: steps * rows * length) }
        let offline = backend.statistics, offlinePeak = peakRSSMB()
        let run = try LoRATrainingRun(model: model, adapter: adapter, data: benchData(rows: rows, length: length, vocabulary: loaded.model.vocabularySize),
                                      settings: TrainingSettings(epochs: 1, batchSize: rows, learningRate: 2e-3, shuffle: false,
                                                                 gradientCheckpointing: args.contains("--checkpointing")))
        run.backend = backend
        var times: [Double] = [], losses: [Double] = []
        for k in 0..<steps {
            let t = now()
            let record = try run.step()
            if let failure = backend.failure { throw failure }
            if k > 0 { times.append(now() - t) }
            losses.append(Double(record.loss))
        }
        let s = backend.statistics.since(offline), n = Double(steps)
        print(jsonLine(["step": median(times), "peak": peakRSSMB(), "offlinePeak": offlinePeak, "losses": losses, "encrypt": s.encryptSeconds / n, "server": s.serverSeconds / n,
                        "onlineSent": Double(s.onlineBytesSent) / n, "onlineReceived": Double(s.onlineBytesReceived) / n,
                        "onlineBytesPerInput": Double(s.onlineBytesSent) / Double(max(s.inputValues, 1)),
                        "onlineBytesPerOutput": Double(s.onlineBytesReceived) / Double(max(s.outputValues, 1)),
                        "decrypt": s.decryptSeconds / n, "sent": Double(s.bytesSent) / n, "received": Double(s.bytesReceived) / n,
                        "retries": transport.retries, "clientParameters": loaded.model.parameterCount]))
        return true
    }
    // --load-test DIR URL CLIENTS SECONDS ROWS: CLIENTS threads, each sending the products of
    // training steps (every module, forward and backward, ROWS rows) for SECONDS.
    if let i = args.firstIndex(of: "--load-test") {
        let dir = URL(fileURLWithPath: args[i + 1]), url = URL(string: args[i + 2])!
        let (clients, seconds, rows) = (Int(args[i + 3])!, Double(args[i + 4])!, Int(args[i + 5])!)
        FHEThreads.count = 1  // one core's worth of client work per thread; the server has its own
        let client = dir.appendingPathComponent("client")
        let manifest = try ClientManifest.load(from: client)
        final class Tally: @unchecked Sendable {
            let lock = NSLock()
            var latencies: [Double] = [], errors: [String] = [], sent = 0, received = 0, steps = 0
            func with(_ body: (Tally) -> Void) { lock.withLock { body(self) } }
        }
        let tally = Tally()
        let started = now(), deadline = started + seconds
        let group = DispatchGroup()
        for c in 0..<clients {
            group.enter()
            Thread {
                defer { group.leave() }
                let keyring = try! Keyring.load(from: client.appendingPathComponent("secret.key"))
                let fhe = FHEClient(keyring: keyring)
                let transport = HTTPTransport(baseURL: url, token: ProcessInfo.processInfo.environment["NB_BENCH_TOKEN"],
                                              settings: RemoteSettings(timeout: 300, attempts: 1))
                var rng = SeededGenerator(seed: UInt64(100 + c))
                while now() < deadline {
                    for m in manifest.modules {
                        for direction in [ProductDirection.forward, .backward] {
                            let w = m.weights(direction)
                            let x = (0..<(rows * w.inputs)).map { _ in Int64(rng.next() % 256) }
                            do {
                                let plan = try CallPlan.choose(for: ProductShape(rows: rows, innerDimension: w.inputs, maxAbsInput: 255,
                                                                                 maxRowL1: w.maxRowL1, maxRowL2: w.maxRowL2))
                                let request = fhe.encrypt(x, rows: rows, features: w.inputs, plan: plan).serialized()
                                let t = now()
                                let response = try transport.multiply(module: m.name, direction: direction, request: request,
                                                                                      responseBytes: EncryptedProduct.byteCount(plan: plan, rows: rows, outputs: w.outputs))
                                let latency = now() - t
                                let product = try EncryptedProduct(serialized: response)
                                guard product.rows == rows, product.outputs == w.outputs else { throw RemoteServerError.badResponse(url: url.absoluteString, reason: "shape") }
                                _ = fhe.decrypt(product, plan: plan)
                                tally.with { $0.latencies.append(latency); $0.sent += request.count; $0.received += response.count }
                            } catch {
                                tally.with { $0.errors.append("\(error)") }
                            }
                        }
                    }
                    tally.with { $0.steps += 1 }
                }
            }.start()
        }
        group.wait()
        let elapsed = now() - started
        let (latencies, errors, sent, received, steps) = (tally.latencies, tally.errors, tally.sent, tally.received, tally.steps)
        let sorted = latencies.sorted()
        func pct(_ p: Double) -> Double { sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))] }
        print(jsonLine(["clients": clients, "seconds": elapsed, "requests": latencies.count, "errors": errors.count,
                        "firstError": errors.first ?? "", "steps": steps, "requestsPerSecond": Double(latencies.count) / elapsed,
                        "sentMBps": Double(sent) / elapsed / 1e6, "receivedMBps": Double(received) / elapsed / 1e6,
                        "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": sorted.last ?? 0, "modules": manifest.modules.count]))
        return true
    }
    return false
}

/// A running `nb serve` for the benchmarks.
final class BenchServer {
    let process: Process
    let url: String
    init(nb: URL, directory: URL, arguments: [String] = [], log: URL? = nil) throws {
        process = Process()
        process.executableURL = nb
        process.arguments = ["serve", directory.path, "--port", "0"] + arguments
        let out = Pipe()
        process.standardOutput = out
        process.standardError = log.flatMap { FileManager.default.createFile(atPath: $0.path, contents: nil) ? try? FileHandle(forWritingTo: $0) : nil } ?? FileHandle.nullDevice
        try process.run()
        var line = Data()
        while !line.contains(UInt8(ascii: "\n")) {
            let chunk = out.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            line.append(chunk)
        }
        let text = String(decoding: line, as: UTF8.self)
        guard let r = text.range(of: "http://") else { throw RemoteServerError.badResponse(url: "nb serve", reason: "no listening line: \(text)") }
        url = String(text[r.lowerBound...]).trimmingCharacters(in: .whitespacesAndNewlines)
    }
    func stop() { process.terminate(); process.waitUntilExit() }
}

func parseJSON(_ text: String) -> [String: Any]? {
    guard let line = text.split(separator: "\n").last(where: { $0.hasPrefix("{") }) else { return nil }
    return try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
}

/// Rows: for GPT-2's shape and SmolLM2, a deployment with every linear layer remote; the
/// client's peak memory in `remote` mode against the whole model's Float32 weights, and its
/// step time against `execute` on the same batch (whose losses must be the same).
func deploymentRows(selfURL: URL) -> [Row] {
    var rows: [Row] = []
    let nb = selfURL.deletingLastPathComponent().appendingPathComponent("nb")
    let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("nb-bench-deploy-\(getpid())")
    defer { try? FileManager.default.removeItem(at: scratch) }
    // 1×128, the shape of PyTorch's memory figure in REFERENCE.md (≈ 1.5 GB for the whole GPT-2).
    let (batch, length, steps) = (1, 128, 3)
    for which in ["gpt2", "smollm2"] {
        let label = which == "gpt2" ? "GPT-2-shape" : "SmolLM2-135M"
        let dir = scratch.appendingPathComponent(which)
        guard let (c0, made) = try? runProcess(selfURL, ["--make-deployment", which, dir.path], in: URL(fileURLWithPath: ".")), c0 == 0,
              let m = parseJSON(made), let server = try? BenchServer(nb: nb, directory: dir) else { continue }
        defer { server.stop() }
        guard let (c1, out) = try? runProcess(selfURL, ["--remote-client", dir.path, server.url, "\(batch)", "\(length)", "\(steps)"], in: URL(fileURLWithPath: ".")),
              c1 == 0, let r = parseJSON(out) else { continue }
        let floatMB = Double(m["modelParameters"] as! Int) * 4 / 1_048_576
        let peak = r["peak"] as! Double
        rows.append(Row(name: "\(label) client peak RSS, remote mode, training \(batch)×\(length), every linear layer on the server", value: peak, unit: "MB",
                        baselineName: "the whole model's Float32 weights", baseline: floatMB, ratio: peak / floatMB,
                        note: String(format: "target ≤ %@ MB; the client holds %d of %d parameters", which == "gpt2" ? "500" : "400",
                                     r["clientParameters"] as! Int, m["modelParameters"] as! Int)))
        if which == "smollm2",
           let (cc, co) = try? runProcess(selfURL, ["--remote-client", dir.path, server.url, "\(batch)", "\(length)", "2", "--checkpointing"], in: URL(fileURLWithPath: ".")),
           cc == 0, let c = parseJSON(co) {
            let checkpointed = c["peak"] as! Double
            rows.append(Row(name: "\(label) client peak RSS, remote mode, training \(batch)×\(length), gradient checkpointing", value: checkpointed, unit: "MB",
                            baselineName: "without checkpointing, this run", baseline: peak, ratio: checkpointed / peak,
                            note: String(format: "target ≤ 400 MB; step %.1f s against %.1f s without (the recomputed forward's products are remote too)",
                                         c["step"] as! Double, r["step"] as! Double)))
        }
        guard let (c2, ex) = try? runProcess(selfURL, ["--train-step", which, "\(batch)", "--length", "\(length)", "--steps", "\(steps)", "--execute"],
                                             in: URL(fileURLWithPath: ".")), c2 == 0 else { continue }
        let e = ex.split(separator: " ").compactMap { Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        let remoteLosses = (r["losses"] as? [Double]) ?? []
        let executeLosses = ex.components(separatedBy: "losses:").last?.split(separator: ",").compactMap { Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) } ?? []
        let same = !remoteLosses.isEmpty && remoteLosses.map { Float($0) } == executeLosses.map { Float($0) }
        let step = r["step"] as! Double
        rows.append(Row(name: "\(label) LoRA train step \(batch)×\(length), remote mode (nb serve on loopback)", value: step, unit: "s",
                        baselineName: "execute mode (in-process server), same batch, this run", baseline: e[0], ratio: step / e[0],
                        note: String(format: "per step: encrypt %.2f s, server + network %.2f s, decrypt %.2f s, sent %.1f MB, received %.1f MB; losses %@ execute's",
                                     r["encrypt"] as! Double, r["server"] as! Double, r["decrypt"] as! Double, (r["sent"] as! Double) / 1e6,
                                     (r["received"] as! Double) / 1e6, same ? "equal to" : "DIFFER from")))
        // The masked protocol's online step over HTTP against the same in-process (offline filled
        // ahead in both): 6 steps (5 timed) per run, remote and execute alternating for 3 rounds,
        // the ratio the median of the rounds' ratios (one step is 96 requests of a few
        // milliseconds, and this machine's speed drifts by ±15 % over minutes).
        guard which == "gpt2" else { continue }
        let maskedSteps = "6"
        var q: [String: Any] = [:], pairs: [(remote: Double, execute: Double)] = []
        for _ in 0..<3 {
            guard let (c3, rm) = try? runProcess(selfURL, ["--remote-client", dir.path, server.url, "\(batch)", "\(length)", maskedSteps, "--masked"], in: URL(fileURLWithPath: ".")),
                  c3 == 0, let round = parseJSON(rm),
                  let (c4, em) = try? runProcess(selfURL, ["--train-step", which, "\(batch)", "--length", "\(length)", "--steps", maskedSteps, "--masked"],
                                                 in: URL(fileURLWithPath: ".")), c4 == 0,
                  let executeOnline = em.split(separator: " ").compactMap({ Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) }).first
            else { break }
            q = round
            pairs.append((round["step"] as! Double, executeOnline))
        }
        guard !pairs.isEmpty else { continue }
        let remoteOnline = median(pairs.map(\.remote)), executeOnline = median(pairs.map(\.execute))
        let ratio = median(pairs.map { $0.remote / $0.execute })
        let maskedLosses = (q["losses"] as? [Double]) ?? []
        let roundsText = pairs.map { String(format: "%.3f/%.3f s", $0.remote, $0.execute) }.joined(separator: ", ")
        rows.append(Row(name: "remote step \(batch)×\(length) online (masked protocol, \(label), nb serve on loopback)", value: remoteOnline, unit: "s",
                        baselineName: "execute online (in-process server), same batch, this run; medians of \(pairs.count) alternating rounds", baseline: executeOnline, ratio: ratio,
                        note: "ratio: the median of the rounds' ratios (remote/execute: \(roundsText)); " + String(format: "target ≤ 1.2×; client peak RSS %.0f MB (offline fill included); online per step sent %.2f MB, received %.2f MB (%.2f B per input value, %.2f B per output value, target ≤ 4); losses %@ he's",
                                     q["peak"] as! Double, (q["onlineSent"] as! Double) / 1e6, (q["onlineReceived"] as! Double) / 1e6, q["onlineBytesPerInput"] as! Double,
                                     q["onlineBytesPerOutput"] as! Double, !remoteLosses.isEmpty && maskedLosses.prefix(remoteLosses.count).map { Float($0) } == remoteLosses.map { Float($0) } ? "equal to" : "DIFFER from")))
    }
    return rows
}
