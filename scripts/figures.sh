#!/usr/bin/env bash
# Every figure whose runs exist under $SWEEPS; the others are skipped with a line saying why.
# Each sweep's table lands beside its figure: $FIGURES/results_fig2_mnist.md, results_fig2_frey.md (and .csv),
# log_px_fig3_mnist.md; aevb-figures prints what it wrote.
. "$(dirname "$0")/common.sh"
here=$(dirname "$0")
for s in fig2_mnist fig2_frey; do
  if [[ -d $SWEEPS/$s ]]; then figures fig2 "$SWEEPS/$s" --out "$FIGURES"
  else echo "skip $s: no runs in $SWEEPS/$s"; fi
done
if [[ -d $SWEEPS/fig3_mnist ]]; then figures fig3 "$SWEEPS/fig3_mnist" --out "$FIGURES"
else echo "skip fig3: no runs in $SWEEPS/fig3_mnist"; fi
if [[ -d $SWEEPS/fig4_mnist && -d $SWEEPS/fig4_frey ]]; then "$here/fig4-figures.sh"
else echo "skip fig4: no runs in $SWEEPS/fig4_mnist and $SWEEPS/fig4_frey"; fi
if [[ -d $SWEEPS/fig5_mnist ]]; then "$here/fig5-figures.sh"
else echo "skip fig5: no runs in $SWEEPS/fig5_mnist"; fi
if [[ -d $FIGURES ]]; then echo "in $FIGURES:"; ls "$FIGURES"; fi
