"""The `audiosep` command: parse arguments, call library functions, print. No logic here.

A `UserError` (bad file, bad argument, wrong checkpoint) prints one line and exits 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from pathlib import Path

from . import __version__
from .errors import Terminated, UserError


def _cmd_synth(args: argparse.Namespace) -> None:
    from .data.augment import Augmentation
    from .data.synth import list_pieces, synthesize
    from .io import check_output_dir

    if args.list:
        for piece in list_pieces(args.preset):
            print(f"{piece.split}\t{piece.path}")
        return
    if args.output is None:
        raise UserError("synth needs -o/--output DIR (or --list)")
    check_output_dir(args.output)
    counts = args.tracks
    if any(n is not None for n in (args.train, args.valid, args.test)):
        if args.tracks is not None:
            raise UserError("give --tracks (shared by --splits) or --train/--valid/--test, not both")
        counts = {s: n or 0 for s, n in (("train", args.train), ("valid", args.valid), ("test", args.test))}
    index = synthesize(
        args.preset, args.output, n_tracks=counts, excerpts_per_piece=args.excerpts_per_piece,
        duration=args.duration, sample_rate=args.sample_rate, seed=args.seed, soundfonts=args.soundfont,
        pieces=args.piece, composers=args.composers, splits=args.splits, gain_db=args.gain_db,
        timeout=args.timeout, overwrite=args.overwrite, font_per_source=args.font_per_source,
        augmentation=Augmentation(tempo=args.tempo, detune_cents=args.detune_cents, velocity=args.velocity,
                                  expression=args.expression, eq_db=args.eq_db, reverb=args.reverb,
                                  timbre_semitones=args.timbre_shift, transpose=args.transpose,
                                  top_voices=args.top_voices),
    )
    by_split: dict[str, int] = {}
    for record in index["tracks"]:
        by_split[record["split"]] = by_split.get(record["split"], 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(by_split.items())) or "no tracks"
    print(f"wrote {summary} to {args.output} ({len(index['skipped'])} pieces skipped)")


def _cmd_mel(args: argparse.Namespace) -> None:
    from .spectral.files import save_mel

    paths = save_mel(args.input, args.output, args.preset, picture=not args.no_png)
    print("wrote " + ", ".join(str(p) for p in paths))


def _cmd_invert(args: argparse.Namespace) -> None:
    from .io import check_outputs
    from .spectral.files import invert_mel_file

    check_outputs({args.output: "audio"})
    if args.mix is not None and args.method != "phase":
        raise UserError(f"--mix is the phase source of --method phase; the method is {args.method}")
    path = invert_mel_file(args.input, args.output, method=args.method, mix=args.mix,
                           n_iter=args.iters, seed=args.seed)
    print(f"wrote {path}")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from .eval.report import check_report_output, evaluate_dirs, summarize, write_reports

    check_report_output(args.output)
    table = evaluate_dirs(args.references, args.estimates, args.win, args.hop, method=args.method)
    paths = write_reports(table, args.output, args.win, references=args.references, estimates=args.estimates)
    _print_summary(summarize(table))
    print("wrote " + ", ".join(str(p) for p in paths))


def _cmd_report(args: argparse.Namespace) -> None:
    from .eval.listening import write_listening_report
    from .io import check_outputs
    from .oracle import ORACLE_SUMMARIES
    from .separation.methods import METHODS

    if args.output.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"{args.output}: the listening report is an HTML page; name it .html")
    check_outputs({args.output: "an HTML page"})
    descriptions = {**{name: spec.summary for name, spec in METHODS.items()}, **ORACLE_SUMMARIES}
    path = write_listening_report(args.run_dir, args.output, max_tracks=args.max_tracks, seconds=args.seconds,
                                  preset=args.preset, descriptions=descriptions)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


def _cmd_plot(args: argparse.Namespace) -> None:
    from .io import check_outputs
    from .training.log import plot_logs

    if args.output.suffix.lower() != ".png":
        raise UserError(f"{args.output}: the training curves are a PNG picture; name it .png")
    check_outputs({args.output: "a PNG picture"})
    plot_logs(args.logs, args.output)  # reads and checks every log before it draws
    print(f"wrote {args.output}")


def _cmd_oracle(args: argparse.Namespace) -> None:
    from .eval.report import check_report_output, summarize
    from .oracle.dataset import oracle_dataset
    from .spectral.frontend import get_frontend

    get_frontend(args.preset)  # an unknown preset is refused whatever the method, before any work
    if args.output.suffix.lower() == ".csv":
        raise UserError(f"{args.output}: -o is a folder (the estimates and their reports go in it)")
    check_report_output(args.output)
    table, paths = oracle_dataset(args.method, args.data, args.output, split=args.split,
                                  preset=args.preset, win_seconds=args.win)
    _print_summary(summarize(table))
    print("wrote " + ", ".join(str(p) for p in paths))


def _valid_text(valid_loss: float, label: str, unit: str = "") -> str:
    """"<label> 0.1234<unit>", or "no validation run" where a training returned NaN (none ran)."""
    return "no validation run" if math.isnan(valid_loss) else f"{label} {valid_loss:.4f}{unit}"


def _train_overrides(args: argparse.Namespace) -> dict:
    """The TrainConfig fields given on the command line."""
    return {k: getattr(args, k) for k in ("steps", "batch_size", "lr", "seed", "checkpoint_every", "precision")
            if getattr(args, k) is not None}


def _run_settings(run_class, args: argparse.Namespace, model_keys: tuple[str, ...]):
    """The run config of a `train KIND` command: its `--config` YAML (or the defaults) with the
    `model:` fields of `model_keys` and the TrainConfig fields given on the command line."""
    import dataclasses

    from .config import from_dict, load_yaml

    run = load_yaml(run_class, args.config) if args.config else from_dict(run_class, {})
    model = {k: getattr(args, k) for k in model_keys if getattr(args, k) is not None}
    return dataclasses.replace(run, model=dataclasses.replace(run.model, **model),
                               train=dataclasses.replace(run.train, **_train_overrides(args)))


def _trains_on_images(args: argparse.Namespace, *data_only: str) -> bool:
    """Whether a `train PRIOR` command trains on `--images` (else on `--data`/`--source`).

    Raises:
        UserError: --images with an option of `data_only` (they describe a stems dataset), or
            --data without --source.
    """
    if args.images is not None:
        given = [f"--{name.replace('_', '-')}" for name in data_only if getattr(args, name) is not None]
        if given:
            raise UserError(f"--images trains on the whole image set: {' and '.join(given)} "
                            f"{'is' if len(given) == 1 else 'are'} for --data")
        return True
    if args.source is None:
        raise UserError("--data needs --source (the source to model)")
    return False


def _check_checkpoint_output(path: Path) -> None:
    """The checkpoint a training writes (and resumes from) can be written, an existing file
    there is a checkpoint and one at its log's path (`training.log.log_path`) a training log:
    checked before the data is read, so nothing runs on a doomed output."""
    from .io import check_outputs
    from .training.log import log_path

    check_outputs({path: "a checkpoint (torch.save)", log_path(path): "a training log"})


def _cmd_train_ncsn(args: argparse.Namespace) -> None:
    from .training.data import Images, MelPatches
    from .training.ncsn import NCSNRun, train_ncsn

    _check_checkpoint_output(args.output)
    if args.init_from is not None and (args.version is not None or args.nf is not None):
        raise UserError("--version/--nf: the network of --init-from is fine-tuned as it is; give one or the other")
    run = _run_settings(NCSNRun, args, ("version", "nf"))
    model_config, config = run.model, run.train
    _set_threads(args.threads)
    images = _trains_on_images(args, "source", "init_from")
    if images and run.train_sigma_max is not None:
        raise UserError("train_sigma_max is for mel patches (BASIS from a baseline's stems), not for --images")
    data = Images(args.images) if images else MelPatches(args.data, args.source, args.preset)
    result = train_ncsn(data, args.output, model_config=model_config, config=config, device=args.device,
                        init_from=args.init_from, train_sigma_max=run.train_sigma_max)
    print(f"{args.output}: step {result['step']}, loss {result['loss']:.4f}, "
          f"{_valid_text(result['valid_loss'], 'valid loss')}")


def _cmd_train_flow(args: argparse.Namespace) -> None:
    from .training.data import Images, MelPatches
    from .training.flow import FlowRun, train_flow

    _check_checkpoint_output(args.output)
    run = _run_settings(FlowRun, args, ("conditioning", "levels", "depth", "hidden"))
    finetune_steps = args.finetune_steps if args.finetune_steps is not None else run.finetune_steps
    model_config, config = run.model, run.train
    _set_threads(args.threads)
    data = Images(args.images) if _trains_on_images(args, "source") else MelPatches(args.data, args.source,
                                                                                   args.preset)
    result = train_flow(data, args.output, arch=args.kind, model_config=model_config, config=config,
                        finetune_steps=finetune_steps, device=args.device, denoising=run.denoising)
    for member in result.get("members", []):
        print(f"  sigma {member['sigma']:.4g}: step {member['step']}, "
              f"{_valid_text(member['valid_loss'], 'valid', ' bits/dim')}")
    print(f"{args.output}: step {result['step']}, loss {result['loss']:.4f} bits/dim, "
          f"{_valid_text(result['valid_loss'], 'valid', ' bits/dim')}")


def _cmd_train_vae(args: argparse.Namespace) -> None:
    import dataclasses

    from .training.data import Images, MixturePatches
    from .training.vae import VAERun, train_vae

    _check_checkpoint_output(args.output)
    run = _run_settings(VAERun, args, ("n_sources", "arch", "latent_dim"))
    if args.autoencoder:
        run = dataclasses.replace(run, model=dataclasses.replace(run.model, variational=False))
    if args.n_mix is not None:
        if args.data is not None:
            raise UserError("--mix averages images into mixtures (--images); --data patches are mixtures already")
        run = dataclasses.replace(run, loss=dataclasses.replace(run.loss, n_mix=args.n_mix))
    _set_threads(args.threads)
    data = MixturePatches(args.data, run.frontend) if args.data is not None else Images(args.images)
    result = train_vae(data, args.output, run, device=args.device)
    print(f"{args.output}: step {result['step']}, loss {result['loss']:.4f}, "
          f"{_valid_text(result['valid_loss'], 'valid loss')} (nats per training input)")


def _cmd_train_lqvae(args: argparse.Namespace) -> None:
    from .data.stems import list_sources, list_tracks
    from .training.lqvae import LQVAERun, train_lqvae

    _check_checkpoint_output(args.output)
    run = _run_settings(LQVAERun, args, ("n_codes", "width"))
    sources = args.sources or list_sources(list_tracks(args.data, "train"))
    _set_threads(args.threads)
    result = train_lqvae(args.data, sources, args.output, run, device=args.device)
    print(f"{args.output}: step {result['step']}, loss {result['loss']:.4f}, "
          f"{_valid_text(result['valid_loss'], 'valid loss')}")


def _cmd_train_transformer(args: argparse.Namespace) -> None:
    from .training.codes import CodePriorRun, train_code_prior

    _check_checkpoint_output(args.output)
    run = _run_settings(CodePriorRun, args, ("context", "width", "layers"))
    _set_threads(args.threads)
    result = train_code_prior(args.data, args.source, args.lqvae, args.output, run, device=args.device)
    print(f"{args.output}: step {result['step']}, loss {result['loss']:.4f}, "
          f"{_valid_text(result['valid_loss'], 'valid loss')} (nats per code)")


def _cmd_train_masknet(args: argparse.Namespace) -> None:
    from .training.masknet import MaskNetRun, train_masknet

    _check_checkpoint_output(args.output)
    if args.init_from is not None and (args.hidden is not None or args.layers is not None):
        raise UserError("--hidden/--layers: the network of --init-from is fine-tuned as it is; give one or the other")
    run = _run_settings(MaskNetRun, args, ("hidden", "layers"))
    _set_threads(args.threads)
    result = train_masknet(args.data, args.output, args.sources, run, device=args.device, init_from=args.init_from)
    print(f"{args.output}: step {result['step']}, loss {result['loss']:.4f}, "
          f"{_valid_text(result['valid_loss'], 'valid loss')} (error energy relative to the mixture's)")


def _check_model_output(path: Path, overwrite: bool, why: str) -> None:
    """The output of a command that writes a finished model (train nmf, export): a checkpoint
    file or nothing, never a training checkpoint (its optimiser state would be lost, even with
    --overwrite), and an existing model only with --overwrite (a bundled one, say)."""
    from .io import check_outputs
    from .priors.base import refuse_training_checkpoint

    check_outputs({path: "a checkpoint (torch.save)"})
    refuse_training_checkpoint(path)
    if path.exists() and not overwrite:
        raise UserError(f"{path}: a model is there; {why}, so it would be replaced: choose another output, "
                        "or pass --overwrite")


def _cmd_train_nmf(args: argparse.Namespace) -> None:
    from .separation.nmf import train_nmf

    _check_model_output(args.output, args.overwrite, "an NMF training does not resume")
    model = train_nmf(args.data, args.output, args.sources, n_atoms=args.atoms, split=args.split,
                      max_minutes=args.max_minutes, max_frames=args.max_frames, n_iter=args.iters,
                      sample_rate=args.sample_rate, n_fft=args.n_fft, hop_length=args.hop, seed=args.seed)
    print(f"wrote {args.output}: {model.n_atoms} atoms for each of {', '.join(model.sources)} "
          f"({model.domain.describe()})")


def _cmd_export(args: argparse.Namespace) -> None:
    from .priors import export_prior

    _check_model_output(args.output, args.overwrite, "export writes a new copy")
    path = export_prior(args.checkpoint, args.output, args.dtype)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


def _cmd_separate(args: argparse.Namespace) -> int:
    from .io import OutputFormat, check_output_dir
    from .separation import Separator, find_inputs, separate_files

    fmt = OutputFormat(args.format, args.bits, args.clip_mode)
    if args.jobs > 1 and args.shard is not None:
        raise UserError("--jobs splits the inputs itself; do not combine it with --shard")
    shard = _shard(args.shard)
    _set_threads(args.threads)
    check_output_dir(args.output)
    inputs = find_inputs(args.inputs, exclude=args.output)  # checked before any model is loaded
    if args.name is not None and (not args.name or Path(args.name).name != args.name or args.name in (".", "..")):
        raise UserError(f"-n {args.name!r}: the model set's name is one folder under -o, not a path")
    model, name = _separation_model(args)  # with --jobs too: a bad model is one error, not one per worker
    out_dir = args.output / name
    if args.jobs > 1:
        del model  # each worker loads its own
        status, written, failed = _run_jobs(args)
    else:
        separator = Separator(model, segment=args.segment, overlap=args.overlap, device=args.device, seed=args.seed)
        summary = separate_files(inputs, out_dir, separator, fmt, strict=args.strict, shard=shard,
                                 on_track=lambda inp, out: print("wrote " + ", ".join(str(p) for p in out.values())))
        for note in summary.notes:
            print(f"note: {note}", file=sys.stderr)
        for inp, reason in summary.failed:
            print(f"audiosep separate: skipped: {reason}", file=sys.stderr)
        written, failed = len(summary.written), len(summary.failed)
        status = _separate_status(args, failed)
        if _JOB_COUNTS in os.environ:  # a --jobs worker: the parent prints the total of all workers
            Path(os.environ[_JOB_COUNTS]).write_text(json.dumps({"written": written, "failed": failed}))
            return status
    print(f"{written} track(s) written to {out_dir}" + (f", {failed} failed (listed above)" if failed else ""))
    return status


def _separate_status(args: argparse.Namespace, failed: int) -> int:
    """0; with failures 1 (a collection goes on), or 2 when the input was one file given alone
    (a usage error)."""
    if not failed:
        return 0
    one_file = len(args.inputs) == 1 and args.inputs[0].is_file()
    return 2 if one_file else 1


def _separation_model(args: argparse.Namespace):
    """(the Separator method the options ask for, the name of its folder OUT/<name>/): a bundled
    set (-n NAME, default the default set) or the user's --model files (-n names their folder)."""
    from .separation import build_method, model_set_name, separation_method
    from .separation.methods import method_options, option_names
    from .zoo import DEFAULT_SET, model_set

    given = {name: getattr(args, name) for name in _method_option_names()}
    if args.model:
        method = separation_method(args.model, args.method)
        options = method_options(method, given)
        model = build_method(method, args.model, options, device=args.device, seed=args.seed)
        return model, args.name or model_set_name(args.model, method)
    bundled = model_set(args.name or DEFAULT_SET)
    method = separation_method([], args.method or bundled.default)
    options = method_options(method, given)
    if method == "basis" and "init_model" in option_names(method) and options.init_model is None:
        options = dataclasses.replace(options, init_model=bundled.init_model(method))
    model = build_method(method, bundled.files(method), options, device=args.device, seed=args.seed,
                         defaults=bundled)
    return model, bundled.output_name(method)


def _method_option_names() -> list[str]:
    """Every option of every separation method, once (shared ones: --chains, --likelihood)."""
    from .separation.methods import METHODS, option_names

    return list(dict.fromkeys(name for method in METHODS for name in option_names(method)))


def _cmd_models(args: argparse.Namespace) -> None:
    from .zoo import model_sets

    rows = [("name", "sources", "methods (default first)", "size", "SDR (dB) by method", "CPU s/s", "rate")]
    for name, bundled in model_sets().items():
        methods = [bundled.default, *[m for m in bundled.methods if m != bundled.default]]
        sdr, cost = bundled.scores.get("sdr", {}), bundled.scores.get("cpu_s_per_s", {})
        scores = "; ".join(f"{m} " + " / ".join(f"{v:.2f}" for v in sdr[m].values()) for m in methods if m in sdr)
        speed = "; ".join(f"{m} {cost[m]:g}" for m in methods if m in cost)
        rows.append((name, ", ".join(bundled.sources), ", ".join(methods), f"{bundled.size_bytes() / 1e6:.1f} MB",
                     scores or "-", speed or "-", f"{bundled.sample_rate} Hz"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    for name, bundled in model_sets().items():
        if bundled.scores:
            print(f"\n{name}: {bundled.description}. Scores: {bundled.scores['material']}; "
                  f"by `{bundled.scores['command']}`")


def _shard(text: str | None) -> tuple[int, int]:
    """--shard I/N, else the torchrun rank (RANK/WORLD_SIZE), else (0, 1)."""
    if text is None:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise UserError(f"--shard {text}: expected I/N with 0 <= I < N, e.g. 0/4")
    return int(index), int(count)


_JOB_COUNTS = "AUDIOSEP_JOB_COUNTS"  # environment: the file a `separate --jobs` worker writes its counts to


def _run_jobs(args: argparse.Namespace) -> tuple[int, int, int]:
    """`separate --jobs N`: the same command in N processes, one shard each (each input is
    seeded on its own, so the stems equal one process's). Each worker writes its counts to a
    file instead of printing a total, so that one total is printed, not N that contradict.

    Returns:
        (the worst exit status, tracks written, inputs failed) over the workers.
    """
    import subprocess
    import tempfile

    argv = _strip_option(args.argv, "--jobs")
    threads = [] if args.threads else ["--threads", str(max(1, (os.cpu_count() or 1) // args.jobs))]
    with tempfile.TemporaryDirectory(prefix="audiosep-jobs-") as tmp:
        counts = [Path(tmp) / f"{i}.json" for i in range(args.jobs)]
        procs = [subprocess.Popen([sys.executable, "-m", "audiosep", *argv, *threads, "--shard", f"{i}/{args.jobs}"],
                                  env={**os.environ, _JOB_COUNTS: str(path)})
                 for i, path in enumerate(counts)]
        status = max(proc.wait() for proc in procs)
        done = [json.loads(path.read_text()) for path in counts if path.exists()]  # none from a worker that failed
    return status, sum(c["written"] for c in done), sum(c["failed"] for c in done)


def _strip_option(argv: list[str], flag: str) -> list[str]:
    """argv without `flag VALUE` / `flag=VALUE`."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == flag:
            skip = True
        elif not item.startswith(flag + "="):
            out.append(item)
    return out


def _set_threads(threads: int | None) -> None:
    """torch's CPU threads (bounded by `_thread_count` when parsed)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def _print_summary(summary) -> None:
    from .eval.report import wide_summary

    print(wide_summary(summary).round(2).to_string())


def _positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1 (argparse turns the ValueError into a one-line usage error)."""
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _count(text: str) -> int:
    """argparse type: an integer ≥ 0."""
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def _finite_float(text: str) -> float:
    """argparse type: a finite number (nan and ±inf are refused: no option means them)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def _positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = _finite_float(text)
    if not value > 0:
        raise ValueError(text)
    return value


def _non_negative_float(text: str) -> float:
    """argparse type: a finite number ≥ 0 (the ± ranges and the overlap: a negative one means nothing)."""
    value = _finite_float(text)
    if value < 0:
        raise ValueError(text)
    return value


def _seed(text: str) -> int:
    """argparse type: an integer in [0, 2**32 - 1], the seeds numpy and torch both take (numpy
    refuses negative ones, torch ones past 64 bits, with a traceback)."""
    value = int(text)
    if not 0 <= value < 2**32:
        raise ValueError(text)
    return value


_MAX_THREADS = 4 * (os.cpu_count() or 1)


def _thread_count(text: str) -> int:
    """argparse type: threads or processes, 1 to 4 per CPU core (each thread's pools cost memory,
    so 100000 threads end in a MemoryError, 100000 processes worse, instead of a speed-up)."""
    value = _positive_int(text)
    if value > _MAX_THREADS:
        raise ValueError(text)
    return value


def _path(text: str) -> Path:
    """argparse type: a non-empty path (an empty one would silently mean the current folder)."""
    if not text.strip():
        raise ValueError(text)
    return Path(text)


def _sample_rate(text: str) -> int:
    """argparse type: a sample rate in Hz within `io.SAMPLE_RATES`."""
    from .io import SAMPLE_RATES

    value = int(text)
    if not SAMPLE_RATES[0] <= value <= SAMPLE_RATES[1]:
        raise ValueError(text)
    return value


def _fraction(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(text)
    return value


_finite_float.__name__ = "finite number"
_path.__name__ = "non-empty path"
_sample_rate.__name__ = "sample rate in Hz, 1000 to 384000"  # io.SAMPLE_RATES (not imported here: startup time)
_non_negative_float.__name__ = "finite number >= 0"
_seed.__name__ = "integer in [0, 2**32 - 1]"
_thread_count.__name__ = f"integer in [1, {_MAX_THREADS}] (4 per CPU core of this machine)"
_positive_float.__name__ = "finite number > 0"
_fraction.__name__ = "number in [0, 1]"
_positive_int.__name__ = "integer >= 1"  # argparse names the type in its error: "invalid integer >= 1 value: '0'"
_count.__name__ = "integer >= 0"


def _add_synth(sub) -> None:
    p = sub.add_parser("synth", help="render a multi-stem dataset from the music21 corpus with FluidSynth")
    p.add_argument("preset", choices=["piano_violin", "drums_bass", "piano_violin_tunes", "drums_bass_tunes"])
    p.add_argument("-o", "--output", type=_path, help="dataset folder (DATA/<split>/<track>/{mix,<source>}.wav)")
    p.add_argument("--list", action="store_true", help="list the usable corpus pieces and their splits, then exit")
    p.add_argument("--tracks", type=_count, help="excerpts in all (shared by the split fractions); default: all pieces")
    p.add_argument("--train", type=_count, help="excerpts in the train split (with --valid/--test)")
    p.add_argument("--valid", type=_count, help="excerpts in the valid split")
    p.add_argument("--test", type=_count, help="excerpts in the test split")
    p.add_argument("--excerpts-per-piece", type=_positive_int, default=4)
    p.add_argument("--duration", type=_positive_float, default=10.0, help="excerpt length in seconds (default 10)")
    p.add_argument("--sample-rate", type=_sample_rate, default=16000, help="Hz (default 16000)")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--soundfont", type=_path, nargs="+", help="one or more .sf2/.sf3 files (one drawn per piece; "
                   "the MuseScore General ones are reserved for evaluation and refused)")
    p.add_argument("--font-per-source", action="store_true", help="draw a soundfont for every source of a piece")
    p.add_argument("--piece", nargs="+", help="restrict to these corpus paths (e.g. bach/bwv66.6.mxl)")
    p.add_argument("--composers", nargs="+", metavar="FOLDER",
                   help="corpus folders to draw from, in priority order (default: bach, then the rest "
                        "alphabetically; haydn and mozart are reserved and refused); see --list")
    p.add_argument("--splits", nargs=3, type=_fraction, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "VALID", "TEST"),
                   help="fractions of the pieces in train/valid/test, by a hash of each piece's path "
                        "(default 0.8 0.1 0.1; 0 0 1 puts every piece in test, as the honest folds do)")
    p.add_argument("--gain-db", type=_non_negative_float, default=0.0,
                   help="random gain per source in ±dB around equal loudness (sources then differ by up to 2x)")
    aug = p.add_argument_group("augmentation (random per piece/source, drawn from --seed; all off by default)")
    aug.add_argument("--tempo", type=_non_negative_float, default=0.0,
                     help="note times scaled by 1 ± this fraction (e.g. 0.1)")
    aug.add_argument("--detune-cents", type=_non_negative_float, default=0.0,
                     help="pitch bend per source in ± cents (e.g. 30)")
    aug.add_argument("--velocity", type=_non_negative_float, default=0.0,
                     help="velocity offset per source in ± MIDI units, half of it again per note (e.g. 20)")
    aug.add_argument("--expression", type=_non_negative_float, default=0.0,
                     help="depth (0-1) of a slow random expression (CC 11) curve per source (e.g. 0.4)")
    aug.add_argument("--timbre-shift", type=_non_negative_float, default=0.0, metavar="SEMITONES",
                     help="each pitched source played up to ± this many semitones higher and faster, then "
                          "resampled back: same notes and timing, formants moved (e.g. 3)")
    aug.add_argument("--transpose", type=_non_negative_float, default=0.0, metavar="SEMITONES",
                     help="each pitched source transposed by up to ± this many whole semitones, kept within "
                          "its instrument's range: registers the corpus does not reach (e.g. 12)")
    aug.add_argument("--top-voices", type=_fraction, default=0.0, metavar="P",
                     help="piano_violin: probability that the violin plays the top two parts of a piece as "
                          "chords (a keyboard's right hand), the piano the rest (e.g. 0.5)")
    aug.add_argument("--eq-db", type=_non_negative_float, default=0.0,
                     help="random low/high-shelf and peak EQ per source in ± dB")
    aug.add_argument("--reverb", type=_non_negative_float, default=0.0,
                     help="probability that a piece is played in a (random) room, one per piece (e.g. 0.7)")
    p.add_argument("--timeout", type=_positive_float, default=60.0, help="seconds allowed per FluidSynth render")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in the folder")
    p.set_defaults(run=_cmd_synth)


def _add_mel(sub) -> None:
    p = sub.add_parser("mel", help="audio → normalised mel spectrogram (.npy, .json settings, .png picture)")
    p.add_argument("input", type=_path, help="audio file (wav/flac/ogg/mp3)")
    p.add_argument("-o", "--output", type=_path, required=True, help="output .npy (C, n_mels, frames) in [0, 1]")
    p.add_argument("--preset", default="default", help="front-end preset (default, audiosourcesep)")
    p.add_argument("--no-png", action="store_true", help="do not draw the picture")
    p.set_defaults(run=_cmd_mel)


def _add_invert(sub) -> None:
    p = sub.add_parser("invert", help="mel spectrogram (.npy written by `audiosep mel`) → audio")
    p.add_argument("input", type=_path, help=".npy written by `audiosep mel` (its .json must be beside it)")
    p.add_argument("-o", "--output", type=_path, required=True, help="output audio file")
    p.add_argument("--method", choices=["griffinlim", "phase"], default="griffinlim",
                   help="phase from Griffin-Lim, or from --mix")
    p.add_argument("--mix", type=_path, help="audio whose STFT phase to use (with --method phase)")
    p.add_argument("--iters", type=_positive_int, default=64, help="Griffin-Lim iterations (fast variant)")
    p.add_argument("--seed", type=_seed, default=0)
    p.set_defaults(run=_cmd_invert)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="BSSEval v4 of estimates against references (museval-compatible)")
    p.add_argument("references", type=_path, help="folder of tracks: REF_DIR/<track>/<source>.wav, or one track's folder of stems")
    p.add_argument("estimates", type=_path, help="folder of tracks: EST_DIR/<track>/<source>.wav (one track's folder for one track)")
    p.add_argument("-o", "--output", type=_path, required=True,
                   help="report folder, or a .csv path (summary.csv and json/ go beside it)")
    p.add_argument("--win", type=_positive_float, default=1.0, help="window in seconds (default 1)")
    p.add_argument("--hop", type=_positive_float, help="hop in seconds (default: the window)")
    p.add_argument("--method", default="estimates", help="name for the method column")
    p.set_defaults(run=_cmd_evaluate)


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="HTML listening report of the evaluations under a run folder")
    p.add_argument("run_dir", type=_path, metavar="RUN_DIR",
                   help="folder searched for evaluations (written by `audiosep evaluate` / `oracle`)")
    p.add_argument("-o", "--output", type=_path, required=True, help="the HTML file (self-contained)")
    p.add_argument("--max-tracks", type=_positive_int, default=10, help="tracks with players and pictures (default 10)")
    p.add_argument("--seconds", type=_positive_float, default=30.0, help="length of each clip (default 30)")
    p.add_argument("--preset", default="default", help="front end of the mel pictures")
    p.set_defaults(run=_cmd_report)


def _add_plot(sub) -> None:
    p = sub.add_parser("plot", help="training curves (loss, valid loss, samples/s) of training logs, as a PNG")
    p.add_argument("logs", type=_path, nargs="+", metavar="LOG",
                   help="training logs MODEL.log.csv (written beside each checkpoint by `audiosep train`)")
    p.add_argument("-o", "--output", type=_path, required=True, help="the PNG file")
    p.set_defaults(run=_cmd_plot)


def _add_oracle(sub) -> None:
    p = sub.add_parser("oracle", help="oracle separation of a stems dataset, written and evaluated")
    p.add_argument("data", type=_path, help="dataset folder DATA/<split>/<track>/{mix,<source>}.wav (or MUSDB18/Slakh)")
    p.add_argument("--method", required=True,
                   help="ibm, irm1, irm2, mwf, mix (mixture / K), mel-ibm, mel-irm, mel-ideal (mel-oracle ceiling)")
    p.add_argument("-o", "--output", type=_path, required=True,
                   help="folder for OUT/<track>/<source>.wav and the reports")
    p.add_argument("--split", default="test", help="dataset split (default test)")
    p.add_argument("--preset", default="default", help="front end for the mel oracles")
    p.add_argument("--win", type=_positive_float, default=1.0, help="BSSEval window in seconds (default 1)")
    p.set_defaults(run=_cmd_oracle)


def _add_prior_data(p, images: bool = False) -> None:
    """The data and output options every `train PRIOR` command shares (`images`: it also
    trains on an image dataset, `--images`, instead of a source of a stems dataset)."""
    data = p.add_mutually_exclusive_group(required=True) if images else p
    data.add_argument("--data", type=_path, nargs="+", required=not images, metavar="DATA",
                      help="stems dataset(s) DATA/{train,valid}/<track>/<source>.wav (several: their tracks pooled)")
    if images:
        data.add_argument("--images", metavar="SPEC",
                          help="image dataset instead: digits, mnist:DIR, fashion-mnist:DIR, cifar10:DIR or a folder")
    p.add_argument("--source", required=not images, help="the source to model, e.g. piano" +
                   (" (with --data)" if images else ""))
    p.add_argument("-o", "--output", type=_path, required=True, help="checkpoint file (rewritten atomically)")
    p.add_argument("--preset", default="default", help="front end (default, audiosourcesep)")


def _add_prior_run(p) -> None:
    """The optimiser and machine options every `train PRIOR` command shares."""
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--lr", type=_positive_float)
    p.add_argument("--seed", type=_seed)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", choices=["fp32", "bf16"],
                   help="bf16: forward pass and loss under bfloat16 autocast (weights, optimiser, EMA and "
                        "validation stay float32); default: the config's, fp32")
    p.add_argument("--threads", type=_thread_count, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--checkpoint-every", type=_positive_int, metavar="STEPS",
                   help="write the checkpoint every STEPS steps (default: the config's, 100); it is also written "
                        "at the end and on Ctrl-C / SIGTERM")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model (ncsn, glow, realnvp priors; vae: VAE-BSS on image or audio "
                                     "mixtures; nmf baseline)")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")  # ncsn, glow, realnvp, nmf
    ncsn = kinds.add_parser("ncsn", help="NCSN score network on [0, 1] mel patches or images (resumes from -o)")
    _add_prior_data(ncsn, images=True)
    ncsn.add_argument("--config", type=_path, help="YAML with `model:` (NCSNConfig) and `train:` (TrainConfig)")
    ncsn.add_argument("--version", choices=["v1", "v2"], help="network (default v2)")
    ncsn.add_argument("--nf", type=_positive_int, help="base width of the network")
    ncsn.add_argument("--steps", type=_positive_int, help="total optimiser steps (across resumes)")
    ncsn.add_argument("--init-from", type=_path, metavar="PRIOR",
                      help="fine-tune: start from this NCSN checkpoint's weights, network and sigma schedule "
                           "(same front end); steps count from 0")
    _add_prior_run(ncsn)
    ncsn.set_defaults(run=_cmd_train_ncsn)

    for kind, name in (("glow", "Glow"), ("realnvp", "RealNVP")):
        _add_train_flow(kinds.add_parser(kind, help=f"{name} flow prior on [0, 1] mel patches or centred images (resumes from -o)"))

    vae = kinds.add_parser("vae", help="VAE-BSS (K latent sources, trained on mixtures only: image mixtures, or "
                                       "STFT-magnitude patches of a stems dataset's mixtures, for --method vae-bss) "
                                       "or a plain VAE (--sources 1 --mix 1) (resumes from -o)")
    vae_data = vae.add_mutually_exclusive_group(required=True)
    vae_data.add_argument("--images", metavar="SPEC",
                          help="image dataset: digits, mnist:DIR, fashion-mnist:DIR, cifar10:DIR or a folder")
    vae_data.add_argument("--data", type=_path, metavar="DIR",
                          help="stems dataset DATA/{train,valid}/<track>/: patches of the mixtures' STFT magnitudes "
                               "(mix files; no stem is read alone), validated on the valid split")
    vae.add_argument("-o", "--output", type=_path, required=True, help="checkpoint file (rewritten atomically)")
    vae.add_argument("--config", type=_path, help="YAML with `model:` (VAEConfig), `train:` (TrainConfig), `loss:`, "
                                                 "`denoising:` and, with --data, `frontend:` (MagnitudeFrontend)")
    vae.add_argument("--sources", dest="n_sources", type=_positive_int, help="K, sources decoded per mixture (default 2)")
    vae.add_argument("--arch", choices=["mlp", "conv"], help="network (default mlp, the paper's)")
    vae.add_argument("--latent-dim", type=_positive_int, help="latent size per source (default 20)")
    vae.add_argument("--mix", dest="n_mix", type=_positive_int,
                     help="images averaged into each training mixture (default 2; 1: train on the images)")
    vae.add_argument("--autoencoder", action="store_true", help="a deterministic auto-encoder instead of a VAE")
    vae.add_argument("--steps", type=_positive_int, help="total optimiser steps (across resumes)")
    _add_prior_run(vae)
    vae.set_defaults(run=_cmd_train_vae)

    lq = kinds.add_parser("lqvae", help="LQ-VAE: a waveform VQ-VAE linear in its code space, trained on crops of "
                                        "every source, for --method latent (resumes from -o)")
    lq.add_argument("--data", type=_path, required=True, help="stems dataset DATA/{train,valid}/<track>/<source>.wav")
    lq.add_argument("--sources", nargs="+", help="sources whose crops it learns (default: all in the train split)")
    lq.add_argument("-o", "--output", type=_path, required=True, help="checkpoint file (rewritten atomically)")
    lq.add_argument("--config", type=_path, help="YAML with `model:` (LQVAEConfig), `train:` (TrainConfig), `loss:`")
    lq.add_argument("--codes", dest="n_codes", type=_positive_int, help="codebook size (default 256)")
    lq.add_argument("--width", type=_positive_int, help="channels next to the codes (default 32)")
    lq.add_argument("--steps", type=_positive_int, help="total optimiser steps (across resumes)")
    _add_prior_run(lq)
    lq.set_defaults(run=_cmd_train_lqvae)

    tr = kinds.add_parser("transformer", help="autoregressive code prior: a causal transformer over one "
                                              "source's LQ-VAE codes, for --method latent (resumes from -o)")
    tr.add_argument("--lqvae", type=_path, required=True, metavar="LQVAE", help="the trained LQ-VAE whose codes it models")
    tr.add_argument("--data", type=_path, nargs="+", required=True,
                    help="stems dataset(s) DATA/{train,valid}/<track>/<source>.wav (several: their tracks pooled)")
    tr.add_argument("--source", required=True, help="the source to model, e.g. drums")
    tr.add_argument("-o", "--output", type=_path, required=True, help="checkpoint file (rewritten atomically)")
    tr.add_argument("--config", type=_path, help="YAML with `model:` (CodePriorConfig) and `train:` (TrainConfig)")
    tr.add_argument("--context", type=_positive_int, help="codes the prior sees (default 256)")
    tr.add_argument("--width", type=_positive_int, help="model width (default 128)")
    tr.add_argument("--layers", type=_positive_int, help="transformer blocks (default 4)")
    tr.add_argument("--steps", type=_positive_int, help="total optimiser steps (across resumes)")
    _add_prior_run(tr)
    tr.set_defaults(run=_cmd_train_transformer)

    mask = kinds.add_parser("masknet", help="supervised mask network (BiLSTM over STFT frames) on the stems of "
                                            "a dataset, for --method masknet and as the start of BASIS (resumes from -o)")
    mask.add_argument("--data", type=_path, nargs="+", required=True,
                      help="stems dataset(s) DATA/{train,valid}/<track>/<source>.wav (several: their tracks pooled)")
    mask.add_argument("--sources", nargs="+", help="the sources, in output order (default: all in the train split)")
    mask.add_argument("-o", "--output", type=_path, required=True, help="checkpoint file (rewritten atomically)")
    mask.add_argument("--config", type=_path, help="YAML with `model:` (MaskNetConfig), `train:` (TrainConfig), "
                                                  "crop_seconds, gain_db, sample_rate")
    mask.add_argument("--hidden", type=_positive_int, help="features per frame (default 256)")
    mask.add_argument("--layers", type=_positive_int, help="BiLSTM layers (default 2)")
    mask.add_argument("--steps", type=_positive_int, help="total optimiser steps (across resumes)")
    mask.add_argument("--init-from", type=_path, metavar="MASKNET",
                      help="fine-tune: start from this mask network's weights and size (the same sources and "
                           "rate); steps count from 0")
    _add_prior_run(mask)
    mask.set_defaults(run=_cmd_train_masknet)

    nmf = kinds.add_parser("nmf", help="supervised NMF: one spectral dictionary per source")
    nmf.add_argument("--data", type=_path, nargs="+", required=True,
                     help="stems dataset(s) DATA/<split>/<track>/{mix,<source>}.wav (several: their tracks pooled)")
    nmf.add_argument("-o", "--output", type=_path, required=True, help="model file to write (.pt)")
    nmf.add_argument("--sources", nargs="+", help="sources to learn (default: all in the split)")
    nmf.add_argument("--atoms", type=_positive_int, default=64, help="atoms per source (default 64)")
    nmf.add_argument("--split", default="train", help="dataset split (default train)")
    nmf.add_argument("--max-minutes", type=_positive_float, help="read at most this much audio (default: all)")
    nmf.add_argument("--max-frames", type=_positive_int, default=20000, help="STFT frames per source kept (default 20000)")
    nmf.add_argument("--iters", type=_positive_int, default=200, help="NMF iterations (default 200)")
    nmf.add_argument("--sample-rate", type=_sample_rate, default=16000, help="Hz (default 16000)")
    nmf.add_argument("--n-fft", type=_positive_int, default=4096, help="STFT size in samples (default 4096)")
    nmf.add_argument("--hop", type=_positive_int, default=1024, help="STFT hop in samples (default 1024)")
    nmf.add_argument("--seed", type=_seed, default=0)
    nmf.add_argument("--overwrite", action="store_true", help="replace an NMF model already at -o")
    nmf.set_defaults(run=_cmd_train_nmf)


def _add_train_flow(flow) -> None:
    _add_prior_data(flow, images=True)
    flow.add_argument("--config", type=_path,
                      help="YAML with `model:` (FlowConfig), `train:` (TrainConfig), `finetune_steps` and, "
                           "with --images, `denoising:` (ND/TD/CD flows of the denoising experiment)")
    flow.add_argument("--conditioning", choices=["none", "sigma", "bundle"],
                      help="sigma: one sigma-conditioned flow (default); bundle: one flow per BASIS sigma, "
                           "trained from low to high noise (members kept in OUTPUT_members/); none: one flow "
                           "(a denoising: section sets it)")
    flow.add_argument("--levels", type=_positive_int, help="scales of the flow (default 3)")
    flow.add_argument("--depth", type=_positive_int, help="flow steps per scale")
    flow.add_argument("--hidden", type=_positive_int, help="width of the coupling networks")
    flow.add_argument("--steps", type=_positive_int, help="total optimiser steps (across resumes; a bundle's first member)")
    flow.add_argument("--finetune-steps", type=_positive_int, help="bundle: steps of each later member (default: --steps)")
    _add_prior_run(flow)
    flow.set_defaults(run=_cmd_train_flow)


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="weights-only copy of a prior's training checkpoint (to bundle or share)")
    p.add_argument("checkpoint", type=_path, help="a prior checkpoint written by `audiosep train`")
    p.add_argument("-o", "--output", type=_path, required=True,
                   help="the copy: EMA weights, config, domain, step; no optimiser state")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32",
                   help="precision of the stored weights (fp16/bf16: half the size; they load back as float32)")
    p.add_argument("--overwrite", action="store_true", help="replace a model already at -o (never a training "
                   "checkpoint)")
    p.set_defaults(run=_cmd_export)


def _add_method_options(p) -> None:
    """--method and every method's options, generated from the registry's options dataclasses
    (an option two methods share, e.g. --chains, is one flag whose help names both)."""
    from .separation.methods import METHODS

    p.add_argument("--method", choices=list(METHODS),
                   help="; ".join(f"{name}: {spec.summary}" for name, spec in METHODS.items())
                        + " (default: the model set's, or inferred from --model)")
    types = {"positive_int": _positive_int, "count": _count, "positive_float": _positive_float,
             "fraction": _fraction, "path": _path, None: None}
    group = p.add_argument_group("method options (default: the method's own)")
    fields: dict[str, list] = {}
    for spec in METHODS.values():
        for f in dataclasses.fields(spec.options):
            fields.setdefault(f.name, []).append((spec.label, f.metadata))
    for name, owners in fields.items():
        meta = owners[0][1]
        kwargs = {"type": types[meta["kind"]], "choices": meta["choices"], "metavar": meta["metavar"]}
        group.add_argument("--" + name.replace("_", "-"), dest=name,
                           help="; ".join(f"{label}: {m['help']}" for label, m in owners),
                           **{k: v for k, v in kwargs.items() if v is not None})


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the bundled model sets: sources, methods, size and scores")
    p.set_defaults(run=_cmd_models)


def _add_separate(sub) -> None:
    p = sub.add_parser("separate", help="separate audio files, folders or dataset splits into OUT/<name>/<track>/<source>.wav")
    p.add_argument("inputs", nargs="+", type=_path, metavar="INPUT",
                   help="audio files (wav/flac/ogg/mp3/aiff, any rate/channels), folders (searched recursively; "
                        "tracks named by their relative paths) or dataset splits DATA/<split> (stems, MUSDB18 or "
                        "Slakh2100 layout: each track's mixture, named after its folder)")
    p.add_argument("-o", "--output", type=_path, default=Path("separated"), help="output folder (default: separated)")
    p.add_argument("-n", "--name", metavar="NAME",
                   help="the bundled model set to run (audiosep models lists them; default piano_violin), its "
                        "stems in OUT/<NAME>/<track>/ (OUT/<NAME>_<method>/ for a method other than the set's "
                        "default); with --model, the name of the output folder instead (default: the file's stem, "
                        "or the folder the --model files share)")
    p.add_argument("--model", type=_path, nargs="+", metavar="PATH",
                   help="your own model files instead of a bundled set: one NMF model or mask network file, one "
                        "prior checkpoint per source for BASIS (named after the files: piano.pt violin.pt → "
                        "piano, violin), an LQ-VAE and one code prior per source for latent, or one VAE for "
                        "vae-bss")
    _add_method_options(p)
    p.add_argument("-d", "--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--threads", type=_thread_count,
                   help="torch CPU threads (default: torch's choice; 1 is fastest on a busy machine)")
    p.add_argument("--segment", type=_positive_float, default=30.0, help="chunk length in seconds (default 30)")
    p.add_argument("--overlap", type=_non_negative_float, default=1.0, help="seconds cross-faded between chunks (default 1)")
    p.add_argument("--seed", type=_seed, default=0)
    out = p.add_argument_group("output files")
    out.add_argument("--format", choices=["wav", "flac", "mp3"], default="wav", help="container (default wav)")
    out.add_argument("--bits", choices=["16", "24", "32f"],
                     help="sample format: 16/24-bit integer or 32-bit float (default: 32f for wav, so the stems sum "
                          "back to the mixture exactly; 24 for flac; none for mp3)")
    out.add_argument("--clip-mode", choices=["rescale", "clamp", "none"], default="rescale",
                     help="stems with peaks above full scale: rescale all stems of the track by one factor (default; "
                          "said on stderr), clamp at ±1, or none (float wav only)")
    runs = p.add_argument_group("collections")
    runs.add_argument("--strict", action="store_true",
                      help="stop at the first input that fails (default: report it, skip it, go on; exit status 1)")
    runs.add_argument("--jobs", type=_thread_count, default=1,
                      help="processes, each separating every N-th input (results equal one process's)")
    runs.add_argument("--shard", metavar="I/N", help="separate only inputs I, I+N, I+2N, ... (default: the torchrun "
                                                     "RANK/WORLD_SIZE, if set)")
    p.set_defaults(run=_cmd_separate)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors ("audiosep separate: error: ..., see --help"), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="audiosep", description="Audio source separation with deep generative priors."
    )
    parser.add_argument("--version", action="version", version=f"audiosep {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_separate, _add_models, _add_synth, _add_mel, _add_invert, _add_evaluate, _add_oracle,
                _add_report, _add_plot, _add_train, _add_export):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `audiosep` console script; returns the exit status.

    0: done; 1: some inputs of a collection failed (listed); 2: a user error (one line);
    130 / 143: interrupted by Ctrl-C / SIGTERM (temporary files removed; a training writes
    its checkpoint first).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, --version, or a usage error (already printed on one line)
        return int(done.code or 0)
    args.argv = argv
    from .devices import keep_freed_memory

    keep_freed_memory()  # no page-fault churn in training and Langevin loops (see its docstring)
    _one_line_warnings(args.command)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 alone reports (errors: every rank)
        _silence_stdout()
    previous = _terminate_as_interrupt()
    try:
        return args.run(args) or 0
    except UserError as err:
        _print_ending(f"audiosep {args.command}: error: {err}")
        return 2
    except Terminated:
        _print_ending("audiosep: terminated")
        return 143
    except KeyboardInterrupt:
        _print_ending("audiosep: interrupted")
        return 130
    except MemoryError:  # an allocation the sizes asked for cannot get (torch's own says "not enough memory")
        _print_ending(f"audiosep {args.command}: error: out of memory: the sizes asked for need more memory "
                      "than this machine has")
        return 2
    except RuntimeError as err:
        if not any(text in str(err) for text in ("not enough memory", "DefaultCPUAllocator", "out of memory")):
            raise  # torch.cuda.OutOfMemoryError says "CUDA out of memory"
        from .io import first_line

        _print_ending(f"audiosep {args.command}: error: out of memory ({first_line(err)})")
        return 2
    except BrokenPipeError:  # e.g. `audiosep synth --list | head`: the reader left
        _silence_stdout()
        return 0
    except OSError as err:  # a full disk, a vanished folder: what the checks before the work cannot see
        where = f" ({err.filename})" if err.filename else ""
        _print_ending(f"audiosep {args.command}: error: {err.strerror or err}{where}")
        return 2
    finally:
        _restore_signal(previous)


def _one_line_warnings(command: str) -> None:
    """Show warnings as "audiosep COMMAND: warning: ..." on stderr, without source lines, each
    on its own line above any progress bar (tqdm.write clears the bars and draws them again)."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        text = f"audiosep {command}: warning: {message}"
        if "tqdm" in sys.modules:
            sys.modules["tqdm"].tqdm.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    warnings.showwarning = show


def _print_ending(message: str) -> None:
    """Print the line that ends the command on stderr after closing the progress bars still open
    (the exception left them mid-line), so the message starts on a line of its own."""
    if "tqdm" in sys.modules:
        for bar in list(sys.modules["tqdm"].tqdm._instances):
            bar.close()
    print(message, file=sys.stderr)


def _terminate_as_interrupt():
    """Make SIGTERM raise `Terminated` (main thread only); the previous handler, to restore."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise Terminated()

    return signal.signal(signal.SIGTERM, handler)


def _restore_signal(previous) -> None:
    import signal

    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def _silence_stdout() -> None:
    """Point stdout at /dev/null: after a broken pipe (so the interpreter's final flush does not
    fail again), and on torchrun ranks other than 0 (one report per training, not one per process)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
