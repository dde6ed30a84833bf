"""The ``significance`` analyzer: every variant against the baseline, item by item, for every evaluator.

Records are paired by their ``key`` (which includes the sample index); items skipped on either side (a
``category`` starting with "skipped", e.g. a missing toolchain) are left out. Records with a boolean
``passed`` get the pass/fail analysis, clustered by problem (``task_id``, per ``language`` where present)
when a problem has several samples; numeric record fields named in the ``fields`` option get the continuous
analysis. All p-values of one experiment are Holm-adjusted together (or per metric across variants, see
``correction``), and verdicts use the adjusted p-values.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from teeny_core import Analyzer, Options, VariantResult, option
from teeny_stats import stats

PASS_AT_K = (1, 5, 10, 100)
EXPERIMENT_KEY = "_experiment"


@dataclasses.dataclass
class SignificanceOptions(Options):
    alpha: float = option(0.05, "significance level (two-sided), after Holm correction", min=1e-6, max=0.5)
    power: float = option(0.8, "power at which the minimum detectable effect is reported", min=0.5, max=0.999)
    resamples: int = option(10_000, "paired bootstrap resamples", min=100)
    seed: int = option(0, "bootstrap seed")
    fields: list[str] = option(["nll", "seconds"], "numeric per-item record fields compared as continuous metrics")
    higher_is_better: list[str] = option(["top1"], "continuous fields where larger values are better "
                                         "(all others: smaller is better)")
    correction: str = option("experiment", "Holm family: every comparison of the experiment, each "
                             "evaluator metric across variants, or none",
                             choices=("experiment", "metric", "none"))


class SignificanceAnalyzer(Analyzer[SignificanceOptions]):
    """Paired tests vs the baseline: McNemar + flips, pass@k bootstrap, Wilcoxon, Holm, MDE."""

    name = "significance"
    Options = SignificanceOptions

    def analyze(self, baseline: VariantResult, variants: list[VariantResult],
                options: SignificanceOptions) -> dict[str, Any]:
        out: dict[str, Any] = {}
        comparisons: list[tuple[str, dict[str, Any]]] = []  # (family, result)
        for variant in variants:
            per_evaluator: dict[str, Any] = {}
            for evaluator in sorted(set(baseline.records) & set(variant.records)):
                results = compare_records(baseline.records[evaluator], variant.records[evaluator], options)
                if results:
                    per_evaluator[evaluator] = results
                    comparisons += [(f"{evaluator}/{metric}", r) for metric, r in results.items()]
            out[variant.name] = per_evaluator
        apply_holm(comparisons, options.correction)
        for _, result in comparisons:
            result.update(_finite(result))  # NaN/inf (e.g. an MDE when nothing is detectable) become None
            result["verdict"] = verdict(result, options.alpha)
        out[EXPERIMENT_KEY] = {
            "baseline": baseline.name, "alpha": options.alpha, "power": options.power,
            "correction": f"holm ({options.correction})" if options.correction != "none" else "none",
            "comparisons": sum(1 for _, r in comparisons if r.get("p_value") is not None),
            "resamples": options.resamples, "seed": options.seed,
        }
        return out


def compare_records(baseline: list[dict[str, Any]], variant: list[dict[str, Any]],
                    options: SignificanceOptions) -> dict[str, dict[str, Any]]:
    """All analyses of one evaluator's records: ``passed`` (pass/fail) and each continuous field present."""
    base_by_key = {r["key"]: r for r in baseline if "key" in r}
    var_by_key = {r["key"]: r for r in variant if "key" in r}
    paired = [k for k in base_by_key if k in var_by_key]
    keys = [k for k in paired if not (_skipped(base_by_key[k]) or _skipped(var_by_key[k]))]
    unpaired = {"baseline_only": len(base_by_key) - len(paired), "variant_only": len(var_by_key) - len(paired),
                "skipped": len(paired) - len(keys)}
    results: dict[str, dict[str, Any]] = {}
    binary = [k for k in keys if isinstance(base_by_key[k].get("passed"), bool)
              and isinstance(var_by_key[k].get("passed"), bool)]
    if binary:
        results["passed"] = {**pass_fail(
            [base_by_key[k]["passed"] for k in binary], [var_by_key[k]["passed"] for k in binary],
            [_problem(base_by_key[k]) for k in binary], options), "unpaired": unpaired}
        by_category = flips_by_category([base_by_key[k] for k in binary], [var_by_key[k] for k in binary])
        if by_category:
            results["passed"]["flips_by_category"] = by_category
    for field in options.fields:
        numeric = [k for k in keys if _is_number(base_by_key[k].get(field)) and _is_number(var_by_key[k].get(field))]
        if numeric:
            results[field] = {**continuous(
                [float(base_by_key[k][field]) for k in numeric], [float(var_by_key[k][field]) for k in numeric],
                [_problem(base_by_key[k]) for k in numeric], field, options), "unpaired": unpaired}
    return results


def flips_by_category(baseline: list[dict[str, Any]], variant: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """How flipped items fail, from the records' ``category``: right->wrong items by the variant's error
    category, wrong->right items by the error category the baseline had. Empty when records carry none."""
    out: dict[str, dict[str, int]] = {"right_to_wrong": {}, "wrong_to_right": {}}
    for b, v in zip(baseline, variant):
        if b["passed"] == v["passed"]:
            continue
        direction, failed = ("right_to_wrong", v) if b["passed"] else ("wrong_to_right", b)
        category = str(failed.get("category") or "")
        if category:
            out[direction][category] = out[direction].get(category, 0) + 1
    return out if any(out.values()) else {}


def pass_fail(baseline: list[bool], variant: list[bool], problems: list[Any],
              options: SignificanceOptions) -> dict[str, Any]:
    """Pass@1 of both sides with CIs, the paired difference (bootstrap CI over problems), test, flips, pass@k."""
    confidence = 1 - options.alpha
    right_to_wrong, wrong_to_right = stats.flip_counts(baseline, variant)
    per_problem: dict[Any, list[int]] = {}  # problem -> [samples, baseline passes, variant passes]
    for b, v, p in zip(baseline, variant, problems):
        row = per_problem.setdefault(p, [0, 0, 0])
        row[0] += 1
        row[1] += int(b)
        row[2] += int(v)
    rows = list(per_problem.values())
    n_items, n_problems = len(baseline), len(rows)
    sizes = sorted({r[0] for r in rows})
    base_p1 = [r[1] / r[0] for r in rows]
    var_p1 = [r[2] / r[0] for r in rows]
    boot = stats.paired_bootstrap(base_p1, var_p1, resamples=options.resamples, seed=options.seed,
                                  confidence=confidence)
    out: dict[str, Any] = {
        "kind": "pass/fail", "metric": "pass@1", "higher_is_better": True,
        "n_items": n_items, "n_problems": n_problems,
        "samples_per_problem": sizes[0] if len(sizes) == 1 else [sizes[0], sizes[-1]],
        "delta": boot.delta, "delta_ci": list(boot.delta_ci),
        "flips": {"right_to_wrong": right_to_wrong, "wrong_to_right": wrong_to_right},
    }
    if sizes == [1]:
        b_pass, v_pass = sum(baseline), sum(variant)
        out["baseline"] = {"score": boot.baseline, "ci": list(stats.wilson_interval(b_pass, n_items, confidence)),
                           "ci_method": "wilson"}
        out["variant"] = {"score": boot.variant, "ci": list(stats.wilson_interval(v_pass, n_items, confidence)),
                          "ci_method": "wilson"}
        out["test"] = "mcnemar-exact"
        out["p_value"] = stats.mcnemar_exact(right_to_wrong, wrong_to_right)
        out["mde"] = stats.mcnemar_mde(n_items, (right_to_wrong + wrong_to_right) / n_items,
                                       options.alpha, options.power)
    else:
        out["baseline"] = _clustered_score(baseline, problems, boot.baseline, options.alpha)
        out["variant"] = _clustered_score(variant, problems, boot.variant, options.alpha)
        diffs = [float(v) - float(b) for b, v in zip(baseline, variant)]
        test = stats.clustered_mean_test(diffs, problems, options.alpha, options.power)
        out["test"] = "paired t, SE clustered by problem"
        out["delta_se"] = test.se
        out["p_value"] = None if math.isnan(test.p_value) else test.p_value
        # no variation in the differences at all: fall back to the exact test's MDE with no discordance
        out["mde"] = test.mde if not math.isnan(test.mde) and test.se > 0 else \
            stats.mcnemar_mde(n_items, 0.0, options.alpha, options.power)
        out["pass_at_k"] = _pass_at_k(rows, sizes[0], options)
    return out


def _clustered_score(outcomes: list[bool], problems: list[Any], score: float, alpha: float) -> dict[str, Any]:
    from scipy import stats as sps

    se = stats.clustered_se([float(x) for x in outcomes], problems)
    groups = len(set(problems))
    if math.isnan(se) or groups < 2:
        return {"score": score, "ci": None, "se": None}
    half = float(sps.t.ppf(1 - alpha / 2, groups - 1)) * se
    return {"score": score, "ci": [max(0.0, score - half), min(1.0, score + half)], "se": se,
            "ci_method": "t, SE clustered by problem"}


def _pass_at_k(rows: list[list[int]], min_samples: int, options: SignificanceOptions) -> dict[str, Any]:
    """Unbiased pass@k (k > 1 where every problem has at least k samples), paired bootstrap over problems."""
    out: dict[str, Any] = {}
    for k in PASS_AT_K[1:]:
        if k > min_samples:
            break
        base = [stats.pass_at_k(n, c, k) for n, c, _ in rows]
        var = [stats.pass_at_k(n, c, k) for n, _, c in rows]
        boot = stats.paired_bootstrap(base, var, resamples=options.resamples, seed=options.seed,
                                      confidence=1 - options.alpha)
        out[f"pass@{k}"] = {"baseline": boot.baseline, "baseline_ci": list(boot.baseline_ci),
                            "variant": boot.variant, "variant_ci": list(boot.variant_ci),
                            "delta": boot.delta, "delta_ci": list(boot.delta_ci)}
    return out


def continuous(baseline: list[float], variant: list[float], problems: list[Any], field: str,
               options: SignificanceOptions) -> dict[str, Any]:
    """Means with bootstrap CIs (resampling problems), the paired difference, Wilcoxon signed-rank, MDE."""
    sums: dict[Any, list[float]] = {}  # problem -> [count, baseline sum, variant sum]
    for b, v, p in zip(baseline, variant, problems):
        row = sums.setdefault(p, [0.0, 0.0, 0.0])
        row[0] += 1
        row[1] += b
        row[2] += v
    rows = list(sums.values())
    boot = stats.paired_bootstrap([r[1] for r in rows], [r[2] for r in rows], [r[0] for r in rows],
                                  resamples=options.resamples, seed=options.seed, confidence=1 - options.alpha)
    test = stats.wilcoxon_signed_rank(baseline, variant)
    diffs = [v - b for b, v in zip(baseline, variant)]
    # the signed-rank test's smallest two-sided p-value is 2 / 2^n: below that no difference is detectable
    detectable = 2.0 / 2 ** len(diffs) < options.alpha
    return {
        "kind": "continuous", "metric": field, "higher_is_better": field in options.higher_is_better,
        "n_items": len(baseline), "n_problems": len(rows),
        "baseline": {"score": boot.baseline, "ci": list(boot.baseline_ci), "ci_method": "bootstrap"},
        "variant": {"score": boot.variant, "ci": list(boot.variant_ci), "ci_method": "bootstrap"},
        "delta": boot.delta, "delta_ci": list(boot.delta_ci),
        "test": f"wilcoxon signed-rank ({test.method})", "statistic": test.statistic, "p_value": test.p_value,
        "p_floor": 2.0 / 2 ** test.n if test.n else None,
        "mde": stats.paired_mean_mde(diffs, options.alpha, options.power) if detectable else None,
    }


def apply_holm(comparisons: list[tuple[str, dict[str, Any]]], correction: str) -> None:
    """Set ``p_adjusted`` on every result: Holm over the experiment, per metric family, or unadjusted."""
    if correction == "none":
        for _, r in comparisons:
            r["p_adjusted"] = r.get("p_value")
        return
    families: dict[str, list[dict[str, Any]]] = {}
    for family, r in comparisons:
        families.setdefault(family if correction == "metric" else "all", []).append(r)
    for members in families.values():
        for r, adjusted in zip(members, stats.holm([m.get("p_value") for m in members])):
            r["p_adjusted"] = adjusted


def verdict(result: dict[str, Any], alpha: float) -> str:
    """"worse", "better", or "no significant difference (MDE ...)" from the adjusted p-value and the delta."""
    p = result.get("p_adjusted")
    delta = result.get("delta", 0.0)
    if p is not None and p < alpha and delta != 0:
        improved = (delta > 0) == bool(result.get("higher_is_better", True))
        return "better" if improved else "worse"
    mde = result.get("mde")
    if mde is None:
        return f"no significant difference (too few items, n={result.get('n_items')}, to detect any)"
    floor, raw = result.get("p_floor"), result.get("p_value")
    if floor is not None and raw is not None and p is not None and raw <= floor * (1 + 1e-9):
        return (f"no significant difference (all {result.get('n_items')} items moved one way, p {raw:.2g}, the "
                f"smallest this test gives, which is {p:.2g} after the correction for multiple comparisons: "
                "more items are needed)")
    shown = f"{100 * mde:.1f} pp" if result.get("kind") == "pass/fail" else f"{mde:.3g}"
    if raw is not None and p is not None and raw < alpha <= p and abs(delta) >= mde:
        # the MDE is at the uncorrected alpha: beside a larger difference Holm did not keep, it would mislead
        return (f"no significant difference after the correction for multiple comparisons (p {raw:.2g}, "
                f"{p:.2g} corrected; the MDE {shown} is at the uncorrected level)")
    return f"no significant difference (MDE {shown})"


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (strict JSON has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _problem(record: dict[str, Any]) -> Any:
    """What samples are clustered by: the task (per language where records carry one), else the item itself."""
    task = record.get("task_id", record.get("key"))
    return f"{record['language']}/{task}" if record.get("language") else task


def _skipped(record: dict[str, Any]) -> bool:
    """Items that were not graded (e.g. teeny-bench's ``skipped_toolchain``): not outcomes of the model."""
    return str(record.get("category") or "").startswith("skipped") or record.get("skipped") is True


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
