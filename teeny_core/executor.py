"""The executor seam: how an experiment's variants are run.

The pipeline turns each variant into a :class:`VariantTask` (plain, picklable data: the run directory, the
validated experiment and the variant's name) and hands the tasks to an :class:`Executor`. Whatever the
executor (a local worker process per variant, a Ray task on a cluster), the work itself is the module-level
function :func:`run_variant_task`: quantize if needed, load, evaluate, profile, all written to the variant's
store entry. It reports progress through ``emit(event)`` and returns an :class:`Outcome`; the parent alone
writes ``results.json`` and the report.

Events are small JSON-able dicts, ``{"variant", "stage", "done", "total"}`` for progress and
``{"variant", "message"}`` for a line to show, so any channel that carries dicts (a pipe, a Ray queue) carries
them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import signal
import threading
from abc import abstractmethod
from typing import Any, Callable

from teeny_core.types import Component

Event = dict[str, Any]
Emit = Callable[[Event], None]


@dataclasses.dataclass
class VariantTask:
    """One variant to run: everything a worker needs, as plain data."""

    run_dir: str  # absolute path of runs/<experiment>/; must be visible to the worker
    experiment: dict[str, Any]  # Experiment.to_dict() of the validated experiment
    variant: str
    prepare: bool = False  # also build what the variants share (dequantized baseline, calibration set)


@dataclasses.dataclass
class Outcome:
    """How a task ended: ``ok``, or the one-line reason and the stage it failed in."""

    variant: str
    ok: bool
    error: str | None = None
    stage: str | None = None
    fatal: bool = False  # the machine, not the variant, failed (a full disk): the run stops with this error

    @classmethod
    def failed(cls, variant: str, exc: BaseException, stage: str | None) -> "Outcome":
        """The outcome of a task that raised ``exc``: its one line, and whether it must stop the whole run."""
        from teeny_core.errors import DiskFullError, is_disk_full
        from teeny_core.plugins import _one_line

        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            exc = DiskFullError(f"{variant}'s files")
        return cls(variant, False, _one_line(exc), stage, fatal=isinstance(exc, DiskFullError))


class Executor(Component):
    """Runs variant tasks and returns one :class:`Outcome` per task, in task order."""

    @abstractmethod
    def run(self, tasks: list[VariantTask], options: Any, on_event: Emit) -> list[Outcome]:
        """Run every task (concurrently if the executor can) through :func:`run_variant_task`; never raise for a
        task that fails or whose worker dies: that is a failed :class:`Outcome`. ``on_event`` may be called
        from any thread."""


def run_variant_task(task: VariantTask, emit: Emit | None = None) -> Outcome:
    """Run one variant in this process: what must be built first (the shared inputs, the variant's artifact) is
    built in a child process of its own, so that the load is measured on a clean heap; then load, evaluate and
    profile, resuming whatever the store already holds. A failure is returned, never raised."""
    from teeny_core.modeling import quiet_libraries, return_freed_memory
    from teeny_core.plugins import Plugins

    quiet_libraries()
    return_freed_memory()
    emit = emit or (lambda event: None)
    stage: list[str | None] = [None]

    def tracked(event: Event) -> None:
        if event.get("stage"):
            stage[0] = event["stage"]
        emit({**event, "variant": task.variant})

    try:
        pipeline = _pipeline(task, Plugins.load(), tracked)
        if (task.prepare and pipeline.needs_preparation()) or pipeline.needs_quantization(task.variant):
            tracked({"stage": "prepare" if task.prepare else "quantize", "done": 0, "total": None})
            code, outcome = spawn_and_relay(_build_main, task, tracked)
            if outcome is None:
                return Outcome(task.variant, False, describe_exit(code), stage[0])
            if not outcome["ok"]:
                return Outcome(**outcome)
        pipeline.run_variant(task.variant)
        tracked({"stage": "done", "done": 1, "total": 1})
        return Outcome(task.variant, True)
    except Exception as exc:  # the variant failed; the run goes on
        _keep_traceback(task)
        return Outcome.failed(task.variant, exc, stage[0])


def _keep_traceback(task: VariantTask) -> None:
    """Append the current exception's traceback to the variant's ``error.log`` (the outcome holds one line)."""
    import time
    import traceback
    from pathlib import Path

    with contextlib.suppress(OSError):
        path = Path(task.run_dir) / task.variant / "error.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} pid {os.getpid()}\n")
            f.write(traceback.format_exc())


def _pipeline(task: VariantTask, plugins, emit: Emit):
    from pathlib import Path

    from teeny_core.experiment import experiment_from_dict
    from teeny_core.pipeline import Pipeline

    return Pipeline(experiment_from_dict(task.experiment), plugins, root=Path(task.run_dir),
                    say=lambda text: emit({"message": text}), emit=emit)


def _build_main(task: VariantTask, conn) -> None:
    """Child process: build the shared inputs (for the baseline's task) and the variant's artifact."""
    from teeny_core.modeling import quiet_libraries
    from teeny_core.plugins import Plugins

    _exit_with_parent()
    quiet_libraries()
    send = _sender(conn)
    try:
        pipeline = _pipeline(task, Plugins.load(), send)
        if task.prepare:
            pipeline.prepare_shared()
        if pipeline.needs_quantization(task.variant):
            pipeline.quantize(task.variant)
        send({"outcome": dataclasses.asdict(Outcome(task.variant, True))})
    except Exception as exc:
        _keep_traceback(task)
        stage = "prepare" if task.prepare else "quantize"
        send({"outcome": dataclasses.asdict(Outcome.failed(task.variant, exc, stage))})


def worker_main(task: VariantTask, conn) -> None:
    """Entry point of a local worker process: run the task, send its events and outcome through ``conn``."""
    _exit_with_parent()
    send = _sender(conn)
    outcome = run_variant_task(task, send)
    send({"outcome": dataclasses.asdict(outcome)})


def _sender(conn) -> Emit:
    lock = threading.Lock()  # evaluators may report from several threads

    def send(event: Event) -> None:
        with lock:
            conn.send(event)
    return send


def spawn_and_relay(target: Callable[[VariantTask, Any], None], task: VariantTask, emit: Emit,
                    started: Callable[[Any], None] | None = None) -> tuple[int | None, dict[str, Any] | None]:
    """Run ``target(task, conn)`` in a fresh spawned process (no inherited allocator state, no torch already
    imported), pass its events to ``emit`` until it exits; return (exit code, its outcome dict or None)."""
    ctx = multiprocessing.get_context("spawn")
    reader, writer = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, args=(task, writer), name=f"teeny-{task.variant}")
    proc.start()
    writer.close()
    if started is not None:
        started(proc)
    outcome = None
    try:
        while True:
            try:
                message = reader.recv()
            except (EOFError, OSError):
                break  # the child exited (or died) and every message it sent has been read
            if "outcome" in message:
                outcome = message["outcome"]
            else:
                emit(message)
        proc.join()
    finally:
        if proc.is_alive():  # interrupted: do not leave the worker running
            proc.terminate()
            proc.join()
        reader.close()
    return proc.exitcode, outcome


def describe_exit(code: int | None) -> str:
    """``worker killed by SIGSEGV``, ``worker exited with status 3``."""
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"worker killed by {name}{hint}"
    return f"worker exited with status {code} without a result"


def _exit_with_parent() -> None:
    """End this worker when its parent dies (a ``kill -9`` of the run must not leave workers behind)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            threading.Event().wait(0.5)
    threading.Thread(target=watch, daemon=True, name="teeny-parent-watch").start()


# -- worker memory ------------------------------------------------------------------------------------------
def mark_memory() -> int:
    """This process's RSS now, and restart its peak-RSS counter from here (Linux), so that
    :func:`peak_memory` measures what came after (the model) and not what came before."""
    import psutil

    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    return psutil.Process().memory_info().rss


def peak_memory() -> dict[str, Any]:
    """Peak RSS since :func:`mark_memory` (VmHWM; elsewhere the process's lifetime peak) and peak GPU memory."""
    import sys

    from teeny_core.modeling import peak_rss_bytes

    peak = peak_rss_bytes()
    out: dict[str, Any] = {"peak_rss_bytes": peak, "peak_gpu_bytes": None}
    torch = sys.modules.get("torch")  # only a worker that already uses torch can have used its GPU memory
    if torch is not None and torch.cuda.is_available():
        out["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
    return out

