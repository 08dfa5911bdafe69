/* One LSTM or GRU cell step for a batch of rows, every elementwise operation of it in one pass.

   charnn.models.native compiles this file on first use with the system's C compiler (-O3, for the CPU it runs on)
   and calls it through ctypes from charnn.models.stepper.FastStepper: a sampled token then costs one call per
   layer for the cell instead of 6-10 small tensor operations (each a few microseconds of dispatch on a CPU, the
   per-token work outside the matrix products). The matrix products stay torch's, except one int8 LSTM stream's
   (lstm_int8_block, at the end: where the CPU has AVX-512 VNNI, a whole block of tokens in one call).

   exp is a polynomial (Cephes' expf coefficients, |relative error| < 2e-7 on the range used) so that the
   compiler vectorises the loops; sigmoid and tanh are built on it. Rows are `stride` floats apart (a row of a
   wider buffer); inside a row everything is contiguous. */

#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

static inline float exp_poly(float x) {
    x = x < -87.0f ? -87.0f : x;  /* (not fminf/fmaxf: their NaN rules keep gcc from vectorising) */
    x = x > 88.0f ? 88.0f : x;
    float n = rintf(x * 1.44269504088896341f);         /* x = n ln 2 + r, |r| <= ln2 / 2 */
    float r = x - n * 0.693359375f + n * 2.12194440e-4f; /* ln 2 in two parts (Cody-Waite) */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } scale;
    scale.i = ((int32_t)n + 127) << 23;                   /* 2^n (n in [-126, 127] after the clamp) */
    return p * scale.f;
}

static inline float sigmoid(float x) { return 1.0f / (1.0f + exp_poly(-x)); }

static inline float tanh_(float x) {
    float e = exp_poly(-2.0f * fabsf(x));                  /* tanh |x| = (1 - e) / (1 + e), no overflow */
    return copysignf((1.0f - e) / (1.0f + e), x);
}

static inline int8_t code(float h, float levels) { return (int8_t)rintf(h * levels); } /* round half to even */

/* LSTM, gates in the stepper's order i, f, o (sigmoid) then g (tanh), each H wide:
   pre = base's row (+ acc * factor, the int8 product's int32 sums scaled back, when acc is given; into scratch);
   c = f * c + i * g;  h = o * tanh(c);  codes = round(h * levels) when codes is given.
   Row b of base is row rows[b] when rows is given (the embedding table looked up by token id: -1, and nothing
   done, for an id outside 0..V-1), else row b (base_stride 0: one row, a bias, for every b). */
int lstm_cell(int64_t B, int64_t H, const float *base, int64_t base_stride, const int32_t *acc,
              const float *factor, float *scratch, float *c, float *h, int64_t h_stride, int8_t *codes,
              int64_t code_stride, float levels, int64_t V, const int64_t *rows) {
    for (int64_t b = 0; b < B; b++) if (rows && (rows[b] < 0 || rows[b] >= V)) return -1;
    for (int64_t b = 0; b < B; b++) {
        const float *pre = base + (rows ? rows[b] : b) * base_stride;
        float *cb = c + b * H, *hb = h + b * h_stride;
        if (acc) {
            const int32_t *a = acc + b * 4 * H;
            for (int64_t j = 0; j < 4 * H; j++) scratch[j] = pre[j] + (float)a[j] * factor[j];
            pre = scratch;
        }
        for (int64_t j = 0; j < H; j++) {
            float i = sigmoid(pre[j]), f = sigmoid(pre[H + j]), o = sigmoid(pre[2 * H + j]);
            float g = tanh_(pre[3 * H + j]);
            float cj = f * cb[j] + i * g;
            cb[j] = cj;
            hb[j] = o * tanh_(cj);
        }
        if (codes) {
            int8_t *kb = codes + b * code_stride;
            for (int64_t j = 0; j < H; j++) kb[j] = code(hb[j], levels);
        }
    }
    return 0;
}

/* One gate vector of a row: base's row (stride 0: one row, a bias, for every b), plus acc * factor (an int8
   product's int32 sums scaled back) when acc is given, composed into out; else base's row itself. */
static inline const float *gate_row(int64_t b, int64_t n, const float *base, int64_t stride, const int32_t *acc,
                                    const float *factor, float *out) {
    const float *row = base + b * stride;
    if (!acc) return row;
    const int32_t *a = acc + b * n;
    for (int64_t j = 0; j < n; j++) out[j] = row[j] + (float)a[j] * factor[j];
    return out;
}

/* GRU, gates r, z, n, each H wide: gi = W_i x + b_i and gh = W_h h + b_h, each given as gate_row's
   (base, stride, acc, factor), scratch 6H floats;
   r, z = sigmoid(gi + gh);  n = tanh(gi_n + r * gh_n);  h = n + z * (h - n). */
void gru_cell(int64_t B, int64_t H, const float *gi, int64_t gi_stride, const int32_t *gi_acc, const float *gi_factor,
              const float *gh, int64_t gh_stride, const int32_t *gh_acc, const float *gh_factor, float *scratch,
              float *h, int64_t h_stride, int8_t *codes, int64_t code_stride, float levels) {
    for (int64_t b = 0; b < B; b++) {
        const float *x = gate_row(b, 3 * H, gi, gi_stride, gi_acc, gi_factor, scratch);
        const float *y = gate_row(b, 3 * H, gh, gh_stride, gh_acc, gh_factor, scratch + 3 * H);
        float *hb = h + b * h_stride;
        for (int64_t j = 0; j < H; j++) {
            float r = sigmoid(x[j] + y[j]), z = sigmoid(x[H + j] + y[H + j]);
            float n = tanh_(x[2 * H + j] + r * y[2 * H + j]);
            hb[j] = n + z * (hb[j] - n);
        }
        if (codes) {
            int8_t *kb = codes + b * code_stride;
            for (int64_t j = 0; j < H; j++) kb[j] = code(hb[j], levels);
        }
    }
}

/* The head and the draw of one token for the first B rows, where the Batcher draws without filters:
   logits = bias + h @ W (W as torch keeps it, (H, V): one axpy per hidden unit, so the loop over the vocabulary
   vectorises), divided by the temperature unless it is 1, plus the row's noise, and its argmax into out (the first
   of equal values, and NaN above all, as torch.argmax). The varying arguments come last, after those a caller
   binds once. */
static void head_draw_t(int64_t H, int64_t V, const float *h, int64_t h_stride, const float *w, const float *bias,
                        float *logits, int64_t B, const float *noise, int64_t *out, float temperature) {
    for (int64_t b = 0; b < B; b++) {
        const float *hb = h + b * h_stride, *nb = noise + b * V;
        float *lb = logits + b * V;
        for (int64_t v = 0; v < V; v++) lb[v] = 0.0f;
        for (int64_t j = 0; j < H; j++) {
            const float x = hb[j], *wj = w + j * V;
            for (int64_t v = 0; v < V; v++) lb[v] += x * wj[v];
        }
        int64_t best = 0;
        float top = -INFINITY;
        for (int64_t v = 0; v < V && !isnan(top); v++) {
            float y = bias[v] + lb[v];
            y = (temperature == 1.0f ? y : y / temperature) + nb[v];
            if (y > top || isnan(y)) { top = y; best = v; }
        }
        out[b] = best;
    }
}

void head_draw(int64_t H, int64_t V, const float *h, int64_t h_stride, const float *w, const float *bias,
               float *logits, int64_t B, const float *noise, int64_t *out, float temperature) {
    head_draw_t(H, V, h, h_stride, w, bias, logits, B, noise, out, temperature);
}

/* --int8 for one stream, with the matrix products here too (where the CPU has AVX-512 VNNI): a whole block of k
   tokens of an LSTM in one call, no Python between tokens. torch._int_mm for one row (a matrix-vector product)
   takes 30-100 us for these sizes on 2 cores; this loop reads the same int8 weights, laid out for it once, in a
   fraction of that, and its int32 sums are exactly torch's (so the tokens are the same).

   int8_gemv: acc[n] = sum_k x[k] * W[k][n] for int8 codes x (K) and W, which `pack` in charnn.models.native lays
   out as (N/16, K/4, 16, 4): 16 outputs by 4 inputs per 64-byte vector, so one VNNI instruction (u8 x s8, four
   products summed into each int32 lane) does 64 multiply-adds. x is made unsigned by adding 128, and offset[n] =
   128 * sum_k W[k][n] is taken off again. Four tiles of 16 outputs at a time share each broadcast of x. K % 4 == 0,
   N % 64 == 0. */
#if defined(__AVX512VNNI__) && defined(__AVX512F__)
#include <immintrin.h>
int int8_vnni(void) { return 1; }

/* Tile groups g0..g1-1 (64 outputs each) of the product. */
static void int8_gemv(int64_t K, const int8_t *x, const int8_t *w, const int32_t *offset, int32_t *acc, int64_t g0,
                      int64_t g1) {
    const int64_t K4 = K / 4, tile = K4 * 64;
    for (int64_t t = 4 * g0; t < 4 * g1; t += 4) {
        __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
        const int8_t *w0 = w + t * tile, *w1 = w0 + tile, *w2 = w1 + tile, *w3 = w2 + tile;
        for (int64_t i = 0; i < K4; i++) {
            uint32_t four;
            memcpy(&four, x + 4 * i, 4);
            const __m512i xb = _mm512_set1_epi32((int)(four ^ 0x80808080u));  /* x + 128, as unsigned bytes */
            a0 = _mm512_dpbusd_epi32(a0, xb, _mm512_loadu_si512(w0 + 64 * i));
            a1 = _mm512_dpbusd_epi32(a1, xb, _mm512_loadu_si512(w1 + 64 * i));
            a2 = _mm512_dpbusd_epi32(a2, xb, _mm512_loadu_si512(w2 + 64 * i));
            a3 = _mm512_dpbusd_epi32(a3, xb, _mm512_loadu_si512(w3 + 64 * i));
        }
        const int32_t *o = offset + 16 * t;
        _mm512_storeu_si512(acc + 16 * t, _mm512_sub_epi32(a0, _mm512_loadu_si512(o)));
        _mm512_storeu_si512(acc + 16 * t + 16, _mm512_sub_epi32(a1, _mm512_loadu_si512(o + 16)));
        _mm512_storeu_si512(acc + 16 * t + 32, _mm512_sub_epi32(a2, _mm512_loadu_si512(o + 32)));
        _mm512_storeu_si512(acc + 16 * t + 48, _mm512_sub_epi32(a3, _mm512_loadu_si512(o + 48)));
    }
}
#define PAUSE() _mm_pause()
#else
int int8_vnni(void) { return 0; }

static void int8_gemv(int64_t K, const int8_t *x, const int8_t *w, const int32_t *offset, int32_t *acc, int64_t g0,
                      int64_t g1) {
    (void)K; (void)x; (void)w; (void)offset; (void)acc; (void)g0; (void)g1;  /* never called: int8_vnni() says 0 */
}
#define PAUSE() ((void)0)
#endif

/* Several cores: each product's outputs are split into one contiguous range per thread, the same range for the
   same thread every token, so each core keeps its share of the weights in its own cache (one core's cache does not
   hold a 2x512 model's 3 MB of int8 weights; two cores' hold their halves). Workers are started once and kept:
   after a product they spin a while (the next one comes microseconds later), then sleep on a condition variable. */
#define MAX_THREADS 16
#define SPINS 20000  /* pause instructions a thread spins before it sleeps or yields: about 1-3 ms */

typedef struct { int64_t K; const int8_t *x, *w; const int32_t *offset; int32_t *acc; int64_t g0, g1; } job_t;

static struct {
    pthread_mutex_t lock, block;  /* block: one caller at a time uses the workers */
    pthread_cond_t wake;
    atomic_long epoch;            /* products posted so far */
    atomic_int pending;           /* workers still on the current product */
    atomic_int sleepers;
    atomic_int parked;            /* between blocks: workers sleep at once instead of spinning */
    int workers;                  /* started */
    job_t job[MAX_THREADS];
} pool = {.lock = PTHREAD_MUTEX_INITIALIZER, .block = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

static void *worker(void *arg) {
    const int i = (int)(intptr_t)arg;
    long seen = 0;
    for (;;) {
        long e;
        for (int spins = 0; (e = atomic_load(&pool.epoch)) == seen; spins++) {
            if (spins < SPINS && !atomic_load(&pool.parked)) { PAUSE(); continue; }
            pthread_mutex_lock(&pool.lock);
            atomic_fetch_add(&pool.sleepers, 1);
            while (atomic_load(&pool.epoch) == seen) pthread_cond_wait(&pool.wake, &pool.lock);
            atomic_fetch_sub(&pool.sleepers, 1);
            pthread_mutex_unlock(&pool.lock);
            spins = 0;
        }
        seen = e;
        const job_t *j = &pool.job[i];
        if (j->g1 > j->g0) int8_gemv(j->K, j->x, j->w, j->offset, j->acc, j->g0, j->g1);
        atomic_fetch_sub(&pool.pending, 1);
    }
    return NULL;
}

/* Start workers until threads - 1 run (at most MAX_THREADS - 1); returns the threads that will work (this one
   included). Called with pool.block held. */
static void forked_child(void) { pool.workers = 0; }  /* a fork's child has this thread alone: start anew */

static int start_workers(int threads) {
    static int hooked;
    if (!hooked) hooked = !pthread_atfork(NULL, NULL, forked_child);
    threads = threads < 1 ? 1 : threads > MAX_THREADS ? MAX_THREADS : threads;
    while (pool.workers < threads - 1) {
        pthread_t t;
        if (pthread_create(&t, NULL, worker, (void *)(intptr_t)pool.workers)) break;
        pthread_detach(t);
        pool.workers++;
    }
    return threads < pool.workers + 1 ? threads : pool.workers + 1;
}

/* acc = x @ W (K inputs, N outputs), over `threads` threads: this one takes the first part, worker i part i + 1. */
static void product(int64_t K, int64_t N, const int8_t *x, const int8_t *w, const int32_t *offset, int32_t *acc,
                    int threads) {
    const int64_t groups = N / 64;
    if (threads <= 1) { int8_gemv(K, x, w, offset, acc, 0, groups); return; }
    for (int i = 0; i < pool.workers; i++) {
        const int64_t p = i + 1;
        pool.job[i] = p < threads ? (job_t){K, x, w, offset, acc, groups * p / threads, groups * (p + 1) / threads}
                                  : (job_t){0};
    }
    atomic_store(&pool.pending, pool.workers);
    atomic_fetch_add(&pool.epoch, 1);
    if (atomic_load(&pool.sleepers)) {
        pthread_mutex_lock(&pool.lock);
        pthread_cond_broadcast(&pool.wake);
        pthread_mutex_unlock(&pool.lock);
    }
    int8_gemv(K, x, w, offset, acc, 0, groups / threads);
    for (long spins = 0; atomic_load(&pool.pending) > 0; spins++)
        if (spins < SPINS) PAUSE(); else sched_yield();  /* a worker the OS has not run yet: let it have the core */
}

/* One product, for tests: acc = x @ W as above, on `threads` threads. */
void int8_product(int64_t K, int64_t N, const int8_t *x, const int8_t *w, const int32_t *offset, int32_t *acc,
                  int threads) {
    pthread_mutex_lock(&pool.block);
    product(K, N, x, w, offset, acc, start_workers(threads));
    pthread_mutex_unlock(&pool.block);
}

/* The Batcher's Gumbel noise (charnn.generation.draw.gumbel_noise), for one row's draw number `draw`: a hash of
   (seed, draw, token), splitmix64 style, whose top 23 bits make a uniform U in (0, 1), and -log(-log(U)). The same
   integers as torch's; the logs are the C library's (torch's may differ in the last bit, as CUDA's do). */
static inline uint64_t mix64(uint64_t x) {
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

void gumbel(int64_t seed, int64_t draw, int64_t V, float *out) {
    const uint64_t s = mix64((uint64_t)seed);
    for (int64_t v = 0; v < V; v++) {
        const uint64_t x = mix64(s + (uint64_t)(draw * V + v) * 0x9E3779B97F4A7C15ull);
        const float u = ((float)(x >> 41) + 0.5f) * (1.0f / 8388608.0f);
        out[v] = -logf(-logf(u));
    }
}

/* k tokens of one int8 LSTM stream (L layers of H, vocabulary V), as FastStepper's per-token calls would make them:
   layer 0's gates are the table's row of the token plus (h_0's codes @ W_0) * factor_0; layer l's are bias_l plus
   ([h_{l-1} | h_l]'s codes @ W_l) * factor_l; then the head and the draw (temperature, and the row's noise for
   draws draw .. draw + k - 1 of `seed`, into noise (V floats); none for greedy) into drawn[t * drawn_stride], the
   next token's input. The first input is *tok. hs and codes hold every layer's h side by side (L * H); c[l], w[l],
   offset[l], factor[l], bias[l] per layer. acc and scratch: 4H each. products_only: the products alone, k times
   (the benchmark's ceiling). The products run on `threads` threads. Returns -1 for a token id outside the
   vocabulary (nothing more done), else 0. */
int lstm_int8_block(int64_t L, int64_t H, int64_t V, const float *table, const int8_t *const *w,
                    const int32_t *const *offset, const float *const *factor, const float *const *bias,
                    float *const *c, float *hs, int8_t *codes, int32_t *acc, float *scratch, const float *w_head,
                    const float *b_head, float *logits, float *noise, int64_t k, float temperature,
                    const int64_t *tok, int64_t seed, int64_t draw, int greedy, int64_t *drawn, int64_t drawn_stride,
                    int products_only, int threads) {
    int64_t id = *tok;
    int status = 0;
    pthread_mutex_lock(&pool.block);
    threads = start_workers(threads);
    atomic_store(&pool.parked, 0);
    for (int64_t t = 0; t < k && !status; t++) {
        for (int64_t l = 0; l < L && !status; l++) {
            product(l ? 2 * H : H, 4 * H, codes + (l ? (l - 1) * H : 0), w[l], offset[l], acc, threads);
            if (!products_only)
                status = lstm_cell(1, H, l ? bias[l] : table, l ? 0 : 4 * H, acc, factor[l], scratch, c[l],
                                   hs + l * H, L * H, codes + l * H, L * H, 127.0f, V, l ? 0 : &id);
        }
        if (products_only || status) continue;
        if (greedy) memset(noise, 0, V * sizeof(float)); else gumbel(seed, draw + t, V, noise);
        head_draw_t(H, V, hs + (L - 1) * H, L * H, w_head, b_head, logits, 1, noise, drawn + t * drawn_stride,
                    temperature);
        id = drawn[t * drawn_stride];
    }
    atomic_store(&pool.parked, 1);  /* the caller's own work comes next (torch's threads among it): make room */
    pthread_mutex_unlock(&pool.block);
    return status;
}
