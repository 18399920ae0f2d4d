import Engine
import FHE
import Foundation
import Testing

/// The deployment end to end, as processes: one `nb` run saves the deployment and trains in
/// `execute`; `nb serve` serves the server folder (from elsewhere: the client never reads
/// it); a second `nb` run, holding only the client folder, trains in `remote` mode through a
/// recording proxy while the server is restarted mid-run — and ends with the very same adapter.
@Suite(.serialized) struct DeploymentNotebookTests {
    static let modules = "[model.layers.0.self_attn.q_proj, model.layers.0.self_attn.v_proj, model.layers.0.mlp.down_proj, model.layers.1.mlp.up_proj]"
    static let train = "epochs: 2\nbatch_size: 2\nlearning_rate: 2e-3\nwarmup_steps: 1\nmax_length: 32\npadding: longest\ncheckpoint_every: 1"

    static let full = """
        # Whole model

        ```nb load_model
        model: smollm2-135m-instruct
        ```

        ```nb load_data
        path: qa.txt
        format: qa
        name: train
        ```

        ```nb inject_lora id=lora
        r: 4
        alpha: 8
        dropout: 0.1
        target_modules: {gpt2: c_attn, llama: [q_proj, v_proj]}
        ```

        ```nb compile_hybrid id=hybrid
        scheme: DTok-SC
        n_bits: 8
        include: \(modules)
        calibration: {batches: 1, batch_size: 2, max_length: 32}
        ```

        ```nb save_deployment
        name: d
        path: deploy
        ```

        ```nb train id=train
        \(train)
        mode: execute
        ```

        ```nb save_adapter
        path: adapter_execute
        ```

        """

    static func client(server: String) -> String {
        """
        # Client only

        ```nb load_deployment
        path: deploy
        ```

        ```nb load_data
        path: qa.txt
        format: qa
        name: train
        ```

        ```nb train id=train
        \(train)
        mode: remote
        server: \(server)
        token_file: token
        ```

        ```nb save_adapter
        path: adapter_remote
        ```

        """
    }

    /// A running `nb serve`: its process, port and log file.
    final class Server {
        let process: Process
        let port: Int
        let log: URL
        init(directory: URL, port: Int, token: URL, log: URL) throws {
            process = Process()
            process.executableURL = try NbProcess.binary()
            process.arguments = ["serve", directory.path, "--port", String(port), "--token-file", token.path]
            FileManager.default.createFile(atPath: log.path, contents: nil)
            let out = Pipe()
            process.standardOutput = out
            process.standardError = try FileHandle(forWritingTo: log)
            try process.run()
            var line = Data()
            while !line.contains(UInt8(ascii: "\n")) {
                let chunk = out.fileHandleForReading.availableData
                if chunk.isEmpty { break }
                line.append(chunk)
            }
            let text = String(decoding: line, as: UTF8.self)
            let found = text.split(separator: ":").last.flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            self.port = try #require(found, "nb serve did not print its port: \(text)")
            self.log = log
        }

        /// Product requests logged so far.
        var products: Int { ((try? String(contentsOf: log, encoding: .utf8)) ?? "").components(separatedBy: "\"direction\"").count - 1 }

        func stop() -> Int32 {
            process.terminate()
            process.waitUntilExit()
            return process.terminationStatus
        }
    }

    @Test func remoteTrainingMatchesExecuteAcrossAServerRestart() throws {
        let w = try TrainingNotebookTests.workspace(Self.full)
        let full = try TrainingNotebookTests.run(w)
        #expect(full.code == 0, "\(full.stderr)")

        // The server side lives elsewhere; the client keeps only deploy/client.
        let serverSide = w.root.appendingPathComponent("serverside", isDirectory: true)
        try FileManager.default.createDirectory(at: serverSide, withIntermediateDirectories: true)
        try FileManager.default.moveItem(at: w.root.appendingPathComponent("deploy/server"), to: serverSide.appendingPathComponent("server"))
        let token = w.root.appendingPathComponent("token")
        try Data("t0k3n-\(UUID().uuidString)".utf8).write(to: token)
        chmod(token.path, 0o600)

        var server = try Server(directory: serverSide, port: 0, token: token, log: w.root.appendingPathComponent("serve1.log"))
        let port = server.port
        let proxy = try RecordingProxy(upstreamPort: port)
        defer { proxy.stop() }
        try w.write("client.md", Self.client(server: "http://127.0.0.1:\(proxy.port)"))

        // The client trains in the background; the server is restarted once it has answered
        // a few products (the client retries with backoff and loses nothing).
        let finished = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var client: NbProcess.Output?
        nonisolated(unsafe) var clientError: Error?
        let root = w.root
        Thread {
            do { client = try NbProcess.run(["client.md"], in: root, environment: TrainingNotebookTests.environment) } catch { clientError = error }
            finished.signal()
        }.start()
        let deadline = Date().addingTimeInterval(120)
        while server.products < 10 && Date() < deadline { usleep(50_000) }
        #expect(server.products >= 10, "the client did not reach the server")
        #expect(server.stop() == 0, "SIGTERM: a graceful exit")
        usleep(700_000)
        server = try Server(directory: serverSide, port: port, token: token, log: w.root.appendingPathComponent("serve2.log"))
        finished.wait()
        _ = server.stop()
        #expect(clientError == nil)
        let result = try #require(client)
        #expect(result.code == 0, "\(result.stderr)")

        // The very same training: identical adapter files, and every step ran exactly once.
        let execute = try Data(contentsOf: w.root.appendingPathComponent("adapter_execute/adapter_model.safetensors"))
        let remote = try Data(contentsOf: w.root.appendingPathComponent("adapter_remote/adapter_model.safetensors"))
        #expect(execute == remote)
        // The adapter names its base model by its Hugging Face id, as PEFT would.
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: w.root.appendingPathComponent("adapter_execute/adapter_config.json"))) as? [String: Any]
        #expect(config?["base_model_name_or_path"] as? String == "HuggingFaceTB/SmolLM2-135M-Instruct")
        let html = try w.read("outputs/client.html")
        #expect(html.contains("steps</span><span class=\"metric-value\">4 of 4"))
        #expect(!html.contains("0 requests retried"), "the restart should have cost at least one retry")
        #expect(server.products > 0, "the restarted server answered the rest")

        // The client never read the server folder (it is not there); its peak memory is
        // measured by `make bench` with every linear layer remote.
        #expect(result.stderr.contains("peak memory (resident): "))

        // Privacy: what the client sent holds no key, no token ids, no text of the data.
        let sent = proxy.recorded
        #expect(sent.count > 100_000)
        let key = try Keyring.load(from: w.root.appendingPathComponent("deploy/client/secret.key"))
        for k in key.allKeys {
            let coefficients = Data(k.coefficients.map { UInt8(bitPattern: $0) })
            for start in stride(from: 0, to: coefficients.count - 32, by: 128) {
                #expect(sent.range(of: coefficients[start..<start + 32]) == nil, "a window of the secret key was sent")
            }
        }
        let examples = try String(contentsOf: w.root.appendingPathComponent("qa.txt"), encoding: .utf8).split(separator: "\n")
        let tokenized = try NbProcess.run(["tokenize", "--model", "smollm2-135m-instruct", "--json", examples.joined(separator: "\n")], in: w.root,
                                          environment: TrainingNotebookTests.environment)
        let ids = try #require((try JSONSerialization.jsonObject(with: Data(tokenized.stdout.utf8)) as? [String: Any])?["ids"] as? [Int])
        #expect(ids.count > 20)
        for start in stride(from: 0, to: ids.count - 4, by: 2) {
            let window = Array(ids[start..<start + 4])
            for encoded in [window.flatMap { withUnsafeBytes(of: Int32($0).littleEndian, Array.init) },
                            window.flatMap { withUnsafeBytes(of: Int64($0).littleEndian, Array.init) },
                            window.flatMap { withUnsafeBytes(of: UInt16($0).littleEndian, Array.init) },
                            Array(window.map(String.init).joined(separator: ",").utf8),
                            Array(window.map(String.init).joined(separator: ", ").utf8)] {
                #expect(sent.range(of: Data(encoded)) == nil, "token ids \(window) were sent")
            }
        }
        for line in examples where line.count >= 8 {
            #expect(sent.range(of: Data(line.prefix(8).utf8)) == nil, "text of the data set was sent")
        }
        // No plaintext activation pattern: the request bodies (ciphertexts) look uniformly
        // random (quantized activations are small integers, floats have fixed exponent bytes).
        var bodies = Data(), online = Data()
        var starts: [Int] = []
        for marker in ["POST /v1/", "GET /v1/"] {
            var from = sent.startIndex
            while let r = sent.range(of: Data(marker.utf8), in: from..<sent.endIndex) { starts.append(r.lowerBound); from = r.upperBound }
        }
        starts.sort()
        var heads: [String] = []
        for (i, start) in starts.enumerated() {
            let next = i + 1 < starts.count ? starts[i + 1] : sent.endIndex
            guard let end = sent.range(of: Data("\r\n\r\n".utf8), in: start..<next) else { continue }
            let head = String(decoding: sent[start..<end.lowerBound], as: UTF8.self)
            heads.append(head)
            let length = head.components(separatedBy: "\r\n").first { $0.lowercased().hasPrefix("content-length:") }
                .flatMap { Int($0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) } ?? 0
            bodies.append(sent[end.upperBound..<min(end.upperBound + length, next)])
            if head.hasPrefix("POST ") && head.components(separatedBy: " ")[1].hasSuffix("/masked") {
                online.append(sent[end.upperBound..<min(end.upperBound + length, next)])
            }
        }
        #expect(bodies.count > 100_000)
        var counts = [Double](repeating: 0, count: 256)
        for b in bodies { counts[Int(b)] += 1 }
        let expected = Double(bodies.count) / 256
        let chiSquare = counts.reduce(0) { $0 + ($1 - expected) * ($1 - expected) / expected }
        // 255 degrees of freedom: mean 255, sd ≈ 22.6; the messages' few header bytes add little.
        #expect(chiSquare < 255 + 8 * 22.6, "byte histogram of the bodies: χ² = \(chiSquare) over \(bodies.count) bytes")
        // The masked protocol's online requests (x − r mod 2^k, one-time pads) were sent, and
        // they are uniform too: quantized activations (small integers, mostly below 2^8) would
        // pile up on a few byte values.
        #expect(online.count > 20_000, "online requests: \(online.count) bytes")
        var onlineCounts = [Double](repeating: 0, count: 256)
        for b in online { onlineCounts[Int(b)] += 1 }
        let onlineExpected = Double(online.count) / 256
        let onlineChi = onlineCounts.reduce(0) { $0 + ($1 - onlineExpected) * ($1 - onlineExpected) / onlineExpected }
        #expect(onlineChi < 255 + 8 * 22.6, "byte histogram of the online bodies: χ² = \(onlineChi) over \(online.count) bytes")
        // The HTTP heads carry only the route, the token and the framing.
        for head in heads {
            let line = head.components(separatedBy: "\r\n")[0]
            #expect(line.hasPrefix("POST /v1/modules/model.layers.") || line == "GET /v1/modules HTTP/1.1", "\(line)")
            let names = head.components(separatedBy: "\r\n").dropFirst().map { $0.split(separator: ":")[0].lowercased() }
            #expect(Set(names).isSubset(of: ["host", "accept", "accept-encoding", "content-type", "authorization", "connection", "user-agent",
                                             "accept-language", "content-length"]), "\(names)")
        }
    }

    /// A client of a server that is gone gets a clear error naming the server, and keeps its checkpoint.
    @Test func aServerThatIsGoneIsAClearError() throws {
        let w = try TrainingNotebookTests.workspace(Self.full.replacingOccurrences(of: "mode: execute", with: "mode: disable"))
        #expect(try TrainingNotebookTests.run(w).code == 0)
        try Data("x".utf8).write(to: w.root.appendingPathComponent("token"))
        chmod(w.root.appendingPathComponent("token").path, 0o600)
        // Nothing listens on this port (bound, then closed).
        let proxy = try RecordingProxy(upstreamPort: 9)
        let port = proxy.port
        proxy.stop()
        try w.write("client.md", Self.client(server: "http://127.0.0.1:\(port)"))
        let started = Date()
        let result = try TrainingNotebookTests.run(w, ["client.md"], extra: ["NB_REMOTE_ATTEMPTS": "3"])
        #expect(result.code == 1)
        #expect(result.stderr.contains("127.0.0.1:\(port)") && result.stderr.contains("did not answer after 3 attempts"), "\(result.stderr)")
        #expect(result.stderr.contains("server"), "the error names the key")
        #expect(Date().timeIntervalSince(started) < 60)
    }

    /// A checkpoint belongs to the computation, not to the server's URL: a run that crashed
    /// against one replica resumes against another; a run whose server is gone says that the
    /// checkpoint is kept, and the next run resumes from it.
    @Test func aCheckpointSurvivesAChangeOfServer() throws {
        let w = try TrainingNotebookTests.workspace(Self.full.replacingOccurrences(of: "mode: execute", with: "mode: disable"))
        #expect(try TrainingNotebookTests.run(w).code == 0)
        let token = w.root.appendingPathComponent("token")
        try Data("t0k3n-\(UUID().uuidString)".utf8).write(to: token)
        chmod(token.path, 0o600)
        let serverFolder = w.root.appendingPathComponent("deploy/server")

        // Replica A: the run dies after the checkpoint of step 2.
        let a = try Server(directory: serverFolder, port: 0, token: token, log: w.root.appendingPathComponent("a.log"))
        try w.write("client.md", Self.client(server: "http://127.0.0.1:\(a.port)"))
        let crashed = try TrainingNotebookTests.run(w, ["client.md"], extra: ["NB_TEST_KILL_AFTER_STEP": "2"])
        #expect(crashed.code != 0)
        _ = a.stop()

        // A server that is gone: the run fails and says the checkpoint is kept.
        let proxy = try RecordingProxy(upstreamPort: 9)
        let dead = proxy.port
        proxy.stop()
        try w.write("client.md", Self.client(server: "http://127.0.0.1:\(dead)"))
        let failed = try TrainingNotebookTests.run(w, ["client.md"], extra: ["NB_REMOTE_ATTEMPTS": "2"])
        #expect(failed.code == 1)
        #expect(failed.stderr.contains("checkpoint is kept at") && failed.stderr.contains("resumes from it"), "\(failed.stderr)")

        // Replica B, at another URL: the run resumes from step 2 and finishes.
        let b = try Server(directory: serverFolder, port: 0, token: token, log: w.root.appendingPathComponent("b.log"))
        defer { _ = b.stop() }
        #expect(b.port != a.port)
        try w.write("client.md", Self.client(server: "http://127.0.0.1:\(b.port)"))
        let resumed = try TrainingNotebookTests.run(w, ["client.md"])
        #expect(resumed.code == 0, "\(resumed.stderr)")
        let html = try w.read("outputs/client.html")
        #expect(html.contains("Resumed from the checkpoint at step 2 of 4"), "the run started over")
    }
}
