"""Interoperability: GPTQModel loads our hf-gptq checkpoint and computes the same next-token distributions.

Runs only where gptqmodel is importable (the optional extra teeny-gptq[gptqmodel], usually its own venv):
    GPTQMODEL_VENV/bin/python -m pytest teeny-gptq/tests/test_gptq_gptqmodel_crosscheck.py -q
"""

import importlib.util
import json

import pytest
import torch

from teeny_core import Artifact, ModelSource

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gptqmodel") is None,
                                reason="gptqmodel is not installed (optional extra teeny-gptq[gptqmodel])")


# GPTQModel refuses asymmetric v1 checkpoints that it did not write itself (its guard against AutoGPTQ's old
# zero-point bug), so the cross-check covers symmetric grids, with and without act-order.
@pytest.mark.parametrize("sym,desc_act", [(True, False), (True, True)])
def test_gptqmodel_loads_our_checkpoint_with_matching_logits(teeny_plugins, tiny_model, tmp_path, sym, desc_act):
    from gptqmodel import BACKEND, GPTQModel
    from transformers import AutoModelForCausalLM

    path = tiny_model("llama")
    out = tmp_path / "artifact"
    artifact, cal = _quantize_gptq(teeny_plugins, path, out, {"bits": 4, "group_size": 32, "sym": sym,
                                                              "desc_act": desc_act})

    runtime = teeny_plugins.get("runtime", "transformers")
    ours = runtime().load(Artifact.open(artifact.path), runtime.Options.from_mapping({"device": "cpu"}))
    ids = cal.samples[:2]
    expected = ours.logprobs(ids).double()
    ours.close()

    theirs = GPTQModel.load(str(artifact.path), device="cpu", backend=BACKEND.TORCH)
    with torch.no_grad():
        got = torch.log_softmax(theirs.model(input_ids=torch.tensor(ids)).logits.double(), dim=-1)
        original = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        reference = torch.log_softmax(original(input_ids=torch.tensor(ids)).logits.double(), dim=-1)

    def kl(p, q):
        return float((p.exp() * (p - q)).sum(-1).mean())

    # GPTQModel's CPU kernel computes in bfloat16: its distributions may differ from ours only by that
    # rounding, far less than quantization moved them away from the original
    quantization_kl = kl(reference, expected)
    assert quantization_kl > 0
    assert kl(expected, got) < 0.1 * quantization_kl


def _quantize_gptq(teeny_plugins, path, out, options: dict):
    """The tiny model quantized by the gptq plugin with ``options`` and its calibration set (8 code windows of 64
    tokens)."""
    source = ModelSource(str(path))
    code = teeny_plugins.get("calibrator", "code")
    cal = code().samples(source.load_tokenizer(), code.Options.from_mapping({"samples": 8, "seq_len": 64}), seed=0)
    gptq = teeny_plugins.get("quantizer", "gptq")
    out.mkdir()
    return gptq().quantize(source, cal, gptq.Options.from_mapping(options), out), cal


def test_transformers_loads_our_default_gptq_checkpoint_with_matching_logits(teeny_plugins, tiny_model, tmp_path):
    """The README's claim for GPTQ's defaults in transformers (which reads GPTQ checkpoints through GPTQModel and
    optimum): our distributions up to its bfloat16 rounding."""
    pytest.importorskip("optimum", reason="transformers loads GPTQ checkpoints only with optimum installed")
    from transformers import AutoModelForCausalLM

    path = tiny_model("llama")
    artifact, _ = _quantize_gptq(teeny_plugins, path, tmp_path / "artifact", {"group_size": 32})
    expected, reference = _ours_and_reference(teeny_plugins, artifact, path, IDS)
    quantization_kl = _kl(reference, expected)
    assert quantization_kl > 0
    model = AutoModelForCausalLM.from_pretrained(artifact.path, device_map="cpu").eval()
    with torch.no_grad():
        got = torch.log_softmax(model(input_ids=torch.tensor(IDS)).logits.double(), dim=-1)
    assert _kl(expected, got) < 0.1 * quantization_kl


def test_gptqmodel_backend_writes_a_checkpoint_our_runtime_loads(teeny_plugins, tiny_model, tmp_path):
    import json

    from transformers import AutoModelForCausalLM

    path = tiny_model("llama")
    out = tmp_path / "artifact"
    artifact, cal = _quantize_gptq(teeny_plugins, path, out, {"bits": 4, "group_size": 32, "damp_percent": 0.02,
                                                              "backend": "gptqmodel", "device": "cpu"})
    assert artifact.format == "hf-gptq" and artifact.meta["backend"] == "gptqmodel"
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert cfg["bits"] == 4 and cfg["group_size"] == 32 and cfg["meta"]["damp_percent"] == 0.02
    # GPTQModel 7.6+ reorders columns group-aware unless told not to; native GPTQ does not, so neither may this
    assert not cfg["meta"].get("act_group_aware", False)

    runtime = teeny_plugins.get("runtime", "transformers")
    loaded = runtime().load(Artifact.open(out), runtime.Options.from_mapping({"device": "cpu"}))
    ids = cal.samples[:2]
    got = loaded.logprobs(ids).double()
    loaded.close()
    with torch.no_grad():
        original = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        reference = torch.log_softmax(original(input_ids=torch.tensor(ids)).logits.double(), dim=-1)
    kl = float((reference.exp() * (reference - got)).sum(-1).mean())
    assert 0 < kl < 0.05  # a working 4-bit model, not a misread checkpoint (those give KL of order 1)


def _kl(p, q) -> float:
    return float((p.exp() * (p - q)).sum(-1).mean())


def _rtn(teeny_plugins, path, out, **options):
    rtn = teeny_plugins.get("quantizer", "rtn")
    out.mkdir()
    return rtn().quantize(ModelSource(str(path)), None, rtn.Options.from_mapping({"group_size": 32, **options}), out)


def _ours_and_reference(teeny_plugins, artifact, path, ids):
    from transformers import AutoModelForCausalLM

    runtime = teeny_plugins.get("runtime", "transformers")
    ours = runtime().load(Artifact.open(artifact.path), runtime.Options.from_mapping({"device": "cpu"}))
    expected = ours.logprobs(ids).double()
    ours.close()
    with torch.no_grad():
        original = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        reference = torch.log_softmax(original(input_ids=torch.tensor(ids)).logits.double(), dim=-1)
    return expected, reference


IDS = [[(7 * i + 3) % 500 + 1 for i in range(48)], [(11 * i + 5) % 500 + 1 for i in range(48)]]


@pytest.mark.parametrize("loader", ["gptqmodel", "transformers"])
def test_rtn_default_checkpoint_loads_with_our_distributions(teeny_plugins, tiny_model, tmp_path, loader):
    """RTN's default (symmetric, GPTQ v1) is read by GPTQModel itself and by transformers (which loads GPTQ
    checkpoints through GPTQModel and optimum), each giving our distributions up to its bfloat16 rounding."""
    path = tiny_model("qwen2")
    artifact = _rtn(teeny_plugins, path, tmp_path / "rtn")
    config = json.loads((artifact.path / "config.json").read_text())["quantization_config"]
    assert config["sym"] is True and config["checkpoint_format"] == "gptq"
    expected, reference = _ours_and_reference(teeny_plugins, artifact, path, IDS)
    quantization_kl = _kl(reference, expected)
    assert quantization_kl > 0
    if loader == "gptqmodel":
        from gptqmodel import BACKEND, GPTQModel

        model = GPTQModel.load(str(artifact.path), device="cpu", backend=BACKEND.TORCH).model
    else:
        pytest.importorskip("optimum", reason="transformers loads GPTQ checkpoints only with optimum installed")
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(artifact.path, device_map="cpu").eval()
    with torch.no_grad():
        got = torch.log_softmax(model(input_ids=torch.tensor(IDS)).logits.double(), dim=-1)
    assert _kl(expected, got) < 0.1 * quantization_kl


def test_gptqmodel_refuses_an_asymmetric_v1_checkpoint_it_did_not_write(teeny_plugins, tiny_model, tmp_path):
    """Why RTN's default is symmetric: GPTQModel 7.6 loads ``sym: false`` with ``checkpoint_format: gptq`` only
    from its own ``meta.quantizer`` (its guard against AutoGPTQ's zero-point bug), and transformers reads GPTQ
    through GPTQModel; ``scheme=asym`` stays available for Teeny's own runtime, which decodes it exactly."""
    from gptqmodel import BACKEND, GPTQModel

    artifact = _rtn(teeny_plugins, tiny_model("llama"), tmp_path / "asym", scheme="asym")
    with pytest.raises(ValueError, match="sym=False"):
        GPTQModel.load(str(artifact.path), device="cpu", backend=BACKEND.TORCH)



def test_rtn_checkpoint_with_quantized_lm_head_loads_in_gptqmodel_with_our_distributions(teeny_plugins, tiny_model,
                                                                                        tmp_path):
    """``skip=[]`` (the demo's w4 variants, as a Q4_K_M file quantizes its output matrix) writes lm_head packed
    with ``lm_head: true``, the flag GPTQModel (and vLLM's GPTQ configs) read to build a quantized lm_head: the
    loaded lm_head is a quantized module, not a float one left at its random initialisation."""
    from gptqmodel import BACKEND, GPTQModel

    path = tiny_model("qwen2")
    artifact = _rtn(teeny_plugins, path, tmp_path / "rtn", skip=[])
    config = json.loads((artifact.path / "config.json").read_text())
    assert config["quantization_config"]["lm_head"] is True and config["tie_word_embeddings"] is False
    expected, reference = _ours_and_reference(teeny_plugins, artifact, path, IDS)
    quantization_kl = _kl(reference, expected)
    assert quantization_kl > 0
    model = GPTQModel.load(str(artifact.path), device="cpu", backend=BACKEND.TORCH).model
    assert hasattr(model.lm_head, "qweight")
    with torch.no_grad():
        got = torch.log_softmax(model(input_ids=torch.tensor(IDS)).logits.double(), dim=-1)
    assert _kl(expected, got) < 0.1 * quantization_kl


def test_transformers_does_not_read_a_quantized_lm_head(teeny_plugins, tiny_model, tmp_path):
    """Why the README says a checkpoint with lm_head quantized is for GPTQModel and vLLM: transformers 5 (through
    optimum) quantizes only the decoder's linears and leaves lm_head a float Linear that the packed tensors do
    not fill."""
    pytest.importorskip("optimum", reason="transformers loads GPTQ checkpoints only with optimum installed")
    from transformers import AutoModelForCausalLM

    artifact = _rtn(teeny_plugins, tiny_model("qwen2"), tmp_path / "rtn", skip=[])
    model = AutoModelForCausalLM.from_pretrained(artifact.path, device_map="cpu")
    assert type(model.lm_head) is torch.nn.Linear and not hasattr(model.lm_head, "qweight")
