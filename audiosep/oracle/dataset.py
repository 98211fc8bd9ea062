"""Run an oracle over a dataset split: write the estimates and the BSSEval v4 reports."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.stems import check_complete, is_track_folder, list_tracks, load_track
from ..errors import UserError
from ..eval.report import check_window, score_track, write_reports
from ..io import audio_info, check_finite_audio, check_outputs, write_audio
from ..progress import progress_bar
from ..spectral.frontend import get_frontend
from . import check_oracle, run_oracle


def oracle_dataset(
    name: str,
    data: str | os.PathLike,
    output: str | os.PathLike,
    split: str = "test",
    preset: str = "default",
    win_seconds: float = 1.0,
    progress: bool = True,
) -> tuple[pd.DataFrame, list[Path]]:
    """Separate every track of `data/<split>` with the oracle `name` and evaluate it.

    The estimates go to `output/<track>/<source>.wav` at the track's rate and channel
    count; the reports (`report.csv`, `summary.csv`, `json/`) beside them. The mixture is
    the sum of the true sources. `preset` is the front end of the mel oracles.

    Returns:
        (the long table of all tracks, the paths of the reports).
    Raises:
        UserError: (before any work) a track lacking a source the others have, or a single source
            (the mixture would be that source); a stem that is not readable audio or holds NaN or
            infinite samples; a window shorter than a sample; an output inside the split folder
            (its references would be replaced) or an output stem path holding a file that is not
            audio.
    """
    check_oracle(name)
    output = Path(output)
    opts = {"frontend": get_frontend(preset)} if name == "mel-ideal" else {}
    tables = []
    tracks = list_tracks(data, split)
    sources = check_complete(tracks)
    if len(sources) < 2:
        raise UserError(f"{data}: the tracks of split '{split}' have one source ({sources[0]}); an oracle "
                        "separates a mixture of two or more")
    _check_before_work(tracks, sources, output, win_seconds)
    for track in progress_bar(tracks, desc=f"oracle {name}", unit="track", disable=not progress):
        _, stems, rate = load_track(track)
        targets = sorted(stems)
        sources = np.stack([stems[s] for s in targets])  # (K, C, N)
        estimates = run_oracle(name, sources, rate, **opts)
        for target, estimate in zip(targets, estimates):
            write_audio(output / track.name / f"{target}.wav", estimate, rate)
        tables.append(score_track(track.name, targets, sources, estimates, rate, win_seconds, method=name))
    table = pd.concat(tables, ignore_index=True)
    split_dir = next((t.mix.parent.parent for t in tracks if t.mix is not None), None)
    return table, write_reports(table, output, win_seconds, references=split_dir, estimates=output)


def _check_before_work(tracks: list, sources: list[str], output: Path, win_seconds: float) -> None:
    """Every check `oracle_dataset` can make before it writes the first estimate (see its Raises)."""
    stems = [path for track in tracks for paths in track.sources.values() for path in paths]
    for path in stems:  # a NaN in the last track must not stop the run after the first ones are written
        check_finite_audio(path)
    rates = {audio_info(path)[0] for path in stems}
    for rate in rates:
        check_window(win_seconds, rate)
    folders = {(t.mix.parent if t.mix is not None else next(iter(t.sources.values()))[0].parent).parent.resolve()
               for t in tracks}  # the split folders (a Slakh stem lies one folder deeper than its mix)
    out = output.resolve()
    for folder in folders:
        if out == folder or folder in out.parents:
            raise UserError(f"{output}: inside the dataset split {folder}; its reference "
                            "stems would be replaced: name an output folder outside it")
    for track in tracks:
        if is_track_folder(output / track.name):
            raise UserError(f"{output / track.name}: a dataset track's folder; its reference stems would be "
                            "replaced: name an output folder outside the dataset")
    check_outputs({output / t.name / f"{s}.wav": "audio" for t in tracks for s in sources})
