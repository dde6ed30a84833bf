"""HumanEval: the harness grades the real 164 problems right, categorises failures, and the evaluator is
resumable and computes unbiased pass@k, driven end to end by a fake model with canned completions."""

from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys
from collections import Counter

import pytest

from teeny_core import Generation, LoadedModel, OptionsError, TeenyError
from teeny_core.store import MemoryContext
from teeny_core.testing import EvaluatorContract
from teeny_bench import errors, generation
from teeny_bench.sandbox import Limits
from teeny_bench.humaneval import (HumanEval, call_job, grade_humaneval, load_problems, pass_at_k,
                                   summarize_records)


class CannedTokenizer:
    """Just enough of a tokenizer: an optional chat template."""

    def __init__(self, chat: bool) -> None:
        self.chat_template = "{{ messages }}" if chat else None

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages) + "<|assistant|>\n"


class CannedModel(LoadedModel):
    """Answers each prompt through ``answer(task_id, prompt, seed)``; remembers what it was asked."""

    def __init__(self, problems, answer, chat: bool = False, finish_reason: str = "stop") -> None:
        self._tokenizer = CannedTokenizer(chat)
        self.problems = problems
        self.answer = answer
        self.finish_reason = finish_reason
        self.calls: list[tuple[list[str], dict]] = []

    @property
    def tokenizer(self):
        return self._tokenizer

    def _task(self, prompt: str):
        return next(p for p in self.problems if p.prompt.rstrip() in prompt)

    def generate(self, prompts, *, max_new_tokens=256, temperature=0.0, top_p=1.0, stop=None, seed=0):
        self.calls.append((list(prompts), {"temperature": temperature, "stop": stop, "seed": seed}))
        out = []
        for prompt in prompts:
            text = self.answer(self._task(prompt), prompt, seed)
            out.append(Generation(text=text, tokens=len(text.split()), finish_reason=self.finish_reason,
                                  seconds=0.01))
        return out

    def logprobs(self, token_ids):
        raise NotImplementedError


@pytest.fixture(scope="module")
def he_problems():
    return load_problems()


@pytest.fixture(scope="module")
def canonical_and_wrong(he_problems):
    """All 164 canonical solutions, and every fourth problem with a body that cannot pass, in one parallel run."""
    items = [(p, p.canonical_solution) for p in he_problems] + [(p, "    return None\n") for p in he_problems[::4]]
    outcomes = grade_humaneval(items)
    return outcomes[:len(he_problems)], outcomes[len(he_problems):]


def test_the_package_ships_164_problems(he_problems):
    assert len(he_problems) == 164
    assert he_problems[0].task_id == "HumanEval/0" and he_problems[-1].task_id == "HumanEval/163"


def test_every_canonical_solution_passes(he_problems, canonical_and_wrong):
    canonical, _ = canonical_and_wrong
    failed = [(p.task_id, o["category"], o["detail"]) for p, o in zip(he_problems, canonical) if not o["passed"]]
    assert not failed
    assert all(o["category"] == errors.PASSED for o in canonical)


def test_a_body_that_returns_none_fails(he_problems, canonical_and_wrong):
    _, wrong = canonical_and_wrong
    assert len(wrong) == 41 and not any(o["passed"] for o in wrong)
    counts = Counter(o["category"] for o in wrong)
    assert set(counts) <= {errors.WRONG_ANSWER, errors.RUNTIME_ERROR}
    assert counts[errors.WRONG_ANSWER] > 30  # most tests assert on the value; a few hit a TypeError first
    assert all(o["exception"] == "TypeError" for o in wrong if o["category"] == errors.RUNTIME_ERROR)


@pytest.mark.parametrize("body, category, exception", [
    ("    return (\n", errors.SYNTAX_ERROR, "SyntaxError"),
    ("  x = 1\n    return x\n", errors.SYNTAX_ERROR, "IndentationError"),
    ("    return undefined_helper(numbers)\n", errors.NAME_ERROR, "NameError"),
    ("    import no_such_module_teeny\n    return True\n", errors.NAME_ERROR, "ModuleNotFoundError"),
    ("    return 1 / 0\n", errors.RUNTIME_ERROR, "ZeroDivisionError"),
    ("    return numbers[10**6]\n", errors.RUNTIME_ERROR, "IndexError"),
    ("    return not any(True for _ in numbers)\n", errors.WRONG_ANSWER, "AssertionError"),
    ("    while True:\n        pass\n", errors.TIMEOUT, None),
    ("    x = bytearray(100 * 2**30)\n    return False\n", errors.MEMORY, "MemoryError"),
])
def test_failure_categories(he_problems, body, category, exception):
    [outcome] = grade_humaneval([(he_problems[0], body)], timeout=2)
    assert not outcome["passed"]
    assert outcome["category"] == category, outcome
    if exception:
        assert outcome["exception"] == exception
        assert exception in outcome["detail"]


def test_solution_and_tests_go_to_separate_files(he_problems):
    """The solution process gets prompt + completion; the prompt's helpers and the test go to the checker."""
    p = he_problems[2]
    argv, kwargs = call_job(p.prompt + p.canonical_solution, p.entry_point, Limits(), test=p.test,
                            helpers=p.prompt)
    files = kwargs["files"]
    assert argv[-1] == "harness.py" and "solution process" in files["harness.py"]
    assert files["solution.py"] == p.prompt + p.canonical_solution and files["test.py"] == p.test
    job = json.loads(files["job.json"])
    assert job["mode"] == "check" and job["entry_point"] == p.entry_point and job["helpers"] == p.prompt


def test_installed_packages_import_but_no_names_leak(he_problems):
    uses_numpy = "    import numpy as np\n    a = np.sort(np.array(numbers))\n" \
                 "    return bool((np.diff(a) < threshold).any())\n"
    leaks_sys = "    return sys.maxsize < 0\n"
    ok, leaked = grade_humaneval([(he_problems[0], uses_numpy), (he_problems[0], leaks_sys)])
    assert ok["passed"], ok
    assert leaked["category"] == errors.NAME_ERROR


def test_pass_at_k_matches_the_combinatorial_definition():
    for n, c, k in [(10, 3, 1), (10, 3, 5), (20, 0, 10), (5, 5, 1), (200, 17, 100), (3, 1, 3)]:
        expected = 1.0 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)


def test_summary_pass_at_k_standard_error_and_categories():
    records = []
    for t, passed in enumerate([[True, False, False], [True, True, True], [False, False, False]]):
        for s, ok in enumerate(passed):
            records.append({"key": f"T/{t}/{s}", "task_id": f"T/{t}", "passed": ok,
                            "category": errors.PASSED if ok else errors.WRONG_ANSWER, "gen_tokens": 10})
    m = summarize_records(records)
    per_problem = [1 / 3, 1.0, 0.0]
    assert m["pass@1"] == pytest.approx(sum(per_problem) / 3)
    mean = sum(per_problem) / 3
    se = math.sqrt(sum((x - mean) ** 2 for x in per_problem) / 2 / 3)
    assert m["pass@1_se"] == pytest.approx(se)
    assert "pass@10" not in m  # 3 samples per problem: pass@10 cannot be estimated
    assert m["errors/wrong_answer"] == 5 and m["passed"] == 4 and m["problems"] == 3 and m["samples"] == 9


# -- generation helpers -------------------------------------------------------------------------------------

def test_stop_strings_cut_the_completion():
    text = "    return a + b\n\n\ndef other():\n    pass\n"
    assert generation.truncate_at_stop(text) == "    return a + b\n\n"
    assert generation.truncate_at_stop("    return 1\n# tests\nprint(1)") == "    return 1"
    assert generation.truncate_at_stop("    return 1") == "    return 1"


def test_code_extraction_from_chat_answers():
    answer = ("Sure! First a sketch:\n```\nx = 1\n```\nThe solution:\n```python\nimport math\n\n"
              "def area(r):\n    return math.pi * r * r\n\nprint(area(2))\nif __name__ == '__main__':\n"
              "    print(input())\n```\nHope this helps.")
    code = generation.chat_completion(answer, "area")
    assert "def area(r):" in code and "import math" in code
    assert "print(" not in code and "__main__" not in code
    assert generation.extract_code("```python\ndef f():\n    return 1", "f") == "def f():\n    return 1"
    assert generation.extract_code("def f():\n    return 1\n", "f") == "def f():\n    return 1"


def test_chat_solution_keeps_prompt_helpers(he_problems):
    decode = next(p for p in he_problems if p.entry_point == "decode_cyclic")
    full = "def decode_cyclic(s: str):\n    return encode_cyclic(encode_cyclic(s))\n"
    [outcome] = grade_humaneval([(decode, full)])
    assert outcome["passed"], outcome  # encode_cyclic comes from the prompt


def test_style_resolution():
    assert generation.resolve_style("auto", CannedTokenizer(chat=True), "humaneval") == "chat"
    assert generation.resolve_style("auto", CannedTokenizer(chat=False), "humaneval") == "completion"
    with pytest.raises(TeenyError, match="no chat template"):
        generation.resolve_style("chat", CannedTokenizer(chat=False), "humaneval")


# -- the evaluator end to end --------------------------------------------------------------------------------

def _canonical_or_wrong(problem, prompt, seed):
    number = int(problem.task_id.split("/")[1])
    return problem.canonical_solution if number % 2 == 0 else "    return None\n"


def test_evaluate_writes_one_record_per_problem_and_resumes(he_problems, tmp_path):
    ev = HumanEval()
    opts = HumanEval.Options.from_mapping({"limit": 6, "prompt_style": "completion", "batch_size": 4})
    model = CannedModel(he_problems, _canonical_or_wrong)
    ctx = MemoryContext(cache_dir=tmp_path)
    ctx.write({"key": "HumanEval/0/0", "task_id": "HumanEval/0", "passed": True, "category": errors.PASSED,
               "sample": 0})  # as if a killed run had finished this one
    ev.evaluate(model, opts, ctx)
    asked = [prompt for prompts, _ in model.calls for prompt in prompts]
    assert len(asked) == 5 and he_problems[0].prompt not in asked  # the finished item is not redone
    assert model.calls[0][1]["stop"] == list(generation.STOP_STRINGS)
    keys = [r["key"] for r in ctx.records]
    assert sorted(keys) == sorted(f"HumanEval/{i}/0" for i in range(6))
    by_key = {r["key"]: r for r in ctx.records}
    r2, r3 = by_key["HumanEval/2/0"], by_key["HumanEval/3/0"]
    assert r2["passed"] and r2["category"] == errors.PASSED and r2["completion"] == he_problems[2].canonical_solution
    assert not r3["passed"] and r3["category"] == errors.WRONG_ANSWER
    for field in ("task_id", "sample", "prompt", "completion", "passed", "category", "detail", "seconds",
                  "gen_tokens", "finish_reason"):
        assert field in r3
    metrics = ev.summarize(ctx.records, opts)
    assert metrics["pass@1"] == pytest.approx(3 / 6)
    assert metrics["errors/wrong_answer"] == 3
    ev.evaluate(model, opts, ctx)  # all done: the model is not asked again
    assert len(model.calls) == 2


def test_context_limit_applies(he_problems, tmp_path):
    ctx = MemoryContext(cache_dir=tmp_path, limit=2)
    model = CannedModel(he_problems, _canonical_or_wrong)
    HumanEval().evaluate(model, HumanEval.Options.from_mapping({"prompt_style": "completion"}), ctx)
    assert [r["task_id"] for r in ctx.records] == ["HumanEval/0", "HumanEval/1"]


def test_chat_mode_extracts_the_function(he_problems, tmp_path):
    def chat_answer(problem, prompt, seed):
        assert prompt.startswith("<|user|>") and generation.CHAT_INSTRUCTION in prompt
        header = problem.prompt  # the model repeats the signature and writes the body
        return f"Here you go:\n```python\n{header}{problem.canonical_solution}\n\nprint('demo')\n```\nDone."

    ctx = MemoryContext(cache_dir=tmp_path)
    model = CannedModel(he_problems, chat_answer, chat=True)
    HumanEval().evaluate(model, HumanEval.Options.from_mapping({"limit": 3}), ctx)  # auto -> chat
    assert model.calls[0][1]["stop"] is None
    assert all(r["passed"] for r in ctx.records), [r["detail"] for r in ctx.records]
    assert all("raw" in r and "print('demo')" not in r["completion"] for r in ctx.records)


def test_empty_and_truncated_generations_are_blamed_on_generation(he_problems, tmp_path):
    ctx = MemoryContext(cache_dir=tmp_path)
    model = CannedModel(he_problems, lambda p, prompt, seed: "", finish_reason="stop")
    HumanEval().evaluate(model, HumanEval.Options.from_mapping({"limit": 1, "prompt_style": "completion"}), ctx)
    assert ctx.records[0]["category"] == errors.EMPTY_GENERATION

    ctx = MemoryContext(cache_dir=tmp_path)
    model = CannedModel(he_problems, lambda p, prompt, seed: "    result = [\n        1,", finish_reason="length")
    HumanEval().evaluate(model, HumanEval.Options.from_mapping({"limit": 1, "prompt_style": "completion"}), ctx)
    assert ctx.records[0]["category"] == errors.TRUNCATED_GENERATION
    assert ctx.records[0]["finish_reason"] == "length"


def test_n_samples_give_unbiased_pass_at_k(he_problems, tmp_path):
    def by_seed(problem, prompt, seed):  # sample 0 and 2 right, sample 1 wrong (the seed differs per sample)
        return "    return None\n" if seed % 100_003 == 1 else problem.canonical_solution

    ctx = MemoryContext(cache_dir=tmp_path, seed=0)
    model = CannedModel(he_problems, by_seed)
    ev = HumanEval()
    opts = HumanEval.Options.from_mapping({"limit": 2, "n": 3, "temperature": 0.8, "prompt_style": "completion"})
    ev.evaluate(model, opts, ctx)
    assert sorted(r["key"] for r in ctx.records) == sorted(f"HumanEval/{i}/{s}" for i in range(2) for s in range(3))
    assert {call[1]["temperature"] for call in model.calls} == {0.8}
    assert len({call[1]["seed"] for call in model.calls}) == 3
    metrics = ev.summarize(ctx.records, opts)
    assert metrics["pass@1"] == pytest.approx(2 / 3)
    assert "pass@10" not in metrics


def test_bad_options_are_one_line_errors(he_problems, tmp_path):
    with pytest.raises(OptionsError, match="prompt_style"):
        HumanEval.Options.from_mapping({"prompt_style": "poetry"}, where="humaneval")
    with pytest.raises(TeenyError, match="temperature > 0"):
        HumanEval().evaluate(CannedModel(he_problems, _canonical_or_wrong),
                             HumanEval.Options.from_mapping({"n": 5}), MemoryContext(cache_dir=tmp_path))
    with pytest.raises(TeenyError, match="does not exist"):
        load_problems(tmp_path / "missing.jsonl")


def test_teeny_bench_check_humaneval_cli():
    run = subprocess.run([sys.executable, "-m", "teeny_core.cli", "bench", "check", "humaneval", "--limit", "4"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "passed 4/4" in run.stdout
    assert "sandbox isolation:" in run.stdout  # what the sandbox achieves here is always said
    bad = subprocess.run([sys.executable, "-m", "teeny_core.cli", "bench", "check", "no-such-bench"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "unknown benchmark 'no-such-bench'" in bad.stderr


def test_bench_check_fails_when_a_reference_solution_fails(tmp_path):
    import json

    good = {"task_id": "Mine/0", "prompt": "def inc(x):\n", "entry_point": "inc", "canonical_solution": "    return x + 1\n",
            "test": "def check(f):\n    assert f(1) == 2\n"}
    bad = {**good, "task_id": "Mine/1", "canonical_solution": "    return x + 2\n"}
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (good, bad)) + "\n")
    run = subprocess.run([sys.executable, "-m", "teeny_core.cli", "bench", "check", "humaneval", "--path", str(path)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1
    assert "passed 1/2" in run.stdout and "Mine/1: wrong_answer" in run.stdout


@pytest.fixture
def loaded_model():
    return CannedModel(load_problems(), _canonical_or_wrong)


class TestHumanEvalContract(EvaluatorContract):
    evaluator = "humaneval"
    options = {"limit": 3, "prompt_style": "completion"}


@pytest.mark.parametrize("args, named", [
    (["nonsense"], "'nonsense'"),
    (["humaneval", "--limit", "-3"], "--limit -3"),
    (["humaneval", "--limit", "0"], "--limit 0"),
    (["humaneval", "--timeout", "-1"], "--timeout -1"),
    (["humaneval", "--timeout", "nan"], "--timeout nan"),
    (["humaneval", "--timeout", "1e30"], "--timeout 1e+30"),
    (["humaneval", "--workers", "-2"], "--workers -2"),
    (["livecodebench", "--path", "GARBAGE"], "is not valid JSON"),
    (["humaneval-plus", "--path", "TRUNCATED"], "cannot be read after line"),
])
def test_bench_check_refuses_bad_input_in_one_line(args, named, tmp_path):
    """A bad name, value or file is one `Error:` line and exit status 2, before any work."""
    garbage = tmp_path / "lcb.jsonl"
    garbage.write_bytes(b"\x00not json at all\n")
    whole = gzip.compress(b"".join(json.dumps({"task_id": f"T/{i}", "prompt": "def f():\n", "entry_point": "f",
                                                "canonical_solution": "    return 1\n", "base_input": [[]],
                                                "plus_input": [[]]}).encode() + b"\n" for i in range(200)))
    truncated = tmp_path / "HumanEvalPlus.jsonl.gz"
    truncated.write_bytes(whole[:len(whole) // 2])
    args = [{"GARBAGE": str(garbage), "TRUNCATED": str(truncated)}.get(a, a) for a in args]
    run = subprocess.run([sys.executable, "-m", "teeny_core.cli", "bench", "check", *args], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 2, (run.returncode, run.stdout, run.stderr)
    assert run.stderr.startswith("Error: ") and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert named in run.stderr and "Traceback" not in run.stderr and "Aborted" not in run.stderr
    assert "passed" not in run.stdout  # refused before any grading
