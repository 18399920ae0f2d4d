// The server's soak: clients sending the largest requests its memory budget allows, with
// adversarial requests mixed in, while its resident memory is sampled.
import Engine
import FHE
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// One raw HTTP exchange on loopback (the adversarial requests): the status, or nil when the
/// server closed or timed out without one.
func rawExchange(port: Int, _ bytes: [UInt8], timeout: Int = 10) -> Int? {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let connected = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    guard connected == 0 else { return nil }
    var t = timeval(tv_sec: timeout, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &t, socklen_t(MemoryLayout<timeval>.size))
    var offset = 0
    while offset < bytes.count {
        let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL)) }
        if n <= 0 { break }
        offset += n
    }
    var reply = [UInt8](repeating: 0, count: 4096)
    let n = reply.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
    guard n >= 12, let text = String(bytes: reply[0..<n], encoding: .utf8), text.hasPrefix("HTTP/1.1 ") else { return nil }
    return Int(text.dropFirst(9).prefix(3))
}

func request(_ path: String, headers: [String: String] = [:], body: [UInt8]) -> [UInt8] {
    var head = "POST \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    var headers = headers
    if headers["Content-Length"] == nil && headers["Transfer-Encoding"] == nil { headers["Content-Length"] = String(body.count) }
    for (k, v) in headers.sorted(by: { $0.key < $1.key }) { head += "\(k): \(v)\r\n" }
    return Array((head + "\r\n").utf8) + body
}

/// Child mode `--soak DIR URL SECONDS BUDGET`: 4 clients send, for SECONDS, the largest `he`
/// requests whose bound fits BUDGET bytes (the widest module, both directions), and one thread
/// sends 1,000 adversarial requests; prints the counts as JSON.
func soakChildMode() throws -> Bool {
    let args = CommandLine.arguments
    guard let i = args.firstIndex(of: "--soak") else { return false }
    let dir = URL(fileURLWithPath: args[i + 1]), url = URL(string: args[i + 2])!
    let (seconds, budget) = (Double(args[i + 3])!, Int(args[i + 4])!)
    let port = url.port!
    FHEThreads.count = 1
    let client = dir.appendingPathComponent("client")
    let manifest = try ClientManifest.load(from: client)
    let keyring = try Keyring.load(from: client.appendingPathComponent("secret.key"))
    let widest = manifest.modules.max { $0.forward.inputs * $0.forward.outputs < $1.forward.inputs * $1.forward.outputs }!
    @Sendable func plan(_ w: WeightMetadata, rows: Int) throws -> CallPlan {
        try CallPlan.choose(for: ProductShape(rows: rows, innerDimension: w.inputs, maxAbsInput: 255, maxRowL1: w.maxRowL1, maxRowL2: w.maxRowL2))
    }
    func bound(_ w: WeightMetadata, rows: Int) throws -> Int {
        let p = try plan(w, rows: rows)
        let shape = EncryptedMatrix(parametersID: p.parameters.id, bodyBits: p.bodyBits, maskLimbs: p.maskLimbs, outputBodyBits: p.outputBodyBits,
                                    outputMaskBits: p.outputMaskBits, rows: rows, features: w.inputs, seed: .fresh(), body: []).shape
        return FHEServer.peakBytes(shape, outputs: w.outputs)
    }
    // The largest rows (in steps of 512) whose bound fits the budget, per direction.
    var largest: [ProductDirection: Int] = [:]
    for d in [ProductDirection.forward, .backward] {
        var rows = 512
        while try bound(widest.weights(d), rows: rows + 512) <= budget { rows += 512 }
        largest[d] = rows
    }
    let rowsFor = largest
    final class Tally: @unchecked Sendable {
        let lock = NSLock()
        var ok = 0, failed: [String] = [], statuses: [Int: Int] = [:], noAnswer = 0, bytes = 0
        func with(_ body: (Tally) -> Void) { lock.withLock { body(self) } }
    }
    let tally = Tally()
    let deadline = now() + seconds
    let group = DispatchGroup()
    for c in 0..<4 {
        group.enter()
        Thread {
            defer { group.leave() }
            let fhe = FHEClient(keyring: keyring)
            let transport = HTTPTransport(baseURL: url, settings: RemoteSettings(timeout: 300, attempts: 30, backoff: 0.25, maxBackoff: 2))
            var rng = SeededGenerator(seed: UInt64(200 + c))
            var n = c
            while now() < deadline {
                let d: ProductDirection = n % 2 == 0 ? .forward : .backward
                n += 1
                let w = widest.weights(d), rows = rowsFor[d]!
                do {
                    let p = try plan(w, rows: rows)
                    let x = (0..<(rows * w.inputs)).map { _ in Int64(rng.next() % 256) }
                    let body = fhe.encrypt(x, rows: rows, features: w.inputs, plan: p).serialized()
                    let answer = try transport.multiply(module: widest.name, direction: d, request: body,
                                                        responseBytes: EncryptedProduct.byteCount(plan: p, rows: rows, outputs: w.outputs))
                    tally.with { $0.ok += 1; $0.bytes += answer.count }
                } catch {
                    tally.with { $0.failed.append("\(error)") }
                }
            }
        }.start()
    }
    // The adversarial thread: 1,000 requests of eight kinds, while the clients run.
    group.enter()
    Thread {
        defer { group.leave() }
        let fhe = FHEClient(keyring: keyring)
        let w = widest.weights(.forward)
        let path = "/v1/modules/\(widest.name)/forward"
        let valid = try! fhe.encrypt((0..<(4 * w.inputs)).map { Int64($0 % 255) }, rows: 4, features: w.inputs, plan: plan(w, rows: 4)).serialized()
        var rng = SeededGenerator(seed: 9)
        var amplified = valid
        amplified[10] = 4; amplified[11] = 64; amplified[12] = 64  // mask limbs, output bits: not the server's plan
        var huge = try! fhe.encrypt([Int64](repeating: 1, count: w.inputs), rows: 1, features: w.inputs, plan: plan(w, rows: 1)).serialized()
        withUnsafeBytes(of: UInt32(1 << 20).littleEndian) { huge.replaceSubrange(13..<17, with: $0) }  // 2^20 rows declared
        for k in 0..<1000 {
            let bytes: [UInt8]
            switch k % 8 {
            case 0: bytes = request(path, body: (0..<512).map { _ in UInt8(truncatingIfNeeded: rng.next()) })
            case 1: bytes = request(path, body: amplified)
            case 2: bytes = request(path, headers: ["Content-Length": String(1 << 40)], body: [])
            case 3: bytes = request(path, headers: ["Content-Length": "100000000"], body: Array(huge.prefix(EncryptedMatrix.Shape.byteCount)))
            case 4: bytes = request(path, headers: ["Content-Length": String(valid.count)], body: Array(valid.prefix(valid.count / 2)))
            case 5: bytes = request(path, headers: ["Transfer-Encoding": "chunked"], body: Array("10000\r\n".utf8) + [UInt8](repeating: 0x41, count: 65536) + Array("\r\n".utf8))
            case 6: bytes = request(path + "/masked", body: valid)
            default: bytes = Array("GET /v1/modules/\(String(repeating: "x", count: 5000)) HTTP/1.1\r\nHost: x\r\n\r\n".utf8)
            }
            let status = rawExchange(port: port, bytes, timeout: k % 8 == 4 ? 2 : 10)
            tally.with { if let status { $0.statuses[status, default: 0] += 1 } else { $0.noAnswer += 1 } }
        }
    }.start()
    group.wait()
    print(jsonLine(["ok": tally.ok, "failed": tally.failed.count, "firstFailure": tally.failed.first ?? "", "answerMB": Double(tally.bytes) / 1e6,
                    "statuses": Dictionary(uniqueKeysWithValues: tally.statuses.map { ("\($0.key)", $0.value) }), "noAnswer": tally.noAnswer,
                    "module": widest.name, "rowsForward": rowsFor[.forward]!, "rowsBackward": rowsFor[.backward]!]))
    return true
}

/// `/proc/PID/status` field in bytes (VmRSS, VmHWM), 0 if unreadable.
func procStatus(_ pid: Int32, _ field: String) -> Int {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
          let line = text.split(separator: "\n").first(where: { $0.hasPrefix(field + ":") }),
          let kib = Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]) else { return 0 }
    return kib * 1024
}

/// Row: `nb serve --max-memory-mb 1536` on the GPT-2-shape deployment, soaked for 60 s.
func soakRows(selfURL: URL, seconds: Double = 60, maxMemoryMB: Int = 1536) -> [Row] {
    let nb = selfURL.deletingLastPathComponent().appendingPathComponent("nb")
    let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("nb-bench-soak-\(getpid())")
    defer { try? FileManager.default.removeItem(at: scratch) }
    let dir = scratch.appendingPathComponent("gpt2"), log = scratch.appendingPathComponent("serve.log")
    guard let (c0, _) = try? runProcess(selfURL, ["--make-deployment", "gpt2", dir.path], in: URL(fileURLWithPath: ".")), c0 == 0,
          let server = try? BenchServer(nb: nb, directory: dir, arguments: ["--max-memory-mb", String(maxMemoryMB)], log: log) else { return [] }
    let pid = server.process.processIdentifier
    let start = (try? String(contentsOf: log, encoding: .utf8)).flatMap { parseJSON($0.split(separator: "\n").first.map(String.init) ?? "") }
    guard let budget = start?["request_memory_bytes"] as? Int, let port = URL(string: server.url)?.port else { server.stop(); return [] }
    let loaded = procStatus(pid, "VmRSS")
    final class Peak: @unchecked Sendable { var value = 0; var done = false; let lock = NSLock() }
    let peak = Peak()
    Thread {
        while !peak.lock.withLock({ peak.done }) {
            let rss = procStatus(pid, "VmRSS")
            peak.lock.withLock { peak.value = max(peak.value, rss) }
            usleep(50_000)
        }
    }.start()
    let child = try? runProcess(selfURL, ["--soak", dir.path, server.url, String(seconds), String(budget)], in: URL(fileURLWithPath: "."))
    peak.lock.withLock { peak.done = true }
    let highWater = procStatus(pid, "VmHWM")
    let alive = server.process.isRunning
    let health = rawExchange(port: port, Array("GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
    server.stop()
    guard let (code, out) = child, code == 0, let r = parseJSON(out) else { return [] }
    let limit = Double(maxMemoryMB << 20)
    let statuses = (r["statuses"] as? [String: Int]) ?? [:]
    return [Row(name: "nb serve soak, \(Int(seconds)) s: 4 clients sending the largest requests a \(maxMemoryMB) MiB budget allows, plus 1,000 adversarial requests",
                value: Double(highWater) / 1_048_576, unit: "MB",
                baselineName: "--max-memory-mb \(maxMemoryMB)", baseline: Double(maxMemoryMB), ratio: Double(highWater) / limit,
                note: String(format: "target ≤ 1.10; server %@ after, health %@, exit %d; loaded %.0f MB, request budget %.0f MB; %d products of %@ (%d / %d rows) answered (%.0f MB), %d failed; adversarial statuses %@, %d unanswered; sampled peak RSS %.0f MB",
                             alive ? "alive" : "DEAD", health == 200 ? "200" : "FAILED", server.process.terminationStatus, Double(loaded) / 1_048_576,
                             Double(budget) / 1_048_576, r["ok"] as? Int ?? 0, r["module"] as? String ?? "?", r["rowsForward"] as? Int ?? 0,
                             r["rowsBackward"] as? Int ?? 0, r["answerMB"] as? Double ?? 0, r["failed"] as? Int ?? 0,
                             statuses.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: ", "), r["noAnswer"] as? Int ?? 0,
                             Double(peak.value) / 1_048_576))]
}
