/* (f) FP8 block-scaled GEMM on Hopper wgmma that reads BF16 activations and
 * quantizes them inside the kernel, so prefill needs no separate act_quant
 * pass and no E4M3 copy of x in device memory.
 *
 * One CTA computes a 128 x 128 tile of y with four warpgroups, and CTAs on
 * C neighbouring n-tiles of one m-tile form a cluster (C = 2 by default,
 * or 4, or 1: the largest allowed that divides the n-tiles of a group, so
 * a cluster never straddles two groups):
 *   warpgroups 0-1 (producers): per k-block, thread 0 starts the TMA copy
 *     of the 128 x 128 E4M3 weight tile (128-byte swizzle, completing on
 *     the stage's "full" mbarrier) and, several k-blocks ahead, the TMA
 *     copy of the CTA's slice of x (128 / C rows of BF16) into a ring of
 *     shared-memory slots. The 256 threads read the slice from there,
 *     compute each row's 1x128 scale exactly as qplug_cuda__act_quant_fp8
 *     does and write the E4M3 codes into the stage in the same 128-byte
 *     swizzled layout, plus the row scales; then the slice goes by bulk
 *     copies into the same place of the other C - 1 CTAs' stages (DSMEM),
 *     completing on their "full" barriers. So x crosses L2 -> SM and is
 *     quantized N / (128 C) times instead of N / 128 times (v1.1).
 *   warpgroups 2-3 (consumers): 64 rows each; per k-block four wgmma
 *     m64n128k32 (both operands from shared memory) into a scratch fp32
 *     accumulator, then the promotion fin += acc * (x scale * w scale), so
 *     every 128-wide k-block is summed in fp32 first and scaled once, like
 *     the formula in qplug_cuda.h (and DeepGEMM's promotion). On H200 the
 *     outputs were bit-identical to act_quant + cuBLASLt's block-scaled GEMM
 *     for the model shapes of bench/results/h200_wgmma_v3_1.md except two
 *     (Pro wq_a and wkv at M = 512, k = 7168: rel L2 difference 2.3e-5 and
 *     2.7e-5; not investigated, presumably another order of the k-block
 *     sums in cuBLASLt).
 *     The tile's weight scales are read once into shared memory when there
 *     are at most QPLUG_WG_KMAX k-blocks, else per k-block from global.
 * The stages form a ring of QPLUG_WG_STAGES slots: the producers wait for a
 * slot's "empty" barrier (the consumers of every CTA that writes into it),
 * the consumers for its "full" barrier.
 *
 * No thread that fences (the producers, before their codes are read by the
 * async proxy) or arrives on a barrier (the consumers) keeps a global load
 * in flight across a k-block, since those instructions wait for it. That
 * was not the ~1 us per k-block of v1.1-v2.2, though: v3 run 1 timed the
 * kernel without the fence at the same speed, the consumers alone at
 * ~0.5-0.7 us and the producers alone at ~0.85 us per k-block
 * (bench/NOTES.md, v3).
 *
 * The tile width 128 matches the weight scale tile, so one weight scale
 * serves a whole k-block of the tile. The two accumulators of a 64 x 128
 * consumer tile take 128 registers per thread; setmaxnreg gives the
 * consumers 168 and the producers 88. */
#include <cuda.h>

#include "internal.cuh"

/* Tunables (gemm_wgmma_bench.sh builds variants with -D). */
#ifndef QPLUG_WGMMA_STAGES
#define QPLUG_WGMMA_STAGES 5
#endif
/* Largest cluster of CTAs that share one quantized x tile (1, 2 or 4;
 * 2 measured fastest in v2 run 2, see bench/NOTES.md), and the CTAs along
 * m that share weight tiles by TMA multicast (1 or 2). */
#ifndef QPLUG_WGMMA_CLUSTER_M
#define QPLUG_WGMMA_CLUSTER_M 1
#endif
#ifndef QPLUG_WGMMA_CLUSTER
#define QPLUG_WGMMA_CLUSTER 2
#endif
/* 1: the slice goes to each peer as one bulk copy (after a barrier of the
 * producer threads); 0: one bulk copy per producer warp and peer (run 1:
 * 48 copies of 512 bytes per k-block at C = 4, slower than C = 2). */
#ifndef QPLUG_WGMMA_BIGCOPY
#define QPLUG_WGMMA_BIGCOPY 1
#endif
/* Bytes of the x ring. */
#ifndef QPLUG_WGMMA_XRING
#define QPLUG_WGMMA_XRING 49152
#endif
/* Two producer warpgroups (the kernel requires 2; 512 threads, which start
 * at 128 registers each) move registers with setmaxnreg: producers give up
 * what the consumers take, 2 x 128 x PROD + 2 x 128 x CONS = 65536. */
#ifndef QPLUG_WGMMA_PRODUCERS
#define QPLUG_WGMMA_PRODUCERS 2
#endif
/* 1: producer thread 0 starts the weight TMA of every later k-block whose
 * stage is already free (up to STAGES - 1 ahead of the producers), so the
 * weights no longer wait for the producers' x; 0: one weight TMA per
 * k-block when the producers reach it (v2.2). Correct either way, but 1
 * measured ~40% slower on H200 at every M, and ~15% slower with the
 * consumers alone (v3 run 2, not explained; bench/NOTES.md), so 0. */
#ifndef QPLUG_WGMMA_WAHEAD
#define QPLUG_WGMMA_WAHEAD 0
#endif
/* 1: each producer warp arrives once (lane 0, after __syncwarp) on the
 * "full" and "xempty" barriers instead of every producer thread: 16
 * instead of 512 shared-memory barrier arrivals per k-block. The
 * suspected cost after v3 run 2 (bench/NOTES.md, v3). Run once on H200
 * (bench/results/h200_wgmma_v3_1.md): correct, about 3% faster, far from
 * the ~1 us per k-block it was meant to explain; not made the default,
 * hence 0. */
#ifndef QPLUG_WGMMA_WARP_ARRIVE
#define QPLUG_WGMMA_WARP_ARRIVE 0
#endif
/* Diagnostics for the bench only (wrong results): 1 consumers only (no x,
 * no quantization, no fence, no peer copies; the A tile is whatever shared
 * memory holds), 2 producers only (no wgmma, no promotion), 3 no proxy
 * fence. */
#ifndef QPLUG_WGMMA_DIAG
#define QPLUG_WGMMA_DIAG 0
#endif
#ifndef QPLUG_WGMMA_PROD_REGS
#define QPLUG_WGMMA_PROD_REGS 88
#endif
#ifndef QPLUG_WGMMA_CONS_REGS
#define QPLUG_WGMMA_CONS_REGS 168
#endif
static_assert(QPLUG_WGMMA_PROD_REGS + QPLUG_WGMMA_CONS_REGS == 256,
              "two producer and two consumer warpgroups share 65536 registers");
#define QPLUG__WG_STR2(x) #x
#define QPLUG__WG_STR(x) QPLUG__WG_STR2(x)
#ifndef QPLUG_WGMMA_RASTER
#define QPLUG_WGMMA_RASTER 8
#endif

enum {
    QPLUG_WG_BM = 128,
    QPLUG_WG_BN = 128,
    QPLUG_WG_BK = 128,
    QPLUG_WG_STAGES = QPLUG_WGMMA_STAGES,
    QPLUG_WG_PRODUCERS = QPLUG_WGMMA_PRODUCERS,
    QPLUG_WG_DIAG = QPLUG_WGMMA_DIAG,
    QPLUG_WG_THREADS = 128 * (2 + QPLUG_WG_PRODUCERS),
    /* Arrivals of the producers per k-block on "full" and "xempty". */
    QPLUG_WG_PROD_ARRIVALS = QPLUG_WGMMA_WARP_ARRIVE ? 4 * QPLUG_WG_PRODUCERS
                                                    : 128 * QPLUG_WG_PRODUCERS,

    QPLUG_WG_TILE = QPLUG_WG_BM * QPLUG_WG_BK, /* bytes of one E4M3 tile */
    QPLUG_WG_RASTER = QPLUG_WGMMA_RASTER,       /* m-tiles per rasterization band */
    /* Weight scales of a tile kept in shared memory: k up to 65536. */
    QPLUG_WG_KMAX = 512,
};

__device__ __forceinline__ unsigned qplug__wg_smem_addr(const void *p)
{
    return (unsigned)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void qplug__wg_bar_init(uint64_t *bar, unsigned count)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(qplug__wg_smem_addr(bar)),
                 "r"(count));
}

__device__ __forceinline__ void qplug__wg_bar_arrive(uint64_t *bar)
{
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(qplug__wg_smem_addr(bar))
                 : "memory");
}

__device__ __forceinline__ void qplug__wg_bar_arrive_tx(uint64_t *bar, unsigned bytes)
{
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(
                     qplug__wg_smem_addr(bar)),
                 "r"(bytes)
                 : "memory");
}

/* Spins until the phase of the given parity has completed. */
__device__ __forceinline__ void qplug__wg_bar_wait(uint64_t *bar, unsigned parity)
{
    asm volatile("{\n"
                 ".reg .pred done;\n"
                 "WAIT_%=:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
                 "@!done bra WAIT_%=;\n"
                 "}\n" ::"r"(qplug__wg_smem_addr(bar)),
                 "r"(parity)
                 : "memory");
}

/* Whether the phase of the given parity has completed, without waiting. */
__device__ __forceinline__ bool qplug__wg_bar_test(uint64_t *bar, unsigned parity)
{
    unsigned done;
    asm volatile("{\n"
                 ".reg .pred p;\n"
                 "mbarrier.test_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                 "selp.u32 %0, 1, 0, p;\n"
                 "}\n"
                 : "=r"(done)
                 : "r"(qplug__wg_smem_addr(bar)), "r"(parity)
                 : "memory");
    return done != 0;
}

/* A producer's arrival on a barrier that counts producers: every thread,
 * or with QPLUG_WGMMA_WARP_ARRIVE lane 0 of each warp once the warp's
 * lanes are done (their shared-memory accesses, and proxy fences, are
 * ordered before lane 0's release by __syncwarp). */
__device__ __forceinline__ void qplug__wg_prod_arrive(uint64_t *bar)
{
    if (QPLUG_WGMMA_WARP_ARRIVE) {
        __syncwarp();
        if ((threadIdx.x & 31) == 0)
            qplug__wg_bar_arrive(bar);
    } else {
        qplug__wg_bar_arrive(bar);
    }
}

/* TMA: the box at (k0, row0) of the weight tensor map into dst. */
__device__ __forceinline__ void qplug__wg_tma_load(void *dst, const CUtensorMap *map, int k0,
                                                   int row0, uint64_t *bar)
{
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes "
                 "[%0], [%1, {%2, %3}], [%4];\n" ::"r"(qplug__wg_smem_addr(dst)),
                 "l"((uint64_t)map), "r"(k0), "r"(row0), "r"(qplug__wg_smem_addr(bar))
                 : "memory");
}

__device__ __forceinline__ uint4 qplug__wg_lds16(const void *p)
{
    uint4 v;
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "r"(qplug__wg_smem_addr(p))
                 : "memory");
    return v;
}

/* TMA multicast: the box at (k0, row0) into dst of every CTA of the
 * cluster named in mask, completing on the barrier at the same offset in
 * each. */
__device__ __forceinline__ void qplug__wg_tma_load_mc(void *dst, const CUtensorMap *map, int k0,
                                                      int row0, uint64_t *bar, uint16_t mask)
{
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
                 ".multicast::cluster [%0], [%1, {%2, %3}], [%4], %5;\n" ::"r"(
                     qplug__wg_smem_addr(dst)),
                 "l"((uint64_t)map), "r"(k0), "r"(row0), "r"(qplug__wg_smem_addr(bar)),
                 "h"(mask)
                 : "memory");
}

/* A wgmma shared-memory descriptor for a K-major tile of 128-byte rows in
 * the 128-byte swizzle: stride between 8-row groups 1024 bytes, swizzle
 * mode 1 in bits 62-63. */
__device__ __forceinline__ uint64_t qplug__wg_desc(const void *p)
{
    uint64_t a = qplug__wg_smem_addr(p);
    return ((a & 0x3ffffu) >> 4) | ((uint64_t)(1024 >> 4) << 32) | (1ull << 62);
}

/* Keeps the compiler from moving reads or writes of an accumulator register
 * across the wgmma fence and wait instructions, which name no registers. */
__device__ __forceinline__ void qplug__wg_pin(float d[64])
{
#pragma unroll
    for (int i = 0; i < 64; i++)
        asm volatile("" : "+f"(d[i])::"memory");
}

#define QPLUG__WG_R8(i)                                                                         \
    "+f"(d[i + 0]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]),           \
        "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])

/* d (64 x 128 fp32 fragment) = a . b^T (+ d when accumulate), k = 32. */
__device__ __forceinline__ void qplug__wg_mma(float d[64], uint64_t da, uint64_t db, int accumulate)
{
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
        "%64, %65, p, 1, 1;\n"
        "}\n"
        : QPLUG__WG_R8(0), QPLUG__WG_R8(8), QPLUG__WG_R8(16), QPLUG__WG_R8(24), QPLUG__WG_R8(32),
          QPLUG__WG_R8(40), QPLUG__WG_R8(48), QPLUG__WG_R8(56)
        : "l"(da), "l"(db), "r"(accumulate));
}

/* Cluster helpers. A cluster of C CTAs shares the quantized x tile: every
 * CTA quantizes 128 / C rows of each k-block and copies them into the
 * others' shared memory (see the kernel comment). */
__device__ __forceinline__ unsigned qplug__wg_cluster_rank(void)
{
    unsigned r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
    return r;
}

/* The shared::cluster address of the same object in CTA rank of the
 * cluster. */
__device__ __forceinline__ unsigned qplug__wg_mapa(const void *p, unsigned rank)
{
    unsigned r;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n"
                 : "=r"(r)
                 : "r"(qplug__wg_smem_addr(p)), "r"(rank));
    return r;
}

__device__ __forceinline__ void qplug__wg_cluster_sync(void)
{
    asm volatile("barrier.cluster.arrive.release;\n"
                 "barrier.cluster.wait.acquire;\n" ::
                     : "memory");
}

/* Arrives on an mbarrier given by its shared::cluster address (possibly in
 * another CTA). The default (CTA-scope) release: the only accesses it must
 * order are this warp's reads of the stage, and those of the tensor cores
 * are complete at wgmma.wait_group; a cluster-scope release costs two
 * memory barriers (MEMBAR.ALL.GPU in SASS) per arrival. */
__device__ __forceinline__ void qplug__wg_bar_arrive_cluster(unsigned cluster_addr)
{
    asm volatile("mbarrier.arrive.shared::cluster.b64 _, [%0];\n" ::"r"(
                     cluster_addr)
                 : "memory");
}

/* Bulk copy of bytes (a multiple of 16, both ends 16-byte aligned) from
 * this CTA's shared memory to another CTA's, completing on that CTA's
 * mbarrier (dst and bar are shared::cluster addresses). */
__device__ __forceinline__ void qplug__wg_copy_to_peer(unsigned dst, const void *src,
                                                       unsigned bytes, unsigned bar)
{
    asm volatile("cp.async.bulk.shared::cluster.shared::cta.mbarrier::complete_tx::bytes "
                 "[%0], [%1], %2, [%3];\n" ::"r"(dst),
                 "r"(qplug__wg_smem_addr(src)), "r"(bytes), "r"(bar)
                 : "memory");
}

/* The launch's shape, passed by value. */
struct qplug__wg_args {
    const __nv_bfloat16 *x;
    const float *w_scale;
    __nv_bfloat16 *y;
    int64_t ldx, ldy, m, k;
    int m_tiles, n_tiles_group, n_tiles_all, kt;
};

/* Producer work split for a cluster of C CTAs. Per k-block a CTA quantizes
 * the SR = 128 / C rows nrank * SR .. of the tile (its slice); its 256
 * producer threads each take 8 / C 16-byte pieces of one row (LPR = 2 C
 * lanes share a row; lane q reads pieces q, q + LPR, ...). */
template <int C> struct qplug__wg_split {
    static constexpr int SR = 128 / C;
    static constexpr int LPR = 2 * C;
    static constexpr int P = 8 / C;
    /* Rows per producer warp (for per-warp copies), and the bytes a CTA
     * receives from each peer per k-block. */
    static constexpr int WROWS = 32 / LPR;
    static constexpr unsigned PEER_BYTES = (unsigned)(SR * (QPLUG_WG_BK + 4));
    /* The x ring: XS slots of the slice's BF16 rows of one k-block. */
    static constexpr int XB = SR * QPLUG_WG_BK * 2;
    static constexpr int XS = QPLUG_WGMMA_XRING / XB > 1 ? QPLUG_WGMMA_XRING / XB : 1;
    /* Dynamic shared memory, from a 1024-byte aligned base (the swizzle
     * needs it; the slack is in SMEM): A and B stage rings, the x ring,
     * row scales per stage, the tile's weight scales (up to KMAX
     * k-blocks), then the barriers full, empty (per stage), xfull, xempty
     * (per x slot). */
    static constexpr int OFF_X = 2 * QPLUG_WG_STAGES * QPLUG_WG_TILE;
    static constexpr int OFF_SCALE = OFF_X + XS * XB;
    static constexpr int OFF_WTAB = OFF_SCALE + QPLUG_WG_STAGES * QPLUG_WG_BM * 4;
    static constexpr int OFF_BAR = OFF_WTAB + QPLUG_WG_KMAX * 4;
    static constexpr int SMEM = OFF_BAR + (2 * QPLUG_WG_STAGES + 2 * XS) * 8 + 1024;
};

/* v / s rounded to nearest even, as the division of act_quant's F32 path,
 * with one multiplication and two FMAs instead of a division per value:
 * with inv = rn(1/s), q0 = rn(v inv) is within an ulp of v / s, the
 * residual v - q0 s is exact in an FMA, and q0 + residual * inv rounds to
 * the correctly rounded quotient (Markstein). Checked on the host against
 * IEEE float division for all pairs of BF16 mantissas of v and of amax
 * (s = amax / 448) over the exponent range the kernel meets: it differs
 * only where |v / s| < 2^-96 (the residual underflows), where the E4M3 code
 * is a zero of v's sign either way. For s = +Inf (amax not finite) the
 * quotient is q0 itself (a signed zero, or NaN for an infinite v); the
 * correction, NaN there, is not taken. A per-value IEEE division (its slow
 * path branch) made the F32 layers several times slower than UE8M0. */
__device__ __forceinline__ float qplug__wg_div_rn(float v, float s, float inv, bool finite)
{
    float q0 = v * inv;
    float q = __fmaf_rn(__fmaf_rn(-q0, s, v), inv, q0);
    return finite ? q : q0;
}

/* Quantizes the thread's pieces of row rl into the stage's swizzled A tile
 * and row scales. Same arithmetic as qplug_cuda__act_quant_kernel, so codes
 * and scales are bit-identical to it: the maximum of the magnitude bits
 * (two BF16 halves at a time as 16-bit unsigned integers, which orders them
 * like the float bits they become) joined with the 1e-4 floor, then s and
 * the E4M3 codes. */
template <bool UE8M0, int C>
__device__ __forceinline__ void qplug__wg_quant(const uint4 r[8 / C], uint8_t *a, float *a_scale,
                                                int rl, int q)
{
    typedef qplug__wg_split<C> S;
    unsigned p = 0u;
#pragma unroll
    for (int j = 0; j < S::P; j++) {
        const uint4 &v = r[j];
        p = __vmaxu2(p, __vmaxu2(__vmaxu2(v.x & 0x7fff7fffu, v.y & 0x7fff7fffu),
                                 __vmaxu2(v.z & 0x7fff7fffu, v.w & 0x7fff7fffu)));
    }
#pragma unroll
    for (int o = S::LPR / 2; o > 0; o >>= 1)
        p = __vmaxu2(p, __shfl_xor_sync(0xffffffffu, p, o));
    unsigned amax_bits = max(__float_as_uint(1e-4f), max(p << 16, p & 0xffff0000u));
    float s, inv;
    bool finite = true;
    if (UE8M0) {
        /* qplug_cuda__pow2_scale(amax) and 1/s without a division: with
         * amax = 1.m * 2^E, fl(amax / 448) is a power of two only for
         * 1.m = 1.75, so s = 2^(E-8) when 1.m <= 1.75 and 2^(E-7)
         * otherwise (checked equal for every float amax >= 1e-4 and
         * NaN/Inf). Divisions cost more than the rest of the row: their
         * slow-path branches also kept the compiler from interleaving rows
         * (v1 measured ~0.26 us per row per k-block). */
        unsigned e = amax_bits >> 23;
        unsigned es = e - 8u + ((amax_bits & 0x7fffffu) > 0x600000u ? 1u : 0u);
        bool nonfinite = e == 0xffu;
        s = nonfinite ? __uint_as_float(0x7fc00000u) : __uint_as_float(es << 23);
        inv = nonfinite ? __uint_as_float(0x7fc00000u) : __uint_as_float((254u - es) << 23);
    } else {
        /* amax / 448 cannot overflow, so s is finite exactly when amax is. */
        s = __uint_as_float(amax_bits) / 448.0f;
        finite = (amax_bits >> 23) != 0xffu;
        inv = __frcp_rn(s);
    }
#pragma unroll
    for (int j = 0; j < S::P; j++) {
        const uint4 &v = r[j];
        unsigned w[4] = {v.x, v.y, v.z, v.w};
        unsigned qq[2];
#pragma unroll
        for (int t = 0; t < 4; t++) {
            float2 f = make_float2(__uint_as_float(w[t] << 16), __uint_as_float(w[t] & 0xffff0000u));
            if (UE8M0) {
                f.x *= inv;
                f.y *= inv;
            } else {
                f.x = qplug__wg_div_rn(f.x, s, inv, finite);
                f.y = qplug__wg_div_rn(f.y, s, inv, finite);
            }
            unsigned pair = __nv_cvt_float2_to_fp8x2(f, __NV_SATFINITE, __NV_E4M3);
            if (t % 2 == 0)
                qq[t / 2] = pair;
            else
                qq[t / 2] |= pair << 16;
        }
        /* The 128-byte swizzle: 16-byte chunk h of row r sits at chunk
         * h ^ (r % 8) of that row (the base is 1024-byte aligned). */
        int piece = q + S::LPR * j;
        int off = rl * 128 + (((piece >> 1) ^ (rl & 7)) << 4) + ((piece & 1) << 3);
        *reinterpret_cast<uint2 *>(a + off) = make_uint2(qq[0], qq[1]);
    }
    if (q == 0)
        a_scale[rl] = s;
}

/* What the producers of one CTA need per k-block besides the x values. */
struct qplug__wg_prod {
    uint8_t *sa, *sb;
    float *sscale;
    uint64_t *full, *empty;
    const CUtensorMap *wmap;
    int n_tile, rl, q, lane, wrow;
    unsigned nrank, mrank;
    uint16_t wmask;
};

/* The bytes that complete a stage's "full" barrier besides its producers'
 * arrivals: the weight tile and the C - 1 peer slices. */
template <int C> __device__ __forceinline__ unsigned qplug__wg_full_bytes(void)
{
    return QPLUG_WG_DIAG == 1 ? (unsigned)QPLUG_WG_TILE
                              : QPLUG_WG_TILE + (C - 1) * qplug__wg_split<C>::PEER_BYTES;
}

/* Starts the weight TMA of k-block kb into its stage, completing on the
 * stage's "full" barrier with the bytes that barrier expects (multicast to
 * the CM CTAs of the n-tile when CM = 2). */
template <int C, int CM>
__device__ __forceinline__ void qplug__wg_issue_w(const qplug__wg_prod &pp, int kb)
{
    int s = kb % QPLUG_WG_STAGES;
    qplug__wg_bar_arrive_tx(&pp.full[s], qplug__wg_full_bytes<C>());
    if (CM > 1)
        qplug__wg_tma_load_mc(pp.sb + s * QPLUG_WG_TILE + pp.mrank * (QPLUG_WG_TILE / CM), pp.wmap,
                              kb * QPLUG_WG_BK,
                              pp.n_tile * QPLUG_WG_BN + (int)pp.mrank * (QPLUG_WG_BN / CM),
                              &pp.full[s], pp.wmask);
    else
        qplug__wg_tma_load(pp.sb + s * QPLUG_WG_TILE, pp.wmap, kb * QPLUG_WG_BK,
                           pp.n_tile * QPLUG_WG_BN, &pp.full[s]);
}

/* Sends the CTA's slice of stage kb % STAGES (codes and row scales) into
 * the same place of the C - 1 peers' stages, completing on their "full"
 * barriers (2 (C - 1) bulk copies). */
template <int C>
__device__ __forceinline__ void qplug__wg_copy_slice(const qplug__wg_prod &pp, int kb)
{
    typedef qplug__wg_split<C> S;
    int s = kb % QPLUG_WG_STAGES;
    uint8_t *a = pp.sa + s * QPLUG_WG_TILE;
    float *asc = pp.sscale + s * QPLUG_WG_BM;
    int r0 = (int)pp.nrank * S::SR;
    for (int j = 1; j < C; j++) {
        unsigned peer = pp.mrank * C + (pp.nrank + (unsigned)j) % C;
        unsigned bar = qplug__wg_mapa(&pp.full[s], peer);
        qplug__wg_copy_to_peer(qplug__wg_mapa(a + r0 * 128, peer), a + r0 * 128, S::SR * 128, bar);
        qplug__wg_copy_to_peer(qplug__wg_mapa(asc + r0, peer), asc + r0, S::SR * 4, bar);
    }
}

/* The producers' work on stage kb % STAGES once the thread holds its x
 * pieces r of k-block kb: wait until the stage is free in every CTA that
 * it is written into; thread 0 starts the weight TMA (multicast with
 * CM = 2); quantize the thread's pieces; copy the slice's codes and scales
 * to the peers (thread 0 for the whole slice, or each warp for its rows);
 * arrive on "full". */
template <bool UE8M0, int C, int CM>
__device__ __forceinline__ void qplug__wg_produce(const qplug__wg_prod &pp, const uint4 r[8 / C],
                                                  int kb, int kt, int &wnext)
{
    typedef qplug__wg_split<C> S;
    int s = kb % QPLUG_WG_STAGES;
    uint8_t *a = pp.sa + s * QPLUG_WG_TILE;
    float *asc = pp.sscale + s * QPLUG_WG_BM;
    /* A CTA-scope acquire, as for the arrivals (see
     * qplug__wg_bar_arrive_cluster): at cluster scope every wait also
     * invalidates L1 (CCTL.IVALL). */
    qplug__wg_bar_wait(&pp.empty[s], ((kb / QPLUG_WG_STAGES) & 1) ^ 1);
    if (threadIdx.x == 0) {
        /* Weight k-block j goes into its stage once the k-block j - STAGES
         * there is consumed everywhere ("empty"; then its "full" phase is
         * complete too, so the arrival with the bytes lands in phase j).
         * Block kb's stage was just waited for; later ones are only
         * tested. "empty" cannot run a phase past the test: its next phase
         * needs these weights. */
        int last = QPLUG_WGMMA_WAHEAD ? min(kb + QPLUG_WG_STAGES - 1, kt - 1) : kb;
        while (wnext <= last &&
               (wnext <= kb || qplug__wg_bar_test(&pp.empty[wnext % QPLUG_WG_STAGES],
                                                  ((wnext / QPLUG_WG_STAGES) & 1) ^ 1)))
            qplug__wg_issue_w<C, CM>(pp, wnext++);
    }
    if (QPLUG_WG_DIAG == 1) {
        qplug__wg_prod_arrive(&pp.full[s]);
        return;
    }
    qplug__wg_quant<UE8M0, C>(r, a, asc, pp.rl, pp.q);
    /* The codes were written by ordinary stores and are read next by the
     * tensor cores and the bulk copies (async proxy). The fence (MEMBAR +
     * FENCE.VIEW.ASYNC in SASS) also waits for every global load the
     * thread has in flight, so no producer thread has one. Leaving the
     * fence out changed the time by under 5% (v3 run 1, diagnostic 3). */
    if (QPLUG_WG_DIAG != 3)
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    if (C > 1 && QPLUG_WGMMA_BIGCOPY) {
        /* All producer threads (named barrier 1) have written the slice;
         * thread 0 sends it whole: 2 (C - 1) bulk copies per k-block. */
        asm volatile("bar.sync 1, %0;\n" ::"n"(128 * QPLUG_WG_PRODUCERS) : "memory");
        if (threadIdx.x == 0)
            qplug__wg_copy_slice<C>(pp, kb);
    } else if (C > 1) {
        __syncwarp();
        if (pp.lane == 0)
            for (int j = 1; j < C; j++) {
                unsigned peer = pp.mrank * C + (pp.nrank + (unsigned)j) % C;
                unsigned bar = qplug__wg_mapa(&pp.full[s], peer);
                qplug__wg_copy_to_peer(qplug__wg_mapa(a + pp.wrow * 128, peer), a + pp.wrow * 128,
                                       S::WROWS * 128, bar);
                qplug__wg_copy_to_peer(qplug__wg_mapa(asc + pp.wrow, peer), asc + pp.wrow,
                                       S::WROWS * 4, bar);
            }
    }
    qplug__wg_prod_arrive(&pp.full[s]);
}

/* Thread 0 fills x slot j % XS with the slice rows of k-block j (the
 * tensor map's box is 128 columns x SR rows; rows past m read as zeros),
 * after all producer threads have read what the slot held before (k-block
 * j - XS). */
template <int C>
__device__ __forceinline__ void qplug__wg_issue_x(const CUtensorMap *xmap, uint8_t *xring,
                                                  uint64_t *xfull, uint64_t *xempty, int j,
                                                  int col0, int row0)
{
    typedef qplug__wg_split<C> S;
    int slot = j % S::XS;
    if (j >= S::XS)
        qplug__wg_bar_wait(&xempty[slot], ((j / S::XS) - 1) & 1);
    qplug__wg_bar_arrive_tx(&xfull[slot], S::XB);
    qplug__wg_tma_load(xring + slot * S::XB, xmap, col0 + j * QPLUG_WG_BK, row0, &xfull[slot]);
}

/* One CTA of a cluster of C x CM CTAs: C (1, 2 or 4) on neighbouring
 * n-tiles of the same m-tile, times CM (1 or 2) neighbouring m-tiles.
 * The C CTAs of one m-tile have the same x tile, so each quantizes only
 * its slice of 128 / C rows per k-block, into its own stage and, by bulk
 * copies (one per producer warp and peer, for the warp's rows and their
 * scales), into the same place of its peers' stages. The CM CTAs of one
 * n-tile share the weight tile: each loads 128 / CM of its rows by TMA
 * multicast into all of them. A stage's "full" barrier expects its own
 * producers (256 arrivals, or 8 with QPLUG_WGMMA_WARP_ARRIVE) and one
 * arrival carrying the bytes of the weight tile and of the C - 1 peer
 * slices; its "empty" barrier takes one
 * arrival per consumer warp of every CTA that writes into this one's
 * stages (the C of its m-tile and the other CM - 1 of its n-tile),
 * 8 (C + CM - 1). C = CM = 1 is the kernel of v1.1. */
template <bool UE8M0, int C, int CM>
__global__ void __launch_bounds__(QPLUG_WG_THREADS, 1)
    qplug__wg_kernel(const __grid_constant__ CUtensorMap wmap,
                     const __grid_constant__ CUtensorMap xmap, const qplug__wg_args args)
{
    typedef qplug__wg_split<C> S;
    extern __shared__ uint8_t qplug__wg_smem_raw[];
    /* The 1024-byte aligned base, computed from the array itself so that
     * the compiler keeps shared-memory instructions (a round trip through
     * an integer made every access to it a generic one). */
    uint8_t *smem =
        qplug__wg_smem_raw + ((1024u - (qplug__wg_smem_addr(qplug__wg_smem_raw) & 1023u)) & 1023u);
    uint8_t *sa = smem;
    uint8_t *sb = smem + QPLUG_WG_STAGES * QPLUG_WG_TILE;
    uint8_t *xring = smem + S::OFF_X;
    float *sscale = (float *)(smem + S::OFF_SCALE);
    float *wtab = (float *)(smem + S::OFF_WTAB);
    uint64_t *full = (uint64_t *)(smem + S::OFF_BAR);
    uint64_t *empty = full + QPLUG_WG_STAGES;
    uint64_t *xfull = empty + QPLUG_WG_STAGES;
    uint64_t *xempty = xfull + S::XS;

    /* Rasterization over clusters (CM x C tiles): bands of
     * QPLUG_WG_RASTER / CM cluster rows, m fastest inside a band, so the
     * CTAs resident together share weight tiles and x rows. The rank of a
     * CTA in its cluster is blockIdx.x % (C CM): n-rank = rank % C,
     * m-rank = rank / C. The m-tiles are padded to a multiple of CM; a CTA
     * of a padding m-tile reads zeros and writes nothing. */
    const int RM = QPLUG_WG_RASTER / CM;
    unsigned rank = C * CM > 1 ? qplug__wg_cluster_rank() : 0u;
    unsigned nrank = rank % C, mrank = rank / C;
    int id = blockIdx.x / (C * CM);
    int n_super = args.n_tiles_all / C;
    int m_super = (args.m_tiles + CM - 1) / CM;
    int band = id / (RM * n_super);
    int first_m = band * RM;
    int band_m = min(RM, m_super - first_m);
    int in_band = id - band * RM * n_super;
    int m_tile = (first_m + in_band % band_m) * CM + (int)mrank;
    int n_tile = (in_band / band_m) * C + (int)nrank; /* over all groups */
    int group = n_tile / args.n_tiles_group;        /* the same in the whole cluster */
    int64_t m0 = (int64_t)m_tile * QPLUG_WG_BM;
    int kt = args.kt;

    if (threadIdx.x == 0) {
        for (int s = 0; s < QPLUG_WG_STAGES; s++) {
            qplug__wg_bar_init(&full[s], QPLUG_WG_PROD_ARRIVALS + 1);
            qplug__wg_bar_init(&empty[s], 8 * (C + CM - 1));
        }
        /* xfull: thread 0's arrival with the TMA bytes; xempty: every
         * producer thread (or warp). */
        for (int j = 0; j < S::XS; j++) {
            qplug__wg_bar_init(&xfull[j], 1);
            qplug__wg_bar_init(&xempty[j], QPLUG_WG_PROD_ARRIVALS);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
        asm volatile("prefetch.tensormap [%0];\n" ::"l"((uint64_t)&wmap) : "memory");
        asm volatile("prefetch.tensormap [%0];\n" ::"l"((uint64_t)&xmap) : "memory");
    }
    /* Peers arrive on and copy into this CTA's barriers and stages only
     * after they are initialised. */
    if (C * CM > 1)
        qplug__wg_cluster_sync();
    else
        __syncthreads();

    /* What the producers need about the CTA's tiles. */
    qplug__wg_prod pp;
    pp.sa = sa;
    pp.sb = sb;
    pp.sscale = sscale;
    pp.full = full;
    pp.empty = empty;
    pp.wmap = &wmap;
    pp.n_tile = n_tile;
    pp.nrank = nrank;
    pp.mrank = mrank;
    /* The CTAs of this n-tile (same n-rank), for the weight multicast. */
    pp.wmask = 0;
    for (int j = 0; j < CM; j++)
        pp.wmask |= (uint16_t)(1u << (nrank + C * j));
    int col0 = group * (int)args.k, row0 = (int)m0 + (int)nrank * S::SR;

    if (threadIdx.x < 128 * QPLUG_WG_PRODUCERS) {
#if QPLUG_WGMMA_PRODUCERS > 1
        asm volatile("setmaxnreg.dec.sync.aligned.u32 " QPLUG__WG_STR(QPLUG_WGMMA_PROD_REGS) ";\n" ::
                         : "memory");
#endif
        static_assert(QPLUG_WG_PRODUCERS == 2, "the slice split assumes 256 producer threads");
        int pt = threadIdx.x, warp = pt >> 5;
        pp.q = pt % S::LPR;
        pp.rl = (int)nrank * S::SR + pt / S::LPR; /* row of the tile */
        pp.lane = pt & 31;
        pp.wrow = (int)nrank * S::SR + warp * S::WROWS; /* the warp's rows, sent to peers */
        const bool own_x = QPLUG_WG_DIAG != 1;
        if (own_x && pt == 0)
            for (int j = 0; j < S::XS - 1 && j < kt; j++)
                qplug__wg_issue_x<C>(&xmap, xring, xfull, xempty, j, col0, row0);
        int wnext = 0; /* thread 0: the next k-block whose weights to load */
        for (int kb = 0; kb < kt; kb++) {
            uint4 r[S::P];
            if (QPLUG_WG_DIAG != 1) {
                if (own_x && pt == 0 && kb + S::XS - 1 < kt)
                    qplug__wg_issue_x<C>(&xmap, xring, xfull, xempty, kb + S::XS - 1, col0, row0);
                int slot = kb % S::XS;
                qplug__wg_bar_wait(&xfull[slot], (kb / S::XS) & 1);
                /* The slot holds SR rows of 256 bytes; a quarter-warp reads
                 * 128 contiguous bytes of one row (C = 4) or 64 of two. */
                const uint8_t *xr = xring + slot * S::XB + (pt / S::LPR) * (QPLUG_WG_BK * 2);
#pragma unroll
                for (int j = 0; j < S::P; j++)
                    r[j] = qplug__wg_lds16(xr + (pp.q + S::LPR * j) * 16);
                qplug__wg_prod_arrive(&xempty[slot]);
            }
            qplug__wg_produce<UE8M0, C, CM>(pp, r, kb, kt, wnext);
        }
    } else {
        /* Consumers. */
#if QPLUG_WGMMA_PRODUCERS > 1
        asm volatile("setmaxnreg.inc.sync.aligned.u32 " QPLUG__WG_STR(QPLUG_WGMMA_CONS_REGS) ";\n" ::
                         : "memory");
#endif
        int wg = (threadIdx.x >> 7) - QPLUG_WG_PRODUCERS, tid = threadIdx.x & 127;
        int warp = tid >> 5, lane = tid & 31;
        int row_a = wg * 64 + warp * 16 + (lane >> 2);
        /* The tile's weight scales, read once into shared memory (by the
         * consumer threads, named barrier 2) when they fit: a global load
         * per k-block would put its latency into every k-block, since the
         * arrival on "empty" (a release) waits for it. */
        const float *wsc = args.w_scale + (int64_t)n_tile * kt;
        bool tab = kt <= QPLUG_WG_KMAX;
        if (tab) {
            for (int i = threadIdx.x - 128 * QPLUG_WG_PRODUCERS; i < kt; i += 256)
                wtab[i] = wsc[i];
            asm volatile("bar.sync 2, 256;\n" ::: "memory");
        }
        float acc[64], fin[64];
#pragma unroll
        for (int i = 0; i < 64; i++) {
            acc[i] = 0.0f;
            fin[i] = 0.0f;
        }
        float wscale_next = tab ? 0.0f : wsc[0];
        for (int kb = 0; kb < kt; kb++) {
            int s = kb % QPLUG_WG_STAGES;
            float wscale = wscale_next;
            if (tab) {
                wscale = wtab[kb];
            } else if (kb + 1 < kt) {
                wscale_next = wsc[kb + 1];
            }
            qplug__wg_bar_wait(&full[s], (kb / QPLUG_WG_STAGES) & 1);
            const uint8_t *a = sa + s * QPLUG_WG_TILE + wg * 64 * 128;
            const uint8_t *b = sb + s * QPLUG_WG_TILE;
            uint64_t da = qplug__wg_desc(a), db = qplug__wg_desc(b);
            if (QPLUG_WG_DIAG != 2) {
                qplug__wg_pin(acc);
                asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
                for (int kk = 0; kk < 4; kk++)
                    qplug__wg_mma(acc, da + 2 * kk, db + 2 * kk, kk > 0);
                asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
                asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
                qplug__wg_pin(acc);
            }
            float s0 = sscale[s * QPLUG_WG_BM + row_a] * wscale;
            float s1 = sscale[s * QPLUG_WG_BM + row_a + 8] * wscale;
            /* One arrival per warp on the stage's "empty" barrier of every
             * CTA that writes into this one's stages (this CTA, its x peers
             * and its weight partner), once all its lanes are done reading. */
            __syncwarp();
            if (lane == 0) {
                if (C * CM > 1) {
                    for (int j = 0; j < C; j++)
                        qplug__wg_bar_arrive_cluster(
                            qplug__wg_mapa(&empty[s], mrank * C + (unsigned)j));
                    for (int j = 1; j < CM; j++)
                        qplug__wg_bar_arrive_cluster(qplug__wg_mapa(
                            &empty[s], ((mrank + (unsigned)j) % CM) * C + nrank));
                } else {
                    qplug__wg_bar_arrive(&empty[s]);
                }
            }
#pragma unroll
            for (int j = 0; j < 16; j++) {
                fin[4 * j + 0] += acc[4 * j + 0] * s0;
                fin[4 * j + 1] += acc[4 * j + 1] * s0;
                fin[4 * j + 2] += acc[4 * j + 2] * s1;
                fin[4 * j + 3] += acc[4 * j + 3] * s1;
            }
        }

        int64_t r0 = m0 + row_a, r1 = r0 + 8;
        __nv_bfloat16 *y0 =
            args.y + r0 * args.ldy + (int64_t)n_tile * QPLUG_WG_BN + 2 * (lane & 3);
        __nv_bfloat16 *y1 = y0 + 8 * args.ldy;
#pragma unroll
        for (int j = 0; j < 16; j++) {
            if (r0 < args.m)
                *reinterpret_cast<__nv_bfloat162 *>(y0 + 8 * j) =
                    __floats2bfloat162_rn(fin[4 * j + 0], fin[4 * j + 1]);
            if (r1 < args.m)
                *reinterpret_cast<__nv_bfloat162 *>(y1 + 8 * j) =
                    __floats2bfloat162_rn(fin[4 * j + 2], fin[4 * j + 3]);
        }
    }
    /* No CTA may exit while peers can still arrive on its barriers. */
    if (C * CM > 1)
        qplug__wg_cluster_sync();
}

typedef CUresult (*qplug__wg_encode_fn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *,
                                        const cuuint64_t *, const cuuint64_t *, const cuuint32_t *,
                                        const cuuint32_t *, CUtensorMapInterleave,
                                        CUtensorMapSwizzle, CUtensorMapL2promotion,
                                        CUtensorMapFloatOOBfill);

/* The cluster size for a shape: the largest of QPLUG_WGMMA_CLUSTER, 2, 1
 * that divides the n-tiles of one group, so a cluster never straddles two
 * groups (which read different columns of x). */
static int qplug__wg_cluster_for(int n_tiles_group)
{
    for (int c = QPLUG_WGMMA_CLUSTER; c > 1; c /= 2)
        if (n_tiles_group % c == 0)
            return c;
    return 1;
}

/* CTAs per cluster along m (sharing weight tiles by TMA multicast): 2
 * when QPLUG_WGMMA_CLUSTER_M allows it and there are at least 4 m-tiles,
 * so that padding m-tiles cost at most an eighth of the work. */
static int qplug__wg_cluster_m_for(int m_tiles)
{
    return QPLUG_WGMMA_CLUSTER_M > 1 && m_tiles >= 4 ? 2 : 1;
}

/* Launches the kernel for a cluster of C x CM CTAs over the m-tiles padded
 * to a multiple of CM. */
template <bool UE8M0, int C, int CM>
static cudaError_t qplug__wg_launch(const CUtensorMap &map, const CUtensorMap &xmap,
                                    const qplug__wg_args &a, void *stream)
{
    const int smem = qplug__wg_split<C>::SMEM;
    static_assert(qplug__wg_split<C>::SMEM <= 232448, "shared memory over the sm_90 limit");
    unsigned blocks = (unsigned)((a.m_tiles + CM - 1) / CM * CM) * (unsigned)a.n_tiles_all;
    cudaError_t e = cudaFuncSetAttribute(qplug__wg_kernel<UE8M0, C, CM>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         smem);
    if (e != cudaSuccess)
        return e;
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = C * CM;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.gridDim = dim3(blocks, 1, 1);
    cfg.blockDim = dim3(QPLUG_WG_THREADS, 1, 1);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = (cudaStream_t)stream;
    cfg.attrs = attr;
    cfg.numAttrs = C * CM > 1 ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, qplug__wg_kernel<UE8M0, C, CM>, map, xmap, a);
}

template <bool UE8M0>
static cudaError_t qplug__wg_dispatch(const CUtensorMap &map, const CUtensorMap &xmap,
                                      const qplug__wg_args &a, int c, int cm, void *stream)
{
    if (cm == 2) {
        if (c == 4)
            return qplug__wg_launch<UE8M0, 4, 2>(map, xmap, a, stream);
        if (c == 2)
            return qplug__wg_launch<UE8M0, 2, 2>(map, xmap, a, stream);
        return qplug__wg_launch<UE8M0, 1, 2>(map, xmap, a, stream);
    }
    if (c == 4)
        return qplug__wg_launch<UE8M0, 4, 1>(map, xmap, a, stream);
    if (c == 2)
        return qplug__wg_launch<UE8M0, 2, 1>(map, xmap, a, stream);
    return qplug__wg_launch<UE8M0, 1, 1>(map, xmap, a, stream);
}

extern "C" int qplug_cuda__fp8_gemm_bf16x_supported(int64_t m, int64_t n, int64_t k,
                                                    int64_t groups)
{
    if (m < 1 || n < 128 || n % 128 != 0 || k < 128 || k % 128 != 0 || groups < 1)
        return 0;
    /* Tile counts (m-tiles padded to pairs) fit the int grid arithmetic;
     * the tensor maps' dimensions and the int coordinates of their boxes
     * (x columns up to groups * k, rows up to m) stay below 2^31. */
    int64_t m_tiles = (m + QPLUG_WG_BM - 1) / QPLUG_WG_BM;
    if (groups > (int64_t)1 << 20 || n > ((int64_t)1 << 31) / groups ||
        k >= ((int64_t)1 << 31) / groups || m >= ((int64_t)1 << 31) - 2 * QPLUG_WG_BM ||
        (m_tiles + 1) * (groups * n / QPLUG_WG_BN) > 0x7fffffff)
        return 0;
    return 1;
}

extern "C" qplug_status qplug_cuda__fp8_gemm_bf16x(const void *x, int64_t ldx, int64_t m,
                                                   int64_t n, int64_t k, int64_t groups,
                                                   qplug_cuda__scale_fmt fmt, const uint8_t *w,
                                                   const float *w_scale, void *y, int64_t ldy,
                                                   void *stream, qplug_cuda__err *err)
{
    if (!x || !w || !w_scale || !y)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT, "fp8_gemm_bf16x: NULL pointer");
    if (!qplug_cuda__fp8_gemm_bf16x_supported(m, n, k, groups))
        return qplug_cuda__fail(err, QPLUG_ERR_SHAPE,
                                "fp8_gemm_bf16x: shape m %lld, n %lld, k %lld, groups %lld needs "
                                "m >= 1, n and k multiples of 128, groups >= 1, within the grid "
                                "and tensor-map limits",
                                (long long)m, (long long)n, (long long)k, (long long)groups);
    /* The activation tensor map takes a row stride in bytes below 2^40. */
    if (ldx < groups * k || ldy < groups * n || ldx >= ((int64_t)1 << 39))
        return qplug_cuda__fail(err, QPLUG_ERR_SHAPE,
                                "fp8_gemm_bf16x: row strides x %lld, y %lld need groups * k "
                                "(%lld) <= x < 2^39 and y >= groups * n (%lld)",
                                (long long)ldx, (long long)ldy, (long long)(groups * k),
                                (long long)(groups * n));
    if ((uintptr_t)x % 16 != 0 || ldx % 8 != 0 || (uintptr_t)y % 4 != 0 || ldy % 2 != 0 ||
        (uintptr_t)w % 16 != 0 || (uintptr_t)w_scale % 4 != 0)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT,
                                "fp8_gemm_bf16x: alignment: x and w need 16 bytes, x row stride "
                                "(%lld) a multiple of 8, y 4 bytes with an even row stride (%lld)",
                                (long long)ldx, (long long)ldy);
    if (fmt != QPLUG_CUDA_SCALE_F32 && fmt != QPLUG_CUDA_SCALE_UE8M0)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT, "fp8_gemm_bf16x: unknown scale format %d",
                                (int)fmt);

    /* The driver's tensor-map encoder, reached through the runtime so that
     * the library needs no link against libcuda. */
    void *fn = NULL;
    cudaDriverEntryPointQueryResult q;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault,
                                         &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess || !fn)
        return qplug_cuda__fail(err, QPLUG_ERR_DEVICE,
                                "fp8_gemm_bf16x: cuTensorMapEncodeTiled not available");
    CUtensorMap map;
    cuuint64_t dims[2] = {(cuuint64_t)k, (cuuint64_t)(groups * n)};
    cuuint64_t strides[1] = {(cuuint64_t)k};
    int cm = qplug__wg_cluster_m_for((int)((m + QPLUG_WG_BM - 1) / QPLUG_WG_BM));
    cuuint32_t box[2] = {QPLUG_WG_BK, (cuuint32_t)(QPLUG_WG_BN / cm)};
    cuuint32_t estr[2] = {1, 1};
    CUresult r = ((qplug__wg_encode_fn)fn)(
        &map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, (void *)w, dims, strides, box, estr,
        CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
        CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS)
        return qplug_cuda__fail(err, QPLUG_ERR_DEVICE,
                                "fp8_gemm_bf16x: weight tensor map refused (CUresult %d)", (int)r);

    qplug__wg_args a;
    a.x = (const __nv_bfloat16 *)x;
    a.w_scale = w_scale;
    a.y = (__nv_bfloat16 *)y;
    a.ldx = ldx;
    a.ldy = ldy;
    a.m = m;
    a.k = k;
    a.m_tiles = (int)((m + QPLUG_WG_BM - 1) / QPLUG_WG_BM);
    a.n_tiles_group = (int)(n / QPLUG_WG_BN);
    a.n_tiles_all = (int)(groups * n / QPLUG_WG_BN);
    a.kt = (int)(k / QPLUG_WG_BK);
    int c = qplug__wg_cluster_for(a.n_tiles_group);

    /* x as BF16 [m, groups * k] with row stride ldx; a box is one k-block
     * of the 128 / c rows a CTA quantizes. */
    CUtensorMap xmap;
    {
        cuuint64_t xdims[2] = {(cuuint64_t)(groups * k), (cuuint64_t)m};
        cuuint64_t xstrides[1] = {(cuuint64_t)ldx * 2};
        cuuint32_t xbox[2] = {QPLUG_WG_BK, (cuuint32_t)(QPLUG_WG_BM / c)};
        r = ((qplug__wg_encode_fn)fn)(&xmap, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, (void *)x, xdims,
                                      xstrides, xbox, estr, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                      CU_TENSOR_MAP_SWIZZLE_NONE,
                                      CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
        if (r != CUDA_SUCCESS)
            return qplug_cuda__fail(err, QPLUG_ERR_DEVICE,
                                    "fp8_gemm_bf16x: activation tensor map refused (CUresult %d)",
                                    (int)r);
    }
    cudaError_t e = cudaSuccess;
    if (fmt == QPLUG_CUDA_SCALE_UE8M0)
        e = qplug__wg_dispatch<true>(map, xmap, a, c, cm, stream);
    else
        e = qplug__wg_dispatch<false>(map, xmap, a, c, cm, stream);
    if (e != cudaSuccess) {
        /* A refused launch also sets the thread's last error; clear it so
         * that the next caller's launch check does not report it again. */
        (void)cudaGetLastError();
        return qplug_cuda__fail(err, QPLUG_ERR_DEVICE,
                                "fp8_gemm_bf16x: launch (cluster of %d x %d) refused: %s", cm, c,
                                cudaGetErrorString(e));
    }
    return qplug_cuda__check_launch(err, "fp8_gemm_bf16x");
}
