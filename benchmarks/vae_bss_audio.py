"""VAE-BSS on STFT magnitudes (trained on mixtures only) beside the supervised NMF, IRM2 and
the mixture / 2, on the first tracks of a split of one or more stems datasets.

    python benchmarks/vae_bss_audio.py --model exp/piano_violin/vae_bss.pt \\
        --data data/piano_violin data/piano_violin_timgm --split test --tracks 10 -o reports/vae_bss

Every method gets the same tracks and is scored with BSSEval v4 (1 s windows, museval's
definition) by `audiosep.eval.report.score_track`; the tables are the median over windows,
then over tracks, of SDR / SIR / SAR per source, beside the median over tracks of the
whole-track SI-SDR (`eval.metrics.si_sdr`). Rows:

- `vae-bss`: `Separator(VAEBSS(model, align=False))` (the path of `audiosep separate`), its
  K outputs named by the best permutation per *track* (mean SI-SDR over the sources): the
  standard for unsupervised methods, which name their outputs once per file.
- `vae-bss+align`: the same with the reference-free slot alignment (`VAEBSS(align=True)`,
  `align_slots`), then the best permutation per track.
- `oracle-patch` (diagnostic, never a result): the slots of every patch permuted to best fit
  the true stems' magnitudes in that patch (Hungarian on the L1 distance between the VAEM
  magnitudes and the true ones); the ceiling of any slot alignment for this model. It runs
  on the whole track without the Separator (no chunks; the masks ignore the level).
- `nmf`: the supervised NMF model (`--nmf`, default the bundled one) through `Separator`.
- `irm2`, `mix`: the IRM (α = 2) oracle and the mixture / K.

Also printed: the share of patches whose oracle permutation is the track's most common one,
without and with alignment (1: every patch names the instruments alike), and CPU seconds per
second of audio of each separation (separation only; torch on `--threads` threads, default 1).
The paper (Neri, Badeau & Depalle, EUSIPCO 2021) reports SI-SDR 17.10 dB for VAE-BSS and
22.66 dB for the IRM on its own data: other mixtures, not comparable with these tables.
"""
from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.optimize import linear_sum_assignment
from tqdm import tqdm

from audiosep.data.stems import list_tracks, load_track
from audiosep.errors import run_reporting_user_errors
from audiosep.eval.metrics import best_permutation, si_sdr
from audiosep.eval.report import score_track, summarize, write_reports
from audiosep.oracle import run_oracle
from audiosep.separation.nmf import NMFModel
from audiosep.zoo import bundled
from audiosep.separation.separator import Separator
from audiosep.separation.vae_bss import VAEBSS, align_slots, permute_slots, slot_features
from audiosep.spectral.frontend import patchify

ORACLES = ("irm2", "mix")
TIMED = ("vae-bss", "vae-bss+align", "nmf")


def oracle_patch_perms(method: VAEBSS, shares: torch.Tensor, mix_mag: torch.Tensor, refs: np.ndarray) -> torch.Tensor:
    """Per-patch oracle permutation `(B, K)` of `shares (B, K, 1, F, P)`: slot perm[b, k] best
    fits reference k's magnitude in patch b (L1 between the VAEM magnitudes and the true ones)."""
    fe = method.frontend
    true_mag = fe.stft(torch.from_numpy(refs.mean(axis=1))).abs()  # (K, F, T)
    true_patches = patchify(true_mag, fe.patch_frames, method.hop_frames)[0]  # (K·B, 1, F, P)
    true_patches = true_patches.unflatten(0, (refs.shape[0], -1)).transpose(0, 1)  # (B, K, 1, F, P)
    est = shares * patchify(mix_mag, fe.patch_frames, method.hop_frames)[0][:, None]  # (B, K, 1, F, P)
    cost = (true_patches[:, :, None] - est[:, None]).abs().flatten(3).sum(-1)  # (B, ref k, slot j)
    return torch.from_numpy(np.stack([linear_sum_assignment(c)[1] for c in cost.numpy()]))


def agreement(perms: torch.Tensor) -> float:
    """Share of patches whose permutation `(K,)` is the most common one of `perms (B, K)`."""
    counts = Counter(tuple(p) for p in perms.tolist())
    return counts.most_common(1)[0][1] / perms.shape[0]


def oracle_patch(method: VAEBSS, mix: np.ndarray, refs: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(the per-patch oracle's stems `(K, C, N)`, the agreement without alignment, with alignment)."""
    mix_t = torch.from_numpy(mix)
    spec = method.frontend.stft(mix_t)
    mix_mag = spec.mean(dim=0).abs()
    shares, decoded, layout = method.slot_shares(mix_mag)
    perms = oracle_patch_perms(method, shares, mix_mag, refs)
    aligned = permute_slots(shares, align_slots(slot_features(decoded)))
    aligned_agreement = agreement(oracle_patch_perms(method, aligned, mix_mag, refs))
    stems = method.apply(method.masks(permute_slots(shares, perms), layout), spec, mix.shape[-1])
    return stems.numpy(), agreement(perms), aligned_agreement


def per_track_named(refs: np.ndarray, est: np.ndarray) -> np.ndarray:
    """`est (K, C, N)` reordered by the best permutation of the whole track (mean SI-SDR)."""
    return best_permutation(refs, est, si_sdr)[1].astype(np.float32)


def run_dataset(data: Path, split: str, n_tracks: int, separators: dict[str, Separator], method: VAEBSS,
                win: float) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float], float, list[float]]:
    """(BSSEval long table, SI-SDR table, CPU seconds per method, seconds of audio, agreement
    [without, with alignment] averaged over tracks) of the first `n_tracks` tracks of a split."""
    tables, si_rows, cpu, audio, agree = [], [], dict.fromkeys(TIMED, 0.0), 0.0, []
    for track in tqdm(list_tracks(data, split)[:n_tracks], desc=f"{data.name}/{split}", unit="track"):
        mix, stems, rate = load_track(track, method.sample_rate)
        targets = sorted(stems)
        refs = np.stack([stems[s] for s in targets])
        estimates = {}
        for name, separator in separators.items():
            start = time.process_time()
            est = separator.separate(mix, rate)
            cpu[name] += time.process_time() - start
            if name.startswith("vae"):
                estimates[name] = per_track_named(refs, est)
            else:  # a supervised model: its outputs are named
                estimates[name] = est[[list(separator.sources).index(t) for t in targets]]
        estimates["oracle-patch"], *track_agree = oracle_patch(method, mix, refs)
        agree.append(track_agree)
        estimates.update({name: run_oracle(name, refs, rate) for name in ORACLES})
        audio += mix.shape[-1] / rate
        for name, est in estimates.items():
            tables.append(score_track(track.name, targets, refs, est, rate, win, method=name))
            si_rows += [{"method": name, "target": t, "track": track.name, "score": float(v)}
                        for t, v in zip(targets, si_sdr(refs, est).mean(axis=-1))]
    return (pd.concat(tables, ignore_index=True), pd.DataFrame(si_rows), cpu, audio,
            np.mean(agree, axis=0).tolist())


def print_tables(title: str, table: pd.DataFrame, si: pd.DataFrame, cpu: dict[str, float], audio: float,
                 agree: list[float]) -> None:
    order = ["vae-bss", "vae-bss+align", "oracle-patch", "nmf", *ORACLES]
    wide = summarize(table).pivot_table(index=["method", "target"], columns="metric", values="score")
    wide = wide[["SDR", "SIR", "SAR"]]
    wide["SI-SDR"] = si.groupby(["method", "target"])["score"].median()
    wide = wide.reindex(order, level="method")
    print(f"\n== {title}: {table['track'].nunique()} tracks, {audio:.0f} s; median SDR/SIR/SAR (BSSEval v4, "
          "1 s windows; windows then tracks) and whole-track SI-SDR (median over tracks), dB")
    print("   oracle-patch is a diagnostic (per-patch permutation from the true stems), not a result")
    print(wide.round(2).to_string())
    print(f"patches whose oracle permutation is the track's most common one: {agree[0]:.3f} as decoded, "
          f"{agree[1]:.3f} aligned")
    print("CPU s per s of audio: " + ", ".join(f"{name} {cpu[name] / audio:.4f}" for name in TIMED))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a VAE trained by `audiosep train vae --data`")
    parser.add_argument("--data", type=Path, nargs="+", default=[Path("data/piano_violin")], help="stems datasets")
    parser.add_argument("--split", default="test")
    parser.add_argument("--tracks", type=int, default=10, help="first tracks of the split (default 10)")
    parser.add_argument("--nmf", type=Path, default=bundled("nmf")[0], help="NMF model file (default: the bundled one)")
    parser.add_argument("--win", type=float, default=1.0, help="BSSEval window in seconds")
    parser.add_argument("-o", "--output", type=Path, help="also write the reports to OUTPUT/<dataset>/")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    method = VAEBSS.from_file(args.model)
    separators = {"vae-bss": Separator(method, progress=False),
                  "vae-bss+align": Separator(VAEBSS.from_file(args.model, align=True), progress=False),
                  "nmf": Separator(NMFModel.load(args.nmf), progress=False)}
    print(f"model {args.model}: K = {len(method.sources)}, {method.model.domain.describe()}; "
          f"NMF {args.nmf}; torch threads: {args.threads}")
    for data in args.data:
        table, si, cpu, audio, agree = run_dataset(data, args.split, args.tracks, separators, method, args.win)
        print_tables(f"{data}/{args.split}", table, si, cpu, audio, agree)
        if args.output is not None:
            write_reports(table, args.output / data.name, args.win)


if __name__ == "__main__":
    run_reporting_user_errors(main, "vae_bss_audio.py")
