"""Multi-stem datasets on disk, and torch Datasets of random crops of one source or of the mixture.

Three layouts are read (all as ``ROOT/<split>/<track>/...``):

- ``stems`` (written by `audiosep.data.synth`): ``{mix,<source>}.wav``; splits train/valid/test.
- ``musdb`` (MUSDB18 wav version): ``{mixture,vocals,drums,bass,other}.wav``; splits train/test.
- ``slakh`` (Slakh2100): ``mix.flac``, ``stems/SXX.flac`` and ``metadata.yaml``; each stem maps to
  a source by its ``inst_class`` (``Piano``→``piano``, ``Chromatic Percussion``→
  ``chromatic_percussion``), and stems of one class are summed; splits train/validation/test
  (``valid`` and ``validation`` name the same split).

Waveforms are numpy/torch float32 ``(channels, samples)``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import soundfile as sf
import torch
import yaml
from torch import Tensor

from ..errors import UserError
from ..io import audio_info, convert_channels, first_line, refuse_non_finite, resample

LAYOUTS = ("stems", "musdb", "slakh")
_MIX_FILES = {"stems": ("mix.wav", "mix.flac"), "musdb": ("mixture.wav",), "slakh": ("mix.flac", "mix.wav")}
MIXTURE_FILES = ("mix.wav", "mix.flac", "mixture.wav")  # the mixture file of a track folder, any layout
_STEM_SUFFIXES = (".wav", ".flac")
_SPLIT_ALIASES = {"valid": "validation", "validation": "valid"}
_RESAMPLE_MARGIN = 256  # output-rate samples read beyond a segment's edges when resampling


def is_track_folder(folder: str | Path) -> bool:
    """Whether `folder` holds a dataset track: a mixture file of any layout (`MIXTURE_FILES`) in
    it. Writers never put stems in one, where they would replace its references."""
    folder = Path(folder)
    return folder.is_dir() and any((folder / name).is_file() for name in MIXTURE_FILES)


@dataclass(frozen=True)
class Track:
    """One track: its mixture file and, per source, the files summed to make that source."""

    name: str
    split: str
    layout: str
    mix: Path | None
    sources: Mapping[str, tuple[Path, ...]]


# ----------------------------------------------------------------------------- listing


def detect_layout(root: str | Path) -> str:
    """``stems``, ``musdb`` or ``slakh``, from the files in the first track folder that has any."""
    root = _existing_dir(root)
    if (root / "index.json").is_file():
        return "stems"
    for track_dir in sorted(p for p in root.glob("*/*") if p.is_dir()):
        if (track_dir / "metadata.yaml").is_file():
            return "slakh"
        if (track_dir / "mixture.wav").is_file():
            return "musdb"
        if (track_dir / "mix.wav").is_file():
            return "stems"
    raise UserError(f"{root}: no tracks found (expected ROOT/<split>/<track>/ with mix.wav, mixture.wav or metadata.yaml)")


def list_tracks(root: str | Path, split: str | None = None, layout: str | None = None) -> list[Track]:
    """Every track under `root` (of one split, or all splits), sorted by split and name."""
    root = _existing_dir(root)
    layout = layout or detect_layout(root)
    if layout not in LAYOUTS:
        raise UserError(f"unknown dataset layout '{layout}'; choose from: {', '.join(LAYOUTS)}")
    split_dirs = [_split_dir(root, split)] if split else sorted(p for p in root.iterdir() if p.is_dir())
    reader = {"stems": _stems_track, "musdb": _stems_track, "slakh": _slakh_track}[layout]
    tracks = [reader(d, s.name, layout) for s in split_dirs for d in sorted(s.iterdir()) if d.is_dir()]
    tracks = [t for t in tracks if t.mix is not None or t.sources]
    if not tracks:
        raise UserError(f"{root}: no {layout} tracks found" + (f" in split '{split}'" if split else ""))
    return tracks


def dataset_roots(root: str | Path | Sequence[str | Path]) -> list[Path]:
    """One dataset folder or several, as a list (a str or path is one folder, not its characters)."""
    return [Path(root)] if isinstance(root, (str, os.PathLike)) else [Path(r) for r in root]


def pooled_tracks(roots: Sequence[str | Path], split: str | None = None, layout: str | None = None) -> list[Track]:
    """The tracks of several datasets (`list_tracks` of each), in the order of `roots`."""
    return [t for root in roots for t in list_tracks(root, split, layout)]


def list_sources(tracks: Sequence[Track]) -> list[str]:
    """The sorted names of all sources present in any of the tracks."""
    return sorted({s for t in tracks for s in t.sources})


def separable_sources(sources: Sequence[str], what: str) -> tuple[str, ...]:
    """`sources` as a tuple, checked to be two or more distinct names: a model of one source
    (or of one source twice) would return the mixture as a stem. `what` names the model in the
    message.

    Raises:
        UserError: fewer than two sources, or a name given twice.
    """
    sources = tuple(sources)
    if len(sources) < 2:
        raise UserError(f"{what} separates a mixture into two or more sources; got {', '.join(sources) or 'none'} "
                        "(one source's model would return the mixture as its stem)")
    twice = sorted({s for s in sources if sources.count(s) > 1})
    if twice:
        raise UserError(f"{what}: source(s) {', '.join(twice)} named twice; every source must have its own name")
    return sources


def check_complete(tracks: Sequence[Track]) -> list[str]:
    """The sources of the tracks (`list_sources`), each present in every stems or MUSDB18 track
    (a Slakh2100 track has only the instruments its song plays, so none is missing there).

    Raises:
        UserError: a track that lacks a stem some other track has (naming the track and the
            source), so a method scored on the tracks is not scored on half of one silently.
    """
    sources = list_sources(tracks)
    for track in tracks:
        missing = [s for s in sources if s not in track.sources and track.layout != "slakh"]
        if missing:
            raise UserError(f"track '{track.name}' of split '{track.split}' has no stem for "
                            f"{', '.join(repr(s) for s in missing)} (the split's tracks have {', '.join(sources)}); "
                            "add it or move the track out of the split")
    return sources


def _existing_dir(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such dataset folder")
    return root


def _split_dir(root: Path, split: str) -> Path:
    for name in (split, _SPLIT_ALIASES.get(split)):
        if name and (root / name).is_dir():
            return root / name
    have = sorted(p.name for p in root.iterdir() if p.is_dir())
    raise UserError(f"{root}: no split '{split}' (have: {', '.join(have) or 'none'})")


def _stems_track(track_dir: Path, split: str, layout: str) -> Track:
    mix_names = _MIX_FILES[layout]
    mix = next((track_dir / m for m in mix_names if (track_dir / m).is_file()), None)
    sources = {
        p.stem: (p,) for p in sorted(track_dir.iterdir())
        if p.is_file() and p.suffix.lower() in _STEM_SUFFIXES and p.name not in mix_names
    }
    return Track(track_dir.name, split, layout, mix, sources)


def _slakh_track(track_dir: Path, split: str, layout: str) -> Track:
    meta_path = track_dir / "metadata.yaml"
    if not meta_path.is_file():
        return Track(track_dir.name, split, layout, None, {})
    try:
        meta = yaml.safe_load(meta_path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{meta_path}: not valid YAML ({first_line(err)})") from None
    stem_dir = track_dir / str(meta.get("audio_dir") or "stems")
    sources: dict[str, list[Path]] = {}
    for stem_id, info in sorted((meta.get("stems") or {}).items()):
        path = next((stem_dir / f"{stem_id}{s}" for s in _STEM_SUFFIXES if (stem_dir / f"{stem_id}{s}").is_file()), None)
        if path is not None and info and info.get("inst_class"):
            sources.setdefault(slakh_source_name(info["inst_class"]), []).append(path)
    mix = next((track_dir / m for m in _MIX_FILES["slakh"] if (track_dir / m).is_file()), None)
    return Track(track_dir.name, split, layout, mix, {s: tuple(p) for s, p in sources.items()})


def slakh_source_name(inst_class: str) -> str:
    """Source name of a Slakh instrument class: lower case, spaces as underscores."""
    return "_".join(str(inst_class).lower().split())


# ----------------------------------------------------------------------------- reading


def read_source(track: Track, source: str, sample_rate: int, channels: int,
                start: int = 0, length: int | None = None) -> np.ndarray:
    """Samples [start, start + length) of a source (its files summed) at `sample_rate`.

    Returns float32 (channels, length), zero-padded past the end of the files; length None
    reads to the end of the longest file.
    """
    if source not in track.sources:
        raise UserError(f"track '{track.name}' has no source '{source}' (has: {', '.join(sorted(track.sources))})")
    if length is None:
        length = max(source_length(track, source, sample_rate) - start, 0)
    parts = [convert_channels(_read_segment(p, start, length, sample_rate), channels) for p in track.sources[source]]
    return np.sum(parts, axis=0, dtype=np.float32)


def load_track(track: Track, sample_rate: int | None = None, channels: int | None = None
               ) -> tuple[np.ndarray | None, dict[str, np.ndarray], int]:
    """The whole track: (mixture (C, N) or None if it has no mix file, {source: (C, N)}, rate).

    sample_rate None keeps the mixture's (or first source's) rate; channels None keeps the
    mixture's (or first source's) channel count. Every returned signal has the same N.
    """
    first = track.mix if track.mix is not None else next(iter(track.sources.values()))[0]
    sr, ch, _ = audio_info(first)
    sample_rate, channels = sample_rate or sr, channels or ch
    files = ([track.mix] if track.mix is not None else []) + [p for ps in track.sources.values() for p in ps]
    n = max(_length_at(p, sample_rate) for p in files)
    mix = None if track.mix is None else convert_channels(_read_segment(track.mix, 0, n, sample_rate), channels)
    sources = {s: read_source(track, s, sample_rate, channels, 0, n) for s in track.sources}
    return mix, sources, sample_rate


def read_mixture(track: Track, sample_rate: int, channels: int, start: int = 0, length: int | None = None
                 ) -> np.ndarray:
    """Samples [start, start + length) of the track's mixture at `sample_rate`: its mix file, or
    the sum of its sources where it has none. Float32 (channels, length), zero-padded past the
    end; length None reads to the end."""
    if track.mix is None:
        if length is None:
            length = max(mixture_length(track, sample_rate) - start, 0)
        return np.sum([read_source(track, s, sample_rate, channels, start, length) for s in track.sources],
                      axis=0, dtype=np.float32)
    if length is None:
        length = max(_length_at(track.mix, sample_rate) - start, 0)
    return convert_channels(_read_segment(track.mix, start, length, sample_rate), channels)


def mixture_length(track: Track, sample_rate: int) -> int:
    """Samples of the mixture at `sample_rate`: its mix file's, else its longest source file's."""
    if track.mix is not None:
        return _length_at(track.mix, sample_rate)
    return max(source_length(track, s, sample_rate) for s in track.sources)


def source_length(track: Track, source: str, sample_rate: int) -> int:
    """Samples of the source at `sample_rate`: the longest of its files."""
    return max(_length_at(p, sample_rate) for p in track.sources[source])


def _length_at(path: Path, sample_rate: int) -> int:
    sr, _, frames = audio_info(path)
    return int(frames * sample_rate // sr)


def _read_segment(path: Path, start: int, length: int, sample_rate: int) -> np.ndarray:
    """Samples [start, start + length) of a file at `sample_rate`: float32 (C, length).

    At the file's own rate this is a direct partial read; otherwise a covering native range
    (with a margin against resampling edge effects, starting on a sample shared by both rates'
    grids) is read and resampled, which matches resampling the whole file and slicing.
    """
    native, _, _ = audio_info(path)
    if native == sample_rate:
        data = _read_frames(path, start, start + length)
    else:
        ratio = native / sample_rate
        margin = math.ceil(_RESAMPLE_MARGIN * max(ratio, 1.0))
        step = native // math.gcd(native, sample_rate)  # native starts that fall on the output grid
        first = max(0, (math.floor(start * ratio) - margin) // step * step)
        stop = math.ceil((start + length) * ratio) + margin
        data = resample(_read_frames(path, first, stop), native, sample_rate)
        skip = start - first * sample_rate // native
        data = data[:, skip : skip + length]
    return np.pad(data, ((0, 0), (0, length - data.shape[1])))


def _read_frames(path: Path, start: int, stop: int) -> np.ndarray:
    try:
        data, _ = sf.read(str(path), start=start, stop=stop, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise UserError(f"{path}: not a readable audio file ({first_line(err)})") from None
    refuse_non_finite(data, path)  # said here: a NaN crop would read as silence or poison a loss
    return np.ascontiguousarray(data.T)


# ----------------------------------------------------------------------------- torch datasets


class _TrackCrops(torch.utils.data.Dataset):
    """Random crops of one signal per track (what `read` reads): item i is a float32 tensor
    (channels, crop_samples).

    A crop's track is drawn in proportion to the track's possible crop positions (uniform over
    the audio), then its start uniformly; crops whose RMS is below `min_rms_db` dBFS are
    redrawn (up to `max_tries`). Item i depends only on (seed, epoch, i), so the dataset is
    deterministic and safe with DataLoader workers; `set_epoch` gives each epoch new crops.
    Subclasses set `what` (for messages) and define `track_length` and `read`.
    """

    what = "signal"

    def _setup(self, tracks: Sequence[Track], crop_samples: int, sample_rate: int, channels: int, length: int,
               seed: int, min_rms_db: float, max_tries: int) -> None:
        if crop_samples < 1 or length < 1:
            raise UserError(f"crop_samples and length must be positive, got {crop_samples} and {length}")
        self.tracks = list(tracks)
        self.crop_samples, self.sample_rate, self.channels = crop_samples, sample_rate, channels
        self.length, self.seed, self.epoch = length, seed, 0
        self.min_rms_db, self.max_tries = min_rms_db, max_tries
        self._lengths = np.array([self.track_length(t) for t in self.tracks])
        positions = np.maximum(self._lengths - crop_samples + 1, 1)
        self._track_weights = positions / positions.sum()

    def track_length(self, track: Track) -> int:
        """Samples of the cropped signal of `track` at `sample_rate`."""
        raise NotImplementedError

    def read(self, track: Track, start: int) -> np.ndarray:
        """The crop (channels, crop_samples) of `track` starting at sample `start`."""
        raise NotImplementedError

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Draw a different set of crops (still deterministic) for each epoch."""
        self.epoch = int(epoch)

    def locate(self, index: int) -> tuple[Track, int, np.ndarray]:
        """(track, start sample, crop (C, crop_samples) numpy) of item `index`."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        for _ in range(self.max_tries):
            k = int(rng.choice(len(self.tracks), p=self._track_weights))
            start = int(rng.integers(max(self._lengths[k] - self.crop_samples + 1, 1)))
            crop = self.read(self.tracks[k], start)
            if 10 * np.log10(np.mean(np.square(crop, dtype=np.float64)) + 1e-20) >= self.min_rms_db:
                return self.tracks[k], start, crop
        raise UserError(f"{self.what}: no crop above {self.min_rms_db:g} dBFS in {self.max_tries} draws")

    def __getitem__(self, index: int) -> Tensor:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return torch.from_numpy(self.locate(index)[2])


class SourceCrops(_TrackCrops):
    """Random crops of one source (see `_TrackCrops`): item i is a float32 tensor
    (channels, crop_samples), depending only on (seed, epoch, i). `root` is one dataset folder
    or several, whose tracks are pooled (each drawn in proportion to its length, as one).

    Raises:
        UserError: missing folder, no tracks, a source no track has, or a source silent
            in `max_tries` draws.
    """

    def __init__(self, root: str | Path | Sequence[str | Path], source: str, *, split: str | None = "train",
                 layout: str | None = None, crop_samples: int = 32768, sample_rate: int = 16000,
                 channels: int = 1, length: int = 1000, seed: int = 0, min_rms_db: float = -50.0,
                 max_tries: int = 100) -> None:
        roots = dataset_roots(root)
        tracks = pooled_tracks(roots, split, layout)
        root = ", ".join(map(str, roots))
        with_source = [t for t in tracks if source in t.sources]
        if not with_source:
            raise UserError(f"{root}: no track has source '{source}' (sources: {', '.join(list_sources(tracks))})")
        self.source, self.what = source, f"source '{source}'"
        self._setup(with_source, crop_samples, sample_rate, channels, length, seed, min_rms_db, max_tries)

    def track_length(self, track: Track) -> int:
        return source_length(track, self.source, self.sample_rate)

    def read(self, track: Track, start: int) -> np.ndarray:
        return read_source(track, self.source, self.sample_rate, self.channels, start, self.crop_samples)


class MixtureCrops(_TrackCrops):
    """Random crops of the tracks' mixtures (`read_mixture`: the mix file, or the sum of the
    sources where a track has none; a source is never read alone from a track with a mix file).
    Item i is a float32 tensor (channels, crop_samples), depending only on (seed, epoch, i);
    see `_TrackCrops`.

    Raises:
        UserError: missing folder, no tracks, or mixtures silent in `max_tries` draws.
    """

    what = "mixtures"

    def __init__(self, root: str | Path, *, split: str | None = "train", layout: str | None = None,
                 crop_samples: int = 32768, sample_rate: int = 16000, channels: int = 1, length: int = 1000,
                 seed: int = 0, min_rms_db: float = -50.0, max_tries: int = 100) -> None:
        self._setup(list_tracks(root, split, layout), crop_samples, sample_rate, channels, length, seed,
                    min_rms_db, max_tries)

    def track_length(self, track: Track) -> int:
        return mixture_length(track, self.sample_rate)

    def read(self, track: Track, start: int) -> np.ndarray:
        return read_mixture(track, self.sample_rate, self.channels, start, self.crop_samples)


class SourcePatches(torch.utils.data.Dataset):
    """Front-end patches of mono crops (`SourceCrops` or `MixtureCrops`): item i is a float32
    tensor (1, n_bins, frames).

    `frontend` maps a waveform tensor (1, N) to a [0, 1] spectrogram (..., n_bins, T) with a
    single leading element (e.g. ``Frontend.encode``, ``MagnitudeFrontend.encode_crop``);
    `frames` keeps the first frames (all if None) and must not exceed T.
    """

    def __init__(self, crops: SourceCrops | MixtureCrops, frontend: Callable[[Tensor], Tensor], frames: int | None = None) -> None:
        if crops.channels != 1:
            raise UserError(f"front-end patches need mono crops, got channels={crops.channels}")
        self.crops, self.frontend, self.frames = crops, frontend, frames

    def __len__(self) -> int:
        return len(self.crops)

    def set_epoch(self, epoch: int) -> None:
        """See `SourceCrops.set_epoch`."""
        self.crops.set_epoch(epoch)

    def __getitem__(self, index: int) -> Tensor:
        spec = self.frontend(self.crops[index])
        if spec.numel() != spec.shape[-2] * spec.shape[-1]:
            raise ValueError(f"front end returned shape {tuple(spec.shape)} for a mono crop; expected (..., n_mels, T) with one leading element")
        spec = spec.reshape(1, *spec.shape[-2:]).float()
        if self.frames is not None:
            if spec.shape[-1] < self.frames:
                raise ValueError(f"crops of {self.crops.crop_samples} samples give {spec.shape[-1]} frames, fewer than {self.frames}")
            spec = spec[..., : self.frames]
        return spec
