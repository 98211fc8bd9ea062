"""Oracle separators: upper bounds and baselines computed from the true sources.

Every oracle takes the true sources `(K, C, N)` (the mixture is their sum) and returns
estimates `(K, C, N)` of the same length; `run_oracle(name, sources, sample_rate, **opts)`
selects one by its registry name (`ORACLE_SUMMARIES` says in a line what each is; mel-ideal
needs `frontend=`).
"""
from __future__ import annotations

import functools
import inspect
from typing import Callable

from ..errors import UserError
from .masks import ibm, irm, mixture_as_estimate
from .mel import mel_ibm, mel_ideal, mel_irm
from .mwf import mwf

__all__ = ["ORACLES", "ORACLE_SUMMARIES", "run_oracle", "ibm", "irm", "mwf", "mixture_as_estimate", "mel_ibm", "mel_irm", "mel_ideal"]


def _rate_free(fn: Callable, **fixed) -> Callable:
    """Adapt an oracle that needs no sample rate to the `(sources, sample_rate, **opts)` form."""

    @functools.wraps(fn)
    def run(sources, sample_rate: int, **opts):
        return fn(sources, **fixed, **opts)

    run.fixed = fixed
    return run


# name → callable(sources (K, C, N), sample_rate, **opts) -> estimates (K, C, N)
ORACLES: dict[str, Callable] = {
    "ibm": _rate_free(ibm),
    "irm1": _rate_free(irm, alpha=1.0),
    "irm2": _rate_free(irm, alpha=2.0),
    "mwf": _rate_free(mwf),
    "mix": _rate_free(mixture_as_estimate),
    "mel-ibm": mel_ibm,
    "mel-irm": mel_irm,
    "mel-ideal": mel_ideal,
}

ORACLE_SUMMARIES: dict[str, str] = {
    "ibm": "oracle: ideal binary mask (α = 1, θ = 0.5) from the true stems",
    "irm1": "oracle: ideal ratio mask on magnitudes from the true stems",
    "irm2": "oracle: ideal ratio mask on powers (single-channel Wiener) from the true stems",
    "mwf": "oracle: multichannel Wiener filter (time-invariant spatial covariances of the true stems)",
    "mix": "baseline: the mixture / K as every source's estimate",
    "mel-ibm": "oracle: binary masks on mel bands of the true stems, mapped back to STFT bins",
    "mel-irm": "oracle: ratio (Wiener) masks on mel bands of the true stems, mapped back to STFT bins",
    "mel-ideal": "oracle: the true stems' mel powers through the project's mel inversion",
}


def check_oracle(name: str) -> None:
    """UserError listing the choices unless `name` is a registered oracle."""
    if name not in ORACLES:
        raise UserError(f"unknown oracle {name!r}; choose one of: {', '.join(ORACLES)}")


def oracle_options(name: str) -> list[str]:
    """The keyword options `run_oracle(name, ...)` accepts."""
    fn = ORACLES[name]
    fixed = getattr(fn, "fixed", {})
    params = inspect.signature(inspect.unwrap(fn)).parameters
    return [p for p in params if p not in ("sources", "sample_rate") and p not in fixed]


def run_oracle(name: str, sources, sample_rate: int, **opts):
    """Run the oracle called `name` on the true sources.

    Args:
        name: a key of `ORACLES`.
        sources: `(K, C, N)` true sources (numpy or torch) at `sample_rate` Hz.
        **opts: the oracle's keyword options (e.g. `theta=0.6` for "ibm", `frontend=` for
            "mel-ideal").
    Returns:
        estimates `(K, C, N)`, the same kind of array as `sources`.
    Raises:
        UserError: unknown oracle name, unknown option, or "mel-ideal" without a front end.
    """
    check_oracle(name)
    allowed = oracle_options(name)
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise UserError(
            f"oracle {name!r} has no option(s) {', '.join(unknown)}; it accepts: {', '.join(allowed) or 'none'}"
        )
    if name == "mel-ideal" and opts.get("frontend") is None:
        raise UserError("oracle 'mel-ideal' needs a front end (frontend=...)")
    return ORACLES[name](sources, sample_rate, **opts)
