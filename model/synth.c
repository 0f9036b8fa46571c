/*
 * synth.c - `qplug synth`: small, complete, internally consistent DeepSeek V4
 * checkpoints with random weights (see qplug/synth.h).
 *
 * The generator walks the model in official order (deepseek_v4.md section
 * 2) and emits every tensor once; each tensor carries both its official and
 * its transformers name, and the format decides which one is written and how
 * the weights are stored. One shard per group (embedding; head and the other
 * global tensors; one per layer; MTP) keeps memory bounded by the largest
 * group even for the flash-shapes preset.
 */
#include "qplug/synth.h"

#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qplug/codec.h"
#include "qplug/safetensors.h"

/* ---- presets ----------------------------------------------------------- */

#define SYNTH_MAX_BLOCKS 8
#define SYNTH_MAX_EXPERTS 256

typedef struct synth_dims {
    int64_t vocab, hidden, n_layers, n_mtp;
    int64_t heads, head_dim, rope_dim, q_lora, o_groups, o_lora;
    int64_t experts, top_k, inter, n_hash;
    int64_t idx_heads, idx_dim, idx_topk, window;
    double routed_scaling;
    /* One per main layer, then one per MTP layer. */
    int32_t ratios[SYNTH_MAX_BLOCKS];
} synth_dims;

static void synth_dims_for(qplug_synth_preset p, synth_dims *d)
{
    memset(d, 0, sizeof *d);
    d->routed_scaling = 1.5;
    d->n_mtp = 1;
    d->rope_dim = 64;
    d->n_hash = 1;
    if (p == QPLUG_SYNTH_FLASH_SHAPES) {
        d->vocab = 129280;
        d->hidden = 4096;
        d->n_layers = 2;
        d->heads = 64;
        d->head_dim = 512;
        d->q_lora = 1024;
        d->o_groups = 8;
        d->o_lora = 1024;
        d->experts = 8;
        d->top_k = 6;
        d->inter = 2048;
        d->idx_heads = 64;
        d->idx_dim = 128;
        d->idx_topk = 512;
        d->window = 128;
        d->ratios[0] = 4;
        d->ratios[1] = 128;
        d->ratios[2] = 0;
        return;
    }
    /* Tiny: every dimension an FP8 block tiles is a multiple of 128. */
    d->vocab = 1024;
    d->hidden = 256;
    d->n_layers = 4;
    d->heads = 4;
    d->head_dim = 128;
    d->q_lora = 128;
    d->o_groups = 2;
    d->o_lora = 128;
    d->experts = 8;
    d->top_k = 2;
    d->inter = 128;
    d->idx_heads = 4;
    d->idx_dim = 64;
    d->idx_topk = 4;
    d->window = 32;
    d->ratios[0] = 0;
    d->ratios[1] = 4;
    d->ratios[2] = 128;
    d->ratios[3] = 4;
    d->ratios[4] = 0;
}

/* ---- names ------------------------------------------------------------- */

qplug_status qplug_synth_preset_parse(const char *s, qplug_synth_preset *out, qplug_err *err)
{
    if (s && !strcmp(s, "tiny"))
        *out = QPLUG_SYNTH_TINY;
    else if (s && !strcmp(s, "flash-shapes"))
        *out = QPLUG_SYNTH_FLASH_SHAPES;
    else
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT,
                             "synth: unknown preset '%s' (allowed: tiny, flash-shapes)",
                             s ? s : "(null)");
    return QPLUG_OK;
}

qplug_status qplug_synth_format_parse(const char *s, qplug_synth_format *out, qplug_err *err)
{
    static const char *const names[] = {"bf16", "flash", "flash-base", "nvfp4"};
    for (int i = 0; s && i < 4; i++) {
        if (!strcmp(s, names[i])) {
            *out = (qplug_synth_format)i;
            return QPLUG_OK;
        }
    }
    return qplug_err_set(err, QPLUG_ERR_ARGUMENT,
                         "synth: unknown format '%s' (allowed: bf16, flash, flash-base, nvfp4)",
                         s ? s : "(null)");
}

const char *qplug_synth_preset_name(qplug_synth_preset p)
{
    return p == QPLUG_SYNTH_TINY ? "tiny" : p == QPLUG_SYNTH_FLASH_SHAPES ? "flash-shapes" : "?";
}

const char *qplug_synth_format_name(qplug_synth_format f)
{
    switch (f) {
    case QPLUG_SYNTH_BF16: return "bf16";
    case QPLUG_SYNTH_FLASH: return "flash";
    case QPLUG_SYNTH_FLASH_BASE: return "flash-base";
    case QPLUG_SYNTH_NVFP4: return "nvfp4";
    }
    return "?";
}

/* ---- random numbers ---------------------------------------------------- */

/* splitmix64: tiny, fast and good enough for synthetic weights. */
typedef struct synth_rng {
    uint64_t s;
} synth_rng;

static uint64_t synth_next(synth_rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
static double synth_uniform(synth_rng *r)
{
    return (double)(synth_next(r) >> 11) * 0x1.0p-53;
}

/*
 * Approximately standard normal: four 16-bit uniforms from one draw, summed
 * and standardized (Irwin-Hall, variance 4/12). Bounded at +-2*sqrt(3) and
 * close to a normal elsewhere, which is all synthetic weights need; an exact
 * sampler (log, sqrt, rejection) took most of the time of the flash-shapes
 * preset.
 */
static double synth_normal(synth_rng *r)
{
    uint64_t z = synth_next(r);
    double sum = 0.0;
    for (int i = 0; i < 4; i++)
        sum += ((double)((z >> (16 * i)) & 0xffffu) + 0.5) * (1.0 / 65536.0);
    return (sum - 2.0) * 1.7320508075688772;
}

/* Each tensor's stream depends only on the seed and its official name, so
 * every format of one seed holds the same underlying weights. */
static synth_rng synth_rng_for(uint64_t seed, const char *official)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (const char *p = official; *p; p++)
        h = (h ^ (uint8_t)*p) * 0x100000001b3ull;
    synth_rng r = {seed ^ h};
    (void)synth_next(&r);
    return r;
}

/* ---- the generator context --------------------------------------------- */

typedef struct synth_ctx {
    qplug_synth_options opt;
    synth_dims d;
    bool hf;                       /* transformers naming (nvfp4) */
    /* Describe mode: report descriptors, allocate nothing. */
    qplug_synth_visit_fn visit;
    void *user;
    /* Write mode. */
    const char *dir;               /* the temporary directory */
    cJSON *weight_map;
    uint64_t total_bytes;
    int shard, n_shards;
    qplug_tensor *t;               /* the current shard; names and data owned */
    size_t n, cap;
    float *work;                   /* scratch for one weight matrix in fp32 */
    size_t work_cap;
    qplug_err *err;
} synth_ctx;

static void synth_shard_clear(synth_ctx *c)
{
    for (size_t i = 0; i < c->n; i++) {
        free((void *)c->t[i].name);
        free(c->t[i].data);
    }
    c->n = 0;
}

/*
 * Declares one tensor of the current shard. In write mode *data receives
 * zeroed storage to fill; in describe mode the visitor sees the descriptor
 * and *data is NULL (the caller then skips filling).
 */
static qplug_status synth_add(synth_ctx *c, const char *name, qplug_dtype dt, int ndim,
                              const int64_t *shape, void **data)
{
    qplug_tensor t;
    memset(&t, 0, sizeof t);
    t.name = name;
    t.dtype = dt;
    t.ndim = ndim;
    for (int i = 0; i < ndim; i++)
        t.shape[i] = shape[i];
    t.device = QPLUG_DEVICE_CPU;
    *data = NULL;
    if (c->visit)
        return c->visit(c->user, &t, c->shard, c->n_shards);

    if (c->n == c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 64;
        qplug_tensor *nt = realloc(c->t, cap * sizeof *nt);
        if (!nt)
            return qplug_err_set(c->err, QPLUG_ERR_NOMEM, "synth: out of memory adding %s", name);
        c->t = nt;
        c->cap = cap;
    }
    size_t nbytes = qplug_tensor_nbytes(&t);
    t.name = strdup(name);
    t.data = calloc(1, nbytes ? nbytes : 1);
    if (!t.name || !t.data) {
        free((void *)t.name);
        free(t.data);
        return qplug_err_set(c->err, QPLUG_ERR_NOMEM, "synth: out of memory for %s (%zu bytes)",
                             name, nbytes);
    }
    c->t[c->n++] = t;
    *data = t.data;
    return QPLUG_OK;
}

static float *synth_work(synth_ctx *c, size_t n, const char *name)
{
    if (n > c->work_cap) {
        float *w = realloc(c->work, n * sizeof *w);
        if (!w) {
            qplug_err_set(c->err, QPLUG_ERR_NOMEM, "synth: out of memory for %s", name);
            return NULL;
        }
        c->work = w;
        c->work_cap = n;
    }
    return c->work;
}

/* Writes the current shard and records its tensors in the index. */
static qplug_status synth_flush(synth_ctx *c)
{
    if (c->visit) {
        c->shard++;
        return QPLUG_OK;
    }
    char file[64], path[PATH_MAX];
    snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", c->shard + 1, c->n_shards);
    if ((size_t)snprintf(path, sizeof path, "%s/%s", c->dir, file) >= sizeof path)
        return qplug_err_set(c->err, QPLUG_ERR_ARGUMENT, "synth: path too long: %s/%s", c->dir,
                             file);
    qplug_status st = qplug_st_write(path, c->t, c->n, c->err);
    if (st != QPLUG_OK)
        return st;
    for (size_t i = 0; i < c->n; i++) {
        if (!cJSON_AddStringToObject(c->weight_map, c->t[i].name, file))
            return qplug_err_set(c->err, QPLUG_ERR_NOMEM, "synth: out of memory indexing %s",
                                 c->t[i].name);
        c->total_bytes += qplug_tensor_nbytes(&c->t[i]);
    }
    synth_shard_clear(c);
    c->shard++;
    return QPLUG_OK;
}

/* ---- plain tensors ------------------------------------------------------ */

/* The name written for a tensor: official `po`+`so` or transformers
 * `ph`+`sh`. `official` always receives the official name (the seed key). */
static const char *synth_name(const synth_ctx *c, char *buf, size_t size, char *official,
                              const char *po, const char *so, const char *ph, const char *sh)
{
    snprintf(official, 256, "%s%s", po, so);
    if (c->hf)
        snprintf(buf, size, "%s%s", ph, sh);
    else
        snprintf(buf, size, "%s%s", po, so);
    return buf;
}

/* A BF16 or F32 tensor of N(mean, std^2) values. */
static qplug_status synth_normal_tensor(synth_ctx *c, const char *po, const char *so,
                                        const char *ph, const char *sh, qplug_dtype dt, int ndim,
                                        const int64_t *shape, double mean, double std)
{
    char name[256], official[256];
    synth_name(c, name, sizeof name, official, po, so, ph, sh);
    void *data;
    qplug_status st = synth_add(c, name, dt, ndim, shape, &data);
    if (st != QPLUG_OK || !data)
        return st;
    synth_rng r = synth_rng_for(c->opt.seed, official);
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= shape[i];
    if (dt == QPLUG_DT_BF16) {
        uint16_t *p = data;
        for (int64_t i = 0; i < n; i++)
            p[i] = qplug_f32_to_bf16((float)(mean + std * synth_normal(&r)));
    } else {
        float *p = data;
        for (int64_t i = 0; i < n; i++)
            p[i] = (float)(mean + std * synth_normal(&r));
    }
    return QPLUG_OK;
}

/* An RMSNorm weight: BF16 [n] around 1. */
static qplug_status synth_norm(synth_ctx *c, const char *po, const char *so, const char *ph,
                               const char *sh, int64_t n)
{
    return synth_normal_tensor(c, po, so, ph, sh, QPLUG_DT_BF16, 1, (int64_t[]){n}, 1.0, 0.05);
}

/* A BF16 projection that no format quantizes (compressors, router gate,
 * indexer scorer, head): std 1/sqrt(fan_in). */
static qplug_status synth_bf16_proj(synth_ctx *c, const char *po, const char *so, const char *ph,
                                    const char *sh, int64_t out, int64_t in)
{
    return synth_normal_tensor(c, po, so, ph, sh, QPLUG_DT_BF16, 2, (int64_t[]){out, in}, 0.0,
                               1.0 / sqrt((double)in));
}

/* ---- quantizers (formats.md; the project's own codecs) ----------------- */

/* ceil(log2(x)) for x > 0, exactly. */
static int synth_ceil_log2(double x)
{
    int e;
    double m = frexp(x, &e); /* x = m * 2^e, m in [0.5, 1) */
    return m == 0.5 ? e - 1 : e;
}

/* FP8 block: one scale per 128x128 tile, E8M0 (2^ceil(log2(amax/448))) or
 * F32 (amax/448); q = e4m3(w / s). */
static void synth_quant_fp8_block(const float *w, int64_t rows, int64_t cols, uint8_t *q,
                                  void *scale, bool e8m0)
{
    int64_t nb = (cols + 127) / 128;
    for (int64_t br = 0; br < rows; br += 128) {
        for (int64_t bc = 0; bc < cols; bc += 128) {
            int64_t re = br + 128 < rows ? br + 128 : rows;
            int64_t ce = bc + 128 < cols ? bc + 128 : cols;
            double amax = 0.0;
            for (int64_t i = br; i < re; i++)
                for (int64_t j = bc; j < ce; j++)
                    amax = fmax(amax, fabs((double)w[i * cols + j]));
            float s;
            int64_t si = (br / 128) * nb + bc / 128;
            if (e8m0) {
                int k = amax > 0.0 ? synth_ceil_log2(amax / 448.0) : 0;
                uint8_t b = qplug_e8m0_from_exp(k);
                ((uint8_t *)scale)[si] = b;
                s = qplug_e8m0_to_f32(b);
            } else {
                s = amax > 0.0 ? (float)(amax / 448.0) : 1.0f;
                ((float *)scale)[si] = s;
            }
            for (int64_t i = br; i < re; i++)
                for (int64_t j = bc; j < ce; j++)
                    q[i * cols + j] = qplug_f32_to_e4m3(w[i * cols + j] / s);
        }
    }
}

static void synth_pack_e2m1(uint8_t *packed, int64_t i, uint8_t code)
{
    if (i & 1)
        packed[i >> 1] = (uint8_t)(packed[i >> 1] | (code << 4));
    else
        packed[i >> 1] = (uint8_t)(packed[i >> 1] | code);
}

/* MXFP4: per 32 along a row, E8M0 scale 2^ceil(log2(amax/6)) (no clipping),
 * q = e2m1(w / s). `q` must be zeroed. */
static void synth_quant_mxfp4(const float *w, int64_t rows, int64_t cols, uint8_t *q,
                              uint8_t *scale)
{
    for (int64_t i = 0; i < rows; i++) {
        for (int64_t g = 0; g < cols / 32; g++) {
            const float *x = w + i * cols + g * 32;
            double amax = 0.0;
            for (int j = 0; j < 32; j++)
                amax = fmax(amax, fabs((double)x[j]));
            int k = amax > 0.0 ? synth_ceil_log2(amax / 6.0) : 0;
            uint8_t b = qplug_e8m0_from_exp(k);
            scale[i * (cols / 32) + g] = b;
            float s = qplug_e8m0_to_f32(b);
            for (int j = 0; j < 32; j++)
                synth_pack_e2m1(q + i * (cols / 2), g * 32 + j, qplug_f32_to_e2m1(x[j] / s));
        }
    }
}

/* NVFP4 (ModelOpt): global scale amax/(6*448); per 16 along a row an E4M3
 * scale e4m3(amax16 / 6 / global); q = e2m1(w / (scale * global)). `q`
 * must be zeroed. Returns the global scale. */
static float synth_quant_nvfp4(const float *w, int64_t rows, int64_t cols, uint8_t *q,
                               uint8_t *scale)
{
    double amax = 0.0;
    for (int64_t i = 0; i < rows * cols; i++)
        amax = fmax(amax, fabs((double)w[i]));
    float g2 = amax > 0.0 ? (float)(amax / (6.0 * 448.0)) : 1.0f;
    for (int64_t i = 0; i < rows; i++) {
        for (int64_t g = 0; g < cols / 16; g++) {
            const float *x = w + i * cols + g * 16;
            double bmax = 0.0;
            for (int j = 0; j < 16; j++)
                bmax = fmax(bmax, fabs((double)x[j]));
            uint8_t b = qplug_f32_to_e4m3((float)(bmax / 6.0 / g2));
            scale[i * (cols / 16) + g] = b;
            float s = qplug_e4m3_to_f32(b) * g2;
            for (int j = 0; j < 16; j++) {
                uint8_t code = s > 0.0f ? qplug_f32_to_e2m1(x[j] / s) : 0;
                synth_pack_e2m1(q + i * (cols / 2), g * 16 + j, code);
            }
        }
    }
    return g2;
}

/* ---- linears ------------------------------------------------------------ */

typedef enum synth_linear_kind {
    SYNTH_DENSE = 0,               /* attention, indexer wq_b, shared experts, MTP */
    SYNTH_EXPERT = 1,              /* routed experts */
    SYNTH_KEEP_BF16 = 2            /* left unquantized by the exporter (NVFP4 exclude) */
} synth_linear_kind;

/*
 * A quantizable projection [out, in] with official module po+mo and
 * transformers module ph+mh. Weights are N(0, (gain/sqrt(in))^2) in fp32,
 * then stored as the format says.
 */
static qplug_status synth_linear(synth_ctx *c, const char *po, const char *mo, const char *ph,
                                 const char *mh, int64_t out, int64_t in, synth_linear_kind kind,
                                 double gain)
{
    char base[256], official[256], name[320];
    synth_name(c, base, sizeof base, official, po, mo, ph, mh);
    strncat(official, ".weight", sizeof official - strlen(official) - 1);
    qplug_synth_format f = c->opt.format;
    bool bf16 = f == QPLUG_SYNTH_BF16 || kind == SYNTH_KEEP_BF16;
    qplug_status st;
    void *wq, *sc;

    /* Declare the tensors first: describe mode stops there. */
    snprintf(name, sizeof name, "%s.weight", base);
    if (bf16) {
        st = synth_add(c, name, QPLUG_DT_BF16, 2, (int64_t[]){out, in}, &wq);
        sc = NULL;
    } else if (f == QPLUG_SYNTH_NVFP4 || (f == QPLUG_SYNTH_FLASH && kind == SYNTH_EXPERT)) {
        bool nv = f == QPLUG_SYNTH_NVFP4;
        st = synth_add(c, name, nv ? QPLUG_DT_U8 : QPLUG_DT_I8, 2, (int64_t[]){out, in / 2},
                       &wq);
        if (st != QPLUG_OK)
            return st;
        snprintf(name, sizeof name, nv ? "%s.weight_scale" : "%s.scale", base);
        st = synth_add(c, name, nv ? QPLUG_DT_F8_E4M3 : QPLUG_DT_F8_E8M0, 2,
                       (int64_t[]){out, in / (nv ? 16 : 32)}, &sc);
    } else {
        bool e8m0 = f == QPLUG_SYNTH_FLASH;
        st = synth_add(c, name, QPLUG_DT_F8_E4M3, 2, (int64_t[]){out, in}, &wq);
        if (st != QPLUG_OK)
            return st;
        snprintf(name, sizeof name, "%s.scale", base);
        st = synth_add(c, name, e8m0 ? QPLUG_DT_F8_E8M0 : QPLUG_DT_F32, 2,
                       (int64_t[]){(out + 127) / 128, (in + 127) / 128}, &sc);
    }
    if (st != QPLUG_OK)
        return st;
    void *g2 = NULL, *is = NULL;
    if (f == QPLUG_SYNTH_NVFP4 && !bf16) {
        snprintf(name, sizeof name, "%s.weight_scale_2", base);
        if ((st = synth_add(c, name, QPLUG_DT_F32, 0, NULL, &g2)) != QPLUG_OK)
            return st;
        snprintf(name, sizeof name, "%s.input_scale", base);
        if ((st = synth_add(c, name, QPLUG_DT_F32, 0, NULL, &is)) != QPLUG_OK)
            return st;
    }
    if (!wq)
        return QPLUG_OK;

    float *w = synth_work(c, (size_t)(out * in), base);
    if (!w)
        return QPLUG_ERR_NOMEM;
    synth_rng r = synth_rng_for(c->opt.seed, official);
    double std = gain / sqrt((double)in);
    for (int64_t i = 0; i < out * in; i++)
        w[i] = (float)(std * synth_normal(&r));

    if (bf16) {
        uint16_t *p = wq;
        for (int64_t i = 0; i < out * in; i++)
            p[i] = qplug_f32_to_bf16(w[i]);
    } else if (f == QPLUG_SYNTH_NVFP4) {
        *(float *)g2 = synth_quant_nvfp4(w, out, in, wq, sc);
        /* A static activation scale as calibration would give it: an
         * activation amax between 4 and 8, over 6 * 448. */
        synth_rng ri = synth_rng_for(c->opt.seed ^ 0x5ca1eull, official);
        *(float *)is = (float)((4.0 + 4.0 * synth_uniform(&ri)) / (6.0 * 448.0));
    } else if (f == QPLUG_SYNTH_FLASH && kind == SYNTH_EXPERT) {
        synth_quant_mxfp4(w, out, in, wq, sc);
    } else {
        synth_quant_fp8_block(w, out, in, wq, sc, f == QPLUG_SYNTH_FLASH);
    }
    return QPLUG_OK;
}

/* ---- model structure ---------------------------------------------------- */

/* Hyper-connection parameters of one site: fn [mix, hc*D] scaled so that
 * the mixing logits have unit variance, small base, scale around 0.1. */
static qplug_status synth_hc(synth_ctx *c, const char *po, const char *ph, const char *site,
                             const char *hf_site, int64_t mix, int64_t n_scale)
{
    char so[64], sh[64];
    int64_t hcd = 4 * c->d.hidden;
    qplug_status st;
    snprintf(so, sizeof so, "hc_%s_fn", site);
    snprintf(sh, sizeof sh, "%s.%sfn", hf_site, n_scale == 1 ? "hc_" : "");
    st = synth_normal_tensor(c, po, so, ph, sh, QPLUG_DT_F32, 2, (int64_t[]){mix, hcd}, 0.0,
                             1.0 / sqrt((double)hcd));
    if (st != QPLUG_OK)
        return st;
    snprintf(so, sizeof so, "hc_%s_base", site);
    snprintf(sh, sizeof sh, "%s.%sbase", hf_site, n_scale == 1 ? "hc_" : "");
    st = synth_normal_tensor(c, po, so, ph, sh, QPLUG_DT_F32, 1, (int64_t[]){mix}, 0.0, 0.1);
    if (st != QPLUG_OK)
        return st;
    snprintf(so, sizeof so, "hc_%s_scale", site);
    snprintf(sh, sizeof sh, "%s.%sscale", hf_site, n_scale == 1 ? "hc_" : "");
    return synth_normal_tensor(c, po, so, ph, sh, QPLUG_DT_F32, 1, (int64_t[]){n_scale}, 0.1,
                               0.01);
}

/* A compressor of width d (512-style head dim, or the indexer's) and ratio:
 * wkv and wgate [c*d, D] BF16, ape F32 [ratio, c*d], norm BF16 [d]. */
static qplug_status synth_compressor(synth_ctx *c, const char *po, const char *ph, int64_t d,
                                     int ratio)
{
    char p2o[256], p2h[256];
    int64_t cd = (ratio == 4 ? 2 : 1) * d;
    qplug_status st;
    snprintf(p2o, sizeof p2o, "%scompressor.", po);
    snprintf(p2h, sizeof p2h, "%s", ph);
    if ((st = synth_bf16_proj(c, p2o, "wkv.weight", p2h, "kv_proj.weight", cd, c->d.hidden)))
        return st;
    if ((st = synth_bf16_proj(c, p2o, "wgate.weight", p2h, "gate_proj.weight", cd,
                              c->d.hidden)))
        return st;
    if ((st = synth_normal_tensor(c, p2o, "ape", p2h, "position_bias", QPLUG_DT_F32, 2,
                                  (int64_t[]){ratio, cd}, 0.0, 0.02)))
        return st;
    return synth_norm(c, p2o, "norm.weight", p2h, "kv_norm.weight", d);
}

/* One transformer block: layer `li` (main) or MTP block `mtp` >= 0. */
static qplug_status synth_block(synth_ctx *c, int li, int mtp)
{
    const synth_dims *d = &c->d;
    char po[64], ph[64], ao[96], ah[96], fo[96], fh[96];
    int ratio = d->ratios[mtp >= 0 ? d->n_layers + mtp : li];
    bool hash = mtp < 0 && li < d->n_hash;
    int64_t D = d->hidden, hd = d->head_dim, H = d->heads;
    qplug_status st;

    if (mtp >= 0)
        snprintf(po, sizeof po, "mtp.%d.", mtp);
    else
        snprintf(po, sizeof po, "layers.%d.", li);
    snprintf(ph, sizeof ph, "model.layers.%d.", li);
    snprintf(ao, sizeof ao, "%sattn.", po);
    snprintf(ah, sizeof ah, "%sself_attn.", ph);
    snprintf(fo, sizeof fo, "%sffn.", po);
    snprintf(fh, sizeof fh, "%smlp.", ph);

    if (mtp >= 0) {
        if ((st = synth_linear(c, po, "e_proj", ph, "e_proj", D, D, SYNTH_DENSE, 1.0)) ||
            (st = synth_linear(c, po, "h_proj", ph, "h_proj", D, D, SYNTH_DENSE, 1.0)) ||
            (st = synth_norm(c, po, "enorm.weight", ph, "enorm.weight", D)) ||
            (st = synth_norm(c, po, "hnorm.weight", ph, "hnorm.weight", D)) ||
            (st = synth_norm(c, po, "norm.weight", ph, "norm.weight", D)) ||
            (st = synth_hc(c, po, ph, "head", "hc_head", 4, 1)))
            return st;
    }

    /* Norms and hyper-connections. */
    if ((st = synth_norm(c, po, "attn_norm.weight", ph, "input_layernorm.weight", D)) ||
        (st = synth_norm(c, po, "ffn_norm.weight", ph, "post_attention_layernorm.weight", D)) ||
        (st = synth_hc(c, po, ph, "attn", "attn_hc", 24, 3)) ||
        (st = synth_hc(c, po, ph, "ffn", "ffn_hc", 24, 3)))
        return st;

    /* Attention. ModelOpt exports may leave a layer behind in BF16: layer
     * 0's wo_a plays that part (formats.md). */
    synth_linear_kind wo_a_kind =
        (c->opt.format == QPLUG_SYNTH_NVFP4 && li == 0) ? SYNTH_KEEP_BF16 : SYNTH_DENSE;
    if ((st = synth_normal_tensor(c, ao, "attn_sink", ah, "sinks", QPLUG_DT_F32, 1,
                                  (int64_t[]){H}, 0.0, 0.5)) ||
        (st = synth_linear(c, ao, "wq_a", ah, "q_a_proj", d->q_lora, D, SYNTH_DENSE, 1.0)) ||
        (st = synth_norm(c, ao, "q_norm.weight", ah, "q_a_norm.weight", d->q_lora)) ||
        (st = synth_linear(c, ao, "wq_b", ah, "q_b_proj", H * hd, d->q_lora, SYNTH_DENSE, 1.0)) ||
        (st = synth_linear(c, ao, "wkv", ah, "kv_proj", hd, D, SYNTH_DENSE, 1.0)) ||
        (st = synth_norm(c, ao, "kv_norm.weight", ah, "kv_norm.weight", hd)) ||
        (st = synth_linear(c, ao, "wo_a", ah, "o_a_proj", d->o_groups * d->o_lora,
                           H * hd / d->o_groups, wo_a_kind, 1.0)) ||
        (st = synth_linear(c, ao, "wo_b", ah, "o_b_proj", D, d->o_groups * d->o_lora,
                           SYNTH_DENSE, 1.0)))
        return st;
    if (ratio) {
        char ch[128];
        snprintf(ch, sizeof ch, "%scompressor.", ah);
        if ((st = synth_compressor(c, ao, ch, hd, ratio)))
            return st;
    }
    if (ratio == 4) {
        char io[128], ih[128], sh[160];
        snprintf(io, sizeof io, "%sindexer.", ao);
        snprintf(ih, sizeof ih, "%scompressor.indexer.", ah);
        snprintf(sh, sizeof sh, "%sscorer.", ih);
        if ((st = synth_linear(c, io, "wq_b", ih, "q_b_proj", d->idx_heads * d->idx_dim,
                               d->q_lora, SYNTH_DENSE, 1.0)) ||
            (st = synth_bf16_proj(c, io, "weights_proj.weight", sh, "weights_proj.weight",
                                  d->idx_heads, D)) ||
            (st = synth_compressor(c, io, ih, d->idx_dim, 4)))
            return st;
    }

    /* MoE: router, shared expert, routed experts. */
    if ((st = synth_bf16_proj(c, fo, "gate.weight", fh, "gate.weight", d->experts, D)))
        return st;
    if (hash) {
        char name[256], official[256];
        void *data;
        synth_name(c, name, sizeof name, official, fo, "gate.tid2eid", fh, "gate.tid2eid");
        st = synth_add(c, name, QPLUG_DT_I64, 2, (int64_t[]){d->vocab, d->top_k}, &data);
        if (st != QPLUG_OK)
            return st;
        if (data) {
            /* top_k distinct valid expert ids per token (partial shuffle). */
            synth_rng r = synth_rng_for(c->opt.seed, official);
            int64_t *ids = data, perm[SYNTH_MAX_EXPERTS];
            for (int64_t t = 0; t < d->vocab; t++) {
                for (int64_t e = 0; e < d->experts; e++)
                    perm[e] = e;
                for (int64_t k = 0; k < d->top_k; k++) {
                    int64_t j = k + (int64_t)(synth_uniform(&r) * (double)(d->experts - k));
                    int64_t tmp = perm[k];
                    perm[k] = perm[j];
                    perm[j] = tmp;
                    ids[t * d->top_k + k] = perm[k];
                }
            }
        }
    } else {
        if ((st = synth_normal_tensor(c, fo, "gate.bias", fh, "gate.e_score_correction_bias",
                                      QPLUG_DT_F32, 1, (int64_t[]){d->experts}, 0.0, 0.01)))
            return st;
    }
    char so[128], sh[128];
    snprintf(so, sizeof so, "%sshared_experts.", fo);
    snprintf(sh, sizeof sh, "%sshared_experts.", fh);
    if ((st = synth_linear(c, so, "w1", sh, "gate_proj", d->inter, D, SYNTH_DENSE, 1.0)) ||
        (st = synth_linear(c, so, "w3", sh, "up_proj", d->inter, D, SYNTH_DENSE, 1.0)) ||
        (st = synth_linear(c, so, "w2", sh, "down_proj", D, d->inter, SYNTH_DENSE, 1.0)))
        return st;
    for (int64_t e = 0; e < d->experts; e++) {
        snprintf(so, sizeof so, "%sexperts.%lld.", fo, (long long)e);
        snprintf(sh, sizeof sh, "%sexperts.%lld.", fh, (long long)e);
        /* Expert 0's up projection is drawn 1.5x wider, so its NVFP4 global
         * scale always differs from the gate's: the fused-shard case that
         * must be handled exactly (formats.md). */
        if ((st = synth_linear(c, so, "w1", sh, "gate_proj", d->inter, D, SYNTH_EXPERT, 1.0)) ||
            (st = synth_linear(c, so, "w3", sh, "up_proj", d->inter, D, SYNTH_EXPERT,
                               e == 0 ? 1.5 : 1.0)) ||
            (st = synth_linear(c, so, "w2", sh, "down_proj", D, d->inter, SYNTH_EXPERT, 1.0)))
            return st;
    }
    return QPLUG_OK;
}

/* Official formats carry the MTP block; the transformers export does not. */
static int synth_n_mtp(const synth_ctx *c)
{
    return c->hf ? 0 : (int)c->d.n_mtp;
}

static qplug_status synth_tensors(synth_ctx *c)
{
    const synth_dims *d = &c->d;
    qplug_status st;
    c->shard = 0;
    c->n_shards = 2 + (int)d->n_layers + synth_n_mtp(c);

    if ((st = synth_normal_tensor(c, "", "embed.weight", "", "model.embed_tokens.weight",
                                  QPLUG_DT_BF16, 2, (int64_t[]){d->vocab, d->hidden}, 0.0, 1.0)) ||
        (st = synth_flush(c)))
        return st;
    if ((st = synth_bf16_proj(c, "", "head.weight", "", "lm_head.weight", d->vocab, d->hidden)) ||
        (st = synth_norm(c, "", "norm.weight", "", "model.norm.weight", d->hidden)) ||
        (st = synth_hc(c, "", "model.", "head", "hc_head", 4, 1)) || (st = synth_flush(c)))
        return st;
    for (int li = 0; li < d->n_layers; li++)
        if ((st = synth_block(c, li, -1)) || (st = synth_flush(c)))
            return st;
    for (int m = 0; m < synth_n_mtp(c); m++)
        if ((st = synth_block(c, (int)d->n_layers + m, m)) || (st = synth_flush(c)))
            return st;
    return QPLUG_OK;
}

static void synth_ctx_init(synth_ctx *c, const qplug_synth_options *opt, qplug_err *err)
{
    memset(c, 0, sizeof *c);
    c->opt = *opt;
    c->err = err;
    c->hf = opt->format == QPLUG_SYNTH_NVFP4;
    synth_dims_for(opt->preset, &c->d);
}

static qplug_status synth_check_options(const qplug_synth_options *opt, qplug_err *err)
{
    if (!opt)
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT, "synth: no options");
    if (opt->preset != QPLUG_SYNTH_TINY && opt->preset != QPLUG_SYNTH_FLASH_SHAPES)
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT, "synth: invalid preset %d",
                             (int)opt->preset);
    if ((unsigned)opt->format > QPLUG_SYNTH_NVFP4)
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT, "synth: invalid format %d",
                             (int)opt->format);
    return QPLUG_OK;
}

qplug_status qplug_synth_describe(const qplug_synth_options *opt, qplug_synth_visit_fn visit,
                                  void *user, qplug_err *err)
{
    qplug_status st = synth_check_options(opt, err);
    if (st != QPLUG_OK)
        return st;
    if (!visit)
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT, "synth: no visitor");
    synth_ctx c;
    synth_ctx_init(&c, opt, err);
    c.visit = visit;
    c.user = user;
    return synth_tensors(&c);
}

/* ---- JSON files ---------------------------------------------------------- */

static qplug_status synth_write_json(const char *dir, const char *file, cJSON *root,
                                     qplug_err *err)
{
    char path[PATH_MAX];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, file) >= sizeof path)
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT, "synth: path too long: %s/%s", dir, file);
    char *text = cJSON_Print(root);
    if (!text)
        return qplug_err_set(err, QPLUG_ERR_NOMEM, "synth: out of memory printing %s", path);
    FILE *f = fopen(path, "w");
    bool ok = f && fputs(text, f) >= 0 && fputc('\n', f) != EOF;
    if (f && fclose(f) != 0)
        ok = false;
    free(text);
    if (!ok)
        return qplug_err_set(err, QPLUG_ERR_IO, "synth: cannot write %s: %s", path,
                             strerror(errno));
    return QPLUG_OK;
}

/* The module patterns ModelOpt leaves unquantized in our NVFP4 export. */
static cJSON *synth_excludes(void)
{
    static const char *const pats[] = {
        "lm_head",
        "model.layers.*.mlp.gate",
        "model.layers.0.self_attn.o_a_proj",
        "model.layers.*.self_attn.compressor.kv_proj",
        "model.layers.*.self_attn.compressor.gate_proj",
        "model.layers.*.self_attn.compressor.indexer.kv_proj",
        "model.layers.*.self_attn.compressor.indexer.gate_proj",
        "model.layers.*.self_attn.compressor.indexer.scorer.weights_proj",
    };
    return cJSON_CreateStringArray(pats, (int)(sizeof pats / sizeof pats[0]));
}

/* Adds the keys shared by both config styles. */
static void synth_config_common(cJSON *o, const synth_dims *d)
{
    cJSON_AddItemToObject(o, "architectures",
                          cJSON_CreateStringArray((const char *const[]){"DeepseekV4ForCausalLM"},
                                                  1));
    cJSON_AddStringToObject(o, "model_type", "deepseek_v4");
    cJSON_AddFalseToObject(o, "attention_bias");
    cJSON_AddNumberToObject(o, "attention_dropout", 0.0);
    cJSON_AddNumberToObject(o, "bos_token_id", 0);
    cJSON_AddNumberToObject(o, "eos_token_id", 1);
    cJSON_AddNumberToObject(o, "hc_eps", 1e-6);
    cJSON_AddNumberToObject(o, "hc_mult", 4);
    cJSON_AddNumberToObject(o, "hc_sinkhorn_iters", 20);
    cJSON_AddNumberToObject(o, "head_dim", (double)d->head_dim);
    cJSON_AddStringToObject(o, "hidden_act", "silu");
    cJSON_AddNumberToObject(o, "hidden_size", (double)d->hidden);
    cJSON_AddNumberToObject(o, "index_head_dim", (double)d->idx_dim);
    cJSON_AddNumberToObject(o, "index_n_heads", (double)d->idx_heads);
    cJSON_AddNumberToObject(o, "index_topk", (double)d->idx_topk);
    cJSON_AddNumberToObject(o, "initializer_range", 0.02);
    cJSON_AddNumberToObject(o, "max_position_embeddings", 1048576);
    cJSON_AddNumberToObject(o, "moe_intermediate_size", (double)d->inter);
    cJSON_AddNumberToObject(o, "n_routed_experts", (double)d->experts);
    cJSON_AddNumberToObject(o, "n_shared_experts", 1);
    cJSON_AddTrueToObject(o, "norm_topk_prob");
    cJSON_AddNumberToObject(o, "num_attention_heads", (double)d->heads);
    cJSON_AddNumberToObject(o, "num_experts_per_tok", (double)d->top_k);
    cJSON_AddNumberToObject(o, "num_hidden_layers", (double)d->n_layers);
    cJSON_AddNumberToObject(o, "num_key_value_heads", 1);
    cJSON_AddNumberToObject(o, "o_groups", (double)d->o_groups);
    cJSON_AddNumberToObject(o, "o_lora_rank", (double)d->o_lora);
    cJSON_AddNumberToObject(o, "q_lora_rank", (double)d->q_lora);
    cJSON_AddNumberToObject(o, "qk_rope_head_dim", (double)d->rope_dim);
    cJSON_AddNumberToObject(o, "rms_norm_eps", 1e-6);
    cJSON_AddNumberToObject(o, "rope_theta", 10000);
    cJSON_AddNumberToObject(o, "compress_rope_theta", 160000);
    cJSON_AddNumberToObject(o, "routed_scaling_factor", d->routed_scaling);
    cJSON_AddStringToObject(o, "scoring_func", "sqrtsoftplus");
    cJSON_AddNumberToObject(o, "sliding_window", (double)d->window);
    cJSON_AddNumberToObject(o, "swiglu_limit", 10.0);
    cJSON_AddFalseToObject(o, "tie_word_embeddings");
    cJSON_AddTrueToObject(o, "use_cache");
    cJSON_AddNumberToObject(o, "vocab_size", (double)d->vocab);
}

static cJSON *synth_yarn(void)
{
    cJSON *y = cJSON_CreateObject();
    cJSON_AddNumberToObject(y, "beta_fast", 32);
    cJSON_AddNumberToObject(y, "beta_slow", 1);
    cJSON_AddNumberToObject(y, "factor", 16);
    cJSON_AddNumberToObject(y, "original_max_position_embeddings", 65536);
    return y;
}

/* config.json in the official DeepSeek style (as the V4-Flash release). */
static cJSON *synth_config_official(const synth_ctx *c)
{
    const synth_dims *d = &c->d;
    cJSON *o = cJSON_CreateObject();
    synth_config_common(o, d);
    cJSON_AddNumberToObject(o, "num_hash_layers", (double)d->n_hash);
    cJSON_AddNumberToObject(o, "num_nextn_predict_layers", (double)d->n_mtp);
    cJSON_AddStringToObject(o, "topk_method", "noaux_tc");
    cJSON_AddStringToObject(o, "torch_dtype", "bfloat16");
    cJSON *y = synth_yarn();
    cJSON_AddStringToObject(y, "type", "yarn");
    cJSON_AddItemToObject(o, "rope_scaling", y);
    cJSON_AddItemToObject(o, "compress_ratios",
                          cJSON_CreateIntArray(d->ratios, (int)(d->n_layers + d->n_mtp)));
    if (c->opt.format == QPLUG_SYNTH_FLASH || c->opt.format == QPLUG_SYNTH_FLASH_BASE) {
        bool flash = c->opt.format == QPLUG_SYNTH_FLASH;
        cJSON_AddStringToObject(o, "expert_dtype", flash ? "fp4" : "fp8");
        cJSON *q = cJSON_CreateObject();
        cJSON_AddStringToObject(q, "activation_scheme", "dynamic");
        cJSON_AddStringToObject(q, "fmt", "e4m3");
        cJSON_AddStringToObject(q, "quant_method", "fp8");
        if (flash)
            cJSON_AddStringToObject(q, "scale_fmt", "ue8m0");
        cJSON_AddItemToObject(q, "weight_block_size",
                              cJSON_CreateIntArray((const int[]){128, 128}, 2));
        cJSON_AddItemToObject(o, "quantization_config", q);
    }
    return o;
}

/* config.json in the transformers style, as a ModelOpt export writes it. */
static cJSON *synth_config_hf(const synth_ctx *c)
{
    const synth_dims *d = &c->d;
    cJSON *o = cJSON_CreateObject();
    synth_config_common(o, d);
    /* The export carries no MTP weights, so it declares none. */
    cJSON_AddNumberToObject(o, "num_nextn_predict_layers", 0);
    cJSON_AddStringToObject(o, "dtype", "bfloat16");
    cJSON_AddFalseToObject(o, "mlp_bias");
    double prf = (double)d->rope_dim / (double)d->head_dim;
    cJSON_AddNumberToObject(o, "partial_rotary_factor", prf);
    cJSON *rates = cJSON_CreateObject();
    cJSON_AddNumberToObject(rates, "compressed_sparse_attention", 4);
    cJSON_AddNumberToObject(rates, "heavily_compressed_attention", 128);
    cJSON_AddItemToObject(o, "compress_rates", rates);
    cJSON *lt = cJSON_CreateArray(), *mt = cJSON_CreateArray();
    for (int64_t i = 0; i < d->n_layers; i++) {
        int r = d->ratios[i];
        cJSON_AddItemToArray(lt, cJSON_CreateString(r == 4     ? "compressed_sparse_attention"
                                                    : r == 128 ? "heavily_compressed_attention"
                                                               : "sliding_attention"));
        cJSON_AddItemToArray(mt, cJSON_CreateString(i < d->n_hash ? "hash_moe" : "moe"));
    }
    cJSON_AddItemToObject(o, "layer_types", lt);
    cJSON_AddItemToObject(o, "mlp_layer_types", mt);
    cJSON *rp = cJSON_CreateObject(), *mainp = cJSON_CreateObject(), *comp = synth_yarn();
    cJSON_AddNumberToObject(mainp, "partial_rotary_factor", prf);
    cJSON_AddNumberToObject(mainp, "rope_theta", 10000);
    cJSON_AddStringToObject(mainp, "rope_type", "default");
    cJSON_AddNumberToObject(comp, "attention_factor", 1.0);
    cJSON_AddNumberToObject(comp, "partial_rotary_factor", prf);
    cJSON_AddNumberToObject(comp, "rope_theta", 160000);
    cJSON_AddStringToObject(comp, "rope_type", "yarn");
    cJSON_AddItemToObject(rp, "main", mainp);
    cJSON_AddItemToObject(rp, "compress", comp);
    cJSON_AddItemToObject(o, "rope_parameters", rp);
    cJSON *q = cJSON_CreateObject();
    cJSON_AddStringToObject(q, "quant_method", "modelopt");
    cJSON_AddStringToObject(q, "quant_algo", "NVFP4");
    cJSON_AddNumberToObject(q, "group_size", 16);
    cJSON_AddNullToObject(q, "kv_cache_quant_algo");
    cJSON_AddItemToObject(q, "ignore", synth_excludes());
    cJSON_AddItemToObject(o, "quantization_config", q);
    return o;
}

static cJSON *synth_hf_quant_config(void)
{
    cJSON *o = cJSON_CreateObject();
    cJSON *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "name", "modelopt");
    cJSON_AddStringToObject(p, "version", "qplug-synth");
    cJSON_AddItemToObject(o, "producer", p);
    cJSON *q = cJSON_CreateObject();
    cJSON_AddStringToObject(q, "quant_algo", "NVFP4");
    cJSON_AddNumberToObject(q, "group_size", 16);
    cJSON_AddNullToObject(q, "kv_cache_quant_algo");
    cJSON_AddItemToObject(q, "exclude_modules", synth_excludes());
    cJSON_AddItemToObject(o, "quantization", q);
    return o;
}

/* ---- the directory ------------------------------------------------------- */

/* Removes a directory this run created and the plain files in it. */
static void synth_remove_dir(const char *dir)
{
    DIR *dp = opendir(dir);
    if (dp) {
        struct dirent *e;
        char path[PATH_MAX];
        while ((e = readdir(dp)) != NULL) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                continue;
            if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, e->d_name) < sizeof path)
                unlink(path);
        }
        closedir(dp);
    }
    rmdir(dir);
}

/* Fails unless `dir` is absent or an empty directory. */
static qplug_status synth_check_target(const char *dir, qplug_err *err)
{
    struct stat sb;
    if (stat(dir, &sb) != 0) {
        if (errno == ENOENT)
            return QPLUG_OK;
        return qplug_err_set(err, QPLUG_ERR_IO, "synth: cannot stat %s: %s", dir,
                             strerror(errno));
    }
    if (!S_ISDIR(sb.st_mode))
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT, "synth: %s exists and is not a directory",
                             dir);
    DIR *dp = opendir(dir);
    if (!dp)
        return qplug_err_set(err, QPLUG_ERR_IO, "synth: cannot open %s: %s", dir,
                             strerror(errno));
    struct dirent *e;
    bool empty = true;
    while ((e = readdir(dp)) != NULL)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            empty = false;
    closedir(dp);
    if (!empty)
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT,
                             "synth: %s exists and is not empty (refusing to overwrite)", dir);
    return QPLUG_OK;
}

static qplug_status synth_fill_dir(synth_ctx *c)
{
    qplug_status st = synth_tensors(c);
    if (st != QPLUG_OK)
        return st;

    cJSON *index = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(index, "metadata");
    cJSON_AddNumberToObject(meta, "total_size", (double)c->total_bytes);
    cJSON_AddItemToObject(index, "weight_map", c->weight_map);
    c->weight_map = NULL; /* owned by index now */
    st = synth_write_json(c->dir, "model.safetensors.index.json", index, c->err);
    cJSON_Delete(index);
    if (st != QPLUG_OK)
        return st;

    cJSON *cfg = c->hf ? synth_config_hf(c) : synth_config_official(c);
    st = synth_write_json(c->dir, "config.json", cfg, c->err);
    cJSON_Delete(cfg);
    if (st != QPLUG_OK || !c->hf)
        return st;
    cJSON *hq = synth_hf_quant_config();
    st = synth_write_json(c->dir, "hf_quant_config.json", hq, c->err);
    cJSON_Delete(hq);
    return st;
}

qplug_status qplug_synth_write(const qplug_synth_options *opt, const char *out_dir,
                               qplug_err *err)
{
    qplug_status st = synth_check_options(opt, err);
    if (st != QPLUG_OK)
        return st;
    if (!out_dir || !*out_dir)
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT, "synth: no output directory");

    /* `out` leaves room in `tmp` for the ".tmp-XXXXXX" suffix. */
    char out[PATH_MAX - 16], tmp[PATH_MAX];
    size_t len = strlen(out_dir);
    while (len > 1 && out_dir[len - 1] == '/')
        len--;
    if (len >= sizeof out)
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT, "synth: path too long: %s", out_dir);
    memcpy(out, out_dir, len);
    out[len] = '\0';
    if ((st = synth_check_target(out, err)) != QPLUG_OK)
        return st;
    snprintf(tmp, sizeof tmp, "%s.tmp-XXXXXX", out);
    if (!mkdtemp(tmp))
        return qplug_err_set(err, QPLUG_ERR_IO, "synth: cannot create %s: %s", tmp,
                             strerror(errno));

    synth_ctx c;
    synth_ctx_init(&c, opt, err);
    c.dir = tmp;
    c.weight_map = cJSON_CreateObject();
    if (!c.weight_map)
        st = qplug_err_set(err, QPLUG_ERR_NOMEM, "synth: out of memory");
    else
        st = synth_fill_dir(&c);
    synth_shard_clear(&c);
    free(c.t);
    free(c.work);
    cJSON_Delete(c.weight_map);

    if (st == QPLUG_OK && rename(tmp, out) != 0)
        st = qplug_err_set(err, QPLUG_ERR_IO, "synth: cannot rename %s to %s: %s", tmp, out,
                           strerror(errno));
    if (st != QPLUG_OK)
        synth_remove_dir(tmp);
    return st;
}
