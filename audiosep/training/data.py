"""What a training learns from: a data spec yields the train and valid sets, the domain and a tag.

Every `train_<kind>` entry takes one spec, so a model kind has one entry whatever its data:

- `MelPatches`: [0, 1] mel patches of one source of a stems dataset (NCSN, flows).
- `Images`: an image dataset (`data.images.load_images` spec), the last images of its train
  split held out for validation (NCSN, flows, VAEs).
- `MixturePatches`: STFT-magnitude patches of a stems dataset's mixtures, never a stem alone
  (VAE-BSS).

The CLI builds the spec from `--data` / `--source` / `--images`; `sets(config)` reads the data
(the train items of an epoch and the seed come from the `TrainConfig`), and the tag is what the
checkpoint records of the data (a resume with another tag is refused).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ..config import TrainConfig
from ..priors.base import Domain
from ..spectral.frontend import MagnitudeFrontend
from .images import image_sets
from .mel import mixture_patch_sets, patch_sets


@dataclasses.dataclass(frozen=True)
class TrainingSets:
    """What a spec yields: train and valid datasets, the domain of their items, the checkpoint's tag."""

    train: Dataset
    valid: Dataset | None
    domain: Domain
    tag: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class MelPatches:
    """Mel patches `(1, n_mels, patch_frames)` of `source` in the stems dataset `data` (a folder,
    or several whose tracks are pooled), at the
    front end `preset`: `config.epoch_items` random crops of the train split per epoch,
    `valid_items` fixed crops of the valid split (seed + 1)."""

    data: str | os.PathLike | Sequence[str | os.PathLike]
    source: str
    preset: str = "default"
    valid_items: int = 256

    def sets(self, config: TrainConfig) -> TrainingSets:
        from ..spectral.frontend import get_frontend

        frontend = get_frontend(self.preset)
        train, valid = patch_sets(self.data, self.source, frontend, config, self.valid_items)
        return TrainingSets(train, valid, Domain.mel(frontend), {"source": self.source})


@dataclasses.dataclass(frozen=True)
class Images:
    """The train split of the image dataset `spec` ("digits", "mnist:DIR", a folder, ...), its
    last `valid_items` images validating (None: a tenth, at most 1000, a multiple of
    `multiple`); `center`: values in [−0.5, 0.5] (the flows' convention) instead of [0, 1]."""

    spec: str
    valid_items: int | None = None
    center: bool = False
    multiple: int = 1

    def sets(self, config: TrainConfig) -> TrainingSets:
        train, valid, domain, name = image_sets(self.spec, self.valid_items, center=self.center, multiple=self.multiple)
        return TrainingSets(train, valid, domain, {"images": name})


@dataclasses.dataclass(frozen=True)
class MixturePatches:
    """Normalised STFT-magnitude patches of the mixtures of the stems dataset `data` at
    `frontend` (`training.mel.mixture_patch_sets`); the domain is `Domain.magnitude(frontend)`."""

    data: str | os.PathLike
    frontend: MagnitudeFrontend = dataclasses.field(default_factory=MagnitudeFrontend)

    def sets(self, config: TrainConfig) -> TrainingSets:
        train, valid = mixture_patch_sets(self.data, self.frontend, config)
        return TrainingSets(train, valid, Domain.magnitude(self.frontend), {"mixtures": Path(self.data).name})


DataSpec = MelPatches | Images | MixturePatches
