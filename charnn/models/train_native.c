/* Training's elementwise work on a CPU, in C (charnn.models.fused): dropout whose mask is a hash of its position
   (so the backward makes it again instead of keeping it), and the minGRU / minLSTM recurrence over a whole window,
   forward and backward, each one pass over the data.

   Why: on a CPU torch draws a dropout mask at about 5 ns per number (bernoulli_, one generator), which was a third
   of a minGRU training step at batch 64; and the recurrence in torch ops is tens of passes over (B, T, S) tensors.
   Here the recurrence runs step by step along T, a block of lanes (one batch row b, up to 256 of its S units) at
   a time, the blocks split over the threads: each number is read and written once, and the backward recomputes a
   block's states into scratch of its own rather than storing them in the forward.

   Tensors are float32 or bfloat16 (`bf16`: every (B, T, .) tensor of a call in bfloat16, rounded to nearest even;
   states h0, last and their gradients always float32). Plain C that the compiler vectorises; no intrinsics. */

#include <pthread.h>
#include "native_train.h"

struct piece { piece_fn fn; void *job; int64_t lo, hi; };

static void *run_piece(void *arg) {
    struct piece *p = arg;
    p->fn(p->job, p->lo, p->hi);
    return NULL;
}

/* torch's own OpenMP runtime, when charnn.models.native found it (use_openmp): its worker threads still spin for a
   while after every torch operation, so threads of our own started then share the cores with them (dropout of a
   batch-8 window took 0.77 ms after a matrix product instead of 0.12); a team of torch's threads does not. */
static void (*gomp_parallel)(void (*)(void *), void *, unsigned, unsigned);
static int (*omp_thread_num)(void), (*omp_num_threads)(void);

void use_openmp(void *parallel, void *thread_num, void *num_threads) {
    gomp_parallel = parallel;
    omp_thread_num = thread_num;
    omp_num_threads = num_threads;
}

struct team { piece_fn fn; void *job; int64_t n; };

static void team_piece(void *arg) {
    const struct team *t = arg;
    int64_t i = omp_thread_num(), k = omp_num_threads();  /* (the team may be smaller than asked for) */
    t->fn(t->job, t->n * i / k, t->n * (i + 1) / k);
}

/* fn(job, lo, hi) over [0, n) in up to `threads` parts: by a team of torch's OpenMP threads where there is one,
   else by threads started here, the calling thread doing the first part (a thread that cannot be started has its
   part done here). No state is kept between calls. */
void train_split(piece_fn fn, void *job, int64_t n, int threads) {
    enum { MAX = 64 };
    threads = threads < 1 ? 1 : threads > MAX ? MAX : threads;
    if (threads > n) threads = (int)(n > 0 ? n : 1);
    if (threads == 1) {
        fn(job, 0, n);
        return;
    }
    if (gomp_parallel) {
        struct team t = {fn, job, n};
        gomp_parallel(team_piece, &t, (unsigned)threads, 0);
        return;
    }
    struct piece parts[MAX];
    pthread_t ids[MAX];
    int started[MAX] = {0};
    for (int i = 0; i < threads; i++) {
        parts[i] = (struct piece){fn, job, n * i / threads, n * (i + 1) / threads};
        if (i > 0) started[i] = pthread_create(&ids[i], NULL, run_piece, &parts[i]) == 0;
    }
    fn(job, parts[0].lo, parts[0].hi);
    for (int i = 1; i < threads; i++) {
        if (started[i]) pthread_join(ids[i], NULL);
        else fn(job, parts[i].lo, parts[i].hi);
    }
}

/* ---- dropout ------------------------------------------------------------------------------------------------ */

struct dropout_job {
    int bf16, locked;
    int64_t T, D;
    const void *x;
    void *y;
    struct drop_mask mask;
};

INLINE void dropout_typed(const struct dropout_job *j, int64_t lo, int64_t hi, const int bf16) {
    const int64_t T = j->T, D = j->D;
    const void *const x = j->x;
    void *const y = j->y;
    const struct drop_mask m = j->mask;  /* (a copy: y might alias the job, as far as the compiler knows) */
    for (int64_t r = lo; r < hi; r++) {  /* row r = b * T + t; locked: the mask row is b's, the same for every t */
        uint32_t key = drop_row_key(&m, j->locked ? r / T : r);
        int64_t at = r * D;
        for (int64_t d = 0; d < D; d++) store(y, at + d, load(x, at + d, bf16) * drop_keep(&m, key, d), bf16);
    }
}

static void dropout_rows(void *arg, int64_t lo, int64_t hi) {
    const struct dropout_job *j = arg;
    if (j->bf16) dropout_typed(j, lo, hi, 1);
    else dropout_typed(j, lo, hi, 0);
}

/* y = x * mask / (1 - p) over x (B, T, D) (rows of D; `locked`: one mask per b for every t), the mask a hash of
   (seed, mask row, d): the same seed gives the same mask, which is how the backward applies it to the gradient. */
void dropout_apply(int bf16, int locked, int64_t B, int64_t T, int64_t D, const void *x, void *y, double p,
                   uint64_t seed, int threads) {
    struct dropout_job j = {bf16, locked, T, D, x, y, drop_mask_of(p, seed)};
    int64_t rows = B * T;
    train_split(dropout_rows, &j, rows, rows * D < 65536 ? 1 : threads);
}

/* ---- the minGRU / minLSTM recurrence ------------------------------------------------------------------------- */

/* u (B, T, P * S): minGRU [k | v] (P 2), minLSTM [k_f | k_i | v] (P 3). The gate z and candidate v of a step:
   minGRU z = sigmoid(k); minLSTM z = i / (f + i), f = sigmoid(k_f), i = sigmoid(k_i);
   h_t = h_{t-1} + z (v - h_{t-1}). */
struct scan_job {
    int bf16, lstm, backward;
    volatile int failed;  /* set by a thread that could not have its scratch (its blocks undone) */
    int64_t T, S;
    const void *u;
    const float *bias;  /* added to u: (P * S), may be NULL */
    const float *h0;
    void *h;             /* forward: every state (B, T, S), in the tensors' dtype; may be NULL */
    float *last;         /* forward: the last state (B, S) */
    const void *gh;      /* backward: dL/dh (B, T, S), may be NULL */
    const float *glast;  /* backward: dL/d last (B, S), may be NULL */
    void *gu;            /* backward: dL/du (B, T, P * S) */
    float *gh0;          /* backward: dL/dh0 (B, S), may be NULL */
};

/* A piece of work is a lane block: one batch row b and `width` lanes s .. s + width - 1, stepped along T together, so
   that each step reads and writes whole runs of memory (a block of 16 lanes read 64 bytes of each of several rows
   2 KiB apart per step, and ran 3x slower on one thread). Its scratch: 8 rows of width for the step and the bias,
   the states (T x width) and, in the backward, its dL/du (T x P x width). */
static int64_t lane_width(int64_t S, int64_t T) {
    int64_t w = T <= 512 ? 256 : 64;  /* the backward's scratch (T x 4 x width floats): 512 KiB at T 128 */
    return S < w ? S : w;
}

/* the gate z and candidate v of w lanes at u + at, plus their bias `bk` (P x w) (bf16, lstm: constants where it is
   inlined) */
INLINE void gates(const void *restrict u, int64_t at, int64_t S, int64_t w, const float *restrict bk,
                  float *restrict z, float *restrict v, float *restrict f, float *restrict i, const int bf16,
                  const int lstm) {
    if (!lstm) {
        for (int64_t l = 0; l < w; l++) {
            z[l] = sigmoid(load(u, at + l, bf16) + bk[l]);
            v[l] = load(u, at + S + l, bf16) + bk[w + l];
        }
        return;
    }
    for (int64_t l = 0; l < w; l++) {
        float kf = load(u, at + l, bf16) + bk[l], ki = load(u, at + S + l, bf16) + bk[w + l];
        f[l] = sigmoid(kf);
        i[l] = sigmoid(ki);
        /* both gates far below 0 (sigmoid(x) = e^x to 2e-9 there, and exp underflows below -87): z is the ratio of
           the exponentials, sigmoid(k_i - k_f), as the torch path's logsigmoid form gives */
        z[l] = kf < -20.0f && ki < -20.0f ? sigmoid(ki - kf) : i[l] / (f[l] + i[l]);
        v[l] = load(u, at + 2 * S + l, bf16) + bk[2 * w + l];
    }
}

/* a lane block's bias (P x w) from the job's (P * S), zeros where there is none */
INLINE void block_bias(const struct scan_job *j, int64_t s, int64_t w, float *restrict bk, const int lstm) {
    const int64_t P = lstm ? 3 : 2;
    for (int64_t p = 0; p < P; p++)
        for (int64_t l = 0; l < w; l++) bk[p * w + l] = j->bias ? j->bias[p * j->S + s + l] : 0.0f;
}

/* one lane block forward; every state into `keep` (T x w) when given */
INLINE void forward_block(const struct scan_job *j, int64_t b, int64_t s, int64_t w, float *restrict scratch,
                          float *restrict keep, const int bf16, const int lstm) {
    const int64_t T = j->T, S = j->S, P = lstm ? 3 : 2;
    const void *const u = j->u;
    void *const out = j->h;
    float *restrict h = scratch, *restrict z = h + w, *restrict v = z + w, *restrict f = v + w, *restrict i = f + w;
    float *restrict bk = i + w;
    block_bias(j, s, w, bk, lstm);
    for (int64_t l = 0; l < w; l++) h[l] = j->h0 ? j->h0[b * S + s + l] : 0.0f;
    for (int64_t t = 0; t < T; t++) {
        gates(u, (b * T + t) * P * S + s, S, w, bk, z, v, f, i, bf16, lstm);
        for (int64_t l = 0; l < w; l++) h[l] += z[l] * (v[l] - h[l]);
        if (out) for (int64_t l = 0; l < w; l++) store(out, (b * T + t) * S + s + l, h[l], bf16);
        if (keep) for (int64_t l = 0; l < w; l++) keep[t * w + l] = h[l];
    }
    if (j->last) for (int64_t l = 0; l < w; l++) j->last[b * S + s + l] = h[l];
}

/* one lane block backward, from its states recomputed into `keep`; its dL/du is gathered in scratch and written
   after the loop. g_t = dL/dh_t + (1 - z_{t+1}) g_{t+1}; dL/dv = z g, dL/dz = g (v - h_{t-1}); minGRU
   dL/dk = dL/dz z (1 - z); minLSTM (z = sigmoid(k) for k = logsigmoid(k_i) - logsigmoid(k_f))
   dL/dk_i = dL/dk (1 - i), dL/dk_f = -dL/dk (1 - f). */
INLINE void backward_block(const struct scan_job *j, int64_t b, int64_t s, int64_t w, float *restrict scratch,
                           float *restrict keep, const int bf16, const int lstm) {
    const int64_t T = j->T, S = j->S, P = lstm ? 3 : 2;
    const void *const u = j->u, *const gh = j->gh;
    float *restrict g = scratch, *restrict z = g + w, *restrict v = z + w, *restrict f = v + w, *restrict i = f + w;
    float *restrict bk = i + w, *restrict grads = keep + T * w;  /* grads (T, P, w) */
    forward_block(j, b, s, w, scratch, keep, bf16, lstm);  /* (fills bk too) */
    for (int64_t l = 0; l < w; l++) g[l] = j->glast ? j->glast[b * S + s + l] : 0.0f;
    for (int64_t t = T - 1; t >= 0; t--) {
        gates(u, (b * T + t) * P * S + s, S, w, bk, z, v, f, i, bf16, lstm);
        if (gh) for (int64_t l = 0; l < w; l++) g[l] += load(gh, (b * T + t) * S + s + l, bf16);
        const float *restrict prev = t ? keep + (t - 1) * w : NULL;
        float *restrict out = grads + t * P * w;
        for (int64_t l = 0; l < w; l++) {
            float before = prev ? prev[l] : (j->h0 ? j->h0[b * S + s + l] : 0.0f);
            float dk = g[l] * (v[l] - before) * z[l] * (1.0f - z[l]);
            out[(P - 1) * w + l] = g[l] * z[l];
            if (lstm) {
                out[l] = -dk * (1.0f - f[l]);
                out[w + l] = dk * (1.0f - i[l]);
            } else {
                out[l] = dk;
            }
            g[l] *= 1.0f - z[l];
        }
    }
    if (j->gh0) for (int64_t l = 0; l < w; l++) j->gh0[b * S + s + l] = g[l];
    for (int64_t t = 0; t < T; t++)
        for (int64_t p = 0; p < P; p++)
            for (int64_t l = 0; l < w; l++)
                store(j->gu, (b * T + t) * P * S + p * S + s + l, grads[(t * P + p) * w + l], bf16);
}

INLINE void blocks_typed(const struct scan_job *j, int64_t lo, int64_t hi, float *scratch, const int backward,
                         const int bf16, const int lstm) {
    int64_t W = lane_width(j->S, j->T), per = (j->S + W - 1) / W;
    for (int64_t n = lo; n < hi; n++) {  /* block n: batch row n / per, lanes from n % per * W */
        int64_t b = n / per, s = n % per * W, w = j->S - s < W ? j->S - s : W;
        if (backward) backward_block(j, b, s, w, scratch, scratch + 8 * W, bf16, lstm);
        else forward_block(j, b, s, w, scratch, NULL, bf16, lstm);
    }
}

static size_t scratch_floats(int64_t S, int64_t T, int backward) {
    int64_t W = lane_width(S, T);
    return (size_t)(8 * W + (backward ? T * 4 * W : 0));
}

static void run_blocks(void *arg, int64_t lo, int64_t hi) {
    const struct scan_job *j = arg;
    float *scratch = malloc(sizeof(float) * scratch_floats(j->S, j->T, j->backward));
    if (!scratch) {
        ((struct scan_job *)arg)->failed = 1;
        return;
    }
    switch (j->backward * 4 + j->bf16 * 2 + j->lstm) {  /* each case its own compiled copy */
    case 0: blocks_typed(j, lo, hi, scratch, 0, 0, 0); break;
    case 1: blocks_typed(j, lo, hi, scratch, 0, 0, 1); break;
    case 2: blocks_typed(j, lo, hi, scratch, 0, 1, 0); break;
    case 3: blocks_typed(j, lo, hi, scratch, 0, 1, 1); break;
    case 4: blocks_typed(j, lo, hi, scratch, 1, 0, 0); break;
    case 5: blocks_typed(j, lo, hi, scratch, 1, 0, 1); break;
    case 6: blocks_typed(j, lo, hi, scratch, 1, 1, 0); break;
    default: blocks_typed(j, lo, hi, scratch, 1, 1, 1);
    }
    free(scratch);
}

static int run(struct scan_job *j, int64_t B, int threads) {
    if (j->S < 1 || B < 1) return 0;
    int64_t W = lane_width(j->S, j->T);
    train_split(run_blocks, j, B * ((j->S + W - 1) / W), B * j->T * j->S < 65536 ? 1 : threads);
    return j->failed ? -1 : 0;
}

/* every state h (B, T, S) (NULL: none) and the last (B, S) of the recurrence over u + bias (NULL: none) from h0
   (NULL: zeros).
   0, or -1 where a thread's scratch could not be had (then the outputs are incomplete). */
int minrnn_forward(int bf16, int lstm, int64_t B, int64_t T, int64_t S, const void *u, const float *bias,
                   const float *h0, void *h, float *last, int threads) {
    struct scan_job j = {bf16, lstm, 0, 0, T, S, u, bias, h0, h, last, NULL, NULL, NULL, NULL};
    return run(&j, B, threads);
}

/* dL/du (B, T, P * S) and dL/dh0 (NULL: not wanted) from dL/dh (NULL: zeros) and dL/d last (NULL: zeros).
   0, or -1 where a thread's scratch could not be had (then the outputs are incomplete). */
int minrnn_backward(int bf16, int lstm, int64_t B, int64_t T, int64_t S, const void *u, const float *bias,
                    const float *h0, const void *gh, const float *glast, void *gu, float *gh0, int threads) {
    struct scan_job j = {bf16, lstm, 1, 0, T, S, u, bias, h0, NULL, NULL, gh, glast, gu, gh0};
    return run(&j, B, threads);
}
