"""Unquantized tensors stay in 16 bits: artifacts of a bfloat16 model hold no float32 tensor (read from the
safetensors headers themselves), and the packed runtime holds them in 16 bits while its log-probabilities still
match a float64 computation of the checkpoint's own weights.

Tolerance of the float64 check: the runtime computes in bfloat16 (8 significant bits) end to end, so each
logit carries a relative error of a few 2**-8. Measured on this tiny model: mean KL to the float64
distributions 8e-7 nats, top-10 log-probabilities within 0.006; the test allows 1e-5 and 0.03 (about 10x
and 5x), far below what a tensor read wrongly or a dropped bias would cost.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from teeny_core.testing import header_dtypes

torch = pytest.importorskip("torch")

from teeny_core.modeling import Artifact, ModelSource

IDS = [[(7 * i + 3) % 500 + 1 for i in range(40)], [(11 * i + 5) % 500 + 1 for i in range(40)]]
METHODS = [("rtn", {"bits": 4, "group_size": 32}), ("gptq", {"bits": 4, "group_size": 32}),
           ("awq", {"bits": 4, "group_size": 32})]


@pytest.fixture(scope="module")
def bf16_model(tiny_model, tmp_path_factory):
    """A tiny Qwen2 (tied embeddings, q/k/v biases) saved in bfloat16, as real checkpoints are."""
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("bf16-qwen2")
    src = tiny_model("qwen2")
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    with torch.no_grad():  # a fresh Qwen2 has zero biases, which would hide a bias kept in float32
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(0.2 * torch.randn_like(p))
    model.save_pretrained(out, safe_serialization=True)
    for f in src.glob("*token*"):
        (out / f.name).write_bytes(f.read_bytes())
    return out


def quantize(plugins, method: str, options: dict, source: ModelSource, out: Path) -> Artifact:
    cls = plugins.get("quantizer", method)
    calibration = None
    if cls.needs_calibration(cls.Options.from_mapping(options)):
        code = plugins.get("calibrator", "code")
        calibration = code().samples(source.load_tokenizer(), code.Options.from_mapping({"samples": 4, "seq_len": 32}),
                                     seed=0)
    out.mkdir()
    return cls().quantize(source, calibration, cls.Options.from_mapping(options), out)


@pytest.mark.parametrize("method,options", METHODS, ids=[m for m, _ in METHODS])
def test_artifact_of_a_bf16_model_holds_no_float32_tensor(teeny_plugins, bf16_model, tmp_path, method, options):
    artifact = quantize(teeny_plugins, method, options, ModelSource(str(bf16_model)), tmp_path / "a")
    dtypes = header_dtypes(artifact.path)
    assert any(name.endswith(".qweight") for name in dtypes)  # packed, not a float copy
    assert "F32" not in dtypes.values(), sorted(n for n, d in dtypes.items() if d == "F32")
    floats = {n for n, d in dtypes.items() if d in ("BF16", "F16")}
    assert {"model.embed_tokens.weight", "model.norm.weight", "model.layers.0.input_layernorm.weight"} <= floats
    assert json.loads((artifact.path / "config.json").read_text())["dtype"] == "bfloat16"


def test_packed_runtime_holds_16_bits_and_matches_float64(teeny_plugins, bf16_model, tmp_path):
    from teeny_core.builtin.transformers_runtime import TransformersRuntime
    from teeny_core.formats.gptq import dequantized_state_dict
    from transformers import AutoConfig, AutoModelForCausalLM

    artifact = quantize(teeny_plugins, "rtn", {"bits": 4, "group_size": 32}, ModelSource(str(bf16_model)),
                        tmp_path / "a")
    loaded = TransformersRuntime().load(artifact, TransformersRuntime.Options.from_mapping({"device": "cpu"}))
    assert loaded.load_facts()["kernels"] == "packed" and loaded.load_facts()["packed_layers"] > 0
    params = dict(loaded.model.named_parameters())
    assert params and all(p.dtype == torch.bfloat16 for p in params.values())
    packed_buffers = [b for n, b in loaded.model.named_buffers() if ".scale" in n or n.endswith(".bias")]
    assert packed_buffers and all(b.dtype == torch.bfloat16 for b in packed_buffers)
    got = loaded.logprobs(IDS).double()
    loaded.close()

    config = AutoConfig.from_pretrained(artifact.path)
    del config.quantization_config
    reference = AutoModelForCausalLM.from_config(config, dtype=torch.float64).eval()
    state = {k: v.double() if v.is_floating_point() else v for k, v in dequantized_state_dict(artifact.path).items()}
    reference.load_state_dict(state, strict=False)
    reference.tie_weights()
    with torch.no_grad():
        expected = torch.log_softmax(reference(input_ids=torch.tensor(IDS)).logits, dim=-1)
    kl = float((expected.exp() * (expected - got)).sum(-1).mean())
    top = expected.topk(10, dim=-1).indices
    worst = float((expected.gather(-1, top) - got.gather(-1, top)).abs().max())
    assert kl < 1e-5 and worst < 0.03, (kl, worst)
