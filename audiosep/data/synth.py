"""Offline multi-stem datasets: music21 corpus scores rendered per instrument with FluidSynth.

A preset says how a score's parts become sources:

- ``piano_violin``: the top part (highest mean pitch) played by a violin (GM 40), every other
  part by a piano (GM 0).
- ``drums_bass``: the bottom part played by a GM bass (programs 32–35, chosen by seed), plus a
  drum pattern generated on GM channel 10 on the piece's own bar grid and tempo map.
- ``piano_violin_tunes``, ``drums_bass_tunes``: one-part tunes (the corpus's fiddle tunes), the
  melody on the violin and a piano accompaniment generated for it (`accompany`), or the
  accompaniment's bass line on a bass under generated drums: textures (oom-pah, arpeggios,
  Alberti figures, walking basses) that the corpus's part-writing lacks.

Every instrument of a piece is rendered once over the whole piece; excerpts of ``duration``
seconds in which every source is active are then cut from the renders, loudness-balanced and
written as mono float32 wavs::

    out_dir/<split>/<track>/{mix,<source>}.wav      (mix = sum of the stems, sample for sample)
    out_dir/index.json                              (one record per track)

Splits are made *by piece* from a hash of the piece's corpus path, so a piece lands in the same
split whatever the seed or selection. Pieces by Haydn and Mozart are reserved (kept out of every
dataset) and cannot be selected; so are the MuseScore General soundfonts (every variant).

What real recordings vary in and one soundfont does not: several soundfonts (one drawn per
piece, or per source with ``font_per_source``), levels between sources (``gain_db``), and the
performance and recording variations of `augment.Augmentation` (tempo, detuning, dynamics,
expression, timbre shift, EQ, room reverb), all drawn from the piece's seed.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import soundfile as sf

from ..errors import UserError
from ..io import atomic_output, first_line, rms_db, write_audio
from ..progress import progress_bar
from .accompany import MODES, TEXTURES, Bar, Key, accompaniment
from .augment import Augmentation, augment_audio, augment_midi, pad_to_longest, restore_timbre_shift

SPLITS = ("train", "valid", "test")
RESERVED_COMPOSERS = ("haydn", "mozart")
RESERVED_SOUNDFONTS = ("musescore",)  # MuseScore General (every variant): held-out evaluation only
SYSTEM_SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
# Corpus folders of test files and exercises rather than music.
NON_MUSIC_FOLDERS = ("demos", "theoryExercises")
ANALYSIS_SUFFIX = ".rntxt"  # roman-numeral analyses (one part of chords), not scores to play
PREFERRED_COMPOSER = "bach"  # its ~370 four-part chorales are used first by default
MAX_PARTS = 16

ACTIVITY_HOP = 0.5  # seconds: every window of an excerpt must be active in every source
RENDER_GAIN = 0.5  # FluidSynth master gain; output is float, so nothing clips
TARGET_RMS = 0.1  # every source of an excerpt is scaled to this RMS before the random offsets
PEAK = 0.9  # all stems are scaled down together until the mix and every stem peak at ≤ PEAK
MAX_GAIN_DB = 40.0  # beyond ±40 dB a source is inaudible in the mix (and 10**(dB/20) overflows to 0 or inf)
PROBE_SECONDS = 0.3  # length of the note each soundfont must sound for every voice of the preset
SILENT_DB = -60.0  # a probe render below this RMS (dBFS) is silence: the font lacks the voice

GM_PIANO, GM_VIOLIN = 0, 40
GM_BASSES = (32, 33, 34, 35)  # acoustic, finger, pick, fretless
VIOLIN_LOWEST, BASS_LOWEST = 55, 28  # G3, E1 (MIDI note numbers)
# playable notes (lowest, highest) per GM program, that the transposition augmentation keeps to:
# the piano's 88 keys, the violin's G3–G7, a four-string bass's E1–G4
PLAYABLE = {GM_PIANO: (21, 108), GM_VIOLIN: (VIOLIN_LOWEST, 103), **{b: (BASS_LOWEST, 67) for b in GM_BASSES}}
KICK, SNARE, CRASH = 36, 38, 49
HATS = (42, 42, 44, 51)  # closed hi-hat (twice as likely), pedal hi-hat, ride
TOMS = (50, 48, 47, 45, 43)  # high to low
# the accompaniments (`accompany.TEXTURES`) a tune's bass line comes from: a root on each strong
# beat (the arpeggio's, which block's equals) or a note on every beat, each held to the next
BASS_TEXTURES = ("arpeggio", "walking")


class RenderError(RuntimeError):
    """FluidSynth failed, produced no audio, or ran past its timeout."""


@dataclass(frozen=True)
class Piece:
    """A corpus score that a preset can use.

    path: corpus-relative path (e.g. ``bach/bwv66.6.mxl``); composer: its corpus folder;
    parts: number of parts; split: the split it belongs to.
    """

    path: str
    composer: str
    parts: int
    split: str


@dataclass(frozen=True)
class Preset:
    """Sources and the arrangement that turns a parsed score into one MIDI instrument per source."""

    name: str
    sources: tuple[str, ...]
    arrange: Callable  # (music21 Score, np.random.Generator, Augmentation) -> dict[str, pretty_midi.Instrument]
    voices: tuple[tuple[str, int, bool], ...]  # (source, GM program, is_drum) of every instrument it may use
    parts: tuple[int, int] = (2, MAX_PARTS)  # the fewest and most parts of the scores it takes


# ----------------------------------------------------------------------------- corpus selection


@functools.lru_cache(maxsize=1)
def _corpus_entries() -> tuple[tuple[str, str, int], ...]:
    """(relative path, metadata composer, number of parts) for every single-work corpus file."""
    from music21 import corpus

    entries = []
    for entry in corpus.corpora.CoreCorpus().metadataBundle._metadataEntries.values():
        meta = entry.metadata
        if entry.number is not None or meta is None or not meta.numberOfParts:
            continue
        entries.append((str(entry.sourcePath), str(meta.composer or ""), int(meta.numberOfParts)))
    return tuple(sorted(set(entries)))


def is_reserved(text: str) -> bool:
    """True if a corpus path, folder or composer name belongs to a reserved composer."""
    return any(name in text.lower() for name in RESERVED_COMPOSERS)


def split_of(piece_path: str, splits: Sequence[float] = (0.8, 0.1, 0.1)) -> str:
    """The split of a piece: a uniform number from a hash of its path, cut by the fractions."""
    fractions = _check_splits(splits)
    u = int(hashlib.sha1(piece_path.encode()).hexdigest()[:12], 16) / 16**12
    edges = np.cumsum(fractions)
    return SPLITS[min(int(np.searchsorted(edges, u, side="right")), len(SPLITS) - 1)]


def list_pieces(
    preset: str, composers: Sequence[str] | None = None, splits: Sequence[float] = (0.8, 0.1, 0.1)
) -> list[Piece]:
    """Every corpus piece the preset can use (its `Preset.parts`, no reserved composer), sorted by path.

    composers: corpus folder names to keep (e.g. ``["bach", "beethoven"]``); None keeps all.
    """
    fewest, most = _get_preset(preset).parts
    fractions = _check_splits(splits)
    pieces = [
        Piece(path, path.split("/")[0], parts, split_of(path, fractions))
        for path, composer, parts in _corpus_entries()
        if fewest <= parts <= most
        and path.split("/")[0] not in NON_MUSIC_FOLDERS
        and not path.endswith(ANALYSIS_SUFFIX)
        and not is_reserved(path)
        and not is_reserved(composer)
    ]
    if composers is not None:
        _check_composers(composers, {p.composer for p in pieces})
        pieces = [p for p in pieces if p.composer in composers]
    return pieces


def _check_composers(composers: Sequence[str], available: set[str]) -> None:
    for name in composers:
        if is_reserved(name):
            raise UserError(f"composer '{name}' is reserved (Haydn and Mozart are kept out of every dataset)")
        if name not in available:
            raise UserError(f"no usable corpus pieces for composer '{name}'; choose from: {', '.join(sorted(available))}")


def _select_pieces(
    preset: str, composers: Sequence[str] | None, pieces: Sequence[str] | None,
    fractions: tuple[float, ...], seed: int,
) -> list[Piece]:
    """The candidate pieces in processing order: composers in the given order (default: Bach
    first, then the other folders alphabetically), each composer's pieces shuffled by seed."""
    usable = list_pieces(preset, composers, fractions)
    if pieces is not None:
        usable = _match_pieces(pieces, usable)
    order = list(composers) if composers is not None else sorted(
        {p.composer for p in usable}, key=lambda c: (c != PREFERRED_COMPOSER, c))
    rng = np.random.default_rng(seed)
    ordered = []
    for composer in order:
        group = [p for p in usable if p.composer == composer]
        ordered += [group[i] for i in rng.permutation(len(group))]
    return ordered


def _match_pieces(requested: Sequence[str], usable: list[Piece]) -> list[Piece]:
    by_path = {p.path: p for p in usable} | {p.path.rsplit(".", 1)[0]: p for p in usable}
    chosen = []
    for path in requested:
        if is_reserved(path):
            raise UserError(f"piece '{path}' is by a reserved composer (Haydn and Mozart are kept out of every dataset)")
        if path not in by_path:
            raise UserError(f"'{path}' is not a usable corpus piece for this preset (see list_pieces)")
        chosen.append(by_path[path])
    return list(dict.fromkeys(chosen))


# ----------------------------------------------------------------------------- score → MIDI


def _parse(path: str):
    """Parse a corpus file (music21 caches parsed files); music21's own warnings are muted."""
    from music21 import common, converter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return converter.parse(str(common.getCorpusFilePath() / path))


def _tempo_map(score) -> Callable[[np.ndarray], np.ndarray]:
    """Map quarter-note offsets to seconds through the score's metronome marks (120 bpm if none)."""
    quarters, seconds = [0.0], [0.0]
    rate = 0.5
    for start, end, mark in score.metronomeMarkBoundaries():
        if end <= start:
            continue
        rate = float(mark.secondsPerQuarter())
        quarters.append(float(end))
        seconds.append(seconds[-1] + (float(end) - float(start)) * rate)
    quarters.append(quarters[-1] + 1e6)
    seconds.append(seconds[-1] + 1e6 * rate)
    return lambda q: np.interp(q, quarters, seconds)


def _part_events(part) -> list[tuple[float, float, list[int]]]:
    """(start, end) in quarter notes and MIDI pitches of every sounding note/chord of a part."""
    events = []
    for note in part.stripTies().flatten().notes:
        length = float(note.quarterLength)
        pitches = [p.midi for p in getattr(note, "pitches", ())]
        if length > 0 and pitches:
            start = float(note.offset)
            events.append((start, start + length, pitches))
    return events


def _octave_shift(events, lowest: int) -> int:
    """Semitones (a multiple of 12) moving the part's lowest note into [lowest, lowest + 12)."""
    low = min(min(pitches) for _, _, pitches in events)
    return 12 * math.floor((lowest + 11 - low) / 12)


def _instrument(events, to_seconds, rng, *, program: int, shift: int = 0, lowest_only: bool = False):
    """A pretty_midi instrument playing the events (velocities 90 ± 8, by rng)."""
    import pretty_midi

    inst = pretty_midi.Instrument(program=program)
    for start, end, pitches in events:
        t0, t1 = (float(t) for t in to_seconds(np.array([start, end])))
        for pitch in ([min(pitches)] if lowest_only else pitches):
            velocity = int(np.clip(90 + rng.integers(-8, 9), 1, 127))
            inst.notes.append(pretty_midi.Note(velocity, int(np.clip(pitch + shift, 0, 127)), t0, t1))
    return inst


def _sounding_parts(score) -> list[list]:
    """The events of every part that has notes, ordered from highest to lowest mean pitch."""
    parts = [ev for ev in (_part_events(p) for p in score.parts) if ev]
    if len(parts) < 2:
        raise ValueError("fewer than two parts with notes")
    return sorted(parts, key=lambda ev: -np.mean([np.mean(p) for _, _, p in ev]))


def _arrange_piano_violin(score, rng, augmentation: Augmentation) -> dict:
    """Top part → violin (raised by octaves if it goes below the violin's G3), others → piano;
    with probability `augmentation.top_voices` (scores of three or more parts) the top two parts
    → violin, as chords (the draw is made only when it is on, so other renders do not change)."""
    parts = _sounding_parts(score)
    to_seconds = _tempo_map(score)
    voices = 2 if augmentation.top_voices > 0 and len(parts) >= 3 and rng.random() < augmentation.top_voices else 1
    top, rest = [e for part in parts[:voices] for e in part], [e for part in parts[voices:] for e in part]
    violin = _instrument(top, to_seconds, rng, program=GM_VIOLIN, shift=max(0, _octave_shift(top, VIOLIN_LOWEST)))
    violin.name = f"top {voices} part{'s' * (voices > 1)}"  # recorded in index.json ("arrangement")
    return {"piano": _instrument(rest, to_seconds, rng, program=GM_PIANO), "violin": violin}


def _arrange_drums_bass(score, rng, augmentation: Augmentation) -> dict:
    """Bottom part (lowest note of chords) → a GM bass; generated drums on the piece's bars."""
    bottom = _sounding_parts(score)[-1]
    to_seconds = _tempo_map(score)
    return {
        "bass": _instrument(bottom, to_seconds, rng, program=int(rng.choice(GM_BASSES)),
                            shift=_octave_shift(bottom, BASS_LOWEST), lowest_only=True),
        "drums": _drum_track(_bars(score), to_seconds, rng),
    }


def _as_played(score):
    """The score with its repeats written out (a tune's AABB form), or as written where music21
    cannot expand them (a malformed repeat)."""
    from music21.exceptions21 import StreamException
    from music21.repeat import ExpanderException

    try:
        return score.expandRepeats()
    except (ExpanderException, StreamException):  # StreamException: a part without measures
        return score


def _keys(score) -> list[Key]:
    """The tune's written keys (an ABC tune's ``K:`` fields, music21 ``key.Key``s with their
    mode) as `accompany.Key`s by offset, or music21's key analysis from the start where none
    is written in a mode of `accompany.MODES` (the analysis often names the relative key or
    another mode: docs/results.md)."""
    from music21 import key

    written = sorted({(float(k.getOffsetInHierarchy(score)), k.tonic.pitchClass, k.mode)
                      for k in score.recurse().getElementsByClass(key.Key) if k.mode in MODES})
    if written:
        return written
    analysed = score.analyze("key")
    return [(0.0, analysed.tonic.pitchClass, analysed.mode)]


def _tune(score, rng, textures: Sequence[str] | None = None) -> tuple[list, list, list, str, Callable]:
    """A one-part tune's melody events, its accompaniment (`accompany.accompaniment`: bass and
    chord events), the texture's name and its tempo map, slowed or quickened by a factor in
    [0.7, 1.3] drawn per tune (the corpus's tunes carry no tempo, so all would play at 120 bpm).
    textures: those the accompaniment draws from (default: all of `accompany.TEXTURES`)."""
    melody = _part_events(score.parts[0])
    if not melody:
        raise ValueError("the tune has no notes")
    bass, chords, texture = accompaniment(melody, _bars(score), _keys(score), rng, textures or tuple(TEXTURES))
    factor = float(rng.uniform(0.7, 1.3))
    to_seconds = _tempo_map(score)
    return melody, bass, chords, texture, lambda q: factor * to_seconds(q)


def _arrange_tune_piano_violin(score, rng, augmentation: Augmentation) -> dict:
    """The tune (its repeats played) → violin (raised by octaves to G3 and up, and one more
    octave with probability 0.3 where it stays below C7), its generated accompaniment (bass and
    chords) → piano."""
    melody, bass, chords, texture, to_seconds = _tune(_as_played(score), rng)
    shift = max(0, _octave_shift(melody, VIOLIN_LOWEST))
    if rng.random() < 0.3 and max(max(p) for _, _, p in melody) + shift + 12 < 96:
        shift += 12
    piano = _instrument(bass + chords, to_seconds, rng, program=GM_PIANO)
    piano.name = f"{texture} accompaniment"  # recorded in index.json ("arrangement")
    return {"piano": piano, "violin": _instrument(melody, to_seconds, rng, program=GM_VIOLIN, shift=shift)}


def _arrange_tune_drums_bass(score, rng, augmentation: Augmentation) -> dict:
    """The bass line of the tune's generated accompaniment → a GM bass; generated drums on its bars.
    Only `BASS_TEXTURES` are drawn: of the others, block's bass is the arpeggio's, Alberti's and
    sustained's hold one note per chord and oom-pah's rests on the weak beats."""
    score = _as_played(score)
    _, bass, _, texture, to_seconds = _tune(score, rng, BASS_TEXTURES)
    instrument = _instrument(bass, to_seconds, rng, program=int(rng.choice(GM_BASSES)),
                             shift=_octave_shift(bass, BASS_LOWEST), lowest_only=True)
    instrument.name = f"bass of the {texture} accompaniment"
    return {"bass": instrument, "drums": _drum_track(_bars(score), to_seconds, rng)}


def _bars(score) -> list[Bar]:
    """Each bar of the first part (`accompany.Bar`, quarter notes), bars following
    time-signature changes.

    A measure shorter than its bar starts after the bar's downbeat when it is the rest of a bar
    a short measure began (the second half of a bar a volta bracket splits, or a section's
    upbeat after its short last bar), or an upbeat: the first measure (music21 pads an ABC
    pickup on the left) or one of a beat or less before a full one. Any other short measure is
    a short bar from its downbeat (a section's or the piece's last bar, a first ending). A part
    without measures gets bars of its first time signature from offset 0.
    """
    from music21 import meter

    signature = score.recurse().getElementsByClass(meter.TimeSignature).first() or meter.TimeSignature("4/4")
    measures = []
    for measure in score.parts[0].getElementsByClass("Measure"):
        signature = measure.timeSignature or signature
        start = float(measure.offset)
        end = start + float(measure.duration.quarterLength)
        if end > start:
            measures.append((start, end, float(measure.paddingLeft), signature))
    bars, into_bar = [], 0.0  # quarter notes of the current bar that earlier short measures filled
    for i, (start, end, padding, signature) in enumerate(measures):
        if i and signature.ratioString != measures[i - 1][3].ratioString:
            into_bar = 0.0  # a new metre starts a new bar
        length, beat = float(signature.barDuration.quarterLength), float(signature.beatDuration.quarterLength)
        next_full = i + 1 < len(measures) and measures[i + 1][1] - measures[i + 1][0] >= length - 1e-6
        if padding > 1e-6:
            downbeat = start - padding
        elif end - start >= length - 1e-6:
            downbeat = start
        elif 1e-6 < into_bar and into_bar + end - start <= length + 1e-6:
            downbeat = start - into_bar
        elif i == 0 or (next_full and end - start <= beat + 1e-6):
            downbeat = end - length
        else:
            downbeat = start
        into_bar = end - downbeat if end - downbeat < length - 1e-6 else 0.0
        bars.append(Bar(downbeat, start, end, beat, int(signature.beatCount)))
    if not bars:
        total, length = float(score.highestTime), float(signature.barDuration.quarterLength)
        bars = [Bar(float(q), float(q), float(min(q + length, total)), float(signature.beatDuration.quarterLength),
                    int(signature.beatCount)) for q in np.arange(0.0, total, length)]
    return bars


def _drum_track(bars, to_seconds, rng):
    """A drum kit (GM channel 10) on the bar grid, with a groove drawn once per piece.

    The groove: a hat (closed, pedal or ride) in 4ths, 8ths or 16ths; kick on the downbeat plus
    extra 8th-note kicks; snare on the backbeats (every other beat, or every beat but the first
    in odd meters). Each bar varies the kicks and adds ghost snares; the last bar of every
    phrase (4 or 8 bars), and an upbeat into a phrase, ends with a snare/tom fill; a crash marks
    each phrase start.
    """
    import pretty_midi

    kick_density = rng.uniform(0.1, 0.4)
    groove = {
        "hat": int(rng.choice(HATS)),
        "hat_step": float(rng.choice([0.25, 0.5, 0.5, 1.0])),
        "kicks": {k for k in range(1, 16) if rng.random() < kick_density},  # in 8ths after the downbeat
    }
    phrase = int(rng.choice([4, 8]))
    drums = pretty_midi.Instrument(program=0, is_drum=True)
    number = 0  # bars from the first that starts on its downbeat: a measure after its downbeat is not counted
    for downbeat, start, end, beat, beats in bars:
        upbeat = start > downbeat + 1e-6
        # an upbeat into a phrase's first bar ends with the fill, as the phrase's last bar does
        phrase_start = not upbeat and number % phrase == 0
        phrase_end = number % phrase == 0 if upbeat else number % phrase == phrase - 1
        hits = _drum_bar(groove, end - downbeat, beat, beats, phrase_start, phrase_end, rng)
        number += not upbeat
        for position, pitch, velocity in hits:
            if start <= downbeat + position < end:
                t0 = float(to_seconds(np.array(downbeat + position)))
                velocity = int(np.clip(velocity + rng.integers(-6, 7), 1, 127))
                drums.notes.append(pretty_midi.Note(velocity, pitch, t0, t0 + 0.1))
    return drums


def _drum_bar(groove: dict, length: float, beat: float, beats: int, crash: bool, fill: bool,
              rng: np.random.Generator) -> list[tuple[float, int, int]]:
    """(position in quarter notes from the downbeat, GM drum note, velocity) of one bar of
    `length` quarter notes from its downbeat, in a metre of `beats` beats of `beat` quarters
    (the backbeats follow the metre, not a short bar's length)."""
    backbeats = range(1, beats, 2) if beats % 2 == 0 else range(1, beats)
    kicks = {k for k in groove["kicks"] if rng.random() > 0.15}
    if rng.random() < 0.15:
        kicks.add(int(rng.integers(1, 16)))
    hits = [(float(q), groove["hat"], 80 if q % beat == 0 else 70) for q in np.arange(0.0, length, groove["hat_step"])]
    hits += [(0.0, KICK, 110)] + [(0.5 * k, KICK, 95) for k in kicks if 0.5 * k < length]
    hits += [(b * beat, SNARE, 105) for b in backbeats]
    hits += [(float(q), SNARE, 40) for q in np.arange(0.25, length, 0.5) if rng.random() < 0.08]
    if crash:
        hits.append((0.0, CRASH, 100))
    if fill:
        fill_start = length - beat
        hits = [h for h in hits if h[0] < fill_start]
        notes = rng.choice((SNARE,) + TOMS, size=max(1, int(round(beat / 0.25))))
        hits += [(fill_start + 0.25 * i, int(p), 100) for i, p in enumerate(notes)]
    return hits


PRESETS = {
    "piano_violin": Preset("piano_violin", ("piano", "violin"), _arrange_piano_violin,
                           (("piano", GM_PIANO, False), ("violin", GM_VIOLIN, False))),
    "drums_bass": Preset("drums_bass", ("bass", "drums"), _arrange_drums_bass,
                         (*(("bass", b, False) for b in GM_BASSES), ("drums", 0, True))),
    "piano_violin_tunes": Preset("piano_violin_tunes", ("piano", "violin"), _arrange_tune_piano_violin,
                                 (("piano", GM_PIANO, False), ("violin", GM_VIOLIN, False)), parts=(1, 1)),
    "drums_bass_tunes": Preset("drums_bass_tunes", ("bass", "drums"), _arrange_tune_drums_bass,
                               (*(("bass", b, False) for b in GM_BASSES), ("drums", 0, True)), parts=(1, 1)),
}


def _get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UserError(f"unknown synth preset '{name}'; choose from: {', '.join(PRESETS)}")
    return PRESETS[name]


# ----------------------------------------------------------------------------- rendering


def default_soundfont() -> Path:
    """FluidR3_GM from fluid-soundfont-gm if installed, else the TimGM6mb.sf2 bundled with pretty_midi."""
    import pretty_midi

    return SYSTEM_SOUNDFONT if SYSTEM_SOUNDFONT.exists() else Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"


def _fluidsynth_command(soundfont: Path, midi_path: Path, wav_path: Path, sample_rate: int) -> list[str]:
    """Fast offline render (no shell, no audio driver) to a float wav at `sample_rate`. FluidSynth's
    default soundfont is switched off: it stands in, without an error, for a font that fails to
    load, so a broken font would render with FluidR3 instead of rendering silence."""
    return ["fluidsynth", "-ni", "-q", "-o", "synth.default-soundfont=", "-F", str(wav_path), "-T", "wav",
            "-O", "float", "-r", str(sample_rate), "-g", str(RENDER_GAIN), str(soundfont), str(midi_path)]


def require_fluidsynth() -> None:
    """Raise UserError if the fluidsynth program is not on PATH."""
    if shutil.which("fluidsynth") is None:
        raise UserError("fluidsynth not found on PATH: apt-get install fluidsynth fluid-soundfont-gm")


def render_midi(midi_path: Path, soundfont: Path, sample_rate: int, timeout: float) -> np.ndarray:
    """Render a MIDI file with FluidSynth; returns mono float32 audio (N,) at `sample_rate`.

    The process is killed after `timeout` seconds (some corpus MIDI files make FluidSynth run
    forever). Raises RenderError on a timeout, a failure, or an empty render.
    """
    wav_path = Path(midi_path).with_suffix(".wav")
    command = _fluidsynth_command(Path(soundfont), Path(midi_path), wav_path, sample_rate)
    try:
        result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RenderError(f"FluidSynth ran past its {timeout:g} s timeout") from None
    if result.returncode != 0 or not wav_path.exists():
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise RenderError(f"FluidSynth failed ({detail[-1] if detail else f'exit {result.returncode}'})")
    audio, _ = sf.read(str(wav_path), dtype="float32", always_2d=True)
    if audio.shape[0] == 0:
        raise RenderError("FluidSynth rendered no audio")
    return audio.mean(axis=1)


def check_soundfont_voices(font: Path, preset: Preset, sample_rate: int, timeout: float) -> None:
    """Render one note of every voice of `preset` with `font` (before any piece is rendered).

    Raises:
        UserError naming the font and the voice: FluidSynth fails or renders silence (a damaged
            file, or a font without that instrument), which would skip every piece it is drawn
            for, after the work, while index.json lists it among the fonts used.
    """
    import pretty_midi

    for source, program, is_drum in preset.voices:
        midi = pretty_midi.PrettyMIDI()
        midi.instruments.append(pretty_midi.Instrument(program=program, is_drum=is_drum))
        pitch = SNARE if is_drum else sum(PLAYABLE[program]) // 2
        midi.instruments[0].notes.append(pretty_midi.Note(100, pitch, 0.0, PROBE_SECONDS))
        voice = "the GM drum kit" if is_drum else f"GM program {program}"
        with tempfile.TemporaryDirectory(prefix="audiosep-probe-") as tmp:
            midi.write(str(Path(tmp) / "probe.mid"))
            try:
                audio = render_midi(Path(tmp) / "probe.mid", font, sample_rate, timeout)
            except RenderError as err:
                raise UserError(f"{font}: cannot render {source} ({voice}): {err}") from None
        if rms_db(audio) < SILENT_DB:
            raise UserError(f"{font}: FluidSynth renders no sound for {source} ({voice}) with this soundfont "
                            "(a damaged file, or a font without that instrument)")


def _render_piece(instruments: Mapping, soundfonts: Mapping[str, Path], sample_rate: int,
                  timeout: float) -> dict[str, np.ndarray]:
    """Render each instrument (with its source's soundfont) over the whole piece; mono (N,)
    arrays padded to one length."""
    import pretty_midi

    renders = {}
    with tempfile.TemporaryDirectory(prefix="audiosep-synth-") as tmp:
        for source, instrument in instruments.items():
            midi = pretty_midi.PrettyMIDI()
            midi.instruments.append(instrument)
            midi_path = Path(tmp) / f"{source}.mid"
            midi.write(str(midi_path))
            renders[source] = render_midi(midi_path, soundfonts[source], sample_rate, timeout)
    return pad_to_longest(renders)


# ----------------------------------------------------------------------------- excerpts and mixing


def window_rms(x: np.ndarray, hop: int) -> np.ndarray:
    """RMS of consecutive non-overlapping windows of `hop` samples of a mono signal (N,)."""
    n = len(x) // hop
    return np.sqrt(np.mean(x[: n * hop].reshape(n, hop).astype(np.float64) ** 2, axis=1))


def active_windows(x: np.ndarray, hop: int, threshold_db: float) -> np.ndarray:
    """Windows whose RMS is within `threshold_db` (negative) of the source's loud level.

    The loud level is the 95th percentile of the window RMS over the whole render.
    """
    rms = window_rms(x, hop)
    if rms.size == 0:
        return rms > 0
    floor = max(np.percentile(rms, 95) * 10 ** (threshold_db / 20), 1e-5)
    return rms >= floor


def excerpt_starts(renders: Mapping[str, np.ndarray], sample_rate: int, duration: float,
                   count: int, threshold_db: float, rng: np.random.Generator) -> list[int]:
    """Start samples of up to `count` non-overlapping excerpts in which every source is active
    in every ACTIVITY_HOP window; as many as fit (leftmost packing), a random subset if more."""
    hop = int(round(ACTIVITY_HOP * sample_rate))
    length = int(round(duration * sample_rate))
    width = math.ceil(length / hop - 1e-9)
    active = np.logical_and.reduce([active_windows(x, hop, threshold_db) for x in renders.values()])
    inactive_before = np.concatenate([[0], np.cumsum(~active)])
    starts, next_free = [], 0
    for i in range(len(active) - width + 1):
        if i >= next_free and inactive_before[i + width] == inactive_before[i]:
            starts.append(i)
            next_free = i + width
    if len(starts) > count:
        starts = sorted(rng.choice(starts, size=count, replace=False).tolist())
    return [i * hop for i in starts]


def balance(excerpts: Mapping[str, np.ndarray], rng: np.random.Generator, gain_db: float) -> dict[str, float]:
    """Linear gains giving every source the same RMS (times a random offset in ±gain_db dB),
    then one common factor so that neither the mix nor any stem peaks above PEAK."""
    offsets = {s: float(rng.uniform(-gain_db, gain_db)) if gain_db > 0 else 0.0 for s in excerpts}
    gains = {s: TARGET_RMS / max(float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))), 1e-12)
             * 10 ** (offsets[s] / 20) for s, x in excerpts.items()}
    mix = sum(g * excerpts[s].astype(np.float64) for s, g in gains.items())
    peak = max([float(np.max(np.abs(mix)))] + [g * float(np.max(np.abs(excerpts[s]))) for s, g in gains.items()])
    scale = min(1.0, PEAK / peak) if peak > 0 else 1.0
    return {s: g * scale for s, g in gains.items()}


# ----------------------------------------------------------------------------- the generator


def synthesize(
    preset: str,
    out_dir: str | Path,
    *,
    n_tracks: int | Mapping[str, int] | None = None,
    excerpts_per_piece: int = 4,
    duration: float = 10.0,
    sample_rate: int = 16000,
    seed: int = 0,
    soundfonts: Sequence[str | Path] | None = None,
    composers: Sequence[str] | None = None,
    pieces: Sequence[str] | None = None,
    splits: Sequence[float] = (0.8, 0.1, 0.1),
    gain_db: float = 0.0,
    augmentation: Augmentation | None = None,
    font_per_source: bool = False,
    threshold_db: float = -30.0,
    timeout: float = 60.0,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Render a multi-stem dataset; returns the index (also written to ``out_dir/index.json``).

    Args:
        preset: ``piano_violin`` or ``drums_bass``.
        out_dir: dataset folder; refused if it already holds a dataset unless `overwrite`. The
            tracks are rendered into a hidden staging folder in it and moved in when all are
            made (`_staged_dataset`), so an error or Ctrl-C leaves the folder as it was.
        n_tracks: excerpts to make — an int (shared among splits by `splits`), a mapping
            ``{split: count}`` (missing splits get none), or None for every usable piece.
        excerpts_per_piece: at most this many non-overlapping excerpts per piece.
        duration: excerpt length in seconds.
        sample_rate: Hz (8000–96000); stems are mono float32 wavs.
        seed: drives piece order, instrument choices, drum grooves, velocities, excerpt choice,
            gains and soundfont choice; the same arguments give the same files.
        soundfonts: one or several .sf2 files, one drawn per piece (default: `default_soundfont`).
        composers: corpus folders to draw from, in priority order (default: Bach, then the rest).
        pieces: corpus paths to restrict the selection to (e.g. ``bach/bwv66.6.mxl``).
        splits: train/valid/test fractions of pieces (assigned by a hash of the piece path).
        gain_db: each source gets a random gain in ±gain_db dB around equal loudness (the
            level between two sources then spans ±2·gain_db dB).
        augmentation: tempo, detuning, dynamics, expression, timbre shift, EQ and reverb ranges
            (`augment.Augmentation`; default: none).
        font_per_source: draw a soundfont for every source of a piece (default: one per piece).
        threshold_db: a 0.5 s window counts as active within this many dB of the source's level.
        timeout: seconds allowed for each FluidSynth render.
        progress: show a tqdm bar over pieces.
    Raises:
        UserError: unknown preset, reserved or unknown composer/piece, bad argument, missing
            fluidsynth or soundfont, a soundfont that does not sound every voice of the preset
            (`check_soundfont_voices`), an `out_dir` already holding a dataset, or no track made
            at all (every piece skipped; a piece that fails alone is skipped with a warning).

    The index records each soundfont by its resolved path (links followed): the file rendered.

    A piece that fails to parse or render is skipped with a warning.
    """
    chosen = _get_preset(preset)
    augmentation = augmentation or Augmentation()
    if augmentation.top_voices and preset != "piano_violin":
        raise UserError(f"top_voices arranges a score's top parts for the violin: piano_violin only, not {preset}")
    fractions = _check_splits(splits)
    _check_numbers(duration, sample_rate, excerpts_per_piece, gain_db, timeout)
    fonts = _check_soundfonts(soundfonts)
    targets = _split_targets(n_tracks, fractions)
    candidates = _select_pieces(preset, composers, pieces, fractions, seed)
    require_fluidsynth()
    for font in fonts:
        check_soundfont_voices(font, chosen, sample_rate, timeout)
    final = _check_out_dir(Path(out_dir), overwrite)
    index = {"preset": preset, "sources": list(chosen.sources), "sample_rate": sample_rate,
             "duration": duration, "seed": seed, "splits": dict(zip(SPLITS, fractions)),
             "soundfonts": [str(f) for f in fonts], "font_per_source": font_per_source, "gain_db": gain_db,
             "augmentation": dataclasses.asdict(augmentation), "tracks": [], "skipped": {}}
    with _staged_dataset(final) as out_dir:
        make_piece = functools.partial(_make_piece, preset=chosen, out_dir=out_dir, duration=duration,
                                       sample_rate=sample_rate, seed=seed, fonts=fonts, gain_db=gain_db,
                                       threshold_db=threshold_db, timeout=timeout, augmentation=augmentation,
                                       font_per_source=font_per_source)
        counts = _render_pieces(index, candidates, targets, excerpts_per_piece, make_piece, out_dir, progress)
        if not index["tracks"]:
            reasons = collections.Counter(reason.split(":")[0] for reason in index["skipped"].values())
            why = ", ".join(f"{n} {reason}" for reason, n in reasons.most_common()) or "no piece asked for"
            raise UserError(f"no track could be made ({len(index['skipped'])} pieces skipped: {why}); "
                            f"{final} is left as it was")
    for split, target in (targets or {}).items():
        if counts[split] < target:
            warnings.warn(f"{split}: only {counts[split]} of {target} tracks (ran out of usable pieces)", stacklevel=2)
    return index


def _render_pieces(index: dict, candidates: list[Piece], targets: dict | None, excerpts_per_piece: int,
                   make_piece: Callable[..., list[dict]], out_dir: Path, progress: bool) -> dict[str, int]:
    """Render the candidates' excerpts (`make_piece(piece, wanted=n)`) until each split has its
    target, adding their records and skipped pieces to `index`, written to `out_dir` after each
    piece; returns the tracks per split."""
    counts = dict.fromkeys(SPLITS, 0)
    bar = progress_bar(total=len(candidates) if targets is None else None, unit="piece", disable=not progress)
    for piece in candidates:
        wanted = _still_wanted(targets, counts, piece.split, excerpts_per_piece)
        if wanted == 0:
            if all(_still_wanted(targets, counts, s, 1) == 0 for s in SPLITS):
                break
            continue
        bar.update()
        try:
            records = make_piece(piece, wanted=wanted)
        except Exception as err:  # noqa: BLE001 — any parse/render failure skips the piece
            reason = f"{type(err).__name__}: {first_line(err) if str(err).strip() else ''}"
            index["skipped"][piece.path] = reason
            warnings.warn(f"skipping {piece.path}: {reason}", stacklevel=2)
            continue
        if not records:
            index["skipped"][piece.path] = "no excerpt with every source active"
        index["tracks"] += records
        counts[piece.split] += len(records)
        bar.set_postfix(counts)
        _write_index(out_dir, index)
    bar.close()
    _write_index(out_dir, index)
    return counts


def _make_piece(piece: Piece, preset: Preset, out_dir: Path, wanted: int, duration: float,
                sample_rate: int, seed: int, fonts: list[Path], gain_db: float,
                threshold_db: float, timeout: float, augmentation: Augmentation,
                font_per_source: bool) -> list[dict]:
    """Parse, arrange, augment, render and cut one piece; write its tracks; return their index records."""
    piece_seed = int(hashlib.sha1(f"{seed}:{piece.path}".encode()).hexdigest()[:15], 16)
    rng = np.random.default_rng(piece_seed)
    soundfont = fonts[int(rng.integers(len(fonts)))]
    instruments = preset.arrange(_parse(piece.path), rng, augmentation)
    source_fonts = {s: fonts[int(rng.integers(len(fonts)))] if font_per_source else soundfont for s in instruments}
    ranges = {s: PLAYABLE.get(inst.program, (0, 127)) for s, inst in instruments.items()}
    performance = augment_midi(instruments, augmentation, rng, ranges)
    renders = _render_piece(instruments, source_fonts, sample_rate, timeout)
    renders = restore_timbre_shift(renders, performance, sample_rate)
    renders, recording = augment_audio(renders, sample_rate, augmentation, rng)
    length = int(round(duration * sample_rate))
    records = []
    for k, start in enumerate(excerpt_starts(renders, sample_rate, duration, wanted, threshold_db, rng)):
        excerpts = {s: renders[s][start : start + length] for s in preset.sources}
        gains = balance(excerpts, rng, gain_db)
        stems = {s: (gains[s] * excerpts[s]).astype(np.float32) for s in preset.sources}
        mix = np.sum(np.stack(list(stems.values())), axis=0, dtype=np.float32)
        name = f"{piece.path.rsplit('.', 1)[0].replace('/', '-')}-{k:02d}"
        track_dir = out_dir / piece.split / name
        for source, stem in stems.items():
            write_audio(track_dir / f"{source}.wav", stem[None], sample_rate)
        write_audio(track_dir / "mix.wav", mix[None], sample_rate)
        records.append({
            "track": name, "split": piece.split, "piece": piece.path, "composer": piece.composer,
            "soundfont": str(soundfont), "source_soundfonts": {s: str(f) for s, f in source_fonts.items()},
            "performance": performance, "recording": recording,
            "offset": start / sample_rate, "duration": duration,
            "gains": gains, "programs": {s: int(i.program) for s, i in instruments.items() if not i.is_drum},
            "arrangement": {s: i.name for s, i in instruments.items() if i.name},
            "seed": piece_seed,
        })
    return records


def _still_wanted(targets: dict | None, counts: dict, split: str, per_piece: int) -> int:
    if targets is None:
        return per_piece
    return max(0, min(per_piece, targets.get(split, 0) - counts[split]))


def _write_index(out_dir: Path, index: dict) -> None:
    with atomic_output(out_dir / "index.json") as tmp:
        tmp.write_text(json.dumps(index, indent=1))


def _dataset_files(out_dir: Path) -> list[Path]:
    """The files and split folders of a dataset in `out_dir` that exist."""
    return [p for p in [out_dir / "index.json", *(out_dir / s for s in SPLITS)] if p.exists()]


def _check_out_dir(out_dir: Path, overwrite: bool) -> Path:
    """`out_dir`, refused if it holds a dataset and not `overwrite` (nothing is removed yet)."""
    existing = _dataset_files(out_dir)
    if existing and not overwrite:
        raise UserError(f"{out_dir} already holds a dataset ({existing[0].name}); use --overwrite to replace it")
    return out_dir


@contextlib.contextmanager
def _staged_dataset(final: Path) -> Iterator[Path]:
    """Yield a hidden folder in `final` to render into; when the body succeeds, the new dataset
    replaces the one in `final` (if any, `_swap_in`). On an error or Ctrl-C the staging folder
    is removed and `final` is left as it was, with no folder made for it left behind."""
    made = [p for p in (final, *final.parents) if not p.exists()]
    final.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".synth.", dir=final))
    try:
        yield staging
        _swap_in(staging, final)
        made = []
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in made:  # innermost first: the folders made for a dataset that was not made
            with contextlib.suppress(OSError):
                folder.rmdir()


def _swap_in(staging: Path, final: Path) -> None:
    """Replace the dataset entries of `final` by those of `staging` by renames only (the old ones
    first set aside in a hidden folder, deleted at the end), so an error or Ctrl-C part way
    puts the old dataset back whole; the new one is left in `staging`."""
    old = Path(tempfile.mkdtemp(prefix=".synth-old.", dir=final))
    moved_in: list[Path] = []
    try:
        for path in _dataset_files(final):
            os.replace(path, old / path.name)
        for path in _dataset_files(staging):
            os.replace(path, final / path.name)
            moved_in.append(final / path.name)
    except BaseException:
        for path in moved_in:
            os.replace(path, staging / path.name)
        for path in _dataset_files(old):
            os.replace(path, final / path.name)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- argument checks


def _check_splits(splits: Sequence[float]) -> tuple[float, ...]:
    fractions = tuple(float(f) for f in splits)
    if len(fractions) != len(SPLITS) or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise UserError(f"splits must be three non-negative fractions (train, valid, test) summing to 1, got {tuple(splits)}")
    return fractions


def _split_targets(n_tracks: int | Mapping[str, int] | None, fractions: tuple[float, ...]) -> dict[str, int] | None:
    if n_tracks is None:
        return None
    if isinstance(n_tracks, Mapping):
        unknown = set(n_tracks) - set(SPLITS)
        if unknown:
            raise UserError(f"unknown split(s) {sorted(unknown)} in n_tracks; use {', '.join(SPLITS)}")
        targets = {s: int(n_tracks.get(s, 0)) for s in SPLITS}
    else:
        valid, test = (int(round(n_tracks * f)) for f in fractions[1:])
        targets = {"train": int(n_tracks) - valid - test, "valid": valid, "test": test}
    if min(targets.values()) < 0:
        raise UserError(f"track counts must be non-negative, got {n_tracks}")
    return targets


def _check_numbers(duration, sample_rate, excerpts_per_piece, gain_db, timeout) -> None:
    if not duration > 0:
        raise UserError(f"duration must be positive seconds, got {duration}")
    if not 8000 <= sample_rate <= 96000:
        raise UserError(f"sample rate must be within FluidSynth's 8000–96000 Hz, got {sample_rate}")
    if excerpts_per_piece < 1:
        raise UserError(f"excerpts per piece must be at least 1, got {excerpts_per_piece}")
    if not 0 <= gain_db <= MAX_GAIN_DB:
        raise UserError(f"gain range must lie in [0, {MAX_GAIN_DB:g}] dB, got {gain_db}")
    if not timeout > 0:
        raise UserError(f"render timeout must be positive seconds, got {timeout}")


def _check_soundfonts(soundfonts: Sequence[str | Path] | None) -> list[Path]:
    """The fonts as resolved paths (the index then names the files rendered, not a link or a path
    relative to where synth ran), once each checked to exist, not reserved and a SoundFont."""
    fonts = [Path(f) for f in soundfonts] if soundfonts else [default_soundfont()]
    for font in fonts:
        if not font.is_file():
            raise UserError(f"{font}: soundfont not found")
        if is_reserved_soundfont(font):
            raise UserError(f"{font}: the MuseScore General soundfonts are reserved for held-out evaluation "
                            "and are never rendered into a dataset")
        if not is_soundfont_file(font):
            raise UserError(f"{font}: not a SoundFont (.sf2/.sf3 files start with a RIFF 'sfbk' header)")
    return [font.resolve() for font in fonts]


def is_soundfont_file(path: str | Path) -> bool:
    """True if the file starts like a SoundFont 2 / 3 (RIFF chunk of form type 'sfbk')."""
    with open(path, "rb") as f:
        head = f.read(12)
    return len(head) == 12 and head[:4] == b"RIFF" and head[8:12] == b"sfbk"


def is_reserved_soundfont(path: str | Path) -> bool:
    """True if a soundfont file (by its name or the file a link points to) is a reserved one."""
    names = (Path(path).name, Path(path).resolve().name)
    return any(word in name.lower() for name in names for word in RESERVED_SOUNDFONTS)
