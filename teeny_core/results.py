"""Reading a run's ``results.json``: the variants, what each metric means, the primary score and each variant's
measured memory, as the report (:mod:`teeny_core.report`) and ``teeny recommend`` use them.

Every piece is optional (a variant without a profile, an experiment without the significance analyzer). What
each metric means (its label, which direction is better, the per-item field analyzers compare) comes from the
evaluators' declarations stored in ``results["evaluators"]``. The paired comparison of a variant with the
baseline is read from the ``significance`` analysis, whose result per metric has ``verdict``, ``delta``,
``delta_ci``, ``flips``, ``kind`` and the ``baseline``/``variant`` scores with their CIs.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from teeny_core.errors import TeenyError
from teeny_core.units import format_ci, format_points

SIGNIFICANCE = "significance"
PASS_FAIL = "passed"  # the per-item field of pass/fail benchmarks; their headline leads the report


def load_results(run_dir: Path) -> dict[str, Any]:
    """``run_dir/results.json`` as written by ``teeny run``; a one-line error when it is missing or broken."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise TeenyError(f"{run_dir} has no results.json; expected an experiment run directory runs/<experiment>/ "
                         "from a finished `teeny run`")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TeenyError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except (ValueError, RecursionError) as exc:  # not UTF-8, an int of over 4300 digits, deep nesting
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:120]
        raise TeenyError(f"{path} is not valid JSON ({reason})") from None
    if not isinstance(data, dict) or not isinstance(data.get("variants"), list):
        raise TeenyError(f"{path} is not a Teeny results file (no 'variants' list)")
    for n, v in enumerate(data["variants"], 1):
        if not isinstance(v, dict) or not isinstance(v.get("name"), str):
            raise TeenyError(f"{path}: variant #{n} is not an object with a 'name' (found {json.dumps(v)[:40]})")
        metrics = v.get("metrics")
        if not isinstance(metrics, dict) or not all(isinstance(m, dict) for m in metrics.values()):
            raise TeenyError(f"{path}: variant {v['name']!r} has no 'metrics' object of evaluator results")
        for key, default in (("method", "?"), ("describe", {}), ("profile", {})):
            if not isinstance(v.get(key), type(default)):
                v[key] = default  # absent from hand-made or older files; shown as unknown
    data.setdefault("experiment", Path(run_dir).name)
    return data


@dataclasses.dataclass
class Primary:
    """The benchmark score the report leads with and ``recommend`` ranks by."""

    evaluator: str
    key: str  # metrics key, e.g. "pass@1"
    label: str
    higher_is_better: bool
    analysis_metric: str | None  # significance result measuring it, e.g. "passed"


def as_dict(value: Any) -> dict[str, Any]:
    """``value`` if it is a dict, else an empty one (results from older or partial runs)."""
    return value if isinstance(value, dict) else {}


def variants_of(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The variant entries that have a name (in experiment order)."""
    variants = results.get("variants")
    return [v for v in variants if isinstance(v, dict) and isinstance(v.get("name"), str)] \
        if isinstance(variants, list) else []


def significance_of(results: dict[str, Any]) -> dict[str, Any]:
    """The significance analysis: ``{variant: {evaluator: {metric: result}}, "_experiment": settings}``."""
    found = as_dict(results.get("analysis")).get(SIGNIFICANCE)
    return found if isinstance(found, dict) else {}


def alpha_of(results: dict[str, Any]) -> float:
    """The significance level of the analysis (0.05 when absent)."""
    settings = significance_of(results).get("_experiment")
    alpha = settings.get("alpha") if isinstance(settings, dict) else None
    return float(alpha) if isinstance(alpha, (int, float)) and 0 < alpha < 1 else 0.05


def declarations(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """evaluator -> {"headline": name or None, "metrics": {name: {"label", "higher_is_better", "item_field"}}},
    as the evaluators declared them (results of runs from before declarations have none)."""
    out = {}
    for ev, decl in as_dict(results.get("evaluators")).items():
        metrics = {k: m for k, m in as_dict(as_dict(decl).get("metrics")).items()
                   if isinstance(m, dict) and isinstance(m.get("higher_is_better"), bool)}
        headline = as_dict(decl).get("headline")
        out[str(ev)] = {"headline": headline if isinstance(headline, str) and headline in metrics else None,
                        "metrics": metrics}
    return out


def primary_metric(results: dict[str, Any]) -> Primary | None:
    """The headline metric of the first evaluator (in experiment order) that has one with a value; a pass/fail
    benchmark's headline (compared per item on ``passed``) comes before the others."""
    declared = declarations(results)
    candidates: list[tuple[int, int, Primary]] = []
    evaluators: list[str] = []
    for v in variants_of(results):
        evaluators += [e for e in as_dict(v.get("metrics")) if e not in evaluators]
    for order, ev in enumerate(evaluators):
        key = as_dict(declared.get(ev)).get("headline")
        if key is None:
            continue
        if not any(isinstance(as_dict(as_dict(v.get("metrics")).get(ev)).get(key), (int, float))
                   for v in variants_of(results)):
            continue
        m = declared[ev]["metrics"][key]
        field = m.get("item_field") if isinstance(m.get("item_field"), str) else None
        candidates.append((0 if field == PASS_FAIL else 1, order,
                           Primary(ev, key, f"{ev} {m.get('label') or key}", m["higher_is_better"], field)))
    return min(candidates, key=lambda c: c[:2])[2] if candidates else None


def comparison(results: dict[str, Any], variant: str, primary: Primary | None) -> dict[str, Any] | None:
    """The significance result of ``variant`` vs the baseline on the primary score, if analyzed."""
    if primary is None or primary.analysis_metric is None:
        return None
    found = as_dict(as_dict(significance_of(results).get(variant)).get(primary.evaluator)).get(primary.analysis_metric)
    return found if isinstance(found, dict) else None


def score_of(results: dict[str, Any], variant: dict[str, Any], primary: Primary | None
             ) -> tuple[float | None, list[float] | None]:
    """(score, CI) of a variant on the primary metric: the analysis's paired numbers where they measure the
    same quantity (pass@1), else the evaluator's metric with a normal CI from its ``<key>_se``."""
    if primary is None:
        return None, None
    if primary.analysis_metric == PASS_FAIL:
        if variant["name"] == results.get("baseline"):
            for other in variants_of(results):
                r = comparison(results, other["name"], primary)
                if r and side_of(r, "baseline")[0] is not None:
                    return side_of(r, "baseline")
        else:
            r = comparison(results, variant["name"], primary)
            if r and side_of(r, "variant")[0] is not None:
                return side_of(r, "variant")
    metrics = as_dict(as_dict(variant.get("metrics")).get(primary.evaluator))
    value = metrics.get(primary.key)
    if not isinstance(value, (int, float)):
        return None, None
    se = metrics.get(f"{primary.key}_se")
    if isinstance(se, (int, float)) and math.isfinite(se):
        from statistics import NormalDist

        alpha = alpha_of(results)
        z = NormalDist().inv_cdf(1 - alpha / 2)
        return float(value), [value - z * se, value + z * se]
    return float(value), None


def positive_bytes(value: Any) -> int | None:
    """A positive byte count, or None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return None
    return int(value)


def memory_of(variant: dict[str, Any]) -> tuple[int | None, str]:
    """(bytes, what was measured): the variant's worker process (it ran alone, from the load to the end of
    evaluation: peak GPU memory, else peak RSS), else the older per-stage figures (peak GPU memory, peak RSS
    while loading, the process's peak RSS), else the artifact size. RSS includes the runtime's libraries (the
    worker's ``baseline_rss_bytes``), as it does when the model is served."""
    profile = as_dict(variant.get("profile"))
    worker = as_dict(profile.get("worker"))
    if positive_bytes(worker.get("peak_gpu_bytes")):
        return positive_bytes(worker.get("peak_gpu_bytes")), "worker peak GPU memory"
    stages = [s for s in profile.values() if isinstance(s, dict)]
    cuda = max((positive_bytes(s.get("peak_cuda_bytes")) or 0 for s in stages), default=0)
    if cuda:
        return cuda, "peak GPU memory"
    if positive_bytes(worker.get("peak_rss_bytes")):
        return positive_bytes(worker.get("peak_rss_bytes")), "worker peak RSS"
    load = positive_bytes(as_dict(profile.get("load")).get("peak_rss_bytes"))
    if load:
        return load, "peak RSS while loading"
    peak = positive_bytes(profile.get("peak_rss_bytes"))
    if peak:
        return peak, "peak RSS"
    size = positive_bytes(variant.get("packed_bytes")) or positive_bytes(variant.get("artifact_bytes"))
    return (size, "artifact size (no memory profile)") if size else (None, "not measured")


def weight_bytes(variant: dict[str, Any]) -> int | None:
    """Bytes of weights as the runtime held them (packed bytes for packed runtimes), if it could tell."""
    return positive_bytes(as_dict(as_dict(variant.get("profile")).get("load")).get("weight_bytes"))


def runtime_of(variant: dict[str, Any]) -> str:
    """The runtime that loaded the variant and produced its memory and speed figures."""
    name = as_dict(variant.get("profile")).get("runtime")
    return name if isinstance(name, str) else "-"


def failed(variant: dict[str, Any]) -> bool:
    """Whether the variant did not finish."""
    return variant.get("status") == "failed"


def energy_of(variant: dict[str, Any]) -> float | None:
    """Joules the variant used, summed over its measured stages, if measured."""
    profile = as_dict(variant.get("profile"))
    if isinstance(profile.get("energy_joules"), (int, float)):
        return float(profile["energy_joules"])
    values = [s["energy_joules"] for s in profile.values()
              if isinstance(s, dict) and isinstance(s.get("energy_joules"), (int, float))]
    return float(sum(values)) if values else None


BITS_KEYS = ("bits", "wbits", "ftype", "type", "dtype")


def _bits_key(variant: dict[str, Any]) -> str | None:
    describe = as_dict(variant.get("describe"))
    return next((key for key in BITS_KEYS if describe.get(key) is not None), None)


def bits_of(variant: dict[str, Any]) -> str:
    """The variant's bit width (or dtype, GGUF type) as described, else ``"-"``."""
    key = _bits_key(variant)
    return str(variant["describe"][key]) if key else "-"


def method_of(variant: dict[str, Any]) -> str:
    """The method with its other settings, e.g. ``rtn (asym, g128)``."""
    describe = as_dict(variant.get("describe"))
    shown = _bits_key(variant)
    extra = [str(v) for k, v in describe.items() if k != shown and v is not None and not isinstance(v, (dict, list))]
    method = str(variant.get("method", "-"))
    return f"{method} ({', '.join(extra)})" if extra else method


def _interval(ci: Any) -> list[float] | None:
    """``[low, high]`` if ``ci`` is a pair of finite numbers, else None."""
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in ci):
        return [float(ci[0]), float(ci[1])]
    return None


def side_of(r: dict[str, Any], side: str) -> tuple[float | None, list[float] | None]:
    """(score, CI) of the "baseline" or "variant" side of one significance result, if present."""
    found = as_dict(r.get(side))
    score = found.get("score")
    ok = isinstance(score, (int, float)) and not isinstance(score, bool)
    return (float(score) if ok else None), _interval(found.get("ci"))


def format_delta(r: dict[str, Any]) -> str:
    """A comparison's difference with its CI (in percentage points for pass/fail)."""
    delta = r.get("delta")
    if not isinstance(delta, (int, float)):
        return "-"
    if r.get("kind") == "pass/fail":
        return format_points(delta, r.get("delta_ci"))
    return f"{delta:+.4g}" + format_ci(r.get("delta_ci"))


def format_flips(r: dict[str, Any]) -> str:
    """Right->wrong and wrong->right flips of a pass/fail comparison: ``-3 / +1``."""
    flips = r.get("flips")
    if not isinstance(flips, dict):
        return ""
    return f"-{flips.get('right_to_wrong', '?')} / +{flips.get('wrong_to_right', '?')}"


SOURCE_MATCH_MARK = "(same quantization as the source)"


def source_match_reason(variant: dict[str, Any]) -> str | None:
    """Why this variant's fidelity is biased by repeating the source's quantization, or None."""
    match = as_dict(variant.get("source_match"))
    return str(match.get("reason")) if match.get("flagged") else None


CAUTION_MARK = "(see cautions)"


def cautions_of(variant: dict[str, Any]) -> list[str]:
    """The quantizer's sentences about a setup that weakens this variant (artifact meta ``cautions``)."""
    found = variant.get("cautions")
    return [str(c) for c in found] if isinstance(found, list) else []


NOT_ERRORS = ("passed",)


def _is_error_category(category: str) -> bool:
    return category not in NOT_ERRORS and not category.startswith("skipped")


def category_counts(results: dict[str, Any], run_dir: Path) -> dict[str, dict[str, dict[str, int]]]:
    """evaluator -> variant -> error category -> count, from evaluator metrics (a ``categories`` dict or
    ``errors/<category>`` keys), else from the failed records' ``category`` in ``run_dir/<variant>/samples.jsonl``.
    Passes and skipped items are not errors."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for v in variants_of(results):
        found = False
        for ev, metrics in as_dict(v.get("metrics")).items():
            if not isinstance(metrics, dict):
                continue
            cats = dict(metrics["categories"]) if isinstance(metrics.get("categories"), dict) else {}
            cats.update({k.split("/", 1)[1]: n for k, n in metrics.items() if k.startswith("errors/")})
            cats = {str(k): int(n) for k, n in cats.items()
                    if isinstance(n, (int, float)) and not isinstance(n, bool) and _is_error_category(str(k))}
            if cats:
                found = True
                out.setdefault(ev, {})[v["name"]] = cats
        samples = run_dir / str(v["name"]) / "samples.jsonl"
        if not found and samples.is_file():
            counts: dict[str, dict[str, int]] = {}
            for line in samples.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except (ValueError, RecursionError):
                    continue  # a torn last line of an interrupted run, or a line the store quarantines
                category = str(record.get("category") or "") if isinstance(record, dict) else ""
                if category and record.get("passed") is not True and _is_error_category(category):
                    per = counts.setdefault(str(record.get("evaluator", "?")), {})
                    per[category] = per.get(category, 0) + 1
            for ev, per in counts.items():
                out.setdefault(ev, {})[v["name"]] = per
    return out


