/* qplug plan: resolve every DeepSeek V4 layer of a checkpoint and print
 * which plugin handles it and why (a table, or a JSON array with --json). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "cmd_plan.h"
#include "commands.h"

bool qplug_cli_plan_open(qplug_cli_plan *p, const char *cmd, const char *dir, const char *policy,
                         const char *device)
{
    qplug_err err = {0};
    qplug_status st;
    memset(p, 0, sizeof *p);
    qplug_policy_init(&p->pol);
    p->have_pol = true;
    if (policy) {
        /* The empty policy from init is replaced by the file's. */
        qplug_policy_free(&p->pol);
        p->have_pol = false;
        st = qplug_policy_load(policy, &p->pol, &err);
        if (st != QPLUG_OK)
            goto fail;
        p->have_pol = true;
    }
    if (device)
        p->device = !strcmp(device, "cuda") ? QPLUG_DEVICE_CUDA : QPLUG_DEVICE_CPU;
    else
        p->device = p->pol.device == QPLUG_DEVPREF_CUDA ? QPLUG_DEVICE_CUDA : QPLUG_DEVICE_CPU;
    st = qplug_config_load(dir, &p->cfg, &err);
    if (st != QPLUG_OK)
        goto fail;
    p->have_cfg = true;
    st = qplug_ckpt_open(dir, &p->ckpt, &err);
    if (st != QPLUG_OK)
        goto fail;
    st = qplug_registry_create(&p->reg, &err);
    if (st != QPLUG_OK)
        goto fail;
    st = qplug_registry_load_default(p->reg, &p->pol, &err);
    if (st != QPLUG_OK)
        goto fail;
    st = qplug_inventory_build(&p->cfg, p->ckpt, p->device, &p->inv, &err);
    if (st != QPLUG_OK)
        goto fail;
    st = qplug_inventory_resolve(&p->inv, p->reg, &p->pol, &err);
    if (st != QPLUG_OK)
        goto fail;
    return true;

fail:
    fprintf(stderr, "qplug %s: %s\n", cmd, err.msg[0] ? err.msg : qplug_status_message(st));
    qplug_cli_plan_close(p);
    return false;
}

void qplug_cli_plan_close(qplug_cli_plan *p)
{
    qplug_inventory_free(&p->inv);
    if (p->reg)
        qplug_registry_destroy(p->reg);
    if (p->ckpt)
        qplug_ckpt_close(p->ckpt);
    if (p->have_cfg)
        qplug_config_free(&p->cfg);
    if (p->have_pol)
        qplug_policy_free(&p->pol);
    memset(p, 0, sizeof *p);
}

static const char *plugin_name(const qplug_inv_layer *l)
{
    return l->decision.plugin ? l->decision.plugin->name : "?";
}

static int print_json(const qplug_inventory *inv)
{
    cJSON *arr = cJSON_CreateArray();
    if (!arr)
        return 1;
    for (size_t i = 0; i < inv->n_layers; i++) {
        const qplug_inv_layer *l = &inv->layers[i];
        cJSON *o = cJSON_CreateObject();
        if (!o || !cJSON_AddStringToObject(o, "layer", l->name) ||
            !cJSON_AddStringToObject(o, "kind", qplug_layer_kind_name(l->desc.kind)) ||
            !cJSON_AddStringToObject(o, "plugin", plugin_name(l)) ||
            !cJSON_AddStringToObject(o, "reason", l->decision.reason) ||
            !cJSON_AddStringToObject(o, "quant", qplug_quant_scheme_name(l->decision.quant)) ||
            !cJSON_AddStringToObject(o, "hf_name", l->hf_name)) {
            cJSON_Delete(o);
            cJSON_Delete(arr);
            return 1;
        }
        cJSON_AddItemToArray(arr, o);
    }
    char *s = cJSON_Print(arr);
    cJSON_Delete(arr);
    if (!s)
        return 1;
    puts(s);
    cJSON_free(s);
    return 0;
}

/* Counts layers per plugin, in the order plugins first appear. */
static void print_summary(const qplug_inventory *inv)
{
    const char *names[64];
    size_t counts[64], n = 0;
    for (size_t i = 0; i < inv->n_layers; i++) {
        const char *p = plugin_name(&inv->layers[i]);
        size_t j = 0;
        while (j < n && strcmp(names[j], p))
            j++;
        if (j == n) {
            if (n == sizeof names / sizeof names[0])
                continue;
            names[n] = p;
            counts[n++] = 0;
        }
        counts[j]++;
    }
    printf("%zu layers (%s naming, MTP %s):", inv->n_layers,
           inv->naming == QPLUG_NAMING_HF ? "transformers" : "official",
           inv->has_mtp ? "present" : "absent");
    for (size_t j = 0; j < n; j++)
        printf("%s %s %zu", j ? "," : "", names[j], counts[j]);
    printf("\n");
}

static void print_table(const qplug_inventory *inv)
{
    int wl = 5, wk = 4, wq = 5, wp = 6;
    for (size_t i = 0; i < inv->n_layers; i++) {
        const qplug_inv_layer *l = &inv->layers[i];
        int a = (int)strlen(l->name), b = (int)strlen(qplug_layer_kind_name(l->desc.kind));
        int c = (int)strlen(qplug_quant_scheme_name(l->decision.quant));
        int d = (int)strlen(plugin_name(l));
        wl = a > wl ? a : wl;
        wk = b > wk ? b : wk;
        wq = c > wq ? c : wq;
        wp = d > wp ? d : wp;
    }
    printf("%-*s  %-*s  %-*s  %-*s  %s\n", wl, "layer", wk, "kind", wq, "quant", wp, "plugin",
           "reason");
    for (size_t i = 0; i < inv->n_layers; i++) {
        const qplug_inv_layer *l = &inv->layers[i];
        printf("%-*s  %-*s  %-*s  %-*s  %s\n", wl, l->name, wk,
               qplug_layer_kind_name(l->desc.kind), wq, qplug_quant_scheme_name(l->decision.quant),
               wp, plugin_name(l), l->decision.reason);
    }
    print_summary(inv);
}

static int usage(void)
{
    fprintf(stderr, "usage: qplug plan --checkpoint DIR [--policy FILE] [--json]\n");
    return 2;
}

int qplug_cmd_plan(int argc, char **argv)
{
    const char *dir = NULL, *policy = NULL;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--checkpoint") && i + 1 < argc)
            dir = argv[++i];
        else if (!strcmp(argv[i], "--policy") && i + 1 < argc)
            policy = argv[++i];
        else if (!strcmp(argv[i], "--json"))
            json = true;
        else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            printf("usage: qplug plan --checkpoint DIR [--policy FILE] [--json]\n");
            return 0;
        } else {
            fprintf(stderr, "qplug plan: unknown or incomplete option '%s'\n", argv[i]);
            return usage();
        }
    }
    if (!dir)
        return usage();

    qplug_cli_plan p;
    if (!qplug_cli_plan_open(&p, "plan", dir, policy, NULL))
        return 1;
    int rc = 0;
    if (json) {
        rc = print_json(&p.inv);
        if (rc)
            fprintf(stderr, "qplug plan: out of memory writing JSON\n");
    } else {
        print_table(&p.inv);
    }
    qplug_cli_plan_close(&p);
    return rc;
}
