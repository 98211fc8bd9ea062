"""BASIS: source separation by annealed Langevin dynamics over K per-source priors
(Jayaram & Thickstun, ICML 2020).

For noise levels σ₁ > … > σ_L and T steps per level, every source k follows

    xₖ ← xₖ + ηᵢ·(sₖ(xₖ, σᵢ) − λᵢ·c·(g(x) − m)·∂g/∂xₖ) + √(2ηᵢ)·z,    z ~ N(0, I),

with sₖ the score of source k's prior, g the mixing model (`mixing.py`), m the mixture,
ηᵢ = δ·σᵢ²/σ_L² and λᵢ = multiplier/γᵢ² (γᵢ = σᵢ by default: the likelihood noise is
annealed with the prior noise). c ∈ {1, 2} is the gradient factor: c = 2 differentiates
‖g(x) − m‖² exactly (the paper's NCSN/MNIST code), c = 1 uses the residual directly (its
Glow/CIFAR code). The drift is the gradient of log p_σᵢ(xₖ) + log N(m; g(x), γ_eff²I) with
γ_eff² = γᵢ²/(multiplier·c).

Defaults follow the paper's NCSN code: σ geometric 1.0 → 0.01 over 10 levels, T = 100,
δ = 2e-5 (audio; 3e-5 for images), c = 2, Jacobi updates (all sources moved from the same
state), U(0, 1) initialisation, outputs clamped to [0, 1], no final denoising.

Stability: for Jacobi updates the residual g(x) − m contracts only while
ηᵢ·λᵢ·c·Σₖ(∂g/∂xₖ)² < 2. With γᵢ = σᵢ that is δ·multiplier·c·Σₖ(∂g/∂xₖ)²/σ_L² < 2 at
every level: 0.8 for the defaults and a sum of two sources (Σw² = 2), at most 0.4 for
dB-power mixing (its Jacobian is a softmax, Σ ≤ 1). A run that diverges stops with a
UserError naming the level.

Dirac likelihood (`likelihood="dirac"`): the mixture is taken as exact, g(x) = m, as the
Dirac variant of multi-source diffusion separation (Mariani et al., 2024) does. Instead of
setting one source to "mixture minus the others" (asymmetric, and in the dB-power domain a
source below zero power wherever the others overshoot), every step moves each source by its
prior's score and noise alone and then projects the sources back onto {x : g(x) = m}
(`MixingModel.project`: the orthogonal projection for linear mixing; a common dB shift per
bin, which keeps each source's share of the mixture power, for dB-power mixing). For linear
mixing and Gaussian priors this projected Langevin samples the exact posterior (the prior
restricted to the constraint plane; tests/test_basis.py). `corrections` re-noise and repeat
each level ("correction" steps), `init_noise` puts σ₁-noise on a clean starting estimate.

The priors' `score` is called under `torch.no_grad()`; a prior whose score needs
autograd (a flow) enables it inside its own `score`.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from ..errors import UserError
from ..priors.base import Prior
from ..priors.denoising import tweedie
from ..priors.ncsn import BASIS_SIGMAS, geometric_sigmas
from ..progress import progress_bar
from .mixing import DbPowerMixing, LinearMixing, MixingModel


@dataclasses.dataclass
class BasisConfig:
    """Settings of `basis_separate` (loadable with `audiosep.config.from_dict`).

    Fields:
        sigma_max, sigma_min, n_levels: the geometric σ schedule σ₁ → σ_L (prior units).
        sigmas: an explicit decreasing schedule instead (overrides the three above).
        steps_per_level: T, Langevin steps per noise level.
        delta: δ, the step ηᵢ = δ·σᵢ²/σ_L².
        constraint_multiplier: scales the constraint weight λᵢ = multiplier/γᵢ².
        likelihood_sigma: γ; None → γᵢ = σᵢ (annealed), a number → the same γ at every level.
        grad_factor: c, 2 (exact gradient of ‖g(x) − m‖²) or 1 (residual × Jacobian).
        update: "jacobi" (all sources from the same state) or "gauss-seidel" (source k
            sees sources 1..k−1 already moved in this step).
        init: "uniform" (U(0, 1)) or "mixture" (the mixing model's equal split of the
            mixture, which satisfies the constraint); an explicit `init` tensor passed to
            `basis_separate` overrides this.
        init_noise: add σ₁-noise to the starting sources (an equal split or a baseline's
            estimate is clean, but the score at σ₁ is that of data plus σ₁-noise).
        likelihood: "gaussian" (the constraint term λᵢ·∇‖g(x) − m‖² in the drift) or
            "dirac" (g(x) = m exactly: after every step the sources are projected back onto
            the constraint by `mixing.project`; the weight, γ and grad_factor are then unused).
        corrections: re-noising correction rounds per level: after the level's T steps the
            chains are denoised (Tweedie), re-noised at σᵢ and run for T steps again, this
            many times (the "correction" of multi-source diffusion separation).
        tweedie: finish with one denoising step x + σ_L²·s(x, σ_L) per source.
        clamp: (lo, hi) range the final samples are clipped to, or None.
        n_chains: independent chains run (batched) and averaged.
        chain_average: how chains are averaged: "values" (the mean of the samples) or
            "power" (the mean of the powers, for `DbPowerMixing`: the posterior mean power).
        seed: seeds the CPU generator of the initialisation and the Langevin noise.
    """

    sigma_max: float = BASIS_SIGMAS[0]
    sigma_min: float = BASIS_SIGMAS[1]
    n_levels: int = BASIS_SIGMAS[2]
    sigmas: tuple[float, ...] | None = None
    steps_per_level: int = 100
    delta: float = 2e-5
    constraint_multiplier: float = 1.0
    likelihood_sigma: float | None = None
    grad_factor: float = 2.0
    update: Literal["jacobi", "gauss-seidel"] = "jacobi"
    init: Literal["uniform", "mixture"] = "uniform"
    init_noise: bool = False
    likelihood: Literal["gaussian", "dirac"] = "gaussian"
    corrections: int = 0
    tweedie: bool = False
    clamp: tuple[float, float] | None = (0.0, 1.0)
    n_chains: int = 1
    chain_average: Literal["values", "power"] = "values"
    seed: int = 0

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise UserError(f"BASIS config: {what}")

        if self.sigmas is not None:
            self.sigmas = tuple(float(s) for s in self.sigmas)
            need(len(self.sigmas) >= 1 and all(s > 0 for s in self.sigmas)
                 and all(a > b for a, b in zip(self.sigmas, self.sigmas[1:])),
                 f"sigmas must be positive and strictly decreasing, got {list(self.sigmas)}")
        need(self.steps_per_level >= 1, f"steps_per_level must be >= 1, got {self.steps_per_level}")
        need(self.delta > 0, f"delta must be > 0, got {self.delta}")
        need(self.constraint_multiplier > 0, f"constraint_multiplier must be > 0, got {self.constraint_multiplier}")
        need(self.likelihood_sigma is None or self.likelihood_sigma > 0,
             f"likelihood_sigma must be > 0 or null, got {self.likelihood_sigma}")
        need(self.grad_factor in (1, 2), f"grad_factor must be 1 or 2, got {self.grad_factor}")
        need(self.update in ("jacobi", "gauss-seidel"),
             f"update must be 'jacobi' or 'gauss-seidel', got {self.update!r}")
        need(self.init in ("uniform", "mixture"), f"init must be 'uniform' or 'mixture', got {self.init!r}")
        need(self.likelihood in ("gaussian", "dirac"),
             f"likelihood must be 'gaussian' or 'dirac', got {self.likelihood!r}")
        need(self.likelihood == "gaussian" or self.update == "jacobi",
             "the dirac likelihood moves all sources together (update 'jacobi')")
        need(self.corrections >= 0, f"corrections must be >= 0, got {self.corrections}")
        need(self.clamp is None or (len(self.clamp) == 2 and self.clamp[0] < self.clamp[1]),
             f"clamp must be null or (lo, hi) with lo < hi, got {self.clamp}")
        need(self.n_chains >= 1, f"n_chains must be >= 1, got {self.n_chains}")
        need(self.chain_average in ("values", "power"),
             f"chain_average must be 'values' or 'power', got {self.chain_average!r}")

    def noise_levels(self) -> list[float]:
        """σ₁ > … > σ_L: `sigmas` if given, else the geometric schedule."""
        if self.sigmas is not None:
            return list(self.sigmas)
        return geometric_sigmas(self.sigma_max, self.sigma_min, self.n_levels).tolist()

    def step_sizes(self) -> list[float]:
        """ηᵢ = δ·σᵢ²/σ_L², one per level."""
        sigmas = self.noise_levels()
        return [self.delta * (s / sigmas[-1]) ** 2 for s in sigmas]

    def constraint_weights(self) -> list[float]:
        """λᵢ = multiplier/γᵢ², γᵢ = σᵢ unless `likelihood_sigma` fixes it."""
        gammas = [self.likelihood_sigma or s for s in self.noise_levels()]
        return [self.constraint_multiplier / g**2 for g in gammas]


SIGMA_RTOL = 1e-4  # σ values closer than this (relative) are the same noise level


def fit_schedule(config: BasisConfig, priors: Sequence[Prior]) -> BasisConfig:
    """`config` with its σ schedule moved onto the levels every prior answers for.

    Priors with `fixed_sigmas` (a per-σ flow bundle, an NCSNv1) know only those levels.
    When the schedule is not among their common levels, it becomes the common levels inside
    the schedule's range [σ_L, σ₁] (so the level count of `config` has no effect then): the
    default σ 0.3 → 0.01 on a bundle trained on 1 → 0.01 × 10 runs its 7 levels ≤ 0.3.

    Raises:
        UserError: fewer than two common levels in the range.
    """
    grids = [prior.fixed_sigmas for prior in priors if prior.fixed_sigmas is not None]
    if not grids:
        return config
    same = lambda a, b: abs(a - b) <= SIGMA_RTOL * b  # noqa: E731
    common = [s for s in grids[0] if all(any(same(s, t) for t in grid) for grid in grids[1:])]
    wanted = config.noise_levels()
    if all(any(same(s, t) for t in common) for s in wanted):
        return config
    lo, hi = wanted[-1] * (1 - SIGMA_RTOL), wanted[0] * (1 + SIGMA_RTOL)
    levels = sorted((s for s in common if lo <= s <= hi), reverse=True)
    if len(levels) < 2:
        have = ", ".join(f"{s:.4g}" for s in common)
        raise UserError(f"the priors answer only for sigma {have}; fewer than two of them lie in the "
                        f"schedule's range {wanted[-1]:.4g} to {wanted[0]:.4g}")
    return dataclasses.replace(config, sigmas=tuple(levels))


def basis_separate(
    priors: Sequence[Prior],
    mixture: Tensor,
    mixing: MixingModel,
    config: BasisConfig | None = None,
    init: Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> Tensor:
    """Separate `mixture` into K sources by annealed Langevin dynamics (BASIS).

    Args:
        priors: K priors, one per source, all in the units of `mixture` (for dB-power
            mixing: the [0, 1] units of the mixing model's front end). The same prior
            object may serve several sources; it is then called once per step on their
            stacked batches (Jacobi updates).
        mixture: `(B, ...)` (e.g. B mel patches `(B, 1, F, T)`), in the priors' units. Its
            device and floating dtype are used throughout.
        mixing: the mixing model g (`LinearMixing`, `DbPowerMixing`).
        config: the settings (default `BasisConfig()`).
        init: optional starting sources `(K, B, ...)` (e.g. a baseline estimate); overrides
            `config.init`; repeated for every chain.
        generator: a CPU `torch.Generator` for the initialisation and the Langevin noise
            (default: one seeded with `config.seed`); results do not depend on the device's
            random number generator.
        progress: a tqdm bar over noise levels, showing the RMS constraint residual.

    Returns:
        The estimated sources `(K, B, ...)`: the final sample (after the optional Tweedie
        step and clamping) of each chain, averaged over `config.n_chains` chains.

    Raises:
        UserError: priors that do not match the mixing model (count or dB range), or a
            run that diverges (non-finite values).
    """
    config = config or BasisConfig()
    if not mixture.is_floating_point():
        raise ValueError(f"the mixture must be a floating-point tensor, got {mixture.dtype}")
    _check_priors(priors, mixing, config)
    n_sources, n_chains = len(priors), config.n_chains
    if generator is None:
        generator = torch.Generator().manual_seed(config.seed)
    target = mixture.repeat(n_chains, *([1] * (mixture.dim() - 1)))  # (C·B, ...), chain-major
    sigmas, steps, weights = config.noise_levels(), config.step_sizes(), config.constraint_weights()
    dirac = config.likelihood == "dirac"

    def constrain(x: Tensor) -> Tensor:  # the Dirac likelihood's projection onto g(x) = m
        return mixing.project(x, target) if dirac else x

    x = _initial_sources(config, init, mixing, target, n_sources, generator)
    if config.init_noise:
        x = x + sigmas[0] * _noise(x, generator)
    x = constrain(x)
    step = _dirac_step if dirac else _jacobi_step if config.update == "jacobi" else _gauss_seidel_step
    bar = progress_bar(range(len(sigmas)), desc="BASIS", unit="level", disable=not progress, leave=False)
    with torch.no_grad():
        for level in bar:
            for round_ in range(1 + config.corrections):
                if round_ > 0:  # correction: denoise, re-noise at this level, run it again
                    x = constrain(_denoise(priors, x, sigmas[level]) + sigmas[level] * _noise(x, generator))
                for _ in range(config.steps_per_level):
                    x = step(priors, x, target, mixing, sigmas[level], steps[level], weights[level],
                             config.grad_factor, generator)
            _check_finite(x, level, sigmas[level])
            if progress:
                residual = (mixing.mix(x) - target).pow(2).mean().sqrt().item()
                bar.set_postfix(sigma=f"{sigmas[level]:.3g}", residual=f"{residual:.3g}")
        if config.tweedie:
            x = constrain(_denoise(priors, x, sigmas[-1]))
    if config.clamp is not None:
        x = x.clamp(*config.clamp)
    return _average_chains(x.unflatten(1, (n_chains, mixture.shape[0])), config.chain_average, mixing)


def _check_priors(priors: Sequence[Prior], mixing: MixingModel, config: BasisConfig) -> None:
    """UserError if the priors cannot be used with `mixing` (count, dB range, averaging)."""
    if len(priors) < 1:
        raise UserError("BASIS needs at least one prior")
    if isinstance(mixing, LinearMixing) and mixing.n_sources != len(priors):
        raise UserError(f"{len(priors)} priors but the linear mixing has {mixing.n_sources} weights")
    if isinstance(mixing, DbPowerMixing):
        for k, prior in enumerate(priors):
            domain = getattr(prior, "domain", None)
            if domain is None:
                continue
            if domain.kind != "mel":
                raise UserError(f"dB-power mixing needs mel priors; prior {k} was trained on {domain.describe()}")
            settings = domain.frontend_dict
            if (settings.get("db_lo"), settings.get("db_hi")) != (mixing.db_lo, mixing.db_hi):
                raise UserError(
                    f"prior {k} was trained on dB range [{settings.get('db_lo')}, {settings.get('db_hi')}] "
                    f"but the mixing model uses [{mixing.db_lo:g}, {mixing.db_hi:g}]"
                )
    if config.chain_average == "power" and not isinstance(mixing, DbPowerMixing):
        raise UserError("chain_average 'power' needs dB-power mixing (mel spectrograms); use 'values'")


def _initial_sources(
    config: BasisConfig, init: Tensor | None, mixing: MixingModel, target: Tensor, n_sources: int,
    generator: torch.Generator,
) -> Tensor:
    """Starting sources `(K, C·B, ...)` for the mixture repeated over chains `target (C·B, ...)`."""
    if init is not None:
        batch = target.shape[0] // config.n_chains
        if init.shape != (n_sources, batch, *target.shape[1:]):
            raise ValueError(f"init must have shape {(n_sources, batch, *target.shape[1:])}, got {tuple(init.shape)}")
        return init.to(target).repeat(1, config.n_chains, *([1] * (target.dim() - 1)))
    if config.init == "mixture":
        return mixing.split(target, n_sources)
    return torch.rand((n_sources, *target.shape), generator=generator, dtype=target.dtype).to(target.device)


def _scores(priors: Sequence[Prior], x: Tensor, sigma: float) -> Tensor:
    """Each source's prior score `(K, B, ...)` for sources `x (K, B, ...)`.

    Sources sharing one prior object are stacked into a single call.
    """
    out = torch.empty_like(x)
    groups: dict[int, list[int]] = {}
    for k, prior in enumerate(priors):
        groups.setdefault(id(prior), []).append(k)
    for members in groups.values():
        index = torch.tensor(members, device=x.device)
        batch = x.index_select(0, index).flatten(0, 1)
        out.index_copy_(0, index, priors[members[0]].score(batch, sigma).view(len(members), *x.shape[1:]))
    return out


def _denoise(priors: Sequence[Prior], x: Tensor, sigma: float) -> Tensor:
    """Tweedie's estimate x + σ²·s(x, σ) of every source `(K, B, ...)` (`priors.denoising.tweedie`)."""
    return tweedie(x, _scores(priors, x, sigma), sigma)


def _noise(x: Tensor, generator: torch.Generator) -> Tensor:
    """Standard normal noise shaped like `x`, drawn on the CPU generator, on x's device."""
    return torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)


def _jacobi_step(
    priors: Sequence[Prior], x: Tensor, m: Tensor, mixing: MixingModel, sigma: float, eta: float,
    weight: float, factor: float, generator: torch.Generator,
) -> Tensor:
    """One Langevin step of every source from the same state `x (K, B, ...)`."""
    drift = _scores(priors, x, sigma) - weight * mixing.constraint_grad(x, m, factor)
    return x + eta * drift + math.sqrt(2.0 * eta) * _noise(x, generator)


def _dirac_step(
    priors: Sequence[Prior], x: Tensor, m: Tensor, mixing: MixingModel, sigma: float, eta: float,
    weight: float, factor: float, generator: torch.Generator,
) -> Tensor:
    """One Langevin step of every source under the priors alone, projected back onto the
    constraint g(x) = m (the Dirac likelihood; `weight` and `factor` are unused)."""
    x = x + eta * _scores(priors, x, sigma) + math.sqrt(2.0 * eta) * _noise(x, generator)
    return mixing.project(x, m)


def _gauss_seidel_step(
    priors: Sequence[Prior], x: Tensor, m: Tensor, mixing: MixingModel, sigma: float, eta: float,
    weight: float, factor: float, generator: torch.Generator,
) -> Tensor:
    """One Langevin step, source by source: source k sees the sources before it already moved."""
    z = _noise(x, generator)
    x = x.clone()
    for k, prior in enumerate(priors):
        drift = prior.score(x[k], sigma) - weight * mixing.constraint_grad(x, m, factor)[k]
        x[k] = x[k] + eta * drift + math.sqrt(2.0 * eta) * z[k]
    return x


def _check_finite(x: Tensor, level: int, sigma: float) -> None:
    if not bool(torch.isfinite(x).all()):
        raise UserError(
            f"BASIS diverged at noise level {level + 1} (sigma {sigma:.3g}); reduce delta or the constraint "
            "weight (step x weight x grad_factor x sum of squared mixing gradients must stay below 2)"
        )


def _average_chains(x: Tensor, how: str, mixing: MixingModel) -> Tensor:
    """Average chains `x (K, C, B, ...)` → `(K, B, ...)`: as values, or as powers (dB-power mixing)."""
    if how == "power":
        return mixing.from_power(mixing.to_power(x).mean(dim=1))
    return x.mean(dim=1)
