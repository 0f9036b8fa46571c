/*
 * plugins/nvfp4/nvfp4_internal.h - the per-layer state of the nvfp4
 * plugin, shared by its CPU path (nvfp4.c) and a CUDA path (nvfp4_cuda.cu)
 * when one is built.
 */
#ifndef QPLUG_NVFP4_INTERNAL_H
#define QPLUG_NVFP4_INTERNAL_H

#include "qp_common.h"

typedef struct qplug_nvfp4__state {
    qplug_layer_desc desc;   /* a copy; desc.name stays owned by the core */
    /* linear, grouped linear: packed E2M1 [G*n, k/2], E4M3 [G*n, k/16],
     * weight_scale_2 in w.global, input_scale in w.input_scale */
    qplug__wmat w;
    /* fused MoE: w1[E], w3[E], w2[E] in one block; every shard keeps its
     * own weight_scale_2 and input_scale */
    qplug__wmat *experts;
    void *cuda;              /* the CUDA path's own state, or NULL */
} qplug_nvfp4__state;

#ifdef QPLUG_PLUGIN_CUDA
qplug_status qplug_nvfp4__cuda_prepare(const qplug_host *host, qplug_nvfp4__state *st);
qplug_status qplug_nvfp4__cuda_apply(const qplug_host *host, qplug_nvfp4__state *st,
                                     const qplug_apply_args *args);
void qplug_nvfp4__cuda_release(const qplug_host *host, qplug_nvfp4__state *st);
#endif

#endif
