"""The parent's side of a run: check everything, schedule the variants through an executor, then alone write
``results.json`` and the report.

:meth:`Pipeline.run` hands the variants to the experiment's executor (baseline first, since variants compare
against its outputs); each variant is a :class:`~teeny_core.executor.VariantTask` that a worker runs
(:mod:`teeny_core.worker`); :class:`~teeny_core.plan.Plan` says what is complete. Every stage is resumable:
artifacts appear atomically and are reused when their cache key matches, finished evaluation records are never
redone, and a ``kill -9`` at any moment loses at most the item in flight. Everything that can be checked without
running (the model's files, every variant's settings, the output directory) is checked before anything on disk
changes; one run at a time holds the run directory.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

from teeny_core.checkpoints import open_checkpoint
from teeny_core.errors import TeenyError
from teeny_core.executor import Emit, Outcome, VariantTask
from teeny_core.experiment import BASELINE, Experiment, Variant
from teeny_core.manifest import build_manifest
from teeny_core.modeling import ARTIFACT_MANIFEST, Artifact
from teeny_core.plan import Plan
from teeny_core.plugins import Plugins
from teeny_core.results import cautions_of
from teeny_core.source_match import source_match
from teeny_core.store import RunLock, SampleLog, check_writable, read_json, write_json
from teeny_core.types import VariantResult
from teeny_core.worker import VariantRunner


class Pipeline:
    """Runs one experiment against the installed plugins. ``on_event`` receives the workers' events (progress,
    ``{"message": ...}`` lines) and ``on_outcome`` each finished variant's :class:`Outcome`; by default messages and
    failures are passed to ``say``."""

    def __init__(self, experiment: Experiment, plugins: Plugins, say: Callable[[str], None] = print,
                 root: Path | None = None, on_event: Emit | None = None,
                 on_outcome: Callable[[Outcome], None] | None = None) -> None:
        self.exp, self.plugins, self.say = experiment, plugins, say
        self.plan = Plan(experiment, plugins, root)
        self.root = self.plan.root
        self.on_event = on_event or self._say_message
        self.on_outcome = on_outcome or self._say_failure
        self._runner: VariantRunner | None = None

    @property
    def runner(self) -> VariantRunner:
        """The variant runner a worker uses, in this process (to open what the workers built)."""
        if self._runner is None:
            self._runner = VariantRunner(self.plan, self.on_event)
        return self._runner

    def _say_message(self, event: dict[str, Any]) -> None:
        if "message" in event:
            self.say(str(event["message"]))

    def _say_failure(self, outcome: Outcome) -> None:
        if not outcome.ok:
            where = f" during {outcome.stage}" if outcome.stage else ""
            self.say(f"{outcome.variant}: failed{where}: {outcome.error}")

    def run(self, fresh: bool = False) -> dict[str, Any]:
        """Check everything, lock the run directory (``fresh`` then deletes old results), run every variant
        through the experiment's executor, then write results.json and the report."""
        from teeny_core.report import write_report

        self.prepare()
        with RunLock(self.root):
            if fresh:
                remove_run(self.root)
            manifest = build_manifest(self.exp, self.plugins,
                                      previous=read_json(self.root / "manifest.json", expect=dict))
            write_json(self.root / "manifest.json", manifest)
            ex_cls = self.plugins.get("executor", self.exp.executor)
            ex_opts = self.exp.executor_options.get(self.exp.executor) or ex_cls.Options()
            run_dir, data = str(self.root.resolve()), self.exp.to_dict()
            tasks = [VariantTask(run_dir, data, v.name, prepare=v.name == BASELINE) for v in self.exp.all_variants()]
            todo, outcomes = [], []
            for t in tasks:
                if self.plan.is_complete(t.variant) and not (t.prepare and self.plan.needs_preparation()):
                    self.say(f"{t.variant}: already complete")
                    outcomes.append(Outcome(t.variant, True))
                else:
                    todo.append(t)
            for batch in ([t for t in todo if t.prepare], [t for t in todo if not t.prepare]):  # the baseline first
                found = ex_cls().run(batch, ex_opts, self.on_event)  # type: ignore[attr-defined]
                for outcome in found:
                    if outcome.fatal:  # e.g. the disk is full: every variant would fail the same way
                        raise TeenyError(outcome.error)
                    self.on_outcome(outcome)
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
            self.plan.describe(variant)
            self.plan.check_stored(variant.name)

    # -- results -----------------------------------------------------------------------------------
    def variant_result(self, variant: Variant) -> VariantResult:
        vdir = self.root / variant.name
        samples = SampleLog(vdir / "samples.jsonl")
        records = {name: samples.for_evaluator(name, self.plan.evaluator_config(name)) for name in self.exp.evaluators}
        artifact = self.variant_artifact(variant)
        return VariantResult(name=variant.name, method=variant.method, describe=self.plan.describe(variant),
                             records=records, metrics=read_json(vdir / "metrics.json", {}, expect=dict),
                             profile=read_json(vdir / "profile.json", {}, expect=dict),
                             artifact_bytes=artifact.size_bytes())

    def variant_artifact(self, variant: Variant) -> Artifact:
        """What the variant evaluated: the baseline, an existing checkpoint, or the artifact the run made."""
        if variant.name == BASELINE:
            return self.runner.baseline_artifact()  # built by the baseline's worker: only opened here
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
                analysis[name] = self.plugins.get("analyzer", name)().analyze(done[0], done[1:], opts)
        write_json(self.root / "analysis.json", analysis)
        by_name = {r.name: r for r in done}
        entries = []
        for v in self.exp.all_variants():
            r = by_name.get(v.name)
            if r is None:
                o = failed[v.name]
                entries.append({"name": v.name, "method": v.method, "describe": self.plan.describe(v), "status": "failed",
                                "error": o.error, "failed_stage": o.stage, "metrics": {},
                                "profile": read_json(self.root / v.name / "profile.json", {}, expect=dict)})
                continue
            meta = _artifact_meta(self.root, r.name)
            entries.append({"name": r.name, "method": r.method, "describe": r.describe, "status": "ok",
                            "artifact_bytes": r.artifact_bytes, "metrics": r.metrics, "profile": r.profile,
                            "packed_bytes": meta.get("packed_bytes"), "bits_per_weight": meta.get("bits_per_weight"),
                            "achieved_bits": meta.get("achieved_bits"),
                            "module_bits": meta.get("module_bits") or meta.get("bits_plan"),
                            "cautions": cautions_of(meta),
                            "source_match": None if r.name == BASELINE
                            else source_match(self.plan.source, self.variant_artifact(self.plan.variant(r.name)))})
        declared = {name: self.plugins.get("evaluator", name).declaration() for name in self.exp.evaluators}
        return {"experiment": self.exp.name, "config_hash": self.exp.config_hash(), "baseline": BASELINE,
                "evaluators": declared, "variants": entries, "analysis": analysis, "manifest": manifest}

def _artifact_meta(root: Path, variant: str) -> dict[str, Any]:
    data = read_json(root / variant / "artifact" / ARTIFACT_MANIFEST, {}, expect=dict)
    return data.get("meta", {})



def remove_run(root: Path) -> None:
    """Delete everything a run stored except its lock (``teeny run --fresh``, under that lock)."""
    for entry in root.iterdir() if root.is_dir() else []:
        if entry.name == RunLock.NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
