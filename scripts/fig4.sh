#!/usr/bin/env bash
# Figure 4: an N_z = 2 MNIST model (from the Figure 5 sweep's setup) and the Frey Face model, then their manifolds.
#   scripts/fig4.sh [aevb-train overrides...]
. "$(dirname "$0")/common.sh"
train -m experiment=fig45_mnist model.latent_dim=2 "hydra.sweep.dir=$SWEEPS/fig4_mnist" "${SWEEP_KNOBS[@]}" "$@"
train experiment=fig4_frey "hydra.run.dir=$SWEEPS/fig4_frey" "${RUN_KNOBS[@]}" "$@"
"$(dirname "$0")/fig4-figures.sh"
