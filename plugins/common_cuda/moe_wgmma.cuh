/* moe_wgmma.cuh - the Hopper grouped expert GEMM of the fused MoE (included
 * by moe.cu only, after its argument struct and format enums).
 *
 * One block computes 128 weight rows (64 per warpgroup) x up to 128 routed
 * rows of one expert's tile. The weights are the wgmma A operand (M side),
 * the routed tokens the B operand (N side), both K-major E4M3 tiles of
 * 128 rows x 128 bytes in shared memory with the 128-byte swizzle. k runs
 * in blocks of 128:
 *
 *   - every 128-block's tokens, token scales and raw weights (E4M3, or
 *     packed E2M1 with its E8M0 scale word) arrive with cp.async, 4 stages
 *     deep (measured on H200: 4 beats 6 for FP4 and 5 for FP8 by 4-5% at
 *     4096 tokens and 5% at 64, bench/results/h200_moe_v3.md);
 *   - the raw weights of the next block are decoded into one of two A
 *     buffers while the tensor cores run the current one;
 *   - the four m64nNk32 wgmmas of a 128-block sum into a scratch
 *     accumulator, which is then added to the result times weight scale x
 *     token scale (both are constant over a 128-block).
 *
 * MXFP4 weights are folded per row and 128-block: with emax the largest of
 * the block's four E8M0 exponents, group g's values e2m1 * 2^(e_g - 127) are
 * stored as the E4M3 values e2m1 * 2^(e_g - emax + 6) and the row's scale is
 * 2^(emax - 133). That is exact when every E4M3 result is a normal number,
 * i.e. when e_g >= emax - 11 for all four groups; qplug_cuda__moe_prepare
 * checks this once per weight set and the kernel is used only when it holds
 * (w->wgmma_ready). The same fold turns packed MXFP4 activations into E4M3 +
 * per-128 scales (qplug_cuda__moe_w4a4_unpack_kernel), which flags the
 * tokens it cannot fold exactly.
 *
 * NVFP4 weights (WF = MOE_F_NV) run on the F16 tensor cores instead: the
 * decode writes e2m1 * s16 * 2^-14 as F16 (exact, qplug_cuda__moe_wg_fp4_f16)
 * into two 64-k tiles per 128-block, the token tile is converted from E4M3
 * to F16 into a second double buffer, eight m64nNk16 wgmmas sum the block,
 * and the promotion scales by token scale x global x 2^14; 3 stages (the
 * F16 buffers take the room of the fourth; 2 stages measured 17% slower).
 *
 * The N of the wgmma follows the tile's row count (16, 32, 64, 96 or 128),
 * so a tile of 70 rows does not multiply 58 empty ones, and decode (a few
 * rows per expert) streams the weights with N = 16. */
#ifndef QPLUG_CUDA_MOE_WGMMA_CUH
#define QPLUG_CUDA_MOE_WGMMA_CUH

enum {
    WG_BN = 128,     /* routed rows per tile */
    WG_BMW = 128,    /* weight rows per block (two warpgroups of 64) */
    WG_BK = 128,     /* k per stage */
    WG_THREADS = 256,
    WG_TILE = 16384, /* bytes of one 128 x 128 E4M3 operand tile */
    WG_RS_MX = 80,   /* raw FP4 row stride: 64 bytes + 16 of padding (no bank conflicts) */
    WG_RS_FP8 = 144  /* raw FP8 row stride: 128 + 16 */
};

/* Stage counts; the macros exist so that bench builds can compare. */
#ifndef QPLUG_MOE_WG_STAGES_MX
#define QPLUG_MOE_WG_STAGES_MX 4
#endif
#ifndef QPLUG_MOE_WG_STAGES_FP8
#define QPLUG_MOE_WG_STAGES_FP8 4
#endif
/* NVFP4 doubles both decoded operand buffers (F16), so only 3 stages fit. */
#ifndef QPLUG_MOE_WG_STAGES_NV
#define QPLUG_MOE_WG_STAGES_NV 3
#endif
/* Shared-memory layout of one block, in bytes from the dynamic base. */
template <int WF> struct qplug_cuda__moe_wg_smem {
    static constexpr int S = WF == MOE_F_FP8 ? QPLUG_MOE_WG_STAGES_FP8
                             : WF == MOE_F_MX ? QPLUG_MOE_WG_STAGES_MX
                                              : QPLUG_MOE_WG_STAGES_NV;
    static constexpr int RS = WF == MOE_F_FP8 ? WG_RS_FP8 : WG_RS_MX;
    /* Bytes of one weight row's scales per 128-block (four E8M0 or eight
     * E4M3) and of one decoded operand buffer (one E4M3 tile, or two F16
     * tiles of 64 k each for NVFP4). */
    static constexpr int SCB = WF == MOE_F_NV ? 8 : 4;
    static constexpr int OPB = WF == MOE_F_NV ? 2 * WG_TILE : WG_TILE;
    static constexpr int B = 0;                            /* S token tiles */
    static constexpr int R = B + S * WG_TILE;              /* S raw weight tiles */
    static constexpr int WS = R + S * WG_BMW * RS;         /* S x 128 weight scale words */
    static constexpr int AS = WS + S * WG_BMW * SCB;       /* S x 128 token scales */
    static constexpr int A = (AS + S * WG_BN * 4 + 1023) / 1024 * 1024; /* 2 decoded weight buffers */
    static constexpr int BH = A + 2 * OPB;                 /* NVFP4: 2 F16 token buffers */
    static constexpr int ROW = BH + (WF == MOE_F_NV ? 2 * OPB : 0); /* 128 token row indices */
    static constexpr int BYTES = ROW + WG_BN * 8;
    static constexpr int LAUNCH = BYTES + 1024; /* room to align the base */
    static_assert(LAUNCH <= 227 * 1024, "wgmma MoE stages exceed the shared memory of a block");
    static_assert(A % 1024 == 0, "swizzled operand tiles must be 1024-byte aligned");
};

/*
 * Operand tiles (128 rows x 128 bytes of k, K-major). Default: the 128-byte
 * swizzle, row r's 16-byte chunk c at r * 128 + 16 * (c ^ (r & 7)), tiles
 * 1024-byte aligned; the descriptor has SBO = 1024 (next 8 rows), LBO
 * unused, and a k step of 32 bytes moves its start by 32 bytes.
 * QPLUG_MOE_WG_SWIZZLE=0 (bench builds) gives the layout without swizzle:
 * 8-row x 16-byte core matrices, chunk c of row r at (r / 8) * 1024 + c *
 * 128 + (r % 8) * 16, LBO = 128 (next chunk along k), SBO = 1024, a k step
 * 256 bytes further.
 */
#ifndef QPLUG_MOE_WG_SWIZZLE
#define QPLUG_MOE_WG_SWIZZLE 1
#endif
static __device__ __forceinline__ int qplug_cuda__moe_wg_off(int r, int c)
{
    if (QPLUG_MOE_WG_SWIZZLE)
        return r * 128 + ((c ^ (r & 7)) << 4);
    return (r >> 3) * 1024 + c * 128 + (r & 7) * 16;
}

/* Descriptor units (16 bytes) between the k steps of 32 bytes. */
enum { WG_KSTEP = QPLUG_MOE_WG_SWIZZLE ? 2 : 16 };

static __device__ __forceinline__ uint64_t qplug_cuda__moe_wg_desc(const void *p)
{
    uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    uint64_t d = (uint64_t)((a & 0x3ffffu) >> 4) | ((uint64_t)(1024 >> 4) << 32);
    if (QPLUG_MOE_WG_SWIZZLE)
        return d | (1ull << 16) | (1ull << 62);
    return d | ((uint64_t)(128 >> 4) << 16);
}

static __device__ __forceinline__ void qplug_cuda__moe_wg_cp16(void *dst, const void *src,
                                                               bool valid)
{
    uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
    int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(n)
                 : "memory");
}

static __device__ __forceinline__ void qplug_cuda__moe_wg_cp4(void *dst, const void *src,
                                                              bool valid)
{
    uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
    int n = valid ? 4 : 0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src), "r"(n)
                 : "memory");
}

static __device__ __forceinline__ void qplug_cuda__moe_wg_commit()
{
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

template <int N> static __device__ __forceinline__ void qplug_cuda__moe_wg_cpwait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/* Makes this thread's generic-proxy shared-memory writes visible to the
 * tensor cores (async proxy) once a barrier follows. */
static __device__ __forceinline__ void qplug_cuda__moe_wg_fence_async()
{
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

static __device__ __forceinline__ void qplug_cuda__moe_wg_fence()
{
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}

static __device__ __forceinline__ void qplug_cuda__moe_wg_commit_mma()
{
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

static __device__ __forceinline__ void qplug_cuda__moe_wg_mma_n16(float *d, uint64_t da, uint64_t db, int acc)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n16k32.f32.e4m3.e4m3 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7"
                 "}, %8, %9, p, 1, 1;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
                 : "l"(da), "l"(db), "r"(acc));
}

static __device__ __forceinline__ void qplug_cuda__moe_wg_mma_n32(float *d, uint64_t da, uint64_t db, int acc)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n32k32.f32.e4m3.e4m3 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
                 "}, %16, %17, p, 1, 1;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
                 : "l"(da), "l"(db), "r"(acc));
}

static __device__ __forceinline__ void qplug_cuda__moe_wg_mma_n64(float *d, uint64_t da, uint64_t db, int acc)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
                 "}, %32, %33, p, 1, 1;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
                   "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                   "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "l"(da), "l"(db), "r"(acc));
}

static __device__ __forceinline__ void qplug_cuda__moe_wg_mma_n96(float *d, uint64_t da, uint64_t db, int acc)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %50, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n96k32.f32.e4m3.e4m3 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
                 "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47"
                 "}, %48, %49, p, 1, 1;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
                   "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                   "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
                   "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
                   "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47])
                 : "l"(da), "l"(db), "r"(acc));
}

static __device__ __forceinline__ void qplug_cuda__moe_wg_mma_n128(float *d, uint64_t da, uint64_t db, int acc)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
                 "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
                 "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
                 "}, %64, %65, p, 1, 1;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
                   "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                   "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
                   "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
                   "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
                   "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
                   "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "l"(da), "l"(db), "r"(acc));
}

/* Wait for this thread's wgmma groups; the accumulators are operands so
 * that no read of them is moved above the wait. */
static __device__ __forceinline__ void qplug_cuda__moe_wg_wait8(float *d)
{
    asm volatile("wgmma.wait_group.sync.aligned 0;\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
                 :
                 : "memory");
}

static __device__ __forceinline__ void qplug_cuda__moe_wg_wait16(float *d)
{
    asm volatile("wgmma.wait_group.sync.aligned 0;\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
                 :
                 : "memory");
}

static __device__ __forceinline__ void qplug_cuda__moe_wg_wait32(float *d)
{
    asm volatile("wgmma.wait_group.sync.aligned 0;\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
                   "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                   "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 :
                 : "memory");
}

static __device__ __forceinline__ void qplug_cuda__moe_wg_wait48(float *d)
{
    asm volatile("wgmma.wait_group.sync.aligned 0;\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
                   "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                   "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
                   "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
                   "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47])
                 :
                 : "memory");
}

static __device__ __forceinline__ void qplug_cuda__moe_wg_wait64(float *d)
{
    asm volatile("wgmma.wait_group.sync.aligned 0;\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
                   "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                   "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
                   "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
                   "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
                   "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
                   "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 :
                 : "memory");
}

/* The F16 wgmma (m64nNk16, fp32 accumulation) of the NVFP4 path, both
 * operands K-major in shared memory (transpose flags 0). */
static __device__ __forceinline__ void qplug_cuda__moe_wg_mmah_n16(float *d, uint64_t da, uint64_t db, int acc)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n16k16.f32.f16.f16 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7"
                 "}, %8, %9, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
                 : "l"(da), "l"(db), "r"(acc));
}

static __device__ __forceinline__ void qplug_cuda__moe_wg_mmah_n32(float *d, uint64_t da, uint64_t db, int acc)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
                 "}, %16, %17, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
                 : "l"(da), "l"(db), "r"(acc));
}

static __device__ __forceinline__ void qplug_cuda__moe_wg_mmah_n64(float *d, uint64_t da, uint64_t db, int acc)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
                 "}, %32, %33, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
                   "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                   "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "l"(da), "l"(db), "r"(acc));
}

static __device__ __forceinline__ void qplug_cuda__moe_wg_mmah_n96(float *d, uint64_t da, uint64_t db, int acc)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %50, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n96k16.f32.f16.f16 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
                 "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47"
                 "}, %48, %49, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
                   "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                   "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
                   "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
                   "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47])
                 : "l"(da), "l"(db), "r"(acc));
}

static __device__ __forceinline__ void qplug_cuda__moe_wg_mmah_n128(float *d, uint64_t da, uint64_t db, int acc)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
                 "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
                 "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
                 "}, %64, %65, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
                   "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                   "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
                   "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
                   "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
                   "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
                   "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "l"(da), "l"(db), "r"(acc));
}

/* One wgmma of N = NC token columns on the FP8 (F16 false: m64nNk32 E4M3)
 * or the F16 (m64nNk16) tensor cores, both operands in shared memory; the
 * one place that maps NC to an instruction, for every kernel. */
template <bool F16, int NC>
static __device__ __forceinline__ void qplug_cuda__moe_wg_mma(float *d, uint64_t da, uint64_t db,
                                                              int acc)
{
    static_assert(NC == 16 || NC == 32 || NC == 64 || NC == 96 || NC == 128,
                  "moe wgmma: N must be 16, 32, 64, 96 or 128");
    if (NC == 16)
        F16 ? qplug_cuda__moe_wg_mmah_n16(d, da, db, acc) : qplug_cuda__moe_wg_mma_n16(d, da, db, acc);
    else if (NC == 32)
        F16 ? qplug_cuda__moe_wg_mmah_n32(d, da, db, acc) : qplug_cuda__moe_wg_mma_n32(d, da, db, acc);
    else if (NC == 64)
        F16 ? qplug_cuda__moe_wg_mmah_n64(d, da, db, acc) : qplug_cuda__moe_wg_mma_n64(d, da, db, acc);
    else if (NC == 96)
        F16 ? qplug_cuda__moe_wg_mmah_n96(d, da, db, acc) : qplug_cuda__moe_wg_mma_n96(d, da, db, acc);
    else
        F16 ? qplug_cuda__moe_wg_mmah_n128(d, da, db, acc)
            : qplug_cuda__moe_wg_mma_n128(d, da, db, acc);
}

/* Waits for all of this thread's wgmma groups, the NC / 2 accumulators
 * of N = NC as operands. */
template <int NC> static __device__ __forceinline__ void qplug_cuda__moe_wg_wait(float *d)
{
    if (NC == 16)
        qplug_cuda__moe_wg_wait8(d);
    else if (NC == 32)
        qplug_cuda__moe_wg_wait16(d);
    else if (NC == 64)
        qplug_cuda__moe_wg_wait32(d);
    else if (NC == 96)
        qplug_cuda__moe_wg_wait48(d);
    else
        qplug_cuda__moe_wg_wait64(d);
}

/* The E4M3 bytes of the eight E2M1 magnitudes times 2^(tp - 6), tp in
 * [1, 12] (every result a normal number): code 1 (0.5) has exponent field
 * tp, codes 2..7 have (e + tp) with their mantissa bit at bit 2. */
static __device__ __forceinline__ void qplug_cuda__moe_wg_fp4_table(int tp, unsigned *lo,
                                                                    unsigned *hi)
{
    unsigned b = (unsigned)tp << 3;
    *lo = 0x0c080000u + b * 0x01010100u;
    *hi = 0x1c181410u + b * 0x01010101u;
}

/* Eight E2M1 codes (element i in nibble i) to eight E4M3 bytes through the
 * table: the magnitudes select table bytes (prmt), the signs move from bit
 * 3 of each nibble to bit 7 of each byte. */
static __device__ __forceinline__ void qplug_cuda__moe_wg_fp4_decode(unsigned w, unsigned lo,
                                                                     unsigned hi, unsigned *o0,
                                                                     unsigned *o1)
{
    unsigned mag = w & 0x77777777u, a = w << 4;
    unsigned s0 = __byte_perm(a, w, 0x5140) & 0x80808080u;
    unsigned s1 = __byte_perm(a, w, 0x7362) & 0x80808080u;
    *o0 = __byte_perm(lo, hi, mag & 0xffffu) | s0;
    *o1 = __byte_perm(lo, hi, mag >> 16) | s1;
}

/* The largest of the four E8M0 bytes of a word. */
static __device__ __forceinline__ int qplug_cuda__moe_wg_emax(unsigned w)
{
    int a = max((int)(w & 0xffu), (int)((w >> 8) & 0xffu));
    int b = max((int)((w >> 16) & 0xffu), (int)(w >> 24));
    return max(a, b);
}

/* One E4M3 byte as an F16 pair (exact: every E4M3 value, subnormals
 * included, is an F16 value). */
static __device__ __forceinline__ __half2 qplug_cuda__moe_wg_e4m3_h2(unsigned b)
{
    __half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)b, __NV_E4M3);
    __half2_raw r;
    r.x = h.x;
    r.y = h.x;
    return __half2(r);
}

/* Four E4M3 bytes to four F16 values (two words, byte order kept). */
static __device__ __forceinline__ void qplug_cuda__moe_wg_e4m3x4_f16(unsigned w, unsigned *o)
{
    __half2_raw lo = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(w & 0xffffu), __NV_E4M3);
    __half2_raw hi = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(w >> 16), __NV_E4M3);
    o[0] = (unsigned)lo.x | ((unsigned)lo.y << 16);
    o[1] = (unsigned)hi.x | ((unsigned)hi.y << 16);
}

/*
 * Eight E2M1 codes (element i in nibble i) to eight F16 values e2m1 * sc *
 * 2^-14, as four F16 pairs. The F16 with high byte s << 7 | (c & 7) << 1
 * and low byte 0 has exponent field e and mantissa bit m of the code, so
 * it is exactly e2m1 * 2^-14 (code 1, 0.5, becomes the subnormal 2^-15).
 * The product with the E4M3 scale sc is exact in F16 without flushing:
 * e2m1 * s16 has at most 6 significant bits (2 + 4), its last bit is at
 * least 2^-1 * 2^-9 (the E4M3 subnormal step), so with 2^-14 every value
 * is a multiple of 2^-24 (the F16 subnormal step) and at most 6 * 448 *
 * 2^-14 < 0.17.
 */
static __device__ __forceinline__ void qplug_cuda__moe_wg_fp4_f16(unsigned w, __half2 sc,
                                                                  unsigned *o)
{
    unsigned lo = w & 0x0f0f0f0fu, hi = (w >> 4) & 0x0f0f0f0fu;
    unsigned hl = ((lo << 1) & 0x0e0e0e0eu) | ((lo << 4) & 0x80808080u);
    unsigned hh = ((hi << 1) & 0x0e0e0e0eu) | ((hi << 4) & 0x80808080u);
#pragma unroll
    for (int j = 0; j < 4; j++) {
        unsigned sel = (unsigned)(((4 + j) << 12) | (j << 4));
        unsigned pr = __byte_perm(hl, hh, sel) & 0xff00ff00u;
        __half2_raw r;
        r.x = (unsigned short)(pr & 0xffffu);
        r.y = (unsigned short)(pr >> 16);
        __half2 prod = __hmul2(__half2(r), sc);
        __half2_raw q = prod;
        o[j] = (unsigned)q.x | ((unsigned)q.y << 16);
    }
}

/*
 * The end of a block of the wgmma kernels (v3, v4, v6), run by the 256
 * threads of the two warpgroups that hold the accumulators (named barrier
 * 1; in v3 that is the whole block): acc holds rows wg * 64 + m0 (+ 8) and
 * token columns 8j + c0 (+ 1) of the block, in the wgmma D layout. DUAL:
 * warpgroup 1 (u = w3 rows) hands its accumulators to warpgroup 0 (g = w1
 * rows) through u (NC * 256 bytes of shared memory no longer in use;
 * thread-major, so conflict-free), which writes silu(min(g, L)) * clamp(u,
 * -L, L); otherwise both write their rows. out is F32 [rows, n].
 */
template <bool DUAL, int NC>
static __device__ __forceinline__ void qplug_cuda__moe_wg_epilogue(
    const qplug_cuda__moe_gemm_args &p, const float *acc, float *u, int wg, int wt, int r0,
    int nrows, int64_t n0, int m0, int c0)
{
    int64_t n = p.n;
    if (DUAL) {
        asm volatile("bar.sync 1, 256;\n" ::: "memory");
        if (wg == 1) {
#pragma unroll
            for (int i = 0; i < NC / 2; i++)
                u[i * 128 + wt] = acc[i];
        }
        asm volatile("bar.sync 1, 256;\n" ::: "memory");
        if (wg == 1)
            return;
        float lim = p.limit;
#pragma unroll
        for (int i = 0; i < NC / 2; i++) {
            int col = (i >> 2) * 8 + c0 + (i & 1);
            if (col >= nrows)
                continue;
            int row = m0 + ((i & 2) ? 8 : 0);
            float g = acc[i], uu = u[i * 128 + wt];
            if (lim > 0.0f) {
                g = fminf(g, lim);
                uu = fminf(fmaxf(uu, -lim), lim);
            }
            p.out[(int64_t)(r0 + col) * n + n0 + row] = g / (1.0f + expf(-g)) * uu;
        }
    } else {
#pragma unroll
        for (int i = 0; i < NC / 2; i++) {
            int col = (i >> 2) * 8 + c0 + (i & 1);
            if (col >= nrows)
                continue;
            int row = wg * 64 + m0 + ((i & 2) ? 8 : 0);
            p.out[(int64_t)(r0 + col) * n + n0 + row] = acc[i];
        }
    }
}

/* The body of qplug_cuda__moe_wg_kernel (documented there) for one wgmma
 * N = NC of 16, 32, 64, 96 or 128 token rows. */
template <int WF, bool DUAL, int NC>
static __device__ __forceinline__ void qplug_cuda__moe_wg_body(const qplug_cuda__moe_gemm_args &p)
{
    typedef qplug_cuda__moe_wg_smem<WF> L;
    extern __shared__ __align__(1024) uint8_t qplug_cuda__moe_wg_sm[];
    /* The swizzle pattern follows the absolute shared address, so the
     * tiles start at a 1024-byte boundary whatever the base (LAUNCH has
     * the slack). */
    uint32_t base = (uint32_t)__cvta_generic_to_shared(qplug_cuda__moe_wg_sm);
    uint8_t *sm = qplug_cuda__moe_wg_sm + ((1024u - (base & 1023u)) & 1023u);

    int tile = blockIdx.y;
    int e = p.tile_e[tile], r0 = p.tile_r0[tile], r1 = p.tile_r1[tile];
    int nrows = r1 - r0;
    int64_t n = p.n, k = p.k;
    int64_t n0 = (int64_t)blockIdx.x * (DUAL ? 64 : 128);
    int tid = threadIdx.x, wg = tid >> 7, wt = tid & 127;
    int64_t *arow = reinterpret_cast<int64_t *>(sm + L::ROW);
    if (tid < WG_BN) {
        int r = r0 + tid;
        arow[tid] = r < r1 ? (p.perm_tok ? (int64_t)p.perm_tok[r] : (int64_t)r) : -1;
    }

    /* Weight rows 0..63 of the block (h = 0) and 64..127 (h = 1): their
     * first row and scales. */
    const uint8_t *wrow_base[2];
    const uint8_t *srow_base[2];
#pragma unroll
    for (int h = 0; h < 2; h++) {
        int mi = DUAL ? h : 0;
        int64_t row0 = n0 + (DUAL ? 0 : 64 * h);
        if (WF == MOE_F_FP8) {
            wrow_base[h] = p.w[mi] + (int64_t)e * n * k + row0 * k;
            srow_base[h] = p.ws[mi] + ((int64_t)e * (n / 128) + row0 / 128) * (k / 128) * 4;
        } else {
            wrow_base[h] = p.w[mi] + (int64_t)e * n * (k / 2) + row0 * (k / 2);
            srow_base[h] = p.ws[mi] + ((int64_t)e * n + row0) * (k / (WF == MOE_F_NV ? 16 : 32));
        }
    }
    /* Selects instead of a run-time index (which would put the array in
     * local memory). */
    auto wbase = [&](int h) { return h ? wrow_base[1] : wrow_base[0]; };
    auto sbase = [&](int h) { return h ? srow_base[1] : srow_base[0]; };
    __syncthreads();

    /* cp.async of k-block kb into stage slot s. */
    auto issue = [&](int64_t kb, int s) {
        uint8_t *bt = sm + L::B + s * WG_TILE;
        /* Only the NC token rows the wgmma reads. */
#pragma unroll
        for (int i = 0; i < (NC * 8 + WG_THREADS - 1) / WG_THREADS; i++) {
            int q = tid + i * WG_THREADS, r = q >> 3, c = q & 7;
            if (r >= NC)
                break;
            int64_t ar = arow[r];
            const uint8_t *src = p.a + (ar >= 0 ? ar : 0) * p.a_ld + kb * 128 + c * 16;
            qplug_cuda__moe_wg_cp16(bt + qplug_cuda__moe_wg_off(r, c), src, ar >= 0);
        }
        uint8_t *rt = sm + L::R + s * WG_BMW * L::RS;
        if (WF == MOE_F_FP8) {
#pragma unroll
            for (int i = 0; i < 4; i++) {
                int q = tid + i * WG_THREADS, r = q >> 3, c = q & 7;
                const uint8_t *src = wbase(r >> 6) + (int64_t)(r & 63) * k + kb * 128 + c * 16;
                qplug_cuda__moe_wg_cp16(rt + r * L::RS + c * 16, src, true);
            }
        } else {
#pragma unroll
            for (int i = 0; i < 2; i++) {
                int q = tid + i * WG_THREADS, r = q >> 2, c = q & 3;
                const uint8_t *src =
                    wbase(r >> 6) + (int64_t)(r & 63) * (k / 2) + kb * 64 + c * 16;
                qplug_cuda__moe_wg_cp16(rt + r * L::RS + c * 16, src, true);
            }
        }
        if (tid < NC) {
            int64_t ar = arow[tid];
            const float *src = p.a_scale + kb * p.a_sld + (ar >= 0 ? ar : 0);
            qplug_cuda__moe_wg_cp4(sm + L::AS + (s * WG_BN + tid) * 4, src, ar >= 0);
        }
        if (WF == MOE_F_MX && tid >= WG_BN) {
            int r = tid - WG_BN;
            const uint8_t *src = sbase(r >> 6) + (int64_t)(r & 63) * (k / 32) + kb * 4;
            qplug_cuda__moe_wg_cp4(sm + L::WS + (s * WG_BMW + r) * 4, src, true);
        }
        if (WF == MOE_F_NV && tid >= WG_BN) {
            /* Eight E4M3 scales per row: two 4-byte copies (the scale rows
             * are only known to be 4-byte aligned). */
            int r = tid - WG_BN;
            const uint8_t *src = sbase(r >> 6) + (int64_t)(r & 63) * (k / 16) + kb * 8;
            uint8_t *dst = sm + L::WS + (s * WG_BMW + r) * 8;
            qplug_cuda__moe_wg_cp4(dst, src, true);
            qplug_cuda__moe_wg_cp4(dst + 4, src + 4, true);
        }
    };

    /* Raw weights of slot s into decoded tile buffer ab: thread = (row,
     * half of the 128 k). */
    auto decode = [&](int s, int ab) {
        int r = tid & 127, half = tid >> 7;
        const uint8_t *rt = sm + L::R + s * WG_BMW * L::RS + r * L::RS;
        uint8_t *at = sm + L::A + ab * L::OPB;
        if (WF == MOE_F_NV) {
            /* This thread's 64 k of the row are the F16 tile `half`: group
             * gi's 16 values e2m1 * s16 * 2^-14 (exact, see the header). */
            unsigned sw =
                *reinterpret_cast<const unsigned *>(sm + L::WS + (s * WG_BMW + r) * 8 + 4 * half);
            uint4 v0 = *reinterpret_cast<const uint4 *>(rt + half * 32);
            uint4 v1 = *reinterpret_cast<const uint4 *>(rt + half * 32 + 16);
            unsigned v[8] = {v0.x, v0.y, v0.z, v0.w, v1.x, v1.y, v1.z, v1.w};
            uint8_t *ht = at + half * WG_TILE;
#pragma unroll
            for (int gi = 0; gi < 4; gi++) {
                __half2 sc = qplug_cuda__moe_wg_e4m3_h2((sw >> (8 * gi)) & 0xffu);
#pragma unroll
                for (int wi = 0; wi < 2; wi++) {
                    unsigned o[4];
                    qplug_cuda__moe_wg_fp4_f16(v[2 * gi + wi], sc, o);
                    *reinterpret_cast<uint4 *>(ht + qplug_cuda__moe_wg_off(r, 2 * gi + wi)) =
                        make_uint4(o[0], o[1], o[2], o[3]);
                }
            }
            /* The tokens' E4M3 tile of slot s to F16 (exact). */
            const uint8_t *bt = sm + L::B + s * WG_TILE;
            uint8_t *bh = sm + L::BH + ab * L::OPB;
#pragma unroll
            for (int i = 0; i < (NC * 8 + WG_THREADS - 1) / WG_THREADS; i++) {
                int q = tid + i * WG_THREADS, rr = q >> 3, c = q & 7;
                if (rr >= NC)
                    break;
                uint4 b = *reinterpret_cast<const uint4 *>(bt + qplug_cuda__moe_wg_off(rr, c));
                unsigned h[8];
                qplug_cuda__moe_wg_e4m3x4_f16(b.x, &h[0]);
                qplug_cuda__moe_wg_e4m3x4_f16(b.y, &h[2]);
                qplug_cuda__moe_wg_e4m3x4_f16(b.z, &h[4]);
                qplug_cuda__moe_wg_e4m3x4_f16(b.w, &h[6]);
                uint8_t *dt = bh + (c >> 2) * WG_TILE;
                *reinterpret_cast<uint4 *>(dt + qplug_cuda__moe_wg_off(rr, (2 * c) & 7)) =
                    make_uint4(h[0], h[1], h[2], h[3]);
                *reinterpret_cast<uint4 *>(dt + qplug_cuda__moe_wg_off(rr, (2 * c + 1) & 7)) =
                    make_uint4(h[4], h[5], h[6], h[7]);
            }
        } else if (WF == MOE_F_FP8) {
#pragma unroll
            for (int c = 4 * half; c < 4 * half + 4; c++)
                *reinterpret_cast<uint4 *>(at + qplug_cuda__moe_wg_off(r, c)) =
                    *reinterpret_cast<const uint4 *>(rt + c * 16);
        } else {
            unsigned sw = *reinterpret_cast<const unsigned *>(sm + L::WS + (s * WG_BMW + r) * 4);
            int emax = qplug_cuda__moe_wg_emax(sw);
#pragma unroll
            for (int gi = 0; gi < 2; gi++) {
                int g = 2 * half + gi;
                int tp = (int)((sw >> (8 * g)) & 0xffu) - emax + 12;
                tp = max(1, tp);
                unsigned lo, hi;
                qplug_cuda__moe_wg_fp4_table(tp, &lo, &hi);
                uint4 v = *reinterpret_cast<const uint4 *>(rt + g * 16);
                unsigned o[8];
                qplug_cuda__moe_wg_fp4_decode(v.x, lo, hi, &o[0], &o[1]);
                qplug_cuda__moe_wg_fp4_decode(v.y, lo, hi, &o[2], &o[3]);
                qplug_cuda__moe_wg_fp4_decode(v.z, lo, hi, &o[4], &o[5]);
                qplug_cuda__moe_wg_fp4_decode(v.w, lo, hi, &o[6], &o[7]);
                *reinterpret_cast<uint4 *>(at + qplug_cuda__moe_wg_off(r, 2 * g)) =
                    make_uint4(o[0], o[1], o[2], o[3]);
                *reinterpret_cast<uint4 *>(at + qplug_cuda__moe_wg_off(r, 2 * g + 1)) =
                    make_uint4(o[4], o[5], o[6], o[7]);
            }
        }
    };

    /* This thread's accumulator elements: rows m0, m0 + 8 of its
     * warpgroup's 64, columns (tokens) 8j + c0, +1. */
    int warp_in = wt >> 5, lane = tid & 31;
    int m0 = warp_in * 16 + (lane >> 2), c0 = (lane & 3) * 2;
    float acc[NC / 2], tmp[NC / 2];
#pragma unroll
    for (int i = 0; i < NC / 2; i++)
        acc[i] = tmp[i] = 0.0f;
    /* NVFP4: this warpgroup's per-expert global times 2^14 (undoing the
     * 2^-14 of the F16 weights; exact, a power of two). */
    float wglob = 0.0f;
    if (WF == MOE_F_NV)
        wglob = __ldg(p.wg[DUAL ? wg : 0] + e) * 16384.0f;

    int64_t nk = k / WG_BK;
#pragma unroll
    for (int s = 0; s < L::S - 1; s++) {
        if (s < nk)
            issue(s, s);
        qplug_cuda__moe_wg_commit();
    }
    qplug_cuda__moe_wg_cpwait<L::S - 2>();
    __syncthreads();
    decode(0, 0);
    qplug_cuda__moe_wg_fence_async();
    __syncthreads();

    for (int64_t kb = 0; kb < nk; kb++) {
        int s = (int)(kb % L::S), ab = (int)(kb & 1);
        const uint8_t *at = sm + L::A + ab * L::OPB + wg * 8192;
        const uint8_t *bt = sm + L::B + s * WG_TILE;
        uint64_t da = qplug_cuda__moe_wg_desc(at), db = qplug_cuda__moe_wg_desc(bt);
        qplug_cuda__moe_wg_fence();
        if (WF == MOE_F_NV) {
            /* Two F16 tiles of 64 k, four k16 steps of 32 bytes each. */
            const uint8_t *bh = sm + L::BH + ab * L::OPB;
#pragma unroll
            for (int kh = 0; kh < 2; kh++) {
                uint64_t ha = qplug_cuda__moe_wg_desc(at + kh * WG_TILE);
                uint64_t hb = qplug_cuda__moe_wg_desc(bh + kh * WG_TILE);
#pragma unroll
                for (int ks = 0; ks < 4; ks++)
                    qplug_cuda__moe_wg_mma<true, NC>(tmp, ha + WG_KSTEP * ks, hb + WG_KSTEP * ks,
                                                     kh | ks);
            }
        }
#pragma unroll
        for (int ks = 0; ks < 4 && WF != MOE_F_NV; ks++)
            qplug_cuda__moe_wg_mma<false, NC>(tmp, da + WG_KSTEP * ks, db + WG_KSTEP * ks, ks);
        qplug_cuda__moe_wg_commit_mma();

        if (kb + L::S - 1 < nk)
            issue(kb + L::S - 1, (int)((kb + L::S - 1) % L::S));
        qplug_cuda__moe_wg_commit();
        if (kb + 1 < nk) {
            qplug_cuda__moe_wg_cpwait<L::S - 2>();
            __syncthreads();
            decode((int)((kb + 1) % L::S), ab ^ 1);
            qplug_cuda__moe_wg_fence_async();
        }
        qplug_cuda__moe_wg_wait<NC>(tmp);

        /* Scales of this k-block: weight rows m0, m0 + 8 and the tokens. */
        float w0, w1;
        if (WF == MOE_F_NV) {
            w0 = w1 = wglob;
        } else if (WF == MOE_F_FP8) {
            w0 = w1 = __ldg(reinterpret_cast<const float *>(sbase(wg)) + kb);
        } else {
            const unsigned *ws = reinterpret_cast<const unsigned *>(sm + L::WS) + s * WG_BMW;
            w0 = qplug_cuda__e8m0_dev((unsigned)qplug_cuda__moe_wg_emax(ws[wg * 64 + m0])) *
                 0.015625f;
            w1 = qplug_cuda__e8m0_dev((unsigned)qplug_cuda__moe_wg_emax(ws[wg * 64 + m0 + 8])) *
                 0.015625f;
        }
        const float *as = reinterpret_cast<const float *>(sm + L::AS) + s * WG_BN;
#pragma unroll
        for (int j = 0; j < NC / 8; j++) {
            {
                float2 t = *reinterpret_cast<const float2 *>(as + j * 8 + c0);
                acc[4 * j + 0] = fmaf(tmp[4 * j + 0] * t.x, w0, acc[4 * j + 0]);
                acc[4 * j + 1] = fmaf(tmp[4 * j + 1] * t.y, w0, acc[4 * j + 1]);
                acc[4 * j + 2] = fmaf(tmp[4 * j + 2] * t.x, w1, acc[4 * j + 2]);
                acc[4 * j + 3] = fmaf(tmp[4 * j + 3] * t.y, w1, acc[4 * j + 3]);
            }
        }
        __syncthreads();
    }
    qplug_cuda__moe_wg_cpwait<0>();

    qplug_cuda__moe_wg_epilogue<DUAL, NC>(p, acc, reinterpret_cast<float *>(sm + L::B), wg, wt,
                                          r0, nrows, n0, m0, c0);
}

/*
 * The grouped GEMM on wgmma: grid (n / 64 for the gate/up pair, n / 128
 * otherwise; tile count bound), 256 threads, WF = MOE_F_FP8, MOE_F_MX or
 * MOE_F_NV weights, FP8 activations (a, a_scale in the act_quant layout;
 * the W4A4 path unpacks its MXFP4 activations to that layout). DUAL: the
 * block's 64 rows n0.. of w1 (warpgroup 0) and of w3 (warpgroup 1), then
 * out = silu(min(g, L)) * clamp(u, -L, L); otherwise 128 rows of w[0].
 * out is F32 [rows, n]. The wgmma N is picked per tile (one instantiation
 * of the body each, so no wgmma sequence mixes register sets).
 */
template <int WF, bool DUAL>
__global__ void __launch_bounds__(WG_THREADS, 1)
    qplug_cuda__moe_wg_kernel(const qplug_cuda__moe_gemm_args p)
{
    if (p.skip_if && *p.skip_if != 0)
        return;
    int tile = blockIdx.y;
    if (tile >= *p.ntiles)
        return;
    int nrows = p.tile_r1[tile] - p.tile_r0[tile];
    if (nrows <= 16)
        qplug_cuda__moe_wg_body<WF, DUAL, 16>(p);
    else if (nrows <= 32)
        qplug_cuda__moe_wg_body<WF, DUAL, 32>(p);
    else if (nrows <= 64)
        qplug_cuda__moe_wg_body<WF, DUAL, 64>(p);
    else if (nrows <= 96)
        qplug_cuda__moe_wg_body<WF, DUAL, 96>(p);
    else
        qplug_cuda__moe_wg_body<WF, DUAL, 128>(p);
}

#endif
