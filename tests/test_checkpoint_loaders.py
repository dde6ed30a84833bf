"""Every quantizer's default checkpoint carries the quantization config the named loaders parse.

Config level (the real loaders run in teeny-gptq/tests/test_gptq_gptqmodel_crosscheck.py and
teeny-awq/tests/test_awq_interop.py where GPTQModel installs): transformers' own ``GPTQConfig``/``AwqConfig``
accept the config, and it has every key vLLM's GPTQ/AWQ config parsers read without a default (``bits``,
``group_size``, ``desc_act``, ``sym``; ``zero_point`` for AWQ), with a symmetric 4/8-bit grid that vLLM's
Marlin kernels serve (its asymmetric GPTQ path is the slower exllama kernel) and ``dynamic`` exclusions that
compile as the regular expressions GPTQModel and vLLM match module names with.
"""

from __future__ import annotations

import json
import re

import pytest

from teeny_core.modeling import ModelSource

VLLM_GPTQ_KEYS = ("bits", "group_size", "desc_act", "sym")


def make(teeny_plugins, tiny_model, tmp_path, method: str, **options):
    cls = teeny_plugins.get("quantizer", method)
    source = ModelSource(str(tiny_model("qwen2")))
    calibration = None
    if cls.needs_calibration(cls.Options.from_mapping(options)):
        code = teeny_plugins.get("calibrator", "code")
        calibration = code().samples(source.load_tokenizer(), code.Options.from_mapping({"samples": 4, "seq_len": 32}),
                                     seed=0)
    out = tmp_path / method
    out.mkdir()
    artifact = cls().quantize(source, calibration, cls.Options.from_mapping({"group_size": 32, **options}), out)
    return artifact, json.loads((out / "config.json").read_text())["quantization_config"]


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_gptq_defaults_parse_in_transformers_and_vllm(teeny_plugins, tiny_model, tmp_path, method):
    from transformers import GPTQConfig

    artifact, config = make(teeny_plugins, tiny_model, tmp_path, method, skip=["lm_head", "*.down_proj"])
    assert artifact.format == "hf-gptq"
    assert config["quant_method"] == "gptq" and all(key in config for key in VLLM_GPTQ_KEYS)
    assert config["bits"] in (4, 8) and config["sym"] is True  # Marlin's (bits, sym) pairs in vLLM
    assert config["checkpoint_format"] == "gptq"  # v1: what vLLM's kernels and GPTQModel read
    parsed = GPTQConfig.from_dict(config)
    assert (parsed.bits, parsed.group_size, parsed.sym, parsed.desc_act) == (config["bits"], 32, True, False)
    rules = [rule[2:] for rule in config["dynamic"] if rule.startswith("-:")]
    assert any(re.match(rule, "model.layers.1.mlp.down_proj") for rule in rules)
    assert not any(re.match(rule, "model.layers.1.mlp.up_proj") for rule in rules)


def test_awq_default_parses_in_transformers_and_vllm(teeny_plugins, tiny_model, tmp_path):
    from transformers import AwqConfig

    artifact, config = make(teeny_plugins, tiny_model, tmp_path, "awq")
    assert artifact.format == "hf-awq"
    assert config["quant_method"] == "awq" and config["version"] == "gemm"
    assert (config["bits"], config["group_size"], config["zero_point"]) == (4, 32, True)  # vLLM's required keys
    parsed = AwqConfig.from_dict(config)
    assert (parsed.bits, parsed.group_size, parsed.zero_point) == (4, 32, True)
    assert isinstance(config.get("modules_to_not_convert", []), list)


@pytest.mark.parametrize("method", ["rtn", "awq"])
def test_a_quantized_lm_head_is_flagged_as_gptqmodel_and_vllm_read_it(teeny_plugins, tiny_model, tmp_path, method):
    """With ``skip=[]`` lm_head is written packed, and the config says so with ``lm_head: true``: the key
    GPTQModel's QuantizeConfig and vLLM's GPTQ, GPTQ-Marlin and AWQ-Marlin configs read to give lm_head a
    quantized method (without it they build a float lm_head and the packed tensors fail to load). GPTQModel
    loading both: teeny-gptq/tests/test_gptq_gptqmodel_crosscheck.py, teeny-awq/tests/test_awq_interop.py."""
    artifact, config = make(teeny_plugins, tiny_model, tmp_path, method, skip=[])
    assert config["lm_head"] is True and "lm_head" in artifact.meta["quantized_layers"]
    assert "lm_head" not in config.get("modules_to_not_convert", [])
    (tmp_path / "default").mkdir()
    default, default_config = make(teeny_plugins, tiny_model, tmp_path / "default", method)
    assert default_config["lm_head"] is False and "lm_head" not in default.meta["quantized_layers"]
