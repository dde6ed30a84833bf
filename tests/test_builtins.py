"""The built-in plugins honour their contracts and options on real tiny architectures."""

import json

import pytest

from teeny_core.testing import (CalibratorContract, ExecutorContract, ProfilerContract, QuantizerContract,
                                RuntimeContract)
from teeny_core.modeling import Artifact, ModelSource


class TestRTNContract(QuantizerContract):
    method = "rtn"
    options = {"bits": 4, "group_size": 32}


class TestRTNCastContractGemma(QuantizerContract):
    method = "rtn"
    options = {"bits": 16, "dtype": "bfloat16"}
    arch = "gemma3"


class TestCodeCalibrator(CalibratorContract):
    method = "code"
    options = {"samples": 3, "seq_len": 16}


class TestRandomTokens(CalibratorContract):
    method = "random-tokens"
    options = {"samples": 3, "seq_len": 16}


class TestTransformersRuntime(RuntimeContract):
    runtime = "transformers"

    @pytest.fixture
    def artifact(self, tiny_model):
        return Artifact("hf", tiny_model("qwen2"))


class TestSystemProfiler(ProfilerContract):
    profiler = "system"
    options = {"benchmark": False}


class TestLocalExecutor(ExecutorContract):
    executor = "local"
    options = {"workers": 2}


class TestInlineExecutor(ExecutorContract):
    executor = "inline"


def quantize(teeny_plugins, model_dir, tmp_path, **options):
    cls = teeny_plugins.get("quantizer", "rtn")
    out = tmp_path / "art"
    out.mkdir(parents=True)
    return cls().quantize(ModelSource(str(model_dir)), None, cls.Options.from_mapping(options), out)


def test_skip_patterns_keep_layers_in_full_precision(teeny_plugins, tiny_model, tmp_path):
    from safetensors.torch import load_file

    model_dir = tiny_model("llama")
    art = quantize(teeny_plugins, model_dir, tmp_path, bits=2, granularity="channel",
                   skip=["lm_head", "model.layers.0.*"], format="hf")
    before, after = load_file(model_dir / "model.safetensors"), load_file(art.path / "model.safetensors")
    for key in before:
        same = bool((before[key] == after[key]).all())
        expect_same = not key.endswith("proj.weight") or key.startswith("model.layers.0.")
        assert same == expect_same, key
    assert "model.layers.1.mlp.down_proj" in art.meta["quantized_layers"]
    assert not any(n.startswith("model.layers.0.") for n in art.meta["quantized_layers"])
    cfg = json.loads((art.path / "config.json").read_text())
    assert cfg["teeny_quantization"]["bits"] == 2 and "quantization_config" not in cfg


def test_tied_embeddings_stay_intact_when_lm_head_is_quantized(teeny_plugins, tiny_model, tmp_path):
    from safetensors.torch import load_file

    model_dir = tiny_model("qwen2")  # ties lm_head to the embeddings
    art = quantize(teeny_plugins, model_dir, tmp_path, bits=4, group_size=32, skip=[], format="hf")
    before, after = load_file(model_dir / "model.safetensors"), load_file(art.path / "model.safetensors")
    assert bool((before["model.embed_tokens.weight"] == after["model.embed_tokens.weight"]).all())
    assert not bool((after["lm_head.weight"] == before["model.embed_tokens.weight"]).all())


def test_packed_size_shrinks_with_bits(teeny_plugins, tiny_model, tmp_path):
    sizes = [quantize(teeny_plugins, tiny_model("llama"), tmp_path / str(b), bits=b, group_size=32).meta["packed_bytes"]
             for b in (8, 4, 2)]
    assert sizes[0] > sizes[1] > sizes[2]


def test_group_size_must_divide(teeny_plugins, tiny_model, tmp_path):
    from teeny_core.errors import TeenyError

    with pytest.raises(TeenyError, match="group_size=48 does not divide the input width 128"):
        quantize(teeny_plugins, tiny_model("llama"), tmp_path, bits=4, group_size=48)


def test_generation_stops_at_stop_strings_and_matches_hf(teeny_plugins, tiny_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from teeny_core.builtin.transformers_runtime import truncate_at_stop

    model_dir = tiny_model("llama")
    cls = teeny_plugins.get("runtime", "transformers")
    loaded = cls().load(Artifact("hf", model_dir), cls.Options.from_mapping({"device": "cpu", "batch_size": 2}))
    prompts = ["def add(a, b):", "The quick brown fox", "import json"]
    gens = loaded.generate(prompts, max_new_tokens=12)
    hf = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    for prompt, gen in zip(prompts, gens):  # batched + left padding gives the unbatched greedy text
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            out = hf.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
        assert gen.text == tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    stop = gens[0].text[3:6]
    [cut] = loaded.generate(prompts[:1], max_new_tokens=12, stop=[stop])
    assert cut.text == gens[0].text[:gens[0].text.index(stop)] and cut.finish_reason == "stop"
    assert truncate_at_stop("abc\ndef x", ["\ndef", "x"]) == ("abc", True)
    lp = loaded.logprobs([ids[0].tolist() for ids in [tok("hello world", return_tensors="pt").input_ids]])
    assert torch.allclose(lp.exp().sum(-1), torch.ones(lp.shape[:2]), atol=1e-5)


def test_profiler_reports_unavailable_energy_with_a_reason(teeny_plugins, tmp_path, monkeypatch):
    from teeny_core.builtin import system_profiler

    monkeypatch.setattr(system_profiler, "RAPL_ROOT", tmp_path / "no-powercap")
    cls = teeny_plugins.get("profiler", "system")
    with cls().measure("load", cls.Options()) as result:
        blob = bytearray(64 * 1024 * 1024)  # 64 MiB the sampler must see
        blob[::4096] = b"x" * len(blob[::4096])
    assert result["peak_rss_bytes"] > 64 * 1024 * 1024
    assert result["seconds"] >= 0
    if result["energy_joules"] is None:
        assert result["energy_source"].startswith("unavailable: no RAPL zones")


def test_profiler_reads_rapl_counters(teeny_plugins, tmp_path, monkeypatch):
    from teeny_core.builtin import system_profiler

    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "energy_uj").write_text("1000000\n")
    (zone / "max_energy_range_uj").write_text("5000000\n")
    monkeypatch.setattr(system_profiler, "RAPL_ROOT", tmp_path)
    cls = teeny_plugins.get("profiler", "system")
    with cls().measure("x", cls.Options()) as result:
        (zone / "energy_uj").write_text("500000\n")  # wrapped: 4 J to the top, then 0.5 J
    assert result["energy_joules"] == pytest.approx(4.5)
    assert result["energy_source"].startswith("rapl")


def test_the_jsonl_calibrator_reads_plain_and_gzipped_files_and_names_a_bad_line(teeny_plugins, tiny_tokenizer,
                                                                                 tmp_path):
    import gzip

    from teeny_core import TeenyError

    cls = teeny_plugins.get("calibrator", "jsonl")
    lines = "".join(json.dumps({"text": f"def f{i}(a, b):\n    return a + {i} * b\n"}) + "\n\n" for i in range(40))
    (tmp_path / "code.jsonl").write_text(lines)
    (tmp_path / "code.jsonl.gz").write_bytes(gzip.compress(lines.encode()))

    def samples(name: str):
        options = cls.Options.from_mapping({"path": str(tmp_path / name), "samples": 3, "seq_len": 16})
        return cls().samples(tiny_tokenizer, options, seed=0).samples

    assert samples("code.jsonl") == samples("code.jsonl.gz") and len(samples("code.jsonl")) == 3
    (tmp_path / "bad.jsonl").write_text('{"text": "x = 1"}\n\n{oops\n')
    with pytest.raises(TeenyError, match=r"^calibrator jsonl: .*bad.jsonl:3 is not valid JSON"):
        samples("bad.jsonl")
    (tmp_path / "other.jsonl").write_text('{"body": "x = 1"}\n')
    with pytest.raises(TeenyError, match=r"other.jsonl:1: record has no text field 'text'"):
        samples("other.jsonl")
