#ifndef NB_FHE_KERNELS_H
#define NB_FHE_KERNELS_H

#include <stddef.h>
#include <stdint.h>

// Kernels of the token-packed GLWE scheme (Sources/FHE). Arithmetic is mod 2^64 on
// uint64_t (wrapping). Each kernel has an AVX2 path chosen at run time and a portable one.

/// getrandom(2): fills up to `count` bytes from the OS CSPRNG; returns the bytes written or -1.
long nb_fhe_os_random(void *buffer, size_t count);

/// 1 when the AVX2 paths run on this CPU.
int nb_fhe_has_avx2(void);

/// Splits `rows` x `columns` values (row-major, mod 2^64) into `limbs` balanced 16-bit digits
/// of their top 16*limbs bits, rounding the rest away first:
///   round(v / 2^s) = sum_t d_t 2^(16 t)  (mod 2^(64-s)),  s = 64 - 16*limbs,  d_t in [-2^15, 2^15).
/// Output layout, for the GEMM below: [limb][row pair][column][2] as int16 (a row pair's
/// two digits side by side; an odd last row is paired with zeros).
void nb_fhe_pack_limbs(const uint64_t *values, size_t rows, size_t columns, size_t limbs, int16_t *packed);

/// out[o][c] += sum_t 2^(s + 16 t) * sum_k w[o][k] * d_t[k][c]   (mod 2^64), s = 64 - 16*limbs,
/// for o in [o_begin, o_end). w is (O x k_padded) int16, row-major, k_padded even, |w| <= 128;
/// `packed` comes from nb_fhe_pack_limbs with rows = k (k_padded/2 pairs). Sums are exact:
/// int32 partial sums over 128 row pairs (|sum| < 2^30), then widened into 64 bits.
void nb_fhe_limb_gemm(const int16_t *w, size_t k_padded, const int16_t *packed, size_t columns, size_t limbs,
                      uint64_t *out, size_t o_begin, size_t o_end);

/// Keeps the top `bits` bits of each value, rounded to nearest (mod 2^64), and packs them
/// LSB-first into ceil(n*bits/8) bytes.
void nb_fhe_pack_bits(const uint64_t *values, size_t n, unsigned bits, uint8_t *out);
/// The inverse: v = x << (64 - bits).
void nb_fhe_unpack_bits(const uint8_t *in, size_t n, unsigned bits, uint64_t *values);

/// Rounded Gaussian samples of standard deviation sigma from uniform random words (Box-Muller,
/// two samples per two words; n even).
void nb_fhe_gaussian(const uint64_t *random, size_t n, double sigma, int64_t *out);

/// Exact negacyclic products mod (X^N + 1, 2^64) of 64-bit polynomials by a small integer
/// polynomial (the secret key), through double-precision FFTs (FFTW) of balanced limbs small
/// enough that every rounded coefficient is exact.
typedef struct nb_negacyclic nb_negacyclic;
/// Plans the transforms for ring degree n (a power of two >= 16). Not thread-safe.
nb_negacyclic *nb_negacyclic_create(size_t n);
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
