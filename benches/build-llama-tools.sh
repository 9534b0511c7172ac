#!/usr/bin/env bash
# Build llama.cpp's own tools (llama-bench, llama-mtmd-cli, llama-server) from the same
# llama.cpp source that deskhand links, with the same CPU flags and the same AMX fix, so that
# `deskhand bench model` compares like with like.
#
# llama-cpp-sys-2 0.1.161 vendors llama.cpp without the tools' sources; benches/
# fetch-llama-source.sh downloads the same b11434 tree with pip (the script compares llama.h and
# mtmd.h). Nothing else is fetched (LLAMA_USE_PREBUILT_UI=OFF keeps the server's build offline).
#
#   benches/build-llama-tools.sh               # prints the folder holding the three binaries
#   benches/build-llama-tools.sh llama-server  # only the tools named (CI needs only the server)
#
# Cached by version under ${XDG_CACHE_HOME:-~/.cache}/deskhand/llama-tools/VERSION: a second run
# prints the folder at once.
set -euo pipefail
cd "$(dirname "$0")/.."

version=11434.0.0
cache="${XDG_CACHE_HOME:-$HOME/.cache}/deskhand/llama-tools/$version"
bin="$cache/build/bin"
tools=("$@")
[ "${#tools[@]}" -gt 0 ] || tools=(llama-bench llama-mtmd-cli llama-server)
for t in "${tools[@]}"; do
  case "$t" in
    llama-bench | llama-mtmd-cli | llama-server) ;;
    *) echo "unknown tool $t: this script builds llama-bench, llama-mtmd-cli and llama-server" >&2; exit 2 ;;
  esac
done

have_all() { for t in "${tools[@]}"; do [ -x "$bin/$t" ] || return 1; done; }
if have_all; then
  echo "$bin"
  exit 0
fi

src=$(bash benches/fetch-llama-source.sh)

# The tools must be built from the source deskhand links: compare the public headers.
manifest=$(cargo metadata --format-version 1 --locked 2>/dev/null |
  python3 -c 'import json,sys; m=json.load(sys.stdin); print(next(p["manifest_path"] for p in m["packages"] if p["name"]=="llama-cpp-sys-2"))')
vendored="$(dirname "$manifest")/llama.cpp"
for h in include/llama.h tools/mtmd/mtmd.h; do
  if ! cmp -s "$src/$h" "$vendored/$h"; then
    echo "warning: $h differs between $src and $vendored; the comparison is not like with like" >&2
  fi
done

# The switches llama-cpp-sys-2's build.rs uses for a native CPU build with OpenMP (deskhand's
# .cargo/config.toml), the same -mno-amx-* (the AMX kernels crash this llama.cpp), and the tools.
amx_off=""
if [ "$(uname -m)" = x86_64 ]; then amx_off="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"; fi
cmake -S "$src" -B "$cache/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_OPENMP=ON \
  -DCMAKE_C_FLAGS="$amx_off" -DCMAKE_CXX_FLAGS="$amx_off" \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
  -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$cache/build" --target "${tools[@]}" -j"$(nproc)" >&2
if ! have_all; then
  echo "the build finished but $bin lacks one of: ${tools[*]}" >&2
  exit 1
fi
echo "$bin"
