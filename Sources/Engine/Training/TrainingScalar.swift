import COpenBLAS
import Foundation

/// The number types the training layers run in: `Float` for training, `Double` for the
/// finite-difference gradient checks (so the checks test the very code that trains).
///
/// Every layer in `Layers` is generic over this protocol. `Float` calls are specialised:
/// by the optimiser inside the Engine module, and through the layers' exported
/// `@_specialize(where Real == Float)` entry points from other modules.
public protocol TrainingScalar: BinaryFloatingPoint, Sendable {
    /// C = alpha·op(A)·op(B) + beta·C on row-major matrices (`cblas_sgemm` / `cblas_dgemm`).
    ///
    /// - A: (M, K), or (K, M) when `transposeA`; B: (K, N), or (N, K) when `transposeB`;
    ///   C: (M, N). Leading dimensions are the row strides of the stored matrices.
    static func gemm(transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int, alpha: Self,
                     a: UnsafePointer<Self>, lda: Int, b: UnsafePointer<Self>, ldb: Int,
                     beta: Self, c: UnsafeMutablePointer<Self>, ldc: Int)
    /// eˣ
    static func exp(_ x: Self) -> Self
    /// ln x
    static func log(_ x: Self) -> Self
    /// tanh x
    static func tanh(_ x: Self) -> Self
}

extension Float: TrainingScalar {
    public static func gemm(transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                            a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                            beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        BLAS.sgemm(transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda,
                   b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
    }
    @inline(__always) public static func exp(_ x: Float) -> Float { expf(x) }
    @inline(__always) public static func log(_ x: Float) -> Float { logf(x) }
    @inline(__always) public static func tanh(_ x: Float) -> Float { tanhf(x) }
}

extension Double: TrainingScalar {
    public static func gemm(transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int, alpha: Double,
                            a: UnsafePointer<Double>, lda: Int, b: UnsafePointer<Double>, ldb: Int,
                            beta: Double, c: UnsafeMutablePointer<Double>, ldc: Int) {
        BLAS.calling {
            cblas_dgemm(CblasRowMajor, transposeA ? CblasTrans : CblasNoTrans, transposeB ? CblasTrans : CblasNoTrans,
                        blasint(m), blasint(n), blasint(k), alpha, a, blasint(lda), b, blasint(ldb), beta, c, blasint(ldc))
        }
    }
    @inline(__always) public static func exp(_ x: Double) -> Double { Foundation.exp(x) }
    @inline(__always) public static func log(_ x: Double) -> Double { Foundation.log(x) }
    @inline(__always) public static func tanh(_ x: Double) -> Double { Foundation.tanh(x) }
}

extension Array where Element == Float {
    /// These values in precision `T`: the same storage when `T` is `Float` (no copy),
    /// a converted copy otherwise.
    func converted<T: TrainingScalar>(to: T.Type) -> [T] {
        if T.self == Float.self { return unsafeBitCast(self, to: [T].self) }
        return map { T($0) }
    }
}
