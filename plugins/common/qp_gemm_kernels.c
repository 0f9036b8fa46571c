/*
 * plugins/common/qp_gemm_kernels.c - the fp32 micro-kernels of qplug__gemm:
 * portable C, and x86-64 AVX2+FMA and AVX-512 versions compiled through
 * target attributes (the rest of the plugin keeps the baseline ISA, so the
 * binary runs on any x86-64) and picked with __builtin_cpu_supports.
 *
 * The panel kernel is an outer product: every step along k loads one row
 * of the packed panel (QPLUG__NR weight values) and broadcasts one value of
 * each activation row, so the accumulators of mr x QPLUG__NR outputs stay
 * in registers for a whole k chunk and no horizontal sums are needed.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "qp_gemm_kernels.h"

/* ---- Portable ---------------------------------------------------------- */

static void panel_portable(int mr, int64_t len, const float *a, int64_t lda, const float *p,
                           const float *sa, int64_t sa_stride, const float *sw, float *c)
{
    for (int i = 0; i < mr; i++) {
        float acc[QPLUG__NR];
        for (int j = 0; j < QPLUG__NR; j++)
            acc[j] = 0.0f;
        const float *ai = a + i * lda;
        for (int64_t t = 0; t < len; t++) {
            float av = ai[t];
            const float *pt = p + t * QPLUG__NR;
            for (int j = 0; j < QPLUG__NR; j++)
                acc[j] += av * pt[j];
        }
        float si = sa ? sa[i * sa_stride] : 1.0f;
        for (int j = 0; j < QPLUG__NR; j++)
            c[i * QPLUG__NR + j] += acc[j] * (si * sw[j]);
    }
}

static void row4_portable(int64_t len, const float *a, const float *const w[4], float sa,
                          const float sw[4], float c[4])
{
    for (int j = 0; j < 4; j++) {
        /* Eight independent partial sums, which the compiler maps onto
         * vector lanes without reassociating one sum. */
        float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        const float *wj = w[j];
        int64_t t = 0;
        for (; t + 8 <= len; t += 8)
            for (int l = 0; l < 8; l++)
                s[l] += a[t + l] * wj[t + l];
        float tail = 0.0f;
        for (; t < len; t++)
            tail += a[t] * wj[t];
        float sum = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7])) + tail;
        c[j] += sum * (sa * sw[j]);
    }
}

void qplug__gemm_kernels_portable(qplug__gemm_kernels *out)
{
    out->decode = qplug__gemm_decoder(false);
    out->panel = panel_portable;
    out->row4 = row4_portable;
    out->mr_max = 4;
    out->name = "portable";
}

/* ---- x86-64 ------------------------------------------------------------ */

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define QP_AVX2 __attribute__((target("avx2,fma")))
#define QP_AVX512 __attribute__((target("avx512f,avx2,fma")))
#define QP_INLINE static inline __attribute__((always_inline))

/* mr rows x 16 columns in 2 x mr ymm accumulators (mr <= 6 leaves room
 * for the two panel vectors and the broadcast among the 16 registers). */
QP_AVX2 QP_INLINE void panel_avx2_body(const int mr, int64_t len, const float *a, int64_t lda,
                                       const float *p, const float *sa, int64_t sa_stride,
                                       const float *sw, float *c)
{
    __m256 acc[6][2];
    for (int i = 0; i < mr; i++) {
        acc[i][0] = _mm256_setzero_ps();
        acc[i][1] = _mm256_setzero_ps();
    }
    for (int64_t t = 0; t < len; t++) {
        __m256 w0 = _mm256_loadu_ps(p + t * QPLUG__NR);
        __m256 w1 = _mm256_loadu_ps(p + t * QPLUG__NR + 8);
        for (int i = 0; i < mr; i++) {
            __m256 b = _mm256_broadcast_ss(a + i * lda + t);
            acc[i][0] = _mm256_fmadd_ps(b, w0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(b, w1, acc[i][1]);
        }
    }
    __m256 s0 = _mm256_loadu_ps(sw), s1 = _mm256_loadu_ps(sw + 8);
    for (int i = 0; i < mr; i++) {
        __m256 si = _mm256_set1_ps(sa ? sa[i * sa_stride] : 1.0f);
        float *ci = c + i * QPLUG__NR;
        _mm256_storeu_ps(ci, _mm256_fmadd_ps(acc[i][0], _mm256_mul_ps(si, s0),
                                             _mm256_loadu_ps(ci)));
        _mm256_storeu_ps(ci + 8, _mm256_fmadd_ps(acc[i][1], _mm256_mul_ps(si, s1),
                                                 _mm256_loadu_ps(ci + 8)));
    }
}

QP_AVX2 static void panel_avx2(int mr, int64_t len, const float *a, int64_t lda, const float *p,
                               const float *sa, int64_t sa_stride, const float *sw, float *c)
{
    switch (mr) {
    case 1: panel_avx2_body(1, len, a, lda, p, sa, sa_stride, sw, c); break;
    case 2: panel_avx2_body(2, len, a, lda, p, sa, sa_stride, sw, c); break;
    case 3: panel_avx2_body(3, len, a, lda, p, sa, sa_stride, sw, c); break;
    case 4: panel_avx2_body(4, len, a, lda, p, sa, sa_stride, sw, c); break;
    case 5: panel_avx2_body(5, len, a, lda, p, sa, sa_stride, sw, c); break;
    default: panel_avx2_body(6, len, a, lda, p, sa, sa_stride, sw, c); break;
    }
}

QP_AVX2 QP_INLINE float hsum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Two accumulators per weight row hide the FMA latency. */
QP_AVX2 static void row4_avx2(int64_t len, const float *a, const float *const w[4], float sa,
                              const float sw[4], float c[4])
{
    __m256 acc[4][2];
    for (int j = 0; j < 4; j++)
        acc[j][0] = acc[j][1] = _mm256_setzero_ps();
    int64_t t = 0;
    for (; t + 16 <= len; t += 16) {
        __m256 a0 = _mm256_loadu_ps(a + t), a1 = _mm256_loadu_ps(a + t + 8);
        for (int j = 0; j < 4; j++) {
            acc[j][0] = _mm256_fmadd_ps(a0, _mm256_loadu_ps(w[j] + t), acc[j][0]);
            acc[j][1] = _mm256_fmadd_ps(a1, _mm256_loadu_ps(w[j] + t + 8), acc[j][1]);
        }
    }
    for (int j = 0; j < 4; j++) {
        float tail = 0.0f;
        for (int64_t u = t; u < len; u++)
            tail += a[u] * w[j][u];
        c[j] += (hsum256(_mm256_add_ps(acc[j][0], acc[j][1])) + tail) * (sa * sw[j]);
    }
}

/* mr rows x 16 columns, one zmm accumulator per row. */
QP_AVX512 QP_INLINE void panel_avx512_body(const int mr, int64_t len, const float *a,
                                           int64_t lda, const float *p, const float *sa,
                                           int64_t sa_stride, const float *sw, float *c)
{
    __m512 acc[QPLUG__MR_MAX];
    for (int i = 0; i < mr; i++)
        acc[i] = _mm512_setzero_ps();
    for (int64_t t = 0; t < len; t++) {
        __m512 w = _mm512_loadu_ps(p + t * QPLUG__NR);
        for (int i = 0; i < mr; i++)
            acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(a[i * lda + t]), w, acc[i]);
    }
    __m512 s = _mm512_loadu_ps(sw);
    for (int i = 0; i < mr; i++) {
        __m512 si = _mm512_set1_ps(sa ? sa[i * sa_stride] : 1.0f);
        float *ci = c + i * QPLUG__NR;
        _mm512_storeu_ps(ci, _mm512_fmadd_ps(acc[i], _mm512_mul_ps(si, s), _mm512_loadu_ps(ci)));
    }
}

QP_AVX512 static void panel_avx512(int mr, int64_t len, const float *a, int64_t lda,
                                   const float *p, const float *sa, int64_t sa_stride,
                                   const float *sw, float *c)
{
    switch (mr) {
    case 1: panel_avx512_body(1, len, a, lda, p, sa, sa_stride, sw, c); break;
    case 2: panel_avx512_body(2, len, a, lda, p, sa, sa_stride, sw, c); break;
    case 3: panel_avx512_body(3, len, a, lda, p, sa, sa_stride, sw, c); break;
    case 4: panel_avx512_body(4, len, a, lda, p, sa, sa_stride, sw, c); break;
    case 5: panel_avx512_body(5, len, a, lda, p, sa, sa_stride, sw, c); break;
    case 6: panel_avx512_body(6, len, a, lda, p, sa, sa_stride, sw, c); break;
    case 7: panel_avx512_body(7, len, a, lda, p, sa, sa_stride, sw, c); break;
    default: panel_avx512_body(8, len, a, lda, p, sa, sa_stride, sw, c); break;
    }
}

QP_AVX512 static void row4_avx512(int64_t len, const float *a, const float *const w[4], float sa,
                                  const float sw[4], float c[4])
{
    __m512 acc[4][2];
    for (int j = 0; j < 4; j++)
        acc[j][0] = acc[j][1] = _mm512_setzero_ps();
    int64_t t = 0;
    for (; t + 32 <= len; t += 32) {
        __m512 a0 = _mm512_loadu_ps(a + t), a1 = _mm512_loadu_ps(a + t + 16);
        for (int j = 0; j < 4; j++) {
            acc[j][0] = _mm512_fmadd_ps(a0, _mm512_loadu_ps(w[j] + t), acc[j][0]);
            acc[j][1] = _mm512_fmadd_ps(a1, _mm512_loadu_ps(w[j] + t + 16), acc[j][1]);
        }
    }
    for (int j = 0; j < 4; j++) {
        float tail = 0.0f;
        for (int64_t u = t; u < len; u++)
            tail += a[u] * w[j][u];
        c[j] += (_mm512_reduce_add_ps(_mm512_add_ps(acc[j][0], acc[j][1])) + tail) *
                (sa * sw[j]);
    }
}
#endif

/* QPLUG_GEMM_KERNELS=portable|avx2|avx512 narrows the choice (for
 * benchmarks and tests); a set the CPU lacks is never taken. */
void qplug__gemm_kernels_pick(qplug__gemm_kernels *out)
{
    const char *want = getenv("QPLUG_GEMM_KERNELS");
    qplug__gemm_kernels_portable(out);
    if (want && !strcmp(want, "portable"))
        return;
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (avx2)
        out->decode = qplug__gemm_decoder(true);
    if (avx2 && __builtin_cpu_supports("avx512f") && !(want && !strcmp(want, "avx2"))) {
        out->panel = panel_avx512;
        out->row4 = row4_avx512;
        out->mr_max = 8;
        out->name = "avx512";
    } else if (avx2) {
        out->panel = panel_avx2;
        out->row4 = row4_avx2;
        out->mr_max = 6;
        out->name = "avx2";
    }
#endif
}
