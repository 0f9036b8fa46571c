/*
 * qplug_bench.h - `qplug bench`: times the plugins' CUDA paths against
 * cuBLASLt BF16 and cuBLASLt FP8 block-scaled GEMMs at DeepSeek V4 shapes,
 * all in one process on one GPU (see bench/NOTES.md for the method).
 */
#ifndef QPLUG_BENCH_H
#define QPLUG_BENCH_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Runs the bench with the arguments after "bench"; returns the exit code. */
int qplug_bench_main(int argc, char **argv);

/* `qplug bench --moe`: the fused-MoE bench through the ABI (bench_moe.c),
 * with the arguments other than "bench" and "--moe". */
int qplug_bench__moe_main(int argc, char **argv);

/* Buffer contents for qplug_bench__fill. */
enum {
    QPLUG_BENCH_FILL_RAW = 0,
    QPLUG_BENCH_FILL_E4M3 = 1,
    QPLUG_BENCH_FILL_E8M0 = 2,
    QPLUG_BENCH_FILL_E4M3_SCALE = 3,
    QPLUG_BENCH_FILL_BF16 = 4,
    QPLUG_BENCH_FILL_F32_SCALE = 5
};

/* Fills a device buffer with random data of one kind; 0 on success. */
int qplug_bench__fill(void *p, size_t bytes, int kind, unsigned seed);

#ifdef __cplusplus
}
#endif
#endif
