"""Separation methods and the `Separator` that runs any of them on files.

- `nmf`: supervised NMF (fixed per-source dictionaries, Wiener masks), the baseline.
- `mel_basis`: BASIS with one mel-spectrogram prior per source (`MelBasis`).
- `separator`: reading, resampling, level normalisation, chunking, progress, writing.
- `basis`, `mixing`: annealed Langevin over K priors and the mixing models (audio and images).
- `vae_bss`: VAE-BSS inference and VAEM masking: image mixtures, and `VAEBSS` (STFT magnitudes,
  a Separator method), imported on use.
- `latent`: Bayesian separation in an LQ-VAE's code space (`LatentSeparator`), imported on use.
"""
from .mel_basis import BUNDLED_PRIORS, MelBasis
from .nmf import BUNDLED_NMF, NMFModel, STFTDomain, fit_activations, learn_dictionary, separate_nmf, train_nmf
from .separator import (Input, Method, RunSummary, Separator, find_inputs, model_set_name, separate_files,
                        separation_method)

__all__ = [
    "BUNDLED_NMF",
    "BUNDLED_PRIORS",
    "Input",
    "MelBasis",
    "Method",
    "NMFModel",
    "RunSummary",
    "STFTDomain",
    "Separator",
    "find_inputs",
    "fit_activations",
    "learn_dictionary",
    "model_set_name",
    "separate_files",
    "separate_nmf",
    "separation_method",
    "train_nmf",
]
