/*
 * tests/gpu/gpu_test_ref.h - reference rounding the GPU tests share, on the
 * E4M3 decode table of ref_tables.h (generated from ml_dtypes by
 * tests/gpu/gen_tables.py). Header-only: include after ref_tables.h.
 */
#ifndef QPLUG_GPU_TEST_REF_H
#define QPLUG_GPU_TEST_REF_H

#include <math.h>

/* The E4M3 code nearest to v (ties to even code, saturating at 448). */
static inline double ref_e4m3_round(double v)
{
    double best = 0.0, bd = INFINITY;
    int bcode = 0;
    for (int c = 0; c < 256; c++) {
        double t = ref_e4m3[c];
        if (isnan(t))
            continue;
        double d = fabs(t - v);
        if (d < bd || (d == bd && (c & 1) == 0 && (bcode & 1) == 1)) {
            bd = d;
            best = t;
            bcode = c;
        }
    }
    return best;
}

#endif
