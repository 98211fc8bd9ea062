"""Image training data shared by the image-domain models (NCSN priors, VAE-BSS).

The train split of an image dataset (`data.images.load_images`) is cut into a training
set and a fixed validation set: its last `valid_items` images, so validation never sees a
training image and the test split stays untouched for the benchmark.
"""
from __future__ import annotations

from torch import Tensor
from torch.utils.data import Dataset

from ..data.images import load_images
from ..errors import UserError
from ..priors.base import Domain


class ImageItems(Dataset):
    """Images `(N, C, H, W)` as a map-style dataset of `(C, H, W)` items."""

    def __init__(self, images: Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Tensor:
        return self.images[index]


def default_valid_items(n_images: int, multiple: int = 1) -> int:
    """Images held out for validation by default: a tenth of the train split, at most 1000,
    rounded down to a multiple of `multiple` (e.g. the images per mixture)."""
    return max(multiple, min(1000, n_images // 10) // multiple * multiple)


def image_sets(spec: str, valid_items: int | None = None, center: bool = False,
               multiple: int = 1) -> tuple[ImageItems, ImageItems, Domain, str]:
    """(train images, valid images, domain, dataset name) from the train split of `spec`.

    Args:
        spec: an image dataset spec (`load_images`: "digits", "mnist:DIR", a folder, ...).
        valid_items: images held out from the end of the train split for validation
            (None: `default_valid_items`, a multiple of `multiple`).
        center: values shifted to [−0.5, 0.5] (the flow convention) instead of [0, 1].
    """
    images = load_images(spec, "train")
    n = images.images.shape[0]
    if valid_items is None:
        valid_items = default_valid_items(n, multiple)
    if not 0 < valid_items < n:
        raise UserError(f"valid_items must be in [1, {n - 1}] for {images.name}'s {n} training images, "
                        f"got {valid_items}")
    data = images.images - 0.5 if center else images.images
    value_range = (-0.5, 0.5) if center else (0.0, 1.0)
    domain = Domain.image(images.shape, value_range)
    return ImageItems(data[: n - valid_items]), ImageItems(data[n - valid_items:]), domain, images.name
