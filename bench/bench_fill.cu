/* Device-side random fills for the bench: every buffer gets fresh random
 * data of its format (never zeros, which can run faster than real data). */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "qplug_bench.h"

static __device__ __forceinline__ uint32_t qplug_bench__hash(uint64_t i, uint32_t seed)
{
    uint64_t z = i * 0x9e3779b97f4a7c15ull + seed;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (uint32_t)(z ^ (z >> 31));
}

__global__ void qplug_bench__fill_kernel(uint8_t *p, int64_t count, int kind, uint32_t seed)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (; i < count; i += stride) {
        uint32_t h = qplug_bench__hash((uint64_t)i, seed);
        switch (kind) {
        case QPLUG_BENCH_FILL_RAW:
            p[i] = (uint8_t)h;
            break;
        case QPLUG_BENCH_FILL_E4M3: /* any finite E4M3 byte */
            p[i] = ((h & 0x7f) == 0x7f) ? (uint8_t)(h ^ 1) : (uint8_t)h;
            break;
        case QPLUG_BENCH_FILL_E8M0: /* 2^-12 .. 2^-1 */
            p[i] = (uint8_t)(115 + h % 12);
            break;
        case QPLUG_BENCH_FILL_E4M3_SCALE: /* positive finite scales */
            p[i] = (uint8_t)(0x18 + h % 0x50);
            break;
        case QPLUG_BENCH_FILL_BF16: /* uniform in (-1, 1), element i/2 */
            if ((i & 1) == 0 && i + 1 < count) {
                float f = ((float)(h >> 8) * (1.0f / 8388608.0f)) - 1.0f;
                __nv_bfloat16 b = __float2bfloat16_rn(f);
                *reinterpret_cast<__nv_bfloat16 *>(p + i) = b;
            }
            break;
        case QPLUG_BENCH_FILL_F32_SCALE: /* powers of two 2^-12 .. 2^-7, element i/4 */
            if ((i & 3) == 0 && i + 3 < count)
                *reinterpret_cast<float *>(p + i) = ldexpf(1.0f, -12 + (int)(h % 6));
            break;
        default:
            break;
        }
    }
}

extern "C" int qplug_bench__fill(void *p, size_t bytes, int kind, unsigned seed)
{
    if (bytes == 0)
        return 0;
    qplug_bench__fill_kernel<<<1024, 256>>>((uint8_t *)p, (int64_t)bytes, kind, seed);
    return cudaGetLastError() == cudaSuccess ? 0 : -1;
}
