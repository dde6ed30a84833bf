"""``teeny_core.report``: the md/html/png report and ``recommend``, from a results dict analyzed by teeny-stats."""

import random
import re
import struct
import sys
import zlib

import pytest

from teeny_core import TeenyError, VariantResult
from teeny_core.recommend import recommend
import teeny_stats.plugin
from teeny_core.plugins import Plugins
from teeny_core.report import write_report as core_write_report
from teeny_core.results import primary_metric
from teeny_core.testing import flipped
from teeny_core.units import parse_size
from teeny_stats.analyzer import SignificanceAnalyzer, SignificanceOptions

GiB = 2**30


def write_report(run_dir, results):
    """The report with teeny-stats' sections, as `teeny run` and `teeny report` write it."""
    plugins = Plugins()
    plugins.pm.register(teeny_stats.plugin, name="stats")
    return core_write_report(run_dir, results, plugins)


def records(outcomes):
    return [{"key": f"HumanEval/{i}#0", "task_id": f"HumanEval/{i}", "sample": 0, "passed": p,
             "category": "passed" if p else ("syntax_error" if i % 5 == 0 else "wrong_answer")}
            for i, p in enumerate(outcomes)]


# name, method, bits, (right->wrong, wrong->right), artifact bytes, peak load RSS, tokens/s, energy
SPECS = [("original", "none", None, (0, 0), 28 * GiB, 30 * GiB, 5.0, 900.0),
         ("int8", "rtn", 8, (1, 1), 14 * GiB, 15 * GiB, 8.0, 500.0),
         ("q4", "gptq", 4, (3, 1), 8 * GiB, 9 * GiB, 12.0, None),
         ("q3", "gptq", 3, (12, 1), 6 * GiB, 7 * GiB, 14.0, None),
         ("q2", "rtn", 2, (40, 2), 4 * GiB, 5 * GiB, 15.0, None)]


def build_results(with_analysis=True, with_profile=True):
    rng = random.Random(11)
    base = [rng.random() < 0.65 for _ in range(164)]
    vrs, entries = [], []
    for name, method, bits, (rw, wr), size, rss, tps, energy in SPECS:
        outcomes = flipped(base, rw, wr)
        fails = sum(1 for p in outcomes if not p)
        metrics = {"humaneval": {"pass@1": sum(outcomes) / len(outcomes), "passed": sum(outcomes),
                                 "categories": {"assertion": fails - fails // 4, "syntax": fails // 4}},
                   "fidelity": {"perplexity": 10 + (16 - (bits or 16)), "perplexity_se": 0.2}}
        profile = {"load": {"peak_rss_bytes": rss, "seconds": 3.0, "energy_joules": energy},
                   "benchmark": {"decode_tokens_per_s": tps, "ttft_s": 0.2}, "peak_rss_bytes": rss + GiB} \
            if with_profile else {}
        describe = {"bits": bits} if bits else {"dtype": "bfloat16"}
        vrs.append(VariantResult(name, method, describe, {"humaneval": records(outcomes)}, metrics, profile, size))
        entries.append({"name": name, "method": method, "describe": describe, "artifact_bytes": size,
                        "metrics": metrics, "profile": profile})
    analysis = {}
    if with_analysis:
        options = SignificanceOptions.from_mapping({"resamples": 1000, "fields": []})
        analysis["significance"] = SignificanceAnalyzer().analyze(vrs[0], vrs[1:], options)
    manifest = {"experiment": "demo", "config_hash": "abc123", "seed": 0,
                "versions": {"python": "3.11.9", "torch": "2.13.0", "teeny-core": "0.1.0"},
                "hardware": {"cpu": "Test CPU", "cores": 2, "ram_bytes": 24 * GiB, "gpus": []}}
    return {"experiment": "demo", "config_hash": "abc123", "baseline": "original", "variants": entries,
            "analysis": analysis, "manifest": manifest, "evaluators": DECLARED}


# what the evaluators declare about their metrics, as results.json stores it
DECLARED = {
    "humaneval": {"headline": "pass@1", "metrics": {
        "pass@1": {"label": "pass@1", "higher_is_better": True, "item_field": "passed"}}},
    "fidelity": {"headline": "perplexity", "metrics": {
        "perplexity": {"label": "perplexity", "higher_is_better": False, "item_field": "nll"}}},
}


def is_png(path) -> bool:
    """A valid PNG: the signature, then chunks whose CRCs match, ending with IEND."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return False
    pos, seen = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        if zlib.crc32(kind + body) != crc:
            return False
        seen.append(kind)
        pos += 12 + length
    return seen[0] == b"IHDR" and seen[-1] == b"IEND"


def test_report_md_html_and_plots(tmp_path):
    pytest.importorskip("matplotlib", reason="plots need matplotlib (optional)")
    results = build_results()
    paths = write_report(tmp_path, results)
    md = paths["md"].read_text()
    # 40 of 111 passes lost, 2 gained, of 164 problems: -23.2 pp
    assert re.search(r"\| q2 \| rtn \| 2 \| 44\.5% \[[0-9.]+, [0-9.]+\] \| -23\.2 pp \[-[0-9.]+, -[0-9.]+\] \(p=.*\) "
                     r"\| worse \| -40 / \+2 \| 4\.0 GiB \| 5\.0 GiB \| 15 \| - \|", md), md
    assert re.search(r"\| original \| none \| bfloat16 \| 67\.7% \[[0-9.]+, [0-9.]+\] \| \(baseline\) \|", md)
    assert re.search(r"\| int8 \| rtn \| 8 \| .* \| no significant difference \(MDE [0-9.]+ pp\) \| -1 / \+1 \| "
                     r"14\.0 GiB \| 15\.0 GiB \| 8 \| 500\.0 J \|", md)
    assert "humaneval pass@1 [95% CI]" in md
    assert "## Errors by category" in md and "| q2 | " in md
    lost = md.split("## How the items a variant lost now fail")[1].split("\n## ")[0]
    q2 = results["analysis"]["significance"]["q2"]["humaneval"]["passed"]["flips_by_category"]["right_to_wrong"]
    assert sum(q2.values()) == 40
    assert f"| q2 | {q2.get('syntax_error', 0)} | {q2.get('wrong_answer', 0)} |" in lost
    assert "Test CPU" in md and "torch | 2.13.0" in md and "abc123" in md
    assert "![pareto](plots/pareto.png)" in md
    for name in ("pareto", "errors-humaneval"):
        assert paths[name].parent == tmp_path / "plots" and is_png(paths[name])
    page = paths["html"].read_text()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page and "<script" not in page
    assert page.count('src="data:image/png;base64,') == 2
    assert '<td class="worse">worse</td>' in page


def test_report_without_matplotlib_says_so(tmp_path, monkeypatch):
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "pareto.png").write_bytes(b"a plot of an earlier run")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    paths = write_report(tmp_path, build_results())
    assert set(paths) == {"md", "html"}
    assert "matplotlib is not installed" in paths["md"].read_text()
    assert "matplotlib is not installed" in paths["html"].read_text()
    assert not (tmp_path / "plots").exists() or not list((tmp_path / "plots").iterdir())


def test_report_tolerates_missing_pieces(tmp_path):
    results = build_results(with_analysis=False, with_profile=False)
    del results["manifest"]
    paths = write_report(tmp_path, results)
    md = paths["md"].read_text()
    assert "No significance analysis" in md and "No manifest" in md
    assert "| q4 | gptq | 4 |" in md and "not analyzed" in md
    minimal = {"experiment": "bare", "variants": [{"name": "original"}]}
    assert "| original |" in write_report(tmp_path / "bare", minimal)["md"].read_text()


def test_primary_metric_prefers_the_pass_fail_benchmark():
    primary = primary_metric(build_results())
    assert (primary.evaluator, primary.key, primary.analysis_metric) == ("humaneval", "pass@1", "passed")
    fidelity_only = {"variants": [{"name": "a", "metrics": {"fidelity": {"perplexity": 9.0}}}],
                     "evaluators": {"fidelity": DECLARED["fidelity"]}}
    p = primary_metric(fidelity_only)
    assert p.key == "perplexity" and not p.higher_is_better
    assert primary_metric({**fidelity_only, "evaluators": {}}) is None  # nothing declared: no score is guessed


def test_parse_size():
    assert parse_size("8GiB") == 8 * GiB
    assert parse_size("512MB") == 512_000_000
    assert parse_size("1.5 GB") == 1_500_000_000
    assert parse_size("4G") == 4 * GiB
    assert parse_size("1024") == 1024
    for bad in ("lots", "8 parsecs", "", "-3GB"):
        with pytest.raises(TeenyError, match="expected a number with a unit"):
            parse_size(bad)


def test_recommend_under_budgets():
    results = build_results()
    # everything fits: int8 and q4 are not significantly different from the original; q4 is smaller
    best, why = recommend(results, "64GiB")
    assert best["name"] == "q4", why
    assert "not significantly different" in why and "fits 64.0 GiB" in why
    # 8 GiB: q4 (9 GiB) no longer fits; q3 and q2 are both significantly worse: the higher score wins
    assert results["analysis"]["significance"]["q3"]["humaneval"]["passed"]["verdict"] == "worse"
    best, why = recommend(results, "8GiB")
    assert best["name"] == "q3", why
    assert "significantly worse" in why and "too large" in why and "q4 (9.0 GiB)" in why
    # only q2 fits
    best, why = recommend(results, 6 * GiB)
    assert best["name"] == "q2", why
    with pytest.raises(TeenyError, match=r"no variant fits 1.0 GiB: the smallest, q2, needs 5.0 GiB"):
        recommend(results, "1GiB")


def test_recommend_without_analysis_ranks_by_score_then_memory():
    results = build_results(with_analysis=False)
    best, why = recommend(results, "64GiB")
    # original and int8 tie on pass@1 (one flip each way); the smaller wins
    assert best["name"] == "int8" and "highest score" in why
    results["variants"] = [dict(v, profile={}) for v in results["variants"]]
    best, why = recommend(results, "7GiB")  # no profile: artifact size decides what fits; q3 scores above q2
    assert best["name"] == "q3" and "artifact size" in why


def test_error_categories_from_records_when_metrics_lack_them(tmp_path):
    pytest.importorskip("matplotlib", reason="plots need matplotlib (optional)")
    import json

    results = build_results()
    for v in results["variants"]:
        v["metrics"]["humaneval"].pop("categories")
    (tmp_path / "q2").mkdir()
    lines = [{"evaluator": "humaneval", "key": f"k{i}", "passed": False, "category": c}
             for i, c in enumerate(["timeout", "timeout", "syntax error"])]
    lines.append({"evaluator": "humaneval", "key": "ok", "passed": True, "category": "passed"})
    lines.append({"evaluator": "humaneval", "key": "php", "passed": False, "category": "skipped_toolchain"})
    (tmp_path / "q2" / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"torn')
    paths = write_report(tmp_path, results)
    md = paths["md"].read_text()
    assert "| variant | syntax error | timeout |\n|---|---|---|\n| q2 | 1 | 2 |" in md
    assert is_png(paths["errors-humaneval"])


def test_load_results_errors(tmp_path):
    import json

    from teeny_core.results import load_results

    with pytest.raises(TeenyError, match="has no results.json"):
        load_results(tmp_path)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(TeenyError, match="is not valid JSON"):
        load_results(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"experiment": "x"}))
    with pytest.raises(TeenyError, match="no 'variants' list"):
        load_results(tmp_path)
    results = build_results()
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert load_results(tmp_path) == results


def test_error_categories_from_teeny_bench_metric_keys(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # tables only
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    results = build_results()
    for v in results["variants"]:
        cats = v["metrics"]["humaneval"].pop("categories")
        v["metrics"]["humaneval"].update({f"errors/{k}": n for k, n in cats.items()})
        v["metrics"]["humaneval"]["errors/passed"] = 100
    md = write_report(tmp_path, results)["md"].read_text()
    section = md.split("## Errors by category")[1].split("\n## ")[0]
    assert "| variant | assertion | syntax |" in section and "passed" not in section


def test_teeny_report_and_recommend_commands(tmp_path):
    import json

    from click.testing import CliRunner

    from teeny_core.cli import cli

    (tmp_path / "results.json").write_text(json.dumps(build_results()))
    out = CliRunner().invoke(cli, ["report", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "report.md").is_file() and (tmp_path / "report.html").is_file()
    out = CliRunner().invoke(cli, ["recommend", str(tmp_path), "--memory", "64GiB"])
    assert out.exit_code == 0, out.output
    assert out.output.startswith("q4: ") and "not significantly different" in out.output
    out = CliRunner().invoke(cli, ["recommend", str(tmp_path), "--memory", "1GiB"])
    assert out.exit_code == 2 and "no variant fits 1.0 GiB" in out.output
    out = CliRunner().invoke(cli, ["recommend", str(tmp_path), "--memory", "lots"])
    assert out.exit_code == 2 and "bad memory size 'lots'" in out.output


def _key_paths(obj, prefix=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,)
            yield from _key_paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:2]):
            yield from _key_paths(v, prefix + (i,))


@pytest.mark.parametrize("damage", ["delete", "null", "text"])
def test_report_and_recommend_survive_any_missing_piece(tmp_path, monkeypatch, damage):
    """Delete each key of a full results dict in turn (or make its value null, or a string): the report is
    still written, recommend answers or raises a TeenyError, never anything else."""
    import copy

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # tables only: fast
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    full = build_results()
    paths = [p for p in _key_paths(full) if "records" not in p]
    assert len(paths) > 100
    for path in paths:
        results = copy.deepcopy(full)
        parent = results
        for key in path[:-1]:
            parent = parent[key]
        if damage == "delete":
            del parent[path[-1]]
        else:
            parent[path[-1]] = None if damage == "null" else "garbage"
        write_report(tmp_path / "r", results)
        try:
            recommend(results, "64GiB")
        except TeenyError:
            pass
