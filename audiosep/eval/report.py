"""Evaluation tables: museval-compatible long format, per-track JSON, summaries, and
BSSEval v4 over two folders of stems.

The long table has one row per (track, target, metric, window) with the columns
`time, target, metric, score, track, method` (museval's `EvalStore.df` plus `method`):
`time` is the window start in seconds, `metric` one of SDR, SIR, ISR, SAR (dB). As in
museval's stores, a non-finite score (silent window, or ±inf from a zero denominator) is
NaN. `summarize` takes the median over windows, then over tracks (NaN ignored), as
museval's `MethodStore.agg_frames_tracks_scores`.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import UserError
from ..io import AUDIO_SUFFIXES, atomic_output, check_output_dir, check_outputs, read_audio
from ..progress import progress_bar
from .bsseval import bss_eval_v4

COLUMNS = ["time", "target", "metric", "score", "track", "method"]
METRICS = ("SDR", "SIR", "ISR", "SAR")
SUMMARY_COLUMNS = ["method", "target", "metric", "score", "n_tracks"]
# Stems in a reference track folder that hold the mixture, not a target (case-insensitive).
MIXTURE_NAMES = ("mix", "mixture")
# The museval release whose per-track JSON layout `write_track_json` reproduces.
MUSEVAL_FORMAT_VERSION = "0.4.1"
_JSON_METRIC_ORDER = ("SDR", "SIR", "SAR", "ISR")  # museval's TrackStore order
_JSON_DECIMALS = 5  # museval quantises scores to 1e-5
RUN_FILE = "run.json"  # beside a report: the folders that were scored (read by `audiosep report`)
LENGTH_TOLERANCE = 1.0  # seconds an estimate may differ from its reference (cut or padded, with a warning)


def track_frame(
    track: str,
    targets: Sequence[str],
    sdr: np.ndarray,
    isr: np.ndarray,
    sir: np.ndarray,
    sar: np.ndarray,
    hop_seconds: float,
    method: str,
) -> pd.DataFrame:
    """The long table of one track from `bss_eval_v4`'s outputs.

    Args:
        track: track name. targets: K target names, in the order of the score rows.
        sdr, isr, sir, sar: scores (K, nwin) in dB (the order `bss_eval_v4` returns them).
        hop_seconds: seconds between window starts (window i starts at i·hop_seconds).
        method: the name of the separation method.
    Returns:
        DataFrame with columns `COLUMNS`, K·4·nwin rows (target, then metric, then time).
    """
    scores = {"SDR": sdr, "SIR": sir, "ISR": isr, "SAR": sar}
    scores = {m: np.asarray(v, dtype=np.float64).reshape(len(targets), -1) for m, v in scores.items()}
    n_win = scores["SDR"].shape[1]
    times = np.arange(n_win) * float(hop_seconds)
    parts = [
        pd.DataFrame({"time": times, "target": name, "metric": metric, "score": scores[metric][k]})
        for k, name in enumerate(targets)
        for metric in METRICS
    ]
    df = pd.concat(parts, ignore_index=True)
    df["score"] = df["score"].where(np.isfinite(df["score"]))
    df["track"] = track
    df["method"] = method
    return df[COLUMNS]


def write_csv(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a table as CSV (no index, NaN as "NaN") atomically: temporary file + rename."""
    path = Path(path)
    with atomic_output(path) as tmp:
        df.to_csv(tmp, index=False, na_rep="NaN")
    return path


def track_json(df_track: pd.DataFrame, win_seconds: float) -> dict:
    """One track's long table as museval's per-track JSON structure (`TrackStore.scores`).

    Args:
        df_track: rows of a single track and method (columns `COLUMNS`).
        win_seconds: window length in seconds (each frame's "duration").
    Returns:
        `{"targets": [{"name", "frames": [{"time", "duration", "metrics": {SDR, SIR, SAR,
        ISR}}]}], "museval_version"}` with scores rounded to 1e-5 and NaN for missing ones.
    """
    for key in ("track", "method"):
        if df_track[key].nunique() > 1:
            raise ValueError(f"track_json needs one {key}, got {sorted(df_track[key].unique())}")
    targets = []
    for name, rows in df_track.groupby("target", sort=False):
        table = rows.pivot(index="time", columns="metric", values="score").sort_index()
        frames = [
            {
                "time": float(time),
                "duration": float(win_seconds),
                "metrics": {m: _json_score(values.get(m, np.nan)) for m in _JSON_METRIC_ORDER},
            }
            for time, values in table.iterrows()
        ]
        targets.append({"name": str(name), "frames": frames})
    return {"targets": targets, "museval_version": MUSEVAL_FORMAT_VERSION}


def _json_score(value: float) -> float:
    return round(float(value), _JSON_DECIMALS) if np.isfinite(value) else float("nan")


def write_track_json(df_track: pd.DataFrame, path: str | os.PathLike, win_seconds: float) -> Path:
    """Write one track's scores in museval's per-track JSON format (see `track_json`), atomically.

    NaN is written as the bare literal `NaN`, as museval does (read it back with
    `json.load` or `simplejson.loads(..., allow_nan=True)`).
    """
    path = Path(path)
    text = json.dumps(track_json(df_track, win_seconds), indent=2, allow_nan=True)
    with atomic_output(path) as tmp:
        tmp.write_text(text + "\n")
    return path


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Median over windows per (method, track, target, metric), then median over tracks.

    NaN scores are ignored at both stages.

    Args:
        df: long table (columns `COLUMNS`).
    Returns:
        DataFrame with columns `SUMMARY_COLUMNS`; `n_tracks` counts the tracks whose
        window median is defined (not NaN).
    """
    per_track = df.groupby(["method", "track", "target", "metric"], sort=False)["score"].median()
    summary = per_track.groupby(level=["method", "target", "metric"], sort=False).agg(["median", "count"])
    summary = summary.rename(columns={"median": "score", "count": "n_tracks"}).reset_index()
    return summary[SUMMARY_COLUMNS]


def write_summary_csv(df: pd.DataFrame, path: str | os.PathLike) -> pd.DataFrame:
    """Summarise the long table `df` (see `summarize`), write it as CSV atomically, return it."""
    summary = summarize(df)
    write_csv(summary, path)
    return summary


def wide_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """A summary (columns `SUMMARY_COLUMNS`) as one row per (method, target), one column per metric."""
    return summary.pivot_table(index=["method", "target"], columns="metric", values="score")


def test_set_summaries(exp_dir: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """The wide summaries (`wide_summary`) of a recipe's experiment folder, by test set.

    A test set is a sub-folder of `exp_dir` holding oracle runs (`oracle_*/summary.csv`); its
    table gathers those and every system evaluated there (`*/report/summary.csv`).
    """
    tables = {}
    for folder in sorted(p for p in Path(exp_dir).iterdir() if p.is_dir()):
        oracles = sorted(folder.glob("oracle_*/summary.csv"))
        if oracles:
            paths = [*sorted(folder.glob("*/report/summary.csv")), *oracles]
            tables[folder.name] = wide_summary(pd.concat([pd.read_csv(p) for p in paths]))
    return tables


def report_paths(output: str | os.PathLike) -> tuple[Path, Path]:
    """(folder, long-table CSV) of a report `output`: a folder, or a `.csv` path (see `write_reports`)."""
    output = Path(output)
    return (output.parent, output) if output.suffix.lower() == ".csv" else (output, output / "report.csv")


def check_report_output(output: str | os.PathLike) -> None:
    """UserError unless the reports of `write_reports(df, output)` can be written (checked
    before scoring, so no evaluation is lost at the end): none of its files is a folder or a
    file of another kind (a user's CSV is never replaced by a report)."""
    folder, report = report_paths(output)
    check_output_dir(folder)
    check_outputs({report: "an evaluation table", folder / "summary.csv": "an evaluation summary",
                   folder / RUN_FILE: "a run record"})
    if (folder / "json").exists() and not (folder / "json").is_dir():
        raise UserError(f"{folder / 'json'}: is a file; the per-track JSON reports go in this folder")
    if (folder / "json").is_dir():  # any file there may be a track's report to replace
        check_outputs({p: "a museval track report" for p in (folder / "json").glob("*.json")})


def write_reports(df: pd.DataFrame, output: str | os.PathLike, win_seconds: float,
                  references: str | os.PathLike | None = None,
                  estimates: str | os.PathLike | None = None) -> list[Path]:
    """Write the long table, its summary and one museval JSON per track, atomically.

    `output` is a folder (→ `report.csv`, `summary.csv`, `json/<track>.json` in it) or a
    `.csv` path for the long table (the summary and `json/` go beside it). Given the
    reference and estimate folders that were scored, `run.json` beside them records them
    (relative to the report's folder, so a run folder moved with its inputs still reports), so
    `audiosep report` can find the audio.
    Returns the report, summary and JSON folder paths (and run.json).
    """
    folder, report = report_paths(output)
    paths = [write_csv(df, report)]
    write_summary_csv(df, folder / "summary.csv")
    paths.append(folder / "summary.csv")
    for (track, method), rows in df.groupby(["track", "method"], sort=False):
        name = f"{track}.json" if df["method"].nunique() == 1 else f"{track}.{method}.json"
        write_track_json(rows, folder / "json" / name, win_seconds)
    paths.append(folder / "json")
    if references is not None and estimates is not None:
        base = folder.resolve()
        run = {"report": report.name, "references": os.path.relpath(Path(references).resolve(), base),
               "estimates": os.path.relpath(Path(estimates).resolve(), base), "methods": sorted(df["method"].unique())}
        with atomic_output(folder / RUN_FILE) as tmp:
            tmp.write_text(json.dumps(run, indent=2))
        paths.append(folder / RUN_FILE)
    return paths


def _is_silent(wav: np.ndarray) -> bool:
    """BSSEval's notion of silence: the channel sum is zero at every sample."""
    return not np.any(wav.sum(axis=0) != 0)


def _reference_stems(track_dir: Path) -> list[Path]:
    """The target stems `<source>.wav` of a reference track folder (mixture excluded), sorted."""
    return sorted(
        p for p in track_dir.glob("*.wav") if p.is_file() and p.stem.lower() not in MIXTURE_NAMES
    )


def _load_references(track_dir: Path) -> tuple[list[str], np.ndarray, int]:
    """Targets, references (K, C, N) and the rate of a reference track folder."""
    stems = _reference_stems(track_dir)
    if not stems:
        raise UserError(f"{track_dir}: no target stems (<source>.wav other than mix/mixture)")
    first, rate = read_audio(stems[0])
    refs = [first]
    for path in stems[1:]:
        wav, sr = read_audio(path)
        _check_like(path, wav, sr, first, rate, "the track's first reference")
        if wav.shape[-1] != first.shape[-1]:
            raise UserError(f"{path}: {wav.shape[-1]} samples but {stems[0].name} has {first.shape[-1]}")
        refs.append(wav)
    return [p.stem for p in stems], np.stack(refs), rate


def _check_like(path: Path, wav: np.ndarray, sr: int, ref: np.ndarray, ref_sr: int, what: str) -> None:
    """UserError naming `path` if its rate or channel count differs from `what`'s."""
    if sr != ref_sr:
        raise UserError(f"{path}: sample rate {sr} Hz differs from {what} ({ref_sr} Hz)")
    if wav.shape[0] != ref.shape[0]:
        raise UserError(f"{path}: {wav.shape[0]} channel(s) but {what} has {ref.shape[0]}")


def estimate_file(est_dir: Path, target: str) -> Path:
    """The estimate of `target` in `est_dir`: `<target>` with any audio suffix (`io.AUDIO_SUFFIXES`,
    what `separate --format` writes: wav, flac, mp3).

    Raises:
        UserError: none, or several (two formats of one stem: which one is meant is unclear).
    """
    found = [est_dir / f"{target}{suffix}" for suffix in AUDIO_SUFFIXES if (est_dir / f"{target}{suffix}").is_file()]
    if not found:
        raise UserError(f"{est_dir / target}.wav: missing estimate for target '{target}' (looked for "
                        f"{', '.join(AUDIO_SUFFIXES)})")
    if len(found) > 1:
        raise UserError(f"{est_dir}: {len(found)} estimates of '{target}' ({', '.join(p.name for p in found)}); keep one")
    return found[0]


def _load_estimates(est_dir: Path, targets: list[str], refs: np.ndarray, rate: int) -> np.ndarray:
    """Estimates (K, C, N) for `targets` at the references' length N.

    An estimate at most `LENGTH_TOLERANCE` seconds longer or shorter than its reference is cut
    or zero-padded with a warning (resamplers and codecs shift lengths by a few samples);
    a larger difference is refused: the files are probably not of the same track or take.
    """
    length = refs.shape[-1]
    ests = np.zeros_like(refs)
    for k, target in enumerate(targets):
        path = estimate_file(est_dir, target)
        wav, sr = read_audio(path)
        _check_like(path, wav, sr, refs[k], rate, "the reference")
        if wav.shape[-1] != length:
            diff = (wav.shape[-1] - length) / rate
            if abs(diff) > LENGTH_TOLERANCE:
                raise UserError(f"{path}: {wav.shape[-1]} samples, the reference {length} ({diff:+.2f} s; more than "
                                f"{LENGTH_TOLERANCE} s apart, so probably not the same take)")
            warnings.warn(f"{path}: {wav.shape[-1]} samples, the reference {length}: "
                          f"{'cut' if diff > 0 else 'zero-padded'} to the reference's length", stacklevel=2)
        n = min(length, wav.shape[-1])
        ests[k, :, :n] = wav[:, :n]
    return ests


def audio_files(folder: Path) -> list[Path]:
    """The audio files directly in `folder` (hidden ones, e.g. a writer's temporary files, left out), sorted."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES and not p.name.startswith("."))


def _warn_unscored(where: Path, names: Sequence[str], why: str) -> None:
    """Warn that `names` in `where` were not scored (the first ten named), so that a stem or track
    the user meant to evaluate is not left out without a word."""
    if names:
        shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        warnings.warn(f"{where}: not scored ({why}): {shown}", stacklevel=3)


def check_window(win_seconds: float, rate: int) -> None:
    """UserError unless the BSSEval window is at least one sample at `rate` Hz: checked before
    any work by the commands that write estimates first."""
    _window_samples(win_seconds, rate, "window")


def _window_samples(seconds: float, rate: int, what: str) -> int:
    samples = round(seconds * rate)
    if samples < 1:
        raise UserError(f"{what} of {seconds} s is shorter than one sample at {rate} Hz")
    return samples


def evaluate_track(
    ref_track: str | os.PathLike,
    est_track: str | os.PathLike,
    win_seconds: float = 1.0,
    hop_seconds: float | None = None,
    method: str = "estimates",
) -> pd.DataFrame:
    """BSSEval v4 of one track folder of estimates against one of references.

    Args:
        ref_track: folder of reference stems `<source>.wav` (a `mix.wav`/`mixture.wav` in it
            is not a target).
        est_track: folder with one `<source>` audio file (.wav, .flac, .mp3, ...) per reference target
            (other audio files are not scored, with a warning naming them).
        win_seconds, hop_seconds: BSSEval window and hop (hop defaults to the window),
            rounded to samples at the track's rate.
        method: value of the `method` column.
    Returns:
        the track's long table (columns `COLUMNS`); the track name is the folder name. A
        target whose reference or estimate is silent over the whole track (BSSEval is
        undefined there; museval raises) scores NaN, with a warning; the other targets are
        scored against the remaining references.
    Raises:
        UserError naming the file: a missing estimate, a sample-rate or channel mismatch,
        references of unequal length, an estimate of another length (see `_load_estimates`).
    """
    ref_track, est_track = Path(ref_track), Path(est_track)
    targets, refs, rate = _load_references(ref_track)
    ests = _load_estimates(est_track, targets, refs, rate)
    _warn_unscored(est_track, [p.name for p in audio_files(est_track) if p.stem not in targets],
                   f"no reference stem in {ref_track}")
    return score_track(ref_track.name, targets, refs, ests, rate, win_seconds, hop_seconds, method)


def score_track(
    track: str,
    targets: Sequence[str],
    references: np.ndarray,
    estimates: np.ndarray,
    rate: int,
    win_seconds: float = 1.0,
    hop_seconds: float | None = None,
    method: str = "estimates",
) -> pd.DataFrame:
    """BSSEval v4 of in-memory stems, as the track's long table.

    Args:
        references, estimates: `(K, C, N)` at `rate` Hz, targets in the order of `targets`.
        win_seconds, hop_seconds: window and hop (hop defaults to the window), rounded to samples.
    Returns:
        the long table (columns `COLUMNS`).
    """
    win = _window_samples(win_seconds, rate, "window")
    hop = _window_samples(win_seconds if hop_seconds is None else hop_seconds, rate, "hop")
    references, estimates = np.asarray(references), np.asarray(estimates)
    silent = [_is_silent(r) or _is_silent(e) for r, e in zip(references, estimates)]
    for name, quiet in zip(targets, silent):
        if quiet:
            warnings.warn(f"{track}/{name}: reference or estimate silent over the whole track; scored NaN",
                          stacklevel=2)
    keep = [k for k, quiet in enumerate(silent) if not quiet]
    n_win = max(references.shape[-1] - win, 0) // hop + 1  # bss_eval_v4's window count
    scores = np.full((4, len(targets), n_win), np.nan)
    if keep:
        scores[:, keep] = bss_eval_v4(references[keep].transpose(0, 2, 1), estimates[keep].transpose(0, 2, 1),
                                      win=win, hop=hop)
    sdr, isr, sir, sar = scores
    return track_frame(track, targets, sdr, isr, sir, sar, hop / rate, method)


def evaluate_dirs(
    ref_dir: str | os.PathLike,
    est_dir: str | os.PathLike,
    win_seconds: float = 1.0,
    hop_seconds: float | None = None,
    method: str = "estimates",
    progress: bool = True,
) -> pd.DataFrame:
    """BSSEval v4 of every track `ref_dir/<track>/` against `est_dir/<track>/`.

    A track is a sub-folder of `ref_dir` holding `.wav` files; see `evaluate_track` for
    what it must contain and the errors. Estimate track folders with audio but no reference
    are not scored, with a warning naming them. A `ref_dir` without track sub-folders but with
    `.wav` stems of its own is one track, scored against `est_dir` as one track (so that one
    track of a dataset, e.g. `examples/drums_bass`, is scored alone).

    Args:
        ref_dir: folder of reference track folders. est_dir: folder of estimate track folders.
        win_seconds, hop_seconds: BSSEval window and hop in seconds (hop defaults to the window).
        method: value of the `method` column.
        progress: show a tqdm bar over tracks.
    Returns:
        the long table of all tracks (columns `COLUMNS`).
    """
    ref_dir, est_dir = Path(ref_dir), Path(est_dir)
    for folder, what in ((ref_dir, "reference"), (est_dir, "estimate")):
        if not folder.is_dir():
            raise UserError(f"{folder}: no such {what} folder")
    tracks = sorted(p for p in ref_dir.iterdir() if p.is_dir() and any(p.glob("*.wav")))
    if not tracks and any(ref_dir.glob("*.wav")):
        return evaluate_track(ref_dir, est_dir, win_seconds, hop_seconds, method)
    if not tracks:
        raise UserError(f"{ref_dir}: no track folders with .wav stems (expected {ref_dir}/<track>/<source>.wav)")
    names = {track.name for track in tracks}
    _warn_unscored(est_dir, [p.name for p in sorted(est_dir.iterdir())
                             if p.is_dir() and p.name not in names and audio_files(p)],
                   f"no reference track in {ref_dir}")
    tables = [
        evaluate_track(track, est_dir / track.name, win_seconds, hop_seconds, method)
        for track in progress_bar(tracks, desc="evaluate", unit="track", disable=not progress)
    ]
    return pd.concat(tables, ignore_index=True)
