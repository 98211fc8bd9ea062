"""The separation methods by name: what model files each takes, its options, how it is built.

It imports each method's module only in its builder (and the `separation` package loads its
modules on first use), so the command line reads the options without loading torch.

`METHODS` holds one `MethodSpec` per method (masknet, basis, nmf, latent, vae-bss), the one
place a method is declared: `separation_method` infers the method of a set of model files from
their checkpoint kinds, `build_method` turns (method, files, options) into a `Separator` method,
and the command line generates its method flags from the options dataclasses (each field's
metadata: help, argument kind, choices), so a method's option exists once. A bundled set
(`audiosep.zoo`) is only a name for (method, files, BASIS's start).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Sequence

from ..errors import UserError
from ..zoo import DEFAULT_SET, ModelSet, model_set

if TYPE_CHECKING:  # torch and the methods are imported when a method is built: the CLI starts fast
    import torch

    from .protocol import Method


def option(help: str, kind: str | None = None, choices: Sequence[str] | None = None,
           metavar: str | None = None) -> Any:
    """A method option (default None: the method's own default). `kind` names the command
    line's argument type ("positive_int", "count", "positive_float", "fraction", "path")."""
    return field(default=None, metadata={"help": help, "kind": kind, "choices": choices, "metavar": metavar})


@dataclass(frozen=True)
class BasisOptions:
    """BASIS (`mel_basis.MelBasis` over one prior per source)."""

    steps: int | None = option("Langevin steps per noise level (default 10)", "positive_int")
    levels: int | None = option("noise levels, σ geometric down to 0.01 (default: 4 from σ 0.05 for --init "
                                "model, 7 from 0.3 for mixture, 10 from 1 for uniform)", "positive_int")
    init: str | None = option("start from the stems of a baseline model, --init-model (then annealed from a low "
                              "σ; nmf: the same, the set's NMF model by default), an equal split of the mixture, "
                              "or U(0, 1) noise; default: model when the baseline separates the priors' sources "
                              "at their rate, else mixture", choices=("model", "nmf", "mixture", "uniform"))
    init_model: Path | None = option("the model whose stems start the chains (--init model/nmf): a mask network "
                                     "or an NMF model; default: the model set's (the bundled mask network for "
                                     "--model files; --init nmf: the NMF model)", "path", metavar="PATH")
    likelihood: str | None = option("the mixture as a Gaussian constraint in the drift, or exactly (dirac: every "
                                    "step projected back onto the mixture)", choices=("gaussian", "dirac"))
    delta: float | None = option("the Langevin step δ (step σ²/σ_min²·δ at noise σ); default 1e-4 with the dirac "
                                 "likelihood, 2e-5 with gaussian", "positive_float")
    patch_hop: int | None = option("frames between the starts of the mel patches the priors see (default: half a "
                                   "patch); the cost grows as 1/hop", "positive_int", metavar="FRAMES")
    corrections: int | None = option("re-noising correction rounds per noise level", "count", metavar="N")
    chains: int | None = option("independent chains, averaged as powers (default 1)", "positive_int", metavar="N")
    inversion: str | None = option("mel → audio by Wiener masks on the mixture (default), the multichannel Wiener "
                                   "filter, mixture phase, or Griffin-Lim",
                                   choices=("wiener", "wiener-mc", "phase", "griffinlim"))


@dataclass(frozen=True)
class LatentOptions:
    """Latent separation (`latent.LatentSeparator`: an LQ-VAE and one code prior per source)."""

    chains: int | None = option("parallel chains whose best pair is kept (default 64)", "positive_int",
                                metavar="N")
    sigma: float | None = option("σ of the Gaussian likelihood in codebook units (default 0.4)", "positive_float")
    likelihood: str | None = option("a Gaussian on the codebook distance of the pair's sum code to the mixture "
                                    "code (default), or dirac (the sum code must equal it)",
                                    choices=("gaussian", "dirac"))
    window: int | None = option("tokens sampled between two choices of the best pair (default: half the priors' "
                                "context)", "positive_int", metavar="TOKENS")
    postfilter: str | None = option("the decoded waveforms' STFT powers as Wiener masks on the mixture (wiener, "
                                    "default), or the decoded waveforms as they are (none, the paper's output)",
                                    choices=("none", "wiener"))
    resample: float | None = option("resample the chains when their effective sample size falls below ESS x "
                                    "chains (0 to 1; default 0.25; 0: independent chains)", "fraction",
                                    metavar="ESS")


@dataclass(frozen=True)
class NoOptions:
    """A method without options of its own."""


Builder = Callable[[Sequence[Path], Any, "torch.device", int, ModelSet], "Method"]


@dataclass(frozen=True)
class MethodSpec:
    """One separation method: its name, a line on what it is, the checkpoint kinds it takes
    (None: the priors, every kind no other method claims), what `--model` it takes, its
    options dataclass, its label in messages and its builder `(files, options, device, seed,
    model set of defaults) -> Method`."""

    name: str
    summary: str
    kinds: tuple[str, ...] | None
    usage: str
    options: type
    label: str
    build: Builder


def _build_masknet(paths, options, device, seed, defaults) -> Method:
    from ..priors.masknet import load_masknets

    return load_masknets(paths, device=device)


def _build_nmf(paths, options, device, seed, defaults) -> Method:
    from .nmf import NMFModel

    return NMFModel.load(paths[0])


def _build_vae_bss(paths, options, device, seed, defaults) -> Method:
    from .vae_bss import VAEBSS

    return VAEBSS.from_file(paths[0], device=device)


def _build_latent(paths, options: LatentOptions, device, seed, defaults) -> Method:
    from .latent import LatentConfig, LatentSeparator

    given = {"n_chains": options.chains, "sigma": options.sigma, "likelihood": options.likelihood,
             "window": options.window, "postfilter": options.postfilter, "resample": options.resample}
    config = LatentConfig(seed=seed, **{k: v for k, v in given.items() if v is not None})
    return LatentSeparator.from_files(paths[0], paths[1:], config, device=device)


def _build_basis(paths, options: BasisOptions, device, seed, defaults: ModelSet) -> Method:
    """BASIS over the priors `paths`, started from `options.init_model`, else from `defaults`'
    start (its NMF model with --init nmf) when that separates the priors' sources, else from
    the mixture."""
    from .mel_basis import MelBasis, baseline_mismatch, default_basis, load_baseline

    from_model = options.init in (None, "model", "nmf")
    if options.init_model and not from_model:
        raise UserError(f"--init-model is the starting model of --init model, not of --init {options.init}")
    priors = MelBasis.from_files(paths, device=device)
    baseline = load_baseline(options.init_model or _default_start(defaults, options.init), device) \
        if from_model else None
    if options.init is None:
        init = "nmf" if baseline_mismatch(baseline, priors.sources, priors.sample_rate) is None else "mixture"
    else:  # default_basis("nmf") is the schedule of any baseline's start
        init = "nmf" if from_model else options.init
    config = default_basis(init, seed=seed, steps_per_level=options.steps, n_levels=options.levels,
                           likelihood=options.likelihood, corrections=options.corrections,
                           n_chains=options.chains, delta=options.delta)
    return MelBasis(priors.priors, config, priors.sources, inversion=options.inversion or "wiener",
                    hop_frames=options.patch_hop, init_from=baseline if init == "nmf" else None)


def _default_start(defaults: ModelSet, init: str | None) -> Path:
    """BASIS's starting model in `defaults`: its NMF model for --init nmf, else its BASIS start."""
    if init == "nmf":
        return defaults.files("nmf")[0]
    start = defaults.init_model("basis")
    if start is None:
        raise UserError(f"model set '{defaults.name}' names no starting model for BASIS; give --init-model")
    return start


METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in (
    MethodSpec("masknet", "the supervised mask network (train masknet)", ("masknet",),
               "one mask network checkpoint, which masks every source, or several (the mean of their masks: a bag): "
               "--model MASKNET.pt [MORE.pt ...]", NoOptions,
               "mask network", _build_masknet),
    MethodSpec("basis", "annealed Langevin over one prior per source, started from a baseline's stems", None,
               "one prior checkpoint per source (--model A.pt B.pt ...)", BasisOptions, "BASIS", _build_basis),
    MethodSpec("nmf", "supervised NMF, the shallow baseline (train nmf)", ("nmf",),
               "one NMF model (audiosep train nmf)", NoOptions, "NMF", _build_nmf),
    MethodSpec("latent", "Bayesian search over an LQ-VAE's codes with one code prior per source",
               ("lqvae", "code_transformer"),
               "an LQ-VAE and one code prior per source (--model LQVAE.pt A.pt B.pt)", LatentOptions,
               "latent separation", _build_latent),
    MethodSpec("vae-bss", "unsupervised VAE-BSS on mixtures (train vae --data): stems source0 ... source{K-1}; "
               "experimental on audio (below half the mixture on piano/violin: docs/results.md)",
               ("vae",), "one VAE checkpoint, which decodes every source: --model VAE.pt", NoOptions, "vae-bss",
               _build_vae_bss),
)}
MethodName = Literal["masknet", "basis", "nmf", "latent", "vae-bss"]
_KIND_NAMES = {"nmf": "an NMF model (nmf)", "masknet": "a mask network (masknet)", "vae": "a VAE (vae-bss)",
               "lqvae": "an LQ-VAE (latent)", "code_transformer": "a code prior (latent)"}


def option_names(method: str) -> tuple[str, ...]:
    """The option fields `method` takes."""
    return tuple(f.name for f in dataclasses.fields(METHODS[method].options))


def method_options(method: str, given: Mapping[str, Any]) -> Any:
    """`method`'s options dataclass from `given` {option: value} (None: not given).

    Raises:
        UserError: a given option that `method` does not take, named as a flag with the
            method it belongs to.
    """
    accepted = option_names(method)
    foreign = [name for name, value in given.items() if value is not None and name not in accepted]
    if foreign:
        owners = [spec.label for spec in METHODS.values() if foreign[0] in option_names(spec.name)]
        flags = ", ".join("--" + name.replace("_", "-") for name in foreign)
        raise UserError(f"{flags}: {owners[0] if owners else 'unknown'} option(s), but the method is {method}")
    return METHODS[method].options(**{k: v for k, v in given.items() if k in accepted})


def build_method(method: str, paths: Sequence[str | os.PathLike], options: Any = None,
                 device: str | "torch.device" = "cpu", seed: int = 0, defaults: ModelSet | None = None) -> Method:
    """The `Separator` method `method` over the model files `paths`.

    Args:
        options: `method`'s options dataclass (default: all its defaults).
        defaults: the model set whose files fill in what the options leave open (BASIS's
            start); default the default set.
    Raises:
        UserError: as the method's loader (a file of the wrong kind, domain, sources).
    """
    from ..devices import resolve_device

    spec = METHODS[method]
    return spec.build([Path(p) for p in paths], options or spec.options(), resolve_device(device), seed,
                      defaults or model_set(DEFAULT_SET))


def _refuse_unsuited_files(method: str, kinds: Sequence[tuple[Path, str]]) -> None:
    """UserError naming the first model file that `method` cannot use (checked before counting the
    files, so that the message is about the method asked for, not the one the files suggest)."""
    claimed = {kind for spec in METHODS.values() if spec.kinds for kind in spec.kinds}
    accepted = METHODS[method].kinds
    for path, kind in kinds:
        if (kind not in accepted) if accepted is not None else (kind in claimed):
            what = _KIND_NAMES.get(kind, "a prior checkpoint (basis)")
            raise UserError(f"method '{method}' was asked for but {path} is {what}; {method} takes "
                            f"{METHODS[method].usage}")


def separation_method(paths: Sequence[str | os.PathLike], requested: str | None = None) -> MethodName:
    """The separation method for a set of model files, from their checkpoint kinds.

    Mask networks only → "masknet" (several: a bag); one NMF model → "nmf"; one VAE → "vae-bss"; an LQ-VAE and
    two code priors → "latent"; two or more other priors → "basis". `requested` (if given)
    must agree with the files; no files → `requested`, by default the default set's method.

    Raises:
        UserError: an unknown method, unreadable files (as `load_checkpoint`), files that do not
            suit `requested`, or a set that fits no method (a single-file model with other files,
            NMF models mixed with priors, one prior alone, an LQ-VAE without exactly two code priors).
    """
    if requested not in (None, *METHODS):
        raise UserError(f"unknown separation method {requested!r}; choose {', '.join(METHODS)}")
    if not paths:
        return requested or model_set(DEFAULT_SET).default
    from ..priors.base import load_checkpoint

    kinds = [(Path(p), load_checkpoint(p)["kind"]) for p in paths]
    if requested is not None:
        _refuse_unsuited_files(requested, kinds)
    single = [name for _, kind in kinds for name in ("masknet", "vae-bss") if kind in METHODS[name].kinds]
    if single:  # a model that holds every source comes alone, or mask networks in a bag
        if len(kinds) > 1 and single != ["masknet"] * len(kinds):
            raise UserError(f"{single[0]} takes {METHODS[single[0]].usage}")
        return single[0]
    nmf = [p for p, kind in kinds if kind == "nmf"]
    priors = [p for p, kind in kinds if kind != "nmf"]
    if nmf and priors:
        raise UserError(f"{nmf[0]} is an NMF model but {priors[0]} is a prior; give one NMF model "
                        "or one prior per source")
    if len(nmf) > 1:
        raise UserError(f"{len(nmf)} NMF models given; an NMF model holds all its sources, give one")
    if nmf:
        return "nmf"
    if requested == "latent" or any(kind == "lqvae" for _, kind in kinds):
        codes = [kind == "code_transformer" for _, kind in kinds[1:]]
        if kinds[0][1] != "lqvae" or len(codes) != 2 or not all(codes):
            raise UserError("latent separation takes the LQ-VAE first, then one code prior per source: "
                            "--model LQVAE.pt A.pt B.pt")
        return "latent"
    if len(kinds) == 1:
        raise UserError(f"{kinds[0][0]}: one prior checkpoint given; BASIS needs one prior per source "
                        "(--model A.pt B.pt ...)")
    return "basis"
