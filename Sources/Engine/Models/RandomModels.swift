import Foundation

/// Named tensors held in memory: for tests, benchmarks and randomly initialised models.
public struct InMemoryTensors: TensorSource {
    public var tensors: [String: (shape: [Int], data: [Float])]

    public var path: String

    public init(_ tensors: [String: (shape: [Int], data: [Float])] = [:], path: String = "(memory)") {
        self.tensors = tensors
        self.path = path
    }

    public func shape(of name: String) -> [Int]? { tensors[name]?.shape }
    public var tensorNames: [String] { tensors.keys.sorted() }
    public func float32(_ name: String) throws(CheckpointError) -> [Float] { tensors[name]?.data ?? [] }

    /// Normal(0, std) values from a seeded generator (Box–Muller).
    public static func normal(count: Int, std: Float, rng: inout SeededGenerator) -> [Float] {
        var out = [Float](repeating: 0, count: count)
        var i = 0
        while i < count {
            let u1 = max(rng.nextUnit(), 1e-300), u2 = rng.nextUnit()
            let r = (-2 * Foundation.log(u1)).squareRoot()
            out[i] = Float(r * Foundation.cos(2 * .pi * u2)) * std
            if i + 1 < count { out[i + 1] = Float(r * Foundation.sin(2 * .pi * u2)) * std }
            i += 2
        }
        return out
    }
}
