"""Denoising deep generative models (Loaiza-Ganem, Ross, Wu, Cresswell et al., arXiv 2212.01265)
and the one Tweedie step every prior and BASIS use.

Three ways of putting noise to work, for any model that learns a density of its inputs:
- ND (noise in training): the model learns the density of x + σ·ε, ε ~ N(0, I), at one σ.
- TD (Tweedie denoising): an ND model, whose samples are then denoised by Tweedie's formula
  x̂ = x + σ²·∇ₓ log p_σ(x), evaluated once, in the model's own space (the earlier code
  transformed its samples twice before the gradient).
- CD (conditional σ): σ ~ U(0, C) per training item, fed to the model as an input; the
  model samples at σ = 0.

`DenoisingConfig` holds the choice (`mode`: none | nd | td | cd) and is read strictly
(`config.from_dict`), so a misspelt key — the earlier README's `sigma_denoising` for the
code's `denoising_sigma` — is an error, not a vanilla model trained silently.
`training_noise` draws the noisy training inputs and their σ for every mode. `tweedie` is
the formula; `tweedie_denoise` applies it with a prior's score.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..errors import UserError

MODES = ("none", "nd", "td", "cd")


@dataclass
class DenoisingConfig:
    """How noise enters training (the `denoising:` section of a config).

    Fields: mode ("none" | "nd" | "td" | "cd"); sigma (ND/TD: the training noise σ, in the
    data's units); c_max (CD: σ is drawn from U(0, c_max) per item).
    """

    mode: Literal["none", "nd", "td", "cd"] = "none"
    sigma: float = 0.1
    c_max: float = 0.5

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"denoising mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode in ("nd", "td") and not self.sigma > 0:
            raise UserError(f"denoising mode {self.mode} needs sigma > 0, got {self.sigma}")
        if self.mode == "cd" and not self.c_max > 0:
            raise UserError(f"denoising mode cd needs c_max > 0, got {self.c_max}")

    @property
    def conditioned(self) -> bool:
        """Whether the model takes σ as an input (CD)."""
        return self.mode == "cd"


def training_noise(x: Tensor, config: DenoisingConfig, generator: torch.Generator | None = None
                   ) -> tuple[Tensor, Tensor]:
    """(noisy inputs like `x (B, ...)`, σ per item `(B,)`) for one training batch.

    none: x unchanged, σ = 0; nd/td: x + σ·ε at the config's σ; cd: σ ~ U(0, c_max) per item.
    Noise is drawn on `generator` (default: torch's global one) on the CPU, then moved to x's device.
    """
    batch = x.shape[0]
    if config.mode == "none":
        return x, torch.zeros(batch, dtype=x.dtype, device=x.device)
    if config.mode == "cd":
        sigma = config.c_max * torch.rand(batch, generator=generator, dtype=x.dtype)
    else:
        sigma = torch.full((batch,), config.sigma, dtype=x.dtype)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    sigma = sigma.to(x.device)
    return x + sigma.view(-1, *([1] * (x.dim() - 1))) * noise.to(x.device), sigma


def tweedie(x: Tensor, score: Tensor, sigma: float | Tensor) -> Tensor:
    """Tweedie's posterior mean of the clean signal: x + σ²·score, score = ∇ₓ log p_σ(x).

    `sigma` a float or a tensor broadcasting against x (e.g. `(B, 1, 1, 1)`).
    """
    return x + sigma**2 * score


def tweedie_denoise(prior, x: Tensor, sigma: float) -> Tensor:
    """`tweedie` with a prior's score: x + σ²·s(x, σ) for a batch `x (B, ...)`."""
    return tweedie(x, prior.score(x, sigma), sigma)
