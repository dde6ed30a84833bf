"""gptq -o target_bits=X: a checkpoint whose ``quantization_config.dynamic`` holds several bit-widths averaging X
(counted from the tensors' bytes), measured on the fly with GPTQ itself, evaluated packed by `teeny eval`."""

from __future__ import annotations

import json

from click.testing import CliRunner

from teeny_core.cli import cli
from teeny_core.testing import assert_runs_packed, checkpoint_bits_per_weight


def test_target_bits_writes_mixed_dynamic_rules_that_run_packed(tiny_model, tmp_path):
    from teeny_core.checkpoints import open_checkpoint
    from teeny_core.formats.gptq import read_quantized

    src = tiny_model("qwen2")
    out = tmp_path / "mixed"
    done = CliRunner().invoke(cli, ["quantize", str(src), "--method", "gptq", "-o", "target_bits=3.5",
                                    "-o", "group_size=32", "-c", "samples=4", "-c", "seq_len=32", "--out", str(out)])
    assert done.exit_code == 0, done.output
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    average, bits_of = checkpoint_bits_per_weight(out)
    assert abs(average - 3.5) <= 0.05 and len(bits_of) == 14
    assert len({config["bits"], *(r["bits"] for r in config["dynamic"].values())}) >= 2
    artifact = open_checkpoint(str(out))
    assert artifact.meta["bits_plan"] == bits_of and artifact.meta["sensitivity_score"] == "proxy"
    assert json.loads((out / "sensitivity.json").read_text())["method"] == "gptq"
    linears, _ = read_quantized(out)
    assert {name: linear.bits for name, linear in linears} == bits_of

    assert_runs_packed(artifact, packed_layers=14)

    done = CliRunner().invoke(cli, ["eval", str(out), "-b", "fidelity", "--reference", str(src), "-o", "chunks=2",
                                    "-o", "chunk_len=32", "--out", str(tmp_path / "eval")])
    assert done.exit_code == 0, done.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["fidelity"]
    assert 0 < metrics["kl_mean"] < 0.5


def test_target_bits_with_an_unwritable_width_is_one_line(tiny_model, tmp_path):
    done = CliRunner().invoke(cli, ["quantize", str(tiny_model("qwen2")), "--method", "gptq", "-o", "target_bits=4",
                                    "-o", "allowed_bits=4,6", "-o", "group_size=32", "-c", "samples=2",
                                    "-c", "seq_len=32", "--out", str(tmp_path / "out")])
    assert done.exit_code == 2 and done.output.count("\n") == 1 and done.output.startswith("Error: gptq: ")
    assert "allowed_bits=[4, 6] holds [6]" in done.output and not (tmp_path / "out").exists()
