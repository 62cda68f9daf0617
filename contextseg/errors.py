"""One exception type for mistakes a user can make (bad path, bad label, unknown name).

The CLI prints these as a single line and exits with status 2; everything else is a bug and keeps its traceback.
"""


class ContextSegError(Exception):
    """A user-facing error: the message names the problem and the fix."""
