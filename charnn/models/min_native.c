/* One token of a minGRU / minLSTM stack (charnn.models.minrnn.MinStepper), the whole stack in one call.

   Through torch, a token of the default 2-layer model is about forty small tensor operations (a few microseconds
   of dispatch each on a CPU, and torch's GELU alone costs 16 us for 512 numbers): several times the arithmetic.
   Here every layer's products are axpy loops over weights laid out (inputs, outputs) as torch's W^T, so the loop
   over a row's outputs vectorises and each weight is read once per token for every row; the LayerNorms arrive
   folded into the products that read them (the stepper's _fold_norm), so a norm here is the plain normalisation.
   The head and the draw stay where the LSTM's are (head_draw in cells_native.c, or torch's addmm).

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

static void normalise(int64_t n, const float *x, float *out, float eps) {
    float mean = 0.0f, var = 0.0f;
    for (int64_t j = 0; j < n; j++) mean += x[j];
    mean /= (float)n;
    for (int64_t j = 0; j < n; j++) var += (x[j] - mean) * (x[j] - mean);
    const float scale = 1.0f / sqrtf(var / (float)n + eps);
    for (int64_t j = 0; j < n; j++) out[j] = (x[j] - mean) * scale;
}

/* For rows b < B: out[b] (N, rows out_stride apart) = bias + x[b] (K, rows K apart) @ w (K, N), or out[b] += x[b]
   @ w where bias is NULL. Outputs 64 at a time, summed in eight 8-wide vector registers over the K inputs (GCC's vector
   extension, which every target lowers to what it has; plain arrays were kept on the stack), so the loop reads w
   alone; each row of the batch reads the block of w again, from the cache. */
typedef float vec8 __attribute__((vector_size(32), aligned(4), may_alias));  /* (unaligned loads and stores) */
#define AT(p) (*(vec8 *)(p))

static void axpy_product(int64_t B, int64_t K, int64_t N, const float *restrict x, const float *restrict w,
                         const float *restrict bias, float *restrict out, int64_t out_stride) {
    int64_t o0 = 0;
    for (; o0 + 64 <= N; o0 += 64) {
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
    if (o0 == N) return;
    for (int64_t b = 0; b < B; b++) {  /* the last outputs, fewer than 64 */
        float *ob = out + b * out_stride;
        if (bias) for (int64_t o = o0; o < N; o++) ob[o] = bias[o];
        for (int64_t j = 0; j < K; j++) {
            const float xj = x[b * K + j], *wj = w + j * N;
            for (int64_t o = o0; o < N; o++) ob[o] += xj * wj[o];
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

/* The stack for rows 0..B-1: token ids tok (B) index table (V, D) (the embedding and input projection folded; -1,
   nothing done, for an id outside 0..V-1); per layer the arrays hold gates (D, G*S) and its bias, out (S, D) and
   its bias, and with F > 0 the feed-forward part's (D, F), (F), (F, D), (D) (NULL entries: none); state (L, B, S);
   x and xn (B, D) hold the residual stream and the head's normalised input; scratch B * (G*S + F) floats. cell 0:
   minGRU (G 2), 1: minLSTM (G 3). The varying arguments come last, after those a caller binds once. */
int min_step(int64_t B, int64_t L, int64_t D, int64_t S, int64_t F, int cell, int64_t V, const float *table,
             const float *const *gates_w, const float *const *gates_b, const float *const *out_w,
             const float *const *out_b, const float *const *w1, const float *const *b1, const float *const *w2,
             const float *const *b2, float *x, float *xn, float *scratch, float eps, const int64_t *tok,
             float *state) {
    const int64_t G = cell ? 3 : 2;
    float *u = scratch, *f = scratch + B * G * S;  /* (B, G*S), (B, F) */
    for (int64_t b = 0; b < B; b++) if (tok[b] < 0 || tok[b] >= V) return -1;
    for (int64_t b = 0; b < B; b++) memcpy(x + b * D, table + tok[b] * D, (size_t)D * sizeof(float));
    for (int64_t l = 0; l < L; l++) {
        for (int64_t b = 0; b < B; b++) normalise(D, x + b * D, xn + b * D, eps);
        axpy_product(B, D, G * S, xn, gates_w[l], gates_b[l], u, G * S);
        for (int64_t b = 0; b < B; b++) {
            float *h = state + (l * B + b) * S;
            const float *ub = u + b * G * S, *v = ub + (G - 1) * S;
            if (cell == 0) {
                for (int64_t j = 0; j < S; j++) h[j] += sigmoid(ub[j]) * (v[j] - h[j]);
            } else {
                for (int64_t j = 0; j < S; j++) {  /* both gates far below 0: as train_native.c */
                    const float kf = ub[j], ki = ub[S + j], ig = sigmoid(ki);
                    const float z = kf < -20.0f && ki < -20.0f ? sigmoid(ki - kf) : ig / (sigmoid(kf) + ig);
                    h[j] += z * (v[j] - h[j]);
                }
            }
            for (int64_t j = 0; j < D; j++) x[b * D + j] += out_b[l][j];
        }
        axpy_product(B, S, D, state + l * B * S, out_w[l], NULL, x, D);  /* the residual: x += h Wo + bo */
        if (F > 0 && w1[l]) {
            for (int64_t b = 0; b < B; b++) normalise(D, x + b * D, xn + b * D, eps);
            axpy_product(B, D, F, xn, w1[l], b1[l], f, F);
            for (int64_t j = 0; j < B * F; j++) f[j] = gelu(f[j]);
            for (int64_t b = 0; b < B; b++) for (int64_t j = 0; j < D; j++) x[b * D + j] += b2[l][j];
            axpy_product(B, F, D, f, w2[l], NULL, x, D);
        }
    }
    for (int64_t b = 0; b < B; b++) normalise(D, x + b * D, xn + b * D, eps);
    return 0;
}
