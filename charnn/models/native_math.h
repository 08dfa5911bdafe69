/* What the sampler's C files share (charnn.models.native builds them into one library): elementwise functions,
   and the draw from a row's tempered logits.

   exp is a polynomial (Cephes' expf coefficients, |relative error| < 2e-7 on the range used) so that the
   compiler vectorises the loops; sigmoid and tanh are built on it. */

#ifndef CHARNN_NATIVE_MATH_H
#define CHARNN_NATIVE_MATH_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
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
    scale.i = (int32_t)((uint32_t)((int32_t)n + 127) << 23); /* 2^n (n in [-126, 127] after the clamp) */
    return p * scale.f;
}

static inline float sigmoid(float x) { return 1.0f / (1.0f + exp_poly(-x)); }

static inline float tanh_(float x) {
    float e = exp_poly(-2.0f * fabsf(x));                  /* tanh |x| = (1 - e) / (1 + e), no overflow */
    return copysignf((1.0f - e) / (1.0f + e), x);
}

/* erf by the rational approximation of Eigen and XLA (odd degree-13 over even degree-8 polynomials in x on
   [-4, 4], where float erf reaches +-1; |error| < 3.3e-7): a few FMAs and one division, which vectorise. */
static inline float erf_(float x) {
    x = x < -4.0f ? -4.0f : x > 4.0f ? 4.0f : x;
    const float x2 = x * x;
    float p = -2.72614225801306e-10f;
    p = p * x2 + 2.77068142495902e-08f;
    p = p * x2 - 2.10102402082508e-06f;
    p = p * x2 - 5.69250639462346e-05f;
    p = p * x2 - 7.34990630326855e-04f;
    p = p * x2 - 2.95459980854025e-03f;
    p = p * x2 - 1.60960333262415e-02f;
    float q = -1.45660718464996e-05f;
    q = q * x2 - 2.13374055278905e-04f;
    q = q * x2 - 1.68282697438203e-03f;
    q = q * x2 - 7.37332916720468e-03f;
    q = q * x2 - 1.42647390514189e-02f;
    return x * p / q;
}

/* GELU, the exact one, x Phi(x) = x (1 + erf(x / sqrt 2)) / 2 (|error| < 1.5e-6 against float64's; block_native.c
   makes its derivative alongside) */
static inline float gelu(float x) { return 0.5f * x * (1.0f + erf_(x * 0.70710678118654752f)); }

static inline int8_t code(float h, float levels) { return (int8_t)rintf(h * levels); } /* round half to even */

/* n LSTM units: gate pre-activations at pre (i), pre + gap (f), pre + 2 gap (o), pre + 3 gap (g);
   c = f c + i g, h = o tanh(c). The one arithmetic of the per-token cell and the int8 block. */
static inline void lstm_units(int64_t n, const float *pre, int64_t gap, float *c, float *h) {
    for (int64_t j = 0; j < n; j++) {
        float i = sigmoid(pre[j]), f = sigmoid(pre[gap + j]), o = sigmoid(pre[2 * gap + j]);
        float g = tanh_(pre[3 * gap + j]);
        float cj = f * c[j] + i * g;
        c[j] = cj;
        h[j] = o * tanh_(cj);
    }
}

/* n GRU units: x = W_i x + b_i and y = W_h h + b_h, gates r, z, n at 0, gap, 2 gap; r, z = sigmoid(x + y),
   n = tanh(x_n + r y_n), h = n + z (h - n). */
static inline void gru_units(int64_t n, const float *x, const float *y, int64_t gap, float *h) {
    for (int64_t j = 0; j < n; j++) {
        float r = sigmoid(x[j] + y[j]), z = sigmoid(x[gap + j] + y[gap + j]);
        float m = tanh_(x[2 * gap + j] + r * y[2 * gap + j]);
        h[j] = m + z * (h[j] - m);
    }
}

/* The k-th largest of y[0..V) for 0 < k < V, as torch.topk(y, k).values[-1] (NaN counts as the largest), by
   quickselect on a copy; -INFINITY where the copy cannot be made (then nothing is filtered). */
static inline float kth_largest(const float *y, int64_t V, int64_t k) {
    float *a = malloc((size_t)V * sizeof(float));
    if (!a) return -INFINITY;
    for (int64_t v = 0; v < V; v++) a[v] = isnan(y[v]) ? INFINITY : y[v];
    int64_t lo = 0, hi = V - 1, want = k - 1;  /* a[want] once a[lo..hi] is sorted, descending */
    while (lo < hi) {
        const float pivot = a[lo + (hi - lo) / 2];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] > pivot) i++;
            while (a[j] < pivot) j--;
            if (i <= j) { float t = a[i]; a[i] = a[j]; a[j] = t; i++; j--; }
        }
        if (want <= j) hi = j; else if (want >= i) lo = i; else break;
    }
    const float kth = a[want];
    free(a);
    return kth;
}

/* a[0..n) sorted descending (no NaN), by four 8-bit passes of a radix sort on keys that order as the floats do,
   in `keys` (2 n): linear in n, where qsort's calls of a comparison cost tens of ns a value. A key is the float's
   bits for a negative float, else their complement without the sign bit: larger floats, smaller keys. (-0 sorts
   after +0: they are equal, as every comparison here sees them.) */
static inline void sort_descending(float *a, uint32_t *keys, int64_t n) {
    uint32_t *k = keys, *t = keys + n;
    memcpy(k, a, (size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++)
        k[i] = (k[i] & 0x80000000u) ? k[i] : (~k[i] & 0x7fffffffu);
    for (int shift = 0; shift < 32; shift += 8) {
        int64_t count[257] = {0};
        for (int64_t i = 0; i < n; i++) count[((k[i] >> shift) & 0xffu) + 1]++;
        for (int d = 0; d < 256; d++) count[d + 1] += count[d];
        for (int64_t i = 0; i < n; i++) t[count[(k[i] >> shift) & 0xffu]++] = k[i];
        uint32_t *swap = k; k = t; t = swap;
    }
    for (int64_t i = 0; i < n; i++)  /* (after four passes the keys are in keys[0..n) again) */
        k[i] = (k[i] & 0x80000000u) ? k[i] : (~k[i] & 0x7fffffffu);
    memcpy(a, k, (size_t)n * sizeof(float));
}

/* The lowest logit top-p keeps among y's values at or above `floor` (top-k's), as filter_logits: their softmax
   (float32, the largest subtracted), sorted descending, cumulative sums in double stored as float (torch's CPU
   cumsum), and a token is out where the mass before it reaches p ((float)cum - prob >= p, in float); the first
   always stays. *ties: how many of the values equal to the one returned are kept (torch keeps those its sort put
   first; draw_from keeps the first by index), -1 for all. `floor` where memory cannot be had or a value is NaN
   (then top-p filters nothing).

   Only the values the cut can reach are sorted: each candidate's exp(y - max) falls in a power-of-two bucket (its
   float exponent); the buckets from the top whose mass reaches p, and one more for rounding, hold every token
   before the cut. A trained model's nucleus is a few dozen tokens of a vocabulary of thousands: sorting them all
   (qsort) was slower than torch's draw past about a thousand tokens. Where the sorted part ends before the cut
   (rounding past the spare bucket), the rest is sorted too. */
enum { TOP_P_BUCKETS = 64 };

static inline int top_p_bucket(float e) {  /* e in (0, 1]: 0 for [0.5, 1], 1 for [0.25, 0.5), ...; 0 above */
    union { float f; uint32_t u; } bits = {e};
    const int b = 126 - (int)((bits.u >> 23) & 0xff);  /* (the biased exponent: 126 for [0.5, 1)) */
    return b < 0 ? 0 : b >= TOP_P_BUCKETS ? TOP_P_BUCKETS - 1 : b;
}

static inline float top_p_floor(const float *y, int64_t V, float floor, float top_p, int64_t *ties) {
    *ties = -1;
    float top = -INFINITY;
    int64_t n = 0;
    for (int64_t v = 0; v < V; v++) {
        if (isnan(y[v])) return floor;
        if (y[v] >= floor && y[v] > -INFINITY) {
            n++;
            if (y[v] > top) top = y[v];
        }
    }
    if (n == 0) return floor;
    float *e = malloc((size_t)V * sizeof(float)), *a = malloc((size_t)n * sizeof(float));
    uint32_t *keys = malloc((size_t)(2 * n) * sizeof(uint32_t));
    if (!e || !a || !keys) { free(e); free(a); free(keys); return floor; }
    double mass[TOP_P_BUCKETS] = {0}, total = 0.0;
    for (int64_t v = 0; v < V; v++) {
        e[v] = y[v] >= floor && y[v] > -INFINITY ? expf(y[v] - top) : 0.0f;
        if (e[v] > 0.0f) mass[top_p_bucket(e[v])] += e[v];
        total += e[v];
    }
    const float sum = (float)total;
    int last = 0;  /* the lowest bucket sorted: where the mass from the top reaches p, then one more */
    for (double acc = 0.0; last < TOP_P_BUCKETS - 1; last++) {
        acc += mass[last];
        if (acc >= (double)top_p * total) break;
    }
    last = last + 1 < TOP_P_BUCKETS ? last + 1 : last;
    float low = floor;
    for (int pass = 0; pass < 2; pass++) {  /* the buckets down to `last`; all of them if the cut lies below */
        int64_t m = 0;
        for (int64_t v = 0; v < V; v++)
            if (y[v] >= floor && y[v] > -INFINITY && (pass || (e[v] > 0.0f && top_p_bucket(e[v]) <= last)))
                a[m++] = y[v];
        if (m == 0) continue;  /* (no probability above 0 in the buckets: a logit of +inf makes them NaN) */
        sort_descending(a, keys, m);
        double cum = 0.0;
        float prev = expf(a[0] - top) / sum;  /* the first token's probability */
        int64_t kept = 1;
        for (; kept < m; kept++) {
            const float p = expf(a[kept] - top) / sum;
            cum += (double)prev;
            if ((float)(cum + (double)p) - p >= top_p) break;  /* (torch: cumsum[i] - probs[i] >= p) */
            prev = p;
        }
        if (kept == m && m < n) continue;  /* the sorted part ran out before the cut: sort them all */
        low = a[kept - 1];
        if (kept < m) {  /* cut: of the values equal to the last kept, only those before the cut stay */
            *ties = 0;
            for (int64_t i = kept - 1; i >= 0 && a[i] == low; i--) (*ties)++;
        }
        break;
    }
    free(e);
    free(a);
    free(keys);
    return low;  /* (>= floor: every value in a is) */
}

/* A subword model's UTF-8 guard (charnn.generation.draw.Utf8Mask): y += the mask's row for the state (0 for the tokens
   allowed there, -inf for the rest), before top-k, top-p and the noise, as the Batcher's torch draw adds it. */
static inline void add_mask(float *y, const float *mask, int64_t V, int64_t state) {
    const float *m = mask + state * V;
    for (int64_t v = 0; v < V; v++) y[v] += m[v];
}

/* The Batcher's draw from one row's tempered logits y (V): top-k (top_k in 1..V-1; 0: none), then top-p (top_p in
   (0, 1); 1: none) as filter_logits does them (below the k-th largest, or out of the nucleus: -inf), plus noise
   (NULL: none), and the argmax as torch.argmax (the first of equal values, and NaN above all). */
static inline int64_t draw_from(const float *y, const float *noise, int64_t V, int64_t top_k, float top_p) {
    float kth = top_k > 0 && top_k < V ? kth_largest(y, V, top_k) : -INFINITY;
    int64_t ties = -1;  /* (top-p's cut through equal values: how many of them stay) */
    if (top_p < 1.0f) kth = top_p_floor(y, V, kth, top_p, &ties);
    int64_t best = 0;
    float top = -INFINITY;
    for (int64_t v = 0; v < V && !isnan(top); v++) {
        int out = y[v] < kth;
        if (!out && ties >= 0 && y[v] == kth) {  /* the first `ties` of them by index */
            if (ties == 0) out = 1; else ties--;
        }
        const float x = out ? -INFINITY : y[v] + (noise ? noise[v] : 0.0f);
        if (x > top || isnan(x)) { top = x; best = v; }
    }
    return best;
}

#endif
