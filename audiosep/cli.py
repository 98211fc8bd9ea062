"""The `audiosep` command: parse arguments, call library functions, print. No logic here.

A `UserError` (bad file, bad argument, wrong checkpoint) prints one line and exits 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .errors import UserError


def _cmd_synth(args: argparse.Namespace) -> None:
    from .data.augment import Augmentation
    from .data.synth import list_pieces, synthesize

    if args.list:
        for piece in list_pieces(args.preset):
            print(f"{piece.split}\t{piece.path}")
        return
    if args.output is None:
        raise UserError("synth needs -o/--output DIR (or --list)")
    counts = args.tracks
    if any(n is not None for n in (args.train, args.valid, args.test)):
        counts = {s: n or 0 for s, n in (("train", args.train), ("valid", args.valid), ("test", args.test))}
    index = synthesize(
        args.preset, args.output, n_tracks=counts, excerpts_per_piece=args.excerpts_per_piece,
        duration=args.duration, sample_rate=args.sample_rate, seed=args.seed, soundfonts=args.soundfont,
        pieces=args.piece, gain_db=args.gain_db, timeout=args.timeout, overwrite=args.overwrite,
        font_per_source=args.font_per_source,
        augmentation=Augmentation(tempo=args.tempo, detune_cents=args.detune_cents, velocity=args.velocity,
                                  expression=args.expression, eq_db=args.eq_db, reverb=args.reverb),
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
    from .spectral.files import invert_mel_file

    path = invert_mel_file(args.input, args.output, method=args.method, mix=args.mix,
                           n_iter=args.iters, seed=args.seed)
    print(f"wrote {path}")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from .eval.report import evaluate_dirs, summarize, write_reports

    table = evaluate_dirs(args.references, args.estimates, args.win, args.hop, method=args.method)
    paths = write_reports(table, args.output, args.win)
    _print_summary(summarize(table))
    print("wrote " + ", ".join(str(p) for p in paths))


def _cmd_oracle(args: argparse.Namespace) -> None:
    from .eval.report import summarize
    from .oracle.dataset import oracle_dataset

    table, paths = oracle_dataset(args.method, args.data, args.output, split=args.split,
                                  preset=args.preset, win_seconds=args.win)
    _print_summary(summarize(table))
    print("wrote " + ", ".join(str(p) for p in paths))


def _valid_text(valid_loss: float, label: str, unit: str = "") -> str:
    """"<label> 0.1234<unit>", or "no validation run" where a training returned NaN (none ran)."""
    import math

    return "no validation run" if math.isnan(valid_loss) else f"{label} {valid_loss:.4f}{unit}"


def _cmd_train_ncsn(args: argparse.Namespace) -> None:
    import dataclasses

    import torch

    from .config import from_dict, load_yaml
    from .train import NCSNRun, train_ncsn

    run = load_yaml(NCSNRun, args.config) if args.config else from_dict(NCSNRun, {})
    overrides = {k: getattr(args, k) for k in ("steps", "batch_size", "lr", "seed") if getattr(args, k) is not None}
    model_overrides = {k: getattr(args, k) for k in ("version", "nf") if getattr(args, k) is not None}
    if args.init_from is not None and model_overrides:
        raise UserError("--version/--nf: the network of --init-from is fine-tuned as it is; give one or the other")
    if args.threads:
        torch.set_num_threads(args.threads)
    result = train_ncsn(args.data, args.source, args.output, preset=args.preset,
                        model_config=dataclasses.replace(run.model, **model_overrides),
                        config=dataclasses.replace(run.train, **overrides), device=args.device,
                        init_from=args.init_from)
    print(f"{args.output}: step {result['step']}, loss {result['loss']:.4f}, "
          f"{_valid_text(result['valid_loss'], 'valid loss')}")


def _cmd_train_flow(args: argparse.Namespace) -> None:
    import dataclasses

    import torch

    from .config import from_dict, load_yaml
    from .train import FlowRun, train_flow

    run = load_yaml(FlowRun, args.config) if args.config else from_dict(FlowRun, {})
    overrides = {k: getattr(args, k) for k in ("steps", "batch_size", "lr", "seed") if getattr(args, k) is not None}
    model_overrides = {k: getattr(args, k) for k in ("conditioning", "levels", "depth", "hidden")
                       if getattr(args, k) is not None}
    finetune_steps = args.finetune_steps if args.finetune_steps is not None else run.finetune_steps
    if args.threads:
        torch.set_num_threads(args.threads)
    result = train_flow(args.data, args.source, args.output, arch=args.kind, preset=args.preset,
                        model_config=dataclasses.replace(run.model, **model_overrides),
                        config=dataclasses.replace(run.train, **overrides), finetune_steps=finetune_steps,
                        device=args.device)
    for member in result.get("members", []):
        print(f"  sigma {member['sigma']:.4g}: step {member['step']}, "
              f"{_valid_text(member['valid_loss'], 'valid', ' bits/dim')}")
    print(f"{args.output}: step {result['step']}, loss {result['loss']:.4f} bits/dim, "
          f"{_valid_text(result['valid_loss'], 'valid', ' bits/dim')}")


def _cmd_train_nmf(args: argparse.Namespace) -> None:
    from .separation.nmf import train_nmf

    model = train_nmf(args.data, args.output, args.sources, n_atoms=args.atoms, split=args.split,
                      max_minutes=args.max_minutes, max_frames=args.max_frames, n_iter=args.iters,
                      sample_rate=args.sample_rate, n_fft=args.n_fft, hop_length=args.hop, seed=args.seed)
    print(f"wrote {args.output}: {model.n_atoms} atoms for each of {', '.join(model.sources)} "
          f"({model.domain.describe()})")


def _cmd_export(args: argparse.Namespace) -> None:
    from .priors import export_prior

    path = export_prior(args.checkpoint, args.output)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


def _cmd_separate(args: argparse.Namespace) -> None:
    from .separation import (BUNDLED_NMF, BUNDLED_PRIORS, MelBasis, NMFModel, Separator, separate_files,
                             separation_method)
    from .separation.mel_basis import baseline_mismatch, default_basis

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    models = args.model or []
    basis_options = {"--steps": args.steps, "--levels": args.levels, "--inversion": args.inversion,
                     "--init": args.init, "--init-model": args.init_model, "--likelihood": args.likelihood,
                     "--corrections": args.corrections, "--chains": args.chains}
    method = separation_method(models, args.method)
    if method == "nmf":
        given = [flag for flag, value in basis_options.items() if value is not None]
        if given:
            raise UserError(f"{', '.join(given)}: BASIS option(s), but the model is NMF; give prior checkpoints")
        model = NMFModel.load(models[0] if models else BUNDLED_NMF)
    else:
        if args.init_model and args.init not in (None, "nmf"):
            raise UserError(f"--init-model is the NMF model of --init nmf, not of --init {args.init}")
        priors = MelBasis.from_files(models or BUNDLED_PRIORS, device=args.device)
        baseline = NMFModel.load(args.init_model or BUNDLED_NMF) if args.init in (None, "nmf") else None
        init = args.init or ("nmf" if baseline_mismatch(baseline, priors.sources, priors.sample_rate) is None
                             else "mixture")
        config = default_basis(init, seed=args.seed, steps_per_level=args.steps, n_levels=args.levels,
                               likelihood=args.likelihood, corrections=args.corrections, n_chains=args.chains)
        model = MelBasis(priors.priors, config, priors.sources, inversion=args.inversion or "wiener",
                         init_from=baseline if init == "nmf" else None)
    separator = Separator(model, segment=args.segment, overlap=args.overlap, device=args.device, seed=args.seed)
    for stems in separate_files(args.inputs, args.output, separator):
        print("wrote " + ", ".join(str(p) for p in stems.values()))


def _print_summary(summary) -> None:
    wide = summary.pivot_table(index=["method", "target"], columns="metric", values="score")
    print(wide.round(2).to_string())


def _add_synth(sub) -> None:
    p = sub.add_parser("synth", help="render a multi-stem dataset from the music21 corpus with FluidSynth")
    p.add_argument("preset", choices=["piano_violin", "drums_bass"])
    p.add_argument("-o", "--output", type=Path, help="dataset folder (DATA/<split>/<track>/{mix,<source>}.wav)")
    p.add_argument("--list", action="store_true", help="list the usable corpus pieces and their splits, then exit")
    p.add_argument("--tracks", type=int, help="excerpts in all (shared by the split fractions); default: all pieces")
    p.add_argument("--train", type=int, help="excerpts in the train split (with --valid/--test)")
    p.add_argument("--valid", type=int, help="excerpts in the valid split")
    p.add_argument("--test", type=int, help="excerpts in the test split")
    p.add_argument("--excerpts-per-piece", type=int, default=4)
    p.add_argument("--duration", type=float, default=10.0, help="excerpt length in seconds (default 10)")
    p.add_argument("--sample-rate", type=int, default=16000, help="Hz (default 16000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--soundfont", nargs="+", help="one or more .sf2/.sf3 files (one drawn per piece; "
                   "the MuseScore General ones are reserved for evaluation and refused)")
    p.add_argument("--font-per-source", action="store_true", help="draw a soundfont for every source of a piece")
    p.add_argument("--piece", nargs="+", help="restrict to these corpus paths (e.g. bach/bwv66.6.mxl)")
    p.add_argument("--gain-db", type=float, default=0.0,
                   help="random gain per source in ±dB around equal loudness (sources then differ by up to 2x)")
    aug = p.add_argument_group("augmentation (random per piece/source, drawn from --seed; all off by default)")
    aug.add_argument("--tempo", type=float, default=0.0, help="note times scaled by 1 ± this fraction (e.g. 0.1)")
    aug.add_argument("--detune-cents", type=float, default=0.0, help="pitch bend per source in ± cents (e.g. 30)")
    aug.add_argument("--velocity", type=float, default=0.0,
                     help="velocity offset per source in ± MIDI units, half of it again per note (e.g. 20)")
    aug.add_argument("--expression", type=float, default=0.0,
                     help="depth (0-1) of a slow random expression (CC 11) curve per source (e.g. 0.4)")
    aug.add_argument("--eq-db", type=float, default=0.0, help="random low/high-shelf and peak EQ per source in ± dB")
    aug.add_argument("--reverb", type=float, default=0.0,
                     help="probability that a piece is played in a (random) room, one per piece (e.g. 0.7)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds allowed per FluidSynth render")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in the folder")
    p.set_defaults(run=_cmd_synth)


def _add_mel(sub) -> None:
    p = sub.add_parser("mel", help="audio → normalised mel spectrogram (.npy, .json settings, .png picture)")
    p.add_argument("input", type=Path, help="audio file (wav/flac/ogg/mp3)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output .npy (C, n_mels, frames) in [0, 1]")
    p.add_argument("--preset", default="default", help="front-end preset (default, audiosourcesep)")
    p.add_argument("--no-png", action="store_true", help="do not draw the picture")
    p.set_defaults(run=_cmd_mel)


def _add_invert(sub) -> None:
    p = sub.add_parser("invert", help="mel spectrogram (.npy written by `audiosep mel`) → audio")
    p.add_argument("input", type=Path, help=".npy written by `audiosep mel` (its .json must be beside it)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output audio file")
    p.add_argument("--method", choices=["griffinlim", "phase"], default="griffinlim",
                   help="phase from Griffin-Lim, or from --mix")
    p.add_argument("--mix", type=Path, help="audio whose STFT phase to use (with --method phase)")
    p.add_argument("--iters", type=int, default=64, help="Griffin-Lim iterations (fast variant)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_cmd_invert)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="BSSEval v4 of estimates against references (museval-compatible)")
    p.add_argument("references", type=Path, help="folder of tracks: REF_DIR/<track>/<source>.wav")
    p.add_argument("estimates", type=Path, help="folder of tracks: EST_DIR/<track>/<source>.wav")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="report folder, or a .csv path (summary.csv and json/ go beside it)")
    p.add_argument("--win", type=float, default=1.0, help="window in seconds (default 1)")
    p.add_argument("--hop", type=float, help="hop in seconds (default: the window)")
    p.add_argument("--method", default="estimates", help="name for the method column")
    p.set_defaults(run=_cmd_evaluate)


def _add_oracle(sub) -> None:
    p = sub.add_parser("oracle", help="oracle separation of a stems dataset, written and evaluated")
    p.add_argument("data", type=Path, help="dataset folder DATA/<split>/<track>/{mix,<source>}.wav (or MUSDB18/Slakh)")
    p.add_argument("--method", required=True,
                   help="ibm, irm1, irm2, mwf, mix (mixture / K), mel-ibm, mel-irm, mel-ideal (mel-oracle ceiling)")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="folder for OUT/<track>/<source>.wav and the reports")
    p.add_argument("--split", default="test", help="dataset split (default test)")
    p.add_argument("--preset", default="default", help="front end for the mel oracles")
    p.add_argument("--win", type=float, default=1.0, help="BSSEval window in seconds (default 1)")
    p.set_defaults(run=_cmd_oracle)


def _add_prior_data(p) -> None:
    """The data and output options every `train PRIOR` command shares."""
    p.add_argument("--data", type=Path, required=True, help="stems dataset DATA/{train,valid}/<track>/<source>.wav")
    p.add_argument("--source", required=True, help="the source to model, e.g. piano")
    p.add_argument("-o", "--output", type=Path, required=True, help="checkpoint file (rewritten atomically)")
    p.add_argument("--preset", default="default", help="front end (default, audiosourcesep)")


def _add_prior_run(p) -> None:
    """The optimiser and machine options every `train PRIOR` command shares."""
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model on a stems dataset (ncsn, glow, realnvp priors; nmf baseline)")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")  # ncsn, glow, realnvp, nmf
    ncsn = kinds.add_parser("ncsn", help="NCSN score network on [0, 1] mel patches (resumes from -o)")
    _add_prior_data(ncsn)
    ncsn.add_argument("--config", type=Path, help="YAML with `model:` (NCSNConfig) and `train:` (TrainConfig)")
    ncsn.add_argument("--version", choices=["v1", "v2"], help="network (default v2)")
    ncsn.add_argument("--nf", type=int, help="base width of the network")
    ncsn.add_argument("--steps", type=int, help="total optimiser steps (across resumes)")
    ncsn.add_argument("--init-from", type=Path, metavar="PRIOR",
                      help="fine-tune: start from this NCSN checkpoint's weights, network and sigma schedule "
                           "(same front end); steps count from 0")
    _add_prior_run(ncsn)
    ncsn.set_defaults(run=_cmd_train_ncsn)

    for kind, name in (("glow", "Glow"), ("realnvp", "RealNVP")):
        _add_train_flow(kinds.add_parser(kind, help=f"{name} flow prior on [0, 1] mel patches (resumes from -o)"))

    nmf = kinds.add_parser("nmf", help="supervised NMF: one spectral dictionary per source")
    nmf.add_argument("--data", type=Path, required=True, help="stems dataset DATA/<split>/<track>/{mix,<source>}.wav")
    nmf.add_argument("-o", "--output", type=Path, required=True, help="model file to write (.pt)")
    nmf.add_argument("--sources", nargs="+", help="sources to learn (default: all in the split)")
    nmf.add_argument("--atoms", type=int, default=64, help="atoms per source (default 64)")
    nmf.add_argument("--split", default="train", help="dataset split (default train)")
    nmf.add_argument("--max-minutes", type=float, help="read at most this much audio (default: all)")
    nmf.add_argument("--max-frames", type=int, default=20000, help="STFT frames per source kept (default 20000)")
    nmf.add_argument("--iters", type=int, default=200, help="NMF iterations (default 200)")
    nmf.add_argument("--sample-rate", type=int, default=16000, help="Hz (default 16000)")
    nmf.add_argument("--n-fft", type=int, default=4096, help="STFT size in samples (default 4096)")
    nmf.add_argument("--hop", type=int, default=1024, help="STFT hop in samples (default 1024)")
    nmf.add_argument("--seed", type=int, default=0)
    nmf.set_defaults(run=_cmd_train_nmf)


def _add_train_flow(flow) -> None:
    _add_prior_data(flow)
    flow.add_argument("--config", type=Path,
                      help="YAML with `model:` (FlowConfig), `train:` (TrainConfig) and `finetune_steps`")
    flow.add_argument("--conditioning", choices=["none", "sigma", "bundle"],
                      help="sigma: one sigma-conditioned flow (default); bundle: one flow per BASIS sigma, "
                           "trained from low to high noise (members kept in OUTPUT_members/); none: one flow")
    flow.add_argument("--levels", type=int, help="scales of the flow (default 3)")
    flow.add_argument("--depth", type=int, help="flow steps per scale")
    flow.add_argument("--hidden", type=int, help="width of the coupling networks")
    flow.add_argument("--steps", type=int, help="total optimiser steps (across resumes; a bundle's first member)")
    flow.add_argument("--finetune-steps", type=int, help="bundle: steps of each later member (default: --steps)")
    _add_prior_run(flow)
    flow.set_defaults(run=_cmd_train_flow)


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="weights-only copy of a prior's training checkpoint (to bundle or share)")
    p.add_argument("checkpoint", type=Path, help="a prior checkpoint written by `audiosep train`")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="the copy: EMA weights, config, domain, step; no optimiser state")
    p.set_defaults(run=_cmd_export)


def _add_separate(sub) -> None:
    p = sub.add_parser("separate", help="separate audio files into OUT/<track>/<source>.wav")
    p.add_argument("inputs", nargs="+", type=Path, metavar="FILE", help="audio files (wav/flac/ogg/mp3, any rate/channels)")
    p.add_argument("-o", "--output", type=Path, default=Path("separated"), help="output folder (default: separated)")
    p.add_argument("--model", type=Path, nargs="+", metavar="PATH",
                   help="one NMF model file, or one prior checkpoint per source for BASIS, named after the "
                        "files (piano.pt violin.pt → piano, violin); default: the bundled piano/violin NCSN priors "
                        "(BASIS), or the bundled piano/violin NMF model with --method nmf")
    p.add_argument("--method", choices=["nmf", "basis"],
                   help="nmf or basis (default: inferred from --model; basis without it)")
    p.add_argument("--steps", type=int, help="BASIS: Langevin steps per noise level (default 10)")
    p.add_argument("--levels", type=int,
                   help="BASIS: noise levels, σ geometric down to 0.01 (default: 4 from σ 0.05 for --init nmf, "
                        "7 from 0.3 for mixture, 10 from 1 for uniform)")
    p.add_argument("--init", choices=["nmf", "mixture", "uniform"],
                   help="BASIS: start from the stems of an NMF model (then annealed from a low σ), an equal split "
                        "of the mixture, or U(0, 1) noise; default: nmf when the NMF model separates the priors' "
                        "sources at their rate (the bundled one: piano, violin at 16 kHz), else mixture")
    p.add_argument("--init-model", type=Path, metavar="PATH",
                   help="BASIS --init nmf: the NMF model (default: the bundled one)")
    p.add_argument("--likelihood", choices=["gaussian", "dirac"],
                   help="BASIS: the mixture as a Gaussian constraint in the drift, or exactly (dirac: every step "
                        "projected back onto the mixture)")
    p.add_argument("--corrections", type=int, metavar="N",
                   help="BASIS: re-noising correction rounds per noise level (denoise, re-noise, run the level again)")
    p.add_argument("--chains", type=int, metavar="N",
                   help="BASIS: independent chains, averaged as powers (default 1)")
    p.add_argument("--inversion", choices=["wiener", "wiener-mc", "phase", "griffinlim"],
                   help="BASIS: mel → audio by Wiener masks on the mixture (default), the multichannel Wiener filter "
                        "(a stereo image per source), mixture phase, or Griffin-Lim")
    p.add_argument("-d", "--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads (default: torch's choice; 1 is fastest on a busy machine)")
    p.add_argument("--segment", type=float, default=30.0, help="chunk length in seconds (default 30)")
    p.add_argument("--overlap", type=float, default=1.0, help="seconds cross-faded between chunks (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_cmd_separate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audiosep", description="Audio source separation with deep generative priors."
    )
    parser.add_argument("--version", action="version", version=f"audiosep {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_separate, _add_synth, _add_mel, _add_invert, _add_evaluate, _add_oracle, _add_train, _add_export):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `audiosep` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except UserError as err:
        print(f"audiosep {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("audiosep: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
