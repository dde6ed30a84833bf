"""What ``teeny`` prints: the run's progress display and its results and verdict tables (rich imported inside)."""

from __future__ import annotations

import threading
from typing import Any

import click

from teeny_core.units import format_bytes

def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


def _bar_factory(progress):
    return lambda total, description: _Bar(progress, progress.add_task(description, total=total))


class _Bar:
    """An evaluator's progress bar on this process's display (removed when done)."""

    def __init__(self, progress, task) -> None:
        self.progress, self.task = progress, task

    def __enter__(self) -> "_Bar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.remove_task(self.task)

    def advance(self, n: int = 1) -> None:
        self.progress.advance(self.task, n)


class Display:
    """``teeny run``'s view: one progress line per variant (stage, items done/total) fed by worker events, the
    workers' messages, and a line per failed variant."""

    def __init__(self, progress) -> None:
        self.progress, self.say = progress, progress.console.print
        self.lock = threading.Lock()  # executors may report from several threads
        self.tasks: dict[str, Any] = {}

    def event(self, event: dict[str, Any]) -> None:
        variant = event.get("variant", "?")
        with self.lock:
            if "message" in event:
                self.say(str(event["message"]))
                return
            if variant not in self.tasks:
                self.tasks[variant] = self.progress.add_task(f"{variant}: waiting", total=None)
            node = f" on {event['node']}" if event.get("node") else ""
            self.progress.update(self.tasks[variant], description=f"{variant}: {event.get('stage')}{node}",
                                 completed=event.get("done") or 0, total=event.get("total"))

    def finished(self, outcome) -> None:
        with self.lock:
            if not outcome.ok:
                if outcome.variant in self.tasks:
                    self.progress.update(self.tasks[outcome.variant], description=f"{outcome.variant}: FAILED")
                where = f" during {outcome.stage}" if outcome.stage else ""
                self.say(f"{outcome.variant}: failed{where}: {outcome.error}")


def console():
    """A rich console; output that is not a terminal gets 200 columns so tables stay readable in logs."""
    from rich.console import Console

    out = Console()
    if not out.is_terminal:
        out.width = 200
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def headline(metrics: dict[str, Any], declared: dict[str, Any]) -> list[tuple[str, Any]]:
    """The metrics worth a column: the evaluator's declared ones (headline first), else the first three numbers."""
    names = list(declared.get("metrics", {}))
    if declared.get("headline") in names:
        names.remove(declared["headline"])
        names.insert(0, declared["headline"])
    found = [(declared["metrics"][k].get("label", k), metrics[k]) for k in names
             if isinstance(metrics.get(k), (int, float))][:3]
    if not found:
        found = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)][:3]
    return found


def print_results(results: dict[str, Any]) -> None:
    """The results table: one row per variant, headline metrics per evaluator, size, memory, speed, runtime."""
    from rich.table import Table

    from teeny_core.results import memory_of, runtime_of, weight_bytes

    variants = results["variants"]
    declared = results.get("evaluators") or {}
    columns: list[tuple[str, str]] = []
    for v in variants:
        for ev, metrics in v["metrics"].items():
            for label, _ in headline(metrics, declared.get(ev, {})):
                if (ev, label) not in columns:
                    columns.append((ev, label))
    table = Table(title=f"experiment {results['experiment']}")
    for header in ["variant", "method", "setting"] + [f"{ev}\n{label}" for ev, label in columns] + \
            ["size", "packed", "weights", "peak memory", "tok/s", "runtime"]:
        table.add_column(header)
    for v in variants:
        setting = " ".join(f"{k}={val}" if isinstance(val, bool) else str(val) for k, val in v["describe"].items())
        if v.get("status") == "failed":
            table.add_row(v["name"], v["method"], setting, *["-"] * len(columns),
                          f"[red]FAILED during {v.get('failed_stage') or '?'}: {v.get('error')}[/red]")
            continue
        bench = v["profile"].get("benchmark", {})
        cells = [_fmt(dict(headline(v["metrics"].get(ev, {}), declared.get(ev, {}))).get(label, "-"))
                 for ev, label in columns]
        mem, how = memory_of(v)
        table.add_row(v["name"], v["method"], setting, *cells, format_bytes(v.get("artifact_bytes")),
                      format_bytes(v.get("packed_bytes")), format_bytes(weight_bytes(v)), format_bytes(mem if "artifact" not in how else None),
                      _fmt(bench.get("decode_tokens_per_s") or "-"), runtime_of(v))
    console().print(table)


def print_verdicts(results: dict[str, Any]) -> None:
    """One line per pass/fail comparison an analyzer made: the verdict, with the minimum detectable
    effect when no difference was found (so a small sample says what it could not see)."""
    for findings in results.get("analysis", {}).values():
        for variant, per_evaluator in findings.items():
            if not isinstance(per_evaluator, dict) or variant.startswith("_"):
                continue
            for evaluator, metrics in per_evaluator.items():
                for r in metrics.values() if isinstance(metrics, dict) else ():
                    if isinstance(r, dict) and r.get("kind") == "pass/fail" and r.get("verdict"):
                        scores = " -> ".join(_fmt((r.get(side) or {}).get("score", "-")) for side in ("baseline", "variant"))
                        click.echo(f"{variant}: {evaluator} {r.get('metric')} {scores} over {r.get('n_problems')} "
                                   f"problems: {r['verdict']}")
