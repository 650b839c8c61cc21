"""Helpers every test module shares: where the repository is, Hydra composition, the console scripts.

Paths are relative to this checkout (a clone at any path, with ../shared/data beside it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"


def mirror_path() -> Path:
    """The real-data mirror: $AEVB_DATA_MIRROR, else ../shared/data beside the checkout."""
    env = os.environ.get("AEVB_DATA_MIRROR")
    return Path(env) if env else REPO.parent / "shared" / "data"


UNUSED_OUTPUT_DIR = Path(tempfile.gettempdir()) / "aevb-test-unused"  # never written by a composed-only config


def compose(overrides: list[str], return_hydra_config: bool = False, output_dir: str | Path = UNUSED_OUTPUT_DIR):
    """Compose conf/train.yaml (this checkout's) with overrides, resolvable outside a Hydra run.

    ``output_dir`` (paths.output_dir) is where instantiated loggers and checkpoints would write.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from aevb.wandb_mode import register_resolver

    register_resolver()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("train", overrides=[f"paths.output_dir={output_dir}", *overrides],
                             return_hydra_config=return_hydra_config)


def run_cli(*args: str, prog: str = "aevb-train", env_extra: dict | None = None,
            timeout: int = 240) -> subprocess.CompletedProcess:
    """Run a console script of this venv (wandb offline) from the repository root; capture its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update({"WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore", **(env_extra or {})})
    exe = Path(sys.executable).with_name(prog)
    return subprocess.run([str(exe), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc, *fragments, prog: str = "aevb-train", only_line: bool = True) -> None:
    """Exit status 2, one `<prog>: error: ...` line holding every fragment, no traceback; ``only_line=False``
    lets other, non-error lines stand beside it (a run that fails after training started)."""
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and (only_line or "error" in ln.lower())]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
