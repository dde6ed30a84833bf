"""The sandbox: hostile programs end as failed results, the harness keeps going and the machine is untouched.

Every attack aims at files and ports this test created itself (never at real user data), so a broken sandbox
would fail the test without damaging the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from teeny_bench.sandbox import (LAUNCHER, Limits, Result, SandboxError, capabilities, run_many, run_sandboxed,
                                 warm_sandboxes)

PY = [sys.executable, "-I", "-c"]


@pytest.fixture(params=["cold", "warm"])
def py(request):
    """Runs Python code in a sandbox, cold (a new interpreter) or warm (forked from a zygote), and checks
    that the path asked for is the one taken: every attack below is tried on both."""
    warm = request.param == "warm"
    with contextlib.ExitStack() as stack:
        if warm:
            stack.enter_context(warm_sandboxes())

        def run(code: str, **kwargs) -> Result:
            result = run_sandboxed(PY + [code], **kwargs)
            assert result.warm == warm, result
            return result

        yield run


def test_runs_program_with_files_stdin_and_a_private_home(py):
    r = py("import os, sys\n"
           "print(open('data/in.txt').read(), sys.stdin.read())\n"
           "print(os.environ['HOME'] == os.getcwd(), os.environ['TMPDIR'].startswith(os.getcwd()))\n"
           "print(sorted(os.listdir('.')))",
           files={"data/in.txt": "hello"}, stdin="from stdin")
    assert r.status == "ok" and r.returncode == 0, r
    lines = r.stdout.splitlines()
    assert lines[0] == "hello from stdin"
    assert lines[1] == "True True"
    assert "data" in lines[2]
    assert r.stderr == "" and r.seconds > 0


def test_stdin_is_closed_when_not_given(py):
    r = py("import sys; print(repr(sys.stdin.read()))")
    assert r.status == "ok" and r.stdout.strip() == "''"


def test_environment_is_minimal(py, monkeypatch):
    monkeypatch.setenv("TEENY_SECRET_TOKEN", "do-not-leak")
    r = py("import os; print(sorted(os.environ))", env={"EXTRA": "1"})
    assert "TEENY_SECRET_TOKEN" not in r.stdout
    assert "'EXTRA'" in r.stdout and "'HOME'" in r.stdout


def test_nonzero_exit_is_an_error_with_its_stderr(py):
    r = py("raise ValueError('boom')")
    assert r.status == "error" and r.returncode == 1
    assert "ValueError: boom" in r.stderr


def test_file_names_must_stay_inside_the_sandbox():
    with pytest.raises(SandboxError, match="relative path"):
        run_sandboxed(["true"], files={"../escape.txt": "x"})
    with pytest.raises(SandboxError, match="relative path"):
        run_sandboxed(["true"], files={"/etc/escape.txt": "x"})


def test_missing_program_is_an_error_not_a_crash():
    r = run_sandboxed(["no-such-program-teeny"])
    assert r.status == "error" and r.returncode == 127
    assert "cannot run" in r.stderr


def test_infinite_loop_hits_the_cpu_limit(py):
    r = py("while True:\n    pass", limits=Limits(cpu_seconds=1, wall_seconds=30))
    assert r.status == "timeout", r
    assert "CPU time" in r.reason


def _running(token: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if token in " ".join(p.info["cmdline"] or [])]


def _describe(p: psutil.Process) -> str:
    try:
        return f"pid {p.pid} ppid {p.ppid()} {p.status()} {time.time() - p.create_time():.1f} s old: {p.cmdline()}"
    except psutil.Error as exc:
        return f"pid {p.pid}: {exc!r}"


def _left_after(token: str, seconds: float = 5) -> list[str]:
    """The processes still running ``token`` after ``seconds`` (SIGKILLed sandboxes may take a moment to
    vanish), described for the failure message; empty when none is left."""
    deadline = time.monotonic() + seconds
    while left := _running(token):
        if time.monotonic() > deadline:
            return [_describe(p) for p in left]
        time.sleep(0.1)
    return []


def test_sleeping_program_hits_the_wall_limit_and_its_whole_tree_dies(py):
    # a grandchild in a session of its own, which a process-group kill alone would miss
    code = ("import subprocess, sys, time\n"
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(40)  # teeny-survivor-1'],"
            " start_new_session=True)\n"
            "time.sleep(60)")
    start = time.monotonic()
    r = py(code, limits=Limits(wall_seconds=1.5))
    assert r.status == "timeout" and r.returncode is None
    assert "wall time" in r.reason
    assert time.monotonic() - start < 15
    time.sleep(0.5)
    assert not _running("teeny-survivor-1")


def test_background_process_cannot_outlive_a_finished_program(py):
    code = ("import subprocess, sys\n"
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'], start_new_session=True)\n"
            "print('done')")
    start = time.monotonic()
    r = py(code, limits=Limits(wall_seconds=20))
    assert r.status == "ok" and r.stdout.strip() == "done"
    assert time.monotonic() - start < 10  # the lingering child does not hold the pipes open
    time.sleep(0.3)
    assert not _running("time.sleep(30)")


# Forks until the kernel refuses, each child kept alive, and prints how many forks succeeded and the errno.
BOMB = ("import os, time\nforks = 0\n"
        "try:\n    while True:\n        if os.fork() == 0:\n            time.sleep(30)\n            os._exit(0)\n"
        "        forks += 1\n"
        "except OSError as e:\n    print(forks, e.errno)\n")


def test_processes_are_capped_at_the_limit(py):
    r = py(BOMB, limits=Limits(processes=16, wall_seconds=10))
    if not {"pids", "uid"} & set(r.isolation):
        pytest.skip("neither a uid of its own nor a PID namespace cap: RLIMIT_NPROC counts all our processes")
    forks, errno = map(int, r.stdout.split())
    assert r.status == "ok" and forks <= 16 and errno == 11, r  # EAGAIN: the program and 16 at most


def test_fork_bomb_is_contained(py):
    marker = f"teeny-bomb-{os.getpid()}-{time.monotonic_ns()}"  # other users' programs may fork too
    code = f"import os\nwhile True:\n    os.fork()  # {marker}"
    before = len(psutil.pids())
    r = py(code, limits=Limits(processes=32, wall_seconds=5, cpu_seconds=2))
    assert r.status != "ok"
    time.sleep(0.5)
    assert len(psutil.pids()) < before + 20  # nothing of the bomb is left running
    assert not _running(marker)
    assert py("print('still works')").stdout.strip() == "still works"


def test_huge_allocation_is_a_memory_failure(py):
    r = py("x = bytearray(100 * 2**30)\nprint(len(x))")
    assert r.status == "memory", r
    assert "MemoryError" in r.stderr


def _needs_filesystem_isolation():
    if not {"readonly", "uid", "mount"} & set(capabilities()):
        pytest.skip(f"no filesystem isolation on this machine (capabilities: {capabilities()})")


def test_rm_rf_home_only_empties_the_sandbox(py, tmp_path):
    _needs_filesystem_isolation()
    canary = tmp_path / "home" / "precious.txt"
    canary.parent.mkdir()
    canary.write_text("keep me")
    # the sandbox sets its own HOME; the attack runs `rm -rf ~` and then aims at the canary's directory too
    code = (f"import os\nos.system('rm -rf ~ 2>/dev/null')\nos.system('rm -rf {canary.parent} 2>/dev/null')\n"
            "print(os.path.exists(os.path.expanduser('~')))")
    r = py(code, env={"HOME": str(canary.parent)})
    assert r.status == "ok"
    assert canary.read_text() == "keep me"


def test_writing_outside_its_directory_fails(py, tmp_path):
    _needs_filesystem_isolation()
    outside = tmp_path / "outside.txt"
    outside.write_text("original")
    outside.chmod(0o666)  # even a world-writable file elsewhere must stay intact
    os.chmod(tmp_path, 0o755)
    code = (f"open({str(outside)!r}, 'w').write('overwritten')\n")
    r = py(code)
    assert r.status == "error"
    assert outside.read_text() == "original"
    # a file dropped into the shared /tmp is private to the sandbox
    r = py("open('/tmp/teeny-sandbox-escape.txt', 'w').write('x')")
    assert not os.path.exists("/tmp/teeny-sandbox-escape.txt")


def test_world_writable_directory_elsewhere_stays_intact(py, outside_tmp):
    """Outside /tmp, in a directory anyone may write to: only a read-only filesystem view protects it."""
    if "readonly" not in capabilities():
        pytest.skip("this kernel cannot make the sandbox's view of the filesystem read-only (mount_setattr)")
    target = outside_tmp(0o777, {"canary.txt": ("original", 0o666)})
    canary = target / "canary.txt"
    code = (f"import os\nopen({str(canary)!r}, 'w').write('overwritten')\n")
    assert py(code).status == "error"
    code = (f"import os\ntry:\n    os.remove({str(canary)!r})\nexcept OSError:\n    pass\n"
            f"open({str(target / 'new.txt')!r}, 'w').write('x')\n")
    r = py(code)
    # read-only view (EROFS), or, when the repo itself lives under /tmp, the sandbox's private /tmp (ENOENT)
    assert r.status == "error" and ("Read-only file system" in r.stderr or "No such file" in r.stderr)
    assert canary.read_text() == "original" and sorted(p.name for p in target.iterdir()) == ["canary.txt"]


def test_socket_to_the_outside_fails_when_isolated(py):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        code = (f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
                "s.sendall(b'leak')\nprint('connected')")
        r = py(code)
        if not r.network_isolated:
            pytest.skip("no network namespace on this machine (reported as network_isolated=False)")
        assert r.status == "error" and "connected" not in r.stdout
        assert "OSError" in r.stderr or "unreachable" in r.stderr.lower()
        with pytest.raises(socket.timeout):
            server.accept()
        # Limits(network=True) keeps the host network and says so
        shared = py(code, limits=Limits(network=True))
        assert shared.status == "ok" and not shared.network_isolated
    finally:
        server.close()


REPO = Path(__file__).resolve().parents[2]
LCB_DATA = REPO / "teeny-bench" / "tests" / "data" / "livecodebench-public" / "livecodebench.json"
# What a program sees at the top of the view: system directories, its own scratch space, and the path down to
# the interpreter (this checkout's venv, a pyenv under /root ...); never /home, /srv, /opt, /mnt, /data ...
VIEW_TOP = {"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "dev", "proc", "tmp", "var",
            *(Path(p).parts[1] for p in (sys.executable, sys.base_prefix, os.path.realpath(sys.executable)))}


@contextlib.contextmanager
def _secrets():
    """World-readable answer files outside /tmp, where a benchmark's data, caches and run store can live."""
    root = Path(tempfile.mkdtemp(prefix=".sandbox-secrets-", dir=Path(__file__).parent))
    try:
        root.chmod(0o755)
        files = {"plus": root / "HumanEvalPlus.jsonl.gz",
                 "cache": root / "cache" / "humaneval-plus" / "0123456789abcdef" / "fedcba9876543210.json",
                 "run": root / "runs" / "demo" / "q4" / "humaneval" / "samples.jsonl"}
        for path in files.values():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("the expected answers")
            path.chmod(0o644)
            for parent in path.parents:
                if parent == root:
                    break
                parent.chmod(0o755)
        yield {**files, "lcb": LCB_DATA, "repo": REPO / "README.md", "cache_home": Path.home() / ".cache"}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_view_holds_only_what_a_program_needs(py):
    """Benchmark data, the expected-answer cache, the run store, the repository and the home directory are not
    in the sandbox's view of the filesystem, even world-readable; the interpreter and its libraries are."""
    if "mount" not in capabilities():
        pytest.skip("no mount namespace on this machine: no filesystem view (isolation says so)")
    with _secrets() as secrets:
        assert all(path.exists() for path in secrets.values() if path.name != ".cache")
        code = ("import json, os, sys\nseen = {}\n"
                f"for name, path in {json.dumps({k: str(v) for k, v in secrets.items()})}.items():\n"
                "    try:\n        seen[name] = os.listdir(path) if os.path.isdir(path) else open(path).read(1)\n"
                "    except OSError as exc:\n        seen[name] = exc.errno\n"
                "import decimal, sqlite3, ssl, ctypes\n"  # the standard library and its shared libraries
                "print(json.dumps({'seen': seen, 'top': os.listdir('/'), 'dev': os.listdir('/dev')}))")
        r = py(code)
    assert r.status == "ok", r
    assert "view" in r.isolation and "readonly" in r.isolation
    out = json.loads(r.stdout)
    assert out["seen"] == {name: 2 for name in secrets}, out["seen"]  # ENOENT: not there at all
    assert set(out["top"]) <= VIEW_TOP, out["top"]
    assert {"null", "zero", "urandom", "shm"} <= set(out["dev"]) and "sda" not in out["dev"]


def test_only_the_allowed_python_packages_are_in_the_view(py):
    """Every site-packages directory of this interpreter and its base shows only numpy and sortedcontainers."""
    import site

    from teeny_bench.sandbox import PYTHON_PACKAGES

    if "view" not in capabilities():
        pytest.skip("no filesystem view on this machine (no mount namespace)")
    site_dirs = [d for d in {*site.getsitepackages(), *site.getsitepackages([sys.base_prefix])} if os.path.isdir(d)]
    assert any(len(os.listdir(d)) > 3 for d in site_dirs)  # the host's hold more (pytest and its plugins at least)
    code = (f"import json, os\nprint(json.dumps({{d: os.listdir(d) if os.path.isdir(d) else [] "
            f"for d in {site_dirs!r}}}))")
    r = py(code)
    assert r.status == "ok", r
    assert all(set(names) <= set(PYTHON_PACKAGES) for names in json.loads(r.stdout).values()), r.stdout
    if any(os.path.isdir(os.path.join(d, "numpy")) for d in site_dirs):
        r = py("import numpy\nprint(numpy.arange(4).sum())", env={"OPENBLAS_NUM_THREADS": "1"})
        assert r.status == "ok" and r.stdout.strip() == "6", r


def test_the_cpu_limit_holds_whatever_the_program_switches_off(py):
    """RLIMIT_CPU is the kernel's: ignoring SIGXCPU and SIGPROF and replacing the timers changes nothing."""
    code = ("import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\n"
            "signal.signal(signal.SIGPROF, signal.SIG_IGN)\nsignal.setitimer = lambda *a, **k: (0.0, 0.0)\n"
            "while True:\n    pass\n")
    start = time.monotonic()
    r = py(code, limits=Limits(cpu_seconds=1, wall_seconds=60))
    assert r.status == "timeout" and "CPU time limit of 1 s" in r.reason, r
    assert r.cpu_seconds is not None and 1 <= r.cpu_seconds < 3, r
    # a program that burns no CPU is ended by the parent's wall clock
    r = py("import time\ntime.sleep(60)", limits=Limits(cpu_seconds=1, wall_seconds=2))
    assert r.status == "timeout" and "wall time" in r.reason and time.monotonic() - start < 40, r


def test_unix_sockets_of_host_daemons_are_out_of_reach(py, tmp_path):
    """A daemon's socket under /run (like a container engine's) must not be reachable without a network."""
    if "mount" not in capabilities():
        pytest.skip("no mount namespace on this machine")
    r = py("import os\nprint(os.listdir('/run') if os.path.isdir('/run') else [])")
    assert r.status == "ok" and r.stdout.strip() == "[]"


def test_only_its_own_processes_are_visible(py):
    r = py("import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))")
    if "pid" not in r.isolation:
        pytest.skip("no PID namespace on this machine")
    init, program = json.loads(r.stdout)  # the sandbox's init and the program itself, nothing else
    assert init == 1 and program == (301 if "pids" in r.isolation else 2)  # past the pids the kernel reserves


def test_huge_stdout_is_capped_and_the_program_killed(py):
    r = py("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", limits=Limits(output_bytes=1 << 20))
    assert r.status == "killed" and r.truncated
    assert len(r.stdout) == 1 << 20
    assert "output limit" in r.reason


def test_file_size_limit(py):
    r = py("open('big.bin', 'wb').write(b'0' * (8 << 20))", limits=Limits(file_bytes=1 << 20))
    assert r.status != "ok"


def test_run_many_keeps_order_and_isolates_failures():
    jobs = [(PY + [f"print({i})"], {}) for i in range(6)]
    jobs.insert(3, (PY + ["while True: pass"], {"limits": Limits(cpu_seconds=1, wall_seconds=10)}))
    for warm in (True, False):
        results = run_many(jobs, workers=2, warm=warm)
        assert [r.status for r in results] == ["ok"] * 3 + ["timeout"] + ["ok"] * 3
        assert [r.stdout.strip() for r in results if r.status == "ok"] == [str(i) for i in range(6)]
        assert all(r.warm == warm for r in results)  # Python programs start warm in run_many by default
    assert not _left_after(LAUNCHER)  # the workers' zygotes are stopped with run_many


NON_ROOT_SCRIPT = """
import contextlib, json, sys
from teeny_bench.sandbox import Limits, run_sandboxed, warm_sandboxes
canary, bomb_code = sys.argv[1], sys.argv[3]
stack = contextlib.ExitStack()
if sys.argv[2] == "warm":
    stack.enter_context(warm_sandboxes())
code = ("import os, socket\\n"
        "try:\\n    socket.create_connection(('127.0.0.1', 9), timeout=2)\\nexcept OSError as e:\\n    print('net', e.errno)\\n"
        f"try:\\n    open({canary!r}, 'w').write('x')\\nexcept OSError as e:\\n    print('write', e.errno)\\n"
        "print('uid', os.getuid())\\n"
        "print('caps', [line.split()[1] for line in open('/proc/self/status') if line.startswith('CapEff')][0])\\n"
        "import ctypes\\nlibc = ctypes.CDLL(None, use_errno=True)\\n"
        "print('umount', libc.umount2(b'/tmp', 2), ctypes.get_errno())\\n")
r = run_sandboxed([sys.executable, "-I", "-c", code])
# without the PID namespace's cap (Linux < 6.14) nothing would hold it: it would take every pid of the host
bomb = (run_sandboxed([sys.executable, "-I", "-c", bomb_code], limits=Limits(processes=16, wall_seconds=10))
        if "pids" in r.isolation else None)
print(json.dumps({"status": r.status, "stdout": r.stdout, "stderr": r.stderr[-300:], "isolation": r.isolation,
                  "bomb": bomb and bomb.stdout, "warm": [r.warm] + ([bomb.warm] if bomb else [])}))
stack.close()
"""


@pytest.mark.parametrize("mode", ["cold", "warm"])
def test_without_root_user_namespaces_give_the_same_isolation(mode, outside_tmp):
    """A laptop user is not root: simulated here by running the harness in a user namespace as uid 1000."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to simulate an unprivileged user")
    probe = subprocess.run(["unshare", "--user", "--map-user=1000", "--map-group=1000", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("user namespaces are not available here")
    canary = outside_tmp(0o777, {"canary.txt": ("original", 0o666)}) / "canary.txt"
    run = subprocess.run(["unshare", "--user", "--map-user=1000", "--map-group=1000", sys.executable, "-c",
                          NON_ROOT_SCRIPT, str(canary), mode, BOMB], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["status"] == "ok", out
    assert {"user", "net", "pid", "mount", "readonly"} <= set(out["isolation"])
    assert "net 101" in out["stdout"]  # ENETUNREACH
    assert "write 30" in out["stdout"] or "write 2" in out["stdout"]  # EROFS, or ENOENT under a private /tmp
    assert "uid 1000" in out["stdout"]
    # no capability left in its user namespace (a warm program runs without the execve that clears them),
    # so it cannot unmount the private /tmp over the real one
    assert "caps 0000000000000000" in out["stdout"] and "umount -1 1" in out["stdout"]
    # RLIMIT_NPROC does not bind here (the "user" is root on the host); the PID namespace's own cap does
    if "pids" in out["isolation"]:
        forks, errno = map(int, out["bomb"].split())
        assert forks <= 16 and errno == 11, out
    assert set(out["warm"]) == {mode == "warm"}
    assert canary.read_text() == "original"


# Run as real root: a child in a new user namespace, mapped to uid 1000 there (root on the host, like the test
# above), that forbids further user namespaces and then runs argv[1]: a user without namespaces.
WITHOUT_NAMESPACES = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
ready_r, ready_w = os.pipe()
go_r, go_w = os.pipe()
pid = os.fork()
if pid == 0:
    if libc.unshare(0x10000000) != 0:
        os._exit(3)
    os.write(ready_w, b"x")
    os.read(go_r, 1)
    with open("/proc/sys/user/max_user_namespaces", "w") as f:
        f.write("0")
    os.execv(sys.executable, [sys.executable, "-c", sys.argv[1], *sys.argv[2:]])
os.read(ready_r, 1)
for name, text in (("setgroups", "deny"), ("uid_map", "1000 0 1"), ("gid_map", "1000 0 1")):
    with open(f"/proc/{pid}/{name}", "w") as f:
        f.write(text)
os.write(go_w, b"x")
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""
DEGRADED_SCRIPT = """
import contextlib, json, os, sys
from teeny_bench.check import isolation_summary
from teeny_bench.sandbox import Limits, run_sandboxed, warm_sandboxes
with warm_sandboxes() if sys.argv[1] == "warm" else contextlib.nullcontext():
    ok = run_sandboxed([sys.executable, "-I", "-c", "import os; print('hello', os.getuid())"])
    spin = run_sandboxed([sys.executable, "-I", "-c", "while True: pass"], limits=Limits(cpu_seconds=1))
print(json.dumps({"uid": os.getuid(), "ok": [ok.status, ok.stdout, ok.isolation, ok.network_isolated, ok.warm],
                  "spin": [spin.status, spin.reason], "summary": isolation_summary()}))
"""


@pytest.mark.parametrize("mode", ["cold", "warm"])
def test_without_namespaces_the_sandbox_still_limits_and_says_what_it_lacks(mode):
    """No user namespaces for a non-root user: programs run (limits, process group) and isolation is honest."""
    if os.geteuid() != 0:
        pytest.skip("needs root to simulate a user without user namespaces")
    run = subprocess.run([sys.executable, "-c", WITHOUT_NAMESPACES, DEGRADED_SCRIPT, mode], capture_output=True,
                         text=True, timeout=300)
    if run.returncode == 3:
        pytest.skip("user namespaces are not available here")
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["uid"] == 1000
    status, stdout, isolation, network_isolated, warm = out["ok"]
    assert (status, stdout.strip(), isolation, network_isolated, warm) == ("ok", "hello 1000", [], False,
                                                                            mode == "warm")
    assert out["spin"] == ["timeout", "CPU time limit of 1 s exceeded"]
    assert out["summary"] == ("no isolation; NOT available: network namespace, PID namespace, private filesystem, "
                              "allow-list filesystem view, unprivileged uid")


def test_capabilities_are_reported():
    caps = capabilities()
    assert isinstance(caps, tuple)
    if os.geteuid() == 0 and "mount" in caps:
        assert {"uid", "pid", "net"} <= set(caps)


# -- the channel: fd 3 reads the given bytes, fd 4 comes back as Result.channel ---------------------------------

def test_channel_delivers_its_bytes_on_fd_3_and_returns_fd_4(py):
    data = bytes(range(256)) * 8192  # 2 MiB: more than a pipe holds
    code = ("import hashlib, os\n"
            "chunks = []\n"
            "while chunk := os.read(3, 1 << 16):\n    chunks.append(chunk)\n"
            "got = b''.join(chunks)\n"
            "os.write(4, hashlib.sha256(got).hexdigest().encode() + b' ')\n"
            "with os.fdopen(4, 'wb') as out:\n    out.write(got[::-1])\n"
            "print('stdout stays separate')")
    r = py(code, channel=data)
    assert r.status == "ok", r
    digest, _, reversed_data = r.channel.partition(b" ")
    import hashlib

    assert digest.decode() == hashlib.sha256(data).hexdigest()
    assert reversed_data == data[::-1]
    assert r.stdout == "stdout stays separate\n"


def test_channel_output_beyond_its_limit_kills_the_program(py):
    r = py("import os\nwhile True:\n    os.write(4, b'y' * 65536)", channel=b"",
           limits=Limits(channel_bytes=1 << 20))
    assert r.status == "killed" and r.reason == f"channel limit of {1 << 20} bytes exceeded"
    assert r.channel == b"y" * (1 << 20)


def test_fds_3_and_4_are_open_only_with_a_channel(py):
    # no other fd either: nothing of the launcher, the zygote's socket or the status pipe reaches the program
    code = ("import os\n"
            "def is_open(fd):\n"
            "    try:\n        os.fstat(fd)\n        return True\n"
            "    except OSError:\n        return False\n"
            "print([fd for fd in range(1024) if is_open(fd)])\n"
            "print(os.read(3, 10) if is_open(3) else 'no fd 3')")
    without = py(code)
    assert without.status == "ok" and without.stdout.splitlines() == ["[0, 1, 2]", "no fd 3"]
    assert without.channel == b""
    empty = py(code, channel=b"")  # an empty channel: fd 3 at EOF at once, nothing written to fd 4
    assert empty.status == "ok" and empty.stdout.splitlines() == ["[0, 1, 2, 3, 4]", "b''"]
    assert empty.channel == b""
    with pytest.raises(SandboxError, match="channel must be bytes, not str"):
        py(code, channel="text")


def test_channel_reaches_programs_that_are_not_python():
    with warm_sandboxes():
        r = run_sandboxed(["sh", "-c", "cat <&3 >&4; echo done"], channel=b"from the harness")
    assert r.status == "ok" and not r.warm  # the cold path: a zygote only runs Python
    assert r.channel == b"from the harness" and r.stdout == "done\n"


def test_run_many_passes_the_channel_through():
    jobs = [(PY + ["import os; os.write(4, os.read(3, 99) * 2)"], {"channel": str(i).encode()}) for i in range(4)]
    assert [r.channel for r in run_many(jobs, workers=2)] == [b"00", b"11", b"22", b"33"]


# -- the warm path: a zygote's forked child behaves like a new interpreter, and shares nothing ------------------

SEMANTICS = [
    (["-I", "-S", "prog.py", "a", "b"], "import sys\nprint(__name__, __file__, sys.argv, sys.flags.isolated)"),
    (["-S", "prog.py"], "import os, sys, helper\nprint(sys.path[0] == os.getcwd(), helper.VALUE)"),
    (["-I", "-c", "import sys; print(sys.argv, __name__, 'site' in sys.modules)", "x"], None),
    (["-I", "-S", "prog.py"], "import sys\nsys.exit(3)"),
    (["-I", "-S", "prog.py"], "import sys\nsys.exit('bye')"),
    (["-I", "-S", "prog.py"], "raise SystemExit"),
    (["-I", "-S", "prog.py"], "import atexit\natexit.register(print, 'at exit')\nprint('main')"),
    (["-I", "-S", "prog.py"], "import threading, time\ndef late():\n    time.sleep(0.3)\n    print('thread')\n"
                              "threading.Thread(target=late).start()\nprint('main')"),
    (["-I", "-S", "prog.py"], "def f(x):\n    return 1 / x\n\nprint('before')\nf(0)"),
    (["-I", "-S", "prog.py"], "def f(:\n    pass"),
    (["-I", "-S", "prog.py"], "import sys\nsys.excepthook = lambda *a: print('hooked')\nraise KeyError(1)"),
    (["-I", "-S", "prog.py"], "print('lost in the buffer', end='')\nimport os\nos._exit(4)"),
    (["-I", "-S", "prog.py"], "import sys\nprint(sys.stdin.read().upper())"),
    (["-I", "-S", "prog.py"], "print('interrupted')\nraise KeyboardInterrupt"),
    (["-I", "-S", "missing.py"], "unused"),
]


@pytest.mark.parametrize("args,source", SEMANTICS)
def test_warm_program_runs_as_a_new_interpreter_would(args, source):
    kwargs = {"files": {"prog.py": source or "", "helper.py": "VALUE = 42\n"}, "stdin": "some input"}
    cold = run_sandboxed([sys.executable, *args], **kwargs)
    with warm_sandboxes():
        warm = run_sandboxed([sys.executable, *args], **kwargs)
    assert not cold.warm and warm.warm
    workdir = re.compile(r"/\S*?teeny-sandbox-[^/\s]+/work/")  # each sandbox's own directory

    def seen(r: Result) -> tuple:
        return r.status, r.returncode, workdir.sub("WORK/", r.stdout), workdir.sub("WORK/", r.stderr)

    assert seen(warm) == seen(cold)


def _zygotes() -> list[psutil.Process]:
    """This process's zygotes (their forked sandbox-setup children show the same command line)."""
    return [p for p in psutil.Process().children() if f"{LAUNCHER} zygote" in " ".join(p.cmdline())]


def test_warm_programs_share_nothing_with_each_other():
    first = ("import builtins, os, sys, typing\n"
             "open('left-behind.txt', 'w').write('x')\nopen('/tmp/left-behind.txt', 'w').write('x')\n"
             "os.environ['LEFT_BEHIND'] = '1'\ntyping.List = None\nsys.modules['json'] = None\n"
             "print(os.getuid(), os.getcwd(), os.getpid())\nbuiltins.print = None\n")
    second = ("import json, os, typing\n"
              "print(os.getuid(), os.getcwd(), os.getpid())\n"
              "print(os.listdir('.'), 'left-behind.txt' in os.listdir('/tmp'), 'LEFT_BEHIND' in os.environ,"
              " typing.List is None)")
    with warm_sandboxes():
        a = run_sandboxed(PY + [first])
        b = run_sandboxed(PY + [second])
    assert a.warm and b.warm and a.status == "ok" and b.status == "ok", (a, b)
    uid_a, cwd_a, pid_a = a.stdout.split()
    (uid_b, cwd_b, pid_b), state = b.stdout.splitlines()[0].split(), b.stdout.splitlines()[1]
    if "uid" in a.isolation:
        assert uid_a != uid_b  # a fresh uid per program, not per zygote
    if "pid" in a.isolation:
        assert pid_a == pid_b  # each in a PID namespace of its own, the zygote out of sight
    assert cwd_a != cwd_b
    assert state == "['.tmp'] False False False"


def test_an_exited_cold_launcher_keeps_its_pid_until_finished():
    """Its pid stays a zombie of ours, so the kill of its process group after it exits cannot hit another
    process that was handed the same pid (as polling it, which reaps, allowed)."""
    from teeny_bench.sandbox import _ColdProcess

    launcher = _ColdProcess(subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True))
    deadline = time.monotonic() + 30
    while launcher.alive():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert psutil.Process(launcher.pid).status() == psutil.STATUS_ZOMBIE
    launcher.finish()
    assert not psutil.pid_exists(launcher.pid) or psutil.Process(launcher.pid).ppid() != os.getpid()


def test_zygote_that_dies_is_replaced_and_none_outlives_its_block():
    with warm_sandboxes():
        assert run_sandboxed(PY + ["print(1)"]).stdout == "1\n"
        zygotes = _zygotes()
        assert len(zygotes) == 1
        zygotes[0].kill()
        zygotes[0].wait(10)
        r = run_sandboxed(PY + ["print(2)"])
        assert r.stdout == "2\n" and r.warm
    assert not _left_after(LAUNCHER)


def test_each_environment_gets_its_own_zygote():
    code = "import os, sys\nprint(os.environ.get('MODE'), os.environ['HOME'] == os.getcwd(), sys.stdout.encoding)"
    with warm_sandboxes():
        results = [run_sandboxed(PY + [code], env=env) for env in ({"MODE": "a"}, {"MODE": "b"}, {})]
    assert all(r.warm for r in results)
    assert [r.stdout.split() for r in results] == [["a", "True", "utf-8"], ["b", "True", "utf-8"],
                                                   ["None", "True", "utf-8"]]
    assert not _zygotes()
