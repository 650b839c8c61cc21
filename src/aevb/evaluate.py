"""aevb-eval: the ELBO and the importance-sampled log-likelihood of a trained model, per datapoint, in nats.

    aevb-eval logs/runs/<time>                 # run dir or checkpoint; test split, k = 5000
    aevb-eval run.ckpt --split val --k 1000 --max-datapoints 1000

log p(x) is estimated with the encoder as proposal (the IWAE bound with k samples,
Burda et al. 2016); it is a lower bound that tightens as k grows and is >= the ELBO.
Results are printed and written to <run dir>/eval_[<ckpt>_]<split>_k<k>_seed<s>[_first<n>].json.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from aevb.cli import fail, use_shared_mirror
from aevb.errors import AevbError, require

PROG = "aevb-eval"
SPLITS = {"test": "test", "val": "val", "train": "train_eval"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="checkpoint file, or a run directory (uses checkpoints/last.ckpt)")
    p.add_argument("--split", choices=list(SPLITS), default="test",
                   help="train = the fixed training subset used for the final train ELBO")
    p.add_argument("--k", type=int, default=5000, help="importance samples per datapoint (0: ELBO only)")
    p.add_argument("--chunk-size", type=int, default=500, help="importance samples evaluated at once (memory)")
    p.add_argument("--batch-size", type=int, default=100, help="datapoints per batch")
    p.add_argument("--max-datapoints", type=int, default=None, help="evaluate only the first N datapoints")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="JSON file to write (default: in the run directory)")
    return p


def output_name(args: argparse.Namespace, ckpt) -> str:
    """Named by everything that changes the number: checkpoint, split, k, noise seed, datapoints evaluated,
    so a partial or differently seeded evaluation never overwrites a full one."""
    part = f"_first{args.max_datapoints}" if args.max_datapoints is not None else ""
    stem = "" if ckpt.stem == "last" else f"{ckpt.stem}_"
    return f"eval_{stem}{args.split}_k{args.k}_seed{args.seed}{part}.json"


def evaluate(args: argparse.Namespace) -> dict:
    from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

    from aevb.checkpoints import load_model, resolve_checkpoint, run_dir_of
    from aevb.data.base import TensorBatches
    from aevb.marginal_likelihood import evaluate_log_likelihood

    require(args.k >= 0, f"--k must be >= 0, got {args.k}")
    require(args.chunk_size > 0 and args.batch_size > 0, "--chunk-size and --batch-size must be > 0")
    ckpt = resolve_checkpoint(args.checkpoint)
    model, dm, _ = load_model(ckpt, map_location=args.device)
    model.to(args.device)
    x = dm.splits[SPLITS[args.split]]
    require(len(x) > 0, f"the {args.split} split of this run is empty (it was trained with data.val_size=0): "
                        "choose --split test or train")
    if args.max_datapoints is not None:
        require(args.max_datapoints > 0, f"--max-datapoints must be > 0, got {args.max_datapoints}")
        x = x[: args.max_datapoints]
    ds = TensorBatches(x)
    loader = DataLoader(ds, sampler=BatchSampler(SequentialSampler(ds), args.batch_size, drop_last=False), batch_size=None)

    started = time.time()
    torch.manual_seed(args.seed)
    total, n = 0.0, 0
    with torch.no_grad():
        for batch in loader:
            total += float(model.elbo_terms(batch.to(args.device)).elbo.double().sum())
            n += len(batch)
    result = {
        "checkpoint": str(ckpt), "dataset": dm.name, "split": args.split, "n_datapoints": n,
        "samples_seen": int(model.samples_seen), "units": "nats per datapoint",
        "elbo": total / n, "elbo_samples_L": int(model.n_samples),
    }
    if args.k > 0:
        log_px, _ = evaluate_log_likelihood(model, loader, k=args.k, chunk_size=args.chunk_size,
                                            device=args.device, seed=args.seed)
        result.update({"log_px": log_px, "k": args.k, "nll": -log_px})
    result["wall_time_s"] = round(time.time() - started, 1)
    out = args.out or run_dir_of(ckpt) / output_name(args, ckpt)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"{dm.name} {args.split} split, {n:,} datapoints, model after {result['samples_seen']:,} training samples:")
    print(f"  ELBO                      {result['elbo']:10.2f} nats per datapoint (L = {model.n_samples})")
    if args.k > 0:
        print(f"  log p(x), IWAE k = {args.k:<6} {result['log_px']:10.2f} nats per datapoint"
              f" (NLL {result['nll']:.2f})")
    print(f"wrote {out}")
    return result


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    use_shared_mirror()
    try:
        evaluate(args)
    except AevbError as exc:
        fail(PROG, str(exc))


if __name__ == "__main__":
    main()
