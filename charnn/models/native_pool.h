/* The sampler's threads (pool_native.c), shared by its C files: a piece of work split over the threads torch is
   given, one contiguous range of 0..total per thread. */

#ifndef CHARNN_NATIVE_POOL_H
#define CHARNN_NATIVE_POOL_H

#include <stdint.h>

typedef void (*part_fn)(const void *ctx, int64_t from, int64_t to);

/* Take the pool for one caller (others wait) with workers started up to `threads` - 1; returns the threads that
   will work, this one included. */
int pool_enter(int threads);
/* fn over 0..total in `threads` parts at once (threads as pool_enter returned, or fewer): this thread does part 0,
   worker i part i + 1; back when all are. */
void run_parts(part_fn fn, const void *ctx, int64_t total, int threads);
/* Give the pool back: its workers spin a little longer for the next caller, then sleep. */
void pool_leave(void);
/* The same three on torch's own OpenMP threads where charnn.models.native found them (pool_use_openmp), else the
   pool's: for callers between whose calls torch runs (one token per call). */
int team_enter(int threads);
void team_run(part_fn fn, const void *ctx, int64_t total, int threads);
void team_leave(void);

#endif
