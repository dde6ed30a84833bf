"""A worker's side of a run: :func:`run_variant_task` runs one variant (build what it needs in a child process,
then load, evaluate and profile into its store entry) and reports through events; :class:`VariantRunner` is
that work. ``teeny quantize`` and ``teeny eval`` call the same :func:`build_artifact` and :func:`evaluate`."""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from teeny_core.executor import Emit, Event, Outcome, VariantTask
from teeny_core.experiment import BASELINE, Variant, experiment_from_dict
from teeny_core.options import Options
from teeny_core.modeling import ARTIFACT_MANIFEST, Artifact, ModelSource
from teeny_core.plan import Plan
from teeny_core.plugins import Plugins
from teeny_core.store import SampleLog, StoreContext, build_once, read_json, staging_dir, write_json
from teeny_core.types import CalibrationSet, LoadedModel


def run_variant_task(task: VariantTask, emit: Emit | None = None) -> Outcome:
    """Run one variant in this process: what must be built first (the shared inputs, the variant's artifact) is
    built in a child process of its own, so that the load is measured on a clean heap; then load, evaluate and
    profile, resuming whatever the store already holds. A failure is returned, never raised."""
    from teeny_core.modeling import quiet_libraries, return_freed_memory

    quiet_libraries()
    return_freed_memory()
    emit = emit or (lambda event: None)
    stage: list[str | None] = [None]

    def tracked(event: Event) -> None:
        if event.get("stage"):
            stage[0] = event["stage"]
        emit({**event, "variant": task.variant})

    try:
        runner = VariantRunner.for_task(task, tracked)
        plan = runner.plan
        if (task.prepare and plan.needs_preparation()) or plan.needs_quantization(task.variant):
            tracked({"stage": "prepare" if task.prepare else "quantize", "done": 0, "total": None})
            code, outcome = spawn_and_relay(_build_main, task, tracked)
            if outcome is None:
                return Outcome(task.variant, False, describe_exit(code), stage[0])
            if not outcome["ok"]:
                return Outcome(**outcome)
        runner.run_variant(task.variant)
        tracked({"stage": "done", "done": 1, "total": 1})
        return Outcome(task.variant, True)
    except Exception as exc:  # the variant failed; the run goes on
        _keep_traceback(task)
        return Outcome.failed(task.variant, exc, stage[0])


def _keep_traceback(task: VariantTask) -> None:
    """Append the current exception's traceback to the variant's ``error.log`` (the outcome holds one line)."""
    import traceback

    with contextlib.suppress(OSError):
        path = Path(task.run_dir) / task.variant / "error.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} pid {os.getpid()}\n")
            f.write(traceback.format_exc())


def _build_main(task: VariantTask, conn) -> None:
    """Child process: build the shared inputs (for the baseline's task) and the variant's artifact."""
    from teeny_core.modeling import quiet_libraries

    _exit_with_parent()
    quiet_libraries()
    send = _sender(conn)
    try:
        runner = VariantRunner.for_task(task, send)
        if task.prepare:
            runner.prepare_shared()
        if runner.plan.needs_quantization(task.variant):
            runner.quantize(task.variant)
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


class VariantRunner:
    """The work on one experiment's variants in this process: build the shared inputs and artifacts, then load,
    evaluate and profile a variant into its store entry, resuming what is stored. ``emit`` carries progress
    events and ``{"message": ...}`` lines to whoever shows them."""

    def __init__(self, plan: Plan, emit: Emit) -> None:
        self.plan, self.exp, self.plugins, self.emit = plan, plan.exp, plan.plugins, emit
        self._baseline: Artifact | None = None

    @classmethod
    def for_task(cls, task: VariantTask, emit: Emit) -> "VariantRunner":
        """The runner of a task's experiment, with the installed plugins, writing into the task's run directory."""
        plugins = Plugins.load()
        return cls(Plan(experiment_from_dict(task.experiment, plugins), plugins, root=Path(task.run_dir)), emit)

    def say(self, text: str) -> None:
        self.emit({"message": text})

    # -- what variants share -----------------------------------------------------------------------
    def prepare_shared(self) -> None:
        """Build what variants share before they run (in parallel): the baseline artifact and, if any variant
        needs one, the calibration set."""
        self.baseline_artifact()
        if any(self.plan.needs_calibration(v) for v in self.exp.variants):
            self.calibration()

    def baseline_artifact(self) -> Artifact:
        """The original model as its runtime scores it: the float copy, or a GGUF source as published
        when the experiment's ``baseline_runtime`` loads GGUF files."""
        if self._baseline is not None:
            return self._baseline
        src, floats = self.plan.source, self.float_artifact()
        runtime = self.exp.baseline_runtime
        if src.gguf_file and runtime and "gguf" in self.plugins.get("runtime", runtime).formats:
            def link(tmp: Path) -> None:
                (tmp / src.gguf_file).symlink_to(Path(src.path) / src.gguf_file)
                self.baseline_source().load_tokenizer().save_pretrained(tmp)  # tokenized like the variants
                Artifact("gguf", tmp, {"method": "none", "source": f"{src.path}/{src.gguf_file}"},
                         file=src.gguf_file).save()

            target = build_once(floats.path.with_name(floats.path.name + ".gguf"), ARTIFACT_MANIFEST, link)
            self._baseline = Artifact.open(target)
        else:
            self._baseline = floats
        return self._baseline

    def float_artifact(self) -> Artifact:
        """The original as an hf directory quantizers read; a GGUF source is dequantized once, to the
        experiment's ``baseline_dtype``."""
        src = self.plan.source
        if not src.gguf_file:
            return Artifact("hf", Path(src.path), {"method": "none", "source": src.path})
        dtype = self.exp.baseline_dtype

        def dequantize(tmp: Path) -> None:
            from teeny_core.modeling import dequantize_gguf

            self.say(f"dequantizing {src.gguf_file} to a {dtype} float baseline (once)")
            dequantize_gguf(src, tmp, dtype)
            Artifact("hf", tmp, {"method": "none", "source": f"{src.path}/{src.gguf_file}", "dtype": dtype}).save()

        return Artifact.open(build_once(self.plan.float_dir(), ARTIFACT_MANIFEST, dequantize))

    def baseline_source(self) -> ModelSource:
        """What quantizers read: the source itself, or its dequantized copy for a GGUF source."""
        return ModelSource(str(self.float_artifact().path), dtype=self.exp.dtype, device=self.exp.device)

    def calibration(self) -> CalibrationSet:
        """The experiment's calibration set, made once and shared by every variant through the cache."""
        method, options = self.exp.calibrator, self.exp.calibration
        path = self.plan.calibration_path()
        cached = read_json(path, expect=dict)
        if cached is not None:
            return CalibrationSet(**cached)
        self.say(f"calibration: {method} {options.to_dict()}")
        cal = self.plugins.get("calibrator", method)().samples(self.baseline_source().load_tokenizer(), options,
                                                               seed=self.exp.seed)
        write_json(path, {"name": cal.name, "samples": cal.samples, "meta": cal.meta})
        return cal

    # -- one variant -------------------------------------------------------------------------------
    def variant_dir(self, name: str) -> Path:
        """The variant's store entry, set aside (kept as ``<name>.stale-<time>``) if its settings changed."""
        variant = self.plan.variant(name)
        vdir = self.plan.root / name
        key = self.plan.variant_key(variant)
        info = read_json(vdir / "variant.json", expect=dict)
        if info is not None and info.get("key") != key:
            stale = vdir.with_name(f"{name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
            self.say(f"variant {name}: its settings changed since the last run; old results kept in {stale}")
            vdir.rename(stale)
        vdir.mkdir(parents=True, exist_ok=True)
        write_json(vdir / "variant.json", {"key": key, "name": name, "method": variant.method,
                                           "options": variant.options.to_dict(), "runtime": variant.runtime,
                                           "describe": self.plan.describe(variant)})
        return vdir

    def quantize(self, name: str) -> Artifact:
        """Make (or reuse) the variant's artifact."""
        vdir = self.variant_dir(name)
        return self.artifact_for(self.plan.variant(name), vdir, read_json(vdir / "profile.json", {}, expect=dict))

    def artifact_for(self, variant: Variant, vdir: Path, profile: dict[str, Any]) -> Artifact:
        """The artifact a variant evaluates: the baseline, an existing checkpoint, or the one it makes (once)."""
        from teeny_core.checkpoints import open_checkpoint

        if variant.name == BASELINE:
            return self.baseline_artifact()
        if variant.checkpoint:
            return open_checkpoint(variant.checkpoint)
        target = vdir / "artifact"
        if (target / ARTIFACT_MANIFEST).exists():
            return Artifact.open(target)
        quantizer = self.plugins.get("quantizer", variant.method)()
        calibration = self.calibration() if self.plan.needs_calibration(variant) else None
        source = self.baseline_source()
        self.say(f"{variant.name}: quantizing with {variant.method}")
        with self.measure("quantize", profile):
            build_artifact(quantizer, source, calibration, variant.options, target)
        write_json(vdir / "profile.json", profile)
        return Artifact.open(target)

    def run_variant(self, name: str) -> None:
        """Load, evaluate and profile one variant (quantizing first if needed) into its store entry."""
        from teeny_core.modeling import resolve_device

        variant = self.plan.variant(name)
        vdir = self.variant_dir(name)
        profile: dict[str, Any] = read_json(vdir / "profile.json", {}, expect=dict)
        artifact = self.artifact_for(variant, vdir, profile)
        samples = SampleLog(vdir / "samples.jsonl")
        if not self._repaired(samples) and self.plan.has_metrics(name):
            self.say(f"{variant.name}: already complete")
            return
        device = self.exp.device if self.exp.device != "auto" else resolve_device("auto")
        runtime_cls = self.plugins.runtime_for(artifact.format, variant.runtime, device)
        runtime_opts = self._runtime_options(runtime_cls)
        self.say(f"{variant.name}: loading with {runtime_cls.name}")
        self.emit({"stage": "load", "done": 0, "total": 1})
        runtime_cls.import_libraries()
        worker: dict[str, Any] = {"pid": os.getpid(), "baseline_rss_bytes": mark_memory()}
        with self.measure("load", profile):
            model = runtime_cls().load(artifact, runtime_opts)
        profile["load"]["weight_bytes"] = model.weight_bytes()
        profile["runtime"] = runtime_cls.name
        facts = getattr(model, "load_facts", dict)()  # e.g. packed kernels, and the layers left float and why
        profile["load"]["runtime"] = {"name": runtime_cls.name, **facts}
        try:
            metrics: dict[str, Any] = {}
            for name_, opts in self.exp.evaluators.items():
                if variant.evaluators is not None and name_ not in variant.evaluators:
                    continue
                ev_cls = self.plugins.get("evaluator", name_)
                with self.measure(f"evaluate:{name_}", profile):
                    metrics[name_] = evaluate(
                        model, name_, ev_cls(), opts, samples,
                        config=self.plan.evaluator_config(name_), seed=self.exp.seed, limit=self.exp.limit,
                        cache_dir=self.plan.cache_dir,
                        reference_loader=None if variant.name == BASELINE else self._load_reference,
                        reference_id=self.plan.baseline_id(), progress_factory=self._progress_bar)
            for prof, opts in self.exp.profilers.items():
                prof_cls = self.plugins.get("profiler", prof)
                self.emit({"stage": f"benchmark:{prof}", "done": 0, "total": 1})
                profile.setdefault("benchmark", {}).update(prof_cls().benchmark(model, artifact, opts))
        finally:
            model.close()
        profile["worker"] = {**worker, **peak_memory()}
        profile["peak_rss_bytes"] = max((s.get("peak_rss_bytes", 0) for s in profile.values()
                                         if isinstance(s, dict)), default=None)
        write_json(vdir / "profile.json", profile)
        write_json(vdir / "metrics.json", metrics)
        write_json(vdir / "done.json", {"signature": self.plan.evaluation_signature(variant)})

    def _repaired(self, samples: SampleLog) -> bool:
        """Opening the log quarantined unreadable lines: say so, and mark the variant unfinished so that only
        those items are redone."""
        if not samples.quarantined:
            return False
        self.say(f"{samples.path.parent.name}: {samples.quarantined} unreadable line(s) of {samples.path.name} "
                 f"moved to {samples.quarantine_path}; redoing only those items")
        (samples.path.parent / "done.json").unlink(missing_ok=True)
        return True

    def _runtime_options(self, cls) -> Options:
        """The experiment's options for a runtime; one it does not configure gets its defaults and the
        experiment's device."""
        if cls.name in self.exp.runtimes:
            return self.exp.runtimes[cls.name]
        takes_device = "device" in {f.name for f in cls.Options.fields()}
        return cls.Options.from_mapping({"device": self.exp.device} if takes_device else {})

    def _load_reference(self) -> LoadedModel:
        from teeny_core.modeling import resolve_device

        base = self.baseline_artifact()
        cls = self.plugins.runtime_for(base.format, self.exp.baseline_runtime, device=resolve_device(self.exp.device))
        return cls().load(base, self._runtime_options(cls))

    @contextlib.contextmanager
    def measure(self, stage: str, profile: dict[str, Any]) -> Iterator[None]:
        """Run the experiment's profilers around a stage; their figures go to ``profile[stage]``."""
        with contextlib.ExitStack() as stack:
            found = []
            for name, opts in self.exp.profilers.items():
                found.append(stack.enter_context(self.plugins.get("profiler", name)().measure(stage, opts)))
            yield
        merged: dict[str, Any] = {}
        for m in found:
            merged.update(m)
        profile[stage] = merged

    def _progress_bar(self, total: int, description: str) -> "_EventBar":
        return _EventBar(self.emit, description, total)


def build_artifact(quantizer, source: ModelSource, calibration: CalibrationSet | None, options, target: Path) -> None:
    """Quantize ``source`` into the directory ``target``, which appears whole or not at all (written in a
    staging directory, the manifest saved if the quantizer did not)."""
    with staging_dir(target) as tmp:
        made = quantizer.quantize(source, calibration, options, tmp)
        if not (tmp / ARTIFACT_MANIFEST).exists():
            made.save()


def evaluate(model: LoadedModel, name: str, evaluator, options, samples: SampleLog, *, config: str, seed: int,
             limit: int, cache_dir: Path, reference_loader: Callable[[], LoadedModel] | None, reference_id: str,
             progress_factory: Callable[[int, str], Any] | None) -> dict[str, Any]:
    """Run one evaluator on ``model``, its records appended to ``samples`` (finished ones skipped), and return
    its metrics over every record written under ``config``."""
    ctx = StoreContext(samples, name, seed=seed, limit=limit or None, cache_dir=cache_dir, config=config,
                       reference_loader=reference_loader, reference_id=reference_id,
                       progress_factory=progress_factory)
    try:
        evaluator.evaluate(model, options, ctx)
    finally:
        ctx.close()
    return evaluator.summarize(samples.for_evaluator(name, config), options)


class _EventBar:
    """An evaluator's progress bar whose updates go to the parent as events."""

    def __init__(self, emit: Emit, stage: str, total: int) -> None:
        self.emit, self.stage, self.total, self.done = emit, stage, total, 0

    def __enter__(self) -> "_EventBar":
        self.emit({"stage": self.stage, "done": 0, "total": self.total})
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def advance(self, n: int = 1) -> None:
        self.done += n
        self.emit({"stage": self.stage, "done": self.done, "total": self.total})


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

