/*
 * template.c - the copy-me plugin of qplug.
 *
 * It is a real, working plugin: it handles unquantized (F32 or BF16)
 * linear layers on the CPU with a plain fp32 matrix product, so the
 * conformance suite can run against it. It scores 1, lower than any real
 * method, so it never wins a layer by default; a policy rule
 * `plugin = template` forces it.
 *
 * To start a new quantization method, copy this directory and follow the
 * numbered steps below. Everything except qplug_plugin_entry is static.
 */
#include <stdint.h>
#include <string.h>

#include "qplug/plugin.h"

/*
 * Step 1. Rename. Pick a name of [a-z0-9_] (it is what policy rules name),
 * rename this file, the `template_` prefix of every function and the name
 * in the vtable at the bottom. Names must be unique across loaded plugins.
 */

/* The per-layer state built by process_after_loading and owned by the
 * plugin until destroy. */
typedef struct template_state {
    int64_t n;
    int64_t k;
    float *w; /* [n, k] fp32, allocated through host->api->alloc */
} template_state;

/* BF16 is the upper half of an fp32, so widening is exact. The plugin
 * could include qplug/codec.h for every format; this one needs only this. */
static float template_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/*
 * Step 2. score(): how well the plugin handles a layer, 0 = cannot. Look at
 * the layer kind, what the checkpoint stores (quant, weight_dtype,
 * scale_dtype) and the device. Keep it pure: no allocation, no logging.
 * Real methods score well above 1 (the unquantized path included), so the
 * template only runs where a policy names it.
 */
static int template_score(const qplug_layer_desc *layer)
{
    if (layer->kind != QPLUG_LAYER_LINEAR || layer->quant != QPLUG_QUANT_NONE)
        return 0;
    /* A sharded linear (ABI 1.1) keeps its rows in several tensors that
     * only a plugin fusing them can load; this one does not. */
    if (qplug_layer_num_shards(layer) > 0)
        return 0;
    if (layer->weight_dtype != QPLUG_DT_F32 && layer->weight_dtype != QPLUG_DT_BF16)
        return 0;
    if (layer->device != QPLUG_DEVICE_CPU || layer->n <= 0 || layer->k <= 0)
        return 0;
    return 1;
}

/*
 * Step 3. create_weights(): declare every checkpoint tensor the layer
 * needs, by slot name (plugin.h lists them), with the dtypes accepted and
 * the exact shape. The core finds the tensors, checks them and reports
 * anything missing or mismatched by layer, tensor and file, so the plugin
 * never has to.
 */
static qplug_status template_create_weights(const qplug_host *host, const qplug_layer_desc *layer)
{
    const int64_t shape[2] = {layer->n, layer->k};
    return host->api->declare(host->ctx, "weight",
                              QPLUG_DT_BIT(QPLUG_DT_F32) | QPLUG_DT_BIT(QPLUG_DT_BF16), 2, shape,
                              0);
}

/*
 * Step 4. process_after_loading(): read the bound tensors
 * (host->api->weight) and build the state apply() works from: repack,
 * convert, upload. Here: widen the weight to fp32. On failure free what
 * was allocated, leave *state NULL and return the status through
 * host->api->error so the message names what went wrong.
 */
static qplug_status template_process_after_loading(const qplug_host *host,
                                                   const qplug_layer_desc *layer, void **state)
{
    const qplug_host_api *api = host->api;
    *state = NULL;
    const qplug_tensor *w = api->weight(host->ctx, "weight");
    if (!w)
        return api->error(host->ctx, QPLUG_ERR_NOT_FOUND, "weight is not bound");

    size_t count = (size_t)layer->n * (size_t)layer->k;
    template_state *s = api->alloc(host->ctx, sizeof *s, QPLUG_DEVICE_CPU);
    if (!s)
        return api->error(host->ctx, QPLUG_ERR_NOMEM, "out of memory for the state");
    s->n = layer->n;
    s->k = layer->k;
    s->w = api->alloc(host->ctx, count * sizeof *s->w, QPLUG_DEVICE_CPU);
    if (!s->w) {
        api->free(host->ctx, s, QPLUG_DEVICE_CPU);
        return api->error(host->ctx, QPLUG_ERR_NOMEM, "out of memory for a %lld x %lld weight",
                          (long long)layer->n, (long long)layer->k);
    }
    if (w->dtype == QPLUG_DT_F32) {
        memcpy(s->w, w->data, count * sizeof *s->w);
    } else {
        const uint16_t *src = w->data;
        for (size_t i = 0; i < count; i++)
            s->w[i] = template_bf16_to_f32(src[i]);
    }
    *state = s;
    return QPLUG_OK;
}

/* One parallel_for task: output features [n0, n1) for every row of x. */
typedef struct template_task {
    const template_state *s;
    const float *x;
    float *y;
    int64_t m;
} template_task;

static void template_matmul_range(void *arg, int64_t n0, int64_t n1)
{
    const template_task *t = arg;
    const int64_t k = t->s->k, n = t->s->n;
    for (int64_t j = n0; j < n1; j++) {
        const float *wrow = t->s->w + j * k;
        for (int64_t i = 0; i < t->m; i++) {
            const float *xrow = t->x + i * k;
            float acc = 0.0f;
            for (int64_t c = 0; c < k; c++)
                acc += xrow[c] * wrow[c];
            t->y[i * n + j] = acc;
        }
    }
}

/*
 * Step 5. apply(): check the arguments (dtype, shape, device) and compute.
 * CPU loops go through host->api->parallel_for. A CUDA path would launch
 * on args->stream. Unquantized weights make NATIVE and REFERENCE
 * precision the same computation.
 */
static qplug_status template_apply(const qplug_host *host, void *state, const qplug_apply_args *args)
{
    const qplug_host_api *api = host->api;
    const template_state *s = state;
    if (!s || !args)
        return api->error(host->ctx, QPLUG_ERR_ARGUMENT, "apply: no state or arguments");
    if (args->op != QPLUG_OP_FORWARD)
        return api->error(host->ctx, QPLUG_ERR_UNSUPPORTED, "only forward is supported");
    const qplug_tensor *x = args->x;
    qplug_tensor *y = args->y;
    /* Every field below is read through x and y, so their absence is the
     * first thing to refuse. */
    if (!x || !y)
        return api->error(host->ctx, QPLUG_ERR_ARGUMENT, "apply: x or y is missing");
    if (x->device != QPLUG_DEVICE_CPU || y->device != QPLUG_DEVICE_CPU)
        return api->error(host->ctx, QPLUG_ERR_UNSUPPORTED, "x and y must be CPU tensors");
    if (x->dtype != QPLUG_DT_F32 || y->dtype != QPLUG_DT_F32)
        return api->error(host->ctx, QPLUG_ERR_DTYPE, "x is %s and y is %s, expected F32",
                          qplug_dtype_name(x->dtype), qplug_dtype_name(y->dtype));
    if (x->ndim != 2 || y->ndim != 2 || x->shape[1] != s->k || y->shape[0] != x->shape[0] ||
        y->shape[1] != s->n)
        return api->error(host->ctx, QPLUG_ERR_SHAPE,
                          "x must be [m, %lld] and y [m, %lld] with the same m", (long long)s->k,
                          (long long)s->n);
    if (x->shape[0] > 0 && (!x->data || !y->data))
        return api->error(host->ctx, QPLUG_ERR_ARGUMENT, "apply: x or y has no data");
    template_task t = {s, x->data, y->data, x->shape[0]};
    if (t.m > 0)
        api->parallel_for(host->ctx, s->n, template_matmul_range, &t);
    return QPLUG_OK;
}

/* Step 6. destroy(): free everything process_after_loading built. */
static void template_destroy(const qplug_host *host, void *state)
{
    template_state *s = state;
    if (!s)
        return;
    host->api->free(host->ctx, s->w, QPLUG_DEVICE_CPU);
    host->api->free(host->ctx, s, QPLUG_DEVICE_CPU);
}

/*
 * Step 7. Build. In the qplug tree, plugins/<name>/CMakeLists.txt holds
 * one line, `qplug_add_plugin(<name> SOURCES <name>.c)`, and the plugin
 * lands in etc/plugins.d of the build and install trees. Out of the tree,
 * see CMakeLists.standalone.txt: only the installed headers are needed,
 * never the core library. Either way, only qplug_plugin_entry may be
 * exported (the export check test enforces it).
 */
static const qplug_plugin template_plugin = {
    .abi_version = QPLUG_ABI_VERSION,
    .struct_size = sizeof(qplug_plugin),
    .name = "template",
    .description = "copy-me example: unquantized F32/BF16 linear, plain fp32 CPU matmul",
    .devices = 1u << QPLUG_DEVICE_CPU,
    .score = template_score,
    .create_weights = template_create_weights,
    .process_after_loading = template_process_after_loading,
    .apply = template_apply,
    .destroy = template_destroy,
    .kv_entry_bytes = NULL,
};

QPLUG_EXPORT const qplug_plugin *qplug_plugin_entry(void)
{
    return &template_plugin;
}
