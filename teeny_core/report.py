"""The experiment report: ``report.md``, a self-contained ``report.html`` and ``plots/*.png``, from the ``results``
dict the pipeline writes to ``runs/<experiment>/results.json`` (read by :mod:`teeny_core.results`).

The core renders the sections every run has (results, failures, plots, metrics, error categories, manifest);
plugins add their own through the ``teeny_report_sections`` hook (:class:`ReportSection`, placed by ``order``
among the core's :data:`CORE_ORDER`). A plugin whose renderer raises gets one line saying so in its place.
matplotlib is imported only when plotting; without it the report is written without plots and says so.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import os
import re
from pathlib import Path
from typing import Any

from teeny_core.results import (CAUTION_MARK, PASS_FAIL, SOURCE_MATCH_MARK, alpha_of, as_dict, bits_of,
                                category_counts, cautions_of, comparison, energy_of, failed, format_delta, format_flips,
                                memory_of, method_of, positive_bytes, primary_metric, runtime_of, score_of,
                                source_match_reason, variants_of, weight_bytes)
from teeny_core.units import format_bytes, format_ci, format_number, format_rate, format_seconds

# where the core's sections stand; a plugin's ReportSection.order places it among them
CORE_ORDER = {"Results": 10, "Failed variants": 20, "Plots": 30, "Mixed precision": 40, "Evaluator metrics": 50,
              "Errors by category": 60, "Manifest": 90}


@dataclasses.dataclass
class Block:
    """One piece of the report: a heading (``h1``-``h3``), a paragraph (``p``, with **bold** and `code`), a
    ``table`` (``headers`` and ``rows`` of strings), an image (``img``, a PNG at ``path``) or ``pre`` text."""

    kind: str
    text: str = ""
    headers: list[str] = dataclasses.field(default_factory=list)
    rows: list[list[str]] = dataclasses.field(default_factory=list)
    path: Path | None = None


@dataclasses.dataclass
class ReportSection:
    """What a plugin adds to the report: an ``h2`` ``title`` (none when empty) with its ``blocks``, placed by
    ``order`` among the core sections (:data:`CORE_ORDER`), and an optional ``summary`` sentence appended to the
    report's opening paragraph."""

    title: str
    blocks: list[Block] = dataclasses.field(default_factory=list)
    order: int = 80
    summary: str = ""

def results_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The main table: one row per variant with score, delta vs the original, flips, size, memory, speed, energy."""
    primary = primary_metric(results)
    label = primary.label if primary else "score"
    delta_label = "delta vs original"
    if primary is not None and primary.analysis_metric and primary.analysis_metric != PASS_FAIL:
        delta_label = f"delta mean {primary.analysis_metric} vs original"
    alpha = alpha_of(results)
    headers = ["variant", "method", "bits", f"{label} [{100 * (1 - alpha):g}% CI]", f"{delta_label} [CI] (p Holm)",
               "verdict", "flips (-/+)", "artifact", "peak memory", "tokens/s", "energy", "J/token",
               "weights in memory", "TTFT", "throughput (batch)", "runtime"]
    rows = []
    for v in variants_of(results):
        s, ci = score_of(results, v, primary)
        r = comparison(results, v["name"], primary)
        if failed(v):
            rows.append([v["name"], method_of(v), bits_of(v), "-", "-", "FAILED", "", "-", "-", "-", "-", "-", "-", "-",
                         "-", runtime_of(v)])
            continue
        if v["name"] == results.get("baseline"):
            delta, verdict, flips = "(baseline)", "", ""
        elif r:
            delta = f"{format_delta(r)} (p={format_number(r.get('p_adjusted'), 3)})"
            verdict = str(r.get("verdict", ""))
            flips = format_flips(r)
        else:
            delta, verdict, flips = "-", "not analyzed", ""
        size = format_bytes(v.get("artifact_bytes"))
        packed = positive_bytes(v.get("packed_bytes"))
        if packed and packed != v.get("artifact_bytes"):
            size += f" (packed {format_bytes(packed)})"
        mem, how = memory_of(v)
        bench = as_dict(as_dict(v.get("profile")).get("benchmark"))
        energy = energy_of(v)
        if s is None:
            score = "-"
        elif primary is not None and primary.analysis_metric == PASS_FAIL and 0 <= s <= 1:
            score = format_rate(s, ci)
        else:
            score = format_number(s) + format_ci(ci)
        name = " ".join([v["name"], *([SOURCE_MATCH_MARK] if source_match_reason(v) else []),
                         *([CAUTION_MARK] if cautions_of(v) else [])])
        rows.append([name, method_of(v), bits_of(v), score,
                     delta, verdict, flips, size, format_bytes(mem) if mem and "artifact" not in how else "-",
                     format_number(bench.get("decode_tokens_per_s"), 3),
                     f"{energy:.1f} J" if energy is not None else "-",
                     format_number(bench.get("joules_per_token"), 3), format_bytes(weight_bytes(v)),
                     format_seconds(bench.get("ttft_s")), _throughput(bench), runtime_of(v)])
    return headers, rows


def _throughput(bench: dict[str, Any]) -> str:
    """Generated tokens/s of a batch of prompts, with the batch size: ``41.2 (8)``."""
    tps = bench.get("throughput_tokens_per_s")
    return f"{format_number(tps, 3)} ({bench.get('throughput_batch')})" if isinstance(tps, (int, float)) else "-"


def source_match_note(results: dict[str, Any]) -> str | None:
    """The report's sentence about variants flagged by :func:`source_match_reason`, or None."""
    flagged = [f"{v['name']}: {reason}" for v in variants_of(results) if (reason := source_match_reason(v))]
    if not flagged:
        return None
    return (f"Variants marked {SOURCE_MATCH_MARK} repeat the quantization the original was dequantized from, "
            "so their KL, top-1 agreement and perplexity measure little more than an identity; do not read "
            "them as a comparison of methods. " + "; ".join(flagged) + ".")


def cautions_note(results: dict[str, Any]) -> str | None:
    """The report's sentence listing the quantizers' cautions (:func:`cautions_of`), or None."""
    flagged = [f"{v['name']}: {c}" for v in variants_of(results) for c in cautions_of(v)]
    if not flagged:
        return None
    return (f"Variants marked {CAUTION_MARK} were made with a setup their quantizer warned weakens them, so a "
            "comparison of methods may be unfair to them: " + "; ".join(flagged) + ".")


def _pareto_front(points: list[tuple[float, float, str]], higher_is_better: bool) -> list[tuple[float, float, str]]:
    """Points not dominated by another (less or equal memory and a better or equal score, one strictly)."""
    sign = 1 if higher_is_better else -1
    front = [p for p in points if not any(
        q[0] <= p[0] and sign * q[1] >= sign * p[1] and (q[0] < p[0] or sign * q[1] > sign * p[1]) for q in points)]
    return sorted(front)


def _plots(run_dir: Path, results: dict[str, Any]) -> tuple[dict[str, Path], str | None]:
    """Write plots/*.png; returns (name -> path, why plots are missing). Plots of an earlier report go first."""
    plots_dir = run_dir / "plots"
    for stale in [*plots_dir.glob("pareto.png"), *plots_dir.glob("errors-*.png"),
                  *plots_dir.glob("bits-per-module.png")]:
        stale.unlink()
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return {}, "Plots skipped: matplotlib is not installed (pip install matplotlib)."
    plots_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    primary = primary_metric(results)
    points, errors, mixed = [], [], []
    for v in variants_of(results):
        s, ci = score_of(results, v, primary)
        size = positive_bytes(v.get("packed_bytes")) or positive_bytes(v.get("artifact_bytes")) or memory_of(v)[0]
        if s is not None and size:
            points.append((float(size), s, v["name"]))
            errors.append((max(0.0, s - ci[0]), max(0.0, ci[1] - s)) if ci else (0.0, 0.0))
            if v.get("module_bits"):
                mixed.append((float(size), s))
    if primary is not None and points:
        scale, unit = (2**30, "GiB") if max(p[0] for p in points) >= 2**31 else (2**20, "MiB")
        fig = Figure(figsize=(7, 4.5), dpi=110)
        ax = fig.add_subplot()
        ax.errorbar([p[0] / scale for p in points], [p[1] for p in points],
                    yerr=[[e[0] for e in errors], [e[1] for e in errors]], fmt="o", color="#777", ecolor="#bbb",
                    capsize=3, zorder=2, label=f"variant ({100 * (1 - alpha_of(results)):g}% CI)")
        if mixed:  # mixed-precision variants stand out among the uniform ones
            ax.plot([m[0] / scale for m in mixed], [m[1] for m in mixed], "^", color="#1f77b4", markersize=9,
                    zorder=4, label="mixed precision (target_bits)")
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
    cats = category_counts(results, run_dir)
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
    planned = [v for v in variants_of(results) if isinstance(v.get("module_bits"), dict) and v["module_bits"]]
    if planned:
        out["bits-per-module"] = _bits_per_module_plot(planned, plots_dir / "bits-per-module.png")
    return out, None


def _bits_per_module_plot(planned: list[dict[str, Any]], path: Path) -> Path:
    """One panel per mixed-precision variant: decoder layer x module kind, coloured by the module's bits."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5 * len(planned), 5), dpi=110)
    for i, v in enumerate(planned):
        layers: dict[str, int] = {}
        kinds: list[str] = []
        cells = {}
        for name, bits in v["module_bits"].items():
            head, _, kind = re.sub(r"\.(\d+)\.", r".\1|", name, count=1).partition("|")
            layers.setdefault(head, len(layers))
            if kind not in kinds:
                kinds.append(kind)
            cells[(layers[head], kind)] = float(bits)
        grid = [[cells.get((row, k), float("nan")) for k in kinds] for row in range(len(layers))]
        ax = fig.add_subplot(1, len(planned), i + 1)
        image = ax.imshow(grid, aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(kinds)), [k.rsplit(".", 1)[-1] for k in kinds], rotation=60, fontsize=7)
        ax.set_ylabel("decoder layer")
        ax.set_title(f"{v['name']}: {format_number(v.get('achieved_bits'), 3)} bits/weight", fontsize=9)
        fig.colorbar(image, ax=ax, label="bits per weight")
    fig.tight_layout()
    fig.savefig(path)
    return path


def mixed_precision_table(results: dict[str, Any]) -> Block | None:
    """Each variant's stored bits per weight; for mixed-precision ones the planned linears' average and how many
    modules got each bit-width. None when no variant was planned."""
    variants = [v for v in variants_of(results) if not failed(v)]
    if not any(v.get("module_bits") for v in variants):
        return None
    rows = []
    for v in variants:
        plan = v.get("module_bits") if isinstance(v.get("module_bits"), dict) else {}
        counts: dict[float, int] = {}
        for bits in plan.values():
            counts[float(bits)] = counts.get(float(bits), 0) + 1
        rows.append([v["name"], method_of(v), format_number(v.get("bits_per_weight"), 3),
                     format_number(v.get("achieved_bits"), 3) if plan else "uniform",
                     ", ".join(f"{format_number(b, 3)}: {n}" for b, n in sorted(counts.items())) or "-"])
    return Block("table", headers=["variant", "method", "bits/weight (stored, whole model)",
                                   "bits/weight (planned linears)", "modules per bit-width"], rows=rows)


def report_tables(run_dir: Path, results: dict[str, Any], plugins: Any = None
                  ) -> list[tuple[str, list[str], list[list[str]]]]:
    """The report's tables, plugins' sections included (``plugins``: the loaded
    :class:`~teeny_core.plugins.Plugins`), as (name, headers, rows); a name is its headings joined, e.g.
    ``paired-comparisons-with-the-baseline-gptq-w4``. No plot is drawn."""
    tables, used = [], set()
    section, subsection = "", ""
    for block in _blocks(run_dir, results, plots=False, plugins=plugins)[0]:
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


def _blocks(run_dir: Path, results: dict[str, Any], plots: bool = True, plugins: Any = None
            ) -> tuple[list[Block], dict[str, Path]]:
    sections = _plugin_sections(run_dir, results, plots, plugins)
    blocks = [Block("h1", f"Teeny report: {results.get('experiment', run_dir.name)}")]
    baseline = results.get("baseline", "original")
    intro = f"Every variant is compared item by item with the baseline **{baseline}**."
    intro += "".join(f" {s.summary}" for s in sections if s.summary)
    if results.get("config_hash"):
        intro += f" Config hash `{results['config_hash']}`."
    blocks.append(Block("p", intro))
    core: list[tuple[int, list[Block]]] = [(order, []) for order in CORE_ORDER.values()]
    core_blocks = dict(zip(CORE_ORDER, (b for _, b in core)))
    drawn = _core_sections(run_dir, results, plots, core_blocks)
    placed = [*core, *((s.order, ([Block("h2", s.title)] if s.title else []) + s.blocks) for s in sections)]
    for _, section in sorted(placed, key=lambda p: p[0]):  # stable: core first among equals, plugins in hook order
        blocks += section
    return blocks, drawn


def _plugin_sections(run_dir: Path, results: dict[str, Any], plots: bool, plugins: Any) -> list[ReportSection]:
    """Every plugin's ``teeny_report_sections``, each called on its own: one that raises or returns something
    else than ReportSections gets a section saying so in one line, and the report goes on."""
    if plugins is None:
        return []
    out: list[ReportSection] = []
    for impl in plugins.pm.hook.teeny_report_sections.get_hookimpls():
        try:
            args = {"results": results, "run_dir": run_dir, "plots": plots}
            found = impl.function(**{name: args[name] for name in impl.argnames})  # as pluggy: only those named
            if found is None:
                found = []
            if not isinstance(found, list) or not all(isinstance(s, ReportSection) for s in found):
                raise TypeError(f"teeny_report_sections returned {type(found).__name__}, not a list of "
                                "ReportSection")
        except Exception as exc:  # a broken renderer never costs the user the rest of the report
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            found = [ReportSection(f"Plugin {impl.plugin_name}", [Block(
                "p", f"The {impl.plugin_name} plugin's report section failed: {reason}")])]
        out += found
    return out


def _core_sections(run_dir: Path, results: dict[str, Any], plots: bool, into: dict[str, list[Block]]
                   ) -> dict[str, Path]:
    """Fill each core section's blocks (``into[title]``; empty when a section has nothing); returns the plots."""
    headers, rows = results_table(results)
    into["Results"] += [Block("h2", "Results"), Block("table", headers=headers, rows=rows)]
    for note in (source_match_note(results), cautions_note(results)):
        if note:
            into["Results"].append(Block("p", note))
    memory_note = {memory_of(v)[1] for v in variants_of(results)
                   if memory_of(v)[0] and "artifact" not in memory_of(v)[1]}
    if memory_note:
        into["Results"].append(Block("p", "Peak memory is the " + " / ".join(sorted(memory_note)) + ". Memory, "
                                     "weights in memory, tokens/s (decode at batch 1), J/token (energy per generated "
                                     "token at batch 1, where NVML or RAPL is readable), TTFT and throughput are those "
                                     "of the runtime named in each row, each variant measured in a worker process of "
                                     "its own."))
    failures = [v for v in variants_of(results) if failed(v)]
    if failures:
        into["Failed variants"] += [
            Block("h2", "Failed variants"),
            Block("p", "These variants did not finish; `teeny run` again resumes them. An exception's "
                       "traceback is in `<variant>/error.log`."),
            Block("table", headers=["variant", "stage", "error"], rows=[
                [v["name"], str(v.get("failed_stage") or "-"), str(v.get("error") or "-")] for v in failures])]
    drawn, missing = _plots(run_dir, results) if plots else ({}, None)
    module_plot = drawn.pop("bits-per-module", None)
    into["Plots"].append(Block("h2", "Plots"))
    if missing:
        into["Plots"].append(Block("p", missing))
    for name, path in drawn.items():
        into["Plots"].append(Block("img", name, path=path))
    mixed = mixed_precision_table(results)
    if mixed is not None:
        into["Mixed precision"] += [
            Block("h2", "Mixed precision"),
            Block("p", "Variants with `target_bits` choose each linear's bits from a sensitivity table under the "
                       "average-bits budget; the Pareto plot marks them beside the uniform variants, and "
                       "bits-per-module shows each plan (decoder layer by module)."), mixed]
        if module_plot is not None:
            into["Mixed precision"].append(Block("img", "bits-per-module", path=module_plot))
            drawn["bits-per-module"] = module_plot
    metric_rows, metric_headers = _metric_table(results)
    if metric_rows:
        into["Evaluator metrics"] += [Block("h2", "Evaluator metrics"),
                                      Block("table", headers=metric_headers, rows=metric_rows)]
    cats = category_counts(results, run_dir)
    if cats:
        into["Errors by category"].append(Block("h2", "Errors by category"))
        for ev, per_variant in cats.items():
            into["Errors by category"] += [Block("h3", ev), count_table(per_variant)]
    into["Manifest"] += _manifest(as_dict(results.get("manifest")))
    return drawn


def count_table(per_variant: dict[str, dict[str, int]]) -> Block:
    """A table of counts: one row per variant, one column per category (sorted), 0 where a variant has none."""
    categories = sorted({c for counts in per_variant.values() for c in counts})
    return Block("table", headers=["variant"] + categories, rows=[
        [name] + [str(counts.get(c, 0)) for c in categories] for name, counts in per_variant.items()])


def _manifest(manifest: dict[str, Any]) -> list[Block]:
    blocks = [Block("h2", "Manifest")]
    if not manifest:
        return blocks + [Block("p", "No manifest in these results.")]
    facts = [[k, format_number(manifest[k]) if not isinstance(manifest[k], str) else manifest[k]]
             for k in ("experiment", "config_hash", "seed", "started_at", "updated_at") if k in manifest]
    if facts:
        blocks.append(Block("table", headers=["", ""], rows=facts))
    for section in ("versions", "hardware"):
        if isinstance(manifest.get(section), dict):
            blocks += [Block("h3", section), Block("table", headers=["", ""], rows=[
                [k, json.dumps(val) if isinstance(val, (list, dict)) else str(val)]
                for k, val in manifest[section].items()])]
    blocks.append(Block("pre", json.dumps(manifest, indent=2, sort_keys=True, default=str)))
    return blocks


def _metric_table(results: dict[str, Any]) -> tuple[list[list[str]], list[str]]:
    columns: list[tuple[str, str]] = []
    for v in variants_of(results):
        for ev, metrics in as_dict(v.get("metrics")).items():
            for key, val in as_dict(metrics).items():
                if isinstance(val, (int, float)) and not isinstance(val, bool) and (ev, key) not in columns:
                    columns.append((ev, key))
    rows = [[v["name"]] + [format_number(as_dict(as_dict(v.get("metrics")).get(ev)).get(key)) for ev, key in columns]
            for v in variants_of(results)]
    return (rows if columns else []), ["variant"] + [f"{ev}: {key}" for ev, key in columns]


def _text(value: Any) -> str:
    """A table cell's text: None as "-", anything else as its string."""
    return "-" if value is None else str(value)


def _md_cell(value: Any) -> str:
    return _text(value).replace("|", "\\|").replace("\n", " ")


def _to_markdown(blocks: list[Block], run_dir: Path) -> str:
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


def _to_html(blocks: list[Block], title: str) -> str:
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


def write_report(run_dir: Path, results: dict[str, Any], plugins: Any = None) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` (self-contained) and ``plots/*.png`` into ``run_dir``, with the
    sections of ``plugins`` (the loaded :class:`~teeny_core.plugins.Plugins`; None: the core's sections only).

    Returns ``{"md": path, "html": path, <plot name>: path, ...}``.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    blocks, plots = _blocks(run_dir, results, plugins=plugins)
    title = f"Teeny report: {results.get('experiment', run_dir.name)}"
    paths = {"md": run_dir / "report.md", "html": run_dir / "report.html"}
    _write_text(paths["md"], _to_markdown(blocks, run_dir))
    _write_text(paths["html"], _to_html(blocks, title))
    return {**paths, **plots}

