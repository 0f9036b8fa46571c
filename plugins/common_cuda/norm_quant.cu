/* (g) RMSNorm with the FP8 activation quantization of the next GEMM fused
 * in (the producer side of ABI 1.2's pre-quantized x), and the plain BF16
 * RMSNorm it replaces.
 *
 * Both kernels give one warp one row. Lane l reads elements (i*32 + l)*8
 * .. +7 of the row with 16-byte loads in step i, so half-warp h of step i
 * holds exactly the 128-group 2i + h: the group's amax is a reduction over
 * 16 lanes and needs no shared memory. The row stays in registers between
 * the sum of squares and the normalisation (NV uint4 per lane, NV chosen
 * at launch for d), so x is read from memory once. The weight is read per
 * use through the read-only path; it is d*2 bytes shared by every row.
 *
 * The memory floor: RMSNorm reads 2 and writes 2 bytes per element;
 * RMSNorm + quantization reads 2 and writes 1 plus 4 bytes per 128 of
 * scale, so it moves 25% fewer bytes than the RMSNorm it replaces and
 * removes the separate quantization pass (2 read + 1 written) entirely.
 *
 * Numerics: sum of squares in fp32 (per-lane sums, then a fixed xor tree:
 * deterministic), r = 1 / sqrt(ss / d + eps) with IEEE sqrt and division,
 * v = (x * r) * w in fp32. The quantized form takes v as it is in fp32;
 * it is not rounded to BF16 first, so its codes can differ from those of
 * act_quant run on the BF16 RMSNorm output (one BF16 rounding fewer: the
 * fused result is the closer one to the exact normalised value). The BF16
 * kernel writes bf16(v), round to nearest even. */
#include "internal.cuh"

enum { QPLUG_NQ_WARPS = 8, QPLUG_NQ_MAX_D = 8192 };

/* The eight fp32 values of a uint4 of BF16 (exact widening). */
__device__ __forceinline__ void qplug_cuda__bf16x8(uint4 r, float f[8])
{
    unsigned w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int t = 0; t < 4; t++) {
        f[2 * t] = __uint_as_float(w[t] << 16);
        f[2 * t + 1] = __uint_as_float(w[t] & 0xffff0000u);
    }
}

/* The row's normaliser 1 / sqrt(mean(x^2) + eps), identical in every lane;
 * raw[] holds the lane's nv 16-byte pieces of the row. */
template <int NV>
__device__ __forceinline__ float qplug_cuda__rms_r(const uint4 (&raw)[NV], int nv, int64_t d,
                                                   float eps)
{
    float ss = 0.0f;
#pragma unroll
    for (int i = 0; i < NV; i++) {
        if (i >= nv)
            break;
        float f[8];
        qplug_cuda__bf16x8(raw[i], f);
#pragma unroll
        for (int t = 0; t < 8; t++)
            ss = fmaf(f[t], f[t], ss);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        ss += __shfl_xor_sync(0xffffffffu, ss, o);
    return __fdiv_rn(1.0f, __fsqrt_rn(__fdiv_rn(ss, (float)d) + eps));
}

/* Loads the lane's pieces of row `row`; pieces past d (d % 256 == 128
 * leaves the upper half-warp idle in the last step) read as zero. */
template <int NV>
__device__ __forceinline__ void qplug_cuda__rms_load(const __nv_bfloat16 *x, int64_t d, int lane,
                                                     int nv, uint4 (&raw)[NV])
{
#pragma unroll
    for (int i = 0; i < NV; i++) {
        int64_t c = ((int64_t)i * 32 + lane) * 8;
        raw[i] = (i < nv && c < d) ? qplug_cuda__ld_stream(x + c) : make_uint4(0u, 0u, 0u, 0u);
    }
}

template <int NV, bool UE8M0>
__global__ void __launch_bounds__(QPLUG_NQ_WARPS * 32)
    qplug_cuda__rmsnorm_quant_kernel(const __nv_bfloat16 *__restrict__ x, int64_t ldx, int64_t m,
                                     int64_t d, const __nv_bfloat16 *__restrict__ w, float eps,
                                     uint8_t *__restrict__ xq, float *__restrict__ scale)
{
    int lane = threadIdx.x & 31;
    int64_t row = (int64_t)blockIdx.x * QPLUG_NQ_WARPS + (threadIdx.x >> 5);
    if (row >= m)
        return;
    int nv = (int)((d + 255) / 256);
    uint4 raw[NV];
    qplug_cuda__rms_load<NV>(x + row * ldx, d, lane, nv, raw);
    float r = qplug_cuda__rms_r<NV>(raw, nv, d, eps);
    unsigned half_mask = (lane & 16) ? 0xffff0000u : 0x0000ffffu;
#pragma unroll
    for (int i = 0; i < NV; i++) {
        if (i >= nv)
            break;
        int64_t c = ((int64_t)i * 32 + lane) * 8;
        /* A half-warp past d skips the step as a whole, so the reduction
         * below only names lanes that take part. */
        if (c >= d)
            continue;
        float f[8], g[8];
        qplug_cuda__bf16x8(raw[i], f);
        qplug_cuda__bf16x8(__ldg(reinterpret_cast<const uint4 *>(w + c)), g);
        /* |v| maximised on the bits as unsigned integers: orders
         * non-negative floats and puts NaN above Inf, so a NaN in the row
         * reaches the scale (and every code of its group) as act_quant's
         * does. */
        unsigned amax_bits = __float_as_uint(1e-4f);
#pragma unroll
        for (int t = 0; t < 8; t++) {
            f[t] = f[t] * r * g[t];
            amax_bits = max(amax_bits, __float_as_uint(f[t]) & 0x7fffffffu);
        }
#pragma unroll
        for (int o = 8; o > 0; o >>= 1)
            amax_bits = max(amax_bits, __shfl_xor_sync(half_mask, amax_bits, o));
        float amax = __uint_as_float(amax_bits);
        float s = UE8M0 ? qplug_cuda__pow2_scale(amax) : amax / 448.0f;
        float inv = UE8M0 ? 1.0f / s : 0.0f;
        unsigned q[2] = {0u, 0u};
#pragma unroll
        for (int t = 0; t < 4; t++) {
            float2 p = make_float2(f[2 * t], f[2 * t + 1]);
            if (UE8M0) {
                p.x *= inv;
                p.y *= inv;
            } else {
                p.x = __fdiv_rn(p.x, s);
                p.y = __fdiv_rn(p.y, s);
            }
            unsigned pair = __nv_cvt_float2_to_fp8x2(p, __NV_SATFINITE, __NV_E4M3);
            q[t / 2] |= (t % 2 == 0) ? pair : pair << 16;
        }
        *reinterpret_cast<uint2 *>(xq + row * d + c) = make_uint2(q[0], q[1]);
        if ((lane & 15) == 0)
            scale[(c / 128) * m + row] = s;
    }
}

template <int NV>
__global__ void __launch_bounds__(QPLUG_NQ_WARPS * 32)
    qplug_cuda__rmsnorm_kernel(const __nv_bfloat16 *__restrict__ x, int64_t ldx, int64_t m,
                               int64_t d, const __nv_bfloat16 *__restrict__ w, float eps,
                               __nv_bfloat16 *__restrict__ y, int64_t ldy)
{
    int lane = threadIdx.x & 31;
    int64_t row = (int64_t)blockIdx.x * QPLUG_NQ_WARPS + (threadIdx.x >> 5);
    if (row >= m)
        return;
    int nv = (int)((d + 255) / 256);
    uint4 raw[NV];
    qplug_cuda__rms_load<NV>(x + row * ldx, d, lane, nv, raw);
    float r = qplug_cuda__rms_r<NV>(raw, nv, d, eps);
#pragma unroll
    for (int i = 0; i < NV; i++) {
        if (i >= nv)
            break;
        int64_t c = ((int64_t)i * 32 + lane) * 8;
        if (c >= d)
            continue;
        float f[8], g[8];
        qplug_cuda__bf16x8(raw[i], f);
        qplug_cuda__bf16x8(__ldg(reinterpret_cast<const uint4 *>(w + c)), g);
        unsigned o[4];
#pragma unroll
        for (int t = 0; t < 4; t++) {
            __nv_bfloat162 b = __floats2bfloat162_rn(f[2 * t] * r * g[2 * t],
                                                     f[2 * t + 1] * r * g[2 * t + 1]);
            o[t] = *reinterpret_cast<unsigned *>(&b);
        }
        *reinterpret_cast<uint4 *>(y + row * ldy + c) = make_uint4(o[0], o[1], o[2], o[3]);
    }
}

/* The argument checks both entry points share. */
static qplug_status qplug_cuda__rms_check(const char *fn, const void *x, int64_t ldx, int64_t m,
                                          int64_t d, const void *w, float eps,
                                          qplug_cuda__err *err)
{
    if (!x || !w)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT, "%s: NULL x or weight", fn);
    if (m < 1 || d < 128 || d % 128 != 0 || d > QPLUG_NQ_MAX_D || ldx < d)
        return qplug_cuda__fail(err, QPLUG_ERR_SHAPE,
                                "%s: shape [%lld, %lld] (row stride %lld) needs m >= 1, d a "
                                "multiple of 128 up to %d and stride >= d",
                                fn, (long long)m, (long long)d, (long long)ldx, QPLUG_NQ_MAX_D);
    if ((uintptr_t)x % 16 != 0 || ldx % 8 != 0 || (uintptr_t)w % 16 != 0)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT,
                                "%s: x and weight must be 16-byte aligned and the row stride a "
                                "multiple of 8 (stride %lld)",
                                fn, (long long)ldx);
    if (!(eps >= 0.0f) || eps > 1.0f)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT, "%s: eps %g is not in [0, 1]", fn,
                                (double)eps);
    if ((m + QPLUG_NQ_WARPS - 1) / QPLUG_NQ_WARPS > 0x7fffffff)
        return qplug_cuda__fail(err, QPLUG_ERR_SHAPE, "%s: %lld rows exceed one grid", fn,
                                (long long)m);
    return QPLUG_OK;
}

template <int NV>
static void qplug_cuda__launch_nq(const void *x, int64_t ldx, int64_t m, int64_t d, const void *w,
                                  float eps, bool ue8m0, void *xq, float *scale,
                                  cudaStream_t s)
{
    unsigned blocks = (unsigned)((m + QPLUG_NQ_WARPS - 1) / QPLUG_NQ_WARPS);
    const __nv_bfloat16 *xb = (const __nv_bfloat16 *)x, *wb = (const __nv_bfloat16 *)w;
    if (ue8m0)
        qplug_cuda__rmsnorm_quant_kernel<NV, true><<<blocks, QPLUG_NQ_WARPS * 32, 0, s>>>(
            xb, ldx, m, d, wb, eps, (uint8_t *)xq, scale);
    else
        qplug_cuda__rmsnorm_quant_kernel<NV, false><<<blocks, QPLUG_NQ_WARPS * 32, 0, s>>>(
            xb, ldx, m, d, wb, eps, (uint8_t *)xq, scale);
}

extern "C" qplug_status qplug_cuda__rmsnorm_quant(const void *x, int64_t ldx, int64_t m,
                                                  int64_t d, const void *w, float eps,
                                                  qplug_cuda__scale_fmt fmt, void *xq,
                                                  float *scale, void *stream,
                                                  qplug_cuda__err *err)
{
    qplug_status st = qplug_cuda__rms_check("rmsnorm_quant", x, ldx, m, d, w, eps, err);
    if (st)
        return st;
    if (!xq || !scale || (uintptr_t)xq % 8 != 0 || (uintptr_t)scale % 4 != 0)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT,
                                "rmsnorm_quant: xq must be 8-byte and scale 4-byte aligned, "
                                "neither NULL");
    if (fmt != QPLUG_CUDA_SCALE_F32 && fmt != QPLUG_CUDA_SCALE_UE8M0)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT, "rmsnorm_quant: unknown scale format %d",
                                (int)fmt);
    bool ue = fmt == QPLUG_CUDA_SCALE_UE8M0;
    cudaStream_t s = (cudaStream_t)stream;
    /* Registers for the row: NV 16-byte pieces per lane, the smallest
     * instance that holds d. */
    if (d <= 1024)
        qplug_cuda__launch_nq<4>(x, ldx, m, d, w, eps, ue, xq, scale, s);
    else if (d <= 2048)
        qplug_cuda__launch_nq<8>(x, ldx, m, d, w, eps, ue, xq, scale, s);
    else if (d <= 4096)
        qplug_cuda__launch_nq<16>(x, ldx, m, d, w, eps, ue, xq, scale, s);
    else
        qplug_cuda__launch_nq<32>(x, ldx, m, d, w, eps, ue, xq, scale, s);
    return qplug_cuda__check_launch(err, "rmsnorm_quant");
}

extern "C" qplug_status qplug_cuda__rmsnorm_bf16(const void *x, int64_t ldx, int64_t m, int64_t d,
                                                 const void *w, float eps, void *y, int64_t ldy,
                                                 void *stream, qplug_cuda__err *err)
{
    qplug_status st = qplug_cuda__rms_check("rmsnorm_bf16", x, ldx, m, d, w, eps, err);
    if (st)
        return st;
    if (!y || (uintptr_t)y % 16 != 0 || ldy < d || ldy % 8 != 0)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT,
                                "rmsnorm_bf16: y must be 16-byte aligned with a row stride >= d "
                                "and a multiple of 8 (stride %lld)",
                                (long long)ldy);
    unsigned blocks = (unsigned)((m + QPLUG_NQ_WARPS - 1) / QPLUG_NQ_WARPS);
    cudaStream_t s = (cudaStream_t)stream;
    const __nv_bfloat16 *xb = (const __nv_bfloat16 *)x, *wb = (const __nv_bfloat16 *)w;
    __nv_bfloat16 *yb = (__nv_bfloat16 *)y;
    if (d <= 1024)
        qplug_cuda__rmsnorm_kernel<4><<<blocks, QPLUG_NQ_WARPS * 32, 0, s>>>(xb, ldx, m, d, wb,
                                                                            eps, yb, ldy);
    else if (d <= 2048)
        qplug_cuda__rmsnorm_kernel<8><<<blocks, QPLUG_NQ_WARPS * 32, 0, s>>>(xb, ldx, m, d, wb,
                                                                            eps, yb, ldy);
    else if (d <= 4096)
        qplug_cuda__rmsnorm_kernel<16><<<blocks, QPLUG_NQ_WARPS * 32, 0, s>>>(xb, ldx, m, d, wb,
                                                                             eps, yb, ldy);
    else
        qplug_cuda__rmsnorm_kernel<32><<<blocks, QPLUG_NQ_WARPS * 32, 0, s>>>(xb, ldx, m, d, wb,
                                                                             eps, yb, ldy);
    return qplug_cuda__check_launch(err, "rmsnorm_bf16");
}
