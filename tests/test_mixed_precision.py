"""RTN under an average-bits budget (``-o target_bits``): per-module bits as GPTQModel ``dynamic`` rules, run
packed, and one-line errors for budgets and sensitivity files that cannot be used.

The achieved bits per weight are counted from the checkpoint's tensor bytes (not the writer's accounting); each
module's dequantized weight is checked against a float64 round-to-nearest at the bits its rule gives (tolerance:
the float16 scale), and against the wrong bit-width to show the check can fail.
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from teeny_core.cli import cli  # noqa: E402
from teeny_core.testing import checkpoint_bits_per_weight  # noqa: E402
from teeny_core.modeling import ModelSource

CAL = ["-c", "samples=4", "-c", "seq_len=32"]


def rtn_float64(weight, bits, group=32):
    """Asymmetric RTN with a zero point of at least 1 (what a GPTQ v1 checkpoint can hold)."""
    w = weight.double().reshape(weight.shape[0], -1, group)
    lo, hi = w.amin(-1, keepdim=True).clamp(max=0), w.amax(-1, keepdim=True).clamp(min=0)
    scale = (hi - lo) / (2**bits - 1)
    zero = torch.round(-lo / scale).clamp(min=1)
    q = torch.clamp(torch.round(w / scale) + zero, 0, 2**bits - 1)
    return (scale * (q - zero)).reshape(weight.shape)


@pytest.fixture(scope="module")
def sensitivity_file(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("sens") / "sens.json"
    done = CliRunner().invoke(cli, ["sensitivity", str(tiny_model("llama")), "-o", "group_size=32", *CAL,
                                    "--no-kl", "--out", str(out)])
    assert done.exit_code == 0, done.output
    return out


def test_rtn_target_bits_from_a_sensitivity_file_runs_packed(tiny_model, tmp_path, sensitivity_file):
    from transformers import AutoModelForCausalLM

    from teeny_core.builtin.transformers_runtime import TransformersRuntime
    from teeny_core.checkpoints import open_checkpoint
    from teeny_core.formats.gptq import dequantized_state_dict

    src = tiny_model("llama")
    out = tmp_path / "mixed"
    done = CliRunner().invoke(cli, ["quantize", str(src), "--method", "rtn", "-o", "target_bits=3.5",
                                    "-o", "group_size=32", "-o", "scheme=asym", "-o", f"sensitivity={sensitivity_file}",
                                    "--out", str(out)])
    assert done.exit_code == 0, done.output
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    average, bits_of = checkpoint_bits_per_weight(out)
    assert abs(average - 3.5) <= 0.05 and len(bits_of) == 14
    assert len({config["bits"], *(r["bits"] for r in config["dynamic"].values())}) >= 2
    assert len(set(bits_of.values())) >= 2
    artifact = open_checkpoint(str(out))
    assert artifact.meta["achieved_bits"] == pytest.approx(average, abs=1e-3)
    assert artifact.meta["bits_plan"] == bits_of and artifact.meta["sensitivity_score"] == "proxy"
    assert json.loads((out / "sensitivity.json").read_text())["model"] == ModelSource(str(src)).identity()

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float64)
    state = dequantized_state_dict(out)
    for name, bits in bits_of.items():
        weight = model.get_submodule(name).weight.detach()
        tolerance = 2e-3 * float(weight.abs().max())  # the float16 scale
        assert float((state[f"{name}.weight"].double() - rtn_float64(weight, bits)).abs().max()) <= tolerance
        wrong = 8 if bits != 8 else 2
        assert float((state[f"{name}.weight"].double() - rtn_float64(weight, wrong)).abs().max()) > tolerance

    options = TransformersRuntime.Options.from_mapping
    packed = TransformersRuntime().load(artifact, options({"device": "cpu", "packed_compute": "float32"}))
    facts = packed.load_facts()
    assert facts["kernels"] == "packed" and facts["packed_layers"] == 14 and facts["float_layers"] == {}
    ids = [[(7 * i + 3) % 500 + 1 for i in range(32)]]
    dequant = TransformersRuntime().load(artifact, options({"device": "cpu", "kernels": "dequant"}))
    assert float((packed.logprobs(ids) - dequant.logprobs(ids)).abs().max()) <= 1e-4


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("case", ["unreachable", "unwritable", "other-model", "other-group", "not-json"])
def test_bad_budgets_and_sensitivity_files_are_one_line_before_work(tiny_model, tmp_path, sensitivity_file, case):
    data = json.loads(sensitivity_file.read_text())
    options = {
        "unreachable": ["target_bits=1.5", "allowed_bits=2,4"],
        "unwritable": ["target_bits=4", "allowed_bits=2,5"],
        "other-model": ["target_bits=3.5", f"sensitivity={_write(tmp_path / 'a.json', {**data, 'model': 'abc'})}"],
        "other-group": ["target_bits=3.5", f"sensitivity={_write(tmp_path / 'b.json', {**data, 'group_size': 64})}"],
        "not-json": ["target_bits=3.5", f"sensitivity={tmp_path / 'missing.json'}"],
    }[case]
    expected = {"unreachable": "target_bits=1.5 cannot be reached with allowed_bits=[2, 4]",
                "unwritable": "allowed_bits=[2, 5] holds [5]", "other-model": "was measured on model",
                "other-group": "was measured at group_size=64, not 32", "not-json": "is not a file"}[case]
    args = ["quantize", str(tiny_model("llama")), "--method", "rtn", "-o", "group_size=32", *CAL,
            "--out", str(tmp_path / "out")]
    for option in options:
        args[4:4] = ["-o", option]
    done = CliRunner().invoke(cli, args)
    assert done.exit_code == 2 and done.output.count("\n") == 1, done.output
    assert done.output.startswith("Error: ") and expected in done.output
    assert not (tmp_path / "out").exists()
