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

Full-length tracks are processed in two passes over blocks (`frame_sums` for Rⱼ and the mean
power, then `in_blocks` for the filter): the result of one pass, in bounded memory.
"""
from __future__ import annotations

from ..spectral.inversion import blockwise_multichannel_wiener, covariance_sums, normalise_covariances
from .common import EPS, HOP, N_FFT, frame_sums, in_blocks, istft, like_input, stft


def mwf(sources, reg: float = 1e-10, n_fft: int = N_FFT, hop: int = HOP):
    """Multichannel Wiener filter oracle (see the module docstring).

    Args:
        sources: `(K, C, N)` true sources.
        reg: diagonal loading of the mixture covariance, relative to the mean source power.
        n_fft, hop: STFT size and hop in samples (Hann window).
    Returns:
        estimates `(K, C, N)`.
    """
    # pass 1: the time-invariant statistics over every frame; pass 2: the filter, block by block
    cov = normalise_covariances(frame_sums(covariance_sums, sources, n_fft, hop))  # Rⱼ (K, F, C, C)
    power = frame_sums(lambda spec: spec.abs().pow(2).mean(dim=1).sum(dim=0).sum(), sources, n_fft, hop)
    n_frames = sources.shape[-1] // hop + 1
    load = reg * float(power) / (n_frames * (n_fft // 2 + 1)) + EPS

    def run(s):
        spec = stft(s, n_fft, hop)  # (K, C, F, T)
        psd = spec.abs().pow(2).mean(dim=1)  # Pⱼ (K, F, T)
        est = blockwise_multichannel_wiener(psd, cov, spec.sum(dim=0), eps=load)  # (K, C, F, T)
        return istft(est, s.shape[-1], n_fft, hop)

    return like_input(in_blocks(run, sources, n_fft, hop), sources)
