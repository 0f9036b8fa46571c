/*
 * plugins/w4a4_megamoe/w4a4_megamoe_cuda.h - what the CUDA path of the
 * w4a4_megamoe plugin (w4a4_megamoe_cuda.cu) accepts, so that the plugin's
 * score() can return 0 for a CUDA layer that prepare would refuse instead of
 * failing at load time.
 */
#ifndef QPLUG_W4A4_MEGAMOE_CUDA_H
#define QPLUG_W4A4_MEGAMOE_CUDA_H

#include <stdbool.h>

#include "qplug/plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

/* True exactly for the layer kinds, schemes and shapes that
 * qplug_w4a4_megamoe__cuda_prepare accepts (defined only in builds with
 * CUDA, i.e. when QPLUG_PLUGIN_CUDA is set). */
bool qplug_w4a4_megamoe__cuda_supports(const qplug_layer_desc *layer);

#ifdef __cplusplus
}
#endif

#endif
