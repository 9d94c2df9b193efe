#!/usr/bin/env bash
# Issue #22 on a GPU: one truth run at a size the CPU cannot reach, in one go of ≤ 9 minutes.
#
#   (device, after pack.sh's calls 1-2)  bash benchmarks/gpu/setup.sh stash c && bash benchmarks/gpu/truth.sh
#   (rehearsal here)  DEVICE=cpu TINY=1 OUT=/tmp/gpu-rehearse nice -n 10 bash benchmarks/gpu/truth.sh
#
# Stages, each under `timeout` with its own budget (cut to what is left of TOTAL), each followed
# by packing what exists into $OUT, so a cut-off run still brings back what finished:
#   organism  a default-size organism draw (236 prompts per topic) with the new seed SEED=7
#   audit     `anatomist audit --topic-column topic` of its train pairs, then `anatomist organism score`
#   pva       benchmarks/predict_vs_actual.py on that organism and audit: base eval on every
#             held-out prompt, one DPO epoch (the first-order design run's recipe: top 14 blocks,
#             lr 5e-5), post eval, the first-order predictors (first_adam frozen at bf69a15), verify.
#             Samples per prompt: as many as the time left allows, planned from the organism
#             stage's measured sampling rate (SAMPLES / POST_SAMPLES override).
# $OUT (≤ 8 files): manifest.json (stages, seconds, exit codes, seeds, GPU, hashes, the run's
# kind), log.txt, organism.tar.xz, audit.tar.xz (no latents, no HTML), eval.tar.xz (behaviour,
# verify and first-order tables; no texts of generations, no weights), summary.txt.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO"
: "${OUT:?set OUT to the folder results go to}"
mkdir -p "$OUT"
export DEVICE=${DEVICE:-cuda}
TINY=${TINY:-0}
SEED=7                      # a new draw: the organism benchmarks so far used seeds 0 and 1
TOTAL=${TOTAL:-530}         # seconds for the whole job (the device call's limit is 600)
RESERVE=25                  # kept back for the last packing
T0=$(date +%s)
WORK=${WORK:-/tmp/truth-work}
mkdir -p "$WORK/logs"
: > "$WORK/stages.tsv"
source benchmarks/gpu/setup.sh > "$WORK/logs/setup.log" 2>&1 || { cat "$WORK/logs/setup.log"; exit 2; }
cat "$WORK/logs/setup.log"
ANATOMIST=("$PY" -c "from anatomist.cli import main; main()")

if [[ $TINY == 1 ]]; then   # minutes on 2 CPU cores: every stage runs, nothing is measured
  PER_TOPIC=16; GEN_BATCH=32; MAX_NEW=24; PVA_FLAGS=(--train-layers 2 --lr 1e-4 --n-boot 50 --variant-steps 2
                                                     --grad-share 0.5 --threads 2)
  B_ORG=900; B_AUDIT=600; B_SCORE=120; B_PVA=1500; SAMPLES=${SAMPLES:-4}; POST_SAMPLES=${POST_SAMPLES:-2}
else
  PER_TOPIC=236; GEN_BATCH=256; MAX_NEW=96; PVA_FLAGS=(--train-layers 14 --lr 5e-5 --n-boot 1000 --threads 8)
  B_ORG=200; B_AUDIT=110; B_SCORE=40; B_PVA=400
fi
# BUDGETS="org=150 pva=450" overrides stage budgets (seconds) without editing the script
for kv in ${BUDGETS:-}; do declare "B_$(echo "${kv%%=*}" | tr a-z A-Z)=${kv#*=}"; done

record() { printf '%s\t%s\t%s\t%s\n' "$@" >> "$WORK/stages.tsv"; }

pack() {   # everything that exists so far into $OUT (tables only), then the manifest
  local t
  t=$(mktemp -d)
  if [[ -f $WORK/organism/truth.json ]]; then
    tar -C "$WORK" -cJf "$t/organism.tar.xz" --exclude='*.html' organism && mv "$t/organism.tar.xz" "$OUT/"
  fi
  if [[ -d $WORK/audit ]]; then
    tar -C "$WORK" -cJf "$t/audit.tar.xz" --exclude=latents --exclude="*.html" --exclude=examples.json audit && mv "$t/audit.tar.xz" "$OUT/"
  fi
  if [[ -d $WORK/pva/plain ]]; then   # tables of the evaluation; the generation caches (texts) and weights stay
    (cd "$WORK" && find pva/plain \( -name generations -o -name latents -o -name dpo -o -name steps_run \) -prune -o -type f \
       \( -name '*.parquet' -o -name '*.json' \) -size -8M -print | sort > "$t/list")
    tar -C "$WORK" -cJf "$t/eval.tar.xz" -T "$t/list" && mv "$t/eval.tar.xz" "$OUT/"
  fi
  for f in "$WORK"/logs/*.log; do echo "===== $(basename "$f")"; cat "$f"; done > "$OUT/log.txt"
  rm -rf "$t"
  "$PY" benchmarks/gpu/manifest.py --out "$OUT" --stages "$WORK/stages.tsv" --seed "$SEED" --kind truth \
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
  tail -n "${TAIL:-25}" "$WORK/logs/$name.log"
  echo "== $name: exit $rc after $(tail -1 "$WORK/stages.tsv" | cut -f3 | cut -d. -f1) s$( ((rc == 124)) && echo ' (TIMED OUT)')"
  pack
  return $rc
}

stage organism "$B_ORG" "${ANATOMIST[@]}" organism build --out "$WORK/organism" --seed "$SEED" --device "$DEVICE" \
  --prompts-per-topic "$PER_TOPIC" --batch-size "$GEN_BATCH" --max-new-tokens "$MAX_NEW" || exit 1

stage audit "$B_AUDIT" "${ANATOMIST[@]}" audit --data "$WORK/organism/train.jsonl" --out "$WORK/audit" \
  --topic-column topic --seed "$SEED" --device "$DEVICE" || exit 1
stage score "$B_SCORE" "${ANATOMIST[@]}" organism score "$WORK/audit" --truth "$WORK/organism/truth.json"

# samples per held-out prompt from the organism's measured sampling rate and the time left
if [[ -z ${SAMPLES:-} ]]; then
  left=$(( T0 + TOTAL - RESERVE - $(date +%s) ))
  (( B_PVA < left )) && left=$B_PVA
  read -r SAMPLES POST_SAMPLES < <("$PY" benchmarks/gpu/manifest.py --plan-samples "$WORK/organism" --seconds "$left")
fi
echo "== plan: $SAMPLES base / $POST_SAMPLES post samples per held-out prompt"
record plan "samples=$SAMPLES" "post=$POST_SAMPLES" 0

stage pva "$B_PVA" "$PY" benchmarks/predict_vs_actual.py --organism "$WORK/organism" --audit "$WORK/audit" \
  --work "$WORK/pva" --device "$DEVICE" --seed "$SEED" --samples "$SAMPLES" --post-samples "$POST_SAMPLES" \
  --max-new-tokens "$MAX_NEW" --gen-batch "$GEN_BATCH" "${PVA_FLAGS[@]}"
rc=$?
grep -h -E "^(recall|precision|  |[0-9]+ \(topic|noise|where|held-out|feature|first-order|predictor cost|report)" \
  "$WORK/logs/score.log" "$WORK/logs/pva.log" 2>/dev/null | head -80 > "$OUT/summary.txt"
pack
echo "== done in $(( $(date +%s) - T0 )) s; $OUT:"; ls -la "$OUT"
exit $rc
