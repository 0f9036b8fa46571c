/* moe_v6.cuh - the v6 grouped expert GEMM of the fused MoE (included by
 * moe.cu after moe_wgmma.cuh and moe_ws.cuh, whose wgmma wrappers, FP4
 * decode table and mbarrier helpers it reuses).
 *
 * The standard Hopper pipeline instead of the copy/decode passes of v3/v4:
 *
 *   - the routed rows are first gathered per expert into a contiguous
 *     buffer (qplug_cuda__moe_v6_gather_kernel: x quantized to E4M3 per 128
 *     in the same pass, each expert's rows starting at a multiple of 16),
 *     so both operands of a block are plain 2D boxes;
 *   - warp 0 of warpgroup 0 is the producer: per 128-block of k it waits
 *     for the slot's "empty" barrier, then one lane starts the TMA copies
 *     (cp.async.bulk.tensor) of the 128 weight rows (two boxes of 64 rows
 *     from a 2D tensor map over all experts) and of the token rows (boxes
 *     of 16 rows, 128-byte swizzle, so they land in the wgmma B layout),
 *     and a bulk copy of the token scales, all completing on the slot's
 *     "full" barrier; the 32 lanes add the weight scales with cp.async
 *     (4-byte pieces: the E8M0 rows are too narrow for a tensor box);
 *   - warpgroups 1 and 2 are consumers of 64 weight rows each. FP8
 *     weights arrive 128-byte swizzled and the wgmma reads both operands
 *     from shared memory: no pass through registers at all. MXFP4 weights
 *     arrive raw (64 bytes per row and 128-block); each consumer thread
 *     reads its two rows' 16-byte pieces and decodes them with the exact
 *     per-128 fold of moe_wgmma.cuh straight into the wgmma A registers
 *     (m64nNk32 with A from registers), one 128-block ahead, while the
 *     tensor cores run the current one. No decoded tile goes through
 *     shared memory.
 *
 * The register fragment of A gives thread (warp w, lane 4g + q) rows 16w +
 * g and 16w + g + 8 and, in each k32 step, the k positions 4q..4q+3 and
 * 16 + 4q..16 + 4q + 3. A thread's 16-byte piece of a row is one MX group
 * (k 32q..32q+31), so the weights' k order is permuted: step s takes the
 * group's values 8s..8s+7. A dot product does not depend on the order of
 * its terms, so the tokens' k order is permuted the same way, once, by the
 * gather kernel (and by the h quantization for the down GEMM): logical
 * word 8s + 4h + q of a 128-block holds the 4-byte word 8q + 2s + h.
 * The fold (row scale per 128-block) is the same in any order, so the
 * results equal v3's up to the order of the tensor cores' sums.
 *
 * Decode (at most 16 rows per expert on average) runs a SMALL
 * instantiation (wgmma N = 16, about 90-100 KB of shared memory, two
 * blocks per SM, so one block's pipeline fill overlaps the other's
 * stream) on a tile table of tiles of at most 16 rows (an expert with more
 * rows gets several); prefill runs the large one (N of 16..128 fitted to
 * the tile, one block per SM, setmaxnreg moving registers to the
 * consumers, which take turns on the tensor cores). */
#ifndef QPLUG_CUDA_MOE_V6_CUH
#define QPLUG_CUDA_MOE_V6_CUH

#include <cuda.h>

#ifndef QPLUG_MOE_V6_STAGES_MX
#define QPLUG_MOE_V6_STAGES_MX 8
#endif
#ifndef QPLUG_MOE_V6_STAGES_FP8
#define QPLUG_MOE_V6_STAGES_FP8 6
#endif
#ifndef QPLUG_MOE_V6_SMALL_STAGES_MX
#define QPLUG_MOE_V6_SMALL_STAGES_MX 8
#endif
#ifndef QPLUG_MOE_V6_SMALL_STAGES_FP8
#define QPLUG_MOE_V6_SMALL_STAGES_FP8 5
#endif
/* 1: the gate/up kernel quantizes h itself (a cluster of two blocks per
 * 128 columns of h, which exchange their column maxima); 0 (default): it
 * writes F32 h for qplug_cuda__moe_hquant_kernel. The fused epilogue was
 * slower on the H200 (bench/NOTES.md, "Fused MoE v7", run 1: gate/up
 * 1.89 -> 2.45 ms at 4096 tokens, 672 -> 721 us at 64): with one block per
 * SM its longer epilogue runs while the tensor cores idle, and the
 * clusters constrain block placement. Kept for comparison builds. */
#ifndef QPLUG_MOE_V6_FUSE
#define QPLUG_MOE_V6_FUSE 0
#endif
/* 1: the two consumer warpgroups of the large kernel take turns issuing
 * their wgmmas (named barriers 2 and 3, as v4 does), so that the tensor
 * cores run one warpgroup's block while the other promotes. Off by
 * default: 1.5-2% slower on the H200 at 4096 tokens (bench/NOTES.md,
 * "Fused MoE v7", run 2), so the promotion is not what bounds the large
 * kernel. */
#ifndef QPLUG_MOE_V6_PINGPONG
#define QPLUG_MOE_V6_PINGPONG 0
#endif

enum {
    V6_THREADS = 384,
    /* Registers per thread after setmaxnreg (large kernel): one producer
     * warpgroup, two consumer warpgroups, 65536 in all. */
    V6_PREG = 40,
    V6_CREG = 232,
    /* Rows of one token box, and the alignment of each expert's rows in
     * the gathered buffer (so that a tile's token scales start 64-byte
     * aligned for the bulk copy). */
    V6_RALIGN = 16
};
static_assert(V6_PREG * 128 + V6_CREG * 256 <= 65536, "moe_v6: register split exceeds the file");

/* Shared-memory layout of one block: S slots of [token tile | weight tile
 * | weight scales | token scales], then S "full" and S "empty" barriers. */
template <int WF, bool SMALL> struct qplug_cuda__moe_v6_smem {
    static constexpr int NCMAX = SMALL ? 16 : 128;
    static constexpr int S = WF == MOE_F_FP8
                                 ? (SMALL ? QPLUG_MOE_V6_SMALL_STAGES_FP8 : QPLUG_MOE_V6_STAGES_FP8)
                                 : (SMALL ? QPLUG_MOE_V6_SMALL_STAGES_MX : QPLUG_MOE_V6_STAGES_MX);
    static constexpr int BB = NCMAX * 128;                     /* token tile */
    static constexpr int AB = WF == MOE_F_FP8 ? 16384 : 8192;  /* 128 weight rows */
    static constexpr int SB = WF == MOE_F_FP8 ? 16 : 512;      /* 2 F32 or 128 E8M0 words */
    static constexpr int OB = 0, OA = BB, OS = OA + AB, OT = OS + SB;
    static constexpr int STAGE = (OT + NCMAX * 4 + 1023) / 1024 * 1024;
    static constexpr int BAR = S * STAGE;
    /* After the S full and S empty barriers: the gate/up kernel's h
     * exchange barrier and the partner block's 128 column maxima (written
     * by the partner, so outside the ring that this block still uses). */
    static constexpr int XBAR = BAR + 2 * S * 8;
    static constexpr int REM = XBAR + 16;
    static constexpr int BYTES = REM + 128 * 4;
    static constexpr int LAUNCH = BYTES + 1024; /* room to align the base */
    static_assert(LAUNCH <= (SMALL ? 113 : 227) * 1024, "moe_v6: stages exceed the shared memory");
    static_assert(OA % 1024 == 0 && STAGE % 1024 == 0, "moe_v6: swizzled tiles need 1024 alignment");
};

/* ------------------------------------------------ TMA and barrier helpers */

static __device__ __forceinline__ void qplug_cuda__moe_v6_arrive_tx(uint64_t *b, unsigned bytes)
{
    uint32_t a = (uint32_t)__cvta_generic_to_shared(b);
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(a), "r"(bytes)
                 : "memory");
}

/* The mbarrier counts one arrival of this thread once all its earlier
 * cp.async copies have landed (the arrival was counted at init). */
static __device__ __forceinline__ void qplug_cuda__moe_v6_cp_arrive(uint64_t *b)
{
    uint32_t a = (uint32_t)__cvta_generic_to_shared(b);
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(a) : "memory");
}

static __device__ __forceinline__ void qplug_cuda__moe_v6_tma(void *dst, const CUtensorMap *map,
                                                              int c0, int c1, uint64_t *bar)
{
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes "
                 "[%0], [%1, {%2, %3}], [%4];\n" ::"r"((uint32_t)__cvta_generic_to_shared(dst)),
                 "l"((uint64_t)map), "r"(c0), "r"(c1),
                 "r"((uint32_t)__cvta_generic_to_shared(bar))
                 : "memory");
}

/* Bulk copy of bytes (multiple of 16, both ends 16-byte aligned). */
static __device__ __forceinline__ void qplug_cuda__moe_v6_bulk(void *dst, const void *src,
                                                               unsigned bytes, uint64_t *bar)
{
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes "
                 "[%0], [%1], %2, [%3];\n" ::"r"((uint32_t)__cvta_generic_to_shared(dst)),
                 "l"(src), "r"(bytes), "r"((uint32_t)__cvta_generic_to_shared(bar))
                 : "memory");
}

static __device__ __forceinline__ uint4 qplug_cuda__moe_v6_lds16(const void *p)
{
    uint4 v;
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "r"((uint32_t)__cvta_generic_to_shared(p))
                 : "memory");
    return v;
}

/* ------------------------------------------------ cluster helpers */

/* Every thread of both blocks of the cluster; release / acquire, so the
 * barrier initialisations of each block are visible to the other. */
static __device__ __forceinline__ void qplug_cuda__moe_v6_cluster_sync(void)
{
    asm volatile("barrier.cluster.arrive.release.aligned;\n"
                 "barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}

static __device__ __forceinline__ unsigned qplug_cuda__moe_v6_cluster_rank(void)
{
    unsigned r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
    return r;
}

/* The address in the cluster's shared window of p in block `rank`. */
static __device__ __forceinline__ uint32_t qplug_cuda__moe_v6_mapa(const void *p, unsigned rank)
{
    uint32_t r;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n"
                 : "=r"(r)
                 : "r"((uint32_t)__cvta_generic_to_shared(p)), "r"(rank));
    return r;
}

static __device__ __forceinline__ void qplug_cuda__moe_v6_st_remote(uint32_t a, float v)
{
    asm volatile("st.shared::cluster.f32 [%0], %1;\n" ::"r"(a), "f"(v) : "memory");
}

/* Arrives on a barrier of the other block, releasing this thread's
 * earlier writes at cluster scope. */
static __device__ __forceinline__ void qplug_cuda__moe_v6_arrive_remote(uint32_t a)
{
    asm volatile("mbarrier.arrive.release.cluster.shared::cluster.b64 _, [%0];\n" ::"r"(a)
                 : "memory");
}

/* Waits for phase `par` of a barrier of this block that the other block
 * arrives on (acquire at cluster scope). */
static __device__ __forceinline__ void qplug_cuda__moe_v6_wait_cluster(uint64_t *b, unsigned par)
{
    uint32_t a = (uint32_t)__cvta_generic_to_shared(b);
    asm volatile("{\n.reg .pred p;\n"
                 "WAITC_%=:\n"
                 "mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%0], %1;\n"
                 "@!p bra WAITC_%=;\n}\n" ::"r"(a),
                 "r"(par)
                 : "memory");
}

/* ------------------------------------------- wgmma with A from registers */

#define QPLUG__V6_D8(i)                                                                        \
    "+f"(d[i + 0]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]),          \
        "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])

/* d (64 x N fp32) = a . b (+ d when acc), k = 32, A (E4M3) from this
 * thread's four registers (the fragment layout in the header), B K-major
 * in shared memory. */
static __device__ __forceinline__ void qplug_cuda__moe_v6_mma_r16(float *d, const uint32_t *a,
                                                                 uint64_t db, int acc)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %13, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n16k32.f32.e4m3.e4m3 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7}, "
                 "{%8, %9, %10, %11}, %12, p, 1, 1;\n}\n"
                 : QPLUG__V6_D8(0)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc));
}

static __device__ __forceinline__ void qplug_cuda__moe_v6_mma_r32(float *d, const uint32_t *a,
                                                                 uint64_t db, int acc)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n32k32.f32.e4m3.e4m3 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
                 "{%16, %17, %18, %19}, %20, p, 1, 1;\n}\n"
                 : QPLUG__V6_D8(0), QPLUG__V6_D8(8)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc));
}

static __device__ __forceinline__ void qplug_cuda__moe_v6_mma_r64(float *d, const uint32_t *a,
                                                                 uint64_t db, int acc)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
                 "{%32, %33, %34, %35}, %36, p, 1, 1;\n}\n"
                 : QPLUG__V6_D8(0), QPLUG__V6_D8(8), QPLUG__V6_D8(16), QPLUG__V6_D8(24)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc));
}

static __device__ __forceinline__ void qplug_cuda__moe_v6_mma_r96(float *d, const uint32_t *a,
                                                                 uint64_t db, int acc)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %53, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n96k32.f32.e4m3.e4m3 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47}, "
                 "{%48, %49, %50, %51}, %52, p, 1, 1;\n}\n"
                 : QPLUG__V6_D8(0), QPLUG__V6_D8(8), QPLUG__V6_D8(16), QPLUG__V6_D8(24), QPLUG__V6_D8(32), QPLUG__V6_D8(40)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc));
}

static __device__ __forceinline__ void qplug_cuda__moe_v6_mma_r128(float *d, const uint32_t *a,
                                                                 uint64_t db, int acc)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
                 "{%64, %65, %66, %67}, %68, p, 1, 1;\n}\n"
                 : QPLUG__V6_D8(0), QPLUG__V6_D8(8), QPLUG__V6_D8(16), QPLUG__V6_D8(24), QPLUG__V6_D8(32), QPLUG__V6_D8(40), QPLUG__V6_D8(48), QPLUG__V6_D8(56)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc));
}

template <int NC>
static __device__ __forceinline__ void qplug_cuda__moe_v6_mma_r(float *d, const uint32_t *a,
                                                               uint64_t db, int acc)
{
    if (NC == 16)
        qplug_cuda__moe_v6_mma_r16(d, a, db, acc);
    else if (NC == 32)
        qplug_cuda__moe_v6_mma_r32(d, a, db, acc);
    else if (NC == 64)
        qplug_cuda__moe_v6_mma_r64(d, a, db, acc);
    else if (NC == 96)
        qplug_cuda__moe_v6_mma_r96(d, a, db, acc);
    else
        qplug_cuda__moe_v6_mma_r128(d, a, db, acc);
}

/* Keeps the A registers of an issued wgmma alive (and unchanged) until
 * after the wait that follows: the wgmma reads them asynchronously. */
static __device__ __forceinline__ void qplug_cuda__moe_v6_pin(uint32_t *a)
{
#pragma unroll
    for (int i = 0; i < 16; i++)
        asm volatile("" : "+r"(a[i])::"memory");
}

/* ----------------------------------------------------- token permutation */

/* Logical word of a 128-block that holds word w (the header's k order). */
static __device__ __forceinline__ int qplug_cuda__moe_v6_perm_word(int w)
{
    return ((w >> 1) & 3) * 8 + (w & 1) * 4 + (w >> 3);
}

/*
 * The gathered token operand of the gate/up GEMM: every valid (token,
 * slot) pair's row inv[pair] of xg [rows, D] gets the token's E4M3 values
 * (k order permuted when PERM, for MXFP4 weights) and xgs [D/128][ld] its
 * scales. Blocks of 256 threads (grid: tokens x parts of D): a token's
 * values are quantized once and written to each of its K rows; one warp
 * per 128-block, lane l making word l (4 values). PACKED = false: from BF16 x [m, D], quantized
 * here by the rule of qplug_cuda__act_quant_fp8. PACKED = true: from the
 * W4A4 MXFP4 rows (src_ld bytes each: D/2 code bytes, then the E8M0
 * scales), folded per 128-block exactly as
 * qplug_cuda__moe_w4a4_unpack_kernel does, setting *flag for a block that
 * cannot be folded exactly (the mma.sync fallback then runs instead).
 */
template <bool PACKED, bool PERM>
__global__ void __launch_bounds__(256)
    qplug_cuda__moe_v6_gather_kernel(const uint8_t *__restrict__ src, int64_t src_ld, int K,
                                     int64_t D, const int32_t *__restrict__ inv, int ue8m0,
                                     uint8_t *__restrict__ xg, float *__restrict__ xgs,
                                     int64_t ld, int32_t *__restrict__ flag)
{
    __shared__ int rows[16];
    __shared__ int any;
    qplug_cuda__moe_pdl_enter();
    int lane = threadIdx.x & 31, kbn = (int)(D / 128);
    int64_t t = blockIdx.x;
    if (threadIdx.x == 0)
        any = 0;
    __syncthreads();
    if (threadIdx.x < K) {
        int r = inv[t * K + threadIdx.x];
        rows[threadIdx.x] = r;
        if (r >= 0)
            any = 1;
    }
    __syncthreads();
    /* A token routed nowhere is neither written nor checked. */
    if (!any)
        return;
    const uint8_t *xr = src + t * src_ld;
    int w = PERM ? qplug_cuda__moe_v6_perm_word(lane) : lane;
    bool bad = false;
    for (int kb = (int)blockIdx.y * 8 + (threadIdx.x >> 5); kb < kbn; kb += 8 * (int)gridDim.y) {
        unsigned q;
        float s;
        if (!PACKED) {
            uint2 u = reinterpret_cast<const uint2 *>(xr + kb * 256)[lane];
            float2 f0 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&u.x));
            float2 f1 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&u.y));
            float v[4] = {f0.x, f0.y, f1.x, f1.y};
            float amax = 1e-4f;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                float a = fabsf(v[i]);
                amax = (a > amax || a != a) ? a : amax;
            }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) {
                float b = __shfl_xor_sync(0xffffffffu, amax, o);
                amax = (b > amax || b != b) ? b : amax;
            }
            s = ue8m0 ? qplug_cuda__pow2_scale(amax) : amax / 448.0f;
            q = 0;
#pragma unroll
            for (int i = 0; i < 4; i++)
                q |= qplug_cuda__to_e4m3(__fdiv_rn(v[i], s)) << (8 * i);
        } else {
            /* Lane l's four codes are bytes 2l, 2l + 1 of the block. */
            unsigned codes = reinterpret_cast<const unsigned short *>(xr + kb * 64)[lane];
            unsigned sw = *reinterpret_cast<const unsigned *>(xr + D / 2 + kb * 4);
            int emax = qplug_cuda__moe_wg_emax(sw);
            int tp = (int)((sw >> (8 * (lane >> 3))) & 0xffu) - emax + 12;
            bad |= emax == 255 || (tp < 1 && (codes & 0x7777u) != 0);
            unsigned lo, hi, o1;
            qplug_cuda__moe_wg_fp4_table(max(1, tp), &lo, &hi);
            qplug_cuda__moe_wg_fp4_decode(codes, lo, hi, &q, &o1);
            s = qplug_cuda__e8m0_dev((unsigned)emax) * 0.015625f;
        }
        for (int j = 0; j < K; j++) {
            int row = rows[j];
            if (row < 0)
                continue;
            reinterpret_cast<unsigned *>(xg + (int64_t)row * D + kb * 128)[w] = q;
            if (lane == 0)
                xgs[(int64_t)kb * ld + row] = s;
        }
    }
    if (PACKED && __syncthreads_or(bad) && threadIdx.x == 0)
        atomicOr(flag, 1);
}

/* The larger of a and b where NaN wins (the amax rule of the activation
 * quantizers). */
static __device__ __forceinline__ float qplug_cuda__moe_v6_fold(float a, float b)
{
    return (b > a || b != b) ? b : a;
}

/*
 * The end of a gate/up block with the h quantization fused: the 256
 * consumer threads hold, in the wgmma D layout, g (warpgroup 0, rows of
 * w1) and u (warpgroup 1, rows of w3) for this block's 64 columns n0.. of
 * h and NC token columns. Warpgroup 1 hands u over through the ring
 * (free: every slot has been consumed); warpgroup 0 forms h = silu(min(g,
 * L)) * clamp(u, -L, L) exactly as qplug_cuda__moe_wg_epilogue does, takes
 * each token's maximum |h| over its 64 columns, swaps it with the other
 * block of the cluster (the other 64 columns of the same 128-group: its
 * column maxima land in `rem` and its 128 arrivals on `xbar`), and
 * quantizes with the scale of both halves, by the rule and in the k order
 * of qplug_cuda__moe_hquant_kernel (bit-identical to that kernel on the
 * F32 h). The E4M3 bytes go through shared memory so that each token's
 * 64 bytes leave as 4-byte words; block rank 0 of the pair writes the
 * scales.
 */
template <int NC>
static __device__ __forceinline__ void qplug_cuda__moe_v6_epilogue_hq(
    const qplug_cuda__moe_gemm_args &p, float *acc, uint8_t *ring, uint64_t *xbar, float *rem,
    int cw, int wt, int wl, int lane, int r0, int nrows, int n0)
{
    /* Ring use: u [NC/2][128 threads], red [4 warps][NC], sc [NC], the
     * staged bytes [NC][68] (68: the four lane quads of a warp store to
     * different banks). */
    constexpr int SP = 68;
    float *u = reinterpret_cast<float *>(ring);
    float *red = u + (NC / 2) * 128;
    float *sc = red + 4 * NC;
    uint8_t *stg = reinterpret_cast<uint8_t *>(sc + NC);
    int g = lane >> 2, c0 = 2 * (lane & 3), m0 = wl * 16 + g;
    unsigned rank = qplug_cuda__moe_v6_cluster_rank();

    asm volatile("bar.sync 1, 256;\n" ::: "memory");
    if (cw == 1) {
#pragma unroll
        for (int i = 0; i < NC / 2; i++)
            u[i * 128 + wt] = acc[i];
    }
    asm volatile("bar.sync 1, 256;\n" ::: "memory");
    if (cw == 1)
        return;

    float lim = p.limit;
#pragma unroll
    for (int i = 0; i < NC / 2; i++) {
        int col = (i >> 2) * 8 + c0 + (i & 1);
        float gg = acc[i], uu = u[i * 128 + wt];
        if (lim > 0.0f) {
            gg = fminf(gg, lim);
            uu = fminf(fmaxf(uu, -lim), lim);
        }
        /* Columns past the tile's rows hold other rows' data: 0 keeps
         * them out of the maxima. */
        acc[i] = col < nrows ? gg / (1.0f + expf(-gg)) * uu : 0.0f;
    }
    /* Column maxima: this thread's two rows, the 8 lane groups of the
     * warp, then the 4 warps. */
#pragma unroll
    for (int j = 0; j < NC / 8; j++) {
        float a0 = qplug_cuda__moe_v6_fold(qplug_cuda__moe_v6_fold(1e-4f, fabsf(acc[4 * j])),
                                           fabsf(acc[4 * j + 2]));
        float a1 = qplug_cuda__moe_v6_fold(
            qplug_cuda__moe_v6_fold(1e-4f, fabsf(acc[4 * j + 1])), fabsf(acc[4 * j + 3]));
#pragma unroll
        for (int o = 4; o < 32; o <<= 1) {
            a0 = qplug_cuda__moe_v6_fold(a0, __shfl_xor_sync(0xffffffffu, a0, o));
            a1 = qplug_cuda__moe_v6_fold(a1, __shfl_xor_sync(0xffffffffu, a1, o));
        }
        if (g == 0) {
            red[wl * NC + 8 * j + c0] = a0;
            red[wl * NC + 8 * j + c0 + 1] = a1;
        }
    }
    asm volatile("bar.sync 4, 128;\n" ::: "memory");
    float loc = 1e-4f;
    if (wt < NC) {
#pragma unroll
        for (int w = 0; w < 4; w++)
            loc = qplug_cuda__moe_v6_fold(loc, red[w * NC + wt]);
        qplug_cuda__moe_v6_st_remote(qplug_cuda__moe_v6_mapa(rem + wt, rank ^ 1u), loc);
    }
    qplug_cuda__moe_v6_arrive_remote(qplug_cuda__moe_v6_mapa(xbar, rank ^ 1u));
    qplug_cuda__moe_v6_wait_cluster(xbar, 0u);
    if (wt < NC) {
        float amax = qplug_cuda__moe_v6_fold(loc, rem[wt]);
        float s = p.ue8m0 ? qplug_cuda__pow2_scale(amax) : amax / 448.0f;
        sc[wt] = s;
        if (rank == 0 && wt < nrows)
            p.hs[(int64_t)(n0 >> 7) * p.hs_ld + r0 + wt] = s;
    }
    asm volatile("bar.sync 4, 128;\n" ::: "memory");
#pragma unroll
    for (int i = 0; i < NC / 2; i++) {
        int col = (i >> 2) * 8 + c0 + (i & 1), row = m0 + ((i & 2) ? 8 : 0);
        stg[col * SP + row] = (uint8_t)qplug_cuda__to_e4m3(__fdiv_rn(acc[i], sc[col]));
    }
    asm volatile("bar.sync 4, 128;\n" ::: "memory");
    /* Word w of this block's 64 bytes is word 16 rank + w of the 128-group. */
    uint8_t *hq = p.hq + (int64_t)r0 * p.n + (n0 & ~127);
    for (int idx = wt; idx < NC * 16; idx += 128) {
        int col = idx >> 4, w = (int)rank * 16 + (idx & 15);
        if (col >= nrows)
            break;
        int d = p.hperm ? qplug_cuda__moe_v6_perm_word(w) : w;
        reinterpret_cast<unsigned *>(hq + (int64_t)col * p.n)[d] =
            *reinterpret_cast<const unsigned *>(stg + col * SP + 4 * (idx & 15));
    }
}

/* --------------------------------------------------------------- the GEMM */

/* The body of qplug_cuda__moe_v6_kernel for one wgmma N = NC. */
template <int WF, bool DUAL, bool SMALL, int NC>
static __device__ __forceinline__ void qplug_cuda__moe_v6_body(const CUtensorMap *ma0,
                                                               const CUtensorMap *ma1,
                                                               const CUtensorMap *mb,
                                                               const qplug_cuda__moe_gemm_args &p)
{
    typedef qplug_cuda__moe_v6_smem<WF, SMALL> L;
    extern __shared__ __align__(1024) uint8_t qplug_cuda__moe_v6_sm[];
    /* TMA's 128-byte swizzle follows the absolute shared address. */
    uint32_t base = (uint32_t)__cvta_generic_to_shared(qplug_cuda__moe_v6_sm);
    uint8_t *sm = qplug_cuda__moe_v6_sm + ((1024u - (base & 1023u)) & 1023u);

    int tile = blockIdx.y;
    int e = p.tile_e[tile], r0 = p.tile_r0[tile], r1 = p.tile_r1[tile];
    int nrows = r1 - r0;
    int64_t n = p.n, k = p.k, nk = k / WG_BK;
    int n0 = (int)blockIdx.x * (DUAL ? 64 : 128);
    int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    uint64_t *full = reinterpret_cast<uint64_t *>(sm + L::BAR);
    uint64_t *empty = full + L::S;
    uint64_t *xbar = reinterpret_cast<uint64_t *>(sm + L::XBAR);
    /* The gate/up pair quantizes h in its epilogue (a cluster of 2). */
    constexpr bool FUSE = DUAL && QPLUG_MOE_V6_FUSE;
    static_assert(!FUSE || NC * (256 + 16 + 4 + 68) <= L::BAR,
                  "moe_v6: the fused epilogue's buffers exceed the ring");
    if (tid == 0) {
        for (int s = 0; s < L::S; s++) {
            /* full: the producer lane's expect_tx plus the 32 lanes'
             * cp.async arrivals; empty: the 8 consumer warps. */
            qplug_cuda__moe_ws_bar_init(&full[s], 33);
            qplug_cuda__moe_ws_bar_init(&empty[s], 8);
        }
        /* xbar: the other block's 128 epilogue threads. */
        if (FUSE)
            qplug_cuda__moe_ws_bar_init(xbar, 128);
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    if (FUSE)
        qplug_cuda__moe_v6_cluster_sync();
    else
        __syncthreads();

    if (warp < 4) {
        /* ------------------------------------------------ producer */
        if (!SMALL)
            asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"((int)V6_PREG) : "memory");
        if (warp != 0)
            return;
        /* Row of weight half h (64 rows) in the tensor map over all experts. */
        int wrow0 = (int)((int64_t)e * n + n0);
        int wrow1 = DUAL ? wrow0 : wrow0 + 64;
        const CUtensorMap *mh1 = DUAL ? ma1 : ma0;
        const unsigned tx = (unsigned)(L::AB + NC * 128 + NC * 4);
        for (int64_t kb = 0; kb < nk; kb++) {
            int s = (int)(kb % L::S);
            int64_t u = kb / L::S;
            if (u > 0)
                qplug_cuda__moe_ws_wait(&empty[s], (unsigned)((u - 1) & 1));
            uint8_t *st = sm + s * L::STAGE;
            if (lane == 0) {
                qplug_cuda__moe_v6_arrive_tx(&full[s], tx);
                int ka = (int)(kb * (WF == MOE_F_FP8 ? 128 : 64));
                qplug_cuda__moe_v6_tma(st + L::OA, ma0, ka, wrow0, &full[s]);
                qplug_cuda__moe_v6_tma(st + L::OA + L::AB / 2, mh1, ka, wrow1, &full[s]);
#pragma unroll
                for (int i = 0; i < NC / 16; i++)
                    qplug_cuda__moe_v6_tma(st + L::OB + i * 2048, mb, (int)(kb * 128), r0 + 16 * i,
                                           &full[s]);
                qplug_cuda__moe_v6_bulk(st + L::OT, p.a_scale + kb * p.a_sld + r0, NC * 4,
                                        &full[s]);
            }
            if (WF == MOE_F_FP8) {
                if (lane < 2) {
                    int h = lane;
                    const uint8_t *src =
                        p.ws[DUAL ? h : 0] +
                        (((int64_t)e * (n / 128) + (n0 + (DUAL ? 0 : 64 * h)) / 128) * (k / 128) +
                         kb) * 4;
                    qplug_cuda__moe_wg_cp4(st + L::OS + 4 * h, src, true);
                }
            } else {
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    int r = lane + 32 * i, h = r >> 6;
                    int64_t row = (int64_t)e * n + n0 + (DUAL ? 0 : 64 * h) + (r & 63);
                    qplug_cuda__moe_wg_cp4(st + L::OS + 4 * r,
                                           p.ws[DUAL ? h : 0] + row * (k / 32) + kb * 4, true);
                }
            }
            qplug_cuda__moe_v6_cp_arrive(&full[s]);
        }
        return;
    }

    /* ---------------------------------------------------- consumers */
    if (!SMALL)
        asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"((int)V6_CREG) : "memory");
    int cw = (warp >> 2) - 1, wl = warp & 3, wt = tid - 128 - 128 * cw;
    int g = lane >> 2, q = lane & 3, c0 = 2 * q;
    /* Rows (of the block's 128) of this thread's A fragment and of its
     * accumulator elements. */
    int ra = cw * 64 + wl * 16 + g, rb = ra + 8;
    float acc[NC / 2], tmp[NC / 2];
#pragma unroll
    for (int i = 0; i < NC / 2; i++)
        acc[i] = tmp[i] = 0.0f;

    auto promote = [&](const uint8_t *st, float w0, float w1) {
        const float *ts = reinterpret_cast<const float *>(st + L::OT);
#pragma unroll
        for (int j = 0; j < NC / 8; j++) {
            float2 t = *reinterpret_cast<const float2 *>(ts + j * 8 + c0);
            acc[4 * j + 0] = fmaf(tmp[4 * j + 0] * t.x, w0, acc[4 * j + 0]);
            acc[4 * j + 1] = fmaf(tmp[4 * j + 1] * t.y, w0, acc[4 * j + 1]);
            acc[4 * j + 2] = fmaf(tmp[4 * j + 2] * t.x, w1, acc[4 * j + 2]);
            acc[4 * j + 3] = fmaf(tmp[4 * j + 3] * t.y, w1, acc[4 * j + 3]);
        }
    };
    auto release = [&](int s) {
        __syncwarp();
        if (lane == 0)
            qplug_cuda__moe_ws_arrive(&empty[s]);
    };
    /* Ping-pong (large kernel): warpgroup 0 issues block kb after
     * warpgroup 1 has issued block kb - 1, warpgroup 1 after warpgroup 0
     * has issued kb, so the tensor cores run the two alternately and each
     * warpgroup promotes while the other's wgmmas run. */
    constexpr bool PP = !SMALL && QPLUG_MOE_V6_PINGPONG;
    auto turn_take = [&](int64_t kb) {
        if (PP && (cw == 1 || kb > 0))
            qplug_cuda__moe_ws_turn_wait(cw == 0 ? 2 : 3);
    };
    auto turn_give = [&]() {
        if (PP)
            qplug_cuda__moe_ws_turn_give(cw == 0 ? 3 : 2);
    };

    if (WF == MOE_F_FP8) {
        for (int64_t kb = 0; kb < nk; kb++) {
            int s = (int)(kb % L::S);
            const uint8_t *st = sm + s * L::STAGE;
            qplug_cuda__moe_ws_wait(&full[s], (unsigned)((kb / L::S) & 1));
            uint64_t da = qplug_cuda__moe_wg_desc(st + L::OA + cw * 8192);
            uint64_t db = qplug_cuda__moe_wg_desc(st + L::OB);
            turn_take(kb);
            qplug_cuda__moe_wg_fence();
#pragma unroll
            for (int ks = 0; ks < 4; ks++)
                qplug_cuda__moe_wg_mma<false, NC>(tmp, da + WG_KSTEP * ks, db + WG_KSTEP * ks, ks);
            qplug_cuda__moe_wg_commit_mma();
            turn_give();
            float w = reinterpret_cast<const float *>(st + L::OS)[cw];
            qplug_cuda__moe_wg_wait<NC>(tmp);
            promote(st, w, w);
            release(s);
        }
    } else {
        /* Decodes rows ra, rb of slot st into the A fragments of its four
         * k32 steps, and their row scales. */
        auto decode = [&](const uint8_t *st, uint32_t *a, float &w0, float &w1) {
            uint4 va = qplug_cuda__moe_v6_lds16(st + L::OA + ra * 64 + q * 16);
            uint4 vb = qplug_cuda__moe_v6_lds16(st + L::OA + rb * 64 + q * 16);
            const unsigned *sw = reinterpret_cast<const unsigned *>(st + L::OS);
            unsigned swa = sw[ra], swb = sw[rb];
            int ea = qplug_cuda__moe_wg_emax(swa), eb = qplug_cuda__moe_wg_emax(swb);
            unsigned la, ha, lb, hb;
            qplug_cuda__moe_wg_fp4_table(max(1, (int)((swa >> (8 * q)) & 0xffu) - ea + 12), &la,
                                         &ha);
            qplug_cuda__moe_wg_fp4_table(max(1, (int)((swb >> (8 * q)) & 0xffu) - eb + 12), &lb,
                                         &hb);
            unsigned oa[8], ob[8];
            qplug_cuda__moe_wg_fp4_decode(va.x, la, ha, &oa[0], &oa[1]);
            qplug_cuda__moe_wg_fp4_decode(va.y, la, ha, &oa[2], &oa[3]);
            qplug_cuda__moe_wg_fp4_decode(va.z, la, ha, &oa[4], &oa[5]);
            qplug_cuda__moe_wg_fp4_decode(va.w, la, ha, &oa[6], &oa[7]);
            qplug_cuda__moe_wg_fp4_decode(vb.x, lb, hb, &ob[0], &ob[1]);
            qplug_cuda__moe_wg_fp4_decode(vb.y, lb, hb, &ob[2], &ob[3]);
            qplug_cuda__moe_wg_fp4_decode(vb.z, lb, hb, &ob[4], &ob[5]);
            qplug_cuda__moe_wg_fp4_decode(vb.w, lb, hb, &ob[6], &ob[7]);
#pragma unroll
            for (int ks = 0; ks < 4; ks++) {
                a[4 * ks + 0] = oa[2 * ks];
                a[4 * ks + 1] = ob[2 * ks];
                a[4 * ks + 2] = oa[2 * ks + 1];
                a[4 * ks + 3] = ob[2 * ks + 1];
            }
            w0 = qplug_cuda__e8m0_dev((unsigned)ea) * 0.015625f;
            w1 = qplug_cuda__e8m0_dev((unsigned)eb) * 0.015625f;
        };
        /* One 128-block: the wgmmas on cur, the next block decoded into
         * nxt meanwhile, then the promotion. */
        auto step = [&](int64_t kb, uint32_t *cur, float cw0, float cw1, uint32_t *nxt,
                        float &nw0, float &nw1) {
            int s = (int)(kb % L::S);
            const uint8_t *st = sm + s * L::STAGE;
            uint64_t db = qplug_cuda__moe_wg_desc(st + L::OB);
            turn_take(kb);
            qplug_cuda__moe_wg_fence();
#pragma unroll
            for (int ks = 0; ks < 4; ks++)
                qplug_cuda__moe_v6_mma_r<NC>(tmp, cur + 4 * ks, db + WG_KSTEP * ks, ks);
            qplug_cuda__moe_wg_commit_mma();
            turn_give();
            if (kb + 1 < nk) {
                int s1 = (int)((kb + 1) % L::S);
                qplug_cuda__moe_ws_wait(&full[s1], (unsigned)(((kb + 1) / L::S) & 1));
                decode(sm + s1 * L::STAGE, nxt, nw0, nw1);
            }
            qplug_cuda__moe_wg_wait<NC>(tmp);
            qplug_cuda__moe_v6_pin(cur);
            promote(st, cw0, cw1);
            release(s);
        };
        uint32_t a0[16], a1[16];
        float w00 = 0.0f, w01 = 0.0f, w10 = 0.0f, w11 = 0.0f;
        if (nk > 0) {
            qplug_cuda__moe_ws_wait(&full[0], 0u);
            decode(sm, a0, w00, w01);
        }
        for (int64_t kb = 0; kb < nk; kb += 2) {
            step(kb, a0, w00, w01, a1, w10, w11);
            if (kb + 1 < nk)
                step(kb + 1, a1, w10, w11, a0, w00, w01);
        }
    }

    /* Warpgroup 1's last turn signal has no wait in the loop. */
    if (PP && cw == 0 && nk > 0)
        qplug_cuda__moe_ws_turn_wait(2);

    /* All slots are consumed (every copy has landed and been read): the
     * ring's memory is free for the hand-over of u. */
    if (FUSE)
        qplug_cuda__moe_v6_epilogue_hq<NC>(p, acc, sm, xbar,
                                           reinterpret_cast<float *>(sm + L::REM), cw, wt, wl,
                                           lane, r0, nrows, n0);
    else
        qplug_cuda__moe_wg_epilogue<DUAL, NC>(p, acc, reinterpret_cast<float *>(sm), cw, wt, r0,
                                              nrows, n0, wl * 16 + g, c0);
}

/*
 * The v6 grouped GEMM: grid (n / 64 for the gate/up pair, n / 128
 * otherwise; tile count bound), 384 threads. ma0/ma1: the weights
 * (w1/w3, or w2 twice) as [E * n rows, k bytes] (FP8: 128-byte boxes of
 * 64 rows, 128-byte swizzle; MXFP4: the packed rows, 64-byte boxes of 64
 * rows); mb: the gathered tokens [rows, k] (128-byte boxes of 16 rows,
 * 128-byte swizzle); p.a_scale / a_sld: their scales [k/128][a_sld]. The
 * SMALL kernel runs on a tile table of tiles of at most 16 rows (decode),
 * the large one on the 128-row table.
 */
template <int WF, bool DUAL, bool SMALL>
__global__ void __launch_bounds__(V6_THREADS, SMALL ? 2 : 1)
    qplug_cuda__moe_v6_kernel(const __grid_constant__ CUtensorMap ma0,
                              const __grid_constant__ CUtensorMap ma1,
                              const __grid_constant__ CUtensorMap mb,
                              const qplug_cuda__moe_gemm_args p)
{
    qplug_cuda__moe_pdl_enter();
    if (p.skip_if && *p.skip_if != 0)
        return;
    int tile = blockIdx.y;
    if (tile >= *p.ntiles)
        return;
    int nrows = p.tile_r1[tile] - p.tile_r0[tile];
    if (SMALL) {
        if (nrows <= 16)
            qplug_cuda__moe_v6_body<WF, DUAL, true, 16>(&ma0, &ma1, &mb, p);
        return;
    }
    if (nrows <= 16)
        qplug_cuda__moe_v6_body<WF, DUAL, false, 16>(&ma0, &ma1, &mb, p);
    else if (nrows <= 32)
        qplug_cuda__moe_v6_body<WF, DUAL, false, 32>(&ma0, &ma1, &mb, p);
    else if (nrows <= 64)
        qplug_cuda__moe_v6_body<WF, DUAL, false, 64>(&ma0, &ma1, &mb, p);
    else if (nrows <= 96)
        qplug_cuda__moe_v6_body<WF, DUAL, false, 96>(&ma0, &ma1, &mb, p);
    else
        qplug_cuda__moe_v6_body<WF, DUAL, false, 128>(&ma0, &ma1, &mb, p);
}

#endif
