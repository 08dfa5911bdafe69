/* What training's two C files share (charnn.models.native builds train_native.c and block_native.c into one
   library): bfloat16 loads and stores, dropout's hashed mask, and `train_split`, which runs a piece of work on
   torch's OpenMP threads (train_native.c). */

#ifndef CHARNN_NATIVE_TRAIN_H
#define CHARNN_NATIVE_TRAIN_H

#include "native_math.h"

#define INLINE static inline __attribute__((always_inline))

typedef void (*piece_fn)(void *job, int64_t lo, int64_t hi);

/* fn(job, lo, hi) over [0, n) in up to `threads` parts (train_native.c) */
void train_split(piece_fn fn, void *job, int64_t n, int threads);

static inline float from_bf16(uint16_t x) {
    union { uint32_t i; float f; } u;
    u.i = (uint32_t)x << 16;
    return u.f;
}

static inline uint16_t to_bf16(float x) {  /* round to nearest even; a NaN stays a (quiet) NaN */
    union { uint32_t i; float f; } u;
    u.f = x;
    const uint16_t nan = (uint16_t)((u.i >> 16) | 0x40u);
    return (u.i & 0x7fffffffu) > 0x7f800000u ? nan : (uint16_t)((u.i + 0x7fffu + ((u.i >> 16) & 1u)) >> 16);
}

static inline float load(const void *p, int64_t i, int bf16) {
    return bf16 ? from_bf16(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static inline void store(void *p, int64_t i, float x, int bf16) {
    if (bf16) ((uint16_t *)p)[i] = to_bf16(x);
    else ((float *)p)[i] = x;
}

static inline uint32_t mix32(uint32_t h) {  /* murmur3's finaliser: a bijection that spreads every bit */
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

/* Dropout's mask: number d of mask row m is dropped where hash(seed, m, d) < below (p * 2^32), kept scaled by
   1 / (1 - p) otherwise. The same (seed, m, d) always gives the same answer: that is how a backward applies the
   forward's mask without having stored it. */
struct drop_mask { float scale; uint32_t below, seed_lo, seed_hi; };

static inline struct drop_mask drop_mask_of(double p, uint64_t seed) {
    double below = p * 4294967296.0;
    struct drop_mask m = {(float)(1.0 / (1.0 - p)), below >= 4294967295.0 ? 0xffffffffu : (uint32_t)below,
                          (uint32_t)seed, (uint32_t)(seed >> 32)};
    return m;
}

INLINE uint32_t drop_row_key(const struct drop_mask *m, int64_t row) {
    return mix32(m->seed_lo ^ mix32((uint32_t)row + m->seed_hi * 0x9e3779b9u + (uint32_t)((uint64_t)row >> 32)));
}

INLINE float drop_keep(const struct drop_mask *m, uint32_t key, int64_t d) {  /* 0 or 1 / (1 - p) */
    return mix32(key ^ ((uint32_t)d * 0x9e3779b1u)) < m->below ? 0.0f : m->scale;
}

#endif
