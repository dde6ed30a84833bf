"""Every window Teeny feeds a model starts the way the tokenizer starts a document (issue 11): fidelity windows,
every calibrator, and the windows GPTQ, AWQ and the GGUF importance matrix actually run."""

from __future__ import annotations

import json

import pytest

from teeny_core import windows
from teeny_core.builtin.fidelity import FidelityOptions, token_chunks
from teeny_core.errors import TeenyError
from teeny_core.testing import add_bos, build_tiny_model

TEXT = ("def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0\n    y: int = 0\n"
        "The quick brown fox jumps over the lazy dog. ") * 20


@pytest.fixture(scope="module")
def bos_tokenizer(tiny_tokenizer):
    return add_bos(tiny_tokenizer)


@pytest.fixture(params=["no-bos", "bos"])
def tokenizer(request, tiny_tokenizer, bos_tokenizer):
    return tiny_tokenizer if request.param == "no-bos" else bos_tokenizer


def test_document_prefix_is_what_transformers_prepends(tiny_tokenizer, bos_tokenizer):
    assert windows.document_prefix(bos_tokenizer) == [bos_tokenizer.bos_token_id]
    assert bos_tokenizer("x y")["input_ids"][0] == bos_tokenizer.bos_token_id
    assert windows.document_prefix(tiny_tokenizer) == []  # like Qwen2: no BOS, although bos_token is set
    assert tiny_tokenizer("x y")["input_ids"] == tiny_tokenizer("x y", add_special_tokens=False)["input_ids"]


def test_document_prefix_rejects_a_tokenizer_that_rewrites_the_text():
    class Odd:
        def encode(self, text, add_special_tokens=True):
            return [7, 8] if add_special_tokens else [1, 2]

    with pytest.raises(TeenyError, match=r"does not contain the text's own tokens \[1, 2\]"):
        windows.document_prefix(Odd())


def test_fidelity_windows_start_like_transformers_tokenizes_a_document(tokenizer, tmp_path):
    path = tmp_path / "held-out.txt"
    path.write_text(TEXT)
    chunks = token_chunks(tokenizer, FidelityOptions.from_mapping({"path": str(path), "chunks": 3, "chunk_len": 16}))
    prefix = windows.document_prefix(tokenizer)
    assert chunks[0] == tokenizer(TEXT)["input_ids"][:16]  # the first window is exactly tokenizer(text)
    assert [c[:len(prefix)] for c in chunks] == [prefix] * 3 and all(len(c) == 16 for c in chunks)
    body = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert [t for c in chunks for t in c[len(prefix):]] == body[:3 * (16 - len(prefix))]  # contiguous, no gaps


@pytest.mark.parametrize("method", ["code", "text-file", "jsonl", "random-tokens"])
def test_every_calibrator_starts_each_window_like_a_document(teeny_plugins, tokenizer, method, tmp_path):
    (tmp_path / "a.txt").write_text(TEXT)
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": TEXT}) + "\n")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "m.py").write_text(TEXT)
    extra = {"code": {"path": str(tmp_path / "src")}, "text-file": {"path": [str(tmp_path / "a.txt")]},
             "jsonl": {"path": str(tmp_path / "a.jsonl")}, "random-tokens": {}}[method]
    cls = teeny_plugins.get("calibrator", method)
    cal = cls().samples(tokenizer, cls.Options.from_mapping({"samples": 5, "seq_len": 12, **extra}), seed=3)
    prefix = windows.document_prefix(tokenizer)
    assert [s[:len(prefix)] for s in cal.samples] == [prefix] * 5
    assert all(len(s) == 12 for s in cal.samples)
    assert all(tokenizer.bos_token_id not in s[len(prefix):] for s in cal.samples) or not prefix
    assert cal.meta["windows"] == {"rule": windows.RULE, "prefix": prefix}
    if method != "random-tokens":  # the text after the prefix is a stretch of the document's own tokens
        body = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
        text = ",".join(map(str, body))
        assert all(",".join(map(str, s[len(prefix):])) in text for s in cal.samples)


def test_a_window_with_no_room_for_text_is_a_one_line_error(teeny_plugins, bos_tokenizer):
    cls = teeny_plugins.get("calibrator", "random-tokens")
    with pytest.raises(TeenyError, match=r"window length 1 leaves no room for text after the document prefix"):
        windows.contiguous_windows([bos_tokenizer.bos_token_id], [1, 2, 3], 1, 2)
    cal = cls().samples(bos_tokenizer, cls.Options.from_mapping({"samples": 2, "seq_len": 2}), seed=0)
    assert [s[0] for s in cal.samples] == [bos_tokenizer.bos_token_id] * 2


def test_fidelity_records_name_their_window_rule_and_a_new_rule_remeasures(teeny_plugins):
    from teeny_core.store import options_signature

    cls = teeny_plugins.get("evaluator", "fidelity")
    assert cls.records_version == windows.RULE
    opts = cls.Options().to_dict()
    # records written before the rule existed (or under another rule) carry another config: not reused
    assert options_signature("fidelity", opts, cls.records_version) != options_signature("fidelity", opts)
    assert options_signature("humaneval", {}, "") == options_signature("humaneval", {})  # others unchanged


def test_gptq_awq_and_the_imatrix_run_the_same_windows(teeny_plugins, bos_tokenizer, tmp_path, monkeypatch):
    """One calibration set; every method's model sees exactly its windows (BOS first), nothing else."""
    import torch

    pytest.importorskip("teeny_gptq")
    pytest.importorskip("teeny_awq")
    pytest.importorskip("llama_cpp")
    from teeny_core.modeling import ModelSource

    model_dir = build_tiny_model("llama", tmp_path / "model", tokenizer=bos_tokenizer)
    code = teeny_plugins.get("calibrator", "code")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "m.py").write_text(TEXT)
    cal = code().samples(bos_tokenizer, code.Options.from_mapping(
        {"samples": 4, "seq_len": 32, "path": str(tmp_path / "src")}), seed=0)
    seen: dict[str, list[list[int]]] = {}
    current = {"method": ""}
    embed = torch.nn.Embedding.forward

    def spy(self, ids):
        seen.setdefault(current["method"], []).extend(ids.reshape(-1, ids.shape[-1]).tolist())
        return embed(self, ids)

    monkeypatch.setattr(torch.nn.Embedding, "forward", spy)
    runs = {"gptq": {"bits": 4, "group_size": 32}, "awq": {"bits": 4, "group_size": 32},
            "gguf": {"type": "Q4_K_M", "imatrix": "on"}}
    for method, options in runs.items():
        current["method"] = method
        cls = teeny_plugins.get("quantizer", method)
        out = tmp_path / method
        out.mkdir()
        cls().quantize(ModelSource(str(model_dir)), cal, cls.Options.from_mapping(options), out)
    expected = sorted(cal.samples)
    assert all(s[0] == bos_tokenizer.bos_token_id for s in expected)
    for method in runs:
        assert sorted(seen[method]) == expected, method
