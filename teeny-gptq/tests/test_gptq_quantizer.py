"""The gptq quantizer on tiny real-architecture models: quality against RTN, exact checkpoints, errors."""

import importlib.util
import json

import pytest
import torch

from teeny_core import Artifact, CalibrationSet, ModelSource, OptionsError, TeenyError
from teeny_core.quant import dequantize_weight, quantize_weight
from teeny_core.testing import QuantizerContract


def calibration_for(teeny_plugins, tokenizer, samples=16, seq_len=64, seed=0) -> CalibrationSet:
    cls = teeny_plugins.get("calibrator", "code")
    return cls().samples(tokenizer, cls.Options.from_mapping({"samples": samples, "seq_len": seq_len}), seed=seed)


def quantize(teeny_plugins, method, source, calibration, options, out):
    cls = teeny_plugins.get("quantizer", method)
    out.mkdir()
    parsed = cls.Options.from_mapping(options, where=method)
    return cls().quantize(source, calibration if cls.needs_calibration(parsed) else None, parsed, out)


def float64_kl(reference_logprobs, logprobs) -> float:
    """Mean over positions of KL(reference || quantized) of the next-token distributions, in float64."""
    p, q = reference_logprobs.double(), logprobs.double()
    return float((p.exp() * (p - q)).sum(-1).mean())


def test_gptq_has_lower_output_error_than_rtn_on_calibration_activations(teeny_plugins, tiny_model):
    from transformers import AutoModelForCausalLM

    from teeny_gptq.gptq import HessianAccumulator, gptq_quantize

    path = tiny_model("llama")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    cal = calibration_for(teeny_plugins, ModelSource(str(path)).load_tokenizer())
    layer = model.model.layers[0]
    linears = {"q_proj": layer.self_attn.q_proj, "o_proj": layer.self_attn.o_proj, "up_proj": layer.mlp.up_proj,
               "down_proj": layer.mlp.down_proj}
    inputs = {name: [] for name in linears}
    handles = [m.register_forward_pre_hook(lambda mod, inp, name=name: inputs[name].append(inp[0].reshape(
        -1, mod.in_features))) for name, m in linears.items()]
    with torch.no_grad():
        model(cal.tensor())
    for h in handles:
        h.remove()
    for name, linear in linears.items():
        X = torch.cat(inputs[name])
        acc = HessianAccumulator(linear.in_features)
        acc.add(X)
        W = linear.weight.detach()
        gptq = gptq_quantize(W, acc.H, bits=4, group_size=32, sym=False).w_hat
        rtn = dequantize_weight(*quantize_weight(W, 4, "asym", "group", 32))
        err_gptq = torch.linalg.norm(X.double() @ (W - gptq).T.double())
        err_rtn = torch.linalg.norm(X.double() @ (W - rtn).T.double())
        assert err_gptq < 0.95 * err_rtn, name


def test_gptq_has_lower_kl_divergence_than_rtn(teeny_plugins, tiny_model, tmp_path):
    path = tiny_model("llama")
    source = ModelSource(str(path))
    tokenizer = source.load_tokenizer()
    cal = calibration_for(teeny_plugins, tokenizer)
    held_out = calibration_for(teeny_plugins, tokenizer, samples=6, seed=99).samples
    runtime = teeny_plugins.get("runtime", "transformers")

    def logprobs(artifact):
        loaded = runtime().load(Artifact.open(artifact.path),
                            runtime.Options.from_mapping({"device": "cpu", "kernels": "dequant"}))
        try:
            return loaded.logprobs(held_out)
        finally:
            loaded.close()

    base = logprobs(quantize(teeny_plugins, "rtn", source, None, {"bits": 16, "dtype": "float32"}, tmp_path / "f"))
    gptq_art = quantize(teeny_plugins, "gptq", source, cal, {"bits": 4, "group_size": 32, "sym": False},
                        tmp_path / "gptq")
    rtn_art = quantize(teeny_plugins, "rtn", source, None, {"bits": 4, "group_size": 32, "scheme": "asym"},
                       tmp_path / "rtn")
    kl_gptq, kl_rtn = float64_kl(base, logprobs(gptq_art)), float64_kl(base, logprobs(rtn_art))
    assert 0 < kl_gptq < 0.9 * kl_rtn
    assert gptq_art.format == "hf-gptq" and gptq_art.meta["peak_rss_bytes"] > 0
    assert len(gptq_art.meta["quantized_layers"]) == 14 and not gptq_art.meta["damp_escalated"]


def test_checkpoint_dequantizes_bit_exactly_to_the_quantizers_weights(teeny_plugins, tiny_model, tmp_path):
    from teeny_core.formats.gptq import dequantized_state_dict
    from teeny_gptq.quantizer import GPTQOptions, quantize_native

    path = tiny_model("qwen2")  # tied embeddings, biases on q/k/v
    source = ModelSource(str(path))
    cal = calibration_for(teeny_plugins, source.load_tokenizer(), samples=8)
    opts = GPTQOptions.from_mapping({"bits": 3, "group_size": 32, "sym": False, "desc_act": True,
                                     "skip": ["lm_head", "model.layers.1.mlp.down_proj"]})
    (tmp_path / "a").mkdir()
    w_hat = {}
    artifact = quantize_native(source, cal, opts, tmp_path / "a",
                               on_linear=lambda name, outcome: w_hat.__setitem__(name, outcome.result.w_hat))
    state = dequantized_state_dict(artifact.path)
    model, _ = source.load(dtype="float32")
    with torch.no_grad():  # the model the quantizer's own weights describe
        for name, weight in w_hat.items():
            model.get_submodule(name).weight.copy_(weight)
    own = model.state_dict()
    quantized = artifact.meta["quantized_layers"]
    assert len(quantized) == 13 and "model.layers.1.mlp.down_proj" not in quantized
    for name in quantized:
        assert torch.equal(state[f"{name}.weight"], own[f"{name}.weight"]), name
        assert not torch.equal(state[f"{name}.weight"], torch.zeros_like(own[f"{name}.weight"]))
    for key, value in state.items():  # everything else is stored as it was
        assert torch.equal(value.float(), own[key].float()), key
    assert "lm_head.weight" not in state  # tied to the embeddings, saved once
    cfg = json.loads((artifact.path / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "gptq" and cfg["checkpoint_format"] == "gptq" and cfg["bits"] == 3
    assert cfg["desc_act"] is True and cfg["group_size"] == 32 and cfg["sym"] is False
    assert cfg["dynamic"] == {r"-:^model\.layers\.1\.mlp\.down_proj$": {}}
    # act-order without static groups: g_idx is a real permutation of groups
    from safetensors.torch import load_file
    g_idx = load_file(str(artifact.path / "model.safetensors"))["model.layers.0.self_attn.q_proj.g_idx"]
    assert not torch.equal(g_idx, torch.sort(g_idx).values) and torch.bincount(g_idx).tolist() == [32] * 4

    runtime = teeny_plugins.get("runtime", "transformers")
    loaded = runtime().load(Artifact.open(artifact.path),
                            runtime.Options.from_mapping({"device": "cpu", "kernels": "dequant"}))
    ids = cal.samples[:2]
    with torch.no_grad():
        expected = torch.log_softmax(model(torch.tensor(ids)).logits.float(), -1)
    assert torch.allclose(loaded.logprobs(ids), expected, atol=1e-5)
    loaded.close()


@pytest.mark.parametrize("arch", ["gemma3", "phi3", "qwen2_moe"])
def test_spec_groups_are_the_linears_that_share_an_input_in_execution_order(tiny_model, arch):
    from transformers import AutoModelForCausalLM

    from teeny_core.arch import spec_for

    model = AutoModelForCausalLM.from_pretrained(tiny_model(arch), dtype=torch.float32).eval()
    spec = spec_for(model.config.model_type)
    layer = model.model.layers[0]
    calls = []
    handles = [layer.get_submodule(n).register_forward_pre_hook(lambda m, inp, n=n: calls.append((n, inp[0])))
               for n in spec.linears()]
    with torch.no_grad():
        model(torch.arange(1, 17)[None])
    for h in handles:
        h.remove()
    observed: dict[int, list[str]] = {}
    for name, x in calls:  # the same input tensor object means a shared input
        observed.setdefault(id(x), []).append(name)
    assert list(observed.values()) == [list(g.linears) for g in spec.groups]


def test_bad_inputs_are_one_line_errors(teeny_plugins, tiny_model, tmp_path):
    from teeny_gptq.quantizer import GPTQOptions, GPTQQuantizer

    source = ModelSource(str(tiny_model("llama")))
    with pytest.raises(OptionsError, match=r"option bits=5 is not valid; expected 2\|3\|4\|8"):
        GPTQOptions.from_mapping({"bits": 5}, where="gptq")
    with pytest.raises(TeenyError, match="gptq needs calibration data"):
        GPTQQuantizer().quantize(source, None, GPTQOptions(), tmp_path)
    cal = CalibrationSet("ids", [[1, 2, 3, 4]])
    with pytest.raises(TeenyError, match="model.layers.0.self_attn.q_proj has 128 input features, not a multiple "
                                         "of group_size=48"):
        GPTQQuantizer().quantize(source, cal, GPTQOptions.from_mapping({"group_size": 48}), tmp_path)
    with pytest.raises(TeenyError, match="leaves no linear layer"):
        GPTQQuantizer().quantize(source, cal, GPTQOptions.from_mapping({"skip": ["*"]}), tmp_path)


def test_gptqmodel_backend_absent_is_a_clear_error(tiny_model, tmp_path):
    if importlib.util.find_spec("gptqmodel") is not None:
        pytest.skip("gptqmodel is installed here; the error path cannot be exercised")
    from teeny_gptq.quantizer import GPTQOptions, GPTQQuantizer

    with pytest.raises(TeenyError, match="backend=gptqmodel needs the gptqmodel package"):
        GPTQQuantizer().quantize(ModelSource(str(tiny_model("llama"))), CalibrationSet("ids", [[1, 2]]),
                                 GPTQOptions.from_mapping({"backend": "gptqmodel"}), tmp_path)


class TestGPTQContract(QuantizerContract):
    method = "gptq"
    options = {"bits": 4, "group_size": 32, "desc_act": True, "static_groups": True}
    arch = "gemma3"


def test_skip_without_lm_head_rounds_a_tied_lm_head_on_the_same_grid_and_runs_it_packed(teeny_plugins, tiny_model,
                                                                                       tmp_path):
    """``skip=[]`` (the demo's w4 variants, as the Q4_K_M file quantizes its output matrix) quantizes lm_head too,
    rounded to nearest on GPTQ's grid (each weight within half a step of the original's, no error fed across
    columns), as its own copy when tied to the embeddings; the checkpoint says ``lm_head: true``. It used to
    keep lm_head in 16 bits without a word, so a GPTQ w4 held 260 MiB more than an AWQ or RTN w4 of the same model."""
    from teeny_core.formats.gptq import dequantized_state_dict
    from teeny_core.testing import assert_runs_packed

    path = tiny_model("qwen2")  # tied embeddings
    source = ModelSource(str(path))
    cal = calibration_for(teeny_plugins, source.load_tokenizer(), samples=8)
    artifact = quantize(teeny_plugins, "gptq", source, cal, {"bits": 4, "group_size": 32, "skip": []}, tmp_path / "q")
    cfg = json.loads((artifact.path / "config.json").read_text())
    assert cfg["quantization_config"]["lm_head"] is True and cfg["tie_word_embeddings"] is False
    assert "lm_head" in artifact.meta["quantized_layers"] and "lm_head" in artifact.meta["rtn_fallback"]
    model, _ = source.load(dtype="float32")
    original = model.get_input_embeddings().weight.detach().reshape(model.config.vocab_size, -1, 32)
    state = dequantized_state_dict(artifact.path)
    assert torch.equal(state["model.embed_tokens.weight"].float(), original.reshape(state["lm_head.weight"].shape))
    error = (original - state["lm_head.weight"].reshape(original.shape)).abs()
    half_step = original.abs().amax(-1, keepdim=True) / 15  # a symmetric 4-bit grid's step is 2 * absmax / 15
    assert float(error.max()) > 0 and bool((error <= half_step * 1.01).all())
    assert_runs_packed(Artifact.open(artifact.path), packed_layers=15)


def test_calibration_with_fewer_tokens_than_a_linears_inputs_is_warned_about_and_recorded(teeny_plugins, tiny_model,
                                                                                          tmp_path, caplog):
    """GPTQ's Hessian of a linear with more inputs than calibration tokens is rank-deficient: on Qwen2.5-Coder-0.5B
    the demo's 2,048 tokens (down_proj has 4,864 inputs) made GPTQ w4 worse than rounding to nearest."""
    source = ModelSource(str(tiny_model("llama")))
    tokenizer = source.load_tokenizer()
    with caplog.at_level("WARNING", logger="teeny_gptq"):
        few = quantize(teeny_plugins, "gptq", source, calibration_for(teeny_plugins, tokenizer, 2, 32),
                       {"bits": 4, "group_size": 32}, tmp_path / "few")
    widest = few.meta["calibration"]["fewer_than_inputs_of"]
    assert few.meta["calibration"]["tokens"] == 64 and widest.endswith("down_proj")
    assert "64 calibration tokens are fewer than the" in caplog.text and widest in caplog.text
    assert few.meta["cautions"] == [caplog.records[-1].getMessage().removeprefix("gptq: ")]
    caplog.clear()
    with caplog.at_level("WARNING", logger="teeny_gptq"):
        enough = quantize(teeny_plugins, "gptq", source, calibration_for(teeny_plugins, tokenizer, 16, 64),
                          {"bits": 4, "group_size": 32}, tmp_path / "enough")
    assert enough.meta["calibration"]["fewer_than_inputs_of"] is None and "calibration tokens" not in caplog.text
    assert enough.meta["cautions"] == []


def test_a_run_reports_the_short_calibration_beside_the_gptq_variant(tiny_model, tmp_path):
    """End to end: `teeny run` with too few calibration tokens for GPTQ puts the caution in results.json and marks
    the variant in the report; the rtn variant beside it, which does not calibrate, carries none."""
    import json

    from click.testing import CliRunner

    from teeny_core.cli import cli
    from teeny_core.results import CAUTION_MARK
    from teeny_core.testing import experiment_toml

    body = ('[calibration]\nmethod = "random-tokens"\nsamples = 2\nseq_len = 32\n'
            '[[variants]]\nname = "gptq-w4"\nmethod = "gptq"\nbits = 4\ngroup_size = 32\n'
            '[[variants]]\nname = "rtn-w4"\nmethod = "rtn"\nbits = 4\ngroup_size = 32\n')
    (tmp_path / "exp.toml").write_text(experiment_toml("short", tiny_model("llama"), tmp_path, chunks=2, chunk_len=32,
                                                       body=body))
    done = CliRunner().invoke(cli, ["run", str(tmp_path / "exp.toml")])
    assert done.exit_code == 0, done.output
    variants = {v["name"]: v for v in json.loads((tmp_path / "short" / "results.json").read_text())["variants"]}
    [caution] = variants["gptq-w4"]["cautions"]
    assert caution.startswith("64 calibration tokens are fewer than the") and variants["rtn-w4"]["cautions"] == []
    report = (tmp_path / "short" / "report.md").read_text()
    assert f"gptq-w4 {CAUTION_MARK}" in report and f"gptq-w4: {caution}." in report
    assert f"rtn-w4 {CAUTION_MARK}" not in report
