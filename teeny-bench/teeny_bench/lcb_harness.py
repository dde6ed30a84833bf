"""Grades one LiveCodeBench solution against its tests; runs INSIDE the sandbox, standard library only.

Usage (in the sandbox's working directory): ``python -I lcb_harness.py`` with ``solution.py``, ``_channel.py``
and ``problem.json`` (``{"mode": "stdin"|"functional", "func_name", "inputs": [...], "timeout",
"all_tests"}``) beside it. The expected outputs never enter the sandbox: the harness reports, on the channel
(:mod:`teeny_bench._channel`, nonce-tagged, after the last test), what each test printed (stdin problems; a
digest of the stripped lines above ``FULL_OUTPUT_BYTES``) or returned (functional problems, type-tagged), and
the parent compares with :func:`stdout_matches` / :func:`returned_matches`. A runtime error or a timeout ends
the run unless ``all_tests``.

The solution is compiled once (a syntax error is a compile error), then each test runs in a forked child
(its own process group, CPU limit, wall timeout, stdin from the test input, stdout to a file), so tests
cannot share state and a hung test is killed without losing the others' results. Semantics follow
LiveCodeBench's ``testing_util``: the same wildcard imports are in scope; stdin programs must print the
expected lines (compared after stripping, line by line, then token by token as exact decimals); functional
programs are called as ``Solution().<func_name>(*args)`` with one JSON argument per (non-blank) input line,
and the result (a tuple as a list) must equal the JSON output; ``SystemExit`` ends a program normally. Unlike
LiveCodeBench, each test gets a fresh ``Solution()`` (state cannot leak from one test into the next).
"""

import builtins
import hashlib
import io
import json
import os
import resource
import select
import signal
import sys
import time
from decimal import Decimal, InvalidOperation

# The names LiveCodeBench puts in scope before a solution (its import_string), as one header.
HEADER_MODULES = ("string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random",
                  "statistics", "itertools", "functools", "operator", "io", "sys", "json")
HEADER = "".join(f"from {m} import *\n" for m in HEADER_MODULES + ("builtins", "typing"))
HEADER += "".join(f"import {m}\n" for m in HEADER_MODULES) + "sys.setrecursionlimit(50000)\n"
HEADER_LINES = HEADER.count("\n")
FULL_OUTPUT_BYTES = 1 << 20  # a larger printed output is reported as the digest of its stripped lines
STATUS_BYTES = 8 << 20  # a test's report (an answer up to _channel.DIGEST_ABOVE, as a tree) is cut here


def truncate(value, length=300):
    try:
        text = value if isinstance(value, str) else repr(value)
    except ValueError:  # an int past Python's 4300-digit limit for decimal conversion
        text = f"<a {type(value).__name__} too large to show>"
    return text if len(text) <= length else text[:length // 2] + "...(truncated)..." + text[-length // 2:]


def stripped_lines(text):
    return [line.strip() for line in text.strip().split("\n")]


def as_decimals(line):
    """The line's tokens as exact decimals, or None when one is not a number (NaNs included: ``sNaN`` would
    raise on comparison). Only ASCII digits count: ``Decimal`` also reads ``1_0`` and Arabic-Indic or
    full-width digits, which no judge accepts for ``10``."""
    if not line.isascii() or "_" in line:
        return None
    try:
        values = [Decimal(token) for token in line.split()]
    except (InvalidOperation, ValueError):
        return None
    return None if any(v.is_nan() for v in values) else values


def stdout_matches(output, expected):
    """LiveCodeBench's stdin comparison: same number of stripped lines, each equal as text or as decimals."""
    got, want = stripped_lines(output), stripped_lines(expected)
    if len(got) != len(want):
        return False, f"{len(got)} output lines, expected {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        if g == w:
            continue
        gd, wd = as_decimals(g), as_decimals(w)
        if gd is None or wd is None or gd != wd:
            return False, f"line {i + 1}: {truncate(g, 120)!r} != {truncate(w, 120)!r}"
    return True, ""


def lines_digest(text):
    """The SHA-256 of ``text``'s stripped lines (what :func:`stdout_matches` compares as text)."""
    return hashlib.sha256("\n".join(stripped_lines(text)).encode("utf-8", "surrogatepass")).hexdigest()


def returned_matches(returned, expected_json, from_tree, measure):
    """LiveCodeBench's functional comparison, on the parent's side: the reported answer (a
    :func:`_channel.encode` dict) equals the JSON output (an output that is not JSON matches nothing)."""
    try:  # ints of any length: int() refuses decimal text over 4300 digits, Decimal does not
        expected = json.loads(expected_json, parse_int=lambda text: int(text) if len(text) < 4000 else int(Decimal(text)))
    except (ValueError, RecursionError):
        return False
    if "v" not in returned:
        size, digest = measure(expected)
        return (size, digest) == (returned["size"], returned["sha256"])
    return bool(from_tree(returned["v"]) == expected)


def child(code, mode, func_name, test_input, cpu_seconds, status_fd, out_path, err_path, in_path, encode):
    """Runs in the forked child: one test, reporting one JSON line on status_fd, then _exit."""
    os.setpgid(0, 0)
    cpu = max(1, int(cpu_seconds + 1))
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard != resource.RLIM_INFINITY:
        cpu = min(cpu, max(1, hard - 1))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1 if hard == resource.RLIM_INFINITY else min(cpu + 1, hard)))
    for fd, path, flags in ((0, in_path, os.O_RDONLY), (1, out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        opened = os.open(path, flags, 0o600)
        os.dup2(opened, fd)
        os.close(opened)
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding="utf-8")
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)), encoding="utf-8")
    sys.stderr = io.TextIOWrapper(io.BufferedWriter(io.FileIO(2, "w", closefd=False)), encoding="utf-8",
                                  write_through=True)
    report = {"ok": True}
    try:
        if mode == "stdin":
            try:
                exec(code, {"__name__": "__main__", "__builtins__": builtins})
            except SystemExit:
                pass
        else:
            namespace = {"__name__": "solution", "__builtins__": builtins}
            exec(code, namespace)
            if "Solution" in namespace:
                method = getattr(namespace["Solution"](), func_name)
            else:
                method = namespace[func_name]
            args = [json.loads(line) for line in test_input.split("\n") if line.strip()]
            try:
                prediction = method(*args)
            except SystemExit:
                prediction = None
            if isinstance(prediction, tuple):
                prediction = list(prediction)
            report = {"ok": True, "returned": encode(prediction)}
    except BaseException as exc:  # the solution's own error: report its type
        report = {"ok": False, "error": type(exc).__name__, "message": truncate(str(exc), 500)}
    try:
        sys.stdout.flush()
    except BaseException:
        pass
    os.write(status_fd, (json.dumps(report) + "\n").encode())
    os._exit(0)


def wait_with_timeout(pid, seconds, status_fd):
    """(status, timed_out, status bytes): waits for the child, reading what it writes on ``status_fd`` meanwhile
    (a report larger than a pipe's buffer would otherwise block it), killing its process group after
    ``seconds`` of wall time."""
    deadline = time.monotonic() + seconds
    received = bytearray()
    watched = [status_fd]
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
                    try:
                        target()
                    except OSError:
                        pass
                return os.waitpid(pid, 0)[1], True, bytes(received)
            if select.select(watched, [], [], min(left, 0.002 if not watched else 0.05))[0]:
                chunk = os.read(status_fd, 1 << 16)
                if not chunk:
                    watched = []
                elif len(received) < STATUS_BYTES:
                    received += chunk
        while watched and select.select(watched, [], [], 0)[0] and len(received) < STATUS_BYTES:
            chunk = os.read(status_fd, 1 << 16)  # the rest, unless a leftover process holds the pipe open
            if not chunk:
                break
            received += chunk
        return status, False, bytes(received)
    finally:
        os.close(status_fd)


def run_test(code, problem, test_input, index, channel):
    """One test's outcome: {"returned" | "printed" | "printed_sha256", "error"?, "detail"?, "seconds"}."""
    in_path, out_path, err_path = f"in-{index}.txt", f"out-{index}.txt", f"err-{index}.txt"
    with open(in_path, "w", encoding="utf-8") as f:
        f.write(test_input)
    read_fd, write_fd = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            os.close(4)  # the channel is the harness's, not the test's
            channel.set_dumpable(True)  # its own /proc entries; the harness's stay closed to it
            child(code, problem["mode"], problem.get("func_name"), test_input, problem["timeout"], write_fd,
                  out_path, err_path, in_path, channel.encode)
        finally:
            os._exit(70)
    os.close(write_fd)
    status, timed_out, raw = wait_with_timeout(pid, problem["timeout"], read_fd)
    seconds = time.monotonic() - start
    raw = raw[:STATUS_BYTES].decode(errors="replace").strip()
    try:
        return _outcome(problem, raw, status, timed_out, out_path, err_path, seconds)
    finally:
        for path in (in_path, out_path, err_path):  # gone once read: many tests never fill the sandbox's disk
            try:
                os.unlink(path)
            except OSError:
                pass


def _outcome(problem, raw, status, timed_out, out_path, err_path, seconds):
    try:
        report = json.loads(raw.splitlines()[-1]) if raw else None
    except (ValueError, RecursionError):
        report = None
    if type(report) is not dict:  # the test's process writes this line: anything else is no result
        report = None
    if timed_out or (os.WIFSIGNALED(status) and os.WTERMSIG(status) in (signal.SIGXCPU, signal.SIGKILL)
                     and report is None):
        return {"ok": False, "error": "Timeout", "detail": f"no result after {problem['timeout']:g} s",
                "seconds": seconds}
    if report is None:
        how = (f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
               else f"exited with code {os.WEXITSTATUS(status)} without a result")
        stderr = _tail(err_path)
        error = "MemoryError" if "MemoryError" in stderr or "Cannot allocate memory" in stderr else "Crash"
        return {"ok": False, "error": error, "detail": f"{how}; stderr: {stderr}", "seconds": seconds}
    if report.get("error"):
        error = str(report["error"])[:100]
        return {"ok": False, "error": error, "detail": f"{error}: {truncate(str(report.get('message', '')), 500)}",
                "seconds": seconds}
    if problem["mode"] == "functional":
        returned = report.get("returned")
        return {"returned": returned if type(returned) is dict else {"v": ["?", "no answer"]}, "seconds": seconds}
    if os.path.getsize(out_path) > FULL_OUTPUT_BYTES:
        with open(out_path, "r", encoding="utf-8", errors="replace") as f:
            return {"printed_sha256": lines_digest(f.read()), "seconds": seconds}
    with open(out_path, "r", encoding="utf-8", errors="replace") as f:
        return {"printed": f.read(), "seconds": seconds}


def _tail(path, length=500):
    try:
        with open(path, "r", errors="replace") as f:
            return truncate(f.read()[-4000:], length)
    except OSError:
        return ""


def main():
    sys.path.insert(0, os.getcwd())  # -I leaves the script's directory off sys.path: _channel.py is beside it
    import _channel
    del sys.path[0]

    _channel.set_dumpable(False)
    guard = _channel.Guard()  # each test is a forked child; the parent compares every answer
    with open("problem.json") as f:
        problem = json.load(f)
    with open("solution.py") as f:
        source = f.read()
    os.unlink("problem.json")  # the other tests' inputs are not left on disk for the solution
    result = {"results": []}
    try:
        code = compile(HEADER + source, "solution.py", "exec")
    except (SyntaxError, ValueError) as exc:
        line = getattr(exc, "lineno", None)
        where = f" (line {line - HEADER_LINES})" if line and line > HEADER_LINES else ""
        message = exc.msg if hasattr(exc, "msg") else exc
        result["compile_error"] = {"error": type(exc).__name__, "detail": f"{type(exc).__name__}: {message}{where}"}
        guard.report(result)
        return
    exec(HEADER, {"__name__": "teeny_preload"})  # load the header's modules once, before forking
    for index, test_input in enumerate(problem["inputs"]):
        outcome = run_test(code, problem, test_input, index, _channel)
        result["results"].append(outcome)
        if outcome.get("error") and (not problem.get("all_tests") or outcome["error"] == "Timeout"):
            break
    guard.report(result)


if __name__ == "__main__":
    main()
