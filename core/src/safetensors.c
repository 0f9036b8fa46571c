/*
 * safetensors files and sharded checkpoints.
 *
 * A file is an 8-byte little-endian header length, a JSON header and the
 * payload. The header is validated completely before any tensor is handed
 * out, because every later consumer trusts the descriptors blindly: a bad
 * offset here would become an out-of-bounds read in a kernel.
 */
#include "qplug/safetensors.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "readfile.h"

/* A header larger than this is refused: real checkpoints stay far below it
 * (about 10 MB for 100k tensors), and it bounds what a hostile file makes us
 * allocate. */
#define QPLUG__ST_MAX_HEADER (100u * 1024u * 1024u)
/* The largest integer a JSON number (a double) holds exactly. */
#define QPLUG__ST_MAX_INT 9007199254740992.0
/* Element counts above this are refused, so that numel * bits never
 * overflows 64 bits. */
#define QPLUG__ST_MAX_NUMEL ((uint64_t)1 << 56)
#define QPLUG__ST_MAX_INDEX (256u * 1024u * 1024u)

struct qplug_st_file {
    char *path;
    const uint8_t *base;           /* the whole file image */
    size_t len;
    void *map;                     /* our own mapping, or NULL */
    size_t map_len;
    qplug_tensor *tensors;         /* header order */
    size_t n;
    char *names;                   /* arena holding every tensor name */
    size_t *by_name;               /* tensor indices sorted by name */
};

/* ------------------------------------------------------------ helpers */

static int qplug__st_dtype_from_name(const char *s, qplug_dtype *out)
{
    for (int d = 0; d < QPLUG_DT_COUNT; d++) {
        if (strcmp(s, qplug_dtype_name((qplug_dtype)d)) == 0) {
            *out = (qplug_dtype)d;
            return 1;
        }
    }
    return 0;
}

/* A JSON number that is a non-negative integer we can represent exactly. */
static int qplug__st_json_uint(const cJSON *item, uint64_t *out)
{
    if (!cJSON_IsNumber(item))
        return 0;
    double v = item->valuedouble;
    if (!(v >= 0.0) || v > QPLUG__ST_MAX_INT || v != (double)(uint64_t)v)
        return 0;
    *out = (uint64_t)v;
    return 1;
}

/* qsort has no context argument in C11; the sorts below index into arrays
 * whose base is passed through these small structs instead. */
typedef struct qplug__st_name_ref {
    const char *name;
    size_t idx;
} qplug__st_name_ref;

static int qplug__st_cmp_name_ref(const void *a, const void *b)
{
    const qplug__st_name_ref *x = a, *y = b;
    return strcmp(x->name, y->name);
}

typedef struct qplug__st_span {
    uint64_t start, end;
    size_t idx;
} qplug__st_span;

static int qplug__st_cmp_span(const void *a, const void *b)
{
    const qplug__st_span *x = a, *y = b;
    if (x->start != y->start)
        return x->start < y->start ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return 0;
}

/* ------------------------------------------------------------ parsing */

static qplug_status qplug__st_metadata(const cJSON *meta, const char *src, qplug_err *err)
{
    if (!cJSON_IsObject(meta))
        return qplug_err_set(err, QPLUG_ERR_FORMAT, "%s: \"__metadata__\" is not a JSON object",
                             src);
    for (const cJSON *kv = meta->child; kv; kv = kv->next)
        if (!cJSON_IsString(kv))
            return qplug_err_set(err, QPLUG_ERR_FORMAT,
                                 "%s: \"__metadata__\" key \"%s\": value is not a string", src,
                                 kv->string);
    return QPLUG_OK;
}

/* Fills tensor *t (name set by the caller) and its byte range from one
 * header entry. */
static qplug_status qplug__st_entry(const cJSON *e, const char *src, const char *name,
                                    uint64_t payload, qplug_tensor *t, qplug__st_span *span,
                                    qplug_err *err)
{
    if (!cJSON_IsObject(e))
        return qplug_err_set(err, QPLUG_ERR_FORMAT, "%s: tensor \"%s\": entry is not a JSON object",
                             src, name);
    const cJSON *dtype = NULL, *shape = NULL, *offs = NULL;
    for (const cJSON *f = e->child; f; f = f->next) {
        const cJSON **slot = NULL;
        if (strcmp(f->string, "dtype") == 0)
            slot = &dtype;
        else if (strcmp(f->string, "shape") == 0)
            slot = &shape;
        else if (strcmp(f->string, "data_offsets") == 0)
            slot = &offs;
        else
            return qplug_err_set(err, QPLUG_ERR_FORMAT, "%s: tensor \"%s\": unknown key \"%s\"",
                                 src, name, f->string);
        if (*slot)
            return qplug_err_set(err, QPLUG_ERR_FORMAT, "%s: tensor \"%s\": key \"%s\" given twice",
                                 src, name, f->string);
        *slot = f;
    }
    if (!dtype || !shape || !offs)
        return qplug_err_set(err, QPLUG_ERR_FORMAT, "%s: tensor \"%s\": missing \"%s\"", src, name,
                             !dtype ? "dtype" : !shape ? "shape" : "data_offsets");

    if (!cJSON_IsString(dtype))
        return qplug_err_set(err, QPLUG_ERR_FORMAT, "%s: tensor \"%s\": dtype is not a string", src,
                             name);
    if (!qplug__st_dtype_from_name(dtype->valuestring, &t->dtype))
        return qplug_err_set(err, QPLUG_ERR_DTYPE,
                             "%s: tensor \"%s\": unknown dtype \"%s\" (known: BF16 F16 F32 F64 I8 "
                             "U8 I32 I64 F8_E4M3 F8_E8M0 F4)",
                             src, name, dtype->valuestring);

    if (!cJSON_IsArray(shape))
        return qplug_err_set(err, QPLUG_ERR_FORMAT, "%s: tensor \"%s\": shape is not an array", src,
                             name);
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > QPLUG_MAX_DIMS)
        return qplug_err_set(err, QPLUG_ERR_SHAPE,
                             "%s: tensor \"%s\": shape has %d dimensions, at most %d are supported",
                             src, name, ndim, QPLUG_MAX_DIMS);
    t->ndim = ndim;
    uint64_t numel = 1;
    int i = 0;
    for (const cJSON *d = shape->child; d; d = d->next, i++) {
        uint64_t v;
        if (!qplug__st_json_uint(d, &v))
            return qplug_err_set(err, QPLUG_ERR_SHAPE,
                                 "%s: tensor \"%s\": shape[%d] is not a non-negative integer", src,
                                 name, i);
        if (v != 0 && numel > QPLUG__ST_MAX_NUMEL / v)
            return qplug_err_set(err, QPLUG_ERR_SHAPE,
                                 "%s: tensor \"%s\": shape is too large (element count overflows)",
                                 src, name);
        numel *= v;
        t->shape[i] = (int64_t)v;
    }
    uint64_t nbytes = (numel * qplug_dtype_bits(t->dtype) + 7) / 8;

    uint64_t start, end;
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 ||
        !qplug__st_json_uint(offs->child, &start) || !qplug__st_json_uint(offs->child->next, &end))
        return qplug_err_set(err, QPLUG_ERR_FORMAT,
                             "%s: tensor \"%s\": data_offsets is not [start, end] of non-negative "
                             "integers",
                             src, name);
    if (start > end)
        return qplug_err_set(err, QPLUG_ERR_FORMAT,
                             "%s: tensor \"%s\": data_offsets [%llu, %llu] end before they start",
                             src, name, (unsigned long long)start, (unsigned long long)end);
    if (end > payload)
        return qplug_err_set(err, QPLUG_ERR_FORMAT,
                             "%s: tensor \"%s\": data_offsets [%llu, %llu] lie outside the payload "
                             "of %llu bytes",
                             src, name, (unsigned long long)start, (unsigned long long)end,
                             (unsigned long long)payload);
    if (end - start != nbytes)
        return qplug_err_set(err, QPLUG_ERR_SHAPE,
                             "%s: tensor \"%s\": dtype %s and shape need %llu bytes but "
                             "data_offsets [%llu, %llu] hold %llu",
                             src, name, qplug_dtype_name(t->dtype), (unsigned long long)nbytes,
                             (unsigned long long)start, (unsigned long long)end,
                             (unsigned long long)(end - start));
    span->start = start;
    span->end = end;
    return QPLUG_OK;
}

/* Validates f->base/f->len and builds the tensor table. */
static qplug_status qplug__st_parse(qplug_st_file *f, qplug_err *err)
{
    const char *src = f->path;
    if (f->len < 8)
        return qplug_err_set(err, QPLUG_ERR_FORMAT,
                             "%s: truncated file: %zu bytes, the header length alone needs 8", src,
                             f->len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | f->base[i];
    if (hlen > QPLUG__ST_MAX_HEADER)
        return qplug_err_set(err, QPLUG_ERR_FORMAT,
                             "%s: header length %llu exceeds the limit of %u bytes", src,
                             (unsigned long long)hlen, QPLUG__ST_MAX_HEADER);
    if (hlen > f->len - 8)
        return qplug_err_set(err, QPLUG_ERR_FORMAT,
                             "%s: header length %llu runs past the end of the file (%zu bytes)",
                             src, (unsigned long long)hlen, f->len);
    uint64_t payload = f->len - 8 - hlen;
    const uint8_t *data = f->base + 8 + hlen;

    /* cJSON wants a terminated string; a private copy also keeps the parser
     * from ever reading past the header. */
    char *text = malloc(hlen + 1);
    if (!text)
        return qplug_err_set(err, QPLUG_ERR_NOMEM, "%s: out of memory for the header", src);
    memcpy(text, f->base + 8, hlen);
    text[hlen] = '\0';
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(text, &end, 0);
    qplug_status st = QPLUG_OK;
    qplug__st_span *spans = NULL;
    qplug__st_name_ref *refs = NULL;
    if (!root) {
        size_t at = end && end >= text ? (size_t)(end - text) : 0;
        st = qplug_err_set(err, QPLUG_ERR_FORMAT, "%s: header is not valid JSON (error near byte %zu)",
                           src, at);
        goto out;
    }
    /* Writers pad the header with spaces to align the payload; anything
     * else after the JSON value (a NUL byte included) is corruption. */
    for (const char *p = end; p < text + hlen; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            st = qplug_err_set(err, QPLUG_ERR_FORMAT,
                               "%s: unexpected byte 0x%02x after the header JSON at byte %zu", src,
                               (unsigned char)*p, (size_t)(p - text));
            goto out;
        }
    }
    if (!cJSON_IsObject(root)) {
        st = qplug_err_set(err, QPLUG_ERR_FORMAT, "%s: header is not a JSON object", src);
        goto out;
    }

    size_t n = 0;
    int seen_meta = 0;
    for (const cJSON *e = root->child; e; e = e->next) {
        if (strcmp(e->string, "__metadata__") == 0) {
            if (seen_meta) {
                st = qplug_err_set(err, QPLUG_ERR_DUPLICATE, "%s: \"__metadata__\" appears twice",
                                   src);
                goto out;
            }
            seen_meta = 1;
            if ((st = qplug__st_metadata(e, src, err)) != QPLUG_OK)
                goto out;
        } else {
            n++;
        }
    }
    f->tensors = calloc(n ? n : 1, sizeof *f->tensors);
    f->by_name = malloc((n ? n : 1) * sizeof *f->by_name);
    f->names = malloc(hlen + 1);
    spans = malloc((n ? n : 1) * sizeof *spans);
    refs = malloc((n ? n : 1) * sizeof *refs);
    if (!f->tensors || !f->by_name || !f->names || !spans || !refs) {
        st = qplug_err_set(err, QPLUG_ERR_NOMEM, "%s: out of memory for %zu tensors", src, n);
        goto out;
    }

    /* Every name is shorter than its quoted JSON form, so the names fit in
     * an arena of the header's size. */
    size_t used = 0, i = 0;
    for (const cJSON *e = root->child; e; e = e->next) {
        if (strcmp(e->string, "__metadata__") == 0)
            continue;
        size_t nl = strlen(e->string);
        if (nl == 0) {
            st = qplug_err_set(err, QPLUG_ERR_FORMAT, "%s: a tensor has an empty name", src);
            goto out;
        }
        if (used + nl + 1 > hlen + 1) {
            st = qplug_err_set(err, QPLUG_ERR_INTERNAL, "%s: tensor names overflow the arena", src);
            goto out;
        }
        char *name = f->names + used;
        memcpy(name, e->string, nl + 1);
        used += nl + 1;
        qplug_tensor *t = &f->tensors[i];
        t->name = name;
        t->device = QPLUG_DEVICE_CPU;
        if ((st = qplug__st_entry(e, src, name, payload, t, &spans[i], err)) != QPLUG_OK)
            goto out;
        t->data = (void *)(data + spans[i].start);
        spans[i].idx = i;
        refs[i].name = name;
        refs[i].idx = i;
        i++;
    }
    f->n = n;

    qsort(refs, n, sizeof *refs, qplug__st_cmp_name_ref);
    for (size_t k = 0; k < n; k++) {
        if (k > 0 && strcmp(refs[k - 1].name, refs[k].name) == 0) {
            st = qplug_err_set(err, QPLUG_ERR_DUPLICATE, "%s: tensor \"%s\" appears twice in the header",
                               src, refs[k].name);
            goto out;
        }
        f->by_name[k] = refs[k].idx;
    }

    /* Overlaps: after sorting by start, each non-empty tensor must begin at
     * or after the end of the previous non-empty one. Empty tensors occupy
     * no bytes and cannot overlap anything. */
    qsort(spans, n, sizeof *spans, qplug__st_cmp_span);
    const qplug__st_span *prev = NULL;
    for (size_t k = 0; k < n; k++) {
        const qplug__st_span *s = &spans[k];
        if (s->start == s->end)
            continue;
        if (prev && s->start < prev->end) {
            st = qplug_err_set(err, QPLUG_ERR_FORMAT,
                               "%s: tensors \"%s\" [%llu, %llu) and \"%s\" [%llu, %llu) overlap", src,
                               f->tensors[prev->idx].name, (unsigned long long)prev->start,
                               (unsigned long long)prev->end, f->tensors[s->idx].name,
                               (unsigned long long)s->start, (unsigned long long)s->end);
            goto out;
        }
        prev = s;
    }

out:
    free(spans);
    free(refs);
    cJSON_Delete(root);
    free(text);
    return st;
}

static qplug_st_file *qplug__st_new(const char *source)
{
    qplug_st_file *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    f->path = strdup(source ? source : "<memory>");
    if (!f->path) {
        free(f);
        return NULL;
    }
    return f;
}

qplug_status qplug_st_open_memory(const uint8_t *buf, size_t len, const char *source,
                                  qplug_st_file **out, qplug_err *err)
{
    *out = NULL;
    if (!buf && len)
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT, "%s: NULL buffer", source ? source : "<memory>");
    qplug_st_file *f = qplug__st_new(source);
    if (!f)
        return qplug_err_set(err, QPLUG_ERR_NOMEM, "%s: out of memory", source ? source : "<memory>");
    f->base = buf;
    f->len = len;
    qplug_status st = qplug__st_parse(f, err);
    if (st != QPLUG_OK) {
        qplug_st_close(f);
        return st;
    }
    *out = f;
    return QPLUG_OK;
}

qplug_status qplug_st_open(const char *path, qplug_st_file **out, qplug_err *err)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return qplug_err_set(err, errno == ENOENT ? QPLUG_ERR_NOT_FOUND : QPLUG_ERR_IO,
                             "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return qplug_err_set(err, QPLUG_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return qplug_err_set(err, QPLUG_ERR_IO, "%s: not a regular file", path);
    }
    qplug_st_file *f = qplug__st_new(path);
    if (!f) {
        close(fd);
        return qplug_err_set(err, QPLUG_ERR_NOMEM, "%s: out of memory", path);
    }
    /* mmap refuses a zero length; an empty file is simply too short. */
    if (sb.st_size > 0) {
        void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            int e = errno;
            close(fd);
            qplug_st_close(f);
            return qplug_err_set(err, QPLUG_ERR_IO, "%s: mmap failed: %s", path, strerror(e));
        }
        f->map = m;
        f->map_len = (size_t)sb.st_size;
        f->base = m;
        f->len = (size_t)sb.st_size;
    }
    close(fd);
    qplug_status st = qplug__st_parse(f, err);
    if (st != QPLUG_OK) {
        qplug_st_close(f);
        return st;
    }
    *out = f;
    return QPLUG_OK;
}

void qplug_st_close(qplug_st_file *f)
{
    if (!f)
        return;
    if (f->map)
        munmap(f->map, f->map_len);
    free(f->tensors);
    free(f->by_name);
    free(f->names);
    free(f->path);
    free(f);
}

const char *qplug_st_path(const qplug_st_file *f)
{
    return f->path;
}

size_t qplug_st_count(const qplug_st_file *f)
{
    return f->n;
}

const qplug_tensor *qplug_st_tensor(const qplug_st_file *f, size_t i)
{
    return i < f->n ? &f->tensors[i] : NULL;
}

/* Index into f->tensors of `name`, or -1. */
static long qplug__st_lookup(const qplug_st_file *f, const char *name)
{
    size_t lo = 0, hi = f->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, f->tensors[f->by_name[mid]].name);
        if (c == 0)
            return (long)f->by_name[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return -1;
}

const qplug_tensor *qplug_st_find(const qplug_st_file *f, const char *name)
{
    long i = qplug__st_lookup(f, name);
    return i < 0 ? NULL : &f->tensors[i];
}

/* ------------------------------------------------------------ writing */

typedef struct qplug__st_buf {
    char *p;
    size_t len, cap;
    int oom;
} qplug__st_buf;

static void qplug__st_put(qplug__st_buf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void qplug__st_puts(qplug__st_buf *b, const char *s)
{
    qplug__st_put(b, s, strlen(s));
}

static void qplug__st_put_u64(qplug__st_buf *b, uint64_t v)
{
    char tmp[32];
    int n = snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v);
    qplug__st_put(b, tmp, (size_t)n);
}

/* A JSON string literal; bytes >= 0x80 pass through (names are UTF-8). */
static void qplug__st_put_json_string(qplug__st_buf *b, const char *s)
{
    qplug__st_put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            char esc[2] = {'\\', (char)*p};
            qplug__st_put(b, esc, 2);
        } else if (*p < 0x20) {
            char esc[8];
            snprintf(esc, sizeof esc, "\\u%04x", *p);
            qplug__st_put(b, esc, 6);
        } else {
            qplug__st_put(b, (const char *)p, 1);
        }
    }
    qplug__st_put(b, "\"", 1);
}

static int qplug__st_write_all(int fd, const void *data, size_t n)
{
    const uint8_t *p = data;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Checks the tensors and computes each one's byte count. */
static qplug_status qplug__st_check_out(const char *path, const qplug_tensor *tensors, size_t n,
                                        uint64_t *nbytes, qplug_err *err)
{
    for (size_t i = 0; i < n; i++) {
        const qplug_tensor *t = &tensors[i];
        if (!t->name || !t->name[0] || strcmp(t->name, "__metadata__") == 0)
            return qplug_err_set(err, QPLUG_ERR_ARGUMENT, "%s: tensor %zu has no usable name", path, i);
        if ((unsigned)t->dtype >= QPLUG_DT_COUNT)
            return qplug_err_set(err, QPLUG_ERR_DTYPE, "%s: tensor \"%s\": invalid dtype %d", path,
                                 t->name, (int)t->dtype);
        if (t->ndim < 0 || t->ndim > QPLUG_MAX_DIMS)
            return qplug_err_set(err, QPLUG_ERR_SHAPE, "%s: tensor \"%s\": invalid ndim %d", path,
                                 t->name, (int)t->ndim);
        uint64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            if (t->shape[d] < 0)
                return qplug_err_set(err, QPLUG_ERR_SHAPE, "%s: tensor \"%s\": shape[%d] is negative",
                                     path, t->name, d);
            uint64_t v = (uint64_t)t->shape[d];
            if (v != 0 && numel > QPLUG__ST_MAX_NUMEL / v)
                return qplug_err_set(err, QPLUG_ERR_SHAPE, "%s: tensor \"%s\": shape is too large",
                                     path, t->name);
            numel *= v;
        }
        nbytes[i] = (numel * qplug_dtype_bits(t->dtype) + 7) / 8;
        if (nbytes[i] && !t->data)
            return qplug_err_set(err, QPLUG_ERR_ARGUMENT, "%s: tensor \"%s\": data is NULL", path,
                                 t->name);
        if (t->device != QPLUG_DEVICE_CPU)
            return qplug_err_set(err, QPLUG_ERR_ARGUMENT,
                                 "%s: tensor \"%s\": data is not in CPU memory", path, t->name);
    }
    return QPLUG_OK;
}

qplug_status qplug_st_write(const char *path, const qplug_tensor *tensors, size_t n, qplug_err *err)
{
    if (!path || (n && !tensors))
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT, "qplug_st_write: NULL argument");
    uint64_t *nbytes = malloc((n ? n : 1) * sizeof *nbytes);
    qplug__st_name_ref *refs = malloc((n ? n : 1) * sizeof *refs);
    qplug__st_buf hdr = {0};
    char *tmp = NULL;
    int fd = -1;
    qplug_status st = QPLUG_OK;
    if (!nbytes || !refs) {
        st = qplug_err_set(err, QPLUG_ERR_NOMEM, "%s: out of memory", path);
        goto out;
    }
    if ((st = qplug__st_check_out(path, tensors, n, nbytes, err)) != QPLUG_OK)
        goto out;
    for (size_t i = 0; i < n; i++) {
        refs[i].name = tensors[i].name;
        refs[i].idx = i;
    }
    qsort(refs, n, sizeof *refs, qplug__st_cmp_name_ref);
    for (size_t i = 1; i < n; i++) {
        if (strcmp(refs[i - 1].name, refs[i].name) == 0) {
            st = qplug_err_set(err, QPLUG_ERR_DUPLICATE, "%s: tensor \"%s\" given twice", path,
                               refs[i].name);
            goto out;
        }
    }

    /* The header is written by hand rather than with cJSON so that offsets
     * are always plain integers (cJSON prints large ones in exponent form,
     * which strict readers reject). */
    uint64_t off = 0;
    qplug__st_puts(&hdr, "{");
    for (size_t i = 0; i < n; i++) {
        const qplug_tensor *t = &tensors[i];
        if (i)
            qplug__st_puts(&hdr, ",");
        qplug__st_put_json_string(&hdr, t->name);
        qplug__st_puts(&hdr, ":{\"dtype\":\"");
        qplug__st_puts(&hdr, qplug_dtype_name(t->dtype));
        qplug__st_puts(&hdr, "\",\"shape\":[");
        for (int d = 0; d < t->ndim; d++) {
            if (d)
                qplug__st_puts(&hdr, ",");
            qplug__st_put_u64(&hdr, (uint64_t)t->shape[d]);
        }
        qplug__st_puts(&hdr, "],\"data_offsets\":[");
        qplug__st_put_u64(&hdr, off);
        qplug__st_puts(&hdr, ",");
        off += nbytes[i];
        qplug__st_put_u64(&hdr, off);
        qplug__st_puts(&hdr, "]}");
    }
    qplug__st_puts(&hdr, "}");
    /* Pad so that the payload starts 8-byte aligned in the file (and in the
     * mapping, which is page aligned). */
    while ((8 + hdr.len) % 8 != 0)
        qplug__st_puts(&hdr, " ");
    if (hdr.oom) {
        st = qplug_err_set(err, QPLUG_ERR_NOMEM, "%s: out of memory for the header", path);
        goto out;
    }
    if (hdr.len > QPLUG__ST_MAX_HEADER) {
        st = qplug_err_set(err, QPLUG_ERR_ARGUMENT, "%s: header of %zu bytes exceeds the limit",
                           path, hdr.len);
        goto out;
    }

    size_t plen = strlen(path);
    tmp = malloc(plen + 16);
    if (!tmp) {
        st = qplug_err_set(err, QPLUG_ERR_NOMEM, "%s: out of memory", path);
        goto out;
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp.XXXXXX", 12);
    fd = mkstemp(tmp);
    if (fd < 0) {
        st = qplug_err_set(err, QPLUG_ERR_IO, "%s: cannot create a temporary file: %s", path,
                           strerror(errno));
        free(tmp);
        tmp = NULL;
        goto out;
    }
    /* mkstemp creates the file 0600; a checkpoint is meant to be shared. */
    if (fchmod(fd, 0644) != 0) {
        st = qplug_err_set(err, QPLUG_ERR_IO, "%s: chmod failed: %s", tmp, strerror(errno));
        goto out;
    }
    uint8_t len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (uint8_t)((uint64_t)hdr.len >> (8 * i));
    if (qplug__st_write_all(fd, len8, 8) != 0 || qplug__st_write_all(fd, hdr.p, hdr.len) != 0) {
        st = qplug_err_set(err, QPLUG_ERR_IO, "%s: write failed: %s", tmp, strerror(errno));
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        if (nbytes[i] && qplug__st_write_all(fd, tensors[i].data, nbytes[i]) != 0) {
            st = qplug_err_set(err, QPLUG_ERR_IO, "%s: writing tensor \"%s\" failed: %s", tmp,
                               tensors[i].name, strerror(errno));
            goto out;
        }
    }
    if (fsync(fd) != 0) {
        st = qplug_err_set(err, QPLUG_ERR_IO, "%s: fsync failed: %s", tmp, strerror(errno));
        goto out;
    }
    int rc = close(fd);
    fd = -1;
    if (rc != 0) {
        st = qplug_err_set(err, QPLUG_ERR_IO, "%s: close failed: %s", tmp, strerror(errno));
        goto out;
    }
    if (rename(tmp, path) != 0) {
        st = qplug_err_set(err, QPLUG_ERR_IO, "%s: rename from %s failed: %s", path, tmp,
                           strerror(errno));
        goto out;
    }
    free(tmp);
    tmp = NULL;
    /* Make the rename itself durable. Some file systems refuse fsync on a
     * directory; the data is already safe then, so that is not an error. */
    char *dir = strdup(path);
    if (dir) {
        char *slash = strrchr(dir, '/');
        const char *d = ".";
        if (slash) {
            *slash = '\0';
            d = slash == dir ? "/" : dir;
        }
        int dfd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            (void)fsync(dfd);
            close(dfd);
        }
        free(dir);
    }

out:
    if (fd >= 0)
        close(fd);
    if (tmp) {
        unlink(tmp);
        free(tmp);
    }
    free(hdr.p);
    free(refs);
    free(nbytes);
    return st;
}

/* ------------------------------------------------------------ checkpoints */

typedef struct qplug__ckpt_ref {
    uint32_t file;
    uint32_t idx;
} qplug__ckpt_ref;

struct qplug_ckpt {
    char *dir;
    qplug_st_file **files;
    size_t n_files;
    qplug__ckpt_ref *refs;         /* shard order, then header order */
    size_t n;
    size_t *by_name;               /* indices into refs sorted by name */
    uint64_t bytes;
};

void qplug_ckpt_close(qplug_ckpt *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n_files; i++)
        qplug_st_close(c->files[i]);
    free(c->files);
    free(c->refs);
    free(c->by_name);
    free(c->dir);
    free(c);
}

const char *qplug_ckpt_dir(const qplug_ckpt *c)
{
    return c->dir;
}

size_t qplug_ckpt_count(const qplug_ckpt *c)
{
    return c->n;
}

const qplug_tensor *qplug_ckpt_tensor(const qplug_ckpt *c, size_t i)
{
    if (i >= c->n)
        return NULL;
    return qplug_st_tensor(c->files[c->refs[i].file], c->refs[i].idx);
}

const char *qplug_ckpt_tensor_file(const qplug_ckpt *c, size_t i)
{
    if (i >= c->n)
        return NULL;
    return qplug_st_path(c->files[c->refs[i].file]);
}

long qplug_ckpt_lookup(const qplug_ckpt *c, const char *name)
{
    size_t lo = 0, hi = c->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int cmp = strcmp(name, qplug_ckpt_tensor(c, c->by_name[mid])->name);
        if (cmp == 0)
            return (long)c->by_name[mid];
        if (cmp < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return -1;
}

uint64_t qplug_ckpt_bytes(const qplug_ckpt *c)
{
    return c->bytes;
}

static char *qplug__path_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p)
        return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

static int qplug__cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Opens the shard files (names relative to c->dir), fills the tensor table
 * and checks that no tensor appears in two shards. */
static qplug_status qplug__ckpt_build(qplug_ckpt *c, char **names, size_t n_names, qplug_err *err)
{
    c->files = calloc(n_names ? n_names : 1, sizeof *c->files);
    if (!c->files)
        return qplug_err_set(err, QPLUG_ERR_NOMEM, "%s: out of memory", c->dir);
    size_t total = 0;
    for (size_t i = 0; i < n_names; i++) {
        char *p = qplug__path_join(c->dir, names[i]);
        if (!p)
            return qplug_err_set(err, QPLUG_ERR_NOMEM, "%s: out of memory", c->dir);
        qplug_status st = qplug_st_open(p, &c->files[i], err);
        free(p);
        if (st != QPLUG_OK)
            return st;
        c->n_files = i + 1;
        total += qplug_st_count(c->files[i]);
    }
    if (n_names > UINT32_MAX || total > UINT32_MAX)
        return qplug_err_set(err, QPLUG_ERR_UNSUPPORTED, "%s: too many tensors", c->dir);
    c->refs = malloc((total ? total : 1) * sizeof *c->refs);
    c->by_name = malloc((total ? total : 1) * sizeof *c->by_name);
    qplug__st_name_ref *sorted = malloc((total ? total : 1) * sizeof *sorted);
    if (!c->refs || !c->by_name || !sorted) {
        free(sorted);
        return qplug_err_set(err, QPLUG_ERR_NOMEM, "%s: out of memory for %zu tensors", c->dir, total);
    }
    size_t k = 0;
    for (size_t f = 0; f < c->n_files; f++) {
        for (size_t i = 0; i < qplug_st_count(c->files[f]); i++, k++) {
            const qplug_tensor *t = qplug_st_tensor(c->files[f], i);
            c->refs[k].file = (uint32_t)f;
            c->refs[k].idx = (uint32_t)i;
            sorted[k].name = t->name;
            sorted[k].idx = k;
            c->bytes += qplug_tensor_nbytes(t);
        }
    }
    c->n = total;
    qsort(sorted, total, sizeof *sorted, qplug__st_cmp_name_ref);
    for (size_t i = 0; i < total; i++) {
        if (i > 0 && strcmp(sorted[i - 1].name, sorted[i].name) == 0) {
            qplug_status st = qplug_err_set(
                err, QPLUG_ERR_DUPLICATE, "%s: tensor \"%s\" is in both %s and %s", c->dir,
                sorted[i].name, qplug_ckpt_tensor_file(c, sorted[i - 1].idx),
                qplug_ckpt_tensor_file(c, sorted[i].idx));
            free(sorted);
            return st;
        }
        c->by_name[i] = sorted[i].idx;
    }
    free(sorted);
    return QPLUG_OK;
}

/* One weight_map entry. */
typedef struct qplug__idx_entry {
    const char *tensor;
    const char *shard;
} qplug__idx_entry;

static int qplug__cmp_idx_entry(const void *a, const void *b)
{
    return strcmp(((const qplug__idx_entry *)a)->tensor, ((const qplug__idx_entry *)b)->tensor);
}

static const char *qplug__base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static qplug_status qplug__ckpt_open_index(qplug_ckpt *c, const char *index_path, qplug_err *err)
{
    char *text = NULL;
    size_t len = 0;
    qplug_status st = qplug__read_file(index_path, QPLUG__ST_MAX_INDEX, &text, &len, err);
    if (st != QPLUG_OK)
        return st;
    cJSON *root = NULL;
    qplug__idx_entry *entries = NULL;
    char **shards = NULL;
    size_t n_entries = 0, n_shards = 0;

    if (strlen(text) != len) {
        st = qplug_err_set(err, QPLUG_ERR_FORMAT, "%s: contains a NUL byte", index_path);
        goto out;
    }
    root = cJSON_ParseWithLength(text, len);
    if (!root || !cJSON_IsObject(root)) {
        st = qplug_err_set(err, QPLUG_ERR_FORMAT, "%s: not a JSON object", index_path);
        goto out;
    }
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!wm) {
        st = qplug_err_set(err, QPLUG_ERR_FORMAT, "%s: missing key \"weight_map\"", index_path);
        goto out;
    }
    if (!cJSON_IsObject(wm)) {
        st = qplug_err_set(err, QPLUG_ERR_FORMAT, "%s: key \"weight_map\" is not a JSON object",
                           index_path);
        goto out;
    }
    n_entries = (size_t)cJSON_GetArraySize(wm);
    entries = malloc((n_entries ? n_entries : 1) * sizeof *entries);
    shards = malloc((n_entries ? n_entries : 1) * sizeof *shards);
    if (!entries || !shards) {
        st = qplug_err_set(err, QPLUG_ERR_NOMEM, "%s: out of memory", index_path);
        goto out;
    }
    size_t i = 0;
    for (const cJSON *e = wm->child; e; e = e->next, i++) {
        if (!cJSON_IsString(e)) {
            st = qplug_err_set(err, QPLUG_ERR_FORMAT,
                               "%s: weight_map entry \"%s\": shard name is not a string", index_path,
                               e->string);
            goto out;
        }
        const char *s = e->valuestring;
        /* Shards live in the checkpoint directory itself: a path that leaves
         * it is either corruption or an attack. */
        if (!s[0] || strchr(s, '/') || strcmp(s, ".") == 0 || strcmp(s, "..") == 0) {
            st = qplug_err_set(err, QPLUG_ERR_FORMAT,
                               "%s: weight_map entry \"%s\": \"%s\" is not a file name in the "
                               "checkpoint directory",
                               index_path, e->string, s);
            goto out;
        }
        entries[i].tensor = e->string;
        entries[i].shard = s;
        shards[i] = (char *)s;
    }
    qsort(entries, n_entries, sizeof *entries, qplug__cmp_idx_entry);
    for (i = 1; i < n_entries; i++) {
        if (strcmp(entries[i - 1].tensor, entries[i].tensor) == 0) {
            st = qplug_err_set(err, QPLUG_ERR_DUPLICATE, "%s: tensor \"%s\" is listed twice",
                               index_path, entries[i].tensor);
            goto out;
        }
    }
    qsort(shards, n_entries, sizeof *shards, qplug__cmp_str);
    for (i = 0; i < n_entries; i++)
        if (n_shards == 0 || strcmp(shards[n_shards - 1], shards[i]) != 0)
            shards[n_shards++] = shards[i];

    /* A missing shard is reported against the index and one of its
     * tensors, which is what a user needs to find the broken download. */
    for (i = 0; i < n_shards; i++) {
        char *p = qplug__path_join(c->dir, shards[i]);
        if (!p) {
            st = qplug_err_set(err, QPLUG_ERR_NOMEM, "%s: out of memory", index_path);
            goto out;
        }
        int missing = access(p, F_OK) != 0 && errno == ENOENT;
        free(p);
        if (missing) {
            const char *tensor = "?";
            for (size_t k = 0; k < n_entries; k++)
                if (strcmp(entries[k].shard, shards[i]) == 0) {
                    tensor = entries[k].tensor;
                    break;
                }
            st = qplug_err_set(err, QPLUG_ERR_NOT_FOUND,
                               "%s: shard \"%s\" (holding tensor \"%s\" and maybe others) is missing",
                               index_path, shards[i], tensor);
            goto out;
        }
    }
    if ((st = qplug__ckpt_build(c, shards, n_shards, err)) != QPLUG_OK)
        goto out;

    /* Every index entry must be found in the shard it names... */
    for (i = 0; i < n_entries; i++) {
        long k = qplug_ckpt_lookup(c, entries[i].tensor);
        if (k < 0) {
            st = qplug_err_set(err, QPLUG_ERR_NOT_FOUND,
                               "%s: tensor \"%s\" is mapped to shard \"%s\", which does not contain it",
                               index_path, entries[i].tensor, entries[i].shard);
            goto out;
        }
        const char *actual = qplug__base_name(qplug_ckpt_tensor_file(c, (size_t)k));
        if (strcmp(actual, entries[i].shard) != 0) {
            st = qplug_err_set(err, QPLUG_ERR_FORMAT,
                               "%s: tensor \"%s\" is mapped to shard \"%s\" but is in \"%s\"",
                               index_path, entries[i].tensor, entries[i].shard, actual);
            goto out;
        }
    }
    /* ...and every tensor of a shard must be in the index. */
    if (c->n != n_entries) {
        for (size_t k = 0; k < c->n; k++) {
            const qplug_tensor *t = qplug_ckpt_tensor(c, k);
            qplug__idx_entry key = {t->name, NULL};
            if (!bsearch(&key, entries, n_entries, sizeof *entries, qplug__cmp_idx_entry)) {
                st = qplug_err_set(err, QPLUG_ERR_FORMAT,
                                   "%s: tensor \"%s\" in shard \"%s\" is not listed in the index",
                                   index_path, t->name,
                                   qplug__base_name(qplug_ckpt_tensor_file(c, k)));
                goto out;
            }
        }
        st = qplug_err_set(err, QPLUG_ERR_INTERNAL, "%s: tensor count mismatch", index_path);
    }

out:
    free(shards);
    free(entries);
    cJSON_Delete(root);
    free(text);
    return st;
}

static int qplug__has_suffix(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Every *.safetensors in the directory, sorted by name. */
static qplug_status qplug__ckpt_open_glob(qplug_ckpt *c, qplug_err *err)
{
    DIR *d = opendir(c->dir);
    if (!d)
        return qplug_err_set(err, errno == ENOENT ? QPLUG_ERR_NOT_FOUND : QPLUG_ERR_IO,
                             "%s: cannot open the checkpoint directory: %s", c->dir, strerror(errno));
    char **names = NULL;
    size_t n = 0, cap = 0;
    qplug_status st = QPLUG_OK;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.' || !qplug__has_suffix(de->d_name, ".safetensors"))
            continue;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            char **nn = realloc(names, ncap * sizeof *nn);
            if (!nn) {
                st = qplug_err_set(err, QPLUG_ERR_NOMEM, "%s: out of memory", c->dir);
                goto out;
            }
            names = nn;
            cap = ncap;
        }
        if (!(names[n] = strdup(de->d_name))) {
            st = qplug_err_set(err, QPLUG_ERR_NOMEM, "%s: out of memory", c->dir);
            goto out;
        }
        n++;
    }
    if (n == 0) {
        st = qplug_err_set(err, QPLUG_ERR_NOT_FOUND,
                           "%s: no model.safetensors.index.json, model.safetensors or *.safetensors",
                           c->dir);
        goto out;
    }
    qsort(names, n, sizeof *names, qplug__cmp_str);
    st = qplug__ckpt_build(c, names, n, err);
out:
    closedir(d);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return st;
}

qplug_status qplug_ckpt_open(const char *dir, qplug_ckpt **out, qplug_err *err)
{
    *out = NULL;
    qplug_ckpt *c = calloc(1, sizeof *c);
    if (!c || !(c->dir = strdup(dir))) {
        free(c);
        return qplug_err_set(err, QPLUG_ERR_NOMEM, "%s: out of memory", dir);
    }
    qplug_status st;
    char *index = qplug__path_join(dir, "model.safetensors.index.json");
    char *single = qplug__path_join(dir, "model.safetensors");
    if (!index || !single) {
        st = qplug_err_set(err, QPLUG_ERR_NOMEM, "%s: out of memory", dir);
    } else if (access(index, F_OK) == 0) {
        st = qplug__ckpt_open_index(c, index, err);
    } else if (access(single, F_OK) == 0) {
        char *names[1] = {"model.safetensors"};
        st = qplug__ckpt_build(c, names, 1, err);
    } else {
        st = qplug__ckpt_open_glob(c, err);
    }
    free(index);
    free(single);
    if (st != QPLUG_OK) {
        qplug_ckpt_close(c);
        return st;
    }
    *out = c;
    return QPLUG_OK;
}
