/*
 * tests/conformance/conformance.c - the plugin conformance driver.
 *
 *   qplug_conformance --plugin PATH.so [--case NAME] [--list] [--seed N]
 *                     [--require] [--data DIR] [-v] [--device cuda]
 *
 * Runs against any plugin .so through the ABI alone (it links no qplug
 * core): it dlopen()s the file, checks the ABI fields, and then, for every
 * case of cases.h the plugin scores above 0 (or only --case), checks the
 * tensors create_weights declares against the format as the fixture stores
 * it, builds the layer, and runs apply() in reference and native precision
 * on fresh random inputs with poisoned outputs against an fp64 reference
 * computed here from the fixture's independently dequantized weights; then
 * feeds it bad inputs, which must give an error status and a message, not a
 * crash. With --require a case the plugin does not claim is a failure.
 *
 * The host it hands the plugin is its own: malloc-backed alloc with a leak
 * count per layer, a pthread parallel_for, declare/weight that exist only
 * in their phases, and an error() that records the message.
 */
#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#ifdef QPLUG_CONF_CUDA
#include <cublasLt.h>
#include <cuda_runtime_api.h>
#endif

#include "cases.h"
#include "qplug/plugin.h"

#ifndef QPLUG_CONF_DATA_DIR
#define QPLUG_CONF_DATA_DIR "tests/data/conformance"
#endif

/* ------------------------------------------------------------------------ */
/* Failures                                                                 */
/* ------------------------------------------------------------------------ */

typedef struct conf_run {
    int failures;
    int checks;
    bool verbose;
    /* --device cuda (builds with QPLUG_CONF_CUDA only): layers are created
     * for the CUDA device and applied on device tensors; lt is the
     * cublasLtHandle_t the host table hands out. */
    bool cuda;
    void *lt;
} conf_run;

static void fail(conf_run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(conf_run *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("  FAIL: ", stdout);
    vprintf(fmt, ap);
    fputc('\n', stdout);
    va_end(ap);
    r->failures++;
}

#define EXPECT(r, cond, ...)                                                   \
    do {                                                                       \
        (r)->checks++;                                                         \
        if (!(cond))                                                           \
            fail((r), __VA_ARGS__);                                            \
    } while (0)

/* ------------------------------------------------------------------------ */
/* Fixtures: a small safetensors reader                                     */
/* ------------------------------------------------------------------------ */

typedef struct fx_tensor {
    char *name;
    qplug_dtype dtype;
    int32_t ndim;
    int64_t shape[QPLUG_MAX_DIMS];
    void *data;      /* its own aligned copy */
    size_t bytes;
} fx_tensor;

typedef struct fixture {
    char *path;
    fx_tensor *t;
    size_t n;
} fixture;

static void fixture_free(fixture *f)
{
    for (size_t i = 0; i < f->n; i++) {
        free(f->t[i].name);
        free(f->t[i].data);
    }
    free(f->t);
    free(f->path);
    memset(f, 0, sizeof *f);
}

static bool dtype_from_name(const char *s, qplug_dtype *out)
{
#define X(nm, st, bits)                                                        \
    if (strcmp(s, st) == 0) {                                                  \
        *out = QPLUG_DT_##nm;                                                  \
        return true;                                                           \
    }
    QPLUG_DTYPE_LIST(X)
#undef X
    return false;
}

static bool fixture_load(const char *path, fixture *f, char *err, size_t errsz)
{
    memset(f, 0, sizeof *f);
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        snprintf(err, errsz, "%s: %s", path, strerror(errno));
        return false;
    }
    unsigned char *buf = NULL;
    cJSON *hdr = NULL;
    bool ok = false;
    fseek(fp, 0, SEEK_END);
    long len = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    buf = malloc(len > 0 ? (size_t)len : 1);
    if (!buf || len < 8 || fread(buf, 1, (size_t)len, fp) != (size_t)len) {
        snprintf(err, errsz, "%s: cannot read", path);
        goto done;
    }
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--)
        hl = (hl << 8) | buf[i];
    if (hl > (uint64_t)len - 8) {
        snprintf(err, errsz, "%s: header length %" PRIu64 " beyond the file", path, hl);
        goto done;
    }
    hdr = cJSON_ParseWithLength((const char *)buf + 8, (size_t)hl);
    if (!cJSON_IsObject(hdr)) {
        snprintf(err, errsz, "%s: header is not a JSON object", path);
        goto done;
    }
    size_t payload = (size_t)len - 8 - (size_t)hl;
    const unsigned char *base = buf + 8 + hl;
    f->t = calloc((size_t)cJSON_GetArraySize(hdr) + 1, sizeof *f->t);
    if (!f->t)
        goto done;
    cJSON *it;
    cJSON_ArrayForEach(it, hdr)
    {
        if (strcmp(it->string, "__metadata__") == 0)
            continue;
        fx_tensor *t = &f->t[f->n];
        cJSON *dt = cJSON_GetObjectItem(it, "dtype");
        cJSON *sh = cJSON_GetObjectItem(it, "shape");
        cJSON *of = cJSON_GetObjectItem(it, "data_offsets");
        if (!cJSON_IsString(dt) || !dtype_from_name(dt->valuestring, &t->dtype) ||
            !cJSON_IsArray(sh) || cJSON_GetArraySize(sh) > QPLUG_MAX_DIMS ||
            !cJSON_IsArray(of) || cJSON_GetArraySize(of) != 2) {
            snprintf(err, errsz, "%s: tensor %s: bad entry", path, it->string);
            goto done;
        }
        t->ndim = cJSON_GetArraySize(sh);
        int64_t numel = 1;
        for (int i = 0; i < t->ndim; i++) {
            t->shape[i] = (int64_t)cJSON_GetArrayItem(sh, i)->valuedouble;
            numel *= t->shape[i];
        }
        double o0 = cJSON_GetArrayItem(of, 0)->valuedouble;
        double o1 = cJSON_GetArrayItem(of, 1)->valuedouble;
        size_t want = (size_t)((numel * (int64_t)qplug_dtype_bits(t->dtype) + 7) / 8);
        if (o0 < 0 || o1 < o0 || o1 > (double)payload || (size_t)(o1 - o0) != want) {
            snprintf(err, errsz, "%s: tensor %s: offsets do not match its shape", path,
                     it->string);
            goto done;
        }
        t->name = strdup(it->string);
        t->bytes = want;
        t->data = malloc(want ? want : 1);
        if (!t->name || !t->data) {
            f->n++;
            goto done;
        }
        memcpy(t->data, base + (size_t)o0, want);
        f->n++;
    }
    f->path = strdup(path);
    ok = f->path != NULL;
done:
    if (!ok && err[0] == '\0')
        snprintf(err, errsz, "%s: out of memory", path);
    if (!ok)
        fixture_free(f);
    cJSON_Delete(hdr);
    free(buf);
    fclose(fp);
    return ok;
}

static const fx_tensor *fixture_find(const fixture *f, const char *name)
{
    for (size_t i = 0; i < f->n; i++)
        if (strcmp(f->t[i].name, name) == 0)
            return &f->t[i];
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* The host                                                                 */
/* ------------------------------------------------------------------------ */

#define MAX_DECL 512

typedef struct decl {
    char slot[128];
    uint32_t mask;
    int32_t ndim;
    int64_t shape[QPLUG_MAX_DIMS];
    uint32_t flags;
    qplug_tensor bound;   /* presented tensor; data NULL when absent */
    bool present;
} decl;

enum { PHASE_NONE, PHASE_DECLARE, PHASE_LOAD, PHASE_APPLY };

typedef struct host_ctx {
    conf_run *run;
    int phase;
    decl decls[MAX_DECL];
    int ndecl;
    bool decl_error;      /* a malformed or duplicate declaration */
    char errmsg[512];
    int errors;           /* error() calls */
    atomic_long live;     /* outstanding allocations */
    int threads;
    const char *fp4_option;
} host_ctx;

static void h_log(void *ctx, qplug_log_level level, const char *fmt, ...)
{
    host_ctx *h = ctx;
    if (!h->run->verbose)
        return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "  plugin log %d: ", (int)level);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static qplug_status h_error(void *ctx, qplug_status status, const char *fmt, ...)
{
    host_ctx *h = ctx;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(h->errmsg, sizeof h->errmsg, fmt, ap);
    va_end(ap);
    h->errors++;
    return status;
}

static qplug_status h_declare(void *ctx, const char *slot, uint32_t mask, int32_t ndim,
                              const int64_t *shape, uint32_t flags)
{
    host_ctx *h = ctx;
    if (h->phase != PHASE_DECLARE) {
        h->decl_error = true;
        return h_error(ctx, QPLUG_ERR_ARGUMENT, "declare() called outside create_weights");
    }
    if (!slot || !slot[0] || strlen(slot) >= sizeof h->decls[0].slot || ndim < 0 ||
        ndim > QPLUG_MAX_DIMS || (ndim > 0 && !shape) || mask == 0 || h->ndecl >= MAX_DECL) {
        h->decl_error = true;
        return h_error(ctx, QPLUG_ERR_ARGUMENT, "malformed declaration of slot '%s'",
                       slot ? slot : "(null)");
    }
    for (int i = 0; i < h->ndecl; i++)
        if (strcmp(h->decls[i].slot, slot) == 0) {
            h->decl_error = true;
            return h_error(ctx, QPLUG_ERR_DUPLICATE, "slot '%s' declared twice", slot);
        }
    decl *d = &h->decls[h->ndecl++];
    memset(d, 0, sizeof *d);
    snprintf(d->slot, sizeof d->slot, "%s", slot);
    d->mask = mask;
    d->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        d->shape[i] = shape[i];
    d->flags = flags;
    return QPLUG_OK;
}

static const qplug_tensor *h_weight(void *ctx, const char *slot)
{
    host_ctx *h = ctx;
    if (h->phase != PHASE_LOAD || !slot)
        return NULL;
    for (int i = 0; i < h->ndecl; i++)
        if (strcmp(h->decls[i].slot, slot) == 0)
            return h->decls[i].present ? &h->decls[i].bound : NULL;
    return NULL;
}

static void *h_alloc(void *ctx, size_t bytes, qplug_device_kind device)
{
    host_ctx *h = ctx;
#ifdef QPLUG_CONF_CUDA
    if (device == QPLUG_DEVICE_CUDA && h->run->cuda) {
        void *d = NULL;
        if (cudaMalloc(&d, bytes ? bytes : 1) != cudaSuccess)
            return NULL;
        atomic_fetch_add(&h->live, 1);
        return d;
    }
#endif
    if (device != QPLUG_DEVICE_CPU)
        return NULL;
    /* 64-byte alignment, like a real host's allocator would give. */
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 1) != 0)
        return NULL;
    atomic_fetch_add(&h->live, 1);
    return p;
}

static void h_free(void *ctx, void *ptr, qplug_device_kind device)
{
    host_ctx *h = ctx;
    if (!ptr)
        return;
    atomic_fetch_sub(&h->live, 1);
#ifdef QPLUG_CONF_CUDA
    if (device == QPLUG_DEVICE_CUDA) {
        cudaFree(ptr);
        return;
    }
#else
    (void)device;
#endif
    free(ptr);
}

typedef struct pf_job {
    qplug_range_fn fn;
    void *arg;
    int64_t begin, end;
} pf_job;

static void *pf_thread(void *p)
{
    pf_job *j = p;
    j->fn(j->arg, j->begin, j->end);
    return NULL;
}

static void h_parallel_for(void *ctx, int64_t n, qplug_range_fn fn, void *arg)
{
    host_ctx *h = ctx;
    if (n <= 0)
        return;
    int t = h->threads;
    if (t > n)
        t = (int)n;
    if (t <= 1) {
        fn(arg, 0, n);
        return;
    }
    pthread_t tid[64];
    pf_job jobs[64];
    bool spawned[64];
    for (int i = 1; i < t; i++) {
        jobs[i] = (pf_job){fn, arg, n * i / t, n * (i + 1) / t};
        spawned[i] = pthread_create(&tid[i], NULL, pf_thread, &jobs[i]) == 0;
        if (!spawned[i])
            pf_thread(&jobs[i]); /* no thread to be had: run it here */
    }
    jobs[0] = (pf_job){fn, arg, 0, n / t};
    pf_thread(&jobs[0]);
    for (int i = 1; i < t; i++)
        if (spawned[i])
            pthread_join(tid[i], NULL);
}

static const char *h_option(void *ctx, const char *section, const char *key)
{
    host_ctx *h = ctx;
    if (section && key && strcmp(section, "megamoe") == 0 && strcmp(key, "fp4_activations") == 0)
        return h->fp4_option;
    return NULL;
}

#ifdef QPLUG_CONF_CUDA
static void *h_cublaslt(void *ctx)
{
    host_ctx *h = ctx;
    return h->run->cuda ? h->run->lt : NULL;
}

static void *h_nccl_comm(void *ctx)
{
    (void)ctx;
    return NULL;
}

static int h_cuda_device(void *ctx)
{
    (void)ctx;
    return 0;
}
#endif

static const qplug_host_api HOST_API = {
    .struct_size = sizeof(qplug_host_api),
    .log = h_log,
    .error = h_error,
    .declare = h_declare,
    .weight = h_weight,
    .alloc = h_alloc,
    .free = h_free,
    .parallel_for = h_parallel_for,
    .option = h_option,
#ifdef QPLUG_CONF_CUDA
    .cublaslt = h_cublaslt,
    .nccl_comm = h_nccl_comm,
    .cuda_device = h_cuda_device,
#else
    .cublaslt = NULL,
    .nccl_comm = NULL,
    .cuda_device = NULL,
#endif
};

/* ------------------------------------------------------------------------ */
/* Random numbers (xorshift64*, seeded per run)                             */
/* ------------------------------------------------------------------------ */

typedef struct rng {
    uint64_t s;
} rng;

static uint64_t rng_next(rng *r)
{
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 2685821657736338717ull;
}

static double rng_uniform(rng *r)
{
    return ((double)(rng_next(r) >> 11) + 0.5) / 9007199254740992.0;
}

static double rng_normal(rng *r)
{
    double u = rng_uniform(r), v = rng_uniform(r);
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

/* ------------------------------------------------------------------------ */
/* ABI checks                                                               */
/* ------------------------------------------------------------------------ */

static bool name_ok(const char *s)
{
    if (!s || !*s || strlen(s) > 64)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_'))
            return false;
    return true;
}

static qplug_layer_desc desc_of(const conf_case *c)
{
    qplug_layer_desc d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    d.name = c->kind == QPLUG_LAYER_FUSED_MOE        ? "layers.3.ffn.experts"
             : c->kind == QPLUG_LAYER_GROUPED_LINEAR ? "layers.0.attn.wo_a"
             : c->kind == QPLUG_LAYER_ATTENTION      ? "layers.0.attn"
                                                     : "layers.0.attn.wq_a";
    d.kind = c->kind;
    d.quant = c->quant;
    d.weight_dtype = c->weight_dtype;
    d.scale_dtype = c->scale_dtype;
    d.device = QPLUG_DEVICE_CPU;
    d.n = c->n;
    d.k = c->k;
    d.groups = c->groups;
    d.num_experts = c->experts;
    d.top_k = c->top_k;
    d.swiglu_limit = c->swiglu_limit;
    d.flags = c->flags;
    if (c->num_shards > 1) {
        /* A sharded linear is named like the compressor it stands for. */
        d.name = "layers.1.attn.compressor";
        d.num_shards = c->num_shards;
        for (int32_t i = 0; i < c->num_shards && i < QPLUG_MAX_SHARDS; i++) {
            d.shard_names[i] = c->shard_names[i];
            d.shard_n[i] = c->shard_n[i];
        }
    }
    return d;
}

static void check_abi(conf_run *r, const qplug_plugin *p)
{
    printf("abi: checking the vtable\n");
    EXPECT(r, QPLUG_ABI_MAJOR(p->abi_version) == QPLUG_ABI_VERSION_MAJOR,
           "abi_version 0x%x has major %u, this driver speaks %u", p->abi_version,
           QPLUG_ABI_MAJOR(p->abi_version), QPLUG_ABI_VERSION_MAJOR);
    EXPECT(r, p->struct_size >= offsetof(qplug_plugin, kv_entry_bytes),
           "struct_size %u is too small for the 1.0 slots (%zu)", p->struct_size,
           offsetof(qplug_plugin, kv_entry_bytes));
    EXPECT(r, name_ok(p->name), "name '%s' is not [a-z0-9_]+", p->name ? p->name : "(null)");
    EXPECT(r, p->description != NULL, "description is NULL");
    EXPECT(r, (p->devices & (1u << QPLUG_DEVICE_CPU)) != 0,
           "devices 0x%x lacks the CPU bit (every plugin has a CPU path)", p->devices);
    EXPECT(r, p->score && p->create_weights && p->process_after_loading && p->apply && p->destroy,
           "a mandatory slot (score, create_weights, process_after_loading, apply, destroy) is "
           "NULL");
    if (!p->score)
        return;
    /* Layers nobody can handle must score 0, purely. */
    qplug_layer_desc d = desc_of(&CONF_CASES[0]);
    qplug_layer_desc bad = d;
    bad.kind = (qplug_layer_kind)99;
    EXPECT(r, p->score(&bad) == 0, "score > 0 for an unknown layer kind");
    bad = d;
    bad.quant = (qplug_quant_scheme)99;
    EXPECT(r, p->score(&bad) == 0, "score > 0 for an unknown quant scheme");
    bad = d;
    bad.n = 0;
    EXPECT(r, p->score(&bad) == 0, "score > 0 for n = 0");
    bad = d;
    bad.k = -128;
    EXPECT(r, p->score(&bad) == 0, "score > 0 for k < 0");
    for (size_t i = 0; i < CONF_NCASES; i++) {
        if (CONF_CASES[i].kind != QPLUG_LAYER_FUSED_MOE)
            continue;
        bad = desc_of(&CONF_CASES[i]);
        bad.top_k = bad.num_experts + 1;
        EXPECT(r, p->score(&bad) == 0, "score > 0 for top_k > num_experts (%s)",
               CONF_CASES[i].name);
        break;
    }
    if (!(p->devices & (1u << QPLUG_DEVICE_CUDA)))
        for (size_t i = 0; i < CONF_NCASES; i++) {
            bad = desc_of(&CONF_CASES[i]);
            bad.device = QPLUG_DEVICE_CUDA;
            EXPECT(r, p->score(&bad) == 0,
                   "score > 0 for a CUDA layer (%s) but devices lacks the CUDA bit",
                   CONF_CASES[i].name);
        }
    /* destroy(NULL) is allowed. */
    if (p->destroy) {
        host_ctx *h = calloc(1, sizeof *h);
        if (h) {
            h->run = r;
            qplug_host host = {&HOST_API, h};
            p->destroy(&host, NULL);
            free(h);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Declarations against the fixture                                         */
/* ------------------------------------------------------------------------ */

static bool is_fp4_bytes(qplug_dtype dt)
{
    return dt == QPLUG_DT_U8 || dt == QPLUG_DT_I8;
}

static void fmt_shape(char *buf, size_t n, int32_t ndim, const int64_t *shape)
{
    size_t o = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < n)
        snprintf(buf + o, n - o, "]");
}

/*
 * Binds each declaration to the fixture's tensor "<prefix>.<slot>", as the
 * core would: dtype in the declared set, shape equal to the declared one;
 * packed FP4 stored as U8/I8 [r, c/2] may be presented as E2M1 [r, c] and
 * the other way round. Also checks that every fixture tensor of the layer
 * is declared (a declaration set that leaves checkpoint tensors unused does
 * not describe the format).
 */
static void bind_decls(conf_run *r, host_ctx *h, const conf_case *c, const fixture *fx)
{
    char name[256], s1[64], s2[64];
    for (int i = 0; i < h->ndecl; i++) {
        decl *d = &h->decls[i];
        snprintf(name, sizeof name, "%s.%s", c->prefix, d->slot);
        const fx_tensor *t = fixture_find(fx, name);
        if (!t) {
            EXPECT(r, d->flags & QPLUG_DECL_OPTIONAL,
                   "declared slot '%s' is not part of the %s format (no tensor %s in %s)",
                   d->slot, c->name, name, fx->path);
            continue;
        }
        qplug_tensor v;
        memset(&v, 0, sizeof v);
        v.name = t->name;
        v.dtype = t->dtype;
        v.ndim = t->ndim;
        memcpy(v.shape, t->shape, sizeof v.shape);
        v.data = t->data;
        v.device = QPLUG_DEVICE_CPU;
        if (!(d->mask & QPLUG_DT_BIT(t->dtype))) {
            /* The packed-FP4 presentations. */
            if (is_fp4_bytes(t->dtype) && t->ndim == 2 && (d->mask & QPLUG_DT_BIT(QPLUG_DT_E2M1))) {
                v.dtype = QPLUG_DT_E2M1;
                v.shape[1] = t->shape[1] * 2;
            } else if (is_fp4_bytes(t->dtype) &&
                       (d->mask & (QPLUG_DT_BIT(QPLUG_DT_U8) | QPLUG_DT_BIT(QPLUG_DT_I8)))) {
                v.dtype = (d->mask & QPLUG_DT_BIT(QPLUG_DT_U8)) ? QPLUG_DT_U8 : QPLUG_DT_I8;
            }
        }
        bool dt_ok = (d->mask & QPLUG_DT_BIT(v.dtype)) != 0;
        bool sh_ok = d->ndim == v.ndim;
        for (int k = 0; sh_ok && k < d->ndim; k++)
            sh_ok = d->shape[k] == v.shape[k];
        fmt_shape(s1, sizeof s1, d->ndim, d->shape);
        fmt_shape(s2, sizeof s2, v.ndim, v.shape);
        EXPECT(r, dt_ok, "slot '%s': the format stores %s (tensor %s), not in the declared set 0x%x",
               d->slot, qplug_dtype_name(t->dtype), name, d->mask);
        EXPECT(r, sh_ok, "slot '%s': declared shape %s but the format stores %s (tensor %s)",
               d->slot, s1, s2, name);
        if (dt_ok && sh_ok) {
            d->bound = v;
            d->present = true;
        }
    }
    size_t plen = strlen(c->prefix);
    for (size_t i = 0; i < fx->n; i++) {
        const char *tn = fx->t[i].name;
        if (strncmp(tn, c->prefix, plen) != 0 || tn[plen] != '.')
            continue;
        bool found = false;
        for (int k = 0; k < h->ndecl && !found; k++)
            found = strcmp(h->decls[k].slot, tn + plen + 1) == 0;
        EXPECT(r, found, "tensor %s of the %s format is not declared by create_weights", tn,
               c->name);
    }
}

/* ------------------------------------------------------------------------ */
/* Reference                                                                */
/* ------------------------------------------------------------------------ */

/* The exact fp32 weight of "<prefix>[.<sub>]" as the fixture gives it:
 * "deq.<...>" when present, else the BF16/F32 weight widened here. */
static double *ref_weight(const fixture *fx, const char *base, int64_t rows, int64_t cols,
                          char *err, size_t errsz)
{
    char name[256];
    snprintf(name, sizeof name, "deq.%s", base);
    const fx_tensor *t = fixture_find(fx, name);
    if (!t) {
        snprintf(name, sizeof name, "%s.weight", base);
        t = fixture_find(fx, name);
    }
    if (!t || t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols ||
        (t->dtype != QPLUG_DT_F32 && t->dtype != QPLUG_DT_BF16)) {
        snprintf(err, errsz, "%s: no usable reference weight for %s [%lld, %lld]", fx->path, base,
                 (long long)rows, (long long)cols);
        return NULL;
    }
    double *w = malloc((size_t)(rows * cols) * sizeof(double));
    if (!w) {
        snprintf(err, errsz, "out of memory");
        return NULL;
    }
    for (int64_t i = 0; i < rows * cols; i++) {
        float v;
        if (t->dtype == QPLUG_DT_F32) {
            memcpy(&v, (const char *)t->data + 4 * i, 4);
        } else {
            uint16_t b;
            memcpy(&b, (const char *)t->data + 2 * i, 2);
            uint32_t u = (uint32_t)b << 16;
            memcpy(&v, &u, 4);
        }
        w[i] = v;
    }
    return w;
}

typedef struct ref_weights {
    double *w;          /* linear/grouped [G*n, k] */
    double **e;         /* moe: [3*E]: w1[E], w3[E], w2[E] */
    int ne;
} ref_weights;

static void ref_free(ref_weights *rw)
{
    free(rw->w);
    for (int i = 0; i < rw->ne; i++)
        free(rw->e[i]);
    free(rw->e);
    memset(rw, 0, sizeof *rw);
}

static bool ref_load(const conf_case *c, const fixture *fx, ref_weights *rw, char *err,
                     size_t errsz)
{
    memset(rw, 0, sizeof *rw);
    if (c->kind == QPLUG_LAYER_LINEAR || c->kind == QPLUG_LAYER_GROUPED_LINEAR) {
        rw->w = ref_weight(fx, c->prefix, (int64_t)c->groups * c->n, c->k, err, errsz);
        return rw->w != NULL;
    }
    if (c->kind != QPLUG_LAYER_FUSED_MOE)
        return true;
    rw->e = calloc((size_t)(3 * c->experts), sizeof *rw->e);
    if (!rw->e)
        return false;
    rw->ne = 3 * c->experts;
    static const char *const wn[3] = {"w1", "w3", "w2"};
    char base[128];
    for (int w = 0; w < 3; w++)
        for (int e = 0; e < c->experts; e++) {
            snprintf(base, sizeof base, "%s.experts.%d.%s", c->prefix, e, wn[w]);
            rw->e[w * c->experts + e] = ref_weight(fx, base, w < 2 ? c->n : c->k,
                                                   w < 2 ? c->k : c->n, err, errsz);
            if (!rw->e[w * c->experts + e])
                return false;
        }
    return true;
}

/* y = reference of the case for x [m, in] (and routing), in fp64. */
static void ref_forward(const conf_case *c, const ref_weights *rw, const float *x, int64_t m,
                        const int32_t *ids, const float *tw, double *y)
{
    int64_t n = c->n, k = c->k;
    if (c->kind == QPLUG_LAYER_LINEAR || c->kind == QPLUG_LAYER_GROUPED_LINEAR) {
        int64_t G = c->groups;
        for (int64_t i = 0; i < m; i++)
            for (int64_t g = 0; g < G; g++)
                for (int64_t j = 0; j < n; j++) {
                    const double *w = rw->w + (g * n + j) * k;
                    const float *xr = x + i * G * k + g * k;
                    double s = 0.0;
                    for (int64_t t = 0; t < k; t++)
                        s += (double)xr[t] * w[t];
                    y[i * G * n + g * n + j] = s;
                }
        return;
    }
    /* MoE: n = I, k = D. */
    int64_t I = n, D = k;
    double L = c->swiglu_limit;
    double *h = malloc((size_t)I * sizeof(double));
    if (!h)
        return;
    for (int64_t i = 0; i < m; i++) {
        for (int64_t d = 0; d < D; d++)
            y[i * D + d] = 0.0;
        for (int j = 0; j < c->top_k; j++) {
            int32_t e = ids[i * c->top_k + j];
            if (e < 0)
                continue;
            const double *w1 = rw->e[e], *w3 = rw->e[c->experts + e], *w2 = rw->e[2 * c->experts + e];
            for (int64_t a = 0; a < I; a++) {
                double g = 0.0, u = 0.0;
                for (int64_t d = 0; d < D; d++) {
                    g += (double)x[i * D + d] * w1[a * D + d];
                    u += (double)x[i * D + d] * w3[a * D + d];
                }
                if (L > 0) {
                    g = g < L ? g : L;
                    u = u < -L ? -L : (u > L ? L : u);
                }
                h[a] = g / (1.0 + exp(-g)) * u;
            }
            for (int64_t d = 0; d < D; d++) {
                double s = 0.0;
                for (int64_t a = 0; a < I; a++)
                    s += h[a] * w2[d * I + a];
                y[i * D + d] += (double)tw[i * c->top_k + j] * s;
            }
        }
    }
    free(h);
}

static double rel_l2(const float *y, const double *ref, int64_t n)
{
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)y[i] - ref[i];
        num += d * d;
        den += ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* ------------------------------------------------------------------------ */
/* One case                                                                 */
/* ------------------------------------------------------------------------ */

static qplug_tensor mk(qplug_dtype dt, int64_t r0, int64_t r1, void *data)
{
    qplug_tensor t;
    memset(&t, 0, sizeof t);
    t.dtype = dt;
    t.ndim = 2;
    t.shape[0] = r0;
    t.shape[1] = r1;
    t.data = data;
    t.device = QPLUG_DEVICE_CPU;
    return t;
}

/* Calls apply and checks that a failure came with a one-line message. */
static qplug_status call_apply(conf_run *r, const qplug_plugin *p, const qplug_host *host,
                               void *state, const qplug_apply_args *a)
{
    host_ctx *h = host->ctx;
    h->errors = 0;
    h->errmsg[0] = '\0';
    qplug_status st = p->apply(host, state, a);
    if (st != QPLUG_OK) {
        EXPECT(r, h->errors > 0 && h->errmsg[0], "apply returned %s without an error() message",
               qplug_status_name(st));
        EXPECT(r, strchr(h->errmsg, '\n') == NULL, "error message is not one line: %s",
               h->errmsg);
        if (r->verbose)
            printf("    (error message: %s)\n", h->errmsg);
    }
    return st;
}

static bool scheme_quantizes(const conf_case *c)
{
    return c->quant != QPLUG_QUANT_NONE;
}

static void run_kv(conf_run *r, const qplug_plugin *p, const qplug_host *host, void *state,
                   const conf_case *c, const qplug_layer_desc *desc, rng *g)
{
    EXPECT(r, p->kv_entry_bytes != NULL, "attention claimed but kv_entry_bytes is NULL");
    if (!p->kv_entry_bytes)
        return;
    size_t eb = p->kv_entry_bytes(desc);
    EXPECT(r, eb > 0 && eb <= (size_t)c->k * 8, "kv_entry_bytes %zu is implausible for k = %lld",
           eb, (long long)c->k);
    if (eb == 0 || eb > (size_t)c->k * 8)
        return;
    int64_t m = 9, rows = m + 5, row0 = 3, k = c->k;
    uint8_t *cache = malloc((size_t)rows * eb);
    float *x = malloc((size_t)(m * k) * sizeof(float));
    float *y = malloc((size_t)(m * k) * sizeof(float));
    double *ref = malloc((size_t)(m * k) * sizeof(double));
    if (!cache || !x || !y || !ref)
        goto done;
    memset(cache, 0xA5, (size_t)rows * eb);
    for (int64_t i = 0; i < m * k; i++) {
        x[i] = (float)(rng_normal(g) * (1.0 + (double)(i / k)));
        ref[i] = x[i];
    }
    for (int prec = 0; prec < 2; prec++) {
        qplug_tensor tx = mk(QPLUG_DT_F32, m, k, x), ty = mk(QPLUG_DT_F32, m, k, y);
        qplug_tensor tc = mk(QPLUG_DT_U8, rows, (int64_t)eb, cache);
        qplug_apply_args a = {sizeof a, QPLUG_OP_KV_WRITE, (qplug_precision)prec, &tx, NULL,
                              NULL, NULL, &tc, row0, NULL, NULL};
        qplug_status st = call_apply(r, p, host, state, &a);
        EXPECT(r, st == QPLUG_OK, "KV_WRITE failed: %s", qplug_status_name(st));
        for (int64_t i = 0; i < m * k; i++)
            y[i] = NAN;
        a.op = QPLUG_OP_KV_READ;
        a.x = NULL;
        a.y = &ty;
        st = call_apply(r, p, host, state, &a);
        EXPECT(r, st == QPLUG_OK, "KV_READ failed: %s", qplug_status_name(st));
        int64_t unwritten = 0;
        for (int64_t i = 0; i < m * k; i++)
            unwritten += !isfinite(y[i]);
        EXPECT(r, unwritten == 0, "KV_READ left %lld of %lld outputs unwritten (NaN)",
               (long long)unwritten, (long long)(m * k));
        double e = rel_l2(y, ref, m * k);
        printf("  kv round trip (%s): rel L2 %.3g (bound %.3g)\n",
               prec ? "reference" : "native", e, c->native_bound);
        EXPECT(r, e <= c->native_bound, "KV round trip rel L2 %.3g > bound %.3g", e,
               c->native_bound);
    }
    bool untouched = true;
    for (size_t b = 0; b < (size_t)row0 * eb; b++)
        untouched &= cache[b] == 0xA5;
    for (size_t b = (size_t)(row0 + m) * eb; b < (size_t)rows * eb; b++)
        untouched &= cache[b] == 0xA5;
    EXPECT(r, untouched, "KV_WRITE touched cache rows outside [row0, row0 + m)");
    /* Bad inputs. */
    {
        qplug_tensor tx = mk(QPLUG_DT_F32, m, k, x), tc = mk(QPLUG_DT_U8, rows, (int64_t)eb, cache);
        qplug_apply_args a = {sizeof a, QPLUG_OP_KV_WRITE, QPLUG_PRECISION_NATIVE, &tx, NULL,
                              NULL, NULL, &tc, rows - 2, NULL, NULL};
        EXPECT(r, call_apply(r, p, host, state, &a) != QPLUG_OK,
               "KV_WRITE past the cache's last row was accepted");
        a.row0 = 0;
        tc.shape[1] = (int64_t)eb + 1;
        EXPECT(r, call_apply(r, p, host, state, &a) != QPLUG_OK,
               "a cache with the wrong entry width was accepted");
        tc.shape[1] = (int64_t)eb;
        tx.dtype = QPLUG_DT_F64;
        EXPECT(r, call_apply(r, p, host, state, &a) != QPLUG_OK, "x of dtype F64 was accepted");
        tx.dtype = QPLUG_DT_F32;
        tx.shape[1] = k + 1;
        EXPECT(r, call_apply(r, p, host, state, &a) != QPLUG_OK, "x of width k + 1 was accepted");
        tx.shape[1] = k;
        if (scheme_quantizes(c)) {
            float keep = x[5];
            x[5] = INFINITY;
            EXPECT(r, call_apply(r, p, host, state, &a) != QPLUG_OK,
                   "an Inf in x was accepted by a quantizing KV cache");
            x[5] = keep;
        }
    }
done:
    free(cache);
    free(x);
    free(y);
    free(ref);
}

static void make_routing(const conf_case *c, int64_t m, rng *g, int32_t *ids, float *tw)
{
    for (int64_t i = 0; i < m; i++) {
        for (int j = 0; j < c->top_k; j++) {
            int32_t e;
            bool dup;
            do {
                e = (int32_t)(rng_next(g) % (uint64_t)c->experts);
                dup = false;
                for (int q = 0; q < j; q++)
                    dup |= ids[i * c->top_k + q] == e;
            } while (dup);
            ids[i * c->top_k + j] = e;
            tw[i * c->top_k + j] = (float)(0.25 + rng_uniform(g));
        }
    }
    /* Some slots are skipped (-1), as a router with fewer experts does. */
    if (m > 2)
        ids[2 * c->top_k + c->top_k - 1] = -1;
}

static void run_forward(conf_run *r, const qplug_plugin *p, const qplug_host *host, void *state,
                        const conf_case *c, const ref_weights *rw, rng *g)
{
    bool moe = c->kind == QPLUG_LAYER_FUSED_MOE;
    int64_t in = moe ? c->k : (int64_t)c->groups * c->k;
    int64_t out = moe ? c->k : (int64_t)c->groups * c->n;
    static const int64_t ms[3] = {1, 7, 33};
    for (int mi = 0; mi < 3; mi++) {
        int64_t m = ms[mi];
        float *x = malloc((size_t)(m * in) * sizeof(float));
        float *y = malloc((size_t)(m * out + 1) * sizeof(float));
        double *ref = malloc((size_t)(m * out) * sizeof(double));
        int32_t *ids = malloc((size_t)(m * (c->top_k > 0 ? c->top_k : 1)) * sizeof(int32_t));
        float *tw = malloc((size_t)(m * (c->top_k > 0 ? c->top_k : 1)) * sizeof(float));
        if (!x || !y || !ref || !ids || !tw) {
            fail(r, "out of memory");
            free(x), free(y), free(ref), free(ids), free(tw);
            return;
        }
        for (int64_t i = 0; i < m * in; i++)
            x[i] = (float)rng_normal(g);
        if (moe)
            make_routing(c, m, g, ids, tw);
        ref_forward(c, rw, x, m, ids, tw, ref);
        qplug_tensor tx = mk(QPLUG_DT_F32, m, in, x), ty = mk(QPLUG_DT_F32, m, out, y);
        qplug_tensor ti = mk(QPLUG_DT_I32, m, c->top_k, ids), tk = mk(QPLUG_DT_F32, m, c->top_k, tw);
        /* Whether native differs from reference at all: only a plugin that
         * really quantizes activations must refuse NaN/Inf in x. */
        bool quantizes = false;
        float *yref = malloc((size_t)(m * out) * sizeof(float));
        for (int prec = 1; prec >= 0; prec--) {
            for (int64_t i = 0; i < m * out + 1; i++)
                y[i] = NAN;
            y[m * out] = 1234.5f; /* a canary just past y */
            qplug_apply_args a = {sizeof a, QPLUG_OP_FORWARD, (qplug_precision)prec, &tx, &ty,
                                  moe ? &ti : NULL, moe ? &tk : NULL, NULL, 0, NULL, NULL};
            qplug_status st = call_apply(r, p, host, state, &a);
            EXPECT(r, st == QPLUG_OK, "apply (m = %lld, %s) failed: %s: %s", (long long)m,
                   prec ? "reference" : "native", qplug_status_name(st),
                   ((host_ctx *)host->ctx)->errmsg);
            if (st != QPLUG_OK)
                continue;
            int64_t unwritten = 0;
            for (int64_t i = 0; i < m * out; i++)
                unwritten += !isfinite(y[i]);
            EXPECT(r, unwritten == 0, "apply (m = %lld) left %lld of %lld outputs unwritten",
                   (long long)m, (long long)unwritten, (long long)(m * out));
            EXPECT(r, y[m * out] == 1234.5f, "apply wrote past the end of y");
            /* One token is a noisy sample of the expected error (cases.h). */
            double widen = m == 1 && scheme_quantizes(c) ? 2.0 : 1.0;
            double bound = prec ? c->ref_bound : c->native_bound * widen;
            double e = rel_l2(y, ref, m * out);
            printf("  m = %2lld %-9s rel L2 %.3g (bound %.3g)\n", (long long)m,
                   prec ? "reference" : "native", e, bound);
            EXPECT(r, e <= bound, "m = %lld %s: rel L2 %.3g exceeds the bound %.3g",
                   (long long)m, prec ? "reference" : "native", e, bound);
            if (yref && prec)
                memcpy(yref, y, (size_t)(m * out) * sizeof(float));
            else if (yref)
                quantizes = memcmp(yref, y, (size_t)(m * out) * sizeof(float)) != 0;
        }
        free(yref);
        /* A caller built against ABI 1.1, as a 1.1 core passes it on: the
         * args end at `stream`, in memory of exactly that size, so a plugin
         * that reads past struct_size (a whole-struct copy, x_scale) is
         * caught under ASan. The native result must not change. */
        float *yn = malloc((size_t)(m * out) * sizeof(float));
        size_t size11 = offsetof(qplug_apply_args, stream) + sizeof(void *);
        unsigned char *args11 = malloc(size11);
        if (yn && args11 && !r->failures) {
            memcpy(yn, y, (size_t)(m * out) * sizeof(float));
            for (int64_t i = 0; i < m * out; i++)
                y[i] = NAN;
            qplug_apply_args a = {(uint32_t)size11, QPLUG_OP_FORWARD, QPLUG_PRECISION_NATIVE,
                                  &tx, &ty, moe ? &ti : NULL, moe ? &tk : NULL, NULL, 0, NULL,
                                  NULL};
            memcpy(args11, &a, size11);
            qplug_status st = call_apply(r, p, host, state, (const qplug_apply_args *)args11);
            EXPECT(r, st == QPLUG_OK, "apply with 1.1-sized args (m = %lld) failed: %s",
                   (long long)m, ((host_ctx *)host->ctx)->errmsg);
            EXPECT(r, st != QPLUG_OK || memcmp(y, yn, (size_t)(m * out) * sizeof(float)) == 0,
                   "apply with 1.1-sized args (m = %lld) differs from the full-size call",
                   (long long)m);
        }
        free(yn);
        free(args11);
        if (mi == 1) {
            /* Bad inputs: each must be refused with a message, no crash. */
            qplug_apply_args a = {sizeof a, QPLUG_OP_FORWARD, QPLUG_PRECISION_NATIVE, &tx, &ty,
                                  moe ? &ti : NULL, moe ? &tk : NULL, NULL, 0, NULL, NULL};
            tx.dtype = QPLUG_DT_BF16;
            EXPECT(r, call_apply(r, p, host, state, &a) != QPLUG_OK, "x of dtype BF16 accepted");
            tx.dtype = QPLUG_DT_F32;
            tx.shape[1] = in + 1;
            EXPECT(r, call_apply(r, p, host, state, &a) != QPLUG_OK, "x of width %lld accepted",
                   (long long)(in + 1));
            tx.shape[1] = in;
            ty.shape[0] = m + 1;
            EXPECT(r, call_apply(r, p, host, state, &a) != QPLUG_OK,
                   "y with more rows than x accepted");
            ty.shape[0] = m;
            tx.ndim = 3;
            EXPECT(r, call_apply(r, p, host, state, &a) != QPLUG_OK, "a 3-D x accepted");
            tx.ndim = 2;
            /* Missing tensors and a tensor without data must be refused,
             * never dereferenced. */
            a.x = NULL;
            EXPECT(r, call_apply(r, p, host, state, &a) != QPLUG_OK, "a NULL x accepted");
            a.x = &tx;
            a.y = NULL;
            EXPECT(r, call_apply(r, p, host, state, &a) != QPLUG_OK, "a NULL y accepted");
            a.y = &ty;
            tx.data = NULL;
            EXPECT(r, call_apply(r, p, host, state, &a) != QPLUG_OK,
                   "an x of %lld rows without data accepted", (long long)m);
            tx.data = x;
            /* No tokens at all (m = 0, no data) is a valid call that
             * computes nothing. */
            {
                qplug_tensor x0 = mk(QPLUG_DT_F32, 0, in, NULL), y0 = mk(QPLUG_DT_F32, 0, out, NULL);
                qplug_tensor i0 = mk(QPLUG_DT_I32, 0, c->top_k, NULL);
                qplug_tensor w0 = mk(QPLUG_DT_F32, 0, c->top_k, NULL);
                qplug_apply_args a0 = a;
                a0.x = &x0;
                a0.y = &y0;
                a0.topk_ids = moe ? &i0 : NULL;
                a0.topk_weights = moe ? &w0 : NULL;
                qplug_status st0 = call_apply(r, p, host, state, &a0);
                EXPECT(r, st0 == QPLUG_OK, "apply with m = 0 failed: %s: %s",
                       qplug_status_name(st0), ((host_ctx *)host->ctx)->errmsg);
            }
            if (moe) {
                int32_t keep = ids[0];
                ids[0] = -2;
                EXPECT(r, call_apply(r, p, host, state, &a) != QPLUG_OK,
                       "topk_ids holding expert -2 accepted");
                ids[0] = keep;
            }
            if (moe) {
                int32_t keep = ids[0];
                ids[0] = c->experts;
                EXPECT(r, call_apply(r, p, host, state, &a) != QPLUG_OK,
                       "topk_ids holding expert %d (of %d) accepted", c->experts, c->experts);
                ids[0] = keep;
                ti.dtype = QPLUG_DT_I64;
                EXPECT(r, call_apply(r, p, host, state, &a) != QPLUG_OK,
                       "topk_ids of dtype I64 accepted");
                ti.dtype = QPLUG_DT_I32;
                a.topk_weights = NULL;
                EXPECT(r, call_apply(r, p, host, state, &a) != QPLUG_OK,
                       "missing topk_weights accepted");
                a.topk_weights = &tk;
            }
            float keep = x[3];
            x[3] = NAN;
            qplug_status st = call_apply(r, p, host, state, &a);
            if (quantizes)
                EXPECT(r, st != QPLUG_OK, "a NaN in x was accepted by native quantization");
            x[3] = INFINITY;
            st = call_apply(r, p, host, state, &a);
            if (quantizes)
                EXPECT(r, st != QPLUG_OK, "an Inf in x was accepted by native quantization");
            x[3] = keep;
        }
        free(x), free(y), free(ref), free(ids), free(tw);
    }
}

/* ------------------------------------------------------------------------ */
/* ABI 1.2: pre-quantized activations (qplug_apply_args.x_scale)           */
/* ------------------------------------------------------------------------ */
/*
 * A layer whose act_format slot answers a non-NONE form must take x as E4M3
 * codes with F32 scales [K/128][m] (plugin.h). The driver quantizes x with
 * its own encoder by the rule of the form (formats.md), then checks:
 *   - the result against the fp64 reference on the dequantized codes (code
 *     * scale) with exact weights, at the case's reference bound: the only
 *     error left is the fp32 summation;
 *   - bit for bit against the layer's own native call on the same x, where
 *     its native path quantizes to this form (every plugin of this tree on
 *     CUDA with one group; on the CPU all but NVFP4, whose CPU native
 *     activations are FP4);
 *   - that malformed forms are refused with a message.
 */

/* The plugin's act_format for this state; NONE without the slot. */
static qplug_act_format conf_act_format(const qplug_plugin *p, const qplug_host *host,
                                        void *state)
{
    if (p->struct_size < offsetof(qplug_plugin, act_format) + sizeof p->act_format ||
        !p->act_format)
        return QPLUG_ACT_FORMAT_NONE;
    return p->act_format(host, state);
}

/* The value of a finite E4M3 code (formats.md: bias 7, subnormals). */
static double conf_e4m3_value(unsigned code)
{
    unsigned e = (code >> 3) & 15u, mnt = code & 7u;
    double v = e == 0 ? ldexp(mnt / 8.0, -6) : ldexp(1.0 + mnt / 8.0, (int)e - 7);
    return (code & 0x80u) ? -v : v;
}

/* Nearest finite E4M3 code by search over all of them, ties to the even
 * code, saturating at 448: independent of the plugins' codecs. */
static uint8_t conf_e4m3_encode(float v)
{
    double a = fabs((double)v), best_d = INFINITY;
    unsigned best = 0;
    for (unsigned c = 0; c < 127; c++) {
        double d = fabs(conf_e4m3_value(c) - a);
        if (d < best_d || (d == best_d && (c & 1u) == 0)) {
            best_d = d;
            best = c;
        }
    }
    return (uint8_t)(best | (signbit(v) ? 0x80u : 0u));
}

/* x [m, K] -> codes q [m, K], scales s [K/128][m] and the dequantized
 * values deq [m, K], by the rule of `fmt`. */
static void conf_prequant(const float *x, int64_t m, int64_t K, qplug_act_format fmt, uint8_t *q,
                          float *s, float *deq)
{
    for (int64_t i = 0; i < m; i++)
        for (int64_t kb = 0; kb < K / 128; kb++) {
            const float *xb = x + i * K + kb * 128;
            float amax = 1e-4f;
            for (int j = 0; j < 128; j++)
                amax = fabsf(xb[j]) > amax ? fabsf(xb[j]) : amax;
            float sc = amax / 448.0f;
            if (fmt == QPLUG_ACT_FORMAT_E4M3_1X128_UE8M0) {
                int e;
                float f = frexpf(sc, &e);
                sc = ldexpf(1.0f, f == 0.5f ? e - 1 : e);
            }
            s[kb * m + i] = sc;
            for (int j = 0; j < 128; j++) {
                uint8_t c = conf_e4m3_encode(xb[j] / sc);
                q[i * K + kb * 128 + j] = c;
                deq[i * K + kb * 128 + j] = (float)(conf_e4m3_value(c) * sc);
            }
        }
}

static void run_prequant(conf_run *r, const qplug_plugin *p, const qplug_host *host, void *state,
                         const conf_case *c, const ref_weights *rw, rng *g)
{
    qplug_act_format fmt = conf_act_format(p, host, state);
    if (fmt == QPLUG_ACT_FORMAT_NONE)
        return;
    EXPECT(r, fmt == QPLUG_ACT_FORMAT_E4M3_1X128_F32 || fmt == QPLUG_ACT_FORMAT_E4M3_1X128_UE8M0,
           "act_format answered the unknown form %d", (int)fmt);
    EXPECT(r, c->kind == QPLUG_LAYER_LINEAR || c->kind == QPLUG_LAYER_GROUPED_LINEAR,
           "act_format is not NONE for a layer of kind %d", (int)c->kind);
    int64_t in = (int64_t)c->groups * c->k, out = (int64_t)c->groups * c->n;
    if (r->failures || in % 128 != 0)
        return;
    bool bitwise = c->quant != QPLUG_QUANT_NVFP4;
    printf("  prequant: act_format %d, bit-identical to native: %s\n", (int)fmt,
           bitwise ? "required" : "no (FP4 native activations)");
    static const int64_t ms[3] = {1, 7, 33};
    for (int mi = 0; mi < 3; mi++) {
        int64_t m = ms[mi];
        float *x = malloc((size_t)(m * in) * sizeof(float));
        float *deq = malloc((size_t)(m * in) * sizeof(float));
        uint8_t *q = malloc((size_t)(m * in));
        float *sc = malloc((size_t)(m * in / 128) * sizeof(float));
        float *y = malloc((size_t)(m * out + 1) * sizeof(float));
        float *yn = malloc((size_t)(m * out) * sizeof(float));
        double *ref = malloc((size_t)(m * out) * sizeof(double));
        if (!x || !deq || !q || !sc || !y || !yn || !ref) {
            fail(r, "out of memory");
            free(x), free(deq), free(q), free(sc), free(y), free(yn), free(ref);
            return;
        }
        /* Rows of different magnitudes, so the scales differ per token. */
        for (int64_t i = 0; i < m * in; i++)
            x[i] = (float)(rng_normal(g) * ldexp(1.0, (int)((i / in) % 7) - 3));
        conf_prequant(x, m, in, fmt, q, sc, deq);
        ref_forward(c, rw, deq, m, NULL, NULL, ref);
        qplug_tensor tx = mk(QPLUG_DT_F32, m, in, x), ty = mk(QPLUG_DT_F32, m, out, y);
        qplug_tensor tq = mk(QPLUG_DT_F8_E4M3, m, in, q), ts = mk(QPLUG_DT_F32, in / 128, m, sc);
        qplug_apply_args a = {sizeof a, QPLUG_OP_FORWARD, QPLUG_PRECISION_NATIVE, &tx, &ty,
                              NULL, NULL, NULL, 0, NULL, NULL};
        qplug_status st = call_apply(r, p, host, state, &a);
        EXPECT(r, st == QPLUG_OK, "native apply (m = %lld) failed: %s", (long long)m,
               ((host_ctx *)host->ctx)->errmsg);
        memcpy(yn, y, (size_t)(m * out) * sizeof(float));
        a.x = &tq;
        a.x_scale = &ts;
        for (int prec = 1; prec >= 0 && st == QPLUG_OK; prec--) {
            for (int64_t i = 0; i < m * out; i++)
                y[i] = NAN;
            y[m * out] = 1234.5f;
            a.precision = (qplug_precision)prec;
            qplug_status sp = call_apply(r, p, host, state, &a);
            EXPECT(r, sp == QPLUG_OK, "prequant apply (m = %lld, %s) failed: %s: %s",
                   (long long)m, prec ? "reference" : "native", qplug_status_name(sp),
                   ((host_ctx *)host->ctx)->errmsg);
            if (sp != QPLUG_OK)
                continue;
            EXPECT(r, y[m * out] == 1234.5f, "prequant apply wrote past the end of y");
            double e = rel_l2(y, ref, m * out);
            printf("  prequant m = %2lld %-9s rel L2 %.3g vs dequantized-x reference (bound "
                   "%.3g)\n",
                   (long long)m, prec ? "reference" : "native", e, c->ref_bound);
            EXPECT(r, e <= c->ref_bound, "prequant m = %lld %s: rel L2 %.3g exceeds %.3g",
                   (long long)m, prec ? "reference" : "native", e, c->ref_bound);
            if (!prec && bitwise) {
                int64_t diff = 0;
                for (int64_t i = 0; i < m * out; i++)
                    diff += memcmp(&y[i], &yn[i], sizeof(float)) != 0;
                EXPECT(r, diff == 0,
                       "prequant m = %lld: %lld of %lld outputs differ from the native call on "
                       "the same x",
                       (long long)m, (long long)diff, (long long)(m * out));
            }
        }
        if (mi == 1) {
            a.precision = QPLUG_PRECISION_NATIVE;
            ts.shape[1] = m + 1;
            EXPECT(r, call_apply(r, p, host, state, &a) != QPLUG_OK,
                   "prequant: x_scale [K/128, m+1] accepted");
            ts.shape[1] = m;
            a.x = &tx;
            EXPECT(r, call_apply(r, p, host, state, &a) != QPLUG_OK,
                   "prequant: F32 x with an x_scale accepted");
            a.x = &tq;
            uint8_t keep = q[5];
            q[5] = 0x7f;
            EXPECT(r, call_apply(r, p, host, state, &a) != QPLUG_OK,
                   "prequant: an E4M3 NaN code accepted");
            q[5] = keep;
            float ks = sc[1];
            sc[1] = 0.0f;
            EXPECT(r, call_apply(r, p, host, state, &a) != QPLUG_OK,
                   "prequant: a zero scale accepted");
            sc[1] = ks;
        }
        free(x), free(deq), free(q), free(sc), free(y), free(yn), free(ref);
    }
}

#ifdef QPLUG_CONF_CUDA
/* ------------------------------------------------------------------------ */
/* The CUDA path (--device cuda): linear and grouped linear                 */
/* ------------------------------------------------------------------------ */

static uint16_t f32_to_bf16_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return 0x7fc0;
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

static float bf16_bits_to_f32(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Host staging of one device call: x as BF16 or F32 into hx (nx values),
 * and y (ny values) poisoned with NaN except the last, a canary. */
static void stage_io(bool bf16, const float *x, size_t nx, void *hx, void *hy, size_t ny)
{
    for (size_t i = 0; i < nx; i++) {
        if (bf16)
            ((uint16_t *)hx)[i] = f32_to_bf16_bits(x[i]);
        else
            ((float *)hx)[i] = x[i];
    }
    for (size_t i = 0; i < ny; i++) {
        if (bf16)
            ((uint16_t *)hy)[i] = i + 1 < ny ? 0x7fc0 : 0x1234;
        else
            ((float *)hy)[i] = i + 1 < ny ? NAN : 1234.5f;
    }
}

/* After an apply on `stream`: waits, fails the run on any CUDA error, and
 * brings y (ny values, the canary last) back as floats into y_host, the
 * canary's slot 0 when it is intact and NaN when the call wrote past y.
 * False when the device could not deliver y. */
static bool collect_y(conf_run *r, cudaStream_t stream, bool bf16, const void *dy, void *hy,
                      size_t ny, float *y_host)
{
    size_t es = bf16 ? 2 : 4;
    cudaError_t ce = cudaStreamSynchronize(stream);
    if (ce == cudaSuccess)
        ce = cudaGetLastError();
    EXPECT(r, ce == cudaSuccess, "CUDA error after apply: %s", cudaGetErrorString(ce));
    if (ce != cudaSuccess || cudaMemcpy(hy, dy, ny * es, cudaMemcpyDeviceToHost) != cudaSuccess)
        return false;
    for (size_t i = 0; i + 1 < ny; i++)
        y_host[i] = bf16 ? bf16_bits_to_f32(((uint16_t *)hy)[i]) : ((float *)hy)[i];
    bool canary = bf16 ? ((uint16_t *)hy)[ny - 1] == 0x1234 : ((float *)hy)[ny - 1] == 1234.5f;
    y_host[ny - 1] = canary ? 0.0f : NAN;
    return true;
}

/* One apply on device tensors: x (host floats, sent as F32 or BF16) into
 * y poisoned with NaN plus a canary element past its end; the result comes
 * back as floats in y_host (m * out + 1 values, the canary last, NaN when
 * it was changed). x_dev_on_cpu hands x over as a CPU tensor (a bad input).
 * Returns the status; a CUDA error after the call is a failure. */
static qplug_status cuda_call(conf_run *r, const qplug_plugin *p, const qplug_host *host,
                              void *state, qplug_precision prec, bool bf16, const float *x,
                              int64_t m, int64_t in, int64_t out, qplug_dtype x_dtype,
                              int x_ndim, int64_t x_cols, int64_t y_rows, bool x_dev_on_cpu,
                              float *y_host)
{
    size_t es = bf16 ? 2 : 4, nx = (size_t)(m * in), ny = (size_t)(m * out) + 1;
    void *hx = malloc(nx * es), *hy = malloc(ny * es), *dx = NULL, *dy = NULL;
    cudaStream_t stream = NULL;
    qplug_status st = QPLUG_ERR_DEVICE;
    if (!hx || !hy || cudaMalloc(&dx, nx * es) != cudaSuccess ||
        cudaMalloc(&dy, ny * es) != cudaSuccess ||
        cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess) {
        fail(r, "CUDA: cannot allocate the test tensors");
        goto done;
    }
    stage_io(bf16, x, nx, hx, hy, ny);
    if (cudaMemcpy(dx, hx, nx * es, cudaMemcpyHostToDevice) != cudaSuccess ||
        cudaMemcpy(dy, hy, ny * es, cudaMemcpyHostToDevice) != cudaSuccess) {
        fail(r, "CUDA: cannot copy the test tensors");
        goto done;
    }
    qplug_tensor tx = mk(x_dtype, m, x_cols, dx), ty = mk(bf16 ? QPLUG_DT_BF16 : QPLUG_DT_F32,
                                                        y_rows, out, dy);
    tx.ndim = x_ndim;
    tx.device = x_dev_on_cpu ? QPLUG_DEVICE_CPU : QPLUG_DEVICE_CUDA;
    ty.device = QPLUG_DEVICE_CUDA;
    qplug_apply_args a = {sizeof a, QPLUG_OP_FORWARD, prec, &tx, &ty, NULL, NULL, NULL, 0, stream, NULL};
    st = call_apply(r, p, host, state, &a);
    if (!collect_y(r, stream, bf16, dy, hy, ny, y_host)) {
        st = QPLUG_ERR_DEVICE;
        goto done;
    }
done:
    if (stream)
        cudaStreamDestroy(stream);
    cudaFree(dx);
    cudaFree(dy);
    free(hx);
    free(hy);
    return st;
}

/*
 * The fused-MoE cases of the CUDA path. The MoE kernels need D and I
 * multiples of 128, so these cases have their own fixtures (E = 4,
 * D = I = 128, tests/conformance/gen_gpu_moe_fixtures.py). Bounds (relative
 * L2 against the fp64 reference of BF16-rounded x; the BF16 rounding of y is
 * added by run_moe_cuda), following cases.h:
 *   W8A8 / W4A8 (FP8 x and FP8 h, also for the mxfp4/nvfp4 experts, whose
 *   weights are exact in the reference): two E4M3 stages in quadrature,
 *   0.036 * sqrt(2) = 0.051: bound 0.08, as the CPU cases.
 *   W4A4 (w4a4_megamoe with FP4 activations): FP4 x costs ~0.1 (NVFP4) to
 *   ~0.12 (MXFP4) (cases.h) in both g and u, and h ~ g * u adds the two
 *   relative errors in quadrature (x sqrt(2): ~0.14-0.17); the GPU down GEMM
 *   takes FP8 h (0.036), not the CPU path's FP4 h (~0.15-0.2), so ~0.15-0.18
 *   in all (H200, seed 1: worst 0.18 NVFP4, 0.21 MXFP4 over m = 7..200):
 *   bound 0.25 (the CPU cases need 0.35-0.4 for their FP4 h).
 */
#define MOE_GPU(nm, fx, q, wdt, sdt, fl, nb)                                   \
    {nm, fx, "moe", QPLUG_LAYER_FUSED_MOE, q, wdt, sdt, 128, 128, 1, 4, 2, 1.5f, fl, 2e-5, nb, \
     0, {0}, {0}}
static const conf_case CONF_GPU_CASES[] = {
    MOE_GPU("moe-gpu.fp8_block-f32", "gpu-moe-fp8_block-f32", QPLUG_QUANT_FP8_BLOCK,
            QPLUG_DT_F8_E4M3, QPLUG_DT_F32, 0, 0.08),
    MOE_GPU("moe-gpu.fp8_block-e8m0", "gpu-moe-fp8_block-e8m0", QPLUG_QUANT_FP8_BLOCK,
            QPLUG_DT_F8_E4M3, QPLUG_DT_F8_E8M0, 0, 0.08),
    MOE_GPU("moe-gpu.mxfp4", "gpu-moe-mxfp4", QPLUG_QUANT_MXFP4, QPLUG_DT_I8, QPLUG_DT_F8_E8M0,
            0, 0.08),
    MOE_GPU("moe-gpu.mxfp4-fp4act", "gpu-moe-mxfp4", QPLUG_QUANT_MXFP4, QPLUG_DT_I8,
            QPLUG_DT_F8_E8M0, QPLUG_LAYER_FP4_ACTIVATIONS, 0.25),
    MOE_GPU("moe-gpu.nvfp4", "gpu-moe-nvfp4", QPLUG_QUANT_NVFP4, QPLUG_DT_U8, QPLUG_DT_F8_E4M3,
            0, 0.08),
    MOE_GPU("moe-gpu.nvfp4-fp4act", "gpu-moe-nvfp4", QPLUG_QUANT_NVFP4, QPLUG_DT_U8,
            QPLUG_DT_F8_E4M3, QPLUG_LAYER_FP4_ACTIVATIONS, 0.25),
};
#define CONF_GPU_NCASES (sizeof CONF_GPU_CASES / sizeof CONF_GPU_CASES[0])

/* What one fused-MoE call on the device gets, and its deliberate faults. */
typedef struct moe_call {
    qplug_precision prec;
    bool bf16;              /* x and y BF16 (else F32) */
    const float *x;
    const int32_t *ids;
    const float *tw;
    int64_t m;
    qplug_dtype ids_dtype;  /* I32, or a wrong one */
    bool no_weights;        /* topk_weights missing */
    bool ids_on_cpu;        /* topk_ids handed over as a CPU tensor */
    qplug_op op;
} moe_call;

/* One fused-MoE apply on device tensors (x as F32 or BF16, ids I32 and
 * weights F32 on the device, y poisoned with NaN plus a canary); y_host gets
 * m * D + 1 floats as in cuda_call. */
static qplug_status cuda_call_moe(conf_run *r, const qplug_plugin *p, const qplug_host *host,
                                  void *state, const conf_case *c, const moe_call *mc,
                                  float *y_host)
{
    int64_t m = mc->m, D = c->k, K = c->top_k;
    size_t es = mc->bf16 ? 2 : 4, nx = (size_t)(m * D), ny = nx + 1, nk = (size_t)(m * K);
    void *hx = malloc(nx * es), *hy = malloc(ny * es), *dx = NULL, *dy = NULL, *di = NULL,
         *dw = NULL;
    cudaStream_t stream = NULL;
    qplug_status st = QPLUG_ERR_DEVICE;
    if (!hx || !hy || cudaMalloc(&dx, nx * es) != cudaSuccess ||
        cudaMalloc(&dy, ny * es) != cudaSuccess || cudaMalloc(&di, nk * 4) != cudaSuccess ||
        cudaMalloc(&dw, nk * 4) != cudaSuccess ||
        cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess) {
        fail(r, "CUDA: cannot allocate the test tensors");
        goto done;
    }
    stage_io(mc->bf16, mc->x, nx, hx, hy, ny);
    if (cudaMemcpy(dx, hx, nx * es, cudaMemcpyHostToDevice) != cudaSuccess ||
        cudaMemcpy(dy, hy, ny * es, cudaMemcpyHostToDevice) != cudaSuccess ||
        cudaMemcpy(di, mc->ids, nk * 4, cudaMemcpyHostToDevice) != cudaSuccess ||
        cudaMemcpy(dw, mc->tw, nk * 4, cudaMemcpyHostToDevice) != cudaSuccess) {
        fail(r, "CUDA: cannot copy the test tensors");
        goto done;
    }
    qplug_dtype io = mc->bf16 ? QPLUG_DT_BF16 : QPLUG_DT_F32;
    qplug_tensor tx = mk(io, m, D, dx), ty = mk(io, m, D, dy);
    qplug_tensor ti = mk(mc->ids_dtype, m, K, di), tk = mk(QPLUG_DT_F32, m, K, dw);
    tx.device = ty.device = tk.device = QPLUG_DEVICE_CUDA;
    ti.device = mc->ids_on_cpu ? QPLUG_DEVICE_CPU : QPLUG_DEVICE_CUDA;
    qplug_apply_args a = {sizeof a, mc->op, mc->prec, &tx, &ty, &ti,
                          mc->no_weights ? NULL : &tk, NULL, 0, stream, NULL};
    st = call_apply(r, p, host, state, &a);
    if (!collect_y(r, stream, mc->bf16, dy, hy, ny, y_host)) {
        st = QPLUG_ERR_DEVICE;
        goto done;
    }
done:
    if (stream)
        cudaStreamDestroy(stream);
    cudaFree(dx);
    cudaFree(dy);
    cudaFree(di);
    cudaFree(dw);
    free(hx);
    free(hy);
    return st;
}

/*
 * The fused-MoE checks on the CUDA path. The plugins round an F32 x to
 * BF16 and produce y in BF16 (widened for F32 y), so the reference is the
 * fp64 forward of BF16-rounded x for both I/O dtypes and the bound b grows
 * by y's rounding, 2^-8 (1 + b) (BF16 keeps 8 significant bits, so round to
 * nearest is off by at most 2^-8 of the value). Reference precision is not implemented on
 * CUDA: it must be refused with QPLUG_ERR_UNSUPPORTED and a message. An
 * expert id outside [0, E) cannot be refused without a host sync: it must
 * be skipped like -1 (finite outputs, no device error); a NaN or Inf in x
 * must turn its row non-finite.
 */
static void run_moe_cuda(conf_run *r, const qplug_plugin *p, const qplug_host *host, void *state,
                         const conf_case *c, const ref_weights *rw, rng *g)
{
    int64_t D = c->k, K = c->top_k;
    static const int64_t ms[4] = {1, 7, 33, 200};
    for (int mi = 0; mi < 4; mi++) {
        int64_t m = ms[mi];
        float *x = malloc((size_t)(m * D) * sizeof(float));
        float *xb = malloc((size_t)(m * D) * sizeof(float));
        float *y = malloc((size_t)(m * D + 1) * sizeof(float));
        double *ref = malloc((size_t)(m * D) * sizeof(double));
        int32_t *ids = malloc((size_t)(m * K) * sizeof(int32_t));
        float *tw = malloc((size_t)(m * K) * sizeof(float));
        if (!x || !xb || !y || !ref || !ids || !tw) {
            fail(r, "out of memory");
            free(x), free(xb), free(y), free(ref), free(ids), free(tw);
            return;
        }
        for (int64_t i = 0; i < m * D; i++) {
            x[i] = (float)rng_normal(g);
            xb[i] = bf16_bits_to_f32(f32_to_bf16_bits(x[i]));
        }
        make_routing(c, m, g, ids, tw);
        ref_forward(c, rw, xb, m, ids, tw, ref);
        moe_call mc = {QPLUG_PRECISION_NATIVE, false, x, ids, tw, m, QPLUG_DT_I32, false, false,
                       QPLUG_OP_FORWARD};
        for (int io = 0; io < 2; io++) {
            mc.bf16 = io == 1;
            qplug_status st = cuda_call_moe(r, p, host, state, c, &mc, y);
            EXPECT(r, st == QPLUG_OK, "cuda moe apply (m = %lld, %s) failed: %s: %s",
                   (long long)m, mc.bf16 ? "BF16" : "F32", qplug_status_name(st),
                   ((host_ctx *)host->ctx)->errmsg);
            if (st != QPLUG_OK)
                continue;
            int64_t unwritten = 0;
            for (int64_t i = 0; i < m * D; i++)
                unwritten += !isfinite(y[i]);
            EXPECT(r, unwritten == 0, "cuda moe apply (m = %lld) left %lld of %lld outputs "
                   "unwritten", (long long)m, (long long)unwritten, (long long)(m * D));
            EXPECT(r, y[m * D] == 0.0f, "cuda moe apply wrote past the end of y");
            double bound = c->native_bound * (m == 1 ? 2.0 : 1.0);
            bound += ldexp(1.0 + bound, -8);
            double e = rel_l2(y, ref, m * D);
            printf("  cuda %-4s m = %3lld native    rel L2 %.3g (bound %.3g)\n",
                   mc.bf16 ? "bf16" : "f32", (long long)m, e, bound);
            EXPECT(r, e <= bound, "cuda moe %s m = %lld: rel L2 %.3g exceeds the bound %.3g",
                   mc.bf16 ? "bf16" : "f32", (long long)m, e, bound);
        }
        if (mi == 1) {
            moe_call b = mc;
            b.bf16 = true;
            b.prec = QPLUG_PRECISION_REFERENCE;
            EXPECT(r, cuda_call_moe(r, p, host, state, c, &b, y) == QPLUG_ERR_UNSUPPORTED,
                   "cuda moe: reference precision not refused as unsupported");
            b.prec = QPLUG_PRECISION_NATIVE;
            b.ids_dtype = QPLUG_DT_I64;
            EXPECT(r, cuda_call_moe(r, p, host, state, c, &b, y) != QPLUG_OK,
                   "cuda moe: topk_ids of dtype I64 accepted");
            b.ids_dtype = QPLUG_DT_I32;
            b.no_weights = true;
            EXPECT(r, cuda_call_moe(r, p, host, state, c, &b, y) != QPLUG_OK,
                   "cuda moe: missing topk_weights accepted");
            b.no_weights = false;
            b.ids_on_cpu = true;
            EXPECT(r, cuda_call_moe(r, p, host, state, c, &b, y) != QPLUG_OK,
                   "cuda moe: topk_ids on the CPU accepted");
            b.ids_on_cpu = false;
            b.op = QPLUG_OP_KV_READ;
            EXPECT(r, cuda_call_moe(r, p, host, state, c, &b, y) != QPLUG_OK,
                   "cuda moe: op KV_READ accepted");
            b.op = QPLUG_OP_FORWARD;
            /* Out-of-range ids are skipped on the device. */
            int32_t keep_id = ids[0];
            ids[0] = c->experts;
            qplug_status st = cuda_call_moe(r, p, host, state, c, &b, y);
            ids[0] = keep_id;
            if (st == QPLUG_OK) {
                int64_t bad = 0;
                for (int64_t i = 0; i < m * D; i++)
                    bad += !isfinite(y[i]);
                EXPECT(r, bad == 0, "cuda moe: expert id %d (of %d) gave %lld non-finite "
                       "outputs", c->experts, c->experts, (long long)bad);
            }
            for (int nan = 0; nan < 2; nan++) {
                float keep = x[3];
                x[3] = nan ? NAN : INFINITY;
                st = cuda_call_moe(r, p, host, state, c, &b, y);
                x[3] = keep;
                if (st != QPLUG_OK)
                    continue;
                int64_t bad = 0;
                for (int64_t j = 0; j < D; j++)
                    bad += !isfinite(y[j]);
                EXPECT(r, bad > 0, "cuda moe: a%s in x gave finite outputs without an error",
                       nan ? " NaN" : "n Inf");
            }
        }
        free(x), free(xb), free(y), free(ref), free(ids), free(tw);
    }
}

/*
 * The forward checks of run_forward on the CUDA path, for F32 and BF16
 * device tensors. For BF16 the reference is computed from x rounded to
 * BF16 (what the plugin receives), and the bound b grows by the BF16
 * rounding of y: BF16 keeps 8 significant bits, so each output element is
 * off by at most 2^-8 of itself (the RMS over random data is ~1.6e-3), and
 * ||y_bf16 - ref|| <= b ||ref|| + 2^-8 (1 + b) ||ref||.
 * A NaN or Inf in x cannot come back as QPLUG_ERR_NUMERIC without the
 * plugin waiting for the device, so here it must either be refused or turn
 * the outputs of its row into non-finite values (never silently finite).
 */
static void run_forward_cuda(conf_run *r, const qplug_plugin *p, const qplug_host *host,
                             void *state, const conf_case *c, const ref_weights *rw, rng *g)
{
    if (c->kind == QPLUG_LAYER_FUSED_MOE) {
        run_moe_cuda(r, p, host, state, c, rw, g);
        return;
    }
    if (c->kind != QPLUG_LAYER_LINEAR && c->kind != QPLUG_LAYER_GROUPED_LINEAR) {
        fail(r, "--device cuda covers linear, grouped linear and fused MoE layers only");
        return;
    }
    int64_t in = (int64_t)c->groups * c->k, out = (int64_t)c->groups * c->n;
    static const int64_t ms[4] = {1, 7, 16, 33};
    for (int mi = 0; mi < 4; mi++) {
        int64_t m = ms[mi];
        float *x = malloc((size_t)(m * in) * sizeof(float));
        float *xb = malloc((size_t)(m * in) * sizeof(float));
        float *y = malloc((size_t)(m * out + 1) * sizeof(float));
        double *ref = malloc((size_t)(m * out) * sizeof(double));
        double *refb = malloc((size_t)(m * out) * sizeof(double));
        if (!x || !xb || !y || !ref || !refb) {
            fail(r, "out of memory");
            free(x), free(xb), free(y), free(ref), free(refb);
            return;
        }
        for (int64_t i = 0; i < m * in; i++) {
            x[i] = (float)rng_normal(g);
            xb[i] = bf16_bits_to_f32(f32_to_bf16_bits(x[i]));
        }
        ref_forward(c, rw, x, m, NULL, NULL, ref);
        ref_forward(c, rw, xb, m, NULL, NULL, refb);
        for (int io = 0; io < 2; io++) {
            bool bf16 = io == 1;
            for (int prec = 1; prec >= 0; prec--) {
                qplug_status st = cuda_call(r, p, host, state, (qplug_precision)prec, bf16, x, m,
                                            in, out, bf16 ? QPLUG_DT_BF16 : QPLUG_DT_F32, 2, in,
                                            m, false, y);
                EXPECT(r, st == QPLUG_OK, "cuda apply (m = %lld, %s, %s) failed: %s: %s",
                       (long long)m, bf16 ? "BF16" : "F32", prec ? "reference" : "native",
                       qplug_status_name(st), ((host_ctx *)host->ctx)->errmsg);
                if (st != QPLUG_OK)
                    continue;
                int64_t unwritten = 0;
                for (int64_t i = 0; i < m * out; i++)
                    unwritten += !isfinite(y[i]);
                EXPECT(r, unwritten == 0,
                       "cuda apply (m = %lld) left %lld of %lld outputs unwritten",
                       (long long)m, (long long)unwritten, (long long)(m * out));
                EXPECT(r, y[m * out] == 0.0f, "cuda apply wrote past the end of y");
                double widen = m == 1 && scheme_quantizes(c) ? 2.0 : 1.0;
                double bound = prec ? c->ref_bound : c->native_bound * widen;
                if (bf16)
                    bound += ldexp(1.0 + bound, -8);
                double e = rel_l2(y, bf16 ? refb : ref, m * out);
                printf("  cuda %-4s m = %2lld %-9s rel L2 %.3g (bound %.3g)\n",
                       bf16 ? "bf16" : "f32", (long long)m, prec ? "reference" : "native", e,
                       bound);
                EXPECT(r, e <= bound, "cuda %s m = %lld %s: rel L2 %.3g exceeds the bound %.3g",
                       bf16 ? "bf16" : "f32", (long long)m, prec ? "reference" : "native", e,
                       bound);
            }
        }
        if (mi == 1) {
            /* Bad inputs: refused with a message, no crash, no device error. */
            EXPECT(r,
                   cuda_call(r, p, host, state, QPLUG_PRECISION_NATIVE, false, x, m, in, out,
                             QPLUG_DT_F64, 2, in, m, false, y) != QPLUG_OK,
                   "cuda: x of dtype F64 accepted");
            EXPECT(r,
                   cuda_call(r, p, host, state, QPLUG_PRECISION_NATIVE, false, x, m, in, out,
                             QPLUG_DT_F32, 2, in - 1, m, false, y) != QPLUG_OK,
                   "cuda: x of width %lld accepted", (long long)(in - 1));
            EXPECT(r,
                   cuda_call(r, p, host, state, QPLUG_PRECISION_NATIVE, false, x, m, in, out,
                             QPLUG_DT_F32, 2, in, m - 1, false, y) != QPLUG_OK,
                   "cuda: y with fewer rows than x accepted");
            EXPECT(r,
                   cuda_call(r, p, host, state, QPLUG_PRECISION_NATIVE, false, x, m, in, out,
                             QPLUG_DT_F32, 3, in, m, false, y) != QPLUG_OK,
                   "cuda: a 3-D x accepted");
            EXPECT(r,
                   cuda_call(r, p, host, state, QPLUG_PRECISION_NATIVE, false, x, m, in, out,
                             QPLUG_DT_F32, 2, in, m, true, y) != QPLUG_OK,
                   "cuda: x on the CPU with y on CUDA accepted");
            for (int io = 0; io < 2; io++) {
                float keep = x[3];
                x[3] = io ? INFINITY : NAN;
                qplug_status st = cuda_call(r, p, host, state, QPLUG_PRECISION_NATIVE, io == 1,
                                            x, m, in, out, io ? QPLUG_DT_BF16 : QPLUG_DT_F32, 2,
                                            in, m, false, y);
                x[3] = keep;
                if (st != QPLUG_OK)
                    continue;
                int64_t bad = 0;
                int64_t row_out = c->kind == QPLUG_LAYER_GROUPED_LINEAR ? c->n : out;
                for (int64_t j = 0; j < row_out; j++)
                    bad += !isfinite(y[j]);
                EXPECT(r, bad > 0, "cuda: a%s in x gave finite outputs without an error",
                       io ? "n Inf" : " NaN");
            }
        }
        free(x), free(xb), free(y), free(ref), free(refb);
    }
}

/* One apply with a pre-quantized x on device tensors: codes q [m, in],
 * scales sc [in/128][m], y BF16 poisoned with a canary past its end; y
 * comes back as floats in y_host as in cuda_call. */
static qplug_status cuda_call_prequant(conf_run *r, const qplug_plugin *p, const qplug_host *host,
                                       void *state, qplug_precision prec, const uint8_t *q,
                                       const float *sc, int64_t m, int64_t in, int64_t out,
                                       int64_t sc_cols, float *y_host)
{
    size_t nq = (size_t)(m * in), ns = (size_t)(m * in / 128), ny = (size_t)(m * out) + 1;
    void *hy = malloc(ny * 2), *dq = NULL, *ds = NULL, *dy = NULL;
    cudaStream_t stream = NULL;
    qplug_status st = QPLUG_ERR_DEVICE;
    if (!hy || cudaMalloc(&dq, nq) != cudaSuccess || cudaMalloc(&ds, ns * 4) != cudaSuccess ||
        cudaMalloc(&dy, ny * 2) != cudaSuccess ||
        cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess) {
        fail(r, "CUDA: cannot allocate the test tensors");
        goto done;
    }
    stage_io(true, NULL, 0, NULL, hy, ny);
    if (cudaMemcpy(dq, q, nq, cudaMemcpyHostToDevice) != cudaSuccess ||
        cudaMemcpy(ds, sc, ns * 4, cudaMemcpyHostToDevice) != cudaSuccess ||
        cudaMemcpy(dy, hy, ny * 2, cudaMemcpyHostToDevice) != cudaSuccess) {
        fail(r, "CUDA: cannot copy the test tensors");
        goto done;
    }
    qplug_tensor tq = mk(QPLUG_DT_F8_E4M3, m, in, dq), ts = mk(QPLUG_DT_F32, in / 128, sc_cols, ds);
    qplug_tensor ty = mk(QPLUG_DT_BF16, m, out, dy);
    tq.device = ts.device = ty.device = QPLUG_DEVICE_CUDA;
    qplug_apply_args a = {sizeof a, QPLUG_OP_FORWARD, prec, &tq, &ty, NULL, NULL, NULL, 0,
                          stream, &ts};
    st = call_apply(r, p, host, state, &a);
    if (!collect_y(r, stream, true, dy, hy, ny, y_host))
        st = QPLUG_ERR_DEVICE;
done:
    if (stream)
        cudaStreamDestroy(stream);
    cudaFree(dq);
    cudaFree(ds);
    cudaFree(dy);
    free(hy);
    return st;
}

/* The CUDA side of run_prequant: x rounded to BF16 first, so that the
 * layer's own BF16 call sees the values the driver quantized. With one
 * group the pre-quantized call must match the BF16 call bit for bit (same
 * GEMV or kernel on the same codes); grouped layers at decode sizes may
 * sum in another order (plugins/common/qp_cuda_linear.cuh), so there the
 * two must agree to BF16 output rounding. */
static void run_prequant_cuda(conf_run *r, const qplug_plugin *p, const qplug_host *host,
                              void *state, const conf_case *c, const ref_weights *rw, rng *g)
{
    qplug_act_format fmt = conf_act_format(p, host, state);
    if (fmt == QPLUG_ACT_FORMAT_NONE || c->kind == QPLUG_LAYER_FUSED_MOE)
        return;
    int64_t in = (int64_t)c->groups * c->k, out = (int64_t)c->groups * c->n;
    if (r->failures || in % 128 != 0)
        return;
    bool bitwise = c->groups == 1;
    printf("  cuda prequant: act_format %d, bit-identical to the BF16 call: %s\n", (int)fmt,
           bitwise ? "required" : "no (grouped)");
    static const int64_t ms[4] = {1, 7, 16, 33};
    for (int mi = 0; mi < 4; mi++) {
        int64_t m = ms[mi];
        float *xb = malloc((size_t)(m * in) * sizeof(float));
        float *deq = malloc((size_t)(m * in) * sizeof(float));
        uint8_t *q = malloc((size_t)(m * in));
        float *sc = malloc((size_t)(m * in / 128) * sizeof(float));
        float *y = malloc((size_t)(m * out + 1) * sizeof(float));
        float *yn = malloc((size_t)(m * out + 1) * sizeof(float));
        double *ref = malloc((size_t)(m * out) * sizeof(double));
        if (!xb || !deq || !q || !sc || !y || !yn || !ref) {
            fail(r, "out of memory");
            free(xb), free(deq), free(q), free(sc), free(y), free(yn), free(ref);
            return;
        }
        for (int64_t i = 0; i < m * in; i++)
            xb[i] = bf16_bits_to_f32(f32_to_bf16_bits(
                (float)(rng_normal(g) * ldexp(1.0, (int)((i / in) % 7) - 3))));
        conf_prequant(xb, m, in, fmt, q, sc, deq);
        ref_forward(c, rw, deq, m, NULL, NULL, ref);
        qplug_status st = cuda_call(r, p, host, state, QPLUG_PRECISION_NATIVE, true, xb, m, in,
                                    out, QPLUG_DT_BF16, 2, in, m, false, yn);
        EXPECT(r, st == QPLUG_OK, "cuda BF16 apply (m = %lld) failed: %s", (long long)m,
               ((host_ctx *)host->ctx)->errmsg);
        for (int prec = 1; prec >= 0 && st == QPLUG_OK; prec--) {
            qplug_status sp = cuda_call_prequant(r, p, host, state, (qplug_precision)prec, q, sc,
                                                 m, in, out, m, y);
            EXPECT(r, sp == QPLUG_OK, "cuda prequant apply (m = %lld, %s) failed: %s: %s",
                   (long long)m, prec ? "reference" : "native", qplug_status_name(sp),
                   ((host_ctx *)host->ctx)->errmsg);
            if (sp != QPLUG_OK)
                continue;
            int64_t unwritten = 0;
            for (int64_t i = 0; i < m * out; i++)
                unwritten += !isfinite(y[i]);
            EXPECT(r, unwritten == 0 && y[m * out] == 0.0f,
                   "cuda prequant (m = %lld): %lld outputs unwritten or the canary changed",
                   (long long)m, (long long)unwritten);
            /* Exact weights on every path these shapes take (GEMV, simple
             * kernel): the error left is the BF16 rounding of y. */
            double bound = c->ref_bound + ldexp(1.0, -8);
            double e = rel_l2(y, ref, m * out);
            printf("  cuda prequant m = %2lld %-9s rel L2 %.3g vs dequantized-x reference "
                   "(bound %.3g)\n",
                   (long long)m, prec ? "reference" : "native", e, bound);
            EXPECT(r, e <= bound, "cuda prequant m = %lld %s: rel L2 %.3g exceeds %.3g",
                   (long long)m, prec ? "reference" : "native", e, bound);
            if (prec)
                continue;
            int64_t diff = 0;
            double num = 0.0, den = 0.0;
            for (int64_t i = 0; i < m * out; i++) {
                diff += memcmp(&y[i], &yn[i], sizeof(float)) != 0;
                num += ((double)y[i] - yn[i]) * ((double)y[i] - yn[i]);
                den += (double)yn[i] * yn[i];
            }
            double eb = den > 0.0 ? sqrt(num / den) : sqrt(num);
            printf("  cuda prequant m = %2lld vs BF16 call: %lld of %lld differ, rel L2 %.3g\n",
                   (long long)m, (long long)diff, (long long)(m * out), eb);
            if (bitwise)
                EXPECT(r, diff == 0, "cuda prequant m = %lld: %lld outputs differ from the BF16 "
                       "call on the same x", (long long)m, (long long)diff);
            else
                EXPECT(r, eb <= ldexp(1.0, -7), "cuda prequant m = %lld: rel L2 %.3g to the "
                       "BF16 call exceeds 2^-7", (long long)m, eb);
        }
        if (mi == 1)
            EXPECT(r,
                   cuda_call_prequant(r, p, host, state, QPLUG_PRECISION_NATIVE, q, sc, m, in,
                                      out, m + 1, y) != QPLUG_OK,
                   "cuda prequant: x_scale [K/128, m+1] accepted");
        free(xb), free(deq), free(q), free(sc), free(y), free(yn), free(ref);
    }
}
#endif

/* Runs one case; returns false when the plugin does not claim it. */
static bool run_case(conf_run *r, const qplug_plugin *p, const conf_case *c, const char *data_dir,
                     uint64_t seed, int threads)
{
    qplug_layer_desc desc = desc_of(c);
    if (r->cuda)
        desc.device = QPLUG_DEVICE_CUDA;
    int sc = p->score(&desc);
    if (sc <= 0)
        return false;
    printf("case %s: score %d\n", c->name, sc);
    int before = r->failures;
    host_ctx *h = calloc(1, sizeof *h);
    fixture fx;
    ref_weights rw;
    memset(&fx, 0, sizeof fx);
    memset(&rw, 0, sizeof rw);
    if (!h) {
        fail(r, "out of memory");
        return true;
    }
    h->run = r;
    h->threads = threads;
    h->fp4_option = (c->flags & QPLUG_LAYER_FP4_ACTIVATIONS) ? "true" : "false";
    qplug_host host = {&HOST_API, h};
    char err[1536] = "";

    /* create_weights: the declarations must describe the format. */
    h->phase = PHASE_DECLARE;
    qplug_status st = p->create_weights(&host, &desc);
    h->phase = PHASE_NONE;
    EXPECT(r, st == QPLUG_OK, "create_weights failed: %s: %s", qplug_status_name(st), h->errmsg);
    EXPECT(r, !h->decl_error, "create_weights made a bad declaration: %s", h->errmsg);
    EXPECT(r, h->live == 0, "create_weights left %ld allocations behind", (long)h->live);
    if (st != QPLUG_OK)
        goto out;
    if (c->fixture) {
        char path[768];
        snprintf(path, sizeof path, "%s/%s.safetensors", data_dir, c->fixture);
        if (!fixture_load(path, &fx, err, sizeof err) || !ref_load(c, &fx, &rw, err, sizeof err)) {
            fail(r, "fixture: %s", err);
            goto out;
        }
        bind_decls(r, h, c, &fx);
    } else {
        EXPECT(r, h->ndecl == 0, "a layer without weights declared %d tensors", h->ndecl);
    }
    if (r->failures != before)
        goto out;

    /* process_after_loading. */
    void *state = NULL;
    h->phase = PHASE_LOAD;
    st = p->process_after_loading(&host, &desc, &state);
    h->phase = PHASE_APPLY;
    EXPECT(r, st == QPLUG_OK, "process_after_loading failed: %s: %s", qplug_status_name(st),
           h->errmsg);
    if (st != QPLUG_OK) {
        EXPECT(r, state == NULL, "a failed process_after_loading left a state behind");
        EXPECT(r, h->live == 0, "a failed process_after_loading leaked %ld allocations",
               (long)h->live);
        goto out;
    }

    /* Each case draws its own stream from the run's seed (FNV-1a of the
     * case name mixed in), so --case reproduces a full run's inputs. */
    uint64_t hsh = 1469598103934665603ull;
    for (const char *q = c->name; *q; q++)
        hsh = (hsh ^ (uint8_t)*q) * 1099511628211ull;
    rng g = {seed ^ hsh};
    if (!g.s)
        g.s = 1;
#ifdef QPLUG_CONF_CUDA
    if (r->cuda)
        run_forward_cuda(r, p, &host, state, c, &rw, &g);
    else
#endif
    if (c->kind == QPLUG_LAYER_ATTENTION)
        run_kv(r, p, &host, state, c, &desc, &g);
    else
        run_forward(r, p, &host, state, c, &rw, &g);
    /* ABI 1.2: the pre-quantized x of layers that advertise a form. */
#ifdef QPLUG_CONF_CUDA
    if (r->cuda)
        run_prequant_cuda(r, p, &host, state, c, &rw, &g);
#endif
    if (!r->cuda && c->kind != QPLUG_LAYER_ATTENTION)
        run_prequant(r, p, &host, state, c, &rw, &g);

    p->destroy(&host, state);
    EXPECT(r, h->live == 0, "destroy left %ld host allocations unfreed", (long)h->live);

    /* A missing required tensor must fail cleanly, leaving nothing behind. */
    if (h->ndecl > 0) {
        int victim = -1;
        for (int i = 0; i < h->ndecl && victim < 0; i++)
            if (!(h->decls[i].flags & QPLUG_DECL_OPTIONAL))
                victim = i;
        if (victim >= 0) {
            h->decls[victim].present = false;
            state = NULL;
            h->phase = PHASE_LOAD;
            h->errors = 0;
            st = p->process_after_loading(&host, &desc, &state);
            h->phase = PHASE_NONE;
            EXPECT(r, st != QPLUG_OK, "process_after_loading succeeded without slot '%s'",
                   h->decls[victim].slot);
            EXPECT(r, h->errors > 0, "missing slot '%s' gave no error message",
                   h->decls[victim].slot);
            if (st == QPLUG_OK)
                p->destroy(&host, state);
            else
                EXPECT(r, state == NULL && h->live == 0,
                       "a failed process_after_loading leaked (state %p, %ld allocations)",
                       state, (long)h->live);
        }
    }
out:
    ref_free(&rw);
    fixture_free(&fx);
    free(h);
    printf("case %s: %s\n", c->name, r->failures == before ? "ok" : "FAILED");
    return true;
}

/* ------------------------------------------------------------------------ */
/* Main                                                                     */
/* ------------------------------------------------------------------------ */

static void usage(void)
{
    fprintf(stderr, "usage: qplug_conformance --plugin PATH.so [--case NAME] [--list] "
                    "[--seed N] [--require] [--data DIR] [--threads N] [-v] "
                    "[--device cuda]\n");
}

int main(int argc, char **argv)
{
    const char *plugin_path = NULL, *case_name = NULL, *data_dir = QPLUG_CONF_DATA_DIR;
    bool list = false, require = false;
    uint64_t seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    int threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    conf_run run = {0, 0, false, false, NULL};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--plugin") == 0 && v)
            plugin_path = argv[++i];
        else if (strcmp(a, "--case") == 0 && v)
            case_name = argv[++i];
        else if (strcmp(a, "--data") == 0 && v)
            data_dir = argv[++i];
        else if (strcmp(a, "--seed") == 0 && v)
            seed = strtoull(argv[++i], NULL, 0);
        else if (strcmp(a, "--threads") == 0 && v)
            threads = atoi(argv[++i]);
        else if (strcmp(a, "--list") == 0)
            list = true;
        else if (strcmp(a, "--require") == 0)
            require = true;
        else if (strcmp(a, "-v") == 0)
            run.verbose = true;
        else if (strcmp(a, "--device") == 0 && v && strcmp(v, "cuda") == 0) {
            run.cuda = true;
            i++;
        }
        else {
            usage();
            return 2;
        }
    }
    if (threads < 1)
        threads = 1;
    if (threads > 64)
        threads = 64;
    if (list && !plugin_path) {
        for (size_t i = 0; i < CONF_NCASES; i++)
            printf("%s\n", CONF_CASES[i].name);
        return 0;
    }
    if (!plugin_path) {
        usage();
        return 2;
    }
    const conf_case *only = NULL;
    if (case_name) {
        for (size_t i = 0; i < CONF_NCASES; i++)
            if (strcmp(CONF_CASES[i].name, case_name) == 0)
                only = &CONF_CASES[i];
#ifdef QPLUG_CONF_CUDA
        for (size_t i = 0; i < CONF_GPU_NCASES && run.cuda; i++)
            if (strcmp(CONF_GPU_CASES[i].name, case_name) == 0)
                only = &CONF_GPU_CASES[i];
#endif
        if (!only) {
            fprintf(stderr, "qplug_conformance: unknown case '%s' (see --list)\n", case_name);
            return 2;
        }
    }
    if (run.cuda) {
#ifdef QPLUG_CONF_CUDA
        int ndev = 0;
        if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev < 1) {
            printf("qplug_conformance: no CUDA device: skipped\n");
            return 77;
        }
        cublasLtHandle_t lt = NULL;
        if (cublasLtCreate(&lt) != CUBLAS_STATUS_SUCCESS) {
            fprintf(stderr, "qplug_conformance: cublasLtCreate failed\n");
            return 1;
        }
        run.lt = lt;
#else
        fprintf(stderr, "qplug_conformance: built without CUDA: --device cuda is not available\n");
        return 2;
#endif
    }
    void *lib = dlopen(plugin_path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "qplug_conformance: %s: cannot load: %s\n", plugin_path, dlerror());
        return 1;
    }
    qplug_plugin_entry_fn entry;
    *(void **)&entry = dlsym(lib, QPLUG_PLUGIN_ENTRY_SYMBOL);
    const qplug_plugin *p = entry ? entry() : NULL;
    if (!p) {
        fprintf(stderr, "qplug_conformance: %s: no %s symbol or it returned NULL\n", plugin_path,
                QPLUG_PLUGIN_ENTRY_SYMBOL);
        dlclose(lib);
        return 1;
    }
    printf("plugin %s (%s), seed %" PRIu64 " (rerun with --seed %" PRIu64 ")\n",
           p->name ? p->name : "?", plugin_path, seed, seed);
    check_abi(&run, p);
    if (list) {
        for (size_t i = 0; i < CONF_NCASES; i++) {
            qplug_layer_desc d = desc_of(&CONF_CASES[i]);
            int s = p->score ? p->score(&d) : 0;
            printf("%-26s score %d\n", CONF_CASES[i].name, s);
        }
    } else if (run.failures == 0) {
        int claimed = 0;
        for (size_t i = 0; i < CONF_NCASES; i++) {
            const conf_case *c = &CONF_CASES[i];
            if (only && c != only)
                continue;
            if (run_case(&run, p, c, data_dir, seed, threads))
                claimed++;
            else if (only)
                printf("case %s: not claimed by %s (score 0)\n", c->name, p->name);
        }
#ifdef QPLUG_CONF_CUDA
        for (size_t i = 0; i < CONF_GPU_NCASES && run.cuda; i++) {
            const conf_case *c = &CONF_GPU_CASES[i];
            if (only && c != only)
                continue;
            if (run_case(&run, p, c, data_dir, seed, threads))
                claimed++;
            else if (only)
                printf("case %s: not claimed by %s (score 0)\n", c->name, p->name);
        }
#endif
        if (require && only && claimed == 0)
            fail(&run, "--require: %s does not claim case %s", p->name, only->name);
        if (claimed == 0 && !only)
            fail(&run, "%s claims none of the %zu cases", p->name, (size_t)CONF_NCASES);
    }
    printf("%d checks, %d failed\n", run.checks, run.failures);
    /* No dlclose: a plugin may keep thread-local or atexit state, and the
     * process ends here anyway. */
    return run.failures ? 1 : 0;
}
