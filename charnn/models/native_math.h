/* The elementwise functions the sampler's C files share (charnn.models.native builds them into one library).

   exp is a polynomial (Cephes' expf coefficients, |relative error| < 2e-7 on the range used) so that the
   compiler vectorises the loops; sigmoid and tanh are built on it. */

#ifndef CHARNN_NATIVE_MATH_H
#define CHARNN_NATIVE_MATH_H

#include <math.h>
#include <stdint.h>

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

#endif
