/*
 * plugins/mxfp4/mxfp4_internal.h - the per-layer state of the mxfp4
 * plugin, shared by its CPU path (mxfp4.c) and a CUDA path (mxfp4_cuda.cu)
 * when one is built.
 */
#ifndef QPLUG_MXFP4_INTERNAL_H
#define QPLUG_MXFP4_INTERNAL_H

#include "qp_common.h"

typedef struct qplug_mxfp4__state {
    qplug_layer_desc desc;   /* a copy; desc.name stays owned by the core */
    qplug__wmat w;           /* linear: packed E2M1 [n, k/2] + E8M0 [n, k/32] */
    qplug__wmat *experts;    /* fused MoE: w1[E], w3[E], w2[E] in one block */
    void *cuda;              /* the CUDA path's own state, or NULL */
} qplug_mxfp4__state;

#ifdef QPLUG_PLUGIN_CUDA
qplug_status qplug_mxfp4__cuda_prepare(const qplug_host *host, qplug_mxfp4__state *st);
qplug_status qplug_mxfp4__cuda_apply(const qplug_host *host, qplug_mxfp4__state *st,
                                     const qplug_apply_args *args);
void qplug_mxfp4__cuda_release(const qplug_host *host, qplug_mxfp4__state *st);
#endif

#endif
