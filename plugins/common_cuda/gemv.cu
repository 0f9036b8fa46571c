/* (c), (d) Decode GEMV kernels for small m (1..16) on FP8 block and FP4
 * weights. The weight bytes dominate the traffic, so every lane issues
 * 16-byte streaming loads, and the next 128-block is loaded before the
 * current one is multiplied. The products run on the tensor cores
 * (mma.sync m16n8k32 on E4M3): m = 16 on fp32 CUDA cores would be
 * arithmetic-bound at about three times the byte floor.
 *
 * Mapping: a warp owns 16*RT weight rows (the mma's M side) and the tokens
 * are the mma's N side (8 per tile, NT tiles). The 8 warps of a block share
 * the rows and split the 128-blocks of k between them; a shared-memory sum
 * combines them, so the output is written once, in BF16, with no atomics.
 *
 * The dot product over k is invariant under any permutation of k applied to
 * weights and activations alike. The FP8 kernel uses that to give each lane
 * 16 contiguous bytes of a row (16t..16t+15 of each 64-run) and the same 16
 * bytes of each token, which are exactly its A and B fragments of two mmas.
 * The FP4 kernels read a repacked weight (qplug_cuda__fp4_repack) whose
 * 16-byte run per lane holds its fragments of the four 32-wide slots of a
 * 128-block in the mma's own k order, so one mma covers exactly one MXFP4
 * group (or, with half the A fragment zeroed, one NVFP4 group of 16). */
#include "internal.cuh"

enum { QPLUG_GEMV_WARPS = 8 };

static __device__ __forceinline__ void qplug_cuda__u4(unsigned out[4], uint4 v)
{
    out[0] = v.x;
    out[1] = v.y;
    out[2] = v.z;
    out[3] = v.w;
}

/* Sums the warps' partial tiles and writes y rows n0.. for all m tokens. */
template <int NT, int RT>
static __device__ __forceinline__ void qplug_cuda__gemv_store(
    float (*red)[RT * 16][NT * 8], const float tot[RT][NT][4], int m, int64_t n, int64_t n0,
    __nv_bfloat16 *__restrict__ y)
{
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int rt = 0; rt < RT; rt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            red[warp][rt * 16 + g][nt * 8 + 2 * t] = tot[rt][nt][0];
            red[warp][rt * 16 + g][nt * 8 + 2 * t + 1] = tot[rt][nt][1];
            red[warp][rt * 16 + g + 8][nt * 8 + 2 * t] = tot[rt][nt][2];
            red[warp][rt * 16 + g + 8][nt * 8 + 2 * t + 1] = tot[rt][nt][3];
        }
    __syncthreads();
    for (int idx = threadIdx.x; idx < RT * 16 * m; idx += blockDim.x) {
        int row = idx % (RT * 16), tok = idx / (RT * 16);
        float s = 0.0f;
#pragma unroll
        for (int w = 0; w < QPLUG_GEMV_WARPS; w++)
            s += red[w][row][tok];
        y[(int64_t)tok * n + n0 + row] = __float2bfloat16_rn(s);
    }
}

template <int NT, int RT>
__global__ void __launch_bounds__(QPLUG_GEMV_WARPS * 32, 2)
    qplug_cuda__gemv_fp8_kernel(const uint8_t *__restrict__ w, const float *__restrict__ wscale,
                                const uint8_t *__restrict__ xq, const float *__restrict__ xscale,
                                int m, int64_t n, int64_t k, __nv_bfloat16 *__restrict__ y)
{
    __shared__ float red[QPLUG_GEMV_WARPS][RT * 16][NT * 8];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    int64_t n0 = (int64_t)blockIdx.x * (RT * 16);
    int kbn = (int)(k / 128);

    const uint8_t *wrow[RT][2];
#pragma unroll
    for (int rt = 0; rt < RT; rt++)
#pragma unroll
        for (int r = 0; r < 2; r++)
            wrow[rt][r] = w + (n0 + rt * 16 + g + 8 * r) * k + t * 16;
    const uint8_t *xrow[NT];
    bool xvalid[NT];
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        int j = nt * 8 + g;
        xvalid[nt] = j < m;
        xrow[nt] = xq + (int64_t)(xvalid[nt] ? j : 0) * k + t * 16;
    }

    float tot[RT][NT][4];
#pragma unroll
    for (int rt = 0; rt < RT; rt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++)
                tot[rt][nt][i] = 0.0f;

    unsigned a[RT][2][2][4], an[RT][2][2][4];
    int kb = warp;
    if (kb < kbn) {
#pragma unroll
        for (int rt = 0; rt < RT; rt++)
#pragma unroll
            for (int r = 0; r < 2; r++)
#pragma unroll
                for (int h = 0; h < 2; h++)
                    qplug_cuda__u4(a[rt][r][h],
                                   qplug_cuda__ld_stream(wrow[rt][r] + kb * 128 + h * 64));
    }
    for (; kb < kbn; kb += QPLUG_GEMV_WARPS) {
        int kn = kb + QPLUG_GEMV_WARPS;
#pragma unroll
        for (int rt = 0; rt < RT; rt++)
#pragma unroll
            for (int r = 0; r < 2; r++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    uint4 v = make_uint4(0, 0, 0, 0);
                    if (kn < kbn)
                        v = qplug_cuda__ld_stream(wrow[rt][r] + kn * 128 + h * 64);
                    qplug_cuda__u4(an[rt][r][h], v);
                }
        unsigned b[NT][2][4];
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                uint4 v = make_uint4(0, 0, 0, 0);
                if (xvalid[nt])
                    v = __ldg(reinterpret_cast<const uint4 *>(xrow[nt] + kb * 128 + h * 64));
                qplug_cuda__u4(b[nt][h], v);
            }
        float sa[NT][2];
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int c = 0; c < 2; c++) {
                int tok = nt * 8 + 2 * t + c;
                sa[nt][c] = tok < m ? __ldg(xscale + (int64_t)kb * m + tok) : 0.0f;
            }
#pragma unroll
        for (int rt = 0; rt < RT; rt++) {
            float sw = __ldg(wscale + ((n0 + rt * 16) / 128) * kbn + kb);
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
                for (int h = 0; h < 2; h++)
#pragma unroll
                    for (int i = 0; i < 2; i++)
                        qplug_cuda__mma_e4m3(c, a[rt][0][h][2 * i], a[rt][1][h][2 * i],
                                             a[rt][0][h][2 * i + 1], a[rt][1][h][2 * i + 1],
                                             b[nt][h][2 * i], b[nt][h][2 * i + 1]);
                tot[rt][nt][0] += c[0] * sw * sa[nt][0];
                tot[rt][nt][1] += c[1] * sw * sa[nt][1];
                tot[rt][nt][2] += c[2] * sw * sa[nt][0];
                tot[rt][nt][3] += c[3] * sw * sa[nt][1];
            }
        }
#pragma unroll
        for (int rt = 0; rt < RT; rt++)
#pragma unroll
            for (int r = 0; r < 2; r++)
#pragma unroll
                for (int h = 0; h < 2; h++)
#pragma unroll
                    for (int i = 0; i < 4; i++)
                        a[rt][r][h][i] = an[rt][r][h][i];
    }
    qplug_cuda__gemv_store<NT, RT>(red, tot, m, n, n0, y);
}

/* NV selects NVFP4 (E4M3 scale per 16) over MXFP4 (E8M0 scale per 32). */
template <int NT, int RT, bool NV>
__global__ void __launch_bounds__(QPLUG_GEMV_WARPS * 32, 2)
    qplug_cuda__gemv_fp4_kernel(const uint8_t *__restrict__ w, const uint8_t *__restrict__ wscale,
                                float post, const uint8_t *__restrict__ xq,
                                const float *__restrict__ xscale, int m, int64_t n, int64_t k,
                                __nv_bfloat16 *__restrict__ y)
{
    __shared__ float red[QPLUG_GEMV_WARPS][RT * 16][NT * 8];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    int64_t n0 = (int64_t)blockIdx.x * (RT * 16);
    int kbn = (int)(k / 128);
    const int sb = NV ? 8 : 4; /* scale bytes per row and 128-block */

    const uint8_t *wrow[RT][2];
    const uint8_t *srow[RT][2];
#pragma unroll
    for (int rt = 0; rt < RT; rt++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            int64_t row = n0 + rt * 16 + g + 8 * r;
            wrow[rt][r] = w + row * (k / 2) + t * 16;
            srow[rt][r] = wscale + row * (k / 128) * sb;
        }
    const uint8_t *xrow[NT];
    bool xvalid[NT];
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        int j = nt * 8 + g;
        xvalid[nt] = j < m;
        xrow[nt] = xq + (int64_t)(xvalid[nt] ? j : 0) * k + 4 * t;
    }

    float tot[RT][NT][4];
#pragma unroll
    for (int rt = 0; rt < RT; rt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++)
                tot[rt][nt][i] = 0.0f;

    unsigned a[RT][2][4], an[RT][2][4];
    uint2 sc[RT][2], scn[RT][2];
    int kb = warp;
    if (kb < kbn) {
#pragma unroll
        for (int rt = 0; rt < RT; rt++)
#pragma unroll
            for (int r = 0; r < 2; r++) {
                qplug_cuda__u4(a[rt][r], qplug_cuda__ld_stream(wrow[rt][r] + kb * 64));
                if (NV)
                    sc[rt][r] = __ldg(reinterpret_cast<const uint2 *>(srow[rt][r] + kb * 8));
                else
                    sc[rt][r] =
                        make_uint2(__ldg(reinterpret_cast<const unsigned *>(srow[rt][r] + kb * 4)), 0);
            }
    }
    for (; kb < kbn; kb += QPLUG_GEMV_WARPS) {
        int kn = kb + QPLUG_GEMV_WARPS;
#pragma unroll
        for (int rt = 0; rt < RT; rt++)
#pragma unroll
            for (int r = 0; r < 2; r++) {
                uint4 v = make_uint4(0, 0, 0, 0);
                uint2 s = make_uint2(0, 0);
                if (kn < kbn) {
                    v = qplug_cuda__ld_stream(wrow[rt][r] + kn * 64);
                    if (NV)
                        s = __ldg(reinterpret_cast<const uint2 *>(srow[rt][r] + kn * 8));
                    else
                        s.x = __ldg(reinterpret_cast<const unsigned *>(srow[rt][r] + kn * 4));
                }
                qplug_cuda__u4(an[rt][r], v);
                scn[rt][r] = s;
            }
        unsigned b[NT][4][2];
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int s = 0; s < 4; s++) {
                b[nt][s][0] = 0;
                b[nt][s][1] = 0;
                if (xvalid[nt]) {
                    const uint8_t *p = xrow[nt] + kb * 128 + 32 * s;
                    b[nt][s][0] = __ldg(reinterpret_cast<const unsigned *>(p));
                    b[nt][s][1] = __ldg(reinterpret_cast<const unsigned *>(p + 16));
                }
            }
        float sa[NT][2];
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int c = 0; c < 2; c++) {
                int tok = nt * 8 + 2 * t + c;
                sa[nt][c] = tok < m ? __ldg(xscale + (int64_t)kb * m + tok) : 0.0f;
            }
#pragma unroll
        for (int rt = 0; rt < RT; rt++) {
            float acc[NT][4];
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int i = 0; i < 4; i++)
                    acc[nt][i] = 0.0f;
#pragma unroll
            for (int s = 0; s < 4; s++) {
                unsigned lo0, hi0, lo1, hi1;
                qplug_cuda__fp4x8_to_fp8(a[rt][0][s], &lo0, &hi0);
                qplug_cuda__fp4x8_to_fp8(a[rt][1][s], &lo1, &hi1);
                if (NV) {
                    /* Bytes 2s and 2s+1 of the row's 8 scale bytes. */
                    unsigned w0 = s < 2 ? sc[rt][0].x : sc[rt][0].y;
                    unsigned w1 = s < 2 ? sc[rt][1].x : sc[rt][1].y;
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
                    float s0 = qplug_cuda__e8m0_dev((sc[rt][0].x >> (8 * s)) & 0xffu);
                    float s1 = qplug_cuda__e8m0_dev((sc[rt][1].x >> (8 * s)) & 0xffu);
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
                tot[rt][nt][0] += acc[nt][0] * sa[nt][0];
                tot[rt][nt][1] += acc[nt][1] * sa[nt][1];
                tot[rt][nt][2] += acc[nt][2] * sa[nt][0];
                tot[rt][nt][3] += acc[nt][3] * sa[nt][1];
            }
        }
#pragma unroll
        for (int rt = 0; rt < RT; rt++)
#pragma unroll
            for (int r = 0; r < 2; r++) {
#pragma unroll
                for (int i = 0; i < 4; i++)
                    a[rt][r][i] = an[rt][r][i];
                sc[rt][r] = scn[rt][r];
            }
    }
    /* The decoded E4M3 bytes hold e2m1 * 2^-6; post restores 2^6 (and the
     * NVFP4 global scale). */
#pragma unroll
    for (int rt = 0; rt < RT; rt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++)
                tot[rt][nt][i] *= post;
    qplug_cuda__gemv_store<NT, RT>(red, tot, m, n, n0, y);
}

/* Two rows of 16 per warp would halve the activation re-reads, but on an
 * H200 they cost occupancy (over 128 registers: one block per SM) and ran
 * slower than one row tile (bench/NOTES.md, version 1), so one it is. */
static int qplug_cuda__gemv_rt(int64_t n)
{
    (void)n;
    return 1;
}

static qplug_status qplug_cuda__gemv_check(const char *what, const void *w, const void *ws,
                                           const void *xq, const float *xs, int64_t m, int64_t n,
                                           int64_t k, const void *y, qplug_cuda__err *err)
{
    if (!w || !ws || !xq || !xs || !y)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT, "%s: NULL pointer", what);
    if (m < 1 || m > QPLUG_CUDA_GEMV_MAX_M || n < 16 || n % 16 != 0 || k < 128 || k % 128 != 0 ||
        n / 16 > 0x7fffffff)
        return qplug_cuda__fail(err, QPLUG_ERR_SHAPE,
                                "%s: m=%lld n=%lld k=%lld needs 1 <= m <= %d, n %% 16 == 0, "
                                "k %% 128 == 0",
                                what, (long long)m, (long long)n, (long long)k,
                                QPLUG_CUDA_GEMV_MAX_M);
    return QPLUG_OK;
}

extern "C" qplug_status qplug_cuda__gemv_fp8(const void *w, const float *w_scale, const void *xq,
                                             const float *x_scale, int64_t m, int64_t n,
                                             int64_t k, void *y, void *stream,
                                             qplug_cuda__err *err)
{
    qplug_status s = qplug_cuda__gemv_check("gemv_fp8", w, w_scale, xq, x_scale, m, n, k, y, err);
    if (s != QPLUG_OK)
        return s;
    int rt = qplug_cuda__gemv_rt(n);
    dim3 grid((unsigned)(n / (16 * rt)));
    dim3 block(QPLUG_GEMV_WARPS * 32);
    cudaStream_t st = (cudaStream_t)stream;
    const uint8_t *wp = (const uint8_t *)w, *xp = (const uint8_t *)xq;
    __nv_bfloat16 *yp = (__nv_bfloat16 *)y;
    if (m <= 8 && rt == 1)
        qplug_cuda__gemv_fp8_kernel<1, 1><<<grid, block, 0, st>>>(wp, w_scale, xp, x_scale, (int)m, n, k, yp);
    else if (m <= 8)
        qplug_cuda__gemv_fp8_kernel<1, 2><<<grid, block, 0, st>>>(wp, w_scale, xp, x_scale, (int)m, n, k, yp);
    else if (rt == 1)
        qplug_cuda__gemv_fp8_kernel<2, 1><<<grid, block, 0, st>>>(wp, w_scale, xp, x_scale, (int)m, n, k, yp);
    else
        qplug_cuda__gemv_fp8_kernel<2, 2><<<grid, block, 0, st>>>(wp, w_scale, xp, x_scale, (int)m, n, k, yp);
    return qplug_cuda__check_launch(err, "gemv_fp8");
}

template <bool NV>
static qplug_status qplug_cuda__gemv_fp4_launch(const uint8_t *w, const uint8_t *ws, float post,
                                                const void *xq, const float *xs, int64_t m,
                                                int64_t n, int64_t k, void *y, void *stream,
                                                const char *what, qplug_cuda__err *err)
{
    qplug_status s = qplug_cuda__gemv_check(what, w, ws, xq, xs, m, n, k, y, err);
    if (s != QPLUG_OK)
        return s;
    int rt = qplug_cuda__gemv_rt(n);
    dim3 grid((unsigned)(n / (16 * rt)));
    dim3 block(QPLUG_GEMV_WARPS * 32);
    cudaStream_t st = (cudaStream_t)stream;
    const uint8_t *xp = (const uint8_t *)xq;
    __nv_bfloat16 *yp = (__nv_bfloat16 *)y;
    if (m <= 8 && rt == 1)
        qplug_cuda__gemv_fp4_kernel<1, 1, NV><<<grid, block, 0, st>>>(w, ws, post, xp, xs, (int)m, n, k, yp);
    else if (m <= 8)
        qplug_cuda__gemv_fp4_kernel<1, 2, NV><<<grid, block, 0, st>>>(w, ws, post, xp, xs, (int)m, n, k, yp);
    else if (rt == 1)
        qplug_cuda__gemv_fp4_kernel<2, 1, NV><<<grid, block, 0, st>>>(w, ws, post, xp, xs, (int)m, n, k, yp);
    else
        qplug_cuda__gemv_fp4_kernel<2, 2, NV><<<grid, block, 0, st>>>(w, ws, post, xp, xs, (int)m, n, k, yp);
    return qplug_cuda__check_launch(err, what);
}

extern "C" qplug_status qplug_cuda__gemv_mxfp4(const uint8_t *w_packed, const uint8_t *w_scale,
                                               const void *xq, const float *x_scale, int64_t m,
                                               int64_t n, int64_t k, void *y, void *stream,
                                               qplug_cuda__err *err)
{
    return qplug_cuda__gemv_fp4_launch<false>(w_packed, w_scale, 64.0f, xq, x_scale, m, n, k, y,
                                              stream, "gemv_mxfp4", err);
}

extern "C" qplug_status qplug_cuda__gemv_nvfp4(const uint8_t *w_packed, const uint8_t *w_scale,
                                               float global_scale, const void *xq,
                                               const float *x_scale, int64_t m, int64_t n,
                                               int64_t k, void *y, void *stream,
                                               qplug_cuda__err *err)
{
    return qplug_cuda__gemv_fp4_launch<true>(w_packed, w_scale, 64.0f * global_scale, xq, x_scale,
                                             m, n, k, y, stream, "gemv_nvfp4", err);
}
