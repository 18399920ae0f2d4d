import Crypto
import FHE
import Foundation

/// Which product of a remote module a request asks for.
public enum ProductDirection: String, Codable, Sendable {
    /// y = x·Wᵀ.
    case forward
    /// dX = dY·W (the product by Wᵀ).
    case backward
}

/// What the client may know of a remote module's weights to plan its calls: shapes and the
/// largest row norms (public metadata, the same for every replica of the server).
public struct PublicWeightInfo: Codable, Equatable, Sendable {
    public var outputs: Int
    public var inputs: Int
    public var maxRowL1: Double
    public var maxRowL2: Double

    public init(_ w: ServerWeights) { (outputs, inputs, maxRowL1, maxRowL2) = (w.outputs, w.inputs, w.maxRowL1, w.maxRowL2) }

    public init(outputs: Int, inputs: Int, maxRowL1: Double, maxRowL2: Double) {
        (self.outputs, self.inputs, self.maxRowL1, self.maxRowL2) = (outputs, inputs, maxRowL1, maxRowL2)
    }

    func shape(rows: Int, maxAbsInput: Double) -> ProductShape {
        ProductShape(rows: rows, innerDimension: inputs, maxAbsInput: maxAbsInput, maxRowL1: maxRowL1, maxRowL2: maxRowL2)
    }
}

/// How the encrypted modes compute a remote product.
public enum ProductProtocol: String, Codable, CaseIterable, Sendable {
    /// Every call encrypted whole (token-packed GLWE): nothing kept on the client, but each
    /// call pays a full ring of N tokens in masks whatever the tokens it carries.
    case he
    /// The preprocessing model: pads r encrypted offline in full ciphertexts (the `he`
    /// product, W·r mod 2^k decrypted into the client's mask store), then online products of
    /// one-time-padded integers x − r mod 2^k (``MaskedProduct``), whose cost and bytes follow
    /// the tokens. Each pad is used once.
    case masked
}

/// Where encrypted requests go: the in-process server (`execute`) or an HTTP server (`remote`).
public protocol EncryptedTransport: AnyObject {
    /// The serialized ``EncryptedProduct`` for a serialized ``EncryptedMatrix``; the answer must
    /// be `responseBytes` long (a transport over a network refuses any other before reading it).
    func multiply(module: String, direction: ProductDirection, request: [UInt8], responseBytes: Int) throws -> [UInt8]
    /// The serialized ``MaskedOutput`` for a serialized ``MaskedInput`` (the online product).
    func multiplyMasked(module: String, direction: ProductDirection, request: [UInt8], responseBytes: Int) throws -> [UInt8]
    /// Pieces an online call's rows are split into (1: one request per call).
    var maskedPipelineParts: Int { get }
    /// One online call in `parts` pieces: `request(i)` builds piece i (its bytes and its answer's
    /// length), `receive(i, answer)` takes its answer, in order. A transport over a network sends
    /// a piece as soon as it is built, so the server multiplies one piece while the client
    /// blinds the next and unblinds the last.
    func multiplyMaskedParts(module: String, direction: ProductDirection, parts: Int,
                             request: (Int) throws -> (bytes: [UInt8], responseBytes: Int),
                             receive: (Int, [UInt8]) throws -> Void) throws
}

extension EncryptedTransport {
    public var maskedPipelineParts: Int { 1 }

    /// One piece after the other.
    public func multiplyMaskedParts(module: String, direction: ProductDirection, parts: Int,
                                    request: (Int) throws -> (bytes: [UInt8], responseBytes: Int),
                                    receive: (Int, [UInt8]) throws -> Void) throws {
        for i in 0..<parts {
            let (bytes, length) = try request(i)
            try receive(i, try multiplyMasked(module: module, direction: direction, request: bytes, responseBytes: length))
        }
    }
}

public enum EncryptedBackendError: Error, CustomStringConvertible {
    case unsupportedScheme(String)
    case unsupportedWeights(module: String, reason: String)
    case noPlan(module: String, direction: ProductDirection, reason: String)
    case unknownModule(String)
    case failed(module: String, reason: String)

    public var description: String {
        switch self {
        case .unsupportedScheme(let s): return s
        case .unsupportedWeights(let m, let r): return "\(m): \(r)"
        case .noPlan(let m, let d, let r): return "\(m) (\(d.rawValue)): no FHE parameters fit: \(r)"
        case .unknownModule(let m): return "the server has no remote module named \(m)"
        case .failed(let m, let r): return "\(m): the encrypted product failed: \(r)"
        }
    }
}

/// Counters of the encrypted products: calls, bytes on the wire and where the time went.
public struct FHEStatistics: Codable, Equatable, Sendable {
    public var calls = 0
    /// Input values encrypted and output values decrypted.
    public var inputValues = 0
    public var outputValues = 0
    public var bytesSent = 0
    public var bytesReceived = 0
    public var encryptSeconds = 0.0
    public var serverSeconds = 0.0
    public var decryptSeconds = 0.0
    /// Names of the parameter sets used.
    public var parameterSets: [String] = []
    /// The masked protocol's online products: calls, bytes, and the time of the client's
    /// padding and unpadding and of the server's product (with the network, for `remote`).
    /// The offline products are the counters above (they are `he` products of full rings).
    public var onlineCalls = 0
    public var onlineBytesSent = 0
    public var onlineBytesReceived = 0
    public var onlineClientSeconds = 0.0
    public var onlineServerSeconds = 0.0
    /// Pad rows computed offline (one full ring per segment), and the seconds spent writing
    /// and hashing their segments in the mask store.
    public var offlineRows = 0
    public var offlineStoreSeconds = 0.0
    /// The masked protocol's hints (the server's product of a stream's fixed masks): fetched
    /// once per stream and kept in the mask store, so not part of the per-ring offline work.
    public var hints = 0
    public var hintSeconds = 0.0
    public var hintBytes = 0

    public init() {}

    /// Seconds of offline work: the HE products and the mask store's segments.
    public var offlineSeconds: Double { encryptSeconds + serverSeconds + decryptSeconds + offlineStoreSeconds }
    public var onlineSeconds: Double { onlineClientSeconds + onlineServerSeconds }

    /// self − earlier (counters since `earlier`).
    public func since(_ earlier: FHEStatistics) -> FHEStatistics {
        var d = self
        d.calls -= earlier.calls; d.inputValues -= earlier.inputValues; d.outputValues -= earlier.outputValues
        d.bytesSent -= earlier.bytesSent; d.bytesReceived -= earlier.bytesReceived
        d.encryptSeconds -= earlier.encryptSeconds; d.serverSeconds -= earlier.serverSeconds; d.decryptSeconds -= earlier.decryptSeconds
        d.onlineCalls -= earlier.onlineCalls; d.onlineBytesSent -= earlier.onlineBytesSent; d.onlineBytesReceived -= earlier.onlineBytesReceived
        d.onlineClientSeconds -= earlier.onlineClientSeconds; d.onlineServerSeconds -= earlier.onlineServerSeconds
        d.offlineRows -= earlier.offlineRows; d.offlineStoreSeconds -= earlier.offlineStoreSeconds
        d.hints -= earlier.hints; d.hintSeconds -= earlier.hintSeconds; d.hintBytes -= earlier.hintBytes
        return d
    }
}

/// The `execute` and `remote` modes: every remote module's forward and backward product
/// is quantized as in `disable`, encrypted under the client's key, multiplied by the server,
/// decrypted, and finished (zero points, scales) in clear — the same integers as `disable`,
/// hence the same floats. The client needs only the public metadata of the weights
/// (``RemoteModuleMetadata``), never their values.
public final class EncryptedLinearBackend: LinearBackend {
    public let plan: HybridPlan
    public let client: FHEClient
    public let transport: EncryptedTransport
    /// `he` or `masked` (see ``ProductProtocol``).
    public let productProtocol: ProductProtocol
    /// The masked protocol's pads and pad products (nil for `he`).
    public let maskStore: MaskStore?
    struct Module {
        var forward: QuantizedRows   // header only: scales and row sums of W
        var backward: QuantizedRows  // of Wᵀ
        var forwardInfo: PublicWeightInfo
        var backwardInfo: PublicWeightInfo
    }
    let modules: [String: Module]
    /// The masked protocol: each module direction's offline plan (full ring, message modulus
    /// 2^k) and its stream in the store.
    struct Stream {
        var plan: CallPlan
        var spec: MaskStreamSpec
    }
    private var streams: [String: Stream] = [:]
    public var moduleNames: [String] { plan.remoteModules.filter { modules[$0] != nil } }
    public private(set) var statistics = FHEStatistics()
    /// The plan of the most recent call (for reports).
    public private(set) var lastPlan: CallPlan?
    /// Real-token rows of the current pass (padding rows are not sent).
    private var realRows: [Bool]?
    /// The first failure of a call (the training pass cannot throw through the backend; the
    /// step checks this after each pass).
    public private(set) var failure: EncryptedBackendError?

    /// `metadata`: the server's public metadata of the plan's remote modules (from the
    /// deployment's client folder, or made from the model for the in-process server).
    /// `masked` needs a `maskStore` (its streams are made ready here).
    public init(plan: HybridPlan, metadata: [RemoteModuleMetadata], client: FHEClient, transport: EncryptedTransport,
                protocol productProtocol: ProductProtocol = .he, maskStore: MaskStore? = nil) throws {
        let s = plan.scheme
        guard s.symmetricWeights, s.nBits <= 8 else {
            throw EncryptedBackendError.unsupportedScheme("encrypted modes take symmetric weights of at most 8 bits; the plan's scheme is \(s.nBits)-bit \(s.description). Compile with n_bits ≤ 8 (or use mode: disable)")
        }
        (self.plan, self.client, self.transport, self.productProtocol) = (plan, client, transport, productProtocol)
        self.maskStore = productProtocol == .masked ? maskStore : nil
        precondition(productProtocol == .he || maskStore != nil, "the masked protocol needs a mask store")
        var modules: [String: Module] = [:]
        for m in metadata {
            modules[m.name] = Module(forward: m.forward.header, backward: m.backward.header, forwardInfo: m.forward.info, backwardInfo: m.backward.info)
        }
        self.modules = modules
        // Every module must have a plan for the widest inputs its scheme produces.
        let widest = Double(s.symmetricActivations ? (1 << (s.nBits - 1)) - 1 : (1 << s.nBits) - 1)
        let byName = Dictionary(metadata.map { ($0.name, $0) }) { a, _ in a }
        for name in plan.remoteModules {
            guard let m = modules[name] else { throw EncryptedBackendError.unknownModule(name) }
            for (d, info) in [(ProductDirection.forward, m.forwardInfo), (.backward, m.backwardInfo)] {
                let call: CallPlan
                do { call = try CallPlan.choose(for: info.shape(rows: 1, maxAbsInput: widest)) } catch {
                    throw EncryptedBackendError.noPlan(module: name, direction: d, reason: error.description)
                }
                guard let store = self.maskStore else { continue }
                // Offline: full rings of pads; k = the message bits of the widest inputs' products.
                // Hinted: the stream's masks are fixed and public, the client keeps the server's
                // product of them (its hint), and each ring is encrypted under a fresh secret,
                // so the server multiplies bodies only.
                let ring = call.parameters.ringDegree
                let offline: CallPlan
                do {
                    let shape = info.shape(rows: ring, maxAbsInput: widest)
                    offline = try CallPlan.hinted(messageBits: try CallPlan.messageBits(for: shape), maxRowL2: shape.maxRowL2, parameters: call.parameters)
                } catch {
                    throw EncryptedBackendError.noPlan(module: name, direction: d, reason: error.description)
                }
                var identity = SHA256()
                client.keyring.key(for: offline.parameters).coefficients.withUnsafeBytes { identity.update(bufferPointer: $0) }
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys]
                identity.update(data: try encoder.encode(byName[name]!.weights(d)))
                identity.update(data: Data("\(offline.description) \(s.nBits) \(s.description)".utf8))
                let spec = MaskStreamSpec(module: name, direction: d, bits: offline.messageBits, features: info.inputs, outputs: info.outputs,
                                          segmentRows: ring, identity: SHA256Digest.hex(digest: identity.finalize()))
                try store.prepare(spec)
                streams[spec.name] = Stream(plan: offline, spec: spec)
            }
        }
    }

    /// The `execute` mode: the in-process server on this model's quantized weights.
    public convenience init(plan: HybridPlan, model: TrainableModel, keyring: Keyring, protocol productProtocol: ProductProtocol = .he,
                            maskStore: MaskStore? = nil) throws {
        try self.init(quantized: try QuantizedLinearBackend(plan: plan, model: model), keyring: keyring, protocol: productProtocol, maskStore: maskStore)
    }

    /// The same, from the plan's `disable` backend (its quantized weights become the
    /// in-process server's).
    public convenience init(quantized q: QuantizedLinearBackend, keyring: Keyring, protocol productProtocol: ProductProtocol = .he,
                            maskStore: MaskStore? = nil) throws {
        let (weights, metadata) = try q.remoteModules()
        try self.init(plan: q.plan, metadata: metadata, client: FHEClient(keyring: keyring), transport: InProcessTransport(weights: weights),
                      protocol: productProtocol, maskStore: maskStore)
    }

    /// Fills the mask store ahead so that `rows` rows of every stream are ready (offline work
    /// only); `progress(done, total)` counts segments.
    public func prefillMasks(rows: Int, directions: Set<ProductDirection> = [.forward, .backward],
                             progress: (Int, Int) -> Void = { _, _ in }) throws {
        guard let store = maskStore else { return }
        let names = streams.keys.sorted().filter { directions.contains(streams[$0]!.spec.direction) }
        var needed: [String: Int] = [:]
        for n in names {
            let s = streams[n]!
            needed[n] = max(0, (rows - store.available(n) + s.spec.segmentRows - 1) / s.spec.segmentRows)
        }
        let total = needed.values.reduce(0, +)
        var done = 0
        progress(0, total)
        for n in names where needed[n]! > 0 {
            let s = streams[n]!
            _ = try offlineWork(store) {
                try store.prefill(n, rows: rows, offline: { try self.offlineProduct(s, pads: $1) }, progress: { d, _ in progress(done + d, total) })
            }
            done += needed[n]!
        }
    }

    /// Gives the store's unused reservations back (at the end of a cell).
    public func releaseMasks() { try? maskStore?.release() }

    /// Streams of the masked protocol (remote modules × directions), and one's offline plan.
    public var maskStreamCount: Int { streams.count }
    public func offlinePlan(_ module: String, _ direction: ProductDirection) -> CallPlan? { streams["\(module).\(direction.rawValue)"]?.plan }

    public func forward(_ layer: LinearLayer, x: UnsafeBufferPointer<Float>, y: UnsafeMutableBufferPointer<Float>) -> Bool {
        run(layer, .forward, input: x, output: y)
    }

    public func backward(_ layer: LinearLayer, dY: UnsafeBufferPointer<Float>, dX: UnsafeMutableBufferPointer<Float>) -> Bool {
        run(layer, .backward, input: dY, output: dX)
    }

    public func setRealRows(_ rows: [Bool]?) { realRows = rows }
    public var rowsAreIndependent: Bool { plan.rowsAreIndependent }

    private func run(_ layer: LinearLayer, _ direction: ProductDirection, input: UnsafeBufferPointer<Float>,
                     output: UnsafeMutableBufferPointer<Float>) -> Bool {
        guard let m = modules[layer.name] else { return false }
        let forward = direction == .forward
        let (inWidth, outWidth) = forward ? (layer.inFeatures, layer.outFeatures) : (layer.outFeatures, layer.inFeatures)
        let rows = input.count / inWidth
        // Padding rows are not sent when the quantization is per row or static (a per-tensor
        // dynamic range would see them): their results stay zero, which no real token reads.
        var keep: [Int]?
        if let mask = realRows, mask.count == rows, plan.scheme.activations != .dynamicPerTensor, mask.contains(false) {
            keep = mask.indices.filter { mask[$0] }
        }
        func product(_ x: UnsafeBufferPointer<Float>) -> [Float] {
            // No OpenBLAS worker spinning beside the product's threads or the server's.
            BLAS.parkWorkers()
            let q = forward ? plan.quantizedInput(layer, x) : plan.quantizedGradient(layer, x)
            return encryptedProduct(layer.name, direction, q, forward ? m.forward : m.backward, forward ? m.forwardInfo : m.backwardInfo)
        }
        guard let keep else {
            _ = output.update(fromContentsOf: product(input))
            return true
        }
        output.update(repeating: 0)
        guard !keep.isEmpty else { return true }
        var compact = [Float](repeating: 0, count: keep.count * inWidth)
        for (i, r) in keep.enumerated() {
            for c in 0..<inWidth { compact[i * inWidth + c] = input[r * inWidth + c] }
        }
        let y = compact.withUnsafeBufferPointer { product($0) }
        for (i, r) in keep.enumerated() {
            for c in 0..<outWidth { output[r * outWidth + c] = y[i * outWidth + c] }
        }
        return true
    }

    /// The raw Σ x_q·w_q of one call, by the backend's protocol.
    func encryptedProduct(_ name: String, _ direction: ProductDirection, _ x: QuantizedRows, _ w: QuantizedRows,
                          _ info: PublicWeightInfo) -> [Float] {
        productProtocol == .masked ? maskedProduct(name, direction, x, w) : heProduct(name, direction, x, w, info)
    }

    /// The online product of the masked protocol: pads from the store (filled offline on
    /// demand), x − r mod 2^k to the server, W·(x − r) + W·r back to W·x.
    func maskedProduct(_ name: String, _ direction: ProductDirection, _ x: QuantizedRows, _ w: QuantizedRows) -> [Float] {
        let rows = x.rows
        if failure != nil { return [Float](repeating: 0, count: rows * w.rows) }
        var acc: [Double]
        do {
            guard let stream = streams["\(name).\(direction.rawValue)"], let store = maskStore else { throw EncryptedBackendError.unknownModule(name) }
            let k = stream.spec.bits
            var t = ProcessInfo.processInfo.systemUptime
            let filled = try offlineWork(store) {
                try store.take(stream.spec.name, rows: rows) { _, pads in try self.offlineProduct(stream, pads: pads) }
            }
            let taken = filled.result
            let (features, outputs) = (x.columns, w.rows)
            // Pieces of at least 32 rows: fewer would cost more in requests than they overlap.
            let parts = min(max(1, transport.maskedPipelineParts), max(1, rows / 32))
            let bounds = (0...parts).map { $0 * rows / parts }
            var result = [Double](repeating: 0, count: rows * outputs)
            var (sent, received, clientSeconds) = (0, 0, 0.0)
            var now = ProcessInfo.processInfo.systemUptime
            statistics.onlineClientSeconds += now - t - filled.seconds
            t = now
            try transport.multiplyMaskedParts(module: name, direction: direction, parts: parts, request: { i in
                let started = ProcessInfo.processInfo.systemUptime
                let (lo, hi) = (bounds[i], bounds[i + 1])
                let request = x.values.withUnsafeBufferPointer { xs in
                    taken.pads.withUnsafeBufferPointer { pads in
                        MaskedProduct.blind(UnsafeBufferPointer(rebasing: xs[lo * features..<hi * features]),
                                            pads: UnsafeBufferPointer(rebasing: pads[lo * features..<hi * features]),
                                            rows: hi - lo, features: features, bits: k)
                    }
                }.serialized()
                sent += request.count
                clientSeconds += ProcessInfo.processInfo.systemUptime - started
                return (request, MaskedOutput.byteCount(bits: k, rows: hi - lo, outputs: outputs))
            }, receive: { i, response in
                let started = ProcessInfo.processInfo.systemUptime
                let (lo, hi) = (bounds[i], bounds[i + 1])
                let product: MaskedOutput
                do { product = try MaskedOutput(serialized: response, expecting: (hi - lo, outputs, k)) } catch {
                    throw EncryptedBackendError.failed(module: name, reason: "the server's online product: \(error)")
                }
                taken.products.withValues(lo * outputs, hi * outputs) { wr in
                    result.withUnsafeMutableBufferPointer { r in
                        MaskedProduct.unblind(product, padProducts: wr, width: taken.products.width, into: r.baseAddress! + lo * outputs)
                    }
                }
                received += response.count
                clientSeconds += ProcessInfo.processInfo.systemUptime - started
            })
            now = ProcessInfo.processInfo.systemUptime
            // With pieces in flight, client work overlaps the server's: the wait is the rest.
            statistics.onlineClientSeconds += clientSeconds
            statistics.onlineServerSeconds += max(0, now - t - clientSeconds)
            acc = result
            statistics.onlineCalls += 1
            statistics.inputValues += rows * x.columns
            statistics.outputValues += rows * w.rows
            statistics.onlineBytesSent += sent
            statistics.onlineBytesReceived += received
        } catch {
            if failure == nil { failure = (error as? EncryptedBackendError) ?? .failed(module: name, reason: "\(error)") }
            return [Float](repeating: 0, count: rows * w.rows)
        }
        return IntegerMatmul.finish(raw: &acc, x, w)
    }

    /// Runs `body` (which may fill segments of `store`) and counts the store's share of the
    /// filling (writing and hashing segments) as offline work; returns the seconds filling took.
    private func offlineWork<T>(_ store: MaskStore, _ body: () throws -> T) rethrows -> (result: T, seconds: Double) {
        func he() -> Double { statistics.encryptSeconds + statistics.serverSeconds + statistics.decryptSeconds + statistics.hintSeconds }
        let (fillBefore, heBefore) = (store.fillSeconds, he())
        let result = try body()
        let fill = store.fillSeconds - fillBefore
        let he = he() - heBefore
        statistics.offlineStoreSeconds += max(0, fill - he)
        return (result, fill)
    }

    /// The offline product of one segment of pads: encrypted in full ciphertexts with message
    /// modulus 2^k under a fresh secret and the stream's fixed masks, their bodies multiplied by
    /// the server's `he` route, decrypted with the stream's hint to W·r mod 2^k.
    func offlineProduct(_ stream: Stream, pads: [UInt64]) throws -> [UInt64] {
        try FHEMemory.largeBuffers { try fullRingProduct(stream, pads: pads) }
    }

    private func fullRingProduct(_ stream: Stream, pads: [UInt64]) throws -> [UInt64] {
        let (spec, plan) = (stream.spec, stream.plan)
        guard let store = maskStore else { throw EncryptedBackendError.unknownModule(spec.module) }
        // A hint fetched now (with its file written) counts whole as the one-time hint work.
        let (hintsBefore, hintSecondsBefore, started) = (statistics.hints, statistics.hintSeconds, ProcessInfo.processInfo.systemUptime)
        let hint = try store.hint(spec.name) { seed in try self.hintCall(spec, plan: plan, seed: seed) }
        if statistics.hints > hintsBefore { statistics.hintSeconds = hintSecondsBefore + ProcessInfo.processInfo.systemUptime - started }
        let key = SecretKey.generate(plan.parameters)
        // The pads as they are (in [0, 2^k)): Δ·r mod 2^64 is the same for any representative of
        // r mod 2^k, and the store keeps the products' low k bits, so neither needs a pass.
        let products = try encryptedCall(spec.module, spec.direction, rows: spec.segmentRows, outputs: spec.outputs, plan: plan, encrypt: {
            pads.withUnsafeBufferPointer { p in
                p.withMemoryRebound(to: Int64.self) { client.encrypt($0, rows: spec.segmentRows, features: spec.features, plan: plan, seed: hint.seed, key: key) }
            }
        }, decrypt: { product in
            do { return try client.decrypt(product, plan: plan, hint: hint.bytes, key: key, as: UInt64.self) } catch {
                throw EncryptedBackendError.failed(module: spec.module, reason: "the server's product does not match the hint: \(error)")
            }
        })
        statistics.offlineRows += spec.segmentRows
        return products
    }

    /// The server's product W·A of a stream's fixed masks (the hint of its hinted plan): the
    /// masks of the answer to a masks-only request, counted as offline work.
    private func hintCall(_ spec: MaskStreamSpec, plan: CallPlan, seed: MaskSeed) throws -> [UInt8] {
        // Its seconds are counted by the caller, with the writing of the hint's file.
        let request = FHEClient.hintRequest(features: spec.features, plan: plan, seed: seed).serialized()
        let response = try transport.multiply(module: spec.module, direction: spec.direction, request: request,
                                              responseBytes: EncryptedProduct.hintByteCount(plan: plan, outputs: spec.outputs))
        statistics.hints += 1
        statistics.hintBytes += request.count + response.count
        let product = try EncryptedProduct(serialized: response)
        guard product.rows == plan.parameters.ringDegree, product.outputs == spec.outputs, product.outputMaskBits == plan.outputMaskBits,
              product.outputBodyBits == 0 else {
            throw EncryptedBackendError.failed(module: spec.module, reason: "the server's hint has \(product.rows) × \(product.outputs) values at \(product.outputMaskBits) bits; expected \(plan.parameters.ringDegree) × \(spec.outputs) at \(plan.outputMaskBits)")
        }
        return product.masks
    }

    /// One `he` call: `encrypt` the inputs (rows × features) for `plan`, the server's product,
    /// `decrypt` (rows × outputs), with its counters.
    private func encryptedCall<T>(_ name: String, _ direction: ProductDirection, rows: Int, outputs: Int, plan: CallPlan,
                                  encrypt: () -> EncryptedMatrix, decrypt: (EncryptedProduct) throws -> [T]) throws -> [T] {
        var t = ProcessInfo.processInfo.systemUptime
        let request = encrypt().serialized()
        var now = ProcessInfo.processInfo.systemUptime
        statistics.encryptSeconds += now - t
        t = now
        let response = try transport.multiply(module: name, direction: direction, request: request,
                                              responseBytes: EncryptedProduct.byteCount(plan: plan, rows: rows, outputs: outputs))
        now = ProcessInfo.processInfo.systemUptime
        statistics.serverSeconds += now - t
        t = now
        let product = try EncryptedProduct(serialized: response)
        guard product.rows == rows, product.outputs == outputs else {
            throw EncryptedBackendError.failed(module: name, reason: "the server returned \(product.rows) × \(product.outputs) values for \(rows) × \(outputs)")
        }
        let decrypted = try decrypt(product)
        statistics.decryptSeconds += ProcessInfo.processInfo.systemUptime - t
        statistics.calls += 1
        statistics.bytesSent += request.count
        statistics.bytesReceived += response.count
        if !statistics.parameterSets.contains(plan.parameters.name) { statistics.parameterSets.append(plan.parameters.name) }
        lastPlan = plan
        return decrypted
    }

    /// x̂·ŵᵀ through the encrypted product: the raw Σ x_q·w_q come back from the server.
    func heProduct(_ name: String, _ direction: ProductDirection, _ x: QuantizedRows, _ w: QuantizedRows,
                          _ info: PublicWeightInfo) -> [Float] {
        let rows = x.rows
        // After a failed call the pass is already lost (the step stops on `failure`): no more
        // requests, so a dead server costs one call's retries, not every remaining layer's.
        if failure != nil { return [Float](repeating: 0, count: rows * w.rows) }
        var acc: [Double]
        do {
            let maxAbs = x.quantizers.map { max(abs($0.qMin), abs($0.qMax)) }.max() ?? 0
            let plan = try CallPlan.choose(for: info.shape(rows: rows, maxAbsInput: maxAbs))
            let values = x.values.map { Int64($0) }
            acc = try encryptedCall(name, direction, rows: rows, outputs: w.rows, plan: plan, encrypt: {
                client.encrypt(values, rows: rows, features: x.columns, plan: plan)
            }, decrypt: { client.decrypt($0, plan: plan) }).map { Double($0) }
            statistics.inputValues += rows * x.columns
            statistics.outputValues += rows * w.rows
        } catch {
            // Nothing falls back to clear computation: record the failure, return zeros, and let
            // the step stop on it.
            if failure == nil { failure = (error as? EncryptedBackendError) ?? .failed(module: name, reason: "\(error)") }
            return [Float](repeating: 0, count: rows * w.rows)
        }
        return IntegerMatmul.finish(raw: &acc, x, w)
    }
}
