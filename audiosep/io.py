"""Audio and file I/O: read any wav/flac/ogg/mp3 to float32 (channels, samples), resample,
convert channel counts, and write outputs atomically (temporary file + rename).

Waveforms here are numpy float32 arrays of shape (channels, samples) in [-1, 1].
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import soxr

from .errors import UserError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`.

    The temporary name keeps `path`'s suffix (so writers that infer the format from it
    still work). If the body raises, the temporary file is removed and `path` is left
    untouched: an output is never half-written or half-overwritten.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    """The process's file-creation mask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected an audio file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: file is empty")


def audio_info(path: str | os.PathLike) -> tuple[int, int, int]:
    """Return (sample_rate, channels, frames) of an audio file without decoding it."""
    path = Path(path)
    _check_readable(path)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as err:
        raise UserError(f"{path}: not a readable audio file ({_first_line(err)})") from None
    return int(info.samplerate), int(info.channels), int(info.frames)


def read_audio(
    path: str | os.PathLike, sample_rate: int | None = None, channels: int | None = None
) -> tuple[np.ndarray, int]:
    """Read an audio file as float32 (channels, samples).

    Args:
        path: wav, flac, ogg or mp3 file.
        sample_rate: resample to this rate (Hz) if given.
        channels: convert to this many channels if given (see `convert_channels`).
    Returns:
        (waveform (C, N) float32, sample rate in Hz).
    Raises:
        UserError: missing path, a directory, an empty or non-audio file, no samples,
            or NaN/inf samples.
    """
    path = Path(path)
    _check_readable(path)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        raise UserError(f"{path}: not a readable audio file ({_first_line(err)})") from None
    if data.shape[0] == 0:
        raise UserError(f"{path}: contains no audio samples")
    if not np.isfinite(data).all():
        raise UserError(f"{path}: contains NaN or infinite samples")
    wav = np.ascontiguousarray(data.T)
    if sample_rate is not None and sample_rate != sr:
        wav, sr = resample(wav, sr, sample_rate), sample_rate
    if channels is not None:
        wav = convert_channels(wav, channels)
    return wav, int(sr)


def resample(wav: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """High-quality resampling (soxr 'VHQ') of (C, N) audio from `sr_in` to `sr_out` Hz.

    Returns (C, round(N·sr_out/sr_in)) in the input's float dtype.
    """
    if sr_in == sr_out:
        return wav
    if sr_in <= 0 or sr_out <= 0:
        raise UserError(f"sample rates must be positive, got {sr_in} → {sr_out}")
    out = soxr.resample(np.ascontiguousarray(wav.T), sr_in, sr_out, quality="VHQ")
    return np.ascontiguousarray(out.T).astype(wav.dtype, copy=False)


def convert_channels(wav: np.ndarray, channels: int) -> np.ndarray:
    """Convert (C, N) audio to `channels` channels.

    To mono: the mean of all channels. From mono: the channel repeated. From more
    channels to fewer (not mono): the first `channels`. Upmixing a multi-channel signal
    is ambiguous and refused.
    """
    have = wav.shape[0]
    if channels == have:
        return wav
    if channels == 1:
        return wav.mean(axis=0, keepdims=True)
    if have == 1:
        return np.repeat(wav, channels, axis=0)
    if have > channels:
        return wav[:channels]
    raise UserError(f"cannot convert {have}-channel audio to {channels} channels")


def fit_length(wav: np.ndarray, length: int) -> np.ndarray:
    """Trim or zero-pad the last axis of `wav` to `length` samples."""
    if wav.shape[-1] >= length:
        return wav[..., :length]
    return np.pad(wav, [(0, 0)] * (wav.ndim - 1) + [(0, length - wav.shape[-1])])


def write_audio(
    path: str | os.PathLike, wav: np.ndarray, sample_rate: int, subtype: str | None = None
) -> Path:
    """Write (C, N) audio atomically; the format follows the suffix (.wav, .flac, .ogg, .mp3).

    `subtype` defaults to 32-bit float for .wav (lossless, so stems sum back to the
    mixture exactly) and to the format's default otherwise.
    """
    path = Path(path)
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 2:
        raise ValueError(f"write_audio expects (channels, samples), got shape {wav.shape}")
    if not np.isfinite(wav).all():
        raise ValueError(f"refusing to write NaN/inf samples to {path}")
    if subtype is None and path.suffix.lower() == ".wav":
        subtype = "FLOAT"
    with atomic_output(path) as tmp:
        sf.write(str(tmp), wav.T, int(sample_rate), subtype=subtype)
    return path


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
