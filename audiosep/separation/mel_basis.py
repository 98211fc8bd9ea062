"""`MelBasis`: BASIS separation of audio with one NCSN (or any mel) prior per source,
a `Separator` method.

A mono mixture `(1, N)` → mel power `(n_mels, T)` → the front end's [0, 1] units →
overlapping patches `(B, 1, n_mels, patch_frames)` → `basis_separate` with dB-power mixing
(`DbPowerMixing`), all patches in one batch → each source's patches back to mel power and
put back together (`unpatchify`) → mel powers `(K, n_mels, T)` → waveforms `(K, 1, N)` by
`invert_mel_powers` with the mixture (Wiener masks by default, so the stems sum to the
mixture).

Overlapping patches are averaged as powers, not in dB: every patch satisfies the mixture
constraint Σₖ powerₖ = mixture power (up to the likelihood width), and a weighted mean of
powers keeps that sum, whereas a mean in dB does not where patches disagree on which
source holds the energy (one patch gives it all to source 1, the next to source 2: the dB
means put both sources halfway between the mixture and the front end's floor, tens of dB
too low). With broad Gaussian priors (tests/test_mel_basis.py) the dB mean left an RMS
error of ≈ 5 dB (up to 40 dB) on Σₖ powerₖ, the power mean 0.8 dB.

The front end is the one the priors were trained on (their common mel `Domain`), and the
mixture is levelled (by `Separator`) to `LEVEL_DB`, the level of the training mixtures,
because a mel prior is trained on absolute dB values.

`separation_method` tells which separation method a set of model files is for, so the
command line can infer it (an NMF model file, or prior checkpoints for BASIS).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from ..errors import UserError
from ..priors.base import Domain, Prior, load_checkpoint, load_prior
from ..spectral.frontend import Frontend, patchify, unpatchify
from ..spectral.inversion import METHODS as INVERSIONS
from ..spectral.inversion import invert_mel_powers
from .basis import BasisConfig, basis_separate
from .mixing import DbPowerMixing
from .separator import resolve_device

# Mixture RMS (dBFS) the piano/violin priors were trained at: the median over the 180
# synthesized training mixtures of /work/data/pv/train (`audiosep synth piano_violin`:
# every source at RMS 0.1, so two uncorrelated sources give ≈ −17.0 dBFS); measured
# −17.02 dBFS, range −17.26 to −16.92.
LEVEL_DB = -17.0


class MelBasis:
    """BASIS over K mel-spectrogram priors, as a `Separator` method.

    Args:
        priors: K ≥ 2 priors (one per source, in output order), all trained on the same
            mel `Domain`; they are used on their own device.
        config: the BASIS settings (default `BasisConfig()`: 10 levels × 100 steps).
        sources: K source names (default "source0", "source1", ...).
        inversion: "wiener" (masks on the mixture STFT; stems sum to the mixture),
            "phase" (mixture phase) or "griffinlim" (see `invert_mel_powers`).
        hop_frames: frames between patch starts (default half a patch).
        level_db: the mixture RMS (dBFS) `Separator` brings inputs to (default `LEVEL_DB`).
        seed: seeds the Langevin noise and Griffin-Lim's initial phase of every call
            (default `config.seed`), so a chunk's result depends only on the chunk.
        progress: the tqdm bar over noise levels of `basis_separate`.

    Attributes: `sources`, `sample_rate` (the front end's, Hz), `channels` = 1, `level_db`,
    `frontend`, `priors`, `config`, `device` (the priors' device).

    Raises:
        UserError: fewer than two priors, repeated source names, priors of different or
            non-mel domains, an unknown inversion, a hop outside [1, patch_frames].
    """

    channels = 1

    def __init__(
        self,
        priors: Sequence[Prior],
        config: BasisConfig | None = None,
        sources: Sequence[str] | None = None,
        *,
        inversion: Literal["wiener", "phase", "griffinlim"] = "wiener",
        hop_frames: int | None = None,
        level_db: float = LEVEL_DB,
        seed: int | None = None,
        progress: bool = True,
    ) -> None:
        self.priors = list(priors)
        self.sources = tuple(sources) if sources is not None else tuple(f"source{k}" for k in range(len(self.priors)))
        _check_sources(self.sources, len(self.priors))
        self.frontend = common_frontend([p.domain for p in self.priors], [f"prior {k}" for k in range(len(self.priors))])
        if inversion not in INVERSIONS:
            raise UserError(f"unknown inversion {inversion!r}; choose one of: {', '.join(INVERSIONS)}")
        patch = self.frontend.patch_frames
        self.hop_frames = hop_frames if hop_frames is not None else max(patch // 2, 1)
        if not 1 <= self.hop_frames <= patch:
            raise UserError(f"patch hop must be between 1 and {patch} frames, got {self.hop_frames}")
        self.config = config or BasisConfig()
        self.config.noise_levels()  # an invalid σ schedule fails here, before any audio is read
        self.inversion, self.level_db, self.progress = inversion, float(level_db), progress
        self.seed = self.config.seed if seed is None else int(seed)
        self.mixing = DbPowerMixing(self.frontend)

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
        """Separate a mono mixture `(1, N)` (float, at `sample_rate`) → stems `(K, 1, N)`.

        Runs on the priors' device; returns on the mixture's device and dtype.
        """
        if mix.dim() != 2 or mix.shape[0] != 1:
            raise ValueError(f"MelBasis separates a mono mixture (1, N), got shape {tuple(mix.shape)}")
        if mix.shape[1] <= self.frontend.n_fft // 2:
            raise UserError(f"{mix.shape[1]} samples are too short for BASIS: need more than "
                            f"{self.frontend.n_fft // 2} at {self.sample_rate} Hz")
        x = mix.to(self.device, torch.float32)
        mel_powers = self.separate_mel(self.frontend.mel_power(x[0]))
        stems = invert_mel_powers(self.frontend, mel_powers, x, method=self.inversion, seed=self.seed)
        return stems.to(mix.device, mix.dtype)

    def separate_mel(self, mix_mel: Tensor) -> Tensor:
        """Mixture mel power `(n_mels, T)` → source mel powers `(K, n_mels, T)` (same units).

        The mixture is cut into patches of `frontend.patch_frames` frames every
        `hop_frames` (the end padded with silence), all separated in one `basis_separate`
        batch, and each source's patches are averaged back as powers (see the module doc).
        """
        patches, layout = patchify(self.frontend.to_unit(mix_mel), self.frontend.patch_frames, self.hop_frames)
        generator = torch.Generator().manual_seed(self.seed)
        sources = basis_separate(self.priors, patches, self.mixing, self.config, generator=generator,
                                 progress=self.progress)  # (K, B, 1, n_mels, patch_frames)
        return unpatchify(self.frontend.from_unit(sources), *layout)

    def __repr__(self) -> str:
        return (f"MelBasis(sources={list(self.sources)}, frontend={self.frontend.name!r}, "
                f"inversion={self.inversion!r}, hop_frames={self.hop_frames})")


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


def _check_sources(sources: tuple[str, ...], n_priors: int) -> None:
    if n_priors < 2:
        raise UserError(f"BASIS separates a mixture into two or more sources; got {n_priors} prior(s)")
    if len(sources) != n_priors:
        raise UserError(f"{len(sources)} source names for {n_priors} priors")
    repeated = sorted({s for s in sources if sources.count(s) > 1})
    if repeated:
        raise UserError(f"source name(s) {', '.join(repeated)} given twice; each source needs its own name")


def separation_method(paths: Sequence[str | os.PathLike], requested: str | None = None) -> Literal["nmf", "basis"]:
    """The separation method for a set of model files: "nmf" or "basis".

    No files → "nmf" (the bundled model); one NMF model file → "nmf"; two or more prior
    checkpoints → "basis". `requested` (if given) must agree with the files.

    Raises:
        UserError: unreadable files (as `load_checkpoint`), NMF models mixed with priors,
            several NMF models, a single prior, or files that do not suit `requested`.
    """
    if requested not in (None, "nmf", "basis"):
        raise UserError(f"unknown separation method {requested!r}; choose nmf or basis")
    if not paths:
        if requested == "basis":
            raise UserError("BASIS needs one prior checkpoint per source (--model A.pt B.pt ...)")
        return "nmf"
    kinds = [(Path(p), load_checkpoint(p)["kind"]) for p in paths]
    nmf = [p for p, kind in kinds if kind == "nmf"]
    priors = [p for p, kind in kinds if kind != "nmf"]
    if nmf and priors:
        raise UserError(f"{nmf[0]} is an NMF model but {priors[0]} is a prior; give one NMF model "
                        "or one prior per source")
    if len(nmf) > 1:
        raise UserError(f"{len(nmf)} NMF models given; an NMF model holds all its sources, give one")
    if len(priors) == 1:
        raise UserError(f"{priors[0]}: one prior checkpoint given; BASIS needs one prior per source "
                        "(--model A.pt B.pt ...)")
    method = "nmf" if nmf else "basis"
    if requested is not None and requested != method:
        raise UserError(f"method '{requested}' was asked for but {kinds[0][0]} is "
                        f"{'an NMF model' if nmf else 'a prior checkpoint (BASIS)'}")
    return method
