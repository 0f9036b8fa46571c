/*
 * plugins/common/qp_gemm_kernels.h - the register-blocked fp32 micro-kernels
 * under qplug__gemm (qp_gemm.c), in a portable version and in x86-64
 * AVX2+FMA and AVX-512 versions chosen at run time.
 *
 * Both kernels compute, for one chunk of at most QPLUG__KC values along k,
 *   c[i][j] += (sum_t a[i][t] * w[j][t]) * (sa[i] * sw[j])
 * so that the FP8 block-scaled product (integer-exact E4M3 products summed
 * per 128-block, then scaled by sa * sw) and the plain fp32 product (scales
 * of 1, which leave the sums unchanged) share one code path; chunking k
 * also keeps fp32 rounding growth to two short summations.
 */
#ifndef QPLUG_PLUGINS_QP_GEMM_KERNELS_H
#define QPLUG_PLUGINS_QP_GEMM_KERNELS_H

#include <stdbool.h>
#include <stdint.h>

/* Weight rows per tile: the width of a packed panel. */
#define QPLUG__NR 16
/* The k chunk of one kernel call; equal to the FP8 block so that one call
 * covers exactly one block of scales. */
#define QPLUG__KC 128
/* The most activation rows a panel kernel call takes. */
#define QPLUG__MR_MAX 8

/*
 * Panel kernel: a holds mr (1..mr_max) rows with stride lda, len values
 * each; p is a packed panel chunk, p[t * QPLUG__NR + j] = w[j][t]; sa[i *
 * sa_stride] are the row scales (sa may be NULL: all 1); sw[QPLUG__NR] the
 * column scales; c[i * QPLUG__NR + j] accumulates.
 */
typedef void (*qplug__panel_fn)(int mr, int64_t len, const float *a, int64_t lda,
                                const float *p, const float *sa, int64_t sa_stride,
                                const float *sw, float *c);

/*
 * Row kernel for one activation row against 4 weight rows w[j] (row
 * pointers, row-major, len values each): c[j] += dot(a, w[j]) * sa * sw[j].
 * Used when there are too few activation rows to pay for packing a panel.
 */
typedef void (*qplug__row4_fn)(int64_t len, const float *a, const float *const w[4], float sa,
                               const float sw[4], float c[4]);

struct qplug__wmat;

/*
 * Tile decoder (qp_gemm_decode.c): rows [r0, r1) of w into dst, the values
 * of qplug__wmat_dequant_rows, or with fp8_split (FP8 block only) those of
 * qplug__wmat_fp8_rows, scales into sc.
 */
typedef void (*qplug__decode_fn)(const struct qplug__wmat *w, int64_t r0, int64_t r1,
                                 bool fp8_split, float *dst, float *sc);

/* The portable decoder, or the one compiled for AVX2 (x86-64 only). */
qplug__decode_fn qplug__gemm_decoder(bool avx2);

typedef struct qplug__gemm_kernels {
    qplug__decode_fn decode;
    qplug__panel_fn panel;
    qplug__row4_fn row4;
    int mr_max; /* rows per panel call that fill the registers */
    const char *name;
} qplug__gemm_kernels;

/* The fastest kernels this CPU runs (checked with __builtin_cpu_supports
 * on x86-64; the portable ones elsewhere). */
void qplug__gemm_kernels_pick(qplug__gemm_kernels *out);

/* The portable kernels, whatever the CPU (tests compare against them). */
void qplug__gemm_kernels_portable(qplug__gemm_kernels *out);

#endif
