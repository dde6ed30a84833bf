"""The sandbox's launcher (standard library only), in one of two modes:

- cold: ``python -I -S _sandbox_launcher.py STAGING`` sets up one sandbox and ``execve``s its program;
- warm: ``python [the program's flags] _sandbox_launcher.py zygote FD`` is a zygote: a pre-initialised
  interpreter that waits on the unix socket FD for ``STAGING`` plus the program's stdio/status/channel fds, and
  per request forks a child that sets up one sandbox exactly like a cold launcher and then runs the Python
  program in a forked, already initialised interpreter instead of ``execve``-ing a new one. The zygote itself
  only forks, sends the child's pid back and reaps it once told (``reap PID``): it never runs untrusted code
  and never reads a program's configuration (its forked child does), so nothing of one program stays in the
  zygote's memory for the next one to find.

Setting up a sandbox (started in a new session) does, in order:

1. read the configuration (``STAGING/config.json``) and the program's files from the staging directory;
2. ``unshare`` new mount, PID, network, IPC and UTS namespaces (each where the kernel allows);
3. in the mount namespace, build the view (:func:`_build_view`): a new root holding read-only binds of the
   allowed host paths only (``cfg["view"]``, symlinks on the way recreated), emptied Python package
   directories, a few devices, private size-limited tmpfs mounts for ``/tmp``, ``/var/tmp``, ``/dev/shm`` and
   a fresh size-limited tmpfs as the working directory holding the files;
4. fork an init process (PID 1 of the new PID namespace), which mounts its own ``/proc`` in the view, pivots
   into it (:func:`_enter_view`; the host's root is detached) and sets its ``pid_max``, then forks
   the program: only fds 0-2 (and 3-4 with a channel) kept, resource limits, ``no_new_privs``, an
   unprivileged uid/gid (when started as root), no capability, ``chdir``, then ``execve`` (cold) or the Python
   program run in place (warm);
5. init reaps until the program exits and reports its status, rusage and the isolation achieved as JSON on the
   status fd. When init exits the kernel kills everything left in the PID namespace. Neither init nor the
   setup process keeps an end of the program's pipes, so the parent has its result without waiting for the
   namespaces' teardown.

Without namespaces it degrades to limits + uid drop in the staging directory, and says so in the report.
"""

import builtins
import ctypes
import fcntl
import json
import os
import resource
import socket
import stat
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_NO_NEW_PRIVS = 38
PR_SET_DUMPABLE = 4
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522
RESERVED_PIDS = 300  # the kernel hands out pids from here on once a namespace's pids wrap around
SYS_MOUNT_SETATTR = 442  # the same number on every architecture (added in Linux 5.12)
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 1
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41}.get(os.uname().machine, 155)
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _unshare(flags):
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def _mount(source, target, fstype, flags, data=None):
    enc = (lambda s: s.encode() if s is not None else None)
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
           f"mount {target}")


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64)]


def _read_tree(root):
    """``[(relative path, bytes, mode)]`` for every regular file under ``root``."""
    out = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out.append((os.path.relpath(path, root), f.read(), os.stat(path).st_mode & 0o777))
    return out


def _enter_namespaces(cfg):
    """Unshare what the kernel allows; return the set of namespaces entered."""
    wanted = [("mount", CLONE_NEWNS), ("pid", CLONE_NEWPID), ("ipc", CLONE_NEWIPC), ("uts", CLONE_NEWUTS)]
    if not cfg["network"]:
        wanted.append(("net", CLONE_NEWNET))
    entered = set()
    if os.geteuid() != 0:
        # Unprivileged: a user namespace (mapping our own uid) makes the other namespaces possible.
        uid, gid = os.getuid(), os.getgid()
        try:
            _unshare(CLONE_NEWUSER)
        except OSError:
            return entered
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"{uid} {uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"{gid} {gid} 1")
        entered.add("user")
    for name, flag in wanted:
        try:
            _unshare(flag)
            entered.add(name)
        except OSError:
            pass
    return entered


def _hidden_ancestor(path, uid):
    """The topmost ancestor of ``path`` the sandbox uid cannot traverse (None if all can be traversed)."""
    if uid is None:
        return None
    parts = path.strip("/").split("/")
    current = ""
    for part in parts[:-1] if parts else []:
        current += "/" + part
        try:
            st = os.stat(current)
        except OSError:
            return None
        if not st.st_mode & stat.S_IXOTH:
            return current
    return None


def _under(path, root):
    return path == root or path.startswith(root.rstrip("/") + "/")


def _make_read_only(path, recursive=True):
    """Make the mount at ``path`` (and, with ``recursive``, every mount below it) read-only; False where the
    kernel refuses. In a user namespace the original mount's locked flags must be kept."""
    attr = _MountAttr(attr_set=MOUNT_ATTR_RDONLY)
    _libc.syscall.restype = ctypes.c_long
    if recursive and _libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(AT_FDCWD), path.encode(),
                                   ctypes.c_uint(AT_RECURSIVE), ctypes.byref(attr),
                                   ctypes.c_size_t(ctypes.sizeof(attr))) == 0:
        return True
    try:
        _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | _locked_flags(path))
    except OSError:
        return False
    return True


def _covered(path, bound, hidden):
    """Whether ``path`` is visible through a bind already made (and not under a hidden directory of it)."""
    return any(_under(path, b) and not any(_under(path, h) and _under(h, b) for h in hidden) for b in bound)


def _expose(root, path, bound, hidden, depth=0):
    """Make the host's ``path`` visible at the same place under ``root``: symlinks on the way are recreated (and
    followed), the real file or directory is bind-mounted read-only unless a directory already bound holds it.
    Returns False where a bind could not be made read-only."""
    if depth > 40:
        raise OSError(f"too many symbolic links in {path}")
    current = ""
    parts = [part for part in path.split("/") if part]
    for i, part in enumerate(parts):
        current += "/" + part
        if not os.path.islink(current):
            continue
        if not _covered(current, bound, hidden) and not os.path.lexists(root + current):
            os.makedirs(os.path.dirname(root + current), exist_ok=True)
            os.symlink(os.readlink(current), root + current)
        target = os.path.normpath(os.path.join(os.path.dirname(current), os.readlink(current)))
        return _expose(root, os.path.join(target, *parts[i + 1:]), bound, hidden, depth + 1)
    if not os.path.exists(current) or _covered(current, bound, hidden):
        return True
    inside = root + current
    if os.path.isdir(current):
        os.makedirs(inside, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(inside), exist_ok=True)
        open(inside, "a").close()
    _mount(current, inside, None, MS_BIND | MS_REC)
    bound.append(current)
    return _make_read_only(inside)


def _bind_device(root, device):
    """The host's ``device`` in the view, on a read-only bind (its node cannot be changed; reading and writing
    the device itself still work)."""
    inside = root + device
    open(inside, "a").close()
    _mount(device, inside, None, MS_BIND)
    _make_read_only(inside, recursive=False)


def _build_view(cfg, files, uid, gid):
    """A new root (a tmpfs at ``STAGING/root``) holding only what the program needs, all read-only: the host
    paths of ``cfg["view"]`` (system directories, the interpreter and toolchain, allowed packages) bind-mounted,
    its ``hide`` directories emptied (site-packages), a few devices, a private size-limited tmpfs for each
    scratch directory (``/tmp``...) and the working directory holding the files. Nothing else of the host
    (home directories, benchmark data, caches, run stores, the repository) exists in it. Returns the root and
    whether every bind is read-only; init mounts ``/proc`` in it and pivots into it (:func:`_enter_view`)."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    root = os.path.join(os.path.dirname(cfg["workdir"]), "root")
    os.makedirs(root, exist_ok=True)
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    view, bound, read_only = cfg["view"], [], True
    for path in view["bind"]:
        read_only &= _expose(root, path, bound, [])
    hidden = [path for path in view["hide"] if os.path.isdir(root + path) and not os.path.islink(root + path)]
    for path in hidden:
        _mount("tmpfs", root + path, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=0755")
    for path in view["packages"]:
        read_only &= _expose(root, path, bound, hidden)
    os.makedirs(root + "/dev", exist_ok=True)
    for device in ("null", "zero", "full", "random", "urandom"):
        _bind_device(root, "/dev/" + device)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{root}/dev/{name}")
    writable = sorted(cfg["scratch"], key=len) + [cfg["workdir"]]
    for path in ["/proc", *writable]:
        os.makedirs(root + path, exist_ok=True)
    for path in hidden:
        _make_read_only(root + path, recursive=False)
    _make_read_only(root, recursive=False)
    scratch_size = max(cfg["file_bytes"], 1 << 20)  # tmpfs pages are memory, outside RLIMIT_AS: file_bytes
    for path in cfg["scratch"]:
        os.makedirs(root + path, exist_ok=True)
        _mount("tmpfs", root + path, "tmpfs", MS_NOSUID | MS_NODEV, f"size={scratch_size},mode=1777")
    work = root + cfg["workdir"]
    os.makedirs(work, mode=0o755, exist_ok=True)
    _mount("tmpfs", work, "tmpfs", MS_NOSUID | MS_NODEV, f"size={cfg['disk_bytes']},mode=0700")
    _write_files(work, files, uid, gid)
    return root, read_only


def _enter_view(root):
    """Make ``root`` this mount namespace's root and drop the host's (``pivot_root(".", ".")``, then detach the
    old root stacked under it); ``chroot`` where the kernel refuses a pivot."""
    os.chdir(root)
    if _libc.syscall(ctypes.c_long(SYS_PIVOT_ROOT), b".", b".") == 0:
        _check(_libc.umount2(b".", MNT_DETACH), "umount the host's root")
    else:
        os.chroot(".")
    os.chdir("/")


def _locked_flags(path):
    """The nodev/noexec flags of the mount holding ``path`` (statvfs's ST_* bits equal the MS_* ones)."""
    return os.statvfs(path).f_flag & (MS_NODEV | MS_NOEXEC)


def _own_processes():
    """How many processes our real uid runs now (RLIMIT_NPROC counts them all, not only the sandbox's)."""
    uid, count = os.getuid(), 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                count += os.stat(f"/proc/{name}").st_uid == uid
            except OSError:
                pass
    return count


def _write_files(work, files, uid, gid):
    os.makedirs(os.path.join(work, ".tmp"), exist_ok=True)
    for rel, data, mode in files:
        path = os.path.join(work, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
    if uid is not None:
        for dirpath, dirs, names in os.walk(work):
            os.chown(dirpath, uid, gid)
            for name in names:
                os.chown(os.path.join(dirpath, name), uid, gid)


def _program_fds(cfg, uid, gid):
    """Keep only stdin/stdout/stderr and, with a channel, its read end as fd 3 and write end as fd 4 (owned by
    the program's uid, so that a runtime that reopens ``/proc/self/fd/3`` (Java, C#) may)."""
    channel = cfg.get("channel_fds")
    if channel:
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in channel]  # out of the way of 3 and 4 first
        for target, fd in zip((3, 4), high):
            os.dup2(fd, target)
            if uid is not None:
                os.fchown(target, uid, gid)
        os.closerange(5, 1 << 16)
    else:
        os.closerange(3, 1 << 16)


def _drop_bounding_capabilities():
    """Take every capability out of the bounding set (needs CAP_SETPCAP, which we have as root or as the
    creator of our user namespace; without it there is nothing to drop)."""
    for cap in range(64):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break  # EINVAL past the last capability, or EPERM: none held


def _drop_capabilities():
    """Leave the program no capability at all. A user namespace's creator holds every capability in it, and a
    warm program runs without the ``execve`` that would clear them for a non-root uid: with CAP_SYS_ADMIN it
    could unmount the private ``/tmp`` or make the view's read-only binds writable."""
    header = (ctypes.c_uint32 * 2)(LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable for capabilities 0-31 and 32-63
    _check(_libc.capset(header, data), "capset")
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)


def _exec_program(cfg, uid, gid):
    """In the program's process: fds, limits, privileges, then execve or the warm Python run (never returns)."""
    try:
        _program_fds(cfg, uid, gid)
        limits = [
            (resource.RLIMIT_CPU, (cfg["cpu"], cfg["cpu"] + 1)),
            (resource.RLIMIT_AS, (cfg["memory_bytes"], cfg["memory_bytes"])),
            (resource.RLIMIT_FSIZE, (cfg["file_bytes"], cfg["file_bytes"])),
            (resource.RLIMIT_NPROC, (cfg.get("rlimit_nproc", cfg["processes"]),) * 2),
            (resource.RLIMIT_CORE, (0, 0)),
            (resource.RLIMIT_NOFILE, (1024, 1024)),
        ]
        for which, value in limits:
            resource.setrlimit(which, value)
        _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        _drop_bounding_capabilities()
        if uid is not None:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        _drop_capabilities()
        os.chdir(cfg["workdir"])
        os.umask(0o077)
        env = cfg["env"]
        if cfg.get("warm"):
            # no execve resets "dumpable" after the uid change: as after an exec, /proc/self is the program's
            _libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
            os.environ.clear()
            os.environ.update(env)
            _run_python(cfg["warm"])
        program = cfg["argv"][0]
        if "/" not in program:
            for d in env.get("PATH", "").split(":"):
                candidate = os.path.join(d, program)
                if d and os.access(candidate, os.X_OK):
                    program = candidate
                    break
        os.execve(program, cfg["argv"], env)
    except BaseException as exc:  # noqa: BLE001 - report any setup failure as the program's error
        try:
            os.write(2, f"teeny sandbox: cannot run {cfg['argv'][0]!r}: {exc}\n".encode())
        finally:
            os._exit(127)


def _run_python(call):
    """Run ``python [flags] -c CODE ARGS`` / ``python [flags] SCRIPT ARGS`` in this forked interpreter as the
    interpreter itself would: ``__main__``, ``sys.argv``, ``sys.path[0]``, the traceback and exit status of an
    uncaught exception or ``SystemExit``, then non-daemon threads joined, ``atexit`` handlers, stdio flushed.
    Never returns."""
    if call["kind"] == "c":
        filename, source, path0, argv = "<string>", call["code"], "", ["-c", *call["args"]]
    else:
        filename, argv = os.path.abspath(call["path"]), [call["path"], *call["args"]]
        path0 = os.path.dirname(os.path.realpath(filename))
        try:
            with open(filename, "rb") as f:
                source = f.read()
        except OSError as exc:
            sys.stderr.write(f"{sys.executable}: can't open file {filename!r}: [Errno {exc.errno}] "
                             f"{exc.strerror}\n")
            sys.stderr.flush()
            os._exit(2)
    sys.argv = argv
    sys.orig_argv = call["argv"]
    if not (sys.flags.isolated or sys.flags.safe_path):
        sys.path[0] = path0  # the zygote's own entry (this launcher's directory) becomes the program's
    main = type(sys)("__main__")
    main.__builtins__ = builtins
    if call["kind"] != "c":
        main.__file__ = filename
        main.__cached__ = None
    sys.modules["__main__"] = main
    os._exit(_execute(source, filename, main.__dict__))


def _execute(source, filename, namespace):
    """The exit status of running ``source`` in ``namespace`` and shutting down as CPython does (an
    uncaught KeyboardInterrupt ends the process by SIGINT, as there)."""
    interrupted = False
    try:
        exec(compile(source, filename, "exec"), namespace)
        status = 0
    except SystemExit as exc:
        status = _exit_status(exc)
    except BaseException as exc:  # noqa: BLE001 - printed like the interpreter's top level does
        exc.__traceback__ = exc.__traceback__.tb_next  # without this frame (none left for a compile error)
        _print_uncaught(exc)
        status, interrupted = 1, isinstance(exc, KeyboardInterrupt)
    threading = sys.modules.get("threading")
    if threading is not None:
        try:
            threading._shutdown()
        except BaseException:  # noqa: BLE001
            pass
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except BaseException:  # noqa: BLE001 - CPython exits 120 when the final flush fails
            status = 120
    if interrupted:
        import signal

        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return status


def _exit_status(exc):
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF if -(1 << 31) <= code < (1 << 31) else 255
    try:
        sys.stderr.write(f"{code}\n")
    except BaseException:  # noqa: BLE001
        pass
    return 1


def _print_uncaught(exc):
    try:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    except SystemExit as hook_exit:
        os._exit(_exit_status(hook_exit))
    except BaseException as hook_exc:  # noqa: BLE001
        sys.stderr.write("Error in sys.excepthook:\n")
        sys.__excepthook__(type(hook_exc), hook_exc, hook_exc.__traceback__)
        sys.stderr.write("\nOriginal exception was:\n")
        sys.__excepthook__(type(exc), exc, exc.__traceback__)


def _let_go(cfg):
    """Hold no end of the program's stdio and channel pipes, so that they end with the program's own tree
    (the parent then needs only the status report, not this process's exit)."""
    for fd in cfg.get("channel_fds") or ():
        os.close(fd)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def _cap_namespace_pids(count):
    """Let this PID namespace hold at most ``count`` + 1 processes besides init, whoever the program runs as:
    ``RLIMIT_NPROC`` does not bind a program whose uid is root on the host (a non-root user simulated by a
    user namespace, or root without a spare uid), so it alone would let a fork bomb take every pid of the host.
    Needs the per-namespace ``pid_max`` of Linux 6.14; on older kernels the write would set the host's own
    limit, so it is not tried there. Returns whether the cap is in place."""
    if tuple(int(part) for part in os.uname().release.split(".")[:2] if part.isdigit()) < (6, 14):
        return False
    with open("/proc/sys/kernel/pid_max", "w") as f:  # this namespace's: /proc is its own by now
        f.write(str(RESERVED_PIDS + 1 + count))
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:  # the program's pids start past the reserved ones
        f.write(str(RESERVED_PIDS))
    return True


def _init(cfg, entered, uid, gid, status_fd):
    """PID 1 of the sandbox: mount /proc, enter the view, run the program, reap, report; the kernel then kills
    the rest."""
    if "pid" in entered and "mount" in entered:
        try:
            _mount("proc", cfg["root"] + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        except OSError:  # a kernel that refuses a new proc here (a container's masked /proc): the host's, as before
            try:
                _mount("/proc", cfg["root"] + "/proc", None, MS_BIND | MS_REC)
            except OSError:
                pass  # the view then has an empty /proc
    if "mount" in entered:
        try:
            _enter_view(cfg["root"])
        except OSError as exc:
            os.write(status_fd, json.dumps({"setup_error": f"cannot enter the sandbox's view: {exc}"}).encode())
            return
    if "pid" in entered and "mount" in entered:
        try:
            if _cap_namespace_pids(cfg["processes"]):
                entered.add("pids")
        except OSError:
            pass
    child = os.fork()
    if child == 0:
        _exec_program(cfg, uid, gid)
    _let_go(cfg)
    report = {"isolation": sorted(entered), "uid": uid}
    while True:
        try:
            pid, status, usage = os.wait4(-1, 0)
        except ChildProcessError:
            break
        if pid == child:
            report.update(exitcode=os.waitstatus_to_exitcode(status),
                          cpu_seconds=usage.ru_utime + usage.ru_stime, maxrss_kb=usage.ru_maxrss)
            break
    os.write(status_fd, json.dumps(report).encode())


def _sandbox(staging, fds):
    """Set up the sandbox described in ``staging/config.json`` and run its program (never returns).

    ``fds``: the status fd and the channel's two fds, where the caller put them."""
    status_fd = fds[0]
    try:
        with open(os.path.join(staging, "config.json")) as f:
            cfg = json.load(f)
        cfg["channel_fds"] = list(fds[1:])
        for fd in fds:
            os.set_inheritable(fd, False)
        uid, gid = cfg["uid"], cfg["gid"]
        files = _read_tree(cfg["workdir"])
        if uid is None:  # no uid of its own: the limit counts every process of ours
            cfg["rlimit_nproc"] = cfg["processes"] + _own_processes()
        entered = _enter_namespaces(cfg)
        if "mount" in entered:
            cfg["root"], read_only = _build_view(cfg, files, uid, gid)
            entered.add("view")
            if read_only:
                entered.add("readonly")
        else:
            if uid is not None and any(_hidden_ancestor(os.path.realpath(p), uid) for p in cfg["view"]["bind"]):
                uid = gid = None  # without a mount namespace the unprivileged uid could not reach the interpreter
            _write_files(cfg["workdir"], [], uid, gid)
        del files
    except BaseException as exc:  # noqa: BLE001
        os.write(status_fd, json.dumps({"setup_error": f"{type(exc).__name__}: {exc}"}).encode())
        os._exit(125)
    if "pid" in entered:
        init = os.fork()
        if init == 0:
            try:
                _init(cfg, entered, uid, gid, status_fd)
            finally:
                os._exit(0)
        _let_go(cfg)
        os.waitpid(init, 0)
        os._exit(0)
    try:
        _init(cfg, entered, uid, gid, status_fd)
    finally:
        os._exit(0)


# Imported once by the zygote so that programs start with them loaded (what HumanEval-style programs import).
PRELOAD = ("typing", "collections", "itertools", "functools", "math", "re", "string", "heapq", "bisect", "hashlib",
           "threading", "atexit")


def _zygote(sock_fd):
    """Serve fork requests on the socket until it closes; each child becomes one sandbox."""
    sock = socket.socket(fileno=sock_fd)
    _libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)  # SIGKILL when the thread that started us is gone
    if os.getppid() == 1:
        os._exit(0)
    for name in PRELOAD:
        __import__(name)
    import gc

    gc.collect()
    gc.freeze()  # keep the preloaded objects' pages shared with the children
    exited = set()  # children the parent is done with, reaped as soon as they have exited
    while True:
        msg, fds, _flags, _addr = socket.recv_fds(sock, 4096, 8)
        if not msg:
            os._exit(0)
        if msg.startswith(b"reap "):
            exited.add(int(msg[5:]))
        exited = {pid for pid in exited if os.waitpid(pid, os.WNOHANG)[0] == 0}
        if msg.startswith(b"reap "):
            continue
        pid = os.fork()
        if pid == 0:
            sock.close()
            os.setsid()
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in fds]  # none of them may sit on 0-2 yet
            for fd in fds:
                os.close(fd)
            for target, fd in enumerate(high[:3]):  # stdin, stdout, stderr
                os.dup2(fd, target)
                os.close(fd)
            _sandbox(msg.decode(), high[3:])
        for fd in fds:
            os.close(fd)
        sock.send(str(pid).encode())


def main():
    if sys.argv[1] == "zygote":
        _zygote(int(sys.argv[2]))
    _sandbox(sys.argv[1], [int(fd) for fd in sys.argv[2:]])


if __name__ == "__main__":
    main()
