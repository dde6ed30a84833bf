"""Run untrusted (model-generated) programs with hard limits, no network and no way out of a scratch directory.

Each program runs in its own session and process group, started by a small launcher
(``_sandbox_launcher.py``) that, where the kernel allows, puts it into new mount, PID, network, IPC and UTS
namespaces. Inside:

- every host filesystem is read-only (``mount_setattr``, Linux 5.12+); the working directory is a fresh
  size-limited tmpfs holding only the given files, with ``HOME`` and ``TMPDIR`` pointing into it; ``/tmp``,
  ``/var/tmp`` and ``/dev/shm`` are private size-limited tmpfs mounts and ``/run`` is empty (no daemon's
  unix socket is reachable without a network);
- the network namespace has no interfaces up (not even loopback), so every connection fails;
- the program gets CPU-time, address-space, file-size, open-file and process-count limits (``setrlimit``),
  ``no_new_privs``, and, when we are root, a per-sandbox unprivileged uid (so ``RLIMIT_NPROC``, which root
  ignores, holds a fork bomb, and nothing owned by real users is writable);
- the PID namespace's init reaps the program and exits, and the kernel then kills every process left in
  the namespace: nothing survives a sandbox, whether it timed out or not;
- the wall-time limit and the output cap are enforced by the parent, which kills the whole process group.

Where namespaces are not available (no root and no user namespaces) it degrades to limits, process-group
killing and a scratch directory, and reports it: ``Result.network_isolated`` is False and
``Result.isolation`` lists what was achieved. :func:`capabilities` probes this once.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import itertools
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from teeny_core.errors import TeenyError

GiB = 1 << 30
MiB = 1 << 20
LAUNCHER = str(Path(__file__).with_name("_sandbox_launcher.py"))
# Unprivileged uids for sandboxes started by root: one per sandbox, far from any real account.
UID_BASE = 2_000_000_000
UID_SPAN = 1 << 24
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# Text a runtime prints when an allocation failed under RLIMIT_AS (checked near the end of stderr).
MEMORY_MARKERS = (
    re.compile(r"^MemoryError\b", re.M),  # Python traceback's last line
    re.compile(r"std::bad_alloc"),  # C++
    re.compile(r"java\.lang\.OutOfMemoryError"),
    re.compile(r"heap out of memory|Cannot allocate memory|memory allocation failed", re.I),
    re.compile(r"Allowed memory size of \d+ bytes exhausted"),  # PHP
    re.compile(r"OutOfMemoryException"),  # .NET
)


class SandboxError(TeenyError):
    """The sandbox itself could not be set up (not a failure of the program)."""


@dataclasses.dataclass
class Limits:
    """Resource limits for one sandboxed program."""

    cpu_seconds: float = 10  # RLIMIT_CPU of each process (SIGXCPU, then SIGKILL one second later)
    wall_seconds: float = 20  # the whole process tree is killed after this
    memory_bytes: int = 2 * GiB  # RLIMIT_AS (address space) of each process
    file_bytes: int = 64 * MiB  # RLIMIT_FSIZE (largest file) and the size of the private /tmp
    processes: int = 64  # RLIMIT_NPROC for the sandbox's own uid (threads count)
    network: bool = False  # True: keep the host network (no new network namespace)
    disk_bytes: int = 256 * MiB  # size of the working-directory tmpfs (with a mount namespace)
    output_bytes: int = 16 * MiB  # stdout + stderr beyond this: the tree is killed, output truncated
    channel_bytes: int = 64 * MiB  # fd 4 (the channel) beyond this: the tree is killed


@dataclasses.dataclass
class Result:
    """What happened to one sandboxed program."""

    status: str  # "ok" | "error" (non-zero exit) | "timeout" | "memory" | "killed"
    returncode: int | None  # exit status, or -signal when killed by a signal; None when we killed it
    stdout: str
    stderr: str
    seconds: float  # wall time
    network_isolated: bool
    reason: str = ""  # one line on why it did not end "ok"
    cpu_seconds: float | None = None
    max_rss_bytes: int | None = None
    truncated: bool = False  # output was cut at Limits.output_bytes
    isolation: tuple[str, ...] = ()  # namespaces entered ("mount", "pid", "net", ...), "readonly", "uid"
    channel: bytes = b""  # what the program wrote to fd 4 (run with ``channel``)


_uid_counter = itertools.count()


def _sandbox_uid() -> tuple[int, int] | tuple[None, None]:
    if os.geteuid() != 0:
        return None, None
    slot = (os.getpid() * 4099 + next(_uid_counter)) % UID_SPAN
    return UID_BASE + slot, UID_BASE + slot


def _needed_paths(argv: list[str], env: dict[str, str]) -> list[str]:
    """Directories the program must be able to read: the interpreter's prefixes and the program's install."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix}
    exe = argv[0] if "/" in argv[0] else shutil.which(argv[0], path=env.get("PATH", DEFAULT_PATH))
    if exe:
        real = os.path.realpath(exe)
        paths.add(str(Path(real).parent.parent))
    for entry in env.get("PATH", "").split(":"):
        if entry and os.path.isabs(entry) and os.path.isdir(entry):
            paths.add(os.path.realpath(entry))
    return sorted(p for p in paths if p not in ("/", "/usr"))


def _masks() -> list[str]:
    """Directories replaced by empty private tmpfs mounts: scratch space, and /run (whose unix sockets, such
    as a container daemon's, are reachable without a network)."""
    masks = ["/tmp", "/var/tmp", "/dev/shm", "/run"]
    if os.geteuid() != 0:
        home = os.path.realpath(os.path.expanduser("~"))
        if home not in ("/", "") and os.path.isdir(home):
            masks.append(home)
    return masks


def _environment(env: dict[str, str] | None) -> dict[str, str]:
    base = {"PATH": f"{os.path.dirname(sys.executable)}:{DEFAULT_PATH}", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
    base.update(env or {})
    return {str(k): str(v) for k, v in base.items()}


def _safe_relative(name: str) -> str:
    rel = os.path.normpath(name)
    if os.path.isabs(rel) or rel == "." or rel.startswith(".."):
        raise SandboxError(f"sandbox file name {name!r} must be a relative path inside the sandbox")
    return rel


def run_sandboxed(argv: list[str], *, files: dict[str, str | bytes] | None = None, stdin: str | bytes | None = None,
                  limits: Limits = Limits(), env: dict[str, str] | None = None,
                  channel: bytes | None = None) -> Result:
    """Run ``argv`` in a fresh sandbox directory holding ``files``; ``stdin`` is fed (else closed).

    With ``channel`` the program starts with fd 3 open for reading (it yields exactly those bytes, then EOF)
    and fd 4 open for writing; what it writes to fd 4 comes back as ``Result.channel`` (at most
    ``limits.channel_bytes``). Without it, fds 3 and 4 are not open in the program.

    ``env`` adds to a minimal environment (PATH, LANG, LC_ALL); ``HOME`` and ``TMPDIR`` always point into the
    sandbox. A program that fails, hangs, allocates too much or floods its output ends as a :class:`Result`;
    only a sandbox that cannot be set up raises :class:`SandboxError`.
    """
    if not argv:
        raise SandboxError("run_sandboxed needs a non-empty argv")
    environment = _environment(env)
    staging = Path(tempfile.mkdtemp(prefix="teeny-sandbox-"))
    staging.chmod(0o711)
    workdir = staging / "work"
    workdir.mkdir()
    status_r, status_w = os.pipe()
    stdin_file = channel_in = None
    channel_r = channel_w = -1
    try:
        for name, content in (files or {}).items():
            path = workdir / _safe_relative(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content.encode() if isinstance(content, str) else content)
        environment.update(HOME=str(workdir), TMPDIR=str(workdir / ".tmp"))
        uid, gid = _sandbox_uid()
        config = {
            "argv": [str(a) for a in argv], "env": environment, "workdir": str(workdir), "uid": uid, "gid": gid,
            "cpu": max(1, int(round(limits.cpu_seconds))), "memory_bytes": int(limits.memory_bytes),
            "file_bytes": int(limits.file_bytes), "processes": int(limits.processes),
            "disk_bytes": int(limits.disk_bytes), "network": bool(limits.network), "status_fd": status_w,
            "masks": _masks(), "needed": _needed_paths(argv, environment), "channel": None,
        }
        if stdin is not None:
            stdin_file = tempfile.TemporaryFile()
            stdin_file.write(stdin.encode() if isinstance(stdin, str) else stdin)
            stdin_file.seek(0)
        pass_fds = [status_w]
        if channel is not None:
            channel_in = tempfile.TemporaryFile()
            channel_in.write(channel)
            channel_in.seek(0)
            channel_r, channel_w = os.pipe()
            config["channel"] = [channel_in.fileno(), channel_w]
            pass_fds += config["channel"]
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", LAUNCHER, json.dumps(config)],
            stdin=stdin_file if stdin_file is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=pass_fds, start_new_session=True,
            cwd=str(staging), env={"PATH": DEFAULT_PATH},
        )
        for fd in (status_w, channel_w):
            if fd >= 0:
                os.close(fd)
        status_w = channel_w = -1
        return _supervise(proc, status_r, limits, channel_r)
    finally:
        for fd in (status_w, status_r, channel_w, channel_r):
            if fd >= 0:
                os.close(fd)
        for spooled in (stdin_file, channel_in):
            if spooled is not None:
                spooled.close()
        shutil.rmtree(staging, ignore_errors=True)


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher's process group and, while the launcher is alive (its pid still ours), every
    descendant of it we can see (those that left the group with setsid; a PID namespace catches them all)."""
    import psutil

    descendants = []
    if proc.returncode is None:
        try:
            descendants = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for child in descendants:
        try:
            child.kill()
        except psutil.Error:
            pass


def _supervise(proc: subprocess.Popen, status_r: int, limits: Limits, channel_r: int = -1) -> Result:
    start = time.monotonic()
    deadline = start + limits.wall_seconds
    buffers: dict[int, bytearray] = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    selector = selectors.DefaultSelector()
    for fd in buffers:
        selector.register(fd, selectors.EVENT_READ)
    spool = tempfile.SpooledTemporaryFile(max_size=1 * MiB) if channel_r >= 0 else None
    if channel_r >= 0:
        selector.register(channel_r, selectors.EVENT_READ)
    killed_for = ""
    truncated = False
    total = channel_total = 0
    exited_at: float | None = None
    try:
        while selector.get_map():
            now = time.monotonic()
            if now >= deadline:
                killed_for = f"wall time limit of {limits.wall_seconds:g} s exceeded"
                break
            if exited_at is None and proc.poll() is not None:
                exited_at = now
                _kill_tree(proc)  # the launcher is gone: nothing it started may keep the pipes open
            elif exited_at is not None and now - exited_at > 2.0:
                break
            for key, _ in selector.select(timeout=min(0.25, deadline - now)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                if key.fd == channel_r:
                    channel_total += len(chunk)
                    if channel_total > limits.channel_bytes:
                        killed_for = f"channel limit of {limits.channel_bytes} bytes exceeded"
                        break
                    spool.write(chunk)
                    continue
                room = limits.output_bytes - total
                buffers[key.fd] += chunk[:max(room, 0)]
                total += len(chunk)
                if total > limits.output_bytes:
                    truncated = True
                    killed_for = f"output limit of {limits.output_bytes} bytes exceeded"
            if killed_for:
                break
    finally:
        selector.close()
        _kill_tree(proc)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    seconds = time.monotonic() - start
    os.set_blocking(status_r, False)
    try:
        raw = os.read(status_r, 1 << 16)
    except BlockingIOError:
        raw = b""
    try:
        report = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        report = {}
    if "setup_error" in report:
        raise SandboxError(f"sandbox setup failed: {report['setup_error']}")
    stdout = buffers[out_fd].decode("utf-8", "replace")
    stderr = buffers[err_fd].decode("utf-8", "replace")
    isolation = tuple(report.get("isolation", ()))
    if report.get("uid") is not None:
        isolation += ("uid",)
    cpu = report.get("cpu_seconds")
    channel = b""
    if spool is not None:
        spool.seek(0)
        channel = spool.read()
        spool.close()
    common = dict(stdout=stdout, stderr=stderr, seconds=seconds, network_isolated="net" in isolation,
                  channel=channel,
                  cpu_seconds=cpu, truncated=truncated, isolation=isolation,
                  max_rss_bytes=report["maxrss_kb"] * 1024 if "maxrss_kb" in report else None)
    if killed_for:
        status = "timeout" if killed_for.startswith("wall") else "killed"
        return Result(status=status, returncode=None, reason=killed_for, **common)
    if "exitcode" not in report:
        return Result(status="killed", returncode=None, reason="the sandbox was killed from outside", **common)
    code = report["exitcode"]
    cpu_limit = max(1, int(round(limits.cpu_seconds)))
    if code < 0:
        sig = -code
        name = signal.Signals(sig).name if sig in signal.Signals.__members__.values() else str(sig)
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu is not None and cpu >= cpu_limit):
            return Result(status="timeout", returncode=code, reason=f"CPU time limit of {cpu_limit} s exceeded",
                          **common)
        if _out_of_memory(stderr):
            return Result(status="memory", returncode=code, reason=f"out of memory ({name})", **common)
        return Result(status="killed", returncode=code, reason=f"killed by {name}", **common)
    if code == 0:
        return Result(status="ok", returncode=0, **common)
    if _out_of_memory(stderr):
        return Result(status="memory", returncode=code,
                      reason=f"memory limit of {limits.memory_bytes} bytes exceeded", **common)
    return Result(status="error", returncode=code, reason=f"exit status {code}", **common)


def _out_of_memory(stderr: str) -> bool:
    tail = stderr[-4000:]
    return any(marker.search(tail) for marker in MEMORY_MARKERS)


def run_many(jobs: list[tuple[list[str], dict]], workers: int | None = None) -> list[Result]:
    """Run ``(argv, kwargs for run_sandboxed)`` jobs in parallel (one per core by default), results in order."""
    if not jobs:
        return []
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
        return list(pool.map(lambda job: run_sandboxed(job[0], **job[1]), jobs))


@functools.lru_cache(maxsize=1)
def capabilities() -> tuple[str, ...]:
    """The isolation this machine gives a sandbox, e.g. ``("ipc", "mount", "net", "pid", "uid", "uts")``.

    Probed once per process by running Python in a sandbox; a sandbox that cannot run Python at all raises
    :class:`SandboxError` here, so a broken harness is never mistaken for failing samples.
    """
    probe = run_sandboxed([sys.executable, "-I", "-S", "-c", "print('teeny-sandbox-ok')"],
                          limits=Limits(cpu_seconds=30, wall_seconds=120))
    if probe.status != "ok" or probe.stdout.strip() != "teeny-sandbox-ok":
        raise SandboxError(f"the sandbox cannot run Python on this machine ({probe.status}, {probe.reason}): "
                           f"{probe.stderr.strip()[-300:]}")
    return probe.isolation
