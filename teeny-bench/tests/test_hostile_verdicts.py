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
import json
from pathlib import Path

import pytest

from teeny_core.store import MemoryContext
from teeny_bench import errors, toolchains
from teeny_bench.humaneval import (HumanEval, HumanEvalOptions, PlusGrader, file_id, grade_humaneval,
                                   load_plus_problems, load_problems)
from teeny_bench.livecodebench import LcbOptions, LcbProblem, grade_programs

from teeny_core.types import Generation, LoadedModel

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

class _Tokenizer:
    def __init__(self, chat: bool) -> None:
        self.chat_template = "{{ messages }}" if chat else None

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "".join(m["content"] for m in messages)


class _Canned(LoadedModel):
    """Gives the same answer to every prompt."""

    def __init__(self, answer: str, chat: bool) -> None:
        self.answer, self._tokenizer = answer, _Tokenizer(chat)

    @property
    def tokenizer(self):
        return self._tokenizer

    def generate(self, prompts, *, max_new_tokens=256, temperature=0.0, top_p=1.0, stop=None, seed=0):
        return [Generation(text=self.answer, tokens=5, finish_reason="stop", seconds=0.0) for _ in prompts]

    def logprobs(self, token_ids):
        raise NotImplementedError


def _run(answer, chat, tmp_path):
    ctx = MemoryContext(cache_dir=tmp_path, limit=1)
    model = _Canned(answer, chat)
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
    assert not outcome["passed"] and outcome["category"] == errors.EARLY_EXIT, outcome
