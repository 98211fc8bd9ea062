"""Bad values for every option of every `audiosep` command, generated from the argparse tree.

Each option's bad values come from its type (a new option is covered the day it is added; a new
type or command without bad values here fails the test). A bad value must exit 2 with one
line on stderr naming the option or the path, no traceback, and nothing created or changed in
the working folder. Values a type accepts on purpose are listed in ACCEPTED with the reason.
"""
import argparse
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiosep import cli

HUGE_INT, HUGE_FLOAT = "1" + "0" * 15, "1e15"
# the bad values of each argument type (as the command line spells them)
BAD_VALUES = {
    cli._positive_int: ["0", "-1", "1.5", "nan", "", "x", HUGE_INT],
    cli._count: ["-1", "1.5", "inf", "", HUGE_INT],
    cli._thread_count: ["0", "-1", "", HUGE_INT],
    cli._seed: ["-1", "1.5", "nan", "", "1" + "0" * 30],
    cli._finite_float: ["nan", "inf", "-inf", "1e400", "", "x"],
    cli._positive_float: ["0", "-1", "nan", "inf", "1e400", "", HUGE_FLOAT],
    cli._non_negative_float: ["-1", "nan", "inf", "", HUGE_FLOAT],
    cli._fraction: ["-0.1", "1.5", "nan", "inf", ""],
    cli._sample_rate: ["0", "999", "-1", "1.5", "", HUGE_INT],
}
# (option, value): why the parser accepts it (checked where the bound is known, or a run's length)
_LONG_RUN = "a longer run or a larger model is the user's to ask for (Ctrl-C keeps a training's checkpoint)"
ACCEPTED = {
    **{(flag, HUGE_INT): _LONG_RUN for flag in (
        "--steps", "--levels", "--chains", "--corrections", "--iters", "--nf", "--depth", "--hidden", "--width",
        "--layers", "--codes", "--context", "--latent-dim", "--finetune-steps", "--batch-size", "--atoms",
        "--checkpoint-every", "--mix", "--sources")},
    **{(flag, HUGE_INT): "an upper bound: at most this many (all there are when fewer)" for flag in (
        "--tracks", "--train", "--valid", "--test", "--excerpts-per-piece", "--max-tracks", "--max-frames")},
    **{(flag, HUGE_FLOAT): "an upper bound: at most this much (all there is when less)" for flag in (
        "--max-minutes", "--seconds", "--segment", "--timeout")},
    ("--patch-hop", HUGE_INT): "checked against the priors' patch width when they are loaded",
    ("--window", HUGE_INT): "latent: checked against the code priors' context when they are loaded",
    ("--n-fft", HUGE_INT): "train nmf: as --sample-rate, a model the user asks for",
    ("--hop", HUGE_INT): "train nmf: as --n-fft",
    ("--hop", HUGE_FLOAT): "evaluate: windows longer than a track give one window, as BSSEval does",
    ("--win", HUGE_FLOAT): "evaluate, oracle: as --hop",
    ("--duration", HUGE_FLOAT): "synth: no piece that long ends in 'ran out of usable pieces'",
    ("--lr", HUGE_FLOAT): "a diverging loss stops the training with a one-line error",
    ("--delta", HUGE_FLOAT): "BASIS: a step size the user asks for (the chains are clipped to [0, 1])",
    ("--sigma", HUGE_FLOAT): "latent: a flat likelihood, the user's to ask for",
    ("--overlap", HUGE_FLOAT): "checked against --segment before any work",
    **{(flag, HUGE_FLOAT): "its range is checked by Augmentation (or synth) before any work" for flag in (
        "--gain-db", "--tempo", "--detune-cents", "--velocity", "--expression", "--timbre-shift", "--transpose",
        "--eq-db", "--reverb")},
}


def _commands(parser, path=()):
    """(command words, its parser) for every command that runs something."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for sub in subs:
        for name, child in sub.choices.items():
            yield from _commands(child, path + (name,))


def _options(kind):
    """(command words, flag or dest, action) of every action with a value of `kind`: "typed"
    (a type of BAD_VALUES or choices), "path", "text" (a free string), "flag" (no value)."""
    for words, parser in _commands(cli.build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            if action.nargs == 0:
                found = "flag"
            elif action.type is cli._path:
                found = "path"
            elif action.type in BAD_VALUES or action.choices:
                found = "typed"
            elif action.type is None:
                found = "text"
            else:
                raise AssertionError(f"{' '.join(words)} {action.dest}: no bad values known for type {action.type}")
            if found == kind:
                yield words, (action.option_strings or [action.dest])[-1], action


def _id(case):
    return " ".join(case[0]) + " " + case[1]


def _snapshot(folder: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def _refused(argv, capsys, folder, names):
    """Run `audiosep argv` in `folder`: exit 2, one line naming `names`, no traceback, nothing changed."""
    before = _snapshot(folder)
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, (argv, code, err)
    assert "\n" not in err and "Traceback" not in err, (argv, err)
    assert any(name in err for name in names), (argv, err)
    assert _snapshot(folder) == before, argv


@pytest.mark.parametrize("case", list(_options("typed")), ids=_id)
def test_every_bad_value_of_a_typed_option_is_refused_at_parse_time(case, tmp_path, capsys, monkeypatch):
    words, flag, action = case
    monkeypatch.chdir(tmp_path)
    values = ["nope", ""] if action.choices else BAD_VALUES[action.type]
    count = action.nargs if isinstance(action.nargs, int) else 1
    prefix = [] if action.option_strings else ["-o", "x"]  # a positional: after an option, so it is parsed
    for value in values:
        if (flag, value) in ACCEPTED:
            action.type(value)  # the list says what the type does
            continue
        _refused([*words, *prefix, *([flag] if action.option_strings else []), *[value] * count], capsys,
                 tmp_path, [flag, action.dest])


def test_every_accepted_value_is_still_an_option_s():
    flags = {flag for _, flag, _ in _options("typed")}
    assert not {flag for flag, _ in ACCEPTED} - flags


# ----------------------------------------------------------------------------- paths

SR = 16000


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A working folder with a tiny stems dataset, a mel file, an oracle run and a checkpoint,
    plus a regular text file and a junk file (no audio, checkpoint, NumPy, YAML or SoundFont)."""
    from audiosep.priors.base import Domain, save_checkpoint
    from audiosep.priors.masknet import MaskNet
    from audiosep.priors.vqvae import LQVAE

    root = tmp_path_factory.mktemp("world")
    t = np.arange(2 * SR) / SR
    for split in ("train", "valid", "test"):
        track = root / "data" / split / "t0"
        track.mkdir(parents=True)
        stems = {f"src{i}": (0.1 * np.sin(2 * np.pi * f * t)).astype(np.float32) for i, f in enumerate((220, 1760))}
        for name, wav in stems.items():
            sf.write(track / f"{name}.wav", wav, SR, subtype="FLOAT")
        sf.write(track / "mix.wav", sum(stems.values()), SR, subtype="FLOAT")
    assert cli.main(["mel", str(root / "data/test/t0/mix.wav"), "-o", str(root / "m.npy"), "--no-png"]) == 0
    assert cli.main(["oracle", str(root / "data"), "--method", "mix", "-o", str(root / "run" / "mix")]) == 0
    save_checkpoint(root / "net.pt", MaskNet(hidden=4, layers=1), Domain.waveform(SR))
    save_checkpoint(root / "lq.pt", LQVAE(sample_rate=SR, hops=(16,), n_codes=8, code_dim=4, width=4),
                    Domain.waveform(SR))
    (root / "train.log.csv").write_text("step,loss,valid_loss,lr,samples_per_s,wall_s\n1,0.5,,0.001,10,1\n")
    (root / "afile").write_text("a regular file in the way")
    (root / "junk.bin").write_bytes(b"\x00\xff\xfe junk \x00" * 8)
    return root


_DATA = ["--data", "data", "-o", "p.pt", "--steps", "1", "--batch-size", "2"]
# a valid command line per command; each path option's bad values replace its value in it
BASELINES = {
    ("models",): [],
    ("separate",): ["data/test/t0/mix.wav", "-o", "sep", "--method", "nmf"],
    ("synth",): ["piano_violin", "-o", "syn", "--test", "1", "--duration", "1"],
    ("mel",): ["data/test/t0/mix.wav", "-o", "m2.npy"],
    ("invert",): ["m.npy", "-o", "i.wav", "--iters", "1"],
    ("evaluate",): ["data/test", "run/mix", "-o", "ev"],
    ("oracle",): ["data", "--method", "mix", "-o", "or"],
    ("report",): ["run", "-o", "r.html"],
    ("plot",): ["train.log.csv", "-o", "c.png"],
    ("train", "ncsn"): [*_DATA, "--source", "src0"],
    ("train", "glow"): [*_DATA, "--source", "src0"],
    ("train", "realnvp"): [*_DATA, "--source", "src0"],
    ("train", "vae"): _DATA,
    ("train", "lqvae"): _DATA,
    ("train", "transformer"): [*_DATA, "--source", "src0", "--lqvae", "lq.pt"],
    ("train", "masknet"): _DATA,
    ("train", "nmf"): ["--data", "data", "-o", "n.pt", "--atoms", "2", "--iters", "1"],
    ("export",): ["net.pt", "-o", "e.pt"],
}
# options whose path is only read with another method: their own baseline
OTHER_BASELINES = {(("separate",), "--init-model"): ["data/test/t0/mix.wav", "-o", "sep", "--method", "basis"],
                   (("invert",), "--mix"): ["m.npy", "-o", "i.wav", "--method", "phase"]}


def _with_value(words, flag, action, value):
    """The baseline of `words` with `flag` (an option, or a positional's dest) set to `value`."""
    argv = list(OTHER_BASELINES.get((words, flag), BASELINES[words]))
    if not action.option_strings:  # a positional: the n-th bare word of the baseline
        parser = dict(_commands(cli.build_parser()))[words]
        index = [a.dest for a in parser._actions if not a.option_strings and a.nargs != 0].index(action.dest)
        bare = [i for i, a in enumerate(argv) if not a.startswith("-") and (i == 0 or not argv[i - 1].startswith("-"))]
        argv[bare[index]] = value
    elif flag in argv or any(f in argv for f in action.option_strings):
        i = next(i for i, a in enumerate(argv) if a in action.option_strings)
        argv[i + 1] = value
    else:
        argv += [flag, value]
    return [*words, *argv]


def test_every_command_has_a_baseline():
    assert {words for words, _ in _commands(cli.build_parser())} == set(BASELINES)


@pytest.mark.parametrize("case", list(_options("path")), ids=_id)
def test_every_path_option_refuses_a_path_under_a_file_and_a_file_of_the_wrong_kind(case, world, capsys,
                                                                                    monkeypatch):
    words, flag, action = case
    monkeypatch.chdir(world)
    for value in ("afile/x", "junk.bin"):
        _refused(_with_value(words, flag, action, value), capsys, world, [value, "afile", Path(value).stem])
    # an empty path would mean the current folder: refused by the parser, naming the option
    _refused(_with_value(words, flag, action, ""), capsys, world, [flag, action.dest, str(action.metavar)])


def test_an_existing_output_of_another_kind_is_not_replaced(world, capsys, monkeypatch):
    """-o naming an existing file that is not what the command writes (junk with the right suffix)."""
    monkeypatch.chdir(world)
    for words, baseline in BASELINES.items():
        if "-o" not in baseline:  # writes nothing (models)
            continue
        out = baseline[baseline.index("-o") + 1]
        if Path(out).suffix:
            other = world / f"other{Path(out).suffix}"
            other.write_bytes((world / "junk.bin").read_bytes())
            parser = dict(_commands(cli.build_parser()))[words]
            action = next(a for a in parser._actions if "-o" in a.option_strings)
            _refused(_with_value(words, "--output", action, other.name), capsys, world, [other.name])
            other.unlink()
