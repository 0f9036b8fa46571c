/* bench_hold.cu - timing with the stream held (the idea of nvbench's
 * "blocking kernel", written anew here).
 *
 * Why: the bench enqueues each timed call between two CUDA events, reps
 * back to back. When a call's GPU time is shorter than the host's cost of
 * enqueueing it (ABI checks, launches), the GPU drains the queue and waits
 * for the host, so the event pair measures the host, not the GPU. Holding
 * the stream fixes that: one tiny kernel spins on a flag in mapped pinned
 * host memory, the reps and their events are enqueued behind it, then the
 * host sets the flag and the GPU runs them back to back. Each event pair
 * then brackets one call's GPU time only.
 *
 * Safety: the spin kernel gives up after QPLUG_BENCH_HOLD_TIMEOUT_NS on the
 * GPU's global timer, so a host that stalls (or blocks in a launch because
 * the queue is full, or in a hidden synchronisation) can never hang the
 * bench: that batch is reported as "not held" instead. The number of
 * operations enqueued behind one hold is bounded by QPLUG_BENCH_HOLD_MAX_QUEUED,
 * well under the launch queue's depth (about a thousand entries). */
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "qplug_bench.h"

#define QPLUG_BENCH_HOLD_TIMEOUT_NS 1000000000ull

static __device__ __forceinline__ unsigned long long qplug_bench__globaltimer(void)
{
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

/* flags[0]: set to 1 by the host to release; flags[1]: written here, 1 =
 * released by the host, 2 = gave up after the timeout. */
__global__ void qplug_bench__hold_kernel(volatile int *flags, unsigned long long timeout_ns)
{
    unsigned long long t0 = qplug_bench__globaltimer();
    for (;;) {
        if (flags[0] != 0) {
            flags[1] = 1;
            return;
        }
        if (qplug_bench__globaltimer() - t0 > timeout_ns) {
            flags[1] = 2;
            return;
        }
        __nanosleep(256);
    }
}

struct qplug_bench__hold {
    volatile int *host; /* [0] release, [1] state: mapped pinned host memory */
    int *dev;           /* the same two words as the device sees them */
};

extern "C" qplug_bench__hold *qplug_bench__hold_create(void)
{
    qplug_bench__hold *h = (qplug_bench__hold *)calloc(1, sizeof *h);
    if (!h)
        return NULL;
    void *p = NULL;
    if (cudaHostAlloc(&p, 2 * sizeof(int), cudaHostAllocMapped) != cudaSuccess) {
        free(h);
        return NULL;
    }
    h->host = (volatile int *)p;
    if (cudaHostGetDevicePointer((void **)&h->dev, p, 0) != cudaSuccess) {
        cudaFreeHost(p);
        free(h);
        return NULL;
    }
    h->host[0] = 0;
    h->host[1] = 0;
    return h;
}

extern "C" void qplug_bench__hold_destroy(qplug_bench__hold *h)
{
    if (!h)
        return;
    cudaFreeHost((void *)h->host);
    free(h);
}

/* Enqueues the spin kernel on the legacy default stream (the stream every
 * timed operation of the bench uses). The previous hold must have finished
 * (the caller synchronises after each release), so clearing the flag here
 * cannot strand an earlier spin kernel. */
static int qplug_bench__hold_begin(qplug_bench__hold *h)
{
    h->host[0] = 0;
    h->host[1] = 0;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    qplug_bench__hold_kernel<<<1, 1>>>(h->dev, QPLUG_BENCH_HOLD_TIMEOUT_NS);
    return cudaGetLastError() == cudaSuccess ? 0 : -1;
}

static void qplug_bench__hold_release(qplug_bench__hold *h)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    h->host[0] = 1;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

static double qplug_bench__now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

static int qplug_bench__cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double qplug_bench__median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof v[0], qplug_bench__cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

extern "C" int qplug_bench__hold_batch(int launches_per_call)
{
    if (launches_per_call < 1 || launches_per_call > QPLUG_BENCH_HOLD_MAX_QUEUED - 3)
        return 0;
    /* One slot for the spin kernel; each rep is two events plus its launches. */
    return (QPLUG_BENCH_HOLD_MAX_QUEUED - 1) / (2 + launches_per_call);
}

extern "C" int qplug_bench__time(qplug_bench__hold *h, qplug_bench__op_fn op, void *ctx,
                                 int first_rep, int reps, int launches_per_call,
                                 qplug_bench__timing *out)
{
    out->gpu_us = out->host_us = NAN;
    out->held = false;
    out->batches = 0;
    out->not_held = 0;
    if (reps < 1 || reps > QPLUG_BENCH_MAX_REPS)
        return -1;
    int batch = reps;
    if (h) {
        batch = qplug_bench__hold_batch(launches_per_call);
        if (batch < 1)
            return -1;
    }
    cudaEvent_t ev[2 * QPLUG_BENCH_MAX_REPS];
    int made = 0;
    int rc = 0;
    double host[QPLUG_BENCH_MAX_REPS], gpu[QPLUG_BENCH_MAX_REPS];
    for (; made < 2 * reps; made++)
        if (cudaEventCreate(&ev[made]) != cudaSuccess) {
            rc = -1;
            goto done;
        }
    for (int r0 = 0; r0 < reps && !rc; r0 += batch) {
        int r1 = r0 + batch < reps ? r0 + batch : reps;
        if (h && qplug_bench__hold_begin(h)) {
            rc = -1;
            break;
        }
        for (int r = r0; r < r1 && !rc; r++) {
            cudaEventRecord(ev[2 * r], NULL);
            double t0 = qplug_bench__now_us();
            rc = op(ctx, first_rep + r);
            host[r] = qplug_bench__now_us() - t0;
            cudaEventRecord(ev[2 * r + 1], NULL);
        }
        /* Released even after a failed call, so the spin kernel never
         * waits out its timeout for nothing. */
        if (h)
            qplug_bench__hold_release(h);
        if (cudaDeviceSynchronize() != cudaSuccess)
            rc = -1;
        out->batches++;
        if (h && h->host[1] != 1)
            out->not_held++;
    }
    if (rc)
        goto done;
    for (int r = 0; r < reps; r++) {
        float ms = 0.0f;
        if (cudaEventElapsedTime(&ms, ev[2 * r], ev[2 * r + 1]) != cudaSuccess) {
            rc = -1;
            goto done;
        }
        gpu[r] = 1000.0 * ms;
    }
    out->gpu_us = qplug_bench__median(gpu, reps);
    out->host_us = qplug_bench__median(host, reps);
    out->held = h != NULL && out->not_held == 0;
done:
    for (int i = 0; i < made; i++)
        cudaEventDestroy(ev[i]);
    return rc;
}
