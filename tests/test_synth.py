import json
import shutil
import time
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import soundfile as sf
from music21 import corpus

from audiosep.data import synth
from audiosep.data.augment import Augmentation, augment_audio, augment_midi, restore_timbre_shift
from audiosep.errors import UserError

needs_fluidsynth = pytest.mark.skipif(
    shutil.which("fluidsynth") is None, reason="fluidsynth not installed: apt-get install fluidsynth fluid-soundfont-gm"
)
SR = 16000
DURATION = 2.5
TIMGM = Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"  # ships with pretty_midi
COUNTS = {"train": 3, "valid": 1, "test": 1}


def _chorales():
    """Two train, one valid and one test four-part Bach chorale (by the hash split)."""
    bach = [p for p in synth.list_pieces("piano_violin", composers=["bach"]) if p.parts == 4]
    by_split = {s: [p.path for p in bach if p.split == s] for s in synth.SPLITS}
    return by_split["train"][:2] + by_split["valid"][:1] + by_split["test"][:1]


def _run(out_dir, seed=0, preset="piano_violin", **kwargs):
    args = dict(n_tracks=COUNTS, excerpts_per_piece=2, duration=DURATION, sample_rate=SR, seed=seed,
                pieces=_chorales(), progress=False)
    return synth.synthesize(preset, out_dir, **(args | kwargs))


@pytest.fixture(scope="module")
def pv(tmp_path_factory):
    if shutil.which("fluidsynth") is None:
        pytest.skip("fluidsynth not installed: apt-get install fluidsynth fluid-soundfont-gm")
    out = tmp_path_factory.mktemp("pv")
    return out, _run(out)


def _read(path):
    x, sr = sf.read(str(path), dtype="float32")
    assert sr == SR and x.ndim == 1, path
    return x


def _half_second_rms(x):
    return np.sqrt(np.mean(x[: len(x) // (SR // 2) * (SR // 2)].reshape(-1, SR // 2).astype(np.float64) ** 2, axis=1))


@needs_fluidsynth
def test_layout_and_index(pv):
    out, index = pv
    assert json.loads((out / "index.json").read_text()) == json.loads(json.dumps(index))
    assert index["sources"] == ["piano", "violin"] and index["sample_rate"] == SR
    assert index["soundfonts"] == [str(synth.default_soundfont())]
    tracks = index["tracks"]
    assert {s: sum(t["split"] == s for t in tracks) for s in synth.SPLITS} == COUNTS
    for t in tracks:
        assert t["composer"] == "bach" and t["piece"].startswith("bach/")
        assert t["duration"] == DURATION and t["offset"] * 2 == int(t["offset"] * 2)  # on the 0.5 s grid
        assert set(t["gains"]) == {"piano", "violin"} and t["programs"] == {"piano": 0, "violin": 40}
        assert isinstance(t["seed"], int) and t["soundfont"] == index["soundfonts"][0]
        folder = out / t["split"] / t["track"]
        assert sorted(p.name for p in folder.iterdir()) == ["mix.wav", "piano.wav", "violin.wav"]
        assert sf.info(str(folder / "mix.wav")).subtype == "FLOAT"
        assert all(len(_read(folder / f"{s}.wav")) == DURATION * SR for s in ("mix", "piano", "violin"))
    assert sorted(p.name for p in out.iterdir()) == ["index.json", "test", "train", "valid"]


@needs_fluidsynth
def test_mix_is_sum_of_equal_loudness_stems_with_headroom(pv):
    out, index = pv
    for t in index["tracks"]:
        folder = out / t["split"] / t["track"]
        piano, violin, mix = (_read(folder / f"{s}.wav").astype(np.float64) for s in ("piano", "violin", "mix"))
        np.testing.assert_allclose(mix, piano + violin, atol=1e-6)
        assert np.abs(mix).max() <= 0.9 + 1e-6
        rms = [np.sqrt(np.mean(x**2)) for x in (piano, violin)]
        assert rms[0] == pytest.approx(rms[1], rel=1e-4)  # gain_db=0: equal loudness


@needs_fluidsynth
def test_every_source_active_in_every_half_second(pv):
    out, index = pv
    for t in index["tracks"]:
        for source in ("piano", "violin"):
            x = _read(out / t["split"] / t["track"] / f"{source}.wav")
            frames = _half_second_rms(x)
            assert len(frames) == DURATION * 2
            assert frames.min() > np.sqrt(np.mean(x**2)) * 10 ** (-40 / 20), (t["track"], source, frames)


@needs_fluidsynth
def test_splits_are_by_piece(pv):
    _, index = pv
    pieces = {s: {t["piece"] for t in index["tracks"] if t["split"] == s} for s in synth.SPLITS}
    assert not (pieces["train"] & pieces["valid"] or pieces["train"] & pieces["test"] or pieces["valid"] & pieces["test"])
    assert len(pieces["train"]) == 2  # 3 train excerpts at 2 per piece
    for t in index["tracks"]:
        assert t["split"] == synth.split_of(t["piece"])


def test_hash_split_fractions_over_the_corpus():
    pieces = synth.list_pieces("piano_violin")
    share = {s: np.mean([p.split == s for p in pieces]) for s in synth.SPLITS}
    assert len(pieces) > 1000
    assert share["train"] == pytest.approx(0.8, abs=0.03)
    assert share["valid"] == pytest.approx(0.1, abs=0.02) and share["test"] == pytest.approx(0.1, abs=0.02)
    assert synth.split_of("bach/bwv66.6.mxl", (0.0, 0.0, 1.0)) == "test"


@needs_fluidsynth
def test_deterministic_by_seed(pv, tmp_path):
    out, index = pv
    train = [t for t in index["tracks"] if t["split"] == "train"]
    again = _run(tmp_path / "same", n_tracks={"train": len(train)})
    assert again["tracks"] == train
    for t in train:
        for name in ("mix.wav", "piano.wav", "violin.wav"):
            rel = Path(t["split"]) / t["track"] / name
            np.testing.assert_array_equal(_read(tmp_path / "same" / rel), _read(out / rel))
    other = _run(tmp_path / "other", seed=1, n_tracks={"train": 1})
    assert (other["tracks"][0]["piece"], other["tracks"][0]["gains"]) not in [(t["piece"], t["gains"]) for t in train]


def test_haydn_and_mozart_are_excluded():
    assert corpus.getComposer("haydn") and corpus.getComposer("mozart")  # they are in the corpus
    for preset in synth.PRESETS:
        paths = [p.path.lower() for p in synth.list_pieces(preset)]
        assert paths and not [p for p in paths if "haydn" in p or "mozart" in p]
    for composers in (["mozart"], ["Haydn"], ["bach", "haydn"]):
        with pytest.raises(UserError, match="reserved"):
            synth.list_pieces("piano_violin", composers=composers)
    with pytest.raises(UserError, match="reserved"):
        synth.synthesize("piano_violin", "/nonexistent/out", composers=["mozart"])
    with pytest.raises(UserError, match="reserved"):
        synth.synthesize("drums_bass", "/nonexistent/out", pieces=["haydn/opus1no1/movement1.mxl"])


def test_bad_arguments_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown synth preset"):
        synth.synthesize("guitar_flute", tmp_path)
    with pytest.raises(UserError, match="splits"):
        synth.synthesize("piano_violin", tmp_path, splits=(0.5, 0.2, 0.2))
    with pytest.raises(UserError, match="unknown split"):
        synth.synthesize("piano_violin", tmp_path, n_tracks={"training": 3})
    with pytest.raises(UserError, match="piano_violin only, not drums_bass"):
        synth.synthesize("drums_bass", tmp_path, augmentation=Augmentation(top_voices=0.5))
    with pytest.raises(UserError, match="no usable corpus pieces"):
        synth.list_pieces("piano_violin", composers=["nobody"])
    assert synth._split_targets(10, (0.8, 0.1, 0.1)) == {"train": 8, "valid": 1, "test": 1}
    with pytest.raises(UserError, match="soundfont not found"):
        synth.synthesize("piano_violin", tmp_path, soundfonts=[tmp_path / "none.sf2"])
    (tmp_path / "garbage.pt").write_bytes(b"8 bytes!")
    with pytest.raises(UserError, match="garbage.pt: not a SoundFont"):
        synth.synthesize("piano_violin", tmp_path / "out", soundfonts=[tmp_path / "garbage.pt"])
    assert not (tmp_path / "out").exists()
    riff = tmp_path / "fake.sf2"
    riff.write_bytes(b"RIFF\x04\x00\x00\x00WAVE")  # a RIFF file of another form (a wav)
    assert not synth.is_soundfont_file(riff)


@needs_fluidsynth
def test_a_soundfont_that_does_not_sound_is_refused_before_any_render(tmp_path):
    """A font with a SoundFont header but a damaged body: FluidSynth fails to load it and (its
    default font switched off) renders silence, refused before any piece; nothing written."""
    broken = tmp_path / "broken.sf2"
    broken.write_bytes(TIMGM.read_bytes()[:4096])
    assert synth.is_soundfont_file(broken)
    with pytest.raises(UserError, match=r"broken.sf2: FluidSynth renders no sound for piano \(GM program 0\)"):
        _run(tmp_path / "out", soundfonts=[TIMGM, broken])
    assert not (tmp_path / "out").exists()


@needs_fluidsynth
def test_the_index_names_the_soundfont_files_rendered(tmp_path):
    link = tmp_path / "font.sf2"
    link.symlink_to(TIMGM)
    index = _run(tmp_path / "out", soundfonts=[link], n_tracks={"test": 1})
    assert index["soundfonts"] == [str(TIMGM.resolve())]  # the file, not the link to it
    assert {t["soundfont"] for t in index["tracks"]} == {str(TIMGM.resolve())}


def test_missing_fluidsynth_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="apt-get install fluidsynth fluid-soundfont-gm"):
        synth.synthesize("piano_violin", tmp_path / "out", pieces=_chorales()[:1])


@needs_fluidsynth
def test_existing_dataset_is_not_overwritten_silently(pv):
    out, _ = pv
    with pytest.raises(UserError, match="already holds a dataset"):
        _run(out)


def test_hanging_render_is_killed_by_timeout(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "_fluidsynth_command", lambda *args: ["sleep", "30"])
    started = time.monotonic()
    with pytest.raises(synth.RenderError, match="timeout"):
        synth.render_midi(tmp_path / "x.mid", synth.default_soundfont(), SR, timeout=0.5)
    assert time.monotonic() - started < 5


@needs_fluidsynth
def test_hanging_piece_is_skipped_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "check_soundfont_voices", lambda *args: None)  # the font's probe would hang first
    monkeypatch.setattr(synth, "_fluidsynth_command", lambda *args: ["sleep", "30"])
    piece = _chorales()[0]
    with pytest.warns(UserWarning, match=f"skipping {piece}.*timeout"), \
            pytest.raises(UserError, match="no track could be made .* is left as it was"):
        synth.synthesize("piano_violin", tmp_path, pieces=[piece], timeout=0.3, progress=False)
    assert list(tmp_path.iterdir()) == []  # no index, no split folder, no staging folder left


@needs_fluidsynth
def test_drums_bass_stems(tmp_path):
    index = _run(tmp_path, preset="drums_bass", n_tracks={"train": 1})
    (t,) = index["tracks"]
    assert index["sources"] == ["bass", "drums"] and 32 <= t["programs"]["bass"] <= 35
    folder = tmp_path / "train" / t["track"]
    bass, drums, mix = (_read(folder / f"{s}.wav").astype(np.float64) for s in ("bass", "drums", "mix"))
    np.testing.assert_allclose(mix, bass + drums, atol=1e-6)
    for x in (bass, drums):
        frames = _half_second_rms(x)
        assert frames.min() > np.sqrt(np.mean(x**2)) * 10 ** (-40 / 20)


def test_drums_follow_the_bars_and_tempo_and_vary_by_seed():
    score = corpus.parse("bach/bwv66.6")  # 4/4 at 96 bpm with a one-beat pickup
    quarter = 60 / 96
    patterns = []
    for seed in range(4):
        parts = synth._arrange_drums_bass(score, np.random.default_rng(seed), Augmentation())
        drums, bass = parts["drums"], parts["bass"]
        assert drums.is_drum and not bass.is_drum
        onsets = np.array([n.start for n in drums.notes]) / quarter  # in quarter notes
        np.testing.assert_allclose(onsets * 4, np.round(onsets * 4), atol=1e-6)  # on the 16th grid
        kicks = {round(n.start / quarter, 6) for n in drums.notes if n.pitch == synth.KICK}
        assert {1.0 + 4 * k for k in range(8)} <= kicks  # a kick on every downbeat after the pickup
        assert onsets.min() >= 0 and onsets.max() < 36  # within the piece (36 quarters)
        written = [p.midi for n in score.parts[-1].stripTies().flatten().notes for p in n.pitches]
        played = [n.pitch for n in bass.notes]
        shift = played[0] - written[0]
        assert shift % 12 == 0 and played == [p + shift for p in written] and min(played) >= synth.BASS_LOWEST
        patterns.append(sorted((round(n.start, 4), n.pitch) for n in drums.notes))
    assert len({tuple(p) for p in patterns}) == 4


def test_piano_violin_arrangement_follows_the_score():
    score = corpus.parse("bach/bwv66.6")  # soprano, alto, tenor, bass at 96 bpm
    parts = synth._arrange_piano_violin(score, np.random.default_rng(0), Augmentation())
    written = [[(float(n.offset), p.midi) for n in part.stripTies().flatten().notes for p in n.pitches]
               for part in score.parts]
    quarter = 60 / 96
    violin = [(round(n.start / quarter, 6), n.pitch) for n in parts["violin"].notes]
    piano = sorted((round(n.start / quarter, 6), n.pitch) for n in parts["piano"].notes)
    assert parts["violin"].program == 40 and parts["piano"].program == 0
    assert violin == written[0]  # the soprano, already in the violin's range
    assert piano == sorted(written[1] + written[2] + written[3])
    assert parts["violin"].name == "top 1 part"
    # --top-voices 1: soprano and alto as the violin's chords, tenor and bass on the piano
    two = synth._arrange_piano_violin(score, np.random.default_rng(0), Augmentation(top_voices=1.0))
    up = 12 * (min(p for _, p in written[1]) < synth.VIOLIN_LOWEST)  # raised an octave if the alto goes below G3
    assert sorted((round(n.start / quarter, 6), n.pitch - up) for n in two["violin"].notes) == sorted(written[0] + written[1])
    assert sorted((round(n.start / quarter, 6), n.pitch) for n in two["piano"].notes) == sorted(written[2] + written[3])
    assert two["violin"].name == "top 2 parts"
    # off (the default), no random draw is made: the velocities are those of renders made before
    again = synth._arrange_piano_violin(score, np.random.default_rng(0), Augmentation(top_voices=0.0))
    assert [n.velocity for n in again["piano"].notes] == [n.velocity for n in parts["piano"].notes]


# --- augmentation ------------------------------------------------------------------------

AUGMENT = Augmentation(tempo=0.1, detune_cents=30, velocity=20, expression=0.4, eq_db=6, reverb=1.0,
                       timbre_semitones=3)


def _augmented(out_dir, seed=0):
    pieces = _chorales()[:1]
    return synth.synthesize("piano_violin", out_dir, n_tracks={"train": 1}, duration=DURATION, sample_rate=SR,
                            seed=seed, pieces=pieces, progress=False, gain_db=12, augmentation=AUGMENT,
                            font_per_source=True, soundfonts=[synth.default_soundfont(), TIMGM])


@needs_fluidsynth
def test_augmented_render_is_deterministic_by_seed_and_mixes_exactly(tmp_path):
    first, again, other = (_augmented(tmp_path / name, seed) for name, seed in (("a", 0), ("b", 0), ("c", 1)))
    track = first["tracks"][0]
    assert again["tracks"][0]["performance"] == track["performance"]
    assert again["tracks"][0]["recording"] == track["recording"]
    assert other["tracks"][0]["performance"] != track["performance"]
    assert set(track["performance"]) == {"tempo", "piano", "violin"} and "room" in track["recording"]
    assert set(track["source_soundfonts"]) == {"piano", "violin"}
    folder_a, folder_b = (root / "train" / track["track"] for root in (tmp_path / "a", tmp_path / "b"))
    stems = {s: _read(folder_a / f"{s}.wav") for s in ("mix", "piano", "violin")}
    for name, audio in stems.items():
        np.testing.assert_array_equal(audio, _read(folder_b / f"{name}.wav"))
    np.testing.assert_allclose(stems["mix"], stems["piano"] + stems["violin"], atol=1e-7)
    assert np.max(np.abs(stems["mix"])) <= synth.PEAK + 1e-6


def test_augment_midi_moves_times_pitch_and_dynamics_only_where_asked():
    def instrument():
        inst = pretty_midi.Instrument(program=0)
        inst.notes = [pretty_midi.Note(90, 60 + i, 0.5 * i, 0.5 * i + 0.4) for i in range(8)]
        return inst

    rng = np.random.default_rng(0)
    plain = {"piano": instrument()}
    assert augment_midi(plain, Augmentation(), rng) == {}
    assert [(n.velocity, n.start) for n in plain["piano"].notes] == [(90, 0.5 * i) for i in range(8)]
    moved = {"piano": instrument()}
    drawn = augment_midi(moved, Augmentation(tempo=0.2, detune_cents=50, velocity=10), rng)
    factor, notes = drawn["tempo"], moved["piano"].notes
    assert 0.8 <= factor <= 1.2 and notes[3].start == pytest.approx(1.5 * factor)
    assert all(60 <= n.velocity <= 120 for n in notes) and len({n.velocity for n in notes}) > 1
    bend = moved["piano"].pitch_bends[0].pitch
    assert bend == round(drawn["piano"]["detune_cents"] / 200 * 8192) and abs(bend) <= 2048


def test_timbre_shift_transposes_speeds_up_and_shares_the_bend_with_detuning():
    inst = pretty_midi.Instrument(program=40)
    inst.notes = [pretty_midi.Note(90, 60 + i, 0.5 * i, 0.5 * i + 0.4) for i in range(8)]
    drawn = augment_midi({"violin": inst}, Augmentation(detune_cents=30, timbre_semitones=3),
                         np.random.default_rng(0))["violin"]
    shift, cents = drawn["timbre_semitones"], drawn["detune_cents"]
    whole, speed = round(shift), 2 ** (shift / 12)
    assert -3 <= shift <= 3 and [n.pitch for n in inst.notes] == [60 + i + whole for i in range(8)]
    assert inst.notes[3].start == pytest.approx(1.5 / speed) and inst.notes[3].end == pytest.approx(1.9 / speed)
    assert len(inst.pitch_bends) == 1
    assert inst.pitch_bends[0].pitch == round((cents + 100 * (shift - whole)) / 200 * 8192)
    drums = pretty_midi.Instrument(program=0, is_drum=True)
    drums.notes = [pretty_midi.Note(90, 36, 0.0, 0.1)]
    assert augment_midi({"drums": drums}, Augmentation(timbre_semitones=3), np.random.default_rng(0)) == {}
    assert drums.notes[0].pitch == 36 and drums.notes[0].end == 0.1


def test_transpose_moves_each_source_by_whole_semitones_within_its_range():
    def violin():
        inst = pretty_midi.Instrument(program=synth.GM_VIOLIN)
        inst.notes = [pretty_midi.Note(90, p, 0.5 * i, 0.5 * i + 0.4) for i, p in enumerate([60, 67, 72, 79])]
        return inst

    shifts = []
    for seed in range(60):
        inst = violin()
        drawn = augment_midi({"violin": inst}, Augmentation(transpose=12), np.random.default_rng(seed),
                             {"violin": synth.PLAYABLE[synth.GM_VIOLIN]})
        shift = drawn["violin"]["transpose"]
        assert isinstance(shift, int) and [n.pitch for n in inst.notes] == [p + shift for p in (60, 67, 72, 79)]
        assert [n.start for n in inst.notes] == [0.5 * i for i in range(4)] and not inst.pitch_bends
        shifts.append(shift)
    # the violin's G3 (55) bounds the shift below, G7 (103) above: −5 ≤ shift ≤ 12
    assert min(shifts) == -5 and max(shifts) == 12 and len(set(shifts)) > 10
    wide = pretty_midi.Instrument(program=synth.GM_VIOLIN)
    wide.notes = [pretty_midi.Note(90, p, 0.0, 0.4) for p in (50, 110)]  # wider than the range
    augment_midi({"violin": wide}, Augmentation(transpose=12), np.random.default_rng(0), {"violin": (55, 103)})
    assert wide.notes[0].pitch == 55  # the lowest note is kept playable
    drums = pretty_midi.Instrument(program=0, is_drum=True)
    drums.notes = [pretty_midi.Note(90, 36, 0.0, 0.1)]
    assert augment_midi({"drums": drums}, Augmentation(transpose=12), np.random.default_rng(0)) == {}
    assert drums.notes[0].pitch == 36


def test_restore_timbre_shift_brings_pitch_and_duration_back():
    shift, f0, seconds = 2.5, 440.0, 1.0
    ratio = 2 ** (shift / 12)
    t = np.arange(int(SR * seconds / ratio)) / SR  # rendered faster and higher, as augment_midi asks
    rendered = np.sin(2 * np.pi * f0 * ratio * t).astype(np.float32)
    plain = np.zeros(SR // 2, dtype=np.float32)
    out = restore_timbre_shift({"violin": rendered, "piano": plain}, {"violin": {"timbre_semitones": shift}}, SR)
    assert out["piano"] is not plain and len(out["violin"]) == len(out["piano"])
    assert abs(len(out["violin"]) - SR * seconds) <= 2
    spectrum = np.abs(np.fft.rfft(out["violin"][: SR // 2] * np.hanning(SR // 2)))
    assert np.fft.rfftfreq(SR // 2, 1 / SR)[spectrum.argmax()] == pytest.approx(f0, abs=2.0)
    np.testing.assert_array_equal(out["piano"][: SR // 2], plain)


def test_augment_audio_is_linear_per_source_and_off_by_default():
    rng = np.random.default_rng(0)
    x = np.random.default_rng(1).standard_normal(SR).astype(np.float32)
    same, drawn = augment_audio({"a": x}, SR, Augmentation(), rng)
    assert same["a"] is x and drawn == {}
    for seed in (2, 3):  # the same draws on 2x the input give 2x the output (EQ and reverb are linear)
        one, d1 = augment_audio({"a": x}, SR, AUGMENT, np.random.default_rng(seed))
        two, d2 = augment_audio({"a": 2 * x}, SR, AUGMENT, np.random.default_rng(seed))
        assert d1 == d2 and len(one["a"]) == SR + int(2.0 * SR)
        np.testing.assert_allclose(two["a"], 2 * one["a"], atol=1e-4)


def test_bad_augmentation_and_reserved_soundfonts_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="tempo"):
        Augmentation(tempo=0.7)
    with pytest.raises(UserError, match="reverb"):
        Augmentation(reverb=2)
    with pytest.raises(UserError, match="timbre_semitones"):
        Augmentation(timbre_semitones=-1)
    font = tmp_path / "MuseScore_General.sf3"
    font.write_bytes(b"x")
    link = tmp_path / "default.sf2"
    link.symlink_to(font)
    for path in (font, link):
        with pytest.raises(UserError, match="reserved"):
            synth.synthesize("piano_violin", tmp_path / "out", soundfonts=[path])
