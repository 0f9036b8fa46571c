/*
 * qplug/synth.h - synthetic DeepSeek V4 checkpoints (`qplug synth`).
 *
 * A synthetic checkpoint is small, complete and internally consistent:
 * config.json, sharded safetensors with model.safetensors.index.json, and
 * for ModelOpt NVFP4 also hf_quant_config.json. Weights are random with a
 * sensible scale and are quantized with the project's own codecs
 * (qplug/codec.h), so a synthetic checkpoint is good for demos, shape and
 * load tests, never as an independent oracle for numeric tests.
 *
 * The same seed gives the same underlying real-valued weights in every
 * format (each tensor's random stream is derived from the seed and its
 * official name), so formats of one seed can be compared with each other.
 */
#ifndef QPLUG_SYNTH_H
#define QPLUG_SYNTH_H

#include <stdint.h>

#include "qplug/error.h"
#include "qplug/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum qplug_synth_preset {
    /* Every layer kind with small dims: hidden 256, 4 layers with
     * compress_ratios [0, 4, 128, 4] plus one MTP layer, one hash layer,
     * 8 experts top-2, vocab 1024. */
    QPLUG_SYNTH_TINY = 0,
    /* The real V4-Flash per-matrix shapes (hidden 4096, 64 heads x 512,
     * q_lora 1024, 8 groups x 1024, I 2048, vocab 129280), but 2 layers
     * (ratios 4 and 128) plus MTP and 8 routed experts: for shape and load
     * tests. 2.5 to 4 GB on disk. */
    QPLUG_SYNTH_FLASH_SHAPES = 1
} qplug_synth_preset;

typedef enum qplug_synth_format {
    /* Official naming, everything BF16 (F32 where the release keeps F32). */
    QPLUG_SYNTH_BF16 = 0,
    /* Official V4-Flash: FP8 E4M3 linears with E8M0 128x128 scales, MXFP4
     * routed experts. */
    QPLUG_SYNTH_FLASH = 1,
    /* Official V4-Flash-Base: FP8 E4M3 linears and routed experts with F32
     * 128x128 scales (expert_dtype "fp8"). */
    QPLUG_SYNTH_FLASH_BASE = 2,
    /* ModelOpt NVFP4 in transformers naming, per-expert tensors, no MTP;
     * layer 0's o_a_proj left in BF16 and excluded, as are the router gates,
     * the compressors, the indexer scorer and lm_head. */
    QPLUG_SYNTH_NVFP4 = 3
} qplug_synth_format;

typedef struct qplug_synth_options {
    qplug_synth_preset preset;
    qplug_synth_format format;
    uint64_t seed;
} qplug_synth_options;

/* The seed `qplug synth` uses when none is given. */
#define QPLUG_SYNTH_DEFAULT_SEED 1234u

/* "tiny" / "flash-shapes" and "bf16" / "flash" / "flash-base" / "nvfp4". */
qplug_status qplug_synth_preset_parse(const char *s, qplug_synth_preset *out, qplug_err *err);
qplug_status qplug_synth_format_parse(const char *s, qplug_synth_format *out, qplug_err *err);
const char *qplug_synth_preset_name(qplug_synth_preset p);
const char *qplug_synth_format_name(qplug_synth_format f);

/*
 * Writes the checkpoint into `out_dir`, which must not exist yet (or be an
 * empty directory). Everything is written into a sibling `out_dir.tmp-XXXXXX`
 * that is renamed to `out_dir` only when complete; on failure the temporary
 * directory is removed, so nothing half-written is left behind.
 */
qplug_status qplug_synth_write(const qplug_synth_options *opt, const char *out_dir,
                               qplug_err *err);

/*
 * Calls `visit` for every tensor the checkpoint holds, in file order, with
 * `t->data` NULL and the 0-based shard that holds it; nothing is allocated
 * or written. A non-OK return from `visit` stops the walk and is returned.
 */
typedef qplug_status (*qplug_synth_visit_fn)(void *user, const qplug_tensor *t, int shard,
                                             int n_shards);
qplug_status qplug_synth_describe(const qplug_synth_options *opt, qplug_synth_visit_fn visit,
                                  void *user, qplug_err *err);

#ifdef __cplusplus
}
#endif
#endif
