"""The ``humaneval-mul`` evaluator: HumanEval in eight languages (MultiPL-E records), run with real toolchains.

Data: one ``humaneval-<lang>.jsonl`` file per language (DeepSeek-Coder's Evaluation/HumanEval/data names;
MultiPL-E's ``humaneval-<lang>-reworded.jsonl`` works too) in the ``path`` directory, or one such file.
MultiPL-E records have ``name``, ``language``, ``prompt``, ``tests``, ``stop_tokens``; the Python file is in
HumanEval's own format (``task_id``, ``prompt``, ``test`` ending in ``check(...)``). The data is not shipped:
MultiPL-E's terms forbid training or calibrating on it.

Python is graded as ``humaneval`` is (:func:`python_job`): the solution answers calls in a process of its
own, the tests run in a checker process it cannot reach. JavaScript, TypeScript, PHP and Bash programs only
record their answers, which are compared here (:func:`recorded_tests`). For the other languages a program is
``prompt + completion + "\\n" + tests``, built and run in the sandbox with the language's toolchain
(:mod:`teeny_bench.toolchains`). Unlike MultiPL-E, exit status 0 does not pass by itself: the program reads a
nonce from the sandbox's channel before the solution runs and writes it back after the last test
(:data:`CHANNEL_CODE`); a program without that report fails (``early_exit`` when it exited 0). A compiler
error is a syntax error; C# (Mono) also fails when a ``Debug.Assert`` reported a failure. A language whose
toolchain is missing is skipped: its records say ``skipped_toolchain`` and pass@k leaves them out.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path
from typing import Any, Callable

from teeny_core import EvalContext, Evaluator, LoadedModel, Metric, TeenyError, option, read_jsonl

from teeny_bench import errors, generation, toolchains
from teeny_bench.loop import CodeTask, generate_and_grade
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
class MulOptions(generation.SamplingOptions):
    path: str = option("", "a directory of humaneval-<lang>.jsonl files (DeepSeek-Coder/MultiPL-E names) or one "
                           "such file")
    languages: list[str] = option(list(LANGUAGES), "languages to evaluate: python, java, cpp, cs, js, ts, php, sh")
    limit: int | None = option(None, "evaluate at most this many problems per language", min=1)
    prompt_style: str = option("auto", "completion: continue the prompt (base models); chat: ask for the whole "
                                       "function in a code block (instruct models); auto: chat when the tokenizer "
                                       "has a chat template", choices=("auto", "completion", "chat"))
    timeout: float = option(10.0, "seconds a program may run (compiling gets the toolchain's own budget)", min=0.1, max=86400)


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
    for key in ("language", "prompt", "tests", "test", "entry_point"):
        if record.get(key) is not None and not isinstance(record[key], str):
            raise TeenyError(f"humaneval-mul: a record's {key} is a {type(record[key]).__name__}; expected a string")
    stops = record.get("stop_tokens")
    if stops is not None and not (isinstance(stops, list) and all(isinstance(t, str) for t in stops)):
        raise TeenyError(f"humaneval-mul: a record's stop_tokens is {str(stops)[:40]}; expected a list of strings")
    prefix = str(record.get("task_id", "")).split("/")[0]
    lang = toolchains.canonical_language(record.get("language") or language or
                                         ("python" if prefix == "HumanEval" else prefix))
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


def language_files(path: str, languages: list[str]) -> dict[str, Path]:
    """``{language: file}`` for the requested languages found at ``path`` (a directory or one file). With the
    default (all eight languages) a directory may hold only some; languages named explicitly must be there."""
    if not path:
        raise TeenyError("humaneval-mul: set path= to a directory of humaneval-<lang>.jsonl files (e.g. "
                         "DeepSeek-Coder's Evaluation/HumanEval/data) or to one such file")
    root = Path(path).expanduser()
    wanted = [toolchains.canonical_language(lang) for lang in languages]
    if root.is_file():
        first = next(iter(read_jsonl(root, "humaneval-mul")), None)
        if first is None:
            raise TeenyError(f"humaneval-mul: {root} is empty")
        lang = problem_from_record(first, _language_from_name(root.name)).language
        if lang not in wanted:
            raise TeenyError(f"humaneval-mul: {root} holds {lang} problems, not {', '.join(wanted)}")
        return {lang: root}
    if not root.is_dir():
        raise TeenyError(f"humaneval-mul: path {path!r} does not exist")
    found = {}
    for lang in wanted:
        file = next((root / n for n in FILE_NAMES[lang] if (root / n).is_file()), None)
        if file is not None:
            found[lang] = file
    if not found:
        raise TeenyError(f"humaneval-mul: {root} has none of {', '.join(FILE_NAMES[w][0] for w in wanted)}")
    missing = [lang for lang in wanted if lang not in found]
    if missing and sorted(wanted) != sorted(LANGUAGES):
        raise TeenyError(f"humaneval-mul: {root} lacks {', '.join(FILE_NAMES[m][0] for m in missing)}")
    return found


def _language_from_name(name: str) -> str | None:
    match = re.match(r"humaneval-([a-z+#]+?)(?:-reworded|-keep|-transform)?\.jsonl$", name)
    return match.group(1) if match else None


def load_problems(path: str, languages: list[str], limit: int | None = None) -> dict[str, list[MulProblem]]:
    """``{language: problems}`` (at most ``limit`` per language), in the files' order."""
    out = {}
    for lang, file in language_files(path, languages).items():
        problems = [p for p in (problem_from_record(r, lang) for r in read_jsonl(file, 'humaneval-mul'))
                    if p.language == lang]
        out[lang] = problems[:limit] if limit else problems
    return out


# How each language's program takes the channel's nonce from fd 3 (before any solution code runs where the
# language allows: at the top of a script, at the start of main in Java, C++ and C#) and, after the last test,
# writes "\n<nonce> {"done": true}\n" to fd 4 (:mod:`teeny_bench._channel`): (read, write) code.
_DONE = '{"done": true}'
CHANNEL_CODE = {
    "java": ('String teenyNonce = new String(java.nio.file.Files.readAllBytes(java.nio.file.Paths.get('
             '"/proc/self/fd/3")));\n',
             'try (java.io.FileOutputStream teenyOut = new java.io.FileOutputStream("/proc/self/fd/4")) '
             '{ teenyOut.write(("\\n" + teenyNonce + " {\\"done\\": true}\\n").getBytes()); }\n'),
    "cpp": ("char teeny_nonce[65] = {0}; if (read(3, teeny_nonce, 64) < 0) return 99; close(3);\n",
            '{ std::string teeny_line = std::string("\\n") + teeny_nonce + " {\\"done\\": true}\\n"; '
            "if (write(4, teeny_line.data(), teeny_line.size()) < 0) return 99; }\n"),
    "cs": ('string teenyNonce = System.IO.File.ReadAllText("/proc/self/fd/3");\n',
           'using (var teenyOut = new System.IO.FileStream("/proc/self/fd/4", System.IO.FileMode.Open, '
           "System.IO.FileAccess.Write)) { var teenyLine = System.Text.Encoding.UTF8.GetBytes(\"\\n\" + "
           'teenyNonce + " {\\"done\\": true}\\n"); teenyOut.Write(teenyLine, 0, teenyLine.Length); }\n'),
    "js": ("const __teeny_nonce = require('fs').readFileSync(3, 'utf8'); require('fs').closeSync(3);\n",
           f"\nrequire('fs').writeSync(4, '\\n' + __teeny_nonce + ' {_DONE}\\n');\n"),
    "php": ('$__teeny_nonce = file_get_contents("php://fd/3");\n',
            f'\nfile_put_contents("php://fd/4", "\\n" . $__teeny_nonce . " {_DONE.replace(chr(34), chr(92) + chr(34))}\\n");\n'),
    "sh": ("__teeny_nonce=$(cat <&3); exec 3<&-\n",
           f"\nprintf '\\n%s {_DONE}\\n' \"$__teeny_nonce\" >&4\n"),
}
CHANNEL_CODE["ts"] = ("declare var require: any;\n" + CHANNEL_CODE["js"][0], CHANNEL_CODE["js"][1])
# Where the read goes: after this line (a script's first line), or at the start of this function (else the top).
_READ_AFTER = {"php": "<?php\n", "sh": "#!/bin/bash\n"}
_MAIN = {"java": "public static void main(String[] args) {", "cpp": "int main() {",
         "cs": "public static void Main(string[] args) {"}


def python_job(problem: MulProblem, completion: str, timeout: float, memory_bytes: int):
    """The Python column's sandbox job, graded as ``humaneval`` is (``_call_harness.py``): the solution (standard
    imports first, as DeepSeek-Coder's harness adds; a chat answer's whole function after the prompt) answers
    calls in its own process; the prompt's helpers and the tests, without their final ``check(...)`` call, run
    in the checker, which calls ``check`` with the proxy."""
    from teeny_bench.humaneval import call_job
    from teeny_bench.sandbox import Limits

    entry_point = _entry_point(problem)
    if not entry_point:
        raise TeenyError(f"humaneval-mul: the Python prompt of {problem.name} defines no function")
    solution = PYTHON_HEADER + generation.solution_program(problem.prompt, completion, entry_point)
    tests = re.sub(r"\ncheck\(\w+\)\s*$", "\n", problem.tests)
    limits = Limits(cpu_seconds=timeout, wall_seconds=3 * timeout + 10, memory_bytes=memory_bytes)
    return call_job(solution, entry_point, limits, test=tests, helpers=PYTHON_HEADER + problem.prompt)


def assemble(problem: MulProblem, completion: str) -> str:
    """The program MultiPL-E runs for the compiled and scripted languages: prompt + completion + tests, with
    the channel's nonce read first and the nonce-tagged report written after the last test
    (:data:`CHANNEL_CODE`). Python is graded by :func:`python_job` instead."""
    lang = problem.language
    read, write = CHANNEL_CODE[lang]
    tests = problem.tests
    if lang in _MAIN:
        head, main_open, body = tests.partition(_MAIN[lang])
        if not main_open:
            raise TeenyError(f"humaneval-mul: the {lang} tests of {problem.name} have no {_MAIN[lang]!r}")
        if lang == "java":
            main_open = main_open.replace(") {", ") throws Exception {")
        if lang == "cpp":
            head += "#include <unistd.h>\n"
        # the closing brace of main: the last one (C++), or the one before the class's (Java, C#)
        end = body.rstrip().rfind("}")
        if lang != "cpp":
            end = body.rfind("}", 0, end)
        tests = head + main_open + "\n" + read + body[:end] + write + body[end:]
        return problem.prompt + completion + "\n" + tests
    prompt = problem.prompt
    first = _READ_AFTER.get(lang, "")
    if first and prompt.startswith(first):
        return first + read + prompt[len(first):] + completion + "\n" + tests + write
    return read + prompt + completion + "\n" + tests + write


# JavaScript and TypeScript tests are regular: ``assert.deepEqual(candidate(ARGS),EXPECTED);``. Such a program
# only records each answer (as JSON) and reports them all with the nonce; the expected values stay here.
_JS_ASSERT = "assert.deepEqual("
_JS_RECORD = {
    "js": ("const __teeny_answers = [];\n"
           "const __teeny_json = (x) => String(JSON.stringify(x === undefined ? null : x));\n"),
    "ts": ("const __teeny_answers: string[] = [];\n"
           "const __teeny_json = (x: any): string => String(JSON.stringify(x === undefined ? null : x));\n"),
}
_JS_REPORT = ("\nrequire('fs').writeSync(4, '\\n' + __teeny_nonce + ' ' + JSON.stringify({answers: __teeny_answers})"
              " + '\\n');\n")


def recorded_js_tests(tests: str) -> tuple[str, list[Any]] | None:
    """JavaScript/TypeScript tests with every ``assert.deepEqual(candidate(ARGS),EXPECTED);`` replaced by a
    line that records the answer, and the expected values (JSON, ``undefined`` as null: the legacy
    ``deepEqual`` has ``null == undefined``); None when a test has another shape."""
    lines, expected = [], []
    for line in tests.split("\n"):
        stripped = line.strip()
        if not stripped.startswith(_JS_ASSERT):
            if "assert" in stripped.replace("const assert = require('node:assert');", ""):
                return None
            lines.append(line)
            continue
        inner = stripped[len(_JS_ASSERT):-2] if stripped.endswith(");") else ""
        comma = _top_level_comma(inner)
        value = _js_literal(inner[comma + 1:]) if comma > 0 else _NOT_A_LITERAL
        if value is _NOT_A_LITERAL:
            return None
        lines.append(f"{line[:len(line) - len(line.lstrip())]}__teeny_answers.push(__teeny_json({inner[:comma]}));")
        expected.append(value)
    return ("\n".join(lines), expected) if expected else None


_NOT_A_LITERAL = object()


def _top_level_comma(text: str) -> int:
    """Where the first comma outside brackets and strings is, or -1."""
    return _top_level(text, ",")


def _top_level(text: str, stops: str) -> int:
    """Where the first of ``stops`` outside strings and nested brackets is (a closing bracket counts there
    when it closes nothing opened in ``text``), or -1."""
    depth, quote, i = 0, "", 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "\"'`":
            quote = c
        elif depth == 0 and c in stops:
            return i
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        i += 1
    return -1


def _js_literal(text: str) -> Any:
    """A JavaScript literal that is JSON once ``undefined`` is null (the test data's expected values)."""
    out, quote, i = [], "", 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                out.append(text[i:i + 2])
                i += 2
                continue
            quote = "" if c == quote else quote
        elif c == '"':
            quote = c
        elif text.startswith("undefined", i):
            out.append("null")
            i += len("undefined")
            continue
        out.append(c)
        i += 1
    try:
        return json.loads("".join(out))
    except (ValueError, RecursionError):
        return _NOT_A_LITERAL


# PHP tests are regular too: ``if (candidate(ARGS) !== EXPECTED) { throw new Exception("Test failed!"); }``.
_PHP_TEST = ("if (candidate(", ') { throw new Exception("Test failed!"); }')
_PHP_RECORD = "$__teeny_answers = [];\n"
_PHP_REPORT = ('\nfile_put_contents("php://fd/4", "\\n" . $__teeny_nonce . " " . '
               'json_encode(["answers" => $__teeny_answers]) . "\\n");\n')


def recorded_php_tests(tests: str) -> tuple[str, list[Any]] | None:
    """PHP tests with every ``if (candidate(ARGS) !== EXPECTED) ...`` replaced by a line that records the
    answer's ``json_encode`` (floats keep their ``.0``), and the expected values as that JSON reads
    (:func:`_php_literal`); None when a test has another shape."""
    return _recorded_calls(
        tests, _PHP_TEST, ") !== ", _php_literal,
        lambda line: "Test failed" in line or ("candidate(" in line and "function candidate(" not in line),
        lambda args: f"$GLOBALS['__teeny_answers'][] = json_encode(candidate({args}), JSON_PRESERVE_ZERO_FRACTION);")


def _recorded_calls(tests: str, test: tuple[str, str], compare: str, literal: Callable[[str], Any],
                    stray: Callable[[str], bool], record: Callable[[str], str]) -> tuple[str, list[Any]] | None:
    """``tests`` with each line ``{test[0]}ARGS){compare}EXPECTED{test[1]}`` replaced by ``record(ARGS)`` (at its
    indentation), and the ``literal`` of each expected value; None when a test has another shape (a line where
    ``stray`` holds, or an expected value that is not a literal)."""
    lines, expected = [], []
    for line in tests.split("\n"):
        stripped = line.strip()
        if not stripped.startswith(test[0]):
            if stray(stripped):
                return None
            lines.append(line)
            continue
        rest = stripped[len(test[0]):]
        end = _top_level(rest, ")")
        if end < 0 or not rest[end:].startswith(compare) or not rest.endswith(test[1]):
            return None
        value = literal(rest[end + len(compare):-len(test[1])])
        if value is _NOT_A_LITERAL:
            return None
        lines.append(line[:len(line) - len(line.lstrip())] + record(rest[:end]))
        expected.append(value)
    return ("\n".join(lines), expected) if expected else None


class _PhpObject(tuple):
    """A JSON object as ordered ``(key, value)`` pairs: PHP's ``===`` on arrays also compares the order."""


def _php_json(text: str) -> Any:
    return json.loads(text, object_pairs_hook=lambda pairs: _PhpObject(pairs))


def _identical(a: Any, b: Any) -> bool:
    """PHP's ``===`` on values read from ``json_encode``: same types (``1`` is not ``1.0``), arrays in order."""
    if type(a) is not type(b):
        return False
    if type(a) in (list, _PhpObject):
        return len(a) == len(b) and all(_identical(x, y) for x, y in zip(a, b))
    if type(a) is tuple:  # a key and its value
        return a[0] == b[0] and _identical(a[1], b[1])
    return bool(a == b)


_PHP_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "v": "\v", "e": "\x1b", "f": "\f", "\\": "\\", "$": "$", '"': '"'}
_PHP_NUMBER = re.compile(r"-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?")


def _php_literal(text: str) -> Any:
    """A PHP literal (numbers, strings, true/false/null, ``array(...)``/``[...]`` with or without keys) as its
    ``json_encode`` reads back: a list for keys 0..n-1, else a :class:`_PhpObject` with string keys."""
    try:
        value, end = _php_value(text, _php_space(text, 0))
    except (ValueError, IndexError, RecursionError):
        return _NOT_A_LITERAL
    return value if _php_space(text, end) == len(text) else _NOT_A_LITERAL


def _php_space(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def _php_value(text: str, i: int) -> tuple[Any, int]:
    for word, value in (("true", True), ("false", False), ("null", None)):
        if text[i:i + len(word)].lower() == word and not text[i + len(word):i + len(word) + 1].isalnum():
            return value, i + len(word)
    if text.startswith("array(", i) or text.startswith("[", i):
        return _php_array(text, i + (6 if text[i] == "a" else 1), ")" if text[i] == "a" else "]")
    if text[i] in "\"'":
        return _php_string(text, i)
    number = _PHP_NUMBER.match(text, i)
    if not number:
        raise ValueError(f"not a PHP literal at {i}")
    digits = number.group()
    return (float(digits) if any(c in digits for c in ".eE") else int(digits)), number.end()


def _php_array(text: str, i: int, close: str) -> tuple[Any, int]:
    pairs: list[tuple[Any, Any]] = []
    next_key = 0
    i = _php_space(text, i)
    while text[i] != close:
        first, i = _php_value(text, i)
        i = _php_space(text, i)
        if text.startswith("=>", i):
            key = int(first) if type(first) is str and re.fullmatch(r"-?[1-9]\d*|0", first) else first
            if type(key) not in (int, str):
                raise ValueError("an array key must be an int or a string")
            value, i = _php_value(text, _php_space(text, i + 2))
            i = _php_space(text, i)
        else:
            key, value = next_key, first
        pairs = [p for p in pairs if p[0] != key] + [(key, value)]
        if type(key) is int:
            next_key = max(next_key, key + 1)
        if text[i] == ",":
            i = _php_space(text, i + 1)
        elif text[i] != close:
            raise ValueError("expected , or the array's end")
    if [k for k, _ in pairs] == list(range(len(pairs))):
        return [v for _, v in pairs], i + 1
    return _PhpObject((str(k), v) for k, v in pairs), i + 1


def _php_string(text: str, i: int) -> tuple[str, int]:
    quote, out, i = text[i], [], i + 1
    while text[i] != quote:
        c = text[i]
        if c == "\\" and quote == "'" and text[i + 1] in "\\'":
            out.append(text[i + 1])
            i += 2
        elif c == "\\" and quote == '"' and text[i + 1] in _PHP_ESCAPES:
            out.append(_PHP_ESCAPES[text[i + 1]])
            i += 2
        elif c == "\\" and quote == '"' and text[i + 1] in "0123456789xu":
            raise ValueError("numeric escapes are not read")
        elif c == "$" and quote == '"' and (text[i + 1].isalpha() or text[i + 1] in "_{"):
            raise ValueError("an interpolated string")
        else:
            out.append(c)
            i += 1
    return "".join(out), i + 1


# Bash tests: ``[[ $(candidate ARGS) = "EXPECTED" ]]`` (a quoted right side: an exact comparison).
_SH_TEST = ("[[ $(candidate", " ]]")
_SH_RECORD = "__teeny_answers=()\n"
_SH_REPORT = ("\n__teeny_hex=()\nfor __teeny_a in \"${__teeny_answers[@]}\"; do\n"
              "    __teeny_hex+=(\"\\\"$(printf '%s' \"$__teeny_a\" | od -An -v -tx1 | tr -d ' \\n')\\\"\")\ndone\n"
              "printf '\\n%s {\"answers\": [%s]}\\n' \"$__teeny_nonce\" \"$(IFS=,; echo \"${__teeny_hex[*]}\")\" >&4\n")


def recorded_sh_tests(tests: str) -> tuple[str, list[Any]] | None:
    """Bash tests with every ``[[ $(candidate ARGS) = "EXPECTED" ]]`` replaced by a line that records what the
    call printed (as ``$(...)`` keeps it), and the expected strings; None when a test has another shape (an
    unquoted right side is a pattern)."""
    return _recorded_calls(tests, _SH_TEST, ") = ",
                           lambda text: _NOT_A_LITERAL if (word := _sh_string(text)) is None else word,
                           lambda line: "$(candidate" in line,
                           lambda args: f'__teeny_answers+=("$(candidate{args} || true)")')


def _sh_string(text: str) -> str | None:
    """A quoted Bash word without expansions, or None."""
    if len(text) >= 2 and text[0] == text[-1] == "'" and "'" not in text[1:-1]:
        return text[1:-1]
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return None
    out, i, body = [], 0, text[1:-1]
    while i < len(body):
        c = body[i]
        if c in "$`\"":
            return None
        if c == "\\" and i + 1 < len(body) and body[i + 1] in "$`\"\\":
            out.append(body[i + 1])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def recorded_tests(problem: MulProblem) -> tuple[str, list[Any]] | None:
    """The problem's tests rewritten to record answers, and the expected values, for the languages whose tests
    allow it (JavaScript, TypeScript, PHP, Bash); None otherwise."""
    if problem.language in _JS_RECORD:
        return recorded_js_tests(problem.tests)
    if problem.language == "php":
        return recorded_php_tests(problem.tests)
    if problem.language == "sh":
        return recorded_sh_tests(problem.tests)
    return None


def assemble_recorded(problem: MulProblem, completion: str, tests: str) -> str:
    """A program whose tests only record answers (:func:`recorded_tests`) and report them with the nonce."""
    read = CHANNEL_CODE[problem.language][0]
    if problem.language in ("php", "sh"):
        first = _READ_AFTER[problem.language]
        prompt = problem.prompt[len(first):] if problem.prompt.startswith(first) else problem.prompt
        record, report = (_PHP_RECORD, _PHP_REPORT) if problem.language == "php" else (_SH_RECORD, _SH_REPORT)
        return first + read + record + prompt + completion + "\n" + tests + report
    return read + _JS_RECORD[problem.language] + problem.prompt + completion + "\n" + tests + _JS_REPORT


def classify_answers(toolchain: Toolchain, result: Any, report: dict[str, Any] | None,
                     expected: list[Any]) -> tuple[bool, str, str]:
    """``(passed, category, detail)`` of a program that reported its answers: compared here, in order, with
    the expected values (what the program reports is checked for shape first). PHP's answers must be
    identical (``!==``); JavaScript's equal as JSON values; Bash's, what the call printed (sent as hex), equal
    as strings."""
    if report is None or result.status not in ("ok", "error"):
        return classify(toolchain, result, None)
    answers = report.get("answers")
    if type(answers) is not list or len(answers) != len(expected) or not all(type(a) is str for a in answers):
        return False, errors.RUNTIME_ERROR, f"malformed report: not {len(expected)} answers as JSON texts"
    php, sh = toolchain.language == "php", toolchain.language == "sh"
    for i, (got, want) in enumerate(zip(answers, expected)):
        try:
            value = (bytes.fromhex(got).decode("utf-8", "surrogateescape") if sh else
                     _php_json(got) if php else json.loads(got))
        except (ValueError, RecursionError):
            return False, errors.RUNTIME_ERROR, f"malformed report: answer #{i + 1} is not {'hex' if sh else 'JSON'}"
        if not (_identical(value, want) if php else value == want):
            return (False, errors.WRONG_ANSWER,
                    f"test {i + 1}: expected {_tail(json.dumps(want), 200)}, got {_tail(json.dumps(value), 200)}")
    return True, errors.PASSED, ""


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


def _entry_point(problem: MulProblem) -> str | None:
    name = re.search(r"(\w+)\s*\(", _signature(problem))
    return name.group(1) if name else None


def completion_from_chat(problem: MulProblem, answer: str) -> str:
    """What a chat answer contributes. Python: the whole function and its helpers, without demo code (as
    ``humaneval`` extracts it). Other languages, whose tests close the function or class themselves: the body
    after the prompt's signature line in the first fenced block, cut at a stop token."""
    entry_point = _entry_point(problem)
    if problem.language == "python" and entry_point:
        return generation.chat_completion(answer, entry_point)
    lines = answer.split("\n")
    fences = [i for i, l in enumerate(lines) if l.strip().startswith("```")]
    block = lines[fences[0] + 1:fences[1]] if len(fences) >= 2 else lines
    signature = _signature(problem)
    start = next((i for i, l in enumerate(block) if l.strip() == signature), None)
    if start is None and entry_point:
        start = next((i for i, l in enumerate(block) if re.search(rf"\b{re.escape(entry_point)}\s*\(", l)
                      and not l.lstrip().startswith(("//", "#", "*"))), None)
    body = "\n".join(block[start + 1:] if start is not None else block)
    return generation.truncate_at_stop("\n" + body, problem.stop_tokens)[1:] if body else ""


def _tail(text: str, length: int = 600) -> str:
    """The start and the end of a long message (compilers put the cause first, runtimes the exception last),
    without the sandbox's temporary directory (so details compare across runs)."""
    text = errors._SANDBOX_DIR.sub("", text.strip())
    half = length // 2
    return text if len(text) <= length else text[:half] + " ... " + text[-half:]


def classify(toolchain: Toolchain, result: Any, report: dict[str, Any] | None) -> tuple[bool, str, str]:
    """``(passed, category, detail)`` for one program's sandbox result and the nonce-tagged report its tests
    wrote after the last one (None when they did not): without the report nothing passes."""
    stderr, stdout = result.stderr or "", result.stdout or ""
    if toolchain.language == "python":
        category, detail = errors.classify_harness(result, report)
        return category == errors.PASSED, category, detail
    if result.status == "timeout":
        return False, errors.TIMEOUT, result.reason or f"timed out after {result.seconds:.1f} s"
    if result.status == "memory":
        return False, errors.MEMORY, result.reason or "memory limit exceeded"
    if toolchain.compile_failed(stderr):
        return False, errors.SYNTAX_ERROR, _tail(stderr)
    asserted = any(marker in stderr for marker in toolchain.assertion_markers)
    if report is not None and result.status in ("ok", "error") and not asserted:
        return True, errors.PASSED, ""
    detail = _tail(stderr or stdout) or f"exit status {result.returncode}"
    if result.status == "ok" and not asserted:
        return False, errors.EARLY_EXIT, f"the program exited 0 before its tests finished: {detail}"
    lang = toolchain.language
    if asserted:
        return False, errors.WRONG_ANSWER, detail
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


def _not_installed(chain: Toolchain) -> dict[str, Any]:
    """The outcome of a program this machine has no toolchain for (it counts nowhere)."""
    return {"passed": False, "category": SKIPPED, "seconds": 0.0,
            "detail": f"{chain.name} toolchain not installed (missing: {', '.join(chain.missing)})"}


def _prompt(problem: MulProblem, style: str, tokenizer: Any) -> str:
    if style == "completion":
        return problem.prompt
    return tokenizer.apply_chat_template([{"role": "user", "content": chat_message(problem)}], tokenize=False,
                                         add_generation_prompt=True)


def run_programs(items: list[tuple[MulProblem, str]], timeout: float = 10.0, *, path: str | None = None,
                 workers: int | None = None) -> list[dict[str, Any]]:
    """Grade ``(problem, completion)`` pairs in parallel sandboxes: passed, category, detail, seconds.

    TypeScript programs are first type-checked and compiled in batches; the rest build and run per program."""
    from teeny_bench.humaneval import run_harnessed
    from teeny_bench.sandbox import Result

    chains = {lang: toolchains.prepared(toolchains.detect(lang, path)) for lang in {p.language for p, _ in items}}
    recorded = {i: recorded_tests(p) for i, (p, _) in enumerate(items)}
    recorded = {i: split for i, split in recorded.items() if split is not None}
    programs = [assemble_recorded(p, c, recorded[i][0]) if i in recorded else
                assemble(p, c) if p.language != "python" else "" for i, (p, c) in enumerate(items)]
    ts_items = [i for i, (p, _) in enumerate(items) if p.language == "ts" and chains["ts"].available]
    precompiled: dict[int, tuple[bool, str]] = {}
    if ts_items:
        compiled = toolchains.typescript_compile(chains["ts"], [programs[i] for i in ts_items], workers)
        precompiled = dict(zip(ts_items, compiled)) if compiled is not None else {}
    jobs, where, results = [], [], {}
    for i, (problem, _) in enumerate(items):
        chain = chains[problem.language]
        if not chain.available:
            continue
        if i in precompiled:
            ok, text = precompiled[i]
            if not ok:
                results[i] = (Result(status="error", returncode=1, stdout="", seconds=0.0, network_isolated=True,
                                     stderr=f"{toolchains.COMPILE_ERROR_MARKER}\n{text}", reason="compile error"),
                              None)
                continue
            node_chain = dataclasses.replace(chain, compile=None, source="test.js")
            jobs.append(node_chain.sandbox_job(text, timeout))
        elif problem.language == "python":
            jobs.append(python_job(problem, items[i][1], timeout, chain.memory_bytes))
        else:
            jobs.append(chain.sandbox_job(programs[i], timeout))
        where.append(i)
    results.update(zip(where, run_harnessed(jobs, workers) if jobs else []))
    out = []
    for i, (problem, _) in enumerate(items):
        chain = chains[problem.language]
        if i not in results:
            out.append(_not_installed(chain))
            continue
        result, report = results[i]
        if i in recorded:
            passed, category, detail = classify_answers(chain, result, report, recorded[i][1])
        else:
            passed, category, detail = classify(chain, result, report)
        out.append({"passed": passed, "category": category, "detail": detail, "seconds": result.seconds})
    return out


class HumanEvalMulEvaluator(Evaluator[MulOptions]):
    """HumanEval in Python, Java, C++, C#, JavaScript, TypeScript, PHP and Bash (MultiPL-E), real toolchains."""

    name = "humaneval-mul"
    Options = MulOptions
    metrics = {"pass@1": Metric("pass@1 (mean over languages)", higher_is_better=True, item_field="passed"),
               "pass@10": Metric("pass@10 (mean over languages)", higher_is_better=True)}
    headline = "pass@1"

    def evaluate(self, model: LoadedModel, options: MulOptions, ctx: EvalContext) -> None:
        options.check_sampling(self.name)
        limits = [c for c in (ctx.limit, options.limit) if c]
        by_lang = load_problems(options.path, options.languages, min(limits) if limits else None)
        chains = {lang: toolchains.detect(lang) for lang in by_lang}
        task = CodeTask(
            name=self.name, problem_id=lambda p: p.key_id, prompt=_prompt, stop=lambda p: p.stop_tokens,
            program=lambda p, text, style: (generation.truncate_at_stop(text, p.stop_tokens) if style == "completion"
                                            else completion_from_chat(p, text)),
            grade=lambda items: run_programs(items, options.timeout, workers=options.workers or None),
            fields=lambda p: {"task_id": p.task_id, "language": p.language, "problem": p.problem},
            unavailable=lambda p: None if chains[p.language].available else _not_installed(chains[p.language]))
        generate_and_grade(task, model, options, options.prompt_style, ctx,
                           [p for problems in by_lang.values() for p in problems])

    def summarize(self, records: list[dict[str, Any]], options: Options) -> dict[str, Any]:
        """Per language: pass@k, problems, error counts (``<metric>/<language>``); overall: the mean pass@k over
        the graded languages (as DeepSeek-Coder reports HumanEval-Mul) and the summed error counts. Languages
        whose toolchain was missing are listed in ``languages_skipped`` and count nowhere."""
        from teeny_bench.humaneval import summarize_records

        if not records:
            return {}
        out: dict[str, Any] = {}
        skipped = sorted({r["language"] for r in records if r["category"] == SKIPPED})
        graded = [r for r in records if r["category"] != SKIPPED]
        by_lang: dict[str, list[dict[str, Any]]] = {}
        for r in graded:
            by_lang.setdefault(r["language"], []).append(r)
        per_lang = {lang: summarize_records(rs) for lang, rs in sorted(by_lang.items())}
        for lang, metrics in per_lang.items():
            for name, value in metrics.items():
                if name.startswith("pass@") or name in ("problems", "samples", "passed"):
                    out[f"{name}/{lang}"] = value
        for k in (1, 10, 100):
            values = [m[f"pass@{k}"] for m in per_lang.values() if f"pass@{k}" in m]
            if values and len(values) == len(per_lang):
                out[f"pass@{k}"] = sum(values) / len(values)
        out["languages"] = len(per_lang)
        if skipped:
            out["languages_skipped"] = len(skipped)
            out["skipped"] = ", ".join(skipped)
        for metrics in per_lang.values():
            for name, value in metrics.items():
                if name.startswith("errors/"):
                    out[name] = out.get(name, 0) + value
        out["samples"] = len(graded)
        return out


# Problems that no solution can pass in the DeepSeek-Coder/MultiPL-E files, found by ``check_toolchains``:
# the translated prompt or tests themselves do not compile. The check reports them instead of failing on them.
KNOWN_DEFECTS = {
    ("php", "HumanEval_23_strlen"): "the prompt redeclares PHP's builtin strlen()",
    ("js", "HumanEval_51_remove_vowels"): "the tests hold a raw newline inside a string literal",
    ("cpp", "HumanEval_137_compare_one"): "the prompt declares a member of type std::nullopt, which is a value",
}

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
                     timeout: float = 20.0, workers: int | None = None) -> list[dict[str, Any]]:
    """For each language: run every problem's tests against a body that cannot pass; a language is proven
    when every program fails with a clean wrong answer (not a compile, harness or timeout error), except the
    :data:`KNOWN_DEFECTS` problems, which are listed.

    Returns one row per language: language, toolchain versions (or what is missing), problems, the
    category counts, ``ok`` (True / False / None when skipped), the known defects seen and the first
    unexpected outcome."""
    by_lang = load_problems(path, languages or list(LANGUAGES), limit)
    rows = []
    for lang, problems in by_lang.items():
        chain = toolchains.detect(lang)
        row: dict[str, Any] = {"language": lang, "name": chain.name, "problems": len(problems)}
        if not chain.available:
            rows.append({**row, "ok": None, "missing": chain.missing, "counts": {}})
            continue
        started = time.monotonic()
        outcomes = run_programs([(p, CHECK_BODIES[lang]) for p in problems], timeout, workers=workers)
        counts: dict[str, int] = {}
        for o in outcomes:
            counts[o["category"]] = counts.get(o["category"], 0) + 1
        defects = [f"{p.task_id} ({KNOWN_DEFECTS[lang, p.task_id]})" for p, o in zip(problems, outcomes)
                   if (lang, p.task_id) in KNOWN_DEFECTS and o["category"] != errors.WRONG_ANSWER]
        bad = [(p, o) for p, o in zip(problems, outcomes)
               if o["category"] != errors.WRONG_ANSWER and (lang, p.task_id) not in KNOWN_DEFECTS]
        rows.append({**row, "ok": not bad, "counts": counts, "versions": chain.versions(), "defects": defects,
                     "seconds": time.monotonic() - started,
                     "first_problem": (f"{bad[0][0].task_id}: {bad[0][1]['category']}: {bad[0][1]['detail'][:300]}"
                                       if bad else "")})
    return rows


def check_command(args: Any) -> bool:
    """``teeny bench check humaneval-mul --path DIR [-o languages=java,cpp] [--limit N]``: prove each language's
    toolchain (see :func:`check_toolchains`) and print one line per language. Fails when a language that is
    installed does not fail cleanly on every problem, or when no language could be checked at all."""
    import click

    languages = args.extra.get("languages")
    if isinstance(languages, str):
        languages = [lang for lang in (x.strip() for x in languages.split(",")) if lang]
    rows = check_toolchains(args.path or "", languages, args.limit, args.timeout or 20.0, args.workers)
    for row in rows:
        label = f"{row['language']} ({row['name']})"
        if row["ok"] is None:
            click.echo(f"  {label}: skipped, toolchain not installed (missing: {', '.join(row['missing'])})")
            continue
        clean = row["counts"].get(errors.WRONG_ANSWER, 0)
        others = ", ".join(f"{k} {v}" for k, v in sorted(row["counts"].items()) if k != errors.WRONG_ANSWER)
        verdict = "ok" if row["ok"] else "NOT CLEAN"
        click.echo(f"  {label}: {verdict}: {clean}/{row['problems']} programs failed cleanly with a wrong answer"
                   f"{'; ' + others if others else ''} ({row['seconds']:.1f} s)")
        if args.verbose or not row["ok"]:
            for tool, version in row["versions"].items():
                click.echo(f"      {tool}: {version}")
        if row["defects"]:
            click.echo(f"      known data defects (no solution can pass): {'; '.join(row['defects'])}")
        if row["first_problem"]:
            click.echo(f"      first: {row['first_problem'].splitlines()[0][:300]}")
    proven = [r["language"] for r in rows if r["ok"]]
    failed = [r["language"] for r in rows if r["ok"] is False]
    skipped = [r["language"] for r in rows if r["ok"] is None]
    click.echo(f"humaneval-mul: toolchains proven {len(proven)}/{len(rows)}"
               + (f"; not clean: {', '.join(failed)}" if failed else "")
               + (f"; skipped (not installed): {', '.join(skipped)}" if skipped else ""))
    return not failed and bool(proven)
