"""The default separation (the mask network), BASIS against its ceiling, the oracles and the
supervised NMF baseline, on one split or on folds.

    python benchmarks/separation.py                                  # bundled priors, data/piano_violin test split
    python benchmarks/separation.py --priors piano.pt violin.pt --basis glow=pg.pt,vg.pt \\
        --tradeoff 5x10 10x10 20x10 --tradeoff-tracks 5 -o reports/separation
    python benchmarks/separation.py --no-mixture-init --folds data/piano_violin_folds/* \\
        --train-data data/piano_violin_real                          # honest folds (below)

Every method gets the same tracks of `DATA/<split>` (never the reserved composers: the
synthesized splits exclude them) and is scored with BSSEval v4 (1 s windows, museval's
definition) by `audiosep.eval.report.score_track`. Rows of the main table (median over
windows, then tracks, of SDR / SIR / SAR per source):

- `basis-NAME`: `Separator(MelBasis(priors))` at the settings `audiosep separate --model`
  uses (`default_basis("mixture")`, half-patch hop, Wiener inversion): resampling, level
  normalisation, chunks; one row per `--priors` / `--basis` set.
- `basis-NAME+nmf`: the same priors started from the NMF model's stems (`--init nmf`,
  `default_basis("nmf")`: a short anneal from a low σ; the NNLS starts from NMF's spectra).
- `mel-ideal`: the true sources' mel powers through the same inversion (NNLS + Wiener on the
  mixture STFT): the ceiling of any method that estimates mel powers on that front end.
- `mel-ideal+nmf`: the true mel powers with the NNLS started from the NMF model's spectra
  (the inversion of `+nmf`): what a perfect prior would give started from NMF, the ceiling
  of the `+nmf` rows.
- `irm2`, `mix`: the IRM (α = 2) oracle and the mixture / K.
- `nmf`: the supervised NMF model (`--nmf`, default the bundled one) through `Separator`.
- `masknet`: the supervised mask network (`--masknet`, default the bundled one, trained on the
  same data): the default `audiosep separate`.
- `basis-NAME+masknet`: the `+nmf` schedule started from the mask network's stems instead of
  NMF's: `audiosep separate --method basis`.
- `basis-NAME+truth` (`--from-truth`): the `+nmf` schedule started from the true stems, a
  diagnostic: its gap to `irm2` is what the priors cost wherever the chains start.

- `basis-NAME+nmf/VARIANT`, `basis-NAME+masknet/VARIANT` (`--variant VARIANT=key=value,...`):
  the `+nmf` and `+masknet` rows with
  `BasisConfig` fields changed, e.g. `dirac=likelihood=dirac`, `corr=corrections=1`,
  `chains4=n_chains=4`, `wide=sigma_max=0.1,n_levels=5,init_noise=true`; the key
  `hop_frames` sets `MelBasis`'s patch hop instead (`h64=hop_frames=64`: no overlap).

Below it, CPU seconds per second of audio of each separation (separation only: reading and
scoring excluded; torch on `--threads` threads, default 1, the stable figure on a shared
machine), and the trade-off table: steps per level × levels → median SDR per source and
CPU s/s, for the first prior set on the first `--tradeoff-tracks` tracks. With `--levels
-12 -6 0 6 12`: the level/room table, the median SDR of each source for the default
`audiosep separate` (the mask network), for BASIS started from it and for NMF, beside the mixture / K,
with the last source (violin) that many dB above its level in the track, dry and with every
stem in one random room (`augment_audio`, seeded by the track's name). Use it on a split whose
sources are at equal loudness (`synth` without `--gain-db`, e.g. the TimGM6mb test split).

`--long 10 60 600` (alone: the quality tables are skipped): the cost of the default
`audiosep separate` (with `--set NAME`: of each of its methods, or those `--only` names) on long inputs, run as the command itself in a child process on a 44.1 kHz
stereo file made of the split's mixtures end to end, at `--segments` (default 10 and 30 s):
wall, user and system seconds per second of audio, minor page faults, the child's peak memory,
and each row's CPU s/s against the first row's. The costs per second should not depend on the
segment or the input length, the system time should stay a small part of the user time.

`--folds DIR [DIR ...]` (with `--train-data DIR [DIR ...]`): the honest folds. Every track the
bundled models trained on is a Bach chorale, and so is the synthesized test split, so its scores
flatter them; a fold is a dataset (`audiosep synth`, e.g. stage 5 of recipes/piano_violin/run.sh:
a group of composers × one soundfont, each training soundfont in turn and TimGM6mb) whose `test`
split holds only composers none of whose pieces the models saw, named after its folder. The
composers of the train and valid tracks of each `--train-data` dataset (its index.json records
each track's piece and composer) must not appear in any fold's test tracks: such a fold (or a
reserved composer, or a fold without index.json) is refused before anything runs. The main rows
run on the first `--tracks` test tracks of each fold: the BASIS rows (`basis-NAME+nmf`,
`basis-NAME+masknet`, the other prior sets and `--variant`s, `basis-NAME` unless
`--no-mixture-init`), `nmf`, the default `masknet`, and the oracles `irm2` and `mix` (the mixture / K; the mel ceilings
are left out). Printed: one table per fold (median SDR / SIR / SAR per source), the fold ×
(method, source) table of median SDR with the mean over folds and the worst fold below it, the
fold where each method and source is worst, the default's margin over NMF per fold (default −
nmf, per source) with its mean and minimum, and the CPU s/s of each method over all folds. With
`-o`, each fold's reports go to OUTPUT/<fold>/ and the fold table to OUTPUT/folds_sdr.csv.
`--levels`, `--tradeoff` and `--long` work on `--data` only.

The rows are built by `build_methods(args, ...)` (separations of the mixture) and
`build_oracles(args, ...)` (from the true stems), in both modes: a new row is one entry there.

`--set NAME` (e.g. `--set drums_bass`, on folds of recipes/drums_bass/run.sh stage 5): the rows
are the methods of a bundled model set instead, each as `audiosep separate -n NAME --method M`
runs it, beside the oracles `irm2` and `mix`; with `--manifest` its scores go into that set's
manifest. `--set-folder DIR` reads the set's manifest from DIR instead of the bundled sets'
folder: a retrained set (a copy of the manifest naming its own files, relative to DIR) is scored
exactly as the bundled one before it replaces it.
"""
from __future__ import annotations

import argparse
import json
import itertools
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from audiosep.config import from_dict
from audiosep.data.augment import Augmentation, augment_audio
from audiosep.data.stems import list_tracks, load_track
from audiosep.data.synth import is_reserved
from audiosep.errors import run_reporting_user_errors
from audiosep.eval.report import score_track, summarize, write_reports
from audiosep.io import resample, write_audio
from audiosep.separation.methods import METHODS
from audiosep.oracle import run_oracle
from audiosep.separation.basis import BasisConfig
from audiosep.priors.masknet import load_masknets
from audiosep.separation.mel_basis import LEVEL_DB, MelBasis, baseline_powers, default_basis
from audiosep.separation.nmf import NMFModel
from audiosep.separation.separator import Method, Separator, level_gain
from audiosep.spectral.frontend import Frontend
from audiosep.spectral.inversion import invert_mel_powers
from audiosep.zoo import PRETRAINED, bundled, model_set

SeparateFn = Callable[[np.ndarray, int], np.ndarray]
OracleFn = Callable[[np.ndarray, int], np.ndarray]  # (true stems (K, C, N), rate) → estimates
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / "data" / "piano_violin"  # the recipe's FluidR3 dataset


def basis_separator(paths: list[Path], config: BasisConfig, sources: list[str], init_from: Method | None = None,
                    **options) -> Separator:
    """`Separator(MelBasis)` over one prior checkpoint per source (CPU, no progress bars);
    `options`: more keyword options of `MelBasis` (e.g. `hop_frames`)."""
    method = MelBasis.from_files(paths, config, sources=sources, progress=False, init_from=init_from, **options)
    return Separator(method, progress=False)


class TrueStems:
    """A `Separator` method that returns the true stems of the current track, levelled as
    `Separator` levels the mixture: the starting point of the `from-truth` diagnostic."""

    def __init__(self, sources: list[str], sample_rate: int, level_db: float) -> None:
        self.sources, self.sample_rate, self.level_db = tuple(sources), sample_rate, level_db
        self.stems: torch.Tensor | None = None

    def set(self, refs: np.ndarray) -> None:
        """The true stems `(K, C, N)` of the track about to be separated."""
        self.stems = torch.from_numpy(refs * level_gain(refs.sum(axis=0), self.level_db)).float()

    def __call__(self, mix: torch.Tensor) -> torch.Tensor:
        return self.stems.to(mix)


def basis_from_truth(paths: list[Path], sources: list[str]) -> SeparateFn:
    """An oracle: BASIS with the `--init nmf` schedule started from the true stems. What it
    loses against `irm2` (the inversion then starts from the true spectra) is what the
    priors themselves cost, independent of how the chains are started."""
    method = MelBasis.from_files(paths, default_basis("nmf"), sources=sources, progress=False)
    return with_true_stems(lambda truth: MelBasis(method.priors, method.config, sources, init_from=truth,
                                                  progress=False), sources, method.sample_rate, method.level_db)


class MelIdealFrom:
    """A `Separator` method: the true stems' mel powers through the inversion of BASIS started
    from `baseline` (NNLS started from the baseline's spectra, Wiener masks): what a perfect
    prior would give with `--init nmf`, the ceiling of the `+nmf` rows."""

    channels = None

    def __init__(self, frontend: Frontend, baseline: NMFModel, truth: TrueStems) -> None:
        self.frontend, self.baseline, self.truth = frontend, baseline, truth
        self.sources, self.sample_rate, self.level_db = truth.sources, truth.sample_rate, truth.level_db

    def __call__(self, mix: torch.Tensor) -> torch.Tensor:
        _, reference = baseline_powers(self.frontend, self.baseline(mix))
        mel = self.frontend.mel_power(self.truth(mix).mean(dim=1))
        return invert_mel_powers(self.frontend, mel, mix, reference=reference)


def with_true_stems(method_for: Callable[[TrueStems], MelBasis | MelIdealFrom], sources: list[str],
                    sample_rate: int, level_db: float) -> SeparateFn:
    """An oracle `(refs, rate) → estimates` running `method_for(truth)` through `Separator`,
    `truth` holding the current track's true stems."""
    truth = TrueStems(sources, sample_rate, level_db)
    separator = Separator(method_for(truth), progress=False)

    def run(refs: np.ndarray, rate: int) -> np.ndarray:
        if rate != sample_rate:
            raise SystemExit(f"the oracles started from the true stems need data at {sample_rate} Hz, got {rate} Hz")
        truth.set(refs)
        return separator.separate(refs.sum(axis=0), rate)

    return run


Item = tuple[str, np.ndarray, np.ndarray, int]  # (track name, mixture (C, N), true stems (K, C, N), rate)


def dataset_items(tracks: list[Path], sources: list[str]) -> Iterator[Item]:
    """The tracks as they are on disk: their mixture and stems."""
    for track in tracks:
        mix, stems, rate = load_track(track)
        yield track.name, mix, np.stack([stems[s] for s in sources]), rate


def remixed_items(tracks: list[Path], sources: list[str], gain_db: float, reverb: bool) -> Iterator[Item]:
    """The tracks remixed: the last source `gain_db` dB louder than the others relative to the
    track's own balance (every synthesized test track has its sources at equal RMS), and with
    `reverb`, every stem played in one random room (`augment_audio`, seeded by the track name,
    the same room at every level); the mixture is the sum of the new stems."""
    for name, _, refs, rate in dataset_items(tracks, sources):
        gains = np.ones((len(sources), 1, 1), dtype=np.float32)
        gains[-1] = 10 ** (gain_db / 20)
        refs = refs * gains
        if reverb:
            seed = int.from_bytes(name.encode()[-8:], "little")
            wet, _ = augment_audio({s: refs[k, 0] for k, s in enumerate(sources)}, rate, Augmentation(reverb=1.0),
                                   np.random.default_rng(seed))
            refs = np.stack([wet[s][: refs.shape[-1]][None] for s in sources])
        yield name, refs.sum(axis=0), refs, rate


def run_methods(items: Iterable[Item], sources: list[str], methods: dict[str, SeparateFn],
                oracles: dict[str, SeparateFn], win: float, desc: str = "tracks"
                ) -> tuple[pd.DataFrame, dict[str, float]]:
    """Score every method and oracle on every item.

    Returns:
        (the long report table of all methods, CPU seconds per second of audio of each
        method in `methods`; oracles are not timed).
    """
    tables, cpu, audio = [], dict.fromkeys(methods, 0.0), 0.0
    for name, mix, refs, rate in tqdm(list(items), desc=desc, unit="track"):
        audio += mix.shape[-1] / rate
        estimates = {}
        for method, separate in methods.items():
            start = time.process_time()
            estimates[method] = separate(mix, rate)
            cpu[method] += time.process_time() - start
        estimates.update({method: oracle(refs, rate) for method, oracle in oracles.items()})
        tables += [score_track(name, sources, refs, est, rate, win, method=method)
                   for method, est in estimates.items()]
    return pd.concat(tables, ignore_index=True), {method: t / audio for method, t in cpu.items()}


# ----------------------------------------------------------------------------- methods


def default_row(args: argparse.Namespace) -> str:
    """The row of the default `audiosep separate`: the mask network, or with `--set` the set's
    default method."""
    return model_set(args.set, args.set_folder).default if args.set else "masknet"


def set_methods(args: argparse.Namespace) -> dict[str, SeparateFn]:
    """`--set NAME`: one row per method of the bundled model set NAME, named after the method and
    run as `audiosep separate -n NAME --method M` runs it (its default options), the set's
    default first; `--only` keeps the rows it names."""
    bundled = model_set(args.set, args.set_folder)
    order = [bundled.default, *(method for method in bundled.methods if method != bundled.default)]
    unknown = sorted(set(args.only or []) - set(order))
    if unknown:
        raise SystemExit(f"--only: no row {', '.join(unknown)}; the rows of --set {args.set} are {', '.join(order)}")
    return {method: Separator.from_pretrained(args.set, method, folder=args.set_folder, progress=False).separate
            for method in order if not args.only or method in args.only}


def build_methods(args: argparse.Namespace, sources: list[str], nmf: NMFModel) -> dict[str, SeparateFn]:
    """Every separation row `(mixture (C, N), rate) → estimates (K, C, N)`, in table order:
    per prior set (`--priors`, `--basis`) BASIS from the mixture (unless `--no-mixture-init`),
    started from NMF and from the mask network (each with its `--variant`s), then NMF and the
    mask network alone (the default); `--only` keeps the rows it names. One more row is one
    more entry here."""
    methods: dict[str, SeparateFn] = {}
    variants = parse_variants(args.variant)
    baselines = {"nmf": nmf, "masknet": load_masknets(args.masknet)}
    for name, paths in {args.name: args.priors, **parse_basis(args.basis)}.items():
        if not args.no_mixture_init:
            methods[f"basis-{name}"] = basis_separator(paths, default_basis("mixture"), sources).separate
        for start, baseline in baselines.items():
            methods[f"basis-{name}+{start}"] = basis_separator(paths, default_basis("nmf"), sources, baseline).separate
            for variant, (overrides, options) in variants.items():
                methods[f"basis-{name}+{start}/{variant}"] = basis_separator(
                    paths, default_basis("nmf", **overrides), sources, baseline, **options).separate
    for start, baseline in baselines.items():
        methods[start] = Separator(baseline, progress=False).separate
    if args.only:
        unknown = sorted(set(args.only) - set(methods))
        if unknown:
            raise SystemExit(f"--only: no row {', '.join(unknown)}; the rows are {', '.join(methods)}")
        methods = {name: fn for name, fn in methods.items() if name in args.only}
    return methods


def build_oracles(args: argparse.Namespace, sources: list[str], frontend: Frontend | None, nmf: NMFModel | None,
                  ceilings: bool = True) -> dict[str, OracleFn]:
    """The oracle rows `(true stems, rate) → estimates`: the mel ceilings (with `ceilings`),
    IRM2, the mixture / K, and with `--from-truth` BASIS started from the true stems; `frontend`
    and `nmf` serve the ceilings only."""
    oracles: dict[str, OracleFn] = {}
    if ceilings:
        oracles["mel-ideal"] = lambda refs, rate: run_oracle("mel-ideal", refs, rate, frontend=frontend)
        oracles["mel-ideal+nmf"] = with_true_stems(lambda truth: MelIdealFrom(frontend, nmf, truth), sources,
                                                   frontend.sample_rate, LEVEL_DB)
    oracles["irm2"] = lambda refs, rate: run_oracle("irm2", refs, rate)
    oracles["mix"] = lambda refs, rate: run_oracle("mix", refs, rate)
    if args.from_truth:
        oracles[f"basis-{args.name}+truth"] = basis_from_truth(args.priors, sources)
    return oracles


# ----------------------------------------------------------------------------- folds


def read_index(folder: Path) -> dict:
    """A synthesized dataset's index.json (`audiosep synth`), refused if absent."""
    path = folder / "index.json"
    if not path.is_file():
        raise SystemExit(f"{folder}: no index.json (a dataset rendered by `audiosep synth`), "
                         "so its composers are unknown")
    return json.loads(path.read_text())


def _composer(record: dict) -> str:
    """The composer (corpus folder) of an index record."""
    return record.get("composer") or record["piece"].split("/")[0]


def training_composers(folders: list[Path]) -> dict[str, set[str]]:
    """{composer: its pieces} over the train and valid tracks of the training datasets."""
    seen: dict[str, set[str]] = {}
    for folder in folders:
        for record in read_index(folder)["tracks"]:
            if record["split"] in ("train", "valid"):
                seen.setdefault(_composer(record), set()).add(record["piece"])
    return seen


def fold_composers(folder: Path) -> dict[str, set[str]]:
    """{composer: its pieces} over the test tracks of one fold."""
    found: dict[str, set[str]] = {}
    for record in read_index(folder)["tracks"]:
        if record["split"] == "test":
            found.setdefault(_composer(record), set()).add(record["piece"])
    return found


def check_folds(folds: list[Path], train_data: list[Path]) -> dict[str, dict[str, set[str]]]:
    """{fold name: {composer: pieces}}; a SystemExit if a fold has no test tracks, a reserved
    composer, or a composer with any piece in the train or valid split of `train_data`."""
    trained = training_composers(train_data)
    names = [fold.name for fold in folds]
    if len(set(names)) < len(names):
        raise SystemExit(f"--folds: two folds share a folder name ({', '.join(names)})")
    checked = {}
    for fold in folds:
        composers = fold_composers(fold)
        if not composers:
            raise SystemExit(f"{fold}: no test tracks in index.json")
        reserved = sorted(c for c in composers if is_reserved(c))
        if reserved:
            raise SystemExit(f"{fold}: reserved composer(s) {', '.join(reserved)} (Haydn and Mozart are never used)")
        shared = sorted(set(composers) & set(trained))
        if shared:
            raise SystemExit(f"{fold}: composer(s) {', '.join(shared)} also in the training data "
                             f"({', '.join(map(str, train_data))}): not an honest fold")
        checked[fold.name] = composers
    return checked


def fold_label(index: dict, names: Iterable[str]) -> str:
    """`composer (n pieces), ...; soundfont(s)` of the tracks `names` of a fold's index."""
    names = set(names)
    used = [r for r in index["tracks"] if r["split"] == "test" and r["track"] in names]
    pieces: dict[str, set[str]] = {}
    for record in used:
        pieces.setdefault(_composer(record), set()).add(record["piece"])
    fonts = sorted({Path(f).name for r in used for f in r.get("source_soundfonts", {"": r["soundfont"]}).values()})
    return ", ".join(f"{c} ({len(p)} piece{'s' * (len(p) > 1)})" for c, p in pieces.items()) + "; " + ", ".join(fonts)


def fold_summary(sdr: dict[str, pd.DataFrame], methods: list[str], sources: list[str]) -> pd.DataFrame:
    """Fold × (method, source) median SDR, with the mean over folds and the worst fold below."""
    rows = {fold: table.reindex(methods).stack().reindex(pd.MultiIndex.from_product([methods, sources]))
            for fold, table in sdr.items()}
    summary = pd.DataFrame(rows).T
    summary.loc["mean"] = summary.loc[list(sdr)].mean()
    summary.loc["worst"] = summary.loc[list(sdr)].min()
    return summary


def worst_folds(summary: pd.DataFrame, folds: list[str]) -> pd.DataFrame:
    """Method × source: the fold where each method's median SDR is lowest."""
    methods = list(dict.fromkeys(summary.columns.get_level_values(0)))
    sources = list(dict.fromkeys(summary.columns.get_level_values(1)))
    return summary.loc[folds].idxmin().unstack().reindex(index=methods, columns=sources)


def margin_table(summary: pd.DataFrame, folds: list[str], row: str, baseline: str, sources: list[str]) -> pd.DataFrame:
    """Fold × source SDR of `row` minus `baseline`, with the mean and the minimum over folds."""
    margin = summary.loc[folds, row][sources] - summary.loc[folds, baseline][sources]
    margin.loc["mean"] = margin.loc[folds].mean()
    margin.loc["min"] = margin.loc[folds].min()
    return margin


def manifest_method(row: str) -> str | None:
    """The model set method a benchmark row measures: a row named after a method (masknet, nmf,
    and the rows of `--set`), or basis for `basis-NAME+masknet` (BASIS started from the mask
    network, as the bundled set runs it); None for other rows (oracles, variants)."""
    if row.startswith("basis-") and row.endswith("+masknet"):
        return "basis"
    return row if row in METHODS else None


def command_line(argv: list[str], folds: list[Path]) -> str:
    """This run's command, with the fold folders written `PARENT/*` when they are every fold of
    one folder (as the shell glob that named them), so the manifest stays readable."""
    text = "python benchmarks/separation.py " + shlex.join(argv)
    parents = {fold.parent for fold in folds}
    if len(parents) != 1:
        return text
    parent = parents.pop()
    if sorted(folds) != sorted(p for p in parent.iterdir() if (p / "index.json").is_file()):
        return text
    names = {str(fold) for fold in folds}
    start = next(i for i, arg in enumerate(argv) if arg in names)
    rest = [arg for arg in argv[start:] if arg not in names]
    return " ".join(["python benchmarks/separation.py", shlex.join(argv[:start]), f"{parent}/*", shlex.join(rest)])


def write_manifest_scores(path: Path, summary: pd.DataFrame, folds: list[str], cpu: dict[str, float],
                          command: str) -> None:
    """Put the mean over `folds` of the measured rows into the model set manifest at `path`
    (`audiosep/pretrained/<set>.json`, its `scores`), with each method's CPU seconds per second
    of audio (`cpu`, by row) and the command: the scores `audiosep models` prints come from this
    run, never typed in. Methods not measured keep their scores."""
    manifest = json.loads(path.read_text())
    scores = manifest.setdefault("scores", {})
    sdr, cost = scores.setdefault("sdr", {}), scores.setdefault("cpu_s_per_s", {})
    for row in summary.columns.get_level_values(0).unique():
        method = manifest_method(row)
        if method is not None and method in manifest["methods"]:
            sdr[method] = {source: round(float(summary.loc["mean", (row, source)]), 2)
                           for source in manifest["sources"]}
            cost[method] = float(f"{cpu[row]:.2g}")
    scores["material"] = (f"{len(folds)} honest folds (composers and a soundfont no model trained on), "
                          "mean of the folds' median SDR, dB")
    scores["command"] = command
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")


def run_folds(args: argparse.Namespace, composers: dict[str, dict[str, set[str]]], sources: list[str],
              methods: dict[str, SeparateFn], oracles: dict[str, OracleFn]) -> pd.DataFrame:
    """Each fold's table, then the fold summary, the worst folds and the default's margin over
    NMF (see the module doc); `composers`: `check_folds`'s answer. Returns the summary."""
    trained = training_composers(args.train_data)
    print(f"training composers ({', '.join(map(str, args.train_data))}): "
          + ", ".join(f"{c} ({len(p)} pieces)" for c, p in sorted(trained.items())))
    order, sdr, cpu_seconds, audio = [*methods, *oracles], {}, dict.fromkeys(methods, 0.0), 0.0
    for fold in args.folds:
        items = list(dataset_items(list_tracks(fold, "test")[: args.tracks], sources))
        seconds = sum(mix.shape[-1] / rate for _, mix, _, rate in items)
        print(f"\nfold {fold.name}: {len(items)} track(s) of {fold / 'test'}: "
              f"{fold_label(read_index(fold), (name for name, *_ in items))}")
        table, cpu = run_methods(items, sources, methods, oracles, args.win, desc=fold.name)
        medians = median_table(table, order)
        print(medians.round(2).to_string())
        sdr[fold.name] = medians["SDR"].unstack("target")
        audio += seconds
        for method, per_second in cpu.items():
            cpu_seconds[method] += per_second * seconds
        if args.output is not None:
            write_reports(table, args.output / fold.name, args.win)
    folds = list(sdr)
    summary = fold_summary(sdr, order, sources)
    names = sorted({c for found in composers.values() for c in found})
    print(f"\nmedian SDR (dB) per fold, {len(folds)} folds (composers {', '.join(names)}), "
          "with the mean over folds and the worst fold of each method and source")
    print(summary.round(2).to_string())
    print("\nthe worst fold of each method and source")
    print(worst_folds(summary, folds).to_string())
    default = default_row(args)
    if default in methods and "nmf" in methods:
        print(f"\nmargin of the default ({default}) over nmf, SDR dB (default − nmf)")
        print(margin_table(summary, folds, default, "nmf", sources).round(2).to_string())
    print("\nCPU seconds per second of audio, all folds: "
          + ", ".join(f"{k} {v / audio:.3f}" for k, v in cpu_seconds.items()))
    if args.output is not None:
        args.output.mkdir(parents=True, exist_ok=True)
        summary.to_csv(args.output / "folds_sdr.csv")
    if args.manifest is not None:
        write_manifest_scores(args.manifest, summary, folds, {k: v / audio for k, v in cpu_seconds.items()},
                              command_line(sys.argv[1:], args.folds))
        print(f"wrote the mean scores into {args.manifest}")
    return summary


def level_table(tracks: list[Path], sources: list[str], methods: dict[str, SeparateFn], levels: list[float],
                win: float) -> pd.DataFrame:
    """Median SDR of each source for each method (and the mixture / K) against the level of
    the last source relative to the others, dry and in a room."""
    rows = []
    oracles = {"mix": lambda refs, rate: run_oracle("mix", refs, rate)}
    for reverb in (False, True):
        for gain in levels:
            table, _ = run_methods(remixed_items(tracks, sources, gain, reverb), sources, methods, oracles, win,
                                   desc=f"{gain:+g} dB{' room' if reverb else ''}")
            sdr = summarize(table).query("metric == 'SDR'")
            for method, group in sdr.groupby("method", sort=False):
                rows.append({"room": "yes" if reverb else "no", f"{sources[-1]} dB": gain, "method": method,
                             **group.set_index("target")["score"].reindex(sources).to_dict()})
    return pd.DataFrame(rows)


def median_table(table: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Median SDR / SIR / SAR per (method, target), methods in `order`."""
    wide = summarize(table).pivot_table(index=["method", "target"], columns="metric", values="score")
    return wide.reindex(order, level="method")[["SDR", "SIR", "SAR"]]


def tradeoff(tracks: list[Path], sources: list[str], paths: list[Path], grid: list[tuple[int, int]],
             win: float) -> pd.DataFrame:
    """SDR per source and CPU s/s for each (steps per level, levels) in `grid`."""
    rows = []
    for steps, levels in grid:
        config = default_basis("mixture", steps_per_level=steps, n_levels=levels)
        separator = basis_separator(paths, config, sources)
        table, cpu = run_methods(dataset_items(tracks, sources), sources, {"basis": separator.separate}, {}, win)
        sdr = summarize(table).query("metric == 'SDR'").set_index("target")["score"]
        rows.append({"steps": steps, "levels": levels, **{f"SDR {s}": sdr[s] for s in sources},
                     "CPU s/s": cpu["basis"]})
    return pd.DataFrame(rows)


def parse_basis(specs: list[str]) -> dict[str, list[Path]]:
    """`NAME=A.pt,B.pt` → {NAME: [A.pt, B.pt]}."""
    sets = {}
    for spec in specs:
        name, _, files = spec.partition("=")
        if not files:
            raise SystemExit(f"--basis expects NAME=A.pt,B.pt, got {spec!r}")
        sets[name] = [Path(f) for f in files.split(",")]
    return sets


def _scalar(text: str):
    """A --variant value: an int or a float when it reads as one (PyYAML reads "5e-5" as a
    string), else a YAML scalar (true, null, a name)."""
    import yaml

    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


# --variant keys that are options of `MelBasis` rather than `BasisConfig` fields.
METHOD_OPTIONS = ("hop_frames",)


def parse_variants(specs: list[str]) -> dict[str, tuple[dict, dict]]:
    """`NAME=key=value,key=value` → {NAME: (BasisConfig overrides, MelBasis options)}, values
    read as numbers or YAML scalars; the keys in `METHOD_OPTIONS` go to `MelBasis`."""
    variants = {}
    for spec in specs:
        name, _, settings = spec.partition("=")
        try:
            overrides = {k: _scalar(v) for k, v in (item.split("=", 1) for item in settings.split(","))}
        except ValueError:
            raise SystemExit(f"--variant expects NAME=key=value[,key=value], got {spec!r}") from None
        options = {k: overrides.pop(k) for k in METHOD_OPTIONS if k in overrides}
        from_dict(BasisConfig, {**vars(default_basis("nmf")), **overrides})  # unknown keys fail here
        variants[name] = (overrides, options)
    return variants


def parse_grid(specs: list[str]) -> list[tuple[int, int]]:
    """`STEPSxLEVELS` strings → (steps, levels) pairs."""
    try:
        return [tuple(int(v) for v in spec.lower().split("x", 1)) for spec in specs]
    except ValueError:
        raise SystemExit(f"--tradeoff expects STEPSxLEVELS values such as 10x10, got {specs}") from None


def long_runs(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """(row label, extra `audiosep separate` arguments) of the long-input table: the default
    method, or with `--set NAME` each method of that set (`--only` keeps the ones it names)."""
    if not args.set:
        return [("default", [])]
    if args.set_folder != PRETRAINED:
        raise SystemExit("--long times `audiosep separate -n NAME`, a bundled set: leave out --set-folder")
    bundled = model_set(args.set)
    order = [bundled.default, *(method for method in bundled.methods if method != bundled.default)]
    return [(method, ["-n", args.set, "--method", method]) for method in order if not args.only or method in args.only]


def long_input_table(tracks: list, lengths: list[float], segments: list[float], threads: int,
                     runs: list[tuple[str, list[str]]]) -> pd.DataFrame:
    """The cost of `audiosep separate FILE --segment S [RUN ARGS]` on 44.1 kHz stereo inputs of
    each length (seconds), made of the tracks' mixtures end to end, for each of `runs`
    (`long_runs`; see the module doc)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for length in lengths:
            path = Path(tmp) / f"long{length:g}.wav"
            write_audio(path, _long_mixture(tracks, length), 44100, subtype="PCM_16")
            for (label, extra), segment in itertools.product(runs, segments):
                out = Path(tmp) / f"out_{label}_{segment:g}_{length:g}"
                argv = [sys.executable, "-m", "audiosep", "separate", str(path), "-o", str(out),
                        "--segment", str(segment), "--threads", str(threads), *extra]
                start = time.perf_counter()
                proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                _, status, usage = os.wait4(proc.pid, 0)
                wall = time.perf_counter() - start
                if status != 0:
                    raise RuntimeError(f"{' '.join(argv)} failed with status {status}")
                rows.append({"method": label, "input s": length, "segment s": segment, "wall s/s": wall / length,
                             "user s/s": usage.ru_utime / length, "sys s/s": usage.ru_stime / length,
                             "sys/user %": 100 * usage.ru_stime / usage.ru_utime,
                             "faults k/s": usage.ru_minflt / length / 1e3, "peak GB": usage.ru_maxrss / 2**20})
    table = pd.DataFrame(rows)
    cpu = table["user s/s"] + table["sys s/s"]
    table["CPU vs first"] = cpu / cpu.groupby(table["method"]).transform("first")
    return table


def _long_mixture(tracks: list, seconds: float) -> np.ndarray:
    """`(2, N)` at 44.1 kHz: the tracks' mixtures end to end (repeated as needed) for `seconds`;
    the right channel a quieter copy, so the stereo path runs."""
    parts, total = [], 0
    while total < seconds * 16000:
        for track in tracks:
            mix, stems, _ = load_track(track, sample_rate=16000, channels=1)
            mix = mix if mix is not None else sum(stems.values())
            parts.append(mix)
            total += mix.shape[-1]
    mono = resample(np.concatenate(parts, axis=-1)[:, : int(seconds * 16000)], 16000, 44100)
    return np.concatenate([mono, 0.7 * mono]).astype(np.float32)


def print_settings(args: argparse.Namespace) -> None:
    """The BASIS settings of the rows."""
    print(f"basis-*: {default_basis('mixture')}\nbasis-*+nmf: {default_basis('nmf')}, started from {args.nmf.name}")
    for variant, (overrides, options) in parse_variants(args.variant).items():
        print(f"  /{variant}: {overrides | options}")


def run_set(args: argparse.Namespace, composers: dict[str, dict[str, set[str]]] | None) -> None:
    """`--set NAME`: its methods' rows and the oracles irm2 and mix, on the folds or on `--data`."""
    if args.levels or args.tradeoff or args.from_truth or args.priors != bundled("basis") or args.basis:
        raise SystemExit("--set runs the set's own methods: leave out --levels, --tradeoff, --from-truth, "
                         "--priors and --basis")
    sources = list(model_set(args.set, args.set_folder).sources)
    methods = set_methods(args)
    oracles = build_oracles(args, sources, None, None, ceilings=False)
    print(f"model set {args.set}: rows {', '.join(methods)}; torch threads {args.threads}")
    if composers is not None:
        run_folds(args, composers, sources, methods, oracles)
        return
    tracks = list_tracks(args.data, args.split)[: args.tracks]
    table, cpu = run_methods(dataset_items(tracks, sources), sources, methods, oracles, args.win)
    print(f"\n{len(tracks)} tracks of {args.data / args.split}: median over 1 s windows, then tracks (dB, BSSEval v4)")
    print(median_table(table, [*methods, *oracles]).round(2).to_string())
    print("\nCPU seconds per second of audio: " + ", ".join(f"{k} {v:.3f}" for k, v in cpu.items()))
    if args.output is not None:
        write_reports(table, args.output, args.win)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--priors", type=Path, nargs="+", default=bundled("basis"),
                        help="one prior checkpoint per source, named after the files (piano.pt → piano); "
                             "default: the bundled piano/violin NCSN priors")
    parser.add_argument("--name", default="ncsn", help="row label of --priors (basis-NAME)")
    parser.add_argument("--basis", nargs="*", default=[], metavar="NAME=A.pt,B.pt", help="more prior sets")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="stems dataset folder (default: the recipe's data/piano_violin in the repository)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--tracks", type=int, help="only the first N tracks of the split (of each fold's test split)")
    parser.add_argument("--folds", type=Path, nargs="+", metavar="DIR",
                        help="fold mode: datasets whose test split is one fold each (named after the folder), "
                             "scored per fold, then summarised over folds (mean, worst fold); replaces --data")
    parser.add_argument("--train-data", type=Path, nargs="+", default=[], metavar="DIR",
                        help="with --folds: the datasets the models trained on; a fold with a composer of their "
                             "train or valid tracks (index.json) is refused")
    parser.add_argument("--nmf", type=Path, default=bundled("nmf")[0], help="NMF model (default: the bundled one)")
    parser.add_argument("--masknet", type=Path, nargs="+", default=bundled("masknet"), metavar="MASKNET",
                        help="mask network (train masknet) of the rows masknet (it alone, the default) and "
                             "basis-NAME+masknet (the +nmf schedule started from its stems); several: the mean of "
                             "their masks (a bag); default: the bundled one")
    parser.add_argument("--manifest", type=Path, metavar="JSON",
                        help="with --folds: write the mean scores of the masknet, nmf and basis-*+masknet rows "
                             "into this model set manifest (audiosep/pretrained/<set>.json)")
    parser.add_argument("--set", metavar="NAME",
                        help="the rows are the methods of the bundled model set NAME (audiosep models), at their "
                             "defaults, instead of the piano/violin rows (e.g. --set drums_bass: latent, nmf); "
                             "with the oracles irm2 and mix")
    parser.add_argument("--set-folder", type=Path, default=PRETRAINED, metavar="DIR",
                        help="with --set: the folder of the set's manifest <NAME>.json (default the bundled sets'), "
                             "e.g. a retrained set's, its files named relative to it")
    parser.add_argument("--only", nargs="+", metavar="ROW",
                        help="keep only these separation rows (e.g. masknet nmf); the oracles stay")
    parser.add_argument("--from-truth", action="store_true",
                        help="also the diagnostic row basis-NAME+truth: BASIS started from the true stems")
    parser.add_argument("--variant", nargs="*", default=[], metavar="NAME=key=value,...",
                        help="more rows basis-NAME+nmf/VARIANT: the +nmf settings with BasisConfig fields changed, "
                             "e.g. dirac=likelihood=dirac chains4=n_chains=4 renoise=corrections=1,init_noise=true; "
                             "hop_frames=N sets the patch hop of MelBasis instead")
    parser.add_argument("--no-mixture-init", action="store_true", help="leave out the basis-NAME rows (from the mixture)")
    parser.add_argument("--levels", nargs="*", type=float, metavar="DB",
                        help="the level/room table: the last source at these dB relative to the others "
                             "(e.g. -12 -6 0 6 12), dry and in a room, for the default (masknet), BASIS from it and NMF")
    parser.add_argument("--tradeoff", nargs="*", default=[], metavar="STEPSxLEVELS")
    parser.add_argument("--tradeoff-tracks", type=int, default=5)
    parser.add_argument("--win", type=float, default=1.0, help="BSSEval window in seconds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("-o", "--output", type=Path, help="also write the reports to OUTPUT/")
    parser.add_argument("--long", nargs="*", type=float, metavar="SECONDS",
                        help="only the long-input table: default `audiosep separate` on inputs this long")
    parser.add_argument("--segments", nargs="*", type=float, default=[10.0, 30.0], metavar="SECONDS",
                        help="--segment values of the long-input table (default 10 30)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.folds:
        if args.levels or args.tradeoff or args.long:
            raise SystemExit("--folds runs alone: leave out --levels, --tradeoff and --long (they use --data)")
        if not args.train_data:
            raise SystemExit("--folds needs --train-data DIR [DIR ...]: the datasets the models trained on "
                             "(their composers must not be in any fold)")
        composers = check_folds(args.folds, args.train_data)
    if args.long:
        tracks = list_tracks(args.data, args.split)[: args.tracks]
        runs = long_runs(args)
        print(f"`audiosep separate` ({', '.join(label for label, _ in runs)}) on 44.1 kHz stereo inputs from "
              f"{args.data / args.split}, {args.threads} torch thread(s), CPU")
        print(long_input_table(tracks, args.long, args.segments, args.threads, runs).round(2).to_string(index=False))
        return

    if args.set:
        run_set(args, composers if args.folds else None)
        return
    sources = [p.stem.split("_")[0] for p in args.priors]
    frontend = MelBasis.from_files(args.priors, sources=sources, progress=False).frontend
    nmf = NMFModel.load(args.nmf)
    if args.folds:
        methods = build_methods(args, sources, nmf)
        oracles = build_oracles(args, sources, frontend, nmf, ceilings=False)
        print(f"{len(args.folds)} folds, {'the first ' + str(args.tracks) if args.tracks else 'all'} test tracks "
              f"of each; front end {frontend.name}; torch threads {args.threads}")
        print_settings(args)
        run_folds(args, composers, sources, methods, oracles)
        return
    tracks = list_tracks(args.data, args.split)[: args.tracks]
    methods = build_methods(args, sources, nmf)
    oracles = build_oracles(args, sources, frontend, nmf)
    print(f"{len(tracks)} tracks of {args.data / args.split}; front end {frontend.name}; torch threads {args.threads}")
    print_settings(args)
    table, cpu = run_methods(dataset_items(tracks, sources), sources, methods, oracles, args.win)
    print("\nmedian over 1 s windows, then tracks (dB, BSSEval v4)")
    print(median_table(table, [*methods, *oracles]).round(2).to_string())
    print("\nCPU seconds per second of audio: " + ", ".join(f"{k} {v:.3f}" for k, v in cpu.items()))
    if args.output is not None:
        write_reports(table, args.output, args.win)
    if args.levels:
        print(f"\nmedian SDR (dB) against the level of {sources[-1]} relative to the rest, dry and in a room "
              "(one random room per track)")
        rows = (default_row(args), f"basis-{args.name}+masknet", "nmf")
        chosen = {name + " (default)" * (name == default_row(args)): methods[name] for name in rows if name in methods}
        print(level_table(tracks, sources, chosen, args.levels, args.win).round(2).to_string(index=False))
    if args.tradeoff:
        grid = parse_grid(args.tradeoff)
        print(f"\ntrade-off, basis-{args.name}, first {args.tradeoff_tracks} tracks")
        print(tradeoff(tracks[: args.tradeoff_tracks], sources, args.priors, grid, args.win)
              .round(2).to_string(index=False))


if __name__ == "__main__":
    run_reporting_user_errors(main, "separation.py")
