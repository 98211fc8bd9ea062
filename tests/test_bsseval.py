"""bss_eval_v4 against museval.evaluate (v4, images) on short fixtures: every window within 0.01 dB,
NaN and inf in the same places."""

import warnings

import numpy as np
import pytest
from scipy.signal import lfilter

from audiosep.errors import UserError
from audiosep.eval.bsseval import bss_eval_v4

museval = pytest.importorskip("museval")

TOL_DB = 0.01


def _fixture(nsrc, nchan, sr, seconds, seed=0):
    """References (nsrc, n, nchan) float32: coloured noise + a harmonic tone per source, each
    silent for 1.3 s from a whole second (one NaN window, one partly silent window);
    estimates: a 3-tap filter of the reference + 20 % crosstalk + noise, estimate 0 silent over
    the last whole second."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    refs = np.empty((nsrc, n, nchan), dtype=np.float32)
    for j in range(nsrc):
        noise = lfilter([1.0], [1.0, -0.85 + 0.2 * j], rng.standard_normal((n, nchan)), axis=0)
        tone = sum(np.sin(2 * np.pi * 150 * (j + 1) * h * t) / h for h in (1, 2, 3))
        refs[j] = 0.3 * noise + 0.5 * tone[:, None] * np.linspace(1.0, 0.5, nchan)
    for j in range(nsrc):
        start = j % int(seconds - 1.3) * sr
        refs[j, start : start + int(1.3 * sr)] = 0.0
    crosstalk = refs.sum(axis=0, keepdims=True) - refs
    ests = lfilter([0.9, 0.2, -0.1], [1.0], refs, axis=1) + 0.2 * crosstalk
    ests += 0.02 * rng.standard_normal(ests.shape)
    ests[0, (int(seconds) - 1) * sr - 100 :] = 0.0
    return refs, ests.astype(np.float32)


def _museval(refs, ests, win, hop):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return museval.evaluate(refs, ests, win=win, hop=hop)


def _assert_same(refs, ests, win, hop):
    expected = _museval(refs, ests, win, hop)
    ours = bss_eval_v4(refs, ests, win=win, hop=hop)
    for name, want, got in zip(("SDR", "ISR", "SIR", "SAR"), expected, ours):
        assert got.shape == want.shape, name
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{name} NaN positions")
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL_DB, err_msg=name)
    return expected


@pytest.mark.parametrize(
    "nsrc, nchan, sr, seconds",
    [
        (2, 2, 44100, 4.0),  # stereo, 44.1 kHz
        (3, 1, 16000, 5.0),  # mono, 16 kHz
        (4, 1, 16000, 3.0),
    ],
)
def test_matches_museval(nsrc, nchan, sr, seconds):
    refs, ests = _fixture(nsrc, nchan, sr, seconds)
    expected = _assert_same(refs, ests, win=sr, hop=sr)
    assert np.isnan(expected[0]).any() and np.isfinite(expected[0]).any()  # the fixture exercises both


@pytest.mark.parametrize("extra", [-5000, 7000])
def test_estimates_cut_or_zero_padded_like_museval(extra):
    refs, ests = _fixture(2, 1, 16000, 3.0)
    if extra < 0:
        ests = ests[:, :extra]
    else:
        ests = np.concatenate([ests, ests[:, :extra]], axis=1)
    _assert_same(refs, ests, win=16000, hop=16000)


@pytest.mark.parametrize(
    "win, hop",
    [
        (200000, 200000),  # one window over the whole (longer than one FFT piece) signal
        (16000, 6000),  # overlapping windows
        (8000, 20000),  # gaps between windows
        (70000, 20000),  # windows split into two FFT pieces
    ],
)
def test_window_layouts(win, hop):
    refs, ests = _fixture(2, 1, 16000, 6.0, seed=1)
    _assert_same(refs, ests, win=win, hop=hop)


@pytest.mark.parametrize("filters_len", [1, 64])
def test_filters_len_like_museval_metrics(filters_len):
    refs, ests = _fixture(3, 2, 16000, 3.0, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = museval.metrics.bss_eval(
            refs, ests, window=16000, hop=16000, filters_len=filters_len, compute_permutation=False
        )[:4]
    ours = bss_eval_v4(refs, ests, win=16000, hop=16000, filters_len=filters_len)
    for want, got in zip(expected, ours):
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL_DB)


def test_single_source_has_infinite_sir():
    refs, ests = _fixture(1, 2, 16000, 3.0)
    expected = _assert_same(refs, ests, win=16000, hop=16000)
    assert np.isposinf(expected[2][np.isfinite(expected[0])]).all()


def test_dual_mono_singular_gram():
    """Identical left/right channels make the Gram matrix singular (the dense fallback path)."""
    refs, ests = _fixture(1, 1, 16000, 3.0, seed=2)
    _assert_same(np.repeat(refs, 2, axis=2), np.repeat(ests, 2, axis=2), win=16000, hop=16000)


@pytest.mark.parametrize("which", ["reference", "estimate"])
def test_source_silent_over_whole_signal_is_a_user_error(which):
    refs, ests = _fixture(3, 2, 16000, 3.0)
    (refs if which == "reference" else ests)[1] = 0.0
    with pytest.raises(ValueError):  # museval refuses it too
        _museval(refs, ests, 16000, 16000)
    with pytest.raises(UserError, match=f"{which} source 1 is silent"):
        bss_eval_v4(refs, ests, win=16000, hop=16000)


@pytest.mark.parametrize(
    "refs_shape, ests_shape, win",
    [
        ((2, 100), (2, 100), 50),  # not (nsrc, nsampl, nchan)
        ((2, 100, 1), (3, 100, 1), 50),  # source counts differ
        ((2, 100, 1), (2, 100, 2), 50),  # channel counts differ
        ((2, 100, 1), (2, 100, 1), 0),  # empty window
    ],
)
def test_bad_input_is_a_user_error(refs_shape, ests_shape, win):
    rng = np.random.default_rng(0)
    with pytest.raises(UserError):
        bss_eval_v4(rng.standard_normal(refs_shape), rng.standard_normal(ests_shape), win=win, hop=50)
