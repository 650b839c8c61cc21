"""make gpu-check, after scripts/gpu_check.sh has installed aevb: on one GPU, within a fixed wall-clock budget, the GPU
tests, the training loops' rates (make bench's method), packs of K jobs and a timed slice of the paper-scale Figure 2
MNIST sweep; writes gpu_check.json and gpu_check.md to --out, with the projected wall time of the full Figure 2.

``--dry-run``: the same steps at tiny size on the CPU, two at a time (what tests/test_gpu_check.py runs; its numbers
measure nothing). How each number is measured:

* single loops: as ``make bench`` times them (scripts/bench.py: its commands and ``StepTimer``), at batch 100: training
  samples per second of wall clock after the first ``warmup`` samples, the device synchronised at both ends;
* packs and the Figure 2 slice: a sweep under ``hydra/launcher=packed`` with a budget far beyond the window; every
  member appends (time, samples_seen, peak memory) to ``gpu_check_progress.jsonl`` in its run folder
  (:class:`ProgressLog`) once past its warm-up. Once every member has, the window runs for a fixed number of seconds,
  then the sweep is killed. Rate = the training samples of all members inside their common window / its length
  (validations and curve points inside it included).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import bench  # noqa: E402  (make bench: its loop commands, StepTimer, machine info, PAPER_FIG2_SAMPLES)
import gpu_check_report  # noqa: E402  (the Markdown report)

PROG = "gpu_check"
PROGRESS = "gpu_check_progress.jsonl"
FIG2_JOBS = 10  # experiment=fig2_mnist: AEVB and wake-sleep, N_z = 3, 5, 10, 20, 200
LOOPS = [  # (row, make bench variant, extra aevb-train overrides, label)
    ("plain", "plain", [], "plain PyTorch loop (resident data, eager)"),
    ("lightning", "lightning", [], "naive Lightning loop (DataLoader, log every step)"),
    ("standard", "standard", [], "aevb standard loop (fast.enabled=false)"),
    ("fast_eager", "fast", ["fast.compile=false", "fast.cuda_graph=false"], "aevb fast path, eager"),
    ("fast_compiled", "fast", ["fast.compile=true", "fast.cuda_graph=false"], "aevb fast path, compiled"),
    ("fast_graphed", "fast", ["fast.compile=true", "fast.cuda_graph=true"], "aevb fast path, compiled + CUDA graph"),
]
SIZES = {  # loop_samples: per single-loop run; windows and budgets in seconds (budget: from the script's start)
    "gpu": {"loop_samples": {"plain": 300_000, "lightning": 60_000, "standard": 60_000, "fast_eager": 300_000,
                             "fast_compiled": 1_000_000, "fast_graphed": 2_000_000},
            "warmup": 20_000, "sweep_warmup": 20_000, "packs": [1, 5, 10, 16], "pack_window": 8, "fig2_window": 30,
            "budget": 465, "tests_cap": 90, "row_cap": 90, "packs_reserve": 130, "fig2_reserve": 100, "grace": 20,
            "every": 1.0, "sweep_extra": []},
    "dry": {"loop_samples": {row: 15_000 for row, *_ in LOOPS}, "warmup": 5_000, "sweep_warmup": 300,
            "packs": [1, 2], "pack_window": 2, "fig2_window": 3, "budget": 600, "tests_cap": 120, "row_cap": 120,
            "packs_reserve": 0, "fig2_reserve": 0, "grace": 10, "every": 0.3, "sweep_extra": ["fast.steps_per_call=10"]},
}
FAILED = ("failed", "timed out", "not run")  # a row's status that fails the check ("n/a": not for this machine)


try:
    import lightning as _L

    class ProgressLog(_L.Callback):
        """In each run (alone or a pack's member): once ``warmup_samples`` training samples are done, appends
        {t (epoch s), samples, pid, device_mb, rss_mb} as a JSON line to <run dir>/gpu_check_progress.jsonl, at most
        every ``every_s`` and at the end. No device sync of its own (a pack's member may not sync while another
        captures a CUDA graph); the fast path reads the device at the end of each run of steps anyway."""

        def __init__(self, warmup_samples: int = 0, every_s: float = 1.0):
            self.warmup, self.every, self.last = warmup_samples, every_s, None

        def _write(self, trainer, pl_module) -> None:
            import resource

            import torch

            cuda = pl_module.device.type == "cuda"
            rec = {"t": time.time(), "samples": int(pl_module.samples_seen), "pid": os.getpid(),
                   "device_mb": torch.cuda.max_memory_allocated(pl_module.device) / 2**20 if cuda else None,
                   "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
            with open(Path(trainer.default_root_dir) / PROGRESS, "a") as f:
                f.write(json.dumps(rec) + "\n")
            self.last = rec["t"]

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if pl_module.samples_seen >= self.warmup and (self.last is None or time.time() - self.last >= self.every):
                self._write(trainer, pl_module)

        def on_train_end(self, trainer, pl_module):
            if self.last is not None:
                self._write(trainer, pl_module)
except ImportError:  # pragma: no cover
    pass


# -- processes ----------------------------------------------------------------------------------------------------
def _signal(pid: int, sig) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run(cmd: list[str], ctx, log: Path, until: float, stop=None) -> dict:
    """cmd in its own process group, output to ``log``, until it exits, ``stop()`` (polled) says so (SIGKILL to the
    group at once: what it measured is in its progress files) or ``until`` (epoch s) nears (SIGTERM a grace before
    it, SIGKILL at it). rss_mb: peak RSS of it and the descendants it waited for."""
    start, why, stopped_at = time.time(), None, None
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=ctx.env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            now = time.time()
            if stopped_at is None:
                grace = min(ctx.sizes["grace"], (until - start) / 4)
                why = "stopped" if stop is not None and stop() else "timed out" if now >= until - grace else None
                if why:
                    stopped_at = now
                    _signal(proc.pid, signal.SIGKILL if why == "stopped" else signal.SIGTERM)
            elif now >= until:
                _signal(proc.pid, signal.SIGKILL)
            time.sleep(0.25)
    _signal(proc.pid, signal.SIGKILL)  # anything of it left behind
    return {"rc": os.waitstatus_to_exitcode(status), "wall_s": time.time() - start, "why": why,
            "rss_mb": usage.ru_maxrss / 1024, "log": str(log)}


def _tail(path: str, n: int = 3) -> str:
    lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    return " / ".join(ln.strip()[:200] for ln in lines[-n:])


# -- the steps ----------------------------------------------------------------------------------------------------
def gpu_tests(ctx, until: float) -> dict:
    xml = ctx.logs / "gpu_tests.xml"
    r = run([sys.executable, "-m", "pytest", "-m", "gpu", "-rs", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}"],
            ctx, ctx.logs / "gpu_tests.log", until)
    counts = {"passed": 0, "skipped": 0, "failed": 0}
    if xml.is_file():
        root = ET.parse(xml).getroot()
        for suite in ([root] if root.tag == "testsuite" else root.iter("testsuite")):
            n, skip = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
            bad = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            counts["passed"] += n - bad - skip
            counts["skipped"] += skip
            counts["failed"] += bad
    ok = r["rc"] == 0 or (r["rc"] == 5 and ctx.dry)  # 5: no test selected (none marked gpu)
    status = "timed out" if r["why"] else "ok" if ok else "failed"
    note = "no test is marked gpu" if r["rc"] == 5 else "" if ok else _tail(r["log"])
    return {"status": status, **counts, "wall_s": r["wall_s"], "rc": r["rc"], "note": note, "log": r["log"]}


def loops(ctx, until: float) -> list[dict]:
    rows = []
    for row, variant, extra, label in LOOPS:
        samples = ctx.sizes["loop_samples"][row]
        res = {"row": row, "label": label, "samples": samples, "batch_size": 100, "warmup_samples": ctx.sizes["warmup"]}
        rows.append(res)
        if row == "fast_graphed" and ctx.device == "cpu":
            res.update(status="n/a", note="CPU: no CUDA graph (fast.cuda_graph acts on CUDA only; this row would"
                                          " repeat fast compiled)")
            continue
        if row == "fast_compiled" and ctx.dry and not ctx.with_compile:
            res.update(status="n/a", note="dry run: not run (torch.compile's C++ build takes 30-150 s on a CPU;"
                                          " --with-compile runs it)")
            continue
        share = min(ctx.sizes["row_cap"], until - time.time())
        if share < 10:
            res.update(status="not run", note="the budget ran out before it")
            continue
        run_dir = ctx.work / f"loop_{row}"
        cmd = bench.command(variant, 100, samples, ctx.device, run_dir, max(1, ctx.sizes["warmup"] // 100)) + extra
        r = run(cmd, ctx, ctx.logs / f"loop_{row}.log", time.time() + share)
        try:
            timer = bench.result_of(variant, Path(r["log"]).read_text(errors="replace"), run_dir)
        except (OSError, StopIteration, ValueError):
            timer = None
        if r["rc"] != 0 or timer is None:
            res.update(status="timed out" if r["why"] else "failed", wall_s=r["wall_s"], note=_tail(r["log"]))
            continue
        res.update(status="ok", samples_per_s=timer["samples_per_s"], timed_samples=timer["timed_steps"] * 100,
                   timed_s=timer["seconds"], device_peak_mb=timer["device_peak_mb"], rss_mb=r["rss_mb"],
                   wall_s=r["wall_s"], note="" if ctx.device == "cuda" or "compile=true" not in " ".join(extra)
                   else "CPU: compiled by torch.compile's C++ back end")
    return rows


def read_progress(sweep: Path) -> dict[str, list[dict]]:
    out = {}
    for f in sweep.glob(f"*/{PROGRESS}"):
        recs = [json.loads(ln) for ln in f.read_text().splitlines() if ln.endswith("}")]
        if recs:
            out[f.parent.name] = recs
    return out


def _at(recs: list[dict], t: float) -> float:
    """Samples of one member at time t, linear between its records."""
    for a, b in zip(recs, recs[1:]):
        if a["t"] <= t <= b["t"]:
            return a["samples"] + (b["samples"] - a["samples"]) * (t - a["t"]) / max(b["t"] - a["t"], 1e-9)
    return recs[0]["samples"] if t < recs[0]["t"] else recs[-1]["samples"]


def windowed_sweep(ctx, name: str, overrides: list[str], n_jobs: int, window: float, until: float) -> dict:
    sweep = ctx.work / name
    cmd = [ctx.exe, "-m", *overrides, "logger=csv", f"trainer={'gpu' if ctx.device == 'cuda' else 'cpu'}",
           f"hydra.sweep.dir={sweep}", "+callbacks.gpu_check_progress._target_=gpu_check.ProgressLog",
           f"+callbacks.gpu_check_progress.warmup_samples={ctx.sizes['sweep_warmup']}",
           f"+callbacks.gpu_check_progress.every_s={ctx.sizes['every']}", *ctx.sizes["sweep_extra"]]
    seen = {"t_start": None}

    def stop() -> bool:
        recs = read_progress(sweep)
        if len(recs) < n_jobs:
            return False
        seen["t_start"] = seen["t_start"] or max(r[0]["t"] for r in recs.values())
        return time.time() >= seen["t_start"] + window

    launched = time.time()
    r = run(cmd, ctx, ctx.logs / f"{name}.log", until, stop)
    recs = read_progress(sweep)
    res = {"jobs": n_jobs, "overrides": overrides, "wall_s": r["wall_s"], "log": r["log"],
           "members_timed": len(recs), "warmup_samples": ctx.sizes["sweep_warmup"]}
    if len(recs) < n_jobs or r["why"] == "timed out":
        return {**res, "status": "timed out" if r["why"] else "failed",
                "note": f"{len(recs)} of {n_jobs} members past their warm-up; " + _tail(r["log"], 2)}
    members = list(recs.values())
    t0, t1 = max(m[0]["t"] for m in members), min(m[-1]["t"] for m in members)
    method = "common window of all members"
    if t1 - t0 < ctx.sizes["every"]:  # the members' windows barely overlap: their union, which undercounts
        t0, t1, method = min(m[0]["t"] for m in members), max(m[-1]["t"] for m in members), "union of windows"
    per = {job: (_at(m, t1) - _at(m, t0)) / (t1 - t0) if t1 > t0 else 0.0 for job, m in sorted(recs.items())}
    timed = sum(_at(m, t1) - _at(m, t0) for m in members)
    procs: dict = {}
    for m in members:
        for rec in m:
            p = procs.setdefault(rec["pid"], {"device_mb": 0.0, "rss_mb": 0.0})
            p["device_mb"], p["rss_mb"] = max(p["device_mb"], rec["device_mb"] or 0), max(p["rss_mb"], rec["rss_mb"])
    ok = timed > 0 and t1 > t0
    return {**res, "status": "ok" if ok else "failed", "note": "" if ok else "no training samples in the window",
            "samples_per_s": timed / (t1 - t0) if ok else 0.0, "timed_samples": int(timed), "timed_s": t1 - t0,
            "member_samples_per_s": per, "method": method, "startup_s": t0 - launched, "processes": len(procs),
            "device_peak_mb": max(p["device_mb"] for p in procs.values()) or None,
            "rss_mb": max(p["rss_mb"] for p in procs.values()), "stopped": r["why"] == "stopped", "rc": r["rc"]}


def pack(ctx, k: int, until: float) -> dict:
    graphed = ["fast.compile=true", "fast.cuda_graph=true"] if ctx.device == "cuda" else \
        ["fast.compile=false", "fast.cuda_graph=false"]
    row = {"k": k, "overrides_extra": graphed,
           "note": "" if ctx.device == "cuda" else "CPU: no CUDA graph (eager, not compiled)"}
    share = min(ctx.sizes["row_cap"], until - time.time())
    if share < 15:
        return {**row, "status": "not run", "note": "the budget ran out before it"}
    overrides = ["hydra/launcher=packed", "seed=" + ",".join(map(str, range(k))), "max_samples=100000000",
                 "callbacks=none", "+trainer.limit_val_batches=0", *graphed]
    res = windowed_sweep(ctx, f"pack_{k}", overrides, k, ctx.sizes["pack_window"], time.time() + share)
    return {**row, **{key: v for key, v in res.items() if key != "note" or v}}


def fig2_slice(ctx, until: float) -> dict:
    both = "hydra.launcher.packs_per_gpu=2" if ctx.device == "cuda" else "hydra.launcher.cpu_parallel=2"
    if until - time.time() < 30:
        return {"status": "not run", "note": "the budget ran out before it", "jobs": FIG2_JOBS}
    return windowed_sweep(ctx, "fig2_slice", ["experiment=fig2_mnist", "hydra/launcher=packed", both],
                          FIG2_JOBS, ctx.sizes["fig2_window"], until)


def projection(fig2: dict) -> dict | None:
    """The full paper-scale Figure 2: an MNIST and a Frey Face sweep (10 + 8 jobs of 10^8 samples), each run like the
    slice and paying its start-up once, each lasting until its slowest job is done at that job's measured rate (the
    Frey Face jobs assumed at the MNIST jobs' rates). If every job went at the aggregate's mean share: wall_s_balanced."""
    if fig2.get("status") != "ok" or not fig2.get("samples_per_s") or not min(fig2["member_samples_per_s"].values()):
        return None
    slowest = min(fig2["member_samples_per_s"].values())
    per_curve = bench.PAPER_FIG2_SAMPLES // 18
    train = 2 * per_curve / slowest
    return {"samples": bench.PAPER_FIG2_SAMPLES, "rate_samples_per_s": fig2["samples_per_s"],
            "slowest_job_samples_per_s": slowest, "training_s": train, "startup_s_per_sweep": fig2["startup_s"],
            "wall_s": train + 2 * fig2["startup_s"], "hours": (train + 2 * fig2["startup_s"]) / 3600,
            "wall_s_balanced": bench.PAPER_FIG2_SAMPLES / fig2["samples_per_s"] + 2 * fig2["startup_s"]}


# -- main ---------------------------------------------------------------------------------------------------------
def fail(msg: str) -> None:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for gpu_check.json, gpu_check.md and logs/")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU")
    ap.add_argument("--started", type=float, help="epoch seconds the check started (gpu_check.sh: before installing)")
    ap.add_argument("--budget-s", type=float, help="wall seconds from --started for every step")
    ap.add_argument("--packs", type=int, nargs="+", help="pack sizes K")
    ap.add_argument("--pack-window-s", type=float)
    ap.add_argument("--fig2-window-s", type=float)
    ap.add_argument("--serial", action="store_true", help="--dry-run: one step at a time")
    ap.add_argument("--with-compile", action="store_true", help="--dry-run: the compiled loop too")
    args = ap.parse_args()
    started = args.started or time.time()
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        fail("no CUDA device visible (torch.cuda.is_available() is False); on a CPU: scripts/gpu_check.sh --dry-run")
    exe = Path(sys.executable).with_name("aevb-train")
    if not exe.exists():
        fail(f"{exe} not found: aevb is not installed for {sys.executable}")
    sizes = dict(SIZES["dry" if args.dry_run else "gpu"])
    for key, value in (("budget", args.budget_s), ("packs", args.packs), ("pack_window", args.pack_window_s),
                       ("fig2_window", args.fig2_window_s)):
        sizes[key] = value if value is not None else sizes[key]
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update({"WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1"})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), str(REPO / "scripts"), env.get("PYTHONPATH")) if p)
    if args.dry_run:
        env["OMP_NUM_THREADS"] = "1"  # two steps at a time on the CPU
    out = Path(args.out).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.dry_run else "cuda"
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        ctx = argparse.Namespace(dry=args.dry_run, with_compile=args.with_compile, device=device, exe=str(exe),
                                 env=env, sizes=sizes, logs=out / "logs", work=Path(tmp))
        rep = {"dry_run": args.dry_run, "machine": bench.machine(device), "budget_s": sizes["budget"],
               "sizes": {k: v for k, v in sizes.items() if k != "loop_samples"},
               "units": {"samples_per_s": "training samples per second (wall clock)", "*_s": "seconds",
                         "*_mb": "MiB (2^20 bytes)", "timed_samples": "training samples"}}
        deadline = started + sizes["budget"]
        ks = sizes["packs"]
        pack_tasks = [(f"pack K={k}", lambda k=k: pack(ctx, k, deadline - sizes["fig2_reserve"])) for k in ks]
        tasks = [("gpu tests", lambda: gpu_tests(ctx, time.time() + sizes["tests_cap"])),
                 ("loops", lambda: loops(ctx, deadline - sizes["packs_reserve"] - sizes["fig2_reserve"])),
                 *pack_tasks, ("Figure 2 slice", lambda: fig2_slice(ctx, deadline))]
        results: dict = {}

        def lane(steps):
            for name, step in steps:
                print(f"{PROG}: {name} ...", file=sys.stderr, flush=True)
                try:
                    results[name] = step()
                except Exception as exc:  # a bug here: the report still comes, with the step failed
                    bad = {"status": "failed", "note": f"{type(exc).__name__}: {exc}", "k": name, "row": name,
                           "label": name, "passed": 0, "skipped": 0, "failed": 0, "wall_s": 0.0}
                    results[name] = [bad] if name == "loops" else bad

        if args.dry_run and not args.serial:  # two lanes at once: tests and loops | the Figure 2 slice and packs
            other = threading.Thread(target=lane, args=([tasks[-1], *pack_tasks],))
            other.start()
            lane(tasks[:2])
            other.join()
        else:
            lane(tasks)
    rep.update(gpu_tests=results["gpu tests"], loops=results["loops"], packs=[results[n] for n, _ in pack_tasks],
               fig2_slice=results["Figure 2 slice"])
    rep["projection"] = projection(rep["fig2_slice"])
    rows = [("gpu tests", rep["gpu_tests"])] + [(f"loop {r['row']}", r) for r in rep["loops"]] + \
        [(f"pack K={r['k']}", r) for r in rep["packs"]] + [("Figure 2 slice", rep["fig2_slice"])]
    rep["failed"] = [f"{name} ({r['status']})" for name, r in rows if r["status"] in FAILED]
    rep["machine"]["load_average_at_end"] = os.getloadavg()[0]
    rep["wall_s"] = time.time() - started
    (out / "gpu_check.json").write_text(json.dumps(rep, indent=2) + "\n")
    md = gpu_check_report.markdown(rep)
    (out / "gpu_check.md").write_text(md)
    print(md)
    print(f"{PROG}: report in {out}/gpu_check.md and gpu_check.json; logs in {out}/logs", file=sys.stderr)
    raise SystemExit(1 if rep["failed"] else 0)


if __name__ == "__main__":
    main()
