#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine lacks to build and test qplug:
# a C compiler, CMake, pkg-config, inih and cJSON. Idempotent and quiet when
# everything is already there.
set -euo pipefail

missing=()
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
if command -v pkg-config >/dev/null 2>&1; then
  pkg-config --exists inih || missing+=(libinih-dev)
  pkg-config --exists libcjson || missing+=(libcjson-dev)
else
  missing+=(libinih-dev libcjson-dev)
fi
command -v nm >/dev/null 2>&1 || missing+=(binutils)

if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
