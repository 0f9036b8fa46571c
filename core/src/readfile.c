/* Whole-file reads for the small text files of a checkpoint and a policy. */
#include "readfile.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

qplug_status qplug__read_file(const char *path, size_t max_bytes, char **out, size_t *len,
                              qplug_err *err)
{
    *out = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return qplug_err_set(err, errno == ENOENT ? QPLUG_ERR_NOT_FOUND : QPLUG_ERR_IO,
                             "%s: cannot open: %s", path, strerror(errno));
    /* Read in chunks rather than trusting the size from stat: the path may
     * name a pipe or a device whose size is not known in advance. */
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    if (!buf) {
        fclose(f);
        return qplug_err_set(err, QPLUG_ERR_NOMEM, "%s: out of memory", path);
    }
    for (;;) {
        if (n == cap) {
            if (cap >= max_bytes) {
                /* Exactly max_bytes is fine: only a further byte is too many. */
                if (fgetc(f) == EOF && !ferror(f))
                    break;
                free(buf);
                fclose(f);
                return qplug_err_set(err, QPLUG_ERR_FORMAT, "%s: file is larger than %zu bytes",
                                     path, max_bytes);
            }
            size_t ncap = cap * 2 > max_bytes ? max_bytes : cap * 2;
            char *nb = realloc(buf, ncap + 1);
            if (!nb) {
                free(buf);
                fclose(f);
                return qplug_err_set(err, QPLUG_ERR_NOMEM, "%s: out of memory", path);
            }
            buf = nb;
            cap = ncap;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f)) {
                int e = errno;
                free(buf);
                fclose(f);
                return qplug_err_set(err, QPLUG_ERR_IO, "%s: read failed: %s", path, strerror(e));
            }
            break;
        }
    }
    fclose(f);
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return QPLUG_OK;
}
