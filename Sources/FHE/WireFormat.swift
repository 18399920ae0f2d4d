import Foundation

/// Why bytes were refused as an nb ciphertext, key file or parameter set.
public enum FHEWireError: Error, CustomStringConvertible, Equatable {
    case truncated(what: String, needed: Int, available: Int)
    case badMagic(expected: String)
    case unsupportedVersion(UInt16)
    case unknownParameters(UInt16)
    case wrongKind(expected: String, got: UInt8)
    case invalidField(name: String, value: String)
    case shapeMismatch(String)

    public var description: String {
        switch self {
        case .truncated(let w, let n, let a): return "truncated \(w): needs \(n) bytes, \(a) left"
        case .badMagic(let m): return "not an nb message (magic \"\(m)\" expected)"
        case .unsupportedVersion(let v): return "wire format version \(v) is not supported (this build reads version \(FHEWire.version))"
        case .unknownParameters(let id): return "unknown FHE parameter set id \(id) (known: \(FHEParameters.all.map { "\($0.id) = \($0.name)" }.joined(separator: ", ")))"
        case .wrongKind(let e, let g): return "expected a \(e) message, got kind \(g)"
        case .invalidField(let n, let v): return "invalid \(n): \(v)"
        case .shapeMismatch(let s): return "shape mismatch: \(s)"
        }
    }
}

public enum FHEWire {
    public static let version: UInt16 = 2
    static let magic: [UInt8] = Array("NBCT".utf8)
    static let kindParameters: UInt8 = 1, kindInput: UInt8 = 2, kindOutput: UInt8 = 3
    static let kindMaskedInput: UInt8 = 4, kindMaskedOutput: UInt8 = 5
    /// Refuses shapes beyond these before allocating anything.
    public static let maxRows = 1 << 20, maxFeatures = 1 << 16
}

struct ByteWriter {
    var data: [UInt8] = []
    mutating func bytes(_ b: [UInt8]) { data.append(contentsOf: b) }
    mutating func u8(_ v: UInt8) { data.append(v) }
    mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { data.append(contentsOf: $0) } }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { data.append(contentsOf: $0) } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { data.append(contentsOf: $0) } }
}

struct ByteReader {
    let data: [UInt8]
    var offset = 0
    init(_ data: [UInt8]) { self.data = data }
    var remaining: Int { data.count - offset }

    mutating func bytes(_ n: Int, _ what: String = "header") throws(FHEWireError) -> [UInt8] {
        guard n >= 0, n <= remaining else { throw .truncated(what: what, needed: n, available: remaining) }
        defer { offset += n }
        return Array(data[offset..<(offset + n)])
    }

    mutating func integer<T: FixedWidthInteger>(_ type: T.Type) throws(FHEWireError) -> T {
        let n = MemoryLayout<T>.size
        guard n <= remaining else { throw .truncated(what: "header", needed: n, available: remaining) }
        var v: T = 0
        for i in 0..<n { v |= T(data[offset + i]) << (8 * i) }
        offset += n
        return v
    }
    mutating func u8() throws(FHEWireError) -> UInt8 { try integer(UInt8.self) }
    mutating func u16() throws(FHEWireError) -> UInt16 { try integer(UInt16.self) }
    mutating func u32() throws(FHEWireError) -> UInt32 { try integer(UInt32.self) }
    mutating func u64() throws(FHEWireError) -> UInt64 { try integer(UInt64.self) }

    mutating func header(kind: UInt8, name: String) throws(FHEWireError) {
        guard remaining >= 4, Array(data[0..<4]) == FHEWire.magic else { throw .badMagic(expected: "NBCT") }
        offset = 4
        let v = try u16()
        guard v == FHEWire.version else { throw .unsupportedVersion(v) }
        let k = try u8()
        guard k == kind else { throw .wrongKind(expected: name, got: k) }
    }
}

func packedByteCount(_ n: Int, bits: Int) -> Int { (n * bits + 7) / 8 }

extension FHEParameters {
    /// The public parameters, versioned binary (no key material: there is none in a set).
    public func serialized() -> [UInt8] {
        var w = ByteWriter()
        w.bytes(FHEWire.magic); w.u16(FHEWire.version); w.u8(FHEWire.kindParameters)
        w.u16(id); w.u32(UInt32(ringDegree)); w.u8(UInt8(glweDimension)); w.u8(UInt8(modulusBits)); w.u8(secret.rawValue)
        w.u64(noiseStandardDeviation.bitPattern); w.u16(UInt16(securityBits))
        w.u8(UInt8(maxInputBits)); w.u8(UInt8(maxWeightBits)); w.u32(UInt32(maxInnerDimension))
        return w.data
    }

    /// Reads a set written by ``serialized()``; it must equal one this build offers.
    public init(serialized bytes: [UInt8]) throws(FHEWireError) {
        var r = ByteReader(bytes)
        try r.header(kind: FHEWire.kindParameters, name: "parameter set")
        let id = try r.u16()
        guard let known = FHEParameters.withID(id) else { throw .unknownParameters(id) }
        let n = Int(try r.u32()), k = Int(try r.u8()), q = Int(try r.u8())
        let secret = try r.u8()
        let sigma = Double(bitPattern: try r.u64())
        let security = Int(try r.u16())
        let (ib, wb, kd) = (Int(try r.u8()), Int(try r.u8()), Int(try r.u32()))
        guard r.remaining == 0 else { throw .invalidField(name: "length", value: "\(r.remaining) trailing bytes") }
        guard n == known.ringDegree, k == known.glweDimension, q == known.modulusBits, secret == known.secret.rawValue,
              sigma == known.noiseStandardDeviation, security == known.securityBits, ib == known.maxInputBits,
              wb == known.maxWeightBits, kd == known.maxInnerDimension
        else { throw .invalidField(name: "parameter set \(id)", value: "its fields differ from \(known.name) in this build") }
        self = known
    }
}

/// What the client sends: the seed of the masks and the bodies of K ciphertext rows
/// (one per input feature), each holding the feature's value for R tokens at bodyBits bits.
/// Token r lives in coefficient r mod N of ciphertext group r / N.
public struct EncryptedMatrix: Sendable, Equatable {
    public var parametersID: UInt16
    public var bodyBits: Int
    public var maskLimbs: Int
    public var outputBodyBits: Int
    public var outputMaskBits: Int
    /// R tokens, K features.
    public var rows: Int
    public var features: Int
    public var seed: MaskSeed
    /// K × R values, feature-major, packed LSB-first at bodyBits bits.
    public var body: [UInt8]

    public var parameters: FHEParameters { FHEParameters.withID(parametersID)! }
    public var groups: Int { (rows + parameters.ringDegree - 1) / parameters.ringDegree }

    public func serialized() -> [UInt8] {
        var w = ByteWriter()
        w.data.reserveCapacity(Shape.byteCount + body.count)
        w.bytes(FHEWire.magic); w.u16(FHEWire.version); w.u8(FHEWire.kindInput)
        w.u16(parametersID); w.u8(UInt8(bodyBits)); w.u8(UInt8(maskLimbs)); w.u8(UInt8(outputBodyBits)); w.u8(UInt8(outputMaskBits))
        w.u32(UInt32(rows)); w.u32(UInt32(features)); w.bytes(seed.bytes)
        w.u64(UInt64(body.count)); w.bytes(body)
        return w.data
    }

    public init(parametersID: UInt16, bodyBits: Int, maskLimbs: Int, outputBodyBits: Int, outputMaskBits: Int, rows: Int, features: Int,
                seed: MaskSeed, body: [UInt8]) {
        (self.parametersID, self.bodyBits, self.maskLimbs, self.outputBodyBits, self.outputMaskBits) =
            (parametersID, bodyBits, maskLimbs, outputBodyBits, outputMaskBits)
        (self.rows, self.features, self.seed, self.body) = (rows, features, seed, body)
    }

    public init(serialized bytes: [UInt8]) throws(FHEWireError) {
        var r = ByteReader(bytes)
        let shape = try Shape.read(&r)
        (parametersID, bodyBits, maskLimbs, outputBodyBits, outputMaskBits, rows, features) =
            (shape.parametersID, shape.bodyBits, shape.maskLimbs, shape.outputBodyBits, shape.outputMaskBits, shape.rows, shape.features)
        seed = MaskSeed(bytes: try r.bytes(MaskSeed.byteCount, "mask seed"))
        // Compared as read (a length past Int.max must be an error, not a trap).
        let count = try r.u64()
        guard count == UInt64(shape.bodyBytes) else {
            throw .shapeMismatch("body of \(count) bytes, \(rows) × \(features) values at \(bodyBits) bits need \(shape.bodyBytes)")
        }
        body = try r.bytes(shape.bodyBytes, "ciphertext body")
        guard r.remaining == 0 else { throw .invalidField(name: "length", value: "\(r.remaining) trailing bytes") }
    }

    public var shape: Shape {
        Shape(parametersID: parametersID, bodyBits: bodyBits, maskLimbs: maskLimbs, outputBodyBits: outputBodyBits,
              outputMaskBits: outputMaskBits, rows: rows, features: features)
    }

    /// An input message's fields but its seed and body: what its first ``Shape/byteCount``
    /// bytes say, enough to check its plan and bound the work it asks for before reading on.
    public struct Shape: Sendable, Equatable {
        public var parametersID: UInt16
        public var bodyBits: Int, maskLimbs: Int
        public var outputBodyBits: Int, outputMaskBits: Int
        public var rows: Int, features: Int

        /// magic, version, kind, set, limbs and bits, rows, features, seed, body length.
        public static let byteCount = 4 + 2 + 1 + 2 + 4 + 4 + 4 + MaskSeed.byteCount + 8

        public var parameters: FHEParameters { FHEParameters.withID(parametersID)! }
        public var bodyBytes: Int { packedByteCount(rows * features, bits: bodyBits) }
        /// The whole message's length.
        public var messageBytes: Int { Self.byteCount + bodyBytes }

        /// Reads and checks the fields from the first ``byteCount`` bytes of a message (more
        /// may follow); the body length must be the one the shape needs.
        public init(prefix: [UInt8]) throws(FHEWireError) {
            var r = ByteReader(prefix)
            self = try Self.read(&r)
            r.offset += MaskSeed.byteCount
            let count = try r.u64()
            guard count == UInt64(bodyBytes) else {
                throw .shapeMismatch("body of \(count) bytes, \(rows) × \(features) values at \(bodyBits) bits need \(bodyBytes)")
            }
        }

        init(parametersID: UInt16, bodyBits: Int, maskLimbs: Int, outputBodyBits: Int, outputMaskBits: Int, rows: Int, features: Int) {
            (self.parametersID, self.bodyBits, self.maskLimbs, self.outputBodyBits, self.outputMaskBits, self.rows, self.features) =
                (parametersID, bodyBits, maskLimbs, outputBodyBits, outputMaskBits, rows, features)
        }

        /// The header up to the seed (the reader is left at the seed).
        static func read(_ r: inout ByteReader) throws(FHEWireError) -> Shape {
            try r.header(kind: FHEWire.kindInput, name: "encrypted input")
            let parametersID = try r.u16()
            guard FHEParameters.withID(parametersID) != nil else { throw .unknownParameters(parametersID) }
            let bodyBits = Int(try r.u8()), maskLimbs = Int(try r.u8())
            let outputBodyBits = Int(try r.u8()), outputMaskBits = Int(try r.u8())
            // 0 body bits or mask limbs: that part is not multiplied (a hinted call sends bodies only; a hint
            // request asks for the masks' product only), and its output has 0 bits.
            guard bodyBits == 0 || (bodyBits % 8 == 0 && (8...64).contains(bodyBits)) else {
                throw .invalidField(name: "body bits", value: "\(bodyBits), expected 0 or a multiple of 8 in 8…64")
            }
            guard (0...4).contains(maskLimbs) else { throw .invalidField(name: "mask limbs", value: "\(maskLimbs), expected 0…4") }
            guard bodyBits + maskLimbs > 0 else { throw .invalidField(name: "body bits and mask limbs", value: "both 0: nothing to multiply") }
            guard bodyBits == 0 ? outputBodyBits == 0 : (1...64).contains(outputBodyBits) else {
                throw .invalidField(name: "output body bits", value: "\(outputBodyBits), expected \(bodyBits == 0 ? "0 with 0 body bits" : "1…64")")
            }
            guard maskLimbs == 0 ? outputMaskBits == 0 : (1...64).contains(outputMaskBits) else {
                throw .invalidField(name: "output mask bits", value: "\(outputMaskBits), expected \(maskLimbs == 0 ? "0 with 0 mask limbs" : "1…64")")
            }
            let rows = Int(try r.u32()), features = Int(try r.u32())
            guard (1...FHEWire.maxRows).contains(rows) else { throw .invalidField(name: "rows", value: "\(rows), expected 1…\(FHEWire.maxRows)") }
            guard (1...FHEWire.maxFeatures).contains(features) else { throw .invalidField(name: "features", value: "\(features), expected 1…\(FHEWire.maxFeatures)") }
            guard r.remaining >= MaskSeed.byteCount + 8 else { throw .truncated(what: "header", needed: MaskSeed.byteCount + 8, available: r.remaining) }
            return Shape(parametersID: parametersID, bodyBits: bodyBits, maskLimbs: maskLimbs, outputBodyBits: outputBodyBits,
                         outputMaskBits: outputMaskBits, rows: rows, features: features)
        }
    }
}

/// What the server returns: for each of O outputs, the product's mask polynomials (one per
/// group, N coefficients, at outputMaskBits) and its bodies for the R tokens (at outputBodyBits).
public struct EncryptedProduct: Sendable, Equatable {
    public var parametersID: UInt16
    public var outputBodyBits: Int
    public var outputMaskBits: Int
    public var rows: Int
    public var outputs: Int
    /// O × groups × N values, packed.
    public var masks: [UInt8]
    /// O × R values, packed.
    public var bodies: [UInt8]

    public var parameters: FHEParameters { FHEParameters.withID(parametersID)! }
    public var groups: Int { (rows + parameters.ringDegree - 1) / parameters.ringDegree }

    /// The serialized length of the answer to a request of `rows` tokens under `plan`, by a
    /// matrix of `outputs` rows: what a client expects, to refuse any other before reading it.
    public static func byteCount(plan: CallPlan, rows: Int, outputs: Int) -> Int {
        byteCount(parameters: plan.parameters, outputBodyBits: plan.outputBodyBits, outputMaskBits: plan.requestOutputMaskBits, rows: rows, outputs: outputs)
    }

    /// The same for a hint request (``FHEClient/hintRequest(features:plan:seed:)``): masks only.
    public static func hintByteCount(plan: CallPlan, outputs: Int) -> Int {
        byteCount(parameters: plan.parameters, outputBodyBits: 0, outputMaskBits: plan.outputMaskBits, rows: plan.parameters.ringDegree, outputs: outputs)
    }

    static func byteCount(parameters p: FHEParameters, outputBodyBits: Int, outputMaskBits: Int, rows: Int, outputs: Int) -> Int {
        let columns = ((rows + p.ringDegree - 1) / p.ringDegree) * p.ringDegree
        return 4 + 2 + 1 + 2 + 1 + 1 + 4 + 4 + 8 + packedByteCount(outputs * columns, bits: outputMaskBits) + 8 + packedByteCount(outputs * rows, bits: outputBodyBits)
    }

    public init(parametersID: UInt16, outputBodyBits: Int, outputMaskBits: Int, rows: Int, outputs: Int, masks: [UInt8], bodies: [UInt8]) {
        (self.parametersID, self.outputBodyBits, self.outputMaskBits, self.rows, self.outputs, self.masks, self.bodies) =
            (parametersID, outputBodyBits, outputMaskBits, rows, outputs, masks, bodies)
    }

    public func serialized() -> [UInt8] {
        var w = ByteWriter()
        w.data.reserveCapacity(4 + 2 + 1 + 2 + 2 + 8 + 16 + masks.count + bodies.count)
        w.bytes(FHEWire.magic); w.u16(FHEWire.version); w.u8(FHEWire.kindOutput)
        w.u16(parametersID); w.u8(UInt8(outputBodyBits)); w.u8(UInt8(outputMaskBits))
        w.u32(UInt32(rows)); w.u32(UInt32(outputs))
        w.u64(UInt64(masks.count)); w.bytes(masks)
        w.u64(UInt64(bodies.count)); w.bytes(bodies)
        return w.data
    }

    public init(serialized bytes: [UInt8]) throws(FHEWireError) {
        var r = ByteReader(bytes)
        try r.header(kind: FHEWire.kindOutput, name: "encrypted product")
        parametersID = try r.u16()
        guard let p = FHEParameters.withID(parametersID) else { throw .unknownParameters(parametersID) }
        outputBodyBits = Int(try r.u8()); outputMaskBits = Int(try r.u8())
        // 0 bits: that part was not asked for (a hinted call's masks, a hint's bodies).
        guard (0...64).contains(outputBodyBits), (0...64).contains(outputMaskBits), outputBodyBits + outputMaskBits > 0 else {
            throw .invalidField(name: "output bits", value: "\(outputBodyBits)/\(outputMaskBits), expected 0…64, not both 0")
        }
        rows = Int(try r.u32()); outputs = Int(try r.u32())
        guard (1...FHEWire.maxRows).contains(rows) else { throw .invalidField(name: "rows", value: "\(rows)") }
        guard (1...FHEWire.maxFeatures).contains(outputs) else { throw .invalidField(name: "outputs", value: "\(outputs)") }
        let groups = (rows + p.ringDegree - 1) / p.ringDegree
        let maskCount = try r.u64()
        let maskExpected = packedByteCount(outputs * groups * p.ringDegree, bits: outputMaskBits)
        guard maskCount == UInt64(maskExpected) else { throw .shapeMismatch("masks of \(maskCount) bytes, expected \(maskExpected)") }
        masks = try r.bytes(maskExpected, "product masks")
        let bodyCount = try r.u64()
        let bodyExpected = packedByteCount(outputs * rows, bits: outputBodyBits)
        guard bodyCount == UInt64(bodyExpected) else { throw .shapeMismatch("bodies of \(bodyCount) bytes, expected \(bodyExpected)") }
        bodies = try r.bytes(bodyExpected, "product bodies")
        guard r.remaining == 0 else { throw .invalidField(name: "length", value: "\(r.remaining) trailing bytes") }
    }
}
