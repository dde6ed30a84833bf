"""Read the per-item results other tools write, as variants the significance analyzer compares.

- lm-evaluation-harness ``--log_samples`` files (``samples_<task>_<date>.jsonl``): one JSON object a line with
  ``doc_id``, ``doc``, ``filter``, ``metrics`` (the names of the per-sample metrics) and each metric's value.
  Every (metric, filter) becomes an evaluator named like lm-eval's results key, ``<metric>,<filter>``;
  a metric whose values are all 0/1 is pass/fail, any other numeric one is continuous (higher is better).
- an lm-eval output folder (``--output_path``'s per-model folder): the newest samples file of each task, each
  (task, metric, filter) an evaluator ``<task> <metric>,<filter>``, so that all tasks share one Holm family.
- evalplus ``*_eval_results.json`` (``{"hash", "eval": {task_id: [{"base_status", "plus_status", ...}]}}``):
  the evaluators ``evalplus base`` (base tests pass) and ``evalplus plus`` (base and plus tests pass), one
  record per sample, paired by task id and sample index.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from teeny_core import TeenyError, VariantResult

LM_EVAL_NAME = re.compile(r"^samples_(?P<task>.+)_(?P<date>\d{4}-\d{2}-\d{2}T[0-9.\-]+)\.jsonl$")
EVALPLUS_PASS = "pass"


@dataclass
class ForeignResults:
    """One lm-eval samples file or evalplus results file: ``values[evaluator][item] = per-item value``."""

    path: Path
    kind: str  # "lm-eval", "lm-eval folder" or "evalplus"
    task: str | None  # the lm-eval task from the file name; the evalplus dataset hash
    values: dict[str, dict[Any, Any]] = field(default_factory=dict)
    metric_of: dict[str, str] = field(default_factory=dict)  # evaluator -> the per-item field it compares
    fingerprints: dict[Any, str] = field(default_factory=dict)  # lm-eval doc_id (folder: (task, doc_id)) -> doc_hash


def is_foreign(path: Path) -> bool:
    """A file, or a folder of lm-eval samples files without a Teeny run's ``samples.jsonl``."""
    path = Path(path)
    return path.is_file() or (not (path / "samples.jsonl").exists() and bool(lm_eval_files(path)))


def lm_eval_files(folder: Path) -> dict[str, Path]:
    """task -> its newest ``samples_<task>_<date>.jsonl`` in an lm-eval output folder (a rerun adds a date)."""
    newest: dict[str, tuple[str, Path]] = {}
    for path in Path(folder).glob("samples_*.jsonl"):
        match = LM_EVAL_NAME.match(path.name)
        if match and (match["task"] not in newest or match["date"] > newest[match["task"]][0]):
            newest[match["task"]] = (match["date"], path)
    return {task: path for task, (_, path) in sorted(newest.items())}


def load_foreign(path: Path) -> ForeignResults:
    """Read an lm-eval ``.jsonl`` samples file or output folder, or an evalplus ``.json`` results file,
    checking every line."""
    path = Path(path)
    if path.is_dir():
        return _load_lm_eval_folder(path)
    if path.suffix == ".jsonl":
        return _load_lm_eval(path)
    if path.suffix == ".json":
        return _load_evalplus(path)
    raise TeenyError(f"{path}: expected an lm-eval samples_<task>_<date>.jsonl file, an evalplus "
                     "*_eval_results.json file or a Teeny variant run directory")


def _load_lm_eval(path: Path) -> ForeignResults:
    match = LM_EVAL_NAME.match(path.name)
    out = ForeignResults(path, "lm-eval", match["task"] if match else None)
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                sample = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise TeenyError(f"{path}:{number} is not valid JSON ({getattr(exc, 'msg', exc)})") from None
            if not isinstance(sample, dict) or "doc_id" not in sample:
                raise TeenyError(f"{path}:{number} is not an lm-eval sample (expected a JSON object with 'doc_id', "
                                 f"'metrics' and their values, found {line[:40].decode(errors='replace').strip()})")
            doc_id = sample["doc_id"]
            if "doc_hash" in sample:
                out.fingerprints.setdefault(doc_id, str(sample["doc_hash"]))
            names = sample.get("metrics")
            metrics = [m for m in names if _is_number(sample.get(m))] if isinstance(names, list) else []
            if not metrics:
                raise TeenyError(f"{path}:{number} (doc_id {doc_id}) has no per-sample metric: expected 'metrics' "
                                 f"naming numeric fields such as pass@1, acc or exact_match, found 'metrics' = "
                                 f"{json.dumps(names)[:60]}; run lm-eval with --log_samples on a task scored per item")
            filter_name = str(sample.get("filter", "none"))
            for metric in metrics:
                evaluator = f"{metric},{filter_name}"
                out.metric_of[evaluator] = metric
                out.values.setdefault(evaluator, {}).setdefault(doc_id, sample[metric])
    if not out.values:
        raise TeenyError(f"{path} has no samples (expected lm-eval --log_samples lines with 'doc_id' and a metric)")
    return out


def _load_lm_eval_folder(folder: Path) -> ForeignResults:
    out = ForeignResults(folder, "lm-eval folder", None)
    for task, path in lm_eval_files(folder).items():
        one = _load_lm_eval(path)
        for evaluator, values in one.values.items():
            out.values[f"{task} {evaluator}"] = values
            out.metric_of[f"{task} {evaluator}"] = one.metric_of[evaluator]
        out.fingerprints.update({(task, doc_id): doc_hash for doc_id, doc_hash in one.fingerprints.items()})
    return out


def _load_evalplus(path: Path) -> ForeignResults:
    try:
        data = json.loads(path.read_bytes())
    except json.JSONDecodeError as exc:
        raise TeenyError(f"{path}:{exc.lineno} is not valid JSON ({exc.msg}, column {exc.colno})") from None
    except UnicodeDecodeError as exc:
        raise TeenyError(f"{path} is not valid JSON ({exc})") from None
    results = data.get("eval") if isinstance(data, dict) else None
    if not isinstance(results, dict) or not results:
        raise TeenyError(f"{path} is not an evalplus eval_results.json (expected an object with a non-empty 'eval' "
                         f"mapping task ids to graded samples, found {json.dumps(data)[:60]})")
    out = ForeignResults(path, "evalplus", str(data.get("hash")) if data.get("hash") else None)
    for task_id, samples in results.items():
        if not isinstance(samples, list) or not all(isinstance(s, dict) and "base_status" in s for s in samples):
            raise TeenyError(f"{path}: task {task_id} has no graded samples (expected a list of objects with "
                             f"'base_status', found {json.dumps(samples)[:60]})")
        for index, sample in enumerate(samples):
            item = (task_id, index)
            base = sample["base_status"] == EVALPLUS_PASS
            out.values.setdefault("evalplus base", {})[item] = base
            if sample.get("plus_status") is not None:
                out.values.setdefault("evalplus plus", {})[item] = base and sample["plus_status"] == EVALPLUS_PASS
    return out


def check_comparable(files: list[ForeignResults]) -> None:
    """One task, one kind of file, and items in common, else one line saying which file differs how."""
    first = files[0]
    for other in files[1:]:
        if other.kind != first.kind:
            raise TeenyError(f"{first.path} holds {first.kind} results but {other.path} holds {other.kind} "
                             "results; compare results of one kind")
        if first.task and other.task and first.task != other.task:
            what = "task" if first.kind == "lm-eval" else "dataset hash"
            raise TeenyError(f"{first.path} and {other.path} are of two different tasks ({what} {first.task} vs "
                             f"{other.task}); compare results of one task")
        for doc_id, doc_hash in first.fingerprints.items():
            if other.fingerprints.get(doc_id, doc_hash) != doc_hash:
                where = f"{doc_id[0]} doc_id {doc_id[1]}" if isinstance(doc_id, tuple) else f"doc_id {doc_id}"
                raise TeenyError(f"{first.path} and {other.path} are of two different tasks: {where} is a "
                                 f"different document (doc_hash {doc_hash[:12]} vs {other.fingerprints[doc_id][:12]})")
        shared = [ev for ev in first.values if ev in other.values and set(first.values[ev]) & set(other.values[ev])]
        if not shared:
            a_ids, b_ids = _ids(first), _ids(other)
            raise TeenyError(f"{first.path} and {other.path} share no item id (A has {a_ids}, B has {b_ids}); "
                             "compare results of the same task items")


def _ids(results: ForeignResults) -> str:
    ids = sorted({item for values in results.values.values() for item in values}, key=str)
    shown = ", ".join(str(i[0] if isinstance(i, tuple) else i) for i in ids[:3])
    return f"{len(ids)} ids: {shown}{', ...' if len(ids) > 3 else ''}"


def to_variants(files: list[ForeignResults], names: list[str]) -> tuple[list[VariantResult], list[str]]:
    """Variants with records the significance analyzer reads, and the continuous (non 0/1) metrics among them.

    A metric is pass/fail when its values are 0/1 (or booleans) in every file, so that all files agree."""
    evaluators = {ev for f in files for ev in f.values}
    binary = {ev for ev in evaluators if all(_is_binary(v) for f in files for v in f.values.get(ev, {}).values())}
    continuous = sorted({f.metric_of[ev] for f in files for ev in evaluators - binary if ev in f.metric_of})
    variants = []
    for results, name in zip(files, names):
        records: dict[str, list[dict[str, Any]]] = {}
        for evaluator, values in results.values.items():
            rows = records.setdefault(evaluator, [])
            for item, value in values.items():
                task_id, sample = item if isinstance(item, tuple) else (item, 0)
                record: dict[str, Any] = {"key": f"{task_id}#{sample}", "task_id": task_id, "sample": sample}
                if evaluator in binary:
                    record["passed"] = bool(value)
                else:
                    record[results.metric_of[evaluator]] = float(value)
                rows.append(record)
        variants.append(VariantResult(name=name, method=results.kind, describe={"file": str(results.path)},
                                      records=records, metrics={}, profile={}))
    return variants, continuous


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and (isinstance(value, bool) or math.isfinite(value))


def _is_binary(value: Any) -> bool:
    return isinstance(value, bool) or value in (0, 1)
