"""End-of-sweep report: every job's final numbers, failed jobs named, written beside the jobs.

Registered as a Hydra callback (conf/hydra/default.yaml), so it runs in the
launching process after all jobs, whatever the launcher (basic, joblib, submitit).
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


# Jobs of the last multirun that did not finish, for the exit status of aevb-train.
FAILED_JOBS: list[str] = []


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from aevb.figures import collect_runs, write_results

        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            runs = collect_runs(sweep_dir)
        except Exception as exc:  # a report must never turn a finished sweep into a crash
            print(f"aevb-train: warning: no sweep summary for {sweep_dir}: {exc}", file=sys.stderr)
            return
        csv_path, md_path, text = write_results(runs, sweep_dir, title=f"Sweep {sweep_dir}")
        print(text)
        bad = [r for r in runs if r.status != "ok"]
        for r in bad:
            print(f"aevb-train: job {r.job} {r.status}: {r.error}", file=sys.stderr)
            FAILED_JOBS.append(str(r.job))
        print(f"sweep: {len(runs) - len(bad)} of {len(runs)} jobs finished; table in {md_path} and {csv_path}", flush=True)
