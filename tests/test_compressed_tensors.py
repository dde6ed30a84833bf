"""compressed-tensors checkpoints (llm-compressor's W8A8 / W4A16 / FP8 outputs): detected, executed as deployed.

The checkpoints here are written by the compressed-tensors library itself (its compressors quantize and pack
each linear), so the reader is checked against the format's own writer; the int8 linears are checked against a
float64 simulation of exactly the same quantization.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from teeny_core.checkpoints import open_checkpoint
from teeny_core.cli import cli
from teeny_core.errors import TeenyError
from teeny_core.testing import experiment_toml

torch = pytest.importorskip("torch")
pytest.importorskip("compressed_tensors")

W8A8 = {"weights": {"num_bits": 8, "type": "int", "strategy": "channel", "symmetric": True, "dynamic": False},
        "input_activations": {"num_bits": 8, "type": "int", "strategy": "token", "symmetric": True,
                              "dynamic": True}}
W8A8_STATIC = {**W8A8, "input_activations": {"num_bits": 8, "type": "int", "strategy": "tensor",
                                             "symmetric": True, "dynamic": False}}
W4A16 = {"weights": {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 32, "symmetric": False,
                     "dynamic": False}}
FP8 = {"weights": {"num_bits": 8, "type": "float", "strategy": "channel", "symmetric": True, "dynamic": False},
       "input_activations": {"num_bits": 8, "type": "float", "strategy": "token", "symmetric": True,
                             "dynamic": True}}


def write_ct_checkpoint(src, out, scheme: dict, compression: str, calibration=None):
    """A compressed-tensors checkpoint of every linear but lm_head of the model at ``src``, quantized and packed
    by the compressed-tensors library's own compressor (symmetric scales from each row's or group's range)."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme

    from teeny_core.formats.checkpoint import write_checkpoint
    from teeny_core.modeling import ModelSource, linear_layers

    model, tokenizer = ModelSource(str(src)).load(dtype="float32")
    qscheme = QuantizationScheme(targets=["Linear"], **scheme)
    compressor = BaseCompressor.get_value_from_registry(compression)
    tensors = {}
    for name, linear in linear_layers(model).items():
        if name == "lm_head":
            continue
        w = linear.weight.detach()
        args = qscheme.weights
        if args.strategy == "group":
            g = w.reshape(w.shape[0], -1, args.group_size)
            lo, hi = g.amin(-1).clamp(max=0), g.amax(-1).clamp(min=0)
            scale = ((hi - lo) / 15).clamp_min(1e-8)
            state = {"weight": w, "weight_scale": scale, "weight_zero_point": (-8 - torch.round(lo / scale))
                     .clamp(-8, 7).to(torch.int8)}
        else:
            top = 448.0 if args.type == "float" else 127.0
            state = {"weight": w, "weight_scale": w.abs().amax(1, keepdim=True) / top}
        if qscheme.input_activations is not None and not qscheme.input_activations.dynamic:
            state["input_scale"] = torch.tensor([0.05])
        tensors[name] = compressor.compress(state, qscheme)
        if linear.bias is not None:
            tensors[name]["bias"] = linear.bias.detach()
    config = QuantizationConfig(config_groups={"group_0": qscheme}, format=compression, ignore=["lm_head"],
                                quantization_status="compressed").model_dump(mode="json")
    out.mkdir()
    write_checkpoint(model, tokenizer, tensors, out, config, "float32")
    (out / "quantize_config.json").unlink()
    return out


@pytest.fixture(scope="module")
def ct_dirs(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("ct")
    src = tiny_model("llama")
    return {"w8a8": write_ct_checkpoint(src, root / "w8a8", W8A8, "int-quantized"),
            "w8a8-static": write_ct_checkpoint(src, root / "w8a8-static", W8A8_STATIC, "int-quantized"),
            "w4a16": write_ct_checkpoint(src, root / "w4a16", W4A16, "pack-quantized"),
            "fp8": write_ct_checkpoint(src, root / "fp8", FP8, "float-quantized")}


def simulate_w8a8_float64(x, weight, weight_scale, input_scale=None):
    """The float64 reference: the same per-token (or static) int8 quantization of ``x``, then an exact product."""
    x = x.double()
    if input_scale is None:
        sx = x.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127.0
    else:
        sx = torch.full((x.shape[0], 1), float(input_scale), dtype=torch.float64)
    qx = torch.round(x / sx).clamp(-128, 127)
    return (qx @ weight.double().t()) * sx * weight_scale.double().reshape(1, -1)


@pytest.mark.parametrize("rows", [1, 8, 64])
@pytest.mark.parametrize("static", [False, True])
def test_int8_linear_runs_int_mm_and_matches_a_float64_simulation(rows, static, monkeypatch):
    from teeny_core.int8 import Int8Linear

    gen = torch.Generator().manual_seed(rows)
    w = torch.randn(96, 160, generator=gen)
    ws = w.abs().amax(1) / 127
    qw = torch.round(w / ws[:, None]).to(torch.int8)
    x = torch.randn(rows, 160, generator=gen) * torch.linspace(0.1, 8, 160)  # outlier channels, as in LLMs
    input_scale = torch.tensor(0.04) if static else None
    calls = []
    real = torch._int_mm
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: calls.append((a.dtype, b.dtype)) or real(a, b))
    y = Int8Linear(qw, ws, input_scale)(x)
    assert calls == [(torch.int8, torch.int8)]
    ref = simulate_w8a8_float64(x, qw, ws, input_scale)
    tol = 1e-5 * float(ref.abs().max())  # float32 scaling of exact int32 sums
    assert float((y.double() - ref).abs().max()) <= tol
    unquantized = x.double() @ (qw.double() * ws.double()[:, None]).t()
    assert float((unquantized - ref).abs().max()) > 100 * tol  # the activations really are quantized


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_int8_and_fp8_linears_on_cuda_match_a_float64_simulation():
    from teeny_core.int8 import Fp8Linear, Int8Linear, fp8_device_problem

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(128, 256, generator=gen)
    ws = w.abs().amax(1) / 127
    qw = torch.round(w / ws[:, None]).to(torch.int8)
    for rows in (1, 8, 64):
        x = torch.randn(rows, 256, generator=gen)
        y = Int8Linear(qw, ws).cuda()(x.cuda()).cpu()
        ref = simulate_w8a8_float64(x, qw, ws)
        assert float((y.double() - ref).abs().max()) <= 1e-5 * float(ref.abs().max())
    if fp8_device_problem("cuda"):
        pytest.skip(fp8_device_problem("cuda"))
    fs = w.abs().amax(1) / 448
    fw = (w / fs[:, None]).to(torch.float8_e4m3fn)
    x = torch.randn(32, 256, generator=gen)
    y = Fp8Linear(fw, fs).cuda()(x.cuda()).cpu().double()
    sx = x.abs().amax(1, keepdim=True).double() / 448
    qx = (x.double() / sx).float().to(torch.float8_e4m3fn).double()
    ref = (qx @ fw.double().t()) * sx * fs.double()[None]
    assert float((y - ref).abs().max()) <= 1e-2 * float(ref.abs().max())  # bf16 output of _scaled_mm


@pytest.mark.parametrize("kind,scheme,extra", [
    ("w8a8", "int8", {"activations": "dynamic"}), ("w8a8-static", "int8", {"activations": "static"}),
    ("w4a16", "w4a16", {"group_size": 32}), ("fp8", "fp8", {"activations": "dynamic"})])
def test_compressed_tensors_directories_are_detected(ct_dirs, kind, scheme, extra):
    artifact = open_checkpoint(str(ct_dirs[kind]))
    assert artifact.format == "compressed-tensors"
    assert artifact.meta["scheme"] == scheme and artifact.meta["detected_from"] == "config.json"
    assert {k: artifact.meta[k] for k in extra} == extra


def _load(directory, **options):
    from teeny_core.builtin.transformers_runtime import TransformersOptions, TransformersRuntime

    return TransformersRuntime().load(open_checkpoint(str(directory)), TransformersOptions(**options))


def _reference_model(directory):
    """transformers with compressed-tensors installed, decompressing the checkpoint (an independent loader)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig

    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32,
                                                quantization_config=CompressedTensorsConfig(run_compressed=False))


@pytest.mark.parametrize("kind", ["w8a8", "w8a8-static"])
def test_w8a8_checkpoint_runs_int8_products_with_the_weights_transformers_reads(ct_dirs, kind):
    from teeny_core.int8 import Int8Linear

    model = _load(ct_dirs[kind])
    facts = model.load_facts()
    assert facts["kernel_layers"] == {"torch._int_mm": 14} and facts["float_layers"] == {}
    assert facts["scheme"] == "int8"
    reference = _reference_model(ct_dirs[kind])
    ours = dict(model.model.named_modules())
    for name, module in reference.named_modules():
        if isinstance(ours.get(name), Int8Linear):  # the int8 codes times their scales: what transformers holds
            mine = ours[name].weight.float() * ours[name].weight_scale.t()
            assert torch.allclose(mine, module.weight.float(), rtol=0, atol=1e-6), name
    ids = model.tokenizer.encode("def add(a, b):\n    return a + b")[:24]
    ours_lp = model.logprobs([ids])
    with torch.no_grad():
        ref_lp = torch.log_softmax(reference(torch.tensor([ids])).logits.float(), -1)
    # the reference multiplies float activations: the gap is the activation quantization alone, small but real
    gap = float((ours_lp - ref_lp).abs().max())
    assert 0 < gap < 0.2


def test_w4a16_checkpoint_runs_the_int4_kernel_on_the_library_s_codes(ct_dirs):
    from teeny_core.formats.compressed_tensors import dequantize, quantized_linear, read_linears

    model = _load(ct_dirs["w4a16"], packed_compute="float32")
    facts = model.load_facts()
    assert facts["kernel_layers"] == {"torch.ops.aten._weight_int4pack_mm_for_cpu": 14}
    reference = _reference_model(ct_dirs["w4a16"])
    linears, _ = read_linears(ct_dirs["w4a16"], reference)
    for name, (kind, state, scheme) in linears.items():  # our unpacking == the library's decompression, exactly
        assert torch.equal(quantized_linear(state, scheme).dequantize(), dequantize(kind, state, scheme)), name
    ids = model.tokenizer.encode("def add(a, b):\n    return a + b")[:24]
    with torch.no_grad():
        ref_lp = torch.log_softmax(reference(torch.tensor([ids])).logits.float(), -1)
    assert float((model.logprobs([ids]) - ref_lp).abs().max()) < 1e-3  # float32 kernel: the same weights


def test_fp8_on_a_cpu_is_refused_naming_the_device(ct_dirs):
    with pytest.raises(TeenyError, match="FP8 needs a CUDA GPU .* the device is cpu") as info:
        _load(ct_dirs["fp8"], device="cpu")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("change,message", [
    ({"input_activations": {"num_bits": 8, "type": "int", "strategy": "token", "symmetric": False,
                            "dynamic": True}}, "asymmetric 8-bit quantization is not executable here"),
    ({"input_activations": {"num_bits": 4, "type": "int", "strategy": "token", "symmetric": True,
                            "dynamic": True}}, "weights int8 with input_activations int4"),
    ({"input_activations": {"num_bits": 8, "type": "int", "strategy": "group", "group_size": 128,
                            "symmetric": True, "dynamic": True}}, "strategy='group' dynamic=True"),
])
def test_schemes_no_runtime_executes_are_refused_in_one_line(ct_dirs, tmp_path, change, message):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(ct_dirs["w8a8"], other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["quantization_config"]["config_groups"]["group_0"].update(change)
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(TeenyError, match=message) as info:
        open_checkpoint(str(other))
    assert "\n" not in str(info.value)
    r = CliRunner().invoke(cli, ["eval", str(other), "-b", "fidelity", "--out", str(tmp_path / "eval")])
    assert r.exit_code == 2 and r.output.startswith("Error: ") and message in r.output
    assert not (tmp_path / "eval").exists()


def test_teeny_eval_runs_a_w8a8_checkpoint_with_int8_products(ct_dirs, tiny_model, tmp_path):
    r = CliRunner().invoke(cli, ["eval", str(ct_dirs["w8a8"]), "-b", "fidelity", "-o", "chunks=2", "-o",
                                 "chunk_len=32", "--reference", str(tiny_model("llama")), "--out",
                                 str(tmp_path / "eval")])
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["fidelity"]
    assert 0 < metrics["kl_mean"] < 1
    profile = json.loads((tmp_path / "eval" / "profile.json").read_text())
    assert profile["load"]["runtime"]["kernel_layers"] == {"torch._int_mm": 14}


def test_checkpoint_variants_of_compressed_tensors_run_packed(ct_dirs, tiny_model, tmp_path):
    root = tmp_path / "runs"
    (tmp_path / "exp.toml").write_text(experiment_toml("ct", tiny_model("llama"), root, chunks=2, chunk_len=32,
                                                       body="\n".join([
        "[[variants]]", 'name = "w8a8"', f'checkpoint = "{ct_dirs["w8a8"]}"',
        "[[variants]]", 'name = "w4a16"', f'checkpoint = "{ct_dirs["w4a16"]}"',
    ]) + "\n"))
    r = CliRunner().invoke(cli, ["run", str(tmp_path / "exp.toml")])
    assert r.exit_code == 0, r.output
    by_name = {v["name"]: v for v in json.loads((root / "ct" / "results.json").read_text())["variants"]}
    assert by_name["w8a8"]["describe"]["format"] == "compressed-tensors"
    assert by_name["w8a8"]["profile"]["load"]["runtime"]["kernel_layers"] == {"torch._int_mm": 14}
    assert by_name["w4a16"]["profile"]["load"]["runtime"]["kernel_layers"] == {
        "torch.ops.aten._weight_int4pack_mm_for_cpu": 14}
    for name in ("w8a8", "w4a16"):
        assert 0 < by_name[name]["metrics"]["fidelity"]["kl_mean"] < 1
