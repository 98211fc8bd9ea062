"""Mask network training (`audiosep train masknet`): the supervised model of
`priors.masknet` (the default separation), on the stems of one or several datasets.

Items are K independent random crops, one per source (`data.stems.SourceCrops`, seed + k for
source k), so every batch mixes sources of different tracks: the remixing that
open-unmix and demucs train with, which multiplies the pairs the network sees. Each source
gets a random gain of ±`gain_db` dB (drawn in the loss from the torch generator the loop
seeds and restores), so the network learns every level balance, not only the dataset's.
Validation uses fixed crops of the valid split (seed + 100) at the loop's fixed seed.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..config import TrainConfig
from ..data.stems import SourceCrops, dataset_roots, list_sources, list_tracks, load_track, pooled_tracks
from ..errors import UserError
from ..io import SAMPLE_RATES, rms_db
from ..priors.base import Domain
from ..priors.masknet import MaskNet, masknet_loss
from .loop import initial_prior, seed_everything, train


@dataclasses.dataclass
class MaskNetConfig:
    """The `model:` section of `audiosep train masknet --config`: `MaskNet`'s STFT and size."""

    n_fft: int = 1024
    hop_length: int = 256
    hidden: int = 256
    layers: int = 2


@dataclasses.dataclass
class MaskNetRun:
    """The YAML file of `audiosep train masknet --config`: `model:`, `train:` and the data
    settings crop_seconds (crop length), gain_db (random gain per source, ±dB) and sample_rate."""

    model: MaskNetConfig = dataclasses.field(default_factory=MaskNetConfig)
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(steps=6000, lr=1e-3))
    crop_seconds: float = 3.0
    gain_db: float = 6.0
    sample_rate: int = 16000

    def __post_init__(self) -> None:
        if not (0 < self.crop_seconds <= 600) or not (0 <= self.gain_db <= 60):
            raise UserError(f"masknet config: crop_seconds must be in (0, 600] and gain_db in [0, 60], got "
                            f"{self.crop_seconds}, {self.gain_db}")
        if not SAMPLE_RATES[0] <= self.sample_rate <= SAMPLE_RATES[1]:
            raise UserError(f"masknet config: sample_rate must be {SAMPLE_RATES[0]} to {SAMPLE_RATES[1]} Hz, "
                            f"got {self.sample_rate}")


class StemCrops(Dataset):
    """K independent crops per item, one per source: item i is `(K, crop_samples)` float32,
    source k's crop drawn by `SourceCrops(seed + k)` (a function of (seed, epoch, i)) from the
    tracks of `root` (one dataset folder or several, pooled)."""

    def __init__(self, root: str | os.PathLike | Sequence[str | os.PathLike], sources: Sequence[str], split: str,
                 crop_samples: int, sample_rate: int, length: int, seed: int) -> None:
        self.crops = [SourceCrops(root, s, split=split, crop_samples=crop_samples, sample_rate=sample_rate,
                                  length=length, seed=seed + k) for k, s in enumerate(sources)]

    def __len__(self) -> int:
        return len(self.crops[0])

    def set_epoch(self, epoch: int) -> None:
        for crops in self.crops:
            crops.set_epoch(epoch)

    def __getitem__(self, index: int) -> Tensor:
        return torch.cat([crops[index] for crops in self.crops])


class RemixLoss:
    """`masknet_loss` of the sources, each scaled by a random gain uniform in ±gain_db dB."""

    def __init__(self, gain_db: float) -> None:
        self.gain_db = gain_db

    def __call__(self, model: MaskNet, sources: Tensor) -> Tensor:
        db = (2 * torch.rand(sources.shape[:2], device=sources.device) - 1) * self.gain_db
        return masknet_loss(model, sources * (10 ** (db / 20))[..., None])


def median_mixture_db(data: Sequence[str | os.PathLike], sources: Sequence[str], sample_rate: int,
                      tracks: int = 50) -> float:
    """Median RMS (dBFS) of the first `tracks` train mixtures (Σ of `sources`) of each dataset:
    the model's level_db."""
    levels = []
    for track in [t for root in data for t in list_tracks(root, "train")[:tracks]]:
        _, stems, _ = load_track(track, sample_rate, channels=1)
        levels.append(rms_db(np.sum([stems[s] for s in sources if s in stems], axis=0)))
    return float(np.median(levels))


def train_masknet(data: str | os.PathLike | Sequence[str | os.PathLike], out_path: str | os.PathLike,
                  sources: Sequence[str] | None = None, run: MaskNetRun | None = None,
                  device: str = "cpu", init_from: str | os.PathLike | None = None) -> dict[str, float]:
    """Train a mask network on the train split of one or several stems datasets (their valid
    splits for validation), their tracks pooled.

    Args:
        data: stems datasets `DATA/{train,valid}/<track>/<source>.wav` (one folder or several).
        out_path: the checkpoint (resumed when it exists); domain `Domain.waveform(sample_rate)`.
        sources: the K sources (default: every source of the train split).
        init_from: fine-tune: start from this mask network's weights and size (`run.model` is
            then not used), a fresh optimiser and step 0; its sources must be `sources`, in
            order. Its level_db is measured again on `data`, as a fresh network's is.
    Returns:
        {"step", "loss", "valid_loss"} (the relative phase-sensitive error; 1 is the mixture's energy).
    Raises:
        UserError: a missing split or source, fewer than 2 sources, an `init_from` that is not
            a mask network of these sources at this rate, and as `train`.
    """
    run = run or MaskNetRun()
    data = dataset_roots(data)
    have = list_sources(pooled_tracks(data, "train"))
    sources = list(sources) if sources else have
    unknown = [s for s in sources if s not in have]
    if unknown:
        raise UserError(f"{', '.join(map(str, data))}: no source(s) {', '.join(unknown)} in split 'train' "
                        f"(have: {', '.join(have)})")
    crop = int(round(run.crop_seconds * run.sample_rate))
    c = run.train
    train_ds = StemCrops(data, sources, "train", crop, run.sample_rate, c.epoch_items, c.seed)
    valid_ds = StemCrops(data, sources, "valid", crop, run.sample_rate, c.valid_batches * c.batch_size, c.seed + 100)
    seed_everything(c.seed)
    level_db = median_mixture_db(data, sources, run.sample_rate)
    domain = Domain.waveform(run.sample_rate)
    if init_from is None:
        model = MaskNet(sources, run.sample_rate, **dataclasses.asdict(run.model), level_db=level_db)
    else:
        model = initial_prior(init_from, domain, "masknet")
        if list(model.sources) != sources:
            raise UserError(f"{init_from}: a mask network of {', '.join(model.sources)}, not of {', '.join(sources)}")
        model.level_db = level_db
    stored = {"data": ",".join(d.name for d in data), "sources": ",".join(sources),
              "crop_seconds": run.crop_seconds, "gain_db": run.gain_db}
    if init_from is not None:
        stored["init_from"] = os.path.basename(init_from)
    return train(model, RemixLoss(run.gain_db), train_ds, valid_ds, c, out_path, domain, device, data=stored)
