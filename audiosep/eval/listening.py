"""The listening report: one self-contained HTML page to see and hear a separation run.

`audiosep report RUN_DIR -o report.html` finds every evaluation under RUN_DIR (a folder with
`run.json` beside its `report.csv`, written by `audiosep evaluate` and `audiosep oracle`) and
draws: the methods on the page, each with a line on what it is; the summary across tracks and
methods (median over windows, then tracks, as `summarize`: one row per method and source) with
a picture of SDR per method and source; then per track, audio players for the mixture first,
the references and every method's estimates, a mel spectrogram under each (frequency in Hz,
time in s), the SDR of every 1 s window over time per source (where a method fails), and,
when the page holds several tracks, the track's score table.

Everything is embedded (audio as MP3, pictures as PNG, as data: URIs), so the file opens
anywhere, without a network or the run folder. Clips are cut to `seconds` and at most
`max_tracks` tracks are shown, to keep the page small (about 0.2 MB per 10 s clip). A script
at the end of the page records, once loaded, how many players and pictures the browser
decoded (`data-audio-ok` / `data-images-ok` on <body>): the tests read them in headless
Chromium.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch

from ..errors import UserError
from ..io import AUDIO_SUFFIXES, atomic_output, convert_channels, read_audio, resample
from ..progress import progress_bar
from ..spectral.files import mel_picture, min_samples, png_bytes
from ..spectral.frontend import get_frontend
from .report import METRICS, MIXTURE_NAMES, RUN_FILE, audio_files, summarize

REPORT_COLUMNS = ("track", "method", "target", "metric", "score")  # what the report reads of report.csv


@dataclass(frozen=True)
class Evaluation:
    """One scored run found under RUN_DIR: its long table and the folders it scored."""

    table: pd.DataFrame
    references: Path
    estimates: Path


def find_evaluations(run_dir: str | os.PathLike) -> list[Evaluation]:
    """Every evaluation under `run_dir` (folders holding `run.json` and its report), sorted by path.

    Raises:
        UserError: no such folder, or no evaluation in it.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    found = []
    for run_file in sorted(run_dir.rglob(RUN_FILE)):
        try:
            run = json.loads(run_file.read_text())
            # relative to the run file's folder (absolute in run files written before that)
            report = run_file.parent / run["report"]
            references, estimates = (run_file.parent / Path(run[key]) for key in ("references", "estimates"))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(f"{run_file}: not a run description written by `audiosep evaluate` ({err})") from None
        for what, folder in (("references", references), ("estimates", estimates)):
            if not folder.is_dir():  # the scores still report; the page says why players are missing
                warnings.warn(f"{run_file}: the {what} folder it names, {folder}, is missing (moved or deleted?); "
                              "the page has no players for it", stacklevel=2)
        found.append(Evaluation(_read_report(report), references, estimates))
    if not found:
        raise UserError(f"{run_dir}: no evaluations in it (folders with {RUN_FILE}, written by `audiosep evaluate` "
                        "or `audiosep oracle`)")
    return found


def _read_report(path: Path) -> pd.DataFrame:
    """An evaluation's long table (report.csv), checked: its columns, numeric scores, at least
    one finite score.

    Raises:
        UserError naming the file: unreadable, not CSV, a missing column or key, a score that is
            not a number, or no finite score at all.
    """
    keys = [c for c in REPORT_COLUMNS if c != "score"]
    try:
        table = pd.read_csv(path, dtype=dict.fromkeys(keys, str))  # a track named 001 stays "001"
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a report written by `audiosep evaluate` ({type(err).__name__})") from None
    missing = [c for c in REPORT_COLUMNS if c not in table.columns]
    if missing:
        raise UserError(f"{path}: not a report written by `audiosep evaluate` (no column {', '.join(missing)})")
    if table[keys].isna().any(axis=None):
        raise UserError(f"{path}: not a report written by `audiosep evaluate` (a row without a {', '.join(keys)})")
    scores = pd.to_numeric(table["score"], errors="coerce")
    if (scores.isna() & table["score"].notna()).any():
        raise UserError(f"{path}: not a report written by `audiosep evaluate` (a score that is not a number)")
    if not np.isfinite(scores).any():
        raise UserError(f"{path}: no finite score in it (an evaluation of silent or missing stems?)")
    return table.assign(score=scores)


def write_listening_report(run_dir: str | os.PathLike, output: str | os.PathLike, max_tracks: int = 10,
                           seconds: float = 30.0, preset: str = "default", progress: bool = True,
                           descriptions: Mapping[str, str] | None = None) -> Path:
    """Write the HTML listening report of the evaluations under `run_dir` (see the module docstring).

    Args:
        max_tracks: tracks with players and pictures (the first in name order); the summary
            covers all of them.
        seconds: length of every embedded clip (from the start).
        preset: front end of the mel pictures.
        descriptions: a line on each method name the page may meet (the CLI passes the
            separation methods' and the oracles'); another name is described by its folder.
    Returns:
        the path written (atomically).
    """
    frontend = get_frontend(preset)
    least = min_samples(frontend) / frontend.sample_rate
    if not seconds >= least:
        raise UserError(f"clips of {seconds:g} s are too short for a mel picture: at least {least:g} s")
    evaluations = find_evaluations(run_dir)
    table = pd.concat([e.table for e in evaluations], ignore_index=True)
    tracks = sorted(table["track"].unique())
    sections = [
        _track_section(track, evaluations, table[table.track == track], frontend, seconds, len(tracks) > 1)
        for track in progress_bar(tracks[:max_tracks], desc="report", unit="track", disable=not progress)
    ]
    intro = _methods_section(evaluations, dict(descriptions or {}), Path(output).parent)
    page = _page(Path(run_dir).name, intro + _summary_section(table, len(tracks), max_tracks), sections)
    with atomic_output(output) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return Path(output)


def _track_section(track: str, evaluations: list[Evaluation], rows: pd.DataFrame, frontend, seconds: float,
                   with_table: bool) -> str:
    """HTML of one track: players with pictures (mixture, references, estimates), the SDR of
    each 1 s window over time, and (`with_table`: when the summary is not this track's alone)
    the track's score table."""
    references = next((folder for e in evaluations if (folder := _track_folder(e.references, track))), None)
    clips: list[tuple[str, Path]] = []
    if references is not None:
        stems = [p for p in audio_files(references) if p.stem.lower() not in MIXTURE_NAMES]
        clips += [("mixture", p) for p in _mixture(references)] + [(f"reference: {p.stem}", p) for p in stems]
    for evaluation in evaluations:
        methods = evaluation.table["method"].unique()
        estimates = _track_folder(evaluation.estimates, track)
        for path in audio_files(estimates) if estimates else []:
            clips.append((f"{', '.join(methods)}: {path.stem}", path))
    cells = "".join(_clip_cell(label, path, frontend, seconds) for label, path in clips)
    over_time = base64.b64encode(_sdr_over_time_picture(rows)).decode("ascii")
    table = _table_html(_score_table(rows.groupby(["method", "target", "metric"])["score"].median())) \
        if with_table else ""
    return (f"<section><h2>{html.escape(track)}</h2><div class='clips'>{cells}</div>"
            f"<img class='wide' alt='SDR over time of {html.escape(track)}' src='data:image/png;base64,{over_time}'>"
            f"{table}</section>")


def _track_folder(root: Path, track: str) -> Path | None:
    """The folder of `track` in an evaluation's references or estimates: `root/<track>/`, or
    `root` itself when the evaluation scored one track folder (`evaluate examples/drums_bass ...`)."""
    if (root / track).is_dir():
        return root / track
    return root if root.is_dir() and audio_files(root) and not any(p.is_dir() for p in root.iterdir()) else None


def _mixture(references: Path) -> list[Path]:
    """The mixture of a reference track folder: its `mix.wav` (or `mixture.wav`), else the file
    `<track>.wav` beside the folder (the layout of `examples/`); [] if neither exists."""
    inside = [p for p in audio_files(references) if p.stem.lower() in MIXTURE_NAMES]
    beside = [references.parent / f"{references.name}{suffix}" for suffix in AUDIO_SUFFIXES]
    return inside[:1] or [p for p in beside if p.is_file()][:1]


def _clip_cell(label: str, path: Path, frontend, seconds: float) -> str:
    """A player and the mel picture of the first `seconds` of one audio file."""
    wav, rate = read_audio(path)
    wav = wav[:, : int(seconds * rate)]
    audio = base64.b64encode(_mp3_bytes(wav, rate)).decode("ascii")
    mono = convert_channels(resample(wav, rate, frontend.sample_rate), 1)  # the clip, read once
    # a clip shorter than one STFT frame is pictured with silence after it (the framing needs n_fft samples)
    mono = np.pad(mono, ((0, 0), (0, max(0, frontend.n_fft - mono.shape[1]))))
    unit = frontend.encode(torch.from_numpy(np.ascontiguousarray(mono))).numpy()
    picture = base64.b64encode(mel_picture(unit, frontend, compact=True)).decode("ascii")
    return (f"<figure><figcaption>{html.escape(label)}</figcaption>"
            f"<audio controls preload='metadata' src='data:audio/mpeg;base64,{audio}'></audio>"
            f"<img alt='mel spectrogram of {html.escape(label)}' src='data:image/png;base64,{picture}'></figure>")


def _mp3_bytes(wav: np.ndarray, rate: int) -> bytes:
    """`(C, N)` audio as MP3 (libsndfile's encoder), peaks above full scale scaled down."""
    peak = float(np.max(np.abs(wav))) if wav.size else 0.0
    wav = wav / peak * 0.999 if peak > 1.0 else wav
    buffer = io.BytesIO()
    sf.write(buffer, wav.T, rate, format="MP3", subtype="MPEG_LAYER_III")
    return buffer.getvalue()


def _methods_section(evaluations: list[Evaluation], descriptions: dict[str, str], page_dir: Path) -> str:
    """HTML list of the methods on the page, each with a line on what it is: its entry in
    `descriptions`, else the folder of its estimates (relative to the page)."""
    items = {}
    for evaluation in evaluations:
        for method in evaluation.table["method"].unique():
            folder = os.path.relpath(evaluation.estimates.resolve(), page_dir.resolve())
            items.setdefault(method, descriptions.get(method, f"the estimates in {folder}"))
    lines = "".join(f"<li><b>{html.escape(m)}</b>: {html.escape(d)}</li>" for m, d in sorted(items.items()))
    return f"<section><h2>Methods</h2><ul>{lines}</ul></section>"


def _summary_section(table: pd.DataFrame, n_tracks: int, max_tracks: int) -> str:
    """HTML of the summary across tracks: median table and the SDR picture."""
    summary = summarize(table)
    picture = base64.b64encode(_sdr_picture(summary)).decode("ascii")
    shown = f"; players for the first {max_tracks}" if n_tracks > max_tracks else ""
    return (f"<section><h2>Summary ({n_tracks} track{'s' if n_tracks != 1 else ''}{shown})</h2>"
            "<p>Median over 1 s windows, then over tracks (BSSEval v4, dB).</p>"
            f"{_table_html(_score_table(summary.set_index(['method', 'target', 'metric'])['score']))}"
            f"<img alt='SDR per method and source' src='data:image/png;base64,{picture}'></section>")


def _score_table(scores: pd.Series) -> pd.DataFrame:
    """Scores indexed by (method, target, metric) as a flat table: one row per method and
    source, one column per metric in BSSEval's order."""
    wide = scores.unstack("metric").reset_index().rename(columns={"target": "source"})
    wide.columns.name = None
    return wide[["method", "source", *(m for m in METRICS if m in wide.columns)]]


def _sdr_over_time_picture(rows: pd.DataFrame) -> bytes:
    """PNG bytes of one track's SDR per window (dB) against the window's start (s): one panel
    per source, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sdr = rows[rows.metric == "SDR"]
    targets = sorted(sdr["target"].unique())
    fig, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 2.4), squeeze=False, sharey=True)
    for ax, target in zip(axes[0], targets):
        for method, part in sdr[sdr.target == target].groupby("method"):
            ax.plot(part["time"], part["score"], marker=".", lw=1, label=method)
        ax.set_title(target, fontsize=9)
        ax.set_xlabel("time (s)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0, 0].set_ylabel("SDR (dB)", fontsize=8)
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return png_bytes(fig)


def _sdr_picture(summary: pd.DataFrame) -> bytes:
    """PNG bytes of a grouped bar chart: median SDR per method (groups) and target (bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sdr = summary[summary.metric == "SDR"].pivot_table(index="method", columns="target", values="score")
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(sdr) * max(1, len(sdr.columns)) / 2, 3.2))
    sdr.plot.bar(ax=ax, rot=20)
    ax.set_ylabel("median SDR (dB)")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.legend(title="target", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return png_bytes(fig)


def _table_html(frame: pd.DataFrame) -> str:
    """A flat table as HTML, scores to 0.01 dB."""
    return frame.round(2).to_html(classes="scores", na_rep="NaN", border=0, index=False)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
.clips { display: flex; flex-wrap: wrap; gap: 0.8em; }
figure { margin: 0; width: 420px; } figcaption { font-size: 0.85em; margin-bottom: 0.2em; }
audio { width: 100%; } figure img { width: 100%; display: block; } img.wide { max-width: 100%; }
table.scores { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
table.scores td, table.scores th { padding: 0.15em 0.6em; text-align: right; border-bottom: 1px solid #ddd; }
"""

# Once everything loaded: how many players decoded their audio and pictures their image.
_CHECK = """
<script>
window.addEventListener('load', function () {
  var audios = Array.from(document.querySelectorAll('audio'));
  var images = Array.from(document.querySelectorAll('img'));
  function count() {
    document.body.dataset.audioOk = audios.filter(a => a.readyState >= 1 && a.duration > 0).length + '/' + audios.length;
    document.body.dataset.imagesOk = images.filter(i => i.complete && i.naturalWidth > 0).length + '/' + images.length;
  }
  audios.forEach(a => a.addEventListener('loadedmetadata', count));
  count();
});
</script>
"""


def _page(title: str, summary: str, sections: list[str]) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>audiosep: {html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>audiosep listening report: {html.escape(title)}</h1>"
            f"{summary}{''.join(sections)}{_CHECK}</body></html>")
