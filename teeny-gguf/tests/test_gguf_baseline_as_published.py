"""A GGUF source with ``baseline_runtime = "llama.cpp"``: the original is scored as published (the GGUF
file in llama.cpp, tokenized like the variants) while quantizers read the float copy; a variant limited to
some evaluators runs only those, and a rerun finds everything complete."""

import pytest

pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def gguf_source(gguf_tiny_hf, tmp_path_factory):
    from teeny_core import ModelSource
    from teeny_gguf.quantizer import GGUFQuantizer

    out = tmp_path_factory.mktemp("published")
    art = GGUFQuantizer().quantize(ModelSource(str(gguf_tiny_hf("qwen2"))), None,
                                   GGUFQuantizer.Options.from_mapping({"type": "Q8_0"}), out)
    return art.location


def test_original_as_published_and_variant_evaluator_subsets(gguf_source, tmp_path, teeny_plugins):
    import numpy as np

    from teeny_core.experiment import build_experiment
    from teeny_core.pipeline import Pipeline
    from teeny_gguf.runtime import LlamaCppRuntime

    if "humaneval" not in teeny_plugins.names("evaluator"):
        pytest.skip("needs teeny-bench's humaneval as the second evaluator")
    exp = build_experiment({
        "name": "published", "model": str(gguf_source), "output_dir": str(tmp_path), "limit": 1,
        "baseline_runtime": "llama.cpp", "analyzers": {}, "profilers": {},
        "evaluators": {"fidelity": {"chunks": 2, "chunk_len": 32}, "humaneval": {"max_new_tokens": 4}},
        "variants": [{"name": "rtn-w8", "method": "rtn", "bits": 8, "evaluators": ["fidelity"]}],
    }, teeny_plugins)
    said: list[str] = []
    pipeline = Pipeline(exp, teeny_plugins, say=said.append)
    results = pipeline.run()

    base = pipeline.runner.baseline_artifact()
    assert base.format == "gguf" and base.location.resolve() == gguf_source.resolve()
    assert "original: loading with llama.cpp" in said and "rtn-w8: loading with transformers" in said
    assert pipeline.runner.baseline_source().path == str(pipeline.runner.float_artifact().path)  # quantizers read floats
    # the original as published is the reference: the runtime's own logits on it match the GGUF file's
    model = LlamaCppRuntime().load(base, LlamaCppRuntime.Options.from_mapping({"n_threads": 2}))
    ids = model.tokenizer.encode("def add(a, b):\n    return a + b\n")
    direct = LlamaCppRuntime().load(base.__class__("gguf", gguf_source.parent, file=gguf_source.name),
                                    LlamaCppRuntime.Options.from_mapping({"n_threads": 2, "hf_tokenizer": False}))
    np.testing.assert_allclose(model.logits(ids), direct.logits(ids), rtol=0, atol=1e-5)
    model.close()
    direct.close()

    original, rtn = results["variants"]
    assert set(original["metrics"]) == {"fidelity", "humaneval"}
    assert set(rtn["metrics"]) == {"fidelity"} and rtn["metrics"]["fidelity"]["kl_mean"] >= 0
    said.clear()
    Pipeline(exp, teeny_plugins, say=said.append).run()
    assert said == ["original: already complete", "rtn-w8: already complete"]
