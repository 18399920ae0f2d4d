import CFHEKernels
import Foundation

// What a server checks of a product request from its first bytes, before it reads the body or
// allocates for it: that the request asks for a plan the client would have chosen for these
// weights (the sender must not pick limbs, bits or a parameter set that multiply the server's
// work and answer), and an upper bound of the memory its product takes.

extension CallPlan {
    /// Whether `shape` asks for the plan ``choose(messageBits:rows:maxRowL2:among:maxLog2Failure:)``
    /// gives for some message width a legitimate client can need: products of inputs of at most
    /// `maxInputBits` bits (|x| ≤ 2^maxInputBits − 1) by weights of largest row norms `maxRowL1`
    /// and `maxRowL2`. nil when it does; otherwise why not.
    public static func refusal(of shape: EncryptedMatrix.Shape, maxRowL1: Double, maxRowL2: Double, maxInputBits: Int) -> String? {
        let widest = ProductShape(rows: shape.rows, innerDimension: shape.features, maxAbsInput: Double((1 << maxInputBits) - 1),
                                  maxRowL1: maxRowL1, maxRowL2: maxRowL2)
        guard let most = try? messageBits(for: widest) else { return "no plan carries products of \(maxInputBits)-bit inputs by these weights" }
        var offered: [String] = []
        // A hinted call (bodies only, one ring) or its hint request (masks only, one ring).
        if shape.maskLimbs == 0 || shape.bodyBits == 0 {
            guard let p = FHEParameters.withID(shape.parametersID), shape.rows <= p.ringDegree, shape.bodyBits > 0 || shape.rows == p.ringDegree else {
                return "a request with \(shape.bodyBits) body bits and \(shape.maskLimbs) mask limbs (a hinted call or its hint) covers one ring: "
                    + "\(shape.bodyBits == 0 ? "exactly" : "at most") the parameter set's ring degree in rows, not \(shape.rows)"
            }
            for bits in 1...most {
                guard let plan = try? hinted(messageBits: bits, maxRowL2: maxRowL2, parameters: p) else { continue }
                let matches = shape.bodyBits == 0
                    ? shape.maskLimbs == plan.maskLimbs && shape.outputMaskBits == plan.outputMaskBits
                    : shape.bodyBits == plan.bodyBits && shape.outputBodyBits == plan.outputBodyBits
                if matches { return nil }
                if offered.count < 3 {
                    offered.append(shape.bodyBits == 0 ? "\(plan.maskLimbs) mask limbs, \(plan.outputMaskBits) output mask bits"
                                                        : "\(plan.bodyBits) body bits, \(plan.outputBodyBits) output body bits")
                }
            }
        } else {
            for bits in 1...most {
                guard let plan = try? choose(messageBits: bits, rows: shape.rows, maxRowL2: maxRowL2) else { continue }
                if plan.parameters.id == shape.parametersID, plan.bodyBits == shape.bodyBits, plan.maskLimbs == shape.maskLimbs,
                   plan.outputBodyBits == shape.outputBodyBits, plan.outputMaskBits == shape.outputMaskBits {
                    return nil
                }
                if offered.count < 3 { offered.append("\(plan.parameters.name) \(plan.bodyBits) body bits/\(plan.maskLimbs) mask limbs, \(plan.outputBodyBits)/\(plan.outputMaskBits) output bits") }
            }
        }
        return "the request asks for parameter set \(shape.parametersID), \(shape.bodyBits) body bits and \(shape.maskLimbs) mask limbs, "
            + "\(shape.outputBodyBits)/\(shape.outputMaskBits) output bits: not a plan this server chooses for \(shape.rows) rows of "
            + "inputs up to \(maxInputBits) bits (it would choose e.g. \(offered.joined(separator: "; ")))"
    }
}

extension FHEServer {
    /// An upper bound of the bytes the server holds at once for one `he` request of `shape` by a
    /// matrix with `outputs` rows: the request (as received and as parsed), the unpacked and
    /// limb-split bodies and masks, the 64-bit products, and the packed answer three times over
    /// (packed, serialized, handed to the HTTP layer).
    public static func peakBytes(_ shape: EncryptedMatrix.Shape, outputs: Int) -> Int {
        let p = shape.parameters, k = shape.features, rows = shape.rows, o = outputs
        let columns = ((rows + p.ringDegree - 1) / p.ringDegree) * p.ringDegree
        let request = 2 * shape.messageBytes
        // A part with 0 limbs is not multiplied (see ``FHEServer/multiply(_:by:)``).
        let bodyRows = shape.bodyBits > 0 ? rows : 0, maskColumns = shape.maskLimbs > 0 ? columns : 0
        let body = k * bodyRows * 8 + GEMMOperand.largestBytes(rows: k, columns: bodyRows, bits: shape.bodyBits)
        let masks = GEMMOperand.largestBytes(rows: k, columns: maskColumns, bits: 16 * shape.maskLimbs) + 4 * maskColumns * 8 * ProcessInfo.processInfo.activeProcessorCount
        let products = o * (maskColumns + bodyRows) * 8
        let answer = packedByteCount(o * columns, bits: shape.outputMaskBits) + packedByteCount(o * rows, bits: shape.outputBodyBits) + 64
        return request + body + masks + products + 3 * answer
    }

    /// The same bound for one online (masked) request.
    public static func peakBytes(_ shape: MaskedInput.Shape, outputs: Int) -> Int {
        let k = shape.features, rows = shape.rows
        let request = 2 * shape.messageBytes
        let digits = GEMMOperand.largestBytes(rows: k, columns: rows, bits: shape.bits)
        let values = k * rows * 8
        let products = outputs * rows * 8
        let answer = packedByteCount(outputs * rows, bits: shape.bits) + 64
        return request + values + digits + products + 3 * answer
    }
}
