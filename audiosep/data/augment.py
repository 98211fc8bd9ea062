"""Augmentation of synthesized stems: what real recordings vary in and one soundfont does not.

Two stages, both driven by a piece's `numpy.random.Generator` so a render is reproducible
from its seed (an option left at 0 draws nothing, so the default renders are unchanged):

- **Performance** (`augment_midi`, on the pretty_midi instruments before FluidSynth):
  tempo (every note time scaled by one factor per piece), detuning (one MIDI pitch bend per
  source: a mild pitch shift made by the synthesizer itself, free of DSP artefacts),
  dynamics (a velocity offset per source plus per-note jitter), expression (a slow
  CC 11 curve per source, redrawn every 1–3 s) and a timbre shift (each pitched source played
  s semitones higher and 2^(s/12) times faster, then slowed back by resampling in
  `restore_timbre_shift`: pitch and timing are the score's again, while the spectral envelope
  of the soundfont's samples and the time constants of their envelopes move by 2^(−s/12) —
  a new instrument body from the same soundfont).
- **Recording** (`augment_audio`, on each source's render before excerpts are cut):
  equalisation (random low-shelf, high-shelf and peak gains per source) and room reverb
  (one room per piece, shared by its sources, with a wet level per source), both from
  Spotify's pedalboard (`pedalboard.Reverb` is a Freeverb; `LowShelfFilter`,
  `HighShelfFilter` and `PeakFilter` are RBJ biquads). Each stem is processed alone, so
  the mixture made from the processed stems is still their exact sum.

Levels between sources are set later by `synth.balance` (``gain_db``).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np

from ..errors import UserError

PITCH_BEND_RANGE_CENTS = 200.0  # the GM default bend range: ±2 semitones over ±8192
REVERB_TAIL = 2.0  # seconds of silence appended before the reverb, so tails are not cut
EXPRESSION_INTERVAL = (1.0, 3.0)  # seconds between two CC 11 values
LIMITS = {"tempo": (0.0, 0.5), "detune_cents": (0.0, PITCH_BEND_RANGE_CENTS), "velocity": (0.0, 64.0),
          "expression": (0.0, 1.0), "eq_db": (0.0, 24.0), "reverb": (0.0, 1.0),
          "timbre_semitones": (0.0, 12.0), "transpose": (0.0, 24.0), "top_voices": (0.0, 1.0)}  # allowed range of each field


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Ranges of the random variations of a render (all off by default).

    Fields:
        tempo: note times scaled by U(1 − tempo, 1 + tempo) per piece (e.g. 0.1).
        detune_cents: each source bent by U(−c, c) cents (e.g. 30).
        velocity: each source's velocities moved by U(−v, v), every note by U(−v/2, v/2) more
            (MIDI units, clipped to 1–127; e.g. 20).
        expression: depth of the CC 11 curve as a fraction of its range: values in
            [127·(1 − depth), 127] (e.g. 0.4).
        eq_db: low-shelf (200 Hz), high-shelf (4 kHz) and peak (300 Hz–3 kHz) gains drawn in
            ±eq_db dB per source (e.g. 6).
        reverb: probability that a piece is played in a room (e.g. 0.7).
        timbre_semitones: each pitched source rendered s ~ U(−t, t) semitones higher and
            2^(s/12) times faster, then resampled back (`restore_timbre_shift`): its formants
            move by 2^(−s/12) (e.g. 3).
        transpose: each pitched source transposed by a whole number of semitones drawn
            uniformly in [−t, t], then clamped so its notes stay in the instrument's range
            (`augment_midi`'s ranges; e.g. 12).
        top_voices: probability that a piece's top source (piano_violin: the violin) plays the
            top two parts of a score with three or more, as chords in one line (a keyboard's
            right hand), and the next source the rest (e.g. 0.5); the arrangement reads it.
    """

    tempo: float = 0.0
    detune_cents: float = 0.0
    velocity: float = 0.0
    expression: float = 0.0
    eq_db: float = 0.0
    reverb: float = 0.0
    timbre_semitones: float = 0.0
    transpose: float = 0.0
    top_voices: float = 0.0

    def __post_init__(self) -> None:
        for name, (lo, hi) in LIMITS.items():
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise UserError(f"augmentation {name} must lie in [{lo:g}, {hi:g}], got {value}")

    @property
    def active(self) -> bool:
        """True if any variation is switched on."""
        return any(dataclasses.astuple(self))


def augment_midi(instruments: Mapping, aug: Augmentation, rng: np.random.Generator,
                 ranges: Mapping[str, tuple[int, int]] | None = None) -> dict:
    """Apply the performance variations in place to `{source: pretty_midi.Instrument}`.

    `ranges` gives each source's playable MIDI notes `(lowest, highest)` that a transposition
    keeps its notes in (default and missing sources: 0–127).
    Returns the drawn values `{"tempo": factor, "<source>": {"transpose", "detune_cents",
    "timbre_semitones", "velocity"}}` (only those switched on), for the dataset index; a timbre shift must then be
    undone on the renders by `restore_timbre_shift`. Detuning and the fraction of a semitone of
    the timbre shift share one pitch bend (clipped to the ±200-cent bend range).
    """
    import pretty_midi

    drawn: dict = {}
    if aug.tempo > 0:
        factor = float(rng.uniform(1 - aug.tempo, 1 + aug.tempo))
        drawn["tempo"] = factor
        for instrument in instruments.values():
            for note in instrument.notes:
                note.start, note.end = note.start * factor, note.end * factor
    for source, instrument in instruments.items():
        values: dict[str, float] = {}
        bend_cents = 0.0
        if aug.transpose > 0 and not instrument.is_drum and instrument.notes:
            values["transpose"] = _transpose_within(instrument, aug.transpose, (ranges or {}).get(source, (0, 127)), rng)
        if aug.detune_cents > 0 and not instrument.is_drum:
            bend_cents = values["detune_cents"] = float(rng.uniform(-aug.detune_cents, aug.detune_cents))
        if aug.timbre_semitones > 0 and not instrument.is_drum:
            shift = values["timbre_semitones"] = float(rng.uniform(-aug.timbre_semitones, aug.timbre_semitones))
            bend_cents += _transpose_and_speed_up(instrument, shift)
        if bend_cents != 0.0:
            bend = int(np.clip(round(bend_cents / PITCH_BEND_RANGE_CENTS * 8192), -8192, 8191))
            instrument.pitch_bends.append(pretty_midi.PitchBend(bend, 0.0))
        if aug.velocity > 0:
            offset = float(rng.uniform(-aug.velocity, aug.velocity))
            jitter = rng.uniform(-aug.velocity / 2, aug.velocity / 2, size=len(instrument.notes))
            for note, extra in zip(instrument.notes, jitter):
                note.velocity = int(np.clip(round(note.velocity + offset + extra), 1, 127))
            values["velocity"] = offset
        if aug.expression > 0:
            end = max((n.end for n in instrument.notes), default=0.0)
            instrument.control_changes += _expression_curve(end, aug.expression, rng)
        if values:
            drawn[source] = values
    return drawn


def _transpose_within(instrument, semitones: float, playable: tuple[int, int], rng: np.random.Generator) -> int:
    """Transpose `instrument`'s notes in place by a whole number of semitones drawn uniformly in
    [−semitones, semitones], clamped so its notes stay within `playable` (lowest, highest MIDI
    note; a part wider than the range keeps its lowest note in range); returns the shift."""
    bound = int(math.floor(semitones))
    shift = int(rng.integers(-bound, bound + 1))
    pitches = [note.pitch for note in instrument.notes]
    lowest, highest = playable
    shift = max(min(shift, highest - max(pitches)), lowest - min(pitches))
    for note in instrument.notes:
        note.pitch = int(np.clip(note.pitch + shift, 0, 127))
    return shift


def _transpose_and_speed_up(instrument, semitones: float) -> float:
    """Transpose `instrument`'s notes by round(semitones) and divide their times by
    2^(semitones/12), in place; returns the rest of the shift in cents (for the pitch bend)."""
    whole = int(round(semitones))
    speed = 2.0 ** (semitones / 12.0)
    for note in instrument.notes:
        note.pitch = int(np.clip(note.pitch + whole, 0, 127))
        note.start, note.end = note.start / speed, note.end / speed
    return 100.0 * (semitones - whole)


def restore_timbre_shift(renders: Mapping[str, np.ndarray], performance: Mapping,
                         sample_rate: int) -> dict[str, np.ndarray]:
    """Undo the pitch and speed of `augment_midi`'s timbre shift on mono renders `{source: (N,)}`.

    A source drawn with shift s (`performance[source]["timbre_semitones"]`) is resampled from
    `sample_rate` to `sample_rate`·2^(s/12) and played at `sample_rate`: 2^(s/12) times longer
    and s semitones lower, i.e. back at the score's pitch and timing. Renders are then padded
    with zeros to one length (N_max,). Sources without a shift are returned unchanged.
    """
    from ..io import resample

    out = {}
    for source, audio in renders.items():
        shift = performance.get(source, {}).get("timbre_semitones")
        if shift is None:
            out[source] = audio
            continue
        rate = sample_rate * 2.0 ** (shift / 12.0)
        out[source] = resample(np.asarray(audio, dtype=np.float32)[None], sample_rate, rate)[0]
    return pad_to_longest(out)


def pad_to_longest(renders: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Mono renders `{source: (N_s,)}` zero-padded at the end to one length (max N_s,)."""
    n = max(len(x) for x in renders.values())
    return {s: np.pad(x, (0, n - len(x))) for s, x in renders.items()}


def _expression_curve(end: float, depth: float, rng: np.random.Generator) -> list:
    """CC 11 events from 0 s to `end` s, a new value in [127·(1 − depth), 127] every 1–3 s."""
    import pretty_midi

    events, time = [], 0.0
    while time <= end:
        value = int(round(127 * (1 - depth * rng.random())))
        events.append(pretty_midi.ControlChange(11, value, time))
        time += float(rng.uniform(*EXPRESSION_INTERVAL))
    return events


def augment_audio(renders: Mapping[str, np.ndarray], sample_rate: int, aug: Augmentation,
                  rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict]:
    """Apply the recording variations to mono renders `{source: (N,) float32}`.

    Returns the processed renders (each `(N + tail,)` when a reverb adds its tail, all of one
    length) and the drawn settings (for the dataset index). Renders come back unchanged
    (the same arrays) when neither EQ nor reverb is on.
    """
    if aug.eq_db == 0 and aug.reverb == 0:
        return dict(renders), {}
    import pedalboard

    drawn: dict = {}
    room = None
    if aug.reverb > 0 and rng.random() < aug.reverb:
        room = {"room_size": float(rng.uniform(0.1, 0.9)), "damping": float(rng.uniform(0.2, 0.8)),
                "width": 0.0}
        drawn["room"] = room
    out = {}
    for source, audio in renders.items():
        effects, settings = [], {}
        if aug.eq_db > 0:
            gains = rng.uniform(-aug.eq_db, aug.eq_db, size=3)
            peak_hz = float(np.exp(rng.uniform(np.log(300.0), np.log(3000.0))))
            effects += [pedalboard.LowShelfFilter(cutoff_frequency_hz=200.0, gain_db=float(gains[0])),
                        pedalboard.HighShelfFilter(cutoff_frequency_hz=4000.0, gain_db=float(gains[1])),
                        pedalboard.PeakFilter(cutoff_frequency_hz=peak_hz, gain_db=float(gains[2]), q=1.0)]
            settings["eq"] = {"low_db": float(gains[0]), "high_db": float(gains[1]), "peak_db": float(gains[2]),
                              "peak_hz": peak_hz}
        if room is not None:
            wet = float(rng.uniform(0.1, 0.5))
            effects.append(pedalboard.Reverb(**room, wet_level=wet, dry_level=1.0 - 0.5 * wet))
            settings["wet"] = wet
        tail = int(REVERB_TAIL * sample_rate) if room is not None else 0
        padded = np.pad(np.asarray(audio, dtype=np.float32), (0, tail))[None]
        out[source] = pedalboard.Pedalboard(effects)(padded, sample_rate)[0].astype(np.float32)
        drawn[source] = settings
    return out, drawn
