/*
 * qplug/host.h - the core's side of the plugin ABI: a runtime (CPU thread
 * pool, device handles, policy options) that implements qplug_host_api, and
 * layer instances that drive a plugin through create_weights ->
 * binding -> process_after_loading -> apply -> destroy.
 */
#ifndef QPLUG_HOST_H
#define QPLUG_HOST_H

#include "qplug/error.h"
#include "qplug/policy.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qplug_runtime qplug_runtime;

/* `pol` may be NULL (no options); it must outlive the runtime. threads <= 0
 * means one per online CPU. */
qplug_status qplug_runtime_create(const qplug_policy *pol, qplug_device_kind device, int threads,
                                  qplug_runtime **out, qplug_err *err);
void qplug_runtime_destroy(qplug_runtime *rt);
qplug_device_kind qplug_runtime_device(const qplug_runtime *rt);
int qplug_runtime_threads(const qplug_runtime *rt);
/* The same pool the plugins get through qplug_host_api.parallel_for; the
 * model uses it for its own loops. Not re-entrant: fn must not call it. */
void qplug_runtime_parallel_for(qplug_runtime *rt, int64_t n, qplug_range_fn fn, void *arg);

/*
 * Where a layer's checkpoint tensors come from. Returns the tensor for
 * `slot` of `layer` (its `name` is the checkpoint tensor name) or NULL when
 * the checkpoint has none, and sets *file to the file holding it (for
 * messages; may stay NULL). When it returns NULL it may still set *file to
 * where it looked, e.g. "model.safetensors.index.json (no
 * layers.0.attn.wq_a.scale)", which the missing-tensor message quotes.
 * Returned tensors are host memory and must stay valid and unchanged until
 * the layer is destroyed (plugins may keep pointers into them).
 */
typedef const qplug_tensor *(*qplug_tensor_source_fn)(void *user, const qplug_layer_desc *layer,
                                                       const char *slot, const char **file);

typedef struct qplug_layer_inst qplug_layer_inst;

/*
 * Creates a layer: calls create_weights, binds every declared slot through
 * `src` (a missing required tensor, a dtype outside the declared set or a
 * shape other than the declared one is an error naming layer, tensor and
 * file; packed FP4 stored as F4 [n, k] or U8/I8 [n, k/2] is presented in
 * the form declared), then process_after_loading. `desc` is copied.
 */
qplug_status qplug_layer_create(qplug_runtime *rt, const qplug_plugin *plugin,
                                const qplug_layer_desc *desc, qplug_tensor_source_fn src,
                                void *src_user, qplug_layer_inst **out, qplug_err *err);
/* Calls apply() after checking args->struct_size and the tensors the op
 * needs; a plugin error comes back prefixed "<plugin>: <layer>: ". Args
 * from callers built against ABI 1.1 (ending at `stream`) are accepted;
 * the plugin always gets this core's struct, with unknown fields zero. A
 * non-NULL x_scale (1.2) is refused, naming the layer, unless the layer's
 * act_format is not NONE, the op is forward, x is F8_E4M3 [m, K] with K %
 * 128 == 0 and x_scale F32 [K/128, m] on x's device. */
qplug_status qplug_layer_apply(qplug_layer_inst *l, const qplug_apply_args *args, qplug_err *err);
/* Since ABI 1.2: the pre-quantized activation form the layer takes in
 * qplug_apply_args.x_scale (plugin.h), from the plugin's optional
 * act_format slot; QPLUG_ACT_FORMAT_NONE for plugins without the slot
 * (built against 1.0/1.1) and for answers this core does not know.
 * qplug_layer_apply refuses an x_scale when this is NONE. */
qplug_act_format qplug_layer_act_format(const qplug_layer_inst *l);
/* "none", "e4m3_1x128_f32", "e4m3_1x128_ue8m0" (for messages and tables). */
const char *qplug_act_format_name(qplug_act_format f);
/* kv_entry_bytes() of an attention layer; 0 when the plugin has none. */
size_t qplug_layer_kv_entry_bytes(const qplug_layer_inst *l);
const qplug_layer_desc *qplug_layer_desc_of(const qplug_layer_inst *l);
const qplug_plugin *qplug_layer_plugin(const qplug_layer_inst *l);
void qplug_layer_destroy(qplug_layer_inst *l);

#ifdef __cplusplus
}
#endif
#endif
