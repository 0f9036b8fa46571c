/* bench_abi.h - plugin layers for `qplug bench`, built and applied through
 * the core's loader and host (bench_abi.c). Internal to bench/. */
#ifndef QPLUG_BENCH_ABI_H
#define QPLUG_BENCH_ABI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qplug/host.h"

typedef struct bench_abi bench_abi;
typedef struct bench_abi_layers bench_abi_layers;

/* Loads the plugins from the default search path and makes a CUDA runtime. */
bench_abi *bench_abi_open(char *msg, size_t msg_size);
void bench_abi_close(bench_abi *b);

/* NULL with msg "not claimed" when the plugin scores the layer 0.
 * `count` identical layers (separate device copies, for rotation past L2)
 * of a linear (groups == 1) or grouped linear with synthetic weights. */
bench_abi_layers *bench_abi_create(bench_abi *b, const char *plugin, int64_t n, int64_t k,
                                   int64_t groups, int count, char *msg, size_t msg_size);
void bench_abi_destroy(bench_abi_layers *L);

/* qplug_layer_apply of layer i % count on BF16 device x [m, G*k] -> y
 * [m, G*n], on the legacy default stream; 0 on success. */
int bench_abi_apply(bench_abi_layers *L, int i, int64_t m, void *x, void *y, bool reference,
                    char *msg, size_t msg_size);

/* A fused-MoE layer (E experts, top_k, D = hidden, I = intermediate) of
 * `plugin` ("fp8_block", "mxfp4", "nvfp4", "w4a4_megamoe"; w4a4_megamoe
 * takes MXFP4 experts unless nvfp4) with synthetic experts; fp4_act sets
 * QPLUG_LAYER_FP4_ACTIVATIONS. NULL with msg "not claimed" when the plugin
 * scores it 0. expert_bytes gets the device bytes of one expert (w1, w3,
 * w2 with their scales). */
bench_abi_layers *bench_abi_moe_create(bench_abi *b, const char *plugin, bool nvfp4, int32_t E,
                                       int32_t top_k, int64_t D, int64_t I, bool fp4_act,
                                       size_t *expert_bytes, char *msg, size_t msg_size);

/* qplug_layer_apply of the MoE layer on BF16 device x [m, D] -> y [m, D]
 * with device topk_ids I32 [m, top_k] and topk_weights F32 [m, top_k], on
 * the legacy default stream; 0 on success. */
int bench_abi_moe_apply(bench_abi_layers *L, int64_t m, void *x, void *y, void *ids,
                        void *weights, char *msg, size_t msg_size);

/* The host tensors of one synthetic linear or grouped-linear layer: the
 * weight and scale slots of its scheme, made on first request with random
 * contents drawn from `seed`, handed out again to every layer made from the
 * same source (each layer makes its own device copy). Zero it, set seed,
 * pass bench_synth_source and it to qplug_layer_create; it must outlive
 * the layers made from it, and bench_synth_free then releases the tensors. */
typedef struct bench_synth {
    qplug_tensor t[4];
    char names[4][32];
    int count;
    unsigned seed;
} bench_synth;

const qplug_tensor *bench_synth_source(void *user, const qplug_layer_desc *l, const char *slot,
                                       const char **file);
void bench_synth_free(bench_synth *src);

#endif
