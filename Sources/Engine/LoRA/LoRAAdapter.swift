import Foundation

/// The LoRA updates of a model: one ``LoRALayer`` per targeted linear layer, in model order.
///
/// The training code calls ``forward(at:input:rows:output:)`` right after each frozen layer's
/// own forward, and ``backward(at:input:outputGradient:rows:inputGradient:)`` from the backward
/// hook that receives that layer's (x, dY). Rows are tokens: (B·T, in) for a batch.
///
/// Trainable parameters, in PEFT's order: A₀, B₀, A₁, B₁, … (``parameters``).
public final class LoRAAdapter {
    public let config: LoRAConfig
    /// The updates, in model order. Mutable so an optimizer can update A and B in place.
    public var layers: [LoRALayer]
    /// When false, forward and backward do nothing: the model runs as the base model.
    public var isEnabled = true
    /// Training mode: forward draws dropout masks and saves what backward needs. In
    /// evaluation mode (the default) forward applies no dropout and saves nothing.
    public var isTraining = false
    /// The dropout masks' generator; part of a training checkpoint's state.
    public var dropoutGenerator: SeededGenerator
    private let indexByName: [String: Int]

    /// Wraps existing layers (e.g. read from a PEFT adapter).
    public init(config: LoRAConfig, layers: [LoRALayer]) {
        self.config = config
        self.layers = layers
        // A stream apart from the one that drew A: the same seed must not give masks equal to A's draws.
        dropoutGenerator = SeededGenerator(seed: config.seed ^ 0x6C6F_7261_6472_6F70)
        indexByName = Dictionary(uniqueKeysWithValues: layers.enumerated().map { ($1.module.name, $0) })
    }

    /// New layers for the modules `config.targets` selects: A ~ U(−1/√in, 1/√in) from
    /// `config.seed`, drawn module by module in model order; B = 0.
    public convenience init(config: LoRAConfig, modules: [LinearModule]) throws(LoRAError) {
        let targets = try config.resolveTargets(in: modules)
        var rng = SeededGenerator(seed: config.seed)
        let scale = Float(config.scale)
        self.init(config: config, layers: targets.map { LoRALayer.initialized(module: $0, rank: config.rank, scale: scale, rng: &rng) })
    }

    /// New layers for a GPT-2 model (see ``init(config:modules:)``).
    public convenience init(config: LoRAConfig, model: GPT2Model) throws(LoRAError) {
        try self.init(config: config, modules: model.linearModules)
    }

    /// New layers for a LLaMA model (see ``init(config:modules:)``).
    public convenience init(config: LoRAConfig, model: LlamaModel) throws(LoRAError) {
        try self.init(config: config, modules: model.linearModules)
    }

    /// The position in ``layers`` of the update for a module name, or nil when not targeted.
    public func index(of moduleName: String) -> Int? { indexByName[moduleName] }

    /// The position in ``layers`` of the update for block `layer`'s linear `kind`, or nil.
    public func index(layer: Int, kind: LinearModule.Kind) -> Int? {
        layers.firstIndex { $0.module.layer == layer && $0.module.kind == kind }
    }

    /// The targeted modules, in order.
    public var modules: [LinearModule] { layers.map(\.module) }

    /// Trainable parameters: Σ r·(in + out). GPT-2 small, c_attn, r = 8: 12·(8·768 + 2304·8) = 294,912.
    public var parameterCount: Int { layers.reduce(0) { $0 + $1.parameterCount } }

    // MARK: Forward and backward

    /// output (rows, out) += s·dropout(input)·Aᵀ·Bᵀ for input (rows, in) of layer `index`.
    public func forward(at index: Int, input: UnsafePointer<Float>, rows: Int, output: UnsafeMutablePointer<Float>) {
        guard isEnabled else { return }
        var mask: LoRALayer.Dropout? = nil
        if isTraining && config.dropout > 0 {
            mask = LoRALayer.dropout(count: rows * layers[index].module.inFeatures, probability: config.dropout, rng: &dropoutGenerator)
        }
        BLAS.singleThreaded { layers[index].forward(input, rows: rows, mask: mask, save: isTraining, into: output) }
    }

    /// Array form of ``forward(at:input:rows:output:)``.
    public func forward(at index: Int, input: [Float], rows: Int, output: inout [Float]) {
        let m = layers[index].module
        precondition(input.count == rows * m.inFeatures && output.count == rows * m.outFeatures,
                     "\(m.name): LoRA forward wants input (\(rows), \(m.inFeatures)) and output (\(rows), \(m.outFeatures)), got \(input.count) and \(output.count) values")
        input.withUnsafeBufferPointer { x in
            output.withUnsafeMutableBufferPointer { forward(at: index, input: x.baseAddress!, rows: rows, output: $0.baseAddress!) }
        }
    }

    /// Accumulates dA, dB of layer `index` from its input (rows, in) and output gradient
    /// (rows, out), and adds s·(dY·B·A) ⊙ mask into `inputGradient` (rows, in) when given.
    /// Must follow a training-mode forward of the same input.
    public func backward(at index: Int, input: UnsafePointer<Float>, outputGradient: UnsafePointer<Float>, rows: Int,
                         inputGradient: UnsafeMutablePointer<Float>?) {
        guard isEnabled else { return }
        BLAS.singleThreaded { layers[index].backward(input, outputGradient: outputGradient, rows: rows, inputGradient: inputGradient) }
    }

    /// Array form of ``backward(at:input:outputGradient:rows:inputGradient:)``.
    public func backward(at index: Int, input: [Float], outputGradient: [Float], rows: Int, inputGradient: inout [Float]) {
        let m = layers[index].module
        precondition(input.count == rows * m.inFeatures && outputGradient.count == rows * m.outFeatures && inputGradient.count == input.count,
                     "\(m.name): LoRA backward wants x and dX (\(rows), \(m.inFeatures)), dY (\(rows), \(m.outFeatures)); got \(input.count), \(inputGradient.count), \(outputGradient.count) values")
        input.withUnsafeBufferPointer { x in
            outputGradient.withUnsafeBufferPointer { dY in
                inputGradient.withUnsafeMutableBufferPointer { dX in
                    backward(at: index, input: x.baseAddress!, outputGradient: dY.baseAddress!, rows: rows, inputGradient: dX.baseAddress!)
                }
            }
        }
    }

    /// Sets every dA and dB to zero (before a new optimizer step's micro-batches).
    public func zeroGradients() {
        for i in layers.indices {
            layers[i].gradientA.withUnsafeMutableBufferPointer { $0.update(repeating: 0) }
            layers[i].gradientB.withUnsafeMutableBufferPointer { $0.update(repeating: 0) }
        }
    }

    /// A₀, B₀, A₁, B₁, … (PEFT's parameter order). Setting requires the same shapes.
    public var parameters: [[Float]] {
        get { layers.flatMap { [$0.a, $0.b] } }
        set {
            precondition(newValue.count == 2 * layers.count, "LoRA parameters: \(newValue.count) tensors for \(layers.count) layers")
            for i in layers.indices {
                precondition(newValue[2 * i].count == layers[i].a.count && newValue[2 * i + 1].count == layers[i].b.count,
                             "\(layers[i].module.name): new A/B have \(newValue[2 * i].count)/\(newValue[2 * i + 1].count) values")
                layers[i].a = newValue[2 * i]
                layers[i].b = newValue[2 * i + 1]
            }
        }
    }

    /// dA₀, dB₀, dA₁, dB₁, … in the order of ``parameters``.
    public var gradients: [[Float]] { layers.flatMap { [$0.gradientA, $0.gradientB] } }
}
