"""HumanEval test harness; runs INSIDE the sandbox as ``python -I -S _he_harness.py [ENTRY_POINT]``, standard
library only, importing as little as possible (each import is paid by every graded program).

Beside it: ``program.py`` (the solution followed by the problem's test code). It takes the nonce (:class:`_channel.Guard`), runs
``program.py`` as ``__main__``, then, given an entry point and a test code that defines ``check``, calls
``check(<entry point>)`` itself with a wrapper that inspects every answer (test code without ``check``, such
as asserts on ``Solution()``, ran at the top level). Only when all of that returned does it write its report on fd 4, so an
early ``sys.exit(0)``, ``os._exit(0)`` or an exiting ``sys.excepthook`` leaves no report. The report names
answers whose type compares in Python code (``"suspicious"``) and replaced builtins; an exception from the
tests propagates as usual (traceback on stderr, exit status 1).
"""

import os
import sys

sys.path.insert(0, os.getcwd())  # -I leaves the script's directory off sys.path: _channel.py is beside it
import _channel  # noqa: E402
del sys.path[0]


def main():
    guard = _channel.Guard()
    with open("program.py") as f:
        source = f.read()
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    exec(compile(source, "program.py", "exec"), namespace)
    found = []
    entry_point = sys.argv[1] if len(sys.argv) > 1 else ""
    if entry_point and callable(namespace.get("check")):
        candidate = namespace[entry_point]

        def watched(*args, **kwargs):
            answer = candidate(*args, **kwargs)
            if not found:
                why = _channel.suspicious(answer)
                if why:
                    found.append(why)
            return answer

        watched.__name__, watched.__doc__ = getattr(candidate, "__name__", entry_point), candidate.__doc__
        namespace["check"](watched)
    guard.report({"done": True, "suspicious": found[0] if found else ""})


if __name__ == "__main__":
    main()
