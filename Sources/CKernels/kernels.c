// Half-precision matrix-vector products for decoding, with an AVX2/FMA/F16C path chosen
// at run time and a portable fallback.
#include "nb_kernels.h"
#include <string.h>
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

static float f16_to_f32_scalar(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, x;
    if (exp == 0) {
        if (mant == 0) x = sign;
        else {
            exp = 127 - 15 + 1;
            while (!(mant & 0x400u)) { mant <<= 1; exp--; }
            x = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
        }
    } else if (exp == 0x1f) x = sign | 0x7f800000u | (mant << 13);
    else x = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    float f;
    memcpy(&f, &x, 4);
    return f;
}

void nb_f32_to_f16(const float *src, uint16_t *dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = f32_to_f16_scalar(src[i]);
}

static void gemv_f16_scalar(const uint16_t *w, const float *x, float *y, size_t k,
                            size_t r0, size_t r1, int accumulate) {
    for (size_t r = r0; r < r1; r++) {
        const uint16_t *row = w + r * k;
        float s = 0;
        for (size_t i = 0; i < k; i++) s += f16_to_f32_scalar(row[i]) * x[i];
        y[r] = accumulate ? y[r] + s : s;
    }
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma,f16c")))
static void gemv_f16_avx2(const uint16_t *w, const float *x, float *y, size_t k,
                          size_t r0, size_t r1, int accumulate) {
    size_t r = r0;
    // Four rows at a time share each load of x.
    for (; r + 4 <= r1; r += 4) {
        const uint16_t *a = w + r * k, *b = a + k, *c = b + k, *d = c + k;
        __m256 sa = _mm256_setzero_ps(), sb = sa, sc = sa, sd = sa;
        size_t i = 0;
        for (; i + 8 <= k; i += 8) {
            __m256 xv = _mm256_loadu_ps(x + i);
            sa = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i))), xv, sa);
            sb = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + i))), xv, sb);
            sc = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(c + i))), xv, sc);
            sd = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(d + i))), xv, sd);
        }
        float out[4][8];
        _mm256_storeu_ps(out[0], sa); _mm256_storeu_ps(out[1], sb);
        _mm256_storeu_ps(out[2], sc); _mm256_storeu_ps(out[3], sd);
        for (int j = 0; j < 4; j++) {
            float s = 0;
            for (int l = 0; l < 8; l++) s += out[j][l];
            const uint16_t *row = w + (r + j) * k;
            for (size_t t = i; t < k; t++) s += f16_to_f32_scalar(row[t]) * x[t];
            y[r + j] = accumulate ? y[r + j] + s : s;
        }
    }
    if (r < r1) gemv_f16_scalar(w, x, y, k, r, r1, accumulate);
}
#endif

void nb_gemv_f16(const uint16_t *w, const float *x, float *y, size_t k,
                 size_t row_begin, size_t row_end, int accumulate) {
#if defined(__x86_64__)
    static int fast = -1;
    if (fast < 0) fast = nb_cpu_has_avx2_fma_f16c();
    if (fast) { gemv_f16_avx2(w, x, y, k, row_begin, row_end, accumulate); return; }
#endif
    gemv_f16_scalar(w, x, y, k, row_begin, row_end, accumulate);
}
