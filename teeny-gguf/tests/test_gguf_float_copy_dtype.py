"""A GGUF source dequantizes to a bfloat16 float copy by default, so every artifact made from it keeps its
unquantized tensors (embedding, lm_head, norms, biases) in 16 bits, as real GPTQ/AWQ checkpoints do; float32
stays available (``baseline_dtype = "float32"`` in an experiment, ``--dtype float32`` for ``teeny quantize``).
Dtypes are read from the safetensors headers themselves."""

from __future__ import annotations


import pytest

from teeny_core.testing import header_dtypes

pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def f32_gguf(gguf_tiny_hf, tmp_path_factory):
    """A float32 GGUF of a tiny Qwen2 (random q/k/v biases, tied embeddings): a source that dequantizes to
    float32, as a Q4_K_M file does."""
    from teeny_core import ModelSource
    from teeny_gguf.convert import convert_to_gguf

    return convert_to_gguf(ModelSource(str(gguf_tiny_hf("qwen2"))), tmp_path_factory.mktemp("src") / "q.gguf", "F32")


@pytest.mark.parametrize("method", ["rtn", "gptq", "awq"])
def test_artifacts_of_a_gguf_source_hold_no_float32_tensor(f32_gguf, tmp_path, monkeypatch, method):
    from click.testing import CliRunner

    from teeny_core.cli import cli

    monkeypatch.setenv("TEENY_CACHE", str(tmp_path / "cache"))
    out = tmp_path / method
    args = ["quantize", str(f32_gguf), "--method", method, "-o", "bits=4", "-o", "group_size=64", "--out", str(out)]
    if method != "rtn":
        args += ["--calibrator", "random-tokens", "-c", "samples=4", "-c", "seq_len=32"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    [copy] = (tmp_path / "cache" / "gguf-float").iterdir()
    assert set(header_dtypes(copy).values()) == {"BF16"}
    dtypes = header_dtypes(out)
    assert any(name.endswith(".qweight") for name in dtypes)
    assert "F32" not in dtypes.values(), sorted(n for n, d in dtypes.items() if d == "F32")
    assert dtypes["model.embed_tokens.weight"] == dtypes["model.norm.weight"] == "BF16"
    assert dtypes["model.layers.0.self_attn.q_proj.bias"] == "BF16"


def test_baseline_dtype_float32_keeps_float32(f32_gguf, tmp_path, teeny_plugins):
    from teeny_core.experiment import build_experiment
    from teeny_core.plan import Plan
    from teeny_core.worker import VariantRunner

    def runner(**extra):
        exp = build_experiment({"name": "f32", "model": str(f32_gguf), "output_dir": str(tmp_path),
                                "evaluators": {"fidelity": {"chunks": 1, "chunk_len": 16}},
                                "variants": [{"name": "rtn-w4", "method": "rtn", "group_size": 64}], **extra},
                               teeny_plugins)
        return VariantRunner(Plan(exp, teeny_plugins), emit=lambda _: None)

    default, f32 = runner(), runner(baseline_dtype="float32")
    assert set(header_dtypes(default.float_artifact().path).values()) == {"BF16"}
    assert set(header_dtypes(f32.float_artifact().path).values()) == {"F32"}
    assert default.float_artifact().path != f32.float_artifact().path  # one copy per dtype, both kept
    assert default.plan.variant_key(default.plan.variant("rtn-w4")) != f32.plan.variant_key(f32.plan.variant("rtn-w4"))
    artifact = f32.quantize("rtn-w4")
    dtypes = header_dtypes(artifact.path)
    assert dtypes["model.embed_tokens.weight"] == dtypes["model.norm.weight"] == "F32"
    assert artifact.meta["stored_dtype"] == "float32"


@pytest.mark.parametrize("value", ["float64", "fp16", 16])
def test_a_bad_baseline_dtype_is_one_line(f32_gguf, tmp_path, teeny_plugins, value):
    from teeny_core import TeenyError
    from teeny_core.experiment import build_experiment

    with pytest.raises(TeenyError) as err:
        build_experiment({"name": "x", "model": str(f32_gguf), "baseline_dtype": value}, teeny_plugins, where="x.toml")
    assert str(err.value) == (f"x.toml: baseline_dtype={value!r} is not valid; expected one of bfloat16, float16, "
                              "float32")
