# Sourced by the figure pipelines: where things are, and the experiment knobs as Hydra overrides.
#   BIN      the virtual environment's bin folder (default .venv/bin)
#   SWEEPS   where the sweeps are written (default logs/sweeps); FIGURES where figures go (default logs/figures)
#   SAMPLES  training samples evaluated per run; LAUNCHER a hydra/launcher option (default: packed where a GPU
#            is visible, else Hydra's basic one; LAUNCHER=basic keeps one job at a time); TRAINER cpu | gpu | ddp
# Any arguments the pipeline gets are passed on to aevb-train as extra overrides.
set -euo pipefail
BIN=${BIN:-.venv/bin}
SWEEPS=${SWEEPS:-logs/sweeps}
FIGURES=${FIGURES:-logs/figures}
RUN_KNOBS=()    # for a single run
[[ -n ${SAMPLES:-} ]] && RUN_KNOBS+=("max_samples=$SAMPLES")
[[ -n ${TRAINER:-} ]] && RUN_KNOBS+=("trainer=$TRAINER")
SWEEP_KNOBS=("${RUN_KNOBS[@]}")    # for a sweep: the launcher too
# Sweeps pack by default where a GPU is visible (hydra/launcher=packed; README "Packed sweeps"); LAUNCHER=... overrides.
if [[ -z ${LAUNCHER:-} ]] && "$BIN/python" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  LAUNCHER=packed
fi
[[ -n ${LAUNCHER:-} ]] && SWEEP_KNOBS+=("hydra/launcher=$LAUNCHER")
# Use ../shared/data as the offline mirror when it is there and nothing else is set.
if [[ -z ${AEVB_DATA_MIRROR:-} && -d ../shared/data/mnist ]]; then
  AEVB_DATA_MIRROR=$(cd ../shared/data && pwd)
  export AEVB_DATA_MIRROR
fi

train() { "$BIN/aevb-train" "$@"; }
figures() { "$BIN/aevb-figures" "$@"; }
