import CFHEKernels
import Dispatch
import Foundation
import XCTest

@testable import FHE

/// The kernels' loop pool (`nb_pool_run` behind ``concurrentLoop(_:_:)``): every index runs
/// exactly once, whoever calls — loops back to back, loops nested in an iteration, loops from
/// several threads at once (one gets the pool, the others fall back to Dispatch) — and a loop
/// returns only when all its iterations have.
final class ConcurrentLoopTests: XCTestCase {
    /// Counts per index, atomically (iterations run on several threads).
    final class Tally: @unchecked Sendable {
        let counts: UnsafeMutablePointer<Int>
        let n: Int
        private let lock = NSLock()
        init(_ n: Int) {
            self.n = n
            counts = .allocate(capacity: n)
            counts.initialize(repeating: 0, count: n)
        }
        deinit { counts.deallocate() }
        func hit(_ i: Int) { lock.lock(); counts[i] += 1; lock.unlock() }
        var all: [Int] { (0..<n).map { counts[$0] } }
    }

    func testEveryIndexRunsOnceBackToBackNestedAndFromManyThreads() {
        // Back to back, of every small size (a thread that misses a loop joins the next one).
        for round in 0..<2000 {
            let n = 1 + round % 9
            let tally = Tally(n)
            concurrentLoop(n) { tally.hit($0) }
            XCTAssertEqual(tally.all, [Int](repeating: 1, count: n), "loop \(round) of \(n)")
            if tally.all != [Int](repeating: 1, count: n) { return }
        }
        // The loop returns only when all iterations have: slow iterations write after a delay.
        for _ in 0..<50 {
            var done = [Bool](repeating: false, count: 4)
            done.withUnsafeMutableBufferPointer { d in
                concurrentLoop(4) { i in
                    if i % 2 == 1 { usleep(200) }
                    d[i] = true
                }
            }
            XCTAssertEqual(done, [true, true, true, true])
        }
        // Nested: each iteration runs a loop of its own (through Dispatch: the pool is taken).
        let outer = 6, inner = 7
        let tally = Tally(outer * inner)
        concurrentLoop(outer) { i in concurrentLoop(inner) { j in tally.hit(i * inner + j) } }
        XCTAssertEqual(tally.all, [Int](repeating: 1, count: outer * inner))
        // Several threads at once, each with many loops.
        let threads = 4, loops = 300, size = 5
        let shared = Tally(threads * loops * size)
        DispatchQueue.concurrentPerform(iterations: threads) { t in
            for l in 0..<loops {
                concurrentLoop(size) { i in shared.hit((t * loops + l) * size + i) }
            }
        }
        XCTAssertEqual(shared.all, [Int](repeating: 1, count: threads * loops * size))
        // More chunks than threads, as parallelChunks gives when FHEThreads.count is above the cores.
        let values = (0..<1000).map { UInt64($0) }
        var sum = [UInt64](repeating: 0, count: 1000)
        sum.withUnsafeMutableBufferPointer { s in
            parallelChunks(1000, threads: 9) { r in for i in r { s[i] = values[i] * 2 } }
        }
        XCTAssertEqual(sum, values.map { $0 * 2 })
    }
}
