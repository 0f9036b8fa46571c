/* qplug load: everything `plan` does, then build every layer through its
 * plugin (create_weights, binding, process_after_loading), touch every
 * non-plugin tensor the model reads, and report what was loaded and which
 * checkpoint tensors nothing asked for. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cmd_plan.h"
#include "commands.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* One line redrawn in place; only on a terminal, so logs stay clean. */
static void progress(bool tty, const char *what, size_t done, size_t total)
{
    if (!tty || !total)
        return;
    int width = 30, filled = (int)((double)done / (double)total * width);
    fprintf(stderr, "\r%-8s [", what);
    for (int i = 0; i < width; i++)
        fputc(i < filled ? '#' : '.', stderr);
    fprintf(stderr, "] %zu/%zu", done, total);
    if (done == total)
        fputc('\n', stderr);
    fflush(stderr);
}

/* Reads one byte per page so the mapping is really paged in: load time
 * then includes the disk, and a file that shrank under the mapping fails
 * here rather than in the first forward pass. */
static uint64_t touch(const qplug_tensor *t)
{
    const volatile uint8_t *b = t->data;
    size_t n = qplug_tensor_nbytes(t);
    uint64_t sum = 0;
    for (size_t i = 0; b && i < n; i += 4096)
        sum += b[i];
    if (b && n)
        sum += b[n - 1];
    return sum;
}

static int usage(void)
{
    fprintf(stderr, "usage: qplug load --checkpoint DIR [--policy FILE] [--device cpu|cuda]\n");
    return 2;
}

int qplug_cmd_load(int argc, char **argv)
{
    const char *dir = NULL, *policy = NULL, *device = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--checkpoint") && i + 1 < argc)
            dir = argv[++i];
        else if (!strcmp(argv[i], "--policy") && i + 1 < argc)
            policy = argv[++i];
        else if (!strcmp(argv[i], "--device") && i + 1 < argc)
            device = argv[++i];
        else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            printf("usage: qplug load --checkpoint DIR [--policy FILE] [--device cpu|cuda]\n");
            return 0;
        } else {
            fprintf(stderr, "qplug load: unknown or incomplete option '%s'\n", argv[i]);
            return usage();
        }
    }
    if (!dir)
        return usage();
    if (device && strcmp(device, "cpu") && strcmp(device, "cuda")) {
        fprintf(stderr, "qplug load: --device must be cpu or cuda, not '%s'\n", device);
        return 2;
    }

    double t0 = now_s();
    qplug_cli_plan p;
    if (!qplug_cli_plan_open(&p, "load", dir, policy, device))
        return 1;

    int rc = 1;
    bool tty = isatty(STDERR_FILENO) != 0;
    qplug_err err = {0};
    qplug_runtime *rt = NULL;
    qplug_inventory *inv = &p.inv;
    qplug_layer_inst **insts = calloc(inv->n_layers ? inv->n_layers : 1, sizeof *insts);
    if (!insts) {
        fprintf(stderr, "qplug load: out of memory\n");
        goto done;
    }
    if (qplug_runtime_create(&p.pol, p.device, p.pol.threads, &rt, &err) != QPLUG_OK) {
        fprintf(stderr, "qplug load: %s\n", err.msg);
        goto done;
    }

    for (size_t i = 0; i < inv->n_layers; i++) {
        const qplug_inv_layer *l = &inv->layers[i];
        if (qplug_layer_create(rt, l->decision.plugin, &l->desc, qplug_inventory_source, inv,
                               &insts[i], &err) != QPLUG_OK) {
            if (tty)
                fputc('\n', stderr);
            fprintf(stderr, "qplug load: %s\n", err.msg);
            goto done;
        }
        progress(tty, "layers", i + 1, inv->n_layers);
    }

    uint64_t sink = 0;
    for (size_t i = 0; i < inv->n_tensors; i++) {
        const char *file = NULL;
        const qplug_tensor *t = qplug_inventory_tensor(inv, inv->tensors[i].name, &file);
        if (!t && inv->tensors[i].required) {
            /* The inventory checked this at build time; a tensor vanishing
             * since then means the checkpoint changed underneath us. */
            fprintf(stderr, "qplug load: checkpoint %s: tensor '%s' is missing\n", dir,
                    inv->tensors[i].ckpt_name);
            goto done;
        }
        if (t)
            sink += touch(t);
        progress(tty, "tensors", i + 1, inv->n_tensors);
    }

    /* Everything handed out is loaded; the rest is unused. */
    size_t n_ckpt = qplug_ckpt_count(p.ckpt), n_unused = qplug_inventory_unused_count(inv);
    uint64_t bytes = 0, unused_bytes = 0;
    long next = qplug_inventory_next_unused(inv, 0);
    for (size_t i = 0; i < n_ckpt; i++) {
        const qplug_tensor *t = qplug_ckpt_tensor(p.ckpt, i);
        if (next >= 0 && (size_t)next == i) {
            unused_bytes += qplug_tensor_nbytes(t);
            next = qplug_inventory_next_unused(inv, i + 1);
        } else {
            bytes += qplug_tensor_nbytes(t);
        }
    }
    double secs = now_s() - t0;
    printf("loaded %zu layers and %zu of %zu tensors (%.1f MiB) from %s on %s in %.2f s\n",
           inv->n_layers, n_ckpt - n_unused, n_ckpt, (double)bytes / (1024.0 * 1024.0), dir,
           p.device == QPLUG_DEVICE_CUDA ? "cuda" : "cpu", secs);
    if (n_unused) {
        fprintf(stderr, "qplug load: warning: %zu checkpoint tensors (%.1f MiB) are unused:\n",
                n_unused, (double)unused_bytes / (1024.0 * 1024.0));
        for (long j = qplug_inventory_next_unused(inv, 0); j >= 0;
             j = qplug_inventory_next_unused(inv, (size_t)j + 1))
            fprintf(stderr, "  %s (%s)\n", qplug_ckpt_tensor(p.ckpt, (size_t)j)->name,
                    qplug_ckpt_tensor_file(p.ckpt, (size_t)j));
    } else {
        printf("unused tensors: 0\n");
    }
    /* Keeps the page-touching reads from being optimised away. */
    if (sink == UINT64_MAX)
        printf("\n");
    rc = 0;

done:
    for (size_t i = 0; insts && i < inv->n_layers; i++)
        if (insts[i])
            qplug_layer_destroy(insts[i]);
    free(insts);
    if (rt)
        qplug_runtime_destroy(rt);
    qplug_cli_plan_close(&p);
    return rc;
}
