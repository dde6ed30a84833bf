"""The ``ray`` executor: each variant of a run is one Ray task, scheduled with the resources it asks for.

The task body is the core's :func:`teeny_core.worker.run_variant_task`, the same function the local executor
runs in a worker process, so a variant gives the same store entries wherever it ran. Each task gets a fresh Ray
worker process (``max_calls=1``): its memory is measured alone, as with the local executor.

What is shared: the run directory. Workers write artifacts and samples straight into ``<run_dir>/<variant>/``, so
the run directory must be on a filesystem every node mounts at the same path (NFS, a cluster filesystem). We chose
that over shipping results back to the driver because samples are appended durably one by one as they finish:
that is what lets a task that Ray retries after its worker died resume where it stopped, and artifacts (gigabytes)
never travel through Ray's object store. A worker that cannot see the run directory fails its variant with one
line saying so (the driver leaves a token file there and each task checks for it).
"""

from __future__ import annotations

import dataclasses
import secrets
import socket
from pathlib import Path
from typing import Any

from teeny_core import Emit, Executor, Options, Outcome, TeenyError, VariantTask, option

TOKEN_PREFIX = ".teeny-ray-"


@dataclasses.dataclass
class RayOptions(Options):
    address: str = option("", "cluster to use: '' starts a local Ray, 'auto' joins the cluster this node belongs "
                               "to, or ray://host:port")
    gpus_per_variant: float = option(0.0, "GPUs reserved for each variant's task", min=0)
    cpus_per_variant: float = option(1.0, "CPUs reserved for each variant's task", min=0)
    memory_per_variant: str = option("", "memory reserved for each variant's task, e.g. 16GiB ('' reserves none)")
    max_retries: int = option(3, "times Ray reruns a variant whose worker died (kill -9, node lost); the rerun "
                                 "resumes from the run store", min=0)


class RayExecutor(Executor[RayOptions]):
    """One Ray task per variant on a Ray cluster (a local one by default); the run directory must be shared."""

    name = "ray"
    Options = RayOptions

    def run(self, tasks: list[VariantTask], options: RayOptions, on_event: Emit) -> list[Outcome]:
        if not tasks:
            return []
        resources = _resources(options)
        ray = _connect(options.address)
        from ray.util.queue import Queue

        token = _leave_token(Path(tasks[0].run_dir))
        events = Queue()
        remote = ray.remote(max_calls=1)(_run_on_worker).options(max_retries=options.max_retries,
                                                                 retry_exceptions=False, **resources)
        refs = {remote.remote(dataclasses.asdict(task), token, events): task for task in tasks}
        outcomes: dict[str, Outcome] = {}
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=0.25)
                _drain(events, on_event)
                for ref in done:
                    task = refs[ref]
                    try:
                        outcomes[task.variant] = Outcome(**ray.get(ref))
                    except Exception as exc:  # retries used up, node lost, cancelled
                        outcomes[task.variant] = Outcome(task.variant, False, _ray_error(exc), "ray")
            _drain(events, on_event)
        except BaseException:  # Ctrl-C: cancel what still runs; the run store keeps every finished item
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        finally:
            events.shutdown()
            (Path(tasks[0].run_dir) / token).unlink(missing_ok=True)
        return [outcomes[task.variant] for task in tasks]


def _resources(options: RayOptions) -> dict[str, Any]:
    out: dict[str, Any] = {"num_cpus": options.cpus_per_variant, "num_gpus": options.gpus_per_variant}
    if options.memory_per_variant:
        from teeny_core.units import parse_size

        out["memory"] = parse_size(options.memory_per_variant)
    return out


def _connect(address: str):
    """The ``ray`` module, connected: to the cluster already joined in this process, to ``address``, or to a new
    local cluster."""
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - teeny-ray depends on ray
        raise TeenyError(f"the ray executor needs the ray package ({exc}); pip install teeny-ray") from None
    if ray.is_initialized():
        return ray
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(include_dashboard=False, log_to_driver=False)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TeenyError(f"cannot connect to the Ray cluster at {address or 'a new local cluster'!r}: {first}") \
            from None
    return ray


def _leave_token(run_dir: Path) -> str:
    token = TOKEN_PREFIX + secrets.token_hex(8)
    (run_dir / token).write_text("a teeny-ray driver checks that its workers see this run directory\n")
    return token


def _drain(events, on_event: Emit) -> None:
    size = events.qsize()
    if size:
        for event in events.get_nowait_batch(size):
            on_event(event)


def _ray_error(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    kind = type(exc).__name__
    detail = next((line.strip() for line in text if line.strip()), "")
    return f"{kind}: {detail}"[:500] if detail else kind


def _run_on_worker(task_data: dict[str, Any], token: str, events) -> dict[str, Any]:
    """The Ray task: run one variant on this node, sending its progress events (tagged with the node)."""
    from teeny_core import run_variant_task

    task = VariantTask(**task_data)
    node = socket.gethostname()
    if not (Path(task.run_dir) / token).is_file():
        return dataclasses.asdict(Outcome(
            task.variant, False, f"the Ray worker on node {node} cannot see the run directory {task.run_dir}: put "
            f"it on a filesystem that every node mounts at the same path", "start"))

    def emit(event: dict[str, Any]) -> None:
        events.put({**event, "node": node})

    return dataclasses.asdict(run_variant_task(task, emit))
