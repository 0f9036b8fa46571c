/* Fuzz target: the INI policy, and the glob matcher on what it accepts. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qplug/policy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    qplug_policy pol;
    qplug_err err = {0};
    if (qplug_policy_parse((const char *)data, size, "fuzz.ini", &pol, &err) != QPLUG_OK) {
        if (!err.msg[0] || strchr(err.msg, '\n') || pol.rules || pol.dirs)
            abort();
        return 0;
    }
    for (size_t i = 0; i < pol.n_rules; i++) {
        const qplug_policy_rule *r = &pol.rules[i];
        if (!r->name || !r->match || !r->plugin)
            abort();
        /* Exercise the matchers with names and patterns from the input. */
        (void)qplug_glob_match(r->match, r->name);
        (void)qplug_glob_match(r->match, "layers.10.attn.wq_a");
        (void)qplug_modelopt_excluded(&r->match, 1, r->plugin);
    }
    qplug_policy_free(&pol);
    return 0;
}
