#ifndef NB_KERNELS_H
#define NB_KERNELS_H
#include <stddef.h>
#include <stdint.h>

/// 1 when this CPU has AVX2, FMA and F16C (the fast paths below), else 0.
int nb_cpu_has_avx2_fma_f16c(void);

/// Converts n floats to IEEE half precision (round to nearest even).
void nb_f32_to_f16(const float *src, uint16_t *dst, size_t n);

/// y[r] (+)= dot(W[r, 0..<k], x) for rows r in [row_begin, row_end), W row-major (rows, k)
/// in half precision, accumulation in single precision. accumulate != 0 adds to y.
void nb_gemv_f16(const uint16_t *w, const float *x, float *y, size_t k,
                 size_t row_begin, size_t row_end, int accumulate);

/// GELU (tanh form): y = ½x(1 + tanh(√(2/π)(x + 0.044715x³))), vectorized.
void nb_gelu_forward(const float *x, float *y, size_t n);
/// dx += dy · gelu′(x).
void nb_gelu_backward(const float *dy, const float *x, float *dx, size_t n);
/// y = silu(gate) · up (y may be gate).
void nb_swiglu_forward(const float *gate, const float *up, float *y, size_t n);
/// dgate += dy · up · σ(g)(1 + g(1 − σ(g)));  dup += dy · silu(g).
void nb_swiglu_backward(const float *dy, const float *gate, const float *up, float *dgate, float *dup, size_t n);
/// The scalar tanh and sigmoid the kernels above use (for tests).
float nb_tanh(float u);
float nb_sigmoid(float g);

/// The largest of n floats (−∞ for n = 0; NaN inputs may be skipped).
float nb_max(const float *z, size_t n);
/// out[i] = exp(z[i] − shift) for z[i] ≤ shift (out may be NULL); returns Σ out[i].
float nb_exp_shifted(const float *z, float shift, float *out, size_t n);

#endif
