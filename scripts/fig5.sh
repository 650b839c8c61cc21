#!/usr/bin/env bash
# Figure 5: the MNIST sweep over N_z, then samples side by side and reconstructions.
#   scripts/fig5.sh [aevb-train overrides...]
. "$(dirname "$0")/common.sh"
train -m experiment=fig45_mnist "hydra.sweep.dir=$SWEEPS/fig5_mnist" "${SWEEP_KNOBS[@]}" "$@"
"$(dirname "$0")/fig5-figures.sh"
