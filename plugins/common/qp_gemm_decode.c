/*
 * plugins/common/qp_gemm_decode.c - the weight-tile decoders of qplug__gemm:
 * the same exact values as qplug__wmat_dequant_rows and qplug__wmat_fp8_rows
 * (qp_weights.c), written branch-free so that the compiler vectorizes them,
 * and compiled twice: for the baseline ISA and, on x86-64, for AVX2.
 *
 * With one or a few activation rows the GEMM is bound by decoding (each
 * weight is used once or a few times), so these loops set the decode speed
 * of a CPU user. Random FP4 signs made the table-and-branch decoder
 * mispredict on every other value.
 */
#include <stdbool.h>
#include <string.h>

#include "qplug/codec.h"
#include "qp_common.h"
#include "qp_gemm_kernels.h"

#define QP_INLINE static inline __attribute__((always_inline))

QP_INLINE float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* E4M3 (e4m3fn) without branches: a normal code places its exponent and
 * mantissa into fp32 fields (bias 7 -> 127); a subnormal one is m * 2^-9,
 * computed in normal fp32 so that a host running with denormals flushed
 * still gets it right; 0x7f / 0xff are NaN. */
QP_INLINE float e4m3(uint8_t b)
{
    uint32_t e = (b >> 3) & 15u, m = b & 7u;
    float norm = bits_f32(((e + 120u) << 23) | (m << 20));
    float sub = (float)m * 0x1p-9f;
    float v = e ? norm : sub;
    v = (b & 0x7fu) == 0x7fu ? bits_f32(0x7fc00000u) : v;
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return bits_f32(u | (uint32_t)(b & 0x80u) << 24);
}

/* E8M0: 2^(b-127) built from bits (b = 0 is the fp32 subnormal 2^-127,
 * 255 is NaN). */
QP_INLINE float e8m0(uint8_t b)
{
    if (b == 255)
        return bits_f32(0x7fc00000u);
    return b ? bits_f32((uint32_t)b << 23) : bits_f32(0x00400000u);
}

static int64_t ceil_div(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

/* The FP8 block scale of tile (tr, tc). */
static float fp8_scale(const qplug__wmat *w, int64_t tr, int64_t tc)
{
    int64_t kb = ceil_div(w->cols, QPLUG__FP8_BLOCK);
    if (w->scale_e8m0)
        return e8m0(((const uint8_t *)w->scale)[tr * kb + tc]);
    return ((const float *)w->scale)[tr * kb + tc];
}

/* The signed E2M1 values of both nibbles of every byte: 2 KB, built per
 * call so that no mutable table outlives it. */
static void fp4_pairs(float pairs[256][2])
{
    for (int b = 0; b < 256; b++) {
        pairs[b][0] = qplug_e2m1_to_f32((uint8_t)(b & 15));
        pairs[b][1] = qplug_e2m1_to_f32((uint8_t)(b >> 4));
    }
}

/* d[c] = E4M3(q[c]) * s (a scale of 1 leaves the values exact) through a
 * 256-entry table. */
typedef void (*e4m3_run_fn)(const uint8_t *q, int64_t len, float s, float *d, const float *lut);

QP_INLINE void decode_body(const qplug__wmat *w, int64_t r0, int64_t r1, bool fp8_split,
                           float *restrict dst, float *restrict sc, e4m3_run_fn e4m3_run)
{
    float lut[256];
    if (w->fmt == QPLUG__W_FP8_BLOCK)
        for (int b = 0; b < 256; b++)
            lut[b] = e4m3((uint8_t)b);
    int64_t cols = w->cols;
    switch (w->fmt) {
    case QPLUG__W_BF16: {
        /* Checkpoint tensors may start at odd addresses: memcpy loads. */
        const uint8_t *s = (const uint8_t *)w->data + (size_t)(r0 * cols) * 2;
        for (int64_t i = 0; i < (r1 - r0) * cols; i++) {
            uint16_t v;
            memcpy(&v, s + 2 * i, sizeof v);
            dst[i] = bits_f32((uint32_t)v << 16);
        }
        return;
    }
    case QPLUG__W_FP8_BLOCK: {
        int64_t kb = ceil_div(cols, QPLUG__FP8_BLOCK);
        const uint8_t *q = (const uint8_t *)w->data;
        for (int64_t r = r0; r < r1; r++) {
            const uint8_t *qr = q + r * cols;
            float *d = dst + (r - r0) * cols;
            for (int64_t b = 0; b < kb; b++) {
                int64_t c0 = b * QPLUG__FP8_BLOCK;
                int64_t c1 = c0 + QPLUG__FP8_BLOCK < cols ? c0 + QPLUG__FP8_BLOCK : cols;
                float s = fp8_scale(w, r / QPLUG__FP8_BLOCK, b);
                if (fp8_split) {
                    sc[(r - r0) * kb + b] = s;
                    s = 1.0f;
                }
                e4m3_run(qr + c0, c1 - c0, s, d + c0, lut);
            }
        }
        return;
    }
    case QPLUG__W_MXFP4:
    case QPLUG__W_NVFP4: {
        float pairs[256][2];
        fp4_pairs(pairs);
        bool mx = w->fmt == QPLUG__W_MXFP4;
        int64_t g = mx ? 32 : 16, nb = cols / g;
        const uint8_t *q = (const uint8_t *)w->data;
        const uint8_t *scb = (const uint8_t *)w->scale;
        for (int64_t r = r0; r < r1; r++) {
            const uint8_t *qr = q + r * (cols / 2);
            float *d = dst + (r - r0) * cols;
            for (int64_t b = 0; b < nb; b++) {
                uint8_t sb = scb[r * nb + b];
                float *db = d + b * g;
                const uint8_t *qb = qr + b * g / 2;
                for (int64_t c = 0; c < g / 2; c++) {
                    db[2 * c] = pairs[qb[c]][0];
                    db[2 * c + 1] = pairs[qb[c]][1];
                }
                /* MXFP4: an exact power of two. NVFP4: e2m1 * e4m3 is
                 * exact in fp32; the global multiplies once, as in
                 * qp_weights.c. */
                if (mx) {
                    float s = e8m0(sb);
                    for (int64_t c = 0; c < g; c++)
                        db[c] *= s;
                } else {
                    float s = e4m3(sb), gl = w->global;
                    for (int64_t c = 0; c < g; c++)
                        db[c] = (db[c] * s) * gl;
                }
            }
        }
        return;
    }
    case QPLUG__W_F32:
    case QPLUG__W_F16:
        break;
    }
    if (fp8_split)
        qplug__wmat_fp8_rows(w, r0, r1, dst, sc);
    else
        qplug__wmat_dequant_rows(w, r0, r1, dst);
}

static void e4m3_run_table(const uint8_t *q, int64_t len, float s, float *d, const float *lut)
{
    for (int64_t c = 0; c < len; c++)
        d[c] = lut[q[c]] * s;
}

static void decode_portable(const qplug__wmat *w, int64_t r0, int64_t r1, bool fp8_split,
                            float *dst, float *sc)
{
    decode_body(w, r0, r1, fp8_split, dst, sc, e4m3_run_table);
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* The E4M3 bit layout moved into fp32 fields eight values at a time, as
 * e4m3() does one value: normal codes get the exponent rebiased, codes
 * with exponent 0 become m * 2^-9, 0x7f/0xff NaN, then the sign. */
__attribute__((target("avx2,fma"))) static void e4m3_run_avx2(const uint8_t *q, int64_t len,
                                                               float s, float *d,
                                                               const float *lut)
{
    const __m256i k15 = _mm256_set1_epi32(15), k7 = _mm256_set1_epi32(7);
    const __m256i k7f = _mm256_set1_epi32(0x7f), k80 = _mm256_set1_epi32(0x80);
    const __m256i bias = _mm256_set1_epi32(120), zero = _mm256_setzero_si256();
    const __m256 nan = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc00000));
    const __m256 sub_step = _mm256_set1_ps(0x1p-9f), vs = _mm256_set1_ps(s);
    int64_t c = 0;
    for (; c + 8 <= len; c += 8) {
        int64_t raw;
        memcpy(&raw, q + c, sizeof raw);
        __m256i v = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(raw));
        __m256i e = _mm256_and_si256(_mm256_srli_epi32(v, 3), k15);
        __m256i m = _mm256_and_si256(v, k7);
        __m256 norm = _mm256_castsi256_ps(_mm256_or_si256(
            _mm256_slli_epi32(_mm256_add_epi32(e, bias), 23), _mm256_slli_epi32(m, 20)));
        __m256 sub = _mm256_mul_ps(_mm256_cvtepi32_ps(m), sub_step);
        __m256 val = _mm256_blendv_ps(norm, sub, _mm256_castsi256_ps(_mm256_cmpeq_epi32(e, zero)));
        __m256i isnan = _mm256_cmpeq_epi32(_mm256_and_si256(v, k7f), k7f);
        val = _mm256_blendv_ps(val, nan, _mm256_castsi256_ps(isnan));
        __m256i sign = _mm256_slli_epi32(_mm256_and_si256(v, k80), 24);
        val = _mm256_or_ps(val, _mm256_castsi256_ps(sign));
        _mm256_storeu_ps(d + c, _mm256_mul_ps(val, vs));
    }
    for (; c < len; c++)
        d[c] = lut[q[c]] * s;
}

__attribute__((target("avx2,fma"))) static void decode_avx2(const qplug__wmat *w, int64_t r0,
                                                             int64_t r1, bool fp8_split,
                                                             float *dst, float *sc)
{
    decode_body(w, r0, r1, fp8_split, dst, sc, e4m3_run_avx2);
}
#endif

qplug__decode_fn qplug__gemm_decoder(bool avx2)
{
#if defined(__x86_64__) && defined(__GNUC__)
    if (avx2)
        return decode_avx2;
#endif
    (void)avx2;
    return decode_portable;
}
