/*
 * plugins/mxfp4/mxfp4_cuda.h - what the CUDA path of the mxfp4 plugin
 * (mxfp4_cuda.cu) accepts, so that the plugin's score() can return 0 for a
 * CUDA layer that prepare would refuse instead of failing at load time.
 */
#ifndef QPLUG_MXFP4_CUDA_H
#define QPLUG_MXFP4_CUDA_H

#include <stdbool.h>

#include "qplug/plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

/* True exactly for the layer kinds, schemes and shapes that
 * qplug_mxfp4__cuda_prepare accepts (defined only in builds with CUDA,
 * i.e. when QPLUG_PLUGIN_CUDA is set). */
bool qplug_mxfp4__cuda_supports(const qplug_layer_desc *layer);

#ifdef __cplusplus
}
#endif

#endif
