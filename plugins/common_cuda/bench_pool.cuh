/*
 * plugins/common_cuda/bench_pool.cuh - what the standalone kernel benches
 * (gemv_bench.cu, gemm_wgmma_bench.cu) share: a CUDA-call check that ends
 * the program, a device-side random fill by data kind, and pools of
 * several operand sets so that timed loops rotate past the L2 cache, and
 * the layer shapes they time.
 * Bench-only code, never linked into the plugins.
 */
#ifndef QPLUG_BENCH_POOL_CUH
#define QPLUG_BENCH_POOL_CUH

#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include <cuda_runtime_api.h>

#define CK(x)                                                                                    \
    do {                                                                                         \
        cudaError_t e_ = (x);                                                                    \
        if (e_ != cudaSuccess) {                                                                 \
            fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e_));          \
            exit(1);                                                                             \
        }                                                                                        \
    } while (0)

/* Random bytes by kind: 0 raw, 1 E4M3 without NaN, 2 float scale in
 * [2^-10, 2^-4), 3 E8M0 in 2^-6..2^5, 4 positive E4M3 scale, 5 BF16 of
 * magnitude 2^-4..2^4 with random sign. */
__global__ void bench_fill(uint8_t *p, size_t bytes, int kind, unsigned seed)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i < bytes; i += (size_t)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)i * 2654435761u ^ seed * 0x9e3779b9u;
        h ^= h >> 15;
        h *= 0x2c1b3c6du;
        h ^= h >> 12;
        h *= 0x297a2d39u;
        h ^= h >> 15;
        if (kind == 2) {
            if (i % 4 == 0)
                ((float *)p)[i / 4] = exp2f(-10.0f + 6.0f * (float)(h & 0xffff) / 65536.0f);
            continue;
        }
        if (kind == 5) {
            if (i % 2 == 0)
                ((uint16_t *)p)[i / 2] =
                    (uint16_t)(0x3d80u + (h & 0x3ffu) + ((h >> 16) & 0x8000u));
            continue;
        }
        unsigned b = h & 0xffu;
        if (kind == 1 && (b & 0x7fu) == 0x7fu)
            b ^= 1u;
        if (kind == 3)
            b = 121u + h % 12u;
        if (kind == 4)
            b = 0x18u + h % 0x50u;
        p[i] = (uint8_t)b;
    }
}

/* `count` operand sets of `set` bytes each (256-byte aligned); at(i)
 * rotates through them. */
struct pool {
    uint8_t *base = nullptr;
    size_t set = 0;
    int count = 1;
    uint8_t *at(int i, size_t off = 0) const { return base + (size_t)(i % count) * set + off; }
};

static pool make_pool(size_t bytes, int count, int kind, unsigned seed)
{
    pool p;
    p.set = (bytes + 255) & ~(size_t)255;
    p.count = count;
    CK(cudaMalloc(&p.base, p.set * count));
    bench_fill<<<1024, 256>>>(p.base, p.set * count, kind, seed);
    CK(cudaGetLastError());
    return p;
}

/* The DeepSeek V4 linear layers the kernel benches time: n x k per group,
 * g groups (deepseek_v4.md section 1; the same list as bench/bench.c). */
struct shape {
    const char *model, *layer;
    int64_t n, k, g;
};

static const shape shapes[] = {
    {"flash", "attn.wq_a", 1024, 4096, 1},   {"flash", "attn.wq_b", 32768, 1024, 1},
    {"flash", "attn.wkv", 512, 4096, 1},     {"flash", "attn.wo_a", 1024, 4096, 8},
    {"flash", "attn.wo_b", 4096, 8192, 1},   {"flash", "ffn.w13", 4096, 4096, 1},
    {"flash", "ffn.w2", 4096, 2048, 1},      {"pro", "attn.wq_a", 1536, 7168, 1},
    {"pro", "attn.wq_b", 65536, 1536, 1},    {"pro", "attn.wkv", 512, 7168, 1},
    {"pro", "attn.wo_a", 1024, 4096, 16},    {"pro", "attn.wo_b", 7168, 16384, 1},
    {"pro", "ffn.w13", 6144, 7168, 1},       {"pro", "ffn.w2", 7168, 3072, 1},
};

#endif
