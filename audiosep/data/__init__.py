"""Datasets: synthetic multi-stem renders (`synth`), stem folders / MUSDB18 / Slakh2100 (`stems`)."""
from .stems import SourceCrops, SourcePatches, Track, detect_layout, list_sources, list_tracks, load_track
from .synth import PRESETS, list_pieces, synthesize

__all__ = [
    "PRESETS", "SourceCrops", "SourcePatches", "Track", "detect_layout", "list_pieces",
    "list_sources", "list_tracks", "load_track", "synthesize",
]
