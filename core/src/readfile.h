/*
 * readfile.h - internal: reads a whole small file (JSON configs, the
 * safetensors index, the INI policy) into memory.
 */
#ifndef QPLUG_READFILE_H
#define QPLUG_READFILE_H

#include <stddef.h>

#include "qplug/error.h"

/* Reads `path` into a fresh NUL-terminated buffer (*out, *len without the
 * NUL). A file larger than `max_bytes` is refused, so a hostile path such as
 * /dev/zero cannot exhaust memory. A missing file gives QPLUG_ERR_NOT_FOUND,
 * other failures QPLUG_ERR_IO; the message names the path. */
qplug_status qplug__read_file(const char *path, size_t max_bytes, char **out, size_t *len,
                              qplug_err *err);

#endif
