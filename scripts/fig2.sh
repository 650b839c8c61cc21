#!/usr/bin/env bash
# Figure 2 for one data set: train the sweep, then draw the figure and the results table.
#   scripts/fig2.sh mnist|frey [aevb-train overrides...]
. "$(dirname "$0")/common.sh"
name=fig2_${1:?usage: scripts/fig2.sh mnist|frey [overrides...]}
shift
train -m "experiment=$name" "hydra.sweep.dir=$SWEEPS/$name" "${SWEEP_KNOBS[@]}" "$@"
figures fig2 "$SWEEPS/$name" --out "$FIGURES"
