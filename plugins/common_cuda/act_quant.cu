/* (a) BF16 -> E4M3 activation quantization with one scale per 1x128 group,
 * written straight into the layout cuBLASLt's VEC128_32F B-scale mode reads
 * (float[k/128][m], m contiguous), so the GEMM needs no transpose pass. */
#include "internal.cuh"

/* A block quantizes a tile of QPLUG_AQ_ROWS rows by QPLUG_AQ_KB 128-groups.
 * Each half-warp owns one (row, group) at a time: 16 lanes x 16-byte loads
 * cover the 128 values. The eight loads of a thread are all issued before
 * any is used, so enough bytes are in flight to approach the copy
 * bandwidth; the v5 kernel (one 8-byte load per thread) reached about a
 * third of it. The scales of the tile go through shared memory so that the
 * store of the m-contiguous layout is QPLUG_AQ_KB runs of QPLUG_AQ_ROWS
 * floats instead of scattered 4-byte writes.
 *
 * The arithmetic is kept lean because at one wave of blocks it does not
 * hide behind the loads (measured on H200: the first one-pass version was
 * still 2x its byte floor with an IEEE division per value). The maximum is
 * taken on the magnitude bits as unsigned integers, which orders
 * non-negative floats and puts NaN above Inf, so a NaN reaches the scale
 * without extra tests. With UE8M0 scales the division by s is a multiply
 * by 1/s, exact because s is a power of two; F32 scales keep the division.
 * The E4M3 conversion handles two values per instruction. */
enum {
    QPLUG_AQ_ROWS = 32,
    QPLUG_AQ_KB = 4,
    QPLUG_AQ_THREADS = 256,
    QPLUG_AQ_PER_HALF = QPLUG_AQ_ROWS * QPLUG_AQ_KB / (QPLUG_AQ_THREADS / 16)
};

template <bool UE8M0>
__global__ void __launch_bounds__(QPLUG_AQ_THREADS)
    qplug_cuda__act_quant_kernel(const __nv_bfloat16 *__restrict__ x, int64_t ldx, int64_t m,
                                 int64_t kt, uint8_t *__restrict__ xq, float *__restrict__ scale)
{
    __shared__ float tile_scale[QPLUG_AQ_KB][QPLUG_AQ_ROWS];
    int64_t r0 = (int64_t)blockIdx.x * QPLUG_AQ_ROWS;
    int64_t kb0 = (int64_t)blockIdx.y * QPLUG_AQ_KB;
    int half = threadIdx.x >> 4, hl = threadIdx.x & 15;
    int64_t k = kt * 128;

    uint4 raw[QPLUG_AQ_PER_HALF];
#pragma unroll
    for (int i = 0; i < QPLUG_AQ_PER_HALF; i++) {
        int j = half + (QPLUG_AQ_THREADS / 16) * i;
        int64_t row = r0 + (j % QPLUG_AQ_ROWS), kb = kb0 + j / QPLUG_AQ_ROWS;
        if (row < m && kb < kt)
            raw[i] = qplug_cuda__ld_stream(x + row * ldx + kb * 128 + hl * 8);
        else
            raw[i] = make_uint4(0u, 0u, 0u, 0u);
    }

#pragma unroll
    for (int i = 0; i < QPLUG_AQ_PER_HALF; i++) {
        int j = half + (QPLUG_AQ_THREADS / 16) * i;
        int rl = j % QPLUG_AQ_ROWS, kbl = j / QPLUG_AQ_ROWS;
        int64_t row = r0 + rl, kb = kb0 + kbl;
        /* Rows past m and groups past k/128 (tile edges: every row but one
         * at m = 1) are skipped by the whole half-warp, so the reduction
         * below names only its own half-warp's lanes. Computing them cost
         * about 9 us per call at m <= 16 with F32 scales (bench h200_v7:
         * nvfp4 abi 21 us against 12 us direct), apparently because every
         * zero sent the IEEE division to its slow path. */
        if (row >= m || kb >= kt)
            continue;
        unsigned half_mask = (threadIdx.x & 16) ? 0xffff0000u : 0x0000ffffu;
        unsigned w[4] = {raw[i].x, raw[i].y, raw[i].z, raw[i].w};
        /* |x| as float bits, maximised as unsigned integers (see above);
         * the floor 1e-4 joins in the same way. The xor offsets below 16
         * keep the reduction inside the half-warp. */
        unsigned amax_bits = __float_as_uint(1e-4f);
        for (int t = 0; t < 4; t++) {
            unsigned a = w[t] & 0x7fff7fffu;
            amax_bits = max(amax_bits, max(a << 16, a & 0xffff0000u));
        }
        for (int o = 8; o > 0; o >>= 1)
            amax_bits = max(amax_bits, __shfl_xor_sync(half_mask, amax_bits, o));
        float amax = __uint_as_float(amax_bits);
        float s = UE8M0 ? qplug_cuda__pow2_scale(amax) : amax / 448.0f;
        float inv = UE8M0 ? 1.0f / s : 0.0f;
        unsigned q[2];
        for (int t = 0; t < 4; t++) {
            float2 f = make_float2(__uint_as_float(w[t] << 16),
                                   __uint_as_float(w[t] & 0xffff0000u));
            if (UE8M0) {
                f.x *= inv;
                f.y *= inv;
            } else {
                f.x = __fdiv_rn(f.x, s);
                f.y = __fdiv_rn(f.y, s);
            }
            unsigned pair = __nv_cvt_float2_to_fp8x2(f, __NV_SATFINITE, __NV_E4M3);
            if (t % 2 == 0)
                q[t / 2] = pair;
            else
                q[t / 2] |= pair << 16;
        }
        *reinterpret_cast<uint2 *>(xq + row * k + kb * 128 + hl * 8) = make_uint2(q[0], q[1]);
        if (hl == 0)
            tile_scale[kbl][rl] = s;
    }
    __syncthreads();
    if (threadIdx.x < QPLUG_AQ_ROWS * QPLUG_AQ_KB) {
        int rl = threadIdx.x % QPLUG_AQ_ROWS, kbl = threadIdx.x / QPLUG_AQ_ROWS;
        int64_t row = r0 + rl, kb = kb0 + kbl;
        if (row < m && kb < kt)
            scale[kb * m + row] = tile_scale[kbl][rl];
    }
}

extern "C" qplug_status qplug_cuda__act_quant_fp8_ld(const void *x, int64_t ldx, int64_t m,
                                                     int64_t k, qplug_cuda__scale_fmt fmt,
                                                     void *xq, float *scale, void *stream,
                                                     qplug_cuda__err *err)
{
    if (!x || !xq || !scale)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT, "act_quant_fp8: NULL pointer");
    if (m < 1 || k < 128 || k % 128 != 0 || ldx < k)
        return qplug_cuda__fail(err, QPLUG_ERR_SHAPE,
                                "act_quant_fp8: shape [%lld, %lld] (row stride %lld) needs m >= 1, "
                                "k %% 128 == 0 and stride >= k",
                                (long long)m, (long long)k, (long long)ldx);
    if ((uintptr_t)x % 16 != 0 || ldx % 8 != 0 || (uintptr_t)xq % 8 != 0 ||
        (uintptr_t)scale % 4 != 0)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT,
                                "act_quant_fp8: x must be 16-byte aligned with a row stride "
                                "multiple of 8, xq 8-byte and scale 4-byte aligned (stride %lld)",
                                (long long)ldx);
    if (fmt != QPLUG_CUDA_SCALE_F32 && fmt != QPLUG_CUDA_SCALE_UE8M0)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT, "act_quant_fp8: unknown scale format %d",
                                (int)fmt);
    int64_t kt = k / 128;
    int64_t row_tiles = (m + QPLUG_AQ_ROWS - 1) / QPLUG_AQ_ROWS;
    int64_t kb_tiles = (kt + QPLUG_AQ_KB - 1) / QPLUG_AQ_KB;
    if (row_tiles > 0x7fffffff || kb_tiles > 65535)
        return qplug_cuda__fail(err, QPLUG_ERR_SHAPE, "act_quant_fp8: shape [%lld, %lld] too large",
                                (long long)m, (long long)k);
    dim3 grid((unsigned)row_tiles, (unsigned)kb_tiles);
    if (fmt == QPLUG_CUDA_SCALE_UE8M0)
        qplug_cuda__act_quant_kernel<true><<<grid, QPLUG_AQ_THREADS, 0, (cudaStream_t)stream>>>(
            (const __nv_bfloat16 *)x, ldx, m, kt, (uint8_t *)xq, scale);
    else
        qplug_cuda__act_quant_kernel<false><<<grid, QPLUG_AQ_THREADS, 0, (cudaStream_t)stream>>>(
            (const __nv_bfloat16 *)x, ldx, m, kt, (uint8_t *)xq, scale);
    return qplug_cuda__check_launch(err, "act_quant_fp8");
}

extern "C" qplug_status qplug_cuda__act_quant_fp8(const void *x, int64_t m, int64_t k,
                                                  qplug_cuda__scale_fmt fmt, void *xq,
                                                  float *scale, void *stream,
                                                  qplug_cuda__err *err)
{
    return qplug_cuda__act_quant_fp8_ld(x, k, m, k, fmt, xq, scale, stream, err);
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
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT,
                                "e8m0_to_f32: NULL pointer or negative count %lld",
                                (long long)count);
    if (count == 0)
        return QPLUG_OK;
    /* One thread per value in blocks of 256 on the grid's x dimension. */
    if ((count + 255) / 256 > 0x7fffffff)
        return qplug_cuda__fail(err, QPLUG_ERR_SHAPE, "e8m0_to_f32: %lld values exceed one grid",
                                (long long)count);
    qplug_cuda__e8m0_kernel<<<(unsigned)((count + 255) / 256), 256, 0, (cudaStream_t)stream>>>(
        src, count, dst);
    return qplug_cuda__check_launch(err, "e8m0_to_f32");
}
