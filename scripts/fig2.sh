#!/usr/bin/env bash
# Figure 2 for one data set: train the sweep, then draw the figure and the results table.
#   scripts/fig2.sh mnist|frey [aevb-train overrides...]
# Writes $FIGURES/fig2_<data set>.png/.pdf and $FIGURES/results_fig2_<mnist|frey>.csv/.md (one table per sweep).
. "$(dirname "$0")/common.sh"
name=fig2_${1:?usage: scripts/fig2.sh mnist|frey [overrides...]}
shift
train -m "experiment=$name" "hydra.sweep.dir=$SWEEPS/$name" "${SWEEP_KNOBS[@]}" "$@"
figures fig2 "$SWEEPS/$name" --out "$FIGURES"
