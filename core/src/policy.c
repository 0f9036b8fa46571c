/*
 * The INI deployment policy (architecture.md), parsed with inih.
 *
 * inih hands us key/value pairs but neither line numbers (the distribution
 * builds it without INI_HANDLER_LINENO) nor section headers. Both come from
 * our own line reader, fed to ini_parse_stream: when inih calls the handler,
 * the last line the reader returned is the line of that key, and the reader
 * sees every "[section]" line, so empty sections and rules are caught too.
 */
#include "qplug/policy.h"

#include <ini.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "readfile.h"

#define QPLUG__POL_MAX_FILE (1u << 20)
/* inih keeps section names in a 50-byte buffer and truncates longer ones;
 * they are refused rather than silently merged. */
#define QPLUG__POL_MAX_SECTION 49

typedef struct qplug__pol_parse {
    const char *src;
    const char *text;
    size_t len, pos;
    int line;                      /* the line the reader returned last */
    qplug_policy *pol;
    qplug_err *err;
    qplug_status st;               /* the first error wins */
    int seen_plugins, seen_megamoe, seen_runtime;
    int seen_dirs, seen_fp4, seen_device, seen_threads;
} qplug__pol_parse;

static void qplug__pol_fail(qplug__pol_parse *p, qplug_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void qplug__pol_fail(qplug__pol_parse *p, qplug_status st, const char *fmt, ...)
{
    if (p->st != QPLUG_OK)
        return;
    char msg[QPLUG_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    p->st = qplug_err_set(p->err, st, "%s:%d: %s", p->src, p->line, msg);
}

static int qplug__is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v';
}

/* Rule and plugin names: letters, digits, '_', '-', '.'. */
static int qplug__pol_name_ok(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++) {
        char c = *s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
              c == '-' || c == '.'))
            return 0;
    }
    return 1;
}

static void qplug__pol_section(qplug__pol_parse *p, const char *name, size_t len)
{
    char sec[QPLUG__POL_MAX_SECTION + 1];
    if (len > QPLUG__POL_MAX_SECTION) {
        qplug__pol_fail(p, QPLUG_ERR_POLICY, "section name longer than %d characters",
                        QPLUG__POL_MAX_SECTION);
        return;
    }
    memcpy(sec, name, len);
    sec[len] = '\0';
    int *seen = strcmp(sec, "plugins") == 0   ? &p->seen_plugins
                : strcmp(sec, "megamoe") == 0 ? &p->seen_megamoe
                : strcmp(sec, "runtime") == 0 ? &p->seen_runtime
                                              : NULL;
    if (seen) {
        if (*seen)
            qplug__pol_fail(p, QPLUG_ERR_POLICY, "section [%s] given twice (first on line %d)", sec,
                            *seen);
        *seen = p->line;
        return;
    }
    if (strncmp(sec, "rule", 4) != 0 || (sec[4] != ' ' && sec[4] != '\t')) {
        qplug__pol_fail(p, QPLUG_ERR_POLICY,
                        "unknown section [%s] (known: plugins, rule NAME, megamoe, runtime)", sec);
        return;
    }
    const char *rn = sec + 5;
    while (*rn == ' ' || *rn == '\t')
        rn++;
    if (!qplug__pol_name_ok(rn)) {
        qplug__pol_fail(p, QPLUG_ERR_POLICY,
                        "section [%s]: a rule name is letters, digits, '_', '-' and '.'", sec);
        return;
    }
    qplug_policy *pol = p->pol;
    for (size_t i = 0; i < pol->n_rules; i++) {
        if (strcmp(pol->rules[i].name, rn) == 0) {
            qplug__pol_fail(p, QPLUG_ERR_DUPLICATE, "rule \"%s\" defined twice (first on line %d)", rn,
                            pol->rules[i].line);
            return;
        }
    }
    qplug_policy_rule *r = realloc(pol->rules, (pol->n_rules + 1) * sizeof *r);
    if (!r) {
        qplug__pol_fail(p, QPLUG_ERR_NOMEM, "out of memory");
        return;
    }
    pol->rules = r;
    r = &pol->rules[pol->n_rules];
    memset(r, 0, sizeof *r);
    r->line = p->line;
    if (!(r->name = strdup(rn))) {
        qplug__pol_fail(p, QPLUG_ERR_NOMEM, "out of memory");
        return;
    }
    pol->n_rules++;
}

/* Spots "[name]" the way inih does: the name runs to the first ']', and an
 * inline comment (';' after whitespace) before it makes the line invalid,
 * which inih reports itself. */
static void qplug__pol_scan_header(qplug__pol_parse *p, const char *line, size_t len)
{
    size_t i = 0;
    /* inih skips a UTF-8 byte order mark at the start of the file. */
    if (p->line == 1 && len >= 3 && memcmp(line, "\xEF\xBB\xBF", 3) == 0)
        i = 3;
    size_t first = i;
    while (i < len && qplug__is_space(line[i]))
        i++;
    if (i >= len || line[i] != '[')
        return;
    /* An indented line may be read by inih as the continuation of the
     * previous value rather than as a header; such lines are refused so
     * that the two readings never disagree. */
    if (i > first) {
        qplug__pol_fail(p, QPLUG_ERR_POLICY, "indented section header");
        return;
    }
    size_t start = i + 1;
    for (size_t k = start; k < len; k++) {
        if (line[k] == ']') {
            qplug__pol_section(p, line + start, k - start);
            return;
        }
        if (line[k] == ';' && qplug__is_space(line[k - 1]))
            return;
    }
}

/* fgets for ini_parse_stream over the in-memory text. */
static char *qplug__pol_reader(char *str, int num, void *stream)
{
    qplug__pol_parse *p = stream;
    if (p->pos >= p->len || num < 3)
        return NULL;
    const char *s = p->text + p->pos;
    size_t rest = p->len - p->pos;
    const char *nl = memchr(s, '\n', rest);
    size_t line_len = nl ? (size_t)(nl - s) + 1 : rest;
    p->pos += line_len;
    p->line++;
    size_t content = line_len - (nl ? 1 : 0);
    if (content > (size_t)num - 2) {
        qplug__pol_fail(p, QPLUG_ERR_POLICY, "line longer than %d characters", num - 2);
        /* Hand inih a blank line so that it does not see a fragment. */
        str[0] = '\n';
        str[1] = '\0';
        return str;
    }
    memcpy(str, s, content);
    str[content] = '\n';
    str[content + 1] = '\0';
    qplug__pol_scan_header(p, str, content);
    return str;
}

static int qplug__pol_seen(qplug__pol_parse *p, int *seen, const char *section, const char *key)
{
    if (*seen) {
        qplug__pol_fail(p, QPLUG_ERR_POLICY, "[%s] key \"%s\" given twice (first on line %d)", section,
                        key, *seen);
        return 1;
    }
    *seen = p->line;
    return 0;
}

static void qplug__pol_dirs(qplug__pol_parse *p, const char *value)
{
    qplug_policy *pol = p->pol;
    const char *s = value;
    while (*s) {
        const char *e = strchr(s, ':');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        /* An empty component ("a::b", a trailing ':') adds nothing. */
        if (n > 0) {
            char **d = realloc(pol->dirs, (pol->n_dirs + 1) * sizeof *d);
            if (!d) {
                qplug__pol_fail(p, QPLUG_ERR_NOMEM, "out of memory");
                return;
            }
            pol->dirs = d;
            if (!(d[pol->n_dirs] = strndup(s, n))) {
                qplug__pol_fail(p, QPLUG_ERR_NOMEM, "out of memory");
                return;
            }
            pol->n_dirs++;
        }
        s += n;
        if (*s == ':')
            s++;
    }
}

static void qplug__pol_rule_key(qplug__pol_parse *p, const char *section, const char *key,
                                const char *value)
{
    qplug_policy *pol = p->pol;
    /* The handler's section is always the last header the reader saw; if
     * that header was refused, an error is already recorded. */
    if (pol->n_rules == 0)
        return;
    qplug_policy_rule *r = &pol->rules[pol->n_rules - 1];
    const char *rn = section + 4;
    while (*rn == ' ' || *rn == '\t')
        rn++;
    if (strcmp(rn, r->name) != 0) {
        qplug__pol_fail(p, QPLUG_ERR_POLICY, "[%s] key \"%s\" is not in the current rule", section, key);
        return;
    }
    char **slot;
    if (strcmp(key, "match") == 0)
        slot = &r->match;
    else if (strcmp(key, "plugin") == 0)
        slot = &r->plugin;
    else {
        qplug__pol_fail(p, QPLUG_ERR_POLICY, "[%s] unknown key \"%s\" (known: match, plugin)", section,
                        key);
        return;
    }
    if (*slot) {
        qplug__pol_fail(p, QPLUG_ERR_POLICY, "[%s] key \"%s\" given twice", section, key);
        return;
    }
    if (!value[0]) {
        qplug__pol_fail(p, QPLUG_ERR_POLICY, "[%s] key \"%s\" is empty", section, key);
        return;
    }
    if (slot == &r->plugin && !qplug__pol_name_ok(value)) {
        qplug__pol_fail(p, QPLUG_ERR_POLICY,
                        "[%s] plugin \"%s\" is not a plugin name (letters, digits, '_', '-', '.')",
                        section, value);
        return;
    }
    if (!(*slot = strdup(value)))
        qplug__pol_fail(p, QPLUG_ERR_NOMEM, "out of memory");
}

static int qplug__pol_handler(void *user, const char *section, const char *key, const char *value)
{
    qplug__pol_parse *p = user;
    if (p->st != QPLUG_OK)
        return 1;
    if (!section[0]) {
        qplug__pol_fail(p, QPLUG_ERR_POLICY, "key \"%s\" outside any [section]", key);
    } else if (strcmp(section, "plugins") == 0) {
        if (strcmp(key, "dirs") != 0)
            qplug__pol_fail(p, QPLUG_ERR_POLICY, "[plugins] unknown key \"%s\" (known: dirs)", key);
        else if (!qplug__pol_seen(p, &p->seen_dirs, section, key))
            qplug__pol_dirs(p, value);
    } else if (strcmp(section, "megamoe") == 0) {
        if (strcmp(key, "fp4_activations") != 0)
            qplug__pol_fail(p, QPLUG_ERR_POLICY,
                            "[megamoe] unknown key \"%s\" (known: fp4_activations)", key);
        else if (!qplug__pol_seen(p, &p->seen_fp4, section, key)) {
            if (strcmp(value, "true") == 0)
                p->pol->fp4_activations = true;
            else if (strcmp(value, "false") == 0)
                p->pol->fp4_activations = false;
            else
                qplug__pol_fail(p, QPLUG_ERR_POLICY,
                                "[megamoe] fp4_activations = \"%s\" is not a boolean (true or false)",
                                value);
        }
    } else if (strcmp(section, "runtime") == 0) {
        if (strcmp(key, "device") == 0) {
            if (qplug__pol_seen(p, &p->seen_device, section, key))
                return 1;
            if (strcmp(value, "auto") == 0)
                p->pol->device = QPLUG_DEVPREF_AUTO;
            else if (strcmp(value, "cpu") == 0)
                p->pol->device = QPLUG_DEVPREF_CPU;
            else if (strcmp(value, "cuda") == 0)
                p->pol->device = QPLUG_DEVPREF_CUDA;
            else
                qplug__pol_fail(p, QPLUG_ERR_POLICY,
                                "[runtime] device = \"%s\" is not one of auto, cpu, cuda", value);
        } else if (strcmp(key, "threads") == 0) {
            if (qplug__pol_seen(p, &p->seen_threads, section, key))
                return 1;
            char *end = NULL;
            long v = value[0] >= '0' && value[0] <= '9' ? strtol(value, &end, 10) : -1;
            if (!end || *end || v < 0 || v > 4096)
                qplug__pol_fail(p, QPLUG_ERR_POLICY,
                                "[runtime] threads = \"%s\" is not an integer in [0, 4096]", value);
            else
                p->pol->threads = (int)v;
        } else {
            qplug__pol_fail(p, QPLUG_ERR_POLICY, "[runtime] unknown key \"%s\" (known: device, threads)",
                            key);
        }
    } else if (strncmp(section, "rule", 4) == 0) {
        qplug__pol_rule_key(p, section, key, value);
    }
    /* Any other section was refused when the reader saw its header. */
    return 1;
}

void qplug_policy_init(qplug_policy *pol)
{
    memset(pol, 0, sizeof *pol);
    pol->device = QPLUG_DEVPREF_AUTO;
}

void qplug_policy_free(qplug_policy *pol)
{
    if (!pol)
        return;
    for (size_t i = 0; i < pol->n_dirs; i++)
        free(pol->dirs[i]);
    free(pol->dirs);
    for (size_t i = 0; i < pol->n_rules; i++) {
        free(pol->rules[i].name);
        free(pol->rules[i].match);
        free(pol->rules[i].plugin);
    }
    free(pol->rules);
    qplug_policy_init(pol);
}

qplug_status qplug_policy_parse(const char *text, size_t len, const char *source, qplug_policy *pol,
                                qplug_err *err)
{
    qplug_policy_init(pol);
    const char *src = source ? source : "<policy>";
    if (!text && len)
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT, "%s: NULL text", src);
    qplug__pol_parse p = {.src = src, .text = text, .len = len, .pol = pol, .err = err};
    const char *nul = len ? memchr(text, '\0', len) : NULL;
    if (nul) {
        int line = 1;
        for (const char *c = text; c < nul; c++)
            line += *c == '\n';
        return qplug_err_set(err, QPLUG_ERR_POLICY, "%s:%d: NUL byte in the text", src, line);
    }
    int rc = ini_parse_stream(qplug__pol_reader, &p, qplug__pol_handler, &p);
    if (p.st == QPLUG_OK && rc == -2)
        p.st = qplug_err_set(err, QPLUG_ERR_NOMEM, "%s: out of memory", src);
    else if (p.st == QPLUG_OK && rc > 0)
        p.st = qplug_err_set(err, QPLUG_ERR_POLICY,
                             "%s:%d: syntax error (expected [section], key = value or a comment)",
                             src, rc);
    else if (p.st == QPLUG_OK && rc != 0)
        p.st = qplug_err_set(err, QPLUG_ERR_POLICY, "%s: cannot parse", src);
    for (size_t i = 0; p.st == QPLUG_OK && i < pol->n_rules; i++) {
        const qplug_policy_rule *r = &pol->rules[i];
        if (!r->match || !r->plugin)
            p.st = qplug_err_set(err, QPLUG_ERR_POLICY, "%s:%d: [rule %s] is missing \"%s\"", src,
                                 r->line, r->name, !r->match ? "match" : "plugin");
    }
    if (p.st != QPLUG_OK) {
        qplug_policy_free(pol);
        return p.st;
    }
    snprintf(pol->path, sizeof pol->path, "%s", source ? source : "");
    return QPLUG_OK;
}

qplug_status qplug_policy_load(const char *path, qplug_policy *pol, qplug_err *err)
{
    qplug_policy_init(pol);
    char *text = NULL;
    size_t len = 0;
    qplug_status st = qplug__read_file(path, QPLUG__POL_MAX_FILE, &text, &len, err);
    if (st != QPLUG_OK)
        return st;
    st = qplug_policy_parse(text, len, path, pol, err);
    free(text);
    return st;
}

const char *qplug_policy_option(const qplug_policy *pol, const char *section, const char *key)
{
    if (!pol || !section || !key)
        return NULL;
    if (strcmp(section, "megamoe") == 0 && strcmp(key, "fp4_activations") == 0)
        return pol->fp4_activations ? "true" : "false";
    if (strcmp(section, "runtime") == 0 && strcmp(key, "device") == 0)
        return pol->device == QPLUG_DEVPREF_CPU ? "cpu" : pol->device == QPLUG_DEVPREF_CUDA ? "cuda" : "auto";
    return NULL;
}
