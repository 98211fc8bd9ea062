"""Signal and image quality metrics: SI-SDR, SDR, PSNR, SSIM, and best-permutation matching.

Every metric takes numpy arrays or torch tensors (moved to CPU, computed in float64),
broadcasts `reference` against `estimate`, reduces over the signal axes stated in its
docstring and returns a numpy float64 array of the remaining leading shape (a 0-d array
for a single pair).

With `permute=True` the first axis indexes K sources, `(K, ...)`: the estimates are first
reordered by `best_permutation` under that same metric, then scored.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

Metric = Callable[[np.ndarray, np.ndarray], np.ndarray]

# Wang, Bovik, Sheikh & Simoncelli (2004), "Image quality assessment: from error visibility
# to structural similarity": 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03.
SSIM_WIN_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def as_numpy(x) -> np.ndarray:
    """An array-like or (CPU or GPU) torch tensor as a float64 numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _ratio_db(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """10·log10(num / den), giving +inf for a zero denominator (and NaN for 0 / 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return 10.0 * np.log10(num / den)


def _pair(reference, estimate) -> tuple[np.ndarray, np.ndarray]:
    ref, est = as_numpy(reference), as_numpy(estimate)
    try:
        np.broadcast_shapes(ref.shape, est.shape)
    except ValueError:
        raise ValueError(
            f"reference shape {ref.shape} and estimate shape {est.shape} do not broadcast"
        ) from None
    return ref, est


def _maybe_permuted(metric: Metric, ref, est, permute: bool) -> np.ndarray:
    """Score `est` against `ref`, after reordering the estimates (axis 0) if `permute`."""
    if permute:
        _, est = best_permutation(ref, est, metric)
    return metric(ref, est)


def _si_sdr(ref: np.ndarray, est: np.ndarray, zero_mean: bool = False) -> np.ndarray:
    if zero_mean:
        ref = ref - ref.mean(axis=-1, keepdims=True)
        est = est - est.mean(axis=-1, keepdims=True)
    energy = np.sum(ref**2, axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.sum(ref * est, axis=-1, keepdims=True) / energy
    target = scale * ref
    return _ratio_db(np.sum(target**2, axis=-1), np.sum((est - target) ** 2, axis=-1))


def si_sdr(reference, estimate, zero_mean: bool = False, permute: bool = False) -> np.ndarray:
    """Scale-invariant SDR (Le Roux et al. 2019) in dB over the last axis.

    With α = ⟨ŝ, s⟩ / ‖s‖²: SI-SDR = 10·log10(‖α s‖² / ‖ŝ − α s‖²).

    Args:
        reference, estimate: signals `(..., samples)` (broadcast against each other),
            e.g. `(K, C, N)` gives one value per source and channel.
        zero_mean: subtract each signal's mean first (some toolkits' convention).
        permute: `(K, ...)` inputs; match estimates to references first (best mean SI-SDR).
    Returns:
        dB, shape `(...)`; +inf for an exact scaled copy, NaN for a silent reference.
    """
    ref, est = _pair(reference, estimate)
    return _maybe_permuted(lambda r, e: _si_sdr(r, e, zero_mean), ref, est, permute)


def _sdr(ref: np.ndarray, est: np.ndarray) -> np.ndarray:
    return _ratio_db(np.sum(ref**2, axis=-1), np.sum((ref - est) ** 2, axis=-1))


def sdr(reference, estimate, permute: bool = False) -> np.ndarray:
    """Plain signal-to-distortion ratio 10·log10(‖s‖² / ‖s − ŝ‖²) in dB over the last axis.

    Not BSSEval's SDR (no distortion filter is allowed): a gain error counts as distortion.

    Args:
        reference, estimate: signals `(..., samples)`, broadcast against each other.
        permute: `(K, ...)` inputs; match estimates to references first (best mean SDR).
    Returns:
        dB, shape `(...)`; +inf when the estimate equals the reference.
    """
    ref, est = _pair(reference, estimate)
    return _maybe_permuted(_sdr, ref, est, permute)


def _psnr(ref: np.ndarray, est: np.ndarray, data_range: float, dim) -> np.ndarray:
    mse = np.mean((ref - est) ** 2, axis=dim)
    return _ratio_db(np.full_like(mse, float(data_range) ** 2), mse)


def psnr(
    reference,
    estimate,
    data_range: float = 1.0,
    dim: int | tuple[int, ...] = (-2, -1),
    permute: bool = False,
) -> np.ndarray:
    """Peak signal-to-noise ratio 10·log10(data_range² / MSE) in dB.

    For images in [0, 1] (data_range 1) this is −10·log10(MSE), the BASIS paper's measure.

    Args:
        reference, estimate: images `(..., H, W)`, broadcast against each other.
        data_range: the span of valid pixel values (1 for [0, 1], 255 for uint8 scales).
        dim: the axes the MSE is taken over; (-2, -1) gives one value per image plane;
            use (-3, -2, -1) for one value per `(C, H, W)` colour image.
        permute: `(K, ...)` inputs; match estimates to references first (best mean PSNR).
    Returns:
        dB, the input shape without `dim`; +inf for identical images.
    """
    ref, est = _pair(reference, estimate)
    return _maybe_permuted(lambda r, e: _psnr(r, e, data_range, dim), ref, est, permute)


def _gaussian_window(size: int, sigma: float) -> np.ndarray:
    """A normalised 1-D Gaussian of `size` taps (odd) centred on the middle tap."""
    t = np.arange(size) - (size - 1) / 2
    g = np.exp(-(t**2) / (2 * sigma**2))
    return g / g.sum()


def _valid_filter2d(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 2-D filtering of `(..., H, W)` by `g ⊗ g`, 'valid' region only.

    Returns `(..., H - len(g) + 1, W - len(g) + 1)`.
    """
    rows = np.lib.stride_tricks.sliding_window_view(x, len(g), axis=-1) @ g
    return np.lib.stride_tricks.sliding_window_view(rows, len(g), axis=-2) @ g


def _ssim(ref: np.ndarray, est: np.ndarray, data_range: float) -> np.ndarray:
    ref, est = np.broadcast_arrays(ref, est)
    if min(ref.shape[-2:]) < SSIM_WIN_SIZE:
        raise ValueError(f"ssim needs images of at least {SSIM_WIN_SIZE}x{SSIM_WIN_SIZE}, got {ref.shape[-2:]}")
    g = _gaussian_window(SSIM_WIN_SIZE, SSIM_SIGMA)
    mu_x, mu_y = _valid_filter2d(ref, g), _valid_filter2d(est, g)
    var_x = _valid_filter2d(ref * ref, g) - mu_x**2
    var_y = _valid_filter2d(est * est, g) - mu_y**2
    cov = _valid_filter2d(ref * est, g) - mu_x * mu_y
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return ssim_map.mean(axis=(-2, -1))


def ssim(reference, estimate, data_range: float = 1.0, permute: bool = False) -> np.ndarray:
    """Mean structural similarity (Wang et al. 2004) of grey-level images.

    Local statistics use an 11×11 Gaussian window (σ = 1.5), population (weighted)
    moments, C₁ = (0.01·L)², C₂ = (0.03·L)² with L = `data_range`; the SSIM map is
    averaged over the window positions that lie fully inside the image (the original
    MATLAB 'valid' filtering). This is the computation of scikit-image's
    `structural_similarity(..., gaussian_weights=True, use_sample_covariance=False)`,
    which crops the same border.

    Args:
        reference, estimate: images `(..., H, W)`, H and W ≥ 11, broadcast together.
        data_range: the span of valid pixel values (1 for [0, 1]).
        permute: `(K, ...)` inputs; match estimates to references first (best mean SSIM).
    Returns:
        shape `(...)`, values in [-1, 1]; 1 for identical images.
    """
    ref, est = _pair(reference, estimate)
    return _maybe_permuted(lambda r, e: _ssim(r, e, data_range), ref, est, permute)


def best_permutation(
    references, estimates, metric: Metric, maximize: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Reorder estimates to best match references (Hungarian assignment).

    The score of pairing reference i with estimate j is the mean over everything but the
    first axis of `metric(references[i], estimates[j])`; the assignment maximising (or,
    with `maximize=False`, minimising) the total score is found by
    `scipy.optimize.linear_sum_assignment`. NaN scores count as the worst possible,
    infinite ones as very good/bad but finite.

    Args:
        references, estimates: `(J, ...)` and `(K, ...)`, sources stacked first (numpy or
            torch), K ≥ J: with more estimates than references (a model that decodes K
            sources of a J-source mixture) the J best-matching estimates are chosen.
        metric: broadcasting function `(ref, est) -> scores`, e.g. `si_sdr` or `psnr`.
        maximize: True for similarity metrics (dB, SSIM), False for errors (MSE).
    Returns:
        (perm `(J,)` int, estimates[perm] as float64 numpy): `estimates[perm[i]]` is the
        estimate assigned to reference i.
    """
    ref, est = as_numpy(references), as_numpy(estimates)
    if ref.shape[0] > est.shape[0]:
        raise ValueError(f"{ref.shape[0]} references but only {est.shape[0]} estimates")
    scores = np.asarray(metric(ref[:, None], est[None, :]), dtype=np.float64)
    scores = scores.reshape(ref.shape[0], est.shape[0], -1).mean(axis=-1)
    big = 1e12
    scores = np.nan_to_num(scores, nan=-big if maximize else big, posinf=big, neginf=-big)
    rows, cols = linear_sum_assignment(scores, maximize=maximize)
    perm = cols[np.argsort(rows)]
    return perm, est[perm]


def image_separation_scores(references, estimates, data_range: float = 1.0) -> dict[str, np.ndarray]:
    """PSNR and SSIM of separated images, per mixture, with the best source assignment.

    For each mixture the J references are matched to J of the K ≥ J estimates by
    `best_permutation` under PSNR (per `(C, H, W)` image); PSNR is then averaged over the
    J sources (the BASIS paper's measure), and so is SSIM (mean over channels of
    grey-level SSIM).

    Args:
        references: `(M, J, C, H, W)`; estimates: `(M, K, C, H, W)`, same units.
        data_range: the span of valid pixel values (1 for [0, 1]).
    Returns:
        {"psnr": `(M,)` dB, "ssim": `(M,)`}.
    """
    ref, est = as_numpy(references), as_numpy(estimates)
    if ref.ndim != 5 or est.ndim != 5 or ref.shape[0] != est.shape[0] or ref.shape[2:] != est.shape[2:]:
        raise ValueError(f"need references (M, J, C, H, W) and estimates (M, K, C, H, W), "
                         f"got {ref.shape} and {est.shape}")

    def image_psnr(r: np.ndarray, e: np.ndarray) -> np.ndarray:
        return _psnr(r, e, data_range, (-3, -2, -1))

    psnrs, ssims = np.empty(ref.shape[0]), np.empty(ref.shape[0])
    for i in range(ref.shape[0]):
        _, matched = best_permutation(ref[i], est[i], image_psnr)
        psnrs[i] = image_psnr(ref[i], matched).mean()
        ssims[i] = _ssim(ref[i], matched, data_range).mean() if min(ref.shape[-2:]) >= SSIM_WIN_SIZE else np.nan
    return {"psnr": psnrs, "ssim": ssims}
