"""The combined report of a run of several models (:mod:`teeny_core.study`): ``report.md``, ``report.html`` and
``plots/degradation.png`` in the study's directory.

Degradation against size: per variant family (a variant of the experiment, run on every model), the paired
drop in pass@1 from that model's own original (the significance analysis of the model's run: bootstrap interval
over problems, McNemar, MDE) and the KL divergence from it, against the model's parameter count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from teeny_core.experiment import BASELINE
from teeny_core.report import Block, _to_html, _to_markdown, _write_text, results_table
from teeny_core.results import (PASS_FAIL, alpha_of, as_dict, comparison, failed, format_delta, memory_of,
                                primary_metric, variants_of)
from teeny_core.units import format_bytes, format_number, format_params, format_points

PLOT = "degradation.png"


def degradation_rows(index: dict[str, Any], per_model: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant family and model (families in experiment order, models by size): parameters, the
    paired pass@1 difference from the model's original with its interval, MDE and verdict, and the mean KL."""
    params = {m["name"]: m.get("parameters") for m in index["models"]}
    models = sorted(per_model, key=lambda m: params.get(m) or 0)
    families: list[str] = []
    for results in per_model.values():
        families += [v["name"] for v in variants_of(results) if v["name"] != BASELINE and v["name"] not in families]
    rows = []
    for family in families:
        for model in models:
            results = per_model[model]
            v = next((x for x in variants_of(results) if x["name"] == family), None)
            if v is None:
                continue
            primary = primary_metric(results)
            r = comparison(results, family, primary) if primary and primary.analysis_metric == PASS_FAIL else None
            r = r or {}
            fidelity = as_dict(as_dict(v.get("metrics")).get("fidelity"))
            rows.append({"family": family, "model": model, "parameters": params.get(model), "failed": failed(v),
                         "delta": r.get("delta"), "delta_ci": r.get("delta_ci"), "mde": r.get("mde"),
                         "verdict": r.get("verdict"), "n_problems": r.get("n_problems"), "r": r,
                         "kl": fidelity.get("kl_mean"), "kl_se": fidelity.get("kl_se"), "memory": memory_of(v)[0]})
    return rows


def plot_degradation(rows: list[dict[str, Any]], path: Path, confidence: float) -> Path | None:
    """Paired pass@1 drop (with its interval) and KL against parameters, one line per family; None without
    matplotlib or anything to draw."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    drawn = [r for r in rows if r["parameters"] and not r["failed"]]
    have_delta = any(r["delta"] is not None for r in drawn)
    have_kl = any(r["kl"] is not None for r in drawn)
    if not drawn or not (have_delta or have_kl):
        return None
    panels = [p for p, ok in (("delta", have_delta), ("kl", have_kl)) if ok]
    fig = Figure(figsize=(6 * len(panels), 4.5), dpi=110)
    families = list(dict.fromkeys(r["family"] for r in drawn))
    for i, panel in enumerate(panels, 1):
        ax = fig.add_subplot(1, len(panels), i)
        for family in families:
            pts = [r for r in drawn if r["family"] == family and r[panel if panel == "kl" else "delta"] is not None]
            xs = [r["parameters"] for r in pts]
            if panel == "delta":
                ys = [100 * r["delta"] for r in pts]
                err = [[max(0.0, y - 100 * (r["delta_ci"] or [r["delta"]] * 2)[0]) for y, r in zip(ys, pts)],
                       [max(0.0, 100 * (r["delta_ci"] or [r["delta"]] * 2)[1] - y) for y, r in zip(ys, pts)]]
                ax.errorbar(xs, ys, yerr=err, fmt="-o", capsize=3, label=family)
            else:
                ax.plot(xs, [r["kl"] for r in pts], "-o", label=family)
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if panel == "delta":
            ax.axhline(0, color="#888", lw=1)
            ax.set_ylabel(f"pass@1 minus the model's original (pp, {100 * confidence:g}% CI)")
            ax.set_title("paired pass@1 drop against size")
        else:
            kls = [r["kl"] for r in drawn if r["kl"] is not None]
            if min(kls) > 0 and max(kls) / min(kls) > 20:  # e.g. a 2-bit and an 8-bit family on one axis
                ax.set_yscale("log")
            ax.set_ylabel("mean KL divergence from the model's original")
            ax.set_title("KL against size")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def study_blocks(root: Path, index: dict[str, Any], per_model: dict[str, dict[str, Any]], plots: bool = True
                 ) -> tuple[list[Block], dict[str, Path]]:
    """The combined report's blocks, and the plots drawn."""
    models = index["models"]
    blocks = [Block("h1", f"Teeny report: {index.get('study', root.name)} ({len(models)} models)")]
    listed = ", ".join(f"**{m['name']}** ({format_params(m.get('parameters'))} parameters)" for m in models)
    blocks.append(Block("p", f"Models: {listed}. Every variant ran on every model, each compared item by item "
                             "with its own model's original (the same calibration text, fidelity text and problems). "
                             f"Config hash `{index.get('config_hash')}`; each model's own report is in "
                             f"`models/<model>/report.md`."))
    rows = degradation_rows(index, per_model)
    alpha = alpha_of(next(iter(per_model.values()), {}))
    blocks += [Block("h2", "Degradation against size"),
               Block("p", "Per variant family and model: the paired difference in pass@1 from that model's "
                          "original, from the significance analysis of the model's own run (bootstrap interval over "
                          "problems, the verdict after Holm within that run), the smallest drop the run could detect "
                          "(MDE), and the mean KL divergence from the original."),
               Block("table", headers=["family", "model", "parameters", "pass@1 minus original [CI]", "MDE",
                                       "verdict", "KL", "memory"],
                     rows=[[r["family"], r["model"], format_params(r["parameters"]),
                            "FAILED" if r["failed"] else (format_delta(r["r"]) if r["r"] else "-"),
                            f"{100 * r['mde']:.1f} pp" if isinstance(r["mde"], (int, float)) else "-",
                            str(r["verdict"] or ("" if r["failed"] else "not analyzed")),
                            format_number(r["kl"], 3), format_bytes(r["memory"])] for r in rows])]
    drawn: dict[str, Path] = {}
    if plots:
        (root / "plots" / PLOT).unlink(missing_ok=True)
        found = plot_degradation(rows, root / "plots" / PLOT, 1 - alpha)
        if found:
            drawn["degradation"] = found
            blocks.append(Block("img", "degradation", path=found))
    blocks += _reference_blocks(index)
    for m in sorted(models, key=lambda m: m.get("parameters") or 0):
        results = per_model[m["name"]]
        headers, table = results_table(results)
        blocks += [Block("h2", f"Model {m['name']}"),
                   Block("p", f"`{m.get('path')}`, {format_params(m.get('parameters'))} parameters; run "
                              f"`{m.get('run')}`."),
                   Block("table", headers=headers, rows=table)]
    return blocks, drawn


def _reference_blocks(index: dict[str, Any]) -> list[Block]:
    """Every model and variant against the reference (the largest model's original), as `teeny recommend` reads."""
    combined = as_dict(index.get("combined"))
    primary = primary_metric(combined)
    if primary is None or primary.analysis_metric != PASS_FAIL or not combined.get("analysis"):
        return []
    rows = []
    for v in variants_of(combined):
        if v["name"] == combined.get("baseline") or failed(v):
            continue
        r = comparison(combined, v["name"], primary) or {}
        rows.append([v["name"], format_params(v.get("parameters")), format_delta(r) if r else "-",
                     str(r.get("verdict", "not analyzed")), format_bytes(memory_of(v)[0])])
    return [Block("h2", "Against the largest model's original"),
            Block("p", f"Each model and variant paired item by item with **{combined.get('baseline')}** on the same "
                       "problems (Holm over these comparisons): what `teeny recommend RUN --memory M --within N` "
                       "reads; it picks the smallest model, then variant, whose interval's lower end stays within "
                       "N points."),
            Block("table", headers=["model/variant", "parameters", "pass@1 minus reference [CI]", "verdict",
                                    "memory"], rows=rows)]


def write_study_report(root: Path, index: dict[str, Any], per_model: dict[str, dict[str, Any]]) -> dict[str, Path]:
    """Write the study's ``report.md``, ``report.html`` and ``plots/degradation.png``; returns their paths."""
    root = Path(root)
    blocks, drawn = study_blocks(root, index, per_model)
    paths = {"md": root / "report.md", "html": root / "report.html"}
    _write_text(paths["md"], _to_markdown(blocks, root))
    _write_text(paths["html"], _to_html(blocks, blocks[0].text))
    return {**paths, **drawn}


def format_drop(row: dict[str, Any]) -> str:
    """A row's paired pass@1 difference with its interval, in points."""
    return format_points(row["delta"], row["delta_ci"]) if row["delta"] is not None else "-"
