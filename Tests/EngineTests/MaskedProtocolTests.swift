import FHE
import Foundation
import Testing

@testable import Engine

/// The masked protocol: exact (equal to `disable` bit for bit), and each pad used once — across
/// calls, reopened stores, crashes, and damaged files.
@Suite struct MaskedProtocolTests {
    static func temporaryStore() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("nb-masks-test-\(UUID().uuidString)", isDirectory: true)
        return dir
    }

    static func plan(_ m: TrainableModel) -> HybridPlan {
        HybridPlan(scheme: QuantizationScheme(named: "DTok-SC", nBits: 8)!, remoteModules: m.linearModules.map(\.name))
    }

    /// A stand-in offline product: W·r mod 2^k for a fixed small W (the store only keeps what
    /// it is given; the backend tests below use the real encrypted product).
    static func fakeOffline(_ spec: MaskStreamSpec, calls: Counter) -> MaskStore.Offline {
        { first, pads in
            calls.value += 1
            let mask: UInt64 = (1 << UInt64(spec.bits)) - 1
            var out = [UInt64](repeating: 0, count: spec.segmentRows * spec.outputs)
            for r in 0..<spec.segmentRows {
                for o in 0..<spec.outputs {
                    var s: UInt64 = 0
                    for k in 0..<spec.features { s = s &+ pads[r * spec.features + k] &* UInt64(o + k + 1) }
                    out[r * spec.outputs + o] = s & mask
                }
            }
            return out
        }
    }

    final class Counter: @unchecked Sendable { var value = 0 }

    static let spec = MaskStreamSpec(module: "m", direction: .forward, bits: 20, features: 5, outputs: 3, segmentRows: 16, identity: "a")
    static let other = MaskStreamSpec(module: "n", direction: .backward, bits: 20, features: 4, outputs: 2, segmentRows: 16, identity: "a")

    /// Every row handed out is new: within a process, after a clean release and reopen, and after
    /// a crash (a store dropped without release); and a second process cannot open a store in use.
    @Test func padsAreNeverHandedOutTwice() throws {
        let dir = try Self.temporaryStore()
        defer { try? FileManager.default.removeItem(at: dir) }
        let calls = Counter()
        var seen = Set<[UInt64]>(), rows = Set<Int>()
        func take(_ store: MaskStore, _ n: Int) throws {
            let t = try store.take(Self.spec.name, rows: n, offline: Self.fakeOffline(Self.spec, calls: calls))
            for r in 0..<n {
                #expect(rows.insert(t.first + r).inserted, "row \(t.first + r) handed out twice")
                #expect(seen.insert(Array(t.pads[(r * 5)..<((r + 1) * 5)])).inserted, "a pad came back")
            }
            // The products are those of the pads handed out (W·r of the same rows).
            let again = try Self.fakeOffline(Self.spec, calls: Counter())(0, t.pads + [UInt64](repeating: 0, count: (16 - n) * 5))
            #expect(Array(again.prefix(n * 3)) == t.products.values)
        }
        do {
            let store = try MaskStore(directory: dir)
            store.reserveAhead = 8
            try store.prepare(Self.spec)
            try store.prepare(Self.other)
            for n in [1, 3, 7, 16, 2] { try take(store, n) }
            // The same directory cannot be opened again while this store holds it.
            #expect(throws: MaskStoreError.inUse(path: dir.path)) { try MaskStore(directory: dir) }
            try store.release()
        }
        let afterRelease: Int
        do {
            let store = try MaskStore(directory: dir)
            store.reserveAhead = 8
            try store.prepare(Self.spec)
            // Released cleanly: it continues exactly after the last row used.
            #expect(store.nextRow(Self.spec.name) == 29)
            try take(store, 5)
            afterRelease = store.nextRow(Self.spec.name)!
            // Dropped without release: a crash.
        }
        do {
            let store = try MaskStore(directory: dir)
            try store.prepare(Self.spec)
            // After the crash it starts at the durable mark, past every row the crashed process may have sent.
            let next = try #require(store.nextRow(Self.spec.name))
            #expect(next >= afterRelease)
            for n in [4, 9] { try take(store, n) }
        }
        #expect(rows.count == 1 + 3 + 7 + 16 + 2 + 5 + 4 + 9)
        // Segments are computed once each, and only for rows that were needed.
        #expect(calls.value <= 6)
    }

    /// Pad products come back from the segment files as written, at each stored width (3, 4 and
    /// 8 bytes per value: k ≤ 24, ≤ 32, above), across a reopen (read from disk, digest checked),
    /// and the files have the size of that width.
    @Test func padProductsRoundTripAtEveryStoredWidth() throws {
        for (bits, width) in [(24, 3), (20, 3), (25, 4), (32, 4), (40, 8), (56, 8)] {
            let dir = try Self.temporaryStore()
            defer { try? FileManager.default.removeItem(at: dir) }
            let spec = MaskStreamSpec(module: "w", direction: .forward, bits: bits, features: 7, outputs: 5, segmentRows: 16, identity: "b")
            var taken: [(first: Int, pads: [UInt64], products: PadProducts)] = []
            do {
                let store = try MaskStore(directory: dir)
                try store.prepare(spec)
                taken.append(try store.take(spec.name, rows: 3, offline: Self.fakeOffline(spec, calls: Counter())))
                try store.prefill(spec.name, rows: 20, offline: Self.fakeOffline(spec, calls: Counter()))
                try store.release()
            }
            for name in try FileManager.default.contentsOfDirectory(atPath: dir.path) where name.hasSuffix(".wr") {
                let size = try FileManager.default.attributesOfItem(atPath: dir.appendingPathComponent(name).path)[.size] as? Int
                #expect(size == 16 * 5 * width, "k = \(bits): \(name) has \(size ?? -1) bytes")
            }
            do {
                let store = try MaskStore(directory: dir)
                try store.prepare(spec)
                let calls = Counter()
                taken.append(try store.take(spec.name, rows: 20, offline: Self.fakeOffline(spec, calls: calls)))
                #expect(calls.value == 0, "k = \(bits): the filled segments were read, not computed again")
                try store.release()
            }
            let pads = taken[0].pads + taken[1].pads
            let truth = try Self.fakeOffline(spec, calls: Counter())(0, Array(pads.prefix(16 * 7)))
                + Self.fakeOffline(spec, calls: Counter())(16, Array(pads.suffix(7 * 7)) + [UInt64](repeating: 0, count: 9 * 7))
            #expect(taken[0].products.values + taken[1].products.values == Array(truth.prefix(23 * 5)), "k = \(bits)")
            #expect((taken[0].products.values + taken[1].products.values).allSatisfy { $0 < (1 << UInt64(bits)) })
        }
    }

    /// A segment file damaged on disk is detected by its digest and computed again (it was
    /// never sent); a damaged state file starts the store afresh with new seeds; a changed key
    /// or weights (the spec's identity) starts that stream afresh.
    @Test func damagedFilesAreRebuiltNeverUsed() throws {
        let dir = try Self.temporaryStore()
        defer { try? FileManager.default.removeItem(at: dir) }
        let calls = Counter()
        let offline = Self.fakeOffline(Self.spec, calls: calls)
        var firstPads: [UInt64] = []
        do {
            let store = try MaskStore(directory: dir)
            try store.prepare(Self.spec)
            firstPads = try store.take(Self.spec.name, rows: 2, offline: offline).pads
            try store.prefill(Self.spec.name, rows: 40, offline: offline)
            try store.release()
        }
        // Flip one byte of every segment file.
        for name in try FileManager.default.contentsOfDirectory(atPath: dir.path) where name.hasSuffix(".wr") {
            let url = dir.appendingPathComponent(name)
            var bytes = try [UInt8](Data(contentsOf: url))
            bytes[5] ^= 0x40
            try Data(bytes).write(to: url)
        }
        do {
            let store = try MaskStore(directory: dir)
            try store.prepare(Self.spec)
            let before = calls.value
            let t = try store.take(Self.spec.name, rows: 4, offline: offline)
            #expect(calls.value == before + 1)  // the damaged segment was computed again
            #expect(store.notices.contains { $0.contains("does not match its digest") })
            let truth = try Self.fakeOffline(Self.spec, calls: Counter())(0, t.pads + [UInt64](repeating: 0, count: 12 * 5))
            #expect(Array(truth.prefix(12)) == t.products.values)
            try store.release()
        }
        // A damaged state file: new seeds, so none of the earlier pads can come back.
        let state = dir.appendingPathComponent("state")
        var bytes = try [UInt8](Data(contentsOf: state))
        bytes[bytes.count - 3] ^= 1
        try Data(bytes).write(to: state)
        do {
            let store = try MaskStore(directory: dir)
            #expect(store.notices.contains { $0.contains("damaged") })
            try store.prepare(Self.spec)
            let t = try store.take(Self.spec.name, rows: 2, offline: offline)
            #expect(t.first == 0 && t.pads != firstPads)
            // Another identity (key or weights changed): the stream starts afresh too.
            var changed = Self.spec
            changed.identity = "b"
            try store.prepare(changed)
            let u = try store.take(changed.name, rows: 2, offline: offline)
            #expect(u.first == 0 && u.pads != t.pads)
            #expect(store.notices.contains { $0.contains("changed") })
        }
    }

    /// A stream's hint is asked for once and kept: the same seed and bytes after a reopen; a
    /// damaged or missing hint file is asked for again (with a notice), never used; a stream
    /// started afresh (another identity) gets a new public seed and drops its old hint.
    @Test func hintsAreKeptCheckedAndRenewedWithTheirStream() throws {
        let dir = try Self.temporaryStore()
        defer { try? FileManager.default.removeItem(at: dir) }
        let asked = Counter()
        func compute(_ seed: MaskSeed) -> [UInt8] {
            asked.value += 1
            return (0..<240).map { UInt8(truncatingIfNeeded: Int(seed.bytes[$0 % seed.bytes.count]) &+ $0) }
        }
        var first: (seed: MaskSeed, bytes: [UInt8])
        do {
            let store = try MaskStore(directory: dir)
            try store.prepare(Self.spec)
            try store.prepare(Self.other)
            first = try store.hint(Self.spec.name, compute: compute)
            #expect(try store.hint(Self.spec.name, compute: compute) == first)
            let second = try store.hint(Self.other.name, compute: compute)
            #expect(second.seed != first.seed, "each stream has its own masks")
            #expect(asked.value == 2)
            #expect(throws: MaskStoreError.unknownStream("x.forward")) { try store.hint("x.forward", compute: compute) }
            // Offline work that asks for its hint (as the backend's does, inside a fill) over
            // several segments: the hint is asked for once and recorded with the segments.
            let third = MaskStreamSpec(module: "p", direction: .forward, bits: 20, features: 5, outputs: 3, segmentRows: 16, identity: "a")
            try store.prepare(third)
            let offline = Self.fakeOffline(third, calls: Counter())
            var hints: [(seed: MaskSeed, bytes: [UInt8])] = []
            try store.prefill(third.name, rows: 3 * third.segmentRows) { row, pads in
                hints.append(try store.hint(third.name, compute: compute))
                return try offline(row, pads)
            }
            #expect(asked.value == 3 && hints.count == 3 && hints.allSatisfy { $0 == hints[0] })
            #expect(try store.hint(third.name, compute: compute) == hints[0] && asked.value == 3)
            try store.release()
        }
        let hintFiles = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".hint") }
        #expect(hintFiles.count == 3)
        do {
            let store = try MaskStore(directory: dir)
            try store.prepare(Self.spec)
            #expect(try store.hint(Self.spec.name, compute: compute) == first)
            #expect(asked.value == 3, "kept across a reopen")
        }
        // Damage every hint file: each is asked for again, from the same public seed.
        for name in hintFiles {
            let url = dir.appendingPathComponent(name)
            var bytes = try [UInt8](Data(contentsOf: url))
            bytes[7] ^= 0x10
            try Data(bytes).write(to: url)
        }
        do {
            let store = try MaskStore(directory: dir)
            try store.prepare(Self.spec)
            #expect(try store.hint(Self.spec.name, compute: compute) == first)
            #expect(asked.value == 4)
            #expect(store.notices.contains { $0.contains("does not match its digest") })
            // Missing: asked for again too.
            for name in try FileManager.default.contentsOfDirectory(atPath: dir.path) where name.hasSuffix(".hint") {
                try FileManager.default.removeItem(at: dir.appendingPathComponent(name))
            }
        }
        do {
            let store = try MaskStore(directory: dir)
            try store.prepare(Self.spec)
            #expect(try store.hint(Self.spec.name, compute: compute) == first)
            #expect(asked.value == 5 && store.notices.contains { $0.contains("missing") })
            // Another identity: new masks, new hint.
            var changed = Self.spec
            changed.identity = "b"
            try store.prepare(changed)
            let renewed = try store.hint(changed.name, compute: compute)
            #expect(renewed.seed != first.seed && asked.value == 6)
            // A file larger than a hint can be (N × O values of 8 bytes) is not read at all (no
            // allocation of the size the file chose): asked for again.
            let url = dir.appendingPathComponent("\(SHA256Digest.hex(changed.name).prefix(16)).hint")
            try Data(count: changed.segmentRows * changed.outputs * 8 + 1).write(to: url)
            #expect(try store.hint(changed.name, compute: compute) == renewed)
            #expect(asked.value == 7 && store.notices.contains { $0.contains("over \(changed.segmentRows * changed.outputs * 8) bytes") })
        }
    }

    static func run(_ name: String, targets: LoRATargets, backend: (TrainableModel) throws -> LinearBackend?) throws
        -> (losses: [Float], adapter: [[Float]], backend: LinearBackend?) {
        try EncryptedBackendTests.run(name, targets: targets, backend: backend)
    }

    /// Training with the masked protocol gives exactly the losses and adapter of `disable` (and
    /// of `he`): forward and backward, with accumulation and dropout, on GPT-2 and LLaMA. The
    /// online requests carry k bits per value (≤ 4 bytes each way).
    @Test(arguments: [("tiny-gpt2", LoRATargets.modules(["c_attn"])), ("tiny-llama", LoRATargets.allLinear),
                      ("tiny-llama3", LoRATargets.allLinear), ("tiny-qwen2", LoRATargets.allLinear), ("tiny-mistral", LoRATargets.allLinear)])
    func maskedEqualsDisable(_ name: String, _ targets: LoRATargets) throws {
        let dir = try Self.temporaryStore()
        defer { try? FileManager.default.removeItem(at: dir) }
        let disable = try Self.run(name, targets: targets) { try QuantizedLinearBackend(plan: Self.plan($0), model: $0) }
        let keyring = Keyring()
        let store = try MaskStore(directory: dir)
        let masked = try Self.run(name, targets: targets) {
            try EncryptedLinearBackend(plan: Self.plan($0), model: $0, keyring: keyring, protocol: .masked, maskStore: store)
        }
        #expect(disable.losses.count == 4)
        #expect(masked.losses == disable.losses)
        #expect(masked.adapter == disable.adapter)
        let backend = try #require(masked.backend as? EncryptedLinearBackend)
        #expect(backend.failure == nil)
        let stats = backend.statistics
        let modules = try #require(try PEFTAdapterTests.model(name) as? TrainableModel).linearModules.count
        #expect(stats.onlineCalls == 6 * 2 * modules)
        // One offline segment per stream covers these few rows.
        #expect(stats.calls == 2 * modules && stats.offlineRows == stats.calls * 2048)
        #expect(Double(stats.onlineBytesSent) / Double(stats.inputValues) <= 4.1)
        #expect(Double(stats.onlineBytesReceived) / Double(stats.outputValues) <= 4.1)
        // A second run on the same store uses fresh rows and still gives the same numbers.
        let tiny = try #require(try PEFTAdapterTests.model(name) as? TrainableModel)
        let first = Self.plan(tiny).remoteModules[0]
        let nextBefore = try #require(store.nextRow("\(first).forward"))
        let again = try Self.run(name, targets: targets) {
            try EncryptedLinearBackend(plan: Self.plan($0), model: $0, keyring: keyring, protocol: .masked, maskStore: store)
        }
        #expect(again.losses == disable.losses && again.adapter == disable.adapter)
        #expect(try #require(store.nextRow("\(first).forward")) > nextBefore)
    }

    /// Generation with the KV cache through the masked protocol gives the clear 8-bit tokens.
    @Test func maskedGenerationEqualsDisable() throws {
        let dir = try Self.temporaryStore()
        defer { try? FileManager.default.removeItem(at: dir) }
        let model = try #require(try PEFTAdapterTests.model("tiny-llama") as? TrainableModel)
        let plan = Self.plan(model)
        var clear = LinearHooks<Float>()
        clear.backend = try QuantizedLinearBackend(plan: plan, model: model)
        let masked = try EncryptedLinearBackend(plan: plan, model: model, keyring: Keyring(), protocol: .masked, maskStore: try MaskStore(directory: dir))
        var hooks = LinearHooks<Float>()
        hooks.backend = masked
        let prompt = [5, 9, 17, 3]
        let expected = generateThroughHooks(model: model, prompt: prompt, maxTokens: 6, hooks: clear)
        #expect(generateThroughHooks(model: model, prompt: prompt, maxTokens: 6, hooks: hooks) == expected)
        #expect(masked.failure == nil)
        // One call per module and token (the prompt once, then one row per new token).
        #expect(masked.statistics.onlineCalls == model.linearModules.count * expected.count)
    }

    /// Through the deployment's server handler (the code `nb serve` runs), masked and `he` agree.
    @Test func maskedThroughTheServerFolderEqualsExecute() throws {
        let dir = try Self.temporaryStore()
        defer { try? FileManager.default.removeItem(at: dir) }
        let keyring = Keyring()
        let (deployment, _, _, _) = try DeploymentTests.save("tiny-llama", keyring: keyring)
        let server = try ServerDeployment(path: deployment)
        let transport = DeploymentTests.FolderTransport(server)
        let client = try ClientManifest.load(from: deployment.appendingPathComponent("client"))
        let model = try #require(try PEFTAdapterTests.model("tiny-llama") as? TrainableModel)
        let store = try MaskStore(directory: dir)
        let remote = try EncryptedLinearBackend(plan: client.plan, metadata: client.modules, client: FHEClient(keyring: keyring), transport: transport,
                                                protocol: .masked, maskStore: store)
        let local = try QuantizedLinearBackend(plan: client.plan, model: model)
        let m = model.linearModules[2]
        let layer = LinearLayer(name: m.name, inFeatures: m.inFeatures, outFeatures: m.outFeatures)
        let x = (0..<(3 * layer.inFeatures)).map { Float(($0 * 37) % 23) / 11 - 1 }
        var a = [Float](repeating: 0, count: 3 * layer.outFeatures), b = a
        _ = x.withUnsafeBufferPointer { xs in a.withUnsafeMutableBufferPointer { remote.forward(layer, x: xs, y: $0) } }
        _ = x.withUnsafeBufferPointer { xs in b.withUnsafeMutableBufferPointer { local.forward(layer, x: xs, y: $0) } }
        #expect(remote.failure == nil)
        #expect(a == b)
        // The online request the server got: the padded values only (k bits each), not x.
        let online = try #require(transport.requests.last)
        let input = try MaskedInput(serialized: online)
        #expect(input.rows == 3 && input.features == layer.inFeatures)
    }

    /// A call sent in pieces of rows (as the HTTP transport does, to overlap the client's work
    /// with the server's) gives the clear integer products, forward and backward, bit for bit.
    @Test func onlineCallsInPiecesEqualDisable() throws {
        let dir = try Self.temporaryStore()
        defer { try? FileManager.default.removeItem(at: dir) }
        let keyring = Keyring()
        let (deployment, _, _, _) = try DeploymentTests.save("tiny-llama", keyring: keyring)
        let transport = DeploymentTests.FolderTransport(try ServerDeployment(path: deployment))
        transport.parts = 3
        let client = try ClientManifest.load(from: deployment.appendingPathComponent("client"))
        let model = try #require(try PEFTAdapterTests.model("tiny-llama") as? TrainableModel)
        let remote = try EncryptedLinearBackend(plan: client.plan, metadata: client.modules, client: FHEClient(keyring: keyring), transport: transport,
                                                protocol: .masked, maskStore: try MaskStore(directory: dir))
        let local = try QuantizedLinearBackend(plan: client.plan, model: model)
        let m = model.linearModules[1], rows = 100
        let layer = LinearLayer(name: m.name, inFeatures: m.inFeatures, outFeatures: m.outFeatures)
        let x = (0..<(rows * layer.inFeatures)).map { Float(($0 * 37) % 23) / 11 - 1 }
        let dy = (0..<(rows * layer.outFeatures)).map { Float(($0 * 53) % 29) / 7 - 2 }
        var a = [Float](repeating: 0, count: rows * layer.outFeatures), b = a
        _ = x.withUnsafeBufferPointer { xs in a.withUnsafeMutableBufferPointer { remote.forward(layer, x: xs, y: $0) } }
        _ = x.withUnsafeBufferPointer { xs in b.withUnsafeMutableBufferPointer { local.forward(layer, x: xs, y: $0) } }
        var c = [Float](repeating: 0, count: rows * layer.inFeatures), d = c
        _ = dy.withUnsafeBufferPointer { g in c.withUnsafeMutableBufferPointer { remote.backward(layer, dY: g, dX: $0) } }
        _ = dy.withUnsafeBufferPointer { g in d.withUnsafeMutableBufferPointer { local.backward(layer, dY: g, dX: $0) } }
        #expect(remote.failure == nil)
        #expect(a == b && c == d)
        #expect(a.contains { $0 != 0 } && c.contains { $0 != 0 })
        // Three online requests per call, of 33, 33 and 34 rows. The others are offline, per
        // direction: the hint (the masks' product only) and one ring of bodies only.
        let pieces = transport.requests.compactMap { try? MaskedInput(serialized: $0) }
        #expect(pieces.map(\.rows) == [33, 33, 34, 33, 33, 34])
        let offline = transport.requests.compactMap { try? EncryptedMatrix(serialized: $0) }
        #expect(offline.map { [$0.bodyBits == 0 ? 0 : 1, $0.maskLimbs == 0 ? 0 : 1] } == [[0, 1], [1, 0], [0, 1], [1, 0]])
        #expect(transport.requests.count == pieces.count + 4)
        #expect(remote.statistics.onlineCalls == 2)
    }
}

extension MaskedProtocolTests {
    /// A crash between using pads and finishing the step: the run resumed from its checkpoint
    /// in a new process (a new store on the same folder, the old one dropped without release)
    /// gets rows past everything the crashed process reserved, and ends with the losses and
    /// adapter of an uninterrupted run.
    @Test func crashAndResumeUseFreshPadsAndGiveTheSameTraining() throws {
        let dir = try Self.temporaryStore()
        defer { try? FileManager.default.removeItem(at: dir) }
        let model = try #require(try PEFTAdapterTests.model("tiny-llama") as? TrainableModel)
        let plan = Self.plan(model)
        func makeRun() throws -> (LoRATrainingRun, LoRAAdapter) {
            let adapter = try LoRAAdapter(config: LoRAConfig(rank: 4, alpha: 8, dropout: 0.1, targets: .allLinear, seed: 3), modules: model.linearModules)
            let run = try LoRATrainingRun(model: model, adapter: adapter, data: EncryptedBackendTests.data(),
                                          settings: TrainingSettings(epochs: 2, batchSize: 2, gradientAccumulation: 1, learningRate: 1e-2, fuseMicroBatches: true))
            return (run, adapter)
        }
        let (reference, referenceAdapter) = try makeRun()
        reference.backend = try QuantizedLinearBackend(plan: plan, model: model)
        while !reference.isFinished { _ = try reference.step() }

        let keyring = Keyring()
        let checkpoint = dir.appendingPathComponent("checkpoint.safetensors")
        let stream = "\(plan.remoteModules[0]).forward"
        var crashedMark = 0
        do {
            let store = try MaskStore(directory: dir)
            let (run, _) = try makeRun()
            run.backend = try EncryptedLinearBackend(plan: plan, model: model, keyring: keyring, protocol: .masked, maskStore: store)
            for _ in 0..<2 { _ = try run.step() }
            try run.saveCheckpoint(to: checkpoint)
            _ = try run.step()  // pads used after the checkpoint, then the crash: no release, no checkpoint
            crashedMark = try #require(store.nextRow(stream))
        }
        let store = try MaskStore(directory: dir)
        let (run, adapter) = try makeRun()
        let backend = try EncryptedLinearBackend(plan: plan, model: model, keyring: keyring, protocol: .masked, maskStore: store)
        run.backend = backend
        #expect(try #require(store.nextRow(stream)) >= crashedMark, "the resumed process could reuse rows of the crashed one")
        try run.restoreCheckpoint(from: checkpoint)
        while !run.isFinished { _ = try run.step() }
        #expect(backend.failure == nil)
        #expect(run.position.history.map(\.loss) == reference.position.history.map(\.loss))
        #expect(adapter.layers.flatMap { [$0.a, $0.b] } == referenceAdapter.layers.flatMap { [$0.a, $0.b] })
    }
}

extension MaskedProtocolTests {
    /// The online route refuses a modulus wider than the weights' products of 8-bit inputs need
    /// (which would multiply the server's work and answer), a request of another width and an
    /// unknown module; its admission from the header alone bounds the memory before the body.
    @Test func onlineRequestsAreBoundedAndChecked() throws {
        let w = try ServerWeights(outputs: 128, inputs: 1) { o, _ in o % 7 - 3 }
        let weights = RemoteModuleWeights(modules: ["m": (w, w.transposed())])
        // |x| ≤ 255 and Σ|w| ≤ 3: |W·x| ≤ 765 < 2^10, so 11 bits carry every product.
        let wider = MaskedInput(bits: 12, rows: 3, features: 1, body: [UInt8](repeating: 0, count: 5))
        do { _ = try weights.respondMasked(module: "m", direction: .forward, request: wider.serialized()); Issue.record("accepted 12 bits") } catch {
            #expect(error.httpStatus == 422 && error.description.contains("at most 11 bits"), "\(error)")
        }
        #expect(throws: RemoteRequestError.self) {
            try weights.admit(module: "m", direction: .forward, masked: true, prefix: Array(wider.serialized().prefix(MaskedInput.Shape.byteCount)))
        }
        let wide = MaskedInput(bits: 11, rows: 1, features: 2, body: [0, 0, 0])
        do { _ = try weights.respondMasked(module: "m", direction: .forward, request: wide.serialized()); Issue.record("accepted 2 features") } catch {
            #expect(error.httpStatus == 422 && error.description.contains("takes 1"), "\(error)")
        }
        do { _ = try weights.respondMasked(module: "n", direction: .forward, request: wide.serialized()); Issue.record("accepted module n") } catch {
            #expect(error.httpStatus == 404 && error.description.contains("n"), "\(error)")
        }
        let fine = MaskedInput(bits: 11, rows: 3, features: 1, body: [UInt8](repeating: 0xA5, count: 5))
        let bytes = fine.serialized()
        let answer = try MaskedOutput(serialized: try weights.respondMasked(module: "m", direction: .forward, request: bytes))
        #expect(answer.rows == 3 && answer.outputs == 128 && answer.bits == 11)
        // The header alone gives the body's exact length and a bound that grows with the rows.
        let small = try weights.admit(module: "m", direction: .forward, masked: true, prefix: Array(bytes.prefix(MaskedInput.Shape.byteCount)))
        #expect(small.messageBytes == bytes.count)
        let rows = FHEWire.maxRows
        let big = MaskedInput(bits: 11, rows: rows, features: 1, body: [UInt8](repeating: 0, count: (rows * 11 + 7) / 8)).serialized()
        let large = try weights.admit(module: "m", direction: .forward, masked: true, prefix: Array(big.prefix(MaskedInput.Shape.byteCount)))
        #expect(large.messageBytes == big.count)
        #expect(large.peakBytes >= rows * 128 * 8 && large.peakBytes > 1000 * small.peakBytes)
    }
}
