"""The `awq` quantizer end to end: hf-awq checkpoints (bit-exact with the quantizer), hf fake-quant, errors."""

import json

import pytest
import torch

from teeny_core.errors import TeenyError
from teeny_core.formats.awq import dequantized_state_dict
from teeny_core.modeling import Artifact, ModelSource
from teeny_core.testing import QuantizerContract
from teeny_core.types import CalibrationSet


@pytest.fixture(scope="module", autouse=True)
def awq_checkpoint_one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def awq_calibration(tiny_tokenizer):
    from teeny_core.testing import _corpus

    ids = tiny_tokenizer.encode("".join(_corpus()))[: 8 * 64]
    return CalibrationSet(name="corpus", samples=[ids[i:i + 64] for i in range(0, len(ids), 64)])


def quantize(teeny_plugins, path, calibration, out_dir, **options):
    cls = teeny_plugins.get("quantizer", "awq")
    out_dir.mkdir()
    opts = cls.Options.from_mapping({"device": "cpu", **options}, where="awq")
    return cls().quantize(ModelSource(str(path)), calibration, opts, out_dir)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "phi3", "qwen2_moe"])
def test_hf_awq_dequantizes_bit_exactly_to_the_quantizers_weights(arch, teeny_plugins, tiny_model, awq_calibration,
                                                                 tmp_path):
    """The packed checkpoint holds exactly the weights the fake-quant ``hf`` artifact stores (float32 here)."""
    from safetensors.torch import load_file

    packed = quantize(teeny_plugins, tiny_model(arch), awq_calibration, tmp_path / "awq", group_size=32)
    fake = quantize(teeny_plugins, tiny_model(arch), awq_calibration, tmp_path / "hf", group_size=32, format="hf")
    state = dequantized_state_dict(packed.path)
    own = load_file(str(fake.path / "model.safetensors"))
    assert set(state) == set(own)
    for key, value in state.items():  # quantized linears, norms (with folded scales), embeddings, biases
        assert torch.equal(value, own[key]), key
    assert packed.meta["quantized_layers"] == sorted(k[:-len(".qweight")] for k in _keys(packed.path)
                                                     if k.endswith(".qweight"))
    assert all(f"{name}.weight" in own for name in packed.meta["quantized_layers"])


def _keys(directory):
    from safetensors import safe_open

    with safe_open(str(directory / "model.safetensors"), "pt") as f:
        return set(f.keys())


def test_quantizer_writes_a_standard_awq_checkpoint(teeny_plugins, tiny_model, awq_calibration, tmp_path):
    from safetensors import safe_open

    artifact = quantize(teeny_plugins, tiny_model("qwen2"), awq_calibration, tmp_path / "awq", group_size=64)
    assert artifact.format == "hf-awq" and Artifact.open(artifact.path).format == "hf-awq"
    config = json.loads((artifact.path / "config.json").read_text())
    qc = config["quantization_config"]
    assert (qc["quant_method"], qc["version"], qc["bits"], qc["group_size"], qc["zero_point"]) == \
        ("awq", "gemm", 4, 64, True)
    assert "lm_head" in qc["modules_to_not_convert"]
    with safe_open(str(artifact.path / "model.safetensors"), "pt") as f:
        q = f.get_tensor("model.layers.0.self_attn.q_proj.qweight")
        z = f.get_tensor("model.layers.0.self_attn.q_proj.qzeros")
        s = f.get_tensor("model.layers.0.self_attn.q_proj.scales")
        assert "model.layers.0.self_attn.q_proj.bias" in f.keys()
        assert "model.layers.0.self_attn.q_proj.weight" not in f.keys()
    assert (q.dtype, tuple(q.shape)) == (torch.int32, (128, 16))  # [in, out/8]
    assert (z.dtype, tuple(z.shape)) == (torch.int32, (2, 16))  # [groups, out/8]
    assert (s.dtype, tuple(s.shape)) == (torch.float16, (2, 128))  # [groups, out]
    assert 3.5 < artifact.meta["bits_per_weight"] < 16


def test_hf_awq_and_fake_quant_hf_load_to_the_same_model(teeny_plugins, tiny_model, awq_calibration, tmp_path):
    awq = quantize(teeny_plugins, tiny_model("gemma3"), awq_calibration, tmp_path / "awq", group_size=32)
    fake = quantize(teeny_plugins, tiny_model("gemma3"), awq_calibration, tmp_path / "hf", group_size=32, format="hf")
    assert fake.format == "hf"
    runtime = teeny_plugins.runtime_for("hf-awq")
    ids = [list(range(5, 37))]
    lp_awq = runtime().load(awq, runtime.Options.from_mapping({"kernels": "dequant"})).logprobs(ids)
    lp_fake = runtime().load(fake, runtime.Options()).logprobs(ids)
    assert torch.allclose(lp_awq, lp_fake, atol=1e-5, rtol=0)


def test_option_errors_are_one_line(teeny_plugins, tiny_model, awq_calibration, tmp_path):
    from teeny_core.options import OptionsError

    cls = teeny_plugins.get("quantizer", "awq")
    with pytest.raises(OptionsError, match=r"bits=9 is out of range; expected int in 2..8"):
        cls.Options.from_mapping({"bits": 9}, where="awq")
    with pytest.raises(TeenyError, match="bits=3 cannot be written as hf-awq"):
        quantize(teeny_plugins, tiny_model("llama"), awq_calibration, tmp_path / "a", bits=3)
    with pytest.raises(TeenyError, match="awq needs calibration data"):
        quantize(teeny_plugins, tiny_model("llama"), None, tmp_path / "b")
    with pytest.raises(TeenyError, match=r"group_size=96 does not divide the input width 128 of model\.layers\.0\."):
        quantize(teeny_plugins, tiny_model("llama"), awq_calibration, tmp_path / "c", group_size=96)
    with pytest.raises(TeenyError, match="architecture 'gpt2' is not supported for layer-by-layer quantization"):
        quantize(teeny_plugins, _gpt2(tmp_path / "gpt2"), awq_calibration, tmp_path / "d")


def test_three_bits_as_fake_quant_hf(teeny_plugins, tiny_model, awq_calibration, tmp_path):
    from safetensors.torch import load_file

    artifact = quantize(teeny_plugins, tiny_model("llama"), awq_calibration, tmp_path / "hf", bits=3,
                        group_size=32, format="hf")
    config = json.loads((artifact.path / "config.json").read_text())
    assert config["teeny_quantization"]["bits"] == 3 and "quantization_config" not in config
    w = load_file(str(artifact.path / "model.safetensors"))["model.layers.1.mlp.down_proj.weight"]
    assert all(len(torch.unique(group)) <= 8 for group in w[:4].reshape(-1, 32))  # 3 bits: <= 8 levels a group


class TestAwqContract(QuantizerContract):
    method = "awq"
    options = {"group_size": 32, "grid": 4, "device": "cpu"}
    arch = "gemma3"


def test_unpackable_width_is_refused_before_any_work(teeny_plugins, tiny_tokenizer, awq_calibration, tmp_path):
    import transformers

    config = transformers.LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=100,
                                      num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "odd")
    tiny_tokenizer.save_pretrained(tmp_path / "odd")
    with pytest.raises(TeenyError, match="gate_proj has 100 output features, not a multiple of 8"):
        quantize(teeny_plugins, tmp_path / "odd", awq_calibration, tmp_path / "out", group_size=4)
    artifact = quantize(teeny_plugins, tmp_path / "odd", awq_calibration, tmp_path / "hf", group_size=4,
                        format="hf", grid=2)  # any width works dequantized
    assert artifact.format == "hf"


def _gpt2(path):
    import transformers

    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=600)
    transformers.GPT2LMHeadModel(config).save_pretrained(path)
    return path
