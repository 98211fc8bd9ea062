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

`separation_method` tells which method a set of model files is for (an NMF model file,
prior checkpoints for BASIS, an LQ-VAE and its code priors for latent separation, one VAE
trained on mixtures for VAE-BSS), so the command line can infer it; `model_set_name` names
the set's output folder.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable, Literal, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from ..data.stems import MIXTURE_FILES
from ..devices import resolve_device
from ..errors import UserError
from ..priors.base import load_checkpoint
from ..io import (AUDIO_SUFFIXES, OutputFormat, audio_info, check_output_dir, convert_channels, fit_length,
                  limit_peaks, read_audio, resample, write_stems)

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
    for inp in tqdm(todo, desc="files", unit="file", disable=not progress or len(todo) < 2):
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
    """UserError if separating `inp` would overwrite it."""
    if inp.path.resolve() in {p.resolve() for p in outputs.values()}:
        raise UserError(f"{inp.path}: separating would overwrite this input with itself")


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


SEPARATION_METHODS = ("nmf", "basis", "latent", "vae-bss", "masknet")
_SINGLE_FILE_METHODS = {"vae": "vae-bss", "masknet": "masknet"}  # checkpoint kinds that hold every source
_SINGLE_FILE_USAGE = {"vae-bss": "one VAE checkpoint, which decodes every source: --model VAE.pt",
                      "masknet": "one mask network checkpoint, which masks every source: --model MASKNET.pt"}
_METHOD_KINDS = {"nmf": ("nmf",), "masknet": ("masknet",), "vae-bss": ("vae",),
                 "latent": ("lqvae", "code_transformer")}  # basis: every other kind (the priors)
_METHOD_USAGE = {"nmf": "one NMF model (audiosep train nmf)",
                 "masknet": "one mask network (audiosep train masknet)",
                 "vae-bss": "one VAE (audiosep train vae --data)",
                 "latent": "an LQ-VAE and one code prior per source (--model LQVAE.pt A.pt B.pt)",
                 "basis": "one prior checkpoint per source (--model A.pt B.pt ...)"}
_KIND_NAMES = {"nmf": "an NMF model (nmf)", "masknet": "a mask network (masknet)", "vae": "a VAE (vae-bss)",
               "lqvae": "an LQ-VAE (latent)", "code_transformer": "a code prior (latent)"}


def _refuse_unsuited_files(method: str, kinds: Sequence[tuple[Path, str]]) -> None:
    """UserError naming the first model file that `method` cannot use (checked before counting the
    files, so that the message is about the method asked for, not the one the files suggest)."""
    for path, kind in kinds:
        fits = kind in _METHOD_KINDS[method] if method in _METHOD_KINDS else \
            not any(kind in group for group in _METHOD_KINDS.values())
        if not fits:
            what = _KIND_NAMES.get(kind, "a prior checkpoint (basis)")
            raise UserError(f"method '{method}' was asked for but {path} is {what}; {method} takes "
                            f"{_METHOD_USAGE[method]}")


def separation_method(paths: Sequence[str | os.PathLike],
                      requested: str | None = None) -> Literal["nmf", "basis", "latent", "vae-bss", "masknet"]:
    """The separation method for a set of model files: "nmf", "basis", "latent", "vae-bss" or "masknet".

    No files → `requested`, by default "masknet" (the bundled mask network `BUNDLED_MASKNET`;
    "basis": the bundled priors `BUNDLED_PRIORS`; "nmf": the bundled NMF model; "latent" and
    "vae-bss" have no bundled models); one NMF model file →
    "nmf"; two or more prior checkpoints → "basis"; one LQ-VAE and two code priors → "latent";
    one VAE → "vae-bss". `requested` (if given) must agree with the files.

    Raises:
        UserError: unreadable files (as `load_checkpoint`), NMF models mixed with priors,
            several NMF models, a single prior other than a VAE, a VAE with other files, an
            LQ-VAE without exactly two code priors (or with other priors), or files that do not
            suit `requested`.
    """
    if requested not in (None, *SEPARATION_METHODS):
        raise UserError(f"unknown separation method {requested!r}; choose {', '.join(SEPARATION_METHODS)}")
    if not paths:
        if requested == "latent":
            raise UserError("latent separation has no bundled models: --model LQVAE.pt A.pt B.pt "
                            "(the LQ-VAE, then one code prior per source)")
        if requested == "vae-bss":
            raise UserError("vae-bss has no bundled model: --model VAE.pt (audiosep train vae --data DIR)")
        return requested or "masknet"
    kinds = [(Path(p), load_checkpoint(p)["kind"]) for p in paths]
    if requested is not None:
        _refuse_unsuited_files(requested, kinds)
    single = [_SINGLE_FILE_METHODS[kind] for _, kind in kinds if kind in _SINGLE_FILE_METHODS]
    if single:
        method = single[0]
        if len(kinds) > 1:
            raise UserError(f"{method} takes {_SINGLE_FILE_USAGE[method]}")
        return method
    nmf = [p for p, kind in kinds if kind == "nmf"]
    priors = [p for p, kind in kinds if kind != "nmf"]
    if nmf and priors:
        raise UserError(f"{nmf[0]} is an NMF model but {priors[0]} is a prior; give one NMF model "
                        "or one prior per source")
    if len(nmf) > 1:
        raise UserError(f"{len(nmf)} NMF models given; an NMF model holds all its sources, give one")
    method = "nmf" if nmf else ("latent" if requested == "latent" or any(kind == "lqvae" for _, kind in kinds)
                                else "basis")
    if method == "basis" and len(priors) == 1:
        raise UserError(f"{priors[0]}: one prior checkpoint given; BASIS needs one prior per source "
                        "(--model A.pt B.pt ...)")
    if method == "latent":
        codes = [kind == "code_transformer" for _, kind in kinds[1:]]
        if kinds[0][1] != "lqvae" or len(codes) != 2 or not all(codes):
            raise UserError("latent separation takes the LQ-VAE first, then one code prior per source: "
                            "--model LQVAE.pt A.pt B.pt")
    return method
