/* Fused MoE on the GPU: routing, token permutation by expert, grouped
 * gate/up GEMM with clamped SwiGLU, per-128 FP8 quantization of h, grouped
 * down GEMM and a deterministic weighted combine; plus the w4a4 pre-dispatch
 * FP4 packing. See qplug_cuda_moe.h for the semantics.
 *
 * Graph capture: the routing stays on the device. The permutation kernel
 * writes a tile table (expert, first row, end row) for the grouped GEMMs,
 * whose grids are sized by the worst case, ceil(m*top_k/BM) + E tiles of BM
 * rows (BM = 16 in decode on v6 and the mma.sync kernels, 128 on the wgmma
 * kernels otherwise, else 64, chosen from the host shapes); blocks past the
 * real tile count exit at once. The W4A4 fallback of the MXFP4 wgmma path
 * is chosen on the device too (a flag read by both launched GEMMs), so no
 * path of the forward needs a host sync. The kernels after the routing use
 * programmatic dependent launch (qplug_cuda__moe_launch), which graphs
 * capture as programmatic edges.
 *
 * Determinism: rows of one expert are placed with shared-memory atomics, so
 * their order within the expert varies from run to run, but every output row
 * of the GEMMs depends only on its own input row, and the combine sums a
 * token's slots in slot order through the inverse map, so y is bitwise
 * reproducible. */
#include "internal.cuh"
#include "qplug_cuda_moe.h"

#include <string.h>

/* Tile of the grouped GEMMs: 64 (or, when experts get few rows, 16) routed
 * rows x 128 output columns, k in steps
 * of 64 bytes of E4M3 per row; shared rows are padded to 96 bytes so that the
 * 8-byte fragment loads of each half warp (4 rows x 4 threads) hit 32
 * distinct banks. */
enum {
    MOE_BM_LARGE = 64,
    MOE_BM_SMALL = 16,
    MOE_BN = 128,
    MOE_BK = 64,
    MOE_LDS = 96,
    MOE_THREADS = 256,
    MOE_MAX_E = 1024,
    MOE_MAX_K = 16
};

/* Formats of the GEMM operands: FP8 with one scale per 128 of k (per
 * 128x128 block for weights), FP4 with E8M0 per 32 (MX) or E4M3 per 16 (NV). */
enum { MOE_F_FP8 = 0, MOE_F_MX = 1, MOE_F_NV = 2 };

static size_t moe_align(size_t v)
{
    return (v + 255u) & ~(size_t)255u;
}

/* Programmatic dependent launch: the kernels of the forward after the
 * routing (permute, gather, the v6 GEMMs, hquant, combine) start with
 * qplug_cuda__moe_pdl_enter, so each may be launched while the previous
 * kernel of the stream finishes (its launch and block scheduling overlap
 * that kernel's last wave). Every one of them waits before its first
 * global access, so the chain stays ordered, transitively too. 0: plain
 * stream order (the kernels' waits then return at once). */
#ifndef QPLUG_MOE_PDL
#define QPLUG_MOE_PDL 1
#endif

/* Waits until the previous kernel of the stream has completed and its
 * writes are visible, then lets the next kernel launch. */
static __device__ __forceinline__ void qplug_cuda__moe_pdl_enter(void)
{
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
}

/* Launches kernel k with the programmatic-serialization attribute (when
 * QPLUG_MOE_PDL), plus a cluster of cluster_x blocks along x when > 1. */
template <typename... P, typename... A>
static cudaError_t qplug_cuda__moe_launch(void (*k)(P...), dim3 grid, unsigned threads,
                                          size_t smem, cudaStream_t s, unsigned cluster_x,
                                          A &&...args)
{
    cudaLaunchAttribute at[2];
    unsigned n = 0;
    if (QPLUG_MOE_PDL) {
        at[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        at[n].val.programmaticStreamSerializationAllowed = 1;
        n++;
    }
    if (cluster_x > 1) {
        at[n].id = cudaLaunchAttributeClusterDimension;
        at[n].val.clusterDim.x = cluster_x;
        at[n].val.clusterDim.y = 1;
        at[n].val.clusterDim.z = 1;
        n++;
    }
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = dim3(threads);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = s;
    cfg.attrs = at;
    cfg.numAttrs = n;
    return cudaLaunchKernelEx(&cfg, k, static_cast<A &&>(args)...);
}

/* The status of a launch through qplug_cuda__moe_launch. */
static qplug_status qplug_cuda__moe_launched(cudaError_t ce, const char *fn, const char *what,
                                             qplug_cuda__err *err)
{
    if (ce == cudaSuccess)
        return QPLUG_OK;
    return qplug_cuda__fail(err, QPLUG_ERR_DEVICE, "%s: launch of %s failed: %s", fn, what,
                            cudaGetErrorString(ce));
}

/* ------------------------------------------------------------- routing */

__global__ void __launch_bounds__(256)
    qplug_cuda__moe_route_kernel(const __nv_bfloat16 *__restrict__ x,
                                 const __nv_bfloat16 *__restrict__ gate,
                                 const float *__restrict__ bias, const int32_t *__restrict__ tid2eid,
                                 const int32_t *__restrict__ token_ids, int64_t vocab, int64_t D,
                                 int E, int K, float scaling, int32_t *__restrict__ ids,
                                 float *__restrict__ wts)
{
    __shared__ float s[MOE_MAX_E];
    __shared__ float sel[MOE_MAX_E];
    __shared__ unsigned char taken[MOE_MAX_E];
    int64_t t = blockIdx.x;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    const __nv_bfloat16 *xr = x + t * D;

    for (int e = warp; e < E; e += nw) {
        const __nv_bfloat16 *gr = gate + (int64_t)e * D;
        float acc = 0.0f;
        for (int64_t d = lane * 8; d < D; d += 256) {
            uint4 xv = *reinterpret_cast<const uint4 *>(xr + d);
            uint4 gv = *reinterpret_cast<const uint4 *>(gr + d);
            const __nv_bfloat162 *xa = reinterpret_cast<const __nv_bfloat162 *>(&xv);
            const __nv_bfloat162 *ga = reinterpret_cast<const __nv_bfloat162 *>(&gv);
#pragma unroll
            for (int i = 0; i < 4; i++) {
                float2 xf = __bfloat1622float2(xa[i]);
                float2 gf = __bfloat1622float2(ga[i]);
                acc = fmaf(xf.x, gf.x, acc);
                acc = fmaf(xf.y, gf.y, acc);
            }
        }
        for (int o = 16; o > 0; o >>= 1)
            acc += __shfl_xor_sync(0xffffffffu, acc, o);
        if (lane == 0) {
            float sp = acc > 20.0f ? acc : log1pf(expf(acc));
            s[e] = sqrtf(sp);
            sel[e] = s[e] + (bias ? bias[e] : 0.0f);
            taken[e] = 0;
        }
    }
    __syncthreads();
    if (warp != 0)
        return;

    __shared__ int chosen[MOE_MAX_K];
    if (tid2eid) {
        if (lane < K) {
            int32_t tok = token_ids[t];
            int32_t e = -1;
            if (tok >= 0 && tok < vocab)
                e = tid2eid[(int64_t)tok * K + lane];
            chosen[lane] = (e >= 0 && e < E) ? e : -1;
        }
    } else {
        for (int j = 0; j < K; j++) {
            /* Warp arg-max over the experts not taken yet; NaN never wins and
             * ties go to the lower index (INT_MAX marks "none"). */
            float bv = 0.0f;
            int bi = 0x7fffffff;
            for (int e = lane; e < E; e += 32) {
                float v = sel[e];
                if (!taken[e] && v == v && (bi == 0x7fffffff || v > bv)) {
                    bv = v;
                    bi = e;
                }
            }
            for (int o = 16; o > 0; o >>= 1) {
                float ov = __shfl_xor_sync(0xffffffffu, bv, o);
                int oi = __shfl_xor_sync(0xffffffffu, bi, o);
                if (oi != 0x7fffffff &&
                    (bi == 0x7fffffff || ov > bv || (ov == bv && oi < bi))) {
                    bv = ov;
                    bi = oi;
                }
            }
            if (lane == 0) {
                chosen[j] = bi == 0x7fffffff ? -1 : bi;
                if (bi != 0x7fffffff)
                    taken[bi] = 1;
            }
            __syncwarp();
        }
    }
    __syncwarp();
    if (lane == 0) {
        float sum = 0.0f;
        for (int j = 0; j < K; j++)
            if (chosen[j] >= 0)
                sum += s[chosen[j]];
        for (int j = 0; j < K; j++) {
            int e = chosen[j];
            ids[t * K + j] = e;
            wts[t * K + j] = (e >= 0 && sum > 0.0f) ? s[e] / sum * scaling : 0.0f;
        }
    }
}

extern "C" qplug_status qplug_cuda__moe_route(const void *x, const void *gate, const float *bias,
                                              const int32_t *tid2eid, const int32_t *token_ids,
                                              int64_t vocab, int64_t m, int64_t D, int32_t E,
                                              int32_t top_k, float routed_scaling,
                                              int32_t *topk_ids, float *topk_weights,
                                              void *stream, qplug_cuda__err *err)
{
    if (!x || !gate || !topk_ids || !topk_weights || (tid2eid && !token_ids))
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT, "moe_route: NULL pointer");
    if (m < 0 || m > 0x7fffffff || D < 8 || D % 8 != 0 || E < 1 || E > MOE_MAX_E ||
        top_k < 1 || top_k > MOE_MAX_K || top_k > E || (tid2eid && vocab < 1))
        return qplug_cuda__fail(err, QPLUG_ERR_SHAPE,
                                "moe_route: unsupported shape m=%lld D=%lld E=%d top_k=%d",
                                (long long)m, (long long)D, (int)E, (int)top_k);
    if (m == 0)
        return QPLUG_OK;
    qplug_cuda__moe_route_kernel<<<(unsigned)m, 256, 0, (cudaStream_t)stream>>>(
        (const __nv_bfloat16 *)x, (const __nv_bfloat16 *)gate, bias, tid2eid, token_ids, vocab,
        D, E, top_k, routed_scaling, topk_ids, topk_weights);
    return qplug_cuda__check_launch(err, "moe_route");
}

/* ---------------------------------------------------------- permutation */

/* Inclusive sum of v over the block's 1024 threads (32 warps); `part`
 * is 32 ints of shared memory. Ends with the block synchronised. */
static __device__ __forceinline__ int qplug_cuda__moe_block_scan(int v, int *part)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        int u = __shfl_up_sync(0xffffffffu, v, o);
        v += lane >= o ? u : 0;
    }
    if (lane == 31)
        part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        int w = part[lane];
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            int u = __shfl_up_sync(0xffffffffu, w, o);
            w += lane >= o ? u : 0;
        }
        part[lane] = w;
    }
    __syncthreads();
    return v + (warp > 0 ? part[warp - 1] : 0);
}

/* The expert ids of up to 8 routed rows base + 1024 u + threadIdx.x (-1
 * past R or outside [0, E)), all loads issued before any is used: a lone
 * block is bound by the latency of its loads, not by their bandwidth. */
static __device__ __forceinline__ void qplug_cuda__moe_ids8(const int32_t *__restrict__ ids,
                                                            int64_t base, int64_t R, int E,
                                                            int *e)
{
#pragma unroll
    for (int u = 0; u < 8; u++) {
        int64_t i = base + 1024 * u + threadIdx.x;
        e[u] = i < R ? ids[i] : -1;
    }
#pragma unroll
    for (int u = 0; u < 8; u++)
        e[u] = e[u] >= 0 && e[u] < E ? e[u] : -1;
}

/* One block of 1024 threads: counts per expert, prefix sums (a block
 * scan, one thread per expert), the tile table, then every valid (token,
 * slot) pair gets its row; inv maps the pair back to it (or -1). Each
 * expert's rows start at a multiple of align (1, or V6_RALIGN for the v6
 * kernels, whose token scales are bulk-copied from the tile's first row);
 * rows between the experts belong to no pair (perm_tok -1). Also clears
 * the W4A4 fallback flag. */
__global__ void __launch_bounds__(1024)
    qplug_cuda__moe_permute_kernel(const int32_t *__restrict__ ids, int64_t R, int K, int E, int bm,
                                   int align, int32_t *__restrict__ ntiles, int32_t *__restrict__ tile_e,
                                   int32_t *__restrict__ tile_r0, int32_t *__restrict__ tile_r1,
                                   int32_t *__restrict__ perm_tok, int32_t *__restrict__ inv,
                                   int32_t *__restrict__ flag)
{
    __shared__ int cnt[MOE_MAX_E];
    __shared__ int cur[MOE_MAX_E];
    /* One partial-sum buffer per scan: a warp may still read the first
     * scan's partials while another already writes the second's. */
    __shared__ int part[2][32];
    int tid = threadIdx.x;
    qplug_cuda__moe_pdl_enter();
    /* The W4A4 unpack, later on the stream, only ever sets the flag. */
    if (flag && tid == 0)
        *flag = 0;
    for (int e = tid; e < E; e += 1024)
        cnt[e] = 0;
    __syncthreads();
    for (int64_t base = 0; base < R; base += 8 * 1024) {
        int e[8];
        qplug_cuda__moe_ids8(ids, base, R, E, e);
#pragma unroll
        for (int u = 0; u < 8; u++)
            if (e[u] >= 0)
                atomicAdd(&cnt[e[u]], 1);
    }
    __syncthreads();
    /* Thread e: expert e's padded rows and tiles, then their exclusive
     * prefix sums (E <= 1024, one thread each). */
    int c = tid < E ? cnt[tid] : 0;
    int rows = (c + align - 1) / align * align, nt = (c + bm - 1) / bm;
    int rincl = qplug_cuda__moe_block_scan(rows, part[0]);
    int tincl = qplug_cuda__moe_block_scan(nt, part[1]);
    if (tid == 1023)
        *ntiles = tincl;
    if (tid < E) {
        int r0e = rincl - rows, t0 = tincl - nt, end = r0e + c;
        cur[tid] = r0e;
        /* The alignment's padding rows belong to no pair (the h
         * quantization skips them). */
        for (int r = end; r < r0e + rows; r++)
            perm_tok[r] = -1;
        for (int q = 0; q < nt; q++) {
            int r0 = r0e + q * bm, r1 = min(r0 + bm, end);
            tile_e[t0 + q] = tid;
            tile_r0[t0 + q] = r0;
            tile_r1[t0 + q] = r1;
        }
    }
    __syncthreads();
    for (int64_t base = 0; base < R; base += 8 * 1024) {
        int e[8];
        qplug_cuda__moe_ids8(ids, base, R, E, e);
#pragma unroll
        for (int u = 0; u < 8; u++) {
            int64_t i = base + 1024 * u + tid;
            if (i >= R)
                break;
            if (e[u] >= 0) {
                int pos = atomicAdd(&cur[e[u]], 1);
                /* 32-bit division where it fits (always, below 2^31 pairs). */
                perm_tok[pos] = (int32_t)(i < 0x7fffffff ? (int)i / K : i / K);
                inv[i] = pos;
            } else {
                inv[i] = -1;
            }
        }
    }
}

/* ---------------------------------------------------------- grouped GEMM */

struct qplug_cuda__moe_gemm_args {
    const int32_t *ntiles, *tile_e, *tile_r0, *tile_r1;
    const int32_t *perm_tok; /* A row of routed row r: perm_tok[r], or r when NULL */
    const uint8_t *a;        /* FP8 [rows, k] or packed FP4 rows of a_ld bytes */
    int64_t a_ld;
    const float *a_scale; /* FP8: [k/128][a_sld] */
    int64_t a_sld;
    float a_gscale;          /* packed NVFP4 activations: the global scale */
    const uint8_t *w[2];     /* per expert stacked; w[1] only for the gate/up pair */
    const uint8_t *ws[2];    /* scales (F32 for FP8, bytes for FP4) */
    const float *wg[2];      /* NVFP4 per-expert globals */
    int64_t n, k;
    float limit;
    float *out; /* F32 [rows, n] */
    /* The tile table's tiles are split into `sub` tiles of BM rows (0 or 1:
     * no split); the W4A4 fallback runs 64-row tiles over the 128-row
     * table of the wgmma path. */
    int sub;
    /* Device flags that make a launch exit at once: the wgmma kernel when
     * *skip_if != 0, the mma.sync kernel when *run_if == 0 (NULL: run). */
    const int32_t *skip_if, *run_if;
    /* v6 gate/up with the h quantization fused into its epilogue (hq not
     * NULL): h goes straight to E4M3 hq [rows, n] and scales hs
     * [n/128][hs_ld] by the rule of qplug_cuda__moe_hquant_kernel (ue8m0,
     * hperm: the MXFP4 k order), not to out. */
    uint8_t *hq;
    float *hs;
    int64_t hs_ld;
    int ue8m0, hperm;
};

/* Four 32-bit words of packed E2M1 (32 values) to 32 E4M3 bytes (value *
 * 2^-6) written as two 16-byte stores. */
static __device__ __forceinline__ void qplug_cuda__moe_fp4_store(uint8_t *dst, uint4 v)
{
    unsigned w[4] = {v.x, v.y, v.z, v.w};
    unsigned o[8];
#pragma unroll
    for (int i = 0; i < 4; i++)
        qplug_cuda__fp4x8_to_fp8(w[i], &o[2 * i], &o[2 * i + 1]);
    reinterpret_cast<uint4 *>(dst)[0] = make_uint4(o[0], o[1], o[2], o[3]);
    reinterpret_cast<uint4 *>(dst)[1] = make_uint4(o[4], o[5], o[6], o[7]);
}

/* The raw scale bytes of k [k0, k0 + 64) of one FP4 row, little-endian in
 * a word: two E8M0 (MX, one per 32) or four E4M3 (NV, one per 16). */
template <int F>
static __device__ __forceinline__ unsigned qplug_cuda__moe_fp4_scale_raw(const uint8_t *sc,
                                                                         int64_t k0)
{
    if (F == MOE_F_MX)
        return (unsigned)sc[k0 / 32] | ((unsigned)sc[k0 / 32 + 1] << 8);
    return (unsigned)sc[k0 / 16] | ((unsigned)sc[k0 / 16 + 1] << 8) |
           ((unsigned)sc[k0 / 16 + 2] << 16) | ((unsigned)sc[k0 / 16 + 3] << 24);
}

/* The four per-16 scales of those raw bytes, times 2^6 (the decode to E4M3
 * divides by it); NV also times the global g. */
template <int F>
static __device__ __forceinline__ void qplug_cuda__moe_fp4_scales(unsigned raw, float g,
                                                                  float out[4])
{
    if (F == MOE_F_MX) {
        out[0] = out[1] = qplug_cuda__e8m0_dev(raw & 0xffu) * 64.0f;
        out[2] = out[3] = qplug_cuda__e8m0_dev((raw >> 8) & 0xffu) * 64.0f;
    } else {
#pragma unroll
        for (int i = 0; i < 4; i++)
            out[i] = qplug_cuda__e4m3_dev((raw >> (8 * i)) & 0xffu) * g * 64.0f;
    }
}

/*
 * One tile: BM routed rows of one expert x 128 output columns (of w1 and w3
 * together for the gate/up GEMM). 8 warps, each 16 rows x 64 columns (BM =
 * 64) or 16 rows x 16 columns (BM = 16). k runs
 * in chunks of 64 through shared memory as E4M3 (FP4 decoded on the way in)
 * with per-16 scales in shared memory; the global loads of the next chunk
 * are issued into registers before the current chunk's mmas, so memory and
 * tensor cores overlap.
 *
 * Fragments use a permuted k: within each 32-wide step, thread tq's
 * fragments a0/a2 (row gid), a1/a3 (row gid + 8) and b0/b1 are the eight
 * consecutive k values 8tq..8tq+7 (one 8-byte shared load each), instead of
 * 4tq..4tq+3 and 16+4tq..16+4tq+3. A and B use the same mapping, so the dot
 * product is unchanged, and a 32-wide step still covers exactly one MXFP4
 * group. An NVFP4 group of 16 is then the fragments of threads tq = 0, 1
 * (or 2, 3): each of the two mmas of a step keeps the B fragments of one
 * group's threads and zeroes the others.
 */
template <int BM, int AF, int WF, bool DUAL>
__global__ void __launch_bounds__(MOE_THREADS, 2)
    qplug_cuda__moe_gemm_kernel(const qplug_cuda__moe_gemm_args p)
{
    /* Warps: WM along the rows (16 each), WN along the 128 columns, FR
     * fragments of 8 columns per warp. */
    constexpr int WM = BM / 16, WN = 8 / WM, FR = 16 / WN;
    constexpr int NM = DUAL ? 2 : 1;
    constexpr bool G16 = AF == MOE_F_NV || WF == MOE_F_NV;
    __shared__ __align__(16) uint8_t As[BM][MOE_LDS];
    __shared__ __align__(16) uint8_t Bs[NM][MOE_BN][MOE_LDS];
    __shared__ __align__(16) float as_s[4][BM];
    __shared__ __align__(16) float bs_s[NM][4][MOE_BN];
    __shared__ int64_t arow[BM];

    if (p.run_if && *p.run_if == 0)
        return;
    int sub = p.sub > 1 ? p.sub : 1;
    int tile = blockIdx.x / sub;
    if (tile >= *p.ntiles)
        return;
    int e = p.tile_e[tile], r0 = p.tile_r0[tile], r1 = p.tile_r1[tile];
    r0 += (int)(blockIdx.x % sub) * BM;
    if (r0 >= r1)
        return;
    r1 = min(r1, r0 + BM);
    int64_t n = p.n, k = p.k;
    int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gid = lane >> 2, tq = lane & 3;
    int wm = warp % WM, wn = warp / WM;

    if (tid < BM) {
        int r = r0 + tid;
        arow[tid] = r < r1 ? (p.perm_tok ? p.perm_tok[r] : r) : -1;
    }

    /* One n-block per block, except for the W4A4 fallback, which loops over
     * them (grid.y = 1) so that its launch costs little when the flag leaves
     * it idle. */
    for (int64_t n0 = (int64_t)blockIdx.y * MOE_BN; n0 < p.n;
         n0 += (int64_t)gridDim.y * MOE_BN) {
        /* Per-expert bases of the weights and their scales. */
        const uint8_t *wb[NM];
        const uint8_t *sb[NM];
        float wgl[NM];
#pragma unroll
        for (int mi = 0; mi < NM; mi++) {
            if (WF == MOE_F_FP8) {
                wb[mi] = p.w[mi] + (int64_t)e * n * k;
                sb[mi] = p.ws[mi] +
                         ((int64_t)e * (n / 128) * (k / 128) + (n0 / 128) * (k / 128)) * 4;
            } else {
                wb[mi] = p.w[mi] + (int64_t)e * n * (k / 2);
                int64_t per = WF == MOE_F_MX ? k / 32 : k / 16;
                sb[mi] = p.ws[mi] + (int64_t)e * n * per;
            }
            wgl[mi] = WF == MOE_F_NV ? p.wg[mi][e] : 1.0f;
        }

        float acc[NM][FR][4];
#pragma unroll
        for (int mi = 0; mi < NM; mi++)
#pragma unroll
            for (int f = 0; f < FR; f++)
#pragma unroll
                for (int i = 0; i < 4; i++)
                    acc[mi][f][i] = 0.0f;
        __syncthreads();

        /* The staged chunk in registers: this thread's A piece and scale, its
         * B pieces and (threads < 128) their row's scales. */
        uint4 ra = make_uint4(0, 0, 0, 0);
        float ras = 0.0f;
        unsigned rasr = 0;
        uint4 rb[NM][2];
        float rbs[NM];
        unsigned rbsr[NM];
        int64_t arow_me = 0;

        auto load = [&](int64_t k0) {
            if (AF == MOE_F_FP8) {
                int64_t ar = tid < 4 * BM ? arow[tid >> 2] : -1;
                ra = make_uint4(0, 0, 0, 0);
                if (ar >= 0)
                    ra = __ldg(reinterpret_cast<const uint4 *>(p.a + ar * p.a_ld + k0 +
                                                               (tid & 3) * 16));
                if (tid < BM) {
                    arow_me = arow[tid];
                    ras = arow_me >= 0 ? __ldg(p.a_scale + (k0 / 128) * p.a_sld + arow_me) : 0.0f;
                }
            } else {
                if (tid < 2 * BM) {
                    int64_t ar = arow[tid >> 1];
                    ra = make_uint4(0, 0, 0, 0);
                    if (ar >= 0) {
                        /* Packed rows are only 4-byte aligned (hidden/2 + scales). */
                        const unsigned *src = reinterpret_cast<const unsigned *>(
                            p.a + ar * p.a_ld + k0 / 2 + (tid & 1) * 16);
                        ra = make_uint4(__ldg(src), __ldg(src + 1), __ldg(src + 2), __ldg(src + 3));
                    }
                } else if (tid < 3 * BM) {
                    arow_me = arow[tid - 2 * BM];
                    rasr = arow_me >= 0
                               ? qplug_cuda__moe_fp4_scale_raw<AF>(
                                     p.a + arow_me * p.a_ld + k / 2, k0)
                               : 0u;
                }
            }
#pragma unroll
            for (int mi = 0; mi < NM; mi++) {
                if (WF == MOE_F_FP8) {
#pragma unroll
                    for (int it = 0; it < 2; it++) {
                        int idx = tid + it * MOE_THREADS;
                        rb[mi][it] = qplug_cuda__ld_stream(wb[mi] + (n0 + (idx >> 2)) * k + k0 +
                                                           (idx & 3) * 16);
                    }
                    if (tid < MOE_BN)
                        rbs[mi] = __ldg(reinterpret_cast<const float *>(sb[mi]) + k0 / 128);
                } else {
                    rb[mi][0] = qplug_cuda__ld_stream(wb[mi] + (n0 + (tid >> 1)) * (k / 2) +
                                                      k0 / 2 + (tid & 1) * 16);
                    if (tid < MOE_BN) {
                        int64_t per = WF == MOE_F_MX ? k / 32 : k / 16;
                        rbsr[mi] = qplug_cuda__moe_fp4_scale_raw<WF>(sb[mi] + (n0 + tid) * per, k0);
                    }
                }
            }
        };

        auto store = [&]() {
            if (AF == MOE_F_FP8) {
                if (tid < 4 * BM)
                    *reinterpret_cast<uint4 *>(&As[tid >> 2][(tid & 3) * 16]) = ra;
                if (tid < BM)
                    as_s[0][tid] = as_s[1][tid] = as_s[2][tid] = as_s[3][tid] = ras;
            } else {
                if (tid < 2 * BM) {
                    qplug_cuda__moe_fp4_store(&As[tid >> 1][(tid & 1) * 32], ra);
                } else if (tid < 3 * BM) {
                    float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                    if (arow_me >= 0)
                        qplug_cuda__moe_fp4_scales<AF>(rasr, p.a_gscale, s);
#pragma unroll
                    for (int i = 0; i < 4; i++)
                        as_s[i][tid - 2 * BM] = s[i];
                }
            }
#pragma unroll
            for (int mi = 0; mi < NM; mi++) {
                if (WF == MOE_F_FP8) {
#pragma unroll
                    for (int it = 0; it < 2; it++) {
                        int idx = tid + it * MOE_THREADS;
                        *reinterpret_cast<uint4 *>(&Bs[mi][idx >> 2][(idx & 3) * 16]) = rb[mi][it];
                    }
                    if (tid < MOE_BN)
                        bs_s[mi][0][tid] = bs_s[mi][1][tid] = bs_s[mi][2][tid] = bs_s[mi][3][tid] =
                            rbs[mi];
                } else {
                    qplug_cuda__moe_fp4_store(&Bs[mi][tid >> 1][(tid & 1) * 32], rb[mi][0]);
                    if (tid < MOE_BN) {
                        float s[4];
                        qplug_cuda__moe_fp4_scales<WF>(rbsr[mi], wgl[mi], s);
#pragma unroll
                        for (int i = 0; i < 4; i++)
                            bs_s[mi][i][tid] = s[i];
                    }
                }
            }
        };

        load(0);
        store();
        __syncthreads();
        for (int64_t k0 = 0; k0 < k; k0 += MOE_BK) {
            bool more = k0 + MOE_BK < k;
            if (more)
                load(k0 + MOE_BK);

#pragma unroll
            for (int st = 0; st < 2; st++) {
                int rr = wm * 16 + gid, kc = st * 32 + tq * 8;
                uint2 alo = *reinterpret_cast<const uint2 *>(&As[rr][kc]);
                uint2 ahi = *reinterpret_cast<const uint2 *>(&As[rr + 8][kc]);
                float sa0[2], sa1[2];
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    sa0[h] = as_s[st * 2 + h][rr];
                    sa1[h] = as_s[st * 2 + h][rr + 8];
                }
#pragma unroll
                for (int mi = 0; mi < NM; mi++)
#pragma unroll
                    for (int f = 0; f < FR; f++) {
                        int cb = wn * FR * 8 + f * 8;
                        uint2 b = *reinterpret_cast<const uint2 *>(&Bs[mi][cb + gid][kc]);
                        int c0 = cb + tq * 2;
#pragma unroll
                        for (int h = 0; h < (G16 ? 2 : 1); h++) {
                            float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                            bool mine = !G16 || (tq >> 1) == h;
                            qplug_cuda__mma_e4m3(c, alo.x, ahi.x, alo.y, ahi.y, mine ? b.x : 0u,
                                                 mine ? b.y : 0u);
                            float2 sw =
                                *reinterpret_cast<const float2 *>(&bs_s[mi][st * 2 + h][c0]);
                            acc[mi][f][0] += c[0] * (sa0[h] * sw.x);
                            acc[mi][f][1] += c[1] * (sa0[h] * sw.y);
                            acc[mi][f][2] += c[2] * (sa1[h] * sw.x);
                            acc[mi][f][3] += c[3] * (sa1[h] * sw.y);
                        }
                    }
            }
            __syncthreads();
            if (more) {
                store();
                __syncthreads();
            }
        }

        float L = p.limit;
#pragma unroll
        for (int f = 0; f < FR; f++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                int rr = wm * 16 + gid + (i >= 2 ? 8 : 0);
                int64_t col = n0 + wn * FR * 8 + f * 8 + tq * 2 + (i & 1);
                if (r0 + rr >= r1)
                    continue;
                float v = acc[0][f][i];
                if (DUAL) {
                    float g = v, u = acc[NM - 1][f][i];
                    if (L > 0.0f) {
                        g = fminf(g, L);
                        u = fminf(fmaxf(u, -L), L);
                    }
                    v = g / (1.0f + expf(-g)) * u;
                }
                p.out[(int64_t)(r0 + rr) * n + col] = v;
            }
        __syncthreads();
    }
}

#include "moe_wgmma.cuh"
#include "moe_ws.cuh"
#include "moe_v6.cuh"

/* h F32 [rows, I] -> E4M3 [rows, I] and scales [I/128][ld] for the rows
 * that exist (offsets of the tile table: rows below the last tile's end,
 * except the v6 alignment's padding rows, perm_tok -1, when perm_tok is
 * not NULL);
 * nothing when run_if is not NULL and *run_if is 0 (the v6 W4A4 path, whose
 * gate/up kernel quantizes h itself unless its mma.sync fallback ran).
 * One warp per (row, 128-group), the rule of qplug_cuda__act_quant_fp8. perm: the k
 * order of the v6 kernel with MXFP4 weights (moe_v6.cuh), word w of each
 * 128-group stored at word qplug_cuda__moe_v6_perm_word(w). */
__global__ void __launch_bounds__(256)
    qplug_cuda__moe_hquant_kernel(const float *__restrict__ h, int64_t I,
                                  const int32_t *__restrict__ ntiles,
                                  const int32_t *__restrict__ tile_r1, int ue8m0, int perm,
                                  uint8_t *__restrict__ hq, float *__restrict__ hs, int64_t ld,
                                  const int32_t *__restrict__ run_if,
                                  const int32_t *__restrict__ perm_tok)
{
    qplug_cuda__moe_pdl_enter();
    if (run_if && *run_if == 0)
        return;
    int lane = threadIdx.x & 31, kbn = (int)(I / 128);
    int nt = *ntiles;
    int rows = nt > 0 ? tile_r1[nt - 1] : 0;
    int w = perm ? ((lane >> 1) & 3) * 8 + (lane & 1) * 4 + (lane >> 3) : lane;
    /* A block per row (grid-stride: the host sizes the grid by a bound). */
    for (int row = blockIdx.x; row < rows; row += gridDim.x) {
        if (perm_tok && perm_tok[row] < 0)
            continue;
        for (int kb = threadIdx.x >> 5; kb < kbn; kb += 8) {
            int64_t off = (int64_t)row * I + kb * 128;
            float4 v4 = reinterpret_cast<const float4 *>(h + off)[lane];
            float v[4] = {v4.x, v4.y, v4.z, v4.w};
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
            reinterpret_cast<unsigned *>(hq + off)[w] = q;
            if (lane == 0)
                hs[(int64_t)kb * ld + row] = s;
        }
    }
}

/* y[t] = sum_j w[t,j] * o[inv[t,j]] in slot order, BF16. Each thread
 * makes four consecutive columns (16-byte loads of o; D % 4 == 0). */
__global__ void __launch_bounds__(256)
    qplug_cuda__moe_combine_kernel(const float *__restrict__ o, const int32_t *__restrict__ inv,
                                   const float *__restrict__ wts, int K, int64_t D,
                                   __nv_bfloat16 *__restrict__ y)
{
    qplug_cuda__moe_pdl_enter();
    int64_t t = blockIdx.x;
    int64_t d = ((int64_t)blockIdx.y * 256 + threadIdx.x) * 4;
    if (d >= D)
        return;
    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int j = 0; j < K; j++) {
        int r = inv[t * K + j];
        if (r >= 0) {
            float wj = wts[t * K + j];
            float4 v = *reinterpret_cast<const float4 *>(o + (int64_t)r * D + d);
            acc.x += wj * v.x;
            acc.y += wj * v.y;
            acc.z += wj * v.z;
            acc.w += wj * v.w;
        }
    }
    __nv_bfloat162 lo = __floats2bfloat162_rn(acc.x, acc.y);
    __nv_bfloat162 hi = __floats2bfloat162_rn(acc.z, acc.w);
    __nv_bfloat16 *yr = y + t * D + d;
    /* y is only known to be 2-byte aligned. */
    if (((uintptr_t)yr & 7u) == 0) {
        uint2 out;
        out.x = *reinterpret_cast<unsigned *>(&lo);
        out.y = *reinterpret_cast<unsigned *>(&hi);
        *reinterpret_cast<uint2 *>(yr) = out;
    } else {
        yr[0] = lo.x;
        yr[1] = lo.y;
        yr[2] = hi.x;
        yr[3] = hi.y;
    }
}

/* ------------------------------------------------------------ workspace */

struct qplug_cuda__moe_ws {
    int32_t *ntiles, *tile_e, *tile_r0, *tile_r1, *perm_tok, *inv, *flag;
    uint8_t *xq, *hq, *xg;
    float *xs, *h, *hs, *o, *xgs;
    /* Rows of the routed-row buffers (h, hq, o, xg) and the leading
     * dimension of their scales (hs, xgs). */
    int64_t rows;
};

/* Rows of the routed-row buffers for R routed rows over E experts: the v6
 * kernels start each non-empty expert (at most min(E, R) of them) at a
 * multiple of V6_RALIGN, and a tile's token scales are copied for up to
 * 31 rows past its end (its wgmma N rounded up), hence the slack. */
static int64_t qplug_cuda__moe_rows(int64_t R, int32_t E)
{
    int64_t r = R + (int64_t)(V6_RALIGN - 1) * (R < E ? R : E);
    return (r + V6_RALIGN - 1) / V6_RALIGN * V6_RALIGN + 128;
}

/* Carves the workspace (when base is not NULL) and returns its size. */
static size_t qplug_cuda__moe_carve(uint8_t *base, int64_t m, int32_t K, int32_t E, int64_t D,
                                    int64_t I, qplug_cuda__moe_ws *ws)
{
    int64_t R = m * K, tmax = (R + MOE_BM_SMALL - 1) / MOE_BM_SMALL + E;
    int64_t Rb = qplug_cuda__moe_rows(R, E);
    size_t at = 0;
    size_t sz[15] = {
        4,
        (size_t)tmax * 4,
        (size_t)tmax * 4,
        (size_t)tmax * 4,
        (size_t)Rb * 4,
        (size_t)R * 4,
        (size_t)(m * D),
        (size_t)(D / 128 * m) * 4,
        (size_t)(Rb * I) * 4,
        (size_t)(Rb * I),
        (size_t)(I / 128 * Rb) * 4,
        (size_t)(Rb * D) * 4,
        4,
        (size_t)(Rb * D),
        (size_t)(D / 128 * Rb) * 4,
    };
    void *ptr[15];
    for (int i = 0; i < 15; i++) {
        ptr[i] = base ? base + at : NULL;
        at += moe_align(sz[i]);
    }
    if (ws) {
        ws->ntiles = (int32_t *)ptr[0];
        ws->tile_e = (int32_t *)ptr[1];
        ws->tile_r0 = (int32_t *)ptr[2];
        ws->tile_r1 = (int32_t *)ptr[3];
        ws->perm_tok = (int32_t *)ptr[4];
        ws->inv = (int32_t *)ptr[5];
        ws->xq = (uint8_t *)ptr[6];
        ws->xs = (float *)ptr[7];
        ws->h = (float *)ptr[8];
        ws->hq = (uint8_t *)ptr[9];
        ws->hs = (float *)ptr[10];
        ws->o = (float *)ptr[11];
        ws->flag = (int32_t *)ptr[12];
        ws->xg = (uint8_t *)ptr[13];
        ws->xgs = (float *)ptr[14];
        ws->rows = Rb;
    }
    return at;
}

extern "C" size_t qplug_cuda__moe_workspace_bytes(int64_t m, int32_t top_k, int32_t num_experts,
                                                  int64_t hidden, int64_t intermediate)
{
    /* Beyond the forward's limits the sizes below could overflow int64;
     * the forward refuses those shapes anyway. */
    if (m < 0 || m > 0x7fffffff || top_k < 1 || top_k > MOE_MAX_K || num_experts < 1 ||
        num_experts > MOE_MAX_E || hidden < 1 || hidden > (int64_t)65535 * 128 ||
        intermediate < 1 || intermediate > (int64_t)65535 * 128)
        return 0;
    return qplug_cuda__moe_carve(NULL, m, top_k, num_experts, hidden, intermediate, NULL);
}

/* ------------------------------------------------------------- drivers */

static qplug_status qplug_cuda__moe_check(const qplug_cuda__moe_weights *w, int64_t m,
                                          int32_t K, void *y, void *workspace,
                                          size_t workspace_bytes, const char *fn,
                                          qplug_cuda__err *err)
{
    if (!w || !y || (m > 0 && !workspace))
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT, "%s: NULL pointer", fn);
    if (!w->w1 || !w->w3 || !w->w2 || !w->s1 || !w->s3 || !w->s2 ||
        (w->fmt == QPLUG_CUDA_MOE_NVFP4 && (!w->g1 || !w->g3 || !w->g2)))
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT, "%s: NULL expert weight or scale", fn);
    if (w->fmt != QPLUG_CUDA_MOE_FP8 && w->fmt != QPLUG_CUDA_MOE_MXFP4 &&
        w->fmt != QPLUG_CUDA_MOE_NVFP4)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT, "%s: unknown weight format %d", fn,
                                (int)w->fmt);
    /* Every kernel reads the weights in 16-byte pieces and the scales in
     * 4-byte words; a misaligned pointer would fault on the device and
     * leave the context unusable, so it is refused here. */
    const void *wp[3] = {w->w1, w->w3, w->w2};
    const void *sp[3] = {w->s1, w->s3, w->s2};
    const void *gp[3] = {w->g1, w->g3, w->g2};
    static const char *const wn[3] = {"w1", "w3", "w2"};
    for (int i = 0; i < 3; i++) {
        if (((uintptr_t)wp[i] & 15u) != 0)
            return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT,
                                    "%s: expert weights %s not 16-byte aligned", fn, wn[i]);
        if (((uintptr_t)sp[i] & 3u) != 0 || ((uintptr_t)gp[i] & 3u) != 0)
            return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT,
                                    "%s: scales of expert weights %s not 4-byte aligned", fn,
                                    wn[i]);
    }
    int64_t D = w->hidden, I = w->intermediate;
    if (D < 128 || D % 128 || I < 128 || I % 128 || w->num_experts < 1 ||
        w->num_experts > MOE_MAX_E || K < 1 || K > MOE_MAX_K || m < 0 || m > 0x7fffffff ||
        D / 128 > 65535 || I / 128 > 65535)
        return qplug_cuda__fail(err, QPLUG_ERR_SHAPE,
                                "%s: unsupported shape m=%lld D=%lld I=%lld E=%d top_k=%d", fn,
                                (long long)m, (long long)D, (long long)I, (int)w->num_experts,
                                (int)K);
    size_t need = qplug_cuda__moe_workspace_bytes(m, K, w->num_experts, D, I);
    if (m > 0 && workspace_bytes < need)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT,
                                "%s: workspace of %zu bytes, %zu needed for m=%lld", fn,
                                workspace_bytes, need, (long long)m);
    if (((uintptr_t)workspace & 255u) != 0)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT, "%s: workspace not 256-byte aligned",
                                fn);
    return QPLUG_OK;
}

template <int BM, int AF, int WF, bool DUAL>
static void qplug_cuda__moe_gemm_launch(const qplug_cuda__moe_gemm_args &a, int64_t tmax,
                                        cudaStream_t s)
{
    /* A flag-gated launch (the W4A4 fallback) loops over the n-blocks in
     * each block instead of launching one block per n-block. */
    dim3 grid((unsigned)(tmax * (a.sub > 1 ? a.sub : 1)), a.run_if ? 1u : (unsigned)(a.n / MOE_BN));
    qplug_cuda__moe_gemm_kernel<BM, AF, WF, DUAL><<<grid, MOE_THREADS, 0, s>>>(a);
}

/* Dispatches on the weight format (the activation format is a template
 * argument of the caller). */
template <int BM, int AF, bool DUAL>
static void qplug_cuda__moe_gemm_wf(int wf, const qplug_cuda__moe_gemm_args &a, int64_t tmax,
                                    cudaStream_t s)
{
    if (wf == QPLUG_CUDA_MOE_FP8)
        qplug_cuda__moe_gemm_launch<BM, AF, MOE_F_FP8, DUAL>(a, tmax, s);
    else if (wf == QPLUG_CUDA_MOE_MXFP4)
        qplug_cuda__moe_gemm_launch<BM, AF, MOE_F_MX, DUAL>(a, tmax, s);
    else
        qplug_cuda__moe_gemm_launch<BM, AF, MOE_F_NV, DUAL>(a, tmax, s);
}

/* The gate/up GEMM for activation format af (FP8, or packed FP4 with
 * weights of the same FP4 kind). */
template <int BM>
static void qplug_cuda__moe_gemm_up(int af, int wf, const qplug_cuda__moe_gemm_args &a,
                                    int64_t tmax, cudaStream_t s)
{
    if (af == MOE_F_FP8)
        qplug_cuda__moe_gemm_wf<BM, MOE_F_FP8, true>(wf, a, tmax, s);
    else if (af == MOE_F_MX)
        qplug_cuda__moe_gemm_launch<BM, MOE_F_MX, MOE_F_MX, true>(a, tmax, s);
    else
        qplug_cuda__moe_gemm_launch<BM, MOE_F_NV, MOE_F_NV, true>(a, tmax, s);
}

/* The wgmma GEMM: grid (weight-row blocks, tile bound); the
 * warp-specialized kernel (moe_ws.cuh) unless `v3` (qplug_cuda__moe_use_v4
 * said no); NVFP4 always on the v3 kernel. The caller keeps the tile bound
 * within the grid's y limit of 65535. */
template <int WF, bool DUAL>
static void qplug_cuda__moe_wg_launch(const qplug_cuda__moe_gemm_args &a, int64_t tmax, bool v3,
                                      cudaStream_t s)
{
    dim3 grid((unsigned)(a.n / (DUAL ? 64 : 128)), (unsigned)tmax);
    /* NVFP4 has only the v3 kernel. */
    if constexpr (WF == MOE_F_NV)
        qplug_cuda__moe_wg_kernel<WF, DUAL>
            <<<grid, WG_THREADS, qplug_cuda__moe_wg_smem<WF>::LAUNCH, s>>>(a);
    else if (v3)
        qplug_cuda__moe_wg_kernel<WF, DUAL>
            <<<grid, WG_THREADS, qplug_cuda__moe_wg_smem<WF>::LAUNCH, s>>>(a);
    else
        qplug_cuda__moe_ws_kernel<WF, DUAL>
            <<<grid, WS_THREADS, qplug_cuda__moe_ws_smem<WF>::LAUNCH, s>>>(a);
}

template <bool DUAL>
static void qplug_cuda__moe_wg_wf(int wf, const qplug_cuda__moe_gemm_args &a, int64_t tmax,
                                  bool v3, cudaStream_t s)
{
    if (wf == QPLUG_CUDA_MOE_FP8)
        qplug_cuda__moe_wg_launch<MOE_F_FP8, DUAL>(a, tmax, v3, s);
    else if (wf == QPLUG_CUDA_MOE_MXFP4)
        qplug_cuda__moe_wg_launch<MOE_F_MX, DUAL>(a, tmax, v3, s);
    else
        qplug_cuda__moe_wg_launch<MOE_F_NV, DUAL>(a, tmax, v3, s);
}

/* Which wgmma kernel runs (wgmma_ready 1: chosen here; 2: v3, 3: v4, for
 * tests and benches). Per weight format, QPLUG_MOE_V4_MX / _FP8 = 0: v3
 * always; 1: v4 only when the experts average 16 routed rows or fewer
 * (decode); 2: v4 always; 3: v4 only above 16 rows per expert. The
 * defaults follow the H200 run 2 of bench/NOTES.md (v4 section): v4 was
 * faster for MXFP4 at 64 and 4096 tokens and for FP8 at 4096, v3 for FP8
 * at 64 and 512. */
#ifndef QPLUG_MOE_V4_MX
#define QPLUG_MOE_V4_MX 2
#endif
#ifndef QPLUG_MOE_V4_FP8
#define QPLUG_MOE_V4_FP8 3
#endif
/* NVFP4 experts on the F16 wgmma path of the v3 kernel (1) or on the
 * mma.sync kernels (0). */
#ifndef QPLUG_MOE_WG_NV
#define QPLUG_MOE_WG_NV 1
#endif
static bool qplug_cuda__moe_use_v4(const qplug_cuda__moe_weights *w, int64_t R)
{
    if (w->fmt == QPLUG_CUDA_MOE_NVFP4)
        return false;
    if (w->wgmma_ready == 2 || w->wgmma_ready == 3)
        return w->wgmma_ready == 3;
    int policy = w->fmt == QPLUG_CUDA_MOE_MXFP4 ? QPLUG_MOE_V4_MX : QPLUG_MOE_V4_FP8;
    bool decode = R <= (int64_t)16 * w->num_experts;
    return policy == 2 || (policy == 1 && decode) || (policy == 3 && !decode);
}

/* Raises the dynamic shared-memory limit of one kernel; false on failure. */
template <typename K> static bool qplug_cuda__moe_smem_limit(K *kernel, int bytes)
{
    return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) ==
           cudaSuccess;
}

/* v6 kernels (moe_v6.cuh) for FP8 and MXFP4 experts: 1 when prepare set
 * wgmma_ready to 1 (0: the v3/v4 choice above); wgmma_ready 4 (tests and
 * benches) forces them. */
#ifndef QPLUG_MOE_V6
#define QPLUG_MOE_V6 1
#endif

/* The grouped GEMMs' path for R routed rows and activation format af. */
enum { MOE_P_MMA = 0, MOE_P_V3 = 1, MOE_P_V4 = 2, MOE_P_V6 = 3 };
static int qplug_cuda__moe_path(const qplug_cuda__moe_weights *w, int64_t R, int af)
{
    /* The wgmma kernels (128-row tiles, the wgmma N fitted to each tile's
     * rows) when prepare accepted the experts, the activations are FP8
     * or MXFP4 like the weights and the tile bound fits the grid's y limit
     * (65535 tiles, about 8M routed rows). */
    int64_t twg = (R + WG_BN - 1) / WG_BN + w->num_experts;
    bool wg = w->wgmma_ready && twg <= 65535 &&
              (af == MOE_F_FP8 || (af == MOE_F_MX && w->fmt == QPLUG_CUDA_MOE_MXFP4));
    if (!wg)
        return MOE_P_MMA;
    /* v6 addresses weight rows of all experts with 32-bit TMA coordinates. */
    int64_t nmax = w->hidden > w->intermediate ? w->hidden : w->intermediate;
    bool v6 = w->fmt != QPLUG_CUDA_MOE_NVFP4 && (int64_t)w->num_experts * nmax < INT32_MAX &&
              (w->wgmma_ready == 4 || (w->wgmma_ready == 1 && QPLUG_MOE_V6));
    if (v6)
        return MOE_P_V6;
    return qplug_cuda__moe_use_v4(w, R) ? MOE_P_V4 : MOE_P_V3;
}

typedef CUresult (*qplug_cuda__moe_encode_fn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t,
                                              void *, const cuuint64_t *, const cuuint64_t *,
                                              const cuuint32_t *, const cuuint32_t *,
                                              CUtensorMapInterleave, CUtensorMapSwizzle,
                                              CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

/* A 2D tensor map of bytes: rows of `cols` bytes (also the row stride),
 * boxes of box_cols x box_rows, 128-byte swizzle or none. */
static bool qplug_cuda__moe_map(qplug_cuda__moe_encode_fn enc, CUtensorMap *map, const void *p,
                                int64_t cols, int64_t rows, unsigned box_cols, unsigned box_rows,
                                bool swizzle)
{
    cuuint64_t dims[2] = {(cuuint64_t)cols, (cuuint64_t)rows};
    cuuint64_t strides[1] = {(cuuint64_t)cols};
    cuuint32_t box[2] = {box_cols, box_rows};
    cuuint32_t estr[2] = {1, 1};
    return enc(map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, (void *)p, dims, strides, box, estr,
               CU_TENSOR_MAP_INTERLEAVE_NONE,
               swizzle ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_NONE,
               CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
               CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

/* One v6 GEMM: the tensor maps of the weights w0 / w1 (w1 = w0 unless
 * DUAL) and of the gathered tokens tok [rows, k], then the large kernel,
 * or, when `small` (decode: at most 16 rows per expert on average, and
 * the tile table made of tiles of at most 16 rows), the SMALL one. */
template <int WF, bool DUAL>
static qplug_status qplug_cuda__moe_v6_launch(qplug_cuda__moe_encode_fn enc,
                                              const qplug_cuda__moe_gemm_args &a, const void *w0,
                                              const void *w1, const uint8_t *tok, int64_t rows,
                                              int32_t E, int64_t tmax, bool small,
                                              cudaStream_t s, const char *fn,
                                              qplug_cuda__err *err)
{
    CUtensorMap m0, m1, mb;
    int64_t wcols = WF == MOE_F_FP8 ? a.k : a.k / 2;
    unsigned wbox = WF == MOE_F_FP8 ? 128u : 64u;
    if (!qplug_cuda__moe_map(enc, &m0, w0, wcols, (int64_t)E * a.n, wbox, 64, WF == MOE_F_FP8) ||
        !qplug_cuda__moe_map(enc, &m1, w1, wcols, (int64_t)E * a.n, wbox, 64, WF == MOE_F_FP8) ||
        !qplug_cuda__moe_map(enc, &mb, tok, a.k, rows, 128, 16, true))
        return qplug_cuda__fail(err, QPLUG_ERR_DEVICE, "%s: v6 tensor map refused (n=%lld k=%lld)",
                                fn, (long long)a.n, (long long)a.k);
    dim3 grid((unsigned)(a.n / (DUAL ? 64 : 128)), (unsigned)tmax);
    /* The gate/up pair with the fused h quantization runs in clusters of
     * the two blocks of each 128 columns of h (n / 64 is even). */
    unsigned cx = DUAL && QPLUG_MOE_V6_FUSE ? 2u : 1u;
    cudaError_t ce;
    if (small)
        ce = qplug_cuda__moe_launch(qplug_cuda__moe_v6_kernel<WF, DUAL, true>, grid, V6_THREADS,
                                    qplug_cuda__moe_v6_smem<WF, true>::LAUNCH, s, cx, m0, m1, mb,
                                    a);
    else
        ce = qplug_cuda__moe_launch(qplug_cuda__moe_v6_kernel<WF, DUAL, false>, grid, V6_THREADS,
                                    qplug_cuda__moe_v6_smem<WF, false>::LAUNCH, s, cx, m0, m1, mb,
                                    a);
    if (ce != cudaSuccess)
        return qplug_cuda__fail(err, QPLUG_ERR_DEVICE, "%s: v6 launch failed (n=%lld k=%lld): %s",
                                fn, (long long)a.n, (long long)a.k, cudaGetErrorString(ce));
    return QPLUG_OK;
}

/* The driver's tensor-map encoder, reached through the runtime so that the
 * library needs no link against libcuda; NULL when missing. */
static qplug_cuda__moe_encode_fn qplug_cuda__moe_encoder(void)
{
    void *fn = NULL;
    cudaDriverEntryPointQueryResult q;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault,
                                         &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
        return NULL;
    return (qplug_cuda__moe_encode_fn)fn;
}

/* Packed MXFP4 activations (the w4a4 buffer rows) to E4M3 [m, D] and F32
 * scales [D/128][m] by the fold of moe_wgmma.cuh: one thread per token and
 * 128-block. A block that cannot be folded exactly (an exponent more than 11
 * below the block's maximum in a group with non-zero codes, or a NaN scale)
 * sets *flag. */
__global__ void __launch_bounds__(256)
    qplug_cuda__moe_w4a4_unpack_kernel(const uint8_t *__restrict__ buf, int64_t m, int64_t D,
                                       uint8_t *__restrict__ xq, float *__restrict__ xs,
                                       int32_t *__restrict__ flag)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, kbn = D / 128;
    if (i >= m * kbn)
        return;
    int64_t t = i / kbn, kb = i % kbn, bpt = D / 2 + D / 32;
    const uint8_t *row = buf + t * bpt;
    unsigned sw = *reinterpret_cast<const unsigned *>(row + D / 2 + kb * 4);
    int emax = qplug_cuda__moe_wg_emax(sw);
    bool bad = emax == 255;
    uint8_t *dst = xq + t * D + kb * 128;
#pragma unroll
    for (int g = 0; g < 4; g++) {
        const unsigned *src = reinterpret_cast<const unsigned *>(row + kb * 64 + g * 16);
        unsigned v[4] = {src[0], src[1], src[2], src[3]};
        int tp = (int)((sw >> (8 * g)) & 0xffu) - emax + 12;
        if (tp < 1) {
            bad |= ((v[0] | v[1] | v[2] | v[3]) & 0x77777777u) != 0;
            tp = 1;
        }
        unsigned lo, hi, o[8];
        qplug_cuda__moe_wg_fp4_table(tp, &lo, &hi);
#pragma unroll
        for (int j = 0; j < 4; j++)
            qplug_cuda__moe_wg_fp4_decode(v[j], lo, hi, &o[2 * j], &o[2 * j + 1]);
        reinterpret_cast<uint4 *>(dst + g * 32)[0] = make_uint4(o[0], o[1], o[2], o[3]);
        reinterpret_cast<uint4 *>(dst + g * 32)[1] = make_uint4(o[4], o[5], o[6], o[7]);
    }
    xs[kb * m + t] = qplug_cuda__e8m0_dev((unsigned)emax) * 0.015625f;
    if (bad)
        atomicOr(flag, 1);
}

/* Permutation, both GEMMs, h quantization and the combine; `a1` carries the
 * first GEMM's activation operand (FP8 x or the packed FP4 buffer), `af` its
 * format; xbf is the BF16 x of the W8A8/W4A8 forward (the v6 path
 * quantizes it in its gather pass; act_quant has not run then). */
static qplug_status qplug_cuda__moe_run(const qplug_cuda__moe_weights *w, int64_t m, int32_t K,
                                        const int32_t *ids, const float *wts, int af,
                                        const void *xbf, qplug_cuda__moe_gemm_args a1,
                                        const qplug_cuda__moe_ws *ws,
                                        qplug_cuda__scale_fmt act_fmt, void *y, cudaStream_t s,
                                        const char *fn, qplug_cuda__err *err)
{
    int32_t E = w->num_experts;
    int64_t D = w->hidden, I = w->intermediate, R = m * K;
    int path = qplug_cuda__moe_path(w, R, af);
    bool wg = path != MOE_P_MMA, v3 = path == MOE_P_V3, v6 = path == MOE_P_V6;
    /* Decode (the experts average 16 routed rows or fewer): tiles of at
     * most 16 rows, on the small mma.sync tiles, or, on v6, all on its
     * SMALL kernel (an expert with more rows gets several tiles, which
     * read its weights again, mostly from L2), so that the tensor cores do
     * not multiply mostly empty rows. */
    bool small = R <= (int64_t)16 * E;
    int bm = v6 && small ? (int)MOE_BM_SMALL
             : wg        ? (int)WG_BN
             : small     ? (int)MOE_BM_SMALL
                         : (int)MOE_BM_LARGE;
    int64_t tmax = (R + bm - 1) / bm + E;
    bool mx = w->fmt == QPLUG_CUDA_MOE_MXFP4, ue8m0 = act_fmt == QPLUG_CUDA_SCALE_UE8M0;
    qplug_cuda__moe_encode_fn enc = NULL;
    /* The v6 gather: a block per token and up to four parts of D (eight
     * 128-blocks each, one per warp), so that decode-sized m fills the GPU. */
    int64_t kbn = D / 128;
    dim3 gg((unsigned)m, (unsigned)(kbn >= 32 ? 4 : kbn >= 16 ? 2 : 1));
    if (v6 && !(enc = qplug_cuda__moe_encoder()))
        return qplug_cuda__fail(err, QPLUG_ERR_DEVICE, "%s: cuTensorMapEncodeTiled not available",
                                fn);

    qplug_status st = qplug_cuda__moe_launched(
        qplug_cuda__moe_launch(qplug_cuda__moe_permute_kernel, dim3(1), 1024, 0, s, 1, ids, R, K,
                               (int)E, bm, v6 ? (int)V6_RALIGN : 1, ws->ntiles, ws->tile_e,
                               ws->tile_r0, ws->tile_r1, ws->perm_tok, ws->inv, ws->flag),
        fn, "permute", err);
    if (st)
        return st;
    a1.ntiles = ws->ntiles;
    a1.tile_e = ws->tile_e;
    a1.tile_r0 = ws->tile_r0;
    a1.tile_r1 = ws->tile_r1;
    a1.perm_tok = ws->perm_tok;
    a1.w[0] = (const uint8_t *)w->w1;
    a1.w[1] = (const uint8_t *)w->w3;
    a1.ws[0] = (const uint8_t *)w->s1;
    a1.ws[1] = (const uint8_t *)w->s3;
    a1.wg[0] = w->g1;
    a1.wg[1] = w->g3;
    a1.n = I;
    a1.k = D;
    a1.limit = w->swiglu_limit;
    a1.out = ws->h;
    /* Read by the v6 gate/up kernel when it quantizes h itself. */
    a1.hq = ws->hq;
    a1.hs = ws->hs;
    a1.hs_ld = ws->rows;
    a1.ue8m0 = ue8m0;
    a1.hperm = mx;
    if (wg && af == MOE_F_MX) {
        /* W4A4: unpack to E4M3 (flagging blocks that do not fold exactly;
         * v6: in its gather pass), then the wgmma GEMM, or, when flagged,
         * the mma.sync one on the packed rows in 64-row halves of the
         * 128-row tiles. */
        qplug_cuda__moe_gemm_args f = a1;
        if (!v6) {
            int64_t th = m * (D / 128);
            qplug_cuda__moe_w4a4_unpack_kernel<<<(unsigned)((th + 255) / 256), 256, 0, s>>>(
                a1.a, m, D, ws->xq, ws->xs, ws->flag);
        }
        a1.skip_if = ws->flag;
        if (v6) {
            st = qplug_cuda__moe_launched(
                qplug_cuda__moe_launch(qplug_cuda__moe_v6_gather_kernel<true, true>, gg, 256, 0, s,
                                       1, a1.a, a1.a_ld, (int)K, D, (const int32_t *)ws->inv, 0,
                                       ws->xg, ws->xgs, ws->rows, ws->flag),
                fn, "gather", err);
            if (st)
                return st;
            a1.a = ws->xg;
            a1.a_ld = D;
            a1.a_scale = ws->xgs;
            a1.a_sld = ws->rows;
            st = qplug_cuda__moe_v6_launch<MOE_F_MX, true>(enc, a1, w->w1, w->w3, ws->xg,
                                                           ws->rows, E, tmax, small, s, fn, err);
            if (st)
                return st;
        } else {
            a1.a = ws->xq;
            a1.a_ld = D;
            a1.a_scale = ws->xs;
            a1.a_sld = m;
            qplug_cuda__moe_wg_launch<MOE_F_MX, true>(a1, tmax, v3, s);
        }
        f.sub = bm > MOE_BM_LARGE ? bm / MOE_BM_LARGE : 1;
        f.run_if = ws->flag;
        qplug_cuda__moe_gemm_launch<MOE_BM_LARGE, MOE_F_MX, MOE_F_MX, true>(f, tmax, s);
    } else if (v6) {
        const uint8_t *xb = (const uint8_t *)xbf;
        st = qplug_cuda__moe_launched(
            qplug_cuda__moe_launch(mx ? qplug_cuda__moe_v6_gather_kernel<false, true>
                                      : qplug_cuda__moe_v6_gather_kernel<false, false>,
                                   gg, 256, 0, s, 1, xb, D * 2, (int)K, D,
                                   (const int32_t *)ws->inv, (int)ue8m0, ws->xg, ws->xgs,
                                   ws->rows, (int32_t *)NULL),
            fn, "gather", err);
        if (st)
            return st;
        a1.a = ws->xg;
        a1.a_ld = D;
        a1.a_scale = ws->xgs;
        a1.a_sld = ws->rows;
        if (mx)
            st = qplug_cuda__moe_v6_launch<MOE_F_MX, true>(enc, a1, w->w1, w->w3, ws->xg,
                                                           ws->rows, E, tmax, small, s, fn, err);
        else
            st = qplug_cuda__moe_v6_launch<MOE_F_FP8, true>(enc, a1, w->w1, w->w3, ws->xg,
                                                            ws->rows, E, tmax, small, s, fn, err);
    } else if (wg) {
        qplug_cuda__moe_wg_wf<true>(w->fmt, a1, tmax, v3, s);
    } else if (bm == MOE_BM_SMALL) {
        qplug_cuda__moe_gemm_up<MOE_BM_SMALL>(af, w->fmt, a1, tmax, s);
    } else {
        qplug_cuda__moe_gemm_up<MOE_BM_LARGE>(af, w->fmt, a1, tmax, s);
    }
    if (st)
        return st;

    /* Rows up to the last tile's end: R, or more with the v6 alignment.
     * The v6 gate/up kernel quantizes h in its epilogue; on the W4A4 path
     * its mma.sync fallback may have run instead (flag set), which needs
     * this pass. */
    int64_t hrows = v6 ? ws->rows - 128 : R;
    unsigned hblocks = (unsigned)(hrows < 16384 ? hrows : 16384);
    bool fused = v6 && QPLUG_MOE_V6_FUSE;
    if (!fused || af == MOE_F_MX) {
        st = qplug_cuda__moe_launched(
            qplug_cuda__moe_launch(qplug_cuda__moe_hquant_kernel, dim3(hblocks), 256, 0, s, 1,
                                   (const float *)ws->h, I, (const int32_t *)ws->ntiles,
                                   (const int32_t *)ws->tile_r1, (int)ue8m0, (int)(v6 && mx),
                                   ws->hq, ws->hs, ws->rows,
                                   (const int32_t *)(fused ? ws->flag : NULL),
                                   (const int32_t *)(v6 ? ws->perm_tok : NULL)),
            fn, "hquant", err);
        if (st)
            return st;
    }

    qplug_cuda__moe_gemm_args a2;
    memset(&a2, 0, sizeof a2);
    a2.ntiles = ws->ntiles;
    a2.tile_e = ws->tile_e;
    a2.tile_r0 = ws->tile_r0;
    a2.tile_r1 = ws->tile_r1;
    a2.perm_tok = NULL;
    a2.a = ws->hq;
    a2.a_ld = I;
    a2.a_scale = ws->hs;
    a2.a_sld = ws->rows;
    a2.a_gscale = 1.0f;
    a2.w[0] = (const uint8_t *)w->w2;
    a2.ws[0] = (const uint8_t *)w->s2;
    a2.wg[0] = w->g2;
    a2.n = D;
    a2.k = I;
    a2.out = ws->o;
    if (v6 && mx)
        st = qplug_cuda__moe_v6_launch<MOE_F_MX, false>(enc, a2, w->w2, w->w2, ws->hq, ws->rows,
                                                        E, tmax, small, s, fn, err);
    else if (v6)
        st = qplug_cuda__moe_v6_launch<MOE_F_FP8, false>(enc, a2, w->w2, w->w2, ws->hq, ws->rows,
                                                         E, tmax, small, s, fn, err);
    else if (wg)
        qplug_cuda__moe_wg_wf<false>(w->fmt, a2, tmax, v3, s);
    else if (bm == MOE_BM_SMALL)
        qplug_cuda__moe_gemm_wf<MOE_BM_SMALL, MOE_F_FP8, false>(w->fmt, a2, tmax, s);
    else
        qplug_cuda__moe_gemm_wf<MOE_BM_LARGE, MOE_F_FP8, false>(w->fmt, a2, tmax, s);
    if (st)
        return st;

    dim3 cgrid((unsigned)m, (unsigned)((D + 1023) / 1024));
    st = qplug_cuda__moe_launched(
        qplug_cuda__moe_launch(qplug_cuda__moe_combine_kernel, cgrid, 256, 0, s, 1,
                               (const float *)ws->o, (const int32_t *)ws->inv, wts, (int)K, D,
                               (__nv_bfloat16 *)y),
        fn, "combine", err);
    if (st)
        return st;
    return qplug_cuda__check_launch(err, fn);
}

/* Sets *bad when some word of four E8M0 bytes (one row's 128-block) has a
 * byte of 255 or one more than 11 below the word's maximum. */
__global__ void __launch_bounds__(256)
    qplug_cuda__moe_fold_check_kernel(const unsigned *__restrict__ sc, int64_t words,
                                      int32_t *__restrict__ bad)
{
    bool b = false;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < words;
         i += (int64_t)gridDim.x * blockDim.x) {
        unsigned v = sc[i];
        int emax = qplug_cuda__moe_wg_emax(v);
        int emin = min(min((int)(v & 0xffu), (int)((v >> 8) & 0xffu)),
                       min((int)((v >> 16) & 0xffu), (int)(v >> 24)));
        b |= emax == 255 || emax - emin > 11;
    }
    if (__syncthreads_or(b) && threadIdx.x == 0)
        atomicOr(bad, 1);
}

/* The shared-memory limits of the four v6 kernels of weight format WF. */
template <int WF> static bool qplug_cuda__moe_v6_limits(void)
{
    const int big = qplug_cuda__moe_v6_smem<WF, false>::LAUNCH;
    const int small = qplug_cuda__moe_v6_smem<WF, true>::LAUNCH;
    return qplug_cuda__moe_smem_limit(qplug_cuda__moe_v6_kernel<WF, true, false>, big) &&
           qplug_cuda__moe_smem_limit(qplug_cuda__moe_v6_kernel<WF, false, false>, big) &&
           qplug_cuda__moe_smem_limit(qplug_cuda__moe_v6_kernel<WF, true, true>, small) &&
           qplug_cuda__moe_smem_limit(qplug_cuda__moe_v6_kernel<WF, false, true>, small);
}

extern "C" int32_t *qplug_cuda__moe_fallback_flag(void *workspace, int64_t m, int32_t top_k,
                                                  int32_t num_experts, int64_t hidden,
                                                  int64_t intermediate)
{
    if (!workspace ||
        qplug_cuda__moe_workspace_bytes(m, top_k, num_experts, hidden, intermediate) == 0)
        return NULL;
    qplug_cuda__moe_ws ws;
    qplug_cuda__moe_carve((uint8_t *)workspace, m, top_k, num_experts, hidden, intermediate, &ws);
    return ws.flag;
}

extern "C" qplug_status qplug_cuda__moe_prepare(qplug_cuda__moe_weights *w, void *stream,
                                               qplug_cuda__err *err)
{
    if (!w)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT, "moe_prepare: NULL weights");
    w->wgmma_ready = 0;
    if (w->fmt != QPLUG_CUDA_MOE_FP8 && w->fmt != QPLUG_CUDA_MOE_MXFP4 &&
        (w->fmt != QPLUG_CUDA_MOE_NVFP4 || !QPLUG_MOE_WG_NV))
        return QPLUG_OK;
    int64_t D = w->hidden, I = w->intermediate;
    if (w->num_experts < 1 || w->num_experts > MOE_MAX_E || D < 128 || D % 128 || I < 128 ||
        I % 128 || D / 128 > 65535 || I / 128 > 65535)
        return qplug_cuda__fail(err, QPLUG_ERR_SHAPE,
                                "moe_prepare: unsupported expert shape E=%d D=%lld I=%lld",
                                (int)w->num_experts, (long long)D, (long long)I);
    /* The MXFP4 check below reads the scales as 4-byte words. */
    if (!w->s1 || !w->s3 || !w->s2)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT, "moe_prepare: NULL expert scales");
    if ((((uintptr_t)w->s1 | (uintptr_t)w->s3 | (uintptr_t)w->s2) & 3u) != 0)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT,
                                "moe_prepare: expert scales not 4-byte aligned");
    cudaStream_t s = (cudaStream_t)stream;
    const int wg8 = qplug_cuda__moe_wg_smem<MOE_F_FP8>::LAUNCH;
    const int wgx = qplug_cuda__moe_wg_smem<MOE_F_MX>::LAUNCH;
    const int ws8 = qplug_cuda__moe_ws_smem<MOE_F_FP8>::LAUNCH;
    const int wsx = qplug_cuda__moe_ws_smem<MOE_F_MX>::LAUNCH;
    const int wgn = qplug_cuda__moe_wg_smem<MOE_F_NV>::LAUNCH;
    if (!qplug_cuda__moe_smem_limit(qplug_cuda__moe_wg_kernel<MOE_F_FP8, true>, wg8) ||
        !qplug_cuda__moe_smem_limit(qplug_cuda__moe_wg_kernel<MOE_F_FP8, false>, wg8) ||
        !qplug_cuda__moe_smem_limit(qplug_cuda__moe_wg_kernel<MOE_F_MX, true>, wgx) ||
        !qplug_cuda__moe_smem_limit(qplug_cuda__moe_wg_kernel<MOE_F_MX, false>, wgx) ||
        !qplug_cuda__moe_smem_limit(qplug_cuda__moe_ws_kernel<MOE_F_FP8, true>, ws8) ||
        !qplug_cuda__moe_smem_limit(qplug_cuda__moe_ws_kernel<MOE_F_FP8, false>, ws8) ||
        !qplug_cuda__moe_smem_limit(qplug_cuda__moe_ws_kernel<MOE_F_MX, true>, wsx) ||
        !qplug_cuda__moe_smem_limit(qplug_cuda__moe_ws_kernel<MOE_F_MX, false>, wsx) ||
        !qplug_cuda__moe_smem_limit(qplug_cuda__moe_wg_kernel<MOE_F_NV, true>, wgn) ||
        !qplug_cuda__moe_smem_limit(qplug_cuda__moe_wg_kernel<MOE_F_NV, false>, wgn) ||
        !qplug_cuda__moe_v6_limits<MOE_F_FP8>() || !qplug_cuda__moe_v6_limits<MOE_F_MX>()) {
        /* A device without that much shared memory (not Hopper) keeps the
         * mma.sync kernels. */
        cudaGetLastError();
        return QPLUG_OK;
    }
    /* NVFP4 needs no check: its F16 decode is exact for every E2M1 code
     * and E4M3 scale (moe_wgmma.cuh, qplug_cuda__moe_wg_fp4_f16). */
    if (w->fmt == QPLUG_CUDA_MOE_FP8 || w->fmt == QPLUG_CUDA_MOE_NVFP4) {
        w->wgmma_ready = 1;
        return QPLUG_OK;
    }
    int32_t *bad = NULL, hbad = 0;
    if (cudaMalloc((void **)&bad, 4) != cudaSuccess)
        return qplug_cuda__fail(err, QPLUG_ERR_DEVICE, "moe_prepare: cudaMalloc of 4 bytes failed");
    cudaError_t ce = cudaMemsetAsync(bad, 0, 4, s);
    const void *sc[3] = {w->s1, w->s3, w->s2};
    int64_t words = (int64_t)w->num_experts * D * I / 128;
    for (int i = 0; i < 3 && ce == cudaSuccess; i++) {
        qplug_cuda__moe_fold_check_kernel<<<1024, 256, 0, s>>>((const unsigned *)sc[i], words,
                                                               bad);
        ce = cudaGetLastError();
    }
    if (ce == cudaSuccess)
        ce = cudaMemcpyAsync(&hbad, bad, 4, cudaMemcpyDeviceToHost, s);
    if (ce == cudaSuccess)
        ce = cudaStreamSynchronize(s);
    cudaFree(bad);
    if (ce != cudaSuccess)
        return qplug_cuda__fail(err, QPLUG_ERR_DEVICE, "moe_prepare: scale check failed: %s",
                                cudaGetErrorString(ce));
    w->wgmma_ready = hbad == 0;
    return QPLUG_OK;
}

extern "C" qplug_status qplug_cuda__moe_forward(const qplug_cuda__moe_weights *w, const void *x,
                                                int64_t m, const int32_t *topk_ids,
                                                const float *topk_weights, int32_t top_k,
                                                qplug_cuda__scale_fmt act_fmt, void *y,
                                                void *workspace, size_t workspace_bytes,
                                                void *stream, qplug_cuda__err *err)
{
    qplug_status st = qplug_cuda__moe_check(w, m, top_k, y, workspace, workspace_bytes,
                                            "moe_forward", err);
    if (st)
        return st;
    if (!x || !topk_ids || !topk_weights)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT, "moe_forward: NULL x or routing");
    if (m == 0)
        return QPLUG_OK;
    qplug_cuda__moe_ws ws;
    qplug_cuda__moe_carve((uint8_t *)workspace, m, top_k, w->num_experts, w->hidden,
                          w->intermediate, &ws);
    cudaStream_t s = (cudaStream_t)stream;
    /* The v6 path quantizes x in its gather pass. */
    if (qplug_cuda__moe_path(w, m * top_k, MOE_F_FP8) != MOE_P_V6) {
        st = qplug_cuda__act_quant_fp8(x, m, w->hidden, act_fmt, ws.xq, ws.xs, stream, err);
        if (st)
            return st;
    }
    qplug_cuda__moe_gemm_args a1;
    memset(&a1, 0, sizeof a1);
    a1.a = ws.xq;
    a1.a_ld = w->hidden;
    a1.a_scale = ws.xs;
    a1.a_sld = m;
    a1.a_gscale = 1.0f;
    return qplug_cuda__moe_run(w, m, top_k, topk_ids, topk_weights, MOE_F_FP8, x, a1, &ws, act_fmt,
                               y, s, "moe_forward", err);
}

/* ---------------------------------------------------------- w4a4 packing */

extern "C" size_t qplug_cuda__w4a4_dispatch_bytes(int64_t m, int64_t hidden, int32_t top_k,
                                                  int group)
{
    if (m < 0 || hidden <= 0 || (group != 16 && group != 32) || hidden % group || top_k < 1)
        return 0;
    size_t bpt = (size_t)(hidden / 2 + hidden / group);
    return (size_t)m * (bpt + (size_t)top_k * 8u);
}

/* E2M1 code of v (round to nearest even on the grid 0, .5, 1, 1.5, 2, 3, 4,
 * 6, saturating; NaN gives 0). */
static __device__ __forceinline__ unsigned qplug_cuda__to_e2m1(float v)
{
    unsigned sign = signbit(v) ? 8u : 0u;
    float a = fabsf(v);
    unsigned c;
    if (!(a > 0.25f))
        c = 0; /* also NaN */
    else if (a < 0.75f)
        c = 1;
    else if (a <= 1.25f)
        c = 2;
    else if (a < 1.75f)
        c = 3;
    else if (a <= 2.5f)
        c = 4;
    else if (a < 3.5f)
        c = 5;
    else if (a <= 5.0f)
        c = 6;
    else
        c = 7;
    return sign | c;
}

/* One thread per group of G values; threads below m*top_k also copy one
 * routing slot. VEC: x is 16-byte aligned, so a group is G / 8 16-byte
 * loads (D % 128 == 0 keeps every group aligned). */
template <int G, bool VEC>
__global__ void __launch_bounds__(256)
    qplug_cuda__w4a4_pack_kernel(const __nv_bfloat16 *__restrict__ x, int64_t m, int64_t D,
                                 float gscale, const int32_t *__restrict__ ids,
                                 const float *__restrict__ wts, int K, uint8_t *__restrict__ buf)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    int64_t gpt = D / G, bpt = D / 2 + gpt;
    if (i < m * K) {
        int32_t *bid = reinterpret_cast<int32_t *>(buf + m * bpt);
        float *bw = reinterpret_cast<float *>(buf + m * bpt + m * K * 4);
        bid[i] = ids[i];
        bw[i] = wts[i];
    }
    if (i >= m * gpt)
        return;
    int64_t t = i / gpt, g = i % gpt;
    const __nv_bfloat16 *xg = x + t * D + g * G;
    float v[G];
    if (VEC) {
#pragma unroll
        for (int q = 0; q < G / 8; q++) {
            uint4 u = __ldg(reinterpret_cast<const uint4 *>(xg) + q);
            const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&u);
#pragma unroll
            for (int j = 0; j < 4; j++) {
                float2 f = __bfloat1622float2(h[j]);
                v[q * 8 + 2 * j] = f.x;
                v[q * 8 + 2 * j + 1] = f.y;
            }
        }
    } else {
#pragma unroll
        for (int j = 0; j < G; j++)
            v[j] = __bfloat162float(xg[j]);
    }
    float amax = 0.0f;
#pragma unroll
    for (int j = 0; j < G; j++)
        amax = fmaxf(amax, fabsf(v[j]));
    uint8_t *row = buf + t * bpt;
    float step, inv = 0.0f;
    if (G == 32) {
        int e = -127;
        if (amax > 0.0f) {
            int ex;
            float f = frexpf(amax / 6.0f, &ex);
            e = f == 0.5f ? ex - 1 : ex;
        }
        e = max(-127, min(127, e));
        row[D / 2 + g] = (uint8_t)(e + 127);
        step = ldexpf(1.0f, e);
        /* v * 2^-e is v / 2^e exactly (one rounding of the same value). */
        inv = ldexpf(1.0f, -e);
    } else {
        unsigned s8 = qplug_cuda__to_e4m3(__fdiv_rn(__fdiv_rn(amax, 6.0f), gscale));
        row[D / 2 + g] = (uint8_t)s8;
        step = qplug_cuda__e4m3_dev(s8) * gscale;
    }
    unsigned *dst = reinterpret_cast<unsigned *>(row + g * (G / 2));
#pragma unroll
    for (int wd = 0; wd < G / 8; wd++) {
        unsigned word = 0;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            float q = G == 32 ? v[wd * 8 + j] * inv : __fdiv_rn(v[wd * 8 + j], step);
            unsigned c = step > 0.0f ? qplug_cuda__to_e2m1(q) : 0u;
            word |= c << (4 * j);
        }
        dst[wd] = word;
    }
}

extern "C" qplug_status qplug_cuda__w4a4_pack(const void *x, int64_t m, int64_t hidden, int group,
                                             float gscale, const int32_t *topk_ids,
                                             const float *topk_weights, int32_t top_k, void *buf,
                                             size_t buf_bytes, void *stream,
                                             qplug_cuda__err *err)
{
    if (!x || !topk_ids || !topk_weights || !buf)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT, "w4a4_pack: NULL pointer");
    size_t need = qplug_cuda__w4a4_dispatch_bytes(m, hidden, top_k, group);
    /* hidden % 128 keeps every packed row, and the ids after them, 4-byte
     * aligned for the word stores. */
    if (need == 0 || hidden % 128 != 0 || m > 0x7fffffff)
        return qplug_cuda__fail(err, QPLUG_ERR_SHAPE,
                                "w4a4_pack: hidden %lld cannot be packed in groups of %d (m=%lld, "
                                "top_k=%d; hidden %% 128 == 0 needed)",
                                (long long)hidden, group, (long long)m, (int)top_k);
    if (buf_bytes != need)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT,
                                "w4a4_pack: buffer of %zu bytes, the layout needs %zu", buf_bytes,
                                need);
    if (group == 16 && !(gscale > 0.0f && gscale < 3.4e38f))
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT,
                                "w4a4_pack: global scale %g is not positive and finite",
                                (double)gscale);
    if (((uintptr_t)buf & 3u) != 0)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT, "w4a4_pack: buffer not 4-byte aligned");
    if (m == 0)
        return QPLUG_OK;
    int64_t threads = m * (hidden / group);
    if (m * top_k > threads)
        threads = m * top_k;
    unsigned blocks = (unsigned)((threads + 255) / 256);
    cudaStream_t s = (cudaStream_t)stream;
    const __nv_bfloat16 *xb = (const __nv_bfloat16 *)x;
    bool vec = ((uintptr_t)x & 15u) == 0;
    if (group == 32 && vec)
        qplug_cuda__w4a4_pack_kernel<32, true><<<blocks, 256, 0, s>>>(
            xb, m, hidden, gscale, topk_ids, topk_weights, top_k, (uint8_t *)buf);
    else if (group == 32)
        qplug_cuda__w4a4_pack_kernel<32, false><<<blocks, 256, 0, s>>>(
            xb, m, hidden, gscale, topk_ids, topk_weights, top_k, (uint8_t *)buf);
    else if (vec)
        qplug_cuda__w4a4_pack_kernel<16, true><<<blocks, 256, 0, s>>>(
            xb, m, hidden, gscale, topk_ids, topk_weights, top_k, (uint8_t *)buf);
    else
        qplug_cuda__w4a4_pack_kernel<16, false><<<blocks, 256, 0, s>>>(
            xb, m, hidden, gscale, topk_ids, topk_weights, top_k, (uint8_t *)buf);
    return qplug_cuda__check_launch(err, "w4a4_pack");
}

extern "C" qplug_status qplug_cuda__moe_forward_w4a4(const qplug_cuda__moe_weights *w,
                                                     const void *buf, size_t buf_bytes, int64_t m,
                                                     int32_t top_k, int group, float gscale,
                                                     qplug_cuda__scale_fmt act_fmt, void *y,
                                                     void *workspace, size_t workspace_bytes,
                                                     void *stream, qplug_cuda__err *err)
{
    qplug_status st = qplug_cuda__moe_check(w, m, top_k, y, workspace, workspace_bytes,
                                            "moe_forward_w4a4", err);
    if (st)
        return st;
    if (!buf)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT, "moe_forward_w4a4: NULL buffer");
    if ((group == 32) != (w->fmt == QPLUG_CUDA_MOE_MXFP4) ||
        (group == 16) != (w->fmt == QPLUG_CUDA_MOE_NVFP4))
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT,
                                "moe_forward_w4a4: group %d does not match the weight format %d "
                                "(MXFP4 takes 32, NVFP4 16)",
                                group, (int)w->fmt);
    size_t need = qplug_cuda__w4a4_dispatch_bytes(m, w->hidden, top_k, group);
    if (buf_bytes != need)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT,
                                "moe_forward_w4a4: buffer of %zu bytes, the layout needs %zu",
                                buf_bytes, need);
    if (((uintptr_t)buf & 3u) != 0)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT,
                                "moe_forward_w4a4: buffer not 4-byte aligned");
    if (m == 0)
        return QPLUG_OK;
    qplug_cuda__moe_ws ws;
    qplug_cuda__moe_carve((uint8_t *)workspace, m, top_k, w->num_experts, w->hidden,
                          w->intermediate, &ws);
    int64_t bpt = w->hidden / 2 + w->hidden / group;
    const uint8_t *b = (const uint8_t *)buf;
    const int32_t *ids = reinterpret_cast<const int32_t *>(b + m * bpt);
    const float *wts = reinterpret_cast<const float *>(b + m * bpt + m * top_k * 4);
    qplug_cuda__moe_gemm_args a1;
    memset(&a1, 0, sizeof a1);
    a1.a = b;
    a1.a_ld = bpt;
    a1.a_gscale = group == 16 ? gscale : 1.0f;
    return qplug_cuda__moe_run(w, m, top_k, ids, wts, group == 32 ? MOE_F_MX : MOE_F_NV, NULL, a1,
                               &ws,
                               act_fmt, y, (cudaStream_t)stream, "moe_forward_w4a4", err);
}
