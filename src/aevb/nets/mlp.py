"""The paper's MLP (Appendix C): one hidden layer in encoder and decoder, tanh as the paper
(``activation`` picks another, e.g. relu as pytorch/examples' VAE)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from aevb.activations import activation as make_activation
from aevb.errors import require_positive_int
from aevb.likelihoods import Likelihood
from aevb.nets.base import Decoder, Encoder


class MLPEncoder(Encoder):
    """h = act(W1 x + b1); mu = W2 h + b2; log sigma^2 = W3 h + b3 (act = tanh by default)."""

    latent_padding_exact = True  # W2, b2, W3, b3 have one row per latent unit

    def __init__(self, data_shape: Sequence[int], latent_dim: int, hidden_dim: int = 500, activation: str = "tanh"):
        super().__init__(data_shape, latent_dim)
        require_positive_int("net.encoder.hidden_dim", hidden_dim)
        act = make_activation("net.encoder.activation", activation)
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(self.data_shape), hidden_dim), act)
        self.mean = nn.Linear(hidden_dim, latent_dim)
        self.logvar = nn.Linear(hidden_dim, latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.hidden(x)
        return self.mean(h), self.logvar(h)

    def logvar_head(self):
        return [self.logvar.weight, self.logvar.bias]


class MLPDecoder(Decoder):
    """h = act(W4 z + b4); raw likelihood parameters = W5 h + b5 (and W6 h + b6 for a Gaussian)."""

    latent_padding_exact = True  # z meets only W4, one column per latent unit

    def __init__(self, data_shape: Sequence[int], latent_dim: int, likelihood: Likelihood, hidden_dim: int = 500,
                 activation: str = "tanh"):
        super().__init__(data_shape, latent_dim, likelihood)
        require_positive_int("net.decoder.hidden_dim", hidden_dim)
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(latent_dim, hidden_dim),
            make_activation("net.decoder.activation", activation),
            nn.Linear(hidden_dim, likelihood.n_params * math.prod(self.data_shape)),
        )

    def output_bias(self):
        return [self.net[-1].bias]

    def raw(self, z: Tensor) -> Tensor:
        return self.net(z).unflatten(1, (self.likelihood.n_params, *self.data_shape))
