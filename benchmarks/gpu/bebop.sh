#!/usr/bin/env bash
# Issue #23 on a GPU: speculative decoding speed, acceptance and entropy slope, the GRPO step, and
# the CUDA exactness tests, in one go of ≤ 9 minutes.
#
#   (device, after pack.sh's calls 1-2)  bash benchmarks/gpu/setup.sh stash c && bash benchmarks/gpu/bebop.sh
#   (rehearsal here)  DEVICE=cpu TINY=1 OUT=/tmp/gpu-rehearse-bebop nice -n 10 bash benchmarks/gpu/bebop.sh
#
# Stages, each under `timeout` with its own budget (cut to what is left of TOTAL), each followed by
# packing into $OUT, so a cut-off run still brings back what finished:
#   exact     T=0 equality and the chi-square exactness tests of tests/test_spec_generate.py, with the
#             models on the device (ANATOMIST_TEST_DEVICE)
#   heads     the e2e-TV, TV and CE heads with the GPU recipe (HEAD_FLAGS: every chat prompt × 8
#             self-samples, 1,500 steps × 32, as the earlier H100 run), copied to $OUT
#   speed     benchmarks/spec_speed.py (hf / plain / ngram / mtp_rs at batch 1 and 8, T=1; T=0 equality)
#   slope     benchmarks/entropy_slope.py (acceptance vs entropy of the three heads)
#   grpo      benchmarks/grpo_step.py, a short schedule (plain vs MTP+RS rollouts, same seeds)
# $OUT (≤ 8 files): manifest.json, log.txt, summary.txt, results.tar.xz (metrics, the HTML plots),
# heads.tar.part-NN (the three heads' safetensors + config + metrics, tar cut into ≤ 15 MiB pieces:
# `cat heads.tar.part-* | tar x`).
set -uo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO"
: "${OUT:?set OUT to the folder results go to}"
mkdir -p "$OUT"
export DEVICE=${DEVICE:-cuda}
TINY=${TINY:-0}
SEED=0
TOTAL=${TOTAL:-530}
RESERVE=25
T0=$(date +%s)
WORK=${WORK:-/tmp/bebop-work}
mkdir -p "$WORK/logs" "$WORK/results"
: > "$WORK/stages.tsv"
source benchmarks/gpu/setup.sh > "$WORK/logs/setup.log" 2>&1 || { cat "$WORK/logs/setup.log"; exit 2; }
cat "$WORK/logs/setup.log"

if [[ $TINY == 1 ]]; then   # minutes on 2 CPU cores: every stage runs, nothing is measured
  HEAD_FLAGS=(--device "$DEVICE" --data-prompts 4 --samples-per-prompt 1 --sample-tokens 8 --steps 4 --train-batch 4
              --draft-vocab 512)
  SPEED_FLAGS=(--prompts 1 --max-new-tokens 8 --repeats 1 --batches 1,8 --threads 1)
  SLOPE_FLAGS=(--prompts 1 --max-new-tokens 8 --threads 1)
  GRPO_FLAGS=(--steps 2 --prompts 2 --group 2 --max-new-tokens 8 --head-steps 4 --head-prompts 4 --threads 1)
  EXACT_K="temperature_zero_equals_greedy"
  B_EXACT=300; B_HEADS=400; B_SPEED=300; B_SLOPE=300; B_GRPO=400
else
  HEAD_FLAGS=(--device "$DEVICE" --data-prompts 383 --samples-per-prompt 8 --steps 1500 --train-batch 32)
  SPEED_FLAGS=(--prompts 6 --max-new-tokens 64 --repeats 3 --batches 1,8)
  SLOPE_FLAGS=(--prompts 8 --max-new-tokens 40)
  GRPO_FLAGS=(--steps 6 --prompts 4 --group 8 --max-new-tokens 48 --head-steps 600 --head-prompts 512)
  EXACT_K="temperature_zero_equals_greedy or speculative_equals_plain or another_temperature"
  B_EXACT=45; B_HEADS=200; B_SPEED=90; B_SLOPE=50; B_GRPO=100
fi
# BUDGETS="heads=240 grpo=60" overrides stage budgets (seconds) without editing the script
for kv in ${BUDGETS:-}; do declare "B_$(echo "${kv%%=*}" | tr a-z A-Z)=${kv#*=}"; done

record() { printf '%s\t%s\t%s\t%s\n' "$@" >> "$WORK/stages.tsv"; }

pack() {
  local t
  t=$(mktemp -d)
  # metrics and plots; not grpo_step's per-arm training checkpoints (1.6 GB each)
  tar -C "$WORK" -cJf "$t/results.tar.xz" --exclude='*.pt' --exclude='*.safetensors' results \
    && mv "$t/results.tar.xz" "$OUT/"
  if [[ -d $WORK/heads ]]; then
    rm -f "$OUT"/heads.tar.part-*
    tar -C "$WORK" -cf - heads | split -b 15m -d - "$OUT/heads.tar.part-"
  fi
  for f in "$WORK"/logs/*.log; do echo "===== $(basename "$f")"; cat "$f"; done > "$OUT/log.txt"
  grep -h -E "(goal|×|α|slope|head .*train α|T=0|passed|failed|ratio)" "$WORK"/logs/{exact,heads,speed,slope,grpo}.log \
    2>/dev/null | grep -v -E "^\s*$" | head -120 > "$OUT/summary.txt"
  rm -rf "$t"
  "$PY" benchmarks/gpu/manifest.py --out "$OUT" --stages "$WORK/stages.tsv" --seed "$SEED" --kind bebop \
    --tiny "$TINY" --device "$DEVICE" --started "$T0" > /dev/null
}

stage() {  # stage NAME BUDGET CMD...: run CMD under timeout (budget cut to the time left), log, record, pack
  local name=$1 budget=$2 left t1 rc
  shift 2
  left=$(( T0 + TOTAL - RESERVE - $(date +%s) ))
  (( budget > left )) && budget=$left
  if (( budget < 15 )); then
    echo "== $name: skipped, ${left}s left"; record "$name" skipped 0 0; pack; return 1
  fi
  echo "== $name (budget ${budget}s): $*"
  t1=$(date +%s.%N)
  timeout -k 10 "$budget" "$@" > "$WORK/logs/$name.log" 2>&1
  rc=$?
  record "$name" "$rc" "$(awk "BEGIN {print $(date +%s.%N) - $t1}")" "$budget"
  tail -n "${TAIL:-30}" "$WORK/logs/$name.log"
  echo "== $name: exit $rc after $(tail -1 "$WORK/stages.tsv" | cut -f3 | cut -d. -f1) s$( ((rc == 124)) && echo ' (TIMED OUT)')"
  pack
  return $rc
}

stage exact "$B_EXACT" env ANATOMIST_TEST_DEVICE="$DEVICE" "$PY" -m pytest -q -p no:cacheprovider \
  tests/test_spec_generate.py -k "$EXACT_K" -s
stage heads "$B_HEADS" "$PY" benchmarks/gpu/heads.py "${HEAD_FLAGS[@]}" --losses e2e_tv,tv,ce --copy-to "$WORK/heads"
stage speed "$B_SPEED" "$PY" benchmarks/spec_speed.py "${HEAD_FLAGS[@]}" "${SPEED_FLAGS[@]}"
stage slope "$B_SLOPE" "$PY" benchmarks/entropy_slope.py "${HEAD_FLAGS[@]}" "${SLOPE_FLAGS[@]}" \
  --out "$WORK/results/acceptance_vs_entropy.html"
stage grpo "$B_GRPO" "$PY" benchmarks/grpo_step.py --device "$DEVICE" --seed "$SEED" "${GRPO_FLAGS[@]}" --ckpt-every 1000 \
  --out "$WORK/results/grpo"
pack
echo "== done in $(( $(date +%s) - T0 )) s; $OUT:"; ls -la "$OUT"
