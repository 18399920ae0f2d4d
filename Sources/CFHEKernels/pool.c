#define _GNU_SOURCE
#include "nb_pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define NB_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define NB_RELAX() __asm__ __volatile__("yield")
#else
#define NB_RELAX() ((void)0)
#endif

// How long a thread polls for the next loop before it sleeps, and how long the caller polls for
// the threads still in a loop before it yields its core between polls.
enum { MAX_WORKERS = 63, SPIN_NS = 50000, WAIT_SPIN_NS = 20000 };

// The gate of the current loop: (sequence << 21) | open << 20 | threads inside. A thread may
// enter only while the gate is open, by a compare-and-swap on the whole word (so never into a
// loop other than the one it read); the caller closes it when every index is taken and returns
// when the count inside is 0, so no thread reads a loop's fields after its caller returned.
#define OPEN_BIT (1ULL << 20)
#define INSIDE_MASK (OPEN_BIT - 1)

static pthread_once_t started = PTHREAD_ONCE_INIT;
static size_t workers = 0;
static pthread_mutex_t owner = PTHREAD_MUTEX_INITIALIZER;  // held by the caller whose loop runs
static pthread_mutex_t sleep_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static _Atomic uint64_t posted = 0;  // sequence of the latest loop (what sleeping threads wait on)
static _Atomic int sleepers = 0;
static _Atomic uint64_t gate = 0;
static _Atomic size_t next_index = 0;
// The loop: written by its caller (holding `owner`) before the gate opens.
static nb_pool_task loop_task;
static void *loop_context;
static size_t loop_count;
static uint64_t sequence = 0;
static __thread int pool_thread = 0;

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static void take_indices(nb_pool_task task, void *context, size_t count) {
    for (;;) {
        const size_t i = atomic_fetch_add_explicit(&next_index, 1, memory_order_relaxed);
        if (i >= count) return;
        task(context, i);
    }
}

static void *worker_main(void *unused) {
    (void)unused;
    pool_thread = 1;
    uint64_t seen = 0;
    for (;;) {
        uint64_t s = atomic_load_explicit(&posted, memory_order_acquire);
        if (s == seen) {
            const uint64_t start = now_ns();
            unsigned polls = 0;
            while ((s = atomic_load_explicit(&posted, memory_order_acquire)) == seen) {
                NB_RELAX();
                if (++polls % 64 == 0 && now_ns() - start > SPIN_NS) break;
            }
            if (s == seen) {
                // Counted as asleep before the last look at `posted` (both sequentially
                // consistent), so a caller that posts after that look sees the sleeper and wakes it.
                pthread_mutex_lock(&sleep_lock);
                atomic_fetch_add(&sleepers, 1);
                while ((s = atomic_load(&posted)) == seen) pthread_cond_wait(&wake, &sleep_lock);
                atomic_fetch_sub(&sleepers, 1);
                pthread_mutex_unlock(&sleep_lock);
            }
        }
        seen = s;
        uint64_t g = atomic_load_explicit(&gate, memory_order_acquire);
        int inside = 0;
        while (g & OPEN_BIT) {
            if (atomic_compare_exchange_weak_explicit(&gate, &g, g + 1, memory_order_acq_rel, memory_order_acquire)) {
                inside = 1;
                break;
            }
        }
        if (!inside) continue;
        take_indices(loop_task, loop_context, loop_count);
        atomic_fetch_sub_explicit(&gate, 1, memory_order_release);
    }
    return NULL;
}

static void start_workers(void) {
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    size_t wanted = cores > 1 ? (size_t)(cores - 1) : 0;
    if (wanted > MAX_WORKERS) wanted = MAX_WORKERS;
    for (size_t i = 0; i < wanted; i++) {
        pthread_t thread;
        pthread_attr_t attributes;
        pthread_attr_init(&attributes);
        pthread_attr_setdetachstate(&attributes, PTHREAD_CREATE_DETACHED);
        const int failed = pthread_create(&thread, &attributes, worker_main, NULL);
        pthread_attr_destroy(&attributes);
        if (failed) break;
        workers++;
    }
}

size_t nb_pool_workers(void) { return workers; }

int nb_pool_run(size_t count, nb_pool_task task, void *context) {
    if (count == 0) return 1;
    if (pool_thread) return 0;
    pthread_once(&started, start_workers);
    if (workers == 0) return 0;
    if (pthread_mutex_trylock(&owner) != 0) return 0;
    loop_task = task;
    loop_context = context;
    loop_count = count;
    atomic_store_explicit(&next_index, 0, memory_order_relaxed);
    sequence++;
    atomic_store_explicit(&gate, (sequence << 21) | OPEN_BIT, memory_order_release);
    atomic_store(&posted, sequence);
    if (atomic_load(&sleepers) > 0) {
        pthread_mutex_lock(&sleep_lock);
        pthread_cond_broadcast(&wake);
        pthread_mutex_unlock(&sleep_lock);
    }
    take_indices(task, context, count);
    atomic_fetch_and_explicit(&gate, ~OPEN_BIT, memory_order_acq_rel);
    if (atomic_load_explicit(&gate, memory_order_acquire) & INSIDE_MASK) {
        const uint64_t start = now_ns();
        unsigned polls = 0;
        while (atomic_load_explicit(&gate, memory_order_acquire) & INSIDE_MASK) {
            NB_RELAX();
            // A thread inside may have lost its core: give ours up between polls after a while.
            if (++polls % 64 == 0 && now_ns() - start > WAIT_SPIN_NS) sched_yield();
        }
    }
    pthread_mutex_unlock(&owner);
    return 1;
}
