"""What the teeny-bench tests share."""

import shutil
import tempfile
from pathlib import Path

import pytest


@pytest.fixture
def outside_tmp():
    """``outside_tmp(mode, {name: (text or bytes, mode)})``: a fresh directory with those files, beside the
    tests rather than under /tmp (a sandbox sees a private /tmp of its own, not this directory); removed when the
    test ends."""
    made: list[Path] = []

    def make(mode: int, files: dict[str, tuple[str | bytes, int]]) -> Path:
        directory = Path(tempfile.mkdtemp(prefix=".teeny-outside-", dir=Path(__file__).parent))
        made.append(directory)
        directory.chmod(mode)
        for name, (content, file_mode) in files.items():
            path = directory / name
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
            path.chmod(file_mode)
        return directory

    yield make
    for directory in made:
        shutil.rmtree(directory, ignore_errors=True)
