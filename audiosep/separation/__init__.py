"""Separation methods and the `Separator` that runs any of them on files.

- `nmf`: supervised NMF (fixed per-source dictionaries, Wiener masks), the baseline.
- `mel_basis`: BASIS with one mel-spectrogram prior per source (`MelBasis`).
- `protocol`: what a method is (`Method`).
- `methods`: the methods by name, their files, options and builders (`METHODS`).
- `separator`: reading, resampling, level normalisation, chunking, progress, writing; a
  bundled set by name (`Separator.from_pretrained`, `separate`).
- `basis`, `mixing`: annealed Langevin over K priors and the mixing models (audio and images).
- `vae_bss`: VAE-BSS inference and VAEM masking: image mixtures, and `VAEBSS` (STFT magnitudes,
  a Separator method).
- `latent`: Bayesian separation in an LQ-VAE's code space (`LatentSeparator`).

The names below are imported on first use, so that `separation.methods` (which the command line
reads to build its options) loads without torch.
"""
import importlib

_EXPORTS = {
    "Input": "separator", "RunSummary": "separator", "Separator": "separator", "find_inputs": "separator",
    "model_set_name": "separator", "separate": "separator", "separate_files": "separator",
    "MelBasis": "mel_basis",
    "NMFModel": "nmf", "fit_activations": "nmf", "learn_dictionary": "nmf",
    "separate_nmf": "nmf", "train_nmf": "nmf",
    "Method": "protocol",
    "METHODS": "methods", "build_method": "methods", "separation_method": "methods",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
