"""The bundled model sets by name (`audiosep models`, `separate -n NAME`, `audiosep.separate`).

Each set is a manifest `audiosep/pretrained/<name>.json`, data rather than code constants, so a
new set is one file beside its weights:

    {"name": "piano_violin", "sources": ["piano", "violin"], "sample_rate": 16000,
     "description": "...", "default": "masknet",
     "methods": {"masknet": {"files": ["masknet_piano_violin.pt"]},
                 "basis": {"files": [...], "init_model": "masknet_piano_violin.pt"}, ...},
     "made_by": "the command that made the files",
     "scores": {"command": "the benchmark behind them", "material": "what they were measured on",
                "sdr": {"<method>": {"<source>": dB}}}}

Files are relative to the manifest's folder. A set names one file list per method it can run
(the default method first among equals: `default`); `init_model` is BASIS's starting model.
This module only reads manifests; building a method from a set's files is
`methods.build_method`'s work.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .errors import UserError

PRETRAINED = Path(__file__).resolve().parent / "pretrained"
DEFAULT_SET = "piano_violin"  # what `audiosep separate mix.wav` runs


@dataclass(frozen=True)
class ModelSet:
    """One bundled model set (see the module doc): `methods` maps a method name to its
    `{"files": [Path, ...], "init_model": Path | None}` (paths absolute)."""

    name: str
    sources: tuple[str, ...]
    sample_rate: int
    description: str
    default: str
    methods: Mapping[str, Mapping[str, Any]]
    made_by: str
    scores: Mapping[str, Any]

    def files(self, method: str | None = None) -> list[Path]:
        """The model files of `method` (default: the set's default method).

        Raises:
            UserError: a method this set has no files for.
        """
        return list(self._entry(method)["files"])

    def init_model(self, method: str | None = None) -> Path | None:
        """BASIS's starting model in this set (None for other methods or when it names none)."""
        return self._entry(method).get("init_model")

    def size_bytes(self) -> int:
        """Bytes on disk of every file the set names, each counted once (measured, not stored)."""
        paths = {p for entry in self.methods.values() for p in [*entry["files"], entry.get("init_model")] if p}
        return sum(p.stat().st_size for p in paths)

    def output_name(self, method: str | None = None) -> str:
        """The folder of its stems, `OUT/<name>/` for the default method and `OUT/<name>_<method>/`
        for another (so two methods of one set never write into one folder)."""
        method = method or self.default
        return self.name if method == self.default else f"{self.name}_{method}"

    def _entry(self, method: str | None) -> Mapping[str, Any]:
        method = method or self.default
        if method not in self.methods:
            others = [name for name, other in model_sets().items() if method in other.methods]
            where = f"-n {' or -n '.join(others)} has one" if others else "no bundled set has one"
            raise UserError(f"model set '{self.name}' has no {method} model ({where}; or give your files "
                            f"with --model); it has {', '.join(self.methods)}")
        return self.methods[method]


def model_sets(folder: str | Path = PRETRAINED) -> dict[str, ModelSet]:
    """Every manifest `*.json` of `folder`, by name, sorted (the default set first).

    Raises:
        UserError: a manifest that does not parse, lacks a key, names a missing file, or whose
            `name` differs from its file name.
    """
    found = {}
    for path in sorted(Path(folder).glob("*.json")):
        found[path.stem] = read_manifest(path)
    return dict(sorted(found.items(), key=lambda item: (item[0] != DEFAULT_SET, item[0])))


def models() -> dict[str, ModelSet]:
    """The bundled model sets by name, the default first (`audiosep.models()`)."""
    return model_sets()


def model_set(name: str, folder: str | Path = PRETRAINED) -> ModelSet:
    """The bundled set `name`.

    Raises:
        UserError: no such set (the message lists the sets), or as `model_sets`.
    """
    sets = model_sets(folder)
    if name not in sets:
        raise UserError(f"no bundled model set '{name}'; choose from {', '.join(sets) or 'none'} "
                        "(audiosep models lists them), or give your own files with --model")
    return sets[name]


def bundled(method: str, name: str = DEFAULT_SET) -> list[Path]:
    """The files of bundled set `name`'s `method` (e.g. `bundled("nmf")`: the default set's
    NMF model), for defaults of benchmarks and options."""
    return model_set(name).files(method)


def read_manifest(path: str | Path) -> ModelSet:
    """The `ModelSet` of one manifest file, its file paths made absolute and checked."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        methods = {method: _resolve_entry(path.parent, entry) for method, entry in data["methods"].items()}
        model = ModelSet(name=data["name"], sources=tuple(data["sources"]), sample_rate=int(data["sample_rate"]),
                         description=data["description"], default=data["default"], methods=methods,
                         made_by=data["made_by"], scores=data.get("scores", {}))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path}: not a model set manifest ({type(err).__name__}: {err})") from None
    if model.name != path.stem or model.default not in methods:
        raise UserError(f"{path}: its name must be its file name and its default one of its methods")
    return model


def _resolve_entry(folder: Path, entry: Mapping[str, Any]) -> dict[str, Any]:
    """One method's entry with absolute, existing paths."""
    files = [folder / name for name in entry["files"]]
    init = folder / entry["init_model"] if entry.get("init_model") else None
    missing = [p for p in [*files, init] if p is not None and not p.is_file()]
    if missing or not files:
        raise ValueError(f"missing model file {missing[0] if missing else '(none named)'}")
    return {"files": files, "init_model": init}
