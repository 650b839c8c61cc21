"""make bench: training throughput of the paper's MLP (784-500-20) on MNIST, aevb against plain loops.

Variants, each in its own process (so its peak memory is its own):

* ``plain``     a plain PyTorch loop: training images resident in one tensor on the device, batches by
                ``randperm`` index, eager, ``torch.optim.Adagrad``, no per-step ``.item()``;
* ``lightning`` a naive Lightning loop: a DataLoader over a TensorDataset, ``self.log`` every step;
* ``standard``  ``aevb-train fast.enabled=false``  (aevb's standard loop);
* ``fast``      ``aevb-train``                     (aevb's default: the fast path where it runs);
* ``graph``     (CUDA only) the plain loop with the whole step as one CUDA graph (aevb.fast.step).

Every variant trains the same model on the same objective (aevb's ``training_loss``: -ELBO per
datapoint + the weight prior) with Adagrad 0.02 for the same budget. Its rate excludes warm-up
explicitly: the clock starts once ``--warmup`` steps are done (the device synchronised) and stops
when training ends (synchronised again), so start-up, data loading, compilation, CUDA-graph capture
and aevb's final evaluation are outside it. aevb runs with ``logger=csv callbacks=none
+trainer.limit_val_batches=0`` (the training loop alone, as the plain loops) plus the
:class:`StepTimer` callback. Variants are interleaved (every variant, then the next repetition),
so that a change in machine load hits all of them alike. No test asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAPER_FIG2_SAMPLES = 18 * 10**8  # Figure 2: 10 MNIST + 8 Frey Face curves of 10^8 training samples
AEVB_ARGS = ["logger=csv", "callbacks=none", "+trainer.limit_val_batches=0"]


# -- timing -------------------------------------------------------------------------------------
def _sync(device) -> float:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter()


class Clock:
    """Samples per second after ``warmup`` steps: the clock starts once they are done and stops at the end.

    Two clocks: wall time, and the process's CPU time. On a machine shared with other work, CPU time
    with one thread per process (OMP_NUM_THREADS=1) is what each loop costs, whatever the others do.
    """

    def __init__(self, warmup: int):
        self.warmup, self.t0, self.step0 = warmup, None, 0

    def tick(self, step: int, device) -> None:
        if self.t0 is None and step >= self.warmup:
            self.t0, self.cpu0, self.step0 = _sync(device), time.process_time(), step

    def result(self, step: int, batch_size: int, device) -> dict:
        import torch

        t1, cpu1 = _sync(device), time.process_time()
        if self.t0 is None:
            raise SystemExit(f"bench: error: the budget ({step} steps) must exceed --warmup ({self.warmup} steps)")
        dev = torch.cuda.max_memory_allocated() / 2**20 if str(device).startswith("cuda") else None
        n = (step - self.step0) * batch_size
        return {"timed_steps": step - self.step0, "seconds": t1 - self.t0, "cpu_seconds": cpu1 - self.cpu0,
                "samples_per_s": n / (t1 - self.t0), "samples_per_cpu_s": n / (cpu1 - self.cpu0),
                "threads": torch.get_num_threads(), "device_peak_mb": dev}


try:
    import lightning as _L

    class StepTimer(_L.Callback):
        """Times a Lightning run after its warm-up steps; writes the result as JSON to ``out``."""

        def __init__(self, out: str, warmup_steps: int):
            self.out, self.clock = out, Clock(warmup_steps)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.clock.tick(trainer.global_step, pl_module.device)

        def on_train_end(self, trainer, pl_module):
            batch = trainer.datamodule.batch_size if trainer.datamodule is not None else self.batch_size
            res = self.clock.result(trainer.global_step, batch * trainer.world_size, pl_module.device)
            Path(self.out).write_text(json.dumps(res))
except ImportError:  # pragma: no cover
    pass


# -- workers: one training run each, in its own process ------------------------------------------
def _model(device, batch_size):
    import functools

    import torch

    from aevb.data import MNISTDataModule
    from aevb.likelihoods import Bernoulli
    from aevb.models import AEVB
    from aevb.nets.mlp import MLPDecoder, MLPEncoder

    dm = MNISTDataModule(batch_size=batch_size)
    dm.setup()
    enc = MLPEncoder((1, 28, 28), 20, hidden_dim=500)
    dec = MLPDecoder((1, 28, 28), 20, Bernoulli(), hidden_dim=500)
    model = AEVB(enc, dec, functools.partial(torch.optim.Adagrad, lr=0.02), latent_dim=20, n_train=dm.n_train)
    return dm, model.to(device)


def worker(variant: str, batch_size: int, samples: int, device: str, warmup: int) -> dict:
    import torch

    torch.manual_seed(0)
    dm, model = _model(device, batch_size)
    steps = samples // batch_size
    x = dm.splits["train"].to(device)
    clock = Clock(warmup)
    if variant == "lightning":
        return _naive_lightning(model, dm.splits["train"], batch_size, steps, device, warmup)
    if variant == "plain":
        opt = model.configure_optimizers()

        def step(rows):
            loss = model.training_loss(model.elbo_terms(x[rows]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    elif variant == "graph":
        from aevb.fast.step import GraphedStep, Step

        step = GraphedStep(Step(model, x, model.configure_optimizers(), binarize=False))
    else:
        raise SystemExit(f"bench: error: unknown variant {variant}")
    n_batches = len(x) // batch_size
    for i in range(steps):
        clock.tick(i, device)
        if i % n_batches == 0:
            perm = torch.randperm(len(x), device=device)
        step(perm[(i % n_batches) * batch_size:(i % n_batches + 1) * batch_size])
    return clock.result(steps, batch_size, device)


def _naive_lightning(model, images, batch_size, steps, device, warmup) -> dict:
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    class Naive(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.m = model

        def training_step(self, batch, batch_idx):
            loss = self.m.training_loss(self.m.elbo_terms(batch[0]))
            self.log("train/loss", loss, on_step=True)
            return loss

        def configure_optimizers(self):
            return self.m.configure_optimizers()

    with tempfile.TemporaryDirectory() as tmp:
        timer = StepTimer(str(Path(tmp) / "t.json"), warmup)
        timer.batch_size = batch_size
        trainer = L.Trainer(accelerator="gpu" if device == "cuda" else "cpu", devices=1, max_steps=steps,
                            logger=L.pytorch.loggers.CSVLogger(tmp), log_every_n_steps=1, callbacks=[timer],
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        loader = DataLoader(TensorDataset(images), batch_size=batch_size, shuffle=True, drop_last=True)
        trainer.fit(Naive(), loader)
        return json.loads(Path(tmp, "t.json").read_text())


# -- the orchestrator ---------------------------------------------------------------------------
def timed(cmd: list[str], env: dict, cpu: list | None = None) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MiB, stdout) of one child process; its rusage gives its own peak RSS.
    ``cpu``: a list that gets the CPU seconds of the process and every descendant it waited for."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise SystemExit(f"bench: error: {' '.join(cmd)} failed ({proc.returncode}): {stderr.strip()[-800:]}")
    if cpu is not None:
        cpu.append(usage.ru_utime + usage.ru_stime)
    return wall, usage.ru_maxrss / 1024, stdout  # ru_maxrss is in KiB on Linux


def command(variant: str, batch: int, samples: int, device: str, run_dir: Path, warmup: int) -> list[str]:
    if variant in ("standard", "fast"):
        exe = Path(sys.executable).with_name("aevb-train")
        return [str(exe), f"max_samples={samples}", f"data.batch_size={batch}", *AEVB_ARGS,
                f"fast.enabled={'true' if variant == 'fast' else 'false'}",
                f"trainer={'gpu' if device == 'cuda' else 'cpu'}", f"hydra.run.dir={run_dir}",
                "+callbacks.step_timer._target_=bench.StepTimer", f"+callbacks.step_timer.out={run_dir}/timer.json",
                f"+callbacks.step_timer.warmup_steps={warmup}"]
    return [sys.executable, str(Path(__file__).resolve()), "--worker", variant, "--batch", str(batch),
            "--worker-samples", str(samples), "--device", device, "--warmup", str(warmup)]


def result_of(variant: str, stdout: str, run_dir: Path) -> dict:
    if variant in ("standard", "fast"):
        return json.loads((run_dir / "timer.json").read_text())
    return json.loads(next(ln[6:] for ln in stdout.splitlines() if ln.startswith("BENCH ")))


def machine(device: str) -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (no GPU)",
            "load_average_at_start": os.getloadavg()[0], "threads": torch.get_num_threads()}
    return info


def measure(args, env: dict) -> list[dict]:
    variants = args.variants + (["graph"] if args.device == "cuda" and "graph" not in args.variants else [])
    runs: dict[tuple, list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for batch in args.batch_sizes:
                warmup = max(1, args.warmup_samples // batch)
                for variant in variants:
                    run_dir = Path(tmp) / f"{variant}_{batch}_{rep}"
                    cmd = command(variant, batch, args.samples, args.device, run_dir, warmup)
                    wall, rss, out = timed(cmd, env)
                    res = {**result_of(variant, out, run_dir), "wall_s": wall, "rss_mb": rss}
                    if args.clock == "cpu":
                        res["samples_per_s"] = res["samples_per_cpu_s"]
                    runs.setdefault((variant, batch), []).append(res)
                    print(f"  rep {rep} batch {batch:>5} {variant:<9} {res['samples_per_s']:>9,.0f} samples/s over"
                          f" {res['timed_steps']} steps after {warmup} warm-up ({wall:.0f} s wall, peak RSS {rss:.0f} MiB)",
                          file=sys.stderr, flush=True)
    rows = []
    for (variant, batch), results in runs.items():
        rates = sorted(r["samples_per_s"] for r in results)
        rows.append({"variant": variant, "batch_size": batch, "samples_per_s": rates[len(rates) // 2],
                     "samples_per_s_all": [r["samples_per_s"] for r in results],
                     "peak_rss_mb": max(r["rss_mb"] for r in results),
                     "peak_device_mb": max((r["device_peak_mb"] or 0) for r in results) or None})
    for row in rows:
        plain = next((r for r in rows if r["variant"] == "plain" and r["batch_size"] == row["batch_size"]), None)
        row["vs_plain"] = row["samples_per_s"] / plain["samples_per_s"] if plain else None
    return rows


def sweep_wall_time(args, env: dict, fast: bool) -> dict:
    exe = Path(sys.executable).with_name("aevb-train")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(exe), "-m", "experiment=fig2_mnist", f"max_samples={args.sweep_samples}", "logger=csv",
               f"fast.enabled={'true' if fast else 'false'}", f"trainer={'gpu' if args.device == 'cuda' else 'cpu'}",
               f"hydra.sweep.dir={tmp}/sweep"]
        wall, rss, _ = timed(cmd, env)
    return {"jobs": 10, "samples_per_job": args.sweep_samples, "fast": fast, "wall_s": wall}


def packed_sweep(args, env: dict) -> list[dict]:
    """Figure 2's MNIST sweep (AEVB and wake-sleep, N_z = 3, 5, 10, 20, 200) one job at a time, then packed (one pack
    per method): aggregate training samples per wall-second of the whole sweep (start-up and evaluations included)."""
    exe = Path(sys.executable).with_name("aevb-train")
    out = []
    for launcher in ("basic", "packed"):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [str(exe), "-m", "experiment=fig2_mnist", f"max_samples={args.pack_samples}",
                   "logger=csv", f"trainer={'gpu' if args.device == 'cuda' else 'cpu'}", f"hydra/launcher={launcher}",
                   f"hydra.sweep.dir={tmp}/sweep"]
            cpu: list = []
            wall, rss, _ = timed(cmd, env, cpu)
        jobs = 10
        seconds = cpu[0] if args.clock == "cpu" else wall
        out.append({"launcher": launcher, "jobs": jobs, "samples_per_job": args.pack_samples, "wall_s": wall,
                    "cpu_s": cpu[0], "clock": args.clock, "aggregate_samples_per_s": jobs * args.pack_samples / seconds,
                    "peak_rss_mb": rss})
        print(f"  Figure 2 MNIST sweep, {launcher:<6}: {out[-1]['aggregate_samples_per_s']:,.0f} samples per"
              f" {'CPU-' if args.clock == 'cpu' else ''}second aggregate ({wall:.0f} s wall, {cpu[0]:.0f} CPU-s)",
              file=sys.stderr, flush=True)
    return out


LABELS = {"plain": "plain PyTorch loop (resident, eager, randperm)", "lightning": "naive Lightning loop (DataLoader, log every step)",
          "standard": "aevb standard loop (fast.enabled=false)", "fast": "aevb default (fast path)",
          "graph": "plain loop, whole step in one CUDA graph"}


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, device: {m['device']}"
             f" (load average {m['load_average_at_start']:.1f} at start). Paper MLP 784-500-20 on MNIST, Adagrad 0.02;"
             f" {result['samples']:,} training samples per run, timed after the first {result['warmup_samples']:,}"
             f" (warm-up excluded); {'samples per CPU-second of the process' if result['clock'] == 'cpu' else 'wall clock'},"
             f" {m['threads']} thread(s); median of {result['reps']} interleaved repetition(s); load average"
             f" {m['load_average_at_end']:.1f} at the end.", "",
             "| loop | batch | samples/s | x plain | peak host RSS (MiB) | peak device memory (MiB) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in sorted(result["rows"], key=lambda r: (r["batch_size"], list(LABELS).index(r["variant"]))):
        dev = f"{r['peak_device_mb']:.0f}" if r["peak_device_mb"] else "n/a"
        lines.append(f"| {LABELS[r['variant']]} | {r['batch_size']} | {r['samples_per_s']:,.0f} | {r['vs_plain'] or 0:.2f}"
                     f" | {r['peak_rss_mb']:.0f} | {dev} |")
    for s in result.get("sweeps", []):
        lines.append(f"\nScaled-down Figure 2 sweep (experiment=fig2_mnist, {s['jobs']} jobs one after another,"
                     f" {s['samples_per_job']:,} training samples each, {'fast path' if s['fast'] else 'standard loop'}):"
                     f" {s['wall_s']:.0f} s wall.")
    packs = result.get("packed_sweep")
    if packs:
        one, packed = packs
        per = "CPU-second (the sweep's processes together)" if one["clock"] == "cpu" else "second, wall clock"
        lines += ["", f"Figure 2 MNIST sweep (AEVB and wake-sleep, N_z = 3, 5, 10, 20, 200: 10 jobs of"
                  f" {one['samples_per_job']:,} training samples, with the experiment's curve points, validations and"
                  f" final evaluations; start-up included), aggregate training samples per {per}:", "",
                  "| launcher | aggregate samples/s | wall (s) | CPU (s) | x one at a time |", "|---|---:|---:|---:|---:|"]
        for r in packs:
            lines.append(f"| {r['launcher']} ({'one job at a time' if r['launcher'] == 'basic' else 'two packs of 5'})"
                         f" | {r['aggregate_samples_per_s']:,.0f} | {r['wall_s']:.0f} | {r['cpu_s']:.0f}"
                         f" | {r['aggregate_samples_per_s'] / one['aggregate_samples_per_s']:.2f} |")
    if result.get("projection"):
        p = result["projection"]
        lines.append(f"\nPaper-scale Figure 2 ({PAPER_FIG2_SAMPLES:.1e} training samples, one process at a time) at the"
                     f" fast path's batch-100 rate: {p['hours']:.1f} h (training only).")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--samples", type=int, default=300_000, help="training samples per run")
    ap.add_argument("--warmup-samples", type=int, default=20_000, help="not timed, at the start of each run")
    ap.add_argument("--variants", nargs="+", default=["plain", "lightning", "standard", "fast"])
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: samples per CPU-second of each process (use with OMP_NUM_THREADS=1 on a shared machine)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--sweep-samples", type=int, default=20_000, help="per job of the scaled-down Figure 2; 0 skips it")
    ap.add_argument("--sweep-standard", action="store_true", help="also time the sweep on the standard loop")
    ap.add_argument("--pack-samples", type=int, default=50_000,
                    help="per job of the packed-against-one-at-a-time Figure 2 sweep; 0 skips it")
    ap.add_argument("--fixed-cost-samples", type=int, default=2000,
                    help="budget of the short runs that measure a run's fixed cost (bench_fixed_cost.py); 0 skips it")
    ap.add_argument("--out", default="logs/bench/bench.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--worker-samples", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--warmup", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("BENCH " + json.dumps(worker(args.worker, args.batch, args.worker_samples, args.device, args.warmup)))
        return
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update({"WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), str(REPO / "scripts"), env.get("PYTHONPATH")) if p)
    mirror = REPO.parent / "shared" / "data"
    if "AEVB_DATA_MIRROR" not in env and mirror.is_dir():
        env["AEVB_DATA_MIRROR"] = str(mirror)
    if args.clock == "cpu" and args.device == "cuda":
        raise SystemExit("bench: error: --clock cpu measures CPU loops; on CUDA use --clock wall")
    result = {"machine": machine(args.device), "samples": args.samples, "warmup_samples": args.warmup_samples,
              "reps": args.reps, "clock": args.clock}
    result["rows"] = measure(args, env)
    if args.sweep_samples:
        result["sweeps"] = [sweep_wall_time(args, env, True)] + ([sweep_wall_time(args, env, False)] if args.sweep_standard else [])
    if args.pack_samples:
        result["packed_sweep"] = packed_sweep(args, env)
    if args.fixed_cost_samples:
        import bench_fixed_cost

        result["fixed_cost"] = bench_fixed_cost.fixed_cost(timed, env, args.fixed_cost_samples)
    fast100 = next((r for r in result["rows"] if r["variant"] == "fast" and r["batch_size"] == 100), None)
    if fast100 and fast100["samples_per_s"] > 0:
        result["projection"] = {"samples": PAPER_FIG2_SAMPLES, "rate": fast100["samples_per_s"],
                                "hours": PAPER_FIG2_SAMPLES / fast100["samples_per_s"] / 3600}
    result["machine"]["load_average_at_end"] = os.getloadavg()[0]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    if result.get("fixed_cost"):
        import bench_fixed_cost

        print("\n" + bench_fixed_cost.markdown(result["fixed_cost"]))
    print(f"\n(JSON: {out})")


if __name__ == "__main__":
    main()
