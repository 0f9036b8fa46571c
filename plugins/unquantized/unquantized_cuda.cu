/*
 * plugins/unquantized/unquantized_cuda.cu - the CUDA path of the unquantized plugin: BF16/F16/F32 linear and grouped linear, uploaded as exact F32 and
 * computed by the simple kernel (no cuBLASLt BF16 path yet),
 * through the shared linear path of plugins/common/qp_cuda_linear.cuh.
 * Fused MoE and KV-cache layers have no CUDA path here yet: prepare refuses
 * them with QPLUG_ERR_UNSUPPORTED and a message naming the layer.
 */
#include "qp_cuda_linear.cuh"

extern "C" {
#include "unquantized_internal.h"
}

extern "C" qplug_status qplug_unquantized__cuda_prepare(const qplug_host *host, qplug_unquantized__state *st)
{
    qp_cuda_lin *L = NULL;
    qplug_status r = qp_cl_prepare(host, &st->desc, &st->w, false, &L);
    st->cuda = L;
    return r;
}

extern "C" qplug_status qplug_unquantized__cuda_apply(const qplug_host *host, qplug_unquantized__state *st,
                                    const qplug_apply_args *args)
{
    return qp_cl_apply(host, (qp_cuda_lin *)st->cuda, args);
}

extern "C" void qplug_unquantized__cuda_release(const qplug_host *host, qplug_unquantized__state *st)
{
    qp_cl_release(host, (qp_cuda_lin *)st->cuda);
    st->cuda = NULL;
}
