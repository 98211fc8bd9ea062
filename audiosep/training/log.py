"""The training log: a CSV beside each checkpoint, one row per checkpoint and per validation.

`MODEL.pt` → `MODEL.log.csv` with the columns of `COLUMNS`: step; loss (the mean training loss
of the steps since the previous row); valid_loss (the EMA weights' validation loss at that step,
empty where none ran); lr (the learning rate of that step); samples_per_s (training items per
second since the previous row, all processes together); wall_s (training wall time since the run
began, summed over resumes). A resumed run keeps the rows up to its checkpoint's step and
appends (rows a killed run wrote after its last checkpoint are dropped, so the log and the
checkpoint agree); a fresh run starts a new log. The file is (re)written with a run's first
row, so a run that fails before it leaves the log as it was (none for a fresh run). Rows are
flushed as they are written, so the curve survives an interrupted run. `plot_logs` draws the curves (`audiosep plot`).
"""
from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path

from ..errors import UserError
from ..io import atomic_output

COLUMNS = ("step", "loss", "valid_loss", "lr", "samples_per_s", "wall_s")


def log_path(checkpoint: str | os.PathLike) -> Path:
    """The log of the checkpoint at `checkpoint`: the same name with `.log.csv` for its suffix."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".log.csv")


def read_log(path: str | os.PathLike) -> list[dict[str, float]]:
    """The rows of a training log, as floats (NaN for an empty valid_loss).

    Raises:
        UserError: a missing or unreadable file, other columns, a value that is not a number,
            or steps that do not increase.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != COLUMNS:
                raise UserError(f"{path}: not a training log (columns {', '.join(reader.fieldnames or ['none'])}; "
                                f"expected {', '.join(COLUMNS)})")
            rows = [{key: float(row[key]) if row[key] != "" else math.nan for key in COLUMNS} for row in reader]
    except FileNotFoundError:
        raise UserError(f"{path}: no such training log") from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{path}: cannot read this training log ({err})") from None
    except (ValueError, TypeError):
        raise UserError(f"{path}: a training log with a value that is not a number") from None
    steps = [row["step"] for row in rows]
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise UserError(f"{path}: a training log whose steps do not increase")
    return rows


class TrainingLog:
    """Writes the log of one run (see the module doc); the training loop makes one on rank 0 only.

    Args:
        checkpoint: the run's checkpoint path (the log goes beside it).
        start_step: the step the run starts from (0 fresh, else the resumed checkpoint's).
        items_per_step: training items per optimiser step, all processes together.
    Raises:
        UserError: on a resume, an existing log that is not a training log (it is not replaced).
    """

    def __init__(self, checkpoint: str | os.PathLike, start_step: int, items_per_step: int) -> None:
        self.path = log_path(checkpoint)
        rows = []
        if start_step > 0 and self.path.is_file():
            rows = [row for row in read_log(self.path) if row["step"] <= start_step]
        self._wall = rows[-1]["wall_s"] if rows else 0.0
        self._kept: list[dict[str, float]] | None = rows  # written with the first row: a run that fails first leaves none
        self.items_per_step = items_per_step
        self._last_step, self._last_time = start_step, time.perf_counter()
        self._losses: list[float] = []

    def add_loss(self, loss: float) -> None:
        """Record one step's training loss (averaged into the next row)."""
        self._losses.append(loss)

    def write(self, step: int, valid_loss: float, lr: float) -> None:
        """Append the row of `step` (NaN `valid_loss`: none ran at this step)."""
        now = time.perf_counter()
        elapsed = now - self._last_time
        self._wall += elapsed
        steps = step - self._last_step
        row = {"step": step, "loss": sum(self._losses) / len(self._losses) if self._losses else math.nan,
               "valid_loss": valid_loss, "lr": lr,
               "samples_per_s": steps * self.items_per_step / elapsed if elapsed > 0 else math.nan,
               "wall_s": self._wall}
        if self._kept is None:
            with open(self.path, "a", newline="", encoding="utf-8") as f:
                csv.writer(f).writerow(_format(row))
        else:  # the run's first row: the kept rows and it, replacing the file at once
            with atomic_output(self.path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
                csv.writer(f).writerows([COLUMNS, *(_format(r) for r in (*self._kept, row))])
            self._kept = None
        self._last_step, self._last_time, self._losses = step, now, []


def _format(row: dict[str, float]) -> list[str]:
    """A row's values as CSV fields: the step an integer, NaN empty, others to 10 significant digits."""
    out = [str(int(row["step"]))]
    for key in COLUMNS[1:]:
        value = row[key]
        out.append("" if math.isnan(value) else f"{value:.10g}")
    return out


def plot_logs(paths: list[str | os.PathLike], output: str | os.PathLike) -> None:
    """A PNG of the training and validation loss against step (log scale) of each log in `paths`,
    and their samples/s, written atomically to `output`.

    Raises:
        UserError: as `read_log`, or a log with no row yet (nothing to draw).
    """
    logs = {Path(p): read_log(p) for p in paths}
    empty = [str(path) for path, rows in logs.items() if not rows]
    if empty:
        raise UserError(f"{', '.join(empty)}: no row yet (a training writes one at each checkpoint); nothing to plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=(3, 1))
    for path, rows in logs.items():
        name = path.name.removesuffix(".log.csv")
        steps = [r["step"] for r in rows]
        line, = top.plot(steps, [r["loss"] for r in rows], lw=1, alpha=0.6, label=f"{name} train")
        valid = [(r["step"], r["valid_loss"]) for r in rows if not math.isnan(r["valid_loss"])]
        if valid:
            top.plot(*zip(*valid), "o-", color=line.get_color(), ms=3, label=f"{name} valid")
        bottom.plot(steps, [r["samples_per_s"] for r in rows], color=line.get_color(), lw=1)
    if all(r["loss"] > 0 for rows in logs.values() for r in rows if not math.isnan(r["loss"])):
        top.set_yscale("log")
    top.set_ylabel("loss")
    top.legend(fontsize=8)
    top.grid(alpha=0.3)
    bottom.set_ylabel("samples/s")
    bottom.set_xlabel("step")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_output(output) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
