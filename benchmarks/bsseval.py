"""Speed, memory and agreement of ``audiosep.eval.bsseval.bss_eval_v4`` against museval.

    python benchmarks/bsseval.py                       # 60 s, 4 sources, stereo, 44.1 kHz
    python benchmarks/bsseval.py --seconds 20          # shorter comparison
    python benchmarks/bsseval.py --minutes-long 10     # also: ours alone on a 10-minute track

Both implementations evaluate the same deterministic signal (win = hop = 1 s), each in a fresh
subprocess that loads the arrays from .npy files (float32), so the memory figures are separate.
"Working memory" is the peak resident size during the evaluation call minus the resident size
just before it (Linux: VmHWM is reset through /proc/self/clear_refs); "peak RSS" is the
process's whole peak, inputs and imports included.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.signal import lfilter

SR = 44100
NSRC = 4
NCHAN = 2


def make_signals(seconds: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic references and estimates, float32 (NSRC, n, NCHAN).

    Source j: a harmonic tone (fundamental 110·(j + 1) Hz, 5 partials, slow tremolo) plus
    coloured noise, panned and delayed across channels, silent for 3 s at a source-specific
    time. Estimate j: the reference through a short 3-tap filter, plus 15 % crosstalk of the
    other sources and white noise, so SDR/ISR/SIR/SAR are all finite and nontrivial.
    """
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SR))
    t = np.arange(n) / SR
    refs = np.empty((NSRC, n, NCHAN), dtype=np.float32)
    for j in range(NSRC):
        f0 = 110.0 * (j + 1)
        tone = sum(np.sin(2 * np.pi * f0 * h * t + h) / h for h in range(1, 6))
        tone *= 0.6 + 0.4 * np.sin(2 * np.pi * (0.2 + 0.1 * j) * t)
        mono = 0.3 * tone + lfilter([1.0], [1.0, -0.95 + 0.1 * j], rng.standard_normal(n)) * 0.05
        pan = (j + 1) / (NSRC + 1)
        refs[j, :, 0] = (1 - pan) * mono
        refs[j, :, 1] = pan * np.roll(mono, 7 * j + 1)
        silent = int((5 + 11 * j) % max(seconds - 3, 1) * SR)
        refs[j, silent : silent + 3 * SR] = 0.0
    ests = np.empty_like(refs)
    total = refs.sum(axis=0, dtype=np.float64)
    for j in range(NSRC):
        filtered = lfilter([0.9, 0.15, -0.05], [1.0], refs[j], axis=0)
        ests[j] = filtered + 0.15 * (total - refs[j]) + 0.01 * rng.standard_normal((n, NCHAN))
    return refs, ests


def _resident_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_child(which: str, data: Path) -> None:
    """Evaluate with `which` ('museval' or 'ours') in this process; print a JSON line."""
    warnings.simplefilter("ignore")
    refs, ests = np.load(data / "refs.npy"), np.load(data / "ests.npy")
    if which == "museval":
        import museval

        def evaluate():
            return museval.evaluate(refs, ests, win=SR, hop=SR)
    else:
        from audiosep.eval.bsseval import bss_eval_v4

        def evaluate():
            return bss_eval_v4(refs, ests, win=SR, hop=SR)

    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
    before = _resident_kib("VmRSS")
    start = time.perf_counter()
    result = evaluate()
    seconds = time.perf_counter() - start
    peak = _resident_kib("VmHWM")
    np.save(data / f"{which}.npy", np.stack(result))
    stats = {"seconds": seconds, "working_mib": (peak - before) / 1024, "peak_rss_mib": peak / 1024}
    print(json.dumps(stats))


def spawn(which: str, data: Path) -> dict:
    """Run :func:`run_child` in a fresh interpreter and return its measurements."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", which, "--data", str(data)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(seconds: float, tmp: Path) -> None:
    refs, ests = make_signals(seconds)
    np.save(tmp / "refs.npy", refs)
    np.save(tmp / "ests.npy", ests)
    del refs, ests
    print(f"signal: {seconds:g} s, {NSRC} sources, {NCHAN} channels, {SR} Hz; win = hop = {SR}")
    stats = {which: spawn(which, tmp) for which in ("museval", "ours")}
    for which, s in stats.items():
        print(
            f"{which:>8}: {s['seconds']:8.2f} s   working memory {s['working_mib']:8.1f} MiB"
            f"   peak RSS {s['peak_rss_mib']:8.1f} MiB"
        )
    speed = stats["museval"]["seconds"] / stats["ours"]["seconds"]
    working = stats["ours"]["working_mib"] / stats["museval"]["working_mib"]
    peak = stats["ours"]["peak_rss_mib"] / stats["museval"]["peak_rss_mib"]
    print(f"speed-up {speed:.1f}x   ours/museval: working memory {working:.3f}, peak RSS {peak:.3f}")
    ref, ours = np.load(tmp / "museval.npy"), np.load(tmp / "ours.npy")
    same_nan = np.array_equal(np.isnan(ref), np.isnan(ours))
    nan_windows = int(np.isnan(ref[0, 0]).sum())
    print(f"windows {ref.shape[-1]}, NaN windows {nan_windows}, NaN positions identical: {same_nan}")
    for m, name in enumerate(("SDR", "ISR", "SIR", "SAR")):
        diff = np.nanmax(np.abs(ref[m] - ours[m]))
        median = np.nanmedian(ref[m])
        print(f"  {name}: max |museval - ours| = {diff:.2e} dB   (median museval {median:6.2f} dB)")


def long_run(minutes: float, tmp: Path) -> None:
    refs, ests = make_signals(60 * minutes, seed=1)
    np.save(tmp / "refs.npy", refs)
    np.save(tmp / "ests.npy", ests)
    inputs = (refs.nbytes + ests.nbytes) / 2**20
    del refs, ests
    s = spawn("ours", tmp)
    print(
        f"long track {minutes:g} min (inputs {inputs:.0f} MiB float32), ours only: {s['seconds']:.2f} s"
        f"   working memory {s['working_mib']:.1f} MiB   peak RSS {s['peak_rss_mib']:.1f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the compared signal")
    parser.add_argument("--minutes-long", type=float, help="also time ours alone on a track this long")
    parser.add_argument("--child", choices=("museval", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child, args.data)
        return
    with tempfile.TemporaryDirectory() as tmp:
        compare(args.seconds, Path(tmp))
        if args.minutes_long:
            long_run(args.minutes_long, Path(tmp))


if __name__ == "__main__":
    main()
