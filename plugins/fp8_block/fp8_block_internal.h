/*
 * plugins/fp8_block/fp8_block_internal.h - the per-layer state of the
 * fp8_block plugin, shared by its CPU path (fp8_block.c) and a CUDA path
 * (fp8_block_cuda.cu) when one is built.
 */
#ifndef QPLUG_FP8_BLOCK_INTERNAL_H
#define QPLUG_FP8_BLOCK_INTERNAL_H

#include "qp_common.h"

typedef struct qplug_fp8_block__state {
    qplug_layer_desc desc;   /* a copy; desc.name stays owned by the core */
    bool ue8m0;              /* weight scales are E8M0: activations get
                                power-of-two scales too */
    qplug__wmat w;           /* linear, grouped linear: E4M3 [G*n, k] */
    qplug__wmat *experts;    /* fused MoE: w1[E], w3[E], w2[E] in one block */
    float *owned_scale;      /* FP8_TENSOR: the per-tile scales made at load */
    void *cuda;              /* the CUDA path's own state, or NULL */
} qplug_fp8_block__state;

#ifdef QPLUG_PLUGIN_CUDA
qplug_status qplug_fp8_block__cuda_prepare(const qplug_host *host, qplug_fp8_block__state *st);
qplug_status qplug_fp8_block__cuda_apply(const qplug_host *host, qplug_fp8_block__state *st,
                                         const qplug_apply_args *args);
void qplug_fp8_block__cuda_release(const qplug_host *host, qplug_fp8_block__state *st);
#endif

#endif
