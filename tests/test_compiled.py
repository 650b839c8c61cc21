"""The compiled step is the eager step (issue 18): the same draws, one compilation per architecture, no host
sync in a chunk's bookkeeping, a self-check that catches a broken compiled step, and a failed CUDA graph
capture that leaves the process on a clean stream. All on the CPU (Inductor compiles here); tests/test_gpu.py
runs the same claims on a GPU.

Tolerance of the compiled-vs-eager comparison: in float64. The compiled step draws nothing (every draw is
made eagerly outside it, aevb.fast.functional) so both take the same noise; they differ only by the order
in which Inductor's fused kernels add up, ~1e-16 relative per operation. Training amplifies such rounding
(Adagrad's first steps lr * g / |g| turn rounding in near-zero gradients into whole steps): measured over
50 steps, compiled vs eager agree to 2e-13 in the loss and 8e-14 in the parameters for AEVB, 2e-9 and 1e-11
for wake-sleep (whose dreams feed one phase's rounding into the other's data). We allow 1e-8 relative on
the loss and 1e-7 on the parameters; a compiled loss that drew Inductor's own noise differs by ~1e-2.
"""

from __future__ import annotations

import pytest
import torch

from aevb.fast import functional
from aevb.fast.step import GraphedStep, Step, WakeSleepStep
from helpers import compose
from test_fast import _fit
from test_packed import _Data

STEPS = 50


def _model(method: str, seed: int, data: torch.Tensor):
    from aevb.building import build

    torch.manual_seed(seed)
    cfg = compose([f"model={method}", "model.latent_dim=5", "net.encoder.hidden_dim=64", "net.decoder.hidden_dim=64",
                   "data.train_size=2000", f"seed={seed}"])
    _, model = build(cfg, data_module=_Data(data), run_config={})
    return model.to(data.dtype)


def _step(method: str, seed: int, data: torch.Tensor, compile: bool):
    model = _model(method, seed, data)
    opt = model.configure_optimizers()
    return model, (WakeSleepStep if method == "wake_sleep" else Step)(model, data, opt, binarize=True, compile=compile)


@pytest.mark.parametrize("method", ["aevb", "wake_sleep"])
def test_compiled_and_eager_steps_agree_step_by_step_and_one_compilation_serves_every_model(mnist, method):
    from torch._dynamo.utils import counters  # (test only: how many graphs Dynamo compiled)

    data = mnist.splits["train"][:1000].double()
    rows = torch.randint(0, 1000, (STEPS, 100), generator=torch.Generator().manual_seed(0))
    runs = {}
    for compile in (False, True):
        model, step = _step(method, 0, data, compile)
        step.trace = []
        torch.manual_seed(123)  # the binarisation and noise stream: the same for both
        graphs_before = counters["stats"]["unique_graphs"]
        for r in rows:
            step(r)
        runs[compile] = (model, torch.stack(step.trace), counters["stats"]["unique_graphs"] - graphs_before)
    (eager, eager_loss, eager_graphs), (compiled, compiled_loss, graphs) = runs[False], runs[True]
    assert eager_graphs == 0 and graphs >= 1, (eager_graphs, graphs)  # the compiled step really compiled
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-8, atol=0)
    assert float(eager_loss[-1]) < float(eager_loss[0]) - 50  # it trained
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-7, atol=1e-9, msg=name)

    # a second and a third model of the same architecture: the same Program, and no recompilation
    before = counters["stats"]["unique_graphs"]
    torch.compiler.set_stance("fail_on_recompile")
    try:
        for seed in (1, 2):
            model, step = _step(method, seed, data, True)
            assert step.program is functional.program_for(compiled, True)
            for r in rows[:3]:
                step(r)
    finally:
        torch.compiler.set_stance("default")
    assert counters["stats"]["unique_graphs"] == before


# -- no host sync in a chunk's bookkeeping ---------------------------------------------------------------------
SYNCING = ("item", "tolist", "cpu", "numpy", "nonzero", "__bool__", "__int__", "__float__", "__index__")


def test_a_chunks_metric_folding_reads_nothing_back_from_the_device(mirror, monkeypatch):
    """torchmetrics' MeanMetric checks NaNs with ``if isnan(x).any()`` and turns a weight given as a number into a
    tensor by a host-to-device copy; the fast path's folding does neither (mocked: every Tensor method that
    reads a value back to the host, and torch.as_tensor / torch.tensor of host numbers, are recorded)."""
    from aevb.fast.loop import FastLoop

    calls: list[str] = []
    fold = FastLoop._fold_metrics

    def watched(self, sums, n):
        with monkeypatch.context() as m:
            for name in SYNCING:
                original = getattr(torch.Tensor, name)
                m.setattr(torch.Tensor, name, _recording(original, name, calls))
            for name in ("as_tensor", "tensor"):
                m.setattr(torch, name, _recording(getattr(torch, name), f"torch.{name}", calls))
            fold(self, sums, n)
        calls.append("fold")

    monkeypatch.setattr(FastLoop, "_fold_metrics", watched)
    _, model, trainer = _fit(True, 130, [f"data.mirror={mirror}", "model=wake_sleep"])
    assert calls.count("fold") >= 3 and trainer.global_step == 130
    assert [c for c in calls if c != "fold"] == [], "a chunk's folding synced with the device"
    assert torch.isfinite(trainer.callback_metrics["train/elbo_running"])  # the meters were fed
    assert abs(float(trainer.callback_metrics["train/sleep_logq"])) > 0


def _recording(fn, name, calls):
    def wrapper(*args, **kwargs):
        calls.append(name)
        return fn(*args, **kwargs)
    return wrapper


# -- the self-check -------------------------------------------------------------------------------------------
def _fake_compile(broken: bool):
    """A stand-in for torch.compile (fast: nothing is compiled): the function itself, or one that gets its
    images slightly wrong (a compiler bug that changes the numbers)."""
    def compile(fn):
        if not broken or fn.__name__ != "_aevb_loss":
            return fn
        return lambda enc, dec, x, eps: fn(enc, dec, x * 0.99, eps)
    return compile


@pytest.mark.parametrize("broken", [False, True])
def test_the_self_check_keeps_a_good_compiled_step_and_replaces_a_broken_one_training_nothing(
        mirror, monkeypatch, capfd, broken):
    monkeypatch.setattr(functional, "_PROGRAMS", {})
    monkeypatch.setattr(torch, "compile", _fake_compile(broken))
    args = [f"data.mirror={mirror}", "fast.compile=true"]
    _, checked, _ = _fit(True, 40, args)
    out = capfd.readouterr().out
    lines = [ln for ln in out.splitlines() if "self-check" in ln]
    _, unchecked, _ = _fit(True, 40, [*args, "fast.self_check=false"])
    if broken:
        assert len(lines) == 1 and "self-check failed at step" in lines[0] and "the compiled step differs" in lines[0], out
        assert "eager steps from here" in lines[0] and "nats per datapoint" in lines[0]
        monkeypatch.setattr(torch, "compile", _fake_compile(False))
        monkeypatch.setattr(functional, "_PROGRAMS", {})
        _, eager, _ = _fit(True, 40, [f"data.mirror={mirror}", "fast.compile=false"])
        # the checked run went on eagerly from the state it had before the check: exactly the eager run
        for p, q in zip(eager.parameters(), checked.parameters()):
            assert torch.equal(p, q)
        assert any(not torch.equal(p, q) for p, q in zip(eager.parameters(), unchecked.parameters()))
    else:
        assert lines == [], out
        for p, q in zip(unchecked.parameters(), checked.parameters()):  # the check trained nothing
            assert torch.equal(p, q)


# -- a failed CUDA graph capture -------------------------------------------------------------------------------
class _FakeCuda:
    """Just enough of torch.cuda for GraphedStep: streams (the current one tracked) and a graph whose capture
    fails as a real one does when the step does something capture forbids (capture_end raises again)."""

    def __init__(self):
        self.current, self.events = "default", []

    def Stream(self):  # noqa: N802 (torch's name)
        cuda = self

        class Stream:
            name = f"side{len(cuda.events)}"

            def wait_stream(self, other):
                pass

        return Stream()

    def current_stream(self):
        return self

    def wait_stream(self, other):
        pass

    def stream(self, s):
        cuda = self

        class Ctx:
            def __enter__(self):
                self.prev, cuda.current = cuda.current, s.name

            def __exit__(self, *exc):
                cuda.current = self.prev

        return Ctx()

    def synchronize(self):
        self.events.append("synchronize")

    def CUDAGraph(self):  # noqa: N802
        cuda = self

        class Graph:
            def capture_begin(self):
                cuda.capturing = True

            def capture_end(self):
                cuda.capturing = False
                raise RuntimeError("CUDA error: operation failed due to a previous error during capture")

            def replay(self):
                raise AssertionError("a failed capture is never replayed")

        return Graph()


class _FakeStep:
    adagrad, uncounted = ["state"], 0

    def __init__(self, cuda):
        self.cuda, self.calls = cuda, []

    def __call__(self, rows):
        if getattr(self.cuda, "capturing", False):
            raise RuntimeError("operation not permitted when stream is capturing")
        self.calls.append(self.cuda.current)
        self.uncounted += 1


def test_a_failed_graph_capture_ends_on_a_clean_stream_with_one_line_then_eager_steps(capsys):
    cuda = _FakeCuda()
    step = _FakeStep(cuda)
    graphed = GraphedStep(step, warmup=2, cuda=cuda)
    rows = torch.arange(4)
    for _ in range(5):
        graphed(rows)
    assert cuda.current == "default"  # not left on the capture stream
    assert graphed.failed and "synchronize" in cuda.events
    # two warm-up steps on a side stream, then (capture failed) eager steps on the default stream
    assert step.calls[:2] != ["default", "default"] and step.calls[2:] == ["default"] * 3
    assert step.uncounted == 5  # the failed capture counted no step
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("fast path: CUDA graph capture failed (RuntimeError:")
    assert "operation not permitted when stream is capturing" in lines[0] and "eager steps from here" in lines[0]


# -- packs: the compiled pack step ------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["aevb", "wake_sleep"])
def test_the_compiled_pack_step_equals_the_eager_pack_step_and_the_single_runs(mnist, method):
    """The part of a graphed pack a CPU can run: the pack's updates compiled (vmapped gradients and stacked Adagrad;
    the members' draws eager, from their own generators), N_z = 3 packed with N_z = 5 by padding. In float64,
    20 steps: compiled pack == eager pack == each member's single run, to 1e-9 (see the module docstring)."""
    from aevb.packed.steps import PackedSteps
    from test_packed import _member

    data = mnist.splits["train"][:1000].double()
    rows = torch.randint(0, 1000, (2, 20, 100), generator=torch.Generator().manual_seed(0))
    params = {}
    for compile in (False, True):
        members = [_member(3, 0, data, method, hidden=64), _member(5, 1, data, method, hidden=64)]
        gens = [torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)]
        from torch._dynamo.utils import counters

        steps = PackedSteps(members, compile=compile)
        graphs = counters["stats"]["unique_graphs"]
        n, totals = steps.run(rows, data, True, gens, stop_now=lambda: False)
        assert n == 20 and bool(torch.isfinite(totals).all())
        assert (counters["stats"]["unique_graphs"] > graphs) == compile  # compiled, or not at all
        assert steps.compiled == compile and not steps.check_pending  # a compiled pack passed its self-check
        params[compile] = [list(m.model.parameters()) for m in members]
    for k, seed in enumerate((7, 8)):
        alone = _member((3, 5)[k], k, data, method, hidden=64)
        alone.base_step.binarize = True
        torch.manual_seed(seed)
        for r in rows[k]:
            alone.base_step(r)
        for p, q, a in zip(params[False][k], params[True][k], alone.model.parameters()):
            torch.testing.assert_close(q, p, rtol=0, atol=1e-9)
            torch.testing.assert_close(a, p, rtol=0, atol=1e-9)


def test_the_pack_self_check_replaces_a_broken_compiled_pack_step_training_nothing(mnist, monkeypatch, capsys):
    from aevb.packed.steps import PackedSteps
    from test_packed import _member

    def broken_compile(fn):
        if fn.__name__ != "_update":
            return fn
        return lambda params, sums, x, eps: fn(params, sums, x * 0.99, eps)

    data = mnist.splits["train"][:1000].double()
    rows = torch.randint(0, 1000, (2, 10, 100), generator=torch.Generator().manual_seed(0))
    results = {}
    for compile in (False, True):
        monkeypatch.setattr(torch, "compile", broken_compile)
        members = [_member(3, 0, data, hidden=64), _member(5, 1, data, hidden=64)]
        steps = PackedSteps(members, compile=compile)
        gens = [torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)]
        results[compile] = steps.run(rows, data, True, gens, stop_now=lambda: False)[1], members, steps
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "self-check" in ln]
    assert len(lines) == 1 and lines[0].startswith("packed sweep: self-check failed at step") and "compiled" in lines[0]
    (eager_totals, eager, _), (checked_totals, checked, steps) = results[False], results[True]
    assert not steps.compiled  # it went on with the eager pack step, from the state before the check
    assert torch.equal(eager_totals, checked_totals)
    for a, b in zip(eager, checked):
        assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
