"""The GPU path's claims on a real CUDA device (issue 18; ``pytest -m gpu``, run by ``make gpu-check``).

Skipped without a GPU (CI has none); tests/test_compiled.py, test_rng_state.py and test_placement.py check on
the CPU what a CPU can run of the same code. One test per claim: compiled == eager on the same draws (1),
no host sync inside a chunk (2), a graphed pack equals its members' single runs (3), the self-check passes
a real compiled and graphed step (4), the CUDA random state resumes exactly (5), gpu_parallel places jobs
on the GPU. Tolerances as on the CPU (see test_compiled's docstring): float64, so rounding stays ~1e-12.
"""

from __future__ import annotations

import json

import pytest
import torch

from helpers import compose, run_cli

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make gpu-check runs these)")]
STEPS = 50


def _cuda_data(mnist, n: int = 1000) -> torch.Tensor:
    return mnist.splits["train"][:n].double().cuda()


def _fit_gpu(mirror, steps: int, overrides=(), ckpt_path=None, callbacks=()):
    """Train through Lightning on the GPU (the fast path); returns (model, trainer, loop)."""
    import lightning as L

    from aevb.building import build
    from aevb.fast import enable_fast_path

    cfg = compose(["logger=csv", "callbacks=none", "fast.steps_per_call=64", f"data.mirror={mirror}", *overrides])
    L.seed_everything(0, verbose=False)
    dm, model = build(cfg)
    trainer = L.Trainer(accelerator="gpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=list(callbacks))
    loop = enable_fast_path(cfg.fast, trainer, model, dm)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model, trainer, loop


# -- 1: compiled == eager ------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["aevb", "wake_sleep"])
def test_gpu_compiled_and_eager_steps_agree_and_one_compilation_serves_every_model(mnist, method):
    from test_compiled import _step

    data = _cuda_data(mnist)
    rows = torch.randint(0, 1000, (STEPS, 100), generator=torch.Generator().manual_seed(0)).cuda()
    out = {}
    for compile in (False, True):
        model, step = _step(method, 0, data, compile)
        step.trace = []
        torch.manual_seed(123)
        for r in rows:
            step(r)
        out[compile] = (model, torch.stack(step.trace))
    (eager, eager_loss), (compiled, compiled_loss) = out[False], out[True]
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-8, atol=0)
    for p, q in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-7, atol=1e-9)
    torch.compiler.set_stance("fail_on_recompile")
    try:
        for seed in (1, 2):
            _, step = _step(method, seed, data, True)
            for r in rows[:3]:
                step(r)
    finally:
        torch.compiler.set_stance("default")


# -- 2: no host sync inside a chunk ----------------------------------------------------------------------------
def test_gpu_fast_path_chunks_never_wait_for_the_device(mirror, monkeypatch):
    """Every training_step after the first (which compiles, captures and self-checks) runs under
    ``torch.cuda.set_sync_debug_mode("error")``: any call that waits for the device raises."""
    from aevb.fast.loop import FastLoop

    calls = {"n": 0}
    original = FastLoop.training_step

    def strict(self, chunk):
        calls["n"] += 1
        if calls["n"] == 1:
            return original(self, chunk)
        torch.cuda.set_sync_debug_mode("error")
        try:
            return original(self, chunk)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(FastLoop, "training_step", strict)
    for method in ("aevb", "wake_sleep"):
        calls["n"] = 0
        model, trainer, _ = _fit_gpu(mirror, 300, [f"model={method}", "fast.compile=true"])
        assert trainer.global_step == 300 and calls["n"] >= 4


# -- 3: a graphed pack -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["aevb", "wake_sleep"])
def test_gpu_graphed_pack_members_equal_their_single_runs(mnist, method):
    from aevb.packed.steps import PackedSteps
    from test_packed import _member

    data = _cuda_data(mnist)
    rows = torch.randint(0, 1000, (2, 30, 100), generator=torch.Generator().manual_seed(0)).cuda()
    members = [_member(3, 0, data, method, hidden=500), _member(200, 1, data, method, hidden=500)]
    gens = [torch.Generator(device="cuda").manual_seed(7), torch.Generator(device="cuda").manual_seed(8)]
    steps = PackedSteps(members, compile=True, graph=True)
    steps.run(rows[:, :15], data, True, gens, stop_now=lambda: False)
    steps.run(rows[:, 15:], data, True, gens, stop_now=lambda: False)  # a second chunk replays the same graph
    assert steps.graph is not None and steps.graph.graph is not None and not steps.graph.failed
    for k, seed in enumerate((7, 8)):
        alone = _member((3, 200)[k], k, data, method, hidden=500)
        alone.base_step.binarize = True
        torch.cuda.manual_seed(seed)
        for r in rows[k]:
            alone.base_step(r)
        gap = max(float((p - q).abs().max()) for p, q in zip(alone.model.parameters(), members[k].model.parameters()))
        assert gap < 1e-9, f"graphed packed member {k} differs from its single run by {gap:.1e}"


# -- 4: the self-check on this GPU -----------------------------------------------------------------------------
def test_gpu_self_check_passes_the_compiled_graphed_step(mirror, capfd):
    from aevb.fast.step import GraphedStep

    _, trainer, loop = _fit_gpu(mirror, 200, ["fast.compile=true", "fast.cuda_graph=true"])
    out = capfd.readouterr().out
    assert "self-check failed" not in out and "capture failed" not in out, out
    assert isinstance(loop.step, GraphedStep) and loop.step.graph is not None and loop.base_step.compiled
    assert trainer.global_step == 200


# -- 5: CUDA random state in checkpoints -----------------------------------------------------------------------
def test_gpu_resumed_fast_run_continues_the_uninterrupted_one(mirror, tmp_path):
    whole, _, _ = _fit_gpu(mirror, 130)
    _, trainer, _ = _fit_gpu(mirror, 60)
    ckpt = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(ckpt)
    assert "cuda_device" in torch.load(ckpt, weights_only=False)["aevb_rng"]
    rest, trainer, _ = _fit_gpu(mirror, 130, ckpt_path=str(ckpt))
    assert trainer.global_step == 130
    for p, q in zip(whole.parameters(), rest.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)


# -- gpu_parallel on a real GPU --------------------------------------------------------------------------------
def test_gpu_parallel_runs_each_job_on_the_gpu(mirror, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "seed=0,1", "data=frey_face", "max_samples=2000", "model.latent_dim=2", "logger=csv",
                   "callbacks=none", "trainer=gpu", "hydra/launcher=gpu_parallel", f"hydra.sweep.dir={sweep}",
                   env_extra={"AEVB_DATA_MIRROR": str(mirror)}, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for j in range(2):
        summary = json.loads((sweep / str(j) / "summary.json").read_text())
        assert summary["samples_seen"] == 2000 and summary["device"].startswith("cuda")
        assert summary["cuda_visible_devices"] not in ("", None)
    assert "2 of 2 jobs finished" in proc.stdout
