/*
 * qplug/policy.h - the INI deployment policy (architecture.md, contract).
 *
 *   [plugins]      dirs = a:b:c
 *   [rule NAME]    match = GLOB, plugin = NAME | unquantized  (file order)
 *   [megamoe]      fp4_activations = true|false
 *   [runtime]      device = auto|cpu|cuda, threads = N (0 = all cores)
 *
 * Unknown sections or keys, a rule without match or plugin, bad values:
 * an error naming the file and the line.
 */
#ifndef QPLUG_POLICY_H
#define QPLUG_POLICY_H

#include <stdbool.h>

#include "qplug/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum qplug_device_pref {
    QPLUG_DEVPREF_AUTO = 0,
    QPLUG_DEVPREF_CPU = 1,
    QPLUG_DEVPREF_CUDA = 2
} qplug_device_pref;

typedef struct qplug_policy_rule {
    char *name;
    char *match;
    char *plugin;
    int line;
} qplug_policy_rule;

typedef struct qplug_policy {
    char path[256];                /* "" for the built-in default */
    char **dirs;
    size_t n_dirs;
    qplug_policy_rule *rules;
    size_t n_rules;
    bool fp4_activations;
    qplug_device_pref device;
    int threads;
} qplug_policy;

/* An empty policy: no rules, defaults everywhere. */
void qplug_policy_init(qplug_policy *pol);
qplug_status qplug_policy_load(const char *path, qplug_policy *pol, qplug_err *err);
qplug_status qplug_policy_parse(const char *text, size_t len, const char *source,
                                qplug_policy *pol, qplug_err *err);
void qplug_policy_free(qplug_policy *pol);
/* The string value of a known option ("megamoe", "fp4_activations" ->
 * "true"/"false"), or NULL. Backs qplug_host_api.option. */
const char *qplug_policy_option(const qplug_policy *pol, const char *section, const char *key);

/* Dot-anchored glob on a layer name: '*' matches within one dot-separated
 * component, "**" across components; the pattern must match the whole name
 * or the name up to a '.' (so "layers.1" and "layers.1.*" cover
 * "layers.1.attn.wq_a" but never "layers.10.attn.wq_a"). */
bool qplug_glob_match(const char *pattern, const char *name);

/* ModelOpt exclude_modules / ignore semantics: exact match, fnmatch, the
 * legacy substring rule, and a trailing "name*" also covers "name" and
 * "name.*". `name` is the layer's name in transformers naming. */
bool qplug_modelopt_excluded(char *const *patterns, size_t n, const char *name);

#ifdef __cplusplus
}
#endif
#endif
