"""aevb-figures: the paper's figures from finished runs, sweeps and checkpoints.

Subcommands (``aevb-figures --help``):

* ``fig2 SWEEP_DIR``: Figure 2, the lower bound per datapoint (train subset and
  test split) against training samples evaluated, one panel per N_z, AEVB vs
  wake-sleep; plus the table of final ELBOs with one row per job (failed jobs
  included, with their error): ``results.csv`` / ``results.md`` in the sweep
  folder, ``results_<sweep folder name>.csv`` / ``.md`` in any other ``--out``
  folder (aevb.tables.table_stem). The y-range is ``--ylim LO HI``, else from the
  lowest final value to the highest value with margins (aevb.plots.fig2_ylim);
  points below it are drawn at its lower edge as triangles and counted.
* ``fig3 SWEEP_DIR``: Figure 3, the estimated marginal likelihood log p(x) per
  datapoint (importance sampled, encoder as proposal; train subset and test
  subset) against training samples evaluated, one panel per training-set size,
  AEVB vs wake-sleep, from each job's ``marginal_curve.csv``; its table is
  ``log_px.md`` in the sweep folder, ``log_px_<sweep folder name>.md`` elsewhere.
* ``manifold CKPT``: Figure 4, the learned 2-D manifold of an N_z = 2 model,
  with the grid's z values as ticks.
* ``samples CKPT``: random samples z ~ N(0, I) decoded to mean images, titled.
* ``reconstructions CKPT``: test images (top row, "data") and their
  reconstructions (bottom row, "reconstruction").

The three pictures are drawn at ``--scale`` (default 4) screen pixels per data pixel,
nearest neighbour, with a title saying what they show (aevb.pictures.*_figure).
* ``fig5 CKPT [CKPT ...]``: Figure 5, several models' samples side by side.

The work lives in the library modules: aevb.runs (reading run folders), aevb.tables
(results tables), aevb.plots (Figures 2, 3, 5), aevb.pictures (pictures from a model);
this module only parses arguments, calls them and says what it wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from aevb.checkpoints import load_model, resolve_checkpoint, run_dir_of
from aevb.cli import fail
from aevb.errors import AevbError, require_positive_int
from aevb.evaluation import UNITS
from aevb.pictures import (MANIFOLD_RANGE, PIXEL_SCALE, latent_dim_of, manifold_figure, reconstructions_figure,
                           sample_grid, samples_figure, save_picture)
from aevb.plots import YLIM_MARGIN, clipped_counts, counts_label, plot_fig2, plot_fig3, plot_fig5
from aevb.runs import Run, collect_fig3_runs, collect_runs, dataset_name
from aevb.tables import table_source, table_stem, write_fig3_table, write_results

PROG = "aevb-figures"


def _out_path(out: str | None, default: Path) -> Path:
    if out is None:
        return default
    p = Path(out)
    return p / default.name if p.is_dir() else p


def _load(ckpt: Path, cache: dict | None = None):
    """load_model, sharing one data module between checkpoints whose data config is the same."""
    dm, key = None, None
    if cache is not None:
        try:
            raw = torch.load(ckpt, map_location="cpu", weights_only=False)
            key = json.dumps(raw["aevb_config"]["data"], sort_keys=True, default=str)
            dm = cache.get(key)
        except Exception:  # load_model gives the proper message
            key = None
    model, dm, cfg = load_model(ckpt, data_module=dm)
    if cache is not None and key is not None:
        cache[key] = dm
    return model, dm, cfg


def _describe(model, dm) -> str:
    return (f"{dataset_name(getattr(dm, 'name', None))}, N_z = {latent_dim_of(model)},"
            f" {type(model).__name__} after {int(getattr(model, 'samples_seen', 0)):,} training samples")


def _px(size: tuple[int, int]) -> str:
    """(width, height) in pixels, said in that order."""
    return f"{size[0]} x {size[1]} px (width x height)"


def _write_picture(fig, out: Path, scale: int) -> str:
    """save_picture, and how big the file and its image are, for the 'wrote' line."""
    out, size, (left, top, right, bottom) = save_picture(fig, out)
    h, w = fig.axes[0].images[0].get_array().shape[:2]
    return (f"wrote {out} ({_px(size)}, with title and labels; the {w} x {h} image pixels drawn as"
            f" {scale} x {scale} px each: {right - left} x {bottom - top} px)")


def _check_table_owner(md_path: Path, sweep: Path) -> None:
    """Warn when md_path holds the table of another sweep (same folder name, drawn into one --out folder)."""
    owner = table_source(md_path) if md_path.is_file() else None
    if owner and owner != str(sweep.resolve()):
        print(f"{PROG}: warning: {md_path} held the table of another sweep ({owner}), now replaced; draw sweeps"
              " whose folders share a name into different --out folders", file=sys.stderr)


def _draw_per_dataset(number: int, datasets: list[str], out_dir: Path, draw) -> list[tuple[Path, str | None]]:
    """draw(dataset, stem) for each data set, saving fig<number>_<dataset>.png/.pdf under out_dir.

    draw returns a description of the figure (or None); one data set's trouble (AevbError) is a
    warning that costs no other data set its figure. Returns (path, description) of what was written.
    """
    written: list[tuple[Path, str | None]] = []
    for ds in datasets:
        stem = out_dir / f"fig{number}_{ds}"
        try:
            desc = draw(ds, stem)
        except AevbError as exc:
            print(f"{PROG}: warning: no Figure {number} for {dataset_name(ds)}: {exc}", file=sys.stderr)
            continue
        written += [(stem.with_suffix(".png"), desc), (stem.with_suffix(".pdf"), desc and "the same, as PDF")]
    return written


def _warn_unfinished(runs: list[Run], no_curve: list[str], curve_file: str, consequence: str) -> None:
    """Warn (stderr) of jobs that did not finish and of jobs (``no_curve``) without a usable curve file."""
    bad = [r for r in runs if r.status != "ok"]
    if bad:
        print(f"{PROG}: warning: {len(bad)} of {len(runs)} jobs did not finish: "
              + "; ".join(f"job {r.job} {r.status}: {r.error}" for r in bad), file=sys.stderr)
    if no_curve:
        print(f"{PROG}: warning: job(s) {', '.join(no_curve)} have no usable {curve_file}: {consequence}",
              file=sys.stderr)


def _print_written(written: list[tuple[Path, str | None]]) -> None:
    print("wrote:")
    for p, desc in written:
        print(f"  {p}: {desc}" if desc else f"  {p}")


def cmd_fig2(args) -> None:
    sweep = Path(args.sweep_dir)
    runs = collect_runs(sweep)
    out_dir = Path(args.out) if args.out else sweep
    stem = table_stem(sweep, out_dir)
    _check_table_owner(out_dir / f"{stem}.md", sweep)
    csv_path, md_path, text = write_results(runs, out_dir, title=f"Sweep results: {sweep.resolve()}", stem=stem)
    print(text)
    datasets = sorted({r.dataset for r in runs if r.dataset})
    ylim = tuple(args.ylim) if args.ylim else None

    def draw(ds: str, stem: Path) -> str:
        fig = plot_fig2(runs, out=stem, dataset=ds, ylim=ylim)
        mine = [r.curve for r in runs if r.dataset == ds and r.curve is not None and len(r.curve)]
        lo, hi = fig.axes[0].get_ylim()
        below, above = clipped_counts(fig)
        rule = ("--ylim" if ylim else f"default: lowest final value to highest value, {YLIM_MARGIN:.0%} margins"
                if mine else "matplotlib's")
        clipped = ", ".join(f"{k} point(s) {where} it drawn as triangles at its {edge} edge" for k, where, edge in
                            ((below, "below", "lower"), (above, "above", "upper")) if k)
        return (f"Figure 2, {dataset_name(ds)}: lower bound in {UNITS} vs training samples evaluated, {len(mine)} runs'"
                f" curves, panels {', '.join(ax.get_title() for ax in fig.axes)}; train n ="
                f" {counts_label(n for c in mine for n in c.train_n)}, test n = {counts_label(n for c in mine for n in c.test_n)}"
                f" datapoints; y-axis {lo:.1f} to {hi:.1f} {UNITS} ({rule})" + (f"; {clipped}" if clipped else ""))

    written = [(csv_path, f"final ELBOs of {len(runs)} jobs of {sweep}, {UNITS}"), (md_path, "the same, as Markdown")]
    written += _draw_per_dataset(2, datasets, out_dir, draw)
    _warn_unfinished(runs, [r.job for r in runs if r.status == "ok" and r.curve is None],
                     "curve.csv", "in the table, not in the plot")
    if not datasets:
        print(f"{PROG}: warning: no job says which data set it used, so there is no Figure 2 to draw", file=sys.stderr)
    _print_written(written)


def cmd_fig3(args) -> None:
    sweep = Path(args.sweep_dir)
    runs = collect_fig3_runs(sweep)
    out_dir = Path(args.out) if args.out else sweep
    md_path = out_dir / f"{table_stem(sweep, out_dir, 'log_px')}.md"
    _check_table_owner(md_path, sweep)
    md_path, text = write_fig3_table(runs, out_dir, f"Figure 3 table: {sweep.resolve()}", stem=md_path.stem)
    print(text)
    ylim = tuple(args.ylim) if args.ylim else None

    def draw(ds: str, stem: Path) -> str:
        fig = plot_fig3(runs, out=stem, dataset=ds, ylim=ylim)
        mine = [r for r in runs if r.run.dataset == ds and r.marginal is not None]
        sizes = ", ".join(ax.get_title() for ax in fig.axes)
        return (f"Figure 3, {dataset_name(ds)}: estimated log p(x) in {UNITS} vs training samples evaluated,"
                f" {len(mine)} curves, panels {sizes}; train n = {counts_label(n for r in mine for n in r.marginal.train_n)},"
                f" test n = {counts_label(n for r in mine for n in r.marginal.test_n)} datapoints,"
                f" k = {counts_label(k for r in mine for k in r.marginal.k)} importance samples")

    written = _draw_per_dataset(3, sorted({r.run.dataset for r in runs if r.run.dataset}), out_dir, draw)
    written = ([(md_path, f"log p(x) at the last point of each of {len(runs)} jobs of {sweep}, {UNITS}")] + written
               if written else [])
    _warn_unfinished([r.run for r in runs], [r.run.job for r in runs if r.marginal is None],
                     "marginal_curve.csv", "not in the plot")
    if not written:
        raise AevbError(f"no Figure 3 drawn from {sweep}: no job has a marginal_curve.csv with a known data set"
                        " (run the sweep with experiment=fig3_mnist)")
    _print_written(written)


def cmd_manifold(args) -> None:
    ckpt = resolve_checkpoint(args.ckpt)
    model, dm, _ = _load(ckpt)
    fig = manifold_figure(model, args.grid, getattr(dm, "name", None), scale=args.scale)
    wrote = _write_picture(fig, _out_path(args.out, run_dir_of(ckpt) / "manifold.png"), args.scale)
    lo, hi = MANIFOLD_RANGE
    print(f"{wrote}: Figure 4, learned manifold of {_describe(model, dm)}; {args.grid} x {args.grid}"
          f" decoder means E[x|z] at z = inverse Gaussian CDF of a grid on [{lo}, {hi}]^2 (rows: z_1, columns: z_2,"
          " their values as ticks)")


def cmd_samples(args) -> None:
    ckpt = resolve_checkpoint(args.ckpt)
    model, dm, _ = _load(ckpt)
    fig = samples_figure(model, args.n, args.seed, getattr(dm, "name", None), scale=args.scale)
    wrote = _write_picture(fig, _out_path(args.out, run_dir_of(ckpt) / "samples.png"), args.scale)
    print(f"{wrote}: {args.n} random samples of {_describe(model, dm)};"
          f" decoder means E[x|z], z ~ N(0, I), seed {args.seed}")


def cmd_reconstructions(args) -> None:
    ckpt = resolve_checkpoint(args.ckpt)
    model, dm, _ = _load(ckpt)
    test = dm.splits["test"] if getattr(dm, "splits", None) else None
    if test is None:
        dm.setup()
        test = dm.splits["test"]
    source = f"the test split (n = {len(test):,} datapoints)"
    fig = reconstructions_figure(model, test, args.n, getattr(dm, "name", None), source=source, scale=args.scale)
    shown = min(args.n, len(test))
    wrote = _write_picture(fig, _out_path(args.out, run_dir_of(ckpt) / "reconstructions.png"), args.scale)
    print(f"{wrote}: {_describe(model, dm)}; top row (data): the first {shown} images of {source},"
          " bottom row: their reconstructions (decoder mean at the encoder mean)")


def cmd_fig5(args) -> None:
    ckpts = [resolve_checkpoint(c) for c in args.ckpts]
    cache: dict = {}
    panels, datasets = [], []
    for ckpt in ckpts:
        model, dm, _ = _load(ckpt, cache)
        panels.append((latent_dim_of(model), sample_grid(model, args.n, args.seed)))
        datasets.append(getattr(dm, "name", None))
    shapes = {p[1].shape for p in panels}
    if len(shapes) > 1:
        raise AevbError(f"these checkpoints produce images of different sizes ({', '.join(map(str, shapes))});"
                        " Figure 5 compares models of one data set")
    dataset = datasets[0] if len(set(datasets)) == 1 else None
    default_dir = Path(os.path.commonpath([str(run_dir_of(c).resolve()) for c in ckpts]))
    out = _out_path(args.out, default_dir / f"fig5_{dataset or 'mixed'}.png")
    plot_fig5(panels, dataset, args.n, args.seed, out=out)
    print(f"wrote {out}: Figure 5, {args.n} random samples (decoder means, z ~ N(0, I), seed {args.seed}) for each of"
          f" {len(panels)} {dataset_name(dataset)} models, N_z = {', '.join(str(p[0]) for p in panels)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The paper's figures (Kingma & Welling 2013) from aevb-train runs, sweeps and checkpoints."
                    f" ELBOs are in {UNITS}.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func, help_text: str, target: str, out: str):
        """A subcommand taking SWEEP_DIR (target "sweep") or CKPT (target "ckpt") and --out."""
        p = sub.add_parser(name, help=help_text)
        if target == "sweep":
            p.add_argument("sweep_dir", metavar="SWEEP_DIR", help="a finished multirun directory (job folders 0/, 1/, ...)")
            p.add_argument("--out", metavar="DIR", help=out)
            p.add_argument("--ylim", nargs=2, type=float, metavar=("LO", "HI"), help="y-axis range in nats per datapoint (fig2's default: from the lowest final value of any curve to the"
                                " highest value, 8%% margins; points below are drawn at the edge)")
        else:
            p.add_argument("ckpt", metavar="CKPT", help="checkpoint, or a run directory with checkpoints/last.ckpt")
            p.add_argument("--out", metavar="FILE", help=out)
            p.add_argument("--scale", type=int, default=PIXEL_SCALE,
                           help=f"screen pixels per data pixel, each way (default: {PIXEL_SCALE})")
        p.set_defaults(func=func)
        return p

    command("fig2", cmd_fig2, "Figure 2 (ELBO vs training samples, one panel per N_z) and the results table of a sweep",
            "sweep", "where to write fig2_<dataset>.png/.pdf and the table: results.csv/.md in SWEEP_DIR (the default),"
            " results_<SWEEP_DIR's name>.csv/.md anywhere else")
    command("fig3", cmd_fig3, "Figure 3 (estimated log p(x) vs training samples, one panel per training-set size)"
            " of a sweep run with experiment=fig3_mnist",
            "sweep", "where to write fig3_<dataset>.png/.pdf and the table: log_px.md in SWEEP_DIR (the default),"
            " log_px_<SWEEP_DIR's name>.md anywhere else")

    p = command("manifold", cmd_manifold, "Figure 4: the learned 2-D manifold of an N_z = 2 model",
                "ckpt", "image file (default: <run dir>/manifold.png)")
    p.add_argument("--grid", type=int, default=20, help="images per side of the grid (default: 20)")

    p = command("samples", cmd_samples, "random samples z ~ N(0, I) decoded to mean images, in a square grid",
                "ckpt", "image file (default: <run dir>/samples.png)")
    p.add_argument("--n", type=int, default=100, help="number of samples (default: 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the latent draws (default: 0)")

    p = command("reconstructions", cmd_reconstructions, "first test images (top) and their reconstructions (bottom)",
                "ckpt", "image file (default: <run dir>/reconstructions.png)")
    p.add_argument("--n", type=int, default=10, help="number of test images (default: 10)")

    p = sub.add_parser("fig5", help="Figure 5: several models' random samples side by side, titled by N_z")
    p.add_argument("ckpts", nargs="+", metavar="CKPT", help="checkpoints (or run directories), e.g. N_z = 2, 5, 10, 20")
    p.add_argument("--out", metavar="FILE", help="image file (default: fig5_<dataset>.png in the runs' common folder)")
    p.add_argument("--n", type=int, default=100, help="samples per model (default: 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the latent draws (default: 0)")
    p.set_defaults(func=cmd_fig5)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        for name in ("grid", "n", "scale"):
            if getattr(args, name, None) is not None:
                require_positive_int(f"--{name}", getattr(args, name))
        args.func(args)
    except AevbError as exc:
        fail(PROG, str(exc))


if __name__ == "__main__":
    main()