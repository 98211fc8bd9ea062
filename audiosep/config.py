"""Dataclass configs built from YAML files or dicts, strictly.

`from_dict(cls, data)` builds a (possibly nested) dataclass from a mapping: every key
must name a field (an unknown key is a UserError naming it and the allowed keys, so a
misspelt option never goes silently unused), fields without a default must be given,
and values are checked against the field annotations (int, float, bool, str, Literal,
tuples/lists, `X | None`, nested dataclasses). PyYAML reads `1e-3` as a string, so a
float field also accepts a string that parses as a number.

`TrainConfig` is the configuration of `audiosep.training.train`, shared by every prior.
"""
from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from .errors import UserError

T = TypeVar("T")


PRECISIONS = ("fp32", "bf16")  # TrainConfig.precision


@dataclasses.dataclass
class TrainConfig:
    """Settings of the shared training loop (`audiosep.training.train`).

    Fields: steps (optimiser steps in total, across resumes); batch_size (items per
    process and step: the global batch is batch_size × number of processes); lr,
    adam_betas, weight_decay (Adam); grad_clip (max global gradient L2 norm, None = no
    clipping); ema_decay (exponential moving average of the weights, warmed up as
    min(decay, (1 + step)/(10 + step))); checkpoint_every / valid_every (steps between
    checkpoints / validation losses; a checkpoint is always written at the end, and a run of
    fewer than valid_every steps validates once at its end);
    valid_batches (batches in a validation pass); epoch_items (items per epoch of the
    randomly cropped audio and code datasets: a fixed number, so that the crops of step s do
    not depend on `steps` and a run continued with a larger `--steps` sees what one run that
    long from the start would; every epoch draws new crops); seed; num_workers (DataLoader worker
    processes; 0 loads in the main process, which also makes a resumed run bit-identical);
    tensorboard (log scalars beside the checkpoint when `torch.utils.tensorboard`
    imports); progress (tqdm bar on the first process); precision ("fp32", or "bf16": the
    forward pass and the loss under bfloat16 autocast, on CPU or CUDA, while the weights, the
    optimiser and the EMA stay float32 and validation runs in float32, so valid losses compare
    across precisions); lr_decay_start, lr_decay_steps, lr_final (None: a constant lr; else
    after step lr_decay_start the lr falls from lr to lr_final along half a cosine over
    lr_decay_steps steps, then stays at lr_final: a function of the step alone, so a resumed or
    continued run follows the schedule one run would); state_dtype ("fp32", or "bf16": the
    checkpoint stores Adam's moments in bfloat16, 12 bytes per weight instead of 16, so a
    training carried between machines weighs less; the weights and their EMA stay float32,
    since bf16's 8-bit mantissa would swallow their small updates. At every checkpoint the
    loop rounds the moments in memory as well, so a run resumed from the file goes on exactly
    as the uninterrupted one).
    """

    steps: int = 20000
    batch_size: int = 16
    lr: float = 1e-3
    adam_betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float | None = None
    ema_decay: float = 0.999
    checkpoint_every: int = 100
    valid_every: int = 500
    valid_batches: int = 8
    epoch_items: int = 65536
    seed: int = 0
    num_workers: int = 0
    tensorboard: bool = False
    progress: bool = True
    precision: str = "fp32"
    lr_decay_start: int | None = None
    lr_decay_steps: int = 1
    lr_final: float = 1e-4
    state_dtype: str = "fp32"

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "checkpoint_every", "valid_every", "valid_batches", "epoch_items"):
            if getattr(self, key) < 1:
                raise UserError(f"train config: {key} must be >= 1, got {getattr(self, key)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"train config: lr must be a finite number > 0, got {self.lr}")
        if len(self.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in self.adam_betas):
            raise UserError(f"train config: adam_betas must be two numbers in [0, 1), got {self.adam_betas}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise UserError(f"train config: weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise UserError(f"train config: ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.grad_clip is not None and not (self.grad_clip > 0 and math.isfinite(self.grad_clip)):
            raise UserError(f"train config: grad_clip must be a finite number > 0 or null, got {self.grad_clip}")
        if not 0 <= self.num_workers <= 64:  # each is a process holding a copy of the dataset
            raise UserError(f"train config: num_workers must be 0 to 64, got {self.num_workers}")
        if self.lr_decay_start is not None and (self.lr_decay_start < 0 or self.lr_decay_steps < 1
                                                or not 0 < self.lr_final <= self.lr):
            raise UserError("train config: lr_decay_start must be >= 0, lr_decay_steps >= 1 and lr_final in "
                            f"(0, lr]; got {self.lr_decay_start}, {self.lr_decay_steps}, {self.lr_final}")
        if self.precision not in PRECISIONS:
            raise UserError(f"train config: precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.state_dtype not in PRECISIONS:
            raise UserError(f"train config: state_dtype must be one of {', '.join(PRECISIONS)}, "
                            f"got {self.state_dtype!r}")


def from_dict(cls: type[T], data: Any, where: str = "config") -> T:
    """Build dataclass `cls` from the mapping `data`, recursing into nested dataclasses.

    Args:
        cls: a dataclass type.
        data: a mapping of field name → value (None is read as an empty mapping).
        where: the prefix of error messages (e.g. the YAML file name).

    Raises:
        UserError: unknown key (naming it and the allowed keys), missing required key,
            or a value of the wrong type; the message names the dotted key path.
    """
    return _build_dataclass(cls, {} if data is None else data, where, "")


def load_yaml(cls: type[T], path: str | os.PathLike) -> T:
    """Read a YAML mapping from `path` and build `cls` from it with `from_dict`.

    Raises:
        UserError: missing or unreadable file, a binary file, invalid YAML, a top level that is not a
            mapping, or any `from_dict` error (prefixed with the file name).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a YAML config (not UTF-8 text)") from None
    except OSError as err:
        raise UserError(f"cannot read config file {path}: {err.strerror or err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}: invalid YAML{at}: {getattr(err, 'problem', None) or err}") from None
    return from_dict(cls, data, where=str(path))


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as plain nested dicts (the inverse of `from_dict`)."""
    return dataclasses.asdict(config)


def _build_dataclass(cls: type[T], data: Any, where: str, key: str) -> T:
    if not isinstance(data, Mapping):
        raise UserError(f"{where}: {_name(key, 'the top level')} must be a mapping, got {_show(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise UserError(
            f"{where}: unknown key {_join(key, str(unknown[0]))!r}; allowed keys"
            f"{' in ' + repr(key) if key else ''}: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], where, _join(key, name))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise UserError(f"{where}: missing required key {_join(key, name)!r}")
    return cls(**kwargs)


def _convert(tp: Any, value: Any, where: str, key: str) -> Any:
    """Check/convert `value` against the annotation `tp`; UserError on a mismatch."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, {} if value is None else value, where, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, value, where, key)
            except UserError as err:
                errors.append(err)
        raise errors[0]
    if origin is Literal:
        if value not in args:
            raise UserError(f"{where}: {key!r} must be one of {', '.join(map(repr, args))}, got {_show(value)}")
        return value
    if origin in (tuple, list):
        return _convert_sequence(origin, args, value, where, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: {key!r} must be true or false, got {_show(value)}")
        return value
    if tp is int:
        return _to_int(value, where, key)
    if tp is float:
        return _to_float(value, where, key)
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{where}: {key!r} must be a string, got {_show(value)}")
        return value
    return value


def _convert_sequence(origin: type, args: tuple, value: Any, where: str, key: str) -> Any:
    if not isinstance(value, (list, tuple)):
        raise UserError(f"{where}: {key!r} must be a list, got {_show(value)}")
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise UserError(f"{where}: {key!r} must have {len(args)} items, got {len(value)}")
        return tuple(_convert(a, v, where, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    item = args[0] if args else Any
    items = [_convert(item, v, where, f"{key}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _to_int(value: Any, where: str, key: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    number = _to_float(value, where, key, "an integer") if isinstance(value, (float, str)) else None
    if number is None or not float(number).is_integer():
        raise UserError(f"{where}: {key!r} must be an integer, got {_show(value)}")
    return int(number)


def _to_float(value: Any, where: str, key: str, what: str = "a number") -> float:
    if isinstance(value, bool):
        raise UserError(f"{where}: {key!r} must be {what}, got {_show(value)}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise UserError(f"{where}: {key!r} must be {what}, got {_show(value)}")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _name(key: str, default: str) -> str:
    return repr(key) if key else default


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
