// Kernels of the token-packed GLWE scheme; see include/nb_fhe_kernels.h.
#include "nb_fhe_kernels.h"

#include <fftw3.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif
#if defined(__linux__)
#include <sys/random.h>
#endif

long nb_fhe_os_random(void *buffer, size_t count) {
#if defined(__linux__)
    return (long)getrandom(buffer, count, 0);
#else
    (void)buffer; (void)count;
    return -1;
#endif
}

int nb_fhe_has_avx2(void) {
#if defined(__x86_64__)
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx2") ? 1 : 0;
    }
    return cached;
#else
    return 0;
#endif
}

// MARK: - Limb decomposition and the integer GEMM

static inline uint64_t round_top(uint64_t v, unsigned drop) {
    return drop == 0 ? v : (v + (1ULL << (drop - 1))) >> drop;
}

void nb_fhe_pack_limbs(const uint64_t *values, size_t rows, size_t columns, size_t limbs, int16_t *packed) {
    const size_t pairs = (rows + 1) / 2;
    const unsigned drop = (unsigned)(64 - 16 * limbs);
    for (size_t p = 0; p < pairs; p++) {
        for (size_t e = 0; e < 2; e++) {
            const size_t row = 2 * p + e;
            for (size_t c = 0; c < columns; c++) {
                uint64_t x = row < rows ? round_top(values[row * columns + c], drop) : 0;
                for (size_t t = 0; t < limbs; t++) {
                    const int16_t d = (int16_t)(uint16_t)(x & 0xFFFF);
                    x = (x - (uint64_t)(int64_t)d) >> 16;
                    packed[((t * pairs + p) * columns + c) * 2 + e] = d;
                }
            }
        }
    }
}

enum { MR = 6, NR = 16, PAIR_CHUNK = 128, COLUMN_BLOCK = 256 };

static void micro_scalar(const int16_t *w, size_t kp, size_t rows, const int16_t *l, size_t columns, size_t pairs,
                         size_t cols, uint64_t *out, unsigned shift) {
    for (size_t r = 0; r < rows; r++) {
        for (size_t j = 0; j < cols; j++) {
            int64_t s = 0;
            for (size_t p = 0; p < pairs; p++) {
                const int16_t *d = l + (p * columns + j) * 2;
                s += (int64_t)w[r * kp + 2 * p] * d[0] + (int64_t)w[r * kp + 2 * p + 1] * d[1];
            }
            out[r * columns + j] += (uint64_t)s << shift;
        }
    }
}

#if defined(__x86_64__)
__attribute__((target("avx2")))
static inline void flush_avx2(__m256i v, uint64_t *out, __m128i count) {
    __m256i lo = _mm256_sll_epi64(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(v)), count);
    __m256i hi = _mm256_sll_epi64(_mm256_cvtepi32_epi64(_mm256_extracti128_si256(v, 1)), count);
    _mm256_storeu_si256((__m256i *)out, _mm256_add_epi64(_mm256_loadu_si256((const __m256i *)out), lo));
    _mm256_storeu_si256((__m256i *)(out + 4), _mm256_add_epi64(_mm256_loadu_si256((const __m256i *)(out + 4)), hi));
}

// A 6 x 16 tile: 12 accumulators of 8 int32 sums, one vpmaddwd per (row, 8 columns, row pair).
__attribute__((target("avx2")))
static void micro_avx2(const int16_t *w, size_t kp, const int16_t *l, size_t columns, size_t pairs, uint64_t *out,
                       unsigned shift) {
    __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256i c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    for (size_t p = 0; p < pairs; p++) {
        const int16_t *lp = l + p * columns * 2;
        const __m256i b0 = _mm256_loadu_si256((const __m256i *)lp);
        const __m256i b1 = _mm256_loadu_si256((const __m256i *)(lp + 16));
#define NB_ROW(r)                                                                  \
        {                                                                          \
            int32_t s;                                                             \
            memcpy(&s, w + (r) * kp + 2 * p, sizeof s);                            \
            const __m256i a = _mm256_set1_epi32(s);                                \
            c##r##0 = _mm256_add_epi32(c##r##0, _mm256_madd_epi16(a, b0));         \
            c##r##1 = _mm256_add_epi32(c##r##1, _mm256_madd_epi16(a, b1));         \
        }
        NB_ROW(0) NB_ROW(1) NB_ROW(2) NB_ROW(3) NB_ROW(4) NB_ROW(5)
#undef NB_ROW
    }
    const __m128i count = _mm_cvtsi32_si128((int)shift);
    flush_avx2(c00, out, count); flush_avx2(c01, out + 8, count);
    flush_avx2(c10, out + columns, count); flush_avx2(c11, out + columns + 8, count);
    flush_avx2(c20, out + 2 * columns, count); flush_avx2(c21, out + 2 * columns + 8, count);
    flush_avx2(c30, out + 3 * columns, count); flush_avx2(c31, out + 3 * columns + 8, count);
    flush_avx2(c40, out + 4 * columns, count); flush_avx2(c41, out + 4 * columns + 8, count);
    flush_avx2(c50, out + 5 * columns, count); flush_avx2(c51, out + 5 * columns + 8, count);
}
#endif

void nb_fhe_limb_gemm(const int16_t *w, size_t k_padded, const int16_t *packed, size_t columns, size_t limbs,
                      uint64_t *out, size_t o_begin, size_t o_end) {
    const size_t pairs = k_padded / 2;
    const int avx = nb_fhe_has_avx2();
    for (size_t t = 0; t < limbs; t++) {
        const unsigned shift = (unsigned)(64 - 16 * limbs + 16 * t);
        const int16_t *limb = packed + t * pairs * columns * 2;
        for (size_t p0 = 0; p0 < pairs; p0 += PAIR_CHUNK) {
            const size_t pc = pairs - p0 < PAIR_CHUNK ? pairs - p0 : PAIR_CHUNK;
            for (size_t c0 = 0; c0 < columns; c0 += COLUMN_BLOCK) {
                const size_t cb = columns - c0 < COLUMN_BLOCK ? columns - c0 : COLUMN_BLOCK;
                for (size_t o = o_begin; o < o_end; o += MR) {
                    const size_t rows = o_end - o < MR ? o_end - o : MR;
                    const int16_t *wt = w + o * k_padded + 2 * p0;
                    for (size_t c = c0; c < c0 + cb; c += NR) {
                        const size_t cols = c0 + cb - c < NR ? c0 + cb - c : NR;
                        const int16_t *lt = limb + (p0 * columns + c) * 2;
                        uint64_t *ot = out + o * columns + c;
#if defined(__x86_64__)
                        if (avx && rows == MR && cols == NR) {
                            micro_avx2(wt, k_padded, lt, columns, pc, ot, shift);
                            continue;
                        }
#endif
                        micro_scalar(wt, k_padded, rows, lt, columns, pc, cols, ot, shift);
                    }
                }
            }
        }
    }
    (void)avx;
}

// MARK: - Bit packing

void nb_fhe_pack_bits(const uint64_t *values, size_t n, unsigned bits, uint8_t *out) {
    unsigned __int128 acc = 0;
    unsigned held = 0;
    size_t o = 0;
    const unsigned drop = 64 - bits;
    for (size_t i = 0; i < n; i++) {
        uint64_t x = round_top(values[i], drop);
        if (bits < 64) x &= (1ULL << bits) - 1;
        acc |= (unsigned __int128)x << held;
        held += bits;
        if (held >= 64) {
            const uint64_t word = (uint64_t)acc;
            memcpy(out + o, &word, 8);  // little-endian machines only (x86-64, arm64)
            o += 8;
            acc >>= 64;
            held -= 64;
        }
    }
    while (held > 0) {
        out[o++] = (uint8_t)acc;
        acc >>= 8;
        held = held > 8 ? held - 8 : 0;
    }
}

void nb_fhe_unpack_bits(const uint8_t *in, size_t n, unsigned bits, uint64_t *values) {
    const size_t total = (n * (size_t)bits + 7) / 8;
    unsigned __int128 acc = 0;
    unsigned held = 0;
    size_t ip = 0;
    const uint64_t mask = bits == 64 ? ~0ULL : (1ULL << bits) - 1;
    for (size_t i = 0; i < n; i++) {
        while (held < bits) {
            if (ip + 8 <= total) {
                uint64_t word;
                memcpy(&word, in + ip, 8);
                acc |= (unsigned __int128)word << held;
                held += 64;
                ip += 8;
            } else {
                acc |= (unsigned __int128)in[ip++] << held;
                held += 8;
            }
        }
        const uint64_t x = (uint64_t)acc & mask;
        acc >>= bits;
        held -= bits;
        values[i] = bits == 64 ? x : x << (64 - bits);
    }
}

// MARK: - Noise

void nb_fhe_gaussian(const uint64_t *random, size_t n, double sigma, int64_t *out) {
    const double scale = 1.0 / 9007199254740992.0;  // 2^-53
    const double two_pi = 6.283185307179586476925286766559;
    for (size_t i = 0; i + 1 < n; i += 2) {
        const double u1 = (double)((random[i] >> 11) + 1) * scale;  // (0, 1]
        const double u2 = (double)(random[i + 1] >> 11) * scale;    // [0, 1)
        const double radius = sqrt(-2.0 * log(u1)) * sigma;
        out[i] = llround(radius * cos(two_pi * u2));
        out[i + 1] = llround(radius * sin(two_pi * u2));
    }
}

// MARK: - Negacyclic products through FFTW

struct nb_negacyclic {
    size_t n, half;
    fftw_plan forward;  // sign +1: evaluations at the odd powers of exp(i*pi/n)
    fftw_plan inverse;  // sign -1
    double *twist_re, *twist_im;  // exp(i*pi*j/n), j < n/2
};

nb_negacyclic *nb_negacyclic_create(size_t n) {
    nb_negacyclic *p = calloc(1, sizeof *p);
    p->n = n;
    p->half = n / 2;
    fftw_complex *a = fftw_malloc(sizeof(fftw_complex) * p->half), *b = fftw_malloc(sizeof(fftw_complex) * p->half);
    p->forward = fftw_plan_dft_1d((int)p->half, a, b, FFTW_BACKWARD, FFTW_MEASURE);
    p->inverse = fftw_plan_dft_1d((int)p->half, a, b, FFTW_FORWARD, FFTW_MEASURE);
    fftw_free(a);
    fftw_free(b);
    p->twist_re = malloc(sizeof(double) * p->half);
    p->twist_im = malloc(sizeof(double) * p->half);
    for (size_t j = 0; j < p->half; j++) {
        const double angle = M_PI * (double)j / (double)n;
        p->twist_re[j] = cos(angle);
        p->twist_im[j] = sin(angle);
    }
    return p;
}

void nb_negacyclic_destroy(nb_negacyclic *p) {
    if (!p) return;
    fftw_destroy_plan(p->forward);
    fftw_destroy_plan(p->inverse);
    free(p->twist_re);
    free(p->twist_im);
    free(p);
}

double *nb_negacyclic_work(const nb_negacyclic *p) { return fftw_malloc(sizeof(double) * 4 * p->n); }
void nb_negacyclic_free_work(double *work) { fftw_free(work); }

// z_j = (x_j + i x_{j+n/2}) * exp(i pi j / n), then the forward transform into `out`.
static void transform_digits(const nb_negacyclic *p, const double *x_lo, const double *x_hi, fftw_complex *in,
                             fftw_complex *out) {
    for (size_t j = 0; j < p->half; j++) {
        const double re = x_lo[j], im = x_hi[j];
        in[j][0] = re * p->twist_re[j] - im * p->twist_im[j];
        in[j][1] = re * p->twist_im[j] + im * p->twist_re[j];
    }
    fftw_execute_dft(p->forward, in, out);
}

void nb_negacyclic_spectrum(const nb_negacyclic *p, const int64_t *poly, double *spectrum, double *work) {
    fftw_complex *in = (fftw_complex *)work, *out = (fftw_complex *)(work + p->n);
    double *lo = malloc(sizeof(double) * p->n);
    for (size_t j = 0; j < p->n; j++) lo[j] = (double)poly[j];
    transform_digits(p, lo, lo + p->half, in, out);
    memcpy(spectrum, out, sizeof(double) * p->n);
    free(lo);
}

double nb_negacyclic_mul(const nb_negacyclic *p, const uint64_t *a, unsigned bits, unsigned limb_bits,
                         const double *spectrum, uint64_t *c, double *work) {
    const size_t n = p->n, half = p->half;
    fftw_complex *in = (fftw_complex *)work, *out = (fftw_complex *)(work + n);
    const fftw_complex *s = (const fftw_complex *)spectrum;
    const unsigned drop = 64 - bits;
    const unsigned limbs = (bits + limb_bits - 1) / limb_bits;
    const double inv = 1.0 / (double)half;
    double worst = 0;
    memset(c, 0, sizeof(uint64_t) * n);
    // Digits of each coefficient, limb by limb: x = round(a / 2^drop) = sum_t d_t 2^(limb_bits t).
    double *digits = work + 2 * n;
    uint64_t *rest = (uint64_t *)(work + 3 * n);
    for (size_t j = 0; j < n; j++) rest[j] = round_top(a[j], drop);
    const uint64_t limb_mask = (1ULL << limb_bits) - 1, sign = 1ULL << (limb_bits - 1);
    for (unsigned t = 0; t < limbs; t++) {
        for (size_t j = 0; j < n; j++) {
            const uint64_t low = rest[j] & limb_mask;
            const int64_t d = (int64_t)low - ((low & sign) ? (int64_t)(limb_mask + 1) : 0);
            digits[j] = (double)d;
            rest[j] = (rest[j] - (uint64_t)d) >> limb_bits;
        }
        transform_digits(p, digits, digits + half, in, out);
        for (size_t k = 0; k < half; k++) {
            const double re = out[k][0] * s[k][0] - out[k][1] * s[k][1];
            const double im = out[k][0] * s[k][1] + out[k][1] * s[k][0];
            in[k][0] = re;
            in[k][1] = im;
        }
        fftw_execute_dft(p->inverse, in, out);
        const unsigned shift = drop + limb_bits * t;
        for (size_t j = 0; j < half; j++) {
            const double re = out[j][0] * inv, im = out[j][1] * inv;
            // Undo the twist: multiply by exp(-i pi j / n).
            const double lo = re * p->twist_re[j] + im * p->twist_im[j];
            const double hi = im * p->twist_re[j] - re * p->twist_im[j];
            const double rlo = nearbyint(lo), rhi = nearbyint(hi);
            const double e = fmax(fabs(lo - rlo), fabs(hi - rhi));
            if (e > worst) worst = e;
            if (shift < 64) {
                c[j] += (uint64_t)(int64_t)rlo << shift;
                c[j + half] += (uint64_t)(int64_t)rhi << shift;
            }
        }
    }
    return worst;
}
