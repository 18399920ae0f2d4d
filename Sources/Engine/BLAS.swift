import COpenBLAS
import Foundation

/// The BLAS library behind every matrix product, and the kernel it chose for this CPU.
///
/// Debian's OpenBLAS is built with `DYNAMIC_ARCH`: it picks its kernels once, when the
/// library loads, from `OPENBLAS_CORETYPE` or from its own CPU detection, which falls back
/// to the generic "Prescott" kernels on some CPUs (about 6x slower sgemm). Setting the
/// variable from inside the running process is too late, so ``BLASEnvironment`` re-executes
/// the process once with it set.
public enum BLAS {
    /// OpenBLAS's build configuration string, e.g. `OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Haswell MAX_THREADS=64`.
    public static var configuration: String {
        guard let c = openblas_get_config() else { return "unknown" }
        return String(cString: c).trimmingCharacters(in: .whitespaces)
    }

    /// The kernel family OpenBLAS selected at load time, e.g. `Haswell`, `SkylakeX`, `Prescott`.
    public static var coreName: String {
        guard let c = openblas_get_corename() else { return "unknown" }
        return String(cString: c)
    }

    /// Threads OpenBLAS uses for one call.
    public static var threads: Int { Int(openblas_get_num_threads()) }

    /// Runs `body` with OpenBLAS on one thread: for products too small to share (OpenBLAS
    /// splits any product over 262,144 multiply-adds, and for a LoRA update of rank 8 the
    /// hand-over costs more than the work). The thread count is restored afterwards; a
    /// caller that finds one thread already set leaves it alone.
    public static func singleThreaded<R>(_ body: () throws -> R) rethrows -> R {
        try calling {
            let n = openblas_get_num_threads()
            guard n > 1 else { return try body() }
            openblas_set_num_threads(1)
            defer { openblas_set_num_threads(n) }
            return try body()
        }
    }

    /// Runs `body`, which calls OpenBLAS, shared with other such callers but never beside
    /// ``parkWorkers()`` (which ends the threads a call may have handed work to). Reentrant.
    public static func calling<R>(_ body: () throws -> R) rethrows -> R {
        _ = workersSleepWhenIdle
        pthread_rwlock_rdlock(workersLock)
        defer { pthread_rwlock_unlock(workersLock) }
        return try body()
    }

    /// The idle spin of OpenBLAS's workers, as the exponent of its length in cycles: after a
    /// call they poll for the next one (calling `sched_yield`) for 2^28 cycles, about a tenth
    /// of a second, by default. Between products the training pass runs its element-wise work
    /// and attention on both cores, and a polling worker takes time from those threads: with
    /// 2^10 cycles (it sleeps at once, and the next call wakes it), the GPT-2-shape 4×128
    /// training step took 1.53 s instead of 1.65 s (three alternating rounds; SmolLM2 1×128
    /// and greedy decoding unchanged). A value the user set in `OPENBLAS_THREAD_TIMEOUT` stays.
    public static let idleSpinExponent = 10

    /// Set once, before the first call: OpenBLAS read its environment when it loaded, so the
    /// value is set, read again, and the workers restarted (their loop reads it when it starts).
    private static let workersSleepWhenIdle: Void = {
        guard getenv("OPENBLAS_THREAD_TIMEOUT") == nil else { return }
        setenv("OPENBLAS_THREAD_TIMEOUT", String(idleSpinExponent), 1)
        openblas_read_env()
        parkWorkers()
    }()

    /// Applies ``idleSpinExponent`` now (it is also applied before the first product): call it
    /// at start-up, before other threads run, since it sets an environment variable.
    public static func prepareWorkers() { _ = workersSleepWhenIdle }

    /// Readers: calls into OpenBLAS; the writer: ``parkWorkers()``. glibc's default prefers
    /// readers, so a thread that holds it to read may take it to read again.
    nonisolated(unsafe) private static let workersLock: UnsafeMutablePointer<pthread_rwlock_t> = {
        let lock = UnsafeMutablePointer<pthread_rwlock_t>.allocate(capacity: 1)
        pthread_rwlock_init(lock, nil)
        return lock
    }()

    /// Ends OpenBLAS's worker threads; its next threaded call starts them again (tens of
    /// microseconds). After each call OpenBLAS's idle workers spin on `sched_yield` for about
    /// 2^28 cycles (a tenth of a second) before they sleep, and on a small machine that spin
    /// takes a core from whatever runs next: an encrypted product's threads in this process,
    /// or `nb serve`'s on the same machine while this process waits for its answer. Call it
    /// before such work, never while another thread is inside OpenBLAS.
    public static func parkWorkers() {
        guard threads > 1 else { return }
        // Alone: a call in flight on another thread could have queued work to a worker that
        // the shutdown would end before it ran it (and two shutdowns at once deadlock).
        pthread_rwlock_wrlock(workersLock)
        defer { pthread_rwlock_unlock(workersLock) }
        _ = blas_thread_shutdown_()
    }

    /// One line for report headers and `nb --version`.
    public static var summary: String {
        "\(configuration); kernel \(coreName); \(threads) thread\(threads == 1 ? "" : "s")"
    }

    /// y = alpha·op(A)·x + beta·y, A row-major (M, N) (or used as (N, M) when `transpose`).
    public static func sgemv(transpose: Bool, m: Int, n: Int, alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
                             x: UnsafePointer<Float>, beta: Float = 0, y: UnsafeMutablePointer<Float>) {
        calling {
            cblas_sgemv(CblasRowMajor, transpose ? CblasTrans : CblasNoTrans, blasint(m), blasint(n), alpha, a, blasint(lda),
                        x, 1, beta, y, 1)
        }
    }

    /// C = alpha·op(A)·op(B) + beta·C on row-major Float32 matrices.
    ///
    /// - A: (M, K), or (K, M) when `transposeA`; B: (K, N), or (N, K) when `transposeB`;
    ///   C: (M, N). Leading dimensions are the row lengths of the stored matrices.
    public static func sgemm(
        transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int,
        alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
        b: UnsafePointer<Float>, ldb: Int,
        beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        calling {
            cblas_sgemm(
                CblasRowMajor, transposeA ? CblasTrans : CblasNoTrans,
                transposeB ? CblasTrans : CblasNoTrans,
                blasint(m), blasint(n), blasint(k), alpha, a, blasint(lda), b, blasint(ldb),
                beta, c, blasint(ldc))
        }
    }
}

/// Makes sure OpenBLAS loads its fast kernels on this CPU.
public enum BLASEnvironment {
    /// The environment variable OpenBLAS reads when it loads.
    public static let coreTypeVariable = "OPENBLAS_CORETYPE"
    static let guardVariable = "NB_BLAS_REEXEC"

    /// Kernel families that use the CPU's widest vector units, by the flag that needs them.
    static let avx512Kernels: Set<String> = ["skylakex", "cooperlake", "sapphirerapids"]
    static let avx2Kernels: Set<String> = avx512Kernels.union(["haswell", "zen", "skylake"])

    /// Whether OpenBLAS's own choice already uses this CPU's vector units (e.g. `Zen` on an
    /// AVX2 AMD CPU); a generic choice (`Prescott`, `Nehalem`, `Sandybridge` on an AVX2 CPU) is not.
    public static func isFast(coreName: String, cpuFlags: Set<String>) -> Bool {
        let name = coreName.lowercased()
        if preferredCoreType(cpuFlags: cpuFlags) == "SkylakeX" { return avx512Kernels.contains(name) }
        if preferredCoreType(cpuFlags: cpuFlags) == "Haswell" { return avx2Kernels.contains(name) }
        return true
    }

    /// The OpenBLAS kernel family to request for a CPU with these `/proc/cpuinfo` flags:
    /// AVX-512 (F, BW, VL, DQ) → `SkylakeX`, AVX2 + FMA → `Haswell`, otherwise none (let
    /// OpenBLAS detect).
    public static func preferredCoreType(cpuFlags: Set<String>) -> String? {
        if ["avx512f", "avx512bw", "avx512vl", "avx512dq"].allSatisfy(cpuFlags.contains) {
            return "SkylakeX"
        }
        if cpuFlags.contains("avx2") && cpuFlags.contains("fma") { return "Haswell" }
        return nil
    }

    /// The flags of the first processor in `/proc/cpuinfo` (empty where it is absent).
    public static func cpuFlags(cpuinfo: String? = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) -> Set<String> {
        guard let text = cpuinfo else { return [] }
        for line in text.split(separator: "\n") where line.hasPrefix("flags") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            return Set(line[line.index(after: colon)...].split(separator: " ").map(String.init))
        }
        return []
    }

    /// Re-executes the current process once with `OPENBLAS_CORETYPE` set when the user
    /// has not set it and this CPU has a better kernel than OpenBLAS's own detection may
    /// pick. Returns normally when nothing needs doing (or when re-executing fails).
    public static func ensureFastKernels() {
        let env = ProcessInfo.processInfo.environment
        let flags = cpuFlags()
        guard env[coreTypeVariable] == nil, env[guardVariable] == nil,
              let wanted = preferredCoreType(cpuFlags: flags),
              !isFast(coreName: BLAS.coreName, cpuFlags: flags)
        else { return }
        setenv(coreTypeVariable, wanted, 1)
        setenv(guardVariable, "1", 1)
        let args = CommandLine.arguments
        var cArgs: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) }
        cArgs.append(nil)
        execv("/proc/self/exe", &cArgs)
        // execv only returns on failure: carry on with the kernels we have.
        for p in cArgs { free(p) }
    }
}
