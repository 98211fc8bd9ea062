"""Shared plumbing of the oracle separators: input checks, the STFT they share, masking.

Oracles compute in float64 torch on the CPU. They take the true sources `(K, C, N)` as a
numpy array or torch tensor and give estimates of the same kind and shape: float32 numpy
for numpy input, a tensor of the input's dtype and device for torch input.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from ..spectral.stft import STFTSettings

# sigsep-mus-oracle's analysis: Hann window of 2048 samples, hop 1024 (50 % overlap).
N_FFT = 2048
HOP = 1024
# Added to mask denominators (as numpy's float64 eps in sigsep-mus-oracle).
EPS = float(np.finfo(np.float64).eps)


def as_sources(sources) -> Tensor:
    """True sources as a float64 CPU tensor `(K, C, N)`; ValueError for other shapes."""
    return _cpu_sources(sources).to(torch.float64)


def _cpu_sources(sources) -> Tensor:
    """True sources as a CPU tensor `(K, C, N)` of their own dtype (no copy of a CPU array)."""
    x = sources.detach().cpu() if isinstance(sources, Tensor) else torch.from_numpy(np.ascontiguousarray(sources))
    if x.ndim != 3 or min(x.shape) == 0:
        raise ValueError(f"oracle sources must be (K sources, C channels, N samples), got shape {tuple(x.shape)}")
    return x


def like_input(estimates: Tensor, sources):
    """Return `estimates` as the same kind of array as `sources` (see the module docstring)."""
    if isinstance(sources, Tensor):
        return estimates.to(device=sources.device, dtype=sources.dtype)
    return estimates.numpy().astype(np.float32, copy=False)


def stft(wav: Tensor, n_fft: int = N_FFT, hop: int = HOP) -> Tensor:
    """Centred Hann STFT with zero padding (any length works): `(..., N)` → `(..., F, T)`.

    One signal at a time into a preallocated output, so the peak memory is the output's
    plus one signal's working set rather than several copies of the whole batch.
    """
    settings = STFTSettings(n_fft, hop)
    flat = wav.reshape(-1, wav.shape[-1])
    first = settings.stft(flat[0])
    out = torch.empty((flat.shape[0], *first.shape), dtype=first.dtype)
    out[0] = first
    for i in range(1, flat.shape[0]):
        out[i] = settings.stft(flat[i])
    return out.reshape(*wav.shape[:-1], *first.shape)


def istft(spec: Tensor, length: int, n_fft: int = N_FFT, hop: int = HOP) -> Tensor:
    """The inverse of `stft`, one signal at a time: `(..., F, T)` → `(..., length)`."""
    settings = STFTSettings(n_fft, hop)
    flat = spec.reshape(-1, *spec.shape[-2:])
    out = torch.stack([settings.istft(x, length) for x in flat])
    return out.reshape(*spec.shape[:-2], length)


def apply_masks(masks: Tensor, mix_spec: Tensor, length: int, n_fft: int = N_FFT, hop: int = HOP) -> Tensor:
    """Multiply the mixture STFT `(C, F, T)` by real masks `(K, C, F, T)` and invert → `(K, C, length)`.

    Source by source, so only one masked spectrogram exists at a time.
    """
    return torch.stack([istft(mask * mix_spec, length, n_fft, hop) for mask in masks])


# Samples per block of `in_blocks` (a multiple of HOP): ~6 s at 44.1 kHz, ~35 MB of float64
# STFT for 4 stereo sources.
BLOCK = 256 * HOP


def in_blocks(fn: Callable[[Tensor], Tensor], sources, n_fft: int = N_FFT, hop: int = HOP,
              block: int = BLOCK) -> Tensor:
    """`fn` (float64 true sources `(K, C, n)` → estimates `(K, C, n)`, STFT-frame-local: masks
    from each frame's own bins) on consecutive blocks of `block` samples, each with `n_fft`
    samples of context either side, keeping the blocks' interiors: the same estimates as one
    call on the whole signal (the block edges lie on the hop grid, and no frame that sees past
    a block's context reaches its interior), with a working set of one block's STFT.

    Args:
        sources: `(K, C, N)` numpy or torch; only blocks are converted to float64.
    Returns:
        estimates `(K, C, N)` on the CPU, in the sources' dtype.
    """
    x = _cpu_sources(sources)
    out = torch.empty_like(x)
    for lo, start, stop, hi in block_bounds(x.shape[-1], n_fft, hop, block):
        out[..., start:stop] = fn(x[..., lo:hi].to(torch.float64))[..., start - lo:stop - lo]
    return out


def block_bounds(length: int, n_fft: int = N_FFT, hop: int = HOP, block: int | None = None
                 ) -> list[tuple[int, int, int, int]]:
    """(lo, start, stop, hi) of the blocks `in_blocks` uses: [start, stop) kept, [lo, hi) computed."""
    margin = -(-n_fft // hop) * hop  # ≥ n_fft, on the hop grid
    block = max(hop, (BLOCK if block is None else block) // hop * hop)
    return [(max(start - margin, 0), start, min(start + block, length), min(start + block + margin, length))
            for start in range(0, length, block)]


def frame_sums(fn: Callable[[Tensor], Tensor], sources, n_fft: int = N_FFT, hop: int = HOP,
               block: int | None = None) -> Tensor:
    """Σ over every STFT frame of the whole signal of `fn(spec)`, block by block.

    `fn` maps source STFTs `(K, C, F, t)` (float64 complex) to a sum over their frames; each
    frame of the whole signal (centred at t·hop) is taken from the one block whose kept
    interior holds its centre, where it equals the whole signal's frame. For statistics that
    `in_blocks` cannot localise (e.g. time-invariant spatial covariances).
    """
    x = _cpu_sources(sources)
    length = x.shape[-1]
    total = None
    for lo, start, stop, hi in block_bounds(length, n_fft, hop, block):
        spec = stft(x[..., lo:hi].to(torch.float64), n_fft, hop)
        first = -(-start // hop)  # global frames with centre in [start, stop), the last block to the end
        last = length // hop + 1 if stop == length else -(-stop // hop)
        part = fn(spec[..., first - lo // hop:last - lo // hop])
        total = part if total is None else total + part
    return total
