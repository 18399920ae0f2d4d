import FHE
import Foundation

/// Splitting element-wise work of the training pass over the cores. OpenBLAS already runs the
/// matrix products on every core; between them, its threads would wait while one thread runs
/// the softmaxes, normalizations and activations.
enum Parallel {
    static let cores = max(1, ProcessInfo.processInfo.activeProcessorCount)

    /// Runs `body` over 0..<count in contiguous ranges, at most one per core and each of at
    /// least `minimumPerTask` items; on the calling thread alone when there is one range.
    /// `body` must only write what its own range owns.
    static func forEach(rows count: Int, minimumRowsPerTask minimumPerTask: Int = 1, _ body: (Range<Int>) -> Void) {
        let tasks = min(cores, max(1, count / max(1, minimumPerTask)))
        guard tasks > 1 else { return body(0..<count) }
        withoutActuallyEscaping(body) { body in
            // The ranges are disjoint and the loop returns only when all are done.
            let shared = Unchecked(body)
            concurrentLoop(tasks) { t in
                shared.value((count * t / tasks)..<(count * (t + 1) / tasks))
            }
        }
    }
}

/// A value the caller vouches for across the threads of one ``Parallel/forEach(rows:minimumRowsPerTask:_:)``.
struct Unchecked<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
