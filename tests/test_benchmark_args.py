"""Argument parsing of `benchmarks/separation.py` (imported from its file; no separation runs)."""
import importlib.util
import json
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


def _dataset(root, name, tracks):
    """A dataset folder holding only an index.json with `tracks` as (split, corpus path)."""
    folder = root / name
    folder.mkdir()
    records = [{"track": f"t{k}", "split": split, "piece": piece, "composer": piece.split("/")[0],
                "soundfont": "/fonts/A.sf2", "source_soundfonts": {"piano": "/fonts/A.sf2", "violin": "/fonts/A.sf2"}}
               for k, (split, piece) in enumerate(tracks)]
    (folder / "index.json").write_text(json.dumps({"tracks": records}))
    return folder


def test_check_folds_refuses_a_composer_of_the_training_data(separation_benchmark, tmp_path):
    train = _dataset(tmp_path, "train", [("train", "bach/a.mxl"), ("valid", "schubert/b.xml"),
                                         ("test", "beethoven/c.mxl")])
    honest = _dataset(tmp_path, "beethoven_x", [("test", "beethoven/c.mxl"), ("test", "beethoven/d.mxl")])
    leaky = _dataset(tmp_path, "romantic_x", [("test", "chopin/e.krn"), ("test", "schubert/f.xml")])
    checked = separation_benchmark.check_folds([honest], [train])  # test tracks of training data do not count
    assert checked == {"beethoven_x": {"beethoven": {"beethoven/c.mxl", "beethoven/d.mxl"}}}
    with pytest.raises(SystemExit, match="schubert also in the training data"):
        separation_benchmark.check_folds([honest, leaky], [train])


def test_check_folds_refuses_reserved_composers_and_missing_indexes(separation_benchmark, tmp_path):
    train = _dataset(tmp_path, "train", [("train", "bach/a.mxl")])
    with pytest.raises(SystemExit, match="reserved"):
        separation_benchmark.check_folds([_dataset(tmp_path, "h", [("test", "haydn/q.mxl")])], [train])
    (tmp_path / "bare" / "test").mkdir(parents=True)
    with pytest.raises(SystemExit, match="no index.json"):
        separation_benchmark.check_folds([tmp_path / "bare"], [train])
    with pytest.raises(SystemExit, match="no test tracks"):
        separation_benchmark.check_folds([_dataset(tmp_path, "v", [("valid", "verdi/l.mxl")])], [train])


def test_fold_summary_mean_worst_and_margin(separation_benchmark):
    import pandas as pd

    sources, methods = ["piano", "violin"], ["basis-ncsn+nmf", "nmf", "mix"]

    def fold(default, nmf):  # method × source median SDR, as run_folds collects it
        return pd.DataFrame([default, nmf, [3.0, 3.0]], index=methods, columns=sources)

    sdr = {"a": fold([10.0, 8.0], [9.0, 9.0]), "b": fold([4.0, 6.0], [5.0, 4.0])}
    summary = separation_benchmark.fold_summary(sdr, methods, sources)
    assert list(summary.index) == ["a", "b", "mean", "worst"]
    assert summary.loc["mean", ("basis-ncsn+nmf", "violin")] == 7.0
    assert summary.loc["worst", ("nmf", "piano")] == 5.0
    worst = separation_benchmark.worst_folds(summary, ["a", "b"])
    assert list(worst.index) == methods and worst.loc["basis-ncsn+nmf", "piano"] == "b"
    margin = separation_benchmark.margin_table(summary, ["a", "b"], "basis-ncsn+nmf", "nmf", sources)
    assert margin.loc["a"].tolist() == [1.0, -1.0] and margin.loc["min"].tolist() == [-1.0, -1.0]
    assert margin.loc["mean"].tolist() == [0.0, 0.5]


def test_folds_need_train_data_and_data_defaults_to_the_repository(separation_benchmark, monkeypatch, tmp_path):
    assert separation_benchmark.DEFAULT_DATA == ROOT / "data" / "piano_violin"
    monkeypatch.setattr("sys.argv", ["separation.py", "--folds", str(tmp_path)])
    with pytest.raises(SystemExit, match="--folds needs --train-data"):
        separation_benchmark.main()
