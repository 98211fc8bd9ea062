"""Oracle separators: closed-form cases and a librosa re-derivation of the masks."""
from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from audiosep.errors import UserError
from audiosep.eval.metrics import si_sdr
from audiosep.oracle import ORACLES, run_oracle
from audiosep.spectral.frontend import get_frontend

SR = 16000


def _tones(sr: int = SR, seconds: float = 1.0) -> np.ndarray:
    """Two stereo sources occupying far-apart STFT bins: 440 Hz and 3 kHz tones, (2, 2, N)."""
    t = np.arange(int(seconds * sr)) / sr
    a = 0.5 * np.sin(2 * np.pi * 440 * t)
    b = 0.3 * np.sin(2 * np.pi * 3000 * t + 0.3)
    return np.stack([np.stack([a, 0.7 * a]), np.stack([0.4 * b, b])]).astype(np.float32)


def _noise(shape, seed=0, gains=None) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(shape)
    if gains is not None:
        x *= np.asarray(gains)[:, None, None]
    return (0.1 * x).astype(np.float32)


@pytest.mark.parametrize("name", ["ibm", "irm1", "irm2", "mwf", "mel-ibm", "mel-irm"])
def test_disjoint_spectra_separate_almost_perfectly(name):
    sources = _tones()
    est = run_oracle(name, sources, SR)
    assert est.shape == sources.shape and est.dtype == np.float32
    assert (si_sdr(sources, est) > 30).all()


def _librosa_masked(sources: np.ndarray, mask_fn) -> np.ndarray:
    """Independent re-derivation: librosa STFT (Hann 2048/1024, centred, zero padding),
    masks from `mask_fn(source_stfts, mix_stft)`, librosa iSTFT."""
    kw = dict(n_fft=2048, hop_length=1024, window="hann", center=True)
    specs = librosa.stft(sources.astype(np.float64), pad_mode="constant", **kw)  # (K, C, F, T)
    mix = specs.sum(axis=0)
    return librosa.istft(mask_fn(specs, mix) * mix, length=sources.shape[-1], **kw)


def test_ibm_and_irm_match_librosa_rederivation():
    sources = _noise((3, 2, 7000), gains=[1.0, 0.5, 0.2])
    eps = np.finfo(np.float64).eps
    ibm_ref = _librosa_masked(sources, lambda s, x: (np.abs(s) / (np.abs(x) + eps) >= 0.5).astype(float))
    np.testing.assert_allclose(run_oracle("ibm", sources, SR), ibm_ref, atol=1e-5)
    for alpha in (1, 2):
        ref = _librosa_masked(sources, lambda s, x: np.abs(s) ** alpha / (np.sum(np.abs(s) ** alpha, axis=0) + eps))
        np.testing.assert_allclose(run_oracle(f"irm{alpha}", sources, SR), ref, atol=1e-5)
    theta = 0.7
    ref = _librosa_masked(sources, lambda s, x: (np.abs(s) ** 2 / (np.abs(x) ** 2 + eps) >= theta).astype(float))
    np.testing.assert_allclose(run_oracle("ibm", sources, SR, alpha=2, theta=theta), ref, atol=1e-5)


@pytest.mark.parametrize("name", ["irm1", "irm2", "mwf", "mel-irm"])
def test_identical_sources_give_equal_halves(name):
    s = _noise((1, 2, 9000), seed=1)
    sources = np.concatenate([s, s])
    est = run_oracle(name, sources, SR)
    np.testing.assert_allclose(est, np.concatenate([s, s]), atol=1e-5)  # each = mixture / 2


def test_ibm_proportional_sources_all_to_the_louder():
    s = _noise((1, 2, 5000), seed=2)
    # |S₁|/|X| = 2/3 ≥ θ = 0.5 in every bin, |S₂|/|X| = 1/3 < θ: winner takes the mixture
    est = run_oracle("ibm", np.concatenate([2 * s, s]), SR)
    np.testing.assert_allclose(est, np.concatenate([3 * s, 0 * s]), atol=1e-5)


@pytest.mark.parametrize("name", ["irm1", "irm2", "mwf", "mel-irm"])
def test_ratio_masks_sum_to_one(name):
    sources = _noise((3, 2, 6001), seed=3, gains=[1.0, 0.3, 0.05])
    est = run_oracle(name, sources, SR)
    np.testing.assert_allclose(est.sum(axis=0), sources.sum(axis=0), atol=1e-5)


def test_mwf_on_mono_is_irm2():
    sources = torch.from_numpy(_noise((3, 1, 8000), seed=4, gains=[1.0, 0.3, 0.1])).double()
    mwf, irm2 = run_oracle("mwf", sources, SR), run_oracle("irm2", sources, SR)
    assert mwf.dtype == torch.float64
    assert (mwf - irm2).abs().max() < 1e-6
    # identical channels (mono rendered to stereo): a singular mixture covariance, same result
    stereo = sources.repeat(1, 2, 1)
    assert (run_oracle("mwf", stereo, SR) - run_oracle("irm2", stereo, SR)).abs().max() < 1e-6


def test_mwf_separates_differently_panned_sources():
    # white noise sources overlapping everywhere in time-frequency, but each with a fixed,
    # distinct pan: rank-one spatial covariances, which the MWF inverts exactly
    rng = np.random.default_rng(5)
    mono = 0.1 * rng.standard_normal((2, 8000))
    pans = np.array([[1.0, 0.2], [0.3, 1.0]])
    sources = (pans[:, :, None] * mono[:, None, :]).astype(np.float64)
    est = run_oracle("mwf", sources, SR)
    assert (si_sdr(sources, est) > 60).all()
    assert (si_sdr(sources, run_oracle("irm2", sources, SR)) < 20).all()  # masks alone cannot


def test_mixture_as_estimate_follows_sigsep_mix():
    sources = _noise((4, 2, 3000), seed=6)
    est = run_oracle("mix", sources, SR)
    for k in range(4):
        np.testing.assert_allclose(est[k], sources.sum(axis=0) / 4, atol=1e-7)


def test_lengths_and_array_kinds_preserved():
    sources = _noise((2, 1, 3333), seed=7)
    for name in ("ibm", "irm2", "mwf", "mix", "mel-ibm", "mel-irm"):
        out = run_oracle(name, sources, SR)
        assert isinstance(out, np.ndarray) and out.shape == (2, 1, 3333)
        out_t = run_oracle(name, torch.from_numpy(sources), SR)
        assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float32
        np.testing.assert_allclose(out_t.numpy(), out, atol=1e-6)


def test_mel_masks_are_mel_resolution():
    # two tones inside one mel band cannot be told apart by mel masks, but can by STFT masks
    t = np.arange(SR) / SR
    a, b = np.sin(2 * np.pi * 5000 * t), 0.5 * np.sin(2 * np.pi * 5040 * t)
    sources = np.stack([a, b])[:, None].astype(np.float32)
    assert (si_sdr(sources, run_oracle("irm2", sources, SR)) > 20).all()
    mel = si_sdr(sources, run_oracle("mel-irm", sources, SR, n_mels=32))
    # both tones share a band: both estimates ≈ the mixture times the same band mask
    assert (mel < 10).all()


def test_run_oracle_errors():
    sources = _noise((2, 1, 2000))
    with pytest.raises(UserError, match="unknown oracle 'nope'; choose one of: ibm"):
        run_oracle("nope", sources, SR)
    with pytest.raises(UserError, match="oracle 'irm2' has no option.*bogus"):
        run_oracle("irm2", sources, SR, bogus=1)
    with pytest.raises(UserError, match="needs a front end"):
        run_oracle("mel-ideal", sources, SR)
    assert set(ORACLES) == {"ibm", "irm1", "irm2", "mwf", "mix", "mel-ibm", "mel-irm", "mel-ideal"}
    with pytest.raises(ValueError, match=r"\(K sources, C channels, N samples\)"):
        run_oracle("ibm", sources[0], SR)


def test_mel_ideal_through_project_inversion():
    rate = 22050  # not the front end's 16 kHz: resampled there and back
    sources = _tones(rate, seconds=1.0)
    est = run_oracle("mel-ideal", sources, rate, frontend=get_frontend("audiosourcesep"))
    assert est.shape == sources.shape
    assert (si_sdr(sources, est) > 25).all()


@pytest.mark.parametrize("name", ["ibm", "irm1", "irm2", "mwf"])
def test_oracles_in_blocks_equal_one_pass(name, monkeypatch):
    """Full-length tracks are processed block by block (bounded memory; MWF in two passes, its
    spatial covariances over every frame); small blocks give the same estimates as one pass
    over the whole signal."""
    from audiosep.oracle import common

    rng = np.random.default_rng(3)
    sources = rng.standard_normal((3, 2, 50_000)).astype(np.float32)
    whole = run_oracle(name, sources, 16000)
    monkeypatch.setattr(common, "BLOCK", 5 * common.HOP)
    monkeypatch.setattr(common.in_blocks, "__defaults__", (common.N_FFT, common.HOP, 5 * common.HOP))
    blocks = run_oracle(name, sources, 16000)
    np.testing.assert_allclose(blocks, whole, atol=1e-6)
