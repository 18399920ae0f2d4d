import HTTPTypes

/// What the socket really took of each answer on one connection, for the access log.
///
/// Hummingbird's body writer returns once a piece is queued, not once it is written: a task that
/// queues faster than the event loop reports back-pressure can queue a whole answer and finish
/// before a byte is sent. The access log therefore waits for this record, which
/// ``ConnectionGuard`` fills from the write promises of the socket: body bytes written, and
/// whether the answer's end was written or the connection closed first. Answers are matched by
/// their `x-request-id` header, which the guard reads from each response head.
final class AnswerDelivery: Sendable {
    static let header = HTTPField.Name("x-request-id")!

    /// The fate of one answer: body bytes written to the socket, and why it stopped short (nil
    /// when its end was written).
    struct Outcome: Sendable, Equatable {
        var bytes: Int
        var failure: String?
    }

    private struct State {
        var settled: [String: Outcome] = [:]
        var waiters: [String: [CheckedContinuation<Outcome, Never>]] = [:]
        var closed = false
    }

    private let state = Locked(State())

    /// The outcome of answer `id`, once its end is written or the connection closes.
    func outcome(of id: String) async -> Outcome {
        await withCheckedContinuation { continuation in
            let ready: Outcome? = state.update { state in
                if let outcome = state.settled.removeValue(forKey: id) { return outcome }
                // The connection closed before the guard saw this answer's head.
                if state.closed { return Outcome(bytes: 0, failure: "the connection closed before the answer was written") }
                state.waiters[id, default: []].append(continuation)
                return nil
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }

    /// Called by the guard, on its event loop.
    func settle(_ id: String, _ outcome: Outcome) {
        let waiting: [CheckedContinuation<Outcome, Never>] = state.update { state in
            guard let waiting = state.waiters.removeValue(forKey: id) else {
                state.settled[id] = outcome
                return []
            }
            return waiting
        }
        for continuation in waiting { continuation.resume(returning: outcome) }
    }

    /// The connection is gone: every answer still awaited stopped short.
    func close() {
        let waiting: [CheckedContinuation<Outcome, Never>] = state.update { state in
            state.closed = true
            defer { state.waiters.removeAll() }
            return state.waiters.values.flatMap { $0 }
        }
        for continuation in waiting {
            continuation.resume(returning: Outcome(bytes: 0, failure: "the connection closed before the answer was written"))
        }
    }
}
