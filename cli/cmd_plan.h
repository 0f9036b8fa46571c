/* What `qplug plan` and `qplug load` share: opening a checkpoint, its
 * config, the policy and the plugins, and resolving the inventory. */
#ifndef QPLUG_CLI_CMD_PLAN_H
#define QPLUG_CLI_CMD_PLAN_H

#include <stdbool.h>

#include "qplug/inventory.h"
#include "qplug/qplug.h"

typedef struct qplug_cli_plan {
    qplug_model_config cfg;
    qplug_ckpt *ckpt;
    qplug_policy pol;
    qplug_registry *reg;
    qplug_inventory inv;
    qplug_device_kind device;      /* the device the plan is for */
    bool have_cfg, have_pol;
} qplug_cli_plan;

/* Opens everything and resolves every layer. On failure prints one line
 * "qplug CMD: message" on stderr, releases what was opened and returns
 * false. `policy` may be NULL (no rules). `device` is "cpu", "cuda" or NULL
 * (then the policy's [runtime] device decides; auto means cpu). */
bool qplug_cli_plan_open(qplug_cli_plan *p, const char *cmd, const char *dir, const char *policy,
                         const char *device);
void qplug_cli_plan_close(qplug_cli_plan *p);

#endif
