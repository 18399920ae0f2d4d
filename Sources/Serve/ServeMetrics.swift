import Foundation
import Prometheus

/// `nb serve --metrics`: `GET /metrics` in Prometheus's text format (swift-prometheus), for a
/// deployment watched behind a proxy: requests by route and status, their durations, bytes
/// in and out, the memory budget in use, resident memory, connections' requests in flight.
final class ServeMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    private let bytesIn: Counter
    private let bytesOut: Counter
    private let inFlight: Gauge
    private let budgetInUse: Gauge
    private let budgetCapacity: Gauge
    private let resident: Gauge
    private let budget: MemoryBudget
    static let buckets: [Duration] = [.milliseconds(5), .milliseconds(25), .milliseconds(100), .milliseconds(250), .seconds(1),
                                      .milliseconds(2500), .seconds(10), .seconds(30), .seconds(120)]

    init(budget: MemoryBudget) {
        self.budget = budget
        bytesIn = registry.makeCounter(name: "nb_serve_received_bytes_total", help: "Request body bytes read.")
        bytesOut = registry.makeCounter(name: "nb_serve_sent_bytes_total", help: "Answer body bytes written.")
        inFlight = registry.makeGauge(name: "nb_serve_requests_in_flight", help: "Requests being read, computed or answered.")
        budgetInUse = registry.makeGauge(name: "nb_serve_request_memory_bytes", help: "Memory reserved by the requests in flight.")
        budgetCapacity = registry.makeGauge(name: "nb_serve_request_memory_budget_bytes", help: "The memory budget for requests.")
        resident = registry.makeGauge(name: "nb_serve_resident_memory_bytes", help: "The process's resident memory.")
        budgetCapacity.set(Double(budget.capacity))
    }

    func started() { inFlight.increment() }

    /// One request done: `route` is a fixed label (health, modules, product, masked, metrics, other).
    func finished(route: String, status: Int?, bytesIn: Int, bytesOut: Int, duration: Duration) {
        inFlight.decrement()
        let labels = [("route", route), ("status", status.map(String.init) ?? "dropped")]
        registry.makeCounter(name: "nb_serve_requests_total", labels: labels, help: "Requests by route and status.").increment()
        registry.makeDurationHistogram(name: "nb_serve_request_duration_seconds", labels: [("route", route)], buckets: Self.buckets,
                                       help: "Time from the request's head to the answer's last byte.").record(duration)
        self.bytesIn.increment(by: Int64(bytesIn))
        self.bytesOut.increment(by: Int64(bytesOut))
    }

    /// The exposition, with the gauges read now.
    func exposition() -> [UInt8] {
        budgetInUse.set(Double(budget.inUse))
        resident.set(Double(Self.residentBytes()))
        return registry.emitToBuffer()
    }

    static func residentBytes() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let fields = text.split(separator: " ")
        guard fields.count > 1, let pages = Int(fields[1]) else { return 0 }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }

    /// The route label of a path.
    static func route(_ path: String) -> String {
        switch path {
        case "/v1/health": return "health"
        case "/v1/modules": return "modules"
        case "/metrics": return "metrics"
        default:
            guard path.hasPrefix("/v1/modules/") else { return "other" }
            return path.hasSuffix("/masked") ? "masked" : "product"
        }
    }
}
