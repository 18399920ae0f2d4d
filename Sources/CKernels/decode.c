// Matrix-vector products for decoding one token, on weights kept in the formats they are
// stored in (IEEE half, or GGML's Q8_0 / Q4_0 / Q4_1 blocks of 32), and a small pool of
// spinning threads that shares each product's rows between the cores.
//
// Decoding is bound by how many bytes of weights are read per token, so a 4-bit block
// (20 bytes for 32 weights) is read about 3× faster than the same weights in half
// precision. The products are exact over the stored weights: each block's weights are the
// ones dequantization gives (d·q, or d·q + m), and only the order of the float sums differs
// from a Float32 product over the dequantized matrix.
#include "nb_kernels.h"
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

// ---------------------------------------------------------------------------------------
// Scalar reference kernels (any CPU), also the tails of the vector ones.

static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1F, m = h & 0x3FF, bits;
    if (e == 0) {
        if (m == 0) bits = sign;
        else {  // subnormal: normalize
            int shift = 0;
            while (!(m & 0x400)) { m <<= 1; shift++; }
            bits = sign | ((uint32_t)(113 - shift) << 23) | ((m & 0x3FF) << 13);
        }
    } else if (e == 31) bits = sign | 0x7F800000u | (m << 13);
    else bits = sign | ((e + 112) << 23) | (m << 13);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static uint16_t load_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static float dot_row_scalar(int format, const uint8_t *row, const float *x, size_t k) {
    float s = 0;
    switch (format) {
    case NB_DECODE_F16:
        for (size_t i = 0; i < k; i++) s += half_to_float(load_u16(row + 2 * i)) * x[i];
        break;
    case NB_DECODE_Q8_0:
        for (size_t b = 0; b < k / 32; b++) {
            const uint8_t *blk = row + 34 * b;
            float d = half_to_float(load_u16(blk));
            for (int j = 0; j < 32; j++) s += d * (float)(int8_t)blk[2 + j] * x[32 * b + j];
        }
        break;
    case NB_DECODE_Q4_0:
        for (size_t b = 0; b < k / 32; b++) {
            const uint8_t *blk = row + 18 * b;
            float d = half_to_float(load_u16(blk));
            for (int j = 0; j < 16; j++) {
                s += d * (float)((int)(blk[2 + j] & 0x0F) - 8) * x[32 * b + j];
                s += d * (float)((int)(blk[2 + j] >> 4) - 8) * x[32 * b + j + 16];
            }
        }
        break;
    case NB_DECODE_Q4_1:
        for (size_t b = 0; b < k / 32; b++) {
            const uint8_t *blk = row + 20 * b;
            float d = half_to_float(load_u16(blk)), m = half_to_float(load_u16(blk + 2));
            for (int j = 0; j < 16; j++) {
                s += (d * (float)(blk[4 + j] & 0x0F) + m) * x[32 * b + j];
                s += (d * (float)(blk[4 + j] >> 4) + m) * x[32 * b + j + 16];
            }
        }
        break;
    }
    return s;
}

size_t nb_decode_row_bytes(int format, size_t k) {
    switch (format) {
    case NB_DECODE_F16: return 2 * k;
    case NB_DECODE_Q8_0: return k / 32 * 34;
    case NB_DECODE_Q4_0: return k / 32 * 18;
    case NB_DECODE_Q4_1: return k / 32 * 20;
    default: return 0;
    }
}

static void gemv_rows_scalar(const nb_gemv_job *j, size_t r0, size_t r1) {
    size_t rb = nb_decode_row_bytes(j->format, j->k);
    for (size_t r = r0; r < r1; r++) {
        float s = dot_row_scalar(j->format, j->w + r * rb, j->x, j->k);
        j->y[r] = j->accumulate ? j->y[r] + s : s;
    }
}

// ---------------------------------------------------------------------------------------
// AVX2 + FMA + F16C kernels.

#if defined(__x86_64__)
#define NB_AVX2 __attribute__((target("avx2,fma,f16c")))

NB_AVX2 static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// Half precision, one row at a time: each row is one contiguous stream, which the
// hardware prefetchers follow best (interleaving four rows measured 30 % slower here);
// x stays in L1.
NB_AVX2 static void gemv_f16_rows(const nb_gemv_job *j, size_t r0, size_t r1) {
    const uint16_t *w = (const uint16_t *)j->w;
    const float *x = j->x;
    size_t k = j->k, k32 = k & ~(size_t)31, k8 = k & ~(size_t)7;
    for (size_t r = r0; r < r1; r++) {
        const uint16_t *a = w + r * k;
        __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
        size_t i = 0;
        for (; i < k32; i += 32) {
            s0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i))), _mm256_loadu_ps(x + i), s0);
            s1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i + 8))), _mm256_loadu_ps(x + i + 8), s1);
            s2 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i + 16))), _mm256_loadu_ps(x + i + 16), s2);
            s3 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i + 24))), _mm256_loadu_ps(x + i + 24), s3);
        }
        for (; i < k8; i += 8)
            s0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i))), _mm256_loadu_ps(x + i), s0);
        float s = hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
        for (; i < k; i++) s += half_to_float(a[i]) * x[i];
        j->y[r] = j->accumulate ? j->y[r] + s : s;
    }
}

// Eight int8 (or uint8) values at p, as floats.
NB_AVX2 static inline __m256 i8x8(const void *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

// Q8_0: per block d·Σ q·x, one row at a time (one contiguous stream).
NB_AVX2 static void gemv_q8_0_rows(const nb_gemv_job *j, size_t r0, size_t r1) {
    size_t nb = j->k / 32, rb = nb * 34;
    const float *x = j->x;
    for (size_t r = r0; r < r1; r++) {
        const uint8_t *a = j->w + r * rb;
        __m256 t0 = _mm256_setzero_ps(), t1 = t0;
        for (size_t blk = 0; blk < nb; blk++, a += 34) {
            const float *xb = x + 32 * blk;
            __m256 p = _mm256_mul_ps(i8x8(a + 2), _mm256_loadu_ps(xb)), q = _mm256_mul_ps(i8x8(a + 10), _mm256_loadu_ps(xb + 8));
            p = _mm256_fmadd_ps(i8x8(a + 18), _mm256_loadu_ps(xb + 16), p);
            q = _mm256_fmadd_ps(i8x8(a + 26), _mm256_loadu_ps(xb + 24), q);
            __m256 d = _mm256_set1_ps(_cvtsh_ss(load_u16(a)));
            if (blk & 1) t1 = _mm256_fmadd_ps(d, _mm256_add_ps(p, q), t1);
            else t0 = _mm256_fmadd_ps(d, _mm256_add_ps(p, q), t0);
        }
        float s = hsum(_mm256_add_ps(t0, t1));
        j->y[r] = j->accumulate ? j->y[r] + s : s;
    }
}

// The 32 nibbles of a Q4 block as floats: low nibbles are elements 0…15, high 16…31.
NB_AVX2 static inline void nibbles(const uint8_t *qs, __m256 *v) {
    __m128i q = _mm_loadu_si128((const __m128i *)qs), mask = _mm_set1_epi8(0x0F);
    __m128i lo = _mm_and_si128(q, mask), hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
    v[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
    v[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
    v[2] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
    v[3] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
}

// Q4_0 and Q4_1: Σ_blocks d·Σ q·x + (Q4_1: m, Q4_0: −8d)·Σx, with each block's Σx computed
// once per product (it is the same for every row).
NB_AVX2 static void gemv_q4_rows(const nb_gemv_job *j, size_t r0, size_t r1, const float *xsum) {
    int q41 = j->format == NB_DECODE_Q4_1;
    size_t nb = j->k / 32, bb = q41 ? 20 : 18, rb = nb * bb;
    const float *x = j->x;
    for (size_t r = r0; r < r1; r++) {
        const uint8_t *blk = j->w + r * rb;
        __m256 t0 = _mm256_setzero_ps(), t1 = t0;
        float offset = 0;
        for (size_t b = 0; b < nb; b++, blk += bb) {
            const float *xb = x + 32 * b;
            __m256 v[4];
            nibbles(blk + (q41 ? 4 : 2), v);
            __m256 p = _mm256_mul_ps(v[0], _mm256_loadu_ps(xb)), q = _mm256_mul_ps(v[1], _mm256_loadu_ps(xb + 8));
            p = _mm256_fmadd_ps(v[2], _mm256_loadu_ps(xb + 16), p);
            q = _mm256_fmadd_ps(v[3], _mm256_loadu_ps(xb + 24), q);
            float d = _cvtsh_ss(load_u16(blk));
            if (b & 1) t1 = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_add_ps(p, q), t1);
            else t0 = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_add_ps(p, q), t0);
            offset += (q41 ? _cvtsh_ss(load_u16(blk + 2)) : -8 * d) * xsum[b];
        }
        float s = hsum(_mm256_add_ps(t0, t1)) + offset;
        j->y[r] = j->accumulate ? j->y[r] + s : s;
    }
}
#endif

static int fast_cpu(void) {
    static int fast = -1;
    if (fast < 0) fast = nb_cpu_has_avx2_fma_f16c();
    return fast;
}

// Rows [r0, r1) of one product; xsum: per-block sums of x (Q4 formats).
static void gemv_rows(const nb_gemv_job *j, size_t r0, size_t r1, const float *xsum) {
    if (r0 >= r1) return;
#if defined(__x86_64__)
    if (fast_cpu()) {
        switch (j->format) {
        case NB_DECODE_F16: gemv_f16_rows(j, r0, r1); return;
        case NB_DECODE_Q8_0: gemv_q8_0_rows(j, r0, r1); return;
        case NB_DECODE_Q4_0: case NB_DECODE_Q4_1: gemv_q4_rows(j, r0, r1, xsum); return;
        }
    }
#endif
    (void)xsum;
    gemv_rows_scalar(j, r0, r1);
}

// ---------------------------------------------------------------------------------------
// The pool: each batch is cut into tasks (runs of rows of one product); the caller and
// (cores − 1) workers take tasks from a shared counter until none is left. A worker that
// is not running (the cores are busy with other work) simply takes none: the caller never
// waits for a task nobody has started. Workers spin for a short while after each batch (a
// token's products follow each other within microseconds), then sleep.

#define NB_MAX_THREADS 16
#define NB_MAX_JOBS 8
#define NB_MAX_TASKS 64
#define NB_MAX_BLOCKS 2048  // per-block x sums: k up to 65,536

typedef struct { int job; size_t r0, r1; } task;

static struct {
    pthread_once_t once;
    int threads;  // workers + the caller
    pthread_mutex_t lock;
    pthread_cond_t wake;
    _Atomic uint64_t generation;
    // The next task to take: batch (bits 40…63) | task count (20…39) | next index (0…19).
    // A claim is a compare-and-swap that checks the batch, so a late worker can never take
    // a task of a batch that is being set up.
    _Atomic uint64_t next;
    _Atomic int finished;  // tasks done
    _Atomic int sleeping;
    const nb_gemv_job *jobs;
    int tasks;
    task task[NB_MAX_TASKS];
    float xsum[NB_MAX_JOBS][NB_MAX_BLOCKS];
} pool = {.once = PTHREAD_ONCE_INIT, .lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

static inline void cpu_relax(void) {
#if defined(__x86_64__)
    _mm_pause();
#endif
}

// Takes and runs tasks of batch `batch` until none is left.
static void take_tasks(uint64_t batch) {
    uint64_t v = atomic_load_explicit(&pool.next, memory_order_acquire);
    for (;;) {
        if (v >> 40 != (batch & 0xFFFFFF) || (v & 0xFFFFF) >= ((v >> 20) & 0xFFFFF)) return;
        if (!atomic_compare_exchange_weak_explicit(&pool.next, &v, v + 1, memory_order_acq_rel, memory_order_acquire)) continue;
        const task *k = &pool.task[v & 0xFFFFF];
        gemv_rows(&pool.jobs[k->job], k->r0, k->r1, pool.xsum[k->job]);
        atomic_fetch_add_explicit(&pool.finished, 1, memory_order_acq_rel);
        v = atomic_load_explicit(&pool.next, memory_order_acquire);
    }
}

static void *worker(void *arg) {
    (void)arg;
    uint64_t seen = 0;
    for (;;) {
        uint64_t g;
        int spins = 0;
        while ((g = atomic_load_explicit(&pool.generation, memory_order_acquire)) == seen) {
            if (++spins < 4000) { cpu_relax(); continue; }  // some tens of microseconds
            if (spins < 4100) { sched_yield(); continue; }
            pthread_mutex_lock(&pool.lock);
            atomic_fetch_add(&pool.sleeping, 1);
            while (atomic_load(&pool.generation) == seen)  // sequentially consistent with the caller's
                pthread_cond_wait(&pool.wake, &pool.lock);
            atomic_fetch_sub(&pool.sleeping, 1);
            pthread_mutex_unlock(&pool.lock);
            spins = 0;
        }
        seen = g;
        take_tasks(g);
    }
    return NULL;
}

static void start_pool(void) {
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    pool.threads = cores < 1 ? 1 : cores > NB_MAX_THREADS ? NB_MAX_THREADS : (int)cores;
    for (int t = 1; t < pool.threads; t++) {
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int failed = pthread_create(&th, &attr, worker, NULL);
        pthread_attr_destroy(&attr);
        if (failed) { pool.threads = t; break; }
    }
}

int nb_decode_threads(void) {
    pthread_once(&pool.once, start_pool);
    return pool.threads;
}

static pthread_mutex_t callers = PTHREAD_MUTEX_INITIALIZER;

static int is_q4(int format) { return format == NB_DECODE_Q4_0 || format == NB_DECODE_Q4_1; }

static void block_sums(const nb_gemv_job *j, float *xsum) {
    for (size_t b = 0; b < j->k / 32; b++) {
        float s = 0;
        for (int e = 0; e < 32; e++) s += j->x[32 * b + e];
        xsum[b] = s;
    }
}

void nb_gemv_batch(const nb_gemv_job *jobs, int count) {
    if (count <= 0) return;
    pthread_once(&pool.once, start_pool);
    pthread_mutex_lock(&callers);  // one batch at a time (two models decoding on two threads take turns)
    int fits = count <= NB_MAX_JOBS;
    for (int i = 0; i < count && fits; i++)
        if (is_q4(jobs[i].format) && jobs[i].k / 32 > NB_MAX_BLOCKS) fits = 0;
    if (!fits) {  // outside the pool's tables: one thread, scalar Q4
        for (int i = 0; i < count; i++) {
            if (is_q4(jobs[i].format)) gemv_rows_scalar(&jobs[i], 0, jobs[i].rows);
            else gemv_rows(&jobs[i], 0, jobs[i].rows, NULL);
        }
        pthread_mutex_unlock(&callers);
        return;
    }
    // Tasks of about 1/16 of the batch's weights each, in whole groups of 4 rows.
    size_t total = 0;
    for (int i = 0; i < count; i++) total += jobs[i].rows * jobs[i].k;
    size_t target = total / 16 + 1;
    int n = 0;
    for (int i = 0; i < count; i++) {
        const nb_gemv_job *j = &jobs[i];
        if (is_q4(j->format)) block_sums(j, pool.xsum[i]);
        size_t rows = (target / (j->k ? j->k : 1) + 3) & ~(size_t)3;
        if (rows < 4) rows = 4;
        size_t pieces = (j->rows + rows - 1) / rows, room = (size_t)(NB_MAX_TASKS - (count - 1 - i) - n);
        if (pieces > room) rows = ((j->rows + room - 1) / room + 3) & ~(size_t)3;
        for (size_t r = 0; r < j->rows; r += rows)
            pool.task[n++] = (task){i, r, r + rows < j->rows ? r + rows : j->rows};
    }
    pool.jobs = jobs;
    pool.tasks = n;
    atomic_store_explicit(&pool.finished, 0, memory_order_relaxed);
    uint64_t batch = atomic_load(&pool.generation) + 1;
    atomic_store_explicit(&pool.next, ((batch & 0xFFFFFF) << 40) | ((uint64_t)n << 20), memory_order_release);
    atomic_store(&pool.generation, batch);  // then read `sleeping`: both sequentially consistent
    // Small batches are not worth waking a sleeper for (a spinning worker may still help).
    if (total >= 65536 && atomic_load(&pool.sleeping) > 0) {
        pthread_mutex_lock(&pool.lock);
        pthread_cond_broadcast(&pool.wake);
        pthread_mutex_unlock(&pool.lock);
    }
    take_tasks(batch);
    // Only tasks a worker has started remain: wait for them.
    for (int spins = 0; atomic_load_explicit(&pool.finished, memory_order_acquire) < n; spins++) {
        if (spins < 2000) cpu_relax();
        else sched_yield();
    }
    pthread_mutex_unlock(&callers);
}

void nb_gemv_rows_reference(const nb_gemv_job *job) { gemv_rows_scalar(job, 0, job->rows); }
