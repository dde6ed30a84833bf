"""Checkpoints made elsewhere: format detection from their own metadata, `teeny eval DIR`, `checkpoint` variants.

The GPTQModel-style directory is written the way GPTQModel 7.x saves one: packed tensors in model.safetensors,
``quantization_config`` in config.json *and* quantize_config.json with GPTQModel's fields (``checkpoint_format``,
``pack_dtype``, ``meta.quantizer``...), the tokenizer beside it, and no Teeny manifest.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from teeny_core.checkpoints import open_checkpoint
from teeny_core.cli import cli
from teeny_core.errors import TeenyError
from teeny_core.testing import build_quantized_checkpoint, experiment_toml
from teeny_core.modeling import ARTIFACT_MANIFEST

GPTQMODEL_CONFIG = {
    "bits": 4, "group_size": 32, "desc_act": True, "sym": False, "lm_head": False, "quant_method": "gptq",
    "checkpoint_format": "gptq", "pack_dtype": "int32", "static_groups": False, "true_sequential": True,
    "dynamic": None, "damp_percent": 0.05, "damp_auto_increment": 0.01,
    "meta": {"quantizer": ["gptqmodel:7.7.0"], "uri": "https://github.com/modelcloud/gptqmodel",
             "damp_percent": 0.05, "damp_auto_increment": 0.01, "static_groups": False, "true_sequential": True,
             "mse": 0.0, "v2": False, "v2_alpha": 0.25},
}


@pytest.fixture(scope="module")
def gptqmodel_dir(tiny_model, tmp_path_factory):
    """A GPTQModel-like output directory: act-order asym 4-bit, its config as GPTQModel writes it."""
    out = tmp_path_factory.mktemp("gptqmodel") / "tiny-gptq-4bit"
    build_quantized_checkpoint(tiny_model("llama"), out, "gptq", bits=4, group=32, sym=False, act_order=True)
    (out / ARTIFACT_MANIFEST).unlink()
    cfg = json.loads((out / "config.json").read_text())
    cfg["quantization_config"] = GPTQMODEL_CONFIG
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "quantize_config.json").write_text(json.dumps(GPTQMODEL_CONFIG, indent=2))
    return out


def test_a_gptqmodel_directory_is_detected_as_hf_gptq(gptqmodel_dir):
    artifact = open_checkpoint(str(gptqmodel_dir))
    assert artifact.format == "hf-gptq"
    assert artifact.meta["quantizer"] == ["gptqmodel:7.7.0"] and artifact.meta["detected_from"] == "config.json"
    assert artifact.meta["bits"] == 4 and artifact.meta["desc_act"] is True


def test_quantize_config_json_alone_is_enough(gptqmodel_dir, tmp_path):
    import shutil

    legacy = tmp_path / "autogptq"
    shutil.copytree(gptqmodel_dir, legacy)
    cfg = json.loads((legacy / "config.json").read_text())
    del cfg["quantization_config"]
    (legacy / "config.json").write_text(json.dumps(cfg))
    artifact = open_checkpoint(str(legacy))
    assert artifact.format == "hf-gptq" and artifact.meta["detected_from"] == "quantize_config.json"


def test_teeny_eval_accepts_a_gptqmodel_directory_as_is(gptqmodel_dir, tiny_model, tmp_path):
    r = CliRunner().invoke(cli, ["eval", str(gptqmodel_dir), "-b", "fidelity", "-o", "chunks=2", "-o",
                                 "chunk_len=32", "--reference", str(tiny_model("llama")), "--out",
                                 str(tmp_path / "eval")])
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["fidelity"]
    assert 0 < metrics["kl_mean"] < 1 and metrics["perplexity"] > 1


@pytest.mark.parametrize("change,message", [
    ({"checkpoint_format": "marlin"}, "checkpoint_format='marlin' is not supported; expected gptq"),
    ({"pack_dtype": "int16"}, "pack_dtype='int16' is not supported"),
    ({"quant_method": "compressed-tensors"}, "quantization_config.format='' is not supported; expected one of"),
    ({"quant_method": "bitsandbytes"}, "quant_method='bitsandbytes' is not supported"),
    ({"quant_method": "awq", "version": "gemv"}, "version='gemv' is not supported"),
])
def test_layouts_no_runtime_reads_are_refused_in_one_line(gptqmodel_dir, tmp_path, change, message):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(gptqmodel_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["quantization_config"] = {**GPTQMODEL_CONFIG, **change}
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(TeenyError, match=message.replace("(", r"\(")) as info:
        open_checkpoint(str(other))
    assert "\n" not in str(info.value)


def test_a_gguf_file_is_recognised_by_its_header(tmp_path):
    good, bad = tmp_path / "m.gguf", tmp_path / "fake.gguf"
    good.write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(16))
    bad.write_bytes(b"PK\x03\x04" + bytes(16))
    artifact = open_checkpoint(str(good))
    assert (artifact.format, artifact.file, artifact.meta["detected_from"]) == ("gguf", "m.gguf", "GGUF header")
    with pytest.raises(TeenyError, match="is not a GGUF file"):
        open_checkpoint(str(bad))
    float_dir = tmp_path / "float"
    float_dir.mkdir()
    (float_dir / "config.json").write_text("{}")
    assert open_checkpoint(str(float_dir)).format == "hf"


def test_a_checkpoint_variant_runs_next_to_quantized_ones(gptqmodel_dir, tiny_model, tmp_path):
    root = tmp_path / "runs"
    (tmp_path / "exp.toml").write_text(experiment_toml("ckpt", tiny_model("llama"), root, chunks=2, chunk_len=32,
                                                       body="\n".join([
        "[[variants]]", 'name = "vendor-gptq"', f'checkpoint = "{gptqmodel_dir}"',
        "[[variants]]", 'name = "rtn-w4"', 'method = "rtn"', "bits = 4", "group_size = 32",
    ]) + "\n"))
    r = CliRunner().invoke(cli, ["run", str(tmp_path / "exp.toml")])
    assert r.exit_code == 0, r.output
    results = json.loads((root / "ckpt" / "results.json").read_text())
    by_name = {v["name"]: v for v in results["variants"]}
    vendor = by_name["vendor-gptq"]
    assert vendor["method"] == "checkpoint"
    assert vendor["describe"] == {"checkpoint": str(gptqmodel_dir), "format": "hf-gptq", "bits": 4,
                                  "group_size": 32, "sym": False, "desc_act": True}
    assert 0 < vendor["metrics"]["fidelity"]["kl_mean"] < 1
    runtime = vendor["profile"]["load"]["runtime"]
    assert runtime["name"] == "transformers" and runtime["kernels"] == "packed" and runtime["float_layers"] == {}
    assert by_name["rtn-w4"]["profile"]["load"]["runtime"]["kernels"] == "packed"  # RTN as hf-gptq
    assert vendor["artifact_bytes"] == sum(p.stat().st_size for p in gptqmodel_dir.iterdir())
    assert not (root / "ckpt" / "vendor-gptq" / "artifact").exists()  # evaluated in place, not copied
