"""Bring your own problems: a local set of HumanEval-format or LeetCode-style (``class Solution``) records graded
by the ``humaneval`` evaluator and ``teeny bench check`` without a plugin (docs/own-problems.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from teeny_core import TeenyError
from teeny_core.store import MemoryContext
from teeny_core.testing import answering_model
from teeny_bench import errors
from teeny_bench.humaneval import HumanEval, HumanEvalOptions, grade_humaneval, load_problems

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own-problems.jsonl"


def _evaluate(answers: dict[str, str], chat: bool, tmp_path) -> dict[str, dict]:
    problems = load_problems(EXAMPLE)

    def answer(prompt: str) -> str:  # the task found by its prompt's text
        return answers[next(p.task_id for p in problems if p.prompt.strip() in prompt
                            or p.prompt.strip().replace("from typing import *", "").strip() in prompt)]

    ctx = MemoryContext(cache_dir=tmp_path)
    HumanEval().evaluate(answering_model(answer, chat=chat),
                         HumanEvalOptions(path=str(EXAMPLE), prompt_style="chat" if chat else "completion"), ctx)
    return {r["task_id"]: r for r in ctx.records}


def test_records_load_with_derived_entry_points_and_the_leetcode_header():
    problems = {p.task_id: p for p in load_problems(EXAMPLE)}
    assert problems["local/two-sum"].entry_point == "Solution"
    assert problems["local/two-sum"].prompt.startswith("from typing import *")
    assert len(problems["local/two-sum"].solutions) == 2
    assert problems["local/clamp"].entry_point == "clamp" and "typing" not in problems["local/clamp"].prompt


def test_completion_mode_continues_the_method_stub(tmp_path):
    records = _evaluate({"local/two-sum": "return [0, 1] if target == 9 else [1, 2]\n",  # wrong on [3, 3]
                         "local/max-gap": "s = sorted(nums)\n        return max((b - a for a, b in zip(s, s[1:])), "
                                          "default=0)\n",
                         "local/clamp": "    return min(max(x, lo), hi)\n"}, chat=False, tmp_path=tmp_path)
    assert records["local/max-gap"]["passed"] and records["local/clamp"]["passed"]
    assert not records["local/two-sum"]["passed"]
    assert records["local/two-sum"]["category"] == errors.WRONG_ANSWER


def test_chat_mode_whole_class_is_not_indented_into_the_stub(tmp_path):
    whole = ("Here it is:\n```python\nclass Solution:\n    def maximumGap(self, nums: List[int]) -> int:\n"
             "        s = sorted(nums)\n        return max((b - a for a, b in zip(s, s[1:])), default=0)\n\n"
             "print(Solution().maximumGap([1, 5]))\n```")
    wrong = "```python\nclass Solution:\n    def twoSum(self, nums, target):\n        return [0, 1]\n```"
    clamp = "```python\ndef clamp(x, lo, hi):\n    return min(max(x, lo), hi)\n```"
    records = _evaluate({"local/two-sum": wrong, "local/max-gap": whole, "local/clamp": clamp}, chat=True,
                        tmp_path=tmp_path)
    assert records["local/max-gap"]["passed"], records["local/max-gap"]
    assert records["local/clamp"]["passed"]
    assert not records["local/two-sum"]["passed"]
    assert records["local/two-sum"]["category"] == errors.WRONG_ANSWER


def test_leetcode_early_exit_fails():
    problem = next(p for p in load_problems(EXAMPLE) if p.task_id == "local/max-gap")
    (outcome,) = grade_humaneval([(problem, "import os\n        os._exit(0)\n")], timeout=5)
    assert not outcome["passed"] and outcome["category"] == errors.EARLY_EXIT


def test_teeny_bench_check_grades_every_solution(tmp_path):
    run = subprocess.run([sys.executable, "-m", "teeny_core.cli", "bench", "check", "humaneval", "--path",
                          str(EXAMPLE)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "passed 4/4" in run.stdout
    broken = tmp_path / "broken.jsonl"
    record = json.loads(EXAMPLE.read_text().splitlines()[1])
    broken.write_text(json.dumps({**record, "solutions": ["return -1\n"]}) + "\n")
    run = subprocess.run([sys.executable, "-m", "teeny_core.cli", "bench", "check", "humaneval", "--path",
                          str(broken)], capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "passed 0/1" in run.stdout


def _check(path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "teeny_core.cli", "bench", "check", "humaneval", "--path",
                           str(path), *extra], capture_output=True, text=True, timeout=300)


def test_check_skips_problems_without_solutions_and_says_how_many(tmp_path):
    path = tmp_path / "mixed.jsonl"
    bare = [{"task_id": f"bare/{i}", "prompt": "def f():\n", "test": "assert f() == 1\n"} for i in range(4)]
    path.write_text("\n".join(json.dumps(r) for r in [*bare, *map(json.loads, EXAMPLE.read_text().splitlines())]))
    run = _check(path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "canonical solutions and solutions passed 4/4" in run.stdout
    assert "skipped 4 problems without solutions" in run.stdout
    none = tmp_path / "bare.jsonl"
    none.write_text(json.dumps(bare[0]) + "\n")
    run = _check(none)
    assert run.returncode == 2 and run.stderr.startswith("Error: humaneval: none of the 1 problems has"), run.stderr


# Needs what LeetCode's environment imports: collections' deque and Counter, functools' reduce and cache, heapq,
# bisect and math by module name, and typing's names.
NEEDS_IMPORTS = {
    "task_id": "lc/imports", "prompt": "class Solution:\n    def solve(self, nums: List[int]) -> int:\n        ",
    "test": "assert Solution().solve([3, 1, 2, 3]) == 10\n",
    "solutions": ["q = deque(sorted(nums))\n        heapq.heapify(h := list(q))\n"
                  "        assert bisect.bisect_left(h, 2) == 1 and Counter(nums)[3] == 2\n"
                  "        return reduce(lambda a, b: a + b, nums, 0) + math.floor(cache(abs)(-4) / 4)\n"],
}


def test_leetcode_preamble_from_the_option_or_the_file(tmp_path):
    """DeepSeek-Coder's LeetCode harness runs every program after LeetCode's standard imports."""
    path = tmp_path / "lc.jsonl"
    path.write_text(json.dumps(NEEDS_IMPORTS) + "\n")
    bare = _check(path)
    assert bare.returncode == 1 and "name_error" in bare.stdout  # no preamble by default
    run = _check(path, "-o", "preamble=leetcode")
    assert run.returncode == 0 and "humaneval: solutions passed 1/1" in run.stdout, run.stdout
    declared = tmp_path / "declared.jsonl"
    declared.write_text(json.dumps({**NEEDS_IMPORTS, "preamble": "leetcode"}) + "\n")
    assert _check(declared).returncode == 0
    assert _check(declared, "-o", "preamble=none").returncode == 1  # the option overrides the field
    problem = load_problems(declared)[0]
    assert "deque" not in problem.prompt  # the model is shown the prompt alone, as in that harness
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({**NEEDS_IMPORTS, "preamble": "django"}) + "\n")
    with pytest.raises(TeenyError, match="record 1 has preamble 'django'; expected one of none, leetcode"):
        load_problems(wrong)
    run = _check(path, "-o", "preamble=django")
    assert run.returncode == 2 and "preamble 'django' is unknown" in run.stderr
    plus = subprocess.run([sys.executable, "-m", "teeny_core.cli", "bench", "check", "humaneval-plus", "--path",
                           str(path), "-o", "preamble=leetcode"], capture_output=True, text=True, timeout=300)
    assert plus.returncode == 2 and "applies to HumanEval-format problem files only" in plus.stderr
    from teeny_bench.humaneval import HumanEvalPlus, HumanEvalPlusOptions

    with pytest.raises(TeenyError, match="applies to HumanEval-format problem files only"):
        HumanEvalPlus().problems(HumanEvalPlusOptions(path=str(path), preamble="leetcode"))


@pytest.mark.parametrize("completion", [
    "s = sorted(nums)\n        return max((b - a for a, b in zip(s, s[1:])), default=0)\n",  # continues the line
    "\n        s = sorted(nums)\n        return max((b - a for a, b in zip(s, s[1:])), default=0)\n",
    "        s = sorted(nums)\n        return max((b - a for a, b in zip(s, s[1:])), default=0)\n",
    "\n    s = sorted(nums)\n    return max((b - a for a, b in zip(s, s[1:])), default=0)\n",
    "\n\n\ts = sorted(nums)\n\treturn max((b - a for a, b in zip(s, s[1:])), default=0)\n",
])
def test_a_method_body_with_its_own_indentation_is_accepted(completion):
    """Models answer a stub's open method body on the stub's line or on a new line with their own indentation."""
    problem = next(p for p in load_problems(EXAMPLE) if p.task_id == "local/max-gap")
    (outcome,) = grade_humaneval([(problem, completion)])
    assert outcome["passed"], outcome


def test_arguments_of_prompt_defined_classes_are_a_clear_failure(tmp_path):
    """Only builtin values cross to the solution's process: a test passing an object of a prompt-defined class
    fails with a detail that says so (not as the solution's fault)."""
    record = {"task_id": "local/node", "prompt": "class Node:\n    def __init__(self, v):\n        self.v = v\n\n\n"
                                                "def value(node):\n    \"\"\"The node's value.\"\"\"\n",
              "test": "def check(candidate):\n    assert candidate(Node(3)) == 3\n",
              "canonical_solution": "    return node.v\n"}
    path = tmp_path / "nodes.jsonl"
    path.write_text(json.dumps(record) + "\n")
    (problem,) = load_problems(path)
    (outcome,) = grade_humaneval([(problem, problem.canonical_solution)], timeout=5)
    assert not outcome["passed"] and outcome["category"] == errors.RUNTIME_ERROR, outcome
    assert "not of builtin types" in outcome["detail"] and outcome["exception"] == "UnsupportedArgument"
