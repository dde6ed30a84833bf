"""``teeny export RUN --format lm-eval|evalplus|csv``: a finished run's results in files other tools read.

- ``lm-eval``: per variant, ``<variant>/results_<date>.json`` in lm-evaluation-harness 0.4's layout
  (``results`` with ``<metric>,none`` and ``<metric>_stderr,none`` per task, ``configs``, ``versions``,
  ``n-shot``, ``higher_is_better``, ``n-samples``, ``config``) and, per pass/fail evaluator,
  ``<variant>/samples_<evaluator>_<date>.jsonl`` in the layout of lm-eval's ``--log_samples`` (``doc_id``,
  ``doc``, ``filter``, ``metrics``, ``pass@1``), which ``teeny compare`` reads back.
- ``evalplus``: per variant, ``<variant>/samples.jsonl`` with ``{"task_id", "completion"}`` per generated
  sample of a HumanEval evaluator, the input ``evalplus.evaluate --samples`` grades.
- ``csv``: every table of the run's report (``report.md``), one ``<table>.csv`` each.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from teeny_core.errors import TeenyError

FORMATS = ("lm-eval", "evalplus", "csv")
EVALPLUS_EVALUATORS = ("humaneval-plus", "humaneval")  # whose records carry HumanEval task ids and completions


def export(run_dir: Path, results: dict[str, Any], fmt: str, out_dir: Path,
           evaluator: str | None = None, plugins: Any = None) -> list[Path]:
    """Write ``fmt`` files of the experiment run ``run_dir`` (its ``results.json`` read by
    :func:`teeny_core.results.load_results`) into ``out_dir``; returns the files written. ``csv`` writes the
    report's tables, those of ``plugins``' report sections included."""
    if fmt not in FORMATS:
        raise TeenyError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if fmt == "csv":
        return _csv(run_dir, results, out_dir, plugins)
    written: list[Path] = []
    now = datetime.now()
    date = now.isoformat().replace(":", "-")  # as lm-eval dates its file names
    # every variant's records are read (and checked) before the first file is written
    all_records = [read_records(run_dir / variant["name"] / "samples.jsonl") for variant in results["variants"]]
    for variant, records in zip(results["variants"], all_records):
        if fmt == "lm-eval":
            written += _lm_eval(variant, records, results.get("evaluators") or {}, out_dir / variant["name"], date,
                                now.timestamp())
        else:
            written += _evalplus(variant, records, out_dir / variant["name"], evaluator)
    if not written:
        raise TeenyError(f"{run_dir} has no records to export as {fmt} (no variant has a samples.jsonl"
                         + (" with HumanEval completions)" if fmt == "evalplus" else ")"))
    return written


def read_records(samples: Path) -> dict[str, list[dict[str, Any]]]:
    """evaluator -> records of a variant's ``samples.jsonl``, read-only; each key once (the first counts, as
    in the run), a torn last line of an interrupted run ignored, any other broken line one error."""
    if not samples.is_file():
        return {}
    out: dict[str, list[dict[str, Any]]] = {}
    seen: set[tuple[str, str]] = set()
    with open(samples, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                break
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):  # bad JSON or UTF-8, an int of over 4300 digits, deep nesting
                record = None
            if not isinstance(record, dict) or "key" not in record:
                raise TeenyError(f"{samples}:{number} is not a record (expected a JSON object with a 'key')")
            evaluator = str(record.get("evaluator", "unknown"))
            ident = (evaluator, json.dumps(record["key"], sort_keys=True, default=str))
            if ident not in seen:
                seen.add(ident)
                out.setdefault(evaluator, []).append(record)
    return out


def _graded(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pass/fail records that were graded (items skipped for a missing toolchain are not outcomes)."""
    return [r for r in records if isinstance(r.get("passed"), bool)
            and not str(r.get("category") or "").startswith("skipped")]


def _problem(record: dict[str, Any]) -> str:
    task = str(record.get("task_id", record["key"]))
    return f"{record['language']}/{task}" if record.get("language") else task


def _natural(text: str) -> list[Any]:
    """Sort key that puts HumanEval/2 before HumanEval/10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _per_problem(records: list[dict[str, Any]]) -> dict[str, list[bool]]:
    """problem -> outcomes of its samples, problems in natural order."""
    grouped: dict[str, list[bool]] = {}
    for r in records:
        grouped.setdefault(_problem(r), []).append(r["passed"])
    return dict(sorted(grouped.items(), key=lambda item: _natural(item[0])))


def mean_stderr(values: list[float]) -> float | str:
    """lm-eval's stderr of a mean: the sample standard deviation over sqrt(n); "N/A" with fewer than 2."""
    n = len(values)
    if n < 2:
        return "N/A"
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def _lm_eval(variant: dict[str, Any], records: dict[str, list[dict[str, Any]]], declarations: dict[str, Any],
             out: Path, date: str, timestamp: float) -> list[Path]:
    results: dict[str, Any] = {}
    configs: dict[str, Any] = {}
    higher: dict[str, Any] = {}
    n_samples: dict[str, Any] = {}
    written: list[Path] = []
    for evaluator, metrics in sorted(variant.get("metrics", {}).items()):
        graded = _graded(records.get(evaluator, []))
        row: dict[str, Any] = {"name": evaluator, "alias": evaluator}
        if graded:
            problems = _per_problem(graded)
            per_doc = [sum(outcomes) / len(outcomes) for outcomes in problems.values()]
            row["pass@1,none"] = sum(per_doc) / len(per_doc)
            row["pass@1_stderr,none"] = mean_stderr(per_doc)
            higher[evaluator] = {"pass@1": True}
            n_samples[evaluator] = {"original": len(per_doc), "effective": len(per_doc)}
            row["sample_len"] = len(per_doc)
            repeats = max(len(outcomes) for outcomes in problems.values())
            written.append(_lm_eval_samples(out / f"samples_{evaluator}_{date}.jsonl", evaluator, problems,
                                            graded))
        else:
            repeats = 1
        declared = (declarations.get(evaluator) or {}).get("metrics") or {}
        # every stored number, declared metrics first; a "<metric>_se" is that metric's stderr, not a row
        names = [*declared, *(m for m in sorted(metrics) if m not in declared and not m.endswith("_se"))]
        for name in names:
            value = metrics.get(name)
            if not _is_number(value) or f"{name},none" in row:
                continue
            row[f"{name},none"] = value
            row[f"{name}_stderr,none"] = metrics[f"{name}_se"] if _is_number(metrics.get(f"{name}_se")) else "N/A"
            if isinstance(declared.get(name, {}).get("higher_is_better"), bool):
                higher.setdefault(evaluator, {})[name] = declared[name]["higher_is_better"]
        results[evaluator] = row
        configs[evaluator] = {"task": evaluator, "output_type": "generate_until" if graded else "teeny",
                              "repeats": repeats, "num_fewshot": 0,
                              "metric_list": [{"metric": "pass@1", "aggregation": "mean", "higher_is_better": True}]
                              if graded else [], "metadata": {"version": 1.0, "teeny_evaluator": evaluator}}
    if not results:
        return []
    layout = {
        "results": results, "group_subtasks": {}, "configs": configs,
        "versions": {ev: 1.0 for ev in results}, "n-shot": {ev: 0 for ev in results},
        "higher_is_better": higher, "n-samples": n_samples,
        "config": {"model": "teeny", "model_args": {"variant": variant["name"], "method": variant.get("method", "?")},
                   "teeny": {"method": variant.get("method"), "describe": variant.get("describe", {})}},
        "model_name": variant["name"], "model_name_sanitized": re.sub(r"[^\w.-]", "__", variant["name"]),
        "date": timestamp,
    }
    path = out / f"results_{date}.json"
    _write(path, json.dumps(layout, indent=2, default=str) + "\n")
    return [path, *written]


def _lm_eval_samples(path: Path, evaluator: str, problems: dict[str, list[bool]],
                     records: list[dict[str, Any]]) -> Path:
    """One ``--log_samples`` line per problem; its ``pass@1`` is the fraction of its samples that passed."""
    completions: dict[str, list[str]] = {}
    for r in records:
        completions.setdefault(_problem(r), []).append(str(r.get("completion", "")))
    lines = []
    for doc_id, (problem, outcomes) in enumerate(problems.items()):
        doc = {"task_id": problem}
        lines.append(json.dumps({
            "doc_id": doc_id, "doc": doc, "target": "", "arguments": {}, "resps": [completions[problem]],
            "filtered_resps": [completions[problem]], "filter": "none", "metrics": ["pass@1"],
            "doc_hash": _sha(json.dumps(doc, indent=2)), "prompt_hash": _sha(problem), "target_hash": _sha(""),
            "pass@1": sum(outcomes) / len(outcomes)}) + "\n")
    _write(path, "".join(lines))
    return path


def _evalplus(variant: dict[str, Any], records: dict[str, list[dict[str, Any]]], out: Path,
              evaluator: str | None) -> list[Path]:
    chosen = evaluator or next((ev for ev in EVALPLUS_EVALUATORS if ev in records), None)
    if chosen is None or chosen not in records:
        return []
    rows = [r for r in records[chosen] if "task_id" in r and isinstance(r.get("completion"), str)]
    if not rows:
        raise TeenyError(f"variant {variant['name']!r}: the {chosen} records have no task_id and completion "
                         "to export for evalplus")
    rows.sort(key=lambda r: (_natural(str(r["task_id"])), r.get("sample", 0)))
    path = out / "samples.jsonl"
    _write(path, "".join(json.dumps({"task_id": r["task_id"], "completion": r["completion"]}) + "\n" for r in rows))
    return [path]


def _csv(run_dir: Path, results: dict[str, Any], out_dir: Path, plugins: Any) -> list[Path]:
    from teeny_core.report import report_tables

    written = []
    for name, headers, rows in report_tables(run_dir, results, plugins):
        path = out_dir / f"{name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(headers)
            writer.writerows(rows)
        written.append(path)
    return written


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
