#ifndef NB_FHE_KERNELS_H
#define NB_FHE_KERNELS_H

#include <stddef.h>
#include <stdint.h>

// Kernels of the token-packed GLWE scheme (Sources/FHE). Arithmetic is mod 2^64 on
// uint64_t (wrapping). Each kernel has an AVX2 path chosen at run time and a portable one.

/// getrandom(2): fills up to `count` bytes from the OS CSPRNG; returns the bytes written or -1.
long nb_fhe_os_random(void *buffer, size_t count);

/// glibc: keep allocations up to 1 GiB in the heap (no fresh mmap, page faults and zeroing per call).
void nb_fhe_tune_allocator(void);
/// glibc's allocator returns large buffers to the system at once (for memory-bound clients).
void nb_fhe_compact_allocator(void);
/// In a compact process (after nb_fhe_compact_allocator): peak != 0 before work with large
/// buffers (maps them per call, gives kept memory back), 0 after it (keeps buffers of up to
/// 32 MiB and 128 MiB of free heap). No effect otherwise.
void nb_fhe_compact_between_peaks(int peak);

/// 1 when the AVX2 paths run on this CPU.
int nb_fhe_has_avx2(void);

/// Splits `rows` x `columns` values (row-major, mod 2^64) into `limbs` balanced 16-bit digits
/// of their top 16*limbs bits, rounding the rest away first:
///   round(v / 2^s) = sum_t d_t 2^(16 t)  (mod 2^(64-s)),  s = 64 - 16*limbs,  d_t in [-2^15, 2^15).
/// Output layout, for the GEMM below: [limb][16-column tile][row pair][16 columns][2] as int16
/// (a row pair's two digits side by side, so one tile row pair is one 64-byte line; an odd last
/// row and the last tile's missing columns are zeros). nb_fhe_packed_limbs_count int16s.
void nb_fhe_pack_limbs(const uint64_t *values, size_t rows, size_t columns, size_t limbs, int16_t *packed);
size_t nb_fhe_packed_limbs_count(size_t rows, size_t columns, size_t limbs);
/// The same for row pairs [pair_begin, pair_end) only (threads split the pairs); `packed` must be
/// zeroed beforehand where the last tile has missing columns.
void nb_fhe_pack_limbs_range(const uint64_t *values, size_t rows, size_t columns, size_t limbs, int16_t *packed,
                             size_t pair_begin, size_t pair_end);

/// out[o][c] += sum_t 2^(s + 16 t) * sum_k w[o][k] * d_t[k][c]   (mod 2^64), s = 64 - 16*limbs,
/// for o in [o_begin, o_end). w is (O x k_padded) int16, row-major, k_padded even, |w| <= 128;
/// `packed` comes from nb_fhe_pack_limbs with rows = k (k_padded/2 pairs). Sums are exact:
/// int32 partial sums over 128 row pairs (|sum| < 2^30), then widened into 64 bits.
void nb_fhe_limb_gemm(const int16_t *w, size_t k_padded, const int16_t *packed, size_t columns, size_t limbs,
                      uint64_t *out, size_t o_begin, size_t o_end);

/// The same product for few columns (a matrix-vector product, e.g. one token per call): digits
/// laid out column-major, [limb][column][k_padded] int16 (from nb_fhe_pack_limbs_columns), and
/// vectorized along k. out is (O x columns), row-major.
void nb_fhe_limb_gemv(const int16_t *w, size_t k_padded, const int16_t *digits, size_t columns, size_t limbs,
                      uint64_t *out, size_t o_begin, size_t o_end);
/// Digits of `rows` x `columns` values (row-major) for nb_fhe_limb_gemv: [limb][column][k_padded],
/// k_padded = rows rounded up to even (the padding digit is zero).
void nb_fhe_pack_limbs_columns(const uint64_t *values, size_t rows, size_t columns, size_t limbs, int16_t *digits);

/// The same products with byte digits: `limbs` unsigned 8-bit digits of the top 8*limbs bits
/// of each value (rounded as above; the digits need no balancing, since the products only
/// matter mod 2^64) times signed 8-bit weights (every weight in [-128, 127]), on AVX-512 VNNI
/// (`vpdpbusd`, 4 products per 32-bit lane) where the CPU has it, in portable C elsewhere.
/// The results equal nb_fhe_limb_gemm's bit for bit when 8*limbs = 16*limbs16.
/// 1 when the CPU runs the VNNI kernels.
int nb_fhe_has_avx512_vnni(void);
/// Layout: [limb][16-column tile][row quad][16 columns][4] bytes (a missing row or column is 0).
size_t nb_fhe_packed_bytes_count(size_t rows, size_t columns, size_t limbs);
/// Row quads [quad_begin, quad_end) of that layout; the caller zeroes `packed` first when
/// `rows` is not a multiple of 4 or columns of 16 (the gaps are never written).
void nb_fhe_pack_bytes_range(const uint64_t *values, size_t rows, size_t columns, size_t limbs, uint8_t *packed,
                             size_t quad_begin, size_t quad_end);
/// The same layout straight from `bits`-bit values packed LSB-first (nb_fhe_pack_bits' output,
/// `in_bytes` long; bits <= 56 and 8*limbs >= bits): value v becomes the digits of
/// v << (8*limbs - bits), exactly what unpacking and nb_fhe_pack_bytes_range give.
void nb_fhe_pack_bytes_from_bits(const uint8_t *in, size_t in_bytes, unsigned bits, size_t rows, size_t columns, size_t limbs,
                                 uint8_t *packed, size_t quad_begin, size_t quad_end);
/// out[o][c] += sum_t 2^(s + 8 t) * sum_k w[o][k] * d_t[k][c]  (mod 2^64), s = 64 - 8*limbs, for
/// outputs [o_begin, o_end); w is outputs x k_padded int8 (k_padded a multiple of 4, zeros
/// after the real inputs). Exact: int32 sums over 512 inner values, then widened.
void nb_fhe_byte_gemm(const int8_t *w, size_t k_padded, const uint8_t *packed, size_t columns, size_t limbs,
                      uint64_t *out, size_t o_begin, size_t o_end);
/// Byte digits for nb_fhe_byte_gemv: [limb][column][k_padded], k_padded = rows rounded up to 4.
void nb_fhe_pack_bytes_columns(const uint64_t *values, size_t rows, size_t columns, size_t limbs, uint8_t *digits);
/// The GEMV for few columns, along the inner dimension.
void nb_fhe_byte_gemv(const int8_t *w, size_t k_padded, const uint8_t *digits, size_t columns, size_t limbs,
                      uint64_t *out, size_t o_begin, size_t o_end);

/// The online product W·u mod 2^32 (k <= 32 bits of u; the caller keeps the low k bits of each
/// result): every byte digit of u in one pass over the weights, in int32 lanes that wrap.
/// Digits of a features x columns matrix of k-bit values packed LSB-first (the wire body,
/// feature-major, `in_bytes` long), for column tiles [tile_begin, tile_end):
/// [16-column tile][feature quad][limb][16 columns][4] bytes, every byte written (gaps 0).
size_t nb_masked_digits_count(size_t features, size_t columns, size_t limbs);
void nb_masked_pack_digits(const uint8_t *in, size_t in_bytes, unsigned bits, size_t features, size_t columns, size_t limbs,
                           uint8_t *digits, size_t tile_begin, size_t tile_end);
/// out[o][c] = sum_t 2^(8t) sum_k w[o][k] d_t[k][c] mod 2^32 for outputs [o_begin, o_end), w as for
/// nb_fhe_byte_gemm (limbs 1...4; AVX-512 VNNI, or portable C).
void nb_masked_gemm32(const int8_t *w, size_t k_padded, const uint8_t *digits, size_t columns, size_t limbs,
                      uint32_t *out, size_t o_begin, size_t o_end);
/// The portable C of nb_masked_gemm32 (what runs without AVX-512 VNNI; tests compare the two).
void nb_masked_gemm32_portable(const int8_t *w, size_t k_padded, const uint8_t *digits, size_t columns, size_t limbs,
                               uint32_t *out, size_t o_begin, size_t o_end);
/// Packs the low `bits` bits (bits <= 32) of each value LSB-first into ceil(n*bits/8) bytes.
void nb_masked_pack_bits32(const uint32_t *values, size_t n, unsigned bits, uint8_t *out);

/// The masked protocol's blinding: u = (x - pad) mod 2^bits for x and pads rows x features
/// (row-major), written feature-major (value c*rows + r) and packed LSB-first at `bits` bits
/// (bits <= 56), for features [f_begin, f_end). A range may start mid-byte: the bits before it in
/// its first byte are kept, so ranges can be written one after another, or side by side
/// when every range but the last starts and ends on a byte boundary.
void nb_masked_blind_float(const float *x, const uint64_t *pads, size_t rows, size_t features, unsigned bits, uint8_t *out,
                           size_t f_begin, size_t f_end);
void nb_masked_blind_int64(const int64_t *x, const uint64_t *pads, size_t rows, size_t features, unsigned bits, uint8_t *out,
                           size_t f_begin, size_t f_end);
/// The unblinding: y[r][o] = the centred residue of (v[o][r] + wr[r][o]) mod 2^bits, for the
/// server's packed answer v (outputs x rows, `bits` bits LSB-first, packed_bytes long) and the
/// pad products wr (rows x outputs, little-endian values of `width` = 3, 4 or 8 bytes, as the
/// mask store keeps them; bits at and above `bits` are ignored), for rows [r_begin, r_end).
void nb_masked_unblind(const uint8_t *packed, size_t packed_bytes, const uint8_t *wr, unsigned width, size_t rows, size_t outputs,
                       unsigned bits, double *y, size_t r_begin, size_t r_end);

/// Keeps the top `bits` bits of each value, rounded to nearest (mod 2^64), and packs them
/// LSB-first into ceil(n*bits/8) bytes.
void nb_fhe_pack_bits(const uint64_t *values, size_t n, unsigned bits, uint8_t *out);
/// The inverse: v = x << (64 - bits).
void nb_fhe_unpack_bits(const uint8_t *in, size_t n, unsigned bits, uint64_t *values);

/// Encryption of one ciphertext row's tokens: body[k] = product[k] + noise[k] + delta * x[k * x_stride].
void nb_fhe_encode(uint64_t *body, const uint64_t *product, const int64_t *noise, const int64_t *x, size_t x_stride, size_t count,
                   uint64_t delta);
/// Decryption of one output row's tokens: v = body[k] - product[k]; out[k * out_stride] = the centred
/// round(v / 2^(64 - message_bits)) mod 2^message_bits; with errors != NULL, also errors[k * out_stride]
/// = v - delta * expected[k * out_stride] (the noise, for tests).
void nb_fhe_decode(const uint64_t *body, const uint64_t *product, size_t count, unsigned message_bits, int64_t *out, size_t out_stride);
void nb_fhe_noise(const uint64_t *body, const uint64_t *product, size_t count, unsigned message_bits, const int64_t *expected,
                  double *errors, size_t stride);

/// Rounded Gaussian samples of standard deviation sigma from uniform random words (Box-Muller,
/// two samples per word, n/2 words; n even; tails cut at 6.66 σ; σ < 2^47).
void nb_fhe_gaussian(const uint64_t *random, size_t n, double sigma, int64_t *out);

/// Exact negacyclic products mod (X^N + 1, 2^64) of 64-bit polynomials by a small integer
/// polynomial (the secret key), through double-precision FFTs (FFTW) of balanced limbs small
/// enough that every rounded coefficient is exact.
typedef struct nb_negacyclic nb_negacyclic;
/// Plans the transforms for ring degree n (a power of two >= 16). Not thread-safe.
nb_negacyclic *nb_negacyclic_create(size_t n);
/// Forgets FFTW's accumulated wisdom, so the next plan is measured anew (for tests that check
/// every plan FFTW may pick). Not thread-safe.
void nb_negacyclic_forget_wisdom(void);
void nb_negacyclic_destroy(nb_negacyclic *plan);
/// Work space for one thread: 4 * n doubles, allocated with FFTW's alignment.
double *nb_negacyclic_work(const nb_negacyclic *plan);
void nb_negacyclic_free_work(double *work);
/// The spectrum (n doubles) of a small integer polynomial, for the products below.
void nb_negacyclic_spectrum(const nb_negacyclic *plan, const int64_t *poly, double *spectrum, double *work);
/// c = a * p (mod X^n + 1, 2^64), where a's values keep their top `bits` bits (a multiple of
/// 2^(64-bits) each), split into limbs of at most `limb_bits` bits, and p has the given spectrum
/// with |p_i| <= 1. Returns the largest distance of an FFT result to its nearest integer (an
/// exactness check: below 0.5 means every coefficient was rounded to the right integer).
double nb_negacyclic_mul(const nb_negacyclic *plan, const uint64_t *a, unsigned bits, unsigned limb_bits,
                         const double *spectrum, uint64_t *c, double *work);

#endif
