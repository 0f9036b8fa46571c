/* The host runtime: parallel_for coverage over many sizes and thread
 * counts, and qplug_layer_create's binding checks (missing, dtype, shape,
 * packed FP4 views), driven by a small plugin linked into the test. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "qplug/host.h"
#include "qplug/registry.h"
#include "testutil.h"

/* ---- parallel_for --------------------------------------------------------- */

typedef struct cover {
    atomic_int *hits;
    int64_t n;
    atomic_int bad_ranges;
    atomic_int calls;
    qplug_runtime *rt; /* set for the nested case */
} cover;

static void cover_range(void *arg, int64_t b, int64_t e)
{
    cover *c = arg;
    atomic_fetch_add(&c->calls, 1);
    if (b < 0 || e > c->n || b >= e) {
        atomic_fetch_add(&c->bad_ranges, 1);
        return;
    }
    for (int64_t i = b; i < e; i++)
        atomic_fetch_add(&c->hits[i], 1);
}

typedef struct nested {
    qplug_runtime *rt;
    atomic_int *hits; /* [outer * inner] */
    int64_t inner;
} nested;

typedef struct nested_inner {
    nested *outer;
    int64_t row;
} nested_inner;

static void nested_inner_range(void *arg, int64_t b, int64_t e)
{
    nested_inner *ni = arg;
    for (int64_t j = b; j < e; j++)
        atomic_fetch_add(&ni->outer->hits[ni->row * ni->outer->inner + j], 1);
}

static void nested_outer_range(void *arg, int64_t b, int64_t e)
{
    nested *o = arg;
    for (int64_t i = b; i < e; i++) {
        nested_inner ni = {o, i};
        /* A parallel_for from inside one must still cover its range. */
        qplug_runtime_parallel_for(o->rt, o->inner, nested_inner_range, &ni);
    }
}

static void test_parallel_for(void)
{
    static const int threads[] = {1, 2, 3, 4, 7, 16};
    static const int64_t sizes[] = {0, 1, 2, 3, 5, 8, 13, 63, 64, 65, 100, 1000, 12345};
    for (size_t t = 0; t < sizeof threads / sizeof threads[0]; t++) {
        qplug_runtime *rt = NULL;
        qplug_err err = {0};
        qplug_status st = qplug_runtime_create(NULL, QPLUG_DEVICE_CPU, threads[t], &rt, &err);
        CHECKF(st == QPLUG_OK, "runtime with %d threads: %s", threads[t], err.msg);
        if (st != QPLUG_OK)
            continue;
        CHECK(qplug_runtime_threads(rt) == threads[t]);
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            int64_t n = sizes[s];
            /* Several rounds per size exercise the pool's job hand-over. */
            for (int round = 0; round < 3; round++) {
                cover c = {calloc((size_t)n + 1, sizeof(atomic_int)), n, 0, 0, rt};
                qplug_runtime_parallel_for(rt, n, cover_range, &c);
                int wrong = 0;
                for (int64_t i = 0; i < n; i++)
                    wrong += atomic_load(&c.hits[i]) != 1;
                CHECKF(wrong == 0 && atomic_load(&c.bad_ranges) == 0,
                       "threads %d n %lld: %d indices not covered exactly once, %d bad ranges",
                       threads[t], (long long)n, wrong, atomic_load(&c.bad_ranges));
                CHECKF(n > 0 || atomic_load(&c.calls) == 0, "n = 0 called fn");
                CHECKF(atomic_load(&c.calls) <= 4 * threads[t] || n == 0,
                       "threads %d n %lld: %d chunks", threads[t], (long long)n,
                       atomic_load(&c.calls));
                free(c.hits);
            }
        }
        nested o = {rt, calloc(37 * 11, sizeof(atomic_int)), 11};
        qplug_runtime_parallel_for(rt, 37, nested_outer_range, &o);
        int wrong = 0;
        for (int i = 0; i < 37 * 11; i++)
            wrong += atomic_load(&o.hits[i]) != 1;
        CHECKF(wrong == 0, "threads %d nested: %d indices wrong", threads[t], wrong);
        free(o.hits);
        qplug_runtime_destroy(rt);
    }
}

/* ---- a plugin linked into the test --------------------------------------- */

/*
 * Declares "weight" as packed FP4 in the form chosen by layer->flags bit 8
 * (set: F4 [n, k], clear: U8 [n, k/2]), "scale" F32 [n] and an optional
 * "bias" F32 [n]. process_after_loading records what it was shown, and
 * apply writes that record into y, so the test sees the view the core
 * presented. layer->groups == 99 makes process_after_loading fail.
 */
#define TP_DECLARE_F4 (1u << 8)

/* What process_after_loading saw: weight dtype, shape0, shape1, first
 * byte, scale[0], bias bound, and the host table's answers: state 64-byte
 * aligned, cuda_device, cublaslt non-NULL, option fp4_activations "true". */
enum { TP_SEEN = 10 };
typedef struct tp_state {
    float seen[TP_SEEN];
} tp_state;

static int tp_score(const qplug_layer_desc *layer)
{
    return layer->kind == QPLUG_LAYER_LINEAR ? 5 : 0;
}

static qplug_status tp_create_weights(const qplug_host *host, const qplug_layer_desc *layer)
{
    const qplug_host_api *api = host->api;
    qplug_status st;
    if (layer->flags & TP_DECLARE_F4) {
        const int64_t ws[2] = {layer->n, layer->k};
        st = api->declare(host->ctx, "weight", QPLUG_DT_BIT(QPLUG_DT_E2M1), 2, ws, 0);
    } else {
        const int64_t ws[2] = {layer->n, layer->k / 2};
        st = api->declare(host->ctx, "weight", QPLUG_DT_BIT(QPLUG_DT_U8), 2, ws, 0);
    }
    const int64_t ss[1] = {layer->n};
    if (st == QPLUG_OK)
        st = api->declare(host->ctx, "scale", QPLUG_DT_BIT(QPLUG_DT_F32), 1, ss, 0);
    if (st == QPLUG_OK)
        st = api->declare(host->ctx, "bias", QPLUG_DT_BIT(QPLUG_DT_F32), 1, ss,
                          QPLUG_DECL_OPTIONAL);
    return st;
}

static qplug_status tp_process(const qplug_host *host, const qplug_layer_desc *layer, void **state)
{
    const qplug_host_api *api = host->api;
    *state = NULL;
    if (layer->groups == 99)
        return api->error(host->ctx, QPLUG_ERR_NUMERIC, "scale of row %d is not finite", 3);
    const qplug_tensor *w = api->weight(host->ctx, "weight");
    const qplug_tensor *s = api->weight(host->ctx, "scale");
    if (!w || !s)
        return api->error(host->ctx, QPLUG_ERR_INTERNAL, "weight or scale unbound");
    tp_state *st = api->alloc(host->ctx, sizeof *st, QPLUG_DEVICE_CPU);
    if (!st)
        return api->error(host->ctx, QPLUG_ERR_NOMEM, "out of memory");
    st->seen[0] = (float)w->dtype;
    st->seen[1] = (float)w->shape[0];
    st->seen[2] = (float)w->shape[1];
    st->seen[3] = (float)((const uint8_t *)w->data)[0];
    st->seen[4] = ((const float *)s->data)[0];
    st->seen[5] = api->weight(host->ctx, "bias") ? 1.0f : 0.0f;
    st->seen[6] = ((uintptr_t)st % 64 == 0) ? 1.0f : 0.0f;
    st->seen[7] = (float)api->cuda_device(host->ctx);
    st->seen[8] = api->cublaslt(host->ctx) ? 1.0f : 0.0f;
    const char *opt = api->option(host->ctx, "megamoe", "fp4_activations");
    st->seen[9] = opt && strcmp(opt, "true") == 0 ? 1.0f : 0.0f;
    /* Declaring is for create_weights only. */
    const int64_t one[1] = {1};
    if (api->declare(host->ctx, "late", QPLUG_DT_BIT(QPLUG_DT_F32), 1, one, 0) != QPLUG_ERR_ARGUMENT)
        st->seen[0] = -1.0f;
    *state = st;
    return QPLUG_OK;
}

static qplug_status tp_apply(const qplug_host *host, void *state, const qplug_apply_args *args)
{
    (void)host;
    memcpy(args->y->data, ((tp_state *)state)->seen, sizeof((tp_state *)state)->seen);
    return QPLUG_OK;
}

static void tp_destroy(const qplug_host *host, void *state)
{
    host->api->free(host->ctx, state, QPLUG_DEVICE_CPU);
}

static const qplug_plugin tp_plugin = {
    .abi_version = QPLUG_ABI_VERSION,
    .struct_size = sizeof(qplug_plugin),
    .name = "testplug",
    .description = "binding test plugin",
    .devices = 1u << QPLUG_DEVICE_CPU,
    .score = tp_score,
    .create_weights = tp_create_weights,
    .process_after_loading = tp_process,
    .apply = tp_apply,
    .destroy = tp_destroy,
};

/* ---- a fake checkpoint ---------------------------------------------------- */

typedef struct fake_ckpt {
    qplug_tensor weight, scale, bias;
    int has_weight, has_scale, has_bias;
} fake_ckpt;

static const qplug_tensor *fake_source(void *user, const qplug_layer_desc *layer, const char *slot,
                                       const char **file)
{
    fake_ckpt *c = user;
    (void)layer;
    *file = "model-00001.safetensors";
    if (strcmp(slot, "weight") == 0 && c->has_weight)
        return &c->weight;
    if (strcmp(slot, "scale") == 0 && c->has_scale)
        return &c->scale;
    if (strcmp(slot, "bias") == 0 && c->has_bias)
        return &c->bias;
    return NULL;
}

enum { N = 4, K = 8 };
static uint8_t w_bytes[N * K / 2];
static float s_vals[N], b_vals[N];

static fake_ckpt good_ckpt(void)
{
    for (int i = 0; i < N * K / 2; i++)
        w_bytes[i] = (uint8_t)(i * 37 + 11);
    for (int i = 0; i < N; i++) {
        s_vals[i] = 0.25f * (float)(i + 1);
        b_vals[i] = -1.0f * (float)i;
    }
    fake_ckpt c = {0};
    c.weight = (qplug_tensor){"layers.0.attn.wq_a.weight", QPLUG_DT_U8, 2, {N, K / 2}, w_bytes,
                              QPLUG_DEVICE_CPU};
    c.scale = (qplug_tensor){"layers.0.attn.wq_a.scale", QPLUG_DT_F32, 1, {N}, s_vals,
                             QPLUG_DEVICE_CPU};
    c.bias = (qplug_tensor){"layers.0.attn.wq_a.bias", QPLUG_DT_F32, 1, {N}, b_vals,
                            QPLUG_DEVICE_CPU};
    c.has_weight = c.has_scale = 1;
    return c;
}

static qplug_layer_desc test_desc(uint32_t flags)
{
    qplug_layer_desc d = {0};
    d.struct_size = sizeof d;
    d.name = "layers.0.attn.wq_a";
    d.kind = QPLUG_LAYER_LINEAR;
    d.quant = QPLUG_QUANT_MXFP4;
    d.device = QPLUG_DEVICE_CPU;
    d.n = N;
    d.k = K;
    d.groups = 1;
    d.flags = flags;
    return d;
}

/* Creates the layer, runs apply into `seen` and destroys it. */
static qplug_status run_layer(qplug_runtime *rt, const qplug_plugin *p, qplug_layer_desc d,
                              fake_ckpt *c, float seen[TP_SEEN], qplug_err *err)
{
    qplug_layer_inst *l = NULL;
    qplug_status st = qplug_layer_create(rt, p, &d, fake_source, c, &l, err);
    if (st != QPLUG_OK) {
        CHECK(l == NULL);
        return st;
    }
    float x[K] = {0};
    qplug_tensor xt = {NULL, QPLUG_DT_F32, 2, {1, K}, x, QPLUG_DEVICE_CPU};
    qplug_tensor yt = {NULL, QPLUG_DT_F32, 2, {1, TP_SEEN}, seen, QPLUG_DEVICE_CPU};
    qplug_apply_args a = {0};
    a.struct_size = sizeof a;
    a.op = QPLUG_OP_FORWARD;
    a.x = &xt;
    a.y = &yt;
    st = qplug_layer_apply(l, &a, err);
    qplug_layer_destroy(l);
    return st;
}

static int has(const char *msg, const char *part)
{
    return strstr(msg, part) != NULL;
}

static void test_binding(void)
{
    qplug_registry *reg = NULL;
    qplug_runtime *rt = NULL;
    qplug_err err = {0};
    CHECK(qplug_registry_create(&reg, &err) == QPLUG_OK);
    CHECK(qplug_registry_add(reg, &tp_plugin, "test_host.c", &err) == QPLUG_OK);
    const qplug_plugin *p = qplug_registry_find(reg, "testplug");
    CHECK(p != NULL);
    qplug_policy pol;
    qplug_policy_init(&pol);
    pol.fp4_activations = true;
    CHECK(qplug_runtime_create(&pol, QPLUG_DEVICE_CPU, 2, &rt, &err) == QPLUG_OK);
    if (!p || !rt)
        goto out;

    float seen[TP_SEEN];
    /* Everything present, stored and declared as U8 [n, k/2]. */
    fake_ckpt c = good_ckpt();
    qplug_status st = run_layer(rt, p, test_desc(0), &c, seen, &err);
    CHECKF(st == QPLUG_OK, "good layer: %s", err.msg);
    CHECK(seen[0] == QPLUG_DT_U8 && seen[1] == N && seen[2] == K / 2);
    CHECK(seen[3] == w_bytes[0] && seen[4] == s_vals[0] && seen[5] == 0.0f);
    /* A CPU runtime has no CUDA device and no cuBLASLt handle. */
    CHECK(seen[6] == 1.0f && seen[7] == -1.0f && seen[8] == 0.0f && seen[9] == 1.0f);

    /* The optional bias, when present, is bound. */
    c = good_ckpt();
    c.has_bias = 1;
    st = run_layer(rt, p, test_desc(0), &c, seen, &err);
    CHECK(st == QPLUG_OK && seen[5] == 1.0f);

    /* Checkpoint F4 [n, k] presented to a U8 [n, k/2] declaration. */
    c = good_ckpt();
    c.weight.dtype = QPLUG_DT_E2M1;
    c.weight.shape[1] = K;
    st = run_layer(rt, p, test_desc(0), &c, seen, &err);
    CHECKF(st == QPLUG_OK, "F4 as U8: %s", err.msg);
    CHECK(seen[0] == QPLUG_DT_U8 && seen[1] == N && seen[2] == K / 2 && seen[3] == w_bytes[0]);

    /* Checkpoint U8 [n, k/2] presented to an F4 [n, k] declaration. */
    c = good_ckpt();
    st = run_layer(rt, p, test_desc(TP_DECLARE_F4), &c, seen, &err);
    CHECKF(st == QPLUG_OK, "U8 as F4: %s", err.msg);
    CHECK(seen[0] == QPLUG_DT_E2M1 && seen[1] == N && seen[2] == K && seen[3] == w_bytes[0]);

    /* I8 [n, k/2] is packed FP4 too. */
    c = good_ckpt();
    c.weight.dtype = QPLUG_DT_I8;
    st = run_layer(rt, p, test_desc(TP_DECLARE_F4), &c, seen, &err);
    CHECKF(st == QPLUG_OK && seen[0] == QPLUG_DT_E2M1, "I8 as F4: %s", err.msg);

    /* A missing required tensor names the layer, the slot and the file. */
    c = good_ckpt();
    c.has_scale = 0;
    memset(&err, 0, sizeof err);
    st = run_layer(rt, p, test_desc(0), &c, seen, &err);
    CHECK(st == QPLUG_ERR_NOT_FOUND && err.status == st);
    CHECKF(has(err.msg, "layers.0.attn.wq_a") && has(err.msg, "scale") &&
               has(err.msg, "model-00001.safetensors"),
           "missing: %s", err.msg);

    /* A dtype outside the declared set names the tensor, file and dtypes. */
    c = good_ckpt();
    c.scale.dtype = QPLUG_DT_BF16;
    st = run_layer(rt, p, test_desc(0), &c, seen, &err);
    CHECK(st == QPLUG_ERR_DTYPE);
    CHECKF(has(err.msg, "layers.0.attn.wq_a.scale") && has(err.msg, "BF16") &&
               has(err.msg, "F32") && has(err.msg, "model-00001.safetensors"),
           "dtype: %s", err.msg);

    /* A wrong shape names both shapes. */
    c = good_ckpt();
    c.scale.shape[0] = N + 1;
    st = run_layer(rt, p, test_desc(0), &c, seen, &err);
    CHECK(st == QPLUG_ERR_SHAPE);
    CHECKF(has(err.msg, "[5]") && has(err.msg, "[4]") && has(err.msg, "layers.0.attn.wq_a.scale"),
           "shape: %s", err.msg);

    /* Packed FP4 of the wrong size is a shape error, not a view. */
    c = good_ckpt();
    c.weight.dtype = QPLUG_DT_E2M1;
    c.weight.shape[1] = K / 2;
    st = run_layer(rt, p, test_desc(0), &c, seen, &err);
    CHECKF(st == QPLUG_ERR_SHAPE && has(err.msg, "F4 [4, 4]") && has(err.msg, "U8 [4, 4]"),
           "F4 shape: %s", err.msg);

    /* F32 where packed FP4 is declared is a dtype error. */
    c = good_ckpt();
    c.weight.dtype = QPLUG_DT_F32;
    st = run_layer(rt, p, test_desc(0), &c, seen, &err);
    CHECKF(st == QPLUG_ERR_DTYPE && has(err.msg, "U8"), "F32 for FP4: %s", err.msg);

    /* A plugin failure comes back prefixed with the plugin and layer. */
    c = good_ckpt();
    qplug_layer_desc d = test_desc(0);
    d.groups = 99;
    st = run_layer(rt, p, d, &c, seen, &err);
    CHECK(st == QPLUG_ERR_NUMERIC);
    CHECKF(strncmp(err.msg, "testplug: layers.0.attn.wq_a: ", 30) == 0 &&
               has(err.msg, "row 3 is not finite"),
           "plugin error: %s", err.msg);

    /* apply() checks its arguments before the plugin sees them. */
    c = good_ckpt();
    qplug_layer_inst *l = NULL;
    d = test_desc(0);
    st = qplug_layer_create(rt, p, &d, fake_source, &c, &l, &err);
    CHECK(st == QPLUG_OK);
    if (l) {
        qplug_apply_args a = {0};
        a.struct_size = sizeof a - 8;
        CHECK(qplug_layer_apply(l, &a, &err) == QPLUG_ERR_ARGUMENT);
        a.struct_size = sizeof a;
        CHECK(qplug_layer_apply(l, &a, &err) == QPLUG_ERR_ARGUMENT && has(err.msg, "x and y"));
        CHECK(qplug_layer_kv_entry_bytes(l) == 0);
        CHECK(qplug_layer_plugin(l) == p);
        CHECK(strcmp(qplug_layer_desc_of(l)->name, "layers.0.attn.wq_a") == 0);
        qplug_layer_destroy(l);
    }

    /* The plugin runs on the CPU only. */
    d = test_desc(0);
    d.device = QPLUG_DEVICE_CUDA;
    st = qplug_layer_create(rt, p, &d, fake_source, &c, &l, &err);
    CHECK(st == QPLUG_ERR_UNSUPPORTED && l == NULL);

out:
    qplug_runtime_destroy(rt);
    qplug_registry_destroy(reg);
}

int main(void)
{
    test_parallel_for();
    test_binding();
    return test_done();
}
