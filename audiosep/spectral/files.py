"""Mel spectrograms on disk: `.npy` of [0, 1] values, a `.json` of the settings beside it
(so the spectrogram can be inverted without knowing how it was made) and a `.png` picture.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..io import (AUDIO_SUFFIXES, atomic_output, audio_info, check_not_an_input, check_outputs, first_line, read_audio,
                  write_audio)
from .frontend import Frontend, get_frontend
from .functional import hz_to_mel
from .inversion import griffin_lim, mel_to_stft_magnitude, mixture_phase


def _sidecar(npy: Path) -> Path:
    return npy.with_suffix(".json")


def save_mel(audio: str | Path, output: str | Path, preset: str = "default", picture: bool = True) -> list[Path]:
    """Audio file → `output` (.npy of shape (C, n_mels, frames), float32 in [0, 1]) with its
    settings in `output.json` and, if `picture`, a picture in `output.png`.

    The audio is resampled to the front end's rate; channels are kept.
    """
    output = Path(output)
    if output.suffix != ".npy":
        raise UserError(f"{output}: the mel output must be a .npy file")
    outputs = {output: "a NumPy .npy file", _sidecar(output): "a mel settings file"}
    if picture:
        outputs[output.with_suffix(".png")] = "a PNG picture"
    check_outputs(outputs)  # all three, before any work
    frontend = get_frontend(preset)
    wav, _ = read_audio(audio, sample_rate=frontend.sample_rate)
    least = min_samples(frontend)
    if wav.shape[1] < least:
        raise UserError(f"{audio}: {wav.shape[1] / frontend.sample_rate:.3f} s is too short for the {preset} front "
                        f"end: at least {least} samples at {frontend.sample_rate} Hz ({least / frontend.sample_rate:g} s)")
    unit = frontend.encode(torch.from_numpy(wav)).numpy().astype(np.float32)  # (C, n_mels, T)
    meta = {"frontend": frontend.to_dict(), "samples": wav.shape[1], "channels": wav.shape[0],
            "source": str(audio), "source_sample_rate": audio_info(audio)[0]}
    with atomic_output(output) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, unit)
    with atomic_output(_sidecar(output)) as tmp:
        tmp.write_text(json.dumps(meta, indent=2))
    paths = [output, _sidecar(output)]
    if picture:
        paths.append(save_mel_picture(unit, frontend, output.with_suffix(".png")))
    return paths


def save_mel_picture(unit: np.ndarray, frontend: Frontend, path: Path) -> Path:
    """Draw a (C, n_mels, frames) [0, 1] mel spectrogram, one panel per channel, as a PNG."""
    png = mel_picture(unit, frontend)
    with atomic_output(path) as tmp:
        tmp.write_bytes(png)
    return path


def mel_picture(unit: np.ndarray, frontend: Frontend, compact: bool = False) -> bytes:
    """PNG bytes of a (C, n_mels, frames) [0, 1] mel spectrogram, one panel per channel, its
    frequency axis in Hz (ticks at the bands holding them) and time in s; `compact`: a small
    picture without colour bar or title (for the listening report)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_chan, n_mels, n_frames = unit.shape
    seconds = n_frames * frontend.hop_length / frontend.sample_rate
    size = (4.2, 1.5 * n_chan) if compact else (10, 2.6 * n_chan)
    fig, axes = plt.subplots(n_chan, 1, figsize=size, squeeze=False)
    ticks, labels = _hz_ticks(frontend, n_mels)
    for c, ax in enumerate(axes[:, 0]):
        image = ax.imshow(unit[c], origin="lower", aspect="auto", cmap="magma", vmin=0, vmax=1,
                          extent=(0, seconds, 0, n_mels))
        ax.set_yticks(ticks, labels)
        ax.set_ylabel("Hz" if compact else f"Hz (ch {c})", fontsize=7 if compact else None)
    axes[-1, 0].set_xlabel("time (s)", fontsize=7 if compact else None)
    if compact:
        for ax in axes[:, 0]:
            ax.tick_params(labelsize=6)
        fig.subplots_adjust(left=0.15, right=0.99, top=0.97, bottom=0.25)
    else:
        fig.colorbar(image, ax=axes[:, 0].tolist(),
                     label=f"[0, 1] ↔ [{frontend.db_lo:g}, {frontend.db_hi:g}] dB")
        fig.suptitle(f"{frontend.name}: {n_mels} mels, {frontend.fmin:g}–{frontend.fmax:g} Hz, "
                     f"{frontend.sample_rate} Hz")
    return png_bytes(fig)


def png_bytes(fig) -> bytes:
    """A matplotlib figure as PNG bytes (100 dpi), the figure closed."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _hz_ticks(frontend: Frontend, n_mels: int) -> tuple[list[float], list[str]]:
    """(positions on the band axis [0, n_mels], labels) of round frequencies between the front
    end's fmin and fmax: band b's centre sits at b + ½ on a mel scale spaced evenly from fmin to
    fmax over n_mels + 2 points (the filterbank's), so a frequency's position follows from its mel."""
    lo, hi = (float(hz_to_mel(f, frontend.htk)) for f in (frontend.fmin, frontend.fmax))
    ticks, labels = [], []
    for hz in (100, 500, 1000, 2000, 4000, 8000, 16000):
        if frontend.fmin < hz < frontend.fmax:
            position = (float(hz_to_mel(hz, frontend.htk)) - lo) / (hi - lo) * (n_mels + 1) - 0.5
            if 0 <= position <= n_mels:
                ticks.append(position)
                labels.append(f"{hz // 1000}k" if hz >= 1000 else str(hz))
    return ticks, labels


def min_frames(frontend: Frontend) -> int:
    """Frames a mel file needs to be inverted: the centred STFT pads n_fft / 2 samples by
    reflection, which needs more than that many samples, (frames − 1)·hop > n_fft / 2."""
    return frontend.n_fft // (2 * frontend.hop_length) + 2


def min_samples(frontend: Frontend) -> int:
    """Samples (at the front end's rate) a mel file or picture needs: `min_frames` of them."""
    return (min_frames(frontend) - 1) * frontend.hop_length


def load_mel(npy: str | Path) -> tuple[np.ndarray, Frontend, dict]:
    """Read a mel file written by `save_mel`: ([0, 1] array (C, n_mels, T), front end, metadata)."""
    npy = Path(npy)
    if npy.is_dir():
        raise UserError(f"{npy}: is a folder, expected a mel file (.npy written by `audiosep mel`)")
    if not npy.is_file():
        raise UserError(f"{npy}: no such file")
    meta_path = _sidecar(npy)
    if not meta_path.is_file():
        raise UserError(f"{meta_path}: missing (the settings written beside the .npy by `audiosep mel`)")
    with open(npy, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise UserError(f"{npy}: not a mel file written by `audiosep mel` (not a NumPy .npy file)")
    try:
        unit = np.load(npy, allow_pickle=False)
    except (ValueError, OSError) as err:
        why = "it holds Python objects, not numbers" if "pickle" in str(err) else first_line(err).split(". ")[0]
        raise UserError(f"{npy}: not a mel file written by `audiosep mel` ({why})") from None
    try:
        meta = json.loads(meta_path.read_text())
        frontend = Frontend.from_dict(meta["frontend"])
        samples = int(meta["samples"])
    except (ValueError, OSError, KeyError, TypeError, AttributeError) as err:
        raise UserError(f"{meta_path}: not the settings `audiosep mel` writes ({type(err).__name__}: {err})") from None
    except UserError as err:  # the front end's own check of its settings
        raise UserError(f"{meta_path}: {err}") from None
    least = min_frames(frontend)
    if unit.ndim != 3 or unit.shape[1] != frontend.n_mels or unit.shape[2] < least:
        raise UserError(f"{npy}: expected shape (channels, {frontend.n_mels}, frames >= {least}), got {unit.shape}")
    if frontend.stft_settings.n_frames(samples) != unit.shape[2]:
        raise UserError(f"{meta_path}: 'samples' {meta['samples']} does not match the {unit.shape[2]} frames of "
                        f"{npy} (hop {frontend.hop_length})")
    finite = np.isfinite(unit)
    if not finite.all():
        raise UserError(f"{npy}: {int((~finite).sum())} values are NaN or infinite; a mel file holds values in [0, 1]")
    if unit.min() < 0.0 or unit.max() > 1.0:
        raise UserError(f"{npy}: values {unit.min():g} to {unit.max():g}, outside the [0, 1] scale `audiosep mel` "
                        "writes")
    return unit, frontend, meta


def invert_mel_file(
    npy: str | Path, output: str | Path, method: str = "griffinlim", mix: str | Path | None = None,
    n_iter: int = 64, seed: int = 0,
) -> Path:
    """Mel file → audio at the front end's rate: NNLS to STFT magnitudes, then phase by
    fast Griffin-Lim ("griffinlim") or from the STFT of `mix` ("phase"). `output` may not be
    `npy` or `mix` (it would destroy the input)."""
    if Path(output).suffix.lower() not in AUDIO_SUFFIXES:
        raise UserError(f"{output}: the audio output needs one of the suffixes {', '.join(AUDIO_SUFFIXES)}")
    if method not in ("phase", "griffinlim"):
        raise UserError(f"unknown inversion method {method!r}; choose griffinlim or phase")
    if method == "phase" and mix is None:
        raise UserError("--method phase needs --mix AUDIO (the file whose phase to use)")
    check_not_an_input(output, [npy, mix])
    unit, frontend, meta = load_mel(npy)
    length = int(meta["samples"])
    if method == "phase":  # read and checked before the slow NNLS
        mix_wav, _ = read_audio(mix, sample_rate=frontend.sample_rate, channels=unit.shape[0])
        frames = frontend.stft_settings.n_frames(mix_wav.shape[1])
        if frames != unit.shape[-1]:
            raise UserError(f"{mix}: {mix_wav.shape[1] / frontend.sample_rate:.3f} s gives {frames} frames, the mel "
                            f"spectrogram has {unit.shape[-1]} ({length / frontend.sample_rate:.3f} s)")
    magnitude = mel_to_stft_magnitude(frontend.from_unit(torch.from_numpy(unit)),
                                      frontend.filterbank(), frontend.power)  # (C, F, T)
    if method == "phase":
        wav = frontend.istft(mixture_phase(magnitude, frontend.stft(torch.from_numpy(mix_wav))), length=length)
    else:
        wav = griffin_lim(magnitude, frontend.stft_settings, n_iter=n_iter, length=length, seed=seed)
    return write_audio(output, wav.numpy(), frontend.sample_rate)
