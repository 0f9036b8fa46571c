/* qplug synth: writes a small synthetic DeepSeek V4 checkpoint. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "qplug/synth.h"

static void synth_usage(FILE *f)
{
    fprintf(f,
            "usage: qplug synth --preset tiny|flash-shapes --format bf16|flash|flash-base|nvfp4\n"
            "                   --out DIR [--seed N]\n"
            "\n"
            "Writes a complete, internally consistent DeepSeek V4 checkpoint with random\n"
            "weights (quantized with qplug's own codecs: for demos and smoke tests, not an\n"
            "independent oracle). DIR must not exist or be empty; it appears only when\n"
            "complete.\n"
            "\n"
            "presets:\n"
            "  tiny          hidden 256, 4 layers with compress_ratios [0, 4, 128, 4] + MTP,\n"
            "                1 hash layer, 8 experts top-2, I 128, 4 heads x 128, vocab 1024\n"
            "                (5 MB in NVFP4 to 15 MB in BF16, well under a second)\n"
            "  flash-shapes  the real V4-Flash per-matrix shapes (hidden 4096, 64 heads x 512,\n"
            "                q_lora 1024, 8 groups x o_lora 1024, I 2048, vocab 129280) but only\n"
            "                2 layers (ratios 4 and 128) + MTP and 8 routed experts instead of\n"
            "                256: for shape and load tests (2.5-3 GB quantized, 4 GB in\n"
            "                BF16; a minute or two)\n"
            "formats:\n"
            "  bf16          official naming, unquantized\n"
            "  flash         official V4-Flash: FP8 E4M3 + E8M0 128x128 scales, MXFP4 experts\n"
            "  flash-base    official V4-Flash-Base: FP8 E4M3 + F32 128x128 scales, FP8 experts\n"
            "  nvfp4         ModelOpt NVFP4, transformers naming, per-expert tensors,\n"
            "                hf_quant_config.json, no MTP; layer 0's o_a_proj left in BF16\n"
            "--seed N        random seed (default %u); the same seed gives the same underlying\n"
            "                weights in every format\n",
            QPLUG_SYNTH_DEFAULT_SEED);
}

int qplug_cmd_synth(int argc, char **argv)
{
    const char *preset = NULL, *format = NULL, *out = NULL, *seed = NULL;
    for (int i = 1; i < argc; i++) {
        const char **slot = NULL;
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            synth_usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--preset")) {
            slot = &preset;
        } else if (!strcmp(argv[i], "--format")) {
            slot = &format;
        } else if (!strcmp(argv[i], "--out")) {
            slot = &out;
        } else if (!strcmp(argv[i], "--seed")) {
            slot = &seed;
        } else {
            fprintf(stderr, "qplug synth: unknown argument '%s'\n", argv[i]);
            synth_usage(stderr);
            return 2;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "qplug synth: %s needs a value\n", argv[i]);
            return 2;
        }
        *slot = argv[++i];
    }
    if (!preset || !format || !out) {
        fprintf(stderr, "qplug synth: --preset, --format and --out are required\n");
        synth_usage(stderr);
        return 2;
    }

    qplug_synth_options opt = {QPLUG_SYNTH_TINY, QPLUG_SYNTH_BF16, QPLUG_SYNTH_DEFAULT_SEED};
    qplug_err err = {0};
    if (qplug_synth_preset_parse(preset, &opt.preset, &err) != QPLUG_OK ||
        qplug_synth_format_parse(format, &opt.format, &err) != QPLUG_OK) {
        fprintf(stderr, "qplug %s\n", err.msg);
        return 2;
    }
    if (seed) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(seed, &end, 0);
        if (errno || end == seed || *end || seed[0] == '-') {
            fprintf(stderr, "qplug synth: --seed '%s' is not a non-negative integer\n", seed);
            return 2;
        }
        opt.seed = (uint64_t)v;
    }
    if (qplug_synth_write(&opt, out, &err) != QPLUG_OK) {
        fprintf(stderr, "qplug %s\n", err.msg);
        return 1;
    }
    printf("qplug synth: wrote %s (preset %s, format %s, seed %llu)\n", out,
           qplug_synth_preset_name(opt.preset), qplug_synth_format_name(opt.format),
           (unsigned long long)opt.seed);
    return 0;
}
