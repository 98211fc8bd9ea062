"""audiosep: audio source separation with deep generative priors.

The public API: `separate` (a file or array in, `{source: array}` out, with a bundled model
set by name), `models` (the bundled sets), `Separator` (`Separator.from_pretrained(name)`) and
`separate_files` (files in, stem files out), `NMFModel` (the bundled baseline), `load_prior` (any prior checkpoint, checked against its domain),
`evaluate_dirs` (BSSEval v4 of a folder of estimates), `bss_eval_v4`, and `UserError`.
They are imported on first use, so `import audiosep` (and the CLI's start-up) stays fast.
"""
import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "NMFModel": "audiosep.separation",
    "Separator": "audiosep.separation",
    "separate": "audiosep.separation",
    "models": "audiosep.zoo",
    "separate_files": "audiosep.separation",
    "load_prior": "audiosep.priors",
    "evaluate_dirs": "audiosep.eval.report",
    "bss_eval_v4": "audiosep.eval.bsseval",
    "UserError": "audiosep.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'audiosep' has no attribute {name!r}")
