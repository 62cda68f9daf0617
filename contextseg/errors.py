"""One exception type for mistakes a user can make (bad path, bad label, unknown name).

The CLI prints these as a single line and exits with status 2; everything else is a bug and keeps its traceback.
"""


class ContextSegError(Exception):
    """A user-facing error: the message names the problem and the fix."""


class Interrupted(ContextSegError):
    """Training stopped by Ctrl-C after saving a checkpoint; the CLI exits with 130 (128 + SIGINT)."""

    exit_code = 130
