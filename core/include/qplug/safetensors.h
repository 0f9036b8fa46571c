/*
 * qplug/safetensors.h - safetensors files and sharded checkpoints.
 *
 * Files are mmap()ed read-only; tensor descriptors point into the mapping.
 * Every header is validated before any tensor is handed out: the header
 * length is sane (<= 100 MiB and inside the file), the JSON is an object of
 * {dtype, shape, data_offsets}, every dtype is known, every shape entry is
 * non-negative and their product times the dtype size equals the byte
 * count, offsets lie inside the payload and no two tensors overlap.
 */
#ifndef QPLUG_SAFETENSORS_H
#define QPLUG_SAFETENSORS_H

#include <stdbool.h>
#include <stdint.h>

#include "qplug/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qplug_st_file qplug_st_file;

/* Opens and validates one file. */
qplug_status qplug_st_open(const char *path, qplug_st_file **out, qplug_err *err);
/* Validates a whole file image held in memory (not copied: `buf` must
 * outlive the result). `source` names it in messages. Used by the fuzzer. */
qplug_status qplug_st_open_memory(const uint8_t *buf, size_t len, const char *source,
                                  qplug_st_file **out, qplug_err *err);
void qplug_st_close(qplug_st_file *f);

const char *qplug_st_path(const qplug_st_file *f);
size_t qplug_st_count(const qplug_st_file *f);
const qplug_tensor *qplug_st_tensor(const qplug_st_file *f, size_t i);
/* NULL if absent. */
const qplug_tensor *qplug_st_find(const qplug_st_file *f, const char *name);

/* Writes tensors (CPU data) to `path` atomically: a temporary file in the
 * same directory is renamed over `path` only when complete, so a failure
 * leaves nothing half-written behind. */
qplug_status qplug_st_write(const char *path, const qplug_tensor *tensors, size_t n,
                            qplug_err *err);

/* A checkpoint directory: `model.safetensors.index.json` (sharded), else
 * `model.safetensors`, else every *.safetensors in the directory. Tensor
 * names are unique across shards; an index entry whose shard lacks the
 * tensor, or a shard the index names that is missing, is an error naming
 * both. */
typedef struct qplug_ckpt qplug_ckpt;

qplug_status qplug_ckpt_open(const char *dir, qplug_ckpt **out, qplug_err *err);
void qplug_ckpt_close(qplug_ckpt *c);
const char *qplug_ckpt_dir(const qplug_ckpt *c);
size_t qplug_ckpt_count(const qplug_ckpt *c);
const qplug_tensor *qplug_ckpt_tensor(const qplug_ckpt *c, size_t i);
/* Path of the shard holding tensor i. */
const char *qplug_ckpt_tensor_file(const qplug_ckpt *c, size_t i);
/* Index of `name`, or -1. */
long qplug_ckpt_lookup(const qplug_ckpt *c, const char *name);
/* Total payload bytes of all tensors. */
uint64_t qplug_ckpt_bytes(const qplug_ckpt *c);

#ifdef __cplusplus
}
#endif
#endif
