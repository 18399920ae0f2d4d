#ifndef NB_POOL_H
#define NB_POOL_H

#include <stddef.h>

/// A fork-join pool for the kernels' short parallel loops: one thread per extra core, which
/// polls for the next loop for a few tens of microseconds after each one before it sleeps, so
/// back-to-back loops (an encrypted call's passes, a generated token's 200 calls) do not each
/// pay a thread wake-up.
///
/// Runs task(context, i) for every i in [0, count), on the calling thread and the pool's
/// threads, and returns when all have returned. Returns 0 without running anything when the
/// pool is busy (another thread's loop, or a loop nested in one of its tasks) or cannot start
/// its threads: the caller then runs the loop some other way.
typedef void (*nb_pool_task)(void *context, size_t index);
int nb_pool_run(size_t count, nb_pool_task task, void *context);

/// The threads the pool runs beside the caller (0 until its first loop).
size_t nb_pool_workers(void);

#endif
