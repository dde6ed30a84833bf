"""End to end: `teeny run` on a tiny model with the significance analyzer, then the report and recommend."""

import json

import pytest
from click.testing import CliRunner


@pytest.mark.slow
def test_run_analyzes_fidelity_records_and_reports(tiny_model, tmp_path):
    from teeny_core.cli import cli
    from teeny_core.recommend import recommend

    lines = ['name = "sig"', f'model = "{tiny_model("llama")}"', f'output_dir = "{tmp_path}"', 'device = "cpu"',
             "[evaluators.fidelity]", "chunks = 8", "chunk_len = 32",
             "[profilers.system]", "benchmark = false",
             "[analyzers.significance]", "resamples = 500", 'fields = ["nll", "kl", "top1"]']
    for name, bits in (("w8", 8), ("w2", 2)):
        lines += ["[[variants]]", f'name = "{name}"', 'method = "rtn"', f"bits = {bits}", 'granularity = "channel"', 'scheme = "asym"']
    (tmp_path / "exp.toml").write_text("\n".join(lines) + "\n")
    out = CliRunner().invoke(cli, ["run", str(tmp_path / "exp.toml")])
    assert out.exit_code == 0, out.output
    results = json.loads((tmp_path / "sig" / "results.json").read_text())
    sig = results["analysis"]["significance"]
    w2 = sig["w2"]["fidelity"]
    assert w2["nll"]["n_items"] == 8 and w2["nll"]["kind"] == "continuous"
    # every chunk's KL to the original is positive for 2-bit weights: all 8 signed ranks agree
    assert w2["kl"]["p_value"] == pytest.approx(2 / 2**8) and w2["kl"]["delta"] > 0
    assert w2["top1"]["delta"] < 0
    assert sig["_experiment"]["comparisons"] == 6
    md = (tmp_path / "sig" / "report.md").read_text()  # as `teeny run` wrote it, with teeny-stats' sections
    assert "| w2 | rtn (" in md and "fidelity perplexity" in md
    assert "## Paired comparisons with the baseline\n\n### w8" in md and "| fidelity | kl | 8 |" in md
    best, why = recommend(results, "100GiB")
    assert best["name"] in {"original", "w8", "w2"} and "fits 100.0 GiB" in why
