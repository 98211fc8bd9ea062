"""VAE / VAE-BSS entry points (VAE-BSS: trained on mixtures only).

`audiosep train vae --images SPEC` (`train_vae`): every training step takes `batch_size`
images of the train split, in the loop's shuffled order, and mixes them `n_mix` at a time
(`data.images.batch_mixtures`: the mean, so a mixture stays in [0, 1]); the model never sees
a source. Validation uses the same mixing of the held-out images
(`training.images.image_sets`), with the full β.

`audiosep train vae --data DIR` (`train_vae_mixtures`): the items are patches of the STFT
magnitude of the *mixtures* of a stems dataset (`MagnitudeFrontend`, the `frontend:`
section: linear magnitude, each patch divided by its maximum), random crops of the train
split's mix files (`data.stems.MixtureCrops`; the sum of the stems only for a track without
one), `train.epoch_items` items per epoch, item i a function of (train.seed, epoch, i); validation
uses `valid_batches × batch_size` fixed crops of the valid split (seed + 1). No stem is ever
read alone, so nothing tells the model what the sources are. The patch format is the
checkpoint's domain (`Domain.magnitude`), so separation uses the same front end.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Literal

from torch import Tensor
from torch.utils.data import Dataset

from ..config import TrainConfig
from ..data.images import batch_mixtures
from ..data.stems import MixtureCrops, SourcePatches
from ..errors import UserError
from ..priors.base import Domain
from ..priors.denoising import DenoisingConfig, training_noise
from ..priors.vae import CONV_CHANNELS, MLP_HIDDEN, VAE, vae_loss
from ..spectral.frontend import MagnitudeFrontend
from .images import image_sets
from .loop import seed_everything, train


IMAGE_N_MIX = 2  # images per training mixture when loss.n_mix is unset (the paper's)


@dataclasses.dataclass
class VAEConfig:
    """The `model:` section of `audiosep train vae --config` (the input shape comes from the data).

    Fields: n_sources (K latents decoded per mixture); latent_dim; arch ("mlp" | "conv");
    hidden (MLP sizes); channels (conv widths); variational (false: the deterministic
    auto-encoder of the paper's comparison).
    """

    n_sources: int = 2
    latent_dim: int = 20
    arch: Literal["mlp", "conv"] = "mlp"
    hidden: tuple[int, ...] = MLP_HIDDEN
    channels: tuple[int, ...] = CONV_CHANNELS
    variational: bool = True


@dataclasses.dataclass
class LossConfig:
    """The `loss:` section: beta (final KL weight, 0.5 in the paper), warmup_steps (β rises
    linearly from 0 over these steps; the paper: 50 epochs), n_mix (images per training
    mixture with --images; unset: `IMAGE_N_MIX`, the paper's 2. With --data the items are
    mixtures already: unset or 1)."""

    beta: float = 0.5
    warmup_steps: int = 0
    n_mix: int | None = None

    def __post_init__(self) -> None:
        if self.beta < 0 or self.warmup_steps < 0 or (self.n_mix is not None and self.n_mix < 1):
            raise UserError(f"loss config: need beta >= 0, warmup_steps >= 0, n_mix >= 1, got "
                            f"{self.beta}, {self.warmup_steps}, {self.n_mix}")


@dataclasses.dataclass
class VAERun:
    """The YAML file of `audiosep train vae --config`: `model:`, `train:`, `loss:`,
    `denoising:` (`priors.denoising.DenoisingConfig`: ND / TD / CD training noise) and, with
    --data only, `frontend:` (`spectral.MagnitudeFrontend`: STFT settings, patch frames,
    normalisation) sections."""

    model: VAEConfig = dataclasses.field(default_factory=VAEConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    denoising: DenoisingConfig = dataclasses.field(default_factory=DenoisingConfig)
    frontend: MagnitudeFrontend = dataclasses.field(default_factory=MagnitudeFrontend)


class VAELoss:
    """The VAE-BSS training loss on batches of images: mixtures of `n_mix` images (n_mix 1:
    the images themselves, a plain VAE), noised as `denoising` says (ND/TD: at σ; CD: σ ~
    U(0, c_max), given to the model), `vae_loss` with β warmed up linearly to `beta` over
    `warmup_steps`.

    A scheduled loss of the training loop: `at_step(step)` is the loss of that step; calling
    it directly (validation) uses the full β, so validation losses compare across the warm-up.
    """

    def __init__(self, config: LossConfig, denoising: DenoisingConfig | None = None) -> None:
        self.config = config
        self.denoising = denoising or DenoisingConfig()

    def beta_at(self, step: int) -> float:
        """β at training step `step` (1-based): beta·min(1, step / warmup_steps)."""
        c = self.config
        return c.beta if c.warmup_steps == 0 else c.beta * min(1.0, step / c.warmup_steps)

    def _loss(self, model: VAE, batch: Tensor, beta: float) -> Tensor:
        inputs, sigma = training_noise(batch_mixtures(batch, self.config.n_mix or 1), self.denoising)
        return vae_loss(model, inputs, beta, sigma=sigma)

    def at_step(self, step: int):
        beta = self.beta_at(step)
        return lambda model, batch: self._loss(model, batch, beta)

    def __call__(self, model: VAE, batch: Tensor) -> Tensor:
        return self._loss(model, batch, self.config.beta)


def train_vae(images: str, out_path: str | os.PathLike, run: VAERun | None = None, device: str = "cpu",
              valid_items: int | None = None) -> dict[str, float]:
    """Train a VAE-BSS model on mixtures of an image dataset: `audiosep train vae`.

    Args:
        images: an image dataset spec (`data.images.load_images`).
        out_path: the checkpoint (resumed when it exists); its domain is the image shape in [0, 1].
        run: model, train and loss settings (`VAERun`).
        valid_items: images held out from the end of the train split for validation
            (None: a tenth, at most 1000, a multiple of n_mix).
    Returns:
        {"step", "loss", "valid_loss"} (nats per training input: a mixture, or an image when n_mix is 1).
    """
    run = run or VAERun()
    if run.frontend != MagnitudeFrontend():
        raise UserError("a frontend: section is for --data (STFT-magnitude patches), not for --images")
    run = dataclasses.replace(run, loss=dataclasses.replace(run.loss, n_mix=run.loss.n_mix or IMAGE_N_MIX))
    if run.train.batch_size % run.loss.n_mix:
        raise UserError(f"batch_size {run.train.batch_size} must be a multiple of n_mix {run.loss.n_mix}")
    if valid_items is not None and valid_items % run.loss.n_mix:
        raise UserError(f"valid_items {valid_items} must be a multiple of n_mix {run.loss.n_mix}")
    train_ds, valid_ds, domain, name = image_sets(images, valid_items, multiple=run.loss.n_mix)
    seed_everything(run.train.seed)
    model = VAE(domain.shape, **dataclasses.asdict(run.model), sigma_conditioned=run.denoising.conditioned)
    data = {"images": name, **dataclasses.asdict(run.loss)}
    if run.denoising.mode != "none":
        data["denoising"] = dataclasses.asdict(run.denoising)
    return train(model, VAELoss(run.loss, run.denoising), train_ds, valid_ds, run.train, out_path, domain,
                 device, data=data)


def mixture_patch_sets(data: str | os.PathLike, frontend: MagnitudeFrontend, config: TrainConfig
                       ) -> tuple[Dataset, Dataset]:
    """(train patches: `epoch_items` items of the train split, drawn with `config.seed`;
    valid patches: `valid_batches × batch_size` fixed items of the valid split, drawn with
    `config.seed + 1`): normalised STFT-magnitude patches `(1, n_freqs, patch_frames)` of mono
    mixture crops at the front end's rate (near-silent crops redrawn); item i depends only on
    (seed, epoch, i)."""
    def patches(split: str, length: int, seed: int) -> Dataset:
        crops = MixtureCrops(data, split=split, crop_samples=frontend.crop_samples,
                             sample_rate=frontend.sample_rate, channels=1, length=length, seed=seed)
        return SourcePatches(crops, frontend.encode_crop)

    return (patches("train", config.epoch_items, config.seed),
            patches("valid", config.valid_batches * config.batch_size, config.seed + 1))


def train_vae_mixtures(data: str | os.PathLike, out_path: str | os.PathLike, run: VAERun | None = None,
                       device: str = "cpu") -> dict[str, float]:
    """Train VAE-BSS on STFT-magnitude patches of a stems dataset's mixtures: `audiosep train vae --data`.

    Args:
        data: a stems dataset `DATA/{train,valid}/<track>/` (stems, MUSDB18 or Slakh2100 layout).
        out_path: the checkpoint (resumed when it exists); its domain is `Domain.magnitude(run.frontend)`.
        run: model, train, loss, denoising and frontend settings (`VAERun`); loss.n_mix unset or 1.
    Returns:
        {"step", "loss", "valid_loss"} (nats per patch).
    Raises:
        UserError: a dataset without train or valid split, loss.n_mix above 1, and as `train`.
    """
    run = run or VAERun()
    if run.loss.n_mix not in (None, 1):
        raise UserError(f"loss.n_mix {run.loss.n_mix}: with --data every patch is a mixture already; "
                        "leave n_mix unset (or 1)")
    loss = dataclasses.replace(run.loss, n_mix=1)
    train_ds, valid_ds = mixture_patch_sets(data, run.frontend, run.train)
    seed_everything(run.train.seed)
    model = VAE(run.frontend.patch_shape, **dataclasses.asdict(run.model), sigma_conditioned=run.denoising.conditioned)
    stored = {"mixtures": Path(data).name, "beta": loss.beta, "warmup_steps": loss.warmup_steps}
    if run.denoising.mode != "none":
        stored["denoising"] = dataclasses.asdict(run.denoising)
    return train(model, VAELoss(loss, run.denoising), train_ds, valid_ds, run.train, out_path,
                 Domain.magnitude(run.frontend), device, data=stored)
