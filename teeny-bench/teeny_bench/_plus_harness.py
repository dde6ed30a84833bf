"""HumanEval+ grading harness; runs INSIDE the sandbox (standard library, numpy only for float comparisons).

``python -I _plus_harness.py reference``: run ``solution.py`` (prompt + canonical solution) on every input of
``inputs.json``; print the pickled outputs (base64) and the CPU seconds of each call.

``python -I _plus_harness.py candidate``: run ``solution.py`` on every input, compare each output with
``expected.pkl`` as EvalPlus does (exact match, else ``np.allclose`` with the problem's ``atol`` when the
outputs are floats or an ``atol`` is given; ``find_zero`` checks ``|poly(xs, x)| <= atol``), each call under a
CPU-time limit. The first failure ends the run: a wrong output raises ``AssertionError``, an exception from the
solution propagates, a call over its time limit kills the process with SIGXCPU. Before that the harness prints
``@@teeny-plus@@ {"failed_index": i}`` (``null`` when every input passed).
"""

import base64
import copy
import json
import math
import os
import pickle
import signal
import sys
import time

MARKER = "@@teeny-plus@@ "


class _TimeLimit(BaseException):
    pass


def _report(data):
    os.write(1, (MARKER + json.dumps(data) + "\n").encode())


def _load_solution(entry_point):
    namespace = {"__name__": "solution"}
    with open("solution.py") as f:
        source = f.read()
    exec(compile(source, "solution.py", "exec"), namespace)
    return namespace[entry_point], namespace


def _is_floats(x):
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)):
        return all(isinstance(i, float) for i in x)
    return False


def _poly(xs, x):
    return sum(coeff * math.pow(x, i) for i, coeff in enumerate(xs))


def _matches(entry_point, inp, out, exp, atol):
    """EvalPlus's output check; any error while comparing counts as a mismatch."""
    try:
        return _compare(entry_point, inp, out, exp, atol)
    except Exception:
        return False


def _compare(entry_point, inp, out, exp, atol):
    if entry_point == "find_zero":
        return abs(_poly(*inp, out)) <= atol
    if atol == 0 and _is_floats(exp):
        atol = 1e-6
    if bool(out == exp):
        return True
    if atol == 0:
        return False
    if type(out) is not type(exp):
        return False
    if isinstance(exp, (list, tuple)) and len(out) != len(exp):
        return False
    import numpy as np

    return bool(np.allclose(out, exp, rtol=1e-07, atol=atol))


def _on_time_limit(signum, frame):
    raise _TimeLimit()


def reference(meta, inputs):
    fn, _ = _load_solution(meta["entry_point"])
    outputs, times = [], []
    devnull = open(os.devnull, "w")
    real_stdout, sys.stdout = sys.stdout, devnull
    try:
        for inp in inputs:
            start = time.process_time()
            outputs.append(fn(*copy.deepcopy(inp)))
            times.append(time.process_time() - start)
    finally:
        sys.stdout = real_stdout
    _report({"expected": base64.b64encode(pickle.dumps(outputs)).decode(), "times": times})


def candidate(meta, inputs):
    with open("expected.pkl", "rb") as f:
        expected = pickle.load(f)
    limits = meta["time_limits"]
    atol = meta["atol"]
    entry_point = meta["entry_point"]
    signal.signal(signal.SIGPROF, _on_time_limit)
    devnull = open(os.devnull, "w")
    fn, _ = _load_solution(entry_point)
    for i, inp in enumerate(inputs):
        real_stdout, sys.stdout = sys.stdout, devnull
        try:
            signal.setitimer(signal.ITIMER_PROF, limits[i])
            out = fn(*copy.deepcopy(inp))
            signal.setitimer(signal.ITIMER_PROF, 0)
        except _TimeLimit:
            sys.stdout = real_stdout
            _report({"failed_index": i})
            sys.stderr.write(f"time limit of {limits[i]:.2f} s CPU exceeded on input #{i}\n")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGXCPU)
            time.sleep(10)
        except BaseException:
            signal.setitimer(signal.ITIMER_PROF, 0)
            sys.stdout = real_stdout
            _report({"failed_index": i})
            raise
        finally:
            sys.stdout = real_stdout
        if not _matches(entry_point, inp, out, expected[i], atol):
            _report({"failed_index": i})
            kind = "base" if i < meta["n_base"] else "plus"
            raise AssertionError(f"{kind} input #{i} {_short(inp)}: expected {_short(expected[i])}, got {_short(out)}")
    _report({"failed_index": None})


def _short(value, length=200):
    text = repr(value)
    return text if len(text) <= length else text[:length] + "..."


def main():
    with open("meta.json") as f:
        meta = json.load(f)
    sys.path.extend(meta.get("site_dirs", []))  # started with -S: installed packages (numpy) by path only
    with open("inputs.json") as f:
        inputs = json.load(f)
    {"reference": reference, "candidate": candidate}[sys.argv[1]](meta, inputs)


if __name__ == "__main__":
    main()
