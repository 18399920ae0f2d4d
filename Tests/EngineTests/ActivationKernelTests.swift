import CKernels
import Foundation
import Testing
@testable import Engine

/// The vectorized GELU and SwiGLU kernels (CKernels) against the definitions evaluated in
/// double precision with libm: the error bound is mathematics, not a stored answer.
@Suite struct ActivationKernelTests {
    /// Arguments from −30 to 30 on a fine grid, tiny values, the clamp points and ±0.
    static let arguments: [Float] = {
        var xs: [Float] = stride(from: -30.0, through: 30.0, by: 0.0137).map { Float($0) }
        xs += [0, -0.0, 1e-30, -1e-30, 1e-7, -1e-7, 1e-3, -1e-3, 8.999, 9, 9.001, 86.9, 87, 87.1, -87.1, 100, -100]
        return xs
    }()

    /// The error in units of the last place of the exact value; results below the normal
    /// range (|exact| < 2⁻¹²⁶) count as exact when within 2⁻¹²⁶.
    static func ulps(_ a: Float, _ exact: Double) -> Double {
        let error = abs(Double(a) - exact)
        if abs(exact) < Double(Float.leastNormalMagnitude) { return error <= Double(Float.leastNormalMagnitude) ? 0 : .infinity }
        return error / Double(Float(exact).ulp)
    }

    @Test func tanhAndSigmoidWithinThreeUlps() {
        var worstTanh = 0.0, worstSigmoid = 0.0
        for x in Self.arguments {
            worstTanh = max(worstTanh, Self.ulps(nb_tanh(x), Foundation.tanh(Double(x))))
            let us = Self.ulps(nb_sigmoid(x), 1 / (1 + Foundation.exp(-Double(x))))
            worstSigmoid = max(worstSigmoid, us)
        }
        #expect(worstTanh <= 3, "tanh: \(worstTanh) ulp")
        #expect(worstSigmoid <= 3, "sigmoid: \(worstSigmoid) ulp")
        #expect(nb_tanh(.nan).isNaN && nb_sigmoid(.nan).isNaN)
        #expect(nb_tanh(.infinity) == 1 && nb_tanh(-.infinity) == -1 && nb_sigmoid(-.infinity) == 0 && nb_sigmoid(.infinity) == 1)
    }

    @Test func geluAndSwiGLUMatchTheirDefinitions() {
        let x = Self.arguments.filter { abs($0) < 20 }
        let n = x.count
        let k = 0.7978845608028654, c = 0.044715
        var y = [Float](repeating: 0, count: n)
        nb_gelu_forward(x, &y, n)
        var dx = [Float](repeating: 0.5, count: n)  // backward accumulates
        let dy = (0..<n).map { Float(1 + ($0 % 7)) / 4 }
        nb_gelu_backward(dy, x, &dx, n)
        let up = (0..<n).map { Float(($0 % 11) - 5) / 3 }
        var s = [Float](repeating: 0, count: n), dg = [Float](repeating: 0, count: n), du = [Float](repeating: 0, count: n)
        nb_swiglu_forward(x, up, &s, n)
        nb_swiglu_backward(dy, x, up, &dg, &du, n)
        for i in 0..<n {
            let v = Double(x[i]), th = Foundation.tanh(k * (v + c * v * v * v))
            let gelu = v / 2 * (1 + th)
            let slope = (1 + th) / 2 + v / 2 * (1 - th * th) * k * (1 + 3 * c * v * v)
            let sg = 1 / (1 + Foundation.exp(-v)), u = Double(up[i]), d = Double(dy[i])
            // Float inputs to a float formula: a few ulps of the largest term.
            #expect(abs(Double(y[i]) - gelu) <= 4e-7 * max(abs(v), 1e-30) + 1e-37, "gelu(\(v)) = \(y[i]), exact \(gelu)")
            #expect(abs(Double(dx[i]) - (0.5 + d * slope)) <= 2e-6 * (0.5 + abs(d) * (1 + abs(v))), "gelu′(\(v))")
            #expect(abs(Double(s[i]) - v * sg * u) <= 4e-7 * abs(v * u) + 1e-37, "swiglu(\(v), \(u))")
            #expect(abs(Double(dg[i]) - d * u * sg * (1 + v * (1 - sg))) <= 2e-6 * abs(d * u) * (1 + abs(v)) + 1e-30, "dgate(\(v))")
            #expect(abs(Double(du[i]) - d * v * sg) <= 4e-7 * abs(d * v) + 1e-37, "dup(\(v))")
        }
    }
}
