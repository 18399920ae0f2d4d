/// One linear layer of a model as an adapter sees it: y (N, out) = x (N, in) · Wᵀ (+ b).
public struct LinearLayer: Hashable, Sendable {
    /// The Hugging Face module name, e.g. `model.layers.3.self_attn.q_proj` (LLaMA) or
    /// `transformer.h.3.attn.c_attn` (GPT-2): PEFT's `target_modules` patterns match it and
    /// its adapter keys are `base_model.model.<name>.lora_A.weight`.
    public let name: String
    public let inFeatures: Int
    public let outFeatures: Int

    public init(name: String, inFeatures: Int, outFeatures: Int) {
        (self.name, self.inFeatures, self.outFeatures) = (name, inFeatures, outFeatures)
    }
}

/// Callbacks on the linear layers of a training pass, registered by layer name: what a
/// LoRA adapter needs. For y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ with A (r, in), B (out, r):
///
///     forward:  y += s·(x·Aᵀ)·Bᵀ
///     backward: dB += s·dYᵀ·(x·Aᵀ),  dA += s·(dY·B)ᵀ·x,  dX += s·(dY·B)·A
///
/// The frozen part (x·Wᵀ, dX += dY·W) is done by the training pass before the hook runs.
/// Buffers hold N = B·T rows (N = x.count / layer.inFeatures) and are valid only during the call.
public struct LinearHooks<Real: TrainingScalar> {
    /// Runs after y = x·Wᵀ + b; may add to y. x: (N, in), y: (N, out).
    public typealias Forward = (_ layer: LinearLayer, _ x: UnsafeBufferPointer<Real>, _ y: UnsafeMutableBufferPointer<Real>) -> Void
    /// Runs in the backward after dX = dY·W; may add to dX. x: (N, in), the input the forward
    /// saw; dY: (N, out), dL/dy; dX: (N, in), dL/dx of this layer alone.
    public typealias Backward = (_ layer: LinearLayer, _ x: UnsafeBufferPointer<Real>, _ dY: UnsafeBufferPointer<Real>,
                                 _ dX: UnsafeMutableBufferPointer<Real>) -> Void

    public var forward: [String: Forward] = [:]
    public var backward: [String: Backward] = [:]
    /// Where the frozen products run (Float passes only); nil or a layer it declines: float, here.
    public var backend: LinearBackend?
    /// Gradient (activation) checkpointing: the forward keeps only each block's input, and
    /// the backward recomputes the block's activations just before its own backward.
    public var gradientCheckpointing = false
    /// The hooks' random state (a LoRA adapter's dropout generator), so that a recomputed
    /// block draws the very masks its first forward drew.
    public var randomState: (save: () -> SeededGenerator, restore: (SeededGenerator) -> Void)?

    public init() {}

    /// Registers hooks for the layer `name` (replacing earlier ones).
    public mutating func register(_ name: String, forward: Forward? = nil, backward: Backward? = nil) {
        if let forward { self.forward[name] = forward }
        if let backward { self.backward[name] = backward }
    }
}

/// dL/dx and dL/dy of one linear layer over a batch: input (N, in), output (N, out).
public struct LinearGradient<Real: TrainingScalar> {
    public var input: [Real]
    public var output: [Real]
}

/// What a model's training backward returns.
public struct TrainingGradients<Real: TrainingScalar> {
    /// Per linear layer (by ``LinearLayer/name``), when kept: dL/d(input) including the
    /// hook's share, and dL/d(output).
    public var linear: [String: LinearGradient<Real>] = [:]
    /// dL/d(embedding output): (B·T, C), the gradient entering the first block's residual stream.
    public var embeddingOutput: [Real] = []
    /// dL/dE through the input lookup only (no lm_head share): (V, C); when asked.
    public var tokenEmbedding: [Real]?
    /// GPT-2's dL/dP: (positions, C); when asked.
    public var positionEmbedding: [Real]?
}

/// How a stored weight multiplies: nn.Linear's W (out, in) or GPT-2's Conv1D W (in, out).
enum WeightLayout { case outIn, inOut }

extension LinearHooks {
    /// y = x·Wᵀ (+ b) for either layout, then the layer's forward hook.
    func linearForward(_ layer: LinearLayer, _ x: [Real], weight: [Real], bias: [Real]?, layout: WeightLayout, _ y: inout [Real]) {
        let N = x.count / layer.inFeatures, (k, n) = (layer.inFeatures, layer.outFeatures)
        // An empty weight: a deployment's client, whose remote layers only a backend runs.
        precondition(x.count == N * k && y.count == N * n && (weight.count == k * n || weight.isEmpty),
                     "\(layer.name): x \(x.count), y \(y.count), W \(weight.count) do not fit (N, \(k)) → (N, \(n))")
        func run(_ b: UnsafePointer<Real>?) {
            precondition(!weight.isEmpty, "\(layer.name): the weights of this layer are on the server; only mode: remote can run it")
            switch layout {
            case .outIn: Layers.linearForward(x, weight: weight, bias: b, &y, rows: N, inFeatures: k, outFeatures: n)
            case .inOut: Layers.conv1DForward(x, weight: weight, bias: b, &y, rows: N, inFeatures: k, outFeatures: n)
            }
        }
        if Real.self == Float.self, let backend,
           x.withUnsafeBufferPointer({ xb in y.withUnsafeMutableBufferPointer { backend.forward(layer, x: xb.floats, y: $0.floats) } }) {
            if let bias { for r in 0..<N { for j in 0..<n { y[r * n + j] += bias[j] } } }
        } else if let bias { bias.withUnsafeBufferPointer { run($0.baseAddress!) } } else { run(nil) }
        if let hook = forward[layer.name] {
            x.withUnsafeBufferPointer { xb in y.withUnsafeMutableBufferPointer { hook(layer, xb, $0) } }
        }
    }

    /// dX_layer = dY·W, the layer's backward hook, then dInput += dX_layer; records
    /// (dX_layer, dY) in `kept` when it is not nil. No dW: the base weights are frozen.
    func linearBackward(_ layer: LinearLayer, x: [Real], dY: [Real], weight: [Real], layout: WeightLayout,
                        dInput: inout [Real], kept: inout [String: LinearGradient<Real>]?) {
        let N = x.count / layer.inFeatures, (k, n) = (layer.inFeatures, layer.outFeatures)
        precondition(dY.count == N * n && dInput.count == N * k, "\(layer.name): dY \(dY.count), dX \(dInput.count) for N = \(N)")
        var dX = [Real](repeating: 0, count: N * k)
        let remote = Real.self == Float.self && backend != nil
            && dY.withUnsafeBufferPointer { gb in dX.withUnsafeMutableBufferPointer { backend!.backward(layer, dY: gb.floats, dX: $0.floats) } }
        if !remote {
            precondition(!weight.isEmpty, "\(layer.name): the weights of this layer are on the server; only mode: remote can run it")
            switch layout {
            case .outIn: Layers.linearBackward(dY, x: nil, weight: weight, dX: &dX, rows: N, inFeatures: k, outFeatures: n)
            case .inOut: Layers.conv1DBackward(dY, x: nil, weight: weight, dX: &dX, rows: N, inFeatures: k, outFeatures: n)
            }
        }
        if let hook = backward[layer.name] {
            x.withUnsafeBufferPointer { xb in
                dY.withUnsafeBufferPointer { dyb in dX.withUnsafeMutableBufferPointer { hook(layer, xb, dyb, $0) } }
            }
        }
        Layers.add(&dInput, dX, count: N * k)
        kept?[layer.name] = LinearGradient(input: dX, output: dY)
    }
}

// The backend runs Float passes only; these view a buffer of `Real` (checked to be Float) as Float.
private extension UnsafeBufferPointer where Element: TrainingScalar {
    var floats: UnsafeBufferPointer<Float> {
        UnsafeBufferPointer<Float>(start: baseAddress.map { UnsafeRawPointer($0).assumingMemoryBound(to: Float.self) }, count: count)
    }
}

private extension UnsafeMutableBufferPointer where Element: TrainingScalar {
    var floats: UnsafeMutableBufferPointer<Float> {
        UnsafeMutableBufferPointer<Float>(start: baseAddress.map { UnsafeMutableRawPointer($0).assumingMemoryBound(to: Float.self) }, count: count)
    }
}
