"""Test helpers: file digests, running the CLI, the one-line error check (failure catalogue), the message of a raised
error (API checks)."""
import hashlib
from pathlib import Path

import pytest

from contextseg.cli import main
from contextseg.errors import ContextSegError


def digests(*paths) -> dict:
    """sha256 of every file under ``paths`` (files or folders)."""
    out = {}
    for p in paths:
        p = Path(p)
        for f in sorted(p.rglob("*") if p.is_dir() else [p]):
            if f.is_file():
                out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``contextseg ARGV``."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_clear_line(err: str, *words: str) -> None:
    """Exactly one ``contextseg ...`` error line holding ``words``, and no traceback."""
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("contextseg ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])


def error_message(fn, *args, exc: type = ContextSegError, **kwargs) -> str:
    """The message of the ``exc`` that ``fn(*args, **kwargs)`` raises; the test fails when it raises none."""
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    return str(info.value)
