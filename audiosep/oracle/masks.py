"""Mask oracles on the STFT (after sigsep-mus-oracle): ideal binary / ratio masks and the
mixture-as-estimate baseline. Each channel is processed independently.

All take the true sources `(K, C, N)` (numpy or torch; the mixture is their sum) and return
estimates `(K, C, N)` of the same kind (see `audiosep.oracle.common`). The masks are
computed block by block (`in_blocks`: the same result, bounded memory on full-length tracks).
"""
from __future__ import annotations

from .common import EPS, HOP, N_FFT, apply_masks, as_sources, in_blocks, like_input, stft


def ibm(sources, alpha: float = 1.0, theta: float = 0.5, n_fft: int = N_FFT, hop: int = HOP):
    """Ideal binary mask: source j keeps the bins where |Sⱼ|^α / |X|^α ≥ θ.

    With α = 1, θ = 0.5 (the defaults) a bin goes to every source holding at least half the
    mixture's magnitude, so bins may be shared or dropped: the estimates need not sum to
    the mixture.

    Args:
        sources: `(K, C, N)` true sources.
        alpha: spectrogram exponent. theta: threshold on the ratio.
        n_fft, hop: STFT size and hop in samples (Hann window).
    Returns:
        estimates `(K, C, N)`.
    """
    def run(s):
        spec = stft(s, n_fft, hop)  # (K, C, F, T)
        mix = spec.sum(dim=0)
        ratio = spec.abs() ** alpha / (mix.abs() ** alpha + EPS)
        masks = (ratio >= theta).to(s.dtype)
        return apply_masks(masks, mix, s.shape[-1], n_fft, hop)

    return like_input(in_blocks(run, sources, n_fft, hop), sources)


def irm(sources, alpha: float = 2.0, n_fft: int = N_FFT, hop: int = HOP):
    """Ideal ratio mask: Mⱼ = |Sⱼ|^α / (Σₖ |Sₖ|^α + eps), applied to the mixture STFT.

    α = 2 is the single-channel Wiener filter ("IRM2"), α = 1 the magnitude ratio ("IRM1").
    The masks sum to one, so the estimates sum to the mixture.

    Args:
        sources: `(K, C, N)` true sources.
        alpha: spectrogram exponent.
        n_fft, hop: STFT size and hop in samples (Hann window).
    Returns:
        estimates `(K, C, N)`.
    """
    def run(s):
        spec = stft(s, n_fft, hop)
        power = spec.abs() ** alpha
        masks = power / (power.sum(dim=0) + EPS)
        return apply_masks(masks, spec.sum(dim=0), s.shape[-1], n_fft, hop)

    return like_input(in_blocks(run, sources, n_fft, hop), sources)


def mixture_as_estimate(sources):
    """Every estimate is the mixture divided by K, as sigsep-mus-oracle's MIX baseline.

    (The 1/K gain makes the estimates sum to the mixture; BSSEval's distortion filter makes
    SDR insensitive to it, while gain-sensitive metrics such as plain `sdr` are not.)

    Args:
        sources: `(K, C, N)` true sources.
    Returns:
        estimates `(K, C, N)`, all equal to Σₖ sources / K.
    """
    s = as_sources(sources)
    return like_input(s.mean(dim=0, keepdim=True).expand_as(s).clone(), sources)
