#!/usr/bin/env bash
# make gpu-check: one command for a bare machine with one GPU and no network (README "Checking a GPU machine").
#   scripts/gpu_check.sh [OUT_DIR] [gpu_check.py options]            on the GPU machine
#   scripts/gpu_check.sh --dry-run [OUT_DIR] [gpu_check.py options]  on a CPU: the same steps at tiny size
# Installs aevb and its missing pure-Python dependencies from the wheels in $AEVB_WHEELS (default ./wheels) into
# $PYTHON (default python3, which must already hold torch and Lightning), then runs scripts/gpu_check.py: the GPU
# tests, the training loops' rates, packs of K jobs, a timed slice of the paper-scale Figure 2 MNIST sweep, and writes
# OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.md (default OUT_DIR: logs/gpu_check). --dry-run installs nothing: it
# uses .venv/bin/python where there is one (make install), else $PYTHON. Data: $AEVB_DATA_MIRROR (or ../shared/data).
# Exit status: 0 every step ran, 1 a step failed (the report says which), 2 nothing could start (one line says why).
set -uo pipefail
started=$(date +%s.%N)
cd "$(dirname "$0")/.."
err() { echo "gpu_check: error: $*" >&2; exit 2; }

dry=0
if [[ ${1:-} == --dry-run ]]; then dry=1; shift; fi
if [[ ${1:-} == -h || ${1:-} == --help ]]; then sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
out=logs/gpu_check
if [[ $# -gt 0 && ${1:-} != -* ]]; then out=$1; shift; fi

if [[ -z ${AEVB_DATA_MIRROR:-} && -d ../shared/data/mnist ]]; then
  AEVB_DATA_MIRROR=$(cd ../shared/data && pwd)
fi
[[ -n ${AEVB_DATA_MIRROR:-} ]] || err "AEVB_DATA_MIRROR is not set: point it at the data mirror (a folder holding mnist/ and frey/)"
[[ -d $AEVB_DATA_MIRROR/mnist ]] || err "no data mirror at AEVB_DATA_MIRROR=$AEVB_DATA_MIRROR (it must hold mnist/)"
export AEVB_DATA_MIRROR

if ((dry)); then
  PY=${PYTHON:-python3}
  [[ -z ${PYTHON:-} && -x .venv/bin/python ]] && PY=.venv/bin/python
else
  PY=${PYTHON:-python3}
fi
command -v "$PY" >/dev/null || err "no Python at $PY (set PYTHON)"
"$PY" -c "import torch, lightning" 2>/dev/null || err "$PY has no torch and Lightning (set PYTHON to the one that has)"
mkdir -p "$out/logs" || err "cannot create $out"

if ((dry)); then
  "$PY" -c "import aevb, hydra" 2>/dev/null || err "$PY has no aevb (--dry-run installs nothing: run make install)"
else
  wheels=${AEVB_WHEELS:-wheels}
  [[ -d $wheels ]] || err "no wheel folder at AEVB_WHEELS=$wheels (README \"Checking a GPU machine\" lists its wheels)"
  # setuptools (aevb's build back end) from this Python where it has one, else from the wheel folder
  iso=()
  "$PY" -c "import setuptools, sys; sys.exit(int(setuptools.__version__.split('.')[0]) < 68)" 2>/dev/null && iso=(--no-build-isolation)
  echo "gpu_check: installing aevb and its missing dependencies from $wheels (log: $out/logs/install.log)" >&2
  "$PY" -m pip install --no-index --find-links "$wheels" "${iso[@]}" -e . >"$out/logs/install.log" 2>&1 \
    || err "pip could not install aevb from $wheels: $(grep -m1 -E 'ERROR|No matching' "$out/logs/install.log")"
fi

args=(--out "$out" --started "$started")
((dry)) && args+=(--dry-run)
exec "$PY" scripts/gpu_check.py "${args[@]}" "$@"
