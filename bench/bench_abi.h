/* bench_abi.h - plugin layers for `qplug bench`, built and applied through
 * the core's loader and host (bench_abi.c). Internal to bench/. */
#ifndef QPLUG_BENCH_ABI_H
#define QPLUG_BENCH_ABI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct bench_abi bench_abi;
typedef struct bench_abi_layers bench_abi_layers;

/* Loads the plugins from the default search path and makes a CUDA runtime. */
bench_abi *bench_abi_open(char *msg, size_t msg_size);
void bench_abi_close(bench_abi *b);

/* NULL with msg "not claimed" when the plugin scores the layer 0.
 * `count` identical layers (separate device copies, for rotation past L2)
 * of a linear (groups == 1) or grouped linear with synthetic weights. */
bench_abi_layers *bench_abi_create(bench_abi *b, const char *plugin, int64_t n, int64_t k,
                                   int64_t groups, int count, char *msg, size_t msg_size);
void bench_abi_destroy(bench_abi_layers *L);

/* qplug_layer_apply of layer i % count on BF16 device x [m, G*k] -> y
 * [m, G*n], on the legacy default stream; 0 on success. */
int bench_abi_apply(bench_abi_layers *L, int i, int64_t m, void *x, void *y, bool reference,
                    char *msg, size_t msg_size);

#endif
