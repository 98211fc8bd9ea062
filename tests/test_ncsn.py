"""NCSN: σ schedules, the NCSNv2 rules (against the paper and closed forms), networks, DSM loss."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf
from scipy.spatial.distance import pdist
from scipy.stats import norm

from audiosep.config import from_dict
from audiosep.priors import NCSNConfig, NCSNv1, NCSNv2, Prior, build_ncsn, dsm_loss, geometric_sigmas
from audiosep.priors.ncsn import (
    InstanceNorm2dPlus,
    gamma_ratio,
    langevin_step_size,
    langevin_variance_ratio,
    max_pairwise_distance,
    num_levels,
)


# --- schedules and the NCSNv2 rules -------------------------------------------------------

def test_basis_schedule_matches_reference_values():
    # REFERENCE.md, BASIS: 1.0, 0.599, 0.359, 0.215, 0.129, 0.0774, 0.0464, 0.0278, 0.0167, 0.01
    expected = [1.0, 0.599, 0.359, 0.215, 0.129, 0.0774, 0.0464, 0.0278, 0.0167, 0.01]
    assert [float(f"{s:.3g}") for s in geometric_sigmas(1.0, 0.01, 10).tolist()] == expected
    np.testing.assert_allclose(geometric_sigmas(50.0, 0.01, 232)[[0, -1]].numpy(), [50.0, 0.01], rtol=1e-12)


@pytest.mark.parametrize("dim", [3072, 96 * 64, 12288])
def test_gamma_solves_the_technique_2_equation(dim):
    gamma = gamma_ratio(dim)
    root = math.sqrt(2 * dim)
    assert gamma > 1
    mass = norm.cdf(root * (gamma - 1) + 3 * gamma) - norm.cdf(root * (gamma - 1) - 3 * gamma)
    assert mass == pytest.approx(0.5, abs=1e-9)


def test_num_levels_for_cifar10_near_paper():
    # Song & Ermon 2020 use L = 232 for CIFAR-10 (σ₁ = 50, σ_L = 0.01, D = 3072). Solving the
    # stated equation exactly gives γ = 1.0398 → L = 220; the paper's γ = 5000^(1/231) = 1.0376
    # makes the left side ≈ 0.567 instead of 0.5 (the same ~5 % gap for all its datasets).
    levels = num_levels(50.0, 0.01, 3072)
    assert levels == math.ceil(1 + math.log(5000) / math.log(gamma_ratio(3072)))
    assert abs(levels - 232) / 232 < 0.06


@pytest.mark.parametrize("sigma_max, levels, n_steps, paper_eps", [
    (50.0, 232, 5, 6.2e-6),   # CIFAR-10
    (90.0, 500, 5, 3.3e-6),   # CelebA 64×64
])
def test_step_size_reproduces_paper_values(sigma_max, levels, n_steps, paper_eps):
    gamma = (sigma_max / 0.01) ** (1 / (levels - 1))
    eps = langevin_step_size(0.01, gamma, n_steps)
    assert eps == pytest.approx(paper_eps, rel=0.02)
    ratio = langevin_variance_ratio(eps, 0.01, gamma, n_steps)
    for other in (0.8 * eps, 1.25 * eps):  # the ratio is closest to 1 at ε
        assert langevin_variance_ratio(other, 0.01, gamma, n_steps) > ratio


def test_variance_ratio_matches_simulated_langevin():
    # Langevin on N(0, σᵢ²) from N(0, γ²σᵢ²): x ← x + α·(−x/σᵢ²) + √(2α)·z, α = ε σᵢ²/σ_L².
    sigma_min, sigma_i, gamma, eps, n_steps = 0.1, 0.5, 1.5, 2e-3, 5
    alpha = eps * sigma_i**2 / sigma_min**2
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400_000, generator=gen, dtype=torch.float64) * gamma * sigma_i
    for _ in range(n_steps):
        x = x - alpha * x / sigma_i**2 + math.sqrt(2 * alpha) * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    simulated = x.var().item() / sigma_i**2
    assert simulated == pytest.approx(langevin_variance_ratio(eps, sigma_min, gamma, n_steps), rel=0.01)


def test_max_pairwise_distance_matches_scipy():
    samples = torch.randn(50, 2, 3, 4, generator=torch.Generator().manual_seed(1))
    expected = pdist(samples.reshape(50, -1).numpy().astype(np.float64)).max()
    assert max_pairwise_distance(samples, chunk=7) == pytest.approx(expected, rel=1e-12)


def test_build_ncsn_applies_v2_rules_when_asked():
    samples = torch.rand(20, 1, 6, 5, generator=torch.Generator().manual_seed(2))
    config = from_dict(NCSNConfig, {"version": "v2", "nf": 4, "ch_mult": [1, 2], "sigma_max": None,
                                    "sigma_min": 0.01, "n_levels": None})
    model = build_ncsn(config, samples)
    distance = pdist(samples.reshape(20, -1).numpy().astype(np.float64)).max()
    assert isinstance(model, NCSNv2)
    assert model.sigmas[0].item() == pytest.approx(distance, rel=1e-6)
    assert model.n_levels == num_levels(distance, 0.01, 30)
    v1 = build_ncsn(from_dict(NCSNConfig, {"version": "v1", "nf": 4, "ch_mult": [1, 2]}))
    np.testing.assert_allclose(v1.sigmas.numpy(), np.geomspace(1.0, 0.01, 10), rtol=1e-6)


# --- networks -----------------------------------------------------------------------------

def test_instance_norm_plus_matches_definition():
    torch.manual_seed(0)
    norm_layer = InstanceNorm2dPlus(5, n_levels=3)
    x = torch.randn(4, 5, 6, 7) * 3 + 1
    level = torch.tensor([0, 2, 1, 2])
    mu = x.mean(dim=(2, 3))
    mu_hat = (mu - mu.mean(1, keepdim=True)) / torch.sqrt(mu.var(1, keepdim=True, unbiased=False) + 1e-5)
    gamma, alpha = norm_layer.scale[level].chunk(2, dim=1)
    beta = norm_layer.bias[level]
    expected = (gamma[..., None, None] * nnf.instance_norm(x, eps=1e-5)
                + gamma[..., None, None] * alpha[..., None, None] * mu_hat[..., None, None] + beta[..., None, None])
    torch.testing.assert_close(norm_layer(x, level), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [NCSNv1, NCSNv2])
@pytest.mark.parametrize("shape", [(2, 1, 16, 16), (3, 1, 15, 13), (1, 2, 9, 22)])
def test_networks_keep_any_input_shape(cls, shape):
    model = cls(channels=shape[1], nf=4, ch_mult=(1, 2, 2))
    out = model.score(torch.rand(shape), 0.3)
    assert out.shape == shape and torch.isfinite(out).all()


def test_v2_score_scales_as_one_over_sigma():
    torch.manual_seed(0)
    model = NCSNv2(nf=4, ch_mult=(1, 2))
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        s1 = model.score(x, torch.tensor([0.1, 0.4]))
        s2 = model.score(x, torch.tensor([0.2, 0.8]))
        by_level = model.score(x, torch.tensor([3, 3]))
        at_sigma = model.score(x, model.sigmas[3].item())
    torch.testing.assert_close(s2, s1 / 2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(by_level, at_sigma, rtol=1e-6, atol=1e-6)


def test_v1_uses_nearest_level():
    torch.manual_seed(0)
    model = NCSNv1(nf=4, ch_mult=(1, 2))  # σ = 1.0, 0.599, 0.359, ...
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        by_sigma = model.score(x, torch.tensor([0.55, 0.95, 0.011]))
        by_level = model.score(x, torch.tensor([1, 0, 9]))
        other = model.score(x, torch.tensor([2, 1, 8]))
    torch.testing.assert_close(by_sigma, by_level, rtol=0, atol=0)
    assert not torch.allclose(by_sigma, other)


def test_default_size_fits_cpu_budget():
    for cls in (NCSNv1, NCSNv2):
        n_params = sum(p.numel() for p in cls().parameters())
        assert 200_000 < n_params < 1_500_000


# --- denoising score matching -------------------------------------------------------------

class _LinearScore(Prior):
    """s(x, σ) = −c·x, the family containing the exact score −x/(1 + σ²) of N(0, I) data."""

    def __init__(self, c):
        super().__init__()
        self.c = c

    def score(self, x, sigma):
        return -self.c * x


@pytest.mark.parametrize("sigma", [0.1, 0.5, 2.0])
def test_dsm_loss_matches_closed_form_and_is_minimal_at_true_score(sigma):
    # x ~ N(0, I_D), x̃ = x + σz: E ½‖−c x̃ + z/σ‖² σ² = D σ²/2 · (c²(1 + σ²) − 2c + 1/σ²),
    # minimal at c = 1/(1 + σ²) (the score of N(0, (1 + σ²)I)) with value D / (2(1 + σ²)).
    torch.manual_seed(0)
    dim, c_opt = 64, 1 / (1 + sigma**2)
    x = torch.randn(20_000, 1, 8, 8, dtype=torch.float64)
    losses = {}
    for c in (0.7 * c_opt, c_opt, 1.3 * c_opt):
        torch.manual_seed(1)  # the same noise for every c: the comparison is not blurred by sampling
        losses[c] = dsm_loss(_LinearScore(c), x, sigmas=torch.tensor([sigma])).item()
        closed = dim * sigma**2 / 2 * (c**2 * (1 + sigma**2) - 2 * c + 1 / sigma**2)
        assert losses[c] == pytest.approx(closed, rel=0.01)
    assert losses[c_opt] == pytest.approx(dim / (2 * (1 + sigma**2)), rel=0.01)
    assert losses[c_opt] < min(losses[0.7 * c_opt], losses[1.3 * c_opt])


def test_dsm_loss_averages_over_levels():
    torch.manual_seed(1)
    sigmas = torch.tensor([1.0, 0.1], dtype=torch.float64)
    x = torch.randn(40_000, 1, 4, 4, dtype=torch.float64)
    loss = dsm_loss(_LinearScore(0.0), x, sigmas=sigmas, anneal_power=2.0)
    # s = 0: ½‖z/σ‖²σ² = ½‖z‖², expectation D/2 at every level
    assert loss.item() == pytest.approx(8.0, rel=0.01)


def _toy_batch(n, gen):
    """16×16 'spectrograms': a random harmonic comb (spacing 3–5 bins) starting at a random frame."""
    x = torch.zeros(n, 1, 16, 16)
    spacing = torch.randint(3, 6, (n,), generator=gen)
    onset = torch.randint(0, 8, (n,), generator=gen)
    for i in range(n):
        x[i, 0, :: spacing[i], onset[i]:] = 0.8
    return x


@pytest.mark.parametrize("cls", [NCSNv1, NCSNv2])
def test_tiny_ncsn_learns_toy_data(cls):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = cls(nf=8, ch_mult=(1, 2), sigmas=geometric_sigmas(1.0, 0.05, 4).tolist())
    assert sum(p.numel() for p in model.parameters()) < 40_000
    held_out = _toy_batch(64, gen)

    def held_out_loss():
        with torch.random.fork_rng():
            torch.manual_seed(123)
            with torch.no_grad():
                return dsm_loss(model, held_out).item()

    before = held_out_loss()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(50):
        loss = dsm_loss(model, _toy_batch(16, gen))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = held_out_loss()
    assert after < 0.6 * before, (before, after)
