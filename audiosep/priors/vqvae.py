"""LQ-VAE: a Jukebox-style multi-level waveform VQ-VAE made linear in its code space
(Mancusi et al., "Unsupervised source separation via Bayesian inference in the latent
domain", arXiv 2110.05313).

In: mono waveforms `(B, 1, N)` at `sample_rate` Hz, N a multiple of the level's hop.
Out: per level, discrete codes `(B, N // hop)` in [0, n_codes), their embeddings
`(B, code_dim, T)`, and waveforms decoded from codes `(B, 1, T·hop)`.

Levels are independent encoder / codebook / decoder stacks (Jukebox): level l maps every
`hops[l]` samples to one code and decodes the waveform from its own codes only. Level −1
(the largest hop) is the one latent separation uses.

- Encoder of a level: one stage per downsampling step, each a strided convolution (kernel
  2·stride) followed by `res_depth` dilated residual blocks (dilations 1, 3, 9, ...), then a
  1×1 convolution to `code_dim`. The first strided convolution reads the waveform (it is the
  stem): a `width`-channel tensor at the sample rate costs more than all the rest of the
  model on a CPU. Stages are `stride`-fold (4 by default: hop 64 = 4·4·4), with a last
  2-fold stage where the hop needs one. The decoder mirrors it with transposed convolutions;
  the last one writes the waveform.
- Widths: a stage at downsampling d has round(width · (d / hop)^width_power) channels, so the
  stage next to the codes has `width` and finer stages fewer (default power ½: 8, 16, 32
  channels at hops 4, 16, 64, equal work per stage), about a third of the cost of a step
  with `width` channels everywhere (`width_power` 0, as Jukebox). No bottleneck narrower than
  `code_dim` sits between the encoder and the codebook: the codebook is the only
  information limit.
- Codebook: nearest entry in L2; entries are exponential moving averages (decay
  `codebook_decay`) of the encoder outputs assigned to them (cluster sizes and sums are
  buffers), updated by `forward` in training mode only; entries whose averaged usage falls
  below `restart_threshold` vectors per batch are restarted from random encoder outputs of
  the batch (the torch global RNG: the training loop seeds and restores it). The first
  training batch initialises the codebook from its encoder outputs. Under torchrun the
  statistics are summed over processes and restarts drawn by rank 0, so every process
  keeps the same codebook.
- Straight-through quantisation: q(e) = e + sg(c[nearest(e)] − e): the value of the nearest
  entry, the gradient of the identity. The commitment loss ‖e − sg(q)‖² pulls the encoder
  to its codes; the codebook learns by EMA, never by gradient.

`LQVAELoss` is the training loss (waveform L2, multi-resolution STFT, commitment,
linearization); `sum_table` is the code of α₀·c_i + α₁·c_j for every pair of entries;
`linearity` measures how linear a trained model is on held-out pairs.

At hop 64 with 256 codes (2.8 kbit/s) the drums are limited by the codec: a finer top level
or more codes is the lever. What the recipe's model keeps (its ceiling) and how linear it is
are measured by `benchmarks/latent.py` (docs/results.md).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as nnf
from torch import Tensor, nn

from ..errors import UserError
from ..spectral.stft import STFTSettings
from .base import Domain, Prior, load_checkpoint, load_prior, register_prior

STFT_FLOOR_DB = -80.0  # log-magnitude floor of the spectral loss, dB re a full-scale sine
SUM_TABLE_BLOCK = 2**22  # scores in one block of `sum_table` (16 MiB of float32; one row at n = 2048)
TIE_TOLERANCE = 1e-5  # scores this close (relative to the squared norms involved) are a tie: lowest index wins
TIE_RULE = f"lowest index within {TIE_TOLERANCE:g}"  # stored with a sum table; a table of another rule is recomputed


def first_nearest(scores: Tensor, scale: Tensor) -> Tensor:
    """The index of the minimum of `scores (..., n)` along the last axis, ties broken explicitly:
    the LOWEST index whose score is within `TIE_TOLERANCE · scale` of the minimum, LongTensor `(...)`.

    `scale` (broadcastable to `scores[..., :1]`) is the size of the squared norms the scores are
    made of. Exact ties are common in code space (the midpoint of c_i and c_j is as far from one
    as from the other) and a plain `argmin` then returns whichever the float rounding of the
    platform's kernels favours; with a tolerance far above float32 rounding the choice no longer
    depends on the CPU, the summation order or the precision.
    """
    best = scores.amin(dim=-1, keepdim=True)
    within = scores <= best + TIE_TOLERANCE * scale
    return within.to(torch.uint8).argmax(dim=-1)  # argmax returns the first maximal (True) entry


@dataclass
class LQVAEConfig:
    """The `model:` section of `audiosep train lqvae --config`: the `LQVAE` constructor.

    Fields: sample_rate (Hz); hops (samples per code of each level, powers of 2, increasing:
    (4, 16, 64) is the paper's; separation uses the last); n_codes (codebook size per level;
    the paper: 2048); code_dim (size of a code's embedding); width (channels of the stage
    next to the codes; the paper: 64); width_power (finer stages have width·(d/hop)^power
    channels; 0: `width` everywhere, as Jukebox); res_depth (dilated residual blocks per
    stage); dilation_growth (dilation ratio of consecutive residual blocks); stride
    (downsampling per stage, 2 or 4; Jukebox: 2); codebook_decay (EMA decay of the codebook
    statistics); restart_threshold (an entry used by fewer vectors per batch than this, on
    average, is restarted; 0: never).
    """

    sample_rate: int = 22050
    hops: tuple[int, ...] = (64,)
    n_codes: int = 256
    code_dim: int = 64
    width: int = 32
    width_power: float = 0.5
    res_depth: int = 3
    dilation_growth: int = 3
    stride: int = 4
    codebook_decay: float = 0.99
    restart_threshold: float = 1.0


# ---------------------------------------------------------------------------------------
# encoder and decoder
# ---------------------------------------------------------------------------------------

def stage_strides(hop: int, stride: int) -> list[int]:
    """Downsampling factors of the stages of a level, encoder order: `stride` as often as it
    fits, then 2 for the rest (hop 64, stride 4: [4, 4, 4]; hop 32: [4, 4, 2])."""
    strides, left = [], hop
    while left > 1:
        step = stride if left % stride == 0 else 2
        strides.append(step)
        left //= step
    return strides


def stage_widths(strides: Sequence[int], width: int, width_power: float) -> list[int]:
    """Channels of each stage (encoder order): round(width · (d / hop)^width_power), d the
    downsampling after the stage and hop = prod(strides); the last stage has `width`."""
    hop, d, widths = math.prod(strides), 1, []
    for s in strides:
        d *= s
        widths.append(max(1, round(width * (d / hop) ** width_power)))
    return widths


class ResidualBlock(nn.Module):
    """x + conv1×1(ReLU(conv3(ReLU(x)))), the 3-tap convolution dilated by `dilation`;
    `(B, width, T)` → same shape."""

    def __init__(self, width: int, dilation: int) -> None:
        super().__init__()
        self.dilated = nn.Conv1d(width, width, 3, padding=dilation, dilation=dilation)
        self.mix = nn.Conv1d(width, width, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.mix(torch.relu(self.dilated(torch.relu(x))))


def _residual_stack(width: int, depth: int, growth: int, reverse: bool) -> list[nn.Module]:
    dilations = [growth**i for i in range(depth)]
    return [ResidualBlock(width, d) for d in (reversed(dilations) if reverse else dilations)]


def _encoder(strides: Sequence[int], widths: Sequence[int], code_dim: int, depth: int, growth: int
             ) -> nn.Sequential:
    """`(B, 1, N)` → `(B, code_dim, N / prod(strides))`."""
    layers: list[nn.Module] = []
    channels = 1
    for s, w in zip(strides, widths):
        layers.append(nn.Conv1d(channels, w, 2 * s, stride=s, padding=s // 2))
        layers += _residual_stack(w, depth, growth, reverse=False)
        channels = w
    layers.append(nn.Conv1d(channels, code_dim, 1))
    return nn.Sequential(*layers)


def _decoder(strides: Sequence[int], widths: Sequence[int], code_dim: int, depth: int, growth: int
             ) -> nn.Sequential:
    """`(B, code_dim, T)` → `(B, 1, T·prod(strides))`: the encoder mirrored (dilations
    descending within each stage)."""
    layers: list[nn.Module] = [nn.Conv1d(code_dim, widths[-1], 3, padding=1)]
    outputs = [1, *widths[:-1]]
    for s, w, out in reversed(list(zip(strides, widths, outputs))):
        layers += _residual_stack(w, depth, growth, reverse=True)
        layers.append(nn.ConvTranspose1d(w, out, 2 * s, stride=s, padding=s // 2))
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------------------
# the codebook
# ---------------------------------------------------------------------------------------

def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _random_rows(flat: Tensor, n: int) -> Tensor:
    """n rows of `flat (M, d)` drawn with the global torch RNG (without replacement when
    M ≥ n); under torchrun, rank 0's rows."""
    index = torch.randperm(flat.shape[0])[:n] if flat.shape[0] >= n else torch.randint(flat.shape[0], (n,))
    rows = flat[index.to(flat.device)].contiguous()
    if _distributed():
        dist.broadcast(rows, src=0)
    return rows


class Codebook(nn.Module):
    """n_codes entries `(n_codes, code_dim)`, learnt as EMAs of the vectors assigned to them.

    Buffers: `embeddings` (the entries), `cluster_size (n,)` and `cluster_sum (n, d)` (EMAs
    of per-batch counts and sums; embeddings = cluster_sum / cluster_size after each
    update), `initialised` (False until the first training batch).
    """

    def __init__(self, n_codes: int, code_dim: int, decay: float, restart_threshold: float) -> None:
        super().__init__()
        self.decay, self.restart_threshold = decay, restart_threshold
        self.register_buffer("embeddings", torch.zeros(n_codes, code_dim))
        self.register_buffer("cluster_size", torch.zeros(n_codes))
        self.register_buffer("cluster_sum", torch.zeros(n_codes, code_dim))
        self.register_buffer("initialised", torch.tensor(False))

    def nearest(self, flat: Tensor) -> Tensor:
        """Index of the nearest entry (L2) to each row of `flat (M, d)`: LongTensor `(M,)`; of
        entries equally near (`first_nearest`), the lowest index."""
        c, flat = self.embeddings, flat.detach()
        norms = c.pow(2).sum(1)
        scale = flat.pow(2).sum(1, keepdim=True) + norms.amax()
        return first_nearest(norms - 2 * flat @ c.t(), scale)

    @torch.no_grad()
    def update(self, flat: Tensor, codes: Tensor) -> None:
        """Fold a batch of encoder outputs `flat (M, d)` and their codes `(M,)` into the EMAs
        and restart the entries in low use (the first call initialises every entry)."""
        flat = flat.detach().float()
        n = self.embeddings.shape[0]
        if not bool(self.initialised):
            self.embeddings.copy_(_random_rows(flat, n))
            self.cluster_sum.copy_(self.embeddings)
            self.cluster_size.fill_(1.0)
            self.initialised.fill_(True)
            return
        counts = torch.bincount(codes, minlength=n).to(flat.dtype)
        sums = torch.zeros_like(self.cluster_sum).index_add_(0, codes, flat)
        if _distributed():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.cluster_size.lerp_(counts, 1.0 - self.decay)
        self.cluster_sum.lerp_(sums, 1.0 - self.decay)
        dead = self.cluster_size < self.restart_threshold
        if bool(dead.any()):  # the same on every process: the statistics were summed
            restart = _random_rows(flat, n) * self.restart_threshold
            self.cluster_sum.copy_(torch.where(dead[:, None], restart, self.cluster_sum))
            self.cluster_size.masked_fill_(dead, self.restart_threshold)
        self.embeddings.copy_(self.cluster_sum / self.cluster_size.clamp_min(1e-12)[:, None])


# ---------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------

class LevelOutput(NamedTuple):
    """One level's pass over a batch `(B, 1, N)` (`LQVAE.forward`).

    reconstruction `(B, 1, N)` decoded from the straight-through codes; latents `(B, D, T)`
    the encoder output E(x); quantised `(B, D, T)` the straight-through q(E(x)); codes
    `(B, T)`; commitment: mean over elements of (E(x) − sg(q))² (scalar).
    """

    reconstruction: Tensor
    latents: Tensor
    quantised: Tensor
    codes: Tensor
    commitment: Tensor


def _is_power_of_two(n: int) -> bool:
    return n >= 2 and n & (n - 1) == 0


@register_prior("lqvae")
class LQVAE(Prior):
    """A multi-level waveform VQ-VAE (see the module docstring); arguments as `LQVAEConfig`.

    Not a score model: separation uses its codes, through a code prior per source and the
    sum table. `forward` in training mode updates the codebooks.
    """

    def __init__(self, sample_rate: int = 22050, hops: Sequence[int] = (64,), n_codes: int = 256,
                 code_dim: int = 64, width: int = 32, width_power: float = 0.5, res_depth: int = 3,
                 dilation_growth: int = 3, stride: int = 4, codebook_decay: float = 0.99,
                 restart_threshold: float = 1.0) -> None:
        super().__init__()
        hops = tuple(int(h) for h in hops)
        if not hops or not all(_is_power_of_two(h) for h in hops) or list(hops) != sorted(set(hops)):
            raise UserError(f"LQ-VAE hops must be increasing powers of 2 (e.g. [4, 16, 64]), got {list(hops)}")
        if stride not in (2, 4):
            raise UserError(f"LQ-VAE stride must be 2 or 4, got {stride}")
        if min(n_codes - 1, code_dim, width, dilation_growth, sample_rate) < 1 or res_depth < 0 or width_power < 0:
            raise UserError("LQ-VAE needs n_codes >= 2; code_dim, width, dilation_growth, sample_rate >= 1; "
                            f"res_depth, width_power >= 0; got {n_codes}; {code_dim}, {width}, {dilation_growth}, "
                            f"{sample_rate}; {res_depth}, {width_power}")
        if not 0.0 <= codebook_decay < 1.0 or restart_threshold < 0:
            raise UserError(f"LQ-VAE needs codebook_decay in [0, 1) and restart_threshold >= 0, got "
                            f"{codebook_decay}, {restart_threshold}")
        self.config = c = LQVAEConfig(int(sample_rate), hops, int(n_codes), int(code_dim), int(width),
                                      float(width_power), int(res_depth), int(dilation_growth), int(stride),
                                      float(codebook_decay), float(restart_threshold))
        strides = [stage_strides(h, c.stride) for h in hops]
        widths = [stage_widths(s, c.width, c.width_power) for s in strides]
        self.encoders = nn.ModuleList(_encoder(s, w, c.code_dim, c.res_depth, c.dilation_growth)
                                      for s, w in zip(strides, widths))
        self.decoders = nn.ModuleList(_decoder(s, w, c.code_dim, c.res_depth, c.dilation_growth)
                                      for s, w in zip(strides, widths))
        self.codebooks = nn.ModuleList(Codebook(c.n_codes, c.code_dim, c.codebook_decay, c.restart_threshold)
                                       for _ in hops)

    def get_config(self) -> dict[str, Any]:
        c = self.config
        return {"sample_rate": c.sample_rate, "hops": list(c.hops), "n_codes": c.n_codes, "code_dim": c.code_dim,
                "width": c.width, "width_power": c.width_power, "res_depth": c.res_depth,
                "dilation_growth": c.dilation_growth, "stride": c.stride, "codebook_decay": c.codebook_decay,
                "restart_threshold": c.restart_threshold}

    @property
    def levels(self) -> int:
        """Number of levels."""
        return len(self.config.hops)

    def level_index(self, level: int) -> int:
        """`level` (negative counts from the last) as an index in [0, levels); UserError if
        there is no such level."""
        if not -self.levels <= level < self.levels:
            raise UserError(f"this LQ-VAE has {self.levels} level(s); level {level} does not exist")
        return level % self.levels

    def hop(self, level: int = -1) -> int:
        """Samples per code of `level`."""
        return self.config.hops[self.level_index(level)]

    def codebook(self, level: int = -1) -> Tensor:
        """The codebook of `level` `(n_codes, code_dim)` (the live buffer: clone before changing it)."""
        return self.codebooks[self.level_index(level)].embeddings

    def latents(self, x: Tensor, level: int = -1) -> Tensor:
        """The encoder output E(x) `(B, code_dim, N // hop)` of waveforms `x (B, 1, N)`.

        Raises:
            UserError: x not `(B, 1, N)`, or N not a positive multiple of the hop.
        """
        index, hop = self.level_index(level), self.hop(level)
        if x.dim() != 3 or x.shape[1] != 1:
            raise UserError(f"the LQ-VAE takes mono waveforms (B, 1, N), got shape {tuple(x.shape)}")
        if x.shape[-1] % hop or x.shape[-1] == 0:
            raise UserError(f"LQ-VAE level {index} needs a length that is a positive multiple of its hop {hop}, "
                            f"got {x.shape[-1]} samples")
        return self.encoders[index](x)

    def quantise(self, e: Tensor, level: int = -1) -> Tensor:
        """Codes `(B, T)` of the nearest codebook entries to latents `e (B, code_dim, T)`."""
        flat = e.transpose(1, 2).reshape(-1, e.shape[1])
        return self.codebooks[self.level_index(level)].nearest(flat).view(e.shape[0], e.shape[2])

    def embed(self, codes: Tensor, level: int = -1) -> Tensor:
        """Codebook entries `(B, code_dim, T)` of codes `(B, T)`."""
        return nnf.embedding(codes, self.codebook(level)).transpose(1, 2)

    def straight_through(self, e: Tensor, level: int = -1) -> Tensor:
        """q(e) = e + sg(c[nearest(e)] − e) `(B, code_dim, T)`: the value of the nearest
        entries, the gradient of the identity."""
        return e + (self.embed(self.quantise(e, level), level) - e).detach()

    def encode(self, x: Tensor, level: int = -1) -> Tensor:
        """Codes `(B, N // hop)` of waveforms `x (B, 1, N)` (N a multiple of the hop, else UserError)."""
        return self.quantise(self.latents(x, level), level)

    def decode_latents(self, q: Tensor, level: int = -1) -> Tensor:
        """Waveforms `(B, 1, T·hop)` decoded from embeddings `q (B, code_dim, T)`."""
        return self.decoders[self.level_index(level)](q)

    def decode(self, codes: Tensor, level: int = -1) -> Tensor:
        """Waveforms `(B, 1, T·hop)` decoded from codes `(B, T)`."""
        return self.decode_latents(self.embed(codes, level), level)

    def fingerprint(self, level: int = -1) -> str:
        """16 hex characters of the SHA-256 of (config JSON, level, codebook float32 bytes):
        names the code space of `level`, so a code prior or a sum table is never used with
        another codebook."""
        index = self.level_index(level)
        digest = hashlib.sha256(json.dumps(self.get_config(), sort_keys=True).encode())
        digest.update(str(index).encode())
        digest.update(self.codebook(index).detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def code_domain(self, level: int = -1) -> Domain:
        """The `Domain` of the codes of `level` (what a code prior over them is trained on)."""
        return Domain.codes(self.config.n_codes, self.hop(level), self.config.sample_rate, self.fingerprint(level))

    def forward(self, x: Tensor) -> list[LevelOutput]:
        """Every level's pass over waveforms `x (B, 1, N)` (N a multiple of the largest hop);
        in training mode each codebook is then updated with the batch's encoder outputs
        (after quantising with the entries as they were)."""
        outputs = []
        for level, codebook in enumerate(self.codebooks):
            e = self.latents(x, level)
            flat = e.transpose(1, 2).reshape(-1, e.shape[1])
            codes = codebook.nearest(flat)
            q = nnf.embedding(codes, codebook.embeddings).view(e.shape[0], e.shape[2], -1).transpose(1, 2)
            commitment = (e - q).pow(2).mean()
            quantised = e + (q - e).detach()
            if self.training:
                codebook.update(flat, codes)
            outputs.append(LevelOutput(self.decode_latents(quantised, level), e, quantised,
                                       codes.view(e.shape[0], e.shape[2]), commitment))
        return outputs


# ---------------------------------------------------------------------------------------
# the training loss
# ---------------------------------------------------------------------------------------

@dataclass
class LQVAELossConfig:
    """The `loss:` section of `audiosep train lqvae --config`: weights of the terms of
    `LQVAELoss` (each averaged over levels) and the spectral loss's FFT sizes.

    Fields: waveform (relative squared error ‖x̂ − x‖²/‖x‖²); spectral (multi-resolution
    STFT loss); commitment; linearization; stft_sizes (n_fft of each STFT resolution,
    hop n_fft/2, Hann window).
    """

    waveform: float = 1.0
    spectral: float = 1.0
    commitment: float = 1.0
    linearization: float = 1.0
    stft_sizes: tuple[int, ...] = (2048, 512, 128)

    def __post_init__(self) -> None:
        weights = (self.waveform, self.spectral, self.commitment, self.linearization)
        if min(weights) < 0:
            raise UserError(f"LQ-VAE loss weights must be >= 0, got {weights}")
        if not self.stft_sizes or min(self.stft_sizes) < 4:
            raise UserError(f"stft_sizes must be FFT sizes >= 4, got {list(self.stft_sizes)}")


def relative_squared_error(estimate: Tensor, target: Tensor) -> Tensor:
    """‖x̂ − x‖² / ‖x‖² over the whole batch (scalar): 10^(−SDR/10), whatever the data's level."""
    return (estimate - target).pow(2).sum() / target.pow(2).sum().clamp_min(1e-12)


def spectral_loss(estimate: Tensor, target: Tensor, sizes: Sequence[int]) -> Tensor:
    """Multi-resolution STFT loss of waveforms `(B, 1, N)` (scalar), averaged over `sizes`:
    spectral convergence ‖|X̂| − |X|‖_F / ‖|X|‖_F (the loud partials) plus the mean absolute
    difference of log magnitudes floored at `STFT_FLOOR_DB` re a full-scale sine (the quiet
    ones). Hann windows, centred with reflection, hop n_fft/2: half the cost of n_fft/4."""
    total = estimate.new_zeros(())
    for n_fft in sizes:
        floor = 10 ** (STFT_FLOOR_DB / 20) * n_fft / 4  # a full-scale sine peaks at n_fft/4
        settings = STFTSettings(n_fft, n_fft // 2, pad_mode="reflect")
        mag_est = settings.stft(estimate[:, 0]).abs()
        mag_ref = settings.stft(target[:, 0]).abs()
        convergence = (mag_est - mag_ref).norm() / mag_ref.norm().clamp_min(1e-12)
        log_distance = ((mag_est + floor).log() - (mag_ref + floor).log()).abs().mean()
        total = total + convergence + log_distance
    return total / len(sizes)


def linearization_loss(model: LQVAE, batch: Tensor, quantised: Tensor, level: int) -> Tensor:
    """The linearization loss of one level on the paired halves a = batch[:B/2], b = batch[B/2:]
    (scalar): the mean over elements of (Q(½q(E a) + ½q(E b)) − Q(E(½a + ½b)))².

    `quantised` is q(E(batch)) `(B, D, T)` from the model's forward pass; q and Q quantise with
    straight-through gradients. The value is the squared distance between two codebook
    entries (piecewise constant); its gradient treats both Q as the identity, so it reaches
    the encoder through E a and E b (½ each, pulling the mean of their codes towards the
    mixture's code) and through E(½a + ½b) (pulling the mixture's latent towards the code of
    the mean). The codebook gets none (it learns by EMA); the decoder is not involved.
    """
    half = batch.shape[0] // 2
    mixture_code = model.straight_through(model.latents(0.5 * (batch[:half] + batch[half:]), level), level)
    sum_code = model.straight_through(0.5 * (quantised[:half] + quantised[half:]), level)
    return (sum_code - mixture_code).pow(2).mean()


class LQVAELoss:
    """The LQ-VAE training loss: a callable `(model, batch (B, 1, N)) -> scalar`, B even.

    Per level: waveform·relative_squared_error + spectral·spectral_loss of the reconstruction
    decoded from the straight-through codes, commitment·(E(x) − sg(q))² and
    linearization·linearization_loss on the batch's halves; averaged over levels. In training
    mode the model's forward pass updates its codebooks.
    """

    def __init__(self, config: LQVAELossConfig | None = None) -> None:
        self.config = config or LQVAELossConfig()

    def terms(self, model: LQVAE, batch: Tensor) -> dict[str, Tensor]:
        """The unweighted terms, each averaged over levels: "waveform", "spectral",
        "commitment", "linearization" (scalars).

        Raises:
            UserError: an odd batch (the linearization loss pairs its halves).
        """
        if batch.shape[0] % 2:
            raise UserError(f"the LQ-VAE loss pairs the halves of a batch: batch size must be even, "
                            f"got {batch.shape[0]}")
        terms = dict.fromkeys(("waveform", "spectral", "commitment", "linearization"), batch.new_zeros(()))
        for level, out in enumerate(model(batch)):
            terms["waveform"] = terms["waveform"] + relative_squared_error(out.reconstruction, batch)
            terms["spectral"] = terms["spectral"] + spectral_loss(out.reconstruction, batch, self.config.stft_sizes)
            terms["commitment"] = terms["commitment"] + out.commitment
            if self.config.linearization > 0:
                terms["linearization"] = terms["linearization"] + linearization_loss(
                    model, batch, out.quantised, level)
        return {name: value / model.levels for name, value in terms.items()}

    def __call__(self, model: LQVAE, batch: Tensor) -> Tensor:
        c = self.config
        weights = {"waveform": c.waveform, "spectral": c.spectral, "commitment": c.commitment,
                   "linearization": c.linearization}
        return sum(weights[name] * value for name, value in self.terms(model, batch).items())


# ---------------------------------------------------------------------------------------
# sums in code space
# ---------------------------------------------------------------------------------------

def sum_table(codebook: Tensor, alpha: Sequence[float] = (0.5, 0.5), chunk: int | None = None) -> Tensor:
    """The code of every weighted sum of two entries: table[i, j] = argmin_k ‖α₀·c_i + α₁·c_j − c_k‖²,
    LongTensor `(n, n)`; the ROW is source 0 (weighted by α₀), the column source 1.

    Computed from the Gram matrix G = C·Cᵀ as argmin_k R₀[i, k] + R₁[j, k] with
    Rₛ = ¼‖c_k‖² − αₛG (half the distance, less ‖α₀c_i + α₁c_j‖², which does not depend on k),
    `chunk` rows i at a time in one reused buffer (default: blocks of `SUM_TABLE_BLOCK` scores),
    so memory stays bounded (n = 2048: 19 s on one idle CPU thread; about twice that with a
    fresh buffer per block). The two terms are added in one order for both orientations, so
    swapping α transposes the table exactly and an α = (½, ½) table is symmetric. Ties are
    common at α = (½, ½) (the midpoint of c_i and c_j is as far from c_i as from c_j); they go
    to the lowest index (`first_nearest`), as in `LQVAE.quantise`, on every platform.

    Args:
        codebook: entries `(n, d)`.
        alpha: (α₀, α₁).
        chunk: rows per block.
    """
    a0, a1 = (float(a) for a in alpha)
    c = codebook.detach().float()
    n = c.shape[0]
    chunk = chunk or max(1, SUM_TABLE_BLOCK // (n * n))
    gram = c @ c.t()
    quarter_norms = 0.25 * c.pow(2).sum(1)[None, :]
    rows, columns = quarter_norms - a0 * gram, quarter_norms - a1 * gram  # (i, k), (j, k)
    radii = c.norm(dim=1)
    # `LQVAE.quantise`'s tie scale ‖v‖² + max‖c_k‖² for v = α₀c_i + α₁c_j, with ‖v‖ bounded by
    # α₀‖c_i‖ + α₁‖c_j‖ (one addition, so swapping α transposes it exactly), halved as the scores are
    scale = 0.5 * ((a0 * radii[:, None] + a1 * radii[None, :]).pow(2) + radii.amax().pow(2))
    table = torch.empty(n, n, dtype=torch.long, device=c.device)
    scores = torch.empty(min(chunk, n), n, n, device=c.device)
    for start in range(0, n, chunk):
        block = scores[:min(chunk, n - start)]
        torch.add(rows[start:start + chunk, None, :], columns[None, :, :], out=block)
        table[start:start + chunk] = first_nearest(block, scale[start:start + chunk, :, None])
    return table


def load_lqvae(path: str | os.PathLike, device: str | torch.device = "cpu") -> LQVAE:
    """The LQ-VAE checkpoint at `path`, in eval mode on `device`.

    Raises:
        UserError: as `load_prior` (missing, foreign, corrupt), or a checkpoint of another kind.
    """
    model = load_prior(path, device=device)
    if model.kind != "lqvae":
        raise UserError(f"{path}: a {model.kind} checkpoint, not an LQ-VAE (train lqvae)")
    return model


def stored_sum_table(payload: Mapping[str, Any], model: LQVAE, alpha: Sequence[float], level: int = -1
                     ) -> Tensor | None:
    """The sum table stored in a checkpoint's extra["sum_table"] (`training.lqvae`), as a
    LongTensor, when it is of `alpha`, of `level`, of the codebook `model` has there (same
    fingerprint) and of today's tie rule (`TIE_RULE`); else None."""
    stored = payload.get("extra", {}).get("sum_table")
    level = model.level_index(level)
    if not stored or stored.get("level") != level or len(stored.get("alpha", ())) != len(alpha):
        return None
    if stored.get("ties") != TIE_RULE:
        return None
    if not all(math.isclose(s, float(a), abs_tol=1e-9) for s, a in zip(stored["alpha"], alpha)):
        return None
    if stored.get("fingerprint") != model.fingerprint(level):
        return None
    return stored["table"].long()


def load_sum_table(path_or_payload: str | os.PathLike | Mapping[str, Any], model: LQVAE,
                   alpha: Sequence[float] = (0.5, 0.5), level: int = -1) -> Tensor:
    """The `alpha` sum table of `level` of `model` `(n_codes, n_codes)` (LongTensor on the
    codebook's device; row = source 0): the one stored in the checkpoint (a path or its loaded
    payload) when its α, level and codebook fingerprint match `model`, else `sum_table`'s."""
    payload = path_or_payload if isinstance(path_or_payload, Mapping) else load_checkpoint(path_or_payload)
    codebook = model.codebook(level)
    table = stored_sum_table(payload, model, alpha, level)
    return table.to(codebook.device) if table is not None else sum_table(codebook, alpha)


def _sdr_db(estimate: Tensor, reference: Tensor) -> float:
    """10·log10(‖s‖² / ‖s − ŝ‖²) over the whole batch, in dB."""
    return 10 * math.log10(reference.pow(2).sum().item() / max((reference - estimate).pow(2).sum().item(), 1e-30))


@torch.no_grad()
def linearity(model: LQVAE, a: Tensor, b: Tensor, level: int = -1, table: Tensor | None = None
              ) -> dict[str, float]:
    """How linear the code space of `level` is on held-out pairs of waveforms `a`, `b` `(B, 1, N)`
    (N a multiple of the hop), with the mixture m = ½a + ½b (the paper's); `table` is the
    α = (½, ½) sum table of the level (computed when None).

    Returns:
        code_match: the fraction of frames where sum_table[code(a), code(b)] == code(m);
        latent_distance: the mean over frames of ‖½E(a) + ½E(b) − E(m)‖, divided by the RMS
            distance of the mixture's latents from their mean (0: a linear encoder; about 1.2
            if E(m) were unrelated to E(a) and E(b));
        waveform_sdr_db: SDR of decode(sum_table[code(a), code(b)]) against m: how well the
            codes' sum reconstructs the mixture;
        mixture_sdr_db: SDR of decode(code(m)) against m: the model's reconstruction of the
            mixture, the ceiling of the previous;
        source_sdr_db: SDR of decode(code(a)), decode(code(b)) against a, b (together).
        SDRs are over the whole batch, in dB.
    """
    table = sum_table(model.codebook(level)) if table is None else table.to(a.device)
    mixture = 0.5 * (a + b)
    e_a, e_b, e_m = (model.latents(x, level) for x in (a, b, mixture))
    z_a, z_b, z_m = (model.quantise(e, level) for e in (e_a, e_b, e_m))
    z_sum = table[z_a, z_b]
    spread = (e_m - e_m.mean(dim=(0, 2), keepdim=True)).pow(2).sum(1).mean().sqrt()
    distance = (0.5 * (e_a + e_b) - e_m).norm(dim=1).mean()
    return {
        "code_match": (z_sum == z_m).float().mean().item(),
        "latent_distance": (distance / spread.clamp_min(1e-12)).item(),
        "waveform_sdr_db": _sdr_db(model.decode(z_sum, level), mixture),
        "mixture_sdr_db": _sdr_db(model.decode(z_m, level), mixture),
        "source_sdr_db": _sdr_db(model.decode(torch.cat([z_a, z_b]), level), torch.cat([a, b])),
    }
