/* Fuzz target: the safetensors header validator. Whatever it accepts must
 * describe bytes inside the input, which is checked by reading them all. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qplug/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    qplug_st_file *f = NULL;
    qplug_err err = {0};
    if (qplug_st_open_memory(data, size, "fuzz.safetensors", &f, &err) != QPLUG_OK) {
        if (f || !err.msg[0] || strchr(err.msg, '\n'))
            abort();
        return 0;
    }
    unsigned sum = 0;
    for (size_t i = 0; i < qplug_st_count(f); i++) {
        const qplug_tensor *t = qplug_st_tensor(f, i);
        const uint8_t *p = t->data;
        size_t nb = qplug_tensor_nbytes(t);
        if (p < data || p + nb > data + size)
            abort();
        for (size_t k = 0; k < nb; k++)
            sum += p[k];
        if (qplug_st_find(f, t->name) != t)
            abort();
    }
    qplug_st_close(f);
    return (int)(sum & 0);
}
