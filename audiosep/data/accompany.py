"""A piano accompaniment generated for a one-part tune: harmony from the melody, then a texture.

The music21 corpus holds ~1000 one-part fiddle tunes (``ryansMammoth``) and few pieces whose
keyboard writing is not a chorale's: the two-part training scores give the mask network block
chords under a melody and little else, while real piano parts walk, arpeggiate and alternate
bass and chord (rags, waltzes, mazurkas, songs). The ``*_tunes`` presets of `synth` play such a
tune on the melody instrument and this accompaniment on the piano (or its bass line on a bass).

Two steps, both functions of the melody and a seeded generator:

- `harmonize`: one major or minor triad of the key (or mode) in force per span (a bar or half
  a bar), the one whose pitch classes cover most of the melody's sounding time there (a tie-free
  score: a small prior per degree and a random term), so strong beats fall on chord tones as in
  a real accompaniment; a span whose melody repeats an earlier one's gets its chord again, so
  a repeated section is harmonised as it was the first time.
- `realize`: the chords played in one texture drawn per tune — block chords on the beats,
  oom-pah (bass on the strong beats, chords between; a waltz in triple metre), broken-chord
  arpeggios from the bass on each strong beat, an Alberti figure, a walking bass on every beat
  under held chords, or sustained chords — in a bass and a chord register drawn per tune.

Positions and lengths are in quarter notes (music21 offsets), pitches MIDI numbers; events are
``(start, end, [pitches])`` as `synth._part_events` gives them, so the rest of the synth path
(tempo map, instruments, augmentation) is shared.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

Event = tuple[float, float, list[int]]
Key = tuple[float, int, str]  # (offset from which it holds, tonic pitch class, mode of `MODES`)

# the scale of each mode music21 gives a key (``key.Key.mode``), in semitones from the tonic
MODES = {
    "major": (0, 2, 4, 5, 7, 9, 11), "ionian": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10), "aeolian": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10), "phrygian": (0, 1, 3, 5, 7, 8, 10),
    "lydian": (0, 2, 4, 6, 7, 9, 11), "mixolydian": (0, 2, 4, 5, 7, 9, 10),
    "locrian": (0, 1, 3, 5, 6, 8, 10),
}
# scale degrees (0 = tonic) an accompaniment uses, and how readily: tonic and dominant first
DEGREE_PRIOR = {0: 0.3, 3: 0.2, 4: 0.3, 5: 0.1, 1: 0.1, 6: 0.1, 2: 0.0}
# a minor key's major V (its raised 7th): below the natural v's prior by more than the random
# term, so it is taken only where the melody plays the raised 7th (a tune that never does keeps
# its modal v)
HARMONIC_DOMINANT_PRIOR = 0.05


class Bar(NamedTuple):
    """One bar in quarter notes: its `downbeat` (before `start` in an anacrusis), the `start`
    and `end` of its notes, the `beat` length and the time signature's beat count `beats`
    (3 in 3/4, 2 in 6/8), which a short bar's length does not tell."""

    downbeat: float
    start: float
    end: float
    beat: float
    beats: int


@dataclass(frozen=True)
class Chord:
    """A triad over one span: `root` and `tones` are pitch classes (0 = C), `tones[0] == root`."""

    start: float
    end: float
    root: int
    tones: tuple[int, int, int]


def _is_major_or_minor(tones: tuple[int, int, int]) -> bool:
    """Whether a (root, third, fifth) triad has a perfect fifth and a major or minor third."""
    return (tones[2] - tones[0]) % 12 == 7 and (tones[1] - tones[0]) % 12 in (3, 4)


def triads(tonic: int, mode: str) -> list[tuple[tuple[int, int, int], float]]:
    """The chords an accompaniment in the key may take: (root, third, fifth) pitch classes and
    their prior, for each degree of `DEGREE_PRIOR` whose triad in the mode's scale is major or
    minor (a diminished one has no place in a plain accompaniment); in a minor key also the
    major V of the raised 7th (the harmonic minor's dominant) beside the natural v, so the
    melody's own 7th decides between them (an aeolian tune, written as a mode, stays modal)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    scale = MODES[mode]
    out = []
    for degree, prior in DEGREE_PRIOR.items():
        tones = tuple((tonic + scale[(degree + k) % 7]) % 12 for k in (0, 2, 4))
        if _is_major_or_minor(tones):
            out.append((tones, prior))
    if mode == "minor":
        dominant = (tonic + 7) % 12
        out.append(((dominant, (dominant + 4) % 12, (dominant + 7) % 12), HARMONIC_DOMINANT_PRIOR))
    return out


def spans(bars: Sequence[Bar], split_bars: bool) -> list[tuple[float, float]]:
    """(start, end) of each harmonic span: every bar, or each half of a bar of an even number
    of four or more beats when `split_bars` (two chords per bar, as quick harmonic rhythm has)."""
    out = []
    for bar in bars:
        middle = bar.downbeat + (bar.beats // 2) * bar.beat
        if split_bars and bar.beats >= 4 and bar.beats % 2 == 0 and bar.start < middle < bar.end:
            out += [(bar.start, middle), (middle, bar.end)]
        else:
            out.append((bar.start, bar.end))
    return out


def _span_melody(melody: Sequence[Event], start: float, end: float) -> tuple:
    """The melody's notes inside [start, end), clipped, relative to `start`: the span's content,
    equal for the spans of a repeated section."""
    return tuple((round(max(on, start) - start, 6), round(min(off, end) - start, 6), tuple(sorted(pitches)))
                 for on, off, pitches in melody if min(off, end) > max(on, start))


def _key_at(keys: Sequence[Key], offset: float) -> tuple[int, str]:
    """(tonic, mode) of the last key that holds from `offset` or before (the first key if none)."""
    held = [k for k in keys if k[0] <= offset + 1e-6] or [keys[0]]
    return held[-1][1], held[-1][2]


def harmonize(melody: Sequence[Event], span_list: Sequence[tuple[float, float]], keys: Sequence[Key],
              rng: np.random.Generator) -> list[Chord]:
    """One triad of `triads` of the key in force (`keys`, by offset) per span: the one
    maximising the melody's sounding time on its chord tones minus the time on other notes
    (quarter notes), plus its prior and a uniform [0, 0.2) draw (so ties never stand and equal
    tunes still vary with the seed). A span whose key, melody (`_span_melody`) and length equal
    an earlier span's gets the same chord: a written-out repeat is harmonised once."""
    chosen: dict[tuple, tuple[int, int, int]] = {}
    out = []
    for start, end in span_list:
        key = _key_at(keys, start)
        content = (key, round(end - start, 6), _span_melody(melody, start, end))
        if content not in chosen:
            candidates = triads(*key)
            time_on = np.zeros(12)
            for on, off, pitches in content[2]:
                for pitch in pitches:
                    time_on[pitch % 12] += off - on
            scores = [2 * sum(time_on[pc] for pc in tones) - time_on.sum() + prior + 0.2 * rng.random()
                      for tones, prior in candidates]
            chosen[content] = candidates[int(np.argmax(scores))][0]
        tones = chosen[content]
        out.append(Chord(start, end, tones[0], tones))
    return out


def _pitch_at_or_above(pitch_class: int, lowest: int) -> int:
    """The lowest MIDI note of `pitch_class` that is >= `lowest`."""
    return lowest + (pitch_class - lowest) % 12


def voicing(chord: Chord, lowest: int) -> list[int]:
    """The triad in close position from the first chord tone at or above `lowest` (three MIDI notes)."""
    first = min(_pitch_at_or_above(pc, lowest) for pc in chord.tones)
    return sorted({_pitch_at_or_above(pc, first) for pc in chord.tones})


def _onsets(start: float, end: float, downbeat: float, step: float) -> list[float]:
    """The grid points downbeat + k·step inside [start, end)."""
    first = downbeat + step * np.ceil((start - downbeat) / step - 1e-9)
    return [float(q) for q in np.arange(first, end - 1e-9, step)]


def _strong_beats(chord: Chord, bar: Bar) -> list[tuple[float, bool]]:
    """(onset, is strong) of each beat of the span: the odd beats of a bar (1 and 3 of four, 1 of
    two), or the first of three (a waltz or mazurka), counted from the bar's downbeat."""
    beats = _onsets(chord.start, chord.end, bar.downbeat, bar.beat)
    index = [round((q - bar.downbeat) / bar.beat) for q in beats]
    return [(q, k % bar.beats == 0 if bar.beats == 3 else k % 2 == 0) for q, k in zip(beats, index)]


def _held_to_next(onsets: list[float], end: float) -> list[tuple[float, float]]:
    """(onset, the next onset or `end`) for each onset: notes held legato to the next."""
    return list(zip(onsets, onsets[1:] + [end]))


def _strong_onsets(chord: Chord, bar: Bar) -> list[float]:
    """The span's strong beats, or its start where none falls inside it (a pickup's weak beat)."""
    return [q for q, strong in _strong_beats(chord, bar) if strong] or [chord.start]


def _block(chord: Chord, bar: Bar, bass: int, upper: list[int], step: float,
           played: int) -> tuple[list[Event], list[Event]]:
    """The chord on every beat, the bass on the strong beats held to the next."""
    basses = [(q, nxt, [bass]) for q, nxt in _held_to_next(_strong_onsets(chord, bar), chord.end)]
    return basses, [(q, min(q + bar.beat, chord.end), upper) for q, _ in _strong_beats(chord, bar)]


def _oompah(chord: Chord, bar: Bar, bass: int, upper: list[int], step: float,
            played: int) -> tuple[list[Event], list[Event]]:
    """Bass on the strong beats, short chords on the others; the bass plays the root and the
    fifth above it in turn, from the root at each change of chord (`played`: bass notes on this
    chord before this span)."""
    fifth = bass + (chord.tones[2] - chord.root) % 12
    basses, chords = [], []
    for q, strong in _strong_beats(chord, bar):
        if strong:
            basses.append((q, min(q + bar.beat, chord.end), [fifth if (played + len(basses)) % 2 else bass]))
        else:
            chords.append((q, min(q + 0.6 * bar.beat, chord.end), upper))
    return basses, chords


def _arpeggio(chord: Chord, bar: Bar, bass: int, upper: list[int], step: float,
              played: int) -> tuple[list[Event], list[Event]]:
    """From the bass on each strong beat, the chord tones up (two octaves at most) and back, one
    per `step`, each held (the pedal down) to the end of the span; the bass notes, held to the
    next strong beat, are the bass line (a root on 1 and 3 of four, as a bass player's)."""
    rising = [bass] + [p for p in range(bass + 1, bass + 25) if p % 12 in chord.tones]
    figure = rising + rising[-2:0:-1]
    basses, notes = [], []
    for q, nxt in _held_to_next(_strong_onsets(chord, bar), chord.end):
        onsets = _onsets(q, nxt, bar.downbeat, step)
        basses.append((q, nxt, [bass]))
        first = 0 if onsets and onsets[0] <= q + 1e-6 else 1  # the figure's first note is the bass, played
        notes += [(o, chord.end, [figure[(i + first) % len(figure)]]) for i, o in enumerate(onsets) if i + first]
    return basses, notes


def _alberti(chord: Chord, bar: Bar, bass: int, upper: list[int], step: float,
             played: int) -> tuple[list[Event], list[Event]]:
    """Low-high-middle-high of the voicing, one per `step`, over the bass held through the span."""
    figure = (upper[0], upper[-1], upper[1], upper[-1])
    notes = [(q, min(q + step, chord.end), [figure[i % 4]])
             for i, q in enumerate(_onsets(chord.start, chord.end, bar.downbeat, step))]
    return [(chord.start, chord.end, [bass])], notes


def _walking(chord: Chord, bar: Bar, bass: int, upper: list[int], step: float,
             played: int) -> tuple[list[Event], list[Event]]:
    """A bass on every beat, each held to the next (legato): root, third, fifth, third above the
    root in turn from each change of chord; the chord held on the strong beats above it."""
    line = [bass + (tone - chord.root) % 12 for tone in chord.tones + chord.tones[1:2]]
    beats = [q for q, _ in _strong_beats(chord, bar)]
    beats = beats if beats and beats[0] <= chord.start + 1e-6 else [chord.start] + beats  # a pickup off the beat
    basses = [(q, nxt, [line[(played + i) % 4]]) for i, (q, nxt) in enumerate(_held_to_next(beats, chord.end))]
    return basses, [(q, nxt, upper) for q, nxt in _held_to_next(_strong_onsets(chord, bar), chord.end)]


def _sustained(chord: Chord, bar: Bar, bass: int, upper: list[int], step: float,
               played: int) -> tuple[list[Event], list[Event]]:
    """The chord and its bass held through the span."""
    return [(chord.start, chord.end, [bass])], [(chord.start, chord.end, upper)]


# each texture: (chord, its bar, bass note, chord voicing, figure step, bass notes played on this
# chord before the span) → (bass events, chord events)
TEXTURES = {"block": _block, "oompah": _oompah, "arpeggio": _arpeggio, "alberti": _alberti,
            "walking": _walking, "sustained": _sustained}


def _bar_of(chord: Chord, bars: Sequence[Bar]) -> Bar:
    """The bar the chord starts in (a bar of the chord's length, beats of one quarter, if none)."""
    return next((b for b in bars if b.start <= chord.start < b.end),
                Bar(chord.start, chord.start, chord.end, 1.0, max(1, round(chord.end - chord.start))))


def realize(chords: Sequence[Chord], bars: Sequence[Bar], texture: str, bass_lowest: int, chord_lowest: int,
            step: float = 0.5) -> tuple[list[Event], list[Event]]:
    """The chords in one texture of `TEXTURES`: (bass events, chord events).

    bass_lowest / chord_lowest: the lowest MIDI note of the bass line and of the chord
    voicings; step: quarter notes between the notes of an arpeggio or Alberti figure. The bass
    events are the line a bass player would take (the root, or a figure from it that restarts
    at each change of chord).
    """
    if texture not in TEXTURES:
        raise ValueError(f"unknown texture {texture!r}; choose one of {', '.join(TEXTURES)}")
    basses, uppers = [], []
    played, previous = 0, None
    for chord in chords:
        played = played if chord.tones == previous else 0
        bass_events, chord_events = TEXTURES[texture](chord, _bar_of(chord, bars),
                                                      _pitch_at_or_above(chord.root, bass_lowest),
                                                      voicing(chord, chord_lowest), step, played)
        basses += bass_events
        uppers += chord_events
        played, previous = played + len(bass_events), chord.tones
    return basses, uppers


def in_quarter_beats(bar: Bar) -> Bar:
    """A bar of half-note beats (2/2, 3/2) as one of quarter-note beats (4/4, 6/4): the pulse
    a cut-time reel's accompaniment plays (bass on 1 and 3, chords on 2 and 4); other bars
    (dotted beats too: 6/4 stays in two) as they are."""
    if abs(bar.beat - 2.0) > 1e-6:
        return bar
    return bar._replace(beat=1.0, beats=bar.beats * 2)


def accompaniment(melody: Sequence[Event], bars: Sequence[Bar], keys: Sequence[Key],
                  rng: np.random.Generator, textures: Sequence[str] = tuple(TEXTURES),
                  ) -> tuple[list[Event], list[Event], str]:
    """Harmonize and realize a tune in its `keys` (`Key`s by offset, the first from the start)
    on its bars (half-note beats played as quarters, `in_quarter_beats`) with settings drawn
    from `rng`: (bass events, chord events, texture name, one of `textures`). The bass register
    starts between E1 and E2 (MIDI 28–40), the chords' lowest note between C3 and G3 (48–55);
    the voicings reach up into the melody's register (the presets keep the melody at G3 and up)."""
    bars = [in_quarter_beats(bar) for bar in bars]
    texture = str(rng.choice(list(textures)))
    chords = harmonize(melody, spans(bars, split_bars=bool(rng.random() < 0.4)), keys, rng)
    step = float(rng.choice([0.5, 0.5, 0.25]))
    bass_events, chord_events = realize(chords, bars, texture, int(rng.integers(28, 41)),
                                        int(rng.integers(48, 56)), step)
    return bass_events, chord_events, texture
