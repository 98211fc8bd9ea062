"""Mel-domain oracles: how well separation can do when only mel spectrograms are known.

`mel_ibm` / `mel_irm`: masks computed from the true sources' mel powers (per channel, at
the track's own rate, on the oracle STFT), mapped back to STFT bins through the filterbank
and applied to the mixture STFT. A bin's mask is the average of the mel-band masks of the
bands covering it, weighted by the filterbank (bins covered by no band, such as DC and
Nyquist, take the mask of the band with the nearest centre), so ratio masks still sum to
one over the sources.

`mel_ideal`: the true sources' mel powers under a project `Frontend` (mono, at the front
end's rate) passed through the project's own inversion
(`audiosep.spectral.inversion.invert_mel_powers`): the ceiling of any mel-domain prior with
that front end and inversion.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..io import fit_length, resample
from ..spectral import functional as F
from ..spectral.inversion import invert_mel_powers
from .common import EPS, HOP, N_FFT, apply_masks, as_sources, like_input, stft

N_MELS = 96


def band_to_bin_weights(fb: Tensor, band_hz: Tensor, bin_hz: Tensor) -> Tensor:
    """Weights that spread mel-band values back onto STFT bins.

    Args:
        fb: mel filterbank `(n_mels, F)`, non-negative.
        band_hz: band centre frequencies `(n_mels,)`. bin_hz: bin frequencies `(F,)`.
    Returns:
        `(F, n_mels)`, each row non-negative and summing to one: the filterbank's column
        normalised, or a one-hot on the nearest band for bins no band covers.
    """
    weights = fb.T.clone()
    total = weights.sum(dim=1, keepdim=True)
    uncovered = total[:, 0] <= 0
    nearest = (bin_hz[:, None] - band_hz[None, :]).abs().argmin(dim=1)
    weights[uncovered] = torch.nn.functional.one_hot(nearest[uncovered], fb.shape[0]).to(fb.dtype)
    return weights / weights.sum(dim=1, keepdim=True)


def _mel_setup(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None
) -> tuple[Tensor, Tensor]:
    """The filterbank `(n_mels, F)` and its band-to-bin weights `(F, n_mels)`, float64."""
    fmax = sample_rate / 2.0 if fmax is None else float(fmax)
    fb = F.mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax, dtype=torch.float64)
    lo, hi = float(F.hz_to_mel(float(fmin))), float(F.hz_to_mel(fmax))
    mel_points = torch.linspace(lo, hi, n_mels + 2, dtype=torch.float64)
    band_hz = F.mel_to_hz(mel_points[1:-1])
    bin_hz = torch.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1, dtype=torch.float64)
    return fb, band_to_bin_weights(fb, band_hz, bin_hz)


def _mel_masked(sources, sample_rate, mel_masks, n_fft, hop, n_mels, fmin, fmax):
    """Shared body of `mel_ibm` / `mel_irm`.

    `mel_masks(source_mel (K, C, M, T), mix_mel (C, M, T)) -> (K, C, M, T)` gives the
    mel-domain masks; they are mapped to bins and applied to the mixture STFT.
    """
    s = as_sources(sources)
    fb, to_bins = _mel_setup(sample_rate, n_fft, n_mels, fmin, fmax)
    spec = stft(s, n_fft, hop)  # (K, C, F, T)
    mix = spec.sum(dim=0)
    masks = mel_masks(F.mel_spectrogram(spec.abs() ** 2, fb), F.mel_spectrogram(mix.abs() ** 2, fb))
    return like_input(apply_masks(to_bins @ masks, mix, s.shape[-1], n_fft, hop), sources)


def mel_ibm(
    sources, sample_rate: int, alpha: float = 1.0, theta: float = 0.5, n_fft: int = N_FFT, hop: int = HOP,
    n_mels: int = N_MELS, fmin: float = 0.0, fmax: float | None = None,
):
    """Mel-domain ideal binary mask: band m goes to source j where (Mⱼ/Mₓ)^(α/2) ≥ θ.

    Mⱼ, Mₓ are the mel powers of source j and of the mixture (so α = 1, θ = 0.5 compare
    magnitudes, as `ibm`). Mapped to bins, the binary band masks become soft where bands
    overlap.

    Args:
        sources: `(K, C, N)` true sources at `sample_rate` Hz.
        alpha, theta: as `ibm`. n_fft, hop: oracle STFT (samples).
        n_mels, fmin, fmax: Slaney mel filterbank (Hz; fmax defaults to sample_rate / 2).
    Returns:
        estimates `(K, C, N)`.
    """
    def masks(src_mel: Tensor, mix_mel: Tensor) -> Tensor:
        return ((src_mel / (mix_mel + EPS)) ** (alpha / 2) >= theta).to(src_mel.dtype)

    return _mel_masked(sources, sample_rate, masks, n_fft, hop, n_mels, fmin, fmax)


def mel_irm(
    sources, sample_rate: int, alpha: float = 2.0, n_fft: int = N_FFT, hop: int = HOP,
    n_mels: int = N_MELS, fmin: float = 0.0, fmax: float | None = None,
):
    """Mel-domain ideal ratio mask: band mask Mⱼ^(α/2) / (Σₖ Mₖ^(α/2) + eps), Mⱼ the mel powers.

    α = 2 (default) is the mel-band Wiener gain. The masks sum to one over the sources, so
    the estimates sum to the mixture.

    Args:
        sources: `(K, C, N)` true sources at `sample_rate` Hz.
        alpha: exponent on mel magnitudes. n_fft, hop: oracle STFT (samples).
        n_mels, fmin, fmax: Slaney mel filterbank (Hz; fmax defaults to sample_rate / 2).
    Returns:
        estimates `(K, C, N)`.
    """
    def masks(src_mel: Tensor, mix_mel: Tensor) -> Tensor:
        power = src_mel ** (alpha / 2)
        return power / (power.sum(dim=0) + EPS)

    return _mel_masked(sources, sample_rate, masks, n_fft, hop, n_mels, fmin, fmax)


def mel_ideal(sources, sample_rate: int, frontend, method: str = "wiener"):
    """The true sources' mel powers inverted by the project's own mel → waveform path.

    Sources are resampled to `frontend.sample_rate`; each source's mel power is that of its
    channel mean (the front end is mono); `invert_mel_powers(frontend, mel_powers, mix,
    method)` turns them back into `(K, C, N')` waveforms using the (resampled) mixture,
    which are resampled back to `sample_rate` and fitted to the input length. Content above
    the front end's Nyquist frequency is lost, as it is for any method using that front end.

    Args:
        sources: `(K, C, N)` true sources at `sample_rate` Hz.
        frontend: an `audiosep.spectral.frontend.Frontend`.
        method: the inversion method passed on ("wiener", ...).
    Returns:
        estimates `(K, C, N)`.
    """
    s = as_sources(sources)
    n_src, n_chan, length = s.shape
    rate = frontend.sample_rate
    flat = resample(s.reshape(n_src * n_chan, length).numpy(), sample_rate, rate)
    src = torch.from_numpy(flat).reshape(n_src, n_chan, -1).to(torch.float32)
    mel_powers = frontend.mel_power(src.mean(dim=1))  # (K, n_mels, T)
    est = invert_mel_powers(frontend, mel_powers, src.sum(dim=0), method=method)  # (K, C, N')
    est = est.detach().cpu().to(torch.float64).reshape(n_src * n_chan, -1).numpy()
    back = fit_length(resample(est, rate, sample_rate), length)
    return like_input(torch.from_numpy(np.ascontiguousarray(back)).reshape(n_src, n_chan, length), sources)
