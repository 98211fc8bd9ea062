"""Supervised NMF separation: one fixed spectral dictionary per source, activations fitted
to the mixture, Wiener masks from the per-source models.

Training learns, for each source k, a dictionary Wₖ `(F, R)` of R non-negative spectral
atoms from STFT magnitudes of that source alone (scikit-learn's multiplicative-update
NMF, β-divergence, Kullback-Leibler by default). Every atom is scaled to unit sum (L1
norm 1; the scale moves into the activations, so the factorisation is unchanged), which
makes an atom a distribution over frequency and an activation the magnitude mass it
explains.

Separation of a mixture `(C, N)`: the channel-mean STFT magnitude V `(F, T)` is
approximated as [W₁ … W_K] H with the dictionaries fixed and H ≥ 0 fitted by
multiplicative updates (in torch, on the mixture's device); source k's magnitude model
is Wₖ Hₖ, and the masks (Wₖ Hₖ)^p / Σⱼ (Wⱼ Hⱼ)^p (p = 2: the Wiener filter) are applied
to each channel's mixture STFT, then inverted.

An `NMFModel` is saved in the project's checkpoint format (`audiosep.priors.base`:
`format`, `kind` = "nmf", `config`, `domain`, `state_dict`, ...), loaded with
`weights_only=True`. Its domain is an `STFTSettings` (STFT settings with the sample rate;
centred, zero padded), not one of the prior `Domain` kinds, so the model is written here rather than by
`save_checkpoint` (which takes registered priors only).
"""
from __future__ import annotations

import os
import platform
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning
from torch import Tensor

from ..data.stems import dataset_roots, list_sources, load_track, pooled_tracks, separable_sources
from ..errors import UserError
from ..io import atomic_output, rms_db
from ..priors.base import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, load_checkpoint
from ..progress import progress_bar
from ..spectral.inversion import wiener
from ..spectral.stft import STFTSettings

KIND = "nmf"
# β-divergences by scikit-learn's names (β = 1: Kullback-Leibler, 2: squared Euclidean, 0: Itakura-Saito).
BETA_LOSSES = {"kullback-leibler": 1.0, "frobenius": 2.0, "itakura-saito": 0.0}
EPS = 1e-10  # floor of the model spectrum W·H in the multiplicative updates


# ----------------------------------------------------------------------------- factorisation


def beta_value(beta: str | float) -> float:
    """β of a divergence given by name (`BETA_LOSSES`) or as a number in [0, 2]."""
    value = BETA_LOSSES.get(beta) if isinstance(beta, str) else float(beta)
    if value is None or not 0.0 <= value <= 2.0:
        raise UserError(f"unknown beta divergence {beta!r}; use one of {', '.join(BETA_LOSSES)} or a number in [0, 2]")
    return value


def learn_dictionary(
    magnitudes: np.ndarray | Tensor,
    n_atoms: int = 64,
    beta: str | float = "kullback-leibler",
    n_iter: int = 200,
    seed: int = 0,
    tol: float = 1e-4,
) -> Tensor:
    """Learn R = `n_atoms` spectral atoms of one source by NMF: V ≈ W H.

    scikit-learn's `NMF(solver="mu", beta_loss=beta, init="nndsvda")`; it stops after
    `n_iter` iterations or when the relative decrease of the loss falls under `tol`
    (not converging within `n_iter` is expected and not reported).

    Args:
        magnitudes: `(F, T)` non-negative STFT magnitudes of the source alone.
        seed: random state of the initialisation (NNDSVDa is deterministic apart from it).
    Returns:
        W `(F, n_atoms)` float32, every column with unit sum.
    """
    V = magnitudes.detach().cpu().numpy() if isinstance(magnitudes, Tensor) else np.asarray(magnitudes)
    V = V.astype(np.float32, copy=False)
    if V.ndim != 2 or (V < 0).any():
        raise ValueError(f"learn_dictionary needs non-negative magnitudes (F, T), got shape {V.shape}")
    if V.shape[1] < n_atoms:
        raise UserError(f"only {V.shape[1]} non-silent frames to learn {n_atoms} atoms from; use more audio or fewer atoms")
    nmf = NMF(n_components=n_atoms, solver="mu", beta_loss=beta_value(beta), init="nndsvda",
              max_iter=n_iter, tol=tol, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        W = nmf.fit_transform(V)
    W = torch.from_numpy(np.ascontiguousarray(W, dtype=np.float32))
    return W / W.sum(dim=0, keepdim=True).clamp(min=EPS)


def fit_activations(V: Tensor, W: Tensor, n_iter: int = 100, beta: str | float = "kullback-leibler") -> Tensor:
    """Non-negative activations H with V ≈ W H and the dictionary W fixed.

    Multiplicative updates for the β-divergence (Févotte & Idier 2011):
        H ← H · [Wᵀ(V · (WH)^(β−2)) / Wᵀ(WH)^(β−1)]^γ,
    γ = 1/(2 − β) for β < 1, else 1; each step does not increase the divergence. H starts
    at the constant that matches every frame's total magnitude (deterministic), so frames
    of zeros stay zero.

    Args:
        V: `(..., F, T)` non-negative magnitudes (any batch shape; runs on V's device).
        W: `(F, R)` non-negative dictionary.
        n_iter: number of updates.
    Returns:
        H `(..., R, T)`, non-negative, V's dtype and device.
    """
    b = beta_value(beta)
    W = W.to(device=V.device, dtype=V.dtype)
    Wt = W.transpose(0, 1)
    gamma = 1.0 / (2.0 - b) if b < 1.0 else 1.0
    H = (V.sum(dim=-2, keepdim=True) / W.sum()).expand(*V.shape[:-2], W.shape[1], V.shape[-1]).clone()
    for _ in range(n_iter):
        WH = (W @ H).clamp(min=EPS)
        if b == 1.0:
            num, den = Wt @ (V / WH), W.sum(dim=0)[:, None]
        else:
            num, den = Wt @ (V * WH.pow(b - 2)), Wt @ WH.pow(b - 1)
        ratio = num / den.clamp(min=EPS)
        H = H * (ratio if gamma == 1.0 else ratio.pow(gamma))
    return H


# ----------------------------------------------------------------------------- model


@dataclass(eq=False)
class NMFModel:
    """A trained supervised NMF separator: dictionaries of K sources and how to use them.

    Attributes:
        sources: K source names, in the order of the outputs.
        dictionaries: `(K, F, R)` float32, unit-sum atoms (F = n_fft // 2 + 1).
        domain: the `STFTSettings` the dictionaries were learnt in.
        power: mask exponent p: masks (Wₖ Hₖ)^p / Σⱼ (Wⱼ Hⱼ)^p (2 = Wiener filter).
        n_iter: activation updates at separation. beta: divergence of the fit.
        level_db: RMS (dBFS) of the training mixtures; `Separator` scales inputs to it.
    `channels` is None: any channel count is separated (see `separate_nmf`).
    """

    sources: tuple[str, ...]
    dictionaries: Tensor
    domain: STFTSettings
    power: float = 2.0
    n_iter: int = 100
    beta: str = "kullback-leibler"
    level_db: float | None = None
    channels: int | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.sources = separable_sources(self.sources, "NMF")
        K, F, _ = self.dictionaries.shape
        if K != len(self.sources):
            raise UserError(f"{K} dictionaries for {len(self.sources)} sources ({', '.join(self.sources)})")
        if F != self.domain.n_freqs:
            raise UserError(f"dictionaries have {F} frequency bins but {self.domain.describe()} has {self.domain.n_freqs}")
        if self.domain.sample_rate is None:
            raise UserError(f"an NMF model's domain states its sample rate; {self.domain.describe()} does not")
        beta_value(self.beta)

    @property
    def sample_rate(self) -> int:
        """The rate (Hz) the model separates at."""
        return self.domain.sample_rate

    @property
    def n_atoms(self) -> int:
        """Atoms per source R."""
        return self.dictionaries.shape[-1]

    def __call__(self, mix: Tensor) -> Tensor:
        """`separate_nmf(mix, self)`: mixture `(C, N)` at `sample_rate` → stems `(K, C, N)`."""
        return separate_nmf(mix, self)

    def config(self) -> dict[str, Any]:
        """The settings besides the dictionaries and the domain (plain values)."""
        return {"sources": list(self.sources), "n_atoms": self.n_atoms, "power": self.power, "n_iter": self.n_iter,
                "beta": self.beta, "level_db": self.level_db}

    def save(self, path: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> Path:
        """Write the model atomically in the project's checkpoint format (see the module doc)."""
        import audiosep

        payload = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "kind": KIND,
            "module": __name__,
            "config": self.config(),
            "domain": self.domain.to_dict(),
            "state_dict": {"dictionaries": self.dictionaries.detach().cpu().contiguous()},
            "versions": {"audiosep": audiosep.__version__, "torch": str(torch.__version__),
                         "python": platform.python_version()},
            "extra": dict(extra or {}),
        }
        path = Path(path)
        with atomic_output(path) as tmp:
            torch.save(payload, tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, expected_domain: STFTSettings | None = None,
             device: str | torch.device = "cpu") -> NMFModel:
        """Read a model written by `save` (dictionaries on `device`).

        Raises:
            UserError (one line): missing, foreign or corrupt file; a checkpoint of another
                kind (e.g. a prior); settings that do not fit the dictionaries; a domain other
                than `expected_domain` (both named).
        """
        payload = load_checkpoint(path, device)
        if payload["kind"] != KIND:
            raise UserError(f"{path}: a '{payload['kind']}' checkpoint, not an NMF model")
        try:
            domain = STFTSettings.from_dict(payload["domain"])
            config = dict(payload["config"])
            config.pop("n_atoms", None)
            dictionaries = payload["state_dict"]["dictionaries"].float()
            model = cls(dictionaries=dictionaries, domain=domain, **config)
        except UserError as err:
            raise UserError(f"{path}: {err}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise UserError(f"{path}: corrupt NMF model ({type(err).__name__}: {err})") from None
        if expected_domain is not None and domain != expected_domain:
            raise UserError(f"{path}: model works in {domain.describe()}, but {expected_domain.describe()} is expected")
        return model


def separate_nmf(mix: Tensor, model: NMFModel) -> Tensor:
    """Separate a mixture with fixed per-source dictionaries and Wiener-like masks.

    Activations are fitted to the channel-mean STFT magnitude; the masks from the source
    models (Wₖ Hₖ)^p are applied to every channel's STFT, so the stems sum to the mixture
    (up to the mask floor in silent bins).

    Args:
        mix: `(C, N)` float waveform at `model.sample_rate` (runs on its device).
    Returns:
        stems `(K, C, N)`, mix's dtype and device.
    """
    if mix.ndim != 2:
        raise ValueError(f"separate_nmf expects a mixture (C, N), got shape {tuple(mix.shape)}")
    K, F, R = model.dictionaries.shape
    X = model.domain.stft(mix)  # (C, F, T)
    V = X.abs().mean(dim=0)
    W = model.dictionaries.to(device=mix.device, dtype=V.dtype)
    H = fit_activations(V, W.permute(1, 0, 2).reshape(F, K * R), model.n_iter, model.beta)
    source_mag = W @ H.reshape(K, R, -1)  # (K, F, T)
    stems = wiener(source_mag.pow(model.power)[:, None], X)  # (K, C, F, T)
    return model.domain.istft(stems, mix.shape[-1]).to(mix.dtype)


# ----------------------------------------------------------------------------- training


def training_magnitudes(
    wav: np.ndarray, domain: STFTSettings, silence_db: float = -60.0
) -> Tensor:
    """STFT magnitudes `(F, T')` of a mono waveform `(1, N)`, without its silent frames.

    A frame is silent when its energy is more than `-silence_db` dB below the loudest
    frame of this waveform (a wholly silent waveform gives no frames).
    """
    mag = domain.stft(torch.from_numpy(np.ascontiguousarray(wav[0]))).abs()
    energy = mag.square().sum(dim=0)
    peak = energy.max()
    if peak <= 0:
        return mag[:, :0]
    return mag[:, energy >= peak * 10.0 ** (silence_db / 10.0)]


def train_nmf(
    data: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    sources: Sequence[str] | None = None,
    *,
    n_atoms: int = 64,
    split: str = "train",
    max_minutes: float | None = None,
    max_frames: int = 20000,
    n_iter: int = 200,
    sample_rate: int = 16000,
    n_fft: int = 4096,
    hop_length: int = 1024,
    power: float = 2.0,
    beta: str = "kullback-leibler",
    seed: int = 0,
    progress: bool = True,
) -> NMFModel:
    """Learn one dictionary per source from a stems dataset and save the model to `out`.

    Tracks of `split` are read mono at `sample_rate` in a seeded random order until
    `max_minutes` of audio (all if None); each source's non-silent STFT frames (see
    `training_magnitudes`) are pooled, a seeded random subset of at most `max_frames`
    is kept, and `learn_dictionary` runs on it. `level_db` is the median RMS of the
    used tracks' mixtures (Σ sources where a track has no mix file).

    Args:
        data: dataset folder `DATA/<split>/<track>/{mix,<source>}.wav` (or MUSDB18/Slakh), or
            several (their tracks pooled).
        out: the model file to write.
        sources: which sources (default: every source in the split).
    Returns:
        the saved `NMFModel`.
    Raises:
        UserError: missing dataset/split, an unknown source, fewer than two sources, too
            little non-silent audio, a count below 1 (atoms, iterations, frames).
    """
    for name, value in (("n_atoms", n_atoms), ("n_iter", n_iter), ("max_frames", max_frames)):
        if value < 1:
            raise UserError(f"{name} must be at least 1, got {value}")
    domain = STFTSettings(n_fft, hop_length, sample_rate=sample_rate)
    if n_atoms > domain.n_freqs:  # scikit-learn's NMF cannot hold more atoms than bins
        raise UserError(f"{n_atoms} atoms per source need at least as many frequency bins; n_fft {n_fft} has "
                        f"{domain.n_freqs}: lower the atoms or raise n_fft")
    roots = dataset_roots(data)
    tracks = pooled_tracks(roots, split)
    have = list_sources(tracks)
    sources = list(sources) if sources else have
    unknown = [s for s in sources if s not in have]
    if unknown:
        raise UserError(f"{', '.join(map(str, roots))}: no source(s) {', '.join(unknown)} in split '{split}' "
                        f"(have: {', '.join(have)})")
    sources = list(separable_sources(sources, "NMF"))
    rng = np.random.default_rng(seed)
    order = [tracks[i] for i in rng.permutation(len(tracks))]
    frames: dict[str, list[Tensor]] = {s: [] for s in sources}
    levels, seconds = [], 0.0
    for track in progress_bar(order, desc="read", unit="track", disable=not progress):
        if max_minutes is not None and seconds >= 60.0 * max_minutes:
            break
        mix, stems, _ = load_track(track, sample_rate, channels=1)
        mix = mix if mix is not None else np.sum(list(stems.values()), axis=0)
        levels.append(rms_db(mix))
        seconds += mix.shape[-1] / sample_rate
        for s in sources:
            if s in stems:
                frames[s].append(training_magnitudes(stems[s], domain))
    dictionaries = []
    for k, s in enumerate(sources):
        V = torch.cat(frames[s], dim=1) if frames[s] else torch.zeros(domain.n_freqs, 0)
        if V.shape[1] > max_frames:
            keep = np.sort(rng.choice(V.shape[1], size=max_frames, replace=False))
            V = V[:, torch.from_numpy(keep)]
        if progress:
            print(f"learning {n_atoms} atoms for '{s}' from {V.shape[1]} frames", flush=True)
        dictionaries.append(learn_dictionary(V, n_atoms, beta, n_iter, seed + k))
    model = NMFModel(tuple(sources), torch.stack(dictionaries), domain, power=power, beta=beta,
                     level_db=float(np.median(levels)))
    folders = [str(r) for r in roots]
    training = {"data": folders if len(folders) > 1 else folders[0], "split": split, "tracks": len(levels),
                "seconds": seconds, "max_frames": max_frames, "n_iter": n_iter, "seed": seed}
    model.save(out, extra={"training": training})
    return model
