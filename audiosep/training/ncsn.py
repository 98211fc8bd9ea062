"""NCSN entry point: `audiosep train ncsn` on mel patches of one source (and fine-tuning), or on images."""
from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable

import torch

from ..config import TrainConfig
from ..errors import UserError
from ..priors.base import Prior
from ..priors.ncsn import NCSNConfig, build_ncsn, dsm_loss
from .data import DataSpec
from .loop import initial_prior, seed_everything, train


@dataclasses.dataclass
class NCSNRun:
    """The YAML file of `audiosep train ncsn --config`: `model:` and `train:` sections, and
    train_sigma_max: train (and validate) only the model's levels σ ≤ this (null: all), to put
    the training where inference runs: BASIS started from a baseline anneals from σ 0.05 only,
    so the upper levels of a 1 → 0.01 schedule are never queried there."""

    model: NCSNConfig = dataclasses.field(default_factory=NCSNConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    train_sigma_max: float | None = None

    def __post_init__(self) -> None:
        if self.train_sigma_max is not None and not self.train_sigma_max > 0:
            raise UserError(f"train_sigma_max must be > 0 or null, got {self.train_sigma_max}")


def levels_loss(sigmas: torch.Tensor, sigma_max: float | None) -> Callable[[Prior, torch.Tensor], torch.Tensor]:
    """`dsm_loss` over the levels of `sigmas (L,)` at or below `sigma_max` (None: every level),
    the levels chosen once here rather than at every step."""
    return functools.partial(dsm_loss, sigmas=None if sigma_max is None else trained_levels(sigmas, sigma_max))


def trained_levels(sigmas: torch.Tensor, sigma_max: float) -> torch.Tensor:
    """The levels of `sigmas (L,)` at or below `sigma_max` (a relative 1e-6 of slack for the
    rounding of a geometric schedule).

    Raises:
        UserError: none is.
    """
    kept = sigmas[sigmas <= sigma_max * (1 + 1e-6)]
    if kept.numel() == 0:
        raise UserError(f"train_sigma_max {sigma_max:g} is below every level of the model "
                        f"(lowest {float(sigmas.min()):g})")
    return kept


def train_ncsn(data: DataSpec, out_path: str | os.PathLike, model_config: NCSNConfig | None = None,
               config: TrainConfig | None = None, device: str = "cpu", init_from: str | os.PathLike | None = None,
               train_sigma_max: float | None = None) -> dict[str, float]:
    """Train an NCSN prior: `audiosep train ncsn`.

    data: `MelPatches` of one source (random crops of the train split, `config.epoch_items`
    per epoch; fixed crops of the valid split), or `Images` in [0, 1] (the BASIS/NCSN
    convention, m = x₁ + x₂; the network's channels follow the images'). With NCSNv2 rules
    (null sigma_max / n_levels in `model_config`) the schedule is set from 500 training items.
    The checkpoint carries the model config and the data's domain.

    init_from: fine-tune: start from the weights (EMA weights if stored), network and σ
    schedule of this NCSN checkpoint (`model_config` is then not used); it must have been
    trained on the same domain. The step count starts at 0 with a fresh optimiser.
    train_sigma_max: only the levels σ ≤ it are trained (`NCSNRun`); stored with the data.
    """
    model_config = model_config or NCSNConfig()
    config = config or TrainConfig()
    sets = data.sets(config)
    if sets.domain.kind == "image" and model_config.channels != sets.domain.shape[0]:
        model_config = dataclasses.replace(model_config, channels=sets.domain.shape[0])
    if init_from is not None:
        model = initial_prior(init_from, sets.domain, "ncsn")
    else:
        model = _fresh_ncsn(model_config, config, sets.train)
    loss = levels_loss(model.sigmas, train_sigma_max)  # refuses a bound below every level
    tag = dict(sets.tag)
    if train_sigma_max is not None:
        tag["train_sigma_max"] = train_sigma_max
    return train(model, loss, sets.train, sets.valid, config, out_path, sets.domain, device, data=tag)


def _fresh_ncsn(model_config: NCSNConfig, config: TrainConfig, train_ds) -> Prior:
    """A new NCSN seeded by `config.seed`; the NCSNv2 rules (null sigma_max / n_levels) read
    the first 500 training items."""
    samples = None
    if model_config.sigma_max is None or model_config.n_levels is None:
        samples = torch.stack([train_ds[i] for i in range(min(500, len(train_ds)))])
    seed_everything(config.seed)
    return build_ncsn(model_config, samples)
