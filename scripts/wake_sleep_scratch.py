"""Wake-sleep on MNIST written from scratch, without any aevb code: a check of aevb's model=wake_sleep.

The paper's protocol: MLP 784-500-N_z (tanh), Bernoulli decoder on intensities, every parameter
N(0, 0.01^2), Adagrad 0.02 per network, M = 100, weight prior N(0, I) / N_train; phases in
sequence (wake: z ~ q(z|x) held fixed, decoder step; sleep: z ~ N(0, I), x ~ p(x|z) from the
updated decoder, encoder step). Prints the test ELBO (nats per datapoint, 10,000 test images,
analytic KL, one sample) after the given number of training samples.

    python scripts/wake_sleep_scratch.py --seed 0 --samples 300000     # REPRODUCTION.md, issue 14
"""

from __future__ import annotations

import argparse
import gzip
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def images(path: Path, n: int) -> torch.Tensor:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return torch.tensor(np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, 784), dtype=torch.float32) / 255.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=300_000, help="training samples evaluated (M = 100 per step)")
    ap.add_argument("--latent", type=int, default=20)
    ap.add_argument("--n-train", type=int, default=50_000, help="the first N training images (aevb: 50,000)")
    ap.add_argument("--data", default=os.environ.get("AEVB_DATA_MIRROR", "../shared/data"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    mnist = Path(args.data) / "mnist"
    x_train = images(next(mnist.glob("train-images-idx3-ubyte*")), 60000)[:args.n_train]
    x_test = images(next(mnist.glob("t10k-images-idx3-ubyte*")), 10000)
    hidden, latent, dim, n = 500, args.latent, 784, len(x_train)

    def param(*shape):
        return (torch.randn(*shape) * 0.01).requires_grad_()

    enc = {"w1": param(hidden, dim), "b1": param(hidden), "wm": param(latent, hidden), "bm": param(latent),
           "wv": param(latent, hidden), "bv": param(latent)}
    dec = {"w4": param(hidden, latent), "b4": param(hidden), "w5": param(dim, hidden), "b5": param(dim)}
    opt_enc, opt_dec = torch.optim.Adagrad(enc.values(), lr=0.02), torch.optim.Adagrad(dec.values(), lr=0.02)

    def encode(x):
        h = torch.tanh(x @ enc["w1"].T + enc["b1"])
        return h @ enc["wm"].T + enc["bm"], h @ enc["wv"].T + enc["bv"]

    def logits(z):
        return torch.tanh(z @ dec["w4"].T + dec["b4"]) @ dec["w5"].T + dec["b5"]

    def prior(params):
        return 0.5 * sum((p ** 2).sum() for p in params) / n

    steps, step, start = args.samples // 100, 0, time.time()
    while step < steps:
        order = torch.randperm(n)
        for i in range(0, n - 99, 100):
            x = x_train[order[i:i + 100]]
            with torch.no_grad():  # wake: z ~ q(z|x), held fixed
                mean, logvar = encode(x)
                z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
            wake = F.binary_cross_entropy_with_logits(logits(z), x, reduction="none").sum(1).mean() + prior(dec.values())
            opt_dec.zero_grad()
            wake.backward()
            opt_dec.step()
            with torch.no_grad():  # sleep: dreams from the decoder just updated
                z = torch.randn(100, latent)
                x_dream = torch.bernoulli(torch.sigmoid(logits(z)))
            mean, logvar = encode(x_dream)
            log_q = (-0.5 * (math.log(2 * math.pi) + logvar + (z - mean) ** 2 / torch.exp(logvar))).sum(1)
            sleep = -log_q.mean() + prior(enc.values())
            opt_enc.zero_grad()
            sleep.backward()
            opt_enc.step()
            step += 1
            if step == steps:
                break
    with torch.no_grad():
        mean, logvar = encode(x_test)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        recon = -F.binary_cross_entropy_with_logits(logits(z), x_test, reduction="none").sum(1)
        kl = -0.5 * (1 + logvar - mean ** 2 - torch.exp(logvar)).sum(1)
    print(f"seed {args.seed}: test ELBO {float((recon - kl).mean()):.1f} nats per datapoint (KL {float(kl.mean()):.2f};"
          f" MNIST test split, 10,000 images; after {steps * 100:,} training samples, N_z = {latent},"
          f" {time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
