"""Packed sweeps: the runs of a sweep that share one program, trained as one vectorised ensemble.

``launch`` groups a multirun's jobs into packs (hydra/launcher=packed), ``coordinator`` runs
a pack's members as normal runs in threads of one process, and ``steps`` runs their
optimiser steps together with ``torch.func.vmap``.
"""
