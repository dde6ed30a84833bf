"""The run store: atomic files and append-only sample logs that survive ``kill -9``.

Layout: ``runs/<experiment>/<variant>/{artifact/, samples.jsonl, metrics.json, profile.json, variant.json}``
and ``runs/<experiment>/manifest.json``. ``samples.jsonl`` holds one JSON record per finished item (all
evaluators; each record has ``evaluator`` and a unique ``key``); a garbled line anywhere, a torn last line
from a crash included, is moved to ``samples.jsonl.quarantine`` on the next open and the good lines after it
are kept, so a resumed run redoes only those items. Readers count each
(evaluator, config, key) once. ``runs/<experiment>/.lock`` keeps two runs off one directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from teeny_core.errors import BadFileError, DiskFullError, TeenyError, is_disk_full
from teeny_core.jsonfile import read_json  # noqa: F401 (the store's reader, imported from here by its users)
from teeny_core.types import EvalContext, LoadedModel


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file in the same directory, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_bytes(path, json.dumps(data, indent=2, sort_keys=True, default=str).encode())


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn a failed write of ``path`` into :class:`DiskFullError` when the disk is full: Python says ENOSPC,
    but safetensors and torch word it their own way (torch only says ``unexpected pos``), so a failure on a
    file system with under 1 MiB free counts too."""
    try:
        yield
    except BaseException as exc:
        if is_disk_full(exc) or _nearly_full(Path(path)):
            raise DiskFullError(path) from exc
        raise


def _nearly_full(path: Path) -> bool:
    for parent in [path, *path.parents]:
        if parent.exists():
            return shutil.disk_usage(parent).free < 2**20
    return False


def check_writable(path: Path, what: str) -> None:
    """Raise :class:`TeenyError` before any work when ``path`` (a directory to create or write in, ``what`` names
    it for the user) cannot be written: its nearest existing ancestor is a file, or is on a read-only file system
    or not writable by this user (root included: ``os.access`` sees a read-only mount)."""
    path = Path(path)
    too_long = [part for part in path.parts if len(os.fsencode(part)) > 255]
    if too_long:
        raise TeenyError(f"{what} {str(path)[:60]!r}...: the name {too_long[0][:20]!r}... is {len(too_long[0])} "
                         "characters; file systems allow 255 bytes")
    for parent in [path, *path.parents]:
        if parent.exists():
            break
    else:
        return
    if not parent.is_dir():
        raise TeenyError(f"{what} {str(path)!r}: {parent} is a file; expected a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise TeenyError(f"{what} {str(path)!r}: {parent} is not writable (a read-only file system or no "
                         "permission); choose a directory you can write")


def jsonl_records(path: Path, where: str = "") -> Iterator[tuple[int, dict[str, Any]]]:
    """The line number and record (a JSON object) of each line of a ``.jsonl`` or ``.jsonl.gz`` file, read as
    they are asked for (blank lines skipped); a one-line error, prefixed with ``where``, names a malformed line
    or a file that cannot be read."""
    import gzip
    import zlib

    opener = gzip.open if path.suffix == ".gz" else open
    prefix = f"{where}: " if where else ""
    number = 0
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise TeenyError(f"{prefix}{path}:{number} is not valid JSON ({exc.msg})") from None
                except RecursionError:
                    raise TeenyError(f"{prefix}{path}:{number} is nested too deeply to be a record") from None
                except ValueError as exc:  # an int of over 4300 digits
                    raise TeenyError(f"{prefix}{path}:{number} cannot be read ({str(exc)[:80]})") from None
                if not isinstance(record, dict):
                    raise TeenyError(f"{prefix}{path}:{number} is a JSON {type(record).__name__}; expected an "
                                     "object (one record per line)")
                yield number, record
    except (EOFError, OSError, UnicodeDecodeError, zlib.error) as exc:  # a truncated or corrupt .gz, not UTF-8
        raise TeenyError(f"{prefix}{path} cannot be read after line {number} ({exc}); expected a complete "
                         f"{'gzip-compressed ' if path.suffix == '.gz' else ''}UTF-8 JSON-lines file") from None


def read_jsonl(path: Path, where: str = "") -> list[dict[str, Any]]:
    """Every record of a ``.jsonl`` or ``.jsonl.gz`` file (see :func:`jsonl_records`)."""
    return [record for _, record in jsonl_records(Path(path), where)]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class SampleLog:
    """An append-only JSONL file of finished records; each append is flushed and fsynced.

    Opening repairs the file: every line that is not a JSON object with a ``key``, a torn last line (a crash
    mid-write, or a file cut short) included, is moved to ``<file>.quarantine`` (counted in :attr:`quarantined`);
    the good lines after it are kept, so only the quarantined items are redone.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: list[dict[str, Any]] = []
        self.quarantined = 0
        self.quarantine_path = self.path.with_name(self.path.name + ".quarantine")
        self._repair_and_read()

    @staticmethod
    def check(path: Path) -> None:
        """Raise :class:`BadFileError` if ``path`` is where a sample log should be but is a directory."""
        if Path(path).is_dir():
            raise BadFileError(path, "is a directory; expected the JSONL file of finished records")

    @staticmethod
    def readable(path: Path) -> bool:
        """Whether every line of the log at ``path`` (absent: none) is a record, without repairing anything."""
        return not _split(Path(path))[2]

    def _repair_and_read(self) -> None:
        good, self.records, bad = _split(self.path)
        if bad:
            with open(self.quarantine_path, "ab") as f:
                f.write(b"".join(line + b"\n" for line in bad))
                f.flush()
                os.fsync(f.fileno())
            self.quarantined = len(bad)
            _write_bytes(self.path, b"".join(line + b"\n" for line in good))

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, sort_keys=True, default=str) + "\n"
        with writing(self.path), open(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.records.append(record)

    def for_evaluator(self, name: str, config: str | None = None) -> list[dict[str, Any]]:
        """Records of one evaluator, each key once; with ``config``, only those written under those options.

        The first record of a key wins: it is the one a run counted when it wrote it (later copies only come
        from runs that raced on one directory before it was locked), so metrics never change on a re-read.
        """
        seen: set[tuple[Any, Any]] = set()
        found = []
        for r in self.records:
            if r.get("evaluator") == name and (config is None or r.get("config") == config):
                ident = (r.get("config"), json.dumps(r["key"], sort_keys=True, default=str))
                if ident not in seen:
                    seen.add(ident)
                    found.append(r)
        return found


def _split(path: Path) -> tuple[list[bytes], list[dict[str, Any]], list[bytes]]:
    """A sample log's good lines, their records and its unreadable lines (a torn last line included)."""
    SampleLog.check(path)
    if not path.exists():
        return [], [], []
    *lines, torn = path.read_bytes().split(b"\n")  # ``torn`` follows the last newline: b"" unless a write tore
    good: list[bytes] = []
    records: list[dict[str, Any]] = []
    bad: list[bytes] = [torn] if torn else []
    for line in lines:
        record = _parse_record(line)
        if record is None:
            bad.append(line)
        else:
            good.append(line)
            records.append(record)
    return good, records, bad


def _parse_record(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # bad JSON or UTF-8, an int of over 4300 digits, deep nesting
        return None
    return record if isinstance(record, dict) and "key" in record else None


def _write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (temp file in the same directory, fsync, rename)."""
    with writing(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes files private; results are meant to be shared
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


class RunLock:
    """An exclusive lock on a run directory, held by the ``teeny run`` process that runs it.

    ``<root>/.lock`` is locked with ``flock``, so the kernel releases it when its holder dies (a stale lock
    from a killed run is simply taken over), and records the holder's pid and host for the error a second
    run gets. The descriptor is not inherited by spawned worker processes: the lock belongs to the parent.
    """

    NAME = ".lock"

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / self.NAME
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise TeenyError(f"{self.path.parent} is in use by another teeny run ({holder}); wait for it to "
                             "finish or stop it, then run again") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing releases the flock
            self._fd = None


def _lock_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on host {info['host']}"
    except (ValueError, KeyError, TypeError):
        return "holder still starting"


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


class TargetBusy(TeenyError):
    """Another process is writing the same directory right now."""


@contextlib.contextmanager
def staging_dir(final: Path) -> Iterator[Path]:
    """A fresh temp directory beside ``final`` that becomes ``final`` only if the block succeeds.

    A crash leaves a ``.staging-*`` directory that the next writer removes; ``final`` is never partial. Each
    writer holds a ``flock`` on its staging directory, so a second process staging the same ``final`` at the
    same time gets :class:`TargetBusy` instead of deleting the first one's work (see :func:`build_once`).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final.parent):  # no other writer lists, creates or commits beside us meanwhile
        busy = _staging_writers(final)
        if busy:
            raise TargetBusy(f"{final} is being written by another teeny process (its {busy[0].name}); wait "
                             "for it to finish, or write somewhere else")
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".staging-{final.name}-"))
        tmp.chmod(0o777 & ~_umask())
        held = _flock(tmp, wait=True)
    try:
        with writing(final):
            yield tmp
        with _locked(final.parent):
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(held)


def build_once(target: Path, marker: str, build: Callable[[Path], None]) -> Path:
    """``target``, built by ``build(staging directory)`` unless ``target/marker`` already exists. A process
    that finds another one building it waits for that one and takes its result, so concurrent runs share a
    cache (the float copy of one GGUF source) without building it twice or deleting each other's work."""
    target = Path(target)
    while not (target / marker).exists():
        try:
            with staging_dir(target) as tmp:
                build(tmp)
        except TargetBusy:
            for writer in target.parent.glob(f".staging-{target.name}-*"):
                with contextlib.suppress(OSError):
                    os.close(_flock(writer, wait=True))  # returns once that writer has committed or failed
    return target


def _flock(path: Path, wait: bool) -> int | None:
    """An open descriptor of ``path`` holding its exclusive ``flock``; None when another holds it (not ``wait``)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    fd = _flock(directory, wait=True)
    try:
        yield
    finally:
        os.close(fd)


def _staging_writers(final: Path) -> list[Path]:
    """The staging directories of ``final`` whose writer is alive; those of dead writers are removed."""
    alive = []
    for stale in sorted(final.parent.glob(f".staging-{final.name}-*")):
        try:
            fd = _flock(stale, wait=False)
        except OSError:
            continue
        if fd is None:
            alive.append(stale)
            continue
        shutil.rmtree(stale, ignore_errors=True)
        os.close(fd)
    return alive
