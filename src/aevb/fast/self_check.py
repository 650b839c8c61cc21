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


def self_check(candidate, eager, rows: Tensor, what: str) -> bool:
    """``rows`` (a few batches' indices) in lockstep with ``candidate`` (a compiled Step, or a GraphedStep) and
    ``eager`` (the same model's eager Step); True when every step agrees. Trains nothing: the starting state is
    put back. On a mismatch prints one line (``what`` names the candidate)."""
    base = getattr(candidate, "step", candidate)
    dtype = base.enc[0].dtype
    elbo_tol, update_tol = ELBO_RTOL.get(dtype, 1e-5), UPDATE_RTOL.get(dtype, 1e-2)
    share_tol = DIFFERING_SHARE
    start = Snapshot(base)
    failure = None
    try:
        for k, r in enumerate(rows):
            here = Snapshot(base)
            p0 = torch.cat([t.detach().reshape(-1) for t in (*base.enc, *base.dec)])
            elbo_c, p_c = _one(candidate, base, r)
            here.restore()
            elbo_e, p_e = _one(eager, eager, r)  # the same tensors: the eager step goes on from its own result
            elbo_gap = float((elbo_c - elbo_e).abs() / elbo_e.abs().clamp_min(1.0))
            update = (p_e - p0).abs()  # (a parameter the eager step left alone is judged against the mean update)
            differs = (p_c - p_e).abs() > update_tol * (update + update.mean())
            update_gap = float(differs.float().mean()) if bool(torch.isfinite(p_c).all()) else float("nan")
            if not (elbo_gap <= elbo_tol and update_gap <= share_tol):  # (NaN fails too)
                failure = (k, elbo_gap, update_gap, float((elbo_c - elbo_e).abs()) / r.numel())
                break
    finally:
        start.restore()
        eager.sums.copy_(base.sums)  # the eager step may go on in the candidate's place: from the same state
        eager.uncounted = base.uncounted
    if failure is None:
        return True
    k, elbo_gap, update_gap, nats = failure
    print(f"fast path: self-check failed at step {k + 1} of {len(rows)}: the {what} step differs from the eager"
          f" step (ELBO by {nats:.3g} nats per datapoint, relative {elbo_gap:.1e}, tolerance {elbo_tol:.0e};"
          f" {update_gap:.1e} of the parameters updated differently, tolerance {share_tol:.0e}); eager steps from here"
          " (fast.self_check=false skips this check)", flush=True)
    return False
