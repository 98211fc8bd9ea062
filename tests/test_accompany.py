import numpy as np
import pytest
from music21 import corpus

from audiosep.data import accompany, synth
from audiosep.data.augment import Augmentation

BARS_44 = [(4.0 * b, 4.0 * b, 4.0 * b + 4, 1.0) for b in range(4)]  # four bars of 4/4
BARS_34 = [(3.0 * b, 3.0 * b, 3.0 * b + 3, 1.0) for b in range(2)]  # two bars of 3/4


def test_triads_are_the_keys_diatonic_chords():
    c_major = accompany.triads(0, minor=False)
    assert c_major[0] == (0, 4, 7) and c_major[3] == (5, 9, 0) and c_major[4] == (7, 11, 2) and c_major[5] == (9, 0, 4)
    a_minor = accompany.triads(9, minor=True)
    assert a_minor[0] == (9, 0, 4) and a_minor[3] == (2, 5, 9)
    assert a_minor[4] == (4, 8, 11)  # the dominant is major: the minor scale's raised seventh


def test_harmonize_follows_the_melody():
    # bar 1 arpeggiates C major, bar 2 G major, bar 3 F major, bar 4 A minor (in C major)
    notes = [[60, 64, 67, 72], [67, 71, 74, 79], [65, 69, 72, 77], [69, 72, 76, 81]]
    melody = [(4.0 * b + k, 4.0 * b + k + 1, [p]) for b, bar in enumerate(notes) for k, p in enumerate(bar)]
    for seed in range(5):
        chords = accompany.harmonize(melody, accompany.spans(BARS_44, split_bars=False), 0, False,
                                     np.random.default_rng(seed))
        assert [c.tones for c in chords] == [(0, 4, 7), (7, 11, 2), (5, 9, 0), (9, 0, 4)]
        assert [(c.start, c.end) for c in chords] == [(0, 4), (4, 8), (8, 12), (12, 16)]


def test_spans_split_even_bars_only_and_keep_pickups():
    bars = [(-1.0, 0.0, 1.0, 1.0), (1.0, 1.0, 5.0, 1.0), (5.0, 5.0, 8.0, 1.0)]  # pickup, 4/4, 3/4
    assert accompany.spans(bars, split_bars=False) == [(0.0, 1.0), (1.0, 5.0), (5.0, 8.0)]
    assert accompany.spans(bars, split_bars=True) == [(0.0, 1.0), (1.0, 3.0), (3.0, 5.0), (5.0, 8.0)]


def test_voicing_is_close_position_from_the_lowest_note():
    chord = accompany.Chord(0, 4, 7, (7, 11, 2))  # G major
    assert accompany.voicing(chord, 48) == [50, 55, 59]  # D3 G3 B3: the first chord tone from C3 up
    assert accompany.voicing(chord, 55) == [55, 59, 62]


@pytest.mark.parametrize("texture", list(accompany.TEXTURES))
def test_every_texture_plays_chord_tones_inside_each_span(texture):
    chords = [accompany.Chord(0, 4, 0, (0, 4, 7)), accompany.Chord(4, 8, 7, (7, 11, 2))]
    bass, upper = accompany.realize(chords, BARS_44[:2], texture, bass_lowest=33, chord_lowest=50, step=0.5)
    assert bass and upper
    for events, low, high in ((bass, 33, 33 + 12 + 7), (upper, 34, 33 + 24)):
        for start, end, pitches in events:
            chord = chords[int(start // 4)]
            assert chord.start <= start < end <= chord.end
            assert all(p % 12 in chord.tones and low <= p <= high + 24 for p in pitches)
            assert start * 2 == round(start * 2)  # on the eighth-note grid
    assert min(p for _, _, ps in bass for p in ps) < min(p for _, _, ps in upper for p in ps)


def test_oompah_alternates_bass_and_chords_and_waltzes_in_three():
    chord = accompany.Chord(0, 4, 0, (0, 4, 7))
    bass, upper = accompany.realize([chord], BARS_44[:1], "oompah", 36, 52)
    assert [(s, p) for s, _, p in bass] == [(0.0, [36]), (2.0, [43])]  # root, then the fifth
    assert [s for s, _, _ in upper] == [1.0, 3.0] and upper[0][2] == [52, 55, 60]
    bass, upper = accompany.realize([accompany.Chord(0, 3, 0, (0, 4, 7))], BARS_34[:1], "oompah", 36, 52)
    assert [s for s, _, _ in bass] == [0.0] and [s for s, _, _ in upper] == [1.0, 2.0]
    # in 2/4 one bass note per bar: root and fifth alternate over the bars, whatever the chord
    bars_24 = [(2.0 * b, 2.0 * b, 2.0 * b + 2, 1.0) for b in range(3)]
    chords = [accompany.Chord(0, 2, 0, (0, 4, 7)), accompany.Chord(2, 4, 0, (0, 4, 7)), accompany.Chord(4, 6, 7, (7, 11, 2))]
    bass, _ = accompany.realize(chords, bars_24, "oompah", 36, 52)
    assert [p for _, _, p in bass] == [[36], [43], [43]]  # C, G (C's fifth), G (G's root)


def test_arpeggio_climbs_two_octaves_from_the_bass():
    chord = accompany.Chord(0, 4, 0, (0, 4, 7))
    bass, upper = accompany.realize([chord], BARS_44[:1], "arpeggio", 36, 52, step=0.5)
    pitches = [p for _, _, (p,) in sorted(bass + upper)]
    assert pitches == [36, 40, 43, 48, 52, 55, 60, 55]  # up to the root two octaves up, then back
    assert all(end == 4 for _, end, _ in upper)  # held to the end of the span (the pedal)


def test_accompaniment_is_deterministic_by_seed_and_varies():
    melody = [(float(q), q + 1.0, [60 + 2 * (q % 4)]) for q in range(16)]
    one = accompany.accompaniment(melody, BARS_44, 0, False, np.random.default_rng(3))
    assert one == accompany.accompaniment(melody, BARS_44, 0, False, np.random.default_rng(3))
    textures = {accompany.accompaniment(melody, BARS_44, 0, False, np.random.default_rng(s))[2] for s in range(40)}
    assert textures == set(accompany.TEXTURES)


def test_unknown_texture_is_refused():
    with pytest.raises(ValueError, match="unknown texture"):
        accompany.realize([], BARS_44, "tango", 36, 52)


def test_tune_presets_take_one_part_tunes_and_no_analyses():
    tunes = synth.list_pieces("piano_violin_tunes")
    assert tunes and all(p.parts == 1 for p in tunes)
    assert not any(p.path.endswith(".rntxt") for p in tunes + synth.list_pieces("piano_violin"))
    assert {p.path for p in tunes} == {p.path for p in synth.list_pieces("drums_bass_tunes")}
    assert not any(p.parts == 1 for p in synth.list_pieces("piano_violin"))


def test_tune_arrangements_put_the_melody_on_the_violin_and_the_accompaniment_below():
    path = next(p.path for p in synth.list_pieces("piano_violin_tunes", composers=["ryansMammoth"]))
    score = corpus.parse(path)
    written = sorted(p.midi for n in score.expandRepeats().parts[0].stripTies().flatten().notes for p in n.pitches)
    parts = synth._arrange_tune_piano_violin(score, np.random.default_rng(0), Augmentation())
    violin = sorted(n.pitch for n in parts["violin"].notes)
    shift = violin[0] - written[0]
    assert shift % 12 == 0 and violin == [p + shift for p in written] and violin[0] >= synth.VIOLIN_LOWEST
    assert parts["piano"].program == synth.GM_PIANO and parts["piano"].name.endswith("accompaniment")
    assert max(n.pitch for n in parts["piano"].notes) < 55 + 24 and len(parts["piano"].notes) > 8
    end = max(n.end for n in parts["violin"].notes)
    assert max(n.end for n in parts["piano"].notes) <= end + 1e-6  # the same tempo map
    bass = synth._arrange_tune_drums_bass(score, np.random.default_rng(0), Augmentation())
    assert bass["drums"].is_drum and min(n.pitch for n in bass["bass"].notes) >= synth.BASS_LOWEST
    assert bass["bass"].name.split()[3] in synth.BASS_TEXTURES  # "bass of a <texture> accompaniment"
    ends = [max(n.end for n in bass[s].notes) for s in ("bass", "drums")]
    assert abs(ends[0] - ends[1]) < 2.0  # the drums play through the repeats too


def test_synth_cli_offers_every_preset():
    from audiosep.cli import build_parser

    parser = build_parser()
    for preset in synth.PRESETS:
        assert parser.parse_args(["synth", preset, "--list"]).preset == preset
