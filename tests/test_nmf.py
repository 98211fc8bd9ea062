"""Supervised NMF: activations against scikit-learn's updates and scipy's KL, recovery of
sources with disjoint spectra, and the model file."""
from __future__ import annotations

import re
import numpy as np
import pytest
import torch
from scipy.special import kl_div
from sklearn.decomposition import non_negative_factorization
from threadpoolctl import threadpool_limits

from audiosep.errors import UserError
from audiosep.eval.metrics import si_sdr
from audiosep.priors.base import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, load_prior
from audiosep.separation.nmf import (
    NMFModel,
    fit_activations,
    learn_dictionary,
    separate_nmf,
    training_magnitudes,
)
from audiosep.spectral.stft import STFTSettings

SR = 8000
DOMAIN = STFTSettings(512, 128, sample_rate=SR)


def _positive_problem(F=40, R=6, T=50, seed=0):
    """A strictly positive V `(F, T)` near a rank-R model, and a positive dictionary `(F, R)`."""
    rng = np.random.default_rng(seed)
    W = rng.random((F, R)) + 0.05
    V = W @ rng.gamma(0.5, 1.0, (R, T)) + 0.01 + 0.1 * rng.random((F, T))
    return torch.from_numpy(V), torch.from_numpy(W / W.sum(axis=0))


@pytest.mark.parametrize("beta", ["kullback-leibler", "frobenius"])
def test_activations_match_sklearn_multiplicative_updates(beta):
    V, W = _positive_problem()
    n_iter = 30
    H = fit_activations(V, W, n_iter=n_iter, beta=beta)
    # scikit-learn factorises X ≈ W' H'; with X = Vᵀ and the fixed H' = Wᵀ it updates W' = Hᵀ
    # from a constant start (for these two divergences the first update makes the result
    # independent of a per-frame constant start such as ours).
    W_sk, _, n_done = non_negative_factorization(
        V.numpy().T.copy(), H=W.numpy().T.copy(), n_components=W.shape[1], init="custom",
        update_H=False, solver="mu", beta_loss=beta, max_iter=n_iter, tol=0.0,
    )
    assert n_done == n_iter
    np.testing.assert_allclose(H.numpy(), W_sk.T, rtol=1e-9, atol=1e-12)


def test_activations_nonnegative_and_kl_decreases():
    V, W = _positive_problem(seed=1)
    kls = []
    for n_iter in (0, 1, 2, 5, 10, 30, 100):
        H = fit_activations(V, W, n_iter=n_iter)
        assert (H >= 0).all()
        kls.append(kl_div(V.numpy(), (W @ H).numpy()).sum())  # scipy: x log(x/y) − x + y
    assert all(b <= a + 1e-9 for a, b in zip(kls, kls[1:]))
    assert kls[-1] < 0.5 * kls[0]


def test_activations_are_batched_and_keep_silent_frames_zero():
    V, W = _positive_problem(seed=2)
    V = V.clone()
    V[:, 3] = 0.0
    batch = torch.stack([V, 2.0 * V])
    H = fit_activations(batch, W, n_iter=20)
    assert H.shape == (2, W.shape[1], V.shape[1])
    torch.testing.assert_close(H[0], fit_activations(V, W, n_iter=20))
    torch.testing.assert_close(H[1], 2.0 * H[0])  # KL updates are scale-equivariant
    assert (H[:, :, 3] == 0).all()


def _tones(freqs, seconds, seed, sr=SR):
    """Sum of sines at `freqs` Hz, each at a random level (or off) every 0.25 s: (1, N).

    The level steps are smoothed over 50 ms so that they add no broadband clicks.
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    blocks = int(np.ceil(n / (sr // 4)))
    smooth = np.hanning(sr // 20)
    out = np.zeros(n)
    for f in freqs:
        gate = np.repeat(rng.random(blocks) * (rng.random(blocks) > 0.3), sr // 4)[:n]
        gate = np.convolve(gate, smooth / smooth.sum(), mode="same")
        out += 0.2 * gate * np.sin(2 * np.pi * f * t + rng.random() * 6)
    return out[None].astype(np.float32)


LOW, HIGH = (220.0, 330.0, 495.0), (1800.0, 2400.0, 3100.0)


@pytest.fixture(scope="module")
def tone_model():
    with threadpool_limits(1):  # multi-threaded BLAS is much slower on such tiny products when cores are busy
        dictionaries = [
            learn_dictionary(training_magnitudes(_tones(freqs, 6.0, seed), DOMAIN), n_atoms=6, n_iter=300)
            for seed, freqs in enumerate((LOW, HIGH))
        ]
    return NMFModel(("low", "high"), torch.stack(dictionaries), DOMAIN)


def test_learnt_atoms_are_unit_sum_and_model_their_own_source(tone_model):
    W = tone_model.dictionaries
    assert W.shape == (2, DOMAIN.n_freqs, 6)
    torch.testing.assert_close(W.sum(dim=1), torch.ones(2, 6))
    cut = int(1000 / SR * DOMAIN.n_fft)  # bin of 1 kHz, between the two bands
    assert W[0, cut:].sum() < 0.02 * W.shape[-1] and W[1, :cut].sum() < 0.02 * W.shape[-1]
    for k, freqs in enumerate((LOW, HIGH)):
        V = training_magnitudes(_tones(freqs, 2.0, seed=20 + k), DOMAIN).double()
        own, other = (kl_div(V.numpy(), (D @ fit_activations(V, D)).numpy()).sum()
                      for D in (W[k].double(), W[1 - k].double()))
        assert own < 0.01 * other


def test_disjoint_sources_are_recovered(tone_model):
    low, high = _tones(LOW, 3.0, seed=10), _tones(HIGH, 3.0, seed=11)
    stems = separate_nmf(torch.from_numpy(low + high), tone_model)
    assert stems.shape == (2, 1, low.shape[1])
    score = si_sdr(np.stack([low, high]), stems.numpy())
    assert (score > 25).all(), score


def test_stereo_masks_apply_to_each_channel(tone_model):
    low, high = _tones(LOW, 2.0, seed=12), _tones(HIGH, 2.0, seed=13)
    mix = np.concatenate([low + 0.3 * high, 0.5 * low + high])
    stems = separate_nmf(torch.from_numpy(mix), tone_model).numpy()
    refs = np.stack([np.concatenate([low, 0.5 * low]), np.concatenate([0.3 * high, high])])
    assert (si_sdr(refs, stems) > 20).all()
    np.testing.assert_allclose(stems.sum(axis=0), mix, atol=1e-4)  # masks sum to one


def test_model_round_trip(tone_model, tmp_path):
    path = tone_model.save(tmp_path / "m.pt", extra={"note": "x"})
    assert not [p for p in tmp_path.iterdir() if p.name != "m.pt"]  # no temporary left
    loaded = NMFModel.load(path, expected_domain=DOMAIN)
    assert loaded.sources == tone_model.sources and loaded.domain == DOMAIN
    assert loaded.config() == tone_model.config()
    torch.testing.assert_close(loaded.dictionaries, tone_model.dictionaries, rtol=0, atol=0)
    mix = torch.from_numpy(_tones(LOW, 1.0, 3) + _tones(HIGH, 1.0, 4))
    torch.testing.assert_close(loaded(mix), tone_model(mix), rtol=0, atol=0)


def test_load_rejects_wrong_domain_garbage_and_other_kinds(tone_model, tmp_path):
    path = tone_model.save(tmp_path / "m.pt")
    with pytest.raises(UserError, match="16000 Hz"):
        NMFModel.load(path, expected_domain=STFTSettings(512, 128, sample_rate=16000))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(UserError, match="garbage.pt"):
        NMFModel.load(garbage)
    with pytest.raises(UserError, match="not found"):
        NMFModel.load(tmp_path / "missing.pt")
    prior = tmp_path / "prior.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "kind": "ncsn_v1",
                "config": {}, "domain": {"kind": "mel", "frontend": {}}, "state_dict": {}}, prior)
    with pytest.raises(UserError, match="not an NMF model"):
        NMFModel.load(prior)
    with pytest.raises(UserError, match="nmf"):
        load_prior(path)  # an NMF model is not a prior


def test_a_model_saved_with_the_earlier_stft_domain_loads_and_separates_alike(tone_model, tmp_path):
    # checkpoints written before STFTSettings named only these keys (centred, zero padded)
    path = tone_model.save(tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["domain"] = {"kind": "stft", "sample_rate": SR, "n_fft": 512, "hop_length": 128, "window": "hann"}
    torch.save(payload, tmp_path / "old.pt")
    old = NMFModel.load(tmp_path / "old.pt", expected_domain=DOMAIN)
    assert old.domain == DOMAIN and old.domain.pad_mode == "constant" and old.domain.center
    mix = torch.from_numpy(_tones(LOW, 1.0, 3) + _tones(HIGH, 1.0, 4))
    torch.testing.assert_close(old(mix), tone_model(mix), rtol=0, atol=0)


def test_load_rejects_dictionaries_that_do_not_fit_the_domain(tone_model, tmp_path):
    path = tone_model.save(tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["domain"]["n_fft"] = 1024
    torch.save(payload, path)
    with pytest.raises(UserError, match="frequency bins"):
        NMFModel.load(path)


@pytest.mark.parametrize("keep, sources, message", [
    (slice(0, 1), ["low"], "two or more sources; got low"),
    (slice(0, 2), ["low", "low"], "source(s) low named twice"),
])
def test_load_refuses_a_model_of_one_source_or_of_a_source_twice(tone_model, tmp_path, keep, sources, message):
    # a one-source model would return the mixture as its stem; two sources of one name, one stem file
    path = tone_model.save(tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["dictionaries"] = payload["state_dict"]["dictionaries"][keep]
    payload["config"]["sources"] = sources
    torch.save(payload, path)
    with pytest.raises(UserError, match=re.escape(f"{path}: NMF")) as err:
        NMFModel.load(path)
    assert message in str(err.value)


def test_train_nmf_pools_the_tracks_of_several_datasets(tmp_path):
    import soundfile as sf

    from audiosep.separation.nmf import train_nmf

    roots = []
    for k, n_tracks in enumerate((2, 1)):
        root = tmp_path / f"set{k}"
        for i in range(n_tracks):
            folder = root / "train" / f"t{i}"
            folder.mkdir(parents=True)
            stems = {"low": _tones(LOW, 1.0, 10 * k + i)[0], "high": _tones(HIGH, 1.0, 10 * k + i + 5)[0]}
            for name, wav in (stems | {"mix": stems["low"] + stems["high"]}).items():
                sf.write(folder / f"{name}.wav", wav, SR)
        roots.append(root)
    with threadpool_limits(1):
        model = train_nmf(roots, tmp_path / "nmf.pt", n_atoms=3, n_iter=20, sample_rate=SR, n_fft=512,
                          hop_length=128, progress=False)
    training = torch.load(tmp_path / "nmf.pt", weights_only=False)["extra"]["training"]
    assert training["tracks"] == 3 and training["data"] == [str(r) for r in roots]
    assert model.sources == ("high", "low") and model.dictionaries.shape == (2, 257, 3)
