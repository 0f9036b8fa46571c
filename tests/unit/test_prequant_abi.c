/* ABI 1.2 pre-quantized activations (plugin.h, qplug_apply_args.x_scale)
 * at the core: the act_format query, the checks qplug_layer_apply makes
 * before a plugin sees an x_scale, and compatibility both ways: a plugin
 * built against 1.1 (vtable ending at kv_entry_bytes) loads, answers NONE
 * and never gets an x_scale, and a caller built against 1.1 (args ending
 * at stream) still reaches the plugin, with x_scale read as NULL. */
#include <stddef.h>
#include <string.h>

#include "qplug/host.h"
#include "qplug/registry.h"
#include "testutil.h"

/* The test plugin's state: the act_format answer it was built with (the
 * descriptor's flags) and how often its slots ran. apply() reports what it
 * saw through y: y[0] = 1 when it got an x_scale, y[1] = the args'
 * struct_size, y[2] = its apply count, y[3] = its act_format count. */
typedef struct tp_state {
    qplug_act_format answer;
    int applies;
    int act_format_calls;
} tp_state;

static int tp_score(const qplug_layer_desc *layer)
{
    (void)layer;
    return 1;
}

static qplug_status tp_create(const qplug_host *host, const qplug_layer_desc *layer)
{
    (void)host;
    (void)layer;
    return QPLUG_OK;
}

static qplug_status tp_process(const qplug_host *host, const qplug_layer_desc *layer,
                               void **state)
{
    tp_state *st = host->api->alloc(host->ctx, sizeof *st, QPLUG_DEVICE_CPU);
    if (!st)
        return QPLUG_ERR_NOMEM;
    memset(st, 0, sizeof *st);
    st->answer = (qplug_act_format)layer->flags;
    *state = st;
    return QPLUG_OK;
}

static qplug_status tp_apply(const qplug_host *host, void *state, const qplug_apply_args *a)
{
    (void)host;
    tp_state *st = state;
    st->applies++;
    float *y = a->y->data;
    y[0] = qplug_apply_x_scale(a) ? 1.0f : 0.0f;
    y[1] = (float)a->struct_size;
    y[2] = (float)st->applies;
    y[3] = (float)st->act_format_calls;
    return QPLUG_OK;
}

static void tp_destroy(const qplug_host *host, void *state)
{
    host->api->free(host->ctx, state, QPLUG_DEVICE_CPU);
}

/* Casting away const is fine here: the state is the plugin's own memory,
 * and counting calls is what this test plugin is for. */
static qplug_act_format tp_act_format(const qplug_host *host, const void *state)
{
    (void)host;
    tp_state *st = (tp_state *)(uintptr_t)state;
    st->act_format_calls++;
    return st->answer;
}

/* A plugin built against 1.2. */
static const qplug_plugin p_new = {
    .abi_version = QPLUG_ABI_VERSION,
    .struct_size = sizeof(qplug_plugin),
    .name = "prequant_new",
    .description = "test",
    .devices = 1u << QPLUG_DEVICE_CPU,
    .score = tp_score,
    .create_weights = tp_create,
    .process_after_loading = tp_process,
    .apply = tp_apply,
    .destroy = tp_destroy,
    .act_format = tp_act_format,
};

/* The same plugin as one built against 1.1 would present it: its struct
 * ends at kv_entry_bytes. The act_format pointer lies past struct_size
 * here, standing for whatever memory follows a 1.1 vtable: the core must
 * never read it. */
static const qplug_plugin p_old = {
    .abi_version = (1u << 16) | 1u,
    .struct_size = offsetof(qplug_plugin, act_format),
    .name = "prequant_old",
    .description = "test",
    .devices = 1u << QPLUG_DEVICE_CPU,
    .score = tp_score,
    .create_weights = tp_create,
    .process_after_loading = tp_process,
    .apply = tp_apply,
    .destroy = tp_destroy,
    .act_format = tp_act_format,
};

static const qplug_tensor *no_source(void *user, const qplug_layer_desc *layer, const char *slot,
                                     const char **file)
{
    (void)user;
    (void)layer;
    (void)slot;
    (void)file;
    return NULL;
}

static qplug_tensor t2(qplug_dtype dt, int64_t r, int64_t c, void *data)
{
    qplug_tensor t;
    memset(&t, 0, sizeof t);
    t.name = "t";
    t.dtype = dt;
    t.device = QPLUG_DEVICE_CPU;
    t.ndim = 2;
    t.shape[0] = r;
    t.shape[1] = c;
    t.data = data;
    return t;
}

static bool has(const char *s, const char *part)
{
    return strstr(s, part) != NULL;
}

static qplug_layer_inst *make_layer(qplug_runtime *rt, const qplug_plugin *p, const char *name,
                                    qplug_act_format answer)
{
    qplug_layer_desc d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    d.name = name;
    d.kind = QPLUG_LAYER_LINEAR;
    d.device = QPLUG_DEVICE_CPU;
    d.n = 16;
    d.k = 256;
    d.groups = 1;
    d.flags = (uint32_t)answer;
    qplug_layer_inst *l = NULL;
    qplug_err err;
    qplug_status st = qplug_layer_create(rt, p, &d, no_source, NULL, &l, &err);
    CHECKF(st == QPLUG_OK, "%s", err.msg);
    return l;
}

int main(void)
{
    qplug_err err;
    qplug_status st;
    qplug_runtime *rt = NULL;
    CHECK(qplug_runtime_create(NULL, QPLUG_DEVICE_CPU, 1, &rt, &err) == QPLUG_OK);
    if (!rt)
        return test_done();

    /* The 1.1 plugin registers (the registry's own copy reads act_format
     * as NULL) and its layers answer NONE whichever vtable is used. */
    qplug_registry *reg = NULL;
    CHECK(qplug_registry_create(&reg, &err) == QPLUG_OK);
    st = qplug_registry_add(reg, &p_old, "old.so", &err);
    CHECKF(st == QPLUG_OK, "a 1.1 plugin was refused: %s", err.msg);
    const qplug_plugin *old_vt = qplug_registry_find(reg, "prequant_old");
    CHECK(old_vt && old_vt->act_format == NULL);

    uint8_t xq[2 * 256];
    float xs[2 * 2];
    float y[2 * 16];
    memset(xq, 0x38, sizeof xq); /* E4M3 1.0 */
    for (int i = 0; i < 4; i++)
        xs[i] = 0.5f;
    qplug_tensor tx = t2(QPLUG_DT_F8_E4M3, 2, 256, xq), ts = t2(QPLUG_DT_F32, 2, 2, xs),
                 ty = t2(QPLUG_DT_F32, 2, 16, y);
    qplug_apply_args a;
    memset(&a, 0, sizeof a);
    a.struct_size = sizeof a;
    a.op = QPLUG_OP_FORWARD;
    a.x = &tx;
    a.y = &ty;
    a.x_scale = &ts;

    const qplug_plugin *olds[2] = {old_vt, &p_old};
    for (int i = 0; i < 2; i++) {
        qplug_layer_inst *l =
            olds[i] ? make_layer(rt, olds[i], "layers.0.attn.wq_a",
                                 QPLUG_ACT_FORMAT_E4M3_1X128_F32)
                    : NULL;
        if (!l)
            continue;
        CHECK(qplug_layer_act_format(l) == QPLUG_ACT_FORMAT_NONE);
        memset(y, 0, sizeof y);
        st = qplug_layer_apply(l, &a, &err);
        CHECKF(st == QPLUG_ERR_UNSUPPORTED && has(err.msg, "layers.0.attn.wq_a") &&
                   has(err.msg, "prequant_old") && has(err.msg, "x_scale"),
               "old plugin + x_scale: %s (%s)", qplug_status_name(st), err.msg);
        CHECK(y[2] == 0.0f);
        /* Without x_scale the old plugin runs as before, and its
         * act_format (past its struct_size) was never called. */
        a.x_scale = NULL;
        st = qplug_layer_apply(l, &a, &err);
        CHECKF(st == QPLUG_OK && y[0] == 0.0f && y[2] == 1.0f && y[3] == 0.0f, "%s (%g %g %g)",
               err.msg, (double)y[0], (double)y[2], (double)y[3]);
        a.x_scale = &ts;
        qplug_layer_destroy(l);
    }

    /* The 1.2 plugin: the answer comes from its slot and unknown answers
     * read as NONE; both refuse an x_scale before apply. */
    qplug_act_format refused[2] = {QPLUG_ACT_FORMAT_NONE, (qplug_act_format)7};
    for (int i = 0; i < 2; i++) {
        qplug_layer_inst *l = make_layer(rt, &p_new, "layers.3.ffn.shared_experts.w1", refused[i]);
        if (!l)
            continue;
        CHECK(qplug_layer_act_format(l) == QPLUG_ACT_FORMAT_NONE);
        memset(y, 0, sizeof y);
        st = qplug_layer_apply(l, &a, &err);
        CHECKF(st == QPLUG_ERR_UNSUPPORTED && has(err.msg, "layers.3.ffn.shared_experts.w1"),
               "%s", err.msg);
        CHECK(y[2] == 0.0f);
        qplug_layer_destroy(l);
    }

    /* A layer that takes x_scale gets it only when it is well formed. */
    qplug_layer_inst *l =
        make_layer(rt, &p_new, "layers.3.attn.wq_b", QPLUG_ACT_FORMAT_E4M3_1X128_UE8M0);
    if (l) {
        CHECK(qplug_layer_act_format(l) == QPLUG_ACT_FORMAT_E4M3_1X128_UE8M0);
        CHECK(strcmp(qplug_act_format_name(qplug_layer_act_format(l)), "e4m3_1x128_ue8m0") == 0);
        st = qplug_layer_apply(l, &a, &err);
        CHECKF(st == QPLUG_OK && y[0] == 1.0f && y[2] == 1.0f, "%s", err.msg);

        /* Malformed forms, each refused before the plugin runs. */
        tx.dtype = QPLUG_DT_BF16;
        st = qplug_layer_apply(l, &a, &err);
        CHECKF(st == QPLUG_ERR_DTYPE && has(err.msg, "F8_E4M3") && has(err.msg, "wq_b"), "%s",
               err.msg);
        tx.dtype = QPLUG_DT_F8_E4M3;
        ts.dtype = QPLUG_DT_F8_E8M0;
        CHECK(qplug_layer_apply(l, &a, &err) == QPLUG_ERR_DTYPE);
        ts.dtype = QPLUG_DT_F32;
        ts.shape[1] = 3; /* m is 2 */
        st = qplug_layer_apply(l, &a, &err);
        CHECKF(st == QPLUG_ERR_SHAPE && has(err.msg, "[2, 2]"), "%s", err.msg);
        ts.shape[1] = 2;
        tx.shape[1] = 200; /* not a multiple of 128 */
        CHECK(qplug_layer_apply(l, &a, &err) == QPLUG_ERR_SHAPE);
        tx.shape[1] = 256;
        ts.device = QPLUG_DEVICE_CUDA;
        CHECK(qplug_layer_apply(l, &a, &err) == QPLUG_ERR_ARGUMENT);
        ts.device = QPLUG_DEVICE_CPU;
        a.op = QPLUG_OP_KV_WRITE;
        qplug_tensor tc = t2(QPLUG_DT_U8, 4, 4, xq);
        a.cache = &tc;
        st = qplug_layer_apply(l, &a, &err);
        CHECKF(st == QPLUG_ERR_ARGUMENT && has(err.msg, "forward"), "%s", err.msg);
        a.op = QPLUG_OP_FORWARD;
        a.cache = NULL;
        st = qplug_layer_apply(l, &a, &err);
        CHECKF(st == QPLUG_OK && y[0] == 1.0f && y[2] == 2.0f, "bad forms reached apply: %g",
               (double)y[2]);

        /* A caller built against 1.1: its struct ends at `stream`, and
         * whatever follows it in memory is not an x_scale. The plugin
         * still gets this core's struct. */
        a.struct_size = (uint32_t)offsetof(qplug_apply_args, x_scale);
        tx.dtype = QPLUG_DT_F32; /* what a 1.1 caller passes */
        st = qplug_layer_apply(l, &a, &err);
        CHECKF(st == QPLUG_OK && y[0] == 0.0f && y[1] == (float)sizeof(qplug_apply_args),
               "1.1 caller: %s", err.msg);
        /* Older than 1.1 is refused as before. */
        a.struct_size = (uint32_t)offsetof(qplug_apply_args, stream);
        CHECK(qplug_layer_apply(l, &a, &err) == QPLUG_ERR_ARGUMENT);
        qplug_layer_destroy(l);
    }
    CHECK(strcmp(qplug_act_format_name(QPLUG_ACT_FORMAT_NONE), "none") == 0);
    CHECK(strcmp(qplug_act_format_name(QPLUG_ACT_FORMAT_E4M3_1X128_F32), "e4m3_1x128_f32") == 0);

    qplug_registry_destroy(reg);
    qplug_runtime_destroy(rt);
    return test_done();
}
