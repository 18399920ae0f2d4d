import Foundation

/// Gradient-norm clipping over all trainable tensors together, as
/// `torch.nn.utils.clip_grad_norm_(params, max_norm)` (L2 norm, `error_if_nonfinite=False`):
///
///     N = ‖(‖g₁‖₂, ‖g₂‖₂, …)‖₂ = √(Σ_i Σ_j g_ij²)
///     c = min(max_norm / (N + 1e-6), 1)        in Float32
///     g ← c·g                                   (every tensor; c = 1 leaves them unchanged)
///
/// The sum of squares is accumulated in Double, so N may differ from torch's Float32 value
/// in the last bit.
public enum GradientClipping {
    /// The global L2 norm of all tensors.
    public static func globalNorm(_ tensors: [[Float]]) -> Double {
        var sum = 0.0
        for t in tensors { for x in t { sum += Double(x) * Double(x) } }
        return sum.squareRoot()
    }

    /// The factor c that clipping multiplies the gradients by.
    public static func coefficient(norm: Double, maxNorm: Double) -> Float {
        min(Float(maxNorm) / (Float(norm) + 1e-6), 1)
    }

    /// Clips `gradients` in place; returns the norm before clipping (what torch returns and
    /// trainers log as `grad_norm`).
    @discardableResult
    public static func clip(_ gradients: inout [[Float]], maxNorm: Double) -> Double {
        let norm = globalNorm(gradients)
        let c = coefficient(norm: norm, maxNorm: maxNorm)
        if c != 1 { for i in gradients.indices { scale(&gradients[i], by: c) } }
        return norm
    }

    static func scale(_ values: inout [Float], by c: Float) {
        values.withUnsafeMutableBufferPointer { for j in $0.indices { $0[j] *= c } }
    }
}

extension LoRAAdapter {
    /// The global L2 norm of every dA and dB.
    public var gradientNorm: Double { GradientClipping.globalNorm(gradients) }

    /// Clips every dA and dB together to `maxNorm` (see ``GradientClipping``); returns the
    /// norm before clipping.
    @discardableResult
    public func clipGradientNorm(maxNorm: Double) -> Double {
        let norm = gradientNorm
        let c = GradientClipping.coefficient(norm: norm, maxNorm: maxNorm)
        if c != 1 {
            for i in layers.indices {
                GradientClipping.scale(&layers[i].gradientA, by: c)
                GradientClipping.scale(&layers[i].gradientB, by: c)
            }
        }
        return norm
    }
}
