"""Spectrogram-patch training data: mel patches of one source (NCSN, flows) and STFT-magnitude
patches of mixtures (VAE-BSS)."""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from torch.utils.data import Dataset

from ..config import TrainConfig


def mel_patches(data: str | os.PathLike | Sequence[str | os.PathLike], source: str, frontend: Any, split: str, length: int,
                seed: int) -> Dataset:
    """Random [0, 1] mel patches `(1, n_mels, patch_frames)` of one source of a stems dataset
    (or several, their tracks pooled).

    Crops are mono at the front end's rate, just long enough for `frontend.patch_frames`
    frames; near-silent crops are redrawn. Item i depends only on (seed, i).
    """
    from ..data.stems import SourceCrops, SourcePatches

    crops = SourceCrops(data, source, split=split, crop_samples=(frontend.patch_frames - 1) * frontend.hop_length,
                        sample_rate=frontend.sample_rate, channels=1, length=length, seed=seed)
    return SourcePatches(crops, frontend.encode, frames=frontend.patch_frames)


def patch_sets(data: str | os.PathLike | Sequence[str | os.PathLike], source: str, frontend: Any, config: TrainConfig,
                valid_items: int) -> tuple[Dataset, Dataset]:
    """(train patches: `config.epoch_items` items per epoch, drawn with `config.seed`; valid patches:
    `valid_items` fixed crops of the valid split, drawn with `config.seed + 1`), for every prior kind."""
    train_ds = mel_patches(data, source, frontend, "train", config.epoch_items, config.seed)
    valid_ds = mel_patches(data, source, frontend, "valid", valid_items, config.seed + 1)
    return train_ds, valid_ds


def mixture_patch_sets(data: str | os.PathLike, frontend: Any, config: TrainConfig
                       ) -> tuple[Dataset, Dataset]:
    """(train patches: `epoch_items` items of the train split, drawn with `config.seed`;
    valid patches: `valid_batches × batch_size` fixed items of the valid split, drawn with
    `config.seed + 1`): normalised STFT-magnitude patches `(1, n_freqs, patch_frames)` of mono
    mixture crops at the front end's rate (near-silent crops redrawn); item i depends only on
    (seed, epoch, i)."""
    from ..data.stems import MixtureCrops, SourcePatches

    def patches(split: str, length: int, seed: int) -> Dataset:
        crops = MixtureCrops(data, split=split, crop_samples=frontend.crop_samples,
                             sample_rate=frontend.sample_rate, channels=1, length=length, seed=seed)
        return SourcePatches(crops, frontend.encode_crop)

    return (patches("train", config.epoch_items, config.seed),
            patches("valid", config.valid_batches * config.batch_size, config.seed + 1))
