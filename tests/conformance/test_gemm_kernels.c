/*
 * tests/conformance/test_gemm_kernels.c - the CPU GEMM of plugins/common
 * (qp_gemm.c, qp_gemm_kernels.c, qp_gemm_decode.c) on awkward shapes: m
 * around the kernel row counts, n not a multiple of the 16-row tile, k
 * with a short last 128-block and a tail that is not a multiple of 8.
 *
 * Expected values: an fp64 product written out in this file (per-128-block
 * sums scaled by sa * sw for the FP8 split form), over weights decoded by
 * qp_weights.c, whose values the conformance fixtures check against
 * ml_dtypes. The fast decoders must give those values bit for bit. Every
 * kernel set the CPU runs is tried (QPLUG_GEMM_KERNELS).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qp_common.h"
#include "qp_gemm_kernels.h"
#include "qplug/codec.h"

#include "serial_host.h"

static uint64_t rnd(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

static float unif(uint64_t *s)
{
    return (float)((double)(rnd(s) >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

enum { N = 37, K = 200, KB = 2 };

typedef struct wbuf {
    qplug__wmat w;
    uint8_t data[N * K * 2];
    uint8_t scale[N * K];
} wbuf;

/* Random weights of one format; FP8 bytes avoid the NaN codes. */
static void make(qplug__wfmt fmt, bool e8m0, int64_t k, uint64_t *s, wbuf *b)
{
    memset(b, 0, sizeof *b);
    b->w.fmt = fmt;
    b->w.rows = N;
    b->w.cols = k;
    b->w.data = b->data;
    b->w.scale = b->scale;
    b->w.global = 0.75f;
    b->w.scale_e8m0 = e8m0;
    for (int64_t i = 0; i < N * k; i++) {
        if (fmt == QPLUG__W_BF16) {
            uint16_t v = qplug_f32_to_bf16(unif(s));
            memcpy(b->data + 2 * i, &v, 2);
        } else if (fmt == QPLUG__W_FP8_BLOCK) {
            uint8_t v = (uint8_t)rnd(s);
            b->data[i] = (v & 0x7f) == 0x7f ? 0x3f : v;
        } else {
            b->data[i / 2] = (uint8_t)rnd(s);
        }
    }
    if (fmt == QPLUG__W_FP8_BLOCK) {
        int64_t nb = (N + 127) / 128, kb = (k + 127) / 128;
        for (int64_t i = 0; i < nb * kb; i++) {
            if (e8m0) {
                b->scale[i] = (uint8_t)(120 + rnd(s) % 8);
            } else {
                float f = 0.01f * (1.0f + unif(s) * 0.5f);
                memcpy(b->scale + 4 * i, &f, 4);
            }
        }
    } else if (fmt == QPLUG__W_MXFP4) {
        for (int64_t i = 0; i < N * k / 32; i++)
            b->scale[i] = (uint8_t)(124 + rnd(s) % 6);
    } else if (fmt == QPLUG__W_NVFP4) {
        for (int64_t i = 0; i < N * k / 16; i++)
            b->scale[i] = (uint8_t)(0x30 + rnd(s) % 24);
    }
}

static bool same_bits(float a, float b)
{
    return memcmp(&a, &b, sizeof a) == 0;
}

static void check_decode(const char *set, const qplug__gemm_kernels *kern, const wbuf *b)
{
    int64_t k = b->w.cols, kb = (k + 127) / 128;
    static float want[N * K], got[N * K], wsc[N * KB], gsc[N * KB];
    qplug__wmat_dequant_rows(&b->w, 3, N, want);
    kern->decode(&b->w, 3, N, false, got, NULL);
    int bad = 0;
    for (int64_t i = 0; i < (N - 3) * k; i++)
        bad += !same_bits(want[i], got[i]);
    CHECKF(bad == 0, "%s: fmt %d: %d decoded values differ from qp_weights.c", set,
           (int)b->w.fmt, bad);
    if (b->w.fmt == QPLUG__W_FP8_BLOCK) {
        qplug__wmat_fp8_rows(&b->w, 3, N, want, wsc);
        kern->decode(&b->w, 3, N, true, got, gsc);
        bad = 0;
        for (int64_t i = 0; i < (N - 3) * k; i++)
            bad += !same_bits(want[i], got[i]);
        for (int64_t i = 0; i < (N - 3) * kb; i++)
            bad += !same_bits(wsc[i], gsc[i]);
        CHECKF(bad == 0, "%s: fp8 split: %d values or scales differ", set, bad);
    }
}

/* qplug__gemm against fp64 for m rows, with or without activation scales
 * and the FP8 split form. */
static void check_gemm(const char *set, const wbuf *b, int64_t m, bool split, bool asc,
                       uint64_t *s)
{
    int64_t k = b->w.cols, kb = (k + 127) / 128, lda = k + 3, n = N - 5;
    float *a = malloc((size_t)(m * lda) * sizeof(float));
    float *sa = malloc((size_t)(m * kb) * sizeof(float));
    float *y = malloc((size_t)(m * (n + 2)) * sizeof(float));
    float *wd = malloc((size_t)(N * k) * sizeof(float));
    float *wsc = malloc((size_t)(N * kb) * sizeof(float));
    for (int64_t i = 0; i < m * lda; i++)
        a[i] = unif(s);
    for (int64_t i = 0; i < m * kb; i++)
        sa[i] = 0.5f + 0.25f * unif(s);
    for (int64_t i = 0; i < m * (n + 2); i++)
        y[i] = NAN;
    if (split)
        qplug__wmat_fp8_rows(&b->w, 0, N, wd, wsc);
    else
        qplug__wmat_dequant_rows(&b->w, 0, N, wd);
    qplug__gemm_args g = {m, n, k, a, lda, asc ? sa : NULL, &b->w, 5, split, 1.5f, y, n + 2};
    qplug_status st = qplug__gemm(&HOST, &g);
    CHECKF(st == QPLUG_OK, "%s: gemm status %d", set, (int)st);
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double acc = 0.0;
            for (int64_t bk = 0; bk < kb; bk++) {
                double part = 0.0;
                for (int64_t c = bk * 128; c < k && c < (bk + 1) * 128; c++)
                    part += (double)a[i * lda + c] * (double)wd[(5 + j) * k + c];
                double sc = (asc ? sa[i * kb + bk] : 1.0) * (split ? wsc[(5 + j) * kb + bk] : 1.0);
                acc += part * sc;
            }
            acc *= 1.5;
            double d = (double)y[i * (n + 2) + j] - acc;
            num += d * d;
            den += acc * acc;
        }
    double rel = sqrt(num / den);
    /* fp32 sums of at most 128 terms, then at most 2 blocks: 1e-5. */
    CHECKF(rel < 1e-5, "%s: fmt %d m %lld split %d asc %d: rel L2 %.3g", set, (int)b->w.fmt,
           (long long)m, (int)split, (int)asc, rel);
    free(a);
    free(sa);
    free(y);
    free(wd);
    free(wsc);
}

int main(void)
{
    const char *sets[] = {"portable", "avx2", "avx512"};
    static wbuf b;
    uint64_t seed = 0x1234567887654321ull;
    for (int si = 0; si < 3; si++) {
        setenv("QPLUG_GEMM_KERNELS", sets[si], 1);
        qplug__gemm_kernels kern;
        qplug__gemm_kernels_pick(&kern);
        if (strcmp(kern.name, sets[si]))
            continue; /* this CPU lacks the set */
        struct {
            qplug__wfmt fmt;
            bool e8m0;
            int64_t k;
        } fmts[] = {{QPLUG__W_BF16, false, 197},
                    {QPLUG__W_FP8_BLOCK, false, 197},
                    {QPLUG__W_FP8_BLOCK, true, 200},
                    {QPLUG__W_MXFP4, false, 192},
                    {QPLUG__W_NVFP4, false, 176}};
        for (size_t f = 0; f < sizeof fmts / sizeof fmts[0]; f++) {
            make(fmts[f].fmt, fmts[f].e8m0, fmts[f].k, &seed, &b);
            check_decode(sets[si], &kern, &b);
            int64_t ms[] = {1, 2, 3, 7, 9, 17};
            for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++) {
                check_gemm(sets[si], &b, ms[mi], false, false, &seed);
                check_gemm(sets[si], &b, ms[mi], false, true, &seed);
                if (fmts[f].fmt == QPLUG__W_FP8_BLOCK)
                    check_gemm(sets[si], &b, ms[mi], true, true, &seed);
            }
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
