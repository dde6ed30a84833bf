"""The experiment pipeline: calibrate, quantize, load, evaluate and profile each variant, then analyze.

Every stage is resumable: artifacts appear atomically and are reused when their cache key matches,
finished evaluation records are never redone, and a ``kill -9`` at any moment loses at most the item
in flight.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from teeny_core.checkpoints import checkpoint_key, open_checkpoint
from teeny_core.experiment import BASELINE, Experiment, Variant
from teeny_core.plugins import Plugins
from teeny_core.store import SampleLog, StoreContext, options_signature, read_json, staging_dir, write_json
from teeny_core.types import Artifact, CalibrationSet, ModelSource, VariantResult

log = logging.getLogger("teeny")


class Pipeline:
    """Runs one experiment against the installed plugins."""

    def __init__(self, experiment: Experiment, plugins: Plugins, progress=None,
                 say: Callable[[str], None] = print) -> None:
        self.exp, self.plugins, self.say = experiment, plugins, say
        self.progress = progress  # a rich Progress, or None
        self.root = experiment.root
        self.cache_dir = self.root / "_cache"
        self._source: ModelSource | None = None
        self._baseline: Artifact | None = None

    # -- public ------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from teeny_core.manifest import build_manifest

        self.root.mkdir(parents=True, exist_ok=True)
        manifest = build_manifest(self.exp, self.plugins, previous=read_json(self.root / "manifest.json"))
        write_json(self.root / "manifest.json", manifest)
        for variant in self.exp.all_variants():
            self.run_variant(variant)
        results = self.collect(manifest)
        write_json(self.root / "results.json", results)
        from teeny_core.report import write_report

        write_report(self.root, results)
        return results

    @property
    def source(self) -> ModelSource:
        if self._source is None:
            from teeny_core.modeling import resolve_source

            self._source = resolve_source(self.exp.model, dtype=self.exp.dtype, device=self.exp.device)
        return self._source

    def baseline_artifact(self) -> Artifact:
        """The original model as an artifact; a GGUF source is dequantized once to an hf directory."""
        if self._baseline is not None:
            return self._baseline
        src = self.source
        if not src.gguf_file:
            self._baseline = Artifact("hf", Path(src.path), {"method": "none", "source": src.path})
            return self._baseline
        target = self.root / "_baseline" / src.identity()
        if not (target / "teeny-artifact.json").exists():
            from teeny_core.modeling import save_hf_model

            self.say(f"dequantizing {src.gguf_file} to a float baseline (once)")
            with staging_dir(target) as tmp:
                model, tokenizer = src.load(dtype="float32", device="cpu")
                save_hf_model(model, tokenizer, tmp)
                Artifact("hf", tmp, {"method": "none", "source": f"{src.path}/{src.gguf_file}"}).save()
                del model
        self._baseline = Artifact.open(target)
        return self._baseline

    # -- one variant -------------------------------------------------------------------------------
    def run_variant(self, variant: Variant) -> None:
        vdir = self.root / variant.name
        key = self.variant_key(variant)
        info = read_json(vdir / "variant.json")
        if info is not None and info.get("key") != key:
            stale = vdir.with_name(f"{variant.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
            self.say(f"variant {variant.name}: its settings changed since the last run; old results kept in {stale}")
            vdir.rename(stale)
        vdir.mkdir(parents=True, exist_ok=True)
        describe = self.describe(variant)
        write_json(vdir / "variant.json", {"key": key, "name": variant.name, "method": variant.method,
                                           "options": variant.options, "runtime": variant.runtime,
                                           "describe": describe})
        profile: dict[str, Any] = read_json(vdir / "profile.json", {})
        artifact = self.artifact_for(variant, vdir, profile)
        samples = SampleLog(vdir / "samples.jsonl")
        if self._complete(vdir):
            self.say(f"{variant.name}: already complete")
            return
        runtime_cls = self.plugins.runtime_for(artifact.format, variant.runtime)
        runtime_opts = runtime_cls.Options.from_mapping(self._runtime_options(runtime_cls.name))
        self.say(f"{variant.name}: loading with {runtime_cls.name}")
        with self.measure("load", profile):
            model = runtime_cls().load(artifact, runtime_opts)
        facts = getattr(model, "load_facts", dict)()  # e.g. packed kernels, and the layers left float and why
        profile["load"]["runtime"] = {"name": runtime_cls.name, **facts}
        try:
            metrics: dict[str, Any] = {}
            for name, opts in self.exp.evaluators.items():
                ev_cls = self.plugins.get("evaluator", name)
                ev, ev_opts = ev_cls(), ev_cls.Options.from_mapping(opts)
                config = self.evaluator_config(name)
                ctx = StoreContext(samples, name, seed=self.exp.seed, limit=self.exp.limit or None,
                                   cache_dir=self.cache_dir, config=config,
                                   reference_loader=None if variant.name == BASELINE else self._load_reference,
                                   reference_id=self.baseline_id(), progress_factory=self._progress_bar)
                try:
                    with self.measure(f"evaluate:{name}", profile):
                        ev.evaluate(model, ev_opts, ctx)
                finally:
                    ctx.close()
                metrics[name] = ev.summarize(samples.for_evaluator(name, config), ev_opts)
            for name, opts in self.exp.profilers.items():
                prof_cls = self.plugins.get("profiler", name)
                profile.setdefault("benchmark", {}).update(
                    prof_cls().benchmark(model, artifact, prof_cls.Options.from_mapping(opts)))
        finally:
            model.close()
        profile["peak_rss_bytes"] = max((s.get("peak_rss_bytes", 0) for s in profile.values()
                                         if isinstance(s, dict)), default=None)
        write_json(vdir / "profile.json", profile)
        write_json(vdir / "metrics.json", metrics)
        write_json(vdir / "done.json", {"signature": self.evaluation_signature()})

    def _complete(self, vdir: Path) -> bool:
        """Metrics were written for exactly the current evaluators, limit and profilers."""
        return read_json(vdir / "done.json", {}).get("signature") == self.evaluation_signature()

    def evaluator_config(self, name: str) -> str:
        cls = self.plugins.get("evaluator", name)
        return options_signature(name, cls.Options.from_mapping(self.exp.evaluators[name]).to_dict())

    def evaluation_signature(self) -> str:
        parts = [self.exp.evaluators, self.exp.profilers, self.exp.limit, self.exp.seed]
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    def artifact_for(self, variant: Variant, vdir: Path, profile: dict[str, Any]) -> Artifact:
        if variant.name == BASELINE:
            return self.baseline_artifact()
        if variant.checkpoint:
            return open_checkpoint(variant.checkpoint)
        target = vdir / "artifact"
        if (target / "teeny-artifact.json").exists():
            return Artifact.open(target)
        q_cls = self.plugins.get("quantizer", variant.method)
        quantizer, options = q_cls(), q_cls.Options.from_mapping(variant.options)
        calibration = self.calibration() if q_cls.needs_calibration else None
        source = self.baseline_source()
        self.say(f"{variant.name}: quantizing with {variant.method}")
        with self.measure("quantize", profile), staging_dir(target) as tmp:
            made = quantizer.quantize(source, calibration, options, tmp)
            if not (tmp / "teeny-artifact.json").exists():
                made.save()
        write_json(vdir / "profile.json", profile)
        return Artifact.open(target)

    def baseline_source(self) -> ModelSource:
        """What quantizers read: the source itself, or its dequantized copy for a GGUF source."""
        base = self.baseline_artifact()
        return ModelSource(str(base.path), dtype=self.exp.dtype, device=self.exp.device)

    def calibration(self) -> CalibrationSet:
        cfg = dict(self.exp.calibration)
        method = cfg.pop("method")
        key = hashlib.sha256(json.dumps([self.baseline_id(), method, cfg, self.exp.seed], sort_keys=True)
                             .encode()).hexdigest()[:16]
        path = self.cache_dir / "calibration" / f"{key}.json"
        cached = read_json(path)
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
        return self.source.identity()

    def variant_key(self, variant: Variant) -> str:
        parts: list[Any] = [self.baseline_id(), variant.method, variant.options, variant.runtime]
        if variant.checkpoint:
            return checkpoint_key(parts, variant.checkpoint)
        if variant.method != "none" and self.plugins.get("quantizer", variant.method).needs_calibration:
            parts += [self.exp.calibration, self.exp.seed]
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
        base = self.baseline_artifact()
        cls = self.plugins.runtime_for(base.format)
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
        if self.progress is None:
            return _Bar(None, None)
        task = self.progress.add_task(description, total=total)
        return _Bar(self.progress, task)

    # -- results -----------------------------------------------------------------------------------
    def variant_result(self, variant: Variant) -> VariantResult:
        vdir = self.root / variant.name
        samples = SampleLog(vdir / "samples.jsonl")
        records = {name: samples.for_evaluator(name, self.evaluator_config(name)) for name in self.exp.evaluators}
        artifact = (self.baseline_artifact() if variant.name == BASELINE else
                    open_checkpoint(variant.checkpoint) if variant.checkpoint else Artifact.open(vdir / "artifact"))
        return VariantResult(name=variant.name, method=variant.method, describe=self.describe(variant),
                             records=records, metrics=read_json(vdir / "metrics.json", {}),
                             profile=read_json(vdir / "profile.json", {}), artifact_bytes=artifact.size_bytes())

    def collect(self, manifest: dict[str, Any]) -> dict[str, Any]:
        results = [self.variant_result(v) for v in self.exp.all_variants()]
        analysis: dict[str, Any] = {}
        for name, opts in self.exp.analyzers.items():
            cls = self.plugins.get("analyzer", name)
            analysis[name] = cls().analyze(results[0], results[1:], cls.Options.from_mapping(opts))
        write_json(self.root / "analysis.json", analysis)
        return {
            "experiment": self.exp.name, "config_hash": self.exp.config_hash(), "baseline": BASELINE,
            "variants": [{"name": r.name, "method": r.method, "describe": r.describe,
                          "artifact_bytes": r.artifact_bytes, "metrics": r.metrics, "profile": r.profile,
                          "packed_bytes": _artifact_meta(self.root, r.name).get("packed_bytes")}
                         for r in results],
            "analysis": analysis, "manifest": manifest,
        }


def _artifact_meta(root: Path, variant: str) -> dict[str, Any]:
    data = read_json(root / variant / "artifact" / "teeny-artifact.json", {})
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


def remove_run(root: Path) -> None:
    """Delete a run directory (``teeny run --fresh``)."""
    if root.exists():
        shutil.rmtree(root)
