"""Figures 2, 3 and 5 as matplotlib Figures (no pyplot, no display, no global state).

Figures 2 and 3 share one drawing: a panel per key (N_z, or the training-set size),
a colour per model, train solid and test dashed, against training samples evaluated.
Figure 5 puts several models' sample grids side by side.

Figure 2's default y-range is ``fig2_ylim``: from the lowest *final* value of any curve to the
highest value of all, each widened by a margin, so an early point far below (wake-sleep starts near
-990 nats on MNIST at N_z = 20 and 200) does not squash the curves that matter. Points outside the
y-range (that one, or ``--ylim``) are drawn at its edge as triangles and counted in the panel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aevb.errors import AevbError
from aevb.evaluation import UNITS
from aevb.runs import Fig3Run, Run, dataset_name, model_label

Y_LABEL = "lower bound, nats per datapoint"
X_LABEL = "training samples evaluated"
MODEL_COLOURS = {"AEVB": "tab:red", "WakeSleep": "tab:blue"}
EXTRA_COLOURS = ("tab:green", "tab:purple", "tab:brown", "tab:olive", "tab:cyan")
FIG2_TITLE = ("{dataset}: lower bound ({units}) vs training samples evaluated\n"
              "train = fixed training subset, n = {train_n}; test = test split, n = {test_n}")


YLIM_MARGIN = 0.08  # of the span between the lowest final value and the highest value
CLIPPED_GIDS = ("clipped below", "clipped above")  # gid of the edge markers: Artist.get_gid()


def fig2_ylim(curves, margin: float = YLIM_MARGIN) -> tuple[float, float] | None:
    """Figure 2's default y-range from curves (sequences of y values in training order).

    lo = the lowest last finite value of any curve, hi = the highest finite value of all, each moved out
    by ``margin`` times (hi - lo) (1 nat, or 5 % of |hi|, when that span is 0). Earlier points below
    lo are left out of the range (``plot_fig2`` draws them clipped). None when no curve has a finite value.
    """
    finals, highs = [], []
    for curve in curves:
        y = np.asarray(curve, dtype=float).ravel()
        y = y[np.isfinite(y)]
        if len(y):
            finals.append(y[-1])
            highs.append(y.max())
    if not finals:
        return None
    lo, hi = float(min(finals)), float(max(highs))
    pad = margin * (hi - lo) if hi > lo else max(1.0, 0.05 * abs(hi))
    return lo - pad, hi + pad


def clipped_points(y, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks of the finite values of ``y`` below ``lo`` and above ``hi``."""
    y = np.asarray(y, dtype=float)
    finite = np.isfinite(y)
    return finite & (y < lo), finite & (y > hi)


def clipped_counts(fig) -> tuple[int, int]:
    """(points drawn at the lower edge, points drawn at the upper edge) of a Figure from plot_fig2/plot_fig3."""
    counts = dict.fromkeys(CLIPPED_GIDS, 0)
    for ax in fig.axes:
        for coll in ax.collections:
            if coll.get_gid() in counts:
                counts[coll.get_gid()] += len(coll.get_offsets())
    return counts[CLIPPED_GIDS[0]], counts[CLIPPED_GIDS[1]]


def _mark_clipped(ax, x, y, lo: float, hi: float, colour: str, filled: bool) -> tuple[int, int]:
    """Triangles at the axis edge (v at lo, ^ at hi) where ``y`` leaves [lo, hi]; returns (n below, n above)."""
    below, above = clipped_points(y, lo, hi)
    x = np.asarray(x, dtype=float)
    for mask, edge, marker, gid in ((below, lo, "v", CLIPPED_GIDS[0]), (above, hi, "^", CLIPPED_GIDS[1])):
        if mask.any():
            ax.scatter(x[mask], np.full(int(mask.sum()), edge), marker=marker, s=22, clip_on=False, zorder=3,
                       facecolors=colour if filled else "none", edgecolors=colour, linewidths=1.0, gid=gid)
    return int(below.sum()), int(above.sum())


def _model_colours(models: list[str]) -> dict[str, str]:
    colours, extra = {}, iter(EXTRA_COLOURS * 4)
    for m in models:
        colours[m] = MODEL_COLOURS.get(m) or next(extra)
    return colours


def counts_label(values) -> str:
    uniq = sorted({int(v) for v in values})
    return "/".join(f"{v:,}" for v in uniq) if uniq else "?"


def _pick_dataset(datasets: set, dataset: str | None, who: str) -> str:
    """``dataset``, else the only data set of the runs; AevbError if they span several or none."""
    if dataset is not None:
        return dataset
    datasets = sorted(d for d in datasets if d)
    if len(datasets) != 1:
        raise AevbError(f"{who} needs runs of one data set" + (f"; these span {', '.join(datasets)}: pass dataset="
                        if datasets else " (none of these runs says which data set it used)"))
    return datasets[0]


def _save_png_pdf(fig, out: str | Path | None) -> None:
    """Save ``fig`` as ``out`` with suffix .png and .pdf (any suffix of ``out`` is replaced); nothing if out is None."""
    if out is None:
        return
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".png", ".pdf"):
        fig.savefig(out.with_suffix(suffix), dpi=150)


def _plot_curve_panels(entries: list[tuple], *, train: str, test: str, panel_title, figsize, ylabel: str,
                       suptitle: str, dataset: str, counts: tuple[str, ...] = ("train_n", "test_n"),
                       panel_order=None, ylim: tuple[float, float] | None = None, auto_ylim=None,
                       out: str | Path | None = None):
    """Figures 2 and 3: one panel per key, curve column ``train`` solid and ``test`` dashed, one colour per model.

    ``entries``: (panel key, Run, curve or None) triples; a curve is a ``_CurveTable`` with the
    columns ``train``, ``test`` and ``counts``. Panels are the keys in sorted order (``panel_order``:
    a sort key), each titled ``panel_title(key)``. ``ylabel`` and ``suptitle`` are format strings
    filled with ``dataset`` (its display name), ``units`` and each of ``counts`` (its distinct values,
    e.g. "1,000/2,000"). The y-range is ``ylim``, else ``auto_ylim(curves)`` (a list of every drawn
    column, e.g. ``fig2_ylim``), else matplotlib's; points outside it are marked at its edge
    (``_mark_clipped``) and counted in the panel. With ``out`` the figure is saved as .png and .pdf
    (``_save_png_pdf``). Returns the matplotlib Figure (one Axes per panel).
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    panels = sorted({key for key, _, _ in entries}, key=panel_order)
    models = sorted({run.model or "unknown" for _, run, _ in entries}, key=lambda m: (m not in MODEL_COLOURS, m))
    colours = _model_colours(models)

    drawn = [curve for _, _, curve in entries if curve is not None and len(curve)]
    if ylim is None and auto_ylim is not None:
        ylim = auto_ylim([getattr(c, column) for c in drawn for column in (train, test)])
    fig = Figure(figsize=figsize(len(panels)), layout="constrained")
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    seen: dict[str, list] = {c: [] for c in counts}
    n_clipped = [0, 0]
    for ax, key in zip(axes, panels):
        notes, below, above = [], 0, 0
        for _, run, curve in sorted((e for e in entries if e[0] == key), key=lambda e: e[1].job_number):
            if curve is None or not len(curve):
                notes.append(f"job {run.job}: " + ("failed" if run.status == "failed" else "no curve"))
                continue
            colour = colours[run.model or "unknown"]
            for column, style in ((train, "-"), (test, "--")):
                ax.plot(curve.samples_seen, getattr(curve, column), style, color=colour, lw=1.4, marker=".", ms=3)
                if ylim is not None:
                    b, a = _mark_clipped(ax, curve.samples_seen, getattr(curve, column), *ylim, colour, style == "-")
                    below, above = below + b, above + a
            for c in counts:
                seen[c].extend(getattr(curve, c).tolist())
        notes += [f"{k} point{'s' * (k != 1)} {where} the axis clipped ({mark} at its edge)"
                  for k, where, mark in ((below, "below", "\u25bc"), (above, "above", "\u25b2")) if k]
        n_clipped = [n_clipped[0] + below, n_clipped[1] + above]
        if notes:
            ax.text(0.03, 0.97, "\n".join(notes), transform=ax.transAxes, fontsize=7, color="0.3", va="top",
                    bbox={"facecolor": "white", "edgecolor": "0.8", "alpha": 0.85, "boxstyle": "round,pad=0.3"})
        ax.set_xscale("log")
        ax.set_title(panel_title(key))
        ax.set_xlabel(X_LABEL)
        ax.grid(True, which="major", alpha=0.3)
        ax.grid(True, which="minor", alpha=0.1)
    fields = {"dataset": dataset_name(dataset), "units": UNITS, **{c: counts_label(v) for c, v in seen.items()}}
    axes[0].set_ylabel(ylabel.format(**fields))
    if ylim is not None:
        axes[0].set_ylim(*ylim)

    handles = []
    for m in models:
        handles.append(Line2D([], [], color=colours[m], ls="-", label=f"{model_label(m)} (train)"))
        handles.append(Line2D([], [], color=colours[m], ls="--", label=f"{model_label(m)} (test)"))
    for k, marker, where in zip(n_clipped, "v^", ("below", "above")):
        if k:
            handles.append(Line2D([], [], ls="none", marker=marker, color="0.3", markerfacecolor="0.3",
                                  label=f"clipped: {where} the axis (filled train, open test)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 2 * len(panels)), fontsize=8)
    fig.suptitle(suptitle.format(**fields), fontsize=10)
    _save_png_pdf(fig, out)
    return fig


def plot_fig2(runs: list[Run], out: str | Path | None = None, dataset: str | None = None,
              ylim: tuple[float, float] | None = None):
    """Figure 2 for one data set: one panel per N_z, train solid and test dashed, one colour per model.

    ``runs`` come from ``collect_runs``; ``dataset`` picks one when the runs span several.
    With ``out`` (a path; its suffix is replaced) the figure is saved as .png and .pdf.
    The y-range is ``ylim`` (lo, hi) when given, else ``fig2_ylim`` of the curves drawn; points below
    it are drawn as triangles at its lower edge and counted in their panel (``clipped_counts``).
    Returns the matplotlib Figure (one Axes per N_z panel).
    """
    dataset = _pick_dataset({r.dataset for r in runs}, dataset, "plot_fig2")
    mine = [r for r in runs if r.dataset == dataset and r.latent_dim is not None]
    if not mine:
        raise AevbError(f"no run of data set '{dataset}' with a known N_z to plot")
    return _plot_curve_panels(
        [(r.latent_dim, r, r.curve) for r in mine], train="train_elbo", test="test_elbo",
        panel_title=lambda nz: f"N_z = {nz}", figsize=lambda k: (3.3 * k + 0.6, 3.9),
        ylabel=Y_LABEL, suptitle=FIG2_TITLE, dataset=dataset, ylim=ylim, auto_ylim=fig2_ylim, out=out)


FIG3_Y_LABEL = "marginal log-likelihood log p(x),\nnats per datapoint (importance sampled, k = {k})"
FIG3_TITLE = ("{dataset}: estimated marginal likelihood ({units}) vs training samples evaluated\n"
              "train = fixed subset of the training set, n = {train_n}; test = fixed subset of the test split,"
              " n = {test_n}\nk = {k} importance samples per datapoint, encoder as proposal")


def _n_train_title(size: int | None) -> str:
    return f"N_train = {size}" if size is not None else "N_train = unknown"


def plot_fig3(runs: list[Fig3Run], out: str | Path | None = None, dataset: str | None = None,
              ylim: tuple[float, float] | None = None):
    """Figure 3: one panel per training-set size, train solid and test dashed, one colour per model (as Figure 2).

    ``runs`` come from ``collect_fig3_runs``; ``dataset`` picks one when the runs span several.
    With ``out`` (a path; its suffix is replaced) the figure is saved as .png and .pdf.
    Returns the matplotlib Figure (one Axes per N_train panel).
    """
    dataset = _pick_dataset({r.run.dataset for r in runs}, dataset, "plot_fig3")
    mine = [r for r in runs if r.run.dataset == dataset]
    if not any(r.marginal is not None for r in mine):
        raise AevbError(f"no run of data set '{dataset}' has a marginal_curve.csv to plot"
                        " (it is written by aevb.callbacks_marginal.MarginalLikelihoodCurve, e.g. experiment=fig3_mnist)")
    return _plot_curve_panels(
        [(r.train_size, r.run, r.marginal) for r in mine], train="train_log_px", test="test_log_px",
        panel_title=_n_train_title, panel_order=lambda s: (s is None, s or 0),
        figsize=lambda k: (max(3.6 * k + 0.8, 7.5), 4.6), counts=("train_n", "test_n", "k"),
        ylabel=FIG3_Y_LABEL, suptitle=FIG3_TITLE, dataset=dataset, ylim=ylim, out=out)

def plot_fig5(panels: list[tuple[int, np.ndarray]], dataset: str | None, n: int, seed: int, out: str | Path | None = None):
    """Figure 5: (N_z, sample grid) panels side by side, each titled with its N_z. Returns the Figure."""
    from matplotlib.figure import Figure

    k = len(panels)
    h, w = panels[0][1].shape[:2]
    fig = Figure(figsize=(max(3.0 * k * max(w / h, 0.5) + 0.4, 5.0), 3.9), layout="constrained")
    axes = fig.subplots(1, k, squeeze=False)[0]
    for ax, (nz, grid) in zip(axes, panels):
        ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"N_z = {nz}")
        ax.set_axis_off()
    fig.suptitle(f"{dataset_name(dataset)}: random samples, decoder means E[x|z]\n"
                 f"z ~ N(0, I), {n} per model, seed {seed}", fontsize=10)
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=150)
    return fig
