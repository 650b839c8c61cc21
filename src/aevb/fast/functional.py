"""The fast path's objectives as pure functions of explicit tensor lists, so that one ``torch.compile``
serves every model of an architecture and the compiled step draws exactly the eager step's numbers.

Two things would make a compiled step differ from the eager one, and both are kept out of the
compiled region:

* **Random draws.** Inductor replaces ``randn`` / ``bernoulli`` inside a compiled region by its own
  generator, so a compiled loss that drew its reparameterisation noise would see other numbers than
  the eager step (and than the standard loop, and a packed member's single run). Every draw here
  (binarisation, the noise eps, dreams) is made outside, eagerly, in the eager step's order and
  shapes, and passed in as a tensor.
* **Module objects.** Dynamo guards on the identity of every module a compiled function reaches; a
  function closing over the model compiles again for each model (each member of a pack, torchmetrics
  meters included) and past its recompile limit the rest run eagerly. These functions reach only a
  :class:`Program`'s *template*: one copy of the networks per architecture, shared by every model
  with the same structure (:func:`program_for`); each call passes that model's own parameters.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor
from torch.func import functional_call

from aevb.elbo import ElboTerms, elbo, log_normal, weight_penalty

_PROGRAMS: dict[tuple, "Program"] = {}


def signature(model, compile: bool) -> tuple:
    """What a Program bakes in: the networks' structure, the objective's settings, dtype and device."""
    lik = model.likelihood
    return (type(model).__name__, repr(model.encoder), repr(model.decoder), type(lik).__name__,
            tuple(sorted(vars(lik).items())), model.n_samples, model.estimator, float(getattr(model, "beta", 1.0)),
            bool(model.weight_prior), int(model.n_train), str(model.dtype), str(model.device), bool(compile))


def program_for(model, compile: bool) -> "Program":
    """The Program of this model's architecture; built (and compiled, lazily at its first call) once per process."""
    key = signature(model, compile)
    if key not in _PROGRAMS:
        _PROGRAMS[key] = Program(model, compile)
    return _PROGRAMS[key]


def tensors(net) -> list[Tensor]:
    """A network's parameters then buffers, in the order a Program's names follow."""
    return [*(p for _, p in net.named_parameters()), *(b for _, b in net.named_buffers())]


class Program:
    """AEVB's loss and wake-sleep's two phase objectives of one architecture, as functions of the
    encoder's and decoder's tensor lists (``tensors(model.encoder)``, ``tensors(model.decoder)``)."""

    def __init__(self, model, compile: bool):
        self.encoder, self.decoder = copy.deepcopy(model.encoder), copy.deepcopy(model.decoder)  # templates
        self.likelihood = self.decoder.likelihood
        self.latent_shape = tuple(model.encoder.latent_shape)
        self.n_samples, self.estimator = model.n_samples, model.estimator
        self.beta = float(getattr(model, "beta", 1.0))
        self.weight_prior, self.n_train = bool(model.weight_prior), int(model.n_train)
        self.names = {net: ([n for n, _ in getattr(model, net).named_parameters()],
                            [n for n, _ in getattr(model, net).named_buffers()]) for net in ("encoder", "decoder")}
        self.compiled = bool(compile)
        wrap = torch.compile if compile else (lambda fn: fn)
        self.aevb_loss = wrap(self._aevb_loss)
        self.wake_loss = wrap(self._wake_loss)
        self.sleep_loss = wrap(self._sleep_loss)
        self.decode = wrap(self._decode)

    # -- the pieces ------------------------------------------------------------------------------
    def _state(self, net: str, ts: list[Tensor]) -> dict[str, Tensor]:
        params, buffers = self.names[net]
        return dict(zip(params + buffers, ts))

    def _params(self, net: str, ts: list[Tensor]) -> list[Tensor]:
        return ts[:len(self.names[net][0])]

    def _prior(self, params: list[Tensor]) -> Tensor:
        if not self.weight_prior:
            return params[0].new_zeros(())
        return weight_penalty(params, self.n_train)

    def _terms(self, enc: list[Tensor], dec: list[Tensor], x: Tensor, eps: Tensor, fixed: bool) -> ElboTerms:
        enc_state, dec_state = self._state("encoder", enc), self._state("decoder", dec)

        def encode(x):
            mean, logvar = functional_call(self.encoder, enc_state, (x,))
            return (mean.detach(), logvar.detach()) if fixed else (mean, logvar)

        return elbo(x, encode, lambda z: functional_call(self.decoder, dec_state, (z,)), self.likelihood,
                    self.n_samples, self.estimator, eps=eps)

    @staticmethod
    def _sums(terms: ElboTerms) -> Tensor:
        return torch.stack([terms.elbo.sum(), terms.recon.sum(), terms.kl.sum()]).detach()

    # -- the objectives (uncompiled; the public names are these, compiled or not) ------------------
    def _aevb_loss(self, enc: list[Tensor], dec: list[Tensor], x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """AEVB's training loss (-(recon - beta KL) per datapoint + the weight prior) and the batch's ELBO sums."""
        terms = self._terms(enc, dec, x, eps, fixed=False)
        prior = self._prior(self._params("encoder", enc) + self._params("decoder", dec))
        return -terms.objective(self.beta).mean() + prior, self._sums(terms)

    def _wake_loss(self, enc: list[Tensor], dec: list[Tensor], x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """Wake: -log p(x|z) per datapoint, z ~ q(z|x) held fixed, + the decoder's weight prior; the ELBO sums."""
        terms = self._terms(enc, dec, x, eps, fixed=True)
        return -terms.recon.mean() + self._prior(self._params("decoder", dec)), self._sums(terms)

    def _sleep_loss(self, enc: list[Tensor], z: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """Sleep: -log q(z|x) per dream + the encoder's weight prior; the dreams' summed log q."""
        mean, logvar = functional_call(self.encoder, self._state("encoder", enc), (x,))
        logq = log_normal(z, mean, logvar, batch_dims=1)
        return -logq.mean() + self._prior(self._params("encoder", enc)), logq.sum().detach()

    def _decode(self, dec: list[Tensor], z: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            return functional_call(self.decoder, self._state("decoder", dec), (z,))

    # -- the draws, eager, in the eager step's order and shapes ------------------------------------
    def noise(self, n: int, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """eps ~ N(0, I), (L, n, *latent_shape): what ``aevb.elbo.reparameterize`` would draw."""
        return torch.randn((self.n_samples, n, *self.latent_shape), generator=generator, dtype=like.dtype,
                           device=like.device)

    def dream_latents(self, n: int, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """z ~ N(0, I), (n, *latent_shape): what ``WakeSleep.dream`` draws first."""
        return torch.randn((n, *self.latent_shape), generator=generator, dtype=like.dtype, device=like.device)
