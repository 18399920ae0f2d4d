#ifndef NB_KERNELS_H
#define NB_KERNELS_H
#include <stddef.h>
#include <stdint.h>

/// 1 when this CPU has AVX2, FMA and F16C (the fast paths below), else 0.
int nb_cpu_has_avx2_fma_f16c(void);

/// Converts n floats to IEEE half precision (round to nearest even).
void nb_f32_to_f16(const float *src, uint16_t *dst, size_t n);


/// Weight formats of the decode products (values as GGML numbers them).
enum { NB_DECODE_F16 = 1, NB_DECODE_Q4_0 = 2, NB_DECODE_Q4_1 = 3, NB_DECODE_Q8_0 = 8 };

/// One product y (+)= W·x for decoding: W is (rows, k) row-major in `format` (IEEE half, or
/// GGML blocks of 32 along each row: Q8_0 {half d; int8 q[32]} = d·q, Q4_0 {half d;
/// uint8 q[16]} = d·(nibble − 8), Q4_1 {half d; half m; uint8 q[16]} = d·nibble + m, low
/// nibbles first). k is a multiple of 32 for the block formats.
typedef struct {
    int format;
    const uint8_t *w;
    const float *x;
    float *y;
    size_t rows, k;
    int accumulate;
} nb_gemv_job;

/// Bytes of one row of k weights in `format` (0 for an unknown format).
size_t nb_decode_row_bytes(int format, size_t k);
/// Runs the products, each one's rows shared between the cores (a pool of spinning
/// threads started on first use). Jobs must not write each other's inputs.
void nb_gemv_batch(const nb_gemv_job *jobs, int count);
/// The number of threads the batches use (the caller included).
int nb_decode_threads(void);
/// The portable scalar kernel over all rows of one job (for tests).
void nb_gemv_rows_reference(const nb_gemv_job *job);

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
/// d[i] = p[i]·(d[i] − Σ_j p[j]·d[j]) over n floats: the backward of a softmax row p
/// with output gradient d (in place).
void nb_softmax_backward(const float *p, float *d, size_t n);

/// The smallest and largest value of each of `rows` rows of `cols` floats.
void nb_row_min_max(const float *x, size_t rows, size_t cols, float *mins, float *maxs);
/// q = clamp(round(x / scale) + zero_point, q_min, q_max) in double precision, with one
/// (scale, zero point) per row when per_row, else the first for all; row_sums[r] = Σ_c q[r, c].
void nb_quantize_rows(const float *x, size_t rows, size_t cols, const double *scale, const double *zero_point,
                      double q_min, double q_max, int per_row, float *q, double *row_sums);

/// Columns [from, from + count) of a row-major (rows, columns) matrix of packed integers into
/// out (rows, count) as Float: out = base + src.
void nb_unpack_i8(const int8_t *src, size_t rows, size_t columns, size_t from, size_t count, float base, float *out);
void nb_unpack_i16(const int16_t *src, size_t rows, size_t columns, size_t from, size_t count, float base, float *out);

/// Exact integer products for a few rows: acc (rows, outputs) = Σ_k x[r, k]·(base + w[o, k]),
/// x (rows, columns) integer-valued Float with |x| < 2^16, w (outputs, columns) packed Int8.
/// Sums in 32-bit integers over blocks of 128 columns, then in 64-bit: exact for any width.
/// Rows of acc are acc_stride apart (a range of outputs: pass w and acc offset to its first).
/// Returns 0, or -1 (acc untouched) when its scratch memory cannot be allocated.
int nb_int8_rows_product(const float *x, size_t rows, size_t columns, const int8_t *w, float base, size_t outputs, double *acc, size_t acc_stride);

/// acc[i] += (double)x[i] for i < n.
void nb_add_float_to_double(const float *x, size_t n, double *acc);

/// Returns the allocator's free memory to the system (glibc's malloc_trim(0)); a no-op where
/// the C library has no such call. Returns 1 when memory was released.
int nb_release_free_memory(void);


/// LoRA dropout: kept[i] = 1 unless the SplitMix64 draw at counter state + (i+1)·γ, shifted
/// right by 11, is below threshold (= ceil(p·2^53)); the draws of one nextUnit() per element.
void nb_dropout_kept(uint64_t state, uint64_t threshold, uint8_t *kept, size_t n);
/// out[i] = x[i] · (kept[i] ? keep : 0).
void nb_mask_multiply(const float *x, const uint8_t *kept, float keep, size_t n, float *out);
/// dst[i] += src[i] · (kept[i] ? keep : 0).
void nb_mask_accumulate(const float *src, const uint8_t *kept, float keep, size_t n, float *dst);
#endif
