import Foundation
import XCTest
import CFHEKernels

@testable import FHE

/// The masked (offline/online) protocol's primitives: the online product is exact mod 2^k,
/// the offline product of uniform pads decrypts to W·r mod 2^k with the noise the formula
/// predicts and P_fail ≤ 2^-64, and the wire messages refuse malformed bytes.
final class MaskedProductTests: XCTestCase {
    func randomWeights(_ o: Int, _ k: Int, _ rng: inout TestRNG, maxAbs: Int = 127, kernel: ServerKernel? = nil) throws -> ServerWeights {
        // The byte kernel's signed bytes hold −128 but not 128.
        let top = kernel == .bytes ? min(maxAbs, 127) : maxAbs
        return try ServerWeights(outputs: o, inputs: k, kernel: kernel) { _, _ in Int(rng.next() % UInt64(maxAbs + top + 1)) - maxAbs }
    }

    /// Σ_k w·v mod 2^bits for rows × K values v (row-major), in wrapping 64-bit arithmetic.
    func clearProductMod(_ v: [UInt64], rows: Int, _ w: ServerWeights, bits: Int) -> [UInt64] {
        let mask: UInt64 = bits == 64 ? ~0 : (1 << UInt64(bits)) - 1
        var y = [UInt64](repeating: 0, count: rows * w.outputs)
        for r in 0..<rows {
            for o in 0..<w.outputs {
                var s: UInt64 = 0
                for k in 0..<w.inputs { s = s &+ v[r * w.inputs + k] &* UInt64(bitPattern: Int64(w.value(o, k))) }
                y[r * w.outputs + o] = s & mask
            }
        }
        return y
    }

    /// blind → server → unblind gives W·x exactly, with both server kernels, for unsigned and
    /// signed inputs, k from 10 to 56 bits (one to four int16 limbs, two to seven bytes), odd
    /// shapes, extreme values, the tile edges of the kernel, and the few-row (GEMV) path with its
    /// exact int32 flushes over a long inner dimension.
    func testOnlineProductIsExact() throws {
        for kernel in ServerKernel.allCases { try onlineProductIsExact(kernel) }
    }

    /// The answer for rows `range` alone (output-major, repacked), as a server answers a piece.
    func packedSlice(_ y: MaskedOutput, rows range: Range<Int>) -> [UInt8] {
        let mask: UInt64 = (1 << UInt64(y.bits)) - 1
        func value(_ i: Int) -> UInt64 {
            var v: UInt64 = 0
            for b in 0..<y.bits {
                let bit = i * y.bits + b
                v |= UInt64(y.body[bit / 8] >> UInt8(bit % 8) & 1) << UInt64(b)
            }
            return v & mask
        }
        var out = [UInt8](repeating: 0, count: (range.count * y.outputs * y.bits + 7) / 8)
        var at = 0
        for o in 0..<y.outputs {
            for r in range {
                let v = value(o * y.rows + r)
                for b in 0..<y.bits where v >> UInt64(b) & 1 == 1 { out[(at + b) / 8] |= 1 << UInt8((at + b) % 8) }
                at += y.bits
            }
        }
        return out
    }

    func onlineProductIsExact(_ kernel: ServerKernel) throws {
        var rng = TestRNG(state: 5)
        for (rows, k, o, lo, hi) in [(1, 7, 5, 0, 255), (17, 64, 6, -127, 127), (300, 257, 13, 0, 255), (33, 768, 12, 0, 65535), (5, 3, 1, -128, 128), (7, 3001, 9, -128, 128), (1, 576, 14, 0, 255), (37, 40, 133, -128, 128), (64, 19, 70, 0, 255), (8, 1000, 3, -128, 128)] as [(Int, Int, Int, Int64, Int64)] {
            let w = try randomWeights(o, k, &rng, maxAbs: 128, kernel: kernel)
            XCTAssertEqual(w.kernel, kernel)
            let x = (0..<(rows * k)).map { i -> Int64 in i % 97 == 0 ? hi : lo + Int64(rng.next() % UInt64(hi - lo + 1)) }
            let bound = Double(max(abs(lo), abs(hi))) * Double(128 * k)
            let minimal = Int(ceil(log2(bound + 1))) + 1
            for bits in Set([minimal, 32, 33, 48, 56].filter { $0 >= minimal }) {
                let mask: UInt64 = (1 << UInt64(bits)) - 1
                let pads = (0..<(rows * k)).map { _ in rng.next() & mask }
                let request = x.withUnsafeBufferPointer { xs in pads.withUnsafeBufferPointer { MaskedProduct.blind(xs, pads: $0, rows: rows, features: k, bits: bits) } }
                XCTAssertEqual(request.body.count, (rows * k * bits + 7) / 8)
                let response = try FHEServer.handleMasked(request: request.serialized(), weights: w)
                let output = try MaskedOutput(serialized: response, expecting: (rows, o, bits))
                let wr = clearProductMod(pads, rows: rows, w, bits: bits)
                let y = wr.withUnsafeBufferPointer { MaskedProduct.unblind(output, padProducts: $0) }
                let truth = clearProductMod(x.map { UInt64(bitPattern: $0) }, rows: rows, w, bits: 64).map { Int64(bitPattern: $0) }
                XCTAssertEqual(y, truth, "\(kernel) kernel, rows \(rows), K \(k), O \(o), k = \(bits)")
                // W·r as the mask store keeps it (3, 4 or 8 bytes a value), with bits above k set
                // at random: read where it lies, the unblinding ignores them.
                for width in [3, 4, 8] where bits <= 8 * width {
                    var bytes: [UInt8] = []
                    for v in wr {
                        let noisy = 8 * width > bits ? v | rng.next() << UInt64(bits) : v
                        for b in 0..<width { bytes.append(UInt8(truncatingIfNeeded: noisy >> UInt64(8 * b))) }
                    }
                    let products = PadProducts(bytes: bytes, width: width, bits: bits)
                    XCTAssertEqual(products.values, wr)
                    var out = [Double](repeating: .nan, count: rows * o)
                    // In two pieces of rows, as the backend unblinds pieces of a call.
                    let half = rows / 2
                    for (lo, hi) in [(0, half), (half, rows)] where hi > lo {
                        let piece = MaskedOutput(bits: bits, rows: hi - lo, outputs: o, body: packedSlice(output, rows: lo..<hi))
                        products.withValues(lo * o, hi * o) { raw in
                            out.withUnsafeMutableBufferPointer { MaskedProduct.unblind(piece, padProducts: raw, width: width, into: $0.baseAddress! + lo * o) }
                        }
                    }
                    XCTAssertEqual(out.map { Int64($0) }, truth, "stored at \(width) bytes, rows \(rows), O \(o), k = \(bits)")
                }
            }
        }
    }

    /// The online kernel for k ≤ 32 (every digit in one pass, int32 lanes that wrap mod 2^32):
    /// the AVX-512 VNNI tiles and the portable C give the same words, equal to W·u mod 2^32
    /// computed here, over 1 to 4 digits, column tiles cut short and output blocks of 6 cut short.
    func testWrappingOnlineKernelMatchesThePortableOneAndTheProduct() throws {
        var rng = TestRNG(state: 11)
        for (features, columns, outputs, bits) in [(5, 8, 1, 8), (64, 16, 6, 13), (37, 33, 13, 24), (1000, 9, 7, 32), (4, 47, 12, 20)] {
            let limbs = (bits + 7) / 8
            let w = try randomWeights(outputs, features, &rng, maxAbs: 128, kernel: .bytes)
            let mask: UInt64 = (1 << UInt64(bits)) - 1
            let u = (0..<(features * columns)).map { i in i % 31 == 0 ? mask : rng.next() & mask }  // feature-major
            let packed = u.map { $0 << UInt64(64 - bits) }.withUnsafeBufferPointer { Parallel.packBits($0, bits: bits) }
            var digits = [UInt8](repeating: 0xAA, count: nb_masked_digits_count(features, columns, limbs))
            nb_masked_pack_digits(packed, packed.count, UInt32(bits), features, columns, limbs, &digits, 0, (columns + 15) / 16)
            var fast = [UInt32](repeating: 0, count: outputs * columns), portable = fast
            w.bytes.withUnsafeBufferPointer { wb in
                // In two ranges of outputs, as the threads split them.
                for (lo, hi) in [(0, outputs / 2), (outputs / 2, outputs)] where hi > lo {
                    nb_masked_gemm32(wb.baseAddress!, w.paddedInputs, digits, columns, limbs, &fast, lo, hi)
                    nb_masked_gemm32_portable(wb.baseAddress!, w.paddedInputs, digits, columns, limbs, &portable, lo, hi)
                }
            }
            var truth = [UInt32](repeating: 0, count: outputs * columns)
            for o in 0..<outputs {
                for c in 0..<columns {
                    var s: UInt64 = 0
                    for f in 0..<features { s = s &+ u[f * columns + c] &* UInt64(bitPattern: Int64(w.value(o, f))) }
                    truth[o * columns + c] = UInt32(truncatingIfNeeded: s)
                }
            }
            XCTAssertEqual(fast, truth, "K \(features), columns \(columns), O \(outputs), k = \(bits)")
            XCTAssertEqual(portable, truth, "portable, K \(features), columns \(columns), O \(outputs), k = \(bits)")
        }
    }

    /// The byte GEMM of 5 and 6 digits (the offline bodies; int32 sums widened every 512 inner
    /// values): equal to Σ_t 2^(64 − 8L + 8t) Σ_k w·d_t mod 2^64 computed here, added to what
    /// `out` held, for inner dimensions of one to five chunks, column tiles and output blocks cut
    /// short, extreme digits, outputs in two ranges as the threads split them.
    func testByteGEMMOfTheOfflineBodiesEqualsItsFormula() throws {
        var rng = TestRNG(state: 13)
        for (features, columns, outputs, limbs) in [(3, 5, 1, 5), (513, 17, 6, 5), (1536, 33, 9, 5), (700, 300, 5, 6), (2049, 16, 4, 6)] {
            let w = try randomWeights(outputs, features, &rng, maxAbs: 128, kernel: .bytes)
            let top = UInt64(8 * limbs)
            let v = (0..<(features * columns)).map { i -> UInt64 in
                let d = i % 13 == 0 ? (1 << top) - 1 : rng.next() & ((1 << top) - 1)
                return d << (64 - top)
            }
            let quads = (features + 3) / 4
            var packed = [UInt8](repeating: 0, count: nb_fhe_packed_bytes_count(features, columns, limbs))
            nb_fhe_pack_bytes_range(v, features, columns, limbs, &packed, 0, quads)
            let start = (0..<(outputs * columns)).map { _ in rng.next() }
            var out = start
            w.bytes.withUnsafeBufferPointer { wb in
                for (lo, hi) in [(0, outputs / 2), (outputs / 2, outputs)] where hi > lo {
                    nb_fhe_byte_gemm(wb.baseAddress!, w.paddedInputs, packed, columns, limbs, &out, lo, hi)
                }
            }
            var truth = start
            for o in 0..<outputs {
                for c in 0..<columns {
                    var sum: UInt64 = 0
                    for f in 0..<features { sum = sum &+ (v[f * columns + c] >> (64 - top)) &* UInt64(bitPattern: Int64(w.value(o, f))) }
                    truth[o * columns + c] = truth[o * columns + c] &+ sum << (64 - top)
                }
            }
            XCTAssertEqual(out, truth, "K \(features), columns \(columns), O \(outputs), \(limbs) digits")
        }
    }

    /// What the server receives online is x − r mod 2^k: with uniform pads its values are
    /// uniform whatever x is — here x is constant and the padded values still cover every
    /// bucket of [0, 2^k) evenly (χ² over 64 buckets), and reveal neither x nor its rows.
    func testPaddedValuesAreUniform() throws {
        let (rows, k, bits) = (64, 256, 24)
        let x = [Int64](repeating: 200, count: rows * k)
        var pad = PadExpander(seed: .fresh(), bits: bits)
        let pads = pad.pads(first: 0, count: rows, features: k)
        let input = x.withUnsafeBufferPointer { xs in pads.withUnsafeBufferPointer { MaskedProduct.blind(xs, pads: $0, rows: rows, features: k, bits: bits) } }
        var values = [UInt64](repeating: 0, count: rows * k)
        input.body.withUnsafeBufferPointer { b in values.withUnsafeMutableBufferPointer { nb_fhe_unpack_bits_wrapper(b, $0, bits) } }
        var buckets = [Double](repeating: 0, count: 64)
        for v in values { buckets[Int((v >> UInt64(64 - bits)) >> UInt64(bits - 6))] += 1 }
        let expected = Double(values.count) / 64
        let chi2 = buckets.reduce(0) { $0 + ($1 - expected) * ($1 - expected) / expected }
        // 63 degrees of freedom: P(χ² > 110) < 1e-4.
        XCTAssertLessThan(chi2, 110, "χ² = \(chi2)")
    }

    /// Pads: the same seed and row give the same pads, other rows and seeds others; every value
    /// is below 2^k.
    func testPadsAreDeterministicPerRowAndBounded() {
        let seed = MaskSeed.fresh()
        var a = PadExpander(seed: seed, bits: 20), b = PadExpander(seed: seed, bits: 20), c = PadExpander(seed: .fresh(), bits: 20)
        let whole = a.pads(first: 10, count: 4, features: 33)
        XCTAssertEqual(Array(whole[33..<66]), b.pads(first: 11, count: 1, features: 33))
        XCTAssertNotEqual(Array(whole[0..<33]), Array(whole[33..<66]))
        XCTAssertNotEqual(whole, c.pads(first: 10, count: 4, features: 33))
        XCTAssertTrue(whole.allSatisfy { $0 < 1 << 20 })
        // Many rows are expanded on every core: each row is still its own keystream, at both widths.
        for bits in [20, 40] {
            var many = PadExpander(seed: seed, bits: bits), one = PadExpander(seed: seed, bits: bits)
            let rows = many.pads(first: 3, count: 100, features: 33)
            for r in [0, 49, 50, 99] { XCTAssertEqual(Array(rows[(r * 33)..<((r + 1) * 33)]), one.pads(first: 3 + r, count: 1, features: 33), "row \(r), k = \(bits)") }
        }
    }

    /// Offline, hinted (the plan the mask store uses): uniform pads mod 2^k, encrypted in a full
    /// ring with k message bits under a fresh secret per ring and the stream's fixed public masks,
    /// whose product W·A the client got once (the hint). The server multiplies bodies only and
    /// answers no masks; each ring decrypts to W·r mod 2^k exactly with the hint and its own
    /// secret, and to something else under another; the measured noise is the formula's (within
    /// 10 %); the plan's failure probability per value is ≤ 2^-64 for the k in use (8-bit inputs,
    /// the widest weights, the GPT-2 and SmolLM2 inner dimensions).
    func testHintedOfflineProductIsExactWithTheFormulasNoise() throws {
        var rng = TestRNG(state: 21)
        let client = FHEClient()
        let (k, o) = (256, 16)
        let w = try ServerWeights(outputs: o, inputs: k) { _, _ in rng.next() % 2 == 0 ? 127 : -127 }
        let shape = w.shape(rows: 2048, maxAbsInput: 255)
        let plan = try CallPlan.hinted(messageBits: try CallPlan.messageBits(for: shape), maxRowL2: shape.maxRowL2, parameters: .glwe2048)
        XCTAssertTrue(plan.hinted)
        XCTAssertEqual(plan.maskLimbs, 4, "the hint is computed from the masks at full precision")
        XCTAssertEqual(plan.serverColumns(rows: 2048), plan.bodyBits / 8 * 2048)
        let rows = plan.parameters.ringDegree, bits = plan.messageBits
        let seed = MaskSeed.fresh()
        let hintAnswer = try FHEServer.handle(request: FHEClient.hintRequest(features: k, plan: plan, seed: seed).serialized(), weights: w)
        XCTAssertEqual(hintAnswer.count, EncryptedProduct.hintByteCount(plan: plan, outputs: o))
        let hintProduct = try EncryptedProduct(serialized: hintAnswer)
        XCTAssertTrue(hintProduct.bodies.isEmpty)
        let hint = hintProduct.masks
        let mask = (UInt64(1) << UInt64(bits)) - 1, half = UInt64(1) << UInt64(bits - 1)
        var secrets: [[Int8]] = []
        for ring in 0..<2 {
            var pad = PadExpander(seed: .fresh(), bits: bits)
            let pads = pad.pads(first: 0, count: rows, features: k)
            let centred = pads.map { $0 >= half ? Int64($0) - Int64(1) << Int64(bits) : Int64($0) }
            let key = SecretKey.generate(plan.parameters)
            secrets.append(key.coefficients)
            let request = client.encrypt(centred, rows: rows, features: k, plan: plan, seed: seed, key: key)
            XCTAssertEqual([request.maskLimbs, request.outputMaskBits], [0, 0])
            XCTAssertEqual(request.seed, seed)
            // The fresh secret is nowhere in what is sent (no 32-coefficient window, as bytes).
            let sent = Data(request.serialized()), secret = Data(key.coefficients.map { UInt8(bitPattern: $0) })
            for start in stride(from: 0, to: secret.count - 32, by: 64) { XCTAssertNil(sent.range(of: secret[start..<start + 32])) }
            let answer = try FHEServer.handle(request: request.serialized(), weights: w)
            XCTAssertEqual(answer.count, EncryptedProduct.byteCount(plan: plan, rows: rows, outputs: o))
            let product = try EncryptedProduct(serialized: answer)
            XCTAssertTrue(product.masks.isEmpty)
            let truth = clearProductMod(pads, rows: rows, w, bits: bits)
            XCTAssertEqual(try client.decrypt(product, plan: plan, hint: hint, key: key).map { UInt64(bitPattern: $0) & mask }, truth)
            let other = try client.decrypt(product, plan: plan, hint: hint, key: client.keyring.key(for: plan.parameters)).map { UInt64(bitPattern: $0) & mask }
            XCTAssertNotEqual(other, truth)
            XCTAssertThrowsError(try client.decrypt(product, plan: plan, hint: Array(hint.dropLast()), key: key)) { XCTAssertTrue("\($0)".contains("hint"), "\($0)") }
            guard ring == 0 else { continue }
            // Noise against the formula: E = v − Δ·m, where Δ·m wraps mod 2^64 as the products do.
            let e = client.decryptionErrors(product, expected: truth.map { Int64(bitPattern: $0) }, plan: plan, hint: hint, key: key)
            let measured = (e.reduce(0) { $0 + $1 * $1 } / Double(e.count)).squareRoot()
            let predicted = plan.noiseVariance(weightNorm: w.maxRowL2).squareRoot()
            XCTAssertEqual(measured / predicted, 1, accuracy: 0.10, "measured \(measured), formula \(predicted)")
            XCTAssertLessThanOrEqual(plan.log2FailureProbability(weightNorm: w.maxRowL2), -64)
            XCTAssertLessThan(e.map(abs).max()!, Double(plan.delta) / 2)
        }
        XCTAssertNotEqual(secrets[0], secrets[1], "a fresh secret per ring")
        for inner in [768, 3072, 576, 1536] {
            let shape = ProductShape.worstCase(rows: 2048, innerDimension: inner, inputBits: 8, weightBits: 8)
            let p = try CallPlan.hinted(messageBits: try CallPlan.messageBits(for: shape), maxRowL2: shape.maxRowL2, parameters: .glwe2048)
            XCTAssertLessThanOrEqual(p.log2FailureProbability(weightNorm: shape.maxRowL2), -64, "K = \(inner): \(p)")
        }
    }

    /// The two requests of the hinted protocol on the wire: a bodies-only call and a masks-only
    /// hint request round-trip; inconsistent limbs and bits are refused with the field; the
    /// admission takes exactly the hinted plans of one ring (no more rows, no other bits).
    func testHintedRequestsOnTheWireAndTheirAdmission() throws {
        let client = FHEClient()
        let (k, o) = (40, 6)
        let w = try ServerWeights(outputs: o, inputs: k) { r, c in (r * 7 + c * 3) % 255 - 127 }
        let shape = w.shape(rows: 2048, maxAbsInput: 255)
        let plan = try CallPlan.hinted(messageBits: try CallPlan.messageBits(for: shape), maxRowL2: shape.maxRowL2, parameters: .glwe2048)
        let hintRequest = FHEClient.hintRequest(features: k, plan: plan, seed: .fresh())
        let call = client.encrypt([Int64](repeating: 3, count: 100 * k), rows: 100, features: k, plan: plan, seed: hintRequest.seed,
                                  key: SecretKey.generate(plan.parameters))
        for message in [hintRequest, call] {
            XCTAssertEqual(try EncryptedMatrix(serialized: message.serialized()), message)
            XCTAssertNil(CallPlan.refusal(of: message.shape, maxRowL1: w.maxRowL1, maxRowL2: w.maxRowL2, maxInputBits: 8))
        }
        func rejects(_ bytes: [UInt8], _ fragment: String, line: UInt = #line) {
            XCTAssertThrowsError(try FHEServer.handle(request: bytes, weights: w), line: line) {
                XCTAssertTrue("\($0)".contains(fragment), "\"\($0)\" lacks \"\(fragment)\"", line: line)
            }
        }
        // Header bytes: 9 body limbs, 10 mask limbs, 11 output body bits, 12 output mask bits.
        var bad = hintRequest.serialized(); bad[11] = 5
        rejects(bad, "output body bits")
        bad = call.serialized(); bad[12] = 7
        rejects(bad, "output mask bits")
        bad = hintRequest.serialized(); bad[10] = 0; bad[12] = 0
        rejects(bad, "nothing to multiply")
        var product = try EncryptedProduct(serialized: try FHEServer.handle(request: call.serialized(), weights: w))
        product.outputBodyBits = 0
        XCTAssertThrowsError(try EncryptedProduct(serialized: product.serialized())) { XCTAssertTrue("\($0)".contains("not both 0"), "\($0)") }
        // Admission: the hinted plans of one ring only.
        func refusal(_ m: EncryptedMatrix) -> String? { CallPlan.refusal(of: m.shape, maxRowL1: w.maxRowL1, maxRowL2: w.maxRowL2, maxInputBits: 8) }
        var wider = hintRequest
        wider.outputMaskBits += 1
        XCTAssertTrue(refusal(wider)?.contains("not a plan this server chooses") == true, refusal(wider) ?? "accepted")
        var fewer = hintRequest
        fewer.rows = 1000
        XCTAssertTrue(refusal(fewer)?.contains("exactly the parameter set's ring degree") == true, refusal(fewer) ?? "accepted")
        let twoRings = client.encrypt([Int64](repeating: 1, count: 2049 * k), rows: 2049, features: k,
                                      plan: try CallPlan.plan(messageBits: plan.messageBits, rows: 2049, maxRowL2: w.maxRowL2, parameters: .glwe2048),
                                      seed: .fresh(), key: SecretKey.generate(.glwe2048))
        var hintedTwoRings = twoRings
        (hintedTwoRings.maskLimbs, hintedTwoRings.outputMaskBits, hintedTwoRings.bodyBits, hintedTwoRings.outputBodyBits) = (0, 0, plan.bodyBits, plan.outputBodyBits)
        XCTAssertTrue(refusal(hintedTwoRings)?.contains("at most the parameter set's ring degree") == true, refusal(hintedTwoRings) ?? "accepted")
        var moreLimbs = call
        moreLimbs.bodyBits = plan.bodyBits == 64 ? 56 : plan.bodyBits + 8
        XCTAssertTrue(refusal(moreLimbs)?.contains("not a plan this server chooses") == true, refusal(moreLimbs) ?? "accepted")
    }

    /// Malformed online messages are refused with a reason, never a crash: wrong magic, kind,
    /// bits, rows, lengths, trailing bytes, and 2,000 random truncations and byte flips.
    func testMalformedMaskedMessagesAreRejected() throws {
        var rng = TestRNG(state: 8)
        let w = try randomWeights(4, 9, &rng)
        let x = [Int64](repeating: 3, count: 2 * 9), pads = [UInt64](repeating: 5, count: 2 * 9)
        let good = x.withUnsafeBufferPointer { xs in pads.withUnsafeBufferPointer { MaskedProduct.blind(xs, pads: $0, rows: 2, features: 9, bits: 20) } }.serialized()
        XCTAssertNoThrow(try FHEServer.handleMasked(request: good, weights: w))
        func rejects(_ bytes: [UInt8], _ fragment: String, line: UInt = #line) {
            XCTAssertThrowsError(try FHEServer.handleMasked(request: bytes, weights: w), line: line) { XCTAssertTrue("\($0)".contains(fragment), "\($0)", line: line) }
        }
        rejects(Array(good.prefix(3)), "not an nb message")
        var kind = good; kind[6] = 2
        rejects(kind, "expected a padded input")
        var bits = good; bits[7] = 60
        rejects(bits, "invalid bits")
        var zeroRows = good; zeroRows[8] = 0
        rejects(zeroRows, "invalid rows")
        rejects(good + [0], "trailing")
        rejects(Array(good.dropLast()), "truncated")
        let wrongWidth = try randomWeights(4, 10, &rng)
        XCTAssertThrowsError(try FHEServer.handleMasked(request: good, weights: wrongWidth)) { XCTAssertTrue("\($0)".contains("features"), "\($0)") }
        for i in 0..<2000 {
            var b = good
            if i % 2 == 0 { b = Array(b.prefix(Int(rng.next() % UInt64(b.count)))) } else { b[Int(rng.next() % UInt64(b.count))] ^= UInt8(1 + rng.next() % 255) }
            _ = try? FHEServer.handleMasked(request: b, weights: w)
            _ = try? MaskedOutput(serialized: b)
        }
        // A response of another shape than the one asked for is refused before its body is read.
        let response = try FHEServer.handleMasked(request: good, weights: w)
        XCTAssertThrowsError(try MaskedOutput(serialized: response, expecting: (2, 5, 20))) { XCTAssertTrue("\($0)".contains("expected 2 × 5"), "\($0)") }
    }
}

/// The kernel's bit unpacking over buffers (values come back as v << (64 − bits)).
func nb_fhe_unpack_bits_wrapper(_ input: UnsafeBufferPointer<UInt8>, _ out: UnsafeMutableBufferPointer<UInt64>, _ bits: Int) {
    let v = Parallel.unpackBits(Array(input), count: out.count, bits: bits)
    _ = out.update(fromContentsOf: v)
}
