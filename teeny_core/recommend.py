"""``teeny recommend``: the best variant of a finished run that fits a memory budget, and why.

The policy ranks by the verdicts of the significance analysis against the original on the primary metric (the
headline the evaluators declared), then by measured memory (the variant's own worker, under the runtime that
served it); variants that failed are never recommended.
"""

from __future__ import annotations

import math
from typing import Any

from teeny_core.errors import TeenyError
from teeny_core.results import (PASS_FAIL, bits_of, comparison, failed, memory_of, primary_metric, runtime_of,
                                score_of, variants_of)
from teeny_core.units import format_bytes, format_ci, format_number, format_rate, parse_size

VERDICT_TIER = {"better": 2, "no significant difference": 1, "worse": 0}


def recommend(results: dict[str, Any], memory_bytes: int | str) -> tuple[dict[str, Any], str]:
    """The best variant whose measured memory fits ``memory_bytes`` (an int or a size like "8GiB"), and why.

    Among the variants that fit, the best tier by verdict against the original wins (significantly better,
    then not significantly different, with the original itself in that tier, then significantly worse);
    within a top tier of "better" or "not significantly different" the smallest memory wins, since a variant
    statistically not worse than the best is preferred when smaller. When everything that fits is worse, or
    without an analysis, the highest primary score wins, ties to the smaller memory.
    """
    budget = parse_size(memory_bytes)
    variants = [v for v in variants_of(results) if not failed(v)]
    if not variants:
        raise TeenyError("the results hold no finished variants to recommend from")
    primary = primary_metric(results)
    sized = [(v, *memory_of(v)) for v in variants]
    unmeasured = [v["name"] for v, mem, _ in sized if mem is None]
    fitting = [(v, mem, how) for v, mem, how in sized if mem is not None and mem <= budget]
    if not fitting:
        measured = [(mem, v["name"]) for v, mem, _ in sized if mem is not None]
        if not measured:
            raise TeenyError("no variant has a measured memory or artifact size; run with a profiler")
        mem, name = min(measured)
        raise TeenyError(f"no variant fits {format_bytes(budget)}: the smallest, {name}, needs {format_bytes(mem)}")
    baseline = results.get("baseline")

    def tier(v: dict[str, Any]) -> int:
        if v["name"] == baseline:
            return VERDICT_TIER["no significant difference"]
        r = comparison(results, v["name"], primary)
        if r is None:
            return -1
        verdict = str(r.get("verdict", ""))
        return next((t for prefix, t in VERDICT_TIER.items() if verdict.startswith(prefix)), -1)

    def score(v: dict[str, Any]) -> float:
        s, _ = score_of(results, v, primary)
        if s is None:
            return -math.inf
        return s if primary is None or primary.higher_is_better else -s

    analyzed = primary is not None and any(tier(v) >= 0 for v, _, _ in fitting if v["name"] != baseline)
    top = max(tier(v) for v, _, _ in fitting) if analyzed else -1
    if top >= VERDICT_TIER["no significant difference"]:
        pool = [f for f in fitting if tier(f[0]) == top]
        best, mem, how = min(pool, key=lambda f: (f[1], -score(f[0])))
    else:  # no analysis, or everything that fits is significantly worse: the best score wins
        pool = [f for f in fitting if tier(f[0]) == top] if analyzed else fitting
        best, mem, how = max(pool, key=lambda f: (score(f[0]), -f[1]))
    reason = _why(results, primary, best, mem, how, budget, analyzed, fitting, sized, unmeasured)
    return best, reason


def _why(results, primary, best, mem, how, budget, analyzed, fitting, sized, unmeasured) -> str:
    runtime = f" under {runtime_of(best)}" if runtime_of(best) != "-" else ""
    parts = [f"{best['name']} ({best.get('method', '?')}, bits {bits_of(best)}) fits {format_bytes(budget)} "
             f"with {format_bytes(mem)} ({how}{runtime})"]
    s, ci = score_of(results, best, primary)
    if primary is not None and s is not None:
        as_rate = primary.analysis_metric == PASS_FAIL and 0 <= s <= 1
        shown = format_rate(s, ci) if as_rate else format_number(s) + format_ci(ci)
        parts.append(f"its {primary.label} is {shown}")
    if analyzed:
        if best["name"] == results.get("baseline"):
            parts.append("no smaller variant that fits is statistically as good as it")
        else:
            r = comparison(results, best["name"], primary) or {}
            verdict = str(r.get("verdict", ""))
            p = f"Holm-adjusted p={format_number(r.get('p_adjusted'), 3)}"
            if verdict.startswith("no significant difference"):
                parts.append(f"it is not significantly different from the original ({p}, {verdict}) and it is the "
                             f"smallest such variant that fits")
            elif verdict == "better":
                parts.append(f"it is significantly better than the original ({p}) and the smallest such that fits")
            else:
                parts.append(f"every variant that fits is significantly worse than the original ({p}); this one "
                             f"scores highest among them")
    elif primary is not None:
        parts.append("it has the highest score among the variants that fit (no significance analysis available)")
    too_big = [f"{v['name']} ({format_bytes(m)})" for v, m, _ in sized if m is not None and m > budget]
    if too_big:
        parts.append("too large: " + ", ".join(too_big))
    if unmeasured:
        parts.append("not considered (no memory measured): " + ", ".join(unmeasured))
    broken = [v["name"] for v in variants_of(results) if failed(v)]
    if broken:
        parts.append("not considered (failed): " + ", ".join(broken))
    return "; ".join(parts) + "."
