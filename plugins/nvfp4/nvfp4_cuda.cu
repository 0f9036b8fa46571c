/*
 * plugins/nvfp4/nvfp4_cuda.cu - the CUDA path of the nvfp4
 * plugin: NVFP4 linear and grouped linear (W4A8 on Hopper, which has no FP4
 * tensor cores: FP8 activations with F32 scales, more precise than the CPU
 * path's FP4 activations) through plugins/common/qp_cuda_linear.cuh, and
 * the fused MoE of NVFP4 experts (W4A8, each expert's w1, w3 and w2 with its
 * own weight_scale_2, applied exactly) through plugins/common/qp_cuda_moe.cuh.
 * KV-cache layers are not this plugin's; prepare refuses any other kind
 * with QPLUG_ERR_UNSUPPORTED.
 */
#include "qp_cuda_linear.cuh"
#include "qp_cuda_moe.cuh"

extern "C" {
#include "nvfp4_cuda.h"
#include "nvfp4_internal.h"
}

extern "C" bool qplug_nvfp4__cuda_supports(const qplug_layer_desc *layer)
{
    if (layer->kind == QPLUG_LAYER_FUSED_MOE)
        return layer->quant == QPLUG_QUANT_NVFP4 && qp_cm_supports(layer);
    return qp_cl_supports(layer);
}

extern "C" qplug_status qplug_nvfp4__cuda_prepare(const qplug_host *host, qplug_nvfp4__state *st)
{
    if (st->desc.kind == QPLUG_LAYER_FUSED_MOE) {
        qp_cuda_moe *M = NULL;
        qplug_status r = qp_cm_prepare(host, &st->desc, st->experts, QPLUG_CUDA_MOE_NVFP4,
                                       QPLUG_CUDA_SCALE_F32, false, 1.0f, &M);
        st->cuda = M;
        return r;
    }
    qp_cuda_lin *L = NULL;
    qplug_status r = qp_cl_prepare(host, &st->desc, &st->w, false, &L);
    st->cuda = L;
    return r;
}

extern "C" qplug_status qplug_nvfp4__cuda_apply(const qplug_host *host, qplug_nvfp4__state *st,
                                              const qplug_apply_args *args)
{
    if (st->desc.kind == QPLUG_LAYER_FUSED_MOE)
        return qp_cm_apply(host, &st->desc, (const qp_cuda_moe *)st->cuda, args);
    return qp_cl_apply(host, (qp_cuda_lin *)st->cuda, args);
}

extern "C" void qplug_nvfp4__cuda_release(const qplug_host *host, qplug_nvfp4__state *st)
{
    if (st->desc.kind == QPLUG_LAYER_FUSED_MOE)
        qp_cm_release(host, (qp_cuda_moe *)st->cuda);
    else
        qp_cl_release(host, (qp_cuda_lin *)st->cuda);
    st->cuda = NULL;
}
