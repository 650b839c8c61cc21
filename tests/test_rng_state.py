"""The CUDA generator in a checkpoint is the training device's: a job pinned to one GPU and resumed on a node
with more, or any DDP rank, restores it onto the device it trains on (CPU test: torch.cuda is a fake here)."""

from __future__ import annotations

import pytest
import torch

from aevb.resume import capture_rng, restore_rng


@pytest.fixture
def fake_cuda(monkeypatch):
    """Eight GPUs whose generator states are distinct tensors; set_rng_state calls are recorded."""
    states = {i: torch.full((16,), i, dtype=torch.uint8) for i in range(8)}
    restored: list = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": states[torch.device(device).index].clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append((state, device)))
    return states, restored


def test_the_training_devices_cuda_state_is_saved_and_restored_on_the_device_the_run_trains_on(fake_cuda):
    states, restored = fake_cuda
    saved = capture_rng(torch.device("cuda", 3))  # a gpu_parallel job sees its GPU as cuda:0; here cuda:3
    assert torch.equal(saved["cuda_device"], states[3]) and "cuda" not in saved
    restore_rng(saved, torch.device("cuda", 0))  # resumed on another node with 8 GPUs, training on cuda:0
    assert len(restored) == 1 and torch.equal(restored[0][0], states[3]) and restored[0][1] == torch.device("cuda", 0)


def test_a_ddp_rank_restores_the_saved_state_onto_its_own_device(fake_cuda):
    states, restored = fake_cuda
    saved = capture_rng("cuda:0")  # rank 0 writes the checkpoint
    for rank in range(4):
        restore_rng(saved, torch.device("cuda", rank))
    assert [d.index for _, d in restored] == [0, 1, 2, 3]
    assert all(torch.equal(s, states[0]) for s, _ in restored)


def test_older_checkpoints_with_every_gpus_state_restore_the_training_devices(fake_cuda):
    states, restored = fake_cuda
    saved = capture_rng("cpu")
    assert "cuda_device" not in saved  # a CPU run saves no CUDA state
    saved["cuda"] = [states[0], states[1]]  # as written before: get_rng_state_all() of a 2-GPU node
    restore_rng(saved, "cuda:1")
    assert torch.equal(restored[0][0], states[1]) and restored[0][1] == torch.device("cuda", 1)
    restored.clear()
    restore_rng(saved, "cpu")
    assert restored == []


def test_the_cpu_streams_round_trip():
    saved = capture_rng("cpu")
    a = torch.rand(3)
    restore_rng(saved, "cpu")
    assert torch.equal(torch.rand(3), a)
