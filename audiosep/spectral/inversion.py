"""From estimated spectrograms back to waveforms: mel → STFT magnitude (non-negative least
squares), Griffin-Lim (plain and fast), mixture phase, single- and multi-channel Wiener
filters, and `invert_mel_powers`, the one path every mel-domain method goes through.

All functions are stateless torch, batched over leading dims, and run on any device.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .stft import STFTSettings

if TYPE_CHECKING:
    from .frontend import Frontend

METHODS = ("wiener", "wiener-mc", "phase", "griffinlim")
# Frames the multichannel Wiener filter handles at once: bounds its (K, F, frames, C, C) covariances.
BLOCK_FRAMES = 256


def _as_operator(A: Tensor) -> Tensor:
    """A as a sparse COO matrix when at most a quarter of it is non-zero (a mel filterbank has
    ≤ 2 non-zeros per column, so products cost O(F·T) instead of O(n_mels·F·T)), else dense."""
    return A.to_sparse().coalesce() if A.count_nonzero() <= A.numel() // 4 else A


def nnls(A: Tensor, B: Tensor, n_iter: int = 200, init: Tensor | None = None) -> Tensor:
    """Non-negative least squares min_{X ≥ 0} ‖A X − B‖²_F, column by column, batched.

    Accelerated projected gradient (FISTA with step 1/‖A‖₂², and each column's momentum
    restarted when it points uphill, O'Donoghue & Candès 2015), started from `init` or else
    the pseudo-inverse solution clipped at 0 (librosa's start). Only (sparse) matrix
    products and element-wise ops, so it runs batched on a GPU at a fixed cost.

    Where the system is underdetermined (more unknowns than equations, as mel → STFT),
    the solution reached depends on the start: from `init` the iterations only change what
    the equations require, so a good guess of X keeps its detail.

    Args:
        A: `(m, n)`. B: `(..., m, T)`.
        n_iter: projected-gradient steps.
        init: optional starting point `(..., n, T)` (clipped at 0).
    Returns:
        X `(..., n, T)`, non-negative, in B's dtype.
    """
    lead, (m, n_cols) = B.shape[:-2], B.shape[-2:]
    A64 = A.to(device=B.device, dtype=torch.float64)
    step = 1.0 / torch.linalg.matrix_norm(A64, ord=2).item() ** 2
    A = A64.to(B.dtype)
    fwd, adj = _as_operator(A), _as_operator(A.T.contiguous())
    b = B.movedim(-2, 0).reshape(m, -1)  # every column of every item: (m, N)
    if init is None:
        x = torch.linalg.pinv(A64).to(B.dtype).matmul(b).clamp(min=0.0)
    elif init.shape != (*lead, A.shape[1], n_cols):
        raise ValueError(f"init must have shape {(*lead, A.shape[1], n_cols)}, got {tuple(init.shape)}")
    else:
        x = init.to(B).movedim(-2, 0).reshape(A.shape[1], -1).clamp(min=0.0)
    y = x
    t = torch.ones_like(b[:1])  # FISTA's t, one per column
    for _ in range(n_iter):
        x_new = (y - step * torch.mm(adj, torch.mm(fwd, y) - b)).clamp(min=0.0)
        change = x_new - x
        uphill = ((y - x_new) * change).sum(dim=0, keepdim=True) > 0
        t = torch.where(uphill, 1.0, t)
        t_new = (1.0 + torch.sqrt(1.0 + 4.0 * t * t)) / 2.0
        y = x_new + (t - 1.0) / t_new * change
        x, t = x_new, t_new
    return x.reshape(-1, *lead, n_cols).movedim(0, -2)


def mel_to_stft_magnitude(
    mel_power: Tensor, fb: Tensor, power: float = 2.0, n_iter: int = 200, init: Tensor | None = None
) -> Tensor:
    """Approximate STFT magnitudes from a mel spectrogram (librosa's `feature.inverse.mel_to_stft`).

    Solves fb · |S|^power ≈ mel_power for |S|^power ≥ 0 by `nnls`, then takes the
    power-th root.

    Args:
        mel_power: `(..., n_mels, T)`, mel of |STFT|**power.
        fb: mel filterbank `(n_mels, F)`.
        power: the exponent the mel spectrogram was made with (2 = power, 1 = magnitude).
        n_iter: NNLS iterations.
        init: optional first guess of |S|^power `(..., F, T)` for the NNLS (see `nnls`).
    Returns:
        magnitude `(..., F, T)`.
    """
    return nnls(fb, mel_power, n_iter, init).pow(1.0 / power)


def _initial_phase(init: str | Tensor, shape: torch.Size, like: Tensor, seed: int | None) -> Tensor:
    """Unit phasors `(shape)` from "random" (uniform, seeded on the CPU so every device
    agrees), "zeros", a real tensor of angles in radians, or a complex tensor (its phase)."""
    if isinstance(init, Tensor):
        angle = init.angle() if init.is_complex() else init
        return torch.polar(torch.ones_like(like), angle.to(like.device, like.dtype).expand(shape))
    if init == "zeros":
        return torch.polar(torch.ones_like(like), torch.zeros_like(like))
    if init == "random":
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        angle = 2 * math.pi * torch.rand(shape, generator=gen, dtype=like.dtype)
        return torch.polar(torch.ones_like(like), angle.to(like.device))
    raise ValueError(f"init must be 'random', 'zeros' or a tensor, got {init!r}")


def griffin_lim(
    magnitude: Tensor,
    settings: STFTSettings,
    n_iter: int = 32,
    momentum: float = 0.99,
    length: int | None = None,
    init: str | Tensor = "random",
    seed: int | None = None,
) -> Tensor:
    """Phase retrieval by Griffin-Lim, plain (momentum 0) or fast (Perraudin et al. 2013).

    Each iteration: t = STFT(iSTFT(|S|·e^{iφ})); c = t + α(t − t_prev) (written, as in
    librosa, as t − α/(1+α)·t_prev, which has the same phase); φ = angle(c). α = 0.99 is
    the fast Griffin-Lim of Perraudin, Balazs & Søndergaard; α = 0 is the original.
    Same update as `librosa.griffinlim` (which defaults to pad_mode="constant").

    Args:
        magnitude: `(..., n_fft // 2 + 1, T)`.
        settings: the STFT's settings (`STFTSettings`, e.g. a front end's `stft_settings`).
        n_iter: iterations. momentum: α ≥ 0.
        length: output length in samples.
        init: "random" (uniform phase; `seed` makes it reproducible), "zeros", or a tensor
            of angles (radians) or complex values whose phase is used, broadcastable to
            `magnitude`.
    Returns:
        waveform `(..., length)`.
    """
    if momentum < 0:
        raise ValueError(f"momentum must be >= 0, got {momentum}")
    phasor = _initial_phase(init, magnitude.shape, magnitude, seed)
    tiny = torch.finfo(magnitude.dtype).tiny
    previous = None
    for _ in range(n_iter):
        rebuilt = settings.stft(settings.istft(magnitude * phasor, length))
        accelerated = rebuilt if previous is None else rebuilt - (momentum / (1.0 + momentum)) * previous
        phasor = accelerated / (accelerated.abs() + tiny)
        previous = rebuilt
    return settings.istft(magnitude * phasor, length)


def mixture_phase(magnitude: Tensor, mix_stft: Tensor) -> Tensor:
    """Give estimated magnitudes the mixture's phase.

    Args:
        magnitude: `(K, ..., F, T)`, real ≥ 0 (broadcastable against `mix_stft`).
        mix_stft: `(..., F, T)` complex (bins with zero mixture get phase 0).
    Returns:
        complex `(K, ..., F, T)`.
    """
    return torch.polar(*torch.broadcast_tensors(magnitude, mix_stft.angle().to(magnitude.dtype)))


def wiener(source_power: Tensor, mix_stft: Tensor, eps: float = 1e-10) -> Tensor:
    """Single-channel Wiener filter: Ŝⱼ = (Pⱼ + eps/K) / (Σₖ Pₖ + eps) · X.

    The masks sum to one in every bin, so the estimates always sum to the mixture; where
    no source has power (e.g. bins outside a mel front end's range after NNLS) the mixture
    is shared equally instead of being dropped. Elsewhere this is Pⱼ / ΣP to within eps.

    Args:
        source_power: `(K, ..., F, T)`, estimated |Sⱼ|² (broadcastable against `mix_stft`).
        mix_stft: `(..., F, T)` complex.
    Returns:
        complex `(K, ..., F, T)`.
    """
    n_sources = source_power.shape[0]
    mask = (source_power + eps / n_sources) / (source_power.sum(dim=0, keepdim=True) + eps)
    return mask * mix_stft


WIENER_STFT = STFTSettings(2048, 512)  # of `wiener_from_waveforms`: centred, zero padding (inputs shorter than n_fft too)


def wiener_from_waveforms(estimates: Tensor, mix: Tensor, settings: STFTSettings = WIENER_STFT) -> Tensor:
    """Re-estimate sources from waveform estimates by single-channel Wiener masks on the mixture.

    The estimates' STFT powers |Ŝⱼ|² become masks (`wiener`) on the mixture's STFT, so the
    results keep the mixture's phase and sum to it exactly (for methods whose waveforms are
    generated, e.g. decoded from codes, and so carry a phase of their own).

    Args:
        estimates: `(K, ..., N)` waveforms of the K sources.
        mix: `(..., N)` the mixture waveform.
        settings: the STFT of the masks.
    Returns:
        `(K, ..., N)` float waveforms.
    """
    power = settings.stft(estimates).abs().square()
    return settings.istft(wiener(power, settings.stft(mix)), mix.shape[-1])


def multichannel_wiener(
    source_power: Tensor, spatial_cov: Tensor, mix_stft: Tensor, eps: float = 1e-10
) -> Tensor:
    """Multichannel Wiener filter under the local Gaussian model (Duong, Vincent & Gribonval 2010).

    Source j's image has covariance Pⱼ(f, t)·Rⱼ(f); the mixture's is C_x = Σⱼ PⱼRⱼ, and
    Ŝⱼ = (PⱼRⱼ + eps/K·I)(C_x + eps·I)⁻¹ x: the gains sum to I, so the images always sum
    to x (shared equally where no source has power). With one channel and Rⱼ = 1 this is
    `wiener`.

    Args:
        source_power: `(K, ..., F, T)` real ≥ 0.
        spatial_cov: `(K, ..., F, C, C)` Hermitian (real or complex), e.g. trace-normalised.
        mix_stft: `(..., C, F, T)` complex.
        eps: diagonal loading of C_x (regularised inverse), shared equally by the sources.
    Returns:
        complex source images `(K, ..., C, F, T)`.
    """
    n_chan = mix_stft.shape[-3]
    cov = spatial_cov.to(mix_stft.dtype)[..., None, :, :]  # (K, ..., F, 1, C, C)
    image_cov = source_power[..., None, None].to(mix_stft.dtype) * cov  # (K, ..., F, T, C, C)
    eye = torch.eye(n_chan, dtype=mix_stft.dtype, device=mix_stft.device)
    image_cov = image_cov + (eps / image_cov.shape[0]) * eye
    x = mix_stft.movedim(-3, -1)[..., None]  # (..., F, T, C, 1)
    whitened = torch.linalg.solve(image_cov.sum(dim=0), x)  # (..., F, T, C, 1)
    return image_cov.matmul(whitened)[..., 0].movedim(-1, -3)


def spatial_covariances(spec: Tensor) -> Tensor:
    """Time-invariant spatial covariance of each source, trace-normalised to C.

    Args:
        spec: source STFTs `(K, C, F, T)`.
    Returns:
        Rⱼ(f) = Σₜ SⱼSⱼᴴ scaled to trace C, `(K, F, C, C)` Hermitian; the identity where a
        source is silent at f.
    """
    return normalise_covariances(covariance_sums(spec))


def covariance_sums(spec: Tensor) -> Tensor:
    """Σₜ SⱼSⱼᴴ `(K, F, C, C)` of source STFTs `(K, C, F, T)` (sums over blocks of frames add up)."""
    return torch.einsum("kaft,kbft->kfab", spec, spec.conj())


def normalise_covariances(outer: Tensor) -> Tensor:
    """`covariance_sums` `(K, F, C, C)` scaled to trace C; the identity where the trace is 0."""
    n_chan = outer.shape[-1]
    trace = torch.diagonal(outer, dim1=-2, dim2=-1).real.sum(dim=-1)  # (K, F)
    eye = torch.eye(n_chan, dtype=outer.dtype, device=outer.device)
    silent = (trace <= 0)[..., None, None]
    scaled = outer * (n_chan / trace.clamp(min=float(torch.finfo(torch.float64).eps)))[..., None, None]
    return torch.where(silent, eye, scaled)


def blockwise_multichannel_wiener(source_power: Tensor, spatial_cov: Tensor, mix_stft: Tensor,
                                  eps: float = 1e-10) -> Tensor:
    """`multichannel_wiener` over `BLOCK_FRAMES` frames at a time (bounded memory).

    Shapes: source_power `(K, F, T)`, spatial_cov `(K, F, C, C)`, mix_stft `(C, F, T)` →
    images `(K, C, F, T)`.
    """
    blocks = [multichannel_wiener(p, spatial_cov, x, eps)
              for p, x in zip(source_power.split(BLOCK_FRAMES, dim=-1), mix_stft.split(BLOCK_FRAMES, dim=-1))]
    return torch.cat(blocks, dim=-1)


def invert_mel_powers(
    frontend: Frontend,
    mel_powers: Tensor,
    mix: Tensor,
    method: str = "wiener",
    nnls_iter: int = 200,
    phase_from: str = "channel",
    gl_iter: int = 32,
    momentum: float = 0.99,
    gl_init: str = "random",
    seed: int = 0,
    eps: float = 1e-10,
    reference: Tensor | None = None,
) -> Tensor:
    """Estimated source mel powers + the mixture waveform → source waveforms.

    First, mel → STFT magnitudes |Ŝⱼ| by NNLS (`mel_to_stft_magnitude`), started from
    `reference` when given (so the bins a mel band lumps together keep the reference's
    shape, and mel powers equal to the reference's give back the reference). Then:
    - "wiener": Pⱼ = |Ŝⱼ|² become Wiener masks Pⱼ/ΣP, applied to each channel's mixture
      STFT (the same masks on every channel) → iSTFT. Sources then sum to the mixture
      (up to `eps`) and keep its phase and stereo image.
    - "wiener-mc": the multichannel Wiener filter (`multichannel_wiener`) with Pⱼ = |Ŝⱼ|²
      and each source's spatial covariance Rⱼ(f) taken from its "wiener" image
      (`spatial_covariances`, one pass, no EM iterations): each source gets a stereo image
      of its own rather than the mixture's. Solved in float64
      with a diagonal loading of `eps` times the mean mixture power. Mono: "wiener".
    - "phase": |Ŝⱼ| with the mixture's phase → iSTFT; `phase_from` = "channel" uses each
      channel's own phase, "mono" the phase of the channel mean (same output on every channel).
    - "griffinlim": Griffin-Lim on |Ŝⱼ| (`gl_iter`, `momentum`, `gl_init` = "random" with
      `seed`, or "mixture" to start from the mono mixture's phase); the mono estimate is
      copied to every channel.

    Args:
        frontend: the front end the mel powers were computed with (mel of |STFT|**power).
        mel_powers: `(K, n_mels, T)` at `frontend.sample_rate`.
        mix: mixture waveform `(C, N)` at `frontend.sample_rate`; T must equal its frame count.
        reference: optional `(K, F, T)` |STFT|**power of first estimates of the sources on
            the front end's STFT (e.g. a baseline's stems), the NNLS starting point.
    Returns:
        waveforms `(K, C, N)`.
    """
    if method not in METHODS:
        raise ValueError(f"unknown inversion method {method!r}; choose one of: {', '.join(METHODS)}")
    if phase_from not in ("channel", "mono"):
        raise ValueError(f"phase_from must be 'channel' or 'mono', got {phase_from!r}")
    n_chan, n_samples = mix.shape
    mix_stft = frontend.stft(mix)  # (C, F, T)
    if mix_stft.shape[-1] != mel_powers.shape[-1]:
        raise ValueError(f"{mel_powers.shape[-1]} mel frames but the mixture has {mix_stft.shape[-1]} frames")
    fb = frontend.filterbank(mel_powers.device, mel_powers.dtype)
    magnitude = mel_to_stft_magnitude(mel_powers, fb, frontend.power, nnls_iter, reference)  # (K, F, T)
    if method == "griffinlim":
        init = frontend.stft(mix.mean(dim=0)) if gl_init == "mixture" else gl_init
        mono = griffin_lim(magnitude, frontend.stft_settings, gl_iter, momentum, n_samples, init, seed)  # (K, N)
        return mono[:, None].expand(-1, n_chan, -1).contiguous()
    if method == "wiener":
        spec = wiener(magnitude.square()[:, None], mix_stft, eps)  # (K, C, F, T)
    elif method == "wiener-mc":  # in float64, loaded relative to the mean power, as the MWF oracle
        power, x = magnitude.square().double(), mix_stft.to(torch.complex128)
        cov = spatial_covariances(wiener(power[:, None], x, eps))  # (K, F, C, C)
        load = eps * float(power.sum(dim=0).mean()) + float(torch.finfo(torch.float64).eps)
        spec = blockwise_multichannel_wiener(power, cov, x, load).to(mix_stft.dtype)  # (K, C, F, T)
    elif phase_from == "channel":
        spec = mixture_phase(magnitude[:, None], mix_stft)  # (K, C, F, T)
    else:
        spec = mixture_phase(magnitude, frontend.stft(mix.mean(dim=0)))[:, None]  # (K, 1, F, T)
    return frontend.istft(spec, length=n_samples).expand(-1, n_chan, -1).contiguous()
