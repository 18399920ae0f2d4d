import Foundation

/// A fixed set of threads that run the CPU-heavy products, outside Swift's cooperative
/// thread pool.
///
/// A product takes hundreds of milliseconds to seconds of CPU (and fans out to its own
/// threads); run on the cooperative pool it would starve the event handling of every other
/// connection (health checks included). Here a request's task suspends until a worker has
/// run its job; at most `count` products run at once, the others wait in FIFO order.
final class ProductWorkers: @unchecked Sendable {
    // `condition` guards `jobs` and `stopping`.
    private let condition = NSCondition()
    private var jobs: [@Sendable () -> Void] = []
    private var nextJob = 0
    private var stopping = false
    private let group = DispatchGroup()

    init(count: Int) {
        precondition(count >= 1, "ProductWorkers needs at least one thread, got \(count)")
        for i in 0..<count {
            group.enter()
            let thread = Thread { [self] in
                work()
                group.leave()
            }
            thread.name = "nb-serve-product-\(i)"
            thread.start()
        }
    }

    /// Runs `job` on a worker thread and returns its result.
    func run<T: Sendable>(_ job: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { (continuation: CheckedContinuation<T, Never>) in
            condition.lock()
            precondition(!stopping, "ProductWorkers.run after shutdown")
            jobs.append { continuation.resume(returning: job()) }
            condition.signal()
            condition.unlock()
        }
    }

    /// Lets the queued jobs finish, then ends the threads and waits for them.
    func shutdown() {
        condition.lock()
        stopping = true
        condition.broadcast()
        condition.unlock()
        group.wait()
    }

    private func work() {
        while true {
            condition.lock()
            while nextJob == jobs.count && !stopping { condition.wait() }
            if nextJob == jobs.count {
                condition.unlock()
                return
            }
            let job = jobs[nextJob]
            nextJob += 1
            // Drop the consumed prefix now and then rather than shifting the array per job.
            if nextJob == jobs.count || nextJob >= 64 {
                jobs.removeFirst(nextJob)
                nextJob = 0
            }
            condition.unlock()
            job()
        }
    }
}
