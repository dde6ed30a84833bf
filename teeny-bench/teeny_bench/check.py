"""``teeny bench check BENCH``: grade a benchmark's reference solutions on this machine, so a user can prove the
harness (sandbox, toolchains) before a long run. Exits non-zero when anything that should pass does not.

Each benchmark adds a function to :data:`CHECKS`: ``fn(args: CheckArgs) -> bool`` that prints its own report
with ``click.echo`` and returns whether the check passed.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import click


@dataclasses.dataclass
class CheckArgs:
    """The options of ``teeny bench check`` (each benchmark uses what applies to it)."""

    path: str | None = None
    limit: int | None = None
    timeout: float | None = None
    workers: int | None = None
    verbose: bool = False
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # -o key=value


def _check_humaneval(args: CheckArgs, plus: bool) -> bool:
    from teeny_bench.humaneval import check_canonical

    start = time.monotonic()
    cache = Path(args.extra.get("cache_dir", Path.home() / ".cache" / "teeny")) if plus else None
    problems, kinds, outcomes, skipped = check_canonical(
        args.path, plus=plus, limit=args.limit, timeout=args.timeout, workers=args.workers, cache_dir=cache,
        preamble=str(args.extra.get("preamble") or "") or None)
    passed = sum(o["passed"] for o in outcomes)
    for problem, outcome in zip(problems, outcomes):
        if not outcome["passed"] or args.verbose:
            detail = outcome["detail"].strip().splitlines()[-1] if outcome["detail"].strip() else ""
            click.echo(f"  {problem.task_id}: {outcome['category']} {detail[:200]}")
    name = "humaneval-plus" if plus else "humaneval"
    what = " and ".join({"canonical": "canonical solutions", "solutions": "solutions"}[kind]
                        for kind in dict.fromkeys(sorted(kinds)))
    click.echo(f"sandbox isolation: {isolation_summary()}")
    click.echo(f"{name}: {what} passed {passed}/{len(outcomes)} ({time.monotonic() - start:.1f} s)"
               + (f"; skipped {len(skipped)} problems without solutions ({', '.join(skipped[:3])}"
                  f"{', ...' if len(skipped) > 3 else ''})" if skipped else ""))
    return passed == len(outcomes)


def isolation_summary() -> str:
    """One line on what the sandbox achieves on this machine (what is missing is said, not hidden)."""
    from teeny_bench.sandbox import capabilities

    caps = set(capabilities())
    wanted = {"net": "network namespace", "pid": "PID namespace", "mount": "private filesystem",
              "view": "allow-list filesystem view", "uid": "unprivileged uid"}
    have = [text for key, text in wanted.items() if key in caps]
    missing = [text for key, text in wanted.items() if key not in caps]
    return (", ".join(have) or "no isolation") + (f"; NOT available: {', '.join(missing)}" if missing else "")


def check_humaneval(args: CheckArgs) -> bool:
    """The 164 HumanEval canonical solutions (or those of ``--path``) must pass their tests."""
    return _check_humaneval(args, plus=False)


def check_humaneval_plus(args: CheckArgs) -> bool:
    """The HumanEval+ canonical solutions must pass the base and plus tests (``--path`` to the file)."""
    return _check_humaneval(args, plus=True)


def check_humaneval_mul(args: CheckArgs) -> bool:
    """Each HumanEval-Mul language's toolchain, proven by tests that must fail cleanly (``--path`` a directory)."""
    from teeny_bench.multipl_e import check_command

    return check_command(args)


def check_livecodebench(args: CheckArgs) -> bool:
    """LiveCodeBench records load and decode, and known-correct/wrong programs grade right (``--path``)."""
    from teeny_bench.livecodebench import check_command

    return check_command(args)


# bench name -> check function. Owners of other benchmarks add theirs here.
CHECKS: dict[str, Callable[[CheckArgs], bool]] = {
    "humaneval": check_humaneval,
    "humaneval-plus": check_humaneval_plus,
    "humaneval-mul": check_humaneval_mul,
    "livecodebench": check_livecodebench,
}


@click.group("bench")
def bench() -> None:
    """Code benchmarks (teeny-bench): prove the harness and toolchains before a long run."""


@bench.command("check")
@click.argument("name")
@click.option("--path", default=None, help="problem file (humaneval-plus: HumanEvalPlus.jsonl.gz)")
@click.option("--limit", type=int, default=None, help="only the first N problems")
@click.option("--timeout", type=float, default=None, help="CPU seconds per program")
@click.option("--workers", type=int, default=None, help="parallel sandboxes (default: one per core)")
@click.option("--verbose", "-v", is_flag=True, help="list every problem, not only failures")
@click.option("-o", "options", multiple=True, help="benchmark-specific key=value options")
def check(name: str, path: str | None, limit: int | None, timeout: float | None, workers: int | None,
          verbose: bool, options: tuple[str, ...]) -> None:
    """Grade the reference solutions of benchmark NAME on this machine and print passed/total."""
    from teeny_core import TeenyError, parse_cli_options

    if name not in CHECKS:
        raise TeenyError(f"unknown benchmark {name!r}; expected one of {', '.join(sorted(CHECKS))}")
    if limit is not None and limit < 1:
        raise TeenyError(f"--limit {limit}: expected a number of problems of at least 1")
    if timeout is not None and not 0 < timeout <= 86400:
        raise TeenyError(f"--timeout {timeout:g}: expected a positive number of CPU seconds, at most 86400")
    if workers is not None and workers < 0:
        raise TeenyError(f"--workers {workers}: expected a number of parallel sandboxes (0: one per core)")
    ok = CHECKS[name](CheckArgs(path=path, limit=limit, timeout=timeout, workers=workers or None, verbose=verbose,
                                extra=parse_cli_options(options)))
    if not ok:
        raise SystemExit(1)
