"""Tokenizer metadata for GGUF files: byte-level BPE (``gpt2``), SentencePiece (``llama``), or copied from a GGUF.

llama.cpp tokenizes with its own implementation, so what we write must describe the HF tokenizer exactly:
the token list in id order, token types, BPE merges, special ids, whether BOS/EOS are added, the
pre-tokenizer (llama.cpp knows a fixed set of regex families by name) and the chat template.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from teeny_core.errors import TeenyError
from teeny_core.modeling import ModelSource

log = logging.getLogger(__name__)

# HF pre-tokenizer split regexes -> llama.cpp pre-tokenizer names (llama-vocab.cpp)
_SPLIT_REGEX_TO_PRE = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+": "gpt-2",
}


def write_tokenizer(writer, source: ModelSource, vocab_size: int) -> None:
    """Add the tokenizer and chat template of ``source`` to ``writer``."""
    if source.gguf_file:
        copy_tokenizer_from_gguf(writer, Path(source.path) / source.gguf_file)
        return
    tokenizer = source.load_tokenizer()
    sp_model = Path(source.path) / "tokenizer.model"
    spec = json.loads(tokenizer.backend_tokenizer.to_str()) if hasattr(tokenizer, "backend_tokenizer") else None
    if spec is not None and _is_byte_level(spec):
        _write_byte_level_bpe(writer, tokenizer, spec, vocab_size)
    elif sp_model.is_file():
        _write_sentencepiece(writer, tokenizer, sp_model, vocab_size)
    elif spec is not None and spec.get("model", {}).get("type") == "BPE" and spec["model"].get("byte_fallback"):
        _write_sentencepiece_style_bpe(writer, tokenizer, spec, vocab_size)
    else:
        raise TeenyError(f"{source.path}: tokenizer is neither byte-level BPE nor SentencePiece-style BPE "
                         "(tokenizer.json) nor SentencePiece (tokenizer.model); cannot write it to GGUF")
    _write_special(writer, tokenizer)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        writer.add_chat_template(template)


def _components(spec: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not spec:
        return []
    if spec.get("type") == "Sequence":
        parts = spec.get("pretokenizers") or spec.get("normalizers") or spec.get("decoders") or []
        return [c for part in parts for c in _components(part)]
    return [spec]


def _is_byte_level(spec: dict[str, Any]) -> bool:
    return spec.get("model", {}).get("type") == "BPE" and any(
        c.get("type") == "ByteLevel" for c in _components(spec.get("pre_tokenizer")) + _components(spec.get("decoder")))


def pre_tokenizer_name(spec: dict[str, Any]) -> str:
    """The llama.cpp pre-tokenizer that splits text like this tokenizer.json's pre_tokenizer."""
    parts = _components(spec.get("pre_tokenizer"))
    splits = [p for p in parts if p.get("type") == "Split"]
    byte_level = [p for p in parts if p.get("type") == "ByteLevel"]
    if not splits and byte_level and byte_level[0].get("use_regex", True) and not byte_level[0].get("add_prefix_space"):
        return "gpt-2"  # ByteLevel's built-in regex is GPT-2's
    if len(splits) == 1:
        pattern = splits[0].get("pattern", {})
        regex = pattern.get("Regex") or pattern.get("String")
        if regex in _SPLIT_REGEX_TO_PRE:
            return _SPLIT_REGEX_TO_PRE[regex]
    log.warning("unknown pre-tokenizer %s; writing llama.cpp's 'default' (tokenization may differ)", json.dumps(parts)[:200])
    return "default"


def _token_table(tokenizer, vocab_size: int) -> list[str | None]:
    table: list[str | None] = [None] * max(vocab_size, len(tokenizer))
    for token, idx in tokenizer.get_vocab().items():
        if idx < len(table):
            table[idx] = token
    return table


def _write_byte_level_bpe(writer, tokenizer, spec: dict[str, Any], vocab_size: int) -> None:
    import gguf

    table = _token_table(tokenizer, vocab_size)
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    tokens, types = [], []
    for idx, token in enumerate(table):
        if token is None:
            tokens.append(f"[PAD{idx}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(token)
            if idx in added:
                types.append(gguf.TokenType.CONTROL if added[idx].special else gguf.TokenType.USER_DEFINED)
            else:
                types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(spec))
    writer.add_token_list(tokens)
    writer.add_token_types([int(t) for t in types])
    writer.add_token_merges(merges)


def _write_sentencepiece(writer, tokenizer, sp_model: Path, vocab_size: int) -> None:
    write_sentencepiece_vocab(writer, sp_model, vocab_size, {
        idx: (tok.content, bool(tok.special)) for idx, tok in tokenizer.added_tokens_decoder.items()})


def write_sentencepiece_vocab(writer, sp_model: Path, vocab_size: int, added: dict[int, tuple[str, bool]]) -> None:
    """SentencePiece ``tokenizer.model`` -> llama.cpp's ``llama`` (SPM) vocabulary with scores and token types.

    ``added`` maps id -> (text, special) for tokens the HF tokenizer adds on top of the SentencePiece model.
    """
    import gguf
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(sp_model))
    n = max(vocab_size, sp.vocab_size())
    tokens = [f"[PAD{i}]" for i in range(n)]
    scores = [-1000.0] * n
    types = [int(gguf.TokenType.UNUSED)] * n
    for i in range(sp.vocab_size()):
        tokens[i], scores[i] = sp.id_to_piece(i), sp.get_score(i)
        kind = gguf.TokenType.NORMAL
        if sp.is_unknown(i):
            kind = gguf.TokenType.UNKNOWN
        elif sp.is_control(i):
            kind = gguf.TokenType.CONTROL
        elif sp.is_unused(i):
            kind = gguf.TokenType.UNUSED
        elif sp.is_byte(i):
            kind = gguf.TokenType.BYTE
        types[i] = int(kind)
    for idx, (text, special) in added.items():
        if idx < n:
            tokens[idx] = text
            types[idx] = int(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    # the model's normalizer adds a dummy "▁" prefix iff a lone word encodes with one
    pieces = sp.encode("a", out_type=str)
    writer.add_add_space_prefix(bool(pieces) and pieces[0].startswith("\u2581"))


def _write_sentencepiece_style_bpe(writer, tokenizer, spec: dict[str, Any], vocab_size: int) -> None:
    """A SentencePiece model exported to tokenizer.json (BPE with byte fallback and "▁" for spaces, as
    transformers writes for Llama/Gemma, also from GGUF files) -> llama.cpp's ``llama`` vocabulary.

    llama.cpp merges the highest-scoring adjacent pair; SentencePiece BPE models number pieces in merge
    order, so ``-id`` scores keep that order (Gemma's own GGUF scores are exactly ``-(id - offset)``).
    """
    import gguf

    table = _token_table(tokenizer, vocab_size)
    added = tokenizer.added_tokens_decoder
    unk = spec["model"].get("unk_token")
    tokens, scores, types = [], [], []
    for idx, token in enumerate(table):
        if token is None:
            tokens.append(f"[PAD{idx}]")
            kind = gguf.TokenType.UNUSED
        else:
            tokens.append(token)
            if idx in added:
                kind = gguf.TokenType.CONTROL if added[idx].special else gguf.TokenType.USER_DEFINED
            elif token == unk:
                kind = gguf.TokenType.UNKNOWN
            elif len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
                kind = gguf.TokenType.BYTE
            else:
                kind = gguf.TokenType.NORMAL
        types.append(int(kind))
        scores.append(-float(idx) if kind == gguf.TokenType.NORMAL else -1000.0)
    parts = _components(spec.get("pre_tokenizer")) + _components(spec.get("normalizer"))
    prefix = any((p.get("type") == "Metaspace" and p.get("prepend_scheme", "always") in ("always", "first"))
                 or (p.get("type") == "Prepend" and p.get("prepend") == "\u2581") for p in parts)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_add_space_prefix(prefix)


def _write_special(writer, tokenizer) -> None:
    for attr, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                      ("pad_token_id", writer.add_pad_token_id), ("unk_token_id", writer.add_unk_token_id)):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            add(int(value))
    probe = "a"
    plain = tokenizer.encode(probe, add_special_tokens=False)
    full = tokenizer.encode(probe)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    writer.add_add_bos_token(bool(bos is not None and len(full) > len(plain) and full[0] == bos))
    writer.add_add_eos_token(bool(eos is not None and len(full) > len(plain) and full[-1] == eos))


def copy_tokenizer_from_gguf(writer, path: Path) -> None:
    """Copy every ``tokenizer.*`` key of an existing GGUF file verbatim (exact for dequantized baselines)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    copied = 0
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
        copied += 1
    if not copied:
        raise TeenyError(f"{path}: GGUF file has no tokenizer metadata to copy")
