"""Built-in executors: ``local`` (the default: a fresh worker process per variant) and ``inline`` (in the
``teeny`` process itself, for debugging)."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from teeny_core import hookimpl
from teeny_core.executor import Emit, Executor, Outcome, VariantTask
from teeny_core.worker import describe_exit, run_variant_task, spawn_and_relay, worker_main
from teeny_core.options import NoOptions, Options, option


@dataclasses.dataclass
class LocalOptions(Options):
    workers: int = option(1, "variants run at the same time, each in its own process (memory adds up)", min=1)


class LocalExecutor(Executor[LocalOptions]):
    """A fresh worker process per variant (spawned): memory measured alone, a crash contained."""

    name = "local"
    Options = LocalOptions

    def run(self, tasks: list[VariantTask], options: LocalOptions, on_event: Emit) -> list[Outcome]:
        if not tasks:
            return []
        procs: list[Any] = []
        pool = ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="teeny-worker")
        try:
            return list(pool.map(lambda task: _run_one(task, on_event, procs.append), tasks))
        except BaseException:  # Ctrl-C: stop the workers; the store keeps what they finished
            for proc in procs:
                if proc.is_alive():
                    proc.terminate()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _run_one(task: VariantTask, on_event: Emit, started) -> Outcome:
    last_stage: list[str | None] = [None]

    def relay(event: dict[str, Any]) -> None:
        if event.get("stage"):
            last_stage[0] = event["stage"]
        on_event(event)

    code, outcome = spawn_and_relay(worker_main, task, relay, started)
    if outcome is None:
        return Outcome(task.variant, False, describe_exit(code), last_stage[0])
    return Outcome(**outcome)


class InlineExecutor(Executor[NoOptions]):
    """Every variant in the teeny process itself, one after another: for debugging (no isolation)."""

    name = "inline"
    Options = NoOptions

    def run(self, tasks: list[VariantTask], options: NoOptions, on_event: Emit) -> list[Outcome]:
        return [run_variant_task(task, on_event) for task in tasks]


@hookimpl
def teeny_register_executors(register):
    register(LocalExecutor)
    register(InlineExecutor)
