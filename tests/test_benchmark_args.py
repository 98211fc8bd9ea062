"""Argument parsing of `benchmarks/separation.py` (imported from its file; no separation runs)."""
import importlib.util
from pathlib import Path

import pytest

from audiosep.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def separation_benchmark():
    spec = importlib.util.spec_from_file_location("separation_benchmark", ROOT / "benchmarks" / "separation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_variant_splits_method_options_from_config_fields(separation_benchmark):
    variants = separation_benchmark.parse_variants(["h64=hop_frames=64,steps_per_level=20", "d=delta=1e-4"])
    assert variants == {"h64": ({"steps_per_level": 20}, {"hop_frames": 64}), "d": ({"delta": 1e-4}, {})}


def test_variant_refuses_unknown_keys(separation_benchmark):
    with pytest.raises(UserError, match="unknown key 'no_such_field'"):
        separation_benchmark.parse_variants(["x=no_such_field=1"])
    with pytest.raises(SystemExit):
        separation_benchmark.parse_variants(["x=steps_per_level"])
