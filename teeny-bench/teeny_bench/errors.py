"""Error categories: every graded sample gets exactly one, so reports can count why a variant fails.

Shared by all teeny-bench evaluators. ``classify_python`` maps a sandboxed Python test run to a category.
"""

from __future__ import annotations

import re
from typing import Any

PASSED = "passed"
SYNTAX_ERROR = "syntax_error"  # the program does not parse / compile
NAME_ERROR = "name_error"  # NameError, ImportError, ModuleNotFoundError (an undefined or missing name)
RUNTIME_ERROR = "runtime_error"  # any other exception; the detail names its type
WRONG_ANSWER = "wrong_answer"  # AssertionError / wrong output
TIMEOUT = "timeout"  # CPU or wall time limit
MEMORY = "memory"  # address-space limit (MemoryError and the like)
EARLY_EXIT = "early_exit"  # the program ended (any exit status) before the trusted harness finished the tests
EMPTY_GENERATION = EMPTY = "empty_generation"  # the model produced no code
TRUNCATED_GENERATION = TRUNCATED = "truncated_generation"  # hit max_new_tokens and failed

CATEGORIES = (PASSED, SYNTAX_ERROR, NAME_ERROR, RUNTIME_ERROR, WRONG_ANSWER, TIMEOUT, MEMORY, EARLY_EXIT,
              EMPTY_GENERATION, TRUNCATED_GENERATION)

SYNTAX_EXCEPTIONS = frozenset({"SyntaxError", "IndentationError", "TabError"})
NAME_EXCEPTIONS = frozenset({"NameError", "ImportError", "ModuleNotFoundError", "UnboundLocalError"})
# The last line of a Python traceback: "ValueError: message", "AssertionError", "json.decoder.JSONDecodeError: ..."
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*?(?:Error|Exception|Exit|Interrupt|Warning|Iteration))(?::|$)", re.M)


def exception_type(stderr: str) -> str | None:
    """The type of the last exception in a Python traceback, without its module (``"ValueError"``)."""
    found = _EXCEPTION_LINE.findall(stderr or "")
    return found[-1].rsplit(".", 1)[-1] if found else None


def classify_python(result: Any) -> tuple[str, str]:
    """``(category, detail)`` for a sandboxed Python run (a :class:`teeny_bench.sandbox.Result`)."""
    if result.status == "ok":
        return PASSED, ""
    if result.status == "timeout":
        return TIMEOUT, result.reason
    tail = _tail(result.stderr or result.stdout) or result.reason
    if result.status == "memory":
        return MEMORY, f"{result.reason}: {tail}" if tail != result.reason else tail
    if result.status == "killed":
        return RUNTIME_ERROR, f"{result.reason}: {tail}" if tail != result.reason else tail
    return category_of_exception(exception_type(result.stderr)), tail


def category_of_exception(kind: str | None) -> str:
    """The category of a Python exception type name (None: no exception seen)."""
    if kind == "AssertionError":
        return WRONG_ANSWER
    if kind in SYNTAX_EXCEPTIONS:
        return SYNTAX_ERROR
    if kind in NAME_EXCEPTIONS:
        return NAME_ERROR
    if kind == "MemoryError":
        return MEMORY
    if kind == "Timeout":
        return TIMEOUT
    return RUNTIME_ERROR


# What ``_call_harness.py`` reports for failures that are not a Python exception of the checks.
HARNESS_ERRORS = {"Timeout": TIMEOUT, "EarlyExit": EARLY_EXIT, "BadAnswer": WRONG_ANSWER}


def reported_exception(report: dict[str, Any] | None) -> str | None:
    """The exception type a harness report names for a failed test, if any."""
    failed = report.get("failed") if type(report) is dict else None
    error = failed.get("error") if type(failed) is dict else None
    return error[:100] if type(error) is str else None


def classify_harness(result: Any, report: dict[str, Any] | None) -> tuple[str, str]:
    """``(category, detail)`` for a Python run under a trusted harness (``_channel``): passed only with the
    harness's nonce-tagged report saying no test failed; no report and no exception is an ``early_exit``,
    whatever the exit status. A malformed report is a ``runtime_error``."""
    if report is not None and result.status in ("ok", "error"):
        if "failed" not in report:
            return RUNTIME_ERROR, "malformed report: it says nothing of the tests"
        failed = report["failed"]
        if failed is None:
            return PASSED, ""
        error, detail = reported_exception(report), failed.get("detail") if type(failed) is dict else None
        if error is None or type(detail) is not str:
            return RUNTIME_ERROR, f"malformed report: failed is {str(failed)[:80]}"
        return HARNESS_ERRORS.get(error) or category_of_exception(error), _tail(detail)
    if result.status in ("timeout", "memory", "killed"):
        return classify_python(result)
    if report is None:
        kind = exception_type(result.stderr)
        if kind in (None, "SystemExit"):
            return EARLY_EXIT, (f"the program ended (exit status {result.returncode}) before the harness finished "
                                f"the tests: {_tail(result.stderr) or 'no output'}")
        return category_of_exception(kind), _tail(result.stderr)
    return RUNTIME_ERROR, f"the harness reported, but the sandbox ended {result.status}: {result.reason}"


def refine_for_generation(category: str, completion: str, finish_reason: str | None) -> str:
    """Blame the generation when it was empty, or when it hit the token limit and then failed."""
    if category == PASSED:
        return PASSED
    if not completion.strip():
        return EMPTY_GENERATION
    if finish_reason == "length":
        return TRUNCATED_GENERATION
    return category


_SANDBOX_DIR = re.compile(r"/[^\s\"']*?teeny-sandbox-[^/\s]+/work/")


def _tail(text: str, length: int = 500) -> str:
    """The end of ``text``, without the sandbox's temporary directory (so details compare across runs)."""
    text = _SANDBOX_DIR.sub("", (text or "").strip())
    return text if len(text) <= length else "..." + text[-length:]
