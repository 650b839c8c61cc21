"""A compiled or graphed step is checked against the eager step on the user's own machine before a run uses it.

``torch.compile`` and a CUDA graph each turn the eager step into another program; a compiler bug, a
kernel that behaves differently on this GPU, or a capture that misses an operation would change the
numbers silently. The first time a run builds such a step, :func:`self_check` takes a few steps in
lockstep: from one state (parameters, optimiser state, running sums, random generators), one step
with it and, after putting that state back in place, the same step eagerly; it compares the ELBO
each computed and the parameter update each made, and goes on from the eager step's result. Each
step is compared from a common state, so training's own amplification of rounding (in float32,
Adagrad's first steps lr * g / |g| turn rounding in near-zero gradients into whole steps) does not
add up across the check. At the end the starting state is put back: the check trains nothing.
Beyond tolerance it prints one line and the run continues on the eager step.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

CHECK_STEPS = 5  # more than GraphedStep's warm-up (3) and its capture: the last ones are replays
# Tolerances, per step from a common state. ELBO (relative): the same forward pass in another summation
# order; measured on CPU <= 1e-7 in float32, while noise from another generator (Inductor's own randn)
# moves a batch's ELBO by 1e-4 and more. Update: a parameter's update "differs" when the two steps move
# it apart by more than UPDATE_RTOL of its own update (plus the mean update); rounding does that to a few parameters only
# (it flips the sign of near-zero gradients, each then a whole Adagrad step lr * g / |g|: measured on
# Frey Face, 2 of 340,000 at the fifth step), a wrong gradient to a share of them.
ELBO_RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}
UPDATE_RTOL = {torch.float64: 1e-8, torch.float32: 1e-2}
DIFFERING_SHARE = 1e-2  # of the parameters, at most


class Snapshot:
    """Everything a step changes, copied, and written back in place (a captured graph keeps its tensors)."""

    def __init__(self, step) -> None:
        self.step = step
        self.tensors = [*step.enc, *step.dec, step.sums]
        self.saved = [t.detach().clone() for t in self.tensors]
        self.optimizers = [u.optimizer for u in step.updaters]
        self.states = [{p: {k: v.clone() if isinstance(v, Tensor) else copy.deepcopy(v) for k, v in st.items()}
                        for p, st in o.state.items()} for o in self.optimizers]
        self.groups = [[{k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in o.param_groups]
                       for o in self.optimizers]
        self.uncounted = step.uncounted
        self.trace = None if step.trace is None else len(step.trace)
        device = step.data.device
        self.cuda = device if device.type == "cuda" else None
        self.rng = (torch.get_rng_state(), torch.cuda.get_rng_state(device) if self.cuda else None)

    @torch.no_grad()
    def restore(self) -> None:
        for t, s in zip(self.tensors, self.saved):
            t.copy_(s)
        for o, states, groups in zip(self.optimizers, self.states, self.groups):
            for p in list(o.state):
                if p not in states:
                    del o.state[p]  # created by the check's steps (an optimiser's lazy state)
            for p, saved in states.items():
                state = o.state[p]
                for k in [k for k in state if k not in saved]:
                    del state[k]
                for k, v in saved.items():
                    if isinstance(v, Tensor) and isinstance(state.get(k), Tensor):
                        state[k].copy_(v)
                    else:
                        state[k] = v.clone() if isinstance(v, Tensor) else copy.deepcopy(v)
            for g, saved in zip(o.param_groups, groups):
                g.update(copy.deepcopy(saved))
        self.step.uncounted = self.uncounted
        if self.trace is not None:
            del self.step.trace[self.trace:]
        torch.set_rng_state(self.rng[0])
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.rng[1], self.cuda)


def _one(run, step, rows: Tensor) -> tuple[Tensor, Tensor]:
    """One step: the summed ELBO of its batch (as the step computed it) and the parameters after it."""
    before = step.sums[0].clone()
    run(rows)
    return step.sums[0] - before, torch.cat([t.detach().reshape(-1) for t in (*step.enc, *step.dec)])


def _gaps(elbo_c: Tensor, elbo_e: Tensor, p_c: Tensor, p_e: Tensor, p0: Tensor) -> tuple[float, float]:
    """(relative ELBO gap, share of parameters updated differently) of one step taken both ways from ``p0``."""
    elbo_gap = float(((elbo_c - elbo_e).abs() / elbo_e.abs().clamp_min(1.0)).max())
    update = (p_e - p0).abs()  # (a parameter the eager step left alone is judged against the mean update)
    differs = (p_c - p_e).abs() > UPDATE_RTOL.get(p0.dtype, 1e-2) * (update + update.mean())
    return elbo_gap, float(differs.float().mean()) if bool(torch.isfinite(p_c).all()) else float("nan")


def _agree(elbo_gap: float, share: float, dtype) -> bool:
    return elbo_gap <= ELBO_RTOL.get(dtype, 1e-5) and share <= DIFFERING_SHARE  # (NaN fails)


def _say(who: str, what: str, k: int, n_steps: int, elbo_gap: float, share: float, nats: float, dtype) -> None:
    print(f"{who}: self-check failed at step {k + 1} of {n_steps}: the {what} step differs from the eager"
          f" step (ELBO by {nats:.3g} nats per datapoint, relative {elbo_gap:.1e}, tolerance"
          f" {ELBO_RTOL.get(dtype, 1e-5):.0e}; {share:.1e} of the parameters updated differently, tolerance"
          f" {DIFFERING_SHARE:.0e}); eager steps from here (fast.self_check=false skips this check)", flush=True)


def self_check(candidate, eager, rows: Tensor, what: str) -> bool:
    """``rows`` (a few batches' indices) in lockstep with ``candidate`` (a compiled Step, or a GraphedStep) and
    ``eager`` (the same model's eager Step); True when every step agrees. Trains nothing: the starting state is
    put back. On a mismatch prints one line (``what`` names the candidate)."""
    base = getattr(candidate, "step", candidate)
    dtype = base.enc[0].dtype
    start = Snapshot(base)
    failure = None
    try:
        for k, r in enumerate(rows):
            here = Snapshot(base)
            p0 = torch.cat([t.detach().reshape(-1) for t in (*base.enc, *base.dec)])
            elbo_c, p_c = _one(candidate, base, r)
            here.restore()
            elbo_e, p_e = _one(eager, eager, r)  # the same tensors: the eager step goes on from its own result
            gaps = _gaps(elbo_c, elbo_e, p_c, p_e, p0)
            if not _agree(*gaps, dtype):
                failure = (k, *gaps, float((elbo_c - elbo_e).abs()) / r.numel())
                break
    finally:
        start.restore()
        eager.sums.copy_(base.sums)  # the eager step may go on in the candidate's place: from the same state
        eager.uncounted = base.uncounted
    if failure is not None:
        _say("fast path", what, failure[0], len(rows), *failure[1:], dtype)
    return failure is None


def pack_self_check(candidate, eager, rows: Tensor, data: Tensor, binarize: bool, generators, what: str) -> bool:
    """The same for a pack (aevb.packed.steps.PackedSteps): ``rows`` (K, n, B) with ``candidate``'s step
    (compiled, or its graph) and ``eager``'s, each step from the same stacked state and generator states;
    both start from ``candidate``'s stacked tensors, which are put back at the end."""
    def flat(steps):
        return torch.cat([t.reshape(len(t), -1) for t in steps.stacked_params], dim=1)

    def put(dst, src):
        with torch.no_grad():
            for d, s in zip(dst.stacked_params + dst.stacked_sums, src.stacked_params + src.stacked_sums):
                d.copy_(s)

    saved = [t.clone() for t in candidate.stacked_params + candidate.stacked_sums]
    states = [g.get_state() for g in generators]
    run, dtype, failure = candidate.graph or candidate.step, candidate.dtype, None
    try:
        for k in range(rows.shape[1]):
            here = [g.get_state() for g in generators]
            put(eager, candidate)
            p0 = flat(candidate)
            terms_c = run(rows[:, k], data, binarize, generators)
            p_c = flat(candidate)
            for g, st in zip(generators, here):
                g.set_state(st)
            terms_e = eager.step(rows[:, k], data, binarize, generators)
            p_e = flat(eager)
            gaps = _gaps(terms_c[:, 0], terms_e[:, 0], p_c, p_e, p0)
            if not _agree(*gaps, dtype):
                failure = (k, *gaps, float((terms_c[:, 0] - terms_e[:, 0]).abs().max()) / rows.shape[2])
                break
            put(candidate, eager)  # both go on from the eager step's result
    finally:
        with torch.no_grad():
            for t, s in zip(candidate.stacked_params + candidate.stacked_sums, saved):
                t.copy_(s)
        for g, st in zip(generators, states):
            g.set_state(st)
    if failure is not None:
        _say("packed sweep", what, failure[0], rows.shape[1], *failure[1:], dtype)
    return failure is None
