"""Variational auto-encoders, and the VAE-BSS model (Neri, Badeau & Depalle, EUSIPCO 2021).

`VAE(shape, n_sources=K, ...)` encodes an input `(B, C, H, W)` into K latent Gaussians
(μ, log σ²) `(B, K, latent_dim)`, decodes each latent with **one shared decoder** into a
source `(B, K, C, H, W)` with values in (0, 1) (sigmoid), and reconstructs the input as
the sum of the K sources. K = 1 is an ordinary VAE; K ≥ 2 is VAE-BSS, trained on
mixtures only: nothing tells the sources apart but the shared decoder and the latent
prior, so each latent learns to carry one component of the mixture.

Architectures (`arch`):
- "mlp": the paper's: encoder C·H·W → 700 → 600 → 500 → 400 → 300 → 2·K·latent_dim,
  decoder latent_dim → 300 → … → 700 → C·H·W, each hidden layer Linear → BatchNorm →
  ReLU. The decoder sees the K latents as one batch of B·K (so its batch norm pools the
  sources, as in the reference code).
- "conv": two stride-2 convolutions (H and W divisible by 4) → linear heads; the decoder
  mirrors it with transposed convolutions. For images larger than MNIST and for
  spectrogram patches.

`sigma_conditioned` (the CD variant of `denoising.py`): the noise level σ of the input is an
input too, a feature beside the flattened image (a constant channel for "conv") and beside
every latent in the decoder; σ = 0 (clean data) when not given.

`score(x, σ)` (the Prior protocol) is ∇ₓ of the ELBO at z = μ, by autograd: the gradient
of the model's own lower bound on log p_σ(x), which Tweedie's formula needs (TD).

`variational` is a real boolean switch: True samples z = μ + σ·ε in training and adds the
KL term; False is the deterministic auto-encoder (z = μ, no KL). The earlier code's
`--variational` flag was a string, so giving it any value selected the auto-encoder.
At evaluation (`model.eval()`) z = μ always: separation is deterministic.

`vae_loss`: Laplace negative log-likelihood Σ|x − x̂|/b (b = √0.5, the reference's unit
variance) + β·KL(q(z|x) ‖ N(0, I)), per item, averaged over the batch. β is warmed
up linearly from 0 to `beta` (the paper: to 0.5 over 50 epochs); `training.vae.VAELoss` is the
scheduled loss the training loop uses.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..errors import UserError
from .base import Prior, register_prior, sigma_per_sample

MLP_HIDDEN = (700, 600, 500, 400, 300)
CONV_CHANNELS = (32, 64)
LAPLACE_SCALE = math.sqrt(0.5)  # b of a unit-variance Laplace density (the reference's LaplaceLoss)


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear → BatchNorm1d → ReLU for every consecutive pair of `sizes`."""
    layers: list[nn.Module] = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
    return nn.Sequential(*layers)


def _conv_encoder(in_ch: int, channels: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c in channels:
        layers += [nn.Conv2d(in_ch, c, 4, stride=2, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
        in_ch = c
    return nn.Sequential(*layers, nn.Flatten())


def _conv_decoder(out_ch: int, channels: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    chans = list(reversed(channels))
    for a, b in zip(chans, chans[1:]):
        layers += [nn.ConvTranspose2d(a, b, 4, stride=2, padding=1), nn.BatchNorm2d(b), nn.ReLU()]
    layers.append(nn.ConvTranspose2d(chans[-1], out_ch, 4, stride=2, padding=1))
    return nn.Sequential(*layers)


@register_prior("vae")
class VAE(Prior):
    """A VAE with K latent sources and a shared decoder (K = 1: a plain VAE; K ≥ 2: VAE-BSS).

    Args:
        shape: (C, H, W) of the inputs.
        n_sources: K, latents (and decoded sources) per input.
        latent_dim: size of each latent (20 in the paper).
        arch: "mlp" or "conv" (see the module docstring).
        hidden: MLP hidden sizes, encoder order (the decoder mirrors them).
        channels: conv widths, encoder order.
        variational: True: a VAE (sampled z, KL term); False: a deterministic auto-encoder.
        sigma_conditioned: σ is an input of the encoder and the decoder (denoising mode CD).
    """

    def __init__(self, shape: Sequence[int] = (1, 28, 28), n_sources: int = 2, latent_dim: int = 20,
                 arch: Literal["mlp", "conv"] = "mlp", hidden: Sequence[int] = MLP_HIDDEN,
                 channels: Sequence[int] = CONV_CHANNELS, variational: bool = True,
                 sigma_conditioned: bool = False) -> None:
        super().__init__()
        for name, flag in (("variational", variational), ("sigma_conditioned", sigma_conditioned)):
            if not isinstance(flag, bool):
                raise UserError(f"{name} must be true or false, got {flag!r}")
        if arch not in ("mlp", "conv"):
            raise UserError(f"unknown VAE architecture {arch!r}; choose mlp or conv")
        if n_sources < 1 or latent_dim < 1:
            raise UserError(f"need n_sources >= 1 and latent_dim >= 1, got {n_sources}, {latent_dim}")
        self.shape = tuple(int(s) for s in shape)
        self.n_sources, self.latent_dim, self.arch = int(n_sources), int(latent_dim), arch
        self.hidden, self.channels, self.variational = tuple(hidden), tuple(channels), variational
        self.sigma_conditioned = sigma_conditioned
        extra = int(sigma_conditioned)  # the σ input
        c, h, w = self.shape
        if arch == "mlp":
            self.encoder = _mlp([c * h * w + extra, *self.hidden])
            features = self.hidden[-1]
            self.decoder_body = _mlp([latent_dim + extra, *reversed(self.hidden)])
            self.decoder_out = nn.Linear(self.hidden[0], c * h * w)
        else:
            scale = 2 ** len(self.channels)
            if h % scale or w % scale:
                raise UserError(f"conv VAE with {len(self.channels)} levels needs H and W divisible by {scale}, "
                                f"got {h}x{w}")
            self._grid = (self.channels[-1], h // scale, w // scale)
            features = math.prod(self._grid)
            self.encoder = _conv_encoder(c + extra, self.channels)
            self.decoder_body = nn.Sequential(nn.Linear(latent_dim + extra, features), nn.ReLU())
            self.decoder_out = _conv_decoder(c, self.channels)
        self.to_latents = nn.Linear(features, 2 * self.n_sources * latent_dim)

    def get_config(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "n_sources": self.n_sources, "latent_dim": self.latent_dim,
                "arch": self.arch, "hidden": list(self.hidden), "channels": list(self.channels),
                "variational": self.variational, "sigma_conditioned": self.sigma_conditioned}

    def _noise_level(self, sigma: float | Tensor | None, like: Tensor) -> Tensor:
        """σ per item `(B, 1)` (0 when None)."""
        return sigma_per_sample(0.0 if sigma is None else sigma, like).view(-1, 1)

    def encode(self, x: Tensor, sigma: float | Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(μ, log σ²), each `(B, K, latent_dim)`, for inputs `x (B, C, H, W)` at noise level
        `sigma` (a float or `(B,)`; used by σ-conditioned models only)."""
        if tuple(x.shape[1:]) != self.shape:
            raise UserError(f"this VAE takes inputs of shape {self.shape}, got {tuple(x.shape[1:])}")
        inputs = x.flatten(1) if self.arch == "mlp" else x
        if self.sigma_conditioned:
            level = self._noise_level(sigma, x)
            if self.arch == "mlp":
                inputs = torch.cat([inputs, level], dim=1)
            else:
                inputs = torch.cat([inputs, level.view(-1, 1, 1, 1).expand(-1, 1, *x.shape[2:])], dim=1)
        stats = self.to_latents(self.encoder(inputs)).view(x.shape[0], self.n_sources, 2, self.latent_dim)
        return stats[:, :, 0], stats[:, :, 1]

    def decode(self, z: Tensor, sigma: float | Tensor | None = None) -> Tensor:
        """Sources `(B, K, C, H, W)` in (0, 1) from latents `z (B, K, latent_dim)` (one shared
        decoder), at noise level `sigma` (σ-conditioned models)."""
        batch, k = z.shape[:2]
        flat = z.reshape(batch * k, self.latent_dim)
        if self.sigma_conditioned:
            flat = torch.cat([flat, self._noise_level(sigma, z).repeat_interleave(k, dim=0)], dim=1)
        body = self.decoder_body(flat)
        if self.arch == "conv":
            body = body.view(batch * k, *self._grid)
        return torch.sigmoid(self.decoder_out(body)).view(batch, k, *self.shape)

    def latents(self, mu: Tensor, logvar: Tensor) -> Tensor:
        """z: sampled μ + σ·ε when training a VAE; μ otherwise (evaluation, or an auto-encoder)."""
        if self.variational and self.training:
            return mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return mu

    def forward(self, x: Tensor, sigma: float | Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(sources `(B, K, C, H, W)`, μ, log σ²) for inputs `x (B, C, H, W)` at noise level `sigma`."""
        mu, logvar = self.encode(x, sigma)
        return self.decode(self.latents(mu, logvar), sigma), mu, logvar

    def sample(self, n: int, sigma: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
        """n draws `(n, C, H, W)`: the sum of the K decoded sources of z ~ N(0, I) (CD: at `sigma`, 0 by default)."""
        device = self.to_latents.weight.device
        z = torch.randn((n, self.n_sources, self.latent_dim), generator=generator).to(device)
        return self.decode(z, sigma).sum(dim=1)

    def score(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """∇ₓ ELBO(x) at z = μ (eval-mode statistics), same shape as `x (B, C, H, W)`: the
        model's gradient of log p_σ(x) for Tweedie's formula; works under `torch.no_grad()`."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            elbo = -vae_loss(self, x, beta=1.0, sigma=sigma, reduce=False).sum()
            (grad,) = torch.autograd.grad(elbo, x)
        return grad


def kl_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, σ²) ‖ N(0, 1)) summed over every axis but the first: `(B,)` nats."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(dim=1)


def vae_loss(model: VAE, x: Tensor, beta: float, sigma: float | Tensor | None = None,
             reduce: bool = True) -> Tensor:
    """Σ|x − Σₖ ŝₖ|/b + β·KL per item (b = √0.5; no KL for an auto-encoder), for inputs
    `x (B, C, H, W)` at noise level `sigma` (σ-conditioned models); the batch mean, or `(B,)`
    with `reduce=False`."""
    sources, mu, logvar = model(x, sigma)
    loss = (x - sources.sum(dim=1)).abs().flatten(1).sum(dim=1) / LAPLACE_SCALE
    if model.variational:
        loss = loss + beta * kl_standard_normal(mu, logvar)
    return loss.mean() if reduce else loss
