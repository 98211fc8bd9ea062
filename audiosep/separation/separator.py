"""`Separator`: everything around a separation method — reading, resampling, level
normalisation, overlapping chunks with a linear cross-fade, progress, and writing
`OUT/<track>/<source>.wav` atomically.

A method is any `protocol.Method`: a callable `method(mix) -> stems` with `mix` a float32
tensor `(C, N)` at `method.sample_rate` and `stems` `(K, C, N)` in the order of
`method.sources`. It runs on the device of the tensor it is given, under `torch.no_grad()` (a
method that needs gradients, e.g. a flow's score by autograd, turns them on with
`torch.enable_grad()`). `Separator.from_pretrained` and `separate` build one from a bundled
set by name (`audiosep.zoo`, `methods.build_method`); `model_set_name` names the output
folder of a user's own files.
"""
from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..data.stems import MIXTURE_FILES, is_track_folder
from ..devices import resolve_device
from ..errors import UserError
from ..progress import progress_bar
from ..zoo import DEFAULT_SET, PRETRAINED, model_set
from .protocol import Method
from .methods import build_method
from ..io import (AUDIO_SUFFIXES, OutputFormat, audio_info, check_output_dir, check_outputs, convert_channels, fit_length,
                  limit_peaks, read_audio, resample, write_stems)

DEFAULT_LEVEL_DB = -20.0  # mixture RMS (dBFS) for methods that state none


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
        progress: show a tqdm bar in seconds of audio. A method with a `report` attribute
            (see `Method`) advances it within a chunk, and its own bars are switched off
            (`progress = False`), so there is one bar, moving as the work does; a quiet
            Separator silences them too.
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
        if hasattr(method, "progress") and (not progress or hasattr(method, "report")):
            method.progress = False
        method_level = getattr(method, "level_db", None)
        self.level_db = level_db if level_db is not None else (method_level if method_level is not None else DEFAULT_LEVEL_DB)

    @classmethod
    def from_pretrained(cls, name: str = DEFAULT_SET, method: str | None = None, *,
                        device: str | torch.device = "cpu", seed: int = 0, folder: str | Path = PRETRAINED,
                        **options) -> "Separator":
        """A Separator over the bundled model set `name` (`audiosep models` lists them) with its
        default method, or `method` (e.g. "nmf", its baseline partner); `options` are
        `Separator`'s (segment, overlap, level_db, progress).

        Args:
            folder: where the set's manifest (`<name>.json`) lies, default the bundled sets'
                folder: a retrained set, its manifest beside its own files, is scored this way
                before it replaces the bundled one.
        Raises:
            UserError: an unknown set, or a method the set has no files for.
        """
        bundled = model_set(name, folder)
        method = method or bundled.default
        model = build_method(method, bundled.files(method), device=device, seed=seed, defaults=bundled)
        return cls(model, device=device, seed=seed, **options)

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
        bar = progress_bar(total=round(length / self.sample_rate, 2), unit="s", disable=not self.progress,
                           desc="separate", bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s [{elapsed}<{remaining}]")
        done = 0
        with bar, torch.no_grad():
            for i, (start, stop) in enumerate(bounds):
                chunk = torch.from_numpy(np.ascontiguousarray(x[:, start:stop])).to(self.device)
                if hasattr(self.method, "report"):  # the bar moves within the chunk, from `done` to `stop`
                    self.method.report = functools.partial(_advance, bar, done / self.sample_rate,
                                                           (stop - done) / self.sample_rate)
                stems = self.method(chunk)
                expected = (len(self.sources), x.shape[0], stop - start)
                if tuple(stems.shape) != expected:
                    raise ValueError(f"method returned shape {tuple(stems.shape)} for a chunk; expected {expected}")
                w = crossfade_weights(stop - start, overlap, i > 0, i < len(bounds) - 1)
                out[..., start:stop] += stems.float().cpu().numpy() * w
                _advance(bar, 0.0, stop / self.sample_rate, 1.0)
                done = stop
        return out


def _advance(bar: tqdm, start: float, span: float, fraction: float) -> None:
    """Move `bar` (seconds of audio) forward to `start + fraction · span` seconds (never back)."""
    target = round(min(start + fraction * span, bar.total), 2)
    if target > bar.n:
        bar.update(target - bar.n)
        bar.n = target  # exactly: summed float steps would drift past the total


def separate(audio: str | os.PathLike | np.ndarray, model: str = DEFAULT_SET, sample_rate: int | None = None,
             device: str | torch.device = "cpu", method: str | None = None) -> dict[str, np.ndarray]:
    """Stems `{source: array}` of one mixture with the bundled model set `model`.

    Args:
        audio: an audio file, or samples `(C, N)` or `(N,)` (then `sample_rate` is needed).
        sample_rate: Hz of `audio` when it is an array (a file's own rate is read from it).
        method: one of the set's methods (default its default, e.g. "nmf" for its baseline).
    Returns:
        One float32 array per source, of the input's shape and rate.
    Raises:
        UserError: an unreadable file, an array without `sample_rate`, a rate given with a
            file, or as `Separator.from_pretrained`.
    """
    if isinstance(audio, (str, os.PathLike)):
        if sample_rate is not None:
            raise UserError("sample_rate is read from the file; give it only with an array")
        mix, sample_rate = read_audio(audio)
    else:
        if sample_rate is None:
            raise UserError("an array needs its sample_rate (Hz)")
        mix = np.asarray(audio, dtype=np.float32)
    flat = mix.ndim == 1
    separator = Separator.from_pretrained(model, method, device=device, progress=False)
    stems = separator.separate(mix[None] if flat else mix, int(sample_rate))
    return {source: stem[0] if flat else stem for source, stem in zip(separator.sources, stems)}


@dataclass(frozen=True)
class Input:
    """One mixture to separate: its file and the track name its stems go under
    (`OUT/<name>/<track>/<source>.<ext>`; may contain "/" for files found in sub-folders)."""

    path: Path
    track: str


@dataclass
class RunSummary:
    """What `separate_files` did: per written track {source: path}, per failed input its
    one-line reason, and notes (e.g. peaks that were rescaled)."""

    written: list[tuple[Input, dict[str, Path]]] = field(default_factory=list)
    failed: list[tuple[Input, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def find_inputs(items: Sequence[str | os.PathLike], exclude: str | os.PathLike | None = None) -> list[Input]:
    """The mixtures named by files and folders, in order.

    A file is one input (track: its stem). A dataset split (`DATA/<split>`: sub-folders with
    a mix.wav / mixture.wav / mix.flac, as the stems, MUSDB18 and Slakh2100 layouts have) gives
    each track's mixture (track: the folder's name, so `audiosep evaluate DATA/<split> OUT/<name>`
    scores the run). Any other folder gives its audio files, recursively (hidden files and
    anything under `exclude`, the output folder, are skipped; track: the path relative to the
    folder, without suffix). Inputs are not opened here.

    Raises:
        UserError: a missing path, a folder without audio, a dataset root instead of a split,
            or two inputs that would share a track folder.
    """
    found: list[Input] = []
    for item in map(Path, items):
        if not item.exists():
            raise UserError(f"{item}: no such file or folder")
        found += _folder_inputs(item, exclude) if item.is_dir() else [Input(item, item.stem)]
    if not found:
        raise UserError("no input files given")
    seen: dict[str, Path] = {}
    for inp in found:
        other = seen.setdefault(inp.track, inp.path)
        if other.resolve() != inp.path.resolve():
            raise UserError(f"{inp.path} and {other} would both be written to the track folder "
                            f"'{inp.track}'; rename one")
    unique = {inp.path.resolve(): inp for inp in found}  # a file given twice is separated once
    return list(unique.values())


def _folder_inputs(folder: Path, exclude: str | os.PathLike | None) -> list[Input]:
    """The inputs of one folder (see `find_inputs`)."""
    tracks = sorted(d for d in folder.iterdir() if d.is_dir() and _mixture_file(d) is not None)
    if tracks:
        return [Input(_mixture_file(d), d.name) for d in tracks]
    if any(_mixture_file(t) for d in folder.iterdir() if d.is_dir() for t in d.iterdir() if t.is_dir()):
        raise UserError(f"{folder}: a dataset with splits; give one split, e.g. {folder / 'test'}")
    skip = Path(exclude).resolve() if exclude is not None else None
    if skip is not None and folder.resolve().is_relative_to(skip):
        raise UserError(f"{folder}: is the output folder (-o) or inside it; separate into another folder")
    files = sorted(
        p for p in folder.rglob("*")
        if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and not (skip is not None and p.resolve().is_relative_to(skip))
    )
    if not files:
        raise UserError(f"{folder}: no audio files ({', '.join(AUDIO_SUFFIXES)}) in this folder")
    return [Input(p, p.relative_to(folder).with_suffix("").as_posix()) for p in files]


def _mixture_file(track_dir: Path) -> Path | None:
    """The mixture of a dataset track folder (stems, MUSDB18 or Slakh2100 layout), if any."""
    return next((track_dir / name for name in MIXTURE_FILES if (track_dir / name).is_file()), None)


def output_paths(inp: Input, output_dir: str | os.PathLike, sources: Sequence[str],
                 fmt: OutputFormat) -> dict[str, Path]:
    """{source: output_dir/<track>/<source>.<ext>}."""
    return {s: Path(output_dir) / inp.track / f"{s}{fmt.suffix}" for s in sources}


def separate_files(inputs: Sequence[str | os.PathLike | Input], output_dir: str | os.PathLike,
                   separator: Separator, fmt: OutputFormat | None = None, strict: bool = False,
                   shard: tuple[int, int] = (0, 1), progress: bool = True,
                   on_track: Callable[[Input, dict[str, Path]], None] | None = None) -> RunSummary:
    """Separate every input into `output_dir/<track>/<source>.<ext>`.

    Before any compute: the output folder must be writable and every input is opened; an
    unreadable input is reported in `failed` and skipped (with `strict`, it stops the run). A
    failure during one input's separation (e.g. too short for the method) likewise. The stems
    of one track are written together atomically (`write_stems`), after `limit_peaks`; a note
    says when a track's peaks were changed or, with clip_mode "none", are above full scale.

    Args:
        inputs: paths (files, folders: see `find_inputs`), or `Input`s.
        fmt: output format (default `OutputFormat()`: float wav, rescale).
        strict: raise the first input's error instead of skipping it.
        shard: (index, count): separate only inputs index, index + count, ... (for `--jobs` and
            torchrun ranks; every input is seeded on its own, so shards equal one process).
        on_track: called after each track is written (the CLI prints it).
    Raises:
        UserError: no inputs, an output folder that cannot be written, or (strict) an input's error.
    """
    fmt = fmt or OutputFormat()
    check_output_dir(output_dir)
    found = list(inputs) if all(isinstance(i, Input) for i in inputs) else find_inputs(inputs, exclude=output_dir)
    index, count = shard
    summary = RunSummary()
    todo = []
    for inp in found[index::count]:
        try:
            audio_info(inp.path)
            _check_not_output(inp, output_paths(inp, output_dir, separator.sources, fmt))
            todo.append(inp)
        except UserError as err:
            if strict:
                raise
            summary.failed.append((inp, str(err)))
    for inp in progress_bar(todo, desc="files", unit="file", disable=not progress or len(todo) < 2):
        try:
            out = _separate_one(inp, output_dir, separator, fmt, summary.notes)
        except UserError as err:
            named = UserError(str(err) if str(inp.path) in str(err) else f"{inp.path}: {err}")
            if strict:
                raise named from None
            summary.failed.append((inp, str(named)))
            continue
        summary.written.append((inp, out))
        if on_track is not None:
            on_track(inp, out)
    return summary


def _separate_one(inp: Input, output_dir: str | os.PathLike, separator: Separator, fmt: OutputFormat,
                  notes: list[str]) -> dict[str, Path]:
    """Read, separate, limit peaks and write one input; its {source: path}."""
    wav, sr = read_audio(inp.path)
    stems, peak = limit_peaks(separator.separate(wav, sr), fmt.clip_mode)
    if peak > 1.0:
        action = {"rescale": f"all its stems scaled by {0.999 / peak:.3f}", "clamp": "clamped at ±1",
                  "none": "kept (float wav)"}[fmt.clip_mode]
        notes.append(f"{inp.track}: stems peaked at {peak:.2f} (above full scale): {action} (--clip-mode {fmt.clip_mode})")
    out = output_paths(inp, output_dir, separator.sources, fmt)
    write_stems(list(out.values()), stems, sr, fmt)
    return out


def _check_not_output(inp: Input, outputs: dict[str, Path]) -> None:
    """UserError if separating `inp` would overwrite it, write into a dataset track's folder
    (`is_track_folder`, its own among them, or `X/` beside an input `X.wav`, the layout of
    `examples/`: where reference stems lie), or replace a folder or a file that is not audio."""
    if inp.path.resolve() in {p.resolve() for p in outputs.values()}:
        raise UserError(f"{inp.path}: separating would overwrite this input with itself")
    references = {inp.path.parent.resolve(), inp.path.with_suffix("").resolve()}
    if any(p.parent.resolve() in references or is_track_folder(p.parent) for p in outputs.values()):
        raise UserError(f"{inp.path}: its stems would be written into a dataset track's folder, over its "
                        "reference stems: name an output folder (-o / -n) elsewhere")
    check_outputs({p: "audio" for p in outputs.values()})


def _to_input(stem: np.ndarray, method_rate: int, rate: int, channels: int, length: int) -> np.ndarray:
    """One stem `(C_m, N_m)` at the method's rate → `(channels, length)` at the input's rate."""
    return fit_length(convert_channels(resample(stem, method_rate, rate), channels), length)


def model_set_name(paths: Sequence[str | os.PathLike], method: str = "basis") -> str:
    """The name of a model set, for `OUT/<name>/<track>/` (`audiosep separate -n`): one file
    (an NMF model) → its stem; several (one prior per source, or an LQ-VAE and its code priors)
    → the folder they share (the bundled priors: "ncsn_piano_violin"), else `method` + "_" +
    their stems."""
    paths = [Path(p) for p in paths]
    if len(paths) == 1:
        return paths[0].stem
    parents = {p.resolve().parent for p in paths}
    if len(parents) == 1 and next(iter(parents)).name:
        return next(iter(parents)).name
    return method + "_" + "_".join(p.stem for p in paths)
