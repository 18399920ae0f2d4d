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

/// Where encrypted requests go: the in-process server (`execute`) or an HTTP server (`remote`).
public protocol EncryptedTransport: AnyObject {
    /// The serialized ``EncryptedProduct`` for a serialized ``EncryptedMatrix``.
    func multiply(module: String, direction: ProductDirection, request: [UInt8]) throws -> [UInt8]
}

/// The server's side of a hybrid model: the remote modules' quantized weights, W for the
/// forward and Wᵀ for the backward, as the FHE server multiplies them. No key, no client data.
public final class RemoteModuleWeights: @unchecked Sendable {
    public let modules: [String: (forward: ServerWeights, backward: ServerWeights)]

    public init(modules: [String: (forward: ServerWeights, backward: ServerWeights)]) { self.modules = modules }

    public func info(_ name: String, _ direction: ProductDirection) -> PublicWeightInfo? {
        modules[name].map { PublicWeightInfo(direction == .forward ? $0.forward : $0.backward) }
    }

}

/// The in-process server of the `execute` mode.
public final class InProcessTransport: EncryptedTransport {
    public let weights: RemoteModuleWeights
    public init(weights: RemoteModuleWeights) { self.weights = weights }
    public func multiply(module: String, direction: ProductDirection, request: [UInt8]) throws -> [UInt8] {
        try weights.respond(module: module, direction: direction, request: request)
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

    public init() {}

    /// self − earlier (counters since `earlier`).
    public func since(_ earlier: FHEStatistics) -> FHEStatistics {
        var d = self
        d.calls -= earlier.calls; d.inputValues -= earlier.inputValues; d.outputValues -= earlier.outputValues
        d.bytesSent -= earlier.bytesSent; d.bytesReceived -= earlier.bytesReceived
        d.encryptSeconds -= earlier.encryptSeconds; d.serverSeconds -= earlier.serverSeconds; d.decryptSeconds -= earlier.decryptSeconds
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
    struct Module {
        var forward: QuantizedRows   // header only: scales and row sums of W
        var backward: QuantizedRows  // of Wᵀ
        var forwardInfo: PublicWeightInfo
        var backwardInfo: PublicWeightInfo
    }
    let modules: [String: Module]
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
    public init(plan: HybridPlan, metadata: [RemoteModuleMetadata], client: FHEClient, transport: EncryptedTransport) throws(EncryptedBackendError) {
        let s = plan.scheme
        guard s.symmetricWeights, s.nBits <= 8 else {
            throw .unsupportedScheme("encrypted modes take symmetric weights of at most 8 bits; the plan's scheme is \(s.nBits)-bit \(s.description). Compile with n_bits ≤ 8 (or use mode: disable)")
        }
        (self.plan, self.client, self.transport) = (plan, client, transport)
        var modules: [String: Module] = [:]
        for m in metadata {
            modules[m.name] = Module(forward: m.forward.header, backward: m.backward.header, forwardInfo: m.forward.info, backwardInfo: m.backward.info)
        }
        self.modules = modules
        // Every module must have a plan for the widest inputs its scheme produces.
        let widest = Double(s.symmetricActivations ? (1 << (s.nBits - 1)) - 1 : (1 << s.nBits) - 1)
        for name in plan.remoteModules {
            guard let m = modules[name] else { throw .unknownModule(name) }
            for (d, info) in [(ProductDirection.forward, m.forwardInfo), (.backward, m.backwardInfo)] {
                do { _ = try CallPlan.choose(for: info.shape(rows: 1, maxAbsInput: widest)) } catch {
                    throw .noPlan(module: name, direction: d, reason: error.description)
                }
            }
        }
    }

    /// The `execute` mode: the in-process server on this model's quantized weights.
    public convenience init(plan: HybridPlan, model: TrainableModel, keyring: Keyring) throws {
        let q = try QuantizedLinearBackend(plan: plan, model: model)
        let (weights, metadata) = try q.remoteModules()
        try self.init(plan: q.plan, metadata: metadata, client: FHEClient(keyring: keyring), transport: InProcessTransport(weights: weights))
    }

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

    /// x̂·ŵᵀ through the encrypted product: the raw Σ x_q·w_q come back from the server.
    func encryptedProduct(_ name: String, _ direction: ProductDirection, _ x: QuantizedRows, _ w: QuantizedRows,
                          _ info: PublicWeightInfo) -> [Float] {
        let rows = x.rows
        // After a failed call the pass is already lost (the step stops on `failure`): no more
        // requests, so a dead server costs one call's retries, not every remaining layer's.
        if failure != nil { return [Float](repeating: 0, count: rows * w.rows) }
        var acc: [Double]
        do {
            let maxAbs = x.quantizers.map { max(abs($0.qMin), abs($0.qMax)) }.max() ?? 0
            let plan = try CallPlan.choose(for: info.shape(rows: rows, maxAbsInput: maxAbs))
            var t = ProcessInfo.processInfo.systemUptime
            let integers = x.values.map { Int64($0) }
            let request = client.encrypt(integers, rows: rows, features: x.columns, plan: plan).serialized()
            var now = ProcessInfo.processInfo.systemUptime
            statistics.encryptSeconds += now - t
            t = now
            let response = try transport.multiply(module: name, direction: direction, request: request)
            now = ProcessInfo.processInfo.systemUptime
            statistics.serverSeconds += now - t
            t = now
            let product = try EncryptedProduct(serialized: response)
            guard product.rows == rows, product.outputs == w.rows else {
                throw EncryptedBackendError.failed(module: name, reason: "the server returned \(product.rows) × \(product.outputs) values for \(rows) × \(w.rows)")
            }
            acc = client.decrypt(product, plan: plan).map { Double($0) }
            statistics.decryptSeconds += ProcessInfo.processInfo.systemUptime - t
            statistics.calls += 1
            statistics.inputValues += rows * x.columns
            statistics.outputValues += rows * w.rows
            statistics.bytesSent += request.count
            statistics.bytesReceived += response.count
            if !statistics.parameterSets.contains(plan.parameters.name) { statistics.parameterSets.append(plan.parameters.name) }
            lastPlan = plan
        } catch {
            // Nothing falls back to clear computation: record the failure, return zeros, and let
            // the step stop on it.
            if failure == nil { failure = (error as? EncryptedBackendError) ?? .failed(module: name, reason: "\(error)") }
            return [Float](repeating: 0, count: rows * w.rows)
        }
        return IntegerMatmul.finish(raw: &acc, x, w)
    }
}
