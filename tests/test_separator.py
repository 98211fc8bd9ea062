"""Separator: chunking with a linear cross-fade, rate/channel handling, level
normalisation, atomic outputs, collections (folders, dataset splits, skipped inputs,
shards), output formats and peak handling, bad inputs, and the bundled NMF model on the example."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audiosep.errors import UserError
from audiosep.eval.metrics import si_sdr
from audiosep.separation.nmf import NMFModel
from audiosep.io import OutputFormat, limit_peaks
from audiosep.separation.separator import (Separator, chunk_bounds, crossfade_weights, find_inputs,
                                          separate_files)
from audiosep.spectral import functional as SF
from audiosep.zoo import bundled

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
N_FFT, HOP = 512, 128


class FixedMask:
    """A linear method: bins below `cutoff` Hz go to "low", the rest to "high"."""

    sources = ("low", "high")

    def __init__(self, sample_rate: int = 16000, channels: int | None = None, cutoff: float = 2000.0) -> None:
        self.sample_rate, self.channels = sample_rate, channels
        self.mask = (torch.fft.rfftfreq(N_FFT, 1 / sample_rate) < cutoff).float()[:, None]

    def __call__(self, mix: torch.Tensor) -> torch.Tensor:
        X = SF.stft(mix, N_FFT, HOP, pad_mode="constant")
        stems = torch.stack([self.mask * X, (1 - self.mask) * X])
        return SF.istft(stems, N_FFT, HOP, length=mix.shape[-1])


class Recorder:
    """Returns (mix, 0·mix) and records the RMS of every chunk it receives."""

    sources = ("same", "zero")
    sample_rate = 8000

    def __init__(self, level_db: float | None = None) -> None:
        self.level_db, self.rms = level_db, []

    def __call__(self, mix: torch.Tensor) -> torch.Tensor:
        self.rms.append(mix.square().mean().sqrt().item())
        return torch.stack([mix, torch.zeros_like(mix)])


def _noise(shape, seed=0, scale=0.1) -> np.ndarray:
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


@pytest.mark.parametrize("length,segment,overlap", [(1000, 300, 50), (1000, 1000, 100), (901, 300, 0), (1001, 300, 150)])
def test_chunks_cover_the_signal_and_weights_sum_to_one(length, segment, overlap):
    bounds = chunk_bounds(length, segment, overlap)
    assert bounds[0][0] == 0 and bounds[-1][1] == length
    assert all(b - a <= segment for a, b in bounds)
    for (a0, b0), (a1, b1) in zip(bounds, bounds[1:]):
        assert b0 - a1 == overlap and b1 - a1 > overlap
    total = np.zeros(length)
    for i, (a, b) in enumerate(bounds):
        total[a:b] += crossfade_weights(b - a, overlap, i > 0, i < len(bounds) - 1)
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


def test_chunked_equals_unchunked_away_from_seams():
    sr = 16000
    mix = _noise((2, int(7.3 * sr)))
    method = FixedMask(sr)
    # A stride of 1.6 s is a whole number of hops, so the chunks' STFT frames fall on the same grid.
    chunked = Separator(method, segment=2.0, overlap=0.4, progress=False).separate(mix, sr)
    whole = Separator(method, segment=None, progress=False).separate(mix, sr)
    direct = method(torch.from_numpy(mix)).numpy()  # a linear method: the level gain cancels
    np.testing.assert_allclose(whole, direct, atol=1e-5)
    edges = np.array(sorted({e for b in chunk_bounds(mix.shape[1], 2 * sr, int(0.4 * sr)) for e in b}))
    far = np.abs(np.arange(mix.shape[1])[:, None] - edges[None]).min(axis=1) > N_FFT
    np.testing.assert_allclose(chunked[..., far], direct[..., far], atol=1e-5)
    err = chunked - direct
    assert 10 * np.log10(np.sum(direct**2) / np.sum(err**2)) > 30  # seams blend smoothly


def test_stems_follow_the_input_rate_channels_and_length(tmp_path):
    sr, n = 44100, int(2.5 * 44100)
    t = np.arange(n) / sr
    low, high = np.sin(2 * np.pi * 300 * t), 0.3 * np.sin(2 * np.pi * 5000 * t)
    mix = np.stack([0.5 * low + high, 0.2 * low + high]).astype(np.float32)
    sf.write(tmp_path / "song.wav", mix.T, sr, subtype="FLOAT")
    method = FixedMask(16000, channels=1)
    run = separate_files([tmp_path / "song.wav"], tmp_path / "out", Separator(method, segment=1.0, overlap=0.25, progress=False))
    assert [out for _, out in run.written] == [{"low": tmp_path / "out/song/low.wav", "high": tmp_path / "out/song/high.wav"}]
    stems = {}
    for name, path in run.written[0][1].items():
        wav, rate = sf.read(path, always_2d=True)
        assert rate == sr and wav.shape == (n, 2)
        stems[name] = wav.T
    # A mono method gets the channel mean; its stems are copied to both channels.
    refs = {"low": np.stack([0.35 * low] * 2), "high": np.stack([high] * 2)}
    for name in refs:
        assert (si_sdr(refs[name], stems[name]) > 25).all()


def test_level_is_normalised_before_the_method_and_restored_after():
    mix = _noise((1, 8000 * 3), scale=0.01)
    method = Recorder()
    stems = Separator(method, segment=None, progress=False).separate(mix, 8000)
    assert 20 * np.log10(method.rms[0]) == pytest.approx(-20.0, abs=1e-3)  # DEFAULT_LEVEL_DB
    np.testing.assert_allclose(stems[0], mix, rtol=1e-5, atol=1e-7)
    assert not stems[1].any()
    method = Recorder(level_db=-30.0)
    Separator(method, segment=None, progress=False).separate(mix, 8000)
    assert 20 * np.log10(method.rms[0]) == pytest.approx(-30.0, abs=1e-3)


def test_a_seeded_stochastic_method_is_deterministic():
    def noisy(mix):
        return torch.stack([mix + torch.randn_like(mix), mix])

    noisy.sources, noisy.sample_rate = ("a", "b"), 8000
    mix = _noise((1, 8000))
    runs = [Separator(noisy, seed=s, progress=False).separate(mix, 8000) for s in (3, 3, 4)]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.allclose(runs[0], runs[2])


def test_outputs_are_written_atomically_into_track_folders(tmp_path):
    mix = _noise((1, 16000))
    sf.write(tmp_path / "a.wav", mix.T, 16000)
    sf.write(tmp_path / "b.flac", mix.T, 16000)
    stale = tmp_path / "out/a/low.wav"
    stale.parent.mkdir(parents=True)
    sf.write(stale, np.zeros((400, 2), np.float32), 8000)  # an earlier output: replaced
    separate_files([tmp_path / "a.wav", tmp_path / "b.flac"], tmp_path / "out",
                   Separator(FixedMask(), progress=False), progress=False)
    for track in ("a", "b"):
        assert sorted(p.name for p in (tmp_path / "out" / track).iterdir()) == ["high.wav", "low.wav"]
    wav, _ = sf.read(stale, always_2d=True)
    assert wav.shape == (16000, 1)


def test_bad_inputs_are_skipped_and_listed_or_stop_a_strict_run(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, _noise((1, 8000)).T, 16000)
    (tmp_path / "junk.wav").write_bytes(b"not audio at all" * 10)
    sep = Separator(FixedMask(), progress=False)
    out = tmp_path / "out"
    with pytest.raises(UserError, match="missing.wav"):  # a path that does not exist: a typo, refused at once
        separate_files([good, tmp_path / "missing.wav"], out, sep)
    assert not out.exists()
    with pytest.raises(UserError, match="junk.wav"):
        separate_files([good, tmp_path / "junk.wav"], out, sep, strict=True)
    assert not out.exists()  # every input is opened before the first is separated
    run = separate_files([tmp_path / "junk.wav", good], out, sep)
    assert [i.track for i, _ in run.written] == ["good"] and len(run.failed) == 1
    assert "junk.wav" in run.failed[0][1] and "\n" not in run.failed[0][1]
    (tmp_path / "other").mkdir()
    sf.write(tmp_path / "other/good.wav", _noise((1, 8000), seed=1).T, 16000)
    with pytest.raises(UserError, match="track folder 'good'"):
        separate_files([good, tmp_path / "other/good.wav"], out, sep)
    (tmp_path / "file").write_bytes(b"")
    for bad in (tmp_path / "file", tmp_path / "file/sub"):
        with pytest.raises(UserError, match="output folder"):
            separate_files([good], bad, sep)


def test_a_failure_during_separation_skips_that_input_only(tmp_path):
    class Picky(FixedMask):
        def __call__(self, mix):
            if mix.shape[-1] < 8000:
                raise UserError(f"{mix.shape[-1]} samples are too short")
            return super().__call__(mix)

    sf.write(tmp_path / "short.wav", _noise((1, 4000)).T, 16000)
    sf.write(tmp_path / "long.wav", _noise((1, 16000)).T, 16000)
    run = separate_files([tmp_path / "short.wav", tmp_path / "long.wav"], tmp_path / "out",
                         Separator(Picky(), progress=False), progress=False)
    assert [i.track for i, _ in run.written] == ["long"]
    assert run.failed[0][1].startswith(str(tmp_path / "short.wav")) and "too short" in run.failed[0][1]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["long"]


def test_folders_are_searched_and_dataset_splits_give_their_mixtures(tmp_path):
    music = tmp_path / "music"
    for rel in ("a.wav", "sub/b.flac", "sub/deeper/c.wav", ".hidden/d.wav"):
        (music / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(music / rel, _noise((1, 800)).T, 16000)
    (music / "notes.txt").write_text("not audio")
    assert [i.track for i in find_inputs([music])] == ["a", "sub/b", "sub/deeper/c"]
    assert [i.track for i in find_inputs([music], exclude=music / "sub")] == ["a"]
    split = tmp_path / "data/test"
    for track, mix_name in (("t1", "mix.wav"), ("t2", "mixture.wav")):
        (split / track).mkdir(parents=True)
        for name in (mix_name, "piano.wav"):
            sf.write(split / track / name, _noise((1, 800)).T, 16000)
    assert [(i.track, i.path.name) for i in find_inputs([split])] == [("t1", "mix.wav"), ("t2", "mixture.wav")]
    with pytest.raises(UserError, match="give one split"):
        find_inputs([tmp_path / "data"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no audio files"):
        find_inputs([tmp_path / "empty"])
    run = separate_files([split], tmp_path / "out", Separator(FixedMask(), progress=False), progress=False)
    assert sorted(str(p.relative_to(tmp_path / "out")) for _, out in run.written for p in out.values()) == [
        "t1/high.wav", "t1/low.wav", "t2/high.wav", "t2/low.wav"]


def test_shards_together_write_what_one_process_writes(tmp_path):
    def noisy(mix):  # stochastic: each input must be seeded on its own for shards to agree
        return torch.stack([mix + torch.randn_like(mix), mix])

    noisy.sources, noisy.sample_rate = ("a", "b"), 8000
    for i in range(3):
        sf.write(tmp_path / f"in{i}.wav", _noise((1, 4000), seed=i).T, 8000)
    inputs = sorted(tmp_path.glob("in*.wav"))
    sep = Separator(noisy, progress=False)
    separate_files(inputs, tmp_path / "one", sep, progress=False)
    shards = [separate_files(inputs, tmp_path / "many", sep, shard=(k, 2), progress=False) for k in range(2)]
    assert [[i.track for i, _ in run.written] for run in shards] == [["in0", "in2"], ["in1"]]
    for path in (tmp_path / "one").rglob("*.wav"):
        twin = tmp_path / "many" / path.relative_to(tmp_path / "one")
        np.testing.assert_array_equal(sf.read(path)[0], sf.read(twin)[0])  # (float WAV headers hold a time stamp)


@pytest.mark.parametrize("fmt, bits, subtype", [("wav", None, "FLOAT"), ("wav", "16", "PCM_16"), ("wav", "24", "PCM_24"),
                                                ("flac", None, "PCM_24"), ("flac", "16", "PCM_16"),
                                                ("mp3", None, "MPEG_LAYER_III")])
def test_output_formats(tmp_path, fmt, bits, subtype):
    sf.write(tmp_path / "song.wav", _noise((2, 16000)).T, 16000)
    run = separate_files([tmp_path / "song.wav"], tmp_path / "out", Separator(FixedMask(), progress=False),
                         OutputFormat(fmt, bits), progress=False)
    for path in run.written[0][1].values():
        assert path.suffix == f".{fmt}" and sf.info(path).subtype == subtype and sf.info(path).channels == 2


@pytest.mark.parametrize("fmt, bits, clip, match", [("flac", "32f", "rescale", "32f is not possible in flac"),
                                                    ("mp3", "16", "rescale", "not possible in mp3"),
                                                    ("wav", "16", "none", "only float wav"),
                                                    ("ogg", None, "rescale", "unknown output format")])
def test_impossible_output_formats_are_refused(fmt, bits, clip, match):
    with pytest.raises(UserError, match=match):
        OutputFormat(fmt, bits, clip)


def test_peaks_above_full_scale_are_rescaled_clamped_or_kept_and_said(tmp_path):
    stems = np.array([[[0.5, -1.55]], [[0.2, 0.3]]], dtype=np.float32)
    rescaled, peak = limit_peaks(stems, "rescale")
    assert peak == pytest.approx(1.55) and np.abs(rescaled).max() == pytest.approx(0.999)
    np.testing.assert_allclose(rescaled / stems, 0.999 / 1.55, rtol=1e-6)  # one factor: the sum stays the mix
    assert np.abs(limit_peaks(stems, "clamp")[0]).max() == 1.0
    assert limit_peaks(stems, "none")[0] is stems and limit_peaks(stems * 0.5, "rescale")[0] is not None

    class Loud(FixedMask):
        def __call__(self, mix):
            return 2 * super().__call__(mix)

    square = np.sign(np.sin(2 * np.pi * 100 * np.arange(16000) / 16000))[None].astype(np.float32)
    sf.write(tmp_path / "square.wav", square.T, 16000, subtype="FLOAT")
    sep = Separator(Loud(), level_db=-3.0, progress=False)
    for mode, limit in (("rescale", 1.0), ("clamp", 1.0), ("none", None)):
        run = separate_files([tmp_path / "square.wav"], tmp_path / mode, sep, OutputFormat(clip_mode=mode),
                             progress=False)
        peak = max(np.abs(sf.read(p)[0]).max() for p in run.written[0][1].values())
        assert (peak <= limit) if mode != "none" else (peak > 1.0)
        assert len(run.notes) == 1 and "above full scale" in run.notes[0] and mode in run.notes[0]


def test_bundled_model_separates_the_example_above_the_mixture(tmp_path):
    model = NMFModel.load(bundled("nmf")[0])
    run = separate_files([EXAMPLES / "piano_violin.wav"], tmp_path, Separator(model, progress=False), progress=False)
    paths = run.written[0][1]
    mix, _ = sf.read(EXAMPLES / "piano_violin.wav", always_2d=True)
    for source, path in paths.items():
        ref, _ = sf.read(EXAMPLES / "piano_violin" / f"{source}.wav", always_2d=True)
        est, rate = sf.read(path, always_2d=True)
        assert rate == 16000 and est.shape == ref.shape
        gain = si_sdr(ref.T, est.T).item() - si_sdr(ref.T, mix.T).item()
        assert gain > 8, (source, gain)


class Reporting(FixedMask):
    """A FixedMask that reports its progress in four steps per chunk (recording where the
    Separator's bar stands after each) and has bars of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.report, self.progress, self.positions = None, True, []

    def __call__(self, mix):
        for fraction in (0.25, 0.5, 0.75, 1.0):
            self.report(fraction)
            self.positions.append(self.report.args[0].n)  # the bar (seconds) the report moved
        return super().__call__(mix)


def test_a_reporting_method_moves_the_one_bar_within_its_chunks_and_loses_its_own_bars():
    method = Reporting()
    separator = Separator(method, segment=1.0, overlap=0.25)
    assert method.progress is False  # one bar: the Separator's
    separator.separate(_noise((1, 40000)), 16000)
    stops = [stop / 16000 for _, stop in chunk_bounds(40000, 16000, 4000)]
    starts = [0.0, *stops[:-1]]
    expected = [round(start + f * (stop - start), 2) for start, stop in zip(starts, stops) for f in (0.25, 0.5, 0.75, 1.0)]
    assert method.positions == pytest.approx(expected) and expected[-1] == 2.5


def test_many_small_reports_end_exactly_at_the_total_without_a_tqdm_warning():
    import warnings

    class ManySteps(Reporting):
        def __call__(self, mix):
            for i in range(1, 2413):  # a latent run's tokens: fractions that do not sum exactly
                self.report(i / 2412)
            self.positions.append(self.report.args[0].n)
            return FixedMask.__call__(self, mix)

    method = ManySteps()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # tqdm's "clamping frac to range [0, 1]" would raise
        Separator(method, segment=None).separate(_noise((1, 7 * 22050)), 22050)
    assert method.positions == [7.0]
