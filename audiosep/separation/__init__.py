"""Separation methods and the `Separator` that runs any of them on files.

- `nmf`: supervised NMF (fixed per-source dictionaries, Wiener masks), the baseline.
- `mel_basis`: BASIS with one mel-spectrogram prior per source (`MelBasis`).
- `separator`: reading, resampling, level normalisation, chunking, progress, writing.
"""
from .mel_basis import BUNDLED_PRIORS, MelBasis, separation_method
from .nmf import BUNDLED_NMF, NMFModel, STFTDomain, fit_activations, learn_dictionary, separate_nmf, train_nmf
from .separator import Method, Separator, separate_files

__all__ = [
    "BUNDLED_NMF",
    "BUNDLED_PRIORS",
    "MelBasis",
    "Method",
    "NMFModel",
    "STFTDomain",
    "Separator",
    "fit_activations",
    "learn_dictionary",
    "separate_files",
    "separate_nmf",
    "separation_method",
    "train_nmf",
]
