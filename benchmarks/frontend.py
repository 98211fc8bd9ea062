"""Mel-oracle ceiling of candidate front ends (run by hand, not a test).

For every candidate front end and every track of DATA/<split>: the true sources' mel powers
go through the project's own inversion (`audiosep.oracle.mel_ideal`: NNLS → Wiener masks on
the mixture STFT → iSTFT) and are scored with BSSEval v4 (1 s windows; median over windows,
then over tracks). No mel-domain method using that front end and inversion can do better.
The IRM2 oracle (STFT Wiener with the true source powers, 2048/1024) is measured in the same
run as the reference, and every row prints its SDR difference to it.

    python benchmarks/frontend.py --data DATA --split test
    python benchmarks/frontend.py --data DATA --fmin 20 30 125 --n-mels 96 160 --sample-rates 16000
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from pathlib import Path

import numpy as np
import pandas as pd

from audiosep.data.stems import list_tracks, load_track
from audiosep.errors import run_reporting_user_errors
from audiosep.eval.report import score_track, summarize
from audiosep.oracle import run_oracle
from audiosep.spectral.frontend import PRESETS, Frontend


def candidates(args: argparse.Namespace) -> list[Frontend]:
    """The presets plus the grid given on the command line."""
    base = PRESETS["audiosourcesep"]
    grid = [
        dataclasses.replace(base, sample_rate=sr, n_fft=n_fft, hop_length=n_fft // 4, n_mels=n_mels,
                            fmin=fmin, fmax=None, name=f"{sr // 1000}k/{n_fft}/{n_mels}m/{fmin:g}Hz")
        for sr, n_fft, n_mels, fmin in itertools.product(args.sample_rates, args.n_fft, args.n_mels, args.fmin)
    ]
    return list(PRESETS.values()) + grid


def run(args: argparse.Namespace) -> pd.DataFrame:
    listed = list_tracks(args.data, args.split)[: args.tracks]
    tracks, names = [load_track(t) for t in listed], [t.name for t in listed]
    rows = []
    methods = [("irm2", "irm2", {})] + [(fe.name, "mel-ideal", {"frontend": fe}) for fe in candidates(args)]
    for label, oracle, opts in methods:
        start = time.process_time()
        tables = []
        for name, (_, stems, rate) in zip(names, tracks):
            targets = sorted(stems)
            sources = np.stack([stems[s] for s in targets])
            estimates = run_oracle(oracle, sources, rate, **opts)
            tables.append(score_track(name, targets, sources, estimates, rate, method=label))
        cpu = time.process_time() - start
        summary = summarize(pd.concat(tables))
        sdr = summary[summary.metric == "SDR"].set_index("target").score
        fe = opts.get("frontend")
        rows.append({"front end": label, **sdr.round(2).to_dict(),
                     "fmin": fe.fmin if fe else None, "n_mels": fe.n_mels if fe else None,
                     "cpu_s": round(cpu, 1)})
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    sources = [c for c in table.columns if c not in ("front end", "fmin", "n_mels", "cpu_s")]
    for s in sources:
        table[f"{s}-irm2"] = (table[s] - table.loc[0, s]).round(2)
    table["min"] = table[sources].min(axis=1)
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="stems root DATA/<split>/<track>/{mix,<source>}.wav")
    p.add_argument("--split", default="test")
    p.add_argument("--tracks", type=int, default=None, help="use the first N tracks")
    p.add_argument("--sample-rates", type=int, nargs="*", default=[16000, 22050])
    p.add_argument("--n-fft", type=int, nargs="*", default=[2048])
    p.add_argument("--n-mels", type=int, nargs="*", default=[96, 128, 160, 256])
    p.add_argument("--fmin", type=float, nargs="*", default=[20.0, 30.0, 60.0, 125.0])
    p.add_argument("--csv", type=Path, help="also write the table here")
    args = p.parse_args()
    table = run(args)
    print(table.to_string(index=False))
    if args.csv:
        table.to_csv(args.csv, index=False)


if __name__ == "__main__":
    run_reporting_user_errors(main, "frontend.py")
