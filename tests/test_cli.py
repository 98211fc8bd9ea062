"""End-to-end checks of the `audiosep` command on tiny generated data."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from audiosep.cli import main

SR = 16000


def _tones(seconds=2.0, freqs=(220.0, 1760.0)):
    t = np.arange(int(SR * seconds)) / SR
    return {f"src{i}": (0.1 * np.sin(2 * np.pi * f * t) * (1 + 0.3 * np.sin(2 * np.pi * 0.5 * t))).astype(np.float32)
            for i, f in enumerate(freqs)}


@pytest.fixture
def dataset(tmp_path):
    """DATA/test/<track>/{mix,src0,src1}.wav with two tones per track."""
    root = tmp_path / "data"
    for k, base in enumerate((220.0, 330.0)):
        track = root / "test" / f"track{k}"
        track.mkdir(parents=True)
        stems = _tones(freqs=(base, base * 8))
        for name, wav in stems.items():
            sf.write(track / f"{name}.wav", wav, SR, subtype="FLOAT")
        sf.write(track / "mix.wav", sum(stems.values()), SR, subtype="FLOAT")
    return root


def _run(*argv):
    return main([str(a) for a in argv])


def test_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "audiosep.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("synth", "mel", "invert", "evaluate", "oracle"):
        assert command in out.stdout


def test_mel_then_invert_roundtrip(dataset, tmp_path):
    mix = dataset / "test" / "track0" / "mix.wav"
    npy = tmp_path / "out" / "mix.npy"
    assert _run("mel", mix, "-o", npy) == 0
    unit = np.load(npy)
    assert unit.shape[:2] == (1, 160) and 0.0 <= unit.min() and unit.max() <= 1.0
    assert json.loads(npy.with_suffix(".json").read_text())["frontend"]["n_mels"] == 160
    assert npy.with_suffix(".png").stat().st_size > 1000
    wav_out = tmp_path / "out" / "back.wav"
    assert _run("invert", npy, "-o", wav_out, "--method", "phase", "--mix", mix) == 0
    back, sr = sf.read(wav_out)
    ref, _ = sf.read(mix)
    assert sr == SR and back.shape == ref.shape
    # magnitudes through mel → NNLS with the true phase: close to the input waveform
    assert np.linalg.norm(back - ref) / np.linalg.norm(ref) < 0.35


def test_oracle_then_evaluate(dataset, tmp_path):
    out = tmp_path / "irm2"
    assert _run("oracle", "--method", "irm2", dataset, "-o", out) == 0
    assert sorted(p.name for p in (out / "track0").iterdir()) == ["src0.wav", "src1.wav"]
    summary = pd.read_csv(out / "summary.csv")
    sdr = summary[summary.metric == "SDR"].set_index("target").score
    assert (sdr > 20).all()  # tones three octaves apart separate well
    report = tmp_path / "again" / "report.csv"
    assert _run("evaluate", dataset / "test", out, "-o", report) == 0
    table = pd.read_csv(report)
    assert list(table.columns) == ["time", "target", "metric", "score", "track", "method"]
    assert (tmp_path / "again" / "summary.csv").exists()
    assert (tmp_path / "again" / "json" / "track0.json").exists()
    first = pd.read_csv(out / "report.csv")
    np.testing.assert_allclose(table.score.to_numpy(), first.score.to_numpy(), atol=1e-3)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["mel", "{tmp}/missing.wav", "-o", "{tmp}/m.npy"], "no such file"),
        (["mel", "{tmp}", "-o", "{tmp}/m.npy"], "is a directory"),
        (["mel", "{mix}", "-o", "{tmp}/m.npy", "--preset", "nope"], "unknown front end"),
        (["invert", "{tmp}/missing.npy", "-o", "{tmp}/x.wav"], "no such file"),
        (["evaluate", "{data}/test", "{tmp}/nothing", "-o", "{tmp}/r"], "no such estimate folder"),
        (["oracle", "--method", "irm2", "{tmp}/nodata", "-o", "{tmp}/o"], "no such dataset folder"),
        (["separate", "{mix}", "-o", "{tmp}/sep", "--device", "gpu"], "unknown device 'gpu'"),
        (["separate", "{mix}", "-o", "{tmp}/sep", "--method", "nmf", "--device", "cuda:x"],
         "unknown device 'cuda:x'"),
    ],
    ids=["missing", "directory", "bad-preset", "missing-npy", "missing-estimates", "missing-data",
         "bad-device-basis", "bad-device-nmf"],
)
def test_user_errors_are_one_line_and_exit_2(dataset, tmp_path, capsys, argv, message):
    mix = dataset / "test" / "track0" / "mix.wav"
    argv = [a.format(tmp=tmp_path, mix=mix, data=dataset) for a in argv]
    before = sorted(tmp_path.rglob("*"))
    assert _run(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_separate_bundled_example(tmp_path):
    # no --model: BASIS over the bundled NCSN priors, started from the bundled NMF model
    # (a short schedule here: the defaults take ~20 s of CPU on this 10 s example)
    from pathlib import Path

    example = Path(__file__).parents[1] / "examples" / "piano_violin.wav"
    assert _run("separate", example, "-o", tmp_path / "sep", "--steps", 1, "--levels", 2) == 0
    stems = sorted(p.name for p in (tmp_path / "sep" / "piano_violin").iterdir())
    assert stems == ["piano.wav", "violin.wav"]
    mix, sr = sf.read(example)
    piano, sr_out = sf.read(tmp_path / "sep" / "piano_violin" / "piano.wav")
    assert sr_out == sr and piano.shape == mix.shape


def test_separate_bad_model_writes_nothing(tmp_path, capsys):
    from pathlib import Path

    example = Path(__file__).parents[1] / "examples" / "piano_violin.wav"
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    for model in (tmp_path / "missing.pt", junk):
        assert _run("separate", example, "-o", tmp_path / "sep", "--model", model) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("audiosep separate: error:") and "\n" not in err
    assert not (tmp_path / "sep").exists()


def _training_data(root):
    """root/{train,valid}/t0/{src0,src1,mix}.wav, 3 s of tones."""
    for split in ("train", "valid"):
        track = root / split / "t0"
        track.mkdir(parents=True)
        stems = _tones(seconds=3.0)
        for name, wav in stems.items():
            sf.write(track / f"{name}.wav", wav, SR, subtype="FLOAT")
        sf.write(track / "mix.wav", sum(stems.values()), SR, subtype="FLOAT")
    return root


def test_train_ncsn_tiny_then_domain_check(tmp_path, capsys):
    from audiosep.errors import UserError
    from audiosep.priors.base import Domain, load_prior
    from audiosep.spectral.frontend import get_frontend

    root = _training_data(tmp_path / "data")
    ckpt = tmp_path / "src0.pt"
    argv = ["train", "ncsn", "--data", root, "--source", "src0", "-o", ckpt, "--preset", "audiosourcesep",
            "--steps", "2", "--batch-size", "2", "--nf", "4"]
    assert _run(*argv) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]  # 2 steps < valid_every: validated at the end
    assert "valid loss " in summary and "nan" not in summary
    prior = load_prior(ckpt, expected_domain=Domain.mel(get_frontend("audiosourcesep")))
    assert prior.domain == Domain.mel(get_frontend("audiosourcesep"))
    with pytest.raises(UserError, match="trained on mel front end 'audiosourcesep'"):
        load_prior(ckpt, expected_domain=Domain.mel(get_frontend("default")))


@pytest.mark.parametrize("kind", ["ncsn", "glow"])
def test_train_bad_device_is_one_line_and_writes_nothing(tmp_path, capsys, kind):
    root = _training_data(tmp_path / "data")
    argv = ["train", kind, "--data", root, "--source", "src0", "-o", tmp_path / "p.pt", "--preset", "audiosourcesep",
            "--steps", "1", "--batch-size", "2", "--device", "gpu"]
    assert _run(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown device 'gpu'" in err and "\n" not in err
    assert not (tmp_path / "p.pt").exists()


def test_train_without_a_validation_says_so_instead_of_nan(monkeypatch, tmp_path, capsys):
    import audiosep.train

    nan = float("nan")
    monkeypatch.setattr(audiosep.train, "train_ncsn", lambda *a, **k: {"step": 2, "loss": 0.5, "valid_loss": nan})
    monkeypatch.setattr(audiosep.train, "train_flow", lambda *a, **k: {
        "step": 3, "loss": 2.5, "valid_loss": nan,
        "members": [{"sigma": 0.1, "step": 2, "loss": 2.0, "valid_loss": 1.25},
                    {"sigma": 1.0, "step": 1, "loss": 2.5, "valid_loss": nan}]})
    common = ["--data", tmp_path, "--source", "src0", "-o", tmp_path / "p.pt"]
    assert _run("train", "ncsn", *common) == 0
    assert capsys.readouterr().out.strip().endswith("step 2, loss 0.5000, no validation run")
    assert _run("train", "glow", *common) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].endswith("sigma 0.1: step 2, valid 1.2500 bits/dim")
    assert lines[1].endswith("sigma 1: step 1, no validation run")
    assert lines[2].endswith("step 3, loss 2.5000 bits/dim, no validation run")


def test_train_ncsn_init_from_fine_tunes_a_prior_of_the_same_front_end(tmp_path, capsys):
    import torch

    from audiosep.priors.base import Domain, load_checkpoint, load_prior
    from audiosep.spectral.frontend import get_frontend
    from audiosep.train import _initial_prior

    root = _training_data(tmp_path / "data")
    base, tuned, bad = tmp_path / "base.pt", tmp_path / "tuned.pt", tmp_path / "bad.pt"

    def train(preset, out, *extra):
        return _run("train", "ncsn", "--data", root, "--source", "src0", "--preset", preset, "--batch-size", "2",
                    "--steps", "2", "-o", out, *extra)

    assert train("audiosourcesep", base, "--nf", "4") == 0
    start = _initial_prior(base, Domain.mel(get_frontend("audiosourcesep")), "ncsn")
    assert start.training and all(torch.equal(a, b) for a, b in
                                   zip(start.state_dict().values(), load_prior(base).state_dict().values()))
    assert train("audiosourcesep", tuned, "--init-from", base) == 0
    assert load_prior(tuned).get_config() == load_prior(base).get_config() and load_checkpoint(tuned)["step"] == 2
    capsys.readouterr()
    for preset, extra, message in (("default", [], "is expected"), ("audiosourcesep", ["--nf", "8"], "--init-from")):
        assert train(preset, bad, "--init-from", base, *extra) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and not bad.exists()
