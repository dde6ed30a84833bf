"""The run store: atomic files and append-only sample logs that survive ``kill -9``.

Layout: ``runs/<experiment>/<variant>/{artifact/, samples.jsonl, metrics.json, profile.json, variant.json}``
and ``runs/<experiment>/manifest.json``. ``samples.jsonl`` holds one JSON record per finished item (all
evaluators; each record has ``evaluator`` and a unique ``key``); a torn last line from a crash is cut off
on the next open, so a resumed run redoes only the item that was in flight.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from teeny_core.types import EvalContext, LoadedModel


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file in the same directory, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes files private; results are meant to be shared
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_json(path: Path, default: Any = None) -> Any:
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else default


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class SampleLog:
    """An append-only JSONL file of finished records; each append is flushed and fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: list[dict[str, Any]] = []
        self._repair_and_read()

    def _repair_and_read(self) -> None:
        if not self.path.exists():
            return
        good_bytes = 0
        with open(self.path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break  # torn write from a crash: drop it
                try:
                    self.records.append(json.loads(line))
                except json.JSONDecodeError:
                    break
                good_bytes += len(line)
        if good_bytes != self.path.stat().st_size:
            with open(self.path, "r+b") as f:
                f.truncate(good_bytes)

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, sort_keys=True, default=str) + "\n"
        with open(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.records.append(record)

    def for_evaluator(self, name: str, config: str | None = None) -> list[dict[str, Any]]:
        """Records of one evaluator; with ``config``, only those written under those options."""
        return [r for r in self.records if r.get("evaluator") == name and (config is None or r.get("config") == config)]


def options_signature(evaluator: str, options: dict[str, Any], version: str = "") -> str:
    """A short hash of an evaluator's options (and its ``records_version``): records written under other
    options or another version are not reused."""
    parts: list[Any] = [evaluator, options] + ([version] if version else [])
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


class StoreContext(EvalContext):
    """The :class:`EvalContext` the pipeline hands an evaluator: records go to the variant's sample log."""

    def __init__(self, log: SampleLog, evaluator: str, *, seed: int, limit: int | None, cache_dir: Path,
                 config: str = "", reference_loader=None, reference_id: str = "", progress_factory=None) -> None:
        self.log, self.evaluator, self.config = log, evaluator, config
        self.seed, self.limit, self.cache_dir = seed, limit, Path(cache_dir)
        self._reference_loader, self._reference, self._reference_id = reference_loader, None, reference_id
        self._progress_factory = progress_factory
        self._done = {r["key"] for r in log.for_evaluator(evaluator, config)}

    def done(self) -> set[str]:
        return set(self._done)

    def write(self, record: dict[str, Any]) -> None:
        if "key" not in record:
            raise ValueError(f"evaluator {self.evaluator!r} wrote a record without 'key'")
        if record["key"] in self._done:
            return
        self.log.append({**record, "evaluator": self.evaluator, "config": self.config})
        self._done.add(record["key"])

    def reference(self) -> LoadedModel | None:
        if self._reference is None and self._reference_loader is not None:
            self._reference = self._reference_loader()
        return self._reference

    def reference_id(self) -> str:
        return self._reference_id

    def progress(self, total: int, description: str):
        if self._progress_factory is None:
            return _NullProgress()
        return self._progress_factory(total, description)

    def close(self) -> None:
        if self._reference is not None:
            self._reference.close()
            self._reference = None


class MemoryContext(EvalContext):
    """An in-memory :class:`EvalContext` for tests and one-off evaluations."""

    def __init__(self, cache_dir: Path, *, seed: int = 0, limit: int | None = None,
                 reference: LoadedModel | None = None, reference_id: str = "") -> None:
        self.records: list[dict[str, Any]] = []
        self.seed, self.limit, self.cache_dir = seed, limit, Path(cache_dir)
        self._reference, self._reference_id = reference, reference_id

    def done(self) -> set[str]:
        return {r["key"] for r in self.records}

    def write(self, record: dict[str, Any]) -> None:
        if record["key"] not in self.done():
            self.records.append(record)

    def reference(self) -> LoadedModel | None:
        return self._reference

    def reference_id(self) -> str:
        return self._reference_id

    def progress(self, total: int, description: str):
        return _NullProgress()


class _NullProgress:
    def __enter__(self) -> "_NullProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def advance(self, n: int = 1) -> None:
        return None


@contextlib.contextmanager
def staging_dir(final: Path) -> Iterator[Path]:
    """A fresh temp directory beside ``final`` that becomes ``final`` only if the block succeeds.

    A crash leaves a ``.staging-*`` directory that the next run removes; ``final`` is never partial.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".staging-{final.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".staging-{final.name}-"))
    tmp.chmod(0o777 & ~_umask())
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
