/*
 * qplug/plugin.h - THE plugin ABI of qplug. This is the one header a
 * quantization-method plugin includes (it pulls in status.h and tensor.h).
 *
 * A plugin is a shared object that exports exactly one symbol:
 *
 *     const qplug_plugin *qplug_plugin_entry(void);
 *
 * Everything else in it is static and built with hidden visibility. The core
 * dlopen()s every *.so in its plugin directories with RTLD_NOW|RTLD_LOCAL,
 * calls the entry point, checks `abi_version` and `struct_size`, and keeps
 * the library open for as long as any layer built by it lives.
 *
 * The life of one layer (a linear, a grouped linear, a KV cache or a fused
 * MoE) handled by a plugin:
 *
 *   1. score()                 the resolver asks every plugin how well it
 *                              handles the layer; 0 means "cannot".
 *   2. create_weights()        the plugin declares, through host->api->declare,
 *                              the checkpoint tensors it expects for the layer
 *                              (slot name, accepted dtypes, shape).
 *   3. (the core maps checkpoint tensors to the declared slots, checks dtype
 *      and shape, and reports anything missing or mismatched by name and file)
 *   4. process_after_loading() the plugin reads its slots (host->api->weight),
 *                              repacks, converts and uploads, and returns an
 *                              opaque per-layer state.
 *   5. apply()                 any number of times: compute on a stream.
 *   6. destroy()               frees the per-layer state.
 *
 * Rules every plugin follows:
 *   - Never abort, exit or print: every failure is a qplug_status, with a
 *     one-line message recorded through host->api->error().
 *   - No work at dlopen time and no global mutable state: everything lives
 *     in the per-layer state returned by process_after_loading.
 *   - Never link the core: everything the plugin needs from the host comes
 *     through the qplug_host_api function table.
 *
 * Versioning (SQLite-extension style): structs here are append-only. Each
 * field added after 1.0 carries a "since 1.N" comment. The core never reads
 * a plugin slot that lies beyond the plugin's `struct_size`, and a plugin
 * must never read a host-table slot beyond the host's `struct_size`.
 * A change to the major number means an incompatible layout; the loader
 * refuses such a plugin with a message naming the file and both versions.
 */
#ifndef QPLUG_PLUGIN_H
#define QPLUG_PLUGIN_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "qplug/status.h"
#include "qplug/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QPLUG_ABI_VERSION_MAJOR 1u
#define QPLUG_ABI_VERSION_MINOR 2u
#define QPLUG_ABI_VERSION ((QPLUG_ABI_VERSION_MAJOR << 16) | QPLUG_ABI_VERSION_MINOR)
#define QPLUG_ABI_MAJOR(v) ((uint32_t)(v) >> 16)
#define QPLUG_ABI_MINOR(v) ((uint32_t)(v)&0xffffu)

/* The name of the one exported symbol, for dlsym. */
#define QPLUG_PLUGIN_ENTRY_SYMBOL "qplug_plugin_entry"

/* ------------------------------------------------------------------------ */
/* Layers                                                                   */
/* ------------------------------------------------------------------------ */

/* The four kinds of layer the resolver routes (architecture.md). */
typedef enum qplug_layer_kind {
    /* y[m, n] = x[m, :] . W[n, :]; W is [n, k]. */
    QPLUG_LAYER_LINEAR = 0,
    /* DeepSeek V4 wo_a: `groups` independent linears. W is [groups*n, k];
     * group g maps x[m, g*k:(g+1)*k] to y[m, g*n:(g+1)*n]. */
    QPLUG_LAYER_GROUPED_LINEAR = 1,
    /* KV-cache quantization: entries of width k are stored and read back. */
    QPLUG_LAYER_ATTENTION = 2,
    /* Routed experts of one MoE layer: for each token, the weighted sum over
     * its top-k experts of w2 . (silu(min(w1 x, L)) * clamp(w3 x, -L, L)),
     * with n = intermediate size I and k = hidden size D. */
    QPLUG_LAYER_FUSED_MOE = 3
} qplug_layer_kind;

/* What the checkpoint stores for a layer, as the resolver decided it from
 * the checkpoint's config and the tensors present. */
typedef enum qplug_quant_scheme {
    QPLUG_QUANT_NONE = 0,          /* BF16 / F16 / F32 weights */
    QPLUG_QUANT_FP8_BLOCK = 1,     /* E4M3 + 128x128 scales (F32 or E8M0) */
    QPLUG_QUANT_MXFP4 = 2,         /* E2M1 + E8M0 per 32 along k */
    QPLUG_QUANT_NVFP4 = 3,         /* E2M1 + E4M3 per 16 + F32 global */
    QPLUG_QUANT_FP8_TENSOR = 4,    /* ModelOpt FP8: E4M3 + one F32 scale */
    QPLUG_QUANT_FP8_CHANNEL = 5    /* ModelOpt FP8_PER_CHANNEL_PER_TOKEN */
} qplug_quant_scheme;

/* since 1.1: the most shards one sharded linear layer may have. */
#define QPLUG_MAX_SHARDS 4

/* Flags of qplug_layer_desc.flags. */
enum {
    /* [megamoe] fp4_activations = true: pack activations to FP4. */
    QPLUG_LAYER_FP4_ACTIVATIONS = 1u << 0
};

/*
 * Everything a plugin may know about a layer. The core owns the struct and
 * keeps it alive for the life of the layer.
 */
typedef struct qplug_layer_desc {
    uint32_t struct_size;          /* sizeof(qplug_layer_desc) of the core */
    const char *name;              /* official name: "layers.0.attn.wq_a",
                                      "layers.3.ffn.experts", "mtp.0.e_proj" */
    qplug_layer_kind kind;
    qplug_quant_scheme quant;      /* what the checkpoint stores */
    qplug_dtype weight_dtype;      /* QPLUG_QUANT_NONE: BF16, F16 or F32 */
    qplug_dtype scale_dtype;       /* FP8_BLOCK: F32 or F8_E8M0 */
    qplug_device_kind device;      /* where apply() will run */
    int64_t n;                     /* out features (per group; MoE: I) */
    int64_t k;                     /* in features (per group; MoE: D) */
    int32_t groups;                /* GROUPED_LINEAR: G; otherwise 1 */
    int32_t num_experts;           /* FUSED_MOE: E */
    int32_t top_k;                 /* FUSED_MOE: experts per token */
    float swiglu_limit;            /* FUSED_MOE: clamp L; 0 = no clamp */
    uint32_t flags;                /* QPLUG_LAYER_* */

    /*
     * since 1.1: sharded linear layers. A sharded LINEAR layer (num_shards
     * >= 2) is one projection whose checkpoint keeps its row blocks as
     * separate tensors, e.g. the DeepSeek V4 compressor: shards "wkv" and
     * "wgate". Its n is the sum of shard_n. Each shard's tensors are bound
     * under the slots "<shard_name>.<slot>" ("wkv.weight", "wgate.weight",
     * "wkv.scale", ...), each with its own scales; process_after_loading
     * fuses them into one [n, k] weight with the shards' rows in order
     * (shard 0 first), so y[:, 0:shard_n[0]] is shard 0's output, and so
     * on. Shards may carry different scales (NVFP4: different
     * weight_scale_2): a plugin handles each exactly or scores 0.
     * num_shards 0 or 1 means not sharded, and then the two arrays are
     * unused. The core scores a plugin built against ABI 1.0 as 0 for
     * sharded layers, since it cannot know about shards; a plugin built
     * against 1.1 that does not fuse shards must score them 0 itself.
     * Read these fields through qplug_layer_num_shards(), which also
     * answers 0 for a descriptor from a core older than 1.1.
     */
    int32_t num_shards;
    const char *shard_names[QPLUG_MAX_SHARDS];
    int64_t shard_n[QPLUG_MAX_SHARDS];
} qplug_layer_desc;

/* since 1.1: the number of shards of a sharded layer (>= 2), or 0 when the
 * layer is not sharded or its descriptor predates the shard fields. */
static inline int32_t qplug_layer_num_shards(const qplug_layer_desc *layer)
{
    if (layer->struct_size < offsetof(qplug_layer_desc, shard_n) + sizeof layer->shard_n)
        return 0;
    return layer->num_shards > 1 ? layer->num_shards : 0;
}

/* ------------------------------------------------------------------------ */
/* Slot names                                                               */
/* ------------------------------------------------------------------------ */
/*
 * Plugins name the tensors they declare by slot names relative to the layer;
 * the core maps both checkpoint naming schemes (official DeepSeek and
 * transformers/ModelOpt) onto them:
 *
 *   linear, grouped_linear:  "weight", "scale"            (DeepSeek FP8/MXFP4)
 *                            "weight_scale", "weight_scale_2", "input_scale"
 *                                                         (ModelOpt)
 *   fused_moe:               "experts.<e>.<w>.<slot>" with <w> one of w1
 *                            (gate), w3 (up), w2 (down) and <slot> as above,
 *                            e.g. "experts.17.w3.weight_scale_2".
 *   attention:               none (the KV cache is quantized on the fly).
 *   sharded linear (1.1):    "<shard_name>.<slot>" per shard, with <slot>
 *                            as for linear, e.g. "wkv.weight",
 *                            "wgate.weight_scale_2".
 *
 * Packed FP4 weights may be declared as U8/I8 [n, k/2] or as E2M1 [n, k]:
 * the core presents the checkpoint bytes in the dtype and shape declared.
 */

/* Flags of host->api->declare(). */
enum {
    /* The slot may be absent from the checkpoint (weight() returns NULL). */
    QPLUG_DECL_OPTIONAL = 1u << 0
};

/* ------------------------------------------------------------------------ */
/* The host function table                                                  */
/* ------------------------------------------------------------------------ */

typedef enum qplug_log_level {
    QPLUG_LOG_DEBUG = 0,
    QPLUG_LOG_INFO = 1,
    QPLUG_LOG_WARN = 2,
    QPLUG_LOG_ERROR = 3
} qplug_log_level;

typedef void (*qplug_range_fn)(void *arg, int64_t begin, int64_t end);

typedef struct qplug_host_api {
    uint32_t struct_size;          /* sizeof(qplug_host_api) of the core */

    /* Logs a line through the host's log sink (which the host application
     * may replace). */
    void (*log)(void *ctx, qplug_log_level level, const char *fmt, ...);

    /* Records a one-line error message for the current call and returns
     * `status`, so a plugin writes `return api->error(ctx, QPLUG_ERR_SHAPE,
     * "...")`. The core prefixes the plugin and layer names. */
    qplug_status (*error)(void *ctx, qplug_status status, const char *fmt, ...);

    /* create_weights only: declares one checkpoint tensor of the layer.
     * dtype_mask is a set of QPLUG_DT_BIT(dtype); shape has ndim entries. */
    qplug_status (*declare)(void *ctx, const char *slot, uint32_t dtype_mask,
                            int32_t ndim, const int64_t *shape, uint32_t flags);

    /* process_after_loading only: the tensor bound to a declared slot, or
     * NULL for an absent optional slot. The data is host memory that stays
     * valid and unchanged until destroy() of this layer has returned, so a
     * CPU plugin may keep pointers into it instead of copying. */
    const qplug_tensor *(*weight)(void *ctx, const char *slot);

    /* Memory for the plugin's state; CUDA memory is device memory. */
    void *(*alloc)(void *ctx, size_t bytes, qplug_device_kind device);
    void (*free)(void *ctx, void *ptr, qplug_device_kind device);

    /* Runs fn over [0, n) split into ranges across the host's CPU threads
     * and returns when all are done. Use it for every CPU loop that matters. */
    void (*parallel_for)(void *ctx, int64_t n, qplug_range_fn fn, void *arg);

    /* A policy option, e.g. ("megamoe", "fp4_activations"); NULL if unset. */
    const char *(*option)(void *ctx, const char *section, const char *key);

    /* CUDA only (NULL on a CPU-only host): the cublasLtHandle_t and the
     * ncclComm_t of the current device (the comm is NULL without NCCL or
     * with one rank), and the CUDA device ordinal. */
    void *(*cublaslt)(void *ctx);
    void *(*nccl_comm)(void *ctx);
    int (*cuda_device)(void *ctx);
} qplug_host_api;

/* Passed to every plugin call: the table and the context its slots take. */
typedef struct qplug_host {
    const qplug_host_api *api;
    void *ctx;
} qplug_host;

/* ------------------------------------------------------------------------ */
/* apply()                                                                  */
/* ------------------------------------------------------------------------ */

typedef enum qplug_precision {
    /* The plugin's real path: activations quantized as the format
     * prescribes, fp32 accumulation. */
    QPLUG_PRECISION_NATIVE = 0,
    /* Weights dequantized exactly, activations not quantized, fp32 math. */
    QPLUG_PRECISION_REFERENCE = 1
} qplug_precision;

typedef enum qplug_op {
    QPLUG_OP_FORWARD = 0,          /* linear, grouped linear, fused MoE */
    QPLUG_OP_KV_WRITE = 1,         /* attention: store x rows in the cache */
    QPLUG_OP_KV_READ = 2           /* attention: load cache rows into y */
} qplug_op;

/*
 * Arguments of apply(). On the CPU x and y are F32; on CUDA they are BF16
 * (or F32) device tensors and `stream` is a cudaStream_t. A plugin returns
 * QPLUG_ERR_DTYPE / QPLUG_ERR_SHAPE for anything else, and QPLUG_ERR_NUMERIC
 * when native quantization meets a NaN or Inf in x.
 *
 *   linear:          x [m, k]             -> y [m, n]
 *   grouped_linear:  x [m, groups*k]      -> y [m, groups*n]
 *   fused_moe:       x [m, k], topk_ids I32 [m, top_k] (-1 = skip),
 *                    topk_weights F32 [m, top_k] -> y [m, k] (overwritten)
 *   attention:       KV_WRITE x [m, k] into cache rows [row0, row0+m);
 *                    KV_READ cache rows [row0, row0+m) into y [m, k].
 *                    cache is U8 [rows, kv_entry_bytes(layer)].
 */
typedef struct qplug_apply_args {
    uint32_t struct_size;          /* sizeof(qplug_apply_args) of the core */
    qplug_op op;
    qplug_precision precision;
    const qplug_tensor *x;
    qplug_tensor *y;
    const qplug_tensor *topk_ids;
    const qplug_tensor *topk_weights;
    qplug_tensor *cache;
    int64_t row0;
    void *stream;

    /*
     * since 1.2: pre-quantized activations. NULL means x is BF16/F32 as
     * above (the only form before 1.2). When set, the producer of x (e.g.
     * a fused RMSNorm + quantization kernel) has already quantized it, the
     * layer skips its own activation quantization, and:
     *
     *   x        F8_E4M3 [m, K], row-major with row stride K, where K = k
     *            (linear) or groups*k (grouped linear); K % 128 == 0.
     *   x_scale  F32 [K/128, m]: element [kb][i] (at kb*m + i) is the
     *            scale of x[i, kb*128 .. kb*128+127], so the activation
     *            stands for e4m3(x[i, c]) * x_scale[c/128][i]. This is
     *            the m-contiguous layout cuBLASLt's VEC128_32F B-scale
     *            mode reads (docs/formats.md), the same on CPU and CUDA;
     *            for a grouped layer group g's scales are the rows
     *            g*(k/128) .. (g+1)*(k/128)-1.
     *
     * Both tensors live on the device of y (host memory on the CPU path,
     * device memory on CUDA). Only forward calls of layers whose act_format
     * (below) is not QPLUG_ACT_FORMAT_NONE take it: the core refuses an
     * x_scale for any other layer, naming the layer, before the plugin is
     * called, so plugins built against 1.0/1.1 never see one. Precision
     * NATIVE computes with the E4M3 codes as the format's GEMM does;
     * REFERENCE uses the exactly dequantized activations in fp32.
     * A plugin reads this field through qplug_apply_x_scale(), which also
     * answers NULL for an args struct from a core older than 1.2.
     */
    const qplug_tensor *x_scale;
} qplug_apply_args;

/* since 1.2: args->x_scale, or NULL when it is unset or the caller's
 * struct predates it. */
static inline const qplug_tensor *qplug_apply_x_scale(const qplug_apply_args *args)
{
    if (args->struct_size < offsetof(qplug_apply_args, x_scale) + sizeof args->x_scale)
        return NULL;
    return args->x_scale;
}

/*
 * since 1.2: which pre-quantized activation form a layer takes in
 * qplug_apply_args.x_scale, as the plugin's act_format slot reports it.
 * Both non-NONE forms are E4M3 x with one F32 scale per 1x128 group in
 * the layout above; they differ in the rule the producer must use for
 * the scales to make the result bit-identical to the layer's own native
 * quantization of the same BF16/F32 activations (per group of 128, amax
 * = max(|x|, 1e-4); q = e4m3(x / s), nearest even, saturating at 448):
 *
 *   E4M3_1X128_F32    s = amax / 448 (checkpoints with F32 weight scales,
 *                     e.g. V4 Flash-Base, and the NVFP4 prefill path's
 *                     FP8 activations).
 *   E4M3_1X128_UE8M0  s = 2^ceil(log2(amax / 448)): the value of a UE8M0
 *                     (E8M0) scale byte, still stored as an F32 holding
 *                     that power of two, because Hopper's block-scaled
 *                     FP8 GEMM (cuBLASLt VEC128_32F) reads F32 scales
 *                     (checkpoints with `scale_fmt: ue8m0`, V4 Flash/Pro,
 *                     and MXFP4's W4A8 path). An F8_E8M0 byte tensor would
 *                     save 3 bytes per 128 activations (about 2% of x) and
 *                     is not accepted.
 *
 * A layer computes with whatever scales it is given; the form says which
 * rule reproduces its native path exactly.
 */
typedef enum qplug_act_format {
    QPLUG_ACT_FORMAT_NONE = 0,
    QPLUG_ACT_FORMAT_E4M3_1X128_F32 = 1,
    QPLUG_ACT_FORMAT_E4M3_1X128_UE8M0 = 2
} qplug_act_format;

/* ------------------------------------------------------------------------ */
/* The plugin vtable                                                        */
/* ------------------------------------------------------------------------ */

typedef struct qplug_plugin {
    uint32_t abi_version;          /* QPLUG_ABI_VERSION the plugin built with */
    uint32_t struct_size;          /* sizeof(qplug_plugin) it built with */
    const char *name;              /* unique, [a-z0-9_]+, e.g. "fp8_block" */
    const char *description;       /* one line, for `qplug plan` and logs */
    uint32_t devices;              /* bit (1 << qplug_device_kind) per device
                                      that apply() supports */

    /* How well the plugin handles `layer` on layer->device: 0 = cannot,
     * higher is better. Pure: no allocation, no logging. The resolver
     * picks the highest score unless a policy rule names a plugin. */
    int (*score)(const qplug_layer_desc *layer);

    /* Declares the checkpoint tensors of the layer (host->api->declare). */
    qplug_status (*create_weights)(const qplug_host *host, const qplug_layer_desc *layer);

    /* Builds the per-layer state from the bound tensors; *state is owned by
     * the plugin and released by destroy(). On failure *state is NULL and
     * nothing is leaked. */
    qplug_status (*process_after_loading)(const qplug_host *host,
                                          const qplug_layer_desc *layer, void **state);

    /* Computes one call (see qplug_apply_args). Thread-compatible: the host
     * never calls apply() on the same state from two threads at once. */
    qplug_status (*apply)(const qplug_host *host, void *state, const qplug_apply_args *args);

    /* Frees a state from process_after_loading. NULL is allowed. */
    void (*destroy)(const qplug_host *host, void *state);

    /* (optional) attention layers: bytes of one cached entry of width
     * layer->k. NULL when the plugin claims no attention layers. */
    size_t (*kv_entry_bytes)(const qplug_layer_desc *layer);

    /* since 1.2 (optional): the pre-quantized activation form
     * (qplug_apply_args.x_scale) that apply() accepts for the layer whose
     * state process_after_loading returned; QPLUG_ACT_FORMAT_NONE, or a
     * NULL slot, or a plugin whose struct_size ends before this slot,
     * means "BF16/F32 x only". Pure and cheap: the host may ask before
     * every apply. The answer must not change during the layer's life. A
     * plugin that answers a non-NONE form takes x_scale at every m at
     * which it takes BF16/F32 x, and where its native path quantizes
     * activations to that form itself it computes, at precision NATIVE,
     * bit for bit what that path computes when it gets the same codes and
     * scales. (A native path that
     * quantizes to something else, e.g. NVFP4's FP4 activations on the
     * CPU, runs the W4A8 product of the given codes instead, and its
     * header says so.) */
    qplug_act_format (*act_format)(const qplug_host *host, const void *state);
} qplug_plugin;

/* The entry point's type and the symbol every plugin defines. */
typedef const qplug_plugin *(*qplug_plugin_entry_fn)(void);

#if defined(__GNUC__)
#define QPLUG_EXPORT __attribute__((visibility("default")))
#else
#define QPLUG_EXPORT
#endif

#ifdef __cplusplus
}
#endif
#endif
