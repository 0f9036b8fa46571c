/*
 * plugins/unquantized/unquantized_internal.h - the per-layer state of the
 * unquantized plugin, shared by its CPU path (unquantized.c) and a CUDA
 * path (unquantized_cuda.cu) when one is built.
 */
#ifndef QPLUG_UNQUANTIZED_INTERNAL_H
#define QPLUG_UNQUANTIZED_INTERNAL_H

#include "qp_common.h"

typedef struct qplug_unquantized__state {
    qplug_layer_desc desc;   /* a copy; desc.name stays owned by the core */
    qplug__wmat w;           /* linear, grouped linear: [G*n, k] */
    qplug__wmat *experts;    /* fused MoE: w1[E], w3[E], w2[E] in one block */
    float *owned;            /* F32 weights made at load (ModelOpt FP8, fused shards) */
    void *cuda;              /* the CUDA path's own state, or NULL */
} qplug_unquantized__state;

#ifdef QPLUG_PLUGIN_CUDA
/* Builds st->cuda from the CPU views in st (called for layer->device ==
 * QPLUG_DEVICE_CUDA after the views are set up). */
qplug_status qplug_unquantized__cuda_prepare(const qplug_host *host,
                                             qplug_unquantized__state *st);
/* apply() with device tensors. */
qplug_status qplug_unquantized__cuda_apply(const qplug_host *host,
                                           qplug_unquantized__state *st,
                                           const qplug_apply_args *args);
/* Frees st->cuda. */
void qplug_unquantized__cuda_release(const qplug_host *host, qplug_unquantized__state *st);
#endif

#endif
