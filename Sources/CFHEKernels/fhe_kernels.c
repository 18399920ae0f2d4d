#define _GNU_SOURCE
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

#if defined(__GLIBC__)
#include <malloc.h>
#endif

static int nb_fhe_compact = 0;
// In a compact process: whether buffers are kept between fills (see nb_fhe_compact_between_peaks).
static int nb_fhe_compact_steady = 0;

static void nb_fhe_apply_compact(void) {
#if defined(__GLIBC__)
    if (nb_fhe_compact_steady) {
        mallopt(M_MMAP_THRESHOLD, 32 << 20);
        mallopt(M_TRIM_THRESHOLD, 128 << 20);
    } else {
        mallopt(M_MMAP_THRESHOLD, 1 << 20);
        mallopt(M_TRIM_THRESHOLD, 1 << 24);
    }
#endif
}

void nb_fhe_tune_allocator(void) {
#if defined(__GLIBC__)
    // Once a process asked for compact memory (a remote client), it keeps it.
    const char *env = getenv("NB_FHE_COMPACT_MEMORY");
    if (nb_fhe_compact || (env && env[0] == '1')) { nb_fhe_compact_allocator(); return; }
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
}

void nb_fhe_compact_allocator(void) {
#if defined(__GLIBC__)
    // Buffers of 1 MiB and more are mapped and unmapped per call, freed heap memory above
    // 16 MiB goes back to the system, and at most two arenas hold small blocks: slower
    // calls, but a client whose peak memory is its model plus one call's buffers. A process
    // already compact keeps its state (between fills or not).
    if (nb_fhe_compact) { nb_fhe_apply_compact(); return; }
    nb_fhe_compact = 1;
    nb_fhe_apply_compact();
    mallopt(M_ARENA_MAX, 2);
#endif
}

void nb_fhe_compact_between_peaks(int peak) {
#if defined(__GLIBC__)
    if (!nb_fhe_compact) return;
    nb_fhe_compact_steady = !peak;
    nb_fhe_apply_compact();
    // Before a peak, the kept buffers go back first.
    if (peak) malloc_trim(0);
#else
    (void)peak;
#endif
}

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

// One value of a bits-wide LSB-first packed stream (bits <= 56), reading no byte past `n`.
static inline uint64_t packed_value(const uint8_t *in, size_t n, size_t index, unsigned bits, uint64_t mask) {
    const size_t bit = index * (size_t)bits, at = bit / 8;
    uint64_t word = 0;
    if (at + 8 <= n) {
        memcpy(&word, in + at, 8);  // little-endian machines only (x86-64, arm64)
    } else {
        for (size_t b = 0; at + b < n; b++) word |= (uint64_t)in[at + b] << (8 * b);
    }
    return (word >> (bit % 8)) & mask;
}

// Appends a `bits`-bit value to an LSB-first bit stream held in (acc, held), writing each full
// 64-bit word to *o (little-endian machines only: x86-64, arm64).
static inline void push_bits(unsigned __int128 *acc, unsigned *held, uint8_t **o, uint64_t value, unsigned bits) {
    *acc |= (unsigned __int128)value << *held;
    *held += bits;
    if (*held >= 64) {
        const uint64_t word = (uint64_t)*acc;
        memcpy(*o, &word, 8);
        *o += 8;
        *acc >>= 64;
        *held -= 64;
    }
}

void nb_fhe_pack_limbs_range(const uint64_t *values, size_t rows, size_t columns, size_t limbs, int16_t *packed,
                             size_t pair_begin, size_t pair_end) {
    const size_t pairs = (rows + 1) / 2, tiles = (columns + 15) / 16;
    const unsigned drop = (unsigned)(64 - 16 * limbs);
    for (size_t p = pair_begin; p < pair_end && p < pairs; p++) {
        for (size_t e = 0; e < 2; e++) {
            const size_t row = 2 * p + e;
            for (size_t c = 0; c < columns; c++) {
                uint64_t x = row < rows ? round_top(values[row * columns + c], drop) : 0;
                for (size_t t = 0; t < limbs; t++) {
                    const int16_t d = (int16_t)(uint16_t)(x & 0xFFFF);
                    x = (x - (uint64_t)(int64_t)d) >> 16;
                    packed[(((t * tiles + c / 16) * pairs + p) * 16 + c % 16) * 2 + e] = d;
                }
            }
        }
    }
}

void nb_fhe_pack_limbs(const uint64_t *values, size_t rows, size_t columns, size_t limbs, int16_t *packed) {
    memset(packed, 0, sizeof(int16_t) * nb_fhe_packed_limbs_count(rows, columns, limbs));
    nb_fhe_pack_limbs_range(values, rows, columns, limbs, packed, 0, (rows + 1) / 2);
}

size_t nb_fhe_packed_limbs_count(size_t rows, size_t columns, size_t limbs) {
    return limbs * ((columns + 15) / 16) * ((rows + 1) / 2) * 32;
}

enum { MR = 6, NR = 16, PAIR_CHUNK = 128, COLUMN_BLOCK = 256 };

// One tile of `rows` x `cols`: l points at the tile's row pairs (32 int16 each).
static void micro_scalar(const void *wv, size_t kp, size_t rows, const void *lv, size_t pairs, size_t cols,
                         uint64_t *out, size_t columns, unsigned shift) {
    const int16_t *w = wv, *l = lv;
    for (size_t r = 0; r < rows; r++) {
        for (size_t j = 0; j < cols; j++) {
            int64_t s = 0;
            for (size_t p = 0; p < pairs; p++) {
                const int16_t *d = l + p * 32 + j * 2;
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

// Adds a 6 x 16 tile of int32 sums (two vectors per row), shifted, into its 64-bit outputs.
__attribute__((target("avx2")))
static inline __attribute__((always_inline)) void flush_tile_avx2(const __m256i tile[12], uint64_t *out, size_t columns, unsigned shift) {
    const __m128i count = _mm_cvtsi32_si128((int)shift);
    for (size_t r = 0; r < 6; r++) {
        flush_avx2(tile[2 * r], out + r * columns, count);
        flush_avx2(tile[2 * r + 1], out + r * columns + 8, count);
    }
}

// A 6 x 16 tile: 12 accumulators of 8 int32 sums, one multiply-accumulate `MAC(acc, weights,
// digits)` per (row, 8 columns, group of GROUP inner values); the tile's digits are contiguous
// (64 bytes per group), the weights are broadcast GROUP at a time (4 bytes).
#define NB_MICRO_TILE(NAME, TARGET, WEIGHT, GROUP, MAC)                                                        \
__attribute__((target(TARGET)))                                                                                 \
static void NAME(const void *wv, size_t kp, const void *lv, size_t groups, uint64_t *out, size_t columns,       \
                 unsigned shift) {                                                                              \
    const WEIGHT *w = wv;                                                                                       \
    const char *l = lv;                                                                                         \
    __m256i c[12];                                                                                              \
    for (int i = 0; i < 12; i++) c[i] = _mm256_setzero_si256();                                                \
    for (size_t g = 0; g < groups; g++) {                                                                       \
        const __m256i b0 = _mm256_loadu_si256((const __m256i *)(l + g * 64));                                   \
        const __m256i b1 = _mm256_loadu_si256((const __m256i *)(l + g * 64 + 32));                              \
        for (int r = 0; r < 6; r++) {                                                                           \
            int32_t s;                                                                                          \
            memcpy(&s, w + r * kp + GROUP * g, sizeof s);                                                       \
            const __m256i a = _mm256_set1_epi32(s);                                                             \
            c[2 * r] = MAC(c[2 * r], a, b0);                                                                    \
            c[2 * r + 1] = MAC(c[2 * r + 1], a, b1);                                                            \
        }                                                                                                       \
    }                                                                                                           \
    flush_tile_avx2(c, out, columns, shift);                                                                    \
}

// int16 pairs: vpmaddwd, then add.
#define NB_MAC_INT16(acc, a, b) _mm256_add_epi32((acc), _mm256_madd_epi16((a), (b)))
NB_MICRO_TILE(micro_avx2, "avx2", int16_t, 2, NB_MAC_INT16)
#endif

// The blocked GEMM both digit layouts share: a tile's digits are 64 bytes per group of `group`
// inner values (a pair of int16 or a quad of bytes); `fast` takes full MR x NR tiles on the CPU
// that has its instructions, `any` every tile.
typedef void (*tile_kernel)(const void *w, size_t kp, const void *l, size_t groups, uint64_t *out, size_t columns, unsigned shift);
typedef void (*edge_kernel)(const void *w, size_t kp, size_t rows, const void *l, size_t groups, size_t cols, uint64_t *out,
                            size_t columns, unsigned shift);

static void blocked_gemm(const char *w, size_t weight_bytes, size_t k_padded, const char *packed, size_t group, size_t chunk,
                         unsigned digit_bits, size_t columns, size_t limbs, tile_kernel fast, edge_kernel any,
                         uint64_t *out, size_t o_begin, size_t o_end) {
    const size_t groups = k_padded / group, tiles = (columns + 15) / 16;
    for (size_t t = 0; t < limbs; t++) {
        const unsigned shift = (unsigned)(64 - digit_bits * limbs + digit_bits * t);
        const char *limb = packed + t * tiles * groups * 64;
        for (size_t g0 = 0; g0 < groups; g0 += chunk) {
            const size_t gc = groups - g0 < chunk ? groups - g0 : chunk;
            for (size_t t0 = 0; t0 < tiles; t0 += COLUMN_BLOCK / 16) {
                const size_t t1 = t0 + COLUMN_BLOCK / 16 < tiles ? t0 + COLUMN_BLOCK / 16 : tiles;
                for (size_t o = o_begin; o < o_end; o += MR) {
                    const size_t rows = o_end - o < MR ? o_end - o : MR;
                    const char *wt = w + (o * k_padded + group * g0) * weight_bytes;
                    for (size_t ct = t0; ct < t1; ct++) {
                        const size_t c = ct * 16, cols = columns - c < NR ? columns - c : NR;
                        const char *lt = limb + (ct * groups + g0) * 64;
                        uint64_t *ot = out + o * columns + c;
                        if (fast && rows == MR && cols == NR) {
                            fast(wt, k_padded, lt, gc, ot, columns, shift);
                        } else {
                            any(wt, k_padded, rows, lt, gc, cols, ot, columns, shift);
                        }
                    }
                }
            }
        }
    }
}

void nb_fhe_limb_gemm(const int16_t *w, size_t k_padded, const int16_t *packed, size_t columns, size_t limbs,
                      uint64_t *out, size_t o_begin, size_t o_end) {
    tile_kernel fast = NULL;
#if defined(__x86_64__)
    if (nb_fhe_has_avx2()) fast = micro_avx2;
#endif
    blocked_gemm((const char *)w, 2, k_padded, (const char *)packed, 2, PAIR_CHUNK, 16, columns, limbs, fast, micro_scalar,
                 out, o_begin, o_end);
}

void nb_fhe_pack_limbs_columns(const uint64_t *values, size_t rows, size_t columns, size_t limbs, int16_t *digits) {
    const size_t kp = rows + (rows & 1);
    const unsigned drop = (unsigned)(64 - 16 * limbs);
    for (size_t c = 0; c < columns; c++) {
        for (size_t t = 0; t < limbs; t++) digits[(t * columns + c) * kp + kp - 1] = 0;
        for (size_t r = 0; r < rows; r++) {
            uint64_t x = round_top(values[r * columns + c], drop);
            for (size_t t = 0; t < limbs; t++) {
                const int16_t d = (int16_t)(uint16_t)(x & 0xFFFF);
                x = (x - (uint64_t)(int64_t)d) >> 16;
                digits[(t * columns + c) * kp + r] = d;
            }
        }
    }
}

// Σ_k w[k]·d[k] over kp (even) int16s, exactly: int32 lanes flushed into int64 every 64 steps of 16
// (each lane's sum of 64 pair products stays below 2^29).
static int64_t dot_scalar(const void *wv, const void *dv, size_t kp) {
    const int16_t *w = wv, *d = dv;
    int64_t s = 0;
    for (size_t k = 0; k < kp; k++) s += (int64_t)w[k] * d[k];
    return s;
}

#if defined(__x86_64__)
// The sum of a vector's eight int32 lanes, in 64 bits.
__attribute__((target("avx2")))
static inline __attribute__((always_inline)) int64_t sum_epi32_avx2(__m256i v) {
    const __m256i lo = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(v));
    const __m256i hi = _mm256_cvtepi32_epi64(_mm256_extracti128_si256(v, 1));
    int64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes, _mm256_add_epi64(lo, hi));
    return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}

__attribute__((target("avx2")))
static int64_t dot_avx2(const void *wv, const void *dv, size_t kp) {
    const int16_t *w = wv, *d = dv;
    int64_t total = 0;
    size_t k = 0;
    while (k + 16 <= kp) {
        __m256i acc = _mm256_setzero_si256();
        const size_t end = k + 64 * 16 < kp ? k + 64 * 16 : kp;
        for (; k + 16 <= end; k += 16) {
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)(w + k)),
                                                          _mm256_loadu_si256((const __m256i *)(d + k))));
        }
        total += sum_epi32_avx2(acc);
    }
    for (; k < kp; k++) total += (int64_t)w[k] * d[k];
    return total;
}
#endif

// The GEMV both digit layouts share: `dot` is the exact inner product of a weight row and one
// column's digits of one limb (`weight_bytes`, `digit_bytes`: their element sizes).
typedef int64_t (*dot_kernel)(const void *w, const void *d, size_t kp);

static void digit_gemv(const char *w, size_t weight_bytes, size_t k_padded, const char *digits, size_t digit_bytes, unsigned digit_bits,
                       size_t columns, size_t limbs, dot_kernel dot, uint64_t *out, size_t o_begin, size_t o_end) {
    for (size_t o = o_begin; o < o_end; o++) {
        const char *row = w + o * k_padded * weight_bytes;
        for (size_t c = 0; c < columns; c++) {
            uint64_t v = 0;
            for (size_t t = 0; t < limbs; t++) {
                const int64_t s = dot(row, digits + (t * columns + c) * k_padded * digit_bytes, k_padded);
                v += (uint64_t)s << (64 - digit_bits * limbs + digit_bits * t);
            }
            out[o * columns + c] += v;
        }
    }
}

void nb_fhe_limb_gemv(const int16_t *w, size_t k_padded, const int16_t *digits, size_t columns, size_t limbs,
                      uint64_t *out, size_t o_begin, size_t o_end) {
    dot_kernel dot = dot_scalar;
#if defined(__x86_64__)
    if (nb_fhe_has_avx2()) dot = dot_avx2;
#endif
    digit_gemv((const char *)w, 2, k_padded, (const char *)digits, 2, 16, columns, limbs, dot, out, o_begin, o_end);
}

// MARK: - Byte digits and the VNNI GEMM

int nb_fhe_has_avx512_vnni(void) {
#if defined(__x86_64__)
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512f") ? 1 : 0;
    }
    return cached;
#else
    return 0;
#endif
}

size_t nb_fhe_packed_bytes_count(size_t rows, size_t columns, size_t limbs) {
    return limbs * ((columns + 15) / 16) * ((rows + 3) / 4) * 64;
}

void nb_fhe_pack_bytes_range(const uint64_t *values, size_t rows, size_t columns, size_t limbs, uint8_t *packed,
                             size_t quad_begin, size_t quad_end) {
    const size_t quads = (rows + 3) / 4, tiles = (columns + 15) / 16;
    const unsigned drop = (unsigned)(64 - 8 * limbs);
    for (size_t q = quad_begin; q < quad_end && q < quads; q++) {
        for (size_t e = 0; e < 4; e++) {
            const size_t row = 4 * q + e;
            for (size_t c = 0; c < columns; c++) {
                uint64_t x = row < rows ? round_top(values[row * columns + c], drop) : 0;
                uint8_t *at = packed + ((c / 16) * quads + q) * 64 + (c % 16) * 4 + e;
                for (size_t t = 0; t < limbs; t++, x >>= 8) at[t * tiles * quads * 64] = (uint8_t)x;
            }
        }
    }
}

void nb_fhe_pack_bytes_from_bits(const uint8_t *in, size_t in_bytes, unsigned bits, size_t rows, size_t columns, size_t limbs,
                                 uint8_t *packed, size_t quad_begin, size_t quad_end) {
    const size_t quads = (rows + 3) / 4, tiles = (columns + 15) / 16;
    const unsigned up = (unsigned)(8 * limbs - bits);
    const uint64_t mask = (1ULL << bits) - 1;
    const size_t plane = tiles * quads * 64;
    for (size_t q = quad_begin; q < quad_end && q < quads; q++) {
        // The quad's 4 rows side by side: each column's 4 digits of a limb are one 32-bit word.
        const size_t r0 = 4 * q, present = rows - r0 < 4 ? rows - r0 : 4;
        for (size_t c = 0; c < columns; c++) {
            uint64_t x[4] = {0, 0, 0, 0};
            for (size_t e = 0; e < present; e++) x[e] = packed_value(in, in_bytes, (r0 + e) * columns + c, bits, mask) << up;
            uint8_t *dst = packed + ((c / 16) * quads + q) * 64 + (c % 16) * 4;
            for (size_t t = 0; t < limbs; t++) {
                const unsigned s = (unsigned)(8 * t);
                const uint32_t word = (uint32_t)((x[0] >> s) & 0xff) | (uint32_t)((x[1] >> s) & 0xff) << 8
                                    | (uint32_t)((x[2] >> s) & 0xff) << 16 | (uint32_t)((x[3] >> s) & 0xff) << 24;
                memcpy(dst + t * plane, &word, 4);  // little-endian machines only (x86-64, arm64)
            }
        }
    }
}

enum { QUAD_CHUNK = 128 };

static void micro_bytes_scalar(const void *wv, size_t kp, size_t rows, const void *lv, size_t quads, size_t cols,
                               uint64_t *out, size_t columns, unsigned shift) {
    const int8_t *w = wv;
    const uint8_t *l = lv;
    for (size_t r = 0; r < rows; r++) {
        for (size_t j = 0; j < cols; j++) {
            int64_t s = 0;
            for (size_t q = 0; q < quads; q++) {
                const uint8_t *d = l + q * 64 + j * 4;
                for (size_t e = 0; e < 4; e++) s += (int64_t)w[r * kp + 4 * q + e] * d[e];
            }
            out[r * columns + j] += (uint64_t)s << shift;
        }
    }
}

#if defined(__x86_64__)
// Byte quads: vpdpbusd (u8 digits times s8 weights, four products per lane). Each lane adds at
// most 4 * 255 * 128 per quad, so QUAD_CHUNK quads stay far below 2^31.
#define NB_MAC_BYTES(acc, a, b) _mm256_dpbusd_epi32((acc), (b), (a))
NB_MICRO_TILE(micro_bytes_vnni, "avx2,avx512f,avx512vl,avx512vnni", int8_t, 4, NB_MAC_BYTES)
#endif

void nb_fhe_byte_gemm(const int8_t *w, size_t k_padded, const uint8_t *packed, size_t columns, size_t limbs,
                      uint64_t *out, size_t o_begin, size_t o_end) {
    tile_kernel fast = NULL;
#if defined(__x86_64__)
    if (nb_fhe_has_avx512_vnni()) fast = micro_bytes_vnni;
#endif
    blocked_gemm((const char *)w, 1, k_padded, (const char *)packed, 4, QUAD_CHUNK, 8, columns, limbs, fast, micro_bytes_scalar,
                 out, o_begin, o_end);
}

void nb_fhe_pack_bytes_columns(const uint64_t *values, size_t rows, size_t columns, size_t limbs, uint8_t *digits) {
    const size_t kp = (rows + 3) & ~(size_t)3;
    const unsigned drop = (unsigned)(64 - 8 * limbs);
    for (size_t c = 0; c < columns; c++) {
        for (size_t t = 0; t < limbs; t++) {
            for (size_t r = rows; r < kp; r++) digits[(t * columns + c) * kp + r] = 0;
        }
        for (size_t r = 0; r < rows; r++) {
            uint64_t x = round_top(values[r * columns + c], drop);
            for (size_t t = 0; t < limbs; t++, x >>= 8) digits[(t * columns + c) * kp + r] = (uint8_t)x;
        }
    }
}

static int64_t dot_bytes_scalar(const void *wv, const void *dv, size_t kp) {
    const int8_t *w = wv;
    const uint8_t *d = dv;
    int64_t s = 0;
    for (size_t k = 0; k < kp; k++) s += (int64_t)w[k] * d[k];
    return s;
}

#if defined(__x86_64__)
// Exact: a lane gains at most 4 * 255 * 128 < 2^17 per step of 32, so 4096 steps stay below 2^31.
__attribute__((target("avx2,avx512f,avx512vl,avx512vnni")))
static int64_t dot_bytes_vnni(const void *wv, const void *dv, size_t kp) {
    const int8_t *w = wv;
    const uint8_t *d = dv;
    int64_t total = 0;
    size_t k = 0;
    while (k + 32 <= kp) {
        __m256i acc = _mm256_setzero_si256();
        const size_t end = k + 4096 * 32 < kp ? k + 4096 * 32 : kp;
        for (; k + 32 <= end; k += 32) {
            acc = _mm256_dpbusd_epi32(acc, _mm256_loadu_si256((const __m256i *)(d + k)), _mm256_loadu_si256((const __m256i *)(w + k)));
        }
        total += sum_epi32_avx2(acc);
    }
    for (; k < kp; k++) total += (int64_t)w[k] * d[k];
    return total;
}
#endif

void nb_fhe_byte_gemv(const int8_t *w, size_t k_padded, const uint8_t *digits, size_t columns, size_t limbs,
                      uint64_t *out, size_t o_begin, size_t o_end) {
    dot_kernel dot = dot_bytes_scalar;
#if defined(__x86_64__)
    if (nb_fhe_has_avx512_vnni()) dot = dot_bytes_vnni;
#endif
    digit_gemv((const char *)w, 1, k_padded, (const char *)digits, 1, 8, columns, limbs, dot, out, o_begin, o_end);
}

// MARK: - The online product mod 2^32: every byte digit in one pass over the weights

// W·u mod 2^k for k <= 32 needs no 64-bit sums: with u = sum_t 2^(8t) d_t (its bytes), every
// product and sum can wrap mod 2^32, so one int32 lane per (output, column) holds
// sum_t 2^(8t) W·d_t exactly mod 2^32, whatever the inner dimension (no chunks, no widening).

size_t nb_masked_digits_count(size_t features, size_t columns, size_t limbs) {
    return ((columns + 15) / 16) * ((features + 3) / 4) * limbs * 64;
}

void nb_masked_pack_digits(const uint8_t *in, size_t in_bytes, unsigned bits, size_t features, size_t columns, size_t limbs,
                           uint8_t *digits, size_t tile_begin, size_t tile_end) {
    const size_t quads = (features + 3) / 4, tiles = (columns + 15) / 16;
    const uint64_t mask = (1ULL << bits) - 1;
    for (size_t ct = tile_begin; ct < tile_end && ct < tiles; ct++) {
        const size_t c0 = 16 * ct, cols = columns - c0 < 16 ? columns - c0 : 16;
        for (size_t q = 0; q < quads; q++) {
            uint32_t v[4][16];
            for (size_t e = 0; e < 4; e++) {
                const size_t f = 4 * q + e;
                for (size_t j = 0; j < 16; j++) {
                    v[e][j] = f < features && j < cols ? (uint32_t)packed_value(in, in_bytes, f * columns + c0 + j, bits, mask) : 0;
                }
            }
            uint8_t *dst = digits + (ct * quads + q) * limbs * 64;
            for (size_t t = 0; t < limbs; t++) {
                const unsigned s = (unsigned)(8 * t);
                for (size_t j = 0; j < 16; j++) {
                    const uint32_t word = ((v[0][j] >> s) & 0xff) | ((v[1][j] >> s) & 0xff) << 8
                                        | ((v[2][j] >> s) & 0xff) << 16 | ((v[3][j] >> s) & 0xff) << 24;
                    memcpy(dst + t * 64 + j * 4, &word, 4);  // little-endian machines only (x86-64, arm64)
                }
            }
        }
    }
}

void nb_masked_gemm32_portable(const int8_t *w, size_t k_padded, const uint8_t *digits, size_t columns, size_t limbs,
                                 uint32_t *out, size_t o_begin, size_t o_end) {
    const size_t quads = k_padded / 4;
    for (size_t o = o_begin; o < o_end; o++) {
        for (size_t c = 0; c < columns; c++) {
            const uint8_t *d = digits + (c / 16) * quads * limbs * 64 + (c % 16) * 4;
            uint32_t sum = 0;
            for (size_t t = 0; t < limbs; t++) {
                uint32_t s = 0;
                for (size_t k = 0; k < k_padded; k++) s += (uint32_t)((int32_t)w[o * k_padded + k] * (int32_t)d[((k / 4) * limbs + t) * 64 + k % 4]);
                sum += s << (8 * t);
            }
            out[o * columns + c] = sum;
        }
    }
}

#if defined(__x86_64__)
// A tile of 6 outputs x 16 columns x L digits: 6L accumulators of 16 int32 lanes; per quad of
// inner values, L loads of digits (64 bytes each) and 6 broadcasts of 4 weights serve 6L
// vpdpbusd. Rows past `valid` repeat the last valid row's weights and are not stored.
#define NB_MASKED_TILE(L)                                                                                              \
__attribute__((target("avx512f,avx512vnni")))                                                                          \
static void masked_tile_##L(const int8_t *const w[6], size_t quads, const uint8_t *d, uint32_t *const out[6],         \
                            size_t valid, __mmask16 columns) {                                                       \
    __m512i acc[6][L];                                                                                                 \
    for (int r = 0; r < 6; r++) for (int t = 0; t < L; t++) acc[r][t] = _mm512_setzero_si512();                      \
    for (size_t q = 0; q < quads; q++) {                                                                               \
        __m512i dv[L];                                                                                                 \
        for (int t = 0; t < L; t++) dv[t] = _mm512_loadu_si512((const void *)(d + (q * L + t) * 64));                  \
        for (int r = 0; r < 6; r++) {                                                                                  \
            int32_t s;                                                                                                 \
            memcpy(&s, w[r] + 4 * q, sizeof s);                                                                        \
            const __m512i a = _mm512_set1_epi32(s);                                                                    \
            for (int t = 0; t < L; t++) acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], dv[t], a);                          \
        }                                                                                                              \
    }                                                                                                                  \
    for (size_t r = 0; r < valid; r++) {                                                                               \
        __m512i sum = acc[r][0];                                                                                       \
        for (int t = 1; t < L; t++) sum = _mm512_add_epi32(sum, _mm512_slli_epi32(acc[r][t], (unsigned)(8 * t)));      \
        _mm512_mask_storeu_epi32((void *)out[r], columns, sum);                                                        \
    }                                                                                                                  \
}
NB_MASKED_TILE(1)
NB_MASKED_TILE(2)
NB_MASKED_TILE(3)
NB_MASKED_TILE(4)
#endif

void nb_masked_gemm32(const int8_t *w, size_t k_padded, const uint8_t *digits, size_t columns, size_t limbs,
                      uint32_t *out, size_t o_begin, size_t o_end) {
#if defined(__x86_64__)
    if (nb_fhe_has_avx512_vnni() && limbs >= 1 && limbs <= 4) {
        const size_t quads = k_padded / 4, tiles = (columns + 15) / 16;
        for (size_t o = o_begin; o < o_end; o += 6) {
            const size_t valid = o_end - o < 6 ? o_end - o : 6;
            const int8_t *rows[6];
            for (size_t r = 0; r < 6; r++) rows[r] = w + (o + (r < valid ? r : valid - 1)) * k_padded;
            for (size_t ct = 0; ct < tiles; ct++) {
                const size_t c0 = 16 * ct, cols = columns - c0 < 16 ? columns - c0 : 16;
                uint32_t *dst[6];
                for (size_t r = 0; r < 6; r++) dst[r] = out + (o + (r < valid ? r : 0)) * columns + c0;
                const __mmask16 m = (__mmask16)(cols == 16 ? 0xffffu : (1u << cols) - 1);
                const uint8_t *d = digits + ct * quads * limbs * 64;
                switch (limbs) {
                case 1: masked_tile_1(rows, quads, d, dst, valid, m); break;
                case 2: masked_tile_2(rows, quads, d, dst, valid, m); break;
                case 3: masked_tile_3(rows, quads, d, dst, valid, m); break;
                default: masked_tile_4(rows, quads, d, dst, valid, m); break;
                }
            }
        }
        return;
    }
#endif
    nb_masked_gemm32_portable(w, k_padded, digits, columns, limbs, out, o_begin, o_end);
}

void nb_masked_pack_bits32(const uint32_t *values, size_t n, unsigned bits, uint8_t *out) {
    unsigned __int128 acc = 0;
    unsigned held = 0;
    uint8_t *o = out;
    const uint64_t mask = (1ULL << bits) - 1;
    for (size_t i = 0; i < n; i++) push_bits(&acc, &held, &o, values[i] & mask, bits);
    for (; held > 0; held = held > 8 ? held - 8 : 0) {
        *o++ = (uint8_t)acc;
        acc >>= 8;
    }
}

// MARK: - The masked protocol's client passes

#define NB_MASKED_BLIND(NAME, T)                                                                                     \
void NAME(const T *x, const uint64_t *pads, size_t rows, size_t features, unsigned bits, uint8_t *out,             \
          size_t f_begin, size_t f_end) {                                                                          \
    const uint64_t mask = (1ULL << bits) - 1;                                                                      \
    if (rows % 8 == 0) {                                                                                           \
        /* Runs of 8 rows of one feature are k whole bytes: tiles of 8 rows walk x and the pads */                 \
        /* along their rows (8 streams in order) instead of down their columns. */                                 \
        for (size_t r0 = 0; r0 < rows; r0 += 8) {                                                                  \
            for (size_t c = f_begin; c < f_end; c++) {                                                             \
                uint8_t *o = out + (c * rows + r0) * (size_t)bits / 8;                                             \
                unsigned __int128 acc = 0;                                                                         \
                unsigned held = 0;                                                                                 \
                for (size_t r = r0; r < r0 + 8; r++) {                                                             \
                    const size_t i = r * features + c;                                                             \
                    push_bits(&acc, &held, &o, ((uint64_t)(int64_t)x[i] - pads[i]) & mask, bits);                   \
                }                                                                                                  \
                for (; held > 0; held -= 8) { *o++ = (uint8_t)acc; acc >>= 8; }                                    \
            }                                                                                                      \
        }                                                                                                          \
        return;                                                                                                    \
    }                                                                                                              \
    size_t bit = f_begin * rows * (size_t)bits;                                                                    \
    uint8_t *o = out + bit / 8;                                                                                    \
    unsigned __int128 acc = 0;                                                                                     \
    unsigned held = (unsigned)(bit % 8);                                                                           \
    if (held) acc = *o & ((1u << held) - 1);                                                                       \
    for (size_t c = f_begin; c < f_end; c++) {                                                                     \
        for (size_t r = 0; r < rows; r++) {                                                                        \
            const size_t i = r * features + c;                                                                     \
            push_bits(&acc, &held, &o, ((uint64_t)(int64_t)x[i] - pads[i]) & mask, bits);                          \
        }                                                                                                          \
    }                                                                                                              \
    while (held > 0) {                                                                                             \
        *o++ = (uint8_t)acc;                                                                                       \
        acc >>= 8;                                                                                                 \
        held = held > 8 ? held - 8 : 0;                                                                            \
    }                                                                                                              \
}
NB_MASKED_BLIND(nb_masked_blind_float, float)
NB_MASKED_BLIND(nb_masked_blind_int64, int64_t)
#undef NB_MASKED_BLIND

// One width per loop (the compiler keeps each inner loop free of the switch). Tiles of RB rows
// by OB outputs: the tile's rows of wr and y, and its outputs' runs of the packed answer, stay in
// L1 while it is done; wr and y are walked in order along each row.
#define NB_UNBLIND_TILE(LOAD)                                                                                      \
    for (size_t r0 = r_begin; r0 < r_end; r0 += RB) {                                                              \
        const size_t r1 = r0 + RB < r_end ? r0 + RB : r_end;                                                       \
        for (size_t o0 = 0; o0 < outputs; o0 += OB) {                                                              \
            const size_t o1 = o0 + OB < outputs ? o0 + OB : outputs;                                               \
            for (size_t r = r0; r < r1; r++) {                                                                     \
                const uint8_t *w = wr + (r * outputs + o0) * width;                                                \
                double *out = y + r * outputs;                                                                     \
                for (size_t o = o0; o < o1; o++, w += width) {                                                     \
                    const uint64_t v = packed_value(packed, packed_bytes, o * rows + r, bits, mask);               \
                    /* In the top bits the sum wraps mod 2^bits; the arithmetic shift centres it. */               \
                    const uint64_t sum = (v << shift) + ((LOAD) << shift);                                         \
                    out[o] = (double)((int64_t)sum >> shift);                                                      \
                }                                                                                                  \
            }                                                                                                      \
        }                                                                                                          \
    }

static inline uint64_t load_u24(const uint8_t *p) { return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16; }
static inline uint64_t load_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t load_u64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

void nb_masked_unblind(const uint8_t *packed, size_t packed_bytes, const uint8_t *wr, unsigned width, size_t rows, size_t outputs,
                       unsigned bits, double *y, size_t r_begin, size_t r_end) {
    const uint64_t mask = (1ULL << bits) - 1;
    const unsigned shift = 64 - bits;
    enum { RB = 16, OB = 64 };
    switch (width) {
    case 3: NB_UNBLIND_TILE(load_u24(w)) break;
    case 4: NB_UNBLIND_TILE(load_u32(w)) break;
    default: NB_UNBLIND_TILE(load_u64(w)) break;
    }
}
#undef NB_UNBLIND_TILE

// MARK: - Bit packing

void nb_fhe_pack_bits(const uint64_t *values, size_t n, unsigned bits, uint8_t *out) {
    unsigned __int128 acc = 0;
    unsigned held = 0;
    uint8_t *o = out;
    const unsigned drop = 64 - bits;
    for (size_t i = 0; i < n; i++) {
        uint64_t x = round_top(values[i], drop);
        if (bits < 64) x &= (1ULL << bits) - 1;
        push_bits(&acc, &held, &o, x, bits);
    }
    while (held > 0) {
        *o++ = (uint8_t)acc;
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

// MARK: - Encoding

void nb_fhe_encode(uint64_t *body, const uint64_t *product, const int64_t *noise, const int64_t *x, size_t x_stride, size_t count,
                   uint64_t delta) {
    for (size_t k = 0; k < count; k++) body[k] = product[k] + (uint64_t)noise[k] + (uint64_t)x[k * x_stride] * delta;
}

void nb_fhe_decode(const uint64_t *body, const uint64_t *product, size_t count, unsigned message_bits, int64_t *out, size_t out_stride) {
    const unsigned shift = 64 - message_bits;
    const uint64_t half = 1ULL << (shift - 1), modulus = message_bits == 64 ? 0 : 1ULL << message_bits;
    const uint64_t top = 1ULL << (message_bits - 1);
    for (size_t k = 0; k < count; k++) {
        const uint64_t u = (body[k] - product[k] + half) >> shift;
        out[k * out_stride] = u >= top ? (int64_t)(u - modulus) : (int64_t)u;
    }
}

void nb_fhe_noise(const uint64_t *body, const uint64_t *product, size_t count, unsigned message_bits, const int64_t *expected,
                  double *errors, size_t stride) {
    const uint64_t delta = 1ULL << (64 - message_bits);
    for (size_t k = 0; k < count; k++) {
        const uint64_t e = body[k] - product[k] - (uint64_t)expected[k * stride] * delta;
        errors[k * stride] = (double)(int64_t)e;
    }
}

// MARK: - Noise

// x < 2^52 as a double, with integer operations only (AVX2 has no 64-bit integer conversion):
// the bits of 2^52 + x, less 2^52.
static inline __attribute__((always_inline)) double exact_double(uint64_t x) {
    const uint64_t bits = x | 0x4330000000000000ull;
    double d;
    memcpy(&d, &bits, sizeof d);
    return d - 4503599627370496.0;
}

// Box-Muller with its own polynomial logarithm and sine/cosine, so the loop is plain arithmetic
// that the compiler vectorizes (libm's log and sincos are scalar calls: they made the noise a
// tenth of an offline fill). Both are series far past double precision on their reduced
// ranges; the samples are the libm formula's to within about 1e-15 relative, so a rounded
// sample can differ from libm's only when the exact value lies within that of a half-integer.
#if defined(__x86_64__) && defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
void nb_fhe_gaussian(const uint64_t *random, size_t n, double sigma, int64_t *out) {
    // σ < 2^47 keeps every sample (at most 6.66 σ) within the 2^51 of the rounding below.
    // One random word per pair of samples: u1 from its high 32 bits, in (0, 1], u2 from its low
    // 32 bits, in [0, 1). The radius is then at most sqrt(2 ln 2^32) σ ≈ 6.66 σ: the tails are
    // cut there (Microsoft SEAL cuts its noise at 6 σ).
    const double ln2 = 0.69314718055994530941723212145818;
    const double two_pi = 6.283185307179586476925286766559;
    const double sqrt2 = 1.4142135623730950488016887242097;
    // Adding 1.5·2^52 rounds |v| < 2^51 to an integer (to nearest, ties to even, as nearbyint
    // does in the default rounding mode); the integer is then the low bits of the sum.
    const double round_magic = 6755399441055744.0;
    int64_t magic_bits;
    memcpy(&magic_bits, &round_magic, sizeof magic_bits);
    const size_t pairs = n / 2;
    for (size_t i = 0; i < pairs; i++) {
        const uint64_t r = random[i];
        // ln u1 = ln v − 32 ln 2 for v = high + 1 ∈ [1, 2^32], v = 2^e·m, m ∈ [1, 2).
        const double v = exact_double((r >> 32) + 1);
        uint64_t bits;
        memcpy(&bits, &v, sizeof bits);
        int64_t e = (int64_t)(bits >> 52) - 1023;
        uint64_t mbits = (bits & 0x000FFFFFFFFFFFFFull) | 0x3FF0000000000000ull;
        double m;
        memcpy(&m, &mbits, sizeof m);
        // m into [√½, √2): ln m = 2 artanh f, f = (m − 1)/(m + 1), |f| ≤ 0.1716, f² ≤ 0.0295.
        const int high = m > sqrt2;
        m = high ? m * 0.5 : m;
        e += high;
        const double f = (m - 1.0) / (m + 1.0), s = f * f;
        // Σ_{j≤10} s^j/(2j+1): the next term is below 0.0295^11/23 ≈ 7e-19.
        double series = 1.0 / 21;
        series = series * s + 1.0 / 19;
        series = series * s + 1.0 / 17;
        series = series * s + 1.0 / 15;
        series = series * s + 1.0 / 13;
        series = series * s + 1.0 / 11;
        series = series * s + 1.0 / 9;
        series = series * s + 1.0 / 7;
        series = series * s + 1.0 / 5;
        series = series * s + 1.0 / 3;
        series = series * s + 1.0;
        const double ln_u1 = 2.0 * f * series + (double)(e - 32) * ln2;
        // (The builtin has no errno path, which would keep the loop scalar; the argument is ≥ 0.)
#if defined(__clang__)
        const double radius = __builtin_elementwise_sqrt(-2.0 * ln_u1) * sigma;
#else
        const double radius = sqrt(-2.0 * ln_u1) * sigma;
#endif

        // 2π·u2 = q·π/2 + x with q = round(4·u2) and x = 2π(u2 − q/4) ∈ [−π/4, π/4] (u2 − q/4 is exact).
        const double u2 = exact_double(r & 0xFFFFFFFFu) * (1.0 / 4294967296.0);
        const double qd = floor(4.0 * u2 + 0.5);
        const double x = two_pi * (u2 - 0.25 * qd), x2 = x * x;
        // Taylor series to x^17 and x^16: the next terms are below 2e-18 at |x| = π/4.
        double sn = 1.0 / 355687428096000.0;          // 1/17!
        sn = sn * x2 - 1.0 / 1307674368000.0;         // 1/15!
        sn = sn * x2 + 1.0 / 6227020800.0;            // 1/13!
        sn = sn * x2 - 1.0 / 39916800.0;              // 1/11!
        sn = sn * x2 + 1.0 / 362880.0;                // 1/9!
        sn = sn * x2 - 1.0 / 5040.0;                  // 1/7!
        sn = sn * x2 + 1.0 / 120.0;                   // 1/5!
        sn = sn * x2 - 1.0 / 6.0;                     // 1/3!
        sn = (sn * x2 + 1.0) * x;
        double cs = 1.0 / 20922789888000.0;           // 1/16!
        cs = cs * x2 - 1.0 / 87178291200.0;           // 1/14!
        cs = cs * x2 + 1.0 / 479001600.0;             // 1/12!
        cs = cs * x2 - 1.0 / 3628800.0;               // 1/10!
        cs = cs * x2 + 1.0 / 40320.0;                 // 1/8!
        cs = cs * x2 - 1.0 / 720.0;                   // 1/6!
        cs = cs * x2 + 1.0 / 24.0;                    // 1/4!
        cs = cs * x2 - 1.0 / 2.0;                     // 1/2!
        cs = cs * x2 + 1.0;
        // Quarter turns: q = 1 → (−sin, cos), 2 → (−cos, −sin), 3 → (sin, −cos); q = 4 is 0.
        const int64_t q = (int64_t)qd & 3;
        const double c0 = (q & 1) ? sn : cs, s0 = (q & 1) ? cs : sn;
        const double cosine = (q == 1 || q == 2) ? -c0 : c0;
        const double sine = (q >= 2) ? -s0 : s0;
        double a = radius * cosine + round_magic, b = radius * sine + round_magic;
        int64_t ab, bb;
        memcpy(&ab, &a, sizeof ab);
        memcpy(&bb, &b, sizeof bb);
        out[2 * i] = ab - magic_bits;
        out[2 * i + 1] = bb - magic_bits;
    }
}

// MARK: - Negacyclic products through FFTW

// Split-complex transforms (real and imaginary parts in separate arrays, so every loop below
// is plain arithmetic on double arrays that vectorizes). FFTW's split interface computes the
// sign −1 transform; the sign +1 transform is the same with real and imaginary parts swapped.
//
// Each of the two has its own plan, made on arrays laid out exactly as they are when it runs
// (imaginary parts before the real ones for the swapped one). One plan run with its parts
// swapped is not the same: some of FFTW's solvers (dft-r2hc, chosen by FFTW_MEASURE now and
// then for small sizes) depend on the layout they were planned for, and then give a wrong
// transform without any error.
struct nb_negacyclic {
    size_t n, half;
    fftw_plan forward;            // sign +1: split arrays (imaginary, real) at work + half, work
    fftw_plan inverse;            // sign −1: split arrays (real, imaginary) at work, work + half
    double *twist_re, *twist_im;  // exp(i*pi*j/n), j < n/2
};

nb_negacyclic *nb_negacyclic_create(size_t n) {
    nb_negacyclic *p = calloc(1, sizeof *p);
    p->n = n;
    p->half = n / 2;
    const size_t h = p->half;
    double *buf = fftw_malloc(sizeof(double) * 4 * h);
    fftw_iodim dim = {(int)h, 1, 1};
    p->forward = fftw_plan_guru_split_dft(1, &dim, 0, NULL, buf + h, buf, buf + 3 * h, buf + 2 * h, FFTW_MEASURE);
    p->inverse = fftw_plan_guru_split_dft(1, &dim, 0, NULL, buf, buf + h, buf + 2 * h, buf + 3 * h, FFTW_MEASURE);
    fftw_free(buf);
    p->twist_re = malloc(sizeof(double) * p->half);
    p->twist_im = malloc(sizeof(double) * p->half);
    for (size_t j = 0; j < p->half; j++) {
        const double angle = M_PI * (double)j / (double)n;
        p->twist_re[j] = cos(angle);
        p->twist_im[j] = sin(angle);
    }
    return p;
}

void nb_negacyclic_forget_wisdom(void) { fftw_forget_wisdom(); }

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

#if defined(__x86_64__) && defined(__clang__)
#define NB_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define NB_CLONES
#endif

// The evaluations at the odd powers of exp(i*pi/n) of x (n real values given as two halves):
// z_j = (x_j + i x_{j+n/2}) exp(i pi j / n), then the sign +1 transform into (fr, fi).
// zr, zi, fr, fi are work, work + n/2, work + n, work + 3n/2: the layout the plan was made for.
static inline __attribute__((always_inline)) void evaluate(const nb_negacyclic *p, const double *restrict lo, const double *restrict hi,
                                                           double *restrict zr, double *restrict zi, double *fr, double *fi) {
    const double *restrict tr = p->twist_re, *restrict ti = p->twist_im;
    for (size_t j = 0; j < p->half; j++) {
        zr[j] = lo[j] * tr[j] - hi[j] * ti[j];
        zi[j] = lo[j] * ti[j] + hi[j] * tr[j];
    }
    fftw_execute_split_dft(p->forward, zi, zr, fi, fr);  // swapped parts: sign +1
}

void nb_negacyclic_spectrum(const nb_negacyclic *p, const int64_t *poly, double *spectrum, double *work) {
    const size_t half = p->half;
    double *x = work + 2 * p->n;
    for (size_t j = 0; j < p->n; j++) x[j] = (double)poly[j];
    // The transform runs in the work space, laid out as its plan was (see above), then is copied out.
    evaluate(p, x, x + half, work, work + half, work + p->n, work + p->n + half);
    memcpy(spectrum, work + p->n, sizeof(double) * p->n);
}

NB_CLONES
double nb_negacyclic_mul(const nb_negacyclic *p, const uint64_t *a, unsigned bits, unsigned limb_bits,
                         const double *spectrum, uint64_t *c, double *work) {
    const size_t n = p->n, half = p->half;
    double *zr = work, *zi = work + half, *fr = work + n, *fi = work + n + half;
    double *restrict digits = work + 2 * n;
    uint64_t *restrict rest = (uint64_t *)(work + 3 * n);
    const double *restrict sr = spectrum, *restrict si = spectrum + half;
    const double *restrict tr = p->twist_re, *restrict ti = p->twist_im;
    const unsigned drop = 64 - bits;
    const unsigned limbs = (bits + limb_bits - 1) / limb_bits;
    const double inv = 1.0 / (double)half;
    // Rounding to nearest and conversion to an integer by the 1.5·2^52 trick (|x| < 2^51).
    const double magic = 6755399441055744.0;
    const int64_t magic_bits = 0x4338000000000000LL;
    double worst = 0;
    memset(c, 0, sizeof(uint64_t) * n);
    // Digits of each coefficient, limb by limb: x = round(a / 2^drop) = sum_t d_t 2^(limb_bits t).
    for (size_t j = 0; j < n; j++) rest[j] = round_top(a[j], drop);
    const uint64_t limb_mask = (1ULL << limb_bits) - 1, sign = 1ULL << (limb_bits - 1);
    for (unsigned t = 0; t < limbs; t++) {
        for (size_t j = 0; j < n; j++) {
            // The low limb, centred: d = ((x + sign) mod 2^limb_bits) − sign, |d| ≤ 2^21.
            const int64_t d = (int64_t)((rest[j] + sign) & limb_mask) - (int64_t)sign;
            digits[j] = (double)(int32_t)d;
            rest[j] = (rest[j] - (uint64_t)d) >> limb_bits;
        }
        evaluate(p, digits, digits + half, zr, zi, fr, fi);
        {
            double *restrict gr = zr, *restrict gi = zi;
            const double *restrict er = fr, *restrict ei = fi;
            for (size_t k = 0; k < half; k++) {
                gr[k] = er[k] * sr[k] - ei[k] * si[k];
                gi[k] = er[k] * si[k] + ei[k] * sr[k];
            }
        }
        fftw_execute_split_dft(p->inverse, zr, zi, fr, fi);  // sign −1: the inverse, unscaled
        const unsigned shift = drop + limb_bits * t;
        if (shift >= 64) continue;
        uint64_t *restrict clo = c, *restrict chi = c + half;
        double *restrict err = digits;  // free until the next limb
        const double *restrict vr = fr, *restrict vi = fi;
        for (size_t j = 0; j < half; j++) {
            const double re = vr[j] * inv, im = vi[j] * inv;
            // Undo the twist: multiply by exp(-i pi j / n).
            const double lo = re * tr[j] + im * ti[j];
            const double hi = im * tr[j] - re * ti[j];
            const double slo = lo + magic, shi = hi + magic;
            const double elo = fabs(lo - (slo - magic)), ehi = fabs(hi - (shi - magic));
            err[j] = elo > ehi ? elo : ehi;
            int64_t ilo, ihi;
            memcpy(&ilo, &slo, 8);
            memcpy(&ihi, &shi, 8);
            clo[j] += (uint64_t)(ilo - magic_bits) << shift;
            chi[j] += (uint64_t)(ihi - magic_bits) << shift;
        }
        for (size_t j = 0; j < half; j++) worst = err[j] > worst ? err[j] : worst;
    }
    return worst;
}
