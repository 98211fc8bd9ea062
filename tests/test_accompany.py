import numpy as np
import pytest
from music21 import converter, corpus, note, stream

from audiosep.data import accompany, synth
from audiosep.data.accompany import Bar, Chord
from audiosep.data.augment import Augmentation

BARS_44 = [Bar(4.0 * b, 4.0 * b, 4.0 * b + 4, 1.0, 4) for b in range(4)]  # four bars of 4/4
BARS_34 = [Bar(3.0 * b, 3.0 * b, 3.0 * b + 3, 1.0, 3) for b in range(2)]  # two bars of 3/4
# a dorian tune with a pickup, a short last bar before the repeat and the B section's upbeat
ABC_TUNE = """X:1
T:test
M:4/4
L:1/4
K:Ador
E|:A B c d|e4|A B c d|e3:|
e|a g f e|d4|c B A G|A3|]
"""


def _tones(mode_triads):
    return {tones for tones, _ in mode_triads}


def test_triads_are_the_keys_major_and_minor_chords():
    c, d, e, f, g, a = (0, 4, 7), (2, 5, 9), (4, 7, 11), (5, 9, 0), (7, 11, 2), (9, 0, 4)
    assert _tones(accompany.triads(0, "major")) == {c, d, e, f, g, a}  # no diminished vii
    # A minor: the natural minor's chords and the harmonic minor's major V; no augmented III
    assert _tones(accompany.triads(9, "minor")) == {a, c, d, e, f, g, (4, 8, 11)}
    # A dorian: the major IV (D F# A) and no diminished vi (F# A C)
    assert _tones(accompany.triads(9, "dorian")) == {a, (11, 2, 6), c, (2, 6, 9), e, g}
    assert all(accompany._is_major_or_minor(t) for m in accompany.MODES for t in _tones(accompany.triads(2, m)))
    with pytest.raises(ValueError, match="unknown mode"):
        accompany.triads(0, "hypodorian")


def test_harmonize_follows_the_melody():
    # bar 1 arpeggiates C major, bar 2 G major, bar 3 F major, bar 4 A minor (in C major)
    notes = [[60, 64, 67, 72], [67, 71, 74, 79], [65, 69, 72, 77], [69, 72, 76, 81]]
    melody = [(4.0 * b + k, 4.0 * b + k + 1, [p]) for b, bar in enumerate(notes) for k, p in enumerate(bar)]
    for seed in range(5):
        chords = accompany.harmonize(melody, accompany.spans(BARS_44, split_bars=False), [(0.0, 0, "major")],
                                     np.random.default_rng(seed))
        assert [c.tones for c in chords] == [(0, 4, 7), (7, 11, 2), (5, 9, 0), (9, 0, 4)]
        assert [(c.start, c.end) for c in chords] == [(0, 4), (4, 8), (8, 12), (12, 16)]


def test_harmonize_takes_the_minor_dominant_the_melody_plays():
    spans = accompany.spans(BARS_44[:1], split_bars=False)
    for seed in range(5):
        rng = np.random.default_rng(seed)
        raised = [(float(k), k + 1.0, [p]) for k, p in enumerate([64, 68, 71, 68])]  # E G# B G#
        natural = [(float(k), k + 1.0, [p]) for k, p in enumerate([64, 67, 71, 67])]  # E G B G
        assert accompany.harmonize(raised, spans, [(0.0, 9, "minor")], rng)[0].tones == (4, 8, 11)
        assert accompany.harmonize(natural, spans, [(0.0, 9, "minor")], rng)[0].tones == (4, 7, 11)
        neither = [(float(k), k + 1.0, [p]) for k, p in enumerate([64, 71, 64, 71])]  # E B: no 7th at all
        assert accompany.harmonize(neither, spans, [(0.0, 9, "minor")], rng)[0].tones == (4, 7, 11)


def test_harmonize_follows_a_change_of_key():
    melody = [(float(q), q + 1.0, [p]) for q, p in enumerate([67, 71, 74, 71, 69, 73, 76, 73])]  # G B D B, A C# E C#
    bars = BARS_44[:2]
    for seed in range(5):
        in_g = accompany.harmonize(melody, accompany.spans(bars, False), [(0.0, 7, "major")],
                                   np.random.default_rng(seed))
        to_a = accompany.harmonize(melody, accompany.spans(bars, False), [(0.0, 7, "major"), (4.0, 9, "major")],
                                   np.random.default_rng(seed))
        assert in_g[0].tones == to_a[0].tones == (7, 11, 2)
        assert to_a[1].tones == (9, 1, 4)  # A major, the new tonic
        assert in_g[1].tones == (9, 0, 4)  # in G major the A minor triad, the C# against it


def test_a_repeated_section_is_harmonised_as_it_was_the_first_time():
    phrase = [(0.0, 4.0, [67]), (4.0, 6.0, [62]), (6.0, 8.0, [67])]  # G (C or G, equally likely), then D G
    melody = phrase + [(on + 8, off + 8, p) for on, off, p in phrase]
    bars = [Bar(4.0 * b, 4.0 * b, 4.0 * b + 4, 1.0, 4) for b in range(4)]
    firsts = set()
    for seed in range(20):
        chords = accompany.harmonize(melody, accompany.spans(bars, False), [(0.0, 0, "major")],
                                     np.random.default_rng(seed))
        assert chords[2].tones == chords[0].tones and chords[3].tones == chords[1].tones
        firsts.add(chords[0].tones)
    assert len(firsts) > 1  # the choice does vary with the seed: the equality is not a coincidence


def test_spans_split_even_bars_only_and_keep_pickups():
    bars = [Bar(-3.0, 0.0, 1.0, 1.0, 4), Bar(1.0, 1.0, 5.0, 1.0, 4), Bar(5.0, 5.0, 8.0, 1.0, 3),
            Bar(8.0, 8.0, 9.0, 1.0, 4)]  # pickup, 4/4, 3/4, a short bar of one beat
    assert accompany.spans(bars, split_bars=False) == [(0.0, 1.0), (1.0, 5.0), (5.0, 8.0), (8.0, 9.0)]
    assert accompany.spans(bars, split_bars=True) == [(0.0, 1.0), (1.0, 3.0), (3.0, 5.0), (5.0, 8.0), (8.0, 9.0)]


def test_voicing_is_close_position_from_the_lowest_note():
    chord = Chord(0, 4, 7, (7, 11, 2))  # G major
    assert accompany.voicing(chord, 48) == [50, 55, 59]  # D3 G3 B3: the first chord tone from C3 up
    assert accompany.voicing(chord, 55) == [55, 59, 62]


@pytest.mark.parametrize("texture", list(accompany.TEXTURES))
def test_every_texture_plays_chord_tones_inside_each_span(texture):
    chords = [Chord(0, 4, 0, (0, 4, 7)), Chord(4, 8, 7, (7, 11, 2))]
    bass, upper = accompany.realize(chords, BARS_44[:2], texture, bass_lowest=33, chord_lowest=50, step=0.5)
    assert bass and upper
    # the bass from its root (C 36, G 43) up a fifth at most; chords from D3 up, or the arpeggio
    # from the bass's third up two octaves
    for events, low, high in ((bass, 36, 43 + 7), (upper, 36 + 3, 43 + 24)):
        for start, end, pitches in events:
            chord = chords[int(start // 4)]
            assert chord.start <= start < end <= chord.end
            assert all(p % 12 in chord.tones and low <= p <= high for p in pitches)
            assert start * 2 == round(start * 2)  # on the eighth-note grid
    assert min(p for _, _, ps in bass for p in ps) < min(p for _, _, ps in upper for p in ps)


@pytest.mark.parametrize("texture", synth.BASS_TEXTURES)
def test_bass_textures_play_a_legato_line(texture):
    chords = [Chord(0, 2, 0, (0, 4, 7)), Chord(2, 4, 5, (5, 9, 0)), Chord(4, 8, 7, (7, 11, 2))]
    bass, _ = accompany.realize(chords, BARS_44[:2], texture, 36, 52, step=0.25)
    bass = sorted(bass)
    assert bass[0][0] == 0 and bass[-1][1] == 8 and len(bass) >= 4  # a note on each strong beat at least
    assert all(end == nxt for (_, end, _), (nxt, _, _) in zip(bass, bass[1:]))  # one note at a time, no gaps


def test_oompah_alternates_bass_and_chords_and_waltzes_in_three():
    bass, upper = accompany.realize([Chord(0, 4, 0, (0, 4, 7))], BARS_44[:1], "oompah", 36, 52)
    assert [(s, p) for s, _, p in bass] == [(0.0, [36]), (2.0, [43])]  # root, then the fifth
    assert [s for s, _, _ in upper] == [1.0, 3.0] and upper[0][2] == [52, 55, 60]
    bass, upper = accompany.realize([Chord(0, 3, 0, (0, 4, 7))], BARS_34[:1], "oompah", 36, 52)
    assert [s for s, _, _ in bass] == [0.0] and [s for s, _, _ in upper] == [1.0, 2.0]
    # three beats of a 4/4 bar (a section's short last bar) are no waltz: bass on 1 and 3
    bass, upper = accompany.realize([Chord(0, 3, 0, (0, 4, 7))], [Bar(0.0, 0.0, 3.0, 1.0, 4)], "oompah", 36, 52)
    assert [s for s, _, _ in bass] == [0.0, 2.0] and [s for s, _, _ in upper] == [1.0]
    # in 2/4 one bass note per bar: root and fifth alternate while the chord stays, and a new
    # chord starts from its root
    bars_24 = [Bar(2.0 * b, 2.0 * b, 2.0 * b + 2, 1.0, 2) for b in range(4)]
    c, g = (0, 4, 7), (7, 11, 2)
    chords = [Chord(0, 2, 0, c), Chord(2, 4, 7, g), Chord(4, 6, 7, g), Chord(6, 8, 0, c)]
    bass, _ = accompany.realize(chords, bars_24, "oompah", 36, 52)
    assert [p for _, _, p in bass] == [[36], [43], [50], [36]]  # C, G, D (G's fifth), C


def test_arpeggio_climbs_from_the_bass_on_each_strong_beat():
    chord = Chord(0, 4, 0, (0, 4, 7))
    bass, upper = accompany.realize([chord], BARS_44[:1], "arpeggio", 36, 52, step=0.5)
    assert bass == [(0.0, 2.0, [36]), (2.0, 4.0, [36])]  # the root on 1 and 3, held to the next
    assert [p for _, _, (p,) in sorted(bass + upper)] == [36, 40, 43, 48] * 2
    assert all(end == 4 for _, end, _ in upper)  # held to the end of the span (the pedal)
    bass, upper = accompany.realize([chord], BARS_44[:1], "arpeggio", 36, 52, step=0.25)
    assert [p for _, _, (p,) in sorted(bass + upper)] == [36, 40, 43, 48, 52, 55, 60, 55] * 2


def test_walking_bass_moves_on_every_beat_from_each_root():
    chords = [Chord(0, 4, 0, (0, 4, 7)), Chord(4, 6, 7, (7, 11, 2)), Chord(6, 8, 7, (7, 11, 2))]
    bass, upper = accompany.realize(chords, BARS_44[:2], "walking", 36, 52)
    assert [(s, e, p) for s, e, (p,) in bass] == [(0.0, 1.0, 36), (1.0, 2.0, 40), (2.0, 3.0, 43), (3.0, 4.0, 40),
                                                   (4.0, 5.0, 43), (5.0, 6.0, 47), (6.0, 7.0, 50), (7.0, 8.0, 47)]
    assert [(s, e) for s, e, _ in upper] == [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0), (6.0, 8.0)]
    # an upbeat of half a beat: the root from its start
    bass, _ = accompany.realize([Chord(3.5, 4, 0, (0, 4, 7))], [Bar(0.0, 3.5, 4.0, 1.0, 4)], "walking", 36, 52)
    assert bass == [(3.5, 4.0, [36])]


def _abc(body: str, metre: str = "4/4", key: str = "Ador"):
    return converter.parse(f"X:1\nT:test\nM:{metre}\nL:1/4\nK:{key}\n{body}\n", format="abc")


def test_bars_find_the_upbeats_of_a_tunes_sections():
    score = converter.parse(ABC_TUNE, format="abc")
    bars = synth._bars(synth._as_played(score))
    assert bars[0] == Bar(-3.0, 0.0, 1.0, 1.0, 4)  # the opening pickup
    assert bars[4] == Bar(13.0, 13.0, 16.0, 1.0, 4)  # the A section's short last bar starts on its downbeat
    assert bars[9] == Bar(28.0, 31.0, 32.0, 1.0, 4)  # the B section's upbeat, after the repeat
    assert bars[10].start == bars[10].downbeat == 32.0 and len(bars) == 14
    assert synth._keys(score) == [(0.0, 9, "dorian")]  # the written K: field, with its mode


def test_bars_find_upbeats_after_a_full_bar_and_keep_first_endings_on_the_downbeat():
    bars = synth._bars(_abc("D|:G A B c|d4|G A B c|d4|\nd/2|B A G A|B4|c B A G|[1 G3 :|[2 G2 z2|]", key="G"))
    assert bars[5] == Bar(13.5, 17.0, 17.5, 1.0, 4)  # half a beat before a full bar: an upbeat
    assert bars[9] == Bar(29.5, 29.5, 32.5, 1.0, 4) and bars[10].start == bars[10].downbeat  # the endings
    # the A section's short last bar and the B section's upbeat in 2/2 and 6/8
    cut = synth._bars(_abc("D|:G A B c|d4|G A B c|d3:|\nd|e d c B|A4|]", metre="2/2", key="G"))
    assert cut[4] == Bar(13.0, 13.0, 16.0, 2.0, 2) and cut[5] == Bar(13.0, 16.0, 17.0, 2.0, 2)
    jig = synth._bars(_abc("D/2|:G/2A/2B/2 c/2d/2e/2|d3/2 B3/2|G/2A/2B/2 c/2d/2e/2|d3:|\nd/2|g3/2 e3/2|d3|]",
                           metre="6/8", key="G"))
    assert jig[0] == Bar(-2.5, 0.0, 0.5, 1.5, 2) and jig[5] == Bar(10.0, 12.5, 13.0, 1.5, 2)


def test_a_cut_time_bar_is_accompanied_in_quarter_beats():
    assert accompany.in_quarter_beats(Bar(0.0, 0.0, 4.0, 2.0, 2)) == Bar(0.0, 0.0, 4.0, 1.0, 4)
    assert accompany.in_quarter_beats(Bar(0.0, 0.0, 6.0, 2.0, 3)) == Bar(0.0, 0.0, 6.0, 1.0, 6)  # 3/2
    for dotted in (Bar(0.0, 0.0, 3.0, 1.5, 2), Bar(0.0, 0.0, 6.0, 3.0, 2)):  # 6/8 and 6/4 as they are
        assert accompany.in_quarter_beats(dotted) == dotted
    melody = [(float(q), q + 1.0, [67]) for q in range(8)]
    cut_bars = [Bar(4.0 * b, 4.0 * b, 4.0 * b + 4, 2.0, 2) for b in range(2)]
    for seed in range(10):
        bass, upper, _ = accompany.accompaniment(melody, cut_bars, [(0.0, 7, "major")], np.random.default_rng(seed),
                                                 ("oompah",))
        assert [s for s, _, _ in bass] == [0.0, 2.0, 4.0, 6.0] and [s for s, _, _ in upper] == [1.0, 3.0, 5.0, 7.0]


def test_keys_follow_the_written_key_changes_and_fall_back_to_the_analysis():
    keys = synth._keys(synth._as_played(corpus.parse("ryansMammoth/ElectricHornpipe.abc")))  # A major, then E
    assert keys[0] == (0.0, 9, "major") and (32.0, 4, "major") in keys and keys == sorted(keys)
    pitches = ("A4", "C5", "E5", "A5", "E5", "A4")
    unwritten = stream.Score([stream.Part([note.Note(p, quarterLength=1.0) for p in pitches])])
    analysed = unwritten.analyze("key")
    assert synth._keys(unwritten) == [(0.0, analysed.tonic.pitchClass, analysed.mode)]


def test_drums_count_phrases_from_downbeats_not_upbeats():
    score = synth._as_played(converter.parse(ABC_TUNE, format="abc"))
    bars = synth._bars(score)
    downbeats = [b.downbeat * 0.5 for b in bars if b.start == b.downbeat]  # 0.5 s a quarter at 120 bpm
    phrases = set()
    for seed in range(6):
        drums = synth._drum_track(bars, synth._tempo_map(score), np.random.default_rng(seed))
        crashes = sorted(n.start for n in drums.notes if n.pitch == synth.CRASH)
        # every 4 or 8 bars from the first downbeat, the upbeats not counted
        assert crashes in (downbeats[::4], downbeats[::8])
        phrases.add(len(crashes))
    assert len(phrases) == 2  # both phrase lengths drawn
def test_drum_backbeats_follow_the_metre_and_an_upbeat_into_a_phrase_has_the_fill():
    groove = {"hat": 42, "hat_step": 0.5, "kicks": set()}
    def backbeats(length, beats):
        hits = synth._drum_bar(groove, length, 1.0, beats, False, False, np.random.default_rng(0))
        return sorted(q for q, pitch, velocity in hits if pitch == synth.SNARE and velocity == 105)
    assert backbeats(3.0, 4) == [1.0, 3.0]  # a short 4/4 bar: the caller drops the 4th beat past its end
    assert backbeats(3.0, 3) == [1.0, 2.0]  # 3/4: every beat but the first
    score = synth._as_played(converter.parse(ABC_TUNE, format="abc"))
    drums = synth._drum_track(synth._bars(score), synth._tempo_map(score), np.random.default_rng(0))
    fills = (synth.SNARE,) + synth.TOMS
    for start, end in ((0.0, 0.5), (15.5, 16.0)):  # the opening pickup and the B section's upbeat, 0.5 s a quarter
        inside = [n for n in drums.notes if start - 1e-9 <= n.start < end - 1e-9]
        assert sorted(round(n.start, 6) for n in inside) == [start + 0.125 * k for k in range(4)]
        assert all(n.pitch in fills for n in inside)


def test_accompaniment_is_deterministic_by_seed_and_varies():
    melody = [(float(q), q + 1.0, [60 + 2 * (q % 4)]) for q in range(16)]
    one = accompany.accompaniment(melody, BARS_44, [(0.0, 0, "major")], np.random.default_rng(3))
    assert one == accompany.accompaniment(melody, BARS_44, [(0.0, 0, "major")], np.random.default_rng(3))
    textures = {accompany.accompaniment(melody, BARS_44, [(0.0, 0, "major")], np.random.default_rng(s))[2]
                for s in range(40)}
    assert textures == set(accompany.TEXTURES)


def test_unknown_texture_is_refused():
    with pytest.raises(ValueError, match="unknown texture"):
        accompany.realize([], BARS_44, "tango", 36, 52)


def test_tune_presets_take_one_part_tunes_and_no_analyses():
    tunes = synth.list_pieces("piano_violin_tunes")
    assert tunes and all(p.parts == 1 for p in tunes)
    one_part = [path for path, _, parts in synth._corpus_entries() if parts == 1]
    assert any(path.endswith(synth.ANALYSIS_SUFFIX) for path in one_part)  # the corpus has one-part analyses
    assert not any(p.path.endswith(synth.ANALYSIS_SUFFIX) for p in tunes)  # and the tunes presets skip them
    assert {p.path for p in tunes} == {p.path for p in synth.list_pieces("drums_bass_tunes")}
    assert not any(p.parts == 1 for p in synth.list_pieces("piano_violin"))


def test_tune_arrangements_put_the_melody_on_the_violin_and_the_accompaniment_below():
    score = corpus.parse("ryansMammoth/PigeonOnTheGateReel.abc")
    written = sorted(p.midi for n in score.expandRepeats().parts[0].stripTies().flatten().notes for p in n.pitches)
    parts = synth._arrange_tune_piano_violin(score, np.random.default_rng(0), Augmentation())
    violin = sorted(n.pitch for n in parts["violin"].notes)
    shift = violin[0] - written[0]
    assert shift % 12 == 0 and violin == [p + shift for p in written] and violin[0] >= synth.VIOLIN_LOWEST
    assert parts["piano"].program == synth.GM_PIANO and parts["piano"].name.endswith("accompaniment")
    # every set of piano notes sounding together lies in one chord of the written key (A dorian,
    # which music21's analysis reads as E minor)
    (_, tonic, mode), = synth._keys(score)
    assert (tonic, mode) == (9, "dorian") and score.analyze("key").tonic.pitchClass != 9
    chords = [set(tones) for tones, _ in accompany.triads(tonic, mode)]
    notes = parts["piano"].notes
    for onset in {n.start for n in notes}:
        sounding = {n.pitch % 12 for n in notes if n.start <= onset < n.end}
        assert any(sounding <= chord for chord in chords), (onset, sounding)
    assert len(notes) > 8
    assert 28 <= min(n.pitch for n in parts["piano"].notes) <= 40 + 11  # the bass register, E1 to D#3
    end = max(n.end for n in parts["violin"].notes)
    assert max(n.end for n in parts["piano"].notes) <= end + 1e-6  # the same tempo map
    bass = synth._arrange_tune_drums_bass(score, np.random.default_rng(0), Augmentation())
    assert bass["drums"].is_drum and min(n.pitch for n in bass["bass"].notes) >= synth.BASS_LOWEST
    assert bass["bass"].name.split()[3] in synth.BASS_TEXTURES  # "bass of the <texture> accompaniment"
    ends = [max(n.end for n in bass[s].notes) for s in ("bass", "drums")]
    assert abs(ends[0] - ends[1]) < 2.0  # the drums play through the repeats too


def test_synth_cli_offers_every_preset():
    from audiosep.cli import build_parser

    parser = build_parser()
    for preset in synth.PRESETS:
        assert parser.parse_args(["synth", preset, "--list"]).preset == preset
