"""Several normal runs in one process, their training steps executed together.

Each member of a pack is an ordinary ``aevb-train`` job (Hydra's run_job, aevb.train.run,
Lightning, its callbacks, checkpoints and loggers) in a thread of its own. The members take
turns: a member holds the *baton* whenever it does host work (building, validation, curve
points, checkpoints, logging), so only one runs at a time and process-wide state (the global
random generators, Hydra's config singleton, the logging handlers) is the running member's
own; each member's state is put aside when it hands the baton on and put back when it takes
it again. The fast path's ``training_step`` hands its chunk of steps to :meth:`Pack.run_chunk`
instead of running it; once every member still training has handed in a chunk, the chunks
run together (aevb.packed.steps) and every member continues as if it had run its own.

A member that cannot run its steps packed (another optimiser, Adagrad still in its warm-up)
runs them alone, inside its own random state; a member that leaves the fast path altogether
trains alone while holding the baton (correct, just not faster); a member that fails (a
divergence) leaves the pack, and the others go on.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from aevb.packed.steps import PackedSteps, can_share, packable
from aevb.resume import capture_rng, restore_rng

_ACTIVE: "Pack | None" = None


def active_pack() -> "Pack | None":
    return _ACTIVE


@dataclass
class _Member:
    state: str = "starting"  # starting | running | waiting (a chunk handed in) | done
    loop: object = None
    chunk: object = None
    saved: dict = field(default_factory=dict)  # process-wide state put aside while it waits
    result: object = None  # steps run, or the exception the chunk raised
    generator: object = None  # its draws' generator in packed steps, in its state at each chunk


class Pack:
    """``pad_latents``: let members of different latent sizes share a program by exact padding: "auto" (on
    CUDA, where the padded work is free next to the kernel launches it saves), True or False."""

    def __init__(self, size: int, pad_latents: str | bool = "auto"):
        self.pad_latents = pad_latents
        self.baton = threading.Lock()
        self.cond = threading.Condition()
        self.members = [_Member() for _ in range(size)]
        self.local = threading.local()
        self.programs: dict = {}  # the PackedSteps of each group of members that ran together
        self.packed_chunks = 0  # chunks run by more than one member together (tested)
        self.steps_together = 0  # members' fast-path steps run side by side with another member's (reported)
        self.steps_alone = 0  # members' fast-path steps run on their own (reported)

    # -- membership ----------------------------------------------------------------------------------
    def run_member(self, index: int, fn):
        """Run ``fn()`` (one job) as member ``index``; the baton is held except while its steps run."""
        self.baton.acquire()
        self.local.index = index
        self.members[index].state = "running"
        try:
            return fn()
        finally:
            self.baton.release()
            with self.cond:
                self.members[index].state = "done"
                self._run_if_all_waiting()

    # -- chunks --------------------------------------------------------------------------------------
    def run_chunk(self, loop, chunk) -> int:
        """Hand in this member's chunk, let the others run, return the steps run for it."""
        me = self.members[self.local.index]
        me.saved = _put_aside()
        with self.cond:
            me.loop, me.chunk, me.state, me.result = loop, chunk, "waiting", None
        self.baton.release()
        try:
            with self.cond:
                self._run_if_all_waiting()
                while me.state == "waiting":
                    self.cond.wait()
        finally:
            self.baton.acquire()
            _restore(me.saved)
        if isinstance(me.result, BaseException):
            raise me.result
        return me.result

    def _run_if_all_waiting(self) -> None:
        """(With ``cond`` held.) When no member is doing host work, run every handed-in chunk."""
        waiting = [m for m in self.members if m.state == "waiting"]
        if not waiting or any(m.state in ("starting", "running") for m in self.members):
            return
        for group in _groups(waiting, self.pad_latents):
            try:
                self._run_group(group)
            except Exception as exc:  # the members raise it in their own threads (their runs fail)
                for m in group:
                    m.result = exc
        for m in waiting:
            m.state = "running"
        self.cond.notify_all()

    def _run_group(self, group: list[_Member]) -> None:
        loops = [m.loop for m in group]
        for loop in loops:
            loop.ensure_step()
        chunk = group[0].chunk
        # (an epoch's smaller last batch, data.drop_last=false, is a one-step chunk each member runs itself)
        if len(group) == 1 or not all(packable(loop) for loop in loops) or any(loop.partial(chunk) for loop in loops):
            for m in group:  # alone, inside the member's own random state
                with _inside(m.saved):
                    m.result = m.loop.run_steps(m.chunk)
                self.steps_alone += m.result
            return
        data = loops[0].data
        rows = torch.stack([loop.batches[chunk.start:chunk.stop] for loop in loops])
        steps = self._steps_for(loops)
        generators = [_generator(m.saved, data.device, self._generator_of(m, data.device)) for m in group]
        stop_now = lambda: any(loop.trainer.received_sigterm for loop in loops)  # noqa: E731
        n, totals = steps.run(rows, data, loops[0].dm.binarize == "dynamic", generators, stop_now)
        for m, g, sums in zip(group, generators, totals):
            _keep_generator(m.saved, g)
            m.loop.base_step.sums.add_(sums)
            m.loop.base_step.uncounted += n
            m.result = n
        self.packed_chunks += 1
        self.steps_together += n * len(group)


    def _steps_for(self, loops) -> PackedSteps:
        """The group's PackedSteps, built once for the group (its compilation and CUDA graph are kept): compiled
        when the members' steps are, graphed on CUDA when theirs would be (fast.compile, fast.cuda_graph)."""
        key = tuple(id(loop) for loop in loops)
        if key not in self.programs:
            head = loops[0]
            graph = head.data.device.type == "cuda" and head.cuda_graph
            done = {id(m.loop) for m in self.members if m.state == "done"}
            self.programs = {k: v for k, v in self.programs.items() if not set(k) & done}  # a member left: stale
            self.programs[key] = PackedSteps(loops, compile=head.base_step.compiled, graph=graph,
                                             self_check=head.self_check)
        return self.programs[key]

    def _generator_of(self, member: _Member, device) -> torch.Generator:
        """The member's own generator object for the pack's device (one for its life: a CUDA graph holds it)."""
        if member.generator is None or member.generator.device != device:
            member.generator = torch.Generator(device=device)
        return member.generator


def _groups(waiting: list[_Member], pad_latents: str | bool = "auto") -> list[list[_Member]]:
    """Members whose chunks are the same steps, on the same data, with networks that fit one program."""
    groups: list[list[_Member]] = []
    for m in waiting:
        pad = pad_latents is True or (pad_latents == "auto" and m.loop.data.device.type == "cuda")
        for g in groups:
            head = g[0]
            if (head.chunk == m.chunk and head.loop.data.shape == m.loop.data.shape
                    and head.loop.dm.binarize == m.loop.dm.binarize and _same_data(head.loop, m.loop)
                    and type(head.loop.model) is type(m.loop.model)
                    and (pad or head.loop.model.latent_dim == m.loop.model.latent_dim)
                    and can_share(head.loop.model, m.loop.model)):
                g.append(m)
                break
        else:
            groups.append([m])
    return groups


def _same_data(a, b) -> bool:
    if a.data is b.data:
        return True
    if a.data.device != b.data.device or not torch.equal(a.data, b.data):
        return False
    b.data = a.data  # one resident copy for the pack from now on
    return True


# -- process-wide state of a member ----------------------------------------------------------------
def _put_aside() -> dict:
    from hydra.core.hydra_config import HydraConfig

    root = logging.getLogger()
    return {"rng": capture_rng(), "hydra": HydraConfig.instance().cfg, "log_handlers": list(root.handlers)}


def _restore(saved: dict) -> None:
    from hydra.core.hydra_config import HydraConfig

    restore_rng(saved["rng"])
    HydraConfig.instance().cfg = saved["hydra"]
    logging.getLogger().handlers[:] = saved["log_handlers"]


@contextmanager
def _inside(saved: dict):
    """Run with the member's random state as the global one; keep where it ends."""
    with torch.random.fork_rng(devices=_cuda_devices()):
        restore_rng(saved["rng"])
        yield
        saved["rng"] = capture_rng()


def _cuda_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() and torch.cuda.is_initialized() else []


def _generator(saved: dict, device: torch.device, g: torch.Generator | None = None) -> torch.Generator:
    """A generator (``g``, or a new one) in the member's state for ``device``: the stream its single run's steps
    draw from (aevb.resume.capture_rng: the CPU's, or the current CUDA device's as "cuda_device")."""
    g = torch.Generator(device=device) if g is None else g
    g.set_state(saved["rng"]["cuda_device"] if device.type == "cuda" else saved["rng"]["torch"])
    return g


def _keep_generator(saved: dict, g: torch.Generator) -> None:
    saved["rng"]["cuda_device" if g.device.type == "cuda" else "torch"] = g.get_state()


@contextmanager
def activated(pack: Pack):
    """Make ``pack`` the process's pack while its members run."""
    global _ACTIVE
    _ACTIVE = pack
    try:
        yield pack
    finally:
        _ACTIVE = None
