"""The one training loop every prior uses.

`train(model, loss_fn, train_dataset, valid_dataset, config, out_path, domain)` runs Adam
with optional gradient clipping, keeps an exponential moving average (EMA) of the
weights, writes atomic checkpoints (model config + domain inside, so `load_prior` needs
nothing else) every `checkpoint_every` steps and at the end, logs a validation loss of
the EMA weights every `valid_every` steps (and once at the end of a run shorter than
that), writes the training log beside it (`training.log`: `MODEL.log.csv`, one row per checkpoint
and validation), and resumes from `out_path` after an interruption: model, EMA, optimiser, step,
and the RNG states of every process are restored and the data order is a function of
(seed, epoch), so with `num_workers = 0` a resumed run continues bit-identically. (With
worker processes, each epoch's worker seeds are fixed, but the random crops of the epoch
that was cut short are drawn anew.)

Data parallel: launch with `torchrun --nproc_per_node N ...`; every process calls
`train` with the same arguments. The process group is initialised from the torchrun
environment (gloo on CPU, NCCL on CUDA), the loss runs under torch's
`DistributedDataParallel` (which broadcasts rank 0's weights and averages the gradients in
buckets during the backward pass), each process reads its own share of every epoch's
permutation, and only rank 0 writes checkpoints and shows progress.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import random
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..config import TrainConfig, to_dict
from ..devices import resolve_device
from ..errors import Terminated, UserError
from ..priors.base import Domain, Prior, build_from_checkpoint, load_checkpoint, load_prior, save_checkpoint
from ..progress import progress_bar
from .log import TrainingLog

LossFn = Callable[[Prior, Any], Tensor]
Callback = Callable[[int, dict[str, float]], None]


class EMA:
    """Exponential moving average of a model's parameters.

    After update n (1-based), shadow ← d·shadow + (1 − d)·value with
    d = min(decay, (1 + n)/(10 + n)) (short warm-up, so early averages are not dominated
    by the initial weights). Buffers (a noise schedule, counters, normalisation statistics)
    are copied: they are not trained, so an average of them would only lag.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.averaged = {name for name, p in model.named_parameters() if p.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current parameters into the average; copy its buffers."""
        self.updates += 1
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        for key, value in model.state_dict().items():
            if key in self.averaged:
                self.shadow[key].lerp_(value, 1.0 - d)
            else:
                self.shadow[key].copy_(value)

    def state_dict(self) -> dict[str, Tensor]:
        """The averaged state, loadable with `model.load_state_dict`."""
        return self.shadow

    def load_state_dict(self, state: Mapping[str, Tensor], updates: int) -> None:
        """Restore a saved average after `updates` updates."""
        for key, value in state.items():
            self.shadow[key].copy_(value)
        self.updates = updates

    @contextlib.contextmanager
    def swapped_into(self, model: nn.Module) -> Iterator[None]:
        """Within the block the model holds the averaged weights; its own are restored after."""
        backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield
        finally:
            model.load_state_dict(backup)


def initial_prior(path: str | os.PathLike, domain: Domain, kind: str) -> Prior:
    """The prior at `path` (weights, config) to fine-tune, in training mode.

    Raises:
        UserError: as `load_prior`, or a checkpoint of another kind or front end.
    """
    model = load_prior(path, expected_domain=domain)
    if not model.kind.startswith(kind):
        raise UserError(f"{path}: a {model.kind} checkpoint cannot start a {kind} training")
    return model.train()


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (call before building a model)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    """The global RNG states, as checkpoint-safe values."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


@contextlib.contextmanager
def _isolated_rng(seed: int) -> Iterator[None]:
    """Run a block with all global generators seeded by `seed`; restore their states after."""
    saved = _rng_state()
    seed_everything(seed)
    try:
        yield
    finally:
        _set_rng_state(saved)


def _init_distributed(device: torch.device) -> tuple[int, int, bool]:
    """(rank, world size, whether this call created the process group) from the torchrun env."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, False
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world, True


def _local_rank() -> int | None:
    """This process's LOCAL_RANK when several processes train together (torchrun), else None:
    what a bare "cuda" stands for in `resolve_device`."""
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
    else:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else None


def _to_device(batch: Any, device: torch.device) -> Any:
    """Move a tensor, or tensors inside tuples/lists/dicts, to `device`."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _epoch_batches(n_items: int, batch_size: int, seed: int, epoch: int, rank: int, world: int) -> list[list[int]]:
    """This process's batches of item indices for `epoch`: a (seed, epoch)-seeded permutation,
    every world-th item from `rank`, cut into full batches."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n_items, generator=generator)[rank::world].tolist()
    n_batches = len(order) // batch_size
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(n_batches)]


def _train_batches(
    dataset: Dataset, config: TrainConfig, rank: int, world: int, start_step: int
) -> Iterator[Any]:
    """Endless training batches, resuming at the batch `start_step` would have seen. A dataset
    with `set_epoch(epoch)` (random crops) is told each epoch before its batches are drawn."""
    per_epoch = (len(dataset) // world) // config.batch_size
    if per_epoch == 0:
        raise UserError(
            f"training set has {len(dataset)} items, fewer than batch_size {config.batch_size} × {world} process(es)"
        )
    epoch, skip = divmod(start_step, per_epoch)
    while True:
        batches = _epoch_batches(len(dataset), config.batch_size, config.seed, epoch, rank, world)[skip:]
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        loader = DataLoader(
            dataset, batch_sampler=batches, num_workers=config.num_workers,
            generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch * world + rank),
        )
        yield from loader
        epoch, skip = epoch + 1, 0


class _Objective(nn.Module):
    """The training loss as a module: `forward(loss_fn, batch) = loss_fn(model, batch)`. It is
    what `DistributedDataParallel` wraps, since DDP averages gradients (bucketed, overlapped
    with the backward pass) only for a forward called through it, and a loss reaches the
    model through methods of its own (`model.score`, `model.masks`, ...), not `model(...)`."""

    def __init__(self, model: Prior) -> None:
        super().__init__()
        self.model = model

    def forward(self, loss_fn: LossFn, batch: Any) -> Tensor:
        return loss_fn(self.model, batch)


def _objective(model: Prior, world: int, device: torch.device) -> nn.Module:
    """The module the steps call: `_Objective(model)`, under `DistributedDataParallel` when
    several processes train. DDP broadcasts rank 0's weights and buffers when it is built (a
    flow's random permutations included) and rank 0's buffers before each forward; the models
    that update buffers in training (the LQ-VAE's codebook, a flow's initialisation) all-reduce
    their statistics themselves, so that broadcast changes nothing there."""
    objective = _Objective(model)
    if world == 1:
        return objective
    device_ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(objective, device_ids=device_ids)


@torch.no_grad()
def validation_loss(
    model: Prior, loss_fn: LossFn, dataset: Dataset, config: TrainConfig, device: torch.device
) -> float:
    """Mean loss over the first `valid_batches` batches of `dataset` (in order), with all
    generators seeded by `config.seed`, so every call draws the same noise: a comparable curve."""
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=False, num_workers=config.num_workers)
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with _isolated_rng(config.seed):
        for i, batch in enumerate(loader):
            if i == config.valid_batches:
                break
            total += loss_fn(model, _to_device(batch, device)).item()
            count += 1
    model.train(was_training)
    return total / max(count, 1)


def _open_tensorboard(out_path: Path) -> Any:
    """A SummaryWriter beside the checkpoint, or None when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        tqdm.write("tensorboard is not installed: scalars are not logged")
        return None
    return SummaryWriter(log_dir=str(out_path.with_name(out_path.stem + "_tb")))


def _stored_config(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint's model config as its class states it today: rebuilt through the
    constructor, so a keyword added since (with its default) does not block a resume."""
    try:
        return build_from_checkpoint(payload).get_config()
    except UserError:
        return dict(payload["config"])


def _check_resumable(payload: Mapping[str, Any], model: Prior, domain: Domain, out_path: Path,
                     data: Mapping[str, Any]) -> None:
    """UserError unless the checkpoint at out_path is a training state of this model (kind,
    config), domain and data (e.g. the same source; checkpoints from before `data` was
    stored are not checked for it)."""
    if payload.get("optimizer") is None:
        raise UserError(f"{out_path} has no optimiser state to resume from (a weights-only copy?); "
                        "choose a new output path (-o) to train afresh")
    if payload["kind"] != model.kind or _stored_config(payload) != model.get_config():
        raise UserError(
            f"{out_path} holds a {payload['kind']} checkpoint of another model config; "
            "choose a new output path (-o)"
        )
    stored = Domain.from_dict(payload["domain"])
    if stored != domain:
        raise UserError(
            f"{out_path} was trained on {stored.describe()}, not {domain.describe()}; "
            "choose a new output path (-o)"
        )
    stored_data = payload.get("extra", {}).get("data")
    for key, value in data.items():
        if stored_data is not None and stored_data.get(key) != value:
            raise UserError(f"{out_path} was trained with {key} '{stored_data.get(key)}', not '{value}'; "
                            "choose a new output path to train another")


def train(
    model: Prior,
    loss_fn: LossFn,
    train_dataset: Dataset,
    valid_dataset: Dataset | None,
    config: TrainConfig,
    out_path: str | os.PathLike,
    domain: Domain,
    device: str = "cpu",
    resume: bool = True,
    callback: Callback | None = None,
    data: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Train `model` to minimise `loss_fn` for `config.steps` steps; checkpoint to `out_path`.

    Ctrl-C or SIGTERM (in the main thread of a single process) ends the run after the step in
    progress, with a checkpoint of it, then raises KeyboardInterrupt / `Terminated`.

    Args:
        model: a registered Prior (built by the caller, e.g. after `seed_everything`).
        loss_fn: `loss_fn(model, batch) -> scalar tensor`, batch as collated from the dataset
            (e.g. `dsm_loss` for an NCSN: batches `(B, 1, n_mels, frames)`).
        train_dataset: map-style dataset; may draw random crops with torch/NumPy/Python RNGs.
        valid_dataset: map-style dataset for the validation loss, or None.
        config: the `TrainConfig`.
        out_path: the checkpoint file, rewritten atomically.
        domain: what the data is (stored in the checkpoint and set on `model.domain`).
        device: "cpu", "cuda", "cuda:1", ... (`audiosep.devices.resolve_device`; under torchrun
            with several processes a bare "cuda" is cuda:LOCAL_RANK).
        resume: continue from `out_path` if it exists (it must hold this model kind, config
            and domain); False starts afresh and overwrites it.
        callback: called on every process as `callback(step, logs)` after each step (and its
            checkpoint, if any); logs has "loss" and, after validation, "valid_loss".
        data: what the run learns from beyond the domain (e.g. {"source": "piano"}): stored in
            the checkpoint; a resume with other values is refused.

    Returns:
        {"step", "loss" (last training loss), "valid_loss" (last; NaN without a
        valid_dataset, and on ranks other than 0)}. A checkpoint already at `config.steps`
        is not trained further: its stored losses are returned.
    Raises:
        UserError: a checkpoint at out_path of another model, domain or data, or already past
            `config.steps`; a training loss that is not finite (a learning rate too high).
    """
    out_path = Path(out_path)
    dev = resolve_device(device, local_rank=_local_rank())  # set before NCCL starts, as it wants
    rank, world, owns_group = _init_distributed(dev)
    try:
        return _run(model, loss_fn, train_dataset, valid_dataset, config, out_path, domain,
                    dev, resume, callback, rank, world, dict(data or {}))
    finally:
        if owns_group:
            dist.destroy_process_group()


def _restore(
    model: Prior, optimizer: torch.optim.Optimizer, out_path: Path, domain: Domain, resume: bool,
    data: Mapping[str, Any],
) -> dict[str, Any] | None:
    """Load the training state at out_path into model and optimizer; the checkpoint, or None
    when starting afresh."""
    if not (resume and out_path.exists()):
        return None
    payload = load_checkpoint(out_path, "cpu")  # load_state_dict copies onto the model's device
    _check_resumable(payload, model, domain, out_path, data)
    model.load_state_dict(payload["state_dict"])
    optimizer.load_state_dict(payload["optimizer"])
    return payload


def _optimizer_step(
    objective: nn.Module, loss_fn: LossFn, batch: Any, optimizer: torch.optim.Optimizer, params: list[nn.Parameter],
    config: TrainConfig, step: int,
) -> float:
    """One update: loss (under bfloat16 autocast with `precision: bf16`), backward (which
    averages the gradients over processes under DDP, `_objective`), clipping, Adam. Returns the
    loss.

    A loss with an `at_step(step)` method (a scheduled loss, e.g. a β warm-up) is asked for
    the loss of this step (1-based); validation calls the loss itself.
    """
    step_loss = loss_fn.at_step(step) if hasattr(loss_fn, "at_step") else loss_fn
    with _step_autocast(config, params[0].device.type if params else "cpu"):
        loss = objective(step_loss, batch)
    loss_value = loss.item()
    if not math.isfinite(loss_value):
        raise UserError(f"training loss became {loss_value} at step {step}; lower --lr or set train.grad_clip")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip is not None:
        nn.utils.clip_grad_norm_(params, config.grad_clip)
    for group in optimizer.param_groups:
        group["lr"] = scheduled_lr(config, step)
    optimizer.step()
    return loss_value


def _step_autocast(config: TrainConfig, device_type: str) -> torch.autocast:
    """The autocast a training step's forward pass runs under: bfloat16 with `precision: bf16`."""
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=config.precision == "bf16")


def scheduled_lr(config: TrainConfig, step: int) -> float:
    """The learning rate of optimiser step `step` (1-based): `config.lr`, or with
    `lr_decay_start` set, half a cosine from lr down to lr_final over lr_decay_steps steps
    after it, then lr_final (see `TrainConfig`)."""
    if config.lr_decay_start is None or step <= config.lr_decay_start:
        return config.lr
    progress = min(1.0, (step - config.lr_decay_start) / config.lr_decay_steps)
    return config.lr_final + 0.5 * (config.lr - config.lr_final) * (1.0 + math.cos(math.pi * progress))


def _run(
    model: Prior, loss_fn: LossFn, train_dataset: Dataset, valid_dataset: Dataset | None, config: TrainConfig,
    out_path: Path, domain: Domain, device: torch.device, resume: bool, callback: Callback | None,
    rank: int, world: int, data: dict[str, Any],
) -> dict[str, float]:
    model.domain = domain
    model.to(device).train()
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.lr, betas=config.adam_betas, weight_decay=config.weight_decay
    )
    payload = _restore(model, optimizer, out_path, domain, resume, data)
    step = payload["step"] if payload is not None else 0
    valid_loss = payload["extra"].get("valid_loss", math.nan) if payload is not None else math.nan
    is_main = rank == 0
    if payload is not None:
        if step > config.steps:
            raise UserError(f"{out_path} is already at step {step}, past the {config.steps} steps asked for; "
                            "ask for more steps to continue it")
        if is_main and config.progress:
            done = step == config.steps
            tqdm.write(f"{out_path}: " + (f"already at step {step}, nothing to train" if done else
                                          f"resuming from step {step}"))
        if step == config.steps:
            return {"step": step, "loss": payload["extra"].get("loss", math.nan), "valid_loss": valid_loss}
    objective = _objective(model, world, device)
    ema = EMA(model, config.ema_decay)
    if payload is not None and payload.get("ema") is not None:
        ema.load_state_dict(payload["ema"], updates=step)
    rng_states = payload["extra"].get("rng") if payload is not None else None
    if rng_states is not None and len(rng_states) == world:
        _set_rng_state(rng_states[rank])
    else:
        seed_everything(config.seed + step + 1_000_003 * rank)

    writer = _open_tensorboard(out_path) if config.tensorboard and is_main else None
    log = TrainingLog(out_path, step, config.batch_size * world) if is_main else None
    params = [p for p in model.parameters() if p.requires_grad]
    batches = _train_batches(train_dataset, config, rank, world, step)
    bar = progress_bar(total=config.steps, initial=step, disable=not (config.progress and is_main),
                       desc=f"train {model.kind}", unit="step", dynamic_ncols=True)
    loss_value = math.nan
    save = functools.partial(_checkpoint, out_path, model, loss_fn, domain, ema, optimizer, config=config,
                             is_main=is_main, world=world, data=data)
    try:
        with _signals_deferred(enabled=world == 1) as received:
            while step < config.steps:
                batch = _to_device(next(batches), device)
                loss_value = _optimizer_step(objective, loss_fn, batch, optimizer, params, config, step + 1)
                ema.update(model)
                step += 1
                logs = {"loss": loss_value}
                if valid_dataset is not None and _validation_due(step, config) and is_main:
                    with ema.swapped_into(model):
                        valid_loss = validation_loss(model, loss_fn, valid_dataset, config, device)
                    logs["valid_loss"] = valid_loss
                saved = step % config.checkpoint_every == 0 or step == config.steps
                if saved:
                    save(step=step, valid_loss=valid_loss, loss=loss_value, batch=batch)
                if log is not None:
                    log.add_loss(loss_value)
                    if saved or "valid_loss" in logs or received:
                        log.write(step, logs.get("valid_loss", math.nan), scheduled_lr(config, step))
                _report(bar, writer, step, logs, valid_loss)
                if callback is not None:
                    callback(step, logs)
                if received:
                    if not saved:
                        save(step=step, valid_loss=valid_loss, loss=loss_value, batch=batch)
                    tqdm.write(f"{out_path}: interrupted; checkpoint written at step {step}")
                    raise Terminated() if received[0] == signal.SIGTERM else KeyboardInterrupt()
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    return {"step": step, "loss": loss_value, "valid_loss": valid_loss}


def _validation_due(step: int, config: TrainConfig) -> bool:
    """Whether the EMA weights are validated after `step`: every `valid_every` steps, and at the
    last step of a run shorter than `valid_every` (so its final checkpoint carries a real
    validation loss). A function of the config only, so a resumed run validates where an
    uninterrupted one does."""
    return step % config.valid_every == 0 or (step == config.steps and config.steps < config.valid_every)


def _report(bar: tqdm, writer: Any, step: int, logs: dict[str, float], valid_loss: float) -> None:
    """Advance the progress bar (loss, last validation loss) and log scalars to TensorBoard."""
    postfix = {"loss": f"{logs['loss']:.4g}"}
    if not math.isnan(valid_loss):
        postfix["valid"] = f"{valid_loss:.4g}"
    bar.set_postfix(postfix, refresh=False)
    bar.update(1)
    if writer is not None:
        for key, value in logs.items():
            writer.add_scalar(key, value, step)


@contextlib.contextmanager
def _signals_deferred(enabled: bool = True) -> Iterator[list[int]]:
    """While inside, SIGINT and SIGTERM only append their number to the yielded list (the loop
    checks it between steps, so no step is cut in half); the previous handlers come back
    after. Not enabled (a list that stays empty) outside the main thread or when not asked."""
    received: list[int] = []
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield received
        return
    signums = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in signums}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _is_moment(key: Any, value: Any) -> bool:
    """Whether an optimiser state entry is a floating tensor moment (Adam's `exp_avg`,
    `exp_avg_sq`), not its `step` count, which bfloat16 could not count past 256."""
    return key != "step" and torch.is_tensor(value) and value.is_floating_point()


@torch.no_grad()
def _stored_optimizer_state(optimizer: torch.optim.Optimizer, state_dtype: str) -> dict[str, Any]:
    """The optimiser state dict a checkpoint stores (`TrainConfig.state_dtype`): as it is with
    "fp32"; with "bf16" Adam's moments are rounded to bfloat16 in memory and stored as
    bfloat16, so the file is smaller and a resume from it continues exactly as the run that
    wrote it (both go on from the rounded moments). The EMA is not rounded: at every
    checkpoint, an average that moves by (1 − decay) of the gap per step would stop within
    about 2 % of the weights, where bf16's steps are coarser than its moves."""
    if state_dtype == "fp32":
        return optimizer.state_dict()
    low = torch.bfloat16
    for state in optimizer.state.values():
        for key, value in state.items():
            if _is_moment(key, value):
                value.copy_(value.to(low))
    optimizer_state = optimizer.state_dict()
    optimizer_state["state"] = {index: {k: v.to(low) if _is_moment(k, v) else v for k, v in state.items()}
                                for index, state in optimizer_state["state"].items()}
    return optimizer_state


def _finite_after_update(model: Prior, loss_fn: LossFn, batch: Any, config: TrainConfig, world: int) -> bool:
    """Whether the updated weights are finite and give a finite loss on the step's batch, on
    every process: the loss the loop checks is the one before the update, so an update that
    diverged would otherwise be saved over a good checkpoint. Evaluated in eval mode, without
    gradients, under the step's autocast and with the generators isolated, so the run goes on
    exactly as without it."""
    finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    if finite:
        was_training = model.training
        model.eval()
        with torch.no_grad(), _isolated_rng(config.seed), _step_autocast(config, next(model.parameters()).device.type):
            finite = math.isfinite(loss_fn(model, batch).item())
        model.train(was_training)
    if world > 1:
        flag = torch.tensor(float(finite), device=next(model.parameters()).device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        finite = bool(flag.item())
    return finite


def _checkpoint(
    out_path: Path, model: Prior, loss_fn: LossFn, domain: Domain, ema: EMA, optimizer: torch.optim.Optimizer, *,
    step: int, config: TrainConfig, valid_loss: float, loss: float, is_main: bool, world: int,
    data: Mapping[str, Any], batch: Any,
) -> None:
    """Gather every process's RNG state; rank 0 writes the checkpoint. A diverged update
    (`_finite_after_update`) is a UserError instead, and the checkpoint there is kept."""
    if not _finite_after_update(model, loss_fn, batch, config, world):
        kept = "is left as it was" if out_path.exists() else "is not written"
        raise UserError(f"training diverged at step {step} (the updated weights give a loss that is not finite); "
                        f"{out_path} {kept}: lower --lr or set train.grad_clip")
    if world > 1:
        rng = [None] * world
        dist.all_gather_object(rng, _rng_state())
    else:
        rng = [_rng_state()]
    optimizer_state = _stored_optimizer_state(optimizer, config.state_dtype)
    if is_main:
        save_checkpoint(
            out_path, model, domain, ema_state=ema.state_dict(), optimizer_state=optimizer_state,
            step=step, extra={"train_config": to_dict(config), "valid_loss": valid_loss, "loss": loss,
                              "rng": rng, "world_size": world, "data": dict(data)},
        )
    if world > 1:
        dist.barrier()
