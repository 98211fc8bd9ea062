"""BASIS against its ceiling, the oracles and the supervised NMF baseline, on one split.

    python benchmarks/separation.py                                        # bundled priors, /work/data/pv test split
    python benchmarks/separation.py --priors piano.pt violin.pt --basis glow=pg.pt,vg.pt \\
        --tradeoff 5x10 10x10 20x10 --tradeoff-tracks 5 -o reports/separation

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
- `basis-NAME+truth` (`--from-truth`): the `+nmf` schedule started from the true stems, a
  diagnostic: its gap to `irm2` is what the priors cost wherever the chains start.

- `basis-NAME+nmf/VARIANT` (`--variant VARIANT=key=value,...`): the `+nmf` row with
  `BasisConfig` fields changed, e.g. `dirac=likelihood=dirac`, `corr=corrections=1`,
  `chains4=n_chains=4`, `wide=sigma_max=0.1,n_levels=5,init_noise=true`; the key
  `hop_frames` sets `MelBasis`'s patch hop instead (`h64=hop_frames=64`: no overlap).

Below it, CPU seconds per second of audio of each separation (separation only: reading and
scoring excluded; torch on `--threads` threads, default 1, the stable figure on a shared
machine), and the trade-off table: steps per level × levels → median SDR per source and
CPU s/s, for the first prior set on the first `--tradeoff-tracks` tracks. With `--levels
-12 -6 0 6 12`: the level/room table, the median SDR of each source for the default
`audiosep separate` (BASIS started from the NMF model) and for NMF, beside the mixture / K,
with the last source (violin) that many dB above its level in the track, dry and with every
stem in one random room (`augment_audio`, seeded by the track's name). Use it on a split whose
sources are at equal loudness (`synth` without `--gain-db`, e.g. the TimGM6mb test split).

`--long 10 60 600` (alone: the quality tables are skipped): the cost of the default
`audiosep separate` on long inputs, run as the command itself in a child process on a 44.1 kHz
stereo file made of the split's mixtures end to end, at `--segments` (default 10 and 30 s):
wall, user and system seconds per second of audio, minor page faults, the child's peak memory,
and each row's CPU s/s against the first row's. The costs per second should not depend on the
segment or the input length, the system time should stay a small part of the user time.
"""
from __future__ import annotations

import argparse
import os
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
from audiosep.errors import run_reporting_user_errors
from audiosep.eval.report import score_track, summarize, write_reports
from audiosep.io import resample, write_audio
from audiosep.oracle import run_oracle
from audiosep.separation.basis import BasisConfig
from audiosep.separation.mel_basis import BUNDLED_PRIORS, LEVEL_DB, MelBasis, baseline_powers, default_basis
from audiosep.separation.nmf import BUNDLED_NMF, NMFModel
from audiosep.separation.separator import Separator, level_gain
from audiosep.spectral.frontend import Frontend
from audiosep.spectral.inversion import invert_mel_powers

SeparateFn = Callable[[np.ndarray, int], np.ndarray]


def basis_separator(paths: list[Path], config: BasisConfig, sources: list[str], init_from: NMFModel | None = None,
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


def long_input_table(tracks: list, lengths: list[float], segments: list[float], threads: int) -> pd.DataFrame:
    """The cost of `audiosep separate FILE --segment S` (the default method) on 44.1 kHz stereo
    inputs of each length (seconds), made of the tracks' mixtures end to end (see the module doc)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for length in lengths:
            path = Path(tmp) / f"long{length:g}.wav"
            write_audio(path, _long_mixture(tracks, length), 44100, subtype="PCM_16")
            for segment in segments:
                argv = [sys.executable, "-m", "audiosep", "separate", str(path), "-o", str(Path(tmp) / "out"),
                        "--segment", str(segment), "--threads", str(threads)]
                start = time.perf_counter()
                proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                _, status, usage = os.wait4(proc.pid, 0)
                wall = time.perf_counter() - start
                if status != 0:
                    raise RuntimeError(f"{' '.join(argv)} failed with status {status}")
                rows.append({"input s": length, "segment s": segment, "wall s/s": wall / length,
                             "user s/s": usage.ru_utime / length, "sys s/s": usage.ru_stime / length,
                             "sys/user %": 100 * usage.ru_stime / usage.ru_utime,
                             "faults k/s": usage.ru_minflt / length / 1e3, "peak GB": usage.ru_maxrss / 2**20})
    table = pd.DataFrame(rows)
    cpu = table["user s/s"] + table["sys s/s"]
    table["CPU vs first"] = cpu / cpu.iloc[0]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--priors", type=Path, nargs="+", default=list(BUNDLED_PRIORS),
                        help="one prior checkpoint per source, named after the files (piano.pt → piano); "
                             "default: the bundled piano/violin NCSN priors")
    parser.add_argument("--name", default="ncsn", help="row label of --priors (basis-NAME)")
    parser.add_argument("--basis", nargs="*", default=[], metavar="NAME=A.pt,B.pt", help="more prior sets")
    parser.add_argument("--data", type=Path, default=Path("/work/data/pv"), help="stems dataset folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--tracks", type=int, help="only the first N tracks of the split")
    parser.add_argument("--nmf", type=Path, default=BUNDLED_NMF, help="NMF model (default: the bundled one)")
    parser.add_argument("--from-truth", action="store_true",
                        help="also the diagnostic row basis-NAME+truth: BASIS started from the true stems")
    parser.add_argument("--variant", nargs="*", default=[], metavar="NAME=key=value,...",
                        help="more rows basis-NAME+nmf/VARIANT: the +nmf settings with BasisConfig fields changed, "
                             "e.g. dirac=likelihood=dirac chains4=n_chains=4 renoise=corrections=1,init_noise=true; "
                             "hop_frames=N sets the patch hop of MelBasis instead")
    parser.add_argument("--no-mixture-init", action="store_true", help="leave out the basis-NAME rows (from the mixture)")
    parser.add_argument("--levels", nargs="*", type=float, metavar="DB",
                        help="the level/room table: the last source at these dB relative to the others "
                             "(e.g. -12 -6 0 6 12), dry and in a room, for the default BASIS and NMF")
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
    if args.long:
        tracks = list_tracks(args.data, args.split)[: args.tracks]
        print(f"default `audiosep separate` on 44.1 kHz stereo inputs from {args.data / args.split}, "
              f"{args.threads} torch thread(s), CPU")
        print(long_input_table(tracks, args.long, args.segments, args.threads).round(2).to_string(index=False))
        return

    sources = [p.stem.split("_")[0] for p in args.priors]
    prior_sets = {args.name: args.priors, **parse_basis(args.basis)}
    tracks = list_tracks(args.data, args.split)[: args.tracks]
    frontend = MelBasis.from_files(args.priors, sources=sources, progress=False).frontend
    nmf = NMFModel.load(args.nmf)
    methods: dict[str, SeparateFn] = {}
    variants = parse_variants(args.variant)
    for name, paths in prior_sets.items():
        if not args.no_mixture_init:
            methods[f"basis-{name}"] = basis_separator(paths, default_basis("mixture"), sources).separate
        methods[f"basis-{name}+nmf"] = basis_separator(paths, default_basis("nmf"), sources, nmf).separate
        for variant, (overrides, options) in variants.items():
            methods[f"basis-{name}+nmf/{variant}"] = basis_separator(
                paths, default_basis("nmf", **overrides), sources, nmf, **options).separate
    methods["nmf"] = Separator(nmf, progress=False).separate
    oracles = {
        "mel-ideal": lambda refs, rate: run_oracle("mel-ideal", refs, rate, frontend=frontend),
        "mel-ideal+nmf": with_true_stems(lambda truth: MelIdealFrom(frontend, nmf, truth), sources,
                                         frontend.sample_rate, LEVEL_DB),
        "irm2": lambda refs, rate: run_oracle("irm2", refs, rate),
        "mix": lambda refs, rate: run_oracle("mix", refs, rate),
    }
    if args.from_truth:
        oracles[f"basis-{args.name}+truth"] = basis_from_truth(args.priors, sources)
    print(f"{len(tracks)} tracks of {args.data / args.split}; front end {frontend.name}; torch threads {args.threads}")
    print(f"basis-*: {default_basis('mixture')}\nbasis-*+nmf: {default_basis('nmf')}, started from {args.nmf.name}")
    for variant, (overrides, options) in variants.items():
        print(f"  /{variant}: {overrides | options}")
    table, cpu = run_methods(dataset_items(tracks, sources), sources, methods, oracles, args.win)
    print("\nmedian over 1 s windows, then tracks (dB, BSSEval v4)")
    print(median_table(table, [*methods, *oracles]).round(2).to_string())
    print("\nCPU seconds per second of audio: " + ", ".join(f"{k} {v:.3f}" for k, v in cpu.items()))
    if args.output is not None:
        write_reports(table, args.output, args.win)
    if args.levels:
        print(f"\nmedian SDR (dB) against the level of {sources[-1]} relative to the rest, dry and in a room "
              "(one random room per track)")
        chosen = {"basis (default)": methods[f"basis-{args.name}+nmf"], "nmf": methods["nmf"]}
        print(level_table(tracks, sources, chosen, args.levels, args.win).round(2).to_string(index=False))
    if args.tradeoff:
        grid = parse_grid(args.tradeoff)
        print(f"\ntrade-off, basis-{args.name}, first {args.tradeoff_tracks} tracks")
        print(tradeoff(tracks[: args.tradeoff_tracks], sources, args.priors, grid, args.win)
              .round(2).to_string(index=False))


if __name__ == "__main__":
    run_reporting_user_errors(main, "separation.py")
