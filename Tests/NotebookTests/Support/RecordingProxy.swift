import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A loopback TCP proxy that forwards every connection to `upstreamPort` and records every
/// byte the client sends (what an eavesdropper on the client's link would see). When the
/// upstream is down it closes the client's connection, as a dead server would.
final class RecordingProxy: @unchecked Sendable {
    let port: Int
    private let listener: Int32
    private let upstreamPort: Int
    private let lock = NSLock()
    private var sent = Data()
    private var stopped = false

    init(upstreamPort: Int) throws {
        self.upstreamPort = upstreamPort
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard bound == 0, listen(fd, 16) == 0 else { close(fd); throw POSIXError(.EADDRINUSE) }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        port = Int(UInt16(bigEndian: address.sin_port))
        listener = fd
        Thread { [self] in acceptLoop() }.start()
    }

    /// Everything clients sent so far.
    var recorded: Data { lock.withLock { sent } }

    func stop() {
        lock.withLock { stopped = true }
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }

    private func acceptLoop() {
        while true {
            let client = accept(listener, nil, nil)
            if client < 0 { if lock.withLock({ stopped }) { return } else { continue } }
            let upstream = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            address.sin_port = in_port_t(UInt16(upstreamPort).bigEndian)
            let connected = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(upstream, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            if connected != 0 {
                close(upstream)
                close(client)
                continue
            }
            let pair = Pair(client, upstream)
            Thread { [self] in pump(from: client, to: upstream, record: true); pair.done() }.start()
            Thread { [self] in pump(from: upstream, to: client, record: false); pair.done() }.start()
        }
    }

    private func pump(from source: Int32, to destination: Int32, record: Bool) {
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = recv(source, &buffer, buffer.count, 0)
            if n <= 0 { break }
            if record { lock.withLock { sent.append(contentsOf: buffer[0..<n]) } }
            var offset = 0
            while offset < n {
                let m = buffer[offset..<n].withUnsafeBytes { send(destination, $0.baseAddress!, n - offset, Int32(MSG_NOSIGNAL)) }
                if m <= 0 { break }
                offset += m
            }
            if offset < n { break }
        }
        // Either side gone: end both directions (this unblocks the other pump).
        shutdown(destination, Int32(SHUT_RDWR))
        shutdown(source, Int32(SHUT_RDWR))
    }

    /// The two sockets of one connection, closed when both pumps are done.
    final class Pair: @unchecked Sendable {
        let a: Int32, b: Int32
        private var remaining = 2
        private let lock = NSLock()
        init(_ a: Int32, _ b: Int32) { (self.a, self.b) = (a, b) }
        func done() {
            let last = lock.withLock { remaining -= 1; return remaining == 0 }
            if last { close(a); close(b) }
        }
    }
}
