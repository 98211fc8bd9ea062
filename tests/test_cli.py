"""End-to-end checks of the `audiosep` command on tiny generated data."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from audiosep.cli import main

SR = 16000
BUNDLED_PRIOR = str(Path(__file__).parents[1] / "audiosep" / "pretrained" / "ncsn_piano_violin" / "piano.pt")


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
    at_8k = tmp_path / "mix8k.wav"
    sf.write(at_8k, sf.read(mix)[0][::2], 8000)
    assert _run("mel", at_8k, "-o", tmp_path / "m8.npy", "--no-png") == 0
    assert json.loads((tmp_path / "m8.json").read_text())["source_sample_rate"] == 8000  # the file's, not the front end's
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
        (["separate", "{mix}", "-o", "{file}", "--method", "nmf"], "is a file"),
        (["separate", "{mix}", "-o", "{file}/sep", "--method", "nmf"], "is under the file"),
        (["separate", "{mix}", "--threads", "-1", "--method", "nmf"], "--threads: invalid integer in [1, "),
        (["separate", "{mix}", "--steps", "0"], "--steps: invalid integer >= 1"),
        (["separate", "{mix}", "--bits", "32f", "--format", "flac", "--method", "nmf"], "not possible in flac"),
        (["separate", "{mix}", "--shard", "2/2", "--method", "nmf"], "--shard 2/2"),
        (["separate", "{tmp}/nowhere", "--method", "nmf"], "no such file or folder"),
        (["separate", "{mix}", "--model", "{tmp}"], "is a folder, expected a checkpoint file"),
        (["evaluate", "{data}/test", "{data}/test", "-o", "{file}"], "is a file"),
        (["evaluate", "{data}/test", "{data}/test", "-o", "{file}/report"], "is under the file"),
        (["evaluate", "{data}/test", "{data}/test", "-o", "{tmp}"], "is a folder, expected a file name"),
        (["oracle", "--method", "irm2", "{data}", "-o", "{file}/o"], "is under the file"),
        (["train", "ncsn", "--data", "{data}", "--source", "src0", "-o", "{tmp}/p.pt", "--threads", "-1"],
         "--threads: invalid integer in [1, "),
        (["train", "ncsn", "--data", "{data}", "--source", "src0", "-o", "{file}/p.pt"], "cannot be written (is a file)"),
        (["train", "nmf", "--data", "{data}", "--split", "test", "-o", "{tmp}/n.pt", "--atoms", "0"],
         "--atoms: invalid integer >= 1"),
        (["train", "nmf", "--data", "{data}", "--split", "test", "-o", "{tmp}/n.pt", "--iters", "0"],
         "--iters: invalid integer >= 1"),
        (["train", "nmf", "--data", "{data}", "--split", "test", "-o", "{tmp}"], "is a folder"),
        (["mel", "{mix}", "-o", "{file}/m.npy"], "cannot be written (is a file)"),
        (["synth", "piano_violin", "-o", "{file}/d"], "is under the file"),
        (["export", "{tmp}/missing.pt", "-o", "{tmp}/x.pt"], "checkpoint not found"),
        (["separate", "{mix}", "--segment", "nan"], "--segment: invalid finite number > 0 value: 'nan'"),
        (["separate", "{mix}", "--segment", "inf"], "--segment: invalid finite number > 0 value: 'inf'"),
        (["separate", "{mix}", "--overlap", "nan"], "--overlap: invalid finite number >= 0 value: 'nan'"),
        (["evaluate", "{data}/test", "{data}/test", "--win", "nan"], "--win: invalid finite number > 0"),
        (["oracle", "--method", "irm2", "{data}", "-o", "{tmp}/o", "--win", "inf"], "--win: invalid finite number > 0"),
        (["train", "ncsn", "--data", "{data}", "--source", "src0", "-o", "{tmp}/p.pt", "--lr", "nan"],
         "--lr: invalid finite number > 0"),
        (["report", "{tmp}", "--seconds", "inf"], "--seconds: invalid finite number > 0"),
        (["synth", "piano_violin", "-o", "{tmp}/d", "--tempo", "nan"], "--tempo: invalid finite number"),
        (["separate", "{mix}", "--threads", "100000", "--method", "nmf"], "--threads: invalid integer in [1, "),
        (["separate", "{mix}", "--jobs", "100000", "--method", "nmf"], "--jobs: invalid integer in [1, "),
        (["synth", "piano_violin", "-o", "{tmp}/d", "--seed", "-1"], "--seed: invalid integer in [0, 2**32 - 1]"),
        (["separate", "{mix}", "--seed", "1" + "0" * 30], "--seed: invalid integer in [0, 2**32 - 1]"),
        (["synth", "piano_violin", "-o", "{tmp}/d", "--gain-db", "1e12"], "gain range must lie in [0, 40] dB"),
        (["separate", "{mix}", "-o", "{tmp}/sep", "-n", "../x", "--method", "nmf"], "not a path"),
        (["separate", "{mix}", "-o", "{tmp}/sep", "-n", "{tmp}/abs", "--method", "nmf"], "not a path"),
        (["train", "nmf", "--data", "{data}", "--split", "test", "-o", "{tmp}/n.pt", "--sources", "src0"],
         "NMF separates a mixture into two or more sources; got src0"),
        (["oracle", "--method", "irm2", "{data}", "-o", "{tmp}/o", "--preset", "nope"], "unknown front end 'nope'"),
        (["separate", "{data}/test/track0", "-o", "{data}/test/track0", "--method", "nmf"],
         "is the output folder (-o) or inside it"),
        (["separate", "{mix}", "-o", "{tmp}/sep", "--method", "nmf", "--model", BUNDLED_PRIOR],
         "is a prior checkpoint (basis); nmf takes one NMF model"),
    ],
    ids=["missing", "directory", "bad-preset", "missing-npy", "missing-estimates", "missing-data",
         "bad-device-basis", "bad-device-nmf", "separate-out-is-file", "separate-out-under-file",
         "separate-threads", "separate-steps-0", "flac-float", "bad-shard", "missing-input", "model-is-folder",
         "evaluate-out-is-file", "evaluate-out-under-file", "evaluate-csv-is-folder", "oracle-out-under-file",
         "train-threads", "train-out-under-file", "nmf-atoms-0", "nmf-iters-0", "nmf-out-is-folder",
         "mel-out-under-file", "synth-out-under-file", "export-missing", "segment-nan", "segment-inf", "overlap-nan",
         "evaluate-win-nan", "oracle-win-inf", "train-lr-nan", "report-seconds-inf", "synth-tempo-nan",
         "threads-100000", "jobs-100000", "seed-negative", "seed-huge", "gain-db-huge", "name-up", "name-absolute", "nmf-one-source",
         "oracle-bad-preset", "separate-into-input", "nmf-given-a-prior"],
)
def test_user_errors_are_one_line_and_exit_2(dataset, tmp_path, capsys, argv, message, monkeypatch):
    """The table of bad inputs: one line on stderr, exit status 2, nothing written. Add a row for
    every new bad input found."""
    monkeypatch.chdir(tmp_path)
    mix = dataset / "test" / "track0" / "mix.wav"
    afile = tmp_path / "afile"
    afile.write_text("a regular file in the way")
    if "{tmp}" == argv[-1] and argv[0] == "evaluate":
        argv = argv[:-1] + ["{tmp}/report.csv"]
        (tmp_path / "report.csv").mkdir()
    argv = [a.format(tmp=tmp_path, mix=mix, data=dataset, file=afile) for a in argv]
    before = sorted(tmp_path.rglob("*"))
    assert _run(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_a_closed_pipe_is_not_an_error():
    out = subprocess.run(f"{sys.executable} -m audiosep synth piano_violin --list | head -1", shell=True,
                         capture_output=True, text=True)
    assert out.stdout.count("\n") == 1 and "Traceback" not in out.stderr and "Error" not in out.stderr


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_output_folder_is_refused_before_any_work(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    example = Path(__file__).parents[1] / "examples" / "piano_violin.wav"
    assert _run("separate", example, "-o", locked / "sep", "--method", "nmf") == 2
    assert "permission denied" in capsys.readouterr().err


def test_separate_bundled_example(tmp_path):
    # no --model: the bundled mask network; --method basis: BASIS over the bundled NCSN priors,
    # started from the mask network's stems (a short schedule here: the defaults take ~20 s of
    # CPU on this 10 s example); outputs go to OUT/<model set>/<track>/, so no run overwrites another
    example = Path(__file__).parents[1] / "examples" / "piano_violin.wav"
    assert _run("separate", example, "-o", tmp_path / "sep") == 0
    assert _run("separate", example, "-o", tmp_path / "sep", "--method", "basis", "--steps", 1, "--levels", 2) == 0
    assert _run("separate", example, "-o", tmp_path / "sep", "--method", "nmf") == 0
    assert sorted(p.name for p in (tmp_path / "sep").iterdir()) == ["piano_violin", "piano_violin_basis",
                                                                    "piano_violin_nmf"]
    masknet = sf.read(tmp_path / "sep" / "piano_violin" / "piano_violin" / "piano.wav")[0]
    violin = sf.read(tmp_path / "sep" / "piano_violin" / "piano_violin" / "violin.wav")[0]
    np.testing.assert_allclose(masknet + violin, sf.read(example)[0], atol=1e-4)
    stems = sorted(p.name for p in (tmp_path / "sep" / "piano_violin_basis" / "piano_violin").iterdir())
    assert stems == ["piano.wav", "violin.wav"]
    mix, sr = sf.read(example)
    piano, sr_out = sf.read(tmp_path / "sep" / "piano_violin_basis" / "piano_violin" / "piano.wav")
    assert sr_out == sr and piano.shape == mix.shape


@pytest.mark.slow
def test_separate_a_collection_skips_bad_files_and_says_so(tmp_path, capsys):
    example = Path(__file__).parents[1] / "examples" / "piano_violin.wav"
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.wav").write_bytes(example.read_bytes())
    (folder / "b.wav").write_bytes(b"RIFF junk")
    sf.write(folder / "short.wav", np.zeros(100, np.float32), SR)
    assert _run("separate", folder, "-o", tmp_path / "out", "--format", "flac", "--method", "basis") == 1
    out, err = capsys.readouterr()
    assert sorted(p.name for p in (tmp_path / "out/piano_violin_basis").iterdir()) == ["a"]
    assert sorted(p.name for p in (tmp_path / "out/piano_violin_basis/a").iterdir()) == ["piano.flac", "violin.flac"]
    assert "1 track(s) written" in out and "2 failed" in out
    skipped = [line for line in err.splitlines() if "skipped" in line]
    assert len(skipped) == 2 and any("b.wav" in line for line in skipped)
    assert any("short.wav" in line and "too short" in line for line in skipped)
    assert _run("separate", folder, "-o", tmp_path / "out2", "--strict", "--method", "nmf") == 2
    assert not (tmp_path / "out2").exists()
    capsys.readouterr()
    assert _run("separate", folder / "b.wav", "-o", tmp_path / "out3", "--method", "nmf") == 2  # one file alone
    assert "b.wav" in capsys.readouterr().err and not list((tmp_path / "out3").rglob("*.wav"))


@pytest.mark.slow
def test_separate_jobs_equal_one_process(tmp_path, capfd):
    example = Path(__file__).parents[1] / "examples" / "piano_violin.wav"
    for i in range(3):
        sf.write(tmp_path / f"m{i}.wav", sf.read(example)[0][i * 16000:(i + 2) * 16000], SR)
    inputs = [tmp_path / f"m{i}.wav" for i in range(3)]
    assert _run("separate", *inputs, "-o", tmp_path / "one", "--method", "nmf", "--threads", 1) == 0
    capfd.readouterr()
    assert _run("separate", *inputs, "-o", tmp_path / "two", "--method", "nmf", "--threads", 1, "--jobs", 2) == 0
    totals = [line for line in capfd.readouterr().out.splitlines() if "track(s) written" in line]
    assert totals == [f"3 track(s) written to {tmp_path / 'two' / 'piano_violin_nmf'}"]  # one total, not one per worker
    assert _run("separate", *inputs, "-o", tmp_path / "bad", "--model", tmp_path / "m0.wav", "--jobs", 2) == 2
    assert capfd.readouterr().err.count("error:") == 1  # checked once, before the workers start
    one = sorted((tmp_path / "one").rglob("*.wav"))
    assert len(one) == 6
    for path in one:
        twin = tmp_path / "two" / path.relative_to(tmp_path / "one")
        np.testing.assert_array_equal(sf.read(path)[0], sf.read(twin)[0])  # (float WAV headers hold a time stamp)


def test_separate_under_torchrun_takes_its_rank_s_share(tmp_path, monkeypatch):
    example = Path(__file__).parents[1] / "examples" / "piano_violin.wav"
    for i in range(3):
        sf.write(tmp_path / f"m{i}.wav", sf.read(example)[0][: SR], SR)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert _run("separate", *[tmp_path / f"m{i}.wav" for i in range(3)], "-o", tmp_path / "out",
                "--method", "nmf") == 0
    assert sorted(p.name for p in (tmp_path / "out/piano_violin_nmf").iterdir()) == ["m1"]


def test_separate_bad_model_writes_nothing(tmp_path, capsys):
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
    import audiosep.training.flow
    import audiosep.training.ncsn

    nan = float("nan")
    monkeypatch.setattr(audiosep.training.ncsn, "train_ncsn", lambda *a, **k: {"step": 2, "loss": 0.5, "valid_loss": nan})
    monkeypatch.setattr(audiosep.training.flow, "train_flow", lambda *a, **k: {
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
    from audiosep.training.loop import initial_prior

    root = _training_data(tmp_path / "data")
    base, tuned, bad = tmp_path / "base.pt", tmp_path / "tuned.pt", tmp_path / "bad.pt"

    def train(preset, out, *extra):
        return _run("train", "ncsn", "--data", root, "--source", "src0", "--preset", preset, "--batch-size", "2",
                    "--steps", "2", "-o", out, *extra)

    assert train("audiosourcesep", base, "--nf", "4") == 0
    start = initial_prior(base, Domain.mel(get_frontend("audiosourcesep")), "ncsn")
    assert start.training and all(torch.equal(a, b) for a, b in
                                   zip(start.state_dict().values(), load_prior(base).state_dict().values()))
    assert train("audiosourcesep", tuned, "--init-from", base) == 0
    assert load_prior(tuned).get_config() == load_prior(base).get_config() and load_checkpoint(tuned)["step"] == 2
    capsys.readouterr()
    for preset, extra, message in (("default", [], "is expected"), ("audiosourcesep", ["--nf", "8"], "--init-from")):
        assert train(preset, bad, "--init-from", base, *extra) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and not bad.exists()


@pytest.mark.slow
@pytest.mark.parametrize("delay", [None, 0.0, 0.4, 1.0, 2.0])
def test_sigterm_at_any_point_leaves_no_temporary_file_and_no_partial_track(tmp_path, delay):
    """SIGTERM at start-up (None) or `delay` s after the first progress bar (loading done;
    separating, writing, between files): exit 143 (0 if it finished first; −15 if it came
    before or after audiosep's `main`, at interpreter start-up or shutdown), no hidden
    temporary file, no empty folder, and every track folder complete or absent."""
    import signal
    import time

    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        sf.write(tmp_path / f"{name}.wav", (0.1 * rng.standard_normal((20 * 44100, 2))).astype(np.float32), 44100)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "audiosep", "separate", tmp_path / "a.wav", tmp_path / "b.wav",
                             "-o", out, "--method", "nmf", "--threads", "1", "--bits", "16"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = b""
    if delay is not None:
        while b"files" not in err and proc.poll() is None:  # the first progress bar: models loaded
            err += os.read(proc.stderr.fileno(), 256)
        time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    err += proc.communicate(timeout=120)[1]
    assert proc.returncode in (0, 143, -signal.SIGTERM)
    assert b"Traceback" not in err
    left = list(out.rglob("*")) if out.exists() else []
    assert not [p for p in left if p.name.startswith(".")]
    assert not [p for p in left if p.is_dir() and not any(p.iterdir())]
    for track in (out / "piano_violin_nmf").glob("*") if out.exists() else []:
        assert sorted(p.name for p in track.iterdir()) == ["piano.wav", "violin.wav"]


def test_listening_report_embeds_players_pictures_and_scores(dataset, tmp_path):
    """`audiosep report`: a self-contained page (no file or network reference) that headless
    Chromium renders with every player decoded and every picture drawn."""
    import re
    import shutil

    run = tmp_path / "run"
    assert _run("oracle", "--method", "irm2", dataset, "-o", run / "irm2") == 0
    assert _run("oracle", "--method", "mix", dataset, "-o", run / "mix") == 0
    page = tmp_path / "report.html"
    assert _run("report", run, "-o", page, "--max-tracks", 1, "--seconds", 1) == 0
    text = page.read_text()
    assert text.count("<audio") == 1 + 2 + 2 * 2  # mixture, 2 references, 2 methods × 2 estimates
    assert text.count("<img") == 7 + 1 + 1  # a picture under each player, the SDR chart, SDR over time
    assert "track0" in text and "track1" not in text.split("Summary")[1].split("</section>")[1]
    assert not re.search(r"(src|href)=['\"](?!data:)", text)  # everything embedded
    for method in ("irm2", "mix"):
        assert f">{method}<" in text
    methods = text.split("<h2>Methods</h2>")[1].split("</section>")[0]
    assert "<b>irm2</b>: oracle: ideal ratio mask on powers" in methods and "<b>mix</b>: baseline" in methods
    summary = re.split(r"<h2>Summary \(\d+ tracks; players for the first 1\)</h2>", text)[1].split("</section>")[0]
    header = re.search(r"<thead>(.*?)</thead>", summary, re.S).group(1)
    assert re.findall(r"<th>(\w+)</th>", header) == ["method", "source", "SDR", "SIR", "ISR", "SAR"]
    assert header.count("<tr") == 1  # one header row: no MultiIndex
    for name in ("irm2", "mix"):  # the run records its inputs relative to itself
        recorded = json.loads((run / name / "run.json").read_text())
        assert not Path(recorded["references"]).is_absolute() and (run / name / recorded["estimates"]).is_dir()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (scripts/setup_system.sh installs it as root)")
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-audio-ok="7/7"' in body and 'data-images-ok="9/9"' in body, body


def test_a_benchmark_given_a_checkpoint_of_other_images_says_so_in_one_line(tmp_path):
    """Benchmarks run `main` through `run_reporting_user_errors`: one line, status 2, before any work."""
    from audiosep.priors.base import Domain, save_checkpoint
    from audiosep.priors.vae import VAE

    path = save_checkpoint(tmp_path / "vae.pt", VAE((1, 28, 28), latent_dim=2, hidden=(8,)), Domain.image((1, 28, 28)))
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "denoising.py"), "--images", "digits",
                           "--vae", f"x={path}"], capture_output=True, text=True, cwd=root, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"denoising.py: error: {path}: prior trained on images 1×28×28 with values in [0, 1], "
        "but images 1×8×8 with values in [0, 1] is expected"]


def test_bad_mel_files_are_refused_in_one_line_before_any_work(tmp_path, capsys):
    example = Path(__file__).parents[1] / "examples" / "piano_violin.wav"
    assert _run("mel", example, "-o", tmp_path / "m.npy") == 0
    unit, settings = np.load(tmp_path / "m.npy"), json.loads((tmp_path / "m.json").read_text())
    cases = {"negative": (unit - 0.5, settings, "outside the [0, 1] scale"),
             "nan": (np.where(unit > 0.5, np.nan, unit), settings, "values are NaN or infinite"),
             "frames": (unit[:, :, :3], settings, "frames >= 4"),
             "settings": (unit, {}, "not the settings `audiosep mel` writes (KeyError")}
    capsys.readouterr()
    for name, (values, meta, message) in cases.items():
        np.save(tmp_path / f"{name}.npy", values.astype(np.float32))
        (tmp_path / f"{name}.json").write_text(json.dumps(meta))
        assert _run("invert", tmp_path / f"{name}.npy", "-o", tmp_path / f"{name}.wav") == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and not (tmp_path / f"{name}.wav").exists()
    assert _run("invert", tmp_path / "m.npy", "-o", tmp_path / "m.txt") == 2  # refused before Griffin-Lim
    assert "needs one of the suffixes .wav" in capsys.readouterr().err
    sf.write(tmp_path / "short.wav", np.zeros(800, np.float32), 16000)
    assert _run("mel", tmp_path / "short.wav", "-o", tmp_path / "s.npy") == 2
    assert "0.050 s is too short for the default front end" in capsys.readouterr().err
    assert not (tmp_path / "s.npy").exists()


def test_outputs_that_would_destroy_other_work_are_refused(dataset, tmp_path, capsys):
    from audiosep.priors.base import Domain, load_checkpoint, save_checkpoint
    from audiosep.priors.masknet import MaskNet

    run = tmp_path / "run.pt"  # a resumable training checkpoint: it has optimiser state
    model = MaskNet(hidden=4, layers=1)
    save_checkpoint(run, model, Domain.waveform(16000), optimizer_state={"state": {}, "param_groups": []}, step=7)
    before = run.read_bytes()
    assert _run("export", run, "-o", run.with_name("copy.pt")) == 0
    capsys.readouterr()
    assert _run("export", run.with_name("copy.pt"), "-o", run) == 2
    assert "resumable training checkpoint (step 7" in capsys.readouterr().err
    assert _run("train", "nmf", "--data", dataset, "--split", "test", "-o", run, "--atoms", 2, "--iters", 2) == 2
    assert run.read_bytes() == before and load_checkpoint(run)["optimizer"] is not None
    nmf = tmp_path / "nmf.pt"  # an NMF training does not resume: a model there is kept unless --overwrite
    assert _run("train", "nmf", "--data", dataset, "--split", "test", "-o", nmf, "--atoms", 2, "--iters", 2) == 0
    kept = nmf.read_bytes()
    capsys.readouterr()
    assert _run("train", "nmf", "--data", dataset, "--split", "test", "-o", nmf, "--atoms", 3, "--iters", 2) == 2
    assert "a model is there" in capsys.readouterr().err and nmf.read_bytes() == kept
    assert _run("train", "nmf", "--data", dataset, "--split", "test", "-o", nmf, "--atoms", 3, "--iters", 2,
                "--overwrite") == 0
    assert nmf.read_bytes() != kept
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "report.csv").write_text("kept")
    assert _run("report", tmp_path / "r", "-o", tmp_path / "r" / "report.csv") == 2
    assert "name it .html" in capsys.readouterr().err
    assert (tmp_path / "r" / "report.csv").read_text() == "kept"


def test_report_on_a_corrupt_run_folder_is_one_line(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert _run("oracle", "--method", "mix", dataset, "-o", run / "mix") == 0
    report_csv = next((run / "mix").rglob("report.csv"))
    report_csv.write_text("a,b\n1,2\n")  # a CSV, but not an evaluation's long table
    capsys.readouterr()
    assert _run("report", run, "-o", tmp_path / "r.html") == 2
    err = capsys.readouterr().err.strip()
    assert "not a report written by `audiosep evaluate` (no column track" in err and "\n" not in err
    header = "track,method,target,metric,score,time\n"
    for text, message in ((header + "t,m,s,SDR,high,0\n", "a score that is not a number"),
                          (header, "no finite score"), (header + "t,m,s,SDR,nan,0\n", "no finite score"),
                          ("\x00\x01\x02", "not a report written")):
        report_csv.write_text(text)
        assert _run("report", run, "-o", tmp_path / "r.html") == 2
        err = capsys.readouterr().err.strip()
        assert message in err and str(report_csv) in err and "\n" not in err, err
    next((run / "mix").rglob("run.json")).write_text("[1, 2]")  # JSON, but not a run description
    assert _run("report", run, "-o", tmp_path / "r.html") == 2
    assert "not a run description" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_oracle_refuses_a_track_without_a_stem_of_the_other_source(dataset, tmp_path, capsys):
    (dataset / "test" / "track1" / "src1.wav").unlink()
    assert _run("oracle", "--method", "irm2", dataset, "-o", tmp_path / "o") == 2
    err = capsys.readouterr().err.strip()
    assert "track 'track1' of split 'test' has no stem for 'src1'" in err and "\n" not in err
    (dataset / "test" / "track0" / "src1.wav").unlink()  # every track of one source: the mixture is the source
    assert _run("oracle", "--method", "irm2", dataset, "-o", tmp_path / "o") == 2
    assert "have one source (src0)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_evaluate_names_the_estimates_it_did_not_score(dataset, tmp_path, capsys):
    est = tmp_path / "est"
    assert _run("oracle", "--method", "irm2", dataset, "-o", est) == 0
    sf.write(est / "track0" / "drums.flac", _tones()["src0"], SR)
    (est / "track9").mkdir()
    sf.write(est / "track9" / "src0.wav", _tones()["src0"], SR)
    capsys.readouterr()
    assert _run("evaluate", dataset / "test", est, "-o", tmp_path / "report") == 0
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
    assert f"audiosep evaluate: warning: {est / 'track0'}: not scored (no reference stem in " \
           f"{dataset / 'test' / 'track0'}): drums.flac" in lines
    assert f"audiosep evaluate: warning: {est}: not scored (no reference track in {dataset / 'test'}): track9" in lines


def test_an_error_during_a_progress_bar_starts_on_its_own_line(dataset, tmp_path, capsys):
    est = tmp_path / "est"
    assert _run("oracle", "--method", "irm2", dataset, "-o", est) == 0
    (est / "track1" / "src1.wav").unlink()  # the second track fails, with the bar drawn
    capsys.readouterr()
    assert _run("evaluate", dataset / "test", est, "-o", tmp_path / "report") == 2
    err = capsys.readouterr().err
    assert "evaluate:" in err  # the bar was drawn
    assert "\naudiosep evaluate: error: " in err and "missing estimate for target 'src1'" in err.splitlines()[-1]
