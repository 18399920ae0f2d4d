import CKernels
import Dispatch

/// A weight matrix (out, in) stored in IEEE half precision for decoding.
///
/// Decoding one token multiplies every weight once, so it is bound by memory bandwidth:
/// half-precision copies halve the bytes read. Each weight is rounded to the nearest half
/// (relative error ≤ 2⁻¹¹); products and sums stay in Float32. Prefill and training keep
/// using the Float32 weights.
public struct HalfMatrix: Sendable {
    public let rows: Int
    public let columns: Int
    let data: [UInt16]

    /// From a row-major (rows, columns) Float32 matrix.
    public init(_ weights: [Float], rows: Int, columns: Int) {
        precondition(weights.count == rows * columns, "HalfMatrix: \(weights.count) values for (\(rows), \(columns))")
        self.rows = rows
        self.columns = columns
        var d = [UInt16](repeating: 0, count: weights.count)
        weights.withUnsafeBufferPointer { w in d.withUnsafeMutableBufferPointer { nb_f32_to_f16(w.baseAddress!, $0.baseAddress!, weights.count) } }
        data = d
    }

    /// From a (columns, rows) matrix, transposed: GPT-2's Conv1D weights (in, out).
    public init(transposing weights: [Float], rows: Int, columns: Int) {
        var t = [Float](repeating: 0, count: weights.count)
        for i in 0..<columns { for o in 0..<rows { t[o * columns + i] = weights[i * rows + o] } }
        self.init(t, rows: rows, columns: columns)
    }

    /// y (rows) (+)= W · x (columns), rows split across the cores.
    public func apply(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, accumulate: Bool = false) {
        let parts = rows >= 256 ? 2 : 1
        let chunk = (rows + parts - 1) / parts
        let xp = UnsafeSendablePointer(x), yp = UnsafeSendableMutablePointer(y)
        data.withUnsafeBufferPointer { w in
            let wp = UnsafeSendablePointer(w.baseAddress!)
            let k = columns, total = rows
            DispatchQueue.concurrentPerform(iterations: parts) { p in
                let begin = p * chunk, end = min(total, begin + chunk)
                if begin < end { nb_gemv_f16(wp.pointer, xp.pointer, yp.pointer, k, begin, end, accumulate ? 1 : 0) }
            }
        }
    }
}

struct UnsafeSendablePointer<T>: @unchecked Sendable {
    let pointer: UnsafePointer<T>
    init(_ p: UnsafePointer<T>) { pointer = p }
}

struct UnsafeSendableMutablePointer<T>: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<T>
    init(_ p: UnsafeMutablePointer<T>) { pointer = p }
}
