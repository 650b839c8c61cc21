#!/usr/bin/env bash
# Figure 4 from runs that exist: the learned manifolds of the MNIST and Frey Face N_z = 2 models.
. "$(dirname "$0")/common.sh"
mkdir -p "$FIGURES"
figures manifold "$SWEEPS/fig4_mnist/0" --out "$FIGURES/fig4_mnist_manifold.png"
figures manifold "$SWEEPS/fig4_frey" --out "$FIGURES/fig4_frey_manifold.png"
