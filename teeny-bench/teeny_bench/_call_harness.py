"""Runs a Python solution's tests where the solution cannot reach them; INSIDE the sandbox, standard library only.

``python -I -S harness.py`` with ``job.json``, ``solution.py`` and ``test.py`` (mode ``check``) or
``inputs.json`` (mode ``outputs``) beside it. Two processes:

- the **solution process** is forked first, before this harness has read anything: it closes the channel's
  fds (3 and 4), waits for the solution's source on a pipe, runs it, then only answers calls: arguments in
  (a type-tagged tree of builtin values), the answer out (:func:`_channel.encode`), or the name of the
  exception it raised. It never holds the nonce, the tests, the prompt's helpers or any expected value;
- the **checker** (this process) makes itself non-dumpable (a process of the same uid can then neither
  ptrace it nor read its memory or fds through /proc), takes the nonce (:class:`_channel.Guard`), reads and
  deletes its files, sends the source, and runs the tests with the entry point bound to a proxy that sends
  each call to the solution process and rebuilds the answer as plain builtins (:func:`_channel.from_tree`:
  never an object whose methods the solution wrote). ``check``: the prompt's own helpers (``poly``...) and
  the test run here and ``check(proxy)`` is called; ``outputs`` (HumanEval+): the proxy is called on each
  input and the answers are reported for the parent to compare. The solution's CPU time is read from
  outside (its process CPU clock) and the process group is killed past a call's limit or the run's budget.

The report (fd 4, nonce-tagged, only from here) is ``{"failed": null | {"error", "detail", "index"?}}`` plus
``outputs`` and ``times`` (CPU seconds per call) in ``outputs`` mode.
"""

import builtins
import json
import os
import select
import signal
import sys
import time

sys.path.insert(0, os.getcwd())  # -I leaves the script's directory off sys.path: _channel.py is beside it
import _channel  # noqa: E402
del sys.path[0]

MAX_FRAME = 16 << 20  # a larger reply is a failed sample (answers over 1 MiB travel as digests)
HEADER = 8  # every frame: its length as 8 hex digits, then that many bytes of JSON
POLL = 0.02  # seconds between reads of the solution's CPU clock while it works
if hasattr(sys, "set_int_max_str_digits"):
    sys.set_int_max_str_digits(0)  # answers are bounded by MAX_FRAME; a 10**6-digit answer is legitimate


class Stop(BaseException):
    """Ends the run with a failed verdict (a BaseException, so a test's ``except Exception`` cannot swallow it)."""

    def __init__(self, error, detail):
        super().__init__(detail)
        self.error, self.detail = error, detail


# -- the solution process -------------------------------------------------------------------------------------

def _send(fd, message):
    data = json.dumps(message).encode()
    data = b"%08x" % len(data) + data
    while data:
        data = data[os.write(fd, data):]


def _receive(fd):
    def exactly(n):
        chunks = []
        while n:
            chunk = os.read(fd, min(n, 1 << 20))
            if not chunk:
                return None
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    header = exactly(HEADER)
    body = exactly(int(header, 16)) if header else None
    return json.loads(body) if body is not None else None


def _raised(exc):
    import traceback

    text = traceback.format_exc()
    return {"raised": type(exc).__name__, "detail": text if len(text) <= 600 else "..." + text[-600:]}


def serve(requests, replies):
    """The solution process: run the source sent by the checker, then answer its calls until EOF."""
    os.setpgid(0, 0)
    for fd in (3, 4):
        try:
            os.close(fd)
        except OSError:
            pass
    start = _receive(requests)
    if start is None:
        return
    sys.path.extend(start["site_dirs"])  # started with -S: installed packages (numpy) by path only
    if start["quiet"]:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)
    namespace = {"__name__": start["name"], "__builtins__": builtins}
    try:
        exec(compile(start["source"], "solution.py", "exec"), namespace)
        objects = [namespace[start["entry_point"]]]
        reply = {"ready": True}
    except BaseException as exc:  # noqa: BLE001 - the solution's own error, reported by name
        _send(replies, _raised(exc))
        _receive(requests)  # alive until the checker is done: exiting now would read as an early exit
        return
    _send(replies, reply)
    while True:
        request = _receive(requests)
        if request is None:
            return
        try:
            target = objects[request["handle"]]
            if request["method"]:
                target = getattr(target, request["method"])
            args = [_channel.from_tree(a) for a in request["args"]]
            kwargs = {k: _channel.from_tree(v) for k, v in request["kwargs"].items()}
            answer = target(*args, **kwargs)
            if isinstance(target, type):  # an instance of the solution's class stays here; the checker gets a handle
                objects.append(answer)
                reply = {"handle": len(objects) - 1}
            else:
                reply = _channel.encode(answer)
        except BaseException as exc:  # noqa: BLE001
            reply = _raised(exc)
        _send(replies, reply)


# -- the checker ----------------------------------------------------------------------------------------------

class Solution:
    """The checker's side of the solution process: calls with CPU limits read from outside."""

    def __init__(self, pid, requests, replies, budget):
        self.pid, self.requests, self.replies, self.budget = pid, requests, replies, budget
        self.group = pid  # the solution process leads its own process group (a setsid in it only leaves it)
        self.clock = ((~pid) << 3) | 2  # the process's CPU clock (Linux's MAKE_PROCESS_CPUCLOCK(pid, SCHED))
        os.set_blocking(requests, False)

    def cpu(self):
        try:
            return time.clock_gettime(self.clock)
        except OSError:
            return None

    def gone(self):
        """True once the solution process has exited (a fork whose parent exits leaves an impostor serving)."""
        return self.pid is None or os.waitpid(self.pid, os.WNOHANG)[0] != 0

    def exchange(self, message, limit=None, what="the call"):
        """Send one request and return ``(reply, CPU seconds it took)``; raises :class:`Stop`."""
        data = json.dumps(message).encode()
        out = memoryview(b"%08x" % len(data) + data)
        start = self.cpu() or 0.0
        cap = self.budget - start
        limit = cap if limit is None else min(limit, cap)
        started, others = time.monotonic(), _namespace_cpu()
        wall_deadline = started + 3 * max(limit, 0.0) + 5
        received, need, header = bytearray(), HEADER, True
        while True:
            readable, writable, _ = select.select([self.replies], [self.requests] if out else [], [], POLL)
            if writable:
                try:
                    out = out[os.write(self.requests, out):]
                except BlockingIOError:
                    pass
                except OSError:
                    out = memoryview(b"")  # the solution is gone: its reply pipe says how
            if readable:
                chunk = os.read(self.replies, min(need - len(received), 1 << 20))
                if not chunk:
                    self.ended(what)
                received += chunk
                if len(received) == need:
                    if not header:
                        break
                    try:
                        need = int(received, 16)
                    except ValueError:
                        need = -1
                    if not 0 < need <= MAX_FRAME:
                        self.kill()
                        raise Stop("MalformedAnswer", f"{what}: a reply of {need} bytes (at most {MAX_FRAME})")
                    received, header = bytearray(), False
            used = (self.cpu() or 0.0) - start
            if time.monotonic() - started > limit:  # slow by the clock: count the work of its other processes too
                used = max(used, _namespace_cpu() - others)
            if used > limit:
                self.kill()
                whole = limit >= cap
                raise Stop("Timeout", f"{what}: time limit of {limit:.2f} s CPU exceeded" if not whole else
                           f"the CPU time limit of {self.budget:g} s for the whole run was exceeded during {what}")
            if time.monotonic() > wall_deadline:
                self.kill()
                raise Stop("Timeout", f"{what}: no answer after {3 * limit + 5:.1f} s of wall time")
        seconds = (self.cpu() or start) - start
        if self.gone():
            self.pid = None
            self.kill_group()
            raise Stop("EarlyExit", f"the solution process exited during {what}; another process answered")
        try:
            reply = json.loads(bytes(received))
        except (ValueError, RecursionError):
            raise Stop("MalformedAnswer", f"{what}: the reply is not JSON") from None
        if type(reply) is not dict:
            raise Stop("MalformedAnswer", f"{what}: the reply is a {type(reply).__name__}, not an object")
        return reply, seconds

    def ended(self, what):
        """The solution process closed its pipe: why, as a :class:`Stop`."""
        if self.pid is None:
            raise Stop("EarlyExit", f"the solution process ended during {what}")
        _, status = os.waitpid(self.pid, 0)
        self.pid = None
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig == signal.SIGXCPU:
                raise Stop("Timeout", f"the solution process hit its CPU limit during {what}")
            raise Stop("Crash", f"the solution process was killed by signal {sig} during {what}")
        raise Stop("EarlyExit", f"the solution process exited (status {os.WEXITSTATUS(status)}) during {what}")

    def kill(self):
        """Kill the solution process and its process group."""
        if self.pid is None:
            return
        self.kill_group()
        try:
            os.kill(self.pid, signal.SIGKILL)
        except OSError:
            pass
        os.waitpid(self.pid, 0)
        self.pid = None

    def kill_group(self):
        try:
            os.killpg(self.group, signal.SIGKILL)
        except OSError:
            pass

    def call(self, handle, method, args, kwargs, limit=None, what="the call"):
        """The raw reply to one call (an encoded answer, a handle, or ``raised``)."""
        request = {"handle": handle, "method": method, "args": [_channel.tree(a) for a in args],
                   "kwargs": {str(k): _channel.tree(v) for k, v in kwargs.items()}}
        if '["?", ' in json.dumps([request["args"], request["kwargs"]]):  # the tag; inside a string it is escaped
            raise Stop("UnsupportedArgument", f"{what}: the test passes an argument that is not of builtin types "
                                              "(only those cross to the solution's process)")
        return self.exchange(request, limit, what)

    def value(self, reply, what):
        """The plain builtin value of an answer, raising what the solution raised."""
        if "raised" in reply:
            raise _exception(reply, what)
        if "v" not in reply:
            raise Stop("MalformedAnswer", f"{what}: an answer of over 1 MiB (or no answer) where a value is checked")
        try:
            answer = _channel.from_tree(reply["v"])
        except _channel.BadValue as exc:
            raise Stop("MalformedAnswer", f"{what}: {exc}") from None
        if _channel.has_opaque(answer):
            raise Stop("BadAnswer", f"{what} returned {_channel.describe(answer)}, not a value of builtin types")
        return answer


def _namespace_cpu():
    """CPU seconds of every live process in the sandbox's PID namespace but its init and this checker: the
    solution process and whatever it started. 0 when this is not a PID namespace of our own (whose init, pid 1,
    started this checker)."""
    if os.getppid() != 1:
        return 0.0
    ticks, mine = os.sysconf("SC_CLK_TCK"), str(os.getpid())
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit() or name in ("1", mine):
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            continue
    return total / ticks


def _exception(reply, what):
    name, detail = reply.get("raised"), reply.get("detail")
    if type(name) is not str or type(detail) is not str or len(name) > 100:
        return Stop("MalformedAnswer", f"{what}: a malformed exception report")
    if name in ("SystemExit", "KeyboardInterrupt", "GeneratorExit"):
        return Stop("EarlyExit" if name == "SystemExit" else name, f"{what}: {detail[-300:]}")
    kind = getattr(builtins, name, None)
    # StopIteration raised here would silently end the test's ``map``/``filter`` loop (``all(map(...))`` true)
    if isinstance(kind, type) and issubclass(kind, Exception) and not issubclass(kind, StopIteration):
        return kind(f"raised by the solution during {what}:\n{detail[-500:]}")
    return SolutionError(f"{name} raised by the solution during {what}:\n{detail[-500:]}", name)


class SolutionError(Exception):
    """An exception of a non-builtin type raised by the solution."""

    def __init__(self, message, name):
        super().__init__(message)
        self.name = name


class Proxy:
    """Stands for the solution's entry point (or a method of an object it made) in the checker."""

    def __init__(self, solution, handle, method, name, makes_objects=False):
        self._solution, self._handle, self._method, self.__name__ = solution, handle, method, name
        self._makes_objects = makes_objects  # the entry point is a class (``Solution``) in the prompt

    def __call__(self, *args, **kwargs):
        what = f"the call of {self.__name__}"
        reply, _ = self._solution.call(self._handle, self._method, args, kwargs, what=what)
        if not self._makes_objects or "raised" in reply:
            return self._solution.value(reply, what)
        if type(reply.get("handle")) is not int:
            raise Stop("MalformedAnswer", f"{what}: no object where the prompt's class was instantiated")
        return Instance(self._solution, reply["handle"], self.__name__)

    def _read_as_value(self):
        """A method proxy read as a value is a test reading a data attribute of the solution's object, which
        stays in the solution's process: as a proxy it would pass ``assert obj.is_on`` or ``obj.items != []``."""
        raise Stop("UnsupportedArgument", f"the test reads {self.__name__} as a value; only methods of the "
                                          "solution's objects can be called from the checker")

    def __bool__(self):
        return True if self._method is None else self._read_as_value()

    def __eq__(self, other):
        return self is other if self._method is None else self._read_as_value()

    def __ne__(self, other):
        return self is not other if self._method is None else self._read_as_value()

    __hash__ = object.__hash__


class Instance:
    """An object of the solution's class, living in the solution process: its methods are proxies."""

    def __init__(self, solution, handle, name):
        self._solution, self._handle, self._name = solution, handle, name

    def __getattr__(self, method):
        if method.startswith("__"):
            raise AttributeError(method)
        return Proxy(self._solution, self._handle, method, f"{self._name}().{method}")


def _helpers(prompt):
    """The prompt's code (imports, helpers such as ``poly``), compiled; a stub without a body gets ``pass``."""
    if not prompt.strip():
        return None
    try:
        return compile(prompt, "prompt.py", "exec")
    except SyntaxError:
        last = prompt.rstrip().split("\n")[-1]
        indent = len(last) - len(last.lstrip())
        try:
            return compile(prompt.rstrip() + "\n" + " " * (indent + 4) + "pass\n", "prompt.py", "exec")
        except SyntaxError:
            return None


def run_check(job, test, solution):
    """HumanEval: the prompt's helpers and the test run here; ``check`` gets the proxy."""
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    helpers = _helpers(job.get("helpers", ""))
    if helpers is not None:
        exec(helpers, namespace)
    proxy = Proxy(solution, 0, None, job["entry_point"], isinstance(namespace.get(job["entry_point"]), type))
    namespace[job["entry_point"]] = proxy
    exec(compile(test, "test.py", "exec"), namespace)
    if callable(namespace.get("check")):
        namespace["check"](proxy)
    return {"failed": None}


def run_outputs(job, inputs, solution):
    """HumanEval+: the answer to every input and its CPU seconds, for the parent to compare."""
    limits = job.get("time_limits")
    outputs, times = [], []
    for i, args in enumerate(inputs):
        what = f"input #{i}"
        try:
            reply, seconds = solution.call(0, None, args, {}, limits[i] if limits else None, what=what)
            if "raised" in reply:
                raise _exception(reply, what)
            outputs.append(_checked_answer(reply, what))
        except (Exception, Stop) as exc:  # noqa: BLE001 - the solution's exception, a time limit
            return {"outputs": outputs, "times": times, "failed": _failure(exc, i)}
        times.append(seconds)
    return {"outputs": outputs, "times": times, "failed": None}


def _checked_answer(reply, what):
    """An encoded answer passed on only once it is well formed (a tree that decodes, or a digest)."""
    if "v" in reply:
        try:
            _channel.from_tree(reply["v"])
        except _channel.BadValue as exc:
            raise Stop("MalformedAnswer", f"{what}: {exc}") from None
        return {"v": reply["v"]}
    digest, size = reply.get("sha256"), reply.get("size")
    if (type(digest) is str and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)
            and type(size) is int and size > 0):
        return {"sha256": digest, "size": size}
    raise Stop("MalformedAnswer", f"{what}: neither a value nor a digest")


def _failure(exc, index=None):
    import traceback

    if isinstance(exc, Stop):
        error, detail = exc.error, exc.detail
    else:
        error = exc.name if isinstance(exc, SolutionError) else type(exc).__name__
        detail = traceback.format_exc()
        detail = detail if len(detail) <= 1500 else "..." + detail[-1500:]
    failure = {"error": error, "detail": detail}
    if index is not None:
        failure["index"] = index
    return failure


def main():
    requests_r, requests_w = os.pipe()
    replies_r, replies_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(requests_w)
            os.close(replies_r)
            serve(requests_r, replies_w)
        finally:
            os._exit(0)
    os.close(requests_r)
    os.close(replies_w)
    _channel.set_dumpable(False)
    guard = _channel.Guard()
    with open("job.json") as f:
        job = json.load(f)
    sys.path.extend(job["site_dirs"])  # installed packages a test may import (the checker started with -S)
    with open("solution.py") as f:
        source = f.read()
    test, inputs = "", []
    if job["mode"] == "check":
        with open("test.py") as f:
            test = f.read()
    else:
        with open("inputs.json") as f:
            inputs = json.load(f)
    for name in ("job.json", "solution.py", "test.py", "inputs.json"):
        try:
            os.unlink(name)
        except OSError:
            pass
    solution = Solution(pid, requests_w, replies_r, job["budget"])
    report = {"failed": None}
    try:
        start = {"source": source, "entry_point": job["entry_point"], "name": job["name"],
                 "site_dirs": job["site_dirs"], "quiet": job["mode"] != "check"}
        reply, _ = solution.exchange(start, what="loading the solution")
        if "raised" in reply:
            raise _exception(reply, "loading the solution")
        report = run_check(job, test, solution) if job["mode"] == "check" else run_outputs(job, inputs, solution)
    except (Exception, Stop) as exc:  # noqa: BLE001 - a failed test, the solution's exception, a time limit
        report["failed"] = _failure(exc, None if job["mode"] == "check" else 0)
    finally:
        solution.kill()
    if job["mode"] != "check":
        report.setdefault("outputs", [])
        report.setdefault("times", [])
    guard.report(report)


if __name__ == "__main__":
    main()
