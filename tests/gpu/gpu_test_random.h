/*
 * tests/gpu/gpu_test_random.h - the random inputs and BF16 bit helpers the
 * GPU tests share. Header-only: each test is one translation unit. The
 * includer defines QPLUG_TEST_RNG_SEED first, so each test keeps its own
 * reproducible stream.
 */
#ifndef QPLUG_GPU_TEST_RANDOM_H
#define QPLUG_GPU_TEST_RANDOM_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifndef QPLUG_TEST_RNG_SEED
#error "define QPLUG_TEST_RNG_SEED before including gpu_test_random.h"
#endif

static uint64_t rng_state = QPLUG_TEST_RNG_SEED;

/* splitmix64. */
static uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double rng_uniform(void) { return (double)(rng_next() >> 11) * (1.0 / 9007199254740992.0); }

/* Box-Muller. */
static double rng_normal(void)
{
    double u = rng_uniform() + 1e-300, v = rng_uniform();
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

/* A random finite E4M3 byte (NaN is 0x7F / 0xFF). */
static inline uint8_t rand_e4m3(void)
{
    for (;;) {
        uint8_t b = (uint8_t)rng_next();
        if ((b & 0x7f) != 0x7f)
            return b;
    }
}

/* The upper half of an fp32 (truncation is fine for drawing inputs). */
static uint16_t bf16_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)(u >> 16);
}

static float bf16_value(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

#endif
