import CKernels
import Foundation
import Testing
@testable import Engine

/// The decode products (CKernels/decode.c) on every stored format, against the same
/// weights dequantized by the checkpoint reader (`GGUFFile.dequantize`, written separately
/// in Swift) and multiplied in double precision. The bound is the rounding of a Float32 sum
/// of k products: k·2⁻²⁴·Σ|w·x| (plus half precision's rounding of x for no format: x stays
/// Float32).
@Suite struct DecodeKernelTests {
    /// Random rows of `format`: half scales in a realistic range, random quants.
    static func randomRows(_ format: DecodeMatrix.Format, rows: Int, columns: Int, rng: inout SeededGenerator) -> [UInt8] {
        func half(_ x: Float) -> [UInt8] {
            var h: UInt16 = 0
            var f = x
            nb_f32_to_f16(&f, &h, 1)
            return [UInt8(h & 0xFF), UInt8(h >> 8)]
        }
        func uniform() -> Float { Float(rng.next() % 1_000_000) / 1_000_000 }
        var bytes: [UInt8] = []
        for _ in 0..<rows {
            switch format {
            case .f16:
                for _ in 0..<columns { bytes += half((uniform() - 0.5) * 0.2) }
            case .q8_0:
                for _ in 0..<columns / 32 {
                    bytes += half(0.0005 + uniform() * 0.002)
                    for _ in 0..<32 { bytes.append(UInt8(truncatingIfNeeded: rng.next())) }
                }
            case .q4_0, .q4_1:
                for _ in 0..<columns / 32 {
                    bytes += half(0.005 + uniform() * 0.01)
                    if format == .q4_1 { bytes += half((uniform() - 0.5) * 0.1) }
                    for _ in 0..<16 { bytes.append(UInt8(truncatingIfNeeded: rng.next())) }
                }
            }
        }
        return bytes
    }

    static func ggmlType(_ format: DecodeMatrix.Format) -> GGMLType {
        switch format {
        case .f16: .f16
        case .q8_0: .q8_0
        case .q4_0: .q4_0
        case .q4_1: .q4_1
        }
    }

    /// The weights as the checkpoint reader dequantizes them.
    static func dequantized(_ bytes: [UInt8], _ format: DecodeMatrix.Format, count: Int) -> [Float] {
        var out = [Float](repeating: .nan, count: count)
        bytes.withUnsafeBytes { b in out.withUnsafeMutableBufferPointer { GGUFFile.dequantize(ggmlType(format), from: b.baseAddress!, count: count, into: $0.baseAddress!) } }
        return out
    }

    /// Checks y against W·x (+ y₀ when accumulating) in double precision.
    static func check(_ y: [Float], weights w: [Float], x: [Float], start: [Float]?, rows: Int, columns k: Int, _ label: String) {
        var worst = 0.0
        for r in 0..<rows {
            var exact = Double(start?[r] ?? 0), magnitude = abs(exact)
            for i in 0..<k {
                exact += Double(w[r * k + i]) * Double(x[i])
                magnitude += abs(Double(w[r * k + i]) * Double(x[i]))
            }
            let bound = Double(k + 2) * 0x1p-24 * magnitude + 1e-30
            worst = max(worst, abs(Double(y[r]) - exact) / bound)
        }
        #expect(worst <= 1, "\(label): error \(worst) × the Float32 summation bound")
    }

    @Test(arguments: DecodeMatrix.Format.allCases)
    func everyFormatMatchesTheDequantizedWeights(_ format: DecodeMatrix.Format) {
        var rng = SeededGenerator(seed: UInt64(format.rawValue) + 11)
        // 4·37 + 3 rows: whole groups of 4, a ragged end, and a product large enough
        // (151 × 512 weights) for the pool to share it between threads.
        for (rows, columns) in [(1, 32), (7, 64), (151, 512), (151, 96)] {
            let bytes = Self.randomRows(format, rows: rows, columns: columns, rng: &rng)
            let w = Self.dequantized(bytes, format, count: rows * columns)
            let x = (0..<columns).map { _ in Float(Int(rng.next() % 2001) - 1000) / 400 }
            let start = (0..<rows).map { _ in Float(Int(rng.next() % 201) - 100) / 10 }
            let m = DecodeMatrix(format: format, bytes: bytes, rows: rows, columns: columns)
            for accumulate in [false, true] {
                var y = accumulate ? start : [Float](repeating: .nan, count: rows)
                x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { m.apply(xp.baseAddress!, $0.baseAddress!, accumulate: accumulate) } }
                Self.check(y, weights: w, x: x, start: accumulate ? start : nil, rows: rows, columns: columns,
                           "\(format) (\(rows), \(columns)) accumulate \(accumulate)")
            }
            // The portable kernel (CPUs without AVX2) on the same rows.
            var yr = [Float](repeating: .nan, count: rows)
            bytes.withUnsafeBufferPointer { b in
                x.withUnsafeBufferPointer { xp in
                    yr.withUnsafeMutableBufferPointer { yp in
                        var job = nb_gemv_job(format: format.rawValue, w: b.baseAddress, x: xp.baseAddress, y: yp.baseAddress,
                                              rows: rows, k: columns, accumulate: 0)
                        nb_gemv_rows_reference(&job)
                    }
                }
            }
            Self.check(yr, weights: w, x: x, start: nil, rows: rows, columns: columns, "\(format) scalar (\(rows), \(columns))")
        }
    }

    /// A batch of products of different formats and shapes, some accumulating, run at once
    /// and repeatedly (the pool's tasks from one batch never leak into the next).
    @Test func batchesOfMixedProducts() {
        var rng = SeededGenerator(seed: 5)
        let shapes: [(DecodeMatrix.Format, Int, Int)] = [(.q4_1, 576, 576), (.q4_0, 192, 576), (.q8_0, 1536, 576), (.f16, 200, 576)]
        let x = (0..<576).map { _ in Float(Int(rng.next() % 2001) - 1000) / 400 }
        let matrices = shapes.map { f, r, c in (DecodeMatrix(format: f, bytes: Self.randomRows(f, rows: r, columns: c, rng: &rng), rows: r, columns: c), f) }
        let weights = matrices.map { m, f in Self.dequantized(m.data, f, count: m.rows * m.columns) }
        let starts = matrices.map { m, _ in (0..<m.rows).map { Float($0 % 17) - 8 } }
        for round in 0..<50 {
            var ys = starts
            x.withUnsafeBufferPointer { xp in
                let pointers = ys.indices.map { i in ys[i].withUnsafeMutableBufferPointer { $0.baseAddress! } }
                DecodeMatrix.apply(matrices.indices.map { DecodeMatrix.Product(matrices[$0].0, xp.baseAddress!, pointers[$0], accumulate: $0 % 2 == 1) })
            }
            if round % 10 == 0 || round == 49 {
                for i in matrices.indices {
                    Self.check(ys[i], weights: weights[i], x: x, start: i % 2 == 1 ? starts[i] : nil, rows: matrices[i].0.rows,
                               columns: 576, "batch round \(round), product \(i) (\(matrices[i].1))")
                }
            }
        }
        #expect(nb_decode_threads() >= 1)
    }

    /// Half-precision conversion (vectorized): round to nearest even, as the definition says,
    /// checked against every half value's neighbours and midpoints.
    @Test func halfConversionRoundsToNearestEven() {
        var inputs: [Float] = [], expected: [UInt16] = []
        for h in UInt16(0)..<0x7C00 where h % 7 == 0 || h < 64 || h > 0x7BF0 {
            let a = Float(Float16(bitPattern: h)), b = Float(Float16(bitPattern: h + 1))
            let mid = (a + b) / 2  // exact in Float32
            inputs += [a, mid, -a, b]
            expected += [h, h % 2 == 0 ? h : h + 1, h | 0x8000, h + 1]
        }
        inputs += [70000, -70000, 65520, 65519]
        expected += [0x7C00, 0xFC00, 0x7C00, 0x7BFF]
        var out = [UInt16](repeating: 0, count: inputs.count)
        inputs.withUnsafeBufferPointer { i in out.withUnsafeMutableBufferPointer { nb_f32_to_f16(i.baseAddress!, $0.baseAddress!, inputs.count) } }
        let wrong = inputs.indices.filter { out[$0] != expected[$0] }
        #expect(wrong.isEmpty, "\(wrong.count) wrong, first: \(wrong.prefix(3).map { (inputs[$0], out[$0], expected[$0]) })")
    }
}
