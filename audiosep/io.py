"""Audio and file I/O: read any wav/flac/ogg/mp3 to float32 (channels, samples), resample,
convert channel counts, and write outputs atomically (temporary file + rename).

Waveforms here are numpy float32 arrays of shape (channels, samples) in [-1, 1].
"""
from __future__ import annotations

import contextlib
import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import soundfile as sf
import soxr

from .errors import UserError

SAMPLE_RATES = (1000, 384000)  # Hz a model or dataset may be made at (below, an STFT frame spans seconds)
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`.

    The temporary name keeps `path`'s suffix (so writers that infer the format from it
    still work). If the body raises (an error, Ctrl-C, or SIGTERM turned into an exception
    by the CLI), the temporary file and any folder created for it are removed and `path` is
    left untouched: an output is never half-written or half-overwritten.
    """
    with atomic_outputs([path]) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_outputs(paths: Sequence[str | os.PathLike]) -> Iterator[list[Path]]:
    """`atomic_output` for several files written together (the stems of one track): all are
    renamed into place after the body succeeds, none if it raises.

    Raises:
        UserError: a parent folder cannot be created (a file in the way, no permission).
    """
    paths = [Path(p) for p in paths]
    created: list[Path] = []
    temps: list[Path] = []
    try:
        for path in paths:
            created += _make_parents(path.parent)
            temps.append(_temp_beside(path))
        yield temps
        for tmp, path in zip(temps, paths):
            _replace(tmp, path)
    finally:
        for tmp in temps:
            if tmp.exists():
                tmp.unlink()
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only succeeds if nothing landed in it


def _replace(tmp: Path, path: Path) -> None:
    """Rename the written temporary file onto `path`; a folder in the way is a UserError
    naming `path` (not the temporary file, which the caller removes)."""
    try:
        os.replace(tmp, path)
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, expected a file name") from None


def _make_parents(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; the ones created, outermost first."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"{folder}: cannot create this folder (a file is in the way)") from None
    except PermissionError:
        raise UserError(f"{folder}: cannot create this folder (permission denied)") from None
    return missing


def _temp_beside(path: Path) -> Path:
    """A new empty hidden file `.<stem>.<random>.tmp<suffix>` beside `path`, usual permissions."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    except PermissionError:
        raise UserError(f"{path.parent}: cannot write here (permission denied)") from None
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
    return Path(tmp)


def check_output_dir(folder: str | os.PathLike) -> Path:
    """UserError unless `folder` is, or can be created as, a writable folder; checked before
    any compute so that no work is lost at the end. Nothing is created."""
    folder = Path(folder)
    problem = _unwritable(folder)
    if problem:
        raise UserError(f"{folder}: cannot be an output folder ({problem})")
    return folder


def check_output_file(path: str | os.PathLike) -> Path:
    """UserError unless `path` can be written as a file: not a folder, and its folder is or can
    be made writable (see `check_output_dir`)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder, expected a file name")
    problem = _unwritable(path.parent)
    if problem:
        raise UserError(f"{path}: cannot be written ({problem})")
    return path


# the first bytes of the files the CLI writes, by the kind `check_output_kind` is told (the
# CSV and JSON files start with the header / first key their writers always put first)
OUTPUT_MAGIC = {"a NumPy .npy file": (b"\x93NUMPY",), "a checkpoint (torch.save)": (b"PK\x03\x04",),
                "an HTML page": (b"<!DOCTYPE html", b"<!doctype html", b"<html"),
                "a PNG picture": (b"\x89PNG",),
                "an evaluation table": (b"time,target,metric,score,",),
                "an evaluation summary": (b"method,target,metric,score,",),
                "a training log": (b"step,loss,valid_loss,",),
                "a mel settings file": (b'{\n  "frontend"',),
                "a run record": (b'{\n  "report"',),
                "a museval track report": (b'{\n  "targets"',)}


def check_output_kind(path: str | os.PathLike, kind: str) -> None:
    """UserError if `path` is an existing file that is not of `kind` (a key of `OUTPUT_MAGIC`, or
    "audio"): a file of another kind is someone's data, not an earlier output, so it is never
    replaced."""
    path = Path(path)
    if not path.is_file():
        return
    if kind == "audio":
        try:
            sf.info(str(path))
            return
        except (sf.LibsndfileError, RuntimeError):
            pass
    else:
        with open(path, "rb") as f:
            head = f.read(32)
        if head.startswith(OUTPUT_MAGIC[kind]):
            return
    raise UserError(f"{path}: exists and is not {'an audio file' if kind == 'audio' else kind}; it is not "
                    "replaced (move it, or name another output)")


def check_outputs(kinds: Mapping[str | os.PathLike, str]) -> None:
    """`check_output_file` and `check_output_kind` for every {path: kind} a command will write:
    the one check a writer makes of all its files before any work, so none is written when one
    of them could not be."""
    for path, kind in kinds.items():
        check_output_file(path)
        check_output_kind(path, kind)


def check_not_an_input(output: str | os.PathLike, inputs: Sequence[str | os.PathLike | None]) -> None:
    """UserError when `output` names one of the files the command reads (`None` inputs are
    skipped): writing it would destroy that input."""
    target = Path(output).resolve()
    for path in inputs:
        if path is not None and Path(path).resolve() == target:
            raise UserError(f"{output}: is also an input of this command; name another output")


def refuse_non_finite(samples: np.ndarray, path: str | os.PathLike) -> None:
    """UserError naming `path` when `samples` (read from it) hold NaN or infinite values."""
    if not np.isfinite(samples).all():
        raise UserError(f"{path}: contains NaN or infinite samples")


def check_finite_audio(path: str | os.PathLike, block_frames: int = 1 << 20) -> None:
    """UserError when the audio file at `path` holds NaN or infinite samples; read in blocks
    of `block_frames`, so a check before any work costs no more memory than one block."""
    _check_readable(Path(path))
    try:
        for block in sf.blocks(str(path), blocksize=block_frames, dtype="float32", always_2d=True):
            refuse_non_finite(block, path)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise UserError(f"{path}: not a readable audio file ({first_line(err)})") from None


def _unwritable(folder: Path) -> str | None:
    """Why `folder` cannot be used (or made) for writing, or None."""
    existing = next(p for p in (folder, *folder.parents, Path(".")) if p.exists())
    if not existing.is_dir():
        return "is a file" if existing == folder else f"is under the file {existing}"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"permission denied on {existing}"
    return None


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
        raise UserError(f"{path}: not a readable audio file ({first_line(err)})") from None
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
        raise UserError(f"{path}: not a readable audio file ({first_line(err)})") from None
    if data.shape[0] == 0:
        raise UserError(f"{path}: contains no audio samples")
    _warn_if_truncated(path)
    refuse_non_finite(data, path)
    wav = np.ascontiguousarray(data.T)
    if sample_rate is not None and sample_rate != sr:
        wav, sr = resample(wav, sr, sample_rate), sample_rate
    if channels is not None:
        wav = convert_channels(wav, channels)
    return wav, int(sr)


def _warn_if_truncated(path: Path) -> None:
    """Warn when a WAV file holds fewer bytes of audio than its header announces (a copy or
    download cut short: libsndfile reads what is there without a word)."""
    declared, available = _wav_data_sizes(path)
    if declared is not None and 0 < available < declared:
        warnings.warn(f"{path}: truncated WAV: the header announces {declared} bytes of audio, the file holds "
                      f"{available} ({100 * available / declared:.0f} %); reading what is there", stacklevel=3)


def _wav_data_sizes(path: Path) -> tuple[int | None, int]:
    """(bytes the 'data' chunk declares, bytes present after its header) of a RIFF/WAVE file;
    (None, 0) for other files and for writers that leave the size open (0 or 0xFFFFFFFF)."""
    with open(path, "rb") as f:
        if f.read(12)[8:12] != b"WAVE":
            return None, 0
        size = path.stat().st_size
        while True:
            header = f.read(8)
            if len(header) < 8:
                return None, 0
            chunk, length = header[:4], int.from_bytes(header[4:], "little")
            if chunk == b"data":
                return (None, 0) if length in (0, 0xFFFFFFFF) else (length, size - f.tell())
            f.seek(length + (length & 1), os.SEEK_CUR)


def rms_db(wav: np.ndarray) -> float:
    """RMS of `wav` (any shape) in dBFS, in float64 (−200 dB for silence)."""
    return 10.0 * math.log10(float(np.mean(np.square(wav, dtype=np.float64))) + 1e-20)


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


# Containers `write_audio` knows, their sample formats (`--bits`) and the default one.
OUTPUT_SUBTYPES = {
    "wav": {"16": "PCM_16", "24": "PCM_24", "32f": "FLOAT"},
    "flac": {"16": "PCM_16", "24": "PCM_24"},
    "mp3": {"mp3": "MPEG_LAYER_III"},  # lossy; libsndfile's LAME encoder (soundfile wheels ship it)
}
DEFAULT_BITS = {"wav": "32f", "flac": "24", "mp3": "mp3"}
CLIP_MODES = ("rescale", "clamp", "none")


@dataclass(frozen=True)
class OutputFormat:
    """How stems are written: container, sample format, and what happens to peaks above full scale.

    format: "wav", "flac" or "mp3". bits: "16", "24" or "32f" (float; wav only), None for
    the container's default (wav: 32f, so stems sum back to the mixture exactly; flac: 24;
    mp3 has none). clip_mode: "rescale" (all stems of a track scaled by one factor so the
    loudest peak is just under 1: their sum stays the mixture, scaled), "clamp" (samples
    cut at ±1), or "none" (float wav only: samples above 1 are kept).

    Raises:
        UserError: an unknown or impossible combination (flac at 32f, --bits with mp3,
            clip_mode none into integer samples, which would clip anyway).
    """

    format: str = "wav"
    bits: str | None = None
    clip_mode: str = "rescale"

    def __post_init__(self) -> None:
        if self.format not in OUTPUT_SUBTYPES:
            raise UserError(f"unknown output format '{self.format}'; choose from: {', '.join(OUTPUT_SUBTYPES)}")
        if self.clip_mode not in CLIP_MODES:
            raise UserError(f"unknown clip mode '{self.clip_mode}'; choose from: {', '.join(CLIP_MODES)}")
        if self.bits is not None and self.bits not in OUTPUT_SUBTYPES[self.format]:
            have = ", ".join(OUTPUT_SUBTYPES[self.format]) if self.format != "mp3" else "none (it is lossy)"
            raise UserError(f"--bits {self.bits} is not possible in {self.format}; it has: {have}")
        if self.clip_mode == "none" and self.subtype != "FLOAT":
            raise UserError(f"--clip-mode none keeps samples above full scale, which only float wav can hold; "
                            f"use rescale or clamp with {self.format} at {self.resolved_bits}")

    @property
    def resolved_bits(self) -> str:
        return self.bits or DEFAULT_BITS[self.format]

    @property
    def subtype(self) -> str:
        """The libsndfile subtype."""
        return OUTPUT_SUBTYPES[self.format][self.resolved_bits]

    @property
    def suffix(self) -> str:
        return f".{self.format}"


def limit_peaks(stems: np.ndarray, clip_mode: str) -> tuple[np.ndarray, float]:
    """Apply `clip_mode` (see `OutputFormat`) to the stems of one track `(K, C, N)`.

    Returns:
        (the stems to write, their peak |sample| before the change). "rescale" scales all
        stems by 0.999 / peak when peak > 1 (the factor is 0.999 / peak).
    """
    peak = float(np.max(np.abs(stems))) if stems.size else 0.0
    if peak <= 1.0 or clip_mode == "none":
        return stems, peak
    if clip_mode == "clamp":
        return np.clip(stems, -1.0, 1.0), peak
    return stems * np.float32(0.999 / peak), peak


def write_audio(
    path: str | os.PathLike, wav: np.ndarray, sample_rate: int, subtype: str | None = None
) -> Path:
    """Write (C, N) audio atomically; the format follows the suffix (.wav, .flac, .ogg, .mp3).

    `subtype` defaults to 32-bit float for .wav (lossless, so stems sum back to the
    mixture exactly) and to the format's default otherwise.
    """
    path = Path(path)
    with atomic_output(path) as tmp:
        _write_file(tmp, wav, sample_rate, subtype, path)
    return path


def write_stems(paths: Sequence[str | os.PathLike], stems: np.ndarray, sample_rate: int,
                fmt: OutputFormat | None = None) -> list[Path]:
    """Write the stems `(K, C, N)` of one track to K files, all or none (`atomic_outputs`),
    in `fmt` (default `OutputFormat()`); `limit_peaks` is the caller's.

    Returns:
        the K paths.
    """
    fmt = fmt or OutputFormat()
    paths = [Path(p) for p in paths]
    with atomic_outputs(paths) as temps:
        for tmp, path, stem in zip(temps, paths, stems):
            _write_file(tmp, stem, sample_rate, fmt.subtype, path)
    return paths


def _write_file(tmp: Path, wav: np.ndarray, sample_rate: int, subtype: str | None, path: Path) -> None:
    """Encode (C, N) float audio into the file `tmp` (the temporary of `path`, named in errors)."""
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 2:
        raise ValueError(f"write_audio expects (channels, samples), got shape {wav.shape}")
    if not np.isfinite(wav).all():
        raise ValueError(f"refusing to write NaN/inf samples to {path}")
    if subtype is None and path.suffix.lower() == ".wav":
        subtype = "FLOAT"
    try:
        sf.write(str(tmp), wav.T, int(sample_rate), subtype=subtype, format=path.suffix.lstrip(".").upper() or None)
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        raise UserError(f"{path}: cannot be written ({first_line(err)})") from None
    except OSError as err:
        raise UserError(f"{path}: cannot be written ({err.strerror or err})") from None


def first_line(err: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none)."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
