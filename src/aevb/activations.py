"""The hidden layers' nonlinearity, chosen by name (``net.encoder.activation`` / ``net.decoder.activation``).

The paper uses tanh; the VAE most people start from (pytorch/examples) uses ReLU. The names are known
without importing torch, so a wrong one is answered before the heavy imports (``aevb.cli.check_values``).
"""

from __future__ import annotations

from aevb.errors import require

ACTIVATIONS = ("tanh", "relu", "leaky_relu", "elu", "silu", "gelu")


def check_activation(key: str, name: object) -> str:
    require(isinstance(name, str) and name in ACTIVATIONS,
            f"{key} must be one of {', '.join(ACTIVATIONS)}, got {name!r}")
    return name  # type: ignore[return-value]


def activation(key: str, name: str):
    """A fresh module for ``name`` (PyTorch's defaults: leaky_relu slope 0.01, elu alpha 1, exact gelu)."""
    from torch import nn

    check_activation(key, name)
    return {"tanh": nn.Tanh, "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU, "silu": nn.SiLU,
            "gelu": nn.GELU}[name]()
