"""Hostile verdicts: programs that try to be graded as passed without being right.

Each case is a wrong solution with some noise that must fail, and, where the noise leaves a right solution able
to finish its tests, the right solution with the same noise, which must pass. They cover issue 10's repros
(exit status as the verdict, forged HumanEval+ markers, LiveCodeBench answers read from the harness's frame,
the same through the evaluator in completion and chat mode, early exits in every HumanEval-Mul language) and
further attacks on the channel (writing to fd 4, a guessed nonce, closed fds, a killed parent, fork, replaced
builtins, an always-equal object).
"""

from __future__ import annotations

import gzip
import re
import json
from pathlib import Path

import pytest

from teeny_core.store import MemoryContext
from teeny_core.testing import answering_model
from teeny_bench import errors, toolchains
from teeny_bench.humaneval import (HumanEval, HumanEvalOptions, PlusGrader, file_id, grade_humaneval,
                                   load_plus_problems, load_problems)
from teeny_bench.livecodebench import LcbOptions, LcbProblem, grade_programs

MARKER_LINE = '@@teeny-plus@@ {"failed_index": null}'


@pytest.fixture(scope="module")
def truncate_number():
    """HumanEval/2: ``number % 1.0``; its tests compare with ``==`` and through ``abs(...)``."""
    return load_problems()[2]


@pytest.fixture(scope="module")
def has_close_elements():
    """HumanEval/0: every test is ``assert candidate(...) == True/False``."""
    return load_problems()[0]


RIGHT = "    return number % 1.0\n"
WRONG = "    return 0.5\n"  # right on the first test only

# name -> (noise added to the body, noise added at top level after the function, category of the wrong answer,
#          whether the right solution with the same noise passes)
HUMANEVAL_CASES = {
    "sys.exit(0) in the body": ("    import sys\n    sys.exit(0)\n", "", errors.EARLY_EXIT, False),
    "os._exit(0) in the body": ("    import os\n    os._exit(0)\n", "", errors.EARLY_EXIT, False),
    "raise SystemExit(0) at top level": ("", "raise SystemExit(0)\n", errors.EARLY_EXIT, False),
    "atexit os._exit(0)": ("", "import atexit, os\natexit.register(os._exit, 0)\n", errors.WRONG_ANSWER, True),
    "excepthook exits 0": ("", "import sys, os\nsys.excepthook = lambda *a: os._exit(0)\n", errors.WRONG_ANSWER,
                           True),
    "forged plus marker on fd 1": ("", f"print({MARKER_LINE!r})\n", errors.WRONG_ANSWER, True),
    "junk on fd 4": ("", "import os\ntry:\n    os.write(4, b'\\nx {\"failed\": null}\\n')\nexcept OSError:\n"
                         "    pass\n", errors.WRONG_ANSWER, True),
    "guessed nonce and exit": ("", "import os\ntry:\n    os.write(4, b'\\n' + b'0' * 32 + b' {\"failed\": null}\\n')\n"
                                   "except OSError:\n    pass\nos._exit(0)\n", errors.EARLY_EXIT, False),
    "fd 3 re-read": ("", "import os\ntry:\n    os.read(3, 64)\nexcept OSError:\n    pass\n", errors.WRONG_ANSWER,
                     True),
    "closed fd 4 and exit": ("", "import os\ntry:\n    os.close(4)\nexcept OSError:\n    pass\nos._exit(0)\n",
                             errors.EARLY_EXIT, False),
    "killed parent": ("", "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n", None, False),
    "fork, parent exits 0": ("", "import os\nif os.fork():\n    os._exit(0)\n", errors.EARLY_EXIT, False),
    # builtins replaced in the solution's process: the checks, in another process, never see them
    "builtins.abs replaced": ("", "import builtins\nbuiltins.abs = lambda x: 0\n", errors.WRONG_ANSWER, True),
    "builtins the checks use replaced": ("", "import builtins\nbuiltins.callable = lambda x: False\n"
                                             "builtins.sorted = builtins.dict = lambda *a, **k: []\n",
                                         errors.WRONG_ANSWER, True),
}


@pytest.mark.parametrize("name", list(HUMANEVAL_CASES))
def test_humaneval_noise(truncate_number, name):
    body, top, category, right_passes = HUMANEVAL_CASES[name]
    p = truncate_number
    wrong, right = grade_humaneval([(p, body + WRONG + "\n\n" + top), (p, body + RIGHT + "\n\n" + top)],
                                   timeout=5)
    assert not wrong["passed"], wrong
    if category:
        assert wrong["category"] == category, wrong
    assert right["passed"] is right_passes, right


def test_humaneval_issue_repro(truncate_number):
    """The issue's one-liner: a body that only calls sys.exit(0)."""
    (outcome,) = grade_humaneval([(load_problems()[0], "    import sys\n    sys.exit(0)\n")], timeout=3)
    assert not outcome["passed"] and outcome["category"] == errors.EARLY_EXIT


def test_always_equal_object_is_rejected(has_close_elements):
    cheat = "    class Yes:\n        def __eq__(self, other):\n            return True\n    return Yes()\n"
    subclass = "    class B(int):\n        def __eq__(self, other):\n            return True\n    return B(0)\n"
    honest = "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n"
    p = has_close_elements
    cheat_out, sub_out, honest_out = grade_humaneval([(p, cheat), (p, subclass), (p, honest)], timeout=5)
    assert not cheat_out["passed"] and cheat_out["category"] == errors.WRONG_ANSWER
    assert "not a value of builtin types" in cheat_out["detail"], cheat_out
    # the int subclass arrives as the plain int 0, which is not True
    assert not sub_out["passed"] and sub_out["category"] == errors.WRONG_ANSWER, sub_out
    assert sub_out["exception"] == "AssertionError", sub_out
    assert honest_out["passed"], honest_out


# -- through the evaluator -----------------------------------------------------------------------------------

def _canned(answer: str, chat: bool):
    """A model that gives the same answer to every prompt."""
    return answering_model(lambda prompt: answer, chat=chat)


def _run(answer, chat, tmp_path):
    ctx = MemoryContext(cache_dir=tmp_path, limit=1)
    model = _canned(answer, chat)
    HumanEval().evaluate(model, HumanEvalOptions(prompt_style="chat" if chat else "completion"), ctx)
    return ctx.records[0]


def test_evaluator_completion_mode_top_level_exit(tmp_path):
    record = _run("    return False\n\n__import__('os')._exit(0)\n", False, tmp_path)
    assert "_exit" in record["completion"]  # it survives truncate_at_stop
    assert not record["passed"] and record["category"] == errors.EARLY_EXIT


def test_evaluator_chat_mode_assignment_exit(tmp_path):
    answer = ("```python\ndef has_close_elements(numbers, threshold):\n    return False\n\n"
              "_ = __import__('os')._exit(0)\n```")
    record = _run(answer, True, tmp_path)
    assert "_exit" in record["completion"]  # it survives keep_definitions
    assert not record["passed"] and record["category"] == errors.EARLY_EXIT


# -- HumanEval+ ----------------------------------------------------------------------------------------------

DOUBLE = {"task_id": "Plus/0", "entry_point": "double", "atol": 0, "test": "", "contract": "",
          "prompt": 'def double(x: int) -> int:\n    """2 * x."""\n', "canonical_solution": "    return 2 * x\n",
          "base_input": [[1], [2]], "plus_input": [[10], [-3]]}


@pytest.fixture
def plus(tmp_path):
    path = tmp_path / "HumanEvalPlus.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps(DOUBLE) + "\n")
    problems = load_plus_problems(path)
    return problems[0], PlusGrader(problems, file_id(path), None, min_time_limit=0.5)


PLUS_CASES = {
    "forged marker then exit 0": (f"import os\nos.write(1, b{MARKER_LINE + chr(10)!r})\nos._exit(0)\n",
                                  errors.EARLY_EXIT, False),
    "forged marker from excepthook": ("import sys, os\n"
                                      f"sys.excepthook = lambda *a: (os.write(1, b{MARKER_LINE + chr(10)!r}), "
                                      "os._exit(0))\n"
                                      "raise KeyboardInterrupt\n", errors.RUNTIME_ERROR, False),
    "forged marker, tests continue": (f"print({MARKER_LINE!r})\n", errors.WRONG_ANSWER, True),
    "junk on fd 4": ("import os\ntry:\n    os.write(4, b'\\nx {\"outputs\": []}\\n')\nexcept OSError:\n    pass\n",
                     errors.WRONG_ANSWER, True),
    "sys.exit(0) at top level": ("import sys\nsys.exit(0)\n", errors.EARLY_EXIT, False),
}


@pytest.mark.parametrize("name", list(PLUS_CASES))
def test_humaneval_plus_noise(plus, name):
    problem, grader = plus
    top, category, right_passes = PLUS_CASES[name]
    wrong, right = grader.grade([(problem, "    return x + 2\n\n\n" + top), (problem, "    return 2 * x\n\n\n" + top)])
    assert not wrong["passed"] and not wrong["passed_base"], wrong
    assert wrong["category"] == category, wrong
    assert right["passed"] is right_passes and right["passed_base"] is right_passes, right


def test_humaneval_plus_always_equal_object(plus):
    problem, grader = plus
    cheat = "    class Yes(int):\n        def __eq__(self, other):\n            return True\n    return Yes(0)\n"
    (outcome,) = grader.grade([(problem, cheat)])
    assert not outcome["passed"] and outcome["category"] == errors.WRONG_ANSWER and outcome["failed_input"] == 0


# -- LiveCodeBench -------------------------------------------------------------------------------------------

def _lcb(mode: str) -> LcbProblem:
    if mode == "stdin":
        tests = [{"input": "3\n", "output": "6\n", "testtype": "stdin"},
                 {"input": "5\n", "output": "10\n", "testtype": "stdin"}]
        return LcbProblem("q1", "double", "Print 2n.", "atcoder", "c1", None, "easy", "", None, tests)
    tests = [{"input": "3", "output": "6", "testtype": "functional"},
             {"input": "5", "output": "10", "testtype": "functional"}]
    return LcbProblem("q2", "double", "Return 2n.", "leetcode", "c1", None, "easy",
                      "class Solution:\n    def double(self, n: int) -> int:\n        ", "double", tests)


LCB_CASES = [
    ("stdin", "import sys\nsys.stdout.write(sys._getframe(1).f_locals['test']['output'])\n",
     "print(2 * int(input()))\n"),
    ("functional", "import sys\nclass Solution:\n    def double(self, n):\n"
                   "        return sys._getframe(1).f_locals['expected']\n",
     "class Solution:\n    def double(self, n):\n        return 2 * n\n"),
    ("functional", "class Yes(int):\n    def __eq__(self, other):\n        return True\n"
                   "class Solution:\n    def double(self, n):\n        return Yes(0)\n",
     "class Solution:\n    def double(self, n):\n        return 2 * n\n"),
    ("stdin", "import os\ntry:\n    os.write(4, b'\\nx {\"results\": []}\\n')\nexcept OSError:\n    pass\nprint(0)\n",
     "import os\ntry:\n    os.write(4, b'\\nx {\"results\": []}\\n')\nexcept OSError:\n    pass\n"
     "print(2 * int(input()))\n"),
]


@pytest.mark.parametrize("mode,wrong,right", LCB_CASES)
def test_livecodebench_cannot_read_or_fake_the_expected_output(mode, wrong, right):
    problem = _lcb(mode)
    wrong_verdict, right_verdict = grade_programs([problem, problem], [wrong, right], LcbOptions(timeout=2.0))
    assert wrong_verdict["verdict"] != "passed", wrong_verdict
    assert right_verdict["verdict"] == "passed", right_verdict


# -- HumanEval-Mul: an early exit 0 in every language ---------------------------------------------------------

MUL_DATA = Path(__file__).resolve().parent / "data" / "humaneval-mul"
EARLY_EXIT_BODIES = {  # HumanEval 53 (add): exit 0 before returning anything
    "python": "    import sys\n    sys.exit(0)\n",
    "java": "        System.exit(0);\n        return 0;\n",
    "cpp": "    exit(0);\n",
    "cs": "        System.Environment.Exit(0);\n        return 0;\n",
    "js": "  process.exit(0);\n}\n",
    "ts": "  require('process').exit(0);\n  return 0;\n}\n",
    "php": "    exit(0);\n}\n",
    "sh": "    echo 0\n}\ntrap 'exit 0' EXIT\nunused() {\n    :\n",  # `exit` in $(...) only ends a subshell
}


@pytest.mark.parametrize("language", toolchains.LANGUAGES)
def test_humaneval_mul_early_exit_fails(language):
    from teeny_bench.multipl_e import load_problems as load_mul, run_programs

    if not toolchains.detect(language).available:
        pytest.skip(f"{language} toolchain not installed")
    problem = next(p for p in load_mul(str(MUL_DATA), [language])[language] if p.problem == 53)
    (outcome,) = run_programs([(problem, EARLY_EXIT_BODIES[language])], timeout=20)
    # Bash's recorded tests no longer fail under `set -e`, so the EXIT trap only runs after the report: the
    # answers it printed (0) are then compared, and are wrong
    category = errors.WRONG_ANSWER if language == "sh" else errors.EARLY_EXIT
    assert not outcome["passed"] and outcome["category"] == category, outcome


# -- issue 20: HumanEval cheats that need no nonce -------------------------------------------------------------
# The checks run in a process the solution never reaches; answers come back as plain builtin values.

ALWAYS_TRUE_EQ = {  # an int subclass whose __eq__ is true whatever it is compared with, in ways that are not a
    # plain Python function on the class (what the former in-process check looked for)
    "C-level int.__ne__": "    class Y(int):\n        __eq__ = int.__ne__\n"
                          "    return Y(not any(abs(a - b) < threshold for i, a in enumerate(numbers) "
                          "for b in numbers[i + 1:]))\n",
    "a callable instance": "    class T:\n        def __call__(self, *a):\n            return True\n"
                           "    class Y(int):\n        __eq__ = T()\n    return Y(0)\n",
    "functools.partial": "    import functools\n    class Y(int):\n"
                         "        __eq__ = functools.partial(lambda *a: True)\n    return Y(0)\n",
    "lru_cache method": "    import functools\n    class Y(int):\n        @functools.lru_cache\n"
                        "        def __eq__(self, other):\n            return True\n        __hash__ = int.__hash__\n"
                        "    return Y(0)\n",
    "hidden behind a metaclass": "    class M(type):\n        def __getattribute__(cls, name):\n"
                                 "            if name == '__eq__':\n                return int.__eq__\n"
                                 "            return type.__getattribute__(cls, name)\n"
                                 "    class Y(int, metaclass=M):\n        def __eq__(self, other):\n"
                                 "            return True\n        __hash__ = int.__hash__\n    return Y(0)\n",
}


FLOAT_SUBCLASSES = {
    "__sub__ returns 0": "    class F(float):\n        def __sub__(self, other):\n            return 0.0\n"
                         "    return F(0.5)\n",
    "__abs__ returns 0": "    class F(float):\n        def __sub__(self, other):\n"
                         "            return F(float(self) - other)\n        def __abs__(self):\n"
                         "            return 0.0\n    return F(0.5)\n",
}

DISGUISED = {**{name: ("has_close_elements", body) for name, body in ALWAYS_TRUE_EQ.items()},
             **{name: ("truncate_number", body) for name, body in FLOAT_SUBCLASSES.items()}}


@pytest.mark.parametrize("name", list(DISGUISED))
def test_answers_in_disguise_do_not_reach_the_checks(request, name):
    """An always-true comparison in disguise, or a float subclass whose arithmetic lies, is a wrong answer."""
    problem, body = DISGUISED[name]
    (outcome,) = grade_humaneval([(request.getfixturevalue(problem), body)], timeout=5)
    assert not outcome["passed"] and outcome["category"] == errors.WRONG_ANSWER, outcome


SELF_RESTORING_CALLABLE = ("import builtins\n_real = builtins.callable\n"
                           "def _fake(x):\n    builtins.callable = _real\n    return False\n"
                           "builtins.callable = _fake\n")


def test_self_restoring_builtin_cannot_skip_check(truncate_number):
    wrong, right = grade_humaneval([(truncate_number, WRONG + "\n\n" + SELF_RESTORING_CALLABLE),
                                    (truncate_number, RIGHT + "\n\n" + SELF_RESTORING_CALLABLE)], timeout=5)
    assert not wrong["passed"] and wrong["category"] == errors.WRONG_ANSWER, wrong
    assert right["passed"], right


@pytest.fixture(scope="module")
def find_zero():
    """HumanEval/32: its test calls the prompt's ``poly``, ``math.fabs`` and ``random.Random(42)``."""
    return load_problems()[32]


FIND_ZERO_CHEATS = {  # body, top-level code after it
    "top-level poly redefined": ("    return 0.0\n", "def poly(xs, x):\n    return 0.0\n"),
    "math.fabs patched": ("    return 0.0\n", "import math\nmath.fabs = lambda x: 0.0\n"),
    "fake random.Random": ("    return -1.0\n",  # all-ones coefficients of even length have the root -1
                           "import random\nclass _R:\n    def __init__(self, *a):\n        pass\n"
                           "    def randint(self, a, b):\n        return 1\nrandom.Random = _R\n"),
}


@pytest.mark.parametrize("name", list(FIND_ZERO_CHEATS))
def test_patched_helpers_and_modules_do_not_reach_the_checks(find_zero, name):
    body, top = FIND_ZERO_CHEATS[name]
    (outcome,) = grade_humaneval([(find_zero, body + "\n\n" + top)], timeout=10)
    assert not outcome["passed"] and outcome["category"] == errors.WRONG_ANSWER, outcome


def test_find_zero_canonical_still_passes(find_zero):
    (outcome,) = grade_humaneval([(find_zero, find_zero.canonical_solution)], timeout=10)
    assert outcome["passed"], outcome


def _one_problem_file(problem, tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"task_id": problem.task_id, "prompt": problem.prompt, "test": problem.test,
                                "entry_point": problem.entry_point,
                                "canonical_solution": problem.canonical_solution}) + "\n")
    return path


@pytest.mark.parametrize("answer", [
    "```python\nimport math\n\ndef poly(xs, x):\n    return 0.0\n\ndef find_zero(xs):\n    return 0.0\n```",
    "```python\nimport builtins\n_real = builtins.callable\n\ndef _fake(x):\n    builtins.callable = _real\n"
    "    return False\n\nbuiltins.callable = _fake\n\ndef find_zero(xs):\n    return 0.0\n```",
])
def test_evaluator_chat_answers_that_patch_the_checks(find_zero, answer, tmp_path):
    ctx = MemoryContext(cache_dir=tmp_path)
    options = HumanEvalOptions(prompt_style="chat", path=str(_one_problem_file(find_zero, tmp_path)))
    HumanEval().evaluate(_canned(answer, True), options, ctx)
    (record,) = ctx.records
    assert record["passed"] is False and record["category"] == errors.WRONG_ANSWER, record


def test_a_forked_impostor_is_an_early_exit(truncate_number):
    """The solution process forks and exits; the child, holding the pipes, answers (outside the CPU clock)."""
    top = "import os\nif os.fork():\n    os._exit(0)\n"
    (outcome,) = grade_humaneval([(truncate_number, RIGHT + "\n\n" + top)], timeout=5)
    assert not outcome["passed"] and outcome["category"] == errors.EARLY_EXIT, outcome


def test_reading_the_checkers_memory_or_fds_through_proc_fails(truncate_number):
    """The checker is not dumpable: its /proc/<pid>/mem, environ and fd/4 are closed to the solution."""
    top = ("import os\nopened = []\nfor path in ('/proc/%d/fd/4' % os.getppid(), '/proc/%d/mem' % os.getppid(),\n"
           "             '/proc/%d/environ' % os.getppid()):\n    try:\n        os.close(os.open(path, os.O_RDONLY))\n"
           "        opened.append(path)\n    except OSError:\n        pass\nassert not opened, opened\n")
    (outcome,) = grade_humaneval([(truncate_number, RIGHT + "\n\n" + top)], timeout=5)
    assert outcome["passed"], outcome


def test_solution_exceptions_keep_their_category(truncate_number):
    """A builtin exception type crosses back by name (a test's ``except ValueError`` still works); a solution
    that catches the harness's own stop or raises BaseException still fails."""
    bodies = ["    raise ValueError('no')\n", "    raise KeyboardInterrupt\n", "    return undefined_name\n",
              "    class Mine(Exception):\n        pass\n    raise Mine()\n"]
    outcomes = grade_humaneval([(truncate_number, b) for b in bodies], timeout=5)
    assert [o["category"] for o in outcomes] == [errors.RUNTIME_ERROR, errors.RUNTIME_ERROR, errors.NAME_ERROR,
                                                 errors.RUNTIME_ERROR], outcomes
    assert [o["exception"] for o in outcomes] == ["ValueError", "KeyboardInterrupt", "NameError", "Mine"]


def test_a_huge_or_deep_answer_is_a_failed_sample(truncate_number):
    bodies = ["    return 'x' * (40 << 20)\n",
              "    v = []\n    for _ in range(100000):\n        v = [v]\n    return v\n",
              "    return 10 ** 100000\n"]
    outcomes = grade_humaneval([(truncate_number, b) for b in bodies], timeout=10)
    assert not any(o["passed"] for o in outcomes), outcomes
    assert all(o["category"] in (errors.WRONG_ANSWER, errors.RUNTIME_ERROR) for o in outcomes), outcomes


def test_an_endless_solution_is_killed_from_outside(truncate_number):
    """The per-run CPU budget is read on the solution process's clock by the checker, which kills it."""
    body = "    import signal\n    signal.signal(signal.SIGXCPU, signal.SIG_IGN)\n    while True:\n        pass\n"
    (outcome,) = grade_humaneval([(truncate_number, body)], timeout=1)
    assert not outcome["passed"] and outcome["category"] == errors.TIMEOUT, outcome


# -- issue 20: HumanEval-Mul's Python column --------------------------------------------------------------------

MUL_PYTHON_CHEATS = {
    "always-equal object": "    class Yes:\n        def __eq__(self, other):\n            return True\n"
                           "    return Yes()\n",
    "atexit writes the nonce's report": "    return 0\n\nimport atexit, os\natexit.register(lambda: os.write(4, "
                                        "('\\n' + __teeny_nonce + ' {\"done\": true}\\n').encode()))\n",
    "the body writes the report": "    import os\n    os.write(4, ('\\n' + globals()['__teeny_nonce'] + "
                                  "' {\"done\": true}\\n').encode())\n    os._exit(0)\n",
}


RIGHT_ADD = {"python": "    return x + y\n", "js": "  return x + y;\n}\n", "ts": "  return x + y;\n}\n",
             "php": "    return $x + $y;\n}\n", "sh": "    echo $(( $1 + $2 ))\n"}


def _cheat_fails(language: str, cheat: str) -> None:
    """HumanEval 53 (add) in ``language``: the cheating completion fails, the honest one passes."""
    from teeny_bench.multipl_e import load_problems as load_mul, run_programs

    if not toolchains.detect(language).available:
        pytest.skip(f"{language} toolchain not installed")
    problem = next(p for p in load_mul(str(MUL_DATA), [language])[language] if p.problem == 53)
    wrong, right = run_programs([(problem, cheat), (problem, RIGHT_ADD[language])], timeout=20)
    assert not wrong["passed"], wrong
    assert right["passed"], right


# -- issue 20: the CPU limit cannot be switched off from inside ----------------------------------------------------

SLOW_DOUBLE = ("    import time\n    start = time.process_time()\n    while time.process_time() - start < 0.8:\n"
               "        pass\n    return 2 * x\n")
TIMER_CHEATS = {
    "setitimer replaced": "import signal\nsignal.setitimer = lambda *a, **k: (0.0, 0.0)\n",
    "SIGPROF ignored": "import signal\nsignal.signal(signal.SIGPROF, signal.SIG_IGN)\n",
    "SIGXCPU ignored": "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\n",
}


@pytest.mark.parametrize("name", list(TIMER_CHEATS))
def test_humaneval_plus_time_limit_holds(plus, name):
    problem, grader = plus  # every input gets max(0.5 s, 4x the reference's time): 0.8 s is over it
    (outcome,) = grader.grade([(problem, SLOW_DOUBLE + "\n\n" + TIMER_CHEATS[name])])
    assert not outcome["passed"] and outcome["category"] == errors.TIMEOUT, outcome
    assert outcome["failed_input"] == 0, outcome


def test_humaneval_plus_time_limit_counts_work_handed_to_a_child(plus):
    """The solution process waits, idle, while a forked child burns the CPU: the sandbox's PID namespace is
    counted once the call is over its limit in wall time."""
    problem, grader = plus
    body = ("    import os, time\n    r, w = os.pipe()\n    if os.fork() == 0:\n        start = time.process_time()\n"
            "        while time.process_time() - start < 3:\n            pass\n        os.write(w, b'x')\n"
            "        os._exit(0)\n    os.read(r, 1)\n    return 2 * x\n")
    (outcome,) = grader.grade([(problem, body)])
    assert not outcome["passed"] and outcome["category"] == errors.TIMEOUT, outcome
    assert outcome["failed_input"] == 0 and "0.50 s CPU" in outcome["detail"], outcome


# -- issue 20: the parent parses what it is told defensively ------------------------------------------------------

def _result(status="ok"):
    from teeny_bench.sandbox import Result

    return Result(status=status, returncode=0, stdout="", stderr="", seconds=0.1, network_isolated=True)


FORGED_PLUS_REPORTS = {
    "outputs is 5": {"outputs": 5, "times": [], "failed": None},
    "outputs [5, ...]": {"outputs": [5, 5, 5, 5], "times": [0, 0, 0, 0], "failed": None},
    "no outputs": {"times": [], "failed": None},
    "returned ['F', 'abc']": {"outputs": [{"v": ["F", "abc"]}] * 4, "times": [0] * 4, "failed": None},
    "too many outputs": {"outputs": [{"v": ["I", "2"]}] * 9, "times": [0] * 9, "failed": None},
    "failed index out of range": {"outputs": [], "times": [], "failed": {"index": 99, "error": "X", "detail": ""}},
    "failed is 7": {"outputs": [], "times": [], "failed": 7},
    "times are strings": {"outputs": [{"v": ["I", "2"]}], "times": ["x"], "failed": None},
}


@pytest.mark.parametrize("name", list(FORGED_PLUS_REPORTS))
def test_humaneval_plus_forged_reports_are_failed_samples(plus, name):
    problem, grader = plus
    grader._reference[problem.task_id] = {"outputs": [{"v": ["I", str(2 * x)]} for x in (1, 2, 10, -3)],
                                          "times": [0.0] * 4}
    outcome = grader._outcome(problem, _result(), FORGED_PLUS_REPORTS[name])
    assert not outcome["passed"] and not outcome["passed_base"], outcome
    assert outcome["category"] == errors.RUNTIME_ERROR and "malformed report" in outcome["detail"], outcome


@pytest.mark.parametrize("report", [{"failed": 7}, {"failed": {"error": 5, "detail": ""}}, {"done": True}, {}])
def test_humaneval_forged_reports_are_failed_samples(report):
    category, detail = errors.classify_harness(_result(), report)
    assert category == errors.RUNTIME_ERROR and "malformed report" in detail


FORGED_LCB_REPORTS = {
    "results is 7": {"results": 7},
    "no results": {},
    "results [5]": {"results": [5]},
    "returned ['F', 'abc']": {"results": [{"returned": ["F", "abc"]}]},
    "returned {'v': ['F', 'abc']}": {"results": [{"returned": {"v": ["F", "abc"]}}]},
    "a printed number": {"results": [{"printed": 6}]},
    "compile_error is 3": {"compile_error": 3},
    "too many results": {"results": [{"printed": "6"}] * 5},
}


@pytest.mark.parametrize("name", list(FORGED_LCB_REPORTS))
def test_livecodebench_forged_reports_are_failed_samples(name):
    from teeny_bench.livecodebench import verdict_from_report

    mode = "functional" if "returned" in name else "stdin"
    verdict = verdict_from_report(_lcb(mode), _result(), FORGED_LCB_REPORTS[name])
    assert verdict["verdict"] == "runtime_error" and "malformed report" in verdict["detail"], verdict


@pytest.mark.parametrize("printed", ["sNaN", "NaN", "Infinity", "-sNaN 3", "9" * 5000, "1e999999999999"])
def test_livecodebench_odd_numbers_are_wrong_answers(printed):
    problem = _lcb("stdin")
    (verdict,) = grade_programs([problem], [f"print({printed!r})\n"], LcbOptions(timeout=2.0))
    assert verdict["verdict"] == "wrong_answer", verdict


def test_livecodebench_sandbox_answers_that_do_not_decode_are_failed_samples():
    problem = _lcb("functional")
    deep = "class Solution:\n    def double(self, n):\n        v = []\n        for _ in range(10000):\n" \
           "            v = [v]\n        return v\n"
    huge = "class Solution:\n    def double(self, n):\n        return 10 ** 100000\n"
    verdicts = grade_programs([problem, problem], [deep, huge], LcbOptions(timeout=5.0))
    assert [v["verdict"] for v in verdicts] == ["wrong_answer", "wrong_answer"], verdicts


# -- issue 20: HumanEval-Mul JavaScript and TypeScript: the expected values stay in the parent --------------------

JS_CHEATS = {  # HumanEval 53 (add); each answers 0, which is wrong
    "assert.deepEqual replaced": ("js", "  return 0;\n}\nrequire('node:assert').deepEqual = () => {};\n"),
    "assert.deepEqual replaced (TypeScript)": ("ts", "  return 0;\n}\nrequire('node:assert').deepEqual = () => {};\n"),
    "the exit handler writes the report": ("js", "  process.on('exit', () => require('fs').writeSync(4, '\\n' + "
                                                 "__teeny_nonce + ' {\"done\": true}\\n'));\n  process.exit(0);\n"
                                                 "}\n"),
    "forged answers for every test": ("js", "  require('fs').writeSync(4, '\\n' + __teeny_nonce + ' ' + "
                                            "JSON.stringify({answers: Array(9).fill('0')}) + '\\n');\n"
                                            "  process.exit(0);\n}\n"),
}


def test_humaneval_mul_javascript_expected_values_are_not_in_the_program():
    from teeny_bench.multipl_e import assemble_recorded, load_problems as load_mul, recorded_js_tests

    problem = next(p for p in load_mul(str(MUL_DATA), ["js"])["js"] if p.problem == 53)
    tests, expected = recorded_js_tests(problem.tests)
    program = assemble_recorded(problem, "  return x + y;\n}\n", tests)
    assert expected[:3] == [1, 1, 5] and "assert.deepEqual" not in program
    assert "__teeny_answers.push(__teeny_json(candidate(0, 1)));" in program


# -- issue 20: HumanEval-Mul PHP: the expected values stay in the parent, compared as PHP's !== does ---------------

PHP_SOLUTIONS = {  # problem: (right body, a body whose answers differ only in type or order)
    0: ("    foreach ($numbers as $i => $a) { foreach ($numbers as $j => $b) {\n"
        "        if ($i != $j && abs($a - $b) < $threshold) { return true; } } }\n    return false;\n}\n",
        "    foreach ($numbers as $i => $a) { foreach ($numbers as $j => $b) {\n"
        "        if ($i != $j && abs($a - $b) < $threshold) { return 1; } } }\n    return 0;\n}\n"),
    2: ("    return $number - floor($number);\n}\n", "    return (string)($number - floor($number));\n}\n"),
    27: ("    $out = '';\n    foreach (str_split($string) as $c) {\n"
         "        $out .= ctype_upper($c) ? strtolower($c) : strtoupper($c);\n    }\n    return $out;\n}\n",
         "    return strtoupper($string);\n}\n"),
    111: ("    $count = array();\n    foreach (explode(' ', $test) as $w) { if ($w !== '') {\n"
          "        $count[$w] = ($count[$w] ?? 0) + 1; } }\n    if (!$count) { return array(); }\n"
          "    $top = max($count);\n    return array_filter($count, fn($n) => $n == $top);\n}\n",
          "    $count = array();\n    foreach (explode(' ', $test) as $w) { if ($w !== '') {\n"
          "        $count[$w] = ($count[$w] ?? 0) + 1; } }\n    if (!$count) { return array(); }\n"
          "    $top = max($count);\n    $out = array_filter($count, fn($n) => $n == $top);\n"
          "    krsort($out);\n    return $out;\n}\n"),
}


def test_humaneval_mul_php_answers_compared_as_identical():
    """Right bodies pass; answers equal only loosely (1 for true, "0.5" for 0.5, keys in another order) fail,
    as PHP's !== makes them fail."""
    from teeny_bench.multipl_e import load_problems as load_mul, run_programs

    if not toolchains.detect("php").available:
        pytest.skip("php toolchain not installed")
    problems = {p.problem: p for p in load_mul(str(MUL_DATA), ["php"])["php"]}
    items = [(problems[n], body) for n, pair in PHP_SOLUTIONS.items() for body in pair]
    outcomes = run_programs(items, timeout=20)
    for (problem, _), outcome, right in zip(items, outcomes, [True, False] * len(PHP_SOLUTIONS)):
        assert outcome["passed"] is right, (problem.task_id, outcome)
        if not right:
            assert outcome["category"] == errors.WRONG_ANSWER, (problem.task_id, outcome)


PHP_CHEATS = {  # HumanEval 53 (add)
    "a shutdown function writes the report": ("    register_shutdown_function(function () { file_put_contents("
                                              "\"php://fd/4\", \"\\n\" . $GLOBALS['__teeny_nonce'] . "
                                              "\" {\\\"done\\\": true}\\n\"); });\n    exit(0);\n}\n"),
    "forged answers": ("    file_put_contents(\"php://fd/4\", \"\\n\" . $GLOBALS['__teeny_nonce'] . \" \" . "
                       "json_encode([\"answers\" => array_fill(0, 9, \"0\")]) . \"\\n\");\n    exit(0);\n}\n"),
}


def test_php_literals_read_as_json_encode_writes_them():
    from teeny_bench.multipl_e import _identical, _php_json, _php_literal

    assert _php_literal('array(1, 2.0, "a\\nb", true, NULL)') == [1, 2.0, "a\nb", True, None]
    assert _identical(_php_literal('array("a" => 2, "b" => 2)'), _php_json('{"a":2,"b":2}'))
    assert not _identical(_php_literal('array("a" => 2, "b" => 2)'), _php_json('{"b":2,"a":2}'))
    assert _identical(_php_literal('array(1 => "x", 0 => "y")'), _php_json('{"1":"x","0":"y"}'))
    assert not _identical(_php_literal("0.5"), _php_json('"0.5"')) and not _identical(1, 1.0)


SH_CHEATS = {  # HumanEval 53 (add): each prints 0, which is wrong
    "an EXIT trap writes the report": ("    echo 0\n}\ntrap 'printf \"\\n%s {\\\"done\\\": true}\\n\" "
                                       "\"$__teeny_nonce\" >&4; exit 0' EXIT\nunused() {\n    :\n"),
    "the body writes forged answers": ("    printf '\\n%s {\"answers\": [\"30\", \"30\", \"30\", \"30\", \"30\", "
                                       "\"30\"]}\\n' \"$__teeny_nonce\" >&4\n    echo 0\n"),
}


MUL_CHEATS = {**{name: ("python", code) for name, code in MUL_PYTHON_CHEATS.items()}, **JS_CHEATS,
              **{name: ("php", code) for name, code in PHP_CHEATS.items()},
              **{name: ("sh", code) for name, code in SH_CHEATS.items()}}


@pytest.mark.parametrize("name", list(MUL_CHEATS))
def test_humaneval_mul_cheats_fail(name):
    """Each language's cheats (issue 20): the cheating completion of HumanEval 53 fails, the honest one passes."""
    _cheat_fails(*MUL_CHEATS[name])


def test_bash_tests_compare_what_the_call_printed():
    from teeny_bench.multipl_e import _sh_string, load_problems as load_mul, recorded_sh_tests

    problem = next(p for p in load_mul(str(MUL_DATA), ["sh"])["sh"] if p.problem == 53)
    tests, expected = recorded_sh_tests(problem.tests)
    assert expected[:2] == ["1", "1"] and "[[" not in tests
    assert _sh_string('"a\\"b"') == 'a"b' and _sh_string("'x y'") == "x y"
    assert _sh_string('"$HOME"') is None and _sh_string("unquoted*") is None  # an expansion, a pattern


def test_files_planted_for_the_checker_are_not_imported(find_zero):
    """The solution shares the working directory: a ``random.py`` there (all-ones coefficients, whose root is
    -1) must not be what the checker's ``import random`` finds, and the checker's files are gone."""
    top = ("import os\nassert not any(os.path.exists(f) for f in ('test.py', 'job.json', 'inputs.json'))\n"
           "for name in ('random', 'math', 'copy', 'traceback'):\n"
           "    with open(name + '.py', 'w') as f:\n"
           "        f.write('class Random:\\n    def __init__(self, *a):\\n        pass\\n'\n"
           "                '    def randint(self, a, b):\\n        return 1\\nfabs = lambda x: 0.0\\n')\n")
    (outcome,) = grade_humaneval([(find_zero, "    return -1.0\n\n\n" + top)], timeout=10)
    assert not outcome["passed"] and outcome["category"] == errors.WRONG_ANSWER, outcome


# -- a fresh hostile pass: problem files, solutions and outputs the graders must survive -------------------------

GOOD_RECORD = {"task_id": "T/0", "prompt": "def f(x):\n    \"\"\"Double x.\"\"\"\n", "entry_point": "f",
               "test": "def check(c):\n    assert c(2) == 4\n", "canonical_solution": "    return 2 * x\n"}
HOSTILE_PROBLEM_LINES = {  # one line of a problem file -> what the one-line error names
    "nested 100,000 deep": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "a JSON list": ("[1, 2]", "is a JSON list; expected an object"),
    "a JSON number": ("5", "is a JSON int; expected an object"),
    "prompt 5": (json.dumps({**GOOD_RECORD, "prompt": 5}), "prompt of type int; expected a string"),
    "test 5": (json.dumps({**GOOD_RECORD, "test": 5}), "test of type int"),
    "canonical_solution 5": (json.dumps({**GOOD_RECORD, "canonical_solution": 5}), "canonical_solution of type int"),
    "task_id a dict": (json.dumps({**GOOD_RECORD, "task_id": {"a": 1}}), "task_id of type dict"),
    "entry_point 5": (json.dumps({**GOOD_RECORD, "entry_point": 5}), "entry_point of type int"),
    "entry_point code": (json.dumps({**GOOD_RECORD, "entry_point": "__import__('os')"}),
                         "expected the name of a function or class"),
    "preamble a list": (json.dumps({**GOOD_RECORD, "preamble": [1]}), "preamble of type list"),
    "solutions 5": (json.dumps({**GOOD_RECORD, "solutions": 5}), "solutions that are not a string or a list"),
    "solutions [5]": (json.dumps({**GOOD_RECORD, "solutions": [5]}), "solutions that are not a string or a list"),
    "atol 'abc'": (json.dumps({**GOOD_RECORD, "atol": "abc"}), "atol 'abc'; expected a finite number"),
    "atol [1]": (json.dumps({**GOOD_RECORD, "atol": [1]}), "atol [1]"),
    "atol 1e400": (json.dumps({**GOOD_RECORD, "atol": 1e400}), "atol inf"),
    "atol -1": (json.dumps({**GOOD_RECORD, "atol": -1}), "atol -1"),
}


@pytest.mark.parametrize("name", list(HOSTILE_PROBLEM_LINES))
def test_hostile_problem_files_are_one_line_errors(name, tmp_path):
    """Each of these raised TypeError, ValueError or RecursionError out of `teeny bench check` (a traceback)."""
    from teeny_core import TeenyError

    line, named = HOSTILE_PROBLEM_LINES[name]
    path = tmp_path / "mine.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(TeenyError, match=re.escape(named)):
        load_problems(path)


def test_bench_check_on_a_hostile_problem_file_prints_one_error_line(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "mine.jsonl"
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    run = subprocess.run([sys.executable, "-m", "teeny_core.cli", "bench", "check", "humaneval", "--path",
                          str(path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, (run.returncode, run.stderr[-500:])
    assert run.stderr.startswith("Error: ") and len(run.stderr.strip().splitlines()) == 1, run.stderr[-500:]


def test_a_solution_holding_a_lone_surrogate_fails_alone(truncate_number):
    """`'\\ud800'` in a solution (JSON lets a samples file or a problem file carry one) made every grader raise
    UnicodeEncodeError while writing the sandbox's files: the whole batch was lost."""
    p = truncate_number
    cheat, honest = grade_humaneval([(p, "    return '\ud800'\n"), (p, RIGHT)], timeout=5)
    assert not cheat["passed"], cheat
    assert honest["passed"], honest
    problem = _lcb("stdin")
    lcb_cheat, lcb_honest = grade_programs([problem, problem], ["print('\ud800')\n", "print(2 * int(input()))\n"],
                                           LcbOptions(timeout=2.0))
    assert lcb_cheat["verdict"] != "passed", lcb_cheat
    assert lcb_honest["verdict"] == "passed", lcb_honest


LOOKALIKE_NUMBERS = {  # stdin programs printing 2n in a form Decimal() reads but no judge accepts
    "Arabic-Indic digits": "print(str(2 * int(input())).translate(str.maketrans('0123456789', '٠١٢٣٤٥٦٧٨٩')))\n",
    "full-width digits": "print(str(2 * int(input())).translate(str.maketrans('0123456789', '０１２３４５６７８９')))\n",
    "an underscore": "s = str(2 * int(input()))\nprint(s[0] + '_' + s[1:] if len(s) > 1 else s)\n",
}


@pytest.mark.parametrize("name", list(LOOKALIKE_NUMBERS))
def test_livecodebench_lookalike_numbers_are_wrong_answers(name):
    """`Decimal('١٢') == Decimal('12')` and `Decimal('1_0') == 10`: these were graded passed."""
    from teeny_bench.lcb_harness import stdout_matches

    problem = _lcb("stdin")
    (verdict,) = grade_programs([problem], [LOOKALIKE_NUMBERS[name]], LcbOptions(timeout=2.0))
    assert verdict["verdict"] == "wrong_answer", verdict
    assert stdout_matches("10.0 \n", "10\n") == (True, "")  # numbers still compare as decimals


def _lcb_record(**fields):
    record = {"question_id": "q1", "question_title": "t", "question_content": "c", "platform": "atcoder",
              "contest_id": "c", "contest_date": "2024-01-01", "difficulty": "easy", "starter_code": "",
              "metadata": "{}", "private_test_cases": "",
              "public_test_cases": json.dumps([{"input": "1\n", "output": "2\n", "testtype": "stdin"}])}
    return json.dumps({**record, **fields})


def _pickled(value):
    import base64
    import pickle
    import zlib

    return base64.b64encode(zlib.compress(pickle.dumps(value))).decode()


HOSTILE_LCB_FILES = {  # file name -> (content, what the one-line error names)
    "array.json": ("[garbage", "is not valid JSON text"),
    "deep.json": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "items.json": ("[[1], 5]", "holds an item that is not an object"),
    "no-tests.json": (json.dumps([{"problem": "x"}]), "lacks field 'tests'"),
    "not-utf8.jsonl": (b"\xff\xfe\n", "cannot be read"),
    "meta-list.jsonl": (_lcb_record(metadata="[1]"), "metadata [1]; expected a JSON object"),
    "meta-int.jsonl": (_lcb_record(metadata=5), "metadata is not valid JSON text"),
    "public-deep.jsonl": (_lcb_record(public_test_cases="[" * 100_000), "public_test_cases is not valid JSON"),
    "public-int.jsonl": (_lcb_record(public_test_cases=5), "public_test_cases is not valid JSON"),
    "private-garbage.jsonl": (_lcb_record(private_test_cases="[garbage"), "private_test_cases is not valid JSON"),
    "private-pickled-text.jsonl": (_lcb_record(private_test_cases=_pickled("not json")),
                                   "the pickled private_test_cases is not valid JSON"),
    "private-pickled-bytes.jsonl": (_lcb_record(private_test_cases=_pickled(b"\xff\xfe")),
                                    "the pickled private_test_cases is not valid JSON"),
}


@pytest.mark.parametrize("name", list(HOSTILE_LCB_FILES))
def test_hostile_livecodebench_files_are_one_line_errors(name, tmp_path):
    """Each raised JSONDecodeError, RecursionError, AttributeError, KeyError, TypeError or UnicodeDecodeError out
    of `teeny bench check livecodebench` (a traceback)."""
    from teeny_core import TeenyError
    from teeny_bench.livecodebench import load_problems as load_lcb

    content, named = HOSTILE_LCB_FILES[name]
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(TeenyError, match=re.escape(named)):
        [problem.tests for problem in load_lcb(str(path))]  # private tests decode on first use


def test_stop_iteration_cannot_end_a_tests_map_early(tmp_path):
    """A test written `assert all(map(lambda p: candidate(p[0]) == p[1], pairs))`: StopIteration re-raised in the
    checker ended the `map` at once, `all([])` was true and the sample passed."""
    record = {"task_id": "Mine/0", "prompt": 'def double(x):\n    """2x."""\n', "entry_point": "double",
              "test": "def check(candidate):\n"
                      "    assert all(map(lambda p: candidate(p[0]) == p[1], [(2, 4), (3, 6)]))\n"}
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps(record) + "\n")
    (problem,) = load_problems(path)
    cheat, wrong, honest = grade_humaneval([(problem, "    raise StopIteration\n"), (problem, "    return x\n"),
                                            (problem, "    return 2 * x\n")], timeout=5)
    assert not cheat["passed"] and cheat["category"] == errors.RUNTIME_ERROR, cheat
    assert not wrong["passed"], wrong
    assert honest["passed"], honest


HOSTILE_PLUS_RECORDS = {  # a HumanEval+ record -> what the one-line error names
    "flat base_input": ({**DOUBLE, "base_input": [1, 2]}, "not a list of argument lists"),
    "plus_input of dicts": ({**DOUBLE, "plus_input": [{"a": 1}]}, "not a list of argument lists"),
    "base_input null": ({**DOUBLE, "base_input": None}, "not a list of argument lists"),
    "a 5,000-digit input": (json.dumps(DOUBLE).replace("[[1], [2]]", "[[" + "9" * 5000 + "]]"), "cannot be read"),
}


@pytest.mark.parametrize("name", list(HOSTILE_PLUS_RECORDS))
def test_hostile_humaneval_plus_records_are_one_line_errors(name, tmp_path):
    """A flat base_input reached the harness (TypeError in the sandbox, a multi-line error); a 5,000-digit int
    raised ValueError out of the reader."""
    from teeny_core import TeenyError

    record, named = HOSTILE_PLUS_RECORDS[name]
    path = tmp_path / "HumanEvalPlus.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write((record if isinstance(record, str) else json.dumps(record)) + "\n")
    with pytest.raises(TeenyError, match=re.escape(named)):
        load_plus_problems(path)


def test_a_failing_canonical_solution_is_one_error_line(tmp_path):
    from teeny_core import TeenyError

    path = tmp_path / "HumanEvalPlus.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({**DOUBLE, "canonical_solution": "    raise ValueError('no')\n"}) + "\n")
    problems = load_plus_problems(path)
    grader = PlusGrader(problems, file_id(path), None, min_time_limit=0.5)
    with pytest.raises(TeenyError) as caught:
        grader.references([problems[0].task_id])
    assert "\n" not in str(caught.value) and "ValueError: no" in str(caught.value), str(caught.value)


@pytest.mark.parametrize("content", [b"{garbled", b"[1]", b'{"outputs": 5, "times": []}',
                                     b'{"outputs": [{"v": ["I", "4"]}], "times": [0.0]}'])
def test_an_unreadable_answer_cache_is_recomputed(tmp_path, content):
    """A garbled cache file raised JSONDecodeError out of the grader; one of another shape (answers missing,
    malformed) would have been trusted."""
    path = tmp_path / "HumanEvalPlus.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps(DOUBLE) + "\n")
    problems = load_plus_problems(path)
    first = PlusGrader(problems, file_id(path), tmp_path / "cache", min_time_limit=0.5)
    first.references([problems[0].task_id])
    (cached,) = (tmp_path / "cache").rglob("*.json")
    cached.write_bytes(content)
    grader = PlusGrader(problems, file_id(path), tmp_path / "cache", min_time_limit=0.5)
    right, wrong = grader.grade([(problems[0], "    return 2 * x\n"), (problems[0], "    return 4\n")])
    assert right["passed"] and not wrong["passed"], (right, wrong)
    assert len(json.loads(cached.read_text())["outputs"]) == 4  # rewritten whole


def _mul_js_record(**fields):
    with open(MUL_DATA / "humaneval-js.jsonl") as f:
        return json.dumps({**json.loads(f.readline()), **fields})


HOSTILE_MUL_FILES = {  # one line of humaneval-js.jsonl -> what the one-line error names
    "garbage": ("{garbage", "is not valid JSON"),
    "nested 100,000 deep": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "a JSON list": ("[1]", "is a JSON list; expected an object"),
    "tests 5": (_mul_js_record(tests=5), "tests is a int; expected a string"),
    "prompt 5": (_mul_js_record(prompt=5), "prompt is a int"),
    "stop_tokens 5": (_mul_js_record(stop_tokens=5), "stop_tokens is 5; expected a list of strings"),
    "language [1]": (_mul_js_record(language=[1]), "language is a list"),
}


@pytest.mark.parametrize("name", list(HOSTILE_MUL_FILES))
def test_hostile_humaneval_mul_files_are_one_line_errors(name, tmp_path):
    """Each raised JSONDecodeError, RecursionError, AttributeError or TypeError out of `teeny bench check
    humaneval-mul --path FILE` (a traceback)."""
    from teeny_core import TeenyError
    from teeny_bench.multipl_e import load_problems as load_mul

    line, named = HOSTILE_MUL_FILES[name]
    path = tmp_path / "humaneval-js.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(TeenyError, match=re.escape(named)):
        load_mul(str(path), ["js"])


def _lcb_functional(output):
    tests = [{"input": "3", "output": output, "testtype": "functional"}]
    return LcbProblem("q3", "big", "Return 10**5000 - 1.", "leetcode", "c1", None, "easy",
                      "class Solution:\n    def big(self, n: int) -> int:\n        ", "big", tests)


def test_livecodebench_expected_outputs_python_refuses_do_not_crash_the_grader():
    """A functional test whose expected output is garbled, nested 100,000 deep or a 5,000-digit int raised
    JSONDecodeError, RecursionError or ValueError out of grade_programs; the last is a legitimate answer."""
    right = "class Solution:\n    def big(self, n):\n        return 10 ** 5000 - 1\n"
    wrong = "class Solution:\n    def big(self, n):\n        return 10 ** 5000\n"
    problems = [_lcb_functional("9" * 5000)] * 2 + [_lcb_functional("{garbage"),
                                                    _lcb_functional("[" * 100_000 + "]" * 100_000)]
    verdicts = grade_programs(problems, [right, wrong, right, right], LcbOptions(timeout=5.0))
    assert [v["verdict"] for v in verdicts] == ["passed"] + ["wrong_answer"] * 3, verdicts


@pytest.mark.parametrize("check", ["assert s.is_on", "assert s.is_on != False"])
def test_a_data_attribute_of_the_solutions_object_is_not_always_true(tmp_path, check):
    """`s = candidate(); s.on(); assert s.is_on`: the attribute came back as a method proxy, always true (and
    unequal to anything), so a solution whose on() does nothing passed. Now such a test fails for every
    solution, saying why."""
    record = {"task_id": "Mine/1", "entry_point": "Switch",
              "prompt": 'class Switch:\n    """on() turns it on."""\n    def __init__(self):\n        self.is_on = False\n',
              "test": f"def check(candidate):\n    s = candidate()\n    s.on()\n    {check}\n"}
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps(record) + "\n")
    (problem,) = load_problems(path)
    cheat, right = grade_humaneval([(problem, "    def on(self):\n        pass\n"),
                                    (problem, "    def on(self):\n        self.is_on = True\n")], timeout=5)
    for outcome in (cheat, right):
        assert not outcome["passed"] and outcome["exception"] == "UnsupportedArgument", outcome
        assert "reads Switch().is_on as a value" in outcome["detail"], outcome


@pytest.mark.parametrize("value", [1e30, float("inf"), float("nan"), "nan"])
def test_an_absurd_timeout_is_refused_before_work(value):
    """`timeout = 1e30` was accepted and every sample then failed as an early exit ("Python int too large to
    convert to C long" in the sandbox); NaN passed every bound."""
    from teeny_core import OptionsError
    from teeny_bench.humaneval import HumanEvalPlusOptions
    from teeny_bench.multipl_e import MulOptions

    for options in (HumanEvalOptions, HumanEvalPlusOptions, LcbOptions, MulOptions):
        with pytest.raises(OptionsError, match="option timeout="):
            options.from_mapping({"timeout": value}, where="bench")
