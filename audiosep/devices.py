"""The one parser of every `--device` (`cpu`, `cuda`, `cuda:1`, ...): training and separation
both call `resolve_device`, so a device string means the same thing everywhere.

A bare `cuda` is made explicit — `cuda:<current device>`, or the caller's `local_rank` for one
process of a torchrun group — before `torch.cuda.set_device`, which refuses a device without
an index ("Expected a torch.device with a specified index"). Below `errors`, above nothing:
any layer may import it.
"""
from __future__ import annotations

import torch

from .errors import UserError


def resolve_device(device: str | torch.device, local_rank: int | None = None) -> torch.device:
    """The device to run on; a CUDA device gets an explicit index and becomes the current one.

    Args:
        device: "cpu", "cuda", "cuda:1", "mps" (or a torch.device).
        local_rank: the index a bare "cuda" stands for (this torchrun process's LOCAL_RANK);
            None: `torch.cuda.current_device()`. An explicit index ("cuda:1") wins.
    Returns:
        `cpu`, `cuda:<index>` (after `torch.cuda.set_device` of it) or `mps`.
    Raises:
        UserError: a malformed or unsupported device string, CUDA (or MPS) not available,
            or a CUDA index beyond the devices this process sees.
    """
    dev = _parse(device)
    if dev.type == "cuda":
        return _cuda_device(dev, local_rank)
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {str(device)!r} requested but MPS is not available")
    return torch.device(dev.type)


def _parse(device: str | torch.device) -> torch.device:
    """`device` as a torch.device of type cpu, cuda or mps; UserError for anything else."""
    if isinstance(device, torch.device):
        dev = device
    else:
        try:
            dev = torch.device(str(device))
        except RuntimeError:
            dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"unknown device {str(device)!r}: use cpu, cuda or cuda:<index> (e.g. cuda:1)")
    return dev


def _cuda_device(dev: torch.device, local_rank: int | None) -> torch.device:
    """`dev` (type cuda) with its index filled in, checked and made current."""
    if not torch.cuda.is_available():
        raise UserError(f"device {str(dev)!r} requested but CUDA is not available on this machine")
    if dev.index is not None:
        index = dev.index
    else:
        index = local_rank if local_rank is not None else torch.cuda.current_device()
    count = torch.cuda.device_count()
    if index >= count:
        raise UserError(f"device cuda:{index} requested but this process sees {count} CUDA device(s) "
                        f"(cuda:0 to cuda:{count - 1})")
    dev = torch.device("cuda", index)
    torch.cuda.set_device(dev)
    return dev
