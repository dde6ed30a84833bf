"""The ``humaneval-mul`` evaluator: HumanEval in eight languages (MultiPL-E records), run with real toolchains.

Data: one ``humaneval-<lang>.jsonl`` file per language (DeepSeek-Coder's Evaluation/HumanEval/data names;
MultiPL-E's ``humaneval-<lang>-reworded.jsonl`` works too) in the ``path`` directory, or one such file.
MultiPL-E records have ``name``, ``language``, ``prompt``, ``tests``, ``stop_tokens``; the Python file is in
HumanEval's own format (``task_id``, ``prompt``, ``test`` ending in ``check(...)``). The data is not shipped:
MultiPL-E's terms forbid training or calibrating on it.

A program is ``prompt + completion + "\\n" + tests`` (Python: a few standard imports first, as
DeepSeek-Coder's harness adds), built and run in the sandbox with the language's toolchain
(:mod:`teeny_bench.toolchains`). As in MultiPL-E, exit status 0 passes, a compiler error is a syntax error,
and anything else fails; C# (Mono) also fails when a ``Debug.Assert`` reported a failure. A language whose
toolchain is missing is skipped: its records say ``skipped_toolchain`` and pass@k leaves them out.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from pathlib import Path
from typing import Any

from teeny_core.errors import TeenyError
from teeny_core.options import Options, option
from teeny_core.types import EvalContext, Evaluator, LoadedModel
from teeny_bench import toolchains
from teeny_bench.toolchains import LANGUAGES, Toolchain

FILE_NAMES = {"python": ["humaneval-python.jsonl", "humaneval-py.jsonl", "humaneval-py-reworded.jsonl"],
              "java": ["humaneval-java.jsonl", "humaneval-java-reworded.jsonl"],
              "cpp": ["humaneval-cpp.jsonl", "humaneval-cpp-reworded.jsonl"],
              "cs": ["humaneval-cs.jsonl", "humaneval-cs-reworded.jsonl"],
              "js": ["humaneval-js.jsonl", "humaneval-js-reworded.jsonl"],
              "ts": ["humaneval-ts.jsonl", "humaneval-ts-reworded.jsonl"],
              "php": ["humaneval-php.jsonl", "humaneval-php-reworded.jsonl"],
              "sh": ["humaneval-sh.jsonl", "humaneval-sh-reworded.jsonl"]}
PYTHON_STOP = ["\ndef", "\n#", "\nif", "\nclass"]  # MultiPL-E's Python stop tokens
PYTHON_HEADER = ("import math\nimport re\nimport sys\nimport copy\nimport datetime\nimport itertools\n"
                 "import collections\nimport heapq\nimport functools\nimport hashlib\nimport string\n"
                 "from typing import *\nfrom collections import *\n")
FENCES = {"python": "python", "java": "java", "cpp": "cpp", "cs": "csharp", "js": "javascript",
          "ts": "typescript", "php": "php", "sh": "bash"}
SKIPPED = "skipped_toolchain"


@dataclasses.dataclass
class MulOptions(Options):
    path: str = option("", "a directory of humaneval-<lang>.jsonl files (DeepSeek-Coder/MultiPL-E names) or one "
                           "such file")
    languages: list[str] = option(list(LANGUAGES), "languages to evaluate: python, java, cpp, cs, js, ts, php, sh")
    limit: int | None = option(None, "evaluate at most this many problems per language", min=1)
    n: int = option(1, "samples per problem (pass@k for k in 1, 10, 100 where n allows)", min=1)
    temperature: float = option(0.0, "sampling temperature (0 = greedy)", min=0.0)
    max_new_tokens: int = option(512, "generation budget per sample", min=1)
    prompt_style: str = option("completion", "completion: continue the prompt (base models); chat: ask for the "
                                             "whole function in a code block (instruct models)",
                               choices=("completion", "chat"))
    timeout: float = option(10.0, "seconds a program may run (compiling gets the toolchain's own budget)", min=0.1)
    batch_size: int = option(8, "prompts generated per batch", min=1)


@dataclasses.dataclass
class MulProblem:
    """One problem in one language."""

    language: str
    task_id: str
    problem: int | None  # the HumanEval number (pairs a problem across languages)
    prompt: str
    tests: str
    stop_tokens: list[str]

    @property
    def key_id(self) -> str:
        return f"{self.language}/{self.task_id}"


def _humaneval_number(task_id: str) -> int | None:
    match = re.search(r"(?:HumanEval|Python|[A-Za-z]+)[/_](\d+)", task_id)
    return int(match.group(1)) if match else None


def problem_from_record(record: dict[str, Any], language: str | None = None) -> MulProblem:
    """A MultiPL-E or HumanEval-format record as a :class:`MulProblem`."""
    lang = toolchains.canonical_language(record.get("language") or language or
                                         str(record.get("task_id", "")).split("/")[0])
    task_id = str(record.get("name") or record.get("task_id") or "")
    if "prompt" not in record or not task_id:
        raise TeenyError(f"humaneval-mul: a {lang} record lacks 'prompt' or 'name'/'task_id'")
    tests = record.get("tests") if record.get("tests") is not None else record.get("test")
    if tests is None:
        raise TeenyError(f"humaneval-mul: record {task_id!r} has neither 'tests' nor 'test'")
    if lang == "python" and "entry_point" in record and f"check({record['entry_point']})" not in tests:
        tests = f"{tests}\ncheck({record['entry_point']})\n"  # HumanEval's own format leaves the call out
    stop = list(record.get("stop_tokens") or [])
    if lang == "python" and not stop:
        stop = list(PYTHON_STOP)
    return MulProblem(lang, task_id, _humaneval_number(task_id), record["prompt"], tests, stop)


def _read_jsonl(path: Path, language: str | None) -> list[MulProblem]:
    problems = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            problems.append(problem_from_record(json.loads(line), language))
        except json.JSONDecodeError as exc:
            raise TeenyError(f"humaneval-mul: {path}:{number} is not valid JSON ({exc.msg})") from None
    return problems


def language_files(path: str, languages: list[str]) -> dict[str, Path]:
    """``{language: file}`` for the requested languages found at ``path`` (a directory or one file)."""
    if not path:
        raise TeenyError("humaneval-mul: set path= to a directory of humaneval-<lang>.jsonl files (e.g. "
                         "DeepSeek-Coder's Evaluation/HumanEval/data) or to one such file")
    root = Path(path).expanduser()
    wanted = [toolchains.canonical_language(lang) for lang in languages]
    if root.is_file():
        first = next((json.loads(l) for l in root.read_text(encoding="utf-8").splitlines() if l.strip()), None)
        if first is None:
            raise TeenyError(f"humaneval-mul: {root} is empty")
        lang = toolchains.canonical_language(first.get("language") or _language_from_name(root.name)
                                             or str(first.get("task_id", "")).split("/")[0])
        return {lang: root} if lang in wanted else {}
    if not root.is_dir():
        raise TeenyError(f"humaneval-mul: path {path!r} does not exist")
    found = {}
    for lang in wanted:
        file = next((root / n for n in FILE_NAMES[lang] if (root / n).is_file()), None)
        if file is not None:
            found[lang] = file
    if not found:
        raise TeenyError(f"humaneval-mul: {root} has none of {', '.join(FILE_NAMES[w][0] for w in wanted)}")
    return found


def _language_from_name(name: str) -> str | None:
    match = re.match(r"humaneval-([a-z+#]+?)(?:-reworded|-keep|-transform)?\.jsonl$", name)
    return match.group(1) if match else None


def load_problems(path: str, languages: list[str], limit: int | None = None) -> dict[str, list[MulProblem]]:
    """``{language: problems}`` (at most ``limit`` per language), in the files' order."""
    out = {}
    for lang, file in language_files(path, languages).items():
        problems = [p for p in _read_jsonl(file, lang) if p.language == lang]
        out[lang] = problems[:limit] if limit else problems
    return out


def assemble(problem: MulProblem, completion: str) -> str:
    """The program MultiPL-E runs: prompt + completion + tests (Python: standard imports first)."""
    program = problem.prompt + completion + "\n" + problem.tests
    return PYTHON_HEADER + program if problem.language == "python" else program


def truncate_at_stop(text: str, stop_tokens: list[str]) -> str:
    cut = min((i for i in (text.find(s) for s in stop_tokens) if i >= 0), default=len(text))
    return text[:cut]


def chat_message(problem: MulProblem) -> str:
    """The instruction for chat models: complete the function, answer in one fenced block."""
    lang = toolchains.DISPLAY_NAMES[problem.language]
    return (f"Complete the following {lang} function. Reply with the complete function (signature and body) in "
            f"a single ```{FENCES[problem.language]} code block.\n```{FENCES[problem.language]}\n"
            f"{problem.prompt.strip()}\n```")


def _signature(problem: MulProblem) -> str:
    lines = [l for l in problem.prompt.splitlines() if l.strip()]
    if problem.language == "python":
        defs = [l for l in lines if l.lstrip().startswith("def ")]
        return defs[-1].strip() if defs else ""
    return lines[-1].strip() if lines else ""


def completion_from_chat(problem: MulProblem, answer: str) -> str:
    """The body a chat answer gives: the first fenced block after the prompt's signature line, cut at a stop token."""
    lines = answer.split("\n")
    fences = [i for i, l in enumerate(lines) if l.strip().startswith("```")]
    block = lines[fences[0] + 1:fences[1]] if len(fences) >= 2 else lines
    signature = _signature(problem)
    name = re.search(r"(\w+)\s*\(", signature)
    start = next((i for i, l in enumerate(block) if l.strip() == signature), None)
    if start is None and name:
        start = next((i for i, l in enumerate(block) if re.search(rf"\b{re.escape(name.group(1))}\s*\(", l)
                      and not l.lstrip().startswith(("//", "#", "*"))), None)
    body = "\n".join(block[start + 1:] if start is not None else block)
    if problem.language == "python" and start is not None:
        body = _skip_docstring(body)
    return truncate_at_stop("\n" + body, problem.stop_tokens)[1:] if body else ""


def _skip_docstring(body: str) -> str:
    match = re.match(r'\s*(?:"""|\'\'\')[\s\S]*?(?:"""|\'\'\')[ \t]*\n', body)
    return body[match.end():] if match else body


def _tail(text: str, length: int = 600) -> str:
    """The start and the end of a long message (compilers put the cause first, runtimes the exception last)."""
    text = text.strip()
    half = length // 2
    return text if len(text) <= length else text[:half] + " ... " + text[-half:]


_PY_ERROR = re.compile(r"^(\w+(?:\.\w+)*(?:Error|Exception|Exit|Interrupt|Warning))\b", re.M)


def classify(toolchain: Toolchain, result: Any) -> tuple[bool, str, str]:
    """``(passed, category, detail)`` for one program's sandbox result."""
    from teeny_bench import errors

    stderr, stdout = result.stderr or "", result.stdout or ""
    if result.status == "timeout":
        return False, errors.TIMEOUT, f"timed out after {result.seconds:.1f} s"
    if result.status == "memory":
        return False, errors.MEMORY, "memory limit exceeded"
    if toolchain.compile_failed(stderr):
        return False, errors.SYNTAX_ERROR, _tail(stderr)
    asserted = any(marker in stderr for marker in toolchain.assertion_markers)
    if result.status == "ok" and result.returncode == 0 and not asserted:
        return True, errors.PASSED, ""
    detail = _tail(stderr or stdout) or f"exit status {result.returncode}"
    lang = toolchain.language
    if asserted:
        return False, errors.WRONG_ANSWER, detail
    if lang == "python":
        names = _PY_ERROR.findall(stderr)
        kind = names[-1] if names else ""
        if kind == "AssertionError":
            return False, errors.WRONG_ANSWER, detail
        if kind in ("SyntaxError", "IndentationError", "TabError"):
            return False, errors.SYNTAX_ERROR, detail
        if kind in ("NameError", "ImportError", "ModuleNotFoundError", "UnboundLocalError"):
            return False, errors.NAME_ERROR, detail
        if kind == "MemoryError":
            return False, errors.MEMORY, detail
        return False, errors.RUNTIME_ERROR, f"{kind}: {detail}" if kind else detail
    if lang == "java":
        if "java.lang.AssertionError" in stderr:
            return False, errors.WRONG_ANSWER, detail
        if "java.lang.OutOfMemoryError" in stderr:
            return False, errors.MEMORY, detail
        return False, errors.RUNTIME_ERROR, detail
    if lang == "cpp":
        if re.search(r"Assertion .* failed", stderr):
            return False, errors.WRONG_ANSWER, detail
        if "std::bad_alloc" in stderr:
            return False, errors.MEMORY, detail
        return False, errors.RUNTIME_ERROR, detail
    if lang == "cs":
        return False, errors.RUNTIME_ERROR, detail
    if lang in ("js", "ts"):
        if "AssertionError" in stderr or "ERR_ASSERTION" in stderr:
            return False, errors.WRONG_ANSWER, detail
        if re.search(r"^SyntaxError\b", stderr, re.M):
            return False, errors.SYNTAX_ERROR, detail
        if re.search(r"^ReferenceError\b", stderr, re.M):
            return False, errors.NAME_ERROR, detail
        if "heap out of memory" in stderr:
            return False, errors.MEMORY, detail
        return False, errors.RUNTIME_ERROR, detail
    if lang == "php":
        if "Test failed!" in stderr + stdout:
            return False, errors.WRONG_ANSWER, detail
        if "Parse error" in stderr + stdout:
            return False, errors.SYNTAX_ERROR, detail
        if "Call to undefined function" in stderr + stdout:
            return False, errors.NAME_ERROR, detail
        if "Allowed memory size" in stderr + stdout:
            return False, errors.MEMORY, detail
        return False, errors.RUNTIME_ERROR, detail
    # Bash: the tests are `[[ ... ]]` under `set -e`, so a wrong answer is a silent non-zero exit.
    if "syntax error" in stderr:
        return False, errors.SYNTAX_ERROR, detail
    if "command not found" in stderr:
        return False, errors.NAME_ERROR, detail
    return False, errors.WRONG_ANSWER, detail


def sandbox_job(toolchain: Toolchain, program: str, timeout: float) -> tuple[list[str], dict[str, Any]]:
    """The sandbox job that builds and runs one program, with the toolchain's limits."""
    from teeny_bench.sandbox import Limits

    argv, files = toolchain.job(program)
    budget = timeout + (toolchain.compile_seconds if toolchain.compile is not None or
                        toolchain.language == "java" else 0.0)
    limits = Limits(cpu_seconds=budget, wall_seconds=budget + 5, memory_bytes=toolchain.memory_bytes,
                    processes=toolchain.processes)
    return argv, {"files": files, "limits": limits, "env": toolchain.sandbox_env()}


def run_programs(items: list[tuple[MulProblem, str]], timeout: float = 10.0,
                 path: str | None = None) -> list[dict[str, Any]]:
    """Grade ``(problem, completion)`` pairs in parallel sandboxes: passed, category, detail, seconds."""
    from teeny_bench.sandbox import run_many

    chains = {lang: toolchains.prepared(toolchains.detect(lang, path)) for lang in {p.language for p, _ in items}}
    runnable = [i for i, (p, _) in enumerate(items) if chains[p.language].available]
    jobs = [sandbox_job(chains[items[i][0].language], assemble(*items[i]), timeout) for i in runnable]
    results = dict(zip(runnable, run_many(jobs) if jobs else []))
    out = []
    for i, (problem, _) in enumerate(items):
        chain = chains[problem.language]
        if i not in results:
            out.append({"passed": False, "category": SKIPPED, "seconds": 0.0,
                        "detail": f"{chain.name} toolchain not installed (missing: {', '.join(chain.missing)})"})
            continue
        passed, category, detail = classify(chain, results[i])
        out.append({"passed": passed, "category": category, "detail": detail, "seconds": results[i].seconds})
    return out


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimator (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


class HumanEvalMulEvaluator(Evaluator):
    """HumanEval in Python, Java, C++, C#, JavaScript, TypeScript, PHP and Bash (MultiPL-E), real toolchains."""

    name = "humaneval-mul"
    Options = MulOptions

    def evaluate(self, model: LoadedModel, options: Options, ctx: EvalContext) -> None:
        assert isinstance(options, MulOptions)
        limits = [c for c in (ctx.limit, options.limit) if c]
        by_lang = load_problems(options.path, options.languages, min(limits) if limits else None)
        done = ctx.done()
        todo = [(p, s) for s in range(options.n) for problems in by_lang.values() for p in problems
                if f"{p.key_id}/{s}" not in done]
        if not todo:
            return
        chains = {lang: toolchains.detect(lang) for lang in by_lang}
        with ctx.progress(len(todo), "humaneval-mul") as bar:
            skipped = [(p, s) for p, s in todo if not chains[p.language].available]
            for problem, s in skipped:  # nothing to generate: the language cannot be graded here
                chain = chains[problem.language]
                self._write(ctx, problem, s, "", "", None, {
                    "passed": False, "category": SKIPPED, "seconds": 0.0,
                    "detail": f"{chain.name} toolchain not installed (missing: {', '.join(chain.missing)})"})
                bar.advance(1)
            runnable = [(p, s) for p, s in todo if chains[p.language].available]
            for start in range(0, len(runnable), options.batch_size):
                batch = runnable[start:start + options.batch_size]
                prompts = [self._prompt(p, options, model) for p, _ in batch]
                generations: list[Any] = [None] * len(batch)
                by_sample: dict[tuple[int, tuple[str, ...]], list[int]] = {}
                for i, (p, s) in enumerate(batch):
                    stop = tuple(p.stop_tokens) if options.prompt_style == "completion" else ()
                    by_sample.setdefault((s, stop), []).append(i)
                for (s, stop), idx in by_sample.items():
                    outs = model.generate([prompts[i] for i in idx], max_new_tokens=options.max_new_tokens,
                                          temperature=options.temperature, stop=list(stop) or None,
                                          seed=ctx.seed + s)
                    for i, g in zip(idx, outs):
                        generations[i] = g
                completions = [truncate_at_stop(g.text, p.stop_tokens) if options.prompt_style == "completion"
                               else completion_from_chat(p, g.text) for (p, _), g in zip(batch, generations)]
                graded = run_programs([(p, c) for (p, _), c in zip(batch, completions)], options.timeout)
                for (problem, s), prompt, gen, completion, outcome in zip(batch, prompts, generations,
                                                                          completions, graded):
                    outcome = self._empty_or_truncated(completion, gen, outcome)
                    self._write(ctx, problem, s, prompt, completion, gen, outcome)
                    bar.advance(1)

    @staticmethod
    def _prompt(problem: MulProblem, options: MulOptions, model: LoadedModel) -> str:
        if options.prompt_style == "completion":
            return problem.prompt
        tokenizer = model.tokenizer
        if getattr(tokenizer, "chat_template", None) is None:
            raise TeenyError("humaneval-mul: the model's tokenizer has no chat template; use "
                             "prompt_style=completion")
        return tokenizer.apply_chat_template([{"role": "user", "content": chat_message(problem)}],
                                             tokenize=False, add_generation_prompt=True)

    @staticmethod
    def _empty_or_truncated(completion: str, gen: Any, outcome: dict[str, Any]) -> dict[str, Any]:
        from teeny_bench import errors

        if outcome["passed"]:
            return outcome
        if not completion.strip():
            return {**outcome, "category": errors.EMPTY}
        if gen is not None and gen.finish_reason == "length" and outcome["category"] in (
                errors.SYNTAX_ERROR, errors.NAME_ERROR):
            return {**outcome, "category": errors.TRUNCATED}
        return outcome

    @staticmethod
    def _write(ctx: EvalContext, problem: MulProblem, sample: int, prompt: str, completion: str, gen: Any,
               outcome: dict[str, Any]) -> None:
        ctx.write({"key": f"{problem.key_id}/{sample}", "task_id": problem.task_id, "language": problem.language,
                   "problem": problem.problem, "sample": sample, "prompt": prompt, "completion": completion,
                   "passed": outcome["passed"], "category": outcome["category"], "detail": outcome["detail"],
                   "seconds": outcome["seconds"], "tokens": gen.tokens if gen else 0,
                   "finish_reason": gen.finish_reason if gen else None})

    def summarize(self, records: list[dict[str, Any]], options: Options) -> dict[str, Any]:
        if not records:
            return {}
        out: dict[str, Any] = {}
        graded = [r for r in records if r["category"] != SKIPPED]
        skipped = sorted({r["language"] for r in records if r["category"] == SKIPPED})
        if skipped:
            out["languages_skipped"] = ", ".join(skipped)
        by_lang: dict[str, dict[str, list[bool]]] = {}
        for r in graded:
            by_lang.setdefault(r["language"], {}).setdefault(r["task_id"], []).append(bool(r["passed"]))
        per_lang_k: dict[int, list[float]] = {}
        for lang in sorted(by_lang):
            tasks = by_lang[lang]
            n_min = min(len(v) for v in tasks.values())
            for k in (1, 10, 100):
                if n_min >= k:
                    value = sum(pass_at_k(len(v), sum(v), k) for v in tasks.values()) / len(tasks)
                    out[f"pass@{k}/{lang}"] = value
                    per_lang_k.setdefault(k, []).append(value)
            out[f"problems/{lang}"] = len(tasks)
        for k, values in per_lang_k.items():
            if len(values) == len(by_lang):
                out[f"pass@{k}"] = sum(values) / len(values)  # the mean over languages, as DeepSeek-Coder reports
        categories: dict[str, int] = {}
        for r in graded:
            categories[r["category"]] = categories.get(r["category"], 0) + 1
        for category, count in sorted(categories.items()):
            out[f"errors/{category}"] = count
        out["samples"] = len(graded)
        return out


CHECK_BODIES = {
    # Each body compiles whatever the declared return type is, and makes the test fail its assertion.
    "python": "    assert False, 'teeny check: this body cannot pass'\n",
    "java": "        throw new AssertionError(\"teeny check: this body cannot pass\");\n",
    "cpp": "    assert(false && \"teeny check: this body cannot pass\");\n",
    "cs": "        Debug.Assert(false, \"teeny check: this body cannot pass\");\n"
          "        throw new Exception(\"teeny check\");\n",
    "js": "    throw new (require(\"node:assert\").AssertionError)({message: \"teeny check: this body cannot pass\"});\n}\n",
    "ts": "    throw new (require(\"node:assert\").AssertionError)({message: \"teeny check: this body cannot pass\"});\n}\n",
    "php": "    return \"teeny check: this body cannot pass\";\n}\n",
    "sh": "    echo \"teeny check: this body cannot pass\"\n",
}


def check_toolchains(path: str, languages: list[str] | None = None, limit: int | None = None,
                     timeout: float = 20.0) -> list[dict[str, Any]]:
    """For each language: run every problem's tests against a body that cannot pass; a language is proven
    when every program fails with a clean wrong answer (not a compile, harness or timeout error).

    Returns one row per language: language, toolchain versions (or what is missing), problems, the
    category counts, ``ok`` (True / False / None when skipped) and the first unexpected outcome."""
    from teeny_bench import errors

    by_lang = load_problems(path, languages or list(LANGUAGES), limit)
    rows = []
    for lang, problems in by_lang.items():
        chain = toolchains.detect(lang)
        row: dict[str, Any] = {"language": lang, "name": chain.name, "problems": len(problems)}
        if not chain.available:
            rows.append({**row, "ok": None, "missing": chain.missing, "counts": {}})
            continue
        started = time.monotonic()
        outcomes = run_programs([(p, CHECK_BODIES[lang]) for p in problems], timeout)
        counts: dict[str, int] = {}
        for o in outcomes:
            counts[o["category"]] = counts.get(o["category"], 0) + 1
        bad = [(p, o) for p, o in zip(problems, outcomes) if o["category"] != errors.WRONG_ANSWER]
        rows.append({**row, "ok": not bad, "counts": counts, "versions": chain.versions(),
                     "seconds": time.monotonic() - started,
                     "first_problem": (f"{bad[0][0].task_id}: {bad[0][1]['category']}: {bad[0][1]['detail'][:300]}"
                                       if bad else "")})
    return rows
