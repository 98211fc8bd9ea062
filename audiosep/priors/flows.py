"""Normalising flows (Glow, RealNVP) as priors: exact log-densities, and scores by autograd.

A flow is a bijection f from data x `(B, C, H, W)` to latents ε (one tensor per scale)
with a standard normal base, so log p(x) = log N(f(x); 0, I) + log|det ∂f/∂x|. Every layer
returns its log-determinant, and `inverse` undoes it exactly.

Layers (each `forward(x, emb) -> (y, logdet (B,))`, `inverse(y, emb) -> x`; `emb` is the
σ embedding `(B, EMBED_DIM)` or None):
- `ActNorm`: per-channel affine, initialised from the first training batch to zero mean and
  unit variance per channel (statistics averaged over processes under DDP).
- `InvConv1x1`: invertible 1×1 convolution W = P·L·(U + diag(sign·exp(log|s|))), P and the
  signs fixed, from a random rotation; log|det| = H·W·Σ log|s|.
- `ChannelCoupling` (Glow; RealNVP's channel mask): half the channels pass through and set
  a shift and a bounded log-scale of the other half; `CheckerboardCoupling` (RealNVP): the
  same with a spatial checkerboard mask. The coupling network's last layer is zero-
  initialised (a new coupling is the identity) and the log-scale is soft-clamped to
  (−LOG_SCALE_BOUND, LOG_SCALE_BOUND) by a scaled tanh, as in the earlier piano/violin Glow.
  Coupling networks also see the row coordinate (the mel frequency axis of a patch), since
  spectrogram statistics depend on frequency and zero-padded convolutions barely know it.
- `Squeeze`: space to depth (C, H, W) → (4C, H/2, W/2).
- `Split`: factor out half the channels under a prior conditioned on the other half
  (learned mean and log-std, Glow) or a standard normal (RealNVP); `TopPrior`: the last
  scale's latent under a learned (Glow) or standard (RealNVP) normal. Both are written as
  affine maps to the standard normal ε, so the whole model is one bijection x ↔ ε.

Noise conditioning. A prior models noisy data y = x + σ·ε (the densities p_σ BASIS anneals
through). Two ways:
- σ-conditioned (`conditional=True`): a feature of σ goes through a small MLP
  (`SigmaEmbedding`) whose output biases the hidden layer of every coupling network and the
  learned priors. `sigma_scale` says which feature and which training draw:
  "log" (the default, BASIS): log σ, σ drawn log-uniformly over [sigma_min, sigma_max]. On
  the geometric BASIS grid this weights every level equally (as BASIS spends T steps on
  each), and because the draw is continuous one model serves any schedule inside the range
  (any `--levels`); σ = 0 has no log and is refused.
  "linear" (CD of the denoising experiment, `priors.denoising`): σ/sigma_max, σ drawn from
  U(0, sigma_max), so σ = 0, the clean data, is an input like any other; sigma_min unused.
  Checkpoints written before the option existed lack the key and rebuild as "log".
- per-σ bundle (`FlowBundle`): one unconditional flow per σ of the schedule, trained
  serially from the smallest σ up, each level initialised from the previous one (as in
  the BASIS code); all members in one checkpoint. Its score at σ uses the member trained at
  that σ (matched to a relative 1e-4) and any other σ is a UserError naming the σ values it
  has: a member's score is only right at its own σ (it scales like 1/σ² while the Langevin
  step scales like σ²), so a nearest-level rule would bias the sampler silently.

An unconditional flow models the one density it was trained on (noise `noise_sigma`, 0 for
clean data) and ignores the σ it is asked for.

`build_flow` makes a flow from a `FlowConfig` (`model:`) and, for images, a
`DenoisingConfig` (`denoising:`): ND/TD is an unconditional flow at the section's σ, CD a
"linear" σ-conditioned flow with sigma_max = c_max. `sample` draws from any of them.

Losses are in bits per dimension: bpd = −log p(y)/(D·ln 2), plus log₂(n_bins) for data
quantised to n_bins levels and dequantised by uniform noise (`dequantize`).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as nnf
from torch import Tensor, nn

from ..errors import UserError
from .base import Domain, Prior, register_prior, sigma_per_sample
from .denoising import DenoisingConfig
from .ncsn import BASIS_SIGMAS, geometric_sigmas

LOG_SCALE_BOUND = 2.0  # coupling log-scales lie in (−2, 2): a factor of at most e² per coupling
PRIOR_LOG_STD_BOUND = 5.0  # learned prior log-stds lie in (−5, 5)
EMBED_DIM = 32  # width of the σ embedding
SIGMA_RTOL = 1e-4  # relative tolerance of the bundle's σ lookup
DEFAULT_NOISE_SIGMA = BASIS_SIGMAS[1]  # an unconditional flow's training noise when the config names none
SIGMA_SCALES = ("log", "linear")  # what a σ-conditioned flow embeds and how it draws σ (see the docstring)
_LOG_2PI = math.log(2.0 * math.pi)


def _soft_clamp(h: Tensor, bound: float) -> Tensor:
    """bound·tanh(h/bound): slope 1 at 0, values in (−bound, bound)."""
    return bound * torch.tanh(h / bound)


def _row_coordinate(x: Tensor) -> Tensor:
    """The row index mapped to [−1, 1], as a channel `(B, 1, H, W)` like `x (B, C, H, W)`."""
    rows = torch.linspace(-1.0, 1.0, x.shape[2], dtype=x.dtype, device=x.device)
    return rows.view(1, 1, -1, 1).expand(x.shape[0], 1, x.shape[2], x.shape[3])


def _sum_per_item(x: Tensor) -> Tensor:
    return x.flatten(1).sum(dim=1)


# ---------------------------------------------------------------------------------------
# Networks inside the layers
# ---------------------------------------------------------------------------------------

class SigmaEmbedding(nn.Module):
    """σ → a feature vector: u → Linear(1, d) → SiLU → Linear(d, d) → SiLU, σ `(B,)` → `(B, d)`.

    u = log σ (`scale` "log", σ > 0) or σ/sigma_max (`scale` "linear", σ ≥ 0: σ = 0 → u = 0).
    """

    def __init__(self, dim: int = EMBED_DIM, scale: str = "log", sigma_max: float = 1.0) -> None:
        super().__init__()
        self.scale, self.sigma_max = scale, sigma_max
        self.net = nn.Sequential(nn.Linear(1, dim), nn.SiLU(), nn.Linear(dim, dim), nn.SiLU())

    def forward(self, sigma: Tensor) -> Tensor:
        u = sigma.log() if self.scale == "log" else sigma / self.sigma_max
        return self.net(u[:, None])


class CouplingNet(nn.Module):
    """conv3×3 (+ σ-embedding bias) → ReLU → conv1×1 → ReLU → zero-initialised conv3×3.

    Input `(B, in_ch, H, W)` (the row coordinate is appended inside), embedding `(B, cond_dim)`
    or None → `(B, out_ch, H, W)`, all zeros until trained.
    """

    def __init__(self, in_ch: int, out_ch: int, hidden: int, cond_dim: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_ch + 1, hidden, 3, padding=1)
        self.cond = nn.Linear(cond_dim, hidden) if cond_dim else None
        self.conv_mid = nn.Conv2d(hidden, hidden, 1)
        self.conv_out = nn.Conv2d(hidden, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor, emb: Tensor | None) -> Tensor:
        h = self.conv_in(torch.cat([x, _row_coordinate(x)], dim=1))
        if self.cond is not None:
            h = h + self.cond(emb)[:, :, None, None]
        h = nnf.relu(self.conv_mid(nnf.relu(h)))
        return self.conv_out(h)


class PriorNet(nn.Module):
    """Mean and log-std `(B, out_ch, H, W)` each of a learned normal prior, from a conditioning
    tensor `(B, in_ch, H, W)` (in_ch may be 0: the row coordinate alone) and the σ embedding.
    Zero-initialised: a new prior is the standard normal."""

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch + 1, 2 * out_ch, 3, padding=1)
        self.cond = nn.Linear(cond_dim, 2 * out_ch) if cond_dim else None
        for module in (self.conv, self.cond):
            if module is not None:
                nn.init.zeros_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor, emb: Tensor | None) -> tuple[Tensor, Tensor]:
        h = self.conv(torch.cat([x, _row_coordinate(x)], dim=1))
        if self.cond is not None:
            h = h + self.cond(emb)[:, :, None, None]
        mean, log_std = h.chunk(2, dim=1)
        return mean, _soft_clamp(log_std, PRIOR_LOG_STD_BOUND)


# ---------------------------------------------------------------------------------------
# Invertible layers: forward(x, emb) -> (y, logdet (B,)); inverse(y, emb) -> x
# ---------------------------------------------------------------------------------------

class ActNorm(nn.Module):
    """y = (x + bias)·exp(log_scale) per channel; log|det| = H·W·Σ log_scale.

    The first forward pass in training mode sets bias = −mean and log_scale = −log std of
    each channel over the batch (averaged over processes when torch.distributed is
    initialised), so the output starts with zero mean and unit variance per channel.
    `initialized` is a buffer, so trained and resumed models are not re-initialised.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Data-dependent initialisation from a batch `(B, C, H, W)`."""
        moments = torch.stack([x.mean(dim=(0, 2, 3)), x.pow(2).mean(dim=(0, 2, 3))])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(moments)
            moments /= dist.get_world_size()
        mean, mean_sq = moments
        std = (mean_sq - mean.pow(2)).clamp_min(0.0).sqrt()
        self.bias.copy_(-mean.view_as(self.bias))
        self.log_scale.copy_(-(std + 1e-6).log().view_as(self.log_scale))
        self.initialized.fill_(True)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.training and not bool(self.initialized):
            self.initialize(x)
        y = (x + self.bias) * self.log_scale.exp()
        logdet = self.log_scale.sum() * (x.shape[2] * x.shape[3])
        return y, logdet.expand(x.shape[0])

    def inverse(self, y: Tensor, emb: Tensor | None = None) -> Tensor:
        return y * (-self.log_scale).exp() - self.bias


class InvConv1x1(nn.Module):
    """Invertible 1×1 convolution, LU-parameterised: W = P·L·(U + diag(sign·exp(log_s))).

    P (permutation) and sign are fixed buffers from the LU decomposition of a random
    rotation; L (unit lower), U (strict upper) and log_s are learned. log|det| = H·W·Σ log_s.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        rotation = torch.linalg.qr(torch.randn(channels, channels, dtype=torch.float64))[0]
        perm, lower, upper = torch.linalg.lu(rotation)
        diag = torch.diagonal(upper)
        self.register_buffer("perm", perm.float())
        self.register_buffer("sign", diag.sign().float())
        self.lower = nn.Parameter(torch.tril(lower, -1).float())
        self.upper = nn.Parameter(torch.triu(upper, 1).float())
        self.log_s = nn.Parameter(diag.abs().log().float())

    def weight(self) -> Tensor:
        """W `(C, C)`."""
        eye = torch.eye(self.log_s.numel(), dtype=self.log_s.dtype, device=self.log_s.device)
        lower = torch.tril(self.lower, -1) + eye
        upper = torch.triu(self.upper, 1) + torch.diag(self.sign * self.log_s.exp())
        return self.perm @ lower @ upper

    def forward(self, x: Tensor, emb: Tensor | None = None) -> tuple[Tensor, Tensor]:
        weight = self.weight()
        y = nnf.conv2d(x, weight[:, :, None, None])
        logdet = self.log_s.sum() * (x.shape[2] * x.shape[3])
        return y, logdet.expand(x.shape[0])

    def inverse(self, y: Tensor, emb: Tensor | None = None) -> Tensor:
        return nnf.conv2d(y, torch.linalg.inv(self.weight())[:, :, None, None])


class ChannelCoupling(nn.Module):
    """Affine coupling over channels: one half conditions, the other is shifted and scaled.

    With x = (x₁, x₂) split at C//2 (x₂ conditions x₁ instead when `flip`):
    y₂ = x₂·exp(s) + t with (t, s) = NN(x₁, σ), s soft-clamped; log|det| = Σ s.
    """

    def __init__(self, channels: int, hidden: int, cond_dim: int = 0, flip: bool = False) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"a channel coupling needs at least 2 channels, got {channels}")
        self.flip = flip
        self.n_first = channels // 2
        n_cond, n_out = (channels - self.n_first, self.n_first) if flip else (self.n_first, channels - self.n_first)
        self.net = CouplingNet(n_cond, 2 * n_out, hidden, cond_dim)

    def _halves(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(conditioning half, transformed half)."""
        first, second = x[:, :self.n_first], x[:, self.n_first:]
        return (second, first) if self.flip else (first, second)

    def _join(self, cond: Tensor, moved: Tensor) -> Tensor:
        return torch.cat([moved, cond] if self.flip else [cond, moved], dim=1)

    def _shift_log_scale(self, cond: Tensor, emb: Tensor | None) -> tuple[Tensor, Tensor]:
        shift, raw = self.net(cond, emb).chunk(2, dim=1)
        return shift, _soft_clamp(raw, LOG_SCALE_BOUND)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> tuple[Tensor, Tensor]:
        cond, moved = self._halves(x)
        shift, log_scale = self._shift_log_scale(cond, emb)
        return self._join(cond, moved * log_scale.exp() + shift), _sum_per_item(log_scale)

    def inverse(self, y: Tensor, emb: Tensor | None = None) -> Tensor:
        cond, moved = self._halves(y)
        shift, log_scale = self._shift_log_scale(cond, emb)
        return self._join(cond, (moved - shift) * (-log_scale).exp())


class CheckerboardCoupling(nn.Module):
    """RealNVP affine coupling with a checkerboard mask b (b = 1 where (row + col) % 2 == parity).

    y = x·exp(s) + t with (t, s) = (1 − b)·NN(b·x, b, σ): the b-pixels pass through and set
    the others' shift and soft-clamped log-scale; log|det| = Σ s.
    """

    def __init__(self, channels: int, hidden: int, cond_dim: int = 0, parity: int = 0) -> None:
        super().__init__()
        self.parity = parity
        self.net = CouplingNet(channels + 1, 2 * channels, hidden, cond_dim)

    def _mask(self, x: Tensor) -> Tensor:
        rows = torch.arange(x.shape[2], device=x.device)[:, None]
        cols = torch.arange(x.shape[3], device=x.device)[None, :]
        return ((rows + cols) % 2 == self.parity).to(x.dtype).expand(x.shape[0], 1, -1, -1)

    def _shift_log_scale(self, x: Tensor, emb: Tensor | None) -> tuple[Tensor, Tensor]:
        mask = self._mask(x)
        shift, raw = self.net(torch.cat([x * mask, mask], dim=1), emb).chunk(2, dim=1)
        return shift * (1 - mask), _soft_clamp(raw, LOG_SCALE_BOUND) * (1 - mask)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._shift_log_scale(x, emb)
        return x * log_scale.exp() + shift, _sum_per_item(log_scale)

    def inverse(self, y: Tensor, emb: Tensor | None = None) -> Tensor:
        shift, log_scale = self._shift_log_scale(y, emb)  # depends on the b-pixels only: y·b = x·b
        return (y - shift) * (-log_scale).exp()


class Squeeze(nn.Module):
    """Space to depth: `(B, C, H, W)` → `(B, 4C, H/2, W/2)` (each 2×2 block becomes 4 channels)."""

    def forward(self, x: Tensor, emb: Tensor | None = None) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        y = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)
        return y, x.new_zeros(b)

    def inverse(self, y: Tensor, emb: Tensor | None = None) -> Tensor:
        b, c4, h, w = y.shape
        c = c4 // 4
        return y.reshape(b, c, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c, 2 * h, 2 * w)


class Split(nn.Module):
    """Multi-scale split: x = (z₁, z₂) by channel halves; z₂ leaves the flow as
    ε = (z₂ − μ(z₁, σ))·exp(−log_std(z₁, σ)) (learned, Glow) or ε = z₂ (RealNVP).

    `forward(x, emb) -> (z₁, ε, logdet)` with logdet = −Σ log_std; `inverse(z₁, ε, emb) -> x`.
    """

    def __init__(self, channels: int, cond_dim: int = 0, learned: bool = True) -> None:
        super().__init__()
        if channels % 2:
            raise ValueError(f"a split needs an even number of channels, got {channels}")
        self.prior = PriorNet(channels // 2, channels // 2, cond_dim) if learned else None

    def forward(self, x: Tensor, emb: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        kept, out = x.chunk(2, dim=1)
        if self.prior is None:
            return kept, out, x.new_zeros(x.shape[0])
        mean, log_std = self.prior(kept, emb)
        return kept, (out - mean) * (-log_std).exp(), -_sum_per_item(log_std)

    def inverse(self, kept: Tensor, eps: Tensor, emb: Tensor | None = None) -> Tensor:
        if self.prior is None:
            return torch.cat([kept, eps], dim=1)
        mean, log_std = self.prior(kept, emb)
        return torch.cat([kept, eps * log_std.exp() + mean], dim=1)


class TopPrior(nn.Module):
    """The last scale's latent z under N(μ, exp(log_std)²): learned from the row coordinate
    and σ (Glow's learned top) or standard (RealNVP). `forward(z, emb) -> (ε, logdet)`."""

    def __init__(self, channels: int, cond_dim: int = 0, learned: bool = True) -> None:
        super().__init__()
        self.prior = PriorNet(0, channels, cond_dim) if learned else None

    def _params(self, z: Tensor, emb: Tensor | None) -> tuple[Tensor, Tensor]:
        return self.prior(z[:, :0], emb)  # no conditioning channels: the row coordinate (and σ) only

    def forward(self, z: Tensor, emb: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.prior is None:
            return z, z.new_zeros(z.shape[0])
        mean, log_std = self._params(z, emb)
        return (z - mean) * (-log_std).exp(), -_sum_per_item(log_std)

    def inverse(self, eps: Tensor, emb: Tensor | None = None) -> Tensor:
        if self.prior is None:
            return eps
        mean, log_std = self._params(eps, emb)
        return eps * log_std.exp() + mean


# ---------------------------------------------------------------------------------------
# Multi-scale flows
# ---------------------------------------------------------------------------------------

def _autograd_score(log_prob: Callable[[Tensor, Any], Tensor], x: Tensor, sigma: Any) -> Tensor:
    """∇ₓ Σ log_prob(x, σ), detached, computed with autograd even under `torch.no_grad()`."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(log_prob(x, sigma).sum(), x)
    return grad.detach()


class _MultiScaleFlow(Prior):
    """Shared parts of Glow and RealNVP: scales of layers, splits, top prior, σ embedding.

    Subclasses fill `self.levels` (one ModuleList of layers per scale), `self.splits` (one
    `Split` per scale but the last) and `self.top`, and define `size_multiple`.

    Args:
        channels: input channels C.
        levels: scales (squeezes).
        depth: flow steps (couplings) per scale and stage.
        hidden: width of the coupling networks.
        conditional: σ-conditioned (σ embedding fed to every coupling and learned prior).
        noise_sigma: unconditional only: the σ of the noise added to the training data
            (0 = clean data, e.g. dequantised images).
        sigma_max, sigma_min: conditional only: σ is drawn log-uniformly in this range
            in training (`sigma_scale` "log"), or from U(0, sigma_max) ("linear").
        sigma_scale: conditional only: "log" (the default: embed log σ, σ > 0; BASIS) or
            "linear" (embed σ/sigma_max, σ ≥ 0; the denoising experiment's CD).
    """

    @staticmethod
    def size_multiple(levels: int) -> int:
        """What item heights and widths must be multiples of, for `levels` scales."""
        raise NotImplementedError

    def __init__(self, channels: int, levels: int, depth: int, hidden: int, conditional: bool,
                 noise_sigma: float, sigma_max: float, sigma_min: float, sigma_scale: str = "log") -> None:
        super().__init__()
        if min(channels, levels, depth, hidden) < 1:
            raise UserError(f"flow: channels, levels, depth and hidden must be >= 1, got "
                            f"{channels}, {levels}, {depth}, {hidden}")
        if sigma_scale not in SIGMA_SCALES:
            raise UserError(f"flow: sigma_scale must be one of {', '.join(SIGMA_SCALES)}, got {sigma_scale!r}")
        if conditional and sigma_scale == "log" and not sigma_max > sigma_min > 0:
            raise UserError(f"flow: need sigma_max > sigma_min > 0, got {sigma_max}, {sigma_min}")
        if conditional and not sigma_max > 0:
            raise UserError(f"flow: need sigma_max > 0, got {sigma_max}")
        if noise_sigma < 0:
            raise UserError(f"flow: noise_sigma must be >= 0, got {noise_sigma}")
        self._config = {"channels": int(channels), "levels": int(levels), "depth": int(depth),
                        "hidden": int(hidden), "conditional": bool(conditional),
                        "noise_sigma": float(noise_sigma), "sigma_max": float(sigma_max),
                        "sigma_min": float(sigma_min), "sigma_scale": sigma_scale}
        self.conditional, self.sigma_scale = bool(conditional), sigma_scale
        self.noise_sigma, self.sigma_max, self.sigma_min = float(noise_sigma), float(sigma_max), float(sigma_min)
        self.embed = SigmaEmbedding(scale=sigma_scale, sigma_max=self.sigma_max) if conditional else None
        self.cond_dim = EMBED_DIM if conditional else 0
        self.levels = nn.ModuleList()
        self.splits = nn.ModuleList()

    def get_config(self) -> dict[str, Any]:
        return dict(self._config)

    def check_shape(self, shape: Sequence[int]) -> None:
        """UserError unless items of `shape` (C, H, W) fit this flow (see `check_flow_shape`)."""
        check_flow_shape(self.kind, self._config["channels"], self._config["levels"], shape)

    def _embedding(self, x: Tensor, sigma: float | Tensor | None) -> Tensor | None:
        if not self.conditional:
            return None
        if sigma is None:
            raise ValueError(f"a sigma-conditioned {self.kind} needs sigma")
        sigma = sigma_per_sample(sigma, x)
        if self.sigma_scale == "log" and not bool((sigma > 0).all()):
            raise UserError(f"a sigma-conditioned {self.kind} needs sigma > 0")
        if not bool((sigma >= 0).all()):
            raise UserError(f"a sigma-conditioned {self.kind} needs sigma >= 0")
        return self.embed(sigma)

    def transform(self, x: Tensor, sigma: float | Tensor | None = None) -> tuple[list[Tensor], Tensor]:
        """x `(B, C, H, W)` → (latents ε, one `(B, c, h, w)` per scale, standard normal under
        the model; log|det ∂ε/∂x| `(B,)`)."""
        self.check_shape(x.shape[1:])
        emb = self._embedding(x, sigma)
        logdet = x.new_zeros(x.shape[0])
        latents = []
        h = x
        for index, level in enumerate(self.levels):
            for layer in level:
                h, step_logdet = layer(h, emb)
                logdet = logdet + step_logdet
            if index < len(self.splits):
                h, eps, step_logdet = self.splits[index](h, emb)
                latents.append(eps)
                logdet = logdet + step_logdet
        eps, step_logdet = self.top(h, emb)
        latents.append(eps)
        return latents, logdet + step_logdet

    def inverse(self, latents: Sequence[Tensor], sigma: float | Tensor | None = None) -> Tensor:
        """The data `(B, C, H, W)` whose `transform` gives `latents`."""
        emb = self._embedding(latents[-1], sigma)
        h = self.top.inverse(latents[-1], emb)
        for index in reversed(range(len(self.levels))):
            if index < len(self.splits):
                h = self.splits[index].inverse(h, latents[index], emb)
            for layer in reversed(self.levels[index]):
                h = layer.inverse(h, emb)
        return h

    def log_prob(self, x: Tensor, sigma: float | Tensor | None = None) -> Tensor:
        """log p_σ(x) `(B,)` in nats (unconditional flows: the one density they model)."""
        latents, logdet = self.transform(x, sigma)
        log_normal = sum(-0.5 * _sum_per_item(eps.pow(2)) - 0.5 * eps[0].numel() * _LOG_2PI for eps in latents)
        return log_normal + logdet

    def score(self, x: Tensor, sigma: float | Tensor | None = None) -> Tensor:
        """∇ₓ log p_σ(x), same shape as x; autograd is enabled inside (BASIS calls under no_grad)."""
        return _autograd_score(self.log_prob, x, sigma)

    def training_sigmas(self, batch: int, device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32) -> Tensor:
        """σ `(batch,)` for the training noise: conditional, on the global torch RNG,
        log-uniform in [sigma_min, sigma_max] (`sigma_scale` "log") or U(0, sigma_max)
        ("linear"); unconditional, `noise_sigma`."""
        if not self.conditional:
            return torch.full((batch,), self.noise_sigma, device=device, dtype=dtype)
        u = torch.rand(batch, device=device, dtype=dtype)
        if self.sigma_scale == "linear":
            return self.sigma_max * u
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        return (lo + (hi - lo) * u).exp()

    def latent_shapes(self, shape: Sequence[int]) -> list[tuple[int, int, int]]:
        """The `(c, h, w)` of each scale's latent for items of `shape` (C, H, W), in the order
        `transform` returns them (the split-off halves, then the top)."""
        self.check_shape(shape)
        c, h, w = shape
        shapes = []
        for index, level in enumerate(self.levels):
            squeezes = sum(isinstance(layer, Squeeze) for layer in level)
            c, h, w = c * 4**squeezes, h // 2**squeezes, w // 2**squeezes
            if index < len(self.splits):
                shapes.append((c // 2, h, w))
                c //= 2
        return shapes + [(c, h, w)]

    @torch.no_grad()
    def sample(self, n: int, sigma: float = 0.0, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> Tensor:
        """n draws `(n, C, H, W)` of the density at `sigma`, in the units of the training data
        (centred images: [−0.5, 0.5] plus the model's noise; mel patches: [0, 1]).

        ε ~ N(0, T²·I) at every scale's latent shape (T = `temperature`; 0 gives the image
        of the all-zero latents, the flow's mode-like point), drawn on `generator` (default:
        torch's global one) on the CPU in the model's dtype, then `inverse(ε, σ)` on the
        model's device. The item shape is that of `domain` (set by training and by
        `load_prior`: `flow_item_shape`). `sigma` is the σ input of a conditional flow (0,
        the clean data, for the denoising experiment's CD; a "log" flow needs σ > 0); an
        unconditional flow has its one density and ignores it.
        """
        if self.domain is None:
            raise ValueError(f"this {self.kind} has no domain (train or load it first): the item shape is unknown")
        weight = next(self.parameters())
        latents = [(temperature * torch.randn((n, *s), generator=generator, dtype=weight.dtype)).to(weight.device)
                   for s in self.latent_shapes(flow_item_shape(self.domain))]
        return self.inverse(latents, sigma)


@register_prior("glow")
class Glow(_MultiScaleFlow):
    """Glow (Kingma & Dhariwal 2018): per scale, squeeze then `depth` steps of actnorm →
    invertible 1×1 conv → affine coupling; a learned prior at every split and at the top.

    Items `(channels, H, W)` need H and W divisible by 2^levels (the default mel patches
    160 × 64 allow up to 5). Args as `_MultiScaleFlow`.
    """

    @staticmethod
    def size_multiple(levels: int) -> int:
        return 2**levels

    def __init__(self, channels: int = 1, levels: int = 3, depth: int = 4, hidden: int = 64,
                 conditional: bool = False, noise_sigma: float = 0.0, sigma_max: float = BASIS_SIGMAS[0],
                 sigma_min: float = BASIS_SIGMAS[1], sigma_scale: str = "log") -> None:
        super().__init__(channels, levels, depth, hidden, conditional, noise_sigma, sigma_max, sigma_min,
                         sigma_scale)
        c = channels
        for index in range(levels):
            c *= 4
            layers: list[nn.Module] = [Squeeze()]
            for _ in range(depth):
                layers += [ActNorm(c), InvConv1x1(c), ChannelCoupling(c, hidden, self.cond_dim)]
            self.levels.append(nn.ModuleList(layers))
            if index < levels - 1:
                self.splits.append(Split(c, self.cond_dim, learned=True))
                c //= 2
        self.top = TopPrior(c, self.cond_dim, learned=True)


@register_prior("realnvp")
class RealNVP(_MultiScaleFlow):
    """RealNVP (Dinh et al. 2017): per scale, `depth` checkerboard couplings (alternating
    masks), squeeze, `depth` channel couplings (alternating halves), then half the channels
    factored out under a standard normal; the last scale has depth + 1 checkerboard
    couplings. Actnorm before every coupling stands in for the paper's batch norm.

    Items `(channels, H, W)` need H and W divisible by 2^(levels − 1). Args as `_MultiScaleFlow`.
    """

    @staticmethod
    def size_multiple(levels: int) -> int:
        return 2 ** (levels - 1)

    def __init__(self, channels: int = 1, levels: int = 3, depth: int = 3, hidden: int = 64,
                 conditional: bool = False, noise_sigma: float = 0.0, sigma_max: float = BASIS_SIGMAS[0],
                 sigma_min: float = BASIS_SIGMAS[1], sigma_scale: str = "log") -> None:
        super().__init__(channels, levels, depth, hidden, conditional, noise_sigma, sigma_max, sigma_min,
                         sigma_scale)
        c = channels
        for index in range(levels):
            last = index == levels - 1
            layers: list[nn.Module] = []
            for j in range(depth + 1 if last else depth):
                layers += [ActNorm(c), CheckerboardCoupling(c, hidden, self.cond_dim, parity=j % 2)]
            if not last:
                layers.append(Squeeze())
                c *= 4
                for j in range(depth):
                    layers += [ActNorm(c), ChannelCoupling(c, hidden, self.cond_dim, flip=j % 2 == 1)]
                self.splits.append(Split(c, self.cond_dim, learned=False))
                c //= 2
            self.levels.append(nn.ModuleList(layers))
        self.top = TopPrior(c, self.cond_dim, learned=False)


FLOWS: dict[str, type[_MultiScaleFlow]] = {"glow": Glow, "realnvp": RealNVP}


def flow_item_shape(domain: Domain) -> tuple[int, int, int]:
    """The `(C, H, W)` of one item a flow of `domain` models: the image shape, or one mel patch
    `(1, n_mels, patch_frames)`."""
    if domain.kind == "image":
        return tuple(domain.shape)
    return 1, domain.frontend_dict["n_mels"], domain.frontend_dict["patch_frames"]


def check_flow_shape(arch: str, channels: int, levels: int, shape: Sequence[int]) -> None:
    """UserError unless items of `shape` (C, H, W) suit a `arch` flow with `channels` and
    `levels`: C = channels and H, W multiples of the flow's `size_multiple(levels)`."""
    c, h, w = shape
    multiple = FLOWS[arch].size_multiple(levels)
    if c != channels or h % multiple or w % multiple:
        raise UserError(f"{arch} with {levels} levels needs {channels}-channel items whose height and width "
                        f"are multiples of {multiple}, got {c}×{h}×{w}")


@register_prior("flow_bundle")
class FlowBundle(Prior):
    """One unconditional flow per noise level, in one checkpoint (the BASIS-code way).

    Args:
        flow: "glow" or "realnvp".
        flow_config: the members' constructor arguments (without noise_sigma; not conditional).
        sigmas: the members' noise levels, in schedule order (e.g. 1.0 → 0.01).

    `log_prob(x, sigma)` / `score(x, sigma)`: sigma a float or `(B,)` tensor; each item uses
    the member trained at its σ (relative tolerance `SIGMA_RTOL`); other σ are a UserError.
    """

    def __init__(self, flow: str = "glow", flow_config: dict[str, Any] | None = None,
                 sigmas: Sequence[float] = ()) -> None:
        super().__init__()
        if flow not in FLOWS:
            raise UserError(f"unknown flow {flow!r}; choose one of: {', '.join(FLOWS)}")
        member_config = {k: v for k, v in (flow_config or {}).items() if k != "noise_sigma"}
        if member_config.get("conditional"):
            raise UserError("the members of a flow bundle are unconditional flows (conditional: false)")
        self.sigmas = [float(s) for s in sigmas]
        if not self.sigmas or min(self.sigmas) <= 0:
            raise UserError(f"a flow bundle needs positive sigmas, got {self.sigmas}")
        self._config = {"flow": flow, "flow_config": member_config, "sigmas": list(self.sigmas)}
        self.members = nn.ModuleList(FLOWS[flow](**member_config, noise_sigma=s) for s in self.sigmas)

    def get_config(self) -> dict[str, Any]:
        return {"flow": self._config["flow"], "flow_config": dict(self._config["flow_config"]),
                "sigmas": list(self.sigmas)}

    @property
    def fixed_sigmas(self) -> tuple[float, ...]:
        """The members' σ: the only levels this bundle answers for."""
        return tuple(self.sigmas)

    def member_index(self, sigma: Tensor) -> Tensor:
        """The member `(B,)` (long) trained at each σ `(B,)`; UserError naming the bundle's σ if none is."""
        table = torch.tensor(self.sigmas, dtype=torch.float64, device=sigma.device)
        rel = (sigma.to(torch.float64)[:, None] - table[None, :]).abs() / table[None, :]
        best = rel.min(dim=1)
        if not bool((best.values <= SIGMA_RTOL).all()):
            missing = sigma[best.values > SIGMA_RTOL][0].item()
            have = ", ".join(f"{s:.4g}" for s in self.sigmas)
            raise UserError(f"this flow bundle has members for sigma {have} only, not {missing:.4g}; run BASIS "
                            "with the schedule it was trained on, or use a sigma-conditioned flow")
        return best.indices

    def _per_member(self, method: str, x: Tensor, sigma: float | Tensor) -> Tensor:
        """Apply `member.<method>(x_items, σ_items)` to each group of items sharing a member."""
        sigma = sigma_per_sample(sigma, x)
        index = self.member_index(sigma)
        groups = index.unique()
        if len(groups) == 1:
            return getattr(self.members[int(groups[0])], method)(x, sigma)
        out = None
        for member in groups.tolist():
            rows = (index == member).nonzero().squeeze(1)
            part = getattr(self.members[member], method)(x[rows], sigma[rows])
            if out is None:
                out = part.new_empty((x.shape[0], *part.shape[1:]))
            out[rows] = part
        return out

    def log_prob(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """log p_σ(x) `(B,)` in nats, from the member trained at σ."""
        return self._per_member("log_prob", x, sigma)

    def score(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """∇ₓ log p_σ(x) from the member trained at σ, same shape as x."""
        return self._per_member("score", x, sigma)


# ---------------------------------------------------------------------------------------
# Loss, bits per dimension, construction from a config
# ---------------------------------------------------------------------------------------

def bits_per_dim(log_prob: Tensor, dims: int, n_bins: int | None = None) -> Tensor:
    """−log p/(D·ln 2) per item, plus log₂(n_bins) for data quantised to n_bins levels and
    dequantised to [0, 1) (the discrete model's bits). log_prob `(B,)` in nats → `(B,)`."""
    bpd = -log_prob / (dims * math.log(2.0))
    return bpd + math.log2(n_bins) if n_bins is not None else bpd


def dequantize(x: Tensor, n_bins: int, low: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
    """Uniform dequantisation of x ∈ {low, low + 1/(n_bins − 1), ..., low + 1} (level k) to
    low + (k + u)/n_bins ∈ [low, low + 1), u ~ U(0, 1) per element (drawn on `generator`, a
    generator of x's device, or torch's global one). A density p learnt on such data gives the
    discrete model P(k) ≥ exp(E_u log p − D·ln n_bins) (`bits_per_dim` with n_bins)."""
    levels = torch.round((x - low) * (n_bins - 1))
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return low + (levels + u) / n_bins


def flow_nll(model: Glow | RealNVP, x: Tensor, n_bins: int | None = None, low: float = 0.0) -> Tensor:
    """The training loss of a flow: mean bits per dimension of noisy data, a scalar.

    x `(B, C, H, W)` clean data (quantised to `n_bins` levels over [low, low + 1] and
    dequantised first when `n_bins` is given: the loss is then the discrete data's bits);
    y = x + σ·ε with σ from `model.training_sigmas` (one per item) and ε ~ N(0, I); loss =
    mean over items of `bits_per_dim(model.log_prob(y, σ))`.
    """
    if n_bins is not None:
        x = dequantize(x, n_bins, low)
    sigma = model.training_sigmas(x.shape[0], x.device, x.dtype)
    y = x + sigma.view(-1, *([1] * (x.dim() - 1))) * torch.randn_like(x)
    return bits_per_dim(model.log_prob(y, sigma), x[0].numel(), n_bins).mean()


@dataclass
class FlowConfig:
    """A flow prior and its noise conditioning, as read from a config file (`model:`).

    Fields: conditioning ("none": one flow at `noise_sigma`; "sigma": one σ-conditioned flow
    trained over [sigma_min, sigma_max]; "bundle": one flow per σ of the geometric schedule
    sigma_max → sigma_min over n_sigmas levels, the BASIS default 1.0 → 0.01 × 10; null, the
    default: "sigma", or what a `denoising:` section sets); channels, levels, depth, hidden
    (the network; depth is flow steps per scale); noise_sigma (conditioning "none": training
    noise σ, 0 for clean or dequantised data; null, the default: `DEFAULT_NOISE_SIGMA` = 0.01,
    BASIS's smallest σ, or a `denoising:` section's σ).

    With a `denoising:` section (`DenoisingConfig`, images) the section sets the noise: leave
    conditioning and noise_sigma out (`flow_conditioning` refuses contradictions).
    """

    conditioning: Literal["none", "sigma", "bundle"] | None = None
    channels: int = 1
    levels: int = 3
    depth: int = 4
    hidden: int = 64
    sigma_max: float = BASIS_SIGMAS[0]
    sigma_min: float = BASIS_SIGMAS[1]
    n_sigmas: int = BASIS_SIGMAS[2]
    noise_sigma: float | None = None


def flow_conditioning(config: FlowConfig, denoising: DenoisingConfig | None = None) -> str:
    """The conditioning ("none" | "sigma" | "bundle") of the flow `config` and `denoising` make.

    Without a denoising mode: `config.conditioning` ("sigma" when null). With one: "none" for
    ND/TD (one flow at the section's σ) and "sigma" for CD (σ ~ U(0, c_max) as an input).

    Raises:
        UserError (one line): a denoising mode with a conditioning other than "none" for
            ND/TD (any for CD), or with a nonzero `noise_sigma` in `model:`.
    """
    mode = (denoising or DenoisingConfig()).mode
    if mode == "none":
        return config.conditioning or "sigma"
    allowed = (None, "none") if mode in ("nd", "td") else (None,)
    if config.conditioning not in allowed:
        raise UserError(f"model.conditioning {config.conditioning!r} contradicts denoising mode {mode!r}: "
                        "the denoising section sets the flow's noise (leave conditioning out)")
    if config.noise_sigma:
        raise UserError(f"model.noise_sigma {config.noise_sigma:g} contradicts denoising mode {mode!r}: "
                        "the denoising section sets the flow's noise (ND/TD: denoising.sigma)")
    return "sigma" if mode == "cd" else "none"


def member_config(config: FlowConfig) -> dict[str, Any]:
    """Constructor arguments of one unconditional flow of `config`'s architecture (no noise_sigma)."""
    return {"channels": config.channels, "levels": config.levels, "depth": config.depth, "hidden": config.hidden,
            "conditional": False, "sigma_max": config.sigma_max, "sigma_min": config.sigma_min}


def bundle_sigmas(config: FlowConfig) -> list[float]:
    """The bundle's noise levels: geometric sigma_max → sigma_min over n_sigmas (decreasing)."""
    return geometric_sigmas(config.sigma_max, config.sigma_min, config.n_sigmas).tolist()


def build_flow(arch: str, config: FlowConfig, denoising: DenoisingConfig | None = None) -> Prior:
    """A fresh flow prior of `arch` ("glow" | "realnvp") with the conditioning of `config` and
    `denoising` (`flow_conditioning`): a `FlowBundle` ("bundle"); a log-σ `Glow`/`RealNVP`
    ("sigma"); an unconditional one at noise_sigma ("none"; ND/TD: at denoising.sigma); CD:
    a σ-conditioned one with sigma_scale "linear" and sigma_max = c_max."""
    if arch not in FLOWS:
        raise UserError(f"unknown flow {arch!r}; choose one of: {', '.join(FLOWS)}")
    denoising = denoising or DenoisingConfig()
    conditioning = flow_conditioning(config, denoising)
    base = member_config(config)
    if conditioning == "bundle":
        return FlowBundle(arch, base, bundle_sigmas(config))
    if denoising.conditioned:
        return FLOWS[arch](**{**base, "conditional": True, "sigma_max": denoising.c_max, "sigma_scale": "linear"})
    if conditioning == "sigma":
        return FLOWS[arch](**{**base, "conditional": True})
    if denoising.mode in ("nd", "td"):
        noise_sigma = denoising.sigma
    else:
        noise_sigma = DEFAULT_NOISE_SIGMA if config.noise_sigma is None else config.noise_sigma
    return FLOWS[arch](**base, noise_sigma=noise_sigma)
