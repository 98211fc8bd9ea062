"""Separation methods and the `Separator` that runs any of them on files.

- `nmf`: supervised NMF (fixed per-source dictionaries, Wiener masks), the baseline.
- `mel_basis`: BASIS with one mel-spectrogram prior per source (`MelBasis`).
- `protocol`: what a method is (`Method`).
- `audiosep.methods` (beside this package): the methods by name, their files, options and builders.
- `separator`: reading, resampling, level normalisation, chunking, progress, writing; a
  bundled set by name (`Separator.from_pretrained`, `separate`).
- `basis`, `mixing`: annealed Langevin over K priors and the mixing models (audio and images).
- `vae_bss`: VAE-BSS inference and VAEM masking: image mixtures, and `VAEBSS` (STFT magnitudes,
  a Separator method), imported on use.
- `latent`: Bayesian separation in an LQ-VAE's code space (`LatentSeparator`), imported on use.
"""
from .mel_basis import MelBasis
from .nmf import NMFModel, STFTDomain, fit_activations, learn_dictionary, separate_nmf, train_nmf
from .protocol import Method
from ..methods import METHODS, build_method, separation_method
from .separator import Input, RunSummary, Separator, find_inputs, model_set_name, separate, separate_files

__all__ = [
    "Input",
    "METHODS",
    "MelBasis",
    "Method",
    "NMFModel",
    "RunSummary",
    "STFTDomain",
    "Separator",
    "build_method",
    "find_inputs",
    "fit_activations",
    "learn_dictionary",
    "model_set_name",
    "separate",
    "separate_files",
    "separate_nmf",
    "separation_method",
    "train_nmf",
]
