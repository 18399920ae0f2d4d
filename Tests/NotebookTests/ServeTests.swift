#if os(Linux)
import FHE
import Foundation
import Testing

@testable import Engine

/// `nb serve` as a process, spoken to over raw TCP: exact products, exact statuses for bad
/// input, closed connections for stalled or truncated ones, and the server still answering
/// after each; a soak of bad requests with a memory bound; a graceful SIGTERM.
@Suite(.serialized)
final class ServeTests {
    let root: URL
    let directory: URL
    let deployment: ServerDeployment
    let client = FHEClient(keyring: Keyring())
    var rng = SeededGenerator(seed: 7)

    /// A 1-layer GPT-2 (C = 32) deployed with every linear module remote: c_attn 32→96,
    /// attn.c_proj 32→32, c_fc 32→128, mlp.c_proj 128→32.
    init() throws {
        root = FileManager.default.temporaryDirectory.appendingPathComponent("nb-serve-\(UUID().uuidString)", isDirectory: true)
        directory = root.appendingPathComponent("deployment/tiny", isDirectory: true)
        try FileManager.default.createDirectory(at: directory.deletingLastPathComponent(), withIntermediateDirectories: true)
        let model = GPT2Model.random(config: GPT2Config(vocabSize: 256, nPositions: 32, nEmbd: 32, nLayer: 1, nHead: 2), seed: 1)
        let tokenizer = BPETokenizer(tokens: (0...255).map { ByteLevelAlphabet.spell([UInt8($0)]) }, merges: [], preTokenizer: .gpt2,
                                     specialTokens: [:], bosTokenID: nil, eosTokenID: nil, padTokenID: nil, addBOS: false)
        let plan = HybridPlan(scheme: QuantizationScheme(named: "DTok-SC", nBits: 8)!, remoteModules: model.linearModules.map(\.name))
        _ = try Deployment.save(to: directory, name: "tiny", modelName: "gpt2-tiny", model: model, tokenizer: tokenizer, chatTemplate: nil,
                                plan: plan, adapter: nil, keyring: Keyring())
        deployment = try ServerDeployment(path: directory)
    }

    deinit { try? FileManager.default.removeItem(at: root) }

    var attention: String { deployment.manifest.modules[0].name }

    // MARK: Valid requests

    /// An encrypted request for `module` and the integers its product must decrypt to.
    struct Product {
        var plan: CallPlan
        var body: [UInt8]
        var expected: [Int64]
    }

    func product(_ module: String, _ direction: ProductDirection, rows: Int = 5) throws -> Product {
        let metadata = try #require(deployment.manifest.modules.first { $0.name == module }).weights(direction)
        let weights = try #require(deployment.weights.modules[module])
        let w = direction == .forward ? weights.forward : weights.backward
        let k = metadata.inputs
        let x = (0..<(rows * k)).map { _ in Int64.random(in: -127...127, using: &rng) }
        let plan = try CallPlan.choose(for: ProductShape(rows: rows, innerDimension: k, maxAbsInput: 127,
                                                         maxRowL1: metadata.maxRowL1, maxRowL2: metadata.maxRowL2))
        var expected = [Int64](repeating: 0, count: rows * metadata.outputs)
        for r in 0..<rows {
            for o in 0..<metadata.outputs {
                expected[r * metadata.outputs + o] = (0..<k).reduce(0) { $0 + x[r * k + $1] * Int64(w.value(o, $1)) }
            }
        }
        return Product(plan: plan, body: client.encrypt(x, rows: rows, features: k, plan: plan).serialized(), expected: expected)
    }

    func path(_ module: String, _ direction: ProductDirection) -> String { "/v1/modules/\(module)/\(direction.rawValue)" }

    /// The modulus bits a client uses online for `module`: those of the products of 8-bit
    /// inputs, the widest the server admits.
    func maskedBits(_ module: String, _ direction: ProductDirection) -> Int {
        let metadata = deployment.manifest.modules.first { $0.name == module }!.weights(direction)
        return try! CallPlan.messageBits(for: ProductShape(rows: 1, innerDimension: metadata.inputs, maxAbsInput: 255,
                                                           maxRowL1: metadata.maxRowL1, maxRowL2: metadata.maxRowL2))
    }

    /// An online request of the masked protocol: its body, the pads and the inputs.
    func maskedRequest(_ module: String, _ direction: ProductDirection, rows: Int) -> (body: [UInt8], pads: [UInt64], x: [Int64]) {
        let metadata = deployment.manifest.modules.first { $0.name == module }!.weights(direction)
        let k = metadata.inputs, bits = maskedBits(module, direction)
        let x = (0..<(rows * k)).map { _ in Int64.random(in: -127...127, using: &rng) }
        var expander = PadExpander(seed: .fresh(), bits: bits)
        let pads = expander.pads(first: 0, count: rows, features: k)
        let body = x.withUnsafeBufferPointer { xs in pads.withUnsafeBufferPointer { MaskedProduct.blind(xs, pads: $0, rows: rows, features: k, bits: bits) } }
        return (body.serialized(), pads, x)
    }

    /// POSTs a valid product and checks it decrypts to X·Wᵀ (or G·W) exactly.
    func expectValidProduct(port: Int, token: String? = nil, module: String? = nil, direction: ProductDirection = .forward,
                            on connection: RawConnection? = nil) throws {
        let module = module ?? attention
        let p = try product(module, direction)
        var headers = ["Content-Type": "application/octet-stream"]
        if let token { headers["Authorization"] = "Bearer \(token)" }
        let response: RawResponse
        if let connection {
            #expect(connection.send(method: "POST", path: path(module, direction), headers: headers, body: p.body))
            response = try #require(connection.readResponse())
        } else {
            response = try RawConnection.exchange(port: port, "POST", path(module, direction), headers: headers, body: p.body)
        }
        try #require(response.status == 200, "\(module) \(direction): \(response.status) \(response.text)")
        #expect(response.headers["content-type"] == "application/octet-stream")
        let decrypted = client.decrypt(try EncryptedProduct(serialized: response.body), plan: p.plan)
        #expect(decrypted == p.expected, "\(module) \(direction): the product does not decrypt to the clear integer product")
    }

    @Test func productsDecryptToTheExactIntegerProducts() throws {
        let server = try ServeProcess(deployment: directory, ["--concurrency", "2"])
        let health = try RawConnection.exchange(port: server.port, "GET", "/v1/health")
        #expect(health.status == 200)
        #expect(health.headers["content-type"] == "application/json")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(health.body)) as? [String: Any])
        #expect(json["status"] as? String == "ok")
        #expect(json["deployment_id"] as? String == deployment.manifest.deploymentID)
        #expect(json["modules"] as? Int == 4)

        let modules = try RawConnection.exchange(port: server.port, "GET", "/v1/modules")
        #expect(modules.status == 200)
        #expect(modules.headers["content-type"] == "application/json")
        #expect(Data(modules.body) == deployment.modulesJSON)

        let head = try RawConnection.exchange(port: server.port, "HEAD", "/v1/health")
        #expect(head.status == 200)

        // Every module both ways, all on one keep-alive connection.
        let connection = try RawConnection(port: server.port)
        for m in deployment.manifest.modules {
            for direction in [ProductDirection.forward, .backward] {
                try expectValidProduct(port: server.port, module: m.name, direction: direction, on: connection)
            }
        }

        // The masked protocol's online route: x − r mod 2^k in, W·(x − r) mod 2^k out; adding
        // W·r (computed here in clear from the server's weights) gives W·x exactly.
        for m in deployment.manifest.modules {
            for direction in [ProductDirection.forward, .backward] {
                let (body, pads, x) = maskedRequest(m.name, direction, rows: 3)
                let response = try RawConnection.exchange(port: server.port, "POST", path(m.name, direction) + "/masked", body: body)
                try #require(response.status == 200, "\(m.name) \(direction) masked: \(response.status) \(response.text)")
                let w = direction == .forward ? deployment.weights.modules[m.name]!.forward : deployment.weights.modules[m.name]!.backward
                let bits = maskedBits(m.name, direction), mask: UInt64 = (1 << UInt64(bits)) - 1, shift = UInt64(64 - bits)
                let output = try MaskedOutput(serialized: response.body, expecting: (3, w.outputs, bits))
                func product(_ v: [UInt64]) -> [UInt64] {
                    (0..<(3 * w.outputs)).map { i in
                        let (r, o) = (i / w.outputs, i % w.outputs)
                        return (0..<w.inputs).reduce(UInt64(0)) { $0 &+ v[r * w.inputs + $1] &* UInt64(bitPattern: Int64(w.value(o, $1))) } & mask
                    }
                }
                let y = product(pads).withUnsafeBufferPointer { MaskedProduct.unblind(output, padProducts: $0) }
                #expect(y == product(x.map { UInt64(bitPattern: $0) }).map { Int64(bitPattern: $0 << shift) >> Int64(shift) }, "\(m.name) \(direction): masked product")
            }
        }

        // Eight at once on their own connections: two are computed at a time, the others wait.
        let module = deployment.manifest.modules[2].name
        let products = try (0..<8).map { _ in try product(module, .backward) }
        let connections = try products.map { p in
            let c = try RawConnection(port: server.port)
            c.send(method: "POST", path: path(module, .backward), body: p.body)
            return c
        }
        for (c, p) in zip(connections, products) {
            let response = try #require(c.readResponse())
            #expect(response.status == 200)
            #expect(client.decrypt(try EncryptedProduct(serialized: response.body), plan: p.plan) == p.expected)
        }
    }

    // MARK: Bad requests

    /// A request the server must refuse with `status`.
    struct BadRequest {
        var name: String
        var method = "POST"
        var path: String
        var headers: [String: String] = [:]
        var body: [UInt8] = []
        var status: Int
        /// What the one-line error must say (product routes).
        var says: String?
    }

    /// Bad requests of every kind; with `token`, every one but the 401 cases carries it.
    func badRequests(token: String? = nil, maxBodyBytes: Int = 512 << 20) throws -> [BadRequest] {
        let valid = try product(attention, .forward).body
        // A well-formed input with 128 features, for c_attn that takes 32.
        let wider = try #require(deployment.manifest.modules.first { $0.inFeatures != deployment.manifest.modules[0].inFeatures })
        let wrongShape = try product(wider.name, .forward).body
        func patched(_ at: Int, _ bytes: [UInt8]) -> [UInt8] {
            var b = valid
            b.replaceSubrange(at..<(at + bytes.count), with: bytes)
            return b
        }
        let forward = path(attention, .forward)
        let maskedValid = maskedRequest(attention, .forward, rows: 2).body
        let maskedWrongShape = maskedRequest(wider.name, .forward, rows: 2).body
        func maskedPatched(_ at: Int, _ bytes: [UInt8]) -> [UInt8] {
            var b = maskedValid
            b.replaceSubrange(at..<(at + bytes.count), with: bytes)
            return b
        }
        var garbage = [UInt8](repeating: 0, count: 300)
        for i in garbage.indices { garbage[i] = UInt8.random(in: 0...255, using: &rng) }
        // Wire header: magic "NBCT" (0..<4), version u16 (4..<6), kind u8 (6), parameter set u16 (7..<9).
        var cases = [
            BadRequest(name: "empty body", path: forward, status: 400, says: "not an nb message"),
            BadRequest(name: "random bytes", path: forward, body: garbage, status: 400, says: "not an nb message"),
            BadRequest(name: "wrong magic", path: forward, body: patched(0, Array("XBCT".utf8)), status: 400, says: "not an nb message"),
            BadRequest(name: "wrong version", path: forward, body: patched(4, [9, 0]), status: 400, says: "version 9 is not supported"),
            BadRequest(name: "wrong kind", path: forward, body: patched(6, [3]), status: 400, says: "got kind 3"),
            BadRequest(name: "unknown parameter set", path: forward, body: patched(7, [0xE7, 0x03]), status: 400, says: "unknown FHE parameter set id 999"),
            // A Content-Length other than the header's length: refused before the body is read.
            BadRequest(name: "truncated ciphertext", path: forward, body: Array(valid.dropLast(7)), status: 400, says: "Content-Length is \(valid.count - 7) bytes"),
            BadRequest(name: "trailing bytes", path: forward, body: valid + [0], status: 400, says: "Content-Length is \(valid.count + 1) bytes"),
            BadRequest(name: "wrong shape", path: forward, body: wrongShape, status: 422, says: "wrong shape"),
            BadRequest(name: "unknown module", path: "/v1/modules/transformer.h.9.attn.c_attn/forward", body: valid, status: 404, says: "no remote module"),
            BadRequest(name: "unknown direction", path: "/v1/modules/\(attention)/sideways", body: valid, status: 404, says: "unknown direction"),
            BadRequest(name: "unknown path", method: "GET", path: "/v1/nothing", status: 404),
            BadRequest(name: "GET on a product", method: "GET", path: forward, status: 404),
            BadRequest(name: "declared body over the limit", path: forward, headers: ["Content-Length": String(maxBodyBytes + 1)], status: 413, says: "over the limit"),
            // The masked protocol's online route: header magic (0..<4), version (4..<6), kind (6), bits (7), rows u32 (8..<12).
            BadRequest(name: "masked: random bytes", path: forward + "/masked", body: garbage, status: 400, says: "not an nb message"),
            BadRequest(name: "masked: a ciphertext on the online route", path: forward + "/masked", body: valid, status: 400, says: "expected a padded input"),
            BadRequest(name: "masked: bits out of range", path: forward + "/masked", body: maskedPatched(7, [60]), status: 400, says: "invalid bits"),
            BadRequest(name: "masked: truncated", path: forward + "/masked", body: Array(maskedValid.dropLast(3)), status: 400, says: "Content-Length is"),
            BadRequest(name: "masked: wrong shape", path: forward + "/masked", body: maskedWrongShape, status: 422, says: "features"),
            BadRequest(name: "masked: unknown module", path: "/v1/modules/transformer.h.9.attn.c_attn/forward/masked", body: maskedValid, status: 404, says: "no remote module"),
        ]
        if let token {
            for i in cases.indices { cases[i].headers["Authorization"] = "Bearer \(token)" }
            cases.append(BadRequest(name: "no token", path: forward, body: valid, status: 401))
            cases.append(BadRequest(name: "wrong token", path: forward, headers: ["Authorization": "Bearer \(token)x"], body: valid, status: 401))
            cases.append(BadRequest(name: "modules without a token", method: "GET", path: "/v1/modules", status: 401))
        }
        return cases
    }

    /// Sends `bad` on a fresh connection and returns the response (nil if none came).
    func send(_ bad: BadRequest, port: Int) throws -> RawResponse? {
        let connection = try RawConnection(port: port)
        _ = connection.send(method: bad.method, path: bad.path, headers: bad.headers, body: bad.body)
        return connection.readResponse()
    }

    @Test func badRequestsGetTheirStatusAndTheServerCarriesOn() throws {
        let server = try ServeProcess(deployment: directory)
        for bad in try badRequests() {
            let response = try #require(try send(bad, port: server.port), "\(bad.name): no response")
            #expect(response.status == bad.status, "\(bad.name): \(response.text)")
            if let says = bad.says {
                // The product routes' errors: one line of text.
                #expect(response.text.contains(says) && response.text.filter { $0 == "\n" }.count == 1, "\(bad.name): \(response.text)")
            }
            try expectValidProduct(port: server.port)
        }
        // Not HTTP at all: 400 and the connection closed.
        let connection = try RawConnection(port: server.port)
        connection.send("HELLO THERE\r\n\r\n")
        let reply = try #require(connection.readUntilClosed(), "the server kept a garbage connection open")
        #expect(String(decoding: reply, as: UTF8.self).hasPrefix("HTTP/1.1 400"))
        try expectValidProduct(port: server.port)
    }

    @Test func truncatedBodiesDropTheConnection() throws {
        let server = try ServeProcess(deployment: directory)
        let valid = try product(attention, .forward).body
        // Content-Length promises more than is sent, then the client closes its side.
        let connection = try RawConnection(port: server.port)
        connection.send(method: "POST", path: path(attention, .forward), headers: ["Content-Length": String(valid.count)])
        connection.send(Array(valid.prefix(valid.count / 2)))
        connection.shutdownWrite()
        let reply = try #require(connection.readUntilClosed(), "the server kept a truncated request's connection open")
        // Hummingbird answers the premature end with a 400 and closes.
        let text = String(decoding: reply, as: UTF8.self)
        #expect(text.hasPrefix("HTTP/1.1 400") && text.contains("Connection: close"), "\(text)")
        try expectValidProduct(port: server.port)
    }

    @Test func bodiesOverTheLimitAre413() throws {
        let server = try ServeProcess(deployment: directory, ["--max-body-mb", "1"])
        let limit = 1 << 20
        // Announced: refused before a byte of the body is read (none is sent).
        let announced = try RawConnection(port: server.port)
        announced.send(method: "POST", path: path(attention, .forward), headers: ["Content-Length": String(limit + 1)])
        #expect(announced.readResponse()?.status == 413)
        // Chunked (no length announced): refused from the header, which declares a body past the
        // limit, before the rest is read (none of it is sent).
        let rows = 40_000
        let big = try product(attention, .forward, rows: rows).body
        let chunked = try RawConnection(port: server.port)
        chunked.send(method: "POST", path: path(attention, .forward), headers: ["Transfer-Encoding": "chunked"])
        let header = Array(big.prefix(EncryptedMatrix.Shape.byteCount))
        chunked.send(Array("\(String(header.count, radix: 16))\r\n".utf8) + header + Array("\r\n".utf8))
        let refused = try #require(chunked.readResponse())
        #expect(refused.status == 413 && refused.text.contains("over the limit of \(limit)"), "\(refused.status) \(refused.text)")
        #expect(refused.headers["connection"] == "close")
        // Exactly at the limit: refused as malformed from its first bytes.
        let atLimit = try RawConnection.exchange(port: server.port, "POST", path(attention, .forward), body: [UInt8](repeating: 0, count: limit))
        #expect(atLimit.status == 400 && atLimit.text.contains("not an nb message"))
        try expectValidProduct(port: server.port)
    }

    // MARK: Token

    func writeToken(_ token: String, mode: Int = 0o600) throws -> URL {
        let url = root.appendingPathComponent("token-\(UUID().uuidString)")
        try Data("\(token)\n".utf8).write(to: url)
        try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: url.path)
        return url
    }

    @Test func aTokenGuardsEveryRouteButHealth() throws {
        let token = "s3cret-token-\(UUID().uuidString)"
        let server = try ServeProcess(deployment: directory, ["--token-file", try writeToken(token).path])
        #expect(try RawConnection.exchange(port: server.port, "GET", "/v1/health").status == 200)
        for header in [nil, "Bearer wrong", "Bearer \(token)x", "Bearer \(token.dropLast())", "Basic \(token)", token] {
            let response = try RawConnection.exchange(port: server.port, "GET", "/v1/modules", headers: header.map { ["Authorization": $0] } ?? [:])
            #expect(response.status == 401, "Authorization: \(header ?? "none")")
            #expect(response.headers["www-authenticate"] == "Bearer")
        }
        #expect(try RawConnection.exchange(port: server.port, "GET", "/v1/nothing").status == 401)
        let modules = try RawConnection.exchange(port: server.port, "GET", "/v1/modules", headers: ["Authorization": "bearer \(token)"])
        #expect(modules.status == 200)
        try expectValidProduct(port: server.port, token: token)
    }

    @Test func badCommandLinesAreRefusedWithOneLine() throws {
        let open = try NbProcess.run(["serve", directory.path, "--port", "0", "--token-file", try writeToken("t", mode: 0o644).path], in: root)
        #expect(open.code == 2)
        #expect(open.stderr.contains("too open") && open.stderr.contains("chmod 600"), "\(open.stderr)")
        let empty = try NbProcess.run(["serve", directory.path, "--port", "0", "--token-file", try writeToken("  ").path], in: root)
        #expect(empty.code == 2)
        #expect(empty.stderr.contains("empty"), "\(empty.stderr)")
        let missing = root.appendingPathComponent("no-such-deployment").path
        let bad = try NbProcess.run(["serve", missing, "--port", "0"], in: root)
        #expect(bad.code == 2)
        #expect(bad.stderr.hasPrefix("nb serve: \(missing)") && bad.stderr.filter { $0 == "\n" }.count == 1, "\(bad.stderr)")
        let notDeployment = try NbProcess.run(["serve", root.path, "--port", "0"], in: root)
        #expect(notDeployment.code == 2)
        #expect(notDeployment.stderr.contains(root.path) && notDeployment.stderr.filter { $0 == "\n" }.count == 1, "\(notDeployment.stderr)")
        #expect(notDeployment.stdout.isEmpty)
        // A port already taken.
        let server = try ServeProcess(deployment: directory)
        let taken = try NbProcess.run(["serve", directory.path, "--port", String(server.port)], in: root)
        #expect(taken.code == 1)
        #expect(taken.stderr.contains("nb serve: cannot listen on http://127.0.0.1:\(server.port)"), "\(taken.stderr)")
    }

    // MARK: Slow clients

    @Test func stalledClientsAreDisconnected() throws {
        let server = try ServeProcess(deployment: directory, ["--idle-timeout", "2"])
        // Half a request line, then nothing.
        let half = try RawConnection(port: server.port, receiveTimeout: 15)
        let started = Date()
        half.send("GET /v1/hea")
        let reply = try #require(half.readUntilClosed(), "a stalled request line was not disconnected")
        #expect(reply.isEmpty)
        #expect(Date().timeIntervalSince(started) > 1, "closed before the idle timeout")
        // Half a body, then nothing.
        let valid = try product(attention, .forward).body
        let stalled = try RawConnection(port: server.port, receiveTimeout: 15)
        stalled.send(method: "POST", path: path(attention, .forward), headers: ["Content-Length": String(valid.count)])
        stalled.send(Array(valid.prefix(100)))
        #expect(stalled.readUntilClosed() != nil, "a stalled body was not disconnected")
        try expectValidProduct(port: server.port)
    }

    // MARK: Soak

    @Test func aSoakOfBadRequestsLeavesTheServerServing() throws {
        let token = "soak-token"
        let server = try ServeProcess(deployment: directory, ["--token-file", try writeToken(token).path, "--max-body-mb", "1"])
        let cases = try badRequests(token: token, maxBodyBytes: 1 << 20)
        let valid = try product(attention, .forward).body
        // Round i sends bad request i mod (cases + 1); the extra one is a body the client cuts short.
        let kinds = cases.count + 1
        func round(_ i: Int) throws {
            guard i % kinds < cases.count else {
                let connection = try RawConnection(port: server.port)
                connection.send(method: "POST", path: path(attention, .forward),
                                headers: ["Authorization": "Bearer \(token)", "Content-Length": String(valid.count)])
                connection.send(Array(valid.prefix(64)))
                connection.shutdownWrite()
                #expect(connection.readUntilClosed() != nil, "dropped connection at request \(i) left open")
                return
            }
            let bad = cases[i % kinds]
            let response = try #require(try send(bad, port: server.port), "\(bad.name): no response at request \(i)")
            #expect(response.status == bad.status, "\(bad.name) at request \(i): \(response.text)")
        }
        for i in 0..<200 { try round(i) }
        try expectValidProduct(port: server.port, token: token)
        let before = try server.residentBytes()
        let started = Date()
        let soak = 1200
        for i in 0..<soak { try round(i) }
        let seconds = Date().timeIntervalSince(started)
        let after = try server.residentBytes()
        print("ServeTests soak: \(soak) bad requests in \(String(format: "%.2f", seconds)) s; RSS \(before >> 10) KiB before, \(after >> 10) KiB after")
        #expect(server.process.isRunning)
        try expectValidProduct(port: server.port, token: token)
        // Bound: 64 MiB of growth over 1,200 refused requests. Nothing is kept per request, so
        // a leak of even 64 KiB per request would cross it; allocator caching stays far below.
        #expect(after - before < 64 << 20, "RSS grew from \(before >> 20) MiB to \(after >> 20) MiB")
        // One log line per request, every line a JSON object, none holding a body.
        let lines = try server.logLines()
        #expect(lines.filter { $0["event"] as? String == "request" }.count >= soak + 200)
        #expect(server.stderr.text.split(separator: "\n").allSatisfy { $0.utf8.count < 2048 })
    }

    // MARK: Shutdown

    @Test func sigtermFinishesTheRequestInFlightAndExitsZero() throws {
        let server = try ServeProcess(deployment: directory)
        try expectValidProduct(port: server.port)
        // A request in flight: its head and half its body are in when SIGTERM comes.
        let p = try product(attention, .forward)
        let inFlight = try RawConnection(port: server.port)
        inFlight.send(method: "POST", path: path(attention, .forward), headers: ["Content-Length": String(p.body.count)])
        inFlight.send(Array(p.body.prefix(p.body.count / 2)))
        usleep(300_000)
        kill(server.pid, SIGTERM)
        // The listener closes soon after the signal; the process stays for the request.
        let deadline = Date(timeIntervalSinceNow: 5)
        while (try? RawConnection(port: server.port)) != nil && Date() < deadline { usleep(50_000) }
        #expect((try? RawConnection(port: server.port)) == nil, "still accepting connections 5 s after SIGTERM")
        #expect(server.process.isRunning, "exited with a request in flight")
        inFlight.send(Array(p.body.dropFirst(p.body.count / 2)))
        let response = try #require(inFlight.readResponse(), "the request in flight was not answered")
        #expect(response.status == 200)
        #expect(client.decrypt(try EncryptedProduct(serialized: response.body), plan: p.plan) == p.expected)

        let exit = try #require(server.waitForExit(timeout: 10), "still running 10 s after SIGTERM")
        #expect(exit.reason == .exit && exit.status == 0)
        let lines = try server.logLines()
        #expect(lines.first?["event"] as? String == "start")
        #expect(lines.last?["event"] as? String == "stop")
        #expect(lines.filter { $0["event"] as? String == "request" }.allSatisfy { $0["status"] as? Int == 200 })
        #expect(server.stdout.text.split(separator: "\n").count == 1)
    }
}
#endif
