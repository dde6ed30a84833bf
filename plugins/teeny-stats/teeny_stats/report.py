"""teeny-stats' part of the run's report: the significance settings, the paired comparisons of every variant
with the baseline, and the error categories of the items each variant lost. Also the table ``teeny compare``
prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from teeny_core import Block, ReportSection
from teeny_core.report import count_table
from teeny_core.results import as_dict, format_delta, format_flips, side_of, significance_of, variants_of
from teeny_core.units import format_ci, format_number, format_points, format_rate

ANALYSIS_HEADERS = ["evaluator", "metric", "n", "baseline [CI]", "variant [CI]", "delta [CI]", "test", "p",
                    "p (Holm)", "flips (-/+)", "verdict"]
PAIRED_ORDER = 40  # after the core's plots
LOST_ORDER = 70  # after the core's errors by category


def report_sections(results: dict[str, Any], run_dir: Path) -> list[ReportSection]:
    """The settings sentence and the sections of the significance analysis in ``results``."""
    sig = significance_of(results)
    settings = as_dict(sig.get("_experiment"))
    if settings:
        power = settings.get("power")
        mde = format_number(100 * power, 3) if isinstance(power, (int, float)) else "?"
        summary = (f"Significance: alpha {settings.get('alpha')}, {settings.get('correction')} over "
                   f"{settings.get('comparisons')} comparisons; bootstrap {settings.get('resamples')} resamples "
                   f"(seed {settings.get('seed')}); MDE at {mde}% power.")
    else:
        summary = ("No significance analysis in these results (install teeny-stats and add the `significance` "
                   "analyzer).")
    sections = [ReportSection("", summary=summary)]
    details = [(v["name"], sig[v["name"]]) for v in variants_of(results) if isinstance(sig.get(v["name"]), dict)]
    if details:
        blocks = []
        for name, findings in details:
            blocks += [Block("h3", name), Block("table", headers=ANALYSIS_HEADERS, rows=analysis_rows(findings))]
        sections.append(ReportSection("Paired comparisons with the baseline", blocks, order=PAIRED_ORDER))
    lost = lost_by_category(results)
    if lost:
        blocks = [Block("p", "Items the original passed and the variant failed (right->wrong flips), by the "
                             "variant's error category.")]
        for ev, per_variant in lost.items():
            blocks += [Block("h3", ev), count_table(per_variant)]
        sections.append(ReportSection("How the items a variant lost now fail", blocks, order=LOST_ORDER))
    return sections


def lost_by_category(results: dict[str, Any]) -> dict[str, dict[str, dict[str, int]]]:
    """evaluator -> variant -> category -> right->wrong flips, from the significance analysis."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for v in variants_of(results):
        for ev, metrics in as_dict(significance_of(results).get(v["name"])).items():
            by_cat = as_dict(as_dict(as_dict(metrics).get("passed")).get("flips_by_category")).get("right_to_wrong")
            counts = {str(c): int(n) for c, n in as_dict(by_cat).items()
                      if isinstance(n, (int, float)) and not isinstance(n, bool)}
            if counts:
                out.setdefault(str(ev), {})[v["name"]] = counts
    return out


def _score_cell(r: dict[str, Any], side: str) -> str:
    score, ci = side_of(r, side)
    if r.get("kind") == "pass/fail":
        return format_rate(score, ci)
    return format_number(score) + format_ci(ci)


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
                _score_cell(r, "baseline"), _score_cell(r, "variant"), format_delta(r), str(r.get("test", "")),
                format_number(r.get("p_value"), 3), format_number(r.get("p_adjusted"), 3), format_flips(r),
                str(r.get("verdict", "")),
            ])
            pass_at_k = r.get("pass_at_k") if isinstance(r.get("pass_at_k"), dict) else {}
            for k, pk in pass_at_k.items():
                if not isinstance(pk, dict):
                    continue
                delta = pk.get("delta")
                rows.append([evaluator, k, str(r.get("n_problems", "")),
                             format_rate(pk.get("baseline"), pk.get("baseline_ci")),
                             format_rate(pk.get("variant"), pk.get("variant_ci")),
                             format_points(delta, pk.get("delta_ci")) if isinstance(delta, (int, float)) else "-",
                             "paired bootstrap over problems", "-", "-", "", ""])
    return rows
