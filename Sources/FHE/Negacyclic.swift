import CFHEKernels
import Foundation

/// Exact negacyclic products mod (X^N + 1, 2^64) by the small secret polynomial, through
/// FFTW: each 64-bit operand is split into balanced limbs of at most 22 bits, so every
/// coefficient of a limb's product is an integer below 2^33 in magnitude, which a
/// double-precision FFT of this size computes to within 2^-10 and rounds exactly. Every
/// product checks that margin (``maxRoundingDistance``).
public final class NegacyclicRing: @unchecked Sendable {
    public let degree: Int
    let plan: OpaquePointer
    static let limbBits: UInt32 = 22

    private static let lock = NSLock()
    nonisolated(unsafe) private static var rings: [Int: NegacyclicRing] = [:]

    /// The ring of degree n, planned once per process (FFTW's planner is not thread-safe).
    public static func shared(degree n: Int) -> NegacyclicRing {
        lock.lock()
        defer { lock.unlock() }
        if let r = rings[n] { return r }
        precondition(n >= 16 && n & (n - 1) == 0, "ring degree must be a power of two ≥ 16")
        let r = NegacyclicRing(degree: n, plan: nb_negacyclic_create(n))
        rings[n] = r
        return r
    }

    /// A ring of its own, planned anew after FFTW forgets what it measured before (for tests:
    /// FFTW_MEASURE picks among several plans by timing, so only fresh plans show them all).
    static func planned(degree n: Int) -> NegacyclicRing {
        lock.lock()
        defer { lock.unlock() }
        nb_negacyclic_forget_wisdom()
        return NegacyclicRing(degree: n, plan: nb_negacyclic_create(n), owned: true)
    }

    private let owned: Bool

    private init(degree: Int, plan: OpaquePointer, owned: Bool = false) { (self.degree, self.plan, self.owned) = (degree, plan, owned) }

    deinit {
        if owned {
            NegacyclicRing.lock.lock()
            nb_negacyclic_destroy(plan)
            NegacyclicRing.lock.unlock()
        }
    }

    /// Work space for one thread.
    public final class Workspace {
        let pointer: UnsafeMutablePointer<Double>
        init(_ ring: NegacyclicRing) { pointer = nb_negacyclic_work(ring.plan) }
        deinit { nb_negacyclic_free_work(pointer) }
    }

    public func workspace() -> Workspace { Workspace(self) }

    /// The spectrum of a small integer polynomial (|p_i| ≤ 1), for ``multiply``.
    public func spectrum(of poly: [Int8]) -> [Double] {
        precondition(poly.count == degree)
        let wide = poly.map(Int64.init)
        var out = [Double](repeating: 0, count: degree)
        let ws = workspace()
        // Kept alive past the call: its last use is reading `pointer`, and its deinit frees it.
        withExtendedLifetime(ws) { nb_negacyclic_spectrum(plan, wide, &out, ws.pointer) }
        return out
    }

    /// The largest distance from an FFT result to its integer seen by the last products
    /// (each product checks it stays below 1/4).
    public static let maxRoundingDistance = 0.25

    /// c = a·p mod (X^N + 1, 2^64), where only the top `bits` bits of a's values count
    /// (a is a multiple of 2^(64 − bits), or is rounded to one).
    public func multiply(_ a: UnsafePointer<UInt64>, bits: Int, spectrum: UnsafePointer<Double>, into c: UnsafeMutablePointer<UInt64>,
                         workspace: Workspace) {
        let worst = nb_negacyclic_mul(plan, a, UInt32(bits), NegacyclicRing.limbBits, spectrum, c, workspace.pointer)
        precondition(worst < NegacyclicRing.maxRoundingDistance, "negacyclic product not exact: FFT result \(worst) away from an integer")
    }

    /// The schoolbook product, for tests: c_k = Σ_{i+j=k} a_i p_j − Σ_{i+j=k+N} a_i p_j (mod 2^64).
    public static func schoolbook(_ a: [UInt64], _ p: [Int8]) -> [UInt64] {
        let n = a.count
        var c = [UInt64](repeating: 0, count: n)
        for j in 0..<n where p[j] != 0 {
            let pj = UInt64(bitPattern: Int64(p[j]))
            for i in 0..<n {
                let term = a[i] &* pj
                let k = i + j
                if k < n { c[k] &+= term } else { c[k - n] &-= term }
            }
        }
        return c
    }
}
