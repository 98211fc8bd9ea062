"""Progress bars: tqdm's on a terminal; elsewhere (a log file, CI) a plain line every few seconds.

tqdm redraws its bar in place with carriage returns (and moves the cursor up with escape codes
for nested bars): on a terminal that is one moving line, in a file it is one growing line full
of control characters. `progress_bar` gives every bar of the package the same behaviour: when
stderr is not a terminal the bar writes each state as its own line, at most one per
`PLAIN_INTERVAL` seconds (the first and the last always), without control characters.
"""
from __future__ import annotations

import io
import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

PLAIN_INTERVAL = 5.0  # seconds between two lines of a bar when stderr is not a terminal


class _Lines(io.TextIOBase):
    """A text stream that turns tqdm's redraws into whole lines on stderr: carriage returns and
    cursor-up codes dropped, blank redraws (a bar clearing itself) skipped."""

    def write(self, text: str) -> int:
        line = text.replace("\r", "").replace("\x1b[A", "").rstrip()
        if line:
            sys.stderr.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        sys.stderr.flush()


def progress_bar(iterable: Iterable | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar (the same arguments); when stderr is not a terminal, in plain lines (see the
    module doc) unless the caller names its own `file`."""
    if "file" not in kwargs and not _is_terminal(sys.stderr):
        kwargs = {"mininterval": PLAIN_INTERVAL, "ncols": 100, **kwargs, "file": _Lines(), "dynamic_ncols": False}
    return tqdm(iterable, **kwargs)


def _is_terminal(stream: Any) -> bool:
    """Whether `stream` is an interactive terminal (False for files, pipes and closed streams)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
