"""Flow entry points: `audiosep train glow|realnvp` on mel patches or images (one flow,
σ-conditioned, or a per-σ bundle; on images also the denoising experiment's ND/TD/CD flows
of a `denoising:` section, `priors.denoising.DenoisingConfig`)."""
from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset
from tqdm import tqdm

from ..config import TrainConfig, to_dict
from ..data.images import PIXEL_LEVELS
from ..errors import UserError
from ..priors.base import Domain, load_checkpoint, save_checkpoint
from ..priors.denoising import DenoisingConfig
from ..priors.flows import (
    FLOWS,
    FlowBundle,
    FlowConfig,
    build_flow,
    bundle_sigmas,
    check_flow_shape,
    flow_conditioning,
    flow_item_shape,
    flow_nll,
    member_config,
)
from .images import image_sets
from .loop import seed_everything, train
from .mel import patch_sets

DataSets = Callable[[TrainConfig], tuple[Dataset, Dataset]]  # train config → (train, valid) datasets


@dataclasses.dataclass
class FlowRun:
    """The YAML file of `audiosep train glow|realnvp --config`: `model:` (FlowConfig), `train:`
    (TrainConfig), `finetune_steps` (bundle only: steps of every member after the first,
    which trains for `train.steps`; null → `train.steps`) and `denoising:` (DenoisingConfig,
    images only: ND/TD/CD training noise, in place of model.conditioning and noise_sigma)."""

    model: FlowConfig = dataclasses.field(default_factory=FlowConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    finetune_steps: int | None = None
    denoising: DenoisingConfig = dataclasses.field(default_factory=DenoisingConfig)


def train_flow(data: str | os.PathLike, source: str, out_path: str | os.PathLike, arch: str = "glow",
               preset: str = "default", model_config: FlowConfig | None = None, config: TrainConfig | None = None,
               finetune_steps: int | None = None, device: str = "cpu", valid_items: int = 256) -> dict[str, Any]:
    """Train a flow prior (Glow or RealNVP) on the mel patches of one source: `audiosep train glow|realnvp`.

    The loss is bits per dimension of the noisy patches (`flow_nll`), so the progress bar
    and the validation loss read in bits/dim. Conditioning "none" and "sigma" train one
    model to `out_path` like `train_ncsn`; "bundle" trains one flow per σ (`train_flow_bundle`).
    The patch shape is checked against the architecture before any training.

    Returns:
        {"step", "loss", "valid_loss"} (bits/dim), plus "members" for a bundle.
    """
    from ..spectral.frontend import get_frontend

    frontend = get_frontend(preset)

    def sets(member_train: TrainConfig) -> tuple[Dataset, Dataset]:
        return patch_sets(data, source, frontend, member_train, valid_items)

    return _train_flow(sets, Domain.mel(frontend), {"source": source}, out_path, arch, model_config, config,
                       finetune_steps, device)


def train_flow_images(images: str, out_path: str | os.PathLike, arch: str = "glow",
                      model_config: FlowConfig | None = None, config: TrainConfig | None = None,
                      finetune_steps: int | None = None, device: str = "cpu",
                      valid_items: int | None = None, denoising: DenoisingConfig | None = None) -> dict[str, Any]:
    """Train a flow prior on an image dataset: `audiosep train glow|realnvp --images SPEC`.

    Images are centred to [−0.5, 0.5] (the BASIS-Glow convention, mixtures m = (x₁ + x₂)/2)
    and dequantised: every batch gets uniform noise within its 8-bit pixel bins
    (`priors.flows.dequantize`, `PIXEL_LEVELS` bins over [−0.5, 0.5)), so the loss and the
    validation loss are the discrete images' bits/dim and an unconditional flow with
    noise_sigma 0 learns a bounded density; noise_sigma (0.01 unless set) and the σ of
    conditioned flows add Gaussian noise on top. The checkpoint records this as
    `extra["data"]["dequantized"]` (the number of bins). The last `valid_items` train images
    (default a tenth, at most 1000) validate. `denoising` (the `denoising:` section) makes the flow of the denoising
    experiment (`build_flow`: ND/TD one flow at its σ, CD σ ~ U(0, c_max) as an input) and
    is stored in the checkpoint as `extra["data"]["denoising"]` (modes other than none), as
    `train_vae` does. Otherwise as `train_flow`, every conditioning included.
    """
    denoising = denoising or DenoisingConfig()
    train_ds, valid_ds, domain, name = image_sets(images, valid_items, center=True)
    model_config = model_config or FlowConfig()
    if model_config.channels != domain.shape[0]:
        model_config = dataclasses.replace(model_config, channels=domain.shape[0])
    data = {"images": name, "dequantized": PIXEL_LEVELS}
    if denoising.mode != "none":
        data["denoising"] = dataclasses.asdict(denoising)
    loss = functools.partial(flow_nll, n_bins=PIXEL_LEVELS, low=domain.value_range[0])
    return _train_flow(lambda member_train: (train_ds, valid_ds), domain, data, out_path, arch,
                       model_config, config, finetune_steps, device, denoising, loss)


def _train_flow(sets: DataSets, domain: Domain, data: dict[str, Any], out_path: str | os.PathLike, arch: str,
                model_config: FlowConfig | None, config: TrainConfig | None, finetune_steps: int | None,
                device: str, denoising: DenoisingConfig | None = None,
                loss: Callable[..., Any] = flow_nll) -> dict[str, Any]:
    """One flow (conditioning "none" / "sigma", or a denoising mode's) or a bundle, on the
    datasets `sets(train config)` gives, minimising `loss(model, batch)` (bits/dim)."""
    model_config = model_config or FlowConfig()
    config = config or TrainConfig()
    if arch not in FLOWS:
        raise UserError(f"unknown flow {arch!r}; choose one of: {', '.join(FLOWS)}")
    check_flow_shape(arch, model_config.channels, model_config.levels, flow_item_shape(domain))
    if flow_conditioning(model_config, denoising) == "bundle":
        return train_flow_bundle(sets, domain, data, out_path, arch, model_config, config, finetune_steps, device,
                                 loss)
    train_ds, valid_ds = sets(config)
    seed_everything(config.seed)
    model = build_flow(arch, model_config, denoising)
    return train(model, loss, train_ds, valid_ds, config, out_path, domain, device, data=data)


def bundle_member_path(out_path: str | os.PathLike, sigma: float) -> Path:
    """Where `train_flow_bundle` keeps the training state of the member at `sigma`:
    `<out stem>_members/sigma_<σ>.pt` beside the bundle."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.stem + "_members") / f"sigma_{sigma:.6g}.pt"


def train_flow_bundle(sets: DataSets, domain: Domain, data: dict[str, Any], out_path: str | os.PathLike,
                      arch: str = "glow", model_config: FlowConfig | None = None, config: TrainConfig | None = None,
                      finetune_steps: int | None = None, device: str = "cpu",
                      loss: Callable[..., Any] = flow_nll) -> dict[str, Any]:
    """Train a per-σ flow bundle: one unconditional flow per σ of the schedule, serially from
    the smallest σ up, each member initialised from the previous member's EMA weights; then
    write all members (EMA weights) into one `FlowBundle` checkpoint at `out_path`.

    Every member is an ordinary `train` run with its own checkpoint
    (`bundle_member_path`), so an interrupted bundle resumes where it stopped: finished
    members are read back, the interrupted one resumes from its last checkpoint. The first
    member trains `config.steps` steps, the others `finetune_steps` (default: the same);
    member i uses seed `config.seed + i` for its crops and noise (`sets(member train config)`
    gives its train and valid datasets; `data` is stored in every checkpoint; `loss` as in `train`). Under torchrun
    every process trains every member; rank 0 writes the bundle.

    Returns:
        {"step" (all members' steps), "loss", "valid_loss" (the last member's, bits/dim),
         "members": [{"sigma", "step", "loss", "valid_loss"}, ...] in training order}.
    """
    model_config = model_config or FlowConfig(conditioning="bundle")
    config = config or TrainConfig()
    sigmas = bundle_sigmas(model_config)
    members, previous, results = {}, None, []
    for index, sigma in enumerate(sorted(sigmas)):
        steps = config.steps if index == 0 or finetune_steps is None else finetune_steps
        member_train = dataclasses.replace(config, steps=steps, seed=config.seed + index)
        train_ds, valid_ds = sets(member_train)
        seed_everything(member_train.seed)
        member = build_flow(arch, dataclasses.replace(model_config, conditioning="none", noise_sigma=sigma))
        if previous is not None:
            member.load_state_dict(previous)
        if config.progress:
            tqdm.write(f"member {index + 1}/{len(sigmas)}: sigma {sigma:.4g}")
        path = bundle_member_path(out_path, sigma)
        result = train(member, loss, train_ds, valid_ds, member_train, path, domain, device, data=data)
        previous = members[sigma] = load_checkpoint(path)["ema"]
        results.append({"sigma": sigma, **result})
    bundle = FlowBundle(arch, member_config(model_config), sigmas)
    for member, sigma in zip(bundle.members, sigmas):
        member.load_state_dict(members[sigma])
    total = sum(int(r["step"]) for r in results)
    if int(os.environ.get("RANK", "0")) == 0:
        save_checkpoint(out_path, bundle, domain, step=total,
                        extra={"train_config": to_dict(config), "finetune_steps": finetune_steps,
                               "members": results, "valid_loss": results[-1]["valid_loss"]})
    return {"step": total, "loss": results[-1]["loss"], "valid_loss": results[-1]["valid_loss"], "members": results}
