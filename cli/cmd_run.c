/*
 * qplug run: the DeepSeek V4 model on a prompt of token ids. Prints the
 * greedy continuation and honest wall-clock tokens/s of prefill and decode;
 * optionally writes the prompt's logits (F32 [tokens, vocab]) to a
 * safetensors file, written atomically.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "qplug/model.h"
#include "qplug/qplug.h"

static const char *usage_text =
    "usage: qplug run --checkpoint DIR [--policy FILE] [--device cpu|cuda]\n"
    "                 [--precision reference|native] (--tokens 1,2,3 | --prompt-file FILE)\n"
    "                 [--logits OUT.safetensors] [--generate N] [--speculative mtp] "
    "[--threads N]\n"
    "                 [--compare-reference]\n"
    "--compare-reference also runs the prompt at reference precision and prints the\n"
    "relative L2 error and top-1 agreement of the prompt's logits.\n";

typedef struct tok_list {
    int32_t *v;
    int64_t n, cap;
} tok_list;

static bool tok_push(tok_list *l, int32_t t)
{
    if (l->n == l->cap) {
        int64_t cap = l->cap ? 2 * l->cap : 64;
        int32_t *nv = realloc(l->v, (size_t)cap * sizeof *nv);
        if (!nv)
            return false;
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = t;
    return true;
}

/* Token ids separated by commas and/or whitespace. `src` names the input
 * in messages ("--tokens" or the file). */
static bool parse_tokens(const char *text, const char *src, tok_list *out)
{
    const char *p = text;
    int line = 1;
    while (*p) {
        if (*p == ',' || *p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') {
            if (*p == '\n')
                line++;
            p++;
            continue;
        }
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX ||
            (*end && *end != ',' && *end != ' ' && *end != '\t' && *end != '\r' && *end != '\n')) {
            /* Quote only the offending word, so the message stays one line. */
            size_t len = strcspn(p, ", \t\r\n");
            fprintf(stderr, "qplug run: %s:%d: '%.*s' is not a token id\n", src, line,
                    (int)(len < 20 ? len : 20), p);
            return false;
        }
        if (!tok_push(out, (int32_t)v)) {
            fprintf(stderr, "qplug run: out of memory reading %s\n", src);
            return false;
        }
        p = end;
    }
    if (out->n == 0) {
        fprintf(stderr, "qplug run: %s holds no token ids\n", src);
        return false;
    }
    return true;
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "qplug run: %s: %s\n", path, strerror(errno));
        return NULL;
    }
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (len + 1 >= cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        size_t got = fread(buf + len, 1, cap - len - 1, f);
        len += got;
        if (got == 0)
            break;
    }
    if (buf && ferror(f)) {
        fprintf(stderr, "qplug run: %s: read error\n", path);
        free(buf);
        buf = NULL;
    } else if (buf) {
        buf[len] = '\0';
    } else {
        fprintf(stderr, "qplug run: %s: out of memory\n", path);
    }
    fclose(f);
    return buf;
}

static bool parse_int(const char *s, const char *flag, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end || errno || v < lo || v > hi) {
        fprintf(stderr, "qplug run: %s wants an integer in [%ld, %ld], got '%s'\n", flag, lo, hi,
                s);
        return false;
    }
    *out = v;
    return true;
}

/* Runs the prompt again at reference precision and prints how far the
 * logits computed already (`logits`, [prompt->n, V]) are from it. */
static int compare_with_reference(const char *ckpt, const char *policy, qplug_device_kind device,
                                  int threads, const tok_list *prompt, const float *logits,
                                  int64_t V)
{
    qplug_err err = {0};
    qplug_model *ref = NULL;
    float *ref_logits = malloc((size_t)(prompt->n * V) * sizeof(float));
    int rc = 1;
    int32_t unused_out;
    qplug_generate_stats stats;
    if (!ref_logits) {
        fprintf(stderr, "qplug run: out of memory for the reference logits\n");
        return 1;
    }
    if (qplug_model_open(ckpt, policy, device, QPLUG_PRECISION_REFERENCE, threads, false, &ref,
                         &err) ||
        qplug_model_generate(ref, prompt->v, prompt->n, 0, false, &unused_out, ref_logits, &stats,
                             &err)) {
        fprintf(stderr, "qplug run: reference: %s\n", err.msg);
        goto done;
    }
    double num = 0.0, den = 0.0;
    int64_t agree = 0;
    for (int64_t t = 0; t < prompt->n; t++) {
        const float *a = logits + t * V, *b = ref_logits + t * V;
        int64_t ia = 0, ib = 0;
        for (int64_t v = 0; v < V; v++) {
            double d = (double)a[v] - (double)b[v];
            num += d * d;
            den += (double)b[v] * (double)b[v];
            if (a[v] > a[ia])
                ia = v;
            if (b[v] > b[ib])
                ib = v;
        }
        agree += ia == ib;
    }
    printf("native vs reference: logits relative L2 %.4g, top-1 agreement %lld/%lld (%.1f%%)\n",
           den > 0 ? sqrt(num / den) : 0.0, (long long)agree, (long long)prompt->n,
           100.0 * (double)agree / (double)prompt->n);
    rc = 0;
done:
    qplug_model_close(ref);
    free(ref_logits);
    return rc;
}

int qplug_cmd_run(int argc, char **argv)
{
    const char *ckpt = NULL, *policy = NULL, *tokens = NULL, *prompt_file = NULL;
    const char *logits_path = NULL;
    qplug_device_kind device = QPLUG_DEVICE_CPU;
    qplug_precision precision = QPLUG_PRECISION_NATIVE;
    long n_gen = 0, threads = 0;
    bool speculative = false, compare = false;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(usage_text, stdout);
            return 0;
        }
        if (!strcmp(a, "--compare-reference")) {
            compare = true;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "qplug run: unknown or incomplete option '%s'\n%s", a, usage_text);
            return 2;
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--checkpoint")) {
            ckpt = v;
        } else if (!strcmp(a, "--policy")) {
            policy = v;
        } else if (!strcmp(a, "--device")) {
            if (!strcmp(v, "cpu"))
                device = QPLUG_DEVICE_CPU;
            else if (!strcmp(v, "cuda"))
                device = QPLUG_DEVICE_CUDA;
            else {
                fprintf(stderr, "qplug run: --device must be cpu or cuda, got '%s'\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--precision")) {
            if (!strcmp(v, "reference"))
                precision = QPLUG_PRECISION_REFERENCE;
            else if (!strcmp(v, "native"))
                precision = QPLUG_PRECISION_NATIVE;
            else {
                fprintf(stderr, "qplug run: --precision must be reference or native, got '%s'\n",
                        v);
                return 2;
            }
        } else if (!strcmp(a, "--tokens")) {
            tokens = v;
        } else if (!strcmp(a, "--prompt-file")) {
            prompt_file = v;
        } else if (!strcmp(a, "--logits")) {
            logits_path = v;
        } else if (!strcmp(a, "--generate")) {
            if (!parse_int(v, a, 0, 1000000, &n_gen))
                return 2;
        } else if (!strcmp(a, "--threads")) {
            if (!parse_int(v, a, 0, 4096, &threads))
                return 2;
        } else if (!strcmp(a, "--speculative")) {
            if (strcmp(v, "mtp")) {
                fprintf(stderr, "qplug run: --speculative supports only 'mtp', got '%s'\n", v);
                return 2;
            }
            speculative = true;
        } else {
            fprintf(stderr, "qplug run: unknown option '%s'\n%s", a, usage_text);
            return 2;
        }
    }
    if (!ckpt || (!tokens == !prompt_file)) {
        fprintf(stderr, "qplug run: --checkpoint and one of --tokens / --prompt-file are "
                        "required\n%s",
                usage_text);
        return 2;
    }

    tok_list prompt = {0};
    if (tokens) {
        if (!parse_tokens(tokens, "--tokens", &prompt)) {
            free(prompt.v);
            return 2;
        }
    } else {
        char *text = read_text(prompt_file);
        bool ok = text && parse_tokens(text, prompt_file, &prompt);
        free(text);
        if (!ok) {
            free(prompt.v);
            return 1;
        }
    }

    int rc = 1;
    qplug_err err = {0};
    qplug_model *m = NULL;
    float *logits = NULL;
    int32_t *out = NULL;
    if (qplug_model_open(ckpt, policy, device, precision, (int)threads, speculative, &m, &err)) {
        fprintf(stderr, "qplug run: %s\n", err.msg);
        goto done;
    }
    int64_t V = qplug_model_vocab(m);
    if (logits_path || compare) {
        logits = malloc((size_t)(prompt.n * V) * sizeof(float));
        if (!logits) {
            fprintf(stderr, "qplug run: out of memory for %lld x %lld logits\n",
                    (long long)prompt.n, (long long)V);
            goto done;
        }
    }
    out = malloc((size_t)(n_gen > 0 ? n_gen : 1) * sizeof(int32_t));
    if (!out) {
        fprintf(stderr, "qplug run: out of memory\n");
        goto done;
    }
    qplug_generate_stats stats;
    if (qplug_model_generate(m, prompt.v, prompt.n, n_gen, speculative, out, logits, &stats,
                             &err)) {
        fprintf(stderr, "qplug run: %s\n", err.msg);
        goto done;
    }
    if (logits_path) {
        qplug_tensor t = {.name = "logits", .dtype = QPLUG_DT_F32, .ndim = 2,
                          .shape = {prompt.n, V}, .data = logits, .device = QPLUG_DEVICE_CPU};
        if (qplug_st_write(logits_path, &t, 1, &err)) {
            fprintf(stderr, "qplug run: %s\n", err.msg);
            goto done;
        }
    }
    printf("precision: %s, threads: %d\n",
           precision == QPLUG_PRECISION_REFERENCE ? "reference" : "native",
           qplug_model_threads(m));
    printf("prefill: %lld tokens in %.3f s (%.1f tokens/s)\n", (long long)prompt.n,
           stats.prefill_seconds,
           stats.prefill_seconds > 0 ? (double)prompt.n / stats.prefill_seconds : 0.0);
    if (n_gen > 0) {
        printf("generated:");
        for (long i = 0; i < n_gen; i++)
            printf(" %d", out[i]);
        printf("\n");
        /* The first generated token comes from the prefill's logits; decode
         * is every token after it. */
        long dec = n_gen - 1;
        printf("decode: %ld tokens in %.3f s (%.1f tokens/s)\n", dec, stats.decode_seconds,
               stats.decode_seconds > 0 ? (double)dec / stats.decode_seconds : 0.0);
        if (speculative)
            printf("speculative mtp: %lld of %lld drafts accepted (%.1f%%)\n",
                   (long long)stats.accepted, (long long)stats.drafted,
                   stats.drafted ? 100.0 * (double)stats.accepted / (double)stats.drafted : 0.0);
    }
    if (logits_path)
        printf("logits: %s [%lld, %lld]\n", logits_path, (long long)prompt.n, (long long)V);
    if (compare && compare_with_reference(ckpt, policy, device, (int)threads, &prompt, logits,
                                          V) != 0)
        goto done;
    rc = 0;
done:
    qplug_model_close(m);
    free(logits);
    free(out);
    free(prompt.v);
    return rc;
}
