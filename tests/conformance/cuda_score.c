/*
 * tests/conformance/cuda_score.c - score() of every plugin of this tree for
 * layers placed on CUDA, through the real loader (qplug_registry_load_file).
 *
 * A CUDA layer the plugin's CUDA path cannot run must score 0, or the
 * resolver would hand it a layer that only fails at load. Built with CUDA
 * (QPLUG_SCORE_CUDA=1): 0 for the layers the CUDA paths do not support
 * (unquantized fused MoE and attention, fp8_block attention, an FP8 linear
 * whose k is not a multiple of 128) and > 0 for ones they do. Built without
 * CUDA: 0 for every CUDA layer. Every layer used is also checked to score
 * > 0 on the CPU, so a 0 on CUDA cannot come from a malformed descriptor.
 *
 * Usage: qplug_cuda_score <plugin name>=<path to .so> ...
 */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "qplug/error.h"
#include "qplug/plugin.h"
#include "qplug/registry.h"

#ifndef QPLUG_SCORE_CUDA
#define QPLUG_SCORE_CUDA 0
#endif

static int failed, passed;

typedef struct score_case {
    const char *plugin;
    const char *what;
    qplug_layer_kind kind;
    qplug_quant_scheme quant;
    qplug_dtype weight_dtype;
    qplug_dtype scale_dtype;
    int64_t n, k;
    int32_t groups, experts, top_k;
    /* Whether the plugin's CUDA path supports the layer (when built). */
    bool cuda_ok;
} score_case;

static const score_case CASES[] = {
    {"unquantized", "BF16 linear, k 256", QPLUG_LAYER_LINEAR, QPLUG_QUANT_NONE, QPLUG_DT_BF16,
     QPLUG_DT_F32, 512, 256, 1, 0, 0, true},
    {"unquantized", "BF16 fused MoE", QPLUG_LAYER_FUSED_MOE, QPLUG_QUANT_NONE, QPLUG_DT_BF16,
     QPLUG_DT_F32, 256, 256, 1, 8, 2, false},
    {"unquantized", "attention (F32 KV cache)", QPLUG_LAYER_ATTENTION, QPLUG_QUANT_NONE,
     QPLUG_DT_F32, QPLUG_DT_F32, 512, 512, 1, 0, 0, false},
    {"fp8_block", "FP8 block linear, k 256", QPLUG_LAYER_LINEAR, QPLUG_QUANT_FP8_BLOCK,
     QPLUG_DT_F8_E4M3, QPLUG_DT_F8_E8M0, 512, 256, 1, 0, 0, true},
    {"fp8_block", "FP8 block linear, k 200", QPLUG_LAYER_LINEAR, QPLUG_QUANT_FP8_BLOCK,
     QPLUG_DT_F8_E4M3, QPLUG_DT_F32, 512, 200, 1, 0, 0, false},
    {"fp8_block", "FP8 block fused MoE", QPLUG_LAYER_FUSED_MOE, QPLUG_QUANT_FP8_BLOCK,
     QPLUG_DT_F8_E4M3, QPLUG_DT_F32, 256, 256, 1, 8, 2, true},
    {"fp8_block", "attention (FP8 KV cache)", QPLUG_LAYER_ATTENTION, QPLUG_QUANT_FP8_BLOCK,
     QPLUG_DT_F32, QPLUG_DT_F32, 512, 512, 1, 0, 0, false},
    {"mxfp4", "MXFP4 fused MoE", QPLUG_LAYER_FUSED_MOE, QPLUG_QUANT_MXFP4, QPLUG_DT_U8,
     QPLUG_DT_F8_E8M0, 256, 256, 1, 8, 2, true},
    {"nvfp4", "NVFP4 linear, k 256", QPLUG_LAYER_LINEAR, QPLUG_QUANT_NVFP4, QPLUG_DT_U8,
     QPLUG_DT_F8_E4M3, 512, 256, 1, 0, 0, true},
    {"w4a4_megamoe", "NVFP4 fused MoE", QPLUG_LAYER_FUSED_MOE, QPLUG_QUANT_NVFP4, QPLUG_DT_U8,
     QPLUG_DT_F8_E4M3, 256, 256, 1, 8, 2, true},
};

static qplug_layer_desc desc_of(const score_case *c, qplug_device_kind device)
{
    qplug_layer_desc d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    d.name = c->what;
    d.kind = c->kind;
    d.quant = c->quant;
    d.weight_dtype = c->weight_dtype;
    d.scale_dtype = c->scale_dtype;
    d.device = device;
    d.n = c->n;
    d.k = c->k;
    d.groups = c->groups;
    d.num_experts = c->experts;
    d.top_k = c->top_k;
    return d;
}

int main(int argc, char **argv)
{
    qplug_err err;
    qplug_registry *reg = NULL;
    if (qplug_registry_create(&reg, &err) != QPLUG_OK) {
        fprintf(stderr, "cuda_score: %s\n", err.msg);
        return 1;
    }
    for (int i = 1; i < argc; i++) {
        const char *eq = strchr(argv[i], '=');
        const char *path = eq ? eq + 1 : argv[i];
        if (qplug_registry_load_file(reg, path, &err) != QPLUG_OK) {
            fprintf(stderr, "cuda_score: %s\n", err.msg);
            qplug_registry_destroy(reg);
            return 1;
        }
    }
    int tested = 0;
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) {
        const score_case *c = &CASES[i];
        const qplug_plugin *p = qplug_registry_find(reg, c->plugin);
        if (!p)
            continue;
        tested++;
        qplug_layer_desc cpu = desc_of(c, QPLUG_DEVICE_CPU);
        qplug_layer_desc gpu = desc_of(c, QPLUG_DEVICE_CUDA);
        int s_cpu = p->score(&cpu), s_gpu = p->score(&gpu);
        bool want_gpu = QPLUG_SCORE_CUDA && c->cuda_ok;
        bool ok = s_cpu > 0 && (want_gpu ? s_gpu > 0 : s_gpu == 0);
        printf("%-13s %-28s cpu %3d cuda %3d (want %s)%s\n", c->plugin, c->what, s_cpu, s_gpu,
               want_gpu ? "> 0" : "0", ok ? "" : "  FAILED");
        if (ok)
            passed++;
        else
            failed++;
    }
    qplug_registry_destroy(reg);
    if (tested == 0) {
        fprintf(stderr, "cuda_score: no plugin of the case table was loaded\n");
        return 1;
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
