"""The Prior protocol, its Domain metadata, and checkpoint save/load.

Every separation method consumes a `Prior`: an `nn.Module` with a `domain` (what it was
trained on) and `score(x, sigma)` = ∇ₓ log p_σ(x). A checkpoint is self-describing: it
stores the prior's registered kind and constructor config, so `load_prior(path)`
rebuilds the model without any other file, and its domain, so a prior trained on one
front end is never silently applied to another.

Checkpoints are plain `torch.save` dicts of tensors and built-in values, loaded with
`weights_only=True` (loading one never runs code):

    format, format_version, kind, module, config, domain, state_dict, ema, optimizer,
    step, versions, extra
"""
from __future__ import annotations

import importlib
import os
import pkgutil
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import UserError
from ..io import atomic_output, first_line

CHECKPOINT_FORMAT = "audiosep-checkpoint"
CHECKPOINT_VERSION = 1
DOMAIN_KINDS = ("mel", "magnitude", "image", "waveform", "codes")

_PRIORS: dict[str, type[Prior]] = {}


def _freeze(value: Any) -> Any:
    """Lists → tuples, recursively, so settings are hashable and compare by value."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _frontend_pairs(frontend: Any) -> tuple[tuple[str, Any], ...]:
    """A front end (anything with `to_dict()`) or its dict → its settings as sorted, frozen (key, value) pairs."""
    settings = frontend.to_dict() if hasattr(frontend, "to_dict") else dict(frontend)
    return tuple(sorted((k, _freeze(v)) for k, v in settings.items()))


@dataclass(frozen=True, eq=False)
class Domain:
    """What a prior was trained on: a mel front end, STFT-magnitude patches, an image format,
    waveforms, or the codes of one LQ-VAE.

    Fields: kind ("mel" | "magnitude" | "image" | "waveform" | "codes"); frontend (kinds "mel"
    and "magnitude": the front end's settings as sorted (key, value) pairs, from
    `Frontend.to_dict()` / `MagnitudeFrontend.to_dict()`); shape ((C, H, W),
    kind "image"); value_range ((lo, hi) of the pixel values, kind "image"); settings (kinds
    "waveform" and "codes": sorted (key, value) pairs, e.g. sample_rate and channels of a
    waveform; n_codes, hop, sample_rate and the codec's fingerprint for codes).

    Two domains are equal when their kind and settings are equal; a front end's `name` is
    a label and takes no part (as in `Frontend`'s own equality).
    """

    kind: str
    frontend: tuple[tuple[str, Any], ...] = ()
    shape: tuple[int, ...] = ()
    value_range: tuple[float, float] = (0.0, 1.0)
    settings: tuple[tuple[str, Any], ...] = ()
    _key: tuple = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in DOMAIN_KINDS:
            raise UserError(f"unknown domain kind {self.kind!r}; expected one of {', '.join(DOMAIN_KINDS)}")
        if self.kind == "mel":
            settings = tuple((k, v) for k, v in self.frontend if k != "name")
            key = ("mel", settings)
        elif self.kind == "magnitude":
            key = ("magnitude", self.frontend)
        elif self.kind == "image":
            key = ("image", self.shape, self.value_range)
        else:
            key = (self.kind, self.settings)
        object.__setattr__(self, "_key", key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Domain) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    @classmethod
    def mel(cls, frontend: Any) -> Domain:
        """The domain of a mel front end: a `Frontend` (anything with `to_dict()`) or its dict."""
        return cls("mel", frontend=_frontend_pairs(frontend))

    @classmethod
    def magnitude(cls, frontend: Any) -> Domain:
        """The domain of STFT-magnitude patches: a `MagnitudeFrontend` (anything with `to_dict()`)
        or its dict (STFT settings, sample rate, patch frames and normalisation all compare)."""
        return cls("magnitude", frontend=_frontend_pairs(frontend))

    @classmethod
    def image(cls, shape: tuple[int, ...], value_range: tuple[float, float] = (0.0, 1.0)) -> Domain:
        """The domain of images `shape` = (C, H, W) with pixel values in `value_range`."""
        lo, hi = value_range
        return cls("image", shape=tuple(int(s) for s in shape), value_range=(float(lo), float(hi)))

    @classmethod
    def waveform(cls, sample_rate: int, channels: int = 1) -> Domain:
        """The domain of raw waveforms at `sample_rate` Hz with `channels` channels."""
        return cls("waveform", settings=(("channels", int(channels)), ("sample_rate", int(sample_rate))))

    @classmethod
    def codes(cls, n_codes: int, hop: int, sample_rate: int, codec: str) -> Domain:
        """The domain of the discrete codes of one codec (an LQ-VAE level): `n_codes` symbols,
        one per `hop` samples at `sample_rate` Hz; `codec` fingerprints the codec's weights, so
        a code prior is never used with codes of another LQ-VAE."""
        return cls("codes", settings=(("codec", str(codec)), ("hop", int(hop)), ("n_codes", int(n_codes)),
                                      ("sample_rate", int(sample_rate))))

    @property
    def settings_dict(self) -> dict[str, Any]:
        """Kinds "waveform" and "codes": the settings as a dict."""
        return dict(self.settings)

    @property
    def frontend_dict(self) -> dict[str, Any]:
        """Kinds "mel" and "magnitude": the front-end settings as a dict (for `Frontend.from_dict`
        / `MagnitudeFrontend.from_dict`)."""
        return dict(self.frontend)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for a checkpoint; `Domain.from_dict` inverts it."""
        if self.kind in ("mel", "magnitude"):
            return {"kind": self.kind, "frontend": self.frontend_dict}
        if self.kind in ("waveform", "codes"):
            return {"kind": self.kind, **self.settings_dict}
        return {"kind": "image", "shape": list(self.shape), "value_range": list(self.value_range)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Domain:
        """Rebuild from `to_dict` output; UserError if malformed."""
        try:
            if d["kind"] == "mel":
                return cls.mel(d["frontend"])
            if d["kind"] == "magnitude":
                return cls.magnitude(d["frontend"])
            if d["kind"] == "image":
                return cls.image(d["shape"], d["value_range"])
            if d["kind"] == "waveform":
                return cls.waveform(d["sample_rate"], d["channels"])
            if d["kind"] == "codes":
                return cls.codes(d["n_codes"], d["hop"], d["sample_rate"], d["codec"])
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise UserError(f"malformed domain {dict(d) if isinstance(d, Mapping) else d!r}: {err}") from None
        raise UserError(f"unknown domain kind {d['kind']!r}; expected one of {', '.join(DOMAIN_KINDS)}")

    def describe(self) -> str:
        """One line, e.g. `mel front end 'default' (sample_rate=16000, n_fft=2048, ...)`."""
        if self.kind == "waveform":
            s = self.settings_dict
            return f"waveforms at {s['sample_rate']} Hz, {s['channels']} channel(s)"
        if self.kind == "codes":
            s = self.settings_dict
            return (f"codes of LQ-VAE {s['codec']} ({s['n_codes']} codes, hop {s['hop']} at "
                    f"{s['sample_rate']} Hz)")
        if self.kind == "magnitude":
            body = ", ".join(f"{k}={v}" for k, v in self.frontend_dict.items())
            return f"STFT-magnitude patches ({body})"
        if self.kind == "image":
            shape = "×".join(map(str, self.shape))
            return f"images {shape} with values in [{self.value_range[0]:g}, {self.value_range[1]:g}]"
        settings = self.frontend_dict
        name = settings.pop("name", None)
        body = ", ".join(f"{k}={v}" for k, v in settings.items())
        return f"mel front end {name!r} ({body})" if name else f"mel front end ({body})"


def sigma_per_sample(sigma: float | Tensor, x: Tensor) -> Tensor:
    """Noise levels as a `(B,)` tensor on `x`'s device and dtype.

    Args:
        sigma: a float, a 0-d tensor, or a `(B,)` tensor (one σ per batch item).
        x: the batch `(B, ...)`.
    """
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.dim() == 0:
        return sigma.expand(x.shape[0])
    if sigma.shape != (x.shape[0],):
        raise ValueError(f"sigma must be a float or a ({x.shape[0]},) tensor, got shape {tuple(sigma.shape)}")
    return sigma


class Prior(nn.Module):
    """Base of every prior: a density model over one domain, queried through its score.

    Subclasses are registered with `@register_prior("kind")` and implement
    `get_config()` (the keyword arguments that rebuild them: JSON-like values only) and
    `score`; models with a tractable density also implement `log_prob`.

    Attributes:
        domain: the `Domain` the prior was trained on (None until trained or loaded).
        kind: the registry name (set by `register_prior`).
    """

    kind: str = ""

    def __init__(self, domain: Domain | None = None) -> None:
        super().__init__()
        self.domain = domain

    def get_config(self) -> dict[str, Any]:
        """Constructor keyword arguments that rebuild this model (stored in checkpoints)."""
        raise NotImplementedError(f"{type(self).__name__} does not define get_config()")

    @property
    def fixed_sigmas(self) -> tuple[float, ...] | None:
        """The only noise levels σ `score` answers for (e.g. one model per σ), or None when any
        σ is fine (the default). BASIS moves its schedule onto them (`fit_schedule`)."""
        return None

    def score(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """∇ₓ log p_σ(x) for a batch `x` `(B, ...)`; `sigma` a float or `(B,)` tensor. Same shape as x."""
        raise NotImplementedError(f"{type(self).__name__} does not define score()")

    def log_prob(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """log p_σ(x) per batch item `(B,)`, in nats; only for models with a tractable density."""
        raise NotImplementedError(f"{type(self).__name__} ({self.kind}) has no tractable log_prob")


def register_prior(kind: str) -> Callable[[type[Prior]], type[Prior]]:
    """Class decorator: make `load_prior` able to rebuild this Prior class by `kind`."""

    def register(cls: type[Prior]) -> type[Prior]:
        if kind in _PRIORS and _PRIORS[kind] is not cls:
            raise ValueError(f"prior kind {kind!r} is already registered to {_PRIORS[kind].__name__}")
        cls.kind = kind
        _PRIORS[kind] = cls
        return cls

    return register


def registered_priors() -> dict[str, type[Prior]]:
    """The registry kind → Prior class (a copy)."""
    return dict(_PRIORS)


def save_checkpoint(
    path: str | os.PathLike,
    model: Prior,
    domain: Domain | None = None,
    *,
    ema_state: Mapping[str, Tensor] | None = None,
    optimizer_state: Mapping[str, Any] | None = None,
    step: int = 0,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a self-describing checkpoint atomically (temporary file + os.replace).

    Args:
        path: the checkpoint file (parent folders are created).
        model: a registered Prior; its kind, `get_config()` and `state_dict()` are stored.
        domain: what it was trained on (default: `model.domain`; one of the two is needed).
        ema_state: a state_dict of exponentially averaged weights; `load_prior` prefers it.
        optimizer_state: the optimiser's state_dict, for resuming.
        step: optimiser steps taken.
        extra: further plain values (training config, RNG states, losses).

    Returns:
        The checkpoint path.
    """
    domain = domain if domain is not None else model.domain
    if domain is None:
        raise ValueError("save_checkpoint needs a domain (argument or model.domain)")
    if not model.kind or _PRIORS.get(model.kind) is not type(model):
        raise ValueError(f"{type(model).__name__} is not a registered prior class (use @register_prior)")
    import audiosep

    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "kind": model.kind,
        "module": type(model).__module__,
        "config": model.get_config(),
        "domain": domain.to_dict(),
        "state_dict": model.state_dict(),
        "ema": dict(ema_state) if ema_state is not None else None,
        "optimizer": optimizer_state,
        "step": int(step),
        "versions": {
            "audiosep": audiosep.__version__,
            "torch": str(torch.__version__),
            "python": platform.python_version(),
        },
        "extra": dict(extra or {}),
    }
    path = Path(path)
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
    return path


def _short_reason(err: BaseException, limit: int = 100) -> str:
    """The first sentence of an exception's first line, at most `limit` characters, cut at a
    word boundary with "..." (torch's messages run to paragraphs)."""
    line = first_line(err).split(". ")[0]
    if len(line) <= limit:
        return line
    return line[:limit].rsplit(" ", 1)[0] + "..."


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint written by `save_checkpoint` (tensors mapped to `device`).

    Raises:
        UserError: missing file, a file that is not an audiosep checkpoint, or a corrupt one.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder, expected a checkpoint file (.pt)")
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # torch.save writes a zip archive; torch.load's own word on others misleads
            raise UserError(f"{path}: not an audiosep checkpoint (not a file torch.save writes)")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch raises many types for foreign or truncated files
        reason = _short_reason(err)
        raise UserError(f"{path}: not a readable audiosep checkpoint ({reason})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not an audiosep checkpoint")
    if payload.get("format_version", 0) > CHECKPOINT_VERSION:
        raise UserError(
            f"{path}: checkpoint format {payload['format_version']} is newer than this audiosep "
            f"reads ({CHECKPOINT_VERSION}); upgrade audiosep"
        )
    missing = [k for k in ("kind", "config", "domain", "state_dict") if k not in payload]
    if missing:
        raise UserError(f"{path}: corrupt checkpoint (missing {', '.join(missing)})")
    return payload


def refuse_training_checkpoint(path: str | os.PathLike) -> None:
    """UserError if `path` holds a resumable training checkpoint (one with optimiser state):
    writing another file over it would lose the run. Files that are not audiosep checkpoints
    are left to the caller's own checks.
    """
    path = Path(path)
    if not path.is_file():
        return
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 — not a checkpoint at all: nothing of a training to lose
        return
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT and payload.get("optimizer"):
        raise UserError(f"{path}: a resumable training checkpoint (step {payload.get('step', '?')}, with optimiser "
                        "state) is there; choose another output path")


def prior_class(kind: str, module: str | None = None, path: str | os.PathLike = "checkpoint") -> type[Prior]:
    """The Prior class registered as `kind`, importing its `audiosep.priors` module if needed."""
    if kind not in _PRIORS and module and module.startswith("audiosep.priors."):
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    if kind not in _PRIORS:
        _import_every_prior_module()  # so the message names every kind, not only those imported so far
        raise UserError(f"{path}: a model of kind {kind!r}, not one of the priors this audiosep knows "
                        f"({', '.join(sorted(_PRIORS)) or 'none'})")
    return _PRIORS[kind]


def _import_every_prior_module() -> None:
    """Import each module of `audiosep.priors`, registering every kind it defines."""
    package = importlib.import_module(__package__)
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{__package__}.{module.name}")


def build_from_checkpoint(payload: Mapping[str, Any], path: str | os.PathLike = "checkpoint") -> Prior:
    """A fresh model of the checkpoint's kind and config (weights not loaded), with its domain."""
    cls = prior_class(payload["kind"], payload.get("module"), path)
    try:
        model = cls(**payload["config"])
    except (TypeError, ValueError) as err:
        raise UserError(f"{path}: cannot rebuild {payload['kind']} from its stored config ({err})") from None
    model.domain = Domain.from_dict(payload["domain"])
    return model


def load_prior(
    path: str | os.PathLike, expected_domain: Domain | None = None, device: str | torch.device = "cpu"
) -> Prior:
    """Rebuild a trained prior from its checkpoint, in eval mode on `device`.

    The EMA weights are used when the checkpoint has them, else the raw weights.

    Args:
        path: a checkpoint written by `save_checkpoint` / `audiosep.training.train`.
        expected_domain: if given, the checkpoint's domain must equal it.
        device: where to put the model ("cpu", "cuda", "cuda:1", ...).

    Raises:
        UserError (one line): missing file; not a checkpoint or corrupt; unknown model kind;
            weights that do not fit the stored config; a domain other than `expected_domain`
            (both domains named).
    """
    payload = load_checkpoint(path, device)
    model = build_from_checkpoint(payload, path)
    if expected_domain is not None and model.domain != expected_domain:
        raise UserError(
            f"{path}: prior trained on {model.domain.describe()}, but {expected_domain.describe()} is expected"
        )
    _load_weights(model, payload, path)
    return model.to(device).eval()


def _load_weights(model: Prior, payload: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Load the checkpoint's EMA weights (else its raw weights) into `model` built from it."""
    weights = payload["ema"] if payload.get("ema") is not None else payload["state_dict"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        reason = first_line(err)[:160]
        raise UserError(f"{path}: weights do not fit a {payload['kind']} model ({reason})") from None


WEIGHT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def export_prior(source: str | os.PathLike, target: str | os.PathLike, dtype: str = "fp32") -> Path:
    """Write the weights-only copy of a training checkpoint, for bundling or sharing.

    The copy holds the weights `load_prior` uses (the EMA weights when there are any) as its
    `state_dict`, the kind, config, domain, step and training config; no optimiser state,
    second weight copy or RNG states (an NCSNv2 with nf 32: 10.2 MB → 2.5 MB). `dtype`
    ("fp32" | "fp16" | "bf16", `WEIGHT_DTYPES`) stores the floating-point weights at that
    precision, half the size for the two 16-bit ones; they load back into the float32 model
    (`load_state_dict` casts), so only their rounding differs from the float32 copy.

    Raises:
        UserError: as `load_prior` for `source`; `target` the same file as `source`; an
            unknown `dtype`.
    """
    if dtype not in WEIGHT_DTYPES:
        raise UserError(f"weights dtype must be one of {', '.join(WEIGHT_DTYPES)}, got {dtype!r}")
    if Path(target).resolve() == Path(source).resolve():
        raise UserError("the weights-only copy must go to another file than the training checkpoint")
    payload = load_checkpoint(source)
    model = build_from_checkpoint(payload, source)
    _load_weights(model, payload, source)
    model.to(WEIGHT_DTYPES[dtype])  # floating-point parameters and buffers only
    keep = {k: v for k, v in payload.get("extra", {}).items() if k in ("train_config", "valid_loss", "world_size", "sum_table", "level_db")}
    return save_checkpoint(target, model, step=payload.get("step", 0),
                           extra={**keep, "exported_from": Path(source).name, "weights_dtype": dtype})
