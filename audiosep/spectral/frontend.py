"""Front ends: the fixed settings that turn a waveform into a [0, 1] mel spectrogram and back.

A `Frontend` is a frozen, hashable holder of settings; the math lives in
`audiosep.spectral.functional`. Two presets:

- `audiosourcesep`: the earlier piano/violin study (16 kHz, n_fft 2048, hop 512, Hann,
  centred, reflect padding, power 2, 96 Slaney mels over 125–7600 Hz, dB absolute
  (ref 1) clipped to [-100, 20] → (dB + 100)/120, patches of 96 × 64 frames).
- `default`: the package's choice, set from the mel-oracle ceiling measured by
  `benchmarks/frontend.py` (edit `_DEFAULT` below to change it).

`MagnitudeFrontend`: the linear STFT-magnitude patches of VAE-BSS on spectrograms (no mel
filterbank, no dB: the model reconstructs a patch as the sum of its sources, so the domain
must be additive; see `audiosep.separation.vae_bss` for the measurement behind its defaults).

`patchify` / `unpatchify` cut a spectrogram into fixed-width patches for a prior and put
(possibly modified) patches back together by weighted overlap-add.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as nnf
from torch import Tensor

from ..config import from_dict
from ..errors import UserError
from . import functional as F
from .stft import STFTSettings

_MEL_NORMS = ("slaney", None)


def _stft_settings(owner: str, **settings: Any) -> STFTSettings:
    """The `STFTSettings` a front end holds; an invalid one is a UserError naming the front end."""
    try:
        return STFTSettings(**settings)
    except UserError as err:
        raise UserError(f"{owner}: {str(err).removeprefix('STFT settings: ')}") from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Frontend:
    """Waveform ↔ mel spectrogram settings (keyword-only; frozen and hashable).

    Fields (units): sample_rate (Hz); n_fft, hop_length, win_length (samples; win_length
    None → n_fft); window ("hann" | "ones"); center / pad_mode (librosa's framing);
    n_mels, fmin, fmax (Hz; fmax None → sample_rate / 2), htk, mel_norm ("slaney" | None);
    power (|STFT|**power before the mel filterbank: 2 = power, 1 = magnitude);
    db_lo, db_hi (the dB range mapped to [0, 1], dB re 1.0 absolute); patch_frames (frames
    per patch fed to a prior); name (a label only: it takes no part in equality, so a
    checkpoint's domain compares by settings).

    Raises:
        UserError: invalid settings (e.g. from a config or checkpoint).
    """

    sample_rate: int
    n_fft: int
    hop_length: int
    win_length: int | None = None
    window: str = "hann"
    center: bool = True
    pad_mode: str = "reflect"
    n_mels: int
    fmin: float
    fmax: float | None = None
    htk: bool = False
    mel_norm: str | None = "slaney"
    power: float = 2.0
    db_lo: float = -100.0
    db_hi: float = 20.0
    patch_frames: int = 64
    name: str = dataclasses.field(default="custom", compare=False)

    def __post_init__(self) -> None:
        if self.win_length is None:
            object.__setattr__(self, "win_length", self.n_fft)
        if self.fmax is None:
            object.__setattr__(self, "fmax", self.sample_rate / 2.0)
        for key in ("fmin", "fmax", "power", "db_lo", "db_hi"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UserError(f"front end {self.name!r}: {key} must be a number, got {value!r}")
            object.__setattr__(self, key, float(value))
        self._validate()

    def _validate(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise UserError(f"front end {self.name!r}: {what}")

        for key in ("sample_rate", "n_mels", "patch_frames"):
            value = getattr(self, key)
            need(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                 f"{key} must be a positive integer, got {value!r}")
        object.__setattr__(self, "stft_settings", _stft_settings(
            f"front end {self.name!r}", n_fft=self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
            window=self.window, center=self.center, pad_mode=self.pad_mode, sample_rate=self.sample_rate))
        need(self.mel_norm in _MEL_NORMS, f"mel_norm must be 'slaney' or null, got {self.mel_norm!r}")
        need(0.0 <= self.fmin < self.fmax <= self.sample_rate / 2.0,
             f"need 0 <= fmin < fmax <= sample_rate/2, got fmin={self.fmin}, fmax={self.fmax}")
        need(self.power > 0, f"power must be > 0, got {self.power}")
        need(self.db_lo < self.db_hi, f"need db_lo < db_hi, got {self.db_lo}, {self.db_hi}")

    @property
    def n_freqs(self) -> int:
        """Number of STFT bins, n_fft // 2 + 1."""
        return self.stft_settings.n_freqs

    @property
    def amin(self) -> float:
        """The power floor of the dB conversion: 10^(db_lo/10), so flooring and clipping agree."""
        return 10.0 ** (self.db_lo / 10.0)

    def stft(self, wav: Tensor) -> Tensor:
        """Waveform `(..., samples)` → complex STFT `(..., n_freqs, frames)`."""
        return self.stft_settings.stft(wav)

    def istft(self, spec: Tensor, length: int | None = None) -> Tensor:
        """Complex STFT `(..., n_freqs, frames)` → waveform `(..., length)`."""
        return self.stft_settings.istft(spec, length)

    def filterbank(self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """Mel filterbank `(n_mels, n_freqs)` on `device` in `dtype` (cached)."""
        return _filterbank(self, str(torch.device(device or "cpu")), dtype)

    def mel_power(self, wav: Tensor) -> Tensor:
        """Waveform `(..., samples)` → mel spectrogram of |STFT|**power, `(..., n_mels, frames)`."""
        spec = self.stft(wav).abs().pow(self.power)
        return F.mel_spectrogram(spec, self.filterbank(spec.device, spec.dtype))

    def to_unit(self, mel_power: Tensor) -> Tensor:
        """Mel power → [0, 1]: dB (ref 1, floor `amin`) clipped to [db_lo, db_hi], mapped linearly."""
        return F.db_to_unit(F.power_to_db(mel_power, amin=self.amin, ref=1.0), self.db_lo, self.db_hi)

    def from_unit(self, unit: Tensor) -> Tensor:
        """[0, 1] → mel power, the inverse of `to_unit` on its range (not clipped)."""
        return F.db_to_power(F.unit_to_db(unit, self.db_lo, self.db_hi), ref=1.0)

    def encode(self, wav: Tensor) -> Tensor:
        """Waveform `(..., samples)` → normalised mel spectrogram `(..., n_mels, frames)` in [0, 1]."""
        return self.to_unit(self.mel_power(wav))

    def to_dict(self) -> dict[str, Any]:
        """All settings as plain values (for checkpoints and configs)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Frontend:
        """Rebuild from `to_dict` output. Unknown or missing required keys raise UserError."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise UserError(f"unknown front-end key(s) {', '.join(unknown)}; valid keys: {', '.join(names)}")
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        missing = [k for k in required if k not in d]
        if missing:
            raise UserError(f"front-end settings lack required key(s) {', '.join(missing)}")
        return cls(**d)


@functools.lru_cache(maxsize=32)
def _filterbank(fe: Frontend, device: str, dtype: torch.dtype) -> Tensor:
    return F.mel_filterbank(
        fe.sample_rate, fe.n_fft, fe.n_mels, fe.fmin, fe.fmax, fe.htk, fe.mel_norm, dtype=dtype, device=device
    )


_AUDIOSOURCESEP = Frontend(
    sample_rate=16000, n_fft=2048, hop_length=512, n_mels=96, fmin=125.0, fmax=7600.0,
    window="hann", center=True, pad_mode="reflect", htk=False, mel_norm="slaney", power=2.0,
    db_lo=-100.0, db_hi=20.0, patch_frames=64, name="audiosourcesep",
)

# Chosen by the mel-oracle ceiling (`benchmarks/frontend.py`: what the true mel powers give through
# the inversion, beside IRM2): a 125 Hz floor loses the piano's bass, 160 mels from 20 Hz come
# within 1 dB of IRM2, and 256 mels gain little for 60 % more bins a prior must model.
# The dB window is moved up 10 dB: loud synthesized stems (peak 0.8) reach +31 dB in the
# mel domain, which [-100, 20] clipped on 0.7 % of bins, while nothing falls below -90 dB.
_DEFAULT = dataclasses.replace(
    _AUDIOSOURCESEP, n_mels=160, fmin=20.0, fmax=8000.0, db_lo=-90.0, db_hi=30.0, name="default"
)

PRESETS: dict[str, Frontend] = {fe.name: fe for fe in (_DEFAULT, _AUDIOSOURCESEP)}


def get_frontend(name: str) -> Frontend:
    """The preset called `name`; UserError listing the choices if there is none."""
    try:
        return PRESETS[name]
    except KeyError:
        raise UserError(f"unknown front end {name!r}; choose one of: {', '.join(PRESETS)}") from None


NORMALISATIONS = ("patch-max",)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MagnitudeFrontend:
    """Waveform ↔ linear STFT-magnitude patches in [0, 1] (the VAE-BSS spectrogram domain).

    Fields (units): sample_rate (Hz); n_fft, hop_length (samples; the window is n_fft long);
    window ("hann" | "ones"); patch_frames (STFT frames per patch); normalisation
    ("patch-max": each patch is divided by its own maximum, so it lies in [0, 1] with a peak
    of 1 whatever the level, and ratio masks, which ignore a common scale, are unchanged).

    A whole signal is transformed centred with zero padding (any length works, frame t is
    centred on sample t·hop); a training crop of `crop_samples` samples is transformed
    uncentred, which gives exactly `patch_frames` frames equal to interior frames of the
    centred transform of the signal it was cut from.

    Raises:
        UserError: invalid settings (e.g. from a config or checkpoint).
    """

    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 256
    window: str = "hann"
    patch_frames: int = 16
    normalisation: str = "patch-max"

    def __post_init__(self) -> None:
        value = self.patch_frames
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"magnitude front end: patch_frames must be a positive integer, got {value!r}")
        settings = _stft_settings("magnitude front end", n_fft=self.n_fft, hop_length=self.hop_length,
                                  window=self.window, sample_rate=self.sample_rate)  # centred, zero padded
        object.__setattr__(self, "stft_settings", settings)
        object.__setattr__(self, "_crop_stft", dataclasses.replace(settings, center=False))  # `encode_crop`'s
        if self.normalisation not in NORMALISATIONS:
            raise UserError(f"magnitude front end: normalisation must be one of {NORMALISATIONS}, "
                            f"got {self.normalisation!r}")

    @property
    def n_freqs(self) -> int:
        """Number of STFT bins, n_fft // 2 + 1."""
        return self.stft_settings.n_freqs

    @property
    def patch_shape(self) -> tuple[int, int, int]:
        """(1, n_freqs, patch_frames): the shape of one patch, a model's input."""
        return 1, self.n_freqs, self.patch_frames

    @property
    def crop_samples(self) -> int:
        """Samples of a crop whose uncentred STFT has exactly `patch_frames` frames."""
        return (self.patch_frames - 1) * self.hop_length + self.n_fft

    def stft(self, wav: Tensor) -> Tensor:
        """Waveform `(..., samples)` → centred complex STFT `(..., n_freqs, frames)`."""
        return self.stft_settings.stft(wav)

    def istft(self, spec: Tensor, length: int) -> Tensor:
        """Complex STFT `(..., n_freqs, frames)` → waveform `(..., length)` (inverse of `stft`)."""
        return self.stft_settings.istft(spec, length)

    def normalise(self, magnitude: Tensor) -> tuple[Tensor, Tensor]:
        """Patches of magnitudes `(..., n_freqs, frames)` → (the patches in [0, 1], their scales
        `(...)`): each divided by its maximum (an all-zero patch stays zero, scale 0)."""
        scale = magnitude.amax(dim=(-2, -1))
        unit = magnitude / scale.clamp_min(torch.finfo(magnitude.dtype).tiny)[..., None, None]
        return unit, scale

    def encode_crop(self, crop: Tensor) -> Tensor:
        """A crop `(..., crop_samples)` → its normalised magnitude patch `(..., n_freqs, patch_frames)`."""
        if crop.shape[-1] != self.crop_samples:
            raise ValueError(f"a crop has {self.crop_samples} samples, got {crop.shape[-1]}")
        spec = self._crop_stft.stft(crop)
        return self.normalise(spec.abs())[0]

    def to_dict(self) -> dict[str, Any]:
        """All settings as plain values (for checkpoints and configs)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MagnitudeFrontend:
        """Rebuild from `to_dict` output; unknown keys or wrong types raise UserError (`config.from_dict`)."""
        return from_dict(cls, d, where="magnitude front end")


class PatchLayout(NamedTuple):
    """What `unpatchify` needs: `unpatchify(patches, *layout)`."""

    n_frames: int
    hop_frames: int
    lead_shape: tuple[int, ...]


def _n_patches(n_frames: int, patch_frames: int, hop_frames: int) -> int:
    return max(1, math.ceil((n_frames - patch_frames) / hop_frames) + 1)


def patchify(
    spec: Tensor, patch_frames: int, hop_frames: int, pad_value: float = 0.0
) -> tuple[Tensor, PatchLayout]:
    """Cut a spectrogram into overlapping fixed-width patches.

    The end is padded with `pad_value` (0 = the floor of a [0, 1] spectrogram) so that
    every frame lies in at least one patch.

    Args:
        spec: `(..., F, T)`.
        patch_frames: frames per patch. hop_frames: frames between patch starts,
            1 <= hop_frames <= patch_frames.
    Returns:
        patches `(B, 1, F, patch_frames)` with B = prod(...) · n_patches, ordered
        leading-index major (all patches of the first spectrogram come first), and the
        `PatchLayout` for `unpatchify`.
    """
    if not 1 <= hop_frames <= patch_frames:
        raise ValueError(f"need 1 <= hop_frames <= patch_frames, got {hop_frames}, {patch_frames}")
    lead, (n_bins, n_frames) = spec.shape[:-2], spec.shape[-2:]
    n_patches = _n_patches(n_frames, patch_frames, hop_frames)
    padded_len = (n_patches - 1) * hop_frames + patch_frames
    padded = nnf.pad(spec, (0, padded_len - n_frames), value=pad_value)
    windows = padded.unfold(-1, patch_frames, hop_frames)  # (..., F, n_patches, P)
    patches = windows.movedim(-2, -3).reshape(-1, 1, n_bins, patch_frames)
    return patches, PatchLayout(n_frames, hop_frames, tuple(lead))


def _overlap_weight(patch_frames: int, like: Tensor) -> Tensor:
    """Strictly positive Hann-shaped weight over a patch's frames: edges count least."""
    return torch.hann_window(patch_frames + 2, periodic=False, dtype=like.dtype, device=like.device)[1:-1]


def unpatchify(
    patches: Tensor, n_frames: int, hop_frames: int, lead_shape: tuple[int, ...] = ()
) -> Tensor:
    """Reassemble patches by weighted overlap-add (the inverse of `patchify`).

    Each output frame is the average of the patches covering it, weighted by a Hann-shaped
    window that is strictly positive (patch edges, where a model sees least context, count
    least). The weights are normalised per frame, so an unmodified spectrogram comes back
    exactly.

    Args:
        patches: `(*extra, B, 1, F, P)` where B = prod(lead_shape) · n_patches (extra leading
            dims, e.g. K sources, are kept).
        n_frames, hop_frames, lead_shape: from `patchify`'s `PatchLayout`.
    Returns:
        `(*extra, *lead_shape, F, n_frames)`.
    """
    *extra, n_batch, _, n_bins, patch_frames = patches.shape
    n_patches = _n_patches(n_frames, patch_frames, hop_frames)
    n_items = math.prod(lead_shape)
    if n_batch != n_items * n_patches:
        raise ValueError(f"{n_batch} patches do not match {n_items} spectrogram(s) × {n_patches} patches")
    padded_len = (n_patches - 1) * hop_frames + patch_frames
    weight = _overlap_weight(patch_frames, patches)
    cols = (patches.reshape(-1, n_patches, n_bins, patch_frames) * weight).reshape(-1, n_patches, n_bins * patch_frames)
    summed = nnf.fold(cols.transpose(1, 2), (1, padded_len), (1, patch_frames), stride=(1, hop_frames))
    norm = nnf.fold(
        weight.expand(1, n_patches, patch_frames).transpose(1, 2),
        (1, padded_len), (1, patch_frames), stride=(1, hop_frames),
    )
    out = (summed / norm)[..., 0, :n_frames]  # (N, F, n_frames)
    return out.reshape(*extra, *lead_shape, n_bins, n_frames)
