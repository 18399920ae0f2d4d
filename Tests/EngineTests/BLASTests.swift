import Testing
@testable import Engine

/// A row-major matrix stored with a leading dimension that may exceed its row length.
private struct StoredMatrix {
    var rows: Int
    var columns: Int
    var leading: Int
    var storage: [Float]

    /// Element (r, c) of the stored matrix is `value(r, c)`; padding holds `padding`.
    init(rows: Int, columns: Int, leading: Int? = nil, padding: Float = 999, value: (Int, Int) -> Float) {
        let ld = leading ?? columns
        precondition(ld >= columns, "leading dimension \(ld) < columns \(columns)")
        self.rows = rows
        self.columns = columns
        self.leading = ld
        storage = Array(repeating: padding, count: rows * ld)
        for r in 0..<rows { for c in 0..<columns { storage[r * ld + c] = value(r, c) } }
    }

    subscript(r: Int, c: Int) -> Float { storage[r * leading + c] }
}

/// C = alpha·op(A)·op(B) + beta·C, computed in Double with a triple loop.
private func naiveGEMM(
    transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int, alpha: Double,
    a: StoredMatrix, b: StoredMatrix, beta: Double, c: StoredMatrix
) -> [[Double]] {
    var out = Array(repeating: Array(repeating: 0.0, count: n), count: m)
    for i in 0..<m {
        for j in 0..<n {
            var sum = 0.0
            for p in 0..<k {
                let aip = Double(transposeA ? a[p, i] : a[i, p])
                let bpj = Double(transposeB ? b[j, p] : b[p, j])
                sum += aip * bpj
            }
            out[i][j] = alpha * sum + beta * Double(c[i, j])
        }
    }
    return out
}

/// Runs BLAS.sgemm and the reference on the same inputs; returns the max abs error and
/// checks that the padding of C past column n was not touched.
private func compareSGEMM(
    transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int,
    alpha: Float, beta: Float, padA: Int = 0, padB: Int = 0, padC: Int = 0,
    sourceLocation: SourceLocation = #_sourceLocation
) {
    // Small integer-ish values (multiples of 1/4) so Float products are exact.
    let a = transposeA
        ? StoredMatrix(rows: k, columns: m, leading: m + padA) { r, c in Float((r * 7 + c * 3) % 11 - 5) / 4 }
        : StoredMatrix(rows: m, columns: k, leading: k + padA) { r, c in Float((r * 7 + c * 3) % 11 - 5) / 4 }
    let b = transposeB
        ? StoredMatrix(rows: n, columns: k, leading: k + padB) { r, c in Float((r * 5 + c * 2) % 9 - 4) / 2 }
        : StoredMatrix(rows: k, columns: n, leading: n + padB) { r, c in Float((r * 5 + c * 2) % 9 - 4) / 2 }
    var c = StoredMatrix(rows: m, columns: n, leading: n + padC, padding: -12345) { r, c in Float(r - 2 * c) }
    let expected = naiveGEMM(transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k,
                             alpha: Double(alpha), a: a, b: b, beta: Double(beta), c: c)
    a.storage.withUnsafeBufferPointer { pa in
        b.storage.withUnsafeBufferPointer { pb in
            c.storage.withUnsafeMutableBufferPointer { pc in
                BLAS.sgemm(transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k,
                           alpha: alpha, a: pa.baseAddress!, lda: a.leading,
                           b: pb.baseAddress!, ldb: b.leading,
                           beta: beta, c: pc.baseAddress!, ldc: n + padC)
            }
        }
    }
    var maxError = 0.0
    var firstBad: (Int, Int)?
    for i in 0..<m {
        for j in 0..<n {
            let err = abs(Double(c[i, j]) - expected[i][j])
            if err > 1e-4 * max(1, abs(expected[i][j])), firstBad == nil { firstBad = (i, j) }
            maxError = max(maxError, err)
        }
        for j in n..<(n + padC) {
            #expect(c[i, j] == -12345, "padding of C at (\(i), \(j)) was overwritten", sourceLocation: sourceLocation)
        }
    }
    #expect(firstBad == nil,
            "sgemm(tA: \(transposeA), tB: \(transposeB), m: \(m), n: \(n), k: \(k)) max error \(maxError), first at \(String(describing: firstBad))",
            sourceLocation: sourceLocation)
}

@Suite struct SGEMMTests {
    @Test func twoByTwoKnownAnswer() {
        // [1 2; 3 4] · [5 6; 7 8] = [19 22; 43 50]
        let a: [Float] = [1, 2, 3, 4]
        let b: [Float] = [5, 6, 7, 8]
        var c = [Float](repeating: 0, count: 4)
        BLAS.sgemm(transposeA: false, transposeB: false, m: 2, n: 2, k: 2,
                   a: a, lda: 2, b: b, ldb: 2, c: &c, ldc: 2)
        #expect(c == [19, 22, 43, 50])
    }

    @Test func transposeKnownAnswer() {
        // Aᵀ·B with A = [1 2; 3 4] stored as is: [1 3; 2 4] · [5 6; 7 8] = [26 30; 38 44]
        let a: [Float] = [1, 2, 3, 4]
        let b: [Float] = [5, 6, 7, 8]
        var c = [Float](repeating: 0, count: 4)
        BLAS.sgemm(transposeA: true, transposeB: false, m: 2, n: 2, k: 2,
                   a: a, lda: 2, b: b, ldb: 2, c: &c, ldc: 2)
        #expect(c == [26, 30, 38, 44])
        // A·Bᵀ: [1 2; 3 4] · [5 7; 6 8] = [17 23; 39 53]
        BLAS.sgemm(transposeA: false, transposeB: true, m: 2, n: 2, k: 2,
                   a: a, lda: 2, b: b, ldb: 2, c: &c, ldc: 2)
        #expect(c == [17, 23, 39, 53])
    }

    @Test(arguments: [(false, false), (true, false), (false, true), (true, true)])
    func nonSquareAllTransposes(transposeA: Bool, transposeB: Bool) {
        compareSGEMM(transposeA: transposeA, transposeB: transposeB, m: 3, n: 5, k: 4, alpha: 1, beta: 0)
        compareSGEMM(transposeA: transposeA, transposeB: transposeB, m: 1, n: 7, k: 2, alpha: 1, beta: 0)
        compareSGEMM(transposeA: transposeA, transposeB: transposeB, m: 6, n: 1, k: 9, alpha: 1, beta: 0)
    }

    @Test(arguments: [(false, false), (true, false), (false, true), (true, true)])
    func alphaAndBeta(transposeA: Bool, transposeB: Bool) {
        compareSGEMM(transposeA: transposeA, transposeB: transposeB, m: 4, n: 3, k: 5, alpha: 0.5, beta: -2)
        compareSGEMM(transposeA: transposeA, transposeB: transposeB, m: 2, n: 3, k: 3, alpha: -1.5, beta: 1)
        // alpha = 0 leaves beta·C.
        compareSGEMM(transposeA: transposeA, transposeB: transposeB, m: 3, n: 2, k: 4, alpha: 0, beta: 3)
    }

    @Test(arguments: [(false, false), (true, false), (false, true), (true, true)])
    func leadingDimensionsLargerThanRows(transposeA: Bool, transposeB: Bool) {
        compareSGEMM(transposeA: transposeA, transposeB: transposeB, m: 3, n: 4, k: 5,
                     alpha: 1.25, beta: 0.5, padA: 2, padB: 3, padC: 4)
    }

    @Test func betaZeroIgnoresNaNInC() {
        // BLAS semantics: with beta == 0, C is written, not read.
        let a: [Float] = [1, 2]
        let b: [Float] = [3, 4]
        var c: [Float] = [.nan]
        BLAS.sgemm(transposeA: false, transposeB: false, m: 1, n: 1, k: 2,
                   a: a, lda: 2, b: b, ldb: 1, beta: 0, c: &c, ldc: 1)
        #expect(c == [11])
    }

    @Test func summaryNamesKernel() {
        #expect(!BLAS.coreName.isEmpty)
        #expect(BLAS.threads >= 1)
        #expect(BLAS.summary.contains("kernel \(BLAS.coreName)"))
    }
}

@Suite struct BLASEnvironmentTests {
    static let avx512: Set<String> = ["fpu", "sse2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq"]
    static let avx2: Set<String> = ["fpu", "sse2", "avx", "avx2", "fma"]
    static let old: Set<String> = ["fpu", "sse2", "sse4_2", "avx"]

    @Test func preferredCoreType() {
        #expect(BLASEnvironment.preferredCoreType(cpuFlags: Self.avx512) == "SkylakeX")
        #expect(BLASEnvironment.preferredCoreType(cpuFlags: Self.avx2) == "Haswell")
        #expect(BLASEnvironment.preferredCoreType(cpuFlags: Self.old) == nil)
        #expect(BLASEnvironment.preferredCoreType(cpuFlags: []) == nil)
        // AVX-512 needs all four subsets; AVX2 needs FMA as well.
        #expect(BLASEnvironment.preferredCoreType(cpuFlags: Self.avx2.union(["avx512f"])) == "Haswell")
        #expect(BLASEnvironment.preferredCoreType(cpuFlags: ["avx2"]) == nil)
        #expect(BLASEnvironment.preferredCoreType(cpuFlags: ["fma"]) == nil)
    }

    @Test func isFastOnAVX512() {
        #expect(BLASEnvironment.isFast(coreName: "SkylakeX", cpuFlags: Self.avx512))
        #expect(BLASEnvironment.isFast(coreName: "skylakex", cpuFlags: Self.avx512))
        #expect(BLASEnvironment.isFast(coreName: "Cooperlake", cpuFlags: Self.avx512))
        #expect(!BLASEnvironment.isFast(coreName: "Haswell", cpuFlags: Self.avx512))
        #expect(!BLASEnvironment.isFast(coreName: "Prescott", cpuFlags: Self.avx512))
    }

    @Test func isFastOnAVX2() {
        #expect(BLASEnvironment.isFast(coreName: "Haswell", cpuFlags: Self.avx2))
        #expect(BLASEnvironment.isFast(coreName: "Zen", cpuFlags: Self.avx2))
        #expect(BLASEnvironment.isFast(coreName: "SkylakeX", cpuFlags: Self.avx2))
        #expect(!BLASEnvironment.isFast(coreName: "Prescott", cpuFlags: Self.avx2))
        #expect(!BLASEnvironment.isFast(coreName: "Sandybridge", cpuFlags: Self.avx2))
        #expect(!BLASEnvironment.isFast(coreName: "Nehalem", cpuFlags: Self.avx2))
    }

    @Test func anythingIsFastWithoutAVX2() {
        #expect(BLASEnvironment.isFast(coreName: "Prescott", cpuFlags: Self.old))
        #expect(BLASEnvironment.isFast(coreName: "Prescott", cpuFlags: []))
    }

    @Test func cpuFlagsFromSample() {
        let sample = """
            processor\t: 0
            vendor_id\t: GenuineIntel
            model name\t: Intel(R) Xeon(R) CPU
            flags\t\t: fpu vme de pse avx2 fma avx512f
            vmx flags\t: vnmi preemption_timer
            bugs\t\t: spectre_v1

            processor\t: 1
            vendor_id\t: GenuineIntel
            flags\t\t: fpu sse2

            """
        let flags = BLASEnvironment.cpuFlags(cpuinfo: sample)
        #expect(flags == ["fpu", "vme", "de", "pse", "avx2", "fma", "avx512f"])
        #expect(BLASEnvironment.preferredCoreType(cpuFlags: flags) == "Haswell")
    }

    @Test func cpuFlagsWithoutFlagsLine() {
        #expect(BLASEnvironment.cpuFlags(cpuinfo: nil).isEmpty)
        #expect(BLASEnvironment.cpuFlags(cpuinfo: "").isEmpty)
        // aarch64 kernels call them "Features".
        #expect(BLASEnvironment.cpuFlags(cpuinfo: "processor\t: 0\nFeatures\t: fp asimd\n").isEmpty)
    }
}
