"""Noise Conditional Score Networks (Song & Ermon 2019, 2020), σ schedules and the DSM loss.

- `NCSNv1`: a U-Net whose normalisations are conditional instance norms++ indexed by the
  noise level (one learned scale/shift/mean-correction per level); its output is the
  score itself. It knows only its L levels: `score` uses the nearest one.
- `NCSNv2`: the same U-Net with unconditional instance norms++; the score is the network
  output divided by σ, so any σ can be queried.
- The NCSNv2 rules for choosing the schedule and the Langevin step size:
  `max_pairwise_distance` (σ₁, technique 1), `gamma_ratio` / `num_levels` (technique 2),
  `langevin_step_size` (technique 4).
- `dsm_loss`: denoising score matching, ½‖s(x̃, σ) + (x̃ − x)/σ²‖²·σ^anneal_power, averaged.

Inputs are spectrogram patches or images `(B, C, H, W)` of any size: the networks pad
H and W up to a multiple of 2^(levels − 1) by edge replication and crop the output back.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as nnf
from scipy.optimize import brentq, minimize_scalar
from torch import Tensor, nn

from ..errors import UserError
from .base import Prior, register_prior, sigma_per_sample

BASIS_SIGMAS = (1.0, 0.01, 10)  # σ_max, σ_min, L of BASIS and the AudioSourceSep NCSNv1


# ---------------------------------------------------------------------------------------
# σ schedules and the NCSNv2 rules
# ---------------------------------------------------------------------------------------

def geometric_sigmas(sigma_max: float, sigma_min: float, n_levels: int) -> Tensor:
    """L noise levels from σ_max down to σ_min with a constant ratio, float64 `(L,)`.

    `geometric_sigmas(1.0, 0.01, 10)` is the BASIS schedule 1.0, 0.599, 0.359, ..., 0.01.
    """
    if not (sigma_max > sigma_min > 0):
        raise UserError(f"need sigma_max > sigma_min > 0, got {sigma_max}, {sigma_min}")
    if n_levels < 2:
        raise UserError(f"need at least 2 noise levels, got {n_levels}")
    return torch.logspace(math.log10(sigma_max), math.log10(sigma_min), n_levels, dtype=torch.float64)


def max_pairwise_distance(samples: Tensor, chunk: int = 1024) -> float:
    """NCSNv2 technique 1: σ₁ = the largest Euclidean distance between two training samples.

    Args:
        samples: `(N, ...)`, each item flattened to a vector; N ≥ 2.
        chunk: rows per block of the N × N distance computation (bounds memory).
    """
    flat = samples.reshape(samples.shape[0], -1).to(torch.float64)
    if flat.shape[0] < 2:
        raise UserError("need at least 2 samples to measure their largest pairwise distance")
    largest = 0.0
    for start in range(0, flat.shape[0], chunk):
        block = torch.cdist(flat[start:start + chunk], flat)
        largest = max(largest, block.max().item())
    return largest


def _normal_cdf(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def gamma_ratio(dim: int, target: float = 0.5) -> float:
    """NCSNv2 technique 2: the ratio γ = σᵢ₋₁/σᵢ > 1 solving
    Φ(√(2D)(γ−1) + 3γ) − Φ(√(2D)(γ−1) − 3γ) = target (0.5 in the paper), D = data dimension.
    """
    root2d = math.sqrt(2.0 * dim)

    def residual(gamma: float) -> float:
        return _normal_cdf(root2d * (gamma - 1) + 3 * gamma) - _normal_cdf(root2d * (gamma - 1) - 3 * gamma) - target

    return brentq(residual, 1.0 + 1e-12, 1.0 + 50.0 / root2d + 10.0, xtol=1e-14)


def num_levels(sigma_max: float, sigma_min: float, dim: int) -> int:
    """NCSNv2 technique 2: L = ⌈1 + log(σ₁/σ_L) / log γ⌉, with γ from `gamma_ratio(dim)`."""
    return math.ceil(1.0 + math.log(sigma_max / sigma_min) / math.log(gamma_ratio(dim)))


def langevin_variance_ratio(eps: float, sigma_min: float, gamma: float, n_steps: int) -> float:
    """s_T²/σᵢ² after T Langevin steps (NCSNv2, Proposition 3).

    For data whose p_σᵢ is N(0, σᵢ²I), started from N(0, σᵢ₋₁²I) = N(0, γ²σᵢ²I), with the
    update x ← x + α·score + √(2α)·z, α = ε σᵢ²/σ_L²:
    (1 − ε/σ_L²)^{2T} (γ² − 2ε/(σ_L² − σ_L²(1 − ε/σ_L²)²)) + 2ε/(σ_L² − σ_L²(1 − ε/σ_L²)²).
    """
    a = eps / sigma_min**2
    stationary = 2.0 * a / (1.0 - (1.0 - a) ** 2)
    return (1.0 - a) ** (2 * n_steps) * (gamma**2 - stationary) + stationary


def langevin_step_size(sigma_min: float, gamma: float, n_steps: int) -> float:
    """NCSNv2 technique 4: the ε that brings `langevin_variance_ratio` closest to 1 for T = n_steps.

    The ratio exceeds 1 for every ε in (0, σ_L²) when γ > 1, so this is its minimiser.
    """
    result = minimize_scalar(
        lambda a: abs(langevin_variance_ratio(a * sigma_min**2, sigma_min, gamma, n_steps) - 1.0),
        bounds=(0.0, 1.0), method="bounded", options={"xatol": 1e-12},
    )
    return float(result.x) * sigma_min**2


# ---------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------

class InstanceNorm2dPlus(nn.Module):
    """Instance norm++ (Song & Ermon 2019), optionally conditioned on a noise-level index.

    out = γ·(x − μ_c)/s_c + β + α·(μ_c − mean(μ))/std(μ), where μ_c, s_c are the per-channel
    spatial mean/std and mean(μ), std(μ) are taken over channels (restoring the channel
    means that instance norm removes). With `n_levels`, γ, α, β are per-level embeddings.

    Shapes: x `(B, C, H, W)`; level `(B,)` long (conditional only).
    """

    def __init__(self, num_features: int, n_levels: int | None = None) -> None:
        super().__init__()
        self.num_features = num_features
        rows = n_levels if n_levels is not None else 1
        self.conditional = n_levels is not None
        scale = torch.ones(rows, 2 * num_features) + 0.02 * torch.randn(rows, 2 * num_features)
        self.scale = nn.Parameter(scale)  # γ and α
        self.bias = nn.Parameter(torch.zeros(rows, num_features))  # β

    def forward(self, x: Tensor, level: Tensor | None = None) -> Tensor:
        mu = x.mean(dim=(2, 3))
        var = (x - mu[..., None, None]).pow(2).mean(dim=(2, 3))  # two-pass: stable, faster than var_mean
        mean_var, mean_mu = torch.var_mean(mu, dim=1, keepdim=True, correction=0)
        mu_normed = (mu - mean_mu) * torch.rsqrt(mean_var + 1e-5)
        rows = level if self.conditional else torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        gamma, alpha = self.scale[rows].chunk(2, dim=1)
        beta = self.bias[rows]
        # γ(x − μ)/s + γα·μ̂ + β, folded into one multiply-add over x: x·a + b
        a = gamma * torch.rsqrt(var + 1e-5)
        b = beta + gamma * alpha * mu_normed - a * mu
        return torch.addcmul(b[..., None, None], x, a[..., None, None])


class ResBlock(nn.Module):
    """norm → ELU → conv3×3 → norm → ELU → conv3×3, plus a (1×1-projected) skip.

    Shapes: `(B, in_ch, H, W)` → `(B, out_ch, H, W)`; level `(B,)` long or None.
    """

    def __init__(self, in_ch: int, out_ch: int, n_levels: int | None, dilation: int = 1) -> None:
        super().__init__()
        self.norm1 = InstanceNorm2dPlus(in_ch, n_levels)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation)
        self.norm2 = InstanceNorm2dPlus(out_ch, n_levels)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=dilation, dilation=dilation)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, level: Tensor | None) -> Tensor:
        h = self.conv1(nnf.elu(self.norm1(x, level)))
        h = self.conv2(nnf.elu(self.norm2(h, level)))
        return self.skip(x) + h


class ScoreUNet(nn.Module):
    """U-Net of ResBlocks with instance norm++ (conditional on a level index if `n_levels`).

    Resolution i has nf·ch_mult[i] channels and `n_res_blocks` blocks on the way down and
    on the way up (each block going up takes the matching skip concatenated to its input);
    the lowest resolution adds two dilated blocks (dilation 2, 4) for a wide receptive
    field. Downsampling: stride-2 3×3 conv; upsampling: nearest ×2 (the next block mixes).
    Keeping nf small and the width in the low resolutions puts the parameters where the
    compute is cheap.

    Shapes: x `(B, channels, H, W)` (any H, W) → `(B, channels, H, W)`.
    """

    def __init__(
        self, channels: int, nf: int, ch_mult: Sequence[int], n_res_blocks: int, n_levels: int | None
    ) -> None:
        super().__init__()
        if nf < 1 or n_res_blocks < 1 or not ch_mult or min(ch_mult) < 1:
            raise UserError(
                f"need nf >= 1, n_res_blocks >= 1 and positive ch_mult, got {nf}, {n_res_blocks}, {list(ch_mult)}"
            )
        widths = [nf * m for m in ch_mult]
        self.multiple = 2 ** (len(widths) - 1)
        self.conv_in = nn.Conv2d(channels, nf, 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.downsample = nn.ModuleList()
        prev = nf
        for i, width in enumerate(widths):
            self.down_blocks.append(nn.ModuleList(
                ResBlock(prev if j == 0 else width, width, n_levels) for j in range(n_res_blocks)
            ))
            prev = width
            if i < len(widths) - 1:
                self.downsample.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
        self.middle = nn.ModuleList(ResBlock(prev, prev, n_levels, dilation=d) for d in (2, 4))
        self.up_blocks = nn.ModuleList()
        for width in reversed(widths):
            self.up_blocks.append(nn.ModuleList(
                ResBlock((prev if j == 0 else width) + width, width, n_levels) for j in range(n_res_blocks)
            ))
            prev = width
        self.norm_out = InstanceNorm2dPlus(prev, n_levels)
        self.conv_out = nn.Conv2d(prev, channels, 3, padding=1)

    def forward(self, x: Tensor, level: Tensor | None = None) -> Tensor:
        height, width = x.shape[-2:]
        pad_h, pad_w = (-height) % self.multiple, (-width) % self.multiple
        if pad_h or pad_w:
            x = nnf.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        h = self.conv_in(x)
        skips = []
        for i, blocks in enumerate(self.down_blocks):
            for block in blocks:
                h = block(h, level)
                skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        for block in self.middle:
            h = block(h, level)
        for i, blocks in enumerate(self.up_blocks):
            if i > 0:
                h = nnf.interpolate(h, scale_factor=2.0, mode="nearest")
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), level)
        h = self.conv_out(nnf.elu(self.norm_out(h, level)))
        return h[..., :height, :width]


# ---------------------------------------------------------------------------------------
# Priors
# ---------------------------------------------------------------------------------------

class _NCSN(Prior):
    """Shared parts of NCSNv1/v2: the σ schedule buffer, config, σ/level argument handling."""

    def __init__(
        self,
        channels: int,
        nf: int,
        sigmas: Sequence[float] | None,
        ch_mult: Sequence[int],
        n_res_blocks: int,
        conditional: bool,
    ) -> None:
        super().__init__()
        if sigmas is None:
            sigmas = geometric_sigmas(*BASIS_SIGMAS).tolist()
        sigmas = [float(s) for s in sigmas]
        if len(sigmas) < 1 or any(s <= 0 for s in sigmas) or sigmas != sorted(sigmas, reverse=True):
            raise UserError(f"sigmas must be positive and decreasing, got {sigmas[:4]}...")
        self._config = {
            "channels": int(channels), "nf": int(nf), "sigmas": sigmas,
            "ch_mult": [int(m) for m in ch_mult], "n_res_blocks": int(n_res_blocks),
        }
        self.register_buffer("sigmas", torch.tensor(sigmas, dtype=torch.float32))
        self.net = ScoreUNet(channels, nf, ch_mult, n_res_blocks, len(sigmas) if conditional else None)

    def get_config(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self._config.items()}

    @property
    def n_levels(self) -> int:
        """L, the number of noise levels of the training schedule."""
        return self.sigmas.numel()

    def nearest_level(self, sigma: Tensor) -> Tensor:
        """Index `(B,)` of the schedule level nearest to each σ `(B,)` (in log σ)."""
        return (sigma.log()[:, None] - self.sigmas.log()[None, :]).abs().argmin(dim=1)

    def _levels_and_sigmas(self, x: Tensor, sigma: float | Tensor) -> tuple[Tensor, Tensor]:
        """`sigma` as (level index `(B,)`, σ `(B,)`): an integer tensor is read as level indices."""
        if isinstance(sigma, Tensor) and not sigma.is_floating_point():
            level = sigma.to(x.device).long().expand(x.shape[0]) if sigma.dim() == 0 else sigma.to(x.device).long()
            return level, self.sigmas[level].to(x.dtype)
        sigma = sigma_per_sample(sigma, x)
        return self.nearest_level(sigma), sigma

    def forward(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """Same as `score` (so wrappers that call the module work)."""
        return self.score(x, sigma)


@register_prior("ncsn_v1")
class NCSNv1(_NCSN):
    """NCSNv1: noise-level-conditional U-Net; the output is the score ∇ₓ log p_σ(x).

    Args:
        channels: input channels C (1 for spectrograms).
        nf: base width; resolution i has nf·ch_mult[i] channels.
        sigmas: the L training noise levels, decreasing (default: BASIS 1.0 → 0.01, L = 10).
        ch_mult: width multipliers, one per resolution (len 3 → inputs padded to multiples of 4).
        n_res_blocks: ResBlocks per resolution and direction.

    `score(x, sigma)`: x `(B, C, H, W)`; sigma a float or `(B,)` float tensor (the nearest
    schedule level is used), or an integer `(B,)` tensor of level indices.
    """

    def __init__(
        self,
        channels: int = 1,
        nf: int = 32,
        sigmas: Sequence[float] | None = None,
        ch_mult: Sequence[int] = (1, 2, 2),
        n_res_blocks: int = 1,
    ) -> None:
        super().__init__(channels, nf, sigmas, ch_mult, n_res_blocks, conditional=True)

    @property
    def fixed_sigmas(self) -> tuple[float, ...]:
        """The training levels: the network is conditioned on them only."""
        return tuple(self.sigmas.tolist())

    def score(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        level, _ = self._levels_and_sigmas(x, sigma)
        return self.net(x, level)


@register_prior("ncsn_v2")
class NCSNv2(_NCSN):
    """NCSNv2: unconditional U-Net whose output divided by σ is the score (any σ > 0).

    Args: as `NCSNv1`; `sigmas` is the training schedule (kept for `dsm_loss` and samplers).

    `score(x, sigma)`: x `(B, C, H, W)`; sigma a float, a `(B,)` float tensor, or an
    integer `(B,)` tensor of schedule level indices.
    """

    def __init__(
        self,
        channels: int = 1,
        nf: int = 32,
        sigmas: Sequence[float] | None = None,
        ch_mult: Sequence[int] = (1, 2, 2),
        n_res_blocks: int = 1,
    ) -> None:
        super().__init__(channels, nf, sigmas, ch_mult, n_res_blocks, conditional=False)

    def score(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        _, sigma = self._levels_and_sigmas(x, sigma)
        return self.net(x) / sigma.view(-1, *([1] * (x.dim() - 1)))


# ---------------------------------------------------------------------------------------
# Loss and construction from a config
# ---------------------------------------------------------------------------------------

def dsm_loss(model: Prior, x: Tensor, sigmas: Tensor | None = None, anneal_power: float = 2.0) -> Tensor:
    """Denoising score matching loss (NCSN), a scalar.

    For each item a level is drawn uniformly from `sigmas`, x̃ = x + σ·z with z ~ N(0, I),
    and the loss ½‖s(x̃, σ) − (−σz/σ²)‖²·σ^anneal_power (summed over the item's dimensions)
    is averaged over the batch.

    Args:
        model: any Prior (its `score(x, sigma)` is called with a `(B,)` float σ tensor).
        x: clean data `(B, ...)`.
        sigmas: the noise levels `(L,)` (default: `model.sigmas`).
        anneal_power: the exponent of the σ weighting (2 makes all levels comparable).
    """
    sigmas = (model.sigmas if sigmas is None else torch.as_tensor(sigmas)).to(device=x.device, dtype=x.dtype)
    level = torch.randint(len(sigmas), (x.shape[0],), device=x.device)
    sigma = sigmas[level]
    sigma_b = sigma.view(-1, *([1] * (x.dim() - 1)))
    noise = torch.randn_like(x) * sigma_b
    target = -noise / sigma_b**2
    scores = model.score(x + noise, sigma)
    per_item = 0.5 * (scores - target).pow(2).flatten(1).sum(dim=1) * sigma.pow(anneal_power)
    return per_item.mean()


@dataclass
class NCSNConfig:
    """An NCSN model and its σ schedule, as read from a config file.

    Fields: version ("v1" | "v2"); channels, nf, ch_mult, n_res_blocks (the network);
    sigma_max (σ₁; null → NCSNv2 technique 1, the largest pairwise distance of the
    training patches); sigma_min (σ_L); n_levels (L; null → NCSNv2 technique 2, the γ rule
    for the patch dimension).
    """

    version: Literal["v1", "v2"] = "v2"
    channels: int = 1
    nf: int = 32
    ch_mult: tuple[int, ...] = (1, 2, 2)
    n_res_blocks: int = 1
    sigma_max: float | None = 1.0
    sigma_min: float = 0.01
    n_levels: int | None = 10

    def __post_init__(self) -> None:
        sizes = {"channels": self.channels, "nf": self.nf, "n_res_blocks": self.n_res_blocks,
                 **({"n_levels": self.n_levels} if self.n_levels is not None else {})}
        for key, value in sizes.items():
            if value < 1:
                raise UserError(f"NCSN config: {key} must be >= 1, got {value}")
        if not self.ch_mult or min(self.ch_mult) < 1:
            raise UserError(f"NCSN config: ch_mult must be one or more integers >= 1, got {list(self.ch_mult)}")
        # σ far above the data's scale makes float32 overflow (1e300 squared), not a slow training
        if not 0 < self.sigma_min < (self.sigma_max if self.sigma_max is not None else 1e6) <= 1e6:
            raise UserError(f"NCSN config: need 0 < sigma_min < sigma_max <= 1e6, got {self.sigma_min}, "
                            f"{self.sigma_max}")


def schedule_from_config(config: NCSNConfig, samples: Tensor | None = None) -> Tensor:
    """The geometric σ schedule `(L,)` of `config`, applying the NCSNv2 rules where asked.

    Args:
        samples: training items `(N, C, H, W)`; needed when sigma_max or n_levels is null
            (σ₁ from their largest pairwise distance, L from their dimension C·H·W).
    """
    if (config.sigma_max is None or config.n_levels is None) and samples is None:
        raise UserError("sigma_max or n_levels is null (NCSNv2 rules): training samples are needed to set them")
    sigma_max = config.sigma_max if config.sigma_max is not None else max_pairwise_distance(samples)
    levels = config.n_levels
    if levels is None:
        levels = num_levels(sigma_max, config.sigma_min, samples[0].numel())
    return geometric_sigmas(sigma_max, config.sigma_min, levels)


def build_ncsn(config: NCSNConfig, samples: Tensor | None = None) -> NCSNv1 | NCSNv2:
    """A fresh NCSNv1/NCSNv2 from `config` (see `schedule_from_config` for `samples`)."""
    sigmas = schedule_from_config(config, samples).tolist()
    cls = NCSNv1 if config.version == "v1" else NCSNv2
    return cls(config.channels, config.nf, sigmas, config.ch_mult, config.n_res_blocks)
