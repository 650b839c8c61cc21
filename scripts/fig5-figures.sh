#!/usr/bin/env bash
# Figure 5 from runs that exist: every job's samples side by side, and job 3's reconstructions.
. "$(dirname "$0")/common.sh"
mkdir -p "$FIGURES"
jobs=$(find "$SWEEPS/fig5_mnist" -mindepth 1 -maxdepth 1 -type d -name '[0-9]*' | LC_ALL=C sort)
# shellcheck disable=SC2086  # job folders are numbered: no spaces
figures fig5 $jobs --out "$FIGURES/fig5_mnist.png"
figures reconstructions "$SWEEPS/fig5_mnist/3" --out "$FIGURES/reconstructions_mnist.png"
