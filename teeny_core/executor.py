"""The executor seam: how an experiment's variants are run (only the seam; the work is in :mod:`teeny_core.worker`).

The pipeline turns each variant into a :class:`VariantTask` (plain, picklable data: the run directory, the
validated experiment and the variant's name) and hands the tasks to an :class:`Executor`. Whatever the
executor (a local worker process per variant, a Ray task on a cluster), the work itself is the module-level
function :func:`teeny_core.worker.run_variant_task`: quantize if needed, load, evaluate, profile, all written to
the variant's store entry. It reports progress through ``emit(event)`` and returns an :class:`Outcome`; the
parent alone writes ``results.json`` and the report.

Events are small JSON-able dicts, ``{"variant", "stage", "done", "total"}`` for progress and
``{"variant", "message"}`` for a line to show, so any channel that carries dicts (a pipe, a Ray queue) carries
them.
"""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from typing import Any, Callable

from teeny_core.types import Component, OptionsT

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
        from teeny_core.errors import DiskFullError, is_disk_full, one_line

        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            exc = DiskFullError(f"{variant}'s files")
        return cls(variant, False, one_line(exc), stage, fatal=isinstance(exc, DiskFullError))


class Executor(Component[OptionsT]):
    """Runs variant tasks and returns one :class:`Outcome` per task, in task order."""

    @abstractmethod
    def run(self, tasks: list[VariantTask], options: OptionsT, on_event: Emit) -> list[Outcome]:
        """Run every task (concurrently if the executor can) through :func:`teeny_core.worker.run_variant_task`; never raise for a
        task that fails or whose worker dies: that is a failed :class:`Outcome`. ``on_event`` may be called
        from any thread."""
