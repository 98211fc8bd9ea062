"""Metrics against closed forms and an explicit per-window SSIM derivation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from audiosep.eval.metrics import best_permutation, psnr, sdr, si_sdr, ssim


def _orthogonal_pair(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two random vectors with ⟨s, n⟩ = 0 exactly (up to rounding), unit norm each."""
    rng = np.random.default_rng(seed)
    s, n_ = rng.standard_normal((2, n))
    s /= np.linalg.norm(s)
    n_ -= (n_ @ s) * s
    n_ /= np.linalg.norm(n_)
    return s, n_


def test_si_sdr_scaled_copy_is_infinite_or_huge():
    s, _ = _orthogonal_pair(1000)
    assert si_sdr(s, 3.0 * s) > 200
    assert si_sdr(s, -0.5 * s) > 200  # a sign flip is still a scaled copy


@pytest.mark.parametrize("gain,noise_db", [(1.0, -10.0), (2.0, 0.0), (0.3, -25.0)])
def test_si_sdr_orthogonal_noise_closed_form(gain, noise_db):
    s, n = _orthogonal_pair(4096, seed=1)
    noise = n * 10 ** (noise_db / 20)  # ‖noise‖² = 10^(noise_db/10), ‖s‖² = 1
    expected = 10 * np.log10(gain**2 / 10 ** (noise_db / 10))
    assert si_sdr(s, gain * s + noise) == pytest.approx(expected, abs=1e-9)
    # plain SDR: the gain error also counts, ‖s − ŝ‖² = (1 − g)² + ‖noise‖²
    expected_sdr = -10 * np.log10((1 - gain) ** 2 + 10 ** (noise_db / 10))
    assert sdr(s, gain * s + noise) == pytest.approx(expected_sdr, abs=1e-9)


def test_sdr_of_half_gain():
    s, _ = _orthogonal_pair(256)
    assert sdr(s, 0.5 * s) == pytest.approx(10 * np.log10(4.0))


def test_si_sdr_batched_shapes_and_torch_input():
    rng = np.random.default_rng(2)
    ref = rng.standard_normal((3, 2, 500))
    est = ref + 0.1 * rng.standard_normal(ref.shape)
    out = si_sdr(ref, est)
    assert out.shape == (3, 2)
    for k in range(3):
        for c in range(2):
            assert out[k, c] == pytest.approx(float(si_sdr(ref[k, c], est[k, c])))
    np.testing.assert_allclose(si_sdr(torch.from_numpy(ref).float(), torch.from_numpy(est).float()), out, atol=1e-3)


def test_si_sdr_zero_mean_ignores_offsets():
    s, n = _orthogonal_pair(1024, seed=3)
    s, n = s - s.mean(), n - n.mean()
    est = 2 * s + 0.1 * n + 0.7  # a DC offset on top
    with_dc = si_sdr(s, est)
    without = si_sdr(s, est, zero_mean=True)
    assert without > with_dc
    ref_c, est_c = s, est - est.mean()
    alpha = est_c @ ref_c / (ref_c @ ref_c)
    expected = 10 * np.log10(np.sum((alpha * ref_c) ** 2) / np.sum((est_c - alpha * ref_c) ** 2))
    assert without == pytest.approx(expected, abs=1e-9)


def test_psnr_known_mse():
    rng = np.random.default_rng(4)
    img = rng.uniform(0, 1, (2, 28, 28))
    est = img + 0.1  # MSE = 0.01 → 20 dB
    np.testing.assert_allclose(psnr(img, est), [20.0, 20.0])
    np.testing.assert_allclose(psnr(img * 255, est * 255, data_range=255.0), [20.0, 20.0])
    delta = np.zeros((3, 8, 8))
    delta[0] = 0.2  # channel MSEs 0.04, 0, 0 → image MSE 0.04 / 3
    assert psnr(np.zeros((3, 8, 8)), delta, dim=(-3, -2, -1)) == pytest.approx(-10 * np.log10(0.04 / 3))
    assert np.isinf(psnr(img, img)).all()


def _ssim_by_windows(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    """SSIM from its definition: weighted local moments at every fully-inside 11×11 window."""
    t = np.arange(11) - 5
    w = np.exp(-(t**2) / (2 * 1.5**2))
    w = np.outer(w, w) / np.outer(w, w).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
            mx, my = np.sum(w * px), np.sum(w * py)
            vx, vy = np.sum(w * (px - mx) ** 2), np.sum(w * (py - my) ** 2)
            cxy = np.sum(w * (px - mx) * (py - my))
            values.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_matches_per_window_definition():
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 1, (17, 19))
    y = np.clip(0.8 * x + 0.2 * rng.uniform(0, 1, x.shape), 0, 1)
    assert ssim(x, y) == pytest.approx(_ssim_by_windows(x, y, 1.0), abs=1e-12)
    assert ssim(255 * x, 255 * y, data_range=255.0) == pytest.approx(_ssim_by_windows(x, y, 1.0), abs=1e-12)
    batch = ssim(np.stack([x, y]), np.stack([y, y]))
    np.testing.assert_allclose(batch, [_ssim_by_windows(x, y, 1.0), 1.0], atol=1e-12)


def test_ssim_identical_constant_and_shift():
    rng = np.random.default_rng(6)
    x = rng.uniform(0, 1, (16, 16))
    assert ssim(x, x) == pytest.approx(1.0)
    # constant images a and a + c: only the luminance term differs from 1
    a, c = 0.3, 0.2
    c1 = 0.01**2
    expected = (2 * a * (a + c) + c1) / (a**2 + (a + c) ** 2 + c1)
    assert ssim(np.full((12, 12), a), np.full((12, 12), a + c)) == pytest.approx(expected, abs=1e-12)
    # shifting a textured image changes only the luminance term (structure stays 1)
    assert ssim(x * 0.5, x * 0.5 + c) == pytest.approx(_ssim_by_windows(x * 0.5, x * 0.5 + c, 1.0), abs=1e-12)
    assert ssim(x * 0.5, x * 0.5 + c) < 1.0
    # a negated image has negative structure correlation
    assert ssim(x, 1 - x) < 0


def test_ssim_needs_11_pixels():
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(np.zeros((10, 20)), np.zeros((10, 20)))


def test_best_permutation_recovers_order():
    rng = np.random.default_rng(7)
    refs = rng.standard_normal((3, 2, 400))
    order = np.array([2, 0, 1])
    ests = refs[order] + 0.05 * rng.standard_normal(refs.shape)
    perm, permuted = best_permutation(refs, ests, si_sdr)
    np.testing.assert_array_equal(perm, [1, 2, 0])  # ests[1] is refs[0], ...
    np.testing.assert_allclose(permuted, ests[perm])
    # a perfect (infinite-score) match still works; an error metric minimises
    perm, _ = best_permutation(refs, refs[order], si_sdr)
    np.testing.assert_array_equal(perm, [1, 2, 0])
    mse = lambda r, e: np.mean((r - e) ** 2, axis=-1)  # noqa: E731
    perm, _ = best_permutation(refs, ests, mse, maximize=False)
    np.testing.assert_array_equal(perm, [1, 2, 0])


def test_permute_option_on_metrics():
    rng = np.random.default_rng(8)
    imgs = rng.uniform(0, 1, (2, 16, 16))
    est = imgs[::-1] + 0.01  # swapped, MSE 1e-4 → 40 dB
    np.testing.assert_allclose(psnr(imgs, est, permute=True), [40.0, 40.0])
    assert (psnr(imgs, est) < 20).all()
    np.testing.assert_allclose(ssim(imgs, imgs[::-1].copy(), permute=True), [1.0, 1.0])
    sig = rng.standard_normal((2, 300))
    assert (si_sdr(sig, 2 * sig[::-1], permute=True) > 200).all()
    np.testing.assert_allclose(sdr(sig, sig[::-1], permute=True), [np.inf, np.inf])


def test_best_permutation_rejects_fewer_estimates_than_references():
    with pytest.raises(ValueError, match="3 references but only 2 estimates"):
        best_permutation(np.zeros((3, 10)), np.zeros((2, 10)), si_sdr)
