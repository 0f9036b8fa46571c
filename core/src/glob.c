/*
 * Layer-name matching: the dot-anchored glob of deployment-policy rules and
 * ModelOpt's exclude_modules semantics.
 */
#include "qplug/policy.h"

#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>

enum { QPLUG__G_LIT, QPLUG__G_ONE, QPLUG__G_STAR, QPLUG__G_DSTAR };

/*
 * Dynamic programming over (pattern token, name position) rather than
 * backtracking, so a pattern full of stars costs O(tokens * length) and a
 * hostile policy cannot make matching exponential. ok[j] for token i says
 * whether tokens i.. match name[j..], where "the end" is the end of the name
 * or a '.' (the pattern may cover a dot-separated prefix of the name).
 */
bool qplug_glob_match(const char *pattern, const char *name)
{
    if (!pattern || !name || !pattern[0])
        return false;
    size_t plen = strlen(pattern), n = strlen(name);
    unsigned char *tok = malloc(plen);
    char *lit = malloc(plen);
    bool *next = malloc(n + 1), *cur = malloc(n + 1);
    bool result = false;
    if (!tok || !lit || !next || !cur)
        goto out;
    size_t t = 0;
    for (size_t i = 0; i < plen; i++, t++) {
        if (pattern[i] == '*' && pattern[i + 1] == '*') {
            tok[t] = QPLUG__G_DSTAR;
            i++;
        } else if (pattern[i] == '*') {
            tok[t] = QPLUG__G_STAR;
        } else if (pattern[i] == '?') {
            tok[t] = QPLUG__G_ONE;
        } else {
            tok[t] = QPLUG__G_LIT;
            lit[t] = pattern[i];
        }
    }
    for (size_t j = 0; j <= n; j++)
        next[j] = name[j] == '\0' || name[j] == '.';
    for (size_t i = t; i-- > 0;) {
        for (size_t j = n + 1; j-- > 0;) {
            char c = name[j];
            bool in_component = c != '\0' && c != '.';
            switch (tok[i]) {
            case QPLUG__G_LIT:
                cur[j] = c != '\0' && c == lit[i] && next[j + 1];
                break;
            case QPLUG__G_ONE:
                cur[j] = in_component && next[j + 1];
                break;
            case QPLUG__G_STAR:
                cur[j] = next[j] || (in_component && cur[j + 1]);
                break;
            default:
                cur[j] = next[j] || (c != '\0' && cur[j + 1]);
                break;
            }
        }
        bool *swap = next;
        next = cur;
        cur = swap;
    }
    result = next[0];
out:
    free(tok);
    free(lit);
    free(next);
    free(cur);
    return result;
}

static bool qplug__modelopt_one(const char *p, const char *name)
{
    if (strcmp(p, name) == 0)
        return true;
    /* The legacy rule of older ModelOpt exports (and of vLLM, which must
     * keep loading them): a pattern found anywhere inside the name. */
    if (p[0] && strstr(name, p))
        return true;
    if (fnmatch(p, name, 0) == 0)
        return true;
    /* "name*" also means "name" itself and everything below "name.". */
    size_t pl = strlen(p);
    if (pl > 1 && p[pl - 1] == '*') {
        size_t bl = pl - 1;
        if (strncmp(p, name, bl) == 0 && (name[bl] == '\0' || name[bl] == '.'))
            return true;
    }
    return false;
}

bool qplug_modelopt_excluded(char *const *patterns, size_t n, const char *name)
{
    if (!patterns || !name)
        return false;
    for (size_t i = 0; i < n; i++)
        if (patterns[i] && qplug__modelopt_one(patterns[i], name))
            return true;
    return false;
}
