/* The threads of the sampler's C (int8_native.c's int8 block, min_native.c's step): see native_pool.h.

   Each piece of work (a layer's products and cells, the head) is split into one contiguous range per thread, the
   same range for the same thread every token, so each core keeps its share of the weights in its own cache. */

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#include "native_pool.h"

#if defined(__x86_64__) || defined(__i386__)
#define PAUSE() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define PAUSE() __asm__ __volatile__("yield")
#else
#define PAUSE() ((void)0)
#endif

/* (One core's cache does not hold a 2x512 model's 3 MB of int8 weights; two cores' hold their halves.)
   Workers are started once and kept: they spin while the next piece is microseconds away, then sleep on a
   condition variable (soon after a block ends: the caller's own work, torch's threads among it, comes next). */
#define MAX_THREADS 16
#define SPIN_NS 1000000   /* a worker spins this long for the next piece of a caller's work, then sleeps; ... */
#define PARKED_NS 200000  /* ... only this long once the caller has left (pool_leave) */

static struct {
    pthread_mutex_t lock, block;  /* block: one caller at a time uses the workers */
    pthread_cond_t wake;
    atomic_long epoch;            /* pieces posted so far */
    atomic_int pending;           /* workers still on the current piece */
    atomic_int sleepers;
    atomic_int parked;            /* between blocks */
    int workers;                  /* started */
    part_fn fn;                   /* the current piece: fn(ctx, part's range of 0..total), `parts` parts */
    const void *ctx;
    int64_t total;
    int parts;
    long born[MAX_THREADS];       /* the epoch when worker i started: the pieces it is to take come after it */
} pool = {.lock = PTHREAD_MUTEX_INITIALIZER, .block = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

static inline int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* A busy machine: where workers finish their parts LATE_NS after the caller finished its own three pieces in a row
   (the OS gave their cores to another process; one late piece is a worker waking from sleep), every piece for the
   next SOLO_NS runs on the calling thread alone, then several are tried again. With one core of two taken by
   another process, waiting on the workers had cost one stream 3-4x its speed. */
#define LATE_NS 200000
#define SOLO_NS 200000000
static atomic_llong solo_until;
static atomic_int lates;

static int threads_now(int threads) { return now_ns() < atomic_load(&solo_until) ? 1 : threads; }

static void waited(int64_t ns) {
    if (ns <= LATE_NS) {
        atomic_store(&lates, 0);
    } else if (atomic_fetch_add(&lates, 1) + 1 >= 3) {
        atomic_store(&lates, 0);
        atomic_store(&solo_until, now_ns() + SOLO_NS);
    }
}

static void *worker(void *arg) {
    const int part = (int)(intptr_t)arg + 1;  /* the caller's thread does part 0 */
    long seen = pool.born[part - 1];  /* not 0: a worker started late must not take an old piece, long done */
    for (;;) {
        long e;
        int64_t since = now_ns();
        for (int spins = 0; (e = atomic_load(&pool.epoch)) == seen; spins++) {
            if (spins % 64 || now_ns() - since < (atomic_load(&pool.parked) ? PARKED_NS : SPIN_NS)) {
                PAUSE();
                continue;
            }
            pthread_mutex_lock(&pool.lock);
            atomic_fetch_add(&pool.sleepers, 1);
            while (atomic_load(&pool.epoch) == seen) pthread_cond_wait(&pool.wake, &pool.lock);
            atomic_fetch_sub(&pool.sleepers, 1);
            pthread_mutex_unlock(&pool.lock);
            since = now_ns();
        }
        seen = e;
        if (part < pool.parts) pool.fn(pool.ctx, pool.total * part / pool.parts, pool.total * (part + 1) / pool.parts);
        atomic_fetch_sub(&pool.pending, 1);
    }
    return NULL;
}

static void forked_child(void) {  /* a fork's child has this thread alone, and maybe a lock a parent's thread held */
    pool.workers = 0;
    pthread_mutex_init(&pool.lock, NULL);
    pthread_mutex_init(&pool.block, NULL);
    pthread_cond_init(&pool.wake, NULL);
    atomic_store(&pool.sleepers, 0);
}

/* Start workers until threads - 1 run (at most MAX_THREADS - 1); returns the threads that will work (this one
   included). Called with pool.block held. */
static int start_workers(int threads) {
    static int hooked;
    if (!hooked) hooked = !pthread_atfork(NULL, NULL, forked_child);
    threads = threads < 1 ? 1 : threads > MAX_THREADS ? MAX_THREADS : threads;
    while (pool.workers < threads - 1) {
        pthread_t t;
        pool.born[pool.workers] = atomic_load(&pool.epoch);  /* (no piece is in flight while pool.block is held) */
        if (pthread_create(&t, NULL, worker, (void *)(intptr_t)pool.workers)) break;
        pthread_detach(t);
        pool.workers++;
    }
    return threads < pool.workers + 1 ? threads : pool.workers + 1;
}

/* torch's own OpenMP runtime, when charnn.models.native found it (pool_use_openmp), for the team_ functions: torch's
   workers spin for a while after every torch operation, so where torch runs between calls (a token at a time,
   the Batcher's draw between), workers of our own share the cores with them: one stream of a minGRU sampled at
   7,800 chars/s on our workers, 19,300 on torch's (2-core Zen 4 EPYC). The int8 block (a block of tokens per
   call) keeps the pool: 2x512 int8 LSTM 34,000-38,000 chars/s on it, 31,000-36,000 on torch's team. */
typedef struct {
    void (*parallel)(void (*)(void *), void *, unsigned, unsigned);  /* GOMP_parallel; NULL: the pool's workers */
    int (*thread_num)(void), (*num_threads)(void);
} openmp_t;

static openmp_t openmp;                /* what pool_use_openmp set */
static _Thread_local openmp_t entered; /* what this thread's team_enter found: its team_run and team_leave use that,
                                          whatever pool_use_openmp does meanwhile */

static void forked_child_openmp(void) { openmp.parallel = NULL; }  /* a fork's child: the parent's OpenMP team is
                                                                     gone (a step there would hang); the pool's */
void pool_use_openmp(void *parallel, void *thread_num, void *num_threads) {
    static int hooked;
    if (!hooked) hooked = !pthread_atfork(NULL, NULL, forked_child_openmp);
    openmp = (openmp_t){parallel, thread_num, num_threads};
    if (!thread_num || !num_threads) openmp.parallel = NULL;
}

typedef struct { part_fn fn; const void *ctx; int64_t total; const openmp_t *omp; int64_t own_done; } team_t;

static void team_part(void *arg) {
    team_t *t = arg;
    const int64_t i = t->omp->thread_num(), k = t->omp->num_threads();  /* (the team may be smaller than asked) */
    t->fn(t->ctx, t->total * i / k, t->total * (i + 1) / k);
    if (i == 0) t->own_done = now_ns();  /* the calling thread's part */
}

void run_parts(part_fn fn, const void *ctx, int64_t total, int threads) {
    if (threads <= 1) { fn(ctx, 0, total); return; }
    pool.fn = fn;
    pool.ctx = ctx;
    pool.total = total;
    pool.parts = threads;
    atomic_store(&pool.pending, pool.workers);
    atomic_fetch_add(&pool.epoch, 1);
    if (atomic_load(&pool.sleepers)) {
        pthread_mutex_lock(&pool.lock);
        pthread_cond_broadcast(&pool.wake);
        pthread_mutex_unlock(&pool.lock);
    }
    fn(ctx, 0, total / threads);
    const int64_t since = now_ns();
    for (long spins = 1; atomic_load(&pool.pending) > 0; spins++)  /* after a while, a worker the OS has not run */
        if (spins % 64 || now_ns() - since < SPIN_NS) PAUSE(); else sched_yield();  /* yet gets the core */
    waited(now_ns() - since);
}

int pool_enter(int threads) {
    pthread_mutex_lock(&pool.block);
    threads = start_workers(threads_now(threads));
    atomic_store(&pool.parked, 0);
    return threads;
}

void pool_leave(void) {
    atomic_store(&pool.parked, 1);
    pthread_mutex_unlock(&pool.block);
}

int team_enter(int threads) {
    entered = openmp;
    if (!entered.parallel) return pool_enter(threads);
    threads = threads_now(threads);
    return threads < 1 ? 1 : threads > MAX_THREADS ? MAX_THREADS : threads;
}

void team_run(part_fn fn, const void *ctx, int64_t total, int threads) {
    if (!entered.parallel || threads <= 1) { run_parts(fn, ctx, total, threads); return; }
    team_t t = {fn, ctx, total, &entered, 0};
    entered.parallel(team_part, (void *)&t, (unsigned)threads, 0);
    waited(now_ns() - t.own_done);
}

void team_leave(void) {
    if (!entered.parallel) pool_leave();
}
