/* (g) RMSNorm with the FP8 activation quantization of the next GEMM fused
 * in (the producer side of ABI 1.2's pre-quantized x), and the plain BF16
 * RMSNorm it replaces.
 *
 * Both kernels give one block one row at a time (v2; v1 gave one warp a
 * whole row, which at d = 7168 held 128 registers of row per lane, left one
 * block of 8 warps per multiprocessor and ran at 24-54% of copy bandwidth);
 * the fused kernel's blocks stay resident and loop over rows (see
 * QPLUG_NQ_PERSIST_QUANT below), the plain one launches a block per row. Thread t
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
 * row overlap the arithmetic and stores of others; the persistent loop adds
 * the next row's loads under the current row's work.
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
 * preq2). The scale's own quotient amax / 448 is formed the same way with
 * the constant 1/448 (identical to the division for every finite amax >=
 * 1e-4, checked exhaustively). A non-finite scale (a NaN or Inf in the
 * group) gives the quotients IEEE division gives: zeros of v's sign for
 * finite v over Inf, NaN otherwise. The BF16 kernel writes bf16(v), round
 * to nearest even. */
#include "internal.cuh"

/* Elements per thread / 8 (1, 2 or 4): 2 gives 16 elements (16 bytes of
 * codes) per thread. QPLUG_NQ_PERSIST_QUANT / _BF16 1 run a grid of
 * resident blocks that loop over rows, loading the next row while they
 * normalise the current one; 0 gives one block per row. Measured on the
 * H200 (bench/NOTES.md, preq2 run 2): persistent is 5-12% faster for the
 * fused kernel at m = 4096 and 10-14% slower for the plain one (the extra
 * row of registers halves its resident blocks), hence the defaults. The
 * bench builds other settings as well to compare (tests/unit/prequant.cmake). */
#ifndef QPLUG_NQ_VEC
#define QPLUG_NQ_VEC 2
#endif
#ifndef QPLUG_NQ_PERSIST_QUANT
#define QPLUG_NQ_PERSIST_QUANT 1
#endif
#ifndef QPLUG_NQ_PERSIST_BF16
#define QPLUG_NQ_PERSIST_BF16 0
#endif
/* QPLUG_NQ_L2_HINT 1 asks L2 to fetch 256-byte blocks for the x loads. */
#ifndef QPLUG_NQ_L2_HINT
#define QPLUG_NQ_L2_HINT 0
#endif

enum {
    QPLUG_NQ_MAX_D = 8192,
    QPLUG_NQ_ELEMS = 8 * QPLUG_NQ_VEC,
    QPLUG_NQ_MAX_THREADS = QPLUG_NQ_MAX_D / QPLUG_NQ_ELEMS < 32 ? 32
                                                               : QPLUG_NQ_MAX_D / QPLUG_NQ_ELEMS,
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

/* The thread's QPLUG_NQ_VEC 16-byte pieces of one row (zeros for a thread
 * past d). */
__device__ __forceinline__ void qplug_cuda__nq_load(const __nv_bfloat16 *r, bool live,
                                                    uint4 (&v)[QPLUG_NQ_VEC])
{
#pragma unroll
    for (int i = 0; i < QPLUG_NQ_VEC; i++) {
        v[i] = make_uint4(0u, 0u, 0u, 0u);
        if (!live)
            continue;
#if QPLUG_NQ_L2_HINT
        asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(v[i].x), "=r"(v[i].y), "=r"(v[i].z), "=r"(v[i].w)
                     : "l"(r + 8 * i));
#else
        v[i] = qplug_cuda__ld_stream(r + 8 * i);
#endif
    }
}

/* The row's normaliser 1 / sqrt(mean(x^2) + eps), identical in every
 * thread of the block: per-thread fma chain, a shuffle tree per warp, one
 * shared word per warp, and the same shuffle tree over those words in
 * every warp. Every thread of the block must call it. The words alternate
 * between two buffers by row parity, so one barrier per row suffices: a
 * warp can only write a buffer again after every warp has passed the next
 * row's barrier, that is, after every warp has read it. */
__device__ __forceinline__ float qplug_cuda__nq_rms(const uint4 (&xv)[QPLUG_NQ_VEC], int64_t d,
                                                    float eps, int parity)
{
    __shared__ float part[2][32];
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
        part[parity][threadIdx.x >> 5] = ss;
    __syncthreads();
    ss = lane < nw ? part[parity][lane] : 0.0f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        ss += __shfl_xor_sync(0xffffffffu, ss, o);
    return __fdiv_rn(1.0f, __fsqrt_rn(__fdiv_rn(ss, (float)d) + eps));
}

/* amax / 448 correctly rounded, without a division: Markstein's correction
 * with the correctly rounded constant 1/448 gives the IEEE quotient for
 * every finite amax >= 1e-4 (checked exhaustively on the CPU, bench/NOTES.md
 * preq2); Inf and NaN give themselves, as the division does. */
__device__ __forceinline__ float qplug_cuda__nq_div448(float amax)
{
    const float y = 1.0f / 448.0f;
    float q = amax * y;
    q = fmaf(fmaf(-q, 448.0f, amax), y, q);
    return __float_as_uint(amax) < 0x7f800000u ? q : amax;
}

/* formats.md's ue8m0 activation scale from the rounded quotient r = amax /
 * 448: the smallest power of two >= r (as qplug_cuda__pow2_scale), and its
 * reciprocal by the exponent bits (exact: s is a normal power of two <=
 * 2^120 for finite amax); NaN for a non-finite r. */
__device__ __forceinline__ float qplug_cuda__nq_pow2(float r, float *inv)
{
    unsigned bits = __float_as_uint(r), e = (bits >> 23) & 0xffu;
    if (e == 0xffu) {
        *inv = __uint_as_float(0x7fc00000u);
        return *inv;
    }
    if (e == 0)
        e = 1; /* r below the normal range: the smallest normal */
    else if ((bits & 0x7fffffu) != 0)
        e++;
    *inv = __uint_as_float((254u - e) << 23);
    return __uint_as_float(e << 23);
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

/* One row of the fused kernel: normalise the thread's pieces xv (weight
 * pieces wv, first element c), quantize, store codes and scales. Every
 * thread of the block must call it (barrier, shuffles). */
template <bool UE8M0>
__device__ __forceinline__ void qplug_cuda__nq_quant_row(const uint4 (&xv)[QPLUG_NQ_VEC],
                                                         const uint4 (&wv)[QPLUG_NQ_VEC],
                                                         int64_t row, int64_t c, bool live,
                                                         int64_t m, int64_t d, float eps,
                                                         int parity, bool xq16, uint8_t *xq,
                                                         float *scale)
{
    float r = qplug_cuda__nq_rms(xv, d, eps, parity);
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
    float s = qplug_cuda__nq_div448(__uint_as_float(amax_bits)), y;
    if (UE8M0)
        s = qplug_cuda__nq_pow2(s, &y);
    else
        y = __frcp_rn(s);
    unsigned q[QPLUG_NQ_ELEMS / 4];
#pragma unroll
    for (int t = 0; t < QPLUG_NQ_ELEMS / 2; t++) {
        float a = v[2 * t], b = v[2 * t + 1];
        unsigned pair;
        if (UE8M0) {
            /* s is a power of two: v * (1 / s) is v / s exactly. */
            pair = __nv_cvt_float2_to_fp8x2(make_float2(a * y, b * y), __NV_SATFINITE,
                                            __NV_E4M3);
        } else if (isfinite(s)) {
            pair = qplug_cuda__nq_div_pair(a, b, s, y);
        } else {
            /* v / Inf is a zero of v's sign for finite v, NaN otherwise;
             * anything / NaN is NaN. */
            float qa = isnan(s) || !(fabsf(a) < INFINITY) ? __uint_as_float(0x7fc00000u)
                                                           : copysignf(0.0f, a);
            float qb = isnan(s) || !(fabsf(b) < INFINITY) ? __uint_as_float(0x7fc00000u)
                                                           : copysignf(0.0f, b);
            pair = __nv_cvt_float2_to_fp8x2(make_float2(qa, qb), __NV_SATFINITE, __NV_E4M3);
        }
        q[t / 2] = t % 2 == 0 ? pair : q[t / 2] | pair << 16;
    }
    uint8_t *out = xq + row * d + c;
    if (QPLUG_NQ_VEC >= 2 && xq16) {
#pragma unroll
        for (int h = 0; h < QPLUG_NQ_VEC / 2; h++)
            *reinterpret_cast<uint4 *>(out + 16 * h) =
                make_uint4(q[4 * h], q[4 * h + 1], q[4 * h + 2], q[4 * h + 3]);
    } else {
#pragma unroll
        for (int h = 0; h < QPLUG_NQ_VEC; h++)
            *reinterpret_cast<uint2 *>(out + 8 * h) = make_uint2(q[2 * h], q[2 * h + 1]);
    }
    if ((threadIdx.x & (QPLUG_NQ_GROUP_LANES - 1)) == 0) {
#pragma unroll
        for (int g = 0; g < (QPLUG_NQ_ELEMS + 127) / 128; g++)
            scale[(c / 128 + g) * m + row] = s;
    }
}

/* One row of the plain kernel (same contract as qplug_cuda__nq_quant_row). */
__device__ __forceinline__ void qplug_cuda__nq_bf16_row(const uint4 (&xv)[QPLUG_NQ_VEC],
                                                        const uint4 (&wv)[QPLUG_NQ_VEC],
                                                        int64_t row, int64_t c, bool live,
                                                        int64_t d, float eps, int parity,
                                                        __nv_bfloat16 *y, int64_t ldy)
{
    float r = qplug_cuda__nq_rms(xv, d, eps, parity);
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

/* The thread's weight pieces (zeros past d). */
__device__ __forceinline__ void qplug_cuda__nq_weight(const __nv_bfloat16 *w, int64_t c,
                                                      bool live, uint4 (&wv)[QPLUG_NQ_VEC])
{
#pragma unroll
    for (int i = 0; i < QPLUG_NQ_VEC; i++)
        wv[i] = live ? __ldg(reinterpret_cast<const uint4 *>(w + c + 8 * i))
                     : make_uint4(0u, 0u, 0u, 0u);
}

template <bool UE8M0>
__global__ void __launch_bounds__(QPLUG_NQ_MAX_THREADS)
    qplug_cuda__rmsnorm_quant_kernel(const __nv_bfloat16 *__restrict__ x, int64_t ldx, int64_t m,
                                     int64_t d, const __nv_bfloat16 *__restrict__ w, float eps,
                                     bool xq16, uint8_t *__restrict__ xq,
                                     float *__restrict__ scale)
{
    const int64_t c = (int64_t)threadIdx.x * QPLUG_NQ_ELEMS;
    const bool live = c < d;
    uint4 xv[QPLUG_NQ_VEC], wv[QPLUG_NQ_VEC];
    int64_t row = blockIdx.x;
    qplug_cuda__nq_load(x + row * ldx + c, live, xv);
    qplug_cuda__nq_weight(w, c, live, wv);
#if QPLUG_NQ_PERSIST_QUANT
    for (int parity = 0; row < m; row += gridDim.x, parity ^= 1) {
        uint4 next[QPLUG_NQ_VEC];
        qplug_cuda__nq_load(x + (row + gridDim.x) * ldx + c, live && row + gridDim.x < m, next);
        qplug_cuda__nq_quant_row<UE8M0>(xv, wv, row, c, live, m, d, eps, parity, xq16, xq,
                                        scale);
#pragma unroll
        for (int i = 0; i < QPLUG_NQ_VEC; i++)
            xv[i] = next[i];
    }
#else
    qplug_cuda__nq_quant_row<UE8M0>(xv, wv, row, c, live, m, d, eps, 0, xq16, xq, scale);
#endif
}

__global__ void __launch_bounds__(QPLUG_NQ_MAX_THREADS)
    qplug_cuda__rmsnorm_kernel(const __nv_bfloat16 *__restrict__ x, int64_t ldx, int64_t m,
                               int64_t d, const __nv_bfloat16 *__restrict__ w, float eps,
                               __nv_bfloat16 *__restrict__ y, int64_t ldy)
{
    const int64_t c = (int64_t)threadIdx.x * QPLUG_NQ_ELEMS;
    const bool live = c < d;
    uint4 xv[QPLUG_NQ_VEC], wv[QPLUG_NQ_VEC];
    int64_t row = blockIdx.x;
    qplug_cuda__nq_load(x + row * ldx + c, live, xv);
    qplug_cuda__nq_weight(w, c, live, wv);
#if QPLUG_NQ_PERSIST_BF16
    for (int parity = 0; row < m; row += gridDim.x, parity ^= 1) {
        uint4 next[QPLUG_NQ_VEC];
        qplug_cuda__nq_load(x + (row + gridDim.x) * ldx + c, live && row + gridDim.x < m, next);
        qplug_cuda__nq_bf16_row(xv, wv, row, c, live, d, eps, parity, y, ldy);
#pragma unroll
        for (int i = 0; i < QPLUG_NQ_VEC; i++)
            xv[i] = next[i];
    }
#else
    (void)m;
    qplug_cuda__nq_bf16_row(xv, wv, row, c, live, d, eps, 0, y, ldy);
#endif
}

/* Blocks to launch for m rows: one per row, or for a persistent kernel as
 * many as stay resident together (at most m), each looping over rows. */
static unsigned qplug_cuda__nq_blocks(const void *kernel, bool persistent, unsigned threads,
                                      int64_t m)
{
    if (!persistent)
        return (unsigned)m;
    int dev = 0, sms = 0, per_sm = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, (int)threads, 0) !=
            cudaSuccess ||
        sms < 1 || per_sm < 1)
        return (unsigned)m;
    int64_t resident = (int64_t)sms * per_sm;
    return (unsigned)(m < resident ? m : resident);
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
        qplug_cuda__rmsnorm_quant_kernel<true>
            <<<qplug_cuda__nq_blocks((const void *)qplug_cuda__rmsnorm_quant_kernel<true>,
                                     QPLUG_NQ_PERSIST_QUANT, threads, m),
               threads, 0, s>>>(xb, ldx, m, d, wb, eps, xq16, (uint8_t *)xq, scale);
    else
        qplug_cuda__rmsnorm_quant_kernel<false>
            <<<qplug_cuda__nq_blocks((const void *)qplug_cuda__rmsnorm_quant_kernel<false>,
                                     QPLUG_NQ_PERSIST_QUANT, threads, m),
               threads, 0, s>>>(xb, ldx, m, d, wb, eps, xq16, (uint8_t *)xq, scale);
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
    unsigned threads = qplug_cuda__nq_threads(d);
    qplug_cuda__rmsnorm_kernel<<<qplug_cuda__nq_blocks((const void *)qplug_cuda__rmsnorm_kernel,
                                                       QPLUG_NQ_PERSIST_BF16, threads, m),
                                 threads, 0, (cudaStream_t)stream>>>(
        (const __nv_bfloat16 *)x, ldx, m, d, (const __nv_bfloat16 *)w, eps, (__nv_bfloat16 *)y,
        ldy);
    return qplug_cuda__check_launch(err, "rmsnorm_bf16");
}
