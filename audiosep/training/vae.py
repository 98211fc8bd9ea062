"""VAE / VAE-BSS entry points (VAE-BSS: trained on mixtures only).

`audiosep train vae --images SPEC` (`train_vae` with `Images`): every training step takes `batch_size`
images of the train split, in the loop's shuffled order, and mixes them `n_mix` at a time
(`data.images.batch_mixtures`: the mean, so a mixture stays in [0, 1]); the model never sees
a source. Validation uses the same mixing of the held-out images
(`training.images.image_sets`), with the full β.

`audiosep train vae --data DIR` (`train_vae` with `MixturePatches`): the items are patches of the STFT
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
from typing import Literal

from torch import Tensor

from ..config import TrainConfig
from ..data.images import batch_mixtures
from ..errors import UserError
from ..priors.denoising import DenoisingConfig, training_noise
from ..priors.vae import CONV_CHANNELS, MLP_HIDDEN, VAE, vae_loss
from ..spectral.frontend import MagnitudeFrontend
from .data import DataSpec, MixturePatches
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


def train_vae(data: DataSpec, out_path: str | os.PathLike, run: VAERun | None = None,
              device: str = "cpu") -> dict[str, float]:
    """Train a VAE / VAE-BSS model on mixtures: `audiosep train vae`.

    Args:
        data: `Images` (mixed `loss.n_mix` at a time as they are drawn, `IMAGE_N_MIX` unless
            set; its valid images a multiple of n_mix), or `MixturePatches` of a stems
            dataset (each patch a mixture already: loss.n_mix unset or 1; the spec's front end
            is the checkpoint's domain, `Domain.magnitude`).
        out_path: the checkpoint (resumed when it exists).
        run: model, train, loss and denoising settings (`VAERun`; its frontend section is the
            one a `MixturePatches` spec is built with, and must stay the default with images).
    Returns:
        {"step", "loss", "valid_loss"} (nats per training input: a mixture, an image when
        n_mix is 1, or a patch).
    Raises:
        UserError: a frontend section with images, a batch or valid count that is not a multiple
            of n_mix, loss.n_mix above 1 with mixture patches, and as `train`.
    """
    run = run or VAERun()
    if isinstance(data, MixturePatches):
        if run.loss.n_mix not in (None, 1):
            raise UserError(f"loss.n_mix {run.loss.n_mix}: with --data every patch is a mixture already; "
                            "leave n_mix unset (or 1)")
        loss = dataclasses.replace(run.loss, n_mix=1)
        stored = {"beta": loss.beta, "warmup_steps": loss.warmup_steps}
    else:
        if run.frontend != MagnitudeFrontend():
            raise UserError("a frontend: section is for --data (STFT-magnitude patches), not for --images")
        loss = dataclasses.replace(run.loss, n_mix=run.loss.n_mix or IMAGE_N_MIX)
        if run.train.batch_size % loss.n_mix or run.train.batch_size < 2 * loss.n_mix:
            raise UserError(f"the batch size (--batch-size, train.batch_size) {run.train.batch_size} must be a multiple "
                            f"of the images per mixture (--mix, loss.n_mix) {loss.n_mix}, with at least two "
                            "mixtures per batch (batch statistics need two)")
        if data.valid_items is not None and data.valid_items % loss.n_mix:
            raise UserError(f"valid_items {data.valid_items} must be a multiple of n_mix {loss.n_mix}")
        data = dataclasses.replace(data, multiple=loss.n_mix)
        stored = dataclasses.asdict(loss)
    sets = data.sets(run.train)
    seed_everything(run.train.seed)
    model = VAE(sets.domain.shape if sets.domain.kind == "image" else data.frontend.patch_shape,
                **dataclasses.asdict(run.model), sigma_conditioned=run.denoising.conditioned)
    tag = {**sets.tag, **stored}
    if run.denoising.mode != "none":
        tag["denoising"] = dataclasses.asdict(run.denoising)
    return train(model, VAELoss(loss, run.denoising), sets.train, sets.valid, run.train, out_path, sets.domain,
                 device, data=tag)
