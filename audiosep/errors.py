"""Errors a user can cause: the CLI prints them as one line and exits 2."""
from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """A problem with the user's input (file, argument, checkpoint, config), not a bug.

    The message is one line and names the offending file or value.
    """


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C (the CLI installs the handler) so that every `finally`
    (temporary files) and a training's interrupt handling run; the CLI exits 143."""


def run_reporting_user_errors(main: Callable[[], object], prog: str) -> None:
    """Run `main()` (a script's entry point, e.g. a benchmark); a UserError ends the process
    with its one-line message on stderr and status 2, like the CLI, instead of a traceback."""
    try:
        main()
    except UserError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
