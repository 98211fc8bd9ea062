"""`Method`: what a separation method is to `Separator` (the protocol every method implements).

It lives apart from `separator` so that the methods (which name it) sit below the registry and
the runner (which build and run them) without an import running back up.
"""
from __future__ import annotations

from typing import Protocol, Sequence

from torch import Tensor


class Method(Protocol):
    """`(C, N)` float32 mixture at `sample_rate` → `(K, C, N)` stems in the order of `sources`.

    Optional attributes: `channels` (the channel count it needs, None for any; a mono method
    gets the channel mean and its stems are copied to every output channel) and `level_db`
    (the mixture RMS in dBFS it was trained at), `progress` (whether it draws its own tqdm
    bars) and `report` (None, or a callable the `Separator` sets before each chunk: the method
    calls it with the fraction of the chunk done, in [0, 1], so that the Separator's one bar in
    seconds of audio moves during a long chunk; such a method's own bars are switched off).
    """

    sources: Sequence[str]
    sample_rate: int

    def __call__(self, mix: Tensor) -> Tensor: ...
