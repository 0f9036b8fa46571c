/*
 * plugins/mxfp4/mxfp4_cuda.cu - the CUDA path of the mxfp4 plugin: MXFP4 linear and grouped linear (W4A8: FP8 activations with power-of-two
 * scales, as the CPU path),
 * through the shared linear path of plugins/common/qp_cuda_linear.cuh.
 * Fused MoE and KV-cache layers have no CUDA path here yet: prepare refuses
 * them with QPLUG_ERR_UNSUPPORTED and a message naming the layer.
 */
#include "qp_cuda_linear.cuh"

extern "C" {
#include "mxfp4_internal.h"
}

extern "C" qplug_status qplug_mxfp4__cuda_prepare(const qplug_host *host, qplug_mxfp4__state *st)
{
    qp_cuda_lin *L = NULL;
    qplug_status r = qp_cl_prepare(host, &st->desc, &st->w, true, &L);
    st->cuda = L;
    return r;
}

extern "C" qplug_status qplug_mxfp4__cuda_apply(const qplug_host *host, qplug_mxfp4__state *st,
                                    const qplug_apply_args *args)
{
    return qp_cl_apply(host, (qp_cuda_lin *)st->cuda, args);
}

extern "C" void qplug_mxfp4__cuda_release(const qplug_host *host, qplug_mxfp4__state *st)
{
    qp_cl_release(host, (qp_cuda_lin *)st->cuda);
    st->cuda = NULL;
}
