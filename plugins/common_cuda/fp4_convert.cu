/* (d), (e) Prepare-time FP4 kernels: the repack that the FP4 decode GEMV
 * reads, and the conversion of FP4 weights to an FP8 block copy for the
 * prefill GEMM on the FP8 tensor cores. */
#include "internal.cuh"

/* Within each 64-byte run (128 elements) of a row, lane t of a quad gets the
 * 16 bytes [16t, 16t+16): for slot s (elements 32s..32s+31) the 2 bytes of
 * elements 32s+4t..+3 then the 2 bytes of elements 32s+16+4t..+3, which are
 * its A fragments a0 and a2 of the mma for that slot. */
__global__ void qplug_cuda__fp4_repack_kernel(const uint8_t *__restrict__ src, int64_t total,
                                              uint8_t *__restrict__ dst)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total)
        return;
    int d = (int)(i & 63);
    int t = d >> 4, s = (d >> 2) & 3, part = (d >> 1) & 1, b = d & 1;
    dst[i] = src[(i - d) + 16 * s + 8 * part + 2 * t + b];
}

extern "C" qplug_status qplug_cuda__fp4_repack(const uint8_t *src, int64_t n, int64_t k,
                                               uint8_t *dst, void *stream, qplug_cuda__err *err)
{
    if (!src || !dst)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT, "fp4_repack: NULL pointer");
    if (n < 1 || k < 128 || k % 128 != 0)
        return qplug_cuda__fail(err, QPLUG_ERR_SHAPE,
                                "fp4_repack: shape [%lld, %lld] needs k %% 128 == 0",
                                (long long)n, (long long)k);
    int64_t total = n * (k / 2);
    qplug_cuda__fp4_repack_kernel<<<(unsigned)((total + 255) / 256), 256, 0,
                                    (cudaStream_t)stream>>>(src, total, dst);
    return qplug_cuda__check_launch(err, "fp4_repack");
}

/* The E2M1 value of a 4-bit code (bit 3 is the sign). */
__device__ __forceinline__ float qplug_cuda__e2m1_dev(unsigned c)
{
    const float mag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    float v = mag[c & 7u];
    return (c & 8u) ? -v : v;
}

/* One block per 128x128 tile; thread r*2+h owns row r, elements
 * [64h, 64h+64) of the tile. NV selects NVFP4. */
template <bool NV>
__global__ void __launch_bounds__(256)
    qplug_cuda__fp4_to_fp8_kernel(const uint8_t *__restrict__ w, const uint8_t *__restrict__ scale,
                                  float global, int64_t n, int64_t k, uint8_t *__restrict__ q,
                                  float *__restrict__ q_scale)
{
    __shared__ float wmax[8];
    int64_t kb = blockIdx.x, nb = blockIdx.y;
    int r = threadIdx.x >> 1, h = threadIdx.x & 1;
    int64_t row = nb * 128 + r;
    int64_t e0 = kb * 128 + h * 64;
    const uint8_t *wp = w + row * (k / 2) + e0 / 2;

    float v[64];
#pragma unroll
    for (int i = 0; i < 64; i++) {
        int64_t e = e0 + i;
        unsigned byte = wp[i >> 1];
        unsigned code = (i & 1) ? (byte >> 4) : (byte & 15u);
        float s = NV ? qplug_cuda__e4m3_dev(scale[row * (k / 16) + e / 16]) * global
                     : qplug_cuda__e8m0_dev(scale[row * (k / 32) + e / 32]);
        v[i] = qplug_cuda__e2m1_dev(code) * s;
    }
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < 64; i++) {
        float a = fabsf(v[i]);
        amax = (a > amax || a != a) ? a : amax;
    }
    for (int o = 16; o > 0; o >>= 1) {
        float b = __shfl_xor_sync(0xffffffffu, amax, o);
        amax = (b > amax || b != b) ? b : amax;
    }
    if ((threadIdx.x & 31) == 0)
        wmax[threadIdx.x >> 5] = amax;
    __syncthreads();
    amax = wmax[0];
    for (int i = 1; i < 8; i++)
        amax = (wmax[i] > amax || wmax[i] != wmax[i]) ? wmax[i] : amax;
    float S = amax > 0.0f ? qplug_cuda__pow2_scale(amax) : 1.0f;

    uint8_t *qp = q + row * k + e0;
#pragma unroll
    for (int c = 0; c < 4; c++) {
        unsigned wd[4];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            unsigned x = 0;
#pragma unroll
            for (int b = 0; b < 4; b++)
                x |= qplug_cuda__to_e4m3(v[c * 16 + j * 4 + b] / S) << (8 * b);
            wd[j] = x;
        }
        *reinterpret_cast<uint4 *>(qp + c * 16) = make_uint4(wd[0], wd[1], wd[2], wd[3]);
    }
    if (threadIdx.x == 0)
        q_scale[nb * (k / 128) + kb] = S;
}

template <bool NV>
static qplug_status qplug_cuda__fp4_to_fp8_launch(const uint8_t *w, const uint8_t *scale,
                                                  float global, int64_t n, int64_t k, uint8_t *q,
                                                  float *q_scale, void *stream, const char *what,
                                                  qplug_cuda__err *err)
{
    if (!w || !scale || !q || !q_scale)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT, "%s: NULL pointer", what);
    if (n < 128 || k < 128 || n % 128 != 0 || k % 128 != 0 || n / 128 > 65535)
        return qplug_cuda__fail(err, QPLUG_ERR_SHAPE,
                                "%s: shape [%lld, %lld] needs multiples of 128", what,
                                (long long)n, (long long)k);
    dim3 grid((unsigned)(k / 128), (unsigned)(n / 128));
    qplug_cuda__fp4_to_fp8_kernel<NV><<<grid, 256, 0, (cudaStream_t)stream>>>(w, scale, global, n,
                                                                              k, q, q_scale);
    return qplug_cuda__check_launch(err, what);
}

extern "C" qplug_status qplug_cuda__mxfp4_to_fp8_block(const uint8_t *w, const uint8_t *scale,
                                                       int64_t n, int64_t k, uint8_t *q,
                                                       float *q_scale, void *stream,
                                                       qplug_cuda__err *err)
{
    return qplug_cuda__fp4_to_fp8_launch<false>(w, scale, 1.0f, n, k, q, q_scale, stream,
                                                "mxfp4_to_fp8_block", err);
}

extern "C" qplug_status qplug_cuda__nvfp4_to_fp8_block(const uint8_t *w, const uint8_t *scale,
                                                       float global_scale, int64_t n, int64_t k,
                                                       uint8_t *q, float *q_scale, void *stream,
                                                       qplug_cuda__err *err)
{
    return qplug_cuda__fp4_to_fp8_launch<true>(w, scale, global_scale, n, k, q, q_scale, stream,
                                               "nvfp4_to_fp8_block", err);
}
