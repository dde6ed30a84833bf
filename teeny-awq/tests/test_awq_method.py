"""The AWQ method on tiny Llama, Qwen2 and Gemma3 models: function-preserving scaling, beating RTN, errors."""

import copy

import pytest
import torch

from teeny_awq.algorithm import AwqSettings, quantize_model
from teeny_core.errors import TeenyError
from teeny_core.modeling import decoder_layers, linear_layers
from teeny_core.quant import dequantize_weight, quantize_weight

ARCHS = ("llama", "qwen2", "gemma3")


@pytest.fixture(scope="module", autouse=True)
def awq_method_one_thread():
    """Tiny matrices: one thread is faster and immune to other jobs contending for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def awq_windows(tiny_tokenizer):
    """Windows of 128 tokens of the tokenizer's own corpus: even ones calibrate, odd ones are held out."""
    from teeny_core.testing import _corpus

    ids = tiny_tokenizer.encode("".join(_corpus()))[: 32 * 128]
    windows = torch.tensor(ids).reshape(32, 128)
    return windows[0::2][:8], windows[1::2][:8]


def load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def kl_float64(reference, model, ids) -> float:
    """Mean KL(reference || model) over all positions, in float64."""
    with torch.no_grad():
        p = reference(ids).logits.double().log_softmax(-1)
        q = model(ids).logits.double().log_softmax(-1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def rtn(model, bits=4, group_size=128):
    """Round-to-nearest of every decoder linear with the core's asymmetric group quantizer."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for layer in decoder_layers(out):
            for linear in linear_layers(layer).values():
                q, scale, zero = quantize_weight(linear.weight, bits, "asym", "group", group_size)
                linear.weight.copy_(dequantize_weight(q, scale, zero))
    return out


def with_outlier_channels(model, factor=20.0, per_norm=4, seed=1):
    """Scale a few channels of every norm feeding q/k/v and gate/up, as real LLMs' activation outliers do."""
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in decoder_layers(out):
            mlp_norm = getattr(layer, "pre_feedforward_layernorm", None) or layer.post_attention_layernorm
            for norm in (layer.input_layernorm, mlp_norm):
                ch = torch.randperm(norm.weight.numel(), generator=g)[:per_norm]
                offset = 1.0 if "Gemma" in type(norm).__name__ else 0.0
                norm.weight[ch] = (norm.weight[ch] + offset) * factor - offset
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_scaling_alone_keeps_the_float_model(arch, tiny_model, awq_windows):
    calib, held = awq_windows
    base = with_outlier_channels(load(tiny_model(arch)))  # large scales make folding mistakes visible
    scaled = copy.deepcopy(base)
    quantize_model(scaled, calib, AwqSettings(group_size=32), quantize=False)
    changed = [n for n, p in scaled.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n])]
    assert any("layernorm" in n for n in changed) and any("v_proj" in n or "up_proj" in n for n in changed)
    with torch.no_grad():
        diff = (scaled(held).logits - base(held).logits).abs().max()
    assert float(diff) < 1e-5


@pytest.mark.parametrize("arch", ARCHS)
def test_awq_beats_rtn_at_4_bits(arch, tiny_model, awq_windows):
    calib, held = awq_windows
    base = load(tiny_model(arch))
    awq = copy.deepcopy(base)
    weights = quantize_model(awq, calib, AwqSettings())
    assert len(weights) == 7 * len(decoder_layers(base))  # every decoder linear, lm_head skipped
    kl_awq, kl_rtn = kl_float64(base, awq, held), kl_float64(base, rtn(base), held)
    assert 0 < kl_awq < kl_rtn


@pytest.mark.parametrize("arch", ARCHS)
def test_awq_clearly_beats_rtn_with_outlier_channels(arch, tiny_model, awq_windows):
    calib, held = awq_windows
    base = with_outlier_channels(load(tiny_model(arch)))
    awq = copy.deepcopy(base)
    quantize_model(awq, calib, AwqSettings(group_size=32))
    kl_awq, kl_rtn = kl_float64(base, awq, held), kl_float64(base, rtn(base, group_size=32), held)
    assert kl_awq < 0.7 * kl_rtn


def test_quantized_weights_are_what_the_model_holds(tiny_model, awq_windows):
    calib, _ = awq_windows
    model = load(tiny_model("qwen2"))
    weights = quantize_model(model, calib, AwqSettings(bits=3, group_size=64, zero_point=False))
    modules = dict(model.named_modules())
    for name, qw in weights.items():
        assert int(qw.q.min()) >= 0 and int(qw.q.max()) <= 7
        assert torch.equal(qw.zero, torch.full_like(qw.zero, 4.0))  # symmetric: zero at 2**(bits-1)
        assert torch.equal(qw.scale, qw.scale.half().float())  # scales an fp16 tensor stores exactly
        assert torch.equal(modules[name].weight, qw.weight())


def test_group_size_that_does_not_divide_is_a_one_line_error(tiny_model, awq_windows):
    calib, _ = awq_windows
    model = load(tiny_model("llama"))
    with pytest.raises(TeenyError, match=r"group_size=48 does not divide the input width 128 of model\.layers\.0\."):
        quantize_model(model, calib, AwqSettings(group_size=48))


def test_skipped_layers_stay_float(tiny_model, awq_windows):
    calib, _ = awq_windows
    model = load(tiny_model("llama"))
    weights = quantize_model(model, calib, AwqSettings(skip=("lm_head", "*.mlp.down_proj")))
    assert weights and not any(n.endswith("down_proj") for n in weights)
    down = model.model.layers[0].mlp.down_proj.weight
    assert len(torch.unique(down[0, :128])) > 16  # not on a 4-bit grid


def test_fake_quantize_equals_the_stored_grid():
    from teeny_awq.algorithm import fake_quantize, quantize_grouped

    w = torch.randn(16, 96, generator=torch.Generator().manual_seed(3))
    clip = torch.rand(16, 3, generator=torch.Generator().manual_seed(4)) * 0.5 + 0.5
    for bits, zero_point, c in ((4, True, None), (3, False, 0.8), (5, True, clip)):
        assert torch.equal(fake_quantize(w, bits, 32, zero_point, c), quantize_grouped(w, bits, 32, zero_point, c).weight())
