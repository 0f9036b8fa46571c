/*
 * qplug/qplug.h - the public API of libqplug, for hosts (the qplug tool,
 * the model, tests). Plugins include qplug/plugin.h only.
 */
#ifndef QPLUG_QPLUG_H
#define QPLUG_QPLUG_H

#include "qplug/plugin.h"
#include "qplug/error.h"
#include "qplug/safetensors.h"
#include "qplug/config.h"
#include "qplug/policy.h"
#include "qplug/registry.h"
#include "qplug/resolver.h"
#include "qplug/host.h"

#endif
