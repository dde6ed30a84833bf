"""HF -> GGUF conversion: llama.cpp loads our files and computes what transformers computes."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("llama_cpp")

TEXT = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0  # the quick brown fox"


def _llama(path, n_ctx=128):
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=128, n_ubatch=128, logits_all=True,
                           verbose=False, n_threads=2)


def _log_softmax64(logits):
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _hf_logits(model_dir, ids):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def _llama_cpp_logits(gguf_path, ids):
    llm = _llama(gguf_path)
    llm.eval(ids)
    out = np.array(llm.scores[: len(ids)], dtype=np.float64)
    llm.close()
    return out


# llama.cpp keeps its KV cache in F16 and accumulates in F32, so even an F32 file differs from a float64
# transformers forward by ~1e-3 in the logits; F16/BF16 weights add their own rounding.
TOLERANCE = {"F32": 3e-3, "F16": 1e-2, "BF16": 5e-2}


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("outtype", ["F32", "F16"])
def test_llama_cpp_logits_match_transformers(arch, outtype, gguf_tiny_hf, tmp_path, tiny_tokenizer):
    from teeny_core.modeling import ModelSource
    from teeny_gguf.convert import convert_to_gguf

    model_dir = gguf_tiny_hf(arch)
    path = convert_to_gguf(ModelSource(str(model_dir)), tmp_path / f"{arch}.gguf", outtype)
    ids = tiny_tokenizer.encode(TEXT)
    assert len(ids) < 64  # below the tiny Gemma3's sliding window: both sides attend to everything
    ref = _hf_logits(model_dir, ids)
    got = _llama_cpp_logits(path, ids)
    assert np.abs(got - ref).max() < TOLERANCE[outtype], np.abs(got - ref).max()
    p_ref = _log_softmax64(ref)
    kl = (np.exp(p_ref) * (p_ref - _log_softmax64(got))).sum(-1).max()
    assert kl < 1e-5
    assert (got.argmax(-1) == ref.argmax(-1)).mean() > 0.9


def test_bf16_file_with_biases(gguf_tiny_hf, tmp_path, tiny_tokenizer):
    from teeny_core.modeling import ModelSource
    from teeny_gguf.convert import convert_to_gguf
    from teeny_gguf.reader import gguf_stats

    model_dir = gguf_tiny_hf("qwen2")
    path = convert_to_gguf(ModelSource(str(model_dir)), tmp_path / "q.gguf", "BF16")
    stats = gguf_stats(path)
    assert set(stats["tensor_types"]) == {"BF16", "F32"}  # matrices BF16; norms and q/k/v biases F32
    ids = tiny_tokenizer.encode(TEXT)
    assert np.abs(_llama_cpp_logits(path, ids) - _hf_logits(model_dir, ids)).max() < TOLERANCE["BF16"]


def test_layout_tied_embeddings_gemma_norms_and_metadata(gguf_tiny_hf, tmp_path, tiny_tokenizer):
    import gguf
    from safetensors import safe_open

    from teeny_core.modeling import ModelSource
    from teeny_gguf.convert import convert_to_gguf

    names = {}
    for arch in ("llama", "qwen2", "gemma3"):
        path = convert_to_gguf(ModelSource(str(gguf_tiny_hf(arch))), tmp_path / f"{arch}.gguf", "F32")
        reader = gguf.GGUFReader(str(path))
        names[arch] = {t.name: t for t in reader.tensors}
        assert reader.fields["tokenizer.chat_template"].contents() == tiny_tokenizer.chat_template
        assert reader.fields["tokenizer.ggml.model"].contents() == "gpt2"
        assert reader.fields["tokenizer.ggml.pre"].contents() in ("gpt-2", "qwen2")  # a regex llama.cpp knows
        assert reader.fields["tokenizer.ggml.eos_token_id"].contents() == tiny_tokenizer.eos_token_id
        assert len(reader.fields["tokenizer.ggml.tokens"].data) == len(tiny_tokenizer)
    assert "output.weight" in names["llama"]  # untied
    assert "output.weight" not in names["qwen2"] and "output.weight" not in names["gemma3"]  # tied: written once
    assert "blk.0.attn_q.bias" in names["qwen2"]
    with safe_open(str(gguf_tiny_hf("gemma3") / "model.safetensors"), "pt") as f:
        hf_norm = f.get_tensor("model.layers.0.self_attn.q_norm.weight").numpy()
    assert np.allclose(np.asarray(names["gemma3"]["blk.0.attn_q_norm.weight"].data), hf_norm + 1.0)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_llama_cpp_tokenizes_like_hf(arch, gguf_tiny_hf, tmp_path):
    """The tokenizer HF loads for the model (Qwen2's class brings its own split regex) and llama.cpp's agree."""
    from teeny_core.modeling import ModelSource
    from teeny_gguf.convert import convert_to_gguf

    source = ModelSource(str(gguf_tiny_hf(arch)))
    hf_tokenizer = source.load_tokenizer()
    path = convert_to_gguf(source, tmp_path / "l.gguf", "F16")
    llm = _llama(path)
    texts = [TEXT, "  leading spaces\n\n\ttabs", "ünïcödé, emoji 🦙 and 12345 digits", "'s 've 're it's"]
    for text in texts:
        ids = hf_tokenizer.encode(text)
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids
        assert llm.detokenize(ids).decode() == text
    llm.close()


def test_gguf_source_round_trip(gguf_tiny_hf, tmp_path, tiny_tokenizer):
    """GGUF -> HF (dequantized) is exact, and GGUF -> GGUF through our converter keeps llama.cpp's logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from teeny_core.modeling import ModelSource
    from teeny_gguf.convert import convert_to_gguf
    from teeny_gguf.reader import gguf_to_hf

    model_dir = gguf_tiny_hf("qwen2")
    f32 = convert_to_gguf(ModelSource(str(model_dir)), tmp_path / "q-f32.gguf", "F32")
    hf_dir = gguf_to_hf(f32, tmp_path / "hf", dtype="float32")
    original = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).state_dict()
    restored = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    assert AutoTokenizer.from_pretrained(hf_dir).encode(TEXT) == AutoTokenizer.from_pretrained(model_dir).encode(TEXT)

    again = convert_to_gguf(ModelSource(str(tmp_path), gguf_file=f32.name), tmp_path / "q-again.gguf", "F32")
    ids = tiny_tokenizer.encode(TEXT)
    assert np.abs(_llama_cpp_logits(again, ids) - _llama_cpp_logits(f32, ids)).max() < 1e-5


def test_unsupported_model_and_type_are_one_line_errors(tmp_path, gguf_tiny_hf):
    import transformers

    from teeny_core.errors import TeenyError
    from teeny_core.modeling import ModelSource
    from teeny_gguf.convert import convert_to_gguf

    with pytest.raises(TeenyError, match="GGUF output type 'Q4_K' is not valid; expected one of F32, F16, BF16"):
        convert_to_gguf(ModelSource(str(gguf_tiny_hf("llama"))), tmp_path / "x.gguf", "Q4_K")
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64))
    gpt2.save_pretrained(tmp_path / "gpt2")
    with pytest.raises(TeenyError, match="cannot convert model type 'gpt2' to GGUF; supported: gemma3, .*llama"):
        convert_to_gguf(ModelSource(str(tmp_path / "gpt2")), tmp_path / "y.gguf")


def _vocab_only_gguf(path, vocab_size: int, write_vocab) -> None:
    """A GGUF with Llama hyperparameters and a vocabulary but no tensors (llama.cpp loads it vocab_only)."""
    import gguf

    writer = gguf.GGUFWriter(path, "llama")
    for add, value in ((writer.add_context_length, 64), (writer.add_embedding_length, 64), (writer.add_block_count, 1),
                       (writer.add_feed_forward_length, 128), (writer.add_head_count, 2), (writer.add_head_count_kv, 2),
                       (writer.add_layer_norm_rms_eps, 1e-5), (writer.add_vocab_size, vocab_size)):
        add(value)
    write_vocab(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("dummy_prefix", [True, False])
def test_sentencepiece_vocabularies_tokenize_like_sentencepiece(dummy_prefix, tmp_path):
    """SentencePiece BPE (byte fallback, identity normalisation, as Llama/Gemma ship) in both forms we read:
    ``tokenizer.model`` itself, and the tokenizer.json transformers makes of it from a GGUF (what a
    dequantized GGUF baseline directory holds). llama.cpp must give sentencepiece's token ids for both."""
    import llama_cpp
    from transformers import AutoTokenizer

    spm = pytest.importorskip("sentencepiece")
    from teeny_core.modeling import ModelSource
    from teeny_core.testing import _corpus
    from teeny_gguf.vocab import write_sentencepiece_vocab, write_tokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(_corpus()))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=400,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0,
                                   add_dummy_prefix=dummy_prefix, normalization_rule_name="identity",
                                   remove_extra_whitespaces=False, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "sp.model"))
    n = sp.vocab_size()

    def from_model(writer):
        write_sentencepiece_vocab(writer, tmp_path / "sp.model", n, {})
        writer.add_bos_token_id(sp.bos_id())
        writer.add_eos_token_id(sp.eos_id())
        writer.add_unk_token_id(sp.unk_id())
        writer.add_add_bos_token(True)

    (tmp_path / "a").mkdir()
    _vocab_only_gguf(tmp_path / "a" / "vocab.gguf", n, from_model)
    AutoTokenizer.from_pretrained(tmp_path / "a", gguf_file="vocab.gguf").save_pretrained(tmp_path / "hf")
    _vocab_only_gguf(tmp_path / "b.gguf", n, lambda w: write_tokenizer(w, ModelSource(str(tmp_path / "hf")), n))
    hf = AutoTokenizer.from_pretrained(tmp_path / "hf")
    texts = (TEXT, "  two  spaces\tand a tab", "ünïcödé 🦙 (byte fallback) 12345", "Hello world")
    a = llama_cpp.Llama(str(tmp_path / "a" / "vocab.gguf"), vocab_only=True, verbose=False)
    b = llama_cpp.Llama(str(tmp_path / "b.gguf"), vocab_only=True, verbose=False)
    for text in texts:
        via_model = a.tokenize(text.encode(), add_bos=False, special=False)
        via_json = b.tokenize(text.encode(), add_bos=False, special=False)
        assert via_model == sp.encode(text), text
        # transformers' import of this GGUF differs from sentencepiece where it adds no "▁" before leading
        # whitespace, and (dummy_prefix=False) adds one the model does not; llama.cpp follows HF's file
        if not text[0].isspace():
            assert via_json == hf.encode(text, add_special_tokens=False), text
        if dummy_prefix:
            assert via_json == sp.encode(text), text
    assert a.tokenize(b"Hello", add_bos=True)[0] == b.tokenize(b"Hello", add_bos=True)[0] == sp.bos_id()
    a.close()
    b.close()
