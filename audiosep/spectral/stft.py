"""The one STFT settings type: every STFT the package takes goes through `STFTSettings`.

`spectral.functional` holds the stateless transforms (`stft`, `istft`, librosa's
conventions); `STFTSettings` holds a set of their arguments, validated once, with what follows
from them (`n_freqs`) and their checkpoint form (`to_dict` / `from_dict`), as torchaudio's
`transforms.Spectrogram` holds the arguments of `functional.spectrogram`. The mel `Frontend`,
the `MagnitudeFrontend` of VAE-BSS, NMF models, the mask network, the oracles and the
inversions each hold or build one.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from ..errors import UserError
from . import functional as F

WINDOWS = ("hann", "ones")
PAD_MODES = ("reflect", "constant")


@dataclasses.dataclass(frozen=True)
class STFTSettings:
    """Settings of a short-time Fourier transform (frozen and hashable; equal settings compare equal).

    Fields (units): n_fft, hop_length (samples, hop ≤ n_fft); win_length (samples, ≤ n_fft;
    None → n_fft); window ("hann" | "ones", periodic); center (frame t centred on sample
    t·hop_length, so any signal length works); pad_mode ("constant": zeros, librosa ≥ 0.10's
    default, or "reflect"), the padding of a centred transform; sample_rate (Hz; None where the
    rate does not matter, e.g. an oracle's masks; a model's domain states it).

    Raises:
        UserError: invalid settings (from a config or a checkpoint).
    """

    n_fft: int
    hop_length: int
    win_length: int | None = None
    window: str = "hann"
    center: bool = True
    pad_mode: str = "constant"
    sample_rate: int | None = None

    def __post_init__(self) -> None:
        if self.win_length is None:
            object.__setattr__(self, "win_length", self.n_fft)
        for key in ("n_fft", "hop_length", "win_length") + (("sample_rate",) if self.sample_rate is not None else ()):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"STFT settings: {key} must be a positive integer, got {value!r}")
        if self.hop_length > self.n_fft:
            raise UserError(f"STFT settings: the hop ({self.hop_length}) must not exceed n_fft ({self.n_fft})")
        if self.win_length > self.n_fft:
            raise UserError(f"STFT settings: win_length {self.win_length} must not exceed n_fft {self.n_fft}")
        if self.window not in WINDOWS:
            raise UserError(f"STFT settings: window must be one of {WINDOWS}, got {self.window!r}")
        if self.pad_mode not in PAD_MODES:
            raise UserError(f"STFT settings: pad_mode must be one of {PAD_MODES}, got {self.pad_mode!r}")
        if not isinstance(self.center, bool):
            raise UserError(f"STFT settings: center must be true or false, got {self.center!r}")

    @property
    def n_freqs(self) -> int:
        """Frequency bins F = n_fft // 2 + 1."""
        return self.n_fft // 2 + 1

    def n_frames(self, samples: int) -> int:
        """Frames `stft` makes of `samples` samples (centred: one per hop, plus the last)."""
        if self.center:
            return samples // self.hop_length + 1
        return max(0, (samples - self.n_fft) // self.hop_length + 1)

    def stft(self, wav: Tensor) -> Tensor:
        """Waveform `(..., N)` → complex spectrogram `(..., n_freqs, frames)`."""
        return F.stft(wav, self.n_fft, self.hop_length, self.win_length, self.window, self.center, self.pad_mode)

    def istft(self, spec: Tensor, length: int | None = None) -> Tensor:
        """Complex spectrogram `(..., n_freqs, frames)` → waveform `(..., length)`, the inverse
        of `stft` (give `length` to undo it exactly)."""
        return F.istft(spec, self.n_fft, self.hop_length, self.win_length, self.window, self.center, length)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for a checkpoint (with `kind` = "stft"); `from_dict` inverts it."""
        return {"kind": "stft", **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> STFTSettings:
        """Rebuild from `to_dict` output, or from an older checkpoint's STFT domain (which named
        sample_rate, n_fft, hop_length and window only: centred, zero padded).

        Raises:
            UserError: not an STFT's settings, unknown keys, or invalid values.
        """
        if not isinstance(d, Mapping) or d.get("kind") != "stft":
            kind = d.get("kind") if isinstance(d, Mapping) else d
            raise UserError(f"expected STFT settings, got {kind!r}")
        values = {k: v for k, v in d.items() if k != "kind"}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown or not {"n_fft", "hop_length"} <= set(values):
            raise UserError(f"malformed STFT settings {dict(d)!r}: need n_fft and hop_length, "
                            f"valid keys {', '.join(sorted(names))}")
        return cls(**values)

    def describe(self) -> str:
        """One line, e.g. `STFT at 16000 Hz (n_fft=2048, hop_length=512, window=hann)`."""
        rate = f" at {self.sample_rate} Hz" if self.sample_rate is not None else ""
        return f"STFT{rate} (n_fft={self.n_fft}, hop_length={self.hop_length}, window={self.window})"
