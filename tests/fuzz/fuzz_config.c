/* Fuzz target: config.json and hf_quant_config.json. The input is split at
 * its first NUL byte into the two documents (no NUL: config.json only). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qplug/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    const char *nul = memchr(text, '\0', size);
    size_t clen = nul ? (size_t)(nul - text) : size;
    const char *hf = nul ? nul + 1 : NULL;
    size_t hlen = nul ? size - clen - 1 : 0;
    qplug_model_config cfg;
    qplug_err err = {0};
    qplug_status st = qplug_config_parse(text, clen, "fuzz/config.json", hf, hlen,
                                         "fuzz/hf_quant_config.json", &cfg, &err);
    if (st != QPLUG_OK) {
        if (!err.msg[0] || strchr(err.msg, '\n') || cfg.quant.exclude)
            abort();
        return 0;
    }
    int64_t n = cfg.num_hidden_layers + cfg.num_nextn_predict_layers;
    if (n < 1 || n > QPLUG_MAX_LAYERS)
        abort();
    for (int64_t i = 0; i < n; i++) {
        int32_t r = cfg.compress_ratios[i];
        if (r != 0 && r != 4 && r != 128)
            abort();
    }
    for (size_t i = 0; i < cfg.quant.n_exclude; i++)
        if (!cfg.quant.exclude[i])
            abort();
    qplug_config_free(&cfg);
    return 0;
}
