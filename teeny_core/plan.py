"""What a run must do, read from the experiment and the store without changing either: the keys that name each
variant's settings, where things are kept, what still needs building and which variants are complete.

The parent (:mod:`teeny_core.pipeline`) asks it what to schedule; a worker (:mod:`teeny_core.worker`) asks it
where to write. Nothing here builds, loads or deletes anything.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from teeny_core import windows
from teeny_core.checkpoints import checkpoint_key, open_checkpoint
from teeny_core.experiment import BASELINE, CHECKPOINT, Experiment, Variant
from teeny_core.modeling import ARTIFACT_MANIFEST, Artifact, ModelSource
from teeny_core.plugins import Plugins
from teeny_core.store import SampleLog, options_signature, read_json


class Plan:
    """Keys, paths and completeness of one experiment's run directory (``root``, default the experiment's)."""

    def __init__(self, experiment: Experiment, plugins: Plugins, root: Path | None = None) -> None:
        self.exp, self.plugins = experiment, plugins
        self.root = Path(root) if root is not None else experiment.root
        self.cache_dir = self.root / "_cache"
        self._source: ModelSource | None = None

    @property
    def source(self) -> ModelSource:
        """The experiment's model, resolved (and its files checked) once."""
        if self._source is None:
            from teeny_core.modeling import resolve_source

            self._source = resolve_source(self.exp.model, dtype=self.exp.dtype, device=self.exp.device)
        return self._source

    def variant(self, name: str) -> Variant:
        return next(v for v in self.exp.all_variants() if v.name == name)

    # -- keys ------------------------------------------------------------------------------------
    def baseline_id(self) -> str:
        """The source's identity, and for a GGUF source the dtype of the float copy variants are made from."""
        identity = self.source.identity()
        return f"{identity}-{self.exp.baseline_dtype}" if self.source.gguf_file else identity

    def variant_key(self, variant: Variant) -> str:
        """What the variant's stored results were made with: the source, method, options, runtime and, for a
        quantizer that calibrates with these options, the calibration set's settings."""
        parts: list[Any] = [self.baseline_id(), variant.method, variant.options.to_dict(), variant.runtime]
        if variant.checkpoint:
            return checkpoint_key(parts, variant.checkpoint)
        if self.needs_calibration(variant):
            parts += [self.exp.calibration_table(), self.exp.seed, windows.RULE]
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    def evaluator_config(self, name: str) -> str:
        """The ``config`` stamped on an evaluator's records: records under other options are not reused."""
        cls = self.plugins.get("evaluator", name)
        return options_signature(name, self.exp.evaluators[name].to_dict(), cls.records_version)

    def evaluation_signature(self, variant: Variant) -> str:
        """The evaluators, profilers, limit and seed a variant's metrics were written for (``done.json``)."""
        evaluators = {n: o.to_dict() for n, o in self.exp.evaluators.items()
                      if variant.evaluators is None or n in variant.evaluators}
        parts = [evaluators, {n: o.to_dict() for n, o in self.exp.profilers.items()}, self.exp.limit, self.exp.seed]
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    def describe(self, variant: Variant) -> dict[str, Any]:
        """Short facts about a variant's settings, for the store entry and the report."""
        if variant.method == "none":
            return {}
        if variant.checkpoint:
            artifact = open_checkpoint(variant.checkpoint)
            return {"checkpoint": variant.checkpoint, "format": artifact.format,
                    **{k: v for k, v in artifact.meta.items() if k in ("bits", "group_size", "sym", "desc_act")}}
        return self.plugins.get("quantizer", variant.method)().describe(variant.options)

    # -- paths -----------------------------------------------------------------------------------
    def calibration_path(self) -> Path:
        """Where the calibration set is cached, by a key of the baseline, the calibrator, its options and the seed."""
        parts = [self.baseline_id(), self.exp.calibrator, self.exp.calibration.to_dict(), self.exp.seed, windows.RULE]
        key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
        return self.cache_dir / "calibration" / f"{key}.json"

    def float_dir(self) -> Path:
        """Where a GGUF source's float copy is kept (one per baseline dtype)."""
        return self.root / "_baseline" / self.baseline_id()

    # -- what is left to do ----------------------------------------------------------------------
    def needs_calibration(self, variant: Variant) -> bool:
        """Whether the variant's quantizer calibrates with its options (the baseline and checkpoints do not)."""
        if variant.method in ("none", CHECKPOINT):
            return False
        return self.plugins.get("quantizer", variant.method).needs_calibration(variant.options)

    def needs_preparation(self) -> bool:
        """Whether the shared inputs are still to build (a GGUF source's float copy, a calibration set)."""
        if self.source.gguf_file and not (self.float_dir() / ARTIFACT_MANIFEST).exists():
            return True
        return any(self.needs_calibration(v) for v in self.exp.variants) and not self.calibration_path().exists()

    def needs_quantization(self, name: str) -> bool:
        """Whether the variant's artifact is still to make (it is unfinished and has none)."""
        vdir = self.root / name
        return name != BASELINE and not self.variant(name).checkpoint and not self.has_metrics(name) \
            and not (vdir / "artifact" / ARTIFACT_MANIFEST).exists()

    def has_metrics(self, name: str) -> bool:
        """Metrics were written for exactly the current evaluators, limit and profilers."""
        done = read_json(self.root / name / "done.json", {}, expect=dict)
        return done.get("signature") == self.evaluation_signature(self.variant(name))

    def is_complete(self, name: str) -> bool:
        """The variant's store entry holds results for its current settings, evaluators, limit and profilers,
        and every line of its sample log is readable (a worker repairs the log; this only reads it)."""
        info = read_json(self.root / name / "variant.json", expect=dict)
        return info is not None and info.get("key") == self.variant_key(self.variant(name)) \
            and self.has_metrics(name) and SampleLog.readable(self.root / name / "samples.jsonl")

    def check_stored(self, name: str) -> None:
        """Raise naming the file if the model's files, or a variant's stored results that this run would reuse,
        are garbled."""
        vdir = self.root / name
        key = self.variant_key(self.variant(name))  # resolves the model (its files checked) and a checkpoint's
        info = read_json(vdir / "variant.json", expect=dict)
        if info is None or info.get("key") != key:
            return  # nothing stored, or old settings that the worker moves aside untouched
        for file in ("done.json", "profile.json", "metrics.json"):
            read_json(vdir / file, expect=dict)
        SampleLog.check(vdir / "samples.jsonl")
        if (vdir / "artifact").exists():
            Artifact.open(vdir / "artifact")
