"""One exception type for mistakes a user can make (bad path, bad label, unknown name).

The CLI prints these as a single line and exits with status 2; everything else is a bug and keeps its traceback.
"""


class ContextSegError(Exception):
    """A user-facing error: the message names the problem and the fix."""


class Interrupted(ContextSegError):
    """Training stopped by Ctrl-C after saving a checkpoint; the CLI exits with 130 (128 + SIGINT)."""

    exit_code = 130


def unreadable_file(path, exc: Exception, what: str = "checkpoint") -> ContextSegError:
    """One line for a file torch.load(weights_only=True) cannot read. A file of pickled Python objects is refused,
    never unpickled (unpickling can run code), and the message does not suggest doing so."""
    if "GLOBAL" in str(exc) or "Unsupported global" in str(exc):  # a pickled class or function, not a tensor
        return ContextSegError(f"{str(path)!r} holds pickled Python objects, which contextseg never unpickles "
                               f"(unpickling can run code); use a {what} written by contextseg or the official "
                               f"weights files (contextseg.load_official)")
    return ContextSegError(f"{str(path)!r} is not a readable {what} (truncated, damaged or another format: "
                           f"{exc.__class__.__name__}); use OUTPUT_DIR/last.pt or best.pt of a contextseg run, or "
                           f"the official weights file")
