"""Flow entry point: `audiosep train glow|realnvp` on mel patches or images (one flow,
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
from .data import DataSpec, Images
from .loop import seed_everything, train

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


def train_flow(data: DataSpec, out_path: str | os.PathLike, arch: str = "glow",
               model_config: FlowConfig | None = None, config: TrainConfig | None = None,
               finetune_steps: int | None = None, device: str = "cpu",
               denoising: DenoisingConfig | None = None) -> dict[str, Any]:
    """Train a flow prior (Glow or RealNVP): `audiosep train glow|realnvp`.

    The loss is bits per dimension of the (noisy) items (`flow_nll`), so the progress bar and
    the validation loss read in bits/dim. Conditioning "none" and "sigma" train one model to
    `out_path`; "bundle" trains one flow per σ (`train_flow_bundle`). The item shape is checked
    against the architecture before any training.

    data: `MelPatches` of one source, or `Images`. Images are centred to [−0.5, 0.5] (the
    BASIS-Glow convention, mixtures m = (x₁ + x₂)/2) and dequantised: every batch gets uniform
    noise within its 8-bit pixel bins (`priors.flows.dequantize`, `PIXEL_LEVELS` bins over
    [−0.5, 0.5)), so the losses are the discrete images' bits/dim and an unconditional flow
    with noise_sigma 0 learns a bounded density; the checkpoint records this as
    `extra["data"]["dequantized"]`. `denoising` (the `denoising:` section, images only) makes
    the flow of the denoising experiment (`build_flow`: ND/TD one flow at its σ, CD σ ~ U(0,
    c_max) as an input), stored as `extra["data"]["denoising"]` (modes other than none).

    Returns:
        {"step", "loss", "valid_loss"} (bits/dim), plus "members" for a bundle.
    Raises:
        UserError: a denoising section with mel patches, and as `_train_flow`.
    """
    denoising = denoising or DenoisingConfig()
    config = config or TrainConfig()
    model_config = model_config or FlowConfig()
    loss: Callable[..., Any] = flow_nll
    if isinstance(data, Images):
        data = dataclasses.replace(data, center=True)
    elif denoising.mode != "none":
        raise UserError("a denoising: section is for flows on --images; mel-patch flows take "
                        "model.conditioning and noise_sigma")
    probe = data.sets(config)
    tag = dict(probe.tag)
    if probe.domain.kind == "image":
        if model_config.channels != probe.domain.shape[0]:
            model_config = dataclasses.replace(model_config, channels=probe.domain.shape[0])
        tag["dequantized"] = PIXEL_LEVELS
        if denoising.mode != "none":
            tag["denoising"] = dataclasses.asdict(denoising)
        loss = functools.partial(flow_nll, n_bins=PIXEL_LEVELS, low=probe.domain.value_range[0])

    def sets(member_train: TrainConfig) -> tuple[Dataset, Dataset]:
        """A member's datasets: mel crops follow its seed and epoch items; images are fixed."""
        chosen = probe if member_train == config or isinstance(data, Images) else data.sets(member_train)
        return chosen.train, chosen.valid

    return _train_flow(sets, probe.domain, tag, out_path, arch, model_config, config, finetune_steps, device,
                       denoising, loss)


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
    conditioning = flow_conditioning(model_config, denoising)
    if finetune_steps is not None and conditioning != "bundle":
        raise UserError(f"finetune_steps (--finetune-steps) are the steps of a bundle's later members; this flow's "
                        f"conditioning is {conditioning!r}, not 'bundle'")
    if conditioning == "bundle":
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
