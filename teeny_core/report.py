"""The experiment report (``report.md``, a self-contained ``report.html``, ``plots/*.png``) and the readings of
``results.json`` it shares with ``teeny recommend`` (:mod:`teeny_core.recommend`).

Both read the ``results`` dict the pipeline writes to ``runs/<experiment>/results.json``; every piece is
optional (a variant without a profile, an experiment without the significance analyzer). What each metric
means (its label, which direction is better, the per-item field analyzers compare) comes from the
evaluators' declarations stored in ``results["evaluators"]``. matplotlib is imported only when plotting;
without it the report is written without plots and says so.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from teeny_core.errors import TeenyError

SIGNIFICANCE = "significance"
PASS_FAIL = "passed"  # the per-item field of pass/fail benchmarks; their headline leads the report


# -- sizes ------------------------------------------------------------------------------------------------------
_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1024**3, "gb": 1000**3, "gib": 1024**3, "t": 1024**4, "tb": 1000**4, "tib": 1024**4}


def parse_size(text: str | int) -> int:
    """Bytes from ``"8GiB"``, ``"512MB"``, ``"1.5 GB"``, ``"4G"`` (K/M/G/T alone are binary) or a plain number."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS:
        raise TeenyError(f"bad memory size {text!r}; expected a number with a unit like 8GiB, 512MB or 16G")
    return int(float(m.group(1)) * _UNITS[unit])


def format_bytes(n: float | None) -> str:
    """``1536 -> "1.5 KiB"``; None or 0 -> ``"-"``."""
    if isinstance(n, bool) or not isinstance(n, (int, float)) or not n or not math.isfinite(n):
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


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


# -- reading results ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Primary:
    """The benchmark score the report leads with and ``recommend`` ranks by."""

    evaluator: str
    key: str  # metrics key, e.g. "pass@1"
    label: str
    higher_is_better: bool
    analysis_metric: str | None  # significance result measuring it, e.g. "passed"


def _dict(value: Any) -> dict[str, Any]:
    """``value`` if it is a dict, else an empty one (results from older or partial runs)."""
    return value if isinstance(value, dict) else {}


def _variants(results: dict[str, Any]) -> list[dict[str, Any]]:
    variants = results.get("variants")
    return [v for v in variants if isinstance(v, dict) and isinstance(v.get("name"), str)] \
        if isinstance(variants, list) else []


def _significance(results: dict[str, Any]) -> dict[str, Any]:
    found = _dict(results.get("analysis")).get(SIGNIFICANCE)
    return found if isinstance(found, dict) else {}


def _alpha(results: dict[str, Any]) -> float:
    """The significance level of the analysis (0.05 when absent)."""
    settings = _significance(results).get("_experiment")
    alpha = settings.get("alpha") if isinstance(settings, dict) else None
    return float(alpha) if isinstance(alpha, (int, float)) and 0 < alpha < 1 else 0.05


def declarations(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """evaluator -> {"headline": name or None, "metrics": {name: {"label", "higher_is_better", "item_field"}}},
    as the evaluators declared them (results of runs from before declarations have none)."""
    out = {}
    for ev, decl in _dict(results.get("evaluators")).items():
        metrics = {k: m for k, m in _dict(_dict(decl).get("metrics")).items()
                   if isinstance(m, dict) and isinstance(m.get("higher_is_better"), bool)}
        headline = _dict(decl).get("headline")
        out[str(ev)] = {"headline": headline if isinstance(headline, str) and headline in metrics else None,
                        "metrics": metrics}
    return out


def primary_metric(results: dict[str, Any]) -> Primary | None:
    """The headline metric of the first evaluator (in experiment order) that has one with a value; a pass/fail
    benchmark's headline (compared per item on ``passed``) comes before the others."""
    declared = declarations(results)
    candidates: list[tuple[int, int, Primary]] = []
    evaluators: list[str] = []
    for v in _variants(results):
        evaluators += [e for e in _dict(v.get("metrics")) if e not in evaluators]
    for order, ev in enumerate(evaluators):
        key = _dict(declared.get(ev)).get("headline")
        if key is None:
            continue
        if not any(isinstance(_dict(_dict(v.get("metrics")).get(ev)).get(key), (int, float)) for v in _variants(results)):
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
    found = _dict(_dict(_significance(results).get(variant)).get(primary.evaluator)).get(primary.analysis_metric)
    return found if isinstance(found, dict) else None


def score_of(results: dict[str, Any], variant: dict[str, Any], primary: Primary | None
             ) -> tuple[float | None, list[float] | None]:
    """(score, CI) of a variant on the primary metric: the analysis's paired numbers where they measure the
    same quantity (pass@1), else the evaluator's metric with a normal CI from its ``<key>_se``."""
    if primary is None:
        return None, None
    if primary.analysis_metric == PASS_FAIL:
        if variant["name"] == results.get("baseline"):
            for other in _variants(results):
                r = comparison(results, other["name"], primary)
                if r and _side(r, "baseline")[0] is not None:
                    return _side(r, "baseline")
        else:
            r = comparison(results, variant["name"], primary)
            if r and _side(r, "variant")[0] is not None:
                return _side(r, "variant")
    metrics = _dict(_dict(variant.get("metrics")).get(primary.evaluator))
    value = metrics.get(primary.key)
    if not isinstance(value, (int, float)):
        return None, None
    se = metrics.get(f"{primary.key}_se")
    if isinstance(se, (int, float)) and math.isfinite(se):
        from statistics import NormalDist

        alpha = _alpha(results)
        z = NormalDist().inv_cdf(1 - alpha / 2)
        return float(value), [value - z * se, value + z * se]
    return float(value), None


def _bytes(value: Any) -> int | None:
    """A positive byte count, or None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return None
    return int(value)


def memory_of(variant: dict[str, Any]) -> tuple[int | None, str]:
    """(bytes, what was measured): the variant's worker process (it ran alone, from the load to the end of
    evaluation: peak GPU memory, else peak RSS), else the older per-stage figures (peak GPU memory, peak RSS
    while loading, the process's peak RSS), else the artifact size. RSS includes the runtime's libraries (the
    worker's ``baseline_rss_bytes``), as it does when the model is served."""
    profile = _dict(variant.get("profile"))
    worker = _dict(profile.get("worker"))
    if _bytes(worker.get("peak_gpu_bytes")):
        return _bytes(worker.get("peak_gpu_bytes")), "worker peak GPU memory"
    stages = [s for s in profile.values() if isinstance(s, dict)]
    cuda = max((_bytes(s.get("peak_cuda_bytes")) or 0 for s in stages), default=0)
    if cuda:
        return cuda, "peak GPU memory"
    if _bytes(worker.get("peak_rss_bytes")):
        return _bytes(worker.get("peak_rss_bytes")), "worker peak RSS"
    load = _bytes(_dict(profile.get("load")).get("peak_rss_bytes"))
    if load:
        return load, "peak RSS while loading"
    peak = _bytes(profile.get("peak_rss_bytes"))
    if peak:
        return peak, "peak RSS"
    size = _bytes(variant.get("packed_bytes")) or _bytes(variant.get("artifact_bytes"))
    return (size, "artifact size (no memory profile)") if size else (None, "not measured")


def weight_bytes(variant: dict[str, Any]) -> int | None:
    """Bytes of weights as the runtime held them (packed bytes for packed runtimes), if it could tell."""
    return _bytes(_dict(_dict(variant.get("profile")).get("load")).get("weight_bytes"))


def runtime_of(variant: dict[str, Any]) -> str:
    """The runtime that loaded the variant and produced its memory and speed figures."""
    name = _dict(variant.get("profile")).get("runtime")
    return name if isinstance(name, str) else "-"


def failed(variant: dict[str, Any]) -> bool:
    return variant.get("status") == "failed"


def _energy(variant: dict[str, Any]) -> float | None:
    profile = _dict(variant.get("profile"))
    if isinstance(profile.get("energy_joules"), (int, float)):
        return float(profile["energy_joules"])
    values = [s["energy_joules"] for s in profile.values()
              if isinstance(s, dict) and isinstance(s.get("energy_joules"), (int, float))]
    return float(sum(values)) if values else None


BITS_KEYS = ("bits", "wbits", "ftype", "type", "dtype")


def _bits_key(variant: dict[str, Any]) -> str | None:
    describe = _dict(variant.get("describe"))
    return next((key for key in BITS_KEYS if describe.get(key) is not None), None)


def _bits(variant: dict[str, Any]) -> str:
    key = _bits_key(variant)
    return str(variant["describe"][key]) if key else "-"


def _method(variant: dict[str, Any]) -> str:
    """The method with its other settings, e.g. ``rtn (asym, g128)``."""
    describe = _dict(variant.get("describe"))
    shown = _bits_key(variant)
    extra = [str(v) for k, v in describe.items() if k != shown and v is not None and not isinstance(v, (dict, list))]
    method = str(variant.get("method", "-"))
    return f"{method} ({', '.join(extra)})" if extra else method


def _num(x: Any, digits: int = 4) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return "-" if x is None else str(x)
    return f"{x:.{digits}g}"


def _ci(ci: Any) -> str:
    return f" [{_num(ci[0], 3)}, {_num(ci[1], 3)}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else ""


def _rate(x: float | None, ci: Any = None) -> str:
    """A pass rate as a percentage with its CI: ``67.7% [60.2, 74.4]``."""
    if x is None:
        return "-"
    ok = isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci
    return f"{100 * x:.1f}%" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ok else "")


def _points(x: float, ci: Any = None) -> str:
    """A difference of pass rates in percentage points with its CI: ``-6.7 pp [-11.0, -3.0]``."""
    ok = isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci
    return f"{100 * x:+.1f} pp" + (f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ok else "")


def _interval(ci: Any) -> list[float] | None:
    """``[low, high]`` if ``ci`` is a pair of finite numbers, else None."""
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in ci):
        return [float(ci[0]), float(ci[1])]
    return None


def _side(r: dict[str, Any], side: str) -> tuple[float | None, list[float] | None]:
    """(score, CI) of the "baseline" or "variant" side of one significance result, if present."""
    found = _dict(r.get(side))
    score = found.get("score")
    ok = isinstance(score, (int, float)) and not isinstance(score, bool)
    return (float(score) if ok else None), _interval(found.get("ci"))


def _score_cell(r: dict[str, Any], side: str) -> str:
    score, ci = _side(r, side)
    if r.get("kind") == "pass/fail":
        return _rate(score, ci)
    return _num(score) + _ci(ci)


def _delta_cell(r: dict[str, Any]) -> str:
    delta = r.get("delta")
    if not isinstance(delta, (int, float)):
        return "-"
    if r.get("kind") == "pass/fail":
        return _points(delta, r.get("delta_ci"))
    return f"{delta:+.4g}" + _ci(r.get("delta_ci"))


def _flips_cell(r: dict[str, Any]) -> str:
    flips = r.get("flips")
    if not isinstance(flips, dict):
        return ""
    return f"-{flips.get('right_to_wrong', '?')} / +{flips.get('wrong_to_right', '?')}"


def analysis_rows(findings: dict[str, Any]) -> list[list[str]]:
    """Rows (evaluator, metric, n, baseline [CI], variant [CI], delta [CI], test, p, Holm p, flips, verdict)
    from one variant's significance findings (``{evaluator: {metric: result}}``)."""
    rows = []
    for evaluator, metrics in sorted(findings.items()):
        if not isinstance(metrics, dict):
            continue
        for metric, r in metrics.items():
            if not isinstance(r, dict):
                continue
            rows.append([
                evaluator, str(r.get("metric", metric)), str(r.get("n_items", "")),
                _score_cell(r, "baseline"), _score_cell(r, "variant"), _delta_cell(r), str(r.get("test", "")),
                _num(r.get("p_value"), 3), _num(r.get("p_adjusted"), 3), _flips_cell(r), str(r.get("verdict", "")),
            ])
            pass_at_k = r.get("pass_at_k") if isinstance(r.get("pass_at_k"), dict) else {}
            for k, pk in pass_at_k.items():
                if not isinstance(pk, dict):
                    continue
                delta = pk.get("delta")
                rows.append([evaluator, k, str(r.get("n_problems", "")),
                             _rate(pk.get("baseline"), pk.get("baseline_ci")),
                             _rate(pk.get("variant"), pk.get("variant_ci")),
                             _points(delta, pk.get("delta_ci")) if isinstance(delta, (int, float)) else "-",
                             "paired bootstrap over problems", "-", "-", "", ""])
    return rows


ANALYSIS_HEADERS = ["evaluator", "metric", "n", "baseline [CI]", "variant [CI]", "delta [CI]", "test", "p",
                    "p (Holm)", "flips (-/+)", "verdict"]


# -- the report ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Block:
    kind: str  # "h1", "h2", "p", "table", "img", "pre"
    text: str = ""
    headers: list[str] = dataclasses.field(default_factory=list)
    rows: list[list[str]] = dataclasses.field(default_factory=list)
    path: Path | None = None


def results_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The main table: one row per variant with score, delta vs the original, flips, size, memory, speed, energy."""
    primary = primary_metric(results)
    label = primary.label if primary else "score"
    delta_label = "delta vs original"
    if primary is not None and primary.analysis_metric and primary.analysis_metric != PASS_FAIL:
        delta_label = f"delta mean {primary.analysis_metric} vs original"
    alpha = _alpha(results)
    headers = ["variant", "method", "bits", f"{label} [{100 * (1 - alpha):g}% CI]", f"{delta_label} [CI] (p Holm)", "verdict",
               "flips (-/+)", "artifact", "peak memory", "tokens/s", "energy", "J/token", "weights in memory", "TTFT",
               "throughput (batch)", "runtime"]
    rows = []
    for v in _variants(results):
        s, ci = score_of(results, v, primary)
        r = comparison(results, v["name"], primary)
        if failed(v):
            rows.append([v["name"], _method(v), _bits(v), "-", "-", "FAILED", "", "-", "-", "-", "-", "-", "-", "-",
                         "-", runtime_of(v)])
            continue
        if v["name"] == results.get("baseline"):
            delta, verdict, flips = "(baseline)", "", ""
        elif r:
            delta = f"{_delta_cell(r)} (p={_num(r.get('p_adjusted'), 3)})"
            verdict = str(r.get("verdict", ""))
            flips = _flips_cell(r)
        else:
            delta, verdict, flips = "-", "not analyzed", ""
        size = format_bytes(v.get("artifact_bytes"))
        packed = _bytes(v.get("packed_bytes"))
        if packed and packed != v.get("artifact_bytes"):
            size += f" (packed {format_bytes(packed)})"
        mem, how = memory_of(v)
        bench = _dict(_dict(v.get("profile")).get("benchmark"))
        energy = _energy(v)
        if s is None:
            score = "-"
        elif primary is not None and primary.analysis_metric == PASS_FAIL and 0 <= s <= 1:
            score = _rate(s, ci)
        else:
            score = _num(s) + _ci(ci)
        name = v["name"] + (f" {SOURCE_MATCH_MARK}" if source_match_reason(v) else "")
        rows.append([name, _method(v), _bits(v), score,
                     delta, verdict, flips, size, format_bytes(mem) if mem and "artifact" not in how else "-",
                     _num(bench.get("decode_tokens_per_s"), 3), f"{energy:.1f} J" if energy is not None else "-",
                     _num(bench.get("joules_per_token"), 3),
                     format_bytes(weight_bytes(v)), _seconds(bench.get("ttft_s")), _throughput(bench), runtime_of(v)])
    return headers, rows


def _seconds(x: Any) -> str:
    return f"{x:.3g} s" if isinstance(x, (int, float)) and not isinstance(x, bool) else "-"


def _throughput(bench: dict[str, Any]) -> str:
    """Generated tokens/s of a batch of prompts, with the batch size: ``41.2 (8)``."""
    tps = bench.get("throughput_tokens_per_s")
    return f"{_num(tps, 3)} ({bench.get('throughput_batch')})" if isinstance(tps, (int, float)) else "-"


SOURCE_MATCH_MARK = "(same quantization as the source)"


def source_match_reason(variant: dict[str, Any]) -> str | None:
    """Why this variant's fidelity is biased by repeating the source's quantization, or None."""
    match = _dict(variant.get("source_match"))
    return str(match.get("reason")) if match.get("flagged") else None


def source_match_note(results: dict[str, Any]) -> str | None:
    """The report's sentence about variants flagged by :func:`source_match_reason`, or None."""
    flagged = [f"{v['name']}: {reason}" for v in _variants(results) if (reason := source_match_reason(v))]
    if not flagged:
        return None
    return (f"Variants marked {SOURCE_MATCH_MARK} repeat the quantization the original was dequantized from, "
            "so their KL, top-1 agreement and perplexity measure little more than an identity; do not read "
            "them as a comparison of methods. " + "; ".join(flagged) + ".")


NOT_ERRORS = ("passed",)


def _is_error_category(category: str) -> bool:
    return category not in NOT_ERRORS and not category.startswith("skipped")


def _category_counts(results: dict[str, Any], run_dir: Path) -> dict[str, dict[str, dict[str, int]]]:
    """evaluator -> variant -> error category -> count, from evaluator metrics (a ``categories`` dict or
    ``errors/<category>`` keys), else from the failed records' ``category`` in ``run_dir/<variant>/samples.jsonl``.
    Passes and skipped items are not errors."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for v in _variants(results):
        found = False
        for ev, metrics in _dict(v.get("metrics")).items():
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
                except json.JSONDecodeError:
                    continue  # a torn last line of an interrupted run
                category = str(record.get("category") or "") if isinstance(record, dict) else ""
                if category and record.get("passed") is not True and _is_error_category(category):
                    per = counts.setdefault(str(record.get("evaluator", "?")), {})
                    per[category] = per.get(category, 0) + 1
            for ev, per in counts.items():
                out.setdefault(ev, {})[v["name"]] = per
    return out


def _lost_by_category(results: dict[str, Any]) -> dict[str, dict[str, dict[str, int]]]:
    """evaluator -> variant -> category -> right->wrong flips, from the significance analysis."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for v in _variants(results):
        for ev, metrics in _dict(_significance(results).get(v["name"])).items():
            by_cat = _dict(_dict(_dict(metrics).get("passed")).get("flips_by_category")).get("right_to_wrong")
            counts = {str(c): int(n) for c, n in _dict(by_cat).items()
                      if isinstance(n, (int, float)) and not isinstance(n, bool)}
            if counts:
                out.setdefault(str(ev), {})[v["name"]] = counts
    return out


def _pareto_front(points: list[tuple[float, float, str]], higher_is_better: bool) -> list[tuple[float, float, str]]:
    """Points not dominated by another (less or equal memory and a better or equal score, one strictly)."""
    sign = 1 if higher_is_better else -1
    front = [p for p in points if not any(
        q[0] <= p[0] and sign * q[1] >= sign * p[1] and (q[0] < p[0] or sign * q[1] > sign * p[1]) for q in points)]
    return sorted(front)


def _plots(run_dir: Path, results: dict[str, Any]) -> tuple[dict[str, Path], str | None]:
    """Write plots/*.png; returns (name -> path, why plots are missing). Plots of an earlier report go first."""
    plots_dir = run_dir / "plots"
    for stale in [*plots_dir.glob("pareto.png"), *plots_dir.glob("errors-*.png")]:
        stale.unlink()
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return {}, "Plots skipped: matplotlib is not installed (pip install matplotlib)."
    plots_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    primary = primary_metric(results)
    points, errors = [], []
    for v in _variants(results):
        s, ci = score_of(results, v, primary)
        size = _bytes(v.get("packed_bytes")) or _bytes(v.get("artifact_bytes")) or memory_of(v)[0]
        if s is not None and size:
            points.append((float(size), s, v["name"]))
            errors.append((max(0.0, s - ci[0]), max(0.0, ci[1] - s)) if ci else (0.0, 0.0))
    if primary is not None and points:
        scale, unit = (2**30, "GiB") if max(p[0] for p in points) >= 2**31 else (2**20, "MiB")
        fig = Figure(figsize=(7, 4.5), dpi=110)
        ax = fig.add_subplot()
        ax.errorbar([p[0] / scale for p in points], [p[1] for p in points],
                    yerr=[[e[0] for e in errors], [e[1] for e in errors]], fmt="o", color="#777", ecolor="#bbb",
                    capsize=3, zorder=2, label=f"variant ({100 * (1 - _alpha(results)):g}% CI)")
        front = _pareto_front(points, primary.higher_is_better)
        ax.plot([p[0] / scale for p in front], [p[1] for p in front], "-o", color="#d62728", zorder=3,
                label="Pareto front")
        for x, y, name in points:
            ax.annotate(name, (x / scale, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xlabel(f"model size ({unit}; packed size where known)")
        ax.set_ylabel(primary.label + ("" if primary.higher_is_better else " (lower is better)"))
        ax.set_title("accuracy vs size")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        out["pareto"] = plots_dir / "pareto.png"
        fig.savefig(out["pareto"])
    cats = _category_counts(results, run_dir)
    for ev, per_variant in cats.items():
        categories = sorted({c for counts in per_variant.values() for c in counts})
        names = list(per_variant)
        fig = Figure(figsize=(max(6, 1.2 * len(categories) + 2), 4.5), dpi=110)
        ax = fig.add_subplot()
        width = 0.8 / max(len(names), 1)
        for i, name in enumerate(names):
            xs = [j + i * width for j in range(len(categories))]
            ax.bar(xs, [per_variant[name].get(c, 0) for c in categories], width, label=name)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(categories))], categories, rotation=30, ha="right")
        ax.set_ylabel("count")
        ax.set_title(f"{ev}: errors by category")
        ax.legend(fontsize=8)
        fig.tight_layout()
        key = "errors-" + re.sub(r"[^A-Za-z0-9_.-]", "_", ev)
        out[key] = plots_dir / f"{key}.png"
        fig.savefig(out[key])
    return out, None


def report_tables(run_dir: Path, results: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The report's tables as (name, headers, rows); a name is its headings joined, e.g.
    ``paired-comparisons-with-the-baseline-gptq-w4``. No plot is drawn."""
    tables, used = [], set()
    section, subsection = "", ""
    for block in _blocks(run_dir, results, plots=False)[0]:
        if block.kind == "h2":
            section, subsection = block.text, ""
        elif block.kind == "h3":
            subsection = block.text
        elif block.kind == "table":
            name = re.sub(r"[^a-z0-9]+", "-", f"{section} {subsection}".lower()).strip("-") or "table"
            unique, n = name, 2
            while unique in used:
                unique, n = f"{name}-{n}", n + 1
            used.add(unique)
            tables.append((unique, block.headers, block.rows))
    return tables


def _blocks(run_dir: Path, results: dict[str, Any], plots: bool = True) -> tuple[list[_Block], dict[str, Path]]:
    blocks = [_Block("h1", f"Teeny report: {results.get('experiment', run_dir.name)}")]
    baseline = results.get("baseline", "original")
    intro = f"Every variant is compared item by item with the baseline **{baseline}**."
    sig = _significance(results)
    settings = sig.get("_experiment") if isinstance(sig.get("_experiment"), dict) else {}
    if settings:
        power = settings.get("power")
        intro += (f" Significance: alpha {settings.get('alpha')}, {settings.get('correction')} over "
                  f"{settings.get('comparisons')} comparisons; bootstrap {settings.get('resamples')} resamples "
                  f"(seed {settings.get('seed')}); MDE at {_num(100 * power, 3) if isinstance(power, (int, float)) else '?'}% "
                  "power.")
    else:
        intro += " No significance analysis in these results (install teeny-stats and add the `significance` analyzer)."
    if results.get("config_hash"):
        intro += f" Config hash `{results['config_hash']}`."
    blocks.append(_Block("p", intro))
    headers, rows = results_table(results)
    blocks += [_Block("h2", "Results"), _Block("table", headers=headers, rows=rows)]
    note = source_match_note(results)
    if note:
        blocks.append(_Block("p", note))
    memory_note = {memory_of(v)[1] for v in _variants(results)
                   if memory_of(v)[0] and "artifact" not in memory_of(v)[1]}
    if memory_note:
        blocks.append(_Block("p", "Peak memory is the " + " / ".join(sorted(memory_note)) + ". Memory, "
                             "weights in memory, tokens/s (decode at batch 1), J/token (energy per generated token at batch 1, "
                             "where NVML or RAPL is readable), TTFT and throughput are those of the "
                             "runtime named in each row, each variant measured in a worker process of its own."))
    failures = [v for v in _variants(results) if failed(v)]
    if failures:
        blocks += [_Block("h2", "Failed variants"),
                   _Block("p", "These variants did not finish; `teeny run` again resumes them. An exception's "
                               "traceback is in `<variant>/error.log`."),
                   _Block("table", headers=["variant", "stage", "error"], rows=[
                       [v["name"], str(v.get("failed_stage") or "-"), str(v.get("error") or "-")] for v in failures])]
    drawn, missing = _plots(run_dir, results) if plots else ({}, None)
    blocks.append(_Block("h2", "Plots"))
    if missing:
        blocks.append(_Block("p", missing))
    for name, path in drawn.items():
        blocks.append(_Block("img", name, path=path))
    details = [(v["name"], sig.get(v["name"])) for v in _variants(results) if isinstance(sig.get(v["name"]), dict)]
    if details:
        blocks.append(_Block("h2", "Paired comparisons with the baseline"))
        for name, findings in details:
            blocks += [_Block("h3", name), _Block("table", headers=ANALYSIS_HEADERS, rows=analysis_rows(findings))]
    metric_rows, metric_headers = _metric_table(results)
    if metric_rows:
        blocks += [_Block("h2", "Evaluator metrics"), _Block("table", headers=metric_headers, rows=metric_rows)]
    cats = _category_counts(results, run_dir)
    if cats:
        blocks.append(_Block("h2", "Errors by category"))
        for ev, per_variant in cats.items():
            categories = sorted({c for counts in per_variant.values() for c in counts})
            blocks += [_Block("h3", ev), _Block("table", headers=["variant"] + categories, rows=[
                [name] + [str(counts.get(c, 0)) for c in categories] for name, counts in per_variant.items()])]
    lost = _lost_by_category(results)
    if lost:
        blocks += [_Block("h2", "How the items a variant lost now fail"),
                   _Block("p", "Items the original passed and the variant failed (right->wrong flips), by the "
                               "variant's error category.")]
        for ev, per_variant in lost.items():
            categories = sorted({c for counts in per_variant.values() for c in counts})
            blocks += [_Block("h3", ev), _Block("table", headers=["variant"] + categories, rows=[
                [name] + [str(counts.get(c, 0)) for c in categories] for name, counts in per_variant.items()])]
    manifest = _dict(results.get("manifest"))
    blocks.append(_Block("h2", "Manifest"))
    if manifest:
        facts = [[k, _num(manifest[k]) if not isinstance(manifest[k], str) else manifest[k]]
                 for k in ("experiment", "config_hash", "seed", "started_at", "updated_at") if k in manifest]
        if facts:
            blocks.append(_Block("table", headers=["", ""], rows=facts))
        for section in ("versions", "hardware"):
            if isinstance(manifest.get(section), dict):
                blocks += [_Block("h3", section), _Block("table", headers=["", ""], rows=[
                    [k, json.dumps(val) if isinstance(val, (list, dict)) else str(val)]
                    for k, val in manifest[section].items()])]
        blocks.append(_Block("pre", json.dumps(manifest, indent=2, sort_keys=True, default=str)))
    else:
        blocks.append(_Block("p", "No manifest in these results."))
    return blocks, drawn


def _metric_table(results: dict[str, Any]) -> tuple[list[list[str]], list[str]]:
    columns: list[tuple[str, str]] = []
    for v in _variants(results):
        for ev, metrics in _dict(v.get("metrics")).items():
            for key, val in _dict(metrics).items():
                if isinstance(val, (int, float)) and not isinstance(val, bool) and (ev, key) not in columns:
                    columns.append((ev, key))
    rows = [[v["name"]] + [_num(_dict(_dict(v.get("metrics")).get(ev)).get(key)) for ev, key in columns]
            for v in _variants(results)]
    return (rows if columns else []), ["variant"] + [f"{ev}: {key}" for ev, key in columns]


def _text(value: Any) -> str:
    """A table cell's text: None as "-", anything else as its string."""
    return "-" if value is None else str(value)


def _md_cell(value: Any) -> str:
    return _text(value).replace("|", "\\|").replace("\n", " ")


def _to_markdown(blocks: list[_Block], run_dir: Path) -> str:
    out = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append("#" * int(b.kind[1]) + " " + b.text)
        elif b.kind == "p":
            out.append(b.text)
        elif b.kind == "table":
            out.append("| " + " | ".join(_md_cell(h) for h in b.headers) + " |")
            out.append("|" + "---|" * len(b.headers))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
        elif b.kind == "img" and b.path is not None:
            out.append(f"![{b.text}]({b.path.relative_to(run_dir).as_posix()})")
        elif b.kind == "pre":
            out.append("<details><summary>full manifest</summary>\n\n```json\n" + b.text + "\n```\n</details>")
        out.append("")
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1200px;padding:0 1rem;
color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.6rem 0 1.2rem;font-size:.88rem}
th,td{border:1px solid #ccc;padding:.25rem .55rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}
tr:nth-child(even) td{background:#fafafa}
td.worse{color:#b00020;font-weight:600} td.better{color:#1b7f2a;font-weight:600}
img{max-width:100%;border:1px solid #ddd;margin:.5rem 0}
pre{background:#f6f6f6;padding:.8rem;overflow:auto;font-size:.8rem}
code{background:#f0f0f0;padding:0 .2rem}
"""


def _inline(text: str) -> str:
    """Escape, then render **bold** and `code` (the only markdown the report's paragraphs use)."""
    escaped = html.escape(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)


def _to_html(blocks: list[_Block], title: str) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"]
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append(f"<{b.kind}>{html.escape(b.text)}</{b.kind}>")
        elif b.kind == "p":
            out.append(f"<p>{_inline(b.text)}</p>")
        elif b.kind == "table":
            out.append("<table><thead><tr>" + "".join(f"<th>{html.escape(_text(h))}</th>" for h in b.headers)
                       + "</tr></thead><tbody>")
            for row in b.rows:
                cells = []
                for c in row:
                    cls = ' class="worse"' if c == "worse" else ' class="better"' if c == "better" else ""
                    cells.append(f"<td{cls}>{html.escape(_text(c))}</td>")
                out.append("<tr>" + "".join(cells) + "</tr>")
            out.append("</tbody></table>")
        elif b.kind == "img" and b.path is not None:
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")
            out.append(f'<figure><img alt="{html.escape(b.text)}" src="data:image/png;base64,{data}"></figure>')
        elif b.kind == "pre":
            out.append(f"<details><summary>full manifest</summary><pre>{html.escape(b.text)}</pre></details>")
    out.append("</body></html>")
    return "\n".join(out)


def _write_text(path: Path, text: str) -> None:
    """Atomic: a temp file beside ``path``, then rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_report(run_dir: Path, results: dict[str, Any]) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` (self-contained) and ``plots/*.png`` into ``run_dir``.

    Returns ``{"md": path, "html": path, <plot name>: path, ...}``.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    blocks, plots = _blocks(run_dir, results)
    title = f"Teeny report: {results.get('experiment', run_dir.name)}"
    paths = {"md": run_dir / "report.md", "html": run_dir / "report.html"}
    _write_text(paths["md"], _to_markdown(blocks, run_dir))
    _write_text(paths["html"], _to_html(blocks, title))
    return {**paths, **plots}
