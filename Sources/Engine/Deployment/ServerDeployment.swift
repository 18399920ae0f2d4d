import FHE
import Foundation

// The server side in one place: the remote modules' weights and the request handling shared
// by the in-process server of `execute` and `nb serve` (`he` and masked routes), the loaded
// server folder, and the errors a request can get.

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
    public func multiply(module: String, direction: ProductDirection, request: [UInt8], responseBytes: Int) throws -> [UInt8] {
        try weights.respond(module: module, direction: direction, request: request)
    }
    public func multiplyMasked(module: String, direction: ProductDirection, request: [UInt8], responseBytes: Int) throws -> [UInt8] {
        try weights.respondMasked(module: module, direction: direction, request: request)
    }
}

/// The server's side of a deployment, loaded read-only from `server/`: the public manifest and
/// the integer weights, laid out for the FHE product. Stateless: any number of replicas can
/// load the same folder.
public final class ServerDeployment: @unchecked Sendable {
    public let directory: URL
    public let manifest: ServerManifest
    public let weights: RemoteModuleWeights
    /// `GET /v1/modules`'s body: the manifest plus the deployment id.
    public let modulesJSON: Data

    /// Loads `deployment/<name>` or its `server/` folder; checks the weights' SHA-256, every
    /// module's tensors, shapes and 8-bit range against the manifest.
    public init(path: URL) throws {
        let dir = try Deployment.folder(DeploymentLayout.serverFolder, of: path, marker: DeploymentLayout.serverManifest)
        let manifestURL = dir.appendingPathComponent(DeploymentLayout.serverManifest)
        let manifest = try Deployment.readJSON(ServerManifest.self, from: manifestURL)
        guard manifest.format == ServerManifest.formatName, manifest.version == 1 else {
            throw DeploymentError.notADeployment(path: manifestURL.path, reason: "format \(manifest.format) version \(manifest.version), expected \(ServerManifest.formatName) version 1")
        }
        for m in manifest.modules { try m.validate() }
        guard !manifest.weightsFile.contains("/") else { throw DeploymentError.invalid(manifestURL.path, "weightsFile must be a file name") }
        let weightsURL = dir.appendingPathComponent(manifest.weightsFile)
        let digest: String
        do { digest = try SHA256Digest.hex(fileAt: weightsURL) } catch {
            throw DeploymentError.unreadable(path: weightsURL.path, reason: "\(error.localizedDescription)")
        }
        guard digest == manifest.weightsSHA256 else {
            throw DeploymentError.mismatch("\(weightsURL.path): SHA-256 \(digest) does not match the manifest's \(manifest.weightsSHA256)")
        }
        let file = try SafeTensorsFile(url: weightsURL)
        var modules: [String: (forward: ServerWeights, backward: ServerWeights)] = [:]
        for m in manifest.modules {
            func load(_ suffix: String, _ w: WeightMetadata) throws -> ServerWeights {
                let name = m.name + "." + suffix
                guard file.shape(of: name) == [w.outputs, w.inputs] else {
                    throw DeploymentError.mismatch("\(weightsURL.path): tensor '\(name)' has shape \(file.shape(of: name).map { "\($0)" } ?? "none"), the manifest says [\(w.outputs), \(w.inputs)]")
                }
                let values = try file.int8(name)
                let limit = (1 << (w.bits - 1)) - 1
                let server = try ServerWeights(outputs: w.outputs, inputs: w.inputs) { Int(values[$0 * w.inputs + $1]) }
                guard server.maxAbs <= limit else {
                    throw DeploymentError.mismatch("\(weightsURL.path): tensor '\(name)' holds |w| = \(server.maxAbs), beyond \(w.bits) bits")
                }
                guard server.maxRowL1 == w.maxRowL1, abs(server.maxRowL2 - w.maxRowL2) <= 1e-9 * max(1, w.maxRowL2) else {
                    throw DeploymentError.mismatch("\(weightsURL.path): tensor '\(name)' does not have the norms the manifest publishes")
                }
                return server
            }
            modules[m.name] = (try load("forward", m.forward), try load("backward", m.backward))
        }
        (self.directory, self.manifest, self.weights) = (dir, manifest, RemoteModuleWeights(modules: modules))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        modulesJSON = try encoder.encode(ModulesResponse(deploymentID: manifest.deploymentID, manifest: manifest))
    }

    /// One product request: the handling shared by the in-process and the HTTP server.
    public func handle(module: String, direction: ProductDirection, request: [UInt8]) throws(RemoteRequestError) -> [UInt8] {
        try weights.respond(module: module, direction: direction, request: request)
    }

    /// One online (masked protocol) request.
    public func handleMasked(module: String, direction: ProductDirection, request: [UInt8]) throws(RemoteRequestError) -> [UInt8] {
        try weights.respondMasked(module: module, direction: direction, request: request)
    }
}

/// `GET /v1/modules`.
public struct ModulesResponse: Codable, Equatable, Sendable {
    public var deploymentID: String
    public var manifest: ServerManifest
}

/// Why a product request was refused: each maps to one HTTP status.
public enum RemoteRequestError: Error, CustomStringConvertible, Equatable {
    /// 404.
    case unknownModule(String)
    /// 400: not a well-formed input message (magic, version, parameter id, lengths).
    case malformed(String)
    /// 422: well-formed, but its shape does not fit the module.
    case wrongShape(String)

    public var httpStatus: Int {
        switch self {
        case .unknownModule: return 404
        case .malformed: return 400
        case .wrongShape: return 422
        }
    }

    public var description: String {
        switch self {
        case .unknownModule(let m): return "no remote module named \(m)"
        case .malformed(let s): return "malformed request: \(s)"
        case .wrongShape(let s): return "wrong shape: \(s)"
        }
    }
}

/// What a product request's header admits: its whole length and the memory its product takes.
public struct RequestAdmission: Equatable, Sendable {
    /// The request body's exact length (what its header declares).
    public var messageBytes: Int
    /// An upper bound of the server's memory for it, the body included.
    public var peakBytes: Int
}

extension RemoteModuleWeights {
    /// Inputs of the encrypted modes are quantized to at most 8 bits: no legitimate request
    /// carries wider products.
    public static let maxInputBits = 8

    /// Bytes of a request's header: enough for ``admit(module:direction:masked:prefix:)``.
    public static func headerBytes(masked: Bool) -> Int { masked ? MaskedInput.Shape.byteCount : EncryptedMatrix.Shape.byteCount }

    /// Checks a request from its first ``headerBytes(masked:)`` bytes, before its body is read:
    /// the module, a well-formed header, the shape, and a plan this server would choose itself
    /// (so the sender cannot make the answer or the work grow by asking for more limbs, bits or
    /// a larger parameter set than the weights need).
    public func admit(module: String, direction: ProductDirection, masked: Bool, prefix: [UInt8]) throws(RemoteRequestError) -> RequestAdmission {
        guard let m = modules[module] else { throw .unknownModule(module) }
        let w = direction == .forward ? m.forward : m.backward
        if masked {
            let shape: MaskedInput.Shape
            do { shape = try MaskedInput.Shape(prefix: prefix) } catch { throw .malformed(error.description) }
            try checkMasked(shape, w, module, direction)
            return RequestAdmission(messageBytes: shape.messageBytes, peakBytes: FHEServer.peakBytes(shape, outputs: w.outputs))
        }
        let shape: EncryptedMatrix.Shape
        do { shape = try EncryptedMatrix.Shape(prefix: prefix) } catch { throw .malformed(error.description) }
        try checkEncrypted(shape, w, module, direction)
        return RequestAdmission(messageBytes: shape.messageBytes, peakBytes: FHEServer.peakBytes(shape, outputs: w.outputs))
    }

    private func checkEncrypted(_ shape: EncryptedMatrix.Shape, _ w: ServerWeights, _ module: String, _ direction: ProductDirection) throws(RemoteRequestError) {
        guard shape.features == w.inputs else {
            throw .wrongShape("the ciphertext has \(shape.features) features; \(module) \(direction.rawValue) takes \(w.inputs)")
        }
        if let why = CallPlan.refusal(of: shape, maxRowL1: w.maxRowL1, maxRowL2: w.maxRowL2, maxInputBits: Self.maxInputBits) {
            throw .wrongShape(why)
        }
    }

    private func checkMasked(_ shape: MaskedInput.Shape, _ w: ServerWeights, _ module: String, _ direction: ProductDirection) throws(RemoteRequestError) {
        guard shape.features == w.inputs else {
            throw .wrongShape("the padded input has \(shape.features) features; \(module) \(direction.rawValue) takes \(w.inputs)")
        }
        let widest = PublicWeightInfo(w).shape(rows: 1, maxAbsInput: Double((1 << Self.maxInputBits) - 1))
        let most = (try? CallPlan.messageBits(for: widest)) ?? MaskedProduct.bitRange.upperBound
        guard shape.bits <= most else {
            throw .wrongShape("the padded input is carried mod 2^\(shape.bits); products of \(Self.maxInputBits)-bit inputs by these weights need at most \(most) bits")
        }
    }

    /// One request, with the error a server reports for it: the handling shared by the
    /// in-process server of `execute` and `nb serve`.
    public func respond(module: String, direction: ProductDirection, request: [UInt8]) throws(RemoteRequestError) -> [UInt8] {
        guard let m = modules[module] else { throw .unknownModule(module) }
        let w = direction == .forward ? m.forward : m.backward
        let input: EncryptedMatrix
        do { input = try EncryptedMatrix(serialized: request) } catch { throw .malformed(error.description) }
        try checkEncrypted(input.shape, w, module, direction)
        do { return try FHEServer.multiply(input, by: w).serialized() } catch {
            throw Self.requestError(error)
        }
    }

    /// One online request of the masked protocol (W·u mod 2^k), with the error a server
    /// reports for it.
    public func respondMasked(module: String, direction: ProductDirection, request: [UInt8]) throws(RemoteRequestError) -> [UInt8] {
        guard let m = modules[module] else { throw .unknownModule(module) }
        let w = direction == .forward ? m.forward : m.backward
        let input: MaskedInput
        do { input = try MaskedInput(serialized: request) } catch { throw .malformed(error.description) }
        try checkMasked(MaskedInput.Shape(bits: input.bits, rows: input.rows, features: input.features), w, module, direction)
        do { return try FHEServer.multiply(input, by: w).serialized() } catch {
            throw Self.requestError(error)
        }
    }

    private static func requestError(_ error: FHEServerError) -> RemoteRequestError {
        switch error {
        case .wire(let e): return .malformed(e.description)
        case .shapeMismatch(let s): return .wrongShape(s)
        case .weightOutOfRange, .weightOutsideByte: return .wrongShape(error.description)
        }
    }
}
