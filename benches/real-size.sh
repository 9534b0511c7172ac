#!/usr/bin/env bash
# Real-size figures on this machine's CPU: for each real-shaped model (`deskhand bench synth`),
# `bench model` against llama.cpp's own tools on the same files, then `bench step` at three
# frame budgets with 3 images of history. Writes one JSON file per run and a log to OUT
# (default target/real-size/). Takes most of an hour on 2 cores; nothing else should run
# meanwhile, since the figures are times.
#
#   benches/real-size.sh [SHAPE ...]      # default: qwen2.5-vl-3b ui-tars-1.5-7b
#
# Needs a release build (cargo build --release) and llama.cpp's tools
# (benches/build-llama-tools.sh). STEPS and BUDGETS override the defaults below.
set -euo pipefail
cd "$(dirname "$0")/.."

out="${OUT:-target/real-size}"
steps="${STEPS:-3}"
budgets="${BUDGETS:-1200 720 400}"
shapes=("$@")
[ "${#shapes[@]}" -gt 0 ] || shapes=(qwen2.5-vl-3b ui-tars-1.5-7b)
bin=target/release/deskhand
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
mkdir -p "$out"

echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores" | tee "$out/machine.txt"
echo "flags: $(grep -o 'avx512[a-z]*\|amx[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' ')" | tee -a "$out/machine.txt"

for shape in "${shapes[@]}"; do
  pair=$("$bin" bench synth "$shape" --json)
  model=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["model"])' "$pair")
  mmproj=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["mmproj"])' "$pair")
  echo "== $shape: bench model" | tee -a "$out/log.txt"
  "$bin" bench model --model "$model" --mmproj "$mmproj" --json >"$out/model-$shape.json" 2>>"$out/log.txt"
  for budget in $budgets; do
    echo "== $shape: bench step, $budget image tokens, $steps steps" | tee -a "$out/log.txt"
    "$bin" bench step --model "$model" --mmproj "$mmproj" --steps "$steps" --images 3 \
      --image-tokens "$budget" --json >"$out/step-$shape-$budget.json" 2>>"$out/log.txt"
  done
done
echo "written to $out"
