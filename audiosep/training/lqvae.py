"""LQ-VAE entry point: `audiosep train lqvae` on waveform crops of every source of a stems dataset.

One model learns the code space of all the sources (the paper: drums and bass): training
item i is a random mono crop of source i % K at the model's rate, so every batch mixes the
sources and the linearization loss pairs crops of any two of them. Validation uses fixed
crops of the `valid` split, interleaved the same way. After training, the checkpoint gets
what separation reads: the α = (½, ½) sum table of the top level, computed from the weights
`load_prior` returns (the EMA weights), as `extra["sum_table"]` (`priors.vqvae.load_sum_table`
reads it back, or computes it when the codebook or α differ), and the level of the training
mixtures as `extra["level_db"]`.
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..config import TrainConfig
from ..errors import UserError
from ..io import atomic_output
from ..priors.base import Domain, load_checkpoint, load_prior
from ..priors.vqvae import (
    LQVAE,
    TIE_RULE,
    LQVAEConfig,
    LQVAELoss,
    LQVAELossConfig,
    stored_sum_table,
    sum_table,
)
from .loop import seed_everything, train

STORED_ALPHA = (0.5, 0.5)  # the paper's mixture: ½ drums + ½ bass

@dataclasses.dataclass
class LQVAERun:
    """The YAML file of `audiosep train lqvae --config`: `model:` (`LQVAEConfig`), `train:` and
    `loss:` (`LQVAELossConfig`) sections."""

    model: LQVAEConfig = dataclasses.field(default_factory=LQVAEConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    loss: LQVAELossConfig = dataclasses.field(default_factory=LQVAELossConfig)


class InterleavedSources(Dataset):
    """Item i is item i // K of dataset i % K (K datasets, one per source); K × the shortest length."""

    def __init__(self, datasets: Sequence[Dataset]) -> None:
        self.datasets = list(datasets)

    def __len__(self) -> int:
        return len(self.datasets) * min(len(d) for d in self.datasets)

    def set_epoch(self, epoch: int) -> None:
        """New crops for `epoch` in every source's dataset (`SourceCrops.set_epoch`)."""
        for dataset in self.datasets:
            dataset.set_epoch(epoch)

    def __getitem__(self, index: int) -> Tensor:
        if not 0 <= index < len(self):
            raise IndexError(index)
        k = len(self.datasets)
        return self.datasets[index % k][index // k]


def source_crops(data: str | os.PathLike, sources: Sequence[str], split: str, items: int, crop_samples: int,
                 sample_rate: int, seed: int) -> InterleavedSources:
    """`items` (rounded up to a multiple of K) mono crops `(1, crop_samples)` of the K `sources`
    of `split`, interleaved; source k's crops are drawn with seed + k."""
    from ..data.stems import SourceCrops

    per_source = math.ceil(items / len(sources))
    return InterleavedSources([
        SourceCrops(data, source, split=split, crop_samples=crop_samples, sample_rate=sample_rate, channels=1,
                    length=per_source, seed=seed + k)
        for k, source in enumerate(sources)
    ])


def train_lqvae(data: str | os.PathLike, sources: Sequence[str], out_path: str | os.PathLike,
                run: LQVAERun | None = None, device: str = "cpu", crop_seconds: float = 0.75,
                valid_items: int = 64) -> dict[str, float]:
    """Train an LQ-VAE on crops of `sources` of a stems dataset: `audiosep train lqvae`.

    Args:
        data: the dataset root (`data.stems` layouts; splits train and valid).
        sources: the sources whose crops the model learns (e.g. ["drums", "bass"]).
        out_path: the checkpoint (resumed when it exists; domain: mono waveforms at the model's rate).
        run: model, train and loss settings (`LQVAERun`); batch_size must be even.
        crop_seconds: crop length, rounded down to a multiple of the largest hop.
        valid_items: crops of the valid split for the validation loss (even).
    Returns:
        {"step", "loss", "valid_loss"}.
    Raises:
        UserError: no sources, an odd batch_size or valid_items, crops shorter than a hop,
            and as `SourceCrops` / `train`.
    """
    run = run or LQVAERun()
    sources = list(sources)
    if not sources:
        raise UserError("name at least one source to train the LQ-VAE on")
    if run.train.batch_size % 2 or valid_items % 2 or valid_items < 2:
        raise UserError("the LQ-VAE loss pairs the halves of each batch: batch_size and valid_items must be "
                        f"even, got {run.train.batch_size} and {valid_items}")
    sample_rate, top_hop = run.model.sample_rate, max(run.model.hops)
    crop_samples = int(crop_seconds * sample_rate) // top_hop * top_hop
    if crop_samples < top_hop:
        raise UserError(f"crop_seconds {crop_seconds:g} is shorter than one code of the top level "
                        f"({top_hop} samples at {sample_rate} Hz)")
    seed = run.train.seed
    train_ds = source_crops(data, sources, "train", run.train.epoch_items, crop_samples,
                            sample_rate, seed)
    valid_ds = source_crops(data, sources, "valid", valid_items, crop_samples, sample_rate,
                            seed + len(sources))
    seed_everything(seed)
    model = LQVAE(**dataclasses.asdict(run.model))
    result = train(model, LQVAELoss(run.loss), train_ds, valid_ds, run.train, out_path,
                   Domain.waveform(sample_rate), device, data={"sources": ",".join(sources)})
    if int(os.environ.get("RANK", "0")) == 0:
        train_ds.set_epoch(0)  # the level of the first epoch's crops, however long the run
        finish_checkpoint(out_path, mixture_level_db(train_ds))
    return result


def mixture_level_db(dataset: Dataset, pairs: int = 64) -> float:
    """RMS level (dBFS) of the mixtures ½x₂ᵢ + ½x₂ᵢ₊₁ of the first `pairs` pairs of items of
    `dataset` (interleaved sources: one crop of each of two sources), pooled: the level of the
    mixtures the linearization loss trained on, which separation scales its input to."""
    pairs = max(1, min(pairs, len(dataset) // 2))
    mixtures = torch.stack([0.5 * (dataset[2 * i] + dataset[2 * i + 1]) for i in range(pairs)])
    return 10.0 * math.log10(max(mixtures.double().pow(2).mean().item(), 1e-20))


def finish_checkpoint(path: str | os.PathLike, level_db: float, alpha: Sequence[float] = STORED_ALPHA) -> None:
    """Add what separation reads to the extra of the LQ-VAE checkpoint at `path`:
    extra["sum_table"] = {"alpha", "level" (the top one), "fingerprint" (of its codebook),
    "ties" (`TIE_RULE`), "table" (int16 when n_codes ≤ 32768; `load_sum_table` returns it as a LongTensor)},
    computed from the weights `load_prior` returns, and extra["level_db"] (`mixture_level_db`).
    The rest of the checkpoint is kept; nothing is written when both are current."""
    payload = load_checkpoint(path)
    model = load_prior(path)
    level = model.level_index(-1)
    current = stored_sum_table(payload, model, alpha, level) is not None
    if current and payload["extra"].get("level_db") == level_db:
        return
    if not current:
        table = sum_table(model.codebook(level), alpha)
        compact = torch.int16 if model.config.n_codes <= 2**15 else torch.int32
        payload["extra"]["sum_table"] = {"alpha": [float(a) for a in alpha], "level": level,
                                         "fingerprint": model.fingerprint(level), "ties": TIE_RULE,
                                         "table": table.to(compact)}
    payload["extra"]["level_db"] = level_db
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
