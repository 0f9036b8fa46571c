/* The host runtime (thread pool, device handles, policy options) and layer
 * instances: the core side of the plugin ABI. Every qplug_host_api slot
 * takes the layer instance as its context, so messages and declarations
 * are attributed to the layer and plugin that made them. */
#include "qplug/host.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef QPLUG_HAVE_CUDA
#include <cublasLt.h>
#include <cuda_runtime_api.h>
#endif

#include "threadpool.h"

/* More threads than this is a configuration mistake, not a machine. */
#define QPLUG__MAX_THREADS 1024
/* CPU allocations are aligned for AVX-512 loads and cache lines. */
#define QPLUG__CPU_ALIGN 64

struct qplug_runtime {
    const qplug_policy *pol;
    qplug_device_kind device;
    qplug__pool *pool;
#ifdef QPLUG_HAVE_CUDA
    /* The cuBLASLt handle is created on first use: CPU-only runs of a CUDA
     * build never touch the driver. */
    pthread_mutex_t cuda_mu;
    cublasLtHandle_t lt;
    bool lt_ready;
#endif
};

qplug_status qplug_runtime_create(const qplug_policy *pol, qplug_device_kind device, int threads,
                                  qplug_runtime **out, qplug_err *err)
{
    if (!out)
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT, "qplug_runtime_create: out is NULL");
    *out = NULL;
    if (device != QPLUG_DEVICE_CPU && device != QPLUG_DEVICE_CUDA)
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT, "runtime: unknown device kind %d",
                             (int)device);
#ifndef QPLUG_HAVE_CUDA
    if (device == QPLUG_DEVICE_CUDA)
        return qplug_err_set(err, QPLUG_ERR_UNSUPPORTED,
                             "runtime: device cuda requested but this build has no CUDA");
#endif
    if (threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 0 ? (int)(n < QPLUG__MAX_THREADS ? n : QPLUG__MAX_THREADS) : 1;
    }
    if (threads > QPLUG__MAX_THREADS)
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT, "runtime: %d threads is more than the %d allowed",
                             threads, QPLUG__MAX_THREADS);
    qplug_runtime *rt = calloc(1, sizeof *rt);
    if (!rt)
        return qplug_err_set(err, QPLUG_ERR_NOMEM, "runtime: out of memory");
    rt->pol = pol;
    rt->device = device;
    qplug_status st = qplug__pool_create(threads, &rt->pool, err);
    if (st != QPLUG_OK) {
        free(rt);
        return st;
    }
#ifdef QPLUG_HAVE_CUDA
    if (pthread_mutex_init(&rt->cuda_mu, NULL) != 0) {
        qplug__pool_destroy(rt->pool);
        free(rt);
        return qplug_err_set(err, QPLUG_ERR_INTERNAL, "runtime: cannot create a mutex");
    }
#endif
    *out = rt;
    return QPLUG_OK;
}

void qplug_runtime_destroy(qplug_runtime *rt)
{
    if (!rt)
        return;
#ifdef QPLUG_HAVE_CUDA
    if (rt->lt_ready)
        cublasLtDestroy(rt->lt);
    pthread_mutex_destroy(&rt->cuda_mu);
#endif
    qplug__pool_destroy(rt->pool);
    free(rt);
}

qplug_device_kind qplug_runtime_device(const qplug_runtime *rt)
{
    return rt->device;
}

int qplug_runtime_threads(const qplug_runtime *rt)
{
    return qplug__pool_threads(rt->pool);
}

void qplug_runtime_parallel_for(qplug_runtime *rt, int64_t n, qplug_range_fn fn, void *arg)
{
    qplug__pool_run(rt->pool, n, fn, arg);
}

/* ------------------------------------------------------------------------ */
/* Layer instances                                                          */
/* ------------------------------------------------------------------------ */

/* Which plugin call is in progress; the host table checks it so a plugin
 * cannot declare after create_weights or read weights before binding. */
typedef enum qplug__phase {
    QPLUG__PHASE_CREATE = 0,
    QPLUG__PHASE_BIND = 1,
    QPLUG__PHASE_PROCESS = 2,
    QPLUG__PHASE_READY = 3
} qplug__phase;

typedef struct qplug__decl {
    char *slot;
    uint32_t dtype_mask;
    int32_t ndim;
    int64_t shape[QPLUG_MAX_DIMS];
    uint32_t flags;
    bool bound;
    /* The checkpoint tensor seen in the declared dtype and shape; shares
     * the source tensor's name and data. */
    qplug_tensor view;
} qplug__decl;

struct qplug_layer_inst {
    qplug_runtime *rt;
    const qplug_plugin *plugin;
    qplug_layer_desc desc;
    char *name;
    qplug_host host;
    qplug__phase phase;

    qplug__decl *decls;
    size_t n_decls, cap_decls;
    /* The first failure of a host call during create_weights, kept so a
     * plugin that ignores declare()'s status still fails the layer. */
    qplug_status declare_status;
    char declare_msg[QPLUG_ERR_MSG_MAX];

    void *state;
    bool has_state;

    /* The message of the last host->api->error() call. */
    bool has_msg;
    char msg[QPLUG_ERR_MSG_MAX];
};

static void qplug__host_log(void *ctx, qplug_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static qplug_status qplug__host_error(void *ctx, qplug_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void qplug__host_log(void *ctx, qplug_log_level level, const char *fmt, ...)
{
    qplug_layer_inst *l = ctx;
    char line[QPLUG_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (level < QPLUG_LOG_DEBUG || level > QPLUG_LOG_ERROR)
        level = QPLUG_LOG_ERROR;
    qplug_log(level, "%s: %s: %s", l->plugin->name, l->name, line);
}

static qplug_status qplug__host_error(void *ctx, qplug_status status, const char *fmt, ...)
{
    qplug_layer_inst *l = ctx;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(l->msg, sizeof l->msg, fmt, ap);
    va_end(ap);
    l->has_msg = true;
    return status;
}

/* A shape as "[2, 3]" for messages. */
static void qplug__shape_str(char *buf, size_t len, int32_t ndim, const int64_t *shape)
{
    size_t used = 0;
    int w = snprintf(buf, len, "[");
    used = w > 0 ? (size_t)w : 0;
    for (int32_t i = 0; i < ndim && used < len; i++) {
        w = snprintf(buf + used, len - used, i ? ", %lld" : "%lld", (long long)shape[i]);
        used += w > 0 ? (size_t)w : 0;
    }
    if (used < len)
        snprintf(buf + used, len - used, "]");
}

/* The set of dtypes in a mask as "BF16|F32" for messages. */
static void qplug__mask_str(char *buf, size_t len, uint32_t mask)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int dt = 0; dt < QPLUG_DT_COUNT && used < len; dt++) {
        if (!(mask & QPLUG_DT_BIT(dt)))
            continue;
        int w = snprintf(buf + used, len - used, used ? "|%s" : "%s",
                         qplug_dtype_name((qplug_dtype)dt));
        used += w > 0 ? (size_t)w : 0;
    }
}

/* Records the first declare() failure and returns it through error(). */
static qplug_status qplug__declare_fail(qplug_layer_inst *l, qplug_status st, const char *fmt,
                                        const char *slot) __attribute__((format(printf, 3, 0)));

static qplug_status qplug__declare_fail(qplug_layer_inst *l, qplug_status st, const char *fmt,
                                        const char *slot)
{
    if (l->declare_status == QPLUG_OK) {
        l->declare_status = st;
        snprintf(l->declare_msg, sizeof l->declare_msg, fmt, slot ? slot : "(null)");
    }
    return st;
}

static qplug_status qplug__host_declare(void *ctx, const char *slot, uint32_t dtype_mask,
                                        int32_t ndim, const int64_t *shape, uint32_t flags)
{
    qplug_layer_inst *l = ctx;
    if (l->phase != QPLUG__PHASE_CREATE)
        return qplug__declare_fail(l, QPLUG_ERR_ARGUMENT,
                                   "declare(\"%s\") called outside create_weights", slot);
    if (!slot || !*slot)
        return qplug__declare_fail(l, QPLUG_ERR_ARGUMENT, "declare(\"%s\"): empty slot name",
                                   "");
    if (ndim < 0 || ndim > QPLUG_MAX_DIMS || (ndim > 0 && !shape))
        return qplug__declare_fail(l, QPLUG_ERR_ARGUMENT,
                                   "declare(\"%s\"): ndim must be 0 to 4 with a shape", slot);
    for (int32_t i = 0; i < ndim; i++)
        if (shape[i] < 0)
            return qplug__declare_fail(l, QPLUG_ERR_ARGUMENT,
                                       "declare(\"%s\"): negative dimension", slot);
    if (dtype_mask == 0 || (dtype_mask >> QPLUG_DT_COUNT) != 0)
        return qplug__declare_fail(l, QPLUG_ERR_ARGUMENT,
                                   "declare(\"%s\"): dtype mask empty or beyond the known dtypes",
                                   slot);
    for (size_t i = 0; i < l->n_decls; i++)
        if (strcmp(l->decls[i].slot, slot) == 0)
            return qplug__declare_fail(l, QPLUG_ERR_DUPLICATE, "slot \"%s\" declared twice", slot);
    if (l->n_decls == l->cap_decls) {
        size_t nc = l->cap_decls ? l->cap_decls * 2 : 8;
        qplug__decl *nv = realloc(l->decls, nc * sizeof *nv);
        if (!nv)
            return qplug__declare_fail(l, QPLUG_ERR_NOMEM, "declare(\"%s\"): out of memory", slot);
        l->decls = nv;
        l->cap_decls = nc;
    }
    qplug__decl *d = &l->decls[l->n_decls];
    memset(d, 0, sizeof *d);
    d->slot = strdup(slot);
    if (!d->slot)
        return qplug__declare_fail(l, QPLUG_ERR_NOMEM, "declare(\"%s\"): out of memory", slot);
    d->dtype_mask = dtype_mask;
    d->ndim = ndim;
    for (int32_t i = 0; i < ndim; i++)
        d->shape[i] = shape[i];
    d->flags = flags;
    l->n_decls++;
    return QPLUG_OK;
}

static const qplug_tensor *qplug__host_weight(void *ctx, const char *slot)
{
    qplug_layer_inst *l = ctx;
    if (!slot || l->phase < QPLUG__PHASE_PROCESS)
        return NULL;
    for (size_t i = 0; i < l->n_decls; i++)
        if (strcmp(l->decls[i].slot, slot) == 0)
            return l->decls[i].bound ? &l->decls[i].view : NULL;
    return NULL;
}

static void *qplug__host_alloc(void *ctx, size_t bytes, qplug_device_kind device)
{
    (void)ctx;
    if (device == QPLUG_DEVICE_CPU) {
        /* aligned_alloc wants a multiple of the alignment; zero bytes still
         * gets a unique pointer so callers can tell success from failure. */
        if (bytes > SIZE_MAX - QPLUG__CPU_ALIGN)
            return NULL;
        size_t rounded = (bytes + QPLUG__CPU_ALIGN - 1) / QPLUG__CPU_ALIGN * QPLUG__CPU_ALIGN;
        return aligned_alloc(QPLUG__CPU_ALIGN, rounded ? rounded : QPLUG__CPU_ALIGN);
    }
#ifdef QPLUG_HAVE_CUDA
    if (device == QPLUG_DEVICE_CUDA) {
        void *p = NULL;
        if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess)
            return NULL;
        return p;
    }
#endif
    return NULL;
}

static void qplug__host_free(void *ctx, void *ptr, qplug_device_kind device)
{
    (void)ctx;
    if (!ptr)
        return;
    if (device == QPLUG_DEVICE_CPU) {
        free(ptr);
        return;
    }
#ifdef QPLUG_HAVE_CUDA
    if (device == QPLUG_DEVICE_CUDA)
        cudaFree(ptr);
#endif
}

static void qplug__host_parallel_for(void *ctx, int64_t n, qplug_range_fn fn, void *arg)
{
    qplug_layer_inst *l = ctx;
    qplug_runtime_parallel_for(l->rt, n, fn, arg);
}

static const char *qplug__host_option(void *ctx, const char *section, const char *key)
{
    qplug_layer_inst *l = ctx;
    if (!l->rt->pol || !section || !key)
        return NULL;
    return qplug_policy_option(l->rt->pol, section, key);
}

static void *qplug__host_cublaslt(void *ctx)
{
#ifdef QPLUG_HAVE_CUDA
    qplug_layer_inst *l = ctx;
    qplug_runtime *rt = l->rt;
    if (rt->device != QPLUG_DEVICE_CUDA)
        return NULL;
    pthread_mutex_lock(&rt->cuda_mu);
    if (!rt->lt_ready && cublasLtCreate(&rt->lt) == CUBLAS_STATUS_SUCCESS)
        rt->lt_ready = true;
    void *h = rt->lt_ready ? (void *)rt->lt : NULL;
    pthread_mutex_unlock(&rt->cuda_mu);
    return h;
#else
    (void)ctx;
    return NULL;
#endif
}

static void *qplug__host_nccl_comm(void *ctx)
{
    /* Expert parallelism is not wired into the runtime yet: one rank, so
     * the documented value is NULL. */
    (void)ctx;
    return NULL;
}

static int qplug__host_cuda_device(void *ctx)
{
#ifdef QPLUG_HAVE_CUDA
    qplug_layer_inst *l = ctx;
    int dev = -1;
    if (l->rt->device != QPLUG_DEVICE_CUDA || cudaGetDevice(&dev) != cudaSuccess)
        return -1;
    return dev;
#else
    (void)ctx;
    return -1;
#endif
}

static const qplug_host_api qplug__host_api = {
    .struct_size = sizeof(qplug_host_api),
    .log = qplug__host_log,
    .error = qplug__host_error,
    .declare = qplug__host_declare,
    .weight = qplug__host_weight,
    .alloc = qplug__host_alloc,
    .free = qplug__host_free,
    .parallel_for = qplug__host_parallel_for,
    .option = qplug__host_option,
    .cublaslt = qplug__host_cublaslt,
    .nccl_comm = qplug__host_nccl_comm,
    .cuda_device = qplug__host_cuda_device,
};

/* Turns a plugin failure into the caller's error, prefixed with the plugin
 * and layer names. A status outside the table becomes ERR_PLUGIN. */
static qplug_status qplug__plugin_fail(qplug_layer_inst *l, qplug_status st, const char *what,
                                       qplug_err *err)
{
    if ((int)st <= (int)QPLUG_OK || (int)st >= (int)QPLUG_STATUS_COUNT) {
        return qplug_err_set(err, QPLUG_ERR_PLUGIN, "%s: %s: %s returned the unknown status %d",
                             l->plugin->name, l->name, what, (int)st);
    }
    return qplug_err_set(err, st, "%s: %s: %s", l->plugin->name, l->name,
                         l->has_msg ? l->msg : qplug_status_message(st));
}

static bool qplug__same_shape(int32_t nd, const int64_t *a, int32_t nd2, const int64_t *b)
{
    if (nd != nd2)
        return false;
    for (int32_t i = 0; i < nd; i++)
        if (a[i] != b[i])
            return false;
    return true;
}

/* True when packed FP4 stored as `t` can be seen as the declaration `d`:
 * a checkpoint F4 [.., k] as a declared U8/I8 [.., k/2], or a checkpoint
 * U8/I8 [.., k/2] as a declared F4 [.., k]. *as is the dtype to present. */
static bool qplug__fp4_view(const qplug__decl *d, const qplug_tensor *t, qplug_dtype *as)
{
    const uint32_t bytes_mask = QPLUG_DT_BIT(QPLUG_DT_U8) | QPLUG_DT_BIT(QPLUG_DT_I8);
    if (t->ndim != d->ndim || t->ndim < 1)
        return false;
    int32_t last = t->ndim - 1;
    for (int32_t i = 0; i < last; i++)
        if (t->shape[i] != d->shape[i])
            return false;
    if (t->dtype == QPLUG_DT_E2M1 && (d->dtype_mask & bytes_mask)) {
        if (t->shape[last] != 2 * d->shape[last])
            return false;
        *as = (d->dtype_mask & QPLUG_DT_BIT(QPLUG_DT_U8)) ? QPLUG_DT_U8 : QPLUG_DT_I8;
        return true;
    }
    if ((t->dtype == QPLUG_DT_U8 || t->dtype == QPLUG_DT_I8) &&
        (d->dtype_mask & QPLUG_DT_BIT(QPLUG_DT_E2M1))) {
        if (d->shape[last] != 2 * t->shape[last])
            return false;
        *as = QPLUG_DT_E2M1;
        return true;
    }
    return false;
}

/* Whether `t`'s dtype could satisfy `d` directly or through an FP4 view. */
static bool qplug__dtype_acceptable(const qplug__decl *d, const qplug_tensor *t)
{
    const uint32_t bytes_mask = QPLUG_DT_BIT(QPLUG_DT_U8) | QPLUG_DT_BIT(QPLUG_DT_I8);
    if (d->dtype_mask & QPLUG_DT_BIT(t->dtype))
        return true;
    if (t->dtype == QPLUG_DT_E2M1 && (d->dtype_mask & bytes_mask))
        return true;
    return (t->dtype == QPLUG_DT_U8 || t->dtype == QPLUG_DT_I8) &&
           (d->dtype_mask & QPLUG_DT_BIT(QPLUG_DT_E2M1));
}

/* Binds one declaration through the tensor source. */
static qplug_status qplug__bind(qplug_layer_inst *l, qplug__decl *d, qplug_tensor_source_fn src,
                                void *src_user, qplug_err *err)
{
    const char *file = NULL;
    const qplug_tensor *t = src(src_user, &l->desc, d->slot, &file);
    const char *where = file ? file : "the checkpoint";
    if (!t) {
        if (d->flags & QPLUG_DECL_OPTIONAL)
            return QPLUG_OK;
        return qplug_err_set(err, QPLUG_ERR_NOT_FOUND, "layer %s: missing tensor %s in %s",
                             l->name, d->slot, where);
    }
    const char *tname = t->name ? t->name : d->slot;
    if (t->ndim < 0 || t->ndim > QPLUG_MAX_DIMS || (int)t->dtype < 0 ||
        (int)t->dtype >= (int)QPLUG_DT_COUNT)
        return qplug_err_set(err, QPLUG_ERR_FORMAT,
                             "layer %s: tensor %s in %s has an invalid descriptor", l->name,
                             tname, where);
    if (t->device != QPLUG_DEVICE_CPU)
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT,
                             "layer %s: tensor %s in %s is not in host memory", l->name, tname,
                             where);

    d->view = *t;
    if ((d->dtype_mask & QPLUG_DT_BIT(t->dtype)) &&
        qplug__same_shape(t->ndim, t->shape, d->ndim, d->shape)) {
        d->bound = true;
        return QPLUG_OK;
    }
    qplug_dtype as;
    if (qplug__fp4_view(d, t, &as)) {
        d->view.dtype = as;
        for (int32_t i = 0; i < d->ndim; i++)
            d->view.shape[i] = d->shape[i];
        d->bound = true;
        return QPLUG_OK;
    }
    char want[128], got[128];
    if (!qplug__dtype_acceptable(d, t)) {
        qplug__mask_str(want, sizeof want, d->dtype_mask);
        return qplug_err_set(err, QPLUG_ERR_DTYPE,
                             "layer %s: tensor %s in %s has dtype %s, expected %s", l->name,
                             tname, where, qplug_dtype_name(t->dtype), want);
    }
    /* Dtypes are named too: packed FP4 counts elements as F4 and bytes as
     * U8/I8, so the bare numbers alone could look equal. */
    char want_dt[96];
    qplug__mask_str(want_dt, sizeof want_dt, d->dtype_mask);
    qplug__shape_str(want, sizeof want, d->ndim, d->shape);
    qplug__shape_str(got, sizeof got, t->ndim, t->shape);
    return qplug_err_set(err, QPLUG_ERR_SHAPE,
                         "layer %s: tensor %s in %s has shape %s %s, expected %s %s (slot %s)",
                         l->name, tname, where, qplug_dtype_name(t->dtype), got, want_dt, want,
                         d->slot);
}

qplug_status qplug_layer_create(qplug_runtime *rt, const qplug_plugin *plugin,
                                const qplug_layer_desc *desc, qplug_tensor_source_fn src,
                                void *src_user, qplug_layer_inst **out, qplug_err *err)
{
    if (!out)
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT, "qplug_layer_create: out is NULL");
    *out = NULL;
    if (!rt || !plugin || !desc || !src || !desc->name)
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT, "qplug_layer_create: NULL argument");
    if (desc->device != QPLUG_DEVICE_CPU && desc->device != QPLUG_DEVICE_CUDA)
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT, "layer %s: unknown device kind %d",
                             desc->name, (int)desc->device);
    if (!(plugin->devices & (1u << (unsigned)desc->device)))
        return qplug_err_set(err, QPLUG_ERR_UNSUPPORTED, "%s: %s: the plugin does not run on %s",
                             plugin->name, desc->name,
                             desc->device == QPLUG_DEVICE_CUDA ? "cuda" : "cpu");

    qplug_layer_inst *l = calloc(1, sizeof *l);
    if (!l)
        return qplug_err_set(err, QPLUG_ERR_NOMEM, "layer %s: out of memory", desc->name);
    l->name = strdup(desc->name);
    if (!l->name) {
        free(l);
        return qplug_err_set(err, QPLUG_ERR_NOMEM, "layer %s: out of memory", desc->name);
    }
    l->rt = rt;
    l->plugin = plugin;
    /* Copy only what the caller's struct holds; the rest stays zero. */
    size_t n = desc->struct_size && desc->struct_size < sizeof l->desc ? desc->struct_size
                                                                        : sizeof l->desc;
    memcpy(&l->desc, desc, n);
    l->desc.struct_size = sizeof l->desc;
    l->desc.name = l->name;
    l->host.api = &qplug__host_api;
    l->host.ctx = l;

    l->phase = QPLUG__PHASE_CREATE;
    qplug_status st = plugin->create_weights(&l->host, &l->desc);
    if (st != QPLUG_OK) {
        st = qplug__plugin_fail(l, st, "create_weights", err);
        goto fail;
    }
    if (l->declare_status != QPLUG_OK) {
        st = qplug_err_set(err, l->declare_status, "%s: %s: %s", plugin->name, l->name,
                           l->declare_msg);
        goto fail;
    }

    l->phase = QPLUG__PHASE_BIND;
    for (size_t i = 0; i < l->n_decls; i++) {
        st = qplug__bind(l, &l->decls[i], src, src_user, err);
        if (st != QPLUG_OK)
            goto fail;
    }

    l->phase = QPLUG__PHASE_PROCESS;
    l->has_msg = false;
    void *state = NULL;
    st = plugin->process_after_loading(&l->host, &l->desc, &state);
    if (st != QPLUG_OK) {
        /* The ABI says state stays NULL on failure; free it anyway rather
         * than leak when a plugin gets that wrong. */
        if (state)
            plugin->destroy(&l->host, state);
        st = qplug__plugin_fail(l, st, "process_after_loading", err);
        goto fail;
    }
    l->state = state;
    l->has_state = true;
    l->phase = QPLUG__PHASE_READY;
    *out = l;
    return QPLUG_OK;

fail:
    qplug_layer_destroy(l);
    return st;
}

/* Callers built against ABI 1.1 pass args that end with `stream`; they
 * keep working, with x_scale read as NULL. */
#define QPLUG__ARGS_1_1_SIZE (offsetof(qplug_apply_args, stream) + sizeof(void *))

/* The checks of a pre-quantized x (plugin.h, qplug_apply_args.x_scale)
 * that need no knowledge of the layer's shape: the plugin checks K. */
static qplug_status qplug__check_x_scale(const qplug_layer_inst *l, const qplug_apply_args *a,
                                         qplug_err *err)
{
    const qplug_tensor *x = a->x, *xs = a->x_scale;
    if (a->op != QPLUG_OP_FORWARD)
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT,
                             "layer %s: x_scale is only for the forward op (op %d)", l->name,
                             (int)a->op);
    qplug_act_format f = qplug_layer_act_format(l);
    if (f == QPLUG_ACT_FORMAT_NONE)
        return qplug_err_set(err, QPLUG_ERR_UNSUPPORTED,
                             "layer %s: x_scale given, but plugin %s takes no pre-quantized "
                             "activations for it (act_format none)",
                             l->name, l->plugin->name);
    if (x->dtype != QPLUG_DT_F8_E4M3 || xs->dtype != QPLUG_DT_F32)
        return qplug_err_set(err, QPLUG_ERR_DTYPE,
                             "layer %s: pre-quantized x must be F8_E4M3 with an F32 x_scale "
                             "(x %s, x_scale %s)",
                             l->name, qplug_dtype_name(x->dtype), qplug_dtype_name(xs->dtype));
    if (x->ndim != 2 || x->shape[0] < 0 || x->shape[1] < 128 || x->shape[1] % 128 != 0)
        return qplug_err_set(err, QPLUG_ERR_SHAPE,
                             "layer %s: pre-quantized x must be [m, K] with K a positive multiple "
                             "of 128",
                             l->name);
    int64_t m = x->shape[0], kt = x->shape[1] / 128;
    if (xs->ndim != 2 || xs->shape[0] != kt || xs->shape[1] != m)
        return qplug_err_set(err, QPLUG_ERR_SHAPE,
                             "layer %s: x_scale must be F32 [%lld, %lld] (K/128, m) for x [%lld, "
                             "%lld]",
                             l->name, (long long)kt, (long long)m, (long long)m,
                             (long long)x->shape[1]);
    if (xs->device != x->device)
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT,
                             "layer %s: x_scale and x must be on the same device", l->name);
    if (m > 0 && (!x->data || !xs->data))
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT, "layer %s: x or x_scale has no data",
                             l->name);
    return QPLUG_OK;
}

qplug_status qplug_layer_apply(qplug_layer_inst *l, const qplug_apply_args *args, qplug_err *err)
{
    if (!l || !args)
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT, "qplug_layer_apply: NULL argument");
    if (args->struct_size < QPLUG__ARGS_1_1_SIZE)
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT,
                             "layer %s: apply args struct_size %u, expected at least %zu", l->name,
                             args->struct_size, (size_t)QPLUG__ARGS_1_1_SIZE);
    /* The plugin always gets a struct of this core's size, with the fields
     * the caller did not know of set to zero. */
    qplug_apply_args a;
    memset(&a, 0, sizeof a);
    memcpy(&a, args, args->struct_size < sizeof a ? args->struct_size : sizeof a);
    a.struct_size = sizeof a;
    switch (a.op) {
    case QPLUG_OP_FORWARD:
        if (!a.x || !a.y)
            return qplug_err_set(err, QPLUG_ERR_ARGUMENT, "layer %s: forward needs x and y",
                                 l->name);
        break;
    case QPLUG_OP_KV_WRITE:
        if (!a.x || !a.cache)
            return qplug_err_set(err, QPLUG_ERR_ARGUMENT, "layer %s: kv write needs x and cache",
                                 l->name);
        break;
    case QPLUG_OP_KV_READ:
        if (!a.y || !a.cache)
            return qplug_err_set(err, QPLUG_ERR_ARGUMENT, "layer %s: kv read needs y and cache",
                                 l->name);
        break;
    default:
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT, "layer %s: unknown op %d", l->name,
                             (int)a.op);
    }
    if (a.x_scale) {
        qplug_status xst = qplug__check_x_scale(l, &a, err);
        if (xst != QPLUG_OK)
            return xst;
    }
    l->has_msg = false;
    qplug_status st = l->plugin->apply(&l->host, l->state, &a);
    if (st != QPLUG_OK)
        return qplug__plugin_fail(l, st, "apply", err);
    return QPLUG_OK;
}

qplug_act_format qplug_layer_act_format(const qplug_layer_inst *l)
{
    /* act_format is an optional 1.2 slot: never read it beyond the
     * plugin's struct_size, and never call it without a state. */
    size_t end = offsetof(qplug_plugin, act_format) + sizeof(l->plugin->act_format);
    if (!l || !l->has_state || l->plugin->struct_size < end || !l->plugin->act_format)
        return QPLUG_ACT_FORMAT_NONE;
    qplug_act_format f = l->plugin->act_format(&l->host, l->state);
    /* An answer this core does not know is treated as "none". */
    if (f != QPLUG_ACT_FORMAT_E4M3_1X128_F32 && f != QPLUG_ACT_FORMAT_E4M3_1X128_UE8M0)
        return QPLUG_ACT_FORMAT_NONE;
    return f;
}

const char *qplug_act_format_name(qplug_act_format f)
{
    switch (f) {
    case QPLUG_ACT_FORMAT_NONE:
        return "none";
    case QPLUG_ACT_FORMAT_E4M3_1X128_F32:
        return "e4m3_1x128_f32";
    case QPLUG_ACT_FORMAT_E4M3_1X128_UE8M0:
        return "e4m3_1x128_ue8m0";
    }
    return "unknown";
}

size_t qplug_layer_kv_entry_bytes(const qplug_layer_inst *l)
{
    /* kv_entry_bytes is the one optional 1.0 slot: never read it beyond
     * the plugin's struct_size. */
    size_t end = offsetof(qplug_plugin, kv_entry_bytes) + sizeof(l->plugin->kv_entry_bytes);
    if (!l || l->plugin->struct_size < end || !l->plugin->kv_entry_bytes)
        return 0;
    return l->plugin->kv_entry_bytes(&l->desc);
}

const qplug_layer_desc *qplug_layer_desc_of(const qplug_layer_inst *l)
{
    return l ? &l->desc : NULL;
}

const qplug_plugin *qplug_layer_plugin(const qplug_layer_inst *l)
{
    return l ? l->plugin : NULL;
}

void qplug_layer_destroy(qplug_layer_inst *l)
{
    if (!l)
        return;
    if (l->has_state)
        l->plugin->destroy(&l->host, l->state);
    for (size_t i = 0; i < l->n_decls; i++)
        free(l->decls[i].slot);
    free(l->decls);
    free(l->name);
    free(l);
}
