/*
 * qplug_bench.h - `qplug bench`: times the plugins' CUDA paths against
 * cuBLASLt BF16 and cuBLASLt FP8 block-scaled GEMMs at DeepSeek V4 shapes,
 * all in one process on one GPU (see bench/NOTES.md for the method).
 */
#ifndef QPLUG_BENCH_H
#define QPLUG_BENCH_H

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Runs the bench with the arguments after "bench"; returns the exit code. */
int qplug_bench_main(int argc, char **argv);

/* `qplug bench --moe`: the fused-MoE bench through the ABI (bench_moe.c),
 * with the arguments other than "bench" and "--moe". */
int qplug_bench__moe_main(int argc, char **argv);

/* `qplug bench --prequant`: the RMSNorm kernels against copy bandwidth and
 * the prefill rows with the activation quantization in the producer
 * (bench_prequant.c), with the arguments other than "bench" and
 * "--prequant". */
int qplug_bench__prequant_main(int argc, char **argv);

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

/* Timing with the stream held (bench_hold.cu): a spin kernel on the legacy
 * default stream holds it while the timed reps and their events are
 * enqueued, so that each event pair measures one call's GPU time rather
 * than the host's submission time. */
typedef struct qplug_bench__hold qplug_bench__hold;

/* Most reps one timing takes (the events are created per timing). */
#define QPLUG_BENCH_MAX_REPS 128
/* Most operations (spin kernel + events + launches) enqueued behind one
 * hold: half of the launch queue's depth of about a thousand entries, so
 * the host never blocks in a launch while the GPU is held. */
#define QPLUG_BENCH_HOLD_MAX_QUEUED 512

/* NULL when mapped pinned memory cannot be had. */
qplug_bench__hold *qplug_bench__hold_create(void);
void qplug_bench__hold_destroy(qplug_bench__hold *h);

/* Reps enqueued behind one hold for calls of at most launches_per_call
 * launches each; 0 when one call alone would exceed the bound. */
int qplug_bench__hold_batch(int launches_per_call);

/* Enqueues call `rep` of the timed operation on the legacy default stream;
 * 0 on success. */
typedef int (*qplug_bench__op_fn)(void *ctx, int rep);

typedef struct qplug_bench__timing {
    double gpu_us;  /* median of the event pairs around each call */
    double host_us; /* median host wall time of one op() call while enqueueing */
    bool held;      /* every batch ran behind a hold the host released in time */
    int batches;    /* holds used (reps / qplug_bench__hold_batch, rounded up) */
    int not_held;   /* batches whose spin kernel timed out (host stall) */
} qplug_bench__timing;

/* Times op(ctx, first_rep + r) for r < reps (warm-up is the caller's).
 * With h, the reps are enqueued in batches of qplug_bench__hold_batch(
 * launches_per_call), each behind a hold released after the batch is
 * enqueued; with h NULL, all reps are enqueued back to back without a
 * hold (the method of the tables up to v10). -1 when op fails, reps is
 * outside 1..QPLUG_BENCH_MAX_REPS, launches_per_call exceeds the bound, or
 * a CUDA call fails. */
int qplug_bench__time(qplug_bench__hold *h, qplug_bench__op_fn op, void *ctx, int first_rep,
                      int reps, int launches_per_call, qplug_bench__timing *out);

#ifdef __cplusplus
}
#endif
#endif
