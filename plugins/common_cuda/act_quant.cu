/* (a) BF16 -> E4M3 activation quantization with one scale per 1x128 group,
 * written straight into the layout cuBLASLt's VEC128_32F B-scale mode reads
 * (float[k/128][m], m contiguous), so the GEMM needs no transpose pass. */
#include "internal.cuh"

enum { QPLUG_AQ_WARPS = 8 };

/* One warp per (row, 128-group); each lane owns 4 consecutive values. Warps
 * of a block take consecutive rows of one group, so the scale stores of a
 * block land next to each other. */
__global__ void __launch_bounds__(QPLUG_AQ_WARPS * 32)
    qplug_cuda__act_quant_kernel(const __nv_bfloat16 *__restrict__ x, int64_t m, int64_t k,
                                 int ue8m0, uint8_t *__restrict__ xq, float *__restrict__ scale)
{
    int lane = threadIdx.x & 31;
    int64_t group = (int64_t)blockIdx.x * QPLUG_AQ_WARPS + (threadIdx.x >> 5);
    if (group >= m * (k / 128))
        return;
    int64_t kb = group / m;
    int64_t row = group % m;
    int64_t off = row * k + kb * 128 + lane * 4;

    uint2 raw = *reinterpret_cast<const uint2 *>(x + off);
    float v[4];
    v[0] = __uint_as_float(raw.x << 16);
    v[1] = __uint_as_float(raw.x & 0xffff0000u);
    v[2] = __uint_as_float(raw.y << 16);
    v[3] = __uint_as_float(raw.y & 0xffff0000u);

    /* A NaN anywhere must reach the scale, so the max keeps NaNs. */
    float amax = 1e-4f;
    for (int i = 0; i < 4; i++) {
        float a = fabsf(v[i]);
        amax = (a > amax || a != a) ? a : amax;
    }
    for (int o = 16; o > 0; o >>= 1) {
        float b = __shfl_xor_sync(0xffffffffu, amax, o);
        amax = (b > amax || b != b) ? b : amax;
    }
    float s = ue8m0 ? qplug_cuda__pow2_scale(amax) : amax / 448.0f;

    unsigned q = 0;
    for (int i = 0; i < 4; i++)
        q |= qplug_cuda__to_e4m3(__fdiv_rn(v[i], s)) << (8 * i);
    *reinterpret_cast<unsigned *>(xq + off) = q;
    if (lane == 0)
        scale[kb * m + row] = s;
}

extern "C" qplug_status qplug_cuda__act_quant_fp8(const void *x, int64_t m, int64_t k,
                                                  qplug_cuda__scale_fmt fmt, void *xq,
                                                  float *scale, void *stream,
                                                  qplug_cuda__err *err)
{
    if (!x || !xq || !scale)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT, "act_quant_fp8: NULL pointer");
    if (m < 1 || k < 128 || k % 128 != 0)
        return qplug_cuda__fail(err, QPLUG_ERR_SHAPE,
                                "act_quant_fp8: shape [%lld, %lld] needs m >= 1 and k %% 128 == 0",
                                (long long)m, (long long)k);
    if (fmt != QPLUG_CUDA_SCALE_F32 && fmt != QPLUG_CUDA_SCALE_UE8M0)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT, "act_quant_fp8: unknown scale format %d",
                                (int)fmt);
    int64_t groups = m * (k / 128);
    int64_t blocks = (groups + QPLUG_AQ_WARPS - 1) / QPLUG_AQ_WARPS;
    if (blocks > 0x7fffffff)
        return qplug_cuda__fail(err, QPLUG_ERR_SHAPE, "act_quant_fp8: shape [%lld, %lld] too large",
                                (long long)m, (long long)k);
    qplug_cuda__act_quant_kernel<<<(unsigned)blocks, QPLUG_AQ_WARPS * 32, 0,
                                   (cudaStream_t)stream>>>(
        (const __nv_bfloat16 *)x, m, k, fmt == QPLUG_CUDA_SCALE_UE8M0, (uint8_t *)xq, scale);
    return qplug_cuda__check_launch(err, "act_quant_fp8");
}

__global__ void qplug_cuda__e8m0_kernel(const uint8_t *__restrict__ src, int64_t count,
                                        float *__restrict__ dst)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count)
        dst[i] = qplug_cuda__e8m0_dev(src[i]);
}

extern "C" qplug_status qplug_cuda__e8m0_to_f32(const uint8_t *src, int64_t count, float *dst,
                                                void *stream, qplug_cuda__err *err)
{
    if (!src || !dst || count < 0)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT, "e8m0_to_f32: bad arguments");
    if (count == 0)
        return QPLUG_OK;
    qplug_cuda__e8m0_kernel<<<(unsigned)((count + 255) / 256), 256, 0, (cudaStream_t)stream>>>(
        src, count, dst);
    return qplug_cuda__check_launch(err, "e8m0_to_f32");
}
