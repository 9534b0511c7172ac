#!/usr/bin/env bash
# The vision encoder is the largest single cost of a step on a CPU. This measures, with
# llama.cpp's own llama-mtmd-cli and its encode timer, what the settings mtmd offers do to it
# on a real-shaped Qwen2.5-VL-3B pair (`deskhand bench synth`): flash attention on and off,
# the thread count, and a projector with Q8_0 matrices instead of F16. One frame of N image
# tokens (default 720: 1008x560), each setting REPS times (default 2), in one run.
#
#   benches/encoder-settings.sh [SHAPE]     # default qwen2.5-vl-3b
#
# Needs a release build and benches/build-llama-tools.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

shape="${1:-qwen2.5-vl-3b}"
reps="${REPS:-2}"
width="${WIDTH:-1008}"
height="${HEIGHT:-560}"
bin=target/release/deskhand
tools=$(bash benches/build-llama-tools.sh)
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
f16=$("$bin" bench synth "$shape" --json)
q8=$("$bin" bench synth "$shape" --projector q8_0 --json)
model=$(field "$f16" model)
image=$(mktemp --suffix=.png)
trap 'rm -f "$image"' EXIT
# A desktop-like frame: a light window with a dark title bar and a row of buttons.
convert -size "${width}x${height}" xc:'#ebebeb' -fill '#282c34' -draw "rectangle 0,0 $width,28" \
  -fill '#1e78dc' -draw "rectangle 40,60 200,100" -draw "rectangle 240,60 400,100" "$image"

encode() { # label, mmproj, extra args...
  local label=$1 mmproj=$2
  shift 2
  for _ in $(seq "$reps"); do
    ms=$("$tools/llama-mtmd-cli" -m "$model" --mmproj "$mmproj" --image "$image" -p "hi" -n 1 \
      --temp 0 "$@" 2>&1 | sed -n 's/.*encoding done in \([0-9]*\) ms.*/\1/p')
    echo "$label: encode ${ms:-?} ms"
  done
}
echo "$shape, ${width}x${height} frame, $(nproc) cores"
encode "f16, 2 threads, flash attention auto (the default)" "$(field "$f16" mmproj)" -t 2
encode "f16, 2 threads, flash attention on" "$(field "$f16" mmproj)" -t 2 -fa on
encode "f16, 2 threads, flash attention off" "$(field "$f16" mmproj)" -t 2 -fa off
encode "f16, 1 thread" "$(field "$f16" mmproj)" -t 1
encode "q8_0, 2 threads" "$(field "$q8" mmproj)" -t 2
