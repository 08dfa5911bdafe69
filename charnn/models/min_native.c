/* One token of a minGRU / minLSTM stack (charnn.models.minstep.MinStepper), the whole stack in one call.

   Through torch, a token of the default 2-layer model is about forty small tensor operations (a few microseconds
   of dispatch each on a CPU, and torch's GELU alone costs 16 us for 512 numbers): several times the arithmetic.
   Here every layer's products are axpy loops over weights laid out (inputs, outputs) as torch's W^T, so the loop
   over a row's outputs vectorises (or with --int8, int8_native.c's VNNI products over int8 codes of the weights
   and of each row's input, one scale per row, max |x| / 127); the LayerNorms arrive
   folded into the products that read them (the stepper's _fold_norm), so a norm here is the plain normalisation.
   The head is here too for a few rows (torch's addmm after it would start torch's threads beside this file's,
   still spinning: 0.7 ms a step for 4 rows on 2 cores); one stream's head and draw are cells_native.c's
   head_draw, as the LSTM's, and min_block makes a whole block of one stream's tokens in one call.

   Per layer l, for each row b of x (B, D):
       u = N(x) Wg + bg                       (G * S: minGRU k, v; minLSTM k_f, k_i, v)
       minGRU  z = sigmoid(k);  minLSTM z = i / (f + i), f, i = sigmoid(k_f), sigmoid(k_i)
       h += z (v - h)                         (state (L, B, S), fp32, in place)
       x += h Wo + bo
       with a feed-forward part: x += GELU(N(x) W1 + b1) W2 + b2
   and last xn = N(x), what the head reads. N is (x - mean) / sqrt(var + eps), var the biased variance, as
   torch.nn.functional.layer_norm. GELU (native_math.h) is the exact one, x Phi(x), with a rational erf (|error|
   < 3.3e-7, where libm's erff would not vectorise). */

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "native_math.h"
#include "native_pool.h"

#define HEAD_SPLIT 200000  /* a head of at least this many multiply-adds is split over the threads */

static void normalise(int64_t n, const float *x, float *out, float eps) {
    float mean = 0.0f, var = 0.0f;
    for (int64_t j = 0; j < n; j++) mean += x[j];
    mean /= (float)n;
    for (int64_t j = 0; j < n; j++) var += (x[j] - mean) * (x[j] - mean);
    const float scale = 1.0f / sqrtf(var / (float)n + eps);
    for (int64_t j = 0; j < n; j++) out[j] = (x[j] - mean) * scale;
}

/* For rows b < B: out[b][o0..o1) = bias + x[b] (K, rows K apart) @ w[:, o0..o1) (w: K rows of N), or += that
   (add); out's rows are out_stride apart. Outputs 64 at a time, summed in vector registers over the K inputs (GCC's
   vector extension, which every target lowers to what it has; plain arrays were kept on the stack): eight of 8
   floats, or with AVX-512 four of 16 for each of ROWS rows that share each load of w (the sums of every output
   in the same order either way, so the results do not depend on it). Other rows read the block of w again, from
   the cache. */
#if defined(__AVX512F__)
typedef float vec __attribute__((vector_size(64), aligned(4), may_alias));  /* (unaligned loads and stores) */
enum { LANES = 16, ROWS = 4 };  /* 16 sums in registers: AVX-512 has 32 */
#else
typedef float vec __attribute__((vector_size(32), aligned(4), may_alias));
enum { LANES = 8, ROWS = 1 };  /* 8 sums: with AVX2's 16 registers more rows would spill */
#endif
enum { VECS = 64 / LANES };
#define AT(p) (*(vec *)(p))

/* rows b0 .. b0 + R - 1 of outputs o0 .. o0 + 63 */
static inline __attribute__((always_inline)) void product64(int64_t b0, int R, int64_t K, int64_t N, int64_t o0,
                                                            const float *restrict x, const float *restrict w,
                                                            const float *restrict bias, float *restrict out,
                                                            int64_t out_stride, int add) {
    vec a[ROWS][VECS];
    for (int r = 0; r < R; r++) {
        const float *ob = out + (b0 + r) * out_stride + o0;
        for (int i = 0; i < VECS; i++) a[r][i] = AT(bias + o0 + LANES * i);
        if (add) for (int i = 0; i < VECS; i++) a[r][i] += AT(ob + LANES * i);
    }
    for (int64_t j = 0; j < K; j++) {
        const float *wj = w + j * N + o0;
        for (int i = 0; i < VECS; i++) {
            const vec wi = AT(wj + LANES * i);
            for (int r = 0; r < R; r++) a[r][i] += x[(b0 + r) * K + j] * wi;
        }
    }
    for (int r = 0; r < R; r++)
        for (int i = 0; i < VECS; i++) AT(out + (b0 + r) * out_stride + o0 + LANES * i) = a[r][i];
}

static void product(int64_t B, int64_t K, int64_t N, int64_t o0, int64_t o1, const float *restrict x,
                    const float *restrict w, const float *restrict bias, float *restrict out, int64_t out_stride,
                    int add) {
    for (; o0 + 64 <= o1; o0 += 64) {
        int64_t b = 0;
        for (; b + ROWS <= B; b += ROWS) product64(b, ROWS, K, N, o0, x, w, bias, out, out_stride, add);
        for (; b < B; b++) product64(b, 1, K, N, o0, x, w, bias, out, out_stride, add);
    }
    if (o0 >= o1) return;
    for (int64_t b = 0; b < B; b++) {  /* the last outputs, fewer than 64 */
        float *ob = out + b * out_stride;
        for (int64_t o = o0; o < o1; o++) ob[o] = bias[o] + (add ? ob[o] : 0.0f);
        for (int64_t j = 0; j < K; j++) {
            const float xj = x[b * K + j], *wj = w + j * N;
            for (int64_t o = o0; o < o1; o++) ob[o] += xj * wj[o];
        }
    }
}

/* How many rows share each load of the weights here (1: none; MinStepper steps more rows in C where they do). */
int min_rows_shared(void) { return ROWS; }

/* One product of a layer, as the stepper lays it out: fp32 w (K, N), or with --int8 (codes not NULL) int8 codes
   `pack`ed for int8_native.c with their offsets and one scale per output (factor), and the bias (N). */
struct min_product { const float *w, *bias, *factor; const int8_t *codes; const int32_t *offset; };
struct min_layer { struct min_product gates, out, ffn_in, ffn_out; };

/* int8_native.c's, where the library has it (the stepper asks for --int8 only where native.int8_products). */
void int8_groups(int64_t K, const int8_t *x, const int8_t *w, const int32_t *offset, int64_t g0, int64_t g1,
                 int32_t *acc) __attribute__((weak));

/* What a product reads: B rows of K floats, and for an int8 product their codes round(x / scale) (one scale per
   row, max |x| / 127) and the int32 sums' buffer (B rows of N). */
typedef struct {
    const struct min_product *p; int64_t B, K, N; const float *x; const int8_t *codes; const float *scale;
    int32_t *acc; float *out; int64_t out_stride; int add;
} apply_t;

/* out[:, o0..o1) (+)= bias + x W[:, o0..o1) */
static void apply(const apply_t *q, int64_t o0, int64_t o1) {
    const struct min_product *p = q->p;
    if (!p->codes) {
        product(q->B, q->K, q->N, o0, o1, q->x, p->w, p->bias, q->out, q->out_stride, q->add);
        return;
    }
    for (int64_t b = 0; b < q->B; b++) {  /* int8: o0 and o1 are multiples of 64 */
        int32_t *acc = q->acc + b * q->N;
        float *ob = q->out + b * q->out_stride;
        int8_groups(q->K, q->codes + b * q->K, p->codes, p->offset, o0 / 64, o1 / 64, acc + o0);
        for (int64_t o = o0; o < o1; o++)
            ob[o] = (q->add ? ob[o] : 0.0f) + p->bias[o] + (float)acc[o] * (q->scale[b] * p->factor[o]);
    }
}

static void quantise_rows(int64_t B, int64_t K, const float *x, int8_t *codes, float *scale) {
    for (int64_t b = 0; b < B; b++) {
        const float *xb = x + b * K;
        float top = 0.0f;
        for (int64_t j = 0; j < K; j++) top = fabsf(xb[j]) > top ? fabsf(xb[j]) : top;
        scale[b] = top / 127.0f;
        const float inv = top > 0.0f ? 127.0f / top : 0.0f;
        for (int64_t j = 0; j < K; j++) codes[b * K + j] = (int8_t)rintf(xb[j] * inv);
    }
}

/* Groups of 64 outputs: a thread's share of a product is whole groups (an int8 product's unit). */
static inline void columns(int64_t g0, int64_t g1, int64_t n, int64_t *o0, int64_t *o1) {
    *o0 = 64 * g0 < n ? 64 * g0 : n;
    *o1 = 64 * g1 < n ? 64 * g1 : n;
}

static void apply_part(const void *q, int64_t g0, int64_t g1) {
    const apply_t *a = q;
    int64_t o0, o1;
    columns(g0, g1, a->N, &o0, &o1);
    apply(a, o0, o1);
}

/* The gates' product for state units [o0, o1) (its G column ranges), then h += z (v - h) for them, every row. */
typedef struct { apply_t a; int64_t S, G; int cell; float *h; } gates_t;

static void gates_part(const void *p, int64_t g0, int64_t g1) {
    const gates_t *q = p;
    const int64_t S = q->S, GS = q->G * q->S;
    int64_t o0, o1;
    columns(g0, g1, S, &o0, &o1);
    for (int64_t g = 0; g < q->G; g++) apply(&q->a, g * S + o0, g * S + o1);
    for (int64_t b = 0; b < q->a.B; b++) {
        float *h = q->h + b * S;
        const float *u = q->a.out + b * GS, *v = u + (q->G - 1) * S;
        if (q->cell == 0) {
            for (int64_t j = o0; j < o1; j++) h[j] += sigmoid(u[j]) * (v[j] - h[j]);
        } else {
            for (int64_t j = o0; j < o1; j++) {  /* both gates far below 0: as train_native.c */
                const float kf = u[j], ki = u[S + j], ig = sigmoid(ki);
                const float z = kf < -20.0f && ki < -20.0f ? sigmoid(ki - kf) : ig / (sigmoid(kf) + ig);
                h[j] += z * (v[j] - h[j]);
            }
        }
    }
}

static void gelu_part(const void *p, int64_t g0, int64_t g1) {  /* the feed-forward part's first product, GELU'd */
    const apply_t *q = p;
    int64_t o0, o1;
    columns(g0, g1, q->N, &o0, &o1);
    apply(q, o0, o1);
    for (int64_t b = 0; b < q->B; b++)
        for (int64_t j = o0; j < o1; j++) q->out[b * q->N + j] = gelu(q->out[b * q->N + j]);
}

/* Scratch shared by a step's products: an int8 product's row codes and scales, and its int32 sums. */
typedef struct {
    int8_t *codes; float *scale; int32_t *acc; int threads;
    void (*run)(part_fn, const void *, int64_t, int);  /* team_run (one token a call) or run_parts (a block) */
} step_t;

/* out (+)= x @ W + bias over the threads, each a share of the outputs (gates: of the state units; then its cells) */
static void run(const step_t *t, const struct min_product *p, int64_t B, int64_t K, int64_t N, const float *x,
                float *out, int64_t out_stride, int add, part_fn part, const gates_t *gates) {
    if (p->codes) quantise_rows(B, K, x, t->codes, t->scale);
    const apply_t a = {p, B, K, N, x, t->codes, t->scale, t->acc, out, out_stride, add};
    if (gates) {
        gates_t g = *gates;
        g.a = a;
        t->run(gates_part, &g, (g.S + 63) / 64, t->threads);
    } else {
        t->run(part, &a, (N + 63) / 64, t->threads);
    }
}

static void normalise_rows(int64_t B, int64_t D, const float *x, float *xn, float eps) {
    for (int64_t b = 0; b < B; b++) normalise(D, x + b * D, xn + b * D, eps);
}

/* The stack for rows 0..B-1 (min_step's arguments), on t's threads. */
static void stack(int64_t B, int64_t L, int64_t D, int64_t S, int64_t F, int cell, int64_t V, const float *table,
                  const struct min_layer *layers, float *x, float *xn, float *scratch, float eps, const float *head_w,
                  const float *head_b, float *logits, const int64_t *tok, float *state, const step_t *t) {
    const int64_t G = cell ? 3 : 2;
    float *u = scratch, *f = scratch + B * G * S;
    for (int64_t b = 0; b < B; b++) memcpy(x + b * D, table + tok[b] * D, (size_t)D * sizeof(float));
    for (int64_t l = 0; l < L; l++) {
        const struct min_layer *y = layers + l;
        float *h = state + l * B * S;
        const gates_t gates = {{0}, S, G, cell, h};
        normalise_rows(B, D, x, xn, eps);
        run(t, &y->gates, B, D, G * S, xn, u, G * S, 0, NULL, &gates);
        run(t, &y->out, B, S, D, h, x, D, 1, apply_part, NULL);  /* the residual: x += h Wo + bo */
        if (F > 0 && y->ffn_in.bias) {
            normalise_rows(B, D, x, xn, eps);
            run(t, &y->ffn_in, B, D, F, xn, f, F, 0, gelu_part, NULL);
            run(t, &y->ffn_out, B, F, D, f, x, D, 1, apply_part, NULL);
        }
    }
    normalise_rows(B, D, x, xn, eps);
    if (logits) {  /* a character vocabulary's head: a few microseconds, less than handing half of it over */
        const struct min_product head = {head_w, head_b, NULL, NULL, NULL};
        const apply_t a = {&head, B, D, V, xn, NULL, NULL, NULL, logits, V, 0};
        t->run(apply_part, &a, (V + 63) / 64, B * D * V >= HEAD_SPLIT ? t->threads : 1);
    }
}

/* The stack for rows 0..B-1: token ids tok (B) index table (V, D) (the embedding and input projection folded; -1,
   nothing done, for an id outside 0..V-1); layers[l]'s products: gates (D -> G*S), out (S -> D), and with F > 0
   the feed-forward part's (D -> F, F -> D) (ffn_in.bias NULL: none); state (L, B, S); x and xn (B, D) hold the
   residual stream and the head's normalised input; scratch B * (G*S + F) floats; codes and acc (int8 products
   only) B * max(G*S, D, F) int8 and as many int32, scale B floats; with head_w (D, V) and head_b, the logits (B, V)
   as well (NULL: the caller's head reads xn). cell 0: minGRU (G 2), 1: minLSTM (G 3). Each product (and the
   cells and GELU after it) is split over `threads` threads by its outputs, 64 at a time, on torch's OpenMP team
   where there is one (team_run: torch runs between these calls); the norms and bias adds between them, a few
   hundred numbers, run on this one. The varying arguments come last, after those a caller binds once. */
int min_step(int64_t B, int64_t L, int64_t D, int64_t S, int64_t F, int cell, int64_t V, const float *table,
             const struct min_layer *layers, float *x, float *xn, float *scratch, int8_t *codes, float *scale,
             int32_t *acc, float eps, const float *head_w, const float *head_b, float *logits, int threads,
             const int64_t *tok, float *state) {
    for (int64_t b = 0; b < B; b++) if (tok[b] < 0 || tok[b] >= V) return -1;
    const step_t t = {codes, scale, acc, team_enter(threads), team_run};
    stack(B, L, D, S, F, cell, V, table, layers, x, xn, scratch, eps, head_w, head_b, logits, tok, state, &t);
    team_leave();
    return 0;
}

/* cells_native.c's one-stream head and draw, and int8_native.c's Gumbel noise (where the library has that file). */
void head_draw(int64_t H, int64_t V, const float *h, int64_t h_stride, const float *w, const float *bias,
               float *logits, int64_t B, const float *noise, int64_t *out, float temperature, int64_t top_k,
               float top_p, const float *mask, const int64_t *next, int64_t *state);
void gumbel(int64_t seed, int64_t draw, int64_t V, float *out) __attribute__((weak));

/* k tokens of one stream in one call (MinStepper.draw_block): the stack's step, then head_draw with the row's noise
   for its draws draw, draw + 1, ... (gumbel: the Batcher's hash; none if greedy), each draw into
   drawn[t * drawn_stride] and the next token's input; the first input is *tok. The arguments through head_b are
   min_step's (B = 1); logits and noise: V floats. On the pool's own workers, as int8_native.c's block (no torch between the tokens, and the
   workers stay on the cores: one int8 minGRU stream 50,000-63,000 chars/s on them, 26,000-45,000 on torch's team;
   a token a call, 7,800 against 19,300 the other way round). mask, next, utf8: head_draw's UTF-8 guard (NULL: none).
   -1 for a token id outside the vocabulary (nothing more done), else 0. */
int min_block(int64_t L, int64_t D, int64_t S, int64_t F, int cell, int64_t V, const float *table,
              const struct min_layer *layers, float *x, float *xn, float *scratch, int8_t *codes, float *scale,
              int32_t *acc, float eps, const float *head_w, const float *head_b, float *logits, float *noise,
              int64_t k, float temperature, int64_t seed, int64_t draw, int greedy, int64_t top_k, float top_p,
              int64_t *drawn, int64_t drawn_stride, int threads, const int64_t *tok, float *state,
              const float *mask, const int64_t *next, int64_t *utf8) {
    int64_t id = *tok;
    int status = 0;
    const step_t run = {codes, scale, acc, pool_enter(threads), run_parts};
    for (int64_t t = 0; t < k; t++) {
        if (id < 0 || id >= V) { status = -1; break; }
        stack(1, L, D, S, F, cell, V, table, layers, x, xn, scratch, eps, head_w, head_b, NULL, &id, state, &run);
        if (!greedy) gumbel(seed, draw + t, V, noise);
        head_draw(D, V, xn, D, head_w, head_b, logits, 1, greedy ? NULL : noise, &id, temperature, top_k, top_p,
                  mask, next, utf8);
        drawn[t * drawn_stride] = id;
    }
    pool_leave();
    return status;
}
