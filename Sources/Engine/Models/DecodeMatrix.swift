import CKernels

/// A weight matrix (out, in) kept for decoding in a compact format: IEEE half precision, or
/// the GGML blocks (Q8_0, Q4_0, Q4_1) a GGUF checkpoint stores it in.
///
/// Decoding one token multiplies every weight once, so it is bound by the bytes of weights
/// read. Half-precision copies of Float32 weights halve them (each weight rounded to the
/// nearest half, relative error ≤ 2⁻¹¹). A GGUF model's own blocks cut them further and
/// lose nothing: they hold exactly the weights that loading dequantized. Products and sums
/// stay in Float32; prefill and training keep using the Float32 weights.
public struct DecodeMatrix: Sendable {
    public enum Format: Int32, Sendable, CaseIterable {
        case f16 = 1, q4_0 = 2, q4_1 = 3, q8_0 = 8

        /// The decode format that holds a checkpoint tensor of this type as it is.
        init?(_ type: GGMLType) {
            switch type {
            case .f16: self = .f16
            case .q4_0: self = .q4_0
            case .q4_1: self = .q4_1
            case .q8_0: self = .q8_0
            default: return nil
            }
        }
    }

    public let rows: Int
    public let columns: Int
    public let format: Format
    let data: [UInt8]

    /// Bytes of weights read per product.
    public var byteCount: Int { data.count }

    /// Half precision, from a row-major (rows, columns) Float32 matrix.
    public init(_ weights: [Float], rows: Int, columns: Int) {
        precondition(weights.count == rows * columns, "DecodeMatrix: \(weights.count) values for (\(rows), \(columns))")
        self.rows = rows
        self.columns = columns
        format = .f16
        var d = [UInt8](repeating: 0, count: 2 * weights.count)
        weights.withUnsafeBufferPointer { w in
            d.withUnsafeMutableBytes { nb_f32_to_f16(w.baseAddress!, $0.baseAddress!.assumingMemoryBound(to: UInt16.self), weights.count) }
        }
        data = d
    }

    /// Half precision, from a (columns, rows) matrix, transposed: GPT-2's Conv1D weights (in, out).
    public init(transposing weights: [Float], rows: Int, columns: Int) {
        var t = [Float](repeating: 0, count: weights.count)
        for i in 0..<columns { for o in 0..<rows { t[o * columns + i] = weights[i * rows + o] } }
        self.init(t, rows: rows, columns: columns)
    }

    /// From stored rows in `format`: `bytes` holds rows × (bytes per row) bytes.
    public init(format: Format, bytes: [UInt8], rows: Int, columns: Int) {
        precondition(format == .f16 || columns % 32 == 0, "DecodeMatrix: \(columns) columns is not a whole number of blocks of 32")
        precondition(bytes.count == rows * nb_decode_row_bytes(format.rawValue, columns),
                     "DecodeMatrix: \(bytes.count) bytes for (\(rows), \(columns)) in \(format)")
        self.rows = rows
        self.columns = columns
        self.format = format
        data = bytes
    }

    /// A GGUF tensor's stored blocks, or nil when its type has no decode format.
    init?(_ file: GGUFFile, tensor name: String) {
        guard let info = file.info(name), let format = Format(info.type), info.shape.count == 2 else { return nil }
        let (rows, columns) = (info.shape[0], info.shape[1])
        guard format == .f16 || columns % 32 == 0, let bytes = file.rawBytes(of: name) else { return nil }
        self.init(format: format, bytes: bytes, rows: rows, columns: columns)
    }

    /// The bytes the matrices hold, per format (the weights a decoded token reads).
    public static func bytesByFormat(_ matrices: [DecodeMatrix]) -> [Format: Int] {
        matrices.reduce(into: [:]) { $0[$1.format, default: 0] += $1.byteCount }
    }

    /// One product of a batch: y (rows) (+)= W · x (columns).
    public struct Product {
        public let matrix: DecodeMatrix
        public let x: UnsafePointer<Float>
        public let y: UnsafeMutablePointer<Float>
        public let accumulate: Bool

        public init(_ matrix: DecodeMatrix, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, accumulate: Bool = false) {
            self.matrix = matrix
            self.x = x
            self.y = y
            self.accumulate = accumulate
        }
    }

    /// Runs the products, each one's rows shared between the cores by a pool of threads
    /// that spin between a token's products. No product may write another's input.
    public static func apply(_ products: [Product]) {
        withExtendedLifetime(products) {
            var jobs: [nb_gemv_job] = []
            jobs.reserveCapacity(products.count)
            for p in products {
                p.matrix.data.withUnsafeBufferPointer { w in
                    jobs.append(nb_gemv_job(format: p.matrix.format.rawValue, w: w.baseAddress, x: p.x, y: p.y,
                                            rows: p.matrix.rows, k: p.matrix.columns, accumulate: p.accumulate ? 1 : 0))
                }
            }
            jobs.withUnsafeBufferPointer { nb_gemv_batch($0.baseAddress, Int32($0.count)) }
        }
    }

    /// y (rows) (+)= W · x (columns).
    public func apply(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, accumulate: Bool = false) {
        Self.apply([Product(self, x, y, accumulate: accumulate)])
    }
}
