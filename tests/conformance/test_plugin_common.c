/*
 * tests/conformance/test_plugin_common.c - unit tests of the shared plugin
 * helpers (plugins/common) that the conformance cases do not reach
 * directly: the packed FP4 token layout and its byte counts, the
 * pre-dispatch buffer size, and the NVFP4 -> FP8 block conversion with
 * per-tile real scales. Expected values are worked out by hand in the
 * comments.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qp_common.h"
#include "qplug/codec.h"
#include "w4a4_megamoe_internal.h"

#include "serial_host.h"

static void test_sizes(void)
{
    /* hidden/2 bytes of E2M1 + hidden/group scale bytes. */
    CHECKF(qplug__fp4_packed_bytes_per_token(4096, 32) == 2048 + 128, "mx 4096");
    CHECKF(qplug__fp4_packed_bytes_per_token(4096, 16) == 2048 + 256, "nv 4096");
    CHECKF(qplug__fp4_packed_bytes_per_token(7168, 16) == 3584 + 448, "nv 7168");
    CHECKF(qplug__fp4_packed_bytes_per_token(7168, 32) == 3584 + 224, "mx 7168");
    CHECKF(qplug__fp4_packed_bytes_per_token(100, 32) == 0, "100 is not a multiple of 32");
    CHECKF(qplug__fp4_packed_bytes_per_token(64, 8) == 0, "group 8 is not a format");
    /* Half the FP8 (w4a8) buffer: hidden bytes + hidden/128 * 4 scale bytes. */
    CHECKF(qplug__fp4_packed_bytes_per_token(4096, 32) * 2 < 4096 + 4096 / 128 * 4 + 4096 / 2,
           "packed FP4 is not about half of FP8");
    /* 3 tokens of hidden 64, top-6, group 32: 3 * (32 + 2 + 6*4 + 6*4) = 246. */
    CHECKF(qplug_w4a4_megamoe__dispatch_bytes(3, 64, 6, 32) == 246, "dispatch bytes %zu",
           qplug_w4a4_megamoe__dispatch_bytes(3, 64, 6, 32));
    CHECKF(qplug_w4a4_megamoe__dispatch_bytes(3, 65, 6, 32) == 0, "unpackable hidden");
}

static void test_pack(void)
{
    /* MXFP4: amax 3 -> smallest 2^e with 3/2^e <= 6 is 2^-1 (byte 126).
     * x/0.5: 3 -> 6 (code 7); -0.25 -> -0.5 (code 9); 0.7 -> 1.4 -> 1.5
     * (code 3); 0.125 -> 0.25, a tie between 0 and 0.5 -> 0 (even, code 0). */
    float x[32] = {3.0f, -0.25f, 0.7f, 0.125f};
    uint8_t buf[16 + 1];
    memset(buf, 0xEE, sizeof buf);
    CHECKF(qplug__fp4_pack(&HOST, 32, 1.0f, x, 1, 32, 32, buf) == QPLUG_OK, "mx pack");
    CHECKF(buf[0] == 0x97 && buf[1] == 0x03 && buf[2] == 0, "mx codes %02x %02x %02x", buf[0],
           buf[1], buf[2]);
    CHECKF(buf[16] == 126, "mx scale byte %u", buf[16]);
    float v[32];
    qplug__fp4_unpack_row(32, buf, 32, v);
    CHECKF(v[0] == 3.0f && v[1] == -0.25f && v[2] == 0.75f && v[3] == 0.0f, "mx unpack %g %g %g %g",
           v[0], v[1], v[2], v[3]);

    /* NVFP4 against gscale 0.5: amax 6 -> scale e4m3(6/6/0.5) = 2.0 (byte
     * 0x40); step 2 * 0.5 = 1: 6 -> code 7, -1 -> code 0xA, 2.5 is a tie
     * between 2 (code 4) and 3 (code 5) -> 4 (even mantissa). */
    float y[16] = {6.0f, -1.0f, 2.5f};
    uint8_t nb[8 + 1];
    CHECKF(qplug__fp4_pack(&HOST, 16, 0.5f, y, 1, 16, 16, nb) == QPLUG_OK, "nv pack");
    CHECKF(nb[0] == 0xA7 && nb[1] == 0x04, "nv codes %02x %02x", nb[0], nb[1]);
    CHECKF(nb[8] == 0x40, "nv scale byte %02x", nb[8]);
    float w[16];
    qplug__fp4_unpack_row(16, nb, 16, w);
    /* Unpacked values omit the global: q * 2.0. */
    CHECKF(w[0] == 12.0f && w[1] == -2.0f && w[2] == 4.0f, "nv unpack %g %g %g", w[0], w[1],
           w[2]);

    y[5] = NAN;
    CHECKF(qplug__fp4_pack(&HOST, 16, 0.5f, y, 1, 16, 16, nb) == QPLUG_ERR_NUMERIC, "NaN");
    y[5] = INFINITY;
    CHECKF(qplug__fp4_pack(&HOST, 16, 0.5f, y, 1, 16, 16, nb) == QPLUG_ERR_NUMERIC, "Inf");
}

static void test_fp8_act_scale(void)
{
    /* amax 448 -> 1; with ue8m0 also 1 (log2 exactly 0). amax 500 -> 500/448
     * = 1.116 -> ue8m0 2. Tiny amax clamps to 1e-4. */
    CHECKF(qplug__fp8_act_scale(448.0f, false) == 1.0f, "f32 448");
    CHECKF(qplug__fp8_act_scale(448.0f, true) == 1.0f, "ue8m0 448");
    CHECKF(qplug__fp8_act_scale(500.0f, true) == 2.0f, "ue8m0 500");
    CHECKF(qplug__fp8_act_scale(224.0f, true) == 0.5f, "ue8m0 224");
    CHECKF(qplug__fp8_act_scale(0.0f, false) == 1e-4f / 448.0f, "clamped");
}

/* E2M1 magnitudes by code, written out from formats.md. */
static const float E2M1_MAG[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};

static void test_nvfp4_to_fp8(void)
{
    enum { R = 256, C = 64 };
    uint8_t *packed = malloc(R * C / 2), *sf = malloc(R * C / 16), *q = malloc(R * C);
    float *deq = malloc(R * C * sizeof(float)), scale[2 * 1];
    /* E4M3 bytes with known values: 0x30 = 0.5, 0x38 = 1, 0x40 = 2,
     * 0x48 = 4. Rows 0..127 use small scales, 128..255 large ones, so the
     * two 128-row tiles need different real scales. */
    static const uint8_t small[2] = {0x30, 0x38}, large[2] = {0x40, 0x48};
    static const float smallv[2] = {0.5f, 1.0f}, largev[2] = {2.0f, 4.0f};
    const float global = 0.25f;
    uint32_t s = 12345;
    for (int r = 0; r < R; r++)
        for (int b = 0; b < C / 16; b++) {
            int pick = (r + b) & 1;
            sf[r * (C / 16) + b] = r < 128 ? small[pick] : large[pick];
        }
    for (int i = 0; i < R * C / 2; i++) {
        s = s * 1103515245u + 12345u;
        packed[i] = (uint8_t)(s >> 16);
    }
    float amax[2] = {0, 0};
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) {
            uint8_t byte = packed[r * (C / 2) + c / 2];
            uint8_t code = (c & 1) ? (uint8_t)(byte >> 4) : (uint8_t)(byte & 15);
            int pick = (r + c / 16) & 1;
            float sv = r < 128 ? smallv[pick] : largev[pick];
            float v = E2M1_MAG[code & 7] * sv * global;
            deq[r * C + c] = (code & 8) ? -v : v;
            if (fabsf(v) > amax[r / 128])
                amax[r / 128] = fabsf(v);
        }
    qplug__wmat w = {QPLUG__W_NVFP4, R, C, packed, sf, false, global, 0.0f};
    CHECKF(qplug__nvfp4_to_fp8_block(&HOST, &w, q, scale) == QPLUG_OK, "convert");
    /* Each tile's own real scale: its amax / 448, never 1 or a shared one. */
    CHECKF(scale[0] == amax[0] / 448.0f, "tile 0 scale %g, want %g", scale[0], amax[0] / 448.0f);
    CHECKF(scale[1] == amax[1] / 448.0f, "tile 1 scale %g, want %g", scale[1], amax[1] / 448.0f);
    CHECKF(scale[0] != scale[1], "tiles share one scale");
    /* The round trip loses at most half an E4M3 step: 2^-4 relative for
     * normals, plus 2^-10 * scale absolute in the subnormal range. */
    int bad = 0;
    for (int i = 0; i < R * C; i++) {
        float back = qplug_e4m3_to_f32(q[i]) * scale[i / C / 128];
        float tol = fabsf(deq[i]) * 0.0625f + 0.0009765625f * scale[i / C / 128];
        if (fabsf(back - deq[i]) > tol)
            bad++;
    }
    CHECKF(bad == 0, "%d elements off by more than half an E4M3 step", bad);
    /* The tile maxima map to E4M3's 448 exactly. */
    int at_max = 0;
    for (int i = 0; i < R * C; i++)
        at_max += (q[i] & 0x7f) == 0x7e;
    CHECKF(at_max >= 2, "no element reached 448");

    /* And NVFP4 -> BF16 keeps the exact values (all are short binary
     * fractions, representable in BF16). */
    uint16_t *bf = malloc(R * C * sizeof(uint16_t));
    CHECKF(qplug__wmat_to_bf16(&HOST, &w, bf) == QPLUG_OK, "to bf16");
    int off = 0;
    for (int i = 0; i < R * C; i++)
        off += qplug_bf16_to_f32(bf[i]) != deq[i];
    CHECKF(off == 0, "%d BF16 values differ from the exact dequantization", off);
    free(bf);
    free(packed);
    free(sf);
    free(q);
    free(deq);
}

/* A tensor claiming 2^62 rows of 4 makes rows * width wrap int64 in the
 * scratch sizes; apply must refuse the shape before any size math. */
static void test_huge_rows(void)
{
    float x[4] = {1, 2, 3, 4}, y[4], w[16] = {0};
    qplug_layer_desc l;
    memset(&l, 0, sizeof l);
    l.struct_size = sizeof l;
    l.kind = QPLUG_LAYER_LINEAR;
    l.n = 4;
    l.k = 4;
    qplug__wmat wm = {QPLUG__W_F32, 4, 4, w, NULL, false, 1.0f, 1.0f};
    qplug_tensor tx, ty;
    memset(&tx, 0, sizeof tx);
    tx.dtype = QPLUG_DT_F32;
    tx.device = QPLUG_DEVICE_CPU;
    tx.ndim = 2;
    tx.shape[0] = (int64_t)1 << 62;
    tx.shape[1] = 4;
    tx.data = x;
    ty = tx;
    ty.data = y;
    qplug_apply_args a;
    memset(&a, 0, sizeof a);
    a.struct_size = sizeof a;
    a.op = QPLUG_OP_FORWARD;
    a.x = &tx;
    a.y = &ty;
    CHECKF(qplug__linear_forward(&HOST, &l, &wm, QPLUG__ACT_NONE, false, &a) == QPLUG_ERR_SHAPE,
           "2^62 rows accepted");
    /* One row still works: y = W x with W = 0. */
    tx.shape[0] = ty.shape[0] = 1;
    CHECKF(qplug__linear_forward(&HOST, &l, &wm, QPLUG__ACT_NONE, false, &a) == QPLUG_OK,
           "one row refused");
    CHECKF(y[0] == 0.0f && y[3] == 0.0f, "y %g %g", y[0], y[3]);
}

int main(void)
{
    test_huge_rows();
    test_sizes();
    test_pack();
    test_fp8_act_scale();
    test_nvfp4_to_fp8();
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
