"""GPTQModel ``dynamic`` rules in hf-gptq checkpoints: per-module bits and group sizes, exclusions, bad rules.

Rule semantics checked against GPTQModel's ``dynamic_get`` (gptqmodel/quantization/config.py) and vLLM's
``get_dynamic_override``: rules are tried in order, the first whose regex ``re.match``-es the full module name
(anchored at its start only) decides; ``-:`` excludes, ``+:`` or a bare regex overrides. The packed CPU runtime
is checked against a float64 model whose weights are dequantized here from codes recomputed independently,
with the bits and group size each module is expected to get (written out below, not derived from the rules).
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from teeny_core.errors import TeenyError  # noqa: E402
from teeny_core.formats.gptq import dynamic_rule  # noqa: E402
from teeny_core.testing import build_quantized_checkpoint  # noqa: E402

IDS = [[(7 * i + 3) % 500 + 1 for i in range(48)], [(11 * i + 5) % 500 + 1 for i in range(48)]]

RULES = {
    r"-:^model\.layers\.1\.mlp\.down_proj$": {},
    r"+:^model\.layers\.0\.mlp\.": {"bits": 8, "group_size": 64},
    r"model\.layers\.1\.self_attn\.[qk]_proj": {"bits": 2},
    r"model\.layers\.0\.mlp\.gate_proj": {"bits": 3},  # shadowed: the rule above already matched
}


def expected_layout(name: str) -> tuple[int, int] | None:
    """(bits, group_size) each linear of the 2-layer tiny llama must get from RULES (global 4 bits, g32)."""
    if name == "model.layers.1.mlp.down_proj":
        return None
    if name.startswith("model.layers.0.mlp."):
        return 8, 64
    if name in ("model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj"):
        return 2, 32
    return 4, 32


def test_rule_lookup_is_first_match_anchored_at_the_start():
    assert dynamic_rule(RULES, "model.layers.0.mlp.gate_proj") == {"bits": 8, "group_size": 64}
    assert dynamic_rule(RULES, "model.layers.1.mlp.down_proj") is None
    assert dynamic_rule(RULES, "model.layers.1.self_attn.k_proj") == {"bits": 2}
    assert dynamic_rule(RULES, "model.layers.0.self_attn.q_proj") == {}
    assert dynamic_rule(None, "lm_head") == {}
    assert dynamic_rule({r"layers\.0": {"bits": 3}}, "model.layers.0.mlp.up_proj") == {}  # match anchors at the start


def float64_reference(src):
    """The tiny model in float64 with every linear replaced by its expected dequantized weight."""
    from transformers import AutoModelForCausalLM

    from teeny_core.quant import quantize_weight

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float64).eval()
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or name == "lm_head" or expected_layout(name) is None:
            continue
        bits, group = expected_layout(name)
        q, scale, zero = quantize_weight(module.weight.detach().float(), bits, "asym", "group", group)
        scale, zero = scale.half().double(), zero.clamp(min=1).double()
        w = scale.repeat_interleave(group, 1) * (q.double() - zero.repeat_interleave(group, 1))
        with torch.no_grad():
            module.weight.copy_(w)
    return model


def test_per_module_bits_run_packed_and_match_a_float64_reference(tiny_model, tmp_path):
    from teeny_core.builtin.transformers_runtime import TransformersRuntime
    from teeny_core.checkpoints import open_checkpoint
    from teeny_core.formats.gptq import read_quantized

    src = tiny_model("llama")
    build_quantized_checkpoint(src, tmp_path / "ckpt", "gptq", bits=4, group=32, dynamic=RULES)
    artifact = open_checkpoint(str(tmp_path / "ckpt"))
    linears, _ = read_quantized(artifact.path)
    layouts = {name: (lin.bits, lin.q.shape[1] // lin.scale.shape[1]) for name, lin in linears}
    expected = {f"model.layers.{i}.{m}": expected_layout(f"model.layers.{i}.{m}") for i in range(2)
                for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                          "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    assert layouts == {k: v for k, v in expected.items() if v is not None}

    options = TransformersRuntime.Options.from_mapping({"device": "cpu", "kernels": "packed", "dtype": "float32",
                                                        "packed_compute": "float32"})
    packed = TransformersRuntime().load(artifact, options)
    facts = packed.load_facts()
    assert facts["kernels"] == "packed" and facts["packed_layers"] == 13 and facts["float_layers"] == {}
    got = packed.logprobs(IDS).double()
    with torch.no_grad():
        ref = torch.log_softmax(float64_reference(src)(input_ids=torch.tensor(IDS)).logits, dim=-1)
    assert float((got - ref).abs().max()) <= 1e-3  # float32 kernel arithmetic against float64
    # the excluded module is float and exact: its weight is the source's
    down = packed.model.get_submodule("model.layers.1.mlp.down_proj")
    assert isinstance(down, torch.nn.Linear)


def test_a_rule_matching_no_module_is_one_line_before_work(tiny_model, tmp_path):
    from click.testing import CliRunner

    from teeny_core.cli import cli

    ckpt = tmp_path / "ckpt"
    build_quantized_checkpoint(tiny_model("llama"), ckpt, "gptq", dynamic={r"+:^model\.layers\.0\.": {"bits": 8}})
    config = json.loads((ckpt / "config.json").read_text())
    config["quantization_config"]["dynamic"][r"+:^model\.decoder\.layers\.5\."] = {"bits": 2}
    (ckpt / "config.json").write_text(json.dumps(config))
    (ckpt / "teeny-artifact.json").unlink()  # a checkpoint made elsewhere: its format is read from config.json
    out = CliRunner().invoke(cli, ["eval", str(ckpt), "-b", "fidelity", "--out", str(tmp_path / "run")])
    assert out.exit_code == 2
    lines = out.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert r"model\.decoder\.layers\.5" in lines[0] and "matches no module" in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("rules,message", [
    ({r"+:^model\.layers\.0\.mlp\.up_proj$": {"bits": 5}}, "bits=5"),
    ({r"-:^model\.layers\.0\.mlp\.up_proj$": {}}, "excludes 'model.layers.0.mlp.up_proj'"),
    ({r"+:^model\.layers\.(0": {}}, "not a valid regex"),
])
def test_bad_rules_are_one_line(tiny_model, tmp_path, rules, message):
    from teeny_core.checkpoints import open_checkpoint

    ckpt = tmp_path / "ckpt"
    build_quantized_checkpoint(tiny_model("llama"), ckpt, "gptq")
    config = json.loads((ckpt / "config.json").read_text())
    config["quantization_config"]["dynamic"] = rules
    (ckpt / "config.json").write_text(json.dumps(config))
    (ckpt / "teeny-artifact.json").unlink()  # a checkpoint made elsewhere: its format is read from config.json
    with pytest.raises(TeenyError, match="dynamic") as err:
        open_checkpoint(str(ckpt))
    assert message in str(err.value) and "\n" not in str(err.value)
