import CFHEKernels
import Foundation

/// The online half of the preprocessing (offline/online) protocol: products of one-time-padded
/// integers by the server's clear weights, mod 2^k.
///
/// Offline, the client draws uniform pads r ∈ Z_{2^k}^K per token, encrypts them in full
/// ciphertexts (the token-packed GLWE scheme, message modulus 2^k), and decrypts W·r mod 2^k.
/// Online it sends u = x − r mod 2^k — uniform whatever x is, so it reveals nothing — the
/// server answers W·u mod 2^k with a plain integer kernel, and the client adds W·r:
///
///     W·u + W·r ≡ W·x  (mod 2^k),   and |W·x| < 2^(k−1), so the centred residue is W·x exactly.
///
/// The cost and the bytes follow the tokens (k bits per value each way), and the result is
/// the clear integer product bit for bit. Each pad must be used once: two uses would reveal
/// x₁ − x₂ (the store in the Engine makes reuse impossible).
public enum MaskedProduct {
    /// Message moduli 2^k offered: up to 56 bits (the products of the widest inputs with their
    /// sign), at least 2.
    public static let bitRange = 2...56

    /// Below this many rows the server multiplies along the inner dimension (GEMV) instead of
    /// by tiles of 16 rows.
    public static let gemvColumns = 8

    /// u = x − r mod 2^k, feature-major (K × R) as the wire carries it, from x (R × K,
    /// row-major) and the pads r (R × K, row-major, values mod 2^k), packed in one pass.
    public static func blind(_ x: UnsafeBufferPointer<Int64>, pads: UnsafeBufferPointer<UInt64>, rows: Int, features: Int, bits k: Int) -> MaskedInput {
        precondition(x.count == rows * features, "x: \(x.count), \(rows) × \(features)")
        return blind(rows: rows, features: features, pads: pads, bits: k) { out, range in
            nb_masked_blind_int64(x.baseAddress!, pads.baseAddress!, rows, features, UInt32(k), out, range.lowerBound, range.upperBound)
        }
    }

    /// The same for x held as integer-valued floats (quantized activations).
    public static func blind(_ x: UnsafeBufferPointer<Float>, pads: UnsafeBufferPointer<UInt64>, rows: Int, features: Int, bits k: Int) -> MaskedInput {
        precondition(x.count == rows * features, "x: \(x.count), \(rows) × \(features)")
        return blind(rows: rows, features: features, pads: pads, bits: k) { out, range in
            nb_masked_blind_float(x.baseAddress!, pads.baseAddress!, rows, features, UInt32(k), out, range.lowerBound, range.upperBound)
        }
    }

    private static func blind(rows: Int, features: Int, pads: UnsafeBufferPointer<UInt64>, bits k: Int,
                              _ kernel: (UnsafeMutablePointer<UInt8>, Range<Int>) -> Void) -> MaskedInput {
        precondition(pads.count == rows * features && rows > 0 && features > 0, "pads: \(pads.count), \(rows) × \(features)")
        precondition(bitRange.contains(k))
        var body = [UInt8](repeating: 0, count: packedByteCount(rows * features, bits: k))
        body.withUnsafeMutableBufferPointer { out in
            // Ranges of a multiple of 8 features start and end on byte boundaries.
            parallelChunks(features, align: 8) { kernel(out.baseAddress!, $0) }
        }
        return MaskedInput(bits: k, rows: rows, features: features, body: body)
    }

    /// W·x (R × O, row-major, centred in [−2^(k−1), 2^(k−1))) from the server's W·u and the
    /// client's W·r (R × O, row-major, mod 2^k).
    public static func unblind(_ y: MaskedOutput, padProducts wr: UnsafeBufferPointer<UInt64>) -> [Int64] {
        var out = [Double](repeating: 0, count: y.rows * y.outputs)
        out.withUnsafeMutableBufferPointer { unblind(y, padProducts: wr, into: $0.baseAddress!) }
        return out.map { Int64($0) }
    }

    /// The same, as doubles (exact: |W·x| < 2^(k−1) ≤ 2^55), written to `out` (R × O).
    public static func unblind(_ y: MaskedOutput, padProducts wr: UnsafeBufferPointer<UInt64>, into out: UnsafeMutablePointer<Double>) {
        unblind(y, padProducts: UnsafeRawBufferPointer(wr), width: 8, into: out)
    }

    /// The same with W·r as the mask store keeps it (``PadProducts``): R × O little-endian values
    /// of `width` bytes, read where they lie (no widening pass).
    public static func unblind(_ y: MaskedOutput, padProducts wr: UnsafeRawBufferPointer, width: Int, into out: UnsafeMutablePointer<Double>) {
        let (rows, outputs, k) = (y.rows, y.outputs, y.bits)
        precondition([3, 4, 8].contains(width) && (width == 8 || k <= 8 * width), "pad products of \(width) bytes at k = \(k)")
        precondition(wr.count == rows * outputs * width, "pad products: \(wr.count) bytes for \(rows) × \(outputs) of \(width)")
        precondition(y.body.count == packedByteCount(rows * outputs, bits: k))
        y.body.withUnsafeBufferPointer { body in
            parallelChunks(rows, align: 16) { r in
                nb_masked_unblind(body.baseAddress!, body.count, wr.baseAddress!.assumingMemoryBound(to: UInt8.self), UInt32(width),
                                  rows, outputs, UInt32(k), out, r.lowerBound, r.upperBound)
            }
        }
    }
}

/// W·r mod 2^k as the mask store keeps it: little-endian values of `width` bytes (3 for k ≤ 24,
/// 4 for k ≤ 32, else 8), row-major; bits at and above k are not part of the value.
public struct PadProducts: Sendable, Equatable {
    public var bytes: [UInt8]
    public var width: Int
    public var bits: Int

    public init(bytes: [UInt8], width: Int, bits: Int) {
        precondition([3, 4, 8].contains(width) && bytes.count % width == 0 && MaskedProduct.bitRange.contains(bits) && bits <= 8 * width)
        (self.bytes, self.width, self.bits) = (bytes, width, bits)
    }

    public var count: Int { bytes.count / width }

    /// The values, widened (for tests and small callers).
    public var values: [UInt64] {
        let mask: UInt64 = (1 << UInt64(bits)) - 1
        return bytes.withUnsafeBytes { raw in
            (0..<count).map { i in
                var v: UInt64 = 0
                for b in 0..<width { v |= UInt64(raw[i * width + b]) << UInt64(8 * b) }
                return v & mask
            }
        }
    }

    /// Values [lo, hi) where they lie, for ``MaskedProduct/unblind(_:padProducts:width:into:)``.
    public func withValues<R>(_ lo: Int, _ hi: Int, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        precondition(0 <= lo && lo <= hi && hi <= count)
        return try bytes.withUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[lo * width..<hi * width])) }
    }
}

extension FHEServer {
    /// The online product: W·u mod 2^k for the one-time-padded u, with the limb GEMM of the
    /// encrypted product (u placed in the top k bits of a 64-bit word, so the kernel's result
    /// mod 2^64 holds W·u mod 2^k in its top k bits: ⌈k/16⌉ int16 digits, or ⌈k/8⌉ bytes). No mask, no noise: the cost follows the rows.
    /// `wrapping` (the default): for k ≤ 32 with byte weights and at least
    /// ``MaskedProduct/gemvColumns`` rows, the kernel that keeps every digit in 32-bit lanes
    /// (``ServerWeights/wrappingProduct(_:)``); false takes the 64-bit limb GEMM for any k, as
    /// the benchmark's comparison does.
    public static func multiply(_ input: MaskedInput, by w: ServerWeights, wrapping: Bool = true) throws(FHEServerError) -> MaskedOutput {
        _ = AllocatorTuning.applied
        guard input.features == w.inputs else {
            throw .shapeMismatch("the padded input has \(input.features) features; this matrix takes \(w.inputs)")
        }
        let (rows, k, o, bits) = (input.rows, input.features, w.outputs, input.bits)
        if wrapping && w.kernel == .bytes && bits <= 32 && rows >= MaskedProduct.gemvColumns {
            return MaskedOutput(bits: bits, rows: rows, outputs: o, body: w.wrappingProduct(input))
        }
        // Few tokens (generation): a matrix-vector product along the inner dimension; else tiles.
        let digits = GEMMOperand(packed: input.body, rows: k, columns: rows, bits: bits, kernel: w.kernel,
                                 layout: rows < MaskedProduct.gemvColumns ? .columns : .tiles)
        let out = w.product(digits)
        let body = out.withUnsafeBufferPointer { Parallel.packBits($0, bits: bits) }
        return MaskedOutput(bits: bits, rows: rows, outputs: o, body: body)
    }

    /// One online request as bytes in, the response as bytes out.
    public static func handleMasked(request: [UInt8], weights: ServerWeights) throws(FHEServerError) -> [UInt8] {
        let input: MaskedInput
        do { input = try MaskedInput(serialized: request) } catch { throw .wire(error) }
        return try multiply(input, by: weights).serialized()
    }
}

/// The two online messages share one layout after the common header: k (u8), rows (u32), the
/// other dimension (u32), the body's byte count (u64) and the body, k-bit values packed LSB-first.
private enum PackedValues {
    /// magic, version, kind, bits, rows, columns, body length.
    static let headerBytes = 4 + 2 + 1 + 1 + 4 + 4 + 8

    /// The header's fields, checked; the reader is left at the body.
    static func readHeader(_ r: inout ByteReader, kind: UInt8, name: String, columnsName: String) throws(FHEWireError) -> (bits: Int, rows: Int, columns: Int) {
        try r.header(kind: kind, name: name)
        let bits = Int(try r.u8())
        guard MaskedProduct.bitRange.contains(bits) else {
            throw .invalidField(name: "bits", value: "\(bits), expected \(MaskedProduct.bitRange.lowerBound)…\(MaskedProduct.bitRange.upperBound)")
        }
        let rows = Int(try r.u32()), columns = Int(try r.u32())
        guard (1...FHEWire.maxRows).contains(rows) else { throw .invalidField(name: "rows", value: "\(rows), expected 1…\(FHEWire.maxRows)") }
        guard (1...FHEWire.maxFeatures).contains(columns) else { throw .invalidField(name: columnsName, value: "\(columns), expected 1…\(FHEWire.maxFeatures)") }
        let count = try r.u64()
        let expected = packedByteCount(rows * columns, bits: bits)
        guard count == UInt64(expected) else { throw .shapeMismatch("body of \(count) bytes, \(rows) × \(columns) values at \(bits) bits need \(expected)") }
        return (bits, rows, columns)
    }

    static func write(kind: UInt8, bits: Int, rows: Int, columns: Int, body: [UInt8]) -> [UInt8] {
        var w = ByteWriter()
        w.data.reserveCapacity(headerBytes + body.count)
        w.bytes(FHEWire.magic); w.u16(FHEWire.version); w.u8(kind)
        w.u8(UInt8(bits)); w.u32(UInt32(rows)); w.u32(UInt32(columns))
        w.u64(UInt64(body.count)); w.bytes(body)
        return w.data
    }

    /// Reads and checks one message; `expecting` (rows, columns, bits) refuses any other shape
    /// before the body is copied.
    static func read(_ bytes: [UInt8], kind: UInt8, name: String, columnsName: String,
                     expecting: (rows: Int, columns: Int, bits: Int)? = nil) throws(FHEWireError) -> (bits: Int, rows: Int, columns: Int, body: [UInt8]) {
        var r = ByteReader(bytes)
        let (bits, rows, columns) = try readHeader(&r, kind: kind, name: name, columnsName: columnsName)
        if let e = expecting, (e.rows, e.columns, e.bits) != (rows, columns, bits) {
            throw .shapeMismatch("\(rows) × \(columns) values at \(bits) bits, expected \(e.rows) × \(e.columns) at \(e.bits)")
        }
        let expected = packedByteCount(rows * columns, bits: bits)
        let body = try r.bytes(expected, name + " values")
        guard r.remaining == 0 else { throw .invalidField(name: "length", value: "\(r.remaining) trailing bytes") }
        return (bits, rows, columns, body)
    }
}

/// What the client sends online: u = x − r mod 2^k for R tokens and K features, feature-major,
/// packed LSB-first at k bits.
public struct MaskedInput: Sendable, Equatable {
    public var bits: Int
    public var rows: Int
    public var features: Int
    public var body: [UInt8]

    public init(bits: Int, rows: Int, features: Int, body: [UInt8]) {
        (self.bits, self.rows, self.features, self.body) = (bits, rows, features, body)
    }

    public func serialized() -> [UInt8] {
        PackedValues.write(kind: FHEWire.kindMaskedInput, bits: bits, rows: rows, columns: features, body: body)
    }

    public init(serialized bytes: [UInt8]) throws(FHEWireError) {
        (bits, rows, features, body) = try PackedValues.read(bytes, kind: FHEWire.kindMaskedInput, name: "padded input", columnsName: "features")
    }

    /// What an online request's first ``Shape/byteCount`` bytes say of it.
    public struct Shape: Sendable, Equatable {
        public var bits: Int, rows: Int, features: Int
        public static let byteCount = PackedValues.headerBytes
        public var messageBytes: Int { Self.byteCount + packedByteCount(rows * features, bits: bits) }

        public init(bits: Int, rows: Int, features: Int) { (self.bits, self.rows, self.features) = (bits, rows, features) }

        public init(prefix: [UInt8]) throws(FHEWireError) {
            var r = ByteReader(prefix)
            (bits, rows, features) = try PackedValues.readHeader(&r, kind: FHEWire.kindMaskedInput, name: "padded input", columnsName: "features")
        }
    }
}

/// What the server answers online: W·u mod 2^k for O outputs and R tokens, output-major,
/// packed LSB-first at k bits.
public struct MaskedOutput: Sendable, Equatable {
    public var bits: Int
    public var rows: Int
    public var outputs: Int
    public var body: [UInt8]

    public init(bits: Int, rows: Int, outputs: Int, body: [UInt8]) {
        (self.bits, self.rows, self.outputs, self.body) = (bits, rows, outputs, body)
    }

    /// The serialized length of an answer of `rows` × `outputs` values mod 2^`bits`.
    public static func byteCount(bits: Int, rows: Int, outputs: Int) -> Int { PackedValues.headerBytes + packedByteCount(rows * outputs, bits: bits) }

    public func serialized() -> [UInt8] {
        PackedValues.write(kind: FHEWire.kindMaskedOutput, bits: bits, rows: rows, columns: outputs, body: body)
    }

    /// Reads a response; `expecting` (rows, outputs, bits) refuses any other shape before the
    /// body is copied.
    public init(serialized bytes: [UInt8], expecting: (rows: Int, outputs: Int, bits: Int)? = nil) throws(FHEWireError) {
        (bits, rows, outputs, body) = try PackedValues.read(bytes, kind: FHEWire.kindMaskedOutput, name: "padded product", columnsName: "outputs",
                                                            expecting: expecting.map { ($0.rows, $0.outputs, $0.bits) })
    }
}

/// The one-time pads of a mask store: r for row `index` of a stream is the AES-256-CTR
/// keystream under the stream's secret seed from the counter block (index ‖ 0 ‖ 0), read as
/// little-endian words and reduced mod 2^k. The seed never leaves the client: with it the
/// server could remove the pads.
public struct PadExpander {
    private var expander: MaskExpander
    public let bits: Int

    public init(seed: MaskSeed, bits: Int) {
        precondition(MaskedProduct.bitRange.contains(bits))
        (expander, self.bits) = (MaskExpander(seed: seed), bits)
    }

    /// Rows [first, first + count) of K pads each, row-major, values mod 2^k. For k ≤ 32 each
    /// keystream word gives two pads (its low and high halves): half the AES work. Rows are
    /// independent keystreams, expanded on every core.
    public mutating func pads(first: Int, count: Int, features: Int) -> [UInt64] {
        precondition(first >= 0 && first + count <= Int(UInt32.max), "pad rows beyond 2^32")
        let (mask, bits): (UInt64, Int) = ((1 << UInt64(self.bits)) - 1, self.bits)
        let words = bits <= 32 ? (features + 1) / 2 : features
        let expander = self.expander
        return Parallel.uninitialized(count * features) { (o: UnsafeMutableBufferPointer<UInt64>) in
            // At least 16 rows a chunk: a row is one short AES call.
            parallelChunks(count, threads: min(FHEThreads.count, max(1, count / 16))) { rows in
                var expander = expander
                var stream = [UInt64](repeating: 0, count: words)
                stream.withUnsafeMutableBufferPointer { w in
                    for i in rows {
                        expander.expand(group: first + i, feature: 0, into: w)
                        let row = o.baseAddress! + i * features
                        if bits <= 32 {
                            for j in 0..<features { row[j] = (j & 1 == 0 ? w[j >> 1] : w[j >> 1] >> 32) & mask }
                        } else {
                            for j in 0..<features { row[j] = w[j] & mask }
                        }
                    }
                }
            }
        }
    }
}
