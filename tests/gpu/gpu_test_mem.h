/*
 * tests/gpu/gpu_test_mem.h - memory helpers the GPU tests share: a checked
 * host allocation, poisoned device allocations (every byte 0xFF, so an
 * output the kernel does not write reads back as NaN), uploads,
 * synchronising downloads that fail the test on any pending device error,
 * and the relative L2 error of a BF16 output. Header-only (static
 * inline): each test is one translation unit.
 * Include after gpu_test_random.h (rel_l2_bf16 uses bf16_value).
 */
#ifndef QPLUG_GPU_TEST_MEM_H
#define QPLUG_GPU_TEST_MEM_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <cuda_runtime_api.h>

static inline int cuda_ok(cudaError_t e, const char *what)
{
    if (e != cudaSuccess) {
        fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
        return 0;
    }
    return 1;
}

/* Host memory of n bytes (at least 1); exits when there is none. */
static inline void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of host memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

/* A device buffer of `bytes` (at least 1, so empty inputs still get a
 * valid pointer) filled with 0xFF; exits when there is none. */
static inline void *dev_alloc_poison(size_t bytes)
{
    void *p = NULL;
    if (!cuda_ok(cudaMalloc(&p, bytes ? bytes : 1), "cudaMalloc"))
        exit(1);
    cudaMemset(p, 0xff, bytes ? bytes : 1);
    return p;
}

static inline void *dev_upload(const void *h, size_t bytes)
{
    void *p = dev_alloc_poison(bytes);
    cudaMemcpy(p, h, bytes, cudaMemcpyHostToDevice);
    return p;
}

/* Waits for the device, then copies back; any kernel error ends the test. */
static inline void download(void *h, const void *d, size_t bytes)
{
    if (!cuda_ok(cudaDeviceSynchronize(), "kernel") ||
        !cuda_ok(cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy"))
        exit(1);
}

/* Relative L2 error of BF16 y against ref; any non-finite y counts as a
 * failure (returns +inf). */
static inline double rel_l2_bf16(const uint16_t *y, const double *ref, size_t n)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double v = bf16_value(y[i]);
        if (!isfinite(v))
            return INFINITY;
        num += (v - ref[i]) * (v - ref[i]);
        den += ref[i] * ref[i];
    }
    return sqrt(num / (den > 0 ? den : 1.0));
}

#endif
