"""The experiment pipeline: calibrate, quantize, load, evaluate and profile each variant, then analyze.

:meth:`Pipeline.run` (the parent) hands the variants to an executor (baseline first, since variants compare
against its outputs) and then alone writes ``results.json`` and the report; :meth:`Pipeline.run_variant`
is what a worker runs for one variant. Every stage is resumable: artifacts appear atomically and are reused
when their cache key matches, finished evaluation records are never redone, and a ``kill -9`` at any moment
loses at most the item in flight. Everything that can be checked without running (the model's files, every
variant's settings, the output directory) is checked before anything on disk changes; one run at a time holds
the run directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from teeny_core import windows
from teeny_core.checkpoints import checkpoint_key, open_checkpoint
from teeny_core.errors import TeenyError
from teeny_core.experiment import BASELINE, CHECKPOINT, Experiment, Variant
from teeny_core.plugins import Plugins
from teeny_core.source_match import source_match
from teeny_core.store import (RunLock, SampleLog, StoreContext, build_once, check_writable, options_signature,
                              read_json, staging_dir, write_json)
from teeny_core.types import ARTIFACT_MANIFEST, Artifact, CalibrationSet, ModelSource, VariantResult

log = logging.getLogger("teeny")


class Pipeline:
    """Runs one experiment against the installed plugins."""

    def __init__(self, experiment: Experiment, plugins: Plugins, progress=None,
                 say: Callable[[str], None] = print, root: Path | None = None,
                 emit: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.exp, self.plugins, self.say = experiment, plugins, say
        self.progress = progress  # a rich Progress (the parent's display), or None
        self.emit = emit  # a worker's event channel to the parent, or None
        self.root = Path(root) if root is not None else experiment.root
        self.cache_dir = self.root / "_cache"
        self._source: ModelSource | None = None
        self._baseline: Artifact | None = None

    # -- the parent --------------------------------------------------------------------------------
    def run(self, fresh: bool = False) -> dict[str, Any]:
        """Check everything, lock the run directory (``fresh`` then deletes old results), run every variant
        through the experiment's executor, then write results.json and the report."""
        from teeny_core.executor import Outcome, VariantTask
        from teeny_core.manifest import build_manifest
        from teeny_core.report import write_report

        self.prepare()
        with RunLock(self.root):
            if fresh:
                remove_run(self.root)
            manifest = build_manifest(self.exp, self.plugins,
                                      previous=read_json(self.root / "manifest.json", expect=dict))
            write_json(self.root / "manifest.json", manifest)
            ex_cls = self.plugins.get("executor", self.exp.executor)
            ex_opts = ex_cls.Options.from_mapping(self.exp.executor_options.get(self.exp.executor, {}))
            run_dir, data = str(self.root.resolve()), self.exp.to_dict()
            tasks = [VariantTask(run_dir, data, v.name, prepare=v.name == BASELINE) for v in self.exp.all_variants()]
            todo, outcomes = [], []
            for t in tasks:
                if self.is_complete(t.variant) and not (t.prepare and self.needs_preparation()):
                    self.say(f"{t.variant}: already complete")
                    outcomes.append(Outcome(t.variant, True))
                else:
                    todo.append(t)
            display = _Display(self.progress, self.say, [t.variant for t in todo])
            for batch in ([t for t in todo if t.prepare], [t for t in todo if not t.prepare]):  # the baseline first
                found = ex_cls().run(batch, ex_opts, display.event)  # type: ignore[attr-defined]
                for outcome in found:
                    if outcome.fatal:  # e.g. the disk is full: every variant would fail the same way
                        raise TeenyError(outcome.error)
                    display.finished(outcome)
                outcomes += found
            results = self.collect(manifest, {o.variant: o for o in outcomes})
            write_json(self.root / "results.json", results)
            write_report(self.root, results, self.plugins)
        return results

    def prepare(self) -> None:
        """Everything that can fail before any work, without writing anything: the output directory (writable),
        the device, the model (resolved, its config, tokenizer and weights readable), every checkpoint
        variant's files, every runtime a variant names (available here) and every variant's key and
        description."""
        from teeny_core.modeling import check_model_files, check_tokenizer_files, resolve_device

        check_writable(self.root, f"output_dir {self.exp.output_dir!r}:")
        if self.exp.device.startswith("cuda"):
            resolve_device(self.exp.device)
        for variant in self.exp.all_variants():
            runtime = variant.runtime or (self.exp.baseline_runtime if variant.name == BASELINE else None)
            reason = self.plugins.get("runtime", runtime).available() if runtime else None
            if reason:
                raise TeenyError(f"variant {variant.name!r}: runtime {runtime!r} is unavailable here: {reason}")
            if variant.checkpoint and (Path(variant.checkpoint).expanduser() / "config.json").is_file():
                check_model_files(Path(variant.checkpoint).expanduser())
                check_tokenizer_files(Path(variant.checkpoint).expanduser())
            key = self.variant_key(variant)
            self.describe(variant)
            self._check_stored(self.root / variant.name, key)

    def _check_stored(self, vdir: Path, key: str) -> None:
        """Raise naming the file if a variant's stored results that this run would reuse are garbled."""
        info = read_json(vdir / "variant.json", expect=dict)
        if info is None or info.get("key") != key:
            return  # nothing stored, or old settings that run_variant moves aside untouched
        for name in ("done.json", "profile.json", "metrics.json"):
            read_json(vdir / name, expect=dict)
        SampleLog.check(vdir / "samples.jsonl")
        if (vdir / "artifact").exists():
            Artifact.open(vdir / "artifact")

    @property
    def source(self) -> ModelSource:
        if self._source is None:
            from teeny_core.modeling import resolve_source

            self._source = resolve_source(self.exp.model, dtype=self.exp.dtype, device=self.exp.device)
        return self._source

    def baseline_artifact(self) -> Artifact:
        """The original model as its runtime scores it: the float copy, or a GGUF source as published
        when the experiment's ``baseline_runtime`` loads GGUF files."""
        if self._baseline is not None:
            return self._baseline
        src, floats = self.source, self.float_artifact()
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
        src = self.source
        if not src.gguf_file:
            return Artifact("hf", Path(src.path), {"method": "none", "source": src.path})
        dtype = self.exp.baseline_dtype

        def dequantize(tmp: Path) -> None:
            from teeny_core.modeling import dequantize_gguf

            self.say(f"dequantizing {src.gguf_file} to a {dtype} float baseline (once)")
            dequantize_gguf(src, tmp, dtype)
            Artifact("hf", tmp, {"method": "none", "source": f"{src.path}/{src.gguf_file}", "dtype": dtype}).save()

        return Artifact.open(build_once(self.float_dir(), ARTIFACT_MANIFEST, dequantize))

    def float_dir(self) -> Path:
        """Where a GGUF source's float copy is kept (one per baseline dtype)."""
        return self.root / "_baseline" / self.baseline_id()

    # -- a worker ----------------------------------------------------------------------------------
    def variant(self, name: str) -> Variant:
        return next(v for v in self.exp.all_variants() if v.name == name)

    def prepare_shared(self) -> None:
        """Build what variants share before they run (in parallel): the baseline artifact and, if any variant
        needs one, the calibration set."""
        self.baseline_artifact()
        if any(self.needs_calibration(v) for v in self.exp.variants):
            self.calibration()

    def variant_dir(self, name: str) -> Path:
        """The variant's store entry, set aside (kept as ``<name>.stale-<time>``) if its settings changed."""
        variant = self.variant(name)
        vdir = self.root / name
        key = self.variant_key(variant)
        info = read_json(vdir / "variant.json", expect=dict)
        if info is not None and info.get("key") != key:
            stale = vdir.with_name(f"{name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
            self.say(f"variant {name}: its settings changed since the last run; old results kept in {stale}")
            vdir.rename(stale)
        vdir.mkdir(parents=True, exist_ok=True)
        write_json(vdir / "variant.json", {"key": key, "name": name, "method": variant.method,
                                           "options": variant.options, "runtime": variant.runtime,
                                           "describe": self.describe(variant)})
        return vdir

    def needs_quantization(self, name: str) -> bool:
        vdir = self.root / name
        return name != BASELINE and not self.variant(name).checkpoint and not self._complete(vdir, self.variant(name)) \
            and not (vdir / "artifact" / ARTIFACT_MANIFEST).exists()

    def quantize(self, name: str) -> Artifact:
        """Make (or reuse) the variant's artifact."""
        vdir = self.variant_dir(name)
        return self.artifact_for(self.variant(name), vdir, read_json(vdir / "profile.json", {}, expect=dict))

    def run_variant(self, name: str) -> None:
        """Load, evaluate and profile one variant (quantizing first if needed) into its store entry."""
        from teeny_core.executor import mark_memory, peak_memory
        from teeny_core.modeling import resolve_device

        variant = self.variant(name)
        vdir = self.variant_dir(name)
        profile: dict[str, Any] = read_json(vdir / "profile.json", {}, expect=dict)
        artifact = self.artifact_for(variant, vdir, profile)
        samples = SampleLog(vdir / "samples.jsonl")
        if not self._repaired(samples) and self._complete(vdir, variant):
            self.say(f"{variant.name}: already complete")
            return
        device = self.exp.device if self.exp.device != "auto" else resolve_device("auto")
        runtime_cls = self.plugins.runtime_for(artifact.format, variant.runtime, device)
        runtime_opts = runtime_cls.Options.from_mapping(self._runtime_options(runtime_cls.name))
        self.say(f"{variant.name}: loading with {runtime_cls.name}")
        self._event("load", 0, 1)
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
                ev, ev_opts = ev_cls(), ev_cls.Options.from_mapping(opts)
                config = self.evaluator_config(name_)
                ctx = StoreContext(samples, name_, seed=self.exp.seed, limit=self.exp.limit or None,
                                   cache_dir=self.cache_dir, config=config,
                                   reference_loader=None if variant.name == BASELINE else self._load_reference,
                                   reference_id=self.baseline_id(), progress_factory=self._progress_bar)
                try:
                    with self.measure(f"evaluate:{name_}", profile):
                        ev.evaluate(model, ev_opts, ctx)
                finally:
                    ctx.close()
                metrics[name_] = ev.summarize(samples.for_evaluator(name_, config), ev_opts)
            for prof, opts in self.exp.profilers.items():
                prof_cls = self.plugins.get("profiler", prof)
                self._event(f"benchmark:{prof}", 0, 1)
                profile.setdefault("benchmark", {}).update(
                    prof_cls().benchmark(model, artifact, prof_cls.Options.from_mapping(opts)))
        finally:
            model.close()
        profile["worker"] = {**worker, **peak_memory()}
        profile["peak_rss_bytes"] = max((s.get("peak_rss_bytes", 0) for s in profile.values()
                                         if isinstance(s, dict)), default=None)
        write_json(vdir / "profile.json", profile)
        write_json(vdir / "metrics.json", metrics)
        write_json(vdir / "done.json", {"signature": self.evaluation_signature(variant)})

    def is_complete(self, name: str) -> bool:
        """The variant's store entry holds results for its current settings, evaluators, limit and profilers."""
        info = read_json(self.root / name / "variant.json", expect=dict)
        return info is not None and info.get("key") == self.variant_key(self.variant(name)) \
            and not self._repaired(SampleLog(self.root / name / "samples.jsonl")) \
            and self._complete(self.root / name, self.variant(name))

    def _repaired(self, samples: SampleLog) -> bool:
        """Opening the log quarantined unreadable lines: say so, and mark the variant unfinished so that only
        those items are redone."""
        if not samples.quarantined:
            return False
        self.say(f"{samples.path.parent.name}: {samples.quarantined} unreadable line(s) of {samples.path.name} "
                 f"moved to {samples.quarantine_path}; redoing only those items")
        (samples.path.parent / "done.json").unlink(missing_ok=True)
        return True

    def _complete(self, vdir: Path, variant: Variant) -> bool:
        """Metrics were written for exactly the current evaluators, limit and profilers."""
        return read_json(vdir / "done.json", {}, expect=dict).get("signature") == self.evaluation_signature(variant)

    def evaluator_config(self, name: str) -> str:
        cls = self.plugins.get("evaluator", name)
        return options_signature(name, cls.Options.from_mapping(self.exp.evaluators[name]).to_dict(),
                                 cls.records_version)

    def evaluation_signature(self, variant: Variant) -> str:
        evaluators = {n: o for n, o in self.exp.evaluators.items() if variant.evaluators is None or n in variant.evaluators}
        parts = [evaluators, self.exp.profilers, self.exp.limit, self.exp.seed]
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    def artifact_for(self, variant: Variant, vdir: Path, profile: dict[str, Any]) -> Artifact:
        if variant.name == BASELINE:
            return self.baseline_artifact()
        if variant.checkpoint:
            return open_checkpoint(variant.checkpoint)
        target = vdir / "artifact"
        if (target / ARTIFACT_MANIFEST).exists():
            return Artifact.open(target)
        q_cls = self.plugins.get("quantizer", variant.method)
        quantizer, options = q_cls(), q_cls.Options.from_mapping(variant.options)
        calibration = self.calibration() if q_cls.calibrates(options) else None
        source = self.baseline_source()
        self.say(f"{variant.name}: quantizing with {variant.method}")
        with self.measure("quantize", profile), staging_dir(target) as tmp:
            made = quantizer.quantize(source, calibration, options, tmp)
            if not (tmp / ARTIFACT_MANIFEST).exists():
                made.save()
        write_json(vdir / "profile.json", profile)
        return Artifact.open(target)

    def baseline_source(self) -> ModelSource:
        """What quantizers read: the source itself, or its dequantized copy for a GGUF source."""
        base = self.float_artifact()
        return ModelSource(str(base.path), dtype=self.exp.dtype, device=self.exp.device)

    def calibration_path(self) -> Path:
        """Where the calibration set is cached, by a key of the baseline, the calibrator, its options and the seed."""
        cfg = dict(self.exp.calibration)
        method = cfg.pop("method")
        key = hashlib.sha256(json.dumps([self.baseline_id(), method, cfg, self.exp.seed, windows.RULE], sort_keys=True)
                             .encode()).hexdigest()[:16]
        return self.cache_dir / "calibration" / f"{key}.json"

    def calibration(self) -> CalibrationSet:
        """The experiment's calibration set, made once and shared by every variant through the cache."""
        cfg = dict(self.exp.calibration)
        method = cfg.pop("method")
        path = self.calibration_path()
        cached = read_json(path, expect=dict)
        if cached is not None:
            return CalibrationSet(**cached)
        cal_cls = self.plugins.get("calibrator", method)
        self.say(f"calibration: {method} {cfg}")
        cal = cal_cls().samples(self.baseline_source().load_tokenizer(), cal_cls.Options.from_mapping(cfg),
                                seed=self.exp.seed)
        write_json(path, {"name": cal.name, "samples": cal.samples, "meta": cal.meta})
        return cal

    # -- keys and descriptions ---------------------------------------------------------------------
    def baseline_id(self) -> str:
        """The source's identity, and for a GGUF source the dtype of the float copy variants are made from."""
        identity = self.source.identity()
        return f"{identity}-{self.exp.baseline_dtype}" if self.source.gguf_file else identity

    def variant_key(self, variant: Variant) -> str:
        parts: list[Any] = [self.baseline_id(), variant.method, variant.options, variant.runtime]
        if variant.checkpoint:
            return checkpoint_key(parts, variant.checkpoint)
        if self.needs_calibration(variant):
            parts += [self.exp.calibration, self.exp.seed, windows.RULE]
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    def describe(self, variant: Variant) -> dict[str, Any]:
        if variant.method == "none":
            return {}
        if variant.checkpoint:
            artifact = open_checkpoint(variant.checkpoint)
            return {"checkpoint": variant.checkpoint, "format": artifact.format,
                    **{k: v for k, v in artifact.meta.items() if k in ("bits", "group_size", "sym", "desc_act")}}
        q_cls = self.plugins.get("quantizer", variant.method)
        return q_cls().describe(q_cls.Options.from_mapping(variant.options))

    def _runtime_options(self, runtime: str) -> dict[str, Any]:
        opts = dict(self.exp.runtimes.get(runtime, {}))
        cls = self.plugins.get("runtime", runtime)
        if "device" in {f.name for f in cls.Options.fields()} and "device" not in opts:
            opts["device"] = self.exp.device
        return opts

    def _load_reference(self):
        from teeny_core.modeling import resolve_device

        base = self.baseline_artifact()
        cls = self.plugins.runtime_for(base.format, self.exp.baseline_runtime,
                                       device=resolve_device(self.exp.device))
        return cls().load(base, cls.Options.from_mapping(self._runtime_options(cls.name)))

    # -- measurement and progress ------------------------------------------------------------------
    @contextlib.contextmanager
    def measure(self, stage: str, profile: dict[str, Any]) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            found = []
            for name, opts in self.exp.profilers.items():
                cls = self.plugins.get("profiler", name)
                found.append(stack.enter_context(cls().measure(stage, cls.Options.from_mapping(opts))))
            yield
        merged: dict[str, Any] = {}
        for m in found:
            merged.update(m)
        profile[stage] = merged

    def _progress_bar(self, total: int, description: str):
        """An evaluator's progress: events to the parent from a worker, else this process's display."""
        if self.emit is not None:
            return _EventBar(self.emit, description, total)
        if self.progress is None:
            return _Bar(None, None)
        task = self.progress.add_task(description, total=total)
        return _Bar(self.progress, task)

    def _event(self, stage: str, done: int, total: int | None) -> None:
        if self.emit is not None:
            self.emit({"stage": stage, "done": done, "total": total})

    def needs_preparation(self) -> bool:
        """Whether :meth:`prepare_shared` has work to do (a GGUF source to dequantize, a calibration set)."""
        if self.source.gguf_file and not (self.float_dir() / ARTIFACT_MANIFEST).exists():
            return True
        return any(self.needs_calibration(v) for v in self.exp.variants) and not self.calibration_path().exists()

    def needs_calibration(self, variant: Variant) -> bool:
        """Whether the variant's quantizer calibrates (the baseline and existing checkpoints have none)."""
        if variant.method in ("none", CHECKPOINT):
            return False
        q_cls = self.plugins.get("quantizer", variant.method)
        return q_cls.calibrates(q_cls.Options.from_mapping(variant.options))

    # -- results -----------------------------------------------------------------------------------
    def variant_result(self, variant: Variant) -> VariantResult:
        vdir = self.root / variant.name
        samples = SampleLog(vdir / "samples.jsonl")
        records = {name: samples.for_evaluator(name, self.evaluator_config(name)) for name in self.exp.evaluators}
        artifact = self.variant_artifact(variant)
        return VariantResult(name=variant.name, method=variant.method, describe=self.describe(variant),
                             records=records, metrics=read_json(vdir / "metrics.json", {}, expect=dict),
                             profile=read_json(vdir / "profile.json", {}, expect=dict),
                             artifact_bytes=artifact.size_bytes())

    def variant_artifact(self, variant: Variant) -> Artifact:
        """What the variant evaluated: the baseline, an existing checkpoint, or the artifact the run made."""
        if variant.name == BASELINE:
            return self.baseline_artifact()
        if variant.checkpoint:
            return open_checkpoint(variant.checkpoint)
        return Artifact.open(self.root / variant.name / "artifact")

    def collect(self, manifest: dict[str, Any], outcomes: dict[str, Any]) -> dict[str, Any]:
        """results.json from the store entries; variants that failed are listed with their error, unanalyzed."""
        failed = {name: o for name, o in outcomes.items() if not o.ok}
        done = [self.variant_result(v) for v in self.exp.all_variants() if v.name not in failed]
        analysis: dict[str, Any] = {}
        if done and done[0].name == BASELINE:
            for name, opts in self.exp.analyzers.items():
                cls = self.plugins.get("analyzer", name)
                analysis[name] = cls().analyze(done[0], done[1:], cls.Options.from_mapping(opts))
        write_json(self.root / "analysis.json", analysis)
        by_name = {r.name: r for r in done}
        entries = []
        for v in self.exp.all_variants():
            r = by_name.get(v.name)
            if r is None:
                o = failed[v.name]
                entries.append({"name": v.name, "method": v.method, "describe": self.describe(v), "status": "failed",
                                "error": o.error, "failed_stage": o.stage, "metrics": {},
                                "profile": read_json(self.root / v.name / "profile.json", {}, expect=dict)})
                continue
            meta = _artifact_meta(self.root, r.name)
            entries.append({"name": r.name, "method": r.method, "describe": r.describe, "status": "ok",
                            "artifact_bytes": r.artifact_bytes, "metrics": r.metrics, "profile": r.profile,
                            "packed_bytes": meta.get("packed_bytes"), "bits_per_weight": meta.get("bits_per_weight"),
                            "achieved_bits": meta.get("achieved_bits"),
                            "module_bits": meta.get("module_bits") or meta.get("bits_plan"),
                            "source_match": None if r.name == BASELINE
                            else source_match(self.source, self.variant_artifact(self.variant(r.name)))})
        declared = {name: self.plugins.get("evaluator", name).declaration() for name in self.exp.evaluators}
        return {"experiment": self.exp.name, "config_hash": self.exp.config_hash(), "baseline": BASELINE,
                "evaluators": declared, "variants": entries, "analysis": analysis, "manifest": manifest}

def _artifact_meta(root: Path, variant: str) -> dict[str, Any]:
    data = read_json(root / variant / "artifact" / ARTIFACT_MANIFEST, {}, expect=dict)
    return data.get("meta", {})


class _Bar:
    def __init__(self, progress, task) -> None:
        self.progress, self.task = progress, task

    def __enter__(self) -> "_Bar":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.remove_task(self.task)

    def advance(self, n: int = 1) -> None:
        if self.progress is not None:
            self.progress.advance(self.task, n)


class _EventBar:
    """A progress bar whose updates go to the parent as events (a worker's view of :class:`_Bar`)."""

    def __init__(self, emit: Callable[[dict[str, Any]], None], stage: str, total: int) -> None:
        self.emit, self.stage, self.total, self.done = emit, stage, total, 0

    def __enter__(self) -> "_EventBar":
        self.emit({"stage": self.stage, "done": 0, "total": self.total})
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def advance(self, n: int = 1) -> None:
        self.done += n
        self.emit({"stage": self.stage, "done": self.done, "total": self.total})


class _Display:
    """The parent's view: one progress line per variant (stage, items done/total) fed by worker events."""

    def __init__(self, progress, say: Callable[[str], None], variants: list[str]) -> None:
        self.progress, self.say = progress, say
        self.lock = threading.Lock()
        self.tasks = {v: progress.add_task(f"{v}: waiting", total=None) for v in variants} if progress else {}

    def event(self, event: dict[str, Any]) -> None:
        variant = event.get("variant", "?")
        with self.lock:
            if "message" in event:
                self.say(str(event["message"]))
            elif variant in self.tasks:
                node = f" on {event['node']}" if event.get("node") else ""
                self.progress.update(self.tasks[variant], description=f"{variant}: {event.get('stage')}{node}",
                                     completed=event.get("done") or 0, total=event.get("total"))

    def finished(self, outcome) -> None:
        with self.lock:
            if outcome.variant in self.tasks:
                if not outcome.ok:
                    self.progress.update(self.tasks[outcome.variant], description=f"{outcome.variant}: FAILED")
            if not outcome.ok:
                where = f" during {outcome.stage}" if outcome.stage else ""
                self.say(f"{outcome.variant}: failed{where}: {outcome.error}")


def remove_run(root: Path) -> None:
    """Delete everything a run stored except its lock (``teeny run --fresh``, under that lock)."""
    for entry in root.iterdir() if root.is_dir() else []:
        if entry.name == RunLock.NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
