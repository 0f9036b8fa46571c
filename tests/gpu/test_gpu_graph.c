/* CUDA-graph capture of the plugins' decode paths through the ABI.
 *
 * For fp8_block, mxfp4 and nvfp4 linear layers (and fp8_block and nvfp4
 * grouped wo_a-like layers, the two plugins that claim grouped linear),
 * built through the core's loader and host (qplug_registry_load_file,
 * qplug_layer_create with random host tensors), at m = 1 and m = 16 (the
 * decode GEMV paths): one qplug_layer_apply is captured into a CUDA graph on
 * a non-blocking stream, then the graph is replayed several times, each time
 * with new random x written into the same input buffer and y poisoned
 * (0xFF, a BF16 NaN) first. Each replay's y must be
 *   - bit-identical to an eager qplug_layer_apply on the same x (same
 *     kernels, no atomics: the same bits), and
 *   - close to two float64 host references computed here from the weights
 *     dequantized with ml_dtypes' E4M3 table (ref_tables.h), the E2M1 values
 *     and E8M0 = 2^(b-127) of docs formats.md:
 *       ref_q: x quantized as formats.md prescribes (E4M3 per 128 along k,
 *              amax = max(|x|, 1e-4), s = amax/448, or its power of two
 *              rounded up for ue8m0 activations), exact products. What is
 *              left is fp32 accumulation and the BF16 output (~2e-3) and the
 *              rare E4M3 rounding flip where the GPU's fp32 x/s lands on the
 *              other side of a rounding boundary: bound BOUND_Q = 1e-2.
 *       ref_x: the BF16 x itself. The E4M3 activations add an RMS relative
 *              error of at most 2^-4/sqrt(3) = 0.036 (the conformance
 *              suite's derivation, tests/conformance/cases.h): bound
 *              BOUND_X = 0.05, doubled for m = 1 (one row is a noisy
 *              estimate), as the conformance driver does.
 * Exits 77 (CTest skip) without a CUDA device. The plugin files come from
 * the build (QPLUG_GRAPH_PLUGIN_* compile definitions). */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qplug/host.h"
#include "qplug/registry.h"
#include "ref_tables.h"
#include "testutil.h"

#define QPLUG_TEST_RNG_SEED 0x6a09e667f3bcc908ull
#include "gpu_test_random.h"
#include "gpu_test_mem.h"
#include "gpu_test_ref.h"

#define SKIP_CODE 77
#define BOUND_Q 1e-2
#define BOUND_X 0.05
/* Graph replays per (layer, m), each with fresh x. */
#define REPLAYS 3

typedef struct plugin_case {
    const char *plugin;
    const char *path;
    qplug_quant_scheme quant;
    bool ue8m0_act; /* the plugin's activation scale rule (formats.md) */
} plugin_case;

typedef struct shape_case {
    const char *label;
    int64_t n, k, groups;
} shape_case;

/* The host tensors of one layer; they outlive the layer (the host may keep
 * pointers into them). */
typedef struct src_tensors {
    qplug_quant_scheme quant;
    qplug_tensor t[4];
    char names[4][24];
    int count;
    int64_t rows, k;
} src_tensors;

static const qplug_tensor *src_find(void *user, const qplug_layer_desc *l, const char *slot,
                                    const char **file)
{
    src_tensors *s = user;
    (void)l;
    *file = "test_gpu_graph (random)";
    for (int i = 0; i < s->count; i++)
        if (!strcmp(s->names[i], slot))
            return &s->t[i];
    return NULL;
}

static void src_add(src_tensors *s, const char *slot, qplug_dtype dt, int ndim, int64_t r,
                    int64_t c, void *data)
{
    qplug_tensor *t = &s->t[s->count];
    memset(t, 0, sizeof *t);
    snprintf(s->names[s->count], sizeof s->names[0], "%s", slot);
    t->name = s->names[s->count];
    t->dtype = dt;
    t->ndim = ndim;
    t->shape[0] = r;
    t->shape[1] = c;
    t->device = QPLUG_DEVICE_CPU;
    t->data = data;
    s->count++;
}

/* E2M1 magnitudes by code (formats.md); bit 3 is the sign. */
static double e2m1_value(unsigned nib)
{
    static const double mag[8] = {0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0};
    return (nib & 8u) ? -mag[nib & 7u] : mag[nib & 7u];
}

/* Random weights of the scheme for [rows, k] into s, and their exact
 * dequantized values into w (row-major doubles). */
static void make_weights(src_tensors *s, qplug_quant_scheme q, int64_t rows, int64_t k, double *w)
{
    memset(s, 0, sizeof *s);
    s->quant = q;
    s->rows = rows;
    s->k = k;
    if (q == QPLUG_QUANT_FP8_BLOCK) {
        int64_t rt = (rows + 127) / 128, kt = k / 128;
        uint8_t *wq = xmalloc((size_t)(rows * k)), *sc = xmalloc((size_t)(rt * kt));
        for (int64_t i = 0; i < rows * k; i++)
            wq[i] = rand_e4m3();
        /* Tile scales 2^-10 .. 2^-6: weights of order 1e-1 at most. */
        for (int64_t i = 0; i < rt * kt; i++)
            sc[i] = (uint8_t)(117 + rng_next() % 5);
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < k; c++)
                w[r * k + c] = ref_e4m3[wq[r * k + c]] *
                               ldexp(1.0, (int)sc[(r / 128) * kt + c / 128] - 127);
        src_add(s, "weight", QPLUG_DT_F8_E4M3, 2, rows, k, wq);
        src_add(s, "scale", QPLUG_DT_F8_E8M0, 2, rt, kt, sc);
        return;
    }
    bool nv = q == QPLUG_QUANT_NVFP4;
    int64_t per = nv ? 16 : 32;
    uint8_t *wq = xmalloc((size_t)(rows * k / 2)), *sc = xmalloc((size_t)(rows * k / per));
    for (int64_t i = 0; i < rows * k / 2; i++)
        wq[i] = (uint8_t)rng_next();
    for (int64_t i = 0; i < rows * k / per; i++)
        /* NVFP4: positive E4M3 scales 0.25 .. 1.875 (codes 0x28..0x3f);
         * MXFP4: E8M0 2^-9 .. 2^-5. */
        sc[i] = nv ? (uint8_t)(0x28 + rng_next() % 0x18) : (uint8_t)(118 + rng_next() % 5);
    float global = 0.0123f;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < k; c++) {
            uint8_t b = wq[r * (k / 2) + c / 2];
            double e = e2m1_value((c & 1) ? (unsigned)(b >> 4) : (unsigned)(b & 15u));
            uint8_t sb = sc[r * (k / per) + c / per];
            w[r * k + c] = nv ? e * ref_e4m3[sb] * (double)global
                              : e * ldexp(1.0, (int)sb - 127);
        }
    src_add(s, "weight", QPLUG_DT_U8, 2, rows, k / 2, wq);
    if (nv) {
        float *g = xmalloc(sizeof *g), *in = xmalloc(sizeof *in);
        *g = global;
        *in = 1.0f;
        src_add(s, "weight_scale", QPLUG_DT_F8_E4M3, 2, rows, k / per, sc);
        src_add(s, "weight_scale_2", QPLUG_DT_F32, 0, 0, 0, g);
        src_add(s, "input_scale", QPLUG_DT_F32, 0, 0, 0, in);
    } else {
        src_add(s, "scale", QPLUG_DT_F8_E8M0, 2, rows, k / per, sc);
    }
}

static void free_weights(src_tensors *s)
{
    for (int i = 0; i < s->count; i++)
        free(s->t[i].data);
    s->count = 0;
}

/* x [m, width] as formats.md quantizes it: per row and 128-block, E4M3
 * codes times the block scale, as doubles. */
static void quantize_x(const uint16_t *x, int64_t m, int64_t width, bool ue8m0, double *xq)
{
    for (int64_t i = 0; i < m; i++)
        for (int64_t b = 0; b < width; b += 128) {
            double amax = 1e-4;
            for (int64_t c = b; c < b + 128; c++)
                amax = fmax(amax, fabs((double)bf16_value(x[i * width + c])));
            /* The GPU forms amax / 448 in fp32. */
            double s = (double)((float)amax / 448.0f);
            if (ue8m0)
                s = ldexp(1.0, (int)ceil(log2(s)));
            for (int64_t c = b; c < b + 128; c++)
                xq[i * width + c] = ref_e4m3_round((double)bf16_value(x[i * width + c]) / s) * s;
        }
}

/* y[i, g*n + j] = sum_c a[i, g*k + c] * w[(g*n + j), c]. */
static void reference(const double *a, const double *w, int64_t m, int64_t n, int64_t k,
                      int64_t G, double *y)
{
    for (int64_t i = 0; i < m; i++)
        for (int64_t g = 0; g < G; g++)
            for (int64_t j = 0; j < n; j++) {
                const double *wr = w + (g * n + j) * k, *ar = a + i * G * k + g * k;
                double acc = 0.0;
                for (int64_t c = 0; c < k; c++)
                    acc += ar[c] * wr[c];
                y[i * G * n + g * n + j] = acc;
            }
}

static qplug_status apply(qplug_layer_inst *l, void *x, void *y, int64_t m, int64_t in,
                          int64_t out, cudaStream_t s, qplug_err *err)
{
    qplug_tensor tx, ty;
    memset(&tx, 0, sizeof tx);
    tx.dtype = QPLUG_DT_BF16;
    tx.ndim = 2;
    tx.device = QPLUG_DEVICE_CUDA;
    tx.shape[0] = m;
    tx.shape[1] = in;
    ty = tx;
    ty.shape[1] = out;
    tx.data = x;
    ty.data = y;
    qplug_apply_args a;
    memset(&a, 0, sizeof a);
    a.struct_size = sizeof a;
    a.op = QPLUG_OP_FORWARD;
    a.precision = QPLUG_PRECISION_NATIVE;
    a.x = &tx;
    a.y = &ty;
    a.stream = s;
    return qplug_layer_apply(l, &a, err);
}

/* Random BF16 x [m, width]: normal, with a different magnitude per row and
 * per 128-block (so the block scales differ), never all zero. */
static void random_x(uint16_t *x, int64_t m, int64_t width)
{
    for (int64_t i = 0; i < m; i++)
        for (int64_t b = 0; b < width; b += 128) {
            double mag = ldexp(1.0, (int)(rng_next() % 7) - 3);
            for (int64_t c = b; c < b + 128; c++)
                x[i * width + c] = bf16_bits((float)(mag * rng_normal()));
        }
}

/* One (plugin, shape, m): capture, replays with fresh x, checks. */
static void run_case(qplug_layer_inst *l, const plugin_case *pc, const shape_case *sc,
                     const double *w, int64_t m)
{
    int64_t G = sc->groups, n = sc->n, k = sc->k, in = G * k, out = G * n;
    size_t xbytes = (size_t)(m * in) * 2, ybytes = (size_t)(m * out) * 2;
    uint16_t *x = xmalloc(xbytes), *yg = xmalloc(ybytes), *ye = xmalloc(ybytes);
    double *xq = xmalloc((size_t)(m * in) * sizeof(double));
    double *xd = xmalloc((size_t)(m * in) * sizeof(double));
    double *rq = xmalloc((size_t)(m * out) * sizeof(double));
    double *rx = xmalloc((size_t)(m * out) * sizeof(double));
    void *dx = dev_alloc_poison(xbytes), *dy = dev_alloc_poison(ybytes);
    cudaStream_t s = NULL;
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    qplug_err err;
    memset(&err, 0, sizeof err);
    double bound_x = BOUND_X * (m == 1 ? 2.0 : 1.0);
    char what[160];
    snprintf(what, sizeof what, "%s %s m=%lld", pc->plugin, sc->label, (long long)m);
    if (!cuda_ok(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "stream"))
        exit(1);

    /* An eager call first: loads the kernels and sets up the stream-ordered
     * memory pool outside the capture. */
    random_x(x, m, in);
    CHECK(cuda_ok(cudaMemcpy(dx, x, xbytes, cudaMemcpyHostToDevice), "upload x"));
    qplug_status st = apply(l, dx, dy, m, in, out, s, &err);
    CHECKF(st == QPLUG_OK, "%s: eager warm-up: %s", what, err.msg);
    CHECK(cuda_ok(cudaStreamSynchronize(s), "warm-up"));

    /* Global capture mode: a host synchronisation, a synchronous copy or a
     * plain allocation inside apply() would invalidate the capture. */
    CHECK(cuda_ok(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), "begin capture"));
    st = apply(l, dx, dy, m, in, out, s, &err);
    cudaError_t ce = cudaStreamEndCapture(s, &graph);
    CHECKF(st == QPLUG_OK && ce == cudaSuccess, "%s: capture: %s / %s", what,
           st == QPLUG_OK ? "apply ok" : err.msg, cudaGetErrorString(ce));
    if (st != QPLUG_OK || ce != cudaSuccess || !graph)
        goto done;
    ce = cudaGraphInstantiate(&exec, graph, 0);
    CHECKF(ce == cudaSuccess, "%s: instantiate: %s", what, cudaGetErrorString(ce));
    if (ce != cudaSuccess)
        goto done;

    for (int rep = 0; rep < REPLAYS; rep++) {
        random_x(x, m, in);
        /* The same input buffer the graph was captured with. */
        CHECK(cuda_ok(cudaMemcpyAsync(dx, x, xbytes, cudaMemcpyHostToDevice, s), "upload x"));
        CHECK(cuda_ok(cudaMemsetAsync(dy, 0xff, ybytes, s), "poison y"));
        CHECK(cuda_ok(cudaGraphLaunch(exec, s), "graph launch"));
        CHECK(cuda_ok(cudaStreamSynchronize(s), "graph replay"));
        download(yg, dy, ybytes);
        CHECK(cuda_ok(cudaMemsetAsync(dy, 0xff, ybytes, s), "poison y"));
        st = apply(l, dx, dy, m, in, out, s, &err);
        CHECKF(st == QPLUG_OK, "%s: eager call: %s", what, err.msg);
        CHECK(cuda_ok(cudaStreamSynchronize(s), "eager call"));
        download(ye, dy, ybytes);

        size_t diff = 0;
        for (size_t i = 0; i < ybytes / 2; i++)
            diff += yg[i] != ye[i];
        CHECKF(diff == 0, "%s replay %d: %zu of %zu outputs differ from the eager call", what,
               rep, diff, ybytes / 2);

        for (int64_t i = 0; i < m * in; i++)
            xd[i] = bf16_value(x[i]);
        quantize_x(x, m, in, pc->ue8m0_act, xq);
        reference(xq, w, m, n, k, G, rq);
        reference(xd, w, m, n, k, G, rx);
        double eq = rel_l2_bf16(yg, rq, (size_t)(m * out));
        double ex = rel_l2_bf16(yg, rx, (size_t)(m * out));
        printf("  %-30s replay %d: rel L2 %.3g vs quantized-x ref (bound %.3g), %.3g vs "
               "BF16-x ref (bound %.3g), %s eager\n",
               what, rep, eq, BOUND_Q, ex, bound_x, diff ? "DIFFERS from" : "bit-identical to");
        CHECKF(eq <= BOUND_Q, "%s replay %d: rel L2 %.3g vs the quantized-x reference > %.3g",
               what, rep, eq, BOUND_Q);
        CHECKF(ex <= bound_x, "%s replay %d: rel L2 %.3g vs the BF16-x reference > %.3g", what,
               rep, ex, bound_x);
    }
done:
    if (exec)
        cudaGraphExecDestroy(exec);
    if (graph)
        cudaGraphDestroy(graph);
    cudaStreamDestroy(s);
    cudaFree(dx);
    cudaFree(dy);
    free(x);
    free(yg);
    free(ye);
    free(xq);
    free(xd);
    free(rq);
    free(rx);
}

static void run_plugin(qplug_registry *reg, qplug_runtime *rt, const plugin_case *pc,
                       const shape_case *sc)
{
    const qplug_plugin *p = qplug_registry_find(reg, pc->plugin);
    CHECKF(p != NULL, "plugin %s is not loaded", pc->plugin);
    if (!p)
        return;
    qplug_layer_desc d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    d.name = sc->groups > 1 ? "layers.0.attn.wo_a" : "layers.0.attn.wq_a";
    d.kind = sc->groups > 1 ? QPLUG_LAYER_GROUPED_LINEAR : QPLUG_LAYER_LINEAR;
    d.quant = pc->quant;
    d.weight_dtype = pc->quant == QPLUG_QUANT_FP8_BLOCK ? QPLUG_DT_F8_E4M3 : QPLUG_DT_U8;
    d.scale_dtype = pc->quant == QPLUG_QUANT_NVFP4 ? QPLUG_DT_F8_E4M3 : QPLUG_DT_F8_E8M0;
    d.device = QPLUG_DEVICE_CUDA;
    d.n = sc->n;
    d.k = sc->k;
    d.groups = (int32_t)sc->groups;
    CHECKF(p->score(&d) > 0, "%s does not claim %s", pc->plugin, sc->label);
    if (p->score(&d) <= 0)
        return;
    int64_t rows = sc->groups * sc->n;
    double *w = xmalloc((size_t)(rows * sc->k) * sizeof(double));
    src_tensors src;
    make_weights(&src, pc->quant, rows, sc->k, w);
    qplug_layer_inst *l = NULL;
    qplug_err err;
    memset(&err, 0, sizeof err);
    qplug_status st = qplug_layer_create(rt, p, &d, src_find, &src, &l, &err);
    CHECKF(st == QPLUG_OK, "%s %s: layer_create: %s", pc->plugin, sc->label, err.msg);
    if (st == QPLUG_OK) {
        run_case(l, pc, sc, w, 1);
        run_case(l, pc, sc, w, 16);
        qplug_layer_destroy(l);
    }
    free_weights(&src);
    free(w);
}

int main(void)
{
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev < 1) {
        printf("no CUDA device: skipped\n");
        return SKIP_CODE;
    }
    const plugin_case plugins[] = {
        {"fp8_block", QPLUG_GRAPH_PLUGIN_FP8_BLOCK, QPLUG_QUANT_FP8_BLOCK, true},
        {"mxfp4", QPLUG_GRAPH_PLUGIN_MXFP4, QPLUG_QUANT_MXFP4, true},
        {"nvfp4", QPLUG_GRAPH_PLUGIN_NVFP4, QPLUG_QUANT_NVFP4, false},
    };
    /* A wq_a-like layer, a wide one (many row tiles: where the GEMV may
     * quantize x once beforehand, into stream-ordered scratch that the
     * capture must hold), and a grouped wo_a-like layer (all groups in one
     * GEMV launch, in place). */
    const shape_case linear[] = {
        {"linear 1024x4096", 1024, 4096, 1},
        {"linear 8192x1024", 8192, 1024, 1},
    };
    const shape_case grouped = {"grouped 8x512x1024", 512, 1024, 8};

    qplug_registry *reg = NULL;
    qplug_runtime *rt = NULL;
    qplug_err err;
    memset(&err, 0, sizeof err);
    if (qplug_registry_create(&reg, &err) != QPLUG_OK) {
        fprintf(stderr, "registry: %s\n", err.msg);
        return 1;
    }
    for (size_t i = 0; i < sizeof plugins / sizeof plugins[0]; i++) {
        qplug_status st = qplug_registry_load_file(reg, plugins[i].path, &err);
        CHECKF(st == QPLUG_OK, "loading %s: %s", plugins[i].path, err.msg);
    }
    if (qplug_runtime_create(NULL, QPLUG_DEVICE_CUDA, 1, &rt, &err) != QPLUG_OK) {
        fprintf(stderr, "runtime: %s\n", err.msg);
        qplug_registry_destroy(reg);
        return 1;
    }
    for (size_t i = 0; i < sizeof plugins / sizeof plugins[0]; i++) {
        for (size_t j = 0; j < sizeof linear / sizeof linear[0]; j++)
            run_plugin(reg, rt, &plugins[i], &linear[j]);
        if (plugins[i].quant != QPLUG_QUANT_MXFP4)
            run_plugin(reg, rt, &plugins[i], &grouped);
    }
    CHECK(cuda_ok(cudaDeviceSynchronize(), "final sync"));
    qplug_runtime_destroy(rt);
    qplug_registry_destroy(reg);
    return test_done();
}
