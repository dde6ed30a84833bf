"""The gguf quantizer, the importance matrix and the llama.cpp runtime on tiny models."""

from __future__ import annotations

import numpy as np
import pytest

from teeny_core.testing import QuantizerContract, RuntimeContract

pytest.importorskip("llama_cpp")

TEXT = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0\n    y: int = 0\n"


class TestGGUFQuantizerContract(QuantizerContract):
    """The core's checks, on the hidden-128 fixture (k-quant rows fall back to legacy types)."""

    method = "gguf"
    options = {"type": "Q4_K_M"}


class TestLlamaCppRuntimeContract(RuntimeContract):
    """The core's runtime checks (stop strings cut the text, length limits), run on llama.cpp with an F16 file."""

    runtime = "llama.cpp"

    @pytest.fixture
    def artifact(self, gguf_tiny_hf, tmp_path):
        return _quantize(gguf_tiny_hf("llama"), tmp_path / "f16", None, type="F16")


def test_k_quant_rows_not_multiple_of_256_fall_back(tiny_model, tmp_path):
    """Hidden size 128: llama.cpp stores those k-quant tensors in a legacy type and we record how many."""
    art = _quantize(tiny_model("llama"), tmp_path / "q", None, type="Q4_K_M")
    assert art.meta["fallback_tensors"] > 0
    assert "Q5_0" in art.meta["tensor_types"]


def _quantize(source_dir, out_dir, calibration=None, **options):
    from teeny_core.modeling import ModelSource
    from teeny_gguf.quantizer import GGUFQuantizer

    out_dir.mkdir(parents=True, exist_ok=True)
    opts = GGUFQuantizer.Options.from_mapping(options, where="gguf")
    return GGUFQuantizer().quantize(ModelSource(str(source_dir)), calibration, opts, out_dir)


def _load(artifact, **options):
    from teeny_gguf.runtime import LlamaCppRuntime

    return LlamaCppRuntime().load(artifact, LlamaCppRuntime.Options.from_mapping({"n_threads": 2, **options}))


def _log_softmax64(logits):
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _kl(ref_logits, logits) -> float:
    """Mean over positions of KL(ref || variant), in float64."""
    p, q = _log_softmax64(ref_logits), _log_softmax64(logits)
    return float((np.exp(p) * (p - q)).sum(-1).mean())


@pytest.fixture(scope="module")
def quantized(gguf_tiny_hf, gguf_calibration, tmp_path_factory):
    """F16, Q8_0, Q4_K_M and IQ2_XS (imatrix from the calibration set) artifacts of the tiny Llama."""
    root = tmp_path_factory.mktemp("gguf-quantized")
    model_dir = gguf_tiny_hf("llama")
    return {t: _quantize(model_dir, root / t, gguf_calibration, type=t) for t in ("F16", "Q8_0", "Q4_K_M", "IQ2_XS")}


def test_types_keep_fidelity_in_order(quantized, tiny_tokenizer):
    ids = tiny_tokenizer.encode(TEXT)
    logits = {}
    for t, artifact in quantized.items():
        model = _load(artifact)
        logits[t] = model.logits(ids)
        model.close()
    kl = {t: _kl(logits["F16"], logits[t]) for t in ("Q8_0", "Q4_K_M", "IQ2_XS")}
    assert kl["Q8_0"] < 1e-4  # Q8_0 is near-lossless (measured ~2e-5 on this model)
    assert kl["Q8_0"] * 5 < kl["Q4_K_M"] < kl["IQ2_XS"]
    bpw = {t: a.meta["bits_per_weight"] for t, a in quantized.items()}
    assert bpw["F16"] > bpw["Q8_0"] > bpw["Q4_K_M"] > bpw["IQ2_XS"]
    assert 8.0 < bpw["Q8_0"] < 9.0 and 2.0 < bpw["IQ2_XS"] < 3.5
    assert quantized["IQ2_XS"].meta["tensor_types"].get("IQ2_XS", 0) > 0


def test_imatrix_is_recorded_and_saved(quantized):
    from teeny_gguf.imatrix import read_imatrix
    from teeny_gguf.reader import gguf_metadata

    art = quantized["IQ2_XS"]
    assert art.meta["imatrix"]["from"] == "computed"
    assert art.meta["imatrix"]["entries"] == 2 * 7  # q, k, v, o, gate, up, down in each of 2 blocks
    saved = read_imatrix(art.path / "imatrix.gguf")
    assert len(saved) == 14 and saved.chunk_count == 4 and saved.chunk_size == 64
    meta = gguf_metadata(art.location, "quantize.imatrix.")
    assert meta["quantize.imatrix.entries_count"] == 14 and meta["quantize.imatrix.chunks_count"] == 4
    assert quantized["Q4_K_M"].meta["imatrix"] is None  # imatrix=auto: off for 4-bit k-quants


def test_generation_greedy_sampled_and_stop_strings(quantized):
    model = _load(quantized["Q8_0"])
    [a, b] = model.generate(["def add(a, b):", "def add(a, b):"], max_new_tokens=12)
    assert a.text == b.text and a.tokens == 12 and a.finish_reason == "length"  # greedy is deterministic
    assert a.first_token_seconds is not None and a.seconds >= a.first_token_seconds
    stop = a.text[3:6]
    [cut] = model.generate(["def add(a, b):"], max_new_tokens=12, stop=[stop])
    assert cut.finish_reason == "stop" and cut.text == a.text[: a.text.find(stop)]
    s1 = model.generate(["x"], max_new_tokens=10, temperature=1.0, seed=7)[0].text
    s2 = model.generate(["x"], max_new_tokens=10, temperature=1.0, seed=7)[0].text
    assert s1 == s2
    model.close()


def test_weight_bytes_are_the_quantized_tensors(quantized):
    """What llama.cpp holds is each tensor in its stored type: elements / block size * block bytes, counted from
    the GGUF's tensor shapes and types (gguf's block table), and Q4_K_M holds far less than F16."""
    from gguf import GGML_QUANT_SIZES, GGUFReader

    held = {}
    for name in ("F16", "Q4_K_M"):
        reader = GGUFReader(quantized[name].location)
        expected = 0
        for t in reader.tensors:
            block, block_bytes = GGML_QUANT_SIZES[t.tensor_type]
            expected += int(np.prod([int(d) for d in t.shape])) // block * block_bytes
        model = _load(quantized[name])
        held[name] = model.weight_bytes()
        model.close()
        assert held[name] == expected, name
    assert held["Q4_K_M"] < 0.5 * held["F16"]


def test_logprobs_shape_and_normalisation(quantized, tiny_tokenizer):
    import torch

    model = _load(quantized["F16"])
    ids = tiny_tokenizer.encode(TEXT)[:20]
    lp = model.logprobs([ids, ids[::-1]])
    assert lp.dtype == torch.float32 and tuple(lp.shape) == (2, 20, len(tiny_tokenizer))
    assert torch.allclose(lp.exp().sum(-1), torch.ones(2, 20), atol=1e-5)
    assert torch.allclose(lp[0], model.logprobs([ids])[0])  # scoring does not depend on what ran before
    model.close()


def test_gguf_tokenizer_adapter_matches_hf(quantized, tiny_tokenizer):
    model = _load(quantized["Q8_0"], hf_tokenizer=False)
    tok = model.tokenizer
    assert type(tok).__name__ == "GGUFTokenizer"
    assert tok.encode(TEXT) == tiny_tokenizer.encode(TEXT)
    assert tok.decode(tok.encode(TEXT)) == TEXT
    assert tok.all_special_ids == tiny_tokenizer.all_special_ids and tok.eos_token_id == tiny_tokenizer.eos_token_id
    messages = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == \
        tiny_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    model.close()
    from teeny_core.errors import TeenyError

    with pytest.raises(TeenyError, match="model behind this tokenizer was closed"):
        tok.encode("x")  # not a crash on freed memory


def test_bad_type_is_a_one_line_error():
    from teeny_core.errors import TeenyError
    from teeny_core.options import OptionsError
    from teeny_gguf.llama_quant import ftype_value
    from teeny_gguf.quantizer import GGUFQuantizer

    with pytest.raises(OptionsError, match=r"option type='Q9_K' is not valid; expected .*Q4_K_M.*IQ2_XS") as err:
        GGUFQuantizer.Options.from_mapping({"type": "Q9_K"}, where="gguf")
    assert "\n" not in str(err.value)
    with pytest.raises(TeenyError, match="GGUF type 'Q9' is not valid; expected one of F32, F16, BF16, Q8_0"):
        ftype_value("Q9")


def test_failed_quantization_names_type_and_reason(gguf_tiny_hf, tmp_path):
    from teeny_core.errors import TeenyError

    with pytest.raises(TeenyError) as err:
        _quantize(gguf_tiny_hf("llama"), tmp_path / "a", None, type="IQ2_XS", imatrix="off")
    assert str(err.value) == ("GGUF quantization to IQ2_XS failed: IQ2_XS needs an importance matrix "
                              "(use -o imatrix=on with a calibrator, or -o imatrix_file=PATH)")
    with pytest.raises(TeenyError, match="type IQ2_XS with imatrix=auto needs a calibration set"):
        _quantize(gguf_tiny_hf("llama"), tmp_path / "b", None, type="IQ2_XS")


def test_imatrix_matches_float64_reference(gguf_tiny_hf, gguf_calibration):
    """blk.0.attn_{q,k,v} see RMSNorm(embedding): recompute E[x_j^2] from the weights in float64."""
    import torch
    from transformers import AutoModelForCausalLM

    from teeny_gguf.imatrix import compute_imatrix

    model = AutoModelForCausalLM.from_pretrained(gguf_tiny_hf("llama"), dtype=torch.float32).eval()
    imatrix = compute_imatrix(gguf_tiny_hf("llama"), gguf_calibration, progress=False)
    means = imatrix.means()
    ids = gguf_calibration.tensor().reshape(-1)
    x = model.model.embed_tokens.weight.double()[ids]
    norm = model.model.layers[0].input_layernorm
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon) * norm.weight.double()
    ref = y.pow(2).mean(0).detach().numpy()
    for name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight"):
        np.testing.assert_allclose(means[name], ref, rtol=1e-4)
    assert imatrix.counts["blk.1.ffn_down.weight"][0] == ids.numel()
    assert means["blk.1.ffn_down.weight"].shape == (model.config.intermediate_size,)


def test_imatrix_lowers_activation_weighted_error(gguf_tiny_hf, gguf_calibration, tmp_path):
    """Q2_K with our imatrix puts less squared error where the activations are large (the point of it)."""
    import gguf

    from teeny_gguf.imatrix import read_imatrix

    model_dir = gguf_tiny_hf("llama")
    ref = _quantize(model_dir, tmp_path / "f32", type="F32")
    plain = _quantize(model_dir, tmp_path / "plain", gguf_calibration, type="Q2_K", imatrix="off", pure=True)
    weighted = _quantize(model_dir, tmp_path / "imat", gguf_calibration, type="Q2_K", imatrix="on", pure=True)
    importance = read_imatrix(weighted.path / "imatrix.gguf").means()

    def tensors(artifact):
        reader = gguf.GGUFReader(str(artifact.location))
        return {t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64).reshape(t.data.shape[0], -1)
                for t in reader.tensors if t.name in importance}

    w, a, b = tensors(ref), tensors(plain), tensors(weighted)
    err_plain = sum(float(((a[n] - w[n]) ** 2 * importance[n]).sum()) for n in importance)
    err_imat = sum(float(((b[n] - w[n]) ** 2 * importance[n]).sum()) for n in importance)
    assert err_imat < 0.95 * err_plain


def test_imatrix_files_round_trip_and_feed_llama_cpp(quantized, gguf_tiny_hf, tmp_path):
    from teeny_core.errors import TeenyError
    from teeny_gguf.imatrix import ImportanceMatrix, read_imatrix, write_imatrix

    ours = read_imatrix(quantized["IQ2_XS"].path / "imatrix.gguf")
    for fmt in ("gguf", "dat"):
        path = write_imatrix(ours, tmp_path / f"m.{fmt}")
        back = read_imatrix(path)
        assert back.chunk_count == ours.chunk_count and back.datasets == ours.datasets
        assert back.means().keys() == ours.means().keys()
        for name, values in ours.means().items():
            np.testing.assert_allclose(back.means()[name], values, rtol=1e-6)
        art = _quantize(gguf_tiny_hf("llama"), tmp_path / f"from-{fmt}", None, type="IQ2_XS", imatrix_file=str(path))
        assert art.meta["imatrix"]["from"] == "file" and art.meta["tensor_types"].get("IQ2_XS", 0) > 0
    with pytest.raises(TeenyError, match="not a valid llama.cpp imatrix file"):
        (tmp_path / "junk.dat").write_bytes(b"\x00\x00\x00\x00")
        read_imatrix(tmp_path / "junk.dat")
    wrong = ImportanceMatrix(sums={n: np.ones(3) for n in ours.sums}, counts=dict(ours.counts))
    write_imatrix(wrong, tmp_path / "wrong.gguf")
    with pytest.raises(TeenyError, match="IQ2_XS failed: the importance matrix does not match this model"):
        _quantize(gguf_tiny_hf("llama"), tmp_path / "w", None, type="IQ2_XS", imatrix_file=str(tmp_path / "wrong.gguf"))


def test_scoring_longer_than_context_is_an_error(quantized):
    from teeny_core.errors import TeenyError

    model = _load(quantized["Q8_0"], n_ctx=32)
    with pytest.raises(TeenyError, match="sequence of 40 tokens is longer than n_ctx=32"):
        model.logprobs([[1] * 40])
    model.close()


def test_float_gguf_source_is_quantized_as_is(quantized, tmp_path):
    """A F16 GGUF source skips conversion: llama.cpp quantizes the file itself, to the same tensors."""
    import gguf

    from teeny_core.modeling import ModelSource
    from teeny_gguf.quantizer import GGUFQuantizer

    f16 = quantized["F16"]
    out = tmp_path / "q8"
    out.mkdir()
    opts = GGUFQuantizer.Options.from_mapping({"type": "Q8_0"})
    art = GGUFQuantizer().quantize(ModelSource(str(f16.path), gguf_file=f16.file), None, opts, out)
    assert not (out / "tokenizer.json").exists()  # the GGUF's own tokenizer is the reference
    mine = {t.name: bytes(t.data) for t in gguf.GGUFReader(str(art.location)).tensors}
    via_hf = {t.name: bytes(t.data) for t in gguf.GGUFReader(str(quantized["Q8_0"].location)).tensors}
    assert mine == via_hf
    model = _load(art)
    assert type(model.tokenizer).__name__ == "GGUFTokenizer"
    model.close()
