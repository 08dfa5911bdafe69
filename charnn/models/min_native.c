/* One token of a minGRU / minLSTM stack (charnn.models.minrnn.MinStepper), the whole stack in one call.

   Through torch, a token of the default 2-layer model is about forty small tensor operations (a few microseconds
   of dispatch each on a CPU, and torch's GELU alone costs 16 us for 512 numbers): several times the arithmetic.
   Here every layer's products are axpy loops over weights laid out (inputs, outputs) as torch's W^T, so the loop
   over a row's outputs vectorises and each weight is read once per token for every row; the LayerNorms arrive
   folded into the products that read them (the stepper's _fold_norm), so a norm here is the plain normalisation.
   The head is here too for a few rows (torch's addmm after it would start torch's threads beside this file's,
   still spinning: 0.7 ms a step for 4 rows on 2 cores); one stream's head and draw are cells_native.c's
   head_draw, as the LSTM's.

   Per layer l, for each row b of x (B, D):
       u = N(x) Wg + bg                       (G * S: minGRU k, v; minLSTM k_f, k_i, v)
       minGRU  z = sigmoid(k);  minLSTM z = i / (f + i), f, i = sigmoid(k_f), sigmoid(k_i)
       h += z (v - h)                         (state (L, B, S), fp32, in place)
       x += h Wo + bo
       with a feed-forward part: x += GELU(N(x) W1 + b1) W2 + b2
   and last xn = N(x), what the head reads. N is (x - mean) / sqrt(var + eps), var the biased variance, as
   torch.nn.functional.layer_norm. GELU is the exact one, x Phi(x), with erf from exp_poly (Abramowitz and Stegun
   7.1.26, |error| < 1.5e-7, where libm's erff would not vectorise). */

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

/* For rows b < B: out[b][o0..o1) = bias + x[b] (K, rows K apart) @ w[:, o0..o1) (w: K rows of N), or += where bias
   is NULL; out's rows are out_stride apart. Outputs 64 at a time, summed in eight 8-wide vector registers over the
   K inputs (GCC's vector extension, which every target lowers to what it has; plain arrays were kept on the stack),
   so the loop reads w alone; each row of the batch reads the block of w again, from the cache. */
typedef float vec8 __attribute__((vector_size(32), aligned(4), may_alias));  /* (unaligned loads and stores) */
#define AT(p) (*(vec8 *)(p))

static void product(int64_t B, int64_t K, int64_t N, int64_t o0, int64_t o1, const float *restrict x,
                    const float *restrict w, const float *restrict bias, float *restrict out, int64_t out_stride) {
    for (; o0 + 64 <= o1; o0 += 64) {
        for (int64_t b = 0; b < B; b++) {
            float *ob = out + b * out_stride + o0;
            const float *xb = x + b * K, *init = bias ? bias + o0 : ob;
            vec8 a[8];
            for (int i = 0; i < 8; i++) a[i] = AT(init + 8 * i);
            for (int64_t j = 0; j < K; j++) {
                const float *wj = w + j * N + o0, xj = xb[j];
                for (int i = 0; i < 8; i++) a[i] += xj * AT(wj + 8 * i);
            }
            for (int i = 0; i < 8; i++) AT(ob + 8 * i) = a[i];
        }
    }
    if (o0 >= o1) return;
    for (int64_t b = 0; b < B; b++) {  /* the last outputs, fewer than 64 */
        float *ob = out + b * out_stride;
        if (bias) for (int64_t o = o0; o < o1; o++) ob[o] = bias[o];
        for (int64_t j = 0; j < K; j++) {
            const float xj = x[b * K + j], *wj = w + j * N;
            for (int64_t o = o0; o < o1; o++) ob[o] += xj * wj[o];
        }
    }
}

static inline float gelu(float x) {
    const float a = fabsf(x) * 0.70710678118654752f;  /* erf(|x| / sqrt 2) by A&S 7.1.26 */
    const float t = 1.0f / (1.0f + 0.3275911f * a);
    const float p = ((((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t
                     + 0.254829592f) * t;
    const float erf_abs = 1.0f - p * exp_poly(-a * a);
    return 0.5f * x * (1.0f + copysignf(erf_abs, x));
}

/* What one layer's pieces read and write, for every thread; a piece's range is of groups of 16 outputs. */
typedef struct {
    int64_t B, D, S, F, G; int cell; const float *gates_w, *gates_b, *out_w, *w1, *b1, *w2;
    float *h, *x, *xn, *u, *f;
} layer_t;

static inline void columns(int64_t g0, int64_t g1, int64_t n, int64_t *o0, int64_t *o1) {
    *o0 = 16 * g0 < n ? 16 * g0 : n;
    *o1 = 16 * g1 < n ? 16 * g1 : n;
}

/* State units [o0, o1): their G gate columns, then h += z (v - h) for them in every row. */
static void gates_part(const void *p, int64_t g0, int64_t g1) {
    const layer_t *q = p;
    const int64_t S = q->S, GS = q->G * q->S;
    int64_t o0, o1;
    columns(g0, g1, S, &o0, &o1);
    for (int64_t g = 0; g < q->G; g++)
        product(q->B, q->D, GS, g * S + o0, g * S + o1, q->xn, q->gates_w, q->gates_b, q->u, GS);
    for (int64_t b = 0; b < q->B; b++) {
        float *h = q->h + b * S;
        const float *u = q->u + b * GS, *v = u + (q->G - 1) * S;
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

static void out_part(const void *p, int64_t g0, int64_t g1) {  /* x[:, o0..o1) += h Wo */
    const layer_t *q = p;
    int64_t o0, o1;
    columns(g0, g1, q->D, &o0, &o1);
    product(q->B, q->S, q->D, o0, o1, q->h, q->out_w, NULL, q->x, q->D);
}

static void ffn_in_part(const void *p, int64_t g0, int64_t g1) {  /* f[:, o0..o1) = GELU(N(x) W1 + b1) */
    const layer_t *q = p;
    int64_t o0, o1;
    columns(g0, g1, q->F, &o0, &o1);
    product(q->B, q->D, q->F, o0, o1, q->xn, q->w1, q->b1, q->f, q->F);
    for (int64_t b = 0; b < q->B; b++)
        for (int64_t j = o0; j < o1; j++) q->f[b * q->F + j] = gelu(q->f[b * q->F + j]);
}

static void ffn_out_part(const void *p, int64_t g0, int64_t g1) {  /* x[:, o0..o1) += f W2 */
    const layer_t *q = p;
    int64_t o0, o1;
    columns(g0, g1, q->D, &o0, &o1);
    product(q->B, q->F, q->D, o0, o1, q->f, q->w2, NULL, q->x, q->D);
}

typedef struct { int64_t B, D, V; const float *xn, *w, *bias; float *logits; } head_t;

static void head_part(const void *p, int64_t g0, int64_t g1) {  /* logits[:, o0..o1) = N(x) W + b */
    const head_t *q = p;
    int64_t o0, o1;
    columns(g0, g1, q->V, &o0, &o1);
    product(q->B, q->D, q->V, o0, o1, q->xn, q->w, q->bias, q->logits, q->V);
}

static void normalise_rows(int64_t B, int64_t D, const float *x, float *xn, float eps) {
    for (int64_t b = 0; b < B; b++) normalise(D, x + b * D, xn + b * D, eps);
}

static void add_rows(int64_t B, int64_t D, float *x, const float *bias) {
    for (int64_t b = 0; b < B; b++) for (int64_t j = 0; j < D; j++) x[b * D + j] += bias[j];
}

/* The stack for rows 0..B-1: token ids tok (B) index table (V, D) (the embedding and input projection folded; -1,
   nothing done, for an id outside 0..V-1); per layer the arrays hold gates (D, G*S) and its bias, out (S, D) and
   its bias, and with F > 0 the feed-forward part's (D, F), (F), (F, D), (D) (NULL entries: none); state (L, B, S);
   x and xn (B, D) hold the residual stream and the head's normalised input; scratch B * (G*S + F) floats; with
   head_w (D, V) and head_b, the logits (B, V) as well (NULL: the caller's head reads xn). cell 0:
   minGRU (G 2), 1: minLSTM (G 3). Each product (and the cells and GELU after it) is split over `threads` threads
   by its outputs, 16 at a time; the norms and bias adds between them, a few hundred numbers, run on this one.
   The varying arguments come last, after those a caller binds once. */
int min_step(int64_t B, int64_t L, int64_t D, int64_t S, int64_t F, int cell, int64_t V, const float *table,
             const float *const *gates_w, const float *const *gates_b, const float *const *out_w,
             const float *const *out_b, const float *const *w1, const float *const *b1, const float *const *w2,
             const float *const *b2, float *x, float *xn, float *scratch, float eps, const float *head_w,
             const float *head_b, float *logits, int threads, const int64_t *tok, float *state) {
    const int64_t G = cell ? 3 : 2;
    for (int64_t b = 0; b < B; b++) if (tok[b] < 0 || tok[b] >= V) return -1;
    for (int64_t b = 0; b < B; b++) memcpy(x + b * D, table + tok[b] * D, (size_t)D * sizeof(float));
    threads = team_enter(threads);
    for (int64_t l = 0; l < L; l++) {
        const layer_t q = {B, D, S, F, G, cell, gates_w[l], gates_b[l], out_w[l], w1[l], b1[l], w2[l],
                           state + l * B * S, x, xn, scratch, scratch + B * G * S};
        normalise_rows(B, D, x, xn, eps);
        team_run(gates_part, &q, (S + 15) / 16, threads);
        add_rows(B, D, x, out_b[l]);
        team_run(out_part, &q, (D + 15) / 16, threads);  /* the residual: x += h Wo + bo */
        if (F > 0 && w1[l]) {
            normalise_rows(B, D, x, xn, eps);
            team_run(ffn_in_part, &q, (F + 15) / 16, threads);
            add_rows(B, D, x, b2[l]);
            team_run(ffn_out_part, &q, (D + 15) / 16, threads);
        }
    }
    normalise_rows(B, D, x, xn, eps);
    if (logits) {  /* a character vocabulary's head: a few microseconds, less than handing half of it over */
        const head_t q = {B, D, V, xn, head_w, head_b, logits};
        team_run(head_part, &q, (V + 15) / 16, B * D * V >= HEAD_SPLIT ? threads : 1);
    }
    team_leave();
    return 0;
}
