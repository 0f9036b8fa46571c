/*
 * plugins/unquantized/unquantized_cuda.cu - the CUDA path of the
 * unquantized plugin: BF16/F16/F32 linear and grouped linear (sharded
 * linears after their fusion at load), uploaded as exact F32 and computed
 * by the simple kernel of plugins/common/qp_cuda_linear.cuh (no cuBLASLt
 * BF16 path yet). Fused MoE has no CUDA path here (the MoE kernels take FP8
 * and FP4 experts only) and neither has the F32 KV cache: prepare refuses
 * both with QPLUG_ERR_UNSUPPORTED.
 */
#include "qp_cuda_linear.cuh"

extern "C" {
#include "unquantized_cuda.h"
#include "unquantized_internal.h"
}

extern "C" bool qplug_unquantized__cuda_supports(const qplug_layer_desc *layer)
{
    return qp_cl_supports(layer);
}

extern "C" qplug_status qplug_unquantized__cuda_prepare(const qplug_host *host,
                                                        qplug_unquantized__state *st)
{
    qp_cuda_lin *L = NULL;
    qplug_status r = qp_cl_prepare(host, &st->desc, &st->w, false, &L);
    st->cuda = L;
    return r;
}

extern "C" qplug_status qplug_unquantized__cuda_apply(const qplug_host *host,
                                                      qplug_unquantized__state *st,
                                                      const qplug_apply_args *args)
{
    return qp_cl_apply(host, (qp_cuda_lin *)st->cuda, args);
}

extern "C" void qplug_unquantized__cuda_release(const qplug_host *host,
                                                qplug_unquantized__state *st)
{
    qp_cl_release(host, (qp_cuda_lin *)st->cuda);
    st->cuda = NULL;
}
