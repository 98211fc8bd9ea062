"""Spectral front end and inversion.

- `functional`: stateless STFT/iSTFT, mel filterbank and spectrogram, power ↔ dB, dB ↔ [0, 1].
- `stft`: `STFTSettings`, the one STFT settings type (validation, `n_freqs`, `stft`/`istft`,
  checkpoint form) every front end, model and inversion holds.
- `frontend`: `Frontend` settings and presets (`get_frontend`), `MagnitudeFrontend` (VAE-BSS),
  `patchify` / `unpatchify`.
- `inversion`: mel → STFT by NNLS, Griffin-Lim, mixture phase, Wiener filters, `invert_mel_powers`.
"""
from .frontend import PRESETS, Frontend, MagnitudeFrontend, PatchLayout, get_frontend, patchify, unpatchify
from .inversion import griffin_lim, invert_mel_powers, mel_to_stft_magnitude, multichannel_wiener, wiener
from .stft import STFTSettings

__all__ = [
    "PRESETS", "Frontend", "MagnitudeFrontend", "PatchLayout", "get_frontend", "patchify", "unpatchify",
    "griffin_lim", "invert_mel_powers", "mel_to_stft_magnitude", "multichannel_wiener", "wiener", "STFTSettings",
]
