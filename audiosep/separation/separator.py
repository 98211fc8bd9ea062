"""`Separator`: everything around a separation method — reading, resampling, level
normalisation, overlapping chunks with a linear cross-fade, progress, and writing
`OUT/<track>/<source>.wav` atomically.

A method is any callable `method(mix) -> stems` with `mix` a float32 tensor `(C, N)` at
`method.sample_rate` and `stems` `(K, C, N)` in the order of `method.sources`. It runs on
the device of the tensor it is given, under `torch.no_grad()` (a method that needs
gradients, e.g. a flow's score by autograd, turns them on with `torch.enable_grad()`).
Optional attributes: `channels` (the channel count it needs, None for any; a mono method
gets the channel mean and its stems are copied to every output channel) and `level_db`
(the mixture RMS in dBFS it was trained at). `audiosep.separation.nmf.NMFModel` is one.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from ..devices import resolve_device
from ..errors import UserError
from ..io import audio_info, convert_channels, fit_length, read_audio, resample, write_audio

DEFAULT_LEVEL_DB = -20.0  # mixture RMS (dBFS) for methods that state none


class Method(Protocol):
    """What `Separator` runs: `(C, N)` float32 mixture at `sample_rate` → `(K, C, N)` stems."""

    sources: Sequence[str]
    sample_rate: int

    def __call__(self, mix: Tensor) -> Tensor: ...


def chunk_bounds(length: int, segment: int, overlap: int) -> list[tuple[int, int]]:
    """[start, stop) of overlapping chunks covering `length` samples.

    Chunks are `segment` long (the last one may be shorter, but longer than `overlap`)
    and consecutive chunks share exactly `overlap` ≤ segment / 2 samples, so no sample is in
    more than two chunks; `length ≤ segment` gives one chunk.
    """
    if not 0 <= 2 * overlap <= segment:
        raise ValueError(f"overlap must be in [0, segment / 2], got {overlap} for segment {segment}")
    if length <= segment:
        return [(0, length)]
    stride = segment - overlap
    n_chunks = math.ceil((length - overlap) / stride)
    return [(i * stride, min(i * stride + segment, length)) for i in range(n_chunks)]


def crossfade_weights(size: int, overlap: int, fade_in: bool, fade_out: bool) -> np.ndarray:
    """Weights `(size,)` of one chunk: linear ramps over its first/last `overlap` samples.

    A ramp up and the next chunk's ramp down over the same samples sum to exactly one,
    so overlap-add with `chunk_bounds` chunks reproduces a signal unchanged.
    """
    w = np.ones(size, dtype=np.float32)
    ramp = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
    if fade_in and overlap:
        w[:overlap] = ramp
    if fade_out and overlap:
        w[size - overlap:] = ramp[::-1]
    return w


def level_gain(mix: np.ndarray, level_db: float) -> float:
    """The gain that brings the RMS of `mix` (any shape) to `level_db` dBFS (1 for silence)."""
    rms = math.sqrt(float(np.mean(np.square(mix, dtype=np.float64))))
    return 10.0 ** (level_db / 20.0) / rms if rms > 1e-9 else 1.0


class Separator:
    """Separate audio of any rate, channel count and length with a method.

    Args:
        method: see the module docstring.
        segment: chunk length in seconds (None: the whole input at once).
        overlap: seconds shared by consecutive chunks (at most half a segment), cross-faded linearly.
        device: where the method runs ("cpu", "cuda", "cuda:1", ...).
        seed: torch's global seed, set before each input (for stochastic methods).
        level_db: the mixture is scaled to this RMS (dBFS) before the method and the stems
            scaled back after (default: the method's `level_db`, else `DEFAULT_LEVEL_DB`).
        progress: show a tqdm bar in seconds of audio.
    """

    def __init__(self, method: Method, *, segment: float | None = 30.0, overlap: float = 1.0,
                 device: str | torch.device = "cpu", seed: int = 0, level_db: float | None = None,
                 progress: bool = True) -> None:
        if segment is not None and segment <= 0:
            raise UserError(f"segment must be positive, got {segment} s")
        if overlap < 0 or (segment is not None and 2 * overlap > segment):
            raise UserError(f"overlap must be in [0, segment / 2], got {overlap} s for a {segment} s segment")
        self.method = method
        self.sources = tuple(method.sources)
        self.sample_rate = int(method.sample_rate)
        self.segment, self.overlap = segment, overlap
        self.device = resolve_device(device)
        self.seed, self.progress = seed, progress
        method_level = getattr(method, "level_db", None)
        self.level_db = level_db if level_db is not None else (method_level if method_level is not None else DEFAULT_LEVEL_DB)

    def separate(self, mix: np.ndarray, sample_rate: int) -> np.ndarray:
        """Stems `(K, C, N)` float32 of a mixture `(C, N)` at `sample_rate`, same rate, C and N."""
        mix = np.asarray(mix, dtype=np.float32)
        if mix.ndim != 2 or mix.shape[1] == 0:
            raise UserError(f"expected a mixture (channels, samples), got shape {mix.shape}")
        channels, length = mix.shape
        x = resample(mix, sample_rate, self.sample_rate)
        if getattr(self.method, "channels", None):
            x = convert_channels(x, self.method.channels)
        gain = level_gain(x, self.level_db)
        torch.manual_seed(self.seed)
        stems = self._run_chunks(x * gain)
        stems /= gain
        out = np.empty((len(self.sources), channels, length), dtype=np.float32)
        for k in range(len(self.sources)):
            out[k] = _to_input(stems[k], self.sample_rate, sample_rate, channels, length)
        return out

    def separate_file(self, path: str | os.PathLike, output_dir: str | os.PathLike) -> dict[str, Path]:
        """Separate one file into `output_dir/<track>/<source>.wav` (see `separate_files`)."""
        return separate_files([path], output_dir, self, progress=False)[0]

    def output_paths(self, path: str | os.PathLike, output_dir: str | os.PathLike) -> dict[str, Path]:
        """{source: output_dir/<track>/<source>.wav}, the track being the input file's stem."""
        return {s: Path(output_dir) / Path(path).stem / f"{s}.wav" for s in self.sources}

    def _run_chunks(self, x: np.ndarray) -> np.ndarray:
        """The method over overlapping chunks of `x` `(C, N)` at its rate → `(K, C, N)`."""
        length = x.shape[-1]
        if self.segment is None:
            segment, overlap = length, 0
        else:
            segment = max(round(self.segment * self.sample_rate), 1)
            overlap = min(round(self.overlap * self.sample_rate), segment // 2)
        bounds = chunk_bounds(length, segment, overlap)
        out = np.zeros((len(self.sources), *x.shape), dtype=np.float32)
        bar = tqdm(total=round(length / self.sample_rate, 2), unit="s", disable=not self.progress,
                   desc="separate", bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s [{elapsed}<{remaining}]")
        done = 0
        with bar, torch.no_grad():
            for i, (start, stop) in enumerate(bounds):
                chunk = torch.from_numpy(np.ascontiguousarray(x[:, start:stop])).to(self.device)
                stems = self.method(chunk)
                expected = (len(self.sources), x.shape[0], stop - start)
                if tuple(stems.shape) != expected:
                    raise ValueError(f"method returned shape {tuple(stems.shape)} for a chunk; expected {expected}")
                w = crossfade_weights(stop - start, overlap, i > 0, i < len(bounds) - 1)
                out[..., start:stop] += stems.float().cpu().numpy() * w
                bar.update(round((stop - done) / self.sample_rate, 2))
                done = stop
        return out


def separate_files(paths: Sequence[str | os.PathLike], output_dir: str | os.PathLike, separator: Separator,
                   progress: bool = True) -> list[dict[str, Path]]:
    """Separate each file into `output_dir/<track>/<source>.wav` (written atomically).

    Every input is checked before anything is separated or written.

    Returns:
        one {source: path} per input, in order.
    Raises:
        UserError: a missing or unreadable input, two inputs with the same track name, an
            output path that is one of the inputs, or an `output_dir` that is a file.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise UserError("no input files given")
    if Path(output_dir).exists() and not Path(output_dir).is_dir():
        raise UserError(f"{output_dir}: exists and is not a folder")
    outputs = [separator.output_paths(p, output_dir) for p in paths]
    _check_inputs(paths, outputs)
    for path, out in tqdm(list(zip(paths, outputs)), desc="files", unit="file",
                          disable=not progress or len(paths) < 2):
        wav, sr = read_audio(path)
        stems = separator.separate(wav, sr)
        for stem, target in zip(stems, out.values()):
            write_audio(target, stem, sr)
    return outputs


def _check_inputs(paths: list[Path], outputs: list[dict[str, Path]]) -> None:
    """UserError for an unreadable input, a repeated track name, or an output that is an input."""
    seen: dict[str, Path] = {}
    for path in paths:
        audio_info(path)
        if path.stem in seen and seen[path.stem].resolve() != path.resolve():
            raise UserError(f"{path} and {seen[path.stem]} would both be written to the track folder '{path.stem}'; rename one")
        seen[path.stem] = path
    inputs = {p.resolve(): p for p in paths}
    for out in outputs:
        for target in out.values():
            if target.resolve() in inputs:
                raise UserError(f"{inputs[target.resolve()]}: separating would overwrite this input with {target}")


def _to_input(stem: np.ndarray, method_rate: int, rate: int, channels: int, length: int) -> np.ndarray:
    """One stem `(C_m, N_m)` at the method's rate → `(channels, length)` at the input's rate."""
    return fit_length(convert_channels(resample(stem, method_rate, rate), channels), length)
