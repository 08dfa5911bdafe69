/* One LSTM or GRU cell step for a batch of rows, every elementwise operation of it in one pass.

   charnn.models.native compiles this file on first use with the system's C compiler (-O3, for the CPU it runs on)
   and calls it through ctypes from charnn.models.stepper.FastStepper: a sampled token then costs one call per
   layer for the cell instead of 6-10 small tensor operations (each a few microseconds of dispatch on a CPU, the
   per-token work outside the matrix products). The matrix products stay torch's (but see int8_native.c).
   Rows are `stride` floats apart (a row of a wider buffer); inside a row everything is contiguous. */

#include <math.h>
#include <stdint.h>

#include "native_math.h"

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
        lstm_units(H, pre, H, cb, hb);
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
        gru_units(H, x, y, H, hb);
        if (codes) {
            int8_t *kb = codes + b * code_stride;
            for (int64_t j = 0; j < H; j++) kb[j] = code(hb[j], levels);
        }
    }
}

/* The head and the draw of one token for the first B rows, where the Batcher draws with top-k and top-p at most:
   logits = bias + h @ W (W as torch keeps it, (H, V): one axpy per hidden unit, so the loop over the vocabulary
   vectorises), divided by the temperature unless it is 1, then draw_from (top-k, top-p, the noise, the argmax) into
   out. The varying arguments come last, after those a caller binds once. mask (NULL: none): a subword model's UTF-8
   guard (charnn.generation.draw.Utf8Mask), row b's logits get mask[state[b] * V ..] (0 or -inf) before the draw and
   its state becomes next[state[b] * V + out[b]] after it. */
static void head_draw_t(int64_t H, int64_t V, const float *h, int64_t h_stride, const float *w, const float *bias,
                        float *logits, int64_t B, const float *noise, int64_t *out, float temperature, int64_t top_k,
                        float top_p, const float *mask, const int64_t *next, int64_t *state) {
    for (int64_t b = 0; b < B; b++) {
        const float *hb = h + b * h_stride;
        float *lb = logits + b * V;
        for (int64_t v = 0; v < V; v++) lb[v] = 0.0f;
        for (int64_t j = 0; j < H; j++) {
            const float x = hb[j], *wj = w + j * V;
            for (int64_t v = 0; v < V; v++) lb[v] += x * wj[v];
        }
        for (int64_t v = 0; v < V; v++) {
            const float y = bias[v] + lb[v];
            lb[v] = temperature == 1.0f ? y : y / temperature;
        }
        if (mask) add_mask(lb, mask, V, state[b]);
        out[b] = draw_from(lb, noise ? noise + b * V : NULL, V, top_k, top_p);
        if (mask) state[b] = next[state[b] * V + out[b]];
    }
}

void head_draw(int64_t H, int64_t V, const float *h, int64_t h_stride, const float *w, const float *bias,
               float *logits, int64_t B, const float *noise, int64_t *out, float temperature, int64_t top_k,
               float top_p, const float *mask, const int64_t *next, int64_t *state) {
    head_draw_t(H, V, h, h_stride, w, bias, logits, B, noise, out, temperature, top_k, top_p, mask, next, state);
}
