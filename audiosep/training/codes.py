"""Code-prior entry point: `audiosep train transformer`, an autoregressive transformer over the
top-level LQ-VAE codes of one source (`priors.transformer.CodeTransformer`).

In: a stems dataset, a source name and a trained LQ-VAE checkpoint. Every train and valid
track of the source is read mono at the LQ-VAE's rate and encoded once (`encode_source`), in
blocks of `block_samples` with `margin_samples` of real audio on each side that are encoded
and dropped, so memory stays bounded and a block's codes equal the whole track's wherever the
encoder's receptive field fits in the margin (up to float rounding: a near-tie between two
codes may go the other way, 1 code in 500 for a tiny test model). The default LQ-VAE's encoder
sees ±1137 samples around a code (±1704 with stride 2), well inside the 8192 of the margin
(measured by the gradient of one latent with respect to the input). The codes of the
split stay in memory as one LongTensor per track (an hour at hop 64 and 22.05 kHz: 1.2 M codes,
10 MB). Training items are random windows of `context` codes (`CodeWindows`, item i a function
of (seed, epoch, i) only; `epoch_items` per epoch, new ones every epoch), the validation
loss `valid_items` fixed windows of the valid split. Out: a checkpoint whose domain is the
LQ-VAE's `code_domain()`, so a separator never pairs the prior with codes of another LQ-VAE.

Windows are always `context` codes long, never padded: a track with fewer codes (shorter
than context × hop samples, 0.74 s at the defaults) is left out with a warning, and a split
with no track long enough is a UserError. Silent windows are kept (silence is part of a drum
or bass part, and the separation must model it).
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..config import TrainConfig
from ..devices import resolve_device
from ..errors import UserError
from ..priors.base import Prior
from ..priors.transformer import CodePriorConfig, CodeTransformer, code_nll
from ..priors.vqvae import load_lqvae
from ..progress import progress_bar
from .loop import seed_everything, train

BLOCK_SAMPLES = 2**18  # 11.9 s at 22.05 kHz per encoder call
MARGIN_SAMPLES = 2**13  # 0.37 s of context either side of a block


@dataclasses.dataclass
class CodePriorRun:
    """The YAML file of `audiosep train transformer --config`: `model:` (CodePriorConfig) and
    `train:` (TrainConfig) sections."""

    model: CodePriorConfig = dataclasses.field(default_factory=CodePriorConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)


class CodeWindows(Dataset):
    """Windows of `context` codes: item i is a LongTensor `(context,)`.

    Item i draws, with `numpy.random.default_rng([seed, i])` in epoch 0 and
    `default_rng([seed, i, epoch])` in later epochs (`set_epoch`), a track in proportion to its
    number of windows (len − context + 1, so every window of the split is equally likely),
    then the window's start uniformly. Every track must hold at least `context` codes.
    """

    def __init__(self, tracks: Sequence[Tensor], context: int, length: int, seed: int) -> None:
        short = [i for i, t in enumerate(tracks) if t.shape[0] < context]
        if not tracks or short:
            raise ValueError(f"CodeWindows needs tracks of at least {context} codes (short: {short})")
        self.tracks, self.context, self.length, self.seed = list(tracks), int(context), int(length), int(seed)
        self.epoch = 0
        self._positions = np.array([t.shape[0] - context + 1 for t in self.tracks])
        self._weights = self._positions / self._positions.sum()

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Draw a different set of windows (still deterministic) for each epoch."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> Tensor:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, index, self.epoch] if self.epoch else [self.seed, index])
        k = int(rng.choice(len(self.tracks), p=self._weights))
        start = int(rng.integers(self._positions[k]))
        return self.tracks[k][start:start + self.context]


@torch.no_grad()
def encode_source(lqvae: Prior, data: str | os.PathLike, source: str, split: str,
                  block_samples: int = BLOCK_SAMPLES, margin_samples: int = MARGIN_SAMPLES,
                  progress: bool = False) -> dict[str, Tensor]:
    """The top-level codes of every track of `split` that has `source`: {track name: LongTensor
    `(N // hop,)`} on the CPU, N the source's samples at the LQ-VAE's rate (mono).

    Encoded in blocks of `block_samples` (rounded down to a multiple of the hop, at least one
    hop), each with `margin_samples` (rounded up) of the neighbouring audio (zeros past the
    ends) whose codes are dropped.

    Args:
        lqvae: anything with `code_domain()` (a codes Domain) and `encode(x (1, 1, n), level=-1)
            -> (1, n // hop)`, in eval mode on its device.
    Raises:
        UserError: no such folder or split; no track of the split has `source`.
    """
    from ..data.stems import list_sources, list_tracks, read_source, source_length

    settings = lqvae.code_domain().settings_dict
    rate, hop = settings["sample_rate"], settings["hop"]
    block = max(block_samples // hop, 1)
    margin = -(-margin_samples // hop)
    tracks = list_tracks(data, split)
    chosen = [t for t in tracks if source in t.sources]
    if not chosen:
        raise UserError(f"{data}: no {split} track has source '{source}' (sources: {', '.join(list_sources(tracks))})")
    device = next(lqvae.parameters()).device if isinstance(lqvae, torch.nn.Module) else torch.device("cpu")
    codes = {}
    for track in progress_bar(chosen, desc=f"encode {source} ({split})", unit="track", disable=not progress):
        total = source_length(track, source, rate) // hop
        parts = []
        for first in range(0, total, block):
            left, stop = min(margin, first), min(first + block, total)
            wav = read_source(track, source, rate, 1, (first - left) * hop, (stop - first + left + margin) * hop)
            encoded = lqvae.encode(torch.from_numpy(wav).to(device)[None], level=-1)[0]
            parts.append(encoded[left:left + stop - first].long().cpu())
        codes[track.name] = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
    return codes


def code_windows(codes: dict[str, Tensor], context: int, length: int, seed: int, split: str,
                 hop: int, sample_rate: int) -> CodeWindows:
    """`CodeWindows` over the tracks of `codes` long enough for one window; the others are left
    out with a warning. UserError when none is long enough."""
    long_enough = {name: c for name, c in codes.items() if c.shape[0] >= context}
    short = sorted(set(codes) - set(long_enough))
    seconds = context * hop / sample_rate
    if not long_enough:
        raise UserError(f"no {split} track is at least {context} codes ({seconds:.2f} s) long; "
                        "use longer tracks or a smaller context")
    if short:
        warnings.warn(f"{split}: {len(short)} track(s) shorter than {context} codes ({seconds:.2f} s) left out: "
                      f"{', '.join(short[:5])}{' ...' if len(short) > 5 else ''}", stacklevel=2)
    return CodeWindows(list(long_enough.values()), context, length, seed)


def pooled_codes(lqvae: Prior, data: str | os.PathLike | Sequence[str | os.PathLike], source: str, split: str,
                 progress: bool = False) -> dict[str, Tensor]:
    """`encode_source` of each dataset of `data` (one folder or several), pooled: {"k/track":
    codes}, k the dataset's position, so tracks of the same name in two datasets both count."""
    from ..data.stems import dataset_roots

    return {f"{k}/{name}": codes for k, root in enumerate(dataset_roots(data))
            for name, codes in encode_source(lqvae, root, source, split, progress=progress).items()}


def train_code_prior(data: str | os.PathLike | Sequence[str | os.PathLike], source: str, lqvae_path: str | os.PathLike,
                     out_path: str | os.PathLike, run: CodePriorRun | None = None, device: str = "cpu",
                     valid_items: int = 256) -> dict[str, float]:
    """Train a transformer prior on the LQ-VAE codes of one source: `audiosep train transformer`.

    Args:
        data: a stems dataset with `train` and `valid` splits, or several (their tracks pooled).
        source: the source whose tracks are encoded (e.g. "drums").
        lqvae_path: a trained LQ-VAE checkpoint (its top level's codes are modelled).
        out_path: the checkpoint (resumed when it exists, if it was trained on the same codes
            and source).
        run: model and train settings (`CodePriorRun`).
        valid_items: fixed windows of the valid split for the validation loss (drawn with seed + 1).
    Returns:
        {"step", "loss", "valid_loss"} in nats per code.
    Raises:
        UserError: an unreadable checkpoint or one of another kind; a missing split or source;
            no track long enough for one window.
    """
    run = run or CodePriorRun()
    lqvae = load_lqvae(lqvae_path, resolve_device(device))
    domain = lqvae.code_domain()
    settings = domain.settings_dict
    context, config = run.model.context, run.train
    windows = {}
    for split, length, seed in (("train", config.epoch_items, config.seed),
                                ("valid", valid_items, config.seed + 1)):
        codes = pooled_codes(lqvae, data, source, split, progress=config.progress)
        windows[split] = code_windows(codes, context, length, seed, split, settings["hop"], settings["sample_rate"])
    del lqvae
    seed_everything(config.seed)
    model = CodeTransformer(settings["n_codes"], **dataclasses.asdict(run.model))
    return train(model, code_nll, windows["train"], windows["valid"], config, Path(out_path), domain, device,
                 data={"source": source})
