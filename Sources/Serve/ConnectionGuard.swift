import HTTPTypes
import NIOCore
import NIOHTTPTypes

/// One per connection, between the HTTP codec and Hummingbird's handler. It owns three things
/// Hummingbird 2 gets wrong for large products:
///
/// - **Idle time counts progress both ways.** The connection is closed after `idle` without a
///   request part read or a response write completed, while the server waits on the peer
///   (between requests, reading a request, sending an answer). Time spent computing a product
///   is not idle. (Hummingbird's own timer starts when the answer is queued, so a slow reader of
///   a large answer was cut mid-body; its timeout is off and this one replaces it.)
/// - **Errors close the connection without reading the rest of the body.** After an answer with
///   `Connection: close` is sent, the output is shut (FIN, so the peer reads the answer whole),
///   nothing more is read, and the socket is closed after `linger`. (Hummingbird would read and
///   discard an unread body to keep the connection, however long it is.)
/// - **Shutdown drains.** On the quiesce event of a graceful shutdown, an idle connection is
///   closed; a busy one finishes its answer (with `Connection: close`), written to the kernel,
///   for at most `drainLimit`. (Hummingbird closed as soon as the answer was queued, dropping
///   the unsent part of a large body.)
final class ConnectionGuard: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    let idle: TimeAmount, drainLimit: TimeAmount, linger: TimeAmount
    /// What the socket took of each answer, for the access log.
    let delivery = AnswerDelivery()
    /// The request id of the answer whose parts are being queued, and the body bytes written
    /// so far of each answer not yet settled (a next answer may be queued before the last part
    /// of the one before is written).
    private var answerID: String?
    private var written: [String: Int] = [:]
    private var lastProgress = NIODeadline.now()
    private var pendingWrites = 0
    /// A request whose answer has not been sent yet.
    private var requestOpen = false
    /// Its parts are still arriving.
    private var readingRequest = false
    private var closeAfterAnswer = false
    private var quiescing = false
    private var closing = false
    private var idleTimer: Scheduled<Void>?
    private var finalTimer: Scheduled<Void>?

    init(idle: TimeAmount, drainLimit: TimeAmount, linger: TimeAmount = .seconds(1)) {
        (self.idle, self.drainLimit, self.linger) = (idle, drainLimit, linger)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        lastProgress = .now()
        scheduleIdleCheck(context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        idleTimer?.cancel()
        finalTimer?.cancel()
        connectionGone()
    }

    func channelInactive(context: ChannelHandlerContext) {
        connectionGone()
        context.fireChannelInactive()
    }

    private func connectionGone() {
        for (id, bytes) in written { delivery.settle(id, .init(bytes: bytes, failure: "the connection closed")) }
        (written, answerID) = ([:], nil)
        delivery.close()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        lastProgress = .now()
        switch unwrapInboundIn(data) {
        case .head: (requestOpen, readingRequest) = (true, true)
        case .end: readingRequest = false
        case .body: break
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        var part = unwrapOutboundIn(data)
        if case .head(var head) = part, head.status.kind != .informational {
            if quiescing { head.headerFields[.connection] = "close" }
            closeAfterAnswer = head.headerFields[.connection]?.lowercased() == "close"
            answerID = head.headerFields[AnswerDelivery.header]
            if let answerID { written[answerID] = 0 }
            part = .head(head)
        }
        var isEnd = false, bodyBytes = 0
        switch part {
        case .end: isEnd = true
        case .body(let buffer): bodyBytes = buffer.readableBytes
        case .head: break
        }
        // The time the answer took to compute is not idle time.
        if pendingWrites == 0 { lastProgress = .now() }
        pendingWrites += 1
        let id = answerID
        if isEnd { answerID = nil }
        let done = promise ?? context.eventLoop.makePromise()
        done.futureResult.assumeIsolated().whenComplete { result in
            self.pendingWrites -= 1
            self.lastProgress = .now()
            if let id, case .success = result { self.written[id]? += bodyBytes }
            if isEnd, let id, let bytes = self.written.removeValue(forKey: id) {
                var failure: String?
                if case .failure(let error) = result { failure = "\(error)" }
                self.delivery.settle(id, .init(bytes: bytes, failure: failure))
            }
            if isEnd, case .success = result { self.answerSent(context) }
        }
        context.write(wrapOutboundOut(part), promise: done)
    }

    private func answerSent(_ context: ChannelHandlerContext) {
        requestOpen = false
        if quiescing {
            close(context)
        } else if closeAfterAnswer && !closing {
            // Read no more of what the peer sends; let it read the answer, then close.
            closing = true
            context.channel.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in }
            context.close(mode: .output, promise: nil)
            finalTimer = context.eventLoop.assumeIsolated().scheduleTask(in: linger) { self.close(context) }
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // Not passed on: Hummingbird's handler would close before the answer is written.
        guard event is ChannelShouldQuiesceEvent else { return context.fireUserInboundEventTriggered(event) }
        quiescing = true
        if !requestOpen && pendingWrites == 0 { return close(context) }
        finalTimer?.cancel()
        finalTimer = context.eventLoop.assumeIsolated().scheduleTask(in: drainLimit) { self.close(context) }
    }

    private func close(_ context: ChannelHandlerContext) {
        idleTimer?.cancel()
        context.close(promise: nil)
    }

    private func scheduleIdleCheck(_ context: ChannelHandlerContext) {
        idleTimer = context.eventLoop.assumeIsolated().scheduleTask(deadline: lastProgress + idle) {
            let waitingOnPeer = !self.requestOpen || self.readingRequest || self.pendingWrites > 0
            if !waitingOnPeer {
                self.lastProgress = .now()
            } else if NIODeadline.now() >= self.lastProgress + self.idle {
                return self.close(context)
            }
            self.scheduleIdleCheck(context)
        }
    }
}
