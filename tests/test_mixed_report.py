"""The report's mixed-precision section: each variant's stored bits per weight, each plan's achieved bits and
modules per bit-width, the bits-per-module figure, and the Pareto plot marking mixed variants among the uniform
ones; a run without a plan has no such section."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

FIDELITY = {"headline": "kl_mean", "metrics": {"kl_mean": {"label": "KL", "higher_is_better": False}}}


def _variant(name, method, kl, size, **extra):
    return {"name": name, "method": method, "describe": {"bits": 3} if "module_bits" not in extra else
            {"target_bits": 3.2}, "status": "ok", "metrics": {"fidelity": {"kl_mean": kl}},
            "artifact_bytes": size, "packed_bytes": size, "profile": {}, **extra}


def _results(*variants):
    return {"experiment": "e", "baseline": "original", "evaluators": {"fidelity": FIDELITY},
            "variants": [_variant("original", "original", 0.0, 4000, bits_per_weight=16.0), *variants]}


def test_mixed_section_lists_bits_and_draws_the_plan(tmp_path):
    from teeny_core.report import report_tables, write_report

    plan = {f"model.layers.{i}.{m}": b for i in range(3) for m, b in
            (("self_attn.q_proj", 4), ("self_attn.k_proj", 2), ("mlp.down_proj", 3))}
    results = _results(_variant("gptq-w3", "gptq", 0.20, 1000, bits_per_weight=3.6),
                       _variant("gptq-mixed", "gptq", 0.12, 1010, bits_per_weight=3.65, achieved_bits=3.21,
                                module_bits=plan))
    written = write_report(tmp_path, results)
    text = (tmp_path / "report.md").read_text()
    assert "## Mixed precision" in text and "bits-per-module.png" in text
    assert (tmp_path / "plots" / "bits-per-module.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "plots" / "pareto.png").exists()
    [(_, headers, rows)] = [t for t in report_tables(tmp_path, results) if t[0] == "mixed-precision"]
    by_name = {row[0]: dict(zip(headers, row)) for row in rows}
    assert by_name["gptq-mixed"]["bits/weight (planned linears)"] == "3.21"
    assert by_name["gptq-mixed"]["modules per bit-width"] == "2: 3, 3: 3, 4: 3"
    assert by_name["gptq-w3"]["bits/weight (planned linears)"] == "uniform"
    assert by_name["gptq-w3"]["bits/weight (stored, whole model)"] == "3.6"
    assert written  # the report's files


def test_no_plan_no_section(tmp_path):
    from teeny_core.report import write_report

    write_report(tmp_path, _results(_variant("gptq-w3", "gptq", 0.2, 1000, bits_per_weight=3.6)))
    assert "Mixed precision" not in (tmp_path / "report.md").read_text()
    assert not (tmp_path / "plots" / "bits-per-module.png").exists()


def test_a_run_with_a_target_bits_variant_reports_its_plan(tiny_model, tmp_path):
    """End to end: `teeny run` with an rtn `target_bits` variant beside a uniform one; results.json carries each
    variant's stored bits and the plan as the artifact recorded it, and the report draws it."""
    import json

    from click.testing import CliRunner

    from teeny_core.cli import cli

    lines = ['name = "mixed"', f'model = "{tiny_model("llama")}"', f'output_dir = "{tmp_path}"', 'device = "cpu"',
             "[calibration]", 'method = "random-tokens"', "samples = 4", "seq_len = 32",
             "[evaluators.fidelity]", "chunks = 2", "chunk_len = 32", "[profilers.system]", "benchmark = false",
             "[[variants]]", 'name = "w4"', 'method = "rtn"', "bits = 4", "group_size = 32",
             "[[variants]]", 'name = "mixed-3.5"', 'method = "rtn"', "target_bits = 3.5", "group_size = 32"]
    (tmp_path / "exp.toml").write_text("\n".join(lines) + "\n")
    done = CliRunner().invoke(cli, ["run", str(tmp_path / "exp.toml")])
    assert done.exit_code == 0, done.output
    variants = {v["name"]: v for v in json.loads((tmp_path / "mixed" / "results.json").read_text())["variants"]}
    meta = json.loads((tmp_path / "mixed" / "mixed-3.5" / "artifact" / "teeny-artifact.json").read_text())["meta"]
    assert variants["mixed-3.5"]["module_bits"] == meta["bits_plan"] and len(set(meta["bits_plan"].values())) >= 2
    assert abs(variants["mixed-3.5"]["achieved_bits"] - 3.5) <= 0.05
    assert variants["w4"]["module_bits"] is None and variants["w4"]["bits_per_weight"] > 0
    report = (tmp_path / "mixed" / "report.md").read_text()
    assert "## Mixed precision" in report and (tmp_path / "mixed" / "plots" / "bits-per-module.png").exists()
