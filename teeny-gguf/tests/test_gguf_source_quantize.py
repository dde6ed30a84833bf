"""A .gguf file is a model source for every weight quantizer, as the README says of MODEL."""

from __future__ import annotations

import pytest

pytest.importorskip("gguf")


def test_teeny_quantize_takes_a_gguf_file_for_a_walker_method(gguf_tiny_hf, tmp_path, monkeypatch):
    """The layer walker streams safetensors: a GGUF source is dequantized once into Teeny's cache (in float32
    with ``--dtype float32``), and RTN on it gives the same codes as RTN on the HF model the (lossless F32) GGUF
    was written from."""
    from click.testing import CliRunner
    from safetensors.torch import load_file

    from teeny_core.cli import cli
    from teeny_core.modeling import ModelSource
    from teeny_gguf.convert import convert_to_gguf

    monkeypatch.setenv("TEENY_CACHE", str(tmp_path / "cache"))
    model_dir = gguf_tiny_hf("llama")
    gguf_file = convert_to_gguf(ModelSource(str(model_dir)), tmp_path / "tiny-f32.gguf", "F32")
    runner = CliRunner()
    outs = {}
    for name, model in (("from-gguf", gguf_file), ("from-hf", model_dir)):
        out = tmp_path / name
        result = runner.invoke(cli, ["quantize", str(model), "--method", "rtn", "-o", "bits=4", "-o", "group_size=64",
                                     "--dtype", "float32", "--out", str(out)])  # a float32 copy: exact
        assert result.exit_code == 0, result.output
        assert "wrote hf-gptq artifact" in result.output
        outs[name] = load_file(next(out.glob("*.safetensors")))
    assert list((tmp_path / "cache" / "gguf-float").iterdir())  # the float copy, kept for the next run
    a, b = outs["from-gguf"], outs["from-hf"]
    qweights = [k for k in b if k.endswith(".qweight")]
    assert qweights and all((a[k] == b[k]).all() for k in qweights)
