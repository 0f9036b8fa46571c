/* (c), (d) Decode GEMV kernels for small m (1..16) on FP8 block and FP4
 * weights. The weight bytes dominate the traffic and each is read exactly
 * once, so the kernel is built to keep many 16-byte streaming loads in
 * flight on every multiprocessor, whatever the shape:
 *
 * - A warp owns one or two tiles of 16 weight rows (RT; the mma's M side;
 *   the tokens are the mma's N side, 8 per tile, NT tiles) and one
 *   contiguous slice of the 128-blocks of k. With two row tiles the
 *   activation fragments serve twice the weight bytes. It issues the loads
 *   of U k-blocks at once (independent, unrolled) before it multiplies any
 *   of them.
 * - The k-blocks of a block's rows are split over its W warps (4, 8 or 16)
 *   and,
 *   for small n only, over the C blocks of a thread-block cluster (C up to
 *   8, chosen per launch from n, k and the multiprocessor count; cluster
 *   launches cost block-scheduling speed, so wide layers get none). The
 *   partial sums meet in distributed shared memory and each block of the
 *   cluster adds its share of the outputs in rank order and writes them once
 *   in BF16. So the result is deterministic and needs neither a workspace
 *   nor atomics.
 *
 * The products run on the tensor cores (mma.sync m16n8k32 on E4M3 for FP8,
 * m16n8k16 on F16 for FP4; wide layers use blocks of 4 warps): m = 16
 * on fp32 CUDA cores would be arithmetic-bound at about three times the byte
 * floor. The dot product over k is invariant under any permutation of k
 * applied to weights and activations alike. The FP8 kernel uses that to give
 * each lane 16 contiguous bytes of a row (16t..16t+15 of each 64-run) and
 * the same 16 bytes of each token, which are exactly its A and B fragments
 * of two mmas. The FP4 kernels read a repacked weight (qplug_cuda__fp4_repack)
 * whose 16-byte run per lane holds its fragments of the four 32-wide slots of
 * a 128-block, so two F16 mmas cover exactly one MXFP4 group; the FP4 codes
 * are decoded exactly to F16 in registers, with the NVFP4 scale folded in
 * (see qplug_cuda__gemv_fp4_step). */
#include <cooperative_groups.h>
#include <string.h>

#include "internal.cuh"

namespace cg = cooperative_groups;

/* Blocks of 4 warps serve wide layers: when n/16 row tiles are at least
 * QPLUG_GEMV_WIDE times the multiprocessor count, each block already has
 * enough rows, and 4-warp blocks pack more row tiles per multiprocessor and
 * finish with a shorter tail (measured on the H200: Pro wq_b fp8 at m = 1
 * 66% -> 85% of copy). Other layers use 8 warps, which split k twice as
 * finely. A compile-time tunable for the bench (0: always 4 warps). */
#ifndef QPLUG_GEMV_WIDE
#define QPLUG_GEMV_WIDE 3
#endif

enum {
    QPLUG_GEMV_MAX_CLUSTER = 8, /* the portable cluster size limit */
    QPLUG_GEMV_FMT_FP8 = 0,
    QPLUG_GEMV_FMT_MX = 1,
    QPLUG_GEMV_FMT_NV = 2
};

/* The arguments of one launch; `post` multiplies the fp32 result (FP4 only:
 * 2^14 undoes the decode's offset, times the NVFP4 global scale). The
 * activations are either quantized (xq E4M3 with row stride ldx, x_scale
 * [groups*k/128][m]) or, for the fused kernels, BF16 x with row stride ldx
 * that the kernel quantizes itself. Group z of the grid (blockIdx.z) reads
 * the weights at w + z * w_gstride bytes and their scales at z * s_gstride
 * elements (floats for FP8, bytes for FP4), x or xq from column z * k (and
 * the activation scales from z * (k/128) * m) and writes y from column z * n
 * (row stride ldy). */
struct qplug_cuda__gemv_args {
    const uint8_t *w;
    const void *w_scale;
    const uint8_t *xq;
    const float *x_scale;
    const __nv_bfloat16 *x;
    int64_t ldx, ldy, w_gstride, s_gstride;
    int ue8m0;
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

/* One FP8 k-block: a[rt] holds rows g, g+8 (r) of row tile rt and halves
 * h of this lane, xw its activation words (qplug_cuda__gemv_acts) and sa
 * the scales of its two output columns per token tile. The RT row tiles
 * share one 128-row block of weight scales (sw) and the activation words. */
template <int NT, int RT>
static __device__ __forceinline__ void qplug_cuda__gemv_fp8_step(float tot[RT][NT][4],
                                                                 const unsigned a[RT][2][2][4],
                                                                 const unsigned xw[NT][8],
                                                                 const float sa[NT][2], float sw)
{
#pragma unroll
    for (int rt = 0; rt < RT; rt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
            for (int h = 0; h < 2; h++)
#pragma unroll
                for (int i = 0; i < 2; i++)
                    qplug_cuda__mma_e4m3(c, a[rt][0][h][2 * i], a[rt][1][h][2 * i],
                                         a[rt][0][h][2 * i + 1], a[rt][1][h][2 * i + 1],
                                         xw[nt][4 * h + 2 * i], xw[nt][4 * h + 2 * i + 1]);
            tot[rt][nt][0] += c[0] * sw * sa[nt][0];
            tot[rt][nt][1] += c[1] * sw * sa[nt][1];
            tot[rt][nt][2] += c[2] * sw * sa[nt][0];
            tot[rt][nt][3] += c[3] * sw * sa[nt][1];
        }
}

/* The element offset, within a k-block, of activation word i (4 E4M3
 * codes) of lane t: the FP8 kernel's lane holds bytes 16t..16t+15 of each
 * 64-byte half, the FP4 kernel's bytes 4t..4t+3 and 16+4t..16+4t+3 of each
 * 32-slot (the orders of qplug_cuda__gemv_fp8_step and _fp4_step). The four
 * lanes t = 0..3 of a row g together hold all 128. */
template <int F>
static __device__ __forceinline__ int qplug_cuda__gemv_xoff(int i, int t)
{
    if (F == QPLUG_GEMV_FMT_FP8)
        return 64 * (i >> 2) + 4 * (i & 3) + 16 * t;
    return 32 * (i >> 1) + 16 * (i & 1) + 4 * t;
}

/* v / s rounded to nearest even, as the division in act_quant's F32 path
 * computes it, without a division: with inv = 1/s correctly rounded, q0 =
 * v * inv is within one ulp of v / s, the residual v - q0 * s is exact in an
 * FMA, and q0 + r * inv is then the correctly rounded quotient (Markstein's
 * correction theorem). Underflow can break that only where |v / s| < 2^-100,
 * far below the E4M3 range, whose code is then 0 with v's sign either way.
 * For s = +Inf (finite is false, inv = 0) v / s is q0 itself (a zero of v's
 * sign, or NaN for an infinite v), and the correction, NaN there, is not
 * taken; s = NaN gives NaN through q0. No branch: an inlined IEEE division
 * per value (its slow path) made the F32 kernels several times slower. */
static __device__ __forceinline__ float qplug_cuda__div_rn(float v, float s, float inv,
                                                           bool finite)
{
    float q0 = v * inv;
    float q = __fmaf_rn(__fmaf_rn(-q0, s, v), inv, q0);
    return finite ? q : q0;
}

/* The activation scale of a 128-group with maximum amax (already floored
 * at 1e-4) by act_quant's rule: UE8M0 s = 2^ceil(log2(amax / 448)), else
 * s = amax / 448; inv = 1/s and fin = s is finite (for qplug_cuda__div_rn). */
static __device__ __forceinline__ void qplug_cuda__gemv_qscale(float amax, int ue8m0, float *s,
                                                               float *inv, bool *fin)
{
    if (ue8m0) {
        *s = qplug_cuda__pow2_scale(amax);
        *inv = 1.0f / *s;
        *fin = true;
    } else {
        *s = amax / 448.0f;
        *fin = fabsf(*s) < INFINITY;
        *inv = __frcp_rn(*s);
    }
}

/* Four BF16 values (two per word, low half first) quantized by act_quant's
 * rule with the group's scale s (inv = 1/s; UE8M0 scales divide exactly by
 * multiplying, F32 ones through qplug_cuda__div_rn) into one word of four
 * E4M3 codes, round to nearest even, saturating. */
static __device__ __forceinline__ unsigned qplug_cuda__gemv_qword(unsigned b0, unsigned b1,
                                                                  int ue8m0, float s, float inv,
                                                                  bool fin)
{
    unsigned word = 0;
    const unsigned b[2] = {b0, b1};
#pragma unroll
    for (int e = 0; e < 2; e++) {
        float2 f = make_float2(__uint_as_float(b[e] << 16), __uint_as_float(b[e] & 0xffff0000u));
        if (ue8m0) {
            f.x *= inv;
            f.y *= inv;
        } else {
            f.x = qplug_cuda__div_rn(f.x, s, inv, fin);
            f.y = qplug_cuda__div_rn(f.y, s, inv, fin);
        }
        word |= (unsigned)__nv_cvt_float2_to_fp8x2(f, __NV_SATFINITE, __NV_E4M3) << (16 * e);
    }
    return word;
}

/* The largest m whose fused quantization is shared by the whole warp
 * (qplug_cuda__gemv_quant_coop); above it each lane quantizes its own 32
 * values of its token. At m = 1 the shared form was 0.1-3 us faster per
 * call on H200 (GEMV v6 run 2); its cost grows with m (about 50
 * instructions per token, with a shuffle chain per token) while the
 * per-lane cost does not up to m = 8, so the two meet near m = 2 by the
 * fitted costs below (measured at m = 1 and 16 only). A tunable. */
#ifndef QPLUG_GEMV_COOP_M
#define QPLUG_GEMV_COOP_M 1
#endif

/* The fused quantization for m <= QPLUG_GEMV_COOP_M (one token tile): with
 * one lane per (token, 32-slot) pair most lanes of a warp would quantize
 * padding, so instead the warp takes the valid tokens one at a time, each
 * lane quantizing 4 consecutive values (one coalesced 8-byte load), reduces
 * max |x| over the warp, and shuffles each E4M3 word to the lanes of row
 * g = token that hold it as a fragment. About 50 instructions per token and
 * k-block against about 180 for the per-lane quantization. */
template <int F>
static __device__ __forceinline__ void qplug_cuda__gemv_quant_coop(unsigned xw[8], float sa[2],
                                                                   const qplug_cuda__gemv_args &p,
                                                                   int kb, int g, int t)
{
    int lane = g * 4 + t;
#pragma unroll
    for (int i = 0; i < 8; i++)
        xw[i] = 0;
    sa[0] = 0.0f;
    sa[1] = 0.0f;
    for (int j = 0; j < p.m; j++) {
        uint2 v = __ldg(reinterpret_cast<const uint2 *>(p.x + (int64_t)j * p.ldx +
                                                        (int64_t)kb * 128 + 4 * lane));
        unsigned rb[2] = {v.x, v.y};
        unsigned amax_bits = __float_as_uint(1e-4f);
#pragma unroll
        for (int e = 0; e < 2; e++) {
            unsigned a = rb[e] & 0x7fff7fffu;
            amax_bits = max(amax_bits, max(a << 16, a & 0xffff0000u));
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
            amax_bits = max(amax_bits, __shfl_xor_sync(0xffffffffu, amax_bits, o));
        float amax = __uint_as_float(amax_bits);
        float s, inv;
        bool fin;
        qplug_cuda__gemv_qscale(amax, p.ue8m0, &s, &inv, &fin);
        unsigned word = qplug_cuda__gemv_qword(rb[0], rb[1], p.ue8m0, s, inv, fin);
        /* Word i of lane t holds elements xoff(i, t)..+3, made by lane
         * xoff(i, t) / 4; only the lanes of row g == j keep it. */
#pragma unroll
        for (int i = 0; i < 8; i++) {
            unsigned w = __shfl_sync(0xffffffffu, word, qplug_cuda__gemv_xoff<F>(i, t) / 4);
            if (g == j)
                xw[i] = w;
        }
        if (2 * t == j)
            sa[0] = s;
        if (2 * t + 1 == j)
            sa[1] = s;
    }
}

/* The fused half of qplug_cuda__gemv_acts. */
template <int NT, int F>
static __device__ __forceinline__ void qplug_cuda__gemv_quant(unsigned xw[NT][8], float sa[NT][2],
                                                              const qplug_cuda__gemv_args &p,
                                                              const __nv_bfloat16 *const xbrow[NT],
                                                              const bool xvalid[NT], int kb, int t)
{
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        /* rb[2i], rb[2i+1]: the four BF16 values of word i. */
        unsigned rb[16];
        const __nv_bfloat16 *xb = xbrow[nt] + (int64_t)kb * 128;
        if (F == QPLUG_GEMV_FMT_FP8) {
#pragma unroll
            for (int h = 0; h < 4; h++) {
                uint4 v = make_uint4(0, 0, 0, 0);
                if (xvalid[nt])
                    v = __ldg(reinterpret_cast<const uint4 *>(xb + 64 * (h >> 1) + 8 * (h & 1)));
                qplug_cuda__u4(&rb[4 * h], v);
            }
        } else {
#pragma unroll
            for (int i = 0; i < 8; i++) {
                uint2 v = make_uint2(0, 0);
                if (xvalid[nt])
                    v = __ldg(reinterpret_cast<const uint2 *>(xb + qplug_cuda__gemv_xoff<F>(i, 0)));
                rb[2 * i] = v.x;
                rb[2 * i + 1] = v.y;
            }
        }
        unsigned amax_bits = __float_as_uint(1e-4f);
#pragma unroll
        for (int i = 0; i < 16; i++) {
            unsigned a = rb[i] & 0x7fff7fffu;
            amax_bits = max(amax_bits, max(a << 16, a & 0xffff0000u));
        }
        amax_bits = max(amax_bits, __shfl_xor_sync(0xffffffffu, amax_bits, 1));
        amax_bits = max(amax_bits, __shfl_xor_sync(0xffffffffu, amax_bits, 2));
        float amax = __uint_as_float(amax_bits);
        float s, inv;
        bool fin;
        qplug_cuda__gemv_qscale(amax, p.ue8m0, &s, &inv, &fin);
#pragma unroll
        for (int i = 0; i < 8; i++)
            xw[nt][i] = qplug_cuda__gemv_qword(rb[2 * i], rb[2 * i + 1], p.ue8m0, s, inv, fin);
        sa[nt][0] = __shfl_sync(0xffffffffu, s, 8 * t);
        sa[nt][1] = __shfl_sync(0xffffffffu, s, 8 * t + 4);
    }
}

/*
 * This lane's activation words of k-block kb for each token tile (xw: the
 * E4M3 codes, 4 per word, in the order of format F) and the activation
 * scales of its two output columns (sa; 0 for tokens past m when read from
 * x_scale). Unfused (FQ false): loaded from xq / x_scale, which
 * qplug_cuda__act_quant_fp8 wrote. Fused: the lane loads its 32 BF16 values
 * of token g's k-block, the four lanes of row g reduce the maximum of |x|,
 * and each lane quantizes its values by act_quant's rule (amax =
 * max(|x|, 1e-4); UE8M0 s = 2^ceil(log2(amax/448)) and x * (1/s), exact; F32
 * s = amax / 448 and x / s correctly rounded; E4M3 round to nearest even,
 * saturating), so the codes and scales equal act_quant's bit for bit. The
 * scales of columns 2t, 2t+1 then come from lanes 8t and 8t + 4.
 */
template <int NT, int F, bool FQ>
static __device__ __forceinline__ void qplug_cuda__gemv_acts(
    unsigned xw[NT][8], float sa[NT][2], const qplug_cuda__gemv_args &p,
    const uint8_t *const xrow[NT], const __nv_bfloat16 *const xbrow[NT], const bool xvalid[NT],
    int kb, int t)
{
    if constexpr (!FQ) {
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            if (F == QPLUG_GEMV_FMT_FP8) {
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    uint4 v = make_uint4(0, 0, 0, 0);
                    if (xvalid[nt])
                        v = __ldg(reinterpret_cast<const uint4 *>(xrow[nt] + (int64_t)kb * 128 +
                                                                  h * 64));
                    qplug_cuda__u4(&xw[nt][4 * h], v);
                }
            } else {
#pragma unroll
                for (int i = 0; i < 8; i++) {
                    xw[nt][i] = 0;
                    if (xvalid[nt])
                        xw[nt][i] = __ldg(reinterpret_cast<const unsigned *>(
                            xrow[nt] + (int64_t)kb * 128 + 32 * (i >> 1) + 16 * (i & 1)));
                }
            }
        }
        qplug_cuda__gemv_sa<NT>(sa, p.x_scale, kb, p.m, t);
    } else {
        if (NT == 1 && p.m <= QPLUG_GEMV_COOP_M)
            qplug_cuda__gemv_quant_coop<F>(xw[0], sa[0], p, kb, (int)(threadIdx.x & 31) >> 2, t);
        else
            qplug_cuda__gemv_quant<NT, F>(xw, sa, p, xbrow, xvalid, kb, t);
    }
}


/* Eight packed E2M1 codes (nibble j of w is element j) to four F16x2
 * registers holding e2m1 * 2^-14 exactly: register j gets element j in its
 * low half and element j + 4 in its high half. An E2M1 value times 2^-14 is
 * an F16 whose low byte is zero and whose high byte is sign << 7 | (e1 e0 m)
 * << 1, so the decode builds those high bytes for the low and the high
 * nibbles of every byte (two bit-selects) and spreads them with byte
 * permutes. The pairing j, j + 4 keeps each register inside one NVFP4 group
 * per half (elements 0..3 and 4..7 of a lane's word come from the two
 * 16-groups of a 32-slot). */
static __device__ __forceinline__ void qplug_cuda__fp4x8_to_f16(unsigned w, unsigned r[4])
{
    unsigned sign = w & 0x88888888u;
    unsigned lo, hi;
    /* (a & c) | (b & ~c): lut 0xe4 with a = 0xf0, b = 0xcc, c = 0xaa. */
    asm("lop3.b32 %0, %1, %2, %3, 0xe4;" : "=r"(lo) : "r"(w << 1), "r"(sign << 4), "r"(0x0e0e0e0eu));
    asm("lop3.b32 %0, %1, %2, %3, 0xe4;" : "=r"(hi) : "r"(w >> 3), "r"(sign), "r"(0x0e0e0e0eu));
    /* lo holds the high bytes of elements 0, 2, 4, 6 and hi those of 1, 3,
     * 5, 7; bytes 4..7 of the permute source are zero. */
    r[0] = __byte_perm(lo, 0u, 0x2404);
    r[1] = __byte_perm(hi, 0u, 0x2404);
    r[2] = __byte_perm(lo, 0u, 0x3414);
    r[3] = __byte_perm(hi, 0u, 0x3414);
}

/* Two E4M3 values (the low 16 bits of v) as an F16x2 (exact). */
static __device__ __forceinline__ unsigned qplug_cuda__e4m3x2_to_f16x2(unsigned v)
{
    __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(v & 0xffffu), __NV_E4M3);
    return (unsigned)h.x | ((unsigned)h.y << 16);
}

/* D += A . B on F16 inputs, fp32 accumulators: mma.sync m16n8k16, native on
 * sm_90 (the E4M3 m16n8k32 is emulated there through this one plus
 * conversions). */
static __device__ __forceinline__ void qplug_cuda__mma_f16(float c[4], unsigned a0, unsigned a1,
                                                           unsigned a2, unsigned a3, unsigned b0,
                                                           unsigned b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/* F16x2 product (exact here: see the NVFP4 fold below). */
static __device__ __forceinline__ unsigned qplug_cuda__hmul2(unsigned a, unsigned b)
{
    unsigned d;
    asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    return d;
}

/* The E8M0 value 2^(b-127) as a float, without branches (the shared
 * helper compiles to divergent branches in this loop): b << 23 is exact for
 * b = 1..254, and bit 22 turns b = 0 into the subnormal 2^-127 and b = 255
 * (+inf) into a NaN. */
static __device__ __forceinline__ float qplug_cuda__e8m0_sel(unsigned b)
{
    unsigned edge = (b == 0u || b == 255u) ? 0x00400000u : 0u;
    return __uint_as_float((b << 23) | edge);
}

/* Byte s of four E8M0 codes as the float 2^(b-127), exact for b = 1..254
 * only (b << 23 in place: one shift and one mask); the caller checks for
 * the codes 0 and 255 first (qplug_cuda__e8m0_edge). */
static __device__ __forceinline__ float qplug_cuda__e8m0_fast(unsigned w, int s)
{
    unsigned b = s < 3 ? w << (23 - 8 * s) : w >> 1;
    return __uint_as_float(b & 0x7f800000u);
}

/* Whether any byte of w is 0x00 or 0xff (an E8M0 code that
 * qplug_cuda__e8m0_fast gets wrong): a byte is constant exactly when its
 * bits 0..6 equal their upper neighbours, i.e. when its 7 low bits of
 * w ^ (w >> 1) are zero; a zero 7-bit byte borrows in the subtraction. */
static __device__ __forceinline__ unsigned qplug_cuda__e8m0_edge(unsigned w)
{
    unsigned z = (w ^ (w >> 1)) & 0x7f7f7f7fu;
    return (z - 0x01010101u) & 0x80808080u;
}

/* One FP4 k-block on the F16 tensor cores: a[rt] holds the repacked 16
 * bytes of rows g, g+8 (r) of row tile rt, sc[rt] their 4 (MXFP4) or 8
 * (NVFP4) scale bytes of the block. Word s of a row is this lane's part of
 * 32-slot s: elements 4t..4t+3 and 16+4t..16+4t+3 of the slot. The decode
 * pairs element j with j + 4 of the word, so one m16n8k16 takes the pairs
 * (0,4) and (1,5) and a second one (2,6) and (3,7); the activations are
 * paired the same way (a byte permute before the E4M3 -> F16 conversion),
 * which is all the dot product needs. The activation fragments of a slot
 * are converted once and serve all RT row tiles: with RT = 2 that
 * conversion is paid once per 32 rows instead of once per 16.
 * NVFP4 folds the per-16 E4M3 scale into the F16 weight: e2m1 * s * 2^-14
 * has at most 5 significant bits, lies below 0.17 and is a multiple of
 * 2^-24, so it is an F16 exactly and the whole k-block runs in one
 * accumulator. MXFP4 scales (E8M0, out of F16 range) multiply the fp32
 * result of each slot. */
template <int NT, int RT, bool NV, bool EX>
static __device__ __forceinline__ void qplug_cuda__gemv_fp4_step(float tot[RT][NT][4],
                                                                 const unsigned a[RT][2][4],
                                                                 const uint2 sc[RT][2],
                                                                 const unsigned xw[NT][8],
                                                                 const float sa[NT][2])
{
    float acc[RT][NT][4];
#pragma unroll
    for (int rt = 0; rt < RT; rt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++)
                acc[rt][nt][i] = 0.0f;
#pragma unroll
    for (int s = 0; s < 4; s++) {
        unsigned b[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            unsigned lo = __byte_perm(xw[nt][2 * s], xw[nt][2 * s + 1], 0x5140);
            unsigned hi = __byte_perm(xw[nt][2 * s], xw[nt][2 * s + 1], 0x7362);
            b[nt][0] = qplug_cuda__e4m3x2_to_f16x2(lo);
            b[nt][1] = qplug_cuda__e4m3x2_to_f16x2(lo >> 16);
            b[nt][2] = qplug_cuda__e4m3x2_to_f16x2(hi);
            b[nt][3] = qplug_cuda__e4m3x2_to_f16x2(hi >> 16);
        }
#pragma unroll
        for (int rt = 0; rt < RT; rt++) {
            unsigned r0[4], r1[4];
            qplug_cuda__fp4x8_to_f16(a[rt][0][s], r0);
            qplug_cuda__fp4x8_to_f16(a[rt][1][s], r1);
            if (NV) {
                /* Bytes 2s and 2s+1 of the row's 8 scale bytes: the groups
                 * of the low and the high halves. */
                unsigned w0 = s < 2 ? sc[rt][0].x : sc[rt][0].y;
                unsigned w1 = s < 2 ? sc[rt][1].x : sc[rt][1].y;
                int sh = (s & 1) * 16;
                unsigned s0 = qplug_cuda__e4m3x2_to_f16x2(w0 >> sh);
                unsigned s1 = qplug_cuda__e4m3x2_to_f16x2(w1 >> sh);
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    r0[j] = qplug_cuda__hmul2(r0[j], s0);
                    r1[j] = qplug_cuda__hmul2(r1[j], s1);
                }
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    qplug_cuda__mma_f16(acc[rt][nt], r0[0], r1[0], r0[1], r1[1], b[nt][0],
                                        b[nt][1]);
                    qplug_cuda__mma_f16(acc[rt][nt], r0[2], r1[2], r0[3], r1[3], b[nt][2],
                                        b[nt][3]);
                }
            } else {
                float s0, s1;
                if (EX) {
                    s0 = qplug_cuda__e8m0_sel((sc[rt][0].x >> (8 * s)) & 0xffu);
                    s1 = qplug_cuda__e8m0_sel((sc[rt][1].x >> (8 * s)) & 0xffu);
                } else {
                    s0 = qplug_cuda__e8m0_fast(sc[rt][0].x, s);
                    s1 = qplug_cuda__e8m0_fast(sc[rt][1].x, s);
                }
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                    qplug_cuda__mma_f16(c, r0[0], r1[0], r0[1], r1[1], b[nt][0], b[nt][1]);
                    qplug_cuda__mma_f16(c, r0[2], r1[2], r0[3], r1[3], b[nt][2], b[nt][3]);
                    acc[rt][nt][0] += c[0] * s0;
                    acc[rt][nt][1] += c[1] * s0;
                    acc[rt][nt][2] += c[2] * s1;
                    acc[rt][nt][3] += c[3] * s1;
                }
            }
        }
    }
#pragma unroll
    for (int rt = 0; rt < RT; rt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            tot[rt][nt][0] += acc[rt][nt][0] * sa[nt][0];
            tot[rt][nt][1] += acc[rt][nt][1] * sa[nt][1];
            tot[rt][nt][2] += acc[rt][nt][2] * sa[nt][0];
            tot[rt][nt][3] += acc[rt][nt][3] * sa[nt][1];
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

/* Two row tiles per warp (RT = 2, 32 rows): the activation words, their
 * fused quantization and, for FP4, their F16 conversion then serve twice
 * the weight bytes. The k-blocks in flight per warp for RT = 2 (FP8 with
 * one token tile; with two it is 1), and where RT = 2 is used, for n % 32
 * == 0 only: 0 never, 1 on wide launches, 2 on every launch (see
 * qplug_cuda__gemv_geom). Compile-time tunables for the bench; FP8 and FP4
 * separately. */
#ifndef QPLUG_GEMV_U_FP8_RT2
#define QPLUG_GEMV_U_FP8_RT2 1
#endif
#ifndef QPLUG_GEMV_U_FP4_RT2
#define QPLUG_GEMV_U_FP4_RT2 2
#endif
/* The same for two token tiles (m > 8), where U = 2 spills at 128
 * registers. */
#ifndef QPLUG_GEMV_U_FP4_RT2_NT2
#define QPLUG_GEMV_U_FP4_RT2_NT2 1
#endif
#ifndef QPLUG_GEMV_RT2_FP8
#define QPLUG_GEMV_RT2_FP8 2
#endif
#ifndef QPLUG_GEMV_RT2_FP4
#define QPLUG_GEMV_RT2_FP4 2
#endif
/* Wide launches whose 32-row blocks of 4 warps would fill less than 90% of
 * the warp slots: 8-warp blocks of two row tiles (1) or one row tile per
 * warp as in v6 (0). A tunable. */
#ifndef QPLUG_GEMV_RT2_THIN
#define QPLUG_GEMV_RT2_THIN 1
#endif
/* 16-warp blocks for two row tiles per warp without a cluster (1), or 8-warp
 * blocks there too (0). A tunable. */
#ifndef QPLUG_GEMV_W16
#define QPLUG_GEMV_W16 1
#endif

/* Programmatic dependent launch (PDL): the kernel lets its dependents
 * launch at once and waits for the previous kernel of the stream
 * (griddepcontrol.wait) before its first global load, so every read of an
 * earlier kernel's output and every write follow that kernel's completion.
 * The launch asks for PDL only where it measured faster (see
 * qplug_cuda__gemv_pdl). Compile-time tunables for the bench: 0 never, and
 * QPLUG_GEMV_PDL_CLUSTER 1 also for cluster launches at m <= 8. */
#ifndef QPLUG_GEMV_PDL
#define QPLUG_GEMV_PDL 1
#endif
#ifndef QPLUG_GEMV_PDL_CLUSTER
#define QPLUG_GEMV_PDL_CLUSTER 0
#endif

/* At most 128 registers (16 warps per multiprocessor at least): fewer
 * resident warps leave too few loads in flight. FQ: the fused kernel, which
 * reads BF16 x and quantizes it itself (qplug_cuda__gemv_acts). */
template <int NT, int F, bool CL, int W, bool FQ, int RT>
__global__ void __launch_bounds__(W * 32, 16 / W)
    qplug_cuda__gemv_kernel(qplug_cuda__gemv_args p)
{
    constexpr int U = F == QPLUG_GEMV_FMT_FP8 ? (RT == 1 ? QPLUG_GEMV_U_FP8
                                                 : NT == 1 ? QPLUG_GEMV_U_FP8_RT2
                                                           : 1)
                                              : RT == 1 ? QPLUG_GEMV_U_FP4
                                              : NT == 1 ? QPLUG_GEMV_U_FP4_RT2
                                                        : QPLUG_GEMV_U_FP4_RT2_NT2;
    constexpr bool NV = F == QPLUG_GEMV_FMT_NV;
    constexpr int R = 16 * RT; /* rows per block */
    __shared__ float red[W][R][NT * 8];
    __shared__ float part[R * NT * 8];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    int64_t n0 = (int64_t)blockIdx.x * R, k = p.k;
    int m = p.m;
    int kbn = (int)(k / 128);
    /* This block's group: its weights, scales, activation and output
     * columns. */
    int64_t grp = blockIdx.z;
    p.w += grp * p.w_gstride;
    p.w_scale = F == QPLUG_GEMV_FMT_FP8
                    ? (const void *)((const float *)p.w_scale + grp * p.s_gstride)
                    : (const void *)((const uint8_t *)p.w_scale + grp * p.s_gstride);
    p.y += grp * p.n;
    if (FQ)
        p.x += grp * k;
    else
        p.x_scale += grp * kbn * m;
    /* This warp's contiguous slice of the row tile's k-blocks. */
    int slices = (int)gridDim.y * W;
    int slice = (int)blockIdx.y * W + warp;
    int kb0 = (int)((int64_t)kbn * slice / slices);
    int kb1 = (int)((int64_t)kbn * (slice + 1) / slices);

    const uint8_t *xrow[NT];
    const __nv_bfloat16 *xbrow[NT];
    bool xvalid[NT];
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        int j = nt * 8 + g;
        xvalid[nt] = j < m;
        int64_t jr = xvalid[nt] ? j : 0;
        if (FQ) {
            xrow[nt] = NULL;
            xbrow[nt] = p.x + jr * p.ldx + qplug_cuda__gemv_xoff<F>(0, t);
        } else {
            xbrow[nt] = NULL;
            xrow[nt] = p.xq + jr * p.ldx + grp * k + (F == QPLUG_GEMV_FMT_FP8 ? 16 * t : 4 * t);
        }
    }
    float tot[RT][NT][4];
#pragma unroll
    for (int rt = 0; rt < RT; rt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++)
                tot[rt][nt][i] = 0.0f;

#if QPLUG_GEMV_PDL > 0
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif

    if (F == QPLUG_GEMV_FMT_FP8) {
        /* The RT row tiles lie in one 128-row block of scales (R divides
         * 128). */
        const uint8_t *wrow[RT][2];
#pragma unroll
        for (int rt = 0; rt < RT; rt++)
#pragma unroll
            for (int r = 0; r < 2; r++)
                wrow[rt][r] = p.w + (n0 + 16 * rt + g + 8 * r) * k + 16 * t;
        const float *wscale = (const float *)p.w_scale + (n0 / 128) * kbn;
        for (int kb = kb0; kb < kb1; kb += U) {
            unsigned a[U][RT][2][2][4];
            float sw[U];
#pragma unroll
            for (int u = 0; u < U; u++) {
                bool in = kb + u < kb1;
#pragma unroll
                for (int rt = 0; rt < RT; rt++)
#pragma unroll
                    for (int r = 0; r < 2; r++)
#pragma unroll
                        for (int h = 0; h < 2; h++) {
                            uint4 v = make_uint4(0, 0, 0, 0);
                            if (in)
                                v = qplug_cuda__ld_stream(wrow[rt][r] + (int64_t)(kb + u) * 128 +
                                                          h * 64);
                            qplug_cuda__u4(a[u][rt][r][h], v);
                        }
                sw[u] = in ? __ldg(wscale + kb + u) : 0.0f;
            }
#pragma unroll
            for (int u = 0; u < U; u++)
                if (kb + u < kb1) {
                    unsigned xw[NT][8];
                    float sa[NT][2];
                    qplug_cuda__gemv_acts<NT, F, FQ>(xw, sa, p, xrow, xbrow, xvalid, kb + u, t);
                    qplug_cuda__gemv_fp8_step<NT, RT>(tot, a[u], xw, sa, sw[u]);
                }
        }
    } else {
        const int sb = NV ? 8 : 4; /* scale bytes per row and 128-block */
        const uint8_t *wrow[RT][2], *srow[RT][2];
#pragma unroll
        for (int rt = 0; rt < RT; rt++)
#pragma unroll
            for (int r = 0; r < 2; r++) {
                int64_t row = n0 + 16 * rt + g + 8 * r;
                wrow[rt][r] = p.w + row * (k / 2) + 16 * t;
                srow[rt][r] = (const uint8_t *)p.w_scale + row * kbn * sb;
            }
        for (int kb = kb0; kb < kb1; kb += U) {
            unsigned a[U][RT][2][4];
            uint2 sc[U][RT][2];
#pragma unroll
            for (int u = 0; u < U; u++) {
                bool in = kb + u < kb1;
#pragma unroll
                for (int rt = 0; rt < RT; rt++)
#pragma unroll
                    for (int r = 0; r < 2; r++) {
                        uint4 v = make_uint4(0, 0, 0, 0);
                        uint2 s = make_uint2(0, 0);
                        if (in) {
                            v = qplug_cuda__ld_stream(wrow[rt][r] + (int64_t)(kb + u) * 64);
                            if (NV)
                                s = __ldg(reinterpret_cast<const uint2 *>(srow[rt][r] +
                                                                          (kb + u) * 8));
                            else
                                s.x = __ldg(reinterpret_cast<const unsigned *>(srow[rt][r] +
                                                                               (kb + u) * 4));
                        }
                        qplug_cuda__u4(a[u][rt][r], v);
                        sc[u][rt][r] = s;
                    }
            }
#pragma unroll
            for (int u = 0; u < U; u++)
                if (kb + u < kb1) {
                    unsigned xw[NT][8];
                    float sa[NT][2];
                    qplug_cuda__gemv_acts<NT, F, FQ>(xw, sa, p, xrow, xbrow, xvalid, kb + u, t);
                    /* MXFP4 with one token tile converts its scales with two
                     * instructions unless a code 0 or 255 is in the warp's
                     * k-block (uniform branch); with two token tiles the two
                     * paths together spill, so that one keeps the exact
                     * conversion. */
                    unsigned edge = NT == 1 ? 0u : 1u;
                    if (!NV && NT == 1) {
#pragma unroll
                        for (int rt = 0; rt < RT; rt++)
#pragma unroll
                            for (int r = 0; r < 2; r++)
                                edge |= qplug_cuda__e8m0_edge(sc[u][rt][r].x);
                    }
                    if (NV || (NT == 1 && !__any_sync(0xffffffffu, edge != 0)))
                        qplug_cuda__gemv_fp4_step<NT, RT, NV, false>(tot, a[u], sc[u], xw, sa);
                    else
                        qplug_cuda__gemv_fp4_step<NT, RT, NV, true>(tot, a[u], sc[u], xw, sa);
                }
        }
#pragma unroll
        for (int rt = 0; rt < RT; rt++)
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int i = 0; i < 4; i++)
                    tot[rt][nt][i] *= p.post;
    }

    /* Each warp parks its 16 x NT*8 partial tile in shared memory and the
     * block adds its warps' tiles in warp order. Without a cluster that sum
     * is the output. In a cluster, the barrier makes every block's sum
     * visible to all; block r then adds the sums of outputs r, r + C, ... in
     * rank order (deterministic), reading the other blocks' shared memory,
     * and a second barrier keeps that memory alive until it has been read. */
#pragma unroll
    for (int rt = 0; rt < RT; rt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            red[warp][16 * rt + g][nt * 8 + 2 * t] = tot[rt][nt][0];
            red[warp][16 * rt + g][nt * 8 + 2 * t + 1] = tot[rt][nt][1];
            red[warp][16 * rt + g + 8][nt * 8 + 2 * t] = tot[rt][nt][2];
            red[warp][16 * rt + g + 8][nt * 8 + 2 * t + 1] = tot[rt][nt][3];
        }
    __syncthreads();
    for (int idx = threadIdx.x; idx < R * m; idx += blockDim.x) {
        int row = idx % R, tok = idx / R;
        float s = 0.0f;
#pragma unroll
        for (int w = 0; w < W; w++)
            s += red[w][row][tok];
        if (!CL)
            p.y[(int64_t)tok * p.ldy + n0 + row] = __float2bfloat16_rn(s);
        else
            part[idx] = s;
    }
    if (CL) {
        cg::cluster_group cluster = cg::this_cluster();
        cluster.sync();
        int ranks = (int)cluster.num_blocks(), me = (int)cluster.block_rank();
        for (int idx = me + ranks * (int)threadIdx.x; idx < R * m;
             idx += ranks * (int)blockDim.x) {
            float v[QPLUG_GEMV_MAX_CLUSTER];
#pragma unroll
            for (int r = 0; r < QPLUG_GEMV_MAX_CLUSTER; r++)
                v[r] = r < ranks ? cluster.map_shared_rank(part, r)[idx] : 0.0f;
            float s = 0.0f;
#pragma unroll
            for (int r = 0; r < QPLUG_GEMV_MAX_CLUSTER; r++)
                s += v[r];
            p.y[(int64_t)(idx / R) * p.ldy + n0 + idx % R] = __float2bfloat16_rn(s);
        }
        cluster.sync();
    }
}

/* The kernels read w and the FP8 xq with 16-byte loads, FP4 xq with 4-byte
 * loads, the scales as float (FP8), 4 E8M0 bytes (MXFP4) or 8 E4M3 bytes
 * (NVFP4) at a time and write y as BF16: a less aligned pointer would be a
 * misaligned-address fault on the device, which poisons the context, so it
 * is refused here instead. */
static qplug_status qplug_cuda__gemv_check(const char *what, int f, const void *w,
                                           const void *ws, const void *xq, const float *xs,
                                           int64_t m, int64_t n, int64_t k, const void *y,
                                           qplug_cuda__err *err)
{
    if (!w || !ws || !xq || !xs || !y)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT, "%s: NULL pointer", what);
    if (m < 1 || m > QPLUG_CUDA_GEMV_MAX_M || n < 16 || n % 16 != 0 || k < 128 || k % 128 != 0 ||
        n / 16 > 0x7fffffff || k / 128 > 0x7fffffff)
        return qplug_cuda__fail(err, QPLUG_ERR_SHAPE,
                                "%s: m=%lld n=%lld k=%lld needs 1 <= m <= %d, n %% 16 == 0, "
                                "k %% 128 == 0 and n/16, k/128 below 2^31",
                                what, (long long)m, (long long)n, (long long)k,
                                QPLUG_CUDA_GEMV_MAX_M);
    uintptr_t ws_al = f == QPLUG_GEMV_FMT_NV ? 8 : 4, xq_al = f == QPLUG_GEMV_FMT_FP8 ? 16 : 4;
    if ((uintptr_t)w % 16 != 0 || (uintptr_t)ws % ws_al != 0 || (uintptr_t)xq % xq_al != 0 ||
        (uintptr_t)xs % 4 != 0 || (uintptr_t)y % 2 != 0)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT,
                                "%s: alignment: w needs 16 bytes, w_scale %d, xq %d, x_scale 4, "
                                "y 2",
                                what, (int)ws_al, (int)xq_al);
    return QPLUG_OK;
}

/* The cluster size: enough blocks per block of rows (`tiles` of them) that
 * the launch holds about QPLUG_GEMV_SPREAD warps per multiprocessor, at
 * most 8, and no more than leaves each warp one k-block. */
static int qplug_cuda__gemv_cluster(int64_t tiles, int64_t k, int sms, int w)
{
    int64_t kbn = k / 128;
    int64_t warps = tiles * w;
    int64_t c = ((int64_t)sms * QPLUG_GEMV_SPREAD + warps - 1) / warps;
    int64_t most = kbn / w;
    if (c > QPLUG_GEMV_MAX_CLUSTER)
        c = QPLUG_GEMV_MAX_CLUSTER;
    if (c > most)
        c = most;
    return c < 1 ? 1 : (int)c;
}

/* Whether a launch asks for PDL. Measured on the H200 (NOTES.md, GEMV v5):
 * it gains 0.3-0.8 us per call on 8-warp launches without a cluster whose
 * grid fills the multiprocessors' block slots (two per multiprocessor), and
 * loses up to 2 us where the grid is smaller than the slots (Pro wq_a: 96
 * blocks) or on 4-warp and M = 16 cluster launches. The likely cause: the
 * early-launched blocks take the slots that are free at that moment, so a
 * small grid piles onto few multiprocessors instead of spreading. */
static bool qplug_cuda__gemv_pdl(int64_t blocks, int m, bool wide, int w, int c, int sms)
{
    if (QPLUG_GEMV_PDL == 0 || wide)
        return false;
    if (c > 1)
        return QPLUG_GEMV_PDL_CLUSTER != 0 && m <= 8;
    /* The grid fills at least 90% of the 16 warp slots per multiprocessor
     * (two blocks of 8 warps, or one of 16). */
    return blocks * w * 10 >= (int64_t)16 * sms * 9;
}

/* The kernel instance for a launch: token tiles, block shape, fused
 * quantization. */
template <int F, bool FQ, int RT>
static void *qplug_cuda__gemv_pick_rt(int m, int w, int c)
{
    if (m <= 8)
        return w == 4  ? (void *)qplug_cuda__gemv_kernel<1, F, false, 4, FQ, RT>
               : c > 1 ? (void *)qplug_cuda__gemv_kernel<1, F, true, 8, FQ, RT>
                       : (void *)qplug_cuda__gemv_kernel<1, F, false, 8, FQ, RT>;
    return w == 4  ? (void *)qplug_cuda__gemv_kernel<2, F, false, 4, FQ, RT>
           : c > 1 ? (void *)qplug_cuda__gemv_kernel<2, F, true, 8, FQ, RT>
                   : (void *)qplug_cuda__gemv_kernel<2, F, false, 8, FQ, RT>;
}

template <int F, bool FQ>
static void *qplug_cuda__gemv_pick(int m, int w, int c, int rt)
{
    if (w == 16)
        return m <= 8 ? (void *)qplug_cuda__gemv_kernel<1, F, false, 16, FQ, 2>
                      : (void *)qplug_cuda__gemv_kernel<2, F, false, 16, FQ, 2>;
    return rt == 2 ? qplug_cuda__gemv_pick_rt<F, FQ, 2>(m, w, c)
                   : qplug_cuda__gemv_pick_rt<F, FQ, 1>(m, w, c);
}

/* Launches `groups` groups of the GEMV in one grid (blockIdx.z = group).
 * The geometry (block size, cluster split, PDL) is chosen from the rows of
 * all groups together, since they share the multiprocessors. */
static cudaError_t qplug_cuda__sms(int *sms)
{
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e == cudaSuccess)
        e = cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, dev);
    return e;
}

/* The launch shape for `rows` rows of all groups (n per group) in format
 * f: *rt row tiles of 16 per warp, *w warps per block and clusters of *c
 * blocks; *wide marks the layers with 16-row tiles enough to fill every
 * multiprocessor several times over (QPLUG_GEMV_WIDE). With one row tile
 * (the v6 shapes): 4-warp blocks without a cluster for wide layers, else
 * 8-warp blocks in clusters. Two row tiles (QPLUG_GEMV_RT2_*, n % 32 == 0)
 * keep the warps per multiprocessor of that shape on half the row blocks,
 * measured on the H200 (bench/results/h200_gemv_v7_run1.md):
 * - wide: 4-warp blocks where they still fill 90% of the warp slots (Pro
 *   wq_b, wo_a), else 8-warp blocks (QPLUG_GEMV_RT2_THIN; 4-warp blocks
 *   there left half the slots empty: Pro wo_b fp8 32 -> 36 us);
 * - clusters: twice the blocks per cluster, at most one k-block per warp,
 *   where the one-tile cluster has 3 blocks or more (Flash and Pro wkv:
 *   -0.4 to -1.1 us), or at m <= 8; with clusters of 2 at m > 8 one row tile
 *   stays (Flash wq_a m=16: 7.2 us with one tile, 8.1 with two);
 * - no cluster: one 16-warp block per multiprocessor where the blocks fill
 *   90% of one wave (QPLUG_GEMV_W16; Flash wo_b, w13, w2); 8-warp blocks
 *   where they take more than one wave of 16-warp blocks (Pro w13: 192
 *   blocks) and 8-warp blocks in clusters where they fill less (Pro wq_a:
 *   48 16-warp blocks were 1.5-4.6 us slower than one tile per warp,
 *   8-warp blocks in clusters of 2 0.3-1.1 us faster at m = 1). */
static void qplug_cuda__gemv_geom(int64_t rows, int64_t n, int64_t k, int f, int m, int sms,
                                  bool *wide, int *w, int *c, int *rt)
{
    int mode = f == QPLUG_GEMV_FMT_FP8 ? QPLUG_GEMV_RT2_FP8 : QPLUG_GEMV_RT2_FP4;
    int64_t tiles = rows / 16, kbn = k / 128;
    *wide = tiles >= (int64_t)QPLUG_GEMV_WIDE * sms;
    *rt = 1;
    *w = *wide ? 4 : 8;
    *c = *wide ? 1 : qplug_cuda__gemv_cluster(tiles, k, sms, 8);
    if (n % 32 != 0 || mode == 0 || (mode == 1 && !*wide))
        return;
    int64_t blocks = tiles / 2;
    if (*wide) {
        if (blocks * 4 * 10 >= (int64_t)16 * sms * 9) {
            *rt = 2;
        } else if (QPLUG_GEMV_RT2_THIN) {
            *rt = 2;
            *w = 8;
        }
        return;
    }
    if (*c > 1) {
        if (*c < 3 && m > 8)
            return;
        *rt = 2;
        int64_t c2 = 2 * (int64_t)*c, most = kbn / 8;
        if (c2 > most)
            c2 = most;
        if (c2 > QPLUG_GEMV_MAX_CLUSTER)
            c2 = QPLUG_GEMV_MAX_CLUSTER;
        *c = c2 < 1 ? 1 : (int)c2;
        return;
    }
    *rt = 2;
    if (blocks > sms)
        return;
    if (!QPLUG_GEMV_W16)
        return;
    if (blocks * 10 < (int64_t)sms * 9)
        *c = qplug_cuda__gemv_cluster(blocks, k, sms, 8);
    /* Without a cluster, 16 warps per block keep the warps of the one-tile
     * shape. */
    if (*c == 1)
        *w = 16;
}

/* The largest quantization load per multiprocessor at which the fused
 * kernel runs. The load is row tiles (of 16 * RT rows) x k-blocks x the
 * quantization work per k-block, over the multiprocessors the grid
 * occupies; the work is 2 units per token for the warp-shared quantization
 * (m <= QPLUG_GEMV_COOP_M, limit QPLUG_GEMV_FUSE_MAX_COOP), 3 per token tile
 * for the per-lane one (6 for m > 8, limit QPLUG_GEMV_FUSE_MAX). Fitted to
 * the first H200 run of GEMV v7 (bench/results/h200_gemv_v7_run1.md, fused
 * and unfused timed separately, RT = 2 wherever n % 32 == 0): at m = 1
 * fusion wins up to a load of 372 (Pro wq_b); at m = 16 it wins up to 192
 * (Flash w13) and loses from 244 (Pro w2, 0.5-0.8 us for FP4, FP8 wins by
 * 0.8 there). At m = 1 the limit is 450 after the second run, where Pro
 * wo_b (434, 8-warp blocks) was faster fused for fp8 (31.5 against 34.2
 * us) and nvfp4 (33.4 against 34.3), slower for mxfp4 (36.5 against 36.0).
 * Above that, re-quantizing x in every block of rows costs more than the
 * act_quant launch it saves. F32 activation scales cost no more than UE8M0
 * here. Tunables. */
#ifndef QPLUG_GEMV_FUSE_MAX_COOP
#define QPLUG_GEMV_FUSE_MAX_COOP 450
#endif
#ifndef QPLUG_GEMV_FUSE_MAX
#define QPLUG_GEMV_FUSE_MAX 220
#endif

static bool qplug_cuda__gemv_fuses(int64_t rows, int64_t n, int64_t k, int f, int m, int sms)
{
    bool wide;
    int w, c, rt;
    qplug_cuda__gemv_geom(rows, n, k, f, m, sms, &wide, &w, &c, &rt);
    int64_t tiles = rows / (16 * rt), blocks = tiles * c;
    int64_t busy = blocks < sms ? blocks : sms;
    bool coop = m <= QPLUG_GEMV_COOP_M;
    int64_t units = coop ? 2 * m : m <= 8 ? 3 : 6;
    int64_t limit = coop ? QPLUG_GEMV_FUSE_MAX_COOP : QPLUG_GEMV_FUSE_MAX;
    return tiles * (k / 128) * units <= limit * busy;
}

template <int F>
static qplug_status qplug_cuda__gemv_launch(const qplug_cuda__gemv_args &a, int64_t groups,
                                            bool fused, void *stream, const char *what,
                                            qplug_cuda__err *err)
{
    int sms = 0;
    cudaError_t e = qplug_cuda__sms(&sms);
    if (e != cudaSuccess)
        return qplug_cuda__fail(err, QPLUG_ERR_DEVICE, "%s: no device: %s", what,
                                cudaGetErrorString(e));
    int64_t rows = a.n * groups;
    bool wide;
    int w, c, rt;
    qplug_cuda__gemv_geom(rows, a.n, a.k, F, a.m, sms, &wide, &w, &c, &rt);
    cudaLaunchAttribute attr[2];
    unsigned nattr = 0;
    if (c > 1) {
        attr[nattr].id = cudaLaunchAttributeClusterDimension;
        attr[nattr].val.clusterDim.x = 1;
        attr[nattr].val.clusterDim.y = (unsigned)c;
        attr[nattr].val.clusterDim.z = 1;
        nattr++;
    }
    if (qplug_cuda__gemv_pdl(rows / (16 * rt), a.m, wide, w, c, sms)) {
        /* The kernel's first global load follows griddepcontrol.wait, so it
         * may start while the previous kernel of the stream finishes. */
        attr[nattr].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[nattr].val.programmaticStreamSerializationAllowed = 1;
        nattr++;
    }
    cudaLaunchConfig_t cfg;
    cfg.gridDim = dim3((unsigned)(a.n / (16 * rt)), (unsigned)c, (unsigned)groups);
    cfg.blockDim = dim3((unsigned)w * 32);
    cfg.dynamicSmemBytes = 0;
    cfg.stream = (cudaStream_t)stream;
    cfg.attrs = attr;
    cfg.numAttrs = nattr;
    void *fn = fused ? qplug_cuda__gemv_pick<F, true>(a.m, w, c, rt)
                     : qplug_cuda__gemv_pick<F, false>(a.m, w, c, rt);
    void *args[1] = {(void *)&a};
    e = cudaLaunchKernelExC(&cfg, fn, args);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return qplug_cuda__fail(err, QPLUG_ERR_DEVICE, "%s: kernel launch failed: %s", what,
                                cudaGetErrorString(e));
    }
    return qplug_cuda__check_launch(err, what);
}

/* The arguments of an unfused single-group launch. */
static qplug_cuda__gemv_args qplug_cuda__gemv_plain(const void *w, const void *ws, const void *xq,
                                                    const float *xs, float post, int64_t m,
                                                    int64_t n, int64_t k, void *y)
{
    qplug_cuda__gemv_args a;
    memset(&a, 0, sizeof a);
    a.w = (const uint8_t *)w;
    a.w_scale = ws;
    a.xq = (const uint8_t *)xq;
    a.x_scale = xs;
    a.ldx = k;
    a.ldy = n;
    a.post = post;
    a.m = (int)m;
    a.n = n;
    a.k = k;
    a.y = (__nv_bfloat16 *)y;
    return a;
}

extern "C" qplug_status qplug_cuda__gemv_fp8(const void *w, const float *w_scale, const void *xq,
                                             const float *x_scale, int64_t m, int64_t n,
                                             int64_t k, void *y, void *stream,
                                             qplug_cuda__err *err)
{
    qplug_status s = qplug_cuda__gemv_check("gemv_fp8", QPLUG_GEMV_FMT_FP8, w, w_scale, xq,
                                            x_scale, m, n, k, y, err);
    if (s != QPLUG_OK)
        return s;
    qplug_cuda__gemv_args a = qplug_cuda__gemv_plain(w, w_scale, xq, x_scale, 1.0f, m, n, k, y);
    return qplug_cuda__gemv_launch<QPLUG_GEMV_FMT_FP8>(a, 1, false, stream, "gemv_fp8", err);
}

extern "C" qplug_status qplug_cuda__gemv_mxfp4(const uint8_t *w_packed, const uint8_t *w_scale,
                                               const void *xq, const float *x_scale, int64_t m,
                                               int64_t n, int64_t k, void *y, void *stream,
                                               qplug_cuda__err *err)
{
    qplug_status s =
        qplug_cuda__gemv_check("gemv_mxfp4", QPLUG_GEMV_FMT_MX, w_packed, w_scale, xq, x_scale,
                               m, n, k, y, err);
    if (s != QPLUG_OK)
        return s;
    qplug_cuda__gemv_args a =
        qplug_cuda__gemv_plain(w_packed, w_scale, xq, x_scale, 16384.0f, m, n, k, y);
    return qplug_cuda__gemv_launch<QPLUG_GEMV_FMT_MX>(a, 1, false, stream, "gemv_mxfp4", err);
}

extern "C" qplug_status qplug_cuda__gemv_nvfp4(const uint8_t *w_packed, const uint8_t *w_scale,
                                               float global_scale, const void *xq,
                                               const float *x_scale, int64_t m, int64_t n,
                                               int64_t k, void *y, void *stream,
                                               qplug_cuda__err *err)
{
    qplug_status s =
        qplug_cuda__gemv_check("gemv_nvfp4", QPLUG_GEMV_FMT_NV, w_packed, w_scale, xq, x_scale,
                               m, n, k, y, err);
    if (s != QPLUG_OK)
        return s;
    qplug_cuda__gemv_args a = qplug_cuda__gemv_plain(w_packed, w_scale, xq, x_scale,
                                                     16384.0f * global_scale, m, n, k, y);
    return qplug_cuda__gemv_launch<QPLUG_GEMV_FMT_NV>(a, 1, false, stream, "gemv_nvfp4", err);
}

/* The bytes of the unfused path's xq [m, groups*k] and scales, each part
 * 256-byte aligned. */
static size_t qplug_cuda__gemv_xq_bytes(int64_t m, int64_t k, int64_t groups, size_t *off_xs)
{
    size_t xq = (size_t)(m * groups * k);
    *off_xs = (xq + 255) & ~(size_t)255;
    return *off_xs + (size_t)(m * groups * (k / 128)) * sizeof(float);
}

/* Whether a call runs unfused: UNFUSED, or AUTO where fusion is predicted
 * slower; false when the device cannot be queried (fused is always
 * correct). */
static bool qplug_cuda__gemv_unfused(qplug_cuda__gemv_fmt fmt, qplug_cuda__scale_fmt act,
                                     int64_t m, int64_t n, int64_t k, int64_t groups,
                                     qplug_cuda__gemv_path path)
{
    if (path != QPLUG_CUDA_GEMV_AUTO)
        return path == QPLUG_CUDA_GEMV_UNFUSED;
    int sms = 0;
    if (qplug_cuda__sms(&sms) != cudaSuccess || sms < 1)
        return false;
    (void)act;
    int f = fmt == QPLUG_CUDA_GEMV_FP8     ? QPLUG_GEMV_FMT_FP8
            : fmt == QPLUG_CUDA_GEMV_MXFP4 ? QPLUG_GEMV_FMT_MX
                                           : QPLUG_GEMV_FMT_NV;
    return !qplug_cuda__gemv_fuses(n * groups, n, k, f, (int)m, sms);
}

extern "C" size_t qplug_cuda__gemv_bf16_scratch(qplug_cuda__gemv_fmt fmt,
                                                qplug_cuda__scale_fmt act, int64_t m, int64_t n,
                                                int64_t k, int64_t groups,
                                                qplug_cuda__gemv_path path)
{
    /* Arguments qplug_cuda__gemv_bf16 refuses need no scratch: the call
     * reports them. */
    if (fmt != QPLUG_CUDA_GEMV_FP8 && fmt != QPLUG_CUDA_GEMV_MXFP4 && fmt != QPLUG_CUDA_GEMV_NVFP4)
        return 0;
    if (act != QPLUG_CUDA_SCALE_F32 && act != QPLUG_CUDA_SCALE_UE8M0)
        return 0;
    if (m < 1 || m > QPLUG_CUDA_GEMV_MAX_M || n < 16 || n % 16 != 0 || n / 16 > 0x7fffffff ||
        k < 128 || k % 128 != 0 || k / 128 > 0x7fffffff || groups < 1 || groups > 65535 ||
        !qplug_cuda__gemv_unfused(fmt, act, m, n, k, groups, path))
        return 0;
    size_t off;
    return qplug_cuda__gemv_xq_bytes(m, k, groups, &off);
}

extern "C" qplug_status qplug_cuda__gemv_bf16(qplug_cuda__gemv_fmt fmt, const void *w,
                                              const void *w_scale, float global_scale,
                                              const void *x, int64_t ldx,
                                              qplug_cuda__scale_fmt act, int64_t m, int64_t n,
                                              int64_t k, int64_t groups, void *y, int64_t ldy,
                                              qplug_cuda__gemv_path path, void *scratch,
                                              void *stream, qplug_cuda__err *err)
{
    const char *what = fmt == QPLUG_CUDA_GEMV_FP8     ? "gemv_bf16 (fp8)"
                       : fmt == QPLUG_CUDA_GEMV_MXFP4 ? "gemv_bf16 (mxfp4)"
                                                      : "gemv_bf16 (nvfp4)";
    if (fmt != QPLUG_CUDA_GEMV_FP8 && fmt != QPLUG_CUDA_GEMV_MXFP4 && fmt != QPLUG_CUDA_GEMV_NVFP4)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT, "gemv_bf16: unknown weight format %d",
                                (int)fmt);
    if (act != QPLUG_CUDA_SCALE_F32 && act != QPLUG_CUDA_SCALE_UE8M0)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT, "%s: unknown scale format %d", what,
                                (int)act);
    if (path != QPLUG_CUDA_GEMV_AUTO && path != QPLUG_CUDA_GEMV_FUSED &&
        path != QPLUG_CUDA_GEMV_UNFUSED)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT, "%s: unknown path %d", what, (int)path);
    /* x_scale is unused here; w_scale stands in for it in the NULL and
     * alignment checks, and x for xq (its own alignment is checked below). */
    int f = fmt == QPLUG_CUDA_GEMV_FP8     ? QPLUG_GEMV_FMT_FP8
            : fmt == QPLUG_CUDA_GEMV_MXFP4 ? QPLUG_GEMV_FMT_MX
                                           : QPLUG_GEMV_FMT_NV;
    qplug_status s = qplug_cuda__gemv_check(what, f, w, w_scale, x, (const float *)w_scale, m, n,
                                            k, y, err);
    if (s != QPLUG_OK)
        return s;
    if (groups < 1 || groups > 65535 || ldx < groups * k || ldy < groups * n ||
        (fmt == QPLUG_CUDA_GEMV_FP8 && groups > 1 && n % 128 != 0))
        return qplug_cuda__fail(err, QPLUG_ERR_SHAPE,
                                "%s: groups=%lld ldx=%lld ldy=%lld for n=%lld k=%lld needs "
                                "1 <= groups <= 65535, ldx >= groups*k, ldy >= groups*n "
                                "(and n %% 128 == 0 for grouped FP8)",
                                what, (long long)groups, (long long)ldx, (long long)ldy,
                                (long long)n, (long long)k);
    if ((uintptr_t)x % 16 != 0 || ldx % 8 != 0)
        return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT,
                                "%s: x must be 16-byte aligned with a row stride multiple of 8 "
                                "(stride %lld)",
                                what, (long long)ldx);
    bool unfused = qplug_cuda__gemv_unfused(fmt, act, m, n, k, groups, path);
    if (unfused && (!scratch || (uintptr_t)scratch % 16 != 0)) {
        if (path == QPLUG_CUDA_GEMV_UNFUSED)
            return qplug_cuda__fail(err, QPLUG_ERR_ARGUMENT,
                                    "%s: the unfused path needs 16-byte aligned scratch", what);
        unfused = false;
    }
    qplug_cuda__gemv_args a = qplug_cuda__gemv_plain(w, w_scale, NULL, NULL, 1.0f, m, n, k, y);
    a.x = (const __nv_bfloat16 *)x;
    a.ldx = ldx;
    a.ldy = ldy;
    a.ue8m0 = act == QPLUG_CUDA_SCALE_UE8M0;
    if (unfused) {
        /* All groups' activations in one pass: group g's scales are then the
         * block at g * (k/128) * m, which the kernel reads. */
        size_t off_xs;
        qplug_cuda__gemv_xq_bytes(m, k, groups, &off_xs);
        uint8_t *xq = (uint8_t *)scratch;
        float *xs = (float *)(xq + off_xs);
        s = qplug_cuda__act_quant_fp8_ld(x, ldx, m, groups * k, act, xq, xs, stream, err);
        if (s != QPLUG_OK)
            return s;
        a.x = NULL;
        a.xq = xq;
        a.x_scale = xs;
        a.ldx = groups * k;
    }
    int64_t kbn = k / 128;
    switch (fmt) {
    case QPLUG_CUDA_GEMV_FP8:
        a.w_gstride = n * k;
        a.s_gstride = (n / 128) * kbn;
        return qplug_cuda__gemv_launch<QPLUG_GEMV_FMT_FP8>(a, groups, !unfused, stream, what, err);
    case QPLUG_CUDA_GEMV_MXFP4:
        a.post = 16384.0f;
        a.w_gstride = n * k / 2;
        a.s_gstride = n * kbn * 4;
        return qplug_cuda__gemv_launch<QPLUG_GEMV_FMT_MX>(a, groups, !unfused, stream, what, err);
    default:
        a.post = 16384.0f * global_scale;
        a.w_gstride = n * k / 2;
        a.s_gstride = n * kbn * 8;
        return qplug_cuda__gemv_launch<QPLUG_GEMV_FMT_NV>(a, groups, !unfused, stream, what, err);
    }
}
