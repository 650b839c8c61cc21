"""End-of-sweep report: every job's final numbers, failed jobs named, written beside the jobs.

Registered as a Hydra callback (conf/hydra/default.yaml), so it runs in the
launching process after all jobs, whatever the launcher (basic, joblib, submitit).
The report lives in the sweep folder (results.csv / results.md, one row per job with
its status); when a job did not finish, the launching process exits with status 1
after the report is written, so aevb-train's exit status says not all is well.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from aevb.runs import collect_runs
from aevb.tables import write_results

PROG = "aevb-train"
EXIT_JOBS_FAILED = 1


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        failed = self.report(Path(config.hydra.sweep.dir))
        if failed:  # the other jobs' results are kept; the exit status still says not all is well
            print(f"{PROG}: error: {len(failed)} sweep job(s) failed: {', '.join(failed)}", file=sys.stderr, flush=True)
            sys.exit(EXIT_JOBS_FAILED)  # SystemExit passes through Hydra's callback guard (it catches Exception)

    @staticmethod
    def report(sweep_dir: Path) -> list[str]:
        """Write results.csv / results.md into ``sweep_dir``; return the jobs that did not finish."""
        try:
            runs = collect_runs(sweep_dir)
        except Exception as exc:  # a report must never turn a finished sweep into a crash
            print(f"{PROG}: warning: no sweep summary for {sweep_dir}: {exc}", file=sys.stderr)
            return []
        csv_path, md_path, text = write_results(runs, sweep_dir, title=f"Sweep {sweep_dir}")
        print(text)
        bad = [r for r in runs if r.status != "ok"]
        for r in bad:
            print(f"{PROG}: job {r.job} {r.status}: {r.error}", file=sys.stderr)
        print(f"sweep: {len(runs) - len(bad)} of {len(runs)} jobs finished; table in {md_path} and {csv_path}", flush=True)
        return [str(r.job) for r in bad]
