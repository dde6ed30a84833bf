"""The w8a8 quantizer: SmoothQuant folded without changing the float function, a compressed-tensors checkpoint
transformers loads, executed with int8 matrix products, and one-line refusals of bad input."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from teeny_core.cli import cli
from teeny_core.testing import QuantizerContract

torch = pytest.importorskip("torch")


class TestW8A8Contract(QuantizerContract):
    method = "w8a8"
    options = {"alpha": "0.5"}


def _calibration(source_dir, samples: int = 8, seq_len: int = 48):
    from teeny_core.plugins import Plugins
    from teeny_core import ModelSource

    cls = Plugins.load().get("calibrator", "random-tokens")
    tok = ModelSource(str(source_dir)).load_tokenizer()
    return cls().samples(tok, cls.Options.from_mapping({"samples": samples, "seq_len": seq_len}), seed=0)


def _quantize(source_dir, out, **options):
    from teeny_core import ModelSource
    from teeny_w8a8.quantizer import W8A8Options, W8A8Quantizer

    out.mkdir()
    opts = W8A8Options.from_mapping(options, where="w8a8")
    return W8A8Quantizer().quantize(ModelSource(str(source_dir)), _calibration(source_dir), opts, out)


def _logprobs(model, ids):
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits.float(), -1)


IDS = list(range(3, 40))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("alpha", [0.5, "auto"])
def test_smoothing_moves_outliers_and_keeps_the_float_function(tiny_model, tmp_path, arch, alpha):
    """Only the smoothing (no rounding), streamed through the walker: the written float model must compute what
    the original does (norm folds, Gemma's 1 + w norms, v_proj -> o_proj under grouped-query attention, up_proj ->
    down_proj), while the largest channel of each group's input stands out less."""
    from transformers import AutoModelForCausalLM

    from teeny_core.walker import ShardWriter, Solved, copy_side_files, walk
    from teeny_w8a8.smooth import SmoothSettings, smooth_layer

    src = tiny_model(arch)
    report = {}

    def smooth_only(work):
        with torch.no_grad():
            report.update(smooth_layer(work, SmoothSettings(alpha=alpha)))
        return Solved()

    out = tmp_path / "smoothed"
    writer = ShardWriter(out)
    copy_side_files(src, out)
    facts = walk(src, smooth_only, writer, calibration_ids=_calibration(src).tensor(), progress=False)
    writer.close()
    facts["config"].save_pretrained(out)
    original = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    smoothed = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert torch.allclose(_logprobs(smoothed, IDS), _logprobs(original, IDS), atol=2e-4, rtol=0)
    groups = [g for g in report.values() if "alpha" in g]
    assert len(groups) == 4 * 2  # four groups per layer, two layers
    assert all(g["alpha"] in [i / 10 for i in range(11)] for g in groups)
    if alpha == 0.5:
        assert all(g["act_ratio_after"] < g["act_ratio_before"] for g in groups if g["act_ratio_before"] > 1.5)


@pytest.fixture(scope="module")
def w8a8_dir(tiny_model, tmp_path_factory):
    return _quantize(tiny_model("llama"), tmp_path_factory.mktemp("w8a8") / "art", alpha="auto").path


def test_the_checkpoint_is_compressed_tensors_w8a8_and_transformers_reads_its_weights(w8a8_dir, tiny_model):
    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig

    from teeny_core.builtin.transformers_runtime import TransformersOptions, TransformersRuntime
    from teeny_core.checkpoints import open_checkpoint
    from teeny_core.int8 import Int8Linear

    qcfg = json.loads((w8a8_dir / "config.json").read_text())["quantization_config"]
    assert qcfg["quant_method"] == "compressed-tensors" and qcfg["format"] == "int-quantized"
    assert qcfg["ignore"] == ["lm_head"] and not (w8a8_dir / "quantize_config.json").exists()
    group = qcfg["config_groups"]["group_0"]
    assert group["weights"]["num_bits"] == 8 and group["weights"]["strategy"] == "channel"
    assert group["input_activations"] == {**group["input_activations"], "num_bits": 8, "dynamic": True,
                                          "strategy": "token", "type": "int"}
    loaded = TransformersRuntime().load(open_checkpoint(str(w8a8_dir)), TransformersOptions())
    assert loaded.load_facts()["kernel_layers"] == {"torch._int_mm": 14}
    reference = AutoModelForCausalLM.from_pretrained(w8a8_dir, dtype=torch.float32,
                                                     quantization_config=CompressedTensorsConfig(run_compressed=False))
    ours = dict(loaded.model.named_modules())
    checked = 0
    for name, module in reference.named_modules():
        if isinstance(ours.get(name), Int8Linear):
            assert ours[name].weight.abs().max() <= 127
            mine = ours[name].weight.float() * ours[name].weight_scale.t()
            assert torch.allclose(mine, module.weight.float(), rtol=0, atol=1e-6), name
            checked += 1
    assert checked == 14
    original = AutoModelForCausalLM.from_pretrained(tiny_model("llama"), dtype=torch.float32)
    ours_lp, ref_lp, float_lp = loaded.logprobs([IDS]), _logprobs(reference, IDS), _logprobs(original, IDS)
    kl = lambda p, q: float((p.exp() * (p - q)).sum(-1).mean())  # noqa: E731
    assert 0 < kl(float_lp, ours_lp) < 0.01  # int8 activations add a little to the weights' rounding...
    assert kl(float_lp, ref_lp) < kl(float_lp, ours_lp) * 10  # ...and transformers' float activations agree


def test_static_activations_write_and_use_a_calibrated_input_scale(tiny_model, tmp_path):
    from teeny_core.builtin.transformers_runtime import TransformersOptions, TransformersRuntime
    from teeny_core.checkpoints import open_checkpoint
    from teeny_core.formats.checkpoint import read_safetensors

    art = _quantize(tiny_model("qwen2"), tmp_path / "static", activations="static")
    tensors = read_safetensors(art.path / "model.safetensors")
    scales = {k: float(v) for k, v in tensors.items() if k.endswith("input_scale")}
    assert len(scales) == 14 and all(s > 0 for s in scales.values())
    group = json.loads((art.path / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"]
    assert group["input_activations"]["strategy"] == "tensor" and group["input_activations"]["dynamic"] is False
    loaded = TransformersRuntime().load(open_checkpoint(str(art.path)), TransformersOptions())
    q = loaded.model.model.layers[0].self_attn.q_proj
    assert float(q.input_scale) == scales["model.layers.0.self_attn.q_proj.input_scale"]
    assert bool(loaded.logprobs([IDS]).isfinite().all())


def test_gptq_weights_come_from_teeny_gptq_s_solver(tiny_model, tmp_path):
    pytest.importorskip("teeny_gptq")
    from teeny_core.formats.checkpoint import read_safetensors

    rtn = read_safetensors(_quantize(tiny_model("llama"), tmp_path / "rtn", smooth=False).path / "model.safetensors")
    gptq = read_safetensors(_quantize(tiny_model("llama"), tmp_path / "gptq", smooth=False, weights="gptq").path
                            / "model.safetensors")
    key = "model.layers.1.mlp.down_proj.weight"
    assert gptq[key].dtype == torch.int8 and gptq[key].shape == rtn[key].shape
    assert not torch.equal(gptq[key], rtn[key])  # error feedback moved some codes off the nearest ones


def test_quantize_then_eval_runs_int8_products(tiny_model, tmp_path):
    src = str(tiny_model("llama"))
    r = CliRunner().invoke(cli, ["quantize", src, "-m", "w8a8", "--out", str(tmp_path / "art"),
                                 "-c", "samples=4", "-c", "seq_len=32"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["eval", str(tmp_path / "art"), "-b", "fidelity", "-o", "chunks=2", "-o",
                                 "chunk_len=32", "--reference", src, "--out", str(tmp_path / "eval")])
    assert r.exit_code == 0, r.output
    assert "kernels: {'torch._int_mm': 14}" in r.output
    profile = json.loads((tmp_path / "eval" / "profile.json").read_text())
    assert profile["load"]["runtime"]["kernel_layers"] == {"torch._int_mm": 14}


@pytest.mark.parametrize("arch,options,message", [
    ("llama", ["alpha=1.5"], "w8a8: alpha='1.5' is not a number in [0, 1] or 'auto'"),
    ("llama", ["alpha=much"], "w8a8: alpha='much' is not a number in [0, 1] or 'auto'"),
    ("llama", ["format=fp8"], "w8a8: format=fp8 refused: FP8 needs a CUDA GPU with FP8 tensor cores "
                              "(compute capability 8.9+); the device is cpu"),
    ("qwen2_moe", [], "w8a8: mixture-of-experts layers (qwen2_moe) are not supported"),
])
def test_bad_input_is_one_error_line_and_nothing_written(tiny_model, tmp_path, arch, options, message):
    out = tmp_path / "art"
    args = ["quantize", str(tiny_model(arch)), "-m", "w8a8", "--out", str(out), "--device", "cpu",
            "-c", "samples=2", "-c", "seq_len=16"]
    for o in options:
        args += ["-o", o]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2 and r.output.startswith("Error: ") and message in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())


def test_a_group_with_no_norm_or_linear_before_it_is_refused(tiny_model):
    from transformers import AutoModelForCausalLM

    from teeny_core.arch import Group, spec_for
    from teeny_core import TeenyError
    from teeny_w8a8.smooth import _producer

    orphan = Group(("self_attn.q_proj",), "self_attn.no_such_module", "self_attn")
    layer = AutoModelForCausalLM.from_pretrained(tiny_model("llama")).model.layers[0]
    with pytest.raises(TeenyError, match="has no norm or linear before it .* use smooth=false") as info:
        _producer(layer, orphan, spec_for("llama"))
    assert "\n" not in str(info.value)


def _static_w8a8_error(x, w, act_max, alpha):
    """float64 reference: the mean squared error of one smoothed linear with int8 weights per channel and int8
    activations under the static per-tensor scale max(act_max / s) / 127."""
    x, w, act_max = x.double(), w.double(), act_max.double()
    s = (act_max.clamp_min(1e-5) ** alpha / w.abs().amax(0).clamp_min(1e-5) ** (1 - alpha)).clamp_min(1e-5)
    xs, ws = x / s, w * s
    sx = (act_max / s).max() / 127
    sw = ws.abs().amax(1, keepdim=True) / 127
    y = (torch.round(xs / sx).clamp(-128, 127) * sx) @ (torch.round(ws / sw).clamp(-127, 127) * sw).t()
    return float((y - x @ w.t()).pow(2).mean())


def test_alpha_auto_under_static_activations_scores_the_static_scale():
    """With one activation scale per tensor an outlier channel crushes every other channel's resolution, so
    the static search must score candidates with that scale (not per token) and pick the float64 reference's
    best alpha, well above 0."""
    from teeny_w8a8.smooth import ALPHA_GRID, search_alpha

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 64, generator=gen)
    x[:, 3] *= 60.0  # one outlier channel, as in LLM activations
    x[::7] *= 4.0  # and tokens of different magnitude, which per-token scales absorb but a static one cannot
    w = torch.randn(32, 64, generator=gen) / 8
    act_max = x.abs().amax(0)
    errors = {a: _static_w8a8_error(x, w, act_max, a) for a in ALPHA_GRID}
    alpha, s = search_alpha(x, act_max, [w], static=True)
    assert alpha == min(errors, key=errors.get)
    assert alpha >= 0.3 and errors[alpha] < 0.5 * errors[0.0]
    assert torch.allclose(s.double(), (act_max.double() ** alpha / w.double().abs().amax(0) ** (1 - alpha)).float()
                          .double(), rtol=1e-5)
