/* The plugin registry: loads plugin shared objects with dlopen, validates
 * their vtables against the ABI rules of plugin.h, and keeps them open
 * until the registry is destroyed. */
#include "qplug/registry.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The mandatory 1.0 slots end with destroy; kv_entry_bytes is optional and
 * read only when the plugin's struct_size covers it. */
#define QPLUG__PLUGIN_MIN_SIZE (offsetof(qplug_plugin, destroy) + sizeof(((qplug_plugin *)0)->destroy))

/* Plugin names longer than this are refused: they end up in log lines,
 * policy rules and `qplug plan` tables. */
#define QPLUG__PLUGIN_NAME_MAX 64

typedef struct qplug__reg_entry {
    /* A zero-filled copy of the plugin's vtable, so slots beyond the
     * plugin's struct_size read as NULL and never touch its memory. */
    qplug_plugin vt;
    char *origin;
    void *handle; /* NULL for plugins registered with qplug_registry_add */
} qplug__reg_entry;

struct qplug_registry {
    /* Entries are allocated one by one so the vtable pointers handed out
     * stay valid while the array grows. */
    qplug__reg_entry **v;
    size_t n, cap;
};

qplug_status qplug_registry_create(qplug_registry **out, qplug_err *err)
{
    if (!out)
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT, "qplug_registry_create: out is NULL");
    *out = calloc(1, sizeof **out);
    if (!*out)
        return qplug_err_set(err, QPLUG_ERR_NOMEM, "plugin registry: out of memory");
    return QPLUG_OK;
}

void qplug_registry_destroy(qplug_registry *reg)
{
    if (!reg)
        return;
    for (size_t i = 0; i < reg->n; i++) {
        if (reg->v[i]->handle)
            dlclose(reg->v[i]->handle);
        free(reg->v[i]->origin);
        free(reg->v[i]);
    }
    free(reg->v);
    free(reg);
}

static int qplug__valid_name(const char *name)
{
    size_t len = 0;
    for (const char *p = name; *p; p++, len++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            return 0;
    }
    return len > 0 && len <= QPLUG__PLUGIN_NAME_MAX;
}

/* Checks everything the ABI asks of a vtable and appends a copy of it. On
 * success the registry owns `handle` (which may be NULL). */
static qplug_status qplug__register(qplug_registry *reg, const qplug_plugin *p, const char *origin,
                                    void *handle, qplug_err *err)
{
    uint32_t major = QPLUG_ABI_MAJOR(p->abi_version);
    if (major != QPLUG_ABI_VERSION_MAJOR)
        return qplug_err_set(err, QPLUG_ERR_ABI, "plugin %s: plugin ABI %u.%u, host %u.%u", origin,
                             major, QPLUG_ABI_MINOR(p->abi_version), QPLUG_ABI_VERSION_MAJOR,
                             QPLUG_ABI_VERSION_MINOR);
    if (p->struct_size < QPLUG__PLUGIN_MIN_SIZE)
        return qplug_err_set(err, QPLUG_ERR_ABI,
                             "plugin %s: struct_size %u is smaller than the %zu bytes of the ABI "
                             "1.0 vtable",
                             origin, p->struct_size, (size_t)QPLUG__PLUGIN_MIN_SIZE);

    qplug_plugin vt;
    memset(&vt, 0, sizeof vt);
    size_t n = p->struct_size < sizeof vt ? p->struct_size : sizeof vt;
    memcpy(&vt, p, n);

    const char *missing = !vt.name                    ? "name"
                          : !vt.score                 ? "score"
                          : !vt.create_weights        ? "create_weights"
                          : !vt.process_after_loading ? "process_after_loading"
                          : !vt.apply                 ? "apply"
                          : !vt.destroy               ? "destroy"
                                                      : NULL;
    if (missing)
        return qplug_err_set(err, QPLUG_ERR_PLUGIN, "plugin %s: mandatory slot %s is NULL", origin,
                             missing);
    if (!qplug__valid_name(vt.name))
        return qplug_err_set(err, QPLUG_ERR_PLUGIN,
                             "plugin %s: name \"%.80s\" is not 1 to %d characters of [a-z0-9_]",
                             origin, vt.name, QPLUG__PLUGIN_NAME_MAX);
    for (size_t i = 0; i < reg->n; i++)
        if (strcmp(reg->v[i]->vt.name, vt.name) == 0)
            return qplug_err_set(err, QPLUG_ERR_DUPLICATE,
                                 "plugin %s: name \"%s\" is already taken by %s", origin, vt.name,
                                 reg->v[i]->origin);

    if (reg->n == reg->cap) {
        size_t cap = reg->cap ? reg->cap * 2 : 8;
        qplug__reg_entry **v = realloc(reg->v, cap * sizeof *v);
        if (!v)
            return qplug_err_set(err, QPLUG_ERR_NOMEM, "plugin %s: out of memory", origin);
        reg->v = v;
        reg->cap = cap;
    }
    qplug__reg_entry *e = calloc(1, sizeof *e);
    char *o = strdup(origin);
    if (!e || !o) {
        free(e);
        free(o);
        return qplug_err_set(err, QPLUG_ERR_NOMEM, "plugin %s: out of memory", origin);
    }
    e->vt = vt;
    e->origin = o;
    e->handle = handle;
    reg->v[reg->n++] = e;
    return QPLUG_OK;
}

qplug_status qplug_registry_add(qplug_registry *reg, const qplug_plugin *p, const char *origin,
                                qplug_err *err)
{
    if (!reg || !p)
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT, "qplug_registry_add: NULL argument");
    return qplug__register(reg, p, origin ? origin : "(built in)", NULL, err);
}

qplug_status qplug_registry_load_file(qplug_registry *reg, const char *path, qplug_err *err)
{
    if (!reg || !path)
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT, "qplug_registry_load_file: NULL argument");
    /* Clear any stale error so the text reported below is this call's. */
    (void)dlerror();
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *why = dlerror();
        return qplug_err_set(err, QPLUG_ERR_PLUGIN, "plugin %s: not a loadable library: %s", path,
                             why ? why : "unknown dlopen error");
    }
    /* ISO C forbids converting a data pointer to a function pointer, so the
     * symbol address is copied bytewise, as POSIX recommends. */
    void *sym = dlsym(h, QPLUG_PLUGIN_ENTRY_SYMBOL);
    if (!sym) {
        dlclose(h);
        return qplug_err_set(err, QPLUG_ERR_PLUGIN, "plugin %s: no %s symbol", path,
                             QPLUG_PLUGIN_ENTRY_SYMBOL);
    }
    qplug_plugin_entry_fn entry;
    memcpy(&entry, &sym, sizeof entry);
    const qplug_plugin *p = entry();
    if (!p) {
        dlclose(h);
        return qplug_err_set(err, QPLUG_ERR_PLUGIN, "plugin %s: %s returned NULL", path,
                             QPLUG_PLUGIN_ENTRY_SYMBOL);
    }
    qplug_status st = qplug__register(reg, p, path, h, err);
    if (st != QPLUG_OK) {
        dlclose(h);
        return st;
    }
    qplug_log(QPLUG_LOG_INFO, "loaded plugin %s from %s", p->name, path);
    return QPLUG_OK;
}

static int qplug__cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int qplug__has_so_suffix(const char *name)
{
    size_t len = strlen(name);
    return len > 3 && strcmp(name + len - 3, ".so") == 0;
}

qplug_status qplug_registry_load_dir(qplug_registry *reg, const char *dir, qplug_err *err)
{
    if (!reg || !dir)
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT, "qplug_registry_load_dir: NULL argument");
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT || errno == ENOTDIR)
            return QPLUG_OK;
        return qplug_err_set(err, QPLUG_ERR_IO, "plugin directory %s: %s", dir, strerror(errno));
    }

    /* Collect the names first so the load order is the name order, not
     * whatever order the file system returns. */
    char **names = NULL;
    size_t n = 0, cap = 0;
    qplug_status st = QPLUG_OK;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!qplug__has_so_suffix(de->d_name))
            continue;
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 16;
            char **nv = realloc(names, nc * sizeof *nv);
            if (!nv) {
                st = qplug_err_set(err, QPLUG_ERR_NOMEM, "plugin directory %s: out of memory", dir);
                break;
            }
            names = nv;
            cap = nc;
        }
        names[n] = strdup(de->d_name);
        if (!names[n]) {
            st = qplug_err_set(err, QPLUG_ERR_NOMEM, "plugin directory %s: out of memory", dir);
            break;
        }
        n++;
    }
    closedir(d);
    if (st == QPLUG_OK && n > 1)
        qsort(names, n, sizeof *names, qplug__cmp_str);

    /* The first failure stops the scan: a broken plugin directory is a
     * deployment error, not something to skip quietly. */
    for (size_t i = 0; i < n && st == QPLUG_OK; i++) {
        size_t len = strlen(dir) + 1 + strlen(names[i]) + 1;
        char *path = malloc(len);
        if (!path) {
            st = qplug_err_set(err, QPLUG_ERR_NOMEM, "plugin directory %s: out of memory", dir);
            break;
        }
        snprintf(path, len, "%s/%s", dir, names[i]);
        struct stat sb;
        if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode))
            st = qplug_registry_load_file(reg, path, err);
        free(path);
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return st;
}

/* The directories of the standard search, in order, with duplicates (by
 * realpath) and missing directories already dropped. */
typedef struct qplug__dirlist {
    char **v;
    size_t n, cap;
} qplug__dirlist;

static void qplug__dirlist_free(qplug__dirlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
}

/* Appends the canonical form of `dir` unless it does not exist or is
 * already in the list. Fails only when out of memory. */
static qplug_status qplug__dirlist_add(qplug__dirlist *l, const char *dir, qplug_err *err)
{
    if (!dir || !*dir)
        return QPLUG_OK;
    char *real = realpath(dir, NULL);
    if (!real)
        return QPLUG_OK;
    for (size_t i = 0; i < l->n; i++) {
        if (strcmp(l->v[i], real) == 0) {
            free(real);
            return QPLUG_OK;
        }
    }
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 8;
        char **nv = realloc(l->v, nc * sizeof *nv);
        if (!nv) {
            free(real);
            return qplug_err_set(err, QPLUG_ERR_NOMEM, "plugin search path: out of memory");
        }
        l->v = nv;
        l->cap = nc;
    }
    l->v[l->n++] = real;
    return QPLUG_OK;
}

/* Adds each entry of a colon-separated list. */
static qplug_status qplug__dirlist_add_path(qplug__dirlist *l, const char *list, qplug_err *err)
{
    char *copy = strdup(list);
    if (!copy)
        return qplug_err_set(err, QPLUG_ERR_NOMEM, "plugin search path: out of memory");
    qplug_status st = QPLUG_OK;
    char *save = NULL;
    for (char *tok = strtok_r(copy, ":", &save); tok && st == QPLUG_OK;
         tok = strtok_r(NULL, ":", &save))
        st = qplug__dirlist_add(l, tok, err);
    free(copy);
    return st;
}

/* Adds <directory of the running executable>/../etc/plugins.d, which is
 * where plugins sit in both the build tree and the install tree. */
static qplug_status qplug__dirlist_add_exe_relative(qplug__dirlist *l, qplug_err *err)
{
    char exe[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len <= 0)
        return QPLUG_OK;
    exe[len] = '\0';
    char *slash = strrchr(exe, '/');
    if (!slash)
        return QPLUG_OK;
    *slash = '\0';
    static const char rel[] = "/../etc/plugins.d";
    if (strlen(exe) + sizeof rel > sizeof exe)
        return QPLUG_OK;
    strcat(exe, rel);
    return qplug__dirlist_add(l, exe, err);
}

qplug_status qplug_registry_load_default(qplug_registry *reg, const qplug_policy *pol,
                                         qplug_err *err)
{
    if (!reg)
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT, "qplug_registry_load_default: NULL registry");
    qplug__dirlist dirs = {0};
    qplug_status st = QPLUG_OK;
    if (pol)
        for (size_t i = 0; i < pol->n_dirs && st == QPLUG_OK; i++)
            st = qplug__dirlist_add(&dirs, pol->dirs[i], err);
    const char *env = getenv("QPLUG_PLUGIN_PATH");
    if (st == QPLUG_OK && env && *env)
        st = qplug__dirlist_add_path(&dirs, env, err);
    if (st == QPLUG_OK)
        st = qplug__dirlist_add_exe_relative(&dirs, err);
#ifdef QPLUG_PLUGIN_INSTALL_DIR
    if (st == QPLUG_OK)
        st = qplug__dirlist_add(&dirs, QPLUG_PLUGIN_INSTALL_DIR, err);
#endif
    for (size_t i = 0; i < dirs.n && st == QPLUG_OK; i++)
        st = qplug_registry_load_dir(reg, dirs.v[i], err);
    qplug__dirlist_free(&dirs);
    return st;
}

size_t qplug_registry_count(const qplug_registry *reg)
{
    return reg ? reg->n : 0;
}

const qplug_plugin *qplug_registry_get(const qplug_registry *reg, size_t i)
{
    return reg && i < reg->n ? &reg->v[i]->vt : NULL;
}

const char *qplug_registry_origin(const qplug_registry *reg, size_t i)
{
    return reg && i < reg->n ? reg->v[i]->origin : NULL;
}

const qplug_plugin *qplug_registry_find(const qplug_registry *reg, const char *name)
{
    if (!reg || !name)
        return NULL;
    for (size_t i = 0; i < reg->n; i++)
        if (strcmp(reg->v[i]->vt.name, name) == 0)
            return &reg->v[i]->vt;
    return NULL;
}
