# Sourced by the figure pipelines: where things are, and the experiment knobs as Hydra overrides.
#   BIN      the virtual environment's bin folder (default .venv/bin)
#   SWEEPS   where the sweeps are written (default logs/sweeps); FIGURES where figures go (default logs/figures)
#   SAMPLES  training samples evaluated per run; LAUNCHER a hydra/launcher option; TRAINER cpu | gpu | ddp
# Any arguments the pipeline gets are passed on to aevb-train as extra overrides.
set -euo pipefail
BIN=${BIN:-.venv/bin}
SWEEPS=${SWEEPS:-logs/sweeps}
FIGURES=${FIGURES:-logs/figures}
RUN_KNOBS=()    # for a single run
[[ -n ${SAMPLES:-} ]] && RUN_KNOBS+=("max_samples=$SAMPLES")
[[ -n ${TRAINER:-} ]] && RUN_KNOBS+=("trainer=$TRAINER")
SWEEP_KNOBS=("${RUN_KNOBS[@]}")    # for a sweep: the launcher too
[[ -n ${LAUNCHER:-} ]] && SWEEP_KNOBS+=("hydra/launcher=$LAUNCHER")
# Use ../shared/data as the offline mirror when it is there and nothing else is set.
if [[ -z ${AEVB_DATA_MIRROR:-} && -d ../shared/data/mnist ]]; then
  AEVB_DATA_MIRROR=$(cd ../shared/data && pwd)
  export AEVB_DATA_MIRROR
fi

train() { "$BIN/aevb-train" "$@"; }
figures() { "$BIN/aevb-figures" "$@"; }
