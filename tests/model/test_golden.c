/*
 * Golden test of the DeepSeek V4 forward pass for one checkpoint format:
 *
 *   test_golden FIXTURE_DIR [native_bound]
 *
 * FIXTURE_DIR holds the checkpoint (in FIXTURE_DIR/checkpoint, or FIXTURE_DIR
 * itself) and golden.safetensors with the transformers logits F32 [T, V]
 * ("logits") of the token sequence ("tokens" or "input_ids", I32 or I64),
 * and optionally a greedy continuation ("greedy_prompt", "greedy_tokens"),
 * made by tests/tools/gen_golden.py from exactly the weights the checkpoint
 * encodes (tests/model/README.md).
 *
 * Checks:
 *  1. reference precision: relative L2 of the logits vs transformers <= 1e-3;
 *  2. decode == prefill: one token at a time, and in chunks of 7, give the
 *     prefill logits within relative L2 1e-5;
 *  3. native precision: relative L2 vs transformers <= native_bound (the
 *     bound per format is derived in tests/model/CMakeLists.txt), printing
 *     the measured error and the top-1 agreement;
 *  5. if the golden file has one, the greedy continuation of greedy_prompt
 *     equals transformers' (reference precision; its top-1 margins are
 *     >= 1e-3, far above the 1e-6 agreement of the logits);
 *  4. speculative decoding with MTP gives exactly the plain greedy tokens,
 *     or, for a checkpoint without MTP weights, asking for it fails with a
 *     message naming MTP.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qplug/model.h"
#include "qplug/qplug.h"

static int failures;

#define EXPECT(cond, ...)                                                                 \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            failures++;                                                                    \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                           \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fputc('\n', stderr);                                                           \
        }                                                                                  \
    } while (0)

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

static int64_t argmax(const float *v, int64_t n)
{
    int64_t b = 0;
    for (int64_t i = 1; i < n; i++)
        if (v[i] > v[b])
            b = i;
    return b;
}

/* Fraction of positions whose argmax agrees. */
static double top1(const float *a, const float *b, int64_t T, int64_t V)
{
    int64_t same = 0;
    for (int64_t t = 0; t < T; t++)
        same += argmax(a + t * V, V) == argmax(b + t * V, V);
    return (double)same / (double)T;
}

static qplug_status prefill(qplug_model *m, const int32_t *tok, int64_t T, int64_t chunk,
                            float *logits, qplug_err *err)
{
    qplug_session *s = NULL;
    qplug_status st = qplug_session_create(m, &s, err);
    int64_t V = qplug_model_vocab(m);
    for (int64_t t = 0; !st && t < T; t += chunk) {
        int64_t n = T - t < chunk ? T - t : chunk;
        st = qplug_model_forward(m, s, tok + t, n, logits + t * V, QPLUG_LOGITS_ALL, err);
    }
    qplug_session_destroy(s);
    return st;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: test_golden FIXTURE_DIR [native_bound]\n");
        return 2;
    }
    double native_bound = argc > 2 ? atof(argv[2]) : 1e-3;
    char path[1024], dir[1024];
    snprintf(path, sizeof path, "%s/golden.safetensors", argv[1]);
    snprintf(dir, sizeof dir, "%s/checkpoint/config.json", argv[1]);
    FILE *probe = fopen(dir, "r");
    if (probe) {
        fclose(probe);
        snprintf(dir, sizeof dir, "%s/checkpoint", argv[1]);
    } else {
        snprintf(dir, sizeof dir, "%s", argv[1]);
    }
    qplug_err err = {0};
    qplug_st_file *g = NULL;
    if (qplug_st_open(path, &g, &err)) {
        fprintf(stderr, "FAIL: %s\n", err.msg);
        return 1;
    }
    const qplug_tensor *gl = qplug_st_find(g, "logits");
    const qplug_tensor *gt = qplug_st_find(g, "tokens");
    if (!gt)
        gt = qplug_st_find(g, "input_ids");
    if (!gl || !gt || gl->dtype != QPLUG_DT_F32 || gl->ndim != 2 ||
        (gt->dtype != QPLUG_DT_I32 && gt->dtype != QPLUG_DT_I64) ||
        qplug_tensor_numel(gt) != gl->shape[0]) {
        fprintf(stderr, "FAIL: %s: needs logits F32 [T, V] and tokens I32/I64 [T]\n", path);
        qplug_st_close(g);
        return 1;
    }
    int64_t T = gl->shape[0], V = gl->shape[1];
    int32_t *tok = malloc((size_t)T * sizeof *tok);
    float *ref = malloc((size_t)(T * V) * sizeof(float));
    float *dec = malloc((size_t)(T * V) * sizeof(float));
    float *nat = malloc((size_t)(T * V) * sizeof(float));
    if (!tok || !ref || !dec || !nat) {
        fprintf(stderr, "FAIL: out of memory\n");
        return 1;
    }
    for (int64_t t = 0; t < T; t++)
        tok[t] = gt->dtype == QPLUG_DT_I32 ? ((const int32_t *)gt->data)[t]
                                            : (int32_t)((const int64_t *)gt->data)[t];
    const float *golden = gl->data;

    /* 1. Reference precision against transformers. */
    qplug_model *m = NULL;
    if (qplug_model_open(dir, NULL, QPLUG_DEVICE_CPU, QPLUG_PRECISION_REFERENCE, 0, false, &m,
                         &err)) {
        fprintf(stderr, "FAIL: open (reference): %s\n", err.msg);
        return 1;
    }
    EXPECT(qplug_model_vocab(m) == V, "vocab %lld vs golden %lld",
           (long long)qplug_model_vocab(m), (long long)V);
    if (prefill(m, tok, T, T, ref, &err)) {
        fprintf(stderr, "FAIL: reference prefill: %s\n", err.msg);
        return 1;
    }
    double e_ref = rel_l2(ref, golden, T * V);
    printf("reference: relative L2 %.3g (bound 1e-3), top-1 agreement %.1f%% over %lld tokens\n",
           e_ref, 100.0 * top1(ref, golden, T, V), (long long)T);
    EXPECT(e_ref <= 1e-3, "reference logits relative L2 %.3g > 1e-3", e_ref);

    /* 2. Decode == prefill, token by token and in chunks that cut
     * compressor blocks at odd places. */
    int64_t chunks[2] = {1, 7};
    for (int i = 0; i < 2; i++) {
        if (prefill(m, tok, T, chunks[i], dec, &err)) {
            fprintf(stderr, "FAIL: decode (chunk %lld): %s\n", (long long)chunks[i], err.msg);
            return 1;
        }
        double e = rel_l2(dec, ref, T * V);
        printf("decode in chunks of %lld vs prefill: relative L2 %.3g (bound 1e-5)\n",
               (long long)chunks[i], e);
        EXPECT(e <= 1e-5, "chunk %lld: relative L2 %.3g > 1e-5", (long long)chunks[i], e);
    }

    /* 5. transformers' greedy continuation. */
    const qplug_tensor *gp = qplug_st_find(g, "greedy_prompt");
    const qplug_tensor *gg = qplug_st_find(g, "greedy_tokens");
    if (gp && gg && gp->dtype == QPLUG_DT_I32 && gg->dtype == QPLUG_DT_I32) {
        int64_t np0 = qplug_tensor_numel(gp), ng0 = qplug_tensor_numel(gg);
        int32_t *gen = malloc((size_t)(ng0 > 0 ? ng0 : 1) * sizeof *gen);
        if (gen && !qplug_model_generate(m, gp->data, np0, ng0, false, gen, NULL, NULL, &err)) {
            bool same = !memcmp(gen, gg->data, (size_t)ng0 * sizeof *gen);
            printf("greedy continuation of %lld tokens == transformers: %s\n", (long long)ng0,
                   same ? "yes" : "NO");
            EXPECT(same, "greedy continuation differs from transformers");
        } else {
            EXPECT(0, "greedy: %s", gen ? err.msg : "out of memory");
        }
        free(gen);
    }

    /* 4. Speculative == greedy, or a clear error without MTP weights. */
    int64_t np = T < 16 ? T : 16, ng = 24;
    if (qplug_model_has_mtp(m)) {
        int32_t plain[24], spec[24];
        qplug_generate_stats st1, st2;
        qplug_status a = qplug_model_generate(m, tok, np, ng, false, plain, NULL, &st1, &err);
        EXPECT(!a, "greedy: %s", err.msg);
        qplug_status b = qplug_model_generate(m, tok, np, ng, true, spec, NULL, &st2, &err);
        EXPECT(!b, "speculative: %s", err.msg);
        if (!a && !b) {
            EXPECT(!memcmp(plain, spec, sizeof plain), "speculative tokens differ from greedy");
            printf("speculative mtp == greedy over %lld tokens: %s, acceptance %lld/%lld\n",
                   (long long)ng, memcmp(plain, spec, sizeof plain) ? "NO" : "yes",
                   (long long)st2.accepted, (long long)st2.drafted);
        }
    }
    qplug_model_close(m);
    m = NULL;
    {
        qplug_model *mm = NULL;
        qplug_err e2 = {0};
        qplug_status st = qplug_model_open(dir, NULL, QPLUG_DEVICE_CPU,
                                           QPLUG_PRECISION_REFERENCE, 0, true, &mm, &e2);
        if (st) {
            EXPECT(strstr(e2.msg, "MTP") != NULL, "no-MTP error does not name MTP: %s", e2.msg);
            printf("checkpoint without MTP: '%s'\n", e2.msg);
        }
        qplug_model_close(mm);
    }

    /* 3. Native precision. */
    if (qplug_model_open(dir, NULL, QPLUG_DEVICE_CPU, QPLUG_PRECISION_NATIVE, 0, false, &m,
                         &err)) {
        fprintf(stderr, "FAIL: open (native): %s\n", err.msg);
        return 1;
    }
    if (prefill(m, tok, T, T, nat, &err)) {
        fprintf(stderr, "FAIL: native prefill: %s\n", err.msg);
        return 1;
    }
    double e_nat = rel_l2(nat, golden, T * V);
    printf("native: relative L2 %.3g (bound %.3g), top-1 agreement %.1f%%\n", e_nat,
           native_bound, 100.0 * top1(nat, golden, T, V));
    EXPECT(e_nat <= native_bound, "native logits relative L2 %.3g > %.3g", e_nat, native_bound);
    qplug_model_close(m);

    free(tok);
    free(ref);
    free(dec);
    free(nat);
    qplug_st_close(g);
    printf("%s\n", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
