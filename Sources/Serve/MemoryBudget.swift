import Foundation

/// The memory the requests in flight may hold at once, in bytes: each product request reserves
/// its bound (``RequestAdmission/peakBytes``, from its header, before its body is read) and gives
/// it back once its answer is sent. Reservations are granted in arrival order; one that does not
/// fit waits, for at most a given time, for others to finish.
final class MemoryBudget: @unchecked Sendable {
    let capacity: Int
    private let lock = NSLock()
    private var used = 0
    private var peak = 0
    private var nextID: UInt64 = 0
    private var waiters: [(id: UInt64, bytes: Int, continuation: CheckedContinuation<Bool, Never>)] = []

    init(capacity: Int) {
        precondition(capacity > 0)
        self.capacity = capacity
    }

    /// Bytes reserved now, and the most ever reserved at once.
    var inUse: Int { lock.withLock { used } }
    var peakInUse: Int { lock.withLock { peak } }

    /// What one reservation holds; released when the last reference goes (a response dropped
    /// unsent releases it too).
    final class Reservation: Sendable {
        let bytes: Int
        private let budget: MemoryBudget
        fileprivate init(bytes: Int, budget: MemoryBudget) { (self.bytes, self.budget) = (bytes, budget) }
        deinit { budget.release(bytes) }
    }

    /// Reserves `bytes` (at most `capacity`), waiting up to `timeout` behind earlier requests;
    /// nil when the time ran out.
    func reserve(_ bytes: Int, timeout: Duration) async -> Reservation? {
        precondition(bytes >= 0 && bytes <= capacity, "reservation of \(bytes) bytes in a budget of \(capacity)")
        let granted: Bool = await withCheckedContinuation { continuation in
            lock.lock()
            if waiters.isEmpty && used + bytes <= capacity {
                used += bytes
                peak = max(peak, used)
                lock.unlock()
                continuation.resume(returning: true)
                return
            }
            let id = nextID
            nextID += 1
            waiters.append((id, bytes, continuation))
            lock.unlock()
            Task {
                try? await Task.sleep(for: timeout)
                self.expire(id)
            }
        }
        return granted ? Reservation(bytes: bytes, budget: self) : nil
    }

    private func expire(_ id: UInt64) {
        lock.lock()
        guard let i = waiters.firstIndex(where: { $0.id == id }) else { return lock.unlock() }
        let waiter = waiters.remove(at: i)
        // The head may have been the one blocking the others.
        let ready = grantReady()
        lock.unlock()
        waiter.continuation.resume(returning: false)
        for c in ready { c.resume(returning: true) }
    }

    fileprivate func release(_ bytes: Int) {
        lock.lock()
        used -= bytes
        let ready = grantReady()
        lock.unlock()
        for c in ready { c.resume(returning: true) }
    }

    /// Grants the waiters at the head that fit, in order (the lock is held).
    private func grantReady() -> [CheckedContinuation<Bool, Never>] {
        var ready: [CheckedContinuation<Bool, Never>] = []
        while let head = waiters.first, used + head.bytes <= capacity {
            used += head.bytes
            peak = max(peak, used)
            ready.append(waiters.removeFirst().continuation)
        }
        return ready
    }
}
