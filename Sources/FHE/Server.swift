import CFHEKernels
import Foundation

public enum FHEServerError: Error, CustomStringConvertible, Equatable {
    case weightOutOfRange(value: Int, row: Int, column: Int)
    case shapeMismatch(String)
    case wire(FHEWireError)

    public var description: String {
        switch self {
        case .weightOutOfRange(let v, let r, let c):
            return "weight \(v) at (\(r), \(c)) is outside ±128: the encrypted product takes weights of at most 8 bits (symmetric)"
        case .shapeMismatch(let s): return s
        case .wire(let e): return e.description
        }
    }
}

/// A clear integer matrix W (outputs × inputs) held by the server, laid out for the limb
/// GEMM, with the public norms the client plans its noise with.
public struct ServerWeights: Sendable {
    public let outputs: Int
    public let inputs: Int
    let paddedInputs: Int
    /// outputs × paddedInputs, row-major.
    let values: [Int16]
    public let maxAbs: Int
    /// max over outputs of Σ|w| and of (Σ w²)^½.
    public let maxRowL1: Double
    public let maxRowL2: Double

    public init(outputs: Int, inputs: Int, value: (Int, Int) -> Int) throws(FHEServerError) {
        let padded = inputs + (inputs & 1)
        var v = [Int16](repeating: 0, count: outputs * padded)
        var maxAbs = 0, l1 = 0.0, l2 = 0.0
        for o in 0..<outputs {
            var s1 = 0.0, s2 = 0.0
            for k in 0..<inputs {
                let w = value(o, k)
                guard w >= -128 && w <= 128 else { throw .weightOutOfRange(value: w, row: o, column: k) }
                v[o * padded + k] = Int16(w)
                maxAbs = max(maxAbs, abs(w))
                s1 += Double(abs(w)); s2 += Double(w * w)
            }
            l1 = max(l1, s1); l2 = max(l2, s2)
        }
        (self.outputs, self.inputs, paddedInputs, values, self.maxAbs, maxRowL1, maxRowL2) = (outputs, inputs, padded, v, maxAbs, l1, l2.squareRoot())
    }

    public func value(_ o: Int, _ k: Int) -> Int { Int(values[o * paddedInputs + k]) }

    /// Wᵀ (inputs × outputs), for the backward product.
    public func transposed() -> ServerWeights {
        try! ServerWeights(outputs: inputs, inputs: outputs) { self.value($1, $0) }
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
/// ciphertext matrix, run as int16 × int16 → int32 products of 16-bit limbs (AVX2
/// `vpmaddwd`), recombined mod 2^64. Then it rounds the results to the requested bits.
public enum FHEServer {
    public static func multiply(_ input: EncryptedMatrix, by w: ServerWeights) throws(FHEServerError) -> EncryptedProduct {
        _ = AllocatorTuning.applied
        guard input.features == w.inputs else {
            throw .shapeMismatch("the ciphertext has \(input.features) features; this matrix takes \(w.inputs)")
        }
        let p = input.parameters, n = p.ringDegree, groups = input.groups
        let (rows, k, o) = (input.rows, input.features, w.outputs)
        // Bodies: K × R values at 16·bodyLimbs bits, split into limb digits.
        let bodyDigits = Parallel.unpackBits(input.body, count: k * rows, bits: 16 * input.bodyLimbs).withUnsafeBufferPointer {
            Parallel.packLimbs($0, rows: k, columns: rows, limbs: input.bodyLimbs)
        }
        // Masks: K × (groups·N), expanded from the seed two features at a time straight into
        // their limb digits.
        let columns = groups * n
        var maskDigits = [Int16](repeating: 0, count: nb_fhe_packed_limbs_count(k, columns, input.maskLimbs))
        maskDigits.withUnsafeMutableBufferPointer { digits in
            parallelChunks((k + 1) / 2) { pairs in
                var expander = MaskExpander(seed: input.seed)
                var two = [UInt64](repeating: 0, count: 2 * columns)
                two.withUnsafeMutableBufferPointer { t in
                    for pair in pairs {
                        for e in 0..<2 where 2 * pair + e < k {
                            for g in 0..<groups {
                                let at = e * columns + g * n
                                expander.expand(group: g, feature: 2 * pair + e, into: UnsafeMutableBufferPointer(rebasing: t[at..<(at + n)]))
                            }
                        }
                        // Rows 2·pair and 2·pair + 1 of the K × columns matrix live in `two`.
                        nb_fhe_pack_limbs_range(t.baseAddress! - 2 * pair * columns, k, columns, input.maskLimbs, digits.baseAddress!, pair, pair + 1)
                    }
                }
            }
        }
        var outMask = [UInt64](repeating: 0, count: o * columns), outBody = [UInt64](repeating: 0, count: o * rows)
        w.values.withUnsafeBufferPointer { wv in
            outMask.withUnsafeMutableBufferPointer { om in
                outBody.withUnsafeMutableBufferPointer { ob in
                    parallelChunks(o, align: 6) { range in
                        nb_fhe_limb_gemm(wv.baseAddress!, w.paddedInputs, maskDigits, columns, input.maskLimbs, om.baseAddress!, range.lowerBound, range.upperBound)
                        nb_fhe_limb_gemm(wv.baseAddress!, w.paddedInputs, bodyDigits, rows, input.bodyLimbs, ob.baseAddress!, range.lowerBound, range.upperBound)
                    }
                }
            }
        }
        let packedMasks = outMask.withUnsafeBufferPointer { Parallel.packBits($0, bits: input.outputMaskBits) }
        let packedBodies = outBody.withUnsafeBufferPointer { Parallel.packBits($0, bits: input.outputBodyBits) }
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
