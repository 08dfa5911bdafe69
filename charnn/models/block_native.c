/* The elementwise work of a minGRU / minLSTM block's training step between its matrix products, each one pass over
   rows of a (B, T, .) tensor (charnn.models.fusedblock):

       LayerNorm                  y = (x - mean) / sqrt(var + eps) * w + b, and its backward
       bias, dropout, residual    y = x + dropout(o + bias), and its backward
       bias, GELU                 y = GELU(a + bias), and its backward
       column sums                a bias's gradient

   Why: through torch, each of these was two to four passes (autocast's casts, addmm's copy of the bias into its
   output before the product, the residual add in mixed dtypes), together more than half of the step at batch 64
   bf16 on an AMX Xeon, whose products are fast (benchmarks/PARALLEL.md). Row tensors are float32 or bfloat16
   (`bf16`, all of a call's); weights, biases, LayerNorm's statistics and every parameter gradient float32.

   A parameter's gradient is a sum over all rows: each of CHUNKS fixed row ranges sums its own, then the chunks are
   added in order, so the result does not depend on the number of threads. */

#include "native_train.h"

enum { CHUNKS = 16 };

struct rows_job {
    int bf16;
    volatile int failed;
    int64_t R, D;
    const void *x, *o, *gy, *gres;  /* inputs (see each kernel) */
    void *y, *gx;                   /* outputs */
    const float *w, *b;             /* a LayerNorm's weight and bias, or a bias alone (b) */
    float *mean, *rstd, eps;        /* LayerNorm's statistics (R) */
    float *partial;                 /* CHUNKS x (1 or 2) x D */
    int locked;                     /* dropout: one mask per sequence, rows r / T */
    int64_t T;
    struct drop_mask mask;
    float p;                        /* dropout's probability (0: none) */
};

/* the rows of chunk c */
static void chunk_rows(const struct rows_job *j, int64_t c, int64_t *lo, int64_t *hi) {
    *lo = j->R * c / CHUNKS;
    *hi = j->R * (c + 1) / CHUNKS;
}

/* sum of a[d] * b[d] (b NULL: of a[d]) in 16 running sums, so that the compiler can vectorise it (a plain running
   sum must keep C's order of additions) */
INLINE float dot(const float *restrict a, const float *restrict b, int64_t n) {
    float acc[16] = {0}, s = 0.0f;
    int64_t d = 0;
    if (b) {
        for (; d + 16 <= n; d += 16)
            for (int k = 0; k < 16; k++) acc[k] += a[d + k] * b[d + k];
        for (; d < n; d++) s += a[d] * b[d];
    } else {
        for (; d + 16 <= n; d += 16)
            for (int k = 0; k < 16; k++) acc[k] += a[d + k];
        for (; d < n; d++) s += a[d];
    }
    for (int k = 0; k < 16; k++) s += acc[k];
    return s;
}

INLINE void load_row(const void *restrict src, int64_t at, int64_t n, float *restrict dst, const int bf16) {
    if (bf16) {
        const uint16_t *restrict p = (const uint16_t *)src + at;
        for (int64_t d = 0; d < n; d++) dst[d] = from_bf16(p[d]);
    } else {
        memcpy(dst, (const float *)src + at, (size_t)n * sizeof(float));
    }
}

INLINE void store_row(void *restrict dst, int64_t at, int64_t n, const float *restrict src, const int bf16) {
    if (bf16) {
        uint16_t *restrict p = (uint16_t *)dst + at;
        for (int64_t d = 0; d < n; d++) p[d] = to_bf16(src[d]);
    } else {
        memcpy((float *)dst + at, src, (size_t)n * sizeof(float));
    }
}

/* ---- LayerNorm (buf: 3 rows of D floats) -------------------------------------------------------------------- */

INLINE void norm_forward_typed(const struct rows_job *j, int64_t r0, int64_t r1, float *restrict buf, const int bf16) {
    const int64_t D = j->D;
    const float *restrict w = j->w, *restrict b = j->b;
    for (int64_t r = r0; r < r1; r++) {
        load_row(j->x, r * D, D, buf, bf16);
        const float mean = dot(buf, NULL, D) / (float)D;
        for (int64_t d = 0; d < D; d++) buf[d] -= mean;
        const float rstd = 1.0f / sqrtf(dot(buf, buf, D) / (float)D + j->eps);
        for (int64_t d = 0; d < D; d++) buf[d] = buf[d] * rstd * w[d] + b[d];
        store_row(j->y, r * D, D, buf, bf16);
        j->mean[r] = mean;
        j->rstd[r] = rstd;
    }
}

/* dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)), dxhat = dy w; plus the residual's gradient gres when
   given; dw += dy xhat, db += dy into the chunk's partial sums */
INLINE void norm_backward_typed(const struct rows_job *j, int64_t r0, int64_t r1, float *restrict gw,
                                float *restrict gb, float *restrict buf, const int bf16) {
    const int64_t D = j->D;
    const float *restrict w = j->w;
    float *restrict xh = buf, *restrict gy = buf + D, *restrict t = buf + 2 * D;
    for (int64_t r = r0; r < r1; r++) {
        const float mean = j->mean[r], rstd = j->rstd[r];
        load_row(j->x, r * D, D, xh, bf16);
        load_row(j->gy, r * D, D, gy, bf16);
        for (int64_t d = 0; d < D; d++) {
            xh[d] = (xh[d] - mean) * rstd;
            t[d] = gy[d] * w[d];
            gw[d] += gy[d] * xh[d];
            gb[d] += gy[d];
        }
        const float s1 = dot(t, NULL, D) / (float)D, s2 = dot(t, xh, D) / (float)D;
        for (int64_t d = 0; d < D; d++) t[d] = rstd * (t[d] - s1 - xh[d] * s2);
        if (j->gres) {
            load_row(j->gres, r * D, D, gy, bf16);
            for (int64_t d = 0; d < D; d++) t[d] += gy[d];
        }
        store_row(j->gx, r * D, D, t, bf16);
    }
}

/* ---- bias, dropout, residual; bias, GELU ------------------------------------------------------------------- */

/* a row's dropout factors (0 or 1 / (1 - p); all 1 without dropout) into keep */
INLINE void row_mask(const struct rows_job *j, int64_t r, float *restrict keep) {
    const int64_t D = j->D;
    if (j->p <= 0.0f) {
        for (int64_t d = 0; d < D; d++) keep[d] = 1.0f;
        return;
    }
    const struct drop_mask m = j->mask;
    const uint32_t key = drop_row_key(&m, j->locked ? r / j->T : r);
    for (int64_t d = 0; d < D; d++) keep[d] = drop_keep(&m, key, d);
}

INLINE void residual_forward_typed(const struct rows_job *j, int64_t r0, int64_t r1, float *restrict buf,
                                   const int bf16) {
    const int64_t D = j->D;
    const float *restrict b = j->b;
    float *restrict x = buf, *restrict o = buf + D, *restrict keep = buf + 2 * D;
    for (int64_t r = r0; r < r1; r++) {
        row_mask(j, r, keep);
        load_row(j->x, r * D, D, x, bf16);
        load_row(j->o, r * D, D, o, bf16);
        for (int64_t d = 0; d < D; d++) x[d] += keep[d] * (o[d] + b[d]);
        store_row(j->y, r * D, D, x, bf16);
    }
}

/* the branch's gradient: dropout's mask applied to dL/dy; the bias's, its sum */
INLINE void residual_backward_typed(const struct rows_job *j, int64_t r0, int64_t r1, float *restrict gb,
                                    float *restrict buf, const int bf16) {
    const int64_t D = j->D;
    float *restrict g = buf, *restrict keep = buf + D;
    for (int64_t r = r0; r < r1; r++) {
        row_mask(j, r, keep);
        load_row(j->gy, r * D, D, g, bf16);
        for (int64_t d = 0; d < D; d++) {
            g[d] *= keep[d];
            gb[d] += g[d];
        }
        store_row(j->gx, r * D, D, g, bf16);
    }
}

/* y = GELU(a + bias) and, where wanted (j->gx), its derivative there, for the backward (so that the backward is
   one multiply and does not need a) */
INLINE void gelu_forward_typed(const struct rows_job *j, int64_t r0, int64_t r1, float *restrict buf,
                               const int bf16) {
    const int64_t D = j->D;
    const float *restrict b = j->b;
    float *restrict y = buf, *restrict dy = buf + D;
    for (int64_t r = r0; r < r1; r++) {
        load_row(j->x, r * D, D, buf, bf16);
        for (int64_t d = 0; d < D; d++) {
            const float x = buf[d] + b[d], cdf = 0.5f * (1.0f + erf_(x * 0.70710678118654752f));
            y[d] = x * cdf;
            dy[d] = cdf + x * 0.3989422804014327f * exp_poly(-0.5f * x * x);
        }
        store_row(j->y, r * D, D, y, bf16);
        if (j->gx) store_row(j->gx, r * D, D, dy, bf16);
    }
}

/* ga = gy * GELU'(a + bias) from the derivative the forward kept (j->x); the bias's gradient, its sum */
INLINE void gelu_backward_typed(const struct rows_job *j, int64_t r0, int64_t r1, float *restrict gb,
                                float *restrict buf, const int bf16) {
    const int64_t D = j->D;
    float *restrict dy = buf, *restrict g = buf + D;
    for (int64_t r = r0; r < r1; r++) {
        load_row(j->x, r * D, D, dy, bf16);
        load_row(j->gy, r * D, D, g, bf16);
        for (int64_t d = 0; d < D; d++) {
            g[d] *= dy[d];
            gb[d] += g[d];
        }
        store_row(j->gx, r * D, D, g, bf16);
    }
}

INLINE void colsum_typed(const struct rows_job *j, int64_t r0, int64_t r1, float *restrict gb, float *restrict buf,
                         const int bf16) {
    for (int64_t r = r0; r < r1; r++) {
        load_row(j->gy, r * j->D, j->D, buf, bf16);
        for (int64_t d = 0; d < j->D; d++) gb[d] += buf[d];
    }
}

/* ---- running them ------------------------------------------------------------------------------------------ */

enum kind { NORM_F, NORM_B, RESIDUAL_F, RESIDUAL_B, GELU_F, GELU_B, COLSUM };

struct kind_job { struct rows_job *j; enum kind kind; };

#define TYPED(call) do { if (j->bf16) call(1); else call(0); } while (0)

static void run_chunks(void *arg, int64_t c0, int64_t c1) {
    const struct kind_job *k = arg;
    struct rows_job *j = k->j;
    float *buf = malloc((size_t)(3 * j->D) * sizeof(float));
    if (!buf) {
        j->failed = 1;
        return;
    }
    for (int64_t c = c0; c < c1; c++) {
        int64_t lo, hi;
        chunk_rows(j, c, &lo, &hi);
        float *gw = j->partial ? j->partial + c * 2 * j->D : NULL, *gb = gw ? gw + j->D : NULL;
        switch (k->kind) {
#define NF(b) norm_forward_typed(j, lo, hi, buf, b)
#define NB(b) norm_backward_typed(j, lo, hi, gw, gb, buf, b)
#define RF(b) residual_forward_typed(j, lo, hi, buf, b)
#define RB(b) residual_backward_typed(j, lo, hi, gb, buf, b)
#define GF(b) gelu_forward_typed(j, lo, hi, buf, b)
#define GB(b) gelu_backward_typed(j, lo, hi, gb, buf, b)
#define CS(b) colsum_typed(j, lo, hi, gb, buf, b)
        case NORM_F: TYPED(NF); break;
        case NORM_B: TYPED(NB); break;
        case RESIDUAL_F: TYPED(RF); break;
        case RESIDUAL_B: TYPED(RB); break;
        case GELU_F: TYPED(GF); break;
        case GELU_B: TYPED(GB); break;
        default: TYPED(CS);
        }
    }
    free(buf);
}

/* k over every chunk; with `sums`, the chunks' partial sums (zeroed first) added in order into out_w (the first D
   of a chunk's, where given) and out_b (the next D). 0, or -1 where memory for the partial sums or a thread's row
   buffers could not be had (then the outputs are incomplete); so every kernel below. */
static int run_kind(struct rows_job *j, enum kind kind, int sums, float *out_w, float *out_b, int threads) {
    const int64_t D = j->D;
    j->partial = NULL;
    if (sums) {
        j->partial = calloc((size_t)(CHUNKS * 2 * D), sizeof(float));
        if (!j->partial) return -1;
    }
    struct kind_job k = {j, kind};
    train_split(run_chunks, &k, CHUNKS, j->R * D < 65536 ? 1 : threads);
    if (sums) {
        for (int64_t d = 0; d < D; d++) {
            float w = 0.0f, b = 0.0f;
            for (int64_t c = 0; c < CHUNKS; c++) {
                w += j->partial[c * 2 * D + d];
                b += j->partial[c * 2 * D + D + d];
            }
            if (out_w) out_w[d] = w;
            out_b[d] = b;
        }
        free(j->partial);
    }
    return j->failed ? -1 : 0;
}

/* y = LayerNorm(x) * w + b over R rows of D; mean and 1 / sqrt(var + eps) of each row into mean, rstd. */
int norm_forward(int bf16, int64_t R, int64_t D, const void *x, const float *w, const float *b, float eps, void *y,
                  float *mean, float *rstd, int threads) {
    struct rows_job j = {.bf16 = bf16, .R = R, .D = D, .x = x, .w = w, .b = b, .eps = eps, .y = y, .mean = mean,
                         .rstd = rstd};
    return run_kind(&j, NORM_F, 0, NULL, NULL, threads);
}

/* LayerNorm's backward: gx = dL/dx (+ gres, NULL: none), gw = dL/dw, gb = dL/db from gy = dL/dy. */
int norm_backward(int bf16, int64_t R, int64_t D, const void *x, const float *w, const float *mean,
                  const float *rstd, const void *gy, const void *gres, void *gx, float *gw, float *gb, int threads) {
    struct rows_job j = {.bf16 = bf16, .R = R, .D = D, .x = x, .w = w, .mean = (float *)mean,
                         .rstd = (float *)rstd, .gy = gy, .gres = gres, .gx = gx};
    return run_kind(&j, NORM_B, 1, gw, gb, threads);
}

/* y = x + dropout(o + bias) over R = B * T rows of D (p 0: no dropout; `locked`: one mask per b, rows r / T), the
   mask as charnn.models.fused's dropout draws it for the seed. */
int residual_forward(int bf16, int64_t R, int64_t D, const void *x, const void *o, const float *bias, double p,
                      int locked, int64_t T, uint64_t seed, void *y, int threads) {
    struct rows_job j = {.bf16 = bf16, .R = R, .D = D, .x = x, .o = o, .b = bias, .p = (float)p, .locked = locked,
                         .T = T, .mask = drop_mask_of(p, seed), .y = y};
    return run_kind(&j, RESIDUAL_F, 0, NULL, NULL, threads);
}

/* its backward for the branch: go = dropout's mask times gy, gbias = the sum of go's rows. */
int residual_backward(int bf16, int64_t R, int64_t D, const void *gy, double p, int locked, int64_t T, uint64_t seed,
                      void *go, float *gbias, int threads) {
    struct rows_job j = {.bf16 = bf16, .R = R, .D = D, .gy = gy, .p = (float)p, .locked = locked, .T = T,
                         .mask = drop_mask_of(p, seed), .gx = go};
    return run_kind(&j, RESIDUAL_B, 1, NULL, gbias, threads);
}

/* y = GELU(a + bias) over R rows of D, and its derivative there into dy (NULL: not wanted) */
int gelu_forward(int bf16, int64_t R, int64_t D, const void *a, const float *bias, void *y, void *dy, int threads) {
    struct rows_job j = {.bf16 = bf16, .R = R, .D = D, .x = a, .b = bias, .y = y, .gx = dy};
    return run_kind(&j, GELU_F, 0, NULL, NULL, threads);
}

/* its backward: ga = gy dy (dy: the derivative gelu_forward gave), gbias = the sum of ga's rows */
int gelu_backward(int bf16, int64_t R, int64_t D, const void *dy, const void *gy, void *ga, float *gbias,
                  int threads) {
    struct rows_job j = {.bf16 = bf16, .R = R, .D = D, .x = dy, .gy = gy, .gx = ga};
    return run_kind(&j, GELU_B, 1, NULL, gbias, threads);
}

/* out (D) = the sum of x's R rows */
int column_sums(int bf16, int64_t R, int64_t D, const void *x, float *out, int threads) {
    struct rows_job j = {.bf16 = bf16, .R = R, .D = D, .gy = x};
    return run_kind(&j, COLSUM, 1, NULL, out, threads);
}
