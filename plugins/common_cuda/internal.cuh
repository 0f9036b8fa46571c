/* Helpers shared by the .cu files of common_cuda: error reporting and the
 * small device-side codecs the kernels need. */
#ifndef QPLUG_CUDA_INTERNAL_CUH
#define QPLUG_CUDA_INTERNAL_CUH

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <stdarg.h>
#include <stdio.h>

#include "qplug_cuda.h"

/* Formats a one-line message into err (when not NULL) and returns status. */
static inline qplug_status qplug_cuda__fail(qplug_cuda__err *err, qplug_status status,
                                            const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return status;
}

/* Checks the launch that just happened (configuration errors surface here;
 * faults inside the kernel surface at the caller's next synchronisation). */
static inline qplug_status qplug_cuda__check_launch(qplug_cuda__err *err, const char *what)
{
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
        return qplug_cuda__fail(err, QPLUG_ERR_DEVICE, "%s: kernel launch failed: %s", what,
                                cudaGetErrorString(e));
    return QPLUG_OK;
}

/* The E8M0 value 2^(b-127) as a float; b = 0 is the subnormal 2^-127 and
 * b = 255 is NaN. Exact. */
__device__ __forceinline__ float qplug_cuda__e8m0_dev(unsigned b)
{
    if (b == 0)
        return __uint_as_float(0x00400000u);
    if (b == 255)
        return __uint_as_float(0x7fc00000u);
    return __uint_as_float(b << 23);
}

/* One E4M3 byte as a float (exact). */
__device__ __forceinline__ float qplug_cuda__e4m3_dev(unsigned b)
{
    __half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)b, __NV_E4M3);
    return __half2float(__half(h));
}

/* The smallest power of two s with amax / s <= 448 for amax > 0, computed as
 * 2^ceil(log2(amax / 448)) on the rounded quotient, as formats.md prescribes
 * for ue8m0 activation scales. Non-finite amax gives NaN. */
__device__ __forceinline__ float qplug_cuda__pow2_scale(float amax)
{
    float r = amax / 448.0f;
    unsigned bits = __float_as_uint(r);
    unsigned e = (bits >> 23) & 0xffu;
    if (e == 0xffu)
        return __uint_as_float(0x7fc00000u);
    if (e == 0)
        return 1.17549435e-38f; /* r below the normal range: the smallest normal */
    if ((bits & 0x7fffffu) == 0)
        return r;
    return __uint_as_float((e + 1u) << 23);
}

/* Float to E4M3, round to nearest even, saturating at +-448 (NaN stays NaN). */
__device__ __forceinline__ unsigned qplug_cuda__to_e4m3(float v)
{
    return (unsigned)__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
}

/* Eight packed E2M1 values (one 32-bit word, element 2j in the low nibble of
 * byte j) to eight E4M3 bytes holding e2m1 * 2^-6 exactly: the E2M1 bits
 * e1 e0 m land in the low exponent bits and the top mantissa bit of E4M3,
 * which maps the E2M1 subnormal 0.5 onto the E4M3 subnormal 2^-7 too.
 * lo gets elements 0..3 and hi elements 4..7. */
__device__ __forceinline__ void qplug_cuda__fp4x8_to_fp8(unsigned w, unsigned *lo, unsigned *hi)
{
    unsigned l = w & 0x0f0f0f0fu;
    unsigned h = (w >> 4) & 0x0f0f0f0fu;
    unsigned fl = ((l & 0x07070707u) << 2) | ((l & 0x08080808u) << 4);
    unsigned fh = ((h & 0x07070707u) << 2) | ((h & 0x08080808u) << 4);
    *lo = __byte_perm(fl, fh, 0x5140);
    *hi = __byte_perm(fl, fh, 0x7362);
}

/* D = A . B (+0) on E4M3 inputs, fp32 accumulators: mma.sync m16n8k32. */
__device__ __forceinline__ void qplug_cuda__mma_e4m3(float c[4], unsigned a0, unsigned a1,
                                                     unsigned a2, unsigned a3, unsigned b0,
                                                     unsigned b1)
{
    asm volatile("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/* A 16-byte streaming load that skips L1: weights are read exactly once. */
__device__ __forceinline__ uint4 qplug_cuda__ld_stream(const void *p)
{
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

#endif
