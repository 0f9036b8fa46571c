/*
 * qplug/codec.h - exact element codecs for every format qplug reads
 * (formats.md). Header-only so that plugins, which never link the core,
 * share the one implementation.
 *
 * Decoding is exact. Encoding rounds to nearest, ties to even, and
 * saturates to the largest finite value (E4M3: +-448, E2M1: +-6), except
 * F16, which follows IEEE and overflows to infinity.
 */
#ifndef QPLUG_CODEC_H
#define QPLUG_CODEC_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

static inline uint32_t qplug_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float qplug_bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* ---- BF16: the upper half of an fp32 ---------------------------------- */

static inline float qplug_bf16_to_f32(uint16_t h)
{
    return qplug_bits_f32((uint32_t)h << 16);
}

static inline uint16_t qplug_f32_to_bf16(float f)
{
    uint32_t u = qplug_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it quiet and signed */
        return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* ---- A generic small-float encoder ------------------------------------ */

/*
 * Rounds |a| (finite, >= 0) to the grid of a format with `mbits` mantissa
 * bits whose smallest normal exponent is `emin` (subnormals share that
 * exponent's step), and returns the code without the sign:
 * (biased exponent << mbits) | mantissa. Ties go to the even code. The
 * caller saturates. Exact: every step is a power of two, so the scaled
 * value is exact in double and rint() (round-half-even in the default
 * rounding mode) does the only rounding.
 */
static inline uint32_t qplug__minifloat_code(double a, int mbits, int emin)
{
    int e;
    if (a == 0.0)
        return 0;
    (void)frexp(a, &e); /* a = f * 2^e, f in [0.5, 1): exponent is e-1 */
    e -= 1;
    if (e < emin)
        e = emin;
    /* Quantum of this binade: 2^(e - mbits). */
    double q = rint(ldexp(a, mbits - e));
    /* q in [2^mbits, 2^(mbits+1)] for normals, [0, 2^mbits] for subnormals;
     * q == 2^(mbits+1) rolls over into the next binade, which the code
     * arithmetic below handles naturally. */
    uint32_t biased = (uint32_t)(e - emin); /* 0 for the subnormal/first binade */
    if (q >= ldexp(1.0, mbits) || biased > 0)
        return ((biased + 1u) << mbits) + (uint32_t)q - (1u << mbits);
    return (uint32_t)q; /* subnormal */
}

/* ---- F8_E4M3 (e4m3fn): bias 7, no inf, S.1111.111 = NaN, max 448 ------ */

static inline float qplug_e4m3_to_f32(uint8_t b)
{
    uint32_t s = b >> 7, e = (b >> 3) & 0xfu, m = b & 7u;
    float v;
    if (e == 15 && m == 7)
        return s ? -NAN : NAN;
    if (e == 0)
        v = ldexpf((float)m, -9);
    else
        v = ldexpf((float)(8u + m), (int)e - 10);
    return s ? -v : v;
}

static inline uint8_t qplug_f32_to_e4m3(float f)
{
    if (isnan(f))
        return 0x7f;
    uint8_t sign = signbit(f) ? 0x80 : 0;
    double a = fabs((double)f);
    if (a >= 448.0)
        return (uint8_t)(sign | 0x7e);
    uint32_t c = qplug__minifloat_code(a, 3, -6);
    if (c > 0x7e)
        c = 0x7e;
    return (uint8_t)(sign | c);
}

/* ---- F8_E8M0 (ue8m0): 2^(b-127), b = 255 is NaN, no sign, no zero ----- */

static inline float qplug_e8m0_to_f32(uint8_t b)
{
    if (b == 255)
        return NAN;
    return ldexpf(1.0f, (int)b - 127);
}

/* The byte for 2^e, e clamped to [-127, 127]. */
static inline uint8_t qplug_e8m0_from_exp(int e)
{
    if (e < -127)
        e = -127;
    if (e > 127)
        e = 127;
    return (uint8_t)(e + 127);
}

/* Nearest power of two in linear value, ties (mantissa exactly 1.5) going
 * up, as ml_dtypes' float8_e8m0fnu cast does; a result beyond 2^127, zero,
 * negatives, inf and NaN give the NaN byte 255 (the format has no zero or
 * sign), inputs up to 2^-127 give 2^-127. fp32 subnormals strictly between
 * 2^-127 and 2^-126 give 2^-126: ml_dtypes and torch both round them so
 * (they round the fp32 bit pattern, where those values have the biased
 * exponent 0), and the fixtures of tests/unit/test_codecs.c check it. */
static inline uint8_t qplug_f32_to_e8m0(float f)
{
    if (!(f > 0.0f) || isinf(f))
        return 255;
    if (f < 0x1p-126f)
        return f > 0x1p-127f ? 1 : 0;
    int e;
    double m = frexp((double)f, &e); /* f = m * 2^e, m in [0.5, 1) */
    int k = (m >= 0.75) ? e : e - 1; /* candidates 2^(e-1) and 2^e */
    if (k > 127)
        return 255;
    return qplug_e8m0_from_exp(k);
}

/* ---- E2M1 (FP4): codes 0..7 = {0, .5, 1, 1.5, 2, 3, 4, 6}, bit 3 sign -- */

static inline float qplug_e2m1_to_f32(uint8_t code)
{
    static const float mag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    float v = mag[code & 7u];
    return (code & 8u) ? -v : v;
}

/* NaN encodes as +0: callers reject non-finite input before encoding. */
static inline uint8_t qplug_f32_to_e2m1(float f)
{
    if (isnan(f))
        return 0;
    uint8_t sign = signbit(f) ? 8 : 0;
    double a = fabs((double)f);
    if (a >= 6.0)
        return (uint8_t)(sign | 7);
    uint32_t c = qplug__minifloat_code(a, 1, 0);
    if (c > 7)
        c = 7;
    return (uint8_t)(sign | c);
}

/* Element i of a packed E2M1 row: 2j in the low nibble, 2j+1 in the high. */
static inline float qplug_e2m1_get(const uint8_t *packed, int64_t i)
{
    uint8_t b = packed[i >> 1];
    return qplug_e2m1_to_f32((i & 1) ? (uint8_t)(b >> 4) : (uint8_t)(b & 15u));
}

/* ---- F16 (IEEE half) ----------------------------------------------------- */

static inline float qplug_f16_to_f32(uint16_t h)
{
    uint32_t s = h >> 15, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    float v;
    if (e == 31)
        v = m ? NAN : INFINITY;
    else if (e == 0)
        v = ldexpf((float)m, -24);
    else
        v = ldexpf((float)(1024u + m), (int)e - 25);
    return s ? -v : v;
}

static inline uint16_t qplug_f32_to_f16(float f)
{
    uint16_t sign = signbit(f) ? 0x8000 : 0;
    if (isnan(f))
        return (uint16_t)(sign | 0x7e00);
    double a = fabs((double)f);
    uint32_t c = isinf(f) ? 0x7c00u : qplug__minifloat_code(a, 10, -14);
    if (c >= 0x7c00u)
        c = 0x7c00u; /* overflow rounds to infinity */
    return (uint16_t)(sign | c);
}

#ifdef __cplusplus
}
#endif
#endif
