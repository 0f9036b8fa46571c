/*
 * plugins/common/qp_common.h - CPU building blocks shared by the plugins
 * in this tree: weight views over checkpoint tensors in every format,
 * activation quantizers, a cache-blocked GEMM that runs on the host's
 * thread pool, the linear/grouped/fused-MoE/KV-cache drivers, and the
 * conversions process_after_loading needs.
 *
 * These sources are compiled into each plugin with hidden visibility, so
 * every plugin carries its own copy and none of these names leave the .so.
 * Nothing here keeps state between calls: scratch memory comes from
 * host->api->alloc for the duration of one call.
 */
#ifndef QPLUG_PLUGINS_QP_COMMON_H
#define QPLUG_PLUGINS_QP_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qplug/plugin.h"

/* ------------------------------------------------------------------------ */
/* Weight views                                                             */
/* ------------------------------------------------------------------------ */

typedef enum qplug__wfmt {
    QPLUG__W_F32 = 0,
    QPLUG__W_BF16 = 1,
    QPLUG__W_F16 = 2,
    QPLUG__W_FP8_BLOCK = 3, /* E4M3 + 128x128 scales, F32 or E8M0 bytes */
    QPLUG__W_MXFP4 = 4,     /* packed E2M1 + E8M0 per 32 along k */
    QPLUG__W_NVFP4 = 5      /* packed E2M1 + E4M3 per 16 along k, F32 global */
} qplug__wfmt;

/* The side of one FP8 block-scale tile. */
#define QPLUG__FP8_BLOCK 128

/*
 * A read-only view of one [rows, cols] weight matrix as the checkpoint
 * stores it. The view never owns memory: data and scale point into the
 * host's tensors (valid until destroy) or into the plugin's state.
 */
typedef struct qplug__wmat {
    qplug__wfmt fmt;
    int64_t rows, cols;
    const void *data;
    /* FP8 block: [ceil(rows/128), ceil(cols/128)] F32, or raw E8M0 bytes
     * when scale_e8m0; MXFP4: E8M0 [rows, cols/32]; NVFP4: E4M3
     * [rows, cols/16]. */
    const void *scale;
    bool scale_e8m0;
    /* NVFP4: weight_scale_2 (part of the weight) and input_scale (part of
     * the activations only, never multiplied into the weight). */
    float global;
    float input_scale;
} qplug__wmat;

/* Exact fp32 values of rows [r0, r1) into dst[(r1-r0) * cols]. */
void qplug__wmat_dequant_rows(const qplug__wmat *w, int64_t r0, int64_t r1, float *dst);

/* FP8 block only: the unscaled E4M3 values of rows [r0, r1) into dst and
 * each row's per-128 block scales into sc[(r1-r0) * ceil(cols/128)]. */
void qplug__wmat_fp8_rows(const qplug__wmat *w, int64_t r0, int64_t r1, float *dst, float *sc);

/* ------------------------------------------------------------------------ */
/* Activation quantization                                                  */
/* ------------------------------------------------------------------------ */

typedef enum qplug__act_mode {
    QPLUG__ACT_NONE = 0,      /* fp32 as given (reference, unquantized) */
    QPLUG__ACT_FP8 = 1,       /* E4M3 per token per 128, scale amax/448 */
    QPLUG__ACT_FP8_UE8M0 = 2, /* the same with power-of-two scales */
    QPLUG__ACT_NVFP4 = 3,     /* E2M1 per 16, E4M3 scales against 1/gscale */
    QPLUG__ACT_MXFP4 = 4      /* E2M1 per 32, E8M0 scales */
} qplug__act_mode;

/*
 * Quantizes rows of x (m rows of k values, row stride ldx) the way `mode`
 * prescribes. On return v[m*k] holds, per mode:
 *   FP8 modes:   the unscaled E4M3 values; sc[m * ceil(k/128)] the scales.
 *   FP4 modes:   the exactly dequantized values q * block_scale (without
 *                the NVFP4 global, which the caller multiplies in).
 *   NONE:        a copy of x.
 * A NaN or Inf in x gives QPLUG_ERR_NUMERIC (quantized modes only).
 * Parallel over rows.
 */
qplug_status qplug__act_quant(const qplug_host *host, qplug__act_mode mode, float gscale,
                              const float *x, int64_t m, int64_t k, int64_t ldx, float *v,
                              float *sc);

/* FP8 activation scale of one 128-block with absolute maximum `amax`. */
float qplug__fp8_act_scale(float amax, bool ue8m0);

/* ------------------------------------------------------------------------ */
/* GEMM                                                                     */
/* ------------------------------------------------------------------------ */

/*
 * y[i, j] = alpha * sum_k a[i, k] * W[wrow0 + j, k] for i < m, j < n.
 * With fp8_split (FP8 block weights only) the weights are consumed as
 * unscaled E4M3 values and every 128-long partial dot product is scaled by
 * a_sc[i][kb] * w_sc[j][kb]; a_sc may also be given alone (activations
 * quantized, weights dequantized exactly). Weight rows are decoded once per
 * tile of rows into per-thread scratch and reused for every row of a.
 */
typedef struct qplug__gemm_args {
    int64_t m, n, k;
    const float *a;
    int64_t lda;
    const float *a_sc; /* [m][ceil(k/128)] or NULL */
    const qplug__wmat *w;
    int64_t wrow0;
    bool fp8_split;
    float alpha;
    float *y;
    int64_t ldy;
} qplug__gemm_args;

qplug_status qplug__gemm(const qplug_host *host, const qplug__gemm_args *g);

/* ------------------------------------------------------------------------ */
/* Layer drivers                                                            */
/* ------------------------------------------------------------------------ */

/* Checks the CPU apply arguments common to every kind (dtypes, devices,
 * shapes). `groups` is 1 except for grouped linear. */
qplug_status qplug__check_forward(const qplug_host *host, const qplug_layer_desc *layer,
                                  const qplug_apply_args *args);

/*
 * Linear and grouped linear: args->x [m, G*k] -> args->y [m, G*n] through
 * the weight view w ([G*n, k]). The activation mode for the NVFP4 modes
 * takes gscale = w->input_scale and multiplies it back into the product.
 */
qplug_status qplug__linear_forward(const qplug_host *host, const qplug_layer_desc *layer,
                                   const qplug__wmat *w, qplug__act_mode mode, bool fp8_split,
                                   const qplug_apply_args *args);

/*
 * Pre-quantized activations (ABI 1.2, plugin.h qplug_apply_args.x_scale):
 * the x_scale of args, checked against the layer (x F8_E4M3 [m, G*k],
 * x_scale F32 [G*k/128, m], host memory, k % 128 == 0, y F32 [m, G*n]).
 * qplug__linear_forward takes this path by itself when x_scale is set:
 * the E4M3 codes become the unscaled activation values and the scales the
 * per-token block scales of the FP8 GEMM, exactly what qplug__act_quant
 * would have produced for the same codes and scales, so the product is
 * bit-identical to the native FP8 path. Precision REFERENCE multiplies the
 * exactly dequantized activations (code * scale) with the exact weights.
 * A NaN code or a non-finite or non-positive scale is QPLUG_ERR_NUMERIC.
 */
qplug_status qplug__check_prequant(const qplug_host *host, const qplug_layer_desc *layer,
                                   const qplug_apply_args *args);

/* The act_format a linear or grouped linear of this tree's plugins
 * reports: `fmt` for those kinds when k % 128 == 0, else NONE. */
qplug_act_format qplug__linear_act_format(const qplug_layer_desc *layer, qplug_act_format fmt);

/* The CPU reference of a fused RMSNorm + FP8 quantization (the producer
 * side of x_scale): for each of m rows of x (row stride ldx, d values, d %
 * 128 == 0), r = 1 / sqrt(mean(x^2) + eps) in fp32, v = x * r * w[c] in
 * fp32 (not rounded to BF16 first), then per 128-group amax = max(|v|,
 * 1e-4), s = amax/448 or 2^ceil(log2(amax/448)) with ue8m0, q = e4m3(v /
 * s). Writes q [m, d] (row stride d), scale [d/128][m]. x, w are fp32
 * here; a BF16 caller widens them exactly first. NaN/Inf in x gives
 * QPLUG_ERR_NUMERIC. The mean is accumulated in fp64 on the CPU (the CUDA
 * kernel uses an fp32 tree), so scales can differ in the last bit. */
qplug_status qplug__rmsnorm_quant_ref(const float *x, int64_t m, int64_t d, int64_t ldx,
                                      const float *w, float eps, bool ue8m0, uint8_t *q,
                                      float *scale);

/* Supplies the first GEMM's input rows of one expert already quantized
 * (w4a4 pre-dispatch packing): the rows of the tokens tok[0..cnt) into
 * v[cnt * D] in the layout qplug__act_quant gives for the mode. */
typedef qplug_status (*qplug__moe_gather_fn)(void *ctx, const int32_t *tok, int64_t cnt,
                                             float *v);

typedef struct qplug__moe {
    const qplug__wmat *w1, *w3, *w2; /* [E] each */
    qplug__act_mode mode1;           /* x into w1/w3 */
    qplug__act_mode mode2;           /* h into w2 */
    bool fp8_split;
    /* Optional pre-quantized input (mode1 must be an FP4 mode): the
     * first GEMM's alpha is gather_gscale instead of the shard's
     * input_scale. */
    qplug__moe_gather_fn gather;
    void *gather_ctx;
    float gather_gscale;
} qplug__moe;

/* Fused MoE forward (plugin.h semantics), tokens grouped by expert. */
qplug_status qplug__moe_forward(const qplug_host *host, const qplug_layer_desc *layer,
                                const qplug__moe *moe, const qplug_apply_args *args);

/* Checks topk_ids / topk_weights and the cache of a KV op. */
qplug_status qplug__check_kv(const qplug_host *host, const qplug_layer_desc *layer,
                             const qplug_apply_args *args, size_t entry_bytes);

/* KV-cache entries of width k: F32 (4k bytes) or E4M3 with one F32 scale
 * per 128 channels (k + 4*ceil(k/128) bytes). */
size_t qplug__kv_bytes_f32(int64_t k);
size_t qplug__kv_bytes_fp8(int64_t k);
qplug_status qplug__kv_apply(const qplug_host *host, const qplug_layer_desc *layer, bool fp8,
                             const qplug_apply_args *args);

/* ------------------------------------------------------------------------ */
/* Conversions and FP4 packing                                              */
/* ------------------------------------------------------------------------ */

/*
 * NVFP4 -> FP8 block: dequantizes w exactly and quantizes every 128x128
 * tile with its own real scale (tile amax / 448, F32), never one shared
 * value. q receives E4M3 bytes [rows, cols], scale F32
 * [ceil(rows/128), ceil(cols/128)]. Parallel over tile rows; returns
 * QPLUG_ERR_NOMEM if scratch cannot be had.
 */
qplug_status qplug__nvfp4_to_fp8_block(const qplug_host *host, const qplug__wmat *w, uint8_t *q,
                                       float *scale);

/* NVFP4 (or any view) -> BF16 [rows, cols]: exact dequantization, then
 * round to nearest even. QPLUG_ERR_NOMEM if row scratch cannot be had. */
qplug_status qplug__wmat_to_bf16(const qplug_host *host, const qplug__wmat *w, uint16_t *dst);

/* Packed FP4 activations: per token hidden/2 bytes of E2M1 followed by
 * hidden/group scale bytes (E8M0 for group 32, E4M3 for group 16). */
size_t qplug__fp4_packed_bytes_per_token(int64_t hidden, int group);

/* Packs m rows of x [m, hidden] (row stride ldx) into dst, m *
 * bytes_per_token bytes. group 32: E8M0 scales; group 16: E4M3 scales
 * against 1/gscale. QPLUG_ERR_NUMERIC on NaN or Inf. Parallel over rows. */
qplug_status qplug__fp4_pack(const qplug_host *host, int group, float gscale, const float *x,
                             int64_t m, int64_t hidden, int64_t ldx, uint8_t *dst);

/* Decodes one packed token into v[hidden] (q * block scale, exact). */
void qplug__fp4_unpack_row(int group, const uint8_t *src, int64_t hidden, float *v);

/* ------------------------------------------------------------------------ */
/* Small helpers                                                            */
/* ------------------------------------------------------------------------ */

/* Builds a weight view from a bound tensor of the given format; checks the
 * shape against [rows, cols] (packed FP4 as U8/I8 [rows, cols/2] or E2M1
 * [rows, cols]) and reports a mismatch naming the slot. */
qplug_status qplug__wmat_from_tensor(const qplug_host *host, const char *slot,
                                     const qplug_tensor *t, qplug__wfmt fmt, int64_t rows,
                                     int64_t cols, qplug__wmat *out);

/* host->api->weight with a "missing tensor" error. */
qplug_status qplug__need(const qplug_host *host, const char *slot, const qplug_tensor **out);

/* Reads an F32 scalar tensor (shape [] or [1]) into *out, naming the slot
 * on failure; rejects non-finite and non-positive values. */
qplug_status qplug__scalar(const qplug_host *host, const char *slot, float *out);

/* "experts.<e>.<w>.<slot>" into buf. */
void qplug__expert_slot(char *buf, size_t size, int32_t e, const char *w, const char *slot);

/* host->api->declare of a [rows, cols] tensor, or of a scalar (shape []). */
qplug_status qplug__declare2(const qplug_host *host, const char *slot, uint32_t mask,
                             int64_t rows, int64_t cols, uint32_t flags);
qplug_status qplug__declare0(const qplug_host *host, const char *slot, uint32_t mask,
                             uint32_t flags);

/* Zeroed host memory from host->api->alloc, or NULL. */
void *qplug__zalloc(const qplug_host *host, size_t bytes);

/* Whether the layer's dimensions are usable at all for its kind (positive
 * sizes, groups >= 1, 1 <= top_k <= E). Pure, for score(). A sharded
 * layer (ABI 1.1) is never sane here: only plugins that fuse shards accept
 * it, through qplug__shards_sane. */
bool qplug__desc_sane(const qplug_layer_desc *layer);

/* Whether the layer is a usable sharded linear: kind LINEAR, 2 to
 * QPLUG_MAX_SHARDS shards with names of [a-z0-9_] and positive row counts
 * summing to n, k positive. Pure, for score(). */
bool qplug__shards_sane(const qplug_layer_desc *layer);

/* "<shard name>.<slot>" of shard i into buf. */
void qplug__shard_slot(char *buf, size_t size, const qplug_layer_desc *layer, int32_t i,
                       const char *slot);

/*
 * Sharded linear, unquantized shards: reads every shard's "<shard>.weight"
 * (BF16, F16 or F32 [shard_n, k]) and writes the fused F32 weight [n, k],
 * shards' rows in order, into memory from host->api->alloc (*owned, which
 * the caller frees); *out views it. On failure *owned is NULL.
 */
qplug_status qplug__fuse_float_shards(const qplug_host *host, const qplug_layer_desc *layer,
                                      float **owned, qplug__wmat *out);

/* The CPU weight-row counts of a layer: linear n, grouped G*n. */
int64_t qplug__out_rows(const qplug_layer_desc *layer);

/* "experts.<e>.<w>." into buf: the slot prefix of one expert shard. */
void qplug__expert_prefix(char *buf, size_t size, int32_t e, const char *w);

/* MXFP4 module `prefix` ("" or an expert prefix): declares / binds
 * <prefix>weight U8|I8 [rows, cols/2] and <prefix>scale F8_E8M0
 * [rows, cols/32]. */
qplug_status qplug__mxfp4_declare(const qplug_host *host, const char *prefix, int64_t rows,
                                  int64_t cols);
qplug_status qplug__mxfp4_view(const qplug_host *host, const char *prefix, int64_t rows,
                               int64_t cols, qplug__wmat *out);

/* NVFP4 module `prefix`: <prefix>weight U8|I8 [rows, cols/2],
 * weight_scale F8_E4M3 [rows, cols/16], weight_scale_2 and input_scale F32
 * scalars; the view carries the shard's own global and input scale. */
qplug_status qplug__nvfp4_declare(const qplug_host *host, const char *prefix, int64_t rows,
                                  int64_t cols);
qplug_status qplug__nvfp4_view(const qplug_host *host, const char *prefix, int64_t rows,
                               int64_t cols, qplug__wmat *out);

/* Mask of the packed FP4 dtypes a plugin accepts (U8, I8). */
#define QPLUG__FP4_BYTES_MASK (QPLUG_DT_BIT(QPLUG_DT_U8) | QPLUG_DT_BIT(QPLUG_DT_I8))

/* ------------------------------------------------------------------------ */
/* Plugin skeleton                                                          */
/* ------------------------------------------------------------------------ */

/*
 * What the plugins of this tree have in common around their formats: the
 * argument checks, the state's life cycle (zeroed allocation, load, CUDA
 * prepare, release on error), the CPU/CUDA dispatch of apply and the
 * device check of score. A plugin fills one table of hooks with what is
 * specific to its format and lets the qplug__skel_* functions run the ABI
 * calls through it.
 */
typedef struct qplug__skeleton {
    const char *name;  /* the plugin's name, for messages */
    size_t state_size; /* sizeof the plugin's per-layer state */
    /* Score of a layer on the CPU path (pure); the skeleton adds the
     * device check. */
    int (*score)(const qplug_layer_desc *layer);
    /* Declares the tensors of a layer that score() accepts. */
    qplug_status (*declare)(const qplug_host *host, const qplug_layer_desc *layer);
    /* Fills the zeroed state: copies the descriptor, binds the views. On
     * failure it leaves what it allocated in the state for release. */
    qplug_status (*load)(const qplug_host *host, const qplug_layer_desc *layer, void *state);
    /* apply() with host tensors. */
    qplug_status (*cpu_apply)(const qplug_host *host, void *state, const qplug_apply_args *args);
    /* Frees what load allocated, never the state itself. */
    void (*release)(const qplug_host *host, void *state);
    /* (optional) The pre-quantized activation form the loaded layer takes
     * (plugin.h, ABI 1.2 act_format); NULL means none. */
    qplug_act_format (*act_format)(const void *state);
    /* The CUDA path; all NULL when the plugin was built without one.
     * cuda_supports may be NULL with a CUDA path built: then every layer
     * the CPU path scores is offered on CUDA too. cuda_apply and
     * cuda_release are called whether or not prepare made device state,
     * so they check that themselves (QPLUG__CUDA_HOOKS does). */
    bool (*cuda_supports)(const qplug_layer_desc *layer);
    qplug_status (*cuda_prepare)(const qplug_host *host, void *state);
    qplug_status (*cuda_apply)(const qplug_host *host, void *state, const qplug_apply_args *args);
    void (*cuda_release)(const qplug_host *host, void *state);
} qplug__skeleton;

/* score(): 0 for a CUDA layer unless the CUDA path is built and supports
 * it, else the table's score. */
int qplug__skel_score(const qplug__skeleton *sk, const qplug_layer_desc *layer);

/* create_weights(): refuses a layer scored 0, else the table's declare. */
qplug_status qplug__skel_create_weights(const qplug__skeleton *sk, const qplug_host *host,
                                        const qplug_layer_desc *layer);

/* process_after_loading(): allocates the zeroed state, loads it and, for a
 * CUDA layer, prepares the CUDA path; on failure destroys it and leaves
 * *state NULL. */
qplug_status qplug__skel_process(const qplug__skeleton *sk, const qplug_host *host,
                                 const qplug_layer_desc *layer, void **state);

/* apply(): checks state and arguments, sends device tensors to the CUDA
 * path and host tensors to cpu_apply. */
qplug_status qplug__skel_apply(const qplug__skeleton *sk, const qplug_host *host, void *state,
                               const qplug_apply_args *args);

/* act_format() (ABI 1.2): the table's act_format, or NONE without one. */
qplug_act_format qplug__skel_act_format(const qplug__skeleton *sk, const void *state);

/* destroy(): the CUDA release, the table's release, then the state. */
void qplug__skel_destroy(const qplug__skeleton *sk, const qplug_host *host, void *state);

/* The error apply() gives for device tensors and no CUDA state. */
qplug_status qplug__no_cuda_path(const qplug_host *host);

/*
 * The CUDA entry points of a plugin take its own state type, while the
 * skeleton holds a void pointer, and calling through a function pointer of
 * another type is undefined. QPLUG__CUDA_HOOKS(p) writes the three typed
 * adapters once for plugin p (state qplug_<p>__state with a `cuda` member,
 * entry points qplug_<p>__cuda_prepare/apply/release) instead of each
 * plugin writing them by hand; QPLUG__CUDA_HOOK_FIELDS(p) names them and
 * qplug_<p>__cuda_supports (from <p>_cuda.h, which the plugin includes) in
 * the skeleton table. Without QPLUG_PLUGIN_CUDA both expand to nothing.
 * QPLUG__DEFINE_PLUGIN uses both; plugins do not need them directly.
 */
#ifdef QPLUG_PLUGIN_CUDA
#define QPLUG__CUDA_HOOKS(p)                                                                    \
    static qplug_status qplug_##p##__skel_cuda_prepare(const qplug_host *host, void *state)    \
    {                                                                                           \
        return qplug_##p##__cuda_prepare(host, (qplug_##p##__state *)state);                   \
    }                                                                                           \
    static qplug_status qplug_##p##__skel_cuda_apply(const qplug_host *host, void *state,      \
                                                     const qplug_apply_args *args)             \
    {                                                                                           \
        qplug_##p##__state *st = (qplug_##p##__state *)state;                                   \
        return st->cuda ? qplug_##p##__cuda_apply(host, st, args) : qplug__no_cuda_path(host); \
    }                                                                                           \
    static void qplug_##p##__skel_cuda_release(const qplug_host *host, void *state)            \
    {                                                                                           \
        qplug_##p##__state *st = (qplug_##p##__state *)state;                                   \
        if (st->cuda)                                                                           \
            qplug_##p##__cuda_release(host, st);                                                \
    }
#define QPLUG__CUDA_HOOK_FIELDS(p)                                                              \
    .cuda_prepare = qplug_##p##__skel_cuda_prepare,                                             \
    .cuda_apply = qplug_##p##__skel_cuda_apply,                                                 \
    .cuda_release = qplug_##p##__skel_cuda_release,                                             \
    .cuda_supports = qplug_##p##__cuda_supports,
#define QPLUG__PLUGIN_DEVICES ((1u << QPLUG_DEVICE_CPU) | (1u << QPLUG_DEVICE_CUDA))
#else
#define QPLUG__CUDA_HOOKS(p)
#define QPLUG__CUDA_HOOK_FIELDS(p)
#define QPLUG__PLUGIN_DEVICES (1u << QPLUG_DEVICE_CPU)
#endif

/*
 * Defines everything plugin p exports and the glue around its hooks: the
 * CUDA adapters, the skeleton table qplug_<p>__skeleton (name #p, state
 * type qplug_<p>__state, the CPU hooks given as designated initializers in
 * the trailing arguments, e.g. `.score = mx_score, .load = mx_load`), the
 * ABI wrappers, the plugin table and qplug_plugin_entry, the only exported
 * symbol. The ABI's calls carry no pointer to the skeleton, so every
 * plugin needs its own thin wrappers; this writes them once. `kv_bytes` is
 * the kv_entry_bytes function or NULL.
 */
#define QPLUG__DEFINE_PLUGIN(p, description_, kv_bytes, ...)                                   \
    QPLUG__CUDA_HOOKS(p)                                                                        \
    static const qplug__skeleton qplug_##p##__skeleton = {                                     \
        .name = #p,                                                                             \
        .state_size = sizeof(qplug_##p##__state),                                               \
        QPLUG__CUDA_HOOK_FIELDS(p) __VA_ARGS__};                                                \
    static int qplug_##p##__abi_score(const qplug_layer_desc *layer)                          \
    {                                                                                           \
        return qplug__skel_score(&qplug_##p##__skeleton, layer);                                \
    }                                                                                           \
    static qplug_status qplug_##p##__abi_create_weights(const qplug_host *host,                \
                                                        const qplug_layer_desc *layer)         \
    {                                                                                           \
        return qplug__skel_create_weights(&qplug_##p##__skeleton, host, layer);                 \
    }                                                                                           \
    static qplug_status qplug_##p##__abi_process(const qplug_host *host,                       \
                                                 const qplug_layer_desc *layer, void **state)  \
    {                                                                                           \
        return qplug__skel_process(&qplug_##p##__skeleton, host, layer, state);                 \
    }                                                                                           \
    static qplug_status qplug_##p##__abi_apply(const qplug_host *host, void *state,            \
                                               const qplug_apply_args *args)                   \
    {                                                                                           \
        return qplug__skel_apply(&qplug_##p##__skeleton, host, state, args);                    \
    }                                                                                           \
    static void qplug_##p##__abi_destroy(const qplug_host *host, void *state)                  \
    {                                                                                           \
        qplug__skel_destroy(&qplug_##p##__skeleton, host, state);                               \
    }                                                                                           \
    static qplug_act_format qplug_##p##__abi_act_format(const qplug_host *host,                \
                                                        const void *state)                     \
    {                                                                                           \
        (void)host;                                                                             \
        return qplug__skel_act_format(&qplug_##p##__skeleton, state);                           \
    }                                                                                           \
    static const qplug_plugin qplug_##p##__plugin = {                                          \
        .abi_version = QPLUG_ABI_VERSION,                                                       \
        .struct_size = sizeof(qplug_plugin),                                                    \
        .name = #p,                                                                             \
        .description = description_,                                                            \
        .devices = QPLUG__PLUGIN_DEVICES,                                                       \
        .score = qplug_##p##__abi_score,                                                        \
        .create_weights = qplug_##p##__abi_create_weights,                                      \
        .process_after_loading = qplug_##p##__abi_process,                                      \
        .apply = qplug_##p##__abi_apply,                                                        \
        .destroy = qplug_##p##__abi_destroy,                                                    \
        .kv_entry_bytes = kv_bytes,                                                             \
        .act_format = qplug_##p##__abi_act_format,                                              \
    };                                                                                          \
    QPLUG_EXPORT const qplug_plugin *qplug_plugin_entry(void)                                  \
    {                                                                                           \
        return &qplug_##p##__plugin;                                                            \
    }

/*
 * The CPU forward of one layer by kind: attention through the KV cache (FP8
 * entries when kv_fp8, else F32), linear and grouped linear through w,
 * fused MoE through experts (w1[E], w3[E], w2[E]) with `mode` for both
 * GEMMs.
 */
typedef struct qplug__cpu_layer {
    const qplug__wmat *w;
    const qplug__wmat *experts;
    qplug__act_mode mode;
    bool fp8_split;
    bool kv_fp8;
} qplug__cpu_layer;

qplug_status qplug__cpu_forward(const qplug_host *host, const qplug_layer_desc *layer,
                                const qplug__cpu_layer *c, const qplug_apply_args *args);

/* The fused-MoE experts' modules, one call per (expert, weight): `prefix`
 * is "experts.<e>.<w>.", `which` 0, 1, 2 for w1, w3, w2, and rows x cols
 * the weight's shape ([n, k] for w1 and w3, [k, n] for w2). */
typedef qplug_status (*qplug__expert_declare_fn)(const qplug_host *host, void *ctx,
                                                 const char *prefix, int64_t rows,
                                                 int64_t cols);
typedef qplug_status (*qplug__expert_view_fn)(const qplug_host *host, void *ctx,
                                              const char *prefix, int which, int64_t rows,
                                              int64_t cols, qplug__wmat *out);

/* Declares every expert module, expert by expert (w1, w3, w2 each). */
qplug_status qplug__experts_declare(const qplug_host *host, const qplug_layer_desc *layer,
                                    qplug__expert_declare_fn fn, void *ctx);

/* Allocates the zeroed views w1[E], w3[E], w2[E] into *experts (before the
 * first view, so a view can look at earlier ones and the caller frees the
 * block on failure too) and binds them weight by weight. */
qplug_status qplug__experts_load(const qplug_host *host, const qplug_layer_desc *layer,
                                 qplug__expert_view_fn fn, void *ctx, qplug__wmat **experts);

/* Expert callbacks for FP4 experts; ctx is the layer descriptor, whose
 * quant picks NVFP4 modules (QPLUG_QUANT_NVFP4) or MXFP4 modules. */
qplug_status qplug__fp4_expert_declare(const qplug_host *host, void *ctx, const char *prefix,
                                       int64_t rows, int64_t cols);
qplug_status qplug__fp4_expert_view(const qplug_host *host, void *ctx, const char *prefix,
                                    int which, int64_t rows, int64_t cols, qplug__wmat *out);

#endif
