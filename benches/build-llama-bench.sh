#!/usr/bin/env bash
# Build llama.cpp's own `llama-bench` from the llama.cpp source that llama-cpp-sys-2 vendors
# (the one deskhand links), with the same native CPU flags, so `deskhand bench model` compares
# like with like. The crate's copy lacks the tool's sources; LLAMA_CPP_SRC then names a
# checkout of the same commit. Prints the path of the built binary.
#
#   benches/build-llama-bench.sh            # builds into target/llama-bench/
set -euo pipefail
cd "$(dirname "$0")/.."

manifest=$(cargo metadata --format-version 1 --locked 2>/dev/null |
  python3 -c 'import json,sys; m=json.load(sys.stdin); print(next(p["manifest_path"] for p in m["packages"] if p["name"]=="llama-cpp-sys-2"))')
src="$(dirname "$manifest")/llama.cpp"
if [ ! -f "$src/CMakeLists.txt" ]; then
  echo "llama.cpp source not found at $src (run cargo fetch first)" >&2
  exit 1
fi
if [ ! -f "$src/tools/llama-bench/llama-bench.cpp" ]; then
  # llama-cpp-sys-2 0.1.161 ships only the libraries' sources: tools/llama-bench holds just
  # its README. Point LLAMA_CPP_SRC at a llama.cpp checkout of the same commit instead.
  if [ -n "${LLAMA_CPP_SRC:-}" ] && [ -f "$LLAMA_CPP_SRC/tools/llama-bench/llama-bench.cpp" ]; then
    src="$LLAMA_CPP_SRC"
  else
    echo "the vendored llama.cpp at $src has no tools/llama-bench sources;" >&2
    echo "set LLAMA_CPP_SRC to a llama.cpp checkout of the same commit and run this again" >&2
    exit 1
  fi
fi

out="target/llama-bench"
# The same switches llama-cpp-sys-2's build.rs uses for a native CPU build, plus the tools.
cmake -S "$src" -B "$out" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_OPENMP=ON \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$out" --target llama-bench -j"$(nproc)" >&2
echo "$PWD/$out/bin/llama-bench"
