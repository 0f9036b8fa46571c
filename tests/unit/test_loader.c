/* The plugin loader: every refusal of registry.h with its status and a
 * message naming the file, the directory scan (name order, non-library
 * files, duplicates), the default search path, and the template plugin
 * loaded from the build tree and run against a double-precision matmul.
 * Run without arguments for every case, or with one case name. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qplug/host.h"
#include "qplug/registry.h"
#include "testutil.h"

#define SINGLE QPLUG_BADPLUGIN_DIR "/single/"

static int has(const char *msg, const char *part)
{
    return strstr(msg, part) != NULL;
}

static qplug_registry *new_registry(void)
{
    qplug_registry *reg = NULL;
    qplug_err err = {0};
    if (qplug_registry_create(&reg, &err) != QPLUG_OK) {
        fprintf(stderr, "registry: %s\n", err.msg);
        exit(2);
    }
    return reg;
}

/* Loads one file that must be refused with `want` and a message naming the
 * file and containing `part`. */
static void expect_refused(const char *path, qplug_status want, const char *part)
{
    qplug_registry *reg = new_registry();
    qplug_err err = {0};
    qplug_status st = qplug_registry_load_file(reg, path, &err);
    CHECKF(st == want, "%s: got %s, want %s (%s)", path, qplug_status_name(st),
           qplug_status_name(want), err.msg);
    CHECKF(err.status == st && has(err.msg, path) && has(err.msg, part), "%s: message \"%s\"",
           path, err.msg);
    CHECK(qplug_registry_count(reg) == 0);
    qplug_registry_destroy(reg);
}

static void case_file_errors(void)
{
    expect_refused(SINGLE "does_not_exist.so", QPLUG_ERR_PLUGIN, "not a loadable library");
    qplug_registry *reg = new_registry();
    qplug_err err = {0};
    CHECK(qplug_registry_load_file(reg, NULL, &err) == QPLUG_ERR_ARGUMENT);
    qplug_registry_destroy(reg);
}

static void case_abi2(void)
{
    expect_refused(SINGLE "abi2.so", QPLUG_ERR_ABI, "plugin ABI 2.0, host 1.2");
}

static void case_noentry(void)
{
    expect_refused(SINGLE "noentry.so", QPLUG_ERR_PLUGIN, "qplug_plugin_entry");
}

static void case_nullentry(void)
{
    expect_refused(SINGLE "nullentry.so", QPLUG_ERR_PLUGIN, "returned NULL");
}

static void case_small(void)
{
    expect_refused(SINGLE "small.so", QPLUG_ERR_ABI, "struct_size 16");
}

static void case_badname(void)
{
    expect_refused(SINGLE "badname.so", QPLUG_ERR_PLUGIN, "Bad-Name");
}

static void case_nullslot(void)
{
    expect_refused(SINGLE "nullslot.so", QPLUG_ERR_PLUGIN, "apply");
}

/* A plugin whose struct_size stops before kv_entry_bytes loads, and the
 * slot reads as NULL although the plugin's struct has it set. */
static void case_oldsize(void)
{
    qplug_registry *reg = new_registry();
    qplug_err err = {0};
    qplug_status st = qplug_registry_load_file(reg, SINGLE "oldsize.so", &err);
    CHECKF(st == QPLUG_OK, "oldsize: %s", err.msg);
    const qplug_plugin *p = qplug_registry_find(reg, "oldsize");
    CHECK(p != NULL && p->kv_entry_bytes == NULL);
    CHECK(qplug_registry_count(reg) == 1 && has(qplug_registry_origin(reg, 0), "oldsize.so"));
    qplug_registry_destroy(reg);
}

/* Two files with one plugin name: the first (in name order) loads, the
 * second is refused naming both files. */
static void case_dup(void)
{
    qplug_registry *reg = new_registry();
    qplug_err err = {0};
    qplug_status st = qplug_registry_load_dir(reg, QPLUG_BADPLUGIN_DIR "/dup", &err);
    CHECKF(st == QPLUG_ERR_DUPLICATE, "dup: %s (%s)", qplug_status_name(st), err.msg);
    CHECKF(has(err.msg, "dup/dup_b.so") && has(err.msg, "dup/dup_a.so") && has(err.msg, "dupname"),
           "dup: %s", err.msg);
    CHECK(qplug_registry_count(reg) == 1);
    CHECK(qplug_registry_count(reg) == 1 && has(qplug_registry_origin(reg, 0), "dup_a.so"));
    qplug_registry_destroy(reg);

    /* The same through qplug_registry_add, which names both origins. */
    reg = new_registry();
    CHECK(qplug_registry_load_file(reg, QPLUG_BADPLUGIN_DIR "/good/good_a.so", &err) == QPLUG_OK);
    const qplug_plugin *p = qplug_registry_find(reg, "good_a");
    CHECK(p != NULL);
    if (p) {
        st = qplug_registry_add(reg, p, "builtin-copy", &err);
        CHECKF(st == QPLUG_ERR_DUPLICATE && has(err.msg, "builtin-copy") &&
                   has(err.msg, "good/good_a.so"),
               "add dup: %s", err.msg);
    }
    qplug_registry_destroy(reg);
}

/* A directory holding a file named *.so that is not a library: refused
 * naming that file. Files of other names are ignored, and a missing
 * directory is not an error. */
static void case_junk(void)
{
    test_write_file("notes.txt", "ignored", 7);
    const char *junk = test_write_file("junk.so", "this is not an ELF file\n", 24);
    char junk_path[512];
    snprintf(junk_path, sizeof junk_path, "%s", junk);
    qplug_registry *reg = new_registry();
    qplug_err err = {0};
    qplug_status st = qplug_registry_load_dir(reg, test_tmpdir(), &err);
    CHECKF(st == QPLUG_ERR_PLUGIN && has(err.msg, junk_path) &&
               has(err.msg, "not a loadable library"),
           "junk: %s (%s)", qplug_status_name(st), err.msg);
    CHECK(qplug_registry_count(reg) == 0);
    st = qplug_registry_load_dir(reg, QPLUG_BADPLUGIN_DIR "/no_such_dir", &err);
    CHECK(st == QPLUG_OK);
    qplug_registry_destroy(reg);
}

/* The default search: policy dirs, then QPLUG_PLUGIN_PATH, then the build
 * tree's etc/plugins.d next to this executable's bin/. One directory
 * reached by several spellings is scanned once. */
static void case_default(void)
{
    char *dirs[2] = {QPLUG_BADPLUGIN_DIR "/good", QPLUG_BADPLUGIN_DIR "/good/."};
    qplug_policy pol;
    memset(&pol, 0, sizeof pol);
    pol.dirs = dirs;
    pol.n_dirs = 2;
    setenv("QPLUG_PLUGIN_PATH",
           QPLUG_BADPLUGIN_DIR "/no_such_dir::" QPLUG_BADPLUGIN_DIR "/dup/../good", 1);
    qplug_registry *reg = new_registry();
    qplug_err err = {0};
    qplug_status st = qplug_registry_load_default(reg, &pol, &err);
    CHECKF(st == QPLUG_OK, "default: %s", err.msg);
    CHECK(qplug_registry_find(reg, "good_a") != NULL);
    CHECK(qplug_registry_find(reg, "template") != NULL);
    size_t good = 0;
    for (size_t i = 0; i < qplug_registry_count(reg); i++) {
        const char *origin = qplug_registry_origin(reg, i);
        if (strcmp(qplug_registry_get(reg, i)->name, "good_a") == 0) {
            good++;
            /* Policy dirs come first. */
            CHECKF(i == 0, "good_a loaded at position %zu", i);
        }
        if (strcmp(qplug_registry_get(reg, i)->name, "template") == 0)
            CHECKF(has(origin, "/etc/plugins.d/template.so"), "template from %s", origin);
    }
    CHECK(good == 1);
    unsetenv("QPLUG_PLUGIN_PATH");
    qplug_registry_destroy(reg);
}

static const qplug_tensor *one_tensor(void *user, const qplug_layer_desc *layer, const char *slot,
                                      const char **file)
{
    (void)layer;
    *file = "test";
    return strcmp(slot, "weight") == 0 ? user : NULL;
}

/* The template plugin, loaded from the build tree, computes y = x W^T. */
static void check_template_matmul(qplug_runtime *rt, const qplug_plugin *p, qplug_dtype wdt)
{
    enum { M = 5, N = 24, K = 40 };
    float x[M * K], w32[N * K], y[M * N];
    uint16_t w16[N * K];
    srand(1234);
    for (int i = 0; i < M * K; i++)
        x[i] = (float)rand() / RAND_MAX * 2.0f - 1.0f;
    for (int i = 0; i < N * K; i++) {
        float v = (float)rand() / RAND_MAX * 2.0f - 1.0f;
        uint32_t u;
        memcpy(&u, &v, sizeof u);
        /* BF16 weights: keep the upper half; w32 holds the exact value. */
        w16[i] = (uint16_t)(u >> 16);
        if (wdt == QPLUG_DT_BF16) {
            u &= 0xffff0000u;
            memcpy(&v, &u, sizeof v);
        }
        w32[i] = v;
    }
    qplug_tensor wt = {"layers.0.attn.wq_a.weight", wdt, 2, {N, K},
                       wdt == QPLUG_DT_F32 ? (void *)w32 : (void *)w16, QPLUG_DEVICE_CPU};

    qplug_layer_desc d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    d.name = "layers.0.attn.wq_a";
    d.kind = QPLUG_LAYER_LINEAR;
    d.quant = QPLUG_QUANT_NONE;
    d.weight_dtype = wdt;
    d.device = QPLUG_DEVICE_CPU;
    d.n = N;
    d.k = K;
    d.groups = 1;
    CHECK(p->score(&d) == 1);
    qplug_layer_desc q = d;
    q.quant = QPLUG_QUANT_FP8_BLOCK;
    CHECK(p->score(&q) == 0);

    qplug_layer_inst *l = NULL;
    qplug_err err = {0};
    qplug_status st = qplug_layer_create(rt, p, &d, one_tensor, &wt, &l, &err);
    CHECKF(st == QPLUG_OK, "template %s: %s", qplug_dtype_name(wdt), err.msg);
    if (st != QPLUG_OK)
        return;
    qplug_tensor xt = {NULL, QPLUG_DT_F32, 2, {M, K}, x, QPLUG_DEVICE_CPU};
    qplug_tensor yt = {NULL, QPLUG_DT_F32, 2, {M, N}, y, QPLUG_DEVICE_CPU};
    qplug_apply_args a;
    memset(&a, 0, sizeof a);
    a.struct_size = sizeof a;
    a.op = QPLUG_OP_FORWARD;
    a.x = &xt;
    a.y = &yt;
    st = qplug_layer_apply(l, &a, &err);
    CHECKF(st == QPLUG_OK, "template apply: %s", err.msg);

    /* Relative L2 error against a double-precision product of the same
     * (exactly representable) operands; fp32 accumulation over K = 40
     * stays far below 1e-5. */
    double num = 0.0, den = 0.0;
    for (int i = 0; i < M; i++) {
        for (int j = 0; j < N; j++) {
            double ref = 0.0;
            for (int c = 0; c < K; c++)
                ref += (double)x[i * K + c] * (double)w32[j * K + c];
            double diff = (double)y[i * N + j] - ref;
            num += diff * diff;
            den += ref * ref;
        }
    }
    double rel = sqrt(num / den);
    CHECKF(rel < 1e-5, "template %s: relative L2 error %g", qplug_dtype_name(wdt), rel);

    /* A wrong x shape is the plugin's error, prefixed by the core. */
    xt.shape[1] = K + 1;
    st = qplug_layer_apply(l, &a, &err);
    CHECKF(st == QPLUG_ERR_SHAPE && strncmp(err.msg, "template: layers.0.attn.wq_a: ", 30) == 0,
           "template bad x: %s", err.msg);
    qplug_layer_destroy(l);
}

static void case_template(void)
{
    qplug_registry *reg = new_registry();
    qplug_err err = {0};
    qplug_status st =
        qplug_registry_load_file(reg, QPLUG_BINARY_DIR "/etc/plugins.d/template.so", &err);
    CHECKF(st == QPLUG_OK, "template: %s", err.msg);
    const qplug_plugin *p = qplug_registry_find(reg, "template");
    qplug_runtime *rt = NULL;
    CHECK(qplug_runtime_create(NULL, QPLUG_DEVICE_CPU, 3, &rt, &err) == QPLUG_OK);
    if (p && rt) {
        check_template_matmul(rt, p, QPLUG_DT_F32);
        check_template_matmul(rt, p, QPLUG_DT_BF16);
    }
    qplug_runtime_destroy(rt);
    qplug_registry_destroy(reg);
}

typedef struct test_case {
    const char *name;
    void (*fn)(void);
} test_case;

static const test_case cases[] = {
    {"file_errors", case_file_errors}, {"abi2", case_abi2},       {"noentry", case_noentry},
    {"nullentry", case_nullentry},     {"small", case_small},     {"badname", case_badname},
    {"nullslot", case_nullslot},       {"oldsize", case_oldsize}, {"dup", case_dup},
    {"junk", case_junk},               {"default", case_default}, {"template", case_template},
};

int main(int argc, char **argv)
{
    /* Keep the log quiet: the tests read messages, not log lines. */
    qplug_log_set_level(QPLUG_LOG_WARN);
    int ran = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (argc > 1 && strcmp(argv[1], cases[i].name) != 0)
            continue;
        cases[i].fn();
        ran++;
    }
    CHECKF(ran > 0, "no case named %s", argc > 1 ? argv[1] : "(none)");
    return test_done();
}
