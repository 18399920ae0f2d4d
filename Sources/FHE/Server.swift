import CFHEKernels
import Foundation

public enum FHEServerError: Error, CustomStringConvertible, Equatable {
    case weightOutOfRange(value: Int, row: Int, column: Int)
    /// The `bytes` kernel was asked for, and a weight is 128.
    case weightOutsideByte(row: Int, column: Int)
    case shapeMismatch(String)
    case wire(FHEWireError)

    public var description: String {
        switch self {
        case .weightOutOfRange(let v, let r, let c):
            return "weight \(v) at (\(r), \(c)) is outside ±128: the encrypted product takes weights of at most 8 bits (symmetric)"
        case .weightOutsideByte(let r, let c):
            return "weight 128 at (\(r), \(c)) does not fit the byte kernel's signed bytes (−128…127); use the int16 kernel"
        case .shapeMismatch(let s): return s
        case .wire(let e): return e.description
        }
    }
}

/// How the server's integer GEMM splits its operands (every product is the same integer mod
/// 2^64 either way; only the speed differs).
public enum ServerKernel: String, Sendable, CaseIterable {
    /// Balanced 16-bit digits times int16 weights: AVX2 `vpmaddwd`, or portable C.
    case int16
    /// Unsigned 8-bit digits times int8 weights: AVX-512 VNNI `vpdpbusd` (four products per
    /// 32-bit lane, twice `vpmaddwd`'s), or portable C. Needs every weight in [−128, 127].
    case bytes

    /// `bytes` where the CPU has AVX-512 VNNI, `int16` elsewhere.
    public static var automatic: ServerKernel { nb_fhe_has_avx512_vnni() != 0 ? .bytes : .int16 }

    /// Digits per value for its top `bits` bits.
    func limbs(bits: Int) -> Int { self == .bytes ? (bits + 7) / 8 : (bits + 15) / 16 }
}

/// A clear integer matrix W (outputs × inputs) held by the server, laid out for its GEMM
/// kernel, with the public norms the client plans its noise with.
public struct ServerWeights: Sendable {
    public let outputs: Int
    public let inputs: Int
    /// The kernel its layout is for.
    public let kernel: ServerKernel
    /// Inputs padded with zeros to the kernel's step (2 for int16, 4 for bytes).
    let paddedInputs: Int
    /// outputs × paddedInputs, row-major: int16 for `.int16` (`bytes` empty), int8 for `.bytes`
    /// (`values` empty).
    let values: [Int16]
    let bytes: [Int8]
    public let maxAbs: Int
    /// max over outputs of Σ|w| and of (Σ w²)^½.
    public let maxRowL1: Double
    public let maxRowL2: Double

    /// `kernel`: nil picks ``ServerKernel/automatic`` (int16 when a weight is 128, which no
    /// signed byte holds).
    public init(outputs: Int, inputs: Int, kernel: ServerKernel? = nil, value: (Int, Int) -> Int) throws(FHEServerError) {
        var v = [Int16](repeating: 0, count: outputs * inputs)
        var maxAbs = 0, l1 = 0.0, l2 = 0.0
        var at128: (Int, Int)?
        for o in 0..<outputs {
            var s1 = 0.0, s2 = 0.0
            for k in 0..<inputs {
                let w = value(o, k)
                guard w >= -128 && w <= 128 else { throw .weightOutOfRange(value: w, row: o, column: k) }
                v[o * inputs + k] = Int16(w)
                maxAbs = max(maxAbs, abs(w))
                if w == 128 && at128 == nil { at128 = (o, k) }
                s1 += Double(abs(w)); s2 += Double(w * w)
            }
            l1 = max(l1, s1); l2 = max(l2, s2)
        }
        var chosen = kernel ?? .automatic
        if chosen == .bytes, let (r, c) = at128 {
            guard kernel == nil else { throw .weightOutsideByte(row: r, column: c) }
            chosen = .int16
        }
        let step = chosen == .bytes ? 4 : 2
        let padded = (inputs + step - 1) / step * step
        var wide: [Int16] = [], narrow: [Int8] = []
        if chosen == .bytes {
            narrow = [Int8](repeating: 0, count: outputs * padded)
            for o in 0..<outputs { for k in 0..<inputs { narrow[o * padded + k] = Int8(v[o * inputs + k]) } }
        } else if padded == inputs {
            wide = v
        } else {
            wide = [Int16](repeating: 0, count: outputs * padded)
            for o in 0..<outputs { for k in 0..<inputs { wide[o * padded + k] = v[o * inputs + k] } }
        }
        (self.outputs, self.inputs, self.kernel, paddedInputs, values, bytes) = (outputs, inputs, chosen, padded, wide, narrow)
        (self.maxAbs, maxRowL1, maxRowL2) = (maxAbs, l1, l2.squareRoot())
    }

    public func value(_ o: Int, _ k: Int) -> Int {
        kernel == .bytes ? Int(bytes[o * paddedInputs + k]) : Int(values[o * paddedInputs + k])
    }

    /// Wᵀ (inputs × outputs), for the backward product.
    public func transposed() -> ServerWeights {
        try! ServerWeights(outputs: inputs, inputs: outputs, kernel: kernel) { self.value($1, $0) }
    }

    /// What the client needs to plan a call with inputs of magnitude at most `maxAbsInput`.
    public func shape(rows: Int, maxAbsInput: Double) -> ProductShape {
        ProductShape(rows: rows, innerDimension: inputs, maxAbsInput: maxAbsInput, maxRowL1: maxRowL1, maxRowL2: maxRowL2)
    }
}

/// The server side: the product of an encrypted matrix by clear integer weights, with no key.
///
/// For each output j and each ciphertext part (the seed-expanded masks of every group, and
/// the bodies of every token) it computes Σ_i w_ji·c_i mod 2^64: a wrapping GEMM of W by the
/// ciphertext matrix, run as products of digits (16-bit limbs on AVX2 `vpmaddwd`, or bytes on
/// AVX-512 VNNI `vpdpbusd`, see ``ServerKernel``), recombined mod 2^64. Then it rounds the
/// results to the requested bits.
public enum FHEServer {
    public static func multiply(_ input: EncryptedMatrix, by w: ServerWeights) throws(FHEServerError) -> EncryptedProduct {
        _ = AllocatorTuning.applied
        guard input.features == w.inputs else {
            throw .shapeMismatch("the ciphertext has \(input.features) features; this matrix takes \(w.inputs)")
        }
        let p = input.parameters, n = p.ringDegree, groups = input.groups
        let (rows, k, o) = (input.rows, input.features, w.outputs)
        // A part with 0 limbs is not asked for: a hinted call's masks (the client holds their
        // product), a hint request's bodies.
        let (withBodies, withMasks) = (input.bodyBits > 0, input.maskLimbs > 0)
        // Bodies: K × R values at bodyBits bits, split into digits.
        let bodyDigits = withBodies ? GEMMOperand(packed: input.body, rows: k, columns: rows, bits: input.bodyBits, kernel: w.kernel) : nil
        // Masks: K × (groups·N), expanded from the seed a few features at a time straight into
        // their digits.
        let columns = withMasks ? groups * n : 0
        let maskDigits = !withMasks ? nil : GEMMOperand(rows: k, columns: columns, bits: 16 * input.maskLimbs, kernel: w.kernel) { first, count, into in
            var expander = MaskExpander(seed: input.seed)
            for f in 0..<count {
                for g in 0..<groups {
                    let at = f * columns + g * n
                    expander.expand(group: g, feature: first + f, into: UnsafeMutableBufferPointer(rebasing: into[at..<(at + n)]))
                }
            }
        }
        var outMask = [UInt64](repeating: 0, count: o * columns), outBody = [UInt64](repeating: 0, count: withBodies ? o * rows : 0)
        outMask.withUnsafeMutableBufferPointer { om in
            outBody.withUnsafeMutableBufferPointer { ob in
                parallelChunks(o, align: 6) { range in
                    if let maskDigits { w.accumulate(maskDigits, into: om.baseAddress!, outputs: range) }
                    if let bodyDigits { w.accumulate(bodyDigits, into: ob.baseAddress!, outputs: range) }
                }
            }
        }
        let packedMasks = withMasks ? outMask.withUnsafeBufferPointer { Parallel.packBits($0, bits: input.outputMaskBits) } : []
        let packedBodies = withBodies ? outBody.withUnsafeBufferPointer { Parallel.packBits($0, bits: input.outputBodyBits) } : []
        return EncryptedProduct(parametersID: p.id, outputBodyBits: input.outputBodyBits, outputMaskBits: input.outputMaskBits, rows: rows,
                                outputs: o, masks: packedMasks, bodies: packedBodies)
    }

    /// One request as bytes in, the response as bytes out: the handling shared by the
    /// in-process server and the HTTP server.
    public static func handle(request: [UInt8], weights: ServerWeights) throws(FHEServerError) -> [UInt8] {
        let input: EncryptedMatrix
        do { input = try EncryptedMatrix(serialized: request) } catch { throw .wire(error) }
        return try multiply(input, by: weights).serialized()
    }
}
