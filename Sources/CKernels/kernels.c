// Small numeric kernels (half-precision conversion, activations, reductions, row
// quantization), each with an AVX2/FMA/F16C path chosen at run time and a portable fallback.
#include "nb_kernels.h"
#include <math.h>
#include <string.h>
#include <stdlib.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#if defined(__x86_64__)
#include <immintrin.h>
#endif

int nb_cpu_has_avx2_fma_f16c(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
    return 0;
#endif
}

static uint16_t f32_to_f16_scalar(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t exp = (x >> 23) & 0xffu;
    uint32_t mant = x & 0x7fffffu;
    if (exp == 0xff) return (uint16_t)(sign | 0x7c00u | (mant ? 0x200u : 0));  // inf / nan
    int e = (int)exp - 127 + 15;
    if (e >= 0x1f) return (uint16_t)(sign | 0x7c00u);                          // overflow → inf
    if (e <= 0) {                                                               // subnormal or zero
        if (e < -10) return (uint16_t)sign;
        mant |= 0x800000u;
        int shift = 14 - e;
        uint32_t half = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = sign | ((uint32_t)e << 10) | (mant >> 13);
    uint32_t rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (half & 1))) half++;              // may carry into exp: correct
    return (uint16_t)half;
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma,f16c")))
static size_t f32_to_f16_f16c(const float *src, uint16_t *dst, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    return i;
}
#endif

void nb_f32_to_f16(const float *src, uint16_t *dst, size_t n) {
    size_t i = 0;
#if defined(__x86_64__)
    if (nb_cpu_has_avx2_fma_f16c()) i = f32_to_f16_f16c(src, dst, n);
#endif
    for (; i < n; i++) dst[i] = f32_to_f16_scalar(src[i]);
}

// ---------------------------------------------------------------------------------------
// Activations: GELU (tanh form) and SwiGLU, forward and backward, over float arrays.
//
// exp and tanh are evaluated with a branch-free range reduction so the loops vectorize
// (8 floats per AVX2 instruction): for t ≤ 0, t = k·ln2 + r with k = round(t/ln2) and
// |r| ≤ ln2/2, expm1(r) is its Taylor polynomial to r⁷ (truncation < 3e-9 relative), and
// exp(t) = 2^k·(1 + expm1(r)). tanh|u| = −expm1(−2|u|) / (2 + expm1(−2|u|)), computed as
// 2^k·p + (2^k − 1) so small arguments keep full relative precision. Measured error:
// ≤ 3 ulp against libm (ActivationKernelTests). Inputs are clamped where the result is
// already 1 (tanh) or 0 (exp) in single precision, so no NaN or overflow appears for
// finite input; NaN input gives NaN.

// t = k·ln2 + r; returns 2^k and expm1(r) (t in [-87.3, 0]).
static inline float nb_reduce_exp(float t, float *two_k_out) {
    const float ln2_hi = 0.693145751953125f, ln2_lo = 1.428606765330187e-06f, log2e = 1.4426950408889634f;
    float k = __builtin_roundf(t * log2e);
    float r = (t - k * ln2_hi) - k * ln2_lo;
    float p = r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720 + r * (1.0f / 5040)))))));
    // k is in [-126, 0] for t in range; clamped before the conversion so that NaN (fmaxf
    // drops it) or an out-of-range t cannot make the float-to-int conversion undefined
    // (UBSan found NaN input here). r, and so the result, stays NaN for NaN input.
    float kc = __builtin_fmaxf(__builtin_fminf(k, 127.0f), -126.0f);
    union { uint32_t u; float f; } two_k = { .u = (uint32_t)((int32_t)kc + 127) << 23 };
    *two_k_out = two_k.f;
    return p;
}

static inline float nb_expm1_neg(float t) {  // expm1(t), relative precision kept near 0
    float two_k, p = nb_reduce_exp(t, &two_k);
    return two_k * p + (two_k - 1.0f);
}

static inline float nb_exp_neg(float t) {    // exp(t), relative precision kept near underflow
    float two_k, p = nb_reduce_exp(t, &two_k);
    return two_k * (1.0f + p);
}

static inline float nb_tanh_fast(float u) {
    float a = __builtin_fabsf(u);
    a = a > 9.0f ? 9.0f : a;  // tanh(9) rounds to 1 in single precision; NaN stays NaN
    float e = nb_expm1_neg(-2.0f * a);
    float th = -e / (2.0f + e);
    return __builtin_copysignf(th, u);
}

static inline float nb_sigmoid_fast(float g) {  // 1 / (1 + exp(−g)), exp of a non-positive argument only
    float a = __builtin_fabsf(g);
    float e = nb_exp_neg(-(a > 87.3f ? 87.3f : a));  // exp(−|g|); NaN stays NaN
    e = a > 87.3f ? 0.0f : e;                                  // below the normal range (2^-126)
    float s = 1.0f / (1.0f + e);        // σ(|g|)
    return g >= 0 ? s : e * s;          // σ(−|g|) = e / (1 + e), no cancellation
}

#define NB_GELU_K 0.7978845608028654f  /* sqrt(2/pi) */
#define NB_GELU_C 0.044715f

#define NB_DEFINE_ACTIVATIONS(SUFFIX, ATTR)                                                               \
ATTR static void gelu_forward_##SUFFIX(const float *x, float *y, size_t n) {                               \
    for (size_t i = 0; i < n; i++) {                                                                      \
        float v = x[i];                                                                                   \
        y[i] = 0.5f * v * (1.0f + nb_tanh_fast(NB_GELU_K * (v + NB_GELU_C * v * v * v)));                 \
    }                                                                                                     \
}                                                                                                         \
ATTR static void gelu_backward_##SUFFIX(const float *dy, const float *x, float *dx, size_t n) {            \
    for (size_t i = 0; i < n; i++) {                                                                      \
        float v = x[i];                                                                                   \
        float th = nb_tanh_fast(NB_GELU_K * (v + NB_GELU_C * v * v * v));                                 \
        float slope = 0.5f * (1.0f + th) + 0.5f * v * (1.0f - th * th) * NB_GELU_K * (1.0f + 3.0f * NB_GELU_C * v * v); \
        dx[i] += dy[i] * slope;                                                                           \
    }                                                                                                     \
}                                                                                                         \
ATTR static void swiglu_forward_##SUFFIX(const float *gate, const float *up, float *y, size_t n) {         \
    for (size_t i = 0; i < n; i++) {                                                                      \
        float g = gate[i];                                                                                \
        y[i] = g * nb_sigmoid_fast(g) * up[i];                                                            \
    }                                                                                                     \
}                                                                                                         \
ATTR static void swiglu_backward_##SUFFIX(const float *dy, const float *gate, const float *up,            \
                                          float *dgate, float *dup, size_t n) {                           \
    for (size_t i = 0; i < n; i++) {                                                                      \
        float g = gate[i], s = nb_sigmoid_fast(g);                                                        \
        dgate[i] += dy[i] * up[i] * s * (1.0f + g * (1.0f - s));                                          \
        dup[i] += dy[i] * g * s;                                                                          \
    }                                                                                                     \
}

NB_DEFINE_ACTIVATIONS(generic, )
NB_DEFINE_ACTIVATIONS(avx2, __attribute__((target("avx2,fma"))))

static int nb_fast_activations(void) {
    static int fast = -1;
    if (fast < 0) fast = nb_cpu_has_avx2_fma_f16c();
    return fast;
}

void nb_gelu_forward(const float *x, float *y, size_t n) {
    if (nb_fast_activations()) gelu_forward_avx2(x, y, n); else gelu_forward_generic(x, y, n);
}
void nb_gelu_backward(const float *dy, const float *x, float *dx, size_t n) {
    if (nb_fast_activations()) gelu_backward_avx2(dy, x, dx, n); else gelu_backward_generic(dy, x, dx, n);
}
void nb_swiglu_forward(const float *gate, const float *up, float *y, size_t n) {
    if (nb_fast_activations()) swiglu_forward_avx2(gate, up, y, n); else swiglu_forward_generic(gate, up, y, n);
}
void nb_swiglu_backward(const float *dy, const float *gate, const float *up, float *dgate, float *dup, size_t n) {
    if (nb_fast_activations()) swiglu_backward_avx2(dy, gate, up, dgate, dup, n); else swiglu_backward_generic(dy, gate, up, dgate, dup, n);
}
float nb_tanh(float u) { return nb_tanh_fast(u); }
float nb_sigmoid(float g) { return nb_sigmoid_fast(g); }

// ---------------------------------------------------------------------------------------
// Softmax pieces for the cross-entropy over a vocabulary row.

#define NB_DEFINE_SOFTMAX(SUFFIX, ATTR)                                                                   \
ATTR static float max_##SUFFIX(const float *z, size_t n) {                                               \
    float m[8] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY}; \
    size_t i = 0;                                                                                         \
    for (; i + 8 <= n; i += 8)                                                                            \
        for (int l = 0; l < 8; l++) m[l] = z[i + l] > m[l] ? z[i + l] : m[l];                             \
    for (; i < n; i++) m[0] = z[i] > m[0] ? z[i] : m[0];                                                  \
    float r = m[0];                                                                                       \
    for (int l = 1; l < 8; l++) r = m[l] > r ? m[l] : r;                                                  \
    return r;                                                                                             \
}                                                                                                         \
ATTR static float exp_shifted_##SUFFIX(const float *z, float shift, float *out, size_t n) {              \
    float s[8] = {0};                                                                                     \
    size_t i = 0;                                                                                         \
    for (; i + 8 <= n; i += 8)                                                                            \
        for (int l = 0; l < 8; l++) {                                                                     \
            float t = z[i + l] - shift;                                                                   \
            float e = nb_exp_neg(t < -87.3f ? -87.3f : t);                                                \
            e = t < -87.3f ? 0.0f : e;                                                                    \
            if (out) out[i + l] = e;                                                                      \
            s[l] += e;                                                                                    \
        }                                                                                                 \
    for (; i < n; i++) {                                                                                  \
        float t = z[i] - shift;                                                                           \
        float e = t < -87.3f ? 0.0f : nb_exp_neg(t);                                                      \
        if (out) out[i] = e;                                                                              \
        s[0] += e;                                                                                        \
    }                                                                                                     \
    float r = 0;                                                                                          \
    for (int l = 0; l < 8; l++) r += s[l];                                                                \
    return r;                                                                                             \
}

NB_DEFINE_SOFTMAX(generic, )
NB_DEFINE_SOFTMAX(avx2, __attribute__((target("avx2,fma"))))

// d[j] ← p[j]·(d[j] − Σ_i p[i]·d[i]): the softmax's backward on one row (eight partial sums).
#define NB_DEFINE_SOFTMAX_BACKWARD(SUFFIX, ATTR)                                                          \
ATTR static void softmax_backward_##SUFFIX(const float *p, float *d, size_t n) {                         \
    float s[8] = {0};                                                                                     \
    size_t i = 0;                                                                                         \
    for (; i + 8 <= n; i += 8)                                                                            \
        for (int l = 0; l < 8; l++) s[l] += p[i + l] * d[i + l];                                          \
    for (; i < n; i++) s[0] += p[i] * d[i];                                                               \
    float dot = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));                        \
    for (i = 0; i < n; i++) d[i] = p[i] * (d[i] - dot);                                                   \
}

NB_DEFINE_SOFTMAX_BACKWARD(generic, )
NB_DEFINE_SOFTMAX_BACKWARD(avx2, __attribute__((target("avx2,fma"))))

void nb_softmax_backward(const float *p, float *d, size_t n) {
    if (nb_fast_activations()) softmax_backward_avx2(p, d, n); else softmax_backward_generic(p, d, n);
}

float nb_max(const float *z, size_t n) { return nb_fast_activations() ? max_avx2(z, n) : max_generic(z, n); }
float nb_exp_shifted(const float *z, float shift, float *out, size_t n) {
    return nb_fast_activations() ? exp_shifted_avx2(z, shift, out, n) : exp_shifted_generic(z, shift, out, n);
}

// ---------------------------------------------------------------------------------------
// Quantization of activation rows (the `disable` backend's per-call work).

void nb_row_min_max(const float *x, size_t rows, size_t cols, float *mins, float *maxs) {
    for (size_t r = 0; r < rows; r++) {
        const float *row = x + r * cols;
        float lo = INFINITY, hi = -INFINITY;
        for (size_t c = 0; c < cols; c++) {
            lo = row[c] < lo ? row[c] : lo;
            hi = row[c] > hi ? row[c] : hi;
        }
        mins[r] = lo;
        maxs[r] = hi;
    }
}

// round(v) (half away from zero) as trunc plus a carry: v − trunc(v) is exact, so the result
// is round's to the bit, and the loop vectorizes (x86 has no round-half-away instruction).
// The row sums add integers below 2^53, exact in any order, so they use eight partial sums.
#define NB_DEFINE_QUANTIZE(SUFFIX, ATTR)                                                                  \
ATTR static void quantize_rows_##SUFFIX(const float *x, size_t rows, size_t cols, const double *scale,   \
                                        const double *zero_point, double q_min, double q_max, int per_row, \
                                        float *q, double *row_sums) {                                     \
    for (size_t r = 0; r < rows; r++) {                                                                   \
        double s = per_row ? scale[r] : scale[0], zp = per_row ? zero_point[r] : zero_point[0];           \
        const float *row = x + r * cols;                                                                  \
        float *out = q + r * cols;                                                                        \
        double sums[8] = {0};                                                                             \
        size_t c = 0;                                                                                     \
        for (; c + 8 <= cols; c += 8)                                                                     \
            for (int l = 0; l < 8; l++) {                                                                 \
                double v = (double)row[c + l] / s, t = trunc(v);                                          \
                t += fabs(v - t) >= 0.5 ? copysign(1.0, v) : 0.0;                                         \
                t += zp;                                                                                  \
                t = t < q_min ? q_min : (t > q_max ? q_max : t);                                          \
                out[c + l] = (float)t;                                                                    \
                sums[l] += t;                                                                             \
            }                                                                                             \
        for (; c < cols; c++) {                                                                           \
            double v = (double)row[c] / s, t = trunc(v);                                                  \
            t += fabs(v - t) >= 0.5 ? copysign(1.0, v) : 0.0;                                             \
            t += zp;                                                                                      \
            t = t < q_min ? q_min : (t > q_max ? q_max : t);                                              \
            out[c] = (float)t;                                                                            \
            sums[0] += t;                                                                                 \
        }                                                                                                 \
        row_sums[r] = ((sums[0] + sums[1]) + (sums[2] + sums[3])) + ((sums[4] + sums[5]) + (sums[6] + sums[7])); \
    }                                                                                                     \
}

NB_DEFINE_QUANTIZE(generic, )
NB_DEFINE_QUANTIZE(avx2, __attribute__((target("avx2,fma"))))

void nb_quantize_rows(const float *x, size_t rows, size_t cols, const double *scale, const double *zero_point,
                      double q_min, double q_max, int per_row, float *q, double *row_sums) {
    if (nb_fast_activations()) quantize_rows_avx2(x, rows, cols, scale, zero_point, q_min, q_max, per_row, q, row_sums);
    else quantize_rows_generic(x, rows, cols, scale, zero_point, q_min, q_max, per_row, q, row_sums);
}

int nb_release_free_memory(void) {
#if defined(__GLIBC__)
    return malloc_trim(0);
#else
    return 0;
#endif
}

void nb_unpack_i8(const int8_t *src, size_t rows, size_t columns, size_t from, size_t count, float base, float *out) {
    for (size_t r = 0; r < rows; r++) {
        const int8_t *s = src + r * columns + from;
        float *o = out + r * count;
        for (size_t c = 0; c < count; c++) o[c] = base + (float)s[c];
    }
}

void nb_unpack_i16(const int16_t *src, size_t rows, size_t columns, size_t from, size_t count, float base, float *out) {
    for (size_t r = 0; r < rows; r++) {
        const int16_t *s = src + r * columns + from;
        float *o = out + r * count;
        for (size_t c = 0; c < count; c++) o[c] = base + (float)s[c];
    }
}

void nb_add_float_to_double(const float *x, size_t n, double *acc) {
    for (size_t i = 0; i < n; i++) acc[i] += (double)x[i];
}

int nb_int8_rows_product(const float *x, size_t rows, size_t columns, const int8_t *w, float base, size_t outputs, double *acc, size_t acc_stride) {
    int32_t *xi = (int32_t *)malloc(rows * columns * sizeof(int32_t));
    int64_t *xsum = (int64_t *)malloc(rows * sizeof(int64_t));
    if (!xi || !xsum) { free(xi); free(xsum); return -1; }
    for (size_t r = 0; r < rows; r++) {
        int64_t sum = 0;
        for (size_t c = 0; c < columns; c++) { xi[r * columns + c] = (int32_t)x[r * columns + c]; sum += xi[r * columns + c]; }
        xsum[r] = sum;
    }
    const int64_t b = (int64_t)base;
    for (size_t o = 0; o < outputs; o++) {
        const int8_t *wo = w + o * columns;
        for (size_t r = 0; r < rows; r++) {
            const int32_t *xr = xi + r * columns;
            int64_t total = 0;
            for (size_t c0 = 0; c0 < columns; c0 += 128) {
                size_t end = c0 + 128 < columns ? c0 + 128 : columns;
                int32_t part = 0;  // |x·w| < 2^16 · 2^7, 128 of them < 2^30
                for (size_t c = c0; c < end; c++) part += xr[c] * (int32_t)wo[c];
                total += part;
            }
            acc[r * acc_stride + o] = (double)(total + b * xsum[r]);
        }
    }
    free(xi);
    free(xsum);
    return 0;
}

// ---------------------------------------------------------------------------------------
// LoRA dropout masks. Element i of a mask drawn at generator state s is dropped when the
// SplitMix64 output at state s + (i+1)·γ, shifted right by 11 (a uniform 53-bit integer u),
// is below `threshold` = ceil(p·2^53): the very draws of SeededGenerator.nextUnit() < p, one
// per element, without the sequential dependence (SplitMix64 is a function of its counter).

static inline uint64_t nb_splitmix_output(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

#define NB_DEFINE_DROPOUT(name, attr)                                                           \
    attr static void dropout_kept_##name(uint64_t state, uint64_t threshold, uint8_t *kept, size_t n) { \
        for (size_t i = 0; i < n; i++) {                                                        \
            uint64_t u = nb_splitmix_output(state + (uint64_t)(i + 1) * 0x9E3779B97F4A7C15ULL) >> 11; \
            kept[i] = u >= threshold;                                                           \
        }                                                                                       \
    }

NB_DEFINE_DROPOUT(generic, )
#if defined(__x86_64__)
NB_DEFINE_DROPOUT(avx512, __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl"))))
NB_DEFINE_DROPOUT(avx2, __attribute__((target("avx2"))))
#endif

void nb_dropout_kept(uint64_t state, uint64_t threshold, uint8_t *kept, size_t n) {
#if defined(__x86_64__)
    static int level = -1;
    if (level < 0) {
        __builtin_cpu_init();
        level = (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw")
                 && __builtin_cpu_supports("avx512vl")) ? 2 : __builtin_cpu_supports("avx2") ? 1 : 0;
    }
    if (level == 2) return dropout_kept_avx512(state, threshold, kept, n);
    if (level == 1) return dropout_kept_avx2(state, threshold, kept, n);
#endif
    dropout_kept_generic(state, threshold, kept, n);
}

void nb_mask_multiply(const float *x, const uint8_t *kept, float keep, size_t n, float *out) {
    for (size_t i = 0; i < n; i++) out[i] = x[i] * (kept[i] ? keep : 0.0f);
}

void nb_mask_accumulate(const float *src, const uint8_t *kept, float keep, size_t n, float *dst) {
    for (size_t i = 0; i < n; i++) dst[i] += src[i] * (kept[i] ? keep : 0.0f);
}
