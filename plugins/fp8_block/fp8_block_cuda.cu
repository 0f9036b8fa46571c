/*
 * plugins/fp8_block/fp8_block_cuda.cu - the CUDA path of the fp8_block
 * plugin: FP8 block (and ModelOpt FP8 per-tensor, already in block form)
 * linear and grouped linear through plugins/common/qp_cuda_linear.cuh, and
 * the fused MoE of FP8 block experts (F32 or E8M0 scales; W8A8 with
 * power-of-two activation scales when the weight scales are E8M0) through
 * plugins/common/qp_cuda_moe.cuh. The FP8 KV cache has no CUDA path: prepare
 * refuses attention layers with QPLUG_ERR_UNSUPPORTED.
 */
#include "qp_cuda_linear.cuh"
#include "qp_cuda_moe.cuh"

extern "C" {
#include "fp8_block_cuda.h"
#include "fp8_block_internal.h"
}

extern "C" bool qplug_fp8_block__cuda_supports(const qplug_layer_desc *layer)
{
    if (layer->kind == QPLUG_LAYER_FUSED_MOE)
        return layer->quant == QPLUG_QUANT_FP8_BLOCK && qp_cm_supports(layer);
    return qp_cl_supports(layer);
}

extern "C" qplug_status qplug_fp8_block__cuda_prepare(const qplug_host *host,
                                                      qplug_fp8_block__state *st)
{
    if (st->desc.kind == QPLUG_LAYER_FUSED_MOE) {
        qp_cuda_moe *M = NULL;
        qplug_status r = qp_cm_prepare(host, &st->desc, st->experts, QPLUG_CUDA_MOE_FP8,
                                       st->ue8m0 ? QPLUG_CUDA_SCALE_UE8M0 : QPLUG_CUDA_SCALE_F32,
                                       false, 1.0f, &M);
        st->cuda = M;
        return r;
    }
    qp_cuda_lin *L = NULL;
    qplug_status r = qp_cl_prepare(host, &st->desc, &st->w, st->ue8m0, &L);
    st->cuda = L;
    return r;
}

extern "C" qplug_status qplug_fp8_block__cuda_apply(const qplug_host *host,
                                                    qplug_fp8_block__state *st,
                                                    const qplug_apply_args *args)
{
    if (st->desc.kind == QPLUG_LAYER_FUSED_MOE)
        return qp_cm_apply(host, &st->desc, (const qp_cuda_moe *)st->cuda, args);
    return qp_cl_apply(host, (qp_cuda_lin *)st->cuda, args);
}

extern "C" void qplug_fp8_block__cuda_release(const qplug_host *host, qplug_fp8_block__state *st)
{
    if (st->desc.kind == QPLUG_LAYER_FUSED_MOE)
        qp_cm_release(host, (qp_cuda_moe *)st->cuda);
    else
        qp_cl_release(host, (qp_cuda_lin *)st->cuda);
    st->cuda = NULL;
}
