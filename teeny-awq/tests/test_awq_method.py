"""The AWQ solver on the core's layer walker, on tiny models of every spec'd architecture: function-preserving
scaling, beating RTN, what is written is what was evaluated."""

import copy

import pytest
import torch

from teeny_awq.algorithm import AwqSettings, awq_solver
from teeny_core.arch import spec_for
from teeny_core.modeling import decoder_layers
from teeny_core.quant import dequantize_weight, quantize_weight
from teeny_core.testing import corpus_windows

ARCHS = ("llama", "qwen2", "gemma3", "mistral", "phi3", "qwen2_moe")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def awq_windows(tiny_tokenizer):
    """Windows of 128 tokens of the tokenizer's own corpus: even ones calibrate, odd ones are held out."""
    windows = torch.tensor(corpus_windows(tiny_tokenizer, 32, 128))
    return windows[0::2][:8], windows[1::2][:8]


def load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def awq(path, ids, settings, out_dir, quantize=True):
    """Walk the model at ``path`` through the AWQ solver into a dequantized HF directory; returns the loaded
    result and the quantized weight of every linear."""
    from teeny_core.walker import ShardWriter, walk

    weights = {}

    def keep(name, qw):
        weights[name] = qw
        return {}

    writer = ShardWriter(out_dir)
    facts = walk(path, awq_solver(settings, keep, quantize=quantize), writer, calibration_ids=ids,
                 batch_size=settings.batch_size, progress=False)
    writer.close()
    assert len(facts["layer_seconds"]) == facts["config"].num_hidden_layers and min(facts["layer_seconds"]) > 0
    facts["config"].save_pretrained(out_dir)
    return load(out_dir), weights


def spec_linears(model):
    spec = spec_for(model.config.model_type)
    return [layer.get_submodule(n) for layer in decoder_layers(model) for n in spec.linears()]


def kl_float64(reference, model, ids) -> float:
    """Mean KL(reference || model) over all positions, in float64."""
    with torch.no_grad():
        p = reference(ids).logits.double().log_softmax(-1)
        q = model(ids).logits.double().log_softmax(-1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def rtn(model, bits=4, group_size=128):
    """Round-to-nearest of every linear AWQ quantizes, with the core's asymmetric group quantizer."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for linear in spec_linears(out):
            q, scale, zero = quantize_weight(linear.weight, bits, "asym", "group", group_size)
            linear.weight.copy_(dequantize_weight(q, scale, zero))
    return out


def with_outlier_channels(model, out_dir, factor=20.0, per_norm=4, seed=1):
    """Scale a few channels of every norm feeding a group of linears, as real LLMs' activation outliers do;
    saved to ``out_dir``. Returns the model and its directory."""
    spec = spec_for(model.config.model_type)
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in decoder_layers(out):
            for prev in dict.fromkeys(group.prev for group in spec.groups):
                norm = layer.get_submodule(prev)
                if isinstance(norm, torch.nn.Linear):
                    continue
                ch = torch.randperm(norm.weight.numel(), generator=g)[:per_norm]
                norm.weight[ch] = (norm.weight[ch] + spec.norm_offset) * factor - spec.norm_offset
    out.save_pretrained(out_dir)
    return out, out_dir


@pytest.mark.parametrize("arch", ARCHS)
def test_scaling_alone_keeps_the_float_model(arch, tiny_model, awq_windows, tmp_path):
    calib, held = awq_windows
    # large scales make folding mistakes visible
    base, path = with_outlier_channels(load(tiny_model(arch)), tmp_path / "outliers")
    scaled, _ = awq(path, calib, AwqSettings(group_size=32), tmp_path / "scaled", quantize=False)
    own = dict(base.named_parameters())
    changed = [n for n, p in scaled.named_parameters() if not torch.equal(p, own[n])]
    producers = ("v_proj", "up_proj", "qkv_proj", "gate_up_proj")  # where o_proj's and down_proj's scales fold
    assert any("layernorm" in n for n in changed) and any(n.endswith(f"{p}.weight") for n in changed for p in producers)
    if arch == "qwen2_moe":  # the router and routed experts read the scaled norm: their columns carry the scales
        assert {"model.layers.0.mlp.gate.weight", "model.layers.0.mlp.experts.gate_up_proj"} <= set(changed)
    with torch.no_grad():
        diff = (scaled(held).logits - base(held).logits).abs().max()
    assert float(diff) < 1e-5


@pytest.mark.parametrize("arch", ARCHS)
def test_awq_beats_rtn_at_4_bits(arch, tiny_model, awq_windows, tmp_path):
    calib, held = awq_windows
    base = load(tiny_model(arch))
    quantized, weights = awq(tiny_model(arch), calib, AwqSettings(), tmp_path)
    assert len(weights) == len(spec_linears(base))  # every spec'd decoder linear, lm_head skipped
    kl_awq, kl_rtn = kl_float64(base, quantized, held), kl_float64(base, rtn(base), held)
    assert 0 < kl_awq < kl_rtn


@pytest.mark.parametrize("arch", ARCHS)
def test_awq_clearly_beats_rtn_with_outlier_channels(arch, tiny_model, awq_windows, tmp_path):
    calib, held = awq_windows
    base, path = with_outlier_channels(load(tiny_model(arch)), tmp_path / "outliers")
    quantized, _ = awq(path, calib, AwqSettings(group_size=32), tmp_path / "awq")
    kl_awq, kl_rtn = kl_float64(base, quantized, held), kl_float64(base, rtn(base, group_size=32), held)
    assert kl_awq < 0.7 * kl_rtn


def test_quantized_weights_are_what_the_model_holds(tiny_model, awq_windows, tmp_path):
    calib, _ = awq_windows
    model, weights = awq(tiny_model("qwen2"), calib, AwqSettings(bits=3, group_size=64, zero_point=False), tmp_path)
    modules = dict(model.named_modules())
    assert weights
    for name, qw in weights.items():
        assert int(qw.q.min()) >= 0 and int(qw.q.max()) <= 7
        assert torch.equal(qw.zero, torch.full_like(qw.zero, 4.0))  # symmetric: zero at 2**(bits-1)
        assert torch.equal(qw.scale, qw.scale.half().float())  # scales an fp16 tensor stores exactly
        assert torch.equal(modules[name].weight, qw.weight())


def test_skipped_layers_stay_float(tiny_model, awq_windows, tmp_path):
    calib, _ = awq_windows
    model, weights = awq(tiny_model("llama"), calib, AwqSettings(skip=("lm_head", "*.mlp.down_proj")), tmp_path)
    assert weights and not any(n.endswith("down_proj") for n in weights)
    down = model.model.layers[0].mlp.down_proj.weight
    assert len(torch.unique(down[0, :128])) > 16  # not on a 4-bit grid


def test_fake_quantize_equals_the_stored_grid():
    from teeny_awq.algorithm import fake_quantize, quantize_grouped

    w = torch.randn(16, 96, generator=torch.Generator().manual_seed(3))
    clip = torch.rand(16, 3, generator=torch.Generator().manual_seed(4)) * 0.5 + 0.5
    for bits, zero_point, c in ((4, True, None), (3, False, 0.8), (5, True, clip)):
        assert torch.equal(fake_quantize(w, bits, 32, zero_point, c), quantize_grouped(w, bits, 32, zero_point, c).weight())
