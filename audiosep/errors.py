"""Errors a user can cause: the CLI prints them as one line and exits 2."""


class UserError(Exception):
    """A problem with the user's input (file, argument, checkpoint, config), not a bug.

    The message is one line and names the offending file or value.
    """


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C (the CLI installs the handler) so that every `finally`
    (temporary files) and a training's interrupt handling run; the CLI exits 143."""
