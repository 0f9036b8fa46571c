/*
 * Invariants of the forward pass on synthesized tiny checkpoints (every
 * layer kind: window-only, ratio 4 with indexer, ratio 128, hash and top-k
 * MoE, MTP):
 *  - decode equals prefill: the same tokens one at a time, or in chunks of
 *    5, give the prefill logits within relative L2 1e-5 (reference and
 *    native precision);
 *  - speculative decoding with MTP returns exactly the plain greedy tokens;
 *  - asking for MTP on a checkpoint without it fails with a message naming
 *    MTP; a token outside the vocabulary is an error, not a crash.
 * Numeric agreement with transformers is the golden tests' job
 * (tests/model); synthesized weights use the project's own codecs.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../model/forward_internal.h"
#include "qplug/model.h"
#include "qplug/qplug.h"
#include "qplug/synth.h"
#include "testutil.h"

#define T 140

/* Drafts the true greedy token except for every third one, so both the
 * accept and the reject path of the speculative loop run. */
typedef struct oracle {
    const int32_t *plain;
    int64_t vocab;
} oracle;

static int32_t oracle_draft(void *user, int64_t i, int32_t mtp_draft)
{
    const oracle *o = user;
    (void)mtp_draft;
    return i % 3 ? o->plain[i] : (int32_t)((o->plain[i] + 1) % o->vocab);
}

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

static bool run_chunks(qplug_model *m, const int32_t *tok, int64_t chunk, float *logits)
{
    qplug_err err = {0};
    qplug_session *s = NULL;
    if (qplug_session_create(m, &s, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return false;
    }
    int64_t V = qplug_model_vocab(m);
    bool ok = true;
    for (int64_t t = 0; ok && t < T; t += chunk) {
        int64_t n = T - t < chunk ? T - t : chunk;
        if (qplug_model_forward(m, s, tok + t, n, logits + t * V, QPLUG_LOGITS_ALL, &err)) {
            fprintf(stderr, "forward: %s\n", err.msg);
            ok = false;
        }
    }
    qplug_session_destroy(s);
    return ok;
}

static void check_format(qplug_synth_format fmt, qplug_precision prec, bool expect_mtp)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", test_tmpdir(), qplug_synth_format_name(fmt));
    qplug_err err = {0};
    qplug_synth_options so = {QPLUG_SYNTH_TINY, fmt, 7};
    FILE *probe = fopen(dir, "r");
    if (probe)
        fclose(probe);
    else if (qplug_synth_write(&so, dir, &err)) {
        CHECKF(0, "synth %s: %s", dir, err.msg);
        return;
    }
    qplug_model *m = NULL;
    if (qplug_model_open(dir, NULL, QPLUG_DEVICE_CPU, prec, 0, false, &m, &err)) {
        CHECKF(0, "open %s: %s", dir, err.msg);
        return;
    }
    const char *pn = prec == QPLUG_PRECISION_REFERENCE ? "reference" : "native";
    int64_t V = qplug_model_vocab(m);
    int32_t tok[T];
    uint64_t r = 88172645463325252ull;
    for (int i = 0; i < T; i++) {
        r ^= r << 13;
        r ^= r >> 7;
        r ^= r << 17;
        tok[i] = (int32_t)(r % (uint64_t)V);
    }
    float *pre = malloc((size_t)(T * V) * sizeof(float));
    float *dec = malloc((size_t)(T * V) * sizeof(float));
    if (pre && dec && run_chunks(m, tok, T, pre)) {
        int64_t chunks[2] = {1, 5};
        for (int i = 0; i < 2; i++) {
            CHECK(run_chunks(m, tok, chunks[i], dec));
            double e = rel_l2(dec, pre, T * V);
            printf("%s %s: chunks of %lld vs prefill: relative L2 %.3g\n",
                   qplug_synth_format_name(fmt), pn, (long long)chunks[i], e);
            CHECKF(e <= 1e-5, "%s %s chunk %lld: %.3g", qplug_synth_format_name(fmt), pn,
                   (long long)chunks[i], e);
        }
        double mx = 0.0;
        for (int64_t i = 0; i < T * V; i++)
            mx = fabs(pre[i]) > mx ? fabs(pre[i]) : mx;
        CHECKF(mx > 0.0 && isfinite(mx), "logits all zero or not finite (%g)", mx);
    } else {
        CHECK(0);
    }
    CHECK(qplug_model_has_mtp(m) == expect_mtp);
    if (qplug_model_has_mtp(m)) {
        int32_t plain[20], spec[20];
        qplug_generate_stats st;
        CHECK(!qplug_model_generate(m, tok, 12, 20, false, plain, NULL, NULL, &err));
        CHECK(!qplug_model_generate(m, tok, 12, 20, true, spec, NULL, &st, &err));
        CHECKF(!memcmp(plain, spec, sizeof plain), "%s %s: speculative != greedy",
               qplug_synth_format_name(fmt), pn);
        printf("%s %s: speculative == greedy, %lld/%lld drafts accepted\n",
               qplug_synth_format_name(fmt), pn, (long long)st.accepted, (long long)st.drafted);
        oracle o = {plain, V};
        CHECK(!qplug__fw_generate(m, tok, 12, 20, true, spec, NULL, &st, oracle_draft, &o, &err));
        CHECKF(!memcmp(plain, spec, sizeof plain), "%s %s: forced drafts: speculative != greedy",
               qplug_synth_format_name(fmt), pn);
        CHECKF(st.accepted > 0 && st.accepted < st.drafted, "forced drafts: %lld/%lld accepted",
               (long long)st.accepted, (long long)st.drafted);
        printf("%s %s: forced drafts: speculative == greedy, %lld/%lld accepted\n",
               qplug_synth_format_name(fmt), pn, (long long)st.accepted, (long long)st.drafted);
    }
    /* Bad token ids are an error naming the position. */
    qplug_session *s = NULL;
    CHECK(!qplug_session_create(m, &s, &err));
    int32_t bad[2] = {0, (int32_t)V};
    CHECK(qplug_model_forward(m, s, bad, 2, dec, QPLUG_LOGITS_ALL, &err) == QPLUG_ERR_ARGUMENT);
    CHECK(strstr(err.msg, "token 1") != NULL);
    CHECK(qplug_session_rollback(s, 1, &err) == QPLUG_ERR_ARGUMENT);
    qplug_session_destroy(s);
    qplug_model_close(m);
    free(pre);
    free(dec);

    if (!expect_mtp) {
        qplug_status st = qplug_model_open(dir, NULL, QPLUG_DEVICE_CPU, prec, 0, true, &m, &err);
        CHECK(st != QPLUG_OK && m == NULL);
        CHECKF(strstr(err.msg, "MTP") != NULL, "message: %s", err.msg);
    }
}

int main(void)
{
    setenv("QPLUG_PLUGIN_PATH", QPLUG_BINARY_DIR "/etc/plugins.d", 0);
    check_format(QPLUG_SYNTH_BF16, QPLUG_PRECISION_REFERENCE, true);
    check_format(QPLUG_SYNTH_FLASH, QPLUG_PRECISION_NATIVE, true);
    check_format(QPLUG_SYNTH_NVFP4, QPLUG_PRECISION_NATIVE, false);
    return test_done();
}
