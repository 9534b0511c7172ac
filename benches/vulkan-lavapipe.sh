#!/usr/bin/env bash
# Build deskhand with `--features vulkan` and run the tiny-VLM tests with every layer offloaded
# to Mesa's lavapipe, a Vulkan driver that runs on the CPU. It proves the GPU build compiles,
# links and runs the whole image path through llama.cpp's Vulkan backend on a machine without
# a GPU; it says nothing about GPU speed. Not run by CI (the Vulkan build of llama.cpp compiles
# hundreds of shaders and takes long on 2 cores).
#
#   benches/vulkan-lavapipe.sh        # prints the build time and the tests' result
#
# Builds into target/vulkan so the ordinary build is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
# libvulkan-dev: the loader and headers; glslc: llama.cpp compiles its shaders with it;
# spirv-headers: needed by the shader generator; mesa-vulkan-drivers: lavapipe.
$SUDO apt-get install -y -q --no-install-recommends \
  libvulkan-dev glslc spirv-headers mesa-vulkan-drivers vulkan-tools >&2

icd=$(ls /usr/share/vulkan/icd.d/lvp_icd.*.json 2>/dev/null | head -n 1)
if [ -z "$icd" ]; then
  echo "lavapipe's ICD file is missing from /usr/share/vulkan/icd.d (mesa-vulkan-drivers)" >&2
  exit 1
fi
# Only lavapipe, so a real GPU driver on the machine cannot be picked instead.
export VK_ICD_FILENAMES="$icd" VK_DRIVER_FILES="$icd"
vulkaninfo --summary 2>/dev/null | grep -E "deviceName|driverName" >&2 || true

export CARGO_TARGET_DIR=target/vulkan
start=$(date +%s)
cargo test --locked --features vulkan --no-run >&2
built=$(date +%s)
echo "vulkan build: $((built - start)) s"
# The tiny VLM end to end: load, image encode, prefill and decode with all layers on the
# Vulkan device, then whole runs on a private Xvfb.
set +e
cargo test --locked --features vulkan --test tiny_vlm --test run_tiny_vlm 2>&1 | tee /dev/stderr | tail -n 3
status=${PIPESTATUS[0]}
echo "tests: exit $status after $(($(date +%s) - built)) s"
exit "$status"
