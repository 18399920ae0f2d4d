import FHE
import Foundation

/// The public metadata of one direction of a remote module's integer weights: what a client
/// needs to plan its encrypted calls (shape, largest row norms) and to finish the products
/// (each row's scale and Σ_k w_q, for the zero-point correction). It says nothing about the
/// client's data: it is derived from the foundation model alone.
public struct WeightMetadata: Codable, Equatable, Sendable {
    public var outputs: Int
    public var inputs: Int
    public var maxRowL1: Double
    public var maxRowL2: Double
    /// Bits of the symmetric weights (zero point 0).
    public var bits: Int
    /// One scale per output row, or a single one shared by every row.
    public var scales: [Double]
    /// Σ_k w_q[o, k] per output row.
    public var rowSums: [Double]

    init(_ q: QuantizedRows, server: ServerWeights, bits: Int) {
        (outputs, inputs, maxRowL1, maxRowL2) = (server.outputs, server.inputs, server.maxRowL1, server.maxRowL2)
        self.bits = bits
        scales = q.quantizers.map(\.scale)
        rowSums = q.rowSums
    }

    public var info: PublicWeightInfo { PublicWeightInfo(outputs: outputs, inputs: inputs, maxRowL1: maxRowL1, maxRowL2: maxRowL2) }

    /// The weights as ``IntegerMatmul/finish(raw:_:_:)`` reads them: rows, scales and row
    /// sums, without the values.
    var header: QuantizedRows {
        let m = Double((1 << (bits - 1)) - 1)
        return QuantizedRows(rows: outputs, columns: inputs,
                             quantizers: scales.map { AffineQuantizer(scale: $0, zeroPoint: 0, qMin: -m, qMax: m) }, rowSums: rowSums)
    }

    /// Checks the numbers fit together (a manifest from disk or the network).
    func validate(_ what: String) throws(DeploymentError) {
        guard outputs > 0, inputs > 0, (2...8).contains(bits) else { throw .invalid(what, "shape \(outputs) × \(inputs), \(bits) bits") }
        guard scales.count == 1 || scales.count == outputs, rowSums.count == outputs else {
            throw .invalid(what, "\(scales.count) scales and \(rowSums.count) row sums for \(outputs) rows")
        }
        guard scales.allSatisfy({ $0 > 0 && $0.isFinite }), maxRowL1.isFinite, maxRowL2.isFinite, maxRowL1 >= 0, maxRowL2 >= 0 else {
            throw .invalid(what, "scales and norms must be finite and positive")
        }
    }
}

/// One remote module as the client sees it: its name and sizes, and the public metadata of
/// W (forward) and Wᵀ (backward).
public struct RemoteModuleMetadata: Codable, Equatable, Sendable {
    public var name: String
    public var inFeatures: Int
    public var outFeatures: Int
    public var forward: WeightMetadata
    public var backward: WeightMetadata

    public func weights(_ direction: ProductDirection) -> WeightMetadata { direction == .forward ? forward : backward }

    func validate() throws(DeploymentError) {
        try forward.validate("\(name) forward")
        try backward.validate("\(name) backward")
        guard forward.outputs == outFeatures, forward.inputs == inFeatures, backward.outputs == inFeatures, backward.inputs == outFeatures else {
            throw .invalid(name, "forward \(forward.outputs) × \(forward.inputs) and backward \(backward.outputs) × \(backward.inputs) do not fit \(inFeatures) → \(outFeatures)")
        }
    }
}

extension QuantizedRows {
    /// Rows known by their quantizers and row sums only (the values stay on the server).
    init(rows: Int, columns: Int, quantizers: [AffineQuantizer], rowSums: [Double]) {
        (self.rows, self.columns, self.values, self.quantizers, self.rowSums) = (rows, columns, [], quantizers, rowSums)
    }
}

extension QuantizedLinearBackend {
    /// The integer weights of this backend's quantization as the FHE server multiplies them,
    /// and the public metadata the client needs, by module (symmetric weights of at most 8 bits).
    public func remoteModules() throws(EncryptedBackendError) -> (weights: RemoteModuleWeights, metadata: [RemoteModuleMetadata]) {
        var modules: [String: (forward: ServerWeights, backward: ServerWeights)] = [:]
        var metadata: [RemoteModuleMetadata] = []
        for name in moduleNames {
            let l = layers[name]!
            func integers(_ q: QuantizedRows) throws(EncryptedBackendError) -> ServerWeights {
                do { return try ServerWeights(outputs: q.rows, inputs: q.columns) { Int(q.integer($0, $1)) } } catch {
                    throw .unsupportedWeights(module: name, reason: error.description)
                }
            }
            let f = try integers(l.forward), b = try integers(l.backward)
            modules[name] = (f, b)
            metadata.append(RemoteModuleMetadata(
                name: name, inFeatures: l.forward.columns, outFeatures: l.forward.rows,
                forward: WeightMetadata(l.forward, server: f, bits: plan.scheme.nBits),
                backward: WeightMetadata(l.backward, server: b, bits: plan.scheme.nBits)))
        }
        return (RemoteModuleWeights(modules: modules), metadata)
    }
}

public enum DeploymentError: Error, CustomStringConvertible, Equatable {
    case invalid(String, String)
    case unreadable(path: String, reason: String)
    case unwritable(path: String, reason: String)
    case notADeployment(path: String, reason: String)
    case privateKeyUnsafe(path: String)
    case mismatch(String)
    case weightsAbsent(module: String)

    public var description: String {
        switch self {
        case .invalid(let what, let why): return "\(what): \(why)"
        case .unreadable(let p, let r): return "\(p): \(r)"
        case .unwritable(let p, let r): return "cannot write \(p): \(r)"
        case .notADeployment(let p, let r): return "\(p) is not an nb deployment: \(r)"
        case .privateKeyUnsafe(let p): return "\(p): the secret key is readable by others (chmod 600 it)"
        case .mismatch(let s): return s
        case .weightsAbsent(let m): return "\(m): this model is a client deployment; the weights of this layer are on the server (use mode: remote)"
        }
    }
}
