/* moe_ws.cuh - the warp-specialized Hopper grouped expert GEMM of the fused
 * MoE (v4; included by moe.cu after moe_wgmma.cuh, whose operand layout,
 * wgmma wrappers and FP4 decode it reuses).
 *
 * Same tiles and numerics as moe_wgmma.cuh (128 weight rows as the wgmma A
 * operand x up to 128 routed rows as B, both 128-byte swizzled K-major E4M3
 * tiles, MXFP4 folded per row and 128-block, one fp32 promotion per
 * 128-block), but the block's warpgroups have fixed roles:
 *
 *   - warpgroups 2 (and 3) are producers. Thread (part, r) owns part of
 *     weight row r: it cp.asyncs its share of the row's raw 128-block
 *     (E2M1 bytes and the E8M0 word, or E4M3 bytes straight into the
 *     swizzled A tile), of the token rows and token scales, several
 *     128-blocks ahead; when its own copies of a block have landed
 *     (cp.async.wait_group, so no barrier among the producers is needed)
 *     it decodes them into the slot's A tile, writes the row's weight
 *     scale, fences for the async proxy and arrives on the slot's "full"
 *     mbarrier;
 *   - warpgroups 0 and 1 are consumers (64 weight rows each): wait "full",
 *     take their turn (named barriers: the tensor cores run the two
 *     warpgroups' wgmmas alternately, so one promotes while the other's
 *     run), four wgmmas, wait for them, arrive "empty", promote.
 *
 * There is no block-wide barrier in the main loop. setmaxnreg moves
 * registers from the producers to the consumers (QPLUG_MOE_WS_SETMAXNREG=0
 * in bench builds leaves the split even). Slots hold the decoded A tile,
 * the B tile, the raw FP4 rows, weight and token scales. On H200 (run 2,
 * bench/NOTES.md) this is 5-6% faster than v3 at 4096 tokens and still
 * bound by the producers' side (copies and decode alone take 85% of the
 * time). */
#ifndef QPLUG_CUDA_MOE_WS_CUH
#define QPLUG_CUDA_MOE_WS_CUH

/* Producer warpgroups (1 or 2): run 1 showed a single producer warp per
 * SM sub-partition to be the limit (bench/NOTES.md, v4). */
#ifndef QPLUG_MOE_WS_PRODUCERS
#define QPLUG_MOE_WS_PRODUCERS 2
#endif
/* 1: the consumers take turns issuing their wgmmas (named barriers 2 and
 * 3), so one promotes while the other's wgmmas run. */
#ifndef QPLUG_MOE_WS_PINGPONG
#define QPLUG_MOE_WS_PINGPONG 1
#endif
enum {
    WS_NP = QPLUG_MOE_WS_PRODUCERS,
    WS_PT = 128 * WS_NP, /* producer threads */
    WS_THREADS = 256 + WS_PT,
    /* Registers per thread after setmaxnreg: the whole file (64K) split
     * between producers and consumers. */
    WS_PREG = WS_NP == 1 ? 56 : 40,
    WS_CREG = WS_NP == 1 ? 224 : 216
};
static_assert(WS_NP == 1 || WS_NP == 2, "moe_ws: one or two producer warpgroups");
static_assert(WS_PREG * WS_PT + WS_CREG * 256 <= 65536, "moe_ws: register split exceeds the file");

#ifndef QPLUG_MOE_WS_STAGES_MX
#define QPLUG_MOE_WS_STAGES_MX 5
#endif
#ifndef QPLUG_MOE_WS_STAGES_FP8
#define QPLUG_MOE_WS_STAGES_FP8 6
#endif
/* 128-blocks whose copies are in flight while the producer decodes; the
 * rest of the S slots are decoded blocks waiting for (or in use by) the
 * consumers. */
#ifndef QPLUG_MOE_WS_AHEAD
#define QPLUG_MOE_WS_AHEAD 2
#endif
#ifndef QPLUG_MOE_WS_SETMAXNREG
#define QPLUG_MOE_WS_SETMAXNREG 1
#endif
/* Bench diagnostics only (wrong output): 1 leaves out the wgmmas and the
 * promotion (what the producer and memory alone take), 2 leaves out the
 * producer's copies and decode (what the consumers alone take). */
#ifndef QPLUG_MOE_WS_DIAG
#define QPLUG_MOE_WS_DIAG 0
#endif

template <int WF> struct qplug_cuda__moe_ws_smem {
    static constexpr int S = WF == MOE_F_FP8 ? QPLUG_MOE_WS_STAGES_FP8 : QPLUG_MOE_WS_STAGES_MX;
    static constexpr int P = S - QPLUG_MOE_WS_AHEAD;          /* copies in flight */
    static constexpr int RAW = WF == MOE_F_FP8 ? 0 : WG_BMW * WG_RS_MX;
    /* One slot: A tile, B tile, raw rows, weight scales, token scales. The
     * weight scale words come once per producer part (each part decodes
     * from its own copy; part 0 then overwrites its set with the F32 row
     * scales the consumers read). */
    static constexpr int SA = 0, SB = WG_TILE, SR = 2 * WG_TILE, SW = SR + RAW,
                         SAS = SW + WS_NP * WG_BMW * 4;
    /* Rounded up so that every slot's swizzled tiles stay 1024-aligned. */
    static constexpr int STAGE = (SAS + WG_BN * 4 + 1023) / 1024 * 1024;
    static constexpr int BAR = S * STAGE;  /* S "full" then S "empty" mbarriers */
    static constexpr int ROW = BAR + 2 * S * 8;
    static constexpr int BYTES = ROW + WG_BN * 8;
    static constexpr int LAUNCH = BYTES + 1024;
    static_assert(P >= 1 && P < S, "moe_ws: copies in flight must leave a slot to decode into");
    static_assert(LAUNCH <= 227 * 1024, "moe_ws: stages exceed the shared memory of a block");
};

static __device__ __forceinline__ void qplug_cuda__moe_ws_bar_init(uint64_t *b, unsigned count)
{
    uint32_t a = (uint32_t)__cvta_generic_to_shared(b);
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(a), "r"(count) : "memory");
}

/* Arrive with release semantics (the default of mbarrier.arrive). */
static __device__ __forceinline__ void qplug_cuda__moe_ws_arrive(uint64_t *b)
{
    uint32_t a = (uint32_t)__cvta_generic_to_shared(b);
    asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(a)
                 : "memory");
}

/* Waits until the phase of parity `par` of barrier b has completed
 * (acquire). */
static __device__ __forceinline__ void qplug_cuda__moe_ws_wait(uint64_t *b, unsigned par)
{
    uint32_t a = (uint32_t)__cvta_generic_to_shared(b);
    asm volatile("{\n.reg .pred p;\n"
                 "WAIT_%=:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
                 "@!p bra WAIT_%=;\n}\n" ::"r"(a),
                 "r"(par)
                 : "memory");
}

/* Turn signals between the consumer warpgroups: named barrier id of 256
 * threads, one warpgroup arrives (does not wait), the other syncs. */
static __device__ __forceinline__ void qplug_cuda__moe_ws_turn_wait(int id)
{
    asm volatile("bar.sync %0, 256;\n" ::"r"(id) : "memory");
}

static __device__ __forceinline__ void qplug_cuda__moe_ws_turn_give(int id)
{
    asm volatile("bar.arrive %0, 256;\n" ::"r"(id) : "memory");
}

template <int WF, bool DUAL, int NC>
static __device__ __forceinline__ void qplug_cuda__moe_ws_body(const qplug_cuda__moe_gemm_args &p)
{
    typedef qplug_cuda__moe_ws_smem<WF> L;
    extern __shared__ __align__(1024) uint8_t qplug_cuda__moe_ws_sm[];
    /* The swizzle follows the absolute shared address: align the slots. */
    uint32_t base = (uint32_t)__cvta_generic_to_shared(qplug_cuda__moe_ws_sm);
    uint8_t *sm = qplug_cuda__moe_ws_sm + ((1024u - (base & 1023u)) & 1023u);

    int tile = blockIdx.y;
    int e = p.tile_e[tile], r0 = p.tile_r0[tile], r1 = p.tile_r1[tile];
    int nrows = r1 - r0;
    int64_t n = p.n, k = p.k, nk = k / WG_BK;
    int64_t n0 = (int64_t)blockIdx.x * (DUAL ? 64 : 128);
    int tid = threadIdx.x, wg = tid >> 7, wt = tid & 127;
    int64_t *arow = reinterpret_cast<int64_t *>(sm + L::ROW);
    uint64_t *full = reinterpret_cast<uint64_t *>(sm + L::BAR);
    uint64_t *empty = full + L::S;
    if (tid < WG_BN) {
        int r = r0 + tid;
        arow[tid] = r < r1 ? (p.perm_tok ? (int64_t)p.perm_tok[r] : (int64_t)r) : -1;
    }
    if (tid == 0) {
        for (int s = 0; s < L::S; s++) {
            qplug_cuda__moe_ws_bar_init(&full[s], WS_PT);
            qplug_cuda__moe_ws_bar_init(&empty[s], 8);
        }
    }
    __syncthreads();

    if (wg >= 2) {
        /* ------------------------------------------------ producers */
        if (QPLUG_MOE_WS_SETMAXNREG)
            asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"((int)WS_PREG) : "memory");
        /* Thread (part, r): weight row r, chunks [part * CPP, (part + 1) *
         * CPP) of its 128-block, and every WS_PT-th token chunk from pi. */
        int pi = tid - 256, r = pi & 127, part = pi >> 7, h = r >> 6;
        const int CPP = (WF == MOE_F_FP8 ? 8 : 4) / WS_NP;
        int64_t row = n0 + (DUAL ? (r & 63) : r);
        const uint8_t *w = p.w[DUAL ? h : 0] + (int64_t)e * n * (WF == MOE_F_FP8 ? k : k / 2);
        const uint8_t *ws = p.ws[DUAL ? h : 0];
        const uint8_t *wsrc, *ssrc;
        if (WF == MOE_F_FP8) {
            wsrc = w + row * k + part * CPP * 16;
            ssrc = ws + ((int64_t)e * (n / 128) + row / 128) * (k / 128) * 4;
        } else {
            wsrc = w + row * (k / 2) + part * CPP * 16;
            ssrc = ws + ((int64_t)e * n + row) * (k / 32);
        }

        /* Copies of 128-block kb into slot s. */
        auto issue = [&](int64_t kb, int s) {
            if (QPLUG_MOE_WS_DIAG == 2)
                return;
            uint8_t *st = sm + s * L::STAGE;
            if (WF == MOE_F_FP8) {
#pragma unroll
                for (int c = 0; c < CPP; c++)
                    qplug_cuda__moe_wg_cp16(
                        st + L::SA + qplug_cuda__moe_wg_off(r, part * CPP + c),
                        wsrc + kb * 128 + c * 16, true);
                if ((r & 63) == 0 && part == 0)
                    qplug_cuda__moe_wg_cp4(st + L::SW + 4 * (r >> 6), ssrc + kb * 4, true);
            } else {
#pragma unroll
                for (int c = 0; c < CPP; c++)
                    qplug_cuda__moe_wg_cp16(st + L::SR + r * WG_RS_MX + (part * CPP + c) * 16,
                                            wsrc + kb * 64 + c * 16, true);
                qplug_cuda__moe_wg_cp4(st + L::SW + 4 * pi, ssrc + kb * 4, true);
            }
#pragma unroll
            for (int i = 0; i < (NC * 8 + WS_PT - 1) / WS_PT; i++) {
                int q = pi + i * WS_PT, tr = q >> 3, c = q & 7;
                if (tr >= NC)
                    break;
                int64_t ar = arow[tr];
                const uint8_t *src = p.a + (ar >= 0 ? ar : 0) * p.a_ld + kb * 128 + c * 16;
                qplug_cuda__moe_wg_cp16(st + L::SB + qplug_cuda__moe_wg_off(tr, c), src, ar >= 0);
            }
            if (pi < NC) {
                int64_t ar = arow[pi];
                const float *src = p.a_scale + kb * p.a_sld + (ar >= 0 ? ar : 0);
                qplug_cuda__moe_wg_cp4(st + L::SAS + 4 * pi, src, ar >= 0);
            }
        };

        /* This thread's copies of slot s have landed: decode its part of
         * its row and publish the slot. */
        auto finish = [&](int s) {
            uint8_t *st = sm + s * L::STAGE;
            if (WF == MOE_F_MX && QPLUG_MOE_WS_DIAG != 2) {
                unsigned sw = *reinterpret_cast<const unsigned *>(st + L::SW + 4 * pi);
                int emax = qplug_cuda__moe_wg_emax(sw);
                const uint8_t *rt = st + L::SR + r * WG_RS_MX;
#pragma unroll
                for (int gi = 0; gi < CPP; gi++) {
                    int g = part * CPP + gi;
                    int tp = max(1, (int)((sw >> (8 * g)) & 0xffu) - emax + 12);
                    unsigned lo, hi, o[8];
                    qplug_cuda__moe_wg_fp4_table(tp, &lo, &hi);
                    uint4 v = *reinterpret_cast<const uint4 *>(rt + g * 16);
                    qplug_cuda__moe_wg_fp4_decode(v.x, lo, hi, &o[0], &o[1]);
                    qplug_cuda__moe_wg_fp4_decode(v.y, lo, hi, &o[2], &o[3]);
                    qplug_cuda__moe_wg_fp4_decode(v.z, lo, hi, &o[4], &o[5]);
                    qplug_cuda__moe_wg_fp4_decode(v.w, lo, hi, &o[6], &o[7]);
                    *reinterpret_cast<uint4 *>(st + L::SA + qplug_cuda__moe_wg_off(r, 2 * g)) =
                        make_uint4(o[0], o[1], o[2], o[3]);
                    *reinterpret_cast<uint4 *>(st + L::SA + qplug_cuda__moe_wg_off(r, 2 * g + 1)) =
                        make_uint4(o[4], o[5], o[6], o[7]);
                }
                if (part == 0)
                    *reinterpret_cast<float *>(st + L::SW + 4 * r) =
                        qplug_cuda__e8m0_dev((unsigned)emax) * 0.015625f;
            }
            qplug_cuda__moe_wg_fence_async();
            qplug_cuda__moe_ws_arrive(&full[s]);
        };

#pragma unroll
        for (int j = 0; j < L::P; j++) {
            if (j < nk)
                issue(j, j);
            qplug_cuda__moe_wg_commit();
        }
        for (int64_t kb = 0; kb < nk; kb++) {
            qplug_cuda__moe_wg_cpwait<L::P - 1>();
            finish((int)(kb % L::S));
            int64_t j = kb + L::P;
            if (j < nk) {
                int s = (int)(j % L::S);
                int64_t u = j / L::S;
                if (u > 0)
                    qplug_cuda__moe_ws_wait(&empty[s], (unsigned)((u - 1) & 1));
                issue(j, s);
            }
            qplug_cuda__moe_wg_commit();
        }
        qplug_cuda__moe_wg_cpwait<0>();
        return;
    }

    /* ---------------------------------------------------- consumers */
    if (QPLUG_MOE_WS_SETMAXNREG)
        asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"((int)WS_CREG) : "memory");
    int warp_in = wt >> 5, lane = tid & 31;
    int m0 = warp_in * 16 + (lane >> 2), c0 = (lane & 3) * 2;
    float acc[NC / 2], tmp[NC / 2];
#pragma unroll
    for (int i = 0; i < NC / 2; i++)
        acc[i] = tmp[i] = 0.0f;

    for (int64_t kb = 0; kb < nk; kb++) {
        int s = (int)(kb % L::S);
        const uint8_t *st = sm + s * L::STAGE;
        qplug_cuda__moe_ws_wait(&full[s], (unsigned)((kb / L::S) & 1));
        uint64_t da = qplug_cuda__moe_wg_desc(st + L::SA + wg * 8192);
        uint64_t db = qplug_cuda__moe_wg_desc(st + L::SB);
        /* Ping-pong: warpgroup 0 issues after warpgroup 1 has issued the
         * previous block's wgmmas, warpgroup 1 after warpgroup 0 has issued
         * this block's, so the tensor cores run them alternately and each
         * warpgroup promotes while the other's wgmmas run. */
        if (QPLUG_MOE_WS_PINGPONG) {
            if (wg == 0 && kb > 0)
                qplug_cuda__moe_ws_turn_wait(2);
            else if (wg == 1)
                qplug_cuda__moe_ws_turn_wait(3);
        }
        qplug_cuda__moe_wg_fence();
        if (QPLUG_MOE_WS_DIAG != 1) {
#pragma unroll
            for (int ks = 0; ks < 4; ks++)
                qplug_cuda__moe_wg_mma<false, NC>(tmp, da + WG_KSTEP * ks, db + WG_KSTEP * ks, ks);
        }
        qplug_cuda__moe_wg_commit_mma();
        if (QPLUG_MOE_WS_PINGPONG)
            qplug_cuda__moe_ws_turn_give(wg == 0 ? 3 : 2);

        /* Scales of this block (read while the wgmmas run). */
        const float *wsc = reinterpret_cast<const float *>(st + L::SW);
        float w0, w1;
        if (WF == MOE_F_FP8) {
            w0 = w1 = wsc[wg];
        } else {
            w0 = wsc[wg * 64 + m0];
            w1 = wsc[wg * 64 + m0 + 8];
        }
        const float *as = reinterpret_cast<const float *>(st + L::SAS);
        float2 ts[NC / 8];
#pragma unroll
        for (int j = 0; j < NC / 8; j++)
            ts[j] = *reinterpret_cast<const float2 *>(as + j * 8 + c0);

        qplug_cuda__moe_wg_wait<NC>(tmp);
        __syncwarp();
        if (lane == 0)
            qplug_cuda__moe_ws_arrive(&empty[s]);
        if (QPLUG_MOE_WS_DIAG == 1)
            continue;
#pragma unroll
        for (int j = 0; j < NC / 8; j++) {
            acc[4 * j + 0] = fmaf(tmp[4 * j + 0] * ts[j].x, w0, acc[4 * j + 0]);
            acc[4 * j + 1] = fmaf(tmp[4 * j + 1] * ts[j].y, w0, acc[4 * j + 1]);
            acc[4 * j + 2] = fmaf(tmp[4 * j + 2] * ts[j].x, w1, acc[4 * j + 2]);
            acc[4 * j + 3] = fmaf(tmp[4 * j + 3] * ts[j].y, w1, acc[4 * j + 3]);
        }
    }

    /* Warpgroup 1's last turn signal has no wait in the loop. */
    if (QPLUG_MOE_WS_PINGPONG && wg == 0 && nk > 0)
        qplug_cuda__moe_ws_turn_wait(2);

    /* Every wgmma of both consumers has completed at the epilogue's first
     * barrier, and the producers have no copies left: slot 0 is free for
     * the hand-over of u. */
    qplug_cuda__moe_wg_epilogue<DUAL, NC>(p, acc, reinterpret_cast<float *>(sm), wg, wt, r0,
                                          nrows, n0, m0, c0);
}

/* Same grid and arguments as qplug_cuda__moe_wg_kernel (FP8 and MXFP4
 * weights only), WS_THREADS threads (512 with two producer warpgroups). */
template <int WF, bool DUAL>
__global__ void __launch_bounds__(WS_THREADS, 1)
    qplug_cuda__moe_ws_kernel(const qplug_cuda__moe_gemm_args p)
{
    if (p.skip_if && *p.skip_if != 0)
        return;
    int tile = blockIdx.y;
    if (tile >= *p.ntiles)
        return;
    int nrows = p.tile_r1[tile] - p.tile_r0[tile];
    if (nrows <= 16)
        qplug_cuda__moe_ws_body<WF, DUAL, 16>(p);
    else if (nrows <= 32)
        qplug_cuda__moe_ws_body<WF, DUAL, 32>(p);
    else if (nrows <= 64)
        qplug_cuda__moe_ws_body<WF, DUAL, 64>(p);
    else if (nrows <= 96)
        qplug_cuda__moe_ws_body<WF, DUAL, 96>(p);
    else
        qplug_cuda__moe_ws_body<WF, DUAL, 128>(p);
}

#endif
