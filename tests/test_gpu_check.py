"""make gpu-check (scripts/gpu_check.sh): its dry run on the CPU (the same steps at tiny size) writes the report, and
what keeps it from starting is said in one line with exit status 2. No GPU has run the real check in these tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from helpers import REPO


def gpu_check(*args: str, env_extra: dict, timeout: int = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "AEVB_DATA_MIRROR"}
    env.update({"PYTHON": sys.executable, **env_extra})
    return subprocess.run(["bash", "scripts/gpu_check.sh", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.e2e  # ~65 s: the whole gpu-check script, on the CPU
def test_dry_run_on_cpu_writes_json_and_markdown_report_with_rates_and_projection(mirror, tmp_path):
    out = tmp_path / "report"
    start = time.time()
    proc = gpu_check("--dry-run", str(out), env_extra={"AEVB_DATA_MIRROR": str(mirror)}, timeout=420)
    wall = time.time() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rep = json.loads((out / "gpu_check.json").read_text())
    md = (out / "gpu_check.md").read_text()
    assert rep["dry_run"] and rep["failed"] == [] and 0 < rep["wall_s"] <= wall + 1
    assert rep["gpu_tests"]["status"] == "ok" and rep["gpu_tests"]["failed"] == 0

    loops = {r["row"]: r for r in rep["loops"]}
    assert set(loops) == {"plain", "lightning", "standard", "fast_eager", "fast_compiled", "fast_graphed"}
    ran = [r for r in loops.values() if r["status"] == "ok"]
    assert {r["row"] for r in ran} >= {"plain", "lightning", "standard", "fast_eager"}
    for r in ran:
        assert r["samples_per_s"] > 0 and r["timed_samples"] > 0 and r["timed_s"] > 0 and r["rss_mb"] > 0, r
    assert loops["fast_graphed"]["status"] == "n/a" and "CPU: no CUDA graph" in loops["fast_graphed"]["note"]

    assert [p["k"] for p in rep["packs"]] == rep["sizes"]["packs"]
    for p in rep["packs"]:
        assert p["status"] == "ok" and p["samples_per_s"] > 0 and p["timed_samples"] > 0 and p["timed_s"] > 0, p
        assert p["members_timed"] == p["k"] and "CPU: no CUDA graph" in p["note"]

    f2 = rep["fig2_slice"]
    assert f2["status"] == "ok" and f2["jobs"] == 10 and f2["members_timed"] == 10
    assert f2["samples_per_s"] > 0 and f2["timed_samples"] > 0 and f2["timed_s"] > 0 and f2["startup_s"] > 0
    proj = rep["projection"]
    assert proj["samples"] == 18 * 10**8 and proj["wall_s"] > proj["training_s"] > 0 and proj["wall_s_balanced"] > 0
    slowest = min(f2["member_samples_per_s"].values())
    assert len(f2["member_samples_per_s"]) == 10 and abs(proj["training_s"] - 2 * 10**8 / slowest) < 1e-3

    assert "Dry run on the CPU" in md and "every step ran" in md
    for unit in ("samples/s", "(s)", "(MiB)", "training samples", " h** wall time"):
        assert unit in md, unit
    assert f"{f2['timed_samples']:,} samples" in md and "| 1 | ok |" in md


def test_missing_data_mirror_is_one_line_and_exit_2(tmp_path):
    proc = gpu_check("--dry-run", str(tmp_path), env_extra={"AEVB_DATA_MIRROR": str(tmp_path / "nowhere")})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"gpu_check: error: no data mirror at AEVB_DATA_MIRROR={tmp_path}/nowhere"
                                                " (it must hold mnist/)"]


def test_missing_wheel_folder_is_one_line_and_exit_2(mirror, tmp_path):
    proc = gpu_check(str(tmp_path), env_extra={"AEVB_DATA_MIRROR": str(mirror), "AEVB_WHEELS": str(tmp_path / "no")})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gpu_check: error: no wheel folder at AEVB_WHEELS={tmp_path}/no")
