/* (c), (d) Decode GEMV kernels for small m (1..16) on FP8 block and FP4
 * weights. The weight bytes dominate the traffic and each is read exactly
 * once, so the kernel is built to keep many 16-byte streaming loads in
 * flight on every multiprocessor, whatever the shape:
 *
 * - A warp owns one tile of 16 weight rows (the mma's M side; the tokens are
 *   the mma's N side, 8 per tile, NT tiles) and one contiguous slice of the
 *   128-blocks of k. It issues the loads of U k-blocks at once (independent,
 *   unrolled) before it multiplies any of them.
 * - The k-blocks of a row tile are split over the W warps of a block and,
 *   for small n only, over the C blocks of a thread-block cluster (C up to
 *   8, chosen per launch from n, k and the multiprocessor count; cluster
 *   launches cost block-scheduling speed, so wide layers get none). The
 *   partial sums meet in distributed shared memory and each block of the
 *   cluster adds its share of the outputs in rank order and writes them once
 *   in BF16. So the result is deterministic and needs neither a workspace
 *   nor atomics.
 *
 * The products run on the tensor cores (mma.sync m16n8k32 on E4M3): m = 16
 * on fp32 CUDA cores would be arithmetic-bound at about three times the byte
 * floor. The dot product over k is invariant under any permutation of k
 * applied to weights and activations alike. The FP8 kernel uses that to give
 * each lane 16 contiguous bytes of a row (16t..16t+15 of each 64-run) and
 * the same 16 bytes of each token, which are exactly its A and B fragments
 * of two mmas. The FP4 kernels read a repacked weight (qplug_cuda__fp4_repack)
 * whose 16-byte run per lane holds its fragments of the four 32-wide slots of
 * a 128-block in the mma's own k order, so one mma covers exactly one MXFP4
 * group (or, with half the A fragment zeroed, one NVFP4 group of 16); the
 * FP4 codes are decoded exactly to E4M3 in registers. */
#include <cooperative_groups.h>

#include "internal.cuh"

namespace cg = cooperative_groups;

/* Warps per block, all on one row tile (a compile-time tunable). */
#ifndef QPLUG_GEMV_WARPS
#define QPLUG_GEMV_WARPS 8
#endif

enum {
    QPLUG_GEMV_MAX_CLUSTER = 8, /* the portable cluster size limit */
    QPLUG_GEMV_FMT_FP8 = 0,
    QPLUG_GEMV_FMT_MX = 1,
    QPLUG_GEMV_FMT_NV = 2
};

/* The arguments of one launch; `post` multiplies the fp32 result (FP4 only:
 * 2^6 undoes the decode's offset, times the NVFP4 global scale). */
struct qplug_cuda__gemv_args {
    const uint8_t *w;
    const void *w_scale;
    const uint8_t *xq;
    const float *x_scale;
    float post;
    int m;
    int64_t n, k;
    __nv_bfloat16 *y;
};

static __device__ __forceinline__ void qplug_cuda__u4(unsigned out[4], uint4 v)
{
    out[0] = v.x;
    out[1] = v.y;
    out[2] = v.z;
    out[3] = v.w;
}

/* The per-token activation scales of k-block kb for this lane's two output
 * columns of each token tile (0 for tokens past m). */
template <int NT>
static __device__ __forceinline__ void qplug_cuda__gemv_sa(float sa[NT][2], const float *xscale,
                                                           int kb, int m, int t)
{
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int c = 0; c < 2; c++) {
            int tok = nt * 8 + 2 * t + c;
            sa[nt][c] = tok < m ? __ldg(xscale + (int64_t)kb * m + tok) : 0.0f;
        }
}

/* One FP8 k-block: a holds rows g, g+8 (r) and halves h of this lane. */
template <int NT>
static __device__ __forceinline__ void qplug_cuda__gemv_fp8_step(
    float tot[NT][4], const unsigned a[2][2][4], const uint8_t *const xrow[NT],
    const bool xvalid[NT], const float *xscale, float sw, int kb, int m, int t)
{
    unsigned b[NT][2][4];
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            uint4 v = make_uint4(0, 0, 0, 0);
            if (xvalid[nt])
                v = __ldg(reinterpret_cast<const uint4 *>(xrow[nt] + (int64_t)kb * 128 + h * 64));
            qplug_cuda__u4(b[nt][h], v);
        }
    float sa[NT][2];
    qplug_cuda__gemv_sa<NT>(sa, xscale, kb, m, t);
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
            for (int i = 0; i < 2; i++)
                qplug_cuda__mma_e4m3(c, a[0][h][2 * i], a[1][h][2 * i], a[0][h][2 * i + 1],
                                     a[1][h][2 * i + 1], b[nt][h][2 * i], b[nt][h][2 * i + 1]);
        tot[nt][0] += c[0] * sw * sa[nt][0];
        tot[nt][1] += c[1] * sw * sa[nt][1];
        tot[nt][2] += c[2] * sw * sa[nt][0];
        tot[nt][3] += c[3] * sw * sa[nt][1];
    }
}

/* One FP4 k-block: a holds the repacked 16 bytes of rows g, g+8 (r), sc
 * their 4 (MXFP4) or 8 (NVFP4) scale bytes of the block. */
template <int NT, bool NV>
static __device__ __forceinline__ void qplug_cuda__gemv_fp4_step(
    float tot[NT][4], const unsigned a[2][4], const uint2 sc[2], const uint8_t *const xrow[NT],
    const bool xvalid[NT], const float *xscale, int kb, int m, int t)
{
    unsigned b[NT][4][2];
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int s = 0; s < 4; s++) {
            b[nt][s][0] = 0;
            b[nt][s][1] = 0;
            if (xvalid[nt]) {
                const uint8_t *p = xrow[nt] + (int64_t)kb * 128 + 32 * s;
                b[nt][s][0] = __ldg(reinterpret_cast<const unsigned *>(p));
                b[nt][s][1] = __ldg(reinterpret_cast<const unsigned *>(p + 16));
            }
        }
    float sa[NT][2];
    qplug_cuda__gemv_sa<NT>(sa, xscale, kb, m, t);
    float acc[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int i = 0; i < 4; i++)
            acc[nt][i] = 0.0f;
#pragma unroll
    for (int s = 0; s < 4; s++) {
        unsigned lo0, hi0, lo1, hi1;
        qplug_cuda__fp4x8_to_fp8(a[0][s], &lo0, &hi0);
        qplug_cuda__fp4x8_to_fp8(a[1][s], &lo1, &hi1);
        if (NV) {
            /* Bytes 2s and 2s+1 of the row's 8 scale bytes. */
            unsigned w0 = s < 2 ? sc[0].x : sc[0].y;
            unsigned w1 = s < 2 ? sc[1].x : sc[1].y;
            int sh = (s & 1) * 16;
            float s0a = qplug_cuda__e4m3_dev((w0 >> sh) & 0xffu);
            float s0b = qplug_cuda__e4m3_dev((w0 >> (sh + 8)) & 0xffu);
            float s1a = qplug_cuda__e4m3_dev((w1 >> sh) & 0xffu);
            float s1b = qplug_cuda__e4m3_dev((w1 >> (sh + 8)) & 0xffu);
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                float ca[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                float cb[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                qplug_cuda__mma_e4m3(ca, lo0, lo1, 0u, 0u, b[nt][s][0], b[nt][s][1]);
                qplug_cuda__mma_e4m3(cb, 0u, 0u, hi0, hi1, b[nt][s][0], b[nt][s][1]);
                acc[nt][0] += ca[0] * s0a + cb[0] * s0b;
                acc[nt][1] += ca[1] * s0a + cb[1] * s0b;
                acc[nt][2] += ca[2] * s1a + cb[2] * s1b;
                acc[nt][3] += ca[3] * s1a + cb[3] * s1b;
            }
        } else {
            float s0 = qplug_cuda__e8m0_dev((sc[0].x >> (8 * s)) & 0xffu);
            float s1 = qplug_cuda__e8m0_dev((sc[1].x >> (8 * s)) & 0xffu);
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                qplug_cuda__mma_e4m3(c, lo0, lo1, hi0, hi1, b[nt][s][0], b[nt][s][1]);
                acc[nt][0] += c[0] * s0;
                acc[nt][1] += c[1] * s0;
                acc[nt][2] += c[2] * s1;
                acc[nt][3] += c[3] * s1;
            }
        }
    }
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        tot[nt][0] += acc[nt][0] * sa[nt][0];
        tot[nt][1] += acc[nt][1] * sa[nt][1];
        tot[nt][2] += acc[nt][2] * sa[nt][0];
        tot[nt][3] += acc[nt][3] * sa[nt][1];
    }
}

/* Compile-time tunables (the bench builds variants with -D): the number of
 * warps per multiprocessor the k-split aims for, and the k-blocks whose
 * loads one warp issues before it multiplies (FP8 and FP4). */
#ifndef QPLUG_GEMV_SPREAD
#define QPLUG_GEMV_SPREAD 4
#endif
#ifndef QPLUG_GEMV_U_FP8
#define QPLUG_GEMV_U_FP8 2
#endif
#ifndef QPLUG_GEMV_U_FP4
#define QPLUG_GEMV_U_FP4 4
#endif

/* At most 128 registers (16 warps per multiprocessor at least): fewer
 * resident warps leave too few loads in flight. */
template <int NT, int F, bool CL>
__global__ void __launch_bounds__(QPLUG_GEMV_WARPS * 32, 16 / QPLUG_GEMV_WARPS)
    qplug_cuda__gemv_kernel(const qplug_cuda__gemv_args p)
{
    constexpr int U = F == QPLUG_GEMV_FMT_FP8 ? QPLUG_GEMV_U_FP8 : QPLUG_GEMV_U_FP4;
    constexpr bool NV = F == QPLUG_GEMV_FMT_NV;
    __shared__ float red[QPLUG_GEMV_WARPS][16][NT * 8];
    __shared__ float part[16 * NT * 8];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    int64_t n0 = (int64_t)blockIdx.x * 16, k = p.k;
    int m = p.m;
    int kbn = (int)(k / 128);
    /* This warp's contiguous slice of the row tile's k-blocks. */
    int slices = (int)gridDim.y * QPLUG_GEMV_WARPS;
    int slice = (int)blockIdx.y * QPLUG_GEMV_WARPS + warp;
    int kb0 = (int)((int64_t)kbn * slice / slices);
    int kb1 = (int)((int64_t)kbn * (slice + 1) / slices);

    const uint8_t *xrow[NT];
    bool xvalid[NT];
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        int j = nt * 8 + g;
        xvalid[nt] = j < m;
        xrow[nt] = p.xq + (int64_t)(xvalid[nt] ? j : 0) * k +
                   (F == QPLUG_GEMV_FMT_FP8 ? 16 * t : 4 * t);
    }
    float tot[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int i = 0; i < 4; i++)
            tot[nt][i] = 0.0f;

    if (F == QPLUG_GEMV_FMT_FP8) {
        const uint8_t *wrow[2];
#pragma unroll
        for (int r = 0; r < 2; r++)
            wrow[r] = p.w + (n0 + g + 8 * r) * k + 16 * t;
        const float *wscale = (const float *)p.w_scale + (n0 / 128) * kbn;
        for (int kb = kb0; kb < kb1; kb += U) {
            unsigned a[U][2][2][4];
            float sw[U];
#pragma unroll
            for (int u = 0; u < U; u++) {
                bool in = kb + u < kb1;
#pragma unroll
                for (int r = 0; r < 2; r++)
#pragma unroll
                    for (int h = 0; h < 2; h++) {
                        uint4 v = make_uint4(0, 0, 0, 0);
                        if (in)
                            v = qplug_cuda__ld_stream(wrow[r] + (int64_t)(kb + u) * 128 + h * 64);
                        qplug_cuda__u4(a[u][r][h], v);
                    }
                sw[u] = in ? __ldg(wscale + kb + u) : 0.0f;
            }
#pragma unroll
            for (int u = 0; u < U; u++)
                if (kb + u < kb1)
                    qplug_cuda__gemv_fp8_step<NT>(tot, a[u], xrow, xvalid, p.x_scale, sw[u],
                                                  kb + u, m, t);
        }
    } else {
        const int sb = NV ? 8 : 4; /* scale bytes per row and 128-block */
        const uint8_t *wrow[2], *srow[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            int64_t row = n0 + g + 8 * r;
            wrow[r] = p.w + row * (k / 2) + 16 * t;
            srow[r] = (const uint8_t *)p.w_scale + row * kbn * sb;
        }
        for (int kb = kb0; kb < kb1; kb += U) {
            unsigned a[U][2][4];
            uint2 sc[U][2];
#pragma unroll
            for (int u = 0; u < U; u++) {
                bool in = kb + u < kb1;
#pragma unroll
                for (int r = 0; r < 2; r++) {
                    uint4 v = make_uint4(0, 0, 0, 0);
                    uint2 s = make_uint2(0, 0);
                    if (in) {
                        v = qplug_cuda__ld_stream(wrow[r] + (int64_t)(kb + u) * 64);
                        if (NV)
                            s = __ldg(reinterpret_cast<const uint2 *>(srow[r] + (kb + u) * 8));
                        else
                            s.x = __ldg(reinterpret_cast<const unsigned *>(srow[r] + (kb + u) * 4));
                    }
                    qplug_cuda__u4(a[u][r], v);
                    sc[u][r] = s;
                }
            }
#pragma unroll
            for (int u = 0; u < U; u++)
                if (kb + u < kb1)
                    qplug_cuda__gemv_fp4_step<NT, NV>(tot, a[u], sc[u], xrow, xvalid, p.x_scale,
                                                      kb + u, m, t);
        }
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++)
                tot[nt][i] *= p.post;
    }

    /* Each warp parks its 16 x NT*8 partial tile in shared memory and the
     * block adds its warps' tiles in warp order. Without a cluster that sum
     * is the output. In a cluster, the barrier makes every block's sum
     * visible to all; block r then adds the sums of outputs r, r + C, ... in
     * rank order (deterministic), reading the other blocks' shared memory,
     * and a second barrier keeps that memory alive until it has been read. */
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        red[warp][g][nt * 8 + 2 * t] = tot[nt][0];
        red[warp][g][nt * 8 + 2 * t + 1] = tot[nt][1];
        red[warp][g + 8][nt * 8 + 2 * t] = tot[nt][2];
        red[warp][g + 8][nt * 8 + 2 * t + 1] = tot[nt][3];
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < 16 * m; idx += blockDim.x) {
        int row = idx % 16, tok = idx / 16;
        float s = 0.0f;
#pragma unroll
        for (int w = 0; w < QPLUG_GEMV_WARPS; w++)
            s += red[w][row][tok];
        if (!CL)
            p.y[(int64_t)tok * p.n + n0 + row] = __float2bfloat16_rn(s);
        else
            part[idx] = s;
    }
    if (CL) {
        cg::cluster_group cluster = cg::this_cluster();
        cluster.sync();
        int ranks = (int)cluster.num_blocks(), me = (int)cluster.block_rank();
        for (int idx = me + ranks * (int)threadIdx.x; idx < 16 * m;
             idx += ranks * (int)blockDim.x) {
            float v[QPLUG_GEMV_MAX_CLUSTER];
#pragma unroll
            for (int r = 0; r < QPLUG_GEMV_MAX_CLUSTER; r++)
                v[r] = r < ranks ? cluster.map_shared_rank(part, r)[idx] : 0.0f;
            float s = 0.0f;
#pragma unroll
            for (int r = 0; r < QPLUG_GEMV_MAX_CLUSTER; r++)
                s += v[r];
            p.y[(int64_t)(idx / 16) * p.n + n0 + idx % 16] = __float2bfloat16_rn(s);
        }
        cluster.sync();
    }
}

static qplug_status qplug_cuda__gemv_check(const char *what, const void *w, const void *ws,
                                           const void *xq, const float *xs, int64_t m, int64_t n,
                                           int64_t k, const void *y, qplug_cuda__err *err)
{
    if (!w || !ws || !xq || !xs || !y)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT, "%s: NULL pointer", what);
    if (m < 1 || m > QPLUG_CUDA_GEMV_MAX_M || n < 16 || n % 16 != 0 || k < 128 || k % 128 != 0 ||
        n / 16 > 0x7fffffff || k / 128 > 0x7fffffff)
        return qplug_cuda__fail(err, QPLUG_ERR_SHAPE,
                                "%s: m=%lld n=%lld k=%lld needs 1 <= m <= %d, n %% 16 == 0, "
                                "k %% 128 == 0",
                                what, (long long)m, (long long)n, (long long)k,
                                QPLUG_CUDA_GEMV_MAX_M);
    return QPLUG_OK;
}

/* The cluster size: enough blocks per row tile that the launch holds about
 * QPLUG_GEMV_SPREAD warps per multiprocessor, at most 8, and no more than
 * leaves each warp one k-block. */
static int qplug_cuda__gemv_cluster(int64_t n, int64_t k, int sms)
{
    int64_t tiles = n / 16, kbn = k / 128;
    int64_t warps = tiles * QPLUG_GEMV_WARPS;
    int64_t c = ((int64_t)sms * QPLUG_GEMV_SPREAD + warps - 1) / warps;
    int64_t most = kbn / QPLUG_GEMV_WARPS;
    if (c > QPLUG_GEMV_MAX_CLUSTER)
        c = QPLUG_GEMV_MAX_CLUSTER;
    if (c > most)
        c = most;
    return c < 1 ? 1 : (int)c;
}

template <int F>
static qplug_status qplug_cuda__gemv_launch(const qplug_cuda__gemv_args &a, void *stream,
                                            const char *what, qplug_cuda__err *err)
{
    int dev = 0, sms = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e == cudaSuccess)
        e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    if (e != cudaSuccess)
        return qplug_cuda__fail(err, QPLUG_ERR_DEVICE, "%s: no device: %s", what,
                                cudaGetErrorString(e));
    int c = qplug_cuda__gemv_cluster(a.n, a.k, sms);
    cudaLaunchAttribute attr;
    attr.id = cudaLaunchAttributeClusterDimension;
    attr.val.clusterDim.x = 1;
    attr.val.clusterDim.y = (unsigned)c;
    attr.val.clusterDim.z = 1;
    cudaLaunchConfig_t cfg;
    cfg.gridDim = dim3((unsigned)(a.n / 16), (unsigned)c);
    cfg.blockDim = dim3(QPLUG_GEMV_WARPS * 32);
    cfg.dynamicSmemBytes = 0;
    cfg.stream = (cudaStream_t)stream;
    cfg.attrs = &attr;
    cfg.numAttrs = c > 1 ? 1 : 0;
    if (a.m <= 8)
        e = cudaLaunchKernelEx(&cfg, c > 1 ? qplug_cuda__gemv_kernel<1, F, true>
                                           : qplug_cuda__gemv_kernel<1, F, false>, a);
    else
        e = cudaLaunchKernelEx(&cfg, c > 1 ? qplug_cuda__gemv_kernel<2, F, true>
                                           : qplug_cuda__gemv_kernel<2, F, false>, a);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return qplug_cuda__fail(err, QPLUG_ERR_DEVICE, "%s: kernel launch failed: %s", what,
                                cudaGetErrorString(e));
    }
    return qplug_cuda__check_launch(err, what);
}

extern "C" qplug_status qplug_cuda__gemv_fp8(const void *w, const float *w_scale, const void *xq,
                                             const float *x_scale, int64_t m, int64_t n,
                                             int64_t k, void *y, void *stream,
                                             qplug_cuda__err *err)
{
    qplug_status s = qplug_cuda__gemv_check("gemv_fp8", w, w_scale, xq, x_scale, m, n, k, y, err);
    if (s != QPLUG_OK)
        return s;
    qplug_cuda__gemv_args a = {(const uint8_t *)w, w_scale, (const uint8_t *)xq, x_scale, 1.0f,
                               (int)m, n, k, (__nv_bfloat16 *)y};
    return qplug_cuda__gemv_launch<QPLUG_GEMV_FMT_FP8>(a, stream, "gemv_fp8", err);
}

extern "C" qplug_status qplug_cuda__gemv_mxfp4(const uint8_t *w_packed, const uint8_t *w_scale,
                                               const void *xq, const float *x_scale, int64_t m,
                                               int64_t n, int64_t k, void *y, void *stream,
                                               qplug_cuda__err *err)
{
    qplug_status s =
        qplug_cuda__gemv_check("gemv_mxfp4", w_packed, w_scale, xq, x_scale, m, n, k, y, err);
    if (s != QPLUG_OK)
        return s;
    qplug_cuda__gemv_args a = {w_packed, w_scale, (const uint8_t *)xq, x_scale, 64.0f,
                               (int)m, n, k, (__nv_bfloat16 *)y};
    return qplug_cuda__gemv_launch<QPLUG_GEMV_FMT_MX>(a, stream, "gemv_mxfp4", err);
}

extern "C" qplug_status qplug_cuda__gemv_nvfp4(const uint8_t *w_packed, const uint8_t *w_scale,
                                               float global_scale, const void *xq,
                                               const float *x_scale, int64_t m, int64_t n,
                                               int64_t k, void *y, void *stream,
                                               qplug_cuda__err *err)
{
    qplug_status s =
        qplug_cuda__gemv_check("gemv_nvfp4", w_packed, w_scale, xq, x_scale, m, n, k, y, err);
    if (s != QPLUG_OK)
        return s;
    qplug_cuda__gemv_args a = {w_packed, w_scale, (const uint8_t *)xq, x_scale,
                               64.0f * global_scale, (int)m, n, k, (__nv_bfloat16 *)y};
    return qplug_cuda__gemv_launch<QPLUG_GEMV_FMT_NV>(a, stream, "gemv_nvfp4", err);
}
