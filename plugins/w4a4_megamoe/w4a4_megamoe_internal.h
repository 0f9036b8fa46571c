/*
 * plugins/w4a4_megamoe/w4a4_megamoe_internal.h - the per-layer state of
 * the w4a4_megamoe plugin and its pre-dispatch buffer layout, shared by the
 * CPU path (w4a4_megamoe.c) and a CUDA path (w4a4_megamoe_cuda.cu) when one
 * is built.
 */
#ifndef QPLUG_W4A4_MEGAMOE_INTERNAL_H
#define QPLUG_W4A4_MEGAMOE_INTERNAL_H

#include "qp_common.h"

typedef struct qplug_w4a4_megamoe__state {
    qplug_layer_desc desc;   /* a copy; desc.name stays owned by the core */
    bool nvfp4;              /* experts are NVFP4 (else MXFP4) */
    bool fp4_activations;    /* [megamoe] fp4_activations = true */
    int group;               /* activation FP4 group: 32 (MXFP4) or 16 (NVFP4) */
    /* NVFP4: the one global activation scale of the pre-dispatch packing,
     * the largest w1/w3 input_scale over all experts (so no expert's range
     * is clipped); the expert GEMMs multiply exactly this value back. */
    float dispatch_gscale;
    qplug__wmat *experts;    /* w1[E], w3[E], w2[E] in one block */
    void *cuda;              /* the CUDA path's own state, or NULL */
} qplug_w4a4_megamoe__state;

/*
 * The pre-dispatch buffer of m tokens, in the order a dispatch sends it:
 *   packed activations  m * (hidden/2 + hidden/group) bytes
 *   top-k ids           m * top_k int32
 *   top-k weights       m * top_k float
 * qplug_w4a4_megamoe__dispatch_bytes gives its size (0 for an unpackable
 * hidden size).
 */
size_t qplug_w4a4_megamoe__dispatch_bytes(int64_t m, int64_t hidden, int32_t top_k, int group);

#ifdef QPLUG_PLUGIN_CUDA
qplug_status qplug_w4a4_megamoe__cuda_prepare(const qplug_host *host,
                                              qplug_w4a4_megamoe__state *st);
qplug_status qplug_w4a4_megamoe__cuda_apply(const qplug_host *host,
                                            qplug_w4a4_megamoe__state *st,
                                            const qplug_apply_args *args);
void qplug_w4a4_megamoe__cuda_release(const qplug_host *host, qplug_w4a4_megamoe__state *st);
#endif

#endif
