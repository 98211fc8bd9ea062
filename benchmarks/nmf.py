"""Quality and speed of the bundled supervised NMF model, beside the IRM2 oracle and the
mixture-as-estimate baseline measured in the same run.

    python benchmarks/nmf.py                                  # data/piano_violin, test and valid splits
    python benchmarks/nmf.py --data DATA --splits test --model my_nmf.pt -o reports/nmf

Every track of each split is separated by `Separator` (the path `audiosep separate` takes:
resampling, level normalisation, 30 s chunks) and scored with BSSEval v4 (1 s windows) by
`audiosep.eval.report.score_track`; the oracles get the same references. Printed per split:
the median over windows, then over tracks, of SDR/SIR/SAR per method and source, NMF's gap
to IRM2 and gain over the mixture, and NMF's CPU seconds and wall seconds per second of
audio, separation only (reading and scoring excluded). Torch runs on `--threads` threads
(default 1): on a busy machine idle-waiting worker threads inflate CPU time many-fold, so
one thread gives the stable figure.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from audiosep.data.stems import list_tracks, load_track
from audiosep.errors import run_reporting_user_errors
from audiosep.eval.report import score_track, summarize, write_reports
from audiosep.oracle import run_oracle
from audiosep.separation.nmf import NMFModel
from audiosep.zoo import bundled
from audiosep.separation.separator import Separator

ORACLES = ("irm2", "mix")


def run_split(data: Path, split: str, separator: Separator, win: float) -> tuple[pd.DataFrame, float, float, float]:
    """(long table of all methods, NMF CPU seconds, NMF wall seconds, seconds of audio) of one split."""
    tables, cpu, wall, audio = [], 0.0, 0.0, 0.0
    for track in tqdm(list_tracks(data, split), desc=split, unit="track"):
        mix, stems, rate = load_track(track)
        targets = list(separator.sources)
        refs = np.stack([stems[s] for s in targets])
        c0, w0 = time.process_time(), time.perf_counter()
        estimates = {"nmf": separator.separate(mix, rate)}
        cpu += time.process_time() - c0
        wall += time.perf_counter() - w0
        audio += mix.shape[-1] / rate
        estimates.update({name: run_oracle(name, refs, rate) for name in ORACLES})
        tables += [score_track(track.name, targets, refs, est, rate, win, method=name) for name, est in estimates.items()]
    return pd.concat(tables, ignore_index=True), cpu, wall, audio


def print_summary(split: str, table: pd.DataFrame, cpu: float, wall: float, audio: float) -> None:
    wide = summarize(table).pivot_table(index=["method", "target"], columns="metric", values="score")
    wide = wide.reindex(["nmf", *ORACLES], level="method")[["SDR", "SIR", "SAR"]]
    n_tracks = table["track"].nunique()
    print(f"\n== {split}: {n_tracks} tracks, {audio:.0f} s of audio; median SDR/SIR/SAR in dB (BSSEval v4, 1 s windows)")
    print(wide.round(2).to_string())
    sdr = wide["SDR"].unstack("method")
    for target, row in sdr.iterrows():
        print(f"{target}: NMF − IRM2 = {row['nmf'] - row['irm2']:+.2f} dB, NMF − mix = {row['nmf'] - row['mix']:+.2f} dB")
    print(f"NMF separation: {cpu / audio:.4f} CPU s and {wall / audio:.4f} wall s per second of audio")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/piano_violin"), help="stems dataset folder (default: the piano/violin recipe's)")
    parser.add_argument("--splits", nargs="+", default=["test", "valid"])
    parser.add_argument("--model", type=Path, default=bundled("nmf")[0], help="NMF model file (default: the bundled one)")
    parser.add_argument("--win", type=float, default=1.0, help="BSSEval window in seconds")
    parser.add_argument("-o", "--output", type=Path, help="also write the reports to OUTPUT/<split>/")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the separation (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = NMFModel.load(args.model)
    separator = Separator(model, progress=False)
    print(f"model {args.model}: sources {', '.join(model.sources)}, {model.n_atoms} atoms each, "
          f"{model.domain.describe()}; torch threads: {args.threads}")
    for split in args.splits:
        table, cpu, wall, audio = run_split(args.data, split, separator, args.win)
        print_summary(split, table, cpu, wall, audio)
        if args.output is not None:
            write_reports(table, args.output / split, args.win)


if __name__ == "__main__":
    run_reporting_user_errors(main, "nmf.py")
