"""Mixing models: how K sources make the mixture, and the gradient of the mixture constraint.

A mixing model maps sources `x (K, B, ...)` to a mixture `g(x) (B, ...)` and gives
∇ₓₖ‖g(x) − m‖², the gradient BASIS follows to pull its samples towards the observed
mixture `m`. Both live in the units the priors were trained on, so that the constraint's
weight 1/γ² and the priors' noise levels σ are measured on the same scale:

- `LinearMixing(weights)`: m = Σₖ wₖ·xₖ (images, waveforms).
- `DbPowerMixing(frontend)`: mel spectrograms normalised to [0, 1] by a front end. Sources
  are de-normalised to dB, their powers are summed, g_dB = 10·log10 Σₖ 10^(dBₖ/10), and
  the result is normalised back with the same front end's [db_lo, db_hi] map. The
  constraint is therefore expressed in [0, 1] units; its Jacobian is the softmax
  ∂g/∂xₖ = softmax(dB·ln10/10)ₖ (the (db_hi − db_lo) factors of the two maps cancel).
  Applying the dB formula to the [0, 1] values themselves (the earlier TF code) is wrong:
  for K = 2 it returns a value between 3.01 and 4.01 "units" whatever the sources (the
  mixture itself lies in [0, 1]), and its softmax is nearly uniform.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import UserError
from ..spectral import functional as F

_DB_PER_NEPER = 10.0 / math.log(10.0)  # 10·log10(e): dB = _DB_PER_NEPER · ln(power)


class MixingModel:
    """Base of the mixing models. Subclasses implement `mix`, `jacobian` and `split`.

    Shapes: sources `x (K, B, ...)`; mixture `m (B, ...)`; all in the priors' units.
    """

    def mix(self, x: Tensor) -> Tensor:
        """The mixture g(x) `(B, ...)` of sources `x (K, B, ...)`."""
        raise NotImplementedError

    def jacobian(self, x: Tensor) -> Tensor:
        """∂g/∂xₖ elementwise `(K, B, ...)` (g acts elementwise across sources)."""
        raise NotImplementedError

    def split(self, m: Tensor, n_sources: int) -> Tensor:
        """K equal sources `(K, B, ...)` whose mixture is exactly `m (B, ...)` (an initial guess)."""
        raise NotImplementedError

    def project(self, x: Tensor, m: Tensor) -> Tensor:
        """Sources `(K, B, ...)` moved onto the constraint g(x) = m exactly (the Dirac
        likelihood's support), changing them as little as the model's geometry allows."""
        raise NotImplementedError

    def constraint_grad(self, x: Tensor, m: Tensor, factor: float = 2.0) -> Tensor:
        """factor/2 · ∇ₓₖ‖g(x) − m‖² = factor·(g(x) − m)·∂g/∂xₖ, shape `(K, B, ...)`.

        factor 2 is the exact gradient of the squared norm; factor 1 is the residual
        times the Jacobian (the gradient of ½‖g(x) − m‖²).
        """
        return factor * (self.mix(x) - m) * self.jacobian(x)


class LinearMixing(MixingModel):
    """m = Σₖ wₖ·xₖ. `weights` (K values): (1, 1) for a sum, (0.5, 0.5) for an average."""

    def __init__(self, weights: Sequence[float]) -> None:
        self.weights = tuple(float(w) for w in weights)
        if len(self.weights) < 2:
            raise UserError(f"linear mixing needs at least 2 source weights, got {list(self.weights)}")
        if sum(self.weights) == 0:
            raise UserError(f"linear mixing weights must not sum to 0, got {list(self.weights)}")

    @property
    def n_sources(self) -> int:
        """K, the number of weights."""
        return len(self.weights)

    def _weights(self, x: Tensor) -> Tensor:
        if x.shape[0] != self.n_sources:
            raise ValueError(f"linear mixing has {self.n_sources} weights but got {x.shape[0]} sources")
        return torch.tensor(self.weights, dtype=x.dtype, device=x.device).view(-1, *([1] * (x.dim() - 1)))

    def mix(self, x: Tensor) -> Tensor:
        return (self._weights(x) * x).sum(dim=0)

    def jacobian(self, x: Tensor) -> Tensor:
        return self._weights(x).expand_as(x)

    def project(self, x: Tensor, m: Tensor) -> Tensor:
        """The orthogonal projection onto the plane Σₖ wₖxₖ = m: xₖ + wₖ·(m − g(x))/Σw²."""
        w = self._weights(x)
        return x + w * (m - self.mix(x)) / w.pow(2).sum()

    def split(self, m: Tensor, n_sources: int) -> Tensor:
        """xₖ = m / Σw for every k."""
        return (m / sum(self.weights)).expand(n_sources, *m.shape).clone()

    def __repr__(self) -> str:
        return f"LinearMixing(weights={list(self.weights)})"


class DbPowerMixing(MixingModel):
    """Power sum of [0, 1]-normalised dB spectrograms, the constraint in [0, 1] units.

    x (K, B, ...) in [0, 1] → dBₖ = db_lo + xₖ·(db_hi − db_lo) (`unit_to_db`) →
    g_dB = 10·log10 Σₖ 10^(dBₖ/10) → g = (g_dB − db_lo)/(db_hi − db_lo). The mixture `m`
    is the mixture spectrogram in the same front end's [0, 1] units (`Frontend.to_unit`).
    g is not clipped to [0, 1] (clipping would zero its gradient): where the true mixture
    lies outside [db_lo, db_hi] the front end has clipped `m` and the constraint pulls the
    sources to the clipping level.

    Args:
        frontend: a `Frontend` (its db_lo, db_hi are used); or give db_lo and db_hi (dB).
    """

    def __init__(self, frontend=None, *, db_lo: float | None = None, db_hi: float | None = None) -> None:
        if frontend is not None:
            if db_lo is not None or db_hi is not None:
                raise ValueError("give either a front end or db_lo/db_hi, not both")
            db_lo, db_hi = frontend.db_lo, frontend.db_hi
        if db_lo is None or db_hi is None:
            raise ValueError("DbPowerMixing needs a front end or both db_lo and db_hi")
        if not db_lo < db_hi:
            raise UserError(f"dB-power mixing needs db_lo < db_hi, got {db_lo}, {db_hi}")
        self.db_lo, self.db_hi = float(db_lo), float(db_hi)

    @property
    def db_range(self) -> float:
        """db_hi − db_lo: dB per [0, 1] unit."""
        return self.db_hi - self.db_lo

    def to_db(self, x: Tensor) -> Tensor:
        """[0, 1] units → dB (not clipped)."""
        return F.unit_to_db(x, self.db_lo, self.db_hi)

    def from_db(self, db: Tensor) -> Tensor:
        """dB → [0, 1] units, linearly and not clipped (so its gradient is never cut)."""
        return (db - self.db_lo) / self.db_range

    def mix_db(self, x: Tensor) -> Tensor:
        """g in dB `(B, ...)`: 10·log10 of the sum of the sources' powers, x `(K, B, ...)` in [0, 1]."""
        return _DB_PER_NEPER * torch.logsumexp(self.to_db(x) / _DB_PER_NEPER, dim=0)

    def mix(self, x: Tensor) -> Tensor:
        return self.from_db(self.mix_db(x))

    def jacobian(self, x: Tensor) -> Tensor:
        """softmax over sources of dB·ln10/10: each source's share of the mixture power."""
        return torch.softmax(self.to_db(x) / _DB_PER_NEPER, dim=0)

    def project(self, x: Tensor, m: Tensor) -> Tensor:
        """Every source shifted by the same m − g(x) (its powers scaled by one factor per bin,
        the sources' shares of the mixture power kept): g(x + c) = g(x) + c, so the result
        mixes to m exactly, whatever the levels (no source can fall below zero power, as
        setting one source to "mixture minus the others" can)."""
        return x + (m - self.mix(x))

    def split(self, m: Tensor, n_sources: int) -> Tensor:
        """Every source gets 1/K of the mixture power: xₖ = m − 10·log10(K)/(db_hi − db_lo)."""
        share = _DB_PER_NEPER * math.log(n_sources) / self.db_range
        return (m - share).expand(n_sources, *m.shape).clone()

    def to_power(self, x: Tensor) -> Tensor:
        """[0, 1] units → power (ref 1.0), e.g. for averaging samples as powers."""
        return F.db_to_power(self.to_db(x))

    def from_power(self, power: Tensor) -> Tensor:
        """Power → [0, 1] units (floored only at the dtype's smallest normal number)."""
        return self.from_db(F.power_to_db(power, amin=torch.finfo(power.dtype).tiny))

    def __repr__(self) -> str:
        return f"DbPowerMixing(db_lo={self.db_lo:g}, db_hi={self.db_hi:g})"
