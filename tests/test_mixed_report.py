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
