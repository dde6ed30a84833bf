"""HumanEval-Mul: hand-written solutions pass and wrong ones fail with the right category in every language
whose toolchain is installed (real compilers and runtimes, in the sandbox); a missing toolchain is skipped,
never failed; the evaluator is resumable and summarizes per language. Data: tests/data/humaneval-mul."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from teeny_core import Generation, LoadedModel, TeenyError
from teeny_core.store import MemoryContext
from teeny_core.testing import EvaluatorContract, answering_model
from teeny_bench import errors, toolchains
from teeny_bench.multipl_e import (CHECK_BODIES, SKIPPED, HumanEvalMulEvaluator, MulOptions, assemble,
                                   check_toolchains, completion_from_chat, load_problems, problem_from_record,
                                   run_programs)

DATA = Path(__file__).resolve().parent / "data" / "humaneval-mul"

# Correct bodies for HumanEval 53 (add), 13 (greatest_common_divisor) and 30 (get_positive), written by hand in
# each language; "wrong" returns x - y for add; "broken" does not compile / parse.
SOLUTIONS = {
    "python": {53: "    return x + y\n",
               13: "    while b:\n        a, b = b, a % b\n    return a\n",
               30: "    return [e for e in l if e > 0]\n",
               "wrong": "    return x - y\n", "broken": "    return x +\n"},
    "cpp": {53: "    return x + y;\n",
            13: "    while (b) { long t = a % b; a = b; b = t; }\n    return a;\n",
            30: "    std::vector<long> out;\n    for (long e : l) if (e > 0) out.push_back(e);\n    return out;\n",
            "wrong": "    return x - y;\n", "broken": "    return x + ;\n"},
    "java": {53: "        return x + y;\n",
             13: "        while (b != 0) { long t = a % b; a = b; b = t; }\n        return a;\n",
             30: "        ArrayList<Long> out = new ArrayList<>();\n        for (Long e : l) if (e > 0) out.add(e);\n"
                 "        return out;\n",
             "wrong": "        return x - y;\n", "broken": "        return x + \"\";\n"},
    "cs": {53: "        return x + y;\n",
           13: "        while (b != 0) { long t = a % b; a = b; b = t; }\n        return a;\n",
           30: "        return l.Where(e => e > 0).ToList();\n",
           "wrong": "        return x - y;\n", "broken": "        return x + \"\";\n"},
    "js": {53: "  return x + y;\n}\n",
           13: "  while (b) { [a, b] = [b, a % b]; }\n  return a;\n}\n",
           30: "  return l.filter(e => e > 0);\n}\n",
           "wrong": "  return x - y;\n}\n", "broken": "  return x + ;\n}\n"},
    "ts": {53: "  return x + y;\n}\n",
           13: "  while (b) { [a, b] = [b, a % b]; }\n  return a;\n}\n",
           30: "  return l.filter(e => e > 0);\n}\n",
           "wrong": "  return x - y;\n}\n", "broken": "  return \"a string\";\n}\n"},  # a type error
    "php": {53: "    return $x + $y;\n}\n",
            13: "    while ($b) { [$a, $b] = [$b, $a % $b]; }\n    return $a;\n}\n",
            30: "    return array_values(array_filter($l, fn($e) => $e > 0));\n}\n",
            "wrong": "    return $x - $y;\n}\n", "broken": "    return $x + ;\n}\n"},
    "sh": {53: "    echo $(( $1 + $2 ))\n",
           13: "    local a=$1 b=$2 t\n    while (( b )); do t=$(( a % b )); a=$b; b=$t; done\n    echo $a\n",
           30: "    local out=()\n    for e in $1; do (( e > 0 )) && out+=(\"$e\"); done\n    echo \"${out[*]}\"\n",
           "wrong": "    echo $(( $1 - $2 ))\n", "broken": "    if then fi\n"},
}


def problems_by_number(language: str) -> dict[int, object]:
    return {p.problem: p for p in load_problems(str(DATA), [language])[language]}


def require_toolchain(language: str) -> None:
    chain = toolchains.detect(language)
    if not chain.available:
        pytest.skip(f"{chain.name} toolchain not installed here (missing: {', '.join(chain.missing)}); "
                    "run .ci/install-toolchains.sh")


@pytest.mark.parametrize("language", toolchains.LANGUAGES)
def test_hand_written_solutions_pass_and_wrong_ones_fail(language):
    require_toolchain(language)
    problems = problems_by_number(language)
    code = SOLUTIONS[language]
    items = [(problems[n], code[n]) for n in (53, 13, 30)]
    items += [(problems[53], code["wrong"]), (problems[53], code["broken"])]
    outcomes = run_programs(items, timeout=20)
    details = [o["detail"] for o in outcomes]
    assert [o["passed"] for o in outcomes] == [True, True, True, False, False], details
    assert [o["category"] for o in outcomes[:3]] == [errors.PASSED] * 3
    assert outcomes[3]["category"] == errors.WRONG_ANSWER, details[3]
    assert outcomes[4]["category"] == errors.SYNTAX_ERROR, details[4]


def test_check_bodies_fail_cleanly_in_every_installed_language():
    """What ``teeny bench check humaneval-mul`` does, on two problems per language."""
    rows = check_toolchains(str(DATA), limit=2)
    assert [r["language"] for r in rows] == list(toolchains.LANGUAGES)
    for row in rows:
        if not toolchains.detect(row["language"]).available:
            assert row["ok"] is None and row["missing"]
            continue
        assert row["ok"], row
        if row["language"] == "php":  # its first problem redeclares PHP's builtin strlen(): reported, not failed
            assert row["defects"] == ["HumanEval_23_strlen (the prompt redeclares PHP's builtin strlen())"]
            assert row["counts"][errors.WRONG_ANSWER] == 1
        else:
            assert row["counts"] == {errors.WRONG_ANSWER: 2} and not row["defects"]
        assert row["versions"] and all(row["versions"].values())


def test_program_is_prompt_completion_tests_between_the_channel_code():
    from teeny_bench.multipl_e import CHANNEL_CODE

    p = problems_by_number("js")[53]
    program = assemble(p, SOLUTIONS["js"][53])
    read, write = CHANNEL_CODE["js"]
    assert program == read + p.prompt + SOLUTIONS["js"][53] + "\n" + p.tests + write
    assert "python" not in CHANNEL_CODE  # the Python column runs under _call_harness.py (python_job)


def test_python_column_splits_the_solution_from_the_tests():
    from teeny_bench.multipl_e import PYTHON_HEADER, python_job

    py = problems_by_number("python")[53]
    assert "check(add)" in py.tests
    _, kwargs = python_job(py, "    return 1\n", 5.0, 1 << 30)
    files = kwargs["files"]
    assert files["solution.py"] == PYTHON_HEADER + py.prompt + "    return 1\n"
    assert files["test.py"].rstrip().endswith("assert add(x, y) == x + y")  # the harness calls check once
    assert json.loads(files["job.json"])["helpers"] == PYTHON_HEADER + py.prompt


def test_chat_answers_are_cut_to_the_body():
    java = problems_by_number("java")[53]
    answer = ("Here you go:\n```java\nclass Problem {\n    public static long add(long x, long y) {\n"
              "        return x + y;\n    }\n    public static void main(String[] args) { }\n}\n```\nDone.")
    assert completion_from_chat(java, answer) == "        return x + y;"
    py = problems_by_number("python")[53]
    answer = ('```python\ndef add(x: int, y: int):\n    return plus(x, y)\n\ndef plus(a, b):\n    return a + b\n\n'
              'print(add(1, 2))\n```')
    completion = completion_from_chat(py, answer)  # the function and its helper, without the demo print
    assert "def plus(a, b)" in completion and "print" not in completion
    require_toolchain("java")
    outcomes = run_programs([(java, completion_from_chat(java, answer.replace("python", "java"))),
                             (py, completion_from_chat(py, answer))], timeout=20)
    assert outcomes[1]["passed"], outcomes[1]["detail"]
    assert not outcomes[0]["passed"]  # a Python answer to a Java prompt does not compile
    assert outcomes[0]["category"] == errors.SYNTAX_ERROR


class CannedTokenizer:
    chat_template = None


class CannedModel(LoadedModel):
    """Answers each completion prompt from a table of prompt -> completion; records what it was asked."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    @property
    def tokenizer(self):
        return CannedTokenizer()

    def generate(self, prompts, *, max_new_tokens=256, temperature=0.0, top_p=1.0, stop=None, seed=0):
        self.asked.extend(prompts)
        # Like a runtime, stop at the first stop string (the text excludes it); the model rambles on after.
        out = []
        for prompt in prompts:
            text = self.answers[prompt] + (stop[0] + " more()\n" if stop else "")
            cut = min([i for i in (text.find(s) for s in stop or []) if i >= 0], default=len(text))
            out.append(Generation(text=text[:cut], tokens=5, finish_reason="stop", seconds=0.01))
        return out

    def logprobs(self, token_ids):
        raise NotImplementedError


def test_evaluator_records_resume_and_summary(tmp_path):
    py, js = problems_by_number("python"), problems_by_number("js")
    require_toolchain("js")
    answers = {py[53].prompt: SOLUTIONS["python"][53], py[13].prompt: "    return a * b\n",
               js[53].prompt: SOLUTIONS["js"][53], js[13].prompt: SOLUTIONS["js"][13]}
    subset = tmp_path / "data"
    subset.mkdir()
    for lang, numbers in (("python", (53, 13)), ("js", (53, 13))):
        rows = [json.loads(line) for line in (DATA / f"humaneval-{lang}.jsonl").read_text().splitlines()]
        keep = [r for r in rows if problem_from_record(r).problem in numbers]
        (subset / f"humaneval-{lang}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in keep))
    evaluator = HumanEvalMulEvaluator()
    options = MulOptions.from_mapping({"path": str(subset), "languages": "python,javascript", "batch_size": 3})
    ctx = MemoryContext(tmp_path)
    model = CannedModel(answers)
    evaluator.evaluate(model, options, ctx)
    by_key = {r["key"]: r for r in ctx.records}
    assert set(by_key) == {"python/Python/53/0", "python/Python/13/0", "js/HumanEval_53_add/0",
                           "js/HumanEval_13_greatest_common_divisor/0"}
    assert by_key["python/Python/53/0"]["passed"] and not by_key["python/Python/13/0"]["passed"]
    assert by_key["python/Python/13/0"]["category"] == errors.WRONG_ANSWER
    assert by_key["js/HumanEval_53_add/0"]["passed"], by_key["js/HumanEval_53_add/0"]["detail"]
    # The JS body closes its function itself (MultiPL-E's JS tests do not); the rambling was cut off.
    assert by_key["js/HumanEval_53_add/0"]["completion"] == "  return x + y;\n}\n"
    for record in ctx.records:
        assert {"key", "task_id", "language", "sample", "prompt", "completion", "passed", "category", "detail",
                "seconds"} <= set(record)
    asked = len(model.asked)
    evaluator.evaluate(model, options, ctx)  # resumed: nothing left to do
    assert len(ctx.records) == 4 and len(model.asked) == asked
    metrics = evaluator.summarize(ctx.records, options)
    assert metrics["pass@1/python"] == 0.5 and metrics["pass@1/js"] == 1.0
    assert metrics["pass@1"] == 0.75  # the mean over languages
    assert metrics["errors/wrong_answer"] == 1 and metrics["languages"] == 2


def test_missing_toolchain_is_skipped_not_failed(tmp_path, monkeypatch):
    py, js = problems_by_number("python"), problems_by_number("js")
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # node is "not installed"; Python runs as this interpreter
    assert not toolchains.detect("js").available and toolchains.detect("js").missing == ["node"]
    model = CannedModel({py[53].prompt: SOLUTIONS["python"][53]})
    options = MulOptions.from_mapping({"path": str(DATA), "languages": ["python", "js"], "limit": 200})
    evaluator = HumanEvalMulEvaluator()
    ctx = MemoryContext(tmp_path, limit=None)
    keep = {py[53].task_id, js[53].task_id}
    monkeypatch.setattr("teeny_bench.multipl_e.load_problems",
                        lambda path, languages, limit=None: {
                            lang: [p for p in load_problems(path, [lang])[lang] if p.task_id in keep]
                            for lang in languages})
    evaluator.evaluate(model, options, ctx)
    skipped = [r for r in ctx.records if r["language"] == "js"]
    assert len(skipped) == 1 and skipped[0]["category"] == SKIPPED and "node" in skipped[0]["detail"]
    assert all(js[53].prompt not in prompt for prompt in model.asked)  # nothing generated for it
    metrics = evaluator.summarize(ctx.records, options)
    assert metrics["pass@1"] == 1.0 and metrics["pass@1/python"] == 1.0
    assert "pass@1/js" not in metrics and metrics["skipped"] == "js" and metrics["languages_skipped"] == 1
    assert "errors/skipped_toolchain" not in metrics
    rows = check_toolchains(str(DATA), ["js"], limit=1)
    assert rows[0]["ok"] is None and rows[0]["missing"] == ["node"]


def test_loading_errors_are_one_line(tmp_path):
    with pytest.raises(TeenyError, match="set path="):
        load_problems("", ["java"])
    with pytest.raises(TeenyError, match="does not exist"):
        load_problems(str(tmp_path / "nope"), ["java"])
    with pytest.raises(TeenyError, match="unknown language 'cobol'"):
        load_problems(str(DATA), ["cobol"])
    with pytest.raises(TeenyError, match="has none of humaneval-java.jsonl"):
        load_problems(str(tmp_path), ["java"])
    one = tmp_path / "humaneval-ts.jsonl"
    one.write_text((DATA / "humaneval-ts.jsonl").read_text().splitlines()[0] + "\n")
    assert [p.language for p in load_problems(str(one), ["ts", "js"])["ts"]] == ["ts"]
    with pytest.raises(TeenyError, match="holds ts problems, not java"):
        load_problems(str(one), ["java"])
    assert list(load_problems(str(tmp_path), list(toolchains.LANGUAGES))) == ["ts"]  # all: those present
    with pytest.raises(TeenyError, match="lacks humaneval-js.jsonl"):
        load_problems(str(tmp_path), ["ts", "js"])


def test_humaneval_format_python_gets_its_check_call():
    record = {"task_id": "HumanEval/53", "prompt": "def add(x, y):\n", "entry_point": "add",
              "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n", "canonical_solution": ""}
    problem = problem_from_record(record)
    assert problem.language == "python" and problem.problem == 53
    assert problem.tests.rstrip().endswith("check(add)")
    assert problem.stop_tokens  # MultiPL-E's Python stop tokens when the record has none


def test_check_bodies_cover_every_language():
    assert set(CHECK_BODIES) == set(toolchains.LANGUAGES)


class TestHumanEvalMulContract(EvaluatorContract):
    evaluator = "humaneval-mul"
    options = {"path": str(DATA), "languages": ["python", "sh"], "limit": 2}

    @pytest.fixture
    def loaded_model(self):
        return answering_model(lambda prompt: "    return None\n")


def test_python_canonical_solutions_pass():
    """The Python file is HumanEval's own format: its canonical solutions must pass (all 164 do; 8 here)."""
    rows = [json.loads(line) for line in (DATA / "humaneval-python.jsonl").read_text().splitlines()[:8]]
    outcomes = run_programs([(problem_from_record(r), r["canonical_solution"]) for r in rows], timeout=20)
    assert all(o["passed"] for o in outcomes), [o["detail"] for o in outcomes if not o["passed"]]


def test_typescript_per_file_tsc_when_the_batch_compiler_is_unavailable(monkeypatch):
    require_toolchain("ts")
    problems = problems_by_number("ts")
    items = [(problems[53], SOLUTIONS["ts"][53]), (problems[53], SOLUTIONS["ts"]["broken"])]
    batch = run_programs(items, timeout=20)
    monkeypatch.setattr(toolchains, "typescript_compile", lambda *args, **kwargs: None)
    per_file = run_programs(items, timeout=20)
    for outcomes in (batch, per_file):
        assert [o["category"] for o in outcomes] == [errors.PASSED, errors.SYNTAX_ERROR], outcomes
        assert "TS2322" in outcomes[1]["detail"]  # tsc's own diagnostic either way
