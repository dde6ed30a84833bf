"""The errors the CLI turns into one ``Error:`` line and exit status 2 instead of a traceback."""

from __future__ import annotations

import errno
from pathlib import Path


class TeenyError(Exception):
    """A problem the user can fix: bad input, a missing plugin, an unusable artifact."""


class BadFileError(TeenyError):
    """A file that exists but does not hold what it should (garbled JSON, random bytes, a truncated model)."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)


class DiskFullError(TeenyError):
    """The disk filled up while writing ``path``; what was finished before is kept."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(f"no space left on the device while writing {path}; free some space and run the same "
                         "command again (finished work is kept)")
        self.path = Path(path)


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it chains) is an out-of-space error, from Python, safetensors or torch."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(exc)
        if "No space left on device" in text or "StorageFull" in text or "Disk quota exceeded" in text:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1  # type: ignore[assignment]
    return False


def one_line(exc: BaseException) -> str:
    """``TypeName: message`` on one line (a failed plugin's or variant's reason)."""
    text = " ".join(line.strip() for line in str(exc).strip().splitlines() if line.strip())
    return f"{type(exc).__name__}: {text}".rstrip(": ")
