/* The CPU reference of the fused RMSNorm + FP8 quantization
 * (qplug__rmsnorm_quant_ref, plugins/common/qp_act.c) on hand-computed
 * rows: x = 2 everywhere gives mean(x^2) = 4, r = 1/2 and v = w; with w =
 * 1 for the first 64 columns and 0.5 after, the group amax is 1:
 *   F32 rule:   s = 1/448; codes e4m3(448) = 0x7e and e4m3(224) = 0x76;
 *   UE8M0 rule: s = 2^ceil(log2(1/448)) = 2^-8; codes e4m3(256) = 0x78
 *               and e4m3(128) = 0x70.
 * Row 1 is row 0 times -3 (same v up to sign: mean(x^2) = 36, r = 1/6), so
 * its codes carry the sign bit. A NaN is refused. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "qp_common.h"

static int failures;

#define EXPECT(c)                                                                       \
    do {                                                                                \
        if (!(c)) {                                                                     \
            failures++;                                                                 \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c);       \
        }                                                                               \
    } while (0)

int main(void)
{
    enum { D = 256, LD = 260 };
    float x[2 * LD], w[D], s[2 * 2];
    uint8_t q[2 * D];
    for (int c = 0; c < LD; c++) {
        x[c] = 2.0f;
        x[LD + c] = -6.0f;
    }
    for (int c = 0; c < D; c++)
        w[c] = c % 128 < 64 ? 1.0f : 0.5f;
    for (int ue = 0; ue < 2; ue++) {
        memset(q, 0, sizeof q);
        EXPECT(qplug__rmsnorm_quant_ref(x, 2, D, LD, w, 0.0f, ue == 1, q, s) == QPLUG_OK);
        float want_s = ue ? ldexpf(1.0f, -8) : 1.0f / 448.0f;
        uint8_t big = ue ? 0x78 : 0x7e, small = ue ? 0x70 : 0x76;
        for (int i = 0; i < 4; i++)
            EXPECT(s[i] == want_s);
        for (int r = 0; r < 2; r++)
            for (int c = 0; c < D; c++) {
                uint8_t want = (uint8_t)((c % 128 < 64 ? big : small) | (r ? 0x80 : 0));
                if (q[r * D + c] != want) {
                    fprintf(stderr, "form %d row %d col %d: code 0x%02x, want 0x%02x\n", ue, r,
                            c, q[r * D + c], want);
                    failures++;
                    break;
                }
            }
    }
    x[7] = NAN;
    EXPECT(qplug__rmsnorm_quant_ref(x, 2, D, LD, w, 0.0f, false, q, s) == QPLUG_ERR_NUMERIC);
    EXPECT(qplug__rmsnorm_quant_ref(x, 2, 100, LD, w, 0.0f, false, q, s) == QPLUG_ERR_ARGUMENT);
    printf("%s\n", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
