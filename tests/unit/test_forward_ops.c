/*
 * The fp32 building blocks of the forward pass against torch and the
 * transformers DeepseekV4 modules (expected values in forward_ref.h, made by
 * gen_forward_ref.py). Bounds are relative L2 errors: 1e-6 for single
 * operations whose only difference is float rounding order, 1e-5 for the
 * hyper-connection (20 Sinkhorn rounds of divisions) and rope at large
 * positions (cos/sin of arguments up to ~7e4 rad).
 */
#include <math.h>
#include <string.h>

#include "../../model/forward_internal.h"
#include "forward_ref.h"
#include "testutil.h"

#define N(a) ((int64_t)(sizeof(a) / sizeof((a)[0])))

static double rel_l2(const float *got, const float *want, int64_t n)
{
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)got[i] - (double)want[i];
        num += d * d;
        den += (double)want[i] * want[i];
    }
    return sqrt(num / (den > 0 ? den : 1e-30));
}

#define CHECK_CLOSE(got, want, n, bound)                                                  \
    do {                                                                                   \
        double e_ = rel_l2((got), (want), (n));                                            \
        CHECKF(e_ <= (bound), "%s: relative L2 %.3g > %.1g", #want, e_, (double)(bound)); \
    } while (0)

static void test_rmsnorm(void)
{
    float y[64];
    qplug__fw_rmsnorm(ref_rms_x, ref_rms_w, 64, 1e-6f, y);
    CHECK_CLOSE(y, ref_rms_y, 64, 1e-6);
}

static void test_hc(void)
{
    float post[REF_HC], comb[REF_HC * REF_HC], y[REF_D], X[REF_HC * REF_D];
    qplug__fw_hc_pre(ref_hc_x, REF_HC, REF_D, ref_hc_fn, ref_hc_base, ref_hc_scale, 20, 1e-6f,
                     1e-6f, post, comb, y);
    CHECK_CLOSE(post, ref_hc_post, REF_HC, 1e-5);
    CHECK_CLOSE(comb, ref_hc_comb, REF_HC * REF_HC, 1e-5);
    CHECK_CLOSE(y, ref_hc_y, REF_D, 1e-5);
    /* Sinkhorn leaves a (nearly) doubly stochastic matrix: a hand check that
     * does not depend on the reference. */
    for (int j = 0; j < REF_HC; j++) {
        float rs = 0.0f, cs = 0.0f;
        for (int k = 0; k < REF_HC; k++) {
            rs += comb[j * REF_HC + k];
            cs += comb[k * REF_HC + j];
        }
        CHECKF(fabsf(rs - 1.0f) < 1e-3f && fabsf(cs - 1.0f) < 1e-4f, "row %d sums %g / %g", j,
               rs, cs);
    }
    memcpy(X, ref_hc_x, sizeof X);
    qplug__fw_hc_post(X, REF_HC, REF_D, ref_hc_post, ref_hc_comb, ref_hc_f);
    CHECK_CLOSE(X, ref_hc_xpost, REF_HC * REF_D, 1e-6);
    qplug__fw_hc_head(ref_hc_x, REF_HC, REF_D, ref_head_fn, ref_head_base, ref_head_scale, 1e-6f,
                      1e-6f, y);
    CHECK_CLOSE(y, ref_head_y, REF_D, 1e-6);
}

static void test_rope(void)
{
    float main_f[4], comp_f[4];
    qplug__fw_rope_freqs(10000.0, 8, NULL, main_f);
    qplug__fw_yarn y = {16.0, 65536.0, 32.0, 1.0};
    qplug__fw_rope_freqs(160000.0, 8, &y, comp_f);
    CHECK_CLOSE(main_f, ref_freqs_main, 4, 1e-6);
    CHECK_CLOSE(comp_f, ref_freqs_compress, 4, 1e-6);
    const float *fr[2] = {main_f, comp_f};
    const float *want[2] = {ref_rope_main, ref_rope_compress};
    const float *want_inv[2] = {ref_rope_main_inv, ref_rope_compress_inv};
    for (int k = 0; k < 2; k++) {
        float v[5 * 16], w[5 * 16];
        memcpy(v, ref_rope_x, sizeof v);
        memcpy(w, ref_rope_x, sizeof w);
        for (int i = 0; i < 5; i++) {
            qplug__fw_rope(v + i * 16 + 8, 8, fr[k], ref_rope_pos[i], false);
            qplug__fw_rope(w + i * 16 + 8, 8, fr[k], ref_rope_pos[i], true);
        }
        CHECK_CLOSE(v, want[k], 5 * 16, 1e-5);
        CHECK_CLOSE(w, want_inv[k], 5 * 16, 1e-5);
        /* The inverse undoes the rotation (hand check). */
        for (int i = 0; i < 5; i++)
            qplug__fw_rope(v + i * 16 + 8, 8, fr[k], ref_rope_pos[i], true);
        CHECK_CLOSE(v, ref_rope_x, 5 * 16, 1e-5);
    }
}

static void test_route(void)
{
    for (int t = 0; t < 3; t++) {
        int32_t ids[2];
        float w[2];
        CHECK(qplug__fw_route(ref_route_logits + t * 8, 8, 2, ref_route_bias, NULL, 1.5f, ids, w));
        /* torch returns the top-k unsorted: compare as id-sorted pairs. */
        if (ids[0] > ids[1]) {
            int32_t ti = ids[0];
            float tw = w[0];
            ids[0] = ids[1];
            w[0] = w[1];
            ids[1] = ti;
            w[1] = tw;
        }
        CHECKF(ids[0] == ref_route_ids[2 * t] && ids[1] == ref_route_ids[2 * t + 1],
               "token %d: experts %d %d, want %d %d", t, ids[0], ids[1], ref_route_ids[2 * t],
               ref_route_ids[2 * t + 1]);
        CHECK_CLOSE(w, ref_route_w + 2 * t, 2, 1e-6);

        int32_t hid[2] = {ref_hash_ids[2 * t], ref_hash_ids[2 * t + 1]};
        CHECK(qplug__fw_route(ref_route_logits + t * 8, 8, 2, NULL, hid, 1.5f, ids, w));
        CHECK(ids[0] == hid[0] && ids[1] == hid[1]);
        CHECK_CLOSE(w, ref_hash_w + 2 * t, 2, 1e-6);
    }
    int32_t bad[2] = {3, 8}, ids[2];
    float w[2];
    CHECK(!qplug__fw_route(ref_route_logits, 8, 2, NULL, bad, 1.5f, ids, w));
    /* softplus switches to the identity above 20, as torch does. */
    CHECK(fabsf(qplug__fw_sqrt_softplus(30.0f) - sqrtf(30.0f)) < 1e-6f);
    CHECK(fabsf(qplug__fw_sqrt_softplus(0.0f) - sqrtf(logf(2.0f))) < 1e-6f);
}

static void test_pool(void)
{
    float out[8];
    qplug__fw_pool(8, 4, ref_pool_prev_kv, ref_pool_prev_g, ref_pool_cur_kv, ref_pool_cur_g, 16,
                   8, out);
    CHECK_CLOSE(out, ref_pool_overlap, 8, 1e-6);
    qplug__fw_pool(8, 4, NULL, NULL, ref_pool_cur_kv, ref_pool_cur_g, 16, 8, out);
    CHECK_CLOSE(out, ref_pool_first, 8, 1e-6);
}

static void test_attend(void)
{
    int32_t sel[3];
    for (int i = 0; i < 3; i++)
        sel[i] = ref_att_sel[i];
    float scores[8], out[16];
    qplug__fw_attend(ref_att_q, 16, ref_att_win, 5, ref_att_ent, sel, 3, 0.7f, 0.25f, scores,
                     out);
    CHECK_CLOSE(out, ref_att_out, 16, 1e-6);
}

static void test_topk(void)
{
    int32_t idx[7];
    char scratch[40 * 8];
    CHECK(qplug__fw_topk_scratch_bytes(40) <= sizeof scratch);
    qplug__fw_topk(ref_topk_v, 40, 7, idx, scratch);
    for (int i = 0; i < 7; i++)
        CHECKF(idx[i] == ref_topk_idx[i], "rank %d: %d, want %d", i, idx[i], ref_topk_idx[i]);
    /* Ties: the lower index first (hand check). */
    float tie[5] = {1.0f, 3.0f, 3.0f, 2.0f, 3.0f};
    qplug__fw_topk(tie, 5, 3, idx, scratch);
    CHECK(idx[0] == 1 && idx[1] == 2 && idx[2] == 4);
    CHECK(qplug__fw_argmax(tie, 5) == 1);
}

int main(void)
{
    test_rmsnorm();
    test_hc();
    test_rope();
    test_route();
    test_pool();
    test_attend();
    test_topk();
    return test_done();
}
