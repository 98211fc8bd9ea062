"""Separator: chunking with a linear cross-fade, rate/channel handling, level
normalisation, atomic outputs, bad inputs, and the bundled NMF model on the example."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audiosep.errors import UserError
from audiosep.eval.metrics import si_sdr
from audiosep.separation.nmf import BUNDLED_NMF, NMFModel
from audiosep.separation.separator import Separator, chunk_bounds, crossfade_weights, separate_files
from audiosep.spectral import functional as SF

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
    out = separate_files([tmp_path / "song.wav"], tmp_path / "out", Separator(method, segment=1.0, overlap=0.25, progress=False))
    assert out == [{"low": tmp_path / "out/song/low.wav", "high": tmp_path / "out/song/high.wav"}]
    stems = {}
    for name, path in out[0].items():
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
    stale.write_bytes(b"old")
    separate_files([tmp_path / "a.wav", tmp_path / "b.flac"], tmp_path / "out",
                   Separator(FixedMask(), progress=False), progress=False)
    for track in ("a", "b"):
        assert sorted(p.name for p in (tmp_path / "out" / track).iterdir()) == ["high.wav", "low.wav"]
    wav, _ = sf.read(stale, always_2d=True)
    assert wav.shape == (16000, 1)


def test_bad_inputs_raise_and_write_nothing(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, _noise((1, 8000)).T, 16000)
    sep = Separator(FixedMask(), progress=False)
    out = tmp_path / "out"
    with pytest.raises(UserError, match="missing.wav"):
        separate_files([good, tmp_path / "missing.wav"], out, sep)
    (tmp_path / "junk.wav").write_bytes(b"not audio at all" * 10)
    with pytest.raises(UserError, match="junk.wav"):
        separate_files([good, tmp_path / "junk.wav"], out, sep)
    (tmp_path / "other").mkdir()
    sf.write(tmp_path / "other/good.wav", _noise((1, 8000), seed=1).T, 16000)
    with pytest.raises(UserError, match="track folder 'good'"):
        separate_files([good, tmp_path / "other/good.wav"], out, sep)
    assert not out.exists()
    out.write_bytes(b"")
    with pytest.raises(UserError, match="not a folder"):
        separate_files([good], out, sep)

def test_an_output_that_would_overwrite_the_input_is_refused(tmp_path):
    source = tmp_path / "low" / "low.wav"
    source.parent.mkdir()
    sf.write(source, _noise((1, 8000)).T, 16000)
    before = source.read_bytes()
    with pytest.raises(UserError, match="overwrite"):
        Separator(FixedMask(), progress=False).separate_file(source, tmp_path)
    assert source.read_bytes() == before
    assert sorted(p.name for p in source.parent.iterdir()) == ["low.wav"]


def test_bundled_model_separates_the_example_above_the_mixture(tmp_path):
    model = NMFModel.load(BUNDLED_NMF)
    paths = Separator(model, progress=False).separate_file(EXAMPLES / "piano_violin.wav", tmp_path)
    mix, _ = sf.read(EXAMPLES / "piano_violin.wav", always_2d=True)
    for source, path in paths.items():
        ref, _ = sf.read(EXAMPLES / "piano_violin" / f"{source}.wav", always_2d=True)
        est, rate = sf.read(path, always_2d=True)
        assert rate == 16000 and est.shape == ref.shape
        gain = si_sdr(ref.T, est.T).item() - si_sdr(ref.T, mix.T).item()
        assert gain > 8, (source, gain)
