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

# The vendored ggml-vulkan.cpp uses VK_EXT_layer_settings (vk::LayerSettingEXT), which needs
# Vulkan headers 1.3.261 or later. Debian 12 ships 1.3.239. When the system's headers lack it,
# take the headers (only the headers: the loader stays the system's) from Debian 13's
# libvulkan-dev, fetched with apt from Debian's own archive and cached, and point CMake's
# FindVulkan at them through VULKAN_SDK.
if ! grep -q VK_EXT_layer_settings /usr/include/vulkan/vulkan_core.h 2>/dev/null; then
  sdk="${XDG_CACHE_HOME:-$HOME/.cache}/deskhand/vulkan-sdk/trixie"
  if [ ! -f "$sdk/include/vulkan/vulkan.hpp" ]; then
    work=$(mktemp -d)
    mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
    cat >"$work/trixie.sources" <<'SOURCES'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    apt_private=(-o Dir::Etc::sourcelist="$work/trixie.sources" -o Dir::Etc::sourceparts=/dev/null
      -o Dir::State::Lists="$work/lists" -o Dir::Cache="$work/cache")
    apt-get "${apt_private[@]}" update >&2
    (cd "$work" && apt-get "${apt_private[@]}" download libvulkan-dev >&2)
    dpkg-deb -x "$work"/libvulkan-dev_*.deb "$work/x"
    mkdir -p "$sdk"
    rm -rf "$sdk/include"
    cp -r "$work/x/usr/include" "$sdk/include"
    rm -rf "$work"
  fi
  # The system's loader, linked through the SDK's lib folder as FindVulkan expects.
  ln -sfn "/usr/lib/$(gcc -dumpmachine)" "$sdk/lib"
  export VULKAN_SDK="$sdk"
  echo "Vulkan headers: $(grep -m1 -o 'VK_HEADER_VERSION [0-9]*' "$sdk/include/vulkan/vulkan_core.h") from $sdk" >&2
fi

icd=$(ls /usr/share/vulkan/icd.d/lvp_icd.*.json 2>/dev/null | head -n 1)
if [ -z "$icd" ]; then
  echo "lavapipe's ICD file is missing from /usr/share/vulkan/icd.d (mesa-vulkan-drivers)" >&2
  exit 1
fi
# Only lavapipe, so a real GPU driver on the machine cannot be picked instead. ggml skips
# CPU-type Vulkan devices unless they are named: GGML_VK_VISIBLE_DEVICES=0 names lavapipe.
export VK_ICD_FILENAMES="$icd" VK_DRIVER_FILES="$icd" GGML_VK_VISIBLE_DEVICES=0
vulkaninfo --summary 2>/dev/null | grep -E "deviceName|driverName" >&2 || true

export CARGO_TARGET_DIR=target/vulkan
# CMake caches the Vulkan headers it found; a build that found others must configure afresh.
for cache in "$CARGO_TARGET_DIR"/debug/build/llama-cpp-sys-2-*/out/build/CMakeCache.txt; do
  [ -f "$cache" ] || continue
  if ! grep -q "^Vulkan_INCLUDE_DIR:PATH=${VULKAN_SDK:-/usr}/include$" "$cache"; then
    cargo clean --locked -p llama-cpp-sys-2 >&2
    break
  fi
done
start=$(date +%s)
cargo test --locked --features vulkan --no-run >&2
built=$(date +%s)
echo "vulkan build: $((built - start)) s"
# The tiny VLM end to end: load, image encode, prefill and decode with all layers on the
# Vulkan device, then whole runs on a private Xvfb.
set +e
log=$(mktemp)
# DESKHAND_LLAMA_LOG lets llama.cpp's own log through, where ggml names the Vulkan device it
# uses. The Ctrl-C test is left out: it waits at most 60 s for two steps, and on lavapipe the
# first step alone (Vulkan pipelines compiled on the CPU) takes longer; it proves nothing
# about Vulkan anyway.
DESKHAND_LLAMA_LOG=1 cargo test --locked --no-fail-fast --features vulkan \
  --test tiny_vlm --test run_tiny_vlm -- --nocapture --skip ctrl_c_mid_run >"$log" 2>&1
status=$?
set -e
cat "$log" >&2
echo "tests: exit $status after $(($(date +%s) - built)) s"
# A run that silently fell back to the CPU backend proves nothing about Vulkan.
if ! grep -q "ggml_vulkan: 0 = " "$log"; then
  echo "llama.cpp found no Vulkan device (no 'ggml_vulkan: 0 = ...' line): the tests ran on the CPU backend" >&2
  status=1
else
  grep -m1 "ggml_vulkan: 0 = " "$log"
fi
rm -f "$log"
exit "$status"
