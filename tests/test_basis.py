"""BASIS and its mixing models, checked against closed forms (Gaussian priors), numpy,
librosa and torch.autograd. No neural networks: every prior here is an analytic Gaussian."""
import math

import librosa
import numpy as np
import pytest
import scipy.linalg
import torch

from audiosep.errors import UserError
from audiosep.priors import Domain, Prior, sigma_per_sample
from audiosep.priors.denoising import tweedie_denoise
from audiosep.separation.basis import BasisConfig, basis_separate
from audiosep.separation.mixing import DbPowerMixing, LinearMixing
from audiosep.spectral.frontend import get_frontend

F64 = torch.float64


class GaussianPrior(Prior):
    """N(μ, s²) per feature; smoothed by noise σ it is N(μ, s² + σ²), score −(x − μ)/(s² + σ²).

    μ and s have the item shape (they broadcast over the batch).
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.mean, self.std = mean, std

    def score(self, x, sigma):
        sigma = sigma_per_sample(sigma, x).view(-1, *([1] * (x.dim() - 1)))
        return -(x - self.mean) / (self.std**2 + sigma**2)


def _gaussian_problem(n_mixtures=4, dim=8, seed=0):
    """Two Gaussian sources with per-feature μ ∈ [0.3, 0.6], s ∈ [0.15, 0.3]; mixtures m = x₁ + x₂ `(N, D)`."""
    gen = torch.Generator().manual_seed(seed)
    mu1, mu2 = (0.3 + 0.3 * torch.rand(2, dim, generator=gen, dtype=F64)).unbind()
    s1, s2 = (0.15 + 0.15 * torch.rand(2, dim, generator=gen, dtype=F64)).unbind()
    x1 = mu1 + s1 * torch.randn(n_mixtures, dim, generator=gen, dtype=F64)
    x2 = mu2 + s2 * torch.randn(n_mixtures, dim, generator=gen, dtype=F64)
    priors = [GaussianPrior(mu1, s1), GaussianPrior(mu2, s2)]
    return priors, x1 + x2, (mu1, s1, mu2, s2)


def _posterior(m, mu1, s1, mu2, s2):
    """Exact posterior of x₁ given x₁ + x₂ = m: mean μ₁ + s₁²/(s₁² + s₂²)·(m − μ₁ − μ₂), std s₁s₂/√(s₁² + s₂²)."""
    mean = mu1 + s1**2 / (s1**2 + s2**2) * (m - mu1 - mu2)
    return mean, s1 * s2 / (s1**2 + s2**2).sqrt()


# --- BASIS on Gaussian priors ------------------------------------------------------------

@pytest.mark.parametrize("update, factor, likelihood",
                         [("jacobi", 2, "gaussian"), ("gauss-seidel", 1, "gaussian"), ("jacobi", 2, "dirac")])
def test_chain_average_recovers_analytic_posterior_mean(update, factor, likelihood):
    # Tolerance: each element of the average of C independent chains has Monte Carlo
    # standard error SE = posterior std / √C. Langevin with a fixed step keeps a Gaussian
    # target's mean exact, and smoothing the priors by σ_L = 0.01 moves the mean by
    # < 0.1 SE here, so z = error/SE is ≈ N(0, 1): RMS(z) ≈ 1 and max |z| over 32 elements
    # below 4.5 (a 1-in-20 000 event per element). A bias of 1.1 SE would fail the RMS bound.
    priors, m, (mu1, s1, mu2, s2) = _gaussian_problem()
    chains = 400
    # (dirac: projected Langevin on the plane x₁ + x₂ = m samples p(x₁, x₂) restricted to it,
    # which is the same posterior)
    config = BasisConfig(update=update, grad_factor=factor, n_chains=chains, clamp=None, likelihood=likelihood)
    est = basis_separate(priors, m, LinearMixing([1, 1]), config, progress=False)
    mean, std = _posterior(m, mu1, s1, mu2, s2)
    se = std / math.sqrt(chains)
    z1 = (est[0] - mean) / se
    z2 = (est[1] - (m - mean)) / se  # E[x₂ | m] = m − E[x₁ | m]
    assert est.shape == (2, *m.shape)
    assert z1.pow(2).mean().sqrt() < 1.5 and z2.pow(2).mean().sqrt() < 1.5
    assert z1.abs().max() < 4.5 and z2.abs().max() < 4.5


def _stationary_residual_variance(update, eta, weight, factor, sigma, s1, s2):
    """Variance of r = x₁ + x₂ − m under the linear Langevin recursion x' = A·x + b + B·n at
    stationarity, per feature `(D,)`: the discrete Lyapunov equation S = A S Aᵀ + 2η·B Bᵀ."""
    out = []
    for a, b in zip(s1.tolist(), s2.tolist()):
        p1, p2, c = eta / (a**2 + sigma**2), eta / (b**2 + sigma**2), eta * weight * factor
        lower = np.eye(2) if update == "jacobi" else np.array([[1.0, 0.0], [c, 1.0]])  # GS: x₂ sees x₁'
        upper = np.array([[1 - p1 - c, -c], [-c if update == "jacobi" else 0.0, 1 - p2 - c]])
        inv = np.linalg.inv(lower)
        cov = scipy.linalg.solve_discrete_lyapunov(inv @ upper, 2 * eta * inv @ inv.T)
        out.append(cov.sum())
    return torch.tensor(out, dtype=F64)


@pytest.mark.parametrize("update", ["jacobi", "gauss-seidel"])
def test_final_samples_satisfy_the_mixture_constraint(update):
    # 500 mixtures × 8 features, one chain each: the residual x₁ + x₂ − m is at the final
    # level's Langevin equilibrium, an RMS below σ_L whose variance the Lyapunov equation
    # gives exactly; the mean of r²/var over 4000 values has a standard error of 2.2 %.
    priors, m, (_, s1, _, s2) = _gaussian_problem(n_mixtures=500, seed=1)
    config = BasisConfig(update=update, clamp=None)
    est = basis_separate(priors, m, LinearMixing([1, 1]), config, progress=False)
    residual = est.sum(dim=0) - m
    sigma_l = config.noise_levels()[-1]
    var = _stationary_residual_variance(update, config.step_sizes()[-1], config.constraint_weights()[-1],
                                        config.grad_factor, sigma_l, s1, s2)
    assert residual.pow(2).mean().sqrt() < sigma_l
    assert (residual.pow(2) / var).mean().item() == pytest.approx(1.0, abs=0.08)


@pytest.mark.parametrize("mixing", [LinearMixing([0.5, 0.5]), LinearMixing([1.0, 2.0, 0.5]),
                                    DbPowerMixing(db_lo=-90.0, db_hi=30.0)], ids=repr)
def test_dirac_likelihood_keeps_the_mixture_constraint_exactly(mixing):
    # every step is projected onto g(x) = m: after a whole run (corrections, init noise and
    # the Tweedie step included) the sources mix to the mixture to rounding error, and the
    # projection itself leaves sources that already satisfy it unchanged
    k = mixing.n_sources if isinstance(mixing, LinearMixing) else 2
    gen = torch.Generator().manual_seed(5)
    m = 0.2 + 0.6 * torch.rand(3, 1, 6, 5, generator=gen, dtype=F64)
    priors = [GaussianPrior(torch.full((1, 6, 5), 0.3 + 0.1 * j, dtype=F64), torch.full((1, 6, 5), 0.2, dtype=F64))
              for j in range(k)]
    config = BasisConfig(likelihood="dirac", n_levels=3, steps_per_level=4, corrections=1, init="mixture",
                         init_noise=True, tweedie=True, clamp=None, delta=1e-4)
    est = basis_separate(priors, m, mixing, config, progress=False)
    assert torch.allclose(mixing.mix(est), m, atol=1e-12, rtol=0)
    assert torch.allclose(mixing.project(est, m), est, atol=1e-12, rtol=0)
    far = est + torch.randn(est.shape, generator=gen, dtype=F64)
    assert torch.allclose(mixing.mix(mixing.project(far, m)), m, atol=1e-12, rtol=0)


def test_db_power_projection_keeps_each_sources_share_of_the_mixture():
    mixing = DbPowerMixing(db_lo=-90.0, db_hi=30.0)
    gen = torch.Generator().manual_seed(6)
    x, m = torch.rand(2, 4, 7, generator=gen, dtype=F64), torch.rand(4, 7, generator=gen, dtype=F64)
    projected = mixing.project(x, m)
    assert torch.allclose(mixing.jacobian(projected), mixing.jacobian(x), atol=1e-12)
    assert torch.allclose(mixing.mix(projected), m, atol=1e-12)


def test_corrections_and_dirac_settings_are_validated():
    with pytest.raises(UserError, match="likelihood"):
        BasisConfig(likelihood="laplace")
    with pytest.raises(UserError, match="jacobi"):
        BasisConfig(likelihood="dirac", update="gauss-seidel")
    with pytest.raises(UserError, match="corrections"):
        BasisConfig(corrections=-1)


def test_tweedie_denoise_is_the_posterior_mean_of_the_clean_sample():
    # x = x₀ + σz with x₀ ~ N(μ, s²): E[x₀ | x] = μ + s²/(s² + σ²)·(x − μ), and its MSE is s²σ²/(s² + σ²).
    gen = torch.Generator().manual_seed(3)
    mu, s, sigma = torch.tensor([0.2, 0.7], dtype=F64), torch.tensor([0.1, 0.3], dtype=F64), 0.2
    clean = mu + s * torch.randn(20000, 2, generator=gen, dtype=F64)
    noisy = clean + sigma * torch.randn(20000, 2, generator=gen, dtype=F64)
    denoised = tweedie_denoise(GaussianPrior(mu, s), noisy, sigma)
    torch.testing.assert_close(denoised, mu + s**2 / (s**2 + sigma**2) * (noisy - mu), rtol=0, atol=1e-12)
    mmse = s**2 * sigma**2 / (s**2 + sigma**2)
    torch.testing.assert_close((denoised - clean).pow(2).mean(dim=0), mmse, rtol=0.05, atol=0)


def test_tweedie_final_step_shrinks_each_source_towards_its_mean_exactly():
    priors, m, (mu1, s1, mu2, s2) = _gaussian_problem()
    plain = basis_separate(priors, m, LinearMixing([1, 1]), BasisConfig(clamp=None, steps_per_level=10), progress=False)
    tweedie = basis_separate(priors, m, LinearMixing([1, 1]), BasisConfig(clamp=None, steps_per_level=10, tweedie=True),
                             progress=False)
    sigma_l = 0.01
    for k, (mu, s) in enumerate([(mu1, s1), (mu2, s2)]):
        expected = mu + s**2 / (s**2 + sigma_l**2) * (plain[k] - mu)
        torch.testing.assert_close(tweedie[k], expected, rtol=0, atol=1e-12)


def test_same_seed_gives_identical_output_and_another_seed_does_not():
    priors, m, _ = _gaussian_problem()
    mixing = LinearMixing([1, 1])

    def run(seed=None, generator=None):
        config = BasisConfig(steps_per_level=5, seed=seed if seed is not None else 0)
        return basis_separate(priors, m, mixing, config, generator=generator, progress=False)

    a = run(seed=7)
    assert torch.equal(a, run(seed=7))
    assert torch.equal(a, run(generator=torch.Generator().manual_seed(7)))
    assert not torch.equal(a, run(seed=8))


@pytest.mark.parametrize("how", ["init", "mixture"])
def test_chains_start_from_the_given_initialisation(how):
    # With a vanishing step the chains do not move: the output is where they started.
    priors, m, _ = _gaussian_problem()
    start = torch.stack([0.25 * m, 0.75 * m])
    config = BasisConfig(steps_per_level=1, delta=1e-20, clamp=None, init="mixture", n_chains=2)
    out = basis_separate(priors, m, LinearMixing([1, 1]), config, init=start if how == "init" else None,
                         progress=False)
    expected = start if how == "init" else torch.stack([m / 2, m / 2])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_chains_averaged_as_powers_match_numpy():
    # Chains are stacked chain-major into the batch, so one chain over the mixture repeated
    # C times runs exactly the C chains; their power mean, computed in numpy, is the output.
    fe = get_frontend("audiosourcesep")
    mixing = DbPowerMixing(fe)
    priors = [GaussianPrior(torch.full((6,), 0.5, dtype=F64), torch.full((6,), 0.1, dtype=F64)),
              GaussianPrior(torch.full((6,), 0.6, dtype=F64), torch.full((6,), 0.1, dtype=F64))]
    m = torch.tensor([[0.62, 0.65, 0.7, 0.55, 0.6, 0.8]], dtype=F64)
    config = dict(steps_per_level=5, sigma_max=0.2)
    averaged = basis_separate(priors, m, mixing, BasisConfig(n_chains=3, chain_average="power", **config),
                              progress=False)
    chains = basis_separate(priors, m.repeat(3, 1), mixing, BasisConfig(**config), progress=False).numpy()
    db = fe.db_lo + chains * (fe.db_hi - fe.db_lo)
    expected_db = 10 * np.log10(np.mean(10 ** (db / 10), axis=1))
    np.testing.assert_allclose(fe.db_lo + averaged[:, 0].numpy() * (fe.db_hi - fe.db_lo), expected_db, atol=1e-9)


# --- mixing models ----------------------------------------------------------------------

def _random_db_sources(k=3, shape=(2, 5, 7), seed=0):
    """dB sources `(K, *shape)` in [-90, 5] dB (their power sum stays below the 20 dB ceiling)."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-90.0, 5.0, size=(k, *shape))


def test_db_power_mix_is_the_log_of_the_summed_powers():
    fe = get_frontend("audiosourcesep")
    mixing = DbPowerMixing(fe)
    db = _random_db_sources()
    unit = torch.from_numpy((db - fe.db_lo) / (fe.db_hi - fe.db_lo))
    expected = 10 * np.log10(np.sum(10 ** (db / 10), axis=0))
    np.testing.assert_allclose(mixing.mix_db(unit).numpy(), expected, atol=1e-10)
    np.testing.assert_allclose(mixing.mix(unit).numpy(), (expected - fe.db_lo) / (fe.db_hi - fe.db_lo), atol=1e-12)


def test_db_power_model_reproduces_the_front_end_mixture():
    # Sources given as mel powers, normalised by the front end; the model's mixture of the
    # normalised sources equals the front end's normalisation of the summed power (and
    # librosa's dB of it), where the earlier formula on [0, 1] values is off by > 2 units (> 240 dB).
    fe = get_frontend("audiosourcesep")
    mixing = DbPowerMixing(db_lo=fe.db_lo, db_hi=fe.db_hi)
    power = 10 ** (_random_db_sources(seed=1) / 10)
    sources = fe.to_unit(torch.from_numpy(power))
    mixture = fe.to_unit(torch.from_numpy(power.sum(axis=0)))
    torch.testing.assert_close(mixing.mix(sources), mixture, rtol=0, atol=1e-12)
    reference_db = librosa.power_to_db(power.sum(axis=0), ref=1.0, amin=1e-10, top_db=None)
    np.testing.assert_allclose(mixing.mix_db(sources).numpy(), reference_db, atol=1e-9)

    faulty = 10 * torch.log10((10 ** (sources / 10)).sum(dim=0))  # the dB formula applied to [0, 1] values
    assert (faulty - mixture).abs().min() > 2.0
    assert ((faulty - mixture) * (fe.db_hi - fe.db_lo)).abs().min() > 240.0


def test_db_power_gradient_follows_the_louder_source_unlike_the_faulty_one():
    # Two sources 20 dB apart: the louder one carries 1/(1 + 10^-2) of the mixture power,
    # so the constraint moves it, not the quiet one. Softmax over [0, 1] values gives ≈ 1/2 each.
    fe = get_frontend("audiosourcesep")
    unit = torch.tensor([[0.0], [-20.0]], dtype=F64) / (fe.db_hi - fe.db_lo) + 0.8
    jac = DbPowerMixing(fe).jacobian(unit)
    torch.testing.assert_close(jac[:, 0], torch.tensor([1 / 1.01, 0.01 / 1.01], dtype=F64), rtol=0, atol=1e-12)
    faulty = torch.softmax(unit, dim=0)
    assert (faulty[0] - 0.5).abs().item() < 0.05


@pytest.mark.parametrize("model", [LinearMixing([1.0, 0.5, 2.0]), DbPowerMixing(db_lo=-100, db_hi=20)],
                         ids=["linear", "db-power"])
@pytest.mark.parametrize("factor", [1, 2])
def test_constraint_grad_matches_autograd(model, factor):
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(3, 2, 4, 5, generator=gen, dtype=F64, requires_grad=True)
    m = torch.rand(2, 4, 5, generator=gen, dtype=F64)
    (grad,) = torch.autograd.grad((model.mix(x) - m).pow(2).sum() * factor / 2, x)
    torch.testing.assert_close(model.constraint_grad(x.detach(), m, factor), grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("model", [LinearMixing([1.0, 0.5]), DbPowerMixing(db_lo=-100, db_hi=20)],
                         ids=["linear", "db-power"])
def test_split_satisfies_the_mixture_exactly(model):
    m = torch.rand(3, 4, generator=torch.Generator().manual_seed(4), dtype=F64)
    torch.testing.assert_close(model.mix(model.split(m, 2)), m, rtol=0, atol=1e-12)


# --- errors -------------------------------------------------------------------------------

def test_config_rejects_bad_values():
    for bad in ({"grad_factor": 3}, {"update": "sor"}, {"init": "zeros"}, {"clamp": (1.0, 0.0)},
                {"n_chains": 0}, {"sigmas": (0.1, 0.5)}, {"delta": 0.0}, {"chain_average": "median"}):
        with pytest.raises(UserError):
            BasisConfig(**bad)


def test_mismatched_priors_and_divergence_raise_user_errors():
    priors, m, _ = _gaussian_problem()
    with pytest.raises(UserError, match="3 weights"):
        basis_separate(priors, m, LinearMixing([1, 1, 1]), progress=False)
    with pytest.raises(UserError, match="dB-power"):
        basis_separate(priors, m, LinearMixing([1, 1]), BasisConfig(chain_average="power"), progress=False)
    with pytest.raises(UserError, match="diverged at noise level 1"):
        basis_separate(priors, m, LinearMixing([1, 1]), BasisConfig(delta=0.1), progress=False)
    fe = get_frontend("audiosourcesep")
    mel = GaussianPrior(priors[0].mean, priors[0].std)
    mel.domain = Domain.mel(fe)
    with pytest.raises(UserError, match=r"dB range \[-100.0, 20.0\]"):
        basis_separate([mel, mel], m, DbPowerMixing(db_lo=-80, db_hi=0), progress=False)
