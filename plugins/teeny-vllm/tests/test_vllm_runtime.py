"""The vllm runtime without a GPU: artifact -> vLLM load arguments per format, sampling parameters from
Teeny's generation options, the generate/logprobs contract against a fake ``vllm`` module, and how the
runtime is listed (with its reason) where it cannot run."""

import json
import sys
import types
from pathlib import Path

import pytest

from teeny_core.errors import TeenyError
from teeny_core.modeling import Artifact
from teeny_vllm import runtime as rt
from teeny_vllm.runtime import VllmOptions, VllmRuntime, engine_args, sampling_params, vllm_quantization


def checkpoint(tmp_path: Path, fmt: str, qc: dict | None = None, tokenizer: bool = True) -> Artifact:
    d = tmp_path / fmt
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "qwen2", **({"quantization_config": qc} if qc else {})}))
    if tokenizer:
        (d / "tokenizer_config.json").write_text("{}")
    return Artifact(fmt, d)


@pytest.mark.parametrize("fmt, qc, expected", [
    ("hf", None, None),
    ("hf-gptq", {"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": True}, "gptq_marlin"),
    ("hf-gptq", {"quant_method": "gptq", "bits": 8, "group_size": 128, "sym": True}, "gptq_marlin"),
    ("hf-gptq", {"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": False}, "gptq"),  # Marlin: sym only
    ("hf-gptq", {"quant_method": "gptq", "bits": 3, "group_size": 128, "sym": True}, "gptq"),
    ("hf-gptq", {"quant_method": "gptq", "bits": 4, "group_size": 256, "sym": True}, "gptq"),
    ("hf-awq", {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True}, "awq_marlin"),
    ("hf-awq", {"quant_method": "awq", "bits": 4, "group_size": 48, "zero_point": True}, "awq"),
])
def test_each_format_loads_with_the_kernel_vllm_serves_it_with(tmp_path, fmt, qc, expected):
    artifact = checkpoint(tmp_path, fmt, qc)
    assert vllm_quantization(artifact) == expected
    args = engine_args(artifact, VllmOptions(), seed=3)
    assert args["model"] == str(artifact.path) and args["tokenizer"] == str(artifact.path) and args["seed"] == 3
    assert args.get("quantization") == expected
    # quantized kernels compute in float16; a float checkpoint keeps its own dtype
    assert args["dtype"] == ("auto" if fmt == "hf" else "float16")


def test_marlin_can_be_turned_off_and_options_reach_the_engine(tmp_path):
    artifact = checkpoint(tmp_path, "hf-gptq", {"bits": 4, "group_size": 128, "sym": True})
    opts = VllmOptions.from_mapping({"marlin": False, "gpu_memory_utilization": 0.5, "max_model_len": 2048,
                                     "enforce_eager": True, "dtype": "bfloat16"})
    args = engine_args(artifact, opts)
    assert args["quantization"] == "gptq"
    assert (args["gpu_memory_utilization"], args["max_model_len"], args["enforce_eager"], args["dtype"]) == \
        (0.5, 2048, True, "bfloat16")


def test_gguf_uses_the_hf_tokenizer_beside_it_else_the_one_inside(tmp_path):
    with_tok = checkpoint(tmp_path, "gguf")
    (with_tok.path / "m.gguf").write_bytes(b"GGUF")
    with_tok.file = "m.gguf"
    args = engine_args(with_tok, VllmOptions())
    assert (args["model"], args["tokenizer"], args["quantization"]) == \
        (str(with_tok.path / "m.gguf"), str(with_tok.path), "gguf")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "m.gguf").write_bytes(b"GGUF")
    assert engine_args(Artifact("gguf", bare, file="m.gguf"), VllmOptions())["tokenizer"] == str(bare / "m.gguf")
    with pytest.raises(TeenyError, match="GGUF file .*missing.gguf' not found"):
        engine_args(Artifact("gguf", bare, file="missing.gguf"), VllmOptions())


def test_formats_it_cannot_load_are_named(tmp_path):
    with pytest.raises(TeenyError, match="cannot load format 'onnx'; it loads hf, hf-gptq, hf-awq, gguf"):
        engine_args(Artifact("onnx", tmp_path), VllmOptions())
    with pytest.raises(TeenyError, match=r"config.json not found"):
        vllm_quantization(Artifact("hf-gptq", tmp_path))


def test_sampling_params_follow_the_evaluators_generation_options():
    greedy = sampling_params(192, 0.0, 0.95, None, seed=7)
    assert greedy == {"n": 1, "max_tokens": 192, "temperature": 0.0, "top_p": 1.0, "seed": 7, "stop": None,
                      "include_stop_str_in_output": False, "skip_special_tokens": True}
    sampled = sampling_params(64, 0.8, 0.95, ["\ndef ", "\nclass "], seed=1)
    assert (sampled["temperature"], sampled["top_p"], sampled["stop"]) == (0.8, 0.95, ["\ndef ", "\nclass "])
    with pytest.raises(TeenyError, match="max_new_tokens=0 is not valid"):
        sampling_params(0, 0.0, 1.0, None, seed=0)


class FakeTokenizer:
    def encode(self, text):
        return [ord(c) for c in text]


class FakeLLM:
    """What the runtime uses of vllm.LLM, recording the calls."""

    def __init__(self, **kwargs):
        self.kwargs, self.calls = kwargs, []

    def get_tokenizer(self):
        return FakeTokenizer()

    def generate(self, requests, params, use_tqdm=True):
        self.calls.append((requests, params))
        outs = []
        for i, (req, p) in enumerate(zip(requests, params)):
            finish = "length" if i == 0 else "stop"
            done = types.SimpleNamespace(text=f"out{i}", token_ids=list(range(p.kwargs["max_tokens"] - i)),
                                         finish_reason=finish)
            metrics = types.SimpleNamespace(arrival_time=10.0, first_token_time=10.25)
            outs.append(types.SimpleNamespace(outputs=[done], metrics=metrics))
        return outs

    def apply_model(self, func):
        import torch

        model = torch.nn.Linear(4, 3)  # 12 + 3 float32 parameters
        model.register_buffer("packed", torch.zeros(5, dtype=torch.int32))
        return [func(model)]


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = FakeLLM, FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(VllmRuntime, "available", classmethod(lambda cls: None))
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    return module


def test_generate_sends_our_token_ids_in_one_batch_and_maps_the_outputs(tmp_path, fake_vllm):
    artifact = checkpoint(tmp_path, "hf")
    model = VllmRuntime().load(artifact, VllmOptions())
    assert model.llm.kwargs == engine_args(artifact, VllmOptions())
    gens = model.generate(["ab", "c"], max_new_tokens=5, temperature=0.0, stop=["\n"], seed=40)
    (requests, params), = model.llm.calls  # one batched call
    assert requests == [{"prompt_token_ids": [97, 98]}, {"prompt_token_ids": [99]}]
    assert [p.kwargs["seed"] for p in params] == [40, 41]  # one seed per prompt, as the other runtimes
    assert all(p.kwargs["stop"] == ["\n"] and p.kwargs["temperature"] == 0.0 for p in params)
    assert [(g.text, g.tokens, g.finish_reason) for g in gens] == [("out0", 5, "length"), ("out1", 4, "stop")]
    assert gens[0].first_token_seconds == pytest.approx(0.25)
    import os

    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"  # the engine's GPU memory is this process's


def test_weight_bytes_counts_parameters_and_buffers_as_held(tmp_path, fake_vllm):
    model = VllmRuntime().load(checkpoint(tmp_path, "hf"), VllmOptions())
    assert model.weight_bytes() == 15 * 4 + 5 * 4


def test_logprobs_say_in_one_line_that_kl_needs_an_exact_runtime(tmp_path, fake_vllm):
    model = VllmRuntime().load(checkpoint(tmp_path, "hf"), VllmOptions())
    with pytest.raises(TeenyError) as info:
        model.logprobs([[1, 2, 3]])
    assert "\n" not in str(info.value) and "top-k logprobs" in str(info.value) and "fidelity" in str(info.value)


def test_unavailable_reasons(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert VllmRuntime.available() == "CUDA_VISIBLE_DEVICES hides every GPU"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(rt, "cuda_unavailable_reason", lambda: None)
    monkeypatch.setattr(rt.importlib.util, "find_spec", lambda name: None)
    assert VllmRuntime.available() == "vllm is not installed (pip install vllm==0.33 in a CUDA environment)"
    with pytest.raises(TeenyError, match="the vllm runtime is unavailable here: vllm is not installed"):
        VllmRuntime().load(Artifact("hf", Path(".")), VllmOptions())


@pytest.fixture
def plugins_with_vllm(monkeypatch):
    import importlib

    from teeny_core import cli
    from teeny_core.plugins import Plugins

    plugins = Plugins.load()
    if "vllm" not in plugins.infos:  # not pip-installed here: register it as its entry point would
        plugins._add("vllm", lambda: importlib.import_module("teeny_vllm.plugin"), builtin=False, version="0.1.0")
        plugins._register_all()
    monkeypatch.setattr(cli, "_PLUGINS", plugins)
    return plugins


def test_listed_with_the_reason_it_cannot_run_and_never_chosen(plugins_with_vllm, monkeypatch):
    from click.testing import CliRunner

    from teeny_core.cli import cli

    monkeypatch.setattr(VllmRuntime, "available", classmethod(lambda cls: "no NVIDIA GPU driver on this machine"))
    assert plugins_with_vllm.unavailable("runtime") == {"vllm": "no NVIDIA GPU driver on this machine"}
    runner = CliRunner(env={"COLUMNS": "250"})
    listed = runner.invoke(cli, ["list", "runtime"])
    assert listed.exit_code == 0
    assert "vllm" in listed.output and "unavailable here: no NVIDIA GPU driver on this machine" in listed.output
    shown = runner.invoke(cli, ["plugins", "--json"])
    entry = next(p for p in json.loads(shown.output) if p["name"] == "vllm")
    assert entry["unavailable"] == {"runtime:vllm": "no NVIDIA GPU driver on this machine"}
    assert plugins_with_vllm.runtime_for("hf").name != "vllm"
    with pytest.raises(TeenyError, match="runtime 'vllm' is unavailable here: no NVIDIA GPU driver"):
        plugins_with_vllm.runtime_for("hf", "vllm")
