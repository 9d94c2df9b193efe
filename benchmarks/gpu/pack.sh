#!/usr/bin/env bash
# Pack what the GPU machine lacks (issues #22, #23) into three carry folders, here, before a GPU session.
#
# The device machine reaches no registry and takes at most 64 MiB per call (the working tree
# included), so the default model (a 98 MB GGUF), the wheels it lacks (wheels.txt), the default SAE
# and ../shared/data travel in three calls, each ≤ 55 MiB: .gpu/a, .gpu/b, .gpu/c. Every folder
# holds one part of the GGUF and a copy of .gpu/SHA256SUMS (every file, the whole GGUF too);
# setup.sh checks each file against it before use.
#
#   bash benchmarks/gpu/pack.sh            # WHEEL_DIR=/tmp/whl-gpu (missing wheels are downloaded there)
#
# Then, in a session whose `status` says can_start_another: true, make these three `run` calls
# back to back (the machine goes back after 30 s idle: no thinking between them; calls 1-2 only
# check and stash their part under /tmp/anatomist-gpu there):
#
#   run(carry=[".gpu/a"], timeout_s=300, command="bash benchmarks/gpu/setup.sh stash a")
#   run(carry=[".gpu/b"], timeout_s=120, command="bash benchmarks/gpu/setup.sh stash b")
#   run(carry=[".gpu/c"], timeout_s=600, command="bash benchmarks/gpu/setup.sh stash c && bash benchmarks/gpu/truth.sh")
#
# (#23: the third command ends in bebop.sh instead of truth.sh.) If call 2 or 3 prints
# "missing part", the machine was given back in between: start again at call 1. What the job
# brings back lies under the reply's files_at (manifest.json first).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO"
PY=${PY:-$REPO/.venv/bin/python}
WHEEL_DIR=${WHEEL_DIR:-/tmp/whl-gpu}
LIMIT_MIB=${LIMIT_MIB:-55}
mkdir -p "$WHEEL_DIR"

# 1. wheels: every pin of wheels.txt, downloaded where missing
wheels=()
while read -r pin _; do
  [[ -z "$pin" || "$pin" == \#* ]] && continue
  name=${pin%%==*}; ver=${pin##*==}
  norm=$(echo "$name" | tr '-' '_')
  f=$(ls "$WHEEL_DIR"/*.whl 2>/dev/null | grep -i -E "/${norm}-${ver}-" | head -1 || true)
  if [[ -z "$f" ]]; then
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$WHEEL_DIR" "$pin"
    f=$(ls "$WHEEL_DIR"/*.whl | grep -i -E "/${norm}-${ver}-" | head -1)
  fi
  wheels+=("$f")
done < benchmarks/gpu/wheels.txt

# 2. the model, the SAE (found, never trained here) and the shared data
read -r GGUF SAE DATA < <("$PY" - <<'EOF'
from anatomist.data.shared import shared_data_dir
from anatomist.models.loading import ALIASES, DEFAULT_MODEL, cache_root
from anatomist.sae.default import DEFAULT_RECIPE, model_dir_name
sae = cache_root() / "sae" / model_dir_name(DEFAULT_MODEL) / DEFAULT_RECIPE.key(DEFAULT_MODEL)
assert (sae / "cfg.json").is_file(), f"{sae}: no cached default SAE here (run `make demo` once)"
print(ALIASES[DEFAULT_MODEL].path(), sae, shared_data_dir())
EOF
)

# 3. three folders of about equal size: the other files placed largest first, the GGUF cut to fill
rm -rf .gpu && mkdir -p .gpu
"$PY" - "$GGUF" "$SAE" "$DATA" "$LIMIT_MIB" "${wheels[@]}" <<'EOF'
import hashlib, os, shutil, sys
from pathlib import Path

gguf, sae, data, limit = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4])
items = [(w, f"whl/{Path(w).name}") for w in sys.argv[5:]]
items += [(p, f"sae/{p.name}") for p in sorted(sae.iterdir()) if p.is_file()]
items += [(p, f"data/{p.name}") for p in sorted(data.iterdir()) if p.is_file()]
bins = {k: [] for k in "abc"}
load = dict.fromkeys(bins, 0)
for src, rel in sorted(items, key=lambda it: -os.path.getsize(it[0])):
    k = min(load, key=load.get)
    bins[k].append((src, rel))
    load[k] += os.path.getsize(src)
size = gguf.stat().st_size
target = (size + sum(load.values())) / 3
cuts, start = {}, 0
for i, k in enumerate(bins):
    n = size - start if i == 2 else int(target - load[k])
    assert 0 < n <= size - start, f"cannot balance: part {k} would take {n} bytes"
    cuts[k] = (start, n)
    start += n
sums = []
with gguf.open("rb") as f:
    sums.append((hashlib.sha256(f.read()).hexdigest(), f"gguf/{gguf.name}"))
for k, files in bins.items():
    root = Path(".gpu") / k
    for src, rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, root / rel)
    with gguf.open("rb") as f:
        f.seek(cuts[k][0])
        (root / f"gguf.part-{k}").write_bytes(f.read(cuts[k][1]))
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        sums.append((hashlib.sha256(p.read_bytes()).hexdigest(), f"{k}/{p.relative_to(root)}"))
text = "".join(f"{h}  {rel}\n" for h, rel in sums)
text += f"# sae-dir {sae.parent.name}/{sae.name}\n# gguf {gguf.name}\n"
Path(".gpu/SHA256SUMS").write_text(text)
for k in bins:
    Path(".gpu", k, "SHA256SUMS").write_text(text)
    mib = sum(p.stat().st_size for p in Path(".gpu", k).rglob("*") if p.is_file()) / 2**20
    assert mib <= limit, f".gpu/{k} is {mib:.1f} MiB > {limit} MiB"
    print(f".gpu/{k}: {mib:5.1f} MiB ({len(bins[k])} files + GGUF part of {cuts[k][1] / 2**20:.1f} MiB)")
EOF
tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
echo "tracked working tree: $((tree / 1024)) KiB (each call carries it too; limit 64 MiB per call)"
git check-ignore -q .gpu/a || { echo "error: .gpu/ is not ignored by git (it would travel with every call)"; exit 2; }
sed -n '/^# Then, in a session/,/^# brings back/p' "$0" | sed 's/^# \{0,1\}//'
