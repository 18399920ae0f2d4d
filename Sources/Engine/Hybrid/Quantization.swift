import CKernels
import COpenBLAS
import FHE
import Foundation

/// How the remote linear layers are quantized: the seed's schemes and their parts.
///
/// Activations (forward inputs x and backward output gradients dY) are quantized
/// statically per tensor (ranges calibrated on an input set), dynamically per tensor, or
/// dynamically per token (one range per row); weights statically per tensor or per output
/// channel. Named schemes: `ST-ST` (static per-tensor both), `DTen-ST` (dynamic per-tensor
/// activations, static per-tensor weights), `DTok-SC` (dynamic per-token activations,
/// per-channel weights).
public struct QuantizationScheme: Codable, Equatable, Hashable, Sendable {
    public enum Activations: String, Codable, CaseIterable, Sendable {
        case staticPerTensor = "static-per-tensor", dynamicPerTensor = "dynamic-per-tensor", dynamicPerToken = "dynamic-per-token"
    }
    public enum Weights: String, Codable, CaseIterable, Sendable {
        case perTensor = "per-tensor", perChannel = "per-channel"
    }

    /// Bits of every quantized value, 2…16.
    public var nBits: Int
    public var activations: Activations
    public var weights: Weights
    /// Activations: signed and symmetric (zero point 0) when true; unsigned with a zero
    /// point (Concrete ML's per-token layout) when false.
    public var symmetricActivations: Bool
    /// Weights: signed and symmetric when true (Concrete ML's); unsigned with zero points when false.
    public var symmetricWeights: Bool

    public init(nBits: Int, activations: Activations, weights: Weights, symmetricActivations: Bool = false, symmetricWeights: Bool = true) {
        (self.nBits, self.activations, self.weights) = (nBits, activations, weights)
        (self.symmetricActivations, self.symmetricWeights) = (symmetricActivations, symmetricWeights)
    }

    /// The seed's names: `ST-ST`, `DTen-ST`, `DTok-SC` (case-insensitive), nil otherwise.
    public init?(named name: String, nBits: Int) {
        switch name.uppercased() {
        case "ST-ST": self.init(nBits: nBits, activations: .staticPerTensor, weights: .perTensor)
        case "DTEN-ST": self.init(nBits: nBits, activations: .dynamicPerTensor, weights: .perTensor)
        case "DTOK-SC": self.init(nBits: nBits, activations: .dynamicPerToken, weights: .perChannel)
        default: return nil
        }
    }

    public static let names = ["ST-ST", "DTen-ST", "DTok-SC"]

    /// `DTok-SC 8-bit`, or the parts when the scheme has no name.
    public var description: String {
        let name: String? = switch (activations, weights) {
        case (.staticPerTensor, .perTensor): "ST-ST"
        case (.dynamicPerTensor, .perTensor): "DTen-ST"
        case (.dynamicPerToken, .perChannel): "DTok-SC"
        default: nil
        }
        let parts = "\(activations.rawValue) activations, \(weights.rawValue) weights"
        let symmetry = "\(symmetricActivations ? "symmetric" : "zero-point") activations, \(symmetricWeights ? "symmetric" : "zero-point") weights"
        return "\(name.map { "\($0): " } ?? "")\(parts), \(nBits)-bit (\(symmetry))"
    }

    public func validate() throws(QuantizationError) {
        guard (2...16).contains(nBits) else { throw .invalidBits(nBits) }
    }
}

public enum QuantizationError: Error, Equatable, CustomStringConvertible {
    case invalidBits(Int)
    case accumulatorTooSmall(module: String, bound: Double)
    case notCalibrated(module: String)

    public var description: String {
        switch self {
        case .invalidBits(let n): return "n_bits must be 2…16, got \(n)"
        case .accumulatorTooSmall(let m, let b):
            return "\(m): an integer product can reach \(b), beyond the 2^53 that double-precision accumulation keeps exact; use fewer bits"
        case .notCalibrated(let m): return "\(m): static quantization needs calibrated ranges; run compile_hybrid with calibration data"
        }
    }
}

/// The affine map between reals and integers: x ≈ scale·(q − zeroPoint), q in [qMin, qMax].
public struct AffineQuantizer: Codable, Equatable, Sendable {
    public var scale: Double
    public var zeroPoint: Double
    public var qMin: Double
    public var qMax: Double

    public init(scale: Double, zeroPoint: Double, qMin: Double, qMax: Double) {
        (self.scale, self.zeroPoint, self.qMin, self.qMax) = (scale, zeroPoint, qMin, qMax)
    }

    /// For values in [lo, hi] with `bits` bits: symmetric signed q ∈ [−(2^(b−1) − 1), 2^(b−1) − 1]
    /// with zero point 0, or unsigned q ∈ [0, 2^b − 1] with the zero point that maps 0 to an
    /// integer (the range is widened to include 0). A zero range gets scale 1.
    public init(lo: Double, hi: Double, bits: Int, symmetric: Bool) {
        if symmetric {
            let m = Double((1 << (bits - 1)) - 1)
            let a = max(abs(lo), abs(hi))
            scale = a > 0 && a.isFinite ? a / m : 1
            (zeroPoint, qMin, qMax) = (0, -m, m)
        } else {
            let levels = Double((1 << bits) - 1)
            let l = min(lo, 0), h = max(hi, 0)
            scale = h > l && (h - l).isFinite ? (h - l) / levels : 1
            zeroPoint = min(max((-l / scale).rounded(), 0), levels)
            (qMin, qMax) = (0, levels)
        }
    }

    /// round(x / scale) + zeroPoint, clamped to [qMin, qMax].
    @inline(__always) public func quantize(_ x: Double) -> Double {
        min(max((x / scale).rounded() + zeroPoint, qMin), qMax)
    }

    @inline(__always) public func dequantize(_ q: Double) -> Double { scale * (q - zeroPoint) }

    /// The largest |q − zeroPoint|: what the accumulator bound uses.
    public var maxCentered: Double { max(qMax - zeroPoint, zeroPoint - qMin) }
}

/// A matrix quantized by rows: row r ≈ scale_r·(q_r − zp_r). The integers (|q| ≤ 2^16) are
/// stored as Float, which holds them exactly; products convert them to Double so BLAS
/// `dgemm` multiplies them exactly (every partial sum stays below 2^53).
public struct QuantizedRows: Sendable {
    public let rows: Int
    public let columns: Int
    /// (rows, columns) integers.
    public var values: [Float]
    /// One quantizer per row, or a single one shared by every row.
    public var quantizers: [AffineQuantizer]
    /// Σ_c q[r, c], for the zero-point correction.
    public var rowSums: [Double]

    public func quantizer(_ r: Int) -> AffineQuantizer { quantizers.count == 1 ? quantizers[0] : quantizers[r] }

    /// Quantizes `rows` rows of `columns` values read by `value(r, c)`: one range per row
    /// (`perRow`) or one for the whole matrix, computed from the data or given.
    public init(rows: Int, columns: Int, bits: Int, symmetric: Bool, perRow: Bool, range: (Double, Double)? = nil,
                value: (Int, Int) -> Double) {
        (self.rows, self.columns) = (rows, columns)
        var real = [Double](repeating: 0, count: rows * columns)
        for r in 0..<rows { for c in 0..<columns { real[r * columns + c] = value(r, c) } }
        var quantizers: [AffineQuantizer] = []
        if let range {
            quantizers = [AffineQuantizer(lo: range.0, hi: range.1, bits: bits, symmetric: symmetric)]
        } else if perRow {
            for r in 0..<rows {
                var lo = Double.infinity, hi = -Double.infinity
                for c in 0..<columns { let v = real[r * columns + c]; lo = min(lo, v); hi = max(hi, v) }
                quantizers.append(AffineQuantizer(lo: columns > 0 ? lo : 0, hi: columns > 0 ? hi : 0, bits: bits, symmetric: symmetric))
            }
        } else {
            var lo = Double.infinity, hi = -Double.infinity
            for v in real { lo = min(lo, v); hi = max(hi, v) }
            quantizers = [AffineQuantizer(lo: real.isEmpty ? 0 : lo, hi: real.isEmpty ? 0 : hi, bits: bits, symmetric: symmetric)]
        }
        var sums = [Double](repeating: 0, count: rows)
        var values = [Float](repeating: 0, count: rows * columns)
        for r in 0..<rows {
            let q = quantizers.count == 1 ? quantizers[0] : quantizers[r]
            var s = 0.0
            for c in 0..<columns {
                let v = q.quantize(real[r * columns + c])
                values[r * columns + c] = Float(v)
                s += v
            }
            sums[r] = s
        }
        (self.values, self.quantizers, self.rowSums) = (values, quantizers, sums)
    }

    /// Activation rows (rows, columns) of Float: one range per row (`perRow`), one for the
    /// whole matrix from the data, or the given `range` (static). The same integers as the
    /// general initializer, computed by the C kernels.
    public init(activations x: UnsafeBufferPointer<Float>, rows: Int, columns: Int, bits: Int, symmetric: Bool, perRow: Bool,
                range: (Double, Double)? = nil) {
        precondition(x.count == rows * columns, "\(x.count) values are not (\(rows), \(columns))")
        (self.rows, self.columns) = (rows, columns)
        var quantizers: [AffineQuantizer]
        if let range {
            quantizers = [AffineQuantizer(lo: range.0, hi: range.1, bits: bits, symmetric: symmetric)]
        } else {
            var mins = [Float](repeating: 0, count: rows), maxs = mins
            if rows > 0 && columns > 0 {
                mins.withUnsafeMutableBufferPointer { lo in
                    maxs.withUnsafeMutableBufferPointer { hi in
                        let (x, lo, hi) = (x.baseAddress!, lo.baseAddress!, hi.baseAddress!)
                        Parallel.forEach(rows: rows, minimumRowsPerTask: Self.rowsPerTask(columns)) { r in
                            nb_row_min_max(x + r.lowerBound * columns, r.count, columns, lo + r.lowerBound, hi + r.lowerBound)
                        }
                    }
                }
            }
            if perRow || rows == 0 {
                quantizers = (0..<rows).map { AffineQuantizer(lo: columns > 0 ? Double(mins[$0]) : 0, hi: columns > 0 ? Double(maxs[$0]) : 0, bits: bits, symmetric: symmetric) }
                if rows == 0 { quantizers = [AffineQuantizer(lo: 0, hi: 0, bits: bits, symmetric: symmetric)] }
            } else {
                let lo = columns > 0 ? Double(mins.min()!) : 0, hi = columns > 0 ? Double(maxs.max()!) : 0
                quantizers = [AffineQuantizer(lo: lo, hi: hi, bits: bits, symmetric: symmetric)]
            }
        }
        var values = [Float](repeating: 0, count: rows * columns), sums = [Double](repeating: 0, count: rows)
        let scales = quantizers.map(\.scale), zeroPoints = quantizers.map(\.zeroPoint)
        if rows > 0 && columns > 0 {
            let perRow = quantizers.count > 1, (qMin, qMax) = (quantizers[0].qMin, quantizers[0].qMax)
            scales.withUnsafeBufferPointer { sc in
                zeroPoints.withUnsafeBufferPointer { zp in
                    values.withUnsafeMutableBufferPointer { q in
                        sums.withUnsafeMutableBufferPointer { sums in
                            let (x, sc, zp, q, sums) = (x.baseAddress!, sc.baseAddress!, zp.baseAddress!, q.baseAddress!, sums.baseAddress!)
                            // Rows on their own: the same integers and sums however they are split.
                            Parallel.forEach(rows: rows, minimumRowsPerTask: Self.rowsPerTask(columns)) { r in
                                let first = r.lowerBound
                                nb_quantize_rows(x + first * columns, r.count, columns, perRow ? sc + first : sc, perRow ? zp + first : zp,
                                                 qMin, qMax, perRow ? 1 : 0, q + first * columns, sums + first)
                            }
                        }
                    }
                }
            }
        }
        (self.values, self.quantizers, self.rowSums) = (values, quantizers, sums)
    }

    /// Rows per task when activation rows are split over the cores: about 32k values each.
    static func rowsPerTask(_ columns: Int) -> Int { max(1, 32_768 / max(1, columns)) }

    /// The integers of a long-lived matrix (weights) in one or two bytes each instead of a
    /// Float's four, when ``compacted()`` could pack them; `values` is then empty.
    public private(set) var packed: PackedIntegers?

    /// The integer at (r, c), wherever it is stored.
    public func integer(_ r: Int, _ c: Int) -> Float {
        if let packed { return packed.value(r * columns + c) }
        return values[r * columns + c]
    }

    /// The same rows with their integers packed (``PackedIntegers``): a quarter of the memory
    /// for 8-bit weights. Products read them through ``IntegerMatmul/multiply(_:_:)`` as
    /// before, column chunk by column chunk. Unchanged when the integers do not fit.
    public func compacted() -> QuantizedRows {
        guard packed == nil, let p = PackedIntegers(values) else { return self }
        var copy = self
        copy.values = []
        copy.packed = p
        return copy
    }

    /// Columns k0 ..< k0 + kc of every row as Float: a view into `values`, or unpacked into
    /// `scratch` (rows × kc), with its leading dimension.
    func columnChunk(_ k0: Int, _ kc: Int, scratch: inout [Float], _ body: (UnsafePointer<Float>, Int) -> Void) {
        if let packed {
            if scratch.count < rows * kc { scratch = [Float](repeating: 0, count: rows * kc) }
            scratch.withUnsafeMutableBufferPointer { packed.unpack(rows: rows, columns: columns, from: k0, count: kc, into: $0.baseAddress!) }
            scratch.withUnsafeBufferPointer { body($0.baseAddress!, kc) }
        } else {
            values.withUnsafeBufferPointer { body($0.baseAddress! + k0, columns) }
        }
    }

    /// The dequantized matrix (rows, columns).
    public func dequantized() -> [Double] {
        var out = [Double](repeating: 0, count: rows * columns)
        for r in 0..<rows {
            let q = quantizer(r)
            for c in 0..<columns { out[r * columns + c] = q.dequantize(Double(integer(r, c))) }
        }
        return out
    }

    /// The largest |q − zp| over the rows.
    public var maxCentered: Double { quantizers.map(\.maxCentered).max() ?? 0 }
}

public enum IntegerMatmul {
    /// The most columns whose raw products Σ x_q·w_q stay below 2^24 (exact in Float): 518
    /// for 8-bit unsigned inputs and symmetric weights; 0 when a single product is too large.
    public static func exactFloatChunk(_ x: QuantizedRows, _ w: QuantizedRows) -> Int {
        let xMax = x.quantizers.map { max(abs($0.qMin), abs($0.qMax)) }.max() ?? 0
        let wMax = w.quantizers.map { max(abs($0.qMin), abs($0.qMax)) }.max() ?? 0
        let product = max(xMax * wMax, 1)
        return Int((16_777_216 / product).rounded(.down))
    }

    /// A bound on |Σ_k (x_q − x_zp)(w_q − w_zp)| and on the raw sums before correction.
    public static func accumulatorBound(_ x: QuantizedRows, _ w: QuantizedRows) -> Double {
        let xMax = x.quantizers.map { max(abs($0.qMin), abs($0.qMax)) }.max() ?? 0
        let wMax = w.quantizers.map { max(abs($0.qMin), abs($0.qMax)) }.max() ?? 0
        return Double(x.columns) * xMax * wMax * 4  // raw product plus the three correction terms
    }

    /// y (N, O) = x̂ · ŵᵀ where x̂, ŵ are the dequantized x (N, K) and w (O, K): the integer
    /// products Σ_k x_q·w_q exactly (sgemm over column chunks whose sums stay below 2^24 when
    /// the bits allow — 8 bits and fewer — else dgemm on integer-valued doubles, every sum < 2^53),
    /// corrected for the zero points in integers,
    ///
    ///     acc = Σ x_q w_q − w_zp·Σ_k x_q − x_zp·Σ_k w_q + K·x_zp·w_zp = Σ_k (x_q − x_zp)(w_q − w_zp)
    ///
    /// then scaled: y = acc · s_x · s_w. Returns the integer accumulators too (for tests).
    public static func multiply(_ x: QuantizedRows, _ w: QuantizedRows) -> (y: [Float], accumulators: [Double]) {
        precondition(x.columns == w.columns, "x has \(x.columns) columns, w \(w.columns)")
        precondition(accumulatorBound(x, w) < 9.007199254740992e15, "integer products beyond 2^53")
        let N = x.rows, O = w.rows, K = x.columns
        var acc = [Double](repeating: 0, count: N * O)
        if N > 0 && O > 0 && K > 0 {
            let chunk = exactFloatChunk(x, w)
            if N <= PackedIntegers.fewRows, let packed = w.packed, packed.isOneBytePerValue,
               x.quantizers.allSatisfy({ max(abs($0.qMin), abs($0.qMax)) < 65536 }) {
                // A few rows (generation, one token at a time): integer sums straight from the
                // packed bytes, a quarter of the memory traffic of unpacking them.
                // Two halves of the outputs on two threads (the bytes are read once either way).
                let parts = O * K >= 1 << 16 ? 2 : 1, step = (O + parts - 1) / parts
                x.values.withUnsafeBufferPointer { xb in
                    acc.withUnsafeMutableBufferPointer { ab in
                        // Addresses as integers: the buffers outlive the concurrent loop.
                        let (xa, aa, base) = (Int(bitPattern: xb.baseAddress!), Int(bitPattern: ab.baseAddress!), packed.base)
                        _ = packed.withBytes { wb in
                            let wa = Int(bitPattern: wb)
                            concurrentLoop(parts) { part in
                                let o0 = part * step, count = min(step, O - o0)
                                guard count > 0, let xp = UnsafePointer<Float>(bitPattern: xa), let wp = UnsafePointer<Int8>(bitPattern: wa),
                                      let ap = UnsafeMutablePointer<Double>(bitPattern: aa) else { return }
                                let status = nb_int8_rows_product(xp, N, K, wp + o0 * K, base, count, ap + o0, O)
                                precondition(status == 0, "out of memory for an integer product of \(N) × \(K)")
                            }
                        }
                    }
                }
            } else if chunk >= 64 {
                // Each product is at most 2^24 / chunk, so every partial sum over `chunk`
                // columns is an integer below 2^24: sgemm on Float computes it exactly, in
                // any order. The chunks add up in Double.
                var part = [Float](repeating: 0, count: N * O), scratch: [Float] = []
                var k0 = 0
                while k0 < K {
                    let kc = min(chunk, K - k0)
                    w.columnChunk(k0, kc, scratch: &scratch) { wb, ldw in
                        x.values.withUnsafeBufferPointer { xb in
                            BLAS.sgemm(transposeA: false, transposeB: true, m: N, n: O, k: kc, a: xb.baseAddress! + k0, lda: K,
                                       b: wb, ldb: ldw, c: &part, ldc: O)
                        }
                    }
                    nb_add_float_to_double(part, N * O, &acc)
                    k0 += kc
                }
            } else {
                let xd = x.values.map(Double.init)
                var wd = [Double](repeating: 0, count: O * K)
                for o in 0..<O { for c in 0..<K { wd[o * K + c] = Double(w.integer(o, c)) } }
                BLAS.calling {
                    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, blasint(N), blasint(O), blasint(K), 1, xd, blasint(K),
                                wd, blasint(K), 0, &acc, blasint(O))
                }
            }
        }
        let y = finish(raw: &acc, x, w)
        return (y, acc)
    }

    /// From the raw integer products Σ_k x_q·w_q (N × O, however computed: sgemm chunks, dgemm
    /// or the encrypted product) to y: the zero-point correction in integers, then the scales.
    /// Replaces `raw` by the corrected accumulators.
    public static func finish(raw acc: inout [Double], _ x: QuantizedRows, _ w: QuantizedRows) -> [Float] {
        let N = x.rows, O = w.rows, K = x.columns
        var y = [Float](repeating: 0, count: N * O)
        guard N > 0 && O > 0 else { return y }
        let k = Double(K)
        // Each output on its own (the same bits however the rows are split); the weights'
        // quantizers gathered once.
        let wZero = (0..<O).map { w.quantizer($0).zeroPoint }, wScale = (0..<O).map { w.quantizer($0).scale }
        acc.withUnsafeMutableBufferPointer { acc in
            y.withUnsafeMutableBufferPointer { y in
                let (acc, y) = (acc.baseAddress!, y.baseAddress!)
                Parallel.forEach(rows: N, minimumRowsPerTask: max(1, 16_384 / O)) { rows in
                    for n in rows {
                        let qx = x.quantizer(n), xSum = x.rowSums[n]
                        for o in 0..<O {
                            let corrected = acc[n * O + o] - wZero[o] * xSum - qx.zeroPoint * w.rowSums[o] + k * qx.zeroPoint * wZero[o]
                            acc[n * O + o] = corrected
                            y[n * O + o] = Float(corrected * qx.scale * wScale[o])
                        }
                    }
                }
            }
        }
        return y
    }
}

/// Integers stored in one byte each (Int8) when their range spans at most 256 values, else two
/// (Int16), as offsets from a base: value = base + stored. For weights quantized once and
/// multiplied many times; ``QuantizedRows/compacted()`` makes them.
public struct PackedIntegers: Sendable {
    public let base: Float
    let bytes: [Int8]
    let halves: [Int16]

    /// Nil when the values are not integers or span more than Int16 holds.
    init?(_ values: [Float]) {
        guard let lo = values.min(), let hi = values.max() else { return nil }
        guard values.allSatisfy({ $0 == $0.rounded() }) else { return nil }
        if hi - lo <= 255 {
            let base = lo + 128
            (self.base, bytes, halves) = (base, values.map { Int8($0 - base) }, [])
        } else if hi - lo <= 65535 {
            let base = lo + 32768
            (self.base, bytes, halves) = (base, [], values.map { Int16($0 - base) })
        } else {
            return nil
        }
    }

    /// Up to this many rows, products read the packed bytes directly (``IntegerMatmul``).
    static let fewRows = 8

    /// Whether the integers are packed one per byte (Int8).
    var isOneBytePerValue: Bool { !bytes.isEmpty }

    /// The bytes, when the integers are packed one per byte.
    func withBytes<R>(_ body: (UnsafePointer<Int8>) -> R) -> R? {
        guard !bytes.isEmpty else { return nil }
        return bytes.withUnsafeBufferPointer { body($0.baseAddress!) }
    }

    /// Bytes held.
    public var byteCount: Int { bytes.count + 2 * halves.count }

    func value(_ i: Int) -> Float { base + Float(bytes.isEmpty ? Int(halves[i]) : Int(bytes[i])) }

    /// Columns from ..< from + count of a (rows, columns) matrix into `out` (rows, count).
    func unpack(rows: Int, columns: Int, from: Int, count: Int, into out: UnsafeMutablePointer<Float>) {
        if bytes.isEmpty {
            halves.withUnsafeBufferPointer { nb_unpack_i16($0.baseAddress!, rows, columns, from, count, base, out) }
        } else {
            bytes.withUnsafeBufferPointer { nb_unpack_i8($0.baseAddress!, rows, columns, from, count, base, out) }
        }
    }
}
