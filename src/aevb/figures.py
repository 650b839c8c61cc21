"""aevb-figures: the paper's figures from finished runs, sweeps and checkpoints.

Subcommands (``aevb-figures --help``):

* ``fig2 SWEEP_DIR``: Figure 2, the lower bound per datapoint (train subset and
  test split) against training samples evaluated, one panel per N_z, AEVB vs
  wake-sleep; plus ``results.csv`` / ``results.md`` with one row per job
  (failed jobs included, with their error).
* ``fig3 SWEEP_DIR``: Figure 3, the estimated marginal likelihood log p(x) per
  datapoint (importance sampled, encoder as proposal; train subset and test
  subset) against training samples evaluated, one panel per training-set size,
  AEVB vs wake-sleep, from each job's ``marginal_curve.csv``.
* ``manifold CKPT``: Figure 4, the learned 2-D manifold of an N_z = 2 model.
* ``samples CKPT``: random samples z ~ N(0, I) decoded to mean images.
* ``reconstructions CKPT``: test images (top row) and their reconstructions.
* ``fig5 CKPT [CKPT ...]``: Figure 5, several models' samples side by side.

The picture builders (``tile``, ``manifold_grid``, ``sample_grid``,
``reconstruction_grid``) return numpy arrays with values in [0, 1], so other
code can log the same images (e.g. ``wandb.Image(sample_grid(model, 100))``).
``collect_runs`` and ``plot_fig2`` are the Figure 2 pieces; ``collect_fig3_runs`` and
``plot_fig3`` the Figure 3 ones. Figures are built
with ``matplotlib.figure.Figure`` (no pyplot, no display, no global state).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aevb.checkpoints import resolve_checkpoint, run_dir_of
from aevb.errors import AevbError

PROG = "aevb-figures"
UNITS = "nats per datapoint"
Y_LABEL = "lower bound, nats per datapoint"
X_LABEL = "training samples evaluated"
DATASET_NAMES = {"mnist": "MNIST", "frey_face": "Frey Face"}
MODEL_LABELS = {"AEVB": "AEVB", "WakeSleep": "Wake-Sleep"}
MODEL_COLOURS = {"AEVB": "tab:red", "WakeSleep": "tab:blue"}
EXTRA_COLOURS = ("tab:green", "tab:purple", "tab:brown", "tab:olive", "tab:cyan")
CURVE_COLUMNS = ("samples_seen", "train_elbo", "test_elbo", "train_n", "test_n")
MANIFOLD_RANGE = (0.05, 0.95)  # open unit square: the inverse Gaussian CDF is infinite at 0 and 1

RESULT_COLUMNS = (
    "job", "status", "dataset", "model", "backbone", "latent_dim", "samples_seen",
    "train_elbo", "train_n", "val_elbo", "val_n", "test_elbo", "test_n",
    "units", "wall_time_s", "curve_points", "error",
)


def dataset_name(dataset: str | None) -> str:
    return DATASET_NAMES.get(dataset or "", dataset or "unknown data set")


def model_label(model: str | None) -> str:
    return MODEL_LABELS.get(model or "", model or "unknown model")


# ---------------------------------------------------------------------------------------------
# Reading a sweep (Figures 2 and 3)
# ---------------------------------------------------------------------------------------------
@dataclass
class _CurveTable:
    """Columns of a curve file, one entry per number of training samples evaluated (ascending)."""

    samples_seen: np.ndarray

    def __len__(self) -> int:
        return len(self.samples_seen)


@dataclass
class Curve(_CurveTable):
    """One run's curve.csv: ELBO (nats per datapoint) at log-spaced numbers of training samples."""

    train_elbo: np.ndarray
    test_elbo: np.ndarray
    train_n: np.ndarray
    test_n: np.ndarray


@dataclass
class Run:
    """What one job folder of a sweep holds. ``status``: ok | failed | incomplete."""

    job: str
    path: Path
    status: str
    dataset: str | None = None
    model: str | None = None
    latent_dim: int | None = None
    summary: dict = field(default_factory=dict)
    curve: Curve | None = None
    error: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def job_number(self) -> int:
        return int(self.job) if self.job.isdigit() else -1


def _read_curve_csv(path: str | Path, cls: type[_CurveTable], columns: tuple[str, ...], floats: tuple[str, ...]):
    """A curve file as ``cls(**columns)``; ``floats`` are float columns, the others integers.

    Rows repeated by a resumed run keep their last value. Raises AevbError if malformed.
    """
    path = Path(path)
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise AevbError(f"{path} lacks column(s) {', '.join(missing)} (header: {','.join(reader.fieldnames or [])})")
            rows: dict[int, tuple] = {}
            for i, row in enumerate(reader, start=2):
                if not any((v or "").strip() for v in row.values()):
                    continue
                try:
                    rows[int(float(row["samples_seen"]))] = tuple(
                        float(row[c]) if c in floats else int(float(row[c])) for c in columns[1:])
                except (TypeError, ValueError):
                    raise AevbError(f"{path}, line {i}: not a row of numbers: {row}") from None
    except OSError as exc:
        raise AevbError(f"cannot read {path}: {exc}") from None
    seen = sorted(rows)
    values = list(zip(*(rows[s] for s in seen))) if seen else [()] * (len(columns) - 1)
    return cls(np.array(seen, dtype=np.int64), *(
        np.array(v, dtype=float if c in floats else np.int64) for c, v in zip(columns[1:], values)))


def read_curve(path: str | Path) -> Curve:
    """Parse a curve.csv; rows repeated by a resumed run keep their last value. Raises AevbError if malformed."""
    return _read_curve_csv(path, Curve, CURVE_COLUMNS, floats=("train_elbo", "test_elbo"))


def _read_optional_curve(path: Path, reader, notes: list[str]):
    """reader(path), or None with the reason appended to ``notes`` (no file, unreadable, no rows)."""
    if not path.is_file():
        notes.append(f"no {path.name}")
        return None
    try:
        curve = reader(path)
    except AevbError as exc:
        notes.append(str(exc))
        return None
    if not len(curve):
        notes.append(f"{path.name} has no rows")
        return None
    return curve


def _read_json(path: Path) -> dict:
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AevbError(f"{path} is not readable JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict):
        raise AevbError(f"{path} does not hold a JSON object")
    return payload


def _dataset_from_target(target: str | None) -> str | None:
    if not target:
        return None
    cls = str(target).rsplit(".", 1)[-1].lower()
    if "frey" in cls:
        return "frey_face"
    if "mnist" in cls:
        return "mnist"
    return cls.removesuffix("datamodule") or None


def _from_config(run_dir: Path, read):
    """read(select) on the job's config (config_resolved.yaml, else Hydra's .hydra/config.yaml).

    ``select(key)`` gives the config value or None. The first config that loads and whose read
    returns something other than None wins; None if none does. An unreadable config is skipped.
    """
    from omegaconf import OmegaConf

    for candidate in (run_dir / "config_resolved.yaml", run_dir / ".hydra" / "config.yaml"):
        if not candidate.is_file():
            continue
        try:
            cfg = OmegaConf.load(candidate)
            result = read(lambda key: OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False))
        except Exception:  # an unreadable config only costs us what it would have said, never the listing
            continue
        if result is not None:
            return result
    return None


def config_meta(run_dir: Path) -> dict:
    """dataset / model / latent_dim from the job's config (config_resolved.yaml, else Hydra's .hydra/config.yaml)."""

    def read(sel) -> dict:
        latent = sel("model.latent_dim")
        model_target = sel("model._target_")
        return {
            "dataset": _dataset_from_target(sel("data._target_")),
            "model": str(model_target).rsplit(".", 1)[-1] if model_target else None,
            "latent_dim": int(latent) if str(latent).isdigit() else None,
        }

    return _from_config(run_dir, read) or {"dataset": None, "model": None, "latent_dim": None}


def read_run(run_dir: str | Path, job: str | None = None) -> Run:
    """Everything a job folder says about itself; never raises for a broken job (it is reported instead)."""
    run_dir = Path(run_dir)
    run = Run(job=job if job is not None else run_dir.name, path=run_dir, status="incomplete")
    summary_path, failed_path = run_dir / "summary.json", run_dir / "failed.json"
    use_failed = failed_path.is_file() and (
        not summary_path.is_file() or failed_path.stat().st_mtime > summary_path.stat().st_mtime
    )
    if use_failed:
        run.status = "failed"
        try:
            run.error = str(_read_json(failed_path).get("error", "")).strip() or "failed (no error message recorded)"
        except AevbError as exc:
            run.error = str(exc)
    elif summary_path.is_file():
        try:
            run.summary = _read_json(summary_path)
            run.status = "ok"
        except AevbError as exc:
            run.error = str(exc)
    else:
        run.error = "no summary.json or failed.json (still running, or killed)"

    meta = config_meta(run_dir)
    run.dataset = run.summary.get("dataset") or meta["dataset"]
    run.model = run.summary.get("model") or meta["model"]
    try:
        run.latent_dim = int(run.summary.get("latent_dim", meta["latent_dim"]))
    except (TypeError, ValueError):
        run.latent_dim = meta["latent_dim"]

    run.curve = _read_optional_curve(run_dir / "curve.csv", read_curve, run.notes)
    return run


def collect_runs(sweep_dir: str | Path) -> list[Run]:
    """Every numbered job folder (0/, 1/, ...) of a multirun directory, in job order."""
    sweep = Path(sweep_dir)
    if not sweep.is_dir():
        raise AevbError(f"sweep directory {sweep} not found")
    jobs = sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    if not jobs:
        if any((sweep / name).is_file() for name in ("summary.json", "curve.csv", "failed.json")):
            raise AevbError(f"{sweep} is a single run directory, not a multirun (sweep) directory;"
                            " expected numbered job folders 0/, 1/, ...")
        raise AevbError(f"no jobs in {sweep}: expected numbered job folders 0/, 1/, ... as written by aevb-train --multirun")
    return [read_run(p, p.name) for p in jobs]


# ---------------------------------------------------------------------------------------------
# Figure 2: the results table
# ---------------------------------------------------------------------------------------------
def _num(value, fmt: str) -> str:
    if value is None or value == "":
        return ""
    try:
        return format(float(value), fmt) if "f" in fmt else format(int(value), fmt)
    except (TypeError, ValueError):
        return str(value)


def result_rows(runs: list[Run]) -> list[dict]:
    """One dict per job with RESULT_COLUMNS as keys (numbers as numbers, missing as '')."""
    rows = []
    for r in runs:
        s = r.summary
        rows.append({
            "job": r.job,
            "status": r.status,
            "dataset": r.dataset or "",
            "model": r.model or "",
            "backbone": s.get("backbone", ""),
            "latent_dim": r.latent_dim if r.latent_dim is not None else "",
            "samples_seen": s.get("samples_seen", ""),
            "train_elbo": s.get("train/elbo", ""),
            "train_n": s.get("train/n_datapoints", ""),
            "val_elbo": s.get("val/elbo", ""),
            "val_n": s.get("val/n_datapoints", ""),
            "test_elbo": s.get("test/elbo", ""),
            "test_n": s.get("test/n_datapoints", ""),
            "units": s.get("units", UNITS),
            "wall_time_s": s.get("wall_time_s", ""),
            "curve_points": len(r.curve) if r.curve is not None else 0,
            "error": r.error,
        })
    return rows


def _md_cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def results_markdown(runs: list[Run], title: str = "Sweep results") -> str:
    """The results table in Markdown, with a header line saying the units, splits and counts."""
    n_failed = sum(r.status == "failed" for r in runs)
    n_incomplete = sum(r.status == "incomplete" for r in runs)
    status = f"{len(runs)} jobs: {len(runs) - n_failed - n_incomplete} ok, {n_failed} failed"
    if n_incomplete:
        status += f", {n_incomplete} incomplete"
    lines = [
        f"# {title}",
        "",
        f"Final ELBO in {UNITS} (higher is better); (n) = datapoints evaluated. train = the final model on a"
        " fixed subset of the training split; val and test = the whole validation and test splits. " + status + ".",
        "",
        "| job | status | dataset | model | backbone | N_z | training samples | train ELBO (n) | val ELBO (n) | test ELBO (n) |"
        " wall time (s) | error |",
        "|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in result_rows(runs):
        def elbo(split: str) -> str:
            if row[f"{split}_elbo"] == "":
                return ""
            n = _num(row[f"{split}_n"], ",")
            return f"{_num(row[f'{split}_elbo'], '.2f')}" + (f" ({n})" if n else "")

        lines.append("| " + " | ".join(_md_cell(c) for c in (
            row["job"], row["status"], row["dataset"], row["model"], row["backbone"], row["latent_dim"],
            _num(row["samples_seen"], ","), elbo("train"), elbo("val"), elbo("test"),
            _num(row["wall_time_s"], ".1f"), row["error"],
        )) + " |")
    return "\n".join(lines) + "\n"


def write_results(runs: list[Run], out_dir: str | Path, title: str = "Sweep results") -> tuple[Path, Path, str]:
    """Write results.csv and results.md into out_dir; return (csv path, md path, Markdown text)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / "results.csv", out_dir / "results.md"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(RESULT_COLUMNS))
        writer.writeheader()
        writer.writerows(result_rows(runs))
    text = results_markdown(runs, title)
    md_path.write_text(text)
    return csv_path, md_path, text


# ---------------------------------------------------------------------------------------------
# Figures 2 and 3: the plot
# ---------------------------------------------------------------------------------------------
FIG2_TITLE = ("{dataset}: lower bound ({units}) vs training samples evaluated\n"
              "train = fixed training subset, n = {train_n}; test = test split, n = {test_n}")


def _model_colours(models: list[str]) -> dict[str, str]:
    colours, extra = {}, iter(EXTRA_COLOURS * 4)
    for m in models:
        colours[m] = MODEL_COLOURS.get(m) or next(extra)
    return colours


def _counts(values) -> str:
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
                       panel_order=None, ylim: tuple[float, float] | None = None, out: str | Path | None = None):
    """Figures 2 and 3: one panel per key, curve column ``train`` solid and ``test`` dashed, one colour per model.

    ``entries``: (panel key, Run, curve or None) triples; a curve is a ``_CurveTable`` with the
    columns ``train``, ``test`` and ``counts``. Panels are the keys in sorted order (``panel_order``:
    a sort key), each titled ``panel_title(key)``. ``ylabel`` and ``suptitle`` are format strings
    filled with ``dataset`` (its display name), ``units`` and each of ``counts`` (its distinct values,
    e.g. "1,000/2,000"). With ``out`` the figure is saved as .png and .pdf (``_save_png_pdf``).
    Returns the matplotlib Figure (one Axes per panel).
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    panels = sorted({key for key, _, _ in entries}, key=panel_order)
    models = sorted({run.model or "unknown" for _, run, _ in entries}, key=lambda m: (m not in MODEL_COLOURS, m))
    colours = _model_colours(models)

    fig = Figure(figsize=figsize(len(panels)), layout="constrained")
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    seen: dict[str, list] = {c: [] for c in counts}
    for ax, key in zip(axes, panels):
        absent = []
        for _, run, curve in sorted((e for e in entries if e[0] == key), key=lambda e: e[1].job_number):
            if curve is None or not len(curve):
                absent.append(f"job {run.job}: " + ("failed" if run.status == "failed" else "no curve"))
                continue
            colour = colours[run.model or "unknown"]
            for column, style in ((train, "-"), (test, "--")):
                ax.plot(curve.samples_seen, getattr(curve, column), style, color=colour, lw=1.4, marker=".", ms=3)
            for c in counts:
                seen[c].extend(getattr(curve, c).tolist())
        if absent:
            ax.text(0.03, 0.97, "\n".join(absent), transform=ax.transAxes, fontsize=7, color="0.3", va="top",
                    bbox={"facecolor": "white", "edgecolor": "0.8", "alpha": 0.85, "boxstyle": "round,pad=0.3"})
        ax.set_xscale("log")
        ax.set_title(panel_title(key))
        ax.set_xlabel(X_LABEL)
        ax.grid(True, which="major", alpha=0.3)
        ax.grid(True, which="minor", alpha=0.1)
    fields = {"dataset": dataset_name(dataset), "units": UNITS, **{c: _counts(v) for c, v in seen.items()}}
    axes[0].set_ylabel(ylabel.format(**fields))
    if ylim is not None:
        axes[0].set_ylim(*ylim)

    handles = []
    for m in models:
        handles.append(Line2D([], [], color=colours[m], ls="-", label=f"{model_label(m)} (train)"))
        handles.append(Line2D([], [], color=colours[m], ls="--", label=f"{model_label(m)} (test)"))
    axes[0].legend(handles=handles, loc="lower right", fontsize=8, framealpha=0.85)
    fig.suptitle(suptitle.format(**fields), fontsize=10)
    _save_png_pdf(fig, out)
    return fig


def plot_fig2(runs: list[Run], out: str | Path | None = None, dataset: str | None = None,
              ylim: tuple[float, float] | None = None):
    """Figure 2 for one data set: one panel per N_z, train solid and test dashed, one colour per model.

    ``runs`` come from ``collect_runs``; ``dataset`` picks one when the runs span several.
    With ``out`` (a path; its suffix is replaced) the figure is saved as .png and .pdf.
    Returns the matplotlib Figure (one Axes per N_z panel).
    """
    dataset = _pick_dataset({r.dataset for r in runs}, dataset, "plot_fig2")
    mine = [r for r in runs if r.dataset == dataset and r.latent_dim is not None]
    if not mine:
        raise AevbError(f"no run of data set '{dataset}' with a known N_z to plot")
    return _plot_curve_panels(
        [(r.latent_dim, r, r.curve) for r in mine], train="train_elbo", test="test_elbo",
        panel_title=lambda nz: f"N_z = {nz}", figsize=lambda k: (3.3 * k + 0.6, 3.9),
        ylabel=Y_LABEL, suptitle=FIG2_TITLE, dataset=dataset, ylim=ylim, out=out)


# ---------------------------------------------------------------------------------------------
# Figure 3: estimated marginal likelihood against training samples, one panel per N_train
# ---------------------------------------------------------------------------------------------
MARGINAL_COLUMNS = ("samples_seen", "train_log_px", "test_log_px", "k", "train_n", "test_n")
FIG3_Y_LABEL = "marginal log-likelihood log p(x),\nnats per datapoint (importance sampled, k = {k})"
FIG3_TITLE = ("{dataset}: estimated marginal likelihood ({units}) vs training samples evaluated\n"
              "train = fixed subset of the training set, n = {train_n}; test = fixed subset of the test split,"
              " n = {test_n}\nk = {k} importance samples per datapoint, encoder as proposal")


@dataclass
class MarginalCurve(_CurveTable):
    """One run's marginal_curve.csv: estimated log p(x) (nats per datapoint) at log-spaced training samples."""

    train_log_px: np.ndarray
    test_log_px: np.ndarray
    k: np.ndarray
    train_n: np.ndarray
    test_n: np.ndarray


@dataclass
class Fig3Run:
    """A sweep job (``run``, as ``collect_runs`` reads it) with what Figure 3 needs besides."""

    run: Run
    train_size: int | None = None  # training images the model saw; None where the config does not say
    marginal: MarginalCurve | None = None
    notes: list[str] = field(default_factory=list)


def read_marginal_curve(path: str | Path) -> MarginalCurve:
    """Parse a marginal_curve.csv; rows repeated by a resumed run keep their last value. Raises AevbError if malformed."""
    return _read_curve_csv(path, MarginalCurve, MARGINAL_COLUMNS, floats=("train_log_px", "test_log_px"))


def config_train_size(run_dir: Path) -> int | None:
    """Training images of the job: data.train_size, else (MNIST) all 60,000 - data.val_size; None if unknown."""

    def read(sel) -> int | None:
        size = sel("data.train_size")
        if size is not None:
            return int(size)
        if _dataset_from_target(sel("data._target_")) == "mnist":
            return 60_000 - int(sel("data.val_size") or 10_000)
        return None

    return _from_config(run_dir, read)


def collect_fig3_runs(sweep_dir: str | Path) -> list[Fig3Run]:
    """Every job of a Figure 3 sweep with its training-set size and marginal_curve.csv, in job order."""
    out = []
    for run in collect_runs(sweep_dir):
        r = Fig3Run(run, train_size=config_train_size(run.path))
        r.marginal = _read_optional_curve(run.path / "marginal_curve.csv", read_marginal_curve, r.notes)
        out.append(r)
    return out


def _n_train_title(size: int | None) -> str:
    return f"N_train = {size}" if size is not None else "N_train = unknown"


def fig3_table(runs: list[Fig3Run]) -> str:
    """The last point of each job's curve, in Markdown: estimated log p(x), nats per datapoint, with n and k."""
    lines = [
        f"Estimated marginal log-likelihood log p(x) at the last point of each curve, {UNITS} (higher is better);"
        " importance sampled with the encoder as proposal, k samples per datapoint; (n) = datapoints evaluated:"
        " train = a fixed subset of the job's training set, test = a fixed subset of the test split.",
        "",
        "| job | status | model | N_train | training samples | train log p(x) (n) | test log p(x) (n) | k | note |",
        "|---:|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        m = r.marginal
        note = "; ".join(r.notes + ([r.run.error] if r.run.error else []))
        cells = [r.run.job, r.run.status, model_label(r.run.model) if r.run.model else "", _num(r.train_size, ",")]
        if m is None:
            cells += ["", "", "", ""]
        else:
            cells += [f"{int(m.samples_seen[-1]):,}",
                      f"{m.train_log_px[-1]:.2f} ({int(m.train_n[-1]):,})",
                      f"{m.test_log_px[-1]:.2f} ({int(m.test_n[-1]):,})",
                      f"{int(m.k[-1]):,}"]
        lines.append("| " + " | ".join(_md_cell(c) for c in [*cells, note]) + " |")
    return "\n".join(lines) + "\n"


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


# ---------------------------------------------------------------------------------------------
# Figures 4 and 5: pictures from a model
# ---------------------------------------------------------------------------------------------
def _to_numpy(images) -> np.ndarray:
    if hasattr(images, "detach"):
        images = images.detach().float().cpu().numpy()
    return np.asarray(images, dtype=np.float32)


def tile(images, rows: int, cols: int, pad: int = 0, pad_value: float = 1.0) -> np.ndarray:
    """(N, C, H, W) images in [0, 1] -> one (rows*H + (rows-1)*pad, cols*W + (cols-1)*pad) array, row-major.

    With pad = 0 (the default) the result is exactly (rows*H, cols*W); C = 3 adds a trailing
    colour axis. Slots beyond N are filled with pad_value. Values are clipped to [0, 1].
    """
    x = _to_numpy(images)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"tile expects (N, C, H, W) images with C in (1, 3), got shape {x.shape}")
    if rows < 1 or cols < 1 or pad < 0:
        raise ValueError(f"tile needs rows, cols >= 1 and pad >= 0, got {rows}, {cols}, {pad}")
    n, c, h, w = x.shape
    if n > rows * cols:
        raise ValueError(f"{n} images do not fit a {rows} x {cols} grid")
    x = np.clip(np.nan_to_num(x, nan=0.0), 0.0, 1.0)
    out = np.full((rows * h + (rows - 1) * pad, cols * w + (cols - 1) * pad, c), pad_value, dtype=np.float32)
    for k in range(n):
        i, j = divmod(k, cols)
        top, left = i * (h + pad), j * (w + pad)
        out[top:top + h, left:left + w] = x[k].transpose(1, 2, 0)
    return out[..., 0] if c == 1 else out


def square_shape(n: int) -> tuple[int, int]:
    """(rows, cols) of the most square grid holding n images, cols >= rows."""
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


@contextlib.contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _device(model):
    import torch

    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _latent_dim(model) -> int:
    return int(getattr(model, "latent_dim", None) or model.encoder.latent_dim)


def _check_count(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise AevbError(f"{name} must be a positive integer, got {value}")


def manifold_latents(n: int, lo: float = MANIFOLD_RANGE[0], hi: float = MANIFOLD_RANGE[1]):
    """(n*n, 2) latents: an n x n grid on [lo, hi]^2 through the inverse Gaussian CDF; z_1 varies along rows."""
    import torch

    if not 0.0 < lo <= hi < 1.0:
        raise AevbError(f"the manifold grid must lie inside the open unit square, got [{lo}, {hi}]")
    u = torch.linspace(lo, hi, n) if n > 1 else torch.tensor([0.5])
    z = torch.distributions.Normal(0.0, 1.0).icdf(u)
    z1, z2 = torch.meshgrid(z, z, indexing="ij")
    return torch.stack([z1.reshape(-1), z2.reshape(-1)], dim=1)


def manifold_grid(model, n: int = 20, lo: float = MANIFOLD_RANGE[0], hi: float = MANIFOLD_RANGE[1]) -> np.ndarray:
    """Figure 4: decoder means E[x|z] over an n x n latent grid, tiled to (n*H, n*W). Needs N_z = 2."""
    _check_count("the manifold grid size", n)
    nz = _latent_dim(model)
    if nz != 2:
        raise AevbError(f"the manifold (Figure 4) needs a model with N_z = 2, this one has N_z = {nz}")
    shape = tuple(getattr(model.encoder, "latent_shape", (nz,)))
    if shape != (2,):
        raise AevbError(f"the manifold (Figure 4) needs a flat 2-D latent, this model's latent has shape {shape}")
    z = manifold_latents(n, lo, hi).to(_device(model))
    with _eval_mode(model):
        images = model.sample(len(z), z=z)
    return tile(images, n, n)


def sample_images(model, n: int = 100, seed: int = 0):
    """n mean images E[x|z] for z ~ N(0, I) drawn from a generator seeded with ``seed`` (global RNG untouched)."""
    import torch

    _check_count("the number of samples", n)
    gen = torch.Generator().manual_seed(int(seed))
    z = torch.randn((n, *model.encoder.latent_shape), generator=gen).to(_device(model))
    with _eval_mode(model):
        return model.sample(n, z=z)


def sample_grid(model, n: int = 100, seed: int = 0) -> np.ndarray:
    """Figure 5 panel: n random samples (decoder means) tiled in the most square grid (square_shape(n))."""
    _check_count("the number of samples", n)
    rows, cols = square_shape(n)
    return tile(sample_images(model, n, seed), rows, cols)


def reconstruction_grid(model, x, n: int = 10) -> np.ndarray:
    """Top row: the first n images of x; bottom row: decoder mean at the encoder mean. Shape (2*H, n*W)."""
    import torch

    _check_count("the number of reconstructions", n)
    x = torch.as_tensor(x)[:n].to(_device(model))
    with _eval_mode(model), torch.no_grad():
        mean, _logvar = model.encoder(x)
        recon = model.likelihood.mean(model.decoder(mean))
    return tile(torch.cat([x.float(), recon.float()]), 2, len(x))


def save_image(array: np.ndarray, out: str | Path) -> Path:
    """Save a tiled [0, 1] array pixel for pixel (grey scale for 2-D arrays)."""
    import matplotlib.image

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    matplotlib.image.imsave(out, array, cmap="gray", vmin=0.0, vmax=1.0)
    return out


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


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def _out_path(out: str | None, default: Path) -> Path:
    if out is None:
        return default
    p = Path(out)
    return p / default.name if p.is_dir() else p


def _load(ckpt: Path, cache: dict | None = None):
    """load_model, sharing one data module between checkpoints whose data config is the same."""
    import torch

    from aevb.checkpoints import load_model

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
    return (f"{dataset_name(getattr(dm, 'name', None))}, N_z = {_latent_dim(model)},"
            f" {type(model).__name__} after {int(getattr(model, 'samples_seen', 0)):,} training samples")


def _px(array: np.ndarray) -> str:
    return f"{array.shape[0]}x{array.shape[1]} px"


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
    csv_path, md_path, text = write_results(runs, out_dir, title=f"Sweep results: {sweep}")
    print(text)
    datasets = sorted({r.dataset for r in runs if r.dataset})
    ylim = tuple(args.ylim) if args.ylim else None

    def draw(ds: str, stem: Path) -> None:
        plot_fig2(runs, out=stem, dataset=ds, ylim=ylim)

    written = [(csv_path, None), (md_path, None)] + _draw_per_dataset(2, datasets, out_dir, draw)
    _warn_unfinished(runs, [r.job for r in runs if r.status == "ok" and r.curve is None],
                     "curve.csv", "in the table, not in the plot")
    if not datasets:
        print(f"{PROG}: warning: no job says which data set it used, so there is no Figure 2 to draw", file=sys.stderr)
    _print_written(written)


def cmd_fig3(args) -> None:
    sweep = Path(args.sweep_dir)
    runs = collect_fig3_runs(sweep)
    out_dir = Path(args.out) if args.out else sweep
    print(fig3_table(runs))
    ylim = tuple(args.ylim) if args.ylim else None

    def draw(ds: str, stem: Path) -> str:
        fig = plot_fig3(runs, out=stem, dataset=ds, ylim=ylim)
        mine = [r for r in runs if r.run.dataset == ds and r.marginal is not None]
        sizes = ", ".join(ax.get_title() for ax in fig.axes)
        return (f"Figure 3, {dataset_name(ds)}: estimated log p(x) in {UNITS} vs training samples evaluated,"
                f" {len(mine)} curves, panels {sizes}; train n = {_counts(n for r in mine for n in r.marginal.train_n)},"
                f" test n = {_counts(n for r in mine for n in r.marginal.test_n)} datapoints,"
                f" k = {_counts(k for r in mine for k in r.marginal.k)} importance samples")

    written = _draw_per_dataset(3, sorted({r.run.dataset for r in runs if r.run.dataset}), out_dir, draw)
    _warn_unfinished([r.run for r in runs], [r.run.job for r in runs if r.marginal is None],
                     "marginal_curve.csv", "not in the plot")
    if not written:
        raise AevbError(f"no Figure 3 drawn from {sweep}: no job has a marginal_curve.csv with a known data set"
                        " (run the sweep with experiment=fig3_mnist)")
    _print_written(written)


def cmd_manifold(args) -> None:
    ckpt = resolve_checkpoint(args.ckpt)
    model, dm, _ = _load(ckpt)
    grid = manifold_grid(model, args.grid)
    out = save_image(grid, _out_path(args.out, run_dir_of(ckpt) / "manifold.png"))
    lo, hi = MANIFOLD_RANGE
    print(f"wrote {out} ({_px(grid)}): Figure 4, learned manifold of {_describe(model, dm)}; {args.grid}x{args.grid}"
          f" decoder means E[x|z] at z = inverse Gaussian CDF of a grid on [{lo}, {hi}]^2 (rows: z_1, columns: z_2)")


def cmd_samples(args) -> None:
    ckpt = resolve_checkpoint(args.ckpt)
    model, dm, _ = _load(ckpt)
    grid = sample_grid(model, args.n, args.seed)
    out = save_image(grid, _out_path(args.out, run_dir_of(ckpt) / "samples.png"))
    print(f"wrote {out} ({_px(grid)}): {args.n} random samples of {_describe(model, dm)};"
          f" decoder means E[x|z], z ~ N(0, I), seed {args.seed}")


def cmd_reconstructions(args) -> None:
    ckpt = resolve_checkpoint(args.ckpt)
    model, dm, _ = _load(ckpt)
    test = dm.splits["test"] if getattr(dm, "splits", None) else None
    if test is None:
        dm.setup()
        test = dm.splits["test"]
    grid = reconstruction_grid(model, test, args.n)
    shown = min(args.n, len(test))
    out = save_image(grid, _out_path(args.out, run_dir_of(ckpt) / "reconstructions.png"))
    print(f"wrote {out} ({_px(grid)}): {_describe(model, dm)}; top: the first {shown} images of the test split"
          f" (n = {len(test):,} datapoints), bottom: their reconstructions (decoder mean at the encoder mean)")


def cmd_fig5(args) -> None:
    ckpts = [resolve_checkpoint(c) for c in args.ckpts]
    cache: dict = {}
    panels, datasets = [], []
    for ckpt in ckpts:
        model, dm, _ = _load(ckpt, cache)
        panels.append((_latent_dim(model), sample_grid(model, args.n, args.seed)))
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
            p.add_argument("--ylim", nargs=2, type=float, metavar=("LO", "HI"), help="y-axis range in nats per datapoint")
        else:
            p.add_argument("ckpt", metavar="CKPT", help="checkpoint, or a run directory with checkpoints/last.ckpt")
            p.add_argument("--out", metavar="FILE", help=out)
        p.set_defaults(func=func)
        return p

    command("fig2", cmd_fig2, "Figure 2 (ELBO vs training samples, one panel per N_z) and results.csv/.md of a sweep",
            "sweep", "where to write fig2_<dataset>.png/.pdf and results.csv/.md (default: SWEEP_DIR)")
    command("fig3", cmd_fig3, "Figure 3 (estimated log p(x) vs training samples, one panel per training-set size)"
            " of a sweep run with experiment=fig3_mnist",
            "sweep", "where to write fig3_<dataset>.png/.pdf (default: SWEEP_DIR)")

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
    from aevb.cli import fail

    args = build_parser().parse_args(argv)
    try:
        for name in ("grid", "n"):
            if getattr(args, name, None) is not None:
                _check_count(f"--{name}", getattr(args, name))
        args.func(args)
    except AevbError as exc:
        fail(PROG, str(exc))


if __name__ == "__main__":
    main()
