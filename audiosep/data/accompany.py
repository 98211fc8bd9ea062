"""A piano accompaniment generated for a one-part tune: harmony from the melody, then a texture.

The music21 corpus holds ~1000 one-part fiddle tunes (``ryansMammoth``) and few pieces whose
keyboard writing is not a chorale's: the two-part training scores give the mask network block
chords under a melody and little else, while real piano parts walk, arpeggiate and alternate
bass and chord (rags, waltzes, mazurkas, songs). The ``*_tunes`` presets of `synth` play such a
tune on the melody instrument and this accompaniment on the piano (or its bass line on a bass).

Two steps, both functions of the melody and a seeded generator:

- `harmonize`: one diatonic triad of the tune's key per span (a bar or half a bar), the one
  whose pitch classes cover most of the melody's sounding time there (a tie-free score: a small
  prior per degree and a random term), so strong beats fall on chord tones as in a real
  accompaniment.
- `realize`: the chords played in one texture drawn per tune — block chords on the beats,
  oom-pah (bass on the strong beats, chords between; a waltz in triple metre), broken-chord
  arpeggios over two octaves, an Alberti figure, or sustained chords — in a bass and a chord
  register drawn per tune.

Positions and lengths are in quarter notes (music21 offsets), pitches MIDI numbers; events are
``(start, end, [pitches])`` as `synth._part_events` gives them, so the rest of the synth path
(tempo map, instruments, augmentation) is shared.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Event = tuple[float, float, list[int]]
Bar = tuple[float, float, float, float]  # (downbeat, start, end, beat length), as synth._bars

MAJOR, MINOR = (0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 11)  # the minor scale with its raised 7th
# scale degrees (0 = tonic) an accompaniment uses, and how readily: tonic and dominant first
DEGREE_PRIOR = {0: 0.3, 3: 0.2, 4: 0.3, 5: 0.1, 1: 0.1, 2: 0.0}


@dataclass(frozen=True)
class Chord:
    """A triad over one span: `root` and `tones` are pitch classes (0 = C), `tones[0] == root`."""

    start: float
    end: float
    root: int
    tones: tuple[int, int, int]


def triads(tonic: int, minor: bool) -> dict[int, tuple[int, int, int]]:
    """The triad on each degree of `DEGREE_PRIOR` in the key: {degree: (root, third, fifth) pitch classes}."""
    scale = MINOR if minor else MAJOR
    return {d: tuple((tonic + scale[(d + k) % 7]) % 12 for k in (0, 2, 4)) for d in DEGREE_PRIOR}


def spans(bars: Sequence[Bar], split_bars: bool) -> list[tuple[float, float]]:
    """(start, end) of each harmonic span: every bar, or each half of a bar of four or more
    beats when `split_bars` (two chords per bar, as quick harmonic rhythm has)."""
    out = []
    for downbeat, start, end, beat in bars:
        n_beats = round((end - downbeat) / beat)
        if split_bars and n_beats >= 4 and n_beats % 2 == 0:
            middle = downbeat + (n_beats // 2) * beat
            out += [(start, middle), (middle, end)] if middle > start else [(start, end)]
        else:
            out.append((start, end))
    return out


def harmonize(melody: Sequence[Event], span_list: Sequence[tuple[float, float]], tonic: int, minor: bool,
              rng: np.random.Generator) -> list[Chord]:
    """One triad per span: the degree maximising the melody's sounding time on its chord tones
    minus the time on other notes (quarter notes), plus `DEGREE_PRIOR` and a uniform [0, 0.2)
    draw (so ties never stand and equal tunes still vary with the seed)."""
    chords = triads(tonic, minor)
    out = []
    for start, end in span_list:
        time_on = np.zeros(12)
        for on, off, pitches in melody:
            overlap = min(off, end) - max(on, start)
            if overlap > 0:
                for pitch in pitches:
                    time_on[pitch % 12] += overlap
        total = time_on.sum()
        scores = {d: 2 * sum(time_on[pc] for pc in tones) - total + DEGREE_PRIOR[d] + 0.2 * rng.random()
                  for d, tones in chords.items()}
        best = max(scores, key=scores.get)
        out.append(Chord(start, end, chords[best][0], chords[best]))
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
    two), or the first of three (a waltz or mazurka)."""
    downbeat, _, end, beat = bar
    triple = round((end - downbeat) / beat) == 3
    beats = _onsets(chord.start, chord.end, downbeat, beat)
    return [(q, round((q - downbeat) / beat) == 0 if triple else round((q - downbeat) / beat) % 2 == 0)
            for q in beats]


def _block(chord: Chord, bar: Bar, bass: int, upper: list[int], step: float,
            played: int) -> tuple[list[Event], list[Event]]:
    """The chord on every beat, the bass on the strong beats held to the next."""
    beats = _strong_beats(chord, bar)
    strong = [q for q, is_strong in beats if is_strong] or [chord.start]
    basses = [(q, nxt, [bass]) for q, nxt in zip(strong, strong[1:] + [chord.end])]
    return basses, [(q, min(q + bar[3], chord.end), upper) for q, _ in beats]


def _oompah(chord: Chord, bar: Bar, bass: int, upper: list[int], step: float,
            played: int) -> tuple[list[Event], list[Event]]:
    """Bass on the strong beats, short chords on the others; the bass plays the root and the
    fifth above it in turn, counted over the piece (`played`: bass notes before this span)."""
    fifth = bass + (chord.tones[2] - chord.root) % 12
    basses, chords = [], []
    for q, strong in _strong_beats(chord, bar):
        if strong:
            basses.append((q, min(q + bar[3], chord.end), [fifth if (played + len(basses)) % 2 else bass]))
        else:
            chords.append((q, min(q + 0.6 * bar[3], chord.end), upper))
    return basses, chords


def _arpeggio(chord: Chord, bar: Bar, bass: int, upper: list[int], step: float,
            played: int) -> tuple[list[Event], list[Event]]:
    """The chord tones from the bass up two octaves and back, one per `step`, each held (the
    pedal down) to the end of the span; the bass note of each turn is the bass line."""
    rising = [bass] + [p for p in range(bass + 1, bass + 25) if p % 12 in chord.tones]
    figure = rising + rising[-2:0:-1]
    notes = [(q, chord.end, [figure[i % len(figure)]])
             for i, q in enumerate(_onsets(chord.start, chord.end, bar[0], step))]
    return [n for n in notes if n[2][0] == bass], [n for n in notes if n[2][0] != bass]


def _alberti(chord: Chord, bar: Bar, bass: int, upper: list[int], step: float,
            played: int) -> tuple[list[Event], list[Event]]:
    """Low-high-middle-high of the voicing, one per `step`, over the bass held through the span."""
    figure = (upper[0], upper[-1], upper[1], upper[-1])
    notes = [(q, min(q + step, chord.end), [figure[i % 4]])
             for i, q in enumerate(_onsets(chord.start, chord.end, bar[0], step))]
    return [(chord.start, chord.end, [bass])], notes


def _sustained(chord: Chord, bar: Bar, bass: int, upper: list[int], step: float,
            played: int) -> tuple[list[Event], list[Event]]:
    """The chord and its bass held through the span."""
    return [(chord.start, chord.end, [bass])], [(chord.start, chord.end, upper)]


# each texture: (chord, its bar, bass note, chord voicing, figure step, bass notes played before)
# → (bass events, chord events)
TEXTURES = {"block": _block, "oompah": _oompah, "arpeggio": _arpeggio, "alberti": _alberti, "sustained": _sustained}


def realize(chords: Sequence[Chord], bars: Sequence[Bar], texture: str, bass_lowest: int, chord_lowest: int,
            step: float = 0.5) -> tuple[list[Event], list[Event]]:
    """The chords in one texture of `TEXTURES`: (bass events, chord events).

    bass_lowest / chord_lowest: the lowest MIDI note of the bass line and of the chord
    voicings; step: quarter notes between the notes of an arpeggio or Alberti figure. The bass
    events are the line a bass player would take (the root, or root and fifth).
    """
    if texture not in TEXTURES:
        raise ValueError(f"unknown texture {texture!r}; choose one of {', '.join(TEXTURES)}")
    basses, uppers = [], []
    for chord in chords:
        bar = next((b for b in bars if b[1] <= chord.start < b[2]), (chord.start, chord.start, chord.end, 1.0))
        bass_events, chord_events = TEXTURES[texture](chord, bar, _pitch_at_or_above(chord.root, bass_lowest),
                                                      voicing(chord, chord_lowest), step, len(basses))
        basses += bass_events
        uppers += chord_events
    return basses, uppers


def accompaniment(melody: Sequence[Event], bars: Sequence[Bar], tonic: int, minor: bool,
                  rng: np.random.Generator, textures: Sequence[str] = tuple(TEXTURES),
                  ) -> tuple[list[Event], list[Event], str]:
    """Harmonize and realize a tune with settings drawn from `rng`: (bass events, chord events,
    texture name, one of `textures`). The bass register starts between E1 and E2 (MIDI 28–40),
    the chords' lowest note between C3 and G3 (48–55); the voicings reach up into the melody's
    register (the presets keep the melody at G3 and up)."""
    texture = str(rng.choice(list(textures)))
    chords = harmonize(melody, spans(bars, split_bars=bool(rng.random() < 0.4)), tonic, minor, rng)
    step = float(rng.choice([0.5, 0.5, 0.25]))
    bass_events, chord_events = realize(chords, bars, texture, int(rng.integers(28, 41)),
                                        int(rng.integers(48, 56)), step)
    return bass_events, chord_events, texture
