"""Reading run folders: what each job of a sweep wrote (summary.json, failed.json, curve files, config).

``collect_runs`` reads every job of a multirun folder into ``Run`` records (Figure 2,
the results tables); ``collect_fig3_runs`` adds each job's training-set size and
``marginal_curve.csv`` (Figure 3). A broken job is reported in its record, never raised.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from aevb.errors import AevbError

DATASET_NAMES = {"mnist": "MNIST", "frey_face": "Frey Face"}
MODEL_LABELS = {"AEVB": "AEVB", "WakeSleep": "Wake-Sleep"}
CURVE_COLUMNS = ("samples_seen", "train_elbo", "test_elbo", "train_n", "test_n")


def dataset_name(dataset: str | None) -> str:
    return DATASET_NAMES.get(dataset or "", dataset or "unknown data set")


def model_label(model: str | None) -> str:
    return MODEL_LABELS.get(model or "", model or "unknown model")


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

MARGINAL_COLUMNS = ("samples_seen", "train_log_px", "test_log_px", "k", "train_n", "test_n")

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
            val = sel("data.val_size")
            return 60_000 - int(10_000 if val is None else val)
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
