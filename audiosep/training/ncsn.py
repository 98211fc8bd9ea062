"""NCSN entry points: `audiosep train ncsn` on mel patches of one source (and fine-tuning), or on images."""
from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable

import torch

from ..config import TrainConfig
from ..errors import UserError
from ..priors.base import Domain, Prior, load_prior
from ..priors.ncsn import NCSNConfig, build_ncsn, dsm_loss
from .images import image_sets
from .loop import seed_everything, train
from .mel import patch_sets


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


def train_ncsn(data: str | os.PathLike, source: str, out_path: str | os.PathLike, preset: str = "default",
               model_config: NCSNConfig | None = None, config: TrainConfig | None = None, device: str = "cpu",
               valid_items: int = 256, init_from: str | os.PathLike | None = None,
               train_sigma_max: float | None = None) -> dict[str, float]:
    """Train an NCSN prior on the mel patches of one source: `audiosep train ncsn`.

    Every step draws random crops from the `train` split (`config.epoch_items` per epoch, new
    ones every epoch); the validation loss uses `valid_items` fixed crops of the `valid` split. With
    NCSNv2 rules (null sigma_max / n_levels in `model_config`) the schedule is set from 500
    training patches. The checkpoint carries the model config and the mel domain.

    init_from: fine-tune: start from the weights (EMA weights if stored), network and σ
    schedule of this NCSN checkpoint (`model_config` is then not used); it must have been
    trained on the same front end. The step count starts at 0 with a fresh optimiser.
    train_sigma_max: only the levels σ ≤ it are trained (`NCSNRun`); stored with the data.
    """
    from ..spectral.frontend import get_frontend

    frontend = get_frontend(preset)
    model_config = model_config or NCSNConfig()
    config = config or TrainConfig()
    train_ds, valid_ds = patch_sets(data, source, frontend, config, valid_items)
    if init_from is not None:
        model = initial_prior(init_from, Domain.mel(frontend), "ncsn")
    else:
        model = _fresh_ncsn(model_config, config, train_ds)
    loss = levels_loss(model.sigmas, train_sigma_max)  # refuses a bound below every level
    data_spec = {"source": source}
    if train_sigma_max is not None:
        data_spec["train_sigma_max"] = train_sigma_max
    return train(model, loss, train_ds, valid_ds, config, out_path, Domain.mel(frontend), device, data=data_spec)


def train_ncsn_images(images: str, out_path: str | os.PathLike, model_config: NCSNConfig | None = None,
                      config: TrainConfig | None = None, device: str = "cpu",
                      valid_items: int | None = None) -> dict[str, float]:
    """Train an NCSN prior on an image dataset: `audiosep train ncsn --images SPEC`.

    Images are `(C, H, W)` in [0, 1] (the BASIS/NCSN convention, m = x₁ + x₂); the last
    `valid_items` images of the train split (default: a tenth, at most 1000) are the
    validation set (`training.images`).
    The checkpoint's domain is the image shape and value range, so BASIS refuses it on
    images of another size.
    """
    model_config = model_config or NCSNConfig()
    config = config or TrainConfig()
    train_ds, valid_ds, domain, name = image_sets(images, valid_items)
    if model_config.channels != domain.shape[0]:
        model_config = dataclasses.replace(model_config, channels=domain.shape[0])
    model = _fresh_ncsn(model_config, config, train_ds)
    return train(model, dsm_loss, train_ds, valid_ds, config, out_path, domain, device, data={"images": name})


def _fresh_ncsn(model_config: NCSNConfig, config: TrainConfig, train_ds) -> Prior:
    """A new NCSN seeded by `config.seed`; the NCSNv2 rules (null sigma_max / n_levels) read
    the first 500 training items."""
    samples = None
    if model_config.sigma_max is None or model_config.n_levels is None:
        samples = torch.stack([train_ds[i] for i in range(min(500, len(train_ds)))])
    seed_everything(config.seed)
    return build_ncsn(model_config, samples)


def initial_prior(path: str | os.PathLike, domain: Domain, kind: str) -> Prior:
    """The prior at `path` (weights, config) to fine-tune, in training mode.

    Raises:
        UserError: as `load_prior`, or a checkpoint of another kind or front end.
    """
    model = load_prior(path, expected_domain=domain)
    if not model.kind.startswith(kind):
        raise UserError(f"{path}: a {model.kind} checkpoint cannot start a {kind} training")
    return model.train()
