"""LiveCodeBench: real-format records (JSON-string fields, base64+zlib+pickle private tests) load without
unpickling anything but plain data, the contamination window filters on contest_date, and stdin and
functional problems from tests/data/livecodebench-public grade as LiveCodeBench grades them, in the
sandbox: known-correct solutions pass, wrong ones fail with the right category."""

from __future__ import annotations

import base64
import json
import os
import pickle
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from teeny_core import Generation, LoadedModel, OptionsError, TeenyError
from teeny_core.store import MemoryContext
from teeny_core.testing import EvaluatorContract, answering_model
from teeny_bench import errors
from teeny_bench.lcb_harness import stdout_matches
from teeny_bench.livecodebench import (LcbOptions, LcbProblem, LiveCodeBenchEvaluator, build_prompt, check_command,
                                       decode_private_tests, extract_code, filter_problems, grade_programs,
                                       load_problems, oracle_program)

PUBLIC = Path(__file__).resolve().parent / "data" / "livecodebench-public" / "livecodebench.json"

CARDS_OK = """t = int(input())
for _ in range(t):
    s = input().strip()
    print("YES" if sum(a != b for a, b in zip(s, "abc")) in (0, 2) else "NO")
"""
SENIORS_OK = """class Solution:
    def countSeniors(self, details: List[str]) -> int:
        return sum(int(d[11:13]) > 60 for d in details)
"""


def encode_private(tests: list[dict]) -> str:
    """How code_generation_lite stores private tests: base64(zlib(pickle(json string)))."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()


@pytest.fixture(scope="module")
def public_problems():
    return load_problems(str(PUBLIC))


def find(problems, text: str) -> LcbProblem:
    return next(p for p in problems if text in p.content or text in p.starter_code)


def real_record(problem: LcbProblem, question_id: str, date: str, difficulty: str, private: list[dict]) -> dict:
    return {"question_title": "t", "question_content": problem.content, "platform": "leetcode",
            "question_id": question_id, "contest_id": "weekly-contest-1", "contest_date": f"{date}T00:00:00",
            "starter_code": problem.starter_code, "difficulty": difficulty,
            "public_test_cases": json.dumps(problem.tests), "private_test_cases": encode_private(private),
            "metadata": json.dumps({"func_name": problem.func_name})}


def test_private_tests_decode_from_base64_zlib_pickle():
    tests = [{"input": "3\n", "output": "6\n", "testtype": "stdin"}, {"input": "[1, 2]", "output": "3",
                                                                     "testtype": "functional"}]
    assert decode_private_tests(encode_private(tests)) == tests
    assert decode_private_tests(json.dumps(tests)) == tests  # some releases store plain JSON
    assert decode_private_tests("") == []


class Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    Exploit.marker = marker
    payload = base64.b64encode(zlib.compress(pickle.dumps([Exploit()]))).decode()
    with pytest.raises(TeenyError, match="refusing an unsafe private_test_cases pickle: refusing to load "
                                         r"(posix|os)\.system"):
        decode_private_tests(payload)
    assert not marker.exists()
    with pytest.raises(TeenyError, match="neither JSON nor base64"):
        decode_private_tests("not base64 at all!")


def test_real_record_format_jsonl_and_date_window(public_problems, tmp_path):
    seniors = find(public_problems, "countSeniors")
    assert seniors.mode == "functional" and seniors.func_name == "countSeniors"
    private = [{"input": '["7868190130M7522", "5303914400F9211", "9273338290F4010", "1111111111M6111"]',
                "output": "3", "testtype": "functional"}]
    records = [real_record(seniors, "2727", "2023-05-01", "easy", private),
               real_record(seniors, "2800", "2023-09-15", "medium", private),
               real_record(seniors, "2900", "2024-01-10", "hard", [])]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:2]))
    (tmp_path / "test2.jsonl").write_text(json.dumps(records[2]) + "\n")
    problems = load_problems(str(tmp_path))
    assert [p.question_id for p in problems] == ["2727", "2800", "2900"]
    first = problems[0]
    assert first.contest_date == "2023-05-01" and first.difficulty == "easy" and first.func_name == "countSeniors"
    assert first.tests == seniors.tests + private  # public first, then the decoded private tests
    window = filter_problems(problems, start_date="2023-09-01", end_date="2023-12-31")
    assert [p.question_id for p in window] == ["2800"]
    assert [p.question_id for p in filter_problems(problems, start_date="2023-09-15")] == ["2800", "2900"]
    assert [p.question_id for p in filter_problems(problems, difficulty=["hard", "easy"])] == ["2727", "2900"]
    assert [p.question_id for p in load_problems(str(tmp_path), release="v2")] == ["2900"]
    assert len(load_problems(str(tmp_path), release="release_v2")) == 3
    with pytest.raises(TeenyError, match="lacks .*test3.jsonl"):
        load_problems(str(tmp_path), release="release_v3")
    with pytest.raises(TeenyError, match="unknown release 'release_v9'"):
        load_problems(str(tmp_path), release="release_v9")
    with pytest.raises(TeenyError, match="start_date='2023/09/01' is not a date"):
        filter_problems(problems, start_date="2023/09/01")
    # Private tests are decoded when a problem is used: a bad payload outside the window costs nothing.
    corrupt = real_record(seniors, "1999", "2022-01-01", "easy", [])
    corrupt["private_test_cases"] = "not base64 at all!"
    (tmp_path / "old.jsonl").write_text(json.dumps(corrupt) + "\n" + json.dumps(records[1]) + "\n")
    loaded = load_problems(str(tmp_path / "old.jsonl"))
    assert [p.question_id for p in filter_problems(loaded, start_date="2023-01-01")] == ["2800"]
    with pytest.raises(TeenyError, match="neither JSON nor base64"):
        loaded[0].tests
    with pytest.raises(TeenyError, match="public-tests-only file has no dates"):
        filter_problems(load_problems(str(PUBLIC)), end_date="2024-01-01")
    # The private test is really graded: a solution that only knows the public answers fails on it.
    public_only = ("class Solution:\n    def countSeniors(self, details):\n"
                   f"        return {{{', '.join(repr(t['input']) + ': ' + t['output'] for t in seniors.tests)}}}"
                   "[json.dumps(details)]\n")
    verdicts = grade_programs([first, first, problems[2]], [SENIORS_OK, public_only, public_only], LcbOptions())
    assert [v["verdict"] for v in verdicts] == ["passed", "runtime_error", "passed"], verdicts
    assert verdicts[1]["error"] == "KeyError" and verdicts[1]["failed_test"] == len(seniors.tests)


def test_stdin_and_functional_grading(public_problems):
    cards = find(public_problems, "three cards with letters")
    seniors = find(public_problems, "countSeniors")
    assert cards.mode == "stdin"
    cases = [
        (cards, CARDS_OK, "passed", errors.PASSED),
        (cards, "import sys\ndata = sys.stdin.buffer.read().split()\nfor s in data[1:]:\n"
                "    print('YES' if sum(a != b for a, b in zip(s.decode(), 'abc')) in (0, 2) else 'NO')\n",
         "passed", errors.PASSED),
        (cards, "t = int(input())\nfor _ in range(t):\n    input()\n    print('YES')\n", "wrong_answer",
         errors.WRONG_ANSWER),
        (cards, "t = int(input())\nfor _ in range(t):\n    s = input().strip()\n"  # LCB's wildcard imports
                "    print('YES' if sum(starmap(ne, zip(s, 'abc'))) in (0, 2) else 'NO')\n", "passed", errors.PASSED),
        (cards, "print(undefined_name)\n", "runtime_error", errors.NAME_ERROR),
        (cards, "x = bytearray(10 ** 11)\n", "runtime_error", errors.MEMORY),
        (cards, "def f(:\n    pass\n", "compile_error", errors.SYNTAX_ERROR),
        (cards, "while True:\n    pass\n", "timeout", errors.TIMEOUT),
        (cards, "print(open('problem.json').read())\n", "runtime_error", errors.RUNTIME_ERROR),
        (seniors, SENIORS_OK, "passed", errors.PASSED),
        (seniors, SENIORS_OK.replace("> 60", "< 60"), "wrong_answer", errors.WRONG_ANSWER),
        (seniors, SENIORS_OK.replace("return sum", "raise ValueError('no'); return sum"), "runtime_error",
         errors.RUNTIME_ERROR),
    ]
    options = LcbOptions(timeout=1.0)
    verdicts = grade_programs([c[0] for c in cases], [c[1] for c in cases], options)
    from teeny_bench.livecodebench import categorize

    for (problem, code, verdict, category), got in zip(cases, verdicts):
        assert got["verdict"] == verdict, (code, got)
        assert categorize(got, code, "stop") == category, (code, got)
        assert got["tests_total"] == len(problem.tests)
    assert verdicts[0]["tests_passed"] == verdicts[0]["tests_run"] == len(cards.tests)
    assert verdicts[4]["error"] == "NameError" and "undefined_name" in verdicts[4]["detail"]
    assert verdicts[8]["error"] == "FileNotFoundError"  # the expected outputs are not left on disk
    # Stops at the first failure unless all_tests is set (per-test counts then cover every test).
    echo = LcbProblem("echo", "", "Print the number you read.", "atcoder", "", None, "", "", None,
                      [{"input": f"{i}\n", "output": f"{i}\n", "testtype": "stdin"} for i in (1, 2, 3)])
    first, every = (grade_programs([echo], ["print(1)\n"], LcbOptions(all_tests=flag))[0] for flag in (False, True))
    assert (first["verdict"], first["tests_run"], first["tests_passed"], first["failed_test"]) == ("wrong_answer", 2, 1, 1)
    assert (every["verdict"], every["tests_run"], every["tests_passed"]) == ("wrong_answer", 3, 1)


def test_output_comparison_is_lcb_s():
    assert stdout_matches("1 2\n3\n", " 1 2 \n3")[0]
    assert stdout_matches("0.50\n", "0.5\n")[0]  # equal as decimals
    assert not stdout_matches("0.5000001\n", "0.5\n")[0]  # no tolerance beyond exact decimals
    assert not stdout_matches("1\n2\n", "1\n")[0]
    assert not stdout_matches("YES\n", "yes\n")[0]


def test_prompts_and_code_extraction():
    functional = LcbProblem("1", "", "Return the answer.", "leetcode", "", None, "", "class Solution:\n    def f(self):",
                            "f", [{"input": "1", "output": "1", "testtype": "functional"}])
    stdin = LcbProblem("2", "", "Read and print.", "atcoder", "", None, "", "", None,
                       [{"input": "1", "output": "1", "testtype": "stdin"}])

    class Tok:
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
            return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    chat = build_prompt(stdin, "chat", Tok())
    assert chat.startswith("<system>You are an expert Python programmer.")
    assert "### Question:\nRead and print." in chat and "Read the inputs from stdin" in chat
    assert "```python\n# YOUR CODE HERE\n```" in chat
    assert "```python\nclass Solution:\n    def f(self):\n```" in build_prompt(functional, "chat", Tok())
    base = build_prompt(functional, "completion", None)
    assert base.endswith("### Question\nReturn the answer.\n\n### Starter Code\nclass Solution:\n    def f(self):"
                         "\n\n### Answer\n\n")
    assert base.count("### Question") == 2  # one worked example, then the problem
    assert extract_code("Sure.\n```python\nprint(1)\n```\nmore\n```\nx\n```") == "print(1)"
    assert extract_code("no code here") == ""


class ChatModel(LoadedModel):
    """A chat model that answers every problem from a table, right for even seeds and wrong for odd ones."""

    def __init__(self, answers: dict[str, tuple[str, str]]) -> None:
        self.answers = answers
        self.calls = 0

    @property
    def tokenizer(self):
        return SimpleNamespace(chat_template="x", apply_chat_template=lambda m, tokenize, add_generation_prompt:
                               m[-1]["content"])

    def generate(self, prompts, *, max_new_tokens=256, temperature=0.0, top_p=1.0, stop=None, seed=0):
        self.calls += len(prompts)
        out = []
        for prompt in prompts:
            right, wrong = next(v for k, v in self.answers.items() if k in prompt)
            code = right if seed % 2 == 0 else wrong
            out.append(Generation(text=f"Here it is:\n```python\n{code}```\n", tokens=9, finish_reason="stop"))
        return out

    def logprobs(self, token_ids):
        raise NotImplementedError


def test_evaluator_end_to_end_with_pass_at_5(public_problems, tmp_path):
    cards = find(public_problems, "three cards with letters")
    seniors = find(public_problems, "countSeniors")
    records = [real_record(cards, "1873A", "2023-08-21", "easy", []),
               real_record(seniors, "2727", "2023-09-02", "easy", [])]
    records[0]["metadata"], records[0]["platform"] = "{}", "codeforces"
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    model = ChatModel({"three cards": (CARDS_OK, "print('NO')\n"), "countSeniors": (SENIORS_OK, "x = (\n")})
    evaluator = LiveCodeBenchEvaluator()
    with pytest.raises(OptionsError):
        LcbOptions.from_mapping({"prompt_style": "fancy"}, where="livecodebench")
    options = LcbOptions.from_mapping({"path": str(data), "n": 5, "temperature": 0.8, "start_date": "2023-01-01",
                                    "batch_size": 3})
    ctx = MemoryContext(tmp_path, seed=0)
    evaluator.evaluate(model, options, ctx)
    assert len(ctx.records) == 10 and len({r["key"] for r in ctx.records}) == 10
    by_key = {r["key"]: r for r in ctx.records}
    assert by_key["1873A/0"]["passed"] and by_key["1873A/0"]["category"] == errors.PASSED
    assert by_key["1873A/1"]["category"] == errors.WRONG_ANSWER
    assert by_key["2727/1"]["category"] == errors.SYNTAX_ERROR and by_key["2727/1"]["verdict"] == "compile_error"
    assert by_key["2727/2"]["tests_passed"] == by_key["2727/2"]["tests_total"] == len(seniors.tests)
    assert by_key["1873A/0"]["contest_date"] == "2023-08-21" and by_key["2727/0"]["mode"] == "functional"
    calls = model.calls
    evaluator.evaluate(model, options, ctx)  # resumed: nothing left
    assert model.calls == calls and len(ctx.records) == 10
    metrics = evaluator.summarize(ctx.records, options)
    assert metrics["pass@1"] == pytest.approx(0.6)  # seeds 0, 2, 4 of 0..4 are right
    assert metrics["pass@5"] == 1.0 and metrics["pass@1/easy"] == pytest.approx(0.6)
    assert metrics["errors/wrong_answer"] == 2 and metrics["errors/syntax_error"] == 2


def test_bench_check_grades_oracle_programs(capsys):
    args = SimpleNamespace(path=str(PUBLIC), limit=6, timeout=None, workers=None, verbose=False, extra={})
    assert check_command(args)
    out = capsys.readouterr().out
    assert "loaded 879 problems (498 stdin, 381 functional)" in out
    assert "correct programs passed 6/6, wrong programs failed with a wrong answer 6/6" in out


def test_oracle_programs_are_right_and_wrong(public_problems):
    problems = [p for p in public_problems if p.mode == "functional"][:2] + public_problems[:2]
    right = grade_programs(problems, [oracle_program(p) for p in problems], LcbOptions())
    wrong = grade_programs(problems, [oracle_program(p, correct=False) for p in problems], LcbOptions())
    assert [v["verdict"] for v in right] == ["passed"] * 4
    assert [v["verdict"] for v in wrong] == ["wrong_answer"] * 4


def test_release_downloads_the_release_files_from_the_hub_cache(monkeypatch, tmp_path):
    seen = []

    def fake_download(repo_id, filename, repo_type):
        seen.append((repo_id, filename, repo_type))
        path = tmp_path / filename
        path.write_text("")
        return str(path)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_download)
    assert load_problems(release="release_v3") == []
    assert seen == [("livecodebench/code_generation_lite", f, "dataset")
                    for f in ("test.jsonl", "test2.jsonl", "test3.jsonl")]
    with pytest.raises(TeenyError, match="set path="):
        load_problems()


class TestLiveCodeBenchContract(EvaluatorContract):
    evaluator = "livecodebench"
    options = {"path": str(PUBLIC), "limit": 2}

    @pytest.fixture
    def loaded_model(self):
        return answering_model(lambda prompt: "```python\nprint(1)\n```", chat=True)


def test_a_solution_cannot_read_the_problem_file_or_the_run_store(public_problems, outside_tmp):
    """The tests' own data file and a run store's samples.jsonl (world-readable, outside /tmp) are not in the
    sandbox's view: a program that answers right only when it can read them fails, on stdin and functional
    problems alike."""
    from teeny_bench.sandbox import capabilities

    if "view" not in capabilities():
        pytest.skip("no filesystem view on this machine (no mount namespace)")
    problems = [find(public_problems, "three cards with letters"), find(public_problems, "countSeniors")]
    samples = outside_tmp(0o755, {"samples.jsonl": ('{"key": "abc/0", "passed": true}\n', 0o644)}) / "samples.jsonl"
    honest = grade_programs(problems, [oracle_program(p) for p in problems], LcbOptions())
    assert [v["verdict"] for v in honest] == ["passed", "passed"]
    for secret in (PUBLIC, samples):
        peek = f"open({str(secret)!r}).read(1)\n"
        cheats = grade_programs(problems, [peek + oracle_program(p) for p in problems], LcbOptions())
        assert [(v["verdict"], v["error"]) for v in cheats] == [("runtime_error", "FileNotFoundError")] * 2
