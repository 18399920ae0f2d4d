import COpenBLAS
import XCTest

@testable import FHE

final class FHESchemeTests: XCTestCase {
    /// Random integers in [lo, hi].
    func randomMatrix(_ count: Int, _ lo: Int64, _ hi: Int64, _ rng: inout TestRNG) -> [Int64] {
        (0..<count).map { _ in lo + Int64(rng.next() % UInt64(hi - lo + 1)) }
    }

    func clearProduct(_ x: [Int64], rows: Int, _ w: ServerWeights) -> [Int64] {
        var y = [Int64](repeating: 0, count: rows * w.outputs)
        for r in 0..<rows {
            for o in 0..<w.outputs {
                var s: Int64 = 0
                for k in 0..<w.inputs { s += x[r * w.inputs + k] * Int64(w.value(o, k)) }
                y[r * w.outputs + o] = s
            }
        }
        return y
    }

    /// encrypt → serialize → server → serialize → decrypt, as the execute mode does.
    func roundTrip(_ client: FHEClient, _ x: [Int64], rows: Int, _ w: ServerWeights, maxAbsInput: Double,
                   sets: [FHEParameters] = FHEParameters.all) throws -> (y: [Int64], plan: CallPlan, product: EncryptedProduct) {
        let plan = try CallPlan.choose(for: w.shape(rows: rows, maxAbsInput: maxAbsInput), among: sets)
        let request = client.encrypt(x, rows: rows, features: w.inputs, plan: plan).serialized()
        let response = try FHEServer.handle(request: request, weights: w)
        let product = try EncryptedProduct(serialized: response)
        return (client.decrypt(product, plan: plan), plan, product)
    }

    /// decrypt(server(encrypt(X))) = X·Wᵀ and G·W bit for bit: 2-, 7-, 8- and 16-bit inputs
    /// (unsigned and signed), inner dimensions up to 8192, random and extreme values.
    func testEncryptedProductsAreExact() throws {
        var rng = TestRNG(state: 11)
        let client = FHEClient()
        let cases: [(bits: Int, signed: Bool, rows: Int, k: Int, o: Int)] = [
            (2, false, 37, 64, 12), (7, true, 300, 200, 18), (8, false, 2100, 96, 20), (8, true, 64, 8192, 6),
            (16, false, 40, 512, 9), (16, true, 5, 8192, 4),
        ]
        for c in cases {
            let (lo, hi): (Int64, Int64) = c.signed ? (-(1 << (c.bits - 1)), (1 << (c.bits - 1)) - 1) : (0, (1 << c.bits) - 1)
            let wv = randomMatrix(c.o * c.k, -127, 127, &rng)
            let w = try ServerWeights(outputs: c.o, inputs: c.k) { Int(wv[$0 * c.k + $1]) }
            let maxAbs = Double(max(abs(lo), abs(hi)))
            var inputs: [(String, [Int64])] = [("random", randomMatrix(c.rows * c.k, lo, hi, &rng))]
            inputs.append(("all max", [Int64](repeating: hi, count: c.rows * c.k)))
            inputs.append(("all min", [Int64](repeating: lo, count: c.rows * c.k)))
            inputs.append(("alternating", (0..<(c.rows * c.k)).map { $0 % 2 == 0 ? hi : lo }))
            for (name, x) in inputs {
                let (y, plan, _) = try roundTrip(client, x, rows: c.rows, w, maxAbsInput: maxAbs)
                XCTAssertEqual(y, clearProduct(x, rows: c.rows, w), "\(c.bits)-bit \(name), K = \(c.k): \(plan)")
            }
            // Extreme weights: every weight ±127 with the sign of the input pattern (largest sums).
            let wx = try ServerWeights(outputs: c.o, inputs: c.k) { o, k in (o + k) % 2 == 0 ? 127 : -127 }
            let x = (0..<(c.rows * c.k)).map { i in (i % c.k) % 2 == 0 ? hi : lo }
            let (y, plan, _) = try roundTrip(client, x, rows: c.rows, wx, maxAbsInput: maxAbs)
            XCTAssertEqual(y, clearProduct(x, rows: c.rows, wx), "\(c.bits)-bit extreme weights: \(plan)")
            // The backward product by Wᵀ.
            let g = randomMatrix(c.rows * c.o, lo, hi, &rng)
            let wt = w.transposed()
            let (yt, _, _) = try roundTrip(client, g, rows: c.rows, wt, maxAbsInput: maxAbs)
            XCTAssertEqual(yt, clearProduct(g, rows: c.rows, wt), "\(c.bits)-bit backward")
        }
    }

    /// The two server kernels (int16 digits, and bytes on VNNI) answer the same bytes for the
    /// same encrypted request, and the same online product; `automatic` keeps int16 for a
    /// matrix with a weight of 128, and asking for bytes then names the weight.
    func testServerKernelsAnswerTheSameBytes() throws {
        var rng = TestRNG(state: 21)
        let client = FHEClient()
        for (rows, k, o, bits) in [(37, 64, 12, 8), (5, 771, 7, 8), (300, 130, 18, 7)] {
            let wv = randomMatrix(o * k, -128, 127, &rng)
            let wide = try ServerWeights(outputs: o, inputs: k, kernel: .int16) { Int(wv[$0 * k + $1]) }
            let narrow = try ServerWeights(outputs: o, inputs: k, kernel: .bytes) { Int(wv[$0 * k + $1]) }
            XCTAssertEqual([wide.kernel, narrow.kernel], [.int16, .bytes])
            let x = randomMatrix(rows * k, 0, (1 << bits) - 1, &rng)
            let plan = try CallPlan.choose(for: wide.shape(rows: rows, maxAbsInput: Double((1 << bits) - 1)))
            let request = client.encrypt(x, rows: rows, features: k, plan: plan).serialized()
            let a = try FHEServer.handle(request: request, weights: wide), b = try FHEServer.handle(request: request, weights: narrow)
            XCTAssertEqual(a, b, "he route, \(rows)×\(k)×\(o): \(plan)")
            XCTAssertEqual(client.decrypt(try EncryptedProduct(serialized: b), plan: plan), clearProduct(x, rows: rows, wide))
            XCTAssertEqual(try FHEServer.handle(request: request, weights: narrow.transposed().transposed()), a, "transposed twice keeps the kernel")
            for maskBits in [20, 24, 40] {
                let u = MaskedInput(bits: maskBits, rows: rows, features: k,
                                    body: (0..<packedByteCount(rows * k, bits: maskBits)).map { _ in UInt8(truncatingIfNeeded: rng.next()) })
                XCTAssertEqual(try FHEServer.handleMasked(request: u.serialized(), weights: wide), try FHEServer.handleMasked(request: u.serialized(), weights: narrow),
                               "online route, \(rows)×\(k)×\(o), k = \(maskBits)")
            }
        }
        let with128 = try ServerWeights(outputs: 2, inputs: 3) { o, k in o == 1 && k == 2 ? 128 : -128 }
        XCTAssertEqual(with128.kernel, .int16)
        XCTAssertThrowsError(try ServerWeights(outputs: 2, inputs: 3, kernel: .bytes) { o, k in o == 1 && k == 2 ? 128 : -128 }) {
            XCTAssertTrue("\($0)".contains("(1, 2)"), "\($0)")
        }
    }

    /// More than 10^7 output values of one GPT-2-sized product, (4096 × 768)·(768 × 2560) with
    /// random 8-bit inputs and weights, every one equal to the exact product (dgemm on
    /// integer-valued doubles, exact below 2^53).
    func testTenMillionProductsWithoutAFailure() throws {
        var rng = TestRNG(state: 13)
        let (rows, k, o) = (4096, 768, 2560)
        let x = randomMatrix(rows * k, 0, 255, &rng)
        let wv = randomMatrix(o * k, -127, 127, &rng)
        let w = try ServerWeights(outputs: o, inputs: k) { Int(wv[$0 * k + $1]) }
        let (y, plan, _) = try roundTrip(FHEClient(), x, rows: rows, w, maxAbsInput: 255)
        let xd = x.map(Double.init), wd = wv.map(Double.init)
        var exact = [Double](repeating: 0, count: rows * o)
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, blasint(rows), blasint(o), blasint(k), 1, xd, blasint(k), wd, blasint(k), 0, &exact, blasint(o))
        XCTAssertGreaterThanOrEqual(y.count, 10_000_000)
        let failures = zip(y, exact).reduce(0) { $0 + (Double($1.0) == $1.1 ? 0 : 1) }
        XCTAssertEqual(failures, 0, "\(failures) of \(y.count) values differ with \(plan)")
    }

    /// The measured standard deviation of E = (b' − a'·s) − Δ·m is within 10 % of the formula,
    /// for plans where each noise term dominates in turn.
    func testMeasuredNoiseMatchesTheFormula() throws {
        var rng = TestRNG(state: 12)
        let client = FHEClient()
        let (rows, k, o) = (3000, 256, 24)
        // Every row of W has the same norm: weights ±100.
        let w = try ServerWeights(outputs: o, inputs: k) { _, _ in rng.next() % 2 == 0 ? 100 : -100 }
        let norm = 100 * Double(k).squareRoot()
        let x = randomMatrix(rows * k, 0, 255, &rng)
        let truth = clearProduct(x, rows: rows, w)
        let base = try CallPlan.choose(for: w.shape(rows: rows, maxAbsInput: 255))
        var plans = [base]
        for p in FHEParameters.all {
            // Input-rounding dominated, mask-rounding dominated, output dominated, encryption noise.
            plans.append(CallPlan(parameters: p, messageBits: base.messageBits, bodyBits: 32, maskLimbs: 4, outputBodyBits: 64, outputMaskBits: 64))
            plans.append(CallPlan(parameters: p, messageBits: base.messageBits, bodyBits: 64, maskLimbs: 2, outputBodyBits: 64, outputMaskBits: 64))
            plans.append(CallPlan(parameters: p, messageBits: base.messageBits, bodyBits: 64, maskLimbs: 4, outputBodyBits: 30, outputMaskBits: 34))
            plans.append(CallPlan(parameters: p, messageBits: base.messageBits, bodyBits: 64, maskLimbs: 4, outputBodyBits: 64, outputMaskBits: 64))
        }
        for plan in plans {
            let input = client.encrypt(x, rows: rows, features: k, plan: plan)
            let product = try FHEServer.multiply(input, by: w)
            let e = client.decryptionErrors(product, expected: truth, plan: plan)
            let measured = (e.reduce(0) { $0 + $1 * $1 } / Double(e.count)).squareRoot()
            let predicted = plan.noiseVariance(weightNorm: norm).squareRoot()
            XCTAssertEqual(measured / predicted, 1, accuracy: 0.10, "\(plan): measured \(measured), formula \(predicted)")
        }
    }

    /// Every parameter set has a plan with P_fail ≤ 2^-64 per value for its whole envelope
    /// (worst-case inputs and weights up to its inner dimension), and states ≥ 128 bits.
    func testEveryParameterSetMeetsItsFailureAndSecurityTargets() throws {
        // HE Security Standard (2018), Table 1, ternary secret, σ = 3.2, 128-bit classical.
        let maxLogQ = [1024: 27.0, 2048: 54.0, 4096: 109.0, 8192: 218.0]
        for p in FHEParameters.all {
            XCTAssertGreaterThanOrEqual(p.securityBits, 128)
            XCTAssertFalse(p.securitySource.isEmpty)
            XCTAssertEqual(p.secret, .ternaryUniform)
            // Noise-to-modulus ratio at least the table's at its largest modulus.
            let table = try XCTUnwrap(maxLogQ[p.ringDegree])
            XCTAssertLessThanOrEqual(Double(p.modulusBits) - log2(p.noiseStandardDeviation), table - log2(3.2) + 1e-9, p.name)
            XCTAssertEqual(try FHEParameters(serialized: p.serialized()), p)
            for bits in [2, 7, 8, 16] where bits <= p.maxInputBits {
                for k in [1, 64, 768, p.maxInnerDimension] {
                    for rows in [1, p.ringDegree, 3 * p.ringDegree + 5] {
                        let shape = ProductShape.worstCase(rows: rows, innerDimension: k, inputBits: bits, weightBits: p.maxWeightBits)
                        let plan = try CallPlan.plan(for: shape, parameters: p)
                        XCTAssertLessThanOrEqual(plan.log2FailureProbability(weightNorm: shape.maxRowL2), -64, "\(p.name) \(bits)-bit K = \(k)")
                    }
                }
            }
        }
        // Beyond every envelope: a clear error, not a plan.
        let tooWide = ProductShape.worstCase(rows: 10, innerDimension: 8192, inputBits: 16, weightBits: 16)
        XCTAssertThrowsError(try CallPlan.choose(for: tooWide)) { XCTAssertTrue("\($0)".contains("message bits") || "\($0)".contains("noise"), "\($0)") }
        // The 8-bit plan of a GPT-2 layer meets the wire targets: ≤ 6 bytes in, ≤ 10 bytes out per value.
        let gpt2 = ProductShape.worstCase(rows: 4096, innerDimension: 768, inputBits: 8, weightBits: 8)
        let plan = try CallPlan.choose(for: gpt2)
        XCTAssertLessThanOrEqual(plan.inputBytesPerValue(), 6)
        XCTAssertLessThanOrEqual(plan.outputBytesPerValue(rows: 4096), 10)
    }

    /// What the server receives holds no plaintext and no key material; what it returns holds
    /// no plaintext product.
    func testWireBytesCarryNoPlaintextOrKey() throws {
        let client = FHEClient()
        let (rows, k, o) = (512, 64, 8)
        // A recognisable activation pattern: the bytes 0x41 0x42 0x43 0x44 repeated.
        let x = (0..<(rows * k)).map { Int64([0x41, 0x42, 0x43, 0x44][$0 % 4]) }
        let w = try ServerWeights(outputs: o, inputs: k) { o, k in (o + k) % 3 - 1 }
        let (_, plan, product) = try roundTrip(client, x, rows: rows, w, maxAbsInput: 255)
        let request = client.encrypt(x, rows: rows, features: k, plan: plan).serialized()
        func contains(_ hay: [UInt8], _ needle: [UInt8]) -> Bool {
            guard needle.count <= hay.count else { return false }
            return (0...(hay.count - needle.count)).contains { Array(hay[$0..<($0 + needle.count)]) == needle }
        }
        let pattern: [UInt8] = Array(repeating: [0x41, 0x42, 0x43, 0x44], count: 2).flatMap { $0 }
        XCTAssertFalse(contains(request, pattern), "the activation pattern appears in the request")
        XCTAssertFalse(contains(request, [0x41, 0, 0, 0, 0, 0, 0, 0, 0x42]), "raw little-endian inputs appear in the request")
        // The key: its coefficients in any 16-byte window, as stored (Int8) or as 64-bit words.
        let key = client.keyring.key(for: plan.parameters).coefficients.map { UInt8(bitPattern: $0) }
        for start in stride(from: 0, to: key.count - 16, by: 512) {
            XCTAssertFalse(contains(request, Array(key[start..<(start + 16)])), "key bytes at \(start) appear in the request")
        }
        let words = key.prefix(4).flatMap { b -> [UInt8] in withUnsafeBytes(of: Int64(Int8(bitPattern: b)).littleEndian) { Array($0) } }
        XCTAssertFalse(contains(request, words))
        // The response: the clear products (as Int64 little-endian) do not appear.
        let truth = clearProduct(x, rows: rows, w)
        let response = product.serialized()
        let leak = truth.prefix(2).flatMap { v -> [UInt8] in withUnsafeBytes(of: v.littleEndian) { Array($0) } }
        XCTAssertFalse(contains(response, leak))
        // Nothing key-like is a field of the request type: it has a seed (public), shapes and bodies.
        let fields = Mirror(reflecting: client.encrypt(x, rows: rows, features: k, plan: plan)).children.compactMap(\.label)
        XCTAssertEqual(Set(fields), ["parametersID", "bodyBits", "maskLimbs", "outputBodyBits", "outputMaskBits", "rows", "features", "seed", "body"])
        // Every request's seed is fresh.
        XCTAssertNotEqual(client.encrypt(x, rows: rows, features: k, plan: plan).seed, client.encrypt(x, rows: rows, features: k, plan: plan).seed)
    }

    /// Malformed, truncated, mislabelled and mis-shaped messages are refused with clear errors.
    func testMalformedMessagesAreRejected() throws {
        let client = FHEClient()
        let w = try ServerWeights(outputs: 4, inputs: 8) { o, k in o - k }
        let plan = try CallPlan.choose(for: w.shape(rows: 3, maxAbsInput: 255))
        let good = client.encrypt([Int64](repeating: 5, count: 24), rows: 3, features: 8, plan: plan).serialized()
        XCTAssertEqual(try EncryptedMatrix(serialized: good).serialized(), good)
        func rejects(_ bytes: [UInt8], _ fragment: String, file: StaticString = #filePath, line: UInt = #line) {
            XCTAssertThrowsError(try FHEServer.handle(request: bytes, weights: w), file: file, line: line) {
                XCTAssertTrue("\($0)".contains(fragment), "\"\($0)\" lacks \"\(fragment)\"", file: file, line: line)
            }
        }
        rejects(Array(good.prefix(good.count - 1)), "truncated")
        rejects(Array(good.prefix(10)), "truncated")
        rejects([], "not an nb message")
        rejects(good + [0], "trailing")
        var bad = good; bad[0] = 0x58
        rejects(bad, "not an nb message")
        bad = good; bad[4] = 9
        rejects(bad, "version 9")
        bad = good; bad[6] = 3
        rejects(bad, "expected a encrypted input")
        bad = good; bad[7] = 99
        rejects(bad, "unknown FHE parameter set id 99")
        bad = good; bad[9] = 7
        rejects(bad, "body bits")
        bad = good; bad[11] = 65
        rejects(bad, "output body bits")
        bad = good; bad[13] = 4  // rows 3 → 4: the body no longer fits the shape
        rejects(bad, "shape mismatch")
        let other = try ServerWeights(outputs: 4, inputs: 9) { _, _ in 1 }
        XCTAssertThrowsError(try FHEServer.handle(request: good, weights: other)) { XCTAssertTrue("\($0)".contains("9"), "\($0)") }
        XCTAssertThrowsError(try ServerWeights(outputs: 1, inputs: 2) { _, k in k == 1 ? 300 : 0 }) { XCTAssertTrue("\($0)".contains("300"), "\($0)") }
        // The product format too.
        let response = try FHEServer.handle(request: good, weights: w)
        XCTAssertThrowsError(try EncryptedProduct(serialized: Array(response.dropLast(3))))
        XCTAssertThrowsError(try EncryptedProduct(serialized: good)) { XCTAssertTrue("\($0)".contains("expected a encrypted product"), "\($0)") }
    }
}
