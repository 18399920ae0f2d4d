import Foundation

/// The distribution of the secret key's coefficients.
public enum SecretDistribution: UInt8, Codable, Sendable, CustomStringConvertible {
    /// Uniform over {−1, 0, 1} (the HE standard's "ternary" secret).
    case ternaryUniform = 1

    /// E[s²], which scales the mask's contribution to the noise.
    public var variance: Double { 2.0 / 3.0 }
    public var description: String { "uniform ternary {−1, 0, 1}" }
}

/// A parameter set of the token-packed GLWE scheme over Z_{2^64}[X]/(X^N + 1).
///
/// One ciphertext carries one input feature for up to N tokens, in the coefficients of its
/// body: b = a·s + e + Δ·m (mod X^N + 1, 2^64), with a mask `a` expanded from a seed, a
/// ternary secret `s` and rounded-Gaussian noise `e` of standard deviation σ. The server
/// multiplies by clear integer weights with no key at all; the client subtracts a'·s and
/// rounds by Δ. The message bits and the compression bits are chosen per call by
/// ``CallPlan`` so that the failure probability per value stays at most 2^-64.
///
/// Security estimates (classical, against the known lattice attacks):
/// - ``glwe2048``: N = 2048, q = 2^64, σ = 2^16. The Homomorphic Encryption Security
///   Standard (Albrecht et al., 2018, Table 1: ternary secret, σ = 3.2) gives 128 bits at
///   N = 2048 for log2 q ≤ 54, i.e. for a noise-to-modulus ratio σ/q ≥ 3.2·2^-54 = 2^-52.3.
///   Here σ/q = 2^-48, a larger ratio (harder instances). TFHE-rs's default parameters use
///   the same modulus and ring size (k·N = 2048) with σ ≈ 2^15.68 and a *binary* secret,
///   estimated at 128 bits with the lattice estimator; this set has more noise and a wider
///   secret. Estimate: ≥ 128 bits.
/// - ``glwe4096``: N = 4096, q = 2^64, σ = 3.2. The same table gives 128 bits at N = 4096
///   for log2 q ≤ 109 (101 against quantum attacks); q = 2^64 is far inside that bound.
///   Estimate: ≥ 128 bits (well above; the table does not list the exact figure).
///
/// The estimates hold for what the server sees: a ciphertext's body is rounded before it is
/// sent, which only adds noise, and the server never receives the key.
public struct FHEParameters: Codable, Hashable, Sendable, CustomStringConvertible {
    /// Identifies the set on the wire.
    public let id: UInt16
    public let name: String
    /// N: coefficients per polynomial = tokens per ciphertext.
    public let ringDegree: Int
    /// k: polynomials per mask (1: one mask polynomial per ciphertext).
    public let glweDimension: Int
    /// log2 q; q = 2^64, arithmetic is wrapping UInt64.
    public let modulusBits: Int
    public let secret: SecretDistribution
    /// σ of the rounded-Gaussian encryption noise, in units of the modulus (absolute).
    public let noiseStandardDeviation: Double
    /// Estimated classical security in bits (a lower bound, see the type's documentation).
    public let securityBits: Int
    /// Where the estimate comes from.
    public let securitySource: String
    /// The widest inputs (bits) and weights (bits, signed) the set is checked for, up to
    /// ``maxInnerDimension`` features: every such call has a plan with P_fail ≤ 2^-64.
    public let maxInputBits: Int
    public let maxWeightBits: Int
    public let maxInnerDimension: Int

    public static let glwe2048 = FHEParameters(
        id: 1, name: "nb-glwe-2048", ringDegree: 2048, glweDimension: 1, modulusBits: 64, secret: .ternaryUniform,
        noiseStandardDeviation: 65536, securityBits: 128,
        securitySource: "HE Security Standard (2018) Table 1, N=2048: 128-bit for σ/q ≥ 3.2·2^-54 (here 2^-48); TFHE-rs k·N=2048, q=2^64, σ≈2^15.68 binary key",
        maxInputBits: 8, maxWeightBits: 8, maxInnerDimension: 4096)

    public static let glwe4096 = FHEParameters(
        id: 2, name: "nb-glwe-4096", ringDegree: 4096, glweDimension: 1, modulusBits: 64, secret: .ternaryUniform,
        noiseStandardDeviation: 3.2, securityBits: 128,
        securitySource: "HE Security Standard (2018) Table 1, N=4096, σ=3.2, ternary: 128-bit for log2 q ≤ 109 (here 64)",
        maxInputBits: 16, maxWeightBits: 8, maxInnerDimension: 8192)

    /// Every set offered, cheapest first.
    public static let all: [FHEParameters] = [.glwe2048, .glwe4096]

    public static func withID(_ id: UInt16) -> FHEParameters? { all.first { $0.id == id } }

    public var description: String {
        "\(name): N = \(ringDegree), k = \(glweDimension), q = 2^\(modulusBits), \(secret) secret, "
            + "rounded Gaussian noise σ = \(noiseStandardDeviation < 100 ? String(noiseStandardDeviation) : "2^" + String(format: "%.1f", log2(noiseStandardDeviation))), "
            + "≥ \(securityBits)-bit security (\(securitySource))"
    }
}

/// What a product's noise depends on: the weights' largest row norms (public metadata of
/// the server's matrix) and the inputs' largest magnitude.
public struct ProductShape: Hashable, Sendable {
    /// Rows of the input (tokens).
    public var rows: Int
    /// Inner dimension (input features).
    public var innerDimension: Int
    /// max_i |x_i| over the inputs the call may carry.
    public var maxAbsInput: Double
    /// max_j Σ_i |w_ji| and max_j (Σ_i w_ji²)^½ over the output channels.
    public var maxRowL1: Double
    public var maxRowL2: Double

    public init(rows: Int, innerDimension: Int, maxAbsInput: Double, maxRowL1: Double, maxRowL2: Double) {
        (self.rows, self.innerDimension, self.maxAbsInput, self.maxRowL1, self.maxRowL2) =
            (rows, innerDimension, maxAbsInput, maxRowL1, maxRowL2)
    }

    /// The worst case for `bits`-bit unsigned inputs and `weightBits`-bit symmetric weights.
    public static func worstCase(rows: Int, innerDimension k: Int, inputBits: Int, weightBits: Int) -> ProductShape {
        let x = Double((1 << inputBits) - 1), w = Double((1 << (weightBits - 1)) - 1)
        return ProductShape(rows: rows, innerDimension: k, maxAbsInput: x, maxRowL1: w * Double(k), maxRowL2: w * Double(k).squareRoot())
    }
}

public enum FHEPlanError: Error, CustomStringConvertible, Equatable {
    case noParameters(String)
    public var description: String {
        switch self { case .noParameters(let why): return why }
    }
}

/// The choices of one encrypted product: which parameter set, how many message bits, and how
/// many bits of each ciphertext part travel. Body and mask limbs are 16-bit digits of the
/// values' top bits (the server's integer GEMM runs on them); output bits are rounded.
public struct CallPlan: Hashable, Sendable, CustomStringConvertible {
    public var parameters: FHEParameters
    /// b: the product is carried mod 2^b, Δ = 2^(64 − b).
    public var messageBits: Int
    /// Input body kept to its top `bodyBits` bits, a multiple of 8 (the byte kernel's digits;
    /// the int16 kernel takes ⌈bodyBits/16⌉ limbs): bodyBits/8 bytes per value on the wire.
    public var bodyBits: Int
    /// The server rounds the seed-expanded masks to 16·maskLimbs bits before its product.
    public var maskLimbs: Int
    public var outputBodyBits: Int
    public var outputMaskBits: Int
    /// The client holds the server's product of the masks (a *hint* W·A for a fixed public mask
    /// seed, computed once at full precision, ``maskLimbs`` = 4) and encrypts each call under a
    /// fresh secret: the server multiplies the bodies only. See ``FHEClient/hintRequest(features:plan:seed:)``.
    public var hinted: Bool

    public init(parameters: FHEParameters, messageBits: Int, bodyBits: Int, maskLimbs: Int, outputBodyBits: Int, outputMaskBits: Int,
                hinted: Bool = false) {
        (self.parameters, self.messageBits, self.bodyBits, self.maskLimbs, self.outputBodyBits, self.outputMaskBits, self.hinted) =
            (parameters, messageBits, bodyBits, maskLimbs, outputBodyBits, outputMaskBits, hinted)
    }

    public var delta: UInt64 { 1 << UInt64(64 - messageBits) }

    /// The variance of the error E = (b' − a'·s) − Δ·m of one output value, for a weight row
    /// of Euclidean norm `weightNorm` (the formula of REFERENCE.md, with the server's mask
    /// rounding added):
    ///
    ///     Var E = ‖w‖²·(σ² + 1/12 + r_in²/12) + ‖w‖²·E[s²]·N·r_a²/12 + r_ob²/12 + E[s²]·N·r_om²/12
    ///
    /// r_in, r_a: rounding steps of the input body and of the mask the server multiplies;
    /// r_ob, r_om: of the output body and mask. Each rounding error is uniform; a mask error
    /// reaches E through the N-term negacyclic product with the secret.
    public func noiseVariance(weightNorm: Double) -> Double {
        let p = parameters, n = Double(p.ringDegree), s2 = p.secret.variance
        let sigma2 = p.noiseStandardDeviation * p.noiseStandardDeviation + 1.0 / 12
        func step2(_ keptBits: Int) -> Double { keptBits >= 64 ? 0 : pow(2.0, Double(2 * (64 - keptBits))) / 12 }
        let w2 = weightNorm * weightNorm
        return w2 * (sigma2 + step2(bodyBits)) + w2 * s2 * n * step2(16 * maskLimbs)
            + step2(outputBodyBits) + s2 * n * step2(outputMaskBits)
    }

    /// log2 of P(|E| ≥ Δ/2) per value, E taken as Gaussian of the formula's variance (a sum of
    /// many independent terms; its uniform parts have lighter tails than a Gaussian).
    public func log2FailureProbability(weightNorm: Double) -> Double {
        let sd = noiseVariance(weightNorm: weightNorm).squareRoot()
        return CallPlan.log2GaussianTail(Double(delta) / 2 / sd)
    }

    /// log2 P(|Z| ≥ z) for a standard normal Z.
    public static func log2GaussianTail(_ z: Double) -> Double {
        let x = z / 2.0.squareRoot()
        if x < 20 { return log2(erfc(x)) }
        // erfc(x) = exp(−x²)/(x√π)·(1 − 1/(2x²) + …)
        let ln = -x * x - log(x * Double.pi.squareRoot()) + log1p(-1 / (2 * x * x))
        return ln / log(2.0)
    }

    /// Bytes the client sends per input value and receives per output value, for `rows` tokens.
    public func inputBytesPerValue() -> Double { Double(bodyBits) / 8 }
    public func outputBytesPerValue(rows: Int) -> Double {
        let groups = (rows + parameters.ringDegree - 1) / parameters.ringDegree
        let maskBits = hinted ? 0 : outputMaskBits
        return (Double(outputBodyBits) * Double(rows) + Double(maskBits) * Double(groups * parameters.ringDegree)) / 8 / Double(rows)
    }

    /// Relative server work: limb-GEMM columns per weight (a hinted call's masks are the hint's,
    /// multiplied once).
    public func serverColumns(rows: Int) -> Int {
        let groups = (rows + parameters.ringDegree - 1) / parameters.ringDegree
        return bodyBits / 8 * rows + (hinted ? 0 : 2 * maskLimbs * groups * parameters.ringDegree)
    }

    public var description: String {
        hinted
            ? "\(parameters.name), b = \(messageBits) message bits, input body \(bodyBits) bits, hint W·A of a fixed mask (exact), "
                + "output body \(outputBodyBits) bits, hint \(outputMaskBits) bits, a fresh secret per call"
            : "\(parameters.name), b = \(messageBits) message bits, input body \(bodyBits) bits, server mask \(16 * maskLimbs) bits, "
                + "output body \(outputBodyBits) bits, output mask \(outputMaskBits) bits"
    }

    /// What a request of this plan carries on the wire: a hinted call sends bodies only (no
    /// masks to multiply: 0 mask limbs, 0 output mask bits).
    public var requestMaskLimbs: Int { hinted ? 0 : maskLimbs }
    public var requestOutputMaskBits: Int { hinted ? 0 : outputMaskBits }

    /// The cheapest plan (server work first, then bytes) with P_fail ≤ 2^-64 per value for
    /// `shape`, over the given parameter sets.
    public static func choose(for shape: ProductShape, among sets: [FHEParameters] = FHEParameters.all,
                              maxLog2Failure: Double = -64) throws(FHEPlanError) -> CallPlan {
        try choose(messageBits: try messageBits(for: shape), rows: shape.rows, maxRowL2: shape.maxRowL2, among: sets, maxLog2Failure: maxLog2Failure)
    }

    /// The same choice for products carried mod 2^`messageBits` (what ``choose(for:among:maxLog2Failure:)``
    /// depends on besides the rows and the weights' largest row norm).
    public static func choose(messageBits: Int, rows: Int, maxRowL2: Double, among sets: [FHEParameters] = FHEParameters.all,
                              maxLog2Failure: Double = -64) throws(FHEPlanError) -> CallPlan {
        var best: CallPlan?
        var reasons: [String] = []
        for p in sets {
            do {
                let plan = try plan(messageBits: messageBits, rows: rows, maxRowL2: maxRowL2, parameters: p, maxLog2Failure: maxLog2Failure)
                if let b = best {
                    let (c0, c1) = (b.serverColumns(rows: rows), plan.serverColumns(rows: rows))
                    if c1 < c0 || (c1 == c0 && plan.outputBytesPerValue(rows: rows) < b.outputBytesPerValue(rows: rows)) { best = plan }
                } else {
                    best = plan
                }
            } catch {
                reasons.append(error.description)
            }
        }
        guard let best else { throw .noParameters(reasons.joined(separator: "; ")) }
        return best
    }

    /// b with |m| ≤ maxAbsInput·maxRowL1 < 2^(b−1): the signed product is recovered mod 2^b.
    public static func messageBits(for shape: ProductShape) throws(FHEPlanError) -> Int {
        let bound = shape.maxAbsInput * shape.maxRowL1
        let messageBits = Int(ceil(log2(bound + 1))) + 1
        guard messageBits <= 56 else {
            throw .noParameters("products up to \(bound) need \(messageBits) message bits; at most 56 fit a 64-bit modulus with its noise")
        }
        return messageBits
    }

    /// The cheapest plan within one parameter set.
    public static func plan(for shape: ProductShape, parameters p: FHEParameters,
                            maxLog2Failure: Double = -64) throws(FHEPlanError) -> CallPlan {
        let messageBits: Int
        do { messageBits = try Self.messageBits(for: shape) } catch { throw .noParameters("\(p.name): \(error.description)") }
        return try plan(messageBits: messageBits, rows: shape.rows, maxRowL2: shape.maxRowL2, parameters: p, maxLog2Failure: maxLog2Failure)
    }

    /// z with log2 P(|Z| ≥ z) = `maxLog2Failure` (bisection; cached for the default −64).
    static func tailPoint(_ maxLog2Failure: Double) -> Double {
        if maxLog2Failure == -64 { return defaultTailPoint }
        return solveTailPoint(maxLog2Failure)
    }
    private static let defaultTailPoint = solveTailPoint(-64)
    private static func solveTailPoint(_ maxLog2Failure: Double) -> Double {
        var lo = 1.0, hi = 64.0
        for _ in 0..<100 {
            let mid = (lo + hi) / 2
            if log2GaussianTail(mid) > maxLog2Failure { lo = mid } else { hi = mid }
        }
        return hi
    }

    /// The cheapest plan within one parameter set for products mod 2^`messageBits`.
    public static func plan(messageBits: Int, rows: Int, maxRowL2: Double, parameters p: FHEParameters,
                            maxLog2Failure: Double = -64) throws(FHEPlanError) -> CallPlan {
        let groups = (rows + p.ringDegree - 1) / p.ringDegree
        var candidates: [(Int, Int)] = []
        for body in stride(from: 8, through: 64, by: 8) { for mask in 1...4 { candidates.append((body, mask)) } }
        candidates.sort { body0, body1 in
            let c0 = body0.0 / 8 * rows + 2 * body0.1 * groups * p.ringDegree, c1 = body1.0 / 8 * rows + 2 * body1.1 * groups * p.ringDegree
            return c0 != c1 ? c0 < c1 : body0.0 < body1.0
        }
        return try firstFitting(candidates, hinted: false, messageBits: messageBits, maxRowL2: maxRowL2, parameters: p, maxLog2Failure: maxLog2Failure)
    }

    /// The cheapest hinted plan (``hinted``) for one ring of `parameters`' ciphertexts: the
    /// fewest body limbs whose noise, with the hint exact (masks at 64 bits), stays within the budget.
    public static func hinted(messageBits: Int, maxRowL2: Double, parameters p: FHEParameters,
                              maxLog2Failure: Double = -64) throws(FHEPlanError) -> CallPlan {
        try firstFitting(stride(from: 8, through: 64, by: 8).map { ($0, 4) }, hinted: true, messageBits: messageBits, maxRowL2: maxRowL2, parameters: p,
                         maxLog2Failure: maxLog2Failure)
    }

    /// The first of `candidates` (body limbs, mask limbs) whose input noise leaves room for the
    /// output's rounding, with the output bits that rounding allows.
    private static func firstFitting(_ candidates: [(Int, Int)], hinted: Bool, messageBits: Int, maxRowL2: Double, parameters p: FHEParameters,
                                     maxLog2Failure: Double) throws(FHEPlanError) -> CallPlan {
        guard (1...56).contains(messageBits) else {
            throw .noParameters("\(p.name): \(messageBits) message bits; 1…56 fit a 64-bit modulus with its noise")
        }
        // The largest variance with P_fail ≤ 2^maxLog2Failure.
        let hi = tailPoint(maxLog2Failure)
        let half = pow(2.0, Double(63 - messageBits))
        let maxVariance = (half / hi) * (half / hi)
        let n = Double(p.ringDegree), s2 = p.secret.variance
        for (body, mask) in candidates {
            var plan = CallPlan(parameters: p, messageBits: messageBits, bodyBits: body, maskLimbs: mask, outputBodyBits: 64, outputMaskBits: 64,
                                hinted: hinted)
            let inputVariance = plan.noiseVariance(weightNorm: maxRowL2)
            // Leave at least a quarter of the budget to the output's rounding.
            guard inputVariance <= 0.75 * maxVariance else { continue }
            let rest = maxVariance - inputVariance
            // Half of the rest to each output part: r²/12 ≤ rest/2 and E[s²]·N·r²/12 ≤ rest/2.
            let rBody = floor(log2((6 * rest).squareRoot())), rMask = floor(log2((6 * rest / (s2 * n)).squareRoot()))
            plan.outputBodyBits = min(64, max(1, 64 - Int(rBody)))
            plan.outputMaskBits = min(64, max(1, 64 - Int(rMask)))
            guard plan.log2FailureProbability(weightNorm: maxRowL2) <= maxLog2Failure else { continue }
            return plan
        }
        throw .noParameters("\(p.name): the noise of weights with row norm \(maxRowL2) and \(messageBits) message bits exceeds the budget for P_fail ≤ 2^\(Int(maxLog2Failure))")
    }
}
