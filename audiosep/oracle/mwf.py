"""The multichannel Wiener filter oracle (local Gaussian model, after sigsep-mus-oracle).

Each source image Sⱼ(f, t) ∈ ℂ^C is modelled as zero-mean complex Gaussian with covariance
Pⱼ(f, t)·Rⱼ(f): a power spectral density times a time-invariant spatial covariance. Both are
taken from the true sources once (no EM iterations):

- Pⱼ(f, t) = mean over channels of |Sⱼ(f, t)|²;
- Rⱼ(f) = Σₜ Sⱼ Sⱼᴴ, scaled to trace C (sigsep-mus-oracle averages Sⱼ Sⱼᴴ / Pⱼ instead,
  which weights silent frames like loud ones);

and the estimate is Ŝⱼ = Pⱼ Rⱼ (Cₓ + δ I)⁻¹ X with Cₓ = Σₖ Pₖ Rₖ
(`audiosep.spectral.inversion.multichannel_wiener`), δ being `reg` times the mean power
of the sources (plus float64 eps). On mono input Rⱼ = 1 and this is IRM2.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..spectral.inversion import multichannel_wiener
from .common import EPS, HOP, N_FFT, as_sources, istft, like_input, stft

# Frames filtered at once: bounds the (K, F, frames, C, C) covariances the filter builds.
BLOCK_FRAMES = 256


def spatial_covariances(spec: Tensor) -> Tensor:
    """Time-invariant spatial covariance of each source, trace-normalised to C.

    Args:
        spec: source STFTs `(K, C, F, T)`.
    Returns:
        Rⱼ(f) `(K, F, C, C)` Hermitian; the identity where a source is silent at f.
    """
    n_chan = spec.shape[1]
    outer = torch.einsum("kaft,kbft->kfab", spec, spec.conj())
    trace = torch.diagonal(outer, dim1=-2, dim2=-1).real.sum(dim=-1)  # (K, F)
    eye = torch.eye(n_chan, dtype=spec.dtype)
    silent = (trace <= 0)[..., None, None]
    scaled = outer * (n_chan / trace.clamp(min=EPS))[..., None, None]
    return torch.where(silent, eye, scaled)


def mwf(sources, reg: float = 1e-10, n_fft: int = N_FFT, hop: int = HOP):
    """Multichannel Wiener filter oracle (see the module docstring).

    Args:
        sources: `(K, C, N)` true sources.
        reg: diagonal loading of the mixture covariance, relative to the mean source power.
        n_fft, hop: STFT size and hop in samples (Hann window).
    Returns:
        estimates `(K, C, N)`.
    """
    s = as_sources(sources)
    spec = stft(s, n_fft, hop)  # (K, C, F, T)
    psd = spec.abs().pow(2).mean(dim=1)  # Pⱼ (K, F, T)
    cov = spatial_covariances(spec)  # Rⱼ (K, F, C, C)
    mix = spec.sum(dim=0)  # X (C, F, T)
    load = reg * float(psd.sum(dim=0).mean()) + EPS
    blocks = [
        multichannel_wiener(p, cov, x, eps=load)
        for p, x in zip(psd.split(BLOCK_FRAMES, dim=-1), mix.split(BLOCK_FRAMES, dim=-1))
    ]
    est = torch.cat(blocks, dim=-1)  # (K, C, F, T)
    return like_input(istft(est, s.shape[-1], n_fft, hop), sources)
