"""Image datasets and image mixtures for the image-domain experiments (BASIS, VAE-BSS).

Readers (all return uint8 arrays, no download ever):
- `read_idx`: one IDX file (the MNIST / Fashion-MNIST format), gzipped or raw. The header
  is checked (magic, type code, dimension count, size) so a truncated or foreign file is a
  one-line `UserError`, not a reshape traceback.
- `read_mnist(folder, split)`: `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`, the
  names both MNIST and Fashion-MNIST ship under.
- `read_cifar10(folder, split)`: the python pickles of CIFAR-10
  (`data_batch_1..5`, `test_batch`; dicts with b"data" (N, 3072) uint8 and b"labels").
  Pickles can run code when loaded: they are opened with an unpickler that accepts only
  built-in containers and numpy arrays.
- `digits(split)`: scikit-learn's bundled 8×8 digits (1797 images, values 0..16, scaled to
  0..255), split 1497 / 300 by a fixed permutation: the no-download fallback that lets
  every recipe run in minutes.

`load_images(spec, split)` resolves a dataset spec ("digits", "mnist:DIR",
"fashion-mnist:DIR", "cifar10:DIR", or a bare folder whose files say which) into an
`ImageSet` of float32 images `(N, C, H, W)` in [0, 1].

`image_mixtures(images, n, k, seed, ...)` draws mixtures of K distinct images, the pairs
fixed by the seed (so every method is scored on the same test mixtures), in both
conventions the seed papers use: `mixing="sum"` on [0, 1] (BASIS with NCSN priors:
m = x₁ + x₂) and `mixing="mean"` (VAE-BSS on [0, 1], BASIS-Glow on data centred to
[−0.5, 0.5] with `center=True`).
"""
from __future__ import annotations

import gzip
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError

# IDX type codes (LeCun's format description): code → big-endian numpy dtype.
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MNIST_FILES = {"train": "train", "test": "t10k"}
CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
DIGITS_TEST = 300  # scikit-learn digits held out as the test split
SPLITS = ("train", "test")
PIXEL_LEVELS = 256  # 8-bit pixels: `load_images` returns k/255, k = 0..255 (flows dequantise to these bins)


@dataclass
class ImageSet:
    """A split of an image dataset.

    Fields: name (e.g. "mnist"); images float32 `(N, C, H, W)` in [0, 1]; labels int64 `(N,)`.
    """

    name: str
    images: Tensor
    labels: Tensor

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])


def _open_maybe_gzip(path: Path) -> bytes:
    """The bytes of `path`, gunzipped when it starts with the gzip magic."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise UserError(f"{path}: broken gzip data ({err})") from None
    return raw


def read_idx(path: str | Path) -> np.ndarray:
    """One IDX file (raw or gzipped) as a numpy array of its stored type and shape.

    Raises:
        UserError: a missing file, a header that is not IDX, or fewer bytes than it announces.
    """
    path = Path(path)
    data = _open_maybe_gzip(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES or data[3] == 0:
        raise UserError(f"{path}: not an IDX file (bad header {data[:4].hex() or 'empty'})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{path}: IDX header announces {ndim} dimensions but the file ends first")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise UserError(f"{path}: IDX header announces shape {shape} ({expected} bytes) "
                        f"but the file holds {len(data) - header} bytes of data")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(folder: Path, stem: str) -> Path:
    """`folder/stem` or `folder/stem.gz`, whichever exists."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise UserError(f"{folder}: no {stem}[.gz]")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"unknown image split {split!r}; choose one of: {', '.join(SPLITS)}")


def read_mnist(folder: str | Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """MNIST or Fashion-MNIST: (images uint8 `(N, 28, 28)`, labels uint8 `(N,)`)."""
    _check_split(split)
    folder = Path(folder)
    prefix = MNIST_FILES[split]
    images = read_idx(_find(folder, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(folder, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise UserError(f"{folder}: {split} images {images.shape} and labels {labels.shape} do not match")
    return images, labels


class _ArrayUnpickler(pickle.Unpickler):
    """Loads only what CIFAR pickles hold: built-in containers and numpy arrays."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _ArrayUnpickler(io.BytesIO(_open_maybe_gzip(path)), encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, IndexError) as err:
        raise UserError(f"{path}: not a CIFAR-10 python batch ({err})") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise UserError(f"{path}: CIFAR-10 batch of shape {data.shape} with {labels.shape[0]} labels")
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar10(folder: str | Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 python pickles: (images uint8 `(N, 3, 32, 32)`, labels int64 `(N,)`).

    `folder` is the extracted `cifar-10-batches-py` folder (or the folder holding it).
    """
    _check_split(split)
    folder = Path(folder)
    if (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    parts = [_read_cifar_batch(_find(folder, name)) for name in CIFAR_FILES[split]]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def digits(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8×8 digits (shipped with the package): (uint8 `(N, 8, 8)` in 0..255, labels).

    The split is a fixed permutation (seed 0): 1497 train, 300 test images.
    """
    _check_split(split)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    order = np.random.default_rng(0).permutation(images.shape[0])
    index = order[DIGITS_TEST:] if split == "train" else order[:DIGITS_TEST]
    return images[index], bunch.target[index].astype(np.int64)


def _detect(folder: Path) -> str:
    """"mnist" or "cifar10" from the files in `folder`."""
    if any(folder.glob("train-images-idx3-ubyte*")) or any(folder.glob("t10k-images-idx3-ubyte*")):
        return "mnist"
    if any(folder.glob("data_batch_*")) or (folder / "cifar-10-batches-py").is_dir():
        return "cifar10"
    raise UserError(f"{folder}: neither MNIST IDX files nor CIFAR-10 batches found")


def load_images(spec: str | Path, split: str = "train") -> ImageSet:
    """An image dataset split as float32 `(N, C, H, W)` in [0, 1].

    Args:
        spec: "digits", "mnist:DIR", "fashion-mnist:DIR", "cifar10:DIR", or a folder
            (MNIST-style IDX files or CIFAR-10 batches, told apart by their names).
        split: "train" or "test".
    """
    spec = str(spec)
    name, _, folder = spec.partition(":") if ":" in spec and not Path(spec).exists() else ("", "", spec)
    if spec == "digits":
        name = "digits"
    elif not name:
        if not Path(folder).is_dir():
            raise UserError(f"image dataset {spec!r}: not a folder (give digits, mnist:DIR, cifar10:DIR)")
        name = _detect(Path(folder))
    if name == "digits":
        images, labels = digits(split)
    elif name in ("mnist", "fashion-mnist"):
        images, labels = read_mnist(folder, split)
    elif name == "cifar10":
        images, labels = read_cifar10(folder, split)
    else:
        raise UserError(f"unknown image dataset {name!r}; choose digits, mnist, fashion-mnist or cifar10")
    tensor = torch.from_numpy(np.ascontiguousarray(images)).float().div_(PIXEL_LEVELS - 1)
    if tensor.dim() == 3:
        tensor = tensor.unsqueeze(1)
    return ImageSet(name, tensor, torch.from_numpy(np.asarray(labels, dtype=np.int64)))


def mixture_indices(n_images: int, n_mixtures: int, n_sources: int, seed: int) -> Tensor:
    """`(n_mixtures, n_sources)` int64: K distinct image indices per mixture, fixed by `seed`."""
    if n_sources < 1 or n_images < n_sources:
        raise UserError(f"need at least {n_sources} images to mix {n_sources} sources, got {n_images}")
    if n_mixtures < 1:
        raise UserError(f"need at least 1 mixture, got {n_mixtures}")
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(n_images, (n_mixtures, n_sources), generator=generator)
    while True:  # redraw the rows that repeat an image (rare when K ≪ N)
        ordered = index.sort(dim=1).values
        repeats = (ordered[:, 1:] == ordered[:, :-1]).any(dim=1).nonzero().flatten()
        if repeats.numel() == 0:
            return index
        index[repeats] = torch.randint(n_images, (repeats.numel(), n_sources), generator=generator)


def image_mixtures(images: Tensor, n_mixtures: int, n_sources: int = 2, seed: int = 0,
                   mixing: Literal["sum", "mean"] = "sum", center: bool = False) -> tuple[Tensor, Tensor]:
    """Mixtures of K distinct images, reproducible by seed.

    Args:
        images: `(N, C, H, W)` in [0, 1].
        n_mixtures, n_sources: M mixtures of K images each.
        seed: fixes which images are mixed.
        mixing: "sum" (m = Σₖ xₖ) or "mean" (m = Σₖ xₖ / K).
        center: sources shifted to [−0.5, 0.5] before mixing (the flow convention).
    Returns:
        (mixtures `(M, C, H, W)`, sources `(M, K, C, H, W)`), mixture == sum or mean of the
        returned sources exactly as computed.
    """
    if mixing not in ("sum", "mean"):
        raise UserError(f"unknown image mixing {mixing!r}; choose sum or mean")
    index = mixture_indices(images.shape[0], n_mixtures, n_sources, seed)
    sources = images[index]
    if center:
        sources = sources - 0.5
    mixtures = sources.sum(dim=1) if mixing == "sum" else sources.mean(dim=1)
    return mixtures, sources


def batch_mixtures(batch: Tensor, n_mix: int = 2) -> Tensor:
    """Mean mixtures of a batch of images: `(n_mix·B, C, H, W)` → `(B, C, H, W)`, image i
    mixed with images i + B, i + 2B, … (a shuffled batch gives new pairs every epoch, the
    VAE-BSS training convention: m = Σⱼ xⱼ / n_mix)."""
    if batch.shape[0] % n_mix:
        raise UserError(f"a batch of {batch.shape[0]} images does not split into mixtures of {n_mix}")
    return batch.unflatten(0, (n_mix, batch.shape[0] // n_mix)).mean(dim=0)
