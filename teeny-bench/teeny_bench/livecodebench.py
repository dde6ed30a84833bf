"""The ``livecodebench`` evaluator: LiveCodeBench code generation, graded as LiveCodeBench grades it.

Data: the real ``livecodebench/code_generation_lite`` records (``test.jsonl`` .. ``test6.jsonl``, one per
release increment; read as JSON lines, the dataset's loading script is never run), from a local file or
directory, or from the Hugging Face hub cache with ``release=release_v1..v6``; or the public-tests-only
file (a JSON list of ``{problem, starter_code, tests}``). Private tests are base64 of zlib of a pickle of a
JSON string: they are unpickled with an unpickler that refuses every global, so a payload can only ever
yield plain strings, numbers and containers (anything else is a one-line error).

Prompts are LiveCodeBench's code-generation prompts: its generic chat prompt (system + user message, code
in a fenced block) for instruct models, and a one-shot ``### Question`` / ``### Answer`` prompt for base
models. The first fenced block of the answer is the program. Each program runs in the sandbox through
:mod:`teeny_bench.lcb_harness` (one forked process per test, per-test timeout), which never sees an expected
output: it reports what each test printed or returned on the sandbox's channel and
:func:`verdict_from_report` compares here. A wrong answer is therefore only known after the run, so the
harness runs every test until a crash or a timeout.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import pickle
import re
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Iterable

from teeny_core import EvalContext, Evaluator, LoadedModel, Metric, TeenyError, option, read_jsonl

from teeny_bench import errors, generation
from teeny_bench.loop import CodeTask, generate_and_grade

HUB_REPO = "livecodebench/code_generation_lite"
RELEASE_FILES = ["test.jsonl", "test2.jsonl", "test3.jsonl", "test4.jsonl", "test5.jsonl", "test6.jsonl"]
MAX_DECODED_BYTES = 1 << 30

SYSTEM_MESSAGE = ("You are an expert Python programmer. You will be given a question (problem specification) "
                  "and will generate a correct Python program that matches the specification and passes all "
                  "tests. You will NOT return anything except for the program.")
FORMAT_WITH_STARTER = ("You will use the following starter code to write the solution to the problem and "
                       "enclose your code within delimiters.")
FORMAT_WITHOUT_STARTER = ("Read the inputs from stdin solve the problem and write the answer to stdout (do not "
                          "directly test on the sample inputs). Enclose your code within delimiters as follows.")
# One-shot examples for base models (ours; LiveCodeBench's base prompt has the same shape).
BASE_EXAMPLE_STDIN = {
    "question": "You are given two integers A and B on one line, separated by a space. Print A + B.",
    "starter": "",
    "answer": "```python\na, b = map(int, input().split())\nprint(a + b)\n```",
}
BASE_EXAMPLE_FUNCTIONAL = {
    "question": "You are given an integer array nums. Return the largest element of nums.",
    "starter": "class Solution:\n    def largest(self, nums: List[int]) -> int:\n        ",
    "answer": "```python\nclass Solution:\n    def largest(self, nums: List[int]) -> int:\n        return max(nums)\n```",
}
BASE_STOP = ["### Question"]


@dataclasses.dataclass
class LcbOptions(generation.SamplingOptions):
    path: str = option("", "a code_generation_lite jsonl file, a directory of test*.jsonl files, or the "
                           "public-tests-only livecodebench.json")
    release: str = option("", "release_v1..release_v6 (cumulative), v1..v6 (one increment) or release_latest; "
                              "picks files in `path`, or downloads them from the hub cache when path is empty")
    start_date: str = option("", "keep problems with contest_date on or after this day (YYYY-MM-DD)")
    end_date: str = option("", "keep problems with contest_date on or before this day (YYYY-MM-DD)")
    difficulty: list[str] = option([], "keep only these difficulties (easy, medium, hard)")
    platform: list[str] = option([], "keep only these platforms (atcoder, codeforces, leetcode)")
    limit: int | None = option(None, "evaluate at most this many problems (after filtering)", min=1)
    max_new_tokens: int = option(2048, "generation budget per sample", min=1)
    prompt_style: str = option("auto", "chat: LiveCodeBench's chat prompt (instruct models); completion: its "
                                       "one-shot prompt for base models; auto: chat when the tokenizer has a "
                                       "chat template", choices=("auto", "chat", "completion"))
    timeout: float = option(6.0, "wall seconds per test (LiveCodeBench uses 6)", min=0.1, max=86400)
    all_tests: bool = option(False, "count every test's result and run on after a crash (default: the verdict "
                                    "stops at the first failing test)")
    memory_gb: float = option(4.0, "address-space limit of a solution, GiB", min=0.25)


@dataclasses.dataclass
class LcbProblem:
    """One LiveCodeBench problem. Its private tests are decoded on first use of :attr:`tests`, so filtering a
    release by date or difficulty never inflates the tests of problems it drops."""

    question_id: str
    title: str
    content: str
    platform: str
    contest_id: str
    contest_date: str | None  # ISO date (YYYY-MM-DD) or None when the source has no dates
    difficulty: str
    starter_code: str
    func_name: str | None
    public_tests: list[dict[str, str]]
    private_payload: str = dataclasses.field(default="", repr=False)
    _private: list[dict[str, str]] | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def tests(self) -> list[dict[str, str]]:
        """All tests, public first, then the private ones (as LiveCodeBench grades them)."""
        if self._private is None:
            self._private = decode_private_tests(self.private_payload)
        return self.public_tests + self._private

    @property
    def mode(self) -> str:
        """``functional`` (call a method, LeetCode style) or ``stdin``."""
        tests = self.public_tests or self.tests
        if tests and tests[0].get("testtype") == "functional":
            return "functional"
        return "functional" if self.func_name and self.starter_code else "stdin"


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Builds only pickle's primitive types; any class or function reference is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def decode_private_tests(payload: str) -> list[dict[str, str]]:
    """LiveCodeBench's private tests: JSON, or base64(zlib(pickle(JSON string))), decoded without running code."""
    text = payload.strip()
    if not text:
        return []
    if text[0] in "[{":
        return _tests_from_json(_json(text, "private_test_cases"))
    try:
        compressed = base64.b64decode(text, validate=False)
        inflater = zlib.decompressobj()
        raw = inflater.decompress(compressed, MAX_DECODED_BYTES)
        if inflater.unconsumed_tail:
            raise TeenyError(f"livecodebench: private tests decompress to more than {MAX_DECODED_BYTES} bytes")
    except (ValueError, zlib.error) as exc:
        raise TeenyError(f"livecodebench: private_test_cases is neither JSON nor base64+zlib data ({exc})") from None
    try:
        value = _NoGlobalsUnpickler(io.BytesIO(raw)).load()
    except pickle.UnpicklingError as exc:
        raise TeenyError(f"livecodebench: refusing an unsafe private_test_cases pickle: {exc}") from None
    except Exception as exc:
        raise TeenyError(f"livecodebench: private_test_cases is not a valid pickle ({exc})") from None
    if isinstance(value, (bytes, str)):
        value = _json(value, "the pickled private_test_cases")
    return _tests_from_json(value)


def _json(text: Any, what: str) -> Any:
    """``text`` parsed as JSON; anything else (not text, not UTF-8, malformed, nested too deeply) is a one-line
    :class:`TeenyError` naming ``what``."""
    try:
        return json.loads(text)
    except (ValueError, TypeError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise TeenyError(f"livecodebench: {what} is not valid JSON text ({reason})") from None


def _tests_from_json(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not all(isinstance(t, dict) and "input" in t and "output" in t
                                              for t in value):
        raise TeenyError("livecodebench: test cases must be a list of {input, output, testtype} objects")
    return [{"input": str(t["input"]), "output": str(t["output"]), "testtype": str(t.get("testtype", "stdin"))}
            for t in value]


def _func_name_from_starter(starter: str) -> str | None:
    match = re.search(r"^\s*def\s+(\w+)\s*\(\s*self\b", starter, re.M) or re.search(r"def\s+(\w+)\s*\(", starter)
    return match.group(1) if match else None


def problem_from_record(record: dict[str, Any]) -> LcbProblem:
    """A code_generation_lite record (its JSON-string fields decoded; private tests when first used) as an
    :class:`LcbProblem`."""
    try:
        public = _tests_from_json(_json(record.get("public_test_cases") or "[]", "public_test_cases"))
        metadata = _json(record.get("metadata") or "{}", "metadata")
        if not isinstance(metadata, dict):
            raise TeenyError(f"livecodebench: record {record.get('question_id')!r} has metadata "
                             f"{str(metadata)[:60]}; expected a JSON object")
        date = record.get("contest_date")
        return LcbProblem(
            question_id=str(record["question_id"]), title=str(record.get("question_title", "")),
            content=str(record["question_content"]), platform=str(record.get("platform", "")),
            contest_id=str(record.get("contest_id", "")), contest_date=str(date)[:10] if date else None,
            difficulty=str(record.get("difficulty", "")), starter_code=str(record.get("starter_code") or ""),
            func_name=metadata.get("func_name"), public_tests=public,
            private_payload=str(record.get("private_test_cases") or ""))
    except KeyError as exc:
        raise TeenyError(f"livecodebench: record lacks field {exc.args[0]!r}") from None


def problem_from_public(record: dict[str, Any]) -> LcbProblem:
    """A record of the public-tests-only file ({problem, starter_code, tests}); its id hashes the text."""
    if "tests" not in record:
        raise TeenyError("livecodebench: a public-tests record lacks field 'tests'")
    content, starter = str(record["problem"]), str(record.get("starter_code") or "")
    tests = _tests_from_json(record["tests"])
    functional = bool(tests) and tests[0]["testtype"] == "functional"
    return LcbProblem(
        question_id="public-" + hashlib.sha256(content.encode()).hexdigest()[:12], title="", content=content,
        platform="leetcode" if functional else "", contest_id="", contest_date=None, difficulty="",
        starter_code=starter, func_name=_func_name_from_starter(starter) if functional else None,
        public_tests=tests)


def release_files(release: str) -> list[str]:
    """File names of a release: ``release_vN`` is cumulative, ``vN`` one increment."""
    if release == "release_latest":
        return list(RELEASE_FILES)
    match = re.fullmatch(r"(release_)?v([1-9])", release)
    if not match or int(match.group(2)) > len(RELEASE_FILES):
        raise TeenyError(f"livecodebench: unknown release {release!r}; expected release_v1..release_v"
                         f"{len(RELEASE_FILES)}, v1..v{len(RELEASE_FILES)} or release_latest")
    n = int(match.group(2))
    return RELEASE_FILES[:n] if match.group(1) else [RELEASE_FILES[n - 1]]


def _hub_files(names: list[str]) -> list[Path]:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise TeenyError("livecodebench: release= without path needs huggingface_hub (pip install "
                         "huggingface_hub), or pass path= to local jsonl files") from None
    out = []
    for name in names:
        try:
            out.append(Path(hf_hub_download(HUB_REPO, name, repo_type="dataset")))
        except Exception as exc:
            raise TeenyError(f"livecodebench: cannot get {name} of {HUB_REPO} from the hub or its cache "
                             f"({exc.__class__.__name__}); download it where a network exists, or pass path=") from None
    return out


def _read_file(path: Path) -> list[LcbProblem]:
    """A JSON array (the public-tests file) or JSONL records."""
    with open(path, "rb") as f:
        is_array = f.read(4096).lstrip().startswith(b"[")
    data = _json(path.read_bytes(), str(path)) if is_array else read_jsonl(path, "livecodebench")
    if not all(isinstance(r, dict) for r in data):
        raise TeenyError(f"livecodebench: {path} holds an item that is not an object; expected problem records")
    return [problem_from_public(r) if isinstance(r, dict) and "problem" in r else problem_from_record(r)
            for r in data]


def load_problems(path: str = "", release: str = "") -> list[LcbProblem]:
    """Problems from a file, a directory (``test*.jsonl``, or the release's files in it) or the hub cache."""
    if not path and not release:
        raise TeenyError("livecodebench: set path= (a code_generation_lite jsonl file or directory, or the "
                         "public livecodebench.json) or release= (release_v1..release_v6, from the hub)")
    if path:
        root = Path(path).expanduser()
        if root.is_dir():
            names = release_files(release) if release else sorted(
                (p.name for p in root.glob("test*.jsonl")), key=lambda n: (len(n), n))
            files = [root / n for n in names]
            missing = [str(f) for f in files if not f.is_file()]
            if missing or not files:
                raise TeenyError(f"livecodebench: {root} lacks {', '.join(missing) or 'test*.jsonl files'}")
        elif root.is_file():
            files = [root]
        else:
            raise TeenyError(f"livecodebench: path {path!r} does not exist")
    else:
        files = _hub_files(release_files(release))
    problems: list[LcbProblem] = []
    seen: set[str] = set()
    for file in files:
        for problem in _read_file(file):
            if problem.question_id not in seen:
                seen.add(problem.question_id)
                problems.append(problem)
    return problems


def _day(value: str, name: str) -> str:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise TeenyError(f"livecodebench: option {name}={value!r} is not a date; expected YYYY-MM-DD")
    return value


def filter_problems(problems: list[LcbProblem], *, start_date: str = "", end_date: str = "",
                    difficulty: Iterable[str] = (), platform: Iterable[str] = ()) -> list[LcbProblem]:
    """The contamination window (inclusive, on contest_date) and difficulty/platform filters."""
    start = _day(start_date, "start_date") if start_date else ""
    end = _day(end_date, "end_date") if end_date else ""
    if (start or end) and any(p.contest_date is None for p in problems):
        raise TeenyError("livecodebench: start_date/end_date need contest_date, which these records lack "
                         "(the public-tests-only file has no dates)")
    levels = {d.lower() for d in difficulty}
    bad = levels - {"easy", "medium", "hard"}
    if bad:
        raise TeenyError(f"livecodebench: unknown difficulty {sorted(bad)[0]!r}; expected easy, medium or hard")
    platforms = {p.lower() for p in platform}
    out = []
    for p in problems:
        if start and p.contest_date < start:  # type: ignore[operator]
            continue
        if end and p.contest_date > end:  # type: ignore[operator]
            continue
        if levels and p.difficulty.lower() not in levels:
            continue
        if platforms and p.platform.lower() not in platforms:
            continue
        out.append(p)
    return out


def chat_user_message(problem: LcbProblem) -> str:
    """LiveCodeBench's generic question template (the user turn of its chat prompt)."""
    text = f"### Question:\n{problem.content}\n\n"
    if problem.starter_code:
        text += f"### Format: {FORMAT_WITH_STARTER}\n```python\n{problem.starter_code}\n```\n\n"
    else:
        text += f"### Format: {FORMAT_WITHOUT_STARTER}\n```python\n# YOUR CODE HERE\n```\n\n"
    return text + "### Answer: (use the provided format with backticks)\n\n"


def base_prompt(problem: LcbProblem) -> str:
    """A one-shot completion prompt for base models; the answer is expected in a fenced block."""
    example = BASE_EXAMPLE_FUNCTIONAL if problem.starter_code else BASE_EXAMPLE_STDIN

    def block(question: str, starter: str, answer: str) -> str:
        text = f"### Question\n{question}\n\n"
        if problem.starter_code:
            text += f"### Starter Code\n{starter}\n\n"
        text += "### Answer\n\n" + answer
        return text + ("\n\n" if answer else "")

    return block(example["question"], example["starter"], example["answer"]) + block(
        problem.content, problem.starter_code, "")


def render_chat(tokenizer: Any, system: str, user: str) -> str:
    """The chat template applied to (system, user); templates without a system role get it in the user turn."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise TeenyError("livecodebench: the model's tokenizer has no chat template; use prompt_style=base")
    try:
        return tokenizer.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": user}],
                                             tokenize=False, add_generation_prompt=True)
    except Exception:
        return tokenizer.apply_chat_template([{"role": "user", "content": f"{system}\n\n{user}"}],
                                             tokenize=False, add_generation_prompt=True)


def build_prompt(problem: LcbProblem, style: str, tokenizer: Any) -> str:
    """The prompt for ``style`` ``completion`` (one-shot, base models) or ``chat``."""
    if style == "completion":
        return base_prompt(problem)
    return render_chat(tokenizer, SYSTEM_MESSAGE, chat_user_message(problem))


def extract_code(text: str) -> str:
    """The first fenced block (LiveCodeBench: the lines between the first two lines holding a fence)."""
    lines = text.split("\n")
    fences = [i for i, line in enumerate(lines) if "```" in line]
    if len(fences) < 2:
        return ""
    return "\n".join(lines[fences[0] + 1:fences[1]])


def grading_job(problem: LcbProblem, code: str, options: LcbOptions) -> tuple[list[str], dict[str, Any]]:
    """A sandbox job that runs the harness on ``code`` with the problem's test inputs (never the outputs)."""
    from teeny_bench.humaneval import harness_files
    from teeny_bench.sandbox import Limits

    spec = {"mode": problem.mode, "func_name": problem.func_name, "timeout": options.timeout,
            "all_tests": options.all_tests, "inputs": [t["input"] for t in problem.tests]}
    tests_budget = (options.timeout + 0.5) * max(1, len(problem.tests)) + 10
    limits = Limits(cpu_seconds=tests_budget, wall_seconds=tests_budget,
                    memory_bytes=int(options.memory_gb * (1 << 30)), processes=64)
    files = harness_files("lcb_harness.py", **{"solution.py": code, "problem.json": json.dumps(spec)})
    env = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return [sys.executable, "-I", "harness.py"], {"files": files, "limits": limits, "env": env}


def verdict_from_report(problem: LcbProblem, result: Any, report: dict[str, Any] | None,
                        all_tests: bool = False) -> dict[str, Any]:
    """The verdict of one graded program: the harness's reported answers compared here with the expected outputs
    (or what the sandbox saw when the harness did not report)."""
    from teeny_bench import _channel, lcb_harness as harness

    tests = problem.tests
    if report is None:
        category, detail = errors.classify_harness(result, None)
        verdict = {"timeout": "timeout", "memory": "memory", errors.EARLY_EXIT: errors.EARLY_EXIT}.get(
            category if category == errors.EARLY_EXIT else result.status, "runtime_error")
        return {"verdict": verdict, "error": result.status, "tests_total": len(tests), "tests_run": 0,
                "tests_passed": 0, "detail": f"the grading run ended with status {result.status!r} "
                                             f"({result.reason}) without the harness's report: {detail[-300:]}"}
    malformed = lcb_report_problem(report, len(tests))
    if malformed:
        return {"verdict": "runtime_error", "error": "malformed_report", "tests_total": len(tests), "tests_run": 0,
                "tests_passed": 0, "detail": f"malformed report: {malformed}"}
    if "compile_error" in report:
        return {"verdict": "compile_error", "tests_total": len(tests), "tests_run": 0, "tests_passed": 0,
                **report["compile_error"]}
    verdict = {"verdict": "passed", "tests_total": len(tests), "tests_run": 0, "tests_passed": 0}
    for index, (test, outcome) in enumerate(zip(tests, report["results"])):
        verdict["tests_run"] += 1
        error, why = outcome.get("error"), outcome.get("detail", "")
        if error is None:
            if "returned" in outcome:
                ok = harness.returned_matches(outcome["returned"], test["output"], _channel.from_tree,
                                              _channel.measure)
                why = "" if ok else (f"returned {_answer_text(outcome['returned'])}, expected "
                                     f"{harness.truncate(test['output'])}")
            elif "printed_sha256" in outcome:
                ok = outcome["printed_sha256"] == harness.lines_digest(test["output"])
                why = "" if ok else "printed over 1 MiB that differs from the expected output (compared by digest)"
            else:
                ok, why = harness.stdout_matches(outcome.get("printed", ""), test["output"])
            if ok:
                verdict["tests_passed"] += 1
                continue
        if verdict["verdict"] == "passed":
            verdict["verdict"] = ("timeout" if error == "Timeout" else "wrong_answer" if not error
                                  else "runtime_error")
            verdict["error"] = error
            verdict["failed_test"] = index
            verdict["detail"] = (f"test {index + 1}/{len(tests)}: {why}; "
                                 f"input {harness.truncate(test['input'], 200)!r}")
        if not all_tests:
            break
    if verdict["verdict"] == "passed" and verdict["tests_run"] < len(tests):
        verdict.update(verdict="runtime_error", error="incomplete",
                       detail=f"the harness reported {verdict['tests_run']} of {len(tests)} tests")
    return verdict


def lcb_report_problem(report: dict[str, Any], tests: int) -> str:
    """What is malformed in a LiveCodeBench harness report (``""`` when it is well formed): a ``compile_error``
    of strings, or ``results``, a list of at most ``tests`` outcomes, each with a str ``error`` and ``detail``
    or one answer: ``returned`` (a value tree that decodes, or a digest), ``printed`` or ``printed_sha256``."""
    from teeny_bench import _channel
    from teeny_bench.lcb_harness import truncate

    if "compile_error" in report:
        error = report["compile_error"]
        ok = type(error) is dict and all(type(error.get(k)) is str for k in ("error", "detail"))
        return "" if ok else "compile_error is not an error and its detail"
    results = report.get("results")
    if type(results) is not list or len(results) > tests:
        return f"results is {truncate(results, 60)}, not a list of at most {tests} outcomes"
    for i, outcome in enumerate(results):
        if type(outcome) is not dict:
            return f"outcome #{i} is {truncate(outcome, 60)}"
        if outcome.get("error") is not None:
            if type(outcome["error"]) is not str or type(outcome.get("detail", "")) is not str:
                return f"outcome #{i} has a malformed error"
        elif "returned" in outcome:
            problem = _channel.encoding_problem(outcome["returned"])
            if problem:
                return f"outcome #{i} returned {truncate(outcome['returned'], 60)}: {problem}"
        elif "printed_sha256" in outcome:
            if type(outcome["printed_sha256"]) is not str:
                return f"outcome #{i} has a malformed digest"
        elif type(outcome.get("printed")) is not str:
            return f"outcome #{i} has no answer"
    return ""


def _answer_text(encoded: dict[str, Any]) -> str:
    from teeny_bench import _channel, lcb_harness

    if "v" in encoded:
        return lcb_harness.truncate(_channel.from_tree(encoded["v"]))
    return f"<{encoded['size']} bytes, sha256 {encoded['sha256'][:12]}>"


def categorize(verdict: dict[str, Any], code: str, finish_reason: str | None) -> str:
    """One error category (:mod:`teeny_bench.errors`) per graded sample."""
    v = verdict["verdict"]
    if v == "passed":
        category = errors.PASSED
    elif v == "compile_error":
        category = errors.SYNTAX_ERROR
    elif v == "wrong_answer":
        category = errors.WRONG_ANSWER
    elif v == "timeout":
        category = errors.TIMEOUT
    elif v == errors.EARLY_EXIT:
        category = errors.EARLY_EXIT
    elif v == "memory" or verdict.get("error") == "MemoryError":
        category = errors.MEMORY
    elif verdict.get("error") in errors.NAME_EXCEPTIONS:
        category = errors.NAME_ERROR
    else:
        category = errors.RUNTIME_ERROR
    return errors.refine_for_generation(category, code, finish_reason)


def grade_programs(problems: list[LcbProblem], codes: list[str], options: LcbOptions) -> list[dict[str, Any]]:
    """Grade ``codes[i]`` against ``problems[i]`` in parallel sandboxes: the harness verdicts (+ seconds)."""
    from teeny_bench.humaneval import run_harnessed

    jobs = [grading_job(p, c, options) for p, c in zip(problems, codes)]
    out = []
    for problem, (result, report) in zip(problems, run_harnessed(jobs, options.workers or None)):
        verdict = verdict_from_report(problem, result, report, options.all_tests)
        verdict["seconds"] = result.seconds
        out.append(verdict)
    return out


def grade_answers(items: list[tuple[LcbProblem, str]], options: LcbOptions) -> list[dict[str, Any]]:
    """The outcome of each ``(problem, code)`` answer for its record: graded in the sandbox, or ``empty`` when
    the answer held no code."""
    codes = [(p, c) for p, c in items if c.strip()]
    verdicts = iter(grade_programs([p for p, _ in codes], [c for _, c in codes], options))
    out = []
    for problem, code in items:
        verdict = next(verdicts) if code.strip() else {
            "verdict": "empty", "tests_run": 0, "tests_passed": 0, "seconds": 0.0,
            "detail": "no fenced code block in the answer"}
        out.append({"passed": verdict["verdict"] == "passed", "verdict": verdict["verdict"],
                     "category": categorize(verdict, code, None), "detail": verdict.get("detail", ""),
                     "tests_total": len(problem.tests), "tests_run": verdict.get("tests_run", 0),
                     "tests_passed": verdict.get("tests_passed", 0), "seconds": verdict.get("seconds")})
    return out


class LiveCodeBenchEvaluator(Evaluator[LcbOptions]):
    """LiveCodeBench code generation (stdin and LeetCode-style problems), pass@1 and pass@5, sandboxed."""

    name = "livecodebench"
    Options = LcbOptions
    metrics = {"pass@1": Metric("pass@1", higher_is_better=True, item_field="passed"),
               "pass@5": Metric("pass@5", higher_is_better=True)}
    headline = "pass@1"

    def problems(self, options: LcbOptions, limit: int | None = None) -> list[LcbProblem]:
        problems = filter_problems(load_problems(options.path, options.release), start_date=options.start_date,
                                   end_date=options.end_date, difficulty=options.difficulty,
                                   platform=options.platform)
        caps = [c for c in (limit, options.limit) if c]
        return problems[:min(caps)] if caps else problems

    def evaluate(self, model: LoadedModel, options: LcbOptions, ctx: EvalContext) -> None:
        options.check_sampling(self.name)
        task = CodeTask(
            name=self.name, problem_id=lambda p: p.question_id, prompt=build_prompt, stop=lambda p: BASE_STOP,
            program=lambda p, text, style: extract_code(text), grade=lambda items: grade_answers(items, options),
            fields=lambda p: {"task_id": p.question_id, "title": p.title, "platform": p.platform,
                              "contest_date": p.contest_date, "difficulty": p.difficulty, "mode": p.mode})
        generate_and_grade(task, model, options, options.prompt_style, ctx, self.problems(options, ctx.limit))

    def summarize(self, records: list[dict[str, Any]], options: Options) -> dict[str, Any]:
        """pass@1 and pass@5 (unbiased, where n allows), per-difficulty pass@1, error categories."""
        from teeny_bench.humaneval import pass_at_k, summarize_records

        metrics = {k: v for k, v in summarize_records(records).items() if not k.startswith("pass@10")}
        by_problem: dict[str, list[dict[str, Any]]] = {}
        for r in records:
            by_problem.setdefault(r["task_id"], []).append(r)
        if by_problem and min(len(rs) for rs in by_problem.values()) >= 5:
            metrics["pass@5"] = sum(pass_at_k(len(rs), sum(bool(r["passed"]) for r in rs), 5)
                                    for rs in by_problem.values()) / len(by_problem)
        for level in ("easy", "medium", "hard"):
            groups = [rs for rs in by_problem.values() if rs[0].get("difficulty") == level]
            if groups:
                metrics[f"pass@1/{level}"] = sum(pass_at_k(len(rs), sum(bool(r["passed"]) for r in rs), 1)
                                                 for rs in groups) / len(groups)
                metrics[f"problems/{level}"] = len(groups)
        return metrics


def oracle_program(problem: LcbProblem, correct: bool = True) -> str:
    """A program that answers the problem's own tests from a lookup table (or, if not ``correct``, answers
    each one wrongly): known-correct and known-wrong programs for proving the grading path end to end."""
    if problem.mode == "functional":
        table = {json.dumps([json.loads(line) for line in t["input"].split("\n") if line.strip()]):
                 json.loads(t["output"])
                 for t in problem.tests}
        answer = "ANSWERS[json.dumps(list(args))]" if correct else "[ANSWERS[json.dumps(list(args))], 'wrong']"
        return (f"import json\nANSWERS = json.loads({json.dumps(json.dumps(table))})\n"
                f"class Solution:\n    def {problem.func_name}(self, *args):\n        return {answer}\n")
    table = {t["input"]: t["output"] for t in problem.tests}
    suffix = "" if correct else " + '\\nwrong'"
    return (f"import json, sys\nANSWERS = json.loads({json.dumps(json.dumps(table))})\n"
            f"sys.stdout.write(ANSWERS[sys.stdin.read()]{suffix})\n")


def check_command(args: Any) -> bool:
    """``teeny bench check livecodebench --path FILE_OR_DIR [-o release=release_v6] [--limit N]``.

    Loads and decodes every record (private tests included) and prints what is there; then, for the first N
    problems (default 20), grades a known-correct program (it answers each test from a lookup table of the
    problem's own tests) and a known-wrong one through the real harness and sandbox: every correct one must
    pass and every wrong one must be a wrong answer. This proves decoding, stdin feeding, functional calls,
    output comparison and the sandbox on this machine; it says nothing about any model."""
    import click

    release = str(args.extra.get("release", ""))
    started = time.monotonic()
    problems = load_problems(args.path or "", release)
    modes = {m: sum(1 for p in problems if p.mode == m) for m in ("stdin", "functional")}
    tests = sum(len(p.tests) for p in problems)
    dates = sorted(p.contest_date for p in problems if p.contest_date)
    levels = {}
    for p in problems:
        levels[p.difficulty or "unknown"] = levels.get(p.difficulty or "unknown", 0) + 1
    click.echo(f"  loaded {len(problems)} problems ({modes['stdin']} stdin, {modes['functional']} functional), "
               f"{tests} tests, in {time.monotonic() - started:.1f} s")
    click.echo(f"  contest dates: {dates[0]} .. {dates[-1]}" if dates else "  contest dates: none in these records")
    click.echo("  difficulty: " + ", ".join(f"{k} {v}" for k, v in sorted(levels.items())))
    sample = [p for p in problems if p.tests][:args.limit or 20]
    options = LcbOptions(timeout=args.timeout or 6.0, workers=args.workers or 0)
    right = grade_programs(sample, [oracle_program(p, True) for p in sample], options)
    wrong = grade_programs(sample, [oracle_program(p, False) for p in sample], options)
    passed = sum(v["verdict"] == "passed" for v in right)
    clean = sum(v["verdict"] == "wrong_answer" for v in wrong)
    for p, r, w in zip(sample, right, wrong):
        if r["verdict"] != "passed" or w["verdict"] != "wrong_answer" or args.verbose:
            click.echo(f"  {p.question_id} ({p.mode}): correct program {r['verdict']}, wrong program {w['verdict']}"
                       f" {(r.get('detail') or w.get('detail') or '')[:200]}")
    click.echo(f"livecodebench: correct programs passed {passed}/{len(sample)}, wrong programs failed with a wrong "
               f"answer {clean}/{len(sample)} ({time.monotonic() - started:.1f} s)")
    return passed == clean == len(sample) and bool(sample)
