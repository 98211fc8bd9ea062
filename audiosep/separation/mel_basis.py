"""`MelBasis`: BASIS separation of audio with one NCSN (or any mel) prior per source,
a `Separator` method.

A mixture `(C, N)` → the mel power of its channel mean `(n_mels, T)` → the front end's [0, 1] units →
overlapping patches `(B, 1, n_mels, patch_frames)` → `basis_separate` with dB-power mixing
(`DbPowerMixing`), `BATCH_PATCHES` patches at a time → each source's patches back to mel power and
put back together (`unpatchify`) → mel powers `(K, n_mels, T)` → waveforms `(K, C, N)` by
`invert_mel_powers` with the mixture (Wiener masks by default, the same on every channel:
the stems sum to the mixture and keep its stereo image; Griffin-Lim gives mono stems copied
to every channel).

Overlapping patches are averaged as powers, not in dB: every patch satisfies the mixture
constraint Σₖ powerₖ = mixture power (up to the likelihood width), and a weighted mean of
powers keeps that sum, whereas a mean in dB does not where patches disagree on which
source holds the energy (one patch gives it all to source 1, the next to source 2: the dB
means put both sources halfway between the mixture and the front end's floor, tens of dB
too low; tests/test_mel_basis.py checks the sum with broad Gaussian priors).

The front end is the one the priors were trained on (their common mel `Domain`), and the
mixture is levelled (by `Separator`) to `LEVEL_DB`, the level of the training mixtures,
because a mel prior is trained on absolute dB values.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from ..devices import resolve_device
from ..errors import UserError
from ..priors.base import Domain, Prior, load_checkpoint, load_prior
from ..priors.masknet import load_masknet
from ..progress import progress_bar
from ..spectral.frontend import Frontend, patchify, unpatchify
from ..spectral.functional import mel_spectrogram
from ..spectral.inversion import METHODS as INVERSIONS
from ..spectral.inversion import invert_mel_powers
from .basis import BasisConfig, basis_separate, fit_schedule
from .mixing import DbPowerMixing
from .nmf import NMFModel
from .protocol import Method

# Mixture RMS (dBFS) the piano/violin priors were trained at: the recipe renders every source at
# RMS 0.1, so two uncorrelated sources give 20·log10(0.1·√2) ≈ −17.0 dBFS.
LEVEL_DB = -17.0

# Patches per `basis_separate` call (MelBasis.batch_patches): 4 costs the same user time as all
# the patches of a 30 s chunk at once, without their page faults and system time and at about
# half the peak memory; 2 is too small a batch to vectorise well.
BATCH_PATCHES: int | None = 4

# The BASIS settings `audiosep separate --model A.pt B.pt` uses, per initialisation (see
# `default_basis`), chosen on the validation split of the synthesized piano/violin set under the
# budget of 4 CPU s per second of audio: the closer the start is to the answer, the lower the
# σ the anneal starts from and the fewer levels it needs (the trade-off table of
# `benchmarks/separation.py --tradeoff` measures steps × levels). The paper's schedule (σ 1 →
# 0.01, 10 levels × 100 steps, U(0, 1) start) is `BasisConfig()`.
# Chains started from NMF hold the mixture exactly (the Dirac likelihood), which allows the
# longer step of DEFAULT_DELTA (measured there).
DEFAULT_SCHEDULES = {
    "uniform": dict(sigma_max=1.0, n_levels=10, steps_per_level=10, tweedie=True),
    "mixture": dict(sigma_max=0.3, n_levels=7, steps_per_level=10, tweedie=True),
    "nmf": dict(sigma_max=0.05, n_levels=4, steps_per_level=10, tweedie=True, likelihood="dirac"),
}

# The Langevin step δ (η = δ·σ²/σ_L²) per likelihood, when not given. The Gaussian constraint
# (weight 1/σ²) bounds δ: a step past 5e-5 became unstable. Projected onto the mixture (dirac)
# there is no such term and only the prior bounds the step (η/σ² = δ/σ_L² < 2), so the longer
# 1e-4 is stable there and better at the same cost (`benchmarks/separation.py --variant` compares
# steps).
DEFAULT_DELTA = {"gaussian": 2e-5, "dirac": 1e-4}


def default_basis(init: str = "mixture", **overrides) -> BasisConfig:
    """The default `BasisConfig` for chains started by `init` ("uniform", "mixture" or
    "nmf": a baseline's stems, passed to `MelBasis` as `init_from`); `overrides` set
    BasisConfig fields (None values are ignored). δ, unless given, is the likelihood's
    `DEFAULT_DELTA`."""
    if init not in DEFAULT_SCHEDULES:
        raise UserError(f"unknown BASIS initialisation {init!r}; choose one of {', '.join(DEFAULT_SCHEDULES)}")
    settings = {"chain_average": "power",  # chains of mel spectrograms are averaged as powers
                **DEFAULT_SCHEDULES[init], **{k: v for k, v in overrides.items() if v is not None}}
    settings.setdefault("delta", DEFAULT_DELTA.get(settings.get("likelihood", "gaussian"), DEFAULT_DELTA["gaussian"]))
    return BasisConfig(init="uniform" if init == "nmf" else init, **settings)


class MelBasis:
    """BASIS over K mel-spectrogram priors, as a `Separator` method.

    Args:
        priors: K ≥ 2 priors (one per source, in output order), all trained on the same
            mel `Domain`; they are used on their own device.
        config: the BASIS settings (default `default_basis("mixture")`, or
            `default_basis("nmf")` with `init_from`).
        sources: K source names (default "source0", "source1", ...).
        inversion: "wiener" (masks on the mixture STFT; stems sum to the mixture), "wiener-mc"
            (the multichannel Wiener filter: a stereo image per source, stems sum to the mixture),
            "phase" (mixture phase) or "griffinlim" (see `invert_mel_powers`).
        hop_frames: frames between patch starts (default half a patch).
        batch_patches: patches separated together in one `basis_separate` call (None: all
            of a chunk). A fixed batch keeps the cost per second of audio independent of the
            chunk length and the working memory small (see `BATCH_PATCHES`).
        level_db: the mixture RMS (dBFS) `Separator` brings inputs to (default `LEVEL_DB`).
        seed: seeds the Langevin noise and Griffin-Lim's initial phase of every call
            (default `config.seed`), so a chunk's result depends only on the chunk.
        init_from: a baseline `Separator` method at the front end's rate (e.g. an
            `NMFModel` with the same sources in the same order) whose stems' mel powers
            start the Langevin chains instead of `config.init` (anneal from a low σ then),
            and whose STFT powers start the NNLS of the inversion.
        progress: the tqdm bar over noise levels of `basis_separate`.

    Attributes: `sources`, `sample_rate` (the front end's, Hz), `channels` = None (any), `level_db`,
    `frontend`, `priors`, `config`, `device` (the priors' device).

    Raises:
        UserError: fewer than two priors, repeated source names, priors of different or
            non-mel domains, an unknown inversion, a hop outside [1, patch_frames].
    """

    channels = None

    def __init__(
        self,
        priors: Sequence[Prior],
        config: BasisConfig | None = None,
        sources: Sequence[str] | None = None,
        *,
        inversion: Literal["wiener", "wiener-mc", "phase", "griffinlim"] = "wiener",
        hop_frames: int | None = None,
        batch_patches: int | None = BATCH_PATCHES,
        level_db: float = LEVEL_DB,
        seed: int | None = None,
        init_from: Method | None = None,
        progress: bool = True,
    ) -> None:
        # channels-last convolutions: an NCSNv2 (nf 32) score on 9 mel patches took 0.23 s
        # instead of 0.30 s on one CPU thread (same values to 7e-6)
        self.priors = [prior.to(memory_format=torch.channels_last) for prior in priors]
        self.sources = tuple(sources) if sources is not None else tuple(f"source{k}" for k in range(len(self.priors)))
        _check_sources(self.sources, len(self.priors))
        self.frontend = common_frontend([p.domain for p in self.priors], [f"prior {k}" for k in range(len(self.priors))])
        if inversion not in INVERSIONS:
            raise UserError(f"unknown inversion {inversion!r}; choose one of: {', '.join(INVERSIONS)}")
        patch = self.frontend.patch_frames
        self.hop_frames = hop_frames if hop_frames is not None else max(patch // 2, 1)
        if not 1 <= self.hop_frames <= patch:
            raise UserError(f"patch hop must be between 1 and {patch} frames, got {self.hop_frames}")
        self.config = fit_schedule(config or default_basis("nmf" if init_from is not None else "mixture"),
                                   self.priors)
        self.config.noise_levels()  # an invalid σ schedule fails here, before any audio is read
        if batch_patches is not None and batch_patches < 1:
            raise UserError(f"batch_patches must be at least 1, got {batch_patches}")
        self.batch_patches = batch_patches
        self.inversion, self.level_db, self.progress = inversion, float(level_db), progress
        self.report = None  # set by `Separator`: called with the fraction of a chunk's patches done
        self.seed = self.config.seed if seed is None else int(seed)
        self.mixing = DbPowerMixing(self.frontend)
        self.init_from = init_from
        if init_from is not None:
            _check_baseline(init_from, self.sources, self.sample_rate)

    @classmethod
    def from_files(
        cls,
        paths: Sequence[str | os.PathLike],
        config: BasisConfig | None = None,
        sources: Sequence[str] | None = None,
        device: str | torch.device = "cpu",
        **options,
    ) -> MelBasis:
        """Load one prior checkpoint per source (`load_prior`, on `device`).

        Args:
            paths: K checkpoint files; the sources are named after their stems
                (piano.pt → "piano") unless `sources` is given.
            options: the keyword options of `MelBasis`.
        Raises:
            UserError: as `load_prior` (missing, foreign, corrupt), priors whose domains
                differ (both files named) or are not mel spectrograms, an unusable device.
        """
        paths, device = [Path(p) for p in paths], resolve_device(device)
        priors = [load_prior(p, device=device) for p in paths]
        common_frontend([p.domain for p in priors], [str(p) for p in paths])
        names = sources if sources is not None else [p.stem for p in paths]
        return cls(priors, config, names, **options)

    @property
    def sample_rate(self) -> int:
        """The front end's sample rate (Hz): `Separator` resamples inputs to it."""
        return self.frontend.sample_rate

    @property
    def device(self) -> torch.device:
        """Where the priors (and so the separation) run."""
        return next((p.device for prior in self.priors for p in prior.parameters()), torch.device("cpu"))

    def __call__(self, mix: Tensor) -> Tensor:
        """Separate a mixture `(C, N)` (float, at `sample_rate`) → stems `(K, C, N)`.

        Runs on the priors' device; returns on the mixture's device and dtype.
        """
        if mix.dim() != 2:
            raise ValueError(f"MelBasis separates a mixture (C, N), got shape {tuple(mix.shape)}")
        if mix.shape[1] <= self.frontend.n_fft // 2:
            raise UserError(f"{mix.shape[1]} samples are too short for BASIS: need more than "
                            f"{self.frontend.n_fft // 2} at {self.sample_rate} Hz")
        x = mix.to(self.device, torch.float32)
        init, reference = None, None
        if self.init_from is not None:
            init, reference = baseline_powers(self.frontend, self.init_from(x))
        mel_powers = self.separate_mel(self.frontend.mel_power(x.mean(dim=0)), init)
        stems = invert_mel_powers(self.frontend, mel_powers, x, method=self.inversion, seed=self.seed,
                                  reference=reference)
        return stems.to(mix.device, mix.dtype)

    def separate_mel(self, mix_mel: Tensor, init: Tensor | None = None) -> Tensor:
        """Mixture mel power `(n_mels, T)` → source mel powers `(K, n_mels, T)` (same units).

        The mixture is cut into patches of `frontend.patch_frames` frames every
        `hop_frames` (the end padded with silence), separated `batch_patches` at a time by
        `basis_separate` (one generator runs through the batches), and each source's patches
        are averaged back as powers (see the module doc).
        `init` (optional): starting source mel powers `(K, n_mels, T)`, cut the same way.
        """
        patches, layout = patchify(self.frontend.to_unit(mix_mel), self.frontend.patch_frames, self.hop_frames)
        if init is not None:
            init = patchify(self.frontend.to_unit(init), self.frontend.patch_frames, self.hop_frames)[0]
            init = init.unflatten(0, (len(self.priors), patches.shape[0]))
        generator = torch.Generator().manual_seed(self.seed)
        size = self.batch_patches or patches.shape[0]
        batches = [slice(start, start + size) for start in range(0, patches.shape[0], size)]
        parts = []
        for i, b in enumerate(progress_bar(batches, desc="BASIS patches", unit="batch", leave=False,
                                           disable=not self.progress or len(batches) == 1)):
            parts.append(basis_separate(self.priors, patches[b], self.mixing, self.config,
                                        init=None if init is None else init[:, b], generator=generator,
                                        progress=self.progress and len(batches) == 1))
            if self.report is not None:
                self.report((i + 1) / len(batches))
        sources = torch.cat(parts, dim=1)  # (K, B, 1, n_mels, patch_frames)
        return unpatchify(self.frontend.from_unit(sources), *layout)

    def __repr__(self) -> str:
        return (f"MelBasis(sources={list(self.sources)}, frontend={self.frontend.name!r}, "
                f"inversion={self.inversion!r}, hop_frames={self.hop_frames})")


def baseline_powers(frontend: Frontend, stems: Tensor) -> tuple[Tensor, Tensor]:
    """A baseline's stems `(K, C, N)` → the mel powers `(K, n_mels, T)` that start BASIS
    chains and the STFT powers `(K, F, T)` that start the NNLS of the inversion (both of the
    channel mean, in `frontend`'s units)."""
    reference = frontend.stft(stems.mean(dim=1)).abs().pow(frontend.power)
    return mel_spectrogram(reference, frontend.filterbank(reference.device, reference.dtype)), reference


def common_frontend(domains: Sequence[Domain | None], names: Sequence[str]) -> Frontend:
    """The mel front end shared by all `domains` (one per prior, called `names` in errors).

    Raises:
        UserError: a prior without a mel domain, or two priors on different front ends
            (both named, with the settings that differ).
    """
    for domain, name in zip(domains, names):
        if domain is None or domain.kind != "mel":
            what = domain.describe() if domain is not None else "no recorded domain"
            raise UserError(f"{name}: BASIS on audio needs mel-spectrogram priors, this one has {what}")
    first = domains[0]
    for domain, name in zip(domains[1:], names[1:]):
        if domain != first:
            raise UserError(f"{names[0]} and {name} were trained on different mel front ends "
                            f"({_differences(first, domain)}); BASIS needs priors of one front end")
    return Frontend.from_dict(first.frontend_dict)


def _differences(a: Domain, b: Domain) -> str:
    """`key a-value vs b-value` for every front-end setting (except the name) that differs."""
    da, db = a.frontend_dict, b.frontend_dict
    keys = sorted((set(da) | set(db)) - {"name"})
    return ", ".join(f"{k} {da.get(k)} vs {db.get(k)}" for k in keys if da.get(k) != db.get(k))


def load_baseline(path: str | os.PathLike, device: str | torch.device = "cpu") -> Method:
    """The model at `path` that starts BASIS chains (`init_from`): an NMF model or a mask network.

    Raises:
        UserError: as `load_checkpoint`, or a checkpoint of another kind.
    """
    kind = load_checkpoint(path)["kind"]
    if kind == "nmf":
        return NMFModel.load(path)
    if kind == "masknet":
        return load_masknet(path, device=device)
    raise UserError(f"{path}: a {kind} checkpoint; BASIS starts from an NMF model or a mask network")


def baseline_mismatch(method: Method, sources: Sequence[str], sample_rate: int) -> str | None:
    """Why `method` cannot start BASIS chains for `sources` at `sample_rate` (Hz), or None
    when it can (same sources in the same order, same rate)."""
    if tuple(method.sources) != tuple(sources):
        return (f"the initialising model separates {', '.join(method.sources)}, "
                f"but the priors are {', '.join(sources)} (same sources, same order needed)")
    if method.sample_rate != sample_rate:
        return f"the initialising model runs at {method.sample_rate} Hz, the priors' front end at {sample_rate} Hz"
    return None


def _check_baseline(method: Method, sources: tuple[str, ...], sample_rate: int) -> None:
    """UserError unless the initialising method gives the same sources at the same rate."""
    reason = baseline_mismatch(method, sources, sample_rate)
    if reason is not None:
        raise UserError(reason)


def _check_sources(sources: tuple[str, ...], n_priors: int) -> None:
    if n_priors < 2:
        raise UserError(f"BASIS separates a mixture into two or more sources; got {n_priors} prior(s)")
    if len(sources) != n_priors:
        raise UserError(f"{len(sources)} source names for {n_priors} priors")
    repeated = sorted({s for s in sources if sources.count(s) > 1})
    if repeated:
        raise UserError(f"source name(s) {', '.join(repeated)} given twice; each source needs its own name")
