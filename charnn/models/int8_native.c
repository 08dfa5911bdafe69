/* --int8 for one stream, with the matrix products in C too: a block of k tokens of an LSTM or GRU in one call.

   charnn.models.native builds this file with cells_native.c into one library and calls it through ctypes
   (native.Int8Block) where the CPU has AVX-512 VNNI (`int8_vnni`). */

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "native_math.h"
#include "native_pool.h"

#define HEAD_SPLIT 200000 /* a head of at least this many weights (vocabulary x hidden) is split over the threads */

/* No Python between tokens. torch._int_mm for one row (a matrix-vector product) takes 30-100 us for a 2x512 LSTM's
   products on 2 cores; this loop reads the same int8 weights, laid out for it once, in a fraction of that, and its
   int32 sums are exactly torch's (so the tokens are the same).

   int8_gemv: the sums x @ W for one group of 16 * tiles outputs (4 tiles: an LSTM's four gates for 16 units, 3: a
   GRU's three), for int8 codes x (K) and W, which `pack` in charnn.models.native lays out as (N/16, K/4, 16, 4): 16
   outputs by 4 inputs per 64-byte vector, so one VNNI instruction (u8 x s8, four products summed into each int32
   lane) does 64 multiply-adds, and a group's tiles share each broadcast of x. x is made unsigned by adding 128, and
   offset[n] = 128 * sum_k W[k][n] is taken off again. x is two pieces: its first k1 inputs from x1, the rest from
   x2 (an LSTM layer above the first reads its input h and its own h, which lie in different buffers). K % 4 == 0,
   k1 % 4 == 0, N % (16 * tiles) == 0. */
#if defined(__AVX512F__)
#include <immintrin.h>  /* (the head's AVX-512 loop needs it without VNNI too) */
#endif
#if defined(__AVX512VNNI__) && defined(__AVX512F__)
int int8_vnni(void) { return 1; }

static inline __attribute__((always_inline)) void int8_gemv(int tiles, int64_t K, int64_t k1, const int8_t *x1,
                                                             const int8_t *x2, const int8_t *w, const int32_t *offset,
                                                             int64_t g, int32_t *out) {
    const int64_t K4 = K / 4, tile = K4 * 64;
    const int8_t *wg = w + tiles * g * tile;
    __m512i a[4];
    for (int c = 0; c < tiles; c++) a[c] = _mm512_setzero_si512();
    for (int piece = 0; piece < 2; piece++) {
        const int64_t from = piece ? k1 / 4 : 0, to = piece ? K4 : k1 / 4;
        const int8_t *x = piece ? x2 : x1;
        const int64_t skip = piece ? k1 : 0;  /* x[4 i - skip] is input 4 i's code */
        for (int64_t i = from; i < to; i++) {
            uint32_t four;
            memcpy(&four, x + (4 * i - skip), 4);
            const __m512i xb = _mm512_set1_epi32((int)(four ^ 0x80808080u));  /* x + 128, as unsigned bytes */
            for (int c = 0; c < tiles; c++)
                a[c] = _mm512_dpbusd_epi32(a[c], xb, _mm512_loadu_si512(wg + c * tile + 64 * i));
        }
    }
    const int32_t *o = offset + 16 * tiles * g;
    for (int c = 0; c < tiles; c++)
        _mm512_storeu_si512(out + 16 * c, _mm512_sub_epi32(a[c], _mm512_loadu_si512(o + 16 * c)));
}
#else
int int8_vnni(void) { return 0; }

static void int8_gemv(int tiles, int64_t K, int64_t k1, const int8_t *x1, const int8_t *x2, const int8_t *w,
                      const int32_t *offset, int64_t g, int32_t *out) {
    (void)K; (void)k1; (void)x1; (void)x2; (void)w; (void)offset; (void)g;  /* never called (int8_vnni says 0) */
    memset(out, 0, 16 * (size_t)tiles * sizeof(int32_t));
}
#endif

/* One product's groups: acc = x @ W. */
typedef struct {
    int64_t K, k1; const int8_t *x1, *x2, *w; const int32_t *offset; int32_t *acc; int tiles;
} product_t;

static void product_part(const void *p, int64_t g0, int64_t g1) {
    const product_t *q = p;
    for (int64_t g = g0; g < g1; g++) {
        if (q->tiles == 4) int8_gemv(4, q->K, q->k1, q->x1, q->x2, q->w, q->offset, g, q->acc + 64 * g);
        else int8_gemv(3, q->K, q->k1, q->x1, q->x2, q->w, q->offset, g, q->acc + 48 * g);
    }
}

/* acc = x @ W for the output groups g0..g1 of 64 (acc[64 (g - g0) ..]), on this thread: min_native.c's int8
   products (where this file is built). */
void int8_groups(int64_t K, const int8_t *x, const int8_t *w, const int32_t *offset, int64_t g0, int64_t g1,
                 int32_t *acc) {
    const product_t q = {K, K, x, x, w, offset, acc - 64 * g0, 4};
    product_part(&q, g0, g1);
}

/* One product, for tests: acc = x @ W (N outputs), on `threads` threads. */
void int8_product(int64_t K, int64_t N, const int8_t *x, const int8_t *w, const int32_t *offset, int32_t *acc,
                  int threads) {
    const product_t q = {K, K, x, x, w, offset, acc, 4};
    run_parts(product_part, &q, N / 64, pool_enter(threads));
    pool_leave();
}

/* One LSTM layer's step for a group's 16 units: its 64 gate sums (the weights' columns are grouped by `pack`'s
   caller so that group g holds units 16g..16g+15's i, f, o, g gates, 16 each; base and factor keep the stepper's
   order, i, f, o, g, H each), then lstm_cell's arithmetic: pre = base + sums * factor, c = f c + i g,
   h = o tanh(c), codes = round(h * levels) into codes_out. */
typedef struct {
    int64_t K, k1, H; const int8_t *x1, *x2, *w; const int32_t *offset; int32_t *acc; const float *base, *factor;
    float *c, *h; int8_t *codes_out; float levels;
} layer_t;

static void layer_part(const void *p, int64_t g0, int64_t g1) {
    const layer_t *q = p;
    float pre[64];
    for (int64_t g = g0; g < g1; g++)  /* the products first: the weights stream in one run (a big model's come */
        int8_gemv(4, q->K, q->k1, q->x1, q->x2, q->w, q->offset, g, q->acc + 64 * g);  /* from memory, not cache) */
    for (int64_t g = g0; g < g1; g++) {
        const int32_t *acc = q->acc + 64 * g;
        for (int gate = 0; gate < 4; gate++) {  /* base and factor in the stepper's order: gate by gate, H each */
            const float *base = q->base + gate * q->H + 16 * g, *factor = q->factor + gate * q->H + 16 * g;
            for (int m = 0; m < 16; m++) pre[16 * gate + m] = base[m] + (float)acc[16 * gate + m] * factor[m];
        }
        float *c = q->c + 16 * g, *h = q->h + 16 * g;
        int8_t *codes = q->codes_out + 16 * g;
        lstm_units(16, pre, 16, c, h);
        for (int m = 0; m < 16; m++) codes[m] = code(h[m], q->levels);
    }
}

/* One GRU layer's step for a group's 16 units, as gru_cell does it: the input side's sums (W_i x, grouped as r, z, n
   16 each; none at layer 0, whose gi is the table's row) and the own side's (W_h h), each scaled back and added to
   its base (the table's row or b_i; b_h) in the stepper's order, then r, z = sigmoid(gi + gh),
   n = tanh(gi_n + r gh_n), h = n + z (h - n), codes = round(h * levels). acc: 6H (the input side's, then the own). */
typedef struct {
    int64_t H; const int8_t *x_in, *x_own, *w_in, *w_own; const int32_t *offset_in, *offset_own; int32_t *acc;
    const float *base_in, *factor_in, *bias_own, *factor_own; float *h; int8_t *codes_out; float levels;
} gru_t;

static void gru_part(const void *p, int64_t g0, int64_t g1) {
    const gru_t *q = p;
    const int64_t H = q->H;
    for (int64_t g = g0; g < g1; g++) {
        if (q->w_in) int8_gemv(3, H, H, q->x_in, q->x_in, q->w_in, q->offset_in, g, q->acc + 48 * g);
        int8_gemv(3, H, H, q->x_own, q->x_own, q->w_own, q->offset_own, g, q->acc + 3 * H + 48 * g);
    }
    float x[48], y[48];
    for (int64_t g = g0; g < g1; g++) {
        const int32_t *ai = q->acc + 48 * g, *ah = q->acc + 3 * H + 48 * g;
        for (int gate = 0; gate < 3; gate++) {
            const int64_t at = gate * H + 16 * g;
            for (int m = 0; m < 16; m++) {
                x[16 * gate + m] = q->w_in ? q->base_in[at + m] + (float)ai[16 * gate + m] * q->factor_in[at + m]
                                           : q->base_in[at + m];
                y[16 * gate + m] = q->bias_own[at + m] + (float)ah[16 * gate + m] * q->factor_own[at + m];
            }
        }
        float *h = q->h + 16 * g;
        gru_units(16, x, y, 16, h);
        for (int m = 0; m < 16; m++) q->codes_out[16 * g + m] = code(h[m], q->levels);
    }
}

/* The Batcher's Gumbel noise (charnn.generation.draw.gumbel_noise), for one row's draw number `draw`: a hash of
   (seed, draw, token), splitmix64 style, whose top 23 bits make a uniform U in (0, 1), and -log(-log(U)). The same
   integers as torch's; the logs are the C library's (torch's may differ in the last bit, as CUDA's do). */
static inline uint64_t mix64(uint64_t x) {
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static inline float gumbel_at(uint64_t mixed_seed, int64_t draw, int64_t V, int64_t v) {
    const uint64_t x = mix64(mixed_seed + (uint64_t)(draw * V + v) * 0x9E3779B97F4A7C15ull);
    const float u = ((float)(x >> 41) + 0.5f) * (1.0f / 8388608.0f);
    return -logf(-logf(u));
}

void gumbel(int64_t seed, int64_t draw, int64_t V, float *out) {
    for (int64_t v = 0; v < V; v++) out[v] = gumbel_at(mix64((uint64_t)seed), draw, V, v);
}

/* A block's noise, k draws of V: out[t * V + v] = draw + t's noise for token v. */
typedef struct { uint64_t seed; int64_t draw, V; float *out; } noise_t;

static void noise_part(const void *p, int64_t e0, int64_t e1) {
    const noise_t *q = p;
    for (int64_t e = e0; e < e1; e++) q->out[e] = gumbel_at(q->seed, q->draw + e / q->V, q->V, e % q->V);
}

/* The head for tokens v0..v1-1: y = (bias + h @ W) / temperature (unless 1), the same float operations as
   head_draw's. */
typedef struct { int64_t H, V; const float *h, *w, *bias; float temperature; float *y; } head_t;

static void head_part(const void *p, int64_t v0, int64_t v1) {
    const head_t *q = p;
    float *y = q->y;
#if defined(__AVX512F__)
    /* 128 logits at a time, kept in registers over the hidden units: each lane adds x_j * w_jv in order j = 0, 1, ...
       with one rounding (an FMA), as head_draw's loop does, so the sums are the same to the bit */
    for (int64_t a = v0; a < v1; a += 128) {
        __m512 acc[8];
        __mmask16 keep[8];
        const int n = (int)((v1 - a + 15) / 16 < 8 ? (v1 - a + 15) / 16 : 8);
        for (int c = 0; c < n; c++) {
            const int64_t left = v1 - a - 16 * c;
            keep[c] = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
            acc[c] = _mm512_setzero_ps();
        }
        for (int64_t j = 0; j < q->H; j++) {
            const __m512 x = _mm512_set1_ps(q->h[j]);
            const float *wj = q->w + j * q->V + a;
            for (int c = 0; c < n; c++)
                acc[c] = _mm512_fmadd_ps(x, _mm512_maskz_loadu_ps(keep[c], wj + 16 * c), acc[c]);
        }
        for (int c = 0; c < n; c++) _mm512_mask_storeu_ps(y + a + 16 * c, keep[c], acc[c]);
    }
#else
    for (int64_t v = v0; v < v1; v++) y[v] = 0.0f;
    for (int64_t j = 0; j < q->H; j++) {
        const float x = q->h[j], *wj = q->w + j * q->V;
        for (int64_t v = v0; v < v1; v++) y[v] += x * wj[v];
    }
#endif
    for (int64_t v = v0; v < v1; v++) {
        const float t = q->bias[v] + y[v];
        y[v] = q->temperature == 1.0f ? t : t / q->temperature;
    }
}

/* k tokens of one int8 stream of an LSTM (gru 0) or a GRU (gru 1), L layers of H, vocabulary V, as FastStepper's
   per-token calls make them (the weights in the grouped order above). LSTM: layer 0's gates are table's row of
   the token plus (h_0's codes @ w[0]) * factor[0]; layer l's are bias[l] plus ([h_{l-1} | h_l]'s codes @ w[l]) *
   factor[l]. GRU: w, offset, factor, bias are the own side's (W_h h + b_h), w_in, offset_in, factor_in, bias_in
   the input side's (layer 0: none, the table's row is gi). Then the head and the draw (temperature, top_k and
   top_p as draw_from's, and the row's noise for its draws draw .. draw + k - 1 of `seed`, made first into noise (k * V
   floats), none if greedy; y: V floats) into drawn[t * drawn_stride], the next token's input. The first input is
   *tok. hs and codes hold every layer's h side by side (L * H); codes2 is a second such buffer (a layer's new
   codes are written while other threads still read the old ones); c[l]: the LSTM's cell states; acc: 6H int32;
   levels: the codes' scale, round(h * levels). products_only: the products alone, k times (the benchmark's
   ceiling). mask, next_state, utf8: a subword model's UTF-8 guard (NULL: none), as cells_native.c's head_draw
   applies it. Every piece runs on `threads` threads. Returns -1 for a token id outside the vocabulary (nothing more
   done), else 0. */
int int8_block(int gru, int64_t L, int64_t H, int64_t V, const float *table, const int8_t *const *w,
               const int32_t *const *offset, const float *const *factor, const float *const *bias,
               const int8_t *const *w_in, const int32_t *const *offset_in, const float *const *factor_in,
               const float *const *bias_in, float *const *c, float *hs, int8_t *codes, int8_t *codes2, int32_t *acc,
               const float *w_head, const float *b_head, float *y, float *noise, int64_t k, float temperature,
               const int64_t *tok, int64_t seed, int64_t draw, int greedy, int64_t top_k, float top_p,
               int64_t *drawn, int64_t drawn_stride, int products_only, int threads, float levels,
               const float *mask, const int64_t *next_state, int64_t *utf8) {
    int64_t id = *tok;
    int8_t *now = codes, *next = codes2;  /* the codes of the token before, and of this one */
    int status = 0;
    threads = pool_enter(threads);
    if (!greedy && !products_only) {
        const noise_t q = {mix64((uint64_t)seed), draw, V, noise};
        run_parts(noise_part, &q, k * V, threads);
    }
    for (int64_t t = 0; t < k; t++) {
        if (!products_only && (id < 0 || id >= V)) { status = -1; break; }
        for (int64_t l = 0; l < L; l++) {
            const int8_t *x1 = l ? next + (l - 1) * H : now, *x2 = now + l * H;  /* [h_{l-1} new | h_l old] */
            if (products_only) {
                const product_t own = {gru ? H : l ? 2 * H : H, H, gru ? x2 : x1, x2, w[l], offset[l], acc, 4 - gru};
                run_parts(product_part, &own, H / 16, threads);
                const product_t in = {H, H, x1, x1, w_in ? w_in[l] : NULL, offset_in ? offset_in[l] : NULL, acc, 3};
                if (gru && l) run_parts(product_part, &in, H / 16, threads);
                continue;
            }
            if (gru) {
                const gru_t q = {H, x1, x2, l ? w_in[l] : NULL, w[l], l ? offset_in[l] : NULL, offset[l], acc,
                                 l ? bias_in[l] : table + id * 3 * H, l ? factor_in[l] : NULL, bias[l], factor[l],
                                 hs + l * H, next + l * H, levels};
                run_parts(gru_part, &q, H / 16, threads);
                continue;
            }
            const layer_t q = {l ? 2 * H : H, H, H, x1, x2, w[l], offset[l], acc, l ? bias[l] : table + id * 4 * H,
                               factor[l], c[l], hs + l * H, next + l * H, levels};
            run_parts(layer_part, &q, H / 16, threads);
        }
        if (products_only) continue;
        int8_t *swap = now; now = next; next = swap;
        const head_t q = {H, V, hs + (L - 1) * H, w_head, b_head, temperature, y};
        if (V * H >= HEAD_SPLIT) run_parts(head_part, &q, V, threads);  /* a subword vocabulary's head: shared */
        else head_part(&q, 0, V);  /* a character model's: a microsecond, less than handing half of it over */
        if (mask) add_mask(y, mask, V, *utf8);
        id = drawn[t * drawn_stride] = draw_from(y, greedy ? NULL : noise + t * V, V, top_k, top_p);
        if (mask) *utf8 = next_state[*utf8 * V + id];
    }
    if (now != codes) memcpy(codes, now, (size_t)(L * H));  /* the stepper's codes: the latest */
    pool_leave();
    return status;
}
