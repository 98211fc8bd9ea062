"""The inversion stage (mel powers → waveforms) against the oracles, on one split of one or more datasets.

    python benchmarks/inversion.py                                   # data/piano_violin and data/piano_violin_timgm, test split
    python benchmarks/inversion.py --data DATA --tracks 2 -o reports/inversion

For every track of `DATA/<split>` (one table per `--data` folder) two sets of source mel
powers `(K, n_mels, T)` on the priors' front end go through every inversion:

- `true-mel/<inversion>`: the true stems' mel powers (channel mean, levelled as `Separator`
  levels the mixture): what each inversion gives from perfect mel powers.
- `basis/<inversion>`: the mel powers of the default `audiosep separate` path — BASIS over
  `--priors` started from the NMF model's stems (`default_basis("nmf")`,
  `MelBasis.separate_mel`), sampled once per track; every inversion gets the same powers.
  `basis/wiener` is sample for sample the output of `audiosep separate` (checked on a track).

Both start the NNLS (mel → STFT power) from the NMF model's spectra, as the default path
does (`--true-start pinv`: the true mel powers from the pseudo-inverse instead, as the
`mel-ideal` oracle), so a `true-mel` row is the ceiling of the `basis` row below it.
The inversions (`audiosep.spectral.inversion`):

- `griffinlim-32`, `griffinlim-100`: fast Griffin-Lim (momentum 0.99, random start phase
  seeded as `MelBasis` seeds it), 32 / 100 iterations; mono stems on every channel. Its phase
  is not the reference's, which BSSEval counts as artefacts: even from the true STFT
  magnitudes (no mel) it scores about −3 dB SDR, as librosa.griffinlim does, although its
  spectral convergence is 0.07 after 32 iterations.
- `phase`: the NNLS magnitudes with the mixture's phase.
- `wiener`: single-channel Wiener masks P_j / Σ P on the mixture STFT (the default).
- `wiener-mc`: the multichannel Wiener filter (`invert_mel_powers(method="wiener-mc")`), P_j
  from the NNLS and each source's time-invariant spatial covariance R_j from its
  single-channel Wiener image. On mono data R_j = 1 and it is `wiener` (the run checks and
  prints the largest difference).

Beside them, the oracles of `audiosep.oracle` on the true stems (their own 2048/1024 STFT):
`ibm`, `irm1`, `irm2` (single-channel Wiener), `mwf` (multichannel Wiener) and `mix`
(mixture / K). Scores: BSSEval v4, 1 s windows (`score_track`), median over windows then
tracks, SDR / SIR / SAR per source. `CPU s/s`: CPU seconds per second of audio of the
inversion call alone (NNLS included; NMF and BASIS sampling excluded, printed once below
the table), or of the whole oracle; torch on `--threads` threads (default 1). Each track is
processed whole (`Separator`'s 30 s chunks leave the 10 s test excerpts whole too).
About 50 s of wall time per track on the 2-core development machine when it runs alone (BASIS
36 s of it), 75 s with two runs side by side, so the full 2 × 20 tracks take 35–50 min there.

Last, per dataset, the inversions ordered by SDR (mean over sources of the medians), on the
true mel powers and on the BASIS estimates, against the earlier study's ordering on its
example: Griffin-Lim < mixture phase < Wiener.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm import tqdm

from audiosep.data.stems import Track, list_tracks, load_track
from audiosep.errors import run_reporting_user_errors
from audiosep.eval.report import score_track, summarize, write_csv, write_reports
from audiosep.oracle import run_oracle
from audiosep.separation.mel_basis import MelBasis, baseline_powers, default_basis
from audiosep.separation.nmf import NMFModel
from audiosep.separation.separator import level_gain
from audiosep.spectral.frontend import Frontend
from audiosep.spectral.inversion import invert_mel_powers
from audiosep.zoo import bundled

from separation import median_table  # benchmarks/separation.py (this folder is on sys.path when run as a script)

# (frontend, mel powers (K, n_mels, T), levelled mixture (C, N), NNLS start (K, F, T) | None, seed) → (K, C, N)
Inversion = Callable[[Frontend, Tensor, Tensor, Tensor | None, int], Tensor]
MEL_SETS = ("true-mel", "basis")
ORACLES = ("ibm", "irm1", "irm2", "mwf", "mix")
DEFAULT_DATA = [Path("data/piano_violin"), Path("data/piano_violin_timgm")]  # recipes/piano_violin/run.sh stage 0


def by_method(method: str, **options) -> Inversion:
    """An `Inversion` running `invert_mel_powers(method=method, **options)`."""
    return lambda fe, mel, mix, reference, seed: invert_mel_powers(fe, mel, mix, method=method, seed=seed,
                                                                   reference=reference, **options)


INVERSIONS: dict[str, Inversion] = {
    "griffinlim-32": by_method("griffinlim", gl_iter=32),
    "griffinlim-100": by_method("griffinlim", gl_iter=100),
    "phase": by_method("phase"),
    "wiener": by_method("wiener"),
    "wiener-mc": by_method("wiener-mc"),
}


def run_dataset(tracks: list[Track], basis: MelBasis, true_start: str, win: float
                ) -> tuple[pd.DataFrame, dict[str, float], dict]:
    """Every inversion of both mel sets and every oracle on every track.

    Returns:
        (the long report table, CPU s/s of each row, facts: BASIS CPU s/s, wall s per
        track, channels, largest |wiener-mc − wiener| relative to the stems' peak).
    """
    fe, sources = basis.frontend, list(basis.sources)
    names = [f"{mels}/{inv}" for mels in MEL_SETS for inv in INVERSIONS] + list(ORACLES)
    tables, cpu = [], dict.fromkeys(names, 0.0)
    audio = basis_cpu = wall = mc_gap = 0.0
    channels = set()
    for track in tqdm(tracks, desc="tracks", unit="track"):
        wall_start = time.perf_counter()
        mix, stems, rate = load_track(track, sample_rate=fe.sample_rate)
        refs = np.stack([stems[s] for s in sources])
        mix = refs.sum(axis=0) if mix is None else mix
        audio += mix.shape[-1] / rate
        channels.add(mix.shape[0])
        gain = level_gain(mix, basis.level_db)  # as Separator levels the mixture
        x = torch.from_numpy(mix * gain)
        with torch.no_grad():
            start = time.process_time()
            torch.manual_seed(0)  # as Separator seeds each input
            init, reference = baseline_powers(fe, basis.init_from(x))
            mels = {"basis": basis.separate_mel(fe.mel_power(x.mean(dim=0)), init)}
            basis_cpu += time.process_time() - start
            mels["true-mel"] = fe.mel_power(torch.from_numpy(refs * gain).mean(dim=1))
            estimates = {}
            for mel_set in MEL_SETS:
                start_from = None if (mel_set == "true-mel" and true_start == "pinv") else reference
                for inv, invert in INVERSIONS.items():
                    start = time.process_time()
                    stems_est = invert(fe, mels[mel_set], x, start_from, basis.seed)
                    cpu[f"{mel_set}/{inv}"] += time.process_time() - start
                    estimates[f"{mel_set}/{inv}"] = stems_est.numpy() / gain
        for mel_set in MEL_SETS:
            gap = np.abs(estimates[f"{mel_set}/wiener-mc"] - estimates[f"{mel_set}/wiener"]).max()
            mc_gap = max(mc_gap, float(gap / np.abs(estimates[f"{mel_set}/wiener"]).max()))
        for oracle in ORACLES:
            start = time.process_time()
            estimates[oracle] = run_oracle(oracle, refs, rate)
            cpu[oracle] += time.process_time() - start
        tables += [score_track(track.name, sources, refs, est, rate, win, method=name)
                   for name, est in estimates.items()]
        wall += time.perf_counter() - wall_start
    facts = {"basis s/s": basis_cpu / audio, "wall s/track": wall / len(tracks),
             "channels": sorted(channels), "wiener-mc gap": mc_gap}
    return pd.concat(tables, ignore_index=True), {k: v / audio for k, v in cpu.items()}, facts


def wide_table(table: pd.DataFrame, cpu: dict[str, float], sources: list[str]) -> pd.DataFrame:
    """Rows: methods; columns: SDR / SIR / SAR per source, then CPU s/s."""
    wide = median_table(table, list(cpu)).unstack("target")
    wide = wide.reindex(columns=pd.MultiIndex.from_product([["SDR", "SIR", "SAR"], sources])).reindex(list(cpu))
    wide[("CPU s/s", "")] = pd.Series(cpu)
    wide.index.name = None
    return wide


def ordering(table: pd.DataFrame, mel_set: str) -> tuple[str, bool]:
    """The inversions of `mel_set` in increasing SDR (mean over sources of the medians), and
    whether that agrees with Griffin-Lim < mixture phase < Wiener (every Griffin-Lim row below
    `phase`, below both Wiener rows)."""
    sdr = summarize(table).query("metric == 'SDR'").groupby("method")["score"].mean()
    rows = {inv: sdr[f"{mel_set}/{inv}"] for inv in INVERSIONS}
    ranked = sorted(rows, key=rows.get)
    text = f"{ranked[0]} {rows[ranked[0]]:.2f}"
    for prev, inv in zip(ranked, ranked[1:]):
        text += f" {'=' if round(rows[inv], 2) == round(rows[prev], 2) else '<'} {inv} {rows[inv]:.2f}"
    agrees = max(rows["griffinlim-32"], rows["griffinlim-100"]) < rows["phase"] < min(rows["wiener"], rows["wiener-mc"])
    return text, agrees


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, nargs="+", default=DEFAULT_DATA,
                        help="stems dataset folders, one table each (default: data/piano_violin data/piano_violin_timgm, the recipe's)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--tracks", type=int, help="only the first N tracks of each split")
    parser.add_argument("--priors", type=Path, nargs="+", default=bundled("basis"),
                        help="one prior checkpoint per source, named after the files (piano.pt → piano); "
                             "default: the bundled piano/violin NCSN priors")
    parser.add_argument("--nmf", type=Path, default=bundled("nmf")[0], help="NMF model BASIS starts from (default: bundled)")
    parser.add_argument("--true-start", choices=("nmf", "pinv"), default="nmf",
                        help="NNLS start of the true-mel rows: the NMF model's spectra (as the basis rows) "
                             "or the pseudo-inverse (as the mel-ideal oracle)")
    parser.add_argument("--win", type=float, default=1.0, help="BSSEval window in seconds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("-o", "--output", type=Path, help="also write the reports to OUTPUT/<dataset folder name>/")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    sources = [p.stem.split("_")[0] for p in args.priors]
    basis = MelBasis.from_files(args.priors, default_basis("nmf"), sources=sources, progress=False,
                                init_from=NMFModel.load(args.nmf))
    print(f"front end {basis.frontend.name} ({basis.frontend.n_mels} mels, n_fft {basis.frontend.n_fft}, "
          f"hop {basis.frontend.hop_length}); torch threads {args.threads}")
    print(f"basis/*: {basis.config}, started from {args.nmf.name}; true-mel/* NNLS from "
          f"{'the NMF spectra' if args.true_start == 'nmf' else 'the pseudo-inverse'}")
    for data in args.data:
        tracks = list_tracks(data, args.split)[: args.tracks]
        print(f"\n=== {data / args.split}: {len(tracks)} tracks")
        table, cpu, facts = run_dataset(tracks, basis, args.true_start, args.win)
        print("median over 1 s windows, then tracks (dB, BSSEval v4); CPU s/s of the inversion / oracle alone")
        print(wide_table(table, cpu, sources).round(3).to_string())
        print(f"BASIS mel powers (NMF + {len(basis.config.noise_levels())} levels × {basis.config.steps_per_level} "
              f"steps, once per track, excluded above): {facts['basis s/s']:.3f} CPU s/s; "
              f"wall time {facts['wall s/track']:.1f} s per track")
        if facts["channels"] == [1]:
            print(f"mono data: wiener-mc reduces to wiener (R_j = 1); largest difference of the stems "
                  f"{facts['wiener-mc gap']:.1e} of their peak")
        for mel_set in MEL_SETS:
            text, agrees = ordering(table, mel_set)
            verdict = "agrees with" if agrees else "differs from"
            print(f"ordering by SDR on {mel_set}: {text} dB — {verdict} the earlier study's "
                  "Griffin-Lim < mixture phase < Wiener")
        if args.output is not None:
            folder = args.output / data.name
            write_reports(table, folder, args.win)
            write_csv(pd.DataFrame({"method": list(cpu), "cpu_s_per_s": list(cpu.values())}), folder / "cpu.csv")


if __name__ == "__main__":
    run_reporting_user_errors(main, "inversion.py")
