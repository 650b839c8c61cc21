"""make gpu-check's Markdown report (gpu_check.md) from the report that scripts/gpu_check.py writes as JSON."""

from __future__ import annotations


def _n(v, fmt="{:,.0f}") -> str:
    return fmt.format(v) if isinstance(v, (int, float)) and v is not None else "n/a"


def markdown(rep: dict) -> str:
    m, dry = rep["machine"], rep["dry_run"]
    result = "every step ran" if not rep["failed"] else "FAILED: " + ", ".join(rep["failed"])
    mem = "n/a (CPU)" if dry else "n/a"
    lines = ["# make gpu-check report", "",
             ("**Dry run on the CPU** (tiny sizes, steps two at a time: these numbers measure nothing; they show the"
              " steps run)." if dry else f"**GPU check** on {m['device']}."),
             f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, torch {m['torch']}, device: {m['device']}.",
             f"Wall time of the whole check: {rep['wall_s']:.0f} s = {rep['wall_s'] / 60:.1f} min (budget"
             f" {rep['budget_s']:.0f} s, installation included). Result: {result}.",
             "", "## GPU tests (`pytest -m gpu -rs`)", ""]
    t = rep["gpu_tests"]
    lines.append(f"{t['status']}: {t['passed']} passed, {t['skipped']} skipped, {t['failed']} failed"
                 f" ({t['wall_s']:.0f} s wall){'; ' + t['note'] if t.get('note') else ''}.")
    w = rep["loops"][0]["warmup_samples"]
    lines += ["", "## Training loops (make bench's method)", "",
              f"Paper MLP 784-500-20 on MNIST, batch 100, Adagrad 0.02, one process per loop. samples/s = training"
              f" samples per second of wall clock after each run's first {w:,} samples (start-up, compilation, CUDA-graph"
              f" capture and the final evaluation excluded), from the timed samples shown.", "",
              "| loop | status | samples/s | timed samples | timed (s) | peak device memory (MiB) | peak host RSS (MiB) |"
              " note |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rep["loops"]:
        lines.append(f"| {r['label']} | {r['status']} | {_n(r.get('samples_per_s'))} | {_n(r.get('timed_samples'))} |"
                     f" {_n(r.get('timed_s'), '{:.1f}')} | {_n(r.get('device_peak_mb')) if not dry else mem} |"
                     f" {_n(r.get('rss_mb'))} | {r.get('note', '')} |")

    def sweep_cells(r: dict) -> str:
        return (f"{_n(r.get('samples_per_s'))} | {_n(r.get('timed_samples'))} | {_n(r.get('timed_s'), '{:.1f}')} |"
                f" {_n(r.get('startup_s'), '{:.0f}')} | {_n(r.get('device_peak_mb')) if not dry else mem} |"
                f" {_n(r.get('rss_mb'))}")

    head = ("aggregate samples/s | timed samples | window (s) | start-up (s) | peak device memory (MiB) |"
            " peak host RSS (MiB)")
    ws = rep["sizes"]["sweep_warmup"]
    lines += ["", "## Packs of K jobs (`hydra/launcher=packed`, seeds 0..K-1, N_z = 20, batch 100)", "",
              f"Each pack runs for a window of {rep['sizes']['pack_window']:.0f} s once all its members are past their"
              f" first {ws:,} samples, then killed. aggregate samples/s = training samples of all K members in"
              " their common window / its length (wall clock); start-up = launch until every member was past its"
              " warm-up (imports, data, compilation, graph capture); memory = the pack process's peak.", "",
              f"| K | status | {head} | samples/s per member | note |", "|---:|---|" + "---:|" * 7 + "---|"]
    for r in rep["packs"]:
        per = r["samples_per_s"] / r["k"] if r.get("samples_per_s") else None
        lines.append(f"| {r['k']} | {r['status']} | {sweep_cells(r)} | {_n(per)} | {r.get('note', '')} |")
    f2 = rep["fig2_slice"]
    jobs, per_job = f2.get("jobs", 10), f2.get("member_samples_per_s") or {}
    lines += ["", "## Timed slice of the paper-scale Figure 2 MNIST sweep", "",
              f"`experiment=fig2_mnist hydra/launcher=packed` ({jobs} jobs: AEVB and wake-sleep x N_z = 3, 5, 10,"
              " 20, 200; two packs of 5, both at once on the device; the paper's budget of 10^8 samples per job, its"
              " validations, curve points and checkpoints; logger=csv), stopped after a fixed window of"
              f" {rep['sizes']['fig2_window']:.0f} s once all {jobs} members were past their first {ws:,} samples.",
              "", f"| status | {head} | note |", "|---|" + "---:|" * 6 + "---|",
              f"| {f2['status']} | {sweep_cells(f2)} | {f2.get('note', '')} |", ""]
    if per_job:
        lines += ["Per job in the window (samples/s; jobs 0-4 AEVB, 5-9 wake-sleep, N_z = 3, 5, 10, 20, 200 each): "
                  + ", ".join(f"{j}: {_n(v)}" for j, v in sorted(per_job.items(), key=lambda kv: int(kv[0]))), ""]
    lines += ["## Projection", ""]
    p = rep.get("projection")
    if p:
        lines.append(f"Full paper-scale Figure 2 ({p['samples']:.1e} training samples: an MNIST and a Frey Face sweep of"
                     f" 10 + 8 jobs of 10^8 samples, each run as the slice ran: `{' '.join(f2['overrides'][1:])}`):"
                     f" **{p['wall_s']:,.0f} s = {p['hours']:.1f} h** wall time = 2 x (10^8 samples / the slowest job's"
                     f" {p['slowest_job_samples_per_s']:,.0f} samples/s + {p['startup_s_per_sweep']:.0f} s start-up);"
                     f" {p['wall_s_balanced']:,.0f} s if every job got an equal share of the slice's aggregate"
                     f" {p['rate_samples_per_s']:,.0f} samples/s (measured from {f2['timed_samples']:,} samples in"
                     f" {f2['timed_s']:.1f} s). Frey Face's jobs are assumed to train at the MNIST jobs' rates (not"
                     " measured).")
    else:
        lines.append("None: the Figure 2 slice gave no rate.")
    return "\n".join(lines) + "\n"
