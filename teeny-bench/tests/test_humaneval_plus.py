"""HumanEval+: graded as EvalPlus grades (expected outputs from the canonical solution, exact match or allclose
with atol, find_zero's root check, per-input time limits), on a tiny file in the HumanEvalPlus format."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pytest

from teeny_core import TeenyError
from teeny_core.store import MemoryContext
from teeny_core.testing import answering_model
from teeny_bench import errors
from teeny_bench.humaneval import CACHE_FORMAT, HumanEvalPlus, PlusGrader, file_id, load_plus_problems

ADD = {
    "task_id": "Plus/0", "entry_point": "add", "atol": 0,
    "prompt": 'def add(a: int, b: int) -> int:\n    """Return a + b."""\n',
    "canonical_solution": "    return a + b\n",
    "base_input": [[1, 2], [3, 4]], "plus_input": [[10**20, 1], [-5, 5], [0, 0]],
}
MEAN = {
    "task_id": "Plus/1", "entry_point": "mean", "atol": 0,
    "prompt": 'from typing import List\n\n\ndef mean(xs: List[float]) -> float:\n    """Arithmetic mean."""\n',
    "canonical_solution": "    return sum(xs) / len(xs)\n",
    "base_input": [[[1.0, 2.0, 4.0]]], "plus_input": [[[0.1] * 10], [[1e-3, 2e-3]]],
}
FIND_ZERO = {
    "task_id": "Plus/2", "entry_point": "find_zero", "atol": 1e-6,
    "prompt": ('import math\n\n\ndef poly(xs: list, x: float):\n    return sum(c * math.pow(x, i) for i, c in '
               'enumerate(xs))\n\n\ndef find_zero(xs: list):\n    """A zero of the polynomial with coefficients xs."""\n'),
    "canonical_solution": ("    lo, hi = 0.0, 10.0\n    for _ in range(200):\n        mid = (lo + hi) / 2\n"
                           "        if poly(xs, lo) * poly(xs, mid) <= 0:\n            hi = mid\n"
                           "        else:\n            lo = mid\n    return lo\n"),
    "base_input": [[[-1, 0, 1]]], "plus_input": [[[-4, 0, 1]], [[-9, 0, 1]]],
}


@pytest.fixture
def plus_file(tmp_path):
    path = tmp_path / "HumanEvalPlus.jsonl.gz"
    with gzip.open(path, "wt") as f:
        for record in (ADD, MEAN, FIND_ZERO):
            f.write(json.dumps({**record, "test": "", "contract": ""}) + "\n")
    return path


@pytest.fixture
def grader(plus_file, tmp_path):
    problems = load_plus_problems(plus_file)
    return problems, PlusGrader(problems, file_id(plus_file), tmp_path / "cache", min_time_limit=0.5)


def test_canonical_solutions_pass(grader):
    problems, g = grader
    outcomes = g.grade([(p, p.canonical_solution) for p in problems])
    assert [o["passed"] for o in outcomes] == [True, True, True], outcomes
    assert all(o["passed_base"] and o["failed_input"] is None for o in outcomes)


def test_plus_inputs_catch_what_base_inputs_miss(grader):
    problems, g = grader
    add = problems[0]
    [o] = g.grade([(add, "    return a + b if abs(a) < 1000 else 0\n")])
    assert not o["passed"] and o["passed_base"]
    assert o["failed_input"] == 2 and o["category"] == errors.WRONG_ANSWER
    assert "plus input #2" in o["detail"]
    [o] = g.grade([(add, "    return a - b\n")])
    assert not o["passed"] and not o["passed_base"] and o["failed_input"] == 0


def test_floats_compare_with_tolerance_and_type(grader):
    problems, g = grader
    mean = problems[1]
    rounding = "    total = 0.0\n    for x in reversed(xs):\n        total += x\n    return total / len(xs)\n"
    off = "    return sum(xs) / len(xs) + 1e-3\n"
    as_string = "    return str(sum(xs) / len(xs))\n"
    outcomes = g.grade([(mean, rounding), (mean, off), (mean, as_string)])
    assert [o["passed"] for o in outcomes] == [True, False, False], outcomes
    assert outcomes[1]["category"] == errors.WRONG_ANSWER


def test_find_zero_accepts_any_root(grader):
    problems, g = grader
    other_root = "    return -find_positive(xs)\n\n\ndef find_positive(xs):\n    return math.sqrt(-xs[0])\n"
    [o] = g.grade([(problems[2], other_root)])  # the canonical finds +r; -r is a root too
    assert o["passed"], o
    [o] = g.grade([(problems[2], "    return 0.5\n")])
    assert not o["passed"] and o["category"] == errors.WRONG_ANSWER


def test_per_input_time_limit_and_errors(grader):
    problems, g = grader
    add = problems[0]
    slow = "    if a > 100:\n        while True:\n            pass\n    return a + b\n"
    outcomes = g.grade([(add, slow), (add, "    return undefined(a)\n"), (add, "    return (\n"),
                        (add, "    import sys\n    sys.exit(0)\n")])
    assert outcomes[0]["category"] == errors.TIMEOUT and outcomes[0]["passed_base"]
    assert outcomes[1]["category"] == errors.NAME_ERROR
    assert outcomes[2]["category"] == errors.SYNTAX_ERROR
    assert not outcomes[3]["passed"]  # leaving early is not passing


def test_expected_outputs_are_cached(grader, tmp_path):
    problems, g = grader
    g.grade([(problems[0], problems[0].canonical_solution)])
    cached = list((tmp_path / "cache" / "humaneval-plus").rglob("*.json"))
    assert len(cached) == 1 and "outputs" in json.loads(cached[0].read_text())


def test_missing_file_says_where_to_download(tmp_path):
    with pytest.raises(TeenyError, match="humanevalplus_release/releases"):
        load_plus_problems(tmp_path / "HumanEvalPlus.jsonl.gz")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task_id": "x", "prompt": "", "entry_point": "f", "canonical_solution": ""}) + "\n")
    with pytest.raises(TeenyError, match="lacks base_input, plus_input"):
        load_plus_problems(bad)


def test_evaluator_end_to_end(plus_file, tmp_path):
    answers = {ADD["prompt"]: "    return a + b if abs(a) < 1000 else 0\n", MEAN["prompt"]: MEAN["canonical_solution"],
               FIND_ZERO["prompt"]: "    return 0.0\n"}
    ev = HumanEvalPlus()
    opts = HumanEvalPlus.Options.from_mapping({"path": str(plus_file)}, where="humaneval-plus")
    ctx = MemoryContext(cache_dir=tmp_path)
    ev.evaluate(answering_model(answers), opts, ctx)
    by_task = {r["task_id"]: r for r in ctx.records}
    assert by_task["Plus/0"]["passed_base"] and not by_task["Plus/0"]["passed"]
    assert by_task["Plus/1"]["passed"]
    assert not by_task["Plus/2"]["passed_base"]
    metrics = ev.summarize(ctx.records, opts)
    assert metrics["pass@1"] == pytest.approx(1 / 3)
    assert metrics["passed_base_rate"] == pytest.approx(2 / 3)


def test_teeny_bench_check_humaneval_plus_cli(plus_file, tmp_path):
    run = subprocess.run([sys.executable, "-m", "teeny_core.cli", "bench", "check", "humaneval-plus",
                          "--path", str(plus_file), "-o", f"cache_dir={tmp_path}"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "passed 3/3" in run.stdout
    missing = subprocess.run([sys.executable, "-m", "teeny_core.cli", "bench", "check", "humaneval-plus",
                              "--path", str(tmp_path / "nope.jsonl.gz")], capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0 and "humanevalplus_release" in missing.stderr


# Like HumanEval/15 in the official file (196.5 MB), but cheap to compute: expected answers of over 200 MB.
HUGE = {
    "task_id": "Plus/15", "entry_point": "spaces", "atol": 0, "test": "", "contract": "",
    "prompt": 'def spaces(n: int, c: str) -> str:\n    """c repeated n times."""\n',
    "canonical_solution": "    return c * n\n",
    "base_input": [[3, "ab"]], "plus_input": [[110_000_000, "ab"], [12_000_000, "z"]],
}
# Like HumanEval/130 (tri, 120 MB): a large answer made of floats.
HALVES = {
    "task_id": "Plus/130", "entry_point": "halves", "atol": 0, "test": "", "contract": "",
    "prompt": 'def halves(n: int) -> list:\n    """[i / 2 for i < n]."""\n',
    "canonical_solution": "    return [i / 2 for i in range(n)]\n",
    "base_input": [[4]], "plus_input": [[1_500_000]],
}


def test_expected_answers_over_200_mb_travel_as_digests(tmp_path):
    """Answers of 220 MB and 12 MB are compared by digest: `teeny bench check` passes the canonical solution, a
    wrong answer of the same size fails on that input, and neither the cache nor the channel holds the value."""
    path = tmp_path / "HumanEvalPlus.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps(HUGE) + "\n" + json.dumps(HALVES) + "\n")
    run = subprocess.run([sys.executable, "-m", "teeny_core.cli", "bench", "check", "humaneval-plus",
                          "--path", str(path), "-o", f"cache_dir={tmp_path}"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "passed 2/2" in run.stdout
    cached = list((tmp_path / "humaneval-plus").rglob("*.json"))
    assert len(cached) == 2 and all(c.stat().st_size < 10_000 for c in cached)

    problems = load_plus_problems(path)
    grader = PlusGrader(problems, file_id(path), tmp_path)
    # as cheap as the canonical solution (one string of the same size), so the CPU limit never decides it
    wrong = "    return c[::-1] * n if n > 1000 else c * n\n"
    right, bad = grader.grade([(problems[0], "    return c * n\n"), (problems[0], wrong)])
    assert right["passed"] and right["passed_base"], right
    assert not bad["passed"] and bad["passed_base"] and bad["failed_input"] == 1, bad
    assert bad["category"] == errors.WRONG_ANSWER and "220000011 bytes, sha256" in bad["detail"]


# Shaped like HumanEval/83 in the official file: the plus input n = 1,000,000 has an answer of a million digits,
# which Python refuses to turn into decimal text (4,300 digits by default) on either side of the channel.
STARTS_ONE_ENDS = {
    "task_id": "HumanEval/83", "entry_point": "starts_one_ends", "atol": 0, "test": "", "contract": "",
    "prompt": 'def starts_one_ends(n):\n    """How many n-digit numbers start or end with 1."""\n',
    "canonical_solution": "    if n == 1:\n        return 1\n    return 18 * (10 ** (n - 2))\n",
    "base_input": [[1], [2], [5]], "plus_input": [[1_000_000], [7]],
}


def test_an_answer_of_a_million_digits_is_graded(tmp_path):
    path = tmp_path / "HumanEvalPlus.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps(STARTS_ONE_ENDS) + "\n")
    run = subprocess.run([sys.executable, "-m", "teeny_core.cli", "bench", "check", "humaneval-plus",
                          "--path", str(path), "-o", f"cache_dir={tmp_path}"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "passed 1/1" in run.stdout
    problems = load_plus_problems(path)
    grader = PlusGrader(problems, file_id(path), tmp_path)
    off_by_one = "    if n == 1:\n        return 1\n    return 18 * (10 ** (n - 2)) + (n > 100)\n"
    right, wrong = grader.grade([(problems[0], STARTS_ONE_ENDS["canonical_solution"]), (problems[0], off_by_one)])
    assert right["passed"], right
    assert not wrong["passed"] and wrong["category"] == errors.WRONG_ANSWER and wrong["failed_input"] == 3, wrong
    assert "too large to show" in wrong["detail"]


def test_a_solution_cannot_read_the_problem_file_or_the_answer_cache(outside_tmp):
    """A world-readable HumanEvalPlus.jsonl.gz and the expected-answer cache, outside /tmp, are not in the
    sandbox's view: a solution answering from the cache (or only when it can open the file) fails."""
    import hashlib

    from teeny_bench.sandbox import capabilities

    if "view" not in capabilities():
        pytest.skip("no filesystem view on this machine (no mount namespace)")
    record = json.dumps({**ADD, "test": "", "contract": ""}) + "\n"
    root = outside_tmp(0o755, {"HumanEvalPlus.jsonl.gz": (gzip.compress(record.encode()), 0o644)})
    path = root / "HumanEvalPlus.jsonl.gz"
    problems = load_plus_problems(path)
    grader = PlusGrader(problems, file_id(path), root / "cache")
    grader.references([problems[0].task_id])
    cached = root / "cache" / "humaneval-plus" / CACHE_FORMAT / file_id(path) / (
        hashlib.sha256(b"Plus/0").hexdigest()[:16] + ".json")
    for p in [cached, *cached.parents]:
        if p == root:
            break
        p.chmod(0o755 if p.is_dir() else 0o644)
    from_cache = ("import json\nANSWERS, CALLS = None, [0]\n\n\ndef add(a, b):\n    global ANSWERS\n"
                  f"    ANSWERS = ANSWERS or json.load(open({str(cached)!r}))['outputs']\n"
                  "    CALLS[0] += 1\n    return int(ANSWERS[CALLS[0] - 1]['v'][1])\n")
    peek = f"def add(a, b):\n    open({str(path)!r}, 'rb').read(1)\n    return a + b\n"
    honest, cheat, peeked = grader.grade([(problems[0], "    return a + b\n"), (problems[0], from_cache),
                                          (problems[0], peek)])
    assert honest["passed"], honest
    for outcome in (cheat, peeked):
        assert not outcome["passed"] and outcome["exception"] == "FileNotFoundError", outcome
