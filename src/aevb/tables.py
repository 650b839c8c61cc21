"""Tables of a sweep: results.csv / results.md (final ELBOs, one row per job) and Figure 3's log p(x) table.

In the sweep folder the tables are results.csv / results.md and log_px.md; written anywhere else
(e.g. one figures folder for every sweep) they carry the sweep folder's name, results_<sweep>.csv /
.md and log_px_<sweep>.md (``table_stem``), so two sweeps drawn into one folder keep one table each.
"""

from __future__ import annotations

import csv
from pathlib import Path

from aevb.evaluation import UNITS
from aevb.runs import Fig3Run, Run, model_label

RESULT_COLUMNS = (
    "job", "status", "dataset", "model", "backbone", "latent_dim", "samples_seen",
    "train_elbo", "train_n", "val_elbo", "val_n", "test_elbo", "test_n",
    "units", "wall_time_s", "curve_points", "error",
)


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
            if row[f"{split}_elbo"] in ("", None):  # (None: no such split, data.val_size=0)
                return ""
            n = _num(row[f"{split}_n"], ",")
            return f"{_num(row[f'{split}_elbo'], '.2f')}" + (f" ({n})" if n else "")

        lines.append("| " + " | ".join(_md_cell(c) for c in (
            row["job"], row["status"], row["dataset"], row["model"], row["backbone"], row["latent_dim"],
            _num(row["samples_seen"], ","), elbo("train"), elbo("val"), elbo("test"),
            _num(row["wall_time_s"], ".1f"), row["error"],
        )) + " |")
    return "\n".join(lines) + "\n"


def table_stem(sweep: str | Path, out_dir: str | Path, kind: str = "results") -> str:
    """``kind`` in the sweep folder itself, ``<kind>_<sweep folder name>`` anywhere else."""
    sweep, out_dir = Path(sweep).resolve(), Path(out_dir).resolve()
    return kind if out_dir == sweep else f"{kind}_{sweep.name}"


def table_source(md_path: str | Path) -> str | None:
    """The sweep named in the title line ('# ...: <sweep>') of a table written here, or None."""
    try:
        first = Path(md_path).read_text().splitlines()[0]
    except (OSError, IndexError, UnicodeDecodeError):
        return None
    return first.rpartition(": ")[2] if first.startswith("# ") and ": " in first else None


def write_results(runs: list[Run], out_dir: str | Path, title: str = "Sweep results",
                  stem: str = "results") -> tuple[Path, Path, str]:
    """Write <stem>.csv and <stem>.md into out_dir; return (csv path, md path, Markdown text)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.md"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(RESULT_COLUMNS))
        writer.writeheader()
        writer.writerows(result_rows(runs))
    text = results_markdown(runs, title)
    md_path.write_text(text)
    return csv_path, md_path, text


def write_fig3_table(runs: list[Fig3Run], out_dir: str | Path, title: str, stem: str = "log_px") -> tuple[Path, str]:
    """Write ``fig3_table`` under a '# title' line as <stem>.md into out_dir; return (path, table text)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = fig3_table(runs)
    path = out_dir / f"{stem}.md"
    path.write_text(f"# {title}\n\n{text}")
    return path, text


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
