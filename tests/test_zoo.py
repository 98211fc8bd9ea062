"""The bundled model sets by name: manifests, `audiosep models`, `separate -n NAME`, the Python API,
and the regression scores of each bundled set's methods on its bundled example."""
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import audiosep
from audiosep.cli import main
from audiosep.errors import UserError
from audiosep.eval.report import score_track, summarize
from audiosep.separation.methods import METHODS
from audiosep.zoo import model_set, model_sets, read_manifest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _example(name: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(mixture (N,), true stems (K, N) in the set's source order, rate) of example `name`."""
    mix, rate = sf.read(EXAMPLES / f"{name}.wav", dtype="float32")
    refs = np.stack([sf.read(EXAMPLES / name / f"{s}.wav", dtype="float32")[0] for s in model_set(name).sources])
    return mix, refs, rate


def _sdr(name: str, estimates: dict[str, np.ndarray], refs: np.ndarray, rate: int) -> dict[str, float]:
    """Median SDR (dB, BSSEval v4, 1 s windows) of each source of set `name`."""
    sources = list(model_set(name).sources)
    est = np.stack([estimates[s] for s in sources])[:, None]
    table = summarize(score_track(name, sources, refs[:, None], est, rate))
    return table.query("metric == 'SDR'").set_index("target")["score"].to_dict()


def test_every_bundled_set_names_existing_files_of_known_methods_and_its_example():
    sets = audiosep.models()
    assert list(sets)[0] == "piano_violin" and "drums_bass" in sets
    for name, bundled in sets.items():
        assert set(bundled.methods) <= set(METHODS) and bundled.default in bundled.methods
        assert all(p.is_file() for method in bundled.methods for p in bundled.files(method))
        assert sf.info(str(EXAMPLES / f"{name}.wav")).samplerate == bundled.sample_rate
        assert sorted(p.stem for p in (EXAMPLES / name).glob("*.wav")) == sorted(bundled.sources)
    assert sets["drums_bass"].default == "latent" and sets["drums_bass"].size_bytes() <= 25e6


def test_a_manifest_naming_a_missing_file_is_refused_in_one_line(tmp_path):
    manifest = json.loads((Path(audiosep.__file__).parent / "pretrained" / "drums_bass.json").read_text())
    (tmp_path / "drums_bass.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="missing model file"):
        read_manifest(tmp_path / "drums_bass.json")
    assert model_sets(tmp_path / "none") == {}


def test_from_pretrained_reads_a_set_from_another_folder(tmp_path):
    """A retrained set (its manifest beside its own files) is built from its folder, and the
    bundled set of the same name is left alone."""
    from audiosep.separation import Separator
    from audiosep.separation.nmf import NMFModel

    bundled = model_set("piano_violin")
    manifest = json.loads((Path(audiosep.__file__).parent / "pretrained" / "piano_violin.json").read_text())
    manifest["methods"] = {"nmf": {"files": ["mine.pt"]}}
    manifest["default"] = "nmf"
    model = NMFModel.load(bundled.files("nmf")[0])
    model.dictionaries = model.dictionaries.flip(-1)
    model.save(tmp_path / "mine.pt")
    (tmp_path / "piano_violin.json").write_text(json.dumps(manifest))
    mine = Separator.from_pretrained("piano_violin", folder=tmp_path, progress=False)
    assert isinstance(mine.method, NMFModel) and np.array_equal(mine.method.dictionaries, model.dictionaries)
    assert not isinstance(Separator.from_pretrained("piano_violin", progress=False).method, NMFModel)


def test_models_lists_both_sets_with_sources_and_sizes(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name, bundled in audiosep.models().items():
        row = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert ", ".join(bundled.sources) in row and f"{bundled.size_bytes() / 1e6:.1f} MB" in row


def test_separate_n_picks_the_set_and_another_method_writes_its_own_folder(tmp_path):
    # -n drums_bass --method nmf: OUT/drums_bass_nmf/<track>/, never the default method's folder
    assert main(["separate", str(EXAMPLES / "drums_bass.wav"), "-n", "drums_bass", "--method", "nmf",
                 "-o", str(tmp_path)]) == 0
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.wav"))
    assert written == ["drums_bass_nmf/drums_bass/bass.wav", "drums_bass_nmf/drums_bass/drums.wav"]


def test_separate_n_with_an_unknown_set_lists_the_sets(tmp_path, capsys):
    assert main(["separate", str(EXAMPLES / "drums_bass.wav"), "-n", "nope", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no bundled model set 'nope'" in err and "drums_bass" in err and not any(tmp_path.iterdir())


def test_python_separate_returns_stems_by_name_of_the_input_shape():
    mix, refs, rate = _example("drums_bass")
    stems = audiosep.separate(mix, model="drums_bass", sample_rate=rate, method="nmf")
    assert list(stems) == ["drums", "bass"] and all(s.shape == mix.shape for s in stems.values())
    np.testing.assert_allclose(sum(stems.values()), mix, atol=2e-3)
    from_file = audiosep.separate(EXAMPLES / "drums_bass.wav", model="drums_bass", method="nmf")
    for source in stems:
        np.testing.assert_allclose(from_file[source], stems[source][None], atol=1e-6)  # a file: (C, N)
    with pytest.raises(UserError, match="needs its sample_rate"):
        audiosep.separate(mix, model="drums_bass")


# Regression scores (open-unmix's test_regression idea): the median SDR (dB) each bundled set's
# methods reached on the first REGRESSION_SECONDS of its bundled example when its files were
# bundled; a drop of more than the tolerance is a regression (a front-end, inversion, sampler or
# loader change), not noise: these methods are seeded and deterministic, and the tolerance covers
# float differences between CPUs. (set, method): None is the set's default method.
REGRESSION_SECONDS = 3
REGRESSION = {
    ("piano_violin", None): {"piano": 16.19, "violin": 15.84},
    ("piano_violin", "nmf"): {"piano": 14.90, "violin": 14.54},
    ("piano_violin", "basis"): {"piano": 15.25, "violin": 14.90},
    ("drums_bass", None): {"drums": 9.32, "bass": 10.28},
    ("drums_bass", "nmf"): {"drums": 7.23, "bass": 7.91},
}
TOLERANCE_DB = 0.3
# latent separation draws discrete codes: a float difference between CPUs can flip one draw and
# send a chain elsewhere, so its tolerance is wider (a broken sampler loses several dB)
SAMPLED_TOLERANCE_DB = 1.0


@pytest.mark.slow
@pytest.mark.parametrize("name, method", sorted(REGRESSION, key=str))
def test_bundled_scores_on_the_bundled_example_hold(name, method):
    mix, refs, rate = _example(name)
    n = REGRESSION_SECONDS * rate
    scores = _sdr(name, audiosep.separate(mix[:n], model=name, sample_rate=rate, method=method), refs[:, :n], rate)
    tolerance = SAMPLED_TOLERANCE_DB if (method or model_set(name).default) == "latent" else TOLERANCE_DB
    for source, stored in REGRESSION[name, method].items():
        assert abs(scores[source] - stored) < tolerance, (source, scores[source], stored)


def test_one_track_folder_is_evaluated_and_reported_with_its_mixture_beside(tmp_path):
    # the examples/ layout: examples/<track>.wav beside examples/<track>/<source>.wav
    # with another example track beside it, which the one-track evaluation leaves alone
    ref = tmp_path / "examples"
    rng = np.random.default_rng(0)
    stems = {s: (0.1 * rng.standard_normal(8000)).astype(np.float32) for s in ("a", "b")}
    for track in ("song", "other"):
        (ref / track).mkdir(parents=True)
        for s, x in stems.items():
            sf.write(ref / track / f"{s}.wav", x, 8000)
    sf.write(ref / "song.wav", stems["a"] + stems["b"], 8000)
    est = tmp_path / "out" / "song"
    est.mkdir(parents=True)
    for s, x in stems.items():
        sf.write(est / f"{s}.wav", x + 0.01 * rng.standard_normal(8000).astype(np.float32), 8000)
    assert main(["evaluate", str(ref / "song"), str(est), "-o", str(tmp_path / "run" / "eval")]) == 0
    page = tmp_path / "report.html"
    assert main(["report", str(tmp_path / "run"), "-o", str(page), "--seconds", "0.5"]) == 0
    text = page.read_text()
    assert text.count("<audio") == 1 + 2 + 2 and ">mixture<" in text  # mixture, 2 references, 2 estimates
