"""Stateless spectral math in torch: STFT/iSTFT, mel scale and filterbank, mel spectrogram,
power ↔ dB, and the [lo, hi] dB ↔ [0, 1] normalisation.

Every function takes and returns tensors, works on any leading batch shape and on any
device; nothing here holds state or reads files. Conventions follow librosa (its Slaney
and HTK mel scales, `filters.mel`, `power_to_db`), so values can be checked against it.
`power_to_db` is the one dB conversion of the package: the front end, the mixing models
and the inversion all go through it (and its inverse `db_to_power`).
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

# Slaney's mel scale (Auditory Toolbox): linear below 1 kHz, logarithmic above.
_SLANEY_HZ_PER_MEL = 200.0 / 3.0
_SLANEY_BREAK_HZ = 1000.0
_SLANEY_BREAK_MEL = _SLANEY_BREAK_HZ / _SLANEY_HZ_PER_MEL  # 15 mel
_SLANEY_LOGSTEP = math.log(6.4) / 27.0  # ln(6.4)/27 per mel above the break


def _window(window: str | Tensor, win_length: int, like: Tensor) -> Tensor:
    """A periodic analysis window of `win_length` samples on `like`'s device (real dtype)."""
    real = like.real.dtype if like.is_complex() else like.dtype
    if isinstance(window, Tensor):
        return window.to(device=like.device, dtype=real)
    if window == "hann":
        return torch.hann_window(win_length, periodic=True, dtype=real, device=like.device)
    if window in ("ones", "boxcar", "rect"):
        return torch.ones(win_length, dtype=real, device=like.device)
    raise ValueError(f"unknown window {window!r} (use 'hann', 'ones' or a tensor)")


def stft(
    x: Tensor,
    n_fft: int,
    hop_length: int,
    win_length: int | None = None,
    window: str | Tensor = "hann",
    center: bool = True,
    pad_mode: str = "reflect",
) -> Tensor:
    """Short-time Fourier transform, librosa's conventions.

    Args:
        x: waveform `(..., samples)`, real.
        n_fft, hop_length, win_length: in samples (`win_length` defaults to `n_fft`).
        center: pad `n_fft // 2` on both sides so frame t is centred on sample t·hop.
        pad_mode: 'reflect' or 'constant' (librosa ≥ 0.10 defaults to 'constant').
    Returns:
        complex spectrogram `(..., n_fft // 2 + 1, frames)`.
    """
    win_length = win_length or n_fft
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1])
    spec = torch.stft(
        flat,
        n_fft=n_fft,
        hop_length=hop_length,
        win_length=win_length,
        window=_window(window, win_length, flat),
        center=center,
        pad_mode=pad_mode,
        return_complex=True,
    )
    return spec.reshape(*lead, *spec.shape[-2:])


def istft(
    spec: Tensor,
    n_fft: int,
    hop_length: int,
    win_length: int | None = None,
    window: str | Tensor = "hann",
    center: bool = True,
    length: int | None = None,
) -> Tensor:
    """Inverse STFT by weighted overlap-add (the exact inverse of `stft` for the same settings).

    Args:
        spec: complex spectrogram `(..., n_fft // 2 + 1, frames)`.
        length: output length in samples (pads or trims; give it to undo `stft` exactly).
    Returns:
        real waveform `(..., samples)`.
    """
    win_length = win_length or n_fft
    lead = spec.shape[:-2]
    flat = spec.reshape(-1, *spec.shape[-2:])
    wav = torch.istft(
        flat,
        n_fft=n_fft,
        hop_length=hop_length,
        win_length=win_length,
        window=_window(window, win_length, flat),
        center=center,
        length=length,
    )
    return wav.reshape(*lead, wav.shape[-1])


def hz_to_mel(freq: Tensor | float, htk: bool = False) -> Tensor:
    """Frequencies in Hz → mels (librosa's `hz_to_mel`).

    Args:
        freq: frequencies in Hz, any shape (a Python float gives a float64 scalar tensor).
        htk: HTK formula 2595·log10(1 + f/700) instead of Slaney's (linear below 1 kHz,
            logarithmic above).
    Returns:
        mels, same shape (and floating dtype) as `freq`.
    """
    freq = torch.as_tensor(freq, dtype=torch.float64) if not isinstance(freq, Tensor) else freq
    if htk:
        return 2595.0 * torch.log10(1.0 + freq / 700.0)
    linear = freq / _SLANEY_HZ_PER_MEL
    log = _SLANEY_BREAK_MEL + torch.log(freq.clamp(min=_SLANEY_BREAK_HZ) / _SLANEY_BREAK_HZ) / _SLANEY_LOGSTEP
    return torch.where(freq >= _SLANEY_BREAK_HZ, log, linear)


def mel_to_hz(mel: Tensor | float, htk: bool = False) -> Tensor:
    """Mels → frequencies in Hz, the inverse of `hz_to_mel` (same `htk` flag)."""
    mel = torch.as_tensor(mel, dtype=torch.float64) if not isinstance(mel, Tensor) else mel
    if htk:
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    linear = mel * _SLANEY_HZ_PER_MEL
    log = _SLANEY_BREAK_HZ * torch.exp(_SLANEY_LOGSTEP * (mel.clamp(min=_SLANEY_BREAK_MEL) - _SLANEY_BREAK_MEL))
    return torch.where(mel >= _SLANEY_BREAK_MEL, log, linear)


def mel_filterbank(
    sample_rate: float,
    n_fft: int,
    n_mels: int,
    fmin: float = 0.0,
    fmax: float | None = None,
    htk: bool = False,
    norm: str | None = "slaney",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Triangular mel filterbank, equal to `librosa.filters.mel` with the same arguments.

    Band i is a triangle over STFT bins rising from mel point i to i+1 and falling to i+2,
    with n_mels + 2 points equally spaced in mels between `fmin` and `fmax`. Built in
    float64 on the CPU and then cast, so CPU and CUDA get the same weights.

    Args:
        sample_rate: Hz. n_fft: STFT size in samples.
        fmin, fmax: band edges in Hz (`fmax` defaults to sample_rate / 2).
        htk: HTK mel scale instead of Slaney's.
        norm: "slaney" divides each triangle by its width in Hz (constant energy per band);
            None leaves peaks at 1.
    Returns:
        weights `(n_mels, n_fft // 2 + 1)`.
    """
    fmax = sample_rate / 2.0 if fmax is None else float(fmax)
    if norm not in ("slaney", None):
        raise ValueError(f"unsupported mel norm {norm!r} (use 'slaney' or None)")
    if not 0.0 <= fmin < fmax:
        raise ValueError(f"need 0 <= fmin < fmax, got fmin={fmin}, fmax={fmax}")
    fft_freqs = torch.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1, dtype=torch.float64)
    mel_points = torch.linspace(
        float(hz_to_mel(float(fmin), htk)), float(hz_to_mel(fmax, htk)), n_mels + 2, dtype=torch.float64
    )
    edges = mel_to_hz(mel_points, htk)  # (n_mels + 2,) Hz
    widths = edges.diff()  # (n_mels + 1,)
    ramps = edges[:, None] - fft_freqs[None, :]  # (n_mels + 2, F)
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = torch.minimum(rising, falling).clamp(min=0.0)
    if norm == "slaney":
        weights = weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    if not bool(((edges[:-2] == 0) | (weights.amax(dim=1) > 0)).all()):
        warnings.warn(
            f"empty mel bands: {n_mels} mels are too many for n_fft={n_fft} at {sample_rate} Hz "
            f"between {fmin} and {fmax} Hz",
            stacklevel=2,
        )
    return weights.to(device=device, dtype=dtype)


def mel_spectrogram(power_spec: Tensor, fb: Tensor) -> Tensor:
    """Apply a mel filterbank to a (power) spectrogram.

    Args:
        power_spec: `(..., F, T)` non-negative, e.g. |STFT|², F = n_fft // 2 + 1.
        fb: filterbank `(n_mels, F)` from `mel_filterbank`.
    Returns:
        `(..., n_mels, T)` in the units of `power_spec`.
    """
    return torch.matmul(fb.to(device=power_spec.device, dtype=power_spec.dtype), power_spec)


def power_to_db(
    power: Tensor, amin: float = 1e-10, ref: float | Tensor = 1.0, top_db: float | None = None
) -> Tensor:
    """Power → decibels: 10·log10(max(power, amin)) − 10·log10(max(ref, amin)) (librosa's formula).

    The package's only dB conversion (see module docstring).

    Args:
        power: non-negative `(..., F, T)` (any shape if `top_db` is None).
        amin: floor on power and ref (> 0); sets the lowest dB value.
        ref: reference power (0 dB); a float or a tensor broadcastable to `power`.
        top_db: if given, clip each spectrogram (the last two dims) to at least its maximum
            minus `top_db`. librosa takes that maximum over the whole array, so the two agree
            on a single spectrogram.
    Returns:
        dB, same shape as `power`.
    """
    if amin <= 0:
        raise ValueError(f"amin must be > 0, got {amin}")
    ref = torch.as_tensor(ref, dtype=power.dtype, device=power.device)
    db = 10.0 * torch.log10(power.clamp(min=amin)) - 10.0 * torch.log10(ref.clamp(min=amin))
    if top_db is not None:
        if top_db < 0:
            raise ValueError(f"top_db must be >= 0, got {top_db}")
        peak = db.amax(dim=(-2, -1), keepdim=True)
        db = torch.maximum(db, peak - top_db)
    return db


def db_to_power(db: Tensor, ref: float | Tensor = 1.0) -> Tensor:
    """Decibels → power: ref · 10^(dB/10), the inverse of `power_to_db` above its floor."""
    return ref * torch.pow(10.0, db / 10.0)


def db_to_unit(db: Tensor, lo: float, hi: float) -> Tensor:
    """Clip dB to [lo, hi] and map it linearly to [0, 1]: (clip(dB) − lo) / (hi − lo)."""
    if not lo < hi:
        raise ValueError(f"need lo < hi, got lo={lo}, hi={hi}")
    return (db.clamp(lo, hi) - lo) / (hi - lo)


def unit_to_db(unit: Tensor, lo: float, hi: float) -> Tensor:
    """[0, 1] → dB: lo + unit·(hi − lo), the inverse of `db_to_unit` on [lo, hi].

    Values outside [0, 1] (a model's raw output) are extrapolated linearly, not clipped;
    clamp first if the estimate must stay in the front end's range.
    """
    if not lo < hi:
        raise ValueError(f"need lo < hi, got lo={lo}, hi={hi}")
    return lo + unit * (hi - lo)
