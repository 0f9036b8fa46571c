/* (g) RMSNorm with the FP8 activation quantization of the next GEMM fused
 * in (the producer side of ABI 1.2's pre-quantized x), and the plain BF16
 * RMSNorm it replaces.
 *
 * Both kernels give one block one row (v2; v1 gave one warp a whole row,
 * which at d = 7168 held 128 registers of row per lane, left one block of
 * 8 warps per multiprocessor and ran at 30-50% of copy bandwidth). Thread t
 * owns the 8 * QPLUG_NQ_VEC consecutive elements from t * 8 * QPLUG_NQ_VEC:
 * its x and weight pieces are 16-byte loads issued together before any
 * arithmetic, the row stays in registers between the sum of squares and
 * the normalisation, so x is read from memory once. The sum of squares is
 * a warp shuffle tree, then one shared-memory word per warp and a second
 * shuffle tree over those words (every warp does the same tree, so every
 * thread gets the same r). A 128-group is 16 / QPLUG_NQ_VEC consecutive
 * lanes of one warp: its amax is a shuffle reduction over those lanes, its
 * scale is stored by the group's first lane. The codes of a thread are one
 * 16-byte store (8-byte when xq is only 8-byte aligned), the BF16 outputs
 * QPLUG_NQ_VEC 16-byte stores. At up to 512 threads per block of few
 * registers several rows are in flight per multiprocessor, so loads of one
 * row overlap the arithmetic and stores of others.
 *
 * The memory floor: RMSNorm reads 2 and writes 2 bytes per element;
 * RMSNorm + quantization reads 2 and writes 1 plus 4 bytes per 128 of
 * scale, so it moves 25% fewer bytes than the RMSNorm it replaces and
 * removes the separate quantization pass (2 read + 1 written) entirely.
 * The weight (d * 2 bytes) is shared by every row and comes from L1/L2.
 *
 * Numerics: sum of squares in fp32 (per-thread fma chains, then fixed
 * shuffle trees: deterministic), r = 1 / sqrt(ss / d + eps) with IEEE sqrt
 * and division, v = (x * r) * w in fp32. The quantized form takes v as it
 * is in fp32; it is not rounded to BF16 first, so its codes can differ
 * from those of act_quant run on the BF16 RMSNorm output (one BF16
 * rounding fewer: the fused result is the closer one to the exact
 * normalised value). The codes are e4m3(v / s) with v / s the correctly
 * rounded fp32 quotient, the rule of formats.md and act_quant: for UE8M0
 * scales v * (1 / s) is that quotient exactly (s is a power of two); for
 * F32 scales it is formed without a division per value, as q0 = v * y with
 * y = 1 / s correctly rounded, then q0 + (v - q0 * s) * y with both steps
 * fused multiply-adds (Markstein's correction, which gives the correctly
 * rounded quotient of normal operands; the sign is copied from v so that
 * -0 stays -0). A brute-force check of 4e8 (v, s) pairs of the kernel's
 * ranges against IEEE division found no difference (bench/NOTES.md,
 * preq2). A non-finite scale (a NaN or Inf in the group) takes the IEEE
 * division. The BF16 kernel writes bf16(v), round to nearest even. */
#include "internal.cuh"

/* Elements per thread / 8: 2 gives 16 elements (16 bytes of codes) per
 * thread; the bench builds 1 as well to compare. */
#ifndef QPLUG_NQ_VEC
#define QPLUG_NQ_VEC 2
#endif

enum {
    QPLUG_NQ_MAX_D = 8192,
    QPLUG_NQ_ELEMS = 8 * QPLUG_NQ_VEC,
    QPLUG_NQ_MAX_THREADS = QPLUG_NQ_MAX_D / QPLUG_NQ_ELEMS,
    QPLUG_NQ_GROUP_LANES = 128 / QPLUG_NQ_ELEMS
};

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

/* Threads per block for a row of d elements: whole warps, so that every
 * lane of a warp takes part in its shuffles; threads past d (d % 512 != 0
 * at QPLUG_NQ_VEC 2) hold zeros and store nothing. */
static unsigned qplug_cuda__nq_threads(int64_t d)
{
    unsigned t = (unsigned)(d / QPLUG_NQ_ELEMS);
    return (t + 31u) / 32u * 32u;
}

/* One row's pieces of a thread, loaded before anything else: x[] and the
 * weight's w[] (zeros past d), and the thread's first element c. Returns
 * whether the thread owns elements of the row. */
__device__ __forceinline__ bool qplug_cuda__nq_load(const __nv_bfloat16 *xr,
                                                    const __nv_bfloat16 *w, int64_t d,
                                                    uint4 (&xv)[QPLUG_NQ_VEC],
                                                    uint4 (&wv)[QPLUG_NQ_VEC], int64_t *c)
{
    *c = (int64_t)threadIdx.x * QPLUG_NQ_ELEMS;
    bool live = *c < d;
#pragma unroll
    for (int i = 0; i < QPLUG_NQ_VEC; i++) {
        xv[i] = live ? qplug_cuda__ld_stream(xr + *c + 8 * i) : make_uint4(0u, 0u, 0u, 0u);
        wv[i] = live ? __ldg(reinterpret_cast<const uint4 *>(w + *c + 8 * i))
                     : make_uint4(0u, 0u, 0u, 0u);
    }
    return live;
}

/* The row's normaliser 1 / sqrt(mean(x^2) + eps), identical in every
 * thread of the block: per-thread fma chain, a shuffle tree per warp, one
 * shared word per warp, and the same shuffle tree over those words in
 * every warp. Every thread of the block must call it. */
__device__ __forceinline__ float qplug_cuda__nq_rms(const uint4 (&xv)[QPLUG_NQ_VEC], int64_t d,
                                                    float eps)
{
    __shared__ float part[32];
    float ss = 0.0f;
#pragma unroll
    for (int i = 0; i < QPLUG_NQ_VEC; i++) {
        float f[8];
        qplug_cuda__bf16x8(xv[i], f);
#pragma unroll
        for (int t = 0; t < 8; t++)
            ss = fmaf(f[t], f[t], ss);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        ss += __shfl_xor_sync(0xffffffffu, ss, o);
    int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    if (lane == 0)
        part[threadIdx.x >> 5] = ss;
    __syncthreads();
    ss = lane < nw ? part[lane] : 0.0f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        ss += __shfl_xor_sync(0xffffffffu, ss, o);
    return __fdiv_rn(1.0f, __fsqrt_rn(__fdiv_rn(ss, (float)d) + eps));
}

/* e4m3 code pair of the correctly rounded fp32 quotients (a / s, b / s),
 * given y = 1 / s correctly rounded and s finite and positive (see the
 * head comment for why this equals the division). */
__device__ __forceinline__ unsigned qplug_cuda__nq_div_pair(float a, float b, float s, float y)
{
    float qa = a * y, qb = b * y;
    qa = copysignf(fmaf(fmaf(-qa, s, a), y, qa), a);
    qb = copysignf(fmaf(fmaf(-qb, s, b), y, qb), b);
    return __nv_cvt_float2_to_fp8x2(make_float2(qa, qb), __NV_SATFINITE, __NV_E4M3);
}

template <bool UE8M0>
__global__ void __launch_bounds__(QPLUG_NQ_MAX_THREADS)
    qplug_cuda__rmsnorm_quant_kernel(const __nv_bfloat16 *__restrict__ x, int64_t ldx, int64_t m,
                                     int64_t d, const __nv_bfloat16 *__restrict__ w, float eps,
                                     bool xq16, uint8_t *__restrict__ xq,
                                     float *__restrict__ scale)
{
    int64_t row = blockIdx.x, c;
    uint4 xv[QPLUG_NQ_VEC], wv[QPLUG_NQ_VEC];
    bool live = qplug_cuda__nq_load(x + row * ldx, w, d, xv, wv, &c);
    float r = qplug_cuda__nq_rms(xv, d, eps);
    float v[QPLUG_NQ_ELEMS];
    /* |v| maximised on the bits as unsigned integers: orders non-negative
     * floats and puts NaN above Inf, so a NaN in the row reaches the scale
     * (and every code of its group) as act_quant's does. */
    unsigned amax_bits = __float_as_uint(1e-4f);
#pragma unroll
    for (int i = 0; i < QPLUG_NQ_VEC; i++) {
        float f[8], g[8];
        qplug_cuda__bf16x8(xv[i], f);
        qplug_cuda__bf16x8(wv[i], g);
#pragma unroll
        for (int t = 0; t < 8; t++) {
            v[8 * i + t] = f[t] * r * g[t];
            amax_bits = max(amax_bits, __float_as_uint(v[8 * i + t]) & 0x7fffffffu);
        }
    }
    /* The group's lanes are consecutive and aligned inside the warp; every
     * lane takes part (lanes past d form whole groups of their own). */
#pragma unroll
    for (int o = QPLUG_NQ_GROUP_LANES / 2; o > 0; o >>= 1)
        amax_bits = max(amax_bits, __shfl_xor_sync(0xffffffffu, amax_bits, o));
    if (!live)
        return;
    float amax = __uint_as_float(amax_bits);
    float s = UE8M0 ? qplug_cuda__pow2_scale(amax) : amax / 448.0f;
    unsigned q[QPLUG_NQ_ELEMS / 4];
    if (UE8M0) {
        /* s is a power of two: v * (1 / s) is v / s exactly. */
        float y = 1.0f / s;
#pragma unroll
        for (int t = 0; t < QPLUG_NQ_ELEMS / 2; t++) {
            unsigned pair = __nv_cvt_float2_to_fp8x2(make_float2(v[2 * t] * y, v[2 * t + 1] * y),
                                                     __NV_SATFINITE, __NV_E4M3);
            q[t / 2] = t % 2 == 0 ? pair : q[t / 2] | pair << 16;
        }
    } else if (isfinite(s)) {
        float y = __frcp_rn(s);
#pragma unroll
        for (int t = 0; t < QPLUG_NQ_ELEMS / 2; t++) {
            unsigned pair = qplug_cuda__nq_div_pair(v[2 * t], v[2 * t + 1], s, y);
            q[t / 2] = t % 2 == 0 ? pair : q[t / 2] | pair << 16;
        }
    } else {
#pragma unroll
        for (int t = 0; t < QPLUG_NQ_ELEMS / 2; t++) {
            unsigned pair = __nv_cvt_float2_to_fp8x2(
                make_float2(__fdiv_rn(v[2 * t], s), __fdiv_rn(v[2 * t + 1], s)), __NV_SATFINITE,
                __NV_E4M3);
            q[t / 2] = t % 2 == 0 ? pair : q[t / 2] | pair << 16;
        }
    }
    uint8_t *out = xq + row * d + c;
#if QPLUG_NQ_VEC == 2
    if (xq16)
        *reinterpret_cast<uint4 *>(out) = make_uint4(q[0], q[1], q[2], q[3]);
    else
        for (int h = 0; h < 2; h++)
            *reinterpret_cast<uint2 *>(out + 8 * h) = make_uint2(q[2 * h], q[2 * h + 1]);
#else
    (void)xq16;
    *reinterpret_cast<uint2 *>(out) = make_uint2(q[0], q[1]);
#endif
    if ((threadIdx.x & (QPLUG_NQ_GROUP_LANES - 1)) == 0)
        scale[(c / 128) * m + row] = s;
}

__global__ void __launch_bounds__(QPLUG_NQ_MAX_THREADS)
    qplug_cuda__rmsnorm_kernel(const __nv_bfloat16 *__restrict__ x, int64_t ldx, int64_t d, const __nv_bfloat16 *__restrict__ w, float eps,
                               __nv_bfloat16 *__restrict__ y, int64_t ldy)
{
    int64_t row = blockIdx.x, c;
    uint4 xv[QPLUG_NQ_VEC], wv[QPLUG_NQ_VEC];
    bool live = qplug_cuda__nq_load(x + row * ldx, w, d, xv, wv, &c);
    float r = qplug_cuda__nq_rms(xv, d, eps);
    if (!live)
        return;
#pragma unroll
    for (int i = 0; i < QPLUG_NQ_VEC; i++) {
        float f[8], g[8];
        qplug_cuda__bf16x8(xv[i], f);
        qplug_cuda__bf16x8(wv[i], g);
        unsigned o[4];
#pragma unroll
        for (int t = 0; t < 4; t++) {
            __nv_bfloat162 b = __floats2bfloat162_rn(f[2 * t] * r * g[2 * t],
                                                     f[2 * t + 1] * r * g[2 * t + 1]);
            o[t] = *reinterpret_cast<unsigned *>(&b);
        }
        *reinterpret_cast<uint4 *>(y + row * ldy + c + 8 * i) = make_uint4(o[0], o[1], o[2], o[3]);
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
    if (m > 0x7fffffff)
        return qplug_cuda__fail(err, QPLUG_ERR_SHAPE, "%s: %lld rows exceed one grid (one block "
                                "per row)", fn, (long long)m);
    return QPLUG_OK;
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
    unsigned threads = qplug_cuda__nq_threads(d);
    cudaStream_t s = (cudaStream_t)stream;
    const __nv_bfloat16 *xb = (const __nv_bfloat16 *)x, *wb = (const __nv_bfloat16 *)w;
    /* Rows start at multiples of d (a multiple of 128), so 16-byte code
     * stores need only xq itself 16-byte aligned. */
    bool xq16 = (uintptr_t)xq % 16 == 0;
    if (fmt == QPLUG_CUDA_SCALE_UE8M0)
        qplug_cuda__rmsnorm_quant_kernel<true><<<(unsigned)m, threads, 0, s>>>(
            xb, ldx, m, d, wb, eps, xq16, (uint8_t *)xq, scale);
    else
        qplug_cuda__rmsnorm_quant_kernel<false><<<(unsigned)m, threads, 0, s>>>(
            xb, ldx, m, d, wb, eps, xq16, (uint8_t *)xq, scale);
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
    qplug_cuda__rmsnorm_kernel<<<(unsigned)m, qplug_cuda__nq_threads(d), 0,
                                 (cudaStream_t)stream>>>((const __nv_bfloat16 *)x, ldx, d,
                                                         (const __nv_bfloat16 *)w, eps,
                                                         (__nv_bfloat16 *)y, ldy);
    return qplug_cuda__check_launch(err, "rmsnorm_bf16");
}
