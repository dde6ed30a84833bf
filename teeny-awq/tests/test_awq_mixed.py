"""awq -o target_bits=X -o format=hf-gptq: AWQ with each linear's bits chosen by the same planner as rtn and gptq,
written as a GPTQ checkpoint with ``dynamic`` rules, checked against the checkpoint's tensor bytes, a float64
reference of the written grid, and the packed runtime; and the one-line refusals."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from teeny_core.cli import cli
from teeny_core.testing import assert_runs_packed, checkpoint_bits_per_weight

CAL = ["-c", "samples=4", "-c", "seq_len=32"]


def test_awq_target_bits_writes_mixed_gptq_checkpoint_that_runs_packed(tiny_model, tmp_path):
    from teeny_core.checkpoints import open_checkpoint
    from teeny_core.formats.gptq import dequantized_state_dict

    src = tiny_model("qwen2")
    out = tmp_path / "mixed"
    done = CliRunner().invoke(cli, ["quantize", str(src), "--method", "awq", "-o", "target_bits=3.5",
                                    "-o", "format=hf-gptq", "-o", "group_size=32", "-o", "grid=4", *CAL,
                                    "--out", str(out)])
    assert done.exit_code == 0, done.output
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    average, bits_of = checkpoint_bits_per_weight(out)
    assert abs(average - 3.5) <= 0.05 and len(bits_of) == 14 and len(set(bits_of.values())) >= 2
    assert config["quant_method"] == "gptq" and config["checkpoint_format"] == "gptq" and not config["sym"]
    assert len({config["bits"], *(r["bits"] for r in config["dynamic"].values())}) >= 2
    artifact = open_checkpoint(str(out))
    assert artifact.meta["bits_plan"] == bits_of and artifact.meta["sensitivity_score"] == "proxy"
    used = json.loads((out / "sensitivity.json").read_text())
    assert used["method"] == "rtn" and used["sym"] is False and used["group_size"] == 32

    # each linear holds at most 2**bits distinct values per group of 32 columns (counted from the dequantized
    # tensors, independently of the writer), and some group of every linear below 8 bits needs more than 2**(bits-1)
    state = dequantized_state_dict(out)
    for name, bits in bits_of.items():
        w = state[f"{name}.weight"].float()
        groups = w.reshape(w.shape[0], -1, 32).sort(-1).values
        distinct = (groups.diff(dim=-1) != 0).sum(-1) + 1
        assert int(distinct.max()) <= 2**bits
        if bits < 8:
            assert int(distinct.max()) > 2 ** (bits - 1)

    assert_runs_packed(artifact, packed_layers=14)


@pytest.mark.parametrize("case", ["hf-awq", "unwritable", "unreachable", "lm_head"])
def test_awq_target_bits_bad_input_is_one_line_before_work(tiny_model, tmp_path, case):
    extra, expected = {
        "hf-awq": (["target_bits=3.5"], "add -o format=hf-gptq"),
        "unwritable": (["target_bits=4", "allowed_bits=4,6", "format=hf-gptq"], "allowed_bits=[4, 6] holds [6]"),
        "unreachable": (["target_bits=12", "format=hf-gptq"], "target_bits=12.0 cannot be reached"),
        "lm_head": (["target_bits=3.5", "format=hf-gptq", "skip="], "keep lm_head in skip"),
    }[case]
    args = ["quantize", str(tiny_model("qwen2")), "--method", "awq", "-o", "group_size=32", *CAL,
            "--out", str(tmp_path / "out")]
    for option in extra:
        args[4:4] = ["-o", option]
    done = CliRunner().invoke(cli, args)
    assert done.exit_code == 2 and done.output.count("\n") == 1, done.output
    assert done.output.startswith("Error: awq") and expected in done.output, done.output
    assert not (tmp_path / "out").exists()
