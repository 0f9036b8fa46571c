/*
 * plugins/w4a4_megamoe/w4a4_megamoe_cuda.cu - the CUDA path of the
 * w4a4_megamoe plugin: fused MoE of MXFP4 or NVFP4 experts through
 * plugins/common/qp_cuda_moe.cuh. With FP4 activations ([megamoe]
 * fp4_activations = true or QPLUG_LAYER_FP4_ACTIVATIONS) x is packed into
 * the pre-dispatch buffer (E2M1 in groups of 32 with E8M0 scales for MXFP4,
 * of 16 with E4M3 scales against the largest w1/w3 input_scale for NVFP4)
 * and the gate/up GEMMs run W4A4; the down GEMM takes FP8 h (the CPU path
 * packs h to FP4). Otherwise it is the W4A8 path of the mxfp4 and nvfp4
 * plugins.
 */
#include "qp_cuda_moe.cuh"

extern "C" {
#include "w4a4_megamoe_cuda.h"
#include "w4a4_megamoe_internal.h"
}

extern "C" bool qplug_w4a4_megamoe__cuda_supports(const qplug_layer_desc *layer)
{
    return (layer->quant == QPLUG_QUANT_MXFP4 || layer->quant == QPLUG_QUANT_NVFP4) &&
           qp_cm_supports(layer);
}

extern "C" qplug_status qplug_w4a4_megamoe__cuda_prepare(const qplug_host *host,
                                                         qplug_w4a4_megamoe__state *st)
{
    qp_cuda_moe *M = NULL;
    qplug_status r = qp_cm_prepare(
        host, &st->desc, st->experts, st->nvfp4 ? QPLUG_CUDA_MOE_NVFP4 : QPLUG_CUDA_MOE_MXFP4,
        st->nvfp4 ? QPLUG_CUDA_SCALE_F32 : QPLUG_CUDA_SCALE_UE8M0, st->fp4_activations,
        st->dispatch_gscale, &M);
    st->cuda = M;
    return r;
}

extern "C" qplug_status qplug_w4a4_megamoe__cuda_apply(const qplug_host *host,
                                                       qplug_w4a4_megamoe__state *st,
                                                       const qplug_apply_args *args)
{
    return qp_cm_apply(host, &st->desc, (const qp_cuda_moe *)st->cuda, args);
}

extern "C" void qplug_w4a4_megamoe__cuda_release(const qplug_host *host,
                                                 qplug_w4a4_megamoe__state *st)
{
    qp_cm_release(host, (qp_cuda_moe *)st->cuda);
    st->cuda = NULL;
}
