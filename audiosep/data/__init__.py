"""Datasets: synthetic multi-stem renders (`synth`), stem folders / MUSDB18 / Slakh2100 (`stems`),
image datasets and image mixtures (`images`: MNIST, CIFAR-10, scikit-learn digits)."""
from .stems import MixtureCrops, SourceCrops, SourcePatches, Track, detect_layout, list_sources, list_tracks, load_track
from .synth import PRESETS, list_pieces, synthesize

__all__ = [
    "MixtureCrops", "PRESETS", "SourceCrops", "SourcePatches", "Track", "detect_layout", "list_pieces",
    "list_sources", "list_tracks", "load_track", "synthesize",
]
