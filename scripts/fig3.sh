#!/usr/bin/env bash
# Figure 3: train the MNIST sweep (AEVB vs wake-sleep, two training-set sizes), then draw it.
#   scripts/fig3.sh [aevb-train overrides...]
# Writes $FIGURES/fig3_mnist.png/.pdf and its table $FIGURES/log_px_fig3_mnist.md.
. "$(dirname "$0")/common.sh"
train -m experiment=fig3_mnist "hydra.sweep.dir=$SWEEPS/fig3_mnist" "${SWEEP_KNOBS[@]}" "$@"
figures fig3 "$SWEEPS/fig3_mnist" --out "$FIGURES"
