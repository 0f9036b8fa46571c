/*
 * plugins/fp8_block/fp8_block_cuda.cu - the CUDA path of the fp8_block plugin: FP8 block (and ModelOpt FP8 per-tensor, already in block form) linear and
 * grouped linear,
 * through the shared linear path of plugins/common/qp_cuda_linear.cuh.
 * Fused MoE and KV-cache layers have no CUDA path here yet: prepare refuses
 * them with QPLUG_ERR_UNSUPPORTED and a message naming the layer.
 */
#include "qp_cuda_linear.cuh"

extern "C" {
#include "fp8_block_internal.h"
}

extern "C" qplug_status qplug_fp8_block__cuda_prepare(const qplug_host *host, qplug_fp8_block__state *st)
{
    qp_cuda_lin *L = NULL;
    qplug_status r = qp_cl_prepare(host, &st->desc, &st->w, st->ue8m0, &L);
    st->cuda = L;
    return r;
}

extern "C" qplug_status qplug_fp8_block__cuda_apply(const qplug_host *host, qplug_fp8_block__state *st,
                                    const qplug_apply_args *args)
{
    return qp_cl_apply(host, (qp_cuda_lin *)st->cuda, args);
}

extern "C" void qplug_fp8_block__cuda_release(const qplug_host *host, qplug_fp8_block__state *st)
{
    qp_cl_release(host, (qp_cuda_lin *)st->cuda);
    st->cuda = NULL;
}
