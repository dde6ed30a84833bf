"""HumanEval+ grading harness; runs INSIDE the sandbox (standard library only).

``python -I -S _plus_harness.py reference|candidate`` with ``solution.py``, ``inputs.json`` and ``meta.json``
beside it. It takes the nonce (:class:`_channel.Guard`), loads the solution and calls it on every input (a deep
copy, stdout silenced), each call under a CPU-time limit in ``candidate`` mode. It never sees an expected
output: each answer is encoded (:func:`_channel.encode`: a type-tagged tree, or a digest for a large one) and
the report on fd 4 carries them all, with the CPU seconds of each call; the parent compares them with the
expected answers as EvalPlus does. An exception or a time limit ends the run: the report then says which input
failed and how (the process then ends by SIGXCPU on a time limit, so the sandbox reports a timeout).
"""

import copy
import json
import os
import signal
import sys
import time
import traceback

sys.path.insert(0, os.getcwd())  # -I leaves the script's directory off sys.path: _channel.py is beside it
import _channel  # noqa: E402
del sys.path[0]


class _TimeLimit(BaseException):
    pass


def _on_time_limit(signum, frame):
    raise _TimeLimit()


def run(mode, meta, inputs, guard):
    namespace = {"__name__": "solution"}
    with open("solution.py") as f:
        source = f.read()
    devnull = open(os.devnull, "w")
    limits = meta.get("time_limits")
    signal.signal(signal.SIGPROF, _on_time_limit)
    outputs, times, failed = [], [], None
    real_stdout = sys.stdout
    try:
        exec(compile(source, "solution.py", "exec"), namespace)
        fn = namespace[meta["entry_point"]]
    except Exception as exc:
        failed = {"index": 0, "error": type(exc).__name__, "detail": _last_lines()}
        inputs = []
    for i, inp in enumerate(inputs):
        sys.stdout = devnull
        start = time.process_time()
        try:
            if mode == "candidate":
                signal.setitimer(signal.ITIMER_PROF, limits[i])
            out = fn(*copy.deepcopy(inp))
            signal.setitimer(signal.ITIMER_PROF, 0)
        except _TimeLimit:
            failed = {"index": i, "error": "Timeout", "detail": f"time limit of {limits[i]:.2f} s CPU exceeded "
                                                                 f"on input #{i}"}
            break
        except Exception as exc:
            signal.setitimer(signal.ITIMER_PROF, 0)
            failed = {"index": i, "error": type(exc).__name__, "detail": _last_lines()}
            break
        finally:
            sys.stdout = real_stdout
        times.append(time.process_time() - start)
        outputs.append(_channel.encode(out))
    guard.report({"outputs": outputs, "times": times, "failed": failed})
    if failed and failed["error"] == "Timeout":
        sys.stderr.write(failed["detail"] + "\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGXCPU)
        time.sleep(10)


def _last_lines(length=500):
    text = traceback.format_exc()
    return text if len(text) <= length else "..." + text[-length:]


def main():
    guard = _channel.Guard()
    with open("meta.json") as f:
        meta = json.load(f)
    sys.path.extend(meta.get("site_dirs", []))  # started with -S: installed packages (numpy) by path only
    with open("inputs.json") as f:
        inputs = json.load(f)
    run(sys.argv[1], meta, inputs, guard)


if __name__ == "__main__":
    main()
