"""The output policy of every writer, and the reliability audit's cases (no traceback, no
silent overwrite, no partial output, no silent wrong answer), on tiny generated data.

Each refused case exits 2 with one line on stderr (1 for a collection whose every item failed)
and leaves the working folder as it was."""
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiosep import cli
from audiosep.errors import UserError

SR = 16000
PRETRAINED = Path(__file__).parents[1] / "audiosep" / "pretrained"


def _snapshot(folder: Path) -> dict:
    """Every file's content digest, every folder's name."""
    return {p: hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "folder" for p in folder.rglob("*")}


def _refused(argv, capsys, folder, needle, code=2):
    """`audiosep argv` exits `code` (1: a collection whose every item failed) with a last line
    holding `needle`, and nothing under `folder` changed."""
    before = _snapshot(folder)
    exit_code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()[-1 if code == 2 else 0]
    assert exit_code == code, (argv, err)
    assert needle in err and "Traceback" not in err, (argv, err)
    assert _snapshot(folder) == before, argv


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A working folder with a stems dataset `ds/{train,valid,test}/{t0,001}/` (two tones), an NMF
    model trained on it and a text file; the tests run in it."""
    t = np.arange(2 * SR) / SR
    for split in ("train", "valid", "test"):
        for k, name in enumerate(("t0", "001")):  # a track named like a number stays a name
            track = tmp_path / "ds" / split / name
            track.mkdir(parents=True)
            stems = {s: (0.1 * np.sin(2 * np.pi * f * (1 + 0.1 * k) * t)).astype(np.float32)
                     for s, f in (("piano", 220), ("violin", 1760))}
            for s, wav in stems.items():
                sf.write(track / f"{s}.wav", wav, SR, subtype="FLOAT")
            sf.write(track / "mix.wav", sum(stems.values()), SR, subtype="FLOAT")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "nmf", "--data", "ds", "-o", "nmf.pt", "--atoms", "4", "--iters", "3"]) == 0
    (tmp_path / "notes.csv").write_text("my,data\n1,2\n")
    return tmp_path


def test_separate_never_writes_into_an_input_s_own_folder_or_over_a_file_that_is_not_audio(world, capsys):
    for name in ("test", "train"):  # its own split, another one
        _refused(["separate", "ds/test", "-o", "ds", "-n", name, "--model", "nmf.pt"], capsys, world,
                 "into a dataset track's folder", code=1)
    (world / "sep/nmf/mix").mkdir(parents=True)
    shutil.copy(world / "ds/test/t0/mix.wav", world / "mix.wav")
    (world / "sep/nmf/mix/piano.wav").write_text("not audio")
    _refused(["separate", "mix.wav", "-o", "sep", "--model", "nmf.pt"], capsys, world, "is not an audio file")
    (world / "sep/nmf/mix/piano.wav").unlink()
    (world / "sep/nmf/mix/piano.wav").mkdir()  # a folder in the way: refused before the work
    _refused(["separate", "mix.wav", "-o", "sep", "--model", "nmf.pt"], capsys, world, "is a folder")


def test_oracle_checks_everything_before_its_first_estimate(world, capsys):
    _refused(["oracle", "ds", "--method", "mix", "-o", "ds/test/out"], capsys, world, "inside the dataset split")
    _refused(["oracle", "ds", "--method", "mix", "-o", "ds/train"], capsys, world, "a dataset track's folder")
    _refused(["oracle", "ds", "--method", "mix", "-o", "or", "--win", "1e-9"], capsys, world, "shorter than one sample")
    _refused(["oracle", "ds", "--method", "mix", "-o", "or.csv"], capsys, world, "-o is a folder")
    good = (world / "ds/test/001/violin.wav").read_bytes()
    (world / "ds/test/001/violin.wav").write_bytes(b"RIFF junk")  # the second track's stem: found first
    _refused(["oracle", "ds", "--method", "mix", "-o", "or"], capsys, world, "not a readable audio file")
    wav, _ = sf.read(world / "ds/test/t0/violin.wav", dtype="float32")
    (world / "ds/test/001/violin.wav").write_bytes(good)
    sf.write(world / "ds/test/001/violin.wav", np.where(np.arange(wav.size) == 5, np.nan, wav), SR, subtype="FLOAT")
    _refused(["oracle", "ds", "--method", "irm1", "-o", "or"], capsys, world, "contains NaN or infinite samples")


def test_a_nan_in_training_stems_is_named_not_taken_for_silence(world, capsys):
    wav, _ = sf.read(world / "ds/train/t0/violin.wav", dtype="float32")
    for track in ("t0", "001"):
        sf.write(world / f"ds/train/{track}/violin.wav", np.full_like(wav, np.nan), SR, subtype="FLOAT")
    _refused(["train", "masknet", "--data", "ds", "-o", "m.pt", "--steps", "1", "--hidden", "4", "--layers", "1",
              "--batch-size", "1"], capsys, world, "contains NaN or infinite samples")


def test_a_training_that_fails_before_its_first_step_leaves_no_log(world, capsys):
    _refused(["train", "ncsn", "--data", "ds", "--source", "piano", "-o", "p.pt", "--steps", "1", "--nf", "8",
              "--batch-size", "100000"], capsys, world, "fewer than batch_size")


def test_reports_never_replace_a_user_file_and_check_all_their_files_first(world, capsys):
    assert cli.main(["separate", "ds/test", "-o", "sep", "--model", "nmf.pt"]) == 0
    _refused(["evaluate", "ds/test", "sep/nmf", "-o", "notes.csv"], capsys, world, "is not an evaluation table")
    (world / "ev").mkdir()
    shutil.copy(world / "notes.csv", world / "ev/summary.csv")
    _refused(["evaluate", "ds/test", "sep/nmf", "-o", "ev"], capsys, world, "is not an evaluation summary")
    (world / "ev/summary.csv").unlink()
    (world / "ev/json").mkdir()
    (world / "ev/json/t0.json").write_text('{"mine": 1}')
    _refused(["evaluate", "ds/test", "sep/nmf", "-o", "ev"], capsys, world, "is not a museval track report")
    shutil.rmtree(world / "ev/json")
    (world / "ev/run.json").mkdir()
    _refused(["evaluate", "ds/test", "sep/nmf", "-o", "ev"], capsys, world, "is a folder")
    assert cli.main(["evaluate", "ds/test", "sep/nmf", "-o", "ev2"]) == 0
    assert cli.main(["evaluate", "ds/test", "sep/nmf", "-o", "ev2"]) == 0  # its own reports: replaced
    _refused(["report", "ev2", "-o", "ev2/report.html", "--seconds", "0.01"], capsys, world, "too short")


def test_the_listening_report_reads_tracks_as_names_and_plays_every_audio_format(world, capsys):
    assert cli.main(["separate", "ds/test", "-o", "sep", "--model", "nmf.pt", "--format", "flac"]) == 0
    assert cli.main(["evaluate", "ds/test", "sep/nmf", "-o", "ev"]) == 0
    assert cli.main(["report", "ev", "-o", "page.html", "--seconds", "1"]) == 0
    page = (world / "page.html").read_text()
    assert "<h2>001</h2>" in page and page.count("<audio") == 10  # 2 tracks × (mixture, 2 references, 2 estimates)
    lines = (world / "ev/report.csv").read_text().splitlines()
    (world / "ev/report.csv").write_text("\n".join(lines[:1] + [",,SDR,1.0,,"] + lines[1:]) + "\n")
    _refused(["report", "ev", "-o", "page2.html"], capsys, world, "a row without a track")
    run = json.loads((world / "ev/run.json").read_text())
    (world / "ev/report.csv").write_text("\n".join(lines) + "\n")
    (world / "ev/run.json").write_text(json.dumps({**run, "references": "../missing"}, indent=2))
    assert cli.main(["report", "ev", "-o", "page2.html", "--seconds", "1"]) == 0  # the scores, and a word why
    assert "references folder it names" in capsys.readouterr().err and "<audio" in (world / "page2.html").read_text()


def test_the_listening_report_pictures_a_clip_shorter_than_one_frame(world, capsys):
    for track in ("t0", "001"):
        for name in ("piano", "violin", "mix"):
            path = world / "ds/test" / track / f"{name}.wav"
            sf.write(path, sf.read(path, dtype="float32")[0][:3], SR, subtype="FLOAT")
    assert cli.main(["oracle", "ds", "--method", "irm1", "-o", "or"]) == 0
    assert cli.main(["report", "or", "-o", "page.html"]) == 0
    assert (world / "page.html").read_text().count("<audio") == 10


def test_mel_checks_its_three_files_before_writing_one(world, capsys):
    (world / "out").mkdir()
    (world / "out/m.json").write_text('{"my": "settings"}')
    _refused(["mel", "ds/test/t0/mix.wav", "-o", "out/m.npy", "--no-png"], capsys, world, "is not a mel settings file")
    (world / "out/m.json").unlink()
    (world / "out/m.png").write_bytes(b"GIF89a")
    _refused(["mel", "ds/test/t0/mix.wav", "-o", "out/m.npy"], capsys, world, "is not a PNG picture")
    (world / "out/m.png").unlink()
    (world / "out/m.json").mkdir()
    _refused(["mel", "ds/test/t0/mix.wav", "-o", "out/m.npy"], capsys, world, "is a folder")
    (world / "out/m.json").rmdir()
    assert cli.main(["mel", "ds/test/t0/mix.wav", "-o", "out/m.npy"]) == 0
    assert cli.main(["mel", "ds/test/t0/mix.wav", "-o", "out/m.npy"]) == 0  # its own files: replaced


def test_invert_checks_the_settings_and_the_phase_source_before_the_slow_work(world, capsys):
    assert cli.main(["mel", "ds/test/t0/mix.wav", "-o", "m.npy", "--no-png"]) == 0
    settings = json.loads((world / "m.json").read_text())
    for samples in (-100, 0, 10**13):
        (world / "m.json").write_text(json.dumps({**settings, "samples": samples}, indent=2))
        _refused(["invert", "m.npy", "-o", "back.wav"], capsys, world, "does not match the 63 frames")
    (world / "m.json").write_text(json.dumps(settings, indent=2))
    sf.write(world / "tiny.wav", np.zeros(800, np.float32), SR)
    _refused(["invert", "m.npy", "-o", "back.wav", "--method", "phase", "--mix", "tiny.wav"], capsys, world,
             "gives 2 frames, the mel spectrogram has 63")
    _refused(["invert", "m.npy", "-o", "back.wav", "--method", "phase"], capsys, world, "needs --mix")
    shutil.copy(world / "ds/test/t0/mix.wav", world / "phase.wav")
    _refused(["invert", "m.npy", "-o", "phase.wav", "--method", "phase", "--mix", "phase.wav"], capsys, world,
             "is also an input of this command")


def test_invert_and_plot_name_what_is_wrong_with_their_input(world, capsys):
    assert cli.main(["mel", "ds/test/t0/mix.wav", "-o", "m.npy", "--no-png"]) == 0
    (world / "m").mkdir()
    _refused(["invert", "m", "-o", "back.wav"], capsys, world, "is a folder, expected a mel file")
    (world / "m.npy").write_bytes(b"not numpy at all")
    _refused(["invert", "m.npy", "-o", "back.wav"], capsys, world, "(not a NumPy .npy file)")
    np.save(world / "m.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    _refused(["invert", "m.npy", "-o", "back.wav"], capsys, world, "(it holds Python objects, not numbers)")
    (world / "empty.log.csv").write_text("step,loss,valid_loss,lr,samples_per_s,wall_s\n")
    _refused(["plot", "empty.log.csv", "-o", "c.png"], capsys, world, "no row yet")


def test_export_and_train_nmf_replace_a_model_only_with_overwrite(world, capsys):
    from audiosep.priors.base import Domain, save_checkpoint
    from audiosep.priors.masknet import MaskNet

    save_checkpoint(world / "net.pt", MaskNet(hidden=4, layers=1), Domain.waveform(SR))
    _refused(["export", "net.pt", "-o", "nmf.pt"], capsys, world, "pass --overwrite")
    assert cli.main(["export", "net.pt", "-o", "nmf.pt", "--overwrite"]) == 0
    _refused(["train", "nmf", "--data", "ds", "-o", "n2.pt", "--atoms", "600", "--n-fft", "1024"], capsys, world,
             "need at least as many frequency bins")
    _refused(["train", "nmf", "--data", "ds", "-o", "n2.pt", "--n-fft", "256", "--hop", "512"], capsys, world,
             "the hop (512) must not exceed n_fft (256)")


def test_a_training_never_replaces_a_file_at_its_log_s_path(world, capsys):
    shutil.copy(world / "notes.csv", world / "p.log.csv")
    _refused(["train", "ncsn", "--data", "ds", "--source", "piano", "-o", "p.pt", "--steps", "1", "--nf", "8",
              "--batch-size", "2"], capsys, world, "is not a training log")


def test_a_diverged_update_is_refused_and_the_checkpoint_kept(world, capsys):
    base = ["train", "ncsn", "--data", "ds", "--source", "piano", "-o", "p.pt", "--nf", "8", "--batch-size", "2"]
    assert cli.main([*base, "--steps", "2"]) == 0
    # an update that diverges at a checkpoint, or a loss that is nan after one: the step-2 checkpoint stays
    _refused([*base, "--steps", "3", "--lr", "1e30"], capsys, world, "training diverged at step 3")
    _refused([*base, "--steps", "6", "--lr", "1e30"], capsys, world, "lower --lr")
    assert cli.main([*base, "--steps", "4"]) == 0  # the kept checkpoint resumes at a sane lr


def test_synth_with_overwrite_keeps_the_old_dataset_when_nothing_new_is_made(world, capsys, monkeypatch):
    from audiosep.data import synth

    monkeypatch.setattr(synth, "require_fluidsynth", lambda: None)
    monkeypatch.setattr(synth, "check_soundfont_voices", lambda *args: None)
    monkeypatch.setattr(synth, "_make_piece", lambda *args, **kwargs: [])  # no excerpt has every source
    _refused(["synth", "piano_violin", "-o", "ds", "--overwrite", "--test", "1", "--duration", "1",
              "--composers", "bach"], capsys, world, "no track could be made")


def test_an_allocation_the_sizes_cannot_get_is_one_line(world, capsys, monkeypatch):
    def huge(args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "_cmd_models", huge)
    _refused(["models"], capsys, world, "out of memory")
    monkeypatch.setattr(cli, "_cmd_models", broken)
    with pytest.raises(RuntimeError, match="a bug"):  # a bug is not dressed up as a memory error
        cli.main(["models"])


def test_config_values_the_loop_or_the_model_would_fail_on_are_refused():
    from audiosep.training.masknet import MaskNetRun

    with pytest.raises(UserError, match="sample_rate must be 1000 to 384000 Hz"):
        MaskNetRun(sample_rate=0)
    with pytest.raises(UserError, match=r"crop_seconds must be in \(0, 600\]"):
        MaskNetRun(crop_seconds=1e9)


def test_synth_refuses_tracks_beside_split_counts(world, capsys):
    _refused(["synth", "piano_violin", "-o", "syn", "--tracks", "3", "--train", "1"], capsys, world, "not both")


def test_a_failed_synth_leaves_no_folder_it_made_and_says_why(world, capsys, monkeypatch):
    from audiosep.data import synth

    monkeypatch.setattr(synth, "require_fluidsynth", lambda: None)
    monkeypatch.setattr(synth, "check_soundfont_voices", lambda *args: None)
    monkeypatch.setattr(synth, "_make_piece", lambda *args, **kwargs: [])
    _refused(["synth", "piano_violin", "-o", "new/ds", "--test", "1", "--duration", "1", "--composers", "bach"],
             capsys, world, "no excerpt with every source active")
    assert not (world / "new").exists()


def test_a_mel_file_s_bad_front_end_settings_name_the_settings_file(world, capsys):
    assert cli.main(["mel", "ds/test/t0/mix.wav", "-o", "m.npy", "--no-png"]) == 0
    settings = json.loads((world / "m.json").read_text())
    del settings["frontend"]["n_fft"]
    (world / "m.json").write_text(json.dumps(settings, indent=2))
    _refused(["invert", "m.npy", "-o", "back.wav"], capsys, world, "m.json: ")


def test_finetune_steps_are_refused_for_a_flow_that_is_not_a_bundle(world, capsys):
    _refused(["train", "glow", "--data", "ds", "--source", "piano", "-o", "g.pt", "--steps", "1",
              "--finetune-steps", "2"], capsys, world, "--finetune-steps")


def test_a_dataset_replaced_by_synth_comes_back_whole_when_the_swap_fails(tmp_path, monkeypatch):
    from audiosep.data import synth

    final, staging = tmp_path / "ds", tmp_path / "ds" / ".synth.new"
    for folder, text in ((final, "old"), (staging, "new")):
        for split in ("train", "test"):
            (folder / split).mkdir(parents=True)
            (folder / split / "t.txt").write_text(text)
        (folder / "index.json").write_text(text)
    real, calls = synth.os.replace, []

    def failing(src, dst):  # 3 old entries set aside, 1 new one moved in, then the 2nd new one fails
        calls.append(src)
        if len(calls) == 5:
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(synth.os, "replace", failing)
    with pytest.raises(KeyboardInterrupt):
        synth._swap_in(staging, final)
    monkeypatch.setattr(synth.os, "replace", real)
    assert (final / "index.json").read_text() == "old" and (final / "train/t.txt").read_text() == "old"
    assert (final / "test/t.txt").read_text() == "old" and not list(final.glob(".synth-old.*"))
    synth._swap_in(staging, final)
    assert (final / "index.json").read_text() == "new" and (final / "test/t.txt").read_text() == "new"
