"""make bench, part 2: the fixed cost of a run beside its training (start-up, imports, data, loggers, the final
evaluation, reports), from the phases every aevb-train run records in summary.json (``timings_s``).

A newcomer's first runs are short, so there this cost is most of the wall time. Each run is a plain
``aevb-train max_samples=N`` (the default config: validation, curve points, checkpoints, the final
evaluation on 3 x 10,000 images), once with the default loggers (CSV + wandb, offline) and once with CSV only.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

PHASES = {"start_up": "interpreter, config composition and checks",
          "imports": "torch, Lightning, torchmetrics (and their imports)",
          "data_and_networks": "data loaded and checked, networks built",
          "loggers_and_trainer": "loggers, callbacks, trainer",
          "fit": "training with its validations, curve points, checkpoints (wandb starts here)",
          "final_evaluation": "final ELBO on train subset, val, test (one pass)",
          "reports_and_dashboards": "summary, best.ckpt, pictures, dashboards"}
LOGGERS = {"wandb": "CSV + wandb (offline), the default", "csv": "CSV only"}


def fixed_cost(timed, env: dict, samples: int) -> list[dict]:
    """One short run per logger choice; ``timed(cmd, env)`` -> (wall s, peak RSS MiB, stdout), as in bench.py."""
    rows = []
    for logger in LOGGERS:
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp) / "run"
            exe = Path(sys.executable).with_name("aevb-train")
            wall, _, _ = timed([str(exe), f"max_samples={samples}", f"logger={logger}", "callbacks.progress_bar=null",
                                f"hydra.run.dir={run_dir}"], env)
            summary = json.loads((run_dir / "summary.json").read_text())
        phases = summary["timings_s"]
        rows.append({"logger": logger, "samples": samples, "wall_s": round(wall, 2), "phases_s": phases,
                     "outside_phases_s": round(wall - sum(phases.values()), 2)})
    return rows


def markdown(rows: list[dict]) -> str:
    if not rows:
        return ""
    lines = [f"Fixed cost of a run: `aevb-train max_samples={rows[0]['samples']:,}` (default config; MNIST N_z = 20),"
             " wall seconds of each phase (summary.json `timings_s`):", "",
             "| phase | what | " + " | ".join(LOGGERS[r["logger"]] for r in rows) + " |",
             "|---|---|" + "---:|" * len(rows)]
    for phase, what in PHASES.items():
        lines.append(f"| {phase} | {what} | " + " | ".join(f"{r['phases_s'].get(phase, 0):.1f}" for r in rows) + " |")
    lines.append("| exit | interpreter shut-down, wandb's final sync | "
                 + " | ".join(f"{r['outside_phases_s']:.1f}" for r in rows) + " |")
    lines.append("| **wall** | the whole process | " + " | ".join(f"**{r['wall_s']:.1f}**" for r in rows) + " |")
    return "\n".join(lines)
